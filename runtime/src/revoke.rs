//! Guaranteed revocation.
//!
//! `Drop` cannot `.await`, may run on a thread with no Tokio runtime, or while the runtime that
//! issued the key is shutting down. So a dropped key is handed, by a non-blocking channel send, to
//! one process-wide revoker: a dedicated thread with its own small runtime and HTTP client, which
//! neither the caller's runtime nor its shutdown can take down. It sends `DELETE /v1/keys/{id}` —
//! or, for the keys that queued up while it was busy (a burst of tasks ending at once), one
//! `POST /v1/keys/revoke {"ids": […]}` per server — retries failures with exponential backoff
//! until the key would have expired anyway (the TTL is the last safety net), and counts what is
//! pending so that [`flush`] can wait for it.

use std::sync::OnceLock;
use std::time::Duration;

use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Semaphore};
use url::Url;

use crate::client::Credential;

/// Revocation requests sent at once: enough to drain a burst quickly, few enough not to flood the
/// server.
const CONCURRENCY: usize = 32;
/// The most keys one request revokes (the server takes up to `vault_key_wire::MAX_REVOKE_IDS`).
const MAX_BATCH: usize = 256;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A count of revocations not yet done, that can be awaited down to zero. One for the process,
/// one per [`crate::Client`].
#[derive(Debug, Clone)]
pub(crate) struct PendingCount(watch::Sender<usize>);

impl Default for PendingCount {
    fn default() -> Self {
        PendingCount(watch::channel(0).0)
    }
}

impl PendingCount {
    fn add(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    fn done(&self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }

    pub(crate) fn get(&self) -> usize {
        *self.0.borrow()
    }

    pub(crate) async fn wait_for_zero(&self) {
        // The sender is alive (`self`), so the channel cannot close while waiting.
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// One key to revoke.
#[derive(Debug)]
pub(crate) struct RevokeJob {
    pub(crate) api_url: Url,
    pub(crate) credential: Credential,
    pub(crate) key_id: String,
    pub(crate) expires_at: OffsetDateTime,
    /// The issuing client's count, so that a client can wait for its own keys only.
    pub(crate) client_pending: PendingCount,
}

struct Revoker {
    jobs: mpsc::UnboundedSender<RevokeJob>,
    pending: PendingCount,
}

static REVOKER: OnceLock<Option<Revoker>> = OnceLock::new();

fn revoker() -> Option<&'static Revoker> {
    REVOKER
        .get_or_init(|| {
            let (jobs, receiver) = mpsc::unbounded_channel();
            let pending = PendingCount::default();
            let counter = pending.clone();
            let spawned = std::thread::Builder::new()
                .name("vault-key-revoker".to_owned())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime.block_on(run(receiver, counter)),
                        Err(error) => tracing::error!(%error, "vault-key revoker could not start a runtime; keys will only expire"),
                    }
                });
            match spawned {
                Ok(_) => Some(Revoker { jobs, pending }),
                Err(error) => {
                    tracing::error!(%error, "vault-key revoker thread could not start; keys will only expire");
                    None
                }
            }
        })
        .as_ref()
}

/// Starts the revoker if it is not running yet. Called on issue, so that a drop never has to.
pub(crate) fn ensure_started() {
    let _ = revoker();
}

/// Queues a revocation. Never blocks, never panics, needs no runtime.
pub(crate) fn enqueue(job: RevokeJob) {
    let Some(revoker) = revoker() else {
        return;
    };
    revoker.pending.add();
    job.client_pending.add();
    if let Err(mpsc::error::SendError(job)) = revoker.jobs.send(job) {
        revoker.pending.done();
        job.client_pending.done();
        tracing::error!(key_id = %job.key_id, "vault-key revoker is gone; the key will only expire");
    }
}

/// Waits until every revocation queued so far (and any queued while waiting) has reached the
/// server, or has been given up because its key expired or the server refused it for good.
///
/// This covers every client in the process; [`crate::Client::flush`] waits for one client's keys.
/// While a server stays unreachable its revocations are retried until the keys expire, so a
/// shutdown that must not wait that long bounds the wait with `tokio::time::timeout`.
///
/// Call it before the process exits, as `tracing`'s guards are flushed:
///
/// ```no_run
/// #[tokio::main]
/// async fn main() {
///     // … serve agent tasks, each dropping its key when done …
///     vault_key::flush().await;
///     assert_eq!(vault_key::pending_revocations(), 0);
/// }
/// ```
pub async fn flush() {
    let Some(revoker) = revoker() else {
        return;
    };
    revoker.pending.wait_for_zero().await;
}

