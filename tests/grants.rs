//! A backend that holds a grant instead of the admin token: `#[vault_key]` mints each call's
//! key in-process (no server contact on entry), the run's budget holds across all of them, and
//! every minted key is revoked by the grant's own credential when its call ends.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Extension;
use secrecy::ExposeSecret;
use serde_json::json;
use vault_key::axum::VaultKeyLayer;
use vault_key::{vault_key, Client, Error, KeySpec, Usd, VaultKey};
use vault_key_examples::{create_payment_intent, serve, start_sandbox_server};
use vault_key_wire::{KeyStatus, KeyView};

static GRANT_CLIENT: OnceLock<Client> = OnceLock::new();

fn grant_client() -> Client {
    GRANT_CLIENT.get().expect("set by the test").clone()
}

/// A client of a grant of its own, for the run budgets (the first grant's day is spent).
static RUN_CLIENT: OnceLock<Client> = OnceLock::new();

fn run_client() -> Client {
    RUN_CLIENT.get().expect("set by the test").clone()
}

/// One tool call of agent run `run-g`: a $10 charge with a key minted for it.
#[vault_key(
    vendor = "stripe",
    cap = 20,
    endpoints = ["/v1/payment_intents"],
    ttl = "5m",
    label = "run-g/charge",
    client = grant_client
)]
async fn charge_ten_dollars(key: &VaultKey) -> Result<String, Error> {
    create_payment_intent(key, 1000, |r| r).await
}

/// The same tool with a label of its own: inside a run it becomes `{run prefix}charge`.
#[vault_key(
    vendor = "stripe",
    cap = 20,
    endpoints = ["/v1/payment_intents"],
    ttl = "5m",
    label = "charge",
    client = run_client
)]
async fn charge_in_run(key: &VaultKey) -> Result<String, Error> {
    create_payment_intent(key, 1000, |r| r).await
}

