//! The model meters' promises as properties:
//! - the usage read from an answer does not depend on how its bytes were cut on the wire (JSON
//!   or server-sent events, `\n` or `\r\n`, any chunk boundaries);
//! - for any chat, Responses or Anthropic request the proxy admits, what the vendor then bills
//!   (the sandbox's `usage`, priced) is at most what the proxy reserved for it.

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};
use vault_key_server::meter::llm::{PriceTable, Usage, UsageFormat, UsageReader};

/// An event an answer may carry: usage in each vendor's shape, and the noise around it.
fn event() -> impl Strategy<Value = Value> {
    let tokens = || 0u64..1_000_000;
    prop_oneof![
        (tokens(), tokens(), tokens()).prop_map(|(p, c, cached)| json!({
            "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
            "prompt_tokens_details": {"cached_tokens": cached}}
        })),
        (tokens(), tokens()).prop_map(|(i, o)| json!({
            "type": "response.completed",
            "response": {"usage": {"input_tokens": i, "output_tokens": o}}
        })),
        (tokens(), tokens()).prop_map(|(i, o)| json!({
            "type": "message_start", "message": {"usage": {"input_tokens": i, "output_tokens": o}}
        })),
        (tokens(), any::<bool>()).prop_map(|(o, stop)| json!({
            "type": "message_delta",
            "delta": {"stop_reason": if stop { json!("end_turn") } else { json!(null) }},
            "usage": {"output_tokens": o}
        })),
        Just(json!({"type": "message_stop"})),
        "[a-zé ]{0,20}".prop_map(|text| json!({"choices": [{"delta": {"content": text}}]})),
    ]
}

/// The answer as a vendor might send it: events as SSE (with `event:` lines, comments and
/// `[DONE]`), or the last event as one JSON body.
fn answer(streamed: bool, events: &[Value], crlf: bool) -> Vec<u8> {
    let newline = if crlf { "\r\n" } else { "\n" };
    if !streamed {
        return events
            .last()
            .map_or(b"{}".to_vec(), |e| e.to_string().into_bytes());
    }
    let mut text = String::new();
    for (i, event) in events.iter().enumerate() {
        if i % 3 == 0 {
            text.push_str(&format!(": keep-alive{newline}"));
        }
        if let Some(kind) = event["type"].as_str() {
            text.push_str(&format!("event: {kind}{newline}"));
        }
        text.push_str(&format!("data: {event}{newline}{newline}"));
    }
    text.push_str(&format!("data: [DONE]{newline}{newline}"));
    text.into_bytes()
}

const FORMATS: [UsageFormat; 4] = [
    UsageFormat::ChatCompletions,
    UsageFormat::Responses,
    UsageFormat::Embeddings,
    UsageFormat::AnthropicMessages,
];