/// How many revocations are queued or in flight, over every client of the process.
///
/// ```
/// // Nothing was issued here, so nothing waits to be revoked.
/// assert_eq!(vault_key::pending_revocations(), 0);
/// ```
pub fn pending_revocations() -> usize {
    revoker().map_or(0, |r| r.pending.get())
}

async fn run(mut jobs: mpsc::UnboundedReceiver<RevokeJob>, pending: PendingCount) {
    let http = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "vault-key revoker could not build its HTTP client; keys will only expire");
            return;
        }
    };
    let permits = std::sync::Arc::new(Semaphore::new(CONCURRENCY));
    let mut queued = Vec::with_capacity(MAX_BATCH);
    // Whatever is queued when the revoker gets to it goes out together: a key dropped alone is
    // sent at once, and a burst costs a request per server rather than per key.
    while jobs.recv_many(&mut queued, MAX_BATCH).await > 0 {
        for batch in by_server(queued.drain(..)) {
            let http = http.clone();
            let pending = pending.clone();
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                revoke_with_retries(&http, &batch).await;
                for job in batch {
                    pending.done();
                    job.client_pending.done();
                }
            });
        }
    }
}

/// Groups revocations by the server and credential they go to.
fn by_server(jobs: impl Iterator<Item = RevokeJob>) -> Vec<Vec<RevokeJob>> {
    let mut batches: Vec<Vec<RevokeJob>> = Vec::new();
    for job in jobs {
        let same_server = batches.iter_mut().find(|batch| {
            batch[0].api_url == job.api_url && batch[0].credential.same_as(&job.credential)
        });
        match same_server {
            Some(batch) => batch.push(job),
            None => batches.push(vec![job]),
        }
    }
    batches
}

/// What one attempt told us.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Done,
    Retry(String),
    GiveUp(String),
}

