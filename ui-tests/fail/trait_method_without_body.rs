use vault_key::{vault_key, VaultKey};

trait Charges {
    #[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/charges"])]
    async fn charge(&self, key: &VaultKey) -> Result<(), vault_key::Error>;
}

fn main() {}
