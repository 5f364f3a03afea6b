//! `vault-key-server`: the key service and enforcing proxy, and the operator's `keys` commands.

mod keys_cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tracing_subscriber::EnvFilter;
use vault_key_server::store::{is_postgres_url, PostgresStore};
use vault_key_server::{
    ConfigFile, MetricsAccess, PoolSettings, Sandbox, Server, ServerConfig, SyncMode,
};

#[derive(Debug, Parser)]
#[command(
    name = "vault-key-server",
    version,
    about = "Per-task, scoped, short-lived vendor API keys: key service and enforcing proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the admin API and the proxy. The admin token comes from VAULT_KEY_ADMIN_TOKEN;
    /// vendor secrets from STRIPE_SECRET_KEY or the config file. /metrics takes the admin token,
    /// or the token in VAULT_KEY_METRICS_TOKEN when set (for a scraper), or none with
    /// --public-metrics.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// `sqlite://vault.db` (a file, created if missing), `sqlite::memory:`, or
        /// `postgres://user@host/db` (shared by every server behind one load balancer).
        #[arg(long, default_value = "sqlite://vault.db")]
        db: String,
        /// PostgreSQL: connections this server opens at most.
        #[arg(long, default_value_t = PoolSettings::default().max_connections)]
        db_max_connections: u32,
        /// PostgreSQL: do not migrate the schema on start (run `vault-key-server migrate`).
        #[arg(long)]
        no_migrate: bool,
        /// Serve /metrics to anyone who reaches the port (key counts and spend by vendor).
        #[arg(long)]
        public_metrics: bool,
        /// Answer vendor calls with the built-in stand-ins (no network, no real secrets).
        #[arg(long)]
        sandbox: bool,
        /// TOML file with vendors, currency rates and limits.
        #[arg(long)]
        config: Option<PathBuf>,
        /// `full` also survives power loss, with one fsync per metered call.
        #[arg(long, value_enum, default_value_t = SyncMode::Normal)]
        sync: SyncMode,
    },
    /// Bring a PostgreSQL database's schema up to date, then exit (for operators who migrate
    /// before rolling out servers started with --no-migrate).
    Migrate {
        /// `postgres://user@host/db`.
        #[arg(long)]
        db: String,
    },
    /// See and stop the keys of a running server (VAULT_KEY_URL, VAULT_KEY_ADMIN_TOKEN).
    Keys {
        #[command(flatten)]
        target: keys_cli::Target,
        #[command(subcommand)]
        command: keys_cli::KeysCommand,
    },
    /// Run only the sandbox vendors, as a stand-alone upstream (for tests and demos).
    Sandbox {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8788")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vault-key-server: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            listen,
            db,
            sandbox,
            config,
            sync,
            db_max_connections,
            no_migrate,
            public_metrics,
        } => {
            let admin_token = std::env::var("VAULT_KEY_ADMIN_TOKEN").unwrap_or_default();
            let mut server_config = ServerConfig::new(SecretString::from(admin_token));
            server_config.listen = listen;
            server_config.database_url = db;
            server_config.sync = sync;
            server_config.pool.max_connections = db_max_connections;
            server_config.migrate_on_start = !no_migrate;
            server_config.metrics_access = match (
                std::env::var("VAULT_KEY_METRICS_TOKEN").ok(),
                public_metrics,
            ) {
                (Some(_), true) => {
                    return Err(
                        "VAULT_KEY_METRICS_TOKEN and --public-metrics contradict each \
                                other: choose one"
                            .to_owned(),
                    )
                }
                (Some(token), false) if token.chars().count() < 16 => {
                    return Err("VAULT_KEY_METRICS_TOKEN must be at least 16 characters".to_owned())
                }
                (Some(token), false) => MetricsAccess::Token(SecretString::from(token)),
                (None, true) => MetricsAccess::Public,
                (None, false) => MetricsAccess::AdminToken,
            };
            let file = match &config {
                Some(path) => {
                    let shown = path.display().to_string();
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| format!("config file {shown}: {e}"))?;
                    ConfigFile::parse(&text, &shown).map_err(|e| e.to_string())?
                }
                None => ConfigFile::default(),
            };
            server_config
                .apply(&file, &|var| std::env::var(var).ok(), sandbox)
                .map_err(|e| e.to_string())?;
            if server_config.vendors.is_empty() {
                tracing::warn!("no vendor is configured: set STRIPE_SECRET_KEY, add vendors to --config, or pass --sandbox");
            }
            let server = Server::start(server_config)
                .await
                .map_err(|e| e.to_string())?;
            // On stdout, one line, for scripts and supervisors that start the server on port 0.
            println!("vault-key-server listening on {}", server.url());
            server.run_until_signalled().await;
            Ok(())
        }
        Command::Migrate { db } => {
            if !is_postgres_url(&db) {
                return Err(
                    "migrate takes a postgres:// URL (a SQLite database is migrated by \
                            the server that opens it)"
                        .to_owned(),
                );
            }
            let store = PostgresStore::connect(&db, PoolSettings::default())
                .await
                .map_err(|e| e.to_string())?;
            store.migrate().await.map_err(|e| e.to_string())?;
            store.close().await;
            println!("vault-key-server: the schema is up to date");
            Ok(())
        }
        Command::Keys { target, command } => keys_cli::run(target, command).await,
        Command::Sandbox { listen } => {
            let sandbox = Sandbox::start(listen).await.map_err(|e| e.to_string())?;
            println!(
                "vault-key-server sandbox listening on http://{}",
                sandbox.addr()
            );
            let _ = tokio::signal::ctrl_c().await;
            Ok(())
        }
    }
}
