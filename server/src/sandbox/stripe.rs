//! A stand-in for Stripe's API under `/stripe`: form-encoded requests read the way Stripe's Rack
//! stack reads them, Stripe's JSON objects and error envelopes, `Idempotency-Key` replays, the
//! test-mode decline card, and a ledger of the money every call really moved.
//!
//! The ledger is what the proxy's tests hold the meter to: a call the meter let through as free
//! must not move money here, and a metered one must not move more than was reserved. So the
//! sandbox models money the way Stripe does — payment intents that charge on confirmation (or
//! authorise, then charge on capture), charges that may be captured later, refunds in the
//! currency of what they refund, transfers, payouts and top-ups — and reads parameters as Rack
//! does: `&` and `;` separate pairs, a repeated name keeps its last value, and `[amount]`,
//! `amount]` and `amount[]` all set `amount`.
//!
//! Knobs for tests, which a real Stripe ignores (besides the sandbox-wide `x-sandbox-delay-ms`):
//! `x-sandbox-refuse: 429` (or another 4xx/5xx) answers that status without acting, as Stripe does
//! when it rate-limits or fails a request before executing it (and saves nothing under its
//! idempotency key).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::vendor::SANDBOX_SECRET;

/// The card that Stripe's test mode always declines.
const DECLINED_CARD: &str = "pm_card_chargeDeclined";

/// Collections the sandbox can create, with their id prefix, object name, and whether creating
/// one moves its `amount`.
const COLLECTIONS: &[(&str, &str, &str, Money)] = &[
    ("payment_intents", "pi", "payment_intent", Money::OnConfirm),
    ("charges", "ch", "charge", Money::OnCapture),
    ("refunds", "re", "refund", Money::Refund),
    ("transfers", "tr", "transfer", Money::OnCreate),
    ("payouts", "po", "payout", Money::OnCreate),
    ("topups", "tu", "topup", Money::OnCreate),
    ("customers", "cus", "customer", Money::None),
    ("products", "prod", "product", Money::None),
    ("prices", "price", "price", Money::None),
    ("coupons", "co", "coupon", Money::None),
    ("payment_methods", "pm", "payment_method", Money::None),
    ("setup_intents", "seti", "setup_intent", Money::None),
];

/// When an object of a collection moves money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Money {
    None,
    OnCreate,
    OnConfirm,
    OnCapture,
    Refund,
}

type Params = BTreeMap<String, String>;

/// A complete example of each object the sandbox creates, as Stripe's own mock serves them
/// (`openapi/fixtures3.json` of the `stripe/openapi` repository, commit f6c2a48, with the fields
/// of a freshly created object reset): what the SDKs' types expect to find.
static TEMPLATES: LazyLock<Map<String, Value>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("stripe_objects.json")).expect("the templates are JSON")
});

/// A new object of `kind` from its template.
fn template(kind: &str) -> Map<String, Value> {
    TEMPLATES
        .get(kind)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// Fields only the sandbox's own logic sets (Stripe refuses them as parameters).
const PROTECTED_FIELDS: &[&str] = &[
    "id",
    "object",
    "livemode",
    "created",
    "status",
    "amount",
    "amount_capturable",
    "amount_received",
    "amount_captured",
    "amount_refunded",
    "currency",
    "captured",
    "paid",
    "refunded",
];

/// Sets the object's scalar fields that `params` name, in the field's own JSON type; nested
/// parameters (`metadata[…]`, …) and names the object does not have are left alone.
fn overlay(object: &mut Map<String, Value>, params: &Params) {
    for (name, text) in params {
        if PROTECTED_FIELDS.contains(&name.as_str()) {
            continue;
        }
        let Some(field) = object.get_mut(name) else {
            continue;
        };
        let value = match field {
            Value::Number(_) => text
                .parse::<u64>()
                .map_or_else(|_| json!(text), |n| json!(n)),
            Value::Bool(_) => json!(text == "true"),
            Value::String(_) | Value::Null => json!(text),
            Value::Array(_) | Value::Object(_) => continue,
        };
        *field = value;
    }
}
type Answer = (StatusCode, Value);

pub(super) struct StripeSandbox {
    next_id: AtomicU64,
    state: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    objects: HashMap<String, Map<String, Value>>,
    /// Idempotency key → the request it was first used with, and the answer given then.
    answered: HashMap<String, (String, Answer)>,
    /// Money moved, per currency, in minor units.
    moved: BTreeMap<String, u64>,
}

impl std::fmt::Debug for StripeSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSandbox")
            .field("money_moved", &self.money_moved())
            .finish_non_exhaustive()
    }
}

