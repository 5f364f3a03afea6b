//! The soak: many concurrent annotated handlers against the sandbox's Stripe for a while, with
//! the process's resident memory sampled every second. At the end every key must be revoked and
//! the spend the store recorded must equal what the sandbox accepted, to the micro-dollar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use vault_key::{vault_key, Client, VaultKey};
use vault_key_server::SyncMode;

use crate::stack::{start_server, ADMIN};
use crate::{http, Args, Report};

/// Handlers running at once.
const CONCURRENCY: usize = 32;

static SOAK_CLIENT: OnceLock<Client> = OnceLock::new();

fn soak_client() -> Client {
    SOAK_CLIENT
        .get()
        .expect("the soak sets its client before it starts")
        .clone()
}

/// One agent task: a free read, then a charge of `cents`; returns the cents the vendor accepted.
/// Charges over the key's $50 cap are refused by the proxy and accept nothing.
#[vault_key(
    vendor = "stripe",
    cap = 50,
    endpoints = ["/v1/payment_intents", "/v1/payment_intents/*"],
    ttl = "2m",
    client = soak_client
)]
async fn agent_task(key: &VaultKey, cents: u64) -> Result<u64, vault_key::Error> {
    key.get("/v1/payment_intents").send().await?;
    let charged = key
        .post("/v1/payment_intents")
        .form(&[
            ("amount", cents.to_string()),
            ("currency", "usd".to_owned()),
        ])
        .send()
        .await?;
    Ok(if charged.status().is_success() {
        cents
    } else {
        0
    })
}

/// Resident memory of this process (server, sandbox and load together), in bytes.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub async fn soak(report: &mut Report, args: &Args, dir: &std::path::Path) -> Result<(), String> {
    let seconds = if args.quick { 3 } else { 60 };
    println!(
        "\nsoak: {CONCURRENCY} annotated handlers for {seconds} s against the sandbox's Stripe"
    );
    let upstream = crate::stack::start_upstream();
    let server = start_server(upstream, dir, SyncMode::Normal);
    let client = Client::new(server.url.clone(), ADMIN).map_err(|e| e.to_string())?;
    SOAK_CLIENT
        .set(client.clone())
        .map_err(|_| "the soak runs once per process".to_owned())?;

    let accepted_cents = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..CONCURRENCY as u64)
        .map(|worker| {
            let (accepted, calls, failures) = (
                Arc::clone(&accepted_cents),
                Arc::clone(&calls),
                Arc::clone(&failures),
            );
            tokio::spawn(async move {
                let mut n = worker;
                while Instant::now() < deadline {
                    // $1 to $20, and one call in ten over the cap.
                    let cents = if n % 10 == 9 {
                        6_000
                    } else {
                        100 + (n * 37) % 1_900
                    };
                    match agent_task(cents).await {
                        Ok(got) => accepted.fetch_add(got, Ordering::Relaxed),
                        Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                    };
                    calls.fetch_add(1, Ordering::Relaxed);
                    n += CONCURRENCY as u64;
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(resident_bytes());
    }
    for worker in workers {
        worker.await.map_err(|e| e.to_string())?;
    }
    client.flush().await;

    let calls = calls.load(Ordering::Relaxed);
    let failures = failures.load(Ordering::Relaxed);
    let (active, recorded_micros) = count_keys(&server.url).await?;
    let accepted_micros = accepted_cents.load(Ordering::Relaxed) * 10_000;
    // Memory after the first quarter (allocators and pools warmed up) against the end.
    let warm = samples.get(samples.len() / 4).copied().unwrap_or(0).max(1);
    let end = samples.last().copied().unwrap_or(0);
    report.add(
        "soak: handler calls",
        calls as f64,
        "calls",
        format!("{:.0}/s; {failures} errors", calls as f64 / seconds as f64),
    );
    report.at_most(
        "soak: resident memory, end / after warm-up",
        end as f64 / warm as f64,
        "×",
        1.2,
        format!("{} → {} MiB, sampled every second", warm >> 20, end >> 20),
    );
    report.at_most(
        "soak: keys left active",
        active as f64,
        "keys",
        0.0,
        "after the client's revocations were flushed".to_owned(),
    );
    report.at_most(
        "soak: recorded spend minus accepted",
        (recorded_micros as f64 - accepted_micros as f64).abs(),
        "µ$",
        0.0,
        format!(
            "store ${:.2}, sandbox accepted ${:.2}",
            recorded_micros as f64 / 1e6,
            accepted_micros as f64 / 1e6
        ),
    );
    if failures > 0 || active > 0 || recorded_micros != accepted_micros {
        return Err(format!(
            "the soak lost track: {failures} failed calls, {active} keys left active, \
             {recorded_micros} µ$ recorded against {accepted_micros} µ$ accepted"
        ));
    }
    Ok(())
}

/// Active keys, and every key's spend today summed, paging through `GET /v1/keys`.
async fn count_keys(url: &str) -> Result<(u64, u64), String> {
    let http = http();
    let (mut active, mut spent) = (0, 0);
    let mut cursor: Option<String> = None;
    loop {
        let mut page = format!("{url}/v1/keys?limit=1000");
        if let Some(cursor) = &cursor {
            page.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = http
            .get(page)
            .bearer_auth(ADMIN)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        for key in page["keys"].as_array().ok_or("a page of keys")? {
            if key["status"] == "active" {
                active += 1;
            }
            spent += (key["spent_today_usd"].as_f64().unwrap_or(0.0) * 1e6).round() as u64;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok((active, spent)),
        }
    }
}
