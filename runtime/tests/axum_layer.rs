//! The hand-written Axum path: a layer issues a key per request, the handler extracts
//! `Extension<Arc<VaultKey>>`, and the key is revoked once the response is out.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use common::*;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use vault_key::axum::{RequestLabels, VaultKeyLayer};
use vault_key::{Client, KeySpec, ResponseExt, VaultKey};

/// Key ids the handlers saw, in order.
type Seen = Arc<Mutex<Vec<String>>>;

async fn charge(
    State(seen): State<Seen>,
    labels: RequestLabels,
    Extension(key): Extension<Arc<VaultKey>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, vault_key::Error> {
    seen.lock().unwrap().push(key.id().to_owned());
    assert_eq!(
        vault_key::current().map(|k| k.id().to_owned()),
        Some(key.id().to_owned()),
        "the layer sets the task-local too"
    );
    let amount = body["amount"].as_u64().unwrap_or(0).to_string();
    let intent: Value = key
        .post("/v1/payment_intents")
        .form(&[("amount", amount.as_str()), ("currency", "usd")])
        .send()
        .await?
        .error_for_refusal()
        .await?
        .json()
        .await?;
    Ok(Json(
        json!({"intent": intent["id"], "key_label": key.label(), "label": labels.label()}),
    ))
}

async fn slow(State(seen): State<Seen>, Extension(key): Extension<Arc<VaultKey>>) -> &'static str {
    seen.lock().unwrap().push(key.id().to_owned());
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late"
}

async fn maybe(key: Option<Extension<Arc<VaultKey>>>) -> &'static str {
    match key {
        Some(_) => "own key",
        None => "shared fallback",
    }
}

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn app(client: Client, seen: Seen) -> Router {
    Router::new()
        .route("/charge", post(charge))
        .route("/slow", get(slow))
        .with_state(seen)
        .layer(
            VaultKeyLayer::new(
                KeySpec::new("stripe")
                    .cap_usd(20)
                    .endpoints(["/v1/payment_intents"])
                    .label("agent"),
            )
            .client(client),
        )
}

#[test]
fn the_layer_issues_per_request_and_revokes_after_the_response() {
    let server = TestServer::start();
    runtime().block_on(async {
        let seen = Seen::default();
        let url = serve(app(server.client(), seen.clone())).await;
        let http = reqwest::Client::new();
        let answer: Value = http
            .post(format!("{url}/charge"))
            .header("x-user-id", "u-7")
            .header("x-agent-run-id", "run-42")
            .json(&json!({"amount": 1500}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            answer["intent"].as_str().unwrap().starts_with("pi_"),
            "{answer}"
        );
        assert_eq!(answer["key_label"], "user:u-7/run:run-42");
        let first = seen.lock().unwrap()[0].clone();
        let view = server.key(&first).await;
        assert_eq!(view["label"], "user:u-7/run:run-42");
        assert_eq!(view["spent_today_usd"], json!(15));
        server.flush().await;
        assert_eq!(server.status(&first).await, "revoked");

        // A second request gets a key of its own: the $20 cap is per request, and exhausting it
        // comes back as 402 spend_cap_exceeded.
        let over = http
            .post(format!("{url}/charge"))
            .json(&json!({"amount": 2500}))
            .send()
            .await
            .unwrap();
        assert_eq!(over.status(), 402);
        let body: Value = over.json().await.unwrap();
        assert_eq!(body["code"], "spend_cap_exceeded");
        assert_eq!(body["cap_usd"], json!(20));
        let second = seen.lock().unwrap()[1].clone();
        assert_ne!(first, second);
        assert_eq!(
            server.key(&second).await["label"],
            "agent",
            "no label headers: the spec's label"
        );
        server.flush().await;
        assert_eq!(server.status(&second).await, "revoked");
    });
}

#[test]
fn a_client_that_disconnects_mid_request_still_gets_its_key_revoked() {
    let server = TestServer::start();
    runtime().block_on(async {
        let seen = Seen::default();
        let url = serve(app(server.client(), seen.clone())).await;
        let request = tokio::spawn(reqwest::Client::new().get(format!("{url}/slow")).send());
        // The client hangs up once the handler holds its key (however slow this machine is).
        let id = loop {
            if let Some(id) = seen.lock().unwrap().first().cloned() {
                break id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(server.status(&id).await, "active");
        request.abort();
        assert!(request.await.unwrap_err().is_cancelled());
        // Axum drops the handler's future when the connection goes; give it a moment to notice.
        for _ in 0..100 {
            server.flush().await;
            if server.status(&id).await == "revoked" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("key {id} is still {}", server.status(&id).await);
    });
}

#[test]
fn fail_open_falls_back_and_counts_while_fail_closed_answers_503() {
    runtime().block_on(async {
        // Nothing listens on port 9: issuance fails.
        let unreachable = Client::new("http://127.0.0.1:9", ADMIN).unwrap();
        let spec = KeySpec::new("stripe")
            .cap_usd(5)
            .endpoints(["/v1/customers"]);
        // Configured while another clone of the layer exists: the settings must still apply.
        let base = VaultKeyLayer::new(spec.clone());
        let _other_clone = base.clone();
        let open = base.client(unreachable.clone()).fail_open();
        let open_url = serve(Router::new().route("/", get(maybe)).layer(open.clone())).await;
        let closed_url = serve(
            Router::new()
                .route("/", get(maybe))
                .layer(VaultKeyLayer::new(spec).client(unreachable)),
        )
        .await;
        let http = reqwest::Client::new();
        for _ in 0..3 {
            assert_eq!(
                http.get(&open_url)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
                "shared fallback"
            );
        }
        assert_eq!(open.fallbacks(), 3);
        let refused = http.get(&closed_url).send().await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(
            refused.json::<Value>().await.unwrap()["code"],
            "vault_key_unavailable"
        );
    });
}

#[test]
fn with_a_working_server_the_option_path_gets_its_own_key() {
    let server = TestServer::start();
    runtime().block_on(async {
        let layer = VaultKeyLayer::new(
            KeySpec::new("stripe")
                .cap_usd(5)
                .endpoints(["/v1/customers"]),
        )
        .client(server.client())
        .fail_open();
        let url = serve(Router::new().route("/", get(maybe)).layer(layer.clone())).await;
        assert_eq!(
            reqwest::get(&url).await.unwrap().text().await.unwrap(),
            "own key"
        );
        assert_eq!(layer.fallbacks(), 0);
    });
}
