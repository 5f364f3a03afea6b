//! A long-running agent backend that talks to a separately started vault-key server.
//!
//! ```sh
//! export VAULT_KEY_ADMIN_TOKEN=…                        # 16+ characters
//! cargo run -p vault-key-server -- serve --sandbox &    # or with STRIPE_SECRET_KEY for real
//! VAULT_KEY_URL=http://127.0.0.1:8787 cargo run --example agent_backend
//! curl -X POST localhost:3000/runs/run-1/charge -H 'content-type: application/json' \
//!      -d '{"amounts_cents": [1500]}'
//! ```
//!
//! Ctrl-C stops it gracefully: requests in flight finish and every key is revoked before exit.

use vault_key_examples::agent_backend::{run, Config};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run(
        config,
        |addr| println!("agent backend listening on http://{addr}"),
        shutdown,
    )
    .await?;
    println!("stopped; every key revoked");
    Ok(())
}
