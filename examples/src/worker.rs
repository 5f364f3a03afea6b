//! A spawned Tokio worker that receives the key as `Arc<VaultKey>`: the key lives as long as its
//! last owner, so it is revoked when the worker ends, or is aborted, after the issuer let go.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use vault_key::{Error, ResponseExt, VaultKey};

/// Spawns a worker that charges each amount (US cents), pausing `pause` between charges, and
/// returns the payment intents it created.
pub fn spawn_charger(
    key: Arc<VaultKey>,
    amounts_cents: Vec<u64>,
    pause: Duration,
) -> JoinHandle<Result<Vec<String>, Error>> {
    tokio::spawn(async move {
        let mut intents = Vec::new();
        for amount in amounts_cents {
            let intent: serde_json::Value = key
                .post("/v1/payment_intents")
                .form(&[
                    ("amount", amount.to_string()),
                    ("currency", "usd".to_owned()),
                ])
                .send()
                .await?
                .error_for_refusal()
                .await?
                .json()
                .await?;
            intents.push(intent["id"].as_str().unwrap_or_default().to_owned());
            tokio::time::sleep(pause).await;
        }
        Ok(intents)
    })
}
