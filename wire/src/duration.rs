use std::time::Duration;

/// Why a duration string such as `"5m"` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not `<digits><unit>`.
    #[error("`{0}` is not a duration: write a whole number followed by a unit, such as \"90s\", \"5m\", \"1h\" or \"1d\"")]
    Malformed(String),
    /// The unit is not one of `s`, `m`, `h`, `d`.
    #[error("`{unit}` is not a duration unit: use `s`, `m`, `h` or `d` (as in \"5m\")")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// Zero length.
    #[error("a duration must be longer than zero")]
    Zero,
    /// Larger than any key could live.
    #[error("`{0}` is too long a duration")]
    TooLong(String),
}

/// Parses the duration grammar used by `expires_in` and by the attribute's `ttl`:
/// a whole number followed by one unit, `s`, `m`, `h` or `d` (`"90s"`, `"5m"`, `"1h"`, `"1d"`).
///
/// One grammar for both places, so that what compiles in `#[vault_key(ttl = …)]` is exactly what
/// the server accepts.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if digits.is_empty() || unit.is_empty() {
        return Err(DurationError::Malformed(text.to_owned()));
    }
    let seconds_per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_owned(),
            })
        }
    };
    // More than 10 digits can only be an overflow attempt or a typo.
    let count: u64 = if digits.len() > 10 {
        return Err(DurationError::TooLong(text.to_owned()));
    } else {
        digits
            .parse()
            .map_err(|_| DurationError::Malformed(text.to_owned()))?
    };
    if count == 0 {
        return Err(DurationError::Zero);
    }
    count
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))
}

/// Formats a whole number of seconds in the largest unit that divides it exactly: the inverse of
/// [`parse_duration`].
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs != 0 && secs % size == 0 {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "", "5", "m", "5x", "5 m", " 5m", "5m ", "-5m", "+5m", "1.5h", "5M", "1h30m",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse_duration("0s"), Err(DurationError::Zero));
        assert!(matches!(
            parse_duration("5x"),
            Err(DurationError::UnknownUnit { unit }) if unit == "x"
        ));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for text in ["90s", "5m", "1h", "2d", "61s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
