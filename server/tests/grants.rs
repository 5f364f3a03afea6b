//! Grants over real HTTP, on both stores: keys minted with no server contact are checked
//! against their grant at first use, refused with a clear code for every way they can be wrong,
//! revoked by their holder (seen or not) or with their grant, and capped all together.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use time::OffsetDateTime;
use vault_key_server::clock::ManualClock;
use vault_key_server::Server;
use vault_key_wire::{GrantCredential, KeyCaveats, RunCaveats};

/// A server whose "now" is `clock`'s.
async fn start_on_clock(db: &TestDb, clock: &ManualClock) -> Server {
    let clock = clock.clone();
    start_on_with(db, move |config| config.clock = Arc::new(clock)).await
}

fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["code"].as_str().unwrap_or(""))
}

/// `POST /v1/grants/{id}/revoke` with `credential` as the bearer.
async fn holder_revokes(
    server: &Server,
    grant_id: &str,
    bearer: &str,
    ids: &[&str],
) -> (u16, Value) {
    send(
        http()
            .post(format!("{}/v1/grants/{grant_id}/revoke", server.url()))
            .bearer_auth(bearer)
            .json(&json!({ "ids": ids })),
    )
    .await
}

async fn a_minted_key_is_admitted_at_first_use_and_then_served_like_an_issued_key(db: &TestDb) {
    let server = start_on(db).await;
    let (grant, credential) = stripe_grant(&server, 20.0, 500.0).await;
    assert_eq!(grant["max_key_ttl"], "10m");
    assert_eq!(grant["token_placement"]["header"], "authorization");
    let caveats = caveats_within(&credential, OffsetDateTime::now_utc());
    let token = credential.mint(&caveats);

    assert_eq!(
        code(&admin_get(&server, &format!("/v1/keys/{}", caveats.key_id)).await).0,
        404
    );
    assert_eq!(charge(&server, &token, 1000).await.0, 200);
    assert_eq!(charge(&server, &token, 250).await.0, 200);
    let key = get_key(&server, &caveats.key_id).await;
    assert_eq!(
        (
            key["label"].as_str(),
            key["status"].as_str(),
            micros(&key["spent_today_usd"])
        ),
        (Some("run-7/charge"), Some("active"), 12_500_000),
        "{key}"
    );
    assert_eq!(micros(&key["daily_usd_cap"]), 20_000_000);
    let grant_id = grant["id"].as_str().unwrap();
    let (status, view) = admin_get(&server, &format!("/v1/grants/{grant_id}")).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("active")));
    assert_eq!(micros(&view["spent_today_usd"]), 12_500_000, "{view}");
    assert_eq!(micros(&view["reserved_usd"]), 0);
    assert!(
        view.get("grant").is_none(),
        "the credential is shown once: {view}"
    );
    // The sandbox saw the real secret, never the minted token.
    let received = server.sandbox().unwrap().received();
    assert!(received.iter().all(|r| !format!("{r:?}").contains(&token)));
    server.shutdown().await;
}

