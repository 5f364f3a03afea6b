//! The admin routes: `/v1/keys…`, `/healthz`, `/metrics`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use vault_key_wire::{
    parse_duration, EndpointPattern, ErrorCode, Event, EventPage, IssuedKey, KeyPage, KeyStatus,
    KeyView, RevokedCount, ServerInfo, Usd, VendorInfo, MAX_REVOKE_IDS,
};

use crate::app::{App, LiveVendor};
use crate::config::standard_method;
use crate::error::ApiError;
use crate::store::{
    utc_day, CallRecord, DaySpend, KeyQuery, KeyRecord, LabelMatch, Revoked, Store,
};
use crate::token;

/// Longest label, in bytes.
const MAX_LABEL_LEN: usize = 256;
/// Most patterns one key may carry.
pub(crate) const MAX_ENDPOINTS: usize = 64;
/// Largest page of keys.
const MAX_PAGE: u32 = 1000;

/// The admin router.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/revoke", post(revoke_many))
        .route("/v1/keys/{id}", get(get_key).delete(revoke_key))
        .route("/v1/keys/{id}/events", get(key_events))
        .route("/v1/info", get(info))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
}

/// A known admin route with a method it does not take: a JSON answer with its `code`, like every
/// other error of the server.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this route does not take this method",
    )
}

/// Proof that the request carried the admin token.
pub struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Admin, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "admin routes need `Authorization: Bearer <admin token>`",
            )
        };
        match bearer(&parts.headers) {
            Some(presented) if app.is_admin(presented) => Ok(Admin),
            _ => Err(unauthorized()),
        }
    }
}

