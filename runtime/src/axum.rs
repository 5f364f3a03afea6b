//! Axum integration: a tower layer that issues a key per request, the request-label extractor,
//! and `IntoResponse` for [`Error`].
//!
//! The hand-written path, for users who prefer a layer to the `#[vault_key]` attribute:
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use axum::{routing::post, Extension, Router};
//! use vault_key::axum::VaultKeyLayer;
//! use vault_key::{KeySpec, ResponseExt, VaultKey};
//!
//! async fn charge(Extension(key): Extension<Arc<VaultKey>>) -> Result<String, vault_key::Error> {
//!     let intent = key
//!         .post("/v1/payment_intents")
//!         .form(&[("amount", "1000"), ("currency", "usd")])
//!         .send()
//!         .await?
//!         .error_for_refusal() // cap exhausted → 402 spend_cap_exceeded
//!         .await?;
//!     Ok(intent.text().await?)
//! } // the request ends → the key is revoked
//!
//! let app: Router = Router::new().route("/charge", post(charge)).layer(VaultKeyLayer::new(
//!     KeySpec::new("stripe").cap_usd(500).endpoints(["/v1/payment_intents"]),
//! ));
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use serde_json::json;
use tower::{Layer, Service};

use crate::{default_client, scope, Client, Error, KeySpec, RunBudget, Usd};

type SpecFn = dyn Fn(&RequestLabels) -> KeySpec + Send + Sync;

/// A tower layer that issues a vault key for every request, inserts it as
/// `Extension<Arc<VaultKey>>` and as [`crate::current`], and lets it be revoked when the request
/// ends.
///
/// When issuance fails the request is answered with the error's response ([`Error`] is
/// `IntoResponse`), unless the layer is [`fail_open`](VaultKeyLayer::fail_open): then the request
/// goes on without a key, for handlers that take `Option<Extension<Arc<VaultKey>>>` and fall back
/// to a shared secret during a gradual rollout; [`fallbacks`](VaultKeyLayer::fallbacks) counts
/// those.
///
/// Settings apply to the layer they are called on, whatever other clones exist; clones share the
/// fallback counter.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use axum::{routing::post, Extension, Router};
/// use vault_key::{axum::VaultKeyLayer, KeySpec, VaultKey};
///
/// async fn charge(Extension(key): Extension<Arc<VaultKey>>) -> String {
///     key.id().to_owned()
/// } // the request is over: its key is revoked
///
/// # fn app() -> Result<Router, vault_key::Error> {
/// let app: Router = Router::new().route("/charge", post(charge)).layer(
///     VaultKeyLayer::new(KeySpec::new("stripe").cap_usd(500).endpoints(["/v1/payment_intents"]))
///         .client(vault_key::Client::from_env()?),
/// );
/// # Ok(app) }
/// ```
#[derive(Clone)]
pub struct VaultKeyLayer {
    spec: Arc<SpecFn>,
    client: Option<Client>,
    fail_open: bool,
    fallbacks: Arc<AtomicU64>,
    runs: Option<Arc<RunBudgets>>,
}

/// The run budgets a layer opened, one per agent run (`x-user-id`, `x-agent-run-id`), while they
/// last.
#[derive(Debug)]
struct RunBudgets {
    cap: Usd,
    lifetime: Duration,
    open: std::sync::Mutex<HashMap<AgentRun, (RunBudget, Instant)>>,
}

/// An agent run as the request names it: its user (`x-user-id`) and run (`x-agent-run-id`).
type AgentRun = (Option<String>, String);

impl RunBudgets {
    /// Most runs remembered at once: the one ending first is forgotten first (its keys stay
    /// capped by the proxy; a later request of that run would open a fresh budget).
    const MAX_OPEN: usize = 10_000;

    /// The budget of the request's run, opened at its first request (labelled `label`). Once
    /// its lifetime is over (or it was forgotten to make room), the run's next request opens a
    /// fresh one.
    fn of(&self, client: &Client, run: AgentRun, label: &str) -> Result<RunBudget, Error> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some((budget, until)) = open.get(&run) {
            if *until > now {
                return Ok(budget.clone());
            }
        }
        open.retain(|_, (_, until)| *until > now);
        if open.len() >= Self::MAX_OPEN {
            let first_to_end = open
                .iter()
                .min_by_key(|(_, (_, until))| *until)
                .map(|(run, _)| run.clone());
            if let Some(run) = first_to_end {
                open.remove(&run);
            }
        }
        let budget = client.open_run(label, self.cap, self.lifetime)?;
        open.insert(run, (budget.clone(), now + self.lifetime));
        Ok(budget)
    }
}

