//! The hand-written path: `VaultKeyLayer` issues a key per request and the handler takes it as
//! `Extension<Arc<VaultKey>>`. The key's label comes from the `x-user-id` / `x-agent-run-id`
//! headers; it is revoked once the response is out.

use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use vault_key::axum::{RequestLabels, VaultKeyLayer};
use vault_key::{Client, KeySpec, ResponseExt, VaultKey};

/// Reads the Stripe balance with the request's own key.
pub async fn balance(
    Extension(key): Extension<Arc<VaultKey>>,
    labels: RequestLabels,
) -> Result<Json<Value>, vault_key::Error> {
    let balance: Value = key
        .get("/v1/balance")
        .send()
        .await?
        .error_for_refusal()
        .await?
        .json()
        .await?;
    Ok(Json(json!({
        "key_id": key.id(),
        "label": labels.label(),
        "available": balance["available"],
    })))
}

/// `GET /balance` behind a layer that issues read-only balance keys.
pub fn router(client: Client) -> Router {
    let spec = KeySpec::new("stripe")
        .cap_usd(1)
        .endpoints(["/v1/balance"])
        .methods(["GET"])
        .label("balance");
    Router::new()
        .route("/balance", get(balance))
        .layer(VaultKeyLayer::new(spec).client(client))
}
