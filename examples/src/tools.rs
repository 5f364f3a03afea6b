//! An agent backend's tool routes, each an Axum handler with `#[vault_key]`: every call gets its
//! own Stripe key, capped and scoped to what that tool needs, revoked when the call ends.

use axum::extract::Path;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vault_key::{vault_key, ResponseExt, VaultKey};

/// What the agent asks the charge tool for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// Charges to make, in US cents, one after the other.
    pub amounts_cents: Vec<u64>,
    /// Ask the (sandbox) vendor to take this long per call: how the quickstart shows cancellation.
    #[serde(default)]
    pub vendor_delay_ms: Option<u64>,
}

/// What the charge tool did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeReport {
    /// The key this call used.
    pub key_id: String,
    /// Payment intents created.
    pub intents: Vec<String>,
}

/// Charges the amounts in turn with a key capped at $500 that may only touch payment intents.
#[vault_key(
    vendor = "stripe",
    cap = 500,
    endpoints = ["/v1/payment_intents", "/v1/payment_intents/*"],
    ttl = "5m",
    label = "{run_id}/charge"
)]
pub async fn charge(
    key: &VaultKey,
    Path(run_id): Path<String>,
    Json(request): Json<ChargeRequest>,
) -> Result<Json<ChargeReport>, vault_key::Error> {
    let mut intents = Vec::new();
    for amount in request.amounts_cents {
        // A refusal by the proxy (cap exhausted: 402 spend_cap_exceeded) ends the call here.
        let intent =
            crate::create_payment_intent(key, amount, |call| match request.vendor_delay_ms {
                Some(delay) => call.header("x-sandbox-delay-ms", delay.to_string()),
                None => call,
            })
            .await?;
        intents.push(intent);
    }
    Ok(Json(ChargeReport {
        key_id: key.id().to_owned(),
        intents,
    }))
}

/// What the agent asks the read tool for: any Stripe path; the key decides what it may see.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    /// A Stripe API path such as `/v1/customers`.
    pub path: String,
}

/// Reads Stripe objects with a read-only key limited to customers and the balance.
#[vault_key(
    vendor = "stripe",
    cap = 1,
    endpoints = ["/v1/customers", "/v1/customers/*", "/v1/balance"],
    methods = ["GET"],
    ttl = "1m",
    label = "{run_id}/read"
)]
pub async fn read(
    key: &VaultKey,
    Path(run_id): Path<String>,
    Json(request): Json<ReadRequest>,
) -> Result<Json<Value>, vault_key::Error> {
    let answer = key
        .get(&request.path)
        .send()
        .await?
        .error_for_refusal()
        .await?;
    Ok(Json(answer.json().await?))
}

/// The tool routes: `POST /runs/{run_id}/charge` and `POST /runs/{run_id}/read`.
pub fn router() -> Router {
    Router::new()
        .route("/runs/{run_id}/charge", post(charge))
        .route("/runs/{run_id}/read", post(read))
}
