//! An activity-style function (as in a workflow engine): it issues its key explicitly, uses it,
//! and revokes it explicitly, awaiting the server, before it reports done, whether the work
//! succeeded or not.

use std::time::Duration;

use vault_key::{Client, Error, KeySpec, VaultKey};

/// What the activity produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeOutcome {
    /// The key it used (already revoked when this is returned).
    pub key_id: String,
    /// The payment intent created.
    pub intent_id: String,
}

/// Charges `amount_cents` for `order_id` with a key that exists only for this activity.
pub async fn charge_order(
    client: &Client,
    order_id: &str,
    amount_cents: u64,
) -> Result<ChargeOutcome, Error> {
    let spec = KeySpec::new("stripe")
        .cap_exact(vault_key::Usd::from_micros(amount_cents * 10_000))
        .endpoints(["/v1/payment_intents"])
        .methods(["POST"])
        .ttl(Duration::from_secs(60))
        .label(format!("activity/{order_id}"));
    let key = client.issue(&spec).await?;
    let key_id = key.id().to_owned();
    let charged = create_intent(&key, order_id, amount_cents).await;
    // Revoke first, then report: the activity is not done while its key still works.
    key.revoke().await?;
    Ok(ChargeOutcome {
        key_id,
        intent_id: charged?,
    })
}

async fn create_intent(key: &VaultKey, order_id: &str, amount_cents: u64) -> Result<String, Error> {
    // The order id as idempotency key: a retried activity cannot charge twice.
    crate::create_payment_intent(key, amount_cents, |request| {
        request.header("idempotency-key", format!("order-{order_id}"))
    })
    .await
}
