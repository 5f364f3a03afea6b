//! The embedded store: SQLite, in a file or in memory.
//!
//! All writes go through one connection, so SQLite's single-writer rule is met by queueing rather
//! than by `SQLITE_BUSY` retries, and every transaction sees the one before it. The proxy's
//! writes — reservations, settlements, the audit trail — are committed in groups: a writer task
//! takes every write waiting and runs them in one transaction, so concurrent calls share one
//! commit (and, with [`SyncMode::Full`], one fsync) and no call's reservation is answered before
//! it is durable. Reads of a file database use a separate pool and run beside the writer (WAL
//! mode). With `synchronous = NORMAL` a committed transaction is in the WAL before `commit`
//! returns, which is what surviving a crash of the server process needs; [`SyncMode::Full`] adds
//! an fsync per commit for surviving power loss.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use secrecy::ExposeSecret;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, Row, Sqlite};
use time::{Date, OffsetDateTime};
use tokio::sync::{mpsc, oneshot};
use vault_key_wire::Usd;

use super::rows::{
    calls_of_key, encode_policy, encoded_policy, grant_with_spend_on_day, key_columns, key_state,
    key_view_on_day, key_with_spend_on_day, latest_refusals, list_keys_query, micros,
    replay_reservation, to_ms, usd, CallRow, EarlierClaim, GrantRow, KeyRow, RefusalRow,
    IDEMPOTENCY_WINDOW_MS,
};
use super::{
    minted_no_later_than, revoked_at, utc_day, CallRecord, DaySpend, DeniedCall, GrantRecord,
    KeyCounts, KeyQuery, KeyRecord, LabelMatch, MintedKey, NewCall, OpenedCall, Refusal, Revoked,
    Settled, Store, StoreError,
};
use crate::meter::Settlement;
use crate::token::TokenHash;

/// How hard a commit works to be durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    /// Survives a crash of the server process (`synchronous = NORMAL` in WAL mode).
    #[default]
    Normal,
    /// Also survives power loss, at the price of one fsync per commit (`synchronous = FULL`).
    Full,
}

impl SyncMode {
    /// The value of SQLite's `synchronous` pragma, for every connection that writes.
    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        }
    }
}

/// How long a connection waits for another's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    /// Checkpoints the WAL.
    checkpointer: SqlitePool,
    group: GroupCommit,
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL frames (of 4 KiB pages) past which a checkpoint makes the writer wait: 64 MiB.
const MAX_WAL_FRAMES: i64 = 16_384;

/// Copies the WAL back into the database file, beside the writer rather than in its way, until
/// the store closes. A passive checkpoint waits for no reader or writer; frames it could not copy
/// this time are copied the next. The WAL starts over only once it has been copied whole when a
/// write begins, which a writer that never pauses would never let happen: past
/// [`MAX_WAL_FRAMES`], a restarting checkpoint holds the writer until the WAL can start over.
async fn checkpoint_wal(pool: SqlitePool) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if pool.is_closed() {
            return;
        }
        let checkpoint = async {
            // (busy, frames in the WAL, frames copied)
            let (_, frames, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await?;
            if frames > MAX_WAL_FRAMES {
                tracing::info!(frames, "the WAL is long; restarting it");
                sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&pool)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        if let Err(error) = checkpoint.await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(%error, "could not checkpoint the WAL");
        }
    }
}

/// The most writes committed in one transaction.
const MAX_GROUP: usize = 256;

/// The queue of the writer thread, which owns the database's one writing connection and commits
/// what waits in it in groups.
///
/// A thread with a synchronous connection, rather than an async driver: sqlx's SQLite driver runs
/// each statement on a worker thread of its own, and the hand-offs (thread wake-ups, measured at
/// the top of the proxy's profile) cost more than the statements. Here a whole group is one
/// hand-off each way.
#[derive(Clone)]
struct GroupCommit {
    queue: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// One write of a group.
struct Job {
    /// Runs inside the group's transaction, says whether it succeeded, and leaves what delivers
    /// its result once the transaction has ended.
    run: RunWrite,
    /// Answers the write without running it.
    refuse: Box<dyn FnOnce(&str) + Send>,
}

impl Job {
    /// Runs the write; a panic in it is its own failure, not the writer's.
    fn run(self, conn: &rusqlite::Connection) -> (bool, Deliver) {
        let refuse = self.refuse;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.run)(conn))) {
            Ok(done) => done,
            Err(_) => {
                tracing::error!("a write panicked; it is undone");
                (
                    false,
                    Box::new(move |_| refuse("the write failed (it panicked)")),
                )
            }
        }
    }

    fn refuse(self, why: &str) {
        (self.refuse)(why);
    }
}

/// A write's body: whether it succeeded, and its delivery.
type RunWrite = Box<dyn FnOnce(&rusqlite::Connection) -> (bool, Deliver) + Send>;

/// Delivers a write's result, given how its group's transaction ended.
type Deliver = Box<dyn FnOnce(Result<(), &str>) + Send>;

