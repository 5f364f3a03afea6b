//! The vendors the proxy can reach: where each one lives, where its secret goes, which methods
//! its API uses and how its calls are metered.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::meter::Meter;

/// Where a vendor's SDK puts its key, and so where the proxy finds the vault token and puts the
/// real secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VendorAuth {
    /// `Authorization: Bearer …` (Stripe, OpenAI).
    Bearer,
    /// The secret alone in a header of its own (`x-api-key` for Anthropic).
    Header(HeaderName),
}

impl VendorAuth {
    /// The header that carries the credential.
    pub fn header(&self) -> HeaderName {
        match self {
            VendorAuth::Bearer => http::header::AUTHORIZATION,
            VendorAuth::Header(name) => name.clone(),
        }
    }

    /// Sets the vendor's real secret on an upstream request.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        secret: &SecretString,
    ) -> Result<(), http::header::InvalidHeaderValue> {
        let value = match self {
            VendorAuth::Bearer => format!("Bearer {}", secret.expose_secret()),
            VendorAuth::Header(_) => secret.expose_secret().to_owned(),
        };
        let mut value = HeaderValue::try_from(value)?;
        // Sensitive values print as "Sensitive" in any `Debug` of the headers.
        value.set_sensitive(true);
        headers.insert(self.header(), value);
        Ok(())
    }
}

/// Where a vendor's requests go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A real (or configured) base URL.
    Url(Url),
    /// The built-in stand-in of `--sandbox`, whose address is known once it listens.
    Sandbox,
}

/// One vendor as configured.
#[derive(Debug, Clone)]
pub struct Vendor {
    /// First path segment of proxied requests and the `vendor` of keys (`stripe`).
    pub name: String,
    /// Where requests go.
    pub upstream: Upstream,
    /// The real secret.
    pub secret: SecretString,
    /// Where the credential goes.
    pub auth: VendorAuth,
    /// Cost model.
    pub meter: Meter,
    /// Methods the vendor's API uses; others are `405 method_not_allowed` whatever a key allows.
    pub methods: Vec<Method>,
}

/// The secret the sandbox expects: the proxy must swap the vault token for this.
pub const SANDBOX_SECRET: &str = "sk_test_vaultkey_sandbox";

/// Names that can never be vendors because the server's own routes use them.
pub const RESERVED_NAMES: &[&str] = &["v1", "healthz", "metrics"];

/// The methods a REST vendor API uses.
pub fn rest_methods() -> Vec<Method> {
    vec![Method::GET, Method::POST, Method::DELETE]
}
