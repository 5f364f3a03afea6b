//! The client: where the vault-key server is, and how to ask it for keys.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use url::Url;
use vault_key_wire::{
    parse_duration, ErrorBody, GrantCredential, IssuedKey, KeyCaveats, PatternError, ServerInfo,
};

use crate::key::VaultKey;
use crate::revoke;
use crate::{Error, KeySpec};

/// A handle on one vault-key server: its admin API, its proxy, and an HTTP client. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), vault_key::Error> {
/// use vault_key::{Client, KeySpec};
///
/// let client = Client::from_env()?; // VAULT_KEY_URL, VAULT_KEY_ADMIN_TOKEN
/// vault_key::init(client.clone());  // the default the attribute uses
/// let key = client.issue(&KeySpec::new("stripe").cap_usd(5).endpoints(["/v1/customers"])).await?;
/// let customers = key.get("/v1/customers").send().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    api_url: Url,
    proxy_url: Url,
    credential: Credential,
    http: reqwest::Client,
    pending: revoke::PendingCount,
    /// What the server serves, read once (a grant's client needs each vendor's token placement
    /// to mint, and asks at its first mint only).
    info: tokio::sync::OnceCell<ServerInfo>,
}

/// What a client acts with: the admin token (keys issued by the server), or a grant (keys
/// minted in-process, no server contact on entry). Secrets never show in `Debug`.
#[derive(Clone)]
pub(crate) enum Credential {
    /// Issues keys with `POST /v1/keys`.
    Admin(SecretString),
    /// Mints keys from this grant.
    Grant(GrantCredential),
}

