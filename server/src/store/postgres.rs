//! The shared store: PostgreSQL, for several servers behind one load balancer.
//!
//! Caps stay exact across servers because every reservation is one conditional upsert of the
//! key's day row (`spent + reserved + cost <= cap`, checked and written by one statement under
//! the row's lock), never a read followed by a write. A reservation first locks its key's row, so
//! a revocation made anywhere either commits before it (and is seen) or waits for it.
//!
//! Each server keeps keys in memory ([`super::CachedStore`]) and learns of changes made by the
//! others through `LISTEN vault_key_keys`: a trigger notifies a key's id whenever what the key
//! allows changes, and a settlement billed above its reservation notifies too. While the
//! listening connection is down, or its heartbeat (a notification the server sends itself) does
//! not come back in time, the cache is distrusted — emptied, and nothing kept — until the
//! connection is back and listening again; everything read from then on is newer than anything
//! missed.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Postgres;
use time::{Date, OffsetDateTime};
use tokio::task::JoinHandle;
use vault_key_wire::Usd;

use super::rows::{
    calls_of_key, encode_policy, encoded_policy, grant_with_spend_on_day, key_columns, key_state,
    key_view_on_day, key_with_spend_on_day, latest_refusals, list_keys_query, micros,
    replay_reservation, to_ms, usd, CallRow, EarlierClaim, GrantRow, KeyRow, RefusalRow,
    IDEMPOTENCY_WINDOW_MS,
};
use super::{
    minted_no_later_than, revoked_at, utc_day, CallRecord, DaySpend, DeniedCall, GrantRecord,
    KeyCounts, KeyInvalidation, KeyQuery, KeyRecord, LabelMatch, MintedKey, NewCall, OpenedCall,
    Refusal, Revoked, Settled, Store, StoreError,
};
use crate::meter::Settlement;
use crate::token::TokenHash;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel a key's id is notified on when it changes.
const KEYS_CHANNEL: &str = "vault_key_keys";

/// How often the listening connection proves it still delivers notifications.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// How long a heartbeat may take to come back before the connection is taken for lost.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits between attempts to listen again, doubling from the first to the last.
const RELISTEN_AFTER: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// How the server's connections to PostgreSQL are pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Connections this server opens at most (each instance its own: N instances open up to N
    /// times this many, which must stay under the database's `max_connections`).
    pub max_connections: u32,
    /// How long a request waits for a connection before it is answered `503
    /// store_unavailable`; also bounds the wait while the database is unreachable.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
        }
    }
}

/// Settings every connection starts with, whatever the database's or role's defaults:
/// - a reservation is durable when its commit returns (`synchronous_commit = on`);
/// - no connection holds a key's row lock for long: a server that stops mid-transaction (paused,
///   cut off) has its transaction ended after 5 s idle, a statement waits at most 2 s for a lock
///   and runs at most 5 s, and the database probes a silent client's socket after 10 s;
/// - each server's sessions are named in `pg_stat_activity`.
const SESSION_SETTINGS: [(&str, &str); 8] = [
    ("synchronous_commit", "on"),
    ("idle_in_transaction_session_timeout", "5s"),
    ("lock_timeout", "2s"),
    ("statement_timeout", "5s"),
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("application_name", "vault-key-server"),
];

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    key_queues: KeyQueues,
    /// How to connect (for the listening connection, which is not the pool's).
    options: PgConnectOptions,
    settings: PoolSettings,
}

/// The writes that lock a key's row (reservations, counted calls) wait for their turn here, in
/// the server, one per key at a time: otherwise each would wait on the row lock in the database
/// holding one of the pool's few connections, and one key flooded with calls would take every
/// connection from every other key.
#[derive(Debug, Clone, Default)]
struct KeyQueues(Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

/// A key's turn; the next writer of the key goes once it is dropped.
struct KeyTurn {
    queues: KeyQueues,
    key_id: String,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn turn(&self, key_id: &str) -> KeyTurn {
        let queue = Arc::clone(self.lock().entry(key_id.to_owned()).or_default());
        KeyTurn {
            queues: self.clone(),
            key_id: key_id.to_owned(),
            turn: Some(queue.lock_owned().await),
        }
    }
}

impl Drop for KeyTurn {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        // Held by the map and by this turn only: nobody waits, the queue goes.
        if queues
            .get(&self.key_id)
            .is_some_and(|queue| Arc::strong_count(queue) == 2)
        {
            queues.remove(&self.key_id);
        }
        drop(self.turn.take());
    }
}

/// The task that follows other servers' changes; it ends when the store's pool is closed.
#[derive(Debug)]
pub struct ChangeFollower(JoinHandle<()>);

impl ChangeFollower {
    /// Stops following.
    pub fn stop(&self) {
        self.0.abort();
    }
}