/// Revokes a batch of keys of one server, retrying until done, refused for good, or every key in
/// it has expired.
async fn revoke_with_retries(http: &reqwest::Client, batch: &[RevokeJob]) {
    let mut backoff = FIRST_BACKOFF;
    let mut left: Vec<&RevokeJob> = batch.iter().collect();
    loop {
        match revoke_once(http, &left).await {
            Attempt::Done => {
                tracing::debug!(keys = left.len(), "keys revoked");
                return;
            }
            Attempt::GiveUp(reason) => {
                for job in &left {
                    tracing::error!(key_id = %job.key_id, %reason, "revocation refused; the key will only expire");
                }
                return;
            }
            Attempt::Retry(reason) => {
                let now = OffsetDateTime::now_utc();
                left.retain(|job| {
                    let expired = now >= job.expires_at;
                    if expired {
                        tracing::warn!(key_id = %job.key_id, %reason, "revocation never got through before the key expired");
                    }
                    !expired
                });
                if left.is_empty() {
                    return;
                }
                tracing::debug!(keys = left.len(), %reason, ?backoff, "revocation failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One attempt: one request for the batch (see [`revoke_keys`]).
async fn revoke_once(http: &reqwest::Client, jobs: &[&RevokeJob]) -> Attempt {
    let [first, ..] = jobs else {
        return Attempt::Done;
    };
    let ids = jobs.iter().map(|job| job.key_id.clone()).collect();
    match revoke_keys(http, &first.api_url, &first.credential, ids).await {
        // A server that does not know the batch form (it answers 400, 404 or 405 — not "done":
        // a 404 here is the route's, not a key's) gets one DELETE per key.
        Ok(answer)
            if jobs.len() > 1
                && matches!(first.credential, Credential::Admin(_))
                && matches!(answer.status.as_u16(), 400 | 404 | 405) => {}
        Ok(answer) => return classify(&answer),
        Err(error) => return Attempt::Retry(error.without_url().to_string()),
    }
    // Every key is tried, whatever the one before met; the batch's outcome is the worst of them.
    // Revoking again what was revoked is answered 204, so a retry may repeat the batch.
    let mut outcome = Attempt::Done;
    for job in jobs {
        let one = vec![job.key_id.clone()];
        let attempt = match revoke_keys(http, &job.api_url, &job.credential, one).await {
            Ok(answer) => classify(&answer),
            Err(error) => Attempt::Retry(error.without_url().to_string()),
        };
        outcome = match (outcome, attempt) {
            (Attempt::Retry(why), _) | (_, Attempt::Retry(why)) => Attempt::Retry(why),
            (Attempt::GiveUp(why), _) | (_, Attempt::GiveUp(why)) => Attempt::GiveUp(why),
            (Attempt::Done, Attempt::Done) => Attempt::Done,
        };
    }
    outcome
}

/// Revokes keys with the client's credential: with the admin token, `DELETE /v1/keys/{id}` for
/// one key and `POST /v1/keys/revoke {"ids": […]}` for several; with a grant, `POST
/// /v1/grants/{id}/revoke {"ids": […]}`, which also stops minted keys the proxy has not seen yet.
/// The status says how it went.
pub(crate) async fn revoke_keys(
    http: &reqwest::Client,
    api_url: &Url,
    credential: &Credential,
    ids: Vec<String>,
) -> Result<Answered, reqwest::Error> {
    let request = match (credential, &ids[..]) {
        (Credential::Admin(token), [id]) => http
            .delete(crate::client::endpoint(api_url, &["v1", "keys", id]))
            .bearer_auth(token.expose_secret()),
        (Credential::Admin(token), _) => http
            .post(crate::client::endpoint(api_url, &["v1", "keys", "revoke"]))
            .bearer_auth(token.expose_secret())
            .json(&vault_key_wire::RevokeByIds { ids }),
        (Credential::Grant(grant), _) => http
            .post(crate::client::endpoint(
                api_url,
                &["v1", "grants", grant.id(), "revoke"],
            ))
            .bearer_auth(grant.token())
            .json(&vault_key_wire::RevokeByIds { ids }),
    };
    Ok(Answered::of(&request.send().await?))
}

/// What the key service answered a revocation.
#[derive(Debug)]
pub(crate) struct Answered {
    pub(crate) status: reqwest::StatusCode,
    /// The service's own error code (its `vault-key-error` header), when it sent one.
    code: Option<String>,
}

impl Answered {
    fn of(response: &reqwest::Response) -> Answered {
        Answered {
            status: response.status(),
            code: response
                .headers()
                .get(vault_key_wire::ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// Revoked now, or known to the service as nothing to revoke: a 404 counts only when the
    /// key service itself says `not_found` (a proxy's or a wrong prefix's 404 revokes nothing).
    pub(crate) fn revoked(&self) -> bool {
        self.status.is_success()
            || (self.status == reqwest::StatusCode::NOT_FOUND
                && self.code.as_deref() == Some("not_found"))
    }
}

/// Revoked, or unknown to the key service: done. 5xx, 408 and 429 may pass: retry. Other
/// refusals (a wrong admin token, a redirect, a 404 that is not the service's) will not change by
/// retrying.
fn classify(answer: &Answered) -> Attempt {
    let status = answer.status;
    match status.as_u16() {
        _ if answer.revoked() => Attempt::Done,
        408 | 429 | 500..=599 => Attempt::Retry(format!("HTTP {status}")),
        _ => Attempt::GiveUp(format!("HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: Option<&str>) -> Answered {
        Answered {
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            code: code.map(str::to_owned),
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(&answer(204, None)), Attempt::Done);
        assert_eq!(classify(&answer(200, None)), Attempt::Done);
        assert_eq!(classify(&answer(404, Some("not_found"))), Attempt::Done);
        // A 404 the key service did not give (a load balancer's, a wrong prefix's) revoked
        // nothing, and neither did a redirect.
        assert!(matches!(classify(&answer(404, None)), Attempt::GiveUp(_)));
        assert!(matches!(classify(&answer(303, None)), Attempt::GiveUp(_)));
        assert!(matches!(classify(&answer(503, None)), Attempt::Retry(_)));
        assert!(matches!(classify(&answer(429, None)), Attempt::Retry(_)));
        assert!(matches!(
            classify(&answer(401, Some("unauthorized"))),
            Attempt::GiveUp(_)
        ));
    }
}
