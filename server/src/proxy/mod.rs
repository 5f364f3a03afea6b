//! The enforcing proxy: `ANY /{vendor}/{upstream path}`.
//!
//! Checks run in the order of the design's table, each refusing with its own code before anything
//! reaches the vendor: token → revoked/expired → vendor → method the vendor uses → canonical path
//! → endpoint allowlist → method the key allows → body size → cost → cap. Only then is the call
//! reserved (durably), forwarded with the real secret, and settled from the response.

mod request;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use time::OffsetDateTime;
use vault_key_wire::{EndpointPattern, ErrorCode, Usd};

use crate::app::{App, LiveVendor};
use crate::error::ApiError;
use crate::meter::{Estimate, MeteredRequest};
use crate::store::{DeniedCall, KeyRecord, NewCall, OpenedCall};
use crate::token::TokenHash;

/// Longest path kept in the audit trail of a refused call.
const MAX_AUDIT_PATH: usize = 512;

/// A refusal, and the key it is charged to when the key is known.
struct Refusal {
    error: ApiError,
    key_id: Option<String>,
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Refusal {
        Refusal {
            error,
            key_id: None,
        }
    }
}

/// The proxy route.
pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let arrived = OffsetDateTime::now_utc();
    let (parts, body) = request.into_parts();
    match proxy(&app, &parts, body, arrived).await {
        Ok(response) => response,
        Err(Refusal { error, key_id }) => {
            let code = error.code();
            app.metrics.denied(code);
            tracing::info!(key_id = key_id.as_deref().unwrap_or("-"), method = %parts.method, code = %code, "proxied call refused");
            if let Some(key_id) = key_id {
                let path: String = parts.uri.path().chars().take(MAX_AUDIT_PATH).collect();
                let denial = DeniedCall {
                    key_id,
                    at: arrived,
                    method: parts.method.to_string(),
                    path,
                    code,
                };
                let store = Arc::clone(&app.store);
                // Off the response path: the audit row is not worth the client's wait.
                tokio::spawn(async move {
                    if let Err(error) = store.record_denial(&denial).await {
                        tracing::warn!(%error, "could not record a refused call");
                    }
                });
            }
            error.into_response()
        }
    }
}

