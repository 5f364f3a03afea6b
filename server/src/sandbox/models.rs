//! Stand-ins for OpenAI (`/openai`: chat completions, Responses, embeddings, models) and
//! Anthropic (`/anthropic`: messages, token counting, models), in their wire formats, JSON and
//! server-sent events alike.
//!
//! Usage follows from the request, so tests can predict it: a prompt costs one token per
//! whitespace-separated word of its text, and each completion produces
//! `x-sandbox-output-tokens` tokens (default 8), never more than the request's output limit.
//! Knobs, which the real vendors ignore: `x-sandbox-cached-tokens` (prompt tokens reported as
//! read from the cache), `x-sandbox-chunk-delay-ms` (pause between streamed events, so tests see
//! tokens arrive before the end), `x-sandbox-cut-after` (break the stream after that many events),
//! `x-sandbox-omit-usage` (answer without `usage`, as a vendor might), `x-sandbox-input-tokens`
//! (report that many input tokens, as a vendor billing beyond the request's bytes would), `x-sandbox-refuse: 429`
//! (or another 4xx/5xx: answer that status in the vendor's error format, generating nothing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::vendor::SANDBOX_SECRET;

/// Which vendor's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ModelVendor {
    OpenAi,
    Anthropic,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id(prefix: &str) -> String {
    format!(
        "{prefix}_sandbox{}",
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

/// Words of every string under `value`: the sandbox's token count.
fn words(value: &Value) -> u64 {
    match value {
        Value::String(text) => text.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(words).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| !matches!(key.as_str(), "type" | "role"))
            .map(|(_, v)| words(v))
            .sum(),
        _ => 0,
    }
}

fn error(vendor: ModelVendor, status: StatusCode, kind: &str, message: &str) -> Response {
    let body = match vendor {
        ModelVendor::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        ModelVendor::Anthropic => {
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    (status, Json(body)).into_response()
}

/// Answers a request to `path` (below `/openai` or `/anthropic`).
pub(super) async fn answer(
    vendor: ModelVendor,
    parts: &Parts,
    path: &str,
    body: &[u8],
) -> Response {
    let authorized = match vendor {
        ModelVendor::OpenAi => parts
            .headers
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == format!("Bearer {SANDBOX_SECRET}").as_bytes()),
        ModelVendor::Anthropic => {
            parts
                .headers
                .get("x-api-key")
                .is_some_and(|v| v.as_bytes() == SANDBOX_SECRET.as_bytes())
                && !parts.headers.contains_key(http::header::AUTHORIZATION)
        }
    };
    if !authorized {
        let kind = match vendor {
            ModelVendor::OpenAi => "invalid_request_error",
            ModelVendor::Anthropic => "authentication_error",
        };
        return error(
            vendor,
            StatusCode::UNAUTHORIZED,
            kind,
            "Incorrect API key provided.",
        );
    }
    if let Some(status) = parts
        .headers
        .get("x-sandbox-refuse")
        .and_then(|v| StatusCode::from_bytes(v.as_bytes()).ok())
        .filter(|s| s.is_client_error() || s.is_server_error())
    {
        let kind = match (vendor, status.is_server_error()) {
            (ModelVendor::OpenAi, true) => "server_error",
            (ModelVendor::Anthropic, true) => "api_error",
            (_, false) => "rate_limit_error",
        };
        return error(vendor, status, kind, "Refused before generating (sandbox).");
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (parts.method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "models"]) => {
            let models = match vendor {
                ModelVendor::OpenAi => json!({"object": "list", "data": [
                    {"id": "gpt-4o-mini", "object": "model", "created": 1_721_172_741, "owned_by": "system"},
                    {"id": "gpt-4o", "object": "model", "created": 1_715_367_049, "owned_by": "system"},
                ]}),
                ModelVendor::Anthropic => json!({"data": [
                    {"type": "model", "id": "claude-3-5-haiku", "display_name": "Claude Haiku 3.5", "created_at": "2024-10-22T00:00:00Z"},
                ], "has_more": false, "first_id": "claude-3-5-haiku", "last_id": "claude-3-5-haiku"}),
            };
            return Json(models).into_response();
        }
        ("POST", _) => {}
        _ => {
            return error(
                vendor,
                StatusCode::NOT_FOUND,
                "not_found_error",
                &format!("Unknown route {} {path}", parts.method),
            )
        }
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(
            vendor,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "We could not parse the JSON body of your request.",
        );
    };
    let call = Call::new(&request, &parts.headers);
    let mut response = match (vendor, segments.as_slice()) {
        (ModelVendor::OpenAi, ["v1", "chat", "completions"]) => chat(&call, &request),
        (ModelVendor::OpenAi, ["v1", "responses"]) => responses(&call, &request),
        (ModelVendor::OpenAi, ["v1", "embeddings"]) => embeddings(&call, &request),
        (ModelVendor::Anthropic, ["v1", "messages"]) => messages(&call, &request),
        (ModelVendor::Anthropic, ["v1", "messages", "count_tokens"]) => {
            Json(json!({"input_tokens": words(&request["messages"])})).into_response()
        }
        _ => error(
            vendor,
            StatusCode::NOT_FOUND,
            "not_found_error",
            &format!("Unknown route POST {path}"),
        ),
    };
    if parts.headers.contains_key("x-sandbox-omit-usage") && !call.stream {
        response = without_usage(response).await;
    }
    response
}

/// The JSON answer with its `usage` removed.
async fn without_usage(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 24)
        .await
        .unwrap_or_default();
    let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.remove("usage");
    }
    let mut response = Json(value).into_response();
    *response.status_mut() = parts.status;
    response
}

