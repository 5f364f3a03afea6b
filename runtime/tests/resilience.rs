//! Revocation under failure and at volume.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use common::*;
use http::StatusCode;
use tokio::net::TcpListener;
use vault_key::Client;

/// A pass-through in front of the real server's admin API that answers `503` to the first
/// `failures` revocation requests (one key's `DELETE` or a batch's `POST /v1/keys/revoke`): a
/// flaky network or load balancer, not a stand-in for the server.
#[derive(Clone)]
struct Flaky {
    upstream: String,
    failures: usize,
    revocations: Arc<AtomicUsize>,
    http: reqwest::Client,
}

async fn forward(State(flaky): State<Flaky>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let revocation = parts.method == http::Method::DELETE
        || (parts.method == http::Method::POST && parts.uri.path() == "/v1/keys/revoke");
    if revocation && flaky.revocations.fetch_add(1, Ordering::SeqCst) < flaky.failures {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let mut outgoing = flaky
        .http
        .request(
            parts.method,
            format!("{}{}", flaky.upstream, parts.uri.path()),
        )
        .body(body);
    for name in ["authorization", "content-type"] {
        if let Some(value) = parts.headers.get(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = outgoing.send().await.unwrap();
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let mut response = Response::new(Body::from(answer.bytes().await.unwrap()));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response.headers_mut().insert("content-type", content_type);
    }
    response
}

#[test]
fn every_key_is_revoked_although_the_first_revocations_fail() {
    const FAILURES: usize = 25;
    const KEYS: usize = 20;
    let server = TestServer::start();
    runtime().block_on(async {
        let flaky = Flaky {
            upstream: server.url.clone(),
            failures: FAILURES,
            revocations: Arc::default(),
            http: reqwest::Client::new(),
        };
        let revocations = Arc::clone(&flaky.revocations);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let flaky_url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(flaky);
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = Client::builder(flaky_url, ADMIN)
            .proxy_url(server.url.clone())
            .build()
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..KEYS {
            let key = client
                .issue(&stripe_spec(&format!("flaky/{i}"), 5))
                .await
                .unwrap();
            ids.push(key.id().to_owned());
        }
        client.flush().await;
        for id in &ids {
            assert_eq!(server.status(id).await, "revoked", "{id}");
        }
        // Every failure was met, and retried past: requests beyond the failures got through
        // (one per key, or fewer when keys queued up together went as one batch).
        assert!(
            revocations.load(Ordering::SeqCst) > FAILURES,
            "{} revocation requests",
            revocations.load(Ordering::SeqCst)
        );
    });
}

#[test]
fn ten_thousand_keys_across_64_tasks_leave_none_active() {
    const TASKS: usize = 64;
    const KEYS: usize = 10_000;
    let server = TestServer::start();
    runtime().block_on(async {
        let client = server.client();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in (task..KEYS).step_by(TASKS) {
                        let key = client
                            .issue(&stripe_spec(&format!("bulk/{i}"), 1))
                            .await
                            .unwrap();
                        drop(key);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        server.flush().await;
        assert_eq!(server.client().pending_revocations(), 0);
        assert_eq!(server.active_with_prefix("bulk/").await, 0);
        let metrics = server.metrics().await;
        assert!(
            metrics.contains(&format!("vault_key_keys_revoked_total {KEYS}")),
            "{metrics}"
        );
    });
}
