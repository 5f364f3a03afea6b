//! Bodies of the `/v1/keys` routes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ErrorCode, Usd};

/// `POST /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKeyRequest {
    /// Free text naming the user, run or task; bulk revocation matches its prefix.
    pub label: String,
    /// A vendor the server knows (`stripe`, `openai`, `anthropic`, or one from its config).
    pub vendor: String,
    /// Positive daily cap in US dollars.
    pub daily_usd_cap: Usd,
    /// Non-empty list of endpoint patterns.
    pub allowed_endpoints: Vec<String>,
    /// A duration such as `"5m"`.
    pub expires_in: String,
    /// When set, the only methods the key may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_methods: Option<Vec<String>>,
}

/// `201` answer to `POST /v1/keys`: the only time the token is ever shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedKey {
    /// Public id (`key_…`), safe to log.
    pub id: String,
    /// The secret `vk_…` token.
    pub token: String,
    /// As requested.
    pub label: String,
    /// As requested.
    pub vendor: String,
    /// As requested.
    pub daily_usd_cap: Usd,
    /// As requested.
    pub allowed_endpoints: Vec<String>,
    /// As requested.
    pub allowed_methods: Option<Vec<String>>,
    /// When the key stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the key was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Where the token goes on proxied calls: the server decides it per vendor, so a client never
    /// has to guess (and never disagrees with the proxy).
    pub token_placement: TokenPlacement,
}

/// Where a vendor's SDK puts its API key, and so where the vault token for that vendor goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPlacement {
    /// The header, lower-case (`authorization`, `x-api-key`).
    pub header: String,
    /// What precedes the token in that header (`"Bearer "`); empty when the header holds the
    /// token alone.
    pub prefix: String,
}

impl TokenPlacement {
    /// `Authorization: Bearer <token>` (Stripe, OpenAI).
    pub fn bearer() -> TokenPlacement {
        TokenPlacement {
            header: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        }
    }

    /// The token alone in a header of its own (`x-api-key` for Anthropic).
    pub fn header(name: &str) -> TokenPlacement {
        TokenPlacement {
            header: name.to_ascii_lowercase(),
            prefix: String::new(),
        }
    }

    /// The header value that carries `token`.
    pub fn value(&self, token: &str) -> String {
        format!("{}{token}", self.prefix)
    }
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("id", &self.id)
            .field("token", &"[redacted]")
            .field("label", &self.label)
            .field("vendor", &self.vendor)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Whether a key can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Revoked by `DELETE` or bulk revocation.
    Revoked,
    /// Past `expires_at`.
    Expired,
}

impl KeyStatus {
    /// The status as spelled on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
        }
    }
}

/// `GET /v1/keys/{id}`: a key without its token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// Public id.
    pub id: String,
    /// As issued.
    pub label: String,
    /// As issued.
    pub vendor: String,
    /// As issued.
    pub daily_usd_cap: Usd,
    /// As issued.
    pub allowed_endpoints: Vec<String>,
    /// As issued.
    pub allowed_methods: Option<Vec<String>>,
    /// When the key stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the key was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Active, revoked or expired, as of the answer.
    pub status: KeyStatus,
    /// Settled spend in the current UTC day.
    pub spent_today_usd: Usd,
    /// Reserved by calls in flight (or whose outcome is unknown) in the current UTC day.
    pub reserved_usd: Usd,
    /// Proxied calls forwarded to the vendor, all time (refused calls are not counted).
    pub requests: u64,
    /// Proxied calls the proxy refused, all time.
    #[serde(default)]
    pub refusals: u64,
    /// The grant (or run) it was minted from; absent for a key issued by the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
}

/// `GET /v1/keys?label_prefix=&status=&vendor=&limit=&cursor=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPage {
    /// Keys in issue order.
    pub keys: Vec<KeyView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/keys/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeByLabelPrefix {
    /// Every active key whose label starts with this is revoked. Must be non-empty.
    pub label_prefix: String,
}

