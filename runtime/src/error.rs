//! One error type for everything that can go wrong between an agent task and its vendor.

use vault_key_wire::{ErrorBody, ErrorCode, Usd};

/// What went wrong issuing, using or revoking a vault key.
///
/// Refusals by the proxy keep the server's stable `code` (see [`Error::code`]); issuance failures,
/// configuration problems and transport failures are kept apart so that a handler can answer each
/// one properly (with the `axum` feature, `Error` is `IntoResponse`). No variant ever holds or
/// prints a token.
///
/// ```
/// use vault_key::{Error, ErrorCode, Usd};
///
/// let error = Error::CapExhausted {
///     cap: Usd::from_micros(500_000_000),
///     grant: None,
///     spent: Usd::from_micros(495_000_000),
///     reserved: Usd::ZERO,
///     requested: Usd::from_micros(10_000_000),
/// };
/// assert_eq!(error.code(), Some(ErrorCode::CapExhausted));
/// assert!(error.to_string().contains("$495 spent"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call could cost more than what is left of the key's daily cap, or of its grant's (the
    /// cap of all the grant's keys together).
    #[error("spend cap reached{}: ${spent} spent and ${reserved} reserved of ${cap} today; this call could cost ${requested}", .grant.as_ref().map_or(String::new(), |g| format!(" by all keys of grant {g}")))]
    CapExhausted {
        /// The daily cap reached: the key's, or its grant's.
        cap: Usd,
        /// The grant whose cap it is; `None` for the key's own.
        grant: Option<String>,
        /// Settled spend today.
        spent: Usd,
        /// Held by calls in flight.
        reserved: Usd,
        /// The most this call could cost.
        requested: Usd,
    },
    /// The path is outside the key's `allowed_endpoints`.
    #[error("endpoint not allowed for this key: {message}")]
    EndpointNotAllowed {
        /// The server's explanation.
        message: String,
    },
    /// The method is not allowed for this key or not used by the vendor.
    #[error("method not allowed: {message}")]
    MethodNotAllowed {
        /// The server's explanation.
        message: String,
    },
    /// The key was revoked.
    #[error("the vault key was revoked")]
    KeyRevoked,
    /// The key expired.
    #[error("the vault key expired")]
    KeyExpired,
    /// The proxy does not know the token.
    #[error("the vault key is not valid: {message}")]
    InvalidKey {
        /// The server's explanation.
        message: String,
    },
    /// The key was issued for another vendor.
    #[error("the vault key belongs to another vendor: {message}")]
    VendorMismatch {
        /// The server's explanation.
        message: String,
    },
    /// The path is not in canonical form.
    #[error("the path is not canonical: {message}")]
    InvalidPath {
        /// The server's explanation.
        message: String,
    },
    /// The proxy cannot tell what the call costs.
    #[error("the call's cost cannot be determined: {message}")]
    UnmeterableRequest {
        /// The server's explanation.
        message: String,
    },
    /// The vendor could not be reached (or timed out) behind the proxy.
    #[error("the vendor is unavailable ({code}): {message}")]
    UpstreamUnavailable {
        /// `upstream_unavailable` or `upstream_timeout`.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// Any other refusal by the vault-key server.
    #[error("the vault-key server refused the call ({code}, HTTP {status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The server refused to issue a key (an invalid spec, a wrong admin token, …).
    #[error("the vault-key server refused to issue a key ({code}): {message}")]
    IssueRefused {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// The spec field at fault, if any.
        field: Option<String>,
    },
    /// The server could not be reached, or answered something that is not the wire contract.
    #[error("the vault-key server is unavailable: {0}")]
    Unavailable(String),
    /// No client was configured.
    #[error("vault-key is not configured: {0}")]
    NotConfigured(String),
    /// A key spec that can never be issued.
    #[error("invalid key spec: {0}")]
    InvalidSpec(String),
    /// An HTTP failure talking to the proxy (the call may not have reached the vendor).
    #[error("HTTP error talking to the vault-key proxy: {0}")]
    Transport(#[source] reqwest::Error),
}

impl From<reqwest::Error> for Error {
    fn from(error: reqwest::Error) -> Error {
        // URLs carry no token (tokens travel in headers), but strip them all the same.
        Error::Transport(error.without_url())
    }
}

impl Error {
    /// The server's stable code, for errors that come from the server.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::CapExhausted { .. } => ErrorCode::CapExhausted,
            Error::EndpointNotAllowed { .. } => ErrorCode::EndpointNotAllowed,
            Error::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Error::KeyRevoked => ErrorCode::KeyRevoked,
            Error::KeyExpired => ErrorCode::KeyExpired,
            Error::InvalidKey { .. } => ErrorCode::InvalidKey,
            Error::VendorMismatch { .. } => ErrorCode::VendorMismatch,
            Error::InvalidPath { .. } => ErrorCode::InvalidPath,
            Error::UnmeterableRequest { .. } => ErrorCode::UnmeterableRequest,
            Error::UpstreamUnavailable { code, .. }
            | Error::Refused { code, .. }
            | Error::IssueRefused { code, .. } => *code,
            Error::Unavailable(_)
            | Error::NotConfigured(_)
            | Error::InvalidSpec(_)
            | Error::Transport(_) => return None,
        })
    }

    /// Whether the key could not be issued (server refused, unreachable, or not configured).
    pub fn is_issue_failure(&self) -> bool {
        matches!(
            self,
            Error::IssueRefused { .. }
                | Error::Unavailable(_)
                | Error::NotConfigured(_)
                | Error::InvalidSpec(_)
        )
    }

    /// The error for a refusal answered by the proxy.
    pub(crate) fn from_refusal(status: u16, body: ErrorBody) -> Error {
        let message = body.message;
        match body.code {
            ErrorCode::CapExhausted => Error::CapExhausted {
                cap: body.cap_usd.unwrap_or_default(),
                grant: body.grant_id,
                spent: body.spent_usd.unwrap_or_default(),
                reserved: body.reserved_usd.unwrap_or_default(),
                requested: body.requested_usd.unwrap_or_default(),
            },
            ErrorCode::EndpointNotAllowed => Error::EndpointNotAllowed { message },
            ErrorCode::MethodNotAllowed => Error::MethodNotAllowed { message },
            ErrorCode::KeyRevoked => Error::KeyRevoked,
            ErrorCode::KeyExpired => Error::KeyExpired,
            ErrorCode::InvalidKey => Error::InvalidKey { message },
            ErrorCode::VendorMismatch => Error::VendorMismatch { message },
            ErrorCode::InvalidPath => Error::InvalidPath { message },
            ErrorCode::UnmeterableRequest => Error::UnmeterableRequest { message },
            code @ (ErrorCode::UpstreamUnavailable | ErrorCode::UpstreamTimeout) => {
                Error::UpstreamUnavailable { code, message }
            }
            code => Error::Refused {
                status,
                code,
                message,
            },
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
