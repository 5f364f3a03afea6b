//! Forwarding a decided call to the vendor and settling it from the answer.
//!
//! The forward and its settlement run in a task of their own: once a request has gone to the
//! vendor, a client that disconnects must not stop the settlement.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use http_body_util::BodyExt;
use time::OffsetDateTime;
use vault_key_wire::Usd;

use super::{read, Refusal};
use crate::app::{App, LiveVendor};
use crate::meter::llm::UsageReader;
use crate::meter::{Estimate, ForwardRequest, ModelCall, Settlement};
use crate::store::Store;

/// Largest vendor answer read whole to settle a call (a Stripe object is a few kilobytes).
const MAX_SETTLED_BODY: usize = 1 << 20;

/// A durable reservation: the call's row in the store and what it holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reservation {
    pub(super) call_id: i64,
    pub(super) reserved: Usd,
}

/// A decided call on its way to the vendor.
pub(super) struct Forward {
    pub(super) app: Arc<App>,
    pub(super) vendor: Arc<LiveVendor>,
    pub(super) key_id: String,
    pub(super) request: ForwardRequest,
    pub(super) estimate: Estimate,
    pub(super) reservation: Option<Reservation>,
    pub(super) arrived: OffsetDateTime,
}

/// How a forward ended before a usable answer.
enum Outcome {
    /// Nothing reached the vendor: the reservation is released.
    NotSent(Refusal),
    /// The vendor may have acted: the reservation stays.
    Unknown(Refusal),
}

impl Forward {
    /// Forwards in a task of its own and waits for the answer to relay.
    pub(super) async fn run(self) -> Result<Response, Refusal> {
        match tokio::spawn(self.forward()).await {
            Ok(result) => result,
            Err(join_error) => {
                tracing::error!(%join_error, "upstream task failed");
                Err(Refusal::Internal("internal error"))
            }
        }
    }

