//! Grants: credentials far narrower than the admin token, from which a backend mints its keys
//! in-process (see `vault_key_wire::GrantCredential`).
//!
//! - `POST /v1/grants` (admin) creates one and shows its credential once; `GET` and `DELETE
//!   /v1/grants/{id}` (admin) read it and revoke it with every key minted from it.
//! - `POST /v1/grants/{id}/revoke` (the grant's own credential) revokes minted keys by id, seen
//!   or not: what the runtime sends when minted keys are dropped.
//! - [`admit`] is the proxy's first sight of a minted key: its tag checked against its grant,
//!   every caveat checked to narrow the grant, then the key recorded, and from then on served
//!   like any issued key. The grant's daily cap is reserved together with the key's own.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use vault_key_wire::{
    ErrorCode, GrantCredential, GrantTerms, GrantView, IssuedGrant, KeyCaveats, KeyStatus,
    MintedToken, RevokedCount, RunCaveats, Usd, GRANT_ID_PREFIX,
};

use crate::api::{
    bearer, label_text, read_object, revocable_label, Admin, AdminBody, Fields, MAX_ENDPOINTS,
};
use crate::app::App;
use crate::config::standard_method;
use crate::error::ApiError;
use crate::proxy::Refusal;
use crate::store::{utc_day, DaySpend, GrantRecord, KeyRecord, MintedKey, Store};
use crate::token::{looks_like_key_id, TokenHash};

/// Longest life of a grant: a run budget lives for a run, a backend's grant for a deploy; a
/// grant that outlives a month should be a new grant.
const MAX_GRANT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far ahead of the server's clock a minted key's issue time may be (the minter's clock).
pub(crate) const CLOCK_SKEW: time::Duration = time::Duration::seconds(60);

/// The grant routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/grants", post(create_grant))
        .route("/v1/grants/{id}", get(get_grant).delete(revoke_grant))
        .route("/v1/grants/{id}/revoke", post(revoke_minted))
}

async fn create_grant(
    _: Admin,
    State(app): State<Arc<App>>,
    AdminBody(body): AdminBody,
) -> Result<Response, ApiError> {
    let request = read_object(&body)?;
    let fields = Fields::only(
        &request,
        &[
            "label_prefix",
            "vendor",
            "max_key_usd_cap",
            "daily_usd_cap",
            "allowed_endpoints",
            "allowed_methods",
            "max_key_ttl",
            "expires_in",
        ],
    )?;
    let label_prefix = revocable_label("label_prefix", fields.string("label_prefix")?)?;
    let (vendor_name, vendor) = fields.vendor(&app)?;
    let max_key_cap = fields.dollars("max_key_usd_cap")?;
    let daily_cap = fields.dollars("daily_usd_cap")?;
    if max_key_cap > daily_cap {
        return Err(ApiError::invalid_field(
            "max_key_usd_cap",
            "`max_key_usd_cap` cannot be more than the grant's `daily_usd_cap`",
        ));
    }
    let allowed_endpoints = fields.endpoints("allowed_endpoints")?;
    let allowed_methods = fields.methods("allowed_methods", vendor)?;
    let max_key_ttl = fields.duration("max_key_ttl", app.max_key_ttl)?;
    let ttl = fields.duration("expires_in", MAX_GRANT_TTL)?;
    let now = app.clock.now();
    let credential = GrantCredential::from_parts(
        &format!("{GRANT_ID_PREFIX}{}", random_base62(22)),
        &random_base62(43),
    )
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "a grant could not be made",
        )
    })?;
    let grant = GrantRecord {
        id: credential.id().to_owned(),
        secret: Some(SecretString::from(credential.secret().to_owned())),
        parent_id: None,
        label_prefix: label_prefix.to_owned(),
        vendor: vendor_name.to_owned(),
        max_key_cap,
        daily_cap,
        allowed_endpoints,
        allowed_methods,
        max_key_ttl: time::Duration::try_from(max_key_ttl).unwrap_or(time::Duration::MAX),
        created_at: now,
        expires_at: now + ttl,
        revoked_at: None,
    };
    app.store.insert_grant(&grant).await?;
    tracing::info!(grant_id = %grant.id, label_prefix = %grant.label_prefix, vendor = %grant.vendor, cap_usd = %grant.daily_cap, "grant created");
    let issued = IssuedGrant {
        id: grant.id.clone(),
        grant: credential.token(),
        terms: terms(&app, &grant),
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

fn random_base62(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// A grant's terms as the API shows them.
fn terms(app: &App, grant: &GrantRecord) -> GrantTerms {
    GrantTerms {
        label_prefix: grant.label_prefix.clone(),
        vendor: grant.vendor.clone(),
        max_key_usd_cap: grant.max_key_cap,
        daily_usd_cap: grant.daily_cap,
        allowed_endpoints: grant
            .allowed_endpoints
            .iter()
            .map(ToString::to_string)
            .collect(),
        allowed_methods: grant
            .allowed_methods
            .as_ref()
            .map(|methods| methods.iter().map(ToString::to_string).collect()),
        max_key_ttl: vault_key_wire::format_duration(
            grant.max_key_ttl.try_into().unwrap_or_default(),
        ),
        token_placement: app
            .vendors
            .get(&grant.vendor)
            .map_or_else(vault_key_wire::TokenPlacement::bearer, |v| {
                v.vendor.auth.placement()
            }),
        expires_at: grant.expires_at,
        created_at: grant.created_at,
    }
}

pub(crate) fn no_such_grant() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no grant has this id",
    )
}

