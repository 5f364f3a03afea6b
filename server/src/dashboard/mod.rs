//! The operator's dashboard at `/ui`: every live key's spend against its cap, grouped by label
//! prefix (an agent run), the latest refusals, each key's calls, and a revoke button for a key,
//! a label or a whole prefix.
//!
//! Server-rendered HTML (askama templates compiled into the binary) and one small script that
//! re-fetches the live part of the page every two seconds; no asset comes from elsewhere. The
//! admin token is typed into a form once; the browser then holds a session cookie (`Secure`,
//! `HttpOnly`, `SameSite=Strict`, path `/ui`). Every form carries the session's CSRF token and
//! must come from this server's own origin.

mod session;

pub use session::Sessions;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use vault_key_wire::{ErrorCode, KeyStatus, KeyView, Usd, ERROR_HEADER};

use crate::api::{event, key_view, label_text, not_found, query_pairs, revocable_label};
use crate::app::App;
use crate::error::ApiError;
use crate::present;
use crate::store::{utc_day, KeyQuery, LabelMatch, Revoked, Store, StoreError};
use crate::token::looks_like_key_id;
use session::Session;

const LOGIN: &str = "/ui/login";
/// Largest form body (a revocation is well under a kilobyte).
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Most live keys one page shows.
const MAX_KEYS_SHOWN: u32 = 1000;
/// Refusals shown on the overview.
const REFUSALS_SHOWN: u32 = 20;
/// Calls shown on a key's page.
const CALLS_SHOWN: u32 = 100;
/// No script, style, image or connection from anywhere but this server; no framing; forms post
/// only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/live", get(overview_live))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/keys/{id}", get(key_page))
        .route("/ui/keys/{id}/live", get(key_live))
        .route("/ui/revoke", post(revoke))
        .route("/ui/assets/dashboard.css", get(stylesheet))
        .route("/ui/assets/dashboard.js", get(script))
        .route("/ui/{*rest}", any(page_not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(page_headers))
}

// ---- Sessions, origins and forms -------------------------------------------------------------

/// A browser signed in to the dashboard.
struct SignedIn {
    /// The session id, as the cookie carries it.
    id: String,
    session: Session,
}

impl FromRequestParts<Arc<App>> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<SignedIn, PageError> {
        let not_signed_in = || {
            PageError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "sign in to the dashboard first",
            )
        };
        // Every cookie of the name is tried: a sibling site may have set one of its own first.
        let now = app.clock.now();
        session_cookies(&parts.headers)
            .find_map(|id| {
                app.sessions.find(id, now).map(|session| SignedIn {
                    id: id.to_owned(),
                    session,
                })
            })
            .ok_or_else(not_signed_in)
    }
}

/// A page visit: a browser that is not signed in is sent to the sign-in form instead.
struct Visitor(SignedIn);

impl FromRequestParts<Arc<App>> for Visitor {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Visitor, Redirect> {
        SignedIn::from_request_parts(parts, app)
            .await
            .map(Visitor)
            .map_err(|_| Redirect::to(LOGIN))
    }
}

/// A form posted by a signed-in browser from one of this server's own pages: same origin, a
/// live session, and that session's CSRF token in the `csrf` field.
struct SignedForm {
    signed_in: SignedIn,
    fields: HashMap<String, String>,
}

impl FromRequest<Arc<App>> for SignedForm {
    type Rejection = PageError;

    async fn from_request(request: Request, app: &Arc<App>) -> Result<SignedForm, PageError> {
        let (mut parts, body) = request.into_parts();
        require_same_origin(&parts)?;
        let signed_in = SignedIn::from_request_parts(&mut parts, app).await?;
        let fields = read_form(&parts, body).await?;
        let csrf = fields.get("csrf").map(String::as_str).unwrap_or_default();
        if !signed_in.session.csrf_matches(csrf) {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::CsrfTokenInvalid,
                "the form's CSRF token is not this session's; reload the page and try again",
            ));
        }
        Ok(SignedForm { signed_in, fields })
    }
}

