//! Stripe: every `(method, route)` of Stripe's API is classified as free, metered, or refused.
//!
//! - Reads (`GET`) are free. So are the writes listed in [`classify`] that create or change objects
//!   holding no money (customers, payment methods, products, prices, …).
//! - Creates that move money (`POST /v1/payment_intents`, `/v1/charges`, `/v1/transfers`,
//!   `/v1/payouts`, `/v1/topups`) cost their `amount`, in the currency's minor unit converted to
//!   USD; refunds cost theirs too and must name an object this key created, in its currency.
//! - Calls that make an existing object charge (confirm, capture) are allowed only on objects this
//!   key created, whose amount was reserved when it did; an update that changes an intent's
//!   `amount` is metered at the new amount in full, and one that changes anything else about its
//!   money (`currency` alone, fees, transfers) is refused.
//! - Everything else is refused: routes known to move money the request does not state
//!   (invoices, subscriptions, checkout, …) with that reason, and routes the meter does not know
//!   as unknown (an operator may declare those free in the config file).
//!
//! The meter reads the body the way Stripe (a Rack application) will, and refuses what it cannot
//! read with certainty: a body that is not plain form encoding, a duplicated, signed, fractional,
//! exponent or over-long amount, a field name Rack would read as a metered one although it is not
//! spelled exactly so (`Amount`, `amount[]`, `[amount]`, ` amount`), parameters in the query string
//! of a write (Rack merges them with the body's), and a `;` (an old Rack separator).

use std::borrow::Cow;
use std::collections::HashMap;

use http::{Method, StatusCode};
use sha2::{Digest, Sha256};
use vault_key_wire::Usd;

use super::{
    Estimate, ForwardRequest, IdempotencyClaim, NewObject, ObjectRef, Settlement, Unmeterable,
};

/// Longest amount accepted, in digits. Stripe's own maximum is eight digits.
const MAX_AMOUNT_DIGITS: usize = 12;

/// The Stripe cost meter.
#[derive(Debug, Clone)]
pub struct StripeMeter {
    /// USD value of one major unit of each currency, lower-case ISO code; `usd` is built in.
    usd_per_unit: HashMap<String, Usd>,
}

impl Default for StripeMeter {
    fn default() -> Self {
        StripeMeter::new(HashMap::new())
    }
}

