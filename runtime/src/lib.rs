//! Per-task, scoped, short-lived vendor API keys for Rust AI-agent backends.
//!
//! Instead of one Stripe / OpenAI / Anthropic secret shared by every agent task, each task gets its
//! own vault key from a [vault-key server](https://docs.rs/vault-key-server): a daily dollar cap, an
//! endpoint allowlist, optional methods and a lifetime. Calls go through the server's enforcing
//! proxy with the key's token; the real secret never leaves the server. The key is revoked once its
//! last owner drops it — on return, `?`, panic or cancellation — without blocking and without
//! needing a runtime, and [`flush`] waits until every revocation has reached the server.
//!
//! ```no_run
//! use vault_key::{Client, KeySpec, ResponseExt};
//!
//! # async fn run() -> Result<(), vault_key::Error> {
//! vault_key::init(Client::from_env()?);
//! let key = vault_key::default_client()?
//!     .issue(
//!         &KeySpec::new("stripe")
//!             .cap_usd(500)
//!             .endpoints(["/v1/payment_intents", "/v1/payment_intents/*"])
//!             .label("run-42"),
//!     )
//!     .await?;
//! let intent: serde_json::Value = key
//!     .post("/v1/payment_intents")
//!     .form(&[("amount", "1000"), ("currency", "usd")])
//!     .send()
//!     .await?
//!     .error_for_refusal()
//!     .await?
//!     .json()
//!     .await?;
//! drop(key); // revoked in the background
//! vault_key::flush().await; // before the process exits
//! # let _ = intent;
//! # Ok(()) }
//! ```
//!
//! With the `axum` feature (on by default), [`axum::VaultKeyLayer`] issues a key per request.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod context;
mod error;
mod key;
mod revoke;
mod spec;

#[cfg(feature = "axum")]
pub mod axum;

pub use client::{default_client, init, Client, ClientBuilder};
pub use context::{current, scope};
pub use error::{Error, Result};
pub use key::{ResponseExt, VaultKey};
pub use revoke::{flush, pending_revocations};
pub use spec::KeySpec;
pub use vault_key_wire::{ErrorCode, Usd};
