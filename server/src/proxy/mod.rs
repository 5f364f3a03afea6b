//! The enforcing proxy: `ANY /{vendor}/{upstream path}`.
//!
//! The decision path, top to bottom, fails closed at every step:
//! 1. the target: sizes, a method a vendor could use, an origin-form path with no token in it;
//! 2. the key: token → key → revoked/expired → vendor → vendor's methods → canonical path →
//!    allowlist → key's methods ([`crate::policy`]);
//! 3. the exact upstream request is built — headers filtered, query filtered, the whole body read
//!    under a size limit and a deadline — and everything after reads only that value;
//! 4. the vendor's meter classifies it: free, metered at the most it can cost, or refused;
//! 5. the key's state is checked again, immediately before the money moves: inside the atomic
//!    reservation (which also checks the cap, objects acted on and idempotency replays), or for a
//!    free call whose body was waited for, by reading the key again;
//! 6. the request is forwarded with the real secret and settled from the vendor's answer
//!    ([`forward`]).

mod forward;
mod read;
mod refusal;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use http::request::Parts;
use time::OffsetDateTime;
use vault_key_wire::Usd;

use crate::app::App;
use crate::meter::{Estimate, ForwardRequest, Settlement};
use crate::policy;
use crate::store::{
    utc_day, CachedStore, DeniedCall, NewCall, OpenedCall, Store, StoreError, STORE_DEADLINE,
};
use crate::token::{self, TokenHash};
use crate::vendor::ErrorEnvelope;

pub(crate) use refusal::Refusal;

/// Longest path kept in the audit trail of a refused call.
const MAX_AUDIT_PATH: usize = 512;

