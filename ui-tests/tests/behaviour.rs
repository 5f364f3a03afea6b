//! `#[vault_key]` functions run against the real server: the key exists inside the body, is the
//! task-local `current()`, carries its label, and is revoked after return, `?`, panic and
//! cancellation. Also a lint gate: generated code must never trip its users' lints.

#![deny(warnings, unused_qualifications, clippy::all, clippy::pedantic)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::mpsc;
use vault_key::{vault_key, Client, Error, ResponseExt, VaultKey};
use vault_key_server::{Server, ServerConfig};

const ADMIN: &str = "attribute-test-admin-token-01";

/// One real server for the whole test binary, on its own thread so that it outlives every
/// test's runtime.
fn server_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let server = Server::start(ServerConfig::sandbox(SecretString::from(ADMIN)))
                    .await
                    .expect("server");
                tx.send(server.url()).expect("url");
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("the server starts")
    })
}

fn test_client() -> Client {
    Client::new(server_url(), ADMIN).expect("client")
}

/// Nothing listens on port 9.
fn unreachable_client() -> Client {
    Client::new("http://127.0.0.1:9", ADMIN).expect("client")
}

async fn key_view(id: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/keys/{id}", server_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("GET key");
    response.json().await.expect("json")
}

async fn status_after_flush(id: &str) -> String {
    vault_key::flush().await;
    key_view(id).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Vault(#[from] Error),
}

#[vault_key(vendor = "stripe", cap = 50, endpoints = ["/v1/payment_intents", "/v1/customers"], client = test_client)]
async fn charge(key: &VaultKey, cents: u64) -> Result<(String, u16), AppError> {
    let current = vault_key::current().map(|k| k.id().to_owned());
    assert_eq!(
        current.as_deref(),
        Some(key.id()),
        "the key is also current()"
    );
    let body = format!("amount={cents}&currency=usd");
    let response = key
        .post("/v1/payment_intents")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(Error::from)?
        .error_for_refusal()
        .await?;
    Ok((key.id().to_owned(), response.status().as_u16()))
}

#[tokio::test]
async fn the_key_exists_inside_and_is_revoked_after_return() {
    let (id, status) = charge(700).await.expect("charge");
    assert_eq!(status, 200);
    let view = key_view(&id).await;
    assert_eq!(view["spent_today_usd"], serde_json::json!(7));
    assert_eq!(
        view["label"], "behaviour::charge",
        "default label: module path and name"
    );
    assert_eq!(view["daily_usd_cap"], serde_json::json!(50));
    assert_eq!(status_after_flush(&id).await, "revoked");
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = test_client)]
async fn refused_midway(ids: mpsc::UnboundedSender<String>) -> Result<(), Error> {
    let key = vault_key::current().expect("current() without a key parameter");
    ids.send(key.id().to_owned()).ok();
    key.get("/v1/charges")
        .send()
        .await?
        .error_for_refusal()
        .await?;
    unreachable!("/v1/charges is outside the allowlist")
}

#[tokio::test]
async fn revoked_after_an_early_return_through_question_mark() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let error = refused_midway(tx).await.expect_err("refused");
    assert!(matches!(error, Error::EndpointNotAllowed { .. }), "{error}");
    let id = rx.recv().await.expect("id");
    assert_eq!(status_after_flush(&id).await, "revoked");
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = test_client)]
async fn panics_inside(
    key: Arc<VaultKey>,
    ids: mpsc::UnboundedSender<String>,
) -> Result<(), Error> {
    ids.send(key.id().to_owned()).ok();
    panic!("the body panics while the key is live");
}

#[tokio::test]
async fn revoked_after_a_panic() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let joined = tokio::spawn(panics_inside(tx)).await;
    assert!(joined.expect_err("panicked").is_panic());
    let id = rx.recv().await.expect("id");
    assert_eq!(status_after_flush(&id).await, "revoked");
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = test_client)]
async fn runs_forever(key: &VaultKey, ids: mpsc::UnboundedSender<String>) -> Result<(), Error> {
    ids.send(key.id().to_owned()).ok();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

#[tokio::test]
async fn revoked_after_cancellation() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut call = Box::pin(runs_forever(tx));
    // Drive the call until its body holds the key, then cancel it by dropping the future.
    let id = tokio::select! {
        id = rx.recv() => id.expect("id"),
        _ = call.as_mut() => unreachable!("the body sleeps for an hour"),
    };
    assert_eq!(key_view(&id).await["status"], "active");
    drop(call);
    assert_eq!(status_after_flush(&id).await, "revoked");
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = test_client, revoke = "await")]
async fn revoked_on_the_way_out(key: &VaultKey) -> Result<String, Error> {
    Ok(key.id().to_owned())
}

#[tokio::test]
async fn revoke_await_has_revoked_before_the_call_returns() {
    let id = revoked_on_the_way_out().await.expect("issued");
    // No flush: the function returned only after the server had the revocation.
    assert_eq!(key_view(&id).await["status"], "revoked");
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = unreachable_client, on_issue_error = "continue")]
async fn fails_open(key: Option<&VaultKey>) -> &'static str {
    match key {
        Some(_) => "own key",
        None => "shared fallback",
    }
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = unreachable_client)]
async fn fails_closed(key: &VaultKey) -> Result<String, Error> {
    Ok(key.id().to_owned())
}

#[tokio::test]
async fn issuance_failure_continues_or_fails_as_told() {
    assert_eq!(fails_open().await, "shared fallback");
    let error = fails_closed().await.expect_err("no server");
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
}

#[vault_key(vendor = "stripe", cap = 12.5, endpoints = ["/v1/customers"], client = test_client, label = "user-{user_id}/run-{run_id}", ttl = "90s", methods = ["GET"])]
async fn labelled(user_id: u32, run_id: &str) -> Result<String, Error> {
    let key = vault_key::current().expect("current");
    Ok(key.id().to_owned())
}

#[tokio::test]
async fn label_and_spec_options_reach_the_issued_key() {
    let id = labelled(7, "r42").await.expect("issued");
    let view = key_view(&id).await;
    assert_eq!(view["label"], "user-7/run-r42");
    assert_eq!(view["daily_usd_cap"], serde_json::json!(12.5));
    assert_eq!(view["allowed_methods"], serde_json::json!(["GET"]));
    let created = view["created_at"].as_str().expect("created_at").to_owned();
    let expires = view["expires_at"].as_str().expect("expires_at").to_owned();
    assert_ne!(created, expires);
}

struct Agent {
    name: &'static str,
}

impl Agent {
    #[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = test_client, label = "agent-{self}")]
    async fn list_customers(&self, key: &VaultKey) -> Result<(String, u16), Error> {
        let status = key.get("/v1/customers").send().await?.status().as_u16();
        Ok((format!("{}:{}", self.name, key.id()), status))
    }
}

impl std::fmt::Display for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], client = test_client)]
async fn generic<T: Into<String> + Send>(
    key: Option<Arc<VaultKey>>,
    tag: T,
) -> Result<(String, String), Error> {
    let key = key.expect("fail mode always has a key");
    Ok((tag.into(), key.id().to_owned()))
}

#[tokio::test]
async fn methods_and_generic_functions_work_too() {
    let agent = Agent { name: "scout" };
    let (who, status) = agent.list_customers().await.expect("method");
    assert_eq!(status, 200);
    let id = who.strip_prefix("scout:").expect("prefixed").to_owned();
    assert_eq!(key_view(&id).await["label"], "agent-scout");
    let (tag, id) = generic("tagged").await.expect("generic");
    assert_eq!(tag, "tagged");
    assert_eq!(status_after_flush(&id).await, "revoked");
}
