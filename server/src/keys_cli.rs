//! `vault-key-server keys …`: an operator's view of a running server's keys, and the one step
//! that stops a runaway task or a whole agent run. It speaks the admin API, nothing else.

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use vault_key_server::present::{expiry, keys_counted, outcome, timestamp, Money};
use vault_key_wire::{ErrorBody, EventPage, KeyPage, KeyStatus, KeyView, RevokedCount};

/// Which server, and the admin token (from the environment only, never a flag: a flag would
/// show in `ps` and in shell history).
#[derive(Debug, Args)]
pub struct Target {
    /// The server's base URL.
    #[arg(long, env = "VAULT_KEY_URL", default_value = "http://127.0.0.1:8787")]
    url: String,
}

/// The `keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Keys with today's spend, reservations, cap, requests, refusals and expiry (all pages).
    List {
        /// Only keys in this state.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Only keys whose label starts with this (an agent run: `run-42/`).
        #[arg(long)]
        label_prefix: Option<String>,
        /// Only keys for this vendor.
        #[arg(long)]
        vendor: Option<String>,
        /// Print the keys as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One key, with its most recent calls and refusals.
    Show {
        /// The key's id (`key_…`).
        id: String,
        /// How many of its latest calls to show (at most 1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        calls: u32,
        /// Print `{"key": …, "calls": […]}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke keys by id, or every active key of a label prefix; prints how many were revoked.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["ids", "label_prefix"]))]
    Revoke {
        /// Key ids.
        ids: Vec<String>,
        /// Every active key whose label starts with this.
        #[arg(long, conflicts_with = "ids")]
        label_prefix: Option<String>,
        /// Print `{"revoked": N}` as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A key state, as the list filter takes it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    /// Usable now.
    Active,
    /// Revoked.
    Revoked,
    /// Past its expiry, never revoked.
    Expired,
}

/// Runs a `keys` subcommand; the error is the one line the operator reads.
pub async fn run(target: Target, command: KeysCommand) -> Result<(), String> {
    let admin = AdminClient::new(target)?;
    match command {
        KeysCommand::List {
            status,
            label_prefix,
            vendor,
            json,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(status) = status {
                let status = match status {
                    Status::Active => KeyStatus::Active,
                    Status::Revoked => KeyStatus::Revoked,
                    Status::Expired => KeyStatus::Expired,
                };
                query.push(("status", status.as_str().to_owned()));
            }
            query.extend(label_prefix.map(|p| ("label_prefix", p)));
            query.extend(vendor.map(|v| ("vendor", v)));
            let keys = admin.all_keys(&query).await?;
            if json {
                emit_json(&keys)
            } else {
                emit(&key_table(&keys, OffsetDateTime::now_utc()))
            }
        }
        KeysCommand::Show { id, calls, json } => {
            let key: KeyView = admin
                .get(&format!("/v1/keys/{}", path_segment(&id)?), &[])
                .await?;
            let page: EventPage = admin
                .get(
                    &format!("/v1/keys/{}/events", path_segment(&id)?),
                    &[("limit", calls.to_string())],
                )
                .await?;
            if json {
                emit_json(&serde_json::json!({"key": key, "calls": page.events}))
            } else {
                emit(&format!(
                    "{}\n{}",
                    key_details(&key, OffsetDateTime::now_utc()),
                    call_table(&page.events)
                ))
            }
        }
        KeysCommand::Revoke {
            ids,
            label_prefix,
            json,
        } => match label_prefix {
            Some(prefix) => {
                let revoked = admin
                    .post::<RevokedCount>(
                        "/v1/keys/revoke",
                        &serde_json::json!({"label_prefix": prefix}),
                    )
                    .await?;
                if json {
                    emit_json(&revoked)
                } else {
                    emit(&format!("revoked {}\n", keys_counted(revoked.revoked)))
                }
            }
            None => revoke_ids(&admin, ids, json).await,
        },
    }
}

/// Revokes each key named, going on past a key that cannot be revoked (in an emergency the
/// others must still stop), and says what happened to each.
async fn revoke_ids(admin: &AdminClient, ids: Vec<String>, json: bool) -> Result<(), String> {
    let mut unique: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        path_segment(&id)?;
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    let (mut revoked, mut already, mut failed) = (0u64, 0u64, Vec::new());
    for id in &unique {
        let outcome = async {
            let key: KeyView = admin.get(&format!("/v1/keys/{id}"), &[]).await?;
            if key.status == KeyStatus::Revoked {
                return Ok(false);
            }
            admin.delete(&format!("/v1/keys/{id}")).await.map(|()| true)
        };
        match outcome.await {
            Ok(true) => revoked += 1,
            Ok(false) => already += 1,
            Err(error) => failed.push(format!("{id}: {error}")),
        }
    }
    if json {
        emit_json(&serde_json::json!({
            "revoked": revoked, "already_revoked": already, "failed": failed,
        }))?;
    } else {
        let mut summary = format!("revoked {}", keys_counted(revoked));
        if already > 0 {
            summary.push_str(&format!("; {} already revoked", keys_counted(already)));
        }
        emit(&format!("{summary}\n"))?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "could not revoke {}: {}",
            keys_counted(failed.len() as u64),
            failed.join("; ")
        ))
    }
}

