//! Keys held in memory in front of a store.
//!
//! The proxy looks its key up on every call; a key's record changes only when it is revoked and
//! its spend matters to a free call only once the day's settled spend passed the cap. So a key
//! read from the store is kept, with the spend of the day it was read on, while it is within its
//! cap, and forgotten:
//! - when it is revoked, before the revocation's answer leaves (a revoked key is refused at
//!   once), by id or by label prefix;
//! - when a call settles above what it reserved (the one way spend passes a cap);
//! - on another UTC day, or once it has expired;
//! - when the store reports a change made elsewhere (another server on the same PostgreSQL),
//!   through a [`KeyInvalidation`]. A store that reports changes starts the cache *distrusted*:
//!   nothing is kept until it says it follows changes, and it distrusts the cache again (which
//!   forgets everything) whenever it may have missed one.
//!
//! A lookup that read the store while a revocation was under way does not keep what it read: a
//! generation counter, bumped under the same lock that forgets revoked keys, tells it. A change
//! and its forgetting run in a task of their own, so that a caller who stops waiting (a client
//! that hangs up) cannot leave the change made and the key remembered.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use time::{Date, OffsetDateTime};

use super::{
    within_deadline, CallRecord, DaySpend, DeniedCall, GrantRecord, KeyCounts, KeyQuery, KeyRecord,
    LabelMatch, MintedKey, NewCall, OpenedCall, Refusal, Revoked, Settled, Store, StoreError,
};
use crate::clock::Clock;
use crate::meter::Settlement;
use crate::token::TokenHash;

/// The most keys held; past it, expired ones are dropped, and if that is not enough, no more
/// are kept until some expire or are revoked.
const MAX_CACHED_KEYS: usize = 100_000;

/// A store with its keys cached for the proxy's lookups.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    cache: Arc<RwLock<KeyCache>>,
    /// Judges expiry.
    clock: Arc<dyn Clock>,
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

struct KeyCache {
    by_hash: HashMap<[u8; 32], CachedKey>,
    /// The hash each cached key id is held under.
    by_id: HashMap<String, [u8; 32]>,
    /// Bumped by every change that forgets keys.
    generation: u64,
    /// Whether every change to a key reaches this cache; while not, nothing is kept or served.
    trusted: bool,
}

struct CachedKey {
    key: KeyRecord,
    day: Date,
    spend: DaySpend,
}

impl KeyCache {
    fn write(cache: &RwLock<KeyCache>) -> std::sync::RwLockWriteGuard<'_, KeyCache> {
        cache.write().unwrap_or_else(|e| e.into_inner())
    }

    fn new(trusted: bool) -> KeyCache {
        KeyCache {
            by_hash: HashMap::new(),
            by_id: HashMap::new(),
            generation: 0,
            trusted,
        }
    }

    /// Forgets one key, and makes lookups under way not keep what they read.
    fn forget_id(cache: &RwLock<KeyCache>, id: &str) {
        let mut cache = KeyCache::write(cache);
        cache.generation += 1;
        if let Some(hash) = cache.by_id.remove(id) {
            cache.by_hash.remove(&hash);
        }
    }

    /// Forgets the keys whose label starts with `prefix`, likewise.
    fn forget_label_prefix(cache: &RwLock<KeyCache>, prefix: &str) {
        KeyCache::forget_where(cache, |key| key.label.starts_with(prefix));
    }

    /// Forgets every minted key, likewise: a grant's revocation reaches its runs' keys too, and
    /// the cache does not know which grant a run belongs to. (An operator's action: one pass over
    /// the cache under its lock.)
    fn forget_minted(cache: &RwLock<KeyCache>) {
        KeyCache::forget_where(cache, |key| key.grant_id.is_some());
    }

    /// Forgets the minted keys among `ids`, likewise, looking up only those: a grant's holder
    /// cannot evict other keys by naming their ids, nor make every revocation a pass over the
    /// whole cache.
    fn forget_minted_ids(cache: &RwLock<KeyCache>, ids: &[String]) {
        let mut cache = KeyCache::write(cache);
        cache.generation += 1;
        let KeyCache { by_hash, by_id, .. } = &mut *cache;
        for id in ids {
            let minted = by_id
                .get(id)
                .and_then(|hash| by_hash.get(hash))
                .is_some_and(|cached| cached.key.grant_id.is_some());
            if minted {
                if let Some(hash) = by_id.remove(id) {
                    by_hash.remove(&hash);
                }
            }
        }
    }

    fn forget_where(cache: &RwLock<KeyCache>, forget: impl Fn(&KeyRecord) -> bool) {
        let mut cache = KeyCache::write(cache);
        cache.generation += 1;
        let KeyCache { by_hash, by_id, .. } = &mut *cache;
        by_hash.retain(|_, cached| {
            let keep = !forget(&cached.key);
            if !keep {
                by_id.remove(&cached.key.id);
            }
            keep
        });
    }
}

