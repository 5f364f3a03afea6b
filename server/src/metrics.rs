//! Prometheus metrics, one registry per server so that several servers can share a process.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use vault_key_wire::ErrorCode;

use crate::store::KeyCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VendorLabel {
    vendor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormLabel {
    form: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    keys_issued: Counter,
    keys_revoked: Counter,
    revocation_requests: Family<FormLabel, Counter>,
    keys_by_status: Family<StatusLabel, Gauge>,
    key_cache_in_use: Gauge,
    reconciled: Counter,
    denials: Family<CodeLabel, Counter>,
    spend_micros: Family<VendorLabel, Counter>,
    proxy_latency: Family<VendorLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vault_key");
        let keys_issued = Counter::default();
        registry.register("keys_issued", "Keys issued", keys_issued.clone());
        let keys_revoked = Counter::default();
        registry.register(
            "keys_revoked",
            "Keys revoked (one by one or in bulk)",
            keys_revoked.clone(),
        );
        let revocation_requests = Family::<FormLabel, Counter>::default();
        registry.register(
            "revocation_requests",
            "Revocation requests, by form: one key (DELETE), ids (a batch), label_prefix, label",
            revocation_requests.clone(),
        );
        let keys_by_status = Family::<StatusLabel, Gauge>::default();
        registry.register(
            "keys",
            "Keys in the store by status, as of the scrape",
            keys_by_status.clone(),
        );
        let key_cache_in_use = Gauge::default();
        registry.register(
            "key_cache_in_use",
            "1 while keys are served from memory; 0 while every lookup reads the database \
             (a shared database whose changes this server does not hear right now)",
            key_cache_in_use.clone(),
        );
        let reconciled = Counter::default();
        registry.register(
            "reservations_reconciled",
            "Calls whose outcome never became known, settled to what they reserved",
            reconciled.clone(),
        );
        let denials = Family::<CodeLabel, Counter>::default();
        registry.register(
            "proxy_denials",
            "Proxied calls refused, by error code",
            denials.clone(),
        );
        let spend_micros = Family::<VendorLabel, Counter>::default();
        registry.register(
            "spend_usd_micros",
            "Settled spend in micro-dollars, by vendor",
            spend_micros.clone(),
        );
        let proxy_latency = Family::<VendorLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
        });
        registry.register(
            "proxy_latency_seconds",
            "Time from a proxied call's arrival to its response headers, by vendor",
            proxy_latency.clone(),
        );
        Metrics {
            registry,
            keys_issued,
            keys_revoked,
            revocation_requests,
            keys_by_status,
            key_cache_in_use,
            reconciled,
            denials,
            spend_micros,
            proxy_latency,
        }
    }
}

impl Metrics {
    /// A key was issued.
    pub fn key_issued(&self) {
        self.keys_issued.inc();
    }

    /// A revocation request of `form` (`one`, `ids`, `label_prefix`) revoked `count` keys.
    pub fn keys_revoked(&self, form: &'static str, count: u64) {
        self.revocation_requests
            .get_or_create(&FormLabel { form })
            .inc();
        self.keys_revoked.inc_by(count);
    }

    /// `count` calls of unknown outcome were settled to their reservations.
    pub fn reconciled(&self, count: u64) {
        self.reconciled.inc_by(count);
    }

    /// A proxied call was refused.
    pub fn denied(&self, code: ErrorCode) {
        self.denials
            .get_or_create(&CodeLabel {
                code: code.as_str(),
            })
            .inc();
    }

    /// A call settled to `micros`.
    pub fn spent(&self, vendor: &str, micros: u64) {
        self.spend_micros
            .get_or_create(&VendorLabel {
                vendor: vendor.to_owned(),
            })
            .inc_by(micros);
    }

    /// A proxied call got its response headers after `seconds`.
    pub fn proxied(&self, vendor: &str, seconds: f64) {
        self.proxy_latency
            .get_or_create(&VendorLabel {
                vendor: vendor.to_owned(),
            })
            .observe(seconds);
    }

    /// The text exposition, with key counts read from the store just now and the key cache's
    /// state.
    pub fn render(&self, counts: KeyCounts, key_cache_in_use: bool) -> String {
        self.key_cache_in_use.set(i64::from(key_cache_in_use));
        for (status, count) in [
            ("active", counts.active),
            ("revoked", counts.revoked),
            ("expired", counts.expired),
        ] {
            self.keys_by_status
                .get_or_create(&StatusLabel { status })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
