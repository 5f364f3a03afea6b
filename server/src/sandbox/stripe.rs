//! A stand-in for Stripe's API under `/stripe`: form-encoded requests, Stripe's JSON objects and
//! error envelopes, `Idempotency-Key` replays, and the test-mode decline card.
//!
//! Knobs for tests, which a real Stripe ignores: `x-sandbox-delay-ms` delays the answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Map, Value};

use super::{Log, ReceivedRequest};
use crate::vendor::SANDBOX_SECRET;

/// The card that Stripe's test mode always declines.
const DECLINED_CARD: &str = "pm_card_chargeDeclined";

/// Collections the sandbox can create, with their id prefix and object name.
const COLLECTIONS: &[(&str, &str, &str)] = &[
    ("payment_intents", "pi", "payment_intent"),
    ("charges", "ch", "charge"),
    ("refunds", "re", "refund"),
    ("transfers", "tr", "transfer"),
    ("payouts", "po", "payout"),
    ("topups", "tu", "topup"),
    ("customers", "cus", "customer"),
];

pub(super) struct StripeSandbox {
    log: Arc<Log>,
    next_id: AtomicU64,
    objects: Mutex<HashMap<String, Map<String, Value>>>,
    /// Idempotency key → the answer given the first time.
    answered: Mutex<HashMap<String, (StatusCode, Value)>>,
}

impl StripeSandbox {
    pub(super) fn new(log: Arc<Log>) -> Self {
        StripeSandbox {
            log,
            next_id: AtomicU64::new(1),
            objects: Mutex::default(),
            answered: Mutex::default(),
        }
    }
}

type Answer = (StatusCode, Value);

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

