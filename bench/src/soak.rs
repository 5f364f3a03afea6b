//! The soak: many concurrent annotated handlers against the sandbox's Stripe for a while, with
//! the resident memory of the process holding the server (and the load) sampled every second;
//! the sandbox runs in a process of its own. At the end every key must be revoked and
//! the spend the store recorded must equal what the sandbox accepted, to the micro-dollar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use vault_key::{vault_key, Client, VaultKey};
use vault_key_server::SyncMode;

use vault_key_server::vendor::Upstream;

use crate::stack::{start_server_with, ADMIN};
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

/// One agent task: a charge of `cents`, then a free read of what it created; returns the cents
/// the vendor accepted. Charges over the key's $50 cap are refused by the proxy and accept
/// nothing.
#[vault_key(
    vendor = "stripe",
    cap = 50,
    endpoints = ["/v1/payment_intents", "/v1/payment_intents/*"],
    ttl = "2m",
    client = soak_client
)]
async fn agent_task(key: &VaultKey, cents: u64) -> Result<u64, vault_key::Error> {
    let charged = key
        .post("/v1/payment_intents")
        .form(&[
            ("amount", cents.to_string()),
            ("currency", "usd".to_owned()),
        ])
        .send()
        .await?;
    if !charged.status().is_success() {
        return Ok(0);
    }
    let intent: Value = charged.json().await?;
    let id = intent["id"].as_str().unwrap_or_default();
    key.get(&format!("/v1/payment_intents/{id}"))
        .send()
        .await?
        .error_for_status()?;
    Ok(cents)
}

/// The hidden `--serve-sandbox` mode: the sandbox vendors, until the parent closes our stdin.
pub async fn serve_sandbox() -> std::process::ExitCode {
    let sandbox = match vault_key_server::Sandbox::start(([127, 0, 0, 1], 0).into()).await {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("the sandbox cannot start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("{}", sandbox.base_url("stripe"));
    // Ends when the parent goes away (its end of our stdin closes).
    tokio::task::spawn_blocking(|| std::io::Read::read(&mut std::io::stdin(), &mut [0; 1]))
        .await
        .ok();
    std::process::ExitCode::SUCCESS
}

/// The sandbox in a child process (this executable in `--serve-sandbox` mode), killed on drop.
struct SandboxProcess {
    child: std::process::Child,
    stripe_url: String,
}

impl SandboxProcess {
    fn start() -> Result<SandboxProcess, String> {
        use std::io::BufRead;
        let mut child =
            std::process::Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .arg("--serve-sandbox")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start the sandbox process: {e}"))?;
        let stdout = child.stdout.take().ok_or("the sandbox's stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(SandboxProcess {
            child,
            stripe_url: line.trim().to_owned(),
        })
    }
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    // The vendor runs in a process of its own: it keeps every object and request, and that
    // memory is not the server's.
    let vendor = SandboxProcess::start()?;
    let server = start_server_with(dir, SyncMode::Normal, |config| {
        for stripe in config.vendors.iter_mut().filter(|v| v.name == "stripe") {
            stripe.upstream = Upstream::Url(vendor.stripe_url.parse().expect("a loopback URL"));
        }
    });
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
