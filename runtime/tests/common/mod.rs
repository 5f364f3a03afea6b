//! A real vault-key server (sandbox vendors, in-memory SQLite) on a loopback port, running on its
//! own thread and runtime so that it outlives the runtimes the tests create and destroy.

#![allow(dead_code)]

use std::thread::JoinHandle;

use secrecy::SecretString;
use serde_json::Value;
use vault_key::{Client, KeySpec};
use vault_key_server::{Server, ServerConfig};

pub const ADMIN: &str = "runtime-test-admin-token-0123";

pub struct TestServer {
    pub url: String,
    /// The one client of this server: its clones share a pending-revocation count, so
    /// [`TestServer::flush`] waits for exactly the keys this test issued here.
    client: Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = Server::start(ServerConfig::sandbox(SecretString::from(ADMIN)))
                    .await
                    .unwrap();
                url_tx.send(server.url()).unwrap();
                let _ = stopped.await;
                server.shutdown().await;
            });
        });
        let url = url_rx.recv().unwrap();
        TestServer {
            client: Client::new(&url, ADMIN).unwrap(),
            url,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Waits until every key issued through [`TestServer::client`] and dropped is revoked. (The
    /// process-wide `vault_key::flush()` would also wait for other tests' servers.)
    pub async fn flush(&self) {
        self.client.flush().await;
    }

    /// The key's status on the server (`active`, `revoked`, `expired`).
    pub async fn status(&self, id: &str) -> String {
        self.key(id).await["status"].as_str().unwrap().to_owned()
    }

    pub async fn key(&self, id: &str) -> Value {
        self.admin_get(&format!("/v1/keys/{id}")).await
    }

    /// An admin `GET` of `path`, as JSON.
    pub async fn admin_get(&self, path: &str) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// How many keys with this label prefix are still active.
    pub async fn active_with_prefix(&self, prefix: &str) -> usize {
        let mut count = 0;
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/v1/keys?status=active&limit=1000&label_prefix={prefix}",
                self.url
            );
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page: Value = reqwest::Client::new()
                .get(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            count += page["keys"].as_array().unwrap().len();
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return count,
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // No key of this test may outlive its server: its revocation would be retried until the
        // key expired, and every flush in the process would wait for it.
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            let client = &self.client;
            runtime.block_on(async {
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(10), client.flush()).await;
            });
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Stripe key spec for payment intents and customers.
pub fn stripe_spec(label: &str, cap_usd: u64) -> KeySpec {
    KeySpec::new("stripe")
        .cap_usd(cap_usd)
        .endpoints([
            "/v1/payment_intents",
            "/v1/payment_intents/*",
            "/v1/customers",
        ])
        .label(label)
}

/// A runtime for tests that must control when a runtime exists.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