    async fn forward(self) -> Result<Response, Refusal> {
        let started = Instant::now();
        let app = Arc::clone(&self.app);
        let vendor_name = self.vendor.vendor.name.clone();
        let sent = self.send().await;
        app.metrics
            .proxied(&vendor_name, started.elapsed().as_secs_f64());
        let response = match sent {
            Ok(response) => response,
            Err(Outcome::NotSent(refusal)) => {
                self.settle(
                    None,
                    Settlement {
                        cost: Usd::ZERO,
                        created: None,
                    },
                )
                .await;
                return Err(refusal);
            }
            Err(Outcome::Unknown(refusal)) => {
                self.abandon().await;
                return Err(refusal);
            }
        };
        let status = response.status();
        let headers = read::downstream_headers(response.headers());
        if let (Some(reservation), Some(model), true) = (
            self.reservation,
            self.estimate.model.clone(),
            status.is_success(),
        ) {
            // A model call settles on the usage its answer reports, read as the answer streams to
            // the client (tokens reach it as they come, nothing is held back).
            let streamed = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("text/event-stream"));
            // Relayed without a length, so that the body is read to its end (where it settles)
            // rather than stopped after the announced bytes.
            let mut headers = headers;
            headers.remove(http::header::CONTENT_LENGTH);
            let tap = UsageTap {
                reader: UsageReader::new(model.format, streamed),
                settlement: Some(StreamSettlement {
                    app: Arc::clone(&app),
                    vendor: vendor_name.clone(),
                    key_id: self.key_id.clone(),
                    call_id: reservation.call_id,
                    model,
                    status,
                }),
            };
            let body = futures_util::stream::unfold(
                (response.bytes_stream(), tap),
                |(mut upstream, mut tap)| async move {
                    match futures_util::StreamExt::next(&mut upstream).await {
                        Some(Ok(chunk)) => {
                            tap.reader.feed(&chunk);
                            Some((Ok(chunk), (upstream, tap)))
                        }
                        Some(Err(error)) => {
                            tap.cut();
                            Some((Err(error), (upstream, tap)))
                        }
                        None => {
                            tap.complete().await;
                            None
                        }
                    }
                },
            );
            tracing::info!(key_id = %self.key_id, vendor = %vendor_name, method = %self.request.method, path = %self.request.path, status = status.as_u16(), "proxied model call; settles when its answer ends");
            let mut out = Response::new(Body::from_stream(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            return Ok(out);
        }
        let (settlement, body) = match self.reservation {
            Some(reservation) if self.estimate.settles_on_body() => {
                let body = read_whole(response, app.upstream_timeout).await;
                let settlement = self.vendor.vendor.meter.settle(
                    &self.estimate,
                    reservation.reserved,
                    status,
                    body.as_deref().unwrap_or_default(),
                );
                let body = match body {
                    Some(bytes) => Body::from(bytes),
                    None => {
                        // The status is known (and settled on); the body was lost on the way.
                        self.settle(Some(status), settlement).await;
                        return Err(Refusal::UpstreamUnavailable(format!(
                            "the answer of {vendor_name} could not be read whole"
                        )));
                    }
                };
                (settlement, body)
            }
            reservation => {
                let settlement = self.vendor.vendor.meter.settle(
                    &self.estimate,
                    reservation.map_or(Usd::ZERO, |r| r.reserved),
                    status,
                    &[],
                );
                (settlement, Body::from_stream(response.bytes_stream()))
            }
        };
        let cost = settlement.cost;
        self.settle(Some(status), settlement).await;
        app.metrics.spent(&vendor_name, cost.micros());
        tracing::info!(key_id = %self.key_id, vendor = %vendor_name, method = %self.request.method, path = %self.request.path, status = status.as_u16(), cost_usd = %cost, "proxied call");
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }

    /// Sends the request with the vendor's secret, waiting at most the upstream timeout for the
    /// answer's headers.
    async fn send(&self) -> Result<reqwest::Response, Outcome> {
        let app = &self.app;
        let vendor = &self.vendor;
        let vendor_name = vendor.vendor.name.as_str();
        let url = upstream_url(vendor, &self.request.path, self.request.query.as_deref())
            .map_err(Outcome::NotSent)?;
        let mut headers = self.request.headers.clone();
        vendor
            .vendor
            .auth
            .apply(&mut headers, &vendor.vendor.secret)
            .map_err(|_| {
                Outcome::NotSent(Refusal::Internal(
                    "the configured vendor secret is not a valid header value",
                ))
            })?;
        let sent = app
            .http
            .request(self.request.method.clone(), url)
            .headers(headers)
            .body(self.request.body.clone())
            .send();
        match tokio::time::timeout(app.upstream_timeout, sent).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() => {
                tracing::warn!(vendor = %vendor_name, error = %error.without_url(), "vendor unreachable");
                Err(Outcome::NotSent(Refusal::UpstreamUnavailable(format!(
                    "{vendor_name} could not be reached"
                ))))
            }
            Ok(Err(error)) => {
                tracing::warn!(vendor = %vendor_name, error = %error.without_url(), "vendor call failed; reservation kept");
                Err(Outcome::Unknown(Refusal::UpstreamUnavailable(format!(
                    "the call to {vendor_name} failed"
                ))))
            }
            Err(_elapsed) => {
                tracing::warn!(vendor = %vendor_name, "vendor timed out; reservation kept");
                Err(Outcome::Unknown(Refusal::UpstreamTimeout(format!(
                    "{vendor_name} did not answer in time"
                ))))
            }
        }
    }

    /// Settles the reservation, or records the free call, with what the vendor answered.
    async fn settle(&self, status: Option<StatusCode>, settlement: Settlement) {
        let app = &self.app;
        let status = status.map(|s| s.as_u16());
        match self.reservation {
            Some(reservation) => {
                super::settle(&app.store, reservation.call_id, settlement, status).await
            }
            None => {
                let store = Arc::clone(&app.store);
                let (key_id, method, path, at) = (
                    self.key_id.clone(),
                    self.request.method.to_string(),
                    self.request.path.clone(),
                    self.arrived,
                );
                // Off the response path: a free call's audit row is not worth the client's wait.
                tokio::spawn(async move {
                    if let Err(error) = store
                        .record_free_call(&key_id, at, &method, &path, status)
                        .await
                    {
                        tracing::warn!(%error, "could not record a free call");
                    }
                });
            }
        }
    }

