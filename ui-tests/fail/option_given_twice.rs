use vault_key::vault_key;

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], ttl = "5m", ttl = "1h")]
async fn f() -> Result<(), vault_key::Error> {
    Ok(())
}

fn main() {}
