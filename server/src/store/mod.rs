//! Durable state behind the service: keys, per-day spend, and calls (each proxied or refused call,
//! which doubles as the key's audit trail and as the reservation a metered call holds).
//!
//! Every money-moving operation is one atomic transaction in the store, so the guarantees hold
//! however many proxy tasks (or, with PostgreSQL, server instances) run at once:
//! - [`Store::open_call`] reserves a call's largest possible cost only if
//!   `spent + reserved + cost <= cap`, and commits before the request is forwarded;
//! - [`Store::settle_call`] moves a reservation to its actual cost exactly once.

mod cached;
mod postgres;
mod rows;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use http::Method;
use time::{Date, OffsetDateTime};
use vault_key_wire::{EndpointPattern, ErrorCode, KeyStatus, Usd};

use crate::clock::Clock;
use crate::meter::{IdempotencyClaim, ObjectRef, Settlement};
use crate::token::TokenHash;

pub use cached::{CachedStore, KeyInvalidation};
pub use postgres::{is_postgres_url, ChangeFollower, PoolSettings, PostgresStore};
pub use sqlite::{SqliteStore, SyncMode};

/// The longest a call waits for the store to read a key (through [`CachedStore`], when the key
/// is not held in memory) or the proxy waits for a reservation, before it is answered `503
/// store_unavailable`: a connection whose database fell silent would
/// otherwise hold the call until TCP gives up, minutes later.
pub const STORE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a store operation under [`STORE_DEADLINE`].
pub async fn within_deadline<T>(
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STORE_DEADLINE, operation)
        .await
        .map_err(|_| StoreError::TimedOut)?
}

/// The database a server runs on, chosen by its URL: `postgres://…` (shared by several servers)
/// or `sqlite://…` / `sqlite::memory:` (one server).
#[derive(Debug)]
pub enum Database {
    /// SQLite, held by this server alone.
    Sqlite(SqliteStore),
    /// PostgreSQL, with the task that follows other servers' changes once serving.
    Postgres(Box<PostgresStore>, Option<ChangeFollower>),
}

impl Database {
    /// Opens the database at `url`; with `migrate`, brings its schema up to date first (SQLite's
    /// always is: one server owns it).
    pub async fn open(
        url: &str,
        sync: SyncMode,
        pool: PoolSettings,
        migrate: bool,
    ) -> Result<Database, StoreError> {
        if let Some((scheme, _)) = url.split_once("://") {
            if !is_postgres_url(url) && !scheme.eq_ignore_ascii_case("sqlite") {
                // Named by its scheme only: the rest may hold a password.
                return Err(StoreError::UnknownDatabase(scheme.to_owned()));
            }
        }
        if is_postgres_url(url) {
            let store = PostgresStore::connect(url, pool).await?;
            if migrate {
                store.migrate().await?;
            } else {
                store.check_schema().await?;
            }
            Ok(Database::Postgres(Box::new(store), None))
        } else {
            Ok(Database::Sqlite(SqliteStore::open(url, sync).await?))
        }
    }

    /// The store the server's routes use: the database behind a cache of its keys, which (on
    /// PostgreSQL) hears of the changes other servers make.
    pub fn serve(&mut self, clock: Arc<dyn Clock>) -> Arc<CachedStore> {
        match self {
            Database::Sqlite(store) => Arc::new(CachedStore::new(Arc::new(store.clone()), clock)),
            Database::Postgres(store, follower) => {
                let (cached, invalidation) =
                    CachedStore::shared(Arc::new(PostgresStore::clone(store)), clock);
                if let Some(previous) = follower.replace(store.follow_changes(invalidation)) {
                    previous.stop();
                }
                Arc::new(cached)
            }
        }
    }

    /// Waits for the writes under way and closes the connections.
    pub async fn close(&self) {
        match self {
            Database::Sqlite(store) => store.close().await,
            Database::Postgres(store, follower) => {
                if let Some(follower) = follower {
                    follower.stop();
                }
                store.close().await;
            }
        }
    }
}

