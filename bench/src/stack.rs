//! What the benchmark runs against: a fixed upstream answering small JSON, and vault-key servers,
//! each on a runtime of its own (as separate processes would be) on this machine's cores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;

use axum::routing::get;
use axum::{Json, Router};
use secrecy::SecretString;
use tokio::sync::oneshot;
use vault_key_server::meter::Meter;
use vault_key_server::vendor::{rest_methods, ErrorEnvelope, Upstream, Vendor, VendorAuth};
use vault_key_server::{Server, ServerConfig, SyncMode};
use vault_key_wire::Usd;

/// The admin token of the benchmark's servers.
pub const ADMIN: &str = "bench-admin-token-0123456789";
/// A vendor whose calls are free: auth, policy and the audit row, no reservation.
pub const FREE: &str = "free";
/// A vendor whose calls cost a flat amount: a durable reservation and settlement per call.
pub const METERED: &str = "metered";
/// What one metered call costs.
pub const METERED_COST_MICROS: u64 = 1_000;

/// The fixed upstream: `GET` and `POST /v1/items` answer the same small JSON at once.
pub fn start_upstream() -> SocketAddr {
    let (ready, addr) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("upstream".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let answer = || async {
                    Json(serde_json::json!({"id": "item_1", "object": "item", "amount": 100}))
                };
                let app = Router::new().route("/v1/items", get(answer).post(answer));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a port");
                ready.send(listener.local_addr().expect("an address")).ok();
                axum::serve(listener, app)
                    .await
                    .expect("the upstream serves");
            });
        })
        .expect("a thread");
    addr.recv().expect("the upstream starts")
}

/// A vault-key server running on its own two-thread runtime; stopped when dropped.
#[derive(Debug)]
pub struct RunningServer {
    /// Its base URL.
    pub url: String,
    /// The sandbox's OpenAI base URL, for direct calls.
    pub sandbox_openai: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

/// Starts a server with a file database in `dir` (durable metering, as in production), the
/// sandbox vendors, and the two fixed-upstream vendors.
pub fn start_server(upstream: SocketAddr, dir: &Path, sync: SyncMode) -> RunningServer {
    start_server_with(dir, sync, |config| {
        add_fixed_vendors(config, upstream);
    })
}

/// The free and metered vendors, both answered by the fixed upstream.
fn add_fixed_vendors(config: &mut ServerConfig, upstream: SocketAddr) {
    for (name, cost) in [(FREE, 0), (METERED, METERED_COST_MICROS)] {
        config.vendors.push(Vendor {
            name: name.to_owned(),
            upstream: Upstream::Url(
                format!("http://{upstream}")
                    .parse()
                    .expect("a loopback URL"),
            ),
            secret: SecretString::from("upstream-secret"),
            auth: VendorAuth::Bearer,
            meter: Meter::Flat(Usd::from_micros(cost)),
            methods: rest_methods(),
            free_routes: Vec::new(),
            envelope: ErrorEnvelope::Plain,
        });
    }
}

/// A sandbox server on a SQLite file in `dir`, configured further by `adjust`, on a thread and
/// runtime of its own.
pub fn start_server_with(
    dir: &Path,
    sync: SyncMode,
    adjust: impl FnOnce(&mut ServerConfig),
) -> RunningServer {
    let database: PathBuf = dir.join("vault-key.db");
    let mut config = ServerConfig::sandbox(SecretString::from(ADMIN));
    config.database_url = format!("sqlite://{}", database.display());
    config.sync = sync;
    adjust(&mut config);
    let (ready, started) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("vault-key-server".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let server = Server::start(config).await.expect("the server starts");
                let sandbox = server
                    .sandbox()
                    .expect("sandbox vendors are configured")
                    .base_url("openai");
                ready.send((server.url(), sandbox)).ok();
                stopped.await.ok();
                server.shutdown().await;
            });
        })
        .expect("a thread");
    let (url, sandbox_openai) = started.recv().expect("the server starts");
    RunningServer {
        url,
        sandbox_openai,
        stop: Some(stop),
        thread: Some(thread),
    }
}
