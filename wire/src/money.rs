use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MICROS_PER_DOLLAR: u64 = 1_000_000;

/// An amount of US dollars, held as integer micro-dollars.
///
/// Money never passes through a float inside vault-key. On the wire an amount is a JSON number of
/// dollars (`500`, `12.5`); it is parsed from its decimal digits, and anything finer than a
/// micro-dollar, negative or absurdly large is refused rather than rounded.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(u64);

/// Why an amount of dollars was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsdError {
    /// Not a plain decimal number.
    #[error("`{0}` is not an amount of dollars: write a number such as 500 or 12.5")]
    Malformed(String),
    /// Below zero.
    #[error("an amount of dollars cannot be negative")]
    Negative,
    /// Finer than one micro-dollar.
    #[error("`{0}` has more than 6 decimal places: amounts are kept in whole micro-dollars")]
    TooPrecise(String),
    /// Above [`Usd::MAX`].
    #[error("`{0}` is more than the largest amount vault-key accepts ($1,000,000,000)")]
    TooLarge(String),
}

impl Usd {
    /// Nothing.
    pub const ZERO: Usd = Usd(0);
    /// The largest amount vault-key accepts anywhere: one billion dollars. Keeping sums of many
    /// amounts far below `u64::MAX` means no addition of caps, reservations or spend can overflow.
    pub const MAX: Usd = Usd(1_000_000_000 * MICROS_PER_DOLLAR);

    /// An amount of micro-dollars.
    pub const fn from_micros(micros: u64) -> Usd {
        Usd(micros)
    }

    /// A whole number of dollars, or `None` above [`Usd::MAX`].
    pub const fn from_dollars(dollars: u64) -> Option<Usd> {
        match dollars.checked_mul(MICROS_PER_DOLLAR) {
            Some(micros) if micros <= Usd::MAX.0 => Some(Usd(micros)),
            _ => None,
        }
    }

    /// The amount in micro-dollars.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Sum, saturating at `u64::MAX` micro-dollars.
    #[must_use]
    pub const fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    /// Difference, saturating at zero.
    #[must_use]
    pub const fn saturating_sub(self, other: Usd) -> Usd {
        Usd(self.0.saturating_sub(other.0))
    }
}

impl FromStr for Usd {
    type Err = UsdError;

    /// Parses `"500"`, `"12.5"`, `"0.000001"`. No sign, exponent, separators or spaces.
    fn from_str(text: &str) -> Result<Usd, UsdError> {
        let malformed = || UsdError::Malformed(text.to_owned());
        if text.starts_with('-') {
            return Err(UsdError::Negative);
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || (text.contains('.') && fraction.is_empty())
        {
            return Err(malformed());
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > 6 {
            return Err(UsdError::TooPrecise(text.to_owned()));
        }
        let whole = whole.trim_start_matches('0');
        if whole.len() > 10 {
            return Err(UsdError::TooLarge(text.to_owned()));
        }
        let dollars: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| malformed())?
        };
        let micros_of_fraction: u64 = if fraction.is_empty() {
            0
        } else {
            format!("{fraction:0<6}").parse().map_err(|_| malformed())?
        };
        let micros = dollars * MICROS_PER_DOLLAR + micros_of_fraction;
        if micros > Usd::MAX.0 {
            return Err(UsdError::TooLarge(text.to_owned()));
        }
        Ok(Usd(micros))
    }
}

impl fmt::Display for Usd {
    /// Dollars with as few decimals as the amount needs: `500`, `12.5`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dollars = self.0 / MICROS_PER_DOLLAR;
        let micros = self.0 % MICROS_PER_DOLLAR;
        if micros == 0 {
            write!(f, "{dollars}")
        } else {
            let fraction = format!("{micros:06}");
            write!(f, "{dollars}.{}", fraction.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${self}")
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % MICROS_PER_DOLLAR == 0 {
            serializer.serialize_u64(self.0 / MICROS_PER_DOLLAR)
        } else {
            // The shortest float that reads back as these decimal digits: at most 16 significant
            // digits, which an f64 always round-trips.
            let as_float: f64 = self
                .to_string()
                .parse()
                .map_err(serde::ser::Error::custom)?;
            serializer.serialize_f64(as_float)
        }
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Usd, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        Usd::try_from(&number).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<&serde_json::Number> for Usd {
    type Error = UsdError;

    fn try_from(number: &serde_json::Number) -> Result<Usd, UsdError> {
        if let Some(whole) = number.as_u64() {
            return whole.to_string().parse();
        }
        if number.is_i64() {
            return Err(UsdError::Negative);
        }
        let float = number.as_f64().unwrap_or(f64::NAN);
        if float.is_sign_negative() {
            return Err(UsdError::Negative);
        }
        // `f64`'s `Display` prints the shortest decimal that reads back as the same float, never in
        // exponent form, so `12.5` arrives as "12.5" and `1e-6` as "0.000001".
        float.to_string().parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_dollars() {
        assert_eq!("500".parse::<Usd>().unwrap().micros(), 500_000_000);
        assert_eq!("12.5".parse::<Usd>().unwrap().micros(), 12_500_000);
        assert_eq!("0.000001".parse::<Usd>().unwrap().micros(), 1);
        assert_eq!("0.10".parse::<Usd>().unwrap().micros(), 100_000);
        assert_eq!("007".parse::<Usd>().unwrap().micros(), 7_000_000);
    }

    #[test]
    fn refuses_what_is_not_plain_dollars() {
        for bad in [
            "", ".5", "5.", "1e3", "+5", "5,0", " 5", "0x10", "NaN", "inf", "1.2.3",
        ] {
            assert!(
                matches!(bad.parse::<Usd>(), Err(UsdError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!("-1".parse::<Usd>(), Err(UsdError::Negative));
        assert!(matches!(
            "0.0000001".parse::<Usd>(),
            Err(UsdError::TooPrecise(_))
        ));
        assert!(matches!(
            "1000000001".parse::<Usd>(),
            Err(UsdError::TooLarge(_))
        ));
        assert!(matches!(
            "99999999999999999999".parse::<Usd>(),
            Err(UsdError::TooLarge(_))
        ));
    }

    #[test]
    fn json_round_trip_keeps_every_micro() {
        for micros in [
            0,
            1,
            10,
            123_456,
            500_000_000,
            12_500_000,
            999_999_999_999_999,
        ] {
            let usd = Usd::from_micros(micros);
            let json = serde_json::to_string(&usd).unwrap();
            let back: Usd = serde_json::from_str(&json).unwrap();
            assert_eq!(back, usd, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Usd::from_micros(500_000_000)).unwrap(),
            "500"
        );
        assert_eq!(serde_json::to_string(&Usd::from_micros(1)).unwrap(), "1e-6");
    }

    #[test]
    fn json_refuses_negative_and_too_precise() {
        assert!(serde_json::from_str::<Usd>("-5").is_err());
        assert!(serde_json::from_str::<Usd>("-0.5").is_err());
        assert!(serde_json::from_str::<Usd>("0.0000001").is_err());
        assert!(serde_json::from_str::<Usd>("\"5\"").is_err());
    }

    #[test]
    fn displays_minimal_decimals() {
        assert_eq!(Usd::from_micros(500_000_000).to_string(), "500");
        assert_eq!(Usd::from_micros(12_500_000).to_string(), "12.5");
        assert_eq!(Usd::from_micros(1).to_string(), "0.000001");
    }
}
