//! The revocation guarantee, against the real server: a key is revoked after its last owner drops
//! it, however the task ends, and `flush()` waits until the server has it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vault_key::{Error, ResponseExt, VaultKey};

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

#[test]
fn revoked_after_normal_return() {
    let server = TestServer::start();
    block_on(async {
        async fn task(client: vault_key::Client) -> Result<String, Error> {
            let key = client.issue(&stripe_spec("ending/return", 5)).await?;
            key.get("/v1/customers")
                .send()
                .await?
                .error_for_refusal()
                .await?;
            Ok(key.id().to_owned())
        }
        let id = task(server.client()).await.unwrap();
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn revoked_after_early_return_through_question_mark() {
    let server = TestServer::start();
    block_on(async {
        async fn task(client: vault_key::Client, id: &mut String) -> Result<(), Error> {
            let key = client
                .issue(&stripe_spec("ending/question-mark", 5))
                .await?;
            *id = key.id().to_owned();
            // Outside the allowlist: the proxy refuses, `?` returns early.
            key.get("/v1/charges")
                .send()
                .await?
                .error_for_refusal()
                .await?;
            unreachable!("the call above is refused");
        }
        let mut id = String::new();
        let error = task(server.client(), &mut id).await.unwrap_err();
        assert!(matches!(error, Error::EndpointNotAllowed { .. }), "{error}");
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn revoked_after_panic() {
    let server = TestServer::start();
    block_on(async {
        let client = server.client();
        let (id_tx, id_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let key = client.issue(&stripe_spec("ending/panic", 5)).await.unwrap();
            id_tx.send(key.id().to_owned()).unwrap();
            panic!("the agent task panics while holding its key");
        });
        assert!(task.await.unwrap_err().is_panic());
        let id = id_rx.await.unwrap();
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn revoked_after_join_handle_abort() {
    let server = TestServer::start();
    block_on(async {
        let client = server.client();
        let (id_tx, id_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let key = Arc::new(client.issue(&stripe_spec("ending/abort", 5)).await.unwrap());
            id_tx.send(key.id().to_owned()).unwrap();
            std::future::pending::<()>().await;
            drop(key);
        });
        let id = id_rx.await.unwrap();
        assert_eq!(server.status(&id).await, "active");
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn revoked_after_losing_a_select() {
    let server = TestServer::start();
    block_on(async {
        let client = server.client();
        let (id_tx, mut id_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::select! {
            () = async {
                let key = client.issue(&stripe_spec("ending/select", 5)).await.unwrap();
                id_tx.send(key.id().to_owned()).unwrap();
                tokio::time::sleep(Duration::from_secs(3600)).await;
            } => unreachable!("the sleep loses"),
            () = async {
                // Win only once the other branch holds its key.
                while id_rx.is_empty() { tokio::time::sleep(Duration::from_millis(5)).await; }
            } => {}
        }
        let id = id_rx.recv().await.unwrap();
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn revoked_when_dropped_with_no_runtime_running() {
    let server = TestServer::start();
    let issuing = runtime();
    let key: VaultKey = issuing
        .block_on(server.client().issue(&stripe_spec("ending/no-runtime", 5)))
        .unwrap();
    let id = key.id().to_owned();
    drop(issuing);
    // A plain thread, no runtime anywhere near it.
    std::thread::spawn(move || drop(key)).join().unwrap();
    block_on(async {
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn revoked_when_the_runtime_shuts_down_under_it() {
    let server = TestServer::start();
    let doomed = runtime();
    let client = server.client();
    let (id_tx, id_rx) = std::sync::mpsc::channel();
    doomed.spawn(async move {
        let key = client
            .issue(&stripe_spec("ending/shutdown", 5))
            .await
            .unwrap();
        id_tx.send(key.id().to_owned()).unwrap();
        std::future::pending::<()>().await;
        drop(key);
    });
    let id = id_rx.recv().unwrap();
    // Shutting the runtime down drops the task, and with it the key, inside the shutdown.
    drop(doomed);
    block_on(async {
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn revoke_awaits_the_server() {
    let server = TestServer::start();
    block_on(async {
        let key = server
            .client()
            .issue(&stripe_spec("explicit", 5))
            .await
            .unwrap();
        let id = key.id().to_owned();
        key.revoke().await.unwrap();
        // No flush: revoke() returned only once the server had it.
        assert_eq!(server.status(&id).await, "revoked");
        assert_eq!(server.client().pending_revocations(), 0);
    });
}

#[test]
fn an_arc_shared_key_is_revoked_after_the_last_owner() {
    let server = TestServer::start();
    block_on(async {
        let key = Arc::new(
            server
                .client()
                .issue(&stripe_spec("shared", 5))
                .await
                .unwrap(),
        );
        let id = key.id().to_owned();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn({
            let key = Arc::clone(&key);
            async move {
                wait.await.unwrap();
                key.get("/v1/customers").send().await.unwrap().status()
            }
        });
        drop(key);
        server.flush().await;
        assert_eq!(
            server.status(&id).await,
            "active",
            "the worker still owns it"
        );
        go.send(()).unwrap();
        assert_eq!(worker.await.unwrap(), 200);
        server.flush().await;
        assert_eq!(server.status(&id).await, "revoked");
    });
}

#[test]
fn a_burst_of_dropped_keys_is_revoked_in_few_requests() {
    let server = TestServer::start();
    block_on(async {
        let (client, spec) = (server.client(), stripe_spec("burst", 5));
        let issued = futures_util::future::join_all((0..300).map(|_| client.issue(&spec))).await;
        let keys: Vec<VaultKey> = issued.into_iter().map(Result::unwrap).collect();
        // Every task ends at once.
        drop(keys);
        server.flush().await;
        assert_eq!(server.active_with_prefix("burst").await, 0);
        let metrics = server.metrics().await;
        let requests = |form: &str| -> u64 {
            let prefix = format!("vault_key_revocation_requests_total{{form=\"{form}\"}} ");
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(prefix.as_str()))
                .map_or(0, |n| n.parse().unwrap())
        };
        let (one, batched) = (requests("one"), requests("ids"));
        eprintln!("300 keys dropped together: {one} DELETEs, {batched} batches");
        assert!(batched >= 1, "{metrics}");
        assert!(
            one + batched < 150,
            "300 keys dropped together took {one} DELETEs and {batched} batches"
        );
    });
}
