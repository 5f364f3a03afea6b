//! A gradual rollout: the layer fails open, so while the key service is unreachable (or not yet
//! deployed) the handler falls back to the shared key it used before vault-key, and the layer
//! counts every fallback so the rollout can be watched.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use vault_key::axum::VaultKeyLayer;
use vault_key::{Client, KeySpec, ResponseExt, VaultKey};

/// The key used when no per-request key could be issued: in a real backend, the vendor secret
/// that every task shared before; here a long-lived vault key standing in for it.
#[derive(Debug, Clone)]
pub struct SharedKey(pub Arc<VaultKey>);

/// Lists customers with the request's own key when there is one, else with the shared key.
pub async fn customers(
    State(shared): State<SharedKey>,
    own: Option<Extension<Arc<VaultKey>>>,
) -> Result<Json<Value>, vault_key::Error> {
    let (key, source) = match own {
        Some(Extension(key)) => (key, "own"),
        None => (Arc::clone(&shared.0), "shared"),
    };
    let list: Value = key
        .get("/v1/customers")
        .send()
        .await?
        .error_for_refusal()
        .await?
        .json()
        .await?;
    Ok(Json(
        json!({ "key": source, "key_id": key.id(), "count": list["data"].as_array().map_or(0, Vec::len) }),
    ))
}

/// The router and its layer (keep the layer to read [`VaultKeyLayer::fallbacks`]).
pub fn router(issuer: Client, shared: SharedKey) -> (Router, VaultKeyLayer) {
    let layer = VaultKeyLayer::new(
        KeySpec::new("stripe")
            .cap_usd(1)
            .endpoints(["/v1/customers"])
            .methods(["GET"])
            .label("rollout"),
    )
    .client(issuer)
    .fail_open();
    let router = Router::new()
        .route("/customers", get(customers))
        .with_state(shared)
        .layer(layer.clone());
    (router, layer)
}