/// A failure of the store itself (not a refusal): the request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be read, or what it held could not be decoded.
    #[error("key store error: {0}")]
    Database(#[from] sqlx::Error),
    /// The writing connection failed.
    #[error("key store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A write was not made durable: its group was rolled back, or the writer has stopped.
    #[error("key store error: {0}")]
    Write(String),
    /// The database lacks migrations this server needs (it was started without migrating).
    #[error(
        "the database schema is behind this server (migrations {0:?} are not applied): run \
         `vault-key-server migrate --db …` first"
    )]
    SchemaBehind(Vec<i64>),
    /// The store did not answer within [`STORE_DEADLINE`] (a database cut off without closing
    /// its connections, or one overloaded).
    #[error("the key store did not answer within {} s", STORE_DEADLINE.as_secs())]
    TimedOut,
    /// The database URL names neither SQLite nor PostgreSQL.
    #[error("`{0}://` is not a database this server can use: give sqlite://… or postgres://…")]
    UnknownDatabase(String),
    /// Another server holds the SQLite database.
    #[error(
        "{} is in use by another vault-key server; a SQLite database serves one server at a \
         time",
        .0.display()
    )]
    InUse(std::path::PathBuf),
}

/// A key as stored (its token only as a hash).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// Free-text label.
    pub label: String,
    /// Vendor name.
    pub vendor: String,
    /// Daily cap.
    pub daily_cap: Usd,
    /// Endpoint patterns, parsed when the key is read.
    pub allowed_endpoints: Vec<EndpointPattern>,
    /// Allowed methods, when restricted.
    pub allowed_methods: Option<Vec<Method>>,
    /// Issue time.
    pub created_at: OffsetDateTime,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Revocation time.
    pub revoked_at: Option<OffsetDateTime>,
    /// Calls forwarded to the vendor (whether or not the vendor could be reached).
    pub requests: u64,
    /// Calls the proxy refused, all time: counted by the admin API's reads (`key_view`,
    /// `list_keys`), 0 where the proxy looked the key up.
    pub refusals: u64,
    /// The grant it was minted from; `None` for a key issued by the admin API.
    pub grant_id: Option<String>,
}

impl KeyRecord {
    /// Status at `now`; revocation wins over expiry.
    pub fn status(&self, now: OffsetDateTime) -> KeyStatus {
        status_at(self.revoked_at, self.expires_at, now)
    }
}

/// A minted key refused at its first use, as it is recorded: revoked `at`, so that presenting
/// it again is a read rather than another write.
pub(crate) fn revoked_at(key: &KeyRecord, at: OffsetDateTime) -> KeyRecord {
    KeyRecord {
        revoked_at: Some(at),
        ..key.clone()
    }
}

/// The issue time a label revocation is compared with for a minted key: its own, moved back by
/// the skew a minter's clock may have, so that a key stamped up to that much after a revocation
/// counts as minted before it (fail closed).
pub(crate) fn minted_no_later_than(key: &KeyRecord) -> OffsetDateTime {
    key.created_at - crate::grants::CLOCK_SKEW
}

/// Whether something that can be revoked and expires is usable at `now`: revocation wins over
/// expiry. One rule for keys, grants and runs.
pub fn status_at(
    revoked_at: Option<OffsetDateTime>,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
) -> KeyStatus {
    if revoked_at.is_some() {
        KeyStatus::Revoked
    } else if now >= expires_at {
        KeyStatus::Expired
    } else {
        KeyStatus::Active
    }
}

/// Spend of one key on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaySpend {
    /// Settled.
    pub spent: Usd,
    /// Held by calls not yet settled.
    pub reserved: Usd,
}

impl DaySpend {
    /// Everything counted against the cap.
    pub fn committed(self) -> Usd {
        self.spent.saturating_add(self.reserved)
    }
}

