//! Anthropic: messages are metered (`max_tokens` is required, as it is by Anthropic); counting
//! tokens and reading models is free; every other route is refused.

use serde_json::Value;

use super::{
    estimate, items_inline, model_request, output_limit, parts_inline, pin_output_limit,
    pin_service_tier, rewrite_body, ItemKeys, PriceTable, Usage, UsageFormat,
};
use crate::meter::{Estimate, ForwardRequest, Unmeterable};

/// Content and tool types whose cost is bounded by their bytes (`ephemeral` is a cache marker).
const TEXT_TYPES: &[&str] = &[
    "text",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "enabled",
    "disabled",
    "auto",
    "any",
    "tool",
    "none",
    "ephemeral",
];

/// Message fields whose cost the meter bounds. Not `container` or `mcp_servers` (tools run and
/// billed apart), not `context_management`.
const MESSAGE_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "metadata",
    "service_tier",
    "stop_sequences",
    "stream",
    "system",
    "temperature",
    "thinking",
    "tool_choice",
    "tools",
    "top_k",
    "top_p",
];

/// Keys of a message and its content blocks (text, tool use and results, thinking). Not a
/// document's `source` or `citations`, whose content the vendor fetches or stores.
const MESSAGE_ITEM_KEYS: ItemKeys = ItemKeys {
    item: &["role", "content"],
    part: &[
        "type",
        "text",
        "cache_control",
        "id",
        "name",
        "input",
        "tool_use_id",
        "content",
        "is_error",
        "thinking",
        "signature",
        "data",
    ],
};

/// The Anthropic cost meter.
#[derive(Debug, Clone)]
pub struct AnthropicMeter {
    prices: PriceTable,
}

impl AnthropicMeter {
    /// A meter with these prices.
    pub fn new(prices: PriceTable) -> AnthropicMeter {
        AnthropicMeter { prices }
    }

    /// A message that leaves its service tier to Anthropic (`auto`, the default, may run at the
    /// priority tier) is pinned to the standard tier, the one priced, and its `max_tokens` to
    /// the model's ceiling where it asks for more.
    pub(in crate::meter) fn prepare(
        &self,
        request: &mut ForwardRequest,
    ) -> Result<(), Unmeterable> {
        if !is_messages(request) {
            return Ok(());
        }
        rewrite_body(request, |body| {
            pin_service_tier(body, "standard_only");
            // `max_tokens` is required; a body without it is refused, not given the ceiling.
            if body.contains_key("max_tokens") {
                pin_output_limit(body, &["max_tokens"], &self.prices);
            }
            Ok(())
        })
    }

    pub(in crate::meter) fn estimate(
        &self,
        request: &ForwardRequest,
    ) -> Result<Estimate, Unmeterable> {
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["v1", "messages"]) => {}
            ("POST", ["v1", "messages", "count_tokens"])
            | ("GET", ["v1", "models"] | ["v1", "models", _]) => return Ok(Estimate::FREE),
            _ => {
                return Err(Unmeterable::UnknownRoute(format!(
                    "{} {}",
                    request.method, request.path
                )))
            }
        }
        let (body, price) = model_request(request, &self.prices, MESSAGE_FIELDS, TEXT_TYPES)?;
        items_inline(body.get("messages"), &MESSAGE_ITEM_KEYS)?;
        parts_inline(body.get("system"), MESSAGE_ITEM_KEYS.part)?;
        if body
            .get("service_tier")
            .is_some_and(|tier| tier != "standard_only")
        {
            return Err(Unmeterable::Refused(
                "a `service_tier` other than `standard_only` may be billed above the metered \
                 price"
                    .to_owned(),
            ));
        }
        // A one-hour cache write is billed at twice the input price, above `cache_write`.
        if body.contains_key("ttl") || body.values().any(|v| contains_key(v, "ttl")) {
            return Err(Unmeterable::Refused(
                "a cache `ttl` other than the default is billed above the metered price".to_owned(),
            ));
        }
        let max_output = output_limit(&body, &["max_tokens"], price, true)?;
        Ok(estimate(
            request,
            &body,
            price,
            UsageFormat::AnthropicMessages,
            max_output,
            1,
        ))
    }
}

fn is_messages(request: &ForwardRequest) -> bool {
    request.method == http::Method::POST && request.path == "/v1/messages"
}

fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| contains_key(v, key)),
        Value::Array(items) => items.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// Message usage: `input_tokens`, cache reads and writes, `output_tokens`.
pub(super) fn usage(reported: &Value) -> Option<Usage> {
    let mut usage = Usage {
        input: reported.get("input_tokens")?.as_u64()?,
        ..Usage::default()
    };
    update_usage(&mut usage, reported);
    Some(usage)
}

/// Replaces the counts `reported` gives (a stream's `message_delta` gives cumulative counts,
/// some or all of them).
pub(super) fn update_usage(usage: &mut Usage, reported: &Value) {
    for (field, count) in [
        ("input_tokens", &mut usage.input),
        ("cache_read_input_tokens", &mut usage.cached_input),
        ("cache_creation_input_tokens", &mut usage.cache_write),
        ("output_tokens", &mut usage.output),
    ] {
        if let Some(reported) = reported[field].as_u64() {
            *count = reported;
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::meter::llm::PriceTable;

    fn request(body: &str) -> ForwardRequest {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            "application/json".parse().unwrap(),
        );
        ForwardRequest {
            method: Method::POST,
            path: "/v1/messages".to_owned(),
            query: None,
            headers,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn max_tokens_is_required_and_clamped() {
        let meter = AnthropicMeter::new(PriceTable::anthropic());
        let messages = r#""messages":[{"role":"user","content":"hi"}]"#;
        assert!(meter
            .estimate(&request(&format!(
                r#"{{"model":"claude-3-5-haiku",{messages}}}"#
            )))
            .is_err());
        let huge = request(&format!(
            r#"{{"model":"claude-3-5-haiku","max_tokens":1000000,{messages}}}"#
        ));
        let clamped = request(&format!(
            r#"{{"model":"claude-3-5-haiku","max_tokens":8192,{messages}}}"#
        ));
        // Same body length (the limit's digits aside): the ceiling bounds both.
        let a = meter.estimate(&huge).unwrap().max_cost.micros();
        let b = meter.estimate(&clamped).unwrap().max_cost.micros();
        assert!(a >= b && a - b < 100, "{a} vs {b}");
        let image = request(
            r#"{"model":"claude-3-5-haiku","max_tokens":10,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#,
        );
        assert!(meter.estimate(&image).is_err());
    }
}
