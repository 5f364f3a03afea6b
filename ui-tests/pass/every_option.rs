//! Every option of the grammar, and both values of each switch.
use vault_key::{vault_key, Client, VaultKey};

fn plain_client() -> Client {
    Client::new("http://127.0.0.1:8787", "admin-token").expect("a valid URL")
}

fn fallible_client() -> Result<Client, vault_key::Error> {
    Client::from_env()
}

mod clients {
    pub fn nested() -> vault_key::Client {
        super::plain_client()
    }
}

#[vault_key(
    vendor = "stripe",
    cap = 12.5,
    endpoints = ["/v1/payment_intents", "/v1/payment_intents/*", "/v1/files/**"],
    ttl = "90s",
    methods = ["GET", "POST"],
    label = "user-{user}/run-{run:?}",
    client = plain_client,
    on_issue_error = "fail",
    revoke = "background",
)]
async fn everything(user: &str, run: u64, key: &VaultKey) -> Result<(), vault_key::Error> {
    let _ = key.url("/v1/payment_intents");
    Ok(())
}

#[vault_key(vendor = "openai", cap = 1, endpoints = ["/v1/chat/completions"], ttl = "1h", client = clients::nested, revoke = "await")]
async fn awaited(key: &VaultKey) -> Result<(), vault_key::Error> {
    let _ = key.id();
    Ok(())
}

#[vault_key(vendor = "anthropic", cap = 2, endpoints = ["/v1/messages"], ttl = "1d", client = fallible_client, on_issue_error = "continue")]
async fn open(key: Option<std::sync::Arc<VaultKey>>) -> usize {
    key.map_or(0, |k| k.id().len())
}

#[vault_key(vendor = "stripe", cap = 3, endpoints = ["/v1/customers"], on_issue_error = "continue", revoke = "await")]
async fn open_without_a_key_parameter() -> bool {
    vault_key::current().is_some()
}

fn main() {
    drop(everything("u", 1));
    drop(awaited());
    drop(open());
    drop(open_without_a_key_parameter());
}