/// The proxy route.
pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let arrived = app.clock.now();
    let (parts, body) = request.into_parts();
    let mut key_id = None;
    let refusal = match proxy(&app, &parts, body, arrived, &mut key_id).await {
        Ok(response) => return response,
        Err(refusal) => refusal,
    };
    let code = refusal.code();
    app.metrics.denied(code);
    tracing::info!(key_id = key_id.as_deref().unwrap_or("-"), method = %parts.method, code = %code, "proxied call refused");
    let target = read::check_target(&parts, app.max_header_bytes).ok();
    if let Some(key_id) = key_id {
        // The same path form as a forwarded call's event: the upstream path, without `/{vendor}`
        // (a key is known only once the target passed its checks).
        let path = target.map_or(parts.uri.path(), |(_, upstream_path)| upstream_path);
        let denial = DeniedCall {
            key_id,
            at: arrived,
            method: parts.method.to_string(),
            path: path.chars().take(MAX_AUDIT_PATH).collect(),
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
    let envelope = target
        .and_then(|(vendor, _)| app.vendors.get(vendor))
        .map_or(ErrorEnvelope::Plain, |v| v.vendor.envelope);
    refusal.into_response(envelope)
}

/// Decides on one call and forwards it; `key_id` is set as soon as the key is known, so that a
/// refusal after that lands in the key's audit trail.
async fn proxy(
    app: &Arc<App>,
    parts: &Parts,
    body: axum::body::Body,
    arrived: OffsetDateTime,
    key_id: &mut Option<String>,
) -> Result<Response, Refusal> {
    let (vendor_name, upstream_path) = read::check_target(parts, app.max_header_bytes)?;
    if vendor_name == "v1" {
        return Err(Refusal::NoSuchRoute);
    }
    let route_vendor = app.vendors.get(vendor_name);
    let token = read::presented_token(&parts.headers, route_vendor.map(|v| &v.vendor.auth))?;
    let presented = secrecy::ExposeSecret::expose_secret(&token);
    let hash = TokenHash::of(presented);
    let (key, spend) = match app.store.key_by_token(&hash, utc_day(arrived)).await? {
        Some(found) => found,
        // A key minted from a grant is known from its first use on.
        None if vault_key_wire::is_minted_token(presented) => {
            crate::grants::admit(app, presented, &hash, arrived).await?
        }
        None => return Err(Refusal::InvalidKey("unknown vault token")),
    };
    drop(token);
    *key_id = Some(key.id.clone());
    policy::check_state(&key, arrived)?;
    let vendor = policy::check_vendor(&key, route_vendor)?;
    policy::check_vendor_method(vendor, &parts.method)?;
    let path = read::checked_path(upstream_path)?;
    policy::check_route(&key, &parts.method, path)?;
    read::refuse_tokens_elsewhere(&parts.headers, &vendor.vendor.auth)?;

    // A body that is not known to be empty at the head may take its time to arrive (an HTTP/2
    // stream can end long after its headers), and the key's state may change meanwhile.
    let waited_for_body = !axum::body::HttpBody::is_end_stream(&body);
    let mut request = ForwardRequest {
        method: parts.method.clone(),
        path: path.to_owned(),
        query: read::upstream_query(parts.uri.query()),
        headers: read::upstream_headers(&parts.headers, &vendor.vendor.auth),
        body: read::body(body, &parts.headers, app.max_body_bytes, app.body_timeout).await?,
    };
    vendor.vendor.meter.prepare(&mut request)?;
    if token::appears_in_body(&request.body) {
        return Err(Refusal::InvalidRequest(
            "the body contains a vault token; it may travel only in the vendor's credential \
             header"
                .to_owned(),
        ));
    }
    let estimate = vendor.vendor.estimate(&request)?;

    let now = app.clock.now();
    let reservation = if estimate.needs_reservation() {
        Some(reserve(app, &key, &request, &estimate, now).await?)
    } else {
        let spend = if waited_for_body {
            // Time passed while the body arrived: the key may have been revoked or expired since.
            let (key, spend) = app
                .store
                .key(&key.id, utc_day(now))
                .await?
                .ok_or(Refusal::KeyRevoked)?;
            policy::check_state(&key, now)?;
            spend
        } else {
            spend
        };
        // A free call touches no budget, but a key already past its cap (an upstream that billed
        // more than reserved) is stopped.
        if spend.committed() > key.daily_cap {
            return Err(Refusal::CapExhausted {
                cap: key.daily_cap,
                grant: None,
                spend,
                requested: Usd::ZERO,
            });
        }
        None
    };
    forward::Forward {
        app: Arc::clone(app),
        vendor: Arc::clone(vendor),
        key_id: key.id.clone(),
        request,
        estimate,
        reservation,
        arrived,
    }
    .run()
    .await
}

/// The answer of a reservation under way. Dropped before the answer was taken (deadline passed,
/// client gone), it closes the channel, so that a later answer is released by the task that
/// made it, and releases one that arrived meanwhile.
struct PendingReservation {
    answer: tokio::sync::oneshot::Receiver<Result<OpenedCall, StoreError>>,
    store: Arc<CachedStore>,
}

impl Drop for PendingReservation {
    fn drop(&mut self) {
        self.answer.close();
        if let Ok(Ok(OpenedCall::Opened { call_id, .. })) = self.answer.try_recv() {
            tokio::spawn(release_unforwarded(Arc::clone(&self.store), call_id));
        }
    }
}

/// Settles a reservation whose call was never forwarded to zero: otherwise the reservation would
/// be held until the reconciliation sweep counts it as spent.
async fn release_unforwarded(store: Arc<CachedStore>, call_id: i64) {
    let unsent = Settlement {
        cost: Usd::ZERO,
        created: None,
    };
    settle(&store, call_id, unsent, None).await;
}

/// Settles a call with what it cost. A store that fails is retried in the background rather
/// than holding up the answer; until then the reservation stays in place, so spend is
/// over-counted for a while, not lost.
async fn settle(
    store: &Arc<CachedStore>,
    call_id: i64,
    settlement: Settlement,
    status: Option<u16>,
) {
    if let Err(error) = store.settle_call(call_id, &settlement, status).await {
        tracing::warn!(%error, call_id, "could not settle a call; retrying in the background");
        tokio::spawn(retry_settlement(
            Arc::clone(store),
            call_id,
            settlement,
            status,
        ));
    }
}

/// Retries a settlement that failed, for about a minute while the store fails (slow, locked,
/// full, away): a settlement given up on leaves the reservation held until the reconciliation
/// sweep counts it as spent, which loses what a call billed above its reservation and
/// over-counts one that cost less. Settling is idempotent (a call is settled once, whoever
/// tries), so a retry after an answer lost on its way back changes nothing. Each attempt waits
/// first, jittered, so that calls that failed together do not all come back together.
async fn retry_settlement(
    store: Arc<CachedStore>,
    call_id: i64,
    settlement: Settlement,
    status: Option<u16>,
) {
    const ATTEMPTS: u32 = 15;
    let mut wait = std::time::Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        tokio::time::sleep(wait.mul_f64(rand::random_range(0.5..1.5))).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
        match store.settle_call(call_id, &settlement, status).await {
            Ok(_) => return,
            Err(error) if attempt == ATTEMPTS => {
                // Enough to correct the books by hand.
                tracing::error!(
                    %error, call_id, cost_usd = %settlement.cost, upstream_status = ?status,
                    "could not settle a call; its reservation stays until reconciled"
                );
            }
            Err(_) => {}
        }
    }
}

