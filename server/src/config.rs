//! Server configuration: the command line, the environment and an optional TOML file.
//!
//! ```toml
//! max_key_ttl = "24h"        # longest `expires_in` a key may ask for
//! upstream_timeout = "60s"   # time to the vendor's response headers
//! max_body_bytes = 10485760
//! body_timeout = "30s"       # time for a proxied request's whole body to arrive
//! reconcile_after = "1h"     # a reservation whose outcome stayed unknown this long is settled
//!                            # to its reserved amount
//!
//! [vendors.stripe]           # built in; everything optional
//! base_url = "https://api.stripe.com"
//! secret_env = "STRIPE_SECRET_KEY"
//! free_routes = ["POST /v1/accounts/*"]  # routes the meter does not know, declared free
//! [vendors.stripe.usd_per_unit]
//! eur = "1.08"               # USD per euro, for charges in EUR
//!
//! [vendors.acme]             # a generic vendor
//! base_url = "https://api.acme.example"
//! secret_env = "ACME_API_KEY"
//! auth_header = "x-acme-key" # default: Authorization: Bearer
//! cost_per_call_usd = "0.002"
//! methods = ["GET", "POST"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;
use vault_key_wire::{parse_duration, Usd};

use crate::clock::{Clock, SystemClock};
use crate::meter::llm::ModelPrice;
use crate::meter::{AnthropicMeter, Meter, OpenAiMeter, PriceTable, StripeMeter};
use crate::store::{PoolSettings, SyncMode};
use crate::vendor::{
    rest_methods, ErrorEnvelope, FreeRoute, Upstream, Vendor, VendorAuth, RESERVED_NAMES,
    SANDBOX_SECRET,
};

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `sqlite://path`, `sqlite::memory:`, or `postgres://…` (several servers may share one).
    pub database_url: String,
    /// Commit durability (SQLite; PostgreSQL's is its own `synchronous_commit`).
    pub sync: SyncMode,
    /// Connections to PostgreSQL.
    pub pool: PoolSettings,
    /// Whether the server brings PostgreSQL's schema up to date as it starts (otherwise an
    /// operator runs `vault-key-server migrate`).
    pub migrate_on_start: bool,
    /// Bearer token of the admin routes.
    pub admin_token: SecretString,
    /// Who may read `/metrics`.
    pub metrics_access: MetricsAccess,
    /// The vendors the proxy serves.
    pub vendors: Vec<Vendor>,
    /// Longest lifetime a key may ask for.
    pub max_key_ttl: Duration,
    /// Time allowed to connect to a vendor.
    pub connect_timeout: Duration,
    /// Time allowed until the vendor's response headers.
    pub upstream_timeout: Duration,
    /// Time allowed for a proxied request's whole body to arrive.
    pub body_timeout: Duration,
    /// Largest proxied request body.
    pub max_body_bytes: usize,
    /// Largest sum of request header bytes.
    pub max_header_bytes: usize,
    /// How old a call whose outcome stayed unknown (the vendor never answered, the server died
    /// mid-call) must be before it is settled to what it reserved, and recorded as reconciled.
    pub reconcile_after: Duration,
    /// How often reservations are checked for that.
    pub reconcile_every: Duration,
    /// Where the server reads the time (a [`crate::clock::ManualClock`] in tests).
    pub clock: Arc<dyn Clock>,
}

/// How long a forwarded call counts as in flight, given the upstream timeout: the answer's
/// headers, then its whole body, may each take that long, and settling a moment more.
pub fn in_flight_lease(upstream_timeout: Duration) -> Duration {
    upstream_timeout * 2 + Duration::from_secs(30)
}

/// Who may read `/metrics`: its key counts and spend by vendor are the business's own, so by
/// default only the admin token.
#[derive(Debug, Clone, Default)]
pub enum MetricsAccess {
    /// Bearers of the admin token.
    #[default]
    AdminToken,
    /// Bearers of this token (or of the admin token): for a scraper that must not hold the admin
    /// token.
    Token(SecretString),
    /// Anyone who can reach the port (a listener only a trusted network reaches).
    Public,
}

/// Why the configuration cannot start a server.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Missing or weak admin token.
    #[error("VAULT_KEY_ADMIN_TOKEN must be set to a secret of at least 16 characters")]
    AdminToken,
    /// A config file that cannot be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A vendor entry that makes no sense.
    #[error("vendor `{vendor}`: {message}")]
    Vendor {
        /// The vendor.
        vendor: String,
        /// What is wrong.
        message: String,
    },
    /// A setting that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

