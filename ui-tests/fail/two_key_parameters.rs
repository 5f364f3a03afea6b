use std::sync::Arc;

use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn f(key: &VaultKey, other: Arc<VaultKey>) -> Result<(), vault_key::Error> {
    let _ = (key, other);
    Ok(())
}

fn main() {}
