//! Every way of receiving the key, and none at all.
use std::sync::Arc;

use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn by_reference(key: &VaultKey) -> Result<String, vault_key::Error> {
    Ok(key.id().to_owned())
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn by_arc(key: Arc<VaultKey>) -> Result<usize, vault_key::Error> {
    // An Arc can go to a spawned worker; the key lives until the last owner drops it.
    let worker = tokio::spawn(async move { key.id().len() });
    Ok(worker.await.unwrap_or(0))
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn optional_reference(key: Option<&VaultKey>) -> Result<bool, vault_key::Error> {
    Ok(key.is_some())
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn optional_arc(key: Option<Arc<vault_key::VaultKey>>) -> Result<bool, vault_key::Error> {
    Ok(key.is_some())
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn through_current() -> Result<bool, vault_key::Error> {
    Ok(vault_key::current().is_some())
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn key_among_others(count: u32, key: &VaultKey, name: String) -> Result<String, vault_key::Error> {
    Ok(format!("{count} {name} {}", key.label()))
}

fn main() {
    // The key parameter is gone from every signature; the futures are Send.
    fn send<F: std::future::Future + Send>(_: F) {}
    send(by_reference());
    send(by_arc());
    send(optional_reference());
    send(optional_arc());
    send(through_current());
    send(key_among_others(1, "x".to_owned()));
}
