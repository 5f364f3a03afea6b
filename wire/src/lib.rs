//! Wire types shared by the parts of vault-key.
//!
//! The server, the runtime and the `#[vault_key]` attribute all speak the same contract (see
//! `DESIGN.md`, "Wire contract"). The pieces of that contract that must never drift between them
//! live here, once: the error codes, money as integer micro-dollars, the duration grammar, the
//! canonical path rule and endpoint patterns, and the request/response bodies of `/v1/keys`.
//!
//! ```
//! use vault_key_wire::{EndpointPattern, Usd, parse_duration};
//!
//! let pattern: EndpointPattern = "/v1/payment_intents/*".parse().unwrap();
//! assert!(pattern.matches_path("/v1/payment_intents/pi_123"));
//! assert!(!pattern.matches_path("/v1/payment_intents/pi_123/confirm"));
//!
//! assert_eq!("12.5".parse::<Usd>().unwrap().micros(), 12_500_000);
//! assert_eq!(parse_duration("5m").unwrap().as_secs(), 300);
//! ```

mod duration;
mod error;
mod grant;
mod keys;
mod money;
pub mod path;
mod pattern;

pub use duration::{format_duration, parse_duration, DurationError};
pub use error::{ErrorBody, ErrorCode, ERROR_HEADER};
pub use grant::{
    checksum, is_grant_token, is_minted_token, label_is_under, GrantCredential, KeyCaveats,
    MintedToken, RunCaveats, RunCredential, TokenError, GRANT_ID_PREFIX, GRANT_TOKEN_LEN,
    MAX_MINTED_TOKEN_LEN, MINTED_TAIL_LEN,
};
pub use keys::{
    CreateKeyRequest, Event, EventPage, GrantTerms, GrantView, IssuedGrant, IssuedKey, KeyPage,
    KeyStatus, KeyView, RevokeByIds, RevokeByLabelPrefix, RevokedCount, ServerInfo, TokenPlacement,
    VendorInfo, MAX_REVOKE_IDS,
};
pub use money::{Usd, UsdError};
pub use path::PathError;
pub use pattern::{EndpointPattern, PatternError};
