//! The state every route shares.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::clock::Clock;
use crate::dashboard::Sessions;
use crate::metrics::Metrics;
use crate::store::{CachedStore, LabelMatch, Revoked, Store, StoreError};
use crate::token::TokenHash;
use crate::vendor::Vendor;

/// A vendor with its upstream address resolved (the sandbox's is known only once it listens).
#[derive(Debug)]
pub struct LiveVendor {
    /// As configured.
    pub vendor: Vendor,
    /// Origin (and optional path prefix) that checked paths are appended to.
    pub base_url: Url,
}

/// Shared state.
pub struct App {
    /// Keys, spend and calls, with the keys cached.
    pub store: Arc<CachedStore>,
    /// Vendors by name (shared with the calls in flight to each).
    pub vendors: BTreeMap<String, Arc<LiveVendor>>,
    /// Hash of the admin token, compared in constant time.
    pub admin_token: TokenHash,
    /// Who may read `/metrics`.
    pub metrics_gate: MetricsGate,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Client for upstream calls: no redirects, no proxy from the environment.
    pub http: reqwest::Client,
    /// Longest key lifetime.
    pub max_key_ttl: Duration,
    /// Time to the vendor's response headers.
    pub upstream_timeout: Duration,
    /// Time for a proxied request's whole body to arrive.
    pub body_timeout: Duration,
    /// Largest proxied body.
    pub max_body_bytes: usize,
    /// Largest total of request header bytes.
    pub max_header_bytes: usize,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// The dashboard's signed-in browsers.
    pub sessions: Sessions,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("vendors", &self.vendors.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Who may read `/metrics` (see [`crate::MetricsAccess`]), tokens hashed.
#[derive(Debug)]
pub enum MetricsGate {
    /// Anyone.
    Open,
    /// Bearers of the admin token.
    Admin,
    /// Bearers of the admin token or of this one.
    AdminOr(TokenHash),
}

impl App {
    /// Whether a presented admin token is the right one.
    pub fn is_admin(&self, presented: &str) -> bool {
        TokenHash::of(presented).matches(&self.admin_token)
    }

    /// Whether a request presenting `bearer` may read `/metrics`.
    pub fn may_read_metrics(&self, bearer: Option<&str>) -> bool {
        match (&self.metrics_gate, bearer) {
            (MetricsGate::Open, _) => true,
            (_, None) => false,
            (MetricsGate::Admin, Some(token)) => self.is_admin(token),
            (MetricsGate::AdminOr(metrics), Some(token)) => {
                // Both compared, in constant time, whichever matches.
                let is_metrics = TokenHash::of(token).matches(metrics);
                self.is_admin(token) | is_metrics
            }
        }
    }
}

/// Revocations, from the admin API and the dashboard alike: counted and logged the same way.
impl App {
    /// Revokes one key.
    pub async fn revoke_key(&self, id: &str) -> Result<Revoked, StoreError> {
        let revoked = self.store.revoke(id, self.clock.now()).await?;
        if revoked == Revoked::Now {
            self.metrics.keys_revoked("one", 1);
            tracing::info!(key_id = %id, "key revoked");
        }
        Ok(revoked)
    }

    /// Revokes the named keys not revoked yet; returns how many.
    pub async fn revoke_key_ids(&self, ids: &[String]) -> Result<u64, StoreError> {
        let revoked = self.store.revoke_ids(ids, self.clock.now()).await?;
        self.metrics.keys_revoked("ids", revoked);
        tracing::info!(keys = ids.len(), revoked, "keys revoked by id");
        Ok(revoked)
    }

    /// Revokes a grant (or a run), its runs and every key recorded from them; `None` when there is
    /// no such grant, else how many keys were revoked now.
    pub async fn revoke_grant(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let revoked = self.store.revoke_grant(id, self.clock.now()).await?;
        if let Some(revoked) = revoked {
            self.metrics.keys_revoked("grant", revoked);
            tracing::info!(grant_id = %id, revoked, "grant revoked with its keys");
        }
        Ok(revoked)
    }

    /// Revokes every live key whose label `labels` takes; returns how many.
    pub async fn revoke_labels(&self, labels: LabelMatch<'_>) -> Result<u64, StoreError> {
        let now = self.clock.now();
        // Past the longest key lifetime (and a minter's clock skew), no key minted before now
        // is still live: the revocation need not be remembered longer.
        let remember_until = now + self.max_key_ttl + crate::grants::CLOCK_SKEW;
        let revoked = self
            .store
            .revoke_by_label(labels, now, remember_until)
            .await?;
        match labels {
            LabelMatch::Prefix(prefix) => {
                self.metrics.keys_revoked("label_prefix", revoked);
                tracing::info!(label_prefix = %prefix, revoked, "keys revoked by label prefix");
            }
            LabelMatch::Exact(label) => {
                self.metrics.keys_revoked("label", revoked);
                tracing::info!(%label, revoked, "keys revoked by label");
            }
        }
        Ok(revoked)
    }
}

/// Hashes the admin token so the plain value is not kept around.
pub fn admin_token_hash(token: &SecretString) -> TokenHash {
    TokenHash::of(token.expose_secret())
}
