//! Time, on a clock the test moves: caps reset at UTC midnight while a reservation made before
//! it settles against its own day, keys expire without waiting, and calls whose outcome never
//! became known are settled to their reservations once old enough, on record.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use time::macros::datetime;
use vault_key_server::clock::ManualClock;
use vault_key_server::Server;

async fn start_at(db: &TestDb, clock: &ManualClock) -> Server {
    let clock = clock.clone();
    start_on_with(db, move |config| {
        config.clock = Arc::new(clock);
        config.reconcile_every = Duration::from_millis(50);
        config.upstream_timeout = Duration::from_millis(500);
    })
    .await
}

/// A $10 charge the sandbox answers after `delay_ms`.
async fn slow_charge(server: &Server, token: &str, delay_ms: u64) -> (u16, Value) {
    let delay = delay_ms.to_string();
    stripe_form(
        &server.url(),
        token,
        "/v1/payment_intents",
        "amount=1000&currency=usd",
        &[("x-sandbox-delay-ms", delay.as_str())],
    )
    .await
}

async fn a_reservation_made_before_midnight_settles_against_its_own_day(db: &TestDb) {
    let clock = ManualClock::new(datetime!(2026-12-01 23:59:59.900 UTC));
    let server = start_at(db, &clock).await;
    let key = stripe_key(&server, "midnight", 10.0).await;
    let before_midnight = tokio::spawn({
        let (url, token) = (server.url(), token(&key).to_owned());
        async move {
            stripe_form(
                &url,
                &token,
                "/v1/payment_intents",
                "amount=1000&currency=usd",
                &[("x-sandbox-delay-ms", "400")],
            )
            .await
        }
    });
    while server.sandbox().unwrap().received_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first charge holds the whole of Dec 1's cap; Dec 2 starts with nothing spent.
    assert_eq!(charge(&server, token(&key), 100).await.0, 429);
    clock.set(datetime!(2026-12-02 00:00:00.100 UTC));
    assert_eq!(charge(&server, token(&key), 1000).await.0, 200);
    assert_eq!(charge(&server, token(&key), 100).await.0, 429);
    assert_eq!(before_midnight.await.unwrap().0, 200);
    let today = view(&server, &key).await;
    assert_eq!(
        (&today["spent_today_usd"], &today["reserved_usd"]),
        (&json!(10), &json!(0)),
        "Dec 2 counts its own charge only: {today}"
    );
    clock.set(datetime!(2026-12-01 23:59:59.950 UTC));
    let yesterday = view(&server, &key).await;
    assert_eq!(
        (&yesterday["spent_today_usd"], &yesterday["reserved_usd"]),
        (&json!(10), &json!(0)),
        "the charge reserved on Dec 1 settled on Dec 1: {yesterday}"
    );
}

async fn keys_expire_on_the_clock_without_waiting(db: &TestDb) {
    let clock = ManualClock::new(datetime!(2026-12-01 12:00:00 UTC));
    let server = start_at(db, &clock).await;
    let key = stripe_key(&server, "expiring", 10.0).await; // expires in 5 minutes
    assert_eq!(charge(&server, token(&key), 100).await.0, 200);
    clock.advance(Duration::from_secs(299));
    assert_eq!(charge(&server, token(&key), 100).await.0, 200);
    clock.advance(Duration::from_secs(1));
    let (status, refused) = charge(&server, token(&key), 100).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (401, Some("key_expired"))
    );
    let listed = admin_get(&server, "/v1/keys?status=expired").await.1;
    assert_eq!(listed["keys"][0]["id"], key["id"], "{listed}");
    assert_eq!(view(&server, &key).await["status"], "expired");
}

async fn calls_of_unknown_outcome_are_reconciled_once_old_enough(db: &TestDb) {
    let clock = ManualClock::new(datetime!(2026-12-01 12:00:00 UTC));
    let server = start_at(db, &clock).await;
    let key = stripe_key(&server, "unknown-outcome", 100.0).await;
    // The vendor answers after the proxy stopped waiting: whether it charged is unknown, so the
    // $10 stay reserved.
    let (status, answer) = slow_charge(&server, token(&key), 2_000).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (504, Some("upstream_timeout"))
    );
    assert_eq!(charge(&server, token(&key), 500).await.0, 200);
    let held = view(&server, &key).await;
    assert_eq!(
        (&held["spent_today_usd"], &held["reserved_usd"]),
        (&json!(5), &json!(10)),
        "{held}"
    );
    // Several sweeps run, none before the horizon (1 hour by default).
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.advance(Duration::from_secs(3_599));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(view(&server, &key).await["reserved_usd"], json!(10));

    clock.advance(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let settled = loop {
        let view = view(&server, &key).await;
        if view["reserved_usd"] == json!(0) {
            break view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not reconciled: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Reserved became spent, once: the cap saw $15 before and sees $15 after.
    assert_eq!(settled["spent_today_usd"], json!(15), "{settled}");
    let path = format!("/v1/keys/{}/events", key["id"].as_str().unwrap());
    let events = admin_get(&server, &path).await.1;
    let events = events["events"].as_array().unwrap();
    // The timed-out call (reconciled), the refusal it was answered with, the $5 charge.
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["settled_usd"], json!(10), "{events:?}");
    assert_eq!(events[0]["reconciled"], json!(true), "{events:?}");
    assert_eq!(events[1]["denied"], json!("upstream_timeout"), "{events:?}");
    assert_eq!(events[2]["settled_usd"], json!(5), "{events:?}");
    assert!(events[2].get("reconciled").is_none(), "{events:?}");
    assert!(metrics_text(&server)
        .await
        .contains("vault_key_reservations_reconciled_total 1"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(view(&server, &key).await["spent_today_usd"], json!(15));
}

on_both_stores!(
    tokio::test(flavor = "multi_thread", worker_threads = 4);
    a_reservation_made_before_midnight_settles_against_its_own_day,
    keys_expire_on_the_clock_without_waiting,
    calls_of_unknown_outcome_are_reconciled_once_old_enough,
);
