//! What `#[vault_key]` expands to call. Not public API: hidden, and free to change in any release.
//! The logic lives here, once, unit-tested, rather than re-generated into every function.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use vault_key_wire::Usd;

use crate::{Client, Error, KeySpec, VaultKey};

pub use crate::context::scope;

/// The spec the attribute's arguments describe (already validated at compile time).
pub fn spec(
    vendor: &str,
    cap_micros: u64,
    endpoints: &[&str],
    ttl_secs: u64,
    methods: Option<&[&str]>,
    label: String,
) -> KeySpec {
    let spec = KeySpec::new(vendor)
        .cap_exact(Usd::from_micros(cap_micros))
        .endpoints(endpoints.iter().copied())
        .ttl(Duration::from_secs(ttl_secs))
        .label(label);
    match methods {
        Some(methods) => spec.methods(methods.iter().copied()),
        None => spec,
    }
}

/// Where `client = path` comes from: a function returning a `Client` or a `Result<Client, Error>`.
pub trait IntoClient {
    /// The client, or why there is none.
    fn into_client(self) -> Result<Client, Error>;
}

impl IntoClient for Client {
    fn into_client(self) -> Result<Client, Error> {
        Ok(self)
    }
}

impl IntoClient for Result<Client, Error> {
    fn into_client(self) -> Result<Client, Error> {
        self
    }
}

/// The error type of a `#[vault_key]` function's `Result`, which must be able to carry the error
/// of issuing its key.
#[diagnostic::on_unimplemented(
    message = "`#[vault_key]` returns the error of issuing the key through this function's `Result`, \
               but `{Self}` cannot carry it",
    label = "`{Self}` does not implement `From<vault_key::Error>`",
    note = "implement `From<vault_key::Error>` for `{Self}` (or return `vault_key::Error`, which is \
            also an axum response), or set on_issue_error = \"continue\" and take the key as an `Option`"
)]
pub trait FromIssueError: Sized {
    /// The issuance error as this error type.
    fn from_issue_error(error: Error) -> Self;
}

impl<E: From<Error>> FromIssueError for E {
    fn from_issue_error(error: Error) -> E {
        E::from(error)
    }
}

/// Stands in for the key parameter in the function emitted after an attribute error, so that the
/// body still type-checks (and the attribute's error is the only one). Never runs: the crate does
/// not compile.
pub fn inert<T>() -> T {
    unreachable!("a #[vault_key] function with an attribute error cannot be called")
}

/// Issues the key (`on_issue_error = "fail"`; also the path of `axum::VaultKeyLayer`).
pub async fn issue(client: Result<Client, Error>, spec: KeySpec) -> Result<Arc<VaultKey>, Error> {
    Ok(Arc::new(client?.issue(&spec).await?))
}

/// Issues the key, or logs why not and goes on without one (`on_issue_error = "continue"`).
pub async fn issue_or_continue(
    client: Result<Client, Error>,
    spec: KeySpec,
) -> Option<Arc<VaultKey>> {
    match issue(client, spec).await {
        Ok(key) => Some(key),
        Err(error) => {
            tracing::warn!(%error, "no vault key; continuing without one (on_issue_error = \"continue\")");
            None
        }
    }
}

/// Runs `future` with `key` as the current key when there is one.
pub async fn maybe_scope<F: Future>(key: Option<Arc<VaultKey>>, future: F) -> F::Output {
    match key {
        Some(key) => scope(key, future).await,
        None => future.await,
    }
}

/// Revokes now and waits (`revoke = "await"`); on failure the drop still revokes in the background.
pub async fn revoke_now(key: impl Into<Option<Arc<VaultKey>>>) {
    if let Some(key) = key.into() {
        if let Err(error) = key.revoke_in_place().await {
            tracing::warn!(key_id = %key.id(), %error, "revoke = \"await\" could not revoke now; retrying in the background");
        }
    }
}

/// Compiles only for `Send` futures: a body that is not `Send` (an `Rc`, a `RefCell` borrow held
/// across `.await`) is reported at the function, not pages later at `Router::route`.
pub fn body_must_be_send<F: Future + Send>(future: F) -> F {
    future
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_carries_every_argument() {
        let spec = spec(
            "stripe",
            12_500_000,
            &["/v1/a", "/v1/a/*"],
            90,
            Some(&["POST"]),
            "run-1".to_owned(),
        );
        assert_eq!(spec.vendor(), "stripe");
        assert_eq!(spec.cap().micros(), 12_500_000);
        assert_eq!(spec.endpoint_patterns(), ["/v1/a", "/v1/a/*"]);
        assert_eq!(spec.allowed_methods(), Some(&["POST".to_owned()][..]));
        assert_eq!(spec.lifetime(), Duration::from_secs(90));
        assert_eq!(spec.label_str(), "run-1");
        spec.validate().unwrap();
    }

    #[tokio::test]
    async fn issue_reports_a_missing_client_as_the_error() {
        let missing = Err(Error::NotConfigured("no client".into()));
        let error = issue(missing, spec("stripe", 1, &["/v1/a"], 60, None, "x".into()))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::NotConfigured(_)));
        let none = issue_or_continue(
            Err(Error::NotConfigured("no client".into())),
            spec("stripe", 1, &["/v1/a"], 60, None, "x".into()),
        )
        .await;
        assert!(none.is_none());
    }
}