/// What a route does with money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    /// Cannot move money.
    Free,
    /// Cannot move money unless one of these fields is given (then refused).
    FreeWithout(&'static [&'static str]),
    /// Creates an object of this kind that moves its `amount` in its `currency`.
    Creates(&'static str),
    /// A refund of an object this key created: `amount` in that object's currency. The charge is
    /// named in the path, or the charge or intent in the body (`charge`, `payment_intent`).
    Refund(Option<&'a str>),
    /// `POST /v1/payment_intents/{id}`: metered at a new `amount`; other money fields refused.
    PaymentIntentUpdate,
    /// Confirms an intent this key created; `amount_to_confirm`, when given, is metered too.
    Confirm(&'a str),
    /// Captures an object of this kind that this key created (its amount was reserved then).
    Capture(&'static str, &'a str),
    /// Known to move money that the request does not state.
    MovesUnstatedMoney,
    /// Not a route the meter knows.
    Unknown,
}

/// Fields a payment-intent update may carry without changing what the intent charges, besides
/// `amount` and `currency` (metered) — matched on the name Rack reads.
const PAYMENT_INTENT_UPDATE_FIELDS: &[&str] = &[
    "amount",
    "currency",
    "customer",
    "description",
    "metadata",
    "payment_method",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "receipt_email",
    "setup_future_usage",
    "shipping",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "capture_method",
    "expand",
];

/// Classifies a route of Stripe's API (segments of the canonical path).
fn classify<'a>(method: &Method, segments: &[&'a str]) -> Route<'a> {
    use Route::*;
    let ["v1", rest @ ..] = segments else {
        return Unknown;
    };
    if *method == Method::GET {
        return Free;
    }
    if *method == Method::DELETE {
        return match rest {
            ["customers", _]
            | ["customers", _, "discount"]
            | ["customers", _, "sources" | "tax_ids", _]
            | ["products", _]
            | ["products", _, "features", _]
            | ["coupons" | "plans" | "tax_ids" | "webhook_endpoints" | "ephemeral_keys", _]
            | ["apple_pay", "domains", _]
            | ["radar", "value_lists" | "value_list_items", _]
            | ["terminal", "configurations" | "locations", _] => Free,
            // Cancelling or changing a subscription can invoice at once (`invoice_now`, prorations).
            ["subscriptions" | "subscription_items", ..] => MovesUnstatedMoney,
            _ => Unknown,
        };
    }
    if *method != Method::POST {
        return Unknown;
    }
    match rest {
        ["payment_intents"] => Creates("payment_intent"),
        ["charges"] => Creates("charge"),
        ["transfers"] => Creates("transfer"),
        ["payouts"] => Creates("payout"),
        ["topups"] => Creates("topup"),
        ["refunds"] => Refund(None),
        ["charges", id, "refund" | "refunds"] => Refund(Some(id)),
        ["payment_intents", _] => PaymentIntentUpdate,
        ["payment_intents", id, "confirm"] => Confirm(id),
        ["payment_intents", id, "capture"] => Capture("payment_intent", id),
        ["charges", id, "capture"] => Capture("charge", id),
        ["customers"] | ["customers", _] => FreeWithout(&["balance", "cash_balance"]),
        ["customers", _, "sources"]
        | ["customers", _, "sources", _]
        | ["customers", _, "sources", _, "verify"]
        | ["customers", _, "tax_ids" | "funding_instructions"]
        | ["payment_methods"]
        | ["payment_methods", _]
        | ["payment_methods", _, "attach" | "detach"]
        | ["setup_intents"]
        | ["setup_intents", _]
        | ["setup_intents", _, "cancel" | "confirm" | "verify_microdeposits"]
        | ["products"]
        | ["products", _]
        | ["products", _, "features"]
        | [
            "prices" | "plans" | "coupons" | "promotion_codes" | "shipping_rates" | "tax_rates"
            | "webhook_endpoints" | "file_links" | "sources" | "payment_method_domains"
            | "payment_method_configurations",
        ]
        | [
            "prices" | "plans" | "coupons" | "promotion_codes" | "shipping_rates" | "tax_rates"
            | "webhook_endpoints" | "file_links" | "sources" | "payment_method_domains"
            | "payment_method_configurations",
            _,
        ]
        | ["sources", _, "verify"]
        | ["payment_method_domains", _, "validate"]
        | ["tax_ids" | "tokens" | "ephemeral_keys" | "customer_sessions"]
        | ["apple_pay", "domains"]
        | ["entitlements", "features"]
        | ["entitlements", "features", _]
        | ["radar", "value_lists" | "value_list_items"]
        | ["radar", "value_lists", _]
        | ["reviews", _, "approve"]
        | ["billing_portal", "configurations"]
        | ["billing_portal", "configurations", _]
        | ["terminal", "locations" | "configurations"]
        | ["terminal", "locations" | "configurations", _]
        | ["reporting", "report_runs"]
        | ["billing", "alerts"]
        | ["billing", "alerts", _, "activate" | "archive" | "deactivate"]
        // Updates of money-moving objects change only descriptions and metadata; cancelling one
        // moves no money.
        | ["charges" | "refunds" | "payouts" | "topups" | "transfers", _]
        | ["payment_intents" | "refunds" | "payouts" | "topups", _, "cancel"]
        | ["transfers", _, "reversals", _]
        | ["application_fees", _, "refunds", _]
        | ["disputes", _] => Free,
        [
            "invoices" | "invoiceitems" | "subscriptions" | "subscription_items"
            | "subscription_schedules" | "checkout" | "payment_links" | "quotes" | "credit_notes"
            | "billing" | "billing_portal" | "treasury" | "issuing" | "terminal" | "climate"
            | "identity" | "tax" | "forwarding" | "financial_connections" | "test_helpers"
            | "payment_records",
            ..,
        ]
        | ["customers", _, "balance_transactions" | "cash_balance", ..]
        | ["payment_intents", _, "apply_customer_balance" | "increment_authorization"]
        | ["transfers", _, "reversals"]
        | ["application_fees", _, "refunds"]
        | ["payouts", _, "reverse"]
        | ["disputes", _, "close"] => MovesUnstatedMoney,
        _ => Unknown,
    }
}

