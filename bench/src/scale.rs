//! Scale: the proxy with few keys stored against many, and what the database holds per key and
//! per call.
//!
//! The many keys are written straight into the server's SQLite file (issuing a million through
//! the API would take most of the run): rows shaped as the server writes them, with random token
//! hashes, while the server runs.

use std::path::Path;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use vault_key::Client;
use vault_key_server::SyncMode;

use crate::load::open_loop;
use crate::stack::{start_server, ADMIN, FREE, METERED};
use crate::{expect, http, item_key, Args, Report};

/// The database's logical size in bytes (committed pages, whether in the file or the WAL).
async fn database_bytes(db: &mut SqliteConnection) -> Result<i64, String> {
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut *db)
        .await
        .map_err(|e| e.to_string())?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut *db)
        .await
        .map_err(|e| e.to_string())?;
    Ok(pages * size)
}

/// Stores `count` more keys, shaped as issued ones (an hour to live, a label in runs of 50).
async fn store_keys(db: &mut SqliteConnection, count: u64) -> Result<(), String> {
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_millis(),
    )
    .map_err(|e| e.to_string())?;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO keys (id, token_hash, label, vendor, daily_cap_micros, allowed_endpoints, \
         allowed_methods, created_ms, expires_ms) \
         SELECT 'vk_' || lower(hex(randomblob(10))), randomblob(32), \
         'bench/run-' || (i / 50) || '/task-' || (i % 50), 'free', 1000000, '[\"/v1/items\"]', \
         NULL, ?2, ?2 + 3600000 FROM n",
    )
    .bind(i64::try_from(count).map_err(|e| e.to_string())?)
    .bind(now_ms)
    .execute(&mut *db)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Proxy p99 (free GET and metered POST) at the fixed rate with `small` and then `large` keys
/// stored, and the database's bytes per key and per metered call.
pub async fn scale(
    report: &mut Report,
    args: &Args,
    upstream: std::net::SocketAddr,
    dir: &Path,
) -> Result<(), String> {
    let (small, large) = if args.quick {
        (1_000, 20_000)
    } else {
        (1_000, 1_000_000)
    };
    let server = start_server(upstream, dir, SyncMode::Normal);
    let client = Client::new(server.url.clone(), ADMIN).map_err(|e| e.to_string())?;
    let mut db = SqliteConnectOptions::new()
        .filename(dir.join("vault-key.db"))
        .busy_timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let phase = Duration::from_secs(args.seconds);
    let mut p99 = Vec::new();
    let mut stored = 0;
    for target in [small, large] {
        let before = database_bytes(&mut db).await?;
        store_keys(&mut db, target - stored).await?;
        let per_key = (database_bytes(&mut db).await? - before) as f64 / (target - stored) as f64;
        stored = target;
        let mut row = Vec::new();
        for (vendor, method) in [
            (FREE, reqwest::Method::GET),
            (METERED, reqwest::Method::POST),
        ] {
            let key = item_key(&client, vendor, 1_000_000).await?;
            let http = http();
            let url = format!("{}/{vendor}/v1/items", server.url);
            let token = key.token().expose_secret().to_owned();
            let before = database_bytes(&mut db).await?;
            let latencies = open_loop(args.rate, phase, |_| {
                expect(http.request(method.clone(), &url).bearer_auth(&token), 200)
            })
            .await;
            let calls = latencies.count();
            if vendor == METERED && calls > 0 {
                let per_call = (database_bytes(&mut db).await? - before) as f64 / calls as f64;
                report.add(
                    format!("database bytes per metered call ({target} keys)"),
                    per_call,
                    "B",
                    format!("{calls} calls"),
                );
            }
            row.push((vendor, latencies.ms(0.99), latencies.errors));
            key.revoke().await.map_err(|e| e.to_string())?;
        }
        report.add(
            format!("database bytes per key ({target} keys)"),
            per_key,
            "B",
            String::new(),
        );
        for (vendor, value, errors) in &row {
            report.add(
                format!("{vendor}: proxied p99 with {target} keys stored"),
                *value,
                "ms",
                format!("{errors} errors"),
            );
        }
        p99.push(row);
    }
    for (i, vendor) in [FREE, METERED].iter().enumerate() {
        report.at_most(
            &format!("{vendor}: p99 with {large} keys / with {small}"),
            p99[1][i].1 / p99[0][i].1,
            "×",
            1.2,
            String::new(),
        );
    }
    db.close().await.ok();
    Ok(())
}