async fn get_grant(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<GrantView>, ApiError> {
    let now = app.clock.now();
    let (grant, spend) = app
        .store
        .grant(&id, utc_day(now))
        .await?
        .ok_or_else(no_such_grant)?;
    let mut shown = view(&app, &grant, spend, now);
    // A run stops with its grant: it shows so.
    if let Some(parent) = &grant.parent_id {
        if let Some((parent, _)) = app.store.grant(parent, utc_day(now)).await? {
            if shown.status == KeyStatus::Active {
                shown.status = parent.status(now);
            }
        }
    }
    Ok(Json(shown))
}

fn view(app: &App, grant: &GrantRecord, spend: DaySpend, now: OffsetDateTime) -> GrantView {
    GrantView {
        id: grant.id.clone(),
        status: grant.status(now),
        terms: terms(app, grant),
        revoked_at: grant.revoked_at,
        spent_today_usd: spend.spent,
        reserved_usd: spend.reserved,
    }
}

/// `DELETE /v1/grants/{id}`: the grant and every key recorded from it, at once; keys minted but
/// not yet seen are refused when they are (their grant is revoked).
async fn revoke_grant(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RevokedCount>, ApiError> {
    let revoked = app.revoke_grant(&id).await?.ok_or_else(no_such_grant)?;
    Ok(Json(RevokedCount { revoked }))
}

/// `POST /v1/grants/{id}/revoke` `{"ids": […]}`, authorised by the grant's own credential: its
/// holder revokes keys it minted, whether the proxy has seen them or not.
async fn revoke_minted(
    GrantHolder(grant): GrantHolder,
    State(app): State<Arc<App>>,
    AdminBody(body): AdminBody,
) -> Result<Json<RevokedCount>, ApiError> {
    let now = app.clock.now();
    let request = read_object(&body)?;
    let fields = Fields::only(&request, &["ids"])?;
    let ids = fields.key_ids()?;
    // Any key minted before now has expired once the longest key lifetime (and the minter's
    // clock skew) has passed, and none outlives its grant: its tombstone need not either.
    let until = grant
        .expires_at
        .min(now + longest_key_life(&app, &grant) + CLOCK_SKEW);
    let revoked = app.store.revoke_minted(&grant.id, &ids, until, now).await?;
    app.metrics.keys_revoked("minted", revoked);
    tracing::info!(grant_id = %grant.id, keys = ids.len(), revoked, "minted keys revoked by their grant");
    Ok(Json(RevokedCount { revoked }))
}

/// Proof that the request carried the credential of the grant its path names (checked before
/// the body is read, as the admin token is on the admin routes). A run has no credential of its
/// own: its keys are revoked with its grant's.
struct GrantHolder(GrantRecord);

impl axum::extract::FromRequestParts<Arc<App>> for GrantHolder {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        app: &Arc<App>,
    ) -> Result<GrantHolder, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "this route needs `Authorization: Bearer <the grant's credential>`",
            )
        };
        let Path(id) = Path::<String>::from_request_parts(parts, app)
            .await
            .map_err(|_| unauthorized())?;
        let credential = bearer(&parts.headers)
            .and_then(|token| GrantCredential::parse(token).ok())
            .filter(|credential| credential.id() == id)
            .ok_or_else(unauthorized)?;
        let (grant, _) = app
            .store
            .grant(&id, utc_day(app.clock.now()))
            .await?
            .ok_or_else(unauthorized)?;
        let stored = grant.secret.as_ref().ok_or_else(unauthorized)?;
        if !TokenHash::of(credential.secret()).matches(&TokenHash::of(stored.expose_secret())) {
            return Err(unauthorized());
        }
        Ok(GrantHolder(grant))
    }
}