/// How a store that sees changes made elsewhere tells the cache about them.
#[derive(Clone)]
pub struct KeyInvalidation {
    cache: Arc<RwLock<KeyCache>>,
}

impl std::fmt::Debug for KeyInvalidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyInvalidation").finish_non_exhaustive()
    }
}

impl KeyInvalidation {
    /// A key changed elsewhere (revoked, or billed past what it reserved): forget it.
    pub fn forget(&self, id: &str) {
        KeyCache::forget_id(&self.cache, id);
    }

    /// Changes may be missed from now on: forget every key and keep none until [`Self::trust`].
    pub fn distrust(&self) {
        let mut cache = KeyCache::write(&self.cache);
        cache.generation += 1;
        cache.trusted = false;
        cache.by_hash.clear();
        cache.by_id.clear();
    }

    /// Every change from now on is reported. A lookup that read the store before now keeps
    /// nothing (it may have read a key revoked before changes were followed).
    pub fn trust(&self) {
        let mut cache = KeyCache::write(&self.cache);
        cache.generation += 1;
        cache.trusted = true;
    }
}

/// Runs `change` to its end even if the caller stops waiting for it.
async fn detached<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(change)
        .await
        .map_err(|e| StoreError::Write(format!("a store change did not finish: {e}")))?
}

impl CachedStore {
    /// Caches the keys of `inner`, whose every change goes through this cache.
    pub fn new(inner: Arc<dyn Store>, clock: Arc<dyn Clock>) -> CachedStore {
        CachedStore {
            inner,
            cache: Arc::new(RwLock::new(KeyCache::new(true))),
            clock,
        }
    }

    /// Caches the keys of `inner`, which other servers change too: nothing is kept until the
    /// returned handle is told that changes are followed ([`KeyInvalidation::trust`]).
    pub fn shared(inner: Arc<dyn Store>, clock: Arc<dyn Clock>) -> (CachedStore, KeyInvalidation) {
        let cache = Arc::new(RwLock::new(KeyCache::new(false)));
        let invalidation = KeyInvalidation {
            cache: Arc::clone(&cache),
        };
        (
            CachedStore {
                inner,
                cache,
                clock,
            },
            invalidation,
        )
    }

