use vault_key::vault_key;

#[vault_key(cap = 5, endpoints = ["/v1/customers"])]
async fn f() -> Result<(), vault_key::Error> {
    Ok(())
}

fn main() {}
