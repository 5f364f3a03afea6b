//! The fail-closed decision path, attacked the way a caller who wants past the cap would: each
//! test is one family of bypass that reached the vendor unpaid before the proxy decided on the
//! exact request it forwards. The sandbox's money ledger says what really moved.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use vault_key_server::{ConfigFile, Server};

/// A sandbox server that also meters Indonesian rupiah (minor unit: sen) and euros.
async fn start_with_rates() -> Server {
    start_with(|config| {
        let file = ConfigFile::parse(
            "[vendors.stripe.usd_per_unit]\nidr = \"0.00006\"\neur = \"1.10\"\n",
            "rates.toml",
        )
        .unwrap();
        config.apply(&file, &|_| None, true).unwrap();
    })
    .await
}

fn usd_moved(server: &Server) -> u64 {
    money_moved(server, "usd")
}

fn money_moved(server: &Server, currency: &str) -> u64 {
    server
        .sandbox()
        .unwrap()
        .stripe_money_moved()
        .get(currency)
        .copied()
        .unwrap_or(0)
}

fn spent(view: &Value) -> &Value {
    &view["spent_today_usd"]
}

#[tokio::test]
async fn an_idempotency_key_named_in_connection_is_not_a_free_replay() {
    let server = start().await;
    let key = stripe_key(&server, "hop-by-hop-idempotency", 5.0).await;
    let headers = [
        ("connection", "keep-alive, idempotency-key"),
        ("idempotency-key", "order-1"),
    ];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, body) = stripe_form(
            &server.url(),
            token(&key),
            "/v1/payment_intents",
            "amount=400&currency=usd&confirm=true",
            &headers,
        )
        .await;
        statuses.push((status, body["code"].clone()));
    }
    // The vendor never sees the key (it is hop-by-hop), so every call is a new $4 charge: the
    // second does not fit in $5.
    assert_eq!(statuses[0].0, 200, "{statuses:?}");
    assert_eq!(statuses[1], (429, json!("cap_exhausted")), "{statuses:?}");
    assert_eq!(statuses[2], (429, json!("cap_exhausted")), "{statuses:?}");
    assert_eq!(usd_moved(&server), 400);
    assert_eq!(spent(&view(&server, &key).await), &json!(4));
    let received = server.sandbox().unwrap().received();
    assert!(received
        .iter()
        .all(|r| r.headers.iter().all(|(n, _)| n != "idempotency-key")));
}

/// Sends a charge under an idempotency key in a task of its own, with sandbox knobs.
fn charge_in_background(
    url: String,
    token: String,
    idempotency_key: &'static str,
    knobs: &'static [(&'static str, &'static str)],
) -> tokio::task::JoinHandle<(u16, Value)> {
    tokio::spawn(async move {
        let mut headers = vec![("idempotency-key", idempotency_key)];
        headers.extend_from_slice(knobs);
        stripe_form(
            &url,
            &token,
            "/v1/payment_intents",
            "amount=400&currency=usd&confirm=true",
            &headers,
        )
        .await
    })
}