impl PostgresStore {
    /// Connects to the database named by a `postgres://` URL. The schema is not touched: see
    /// [`PostgresStore::migrate`].
    pub async fn connect(url: &str, settings: PoolSettings) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)?.options(SESSION_SETTINGS);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        Ok(PostgresStore {
            pool,
            key_queues: KeyQueues::default(),
            options,
            settings,
        })
    }

    /// Brings the schema up to date. Safe to run from several servers starting at once: the
    /// migrator holds an advisory lock while it works.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))
    }

    /// Fails unless every migration this server knows has been applied (for servers started
    /// without migrating: better a clear refusal to start than a 503 on every call).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let missing: Vec<i64> = MIGRATOR
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::SchemaBehind(missing))
        }
    }

    /// Starts telling `invalidation` about keys changed by other servers (see the module's
    /// documentation); until the first connection listens, the cache is distrusted.
    pub fn follow_changes(&self, invalidation: KeyInvalidation) -> ChangeFollower {
        invalidation.distrust();
        ChangeFollower(tokio::spawn(follow_changes(
            self.options.clone(),
            self.settings.acquire_timeout,
            invalidation,
        )))
    }

    /// Closes the pool, waiting for the queries in progress.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Distrusts the cache when dropped: if following changes ends in any way (a panic included),
/// the cache must not go on being trusted.
struct DistrustOnDrop(KeyInvalidation);

impl Drop for DistrustOnDrop {
    fn drop(&mut self) {
        self.0.distrust();
    }
}

/// Listens, and listens again whenever the connection is lost, until stopped
/// ([`ChangeFollower::stop`]).
async fn follow_changes(
    options: PgConnectOptions,
    acquire_timeout: Duration,
    invalidation: KeyInvalidation,
) {
    let invalidation = DistrustOnDrop(invalidation);
    let invalidation = &invalidation.0;
    // Each server hears its own heartbeats only.
    let heartbeat_channel = format!("vault_key_heartbeat_{:016x}", rand::random::<u64>());
    let mut wait = RELISTEN_AFTER.0;
    loop {
        // A pool of one connection per attempt, apart from the requests' pool: the listener
        // never takes a request's connection, and a lost one (whose goodbye may hang on a dead
        // socket) never keeps the next from connecting.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options.clone());
        match listen(&pool, &heartbeat_channel).await {
            Ok(listener) => {
                // Everything read from now on is newer than any change missed before.
                invalidation.trust();
                tracing::info!("following key changes made by other servers");
                let listening = Instant::now();
                let lost = follow(listener, &heartbeat_channel, invalidation).await;
                invalidation.distrust();
                tracing::warn!(
                    reason = %lost,
                    "stopped hearing key changes made by other servers; keys are read from the \
                     database until listening again"
                );
                // Listen again at once after a connection that lasted; back off from one that
                // keeps failing as soon as it is made.
                if listening.elapsed() > RELISTEN_AFTER.1 {
                    wait = RELISTEN_AFTER.0;
                } else {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RELISTEN_AFTER.1);
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?wait, "cannot listen for key changes");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RELISTEN_AFTER.1);
            }
        }
    }
}

async fn listen(pool: &PgPool, heartbeat_channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is this task's to notice and to reopen (the cache is distrusted in
    // between), not the listener's to mend silently.
    listener.eager_reconnect(false);
    listener
        .listen_all([KEYS_CHANNEL, heartbeat_channel])
        .await?;
    Ok(listener)
}

/// Hands every notified key to `invalidation` until the connection is lost; returns why.
///
/// The connection proves it still delivers notifications with a heartbeat: a notification on a
/// channel of this server's own, which must come back on it in time. An answered query would
/// not be proof enough: a connection that died silently closes no socket, and a pooling proxy
/// between the server and PostgreSQL can answer queries on a session that no longer listens.
async fn follow(
    mut listener: PgListener,
    heartbeat_channel: &str,
    invalidation: &KeyInvalidation,
) -> String {
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence: u64 = 0;
    // The heartbeat awaited, and when it was sent.
    let mut awaited: Option<(String, Instant)> = None;
    loop {
        let heartbeat_due = tokio::select! {
            // Cancel-safe: the listener consumes a message only once it has all of it.
            received = listener.try_recv() => match received {
                Ok(Some(notification)) if notification.channel() == KEYS_CHANNEL => {
                    invalidation.forget(notification.payload());
                    false
                }
                Ok(Some(notification)) => {
                    if awaited.as_ref().is_some_and(|(beat, _)| beat == notification.payload()) {
                        awaited = None;
                    }
                    false
                }
                Ok(None) => return "the listening connection was closed".to_owned(),
                Err(error) => return error.to_string(),
            },
            _ = beat.tick() => true,
        };
        if !heartbeat_due {
            continue;
        }
        match &awaited {
            Some((_, sent)) if sent.elapsed() > HEARTBEAT_TIMEOUT => {
                return "a heartbeat did not come back in time".to_owned();
            }
            Some(_) => {}
            None => {
                sequence += 1;
                let payload = sequence.to_string();
                // Sent on the listening connection itself: no request's connection is taken.
                let sent = tokio::time::timeout(
                    HEARTBEAT_TIMEOUT,
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(heartbeat_channel)
                        .bind(&payload)
                        .execute(&mut listener),
                )
                .await;
                match sent {
                    Ok(Ok(_)) => awaited = Some((payload, Instant::now())),
                    Ok(Err(error)) => return format!("cannot send a heartbeat: {error}"),
                    Err(_) => return "a heartbeat could not be sent in time".to_owned(),
                }
            }
        }
    }
}