/// The TOML configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    max_key_ttl: Option<String>,
    upstream_timeout: Option<String>,
    body_timeout: Option<String>,
    max_body_bytes: Option<usize>,
    reconcile_after: Option<String>,
    #[serde(default)]
    vendors: BTreeMap<String, VendorFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VendorFile {
    base_url: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    auth_header: Option<String>,
    cost_per_call_usd: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    free_routes: Vec<String>,
    #[serde(default)]
    usd_per_unit: BTreeMap<String, String>,
    /// Model vendors: prices per model, replacing or adding to the built-in table.
    #[serde(default)]
    prices: BTreeMap<String, PriceFile>,
}

/// `[vendors.openai.prices."gpt-4o"]`: US dollars per million tokens, and the output ceiling.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    input: String,
    cached_input: Option<String>,
    cache_write: Option<String>,
    output: String,
    max_output_tokens: u64,
}

/// The vendors vault-key knows natively: name, API origin, and the variable of its secret.
const BUILT_IN: &[(&str, &str, &str)] = &[
    ("stripe", "https://api.stripe.com", "STRIPE_SECRET_KEY"),
    ("openai", "https://api.openai.com", "OPENAI_API_KEY"),
    (
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
    ),
];

impl ConfigFile {
    /// Parses TOML text.
    pub fn parse(text: &str, path: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

impl ServerConfig {
    /// Defaults around an admin token: loopback port 0, in-memory SQLite, no vendors.
    pub fn new(admin_token: SecretString) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: "sqlite::memory:".to_owned(),
            sync: SyncMode::Normal,
            pool: PoolSettings::default(),
            migrate_on_start: true,
            admin_token,
            metrics_access: MetricsAccess::AdminToken,
            vendors: Vec::new(),
            max_key_ttl: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            reconcile_after: Duration::from_secs(3600),
            reconcile_every: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
        }
    }

    /// A server whose vendors are all the built-in sandbox: what tests and the quickstart run.
    pub fn sandbox(admin_token: SecretString) -> ServerConfig {
        let mut config = ServerConfig::new(admin_token);
        config
            .apply(&ConfigFile::default(), &|_| None, true)
            .expect("the built-in vendors need no configuration");
        config
    }

    /// How long a forwarded call may stay in flight before its outcome counts as unknown: the
    /// vendor's answer headers and then its whole body may each take the upstream timeout, and
    /// settling takes a moment more.
    pub fn in_flight_lease(&self) -> Duration {
        in_flight_lease(self.upstream_timeout)
    }

    /// Refuses reconciliation settings that would settle calls still in flight, or that cannot
    /// run.
    pub fn check_timing(&self) -> Result<(), ConfigError> {
        let lease = self.in_flight_lease();
        if self.reconcile_after <= lease {
            return Err(ConfigError::Invalid(format!(
                "reconcile_after must be longer than a call may stay in flight ({} s: twice \
                 upstream_timeout, and 30 s)",
                lease.as_secs()
            )));
        }
        if self.reconcile_after > Duration::from_secs(366 * 24 * 3600) {
            return Err(ConfigError::Invalid(
                "reconcile_after must be at most a year".to_owned(),
            ));
        }
        if self.reconcile_every.is_zero() {
            return Err(ConfigError::Invalid(
                "reconcile_every must be longer than zero".to_owned(),
            ));
        }
        Ok(())
    }