/// The UTC day that a moment belongs to: caps are per key per UTC day.
pub fn utc_day(at: OffsetDateTime) -> Date {
    at.to_offset(time::UtcOffset::UTC).date()
}

/// Filters of `GET /v1/keys`.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    /// Only labels starting with this.
    pub label_prefix: Option<String>,
    /// Only keys in this status at `now`.
    pub status: Option<KeyStatus>,
    /// Only keys for this vendor.
    pub vendor: Option<String>,
    /// The status is judged at this moment.
    pub now: Option<OffsetDateTime>,
    /// Only keys issued after the one with this sequence number.
    pub after: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// A call the proxy is about to forward.
#[derive(Debug, Clone)]
pub struct NewCall {
    /// The key making it (whose cap is read with its state, in the reserving transaction).
    pub key_id: String,
    /// Arrival time; its UTC day is the day the spend counts against.
    pub at: OffsetDateTime,
    /// HTTP method.
    pub method: String,
    /// Checked upstream path, without query.
    pub path: String,
    /// The most this call can cost.
    pub max_cost: Usd,
    /// A vendor idempotency key: a replay of a call that may have cost money is not reserved again.
    pub idempotency: Option<IdempotencyClaim>,
    /// An object the call makes charge, which the key must have created.
    pub acts_on: Option<ObjectRef>,
    /// Until when the call counts as in flight (a replay of its idempotency key meanwhile is
    /// refused); past it, an unsettled call's outcome is unknown and its reservation stays.
    pub in_flight_until: OffsetDateTime,
}

/// The result of [`Store::open_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenedCall {
    /// Reserved (possibly zero, for a replay) and durable; settle it with this id.
    Opened {
        /// Call id.
        call_id: i64,
        /// What was reserved.
        reserved: Usd,
    },
    /// Reserving would exceed the key's cap, or its grant's; nothing was written.
    CapExhausted {
        /// The cap that would be exceeded, as the reservation read it.
        cap: Usd,
        /// The day's spend so far under that cap.
        spend: DaySpend,
        /// The grant whose cap it is; `None` for the key's own.
        grant: Option<String>,
    },
    /// The key was revoked before the reservation; nothing was written.
    KeyRevoked,
    /// The key expired before the reservation; nothing was written.
    KeyExpired,
    /// The call acts on an object the key did not create (or in another currency).
    NotOwned,
    /// An earlier call under the same idempotency key is still in flight.
    IdempotencyInFlight,
}

/// A call the proxy refused, for the audit trail.
#[derive(Debug, Clone)]
pub struct DeniedCall {
    /// The key that made it.
    pub key_id: String,
    /// Arrival time.
    pub at: OffsetDateTime,
    /// HTTP method.
    pub method: String,
    /// Path as received, truncated.
    pub path: String,
    /// Why.
    pub code: ErrorCode,
}

/// A grant: what the keys minted from it may do, each and together.
#[derive(Clone)]
pub struct GrantRecord {
    /// Public id (`grt_…`).
    pub id: String,
    /// The HMAC key minted keys are checked with (kept as it is: a hash could not check them);
    /// `None` for a run, whose keys are checked with its grant's.
    pub secret: Option<secrecy::SecretString>,
    /// A run's grant; `None` for a grant.
    pub parent_id: Option<String>,
    /// Every minted key's label starts with this.
    pub label_prefix: String,
    /// The one vendor its keys are for.
    pub vendor: String,
    /// The largest daily cap one key may have.
    pub max_key_cap: Usd,
    /// The daily cap of all its keys together.
    pub daily_cap: Usd,
    /// The widest endpoints a key may have: each of a key's is within one of these.
    pub allowed_endpoints: Vec<EndpointPattern>,
    /// The methods a key may allow; `None`: any the vendor uses.
    pub allowed_methods: Option<Vec<Method>>,
    /// The longest lifetime of a key.
    pub max_key_ttl: time::Duration,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// The grant's own expiry; no key outlives it.
    pub expires_at: OffsetDateTime,
    /// Revocation time.
    pub revoked_at: Option<OffsetDateTime>,
}

