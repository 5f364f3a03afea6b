//! Model vendors (OpenAI, Anthropic): tokens × a per-model price.
//!
//! A call reserves the most it can cost — every byte of its body counted as an input token (a
//! token is never shorter than a byte), plus its output ceiling (`max_tokens`, or the model's own
//! ceiling where absent, clamped to it), times `n` — and settles on the `usage` the vendor reports,
//! in a JSON answer or in the events of a stream, read as they pass without holding the stream
//! back. A stream that ends before its usage keeps its reservation.
//!
//! Request bodies are read strictly: a duplicated key anywhere, or two ways of saying the output
//! limit, is refused rather than guessed at; content the meter cannot count from its bytes
//! (images, audio, files) is refused too.

mod anthropic;
mod openai;
mod prices;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use vault_key_wire::Usd;

pub use anthropic::AnthropicMeter;
pub use openai::OpenAiMeter;
pub use prices::{ModelPrice, PriceTable, PRICES_AS_OF};

use super::{Estimate, ForwardRequest, Unmeterable};

/// Tokens of one call, by how they are priced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens at the full input price.
    pub input: u64,
    /// Input tokens read from the vendor's prompt cache.
    pub cached_input: u64,
    /// Input tokens written to the vendor's prompt cache.
    pub cache_write: u64,
    /// Output tokens (reasoning included).
    pub output: u64,
}

impl Usage {
    /// What these tokens cost at `price`.
    pub fn cost(&self, price: &ModelPrice) -> Usd {
        per_million(self.input, price.input)
            .saturating_add(per_million(self.cached_input, price.cached_input))
            .saturating_add(per_million(self.cache_write, price.cache_write))
            .saturating_add(per_million(self.output, price.output))
    }
}

/// `tokens` at `price` per million tokens, rounded up to the micro-dollar.
fn per_million(tokens: u64, price: Usd) -> Usd {
    let micros = (u128::from(tokens) * u128::from(price.micros())).div_ceil(1_000_000);
    Usd::from_micros(
        u64::try_from(micros)
            .unwrap_or(u64::MAX)
            .min(Usd::MAX.micros() + 1),
    )
}

/// Where a call's usage is reported, and so how its answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFormat {
    /// OpenAI chat completions: `usage` in the JSON answer, or in the last chunk of a stream
    /// (which the proxy asks for with `stream_options.include_usage`).
    ChatCompletions,
    /// OpenAI Responses: `usage` in the answer, or in the `response.completed` event.
    Responses,
    /// OpenAI embeddings: `usage.prompt_tokens`.
    Embeddings,
    /// Anthropic messages: `usage` in the answer, or in `message_start` (input) and
    /// `message_delta` (output so far) events.
    AnthropicMessages,
}

/// A metered model call: its model's price and how to read its usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCall {
    /// The price of the model named in the request.
    pub price: ModelPrice,
    /// Where its usage will be.
    pub format: UsageFormat,
}

impl ModelCall {
    /// What the call cost, from the vendor's status and the usage its answer reported: nothing
    /// for a refused call, the usage's price (in full, even above the reservation) otherwise, and
    /// `None` — keep the reservation — when a successful answer reported no usage (a stream cut
    /// short, a background response).
    pub fn settle(&self, status: http::StatusCode, usage: Option<Usage>) -> Option<Usd> {
        if !status.is_success() {
            return Some(Usd::ZERO);
        }
        usage.map(|usage| usage.cost(&self.price))
    }
}

/// Reads usage out of an answer as its bytes pass: a JSON body, or server-sent events.
#[derive(Debug)]
pub struct UsageReader {
    format: UsageFormat,
    /// The answer so far, for a JSON body; the current unfinished line, for a stream.
    pending: Vec<u8>,
    streamed: bool,
    /// Usage final for the call (a stream's is only once its last event says so).
    usage: Option<Usage>,
    /// An Anthropic stream's usage so far, final at `message_stop`.
    partial: Option<Usage>,
    /// An Anthropic stream gave its stop reason.
    stopped: bool,
    overflowed: bool,
}

/// Longest JSON answer or single event line read for usage; past it the usage is unknown (and
/// the reservation stays).
const MAX_READ: usize = 4 << 20;

impl UsageReader {
    /// A reader for an answer in `format`; `streamed` when it is `text/event-stream`.
    pub fn new(format: UsageFormat, streamed: bool) -> UsageReader {
        UsageReader {
            format,
            pending: Vec::new(),
            streamed,
            usage: None,
            partial: None,
            stopped: false,
            overflowed: false,
        }
    }

