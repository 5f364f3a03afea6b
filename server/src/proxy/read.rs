//! Reading a proxied request without trusting it: the request target, the vault token, the
//! headers and query parameters that may travel on to the vendor, and the body under a size limit
//! and a deadline. What comes out is the exact request the vendor will get.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, CONNECTION, CONTENT_LENGTH};
use http::request::Parts;
use http::{HeaderMap, Method, Version};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use secrecy::SecretString;
use vault_key_wire::path::{check_path, PathError};

use super::Refusal;
use crate::token;
use crate::vendor::VendorAuth;

/// Longest request target (path and query) accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// Methods any vendor API may use; anything else (`CONNECT`, `TRACE`, lower-case or invented
/// methods) cannot be a vendor call.
const CALL_METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Checks what can be checked before anything is looked up: sizes (`414`, `431`), a method that
/// could be a vendor call (`405`), and an origin-form target `/{vendor}/…` with no vault token in
/// it (`400 invalid_path`). Returns the vendor segment and the upstream path, as received.
pub fn check_target(parts: &Parts, max_header_bytes: usize) -> Result<(&str, &str), Refusal> {
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_TARGET_LEN {
        return Err(Refusal::TargetTooLong(MAX_TARGET_LEN));
    }
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > max_header_bytes {
        return Err(Refusal::HeadersTooLarge(max_header_bytes));
    }
    if !CALL_METHODS.contains(&parts.method) {
        return Err(Refusal::MethodNotUsed);
    }
    // HTTP/2 always carries `:authority` (and hyper a scheme with it); over HTTP/1.1 an
    // absolute-form target (`GET http://host/…`) names a host of the client's choosing. Either
    // way the upstream host comes from configuration alone.
    if parts.version < Version::HTTP_2
        && (parts.uri.scheme().is_some() || parts.uri.authority().is_some())
    {
        return Err(Refusal::InvalidPath(
            "the request target must be a path, not an absolute URL".to_owned(),
        ));
    }
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Refusal::InvalidPath(
            "the request target must be a path starting with `/`".to_owned(),
        ));
    };
    let (vendor, upstream_path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    if vendor.is_empty() {
        return Err(Refusal::InvalidPath(
            "the path must start with `/{vendor}/`".to_owned(),
        ));
    }
    if parts
        .uri
        .path_and_query()
        .is_some_and(|target| token::appears_in(target.as_str().as_bytes()))
    {
        return Err(Refusal::InvalidPath(
            "the request target contains a vault token; send it only in the vendor's \
             credential header"
                .to_owned(),
        ));
    }
    Ok((vendor, upstream_path))
}

/// The upstream path, if it is in canonical form.
pub fn checked_path(upstream_path: &str) -> Result<&str, Refusal> {
    check_path(upstream_path).map_err(|reason| match reason {
        PathError::TooLong => Refusal::TargetTooLong(vault_key_wire::path::MAX_PATH_LEN),
        reason => {
            Refusal::InvalidPath(format!("{reason}; vault-key forwards only canonical paths"))
        }
    })?;
    Ok(upstream_path)
}

/// The vault token, from where the vendor's SDK puts its key; with an unknown vendor, from
/// `Authorization` or `x-api-key`. Error messages never contain what was presented.
pub fn presented_token(
    headers: &HeaderMap,
    auth: Option<&VendorAuth>,
) -> Result<SecretString, Refusal> {
    if headers.get_all(AUTHORIZATION).iter().count() > 1 {
        return Err(Refusal::InvalidRequest(
            "more than one Authorization header".to_owned(),
        ));
    }
    let bearer = VendorAuth::Bearer;
    let x_api_key = VendorAuth::Header(HeaderName::from_static("x-api-key"));
    let auth = match auth {
        Some(auth) => auth,
        None if headers.contains_key(AUTHORIZATION) => &bearer,
        None => &x_api_key,
    };
    let header = auth.header();
    let mut values = headers.get_all(&header).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => {
            return Err(Refusal::InvalidKey(
                "no vault token in the vendor's credential header",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Refusal::InvalidRequest(format!(
                "more than one `{header}` header"
            )))
        }
        (Some(value), None) => value
            .to_str()
            .map_err(|_| Refusal::InvalidKey("the vault token is malformed"))?,
    };
    let candidate = match auth {
        VendorAuth::Bearer => value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or(Refusal::InvalidKey(
                "the Authorization header must be `Bearer <vault token>`",
            ))?,
        VendorAuth::Header(_) => value,
    };
    if !token::is_well_formed(candidate) && !vault_key_wire::is_minted_token(candidate) {
        return Err(Refusal::InvalidKey("the vault token is malformed"));
    }
    Ok(SecretString::from(candidate.to_owned()))
}

/// A vault token travels in the vendor's credential header only: one in any other header would
/// reach the vendor (and its logs).
pub fn refuse_tokens_elsewhere(headers: &HeaderMap, auth: &VendorAuth) -> Result<(), Refusal> {
    let credential = auth.header();
    let elsewhere = headers
        .iter()
        .any(|(name, value)| *name != credential && token::appears_in(value.as_bytes()));
    if elsewhere {
        return Err(Refusal::InvalidRequest(format!(
            "a vault token may travel only in the `{credential}` header"
        )));
    }
    Ok(())
}