    /// Ends a call whose outcome is unknown: its reservation stays.
    async fn abandon(&self) {
        if let Some(reservation) = self.reservation {
            if let Err(error) = self.app.store.abandon_call(reservation.call_id).await {
                tracing::error!(%error, key_id = %self.key_id, "could not end a call in flight; it ends when its lease does");
            }
        }
    }
}

/// Reads usage out of a model call's answer as it streams, and settles the call when it ends.
struct UsageTap {
    reader: UsageReader,
    /// Taken once the call is settled or given up on.
    settlement: Option<StreamSettlement>,
}

/// What settling a model call needs once its answer has ended.
struct StreamSettlement {
    app: Arc<App>,
    vendor: String,
    key_id: String,
    call_id: i64,
    model: ModelCall,
    status: StatusCode,
}

impl UsageTap {
    /// The answer ended: settle on its usage, or keep the reservation when it reported none.
    async fn complete(&mut self) {
        let Some(settlement) = self.settlement.take() else {
            return;
        };
        let reader = std::mem::replace(
            &mut self.reader,
            UsageReader::new(settlement.model.format, false),
        );
        let usage = reader.finish();
        let StreamSettlement {
            app,
            vendor,
            key_id,
            call_id,
            model,
            status,
        } = settlement;
        match model.settle(status, usage) {
            Some(cost) => {
                app.metrics.spent(&vendor, cost.micros());
                tracing::info!(%key_id, %vendor, cost_usd = %cost, "model call settled on its usage");
                let settlement = Settlement {
                    cost,
                    created: None,
                };
                super::settle(&app.store, call_id, settlement, Some(status.as_u16())).await;
            }
            None => {
                tracing::warn!(%key_id, %vendor, "model call reported no usage; its reservation stays");
                if let Err(error) = app.store.abandon_call(call_id).await {
                    tracing::error!(%error, %key_id, "could not end a call in flight; it ends when its lease does");
                }
            }
        }
    }

    /// The answer was cut short (upstream broke, or the client left): the vendor may have billed
    /// any part of it, so the reservation stays.
    fn cut(&mut self) {
        let Some(settlement) = self.settlement.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // the lease ends it: the reservation stays either way
        };
        runtime.spawn(async move {
            tracing::warn!(key_id = %settlement.key_id, vendor = %settlement.vendor, "model call cut short; its reservation stays");
            if let Err(error) = settlement.app.store.abandon_call(settlement.call_id).await {
                tracing::error!(%error, "could not end a model call; it ends when its lease does");
            }
        });
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The vendor's whole answer, when it arrives in time and within the size limit.
async fn read_whole(
    response: reqwest::Response,
    deadline: std::time::Duration,
) -> Option<bytes::Bytes> {
    let body = http_body_util::Limited::new(reqwest::Body::from(response), MAX_SETTLED_BODY);
    match tokio::time::timeout(deadline, body.collect()).await {
        Ok(Ok(collected)) => Some(collected.to_bytes()),
        _ => None,
    }
}

/// The vendor's base URL with the checked path set directly (never `Url::join`, never a string
/// parsed again), verified to hold exactly the checked bytes.
fn upstream_url(vendor: &LiveVendor, path: &str, query: Option<&str>) -> Result<url::Url, Refusal> {
    let mut url = vendor.base_url.clone();
    let full_path = format!("{}{path}", vendor.base_url.path().trim_end_matches('/'));
    url.set_path(&full_path);
    url.set_query(query);
    if url.path() != full_path || url.query() != query {
        return Err(Refusal::InvalidPath(
            "the request target would change on its way upstream".to_owned(),
        ));
    }
    Ok(url)
}