    /// The next bytes of the answer.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        if !self.streamed {
            if self.pending.len() + chunk.len() > MAX_READ {
                self.overflowed = true;
                self.pending = Vec::new();
            } else {
                self.pending.extend_from_slice(chunk);
            }
            return;
        }
        for &byte in chunk {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.pending);
                self.event_line(&line);
            } else if self.pending.len() < MAX_READ {
                self.pending.push(byte);
            } else {
                self.overflowed = true;
                return;
            }
        }
    }

    fn event_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(event) = serde_json::from_slice::<Value>(data.trim_ascii_start()) else {
            return; // `[DONE]`, or not JSON
        };
        match self.format {
            UsageFormat::ChatCompletions => {
                if let Some(usage) = event.get("usage").and_then(openai::chat_usage) {
                    self.usage = Some(usage);
                }
            }
            UsageFormat::Embeddings => {} // never streamed
            UsageFormat::Responses => {
                // A response ends completed, incomplete (at `max_output_tokens`) or failed; each
                // reports what it used.
                if matches!(
                    event["type"].as_str(),
                    Some("response.completed" | "response.incomplete" | "response.failed")
                ) {
                    self.usage = openai::responses_usage(&event["response"]["usage"]);
                }
            }
            UsageFormat::AnthropicMessages => match event["type"].as_str() {
                Some("message_start") => {
                    self.partial = anthropic::usage(&event["message"]["usage"]);
                }
                Some("message_delta") => {
                    // Counts here are cumulative, and replace those of `message_start`.
                    if let Some(usage) = self.partial.as_mut() {
                        anthropic::update_usage(usage, &event["usage"]);
                    }
                    self.stopped |= event["delta"]["stop_reason"].is_string();
                }
                // Until the message stops (a `message_delta` with its stop reason, then
                // `message_stop`), its output may still grow: a stream cut before then keeps its
                // reservation.
                Some("message_stop") if self.stopped => self.usage = self.partial,
                _ => {}
            },
        }
    }

    /// The usage the whole answer reported, if it did.
    pub fn finish(mut self) -> Option<Usage> {
        if self.overflowed {
            return None;
        }
        if self.streamed {
            let line = std::mem::take(&mut self.pending);
            self.event_line(&line);
            return self.usage;
        }
        let answer: Value = serde_json::from_slice(&self.pending).ok()?;
        match self.format {
            UsageFormat::ChatCompletions => openai::chat_usage(answer.get("usage")?),
            UsageFormat::Embeddings => openai::embeddings_usage(answer.get("usage")?),
            UsageFormat::Responses => openai::responses_usage(answer.get("usage")?),
            UsageFormat::AnthropicMessages => anthropic::usage(answer.get("usage")?),
        }
    }
}

/// A JSON request body parsed strictly: an object, with no key given twice at any depth.
pub(super) fn strict_json_object(
    request: &ForwardRequest,
) -> Result<Map<String, Value>, Unmeterable> {
    let refuse = |why: String| Unmeterable::Refused(why);
    if request
        .headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(refuse(
            "a model request body must not be compressed".to_owned(),
        ));
    }
    let mut types = request.headers.get_all(http::header::CONTENT_TYPE).iter();
    let is_json = match (types.next().and_then(|v| v.to_str().ok()), types.next()) {
        (Some(content_type), None) => content_type
            .split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json")),
        _ => false,
    };
    if !is_json {
        return Err(refuse(
            "a model request must have one Content-Type, application/json".to_owned(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(&request.body);
    let Strict(value) = Strict::deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| {
            refuse(format!(
                "the body is not JSON vault-key can read with certainty: {e}"
            ))
        })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(refuse("the body must be a JSON object".to_owned())),
    }
}

/// A JSON value whose objects never repeat a key (a vendor's parser might keep either copy).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key `{key}` is given twice"
                )));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The output limit a request states under `names` (at most one of them), clamped to the model's
/// ceiling; the ceiling itself when none is given (or `required` names the one that must be).
pub(super) fn output_limit(
    body: &Map<String, Value>,
    names: &[&str],
    price: &ModelPrice,
    required: bool,
) -> Result<u64, Unmeterable> {
    let mut given = names.iter().filter(|name| body.contains_key(**name));
    let limit = match (given.next(), given.next()) {
        (Some(a), Some(b)) => {
            return Err(Unmeterable::Refused(format!(
                "the body gives both `{a}` and `{b}`; give one output limit"
            )))
        }
        (Some(name), None) => match body[*name].as_u64() {
            Some(limit) if limit > 0 => limit,
            _ => {
                return Err(Unmeterable::Refused(format!(
                    "`{name}` must be a positive whole number of tokens"
                )))
            }
        },
        (None, _) if required => {
            return Err(Unmeterable::Refused(format!(
                "the body must give `{}`: without it the cost has no bound",
                names[0]
            )))
        }
        (None, _) => price.max_output_tokens,
    };
    Ok(limit.min(price.max_output_tokens))
}

