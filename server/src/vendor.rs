//! The vendors the proxy can reach: where each one lives, where its secret goes, which methods
//! its API uses and how its calls are metered.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use secrecy::{ExposeSecret, SecretString};
use url::Url;
use vault_key_wire::{EndpointPattern, TokenPlacement};

use crate::meter::{Estimate, ForwardRequest, Meter, Unmeterable};

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

    /// Where a vault token for this vendor goes, as told to clients at issue.
    pub fn placement(&self) -> TokenPlacement {
        match self {
            VendorAuth::Bearer => TokenPlacement::bearer(),
            VendorAuth::Header(name) => TokenPlacement::header(name.as_str()),
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
    /// Routes an operator declared free, for routes the meter does not know.
    pub free_routes: Vec<FreeRoute>,
    /// How refusals on this vendor's routes are wrapped for its SDKs.
    pub envelope: ErrorEnvelope,
}

impl Vendor {
    /// The meter's estimate, with the operator's free routes applied to routes the meter does
    /// not know (never to a route it meters or refuses for a reason).
    pub fn estimate(&self, request: &ForwardRequest) -> Result<Estimate, Unmeterable> {
        let declared_free = || self.free_routes.iter().any(|r| r.matches(request));
        match &self.meter {
            // A flat-cost vendor knows nothing of its routes: declared free routes come first.
            Meter::Flat(_) if declared_free() => Ok(Estimate::FREE),
            meter => match meter.estimate(request) {
                Err(Unmeterable::UnknownRoute(_)) if declared_free() => Ok(Estimate::FREE),
                other => other,
            },
        }
    }
}

/// A `METHOD /pattern` an operator declared free (`free_routes = ["GET /v1/**"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreeRoute {
    /// The method, exactly.
    pub method: Method,
    /// The paths.
    pub pattern: EndpointPattern,
}

impl FreeRoute {
    fn matches(&self, request: &ForwardRequest) -> bool {
        self.method == request.method && self.pattern.matches_path(&request.path)
    }
}

impl std::str::FromStr for FreeRoute {
    type Err = String;

    fn from_str(text: &str) -> Result<FreeRoute, String> {
        let (method, pattern) = text
            .split_once(' ')
            .ok_or_else(|| format!("`{text}` is not `METHOD /pattern`"))?;
        let method = crate::config::standard_method(method)
            .ok_or_else(|| format!("`{method}` is not a method a vendor API uses"))?;
        let pattern = pattern.parse().map_err(|e| format!("`{pattern}`: {e}"))?;
        Ok(FreeRoute { method, pattern })
    }
}

/// How the proxy wraps its refusals on a vendor's routes, so that the vendor's own SDK reads them
/// as typed errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorEnvelope {
    /// Our body alone.
    Plain,
    /// Also Stripe's `{"error": {type, code, message}}` and `Stripe-Should-Retry`.
    Stripe,
    /// Also OpenAI's `{"error": {message, type, param, code}}`.
    OpenAi,
    /// Also Anthropic's `{"type": "error", "error": {type, message}}`.
    Anthropic,
}

/// The secret the sandbox expects: the proxy must swap the vault token for this.
pub const SANDBOX_SECRET: &str = "sk_test_vaultkey_sandbox";

/// Names that can never be vendors because the server's own routes use them.
pub const RESERVED_NAMES: &[&str] = &["v1", "healthz", "metrics", "ui"];

/// The methods a REST vendor API uses.
pub fn rest_methods() -> Vec<Method> {
    vec![Method::GET, Method::POST, Method::DELETE]
}