async fn a_key_that_is_not_its_grants_to_make_is_refused_with_its_code(db: &TestDb) {
    let server = start_on(db).await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let now = OffsetDateTime::now_utc();
    let try_key = |caveats: KeyCaveats| {
        let token = credential.mint(&caveats);
        let server = &server;
        async move { charge(server, &token, 100).await }
    };

    // Forged: the right grant id, another secret.
    let forger = GrantCredential::from_parts(credential.id(), &"F".repeat(43)).unwrap();
    let forged = charge(
        &server,
        &forger.mint(&caveats_within(&credential, now)),
        100,
    )
    .await;
    assert_eq!(code(&forged), (401, "invalid_key"), "{}", forged.1);
    // Tampered: a wider cap written into a token signed for a narrower one.
    let honest = credential.mint(&caveats_within(&credential, now));
    let mut wider = caveats_within(&credential, now);
    wider.daily_cap_micros = 1_000_000_000;
    let tampered = splice_caveats(&honest, &wider);
    assert_eq!(
        code(&charge(&server, &tampered, 100).await),
        (401, "invalid_key")
    );
    // A grant id no grant has.
    let stranger =
        GrantCredential::from_parts("grt_0000000000000000000000", &"S".repeat(43)).unwrap();
    let mut caveats = caveats_within(&stranger, now);
    caveats.grant_id = stranger.id().to_owned();
    assert_eq!(
        code(&charge(&server, &stranger.mint(&caveats), 100).await),
        (401, "invalid_key")
    );

    // Wider than the grant, each way.
    let wider_ways: Vec<(&str, Widening)> = vec![
        ("cap", Box::new(|c| c.daily_cap_micros = 20_000_001)),
        ("zero cap", Box::new(|c| c.daily_cap_micros = 0)),
        (
            "endpoint",
            Box::new(|c| c.allowed_endpoints = vec!["/v1/refunds".parse().unwrap()]),
        ),
        (
            "endpoint pattern",
            Box::new(|c| c.allowed_endpoints = vec!["/v1/payment_intents/**".parse().unwrap()]),
        ),
        (
            "method",
            Box::new(|c| c.allowed_methods = Some(vec!["DELETE".to_owned()])),
        ),
        (
            "lifetime",
            Box::new(move |c| c.expires_at = (now + time::Duration::minutes(11)).unix_timestamp()),
        ),
        (
            "minted in the future",
            Box::new(move |c| {
                c.issued_at = (now + time::Duration::minutes(5)).unix_timestamp();
                c.expires_at = (now + time::Duration::minutes(9)).unix_timestamp();
            }),
        ),
        ("label", Box::new(|c| c.label = "run-8/charge".to_owned())),
        ("vendor", Box::new(|c| c.vendor = "openai".to_owned())),
        ("id", Box::new(|c| c.key_id = "not-a-key-id".to_owned())),
        (
            "minted before its grant",
            Box::new(move |c| {
                c.issued_at = (now - time::Duration::minutes(9)).unix_timestamp();
                c.expires_at = (now + time::Duration::minutes(1)).unix_timestamp();
            }),
        ),
    ];
    for (way, widen) in wider_ways {
        let mut caveats = caveats_within(&credential, now);
        widen(&mut caveats);
        let refused = try_key(caveats).await;
        assert_eq!(
            code(&refused),
            (403, "key_wider_than_grant"),
            "{way}: {}",
            refused.1
        );
    }
    // Used for another vendor than its own.
    let token = credential.mint(&caveats_within(&credential, now));
    let other_vendor = send(
        http()
            .post(format!("{}/openai/v1/embeddings", server.url()))
            .bearer_auth(&token)
            .json(&json!({"model": "text-embedding-3-small", "input": "x"})),
    )
    .await;
    assert_eq!(
        code(&other_vendor),
        (403, "vendor_mismatch"),
        "{}",
        other_vendor.1
    );
    // None of it reached the vendor.
    assert_eq!(charges_executed(std::slice::from_ref(&server)), 0);
    server.shutdown().await;
}

/// One way a key asks for more than its grant allows.
type Widening = Box<dyn Fn(&mut KeyCaveats)>;

/// `token` with its caveats replaced by `caveats`, its tag and a fresh checksum kept: what a
/// holder who edits a minted key gets.
fn splice_caveats(token: &str, caveats: &KeyCaveats) -> String {
    use base64::Engine;
    let body = &token[..token.len() - 6];
    let tag = body.rsplit_once('.').unwrap().1;
    let block = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(caveats).unwrap());
    let spliced = format!("vkm_{block}.{tag}");
    let checksum = vault_key_wire::checksum(&spliced);
    format!("{spliced}{checksum}")
}