    /// Applies a config file and the environment. With `sandbox`, built-in vendors answer from
    /// the stand-in, and a real secret in the environment is an error rather than silently unused.
    pub fn apply(
        &mut self,
        file: &ConfigFile,
        env: &dyn Fn(&str) -> Option<String>,
        sandbox: bool,
    ) -> Result<(), ConfigError> {
        if let Some(ttl) = &file.max_key_ttl {
            self.max_key_ttl = duration_setting("max_key_ttl", ttl)?;
        }
        if let Some(timeout) = &file.upstream_timeout {
            self.upstream_timeout = duration_setting("upstream_timeout", timeout)?;
        }
        if let Some(timeout) = &file.body_timeout {
            self.body_timeout = duration_setting("body_timeout", timeout)?;
        }
        if let Some(max) = file.max_body_bytes {
            self.max_body_bytes = max;
        }
        if let Some(after) = &file.reconcile_after {
            self.reconcile_after = duration_setting("reconcile_after", after)?;
        }
        self.vendors.clear();
        let default_file = VendorFile::default();
        for (name, default_base, default_env) in BUILT_IN {
            let vendor_file = file.vendors.get(*name).unwrap_or(&default_file);
            let secret = secret_of(vendor_file, default_env, env);
            let (upstream, secret) = if sandbox {
                if secret.is_some() {
                    return Err(vendor_error(
                        name,
                        "a real secret is configured and --sandbox would hide it; drop one of them",
                    ));
                }
                (Upstream::Sandbox, SecretString::from(SANDBOX_SECRET))
            } else if let Some(secret) = secret {
                let base = vendor_file.base_url.as_deref().unwrap_or(default_base);
                (Upstream::Url(base_url(name, base)?), secret)
            } else {
                // Not served without a secret, but a broken entry is still an error.
                built_in_vendor(name, vendor_file, Upstream::Sandbox, SecretString::from(""))?;
                continue;
            };
            self.vendors
                .push(built_in_vendor(name, vendor_file, upstream, secret)?);
        }
        for (name, vendor) in file
            .vendors
            .iter()
            .filter(|(name, _)| !BUILT_IN.iter().any(|(built_in, ..)| built_in == name))
        {
            self.vendors.push(generic_vendor(name, vendor, env)?);
        }
        Ok(())
    }
}

/// A built-in vendor from its config entry: its meter, where its token goes, how its errors look.
fn built_in_vendor(
    name: &str,
    file: &VendorFile,
    upstream: Upstream,
    secret: SecretString,
) -> Result<Vendor, ConfigError> {
    let (meter, auth, envelope) = match name {
        "stripe" => {
            let rates = file
                .usd_per_unit
                .iter()
                .map(|(currency, rate)| {
                    let rate = rate
                        .parse::<Usd>()
                        .map_err(|e| vendor_error(name, format!("rate for `{currency}`: {e}")))?;
                    Ok((currency.to_ascii_lowercase(), rate))
                })
                .collect::<Result<HashMap<_, _>, ConfigError>>()?;
            (
                Meter::Stripe(StripeMeter::new(rates)),
                VendorAuth::Bearer,
                ErrorEnvelope::Stripe,
            )
        }
        "openai" => (
            Meter::OpenAi(OpenAiMeter::new(prices(name, file, PriceTable::openai())?)),
            VendorAuth::Bearer,
            ErrorEnvelope::OpenAi,
        ),
        _ => (
            Meter::Anthropic(AnthropicMeter::new(prices(
                name,
                file,
                PriceTable::anthropic(),
            )?)),
            VendorAuth::Header(HeaderName::from_static("x-api-key")),
            ErrorEnvelope::Anthropic,
        ),
    };
    if name == "stripe" && !file.prices.is_empty() {
        return Err(vendor_error(name, "`prices` are for model vendors"));
    }
    Ok(Vendor {
        name: name.to_owned(),
        upstream,
        secret,
        auth,
        meter,
        methods: rest_methods(),
        free_routes: free_routes(name, file)?,
        envelope,
    })
}

/// The built-in price table with the config file's prices laid over it.
fn prices(
    vendor: &str,
    file: &VendorFile,
    mut table: PriceTable,
) -> Result<PriceTable, ConfigError> {
    for (model, price) in &file.prices {
        let amount = |field: &str, text: &str| {
            text.parse::<Usd>()
                .map_err(|e| vendor_error(vendor, format!("prices.\"{model}\".{field}: {e}")))
        };
        let input = amount("input", &price.input)?;
        table.insert(
            model.clone(),
            ModelPrice {
                input,
                cached_input: price
                    .cached_input
                    .as_deref()
                    .map_or(Ok(input), |t| amount("cached_input", t))?,
                cache_write: price
                    .cache_write
                    .as_deref()
                    .map_or(Ok(input), |t| amount("cache_write", t))?,
                output: amount("output", &price.output)?,
                max_output_tokens: price.max_output_tokens,
            },
        );
    }
    Ok(table)
}

fn free_routes(vendor: &str, file: &VendorFile) -> Result<Vec<FreeRoute>, ConfigError> {
    file.free_routes
        .iter()
        .map(|route| {
            route
                .parse()
                .map_err(|e: String| vendor_error(vendor, format!("free_routes: {e}")))
        })
        .collect()
}

