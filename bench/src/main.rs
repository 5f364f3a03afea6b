//! `cargo run --release -p vault-key-bench [-- --quick]`: what vault-key costs per call, measured
//! side by side in one run on this machine, printed as a table and written to
//! `target/vault-key-bench.json`. Figures are ratios and differences within the run; the machine
//! is shared and noisy, so no figure here is asserted by a test.

mod load;
mod scale;
mod soak;
mod stack;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use clap::Parser;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use serde::Serialize;
use vault_key::{vault_key, Client, KeySpec, VaultKey};
use vault_key_server::SyncMode;

use load::{closed_loop, open_loop, sequential, Latencies};
use stack::{start_server, start_upstream, ADMIN, FREE, METERED};

#[derive(Debug, Parser)]
#[command(about = "What vault-key costs per call, side by side in one run")]
struct Args {
    /// A short run (seconds, not minutes) that checks the harness works; its figures are rough.
    #[arg(long)]
    quick: bool,
    /// Requests per second of the fixed-rate phases.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// Seconds per fixed-rate or saturation phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Only these parts (all when none is given).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Serve the sandbox vendors and print their address (the soak runs its vendor in a process
    /// of its own this way, so that the vendor's memory is not counted as the server's).
    #[arg(long, hide = true)]
    serve_sandbox: bool,
}

/// The parts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Proxy overhead: the free GET and metered POST.
    Proxy,
    /// A streamed chat completion's first byte.
    Stream,
    /// `#[vault_key]` overhead, issuance rate, revocation lag.
    Issuance,
    /// 1k against 1M keys stored; database size.
    Scale,
    /// The metered path with `--sync full`.
    Durability,
    /// A minute of concurrent annotated handlers: memory, leaked keys, spend accounted.
    Soak,
}

impl Args {
    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

/// One measured figure, with the target it is held to where there is one.
#[derive(Debug, Serialize)]
struct Row {
    measure: String,
    value: f64,
    unit: &'static str,
    /// `≤ x` or `≥ x`, as the performance issue states it.
    target: Option<String>,
    met: Option<bool>,
    note: String,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    machine: String,
    quick: bool,
    rate: u32,
    seconds: u64,
    rows: Vec<Row>,
}

impl Report {
    fn add(&mut self, measure: impl Into<String>, value: f64, unit: &'static str, note: String) {
        self.rows.push(Row {
            measure: measure.into(),
            value,
            unit,
            target: None,
            met: None,
            note,
        });
        let row = self.rows.last().expect("just pushed");
        println!(
            "  {:<52} {:>10.3} {:<6} {}",
            row.measure, row.value, row.unit, row.note
        );
    }

    fn at_most(&mut self, measure: &str, value: f64, unit: &'static str, limit: f64, note: String) {
        self.add(measure, value, unit, note);
        let row = self.rows.last_mut().expect("just pushed");
        row.target = Some(format!("≤ {limit}"));
        row.met = Some(value <= limit);
    }