impl StripeMeter {
    /// A meter with these currency rates (USD per major unit) besides USD.
    pub fn new(mut usd_per_unit: HashMap<String, Usd>) -> Self {
        usd_per_unit.insert("usd".to_owned(), Usd::from_micros(1_000_000));
        StripeMeter { usd_per_unit }
    }

    pub(super) fn estimate(&self, request: &ForwardRequest) -> Result<Estimate, Unmeterable> {
        let route_name = || format!("{} {}", request.method, request.path);
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        let route = classify(&request.method, &segments);
        if request.method == Method::GET {
            if !request.body.is_empty() {
                return Err(Unmeterable::Refused(
                    "a GET to Stripe carries no body".to_owned(),
                ));
            }
            return Ok(Estimate::FREE);
        }
        match route {
            Route::Unknown => return Err(Unmeterable::UnknownRoute(route_name())),
            Route::MovesUnstatedMoney => {
                return Err(Unmeterable::Refused(format!(
                    "{} can move money the request does not state; vault-key cannot cap it",
                    route_name()
                )))
            }
            _ => {}
        }
        if request.query.is_some() {
            return Err(Unmeterable::Refused(format!(
                "Stripe reads a {}'s parameters from its query string as well as its body; send \
                 them in the body only",
                request.method
            )));
        }
        let form = Form::read(request)?;
        let mut estimate =
            match route {
                Route::Free => Estimate::FREE,
                Route::FreeWithout(fields) => {
                    if let Some(field) = fields.iter().find(|f| form.mentions(f)) {
                        return Err(Unmeterable::Refused(format!(
                            "`{field}` on {} moves money vault-key cannot cap",
                            route_name()
                        )));
                    }
                    Estimate::FREE
                }
                Route::Creates(kind) => {
                    refuse_amount_widening(&form)?;
                    let amount = self.required_amount(&form, "amount", &route_name)?;
                    Estimate {
                        max_cost: amount.usd,
                        creates: Some(NewObject {
                            kind,
                            amount: amount.minor,
                            currency: amount.currency,
                        }),
                        ..Estimate::FREE
                    }
                }
                Route::Refund(parent) => {
                    let amount = self.required_amount(&form, "amount", &route_name)?;
                    let (kind, parent) = match parent {
                        Some(id) => ("charge", id.to_owned()),
                        None => match (form.single("charge")?, form.single("payment_intent")?) {
                            (Some(id), None) => ("charge", id.into_owned()),
                            (None, Some(id)) => ("payment_intent", id.into_owned()),
                            _ => return Err(Unmeterable::Refused(
                                "a refund must name exactly one of `charge` and `payment_intent`"
                                    .to_owned(),
                            )),
                        },
                    };
                    Estimate {
                        max_cost: amount.usd,
                        acts_on: Some(ObjectRef {
                            kind: kind.to_owned(),
                            id: parent,
                            currency: Some(amount.currency),
                        }),
                        ..Estimate::FREE
                    }
                }
                Route::PaymentIntentUpdate => {
                    if let Some(name) = form.names().find(|name| {
                        !PAYMENT_INTENT_UPDATE_FIELDS
                            .iter()
                            .any(|allowed| rack_base(name) == *allowed)
                    }) {
                        return Err(Unmeterable::Refused(format!(
                        "`{name}` on a payment-intent update can change what the intent charges; \
                         vault-key cannot cap it"
                    )));
                    }
                    refuse_amount_widening(&form)?;
                    match self.optional_amount(&form, "amount")? {
                        Some(amount) => Estimate {
                            max_cost: amount.usd,
                            ..Estimate::FREE
                        },
                        None if form.mentions("currency") => return Err(Unmeterable::Refused(
                            "changing an intent's `currency` changes what its amount is worth; \
                             send the new `amount` with it"
                                .to_owned(),
                        )),
                        None => Estimate::FREE,
                    }
                }
                Route::Confirm(id) => {
                    refuse_amount_widening(&form)?;
                    Estimate {
                        max_cost: self
                            .optional_amount(&form, "amount_to_confirm")?
                            .map_or(Usd::ZERO, |amount| amount.usd),
                        acts_on: Some(ObjectRef {
                            kind: "payment_intent".to_owned(),
                            id: id.to_owned(),
                            currency: None,
                        }),
                        ..Estimate::FREE
                    }
                }
                Route::Capture(kind, id) => Estimate {
                    acts_on: Some(ObjectRef {
                        kind: kind.to_owned(),
                        id: id.to_owned(),
                        currency: None,
                    }),
                    ..Estimate::FREE
                },
                Route::Unknown | Route::MovesUnstatedMoney => unreachable!("refused above"),
            };
        if !estimate.max_cost.is_zero() {
            estimate.idempotency = idempotency_claim(request)?;
        }
        Ok(estimate)
    }