impl StripeSandbox {
    pub(super) fn new() -> Self {
        StripeSandbox {
            next_id: AtomicU64::new(1),
            state: Mutex::default(),
        }
    }

    /// Money moved so far, per currency, in minor units.
    pub(super) fn money_moved(&self) -> BTreeMap<String, u64> {
        self.lock().moved.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}_sandbox{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }
}

fn error(
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
    param: Option<&str>,
) -> Answer {
    let mut body = json!({ "type": kind, "message": message.into() });
    if let Some(param) = param {
        body["param"] = json!(param);
    }
    (status, json!({ "error": body }))
}

fn invalid(message: impl Into<String>, param: Option<&str>) -> Answer {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        message,
        param,
    )
}

fn not_found(method: &Method, path: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Unrecognized request URL ({method}: {path})."),
        None,
    )
}

/// The parameters as Rack reads a form: pairs split on `&` and `;`, names filed under their
/// top-level key (leading brackets skipped, up to the first bracket), the last value winning.
fn rack_params(form: &[u8]) -> Params {
    let mut params = Params::new();
    for piece in form.split(|b| *b == b'&' || *b == b';') {
        for (name, value) in form_urlencoded::parse(piece) {
            let name = name.trim_start_matches(['[', ']']);
            let key = name.split(['[', ']']).next().unwrap_or("");
            if !key.is_empty() {
                params.insert(key.to_owned(), value.into_owned());
            }
        }
    }
    params
}

impl StripeSandbox {
    /// Answers a request to `path` (below `/stripe`).
    pub(super) fn respond(
        &self,
        parts: &http::request::Parts,
        path: &str,
        body: &[u8],
    ) -> Response {
        if let Some(status) = parts
            .headers
            .get("x-sandbox-refuse")
            .and_then(|v| StatusCode::from_bytes(v.as_bytes()).ok())
            .filter(|s| s.is_client_error() || s.is_server_error())
        {
            let kind = if status.is_server_error() {
                "api_error"
            } else {
                "rate_limit_error"
            };
            let (status, value) = error(status, kind, "Refused before acting (sandbox).", None);
            return (status, Json(value)).into_response();
        }
        // Rack merges the query's parameters with the body's, the body's winning.
        let mut params = rack_params(parts.uri.query().unwrap_or("").as_bytes());
        params.extend(rack_params(body));
        let (status, value, replayed) = self.answer(&parts.method, path, &parts.headers, &params);
        let mut response = (status, Json(value)).into_response();
        response.headers_mut().insert(
            "request-id",
            format!(
                "req_sandbox_{}",
                self.next_id.fetch_add(1, Ordering::Relaxed)
            )
            .parse()
            .expect("ascii"),
        );
        if replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", "true".parse().expect("ascii"));
        }
        response
    }
}