/// The values of the session cookie in the `Cookie` headers.
fn session_cookies(headers: &http::HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == session::COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that holds a session id for `max_age` (0: forget it).
fn session_cookie_header(id: &str, max_age: time::Duration) -> String {
    format!(
        "{}={id}; Path=/ui; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        session::COOKIE,
        max_age.whole_seconds()
    )
}

/// Refuses a form that a page of another origin made the browser send. Browsers say where a
/// request comes from in `Sec-Fetch-Site`, which no page can set: `same-origin` is enough, and
/// holds behind a TLS proxy that rewrites `Host`. A browser that does not send it still sends
/// `Origin` with every form POST, which must then name the host addressed; a request with
/// neither is not from a browser's form and has no business here.
fn require_same_origin(parts: &Parts) -> Result<(), PageError> {
    let cross = |message: &str| {
        PageError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::CrossOrigin,
            message.to_owned(),
        )
    };
    let headers = &parts.headers;
    if let Some(site) = headers.get("sec-fetch-site") {
        return if site.as_bytes() == b"same-origin" {
            Ok(())
        } else {
            Err(cross("the form was sent from another site"))
        };
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| cross("a form must carry the `Origin` header that browsers send"))?;
    // The host the browser addressed: `Host` in HTTP/1.1, the URI's authority in HTTP/2.
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .ok_or_else(|| cross("the request names no host"))?;
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match origin_host {
        Some(origin_host) if origin_host.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(cross("the form was sent from another origin")),
    }
}

/// A form body's fields. Each name at most once: a repeated field is refused rather than one
/// of its values picked.
async fn read_form(parts: &Parts, body: Body) -> Result<HashMap<String, String>, PageError> {
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(ApiError::invalid_request(
            "the dashboard takes forms (`application/x-www-form-urlencoded`)",
        )
        .into());
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::RequestTooLarge,
                format!("a dashboard form is at most {MAX_FORM_BYTES} bytes"),
            )
        })?;
    let mut fields = HashMap::new();
    for (name, value) in form_urlencoded::parse(&bytes) {
        if fields
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(ApiError::invalid_field(&name, format!("`{name}` is given twice")).into());
        }
    }
    Ok(fields)
}

// ---- Signing in and out ----------------------------------------------------------------------

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
}

async fn login_form() -> Result<Html<String>, PageError> {
    Ok(Html(LoginPage { error: None }.render()?))
}

async fn login(State(app): State<Arc<App>>, request: Request) -> Result<Response, PageError> {
    let (parts, body) = request.into_parts();
    require_same_origin(&parts)?;
    let fields = read_form(&parts, body).await?;
    let token = fields.get("token").map(String::as_str).unwrap_or_default();
    if !app.is_admin(token) {
        tracing::warn!("dashboard sign-in refused: wrong admin token");
        let page = LoginPage {
            error: Some("That is not this server's admin token."),
        };
        let mut response = (StatusCode::UNAUTHORIZED, Html(page.render()?)).into_response();
        response.headers_mut().insert(
            ERROR_HEADER,
            HeaderValue::from_static(ErrorCode::Unauthorized.as_str()),
        );
        return Ok(response);
    }
    let id = app.sessions.open(app.clock.now());
    tracing::info!("dashboard sign-in");
    let cookie = session_cookie_header(&id, session::LIFETIME);
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui")).into_response())
}

async fn logout(State(app): State<Arc<App>>, form: SignedForm) -> Response {
    app.sessions.close(&form.signed_in.id);
    let cookie = session_cookie_header("", time::Duration::ZERO);
    ([(header::SET_COOKIE, cookie)], Redirect::to(LOGIN)).into_response()
}

// ---- The overview: keys grouped by label prefix ----------------------------------------------

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct OverviewPage {
    csrf: String,
    crumbs: Vec<Crumb>,
    notice: Option<String>,
    live_url: String,
    live: OverviewLive,
}