impl Credential {
    /// Whether two credentials are the same (revocations are batched per server and credential).
    pub(crate) fn same_as(&self, other: &Credential) -> bool {
        match (self, other) {
            (Credential::Admin(a), Credential::Admin(b)) => a.expose_secret() == b.expose_secret(),
            (Credential::Grant(a), Credential::Grant(b)) => {
                a.id() == b.id() && a.secret() == b.secret()
            }
            _ => false,
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Admin(_) => f.write_str("Admin([redacted])"),
            Credential::Grant(grant) => write!(f, "Grant({})", grant.id()),
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api_url", &self.inner.api_url.as_str())
            .field("proxy_url", &self.inner.proxy_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`].
///
/// ```
/// use std::time::Duration;
///
/// let client = vault_key::Client::builder("http://127.0.0.1:8787", "admin-token")
///     .proxy_url("http://127.0.0.1:8788") // when the proxy listens elsewhere
///     .timeout(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// assert_eq!(client.proxy_url().as_str(), "http://127.0.0.1:8788/");
/// ```
#[derive(Debug)]
pub struct ClientBuilder {
    api_url: String,
    proxy_url: Option<String>,
    credential: BuilderCredential,
    timeout: Duration,
    connect_timeout: Duration,
}

/// A credential as given to the builder, read when it builds.
#[derive(Debug)]
enum BuilderCredential {
    Admin(SecretString),
    Grant(SecretString),
}

impl ClientBuilder {
    /// Where the proxy is, when not on the same server as the admin API.
    #[must_use]
    pub fn proxy_url(mut self, url: impl Into<String>) -> ClientBuilder {
        self.proxy_url = Some(url.into());
        self
    }

    /// Time limit of issuing a key and of each proxied call (default 60 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// Time limit for connecting (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, Error> {
        let api_url = base_url(&self.api_url)?;
        let proxy_url = match &self.proxy_url {
            Some(url) => base_url(url)?,
            None => api_url.clone(),
        };
        let credential = match self.credential {
            BuilderCredential::Admin(token) if token.expose_secret().is_empty() => {
                return Err(Error::NotConfigured("the admin token is empty".to_owned()))
            }
            BuilderCredential::Admin(token) => Credential::Admin(token),
            BuilderCredential::Grant(token) => Credential::Grant(
                GrantCredential::parse(token.expose_secret())
                    .map_err(|e| Error::NotConfigured(format!("the grant credential: {e}")))?,
            ),
        };
        // No redirects: neither the key service nor the proxy sends one, and one followed would
        // turn a revocation's DELETE into a GET that answers 200 (or carry a token elsewhere).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| Error::NotConfigured(format!("cannot build the HTTP client: {e}")))?;
        revoke::ensure_started();
        Ok(Client {
            inner: Arc::new(ClientInner {
                api_url,
                proxy_url,
                credential,
                http,
                pending: revoke::PendingCount::default(),
                info: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

fn base_url(text: &str) -> Result<Url, Error> {
    let url = Url::parse(text)
        .map_err(|e| Error::NotConfigured(format!("`{text}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.query().is_some()
    {
        return Err(Error::NotConfigured(format!(
            "`{text}` is not an http(s) base URL"
        )));
    }
    Ok(url)
}

/// `base` with `segments` appended as path segments (each escaped as needed).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

impl Client {
    /// A builder for the server at `url` (admin API and proxy), with its admin token.
    pub fn builder(url: impl Into<String>, admin_token: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            api_url: url.into(),
            proxy_url: None,
            credential: BuilderCredential::Admin(SecretString::from(admin_token.into())),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A builder for the server at `url` that mints its keys from a grant (`vkg_…`, from
    /// `POST /v1/grants`): no admin token, and no server contact when a key is made.
    pub fn grant_builder(url: impl Into<String>, grant: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            api_url: url.into(),
            proxy_url: None,
            credential: BuilderCredential::Grant(SecretString::from(grant.into())),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// A client for the server at `url` with default timeouts.
    pub fn new(url: impl Into<String>, admin_token: impl Into<String>) -> Result<Client, Error> {
        Client::builder(url, admin_token).build()
    }

    /// A client from `VAULT_KEY_URL` (or `VAULT_KEY_API_URL` and `VAULT_KEY_PROXY_URL`) and
    /// either `VAULT_KEY_ADMIN_TOKEN` (keys issued by the server) or `VAULT_KEY_GRANT` (keys
    /// minted in-process from a grant).
    pub fn from_env() -> Result<Client, Error> {
        Client::from_lookup(|name| std::env::var(name).ok())
    }

    pub(crate) fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Client, Error> {
        let credential = match (
            env("VAULT_KEY_ADMIN_TOKEN").filter(|t| !t.is_empty()),
            env("VAULT_KEY_GRANT").filter(|t| !t.is_empty()),
        ) {
            (Some(token), None) => BuilderCredential::Admin(SecretString::from(token)),
            (None, Some(grant)) => BuilderCredential::Grant(SecretString::from(grant)),
            (Some(_), Some(_)) => {
                return Err(Error::NotConfigured(
                    "set VAULT_KEY_ADMIN_TOKEN or VAULT_KEY_GRANT, not both".to_owned(),
                ))
            }
            (None, None) => {
                return Err(Error::NotConfigured(
                    "set VAULT_KEY_ADMIN_TOKEN (or VAULT_KEY_GRANT to mint keys from a grant)"
                        .to_owned(),
                ))
            }
        };
        let (api, proxy) = match (
            env("VAULT_KEY_URL"),
            env("VAULT_KEY_API_URL"),
            env("VAULT_KEY_PROXY_URL"),
        ) {
            (_, Some(api), Some(proxy)) => (api, Some(proxy)),
            (Some(url), None, None) => (url, None),
            (Some(url), api, proxy) => (
                api.unwrap_or_else(|| url.clone()),
                Some(proxy.unwrap_or(url)),
            ),
            (None, _, _) => {
                return Err(Error::NotConfigured(
                    "set VAULT_KEY_URL (or VAULT_KEY_API_URL and VAULT_KEY_PROXY_URL)".to_owned(),
                ))
            }
        };
        let mut builder = Client::builder(api, "");
        builder.credential = credential;
        if let Some(proxy) = proxy {
            builder = builder.proxy_url(proxy);
        }
        builder.build()
    }

    /// The admin API's base URL.
    pub fn api_url(&self) -> &Url {
        &self.inner.api_url
    }

    /// The proxy's base URL.
    pub fn proxy_url(&self) -> &Url {
        &self.inner.proxy_url
    }

    /// Issues a key. It is revoked when its last owner drops it, or by [`VaultKey::revoke`].
    ///
    /// ```no_run
    /// # async fn run(client: vault_key::Client) -> Result<(), vault_key::Error> {
    /// use vault_key::{Error, KeySpec};
    ///
    /// let spec = KeySpec::new("stripe").cap_usd(50).endpoints(["/v1/customers"]).label("run-7");
    /// match client.issue(&spec).await {
    ///     Ok(key) => println!("issued {}", key.id()),
    ///     Err(Error::IssueRefused { code, field, .. }) => eprintln!("refused: {code} ({field:?})"),
    ///     Err(other) => return Err(other), // server unreachable, …
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn issue(&self, spec: &KeySpec) -> Result<VaultKey, Error> {
        spec.validate()?;
        let admin_token = match &self.inner.credential {
            Credential::Admin(_) if crate::run::current_run().is_some() => {
                // Issued outside the run, its key would escape the run's budget: refused.
                return Err(Error::NotConfigured(
                    "a run budget is in scope, and this client issues keys with the admin token: \
                     runs are minted from a grant"
                        .to_owned(),
                ));
            }
            Credential::Admin(token) => token,
            Credential::Grant(grant) => return self.mint(grant, spec).await,
        };
        let response = self
            .inner
            .http
            .post(endpoint(&self.inner.api_url, &["v1", "keys"]))
            .bearer_auth(admin_token.expose_secret())
            .json(&spec.to_request())
            .send()
            .await
            .map_err(|e| Error::Unavailable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::Unavailable(e.without_url().to_string()))?;
        if status != 201 {
            return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => Error::IssueRefused {
                    status,
                    code: error.code,
                    message: error.message,
                    field: error.field,
                },
                Err(_) => Error::Unavailable(format!(
                    "POST /v1/keys answered HTTP {status} without an error body"
                )),
            });
        }
        let issued: IssuedKey = serde_json::from_slice(&body).map_err(|e| {
            Error::Unavailable(format!("POST /v1/keys answered an unexpected body: {e}"))
        })?;
        Ok(VaultKey::new(self.clone(), issued))
    }

    /// Mints a key from the grant: no server contact (past the first mint, which reads where
    /// each vendor's token goes). Whether it fits the grant, the proxy judges at its first use.
    async fn mint(&self, grant: &GrantCredential, spec: &KeySpec) -> Result<VaultKey, Error> {
        // Inside a run, the key is the run's: labelled under it, minted from it, ending with it.
        let run = crate::run::current_run();
        if let Some(run) = &run {
            if run.credential().grant_id() != grant.id() {
                return Err(Error::NotConfigured(format!(
                    "a run of grant {} is in scope, and this client mints from grant {}",
                    run.credential().grant_id(),
                    grant.id()
                )));
            }
        }
        let info = self.inner.info.get_or_try_init(|| self.info()).await?;
        let placement = info
            .vendors
            .iter()
            .find(|v| v.name == spec.vendor())
            .map(|v| v.token_placement.clone())
            .ok_or_else(|| {
                Error::InvalidSpec(format!("the server serves no vendor `{}`", spec.vendor()))
            })?;
        let label = match &run {
            Some(run) => run.label_for(spec.label_str()),
            None => spec.label_str().to_owned(),
        };
        let issued_at = OffsetDateTime::now_utc();
        let mut expires_at = issued_at + spec.lifetime();
        if let Some(run) = &run {
            expires_at = expires_at.min(run.ends_at());
        }
        let caveats = KeyCaveats {
            grant_id: grant.id().to_owned(),
            key_id: format!("key_{}", Alphanumeric.sample_string(&mut rand::rng(), 22)),
            label,
            vendor: spec.vendor().to_owned(),
            daily_cap_micros: spec.cap().micros(),
            allowed_endpoints: spec
                .endpoint_patterns()
                .iter()
                .map(|p| {
                    p.parse()
                        .map_err(|e: PatternError| Error::InvalidSpec(e.to_string()))
                })
                .collect::<Result<_, _>>()?,
            allowed_methods: spec.allowed_methods().map(<[String]>::to_vec),
            issued_at: issued_at.unix_timestamp(),
            expires_at: expires_at.unix_timestamp(),
        };
        let token = match &run {
            Some(run) => run.credential().mint(&caveats),
            None => grant.mint(&caveats),
        };
        Ok(VaultKey::minted(self.clone(), caveats, token, placement))
    }

    /// What the server serves: its vendors (and where each one's token goes), its longest key
    /// lifetime and its version (`GET /v1/info`, no authentication).
    pub async fn info(&self) -> Result<ServerInfo, Error> {
        let response = self
            .inner
            .http
            .get(endpoint(&self.inner.api_url, &["v1", "info"]))
            .send()
            .await
            .map_err(|e| Error::Unavailable(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(Error::Unavailable(format!(
                "GET /v1/info answered HTTP {}",
                response.status()
            )));
        }
        response.json().await.map_err(|e| {
            Error::Unavailable(format!("GET /v1/info answered an unexpected body: {e}"))
        })
    }

    /// Checks a spec against what this server allows — a vendor it serves, a lifetime within its
    /// limit, methods that vendor uses — so that a key that can never be issued is found once at
    /// start-up rather than at the first call.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), vault_key::Error> {
    /// use vault_key::{Client, KeySpec};
    ///
    /// let client = Client::from_env()?;
    /// let spec = KeySpec::new("stripe").cap_usd(500).endpoints(["/v1/payment_intents"]);
    /// client.check(&spec).await?; // Err(InvalidSpec("… serves no vendor `strpe` …")) on a typo
    /// # Ok(()) }
    /// ```
    pub async fn check(&self, spec: &KeySpec) -> Result<(), Error> {
        spec.validate()?;
        let info = self.info().await?;
        check_against(spec, &info)
    }

    /// Waits until every key issued by this client (or its clones) and dropped so far has been
    /// revoked on the server (or given up on: see [`crate::flush`]).
    pub async fn flush(&self) {
        self.inner.pending.wait_for_zero().await;
    }

    /// How many of this client's revocations are queued or in flight.
    ///
    /// ```
    /// let client = vault_key::Client::new("http://127.0.0.1:8787", "admin-token").unwrap();
    /// assert_eq!(client.pending_revocations(), 0); // nothing issued, nothing to revoke
    /// ```
    pub fn pending_revocations(&self) -> usize {
        self.inner.pending.get()
    }

    /// Call before the process exits: waits for this client's pending revocations.
    pub async fn shutdown(&self) {
        self.flush().await;
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn credential(&self) -> &Credential {
        &self.inner.credential
    }

    pub(crate) fn pending(&self) -> &revoke::PendingCount {
        &self.inner.pending
    }
}

/// The server-dependent half of [`Client::check`].
fn check_against(spec: &KeySpec, info: &ServerInfo) -> Result<(), Error> {
    let Some(vendor) = info.vendors.iter().find(|v| v.name == spec.vendor()) else {
        let served: Vec<&str> = info.vendors.iter().map(|v| v.name.as_str()).collect();
        return Err(Error::InvalidSpec(format!(
            "the server serves no vendor `{}`; it serves: {}",
            spec.vendor(),
            served.join(", ")
        )));
    };
    let max_ttl = parse_duration(&info.max_key_ttl).map_err(|e| {
        Error::Unavailable(format!("GET /v1/info gave an unreadable max_key_ttl: {e}"))
    })?;
    if spec.lifetime() > max_ttl {
        return Err(Error::InvalidSpec(format!(
            "a lifetime of {} is longer than the server allows ({})",
            vault_key_wire::format_duration(spec.lifetime()),
            info.max_key_ttl
        )));
    }
    if let Some(method) = spec
        .allowed_methods()
        .unwrap_or_default()
        .iter()
        .find(|m| !vendor.methods.contains(m))
    {
        return Err(Error::InvalidSpec(format!(
            "{} does not use the method `{method}`; it uses: {}",
            vendor.name,
            vendor.methods.join(", ")
        )));
    }
    Ok(())
}

static DEFAULT: RwLock<Option<Client>> = RwLock::new(None);

/// Sets the process default client, the one the `#[vault_key]` attribute uses unless told
/// otherwise. Calling it again replaces the default.
///
/// ```
/// let client = vault_key::Client::new("http://127.0.0.1:8787", "admin-token").unwrap();
/// vault_key::init(client);
/// assert_eq!(vault_key::default_client().unwrap().api_url().as_str(), "http://127.0.0.1:8787/");
/// ```
pub fn init(client: Client) {
    *DEFAULT.write().unwrap_or_else(PoisonError::into_inner) = Some(client);
}

/// The process default client: the one given to [`init`], or else one built from the environment
/// ([`Client::from_env`]) on first use.
///
/// ```no_run
/// # async fn run() -> Result<(), vault_key::Error> {
/// // With VAULT_KEY_URL and VAULT_KEY_ADMIN_TOKEN set, and no `init` call:
/// let client = vault_key::default_client()?;
/// let key = client
///     .issue(&vault_key::KeySpec::new("stripe").cap_usd(5).endpoints(["/v1/customers"]))
///     .await?;
/// # Ok(()) }
/// ```
pub fn default_client() -> Result<Client, Error> {
    if let Some(client) = DEFAULT
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    {
        return Ok(client);
    }
    let client = Client::from_env()?;
    let mut default = DEFAULT.write().unwrap_or_else(PoisonError::into_inner);
    Ok(default.get_or_insert(client).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn from_env_reads_one_url_or_two() {
        let one = Client::from_lookup(env(&[
            ("VAULT_KEY_URL", "http://127.0.0.1:8787"),
            ("VAULT_KEY_ADMIN_TOKEN", "t"),
        ]))
        .unwrap();
        assert_eq!(one.api_url().as_str(), "http://127.0.0.1:8787/");
        assert_eq!(one.proxy_url(), one.api_url());
        let two = Client::from_lookup(env(&[
            ("VAULT_KEY_API_URL", "http://admin:1"),
            ("VAULT_KEY_PROXY_URL", "http://proxy:2"),
            ("VAULT_KEY_ADMIN_TOKEN", "t"),
        ]))
        .unwrap();
        assert_eq!(two.proxy_url().as_str(), "http://proxy:2/");
    }

    #[test]
    fn from_env_says_what_is_missing() {
        let no_token = Client::from_lookup(env(&[("VAULT_KEY_URL", "http://x")])).unwrap_err();
        assert!(
            no_token.to_string().contains("VAULT_KEY_ADMIN_TOKEN"),
            "{no_token}"
        );
        let no_url = Client::from_lookup(env(&[("VAULT_KEY_ADMIN_TOKEN", "t")])).unwrap_err();
        assert!(no_url.to_string().contains("VAULT_KEY_URL"), "{no_url}");
        let bad_url = Client::from_lookup(env(&[
            ("VAULT_KEY_URL", "ftp://x"),
            ("VAULT_KEY_ADMIN_TOKEN", "t"),
        ]))
        .unwrap_err();
        assert!(matches!(bad_url, Error::NotConfigured(_)));
    }

    #[test]
    fn endpoint_appends_segments_to_a_base_with_a_path() {
        let base = Url::parse("http://h/prefix/").unwrap();
        assert_eq!(
            endpoint(&base, &["v1", "keys", "key_1"]).as_str(),
            "http://h/prefix/v1/keys/key_1"
        );
    }

    #[test]
    fn specs_are_checked_against_what_the_server_serves() {
        let info = ServerInfo {
            version: "0.1.0".to_owned(),
            max_key_ttl: "1h".to_owned(),
            vendors: vec![vault_key_wire::VendorInfo {
                name: "stripe".to_owned(),
                token_placement: vault_key_wire::TokenPlacement::bearer(),
                methods: vec!["GET".to_owned(), "POST".to_owned(), "DELETE".to_owned()],
            }],
        };
        let spec = KeySpec::new("stripe").cap_usd(5).endpoints(["/v1/x"]);
        check_against(&spec, &info).unwrap();
        let typo = check_against(&KeySpec::new("strpe").cap_usd(5), &info).unwrap_err();
        assert!(typo.to_string().contains("serves: stripe"), "{typo}");
        let long = spec.clone().ttl(Duration::from_secs(7200));
        let long = check_against(&long, &info).unwrap_err();
        assert!(long.to_string().contains("(1h)"), "{long}");
        let put = check_against(&spec.methods(["PUT"]), &info).unwrap_err();
        assert!(put.to_string().contains("`PUT`"), "{put}");
    }

    #[test]
    fn debug_never_shows_the_admin_token() {
        let client = Client::new("http://127.0.0.1:1", "super-secret-admin").unwrap();
        assert!(!format!("{client:?}").contains("super-secret-admin"));
    }
}
