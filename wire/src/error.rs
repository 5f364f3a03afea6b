use serde::{Deserialize, Serialize};

use crate::Usd;

/// Response header set on every error the vault-key server itself answers (its value is the
/// `code`), so a client can tell a proxy refusal from the vendor's own error answers, which pass
/// through the proxy unchanged.
pub const ERROR_HEADER: &str = "vault-key-error";

/// The stable machine-readable `code` of every error vault-key returns. The code is the API: its
/// spelling never changes; messages may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: a malformed admin request; `field` names the offending field.
    InvalidRequest,
    /// 401: missing or wrong admin token.
    Unauthorized,
    /// 404: no such key (or route).
    NotFound,
    /// 413: a proxied request body over the server's limit.
    RequestTooLarge,
    /// 431: request headers over the server's limit.
    HeadersTooLarge,
    /// 401: vault token missing, malformed or unknown.
    InvalidKey,
    /// 401: the key was revoked.
    KeyRevoked,
    /// 401: the key is past its expiry.
    KeyExpired,
    /// 403: the key was issued for another vendor.
    VendorMismatch,
    /// 400 (414 when too long): the upstream path is not in canonical form.
    InvalidPath,
    /// 403: the path matches none of the key's `allowed_endpoints`.
    EndpointNotAllowed,
    /// 403 when the key does not allow the method; 405 when the vendor's API has no such method.
    MethodNotAllowed,
    /// 400: the cost of the call cannot be determined from the request.
    UnmeterableRequest,
    /// 429: the call could cost more than what is left of the key's daily cap.
    CapExhausted,
    /// 408: the request body did not arrive within the server's deadline.
    RequestTimeout,
    /// 409: an earlier call under the same `Idempotency-Key` is still in flight; retry once it
    /// has finished (the vendor answers the same way).
    IdempotencyKeyInUse,
    /// 502: the vendor could not be reached.
    UpstreamUnavailable,
    /// 504: the vendor did not answer in time.
    UpstreamTimeout,
    /// 503: the key store is unavailable.
    StoreUnavailable,
    /// 500: a bug; the message says no more than that.
    Internal,
    /// 403: a minted key asks for more than its grant allows (a larger cap, an endpoint or method
    /// outside the grant's, a longer life, a label outside its prefix).
    KeyWiderThanGrant,
    /// 403: a dashboard form whose CSRF token is missing or not this session's.
    CsrfTokenInvalid,
    /// 403: a dashboard form sent from another origin (or with no `Origin` at all).
    CrossOrigin,
}

impl ErrorCode {
    /// The code as it is spelled on the wire (`"cap_exhausted"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::KeyRevoked => "key_revoked",
            ErrorCode::KeyExpired => "key_expired",
            ErrorCode::VendorMismatch => "vendor_mismatch",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::EndpointNotAllowed => "endpoint_not_allowed",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnmeterableRequest => "unmeterable_request",
            ErrorCode::CapExhausted => "cap_exhausted",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::IdempotencyKeyInUse => "idempotency_key_in_use",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::KeyWiderThanGrant => "key_wider_than_grant",
            ErrorCode::CsrfTokenInvalid => "csrf_token_invalid",
            ErrorCode::CrossOrigin => "cross_origin",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error response: a top-level `code` and `message`, plus the fields that
/// some codes carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people. Never contains a token.
    pub message: String,
    /// `invalid_request`: the request field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `cap_exhausted`: the grant whose daily cap (of all its keys together) was reached; absent
    /// when it was the key's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// `cap_exhausted`: the daily cap reached (the key's, or its grant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_usd: Option<Usd>,
    /// `cap_exhausted`: settled spend today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<Usd>,
    /// `cap_exhausted`: reserved by calls still in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_usd: Option<Usd>,
    /// `cap_exhausted`: the most this call could cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_usd: Option<Usd>,
}

impl ErrorBody {
    /// A body with just a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
            field: None,
            grant_id: None,
            cap_usd: None,
            spent_usd: None,
            reserved_usd: None,
            requested_usd: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_spelling() {
        for code in [
            ErrorCode::CapExhausted,
            ErrorCode::InvalidPath,
            ErrorCode::KeyRevoked,
            ErrorCode::CsrfTokenInvalid,
            ErrorCode::CrossOrigin,
            ErrorCode::KeyWiderThanGrant,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }

    #[test]
    fn optional_fields_are_left_out() {
        let json =
            serde_json::to_value(ErrorBody::new(ErrorCode::NotFound, "no such key")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": "not_found", "message": "no such key"})
        );
    }
}
