//! How keys and calls read to an operator, in words: one wording for the `keys` command line and
//! the dashboard.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use vault_key_wire::{Event, KeyView, Usd};

/// Dollars as an operator reads them: `$500`, `$2.50`, `$0.000125` (cents always in pairs).
#[derive(Debug, Clone, Copy)]
pub struct Money(pub Usd);

/// [`Money`] of an amount held by reference (as templates hold their fields).
pub fn money(usd: &Usd) -> Money {
    Money(*usd)
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dollars = self.0.to_string();
        match dollars.split_once('.') {
            Some((_, fraction)) if fraction.len() == 1 => write!(f, "${dollars}0"),
            _ => write!(f, "${dollars}"),
        }
    }
}

/// When a key stops (or stopped) working, relative to `now`: `in 4m59s`, `revoked 2h05m ago`.
pub fn expiry(key: &KeyView, now: OffsetDateTime) -> String {
    match key.revoked_at {
        Some(at) => format!("revoked {} ago", roughly(now - at)),
        None if key.expires_at > now => format!("in {}", roughly(key.expires_at - now)),
        None => format!("expired {} ago", roughly(now - key.expires_at)),
    }
}

/// A span in its two largest units: `45s`, `4m59s`, `2h05m`, `3d04h`.
pub fn roughly(span: time::Duration) -> String {
    let secs = span.whole_seconds().unsigned_abs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3_600..86_400 => format!("{}h{:02}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// What became of a call: `refused: spend_cap_exceeded`, `200, cost $10`, …
pub fn outcome(event: &Event) -> String {
    match (&event.denied, event.upstream_status, event.settled_usd) {
        (Some(code), _, _) => format!("refused: {}", code.as_str()),
        (None, Some(status), Some(cost)) => format!("{status}, cost {}", Money(cost)),
        (None, Some(status), None) => format!("{status}, cost unknown"),
        (None, None, _) => "no answer from the vendor".to_owned(),
    }
}

/// The time of day of a moment, to the second, in UTC: `07:52:10 UTC`.
pub fn time_of_day(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!("{:02}:{:02}:{:02} UTC", at.hour(), at.minute(), at.second())
}

/// `1 key`, `3 keys`.
pub fn keys_counted(n: u64) -> String {
    format!("{n} key{}", if n == 1 { "" } else { "s" })
}

/// A moment as RFC 3339 (UTC).
pub fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_shows_cents_in_pairs_and_no_more_decimals_than_needed() {
        let shown = |micros| Money(Usd::from_micros(micros)).to_string();
        assert_eq!(shown(500_000_000), "$500");
        assert_eq!(shown(2_500_000), "$2.50");
        assert_eq!(shown(2_550_000), "$2.55");
        assert_eq!(shown(125), "$0.000125");
        assert_eq!(shown(0), "$0");
    }

    #[test]
    fn spans_read_in_their_two_largest_units() {
        assert_eq!(roughly(time::Duration::seconds(45)), "45s");
        assert_eq!(roughly(time::Duration::seconds(299)), "4m59s");
        assert_eq!(roughly(time::Duration::seconds(7_500)), "2h05m");
        assert_eq!(roughly(time::Duration::seconds(-7_500)), "2h05m");
        assert_eq!(
            roughly(time::Duration::seconds(3 * 86_400 + 4 * 3_600)),
            "3d04h"
        );
    }
}
