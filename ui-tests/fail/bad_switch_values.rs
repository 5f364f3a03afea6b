use vault_key::vault_key;

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], on_issue_error = "ignore", revoke = "later")]
async fn f() -> Result<(), vault_key::Error> {
    Ok(())
}

fn main() {}
