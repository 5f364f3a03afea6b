//! OpenAI: chat completions, the Responses API and embeddings are metered; reading models and
//! stored completions or responses is free; every other route is refused.

use http::Method;
use serde_json::{Map, Value};

use super::{
    estimate, items_inline, model_request, output_limit, pin_output_limit, pin_service_tier,
    rewrite_body, ItemKeys, PriceTable, Usage, UsageFormat,
};
use crate::meter::{Estimate, ForwardRequest, Unmeterable};

/// The most completions one call may ask for (`n`).
const MAX_N: u64 = 128;

/// Content and tool types whose cost is bounded by their bytes. Not `reasoning` items: one
/// passed back by `id` alone brings stored reasoning the request does not show.
const TEXT_TYPES: &[&str] = &[
    "text",
    "input_text",
    "output_text",
    "function",
    "function_call",
    "function_call_output",
    "message",
    "json_schema",
    "json_object",
];

/// Chat-completion fields whose cost the meter bounds. Not `audio` or `web_search_options`
/// (priced apart), not `prediction` (rejected predicted tokens are billed as output beyond the
/// limit).
const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "prompt_cache_key",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
];

/// Responses fields whose cost the meter bounds. Not `previous_response_id`, `conversation` or
/// `prompt` (they bring stored input the request does not show), not `background` (its usage
/// comes later, on another call), not `include` (extra outputs).
const RESPONSES_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "parallel_tool_calls",
    "prompt_cache_key",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
];

/// Keys of a chat message and its content parts. Not an assistant message's `audio` (a
/// reference to audio the vendor stored).
const CHAT_ITEM_KEYS: ItemKeys = ItemKeys {
    item: &[
        "role",
        "content",
        "name",
        "tool_calls",
        "tool_call_id",
        "function_call",
        "refusal",
    ],
    part: &["type", "text"],
};

/// Keys of a Responses input item (a message, a function call or its output) and its content
/// parts.
const RESPONSES_ITEM_KEYS: ItemKeys = ItemKeys {
    item: &[
        "type",
        "role",
        "content",
        "id",
        "status",
        "call_id",
        "name",
        "arguments",
        "output",
    ],
    part: &["type", "text", "annotations", "logprobs"],
};

/// A chat completion's output limit, under its current name first.
const CHAT_LIMITS: &[&str] = &["max_completion_tokens", "max_tokens"];

/// A response's output limit.
const RESPONSES_LIMITS: &[&str] = &["max_output_tokens"];

/// Embedding fields.
const EMBEDDINGS_FIELDS: &[&str] = &["model", "input", "dimensions", "encoding_format", "user"];

/// The OpenAI cost meter.
#[derive(Debug, Clone)]
pub struct OpenAiMeter {
    prices: PriceTable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Free,
    ChatCompletions,
    Responses,
    Embeddings,
    Unknown,
}

fn classify(method: &Method, path: &str) -> Route {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["v1", "chat", "completions"]) => Route::ChatCompletions,
        ("POST", ["v1", "responses"]) => Route::Responses,
        ("POST", ["v1", "embeddings"]) => Route::Embeddings,
        ("GET", ["v1", "models"] | ["v1", "models", _])
        | ("GET", ["v1", "chat", "completions"] | ["v1", "chat", "completions", _])
        | ("GET", ["v1", "chat", "completions", _, "messages"])
        | ("GET", ["v1", "responses", _] | ["v1", "responses", _, "input_items"])
        | ("DELETE", ["v1", "chat", "completions", _] | ["v1", "responses", _])
        | ("POST", ["v1", "responses", _, "cancel"]) => Route::Free,
        _ => Route::Unknown,
    }
}

impl OpenAiMeter {
    /// A meter with these prices.
    pub fn new(prices: PriceTable) -> OpenAiMeter {
        OpenAiMeter { prices }
    }

    /// The prices it meters at.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// A streamed chat completion reports its usage only when asked: the proxy asks, whatever the
    /// client said (a client's `include_usage: false` cannot make a call free). A call that
    /// leaves its service tier to the vendor is pinned to the default tier, the one priced, and
    /// its output limit to the one reserved for.
    pub(in crate::meter) fn prepare(
        &self,
        request: &mut ForwardRequest,
    ) -> Result<(), Unmeterable> {
        let route = classify(&request.method, &request.path);
        if !matches!(route, Route::ChatCompletions | Route::Responses) {
            return Ok(());
        }
        rewrite_body(request, |body| {
            pin_service_tier(body, "default");
            match route {
                Route::ChatCompletions => pin_output_limit(body, CHAT_LIMITS, &self.prices),
                _ => pin_output_limit(body, RESPONSES_LIMITS, &self.prices),
            }
            if route != Route::ChatCompletions || body.get("stream") != Some(&Value::Bool(true)) {
                return Ok(());
            }
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(options) = options else {
                return Err(Unmeterable::Refused(
                    "`stream_options` must be an object".to_owned(),
                ));
            };
            options.insert("include_usage".to_owned(), Value::Bool(true));
            Ok(())
        })
    }

