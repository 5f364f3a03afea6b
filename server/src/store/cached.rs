//! Keys held in memory in front of a store.
//!
//! The proxy looks its key up on every call; a key's record changes only when it is revoked
//! (through this server, which holds the only writer of its store) and its spend matters to a
//! free call only once the day's settled spend passed the cap. So a key read from the store is
//! kept, with the spend of the day it was read on, while it is within its cap, and forgotten:
//! - when it is revoked, before the revocation's answer leaves (a revoked key is refused at
//!   once), by id or by label prefix;
//! - when a call settles above what it reserved (the one way spend passes a cap);
//! - on another UTC day, or once it has expired.
//!
//! A lookup that read the store while a revocation was under way does not keep what it read: a
//! generation counter, bumped under the same lock that forgets revoked keys, tells it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use time::{Date, OffsetDateTime};

use super::{
    CallRecord, DaySpend, DeniedCall, KeyCounts, KeyQuery, KeyRecord, NewCall, OpenedCall, Revoked,
    Settled, Store, StoreError,
};
use crate::meter::Settlement;
use crate::token::TokenHash;

/// The most keys held; past it, expired ones are dropped, and if that is not enough, all.
const MAX_CACHED_KEYS: usize = 100_000;

/// A store with its keys cached for the proxy's lookups.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: RwLock<KeyCache>,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("CachedStore")
            .field("cached_keys", &cache.by_hash.len())
            .field("generation", &cache.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct KeyCache {
    by_hash: HashMap<[u8; 32], CachedKey>,
    /// Bumped by every change that forgets keys.
    generation: u64,
}

struct CachedKey {
    key: KeyRecord,
    day: Date,
    spend: DaySpend,
}

impl CachedStore {
    /// Caches `inner`'s keys.
    pub fn new(inner: Arc<dyn Store>) -> CachedStore {
        CachedStore {
            inner,
            cache: RwLock::new(KeyCache::default()),
        }
    }

    /// Forgets the keys `forget` picks, and makes lookups under way not keep what they read.
    fn forget(&self, mut forget: impl FnMut(&KeyRecord) -> bool) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.generation += 1;
        cache.by_hash.retain(|_, cached| !forget(&cached.key));
    }

    /// Keeps a key read at `generation`, unless something was forgotten since.
    fn keep(&self, generation: u64, key: &KeyRecord, day: Date, spend: DaySpend) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.generation != generation {
            return;
        }
        if cache.by_hash.len() >= MAX_CACHED_KEYS {
            let now = OffsetDateTime::now_utc();
            cache
                .by_hash
                .retain(|_, cached| cached.key.expires_at > now);
            if cache.by_hash.len() >= MAX_CACHED_KEYS {
                cache.by_hash.clear();
            }
        }
        cache.by_hash.insert(
            key.token_hash.0,
            CachedKey {
                key: key.clone(),
                day,
                spend,
            },
        );
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.inner.insert_key(key).await
    }

    async fn key_by_token(
        &self,
        hash: &TokenHash,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        let generation = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if let Some(cached) = cache.by_hash.get(&hash.0) {
                if cached.day == day && cached.key.token_hash.matches(hash) {
                    return Ok(Some((cached.key.clone(), cached.spend)));
                }
            }
            cache.generation
        };
        let found = self.inner.key_by_token(hash, day).await?;
        if let Some((key, spend)) = &found {
            let usable = key.revoked_at.is_none()
                && key.expires_at > OffsetDateTime::now_utc()
                && spend.committed() <= key.daily_cap;
            if usable {
                self.keep(generation, key, day, *spend);
            }
        }
        Ok(found)
    }

    async fn key(&self, id: &str, day: Date) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        self.inner.key(id, day).await
    }

    async fn list_keys(
        &self,
        query: &KeyQuery,
        day: Date,
    ) -> Result<Vec<(i64, KeyRecord, DaySpend)>, StoreError> {
        self.inner.list_keys(query, day).await
    }

    async fn revoke(&self, id: &str, at: OffsetDateTime) -> Result<Revoked, StoreError> {
        // Forgotten whatever the store answers: a failed revocation may still have committed.
        let revoked = self.inner.revoke(id, at).await;
        self.forget(|key| key.id == id);
        revoked
    }

    async fn revoke_by_label_prefix(
        &self,
        prefix: &str,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let revoked = self.inner.revoke_by_label_prefix(prefix, at).await;
        self.forget(|key| key.label.starts_with(prefix));
        revoked
    }

    async fn open_call(&self, call: &NewCall) -> Result<OpenedCall, StoreError> {
        self.inner.open_call(call).await
    }

    async fn settle_call(
        &self,
        call_id: i64,
        settlement: &Settlement,
        upstream_status: Option<u16>,
    ) -> Result<Option<Settled>, StoreError> {
        let settled = self
            .inner
            .settle_call(call_id, settlement, upstream_status)
            .await?;
        if let Some(settled) = &settled {
            if settled.cost > settled.reserved {
                self.forget(|key| key.id == settled.key_id);
            }
        }
        Ok(settled)
    }

    async fn abandon_call(&self, call_id: i64) -> Result<(), StoreError> {
        self.inner.abandon_call(call_id).await
    }

    async fn record_free_call(
        &self,
        key_id: &str,
        at: OffsetDateTime,
        method: &str,
        path: &str,
        upstream_status: Option<u16>,
    ) -> Result<(), StoreError> {
        self.inner
            .record_free_call(key_id, at, method, path, upstream_status)
            .await
    }

    async fn record_denial(&self, denial: &DeniedCall) -> Result<(), StoreError> {
        self.inner.record_denial(denial).await
    }

    async fn calls(&self, key_id: &str, limit: u32) -> Result<Vec<CallRecord>, StoreError> {
        self.inner.calls(key_id, limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn key_counts(&self, now: OffsetDateTime) -> Result<KeyCounts, StoreError> {
        self.inner.key_counts(now).await
    }
}
