//! `vault-key-server keys …` end to end: the real binary against a real server, reading
//! `VAULT_KEY_URL` and `VAULT_KEY_ADMIN_TOKEN` as an operator's shell would set them.

mod common;

use common::*;
use serde_json::Value;
use vault_key_server::Server;

/// What one run of the CLI printed, and how it exited.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `vault-key-server keys ARGS` against `url`, with `token` as the admin token (none when
/// `None`).
async fn keys(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vault-key-server"));
    command
        .arg("keys")
        .args(args)
        .env("VAULT_KEY_URL", url)
        .env_remove("VAULT_KEY_ADMIN_TOKEN")
        .env("RUST_LOG", "warn");
    if let Some(token) = token {
        command.env("VAULT_KEY_ADMIN_TOKEN", token);
    }
    let output = command.output().await.expect("the binary runs");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(ADMIN), "the admin token was printed: {text}");
    }
    run
}

async fn operator(server: &Server, args: &[&str]) -> Run {
    let run = keys(&server.url(), Some(ADMIN), args).await;
    assert_eq!(run.code, 0, "{run:?}");
    run
}

/// Three keys of two agent runs; the first has made a $1 charge and had one call refused.
async fn fleet(server: &Server) -> (Value, Value, Value) {
    let a = stripe_key(server, "run-1/charge", 5.0).await;
    let b = stripe_key(server, "run-1/lookup", 5.0).await;
    let c = stripe_key(server, "run-2/charge", 5.0).await;
    assert_eq!(charge(server, token(&a), 100).await.0, 200);
    let (status, body) =
        stripe_form(&server.url(), token(&a), "/v1/refunds", "charge=ch_1", &[]).await;
    assert_eq!(
        (status, &body["code"]),
        (403, &Value::from("endpoint_not_allowed")),
        "{body}"
    );
    refusals_recorded(server, &a, 1).await;
    (a, b, c)
}

fn id(key: &Value) -> &str {
    key["id"].as_str().unwrap()
}

#[tokio::test]
async fn list_shows_each_keys_spend_requests_refusals_and_expiry() {
    let server = start().await;
    let (a, _, _) = fleet(&server).await;

    let listed: Vec<Value> =
        serde_json::from_str(&operator(&server, &["list", "--json"]).await.stdout).unwrap();
    assert_eq!(listed.len(), 3);
    let first = listed.iter().find(|k| k["id"] == a["id"]).unwrap();
    assert_eq!(
        (
            &first["spent_today_usd"],
            &first["requests"],
            &first["refusals"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(1)),
        "{first}"
    );

    let table = operator(&server, &["list"]).await.stdout;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "ID",
        "LABEL",
        "SPENT TODAY",
        "RESERVED",
        "CAP",
        "REQUESTS",
        "REFUSALS",
        "EXPIRES",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table.lines().find(|l| l.starts_with(id(&a))).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[1..9],
        [
            "run-1/charge",
            "stripe",
            "active",
            "$1",
            "$0",
            "$5",
            "1",
            "1"
        ],
        "{table}"
    );
    // The key was issued for 5 minutes a moment ago (a loaded machine may take seconds).
    let left = row.rsplit("in ").next().unwrap();
    assert!(left.starts_with("4m") || left == "5m00s", "{row}");

    let run_1: Vec<Value> = serde_json::from_str(
        &operator(&server, &["list", "--label-prefix", "run-1/", "--json"])
            .await
            .stdout,
    )
    .unwrap();
    assert_eq!(run_1.len(), 2);
    let openai = operator(&server, &["list", "--vendor", "openai"])
        .await
        .stdout;
    assert_eq!(openai, "no keys\n");
    let revoked = operator(&server, &["list", "--status", "revoked", "--json"])
        .await
        .stdout;
    assert_eq!(
        serde_json::from_str::<Value>(&revoked).unwrap(),
        Value::Array(vec![])
    );
}

#[tokio::test]
async fn list_follows_every_page() {
    let server = start().await;
    for i in 0..1_005 {
        issue(
            &server,
            serde_json::json!({"label": format!("bulk/{i}"), "vendor": "stripe",
                "daily_usd_cap": 1, "expires_in": "5m", "allowed_endpoints": ["/v1/customers"]}),
        )
        .await;
    }
    let listed: Vec<Value> =
        serde_json::from_str(&operator(&server, &["list", "--json"]).await.stdout).unwrap();
    assert_eq!(listed.len(), 1_005);
}

