//! The current key as a task-local, for code deep in the call stack.

use std::future::Future;
use std::sync::Arc;

use tokio::task::futures::TaskLocalFuture;

use crate::VaultKey;

tokio::task_local! {
    static CURRENT: Arc<VaultKey>;
}

/// The key of the enclosing [`scope`] (the `#[vault_key]` attribute opens one around its body),
/// or `None` outside any scope. Holding the returned `Arc` keeps the key alive.
///
/// ```
/// # async fn deep_in_the_stack() {
/// if let Some(key) = vault_key::current() {
///     let _request = key.get("/v1/customers");
/// }
/// # }
/// ```
pub fn current() -> Option<Arc<VaultKey>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// Runs `future` with `key` as [`current`]. The key is set around every poll, including the
/// drop of a cancelled future, and the scope's own reference is released when the future ends.
///
/// ```no_run
/// # async fn run(client: vault_key::Client) -> Result<(), vault_key::Error> {
/// use std::sync::Arc;
///
/// let key = Arc::new(client.issue(&vault_key::KeySpec::new("stripe").cap_usd(5).endpoints(["/v1/customers"])).await?);
/// vault_key::scope(key, async {
///     let key = vault_key::current().expect("inside the scope");
///     key.get("/v1/customers").send().await
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub fn scope<F: Future>(key: Arc<VaultKey>, future: F) -> TaskLocalFuture<Arc<VaultKey>, F> {
    CURRENT.scope(key, future)
}
