//! An Axum handler with `#[vault_key]`: each request to the charge tool gets its own capped,
//! scoped Stripe key, revoked when the handler returns.
//!
//! ```sh
//! cargo run --example axum_attribute
//! ```

use serde_json::{json, Value};
use vault_key_examples::{serve, start_sandbox_server, tools};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = start_sandbox_server().await?;
    vault_key::init(local.client.clone());
    let backend = serve(tools::router()).await?;

    let report: Value = reqwest::Client::new()
        .post(format!("http://{backend}/runs/demo/charge"))
        .json(&json!({"amounts_cents": [1200]}))
        .send()
        .await?
        .json()
        .await?;
    println!(
        "charged with key {}: {}",
        report["key_id"], report["intents"]
    );

    vault_key::flush().await;
    let id = report["key_id"].as_str().unwrap_or_default();
    let key: Value = reqwest::Client::new()
        .get(format!("{}/v1/keys/{id}", local.server.url()))
        .bearer_auth(&local.admin_token)
        .send()
        .await?
        .json()
        .await?;
    println!(
        "key {id}: status {}, spent ${}",
        key["status"], key["spent_today_usd"]
    );
    local.server.shutdown().await;
    Ok(())
}