/// An admin request's body, read whole (up to axum's default limit of 2 MiB); one too large, or
/// cut off, is refused with a JSON `code` like every other refusal rather than axum's plain text.
pub struct AdminBody(pub Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for AdminBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(request, state).await {
            Ok(body) => Ok(AdminBody(body)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::RequestTooLarge,
                    "the request body is over the admin API's limit of 2 MiB",
                ))
            }
            Err(rejection) => Err(ApiError::invalid_request(format!(
                "the request body could not be read: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// The token of the one `Authorization: Bearer …` header, if there is exactly one.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
}

/// An admin request's body: a JSON object.
pub(crate) fn read_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::invalid_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

async fn create_key(
    _: Admin,
    State(app): State<Arc<App>>,
    AdminBody(body): AdminBody,
) -> Result<Response, ApiError> {
    let spec = validate_new_key(&app, &read_object(&body)?)?;
    let vendor_placement = app.vendors[&spec.vendor].vendor.auth.placement();
    let now = app.clock.now();
    let (token, token_hash) = token::generate();
    let key = KeyRecord {
        id: token::generate_key_id(),
        token_hash,
        label: spec.label,
        vendor: spec.vendor,
        daily_cap: spec.cap,
        allowed_endpoints: spec.endpoints,
        allowed_methods: spec.methods,
        created_at: now,
        expires_at: now + spec.ttl,
        revoked_at: None,
        requests: 0,
        refusals: 0,
        grant_id: None,
    };
    app.store.insert_key(&key).await?;
    app.metrics.key_issued();
    tracing::info!(key_id = %key.id, label = %key.label, vendor = %key.vendor, cap_usd = %key.daily_cap, "key issued");
    let issued = IssuedKey {
        id: key.id,
        token: secrecy::ExposeSecret::expose_secret(&token).to_owned(),
        label: key.label,
        vendor: key.vendor,
        daily_usd_cap: key.daily_cap,
        allowed_endpoints: pattern_strings(&key.allowed_endpoints),
        allowed_methods: method_strings(key.allowed_methods.as_deref()),
        expires_at: key.expires_at,
        created_at: key.created_at,
        token_placement: vendor_placement,
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

struct NewKeySpec {
    label: String,
    vendor: String,
    cap: Usd,
    endpoints: Vec<EndpointPattern>,
    methods: Option<Vec<http::Method>>,
    ttl: std::time::Duration,
}

fn validate_new_key(app: &App, request: &Map<String, Value>) -> Result<NewKeySpec, ApiError> {
    let fields = Fields::only(
        request,
        &[
            "label",
            "vendor",
            "daily_usd_cap",
            "allowed_endpoints",
            "expires_in",
            "allowed_methods",
        ],
    )?;
    let label = fields.string("label")?;
    if label.is_empty() {
        return Err(ApiError::invalid_field(
            "label",
            "`label` must not be empty",
        ));
    }
    let label = label_text("label", label)?;
    let (vendor_name, vendor) = fields.vendor(app)?;
    Ok(NewKeySpec {
        label: label.to_owned(),
        vendor: vendor_name.to_owned(),
        cap: fields.dollars("daily_usd_cap")?,
        endpoints: fields.endpoints("allowed_endpoints")?,
        ttl: fields.duration("expires_in", app.max_key_ttl)?,
        methods: fields.methods("allowed_methods", vendor)?,
    })
}

/// The fields of an admin request's JSON object, each read with a clear error naming it.
pub(crate) struct Fields<'a> {
    request: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The fields of `request`, which may hold none but `known`.
    pub(crate) fn only(
        request: &'a Map<String, Value>,
        known: &[&str],
    ) -> Result<Fields<'a>, ApiError> {
        if let Some(unknown) = request.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ApiError::invalid_field(
                unknown,
                format!(
                    "unknown field `{unknown}`; the fields are {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(Fields { request })
    }

    /// A required string.
    pub(crate) fn string(&self, field: &str) -> Result<&'a str, ApiError> {
        match self.request.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ApiError::invalid_field(
                field,
                format!("`{field}` must be a string"),
            )),
            None => Err(ApiError::invalid_field(
                field,
                format!("`{field}` is required"),
            )),
        }
    }

    /// `vendor`: one this server serves.
    pub(crate) fn vendor(&self, app: &'a App) -> Result<(&'a str, &'a LiveVendor), ApiError> {
        let name = self.string("vendor")?;
        let vendor = app.vendors.get(name).ok_or_else(|| {
            let known: Vec<&str> = app.vendors.keys().map(String::as_str).collect();
            ApiError::invalid_field(
                "vendor",
                format!("unknown vendor; this server serves: {}", known.join(", ")),
            )
        })?;
        Ok((name, vendor))
    }

    /// A required amount of dollars, more than zero.
    pub(crate) fn dollars(&self, field: &str) -> Result<Usd, ApiError> {
        let amount = match self.request.get(field) {
            Some(Value::Number(n)) => {
                Usd::try_from(n).map_err(|e| ApiError::invalid_field(field, e.to_string()))?
            }
            Some(_) => {
                return Err(ApiError::invalid_field(
                    field,
                    format!("`{field}` must be a number of dollars"),
                ))
            }
            None => {
                return Err(ApiError::invalid_field(
                    field,
                    format!("`{field}` is required"),
                ))
            }
        };
        if amount.is_zero() {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` must be more than zero"),
            ));
        }
        Ok(amount)
    }

    /// A required, non-empty list of endpoint patterns.
    pub(crate) fn endpoints(&self, field: &str) -> Result<Vec<EndpointPattern>, ApiError> {
        let endpoints = self
            .string_list(field)?
            .ok_or_else(|| ApiError::invalid_field(field, format!("`{field}` is required")))?;
        if endpoints.is_empty() || endpoints.len() > MAX_ENDPOINTS {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` must list 1 to {MAX_ENDPOINTS} patterns"),
            ));
        }
        endpoints
            .iter()
            .map(|pattern| pattern.parse::<EndpointPattern>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::invalid_field(field, e.to_string()))
    }

    /// A required duration (`"5m"`) of at most `max`.
    pub(crate) fn duration(&self, field: &str, max: Duration) -> Result<Duration, ApiError> {
        let duration = parse_duration(self.string(field)?)
            .map_err(|e| ApiError::invalid_field(field, e.to_string()))?;
        if duration > max {
            return Err(ApiError::invalid_field(
                field,
                format!(
                    "`{field}` is longer than this server allows ({})",
                    vault_key_wire::format_duration(max)
                ),
            ));
        }
        Ok(duration)
    }

    /// An optional, non-empty list of methods the vendor uses.
    pub(crate) fn methods(
        &self,
        field: &str,
        vendor: &LiveVendor,
    ) -> Result<Option<Vec<http::Method>>, ApiError> {
        self.string_list(field)?
            .map(|methods| {
                if methods.is_empty() {
                    return Err(ApiError::invalid_field(
                        field,
                        format!("`{field}`, when given, must not be empty"),
                    ));
                }
                methods
                    .iter()
                    .map(|method| {
                        standard_method(method)
                            .filter(|m| vendor.vendor.methods.contains(m))
                            .ok_or_else(|| {
                                ApiError::invalid_field(
                                    field,
                                    format!(
                                        "`{method}` is not a method {} uses (methods are upper case)",
                                        vendor.vendor.name
                                    ),
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
    }

    /// `ids`: a required list of key ids (see [`key_ids`]).
    pub(crate) fn key_ids(&self) -> Result<Vec<String>, ApiError> {
        key_ids(self.request.get("ids").unwrap_or(&Value::Null))
    }

    /// An optional list of strings.
    fn string_list(&self, field: &str) -> Result<Option<Vec<String>>, ApiError> {
        let not_list =
            || ApiError::invalid_field(field, format!("`{field}` must be a list of strings"));
        match self.request.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned).ok_or_else(not_list))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(not_list()),
        }
    }
}

fn pattern_strings(patterns: &[EndpointPattern]) -> Vec<String> {
    patterns.iter().map(ToString::to_string).collect()
}

fn method_strings(methods: Option<&[http::Method]>) -> Option<Vec<String>> {
    methods.map(|methods| methods.iter().map(ToString::to_string).collect())
}

pub(crate) fn key_view(key: KeyRecord, spend: DaySpend, now: OffsetDateTime) -> KeyView {
    KeyView {
        status: key.status(now),
        id: key.id,
        label: key.label,
        vendor: key.vendor,
        daily_usd_cap: key.daily_cap,
        allowed_endpoints: pattern_strings(&key.allowed_endpoints),
        allowed_methods: method_strings(key.allowed_methods.as_deref()),
        expires_at: key.expires_at,
        created_at: key.created_at,
        revoked_at: key.revoked_at,
        spent_today_usd: spend.spent,
        reserved_usd: spend.reserved,
        requests: key.requests,
        refusals: key.refusals,
        grant_id: key.grant_id,
    }
}

pub(crate) fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no key has this id",
    )
}

async fn get_key(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let now = app.clock.now();
    let (key, spend) = app
        .store
        .key_view(&id, utc_day(now))
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(key_view(key, spend, now)))
}

