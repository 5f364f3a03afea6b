use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
fn f(key: &VaultKey) -> Result<(), vault_key::Error> {
    let _ = key;
    Ok(())
}

fn main() {}
