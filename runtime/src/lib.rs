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
mod run;
mod spec;

#[doc(hidden)]
pub mod __private;

#[cfg(feature = "axum")]
pub mod axum;

pub use client::{default_client, init, Client, ClientBuilder};
pub use context::{current, scope};
pub use error::{Error, Result};
pub use key::{ResponseExt, VaultKey};
pub use revoke::{flush, pending_revocations};
pub use run::{current_run, RunBudget};
pub use secrecy::ExposeSecret;
pub use spec::KeySpec;
pub use vault_key_wire::{ErrorCode, Usd};

/// Gives a function its own vendor key: issued on entry, revoked however the function ends.
///
/// ```text
/// #[vault_key(
///     vendor = "stripe",               // required
///     cap = 500,                       // required: daily cap in US dollars, integer or decimal
///     endpoints = ["/v1/x", "/v1/x/*"],// required: non-empty list of endpoint patterns
///     ttl = "5m",                      // default "5m" (s, m, h, d)
///     methods = ["POST"],              // optional: the only methods the key may use
///     label = "run-{run_id}",          // optional: format string over the parameters;
///                                      //   default: module path and function name
///     client = path::to::client_fn,    // optional: fn() -> Client (or Result<Client, Error>);
///                                      //   default: the process default (`vault_key::init`)
///     on_issue_error = "fail",         // "fail" (default) or "continue" (fail open)
///     revoke = "background",           // or "await": revoked before the function returns
/// )]
/// ```
///
/// Works on `async fn`s: free functions, Axum handlers, methods (`&self`), generic functions. A
/// parameter of type `&VaultKey`, `Arc<VaultKey>`, `Option<&VaultKey>` or `Option<Arc<VaultKey>>`
/// receives the key and disappears from the signature (Axum sees only the extractors); without one,
/// the key is reachable through [`current()`]. If issuing fails, the function returns early with
/// the error through its `Result` (`E: From<vault_key::Error>`), or, with
/// `on_issue_error = "continue"`, runs with `None`. The body must be `Send` (as Axum handlers and
/// `tokio::spawn`ed tasks must be); the attribute checks it at the function.
///
/// - **One key per call.** Every call of the function issues its own key, so the `cap` holds
///   per call (per request, for a handler), not per user or per process. To share one budget
///   between calls, issue one key and pass it on (`Arc<VaultKey>`), or revoke a whole run at once
///   by label prefix.
/// - **Endpoint patterns** match the vendor path (never the query): a literal segment matches
///   itself exactly, case-sensitively; `*` matches exactly one non-empty segment
///   (`/v1/payment_intents/*` matches `/v1/payment_intents/pi_1`, not its `/confirm`); `**` as
///   the last segment matches one or more segments. Patterns are checked at compile time with the
///   server's own grammar.
/// - **`ttl`** is also bounded by the server (`max_key_ttl`, 24 h by default): a longer one is
///   refused when the key is issued. [`Client::check`] asks the server once, at start-up.
/// - **With other attributes**, put `#[vault_key]` first (above `#[axum::debug_handler]` or
///   `#[tracing::instrument]`), so that they see the function as Axum will: without its key
///   parameter.
/// - **Closures** cannot take attributes on stable Rust; wrap the work in an `async fn`.
/// - **Trait methods** take it on their implementation in the `impl` block, not on the trait's
///   declaration.
///
/// After a mistake in the attribute, the function is still emitted as it would be (without its
/// key parameter), so that the attribute's error is the only one, not one at every caller.
///
/// ```no_run
/// use axum::{routing::post, Json, Router};
/// use serde_json::{json, Value};
/// use vault_key::{vault_key, ResponseExt, VaultKey};
///
/// #[vault_key(vendor = "stripe", cap = 500, endpoints = ["/v1/payment_intents", "/v1/payment_intents/*"], ttl = "5m")]
/// async fn charge(key: &VaultKey, Json(req): Json<Value>) -> Result<Json<Value>, vault_key::Error> {
///     let amount = req["amount"].as_u64().unwrap_or(0).to_string();
///     let intent = key
///         .post("/v1/payment_intents")
///         .form(&[("amount", amount.as_str()), ("currency", "usd")])
///         .send()
///         .await?
///         .error_for_refusal()
///         .await?;
///     Ok(Json(intent.json().await?))
/// } // however the body ends, the key is revoked
///
/// # fn app() -> Router {
/// Router::new().route("/charge", post(charge))
/// # }
/// ```
///
/// Deep in the call stack, without a parameter:
///
/// ```no_run
/// # use vault_key::vault_key;
/// #[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], label = "sync-{user}")]
/// async fn sync_customers(user: &str) -> Result<u16, vault_key::Error> {
///     list_customers().await
/// }
///
/// async fn list_customers() -> Result<u16, vault_key::Error> {
///     let key = vault_key::current().expect("inside #[vault_key]");
///     Ok(key.get("/v1/customers").send().await?.status().as_u16())
/// }
/// ```
pub use vault_key_macros::vault_key;
