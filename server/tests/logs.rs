//! At its most verbose log level the server never writes a vault token (nor the admin token or a
//! vendor secret) to its log.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn trace_logs_never_contain_a_token() {
    let log_path = std::env::temp_dir().join(format!("vault-key-trace-{}.log", std::process::id()));
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut server = spawn_binary(
        &[
            "serve",
            "--sandbox",
            "--db",
            "sqlite::memory:",
            "--listen",
            "127.0.0.1:0",
        ],
        Stdio::from(log_file),
        &[("RUST_LOG", "trace")],
    )
    .await;
    let url = server.url.clone();
    let client = http();
    let key: Value = client
        .post(format!("{url}/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"label": "log-run", "vendor": "stripe", "daily_usd_cap": 20, "allowed_endpoints": ["/v1/payment_intents", "/v1/customers"], "expires_in": "5m"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token(&key).to_owned();
    let key_id = key["id"].as_str().unwrap().to_owned();
    let form = |body: &'static str| {
        client
            .post(format!("{url}/stripe/v1/payment_intents"))
            .bearer_auth(&token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    assert_eq!(
        form("amount=500&currency=usd")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        form("amount=5000&currency=usd")
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        form("amount=1.5&currency=usd")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    // The token in places it does not belong: the query, another header, the body.
    let misplaced = client
        .get(format!("{url}/stripe/v1/customers?api_key={token}"))
        .header("x-api-key", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(misplaced.status(), 400);
    let in_body = client
        .post(format!("{url}/stripe/v1/customers"))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("description={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(in_body.status(), 400);
    assert_eq!(
        client
            .get(format!("{url}/stripe/v1/../x"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        client
            .delete(format!("{url}/v1/keys/{key_id}"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        form("amount=500&currency=usd")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(log.contains("TRACE"), "the log is at trace level");
    assert!(
        log.contains(&key_id),
        "the log names keys by their public id"
    );
    // The log holds every decision, so that its silence about tokens means something: the
    // issue, the call forwarded, the six refused, the revocation.
    for (event, count) in [
        ("key issued", 1),
        ("proxied call refused", 6),
        ("cost_usd", 1),
        ("key revoked", 1),
    ] {
        assert_eq!(log.matches(event).count(), count, "`{event}` in:\n{log}");
    }
    assert!(!log.contains(&token), "a vault token is in the log");
    assert!(
        !log.contains(&token[3..30]),
        "part of a vault token is in the log"
    );
    assert!(!log.contains(ADMIN), "the admin token is in the log");
    assert!(
        !log.contains("sk_test_vaultkey_sandbox"),
        "the vendor secret is in the log"
    );
}
