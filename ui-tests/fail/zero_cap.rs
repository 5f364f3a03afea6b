use vault_key::vault_key;

#[vault_key(vendor = "stripe", cap = 0, endpoints = ["/v1/customers"])]
async fn f() -> Result<(), vault_key::Error> {
    Ok(())
}

fn main() {}
