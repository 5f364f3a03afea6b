//! Anthropic: messages are metered (`max_tokens` is required, as it is by Anthropic); counting
//! tokens and reading models is free; every other route is refused.

use serde_json::Value;

use super::{
    estimate, model_price, output_limit, strict_json_object, types_allowed, PriceTable, Usage,
    UsageFormat,
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
        if request.query.is_some() {
            return Err(Unmeterable::Refused(
                "a model call takes its parameters from the body only".to_owned(),
            ));
        }
        let body = strict_json_object(request)?;
        let price = model_price(&body, &self.prices)?;
        types_allowed(&Value::Object(body.clone()), TEXT_TYPES)?;
        // A one-hour cache write is billed at twice the input price, above `cache_write`.
        if contains_key(&Value::Object(body.clone()), "ttl") {
            return Err(Unmeterable::Refused(
                "a cache `ttl` other than the default is billed above the metered price".to_owned(),
            ));
        }
        let max_output = output_limit(&body, &["max_tokens"], price, true)?;
        Ok(estimate(
            request,
            price,
            UsageFormat::AnthropicMessages,
            max_output,
            1,
        ))
    }
}

fn contains_key(value: &Value, key: &str) -> bool {
    match value {
        Value::Object(map) => map.contains_key(key) || map.values().any(|v| contains_key(v, key)),
        Value::Array(items) => items.iter().any(|v| contains_key(v, key)),
        _ => false,
    }
}

/// Message usage: `input_tokens`, cache reads and writes, `output_tokens`.
pub(super) fn usage(usage: &Value) -> Option<Usage> {
    Some(Usage {
        input: usage.get("input_tokens")?.as_u64()?,
        cached_input: usage["cache_read_input_tokens"].as_u64().unwrap_or(0),
        cache_write: usage["cache_creation_input_tokens"].as_u64().unwrap_or(0),
        output: usage["output_tokens"].as_u64().unwrap_or(0),
    })
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