impl StripeSandbox {
    fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        params: &Params,
    ) -> (StatusCode, Value, bool) {
        let authorized = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {SANDBOX_SECRET}"));
        if !authorized {
            let (status, value) = error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Invalid API Key provided.",
                None,
            );
            return (status, value, false);
        }
        let idempotency_key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut ledger = self.lock();
        // Stripe replays a key's first answer only to the same request; another request under
        // the same key is an error, and acts on nothing.
        let request = format!("{method} {path} {params:?}");
        if let Some(key) = &idempotency_key {
            if let Some((first, (status, value))) = ledger.answered.get(key) {
                if *first != request {
                    let (status, value) = error(
                        StatusCode::BAD_REQUEST,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters \
                         they were first used with.",
                        None,
                    );
                    return (status, value, false);
                }
                return (*status, value.clone(), true);
            }
        }
        let (status, value) = self.route(&mut ledger, method, path, params);
        // Stripe saves the result of a request that started executing, not of one it rejected
        // before (such as a validation error).
        if let Some(key) = idempotency_key
            .filter(|_| status.is_success() || status == StatusCode::PAYMENT_REQUIRED)
        {
            ledger
                .answered
                .insert(key, (request, (status, value.clone())));
        }
        (status, value, false)
    }

    fn route(&self, ledger: &mut Ledger, method: &Method, path: &str, params: &Params) -> Answer {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let answer = match (method.as_str(), segments.as_slice()) {
            ("GET", ["v1", "balance"]) => Ok((
                StatusCode::OK,
                json!({"object": "balance", "livemode": false, "available": [{"amount": 1_000_000, "currency": "usd"}], "pending": []}),
            )),
            ("POST", ["v1", collection]) => self.create(ledger, collection, params),
            ("GET", ["v1", collection]) => list(ledger, collection, params),
            ("GET", ["v1", collection, id]) => ledger
                .object_in(collection, id)
                .map(|o| (StatusCode::OK, Value::Object(o.clone()))),
            ("DELETE", ["v1", collection @ ("customers" | "products" | "coupons"), id]) => {
                ledger.object_in(collection, id).map(|_| ()).map(|()| {
                    ledger.objects.remove(*id);
                    (StatusCode::OK, json!({"id": id, "deleted": true}))
                })
            }
            ("POST", ["v1", "payment_intents", id]) => update_intent(ledger, id, params),
            ("POST", ["v1", "payment_intents", id, "confirm"]) => confirm(ledger, id, params),
            ("POST", ["v1", collection @ ("payment_intents" | "charges"), id, "capture"]) => {
                capture(ledger, collection, id, params)
            }
            ("POST", ["v1", "payment_intents", id, "cancel"]) => {
                ledger.object_in_mut("payment_intents", id).map(|intent| {
                    intent.insert("status".to_owned(), json!("canceled"));
                    (StatusCode::OK, Value::Object(intent.clone()))
                })
            }
            ("POST", ["v1", "charges", id, "refund" | "refunds"]) => {
                let mut params = params.clone();
                params.insert("charge".to_owned(), (*id).to_owned());
                self.create(ledger, "refunds", &params)
            }
            ("POST", ["v1", collection, id]) => update_plain(ledger, collection, id, params),
            _ => Err(not_found(method, path)),
        };
        answer.unwrap_or_else(|refusal| refusal)
    }

    fn create(
        &self,
        ledger: &mut Ledger,
        collection: &str,
        params: &Params,
    ) -> Result<Answer, Answer> {
        let Some((_, prefix, object, money)) =
            COLLECTIONS.iter().find(|(name, ..)| *name == collection)
        else {
            return Err(not_found(&Method::POST, &format!("/v1/{collection}")));
        };
        if *object == "payment_intent" {
            if let Some(unknown) = params.keys().find(|name| !is_payment_intent_param(name)) {
                return Err(invalid(
                    format!("Received unknown parameter: {unknown}"),
                    Some(unknown),
                ));
            }
        }
        let mut fields = template(object);
        overlay(&mut fields, params);
        let id = self.new_id(prefix);
        fields.insert("id".to_owned(), json!(id));
        fields.insert("object".to_owned(), json!(object));
        fields.insert("livemode".to_owned(), json!(false));
        fields.insert(
            "created".to_owned(),
            json!(time::OffsetDateTime::now_utc().unix_timestamp()),
        );
        match money {
            Money::None => {}
            Money::Refund => refund(ledger, &mut fields, params)?,
            Money::OnCreate | Money::OnConfirm | Money::OnCapture => {
                let amount = amount_param(params, "amount")?
                    .ok_or_else(|| invalid("Missing required param: amount.", Some("amount")))?;
                let currency = params
                    .get("currency")
                    .ok_or_else(|| invalid("Missing required param: currency.", Some("currency")))?
                    .to_ascii_lowercase();
                fields.insert("amount".to_owned(), json!(amount));
                fields.insert("currency".to_owned(), json!(currency));
                match money {
                    Money::OnCreate => ledger.record(&currency, amount),
                    Money::OnConfirm => {
                        fields.insert("status".to_owned(), json!("requires_payment_method"));
                        fields.insert("amount_received".to_owned(), json!(0));
                        fields.insert("amount_capturable".to_owned(), json!(0));
                        if params.get("confirm").is_some_and(|v| v == "true") {
                            charge_intent(ledger, &mut fields, params)?;
                        }
                    }
                    _ => {
                        declined_unless_payable(params)?;
                        let captured = params.get("capture").is_none_or(|v| v != "false");
                        fields.insert("captured".to_owned(), json!(captured));
                        fields.insert("paid".to_owned(), json!(true));
                        fields.insert("status".to_owned(), json!("succeeded"));
                        fields.insert("amount_refunded".to_owned(), json!(0));
                        fields.insert(
                            "amount_captured".to_owned(),
                            json!(if captured { amount } else { 0 }),
                        );
                        if captured {
                            ledger.record(&currency, amount);
                        }
                    }
                }
            }
        }
        ledger.objects.insert(id, fields.clone());
        Ok((StatusCode::OK, Value::Object(fields)))
    }
}

