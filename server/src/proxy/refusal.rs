//! Every way the proxy can refuse a call, as a value that owns its status and code.
//!
//! The table in [`Refusal::status_and_code`] is the only place a proxy refusal is paired with an
//! HTTP status and an [`ErrorCode`]; the checks only say *which* refusal applies and why.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde_json::Value;
use vault_key_wire::{ErrorBody, ErrorCode, Usd};

use crate::error::ApiError;
use crate::meter::Unmeterable;
use crate::store::{DaySpend, StoreError};
use crate::vendor::ErrorEnvelope;

/// Why the proxy did not forward a call (or could not relay its answer).
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The request target is longer than the server accepts.
    TargetTooLong(usize),
    /// The request's headers are larger than the server accepts.
    HeadersTooLarge(usize),
    /// A malformed request: two credentials, a body that is not framed properly, …
    InvalidRequest(String),
    /// No usable vault token (missing, malformed, or never issued).
    InvalidKey(&'static str),
    /// A minted key asks for more than its grant allows: what.
    KeyWiderThanGrant(String),
    /// The key was revoked.
    KeyRevoked,
    /// The key is past its expiry.
    KeyExpired,
    /// The key belongs to another vendor (or the vendor is unknown).
    VendorMismatch {
        /// The key's vendor.
        key_vendor: String,
    },
    /// A method no vendor API of this server uses (`CONNECT`, `TRACE`, invented ones).
    MethodNotUsed,
    /// The target is not a canonical origin-form path.
    InvalidPath(String),
    /// The path is outside the key's allowlist.
    EndpointNotAllowed(String),
    /// The key does not allow this method.
    MethodNotAllowed(String),
    /// The body is over the limit.
    BodyTooLarge(usize),
    /// The body did not arrive in time.
    BodyTimeout(Duration),
    /// The cost of the call cannot be known from the request.
    Unmeterable(String),
    /// The call could cost more than what is left of the cap.
    CapExhausted {
        /// The daily cap reached: the key's, or (when `grant` is set) its grant's.
        cap: Usd,
        /// The grant whose cap (of all its keys together) it is.
        grant: Option<String>,
        /// Spent and reserved today.
        spend: DaySpend,
        /// The most this call could cost.
        requested: Usd,
    },
    /// A call under the same idempotency key is still in flight.
    IdempotencyKeyInUse,
    /// The vendor could not be reached (or its answer could not be relayed).
    UpstreamUnavailable(String),
    /// The vendor did not answer in time.
    UpstreamTimeout(String),
    /// The store failed.
    StoreUnavailable,
    /// A bug or a broken configuration; the message says no more than that.
    Internal(&'static str),
    /// `/v1/…` that is no admin route.
    NoSuchRoute,
}

impl Refusal {
    /// The one table of statuses and codes.
    pub(crate) fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        use ErrorCode as C;
        use StatusCode as S;
        match self {
            Refusal::TargetTooLong(_) => (S::URI_TOO_LONG, C::InvalidPath),
            Refusal::HeadersTooLarge(_) => (S::REQUEST_HEADER_FIELDS_TOO_LARGE, C::HeadersTooLarge),
            Refusal::InvalidRequest(_) => (S::BAD_REQUEST, C::InvalidRequest),
            Refusal::InvalidKey(_) => (S::UNAUTHORIZED, C::InvalidKey),
            Refusal::KeyWiderThanGrant(_) => (S::FORBIDDEN, C::KeyWiderThanGrant),
            Refusal::KeyRevoked => (S::UNAUTHORIZED, C::KeyRevoked),
            Refusal::KeyExpired => (S::UNAUTHORIZED, C::KeyExpired),
            Refusal::VendorMismatch { .. } => (S::FORBIDDEN, C::VendorMismatch),
            Refusal::MethodNotUsed => (S::METHOD_NOT_ALLOWED, C::MethodNotAllowed),
            Refusal::InvalidPath(_) => (S::BAD_REQUEST, C::InvalidPath),
            Refusal::EndpointNotAllowed(_) => (S::FORBIDDEN, C::EndpointNotAllowed),
            Refusal::MethodNotAllowed(_) => (S::FORBIDDEN, C::MethodNotAllowed),
            Refusal::BodyTooLarge(_) => (S::PAYLOAD_TOO_LARGE, C::RequestTooLarge),
            Refusal::BodyTimeout(_) => (S::REQUEST_TIMEOUT, C::RequestTimeout),
            Refusal::Unmeterable(_) => (S::BAD_REQUEST, C::UnmeterableRequest),
            Refusal::CapExhausted { .. } => (S::TOO_MANY_REQUESTS, C::CapExhausted),
            Refusal::IdempotencyKeyInUse => (S::CONFLICT, C::IdempotencyKeyInUse),
            Refusal::UpstreamUnavailable(_) => (S::BAD_GATEWAY, C::UpstreamUnavailable),
            Refusal::UpstreamTimeout(_) => (S::GATEWAY_TIMEOUT, C::UpstreamTimeout),
            Refusal::StoreUnavailable => (S::SERVICE_UNAVAILABLE, C::StoreUnavailable),
            Refusal::Internal(_) => (S::INTERNAL_SERVER_ERROR, C::Internal),
            Refusal::NoSuchRoute => (S::NOT_FOUND, C::NotFound),
        }
    }

    /// The code alone.
    pub(crate) fn code(&self) -> ErrorCode {
        self.status_and_code().1
    }

    /// Whether retrying the same request can succeed: what vendor SDKs are told, so that they do
    /// not retry a refusal that cannot change.
    fn retryable(&self) -> bool {
        matches!(
            self,
            Refusal::IdempotencyKeyInUse
                | Refusal::StoreUnavailable
                | Refusal::UpstreamUnavailable(_)
                | Refusal::BodyTimeout(_)
        )
    }

    fn message(&self) -> String {
        match self {
            Refusal::TargetTooLong(max) => {
                format!("the request target is longer than {max} bytes")
            }
            Refusal::HeadersTooLarge(max) => {
                format!("the request headers are larger than {max} bytes")
            }
            Refusal::InvalidRequest(why) => why.clone(),
            Refusal::InvalidKey(why) => (*why).to_owned(),
            Refusal::KeyWiderThanGrant(what) => {
                format!("this minted key asks for more than its grant allows: {what}")
            }
            Refusal::KeyRevoked => "this key was revoked".to_owned(),
            Refusal::KeyExpired => "this key has expired".to_owned(),
            Refusal::VendorMismatch { key_vendor } => {
                format!("this key was issued for {key_vendor}; call /{key_vendor}/…")
            }
            Refusal::MethodNotUsed => "no vendor API served here uses this method".to_owned(),
            Refusal::InvalidPath(why) => why.clone(),
            Refusal::EndpointNotAllowed(path) => format!("this key may not call {path}"),
            Refusal::MethodNotAllowed(method) => format!("this key may not use {method}"),
            Refusal::BodyTooLarge(max) => {
                format!("the request body is larger than {max} bytes")
            }
            Refusal::BodyTimeout(limit) => format!(
                "the request body did not arrive within {}",
                vault_key_wire::format_duration(*limit)
            ),
            Refusal::Unmeterable(why) => why.clone(),
            Refusal::CapExhausted {
                cap,
                grant,
                spend,
                requested,
            } => {
                let left = cap.saturating_sub(spend.committed());
                match grant {
                    None => format!(
                        "this key has ${left} of its ${cap} daily cap left; this call could cost \
                         ${requested}"
                    ),
                    Some(grant) => format!(
                        "the keys of grant {grant} have ${left} of its ${cap} daily cap left \
                         together; this call could cost ${requested}"
                    ),
                }
            }
            Refusal::IdempotencyKeyInUse => "an earlier call under this Idempotency-Key is still \
                 in flight; retry once it has finished"
                .to_owned(),
            Refusal::UpstreamUnavailable(why) | Refusal::UpstreamTimeout(why) => why.clone(),
            Refusal::StoreUnavailable => "the key store is unavailable; retry shortly".to_owned(),
            Refusal::Internal(why) => (*why).to_owned(),
            Refusal::NoSuchRoute => "no such admin route".to_owned(),
        }
    }

    /// The error body: `code`, `message`, and for caps the amounts.
    pub(crate) fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.code(), self.message());
        if let Refusal::CapExhausted {
            cap,
            grant,
            spend,
            requested,
        } = self
        {
            body.grant_id = grant.clone();
            body.cap_usd = Some(*cap);
            body.spent_usd = Some(spend.spent);
            body.reserved_usd = Some(spend.reserved);
            body.requested_usd = Some(*requested);
        }
        body
    }

    /// The refusal as an HTTP answer: our body, and on a vendor's route also that vendor's error
    /// envelope (with our `code` inside) and its retry hint, so an unmodified SDK surfaces it as a
    /// typed error and does not retry what cannot succeed.
    pub(crate) fn into_response(self, envelope: ErrorEnvelope) -> axum::response::Response {
        let (status, _) = self.status_and_code();
        let body = self.body();
        let mut response = match envelope {
            ErrorEnvelope::Plain => ApiError {
                status,
                body: Box::new(body),
            }
            .into_response(),
            ErrorEnvelope::Stripe => {
                let mut json = serde_json::to_value(&body).unwrap_or(Value::Null);
                let mut inner = json.clone();
                inner["type"] = Value::from(stripe_error_type(status));
                json["error"] = inner;
                let mut response = ApiError::json_response(status, body.code, &json);
                response.headers_mut().insert(
                    "stripe-should-retry",
                    HeaderValue::from_static(if self.retryable() { "true" } else { "false" }),
                );
                response
            }
            ErrorEnvelope::OpenAi | ErrorEnvelope::Anthropic => {
                let mut json = serde_json::to_value(&body).unwrap_or(Value::Null);
                let mut inner = json.clone();
                if envelope == ErrorEnvelope::Anthropic {
                    inner["type"] = Value::from(anthropic_error_type(status));
                    json["type"] = Value::from("error");
                } else {
                    inner["type"] = Value::from(if status.is_server_error() {
                        "server_error"
                    } else {
                        "invalid_request_error"
                    });
                    inner["param"] = Value::Null;
                }
                json["error"] = inner;
                ApiError::json_response(status, body.code, &json)
            }
        };
        // The OpenAI and Anthropic SDKs read this one (Stripe's read their own, above).
        response.headers_mut().insert(
            "x-should-retry",
            HeaderValue::from_static(if self.retryable() { "true" } else { "false" }),
        );
        if matches!(
            self,
            Refusal::IdempotencyKeyInUse | Refusal::StoreUnavailable
        ) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Anthropic's error `type` for a status.
fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Stripe's error `type` for a status, as its SDKs map them to error classes.
fn stripe_error_type(status: StatusCode) -> &'static str {
    match status {
        StatusCode::CONFLICT => "idempotency_error",
        s if s.is_server_error() => "api_error",
        _ => "invalid_request_error",
    }
}

impl From<StoreError> for Refusal {
    fn from(error: StoreError) -> Refusal {
        tracing::error!(%error, "key store failed");
        Refusal::StoreUnavailable
    }
}

impl From<Unmeterable> for Refusal {
    fn from(error: Unmeterable) -> Refusal {
        Refusal::Unmeterable(error.to_string())
    }
}

use axum::response::IntoResponse as _;