/// A step of the label-prefix path above the groups shown.
struct Crumb {
    name: String,
    href: String,
}

/// The part of the overview that the page re-fetches.
#[derive(Template)]
#[template(path = "ui/overview_live.html")]
struct OverviewLive {
    csrf: String,
    prefix: String,
    groups: Vec<Group>,
    keys: usize,
    truncated: bool,
    spent: Usd,
    reserved: Usd,
    refusals: Vec<RefusalLine>,
}

/// Keys whose labels share the next segment after the prefix shown: a prefix (`run-42/`, which
/// can be opened), or one whole label.
struct Group {
    name: String,
    /// Where the group opens as a prefix of its own; `None` for a whole label.
    href: Option<String>,
    keys: Vec<KeyLine>,
    bar: Bar,
    revoke: GroupRevocation,
}

/// The revoke form of a group: by prefix, or by the one label.
struct GroupRevocation {
    /// `label_prefix` or `label`.
    field: &'static str,
    question: String,
    button: String,
}

impl GroupRevocation {
    fn of(name: &str, is_prefix: bool) -> GroupRevocation {
        if is_prefix {
            GroupRevocation {
                field: "label_prefix",
                question: format!("Revoke every live key whose label starts with {name}?"),
                button: format!("Revoke all under {name}"),
            }
        } else {
            GroupRevocation {
                field: "label",
                question: format!("Revoke every live key labelled {name}?"),
                button: format!("Revoke all labelled {name}"),
            }
        }
    }
}

/// Spend against cap, for a `<meter>`.
struct Bar {
    spent: Usd,
    reserved: Usd,
    cap: Usd,
    /// Spent and reserved: what the cap has left no room for.
    used: Usd,
    /// Where the bar turns to a warning.
    high: Usd,
}

impl Bar {
    fn new(spent: Usd, reserved: Usd, cap: Usd) -> Bar {
        Bar {
            spent,
            reserved,
            cap,
            used: spent.saturating_add(reserved),
            high: Usd::from_micros(cap.micros() / 10 * 8),
        }
    }
}

struct KeyLine {
    id: String,
    label: String,
    vendor: String,
    requests: u64,
    refusals: u64,
    expires: String,
    href: String,
    bar: Bar,
}

impl KeyLine {
    fn new(key: &KeyView) -> KeyLine {
        KeyLine {
            id: key.id.clone(),
            label: key.label.clone(),
            vendor: key.vendor.clone(),
            requests: key.requests,
            refusals: key.refusals,
            expires: present::time_of_day(key.expires_at),
            href: format!("/ui/keys/{}", key.id),
            bar: Bar::new(key.spent_today_usd, key.reserved_usd, key.daily_usd_cap),
        }
    }
}

struct RefusalLine {
    at: String,
    key_href: String,
    key_id: String,
    label: String,
    method: String,
    path: String,
    code: &'static str,
}