impl Ledger {
    fn record(&mut self, currency: &str, amount: u64) {
        *self.moved.entry(currency.to_owned()).or_default() += amount;
    }

    /// The object with this id, if it belongs to the collection the path names: an id of another
    /// kind is as unknown to a route as a missing one.
    fn object_in(&self, collection: &str, id: &str) -> Result<&Map<String, Value>, Answer> {
        let kind = COLLECTIONS
            .iter()
            .find(|(name, ..)| *name == collection)
            .map(|(_, _, kind, _)| *kind);
        self.objects
            .get(id)
            .filter(|o| kind.is_some() && o.get("object").and_then(Value::as_str) == kind)
            .ok_or_else(|| no_such(id))
    }

    fn object_in_mut(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<&mut Map<String, Value>, Answer> {
        self.object_in(collection, id)?;
        self.objects.get_mut(id).ok_or_else(|| no_such(id))
    }
}

fn no_such(id: &str) -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No such object: '{id}'"),
        Some("id"),
    )
}

/// A page of a collection as Stripe lists it: newest first, `limit` objects (10 unless given,
/// at most 100), after the `starting_after` or before the `ending_before` object, and whether
/// there are more.
fn list(ledger: &Ledger, collection: &str, params: &Params) -> Result<Answer, Answer> {
    let Some((_, prefix, ..)) = COLLECTIONS.iter().find(|(name, ..)| *name == collection) else {
        return Err(not_found(&Method::GET, &format!("/v1/{collection}")));
    };
    let limit = match params.get("limit") {
        None => 10,
        Some(limit) => match limit.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "Invalid limit: must be an integer between 1 and 100",
                    Some("limit"),
                ))
            }
        },
    };
    // Ids end in a counter: the newest has the largest.
    let sequence = |id: &str| {
        id.rsplit("sandbox")
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let own = format!("{prefix}_");
    let mut newest_first: Vec<(u64, &Map<String, Value>)> = ledger
        .objects
        .iter()
        .filter(|(id, _)| id.starts_with(&own))
        .map(|(id, o)| (sequence(id), o))
        .collect();
    newest_first.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    if params.contains_key("starting_after") && params.contains_key("ending_before") {
        return Err(invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            None,
        ));
    }
    let cursor = |name: &str| -> Result<Option<u64>, Answer> {
        params
            .get(name)
            .map(
                |id| match id.starts_with(&own) && ledger.objects.contains_key(id) {
                    true => Ok(sequence(id)),
                    false => Err(no_such(id)),
                },
            )
            .transpose()
    };
    let (page, has_more): (Vec<&Map<String, Value>>, bool) =
        match (cursor("starting_after")?, cursor("ending_before")?) {
            (Some(after), _) => {
                let older: Vec<_> = newest_first.iter().filter(|(n, _)| *n < after).collect();
                let more = older.len() > limit;
                (
                    older.into_iter().take(limit).map(|(_, o)| *o).collect(),
                    more,
                )
            }
            (None, Some(before)) => {
                let newer: Vec<_> = newest_first.iter().filter(|(n, _)| *n > before).collect();
                let more = newer.len() > limit;
                let skip = newer.len().saturating_sub(limit);
                (
                    newer.into_iter().skip(skip).map(|(_, o)| *o).collect(),
                    more,
                )
            }
            (None, None) => (
                newest_first.iter().take(limit).map(|(_, o)| *o).collect(),
                newest_first.len() > limit,
            ),
        };
    Ok((
        StatusCode::OK,
        json!({"object": "list", "url": format!("/v1/{collection}"), "has_more": has_more, "data": page}),
    ))
}

