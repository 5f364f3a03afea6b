//! Stripe: money-moving creates cost their `amount`, in the currency's minor unit, converted to
//! USD; everything else is free. Bodies are form-encoded as Stripe's API expects.
//!
//! The meter reads the body the way Stripe will and refuses anything it cannot read with certainty
//! (a duplicated, signed, fractional, exponent or over-long `amount`, a look-alike field name, a
//! JSON body): an amount the meter misreads is an amount the cap does not hold.

use std::collections::HashMap;

use http::Method;
use vault_key_wire::Usd;

use super::{Estimate, MeteredRequest, Unmeterable};
use crate::store::IdempotencyClaim;

/// Longest amount accepted, in digits. Stripe's own maximum is eight digits.
const MAX_AMOUNT_DIGITS: usize = 12;

/// The Stripe cost meter.
#[derive(Debug, Clone)]
pub struct StripeMeter {
    /// USD value of one major unit of each currency, lower-case ISO code; `usd` is built in.
    usd_per_unit: HashMap<String, Usd>,
}

/// Which field of which request moves money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AmountField {
    /// The request must carry it.
    Required(&'static str),
    /// When present, the request moves that amount; when absent it moves nothing new.
    Optional(&'static str),
}

impl Default for StripeMeter {
    fn default() -> Self {
        StripeMeter::new(HashMap::new())
    }
}

impl StripeMeter {
    /// A meter with these currency rates (USD per major unit) besides USD.
    pub fn new(mut usd_per_unit: HashMap<String, Usd>) -> Self {
        usd_per_unit.insert("usd".to_owned(), Usd::from_micros(1_000_000));
        StripeMeter { usd_per_unit }
    }

    pub(super) fn estimate(&self, request: &MeteredRequest<'_>) -> Result<Estimate, Unmeterable> {
        if request.method != Method::POST {
            return Ok(Estimate::FREE);
        }
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        let field = match amount_field(&segments) {
            Ok(Some(field)) => field,
            Ok(None) => return Ok(Estimate::FREE),
            Err(reason) => return Err(Unmeterable(reason)),
        };
        let name = match field {
            AmountField::Required(name) | AmountField::Optional(name) => name,
        };
        if let Some(query) = request.query {
            if form_names(query.as_bytes())
                .any(|n| is_look_alike(&n, name) || is_look_alike(&n, "currency"))
            {
                return Err(Unmeterable(format!(
                    "`{name}` and `currency` must be sent in the form body, not the query string"
                )));
            }
        }
        if !request.body.is_empty() {
            check_form_content_type(request)?;
        }
        let Some(amount) = single_value(request.body, name)? else {
            return match field {
                AmountField::Required(_) => Err(Unmeterable(format!(
                    "POST {} moves money but the body has no `{name}`",
                    request.path
                ))),
                AmountField::Optional(_) => Ok(Estimate::FREE),
            };
        };
        let amount = parse_amount(name, &amount)?;
        let currency = single_value(request.body, "currency")?
            .ok_or_else(|| {
                Unmeterable(format!(
                    "`{name}` is metered in its currency, so the body must name `currency` too"
                ))
            })?
            .to_ascii_lowercase();
        let max_cost = self.to_usd(amount, &currency)?;
        let idempotency = idempotency_key(request)?.map(|key| IdempotencyClaim {
            key,
            fingerprint: format!("POST {} {}", request.path, max_cost.micros()),
        });
        Ok(Estimate {
            max_cost,
            idempotency,
        })
    }

    fn to_usd(&self, amount: u64, currency: &str) -> Result<Usd, Unmeterable> {
        let rate = self.usd_per_unit.get(currency).ok_or_else(|| {
            Unmeterable(format!(
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

fn amount_field(segments: &[&str]) -> Result<Option<AmountField>, String> {
    use AmountField::{Optional, Required};
    Ok(match segments {
        ["v1", "payment_intents" | "charges" | "transfers" | "payouts" | "refunds" | "topups"] => {
            Some(Required("amount"))
        }
        ["v1", "payment_intents", _] => Some(Optional("amount")),
        ["v1", "payment_intents", _, "confirm"] => Some(Optional("amount_to_confirm")),
        ["v1", "payment_intents", _, "increment_authorization"] => Some(Required("amount")),
        // These move money through line items or stored prices the request does not carry.
        ["v1", "invoices", _, "pay"]
        | ["v1", "subscriptions" | "checkout" | "payment_links" | "subscription_items", ..] => {
            return Err(format!(
                "POST /{} can move money the request does not state; vault-key cannot cap it",
                segments.join("/")
            ))
        }
        _ => None,
    })
}

fn check_form_content_type(request: &MeteredRequest<'_>) -> Result<(), Unmeterable> {
    let mut values = request.headers.get_all(http::header::CONTENT_TYPE).iter();
    let content_type = values.next().and_then(|v| v.to_str().ok());
    let is_form = content_type.is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if !is_form || values.next().is_some() {
        return Err(Unmeterable(
            "a metered Stripe request must have one Content-Type, application/x-www-form-urlencoded"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The decoded names of a form's pairs.
fn form_names(form: &[u8]) -> impl Iterator<Item = String> + '_ {
    form_urlencoded::parse(form).map(|(name, _)| name.into_owned())
}

/// A name that Stripe, or something between us and Stripe, might read as `field` although it is not
/// spelled exactly `field`: another case, surrounding spaces or NULs, or a bracketed form.
fn is_look_alike(name: &str, field: &str) -> bool {
    let trimmed = name.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    name == field
        || trimmed.eq_ignore_ascii_case(field)
        || trimmed
            .get(..field.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(field))
            && trimmed[field.len()..].starts_with('[')
}

/// The one value of `field` in a form body: `None` when absent; unmeterable when given twice or
/// under a look-alike name.
fn single_value(form: &[u8], field: &str) -> Result<Option<String>, Unmeterable> {
    let mut found = None;
    for (name, value) in form_urlencoded::parse(form) {
        if name != field {
            if is_look_alike(&name, field) {
                return Err(Unmeterable(format!(
                    "the body has a field that looks like `{field}` but is not spelled exactly so"
                )));
            }
            continue;
        }
        if found.replace(value.into_owned()).is_some() {
            return Err(Unmeterable(format!(
                "the body gives `{field}` more than once"
            )));
        }
    }
    Ok(found)
}

fn parse_amount(field: &str, text: &str) -> Result<u64, Unmeterable> {
    if text.is_empty()
        || text.len() > MAX_AMOUNT_DIGITS
        || !text.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Unmeterable(format!(
            "`{field}` must be a whole number of the currency's smallest unit, at most \
             {MAX_AMOUNT_DIGITS} digits, with no sign, decimals or exponent"
        )));
    }
    text.parse()
        .map_err(|_| Unmeterable(format!("`{field}` is not a whole number")))
}

fn idempotency_key(request: &MeteredRequest<'_>) -> Result<Option<String>, Unmeterable> {
    let mut values = request.headers.get_all("idempotency-key").iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Unmeterable(
            "more than one Idempotency-Key header".to_owned(),
        ));
    }
    first
        .to_str()
        .map(|key| Some(key.to_owned()))
        .map_err(|_| Unmeterable("the Idempotency-Key header is not visible ASCII".to_owned()))
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

    fn estimate(path: &str, body: &str) -> Result<Estimate, Unmeterable> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let meter = StripeMeter::new(HashMap::from([(
            "eur".to_owned(),
            "1.10".parse::<Usd>().unwrap(),
        )]));
        meter.estimate(&MeteredRequest {
            method: &Method::POST,
            path,
            query: None,
            headers: &headers,
            body: body.as_bytes(),
        })
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
    fn updates_and_confirmations_are_metered_when_they_move_an_amount() {
        assert_eq!(
            cost("/v1/payment_intents/pi_1", "amount=500&currency=usd"),
            5_000_000
        );
        assert_eq!(cost("/v1/payment_intents/pi_1", "description=x"), 0);
        assert_eq!(
            cost(
                "/v1/payment_intents/pi_1/confirm",
                "amount_to_confirm=200&currency=usd"
            ),
            2_000_000
        );
        assert_eq!(cost("/v1/payment_intents/pi_1/confirm", ""), 0);
        assert!(estimate("/v1/payment_intents/pi_1", "amount=500").is_err());
    }

    #[test]
    fn reads_and_other_objects_are_free() {
        assert_eq!(cost("/v1/customers", "email=a%40b.c"), 0);
        assert_eq!(cost("/v1/payment_intents/pi_1/cancel", ""), 0);
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
            "amount=10",
            "amount=10&currency=usd&currency=jpy",
            "amount=10&currency=gbp",
            "amount=10&currency[0]=usd",
            "amount=10&%20amount=1000&currency=usd",
        ] {
            assert!(
                estimate("/v1/payment_intents", body).is_err(),
                "{body:?} was metered"
            );
        }
    }

    #[test]
    fn money_moving_routes_without_a_stated_amount_are_refused() {
        assert!(estimate("/v1/invoices/in_1/pay", "").is_err());
        assert!(estimate("/v1/checkout/sessions", "mode=payment").is_err());
    }

    #[test]
    fn amount_details_is_not_a_look_alike() {
        assert_eq!(
            cost(
                "/v1/payment_intents",
                "amount=100&currency=usd&amount_details[tip][amount]=5"
            ),
            1_000_000
        );
    }
}