/// Writes the output limit the call is reserved for into the body, so that the vendor stops
/// where the reservation does: a stated limit above the model's ceiling comes down to it, and
/// a body without one gets the ceiling under `names[0]`. Without this, a ceiling an operator
/// set below the vendor's own would bound the reservation but not the bill. A body whose model
/// or limit is not understood is left for [`output_limit`] to refuse.
pub(super) fn pin_output_limit(body: &mut Map<String, Value>, names: &[&str], prices: &PriceTable) {
    let Ok(price) = model_price(body, prices) else {
        return;
    };
    let Ok(limit) = output_limit(body, names, price, false) else {
        return;
    };
    let name = names
        .iter()
        .find(|name| body.contains_key(**name))
        .unwrap_or(&names[0]);
    body.insert((*name).to_owned(), Value::from(limit));
}

/// JSON-schema `type`s, which tool definitions carry.
const SCHEMA_TYPES: &[&str] = &[
    "object", "string", "number", "integer", "boolean", "array", "null",
];

/// Every string-valued `type` anywhere in the body must be one whose cost its bytes bound: text,
/// tool calls, schemas. Images, audio, files and the vendor's own tools (web search, code
/// execution, …) cost what the request does not state, and unknown types are refused with them.
fn types_allowed(value: &Value, allowed: &[&str]) -> Result<(), Unmeterable> {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(kind)) = map.get("type") {
                if !allowed.contains(&kind.as_str()) && !SCHEMA_TYPES.contains(&kind.as_str()) {
                    return Err(Unmeterable::Refused(format!(
                        "content or tools of type `{kind}` cost what the request does not state; \
                         vault-key meters text and function tools"
                    )));
                }
            }
            map.values().try_for_each(|v| types_allowed(v, allowed))
        }
        Value::Array(items) => items.iter().try_for_each(|v| types_allowed(v, allowed)),
        _ => Ok(()),
    }
}

/// Input tokens a call with tools is charged beyond its bytes: both vendors render tool
/// definitions into a system prompt of their own (Anthropic documents 313 to 530 tokens of it,
/// per model and `tool_choice`), which the request's bytes do not bound.
const TOOL_PROMPT_TOKENS: u64 = 1_000;

/// The estimate of a model call: every body byte as an input token at the dearest input price
/// (a cache write, where dearer), plus the vendor's tool prompt where the call has tools, plus
/// `max_output` output tokens, times `n`.
pub(super) fn estimate(
    request: &ForwardRequest,
    body: &Map<String, Value>,
    price: &ModelPrice,
    format: UsageFormat,
    max_output: u64,
    n: u64,
) -> Estimate {
    let has_tools = ["tools", "functions"]
        .iter()
        .any(|field| body.get(*field).is_some_and(|tools| tools != &Value::Null));
    let hidden = if has_tools { TOOL_PROMPT_TOKENS } else { 0 };
    let input_bound = u64::try_from(request.body.len())
        .unwrap_or(u64::MAX)
        .saturating_add(hidden);
    let one = Usage {
        input: 0,
        cached_input: 0,
        cache_write: input_bound,
        output: max_output,
    };
    let dearest_input = ModelPrice {
        cache_write: price.cache_write.max(price.input),
        ..price.clone()
    };
    let single = one.cost(&dearest_input);
    Estimate {
        max_cost: Usd::from_micros(single.micros().saturating_mul(n).min(Usd::MAX.micros() + 1)),
        model: Some(ModelCall {
            price: price.clone(),
            format,
        }),
        ..Estimate::FREE
    }
}

