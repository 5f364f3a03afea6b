use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn f(key: &mut VaultKey) -> Result<String, vault_key::Error> {
    Ok(key.id().to_owned())
}

fn main() {
    let _ = f();
}