/// `POST /v1/keys/revoke` with ids: revokes many keys in one request (what the runtime sends when
/// several keys are dropped at once). Ids unknown or already revoked are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeByIds {
    /// Key ids, at most [`MAX_REVOKE_IDS`].
    pub ids: Vec<String>,
}

/// The most ids one `POST /v1/keys/revoke` may name.
pub const MAX_REVOKE_IDS: usize = 1000;

/// Answer to `POST /v1/keys/revoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCount {
    /// How many keys this call revoked.
    pub revoked: u64,
}

/// One entry of a key's audit trail: a proxied call, or a call the proxy refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When the call arrived.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// HTTP method.
    pub method: String,
    /// Upstream path as received (no query string).
    pub path: String,
    /// The vendor's status, when the call reached it.
    pub upstream_status: Option<u16>,
    /// The most the call could have cost.
    pub reserved_usd: Usd,
    /// What it did cost; absent while unknown.
    pub settled_usd: Option<Usd>,
    /// Why the proxy refused it, if it did.
    pub denied: Option<ErrorCode>,
    /// Its outcome never became known (the vendor never answered, the server stopped mid-call),
    /// so the reconciliation sweep settled it to what it reserved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconciled: bool,
}

/// `GET /v1/keys/{id}/events?limit=N`: the key's latest `N` calls (default and most 1000).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    /// Oldest first.
    pub events: Vec<Event>,
}

/// `GET /v1/info` (no authentication): what a client needs to check a key spec once, at start-up,
/// instead of finding out at the first call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's version.
    pub version: String,
    /// The longest `expires_in` a key may ask for, as a duration string (`"24h"`).
    pub max_key_ttl: String,
    /// The vendors this server proxies.
    pub vendors: Vec<VendorInfo>,
}

/// One vendor of [`ServerInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorInfo {
    /// The name keys are issued for and the proxy's first path segment.
    pub name: String,
    /// Where a vault token for this vendor goes.
    pub token_placement: TokenPlacement,
    /// The methods its API uses (and so the ones a key may be limited to).
    pub methods: Vec<String>,
}

/// `201` answer to `POST /v1/grants`: the only time the grant's credential is ever shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedGrant {
    /// Public id (`grt_…`), safe to log.
    pub id: String,
    /// The secret credential (`vkg_…`) keys are minted with: `VAULT_KEY_GRANT`.
    pub grant: String,
    /// The grant's terms, as stored.
    #[serde(flatten)]
    pub terms: GrantTerms,
}

impl std::fmt::Debug for IssuedGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedGrant")
            .field("id", &self.id)
            .field("grant", &"[redacted]")
            .field("terms", &self.terms)
            .finish()
    }
}

/// What a grant allows its minted keys, each and together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTerms {
    /// Every minted key's label starts with this.
    pub label_prefix: String,
    /// The one vendor its keys are for.
    pub vendor: String,
    /// The largest daily cap one key may have.
    pub max_key_usd_cap: Usd,
    /// The daily cap of all its keys together.
    pub daily_usd_cap: Usd,
    /// The widest endpoints: each of a key's patterns lies within one of these.
    pub allowed_endpoints: Vec<String>,
    /// The methods a key may allow; absent: any the vendor uses.
    pub allowed_methods: Option<Vec<String>>,
    /// The longest lifetime of a key (`"5m"`).
    pub max_key_ttl: String,
    /// Where a minted key's token goes on proxied calls.
    pub token_placement: TokenPlacement,
    /// When the grant (and every key minted from it) stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `GET /v1/grants/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// Public id.
    pub id: String,
    /// Active, revoked or expired.
    pub status: KeyStatus,
    /// Its terms.
    #[serde(flatten)]
    pub terms: GrantTerms,
    /// When it was revoked.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Settled spend of all its keys today (UTC).
    pub spent_today_usd: Usd,
    /// Reserved by its keys' calls in flight.
    pub reserved_usd: Usd,
}
