//! The vault-key key service and enforcing proxy.
//!
//! One server, one port: the admin API that issues, inspects and revokes per-task vendor keys
//! (`/v1/keys…`), and the proxy (`/{vendor}/…`) that stands between agents and the vendor, checks
//! every call against its key, reserves its cost against the key's daily cap, and swaps the vault
//! token for the real vendor secret. See `DESIGN.md` for the wire contract.
//!
//! The server is a library so that tests and the quickstart can run it in-process:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use secrecy::SecretString;
//! use vault_key_server::{Server, ServerConfig};
//!
//! let server = Server::start(ServerConfig::sandbox(SecretString::from("admin-token-of-16+-chars"))).await?;
//! println!("issue keys at {}/v1/keys, proxy at {}/stripe", server.url(), server.url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod api;
mod app;
pub mod clock;
pub mod config;
mod dashboard;
mod error;
mod grants;
pub mod meter;
mod metrics;
mod policy;
pub mod present;
mod proxy;
pub mod sandbox;
pub mod store;
pub mod token;
pub mod vendor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{ConfigError, ConfigFile, MetricsAccess, ServerConfig};
pub use sandbox::{ReceivedRequest, Sandbox};
pub use store::{PoolSettings, SyncMode};

use app::{App, LiveVendor};
use store::Database;
use vendor::Upstream;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The port could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the upstream HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    sandbox: Option<Sandbox>,
    store: Database,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    reconciler: JoinHandle<()>,
}

impl Server {
    /// Opens the store, starts the sandbox if any vendor uses it, and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Server, StartError> {
        use secrecy::ExposeSecret;
        if config.admin_token.expose_secret().chars().count() < 16 {
            return Err(ConfigError::AdminToken.into());
        }
        config.check_timing()?;
        if let MetricsAccess::Token(token) = &config.metrics_access {
            if token.expose_secret().chars().count() < 16 {
                return Err(ConfigError::Invalid(
                    "the metrics token must be at least 16 characters".to_owned(),
                )
                .into());
            }
        }
        let mut store = Database::open(
            &config.database_url,
            config.sync,
            config.pool,
            config.migrate_on_start,
        )
        .await?;
        let needs_sandbox = config
            .vendors
            .iter()
            .any(|v| matches!(v.upstream, Upstream::Sandbox));
        let sandbox = if needs_sandbox {
            Some(Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0))).await?)
        } else {
            None
        };
        let mut vendors = BTreeMap::new();
        for vendor in config.vendors {
            let base_url = match (&vendor.upstream, &sandbox) {
                (Upstream::Url(url), _) => url.clone(),
                (Upstream::Sandbox, Some(sandbox)) => {
                    url::Url::parse(&sandbox.base_url(&vendor.name))
                        .map_err(|e| ConfigError::Invalid(format!("sandbox URL: {e}")))?
                }
                (Upstream::Sandbox, None) => {
                    unreachable!("the sandbox starts whenever a vendor uses it")
                }
            };
            vendors.insert(
                vendor.name.clone(),
                Arc::new(LiveVendor { vendor, base_url }),
            );
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .build()?;
        let app = Arc::new(App {
            store: store.serve(Arc::clone(&config.clock)),
            vendors,
            admin_token: app::admin_token_hash(&config.admin_token),
            metrics_gate: match &config.metrics_access {
                MetricsAccess::AdminToken => app::MetricsGate::Admin,
                MetricsAccess::Token(token) => {
                    app::MetricsGate::AdminOr(app::admin_token_hash(token))
                }
                MetricsAccess::Public => app::MetricsGate::Open,
            },
            metrics: metrics::Metrics::default(),
            http,
            max_key_ttl: config.max_key_ttl,
            upstream_timeout: config.upstream_timeout,
            body_timeout: config.body_timeout,
            max_body_bytes: config.max_body_bytes,
            max_header_bytes: config.max_header_bytes,
            clock: Arc::clone(&config.clock),
            sessions: dashboard::Sessions::default(),
        });
        let reconciler = tokio::spawn(reconcile_unknown_calls(
            Arc::clone(&app),
            config.reconcile_after,
            config.reconcile_every,
        ));
        let router = router(app);
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
        });
        tracing::info!(%addr, "vault-key server listening");
        Ok(Server {
            addr,
            sandbox,
            store,
            shutdown,
            task,
            reconciler,
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`: the admin API is under `/v1`, the proxy under `/{vendor}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The sandbox, when the server runs one.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// Stops accepting connections, lets requests in flight finish, and closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(Err(error)) => tracing::error!(%error, "server stopped with an error"),
            Err(error) => tracing::error!(%error, "server task failed"),
            Ok(Ok(())) => {}
        }
        self.reconciler.abort();
        self.store.close().await;
    }

    /// Serves until the process receives Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signalled(self) {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Settles, every `every`, the calls older than `after` whose outcome never became known (the
/// vendor never answered, a server stopped mid-call) to what they reserved: their reservation
/// already counted against the cap, and now the books close on it, with a record that it was
/// reconciled rather than known.
async fn reconcile_unknown_calls(
    app: Arc<App>,
    after: std::time::Duration,
    every: std::time::Duration,
) {
    use store::Store;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = app.clock.now();
        match app.store.reconcile_unknown(now - after, now).await {
            Ok(0) => {}
            Ok(count) => {
                app.metrics.reconciled(count);
                tracing::info!(count, horizon = ?after, "calls of unknown outcome settled to their reservations");
            }
            Err(error) => tracing::warn!(%error, "could not reconcile calls of unknown outcome"),
        }
    }
}

fn router(app: Arc<App>) -> Router {
    api::routes()
        .merge(grants::routes())
        .merge(dashboard::routes())
        .fallback(proxy::handle)
        .with_state(app)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
