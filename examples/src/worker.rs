//! A spawned Tokio worker that receives the key as `Arc<VaultKey>`: the key lives as long as its
//! last owner, so it is revoked when the worker ends, or is aborted, after the issuer let go.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use vault_key::{Error, VaultKey};

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
            intents.push(crate::create_payment_intent(&key, amount, |request| request).await?);
            tokio::time::sleep(pause).await;
        }
        Ok(intents)
    })
}