/// A metered model request read whole: parameters in the body only, strict JSON, only the
/// top-level `fields` the meter was written for (a field it does not know may add tokens or
/// charges it cannot see), content whose cost its bytes bound (`text_types`, besides JSON-schema
/// types), and a model with a price.
pub(super) fn model_request<'a>(
    request: &ForwardRequest,
    prices: &'a PriceTable,
    fields: &[&str],
    text_types: &[&str],
) -> Result<(Map<String, Value>, &'a ModelPrice), Unmeterable> {
    if request.query.is_some() {
        return Err(Unmeterable::Refused(
            "a model call takes its parameters from the body only".to_owned(),
        ));
    }
    let body = strict_json_object(request)?;
    if let Some(field) = body.keys().find(|field| !fields.contains(&field.as_str())) {
        return Err(Unmeterable::Refused(format!(
            "`{field}` is not a field vault-key meters on this route; it may add tokens or \
             charges the request does not state"
        )));
    }
    let price = model_price(&body, prices)?;
    body.values()
        .try_for_each(|value| types_allowed(value, text_types))?;
    Ok((body, price))
}

/// The keys a conversation item, and a content part in it, may have: those whose tokens the
/// request's bytes show. Anything else may bring input the meter cannot see (an assistant
/// message's `audio` is a reference to audio the vendor stored).
pub(super) struct ItemKeys {
    pub item: &'static [&'static str],
    pub part: &'static [&'static str],
}

/// Conversation items (chat or Anthropic `messages`, Responses `input` and `instructions`) must
/// carry their content in the request: only the keys in `keys`; an item without a `type` is a
/// message (a `role`, no `id`: an untyped item with an `id` is a reference to a stored item,
/// whose tokens the request does not show); every content part says what it is.
pub(super) fn items_inline(items: Option<&Value>, keys: &ItemKeys) -> Result<(), Unmeterable> {
    let refuse = |why: &str| Err(Unmeterable::Refused(why.to_owned()));
    let Some(Value::Array(items)) = items else {
        return Ok(()); // a string, or absent: text in the request
    };
    for item in items {
        let Value::Object(item) = item else {
            return refuse("each conversation item must be an object");
        };
        known_keys(item, keys.item, "a conversation item")?;
        if !item.contains_key("type") && (!item.contains_key("role") || item.contains_key("id")) {
            return refuse(
                "a conversation item without a `type` must be a message with a `role`, not a \
                 reference to a stored item",
            );
        }
        // A function call's output (Responses) may be content parts too.
        parts_inline(item.get("content"), keys.part)?;
        parts_inline(item.get("output"), keys.part)?;
    }
    Ok(())
}

/// Content parts (a message's `content`, Anthropic's `system`), where given as a list: each one
/// an object that says its `type`, with only the keys in `keys`, and so are the parts nested in
/// it (a tool result's `content`).
pub(super) fn parts_inline(parts: Option<&Value>, keys: &[&str]) -> Result<(), Unmeterable> {
    let Some(Value::Array(parts)) = parts else {
        return Ok(()); // a string, or absent
    };
    for part in parts {
        match part {
            Value::Object(part) if part.get("type").is_some_and(Value::is_string) => {
                known_keys(part, keys, "a content part")?;
                parts_inline(part.get("content"), keys)?;
            }
            _ => {
                return Err(Unmeterable::Refused(
                    "each content part must be an object that says its `type`".to_owned(),
                ))
            }
        }
    }
    Ok(())
}

fn known_keys(object: &Map<String, Value>, keys: &[&str], what: &str) -> Result<(), Unmeterable> {
    match object.keys().find(|key| !keys.contains(&key.as_str())) {
        Some(key) => Err(Unmeterable::Refused(format!(
            "`{key}` in {what} is not something vault-key meters; it may bring input the \
             request does not show"
        ))),
        None => Ok(()),
    }
}

/// Rewrites a JSON request body (read strictly) with `edit`.
pub(super) fn rewrite_body(
    request: &mut ForwardRequest,
    edit: impl FnOnce(&mut Map<String, Value>) -> Result<(), Unmeterable>,
) -> Result<(), Unmeterable> {
    let mut body = strict_json_object(request)?;
    edit(&mut body)?;
    request.body = serde_json::to_vec(&body)
        .map_err(|e| Unmeterable::Refused(format!("the body cannot be rewritten: {e}")))?
        .into();
    Ok(())
}

/// Sets `service_tier` to `standard` where the request leaves the choice to the vendor (absent,
/// or `auto`, which may run — and bill — the call at a priority price the meter does not know).
pub(super) fn pin_service_tier(body: &mut Map<String, Value>, standard: &str) {
    let open = match body.get("service_tier") {
        None | Some(Value::Null) => true,
        Some(tier) => tier == "auto",
    };
    if open {
        body.insert("service_tier".to_owned(), Value::from(standard));
    }
}

