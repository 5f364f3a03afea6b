//! The admin API: issuing with validation, reading, listing, revoking one key or many.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};

fn valid() -> Value {
    json!({"label": "run-1", "vendor": "stripe", "daily_usd_cap": 12.5, "allowed_endpoints": ["/v1/payment_intents"], "expires_in": "90s"})
}

fn with(field: &str, value: Value) -> Value {
    let mut body = valid();
    body[field] = value;
    body
}

fn without(field: &str) -> Value {
    let mut body = valid();
    body.as_object_mut().unwrap().remove(field);
    body
}

async fn issue_returns_the_key_once_with_its_token(db: &TestDb) {
    let server = start_on(db).await;
    let key = issue(&server, with("allowed_methods", json!(["POST"]))).await;
    assert!(key["id"].as_str().unwrap().starts_with("key_"));
    let token = token(&key);
    assert!(token.starts_with("vk_") && token.len() >= 3 + 43, "{token}");
    assert_eq!(key["daily_usd_cap"], json!(12.5));
    assert_eq!(key["allowed_methods"], json!(["POST"]));
    let created = time::OffsetDateTime::parse(
        key["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        key["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((expires - created).whole_seconds(), 90);
    let view = view(&server, &key).await;
    assert_eq!(view["status"], "active");
    assert_eq!(view["spent_today_usd"], json!(0));
    assert_eq!(view["requests"], json!(0));
    assert!(
        view.get("token").is_none(),
        "GET never shows the token: {view}"
    );
    assert!(!view.to_string().contains(token));
}

async fn invalid_requests_name_their_field(db: &TestDb) {
    let server = start_on(db).await;
    let cases = [
        (without("label"), "label"),
        (with("label", json!("")), "label"),
        (with("label", json!("a\u{7}b")), "label"),
        (with("vendor", json!("paypal")), "vendor"),
        (without("vendor"), "vendor"),
        (with("daily_usd_cap", json!(0)), "daily_usd_cap"),
        (with("daily_usd_cap", json!(-5)), "daily_usd_cap"),
        (with("daily_usd_cap", json!("500")), "daily_usd_cap"),
        (with("daily_usd_cap", json!(0.0000001)), "daily_usd_cap"),
        (with("daily_usd_cap", json!(1e12)), "daily_usd_cap"),
        (without("daily_usd_cap"), "daily_usd_cap"),
        (with("allowed_endpoints", json!([])), "allowed_endpoints"),
        (
            with("allowed_endpoints", json!(["v1/charges"])),
            "allowed_endpoints",
        ),
        (
            with("allowed_endpoints", json!(["/v1/../charges"])),
            "allowed_endpoints",
        ),
        (
            with("allowed_endpoints", json!(["/v1/char*"])),
            "allowed_endpoints",
        ),
        (
            with("allowed_endpoints", json!("/v1/charges")),
            "allowed_endpoints",
        ),
        (without("allowed_endpoints"), "allowed_endpoints"),
        (with("expires_in", json!("5x")), "expires_in"),
        (with("expires_in", json!("25h")), "expires_in"),
        (with("expires_in", json!(300)), "expires_in"),
        (without("expires_in"), "expires_in"),
        (with("allowed_methods", json!(["get"])), "allowed_methods"),
        (with("allowed_methods", json!(["TRACE"])), "allowed_methods"),
        (with("allowed_methods", json!([])), "allowed_methods"),
        (with("daily_cap", json!(5)), "daily_cap"),
    ];
    for (body, field) in cases {
        let (status, error) = create_key(&server, body.clone()).await;
        assert_eq!(status, 400, "{body} → {error}");
        assert_eq!(error["code"], "invalid_request", "{error}");
        assert_eq!(error["field"], field, "{body} → {error}");
    }
    let not_json = http()
        .post(format!("{}/v1/keys", server.url()))
        .bearer_auth(ADMIN)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    assert_eq!(
        not_json.json::<Value>().await.unwrap()["code"],
        "invalid_request"
    );
}

async fn admin_routes_need_the_admin_token(db: &TestDb) {
    let server = start_on(db).await;
    let key = issue(&server, valid()).await;
    let client = http();
    for (method, path) in [
        ("POST", "/v1/keys".to_owned()),
        ("GET", "/v1/keys".to_owned()),
        ("GET", format!("/v1/keys/{}", key["id"].as_str().unwrap())),
        (
            "DELETE",
            format!("/v1/keys/{}", key["id"].as_str().unwrap()),
        ),
        ("POST", "/v1/keys/revoke".to_owned()),
    ] {
        for auth in [None, Some("wrong-token"), Some(token(&key))] {
            let mut request = client
                .request(method.parse().unwrap(), format!("{}{path}", server.url()))
                .json(&valid());
            if let Some(auth) = auth {
                request = request.bearer_auth(auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(
                response.json::<Value>().await.unwrap()["code"],
                "unauthorized"
            );
        }
    }
    assert_eq!(view(&server, &key).await["status"], "active");
}

async fn revoke_is_idempotent_and_unknown_ids_are_not_found(db: &TestDb) {
    let server = start_on(db).await;
    let key = issue(&server, valid()).await;
    for _ in 0..2 {
        assert_eq!(revoke(&server, &key).await, 204);
    }
    let (status, body) = admin(
        &server.url(),
        reqwest::Method::DELETE,
        "/v1/keys/key_nope",
        None,
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = admin_get(&server, "/v1/keys/key_nope").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = admin_get(&server, "/v1/keys/key_nope/events").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

async fn bulk_revoke_by_label_prefix_stops_one_run_and_no_other(db: &TestDb) {
    let server = start_on(db).await;
    let mut run_keys = Vec::new();
    for task in 0..3 {
        run_keys.push(stripe_key(&server, &format!("user-7/run-42/task-{task}"), 5.0).await);
    }
    let other = stripe_key(&server, "user-7/run-43/task-0", 5.0).await;
    let wildcard_looking = stripe_key(&server, "user-7/run-4%", 5.0).await;
    let revoke = |prefix: Value| {
        let url = server.url();
        async move { admin(&url, reqwest::Method::POST, "/v1/keys/revoke", Some(prefix)).await }
    };
    assert_eq!(
        revoke(json!({"label_prefix": "user-7/run-42/"})).await,
        (200, json!({"revoked": 3}))
    );
    assert_eq!(
        revoke(json!({"label_prefix": "user-7/run-42/"})).await,
        (200, json!({"revoked": 0}))
    );
    for key in &run_keys {
        assert_eq!(
            charge(&server, token(key), 100).await.1["code"],
            "key_revoked"
        );
    }
    assert_eq!(charge(&server, token(&other), 100).await.0, 200);
    assert_eq!(view(&server, &wildcard_looking).await["status"], "active");
    for prefix in ["", "user-7/\u{0}", "user-7/\n"] {
        let (status, error) = revoke(json!({ "label_prefix": prefix })).await;
        assert_eq!(
            (status, error["field"].as_str()),
            (400, Some("label_prefix")),
            "{prefix:?}: {error}"
        );
    }
    let (status, error) = admin_get(&server, "/v1/keys?label_prefix=user-7%2F%00").await;
    assert_eq!(
        (status, error["field"].as_str()),
        (400, Some("label_prefix")),
        "{error}"
    );
}

async fn revoke_by_ids_stops_the_named_keys_and_no_other(db: &TestDb) {
    let server = start_on(db).await;
    let keys = [
        stripe_key(&server, "batch-0", 5.0).await,
        stripe_key(&server, "batch-1", 5.0).await,
        stripe_key(&server, "batch-2", 5.0).await,
    ];
    // Held in the server's memory from here on.
    for key in &keys {
        assert_eq!(
            send(
                http()
                    .get(format!("{}/stripe/v1/payment_intents", server.url()))
                    .bearer_auth(token(key))
            )
            .await
            .0,
            200
        );
    }
    let revoke = |body: Value| {
        let url = server.url();
        async move { admin(&url, reqwest::Method::POST, "/v1/keys/revoke", Some(body)).await }
    };
    let named = json!({"ids": [keys[0]["id"], keys[1]["id"], "key_0000000000000000000000"]});
    assert_eq!(revoke(named.clone()).await, (200, json!({"revoked": 2})));
    assert_eq!(revoke(named).await, (200, json!({"revoked": 0})));
    for key in &keys[..2] {
        assert_eq!(view(&server, key).await["status"], "revoked");
        let (status, body) = send(
            http()
                .get(format!("{}/stripe/v1/payment_intents", server.url()))
                .bearer_auth(token(key)),
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (401, Some("key_revoked")));
    }
    assert_eq!(view(&server, &keys[2]).await["status"], "active");

    let too_many: Vec<String> = (0..1001).map(|i| format!("key_{i:022}")).collect();
    for (body, field) in [
        (json!({"ids": []}), Some("ids")),
        (json!({"ids": too_many}), Some("ids")),
        (json!({"ids": [1]}), Some("ids")),
        (json!({"ids": ["../keys"]}), Some("ids")),
        (json!({"ids": "key_0000000000000000000000"}), Some("ids")),
        (
            json!({"ids": [keys[2]["id"]], "label_prefix": "batch-"}),
            None,
        ),
        (json!({}), Some("label_prefix")),
    ] {
        let (status, error) = revoke(body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["code"], "invalid_request", "{body}: {error}");
        assert_eq!(error["field"].as_str(), field, "{body}: {error}");
    }
    assert_eq!(view(&server, &keys[2]).await["status"], "active");
}

async fn list_filters_by_prefix_and_status_and_pages_with_a_cursor(db: &TestDb) {
    let server = start_on(db).await;
    for i in 0..5 {
        stripe_key(&server, &format!("team-a/{i}"), 5.0).await;
    }
    stripe_key(&server, "team-b/0", 5.0).await;
    let revoked = stripe_key(&server, "team-a/revoked", 5.0).await;
    assert_eq!(revoke(&server, &revoked).await, 204);

    let (_, page) = admin_get(
        &server,
        "/v1/keys?label_prefix=team-a/&status=active&limit=2",
    )
    .await;
    let mut labels: Vec<String> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap().to_owned())
        .collect();
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(next) = cursor {
        let (_, page) = admin_get(
            &server,
            &format!("/v1/keys?label_prefix=team-a/&status=active&limit=2&cursor={next}"),
        )
        .await;
        labels.extend(
            page["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["label"].as_str().unwrap().to_owned()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        labels,
        ["team-a/0", "team-a/1", "team-a/2", "team-a/3", "team-a/4"]
    );
    let (_, revoked_page) = admin_get(&server, "/v1/keys?status=revoked").await;
    assert_eq!(revoked_page["keys"].as_array().unwrap().len(), 1);
    assert_eq!(revoked_page["keys"][0]["label"], "team-a/revoked");
    for bad in ["status=gone", "limit=0", "limit=5000", "cursor=abc"] {
        let (status, error) = admin_get(&server, &format!("/v1/keys?{bad}")).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
}

async fn healthz_and_metrics_answer(db: &TestDb) {
    let server = start_on(db).await;
    let health = key_cache_in_use(&server.url()).await;
    assert_eq!(health, json!({"status": "ok", "key_cache": "in_use"}));
    let key = stripe_key(&server, "metrics", 5.0).await;
    assert_eq!(revoke(&server, &key).await, 204);
    let text = metrics_text(&server).await;
    assert!(text.contains("vault_key_keys_issued_total 1"), "{text}");
    assert!(text.contains("vault_key_keys_revoked_total 1"), "{text}");
    assert!(
        text.contains("vault_key_keys{status=\"revoked\"} 1"),
        "{text}"
    );
    assert!(text.contains("vault_key_key_cache_in_use 1"), "{text}");
    let (status, refused) = send(http().get(format!("{}/metrics", server.url()))).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(
        text.contains("vault_key_keys{status=\"active\"} 0"),
        "{text}"
    );
}

on_both_stores!(
    tokio::test(flavor = "multi_thread", worker_threads = 4);
    issue_returns_the_key_once_with_its_token,
    invalid_requests_name_their_field,
    admin_routes_need_the_admin_token,
    revoke_is_idempotent_and_unknown_ids_are_not_found,
    bulk_revoke_by_label_prefix_stops_one_run_and_no_other,
    revoke_by_ids_stops_the_named_keys_and_no_other,
    list_filters_by_prefix_and_status_and_pages_with_a_cursor,
    healthz_and_metrics_answer,
);
