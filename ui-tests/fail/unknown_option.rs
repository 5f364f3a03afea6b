use vault_key::vault_key;

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], budget = 5)]
async fn f() -> Result<(), vault_key::Error> {
    Ok(())
}

fn main() {}
