use vault_key::vault_key;

#[vault_key(vendor = "", cap = 0, endpoints = ["/v1/*x", "/**/y"], ttl = "0s", label = "{}")]
async fn f() -> Result<(), vault_key::Error> {
    Ok(())
}

fn main() {}
