//! Every error code of the proxy's table, each produced by a request that should produce it, over
//! real HTTP, against the real server and its sandbox vendor.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn call(
    server: &vault_key_server::Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = http().request(method, format!("{}{path}", server.url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned());
    }
    send(request).await
}

fn assert_code(result: &(u16, Value), status: u16, code: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["code"], code, "{}", result.1);
    assert!(
        result.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        result.1
    );
}

#[tokio::test]
async fn invalid_key_for_missing_malformed_and_unknown_tokens() {
    let server = start().await;
    let get = reqwest::Method::GET;
    assert_code(
        &call(&server, get.clone(), "/stripe/v1/customers", None, None).await,
        401,
        "invalid_key",
    );
    assert_code(
        &call(
            &server,
            get.clone(),
            "/stripe/v1/customers",
            Some("sk_live_abc"),
            None,
        )
        .await,
        401,
        "invalid_key",
    );
    // Well-formed (checksum and all) but never issued.
    let other = start().await;
    let foreign = stripe_key(&other, "elsewhere", 5.0).await;
    assert_code(
        &call(
            &server,
            get,
            "/stripe/v1/customers",
            Some(token(&foreign)),
            None,
        )
        .await,
        401,
        "invalid_key",
    );
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
}

#[tokio::test]
async fn revoked_key_is_refused_on_the_very_next_call() {
    let server = start().await;
    let key = stripe_key(&server, "revoke-me", 50.0).await;
    assert_eq!(charge(&server, token(&key), 100).await.0, 200);
    assert_eq!(revoke(&server, &key).await, 204);
    let received = server.sandbox().unwrap().received_count();
    let refused = charge(&server, token(&key), 100).await;
    assert_code(&refused, 401, "key_revoked");
    assert_eq!(server.sandbox().unwrap().received_count(), received);
    assert_eq!(view(&server, &key).await["status"], "revoked");
}

#[tokio::test]
async fn a_two_second_key_is_refused_once_expired() {
    let server = start().await;
    let key = issue(&server, json!({"label": "short", "vendor": "stripe", "daily_usd_cap": 5, "allowed_endpoints": ["/v1/customers"], "expires_in": "2s"})).await;
    let (status, _) = call(
        &server,
        reqwest::Method::GET,
        "/stripe/v1/customers",
        Some(token(&key)),
        None,
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_code(
        &call(
            &server,
            reqwest::Method::GET,
            "/stripe/v1/customers",
            Some(token(&key)),
            None,
        )
        .await,
        401,
        "key_expired",
    );
    assert_eq!(view(&server, &key).await["status"], "expired");
}

#[tokio::test]
async fn vendor_mismatch_for_another_or_unknown_vendor() {
    let server = start_with(|c| {
        c.vendors
            .push(generic_vendor("acme", "http://127.0.0.1:9", 0))
    })
    .await;
    let key = stripe_key(&server, "mismatch", 5.0).await;
    assert_code(
        &call(
            &server,
            reqwest::Method::GET,
            "/acme/v1/things",
            Some(token(&key)),
            None,
        )
        .await,
        403,
        "vendor_mismatch",
    );
    assert_code(
        &call(
            &server,
            reqwest::Method::GET,
            "/openai/v1/models",
            Some(token(&key)),
            None,
        )
        .await,
        403,
        "vendor_mismatch",
    );
}

#[tokio::test]
async fn invalid_path_endpoint_and_method_refusals() {
    let server = start().await;
    let key = issue(
        &server,
        json!({
            "label": "policy", "vendor": "stripe", "daily_usd_cap": 5,
            "allowed_endpoints": ["/v1/customers", "/v1/payment_intents/*"],
            "allowed_methods": ["GET"], "expires_in": "5m",
        }),
    )
    .await;
    let t = Some(token(&key));
    let get = reqwest::Method::GET;
    assert_code(
        &call(&server, get.clone(), "/stripe/v1/customers%3B", t, None).await,
        400,
        "invalid_path",
    );
    assert_code(
        &call(&server, get.clone(), "/stripe/v1/charges", t, None).await,
        403,
        "endpoint_not_allowed",
    );
    assert_code(
        &call(
            &server,
            reqwest::Method::POST,
            "/stripe/v1/customers",
            t,
            Some("email=a"),
        )
        .await,
        403,
        "method_not_allowed",
    );
    assert_code(
        &call(
            &server,
            reqwest::Method::PUT,
            "/stripe/v1/customers",
            t,
            None,
        )
        .await,
        405,
        "method_not_allowed",
    );
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
    // Every refusal is in the key's audit trail with its code.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, events) = admin_get(
        &server,
        &format!("/v1/keys/{}/events", key["id"].as_str().unwrap()),
    )
    .await;
    let codes: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["denied"].as_str())
        .collect();
    for code in ["invalid_path", "endpoint_not_allowed", "method_not_allowed"] {
        assert!(codes.contains(&code), "{code} missing from {events}");
    }
}

#[tokio::test]
async fn unmeterable_and_cap_exhausted() {
    let server = start().await;
    let key = stripe_key(&server, "money", 10.0).await;
    let t = Some(token(&key));
    let post = reqwest::Method::POST;
    assert_code(
        &call(
            &server,
            post.clone(),
            "/stripe/v1/payment_intents",
            t,
            Some("amount=10.5&currency=usd"),
        )
        .await,
        400,
        "unmeterable_request",
    );
    assert_eq!(charge(&server, token(&key), 600).await.0, 200);
    let refused = charge(&server, token(&key), 500).await;
    assert_code(&refused, 429, "cap_exhausted");
    assert_eq!(refused.1["cap_usd"], json!(10));
    assert_eq!(refused.1["spent_usd"], json!(6));
    assert_eq!(refused.1["requested_usd"], json!(5));
    assert_eq!(server.sandbox().unwrap().received_count(), 1);
}

