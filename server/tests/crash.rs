//! Durability: a server on a SQLite file, or one of the servers on a PostgreSQL database, killed
//! with SIGKILL while charges are in flight and started again, has lost no spend and resurrected
//! no revoked key.
//!
//! The vendor runs as a separate process (`vault-key-server sandbox`), so it outlives the killed
//! proxy and can tell afterwards how many charges it really executed.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn sigkill_mid_flight_loses_no_spend_and_resurrects_no_revoked_key(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let db = db.url();
    let vendor = spawn_binary(&["sandbox", "--listen", "127.0.0.1:0"], Stdio::null(), &[]).await;
    let config = dir.join("vault-key.toml");
    std::fs::write(
        &config,
        format!(
            "[vendors.stripe]\nbase_url = \"{}/stripe\"\nsecret = \"sk_test_vaultkey_sandbox\"\n",
            vendor.url
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db,
        "--config",
        &config,
    ];

    let mut server = spawn_binary(&serve, Stdio::null(), &[]).await;
    let endpoints = json!(["/v1/payment_intents"]);
    let (_, key) = admin(&server.url, reqwest::Method::POST, "/v1/keys", Some(json!({"label": "crash-run", "vendor": "stripe", "daily_usd_cap": 1000, "allowed_endpoints": endpoints, "expires_in": "1h"}))).await;
    let (_, revoked) = admin(&server.url, reqwest::Method::POST, "/v1/keys", Some(json!({"label": "crash-revoked", "vendor": "stripe", "daily_usd_cap": 1000, "allowed_endpoints": endpoints, "expires_in": "1h"}))).await;
    let revoked_id = revoked["id"].as_str().unwrap().to_owned();
    assert_eq!(
        admin(
            &server.url,
            reqwest::Method::DELETE,
            &format!("/v1/keys/{revoked_id}"),
            None
        )
        .await
        .0,
        204
    );

    // 40 charges of $10: the first 20 answered by the vendor within 0 to 190 ms, the other 20
    // after 3 s. The proxy is killed once 5 are acknowledged, so the kill lands mid-flight however
    // fast or slow this machine is.
    let acknowledged_so_far = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let charges: Vec<_> = (0..40u64)
        .map(|i| {
            let url = server.url.clone();
            let token = token(&key).to_owned();
            let counter = std::sync::Arc::clone(&acknowledged_so_far);
            let delay_ms = if i < 20 { i * 10 } else { 3_000 };
            tokio::spawn(async move {
                let sent = http()
                    .post(format!("{url}/stripe/v1/payment_intents"))
                    .bearer_auth(token)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("x-sandbox-delay-ms", delay_ms.to_string())
                    .body("amount=1000&currency=usd")
                    .send()
                    .await;
                let ok = matches!(sent, Ok(response) if response.status() == 200);
                if ok {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                ok
            })
        })
        .collect();
    let started = std::time::Instant::now();
    while acknowledged_so_far.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no charge was acknowledged in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    let mut acknowledged = 0u64;
    for charge in charges {
        acknowledged += u64::from(charge.await.unwrap());
    }
    // Let the vendor finish what it had started, then count what it really executed.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let executed = http()
        .get(format!(
            "{}/stripe/v1/payment_intents?limit=100",
            vendor.url
        ))
        .bearer_auth("sk_test_vaultkey_sandbox")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert!(
        acknowledged > 0 && acknowledged < 40,
        "the kill should land mid-flight: {acknowledged} acknowledged"
    );
    assert!(executed >= acknowledged);

    let server = spawn_binary(&serve, Stdio::null(), &[]).await;
    let (_, view) = admin(
        &server.url,
        reqwest::Method::GET,
        &format!("/v1/keys/{}", key["id"].as_str().unwrap()),
        None,
    )
    .await;
    let counted = micros(&view["spent_today_usd"]) + micros(&view["reserved_usd"]);
    eprintln!(
        "after SIGKILL: {acknowledged} charges acknowledged, {executed} executed by the vendor, \
         key counts spent ${} + reserved ${}",
        view["spent_today_usd"], view["reserved_usd"]
    );
    assert!(
        counted >= executed * 10_000_000,
        "the vendor executed {executed} charges of $10 but the key counts only {counted} micro-dollars: {view}"
    );
    assert!(
        micros(&view["spent_today_usd"]) >= acknowledged * 10_000_000,
        "{view}"
    );

    let (_, revoked_view) = admin(
        &server.url,
        reqwest::Method::GET,
        &format!("/v1/keys/{revoked_id}"),
        None,
    )
    .await;
    assert_eq!(revoked_view["status"], "revoked");
    let refused = http()
        .post(format!("{}/stripe/v1/payment_intents", server.url))
        .bearer_auth(token(&revoked))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=100&currency=usd")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.json::<Value>().await.unwrap()["code"],
        "key_revoked"
    );
    drop(server);
    drop(vendor);
}

on_both_stores!(
    tokio::test(flavor = "multi_thread", worker_threads = 4);
    sigkill_mid_flight_loses_no_spend_and_resurrects_no_revoked_key,
);