    pub(super) fn settle(
        &self,
        estimate: &Estimate,
        reserved: Usd,
        status: StatusCode,
        body: &[u8],
    ) -> Settlement {
        // Stripe charges nothing for a request it refused or failed.
        if !status.is_success() {
            return Settlement {
                cost: Usd::ZERO,
                created: None,
            };
        }
        // The object becomes the key's only if it is the one that was paid for: of the kind, amount
        // and currency reserved (an idempotent replay of someone else's request may answer with
        // another object).
        let created = estimate.creates.as_ref().and_then(|new| {
            let object: serde_json::Value = serde_json::from_slice(body).ok()?;
            let matches = object.get("object")?.as_str()? == new.kind
                && object.get("amount")?.as_u64()? == new.amount
                && object
                    .get("currency")?
                    .as_str()?
                    .eq_ignore_ascii_case(&new.currency);
            let id = object.get("id")?.as_str()?;
            matches.then(|| ObjectRef {
                kind: new.kind.to_owned(),
                id: id.to_owned(),
                currency: Some(new.currency.clone()),
            })
        });
        Settlement {
            cost: reserved,
            created,
        }
    }

    /// `field` and `currency`, both required.
    fn required_amount(
        &self,
        form: &Form<'_>,
        field: &str,
        route_name: &dyn Fn() -> String,
    ) -> Result<Amount, Unmeterable> {
        self.optional_amount(form, field)?.ok_or_else(|| {
            Unmeterable::Refused(format!(
                "{} moves money but the body has no `{field}`",
                route_name()
            ))
        })
    }

    /// `field` (when present, with a required `currency`).
    fn optional_amount(&self, form: &Form<'_>, field: &str) -> Result<Option<Amount>, Unmeterable> {
        let Some(amount) = form.single(field)? else {
            return Ok(None);
        };
        let amount = parse_amount(field, &amount)?;
        let currency = form
            .single("currency")?
            .ok_or_else(|| {
                Unmeterable::Refused(format!(
                    "`{field}` is metered in its currency, so the body must name `currency` too"
                ))
            })?
            .to_ascii_lowercase();
        Ok(Some(Amount {
            usd: self.to_usd(amount, &currency)?,
            minor: amount,
            currency,
        }))
    }

    fn to_usd(&self, amount: u64, currency: &str) -> Result<Usd, Unmeterable> {
        let rate = self.usd_per_unit.get(currency).ok_or_else(|| {
            Unmeterable::Refused(format!(
                "no USD rate is configured for currency `{currency}`; add it under \
                 [vendors.stripe.usd_per_unit] in the server config"
            ))
        })?;
        let minor_per_major = 10u128.pow(minor_unit_exponent(currency));
        // Round up: a reservation may be a micro-dollar high, never low.
        let micros = (u128::from(amount) * u128::from(rate.micros())).div_ceil(minor_per_major);
        Ok(Usd::from_micros(
            u64::try_from(micros)
                .unwrap_or(u64::MAX)
                .min(Usd::MAX.micros() + 1),
        ))
    }
}

/// An amount a request states, and what it is worth.
struct Amount {
    /// In the currency's minor unit.
    minor: u64,
    /// Lower-case ISO code.
    currency: String,
    /// In US dollars, rounded up.
    usd: Usd,
}