proptest! {
    #[test]
    fn usage_is_read_the_same_however_the_answer_is_cut(
        format in prop::sample::select(FORMATS.to_vec()),
        streamed in any::<bool>(),
        crlf in any::<bool>(),
        events in prop::collection::vec(event(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let answer = answer(streamed, &events, crlf);
        let whole = {
            let mut reader = UsageReader::new(format, streamed);
            reader.feed(&answer);
            reader.finish()
        };
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(answer.len() + 1)).collect();
        cuts.sort_unstable();
        let mut reader = UsageReader::new(format, streamed);
        let mut from = 0;
        for cut in cuts.into_iter().chain([answer.len()]) {
            reader.feed(&answer[from..cut]);
            from = cut;
        }
        prop_assert_eq!(reader.finish(), whole);

        // And what is read is right, for chat completions: the usage of the last event that
        // reports one (the whole answer, when not streamed).
        if format == UsageFormat::ChatCompletions {
            let reporting: Vec<&Value> = if streamed {
                events.iter().filter(|e| e["usage"]["completion_tokens"].is_u64()).collect()
            } else {
                events.last().filter(|e| e["usage"]["completion_tokens"].is_u64()).into_iter().collect()
            };
            let expected = reporting.last().map(|event| {
                let usage = &event["usage"];
                let prompt = usage["prompt_tokens"].as_u64().unwrap();
                let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap().min(prompt);
                Usage {
                    input: prompt - cached,
                    cached_input: cached,
                    cache_write: 0,
                    output: usage["completion_tokens"].as_u64().unwrap(),
                }
            });
            prop_assert_eq!(whole, expected);
        }
    }
}

/// A model request of any shape the meters admit or refuse: any model route, a prompt of words
/// and non-ASCII text, an output limit absent, small or far above the ceiling, several choices,
/// streamed or not, with tools or not — and a vendor that writes as much as it may.
#[derive(Debug, Clone)]
struct ModelCase {
    route: usize,
    messages: Vec<String>,
    limit: Option<u64>,
    n: u64,
    stream: bool,
    tools: bool,
    output_tokens: u64,
}

const ROUTES: [(&str, &str, &str); 3] = [
    ("openai", "/v1/chat/completions", "gpt-4o-mini"),
    ("openai", "/v1/responses", "gpt-4o-mini"),
    ("anthropic", "/v1/messages", "claude-3-5-haiku"),
];

fn model_case() -> impl Strategy<Value = ModelCase> {
    (
        0..ROUTES.len(),
        prop::collection::vec("[a-z]{1,8}( [a-zà-ÿ]{1,8}){0,30}|[一-龥]{1,20}", 1..4),
        prop::option::of(prop_oneof![1u64..200, 1_000u64..1_000_000]),
        1u64..4,
        any::<bool>(),
        any::<bool>(),
        0u64..300_000,
    )
        .prop_map(
            |(route, messages, limit, n, stream, tools, output_tokens)| ModelCase {
                route,
                messages,
                limit,
                n,
                stream,
                tools,
                output_tokens,
            },
        )
}

impl ModelCase {
    fn body(&self) -> Value {
        let (vendor, path, model) = ROUTES[self.route];
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|text| json!({"role": "user", "content": text}))
            .collect();
        let mut body = json!({"model": model, "stream": self.stream});
        let tool = json!({"name": "lookup", "description": "looks up an order",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}});
        match (vendor, path) {
            ("openai", "/v1/chat/completions") => {
                body["messages"] = json!(messages);
                body["n"] = json!(self.n);
                if let Some(limit) = self.limit {
                    body["max_completion_tokens"] = json!(limit);
                }
                if self.tools {
                    body["tools"] = json!([{"type": "function", "function": tool}]);
                }
            }
            ("openai", _) => {
                body["input"] = json!(messages);
                if let Some(limit) = self.limit {
                    body["max_output_tokens"] = json!(limit);
                }
                if self.tools {
                    let mut tool = tool;
                    tool["type"] = json!("function");
                    body["tools"] = json!([tool]);
                }
            }
            _ => {
                body["messages"] = json!(messages);
                if let Some(limit) = self.limit {
                    body["max_tokens"] = json!(limit);
                }
                if self.tools {
                    let mut tool = tool;
                    tool["input_schema"] = tool["parameters"].take();
                    tool.as_object_mut().unwrap().remove("parameters");
                    body["tools"] = json!([tool]);
                }
            }
        }
        body
    }
}

/// What a vendor billed for a JSON answer, read by this test from the answer's `usage` in each
/// vendor's documented shape (not by the meter's reader), each kind of token priced per million
/// and rounded up to the micro-dollar.
fn billed_micros(route: usize, answer: &Value) -> u64 {
    let (vendor, _, model) = ROUTES[route];
    let table = if vendor == "openai" {
        PriceTable::openai()
    } else {
        PriceTable::anthropic()
    };
    let price = table.get(model).unwrap();
    let usage = &answer["usage"];
    let count = |field: &Value| field.as_u64().unwrap_or(0);
    // (full-price input, cached input, cache writes, output)
    let tokens = match route {
        0 => {
            let cached = count(&usage["prompt_tokens_details"]["cached_tokens"]);
            (
                count(&usage["prompt_tokens"]) - cached,
                cached,
                0,
                count(&usage["completion_tokens"]),
            )
        }
        1 => {
            let cached = count(&usage["input_tokens_details"]["cached_tokens"]);
            (
                count(&usage["input_tokens"]) - cached,
                cached,
                0,
                count(&usage["output_tokens"]),
            )
        }
        _ => (
            count(&usage["input_tokens"]),
            count(&usage["cache_read_input_tokens"]),
            count(&usage["cache_creation_input_tokens"]),
            count(&usage["output_tokens"]),
        ),
    };
    let priced = |tokens: u64, per_million: vault_key_wire::Usd| {
        (u128::from(tokens) * u128::from(per_million.micros())).div_ceil(1_000_000) as u64
    };
    priced(tokens.0, price.input)
        + priced(tokens.1, price.cached_input)
        + priced(tokens.2, price.cache_write)
        + priced(tokens.3, price.output)
}