const KEY_BY_TOKEN_HASH: &str = concat!(key_with_spend_on_day!(), "$1 WHERE k.token_hash = $2");
const KEY_BY_ID: &str = concat!(key_with_spend_on_day!(), "$1 WHERE k.id = $2");
const KEY_VIEW_BY_ID: &str = concat!(key_view_on_day!(), "$1 WHERE k.id = $2");

/// Records a call and counts it against its key, in one statement; returns the call's id.
const INSERT_COUNTED_CALL: &str = "WITH counted AS \
     (UPDATE keys SET requests = requests + 1 WHERE id = $1) \
     INSERT INTO calls (key_id, day, at_ms, method, path, upstream_status, reserved_micros, \
     settled_micros, idempotency_key, fingerprint, in_flight_until_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id";

impl PostgresStore {
    async fn fetch_key(
        &self,
        sql: &'static str,
        day: Date,
        by: impl for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        let row: Option<KeyRow> = sqlx::query_as(sql)
            .bind(day.to_string())
            .bind(by)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.decode().map(|(_, key, spend)| (key, spend)))
            .transpose()
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        insert_key_row(&self.pool, key, false).await
    }

    async fn key_by_token(
        &self,
        hash: &TokenHash,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        let found = self
            .fetch_key(KEY_BY_TOKEN_HASH, day, hash.0.to_vec())
            .await?;
        // The index found the row by hash; confirm in constant time all the same.
        Ok(found.filter(|(key, _)| key.token_hash.matches(hash)))
    }

    async fn key(&self, id: &str, day: Date) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        self.fetch_key(KEY_BY_ID, day, id.to_owned()).await
    }

    async fn key_view(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        self.fetch_key(KEY_VIEW_BY_ID, day, id.to_owned()).await
    }

    async fn list_keys(
        &self,
        query: &KeyQuery,
        day: Date,
    ) -> Result<Vec<(i64, KeyRecord, DaySpend)>, StoreError> {
        let rows = list_keys_query::<Postgres>(query, day)
            .build_query_as::<KeyRow>()
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(KeyRow::decode).collect()
    }

    async fn revoke(&self, id: &str, at: OffsetDateTime) -> Result<Revoked, StoreError> {
        // The trigger on `keys` tells every server to forget the key.
        let (revoked, exists): (bool, bool) = sqlx::query_as(
            "WITH revoked AS (UPDATE keys SET revoked_ms = $1 WHERE id = $2 \
             AND revoked_ms IS NULL RETURNING 1) \
             SELECT EXISTS (SELECT 1 FROM revoked), EXISTS (SELECT 1 FROM keys WHERE id = $2)",
        )
        .bind(to_ms(at))
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(match (revoked, exists) {
            (true, _) => Revoked::Now,
            (false, true) => Revoked::Already,
            (false, false) => Revoked::NotFound,
        })
    }

    async fn revoke_ids(&self, ids: &[String], at: OffsetDateTime) -> Result<u64, StoreError> {
        let revoked = sqlx::query(
            "UPDATE keys SET revoked_ms = $1 WHERE id = ANY($2) AND revoked_ms IS NULL",
        )
        .bind(to_ms(at))
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(revoked.rows_affected())
    }

    async fn revoke_by_label(
        &self,
        labels: LabelMatch<'_>,
        at: OffsetDateTime,
        remember_until: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = match labels {
            LabelMatch::Prefix(_) => {
                "UPDATE keys SET revoked_ms = $1 WHERE revoked_ms IS NULL AND expires_ms > $1 \
                 AND substr(label, 1, length($2)) = $2"
            }
            LabelMatch::Exact(_) => {
                "UPDATE keys SET revoked_ms = $1 WHERE revoked_ms IS NULL AND expires_ms > $1 \
                 AND label = $2"
            }
        };
        let revoked = sqlx::query(sql)
            .bind(to_ms(at))
            .bind(labels.text())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM label_revocations WHERE until_ms <= $1")
            .bind(to_ms(at))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO label_revocations (label, exact, at_ms, until_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(labels.text())
        .bind(matches!(labels, LabelMatch::Exact(_)))
        .bind(to_ms(at))
        .bind(to_ms(remember_until))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked.rows_affected())
    }

    async fn open_call(&self, call: &NewCall) -> Result<OpenedCall, StoreError> {
        let _turn = self.key_queues.turn(&call.key_id).await;
        let mut tx = self.pool.begin().await?;
        let opened = open_call(&mut tx, call).await?;
        if matches!(opened, OpenedCall::Opened { .. }) {
            tx.commit().await?;
        }
        Ok(opened)
    }

    async fn settle_call(
        &self,
        call_id: i64,
        settlement: &Settlement,
        upstream_status: Option<u16>,
    ) -> Result<Option<Settled>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let settled = settle_call(&mut tx, call_id, settlement, upstream_status).await?;
        tx.commit().await?;
        Ok(settled)
    }

    async fn reconcile_unknown(
        &self,
        before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        // One statement: the calls settled and their reservations moved to spent commit together,
        // and a call another server settles meanwhile is not returned here.
        let reconciled: i64 = sqlx::query_scalar(
            "WITH settled AS ( \
               UPDATE calls SET settled_micros = reserved_micros, reconciled = true, \
               in_flight_until_ms = NULL WHERE settled_micros IS NULL AND at_ms < $1 \
               AND (in_flight_until_ms IS NULL OR in_flight_until_ms <= $2) \
               RETURNING key_id, day, reserved_micros), \
             per_day AS (SELECT key_id, day, SUM(reserved_micros) AS reserved FROM settled \
               GROUP BY key_id, day), \
             moved AS (UPDATE spend SET reserved_micros = spend.reserved_micros - per_day.reserved, \
               spent_micros = spend.spent_micros + per_day.reserved FROM per_day \
               WHERE spend.key_id = per_day.key_id AND spend.day = per_day.day RETURNING 1), \
             per_grant AS (SELECT g.id AS grant_id, per_day.day, SUM(per_day.reserved) AS reserved \
               FROM per_day JOIN keys k ON k.id = per_day.key_id JOIN grants g ON g.id = k.grant_id \
               OR g.id = (SELECT parent_id FROM grants WHERE id = k.grant_id) \
               GROUP BY g.id, per_day.day), \
             moved_in_grants AS (UPDATE grant_spend \
               SET reserved_micros = grant_spend.reserved_micros - per_grant.reserved, \
               spent_micros = grant_spend.spent_micros + per_grant.reserved FROM per_grant \
               WHERE grant_spend.grant_id = per_grant.grant_id AND grant_spend.day = per_grant.day \
               RETURNING 1) \
             SELECT COUNT(*) FROM settled",
        )
        .bind(to_ms(before))
        .bind(to_ms(now))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(reconciled).unwrap_or(0))
    }

    async fn abandon_call(&self, call_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE calls SET in_flight_until_ms = NULL WHERE id = $1")
            .bind(call_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_free_call(
        &self,
        key_id: &str,
        at: OffsetDateTime,
        method: &str,
        path: &str,
        upstream_status: Option<u16>,
    ) -> Result<(), StoreError> {
        let _turn = self.key_queues.turn(key_id).await;
        sqlx::query(INSERT_COUNTED_CALL)
            .bind(key_id)
            .bind(utc_day(at).to_string())
            .bind(to_ms(at))
            .bind(method)
            .bind(path)
            .bind(upstream_status.map(i64::from))
            .bind(0_i64)
            .bind(Some(0_i64))
            .bind(None::<String>)
            .bind(None::<String>)
            .bind(None::<i64>)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_denial(&self, denial: &DeniedCall) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO calls (key_id, day, at_ms, method, path, denied, settled_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, 0)",
        )
        .bind(&denial.key_id)
        .bind(utc_day(denial.at).to_string())
        .bind(to_ms(denial.at))
        .bind(&denial.method)
        .bind(&denial.path)
        .bind(denial.code.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn calls(&self, key_id: &str, limit: u32) -> Result<Vec<CallRecord>, StoreError> {
        let rows: Vec<CallRow> =
            sqlx::query_as(concat!(calls_of_key!(), "$1 ORDER BY id DESC LIMIT $2"))
                .bind(key_id)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().rev().map(CallRow::decode).collect()
    }

    async fn insert_grant(&self, grant: &GrantRecord) -> Result<(), StoreError> {
        insert_grant_row(&self.pool, grant, false).await
    }

    async fn grant(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(GrantRecord, DaySpend)>, StoreError> {
        let row: Option<GrantRow> =
            sqlx::query_as(concat!(grant_with_spend_on_day!(), "$1 WHERE g.id = $2"))
                .bind(day.to_string())
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(GrantRow::decode).transpose()
    }

    async fn revoke_grant(&self, id: &str, at: OffsetDateTime) -> Result<Option<u64>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The grant's row lock orders this against a minted key being recorded (which holds it
        // shared): that key is either seen here, or sees the grant revoked.
        let found = sqlx::query(
            "UPDATE grants SET revoked_ms = COALESCE(revoked_ms, $1) WHERE id = $2 OR parent_id = $2",
        )
        .bind(to_ms(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if found.rows_affected() == 0 {
            return Ok(None);
        }
        let revoked = sqlx::query(
            "UPDATE keys SET revoked_ms = $1 WHERE revoked_ms IS NULL AND grant_id IN \
             (SELECT id FROM grants WHERE id = $2 OR parent_id = $2)",
        )
        .bind(to_ms(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // A run recorded while the first statement waited for its lock is not in that
        // statement's snapshot; a statement of its own sees it.
        sqlx::query("UPDATE grants SET revoked_ms = COALESCE(revoked_ms, $1) WHERE parent_id = $2")
            .bind(to_ms(at))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(revoked.rows_affected()))
    }

    async fn record_minted_key(
        &self,
        key: &KeyRecord,
        run: Option<&GrantRecord>,
        grant_id: &str,
        day: Date,
        at: OffsetDateTime,
    ) -> Result<MintedKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let grant_live: Option<bool> =
            sqlx::query_scalar("SELECT revoked_ms IS NULL FROM grants WHERE id = $1 FOR SHARE")
                .bind(grant_id)
                .fetch_optional(&mut *tx)
                .await?;
        let tombstoned: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tombstones WHERE key_id = $1 AND grant_id = $2)",
        )
        .bind(&key.id)
        .bind(grant_id)
        .fetch_one(&mut *tx)
        .await?;
        // An operator revoked its label (or a prefix of it) after it was minted.
        let label_revoked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM label_revocations WHERE at_ms >= $2 \
             AND CASE WHEN exact THEN label = $1 ELSE substr($1, 1, length(label)) = label END)",
        )
        .bind(&key.label)
        // A key minted within a minter's clock skew after the revocation counts as before it.
        .bind(to_ms(minted_no_later_than(key)))
        .fetch_one(&mut *tx)
        .await?;
        if grant_live != Some(true) || tombstoned || label_revoked {
            insert_key_row(&mut *tx, &revoked_at(key, at), true).await?;
            tx.commit().await?;
            return Ok(MintedKey::Revoked);
        }
        if let Some(run) = run {
            // Recorded at its first key's first use; later keys find it as it was.
            insert_grant_row(&mut *tx, run, true).await?;
            let recorded: Option<(Option<i64>, bool)> = sqlx::query_as(
                "SELECT revoked_ms, parent_id IS NOT DISTINCT FROM $2 AND label_prefix = $3 \
                 AND daily_cap_micros = $4 AND expires_ms = $5 FROM grants WHERE id = $1 FOR SHARE",
            )
            .bind(&run.id)
            .bind(&run.parent_id)
            .bind(&run.label_prefix)
            .bind(micros(run.daily_cap))
            .bind(to_ms(run.expires_at))
            .fetch_optional(&mut *tx)
            .await?;
            match recorded {
                Some((None, true)) => {}
                Some((Some(_), _)) => {
                    insert_key_row(&mut *tx, &revoked_at(key, at), true).await?;
                    tx.commit().await?;
                    return Ok(MintedKey::Revoked);
                }
                _ => return Ok(MintedKey::IdTaken),
            }
        }
        // Already recorded (by this token: its hash is unique), or the id is another key's:
        // either way nothing is written, and the read below tells which.
        insert_key_row(&mut *tx, key, true).await?;
        tx.commit().await?;
        Ok(match self.key_by_token(&key.token_hash, day).await? {
            Some(found) => MintedKey::Recorded(Box::new(found)),
            None => MintedKey::IdTaken,
        })
    }

    async fn revoke_minted(
        &self,
        grant_id: &str,
        ids: &[String],
        until: OffsetDateTime,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The grant's row, against the shared lock a minted key being recorded holds on it: that
        // key either is revoked here or finds its tombstone. (Not FOR UPDATE: that would also
        // wait for a reservation's foreign-key lock on the grant, and deadlock with it.)
        sqlx::query("SELECT 1 FROM grants WHERE id = $1 FOR NO KEY UPDATE")
            .bind(grant_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM tombstones WHERE until_ms <= $1")
            .bind(to_ms(at))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tombstones (key_id, grant_id, until_ms) SELECT id, $2, $3 \
             FROM UNNEST($1::TEXT[]) AS id ON CONFLICT (key_id, grant_id) \
             DO UPDATE SET until_ms = GREATEST(tombstones.until_ms, EXCLUDED.until_ms)",
        )
        .bind(ids)
        .bind(grant_id)
        .bind(to_ms(until))
        .execute(&mut *tx)
        .await?;
        let revoked = sqlx::query(
            "UPDATE keys SET revoked_ms = $1 WHERE id = ANY($2) AND revoked_ms IS NULL \
             AND grant_id IN (SELECT id FROM grants WHERE id = $3 OR parent_id = $3)",
        )
        .bind(to_ms(at))
        .bind(ids)
        .bind(grant_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked.rows_affected())
    }

    async fn latest_refusals(&self, limit: u32) -> Result<Vec<Refusal>, StoreError> {
        let rows: Vec<RefusalRow> = sqlx::query_as(concat!(latest_refusals!(), "$1"))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(RefusalRow::decode).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn key_counts(&self, now: OffsetDateTime) -> Result<KeyCounts, StoreError> {
        let (active, revoked, expired): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               COUNT(*) FILTER (WHERE revoked_ms IS NULL AND expires_ms > $1), \
               COUNT(*) FILTER (WHERE revoked_ms IS NOT NULL), \
               COUNT(*) FILTER (WHERE revoked_ms IS NULL AND expires_ms <= $1) \
             FROM keys",
        )
        .bind(to_ms(now))
        .fetch_one(&self.pool)
        .await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(KeyCounts {
            active: count(active),
            revoked: count(revoked),
            expired: count(expired),
        })
    }
}

