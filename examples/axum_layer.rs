//! The hand-written path: `VaultKeyLayer` issues a key per request, the handler extracts
//! `Extension<Arc<VaultKey>>`, and the key is revoked once the response is out.
//!
//! ```sh
//! cargo run --example axum_layer
//! ```

use serde_json::Value;
use vault_key_examples::{layered, serve, start_sandbox_server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = start_sandbox_server().await?;
    let backend = serve(layered::router(local.client.clone())).await?;
    let answer: Value = reqwest::Client::new()
        .get(format!("http://{backend}/balance"))
        .header("x-user-id", "u-7")
        .header("x-agent-run-id", "run-42")
        .send()
        .await?
        .json()
        .await?;
    println!(
        "balance read with key {} labelled {}: {}",
        answer["key_id"], answer["label"], answer["available"]
    );
    vault_key::flush().await;
    println!("every key of user u-7 is revoked; stop a whole user with POST /v1/keys/revoke {{\"label_prefix\": \"user:u-7/\"}}");
    local.server.shutdown().await;
    Ok(())
}