/// Reserves the call's cost in one atomic step that also checks the key's state, the objects the
/// call acts on and idempotency replays.
async fn reserve(
    app: &App,
    key: &crate::store::KeyRecord,
    request: &ForwardRequest,
    estimate: &Estimate,
    now: OffsetDateTime,
) -> Result<forward::Reservation, Refusal> {
    let call = NewCall {
        key_id: key.id.clone(),
        at: now,
        method: request.method.to_string(),
        path: request.path.clone(),
        max_cost: estimate.max_cost,
        idempotency: estimate.idempotency.clone(),
        acts_on: estimate.acts_on.clone(),
        // Past it the forward has ended one way or another (headers, then body, each within the
        // upstream timeout); the margin covers settling it.
        in_flight_until: now + crate::config::in_flight_lease(app.upstream_timeout),
    };
    // The reservation runs to its end in a task of its own: a client that hangs up while it
    // commits, or a store that answers past the deadline, must not leave it held for a call that
    // was never forwarded. Whoever holds the answer when nobody is left to forward releases it:
    // the task, if the receiver is gone when it answers; the receiver's guard, if the answer came
    // in while it was being given up.
    let store = Arc::clone(&app.store);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let mut pending = PendingReservation {
        answer,
        store: Arc::clone(&store),
    };
    tokio::spawn(async move {
        let result = store.open_call(&call).await;
        if let Err(Ok(OpenedCall::Opened { call_id, .. })) = reply.send(result) {
            release_unforwarded(store, call_id).await;
        }
    });
    let opened = tokio::time::timeout(STORE_DEADLINE, &mut pending.answer)
        .await
        .map_err(|_| StoreError::TimedOut)?
        .map_err(|_| StoreError::Write("the reservation did not finish".to_owned()))??;
    match opened {
        OpenedCall::Opened { call_id, reserved } => Ok(forward::Reservation { call_id, reserved }),
        OpenedCall::CapExhausted { cap, spend, grant } => Err(Refusal::CapExhausted {
            cap,
            grant,
            spend,
            requested: estimate.max_cost,
        }),
        OpenedCall::KeyRevoked => Err(Refusal::KeyRevoked),
        OpenedCall::KeyExpired => Err(Refusal::KeyExpired),
        OpenedCall::NotOwned => Err(Refusal::Unmeterable(format!(
            "{} {} makes an existing object charge; vault-key allows that only for objects this \
             key created (in the same currency), whose amount it reserved then",
            request.method, request.path
        ))),
        OpenedCall::IdempotencyInFlight => Err(Refusal::IdempotencyKeyInUse),
    }
}