/// Options that let a payment be captured or incremented beyond the amount it states (card
/// overcapture, incremental authorisation): the amount reserved would no longer bound it.
fn refuse_amount_widening(form: &Form<'_>) -> Result<(), Unmeterable> {
    match form
        .names()
        .find(|name| name.contains("overcapture") || name.contains("incremental_authorization"))
    {
        Some(name) => Err(Unmeterable::Refused(format!(
            "`{name}` lets the payment move more than its amount; vault-key cannot cap it"
        ))),
        None => Ok(()),
    }
}

/// A form body read the way Stripe reads it, or refused.
struct Form<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Form<'a> {
    /// The body's pairs, if it is plain form encoding: one `Content-Type` of
    /// `application/x-www-form-urlencoded` (UTF-8), no `Content-Encoding`, visible ASCII only
    /// (what form encoders produce), and no `;`.
    fn read(request: &'a ForwardRequest) -> Result<Form<'a>, Unmeterable> {
        let refuse = |why: &str| Err(Unmeterable::Refused(why.to_owned()));
        if request.body.is_empty() {
            return Ok(Form { pairs: Vec::new() });
        }
        if request
            .headers
            .get_all(http::header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            return refuse("a Stripe request body must not be compressed (no Content-Encoding)");
        }
        let mut types = request.headers.get_all(http::header::CONTENT_TYPE).iter();
        let is_form = match (types.next().and_then(|v| v.to_str().ok()), types.next()) {
            (Some(content_type), None) => {
                let mut parts = content_type.split(';').map(str::trim);
                let essence = parts.next().unwrap_or("");
                essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
                    && parts.all(|param| {
                        param.split_once('=').is_some_and(|(name, value)| {
                            name.trim().eq_ignore_ascii_case("charset")
                                && value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
                        })
                    })
            }
            _ => false,
        };
        if !is_form {
            return refuse(
                "a Stripe request body must have one Content-Type, \
                 application/x-www-form-urlencoded (UTF-8)",
            );
        }
        if let Some(byte) = request
            .body
            .iter()
            .find(|b| !b.is_ascii_graphic() || **b == b';')
        {
            return Err(Unmeterable::Refused(format!(
                "a Stripe form body holds only percent-encoded visible ASCII without `;`, not the \
                 byte 0x{byte:02X}"
            )));
        }
        Ok(Form {
            pairs: form_urlencoded::parse(&request.body).collect(),
        })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(name, _)| name.as_ref())
    }

    /// Whether the body gives `field`, under its own name or one Rack reads as it.
    fn mentions(&self, field: &str) -> bool {
        self.names()
            .any(|name| rack_base(name).eq_ignore_ascii_case(field))
    }

    /// The one value of `field`: `None` when absent; unmeterable when given twice or under a
    /// name that Rack reads as `field` although it is not spelled exactly so.
    fn single(&self, field: &str) -> Result<Option<Cow<'a, str>>, Unmeterable> {
        let mut found = None;
        for (name, value) in &self.pairs {
            if name != field {
                if rack_base(name).eq_ignore_ascii_case(field) {
                    return Err(Unmeterable::Refused(format!(
                        "the body has a field that Stripe may read as `{field}` but is not spelled \
                         exactly so"
                    )));
                }
                continue;
            }
            if found.replace(value.clone()).is_some() {
                return Err(Unmeterable::Refused(format!(
                    "the body gives `{field}` more than once"
                )));
            }
        }
        Ok(found)
    }
}

/// The top-level parameter name Rack files a form field under: surrounding whitespace and NULs
/// dropped, leading brackets skipped, up to the first bracket (`[amount]`, `amount]`, `amount[]`
/// and ` amount` all become `amount`; `amount_details[tip]` becomes `amount_details`).
fn rack_base(name: &str) -> &str {
    let trimmed = name.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let unbracketed = trimmed.trim_start_matches(['[', ']']);
    let end = unbracketed.find(['[', ']']).unwrap_or(unbracketed.len());
    &unbracketed[..end]
}

fn parse_amount(field: &str, text: &str) -> Result<u64, Unmeterable> {
    if text.is_empty()
        || text.len() > MAX_AMOUNT_DIGITS
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Unmeterable::Refused(format!(
            "`{field}` must be a whole number of the currency's smallest unit, at most \
             {MAX_AMOUNT_DIGITS} digits, with no sign, decimals or exponent"
        )));
    }
    text.parse()
        .map_err(|_| Unmeterable::Refused(format!("`{field}` is not a whole number")))
}

