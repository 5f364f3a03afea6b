//! What the SQL stores share: the shape of a key and a call as rows, the conversions between
//! their columns and the store's types, the statements whose text is the same in both dialects,
//! and the rule that decides what a replayed idempotency key reserves.

use sqlx::{Database, Encode, QueryBuilder, Type};
use time::{Date, OffsetDateTime};
use vault_key_wire::{EndpointPattern, ErrorCode, KeyStatus, Usd};

use super::{
    CallRecord, DaySpend, GrantRecord, KeyQuery, KeyRecord, OpenedCall, Refusal, StoreError,
};
use crate::token::TokenHash;

/// How long an idempotency key protects against a second reservation. Stripe keeps
/// idempotency keys for at least 24 hours; after that a replay may act again, so it pays again.
pub(super) const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// A key with its spend on one day, up to the day's value (bound next). A macro rather than a
/// `const` so that `concat!` builds each full statement at compile time: the proxy's key lookup
/// runs on every call and formats nothing.
macro_rules! key_with_spend_on_day {
    () => {
        concat!(
            key_columns!(),
            " FROM keys k LEFT JOIN spend s ON s.key_id = k.id AND s.day = "
        )
    };
}

/// [`key_with_spend_on_day!`] with the key's refused calls counted, for the admin API's reads
/// (the count is over a partial index of refusals; the proxy's lookups do without it).
macro_rules! key_view_on_day {
    () => {
        concat!(
            key_columns!(),
            ", (SELECT count(*) FROM calls c WHERE c.key_id = k.id AND c.denied IS NOT NULL) \
             AS refusals FROM keys k LEFT JOIN spend s ON s.key_id = k.id AND s.day = "
        )
    };
}

/// The columns of a key and of its spend, which [`KeyRow`] decodes.
macro_rules! key_columns {
    () => {
        "SELECT k.seq, k.id, k.token_hash, k.label, k.vendor, k.daily_cap_micros, \
         k.allowed_endpoints, k.allowed_methods, k.created_ms, k.expires_ms, k.revoked_ms, \
         k.requests, k.grant_id, COALESCE(s.spent_micros, 0) AS spent_micros, \
         COALESCE(s.reserved_micros, 0) AS reserved_micros"
    };
}
pub(super) use key_columns;
pub(super) use key_view_on_day;
pub(super) use key_with_spend_on_day;

/// A key's columns, as [`key_with_spend_on_day!`] selects them.
#[derive(sqlx::FromRow)]
pub(super) struct KeyRow {
    seq: i64,
    id: String,
    token_hash: Vec<u8>,
    label: String,
    vendor: String,
    daily_cap_micros: i64,
    allowed_endpoints: String,
    allowed_methods: Option<String>,
    created_ms: i64,
    expires_ms: i64,
    revoked_ms: Option<i64>,
    requests: i64,
    grant_id: Option<String>,
    spent_micros: i64,
    reserved_micros: i64,
    /// Only in [`key_view_on_day!`].
    #[sqlx(default)]
    refusals: i64,
}

impl KeyRow {
    /// The key, its sequence number (the list cursor) and its day's spend.
    pub(super) fn decode(self) -> Result<(i64, KeyRecord, DaySpend), StoreError> {
        let token_hash = TokenHash(
            self.token_hash
                .try_into()
                .map_err(|_| decode_err("token hash is not 32 bytes"))?,
        );
        let allowed_methods = decode_methods(self.allowed_methods)?;
        let record = KeyRecord {
            id: self.id,
            token_hash,
            label: self.label,
            vendor: self.vendor,
            daily_cap: usd(self.daily_cap_micros),
            allowed_endpoints: serde_json::from_str(&self.allowed_endpoints).map_err(decode_err)?,
            allowed_methods,
            created_at: from_ms(self.created_ms),
            expires_at: from_ms(self.expires_ms),
            revoked_at: self.revoked_ms.map(from_ms),
            requests: u64::try_from(self.requests).unwrap_or(0),
            refusals: u64::try_from(self.refusals).unwrap_or(0),
            grant_id: self.grant_id,
        };
        let spend = DaySpend {
            spent: usd(self.spent_micros),
            reserved: usd(self.reserved_micros),
        };
        Ok((self.seq, record, spend))
    }
}