pub(super) async fn handle(
    State(sandbox): State<Arc<StripeSandbox>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    sandbox.log.push(ReceivedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    if let Some(delay) = parts
        .headers
        .get("x-sandbox-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(delay.min(30_000))).await;
    }
    let Some(path) = parts.uri.path().strip_prefix("/stripe") else {
        return (StatusCode::NOT_FOUND, "only /stripe is simulated").into_response();
    };
    let (status, value, replayed) = sandbox.answer(&parts.method, path, &parts.headers, &body);
    let mut response = (status, Json(value)).into_response();
    response.headers_mut().insert(
        "request-id",
        format!(
            "req_sandbox_{}",
            sandbox.next_id.fetch_add(1, Ordering::Relaxed)
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

impl StripeSandbox {
    fn answer(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
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
        if let Some(key) = &idempotency_key {
            if let Some((status, value)) = self
                .answered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
            {
                return (*status, value.clone(), true);
            }
        }
        let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let (status, value) = self.route(method, path, &form);
        // Stripe saves the result of a request that started executing, not of one it rejected
        // before (such as a validation error).
        if let Some(key) = idempotency_key
            .filter(|_| status.is_success() || status == StatusCode::PAYMENT_REQUIRED)
        {
            self.answered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, (status, value.clone()));
        }
        (status, value, false)
    }

    fn route(&self, method: &Method, path: &str, form: &[(String, String)]) -> Answer {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["v1", "balance"]) => (
                StatusCode::OK,
                json!({"object": "balance", "livemode": false, "available": [{"amount": 1_000_000, "currency": "usd"}], "pending": []}),
            ),
            ("POST", ["v1", collection]) => self.create(collection, form),
            ("GET", ["v1", collection]) => self.list(collection),
            ("GET", ["v1", _, id]) => self.retrieve(id),
            ("POST", ["v1", "payment_intents", id]) => self.update(id, form),
            ("POST", ["v1", "payment_intents", id, action]) => {
                self.payment_intent_action(id, action, form)
            }
            _ => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("Unrecognized request URL ({method}: {path})."),
                None,
            ),
        }
    }

    fn create(&self, collection: &str, form: &[(String, String)]) -> Answer {
        let Some((_, prefix, object)) = COLLECTIONS.iter().find(|(name, _, _)| *name == collection)
        else {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("Unrecognized request URL (POST: /v1/{collection})."),
                None,
            );
        };
        if *object == "payment_intent" {
            if let Some((unknown, _)) = form.iter().find(|(name, _)| !is_payment_intent_param(name))
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    format!("Received unknown parameter: {unknown}"),
                    Some(unknown),
                );
            }
        }
        let mut fields = Map::new();
        for (name, value) in form {
            fields.insert(name.clone(), json!(value));
        }
        let moves_money = *object != "customer";
        if moves_money {
            let amount = match form
                .iter()
                .find(|(n, _)| n == "amount")
                .map(|(_, v)| v.parse::<u64>())
            {
                Some(Ok(amount)) => amount,
                Some(Err(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "Invalid integer: amount",
                        Some("amount"),
                    )
                }
                None if *object == "refund" => 0,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "Missing required param: amount.",
                        Some("amount"),
                    )
                }
            };
            fields.insert("amount".to_owned(), json!(amount));
            if !fields.contains_key("currency") && *object != "refund" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "Missing required param: currency.",
                    Some("currency"),
                );
            }
        }
        let id = format!(
            "{prefix}_sandbox{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        fields.insert("id".to_owned(), json!(id));
        fields.insert("object".to_owned(), json!(object));
        fields.insert("livemode".to_owned(), json!(false));
        fields.insert(
            "created".to_owned(),
            json!(time::OffsetDateTime::now_utc().unix_timestamp()),
        );
        if *object == "payment_intent" {
            fields.insert("status".to_owned(), json!("requires_payment_method"));
            let confirm = form.iter().any(|(n, v)| n == "confirm" && v == "true");
            if confirm {
                if let Err(declined) = confirm_payment(&mut fields, form) {
                    return declined;
                }
            }
        }
        self.objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, fields.clone());
        (StatusCode::OK, Value::Object(fields))
    }

    fn list(&self, collection: &str) -> Answer {
        let Some((_, prefix, _)) = COLLECTIONS.iter().find(|(name, _, _)| *name == collection)
        else {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("Unrecognized request URL (GET: /v1/{collection})."),
                None,
            );
        };
        let objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        let mut data: Vec<&Map<String, Value>> = objects
            .iter()
            .filter(|(id, _)| id.starts_with(&format!("{prefix}_")))
            .map(|(_, o)| o)
            .collect();
        data.sort_by_key(|o| o.get("created").and_then(Value::as_i64));
        (
            StatusCode::OK,
            json!({"object": "list", "url": format!("/v1/{collection}"), "has_more": false, "data": data}),
        )
    }

    fn retrieve(&self, id: &str) -> Answer {
        match self
            .objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            Some(object) => (StatusCode::OK, Value::Object(object.clone())),
            None => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("No such object: '{id}'"),
                Some("id"),
            ),
        }
    }

    fn update(&self, id: &str, form: &[(String, String)]) -> Answer {
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(object) = objects.get_mut(id) else {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("No such payment_intent: '{id}'"),
                Some("intent"),
            );
        };
        for (name, value) in form {
            let value = if name == "amount" {
                value
                    .parse::<u64>()
                    .map(|a| json!(a))
                    .unwrap_or(json!(value))
            } else {
                json!(value)
            };
            object.insert(name.clone(), value);
        }
        (StatusCode::OK, Value::Object(object.clone()))
    }

    fn payment_intent_action(&self, id: &str, action: &str, form: &[(String, String)]) -> Answer {
        let mut objects = self.objects.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(object) = objects.get_mut(id) else {
            return error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("No such payment_intent: '{id}'"),
                Some("intent"),
            );
        };
        match action {
            "confirm" => {
                if let Err(declined) = confirm_payment(object, form) {
                    return declined;
                }
            }
            "cancel" => {
                object.insert("status".to_owned(), json!("canceled"));
            }
            "capture" => {
                object.insert("status".to_owned(), json!("succeeded"));
            }
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!("Unrecognized request URL (POST: /v1/payment_intents/{id}/{action})."),
                    None,
                )
            }
        }
        (StatusCode::OK, Value::Object(object.clone()))
    }
}

/// The parameters the sandbox accepts on a payment intent; Stripe refuses unknown ones with a 400
/// that it does not save under the idempotency key.
fn is_payment_intent_param(name: &str) -> bool {
    const PLAIN: &[&str] = &[
        "amount",
        "currency",
        "confirm",
        "payment_method",
        "description",
        "customer",
        "capture_method",
        "receipt_email",
    ];
    const NESTED: &[&str] = &["metadata[", "automatic_payment_methods[", "amount_details["];
    PLAIN.contains(&name) || NESTED.iter().any(|prefix| name.starts_with(prefix))
}

fn confirm_payment(
    intent: &mut Map<String, Value>,
    form: &[(String, String)],
) -> Result<(), Answer> {
    let method = form
        .iter()
        .find(|(n, _)| n == "payment_method")
        .map(|(_, v)| v.as_str())
        .unwrap_or("pm_card_visa");
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
    intent.insert("payment_method".to_owned(), json!(method));
    intent.insert("status".to_owned(), json!("succeeded"));
    Ok(())
}
