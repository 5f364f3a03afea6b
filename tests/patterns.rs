//! Every pattern of the examples, end to end: a real server (sandbox vendors) in this process,
//! real HTTP, the examples' own handlers. Each test checks what its pattern promises: the key is
//! issued with the right spec and label, the proxy enforces it, and it is revoked at the right
//! moment.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vault_key::{Client, KeySpec};
use vault_key_examples::{
    agent_backend, layered, rollout, serve, start_sandbox_server, tools, worker, LocalServer,
};
use vault_key_wire::KeyView;

async fn keys_labelled(local: &LocalServer, prefix: &str) -> Vec<KeyView> {
    local.keys_labelled(prefix).await.unwrap()
}

async fn key_view(local: &LocalServer, id: &str) -> KeyView {
    local
        .admin_get(&format!("/v1/keys/{id}"), &[])
        .await
        .unwrap()
}

/// Calls one of the backend's tools as agent run `run`; returns the status and JSON answer.
async fn call_tool(
    backend: std::net::SocketAddr,
    run: &str,
    tool: &str,
    body: Value,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{backend}/runs/{run}/{tool}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Asks the charge tool for these charges; returns the key it used.
async fn charge_tool(backend: std::net::SocketAddr, run: &str, amounts_cents: &[u64]) -> String {
    let (status, report) = call_tool(
        backend,
        run,
        "charge",
        json!({ "amounts_cents": amounts_cents }),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    report["key_id"].as_str().expect("a key id").to_owned()
}

fn vendor_calls(local: &LocalServer) -> usize {
    local.server.sandbox().expect("sandbox").received_count()
}

fn status(key: &KeyView) -> &'static str {
    key.status.as_str()
}

/// The attribute and the agent backend use the process default client (`vault_key::init`), which
/// one test at a time may own: these scenarios run in sequence, each with its own server.
#[tokio::test]
async fn patterns_on_the_default_client() {
    attribute_tools_issue_per_call_enforce_and_revoke().await;
    attribute_tool_abandoned_mid_call_is_revoked_and_its_cost_kept().await;
    the_agent_backend_serves_until_shutdown_and_leaves_no_key_behind().await;
}

async fn attribute_tools_issue_per_call_enforce_and_revoke() {
    let local = start_sandbox_server().await.unwrap();
    vault_key::init(local.client.clone());
    let backend = serve(tools::router()).await.unwrap();

    let id = charge_tool(backend, "r1", &[2500]).await;
    let view = key_view(&local, &id).await;
    assert_eq!(view.label, "r1/charge");
    assert_eq!(view.vendor, "stripe");
    assert_eq!(view.daily_usd_cap.micros(), 500_000_000);
    assert_eq!(
        view.allowed_endpoints,
        ["/v1/payment_intents", "/v1/payment_intents/*"]
    );
    assert_eq!(view.spent_today_usd.micros(), 25_000_000);
    local.client.flush().await;
    assert_eq!(status(&key_view(&local, &id).await), "revoked");

    // Over the $500 cap in one call: refused by the proxy before the vendor sees it.
    let before = vendor_calls(&local);
    let over = call_tool(backend, "r2", "charge", json!({"amounts_cents": [60000]})).await;
    assert_eq!(
        (over.0, over.1["code"].as_str()),
        (402, Some("spend_cap_exceeded"))
    );
    assert_eq!(vendor_calls(&local), before);

    // The read tool's key is limited to customers and the balance, GET only.
    let outside = call_tool(backend, "r3", "read", json!({"path": "/v1/charges"})).await;
    assert_eq!(
        (outside.0, outside.1["code"].as_str()),
        (403, Some("endpoint_not_allowed"))
    );
    assert_eq!(vendor_calls(&local), before);
    let read_key = &keys_labelled(&local, "r3/read").await[0];
    assert_eq!(
        read_key.allowed_methods.as_deref(),
        Some(&["GET".to_owned()][..])
    );

    local.client.flush().await;
    for view in keys_labelled(&local, "r").await {
        assert_eq!(status(&view), "revoked", "{}", view.label);
    }
}

async fn attribute_tool_abandoned_mid_call_is_revoked_and_its_cost_kept() {
    let local = start_sandbox_server().await.unwrap();
    vault_key::init(local.client.clone());
    let backend = serve(tools::router()).await.unwrap();
    let request = reqwest::Client::new()
        .post(format!("http://{backend}/runs/r4/charge"))
        .json(&json!({"amounts_cents": [3000], "vendor_delay_ms": 800}))
        .send();
    let request = tokio::spawn(request);
    // The agent hangs up once the charge has reached the vendor (however slow this machine is).
    while vendor_calls(&local) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    let mut view = None;
    for _ in 0..100 {
        local.client.flush().await;
        let keys = keys_labelled(&local, "r4/charge").await;
        if keys.len() == 1 && status(&keys[0]) == "revoked" && keys[0].reserved_usd.is_zero() {
            view = Some(keys[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let view = view.expect("the abandoned call's key is revoked and its call settled");
    // The proxy saw the call through to the vendor, which charged: the $30 is counted.
    assert_eq!(view.spent_today_usd.micros(), 30_000_000);
}

#[tokio::test]
async fn layer_issues_per_request_with_labels_from_headers() {
    let local = start_sandbox_server().await.unwrap();
    let backend = serve(layered::router(local.client.clone())).await.unwrap();
    let answer: Value = reqwest::Client::new()
        .get(format!("http://{backend}/balance"))
        .header("x-user-id", "u-9")
        .header("x-agent-run-id", "run-5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["key_id"].as_str().unwrap();
    // A free call's audit row is written off the response path: wait for it, briefly.
    let mut view = key_view(&local, id).await;
    for _ in 0..100 {
        if view.requests > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        view = key_view(&local, id).await;
    }
    assert_eq!(view.label, "user:u-9/run:run-5");
    assert_eq!(view.allowed_endpoints, ["/v1/balance"]);
    assert_eq!(view.requests, 1);
    local.client.flush().await;
    assert_eq!(status(&key_view(&local, id).await), "revoked");
}

#[tokio::test]
async fn a_worker_keeps_its_key_until_it_ends_or_is_aborted() {
    let local = start_sandbox_server().await.unwrap();
    let spec = KeySpec::new("stripe")
        .cap_usd(20)
        .endpoints(["/v1/payment_intents"])
        .label("workers");
    let key = Arc::new(local.client.issue(&spec).await.unwrap());
    let id = key.id().to_owned();
    let endless = worker::spawn_charger(
        Arc::clone(&key),
        vec![100; 1000],
        Duration::from_millis(100),
    );
    drop(key);
    while vendor_calls(&local) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    local.client.flush().await;
    assert_eq!(
        status(&key_view(&local, &id).await),
        "active",
        "the worker still owns the key"
    );
    endless.abort();
    assert!(endless.await.unwrap_err().is_cancelled());
    local.client.flush().await;
    let view = key_view(&local, &id).await;
    assert_eq!(status(&view), "revoked");
    assert!(
        view.spent_today_usd.micros() >= 1_000_000,
        "the worker charged before it was stopped"
    );

    // A worker that runs out of budget ends with the proxy's refusal.
    let small = Arc::new(
        local
            .client
            .issue(
                &KeySpec::new("stripe")
                    .cap_usd(2)
                    .endpoints(["/v1/payment_intents"]),
            )
            .await
            .unwrap(),
    );
    let outcome = worker::spawn_charger(small, vec![150, 150], Duration::ZERO)
        .await
        .unwrap();
    assert!(
        matches!(outcome, Err(vault_key::Error::CapExhausted { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn rollout_falls_back_to_the_shared_key_and_counts() {
    let local = start_sandbox_server().await.unwrap();
    let shared_key = local
        .client
        .issue(
            &KeySpec::new("stripe")
                .cap_usd(100)
                .endpoints(["/v1/**"])
                .label("shared"),
        )
        .await
        .unwrap();
    let shared = rollout::SharedKey(Arc::new(shared_key));
    let down = Client::builder("http://127.0.0.1:9", &local.admin_token)
        .proxy_url(local.server.url())
        .build()
        .unwrap();
    let (router, layer) = rollout::router(down, shared.clone());
    let backend = serve(router).await.unwrap();
    for _ in 0..2 {
        let answer: Value = reqwest::get(format!("http://{backend}/customers"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["key"], "shared");
        assert_eq!(answer["key_id"], shared.0.id());
    }
    assert_eq!(layer.fallbacks(), 2);

    let (router, layer) = rollout::router(local.client.clone(), shared.clone());
    let backend = serve(router).await.unwrap();
    let answer: Value = reqwest::get(format!("http://{backend}/customers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["key"], "own");
    assert_eq!(layer.fallbacks(), 0);
    local.client.flush().await;
    let own = key_view(&local, answer["key_id"].as_str().unwrap()).await;
    assert_eq!((own.label.as_str(), status(&own)), ("rollout", "revoked"));
    assert_eq!(
        status(&key_view(&local, shared.0.id()).await),
        "active",
        "the shared key is long-lived"
    );
}

async fn the_agent_backend_serves_until_shutdown_and_leaves_no_key_behind() {
    let local = start_sandbox_server().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let config = agent_backend::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        client: local.client.clone(),
    };
    let backend = tokio::spawn(agent_backend::run(
        config,
        move |addr| {
            let _ = ready_tx.send(addr);
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let addr = ready_rx.await.unwrap();
    let id = charge_tool(addr, "b1", &[990]).await;
    stop.send(()).unwrap();
    backend.await.unwrap().unwrap();
    // `run` flushed before returning: nothing left to wait for.
    assert_eq!(status(&key_view(&local, &id).await), "revoked");
    assert_eq!(
        key_view(&local, &id).await.spent_today_usd.micros(),
        9_900_000
    );
}

#[tokio::test]
async fn grpc_calls_each_get_a_key_from_the_tower_layer() {
    use vault_key_examples::grpc;
    let local = start_sandbox_server().await.unwrap();
    let addr = grpc::serve(local.client.clone(), 500).await.unwrap();
    let reply = grpc::call_charge(addr, "g-1", 1_500).await.unwrap();
    assert!(reply.intent_id.starts_with("pi_"), "{reply:?}");
    let view = key_view(&local, &reply.key_id).await;
    assert_eq!(view.label, "run:g-1");
    assert_eq!(
        view.allowed_methods.as_deref(),
        Some(&["POST".to_owned()][..])
    );
    assert_eq!(view.spent_today_usd.micros(), 15_000_000);
    local.client.flush().await;
    assert_eq!(
        status(&key_view(&local, &reply.key_id).await),
        "revoked",
        "revoked at the end of the call"
    );

    let before = vendor_calls(&local);
    let over = grpc::call_charge(addr, "g-2", 60_000).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
    assert_eq!(
        vendor_calls(&local),
        before,
        "the proxy refused before the vendor"
    );
    local.client.flush().await;
    let second = &keys_labelled(&local, "run:g-2").await[0];
    assert_eq!(status(second), "revoked");

    // With the key service unreachable, the method answers UNAVAILABLE and nothing is charged.
    let down = Client::builder("http://127.0.0.1:9", &local.admin_token)
        .proxy_url(local.server.url())
        .build()
        .unwrap();
    let addr = grpc::serve(down, 500).await.unwrap();
    let unavailable = grpc::call_charge(addr, "g-3", 100).await.unwrap_err();
    assert_eq!(
        unavailable.code(),
        tonic::Code::Unavailable,
        "{unavailable:?}"
    );
    assert_eq!(vendor_calls(&local), before);
}
