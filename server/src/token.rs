//! Vault tokens: `vk_` + 43 random base62 characters (256 bits) + a 6-character base62 CRC-32 of
//! what precedes it, in the style of GitHub's tokens, so secret scanners can recognise a vault
//! token, and the proxy can reject a mistyped one, without a database lookup.
//!
//! The server keeps only the SHA-256 of a token. Tokens are full-entropy random strings, so a
//! plain hash cannot be reversed by guessing, and a lookup by hash reveals nothing useful about
//! timing; the final comparison is still constant-time.

use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "vk_";
const RANDOM_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// Length of every vault token.
pub const TOKEN_LEN: usize = PREFIX.len() + RANDOM_LEN + CHECKSUM_LEN;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The SHA-256 of a token: all the server stores.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a token.
    pub fn of(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time equality.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// A new random token, and its hash.
pub fn generate() -> (SecretString, TokenHash) {
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(PREFIX);
    Alphanumeric.append_string(&mut rand::rng(), &mut token, RANDOM_LEN);
    token.push_str(&checksum(&token));
    let hash = TokenHash::of(&token);
    (SecretString::from(token), hash)
}

/// Whether `candidate` has the shape and checksum of a vault token. Says nothing about whether
/// the server ever issued it.
pub fn is_well_formed(candidate: &str) -> bool {
    candidate.len() == TOKEN_LEN
        && candidate.starts_with(PREFIX)
        && candidate
            .bytes()
            .skip(PREFIX.len())
            .all(|b| b.is_ascii_alphanumeric())
        && {
            let (body, sum) = candidate.split_at(TOKEN_LEN - CHECKSUM_LEN);
            bool::from(checksum(body).as_bytes().ct_eq(sum.as_bytes()))
        }
}

/// Whether a well-formed vault token appears anywhere in `bytes` (a path, a query, a header
/// value, a body): such a request is refused rather than forwarded, logged or stored with the
/// token in it.
pub fn appears_in(bytes: &[u8]) -> bool {
    bytes
        .windows(TOKEN_LEN)
        .filter(|window| window.starts_with(PREFIX.as_bytes()))
        .any(|window| std::str::from_utf8(window).is_ok_and(is_well_formed))
}

/// Whether a vault token appears in a body as it is, once its form encoding is decoded
/// (`%76k_…`), or once its JSON escapes are (`\u0076k_…`): any way, it would reach the vendor
/// as a token.
pub fn appears_in_body(body: &[u8]) -> bool {
    appears_in(body)
        || form_urlencoded::parse(body)
            .any(|(name, value)| appears_in(name.as_bytes()) || appears_in(value.as_bytes()))
        || (has_json_escape(body)
            && serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| in_json(&v)))
}

/// Whether `body` has a JSON `\u` escape (the only escape that can spell a token's characters).
fn has_json_escape(body: &[u8]) -> bool {
    body.windows(2).any(|pair| pair == b"\\u")
}

fn in_json(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) => appears_in(text.as_bytes()),
        Value::Array(items) => items.iter().any(in_json),
        Value::Object(map) => map
            .iter()
            .any(|(key, value)| appears_in(key.as_bytes()) || in_json(value)),
        _ => false,
    }
}

/// A public id for a key: `key_` + 22 base62 characters (131 bits). Safe to log.
pub fn generate_key_id() -> String {
    let mut id = String::from("key_");
    Alphanumeric.append_string(&mut rand::rng(), &mut id, 22);
    id
}

/// Whether `id` has the shape [`generate_key_id`] gives.
pub fn looks_like_key_id(id: &str) -> bool {
    id.strip_prefix("key_")
        .is_some_and(|rest| rest.len() == 22 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

/// Whether a presented token hashes to `stored`.
pub fn verify(presented: &SecretString, stored: &TokenHash) -> bool {
    TokenHash::of(presented.expose_secret()).matches(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let (a, hash_a) = generate();
        let (b, _) = generate();
        assert!(is_well_formed(a.expose_secret()));
        assert_eq!(a.expose_secret().len(), TOKEN_LEN);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(verify(&a, &hash_a));
        assert!(!verify(&b, &hash_a));
    }

    #[test]
    fn a_changed_character_breaks_the_checksum() {
        let (token, _) = generate();
        let token = token.expose_secret();
        let mut bytes = token.as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        assert!(!is_well_formed(std::str::from_utf8(&bytes).unwrap()));
        assert!(!is_well_formed(&token[..TOKEN_LEN - 1]));
        assert!(!is_well_formed(&format!("{token}x")));
        assert!(!is_well_formed(&token.replacen("vk_", "sk_", 1)));
    }

    #[test]
    fn a_token_is_found_inside_other_text() {
        let (token, _) = generate();
        let token = token.expose_secret();
        assert!(appears_in(format!("/v1/customers/{token}/x").as_bytes()));
        assert!(appears_in(token.as_bytes()));
        assert!(!appears_in(&token.as_bytes()[..TOKEN_LEN - 1]));
        assert!(!appears_in(b"/v1/customers/vk_short"));
        let escaped = format!("description=%76k_{}", &token[3..]);
        assert!(!appears_in(escaped.as_bytes()));
        assert!(appears_in_body(escaped.as_bytes()));
        assert!(!appears_in_body(b"description=plain"));
        let json = format!(
            r#"{{"messages":[{{"content":"\u0076k_{}"}}]}}"#,
            &token[3..]
        );
        assert!(!appears_in(json.as_bytes()));
        assert!(appears_in_body(json.as_bytes()));
        assert!(!appears_in_body(br#"{"content":"\u0076k_short"}"#));
    }

    #[test]
    fn hash_debug_shows_nothing() {
        let (_, hash) = generate();
        assert_eq!(format!("{hash:?}"), "TokenHash(..)");
    }
}