impl GrantRecord {
    /// Status at `now`, as a key's.
    pub fn status(&self, now: OffsetDateTime) -> KeyStatus {
        status_at(self.revoked_at, self.expires_at, now)
    }
}

impl std::fmt::Debug for GrantRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantRecord")
            .field("id", &self.id)
            .field("label_prefix", &self.label_prefix)
            .field("vendor", &self.vendor)
            .finish_non_exhaustive()
    }
}

/// What became of a minted key presented for the first time.
#[derive(Debug, Clone)]
pub enum MintedKey {
    /// Recorded (or recorded before, by another server): from now on it is a key like any other.
    Recorded(Box<(KeyRecord, DaySpend)>),
    /// Its grant is revoked, or its holder revoked this key before it was first used.
    Revoked,
    /// Its id belongs to another key, or its run's id to a run with other terms.
    IdTaken,
}

/// The labels a bulk revocation takes.
#[derive(Debug, Clone, Copy)]
pub enum LabelMatch<'a> {
    /// Every label that starts with this (an agent run: `run-42/`).
    Prefix(&'a str),
    /// This label exactly (`run-42` and not `run-420`).
    Exact(&'a str),
}

impl LabelMatch<'_> {
    /// The label text given.
    pub fn text(&self) -> &str {
        match self {
            LabelMatch::Prefix(text) | LabelMatch::Exact(text) => text,
        }
    }
}

/// A refused call, with its key's label: the dashboard's latest refusals.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The key that made it.
    pub key_id: String,
    /// That key's label.
    pub label: String,
    /// Arrival.
    pub at: OffsetDateTime,
    /// Method.
    pub method: String,
    /// Path, as recorded.
    pub path: String,
    /// Why it was refused.
    pub code: ErrorCode,
}

/// One row of a key's audit trail.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Arrival.
    pub at: OffsetDateTime,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Vendor status.
    pub upstream_status: Option<u16>,
    /// Reserved.
    pub reserved: Usd,
    /// Settled, once known.
    pub settled: Option<Usd>,
    /// Refusal code.
    pub denied: Option<ErrorCode>,
    /// Settled by the reconciliation sweep, its outcome never known.
    pub reconciled: bool,
}

/// A call just settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The key that made it.
    pub key_id: String,
    /// What it had reserved.
    pub reserved: Usd,
    /// What it cost (above `reserved` when the vendor billed more).
    pub cost: Usd,
}

/// Outcome of revoking one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked now.
    Now,
    /// Was already revoked.
    Already,
    /// No such key.
    NotFound,
}

/// Counts of keys by status, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyCounts {
    /// Usable.
    pub active: u64,
    /// Revoked.
    pub revoked: u64,
    /// Expired without revocation.
    pub expired: u64,
}

