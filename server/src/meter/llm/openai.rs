//! OpenAI: chat completions, the Responses API and embeddings are metered; reading models and
//! stored completions or responses is free; every other route is refused.

use http::Method;
use serde_json::{Map, Value};

use super::{
    estimate, model_price, output_limit, strict_json_object, types_allowed, PriceTable, Usage,
    UsageFormat,
};
use crate::meter::{Estimate, ForwardRequest, Unmeterable};

/// The most completions one call may ask for (`n`).
const MAX_N: u64 = 128;

/// Content and tool types whose cost is bounded by their bytes.
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
    "reasoning",
    "summary_text",
];

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
    /// client said (a client's `include_usage: false` cannot make a call free).
    pub(in crate::meter) fn prepare(
        &self,
        request: &mut ForwardRequest,
    ) -> Result<(), Unmeterable> {
        if classify(&request.method, &request.path) != Route::ChatCompletions {
            return Ok(());
        }
        let mut body = strict_json_object(request)?;
        if body.get("stream") != Some(&Value::Bool(true)) {
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
        request.body = serde_json::to_vec(&body)
            .map_err(|e| Unmeterable::Refused(format!("the body cannot be rewritten: {e}")))?
            .into();
        Ok(())
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
        if request.query.is_some() {
            return Err(Unmeterable::Refused(
                "a model call takes its parameters from the body only".to_owned(),
            ));
        }
        let body = strict_json_object(request)?;
        let price = model_price(&body, &self.prices)?;
        types_allowed(&Value::Object(body.clone()), TEXT_TYPES)?;
        for field in [
            "audio",
            "web_search_options",
            "previous_response_id",
            "conversation",
        ] {
            if body.contains_key(field) {
                return Err(Unmeterable::Refused(format!(
                    "`{field}` adds tokens or charges that the request does not state; vault-key \
                     cannot cap it"
                )));
            }
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
            .is_some_and(|tier| !matches!(tier.as_str(), Some("auto" | "default" | "flex")))
        {
            return Err(Unmeterable::Refused(
                "a `service_tier` priced above the default is not metered".to_owned(),
            ));
        }
        match route {
            Route::ChatCompletions => {
                let max_output = output_limit(
                    &body,
                    &["max_completion_tokens", "max_tokens"],
                    price,
                    false,
                )?;
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
                    price,
                    UsageFormat::ChatCompletions,
                    max_output,
                    n,
                ))
            }
            Route::Responses => {
                let max_output = output_limit(&body, &["max_output_tokens"], price, false)?;
                Ok(estimate(
                    request,
                    price,
                    UsageFormat::Responses,
                    max_output,
                    1,
                ))
            }
            _ => Ok(estimate(request, price, UsageFormat::Embeddings, 0, 1)),
        }
    }
}

/// Chat-completion (and embedding) usage: `prompt_tokens` (with `cached_tokens` among them) and
/// `completion_tokens`.
pub(super) fn chat_usage(usage: &Value) -> Option<Usage> {
    let prompt = usage.get("prompt_tokens")?.as_u64()?;
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
        .min(prompt);
    Some(Usage {
        input: prompt - cached,
        cached_input: cached,
        cache_write: 0,
        output: usage["completion_tokens"].as_u64().unwrap_or(0),
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
