//! The patterns of vault-key, as a library so that the examples and the end-to-end tests run the
//! very same code. Each module is one way a key travels:
//!
//! - [`tools`]: Axum tool routes with `#[vault_key]` (the attribute path);
//! - [`layered`]: the same with the hand-written `VaultKeyLayer` and `Extension<Arc<VaultKey>>`;
//! - [`worker`]: a spawned Tokio worker that owns an `Arc<VaultKey>`;
//! - [`grpc`]: a tonic gRPC service whose calls each get a key from a tower layer;
//! - [`rollout`]: a gradual rollout that falls back to a shared key and counts the fallbacks;
//! - [`agent_backend`]: a long-running backend configured from the environment.

pub mod agent_backend;
pub mod grpc;
pub mod layered;
pub mod rollout;
pub mod tools;
pub mod worker;

use std::net::SocketAddr;

use axum::Router;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;
use tokio::net::TcpListener;
use vault_key::{Client, ResponseExt, VaultKey};
use vault_key_server::{Server, ServerConfig};

/// Creates a Stripe payment intent of `amount_cents` US cents with `key`, through the proxy;
/// `adjust` adds headers (an idempotency key, a sandbox delay). Returns the intent's id.
pub async fn create_payment_intent(
    key: &VaultKey,
    amount_cents: u64,
    adjust: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Result<String, vault_key::Error> {
    let request = key.post("/v1/payment_intents").form(&[
        ("amount", amount_cents.to_string()),
        ("currency", "usd".to_owned()),
    ]);
    let intent: serde_json::Value = adjust(request)
        .send()
        .await?
        .error_for_refusal()
        .await?
        .json()
        .await?;
    Ok(intent["id"].as_str().unwrap_or_default().to_owned())
}

/// A vault-key server running in this process.
#[derive(Debug)]
pub struct LocalServer {
    /// The server (in-memory SQLite, sandbox vendors).
    pub server: Server,
    /// A client for it.
    pub client: Client,
    /// Its admin token (fresh and random), for reading the admin API directly.
    pub admin_token: String,
}

impl LocalServer {
    /// `GET path` on the admin API, with the admin token, decoded.
    pub async fn admin_get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, reqwest::Error> {
        reqwest::Client::new()
            .get(format!("{}{path}", self.server.url()))
            .query(query)
            .bearer_auth(&self.admin_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// Creates a grant (`POST /v1/grants` with `terms`, as the API takes them): the credential
    /// a backend mints its keys from.
    pub async fn create_grant(
        &self,
        terms: serde_json::Value,
    ) -> Result<vault_key_wire::IssuedGrant, reqwest::Error> {
        reqwest::Client::new()
            .post(format!("{}/v1/grants", self.server.url()))
            .bearer_auth(&self.admin_token)
            .json(&terms)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// The keys whose label starts with `prefix` (first page), as the server reports them.
    pub async fn keys_labelled(
        &self,
        prefix: &str,
    ) -> Result<Vec<vault_key_wire::KeyView>, reqwest::Error> {
        let page: vault_key_wire::KeyPage = self
            .admin_get("/v1/keys", &[("label_prefix", prefix), ("limit", "1000")])
            .await?;
        Ok(page.keys)
    }
}

/// Starts a vault-key server in this process, with a fresh random admin token.
pub async fn start_sandbox_server() -> Result<LocalServer, Box<dyn std::error::Error>> {
    let admin_token = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let server = Server::start(ServerConfig::sandbox(SecretString::from(
        admin_token.clone(),
    )))
    .await?;
    let client = Client::new(server.url(), admin_token.clone())?;
    Ok(LocalServer {
        server,
        client,
        admin_token,
    })
}

/// Serves `app` on a free loopback port until the process ends; returns its address.
pub async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "example server stopped");
        }
    });
    Ok(addr)
}
