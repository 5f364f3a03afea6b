//! A spawned Tokio worker that receives `Arc<VaultKey>`: the key outlives the function that
//! issued it for exactly as long as a worker still holds it, and is revoked when the last worker
//! ends or is aborted.
//!
//! ```sh
//! cargo run --example spawned_worker
//! ```

use std::sync::Arc;
use std::time::Duration;

use vault_key::KeySpec;
use vault_key_examples::{start_sandbox_server, worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = start_sandbox_server().await?;
    let spec = KeySpec::new("stripe")
        .cap_usd(100)
        .endpoints(["/v1/payment_intents"])
        .label("nightly-payouts");
    let key = Arc::new(local.client.issue(&spec).await?);
    println!("issued {}", key.id());

    let quick = worker::spawn_charger(Arc::clone(&key), vec![500, 700], Duration::from_millis(10));
    let endless = worker::spawn_charger(
        Arc::clone(&key),
        vec![100; 1000],
        Duration::from_millis(200),
    );
    drop(key); // the workers own it now

    println!("first worker created {:?}", quick.await??);
    tokio::time::sleep(Duration::from_millis(300)).await;
    endless.abort(); // the second worker is stopped mid-way; its Arc is dropped with it
    let _ = endless.await;
    vault_key::flush().await;
    println!("both workers are gone, so the key is revoked");
    local.server.shutdown().await;
    Ok(())
}