/// The forwarded request's `Idempotency-Key`, with a digest of what it names.
fn idempotency_claim(request: &ForwardRequest) -> Result<Option<IdempotencyClaim>, Unmeterable> {
    let mut values = request.headers.get_all("idempotency-key").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Unmeterable::Refused(
            "more than one Idempotency-Key header".to_owned(),
        ));
    }
    let key = first.to_str().map_err(|_| {
        Unmeterable::Refused("the Idempotency-Key header is not visible ASCII".to_owned())
    })?;
    let mut digest = Sha256::new();
    digest.update(request.method.as_str());
    digest.update([0]);
    digest.update(&request.path);
    digest.update([0]);
    digest.update(&request.body);
    let fingerprint = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(IdempotencyClaim {
        key: key.to_owned(),
        fingerprint,
    }))
}

/// Decimal places of a currency's minor unit, as Stripe counts them.
fn minor_unit_exponent(currency: &str) -> u32 {
    match currency {
        "bif" | "clp" | "djf" | "gnf" | "jpy" | "kmf" | "krw" | "mga" | "pyg" | "rwf" | "ugx"
        | "vnd" | "vuv" | "xaf" | "xof" | "xpf" => 0,
        "bhd" | "jod" | "kwd" | "omr" | "tnd" => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn request(method: Method, path: &str, body: &str) -> ForwardRequest {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        ForwardRequest {
            method,
            path: path.to_owned(),
            query: None,
            headers,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    fn meter() -> StripeMeter {
        StripeMeter::new(HashMap::from([(
            "eur".to_owned(),
            "1.10".parse::<Usd>().unwrap(),
        )]))
    }

    fn estimate(path: &str, body: &str) -> Result<Estimate, Unmeterable> {
        meter().estimate(&request(Method::POST, path, body))
    }

    fn cost(path: &str, body: &str) -> u64 {
        estimate(path, body).unwrap().max_cost.micros()
    }

    #[test]
    fn creates_cost_their_amount_in_usd() {
        assert_eq!(
            cost("/v1/payment_intents", "amount=1000&currency=usd"),
            10_000_000
        );
        assert_eq!(cost("/v1/charges", "currency=USD&amount=1"), 10_000);
        assert_eq!(cost("/v1/transfers", "amount=100&currency=eur"), 1_100_000);
        assert_eq!(cost("/v1/payouts", "amount=%31%30&currency=usd"), 100_000);
        assert_eq!(cost("/v1/payment_intents", "amount=0&currency=usd"), 0);
        let created = estimate("/v1/charges", "amount=5&currency=eur").unwrap();
        assert_eq!(
            created.creates,
            Some(NewObject {
                kind: "charge",
                amount: 5,
                currency: "eur".to_owned()
            })
        );
    }

    #[test]
    fn zero_decimal_and_three_decimal_currencies_convert() {
        let meter = StripeMeter::new(HashMap::from([
            ("jpy".to_owned(), "0.0067".parse().unwrap()),
            ("kwd".to_owned(), "3.25".parse().unwrap()),
        ]));
        assert_eq!(meter.to_usd(1000, "jpy").unwrap().micros(), 6_700_000);
        assert_eq!(meter.to_usd(1, "kwd").unwrap().micros(), 3_250);
        assert!(meter.to_usd(1, "gbp").is_err());
    }

    #[test]
    fn updates_are_metered_at_a_new_amount_and_refused_when_they_change_money_otherwise() {
        assert_eq!(
            cost("/v1/payment_intents/pi_1", "amount=500&currency=usd"),
            5_000_000
        );
        assert_eq!(cost("/v1/payment_intents/pi_1", "description=x"), 0);
        assert_eq!(
            cost("/v1/payment_intents/pi_1", "metadata[order]=7&expand[]=x"),
            0
        );
        for body in [
            "amount=500",
            "currency=usd",
            "currency=idr&description=x",
            "application_fee_amount=100",
            "transfer_data[amount]=100",
            "on_behalf_of=acct_1",
        ] {
            assert!(
                estimate("/v1/payment_intents/pi_1", body).is_err(),
                "{body} was metered"
            );
        }
    }

    #[test]
    fn confirm_and_capture_act_only_on_objects_the_key_created() {
        let confirm = estimate("/v1/payment_intents/pi_1/confirm", "").unwrap();
        assert_eq!(confirm.max_cost, Usd::ZERO);
        assert_eq!(confirm.acts_on.unwrap().id, "pi_1");
        assert_eq!(
            cost(
                "/v1/payment_intents/pi_1/confirm",
                "amount_to_confirm=200&currency=usd"
            ),
            2_000_000
        );
        for path in [
            "/v1/payment_intents/pi_1/capture",
            "/v1/charges/ch_1/capture",
        ] {
            let capture = estimate(path, "").unwrap();
            assert!(capture.needs_reservation(), "{path}");
        }
    }

    #[test]
    fn refunds_name_an_object_of_the_key_in_its_currency() {
        let refund = estimate("/v1/refunds", "charge=ch_1&amount=300&currency=usd").unwrap();
        assert_eq!(refund.max_cost.micros(), 3_000_000);
        assert_eq!(
            refund.acts_on,
            Some(ObjectRef {
                kind: "charge".to_owned(),
                id: "ch_1".to_owned(),
                currency: Some("usd".to_owned())
            })
        );
        for body in [
            "charge=ch_1",
            "charge=ch_1&amount=300",
            "amount=300&currency=usd",
            "charge=ch_1&payment_intent=pi_1&amount=300&currency=usd",
        ] {
            assert!(estimate("/v1/refunds", body).is_err(), "{body}");
        }
        assert_eq!(
            estimate("/v1/charges/ch_9/refunds", "amount=1&currency=usd")
                .unwrap()
                .acts_on
                .unwrap()
                .id,
            "ch_9"
        );
    }

    #[test]
    fn reads_and_objects_without_money_are_free() {
        assert_eq!(cost("/v1/customers", "email=a%40b.c"), 0);
        assert_eq!(cost("/v1/payment_intents/pi_1/cancel", ""), 0);
        assert_eq!(cost("/v1/setup_intents/seti_1/confirm", ""), 0);
        let get = meter()
            .estimate(&request(Method::GET, "/v1/invoices/in_1", ""))
            .unwrap();
        assert_eq!(get.max_cost, Usd::ZERO);
        assert!(!get.needs_reservation());
    }

    #[test]
    fn refuses_amounts_it_cannot_read_with_certainty() {
        for body in [
            "currency=usd",
            "amount=&currency=usd",
            "amount=10&amount=1000&currency=usd",
            "amount=+10&currency=usd",
            "amount=-10&currency=usd",
            "amount=10.5&currency=usd",
            "amount=1e3&currency=usd",
            "amount=0x10&currency=usd",
            "amount=1234567890123&currency=usd",
            "amount=%2010&currency=usd",
            "amount=10&Amount=10000&currency=usd",
            "amount=10&amount%00=10000&currency=usd",
            "amount=10&amount[]=10000&currency=usd",
            "amount=10&[amount]=10000&currency=usd",
            "amount=10&amount]=10000&currency=usd",
            "amount=10;amount=10000&currency=usd",
            "amount=10",
            "amount=10&currency=usd&currency=jpy",
            "amount=10&currency=gbp",
            "amount=10&currency[0]=usd",
            "amount=10&%20amount=1000&currency=usd",
            "amount=10&currency=usd&note=caf\u{e9}",
        ] {
            assert!(
                estimate("/v1/payment_intents", body).is_err(),
                "{body:?} was metered"
            );
        }
    }

    #[test]
    fn bodies_stripe_would_read_differently_are_refused() {
        let mut gzip = request(Method::POST, "/v1/customers", "email=a");
        gzip.headers
            .insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(meter().estimate(&gzip).is_err());
        let mut utf16 = request(Method::POST, "/v1/customers", "email=a");
        utf16.headers.insert(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-16"
                .parse()
                .unwrap(),
        );
        assert!(meter().estimate(&utf16).is_err());
        let mut query = request(Method::POST, "/v1/customers", "email=a");
        query.query = Some("balance=100".to_owned());
        assert!(meter().estimate(&query).is_err());
        assert!(meter()
            .estimate(&request(Method::GET, "/v1/customers", "amount=1"))
            .is_err());
        assert!(estimate("/v1/customers", "balance=-100000").is_err());
        assert!(estimate("/v1/customers/cus_1", "[balance]=-100000").is_err());
    }

    #[test]
    fn routes_that_move_unstated_money_and_unknown_routes_are_refused() {
        for path in [
            "/v1/invoices/in_1/pay",
            "/v1/checkout/sessions",
            "/v1/subscriptions",
            "/v1/customers/cus_1/balance_transactions",
            "/v1/transfers/tr_1/reversals",
            "/v1/treasury/outbound_payments",
            "/v1/quotes/qt_1/accept",
        ] {
            assert!(
                matches!(estimate(path, ""), Err(Unmeterable::Refused(_))),
                "{path}"
            );
        }
        assert!(matches!(
            estimate("/v1/some_new_product", ""),
            Err(Unmeterable::UnknownRoute(_))
        ));
        let delete = meter().estimate(&request(Method::DELETE, "/v1/subscriptions/sub_1", ""));
        assert!(matches!(delete, Err(Unmeterable::Refused(_))));
    }

    #[test]
    fn an_object_is_owned_only_if_the_answer_is_the_object_paid_for() {
        let created = estimate("/v1/payment_intents", "amount=400&currency=usd").unwrap();
        let settle = |body: &str| {
            meter()
                .settle(
                    &created,
                    Usd::from_micros(4_000_000),
                    StatusCode::OK,
                    body.as_bytes(),
                )
                .created
        };
        let owned = settle(
            r#"{"id": "pi_1", "object": "payment_intent", "amount": 400, "currency": "usd"}"#,
        );
        assert_eq!(owned.unwrap().id, "pi_1");
        for other in [
            r#"{"id": "pi_1", "object": "payment_intent", "amount": 40000, "currency": "usd"}"#,
            r#"{"id": "pi_1", "object": "payment_intent", "amount": 400, "currency": "eur"}"#,
            r#"{"id": "ch_1", "object": "charge", "amount": 400, "currency": "usd"}"#,
            "not json",
        ] {
            assert_eq!(settle(other), None, "{other}");
        }
        let refused = meter().settle(
            &created,
            Usd::from_micros(4_000_000),
            StatusCode::PAYMENT_REQUIRED,
            b"{}",
        );
        assert_eq!(refused.cost, Usd::ZERO);
    }

    #[test]
    fn options_that_widen_an_amount_are_refused() {
        for (path, body) in [
            (
                "/v1/payment_intents",
                "amount=1&currency=usd&payment_method_options[card][request_overcapture]=if_available",
            ),
            (
                "/v1/payment_intents/pi_1/confirm",
                "payment_method_options[card][request_incremental_authorization]=if_available",
            ),
        ] {
            assert!(estimate(path, body).is_err(), "{body}");
        }
    }

    #[test]
    fn rack_reads_bracketed_and_padded_names_as_their_base() {
        for name in [
            "amount",
            "[amount]",
            "amount]",
            "amount[]",
            " amount\0",
            "[[amount",
        ] {
            assert_eq!(rack_base(name), "amount", "{name:?}");
        }
        assert_eq!(rack_base("amount_details[tip][amount]"), "amount_details");
    }

    #[test]
    fn idempotency_claims_fingerprint_the_forwarded_body() {
        let mut a = request(Method::POST, "/v1/charges", "amount=1&currency=usd");
        a.headers.insert("idempotency-key", "k1".parse().unwrap());
        let mut b = a.clone();
        b.body = bytes::Bytes::from_static(b"amount=1&currency=usd&description=x");
        let claim_a = meter().estimate(&a).unwrap().idempotency.unwrap();
        let claim_b = meter().estimate(&b).unwrap().idempotency.unwrap();
        assert_eq!(claim_a.key, "k1");
        assert_ne!(claim_a.fingerprint, claim_b.fingerprint);
        a.headers.remove("idempotency-key");
        assert!(meter().estimate(&a).unwrap().idempotency.is_none());
    }
}
