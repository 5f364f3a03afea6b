//! What a proxied call costs: one module per vendor, each a pure function of the request it is
//! about to forward and the response it got back (no storage, no I/O).
//!
//! Before forwarding, [`Meter::estimate`] classifies the call: free, metered at the most it can
//! cost, or refused because its cost cannot be known (`unmeterable_request`). A vendor route the
//! meter does not know is refused: unknown means refused. After the response, [`Meter::settle`]
//! says what the call did cost (and which object it created, for calls that later act on it).

pub mod llm;
mod stripe;

use http::{HeaderMap, Method, StatusCode};
use vault_key_wire::Usd;

pub use llm::{AnthropicMeter, ModelCall, OpenAiMeter, PriceTable};
pub use stripe::StripeMeter;

/// The request exactly as it will be forwarded: the policy, the meter and the forwarder all
/// read this one value, so none of them can judge a request the others do not send.
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    /// Method.
    pub method: Method,
    /// Canonical upstream path.
    pub path: String,
    /// Query string as it goes upstream (credentials removed), verbatim otherwise.
    pub query: Option<String>,
    /// Headers as they go upstream (credentials, hop-by-hop and account-switching headers gone;
    /// the vendor secret is added only at the last moment, by the forwarder).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: bytes::Bytes,
}

/// A vendor object named by a call: the call is allowed only if this key created it, of this
/// kind (in this currency, when one is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// What it is, as the vendor names it (`payment_intent`).
    pub kind: String,
    /// The vendor's object id (`pi_…`).
    pub id: String,
    /// The currency the object moves money in, lower-case; `None` when any will do.
    pub currency: Option<String>,
}

/// The most a call can cost, and what the proxy must check or learn around it.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    /// Reserved before forwarding.
    pub max_cost: Usd,
    /// Present when the vendor will replay a repeat of this call instead of acting again.
    pub idempotency: Option<IdempotencyClaim>,
    /// An existing object whose money this call moves, which must be one the key created (its
    /// amount was reserved then): confirming or capturing someone else's object is refused.
    pub acts_on: Option<ObjectRef>,
    /// The object the call creates and pays for; its id is read from the response so that later
    /// calls may act on it.
    pub creates: Option<NewObject>,
    /// A model call, settled on the usage its answer reports (read as the answer streams past).
    pub model: Option<ModelCall>,
}

/// An object a metered call creates, as the request states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewObject {
    /// What it is, as the vendor names it (`payment_intent`).
    pub kind: &'static str,
    /// The amount paid for, in the currency's minor unit.
    pub amount: u64,
    /// Lower-case ISO code.
    pub currency: String,
}

impl Estimate {
    /// A call that costs nothing and names nothing.
    pub const FREE: Estimate = Estimate {
        max_cost: Usd::ZERO,
        idempotency: None,
        acts_on: None,
        creates: None,
        model: None,
    };

    /// Whether the proxy must go through the store before forwarding (to reserve, or to check
    /// that the key owns the object acted on).
    pub fn needs_reservation(&self) -> bool {
        !self.max_cost.is_zero() || self.acts_on.is_some()
    }

    /// Whether settlement reads the response body (otherwise the status is enough and the body
    /// streams straight to the client).
    pub fn settles_on_body(&self) -> bool {
        self.creates.is_some()
    }
}

/// A vendor idempotency key and what the call it names must look like to count as a replay.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// The `Idempotency-Key` header value, as forwarded.
    pub key: String,
    /// A digest of method, path and body as forwarded: a different request under the same key
    /// is not a replay.
    pub fingerprint: String,
}

/// What a call cost, from the vendor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The actual cost.
    pub cost: Usd,
    /// The object the call created, now owned by the key.
    pub created: Option<ObjectRef>,
}

/// Why a call's cost cannot be determined; becomes `400 unmeterable_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unmeterable {
    /// The meter knows this route and knows its cost cannot be capped from this request.
    #[error("{0}")]
    Refused(String),
    /// The meter does not know this route; an operator may declare it free in the config file.
    #[error(
        "{0} is not a route vault-key knows to be free or meterable; an operator may declare it \
         free under `free_routes` in the server config"
    )]
    UnknownRoute(String),
}

