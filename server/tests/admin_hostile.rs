//! The admin API under hostile use: bodies too large, too deep or too long, malformed durations
//! and amounts, labels in any script, wrong tokens at a high rate — each a clear 4xx with a JSON
//! `code`, the server unharmed and its memory bounded; and `/metrics` open only as configured.

mod common;

use common::*;
use secrecy::SecretString;
use serde_json::{json, Value};
use vault_key_server::MetricsAccess;

fn valid() -> Value {
    json!({"label": "hostile", "vendor": "stripe", "daily_usd_cap": 5,
           "allowed_endpoints": ["/v1/payment_intents"], "expires_in": "5m"})
}

/// `POST /v1/keys` with a raw body.
async fn post_raw(url: &str, body: Vec<u8>) -> (u16, Value) {
    send(
        http()
            .post(format!("{url}/v1/keys"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// Resident memory of this process (the server runs in it), in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_deep_and_long_bodies_are_refused_with_a_code() {
    let server = start().await;
    let url = server.url();
    let mut huge_label = valid();
    huge_label["label"] = json!("x".repeat(1 << 20));
    let mut many_endpoints = valid();
    many_endpoints["allowed_endpoints"] = json!((0..100_000)
        .map(|i| format!("/v1/e{i}"))
        .collect::<Vec<_>>());
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("3 MB of JSON", vec![b' '; 3 << 20], 413, None),
        ("nested 100,000 deep", deep.into_bytes(), 400, None),
        (
            "a 1 MiB label",
            huge_label.to_string().into_bytes(),
            400,
            Some("label"),
        ),
        (
            "100,000 endpoint patterns",
            many_endpoints.to_string().into_bytes(),
            400,
            Some("allowed_endpoints"),
        ),
        (
            "invalid UTF-8",
            b"{\"label\": \"\xff\"}".to_vec(),
            400,
            None,
        ),
        ("a JSON array", b"[1, 2]".to_vec(), 400, None),
    ];
    for (what, body, status, field) in cases {
        let (got, error) = post_raw(&url, body).await;
        assert_eq!(got, status, "{what}: {error}");
        assert!(error["code"].is_string(), "{what}: no JSON code in {error}");
        if let Some(field) = field {
            assert_eq!(error["field"], field, "{what}: {error}");
        }
    }
    assert_eq!(send(http().get(format!("{url}/healthz"))).await.0, 200);
}

#[tokio::test]
async fn malformed_durations_and_amounts_name_their_field_and_any_script_is_a_label() {
    let server = start().await;
    let durations = [
        json!(""),
        json!("5"),
        json!("-5m"),
        json!("1.5m"),
        json!("5m5m"),
        json!(" 5m"),
        json!("5M"),
        json!("0s"),
        json!("99999999999999999999h"),
        json!(null),
        json!(["5m"]),
    ];
    for duration in durations {
        let mut body = valid();
        body["expires_in"] = duration.clone();
        let (status, error) = create_key(&server, body).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (400, Some("expires_in")),
            "{duration}: {error}"
        );
    }
    let amounts = [
        json!(-0.01),
        json!(1e308),
        json!(0.0000005),
        json!(true),
        json!({"usd": 5}),
        json!(null),
    ];
    for amount in amounts {
        let mut body = valid();
        body["daily_usd_cap"] = amount.clone();
        let (status, error) = create_key(&server, body).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (400, Some("daily_usd_cap")),
            "{amount}: {error}"
        );
    }
    // Text in any script is a label, and comes back as it went in.
    let label = "ユーザー/🚀/run-42/\u{202e}txt";
    let mut body = valid();
    body["label"] = json!(label);
    let key = issue(&server, body).await;
    assert_eq!(view(&server, &key).await["label"], label);
    let listed = admin_get(
        &server,
        "/v1/keys?label_prefix=%E3%83%A6%E3%83%BC%E3%82%B6%E3%83%BC%2F",
    )
    .await
    .1;
    assert_eq!(listed["keys"][0]["id"], key["id"], "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_admin_tokens_at_a_high_rate_are_refused_and_leave_the_server_unharmed() {
    let server = start().await;
    let url = server.url();
    let attempt = |i: usize| {
        let url = url.clone();
        async move {
            let request = http().post(format!("{url}/v1/keys")).json(&valid());
            let request = match i % 4 {
                0 => request,
                1 => request.bearer_auth(format!("{ADMIN}x")),
                2 => request.header("authorization", format!("Basic {ADMIN}")),
                _ => request
                    .bearer_auth(ADMIN)
                    .header("authorization", "Bearer also-this"),
            };
            send(request).await
        }
    };
    // Warm up allocators and connection pools before measuring.
    for i in 0..200 {
        attempt(i).await;
    }
    let before = resident_bytes();
    let mut refused = 0;
    for batch in 0..40 {
        let answers =
            futures_util::future::join_all((0..100).map(|i| attempt(batch * 100 + i))).await;
        for (status, error) in answers {
            assert_eq!(
                (status, error["code"].as_str()),
                (401, Some("unauthorized")),
                "{error}"
            );
            refused += 1;
        }
    }
    let grown = resident_bytes().saturating_sub(before);
    eprintln!(
        "{refused} wrong tokens refused; resident memory grew by {} KiB",
        grown / 1024
    );
    assert!(grown < 64 << 20, "memory grew by {grown} bytes");
    let (status, _) = create_key(&server, valid()).await;
    assert_eq!(status, 201, "the admin still gets in");
    let (status, listed) = admin_get(&server, "/v1/keys").await;
    assert_eq!(status, 200);
    assert_eq!(
        listed["keys"].as_array().unwrap().len(),
        1,
        "no refused request created a key"
    );
}

#[tokio::test]
async fn metrics_are_served_only_as_configured() {
    let read = |url: String, token: Option<&'static str>| async move {
        let mut request = http().get(format!("{url}/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        response.status().as_u16()
    };
    const SCRAPER: &str = "scraper-token-0123456789";

    let default = start().await;
    assert_eq!(read(default.url(), None).await, 401);
    assert_eq!(read(default.url(), Some(SCRAPER)).await, 401);
    assert_eq!(read(default.url(), Some(ADMIN)).await, 200);

    let scraped = start_with(|config| {
        config.metrics_access = MetricsAccess::Token(SecretString::from(SCRAPER));
    })
    .await;
    assert_eq!(read(scraped.url(), None).await, 401);
    assert_eq!(read(scraped.url(), Some("scraper-token-wrong")).await, 401);
    assert_eq!(read(scraped.url(), Some(SCRAPER)).await, 200);
    assert_eq!(read(scraped.url(), Some(ADMIN)).await, 200);
    // The scraper's token opens nothing else.
    let (status, _) = send(
        http()
            .post(format!("{}/v1/keys", scraped.url()))
            .bearer_auth(SCRAPER)
            .json(&valid()),
    )
    .await;
    assert_eq!(status, 401);

    let public = start_with(|config| config.metrics_access = MetricsAccess::Public).await;
    assert_eq!(read(public.url(), None).await, 200);
}