async fn proxy(
    app: &Arc<App>,
    parts: &Parts,
    body: Body,
    arrived: OffsetDateTime,
) -> Result<Response, Refusal> {
    request::check_sizes(parts, app.max_header_bytes)?;
    let (vendor_name, upstream_path) = request::split_vendor(parts.uri.path());
    if vendor_name == "v1" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such admin route",
        )
        .into());
    }
    let vendor = app.vendors.get(vendor_name);
    let token = request::presented_token(&parts.headers, vendor.map(|v| &v.vendor.auth))?;
    let (key, spend) = app
        .store
        .key_by_token(
            &TokenHash::of(secrecy::ExposeSecret::expose_secret(&token)),
            crate::store::utc_day(arrived),
        )
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidKey,
                "unknown vault token",
            )
        })?;
    drop(token);
    let refuse = |status: StatusCode, code: ErrorCode, message: String| Refusal {
        error: ApiError::new(status, code, message),
        key_id: Some(key.id.clone()),
    };
    if key.revoked_at.is_some() {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::KeyRevoked,
            format!("key {} was revoked", key.id),
        ));
    }
    if arrived >= key.expires_at {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::KeyExpired,
            format!("key {} has expired", key.id),
        ));
    }
    let vendor = vendor
        .filter(|v| v.vendor.name == key.vendor)
        .ok_or_else(|| {
            refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::VendorMismatch,
                format!(
                    "key {} was issued for {}; call /{}/…",
                    key.id, key.vendor, key.vendor
                ),
            )
        })?;
    if !vendor.vendor.methods.contains(&parts.method) {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            format!("{}'s API does not use this method", vendor.vendor.name),
        ));
    }
    let path = request::checked_upstream_path(parts, upstream_path).map_err(|error| Refusal {
        error,
        key_id: Some(key.id.clone()),
    })?;
    if !endpoint_allowed(&key, path) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::EndpointNotAllowed,
            format!("key {} may not call {path}", key.id),
        ));
    }
    if let Some(methods) = &key.allowed_methods {
        if !methods.iter().any(|m| m == parts.method.as_str()) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::MethodNotAllowed,
                format!("key {} may not use {}", key.id, parts.method),
            ));
        }
    }
    let body = axum::body::to_bytes(body, app.max_body_bytes)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::RequestTooLarge,
                format!(
                    "the request body is larger than {} bytes (or could not be read)",
                    app.max_body_bytes
                ),
            )
        })?;
    let estimate = vendor
        .vendor
        .meter
        .estimate(&MeteredRequest {
            method: &parts.method,
            path,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: &body,
        })
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, ErrorCode::UnmeterableRequest, e.0))?;
    let cap_exhausted = |committed: crate::store::DaySpend, requested: Usd| {
        let mut refusal = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::CapExhausted,
            format!(
                "key {} has ${} of its ${} daily cap left; this call could cost ${requested}",
                key.id,
                key.daily_cap.saturating_sub(committed.committed()),
                key.daily_cap
            ),
        );
        refusal.error.body.cap_usd = Some(key.daily_cap);
        refusal.error.body.spent_usd = Some(committed.spent);
        refusal.error.body.reserved_usd = Some(committed.reserved);
        refusal.error.body.requested_usd = Some(requested);
        refusal
    };
    let reservation = if estimate.max_cost.is_zero() {
        // A free call touches no budget, but a key already past its cap (an upstream that billed
        // more than reserved) is stopped.
        if spend.committed() > key.daily_cap {
            return Err(cap_exhausted(spend, Usd::ZERO));
        }
        None
    } else {
        match open_call(app, &key, parts, path, arrived, &estimate).await? {
            OpenedCall::Opened { call_id, reserved } => Some((call_id, reserved)),
            OpenedCall::CapExhausted(now) => return Err(cap_exhausted(now, estimate.max_cost)),
        }
    };
    let upstream = Upstream {
        app: Arc::clone(app),
        vendor: Arc::clone(vendor),
        key_id: key.id.clone(),
        method: parts.method.clone(),
        path: path.to_owned(),
        query: request::upstream_query(parts.uri.query()),
        headers: request::upstream_headers(&parts.headers, &vendor.vendor.auth),
        body,
        reservation,
        arrived,
    };
    // The forward and its settlement run in their own task: once a request has gone to the
    // vendor, a client that disconnects must not stop the settlement.
    match tokio::spawn(upstream.forward()).await {
        Ok(result) => result.map_err(|error| Refusal {
            error,
            key_id: Some(key.id.clone()),
        }),
        Err(join_error) => {
            tracing::error!(%join_error, "upstream task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                "internal error",
            )
            .into())
        }
    }
}

fn endpoint_allowed(key: &KeyRecord, path: &str) -> bool {
    key.allowed_endpoints
        .iter()
        .filter_map(|p| p.parse::<EndpointPattern>().ok())
        .any(|p| p.matches_path(path))
}

async fn open_call(
    app: &App,
    key: &KeyRecord,
    parts: &Parts,
    path: &str,
    arrived: OffsetDateTime,
    estimate: &Estimate,
) -> Result<OpenedCall, Refusal> {
    let call = NewCall {
        key_id: key.id.clone(),
        cap: key.daily_cap,
        at: arrived,
        method: parts.method.to_string(),
        path: path.to_owned(),
        max_cost: estimate.max_cost,
        idempotency: estimate.idempotency.clone(),
    };
    Ok(app.store.open_call(&call).await.map_err(ApiError::from)?)
}

/// A checked, reserved call on its way to the vendor.
struct Upstream {
    app: Arc<App>,
    vendor: Arc<LiveVendor>,
    key_id: String,
    method: http::Method,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
    body: bytes::Bytes,
    reservation: Option<(i64, Usd)>,
    arrived: OffsetDateTime,
}

