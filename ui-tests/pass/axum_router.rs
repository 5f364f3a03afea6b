//! Annotated handlers with extractors, routed in a real `axum::Router`.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use vault_key::{vault_key, ResponseExt, VaultKey};

#[derive(Clone)]
struct AppState {
    currency: &'static str,
}

#[vault_key(vendor = "stripe", cap = 500, endpoints = ["/v1/payment_intents", "/v1/payment_intents/*"], ttl = "5m")]
async fn charge(key: &VaultKey, State(state): State<AppState>, Json(req): Json<Value>) -> Result<Json<Value>, vault_key::Error> {
    let amount = req["amount"].as_u64().unwrap_or(0).to_string();
    let intent = key
        .post("/v1/payment_intents")
        .form(&[("amount", amount.as_str()), ("currency", state.currency)])
        .send()
        .await?
        .error_for_refusal()
        .await?;
    Ok(Json(intent.json().await?))
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/payment_intents/*"], label = "lookup-{id}", methods = ["GET"])]
async fn lookup(Path(id): Path<String>, key: Arc<VaultKey>) -> Result<Json<Value>, vault_key::Error> {
    let intent = key.get(&format!("/v1/payment_intents/{id}")).send().await?.error_for_refusal().await?;
    Ok(Json(intent.json().await?))
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], on_issue_error = "continue")]
async fn fallback(key: Option<&VaultKey>) -> Json<Value> {
    Json(json!({ "own_key": key.is_some() }))
}

fn main() {
    let _app: Router = Router::new()
        .route("/charge", post(charge))
        .route("/intents/{id}", get(lookup))
        .route("/fallback", get(fallback))
        .with_state(AppState { currency: "usd" });
}