#[test]
fn a_model_call_the_proxy_admits_is_billed_at_most_what_was_reserved() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(start());
    let keys: Vec<Value> = ROUTES
        .iter()
        .map(|(vendor, path, _)| {
            runtime.block_on(issue(&server, model_key(vendor, 100_000.0, &[path])))
        })
        .collect();
    // Per route, each admitted call in order: what the vendor billed, when this test can read
    // it from a JSON answer (streamed answers are left to the meter's own settlement).
    let admitted = std::cell::RefCell::new(vec![Vec::<Option<u64>>::new(); ROUTES.len()]);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&model_case(), |case| {
            let (vendor, path, _) = ROUTES[case.route];
            let key = &keys[case.route];
            let output_tokens = case.output_tokens.to_string();
            let outcome =
                runtime.block_on(async {
                    let response = model_call(
                        &server,
                        vendor,
                        token(key),
                        path,
                        &case.body(),
                        &[("x-sandbox-output-tokens", output_tokens.as_str())],
                    )
                    .send()
                    .await
                    .unwrap();
                    let status = response.status().as_u16();
                    let answer = response.bytes().await.unwrap();
                    if status != 200 {
                        let refusal: Value = serde_json::from_slice(&answer).unwrap();
                        assert_eq!(status, 400, "{refusal}");
                        assert_eq!(refusal["code"], "unmeterable_request", "{refusal}");
                        return None;
                    }
                    Some((!case.stream).then(|| {
                        billed_micros(case.route, &serde_json::from_slice(&answer).unwrap())
                    }))
                });
            if let Some(billed) = outcome {
                admitted.borrow_mut()[case.route].push(billed);
            }
            Ok(())
        })
        .unwrap();
    let admitted = admitted.into_inner();
    let counts: Vec<usize> = admitted.iter().map(Vec::len).collect();
    eprintln!("admitted per route (chat, responses, anthropic): {counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every route admitted some calls: {counts:?}"
    );

    // Every admitted call settled on the usage the vendor reported, at most what it reserved.
    for (key, billed) in keys.iter().zip(&admitted) {
        let admitted = &billed.len();
        let events = runtime.block_on(async {
            let path = format!("/v1/keys/{}/events", key["id"].as_str().unwrap());
            for _ in 0..500 {
                let events = admin_get(&server, &path).await.1["events"].clone();
                let settled = events
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["upstream_status"] == 200 && !e["settled_usd"].is_null())
                    .count();
                if settled == *admitted {
                    return events;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("not every admitted call settled");
        });
        let answered = events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["upstream_status"] == 200);
        for (event, billed) in answered.zip(billed) {
            let (reserved, settled) = (
                micros(&event["reserved_usd"]),
                micros(&event["settled_usd"]),
            );
            assert!(
                settled <= reserved,
                "settled {settled} µ$ above the {reserved} µ$ reserved: {event}"
            );
            if let Some(billed) = *billed {
                assert_eq!(
                    settled, billed,
                    "settled on other usage than the vendor billed: {event}"
                );
                assert!(
                    billed <= reserved,
                    "billed {billed} µ$ above the {reserved} µ$ reserved: {event}"
                );
            }
        }
    }
}
