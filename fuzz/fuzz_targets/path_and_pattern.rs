//! The canonical path rule and endpoint patterns. Input: `pattern \n path`.
//!
//! Invariants: an accepted path has no empty segment, no dot segment (written or escaped) and no
//! escaped separator; a pattern matches only paths of its own shape; a pattern that
//! parses prints back as written.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_key_wire::path::check_path;
use vault_key_wire::EndpointPattern;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, path) = text.split_once('\n').unwrap_or(("/v1/**", text));
    let accepted = check_path(path).is_ok();
    if accepted {
        let segments: Vec<&str> = path[1..].split('/').collect();
        for segment in &segments {
            assert!(!segment.is_empty(), "empty segment accepted: {path:?}");
            let decoded = decode(segment);
            assert!(
                decoded != b"." && decoded != b"..",
                "dot segment accepted: {path:?}"
            );
            assert!(
                !decoded.contains(&b'/') && !decoded.contains(&b'\\'),
                "separator accepted inside a segment: {path:?}"
            );
            assert!(
                !segment
                    .bytes()
                    .any(|b| b == b'?' || b == b'#' || b.is_ascii_control()),
                "query, fragment or control byte accepted: {path:?}"
            );
        }
    }
    if let Ok(parsed) = pattern.parse::<EndpointPattern>() {
        assert_eq!(parsed.as_str(), pattern);
        if accepted && parsed.matches_path(path) {
            // A literal pattern (no wildcard) matches exactly the path it spells.
            if !pattern.contains('*') {
                assert_eq!(pattern, path);
            }
            let wanted = pattern.split('/').count();
            let got = path.split('/').count();
            assert!(
                got == wanted || (pattern.ends_with("/**") && got >= wanted),
                "{pattern:?} matched {path:?} of another shape"
            );
        }
    }
});

/// `segment` with its `%XX` escapes decoded (a malformed escape kept as written).
fn decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    decoded
}