async fn wait_for_vendor_requests(server: &Server, count: usize) {
    for _ in 0..500 {
        if server.sandbox().unwrap().received_count() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the vendor never saw {count} requests");
}

#[tokio::test]
async fn a_replay_while_the_first_attempt_is_in_flight_is_refused_whatever_the_first_becomes() {
    let server = start().await;
    let key = stripe_key(&server, "in-flight", 10.0).await;
    let url = server.url();
    let replay = || {
        stripe_form(
            &url,
            token(&key),
            "/v1/payment_intents",
            "amount=400&currency=usd&confirm=true",
            &[("idempotency-key", "k-refused")],
        )
    };

    // The first attempt is refused by the vendor before acting (nothing saved under its key).
    let first = charge_in_background(
        server.url(),
        token(&key).to_owned(),
        "k-refused",
        &[("x-sandbox-delay-ms", "1500"), ("x-sandbox-refuse", "429")],
    );
    wait_for_vendor_requests(&server, 1).await;
    let (status, body) = replay().await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("idempotency_key_in_use")),
        "{body}"
    );
    assert_eq!(body["error"]["type"], "idempotency_error", "{body}");
    assert_eq!(server.sandbox().unwrap().received_count(), 1);
    assert_eq!(first.await.unwrap().0, 429);
    // Now the retry really charges, so it is reserved and counted.
    let (status, body) = replay().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(spent(&view(&server, &key).await), &json!(4));
    assert_eq!(usd_moved(&server), 400);

    // The first attempt succeeds: a replay in flight is refused, one after it is the vendor's
    // replay and costs nothing more.
    let first = charge_in_background(
        server.url(),
        token(&key).to_owned(),
        "k-ok",
        &[("x-sandbox-delay-ms", "1500")],
    );
    wait_for_vendor_requests(&server, 3).await;
    let during = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=400&currency=usd&confirm=true",
        &[("idempotency-key", "k-ok")],
    )
    .await;
    assert_eq!(during.0, 409, "{}", during.1);
    let (first_status, first_body) = first.await.unwrap();
    assert_eq!(first_status, 200);
    let after = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=400&currency=usd&confirm=true",
        &[("idempotency-key", "k-ok")],
    )
    .await;
    assert_eq!(after.0, 200, "{}", after.1);
    assert_eq!(after.1["id"], first_body["id"]);
    assert_eq!(spent(&view(&server, &key).await), &json!(8));
    assert_eq!(usd_moved(&server), 800, "each intent charged once");
}

#[tokio::test]
async fn switching_an_intents_currency_is_refused_unless_the_new_amount_is_metered() {
    let server = start_with_rates().await;
    let key = stripe_key(&server, "currency-switch", 10.0).await;
    let t = token(&key);
    // 8,000,000 sen = 80,000 IDR = $4.80.
    let (status, intent) = stripe_form(
        &server.url(),
        t,
        "/v1/payment_intents",
        "amount=8000000&currency=idr",
        &[],
    )
    .await;
    assert_eq!(status, 200, "{intent}");
    let id = intent["id"].as_str().unwrap();
    let update = format!("/v1/payment_intents/{id}");
    let (status, body) = stripe_form(&server.url(), t, &update, "currency=usd", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("unmeterable_request")),
        "{body}"
    );
    for look_alike in [
        "[currency]=usd",
        "currency]=usd",
        "Currency=usd",
        "description=x;currency=usd",
    ] {
        let (status, body) = stripe_form(&server.url(), t, &update, look_alike, &[]).await;
        assert_eq!(status, 400, "{look_alike}: {body}");
    }
    let (status, body) = stripe_form(
        &server.url(),
        t,
        &update,
        "currency=usd&amount=8000000",
        &[],
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (429, &json!("cap_exhausted")),
        "{body}"
    );
    let (status, body) = stripe_form(&server.url(), t, &format!("{update}/confirm"), "", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(money_moved(&server, "idr"), 8_000_000);
    assert_eq!(usd_moved(&server), 0);
    assert_eq!(spent(&view(&server, &key).await), &json!(4.8));
}