impl GroupCommit {
    /// Opens the writing connection to the database at `path` and starts its thread.
    fn start(path: &Path, sync: SyncMode, held: Held) -> Result<GroupCommit, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.set_prepared_statement_cache_capacity(32);
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        // The writer never checkpoints the WAL itself (a checkpoint, with its fsync, would stall
        // every write queued behind it); a connection of its own does, beside it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (queue, jobs) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("vault-key-writer".to_owned())
            .spawn(move || commit_groups(conn, jobs, held))
            .map_err(|e| StoreError::Write(format!("cannot start the writer thread: {e}")))?;
        Ok(GroupCommit { queue })
    }

    /// Runs `write` in the next group, and returns its result once the group has committed.
    /// A write that fails fails its whole group (nothing of it is kept): the failures a write can
    /// meet here — a full disk, a lost file — are the database's, not the write's.
    async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        // Answered once: by the write after its group ends, or without running it.
        let reply = Arc::new(Mutex::new(Some(reply)));
        let answer = |reply: &Mutex<Option<oneshot::Sender<Result<T, StoreError>>>>,
                      value: Result<T, StoreError>| {
            if let Some(reply) = reply.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = reply.send(value);
            }
        };
        let refused = Arc::clone(&reply);
        let job = Job {
            run: Box::new(move |conn| {
                let result = write(conn);
                let ok = result.is_ok();
                let deliver: Deliver = Box::new(move |group| {
                    answer(
                        &reply,
                        match (result, group) {
                            (Ok(value), Ok(())) => Ok(value),
                            (Err(own), _) => Err(own),
                            (Ok(_), Err(why)) => Err(StoreError::Write(format!(
                                "the write was rolled back: {why}"
                            ))),
                        },
                    );
                });
                (ok, deliver)
            }),
            refuse: Box::new(move |why| {
                answer(&refused, Err(StoreError::Write(why.to_owned())));
            }),
        };
        let gone = || StoreError::Write("the store's writer has stopped".to_owned());
        self.queue.send(job).map_err(|_| gone())?;
        // A group that could not even begin drops its writes, and their reply senders with them.
        result.await.map_err(|_| gone())?
    }
}

/// The writer thread: takes every write waiting (at most [`MAX_GROUP`]), runs each in a
/// savepoint of one transaction (a write that fails, or panics, undoes only itself), commits, and
/// only then answers each. Ends when the store is dropped, and only then lets `held` go.
fn commit_groups(
    mut conn: rusqlite::Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    held: Held,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut deliveries: Vec<Deliver> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = jobs.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(error) => {
                tracing::error!(%error, writes = group.len(), "a group of writes could not begin");
                let why = format!("the writer could not begin a transaction: {error}");
                for job in group.drain(..) {
                    job.refuse(&why);
                }
                continue;
            }
        };
        let mut lost: Option<String> = None;
        for job in group.drain(..) {
            if let Some(why) = &lost {
                job.refuse(why);
                continue;
            }
            if let Err(error) = tx.execute_batch("SAVEPOINT write") {
                let why = format!("the writer could not open a savepoint: {error}");
                job.refuse(&why);
                lost = Some(why);
                continue;
            }
            let (ok, deliver) = job.run(&tx);
            let undone = if ok {
                tx.execute_batch("RELEASE write")
            } else {
                tx.execute_batch("ROLLBACK TO write; RELEASE write")
            };
            deliveries.push(deliver);
            // A full disk or an I/O error makes SQLite roll back the whole transaction itself:
            // the writes before are gone too, and none after may run outside a transaction.
            if undone.is_err() || tx.is_autocommit() {
                lost = Some("the group's transaction was rolled back by SQLite".to_owned());
            }
        }
        let outcome = match lost {
            Some(why) => {
                let _ = tx.rollback();
                tracing::error!(reason = %why, writes = deliveries.len(), "a group of writes was lost");
                Err(why)
            }
            None => tx.commit().map_err(|error| {
                tracing::error!(%error, writes = deliveries.len(), "a group of writes could not commit");
                error.to_string()
            }),
        };
        for deliver in deliveries.drain(..) {
            deliver(outcome.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
    drop(conn);
    drop(held);
}

/// What the writer holds until its connection is closed: a scratch database's directory, and a
/// file database's lock.
type Held = (Option<Arc<tempfile::TempDir>>, Option<std::fs::File>);

/// Takes the lock that makes the server at `path` the only one: its keys are held in memory and
/// forgotten on the revocations it makes, which another server on the same file would not see.
fn lock_database(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Write(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(path.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Write(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database named by a `sqlite://path` or `sqlite::memory:` URL
    /// and brings its schema up to date.
    pub async fn open(url: &str, sync: SyncMode) -> Result<SqliteStore, StoreError> {
        // A database asked for in memory is a file in a directory of its own, removed with the
        // store: the writer thread and the reading pool are separate connections, and share a
        // file as they could not share a memory.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let (options, scratch, lock) = if in_memory {
            let scratch = tempfile::Builder::new()
                .prefix("vault-key-")
                .tempdir()
                .map_err(|e| StoreError::Write(format!("cannot make a scratch database: {e}")))?;
            let options = SqliteConnectOptions::new().filename(scratch.path().join("vault-key.db"));
            (options, Some(Arc::new(scratch)), None)
        } else {
            let options = SqliteConnectOptions::from_str(url)?;
            let lock = lock_database(options.get_filename())?;
            (options, None, Some(lock))
        };
        let options = options
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .journal_mode(SqliteJournalMode::Wal)
            .pragma("synchronous", sync.pragma());
        // Its statements, five a second, are not worth a debug log line each.
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().disable_statement_logging())
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&checkpointer)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        // The writer thread keeps a scratch database's directory until it has closed the file.
        let group = GroupCommit::start(options.get_filename(), sync, (scratch, lock))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        // Started last, so that a store that failed to open leaves no task behind.
        tokio::spawn(checkpoint_wal(checkpointer.clone()));
        Ok(SqliteStore {
            reader,
            checkpointer,
            group,
        })
    }

    /// One key with its day's spend, from a bound `KEY_BY_*` statement.
    async fn fetch_key<'q>(
        &self,
        query: sqlx::query::QueryAs<'q, Sqlite, KeyRow, sqlx::sqlite::SqliteArguments<'q>>,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        let row = query.fetch_optional(&self.reader).await?;
        row.map(|row| row.decode().map(|(_, key, spend)| (key, spend)))
            .transpose()
    }

    /// Waits for the writes queued so far, closes the reading connections (waiting for queries
    /// in progress) and makes a last checkpoint. The writer thread ends with the last clone of
    /// the store.
    pub async fn close(&self) {
        // Every write queued so far (audit rows sent off the response path) commits first.
        let _ = self.group.write(|_| Ok(())).await;
        self.reader.close().await;
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.checkpointer)
            .await;
        self.checkpointer.close().await;
    }
}

