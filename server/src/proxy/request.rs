//! Reading a proxied request without trusting it: size limits, the vault token, the upstream path,
//! and which headers and query parameters may travel on to the vendor.

use http::header::{HeaderName, AUTHORIZATION, CONNECTION};
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use secrecy::SecretString;
use vault_key_wire::path::{check_path, PathError};
use vault_key_wire::ErrorCode;

use crate::error::ApiError;
use crate::token;
use crate::vendor::VendorAuth;

/// Longest request target (path and query) accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// Refuses targets and header blocks over the limits (`414`, `431`).
pub fn check_sizes(parts: &Parts, max_header_bytes: usize) -> Result<(), ApiError> {
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_TARGET_LEN {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::InvalidPath,
            format!("the request target is longer than {MAX_TARGET_LEN} bytes"),
        ));
    }
    let header_bytes: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > max_header_bytes {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            format!("the request headers are larger than {max_header_bytes} bytes"),
        ));
    }
    Ok(())
}

/// The first path segment (the vendor) and the rest (the upstream path, with its leading `/`),
/// exactly as received.
pub fn split_vendor(path: &str) -> (&str, &str) {
    let rest = path.strip_prefix('/').unwrap_or(path);
    match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    }
}

/// The upstream path, if the request target is in canonical origin form.
pub fn checked_upstream_path<'a>(
    parts: &Parts,
    upstream_path: &'a str,
) -> Result<&'a str, ApiError> {
    // An absolute-form target (`GET http://host/…`) names a host of the client's choosing.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPath,
            "the request target must be a path, not an absolute URL",
        ));
    }
    check_path(upstream_path).map_err(|reason| {
        let status = if reason == PathError::TooLong {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(
            status,
            ErrorCode::InvalidPath,
            format!("{reason}; vault-key forwards only canonical paths"),
        )
    })?;
    Ok(upstream_path)
}

fn invalid_key(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidKey, message)
}

/// The vault token, from where the vendor's SDK puts its key; with an unknown vendor, from
/// `Authorization` or `x-api-key`. Error messages never contain what was presented.
pub fn presented_token(
    headers: &HeaderMap,
    auth: Option<&VendorAuth>,
) -> Result<SecretString, ApiError> {
    if headers.get_all(AUTHORIZATION).iter().count() > 1 {
        return Err(ApiError::invalid_request(
            "more than one Authorization header",
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
            return Err(invalid_key(&format!(
                "no vault token: send it in the `{header}` header"
            )))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(format!(
                "more than one `{header}` header"
            )))
        }
        (Some(value), None) => value
            .to_str()
            .map_err(|_| invalid_key("the vault token is malformed"))?,
    };
    let candidate = match auth {
        VendorAuth::Bearer => value
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| {
                invalid_key("the Authorization header must be `Bearer <vault token>`")
            })?,
        VendorAuth::Header(_) => value,
    };
    if !token::is_well_formed(candidate) {
        return Err(invalid_key("the vault token is malformed"));
    }
    Ok(SecretString::from(candidate.to_owned()))
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

/// The vendor's response headers that go back to the client.
pub fn downstream_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if !is_hop_by_hop(name, upstream) {
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
    fn splits_vendor_from_upstream_path() {
        assert_eq!(
            split_vendor("/stripe/v1/charges"),
            ("stripe", "/v1/charges")
        );
        assert_eq!(split_vendor("/stripe"), ("stripe", ""));
        assert_eq!(split_vendor("/stripe/"), ("stripe", "/"));
        assert_eq!(split_vendor("//stripe/v1"), ("", "/stripe/v1"));
    }

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
        headers.insert("connection", "x-secret-hop".parse().unwrap());
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("stripe-account", "acct_1".parse().unwrap());
        headers.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        headers.insert("idempotency-key", "abc".parse().unwrap());
        let out = upstream_headers(&headers, &VendorAuth::Bearer);
        assert_eq!(out.len(), 1);
        assert!(out.contains_key("idempotency-key"));
    }
}