fn amount_param(params: &Params, name: &str) -> Result<Option<u64>, Answer> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| invalid(format!("Invalid integer: {name}"), Some(name)))
        })
        .transpose()
}

fn amount_of(object: &Map<String, Value>) -> u64 {
    object.get("amount").and_then(Value::as_u64).unwrap_or(0)
}

fn currency_of(object: &Map<String, Value>) -> String {
    object
        .get("currency")
        .and_then(Value::as_str)
        .unwrap_or("usd")
        .to_owned()
}

fn status_of(object: &Map<String, Value>) -> &str {
    object.get("status").and_then(Value::as_str).unwrap_or("")
}

fn declined_unless_payable(params: &Params) -> Result<(), Answer> {
    let method = params
        .get("payment_method")
        .or_else(|| params.get("source"))
        .map_or("pm_card_visa", String::as_str);
    if method == DECLINED_CARD {
        let mut declined = error(
            StatusCode::PAYMENT_REQUIRED,
            "card_error",
            "Your card was declined.",
            None,
        );
        declined.1["error"]["code"] = json!("card_declined");
        declined.1["error"]["decline_code"] = json!("generic_decline");
        return Err(declined);
    }
    Ok(())
}

/// Confirms an intent: charges it, or with `capture_method=manual` authorises it.
fn charge_intent(
    ledger: &mut Ledger,
    intent: &mut Map<String, Value>,
    params: &Params,
) -> Result<(), Answer> {
    declined_unless_payable(params)?;
    if let Some(method) = params.get("payment_method") {
        intent.insert("payment_method".to_owned(), json!(method));
    }
    if let Some(capture) = params.get("capture_method") {
        intent.insert("capture_method".to_owned(), json!(capture));
    }
    let manual = intent.get("capture_method").and_then(Value::as_str) == Some("manual");
    if manual {
        intent.insert("status".to_owned(), json!("requires_capture"));
        intent.insert("amount_capturable".to_owned(), json!(amount_of(intent)));
    } else {
        ledger.record(&currency_of(intent), amount_of(intent));
        intent.insert("status".to_owned(), json!("succeeded"));
        intent.insert("amount_received".to_owned(), json!(amount_of(intent)));
    }
    Ok(())
}

fn confirm(ledger: &mut Ledger, id: &str, params: &Params) -> Result<Answer, Answer> {
    let mut intent = ledger.object_in("payment_intents", id)?.clone();
    if matches!(
        status_of(&intent),
        "succeeded" | "requires_capture" | "canceled"
    ) {
        return Err(invalid(
            "This PaymentIntent's status does not allow confirmation.",
            None,
        ));
    }
    charge_intent(ledger, &mut intent, params)?;
    ledger.objects.insert(id.to_owned(), intent.clone());
    Ok((StatusCode::OK, Value::Object(intent)))
}

fn capture(
    ledger: &mut Ledger,
    collection: &str,
    id: &str,
    params: &Params,
) -> Result<Answer, Answer> {
    let mut object = ledger.object_in(collection, id)?.clone();
    let capturable = match object.get("object").and_then(Value::as_str) {
        Some("payment_intent") => status_of(&object) == "requires_capture",
        Some("charge") => object.get("captured") == Some(&json!(false)),
        _ => false,
    };
    if !capturable {
        return Err(invalid("This object cannot be captured.", None));
    }
    let authorised = amount_of(&object);
    let amount = amount_param(params, "amount_to_capture")?
        .or(amount_param(params, "amount")?)
        .unwrap_or(authorised);
    if amount > authorised {
        return Err(invalid(
            "The amount to capture exceeds the amount authorised.",
            Some("amount_to_capture"),
        ));
    }
    ledger.record(&currency_of(&object), amount);
    if object.get("object").and_then(Value::as_str) == Some("payment_intent") {
        object.insert("amount_received".to_owned(), json!(amount));
        object.insert("amount_capturable".to_owned(), json!(0));
        object.insert("status".to_owned(), json!("succeeded"));
    } else {
        object.insert("amount_captured".to_owned(), json!(amount));
        object.insert("captured".to_owned(), json!(true));
    }
    ledger.objects.insert(id.to_owned(), object.clone());
    Ok((StatusCode::OK, Value::Object(object)))
}