const KEY_BY_TOKEN_HASH: &str = concat!(key_with_spend_on_day!(), "? WHERE k.token_hash = ?");
const KEY_BY_ID: &str = concat!(key_with_spend_on_day!(), "? WHERE k.id = ?");
const KEY_VIEW_BY_ID: &str = concat!(key_view_on_day!(), "? WHERE k.id = ?");

#[async_trait]
impl Store for SqliteStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = KeyColumns::of(key)?;
        self.group
            .write(move |conn| insert_key_row(conn, &key, false))
            .await
    }

    async fn key_by_token(
        &self,
        hash: &TokenHash,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        let query = sqlx::query_as(KEY_BY_TOKEN_HASH)
            .bind(day.to_string())
            .bind(&hash.0[..]);
        let found = self.fetch_key(query).await?;
        // The index found the row by hash; confirm in constant time all the same.
        Ok(found.filter(|(key, _)| key.token_hash.matches(hash)))
    }

    async fn key(&self, id: &str, day: Date) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        self.fetch_key(sqlx::query_as(KEY_BY_ID).bind(day.to_string()).bind(id))
            .await
    }

    async fn key_view(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(KeyRecord, DaySpend)>, StoreError> {
        self.fetch_key(
            sqlx::query_as(KEY_VIEW_BY_ID)
                .bind(day.to_string())
                .bind(id),
        )
        .await
    }

    async fn list_keys(
        &self,
        query: &KeyQuery,
        day: Date,
    ) -> Result<Vec<(i64, KeyRecord, DaySpend)>, StoreError> {
        let rows = list_keys_query::<Sqlite>(query, day)
            .build_query_as::<KeyRow>()
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(KeyRow::decode).collect()
    }

    async fn revoke(&self, id: &str, at: OffsetDateTime) -> Result<Revoked, StoreError> {
        let id = id.to_owned();
        self.group
            .write(move |conn| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE keys SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL",
                    )?
                    .execute(params![to_ms(at), id])?;
                Ok(if changed == 1 {
                    Revoked::Now
                } else if conn
                    .prepare_cached("SELECT 1 FROM keys WHERE id = ?")?
                    .exists([&id])?
                {
                    Revoked::Already
                } else {
                    Revoked::NotFound
                })
            })
            .await
    }

    async fn revoke_ids(&self, ids: &[String], at: OffsetDateTime) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.group
            .write(move |conn| {
                let mut revoke = conn.prepare_cached(
                    "UPDATE keys SET revoked_ms = ? WHERE id = ? AND revoked_ms IS NULL",
                )?;
                let mut revoked = 0;
                for id in &ids {
                    revoked += revoke.execute(params![to_ms(at), id])?;
                }
                Ok(u64::try_from(revoked).unwrap_or(u64::MAX))
            })
            .await
    }

    async fn revoke_by_label(
        &self,
        labels: LabelMatch<'_>,
        at: OffsetDateTime,
        remember_until: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let exact = matches!(labels, LabelMatch::Exact(_));
        let sql = match labels {
            LabelMatch::Prefix(_) => {
                "UPDATE keys SET revoked_ms = ?1 WHERE revoked_ms IS NULL \
                 AND expires_ms > ?1 AND substr(label, 1, length(?2)) = ?2"
            }
            LabelMatch::Exact(_) => {
                "UPDATE keys SET revoked_ms = ?1 WHERE revoked_ms IS NULL \
                 AND expires_ms > ?1 AND label = ?2"
            }
        };
        let text = labels.text().to_owned();
        self.group
            .write(move |conn| {
                let revoked = conn
                    .prepare_cached(sql)?
                    .execute(params![to_ms(at), text])?;
                conn.prepare_cached("DELETE FROM label_revocations WHERE until_ms <= ?")?
                    .execute([to_ms(at)])?;
                conn.prepare_cached(
                    "INSERT INTO label_revocations (label, exact, at_ms, until_ms) \
                     VALUES (?, ?, ?, ?)",
                )?
                .execute(params![
                    text,
                    exact,
                    to_ms(at),
                    to_ms(remember_until)
                ])?;
                Ok(u64::try_from(revoked).unwrap_or(u64::MAX))
            })
            .await
    }

    async fn open_call(&self, call: &NewCall) -> Result<OpenedCall, StoreError> {
        let call = call.clone();
        self.group.write(move |conn| open_call(conn, &call)).await
    }

    async fn settle_call(
        &self,
        call_id: i64,
        settlement: &Settlement,
        upstream_status: Option<u16>,
    ) -> Result<Option<Settled>, StoreError> {
        let settlement = settlement.clone();
        self.group
            .write(move |conn| settle_call(conn, call_id, &settlement, upstream_status))
            .await
    }

    async fn reconcile_unknown(
        &self,
        before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.group
            .write(move |conn| {
                let settled: Vec<(String, String, i64)> = conn
                    .prepare_cached(
                        "UPDATE calls SET settled_micros = reserved_micros, reconciled = 1, \
                         in_flight_until_ms = NULL WHERE settled_micros IS NULL AND at_ms < ?1 \
                         AND (in_flight_until_ms IS NULL OR in_flight_until_ms <= ?2) \
                         RETURNING key_id, day, reserved_micros",
                    )?
                    .query_map(params![to_ms(before), to_ms(now)], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let mut move_to_spent = conn.prepare_cached(
                    "UPDATE spend SET reserved_micros = reserved_micros - ?3, \
                     spent_micros = spent_micros + ?3 WHERE key_id = ?1 AND day = ?2",
                )?;
                let mut move_in_grant = conn.prepare_cached(SETTLE_IN_GRANTS)?;
                for (key_id, day, reserved) in &settled {
                    if *reserved != 0 {
                        move_to_spent.execute(params![key_id, day, reserved])?;
                        move_in_grant.execute(params![key_id, day, reserved, reserved])?;
                    }
                }
                Ok(u64::try_from(settled.len()).unwrap_or(u64::MAX))
            })
            .await
    }

    async fn abandon_call(&self, call_id: i64) -> Result<(), StoreError> {
        self.group
            .write(move |conn| {
                conn.prepare_cached("UPDATE calls SET in_flight_until_ms = NULL WHERE id = ?")?
                    .execute([call_id])?;
                Ok(())
            })
            .await
    }

    async fn record_free_call(
        &self,
        key_id: &str,
        at: OffsetDateTime,
        method: &str,
        path: &str,
        upstream_status: Option<u16>,
    ) -> Result<(), StoreError> {
        let (key_id, method, path) = (key_id.to_owned(), method.to_owned(), path.to_owned());
        self.group
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO calls (key_id, day, at_ms, method, path, upstream_status, \
                     settled_micros) VALUES (?, ?, ?, ?, ?, ?, 0)",
                )?
                .execute(params![
                    key_id,
                    utc_day(at).to_string(),
                    to_ms(at),
                    method,
                    path,
                    upstream_status,
                ])?;
                count_request(conn, &key_id)
            })
            .await
    }

    async fn record_denial(&self, denial: &DeniedCall) -> Result<(), StoreError> {
        let denial = denial.clone();
        self.group
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO calls (key_id, day, at_ms, method, path, denied, settled_micros) \
                     VALUES (?, ?, ?, ?, ?, ?, 0)",
                )?
                .execute(params![
                    denial.key_id,
                    utc_day(denial.at).to_string(),
                    to_ms(denial.at),
                    denial.method,
                    denial.path,
                    denial.code.as_str(),
                ])?;
                Ok(())
            })
            .await
    }

    async fn calls(&self, key_id: &str, limit: u32) -> Result<Vec<CallRecord>, StoreError> {
        let rows: Vec<CallRow> =
            sqlx::query_as(concat!(calls_of_key!(), "? ORDER BY id DESC LIMIT ?"))
                .bind(key_id)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter().rev().map(CallRow::decode).collect()
    }

    async fn insert_grant(&self, grant: &GrantRecord) -> Result<(), StoreError> {
        let row = GrantColumns::of(grant)?;
        self.group
            .write(move |conn| {
                insert_grant_row(conn, &row, false)?;
                Ok(())
            })
            .await
    }

    async fn grant(
        &self,
        id: &str,
        day: Date,
    ) -> Result<Option<(GrantRecord, DaySpend)>, StoreError> {
        let row: Option<GrantRow> =
            sqlx::query_as(concat!(grant_with_spend_on_day!(), "? WHERE g.id = ?"))
                .bind(day.to_string())
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.map(GrantRow::decode).transpose()
    }

    async fn revoke_grant(&self, id: &str, at: OffsetDateTime) -> Result<Option<u64>, StoreError> {
        let id = id.to_owned();
        self.group
            .write(move |conn| {
                let found = conn
                    .prepare_cached(
                        "UPDATE grants SET revoked_ms = COALESCE(revoked_ms, ?1) \
                         WHERE id = ?2 OR parent_id = ?2",
                    )?
                    .execute(params![to_ms(at), id])?;
                if found == 0 {
                    return Ok(None);
                }
                let revoked = conn
                    .prepare_cached(
                        "UPDATE keys SET revoked_ms = ?1 WHERE revoked_ms IS NULL AND grant_id IN \
                         (SELECT id FROM grants WHERE id = ?2 OR parent_id = ?2)",
                    )?
                    .execute(params![to_ms(at), id])?;
                Ok(Some(u64::try_from(revoked).unwrap_or(u64::MAX)))
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
        let row = KeyColumns::of(key)?;
        let refused = KeyColumns::of(&revoked_at(key, at))?;
        let run = run.map(GrantColumns::of).transpose()?;
        let grant_id = grant_id.to_owned();
        let recorded = self
            .group
            .write(move |conn| {
                let grant_live = conn
                    .prepare_cached("SELECT 1 FROM grants WHERE id = ? AND revoked_ms IS NULL")?
                    .exists([&grant_id])?;
                let tombstoned = conn
                    .prepare_cached("SELECT 1 FROM tombstones WHERE key_id = ? AND grant_id = ?")?
                    .exists(params![row.id, grant_id])?;
                let label_revoked = conn
                    .prepare_cached(LABEL_REVOKED_SINCE_MINTED)?
                    .exists(params![row.label, row.minted_no_later_than_ms])?;
                if !grant_live || tombstoned || label_revoked {
                    insert_key_row(conn, &refused, true)?;
                    return Ok(Some(MintedKey::Revoked));
                }
                if let Some(run) = &run {
                    // Recorded at its first key's first use; later keys find it as it was.
                    insert_grant_row(conn, run, true)?;
                    let recorded: Option<(Option<i64>, bool)> = conn
                        .prepare_cached(
                            "SELECT revoked_ms, parent_id IS ?2 AND label_prefix = ?3 \
                             AND daily_cap_micros = ?4 AND expires_ms = ?5 FROM grants WHERE id = ?1",
                        )?
                        .query_row(
                            params![run.id, run.parent_id, run.label_prefix, run.daily_cap, run.expires_ms],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )
                        .optional()?;
                    match recorded {
                        Some((None, true)) => {}
                        Some((Some(_), _)) => {
                            insert_key_row(conn, &refused, true)?;
                            return Ok(Some(MintedKey::Revoked));
                        }
                        _ => return Ok(Some(MintedKey::IdTaken)),
                    }
                }
                // Already recorded (by this token: its hash is unique), or the id is another
                // key's: either way nothing is written, and the read below tells which.
                insert_key_row(conn, &row, true)?;
                Ok(None)
            })
            .await?;
        if let Some(refused) = recorded {
            return Ok(refused);
        }
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
        let (grant_id, ids) = (grant_id.to_owned(), ids.to_vec());
        self.group
            .write(move |conn| {
                // Tombstones past their time can go: the keys they stop have expired.
                conn.prepare_cached("DELETE FROM tombstones WHERE until_ms <= ?")?
                    .execute([to_ms(at)])?;
                let mut bury = conn.prepare_cached(
                    "INSERT INTO tombstones (key_id, grant_id, until_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key_id, grant_id) DO UPDATE SET until_ms = max(until_ms, ?3)",
                )?;
                let mut revoke = conn.prepare_cached(
                    "UPDATE keys SET revoked_ms = ?1 WHERE id = ?2 AND revoked_ms IS NULL \
                     AND grant_id IN (SELECT id FROM grants WHERE id = ?3 OR parent_id = ?3)",
                )?;
                let mut revoked = 0;
                for id in &ids {
                    bury.execute(params![id, grant_id, to_ms(until)])?;
                    revoked += revoke.execute(params![to_ms(at), id, grant_id])?;
                }
                Ok(u64::try_from(revoked).unwrap_or(u64::MAX))
            })
            .await
    }

    async fn latest_refusals(&self, limit: u32) -> Result<Vec<Refusal>, StoreError> {
        let rows: Vec<RefusalRow> = sqlx::query_as(concat!(latest_refusals!(), "?"))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(RefusalRow::decode).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        // The writer too: a store that can read but not write cannot serve a metered call.
        self.group.write(|_| Ok(())).await
    }

    async fn key_counts(&self, now: OffsetDateTime) -> Result<KeyCounts, StoreError> {
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(revoked_ms IS NULL AND expires_ms > ?1), 0), \
               COALESCE(SUM(revoked_ms IS NOT NULL), 0), \
               COALESCE(SUM(revoked_ms IS NULL AND expires_ms <= ?1), 0) \
             FROM keys",
        )
        .bind(to_ms(now))
        .fetch_one(&self.reader)
        .await?;
        let count = |i: usize| -> Result<u64, StoreError> {
            Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0))
        };
        Ok(KeyCounts {
            active: count(0)?,
            revoked: count(1)?,
            expired: count(2)?,
        })
    }
}