async fn revoke_key(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match app.revoke_key(&id).await? {
        Revoked::Now | Revoked::Already => Ok(StatusCode::NO_CONTENT),
        Revoked::NotFound => Err(not_found()),
    }
}

/// `POST /v1/keys/revoke`: every key of a label prefix (`{"label_prefix": "run-42/"}`), or the
/// keys named (`{"ids": ["key_…", …]}`, what the runtime sends when several keys end at once).
async fn revoke_many(
    _: Admin,
    State(app): State<Arc<App>>,
    AdminBody(body): AdminBody,
) -> Result<Json<RevokedCount>, ApiError> {
    let request: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(Value::Object(map)) => map,
        _ => return Err(ApiError::invalid_request(
            "the body must be a JSON object: {\"label_prefix\": \"…\"} or {\"ids\": [\"key_…\"]}",
        )),
    };
    let revoked = match (request.get("label_prefix"), request.get("ids")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_request(
                "give `label_prefix` or `ids`, not both",
            ))
        }
        (Some(prefix), None) => {
            let prefix = prefix.as_str().unwrap_or_default();
            app.revoke_labels(LabelMatch::Prefix(revocable_label("label_prefix", prefix)?))
                .await?
        }
        (None, Some(ids)) => app.revoke_key_ids(&key_ids(ids)?).await?,
        (None, None) => {
            return Err(ApiError::invalid_field(
                "label_prefix",
                "give `label_prefix` (a non-empty string) or `ids` (a list of key ids)",
            ))
        }
    };
    Ok(Json(RevokedCount { revoked }))
}

/// A label (or label prefix) as given in `field`, if a label could be or start with it (no label
/// is longer or holds a control character, and a NUL would not even reach every database).
pub(crate) fn label_text<'a>(field: &str, text: &'a str) -> Result<&'a str, ApiError> {
    if text.len() > MAX_LABEL_LEN || text.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be at most {MAX_LABEL_LEN} bytes of text without control characters"),
        ));
    }
    Ok(text)
}

/// A label or prefix whose keys are to be revoked: as [`label_text`], and not empty, since an
/// empty prefix would revoke every key on the server (refused rather than guessed at).
pub(crate) fn revocable_label<'a>(field: &str, text: &'a str) -> Result<&'a str, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be a non-empty string"),
        ));
    }
    label_text(field, text)
}

