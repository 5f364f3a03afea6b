//! A long-running agent backend: configuration from the environment, the tool routes of
//! [`crate::tools`], a graceful shutdown that waits for every revocation.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use vault_key::Client;

/// How the backend is configured.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the backend listens (`AGENT_LISTEN`, default `127.0.0.1:3000`).
    pub listen: SocketAddr,
    /// The vault-key server (`VAULT_KEY_URL` or `VAULT_KEY_API_URL` + `VAULT_KEY_PROXY_URL`,
    /// and `VAULT_KEY_ADMIN_TOKEN`).
    pub client: Client,
}

/// Why the backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `AGENT_LISTEN` is not an address.
    #[error("AGENT_LISTEN is not an address such as 127.0.0.1:3000: {0}")]
    Listen(String),
    /// The vault-key client settings are missing or wrong.
    #[error(transparent)]
    VaultKey(#[from] vault_key::Error),
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        let listen = match std::env::var("AGENT_LISTEN") {
            Ok(text) => text.parse().map_err(|_| ConfigError::Listen(text))?,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], 3000)),
        };
        Ok(Config {
            listen,
            client: Client::from_env()?,
        })
    }
}

/// Serves the tool routes until `shutdown` completes, then finishes requests in flight and waits
/// until every key they used has been revoked. `ready` gets the bound address.
pub async fn run(
    config: Config,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    vault_key::init(config.client.clone());
    let listener = TcpListener::bind(config.listen).await?;
    ready(listener.local_addr()?);
    axum::serve(listener, crate::tools::router())
        .with_graceful_shutdown(shutdown)
        .await?;
    config.client.flush().await;
    Ok(())
}