async fn overview(
    Visitor(visitor): Visitor,
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, PageError> {
    let prefix = shown_prefix("prefix", query_pairs(query.as_deref()).get("prefix"))?;
    let page = OverviewPage {
        csrf: visitor.session.csrf().to_owned(),
        crumbs: crumbs(&prefix),
        notice: app.sessions.take_notice(&visitor.id),
        live_url: overview_href("/ui/live", &prefix),
        live: overview_live_part(&app, &visitor.session, prefix).await?,
    };
    Ok(Html(page.render()?))
}

async fn overview_live(
    signed_in: SignedIn,
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, PageError> {
    let prefix = shown_prefix("prefix", query_pairs(query.as_deref()).get("prefix"))?;
    let live = overview_live_part(&app, &signed_in.session, prefix).await?;
    Ok(Html(live.render()?))
}

async fn overview_live_part(
    app: &App,
    session: &Session,
    prefix: String,
) -> Result<OverviewLive, PageError> {
    let now = app.clock.now();
    let rows = app
        .store
        .list_keys(
            &KeyQuery {
                label_prefix: (!prefix.is_empty()).then(|| prefix.clone()),
                status: Some(KeyStatus::Active),
                vendor: None,
                now: Some(now),
                after: None,
                limit: MAX_KEYS_SHOWN,
            },
            utc_day(now),
        )
        .await?;
    let truncated = rows.len() == MAX_KEYS_SHOWN as usize;
    let mut by_group: BTreeMap<String, (bool, Vec<KeyView>)> = BTreeMap::new();
    for (_, key, spend) in rows {
        let key = key_view(key, spend, now);
        let (name, is_prefix) = group_of(&prefix, &key.label);
        by_group
            .entry(name)
            .or_insert_with(|| (is_prefix, Vec::new()))
            .1
            .push(key);
    }
    let (mut spent, mut reserved, mut keys) = (Usd::ZERO, Usd::ZERO, 0);
    let groups = by_group
        .into_iter()
        .map(|(name, (is_prefix, members))| {
            let total = |f: fn(&KeyView) -> Usd| {
                members
                    .iter()
                    .fold(Usd::ZERO, |sum, key| sum.saturating_add(f(key)))
            };
            let bar = Bar::new(
                total(|k| k.spent_today_usd),
                total(|k| k.reserved_usd),
                total(|k| k.daily_usd_cap),
            );
            spent = spent.saturating_add(bar.spent);
            reserved = reserved.saturating_add(bar.reserved);
            keys += members.len();
            Group {
                href: is_prefix.then(|| overview_href("/ui", &name)),
                revoke: GroupRevocation::of(&name, is_prefix),
                name,
                keys: members.iter().map(KeyLine::new).collect(),
                bar,
            }
        })
        .collect();
    let refusals = app
        .store
        .latest_refusals(REFUSALS_SHOWN)
        .await?
        .into_iter()
        .map(|refusal| RefusalLine {
            at: present::timestamp(refusal.at),
            key_href: format!("/ui/keys/{}", refusal.key_id),
            key_id: refusal.key_id,
            label: refusal.label,
            method: refusal.method,
            path: refusal.path,
            code: refusal.code.as_str(),
        })
        .collect();
    Ok(OverviewLive {
        csrf: session.csrf().to_owned(),
        prefix,
        groups,
        keys,
        truncated,
        spent,
        reserved,
        refusals,
    })
}

/// The group of a label under the prefix shown: the prefix and the label's next segment with
/// its `/` (`run-42/`, a prefix), or the whole label when no `/` follows.
fn group_of(prefix: &str, label: &str) -> (String, bool) {
    let rest = label.strip_prefix(prefix).unwrap_or(label);
    match rest.find('/') {
        Some(slash) => (
            label[..label.len() - rest.len() + slash + 1].to_owned(),
            true,
        ),
        None => (label.to_owned(), false),
    }
}

/// The prefix a page shows (from `field`), validated as the admin API validates a label prefix.
fn shown_prefix(field: &str, prefix: Option<&String>) -> Result<String, PageError> {
    match prefix {
        None => Ok(String::new()),
        Some(prefix) => Ok(label_text(field, prefix)?.to_owned()),
    }
}

/// `/ui` (or its live part) at a prefix.
fn overview_href(path: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        return path.to_owned();
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("prefix", prefix)
        .finish();
    format!("{path}?{query}")
}

/// The prefixes above and at `prefix`, each a link: `all keys`, `user:7/`, `user:7/run:42/`.
fn crumbs(prefix: &str) -> Vec<Crumb> {
    let mut crumbs = vec![Crumb {
        name: "all keys".to_owned(),
        href: "/ui".to_owned(),
    }];
    let mut end = 0;
    for segment in prefix.split_inclusive('/') {
        end += segment.len();
        crumbs.push(Crumb {
            name: segment.to_owned(),
            href: overview_href("/ui", &prefix[..end]),
        });
    }
    crumbs
}

// ---- One key ---------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "ui/key.html")]
struct KeyPage {
    csrf: String,
    id: String,
    notice: Option<String>,
    live_url: String,
    live: KeyLive,
}

/// The part of a key's page that the page re-fetches: the key, its spend and its calls.
#[derive(Template)]
#[template(path = "ui/key_live.html")]
struct KeyLive {
    csrf: String,
    key: KeyView,
    status: &'static str,
    expires: String,
    endpoints: String,
    methods: String,
    bar: Bar,
    calls: Vec<CallLine>,
}

struct CallLine {
    at: String,
    method: String,
    path: String,
    reserved: Usd,
    outcome: String,
    refused: bool,
}

async fn key_page(
    Visitor(visitor): Visitor,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let page = KeyPage {
        csrf: visitor.session.csrf().to_owned(),
        notice: app.sessions.take_notice(&visitor.id),
        live_url: format!("/ui/keys/{id}/live"),
        live: key_live_part(&app, &visitor.session, &id).await?,
        id,
    };
    Ok(Html(page.render()?))
}

async fn key_live(
    signed_in: SignedIn,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    Ok(Html(
        key_live_part(&app, &signed_in.session, &id)
            .await?
            .render()?,
    ))
}

async fn key_live_part(app: &App, session: &Session, id: &str) -> Result<KeyLive, PageError> {
    if !looks_like_key_id(id) {
        return Err(not_found().into());
    }
    let now = app.clock.now();
    let (key, spend) = app
        .store
        .key_view(id, utc_day(now))
        .await?
        .ok_or_else(not_found)?;
    let key = key_view(key, spend, now);
    let calls = app
        .store
        .calls(id, CALLS_SHOWN)
        .await?
        .into_iter()
        .rev()
        .map(|call| {
            let event = event(call);
            CallLine {
                at: present::timestamp(event.at),
                outcome: present::outcome(&event),
                refused: event.denied.is_some(),
                method: event.method,
                path: event.path,
                reserved: event.reserved_usd,
            }
        })
        .collect();
    Ok(KeyLive {
        csrf: session.csrf().to_owned(),
        status: key.status.as_str(),
        expires: present::timestamp(key.expires_at),
        endpoints: key.allowed_endpoints.join(", "),
        methods: key
            .allowed_methods
            .as_ref()
            .map_or("any the vendor uses".to_owned(), |m| m.join(", ")),
        bar: Bar::new(key.spent_today_usd, key.reserved_usd, key.daily_usd_cap),
        calls,
        key,
    })
}

// ---- Revoking --------------------------------------------------------------------------------

/// `POST /ui/revoke` with exactly one of `key` (an id), `label_prefix`, `label` (every key of
/// exactly that label) or `grant` (a grant or run: every key minted from it, used yet or not);
/// then back to the page named by `back` (`key`, or the overview at the prefix in `at`), which
/// says once what was revoked.
async fn revoke(State(app): State<Arc<App>>, form: SignedForm) -> Result<Response, PageError> {
    let fields = &form.fields;
    let named: Vec<&str> = ["key", "label_prefix", "label", "grant"]
        .into_iter()
        .filter(|field| fields.contains_key(*field))
        .collect();
    let [which] = named[..] else {
        return Err(ApiError::invalid_request(
            "name exactly one of `key`, `label_prefix`, `label` and `grant`",
        )
        .into());
    };
    let target = fields[which].as_str();
    let notice = match which {
        "key" => {
            if !looks_like_key_id(target) {
                return Err(ApiError::invalid_field("key", "`key` is a key id (`key_…`)").into());
            }
            match app.revoke_key(target).await? {
                Revoked::Now => format!("Revoked {target}."),
                Revoked::Already => format!("{target} was already revoked."),
                Revoked::NotFound => return Err(not_found().into()),
            }
        }
        "grant" => {
            if !crate::grants::looks_like_grant_id(target) {
                return Err(
                    ApiError::invalid_field("grant", "`grant` is a grant id (`grt_…`)").into(),
                );
            }
            let revoked = app
                .revoke_grant(target)
                .await?
                .ok_or_else(crate::grants::no_such_grant)?;
            format!(
                "Revoked {target} and {} minted from it; its keys not used yet are refused too.",
                present::keys_counted(revoked)
            )
        }
        "label_prefix" => {
            let prefix = revocable_label(which, target)?;
            let revoked = app.revoke_labels(LabelMatch::Prefix(prefix)).await?;
            format!("Revoked {} under {prefix}.", present::keys_counted(revoked))
        }
        _ => {
            let label = revocable_label(which, target)?;
            let revoked = app.revoke_labels(LabelMatch::Exact(label)).await?;
            format!(
                "Revoked {} labelled {label}.",
                present::keys_counted(revoked)
            )
        }
    };
    let back = match (
        fields.get("back").map(String::as_str),
        fields.get("key_page"),
    ) {
        (Some("key"), _) if which == "key" => format!("/ui/keys/{target}"),
        // The grant's button is on a key's page: back to it.
        (Some("key"), Some(id)) if which == "grant" && looks_like_key_id(id) => {
            format!("/ui/keys/{id}")
        }
        _ => overview_href("/ui", &shown_prefix("at", fields.get("at"))?),
    };
    app.sessions.leave_notice(&form.signed_in.id, notice);
    Ok(Redirect::to(&back).into_response())
}

// ---- Assets, headers, errors -----------------------------------------------------------------

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/dashboard.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/dashboard.js"),
    )
}

