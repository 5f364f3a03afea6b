//! Properties of the canonical path rule and of pattern matching, over paths built from the
//! bytes that make trouble (dots, slashes, backslashes, escapes, `;`, `?`, `#`, spaces,
//! non-ASCII): whatever is accepted is a path every server reads the same way.

use proptest::prelude::*;
use vault_key_wire::path::check_path;
use vault_key_wire::EndpointPattern;

/// Paths of up to 40 pieces from a troublesome alphabet, most starting with `/`.
fn path() -> impl Strategy<Value = String> {
    let alphabet = prop::sample::select(vec![
        "a", "b", "v1", ".", "/", "%", "2", "5", "e", "E", "f", "F", "c", "C", "0", "\\", ";", "?",
        "#", " ", "~", "-", "_", "é", "%2e", "%2E", "%2F", "%2f", "%5C", "%25", "%00", "%41",
        "%3B", "%21", "*", "@", ":",
    ]);
    (
        prop::bool::weighted(0.9),
        prop::collection::vec(alphabet, 0..40),
    )
        .prop_map(|(slash, parts)| {
            let body = parts.concat();
            if slash {
                format!("/{body}")
            } else {
                body
            }
        })
}

/// Canonical paths without `*`: one to five segments of ordinary pieces.
fn canonical_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec!["a", "b", "v1", "x.y", "-", "_", "~", "2", "pi_3Q"]);
    prop::collection::vec(prop::collection::vec(piece, 1..4), 1..6).prop_map(|segments| {
        segments
            .iter()
            .map(|pieces| format!("/{}", pieces.concat()))
            .collect()
    })
}

/// `path` with every `%XX` escape decoded, and the bytes those escapes stood for.
fn decode(path: &str) -> (Vec<u8>, Vec<u8>) {
    let bytes = path.as_bytes();
    let (mut decoded, mut escaped) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                escaped.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    (decoded, escaped)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4_096))]

    /// An accepted path has no dot segment, no empty segment and no escaped separator, raw or
    /// once decoded, and nothing a server could read as something else.
    #[test]
    fn an_accepted_path_is_unambiguous(path in path()) {
        if check_path(&path).is_ok() {
            prop_assert!(path.starts_with('/'));
            prop_assert!(path.is_ascii());
            prop_assert!(!path.bytes().any(|b| b.is_ascii_control() || b == b' '));
            for forbidden in ['\\', ';', '?', '#'] {
                prop_assert!(!path.contains(forbidden), "{path:?} holds {forbidden:?}");
            }
            for segment in path[1..].split('/') {
                prop_assert!(!segment.is_empty(), "{path:?} has an empty segment");
                prop_assert!(segment != "." && segment != "..", "{path:?}");
            }
            let (decoded, escaped) = decode(&path);
            for byte in escaped {
                prop_assert!(
                    !matches!(byte, b'/' | b'\\' | b'.' | b'?' | b'#' | b'%' | b';')
                        && byte.is_ascii_graphic(),
                    "{path:?} escapes 0x{byte:02X}"
                );
            }
            // Decoding changes no segment structure: every server splits it the same way.
            let decoded = String::from_utf8(decoded).expect("escapes of printable ASCII only");
            prop_assert_eq!(decoded.split('/').count(), path.split('/').count());
            for segment in decoded[1..].split('/') {
                prop_assert!(segment != "." && segment != "..", "{path:?} decodes to a dot segment");
            }
        }
    }

    /// A literal pattern matches the path it names; `*` in place of the last segment matches it
    /// and nothing deeper; `parent/**` matches it and deeper, but not the parent; a pattern that
    /// names only a prefix of the segments matches nothing longer.
    #[test]
    fn patterns_match_on_segment_boundaries(path in canonical_path()) {
        prop_assert!(check_path(&path).is_ok(), "{path:?}");
        let literal: EndpointPattern = path.parse().unwrap();
        prop_assert!(literal.matches_path(&path));
        let segments: Vec<&str> = path[1..].split('/').collect();
        let (last, parents) = segments.split_last().unwrap();
        prop_assert!(!last.is_empty());
        let parent = parents.iter().map(|s| format!("/{s}")).collect::<String>();
        let one_wild: EndpointPattern = format!("{parent}/*").parse().unwrap();
        let (deeper, deepest) = (format!("{path}/x"), format!("{path}/x/y"));
        prop_assert!(one_wild.matches_path(&path));
        prop_assert!(!one_wild.matches_path(&deeper));
        if !parents.is_empty() {
            let rest: EndpointPattern = format!("{parent}/**").parse().unwrap();
            prop_assert!(rest.matches_path(&path));
            prop_assert!(rest.matches_path(&deepest));
            prop_assert!(!rest.matches_path(&parent));
            let prefix: EndpointPattern = parent.parse().unwrap();
            prop_assert!(!prefix.matches_path(&path));
        }
    }
}