    pub(in crate::meter) fn estimate(
        &self,
        request: &ForwardRequest,
    ) -> Result<Estimate, Unmeterable> {
        let route = classify(&request.method, &request.path);
        match route {
            Route::Free => return Ok(Estimate::FREE),
            Route::Unknown => {
                return Err(Unmeterable::UnknownRoute(format!(
                    "{} {}",
                    request.method, request.path
                )))
            }
            Route::ChatCompletions | Route::Responses | Route::Embeddings => {}
        }
        let fields = match route {
            Route::ChatCompletions => CHAT_FIELDS,
            Route::Responses => RESPONSES_FIELDS,
            _ => EMBEDDINGS_FIELDS,
        };
        let (body, price) = model_request(request, &self.prices, fields, TEXT_TYPES)?;
        match route {
            Route::ChatCompletions => items_inline(body.get("messages"), &CHAT_ITEM_KEYS)?,
            Route::Responses => {
                items_inline(body.get("input"), &RESPONSES_ITEM_KEYS)?;
                items_inline(body.get("instructions"), &RESPONSES_ITEM_KEYS)?;
            }
            _ => {} // embedding inputs are strings or token ids
        }
        if body
            .get("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m != "text"))
        {
            return Err(Unmeterable::Refused(
                "only text output is metered".to_owned(),
            ));
        }
        if body
            .get("service_tier")
            .is_some_and(|tier| !matches!(tier.as_str(), Some("default" | "flex")))
        {
            return Err(Unmeterable::Refused(
                "a `service_tier` priced above the default is not metered".to_owned(),
            ));
        }
        match route {
            Route::ChatCompletions => {
                let max_output = output_limit(&body, CHAT_LIMITS, price, false)?;
                let n = match body.get("n") {
                    None | Some(Value::Null) => 1,
                    Some(n) => n
                        .as_u64()
                        .filter(|n| (1..=MAX_N).contains(n))
                        .ok_or_else(|| {
                            Unmeterable::Refused(format!(
                                "`n` must be a whole number from 1 to {MAX_N}"
                            ))
                        })?,
                };
                Ok(estimate(
                    request,
                    &body,
                    price,
                    UsageFormat::ChatCompletions,
                    max_output,
                    n,
                ))
            }
            Route::Responses => {
                let max_output = output_limit(&body, RESPONSES_LIMITS, price, false)?;
                Ok(estimate(
                    request,
                    &body,
                    price,
                    UsageFormat::Responses,
                    max_output,
                    1,
                ))
            }
            _ => Ok(estimate(
                request,
                &body,
                price,
                UsageFormat::Embeddings,
                0,
                1,
            )),
        }
    }
}

/// Chat-completion usage: `prompt_tokens` (with `cached_tokens` among them) and
/// `completion_tokens`, both required.
pub(super) fn chat_usage(usage: &Value) -> Option<Usage> {
    Some(Usage {
        output: usage.get("completion_tokens")?.as_u64()?,
        ..prompt_usage(usage)?
    })
}

/// Embedding usage: `prompt_tokens` only.
pub(super) fn embeddings_usage(usage: &Value) -> Option<Usage> {
    prompt_usage(usage)
}

/// `prompt_tokens`, with `cached_tokens` among them.
fn prompt_usage(usage: &Value) -> Option<Usage> {
    let prompt = usage.get("prompt_tokens")?.as_u64()?;
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
        .min(prompt);
    Some(Usage {
        input: prompt - cached,
        cached_input: cached,
        cache_write: 0,
        output: 0,
    })
}

/// Responses usage: `input_tokens` (with `cached_tokens` among them) and `output_tokens`.
pub(super) fn responses_usage(usage: &Value) -> Option<Usage> {
    let input = usage.get("input_tokens")?.as_u64()?;
    let cached = usage["input_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
        .min(input);
    Some(Usage {
        input: input - cached,
        cached_input: cached,
        cache_write: 0,
        output: usage.get("output_tokens")?.as_u64()?,
    })
}
