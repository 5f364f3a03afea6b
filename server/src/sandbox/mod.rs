//! `--sandbox`: built-in stand-ins for the vendors, speaking their wire formats, so that everything
//! runs on a machine with no network. The sandbox listens on its own loopback port and the proxy
//! reaches it over real HTTP, exactly as it would reach the vendor.
//!
//! It also keeps a log of every request it received, which is how tests prove that a refused call
//! never reached the vendor and that no vault token ever did.

mod models;
mod stripe;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
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
        let stripe = Arc::new(stripe::StripeSandbox::new());
        let app = Router::new().fallback(handle).with_state(Vendors {
            log: Arc::clone(&log),
            stripe: Arc::clone(&stripe),
        });
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

/// The stand-ins behind one port, by path prefix.
#[derive(Debug, Clone)]
struct Vendors {
    log: Arc<Log>,
    stripe: Arc<stripe::StripeSandbox>,
}

/// Logs every request, applies `x-sandbox-delay-ms`, and hands it to its vendor's stand-in.
async fn handle(State(vendors): State<Vendors>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    vendors.log.push(ReceivedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    if let Some(delay) = parts
        .headers
        .get("x-sandbox-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(delay.min(30_000))).await;
    }
    let path = parts.uri.path();
    if let Some(rest) = path.strip_prefix("/stripe/") {
        vendors.stripe.respond(&parts, &format!("/{rest}"), &body)
    } else if let Some(rest) = path.strip_prefix("/openai/") {
        models::answer(
            models::ModelVendor::OpenAi,
            &parts,
            &format!("/{rest}"),
            &body,
        )
        .await
    } else if let Some(rest) = path.strip_prefix("/anthropic/") {
        models::answer(
            models::ModelVendor::Anthropic,
            &parts,
            &format!("/{rest}"),
            &body,
        )
        .await
    } else {
        (http::StatusCode::NOT_FOUND, "no such sandbox vendor").into_response()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}
