use std::rc::Rc;

use axum::{routing::get, Router};
use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"])]
async fn handler(key: &VaultKey) -> Result<String, vault_key::Error> {
    let not_send = Rc::new(key.id().to_owned());
    let status = key.get("/v1/customers").send().await?.status();
    Ok(format!("{not_send} {status}"))
}

fn main() {
    let _app: Router = Router::new().route("/", get(handler));
}