/// Every dashboard answer: never cached, never framed, no referrer to other sites, scripts and
/// styles from this server only. (Not `no-referrer`: under it a browser sends `Origin: null` with
/// the page's own forms, and the origin check could not tell them from another site's.)
async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn page_not_found() -> PageError {
    PageError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such page")
}

async fn method_not_allowed() -> PageError {
    PageError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        "this page does not take this method",
    )
}

/// An error of the dashboard: the admin API's status and `code`, as a page (the code also in
/// the `vault-key-error` header, as on every error of the server).
#[derive(Debug)]
struct PageError(ApiError);

impl PageError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> PageError {
        PageError(ApiError::new(status, code, message))
    }
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError(error)
    }
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> PageError {
        PageError(error.into())
    }
}

impl From<askama::Error> for PageError {
    fn from(error: askama::Error) -> PageError {
        tracing::error!(%error, "a dashboard page failed to render");
        PageError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the page failed to render",
        )
    }
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    status: u16,
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let code = self.0.body.code.as_str();
        let page = ErrorPage {
            status: self.0.status.as_u16(),
            code,
            message: &self.0.body.message,
        };
        let html = page
            .render()
            .unwrap_or_else(|_| format!("{} {code}", self.0.status.as_u16()));
        let mut response = (self.0.status, Html(html)).into_response();
        response
            .headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_group_by_their_next_segment_under_the_prefix_shown() {
        assert_eq!(group_of("", "run-1/charge"), ("run-1/".to_owned(), true));
        assert_eq!(group_of("", "checkout"), ("checkout".to_owned(), false));
        assert_eq!(
            group_of("user:7/", "user:7/run:42/tool"),
            ("user:7/run:42/".to_owned(), true)
        );
        assert_eq!(
            group_of("run-1/", "run-1/charge"),
            ("run-1/charge".to_owned(), false)
        );
        // A prefix that ends inside a segment groups by the rest of that segment.
        assert_eq!(group_of("run-4", "run-42/x"), ("run-42/".to_owned(), true));
    }

    #[test]
    fn crumbs_link_every_prefix_above_the_one_shown() {
        let crumbs = crumbs("user:7/run:42/");
        let names: Vec<&str> = crumbs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["all keys", "user:7/", "run:42/"]);
        assert_eq!(crumbs[2].href, "/ui?prefix=user%3A7%2Frun%3A42%2F");
    }
}