/// The whole body, read under a size limit and a deadline: a `Content-Length` over the limit is
/// refused before a byte is read (`413`), a body that does not arrive in time is `408`, and one
/// that is not framed properly (a malformed chunk) is `400`.
pub async fn body(
    body: Body,
    headers: &HeaderMap,
    max_bytes: usize,
    deadline: Duration,
) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u128>().ok());
    if declared.is_some_and(|length| length > max_bytes as u128) {
        return Err(Refusal::BodyTooLarge(max_bytes));
    }
    match tokio::time::timeout(deadline, Limited::new(body, max_bytes).collect()).await {
        Err(_elapsed) => Err(Refusal::BodyTimeout(deadline)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(Refusal::BodyTooLarge(max_bytes)),
        Ok(Err(_)) => Err(Refusal::InvalidRequest(
            "the request body is not framed properly".to_owned(),
        )),
    }
}

/// Headers the client may not pass on: its credentials, headers that choose whose account pays,
/// proxy and forwarding headers, method overrides, and hop-by-hop headers.
const STRIPPED: &[&str] = &[
    "authorization",
    "x-api-key",
    "proxy-authorization",
    "stripe-account",
    "stripe-context",
    "openai-organization",
    "openai-project",
    "forwarded",
    "x-real-ip",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "host",
    "content-length",
    "expect",
    // No browser state of this server's origin (the dashboard's session) ever reaches a vendor.
    "cookie",
    // The proxy reads the vendor's answers (to settle what a call cost), so they come plain.
    "accept-encoding",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped in both directions.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether a header is hop-by-hop, by the standard list or by being named in `Connection`.
fn is_hop_by_hop(name: &HeaderName, headers: &HeaderMap) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
        || headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
}

/// The client's headers that go upstream.
pub fn upstream_headers(incoming: &HeaderMap, auth: &VendorAuth) -> HeaderMap {
    let vendor_header = auth.header();
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        let stripped = STRIPPED.contains(&name.as_str())
            || name.as_str().starts_with("x-forwarded-")
            || *name == vendor_header
            || is_hop_by_hop(name, incoming);
        if !stripped {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The vendor's response headers that go back to the client: not hop-by-hop ones, and no
/// cookie (the proxy shares its origin with the dashboard, whose cookies only it may set).
pub fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if !is_hop_by_hop(name, upstream) && *name != http::header::SET_COOKIE {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Query parameter names that carry credentials in some APIs.
const CREDENTIAL_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "auth",
    "authorization",
];

/// The query string without credentials: pieces naming a credential parameter or holding a vault
/// token are dropped; every other piece is kept byte for byte (never decoded and re-encoded).
pub fn upstream_query(query: Option<&str>) -> Option<String> {
    let query = query?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|piece| {
            let (name, value) = form_urlencoded::parse(piece.as_bytes())
                .next()
                .unwrap_or_default();
            !(CREDENTIAL_PARAMS.contains(&name.to_ascii_lowercase().as_str())
                || value.contains("vk_")
                || name.contains("vk_"))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_loses_credentials_and_keeps_the_rest_verbatim() {
        assert_eq!(
            upstream_query(Some("limit=3&expand%5B%5D=data")).as_deref(),
            Some("limit=3&expand%5B%5D=data")
        );
        assert_eq!(
            upstream_query(Some("api_key=x&limit=3")).as_deref(),
            Some("limit=3")
        );
        assert_eq!(upstream_query(Some("a=vk_abc")), None);
        assert_eq!(
            upstream_query(Some("a=%76k_abc&b=1")).as_deref(),
            Some("b=1")
        );
        assert_eq!(upstream_query(None), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            "x-secret-hop, idempotency-key".parse().unwrap(),
        );
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("stripe-account", "acct_1".parse().unwrap());
        headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        headers.insert("idempotency-key", "abc".parse().unwrap());
        headers.insert("accept-encoding", "gzip".parse().unwrap());
        headers.insert("x-kept", "yes".parse().unwrap());
        let out = upstream_headers(&headers, &VendorAuth::Bearer);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key("x-kept"));
    }

    fn parts(request: http::Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn targets_that_cannot_be_vendor_calls_are_refused_before_any_lookup() {
        let ok = parts(http::Request::get("/stripe/v1/x").body(()).unwrap());
        assert_eq!(check_target(&ok, 1024).unwrap(), ("stripe", "/v1/x"));
        let connect = parts(
            http::Request::builder()
                .method(Method::CONNECT)
                .uri("api.stripe.com:443")
                .body(())
                .unwrap(),
        );
        assert!(matches!(
            check_target(&connect, 1024),
            Err(Refusal::MethodNotUsed)
        ));
        let asterisk = parts(
            http::Request::builder()
                .method(Method::OPTIONS)
                .uri("*")
                .body(())
                .unwrap(),
        );
        assert!(matches!(
            check_target(&asterisk, 1024),
            Err(Refusal::InvalidPath(_))
        ));
        let empty_vendor = parts(http::Request::get("//stripe/v1/x").body(()).unwrap());
        assert!(matches!(
            check_target(&empty_vendor, 1024),
            Err(Refusal::InvalidPath(_))
        ));
        let mut h2 = parts(
            http::Request::get("http://vault.test/stripe/v1/x")
                .body(())
                .unwrap(),
        );
        assert!(check_target(&h2, 1024).is_err());
        h2.version = Version::HTTP_2;
        assert_eq!(check_target(&h2, 1024).unwrap(), ("stripe", "/v1/x"));
    }
}
