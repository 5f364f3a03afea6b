//! The Stripe meter on any form body, on the routes that move money and their neighbours.
//! Input: a route byte, then the body.
//!
//! Invariants: no panic; the same request always gets the same answer; a request that creates
//! an object reserves at least the object's amount; what a successful call settles to is what
//! it reserved, whatever the vendor answered.

#![no_main]

use std::collections::HashMap;

use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use vault_key_fuzz::{choose, forward_request};
use vault_key_server::meter::{Meter, StripeMeter};
use vault_key_wire::Usd;

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/payment_intents"),
    ("POST", "/v1/payment_intents/pi_1"),
    ("POST", "/v1/payment_intents/pi_1/confirm"),
    ("POST", "/v1/payment_intents/pi_1/capture"),
    ("POST", "/v1/payment_intents/pi_1/increment_authorization"),
    ("POST", "/v1/charges"),
    ("POST", "/v1/charges/ch_1/capture"),
    ("POST", "/v1/refunds"),
    ("POST", "/v1/transfers"),
    ("POST", "/v1/payouts"),
    ("POST", "/v1/topups"),
    ("POST", "/v1/invoices"),
    ("POST", "/v1/checkout/sessions"),
    ("POST", "/v1/subscriptions"),
    ("POST", "/v1/customers"),
    ("GET", "/v1/payment_intents"),
    ("DELETE", "/v1/customers/cus_1"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&(method, path), body)) = choose(data, ROUTES) else {
        return;
    };
    let meter = Meter::Stripe(StripeMeter::new(HashMap::from([(
        "eur".to_owned(),
        "1.10".parse::<Usd>().unwrap(),
    )])));
    let request = forward_request(
        Method::from_bytes(method.as_bytes()).unwrap(),
        path,
        Some("application/x-www-form-urlencoded"),
        body,
    );
    let first = meter.estimate(&request);
    let second = meter.estimate(&request);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a.max_cost, b.max_cost),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("the same request was judged twice differently"),
    }
    let Ok(estimate) = first else {
        return;
    };
    if let Some(new) = &estimate.creates {
        // Micro-dollars per minor unit: a cent is 10,000; a euro cent at $1.10 is 11,000.
        let rate = match new.currency.as_str() {
            "usd" => Some(10_000u128),
            "eur" => Some(11_000),
            _ => None,
        };
        if let Some(rate) = rate {
            // An amount worth more than any cap may reserve "more than any cap" (Usd::MAX and
            // a micro-dollar) instead of its full value: refused all the same.
            let above_any_cap = estimate.max_cost > Usd::MAX;
            assert!(
                above_any_cap
                    || u128::from(estimate.max_cost.micros()) >= u128::from(new.amount) * rate,
                "reserved {} for {} {}",
                estimate.max_cost,
                new.amount,
                new.currency
            );
        }
    }
    let settled = meter.settle(&estimate, estimate.max_cost, StatusCode::OK, body);
    assert_eq!(settled.cost, estimate.max_cost);
    let refused = meter.settle(
        &estimate,
        estimate.max_cost,
        StatusCode::PAYMENT_REQUIRED,
        body,
    );
    assert_eq!(refused.cost, Usd::ZERO);
});