/// Reserves a call's cost (see [`Store::open_call`]) in the transaction `conn` is in.
async fn open_call(conn: &mut PgConnection, call: &NewCall) -> Result<OpenedCall, StoreError> {
    let day = utc_day(call.at).to_string();
    let at_ms = to_ms(call.at);
    // The key's row stays locked until this transaction ends: a revocation (an UPDATE of the
    // row) committed before is seen here, and one made meanwhile waits until the money has moved.
    // Every reservation of the key queues here too, which is what makes the idempotency check
    // below see the call before it.
    let row: Option<(Option<i64>, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT revoked_ms, expires_ms, daily_cap_micros, grant_id FROM keys WHERE id = $1 \
         FOR NO KEY UPDATE",
    )
    .bind(&call.key_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (state, grant_id) = match row {
        Some((revoked, expires, cap, grant_id)) => (Some((revoked, expires, cap)), grant_id),
        None => (None, None),
    };
    let cap = match key_state(state, at_ms) {
        Ok(cap) => cap,
        Err(refused) => return Ok(refused),
    };
    if let Some(object) = &call.acts_on {
        let owned: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM owned_objects WHERE key_id = $1 AND object_id = $2 \
             AND kind = $4 AND ($3::TEXT IS NULL OR currency = $3))",
        )
        .bind(&call.key_id)
        .bind(&object.id)
        .bind(object.currency.as_deref())
        .bind(&object.kind)
        .fetch_one(&mut *conn)
        .await?;
        if !owned {
            return Ok(OpenedCall::NotOwned);
        }
    }
    let mut reserve = call.max_cost;
    if let Some(claim) = &call.idempotency {
        let earlier: EarlierClaim = sqlx::query_as(
            "SELECT settled_micros, in_flight_until_ms FROM calls WHERE key_id = $1 \
             AND idempotency_key = $2 AND fingerprint = $3 AND at_ms > $4 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(&call.key_id)
        .bind(&claim.key)
        .bind(&claim.fingerprint)
        .bind(at_ms - IDEMPOTENCY_WINDOW_MS)
        .fetch_optional(&mut *conn)
        .await?;
        reserve = match replay_reservation(earlier, at_ms, call.max_cost) {
            Ok(reserve) => reserve,
            Err(refused) => return Ok(refused),
        };
    }
    if !reserve.is_zero() {
        // One conditional statement: the day's first reservation inserts the row, later ones
        // add to it under the row's lock, and neither happens past the cap.
        let reserved = sqlx::query(
            "INSERT INTO spend (key_id, day, reserved_micros) SELECT $2, $3, $1 WHERE $1 <= $4 \
             ON CONFLICT (key_id, day) DO UPDATE \
             SET reserved_micros = spend.reserved_micros + EXCLUDED.reserved_micros \
             WHERE spend.spent_micros + spend.reserved_micros + EXCLUDED.reserved_micros <= $4",
        )
        .bind(micros(reserve))
        .bind(&call.key_id)
        .bind(&day)
        .bind(cap)
        .execute(&mut *conn)
        .await?;
        if reserved.rows_affected() == 0 {
            let spend: Option<(i64, i64)> = sqlx::query_as(
                "SELECT spent_micros, reserved_micros FROM spend WHERE key_id = $1 AND day = $2",
            )
            .bind(&call.key_id)
            .bind(&day)
            .fetch_optional(&mut *conn)
            .await?;
            let spend = spend
                .map(|(spent, reserved)| DaySpend {
                    spent: usd(spent),
                    reserved: usd(reserved),
                })
                .unwrap_or_default();
            return Ok(OpenedCall::CapExhausted {
                cap: usd(cap),
                spend,
                grant: None,
            });
        }
        if let Some(grant_id) = grant_id {
            // Nothing is committed unless the call opens: the key's reservation goes with it.
            if let Some(exhausted) = reserve_in_grants(conn, &grant_id, &day, reserve).await? {
                return Ok(exhausted);
            }
        }
    }
    // Only a reserving call can be replayed: a replay records no idempotency key of its own.
    let claim = call.idempotency.as_ref().filter(|_| !reserve.is_zero());
    let call_id: i64 = sqlx::query_scalar(INSERT_COUNTED_CALL)
        .bind(&call.key_id)
        .bind(&day)
        .bind(at_ms)
        .bind(&call.method)
        .bind(&call.path)
        .bind(None::<i64>)
        .bind(micros(reserve))
        .bind(None::<i64>)
        .bind(claim.map(|c| c.key.as_str()))
        .bind(claim.map(|c| c.fingerprint.as_str()))
        .bind(Some(to_ms(call.in_flight_until)))
        .fetch_one(&mut *conn)
        .await?;
    Ok(OpenedCall::Opened {
        call_id,
        reserved: reserve,
    })
}