impl std::fmt::Debug for VaultKeyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeyLayer")
            .field("client", &self.client)
            .field("fail_open", &self.fail_open)
            .field("fallbacks", &self.fallbacks())
            .finish_non_exhaustive()
    }
}

impl VaultKeyLayer {
    /// Issues keys of this spec; the label becomes the request's labels ([`RequestLabels`]) when
    /// it carries any, and stays the spec's own otherwise.
    pub fn new(spec: KeySpec) -> VaultKeyLayer {
        VaultKeyLayer::with_spec(move |labels| match labels.label() {
            Some(label) => spec.clone().label(label),
            None => spec.clone(),
        })
    }

    /// Issues keys built per request from its labels.
    pub fn with_spec(
        spec: impl Fn(&RequestLabels) -> KeySpec + Send + Sync + 'static,
    ) -> VaultKeyLayer {
        VaultKeyLayer {
            spec: Arc::new(spec),
            client: None,
            fail_open: false,
            fallbacks: Arc::default(),
            runs: None,
        }
    }

    /// Gives each agent run (a request's `x-agent-run-id`, with its `x-user-id`) one budget of
    /// `cap` across all its requests' keys, for `lifetime` from its first request: the client
    /// mints every key of the run under the run (see [`crate::RunBudget`]), so the proxy holds
    /// the run's cap across them. Needs a client built from a grant; requests without a run id
    /// get keys as before.
    #[must_use]
    pub fn run_budget(mut self, cap: Usd, lifetime: Duration) -> VaultKeyLayer {
        self.runs = Some(Arc::new(RunBudgets {
            cap,
            lifetime,
            open: std::sync::Mutex::default(),
        }));
        self
    }

    /// Uses this client instead of the process default.
    #[must_use]
    pub fn client(mut self, client: Client) -> VaultKeyLayer {
        self.client = Some(client);
        self
    }

    /// Lets requests through without a key when issuance fails.
    #[must_use]
    pub fn fail_open(mut self) -> VaultKeyLayer {
        self.fail_open = true;
        self
    }

    /// How many requests went on without a key because issuance failed (fail-open only).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
}

impl<S> Layer<S> for VaultKeyLayer {
    type Service = VaultKeyService<S>;

    fn layer(&self, inner: S) -> VaultKeyService<S> {
        VaultKeyService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`VaultKeyLayer`].
#[derive(Clone)]
pub struct VaultKeyService<S> {
    inner: S,
    layer: VaultKeyLayer,
}

impl<S> std::fmt::Debug for VaultKeyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeyService")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S> Service<Request> for VaultKeyService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let labels = RequestLabels::from_headers(request.headers());
            let spec = (layer.spec)(&labels);
            let client = layer.client.clone().map_or_else(default_client, Ok);
            let run = match (&layer.runs, &client, &labels.agent_run_id) {
                (Some(runs), Ok(client), Some(run_id)) => Some(runs.of(
                    client,
                    (labels.user_id.clone(), run_id.clone()),
                    spec.label_str(),
                )),
                _ => None,
            }
            .transpose();
            // The same issuing path as the attribute's, inside the request's run if it has one.
            let issued = match run {
                Ok(Some(run)) => run.scope(crate::__private::issue(client, spec)).await,
                Ok(None) => crate::__private::issue(client, spec).await,
                Err(error) => Err(error),
            };
            match issued {
                Ok(key) => {
                    request.extensions_mut().insert(Arc::clone(&key));
                    scope(key, inner.call(request)).await
                }
                Err(error) if layer.fail_open => {
                    layer.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "no vault key for this request; continuing without one (fail open)");
                    inner.call(request).await
                }
                Err(error) => Ok(error.into_response()),
            }
        })
    }
}

