//! The canonical path rule: **reject, never normalise.**
//!
//! The proxy accepts an upstream path only in one canonical form and forwards exactly the bytes it
//! checked. Anything a server, a URL library or a framework downstream might read differently from
//! us — dot segments, empty segments, backslashes, `;` parameters, escapes of separators, double
//! encoding, controls, whitespace, non-ASCII — is refused here rather than "cleaned up", because a
//! clean-up is exactly where an allowlist bypass hides.
//!
//! A canonical path is one or more `/segment`s. A segment is non-empty, is not `.` or `..`, and is
//! made of the bytes `A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , = : @` and percent-escapes written with
//! two upper-case hex digits whose byte is printable ASCII that has no raw form here (an escape of
//! a letter, a digit or `-._~` is not canonical; an escape of `/ \ . ? # % ;`, a control, a space
//! or a non-ASCII byte is refused outright).

/// The longest upstream path the proxy accepts, in bytes.
pub const MAX_PATH_LEN: usize = 2048;

/// Why a path is not in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing after the vendor.
    #[error("the path is empty")]
    Empty,
    /// Does not start with `/`.
    #[error("the path must start with `/`")]
    NoLeadingSlash,
    /// Over [`MAX_PATH_LEN`].
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    /// `//` or a trailing `/`.
    #[error("the path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    /// `.` or `..`.
    #[error("the path has a `.` or `..` segment")]
    DotSegment,
    /// A byte with no place in a canonical path.
    #[error("the path contains {0}, which is not allowed in a canonical path")]
    ForbiddenByte(ByteName),
    /// `%` not followed by two upper-case hex digits.
    #[error("the path has a `%` that is not followed by two upper-case hex digits")]
    MalformedEscape,
    /// An escape of a byte that must appear raw (letters, digits, `-._~`).
    #[error("the path escapes {0}, which must be written as it is")]
    NeedlessEscape(ByteName),
    /// An escape of a separator, `%`, a control, whitespace or non-ASCII.
    #[error("the path has an escape of {0}, which is not allowed")]
    ForbiddenEscape(ByteName),
}

/// A byte named for an error message without echoing raw control or non-ASCII bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteName(pub u8);

impl std::fmt::Display for ByteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            b' ' => f.write_str("a space"),
            b if b.is_ascii_graphic() => write!(f, "`{}`", b as char),
            b => write!(f, "the byte 0x{b:02X}"),
        }
    }
}

/// Checks that `path` is in canonical form, returning the first reason it is not.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    let rest = path.strip_prefix('/').ok_or(PathError::NoLeadingSlash)?;
    rest.split('/').try_for_each(check_segment)
}

/// Checks one segment (the bytes between two `/`) against the canonical rule.
pub fn check_segment(segment: &str) -> Result<(), PathError> {
    match segment {
        "" => return Err(PathError::EmptySegment),
        "." | ".." => return Err(PathError::DotSegment),
        _ => {}
    }
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let escaped = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| Some(upper_hex_value(hex[0])? << 4 | upper_hex_value(hex[1])?))
                .ok_or(PathError::MalformedEscape)?;
            check_escaped_byte(escaped)?;
            i += 3;
        } else if is_raw_path_byte(byte) {
            i += 1;
        } else {
            return Err(PathError::ForbiddenByte(ByteName(byte)));
        }
    }
    Ok(())
}

/// Unreserved characters plus the sub-delimiters, `:` and `@`, without `;`.
fn is_raw_path_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&byte)
}

fn check_escaped_byte(byte: u8) -> Result<(), PathError> {
    if byte.is_ascii_alphanumeric() || b"-_~".contains(&byte) {
        return Err(PathError::NeedlessEscape(ByteName(byte)));
    }
    // `.` is unreserved too, but an escaped dot is how `%2e%2e` smuggles a dot segment, so it gets
    // the stronger refusal along with the separators and `%` itself (double encoding).
    if !byte.is_ascii_graphic() || b"/\\.?#%;".contains(&byte) {
        return Err(PathError::ForbiddenEscape(ByteName(byte)));
    }
    Ok(())
}

fn upper_hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_vendor_paths() {
        for ok in [
            "/v1/payment_intents",
            "/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm",
            "/v1/chat/completions",
            "/v1/files/file-abc.jsonl",
            "/v1/a:b@c!$&'()*+,=~",
            "/v1/%3A%40",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_every_non_canonical_form() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("v1/charges", PathError::NoLeadingSlash),
            ("/", PathError::EmptySegment),
            ("/v1//charges", PathError::EmptySegment),
            ("/v1/charges/", PathError::EmptySegment),
            ("/v1/./charges", PathError::DotSegment),
            ("/v1/../admin", PathError::DotSegment),
            ("/v1/%2e%2e/admin", PathError::MalformedEscape),
            (
                "/v1/%2E%2E/admin",
                PathError::ForbiddenEscape(ByteName(b'.')),
            ),
            ("/v1/%2F", PathError::ForbiddenEscape(ByteName(b'/'))),
            ("/v1/%5C", PathError::ForbiddenEscape(ByteName(b'\\'))),
            ("/v1/%3F", PathError::ForbiddenEscape(ByteName(b'?'))),
            ("/v1/%23", PathError::ForbiddenEscape(ByteName(b'#'))),
            ("/v1/%00", PathError::ForbiddenEscape(ByteName(0))),
            ("/v1/%252F", PathError::ForbiddenEscape(ByteName(b'%'))),
            ("/v1/%3B", PathError::ForbiddenEscape(ByteName(b';'))),
            ("/v1/%20", PathError::ForbiddenEscape(ByteName(b' '))),
            ("/v1/%C3%A9", PathError::ForbiddenEscape(ByteName(0xC3))),
            ("/v1/%61", PathError::NeedlessEscape(ByteName(b'a'))),
            ("/v1/%2", PathError::MalformedEscape),
            ("/v1/%zz", PathError::MalformedEscape),
            ("/v1\\charges", PathError::ForbiddenByte(ByteName(b'\\'))),
            ("/v1/charges;x=1", PathError::ForbiddenByte(ByteName(b';'))),
            ("/v1/char ges", PathError::ForbiddenByte(ByteName(b' '))),
            ("/v1/char\tges", PathError::ForbiddenByte(ByteName(b'\t'))),
            ("/v1/caf\u{e9}", PathError::ForbiddenByte(ByteName(0xC3))),
            ("/v1/a\"b", PathError::ForbiddenByte(ByteName(b'"'))),
        ];
        for (path, expected) in cases {
            assert_eq!(check_path(path).as_ref(), Err(expected), "{path:?}");
        }
        assert_eq!(
            check_path(&format!("/{}", "a".repeat(MAX_PATH_LEN))),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn error_messages_never_echo_raw_control_bytes() {
        let message = check_path("/v1/a\u{1b}[31m").unwrap_err().to_string();
        assert!(message.contains("0x1B"), "{message}");
        assert!(!message.contains('\u{1b}'));
    }
}
