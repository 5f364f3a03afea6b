//! The key guard: a vault key that revokes itself when its last owner lets go.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use url::Url;
use vault_key_wire::{ErrorBody, IssuedKey, TokenPlacement, ERROR_HEADER};

use crate::client::{endpoint, Client};
use crate::revoke::{self, RevokeJob};
use crate::Error;

/// A vault key: scoped, short-lived, and revoked once its last owner drops it.
///
/// The key is not `Clone` (a cloned guard would revoke twice, or too early): share it as
/// `Arc<VaultKey>`. Its token is a [`SecretString`]: zeroed on drop, never shown by `Debug`.
///
/// ```no_run
/// # async fn run(client: vault_key::Client) -> Result<(), vault_key::Error> {
/// use vault_key::{KeySpec, ResponseExt};
///
/// let key = client
///     .issue(&KeySpec::new("stripe").cap_usd(500).endpoints(["/v1/payment_intents"]))
///     .await?;
/// let intent = key
///     .post("/v1/payment_intents")
///     .form(&[("amount", "1000"), ("currency", "usd")])
///     .send()
///     .await?
///     .error_for_refusal() // 429 cap_exhausted → Err(Error::CapExhausted { .. })
///     .await?;
/// # let _ = intent;
/// key.revoke().await?; // or just drop it: revoked in the background
/// # Ok(()) }
/// ```
pub struct VaultKey {
    id: String,
    token: SecretString,
    label: String,
    vendor: String,
    expires_at: OffsetDateTime,
    /// Where the proxy expects the token for this key's vendor, as the server said at issue.
    placement: TokenPlacement,
    client: Client,
    /// Set once revocation has reached the server, so that the drop does nothing more.
    revoked: AtomicBool,
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKey")
            .field("id", &self.id)
            .field("label", &self.label)
            .field("vendor", &self.vendor)
            .field("expires_at", &self.expires_at)
            .field("token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl VaultKey {
    pub(crate) fn new(client: Client, issued: IssuedKey) -> VaultKey {
        VaultKey {
            id: issued.id,
            token: SecretString::from(issued.token),
            label: issued.label,
            vendor: issued.vendor,
            expires_at: issued.expires_at,
            placement: issued.token_placement,
            client,
            revoked: AtomicBool::new(false),
        }
    }

    /// A key minted in-process from the client's grant, as the caveats describe it.
    pub(crate) fn minted(
        client: Client,
        caveats: vault_key_wire::KeyCaveats,
        token: String,
        placement: TokenPlacement,
    ) -> VaultKey {
        VaultKey {
            id: caveats.key_id,
            token: SecretString::from(token),
            label: caveats.label,
            vendor: caveats.vendor,
            expires_at: OffsetDateTime::from_unix_timestamp(caveats.expires_at)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            placement,
            client,
            revoked: AtomicBool::new(false),
        }
    }

    /// The public id (`key_…`): safe to log.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret token (`vk_…`), for SDKs that take an API key. Expose it only to hand it on.
    ///
    /// ```no_run
    /// # fn run(key: &vault_key::VaultKey) {
    /// use vault_key::ExposeSecret;
    ///
    /// let api_key: &str = key.token().expose_secret(); // what the SDK sends as its key
    /// println!("{:?}", key.token()); // prints a redaction, never the token
    /// # let _ = api_key; }
    /// ```
    pub fn token(&self) -> &SecretString {
        &self.token
    }

    /// The label it was issued with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The vendor it was issued for.
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    /// When it stops working, revoked or not.
    pub fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }

    /// The base URL to give a vendor SDK: `<proxy>/<vendor>/`, with the trailing slash that SDKs
    /// join their paths onto (`…/stripe/` + `v1/payment_intents`).
    ///
    /// ```no_run
    /// # fn run(key: &vault_key::VaultKey) {
    /// use vault_key::ExposeSecret;
    ///
    /// // async-stripe 1.0, unchanged (tested end to end in the repository's `tests/stripe_sdk.rs`):
    /// // let stripe = stripe::ClientBuilder::new(key.token().expose_secret())
    /// //     .url(key.base_url())
    /// //     .build()?;
    /// assert!(key.base_url().as_str().ends_with("/stripe/"));
    /// # }
    /// ```
    pub fn base_url(&self) -> Url {
        endpoint(self.client.proxy_url(), &[&self.vendor, ""])
    }

    /// The proxy URL of a vendor path (`/v1/payment_intents`, optionally with a query).
    pub fn url(&self, path: &str) -> Url {
        let mut url = self.base_url();
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let full = format!("{}{}", url.path().trim_end_matches('/'), path);
        url.set_path(&full);
        url.set_query(query);
        url
    }

