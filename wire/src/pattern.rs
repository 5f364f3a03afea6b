use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::path::{check_segment, PathError};

/// One entry of a key's `allowed_endpoints`: a path pattern matched segment by segment.
///
/// `*` matches exactly one non-empty segment; `**` as the last segment matches one or more
/// segments; every other segment matches literally and case-sensitively. The query string never
/// takes part in matching. Literal segments obey the same canonical rule as request paths, so a
/// pattern can only ever match paths the proxy would forward.
///
/// ```
/// use vault_key_wire::EndpointPattern;
///
/// let any_below: EndpointPattern = "/v1/files/**".parse().unwrap();
/// assert!(any_below.matches_path("/v1/files/file-1/content"));
/// assert!(!any_below.matches_path("/v1/files"));
/// assert!("/v1/files/*x".parse::<EndpointPattern>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EndpointPattern {
    text: String,
    segments: Vec<PatternSegment>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum PatternSegment {
    Literal(String),
    AnyOne,
    AnyRest,
}

/// Why an endpoint pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty text.
    #[error("an endpoint pattern cannot be empty")]
    Empty,
    /// Does not start with `/`.
    #[error("endpoint pattern `{0}` must start with `/`, as in \"/v1/charges\"")]
    NoLeadingSlash(String),
    /// `*` inside a segment with other characters.
    #[error(
        "in endpoint pattern `{0}`, `*` and `**` must be a whole segment, as in \"/v1/charges/*\""
    )]
    PartialWildcard(String),
    /// `**` before the last segment.
    #[error("in endpoint pattern `{0}`, `**` may only be the last segment")]
    RestNotLast(String),
    /// A segment that breaks the canonical path rule (`..`, `//`, escapes, …).
    #[error("endpoint pattern `{pattern}` is not a canonical path: {reason}")]
    NotCanonical {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: PathError,
    },
}

impl FromStr for EndpointPattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| PatternError::NoLeadingSlash(text.to_owned()))?;
        let raw_segments: Vec<&str> = rest.split('/').collect();
        let last = raw_segments.len() - 1;
        let mut segments = Vec::with_capacity(raw_segments.len());
        for (index, raw) in raw_segments.into_iter().enumerate() {
            let segment = match raw {
                "*" => PatternSegment::AnyOne,
                "**" if index == last => PatternSegment::AnyRest,
                "**" => return Err(PatternError::RestNotLast(text.to_owned())),
                _ if raw.contains('*') => {
                    return Err(PatternError::PartialWildcard(text.to_owned()))
                }
                _ => {
                    check_segment(raw).map_err(|reason| PatternError::NotCanonical {
                        pattern: text.to_owned(),
                        reason,
                    })?;
                    PatternSegment::Literal(raw.to_owned())
                }
            };
            segments.push(segment);
        }
        Ok(EndpointPattern {
            text: text.to_owned(),
            segments,
        })
    }
}

impl EndpointPattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a canonical path (see [`crate::path::check_path`]) matches. The caller checks the
    /// path first; a path with a query string never matches.
    pub fn matches_path(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut path_segments = rest.split('/');
        for segment in &self.segments {
            match segment {
                // One or more segments, all non-empty, whatever they are.
                PatternSegment::AnyRest => {
                    let mut rest = path_segments.peekable();
                    return rest.peek().is_some() && rest.all(|s| !s.is_empty());
                }
                PatternSegment::AnyOne => match path_segments.next() {
                    Some(s) if !s.is_empty() => {}
                    _ => return false,
                },
                PatternSegment::Literal(literal) => {
                    if path_segments.next() != Some(literal.as_str()) {
                        return false;
                    }
                }
            }
        }
        path_segments.next().is_none()
    }

    /// Whether every path this pattern matches is also matched by `wider`: how a key minted
    /// from a grant shows that its endpoints narrow the grant's.
    ///
    /// ```
    /// use vault_key_wire::EndpointPattern;
    ///
    /// let p = |text: &str| text.parse::<EndpointPattern>().unwrap();
    /// assert!(p("/v1/payment_intents/pi_1").is_within(&p("/v1/payment_intents/*")));
    /// assert!(p("/v1/files/*/content").is_within(&p("/v1/files/**")));
    /// assert!(!p("/v1/payment_intents/**").is_within(&p("/v1/payment_intents/*")));
    /// ```
    pub fn is_within(&self, wider: &EndpointPattern) -> bool {
        fn within(narrow: &[PatternSegment], wide: &[PatternSegment]) -> bool {
            match (narrow.split_first(), wide.split_first()) {
                (None, None) => true,
                // `**` (last) takes one or more segments of any kind.
                (Some(_), Some((PatternSegment::AnyRest, _))) => true,
                (Some((n, narrow_rest)), Some((w, wide_rest))) => {
                    let segment_within = match (n, w) {
                        (PatternSegment::Literal(a), PatternSegment::Literal(b)) => a == b,
                        (
                            PatternSegment::Literal(_) | PatternSegment::AnyOne,
                            PatternSegment::AnyOne,
                        ) => true,
                        // A narrow `*` or `**` is not one literal; a narrow `**` is not one segment.
                        _ => false,
                    };
                    segment_within && within(narrow_rest, wide_rest)
                }
                _ => false,
            }
        }
        within(&self.segments, &wider.segments)
    }
}