    fn at_least(
        &mut self,
        measure: &str,
        value: f64,
        unit: &'static str,
        limit: f64,
        note: String,
    ) {
        self.add(measure, value, unit, note);
        let row = self.rows.last_mut().expect("just pushed");
        row.target = Some(format!("≥ {limit}"));
        row.met = Some(value >= limit);
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()
        .expect("an HTTP client")
}

/// A key for `vendor`'s `/v1/items` on the fixed upstream, for an hour.
async fn item_key(client: &Client, vendor: &str, cap_usd: u64) -> Result<VaultKey, String> {
    client
        .issue(
            &KeySpec::new(vendor)
                .cap_usd(cap_usd)
                .endpoints(["/v1/items"])
                .ttl(Duration::from_secs(3600)),
        )
        .await
        .map_err(|e| e.to_string())
}

/// Sends `request`, reads the whole answer, and expects `status`.
async fn expect(request: reqwest::RequestBuilder, status: u16) -> Result<(), String> {
    let response = request.send().await.map_err(|e| e.to_string())?;
    let got = response.status().as_u16();
    response.bytes().await.map_err(|e| e.to_string())?;
    if got == status {
        Ok(())
    } else {
        Err(format!("status {got}"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.serve_sandbox {
        return soak::serve_sandbox().await;
    }
    if args.quick {
        args.rate = args.rate.min(200);
        args.seconds = 1;
    }
    let dir = std::env::temp_dir().join(format!("vault-key-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("normal")).expect("a temporary directory");
    std::fs::create_dir_all(dir.join("full")).expect("a temporary directory");
    std::fs::create_dir_all(dir.join("scale")).expect("a temporary directory");
    std::fs::create_dir_all(dir.join("soak")).expect("a temporary directory");
    let result = run(&args, &dir).await;
    std::fs::remove_dir_all(&dir).ok();
    match result {
        Ok(report) => {
            let path = report_path();
            let json = serde_json::to_string_pretty(&report).expect("a report serializes");
            if let Err(error) = std::fs::write(&path, json) {
                eprintln!("cannot write {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
            println!("\nwritten to {}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("\nbench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn report_path() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    std::fs::create_dir_all(&target).ok();
    target.join("vault-key-bench.json")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

async fn run(args: &Args, dir: &std::path::Path) -> Result<Report, String> {
    let mut report = Report {
        machine: machine(),
        quick: args.quick,
        rate: args.rate,
        seconds: args.seconds,
        ..Report::default()
    };
    println!(
        "vault-key bench on {} ({} rps, {} s phases)\n",
        report.machine, args.rate, args.seconds
    );
    let upstream = start_upstream();
    let server = start_server(upstream, &dir.join("normal"), SyncMode::Normal);
    let client = Client::new(server.url.clone(), ADMIN).map_err(|e| e.to_string())?;
    vault_key::init(client.clone());
    let phase = Duration::from_secs(args.seconds);

    println!("proxy overhead (fixed upstream, same load direct and through the proxy)");
    let free_key = item_key(&client, FREE, 1).await?;
    let metered_key = item_key(&client, METERED, 1_000_000).await?;
    let direct_url = format!("http://{upstream}/v1/items");
    let mut metered_p99 = None;
    if args.runs(Part::Proxy) {
        proxy_overhead(
            &mut report,
            args,
            phase,
            "free GET",
            reqwest::Method::GET,
            &direct_url,
            &format!("{}/{FREE}/v1/items", server.url),
            free_key.token().expose_secret(),
        )
        .await;
        metered_p99 = Some(
            proxy_overhead(
                &mut report,
                args,
                phase,
                "metered POST",
                reqwest::Method::POST,
                &direct_url,
                &format!("{}/{METERED}/v1/items", server.url),
                metered_key.token().expose_secret(),
            )
            .await,
        );
    }
    if args.runs(Part::Stream) {
        streamed_first_byte(&mut report, args, &server, &client).await?;
    }
    if args.runs(Part::Issuance) {
        println!("\n#[vault_key] on an Axum handler");
        issuance(&mut report, args, phase, &client).await?;
    }
    drop(server);
    if args.runs(Part::Scale) {
        println!("\nscale: keys stored, and the database's size");
        scale::scale(&mut report, args, upstream, &dir.join("scale")).await?;
    }
    if args.runs(Part::Durability) {
        durability(&mut report, args, phase, upstream, dir, metered_p99).await?;
    }
    if args.runs(Part::Soak) {
        soak::soak(&mut report, args, &dir.join("soak")).await?;
    }
    Ok(report)
}

/// The metered path with `--sync full` at the fixed rate, against one fsync and the default's
/// p99 (`metered_p99`, measured in the same run where the proxy part ran).
async fn durability(
    report: &mut Report,
    args: &Args,
    phase: Duration,
    upstream: std::net::SocketAddr,
    dir: &std::path::Path,
    metered_p99: Option<f64>,
) -> Result<(), String> {
    println!("\ndurability: the metered path with --sync full");
    let full = start_server(upstream, &dir.join("full"), SyncMode::Full);
    let full_client = Client::new(full.url.clone(), ADMIN).map_err(|e| e.to_string())?;
    let full_key = item_key(&full_client, METERED, 1_000_000).await?;
    let http = http();
    let url = format!("{}/{METERED}/v1/items", full.url);
    let token = full_key.token().expose_secret().to_owned();
    let full_latencies = open_loop(args.rate, phase, |_| {
        expect(http.post(&url).bearer_auth(&token), 200)
    })
    .await;
    let fsync = fsync_ms(dir, if args.quick { 20 } else { 200 });
    report.add("one fsync of this disk, p50", fsync, "ms", String::new());
    match metered_p99 {
        Some(metered_p99) => report.at_most(
            "metered p99 with --sync full",
            full_latencies.ms(0.99),
            "ms",
            fsync + 0.2 + metered_p99,
            format!(
                "default sync p99 {metered_p99:.3} ms; {} errors",
                full_latencies.errors
            ),
        ),
        None => report.add(
            "metered p99 with --sync full",
            full_latencies.ms(0.99),
            "ms",
            format!("{} errors", full_latencies.errors),
        ),
    }
    full_key.revoke().await.map_err(|e| e.to_string())
}

/// Open loop at the fixed rate, then saturation, direct and through the proxy. Returns the
/// proxy's p99 at the fixed rate.
#[allow(clippy::too_many_arguments)]
async fn proxy_overhead(
    report: &mut Report,
    args: &Args,
    phase: Duration,
    route: &str,
    method: reqwest::Method,
    direct_url: &str,
    proxy_url: &str,
    token: &str,
) -> f64 {
    let http = http();
    let call = |url: &str, bearer: Option<&str>| {
        let mut request = http.request(method.clone(), url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        request
    };
    let direct = open_loop(args.rate, phase, |_| expect(call(direct_url, None), 200)).await;
    let proxied = open_loop(args.rate, phase, |_| {
        expect(call(proxy_url, Some(token)), 200)
    })
    .await;
    let note = |l: &Latencies| {
        format!(
            "p50 {:.3} / p99 {:.3} ms; sender late p99 {:.3} ms; {} errors",
            l.ms(0.5),
            l.ms(0.99),
            l.lateness.value_at_quantile(0.99) as f64 / 1000.0,
            l.errors
        )
    };
    report.add(
        format!("{route}: direct at {} rps", args.rate),
        direct.ms(0.99),
        "ms p99",
        note(&direct),
    );
    report.add(
        format!("{route}: proxied at {} rps", args.rate),
        proxied.ms(0.99),
        "ms p99",
        note(&proxied),
    );
    report.add(
        format!("{route}: added p50"),
        proxied.ms(0.5) - direct.ms(0.5),
        "ms",
        String::new(),
    );
    report.at_most(
        &format!("{route}: added p99"),
        proxied.ms(0.99) - direct.ms(0.99),
        "ms",
        0.3,
        String::new(),
    );
    let concurrency = 32;
    let direct_client = http.clone();
    let direct_url = direct_url.to_owned();
    let method_direct = method.clone();
    let (direct_rps, direct_failed) = closed_loop(concurrency, phase, move |_| {
        expect(
            direct_client.request(method_direct.clone(), &direct_url),
            200,
        )
    })
    .await;
    let proxy_client = http.clone();
    let proxy_url = proxy_url.to_owned();
    let token = token.to_owned();
    let (proxy_rps, proxy_failed) = closed_loop(concurrency, phase, move |_| {
        expect(
            proxy_client
                .request(method.clone(), &proxy_url)
                .bearer_auth(&token),
            200,
        )
    })
    .await;
    report.at_least(
        &format!("{route}: saturation throughput, proxy/direct"),
        proxy_rps / direct_rps,
        "×",
        0.5,
        format!(
            "{proxy_rps:.0} vs {direct_rps:.0} rps at {concurrency} in flight; {} errors",
            direct_failed + proxy_failed
        ),
    );
    proxied.ms(0.99)
}

/// Time to the first byte of a streamed chat completion, from the sandbox directly and through
/// the proxy (which reads usage from the stream as it passes, and must not hold it back).
async fn streamed_first_byte(
    report: &mut Report,
    args: &Args,
    server: &stack::RunningServer,
    client: &Client,
) -> Result<(), String> {
    let key = client
        .issue(
            &KeySpec::new("openai")
                .cap_usd(100)
                .endpoints(["/v1/chat/completions"])
                .ttl(Duration::from_secs(3600)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let http = http();
    let body = serde_json::json!({
        "model": "gpt-4o-mini", "stream": true, "max_tokens": 8,
        "messages": [{"role": "user", "content": "benchmark"}],
    })
    .to_string();
    let first_byte = |url: String, token: String| {
        let request = http
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("x-sandbox-chunk-delay-ms", "5")
            .body(body.clone());
        async move {
            let sent = Instant::now();
            let response = request.send().await.map_err(|e| e.to_string())?;
            let mut stream = response.bytes_stream();
            stream
                .next()
                .await
                .ok_or("an empty stream")?
                .map_err(|e| e.to_string())?;
            let first = sent.elapsed();
            while let Some(chunk) = stream.next().await {
                chunk.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(first)
        }
    };
    let count = if args.quick { 20 } else { 300 };
    let mut direct = Latencies::new();
    let mut proxied = Latencies::new();
    for _ in 0..count {
        direct.record(
            first_byte(
                format!("{}/v1/chat/completions", server.sandbox_openai),
                vault_key_server::vendor::SANDBOX_SECRET.to_owned(),
            )
            .await,
        );
        proxied.record(
            first_byte(
                format!("{}/openai/v1/chat/completions", server.url),
                key.token().expose_secret().to_owned(),
            )
            .await,
        );
    }
    report.add(
        "streamed chat: first byte, added p50",
        proxied.ms(0.5) - direct.ms(0.5),
        "ms",
        format!(
            "direct {:.3}, proxied {:.3} ms",
            direct.ms(0.5),
            proxied.ms(0.5)
        ),
    );
    report.add(
        "streamed chat: first byte, added p99",
        proxied.ms(0.99) - direct.ms(0.99),
        "ms",
        format!(
            "direct {:.3}, proxied {:.3} ms; {} errors",
            direct.ms(0.99),
            proxied.ms(0.99),
            direct.errors + proxied.errors
        ),
    );
    key.revoke().await.map_err(|e| e.to_string())
}

async fn plain() -> &'static str {
    "done"
}

#[vault_key(vendor = "free", cap = 1, endpoints = ["/v1/items"], ttl = "1m")]
async fn keyed(key: &VaultKey) -> Result<&'static str, vault_key::Error> {
    let _ = key.id();
    Ok("done")
}

/// The backend's client when it holds a grant instead of the admin token.
static GRANT_CLIENT: std::sync::OnceLock<Client> = std::sync::OnceLock::new();

fn grant_client() -> Client {
    GRANT_CLIENT
        .get()
        .expect("set before the first call")
        .clone()
}

/// As `keyed`, with its key minted in-process from a grant.
#[vault_key(vendor = "free", cap = 1, endpoints = ["/v1/items"], ttl = "1m", label = "bench/minted", client = grant_client)]
async fn minted(key: &VaultKey) -> Result<&'static str, vault_key::Error> {
    let _ = key.id();
    Ok("done")
}

/// A grant for the `minted` handler's keys, and a client that mints from it.
async fn grant_for_bench(client: &Client) -> Result<Client, String> {
    let grant: vault_key_wire::IssuedGrant = http()
        .post(
            client
                .api_url()
                .join("v1/grants")
                .map_err(|e| e.to_string())?,
        )
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({
            "label_prefix": "bench/", "vendor": FREE, "max_key_usd_cap": 1, "daily_usd_cap": 1,
            "allowed_endpoints": ["/v1/items"], "max_key_ttl": "1m", "expires_in": "1h",
        }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Client::grant_builder(client.api_url().as_str(), grant.grant)
        .build()
        .map_err(|e| e.to_string())
}

/// Answers with the key's token, so that the benchmark can watch for its revocation.
#[vault_key(vendor = "free", cap = 1, endpoints = ["/v1/items"], ttl = "1m")]
async fn leaked(key: &VaultKey) -> Result<String, vault_key::Error> {
    Ok(key.token().expose_secret().to_owned())
}

async fn issuance(
    report: &mut Report,
    args: &Args,
    phase: Duration,
    client: &Client,
) -> Result<(), String> {
    GRANT_CLIENT
        .set(grant_for_bench(client).await?)
        .map_err(|_| "the grant client was set twice".to_owned())?;
    let app = Router::new()
        .route("/plain", get(plain))
        .route("/keyed", get(keyed))
        .route("/minted", get(minted))
        .route("/leaked", get(leaked));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let backend = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = http();
    let count = if args.quick { 50 } else { 2_000 };
    let plain = sequential(count, |_| {
        expect(http.get(format!("http://{backend}/plain")), 200)
    })
    .await;
    let keyed = sequential(count, |_| {
        expect(http.get(format!("http://{backend}/keyed")), 200)
    })
    .await;
    // The grant client's one request (where each vendor's token goes) is made before timing.
    expect(http.get(format!("http://{backend}/minted")), 200).await?;
    let minted = sequential(count, |_| {
        expect(http.get(format!("http://{backend}/minted")), 200)
    })
    .await;
    let errors = plain.errors + keyed.errors + minted.errors;
    report.at_most(
        "added latency per call, minted from a grant, p50",
        (minted.ms(0.5) - plain.ms(0.5)) * 1000.0,
        "µs",
        20.0,
        format!(
            "with {:.3}, issued {:.3}, without {:.3} ms",
            minted.ms(0.5),
            keyed.ms(0.5),
            plain.ms(0.5)
        ),
    );
    report.add(
        "added latency per call, minted from a grant, p99",
        (minted.ms(0.99) - plain.ms(0.99)) * 1000.0,
        "µs",
        format!(
            "with {:.3}, without {:.3} ms",
            minted.ms(0.99),
            plain.ms(0.99)
        ),
    );
    report.at_most(
        "added latency per call, p50",
        keyed.ms(0.5) - plain.ms(0.5),
        "ms",
        0.5,
        format!("with {:.3}, without {:.3} ms", keyed.ms(0.5), plain.ms(0.5)),
    );
    report.at_most(
        "added latency per call, p99",
        keyed.ms(0.99) - plain.ms(0.99),
        "ms",
        2.0,
        format!(
            "with {:.3}, without {:.3} ms; {errors} errors",
            keyed.ms(0.99),
            plain.ms(0.99)
        ),
    );

    let issuer = client.clone();
    let (pairs, failed) = closed_loop(16, phase, move |_| {
        let client = issuer.clone();
        async move {
            let key = client
                .issue(
                    &KeySpec::new(FREE)
                        .cap_usd(1)
                        .endpoints(["/v1/items"])
                        .ttl(Duration::from_secs(60)),
                )
                .await
                .map_err(|e| e.to_string())?;
            key.revoke().await.map_err(|e| e.to_string())
        }
    })
    .await;
    report.at_least(
        "keys issued and revoked per second",
        pairs,
        "/s",
        5_000.0,
        format!("16 in flight; {failed} errors"),
    );

    // Revocation lag: from the annotated function's answer to the proxy refusing its key.
    let proxy = format!(
        "{}/{FREE}/v1/items",
        client.proxy_url().as_str().trim_end_matches('/')
    );
    let samples = if args.quick { 10 } else { 200 };
    let mut lag = Latencies::new();
    for _ in 0..samples {
        let token = http
            .get(format!("http://{backend}/leaked"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let returned = Instant::now();
        let refused = async {
            loop {
                let status = http
                    .get(&proxy)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .status();
                if status == reqwest::StatusCode::UNAUTHORIZED {
                    return Ok::<_, String>(returned.elapsed());
                }
            }
        };
        lag.record(
            tokio::time::timeout(Duration::from_secs(10), refused)
                .await
                .map_err(|_| "a key was still served 10 s after its function returned".to_owned())
                .and_then(|r| r),
        );
    }
    report.add("revocation lag, p50", lag.ms(0.5), "ms", String::new());
    report.at_most(
        "revocation lag, p99",
        lag.ms(0.99),
        "ms",
        50.0,
        format!("{samples} keys; {} errors", lag.errors),
    );
    Ok(())
}

/// The median time to write and fsync 4 KiB on the disk the databases are on.
fn fsync_ms(dir: &std::path::Path, count: u32) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("a probe file");
    let mut times: Vec<f64> = (0..count)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&[0u8; 4096]).expect("a write");
            file.sync_data().expect("an fsync");
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