#[tokio::test]
async fn confirm_capture_and_refund_act_only_on_objects_the_key_created() {
    let server = start().await;
    let owner = issue(
        &server,
        json!({
            "label": "owner", "vendor": "stripe", "daily_usd_cap": 100, "expires_in": "5m",
            "allowed_endpoints": ["/v1/**"],
        }),
    )
    .await;
    let intruder = issue(
        &server,
        json!({
            "label": "intruder", "vendor": "stripe", "daily_usd_cap": 1, "expires_in": "5m",
            "allowed_endpoints": ["/v1/**"],
        }),
    )
    .await;
    let (_, intent) = stripe_form(
        &server.url(),
        token(&owner),
        "/v1/payment_intents",
        "amount=5000&currency=usd",
        &[],
    )
    .await;
    let id = intent["id"].as_str().unwrap();
    let confirm = format!("/v1/payment_intents/{id}/confirm");
    let (status, body) = stripe_form(&server.url(), token(&intruder), &confirm, "", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("unmeterable_request")),
        "{body}"
    );
    assert_eq!(
        usd_moved(&server),
        0,
        "nobody else's key moves the owner's $50"
    );
    let (status, body) = stripe_form(&server.url(), token(&owner), &confirm, "", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usd_moved(&server), 5000);
    // A refund names what it refunds; the intruder cannot, the owner can, in its currency.
    let refund = format!("payment_intent={id}&amount=100&currency=usd");
    let (status, _) =
        stripe_form(&server.url(), token(&intruder), "/v1/refunds", &refund, &[]).await;
    assert_eq!(status, 400);
    let other_currency = format!("payment_intent={id}&amount=100&currency=jpy");
    let (status, _) = stripe_form(
        &server.url(),
        token(&owner),
        "/v1/refunds",
        &other_currency,
        &[],
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) =
        stripe_form(&server.url(), token(&owner), "/v1/refunds", &refund, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usd_moved(&server), 5100);
    assert_eq!(spent(&view(&server, &owner).await), &json!(51));
    // A charge authorised now and captured later: capture is the owner's alone.
    let (_, charge) = stripe_form(
        &server.url(),
        token(&owner),
        "/v1/charges",
        "amount=700&currency=usd&capture=false",
        &[],
    )
    .await;
    let capture = format!("/v1/charges/{}/capture", charge["id"].as_str().unwrap());
    let (status, _) = stripe_form(&server.url(), token(&intruder), &capture, "", &[]).await;
    assert_eq!(status, 400);
    let (status, body) = stripe_form(&server.url(), token(&owner), &capture, "", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usd_moved(&server), 5800);
    assert_eq!(spent(&view(&server, &intruder).await), &json!(0));
}

#[tokio::test]
async fn an_object_is_acted_on_only_as_the_kind_it_was_created() {
    let server = start().await;
    let key = issue(
        &server,
        json!({
            "label": "kinds", "vendor": "stripe", "daily_usd_cap": 10, "expires_in": "5m",
            "allowed_endpoints": ["/v1/**"],
        }),
    )
    .await;
    let t = token(&key);
    let (_, charge) = stripe_form(
        &server.url(),
        t,
        "/v1/charges",
        "amount=400&currency=usd",
        &[],
    )
    .await;
    let (_, transfer) = stripe_form(
        &server.url(),
        t,
        "/v1/transfers",
        "amount=100&currency=usd",
        &[],
    )
    .await;
    assert_eq!(usd_moved(&server), 500);
    for object in [&charge, &transfer] {
        let confirm = format!(
            "/v1/payment_intents/{}/confirm",
            object["id"].as_str().unwrap()
        );
        let (status, body) = stripe_form(&server.url(), t, &confirm, "", &[]).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("unmeterable_request")),
            "{body}"
        );
        let capture = format!(
            "/v1/payment_intents/{}/capture",
            object["id"].as_str().unwrap()
        );
        let (status, _) = stripe_form(&server.url(), t, &capture, "", &[]).await;
        assert_eq!(status, 400);
    }
    // Overcapture would let a capture move more than the amount reserved at creation.
    let (status, body) = stripe_form(
        &server.url(),
        t,
        "/v1/payment_intents",
        "amount=100&currency=usd&payment_method_options[card][request_overcapture]=if_available",
        &[],
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("unmeterable_request")),
        "{body}"
    );
    assert!(server
        .sandbox()
        .unwrap()
        .received()
        .iter()
        .all(|r| !r.path.ends_with("/confirm") && !r.path.ends_with("/capture")));
    assert_eq!(usd_moved(&server), 500);
    assert_eq!(spent(&view(&server, &key).await), &json!(5));
}