/// Who a request is for, from the `x-user-id` and `x-agent-run-id` headers. Never rejects: a
/// missing or unusable header is `None`.
///
/// ```
/// use vault_key::axum::RequestLabels;
///
/// let labels = RequestLabels { user_id: Some("u-7".into()), agent_run_id: Some("run-42".into()) };
/// assert_eq!(labels.label().as_deref(), Some("user:u-7/run:run-42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLabels {
    /// `x-user-id`.
    pub user_id: Option<String>,
    /// `x-agent-run-id`.
    pub agent_run_id: Option<String>,
}

/// Longest label part taken from a header.
const MAX_LABEL_PART: usize = 64;

impl RequestLabels {
    /// Reads the labels from request headers.
    pub fn from_headers(headers: &HeaderMap) -> RequestLabels {
        let part = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= MAX_LABEL_PART
                        && v.bytes().all(|b| b.is_ascii_graphic())
                })
                .map(str::to_owned)
        };
        RequestLabels {
            user_id: part("x-user-id"),
            agent_run_id: part("x-agent-run-id"),
        }
    }

    /// `user:{user}/run:{run}` (either part alone when only one is known), or `None`. The user
    /// comes first so that revoking by the prefix `user:{user}/` stops every run of one user.
    pub fn label(&self) -> Option<String> {
        match (&self.user_id, &self.agent_run_id) {
            (Some(user), Some(run)) => Some(format!("user:{user}/run:{run}")),
            (Some(user), None) => Some(format!("user:{user}")),
            (None, Some(run)) => Some(format!("run:{run}")),
            (None, None) => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestLabels {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<RequestLabels, Infallible> {
        Ok(RequestLabels::from_headers(&parts.headers))
    }
}

impl IntoResponse for Error {
    /// Cap exhausted → `402 spend_cap_exceeded`; key service down → `503 vault_key_unavailable`;
    /// other refusals → `403` with the proxy's code; vendor trouble → `502`/`504`.
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, body) = match &self {
            Error::CapExhausted {
                cap,
                grant,
                spent,
                reserved,
                requested,
            } => (
                StatusCode::PAYMENT_REQUIRED,
                json!({"code": "spend_cap_exceeded", "message": message, "cap_usd": cap, "grant_id": grant, "spent_usd": spent, "reserved_usd": reserved, "requested_usd": requested}),
            ),
            Error::Unavailable(_) | Error::NotConfigured(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"code": "vault_key_unavailable", "message": message}),
            ),
            Error::IssueRefused { .. } | Error::InvalidSpec(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"code": "vault_key_issue_refused", "message": message}),
            ),
            Error::UpstreamUnavailable { code, .. } => {
                let status = if *code == vault_key_wire::ErrorCode::UpstreamTimeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                (status, json!({"code": code, "message": message}))
            }
            Error::UnmeterableRequest { .. } => (
                StatusCode::BAD_REQUEST,
                json!({"code": "unmeterable_request", "message": message}),
            ),
            Error::Transport(_) | Error::Refused { .. } => (
                StatusCode::BAD_GATEWAY,
                json!({"code": "vault_key_proxy_error", "message": message}),
            ),
            other => (
                StatusCode::FORBIDDEN,
                json!({"code": other.code(), "message": message}),
            ),
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_headers_and_ignore_junk() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", "u-7".parse().unwrap());
        headers.insert("x-agent-run-id", "has space".parse().unwrap());
        let labels = RequestLabels::from_headers(&headers);
        assert_eq!(labels.user_id.as_deref(), Some("u-7"));
        assert_eq!(labels.agent_run_id, None);
        assert_eq!(labels.label().as_deref(), Some("user:u-7"));
        assert_eq!(RequestLabels::default().label(), None);
    }

    #[tokio::test]
    async fn cap_exhausted_becomes_402_spend_cap_exceeded() {
        let error = Error::CapExhausted {
            cap: vault_key_wire::Usd::from_micros(500_000_000),
            grant: None,
            spent: vault_key_wire::Usd::from_micros(495_000_000),
            reserved: vault_key_wire::Usd::ZERO,
            requested: vault_key_wire::Usd::from_micros(10_000_000),
        };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "spend_cap_exceeded");
        assert_eq!(body["cap_usd"], json!(500));
        assert_eq!(body["requested_usd"], json!(10));
    }

    #[tokio::test]
    async fn issuance_unavailable_becomes_503() {
        let response = Error::Unavailable("connection refused".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
