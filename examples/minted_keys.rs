//! A backend that never holds the admin token: an operator gives it a grant (one agent run's
//! budget), and each tool call mints its own narrow key from it in-process, with no round trip
//! to the key service. The proxy checks each key against the grant at its first use, and the
//! grant's cap holds across every key of the run. Exits 0 by itself (1 if anything surprised it).
//!
//! ```sh
//! cargo run --example minted_keys
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::json;
use vault_key::{vault_key, Client, VaultKey};
use vault_key_examples::{create_payment_intent, start_sandbox_server};
use vault_key_wire::GrantView;

/// The backend's client: built from the grant alone.
static BACKEND: OnceLock<Client> = OnceLock::new();

fn backend() -> Client {
    BACKEND.get().expect("set at start").clone()
}

/// One tool call of run 42: a $10 charge, with a key minted for this call.
#[vault_key(
    vendor = "stripe",
    cap = 20,
    endpoints = ["/v1/payment_intents"],
    ttl = "5m",
    label = "run-42/charge",
    client = backend
)]
async fn charge(key: &VaultKey) -> Result<String, vault_key::Error> {
    create_payment_intent(key, 1000, |r| r).await
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nminted_keys: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let local = start_sandbox_server().await?;
    println!(
        "vault-key server  {}  (in-memory SQLite, sandbox Stripe)\n",
        local.server.url()
    );

    // The operator's one round trip: a grant for run 42, $50 for the whole run.
    let grant = local
        .create_grant(json!({
            "label_prefix": "run-42/",
            "vendor": "stripe",
            "max_key_usd_cap": 20,
            "daily_usd_cap": 50,
            "allowed_endpoints": ["/v1/payment_intents", "/v1/payment_intents/*"],
            "allowed_methods": ["POST"],
            "max_key_ttl": "10m",
            "expires_in": "1h",
        }))
        .await?;
    println!(
        "grant {}: keys labelled run-42/…, at most $20 each and $50 together, 10 minutes each",
        grant.id
    );
    // The backend gets the grant's credential (VAULT_KEY_GRANT in production), nothing more.
    BACKEND
        .set(Client::grant_builder(local.server.url(), grant.grant).build()?)
        .map_err(|_| "set twice")?;

    let mut surprises = Vec::new();
    println!("\n call  took     outcome");
    for call in 1..=7 {
        let started = Instant::now();
        let outcome = charge().await;
        let expected_ok = call <= 5;
        let shown = match &outcome {
            Ok(intent) => format!("charged $10 ({intent})"),
            Err(error) => format!("refused: {error}"),
        };
        println!("  {call:>3}  {:>7.2?}  {shown}", started.elapsed());
        if outcome.is_ok() != expected_ok {
            surprises.push(format!("call {call}: {shown}"));
        }
    }
    backend().flush().await;

    let view: GrantView = local
        .admin_get(&format!("/v1/grants/{}", grant.id), &[])
        .await?;
    println!(
        "\nthe grant's keys spent ${} of ${} together today",
        view.spent_today_usd, view.terms.daily_usd_cap
    );
    let keys = local.keys_labelled("run-42/").await?;
    let revoked = keys
        .iter()
        .filter(|k| k.status.as_str() == "revoked")
        .count();
    println!(
        "{} keys were minted and used, {revoked} are revoked (each when its call ended)",
        keys.len()
    );
    if view.spent_today_usd.micros() != 50_000_000 || revoked != keys.len() || keys.len() != 7 {
        surprises.push(format!(
            "spent {}, {revoked} of {} keys revoked",
            view.spent_today_usd,
            keys.len()
        ));
    }
    println!("\n(The first call's time includes the one request a grant client makes: where each vendor's");
    println!("token goes. Every later key is minted without touching the network.)");
    local.server.shutdown().await;
    if surprises.is_empty() {
        Ok(())
    } else {
        Err(surprises.join("\n").into())
    }
}
