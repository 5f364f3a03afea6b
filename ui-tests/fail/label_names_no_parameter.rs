use vault_key::vault_key;

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], label = "run-{run_id}")]
async fn f(user_id: u32) -> Result<u32, vault_key::Error> {
    Ok(user_id)
}

fn main() {}