impl fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointPattern({:?})", self.text)
    }
}

impl Serialize for EndpointPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for EndpointPattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> EndpointPattern {
        text.parse().unwrap()
    }

    #[test]
    fn literal_matches_exactly_on_segment_boundaries() {
        let p = pattern("/v1/charges");
        assert!(p.matches_path("/v1/charges"));
        assert!(!p.matches_path("/v1/charges/ch_1"));
        assert!(!p.matches_path("/v1/chargesx"));
        assert!(!p.matches_path("/v1/Charges"));
        assert!(!p.matches_path("/v1"));
    }

    #[test]
    fn star_matches_one_non_empty_segment() {
        let p = pattern("/v1/payment_intents/*");
        assert!(p.matches_path("/v1/payment_intents/pi_1"));
        assert!(!p.matches_path("/v1/payment_intents"));
        assert!(!p.matches_path("/v1/payment_intents/"));
        assert!(!p.matches_path("/v1/payment_intents/pi_1/confirm"));
        let middle = pattern("/v1/payment_intents/*/confirm");
        assert!(middle.matches_path("/v1/payment_intents/pi_1/confirm"));
        assert!(!middle.matches_path("/v1/payment_intents/pi_1/cancel"));
    }

    #[test]
    fn double_star_matches_one_or_more_trailing_segments() {
        let p = pattern("/v1/**");
        assert!(p.matches_path("/v1/a"));
        assert!(p.matches_path("/v1/a/b/c"));
        assert!(!p.matches_path("/v1"));
        assert!(!p.matches_path("/v2/a"));
        assert!(!p.matches_path("/v1/a//b"));
    }

    #[test]
    fn refuses_malformed_patterns() {
        assert_eq!("".parse::<EndpointPattern>(), Err(PatternError::Empty));
        assert!(matches!(
            "v1/x".parse::<EndpointPattern>(),
            Err(PatternError::NoLeadingSlash(_))
        ));
        assert!(matches!(
            "/v1/x*".parse::<EndpointPattern>(),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            "/**/x".parse::<EndpointPattern>(),
            Err(PatternError::RestNotLast(_))
        ));
        for bad in ["/v1/../x", "/v1//x", "/v1/x/", "/v1/%2F", "/v1/a;b"] {
            assert!(
                matches!(
                    bad.parse::<EndpointPattern>(),
                    Err(PatternError::NotCanonical { .. })
                ),
                "{bad}"
            );
        }
    }

    /// Patterns and paths over a small alphabet, so that containment is often true and often
    /// false.
    fn small_pattern() -> impl proptest::strategy::Strategy<Value = EndpointPattern> {
        use proptest::prelude::*;
        (
            proptest::collection::vec(prop_oneof!["a", "b", Just("*".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_map(|(segments, rest)| {
                let mut text: String = segments.iter().map(|s| format!("/{s}")).collect();
                if rest || text.is_empty() {
                    text.push_str("/**");
                }
                text.parse().unwrap()
            })
    }

    proptest::proptest! {
        /// `is_within` never claims more than matching shows: a path the narrow pattern matches
        /// is matched by the wide one.
        #[test]
        fn within_means_every_matched_path_is_matched_by_the_wider(
            narrow in small_pattern(),
            wide in small_pattern(),
            path in proptest::collection::vec(proptest::prop_oneof!["a", "b", "c"], 1..6),
        ) {
            let path: String = path.iter().map(|s| format!("/{s}")).collect();
            if narrow.is_within(&wide) && narrow.matches_path(&path) {
                proptest::prop_assert!(wide.matches_path(&path), "{narrow} within {wide}, {path}");
            }
            proptest::prop_assert!(narrow.is_within(&narrow));
        }
    }

    #[test]
    fn within_is_judged_segment_by_segment() {
        let p = pattern;
        assert!(p("/v1/a").is_within(&p("/v1/a")));
        assert!(p("/v1/a").is_within(&p("/v1/*")));
        assert!(p("/v1/*").is_within(&p("/v1/**")));
        assert!(p("/v1/a/b").is_within(&p("/v1/**")));
        assert!(!p("/v1/**").is_within(&p("/v1/*")));
        assert!(!p("/v1/*").is_within(&p("/v1/a")));
        assert!(!p("/v1").is_within(&p("/v1/**")));
        assert!(!p("/v1/a").is_within(&p("/v1/a/b")));
        assert!(!p("/v1/a/b").is_within(&p("/v1/a")));
    }
}
