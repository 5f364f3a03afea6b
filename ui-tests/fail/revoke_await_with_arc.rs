use std::sync::Arc;

use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], revoke = "await")]
async fn f(key: Arc<VaultKey>) -> Result<(), vault_key::Error> {
    tokio::spawn(async move { key.get("/v1/customers").send().await });
    Ok(())
}

fn main() {
    let _ = f();
}