/// A vendor's cost model.
#[derive(Debug, Clone)]
pub enum Meter {
    /// Stripe: money-moving creates cost their amount; every route classified.
    Stripe(StripeMeter),
    /// OpenAI: tokens × the model's price.
    OpenAi(OpenAiMeter),
    /// Anthropic: tokens × the model's price.
    Anthropic(AnthropicMeter),
    /// A configured vendor: a flat cost per call, whatever the answer.
    Flat(Usd),
}

impl Meter {
    /// Rewrites the request before it is judged and forwarded, where the vendor must be asked to
    /// report what the call cost (OpenAI streams: `stream_options.include_usage`) or to bill it
    /// at the price the meter knows (model calls: the standard service tier).
    pub fn prepare(&self, request: &mut ForwardRequest) -> Result<(), Unmeterable> {
        match self {
            Meter::OpenAi(openai) => openai.prepare(request),
            Meter::Anthropic(anthropic) => anthropic.prepare(request),
            Meter::Stripe(_) | Meter::Flat(_) => Ok(()),
        }
    }

    /// The most `request` can cost.
    pub fn estimate(&self, request: &ForwardRequest) -> Result<Estimate, Unmeterable> {
        self.vendor_headers_known(&request.headers)?;
        match self {
            Meter::Stripe(stripe) => stripe.estimate(request),
            Meter::OpenAi(openai) => openai.estimate(request),
            Meter::Anthropic(anthropic) => anthropic.estimate(request),
            Meter::Flat(cost) => Ok(Estimate {
                max_cost: *cost,
                ..Estimate::FREE
            }),
        }
    }

    /// Headers in the vendor's own namespace switch its features on (`anthropic-beta:
    /// output-128k-…` raises the output ceiling, `context-1m-…` the input price): each one the
    /// meter was not written for is refused, so that no header changes what a call may cost.
    fn vendor_headers_known(&self, headers: &HeaderMap) -> Result<(), Unmeterable> {
        let (prefixes, known): (&[&str], &[&str]) = match self {
            Meter::Stripe(_) => (
                &["stripe-", "x-stripe-"],
                &["stripe-version", "x-stripe-client-user-agent"],
            ),
            Meter::OpenAi(_) => (&["openai-", "x-openai-"], &[]),
            Meter::Anthropic(_) => (&["anthropic-", "x-anthropic-"], &["anthropic-version"]),
            // A configured vendor costs the same per call whatever its headers say.
            Meter::Flat(_) => return Ok(()),
        };
        match headers.keys().find(|name| {
            prefixes.iter().any(|p| name.as_str().starts_with(p)) && !known.contains(&name.as_str())
        }) {
            Some(name) => Err(Unmeterable::Refused(format!(
                "the `{name}` header changes what the vendor does in ways vault-key does not \
                 meter; send the request without it"
            ))),
            None => Ok(()),
        }
    }

    /// What a call that reserved `reserved` under `estimate` cost, given the vendor's answer.
    /// `body` is the response body when [`Estimate::settles_on_body`], else empty.
    pub fn settle(
        &self,
        estimate: &Estimate,
        reserved: Usd,
        status: StatusCode,
        body: &[u8],
    ) -> Settlement {
        match self {
            Meter::Stripe(stripe) => stripe.settle(estimate, reserved, status, body),
            // A successful model call settles on usage (`ModelCall::settle`), read as its answer
            // streams; one the vendor refused costs nothing, like any other.
            Meter::OpenAi(_) | Meter::Anthropic(_) => Settlement {
                cost: estimate
                    .model
                    .as_ref()
                    .and_then(|model| model.settle(status, None))
                    .unwrap_or(reserved),
                created: None,
            },
            Meter::Flat(_) => Settlement {
                cost: reserved,
                created: None,
            },
        }
    }
}
