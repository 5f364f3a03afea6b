use vault_key::{vault_key, VaultKey};

#[derive(Debug)]
struct MyError;

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn f(key: &VaultKey) -> Result<String, MyError> {
    Ok(key.id().to_owned())
}

fn main() {}
