//! `--sandbox`: built-in stand-ins for the vendors, speaking their wire formats, so that everything
//! runs on a machine with no network. The sandbox listens on its own loopback port and the proxy
//! reaches it over real HTTP, exactly as it would reach the vendor.
//!
//! It also keeps a log of every request it received, which is how tests prove that a refused call
//! never reached the vendor and that no vault token ever did.

mod stripe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the sandbox received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query string.
    pub query: Option<String>,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Log(Mutex<Vec<ReceivedRequest>>);

impl Log {
    fn push(&self, request: ReceivedRequest) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
    }
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    addr: SocketAddr,
    log: Arc<Log>,
    stripe: Arc<stripe::StripeSandbox>,
    task: JoinHandle<()>,
}

impl Sandbox {
    /// Starts the sandbox on `addr` (port 0 for any free port).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Log::default());
        let stripe = Arc::new(stripe::StripeSandbox::new(Arc::clone(&log)));
        let app = Router::new()
            .fallback(stripe::handle)
            .with_state(Arc::clone(&stripe));
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "sandbox stopped");
            }
        });
        tracing::info!(%addr, "sandbox vendors listening");
        Ok(Sandbox {
            addr,
            log,
            stripe,
            task,
        })
    }

    /// Base URL of a vendor's stand-in (`http://127.0.0.1:port/stripe`).
    pub fn base_url(&self, vendor: &str) -> String {
        format!("http://{}/{vendor}", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        self.log
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The money the stand-in Stripe moved so far (charges, captures, refunds, transfers,
    /// payouts, top-ups), per lower-case currency, in the currency's minor unit.
    pub fn stripe_money_moved(&self) -> BTreeMap<String, u64> {
        self.stripe.money_moved()
    }

    /// How many requests were received so far.
    pub fn received_count(&self) -> usize {
        self.log
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}
