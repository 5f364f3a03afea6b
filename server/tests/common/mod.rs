//! Shared by the server's wire tests: a real server on a loopback port, its sandbox, an admin
//! client, and a raw HTTP/1.1 sender for requests no well-behaved client would send.

#![allow(dead_code)]

use std::net::SocketAddr;

use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vault_key_server::meter::Meter;
use vault_key_server::vendor::{rest_methods, ErrorEnvelope, Upstream, Vendor, VendorAuth};
use vault_key_server::{Server, ServerConfig};
use vault_key_wire::{GrantCredential, KeyCaveats};

pub const ADMIN: &str = "test-admin-token-0123456789";

pub async fn start() -> Server {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut config = ServerConfig::sandbox(SecretString::from(ADMIN));
    adjust(&mut config);
    Server::start(config).await.expect("server starts")
}

/// A sandbox server on the test's database.
pub async fn start_on(db: &TestDb) -> Server {
    start_on_with(db, |_| {}).await
}

/// A sandbox server on the test's database, configured further by `adjust`.
pub async fn start_on_with(db: &TestDb, adjust: impl FnOnce(&mut ServerConfig)) -> Server {
    start_with(|config| {
        config.database_url = db.url().to_owned();
        adjust(config);
    })
    .await
}

/// The database of one test: a SQLite file in a directory of its own, or a PostgreSQL database
/// of its own on the server `VAULT_KEY_TEST_POSTGRES` names; either is removed when the test ends
/// (however it ends), so tests run in parallel and leave nothing behind.
#[derive(Debug)]
pub struct TestDb {
    url: String,
    /// The PostgreSQL server's URL and this test's database on it.
    postgres: Option<(String, String)>,
    /// The SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        TestDb {
            url: format!("sqlite://{}", dir.path().join("vault.db").display()),
            postgres: None,
            _dir: Some(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (saying so) where `VAULT_KEY_TEST_POSTGRES` is unset.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let Ok(server) = std::env::var("VAULT_KEY_TEST_POSTGRES") else {
            eprintln!("skipped {test} on PostgreSQL: VAULT_KEY_TEST_POSTGRES is not set");
            return None;
        };
        let name = format!(
            "vault_key_test_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = postgres_admin(&server).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("a test database can be created");
        let mut url = url::Url::parse(&server).expect("VAULT_KEY_TEST_POSTGRES is a URL");
        url.set_path(&name);
        Some(TestDb {
            url: url.to_string(),
            postgres: Some((server, name)),
            _dir: None,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

async fn postgres_admin(server: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(server)
        .await
        .expect("the PostgreSQL of VAULT_KEY_TEST_POSTGRES answers")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, name)) = self.postgres.take() else {
            return;
        };
        // A runtime of its own: this may run while the test's runtime unwinds.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let mut admin = postgres_admin(&server).await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop a test database: {error}");
        }
    }
}

/// Runs each named test, an `async fn(&TestDb)`, twice: on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($flavor:meta; $($test:ident),+ $(,)?) => {
        mod on_sqlite {
            $(
                #[$flavor]
                async fn $test() {
                    super::$test(&$crate::common::TestDb::sqlite()).await
                }
            )+
        }
        mod on_postgres {
            $(
                #[$flavor]
                async fn $test() {
                    if let Some(db) = $crate::common::TestDb::postgres(stringify!($test)).await {
                        super::$test(&db).await
                    }
                }
            )+
        }
    };
}