#[tokio::test]
async fn show_gives_a_keys_calls_and_refusals() {
    let server = start().await;
    let (a, _, _) = fleet(&server).await;
    let shown = operator(&server, &["show", id(&a)]).await.stdout;
    assert!(shown.contains("label        run-1/charge"), "{shown}");
    assert!(
        shown.contains("spent today  $1 of $5 ($0 reserved)"),
        "{shown}"
    );
    assert!(shown.contains("refused: endpoint_not_allowed"), "{shown}");
    assert!(shown.contains("200, cost $1"), "{shown}");

    let json: Value =
        serde_json::from_str(&operator(&server, &["show", id(&a), "--json"]).await.stdout).unwrap();
    assert_eq!(json["key"]["id"], a["id"]);
    assert_eq!(json["calls"].as_array().unwrap().len(), 2);
    let one: Value = serde_json::from_str(
        &operator(&server, &["show", id(&a), "--calls", "1", "--json"])
            .await
            .stdout,
    )
    .unwrap();
    // The latest call: the refusal, which came after the charge.
    assert_eq!(one["calls"].as_array().unwrap().len(), 1);
    assert_eq!(one["calls"][0]["denied"], "endpoint_not_allowed", "{one}");
}

#[tokio::test]
async fn revoke_stops_a_key_or_a_whole_run_and_the_next_call_is_refused() {
    let server = start().await;
    let (a, b, c) = fleet(&server).await;
    let run = operator(&server, &["revoke", id(&a)]).await;
    assert_eq!(run.stdout, "revoked 1 key\n");
    let (status, body) = charge(&server, token(&a), 100).await;
    assert_eq!((status, &body["code"]), (401, &Value::from("key_revoked")));

    // The rest of run 1, in one step; run 2 goes on.
    let run = operator(&server, &["revoke", "--label-prefix", "run-1/", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&run.stdout).unwrap(),
        serde_json::json!({"revoked": 1})
    );
    assert_eq!(get_key(&server, id(&b)).await["status"], "revoked");
    assert_eq!(get_key(&server, id(&c)).await["status"], "active");

    // By id, going on past an id the server does not know, and saying what happened to each.
    let run = keys(
        &server.url(),
        Some(ADMIN),
        &["revoke", id(&a), "key_doesnotexist", id(&c), id(&c)],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "revoked 1 key; 1 key already revoked\n");
    assert!(
        run.stderr
            .contains("could not revoke 1 key: key_doesnotexist"),
        "{run:?}"
    );
    assert_eq!(get_key(&server, id(&c)).await["status"], "revoked");
}

#[tokio::test]
async fn mistakes_get_one_clear_line_and_a_failing_exit_code() {
    let server = start().await;
    let (a, _, _) = fleet(&server).await;
    let url = server.url();

    let wrong = keys(&url, Some("not-the-admin-token-at-all"), &["list"]).await;
    assert_eq!(wrong.code, 1);
    assert!(
        !wrong.stderr.contains("not-the-admin-token-at-all"),
        "{wrong:?}"
    );
    assert!(
        wrong.stderr.contains("refused the admin token"),
        "{wrong:?}"
    );
    assert!(wrong.stdout.is_empty());

    let missing = keys(&url, None, &["list"]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("set VAULT_KEY_ADMIN_TOKEN"),
        "{missing:?}"
    );

    let unknown = keys(&url, Some(ADMIN), &["show", "key_doesnotexist"]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("(not_found)"), "{unknown:?}");
    let unknown = keys(&url, Some(ADMIN), &["revoke", "key_doesnotexist"]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("(not_found)"), "{unknown:?}");

    let traversal = keys(&url, Some(ADMIN), &["show", "../../metrics"]).await;
    assert_eq!(traversal.code, 1);
    assert!(
        traversal.stderr.contains("is not a key id"),
        "{traversal:?}"
    );

    let in_clear = keys("http://vault.example.invalid:8787", Some(ADMIN), &["list"]).await;
    assert_eq!(in_clear.code, 1);
    assert!(
        in_clear.stderr.contains("not sent in clear"),
        "{in_clear:?}"
    );

    let unreachable = keys("http://127.0.0.1:9", Some(ADMIN), &["list"]).await;
    assert_eq!(unreachable.code, 1);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach the vault-key server at http://127.0.0.1:9"),
        "{unreachable:?}"
    );

    // Usage errors are clap's: exit 2, with the usage.
    let nothing = keys(&url, Some(ADMIN), &["revoke"]).await;
    assert_eq!(nothing.code, 2, "{nothing:?}");
    let both = keys(
        &url,
        Some(ADMIN),
        &["revoke", id(&a), "--label-prefix", "run-1/"],
    )
    .await;
    assert_eq!(both.code, 2, "{both:?}");
    let no_calls = keys(&url, Some(ADMIN), &["show", id(&a), "--calls", "0"]).await;
    assert_eq!(no_calls.code, 2, "{no_calls:?}");
    let bad_status = keys(&url, Some(ADMIN), &["list", "--status", "paused"]).await;
    assert_eq!(bad_status.code, 2, "{bad_status:?}");
    // Nothing was revoked by the mistakes.
    assert_eq!(get_key(&server, id(&a)).await["status"], "active");
}
