use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn f(key: VaultKey) -> Result<String, vault_key::Error> {
    Ok(key.id().to_owned())
}

// Callers see the function as it would be without the mistake: no second error here.
async fn caller() -> Result<String, vault_key::Error> {
    f().await
}

fn main() {
    let _ = caller();
}