impl Upstream {
    async fn forward(mut self) -> Result<Response, ApiError> {
        let started = Instant::now();
        let app = Arc::clone(&self.app);
        let vendor = Arc::clone(&self.vendor);
        let vendor_name = vendor.vendor.name.as_str();
        let url = upstream_url(&vendor, &self.path, self.query.as_deref())?;
        let mut headers = std::mem::take(&mut self.headers);
        vendor
            .vendor
            .auth
            .apply(&mut headers, &vendor.vendor.secret)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "the configured vendor secret is not a valid header value",
                )
            })?;
        let sent = app
            .http
            .request(self.method.clone(), url)
            .headers(headers)
            .body(std::mem::take(&mut self.body))
            .send();
        let outcome = tokio::time::timeout(app.upstream_timeout, sent).await;
        app.metrics
            .proxied(vendor_name, started.elapsed().as_secs_f64());
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(error)) if error.is_connect() => {
                // Nothing reached the vendor: release the reservation.
                self.settle_or_record(None, Usd::ZERO).await;
                tracing::warn!(vendor = %vendor_name, error = %error.without_url(), "vendor unreachable");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UpstreamUnavailable,
                    format!("{vendor_name} could not be reached"),
                ));
            }
            Ok(Err(error)) => {
                // The request may have reached the vendor: the reservation stays.
                tracing::warn!(vendor = %vendor_name, error = %error.without_url(), "vendor call failed; reservation kept");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UpstreamUnavailable,
                    format!("the call to {vendor_name} failed"),
                ));
            }
            Err(_elapsed) => {
                tracing::warn!(vendor = %vendor_name, "vendor timed out; reservation kept");
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorCode::UpstreamTimeout,
                    format!("{vendor_name} did not answer in time"),
                ));
            }
        };
        let status = response.status();
        let cost = self.reservation.map_or(Usd::ZERO, |(_, reserved)| {
            vendor.vendor.meter.settle(reserved, status)
        });
        self.settle_or_record(Some(status.as_u16()), cost).await;
        app.metrics.spent(vendor_name, cost.micros());
        tracing::info!(key_id = %self.key_id, vendor = %vendor_name, method = %self.method, path = %self.path, status = status.as_u16(), cost_usd = %cost, "proxied call");
        let mut out = Response::builder().status(status);
        if let Some(out_headers) = out.headers_mut() {
            *out_headers = request::downstream_headers(response.headers());
        }
        out.body(Body::from_stream(response.bytes_stream()))
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorCode::UpstreamUnavailable,
                    "the vendor's response could not be relayed",
                )
            })
    }

    /// Settles the reservation, or records the free call, with what the vendor answered.
    async fn settle_or_record(&self, status: Option<u16>, cost: Usd) {
        let app = &self.app;
        let result = match self.reservation {
            Some((call_id, _)) => app.store.settle_call(call_id, cost, status).await,
            None => {
                let store = Arc::clone(&app.store);
                let (key_id, method, path, at) = (
                    self.key_id.clone(),
                    self.method.to_string(),
                    self.path.clone(),
                    self.arrived,
                );
                tokio::spawn(async move {
                    if let Err(error) = store
                        .record_free_call(&key_id, at, &method, &path, status)
                        .await
                    {
                        tracing::warn!(%error, "could not record a free call");
                    }
                });
                Ok(())
            }
        };
        if let Err(error) = result {
            // The reservation stays in place: spend is over-counted, never lost.
            tracing::error!(%error, key_id = %self.key_id, "could not settle a call; its reservation stays");
        }
    }
}

/// The vendor's base URL with the checked path set directly (never `Url::join`, never a string
/// parsed again), verified to hold exactly the checked bytes.
fn upstream_url(
    vendor: &LiveVendor,
    path: &str,
    query: Option<&str>,
) -> Result<url::Url, ApiError> {
    let mut url = vendor.base_url.clone();
    let full_path = format!("{}{path}", vendor.base_url.path().trim_end_matches('/'));
    url.set_path(&full_path);
    url.set_query(query);
    if url.path() != full_path || url.query() != query {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPath,
            "the request target would change on its way upstream",
        ));
    }
    Ok(url)
}
