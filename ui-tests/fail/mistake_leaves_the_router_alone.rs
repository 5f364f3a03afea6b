use axum::routing::post;
use axum::Router;
use vault_key::{vault_key, VaultKey};

// A mistake in the attribute (the cap is missing) is reported there and only there: the
// handler still looks like a handler to the router.
#[vault_key(vendor = "stripe", endpoints = ["/v1/payment_intents"])]
async fn charge(key: &VaultKey, body: String) -> Result<String, vault_key::Error> {
    Ok(format!("{} {body}", key.id()))
}

fn main() {
    let _app: Router = Router::new().route("/charge", post(charge));
}