fn generic_vendor(
    name: &str,
    file: &VendorFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vendor, ConfigError> {
    if RESERVED_NAMES.contains(&name)
        || name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(vendor_error(name, "a vendor name is lower-case letters, digits, `-` and `_`, and not v1, healthz, metrics or ui"));
    }
    let base = file
        .base_url
        .as_deref()
        .ok_or_else(|| vendor_error(name, "base_url is required"))?;
    let secret = secret_of(file, "", env)
        .ok_or_else(|| vendor_error(name, "set `secret` or `secret_env` (and that variable)"))?;
    let auth = match file.auth_header.as_deref() {
        None => VendorAuth::Bearer,
        Some(header) if header.eq_ignore_ascii_case("authorization") => VendorAuth::Bearer,
        Some(header) => VendorAuth::Header(
            HeaderName::try_from(header)
                .map_err(|_| vendor_error(name, format!("`{header}` is not a header name")))?,
        ),
    };
    let cost = match &file.cost_per_call_usd {
        Some(cost) => cost
            .parse::<Usd>()
            .map_err(|e| vendor_error(name, format!("cost_per_call_usd: {e}")))?,
        None => Usd::ZERO,
    };
    let methods = match &file.methods {
        None => rest_methods(),
        Some(methods) => methods
            .iter()
            .map(|m| {
                standard_method(m).ok_or_else(|| {
                    vendor_error(name, format!("`{m}` is not a method a vendor API uses"))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Vendor {
        name: name.to_owned(),
        upstream: Upstream::Url(base_url(name, base)?),
        secret,
        auth,
        meter: Meter::Flat(cost),
        methods,
        free_routes: free_routes(name, file)?,
        envelope: ErrorEnvelope::Plain,
    })
}

/// The methods a key may be limited to and a vendor may use: the standard ones that carry API
/// calls, spelled exactly in upper case.
pub fn standard_method(text: &str) -> Option<Method> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .contains(&text)
        .then(|| Method::from_bytes(text.as_bytes()).ok())
        .flatten()
}

fn secret_of(
    file: &VendorFile,
    default_env: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<SecretString> {
    if let Some(secret) = &file.secret {
        return Some(SecretString::from(secret.clone()));
    }
    let var = file.secret_env.as_deref().unwrap_or(default_env);
    (!var.is_empty())
        .then(|| env(var))
        .flatten()
        .filter(|s| !s.is_empty())
        .map(SecretString::from)
}

fn base_url(vendor: &str, text: &str) -> Result<Url, ConfigError> {
    let url =
        Url::parse(text).map_err(|e| vendor_error(vendor, format!("base_url `{text}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https")
        || url.query().is_some()
        || url.fragment().is_some()
        || url.cannot_be_a_base()
    {
        return Err(vendor_error(
            vendor,
            format!("base_url `{text}` must be an http(s) origin with an optional path"),
        ));
    }
    Ok(url)
}

fn duration_setting(name: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))
}

fn vendor_error(vendor: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Vendor {
        vendor: vendor.to_owned(),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn reconciliation_never_settles_a_call_still_in_flight() {
        let mut config = ServerConfig::new(SecretString::from("a".repeat(20)));
        assert!(config.check_timing().is_ok(), "the defaults");
        config.upstream_timeout = Duration::from_secs(60);
        config.reconcile_after = Duration::from_secs(150);
        // Headers and body may take 60 s each, and settling 30 s more.
        assert!(config.check_timing().is_err());
        config.reconcile_after = Duration::from_secs(151);
        assert!(config.check_timing().is_ok());
        config.reconcile_after = Duration::from_secs(9_999_999_999 * 86_400);
        assert!(config.check_timing().is_err(), "far past any clock");
        config.reconcile_after = Duration::from_secs(3600);
        config.reconcile_every = Duration::ZERO;
        assert!(config.check_timing().is_err());
    }

    #[test]
    fn sandbox_refuses_to_hide_a_real_secret() {
        let mut config = ServerConfig::new(SecretString::from("a".repeat(20)));
        let env = |var: &str| (var == "STRIPE_SECRET_KEY").then(|| "sk_live_x".to_owned());
        let err = config
            .apply(&ConfigFile::default(), &env, true)
            .unwrap_err();
        assert!(err.to_string().contains("--sandbox"), "{err}");
        config.apply(&ConfigFile::default(), &env, false).unwrap();
        assert!(matches!(config.vendors[0].upstream, Upstream::Url(_)));
    }

    #[test]
    fn generic_vendor_from_file() {
        let file = ConfigFile::parse(
            r#"
            [vendors.acme]
            base_url = "http://127.0.0.1:9/api"
            secret = "acme-secret"
            auth_header = "x-acme-key"
            cost_per_call_usd = "0.25"
            methods = ["GET", "POST"]
            "#,
            "test.toml",
        )
        .unwrap();
        let mut config = ServerConfig::new(SecretString::from("a".repeat(20)));
        config.apply(&file, &no_env, false).unwrap();
        let acme = config.vendors.iter().find(|v| v.name == "acme").unwrap();
        assert_eq!(
            acme.auth,
            VendorAuth::Header(HeaderName::from_static("x-acme-key"))
        );
        assert!(matches!(acme.meter, Meter::Flat(cost) if cost.micros() == 250_000));
        assert_eq!(acme.methods, vec![Method::GET, Method::POST]);
    }

    #[test]
    fn model_prices_from_the_file_replace_and_extend_the_built_in_table() {
        let file = ConfigFile::parse(
            "[vendors.openai.prices.\"gpt-4o\"]\ninput = \"5\"\noutput = \"20\"\nmax_output_tokens = 100\n\
             [vendors.openai.prices.\"my-finetune\"]\ninput = \"1\"\ncached_input = \"0.5\"\noutput = \"2\"\nmax_output_tokens = 10",
            "t.toml",
        )
        .unwrap();
        let mut config = ServerConfig::new(SecretString::from("a".repeat(20)));
        let env = |var: &str| (var == "OPENAI_API_KEY").then(|| "sk-real".to_owned());
        config.apply(&file, &env, false).unwrap();
        let openai = config.vendors.iter().find(|v| v.name == "openai").unwrap();
        let Meter::OpenAi(meter) = &openai.meter else {
            panic!("{:?}", openai.meter)
        };
        let prices = meter.prices();
        assert_eq!(prices.get("gpt-4o").unwrap().input, "5".parse().unwrap());
        assert_eq!(prices.get("gpt-4o").unwrap().max_output_tokens, 100);
        let finetune = prices.get("my-finetune").unwrap();
        assert_eq!(finetune.cached_input, "0.5".parse().unwrap());
        assert_eq!(
            finetune.cache_write, finetune.input,
            "defaults to the input price"
        );
        assert!(
            prices.get("gpt-4o-mini").is_some(),
            "the rest of the table stays"
        );
        assert_eq!(
            openai.auth,
            VendorAuth::Bearer,
            "OpenAI's SDKs send `Authorization: Bearer`"
        );
        let anthropic = config.vendors.iter().find(|v| v.name == "anthropic");
        assert!(anthropic.is_none(), "no secret, not served");
    }

    #[test]
    fn bad_vendor_entries_are_refused() {
        for toml in [
            "[vendors.v1]\nbase_url = \"http://x\"\nsecret = \"s\"",
            "[vendors.acme]\nsecret = \"s\"",
            "[vendors.acme]\nbase_url = \"http://x\"",
            "[vendors.acme]\nbase_url = \"ftp://x\"\nsecret = \"s\"",
            "[vendors.acme]\nbase_url = \"http://x\"\nsecret = \"s\"\nmethods = [\"TRACE\"]",
            "[vendors.acme]\nbase_url = \"http://x\"\nsecret = \"s\"\ncost_per_call_usd = \"-1\"",
            "[vendors.acme]\nbase_url = \"http://x\"\nsecret = \"s\"\nfree_routes = [\"GET\"]",
            "[vendors.acme]\nbase_url = \"http://x\"\nsecret = \"s\"\nfree_routes = [\"get /v1/x\"]",
            "[vendors.stripe]\nfree_routes = [\"POST /v1/../x\"]",
            "[vendors.openai.prices.\"gpt-x\"]\ninput = \"-1\"\noutput = \"1\"\nmax_output_tokens = 1",
            "[vendors.stripe.prices.\"gpt-x\"]\ninput = \"1\"\noutput = \"1\"\nmax_output_tokens = 1",
        ] {
            let file = ConfigFile::parse(toml, "t.toml").unwrap();
            let mut config = ServerConfig::new(SecretString::from("a".repeat(20)));
            assert!(config.apply(&file, &no_env, false).is_err(), "{toml}");
        }
        assert!(ConfigFile::parse("unknown_setting = 1", "t.toml").is_err());
    }
}