/// A refund moves money back from what it refunds, in that object's currency.
fn refund(
    ledger: &mut Ledger,
    fields: &mut Map<String, Value>,
    params: &Params,
) -> Result<(), Answer> {
    let (collection, parent_id) = match (params.get("charge"), params.get("payment_intent")) {
        (Some(id), None) => ("charges", id.clone()),
        (None, Some(id)) => ("payment_intents", id.clone()),
        _ => {
            return Err(invalid(
                "One of `charge` or `payment_intent` is required.",
                None,
            ))
        }
    };
    let parent = ledger.object_in(collection, &parent_id)?.clone();
    let paid = match parent.get("object").and_then(Value::as_str) {
        Some("payment_intent") => status_of(&parent) == "succeeded",
        Some("charge") => parent.get("captured") == Some(&json!(true)),
        _ => false,
    };
    if !paid {
        return Err(invalid("This object has no payment to refund.", None));
    }
    let currency = currency_of(&parent);
    if params
        .get("currency")
        .is_some_and(|c| !c.eq_ignore_ascii_case(&currency))
    {
        return Err(invalid(
            "The refund's currency must be that of the payment.",
            Some("currency"),
        ));
    }
    let refunded = parent
        .get("amount_refunded")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let remaining = amount_of(&parent).saturating_sub(refunded);
    let amount = amount_param(params, "amount")?.unwrap_or(remaining);
    if amount > remaining {
        return Err(invalid(
            "Refund amount is greater than the unrefunded amount.",
            Some("amount"),
        ));
    }
    ledger.record(&currency, amount);
    if let Some(parent) = ledger.objects.get_mut(&parent_id) {
        parent.insert("amount_refunded".to_owned(), json!(refunded + amount));
    }
    fields.insert("amount".to_owned(), json!(amount));
    fields.insert("currency".to_owned(), json!(currency));
    fields.insert("status".to_owned(), json!("succeeded"));
    Ok(())
}

fn update_intent(ledger: &mut Ledger, id: &str, params: &Params) -> Result<Answer, Answer> {
    let intent = ledger.object_in_mut("payment_intents", id)?;
    let settled = matches!(
        status_of(intent),
        "succeeded" | "requires_capture" | "canceled"
    );
    if settled && (params.contains_key("amount") || params.contains_key("currency")) {
        return Err(invalid(
            "The amount of a PaymentIntent in this status cannot be changed.",
            Some("amount"),
        ));
    }
    let amount = amount_param(params, "amount")?;
    overlay(intent, params);
    if let Some(amount) = amount {
        intent.insert("amount".to_owned(), json!(amount));
    }
    if let Some(currency) = params.get("currency") {
        intent.insert("currency".to_owned(), json!(currency.to_ascii_lowercase()));
    }
    Ok((StatusCode::OK, Value::Object(intent.clone())))
}

/// Updates an object's descriptive fields; money fields cannot change this way.
fn update_plain(
    ledger: &mut Ledger,
    collection: &str,
    id: &str,
    params: &Params,
) -> Result<Answer, Answer> {
    if let Some(field) = PROTECTED_FIELDS.iter().find(|f| params.contains_key(**f)) {
        return Err(invalid(
            format!("Received unknown parameter: {field}"),
            Some(field),
        ));
    }
    let object = ledger.object_in_mut(collection, id)?;
    overlay(object, params);
    Ok((StatusCode::OK, Value::Object(object.clone())))
}

/// The parameters the sandbox accepts on a payment intent; Stripe refuses unknown ones with a 400
/// that it does not save under the idempotency key.
fn is_payment_intent_param(name: &str) -> bool {
    [
        "amount",
        "currency",
        "confirm",
        "payment_method",
        "description",
        "customer",
        "capture_method",
        "receipt_email",
        "metadata",
        "automatic_payment_methods",
        "amount_details",
    ]
    .contains(&name)
}