#[tokio::test]
async fn a_vault_token_never_reaches_the_vendor_in_the_body_even_escaped() {
    let server = start().await;
    let key = stripe_key(&server, "escaped-token", 10.0).await;
    let t = token(&key);
    for body in [
        format!("description={t}"),
        format!("description=%76k_{}", &t[3..]),
        format!("description=%76%6B%5F{}", &t[3..]),
    ] {
        let (status, answer) = stripe_form(&server.url(), t, "/v1/customers", &body, &[]).await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!("invalid_request")),
            "{body}"
        );
    }
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
}

#[tokio::test]
async fn another_keys_idempotency_key_gives_no_ownership_of_its_object() {
    let server = start().await;
    let all = |label: &str, cap: u32| {
        json!({
            "label": label, "vendor": "stripe", "daily_usd_cap": cap, "expires_in": "5m",
            "allowed_endpoints": ["/v1/**"],
        })
    };
    let a = issue(&server, all("a", 5)).await;
    let b = issue(&server, all("b", 1)).await;
    let idem = [("idempotency-key", "shared-k")];
    let (status, intent) = stripe_form(
        &server.url(),
        token(&a),
        "/v1/payment_intents",
        "amount=400&currency=usd",
        &idem,
    )
    .await;
    assert_eq!(status, 200, "{intent}");
    let (status, body) = stripe_form(
        &server.url(),
        token(&b),
        "/v1/payment_intents",
        "amount=1&currency=usd",
        &idem,
    )
    .await;
    assert_eq!(
        status, 400,
        "Stripe refuses a key reused with other parameters: {body}"
    );
    let confirm = format!(
        "/v1/payment_intents/{}/confirm",
        intent["id"].as_str().unwrap()
    );
    let (status, body) = stripe_form(&server.url(), token(&b), &confirm, "", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("unmeterable_request")),
        "{body}"
    );
    assert_eq!(usd_moved(&server), 0);
}

