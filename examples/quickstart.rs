//! The tour: a vault-key server and an Axum agent backend in one process, four scripted agent
//! runs, and a table of what each run's keys did. Exits 0 by itself (1 if anything surprised it).
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};
use vault_key_examples::{serve, start_sandbox_server, tools};
use vault_key_wire::{EventPage, KeyPage, KeyView, Usd};

/// One call an agent run makes to a tool of the backend.
struct Step {
    run: &'static str,
    tool: &'static str,
    body: Value,
    /// The agent gives up after this long (a cancelled call).
    gives_up_after: Option<Duration>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match tour().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nquickstart: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn tour() -> Result<(), Box<dyn Error>> {
    let local = start_sandbox_server().await?;
    let server = local.server;
    vault_key::init(local.client.clone());
    let backend = serve(tools::router()).await?;
    println!(
        "vault-key server   {}   (in-memory SQLite, sandbox Stripe)",
        server.url()
    );
    println!("agent backend      http://{backend}   tools: POST /runs/{{run}}/charge, POST /runs/{{run}}/read\n");

    let steps = [
        Step {
            run: "run-1",
            tool: "charge",
            body: json!({"amounts_cents": [2500, 4000]}),
            gives_up_after: None,
        },
        Step {
            run: "run-1",
            tool: "read",
            body: json!({"path": "/v1/customers"}),
            gives_up_after: None,
        },
        Step {
            run: "run-2",
            tool: "charge",
            body: json!({"amounts_cents": [20000, 25000, 10000]}),
            gives_up_after: None,
        },
        Step {
            run: "run-3",
            tool: "read",
            body: json!({"path": "/v1/charges"}),
            gives_up_after: None,
        },
        Step {
            run: "run-4",
            tool: "charge",
            body: json!({"amounts_cents": [3000], "vendor_delay_ms": 1500}),
            gives_up_after: Some(Duration::from_millis(300)),
        },
    ];
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    for step in &steps {
        let mut request = http
            .post(format!("http://{backend}/runs/{}/{}", step.run, step.tool))
            .json(&step.body);
        if let Some(patience) = step.gives_up_after {
            request = request.timeout(patience);
        }
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                match body["code"].as_str() {
                    Some(code) => format!("{} {code}", status.as_u16()),
                    None => format!("{} OK", status.as_u16()),
                }
            }
            Err(error) if error.is_timeout() => "cancelled by the agent".to_owned(),
            Err(error) => return Err(error.into()),
        };
        println!(
            "  {:<6} {:<7} {}  ->  {outcome}",
            step.run, step.tool, step.body
        );
        seen.push((step.run, step.tool, outcome));
    }

    // Revocations run in the background; wait for every one, and for the cancelled call, which
    // the proxy sees through to the vendor so its cost is known, to settle.
    vault_key::flush().await;
    let admin = Admin {
        http: http.clone(),
        url: server.url(),
        token: local.admin_token,
    };
    admin.wait_until_settled("run-").await?;

    let header = [
        "run",
        "tool",
        "agent saw",
        "key id",
        "spent",
        "refused by the proxy",
        "key",
    ];
    let [run, tool, saw, id, spent, refused, status] = header;
    println!("\n{run:<6}  {tool:<6}  {saw:<24}  {id:<28}  {spent:>8}  {refused:<22}  {status}");
    println!("{}", "-".repeat(112));
    let mut surprises = Vec::new();
    for (run, tool, outcome) in &seen {
        let keys = admin.keys(&format!("{run}/{tool}")).await?;
        let [key] = keys.as_slice() else {
            surprises.push(format!(
                "{run}/{tool} issued {} keys, expected one",
                keys.len()
            ));
            continue;
        };
        let refusals: Vec<String> = admin
            .events(&key.id)
            .await?
            .events
            .iter()
            .filter_map(|e| e.denied.map(|code| code.to_string()))
            .collect();
        let refused = if refusals.is_empty() {
            "-".to_owned()
        } else {
            refusals.join(", ")
        };
        println!(
            "{run:<6}  {tool:<6}  {outcome:<24}  {:<28}  {:>8}  {refused:<22}  {}",
            key.id,
            dollars(key.spent_today_usd),
            key.status.as_str()
        );
        if key.status.as_str() != "revoked" {
            surprises.push(format!(
                "{run}/{tool}: key {} is {}, not revoked",
                key.id,
                key.status.as_str()
            ));
        }
        let expected_refusal = match (*run, *tool) {
            ("run-2", _) => Some("cap_exhausted"),
            ("run-3", _) => Some("endpoint_not_allowed"),
            _ => None,
        };
        if refusals.first().map(String::as_str) != expected_refusal {
            surprises.push(format!(
                "{run}/{tool}: refused {refused}, expected {expected_refusal:?}"
            ));
        }
    }
    println!("\nEvery call had its own key: capped ($500 for charges, $1 read-only for reads), limited to");
    println!("the endpoints its tool needs, and revoked when the call ended, even the one the agent abandoned.");
    server.shutdown().await;
    if surprises.is_empty() {
        Ok(())
    } else {
        Err(surprises.join("\n").into())
    }
}

/// `$12.34`.
fn dollars(amount: Usd) -> String {
    let micros = amount.micros();
    format!(
        "${}.{:02}",
        micros / 1_000_000,
        (micros % 1_000_000) / 10_000
    )
}

/// Reads the server's admin API.
struct Admin {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Admin {
    async fn keys(&self, label_prefix: &str) -> Result<Vec<KeyView>, Box<dyn Error>> {
        let page: KeyPage = self
            .get(&format!("/v1/keys?label_prefix={label_prefix}"))
            .await?;
        Ok(page.keys)
    }

    async fn events(&self, id: &str) -> Result<EventPage, Box<dyn Error>> {
        self.get(&format!("/v1/keys/{id}/events")).await
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Box<dyn Error>> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits (up to 5 s) until no key with this label prefix holds a reservation.
    async fn wait_until_settled(&self, label_prefix: &str) -> Result<(), Box<dyn Error>> {
        for _ in 0..100 {
            if self
                .keys(label_prefix)
                .await?
                .iter()
                .all(|k| k.reserved_usd.is_zero())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("calls were still unsettled after 5 s".into())
    }
}
