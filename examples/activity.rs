//! An activity-style function that issues its key, uses it and revokes it explicitly before it
//! reports done.
//!
//! ```sh
//! cargo run --example activity
//! ```

use vault_key_examples::{activity, start_sandbox_server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = start_sandbox_server().await?;
    let outcome = activity::charge_order(&local.client, "order-1001", 4_999).await?;
    println!(
        "order-1001 charged as {} with key {} (already revoked)",
        outcome.intent_id, outcome.key_id
    );
    local.server.shutdown().await;
    Ok(())
}
