//! What a proxied call costs: one module per vendor.
//!
//! A meter answers two questions. Before forwarding: what is the most this request can cost
//! ([`Meter::estimate`]), or why it cannot be known (`unmeterable_request`). After the response:
//! what it did cost ([`Meter::settle`]). The proxy reserves the first and settles to the second.

mod stripe;

use http::{HeaderMap, Method, StatusCode};
use vault_key_wire::Usd;

use crate::store::IdempotencyClaim;

pub use stripe::StripeMeter;

/// The parts of a request a meter may read.
#[derive(Debug, Clone, Copy)]
pub struct MeteredRequest<'a> {
    /// Method.
    pub method: &'a Method,
    /// Canonical upstream path.
    pub path: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// The most a call can cost, and what makes a repeat of it a replay.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// Reserved before forwarding.
    pub max_cost: Usd,
    /// Present when the vendor will replay a repeat of this call instead of acting again.
    pub idempotency: Option<IdempotencyClaim>,
}

impl Estimate {
    /// A call that costs nothing.
    pub const FREE: Estimate = Estimate {
        max_cost: Usd::ZERO,
        idempotency: None,
    };
}

/// Why a call's cost cannot be determined; becomes `400 unmeterable_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unmeterable(pub String);

/// A vendor's cost model.
#[derive(Debug, Clone)]
pub enum Meter {
    /// Stripe: money-moving creates cost their amount.
    Stripe(StripeMeter),
    /// A configured vendor: a flat cost per call, whatever the answer.
    Flat(Usd),
}

impl Meter {
    /// The most `request` can cost.
    pub fn estimate(&self, request: &MeteredRequest<'_>) -> Result<Estimate, Unmeterable> {
        match self {
            Meter::Stripe(stripe) => stripe.estimate(request),
            Meter::Flat(cost) => Ok(Estimate {
                max_cost: *cost,
                idempotency: None,
            }),
        }
    }

    /// What a call that reserved `reserved` cost, given the vendor's status.
    pub fn settle(&self, reserved: Usd, status: StatusCode) -> Usd {
        match self {
            // Stripe charges nothing for a request it refused or failed.
            Meter::Stripe(_) if !status.is_success() => Usd::ZERO,
            Meter::Stripe(_) | Meter::Flat(_) => reserved,
        }
    }
}