/// What one call produces, from its request and the sandbox's knobs.
struct Call {
    model: String,
    stream: bool,
    limit: Option<u64>,
    output_per_choice: u64,
    cached: u64,
    /// Input tokens to report instead of the words counted (a vendor billing more than the
    /// request's bytes bound).
    input_tokens: Option<u64>,
    chunk_delay: Duration,
    cut_after: Option<u64>,
}

impl Call {
    fn new(request: &Value, headers: &HeaderMap) -> Call {
        let limit = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
            .iter()
            .find_map(|name| request[*name].as_u64());
        let wanted = header_u64(headers, "x-sandbox-output-tokens").unwrap_or(8);
        Call {
            model: request["model"].as_str().unwrap_or("unknown").to_owned(),
            stream: request["stream"] == true,
            limit,
            output_per_choice: limit.map_or(wanted, |limit| wanted.min(limit)),
            cached: header_u64(headers, "x-sandbox-cached-tokens").unwrap_or(0),
            input_tokens: header_u64(headers, "x-sandbox-input-tokens"),
            chunk_delay: Duration::from_millis(
                header_u64(headers, "x-sandbox-chunk-delay-ms")
                    .unwrap_or(0)
                    .min(5_000),
            ),
            cut_after: header_u64(headers, "x-sandbox-cut-after"),
        }
    }

    /// The input tokens to report for a prompt of `counted` tokens.
    fn input(&self, counted: u64) -> u64 {
        self.input_tokens.unwrap_or(counted)
    }

    fn stopped_by_limit(&self) -> bool {
        self.limit == Some(self.output_per_choice)
    }

    fn text(&self) -> String {
        "tok ".repeat(usize::try_from(self.output_per_choice).unwrap_or(0))
    }

    /// Server-sent events, paced and possibly cut short as the knobs say.
    fn events(&self, events: Vec<String>) -> Response {
        let delay = self.chunk_delay;
        let cut_after = self.cut_after;
        let stream = futures_util::stream::unfold(
            (events.into_iter(), 0u64),
            move |(mut events, sent)| async move {
                if sent == u64::MAX {
                    return None;
                }
                if cut_after.is_some_and(|cut| sent >= cut) {
                    let broken =
                        std::io::Error::new(std::io::ErrorKind::BrokenPipe, "cut (sandbox)");
                    return Some((Err(broken), (events, u64::MAX)));
                }
                let event = events.next()?;
                if sent > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Some((
                    Ok::<_, std::io::Error>(Bytes::from(event)),
                    (events, sent + 1),
                ))
            },
        );
        let mut response = Response::new(Body::from_stream(stream));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        response
    }
}

/// The tier an OpenAI call ran at: the one it asked for, the default otherwise.
fn service_tier(request: &Value) -> &str {
    match request["service_tier"].as_str() {
        None | Some("auto") => "default",
        Some(tier) => tier,
    }
}

fn data(event: &Value) -> String {
    format!("data: {event}\n\n")
}

fn named(name: &str, event: &Value) -> String {
    format!("event: {name}\ndata: {event}\n\n")
}

