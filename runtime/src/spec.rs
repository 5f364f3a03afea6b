//! What a key may do: vendor, daily cap, endpoints, methods, lifetime, label.

use std::time::Duration;

use vault_key_wire::{format_duration, CreateKeyRequest, EndpointPattern, Usd};

use crate::Error;

/// The shape of a key to issue: built by the `#[vault_key]` attribute, or by hand.
///
/// ```
/// use std::time::Duration;
/// use vault_key::KeySpec;
///
/// let spec = KeySpec::new("stripe")
///     .cap_usd(500)
///     .endpoints(["/v1/payment_intents", "/v1/payment_intents/*"])
///     .methods(["POST"])
///     .ttl(Duration::from_secs(300))
///     .label("run-42");
/// assert_eq!(spec.cap().micros(), 500_000_000);
/// spec.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    vendor: String,
    cap: Usd,
    endpoints: Vec<String>,
    methods: Option<Vec<String>>,
    ttl: Duration,
    label: String,
}

impl KeySpec {
    /// The default lifetime, as in the attribute: five minutes.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

    /// A spec for `vendor` with no cap or endpoints yet (both required), a 5-minute lifetime and
    /// the label `vault-key`.
    pub fn new(vendor: impl Into<String>) -> KeySpec {
        KeySpec {
            vendor: vendor.into(),
            cap: Usd::ZERO,
            endpoints: Vec::new(),
            methods: None,
            ttl: KeySpec::DEFAULT_TTL,
            label: "vault-key".to_owned(),
        }
    }

    /// Daily cap in whole dollars.
    #[must_use]
    pub fn cap_usd(mut self, dollars: u64) -> KeySpec {
        self.cap = Usd::from_dollars(dollars).unwrap_or(Usd::MAX);
        self
    }

    /// Daily cap as an exact amount (fractions of a dollar allowed).
    #[must_use]
    pub fn cap_exact(mut self, cap: Usd) -> KeySpec {
        self.cap = cap;
        self
    }

    /// Endpoint patterns the key may call (`*` one segment, `**` the rest).
    #[must_use]
    pub fn endpoints<I, S>(mut self, patterns: I) -> KeySpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// The only methods the key may use.
    #[must_use]
    pub fn methods<I, S>(mut self, methods: I) -> KeySpec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.methods = Some(methods.into_iter().map(Into::into).collect());
        self
    }

    /// Lifetime (whole seconds; the safety net if revocation never arrives).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> KeySpec {
        self.ttl = ttl;
        self
    }

    /// Label: names the user, run or task; bulk revocation matches its prefix.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> KeySpec {
        self.label = label.into();
        self
    }

    /// The vendor.
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    /// The daily cap.
    pub fn cap(&self) -> Usd {
        self.cap
    }

    /// The endpoint patterns.
    pub fn endpoint_patterns(&self) -> &[String] {
        &self.endpoints
    }

    /// The allowed methods, when restricted.
    pub fn allowed_methods(&self) -> Option<&[String]> {
        self.methods.as_deref()
    }

    /// The lifetime.
    pub fn lifetime(&self) -> Duration {
        self.ttl
    }

    /// The label.
    pub fn label_str(&self) -> &str {
        &self.label
    }

    /// Checks what can be checked without the server: a positive cap, at least one well-formed
    /// pattern, a lifetime of at least a second, a non-empty label.
    pub fn validate(&self) -> Result<(), Error> {
        if self.vendor.is_empty() {
            return Err(Error::InvalidSpec("the vendor is empty".to_owned()));
        }
        if self.cap.is_zero() {
            return Err(Error::InvalidSpec(
                "the daily cap must be more than zero".to_owned(),
            ));
        }
        if self.endpoints.is_empty() {
            return Err(Error::InvalidSpec(
                "at least one endpoint pattern is required".to_owned(),
            ));
        }
        for pattern in &self.endpoints {
            pattern
                .parse::<EndpointPattern>()
                .map_err(|e| Error::InvalidSpec(e.to_string()))?;
        }
        if self.ttl.as_secs() == 0 {
            return Err(Error::InvalidSpec(
                "the lifetime must be at least one second".to_owned(),
            ));
        }
        if self.label.is_empty() {
            return Err(Error::InvalidSpec("the label is empty".to_owned()));
        }
        Ok(())
    }

    pub(crate) fn to_request(&self) -> CreateKeyRequest {
        CreateKeyRequest {
            label: self.label.clone(),
            vendor: self.vendor.clone(),
            daily_usd_cap: self.cap,
            allowed_endpoints: self.endpoints.clone(),
            expires_in: format_duration(Duration::from_secs(self.ttl.as_secs())),
            allowed_methods: self.methods.clone(),
        }
    }
}