    /// An [`async_openai`] configuration aimed at the proxy with this key's token: a client built
    /// from it is the unmodified SDK, metered and capped by this key.
    ///
    /// ```no_run
    /// # async fn run(key: &vault_key::VaultKey) -> Result<(), Box<dyn std::error::Error>> {
    /// use async_openai::types::chat::{
    ///     ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    /// };
    ///
    /// let openai = async_openai::Client::with_config(key.openai_config());
    /// let request = CreateChatCompletionRequestArgs::default()
    ///     .model("gpt-4o-mini")
    ///     .max_completion_tokens(200u32) // bounds what the call reserves against the cap
    ///     .messages([ChatCompletionRequestUserMessageArgs::default().content("hi").build()?.into()])
    ///     .build()?;
    /// let answer = openai.chat().create(request).await?;
    /// # let _ = answer; Ok(()) }
    /// ```
    #[cfg(feature = "async-openai")]
    pub fn openai_config(&self) -> async_openai::config::OpenAIConfig {
        async_openai::config::OpenAIConfig::new()
            // The SDK joins `/chat/completions` onto a base that ends in `/v1`.
            .with_api_base(format!("{}v1", self.base_url()))
            .with_api_key(self.token.expose_secret())
    }

    /// A request through the proxy with this key's token where the vendor's SDK would put it.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let (header, value) = self.credential();
        self.client
            .http()
            .request(method, self.url(path))
            .header(header, value)
    }

    /// `GET` through the proxy.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// `POST` through the proxy.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// `PUT` through the proxy.
    pub fn put(&self, path: &str) -> RequestBuilder {
        self.request(Method::PUT, path)
    }

    /// `PATCH` through the proxy.
    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    /// `DELETE` through the proxy.
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }

    fn credential(&self) -> (HeaderName, HeaderValue) {
        // The server validated both at issue; a header it named is always a valid name, and a
        // base62 token with its prefix is always a valid value.
        let name = HeaderName::from_bytes(self.placement.header.as_bytes())
            .unwrap_or(reqwest::header::AUTHORIZATION);
        let mut value = HeaderValue::from_str(&self.placement.value(self.token.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        (name, value)
    }

    /// Revokes the key now and waits for the server to confirm. If that fails, the key is
    /// still revoked in the background (retried), and the error says why the wait failed.
    ///
    /// ```no_run
    /// # async fn run(key: vault_key::VaultKey) {
    /// if let Err(error) = key.revoke().await {
    ///     // Not confirmed yet; the background revoker keeps trying until the key expires.
    ///     eprintln!("revocation pending: {error}");
    /// }
    /// # }
    /// ```
    pub async fn revoke(self) -> Result<(), Error> {
        self.revoke_in_place().await
    }

    /// Revokes while other owners may still hold the key (`revoke = "await"` of the attribute):
    /// their calls are refused from now on, and the final drop sends nothing more.
    pub(crate) async fn revoke_in_place(&self) -> Result<(), Error> {
        let client = &self.client;
        let answer = revoke::revoke_keys(
            client.http(),
            client.api_url(),
            client.credential(),
            vec![self.id.clone()],
        )
        .await?;
        if answer.revoked() {
            self.revoked.store(true, Ordering::Release);
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "revoking {} was answered HTTP {}",
                self.id, answer.status
            )))
        }
    }
}

impl Drop for VaultKey {
    fn drop(&mut self) {
        if self.revoked.load(Ordering::Acquire) {
            return;
        }
        // Never blocks, never needs a runtime: the revoker thread takes it from here.
        revoke::enqueue(RevokeJob {
            api_url: self.client.api_url().clone(),
            credential: self.client.credential().clone(),
            key_id: std::mem::take(&mut self.id),
            expires_at: self.expires_at,
            client_pending: self.client.pending().clone(),
        });
    }
}

/// Turns the proxy's own refusals into [`Error`]s.
///
/// ```no_run
/// # async fn run(key: &vault_key::VaultKey) -> Result<(), vault_key::Error> {
/// use vault_key::{Error, ResponseExt};
///
/// let response = key.get("/v1/customers").send().await?;
/// match response.error_for_refusal().await {
///     Ok(vendor_answer) => println!("Stripe said {}", vendor_answer.status()),
///     Err(Error::CapExhausted { cap, spent, .. }) => println!("${spent} of ${cap} spent today"),
///     Err(refused) => println!("the proxy refused: {refused}"),
/// }
/// # Ok(()) }
/// ```
pub trait ResponseExt: Sized {
    /// `Err` when the vault-key proxy refused the call (cap exhausted, endpoint not allowed, …);
    /// every answer from the vendor itself, success or error, passes through as `Ok`.
    fn error_for_refusal(self) -> impl Future<Output = Result<Response, Error>> + Send;
}

impl ResponseExt for Response {
    async fn error_for_refusal(self) -> Result<Response, Error> {
        if !self.headers().contains_key(ERROR_HEADER) {
            return Ok(self);
        }
        let status = self.status().as_u16();
        let body: ErrorBody = self.json().await?;
        Err(Error::from_refusal(status, body))
    }
}