/// Counts a call forwarded for the key.
fn count_request(conn: &rusqlite::Connection, key_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE keys SET requests = requests + 1 WHERE id = ?")?
        .execute([key_id])?;
    Ok(())
}

/// Reserves a call's cost (see [`Store::open_call`]) inside the writer's transaction: the key's
/// state, ownership, idempotency and the cap are all read in the transaction that reserves.
fn open_call(conn: &rusqlite::Connection, call: &NewCall) -> Result<OpenedCall, StoreError> {
    let day = utc_day(call.at).to_string();
    let at_ms = to_ms(call.at);
    // Nothing can revoke the key between this check and the money moving.
    let mut grant_id: Option<String> = None;
    let state: Option<(Option<i64>, i64, i64)> = conn
        .prepare_cached(
            "SELECT revoked_ms, expires_ms, daily_cap_micros, grant_id FROM keys WHERE id = ?",
        )?
        .query_row([&call.key_id], |row| {
            grant_id = row.get(3)?;
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let cap = match key_state(state, at_ms) {
        Ok(cap) => cap,
        Err(refused) => return Ok(refused),
    };
    if let Some(object) = &call.acts_on {
        let owned = conn
            .prepare_cached(
                "SELECT 1 FROM owned_objects WHERE key_id = ?1 AND object_id = ?2 AND kind = ?4 \
                 AND (?3 IS NULL OR currency = ?3)",
            )?
            .exists(params![
                call.key_id,
                object.id,
                object.currency.as_deref(),
                object.kind
            ])?;
        if !owned {
            return Ok(OpenedCall::NotOwned);
        }
    }
    let mut reserve = call.max_cost;
    if let Some(claim) = &call.idempotency {
        let earlier: EarlierClaim = conn
            .prepare_cached(
                "SELECT settled_micros, in_flight_until_ms FROM calls WHERE key_id = ? \
                 AND idempotency_key = ? AND fingerprint = ? AND at_ms > ? \
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(
                params![
                    call.key_id,
                    claim.key,
                    claim.fingerprint,
                    at_ms - IDEMPOTENCY_WINDOW_MS
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        reserve = match replay_reservation(earlier, at_ms, call.max_cost) {
            Ok(reserve) => reserve,
            Err(refused) => return Ok(refused),
        };
    }
    if !reserve.is_zero() {
        // One conditional statement: the day's first reservation inserts the row, later ones
        // add to it, and neither happens past the cap.
        let reserved = conn
            .prepare_cached(
                "INSERT INTO spend (key_id, day, reserved_micros) SELECT ?2, ?3, ?1 WHERE ?1 <= ?4 \
                 ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = reserved_micros + ?1 \
                 WHERE spent_micros + reserved_micros + ?1 <= ?4",
            )?
            .execute(params![micros(reserve), call.key_id, day, cap])?;
        if reserved == 0 {
            let spend = conn
                .prepare_cached(
                    "SELECT spent_micros, reserved_micros FROM spend WHERE key_id = ? AND day = ?",
                )?
                .query_row(params![call.key_id, day], |row| {
                    Ok(DaySpend {
                        spent: usd(row.get(0)?),
                        reserved: usd(row.get(1)?),
                    })
                })
                .optional()?
                .unwrap_or_default();
            return Ok(OpenedCall::CapExhausted {
                cap: usd(cap),
                spend,
                grant: None,
            });
        }
        if let Some(grant_id) = grant_id {
            if let Some(exhausted) = reserve_in_grants(conn, &grant_id, &day, reserve)? {
                // The key's reservation above must not stay: this write commits.
                conn.prepare_cached(
                    "UPDATE spend SET reserved_micros = reserved_micros - ?1 \
                     WHERE key_id = ?2 AND day = ?3",
                )?
                .execute(params![micros(reserve), call.key_id, day])?;
                return Ok(exhausted);
            }
        }
    }
    // Only a reserving call can be replayed: a replay records no idempotency key of its own.
    let claim = call.idempotency.as_ref().filter(|_| !reserve.is_zero());
    let call_id: i64 = conn
        .prepare_cached(
            "INSERT INTO calls (key_id, day, at_ms, method, path, reserved_micros, \
             idempotency_key, fingerprint, in_flight_until_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             RETURNING id",
        )?
        .query_row(
            params![
                call.key_id,
                day,
                at_ms,
                call.method,
                call.path,
                micros(reserve),
                claim.map(|c| c.key.as_str()),
                claim.map(|c| c.fingerprint.as_str()),
                to_ms(call.in_flight_until),
            ],
            |row| row.get(0),
        )?;
    count_request(conn, &call.key_id)?;
    Ok(OpenedCall::Opened {
        call_id,
        reserved: reserve,
    })
}

/// Whether an operator revoked the label (?1) of a minted key, or a prefix of it, after the key
/// was minted (?2, already moved back by the minter's possible clock skew).
const LABEL_REVOKED_SINCE_MINTED: &str = "SELECT 1 FROM label_revocations WHERE at_ms >= ?2 \
     AND CASE WHEN exact THEN label = ?1 ELSE substr(?1, 1, length(label)) = label END";

/// A key's columns as the writer inserts them (an issued key, or a minted one at first use).
struct KeyColumns {
    id: String,
    token_hash: [u8; 32],
    label: String,
    vendor: String,
    daily_cap: i64,
    endpoints: String,
    methods: Option<String>,
    created_ms: i64,
    expires_ms: i64,
    grant_id: Option<String>,
    revoked_ms: Option<i64>,
    /// What a label revocation is compared with (see `minted_no_later_than`).
    minted_no_later_than_ms: i64,
}

impl KeyColumns {
    fn of(key: &KeyRecord) -> Result<KeyColumns, StoreError> {
        let (endpoints, methods) = encoded_policy(key)?;
        Ok(KeyColumns {
            id: key.id.clone(),
            token_hash: key.token_hash.0,
            label: key.label.clone(),
            vendor: key.vendor.clone(),
            daily_cap: micros(key.daily_cap),
            endpoints,
            methods,
            created_ms: to_ms(key.created_at),
            expires_ms: to_ms(key.expires_at),
            grant_id: key.grant_id.clone(),
            revoked_ms: key.revoked_at.map(to_ms),
            minted_no_later_than_ms: to_ms(minted_no_later_than(key)),
        })
    }
}

/// Inserts a key's row, revoked or not (doing nothing when its id or token exists, if
/// `or_ignore`). A minted key is written only while its grant (or run) is on record.
fn insert_key_row(
    conn: &rusqlite::Connection,
    key: &KeyColumns,
    or_ignore: bool,
) -> Result<(), StoreError> {
    macro_rules! insert {
        () => {
            "INSERT INTO keys (id, token_hash, label, vendor, daily_cap_micros, \
             allowed_endpoints, allowed_methods, created_ms, expires_ms, grant_id, revoked_ms) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11 WHERE ?10 IS NULL \
             OR EXISTS (SELECT 1 FROM grants WHERE id = ?10)"
        };
    }
    let sql = if or_ignore {
        concat!(insert!(), " ON CONFLICT DO NOTHING")
    } else {
        insert!()
    };
    conn.prepare_cached(sql)?.execute(params![
        key.id,
        &key.token_hash[..],
        key.label,
        key.vendor,
        key.daily_cap,
        key.endpoints,
        key.methods,
        key.created_ms,
        key.expires_ms,
        key.grant_id,
        key.revoked_ms,
    ])?;
    Ok(())
}

/// A grant's columns as the writer inserts them (a grant, or a run at its first key's use).
struct GrantColumns {
    id: String,
    secret: Option<String>,
    parent_id: Option<String>,
    label_prefix: String,
    vendor: String,
    max_key_cap: i64,
    daily_cap: i64,
    endpoints: String,
    methods: Option<String>,
    max_key_ttl_ms: i64,
    created_ms: i64,
    expires_ms: i64,
}

impl GrantColumns {
    fn of(grant: &GrantRecord) -> Result<GrantColumns, StoreError> {
        let (endpoints, methods) =
            encode_policy(&grant.allowed_endpoints, grant.allowed_methods.as_deref())?;
        Ok(GrantColumns {
            id: grant.id.clone(),
            secret: grant.secret.as_ref().map(|s| s.expose_secret().to_owned()),
            parent_id: grant.parent_id.clone(),
            label_prefix: grant.label_prefix.clone(),
            vendor: grant.vendor.clone(),
            max_key_cap: micros(grant.max_key_cap),
            daily_cap: micros(grant.daily_cap),
            endpoints,
            methods,
            max_key_ttl_ms: i64::try_from(grant.max_key_ttl.whole_milliseconds())
                .unwrap_or(i64::MAX),
            created_ms: to_ms(grant.created_at),
            expires_ms: to_ms(grant.expires_at),
        })
    }
}

/// Inserts a grant's row (doing nothing when its id exists, if `or_ignore`).
fn insert_grant_row(
    conn: &rusqlite::Connection,
    grant: &GrantColumns,
    or_ignore: bool,
) -> Result<(), StoreError> {
    macro_rules! insert {
        () => {
            "INSERT INTO grants (id, secret, parent_id, label_prefix, vendor, max_key_cap_micros, \
             daily_cap_micros, allowed_endpoints, allowed_methods, max_key_ttl_ms, created_ms, \
             expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        };
    }
    let sql = if or_ignore {
        concat!(insert!(), " ON CONFLICT (id) DO NOTHING")
    } else {
        insert!()
    };
    conn.prepare_cached(sql)?.execute(params![
        grant.id,
        grant.secret,
        grant.parent_id,
        grant.label_prefix,
        grant.vendor,
        grant.max_key_cap,
        grant.daily_cap,
        grant.endpoints,
        grant.methods,
        grant.max_key_ttl_ms,
        grant.created_ms,
        grant.expires_ms,
    ])?;
    Ok(())
}

/// Reserves `amount` against the daily cap of all the keys of the key's grant (or run) together,
/// and of the run's grant; the refusal if it does not fit somewhere, with nothing left reserved.
fn reserve_in_grants(
    conn: &rusqlite::Connection,
    first: &str,
    day: &str,
    amount: Usd,
) -> Result<Option<OpenedCall>, StoreError> {
    let mut reserved_in: Vec<String> = Vec::new();
    // A key's grant, or its run and the run's grant: two levels, as settlement moves them.
    let mut next = Some(first.to_owned());
    for _ in 0..2 {
        let Some(grant_id) = next else { break };
        let (cap, parent): (i64, Option<String>) = conn
            .prepare_cached("SELECT daily_cap_micros, parent_id FROM grants WHERE id = ?")?
            .query_row([&grant_id], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let reserved = conn
            .prepare_cached(
                "INSERT INTO grant_spend (grant_id, day, reserved_micros) SELECT ?2, ?3, ?1 \
                 WHERE ?1 <= ?4 ON CONFLICT (grant_id, day) DO UPDATE \
                 SET reserved_micros = reserved_micros + ?1 \
                 WHERE spent_micros + reserved_micros + ?1 <= ?4",
            )?
            .execute(params![micros(amount), grant_id, day, cap])?;
        if reserved == 0 {
            // This write commits: what was reserved in the run below must not stay.
            for earlier in &reserved_in {
                conn.prepare_cached(
                    "UPDATE grant_spend SET reserved_micros = reserved_micros - ?1 \
                     WHERE grant_id = ?2 AND day = ?3",
                )?
                .execute(params![micros(amount), earlier, day])?;
            }
            let spend = conn
                .prepare_cached(
                    "SELECT spent_micros, reserved_micros FROM grant_spend \
                     WHERE grant_id = ? AND day = ?",
                )?
                .query_row(params![grant_id, day], |row| {
                    Ok(DaySpend {
                        spent: usd(row.get(0)?),
                        reserved: usd(row.get(1)?),
                    })
                })
                .optional()?
                .unwrap_or_default();
            return Ok(Some(OpenedCall::CapExhausted {
                cap: usd(cap),
                spend,
                grant: Some(grant_id),
            }));
        }
        reserved_in.push(grant_id);
        next = parent;
    }
    Ok(None)
}

/// Moves a settled call's amounts in the days of its key's grant (or run) and of the run's
/// grant, if the key has one: `reserved` out of the reservations, `cost` into the spend (see
/// [`settle_call`]).
const SETTLE_IN_GRANTS: &str = "INSERT INTO grant_spend (grant_id, day, spent_micros) \
     SELECT g.id, ?2, ?4 FROM keys k JOIN grants g ON g.id = k.grant_id \
     OR g.id = (SELECT parent_id FROM grants WHERE id = k.grant_id) WHERE k.id = ?1 \
     ON CONFLICT (grant_id, day) DO UPDATE SET reserved_micros = reserved_micros - ?3, \
     spent_micros = spent_micros + ?4";

/// Settles a call (see [`Store::settle_call`]) inside the writer's transaction.
fn settle_call(
    conn: &rusqlite::Connection,
    call_id: i64,
    settlement: &Settlement,
    upstream_status: Option<u16>,
) -> Result<Option<Settled>, StoreError> {
    let cost = settlement.cost;
    let settled: Option<(String, String, i64)> = conn
        .prepare_cached(
            "UPDATE calls SET settled_micros = ?, upstream_status = ?, in_flight_until_ms = NULL \
             WHERE id = ? AND settled_micros IS NULL RETURNING key_id, day, reserved_micros",
        )?
        .query_row(params![micros(cost), upstream_status, call_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((key_id, day, reserved)) = settled else {
        // Already settled (or never opened): settling is idempotent.
        return Ok(None);
    };
    if let Some(object) = &settlement.created {
        conn.prepare_cached(
            "INSERT INTO owned_objects (key_id, object_id, kind, currency) VALUES (?, ?, ?, ?) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            key_id,
            object.id,
            object.kind,
            object.currency.as_deref()
        ])?;
    }
    if reserved != 0 || !cost.is_zero() {
        // A call that reserved has its day's row; one that reserved nothing (a replay) and cost
        // something may not.
        conn.prepare_cached(
            "INSERT INTO spend (key_id, day, spent_micros) VALUES (?1, ?2, ?4) \
             ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = reserved_micros - ?3, \
             spent_micros = spent_micros + ?4",
        )?
        .execute(params![key_id, day, reserved, micros(cost)])?;
        conn.prepare_cached(SETTLE_IN_GRANTS)?.execute(params![
            key_id,
            day,
            reserved,
            micros(cost)
        ])?;
    }
    Ok(Some(Settled {
        key_id,
        reserved: usd(reserved),
        cost,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes that fail, or panic, in a group undo themselves only; the writer goes on.
    #[tokio::test]
    async fn a_failing_write_undoes_only_itself() {
        let store = SqliteStore::open("sqlite::memory:", SyncMode::Normal)
            .await
            .unwrap();
        let writes = (0..30).map(|i| {
            let group = store.group.clone();
            async move {
                group
                    .write(move |conn| {
                        conn.execute(
                            "INSERT INTO keys (id, token_hash, label, vendor, daily_cap_micros, \
                             allowed_endpoints, created_ms, expires_ms) \
                             VALUES (?, randomblob(32), 'l', 'v', 1, '[]', 0, 1)",
                            [format!("key_{i}")],
                        )?;
                        match i % 3 {
                            0 => Ok(()),
                            // Written, then failed: the row must not stay.
                            1 => Err(StoreError::Sqlite(
                                conn.execute("INSERT INTO no_such_table VALUES (1)", [])
                                    .unwrap_err(),
                            )),
                            _ => panic!("a write that panics"),
                        }
                    })
                    .await
            }
        });
        let results = futures_util::future::join_all(writes).await;
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), i % 3 == 0, "write {i}: {result:?}");
        }
        let kept: Vec<String> = sqlx::query_scalar("SELECT id FROM keys ORDER BY seq")
            .fetch_all(&store.reader)
            .await
            .unwrap();
        let expected: Vec<String> = (0..30).step_by(3).map(|i| format!("key_{i}")).collect();
        assert_eq!(kept, expected);
        store.ping().await.expect("the writer is still there");
    }

    #[tokio::test]
    async fn a_database_file_serves_one_server_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("vault.db").display());
        let first = SqliteStore::open(&url, SyncMode::Normal).await.unwrap();
        let second = SqliteStore::open(&url, SyncMode::Normal).await;
        assert!(
            matches!(&second, Err(StoreError::InUse(path)) if path.ends_with("vault.db")),
            "{second:?}"
        );
        first.close().await;
        drop(first);
        // The lock goes with the writer, once the last handle on the store is gone.
        for _ in 0..100 {
            if SqliteStore::open(&url, SyncMode::Normal).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the database stayed locked after its store was dropped");
    }
}