/// A tool behind the Layer: the request's key (minted under its run) charges $10.
async fn layered_charge(Extension(key): Extension<Arc<VaultKey>>) -> Result<String, Error> {
    create_payment_intent(&key, 1000, |r| r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_client_mints_each_calls_key_and_the_grant_caps_the_run() {
    let local = start_sandbox_server().await.unwrap();
    let grant = local
        .create_grant(json!({
            "label_prefix": "run-g/",
            "vendor": "stripe",
            "max_key_usd_cap": 20,
            "daily_usd_cap": 500,
            "allowed_endpoints": ["/v1/payment_intents", "/v1/payment_intents/*"],
            "max_key_ttl": "10m",
            "expires_in": "1h",
        }))
        .await
        .unwrap();
    let client = Client::grant_builder(local.server.url(), grant.grant.clone())
        .build()
        .unwrap();
    GRANT_CLIENT.set(client.clone()).unwrap();

    // 100 tool calls at once, $10 each, against the run's $500: exactly 50 charge.
    let calls = futures_util::future::join_all((0..100).map(|_| charge_ten_dollars())).await;
    let charged = calls.iter().filter(|c| c.is_ok()).count();
    assert_eq!(
        charged,
        50,
        "{:?}",
        calls
            .iter()
            .filter(|c| c.is_err())
            .take(3)
            .collect::<Vec<_>>()
    );
    for refused in calls.iter().filter_map(|c| c.as_ref().err()) {
        assert!(matches!(refused, Error::CapExhausted { .. }), "{refused:?}");
    }
    assert_eq!(local.server.sandbox().unwrap().received_count(), 50);

    // Every minted key was revoked with the grant's credential once its call ended.
    tokio::time::timeout(Duration::from_secs(10), client.flush())
        .await
        .expect("revocations flushed");
    let keys: Vec<KeyView> = local.keys_labelled("run-g/").await.unwrap();
    assert_eq!(
        keys.len(),
        100,
        "every minted key was seen at its first use"
    );
    assert!(
        keys.iter().all(|k| k.status == KeyStatus::Revoked),
        "{keys:?}"
    );
    let spent: u64 = keys.iter().map(|k| k.spent_today_usd.micros()).sum();
    assert_eq!(spent, 500_000_000);

    // Run budgets: each run's $30 holds across its calls' keys, whatever the grant has left.
    let dollars = |n| Usd::from_dollars(n).unwrap();
    let run_grant = local
        .create_grant(json!({
            "label_prefix": "run-g/", "vendor": "stripe", "max_key_usd_cap": 20,
            "daily_usd_cap": 500, "allowed_endpoints": ["/v1/payment_intents"],
            "max_key_ttl": "10m", "expires_in": "1h",
        }))
        .await
        .unwrap();
    let client = Client::grant_builder(local.server.url(), run_grant.grant)
        .build()
        .unwrap();
    RUN_CLIENT.set(client.clone()).unwrap();
    let run_a = client
        .open_run("run-g/a/", dollars(30), Duration::from_secs(600))
        .unwrap();
    let run_b = client
        .open_run("run-g/b/", dollars(30), Duration::from_secs(600))
        .unwrap();
    let mut outcomes = Vec::new();
    for run in [&run_a, &run_b] {
        let calls =
            futures_util::future::join_all((0..5).map(|_| run.scope(charge_in_run()))).await;
        outcomes.push(calls.iter().filter(|c| c.is_ok()).count());
        for refused in calls.iter().filter_map(|c| c.as_ref().err()) {
            assert!(
                matches!(refused, Error::CapExhausted { grant: Some(g), .. } if g == run.id()),
                "{refused:?}"
            );
        }
    }
    assert_eq!(outcomes, [3, 3]);
    // A run shorter than a key's own lifetime (five minutes): its keys end with it.
    let short = client
        .open_run("run-g/short/", dollars(30), Duration::from_secs(120))
        .unwrap();
    short
        .scope(charge_in_run())
        .await
        .expect("a key of a two-minute run");
    let in_run_a = local.keys_labelled("run-g/a/").await.unwrap();
    assert_eq!(in_run_a.len(), 5);
    assert!(
        in_run_a.iter().all(|k| k.label == "run-g/a/charge"),
        "{in_run_a:?}"
    );

    // The Layer opens one run per x-agent-run-id.
    let layer_grant = local
        .create_grant(json!({
            "label_prefix": "user:", "vendor": "stripe", "max_key_usd_cap": 20,
            "daily_usd_cap": 500, "allowed_endpoints": ["/v1/payment_intents"],
            "max_key_ttl": "10m", "expires_in": "1h",
        }))
        .await
        .unwrap();
    let layer_client = Client::grant_builder(local.server.url(), layer_grant.grant.clone())
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/charge", axum::routing::post(layered_charge))
        .layer(
            VaultKeyLayer::new(
                KeySpec::new("stripe")
                    .cap_usd(20)
                    .endpoints(["/v1/payment_intents"])
                    .label("user:anonymous"),
            )
            .client(layer_client.clone())
            .run_budget(dollars(30), Duration::from_secs(600)),
        );
    let backend = serve(app).await.unwrap();
    let http = reqwest::Client::new();
    let mut by_run = Vec::new();
    for run in ["r1", "r2"] {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let response = http
                .post(format!("http://{backend}/charge"))
                .header("x-user-id", "u-7")
                .header("x-agent-run-id", run)
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        by_run.push(statuses);
    }
    assert_eq!(
        by_run,
        [[200, 200, 200, 402, 402], [200, 200, 200, 402, 402]]
    );
    layer_client.flush().await;
    let layered: Vec<KeyView> = local.keys_labelled("user:u-7/run:r1").await.unwrap();
    assert_eq!(layered.len(), 5);
    assert!(layered.iter().all(|k| k.status == KeyStatus::Revoked));

    // Minting needs no server: with the server gone, a key is still made (and refused only
    // where it is used).
    local.server.shutdown().await;
    let spec = KeySpec::new("stripe")
        .cap_usd(5)
        .endpoints(["/v1/payment_intents"])
        .label("run-g/offline");
    let key = client.issue(&spec).await.expect("minted with no server");
    assert!(key.id().starts_with("key_"));
    assert!(key.token().expose_secret().starts_with("vkm_"));
}