/// The `ids` of a revocation: a non-empty list of at most [`MAX_REVOKE_IDS`] strings, each
/// shaped like a key id (a longer string cannot name a key; refusing it bounds the work).
fn key_ids(ids: &Value) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid_field(
            "ids",
            format!("`ids` must be a list of 1 to {MAX_REVOKE_IDS} key ids (`key_…`)"),
        )
    };
    let Value::Array(ids) = ids else {
        return Err(invalid());
    };
    if ids.is_empty() || ids.len() > MAX_REVOKE_IDS {
        return Err(invalid());
    }
    ids.iter()
        .map(|id| match id {
            Value::String(id) if crate::token::looks_like_key_id(id) => Ok(id.clone()),
            _ => Err(invalid()),
        })
        .collect()
}

pub(crate) fn query_pairs(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn limit_param(params: &HashMap<String, String>, default: u32) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(default),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_field(
                "limit",
                format!("`limit` must be a whole number from 1 to {MAX_PAGE}"),
            )),
        },
    }
}

async fn list_keys(
    _: Admin,
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Json<KeyPage>, ApiError> {
    let params = query_pairs(query.as_deref());
    let status = match params.get("status").map(String::as_str) {
        None | Some("") => None,
        Some("active") => Some(KeyStatus::Active),
        Some("revoked") => Some(KeyStatus::Revoked),
        Some("expired") => Some(KeyStatus::Expired),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "status",
                "`status` is one of active, revoked, expired",
            ))
        }
    };
    let after = match params.get("cursor") {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::invalid_field(
                "cursor",
                "`cursor` must be a value returned as `next_cursor`",
            )
        })?),
    };
    let limit = limit_param(&params, 100)?;
    let prefix = match params.get("label_prefix").filter(|p| !p.is_empty()) {
        Some(prefix) => Some(label_text("label_prefix", prefix)?.to_owned()),
        None => None,
    };
    // A vendor name is a path segment of the proxy: a known vendor, or nothing can match.
    let vendor = params.get("vendor").filter(|v| !v.is_empty()).cloned();
    if let Some(vendor) = &vendor {
        if vendor.len() > 64
            || !vendor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ApiError::invalid_field(
                "vendor",
                "`vendor` is a vendor name, as in `stripe`",
            ));
        }
    }
    let now = app.clock.now();
    let rows = app
        .store
        .list_keys(
            &KeyQuery {
                label_prefix: prefix,
                status,
                vendor,
                now: Some(now),
                after,
                limit,
            },
            utc_day(now),
        )
        .await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|(seq, _, _)| seq.to_string()))
        .flatten();
    let keys = rows
        .into_iter()
        .map(|(_, key, spend)| key_view(key, spend, now))
        .collect();
    Ok(Json(KeyPage { keys, next_cursor }))
}

async fn key_events(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventPage>, ApiError> {
    let limit = limit_param(&query_pairs(query.as_deref()), MAX_PAGE)?;
    let now = app.clock.now();
    if app.store.key(&id, utc_day(now)).await?.is_none() {
        return Err(not_found());
    }
    let events = app
        .store
        .calls(&id, limit)
        .await?
        .into_iter()
        .map(event)
        .collect();
    Ok(Json(EventPage { events }))
}

/// A call of a key's audit trail, as the admin API shows it.
pub(crate) fn event(call: CallRecord) -> Event {
    Event {
        at: call.at,
        method: call.method,
        path: call.path,
        upstream_status: call.upstream_status,
        reserved_usd: call.reserved,
        settled_usd: call.settled,
        denied: call.denied,
        reconciled: call.reconciled,
    }
}

async fn info(State(app): State<Arc<App>>) -> Json<ServerInfo> {
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        max_key_ttl: vault_key_wire::format_duration(app.max_key_ttl),
        vendors: app
            .vendors
            .values()
            .map(|v| VendorInfo {
                name: v.vendor.name.clone(),
                token_placement: v.vendor.auth.placement(),
                methods: v.vendor.methods.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    })
}

async fn healthz(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    app.store.ping().await?;
    // On a shared database: whether this server hears other servers' revocations right now
    // (while it does not, it reads every key from the database).
    let key_cache = if app.store.is_trusted() {
        "in_use"
    } else {
        "bypassed"
    };
    Ok(Json(
        serde_json::json!({ "status": "ok", "key_cache": key_cache }),
    ))
}

async fn metrics(
    State(app): State<Arc<App>>,
    headers: http::HeaderMap,
) -> Result<Response, ApiError> {
    if !app.may_read_metrics(bearer(&headers)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "/metrics needs `Authorization: Bearer <admin or metrics token>`",
        ));
    }
    let counts = app.store.key_counts(app.clock.now()).await?;
    Ok((
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(counts, app.store.is_trusted()),
    )
        .into_response())
}