/// A generic vendor at `base_url`, with a flat cost per call.
pub fn generic_vendor(name: &str, base_url: &str, cost_micros: u64) -> Vendor {
    Vendor {
        name: name.to_owned(),
        upstream: Upstream::Url(base_url.parse().unwrap()),
        secret: SecretString::from(format!("{name}-real-secret")),
        auth: VendorAuth::Bearer,
        meter: Meter::Flat(vault_key_wire::Usd::from_micros(cost_micros)),
        methods: rest_methods(),
        free_routes: Vec::new(),
        envelope: ErrorEnvelope::Plain,
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Sends a request and returns its status and JSON body (`Null` when the body is not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// An admin request to the server at `url`, with an optional JSON body.
pub async fn admin(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http()
        .request(method, format!("{url}{path}"))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

/// `POST /v1/keys` with `body`; returns status and JSON.
pub async fn create_key(server: &Server, body: Value) -> (u16, Value) {
    admin(&server.url(), reqwest::Method::POST, "/v1/keys", Some(body)).await
}

/// A Stripe key for payment intents with `cap` dollars and a 5-minute life.
pub async fn stripe_key(server: &Server, label: &str, cap: f64) -> Value {
    issue(
        server,
        json!({
            "label": label,
            "vendor": "stripe",
            "daily_usd_cap": cap,
            "allowed_endpoints": ["/v1/payment_intents", "/v1/payment_intents/*", "/v1/payment_intents/*/confirm", "/v1/customers"],
            "expires_in": "5m",
        }),
    )
    .await
}

/// Issues a key, asserting `201`.
pub async fn issue(server: &Server, body: Value) -> Value {
    let (status, key) = create_key(server, body).await;
    assert_eq!(status, 201, "{key}");
    key
}

pub fn token(key: &Value) -> &str {
    key["token"].as_str().unwrap()
}

/// `GET /v1/keys/{id}`.
pub async fn get_key(server: &Server, id: &str) -> Value {
    admin_get(server, &format!("/v1/keys/{id}")).await.1
}

pub async fn admin_get(server: &Server, path: &str) -> (u16, Value) {
    admin(&server.url(), reqwest::Method::GET, path, None).await
}

/// A form-encoded Stripe call through the proxy at `url` with a vault token and extra headers.
pub async fn stripe_form(
    url: &str,
    token: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = http()
        .post(format!("{url}/stripe{path}"))
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request).await
}

/// A charge of `amount_cents` US cents through the proxy.
pub async fn charge(server: &Server, token: &str, amount_cents: u64) -> (u16, Value) {
    stripe_form(
        &server.url(),
        token,
        "/v1/payment_intents",
        &format!("amount={amount_cents}&currency=usd"),
        &[],
    )
    .await
}

/// A dollar amount of the API (`spent_today_usd`, …) in micro-dollars.
pub fn micros(value: &Value) -> u64 {
    (value.as_f64().unwrap() * 1e6).round() as u64
}

/// `count` charges of $10 sent all at once, spread over the servers at `urls` in turn.
pub async fn charge_concurrently(urls: &[String], token: &str, count: usize) -> Vec<(u16, Value)> {
    let charges = (0..count).map(|i| {
        let (url, token) = (urls[i % urls.len()].clone(), token.to_owned());
        tokio::spawn(async move {
            stripe_form(
                &url,
                &token,
                "/v1/payment_intents",
                "amount=1000&currency=usd",
                &[],
            )
            .await
        })
    });
    futures_util::future::join_all(charges)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// A parsed raw HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Value,
}

/// Sends `request` as bytes on a fresh connection and reads the whole response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut bytes),
    )
    .await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    RawResponse {
        status,
        head: head.to_owned(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// A raw request with a method, target, extra header lines and body; closes the connection.
pub fn raw_request(method: &str, target: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut text =
        format!("{method} {target} HTTP/1.1\r\nhost: vault.test\r\nconnection: close\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if !body.is_empty() {
        text.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// A `vault-key-server` process and the URL it printed.
pub struct Process {
    pub child: tokio::process::Child,
    pub url: String,
}

/// Starts the real binary with `args` and waits for its "listening on" line.
pub async fn spawn_binary(
    args: &[&str],
    stderr: std::process::Stdio,
    env: &[(&str, &str)],
) -> Process {
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vault-key-server"));
    command
        .args(args)
        .env("VAULT_KEY_ADMIN_TOKEN", ADMIN)
        .env_remove("STRIPE_SECRET_KEY")
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the server binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the server announces itself in time")
        .unwrap()
        .expect("a line on stdout");
    let url = line.rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Process { child, url }
}

/// `DELETE /v1/keys/{id}` for an issued key; returns the status.
pub async fn revoke(server: &Server, key: &Value) -> u16 {
    let path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
    admin(&server.url(), reqwest::Method::DELETE, &path, None)
        .await
        .0
}

/// Waits until the server at `url` serves keys from memory (on PostgreSQL: once it hears other
/// servers' changes); returns its `/healthz` answer.
pub async fn key_cache_in_use(url: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (status, health) = send(http().get(format!("{url}/healthz"))).await;
        if status == 200 && health["key_cache"] == "in_use" {
            return health;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the key cache is not in use after 10 s: {status} {health}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The Prometheus text of `/metrics`.
pub async fn metrics_text(server: &Server) -> String {
    let response = http()
        .get(format!("{}/metrics", server.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    response.text().await.unwrap()
}

/// `GET /v1/keys/{id}` for an issued key.
pub async fn view(server: &Server, key: &Value) -> Value {
    get_key(server, key["id"].as_str().unwrap()).await
}

/// Waits (up to 5 s) until the server has recorded `count` refused calls of `key`: a refusal's
/// audit row is written off the response path.
pub async fn refusals_recorded(server: &Server, key: &Value, count: u64) {
    for _ in 0..100 {
        if view(server, key).await["refusals"].as_u64() >= Some(count) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{count} refusals of {} were never recorded", key["id"]);
}

/// The POSTs the servers' sandboxes executed.
pub fn charges_executed(servers: &[Server]) -> usize {
    servers
        .iter()
        .map(|s| {
            s.sandbox()
                .unwrap()
                .received()
                .iter()
                .filter(|r| r.method == "POST")
                .count()
        })
        .sum()
}

/// How the charges of a [`ChargeLoad`] were answered.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub ok: u64,
    pub unavailable: u64,
    pub other: Vec<(u16, Value)>,
}

/// $1 charges from `clients` concurrent clients, taking the servers at `urls` in turn, until
/// stopped: the load a fault test runs its fault under.
#[derive(Debug)]
pub struct ChargeLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Outcomes>>,
}

impl Outcomes {
    /// Counts one answer to a $1 charge.
    pub fn count(&mut self, status: u16, body: Value) {
        match status {
            200 => self.ok += 1,
            503 if body["code"] == "store_unavailable" => self.unavailable += 1,
            _ => self.other.push((status, body)),
        }
    }

    /// Adds the answers counted in `other`.
    pub fn merge(&mut self, other: Outcomes) {
        self.ok += other.ok;
        self.unavailable += other.unavailable;
        self.other.extend(other.other);
    }
}

impl ChargeLoad {
    pub fn start(urls: &[String], token: &str, clients: usize) -> ChargeLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|client| {
                let urls = urls.to_vec();
                let token = token.to_owned();
                let stop = std::sync::Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut outcomes = Outcomes::default();
                    let mut i = client;
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let (status, body) = stripe_form(
                            &urls[i % urls.len()],
                            &token,
                            "/v1/payment_intents",
                            "amount=100&currency=usd",
                            &[],
                        )
                        .await;
                        outcomes.count(status, body);
                        i += 1;
                    }
                    outcomes
                })
            })
            .collect();
        ChargeLoad { stop, clients }
    }

    /// Stops the load, and asserts that every answer was a success or `503 store_unavailable`.
    pub async fn stop(self) -> Outcomes {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut outcomes = Outcomes::default();
        for client in self.clients {
            outcomes.merge(client.await.unwrap());
        }
        assert!(outcomes.other.is_empty(), "{:?}", outcomes.other);
        outcomes
    }
}

/// Every $1 charge the vendors executed is counted once on `key`: settled, or still reserved
/// when the store failed before its settlement; nothing is settled that did not happen, and
/// nothing is held beyond the charges that may have been committed.
pub async fn assert_each_executed_charge_counted(
    servers: &[Server],
    key: &Value,
    outcomes: &Outcomes,
) {
    let executed = charges_executed(servers) as u64;
    let view = view(&servers[0], key).await;
    let (spent, reserved) = (
        micros(&view["spent_today_usd"]),
        micros(&view["reserved_usd"]),
    );
    eprintln!(
        "{} charges succeeded, {} were 503 store_unavailable; the vendor executed {executed} of $1; \
         the key counts spent {spent} µ$ + reserved {reserved} µ$",
        outcomes.ok, outcomes.unavailable
    );
    assert_eq!(
        executed, outcomes.ok,
        "every charge the vendor executed was answered 200"
    );
    assert!(spent <= executed * 1_000_000, "{view}");
    assert!(spent + reserved >= executed * 1_000_000, "{view}");
    assert!(
        spent + reserved <= (executed + outcomes.unavailable) * 1_000_000,
        "more held than executed or possibly committed: {view}"
    );
}

/// A key for a model vendor, `cap` dollars a day on `endpoints`.
pub fn model_key(vendor: &str, cap: f64, endpoints: &[&str]) -> Value {
    json!({
        "label": format!("{vendor}-test"), "vendor": vendor, "daily_usd_cap": cap,
        "expires_in": "5m", "allowed_endpoints": endpoints,
    })
}

/// A JSON call to a model vendor through the proxy, with the token where that vendor's SDK puts it.
pub fn model_call(
    server: &Server,
    vendor: &str,
    token: &str,
    path: &str,
    body: &Value,
    knobs: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let mut request = http()
        .post(format!("{}/{vendor}{path}", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    request = if vendor == "anthropic" {
        request
            .header("x-api-key", token)
            .header("anthropic-version", "2023-06-01")
    } else {
        request.bearer_auth(token)
    };
    for (name, value) in knobs {
        request = request.header(*name, *value);
    }
    request
}

/// A grant for Stripe payment intents under `run-7/`: `per_key` dollars a key, `total` for all
/// keys together, keys of at most 10 minutes, the grant itself for an hour.
pub async fn stripe_grant(server: &Server, per_key: f64, total: f64) -> (Value, GrantCredential) {
    let (status, grant) = admin(
        &server.url(),
        reqwest::Method::POST,
        "/v1/grants",
        Some(json!({
            "label_prefix": "run-7/",
            "vendor": "stripe",
            "max_key_usd_cap": per_key,
            "daily_usd_cap": total,
            "allowed_endpoints": ["/v1/payment_intents", "/v1/payment_intents/*"],
            "allowed_methods": ["GET", "POST"],
            "max_key_ttl": "10m",
            "expires_in": "1h",
        })),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    let credential = GrantCredential::parse(grant["grant"].as_str().unwrap()).unwrap();
    (grant, credential)
}

/// The caveats of a key the grant allows: $20 a day, payment intents, five minutes from `now`.
pub fn caveats_within(credential: &GrantCredential, now: time::OffsetDateTime) -> KeyCaveats {
    KeyCaveats {
        grant_id: credential.id().to_owned(),
        key_id: vault_key_server::token::generate_key_id(),
        label: "run-7/charge".to_owned(),
        vendor: "stripe".to_owned(),
        daily_cap_micros: 20_000_000,
        allowed_endpoints: vec!["/v1/payment_intents".parse().unwrap()],
        allowed_methods: None,
        issued_at: now.unix_timestamp(),
        expires_at: (now + time::Duration::minutes(5)).unix_timestamp(),
    }
}

/// Opens a connection and sends a request's head, announcing a body of `length` bytes.
pub async fn send_head(server: &Server, path: &str, token: &str, length: u128) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: vault.test\r\nconnection: close\r\n\
         authorization: Bearer {token}\r\n\
         content-type: application/x-www-form-urlencoded\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads the whole answer on `stream`: its status and JSON body.
pub async fn read_answer(mut stream: TcpStream) -> (u16, Value) {
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut bytes),
    )
    .await;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer: {text:?}"));
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}