/// The proxy's first sight of a minted key (`token`, hashing to `hash`): checked against its
/// grant, then recorded. Afterwards the token is found by its hash like any issued key.
pub(crate) async fn admit(
    app: &App,
    token: &str,
    hash: &TokenHash,
    now: OffsetDateTime,
) -> Result<(KeyRecord, DaySpend), Refusal> {
    let minted = MintedToken::parse(token)
        .map_err(|_| Refusal::InvalidKey("the minted key cannot be read"))?;
    let caveats = minted.caveats();
    let day = utc_day(now);
    let (mut grant, _) =
        app.store
            .grant(&caveats.grant_id, day)
            .await?
            .ok_or(Refusal::InvalidKey(
                "the minted key names no grant of this server",
            ))?;
    grant.max_key_ttl = longest_key_life(app, &grant);
    // A run's id in a key's grant field: runs have no secret, so nothing verifies.
    let signed = grant
        .secret
        .as_ref()
        .is_some_and(|secret| minted.is_signed_by(secret.expose_secret()));
    if !signed {
        return Err(Refusal::InvalidKey(
            "the minted key was not minted by its grant, or was changed since",
        ));
    }
    crate::policy::usable(grant.status(now))?;
    // A key of a run narrows the run, which narrows the grant.
    let run = minted
        .run()
        .map(|run| narrowed_run(&grant, run))
        .transpose()
        .map_err(Refusal::KeyWiderThanGrant)?;
    let scope = run.as_ref().unwrap_or(&grant);
    crate::policy::usable(scope.status(now))?;
    let key = narrowed_key(scope, caveats, hash, now).map_err(Refusal::KeyWiderThanGrant)?;
    crate::policy::check_state(&key, now)?;
    match app
        .store
        .record_minted_key(&key, run.as_ref(), &grant.id, day, now)
        .await?
    {
        MintedKey::Recorded(found) => {
            let (key, spend) = *found;
            tracing::info!(key_id = %key.id, grant_id = %grant.id, label = %key.label, "minted key admitted");
            Ok((key, spend))
        }
        MintedKey::Revoked => Err(Refusal::KeyRevoked),
        MintedKey::IdTaken => Err(Refusal::InvalidKey(
            "the minted key's id belongs to another key, or its run's id to another run",
        )),
    }
}