/// Inserts a key's row, revoked or not (doing nothing when its id or token exists, if
/// `or_ignore`). A minted key is written only while its grant (or run) is on record.
async fn insert_key_row<'c>(
    conn: impl sqlx::Executor<'c, Database = Postgres>,
    key: &KeyRecord,
    or_ignore: bool,
) -> Result<(), StoreError> {
    macro_rules! insert {
        () => {
            "INSERT INTO keys (id, token_hash, label, vendor, daily_cap_micros, \
             allowed_endpoints, allowed_methods, created_ms, expires_ms, grant_id, revoked_ms) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 WHERE $10::TEXT IS NULL \
             OR EXISTS (SELECT 1 FROM grants WHERE id = $10)"
        };
    }
    let sql = if or_ignore {
        concat!(insert!(), " ON CONFLICT DO NOTHING")
    } else {
        insert!()
    };
    let (endpoints, methods) = encoded_policy(key)?;
    sqlx::query(sql)
        .bind(&key.id)
        .bind(&key.token_hash.0[..])
        .bind(&key.label)
        .bind(&key.vendor)
        .bind(micros(key.daily_cap))
        .bind(endpoints)
        .bind(methods)
        .bind(to_ms(key.created_at))
        .bind(to_ms(key.expires_at))
        .bind(&key.grant_id)
        .bind(key.revoked_at.map(to_ms))
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts a grant's row (doing nothing when its id exists, if `or_ignore`).
async fn insert_grant_row<'c>(
    conn: impl sqlx::Executor<'c, Database = Postgres>,
    grant: &GrantRecord,
    or_ignore: bool,
) -> Result<(), StoreError> {
    macro_rules! insert {
        () => {
            "INSERT INTO grants (id, secret, parent_id, label_prefix, vendor, max_key_cap_micros, \
             daily_cap_micros, allowed_endpoints, allowed_methods, max_key_ttl_ms, created_ms, \
             expires_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        };
    }
    let sql = if or_ignore {
        concat!(insert!(), " ON CONFLICT (id) DO NOTHING")
    } else {
        insert!()
    };
    let (endpoints, methods) =
        encode_policy(&grant.allowed_endpoints, grant.allowed_methods.as_deref())?;
    sqlx::query(sql)
        .bind(&grant.id)
        .bind(grant.secret.as_ref().map(|s| s.expose_secret()))
        .bind(&grant.parent_id)
        .bind(&grant.label_prefix)
        .bind(&grant.vendor)
        .bind(micros(grant.max_key_cap))
        .bind(micros(grant.daily_cap))
        .bind(endpoints)
        .bind(methods)
        .bind(i64::try_from(grant.max_key_ttl.whole_milliseconds()).unwrap_or(i64::MAX))
        .bind(to_ms(grant.created_at))
        .bind(to_ms(grant.expires_at))
        .execute(conn)
        .await?;
    Ok(())
}

/// Reserves `amount` against the daily cap of all the keys of the key's grant (or run) together,
/// and of the run's grant (each day row is locked by its upsert until the transaction ends); the
/// refusal if it does not fit somewhere.
async fn reserve_in_grants(
    conn: &mut PgConnection,
    first: &str,
    day: &str,
    amount: Usd,
) -> Result<Option<OpenedCall>, StoreError> {
    // A key's grant, or its run and the run's grant: two levels, as settlement moves them.
    let mut next = Some(first.to_owned());
    for _ in 0..2 {
        let Some(grant_id) = next else { break };
        let (cap, parent): (i64, Option<String>) =
            sqlx::query_as("SELECT daily_cap_micros, parent_id FROM grants WHERE id = $1")
                .bind(&grant_id)
                .fetch_one(&mut *conn)
                .await?;
        let reserved = sqlx::query(
            "INSERT INTO grant_spend (grant_id, day, reserved_micros) SELECT $2, $3, $1 \
             WHERE $1 <= $4 ON CONFLICT (grant_id, day) DO UPDATE \
             SET reserved_micros = grant_spend.reserved_micros + EXCLUDED.reserved_micros \
             WHERE grant_spend.spent_micros + grant_spend.reserved_micros \
             + EXCLUDED.reserved_micros <= $4",
        )
        .bind(micros(amount))
        .bind(&grant_id)
        .bind(day)
        .bind(cap)
        .execute(&mut *conn)
        .await?;
        if reserved.rows_affected() == 0 {
            let spend: Option<(i64, i64)> = sqlx::query_as(
                "SELECT spent_micros, reserved_micros FROM grant_spend \
                 WHERE grant_id = $1 AND day = $2",
            )
            .bind(&grant_id)
            .bind(day)
            .fetch_optional(&mut *conn)
            .await?;
            let spend = spend
                .map(|(spent, reserved)| DaySpend {
                    spent: usd(spent),
                    reserved: usd(reserved),
                })
                .unwrap_or_default();
            return Ok(Some(OpenedCall::CapExhausted {
                cap: usd(cap),
                spend,
                grant: Some(grant_id),
            }));
        }
        next = parent;
    }
    Ok(None)
}

/// Settles a call (see [`Store::settle_call`]) in the transaction `conn` is in.
async fn settle_call(
    conn: &mut PgConnection,
    call_id: i64,
    settlement: &Settlement,
    upstream_status: Option<u16>,
) -> Result<Option<Settled>, StoreError> {
    let cost = settlement.cost;
    let settled: Option<(String, String, i64)> = sqlx::query_as(
        "UPDATE calls SET settled_micros = $1, upstream_status = $2, in_flight_until_ms = NULL \
         WHERE id = $3 AND settled_micros IS NULL RETURNING key_id, day, reserved_micros",
    )
    .bind(micros(cost))
    .bind(upstream_status.map(i64::from))
    .bind(call_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((key_id, day, reserved)) = settled else {
        // Already settled (or never opened): settling is idempotent.
        return Ok(None);
    };
    if let Some(object) = &settlement.created {
        sqlx::query(
            "INSERT INTO owned_objects (key_id, object_id, kind, currency) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(&key_id)
        .bind(&object.id)
        .bind(&object.kind)
        .bind(object.currency.as_deref())
        .execute(&mut *conn)
        .await?;
    }
    if reserved != 0 || !cost.is_zero() {
        // A call that reserved has its day's row; one that reserved nothing (a replay) and cost
        // something may not.
        sqlx::query(
            "INSERT INTO spend (key_id, day, spent_micros) VALUES ($1, $2, $4) \
             ON CONFLICT (key_id, day) DO UPDATE \
             SET reserved_micros = spend.reserved_micros - $3, \
             spent_micros = spend.spent_micros + $4",
        )
        .bind(&key_id)
        .bind(&day)
        .bind(reserved)
        .bind(micros(cost))
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO grant_spend (grant_id, day, spent_micros) \
             SELECT g.id, $2, $4 FROM keys k JOIN grants g ON g.id = k.grant_id \
             OR g.id = (SELECT parent_id FROM grants WHERE id = k.grant_id) WHERE k.id = $1 \
             ON CONFLICT (grant_id, day) DO UPDATE \
             SET reserved_micros = grant_spend.reserved_micros - $3, \
             spent_micros = grant_spend.spent_micros + $4",
        )
        .bind(&key_id)
        .bind(&day)
        .bind(reserved)
        .bind(micros(cost))
        .execute(&mut *conn)
        .await?;
    }
    let settled = Settled {
        key_id,
        reserved: usd(reserved),
        cost,
    };
    if settled.cost > settled.reserved {
        // The one way spend passes a cap: every server forgets the key and reads its spend anew.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(KEYS_CHANNEL)
            .bind(&settled.key_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(settled))
}

/// Whether a database URL names PostgreSQL (its scheme in any case, as the driver takes it).
pub fn is_postgres_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One writer per key at a time, other keys unhindered, and no queue left behind.
    #[tokio::test]
    async fn writers_of_one_key_take_turns_and_leave_no_queue() {
        let queues = KeyQueues::default();
        let first = queues.turn("key_a").await;
        let other_key = tokio::time::timeout(Duration::from_secs(1), queues.turn("key_b")).await;
        assert!(other_key.is_ok(), "another key waits for nobody");
        drop(other_key);
        let second = tokio::spawn({
            let queues = queues.clone();
            async move { queues.turn("key_a").await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the same key waits for its turn");
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(
            queues.lock().len(),
            1,
            "key_a's queue stays while it is used"
        );
        drop(second);
        assert!(queues.lock().is_empty());
    }
}