/// The model a request names, with its price.
fn model_price<'a>(
    body: &Map<String, Value>,
    prices: &'a PriceTable,
) -> Result<&'a ModelPrice, Unmeterable> {
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| Unmeterable::Refused("the body must name its `model`".to_owned()))?;
    prices.get(model).ok_or_else(|| {
        Unmeterable::Refused(format!(
            "no price is known for model `{model}`; add it to the server's price table"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_body_reads_back_as_it_was_judged() {
        // Found by the `model_request` fuzz target: without serde_json's `float_roundtrip`, a
        // number like this one parsed and printed again comes out as a different number, so
        // a body rewritten twice was not the body judged once.
        let mut request = ForwardRequest {
            method: http::Method::POST,
            path: "/v1/chat/completions".to_owned(),
            query: None,
            headers: http::HeaderMap::from_iter([(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            )]),
            body: bytes::Bytes::from_static(
                br#"{"model":"m","temperature":3333333333333333333333333333333333333320}"#,
            ),
        };
        rewrite_body(&mut request, |_| Ok(())).unwrap();
        let once = request.body.clone();
        rewrite_body(&mut request, |_| Ok(())).unwrap();
        assert_eq!(request.body, once);
    }

    fn price() -> ModelPrice {
        ModelPrice {
            input: "2.50".parse().unwrap(),
            cached_input: "1.25".parse().unwrap(),
            cache_write: "2.50".parse().unwrap(),
            output: "10".parse().unwrap(),
            max_output_tokens: 16_384,
        }
    }

    #[test]
    fn usage_costs_each_kind_of_token_at_its_price() {
        let usage = Usage {
            input: 1_000,
            cached_input: 2_000,
            cache_write: 0,
            output: 500,
        };
        // 1000 × 2.50 + 2000 × 1.25 + 500 × 10, per million: $0.0025 + $0.0025 + $0.005.
        assert_eq!(usage.cost(&price()).micros(), 10_000);
        assert_eq!(
            per_million(1, "2.50".parse().unwrap()).micros(),
            3,
            "rounded up"
        );
    }

    #[test]
    fn sse_usage_is_read_as_events_pass_whatever_the_chunking() {
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                       data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n\
                       data: [DONE]\n\n";
        for split in [1, 5, 17, stream.len()] {
            let mut reader = UsageReader::new(UsageFormat::ChatCompletions, true);
            for chunk in stream.chunks(split) {
                reader.feed(chunk);
            }
            let usage = reader.finish().unwrap();
            assert_eq!((usage.input, usage.output), (7, 3), "chunks of {split}");
        }
        let mut cut = UsageReader::new(UsageFormat::ChatCompletions, true);
        cut.feed(&stream[..60]);
        assert_eq!(cut.finish(), None);
    }

    #[test]
    fn anthropic_streams_count_input_at_the_start_and_settle_at_message_stop() {
        let stream = "event: message_start\n\
            data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1,\"cache_read_input_tokens\":4}}}\n\n\
            event: message_delta\n\
            data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n";
        let stop = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        let mut cut = UsageReader::new(UsageFormat::AnthropicMessages, true);
        cut.feed(stream.as_bytes());
        assert_eq!(
            cut.finish(),
            None,
            "no `message_stop`: output may still grow"
        );
        let mut reader = UsageReader::new(UsageFormat::AnthropicMessages, true);
        reader.feed(stream.as_bytes());
        reader.feed(stop);
        let usage = reader.finish().unwrap();
        assert_eq!((usage.input, usage.cached_input, usage.output), (12, 4, 9));
        // A stop without the delta that gives the stop reason (and the final output count)
        // is not an end the meter trusts.
        let without_reason = stream.replace(r#""delta":{"stop_reason":"end_turn"},"#, "");
        let mut reader = UsageReader::new(UsageFormat::AnthropicMessages, true);
        reader.feed(without_reason.as_bytes());
        reader.feed(stop);
        assert_eq!(reader.finish(), None);
    }

    #[test]
    fn chat_usage_needs_both_counts_and_embeddings_only_the_prompt() {
        let finish = |format, answer: &str| {
            let mut reader = UsageReader::new(format, false);
            reader.feed(answer.as_bytes());
            reader.finish()
        };
        let prompt_only = r#"{"usage":{"prompt_tokens":7,"total_tokens":7}}"#;
        assert_eq!(finish(UsageFormat::ChatCompletions, prompt_only), None);
        assert_eq!(
            finish(UsageFormat::Embeddings, prompt_only).map(|u| (u.input, u.output)),
            Some((7, 0))
        );
        let both = r#"{"usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
        assert_eq!(
            finish(UsageFormat::ChatCompletions, both).map(|u| (u.input, u.output)),
            Some((7, 2))
        );
    }
}