/// Whether `id` has the shape of a grant's (or a run's) id: `grt_` and 22 letters or digits.
pub(crate) fn looks_like_grant_id(id: &str) -> bool {
    id.strip_prefix(GRANT_ID_PREFIX)
        .is_some_and(|rest| rest.len() == 22 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The run a minted key's run block describes, as a grant of its own under `grant`, if it
/// narrows the grant; else what is wider. Its keys' other terms (largest key cap, endpoints,
/// methods, longest life) are the grant's.
fn narrowed_run(grant: &GrantRecord, run: &RunCaveats) -> Result<GrantRecord, String> {
    if !looks_like_grant_id(&run.run_id) {
        return Err("its run's id is not a grant id (`grt_` and 22 letters or digits)".to_owned());
    }
    if !run.label_prefix.starts_with(&grant.label_prefix)
        || label_text("label_prefix", &run.label_prefix).is_err()
    {
        return Err(format!(
            "its run's label prefix must start with `{}`",
            grant.label_prefix
        ));
    }
    let cap = Usd::from_micros(run.daily_cap_micros);
    if cap.is_zero() || cap > grant.daily_cap {
        return Err(format!(
            "its run's daily cap ${cap} is not between $0 and the grant's ${}",
            grant.daily_cap
        ));
    }
    let expires_at = OffsetDateTime::from_unix_timestamp(run.expires_at)
        .map_err(|_| "its run's end is out of range".to_owned())?;
    if expires_at > grant.expires_at {
        return Err("its run would outlive its grant".to_owned());
    }
    Ok(GrantRecord {
        id: run.run_id.clone(),
        secret: None,
        parent_id: Some(grant.id.clone()),
        label_prefix: run.label_prefix.clone(),
        vendor: grant.vendor.clone(),
        max_key_cap: grant.max_key_cap.min(cap),
        daily_cap: cap,
        allowed_endpoints: grant.allowed_endpoints.clone(),
        allowed_methods: grant.allowed_methods.clone(),
        max_key_ttl: grant.max_key_ttl,
        // The run's keys may be minted as early as the grant's: a key minted at the run's start
        // and first used minutes later is the run's all the same.
        created_at: grant.created_at,
        expires_at,
        revoked_at: None,
    })
}

/// The longest life of a key of `grant`: its own limit, within the server's as it is now.
fn longest_key_life(app: &App, grant: &GrantRecord) -> time::Duration {
    grant
        .max_key_ttl
        .min(time::Duration::try_from(app.max_key_ttl).unwrap_or(time::Duration::MAX))
}

/// The key a minted token describes, if every caveat narrows its grant; else what is wider.
fn narrowed_key(
    grant: &GrantRecord,
    caveats: &KeyCaveats,
    hash: &TokenHash,
    now: OffsetDateTime,
) -> Result<KeyRecord, String> {
    if !looks_like_key_id(&caveats.key_id) {
        return Err("its id is not a key id (`key_` and 22 letters or digits)".to_owned());
    }
    if caveats.vendor != grant.vendor {
        return Err(format!(
            "it is for {}, its grant for {}",
            caveats.vendor, grant.vendor
        ));
    }
    // A run's prefix ends at a segment boundary (run `run-4` is not run `run-42`); a grant's is
    // a plain prefix, as the admin API's label prefixes are.
    let under_prefix = match grant.parent_id {
        Some(_) => vault_key_wire::label_is_under(&caveats.label, &grant.label_prefix),
        None => caveats.label.starts_with(&grant.label_prefix),
    };
    let label_ok =
        !caveats.label.is_empty() && under_prefix && label_text("label", &caveats.label).is_ok();
    if !label_ok {
        return Err(format!(
            "its label must start with `{}` (and be at most 256 bytes of text)",
            grant.label_prefix
        ));
    }
    let cap = Usd::from_micros(caveats.daily_cap_micros);
    if cap.is_zero() || cap > grant.max_key_cap {
        return Err(format!(
            "its daily cap ${cap} is not between $0 and the grant's ${} for one key",
            grant.max_key_cap
        ));
    }
    if caveats.allowed_endpoints.is_empty() || caveats.allowed_endpoints.len() > MAX_ENDPOINTS {
        return Err(format!(
            "it must list 1 to {MAX_ENDPOINTS} endpoint patterns"
        ));
    }
    if let Some(wider) = caveats
        .allowed_endpoints
        .iter()
        .find(|p| !grant.allowed_endpoints.iter().any(|g| p.is_within(g)))
    {
        return Err(format!("endpoint `{wider}` is outside the grant's"));
    }
    let methods = match (&caveats.allowed_methods, &grant.allowed_methods) {
        (None, granted) => granted.clone(),
        (Some(asked), granted) => {
            let methods = asked
                .iter()
                .map(|m| standard_method(m).ok_or_else(|| format!("`{m}` is not a method")))
                .collect::<Result<Vec<_>, _>>()?;
            if methods.is_empty() {
                return Err("its methods, when listed, must not be empty".to_owned());
            }
            if let Some(granted) = granted {
                if let Some(outside) = methods.iter().find(|m| !granted.contains(m)) {
                    return Err(format!("method {outside} is outside the grant's"));
                }
            }
            Some(methods)
        }
    };
    let issued_at = OffsetDateTime::from_unix_timestamp(caveats.issued_at)
        .map_err(|_| "its issue time is out of range".to_owned())?;
    let expires_at = OffsetDateTime::from_unix_timestamp(caveats.expires_at)
        .map_err(|_| "its expiry is out of range".to_owned())?;
    if issued_at > now + CLOCK_SKEW {
        return Err("it was minted in the future (is the minter's clock right?)".to_owned());
    }
    if issued_at < grant.created_at - CLOCK_SKEW {
        return Err("it was minted before its grant existed".to_owned());
    }
    if expires_at <= issued_at || expires_at - issued_at > grant.max_key_ttl {
        return Err(format!(
            "its lifetime is not within the grant's longest, {}",
            vault_key_wire::format_duration(grant.max_key_ttl.try_into().unwrap_or_default())
        ));
    }
    if expires_at > grant.expires_at {
        return Err("it would outlive its grant".to_owned());
    }
    Ok(KeyRecord {
        id: caveats.key_id.clone(),
        token_hash: *hash,
        label: caveats.label.clone(),
        vendor: caveats.vendor.clone(),
        daily_cap: cap,
        allowed_endpoints: caveats.allowed_endpoints.clone(),
        allowed_methods: methods,
        created_at: issued_at,
        expires_at,
        revoked_at: None,
        requests: 0,
        refusals: 0,
        grant_id: Some(grant.id.clone()),
    })
}
