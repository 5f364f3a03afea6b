//! A backend that holds a grant instead of the admin token: `#[vault_key]` mints each call's
//! key in-process (no server contact on entry), the run's budget holds across all of them, and
//! every minted key is revoked by the grant's own credential when its call ends.

use std::sync::OnceLock;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;
use vault_key::{vault_key, Client, Error, KeySpec, VaultKey};
use vault_key_examples::{create_payment_intent, start_sandbox_server};
use vault_key_wire::{KeyStatus, KeyView};

static GRANT_CLIENT: OnceLock<Client> = OnceLock::new();

fn grant_client() -> Client {
    GRANT_CLIENT.get().expect("set by the test").clone()
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