/// An id as one path segment: ids are `key_` and base62, anything else is refused here rather
/// than sent somewhere else on the server.
fn path_segment(id: &str) -> Result<&str, String> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(format!("`{id}` is not a key id (they look like key_3Q…)"))
    }
}

/// Writes to stdout; a reader that went away (`keys list | head`) is not an error.
fn emit(text: &str) -> Result<(), String> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.to_string()),
        _ => Ok(()),
    }
}

fn emit_json<T: serde::Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    emit(&format!("{text}\n"))
}

/// The admin API at one server.
struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: SecretString,
}

impl AdminClient {
    fn new(target: Target) -> Result<AdminClient, String> {
        let token = std::env::var("VAULT_KEY_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or("set VAULT_KEY_ADMIN_TOKEN to the server's admin token")?;
        let base = target.url.trim_end_matches('/').to_owned();
        let url = url::Url::parse(&base).map_err(|e| format!("VAULT_KEY_URL `{base}`: {e}"))?;
        let loopback = match url.host() {
            Some(url::Host::Domain(name)) => name == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(format!(
                    "VAULT_KEY_URL `{base}`: the admin token is not sent in clear to another \
                     host; use https://"
                ))
            }
            other => return Err(format!("VAULT_KEY_URL `{base}`: `{other}` is not http(s)")),
        }
        // No proxy from the environment, no redirects: the token goes to this server only.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(AdminClient {
            http,
            base,
            token: SecretString::from(token),
        })
    }

    /// Every page of `GET /v1/keys` with `query`.
    async fn all_keys(&self, query: &[(&str, String)]) -> Result<Vec<KeyView>, String> {
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut page_query = query.to_vec();
            page_query.push(("limit", "1000".to_owned()));
            page_query.extend(cursor.take().map(|c| ("cursor", c)));
            let page: KeyPage = self.get("/v1/keys", &page_query).await?;
            keys.extend(page.keys);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, String> {
        let request = self.http.get(format!("{}{path}", self.base)).query(query);
        self.answer(request).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, String> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        self.answer(request).await
    }

    async fn delete(&self, path: &str) -> Result<(), String> {
        let request = self.http.delete(format!("{}{path}", self.base));
        self.send(request).await.map(drop)
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, String> {
        let response = self.send(request).await?;
        response.json().await.map_err(|e| {
            format!(
                "{}: the answer is not what this version expects: {e}",
                self.base
            )
        })
    }

    /// Sends with the admin token; a refusal becomes its message and code.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let response = request
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| format!("cannot reach the vault-key server at {}: {e}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        Err(match response.json::<ErrorBody>().await {
            Ok(body) if status == reqwest::StatusCode::UNAUTHORIZED => format!(
                "the server refused the admin token in VAULT_KEY_ADMIN_TOKEN ({}): {}",
                body.code.as_str(),
                body.message
            ),
            Ok(body) => format!("{} ({})", body.message, body.code.as_str()),
            Err(_) => format!(
                "{} answered {status}, not the vault-key admin API",
                self.base
            ),
        })
    }
}

/// Rows of cells, aligned in columns (numbers to the right).
fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                out.push_str("  ");
            }
            if right[i] {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

fn key_table(keys: &[KeyView], now: OffsetDateTime) -> String {
    if keys.is_empty() {
        return "no keys\n".to_owned();
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.label.clone(),
                k.vendor.clone(),
                k.status.as_str().to_owned(),
                Money(k.spent_today_usd).to_string(),
                Money(k.reserved_usd).to_string(),
                Money(k.daily_usd_cap).to_string(),
                k.requests.to_string(),
                k.refusals.to_string(),
                expiry(k, now),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "LABEL",
            "VENDOR",
            "STATUS",
            "SPENT TODAY",
            "RESERVED",
            "CAP",
            "REQUESTS",
            "REFUSALS",
            "EXPIRES",
        ],
        &rows,
        &[
            false, false, false, false, true, true, true, true, true, false,
        ],
    )
}

fn key_details(key: &KeyView, now: OffsetDateTime) -> String {
    let methods = key
        .allowed_methods
        .as_ref()
        .map_or("any the vendor uses".to_owned(), |m| m.join(", "));
    [
        ("id", key.id.clone()),
        ("label", key.label.clone()),
        ("vendor", key.vendor.clone()),
        ("status", key.status.as_str().to_owned()),
        (
            "spent today",
            format!(
                "{} of {} ({} reserved)",
                Money(key.spent_today_usd),
                Money(key.daily_usd_cap),
                Money(key.reserved_usd)
            ),
        ),
        ("requests", key.requests.to_string()),
        ("refusals", key.refusals.to_string()),
        ("endpoints", key.allowed_endpoints.join(", ")),
        ("methods", methods),
        ("expires", expiry(key, now)),
    ]
    .into_iter()
    .chain(key.grant_id.clone().map(|grant| ("minted from", grant)))
    .map(|(name, value)| format!("{name:<12} {value}\n"))
    .collect()
}

fn call_table(events: &[vault_key_wire::Event]) -> String {
    if events.is_empty() {
        return "no calls\n".to_owned();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                timestamp(e.at),
                e.method.clone(),
                e.path.clone(),
                Money(e.reserved_usd).to_string(),
                outcome(e),
            ]
        })
        .collect();
    table(
        &["AT", "METHOD", "PATH", "RESERVED", "OUTCOME"],
        &rows,
        &[false, false, false, true, false],
    )
}
