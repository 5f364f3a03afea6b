//! A gradual rollout: requests get their own key when the key service answers, and fall back to
//! the shared key when it does not; the layer counts the fallbacks.
//!
//! ```sh
//! cargo run --example gradual_rollout
//! ```

use std::sync::Arc;

use serde_json::Value;
use vault_key::{Client, KeySpec};
use vault_key_examples::{rollout, serve, start_sandbox_server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let local = start_sandbox_server().await?;
    let shared_spec = KeySpec::new("stripe")
        .cap_usd(1000)
        .endpoints(["/v1/**"])
        .ttl(std::time::Duration::from_secs(86_400))
        .label("shared-legacy");
    let shared = rollout::SharedKey(Arc::new(local.client.issue(&shared_spec).await?));

    // Issuance goes to a key service that is not there yet (nothing listens on port 9).
    let not_deployed = Client::builder("http://127.0.0.1:9", &local.admin_token)
        .proxy_url(local.server.url())
        .build()?;
    for (name, issuer) in [
        ("key service down", not_deployed),
        ("key service up", local.client.clone()),
    ] {
        let (router, layer) = rollout::router(issuer, shared.clone());
        let backend = serve(router).await?;
        for _ in 0..3 {
            let answer: Value = reqwest::get(format!("http://{backend}/customers"))
                .await?
                .json()
                .await?;
            println!("{name}: served with the {} key", answer["key"]);
        }
        println!("{name}: {} fallbacks\n", layer.fallbacks());
    }
    vault_key::flush().await;
    local.server.shutdown().await;
    Ok(())
}
