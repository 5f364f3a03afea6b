//! Spend: atomic reservations under concurrency, settlement from the vendor's answer, replays of
//! idempotent requests, and the audit trail.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn a_hundred_concurrent_ten_dollar_charges_against_five_hundred(db: &TestDb) {
    let server = start_on(db).await;
    let key = stripe_key(&server, "concurrent", 500.0).await;
    let results = charge_concurrently(&[server.url()], token(&key), 100).await;
    let succeeded = results.iter().filter(|(status, _)| *status == 200).count();
    let capped = results
        .iter()
        .filter(|(status, body)| *status == 429 && body["code"] == "cap_exhausted")
        .count();
    assert_eq!(succeeded, 50, "{results:?}");
    assert_eq!(capped, 50);
    let view = view(&server, &key).await;
    assert_eq!(view["spent_today_usd"], json!(500), "{view}");
    assert_eq!(view["reserved_usd"], json!(0), "{view}");
    assert_eq!(view["requests"], json!(50), "{view}");
    let intents = server
        .sandbox()
        .unwrap()
        .received()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(intents, 50, "the vendor saw exactly the charges that fit");
}

async fn a_declined_charge_settles_to_zero(db: &TestDb) {
    let server = start_on(db).await;
    let key = stripe_key(&server, "declined", 50.0).await;
    let (status, body) = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=2000&currency=usd&confirm=true&payment_method=pm_card_chargeDeclined",
        &[],
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(
        body["error"]["code"], "card_declined",
        "Stripe's own error passes through: {body}"
    );
    let view = view(&server, &key).await;
    assert_eq!(view["spent_today_usd"], json!(0));
    assert_eq!(view["reserved_usd"], json!(0));
}

async fn a_replayed_idempotency_key_is_reserved_once(db: &TestDb) {
    let server = start_on(db).await;
    let key = stripe_key(&server, "idempotent", 15.0).await;
    let idem = [("idempotency-key", "order-77")];
    let first = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=1000&currency=usd",
        &idem,
    )
    .await;
    assert_eq!(first.0, 200);
    // $10 of $15 spent: a fresh $10 charge would not fit, but the replay costs nothing more.
    let replay = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=1000&currency=usd",
        &idem,
    )
    .await;
    assert_eq!(replay.0, 200, "{}", replay.1);
    assert_eq!(
        replay.1["id"], first.1["id"],
        "the vendor replayed its first answer"
    );
    let fresh = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=1000&currency=usd",
        &[("idempotency-key", "order-78")],
    )
    .await;
    assert_eq!(fresh.1["code"], "cap_exhausted", "{}", fresh.1);
    let view = view(&server, &key).await;
    assert_eq!(view["spent_today_usd"], json!(10), "{view}");
}

async fn a_failed_call_under_an_idempotency_key_does_not_make_its_retry_free(db: &TestDb) {
    let server = start_on(db).await;
    let key = stripe_key(&server, "retry", 50.0).await;
    let idem = [("idempotency-key", "order-9")];
    // Stripe refuses an unknown parameter before acting and saves no result for the key, so the
    // retry below really charges: it must be reserved and counted, not waved through as a replay.
    let refused = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=700&currency=usd&colour=red",
        &idem,
    )
    .await;
    assert_eq!(refused.0, 400, "{}", refused.1);
    let retried = stripe_form(
        &server.url(),
        token(&key),
        "/v1/payment_intents",
        "amount=700&currency=usd",
        &idem,
    )
    .await;
    assert_eq!(retried.0, 200, "{}", retried.1);
    assert!(retried.1["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("pi_")));
    let view = view(&server, &key).await;
    assert_eq!(view["spent_today_usd"], json!(7), "{view}");
    assert_eq!(view["reserved_usd"], json!(0), "{view}");
}

async fn updates_and_confirmations_that_move_money_are_metered(db: &TestDb) {
    let server = start_on(db).await;
    let key = stripe_key(&server, "updates", 30.0).await;
    let t = token(&key);
    let created = stripe_form(
        &server.url(),
        t,
        "/v1/payment_intents",
        "amount=1000&currency=usd",
        &[],
    )
    .await;
    let id = created.1["id"].as_str().unwrap().to_owned();
    assert_eq!(
        stripe_form(
            &server.url(),
            t,
            &format!("/v1/payment_intents/{id}"),
            "description=renamed",
            &[]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        stripe_form(
            &server.url(),
            t,
            &format!("/v1/payment_intents/{id}/confirm"),
            "amount_to_confirm=1500&currency=usd",
            &[]
        )
        .await
        .0,
        200
    );
    let over = stripe_form(
        &server.url(),
        t,
        &format!("/v1/payment_intents/{id}"),
        "amount=600&currency=usd",
        &[],
    )
    .await;
    assert_eq!(over.0, 429, "{}", over.1);
    assert_eq!(over.1["spent_usd"], json!(25));
    assert_eq!(over.1["requested_usd"], json!(6));
}

async fn the_audit_trail_records_reservations_settlements_and_refusals(db: &TestDb) {
    let server = start_on(db).await;
    let key = stripe_key(&server, "audit", 5.0).await;
    let id = key["id"].as_str().unwrap();
    assert_eq!(charge(&server, token(&key), 300).await.0, 200);
    assert_eq!(charge(&server, token(&key), 300).await.0, 429);
    let listed = http()
        .get(format!("{}/stripe/v1/customers", server.url()))
        .bearer_auth(token(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    // Free calls and refusals are recorded off the response path.
    let mut events = Value::Null;
    for _ in 0..50 {
        events = admin_get(&server, &format!("/v1/keys/{id}/events")).await.1;
        if events["events"].as_array().is_some_and(|e| e.len() == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = events["events"].as_array().expect("events").clone();
    assert_eq!(events.len(), 3, "{events:?}");
    let charged = events
        .iter()
        .find(|e| e["upstream_status"] == 200 && e["method"] == "POST")
        .expect("the charge");
    assert_eq!(charged["path"], "/v1/payment_intents");
    assert_eq!(charged["reserved_usd"], json!(3));
    assert_eq!(charged["settled_usd"], json!(3));
    let refused = events
        .iter()
        .find(|e| e["denied"] == "cap_exhausted")
        .expect("the refusal");
    assert_eq!(refused["upstream_status"], Value::Null);
    assert_eq!(
        refused["path"], charged["path"],
        "forwarded and refused calls record the same path form"
    );
    let read = events
        .iter()
        .find(|e| e["method"] == "GET")
        .expect("the read");
    assert_eq!(read["settled_usd"], json!(0));
    let text = metrics_text(&server).await;
    assert!(
        text.contains("vault_key_proxy_denials_total{code=\"cap_exhausted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("vault_key_spend_usd_micros_total{vendor=\"stripe\"} 3000000"),
        "{text}"
    );
    assert!(text.contains("vault_key_keys_issued_total 1"), "{text}");
    assert!(
        text.contains("vault_key_proxy_latency_seconds_bucket"),
        "{text}"
    );
}

on_both_stores!(
    tokio::test(flavor = "multi_thread", worker_threads = 4);
    a_hundred_concurrent_ten_dollar_charges_against_five_hundred,
    a_declined_charge_settles_to_zero,
    a_replayed_idempotency_key_is_reserved_once,
    a_failed_call_under_an_idempotency_key_does_not_make_its_retry_free,
    updates_and_confirmations_that_move_money_are_metered,
    the_audit_trail_records_reservations_settlements_and_refusals,
);