async fn minted_keys_are_revoked_by_their_holder_seen_or_not_and_with_their_grant(db: &TestDb) {
    let server = start_on(db).await;
    let (grant, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let grant_id = grant["id"].as_str().unwrap();
    let now = OffsetDateTime::now_utc();
    let seen = caveats_within(&credential, now);
    let unseen = caveats_within(&credential, now);
    let (seen_token, unseen_token) = (credential.mint(&seen), credential.mint(&unseen));
    assert_eq!(charge(&server, &seen_token, 100).await.0, 200);

    // Only the grant's own credential revokes its keys.
    let (_, other) = grant_with_prefix(&server, "run-9/").await;
    for bearer in [other.token(), ADMIN.to_owned(), "vkg_nonsense".to_owned()] {
        let refused = holder_revokes(&server, grant_id, &bearer, &[&seen.key_id]).await;
        assert_eq!(code(&refused), (401, "unauthorized"), "{}", refused.1);
    }
    assert_eq!(charge(&server, &seen_token, 100).await.0, 200);

    let revoked = holder_revokes(
        &server,
        grant_id,
        &credential.token(),
        &[&seen.key_id, &unseen.key_id],
    )
    .await;
    assert_eq!(
        (revoked.0, revoked.1["revoked"].as_u64()),
        (200, Some(1)),
        "{}",
        revoked.1
    );
    assert_eq!(
        code(&charge(&server, &seen_token, 100).await),
        (401, "key_revoked")
    );
    // Revoked before it was ever used: refused at its first use, and from then on on record as
    // revoked (presenting it again is a read, not another write).
    assert_eq!(
        code(&charge(&server, &unseen_token, 100).await),
        (401, "key_revoked")
    );
    let (status, recorded) = admin_get(&server, &format!("/v1/keys/{}", unseen.key_id)).await;
    assert_eq!(
        (status, recorded["status"].as_str()),
        (200, Some("revoked")),
        "{recorded}"
    );
    assert_eq!(
        code(&charge(&server, &unseen_token, 100).await),
        (401, "key_revoked")
    );

    // Revoking the grant: its seen keys at once, its unseen ones at first use.
    let live = caveats_within(&credential, now);
    let live_token = credential.mint(&live);
    assert_eq!(charge(&server, &live_token, 100).await.0, 200);
    let never_used = credential.mint(&caveats_within(&credential, now));
    let (status, body) = admin(
        &server.url(),
        reqwest::Method::DELETE,
        &format!("/v1/grants/{grant_id}"),
        None,
    )
    .await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(
        code(&charge(&server, &live_token, 100).await),
        (401, "key_revoked")
    );
    assert_eq!(
        code(&charge(&server, &never_used, 100).await),
        (401, "key_revoked")
    );
    let (_, view) = admin_get(&server, &format!("/v1/grants/{grant_id}")).await;
    assert_eq!(view["status"], "revoked");
    let (status, _) = admin(
        &server.url(),
        reqwest::Method::DELETE,
        "/v1/grants/grt_0000000000000000000000",
        None,
    )
    .await;
    assert_eq!(status, 404);
    server.shutdown().await;
}

async fn grant_with_prefix(server: &Server, prefix: &str) -> (Value, GrantCredential) {
    let (status, grant) = admin(
        &server.url(),
        reqwest::Method::POST,
        "/v1/grants",
        Some(json!({
            "label_prefix": prefix, "vendor": "stripe", "max_key_usd_cap": 1, "daily_usd_cap": 1,
            "allowed_endpoints": ["/v1/customers"], "max_key_ttl": "1m", "expires_in": "10m",
        })),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    let credential = GrantCredential::parse(grant["grant"].as_str().unwrap()).unwrap();
    (grant, credential)
}

async fn a_grants_daily_cap_holds_across_all_its_keys_at_once(db: &TestDb) {
    let server = start_on(db).await;
    let (grant, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let now = OffsetDateTime::now_utc();
    let tokens: Vec<String> = (0..100)
        .map(|_| credential.mint(&caveats_within(&credential, now)))
        .collect();
    let url = server.url();
    let answers = ten_dollars_each_at_once(&url, &tokens).await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let capped: Vec<&(u16, Value)> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(
        (ok, capped.len()),
        (50, 50),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    let grant_id = grant["id"].as_str().unwrap();
    for refused in &capped {
        assert_eq!(refused.1["code"], "cap_exhausted");
        assert_eq!(refused.1["grant_id"], grant_id, "{}", refused.1);
    }
    assert_eq!(charges_executed(std::slice::from_ref(&server)), 50);
    let (_, view) = admin_get(&server, &format!("/v1/grants/{grant_id}")).await;
    assert_eq!(
        (
            micros(&view["spent_today_usd"]),
            micros(&view["reserved_usd"])
        ),
        (500_000_000, 0),
        "{view}"
    );
    // Each key's own spend is its one charge or nothing; together, the grant's.
    let mut total = 0;
    for token in &tokens {
        let id = vault_key_wire::MintedToken::parse(token)
            .unwrap()
            .caveats()
            .key_id
            .clone();
        let (status, key) = admin_get(&server, &format!("/v1/keys/{id}")).await;
        assert_eq!(status, 200);
        assert_eq!(micros(&key["reserved_usd"]), 0, "{key}");
        total += micros(&key["spent_today_usd"]);
    }
    assert_eq!(total, 500_000_000);
    server.shutdown().await;
}

async fn a_grant_expires_with_every_key_minted_from_it(db: &TestDb) {
    let clock = ManualClock::new(OffsetDateTime::now_utc());
    let server = start_on_clock(db, &clock).await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let start = OffsetDateTime::now_utc();
    let seen = credential.mint(&caveats_within(&credential, start));
    assert_eq!(charge(&server, &seen, 100).await.0, 200);
    // Six minutes on, a key minted at the start and never used has expired (its grant has not).
    let unused = credential.mint(&caveats_within(&credential, start));
    clock.advance(Duration::from_secs(360));
    assert_eq!(
        code(&charge(&server, &unused, 100).await),
        (401, "key_expired")
    );
    // An hour on, the grant has expired; a key minted just before it is refused too.
    clock.advance(Duration::from_secs(3600 - 360));
    let late = start + time::Duration::minutes(58);
    let mut caveats = caveats_within(&credential, late);
    caveats.expires_at = (late + time::Duration::minutes(1)).unix_timestamp();
    assert_eq!(
        code(&charge(&server, &credential.mint(&caveats), 100).await),
        (401, "key_expired")
    );
    assert_eq!(
        code(&charge(&server, &seen, 100).await),
        (401, "key_expired")
    );
    server.shutdown().await;
}

async fn bad_grant_requests_name_their_field(db: &TestDb) {
    let server = start_on(db).await;
    let good = json!({
        "label_prefix": "run-7/", "vendor": "stripe", "max_key_usd_cap": 20, "daily_usd_cap": 500,
        "allowed_endpoints": ["/v1/payment_intents"], "max_key_ttl": "10m", "expires_in": "1h",
    });
    let cases = [
        ("max_key_usd_cap", json!(501)),
        ("daily_usd_cap", json!(0)),
        ("vendor", json!("strpe")),
        ("allowed_endpoints", json!(["v1/x"])),
        ("allowed_methods", json!(["BREW"])),
        ("max_key_ttl", json!("100d")),
        ("expires_in", json!("365d")),
        ("label_prefix", json!("run\u{7}")),
        ("label_prefix", json!("")),
        ("surprise", json!(true)),
    ];
    for (field, value) in cases {
        let mut body = good.clone();
        body[field] = value;
        let (status, error) = admin(
            &server.url(),
            reqwest::Method::POST,
            "/v1/grants",
            Some(body),
        )
        .await;
        assert_eq!(
            (status, error["code"].as_str(), error["field"].as_str()),
            (400, Some("invalid_request"), Some(field)),
            "{error}"
        );
    }
    let (status, _) = send(
        http()
            .post(format!("{}/v1/grants", server.url()))
            .json(&good),
    )
    .await;
    assert_eq!(status, 401, "creating a grant takes the admin token");
    server.shutdown().await;
}

/// The caveats of run `name` under the `run-7/` grant: `cap` dollars for all its keys, for half an hour.
fn run_of(name: &str, cap: u64) -> RunCaveats {
    RunCaveats {
        run_id: format!("grt_{}", &vault_key_server::token::generate_key_id()[4..]),
        label_prefix: format!("run-7/{name}/"),
        daily_cap_micros: cap * 1_000_000,
        expires_at: (OffsetDateTime::now_utc() + time::Duration::minutes(30)).unix_timestamp(),
    }
}

/// A key of `run`, labelled under it.
fn key_of_run(credential: &GrantCredential, run: &RunCaveats) -> KeyCaveats {
    let mut caveats = caveats_within(credential, OffsetDateTime::now_utc());
    caveats.label = format!("{}charge", run.label_prefix);
    caveats
}

async fn a_run_budget_minted_from_a_grant_caps_its_keys_together(db: &TestDb) {
    let server = start_on(db).await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let (run_a, run_b) = (run_of("a", 30), run_of("b", 30));
    let (a, b) = (credential.open_run(&run_a), credential.open_run(&run_b));

    // Twenty keys of run A at once, $10 each, against its $30: exactly three charge.
    let url = server.url();
    let tokens: Vec<String> = (0..20)
        .map(|_| a.mint(&key_of_run(&credential, &run_a)))
        .collect();
    let answers = ten_dollars_each_at_once(&url, &tokens).await;
    assert_eq!(answers.iter().filter(|a| a.0 == 200).count(), 3);
    for refused in answers.iter().filter(|a| a.0 != 200) {
        assert_eq!(code(refused), (429, "cap_exhausted"));
        assert_eq!(
            refused.1["grant_id"],
            run_a.run_id.as_str(),
            "{}",
            refused.1
        );
    }
    // Run B has its own $30 (three keys, a charge each); the grant sees both runs.
    let b_keys: Vec<String> = (0..4)
        .map(|_| b.mint(&key_of_run(&credential, &run_b)))
        .collect();
    for key in &b_keys[..3] {
        assert_eq!(charge(&server, key, 1000).await.0, 200);
    }
    let over = charge(&server, &b_keys[3], 1000).await;
    assert_eq!(code(&over), (429, "cap_exhausted"));
    assert_eq!(over.1["grant_id"], run_b.run_id.as_str());
    let b_key = b_keys[0].clone();
    let (_, grant_view) = admin_get(&server, &format!("/v1/grants/{}", credential.id())).await;
    assert_eq!(
        micros(&grant_view["spent_today_usd"]),
        60_000_000,
        "{grant_view}"
    );
    let (_, run_view) = admin_get(&server, &format!("/v1/grants/{}", run_a.run_id)).await;
    assert_eq!(
        micros(&run_view["spent_today_usd"]),
        30_000_000,
        "{run_view}"
    );
    assert_eq!(micros(&run_view["reserved_usd"]), 0);

    // A run wider than its grant, or a key outside its run: refused before anything is recorded.
    let now = OffsetDateTime::now_utc();
    let mut too_rich = run_of("c", 30);
    too_rich.daily_cap_micros = 501_000_000;
    let mut elsewhere = run_of("d", 30);
    elsewhere.label_prefix = "run-8/".to_owned();
    let mut outliving = run_of("e", 30);
    outliving.expires_at = (now + time::Duration::hours(2)).unix_timestamp();
    for (what, run) in [
        ("cap", too_rich),
        ("prefix", elsewhere),
        ("expiry", outliving),
    ] {
        let token = credential
            .open_run(&run)
            .mint(&key_of_run(&credential, &run));
        let refused = charge(&server, &token, 100).await;
        assert_eq!(
            code(&refused),
            (403, "key_wider_than_grant"),
            "{what}: {}",
            refused.1
        );
    }
    let mut stray = key_of_run(&credential, &run_a);
    stray.label = "run-7/b/charge".to_owned();
    assert_eq!(
        code(&charge(&server, &a.mint(&stray), 100).await),
        (403, "key_wider_than_grant")
    );
    // The same run id with other terms is not the run.
    let mut impostor = run_a.clone();
    impostor.daily_cap_micros = 300_000_000;
    let token = credential
        .open_run(&impostor)
        .mint(&key_of_run(&credential, &impostor));
    assert_eq!(
        code(&charge(&server, &token, 100).await),
        (401, "invalid_key")
    );

    // Stopping one run: its keys, seen or not, and no other run's.
    let (status, _) = admin(
        &server.url(),
        reqwest::Method::DELETE,
        &format!("/v1/grants/{}", run_a.run_id),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(code(&list(&server, &tokens[0]).await), (401, "key_revoked"));
    let unseen = a.mint(&key_of_run(&credential, &run_a));
    assert_eq!(code(&list(&server, &unseen).await), (401, "key_revoked"));
    assert_eq!(list(&server, &b_key).await.0, 200);
    // The grant's holder revokes a run's key with the grant's credential.
    let b_id = vault_key_wire::MintedToken::parse(&b_key)
        .unwrap()
        .caveats()
        .key_id
        .clone();
    let revoked = holder_revokes(&server, credential.id(), &credential.token(), &[&b_id]).await;
    assert_eq!(revoked.1["revoked"], 1, "{}", revoked.1);
    assert_eq!(code(&list(&server, &b_key).await), (401, "key_revoked"));
    // And the grant stops every run.
    let b_other = b.mint(&key_of_run(&credential, &run_b));
    assert_eq!(list(&server, &b_other).await.0, 200);
    let (status, _) = admin(
        &server.url(),
        reqwest::Method::DELETE,
        &format!("/v1/grants/{}", credential.id()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(code(&list(&server, &b_other).await), (401, "key_revoked"));
    server.shutdown().await;
}

async fn an_operators_label_revocation_stops_minted_keys_not_yet_seen(db: &TestDb) {
    let now = OffsetDateTime::now_utc();
    let clock = ManualClock::new(now);
    let server = start_on_clock(db, &clock).await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let labelled = |label: &str, at: OffsetDateTime| {
        let mut caveats = caveats_within(&credential, at);
        caveats.label = label.to_owned();
        credential.mint(&caveats)
    };
    let seen = labelled("run-7/a/charge", now);
    let unseen = labelled("run-7/a/refund", now);
    // Minted with a clock half a minute ahead: still before the revocation, within the skew.
    let ahead = labelled("run-7/a/lookup", now + time::Duration::seconds(30));
    let elsewhere = labelled("run-7/b/charge", now);
    assert_eq!(list(&server, &seen).await.0, 200);

    let (status, body) = admin(
        &server.url(),
        reqwest::Method::POST,
        "/v1/keys/revoke",
        Some(json!({"label_prefix": "run-7/a/"})),
    )
    .await;
    assert_eq!((status, body["revoked"].as_u64()), (200, Some(1)), "{body}");
    assert_eq!(code(&list(&server, &seen).await), (401, "key_revoked"));
    // Minted before the revocation, presented after it: refused as the seen one was.
    assert_eq!(code(&list(&server, &unseen).await), (401, "key_revoked"));
    assert_eq!(code(&list(&server, &ahead).await), (401, "key_revoked"));
    // Another prefix is not touched; a key minted well after the revocation is a new key.
    assert_eq!(list(&server, &elsewhere).await.0, 200);
    clock.advance(Duration::from_secs(120));
    let later = labelled("run-7/a/charge", now + time::Duration::seconds(120));
    assert_eq!(list(&server, &later).await.0, 200);
    server.shutdown().await;
}

async fn a_run_key_first_used_minutes_after_it_was_minted_is_still_the_runs(db: &TestDb) {
    let start = OffsetDateTime::now_utc();
    let clock = ManualClock::new(start);
    let server = start_on_clock(db, &clock).await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let run = run_of("slow", 30);
    let mut caveats = key_of_run(&credential, &run);
    caveats.issued_at = (start + time::Duration::minutes(1)).unix_timestamp();
    caveats.expires_at = (start + time::Duration::minutes(6)).unix_timestamp();
    let token = credential.open_run(&run).mint(&caveats);
    // Four minutes after it was minted (an LLM call before the first vendor call).
    clock.advance(Duration::from_secs(300));
    assert_eq!(list(&server, &token).await.0, 200);

    // A run's prefix ends at a segment boundary: run `run-7/z` does not take `run-7/zz/…`.
    let mut bare = run_of("z", 30);
    bare.label_prefix = "run-7/z".to_owned();
    let mut inside = key_of_run(&credential, &bare);
    inside.issued_at = clock_now(&start, 300);
    inside.expires_at = clock_now(&start, 600);
    inside.label = "run-7/z/charge".to_owned();
    let mut beside = inside.clone();
    beside.key_id = vault_key_server::token::generate_key_id();
    beside.label = "run-7/zz/charge".to_owned();
    let bare_run = credential.open_run(&bare);
    assert_eq!(list(&server, &bare_run.mint(&inside)).await.0, 200);
    let refused = list(&server, &bare_run.mint(&beside)).await;
    assert_eq!(
        code(&refused),
        (403, "key_wider_than_grant"),
        "{}",
        refused.1
    );
    server.shutdown().await;
}

/// Unix seconds `seconds` after `start`.
fn clock_now(start: &OffsetDateTime, seconds: i64) -> i64 {
    (*start + time::Duration::seconds(seconds)).unix_timestamp()
}

/// A $10 charge with each token, all at once.
async fn ten_dollars_each_at_once(url: &str, tokens: &[String]) -> Vec<(u16, Value)> {
    futures_util::future::join_all(tokens.iter().map(|token| {
        stripe_form(
            url,
            token,
            "/v1/payment_intents",
            "amount=1000&currency=usd",
            &[],
        )
    }))
    .await
}

/// A free read through the proxy.
async fn list(server: &Server, token: &str) -> (u16, Value) {
    send(
        http()
            .get(format!("{}/stripe/v1/payment_intents", server.url()))
            .bearer_auth(token),
    )
    .await
}

on_both_stores!(
    tokio::test(flavor = "multi_thread", worker_threads = 4);
    a_minted_key_is_admitted_at_first_use_and_then_served_like_an_issued_key,
    a_key_that_is_not_its_grants_to_make_is_refused_with_its_code,
    minted_keys_are_revoked_by_their_holder_seen_or_not_and_with_their_grant,
    a_grants_daily_cap_holds_across_all_its_keys_at_once,
    a_grant_expires_with_every_key_minted_from_it,
    bad_grant_requests_name_their_field,
    a_run_budget_minted_from_a_grant_caps_its_keys_together,
    an_operators_label_revocation_stops_minted_keys_not_yet_seen,
    a_run_key_first_used_minutes_after_it_was_minted_is_still_the_runs,
);