fn chat(call: &Call, request: &Value) -> Response {
    let n = request["n"].as_u64().unwrap_or(1);
    let prompt = call.input(words(&request["messages"]));
    let cached = call.cached.min(prompt);
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": call.output_per_choice * n,
        "total_tokens": prompt + call.output_per_choice * n,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    });
    let id = next_id("chatcmpl");
    let created = time::OffsetDateTime::now_utc().unix_timestamp();
    let finish = if call.stopped_by_limit() {
        "length"
    } else {
        "stop"
    };
    if !call.stream {
        let choices: Vec<Value> = (0..n)
            .map(|index| {
                json!({
                    "index": index,
                    "message": {"role": "assistant", "content": call.text(), "refusal": null},
                    "logprobs": null,
                    "finish_reason": finish,
                })
            })
            .collect();
        return Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": call.model,
            "choices": choices, "usage": usage, "system_fingerprint": "fp_sandbox",
            "service_tier": service_tier(request),
        }))
        .into_response();
    }
    let include_usage = request["stream_options"]["include_usage"] == true;
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": call.model,
            "system_fingerprint": "fp_sandbox", "choices": choices,
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let mut events = Vec::new();
    for index in 0..n {
        events.push(data(&chunk(json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]))));
        for _ in 0..call.output_per_choice {
            events.push(data(&chunk(json!([{"index": index, "delta": {"content": "tok "}, "logprobs": null, "finish_reason": null}]))));
        }
        events.push(data(&chunk(
            json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": finish}]),
        )));
    }
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(data(&last));
    }
    events.push("data: [DONE]\n\n".to_owned());
    call.events(events)
}

fn responses(call: &Call, request: &Value) -> Response {
    let input = call.input(words(&request["input"]) + words(&request["instructions"]));
    let cached = call.cached.min(input);
    let usage = json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": call.output_per_choice,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + call.output_per_choice,
    });
    let id = next_id("resp");
    let message = json!({
        "type": "message", "id": next_id("msg"), "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": call.text(), "annotations": []}],
    });
    // A response stopped by `max_output_tokens` ends incomplete, as OpenAI's do.
    let (end, incomplete) = if call.stopped_by_limit() {
        ("incomplete", json!({"reason": "max_output_tokens"}))
    } else {
        ("completed", Value::Null)
    };
    let tier = service_tier(request);
    let response = |status: &str, output: Value, usage: Value| {
        let incomplete = if status == "incomplete" {
            incomplete.clone()
        } else {
            Value::Null
        };
        json!({
            "id": id, "object": "response", "created_at": time::OffsetDateTime::now_utc().unix_timestamp(),
            "status": status, "model": call.model, "output": output, "usage": usage,
            "error": null, "incomplete_details": incomplete, "parallel_tool_calls": true, "tools": [],
            "tool_choice": "auto", "temperature": 1.0, "top_p": 1.0, "metadata": {},
            "service_tier": tier,
        })
    };
    if !call.stream {
        return Json(response(end, json!([message]), usage)).into_response();
    }
    let mut events = vec![named(
        "response.created",
        &json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)}),
    )];
    for _ in 0..call.output_per_choice {
        events.push(named(
            "response.output_text.delta",
            &json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "tok "}),
        ));
    }
    let event = format!("response.{end}");
    events.push(named(
        &event,
        &json!({"type": event, "response": response(end, json!([message]), usage)}),
    ));
    call.events(events)
}

fn embeddings(call: &Call, request: &Value) -> Response {
    let inputs = match &request["input"] {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let tokens = words(&request["input"]);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, _)| json!({"object": "embedding", "index": index, "embedding": [0.25, -0.5, 0.125, 1.0]}))
        .collect();
    Json(json!({
        "object": "list", "data": data, "model": call.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// The tokens of Anthropic's tool-use system prompt (Claude 4, `tool_choice` auto, as documented).
const ANTHROPIC_TOOL_PROMPT_TOKENS: u64 = 346;

fn messages(call: &Call, request: &Value) -> Response {
    if call.limit.is_none() {
        return error(
            ModelVendor::Anthropic,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "max_tokens: Field required",
        );
    }
    // Tools bring Anthropic's own tool-use system prompt, which the request does not show.
    let tool_prompt = if request["tools"].is_array() {
        ANTHROPIC_TOOL_PROMPT_TOKENS
    } else {
        0
    };
    let input = call.input(words(&request["messages"]) + words(&request["system"]) + tool_prompt);
    let cached = call.cached.min(input);
    let stop = if call.stopped_by_limit() {
        "max_tokens"
    } else {
        "end_turn"
    };
    let id = next_id("msg");
    let usage = |output: u64| {
        json!({
            "input_tokens": input - cached, "output_tokens": output,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached,
            "service_tier": "standard",
        })
    };
    if !call.stream {
        return Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": call.model,
            "content": [{"type": "text", "text": call.text()}],
            "stop_reason": stop, "stop_sequence": null, "usage": usage(call.output_per_choice),
        }))
        .into_response();
    }
    let mut events = vec![
        named(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": call.model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage(1),
            }}),
        ),
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for _ in 0..call.output_per_choice {
        events.push(named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok "}}),
        ));
    }
    events.push(named(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": call.output_per_choice}}),
    ));
    events.push(named("message_stop", &json!({"type": "message_stop"})));
    call.events(events)
}