#[tokio::test]
async fn a_body_sent_after_revocation_or_expiry_is_refused() {
    let server = start().await;
    for (path, body) in [
        (
            "/stripe/v1/payment_intents",
            "amount=300&currency=usd&confirm=true",
        ),
        ("/stripe/v1/customers", "email=late%40example.com"),
    ] {
        let key = stripe_key(&server, "late-body", 10.0).await;
        let mut stream = send_head(&server, path, token(&key), body.len() as u128).await;
        // Let the proxy check the key on the head before it is revoked.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(revoke(&server, &key).await, 204);
        stream.write_all(body.as_bytes()).await.unwrap();
        let (status, answer) = read_answer(stream).await;
        assert_eq!(
            (status, &answer["code"]),
            (401, &json!("key_revoked")),
            "{path}: {answer}"
        );
    }
    let key = issue(
        &server,
        json!({
            "label": "late-expiry", "vendor": "stripe", "daily_usd_cap": 10, "expires_in": "2s",
            "allowed_endpoints": ["/v1/payment_intents"],
        }),
    )
    .await;
    let body = "amount=300&currency=usd&confirm=true";
    let mut stream = send_head(
        &server,
        "/stripe/v1/payment_intents",
        token(&key),
        body.len() as u128,
    )
    .await;
    let expires_at = time::OffsetDateTime::parse(
        key["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    while time::OffsetDateTime::now_utc() <= expires_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.write_all(body.as_bytes()).await.unwrap();
    let (status, answer) = read_answer(stream).await;
    assert_eq!(
        (status, &answer["code"]),
        (401, &json!("key_expired")),
        "{answer}"
    );
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
    assert_eq!(usd_moved(&server), 0);
}

#[tokio::test]
async fn slow_and_oversized_bodies_are_refused_without_holding_the_connection() {
    let server = start_with(|config| config.body_timeout = Duration::from_secs(1)).await;
    let key = stripe_key(&server, "slow", 10.0).await;
    let mut slow = send_head(&server, "/stripe/v1/customers", token(&key), 100).await;
    slow.write_all(b"email=a").await.unwrap();
    let (status, answer) = read_answer(slow).await;
    assert_eq!(
        (status, &answer["code"]),
        (408, &json!("request_timeout")),
        "{answer}"
    );
    // A body announced at a petabyte is refused before a byte is read.
    let huge = send_head(&server, "/stripe/v1/customers", token(&key), 10u128.pow(15)).await;
    let (status, answer) = read_answer(huge).await;
    assert_eq!(
        (status, &answer["code"]),
        (413, &json!("request_too_large")),
        "{answer}"
    );
    // A malformed chunk is a bad request, not a large one.
    let auth = format!("authorization: Bearer {}", token(&key));
    let malformed = raw(
        server.addr(),
        format!(
            "POST /stripe/v1/customers HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}\r\n\
             content-type: application/x-www-form-urlencoded\r\ntransfer-encoding: chunked\r\n\r\n\
             zz\r\nemail=a\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(malformed.status, 400, "{}", malformed.head);
    assert_eq!(malformed.body["code"], "invalid_request", "{:?}", malformed);
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let server = start().await;
    let key = stripe_key(&server, "h2", 10.0).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let read = h2
        .get(format!("{}/stripe/v1/customers", server.url()))
        .bearer_auth(token(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(read.version(), reqwest::Version::HTTP_2);
    assert_eq!(read.status(), 200);
    let charge = h2
        .post(format!("{}/stripe/v1/payment_intents", server.url()))
        .bearer_auth(token(&key))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("amount=250&currency=usd")
        .send()
        .await
        .unwrap();
    assert_eq!(charge.status(), 200);
    assert_eq!(spent(&view(&server, &key).await), &json!(2.5));
    let path_trick = h2
        .get(format!("{}/stripe/v1/customers;x=1", server.url()))
        .bearer_auth(token(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(path_trick.status(), 400);

    // An HTTP/2 stream may end long after its headers, with no length announced: the key is
    // checked again once the body is in.
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let late = tokio::spawn(
        h2.post(format!("{}/stripe/v1/customers", server.url()))
            .bearer_auth(token(&key))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(revoke(&server, &key).await, 204);
    body_tx
        .send(Ok(bytes::Bytes::from_static(b"email=late%40example.com")))
        .await
        .unwrap();
    drop(body_tx);
    let late = late.await.unwrap().unwrap();
    assert_eq!(late.status(), 401);
    let late: Value = late.json().await.unwrap();
    assert_eq!(late["code"], "key_revoked");
    assert!(server
        .sandbox()
        .unwrap()
        .received()
        .iter()
        .all(|r| r.path != "/stripe/v1/customers" || r.method != "POST"));
}

#[tokio::test]
async fn refusals_on_stripe_routes_speak_stripes_error_envelope() {
    let server = start().await;
    let key = stripe_key(&server, "envelope", 1.0).await;
    let response = http()
        .post(format!("{}/stripe/v1/payment_intents", server.url()))
        .bearer_auth(token(&key))
        .form(&[("amount", "5000"), ("currency", "usd")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["stripe-should-retry"], "false");
    assert_eq!(response.headers()["vault-key-error"], "cap_exhausted");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "cap_exhausted");
    assert_eq!(body["error"]["code"], "cap_exhausted");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["requested_usd"], json!(50));
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn errors_outside_the_proxy_routes_carry_a_code_too() {
    let server = start().await;
    let response = http()
        .post(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    let (status, body) = admin(&server.url(), reqwest::Method::PUT, "/v1/keys", None).await;
    assert_eq!((status, &body["code"]), (405, &json!("method_not_allowed")));
}

/// Every Stripe route an SDK can call, classified: sent through the proxy with an empty body by a
/// key allowed everything, each is refused as unmeterable or forwarded — and none of the routes
/// that can move money is forwarded without a reservation.
#[tokio::test]
async fn every_stripe_route_is_free_metered_or_refused() {
    let server = start().await;
    let key = issue(
        &server,
        json!({
            "label": "routes", "vendor": "stripe", "daily_usd_cap": 1000, "expires_in": "5m",
            "allowed_endpoints": ["/v1/**"],
        }),
    )
    .await;
    let routes: Vec<(String, String)> = include_str!("fixtures/stripe_routes.txt")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (method, path) = line.split_once(' ').unwrap();
            (method.to_owned(), path.replace("{}", "obj_1"))
        })
        .collect();
    assert!(routes.len() > 500, "{} routes", routes.len());
    // Routes that can move money (what a bypass of the old meter reached unpaid, and their kin).
    let money_moving = [
        "POST /v1/charges/obj_1/capture",
        "POST /v1/payment_intents/obj_1/capture",
        "POST /v1/payment_intents/obj_1/confirm",
        "POST /v1/payment_intents/obj_1/increment_authorization",
        "POST /v1/payment_intents/obj_1/apply_customer_balance",
        "POST /v1/refunds",
        "POST /v1/invoices",
        "POST /v1/invoices/obj_1/pay",
        "POST /v1/invoices/obj_1/finalize",
        "POST /v1/invoiceitems",
        "POST /v1/customers/obj_1/balance_transactions",
        "POST /v1/customers/obj_1/cash_balance",
        "POST /v1/subscriptions",
        "POST /v1/subscriptions/obj_1",
        "DELETE /v1/subscriptions/obj_1",
        "POST /v1/subscription_schedules",
        "POST /v1/subscription_items",
        "POST /v1/transfers/obj_1/reversals",
        "POST /v1/application_fees/obj_1/refunds",
        "POST /v1/treasury/outbound_payments",
        "POST /v1/treasury/outbound_transfers",
        "POST /v1/quotes/obj_1/accept",
        "POST /v1/credit_notes",
        "POST /v1/checkout/sessions",
        "POST /v1/payment_links",
        "POST /v1/payouts/obj_1/reverse",
        "POST /v1/issuing/authorizations/obj_1/approve",
        "POST /v1/terminal/readers/obj_1/process_payment_intent",
        "POST /v1/billing/meter_events",
        "POST /v1/payment_intents",
        "POST /v1/charges",
        "POST /v1/transfers",
        "POST /v1/payouts",
        "POST /v1/topups",
    ];
    let mut forwarded_free = Vec::new();
    let mut refused = 0;
    let mut reads = 0;
    for (method, path) in &routes {
        let before = server.sandbox().unwrap().received_count();
        let mut request = http()
            .request(
                method.parse().unwrap(),
                format!("{}/stripe{path}", server.url()),
            )
            .bearer_auth(token(&key));
        if method != "GET" {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        let (status, body) = send(request).await;
        let reached = server.sandbox().unwrap().received_count() > before;
        let name = format!("{method} {path}");
        if method == "GET" {
            assert!(reached, "{name} is a read: {status} {body}");
            reads += 1;
        } else if reached {
            forwarded_free.push(name);
        } else {
            assert_eq!(
                (status, &body["code"]),
                (400, &json!("unmeterable_request")),
                "{name}"
            );
            refused += 1;
        }
    }
    for route in money_moving {
        assert!(
            routes.iter().any(|(m, p)| format!("{m} {p}") == route),
            "{route} is not in the fixture"
        );
        assert!(
            !forwarded_free.iter().any(|f| f == route),
            "{route} reached the vendor with nothing reserved"
        );
    }
    assert_eq!(view(&server, &key).await["reserved_usd"], json!(0));
    eprintln!(
        "{} routes: {reads} reads forwarded, {} writes forwarded as free, {refused} refused",
        routes.len(),
        forwarded_free.len()
    );
    assert_eq!(
        server
            .sandbox()
            .unwrap()
            .stripe_money_moved()
            .values()
            .sum::<u64>(),
        0
    );
}
