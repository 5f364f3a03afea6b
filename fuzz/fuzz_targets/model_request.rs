//! The OpenAI and Anthropic meters on any JSON body. Input: a route byte, then the body.
//!
//! Invariants: no panic; preparing a request twice changes nothing the second time (what is
//! judged is what is forwarded); an accepted model call reserves at least every byte of its
//! forwarded body as an input token plus the output limit the forwarded body states, for each
//! of its `n` choices.

#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vault_key_fuzz::{choose, forward_request};
use vault_key_server::meter::llm::Usage;
use vault_key_server::meter::{AnthropicMeter, Meter, OpenAiMeter, PriceTable};

const ROUTES: &[(&str, &str)] = &[
    ("openai", "/v1/chat/completions"),
    ("openai", "/v1/responses"),
    ("openai", "/v1/embeddings"),
    ("anthropic", "/v1/messages"),
    ("anthropic", "/v1/messages/count_tokens"),
];

const OUTPUT_LIMITS: &[&str] = &["max_tokens", "max_completion_tokens", "max_output_tokens"];

fuzz_target!(|data: &[u8]| {
    let Some((&(vendor, path), body)) = choose(data, ROUTES) else {
        return;
    };
    let meter = match vendor {
        "openai" => Meter::OpenAi(OpenAiMeter::new(PriceTable::openai())),
        _ => Meter::Anthropic(AnthropicMeter::new(PriceTable::anthropic())),
    };
    let mut request = forward_request(Method::POST, path, Some("application/json"), body);
    if meter.prepare(&mut request).is_err() {
        return;
    }
    let mut again = request.clone();
    meter
        .prepare(&mut again)
        .expect("a prepared request prepares again");
    assert_eq!(again.body, request.body, "preparing twice changed the body");

    let Ok(estimate) = meter.estimate(&request) else {
        return;
    };
    let Some(model) = &estimate.model else {
        return; // a free route
    };
    let forwarded: Value = serde_json::from_slice(&request.body).expect("an accepted body is JSON");
    // The largest output limit the forwarded body states, for each of its `n` choices.
    let per_choice = OUTPUT_LIMITS
        .iter()
        .filter_map(|limit| forwarded.get(limit).and_then(Value::as_u64))
        .max()
        .unwrap_or(0);
    let choices = forwarded.get("n").and_then(Value::as_u64).unwrap_or(1);
    let output = per_choice.saturating_mul(choices);
    let floor = Usage {
        input: request.body.len() as u64,
        output,
        ..Usage::default()
    }
    .cost(&model.price);
    assert!(
        estimate.max_cost >= floor,
        "reserved {} below {floor} for {} bytes and {output} output tokens",
        estimate.max_cost,
        request.body.len()
    );
});