    /// Whether keys are kept: always for a store that only this server changes; for a shared
    /// one, while its changes are followed.
    pub fn is_trusted(&self) -> bool {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).trusted
    }

    /// Keeps a key read at `generation`, unless something was forgotten since.
    fn keep(&self, generation: u64, key: &KeyRecord, day: Date, spend: DaySpend) {
        let mut cache = KeyCache::write(&self.cache);
        if cache.generation != generation || !cache.trusted {
            return;
        }
        if cache.by_hash.len() >= MAX_CACHED_KEYS {
            let now = self.clock.now();
            let KeyCache { by_hash, by_id, .. } = &mut *cache;
            by_hash.retain(|_, cached| cached.key.expires_at > now);
            by_id.retain(|_, hash| by_hash.contains_key(hash));
            if cache.by_hash.len() >= MAX_CACHED_KEYS {
                return; // full of live keys: the next lookups read the store
            }
        }
        cache.by_id.insert(key.id.clone(), key.token_hash.0);
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
        // Only a lookup the cache cannot answer waits on the store, and not past its deadline.
        let found = within_deadline(self.inner.key_by_token(hash, day)).await?;
        if let Some((key, spend)) = &found {
            let usable = key.revoked_at.is_none()
                && key.expires_at > self.clock.now()
                && spend.committed() <= key.daily_cap;
            if usable {
                self.keep(generation, key, day, *spend);
            }
        }
        Ok(found)
    }

    async fn key(&self, id: &str, day: Date) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        within_deadline(self.inner.key(id, day)).await
    }

    async fn key_view(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        within_deadline(self.inner.key_view(id, day)).await
    }

    async fn list_keys(
        &self,
        query: &KeyQuery,
        day: Date,
    ) -> Result<Vec<(i64, KeyRecord, DaySpend)>, StoreError> {
        self.inner.list_keys(query, day).await
    }

    async fn revoke(&self, id: &str, at: OffsetDateTime) -> Result<Revoked, StoreError> {
        let (inner, cache, id) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.cache),
            id.to_owned(),
        );
        detached(async move {
            let revoked = inner.revoke(&id, at).await;
            // Forgotten whatever the store answers: a failed revocation may still have committed.
            KeyCache::forget_id(&cache, &id);
            revoked
        })
        .await
    }

    async fn revoke_ids(&self, ids: &[String], at: OffsetDateTime) -> Result<u64, StoreError> {
        let (inner, cache, ids) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.cache),
            ids.to_vec(),
        );
        detached(async move {
            let revoked = inner.revoke_ids(&ids, at).await;
            for id in &ids {
                KeyCache::forget_id(&cache, id);
            }
            revoked
        })
        .await
    }

    async fn revoke_by_label(
        &self,
        labels: LabelMatch<'_>,
        at: OffsetDateTime,
        remember_until: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (inner, cache, text, exact) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.cache),
            labels.text().to_owned(),
            matches!(labels, LabelMatch::Exact(_)),
        );
        detached(async move {
            let labels = if exact {
                LabelMatch::Exact(&text)
            } else {
                LabelMatch::Prefix(&text)
            };
            let revoked = inner.revoke_by_label(labels, at, remember_until).await;
            // An exact label is also a prefix of itself: forgetting a little more is harmless.
            KeyCache::forget_label_prefix(&cache, &text);
            revoked
        })
        .await
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
        let (inner, cache, settlement) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.cache),
            settlement.clone(),
        );
        detached(async move {
            let settled = inner
                .settle_call(call_id, &settlement, upstream_status)
                .await?;
            if let Some(settled) = &settled {
                if settled.cost > settled.reserved {
                    KeyCache::forget_id(&cache, &settled.key_id);
                }
            }
            Ok(settled)
        })
        .await
    }

    async fn reconcile_unknown(
        &self,
        before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        // Reserved becomes spent: what counts against the cap, and so the cache, is unchanged.
        self.inner.reconcile_unknown(before, now).await
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

    async fn insert_grant(&self, grant: &GrantRecord) -> Result<(), StoreError> {
        self.inner.insert_grant(grant).await
    }

    async fn grant(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(GrantRecord, DaySpend)>, StoreError> {
        within_deadline(self.inner.grant(id, day)).await
    }

    async fn revoke_grant(&self, id: &str, at: OffsetDateTime) -> Result<Option<u64>, StoreError> {
        let (inner, cache, id) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.cache),
            id.to_owned(),
        );
        detached(async move {
            let revoked = inner.revoke_grant(&id, at).await;
            KeyCache::forget_minted(&cache);
            revoked
        })
        .await
    }

    async fn record_minted_key(
        &self,
        key: &KeyRecord,
        run: Option<&GrantRecord>,
        grant_id: &str,
        day: Date,
        at: OffsetDateTime,
    ) -> Result<MintedKey, StoreError> {
        within_deadline(self.inner.record_minted_key(key, run, grant_id, day, at)).await
    }

    async fn revoke_minted(
        &self,
        grant_id: &str,
        ids: &[String],
        until: OffsetDateTime,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let (inner, cache, grant_id, ids) = (
            Arc::clone(&self.inner),
            Arc::clone(&self.cache),
            grant_id.to_owned(),
            ids.to_vec(),
        );
        detached(async move {
            let revoked = inner.revoke_minted(&grant_id, &ids, until, at).await;
            KeyCache::forget_minted_ids(&cache, &ids);
            revoked
        })
        .await
    }

    async fn latest_refusals(&self, limit: u32) -> Result<Vec<Refusal>, StoreError> {
        self.inner.latest_refusals(limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn key_counts(&self, now: OffsetDateTime) -> Result<KeyCounts, StoreError> {
        self.inner.key_counts(now).await
    }
}