/// A JSON array of methods, as [`encode_policy`] wrote it.
fn decode_methods(methods: Option<String>) -> Result<Option<Vec<http::Method>>, StoreError> {
    methods
        .map(|m| serde_json::from_str::<Vec<String>>(&m))
        .transpose()
        .map_err(decode_err)?
        .map(|methods| {
            methods
                .iter()
                .map(|m| {
                    http::Method::from_bytes(m.as_bytes()).map_err(|_| decode_err("bad method"))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
}

/// A grant with its keys' spend on a day (bound next), then its id (bound after); a macro for
/// `concat!`, as above.
macro_rules! grant_with_spend_on_day {
    () => {
        "SELECT g.id, g.secret, g.parent_id, g.label_prefix, g.vendor, g.max_key_cap_micros, \
         g.daily_cap_micros, g.allowed_endpoints, g.allowed_methods, g.max_key_ttl_ms, \
         g.created_ms, g.expires_ms, g.revoked_ms, \
         COALESCE(s.spent_micros, 0) AS spent_micros, \
         COALESCE(s.reserved_micros, 0) AS reserved_micros \
         FROM grants g LEFT JOIN grant_spend s ON s.grant_id = g.id AND s.day = "
    };
}
pub(super) use grant_with_spend_on_day;

/// A grant's columns, as [`grant_with_spend_on_day!`] selects them.
#[derive(sqlx::FromRow)]
pub(super) struct GrantRow {
    id: String,
    secret: Option<String>,
    parent_id: Option<String>,
    label_prefix: String,
    vendor: String,
    max_key_cap_micros: i64,
    daily_cap_micros: i64,
    allowed_endpoints: String,
    allowed_methods: Option<String>,
    max_key_ttl_ms: i64,
    created_ms: i64,
    expires_ms: i64,
    revoked_ms: Option<i64>,
    spent_micros: i64,
    reserved_micros: i64,
}

impl GrantRow {
    pub(super) fn decode(self) -> Result<(GrantRecord, DaySpend), StoreError> {
        let grant = GrantRecord {
            id: self.id,
            secret: self.secret.map(Into::into),
            parent_id: self.parent_id,
            label_prefix: self.label_prefix,
            vendor: self.vendor,
            max_key_cap: usd(self.max_key_cap_micros),
            daily_cap: usd(self.daily_cap_micros),
            allowed_endpoints: serde_json::from_str(&self.allowed_endpoints).map_err(decode_err)?,
            allowed_methods: decode_methods(self.allowed_methods)?,
            max_key_ttl: time::Duration::milliseconds(self.max_key_ttl_ms),
            created_at: from_ms(self.created_ms),
            expires_at: from_ms(self.expires_ms),
            revoked_at: self.revoked_ms.map(from_ms),
        };
        let spend = DaySpend {
            spent: usd(self.spent_micros),
            reserved: usd(self.reserved_micros),
        };
        Ok((grant, spend))
    }
}

/// The columns a new key is inserted with that need encoding: its endpoint patterns and its
/// methods, as JSON arrays.
pub(super) fn encoded_policy(key: &KeyRecord) -> Result<(String, Option<String>), StoreError> {
    encode_policy(&key.allowed_endpoints, key.allowed_methods.as_deref())
}

/// Endpoint patterns and methods as JSON arrays, as keys and grants keep them.
pub(super) fn encode_policy(
    endpoints: &[EndpointPattern],
    methods: Option<&[http::Method]>,
) -> Result<(String, Option<String>), StoreError> {
    let endpoints = serde_json::to_string(endpoints).map_err(decode_err)?;
    let methods = methods
        .map(|methods| {
            serde_json::to_string(&methods.iter().map(http::Method::as_str).collect::<Vec<_>>())
        })
        .transpose()
        .map_err(decode_err)?;
    Ok((endpoints, methods))
}

/// A key's audit trail, up to the key's id (bound next); a macro for `concat!`, as above.
macro_rules! calls_of_key {
    () => {
        "SELECT at_ms, method, path, upstream_status, reserved_micros, settled_micros, denied, \
         reconciled FROM calls WHERE key_id = "
    };
}
pub(super) use calls_of_key;

/// One call, as [`calls_of_key!`] selects it.
#[derive(sqlx::FromRow)]
pub(super) struct CallRow {
    at_ms: i64,
    method: String,
    path: String,
    upstream_status: Option<i64>,
    reserved_micros: i64,
    settled_micros: Option<i64>,
    denied: Option<String>,
    reconciled: bool,
}

/// The latest refusals across all keys, newest first, up to a limit (bound next).
macro_rules! latest_refusals {
    () => {
        "SELECT c.key_id, k.label, c.at_ms, c.method, c.path, c.denied FROM calls c \
         JOIN keys k ON k.id = c.key_id WHERE c.denied IS NOT NULL ORDER BY c.id DESC LIMIT "
    };
}
pub(super) use latest_refusals;

/// One refusal, as [`latest_refusals!`] selects it.
#[derive(sqlx::FromRow)]
pub(super) struct RefusalRow {
    key_id: String,
    label: String,
    at_ms: i64,
    method: String,
    path: String,
    denied: String,
}

impl RefusalRow {
    pub(super) fn decode(self) -> Result<Refusal, StoreError> {
        Ok(Refusal {
            key_id: self.key_id,
            label: self.label,
            at: from_ms(self.at_ms),
            method: self.method,
            path: self.path,
            code: serde_json::from_value(self.denied.into()).map_err(decode_err)?,
        })
    }
}

impl CallRow {
    pub(super) fn decode(self) -> Result<CallRecord, StoreError> {
        Ok(CallRecord {
            at: from_ms(self.at_ms),
            method: self.method,
            path: self.path,
            upstream_status: self.upstream_status.and_then(|s| u16::try_from(s).ok()),
            reserved: usd(self.reserved_micros),
            settled: self.settled_micros.map(usd),
            denied: self
                .denied
                .map(|code| serde_json::from_value::<ErrorCode>(code.into()))
                .transpose()
                .map_err(decode_err)?,
            reconciled: self.reconciled,
        })
    }
}

/// `GET /v1/keys`'s query, in either dialect (the builder numbers the placeholders).
pub(super) fn list_keys_query<'a, DB>(query: &KeyQuery, day: Date) -> QueryBuilder<'a, DB>
where
    DB: Database,
    String: for<'q> Encode<'q, DB> + Type<DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
{
    let now_ms = to_ms(query.now.unwrap_or_else(OffsetDateTime::now_utc));
    let mut sql = QueryBuilder::<DB>::new(key_view_on_day!());
    sql.push_bind(day.to_string()).push(" WHERE 1 = 1");
    if let Some(prefix) = &query.label_prefix {
        // `substr` rather than `LIKE`: a `%` or `_` in a label is not a wildcard.
        sql.push(" AND substr(k.label, 1, length(")
            .push_bind(prefix.clone())
            .push(")) = ")
            .push_bind(prefix.clone());
    }
    if let Some(vendor) = &query.vendor {
        sql.push(" AND k.vendor = ").push_bind(vendor.clone());
    }
    match query.status {
        Some(KeyStatus::Revoked) => {
            sql.push(" AND k.revoked_ms IS NOT NULL");
        }
        Some(KeyStatus::Expired) => {
            sql.push(" AND k.revoked_ms IS NULL AND k.expires_ms <= ")
                .push_bind(now_ms);
        }
        Some(KeyStatus::Active) => {
            sql.push(" AND k.revoked_ms IS NULL AND k.expires_ms > ")
                .push_bind(now_ms);
        }
        None => {}
    }
    if let Some(after) = query.after {
        sql.push(" AND k.seq > ").push_bind(after);
    }
    sql.push(" ORDER BY k.seq LIMIT ")
        .push_bind(i64::from(query.limit));
    sql
}

/// A key's `(revoked_ms, expires_ms, daily_cap_micros)` as the reserving transaction reads it:
/// its cap, or why no call may reserve. The cap is the stored one, not the one the proxy read
/// earlier, so a cap lowered meanwhile holds at once.
pub(super) fn key_state(
    state: Option<(Option<i64>, i64, i64)>,
    at_ms: i64,
) -> Result<i64, OpenedCall> {
    match state {
        Some((Some(_), _, _)) | None => Err(OpenedCall::KeyRevoked),
        Some((None, expires_ms, _)) if at_ms >= expires_ms => Err(OpenedCall::KeyExpired),
        Some((None, _, cap)) => Ok(cap),
    }
}

/// The latest reserving call under the same idempotency key (and request fingerprint) within
/// [`IDEMPOTENCY_WINDOW_MS`]: what it settled to, and until when it is in flight.
pub(super) type EarlierClaim = Option<(Option<i64>, Option<i64>)>;

/// What a call under an idempotency key reserves, given the latest earlier call under it; or why
/// it may not go ahead. While the earlier call is in flight its outcome is open (a 4xx would make
/// a replay execute anew): refuse. Once it may have cost money (settled above zero, or outcome
/// unknown with its reservation kept), the vendor will replay its result rather than act again:
/// reserve nothing more.
pub(super) fn replay_reservation(
    earlier: EarlierClaim,
    at_ms: i64,
    max_cost: Usd,
) -> Result<Usd, OpenedCall> {
    match earlier {
        Some((None, Some(until))) if until > at_ms => Err(OpenedCall::IdempotencyInFlight),
        Some((None, _)) => Ok(Usd::ZERO),
        Some((Some(settled), _)) if settled > 0 => Ok(Usd::ZERO),
        _ => Ok(max_cost),
    }
}

pub(super) fn to_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(super) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(super) fn usd(micros: i64) -> Usd {
    Usd::from_micros(u64::try_from(micros).unwrap_or(0))
}

pub(super) fn micros(amount: Usd) -> i64 {
    // Every amount is at most `Usd::MAX` (10^15), far inside i64.
    i64::try_from(amount.micros()).unwrap_or(i64::MAX)
}

pub(super) fn decode_err(
    e: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(e.into()))
}