/// Where keys, spend and the audit trail live.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a new key.
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// The key with this token hash, with its spend on `day`.
    async fn key_by_token(
        &self,
        hash: &TokenHash,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError>;
    /// The key with this id, with its spend on `day`.
    async fn key(&self, id: &str, day: Date) -> Result<Option<(KeyRecord, DaySpend)>, StoreError>;
    /// The key with this id, with its spend on `day` and its refusals counted: the admin API's
    /// read (the proxy's lookups do without the count).
    async fn key_view(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError>;
    /// A page of keys with their sequence numbers (the cursor) and spend on `day`.
    async fn list_keys(
        &self,
        query: &KeyQuery,
        day: Date,
    ) -> Result<Vec<(i64, KeyRecord, DaySpend)>, StoreError>;
    /// Revokes one key.
    async fn revoke(&self, id: &str, at: OffsetDateTime) -> Result<Revoked, StoreError>;
    /// Revokes the keys with these ids that are not revoked yet; returns how many. Unknown ids
    /// are skipped.
    async fn revoke_ids(&self, ids: &[String], at: OffsetDateTime) -> Result<u64, StoreError>;
    /// Revokes every live key whose label `labels` takes; returns how many. Minted keys of such
    /// a label, minted before `at` but not presented yet, are refused when they are: the
    /// revocation is remembered until `remember_until`, when every key minted before it has
    /// expired.
    async fn revoke_by_label(
        &self,
        labels: LabelMatch<'_>,
        at: OffsetDateTime,
        remember_until: OffsetDateTime,
    ) -> Result<u64, StoreError>;
    /// Reserves a call's maximum cost against the cap and records it, atomically and durably.
    async fn open_call(&self, call: &NewCall) -> Result<OpenedCall, StoreError>;
    /// Settles an opened call to its actual cost (recording the object it created), once; later
    /// calls for the same id do nothing and return `None`.
    async fn settle_call(
        &self,
        call_id: i64,
        settlement: &Settlement,
        upstream_status: Option<u16>,
    ) -> Result<Option<Settled>, StoreError>;
    /// Ends an opened call whose outcome is unknown: its reservation stays, and it no longer
    /// counts as in flight.
    async fn abandon_call(&self, call_id: i64) -> Result<(), StoreError>;
    /// Settles, to what they reserved, the calls made before `before` whose outcome is still
    /// unknown at `now` (unsettled, and no longer in flight), and marks them reconciled; returns
    /// how many. Each is settled once, however many servers sweep at the same time.
    async fn reconcile_unknown(
        &self,
        before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError>;
    /// Records a zero-cost call that was forwarded without a reservation.
    async fn record_free_call(
        &self,
        key_id: &str,
        at: OffsetDateTime,
        method: &str,
        path: &str,
        upstream_status: Option<u16>,
    ) -> Result<(), StoreError>;
    /// Records a refused call.
    async fn record_denial(&self, denial: &DeniedCall) -> Result<(), StoreError>;
    /// The key's latest `limit` calls, oldest first.
    async fn calls(&self, key_id: &str, limit: u32) -> Result<Vec<CallRecord>, StoreError>;
    /// The latest `limit` refused calls of any key, newest first.
    async fn latest_refusals(&self, limit: u32) -> Result<Vec<Refusal>, StoreError>;
    /// Stores a new grant.
    async fn insert_grant(&self, grant: &GrantRecord) -> Result<(), StoreError>;
    /// The grant with this id, with the spend of all its keys on `day`.
    async fn grant(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(GrantRecord, DaySpend)>, StoreError>;
    /// Revokes a grant (or a run), its runs and every key recorded from any of them; `None` when
    /// there is no such grant, else how many keys were revoked now.
    async fn revoke_grant(&self, id: &str, at: OffsetDateTime) -> Result<Option<u64>, StoreError>;
    /// Records a minted key the first time it is presented (and its run, when it has one and the
    /// run is new), unless its grant or run is revoked or its holder revoked it first (a
    /// tombstone under `grant_id`, the grant it was minted from), atomically with the checks. A
    /// key refused so is recorded as revoked `at` (when its grant or run is on record), so that
    /// presenting it again is a read, not another transaction.
    async fn record_minted_key(
        &self,
        key: &KeyRecord,
        run: Option<&GrantRecord>,
        grant_id: &str,
        day: Date,
        at: OffsetDateTime,
    ) -> Result<MintedKey, StoreError>;
    /// Revokes minted keys of a grant (or of its runs) by id, seen or not: those recorded now,
    /// the others when they are first presented (their tombstones are kept until `until`, when they would have
    /// expired anyway). Returns how many recorded keys were revoked now.
    async fn revoke_minted(
        &self,
        grant_id: &str,
        ids: &[String],
        until: OffsetDateTime,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError>;
    /// Whether the store answers at all (for `/healthz`: cheap, whatever the number of keys).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Key counts by status at `now` (for `/metrics`: one pass over the keys).
    async fn key_counts(&self, now: OffsetDateTime) -> Result<KeyCounts, StoreError>;
}
