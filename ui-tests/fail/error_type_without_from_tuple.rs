use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn f(key: &VaultKey) -> Result<String, (u16, String)> {
    Ok(key.id().to_owned())
}

fn main() {}