#[tokio::test]
async fn upstream_unavailable_releases_and_upstream_timeout_keeps_the_reservation() {
    // Port 9 (discard) is closed on loopback: the connection is refused.
    let server = start_with(|c| {
        c.vendors
            .push(generic_vendor("down", "http://127.0.0.1:9", 1_000_000));
        c.upstream_timeout = Duration::from_millis(500);
    })
    .await;
    let down = issue(&server, json!({"label": "down", "vendor": "down", "daily_usd_cap": 5, "allowed_endpoints": ["/v1/**"], "expires_in": "5m"})).await;
    assert_code(
        &call(
            &server,
            reqwest::Method::GET,
            "/down/v1/ping",
            Some(token(&down)),
            None,
        )
        .await,
        502,
        "upstream_unavailable",
    );
    let down_view = view(&server, &down).await;
    assert_eq!(down_view["reserved_usd"], json!(0), "{down_view}");
    assert_eq!(down_view["spent_today_usd"], json!(0), "{down_view}");

    let key = stripe_key(&server, "slow", 50.0).await;
    let slow = http()
        .post(format!("{}/stripe/v1/payment_intents", server.url()))
        .bearer_auth(token(&key))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-sandbox-delay-ms", "3000")
        .body("amount=700&currency=usd")
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    let body: Value = slow.json().await.unwrap();
    assert_eq!(body["code"], "upstream_timeout");
    // The vendor may have acted: the $7 stays reserved rather than being forgotten.
    let key_view = view(&server, &key).await;
    assert_eq!(key_view["reserved_usd"], json!(7), "{key_view}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_request_too_large() {
    let server = start_with(|c| c.max_body_bytes = 1024).await;
    let key = stripe_key(&server, "big", 5.0).await;
    let body = format!("amount=100&currency=usd&description={}", "x".repeat(2048));
    assert_code(
        &call(
            &server,
            reqwest::Method::POST,
            "/stripe/v1/payment_intents",
            Some(token(&key)),
            Some(&body),
        )
        .await,
        413,
        "request_too_large",
    );
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
    assert_eq!(view(&server, &key).await["reserved_usd"], json!(0));
}

#[tokio::test]
async fn a_generic_vendor_gets_its_secret_in_its_header_and_a_flat_cost() {
    use axum::http::HeaderMap;
    // The vendor: a real HTTP server on loopback that reports the headers it received.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor_url = format!("http://{}/api", listener.local_addr().unwrap());
    let vendor = axum::Router::new().fallback(|headers: HeaderMap, uri: axum::http::Uri| async move {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        axum::Json(json!({"path": uri.path(), "acme_key": header("x-acme-key"), "authorization": header("authorization")}))
    });
    tokio::spawn(async move { axum::serve(listener, vendor).await });
    let server = start_with(|c| {
        let mut acme = generic_vendor("acme", &vendor_url, 250_000);
        acme.auth = vault_key_server::vendor::VendorAuth::Header(http::HeaderName::from_static(
            "x-acme-key",
        ));
        c.vendors.push(acme);
    })
    .await;
    let key = issue(&server, json!({"label": "acme", "vendor": "acme", "daily_usd_cap": 0.5, "allowed_endpoints": ["/v1/things/*"], "expires_in": "5m"})).await;
    let t = token(&key);
    let ok = send(
        http()
            .get(format!("{}/acme/v1/things/t1", server.url()))
            .header("x-acme-key", t),
    )
    .await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    assert_eq!(
        ok.1["path"], "/api/v1/things/t1",
        "the configured base path, then exactly the checked path"
    );
    assert_eq!(ok.1["acme_key"], "acme-real-secret");
    assert_eq!(ok.1["authorization"], "");
    // $0.25 a call against a $0.50 cap: the third call is refused.
    assert_eq!(
        send(
            http()
                .get(format!("{}/acme/v1/things/t2", server.url()))
                .header("x-acme-key", t)
        )
        .await
        .0,
        200
    );
    let third = send(
        http()
            .get(format!("{}/acme/v1/things/t3", server.url()))
            .header("x-acme-key", t),
    )
    .await;
    assert_code(&third, 429, "cap_exhausted");
    assert_eq!(view(&server, &key).await["spent_today_usd"], json!(0.5));
}

#[tokio::test]
async fn cookies_cross_the_proxy_in_neither_direction() {
    use axum::http::HeaderMap;
    // The proxy shares its origin with the dashboard: a vendor must not set cookies there, and
    // no cookie of the browser (the dashboard's session) may reach a vendor.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor_url = format!("http://{}", listener.local_addr().unwrap());
    let vendor = axum::Router::new().fallback(|headers: HeaderMap| async move {
        let cookie = headers
            .get("cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (
            [
                ("set-cookie", "vault_key_ui=planted; Path=/ui"),
                ("x-vendor-header", "kept"),
            ],
            axum::Json(json!({ "cookie": cookie })),
        )
    });
    tokio::spawn(async move { axum::serve(listener, vendor).await });
    let server = start_with(|c| c.vendors.push(generic_vendor("acme", &vendor_url, 0))).await;
    let key = issue(&server, json!({"label": "cookies", "vendor": "acme", "daily_usd_cap": 1, "allowed_endpoints": ["/v1/things"], "expires_in": "5m"})).await;
    let response = http()
        .get(format!("{}/acme/v1/things", server.url()))
        .bearer_auth(token(&key))
        .header("cookie", "vault_key_ui=the-operators-session; other=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "{:?}",
        response.headers()
    );
    assert_eq!(response.headers()["x-vendor-header"], "kept");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["cookie"], "", "the vendor saw a cookie: {seen}");
}
