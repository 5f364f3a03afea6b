//! The store failing under load: a full disk, a database locked by another process, a database
//! that turned read-only. Each is a clear `503 store_unavailable` while it lasts; service comes
//! back by itself; and nothing is half-written: every charge the vendor executed is counted once,
//! no reservation is left held that a write did not need, and no key exists that its caller was
//! told was not issued.
//!
//! The full-disk test mounts a small tmpfs and so needs root (CI runs as root); the PostgreSQL
//! tests need `VAULT_KEY_TEST_POSTGRES`. Without either they say they were skipped.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sqlx::Connection;
use vault_key_server::Server;

/// A tmpfs of `size` mounted on a directory of its own, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// The mount, or `None` (saying why) where this process may not mount.
    fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Tmpfs { dir }),
            Ok(output) => {
                eprintln!(
                    "skipped {test}: cannot mount a tmpfs (run as root): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("skipped {test}: cannot run mount: {error}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes zeros to `path` until the file system refuses more.
fn fill(path: &Path) -> PathBuf {
    let filler = path.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 << 10];
    while file
        .write_all(&block)
        .and_then(|()| file.sync_data())
        .is_ok()
    {}
    filler
}

fn load_key_body(label: &str) -> Value {
    json!({
        "label": label, "vendor": "stripe", "daily_usd_cap": 100_000, "expires_in": "10m",
        "allowed_endpoints": ["/v1/payment_intents"],
    })
}

/// A fault test's frame: a key charged $1 at a time by four clients while the fault comes and
/// goes, and the test's own charges, counted beside the load's.
struct FaultRun {
    url: String,
    key: Value,
    load: ChargeLoad,
    probes: Outcomes,
}

impl FaultRun {
    /// Issues the key and starts the load.
    async fn begin(server: &Server) -> FaultRun {
        let url = server.url();
        let key = issue(server, load_key_body("load")).await;
        let load = ChargeLoad::start(std::slice::from_ref(&url), token(&key), 4);
        tokio::time::sleep(Duration::from_millis(300)).await;
        FaultRun {
            url,
            key,
            load,
            probes: Outcomes::default(),
        }
    }

    /// Waits until the fault is felt: a charge answered `503 store_unavailable`.
    async fn first_refusal(&mut self, within: Duration) {
        first_refusal(&self.url, token(&self.key), within, &mut self.probes).await;
    }

    /// Once the fault is gone: waits for service, stops the load, and checks that the books
    /// are exact. Returns the key.
    async fn end(mut self, server: &Server) -> Value {
        service_resumes(&self.url, token(&self.key), &mut self.probes).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut outcomes = self.load.stop().await;
        assert!(
            outcomes.unavailable > 0,
            "the load met the fault: {outcomes:?}"
        );
        outcomes.merge(self.probes);
        settled_exactly(server, &self.key, &outcomes).await;
        self.key
    }
}

/// Waits until the load has met the fault (a charge answered 503), at most `within`; the
/// test's own charges are counted in `probes`.
async fn first_refusal(url: &str, token: &str, within: Duration, probes: &mut Outcomes) {
    let start = Instant::now();
    loop {
        let (status, body) = dollar_charge(url, token).await;
        let refused = status == 503;
        probes.count(status, body);
        assert!(probes.other.is_empty(), "{:?}", probes.other);
        if refused {
            return;
        }
        assert!(
            start.elapsed() < within,
            "no charge was refused {within:?} into the fault"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a charge succeeds again, at most 20 s; the test's own charges are counted in
/// `probes`.
async fn service_resumes(url: &str, token: &str, probes: &mut Outcomes) {
    let start = Instant::now();
    loop {
        let (status, body) = dollar_charge(url, token).await;
        probes.count(status, body);
        assert!(probes.other.is_empty(), "{:?}", probes.other);
        if status == 200 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no service 20 s after the fault ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dollar_charge(url: &str, token: &str) -> (u16, Value) {
    stripe_form(
        url,
        token,
        "/v1/payment_intents",
        "amount=100&currency=usd",
        &[],
    )
    .await
}

/// Issues keys while the fault lasts: each is issued or a clear 503. Returns the ids issued.
async fn issue_during_fault(server: &Server, attempts: usize) -> (Vec<String>, usize) {
    let mut issued = Vec::new();
    let mut refused = 0;
    for i in 0..attempts {
        let (status, body) = create_key(server, load_key_body(&format!("during-{i}"))).await;
        match status {
            201 => issued.push(body["id"].as_str().unwrap().to_owned()),
            503 => {
                assert_eq!(body["code"], "store_unavailable", "{body}");
                refused += 1;
            }
            _ => panic!("{status} {body}"),
        }
    }
    (issued, refused)
}

/// The keys the server holds are exactly `expected`: none was written whose issue failed.
async fn assert_keys_are(server: &Server, expected: &[String]) {
    let (status, page) = admin_get(server, "/v1/keys?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    let mut held: Vec<String> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = expected.to_vec();
    held.sort();
    expected.sort();
    assert_eq!(held, expected, "the keys held are the keys issued");
}

/// Waits until nothing is reserved on `key` (reservations committed after their caller gave
/// up are released by the proxy), at most 10 s.
async fn reservations_released(server: &Server, key: &Value) {
    let start = Instant::now();
    loop {
        let view = view(server, key).await;
        if micros(&view["reserved_usd"]) == 0 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a reservation is still held 10 s after the fault: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Once the store is back, every charge the vendor executed is spent on `key` exactly once and
/// nothing stays reserved: settlements that failed during the fault were retried, and
/// reservations committed after their caller was answered 503 were released.
async fn settled_exactly(server: &Server, key: &Value, outcomes: &Outcomes) {
    reservations_released(server, key).await;
    let servers = std::slice::from_ref(server);
    assert_each_executed_charge_counted(servers, key, outcomes).await;
    assert_eq!(
        micros(&view(server, key).await["spent_today_usd"]),
        charges_executed(servers) as u64 * 1_000_000
    );
}

async fn sqlite_integrity(path: &Path) {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let verdict: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(verdict, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_a_clear_503_and_nothing_is_half_written() {
    let test = "a_full_disk_is_a_clear_503_and_nothing_is_half_written";
    let Some(disk) = Tmpfs::mount(test, "16m") else {
        return;
    };
    let db = disk.path().join("vault.db");
    let server = start_with(|config| {
        config.database_url = format!("sqlite://{}", db.display());
    })
    .await;
    let mut run = FaultRun::begin(&server).await;

    let filler = fill(disk.path());
    run.first_refusal(Duration::from_secs(20)).await;
    let (issued, refused) = issue_during_fault(&server, 5).await;
    assert!(refused > 0, "a key was issued onto a full disk every time");
    std::fs::remove_file(filler).unwrap();

    let key = run.end(&server).await;
    let mut expected = issued;
    expected.push(key["id"].as_str().unwrap().to_owned());
    assert_keys_are(&server, &expected).await;
    server.shutdown().await;
    sqlite_integrity(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_locked_by_another_process_is_a_clear_503_and_leaks_no_reservation() {
    let db = TestDb::sqlite();
    let server = start_on(&db).await;
    let mut run = FaultRun::begin(&server).await;

    // An operator's shell holds the write lock past the proxy's 5 s store deadline.
    let path = db.url().strip_prefix("sqlite://").unwrap().to_owned();
    let mut operator = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut operator)
        .await
        .unwrap();
    let locked = Instant::now();
    let issuing = {
        let admin_url = server.url();
        tokio::spawn(async move {
            let (status, body) = send(
                http()
                    .post(format!("{admin_url}/v1/keys"))
                    .bearer_auth(ADMIN)
                    .json(&load_key_body("during-lock")),
            )
            .await;
            (status, body)
        })
    };
    run.first_refusal(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(6_500).saturating_sub(locked.elapsed())).await;
    sqlx::query("COMMIT").execute(&mut operator).await.unwrap();
    drop(operator);

    // The writes queued behind the lock were made once it went: those of reservations whose
    // callers had been answered 503 are released.
    let key = run.end(&server).await;
    let (status, body) = issuing.await.unwrap();
    let mut expected = vec![key["id"].as_str().unwrap().to_owned()];
    match status {
        201 => expected.push(body["id"].as_str().unwrap().to_owned()),
        503 => assert_eq!(body["code"], "store_unavailable", "{body}"),
        _ => panic!("{status} {body}"),
    }
    assert_keys_are(&server, &expected).await;
}

#[tokio::test]
async fn a_database_on_a_read_only_file_system_is_refused_at_start_with_the_reason() {
    let test = "a_database_on_a_read_only_file_system_is_refused_at_start_with_the_reason";
    let Some(disk) = Tmpfs::mount(test, "4m") else {
        return;
    };
    let db = disk.path().join("vault.db");
    let database_url = format!("sqlite://{}", db.display());
    let server = start_with(|config| config.database_url = database_url.clone()).await;
    issue(&server, load_key_body("before")).await;
    server.shutdown().await;
    // The server's connections close in the background after shutdown; until they have, the
    // file system is busy and cannot be made read-only.
    let start = Instant::now();
    while !std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(disk.path())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the file system stayed busy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut config = vault_key_server::ServerConfig::sandbox(secrecy::SecretString::from(ADMIN));
    config.database_url = database_url;
    let Err(error) = Server::start(config).await else {
        panic!("a server started on a database it cannot write");
    };
    let message = error.to_string();
    assert!(
        message.contains("Read-only file system") || message.contains("readonly"),
        "{message}"
    );
}

/// Ends every session of the test's database but the caller's, so that servers reconnect under
/// the database's new settings.
async fn reconnect_sessions(operator: &mut sqlx::PgConnection, name: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(operator)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_turned_read_only_is_a_clear_503_and_nothing_is_half_written() {
    let Some(db) =
        TestDb::postgres("a_postgres_turned_read_only_is_a_clear_503_and_nothing_is_half_written")
            .await
    else {
        return;
    };
    let server = start_on(&db).await;
    let mut run = FaultRun::begin(&server).await;

    // What a failover to a standby, or an operator's read-only switch, looks like to a server.
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    let mut operator =
        sqlx::PgConnection::connect(&std::env::var("VAULT_KEY_TEST_POSTGRES").unwrap())
            .await
            .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {name} SET default_transaction_read_only = on"
    ))
    .execute(&mut operator)
    .await
    .unwrap();
    reconnect_sessions(&mut operator, &name).await;
    run.first_refusal(Duration::from_secs(10)).await;
    let (issued, refused) = issue_during_fault(&server, 3).await;
    assert_eq!((issued.len(), refused), (0, 3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query(&format!(
        "ALTER DATABASE {name} RESET default_transaction_read_only"
    ))
    .execute(&mut operator)
    .await
    .unwrap();
    reconnect_sessions(&mut operator, &name).await;

    let key = run.end(&server).await;
    assert_keys_are(&server, &[key["id"].as_str().unwrap().to_owned()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_table_locked_by_an_operator_is_a_clear_503_and_leaks_no_reservation() {
    let Some(db) = TestDb::postgres(
        "a_postgres_table_locked_by_an_operator_is_a_clear_503_and_leaks_no_reservation",
    )
    .await
    else {
        return;
    };
    let server = start_on(&db).await;
    let mut run = FaultRun::begin(&server).await;

    let mut operator = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut lock = operator.begin().await.unwrap();
    sqlx::query("LOCK TABLE keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    run.first_refusal(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    lock.commit().await.unwrap();

    run.end(&server).await;
}
