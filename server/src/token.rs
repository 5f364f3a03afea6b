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
    token.push_str(&vault_key_wire::checksum(&token));
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
            bool::from(
                vault_key_wire::checksum(body)
                    .as_bytes()
                    .ct_eq(sum.as_bytes()),
            )
        }
}

/// Whether a well-formed vault token appears anywhere in `bytes` (a path, a query, a header
/// value, a body): such a request is refused rather than forwarded, logged or stored with the
/// token in it.
pub fn appears_in(bytes: &[u8]) -> bool {
    let fixed = |len: usize, prefix: &[u8], well_formed: fn(&str) -> bool| {
        bytes
            .windows(len)
            .filter(|window| window.starts_with(prefix))
            .any(|window| std::str::from_utf8(window).is_ok_and(well_formed))
    };
    fixed(TOKEN_LEN, PREFIX.as_bytes(), is_well_formed)
        || fixed(
            vault_key_wire::GRANT_TOKEN_LEN,
            b"vkg_",
            vault_key_wire::is_grant_token,
        )
        || minted_token_in(bytes)
}

/// Whether a minted key (`vkm_…`, of any length) appears in `bytes`, in time linear in their
/// length whatever they hold. A minted key is `vkm_`, one or two blocks, each followed by a `.`,
/// then a tag and checksum of fixed length; so each `vkm_` can end only right after its first or
/// second `.`, and those two candidates are all that is checked (text may follow the key). Past
/// a handful of token-shaped candidates the input is taken to hold one: nothing honest looks
/// like that many keys, and checking each would cost a checksum over up to 8 KiB.
fn minted_token_in(bytes: &[u8]) -> bool {
    const MOST_CANDIDATES: usize = 16;
    let is_token_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let mut candidates = Vec::new();
    let mut run_start = 0;
    while run_start < bytes.len() {
        let run_len = bytes[run_start..]
            .iter()
            .position(|&b| !is_token_byte(b))
            .unwrap_or(bytes.len() - run_start);
        let run = &bytes[run_start..run_start + run_len];
        // The first dot after a start, the one after it, and the one after that: each found by
        // a cursor that only moves forward, as the starts do.
        let (mut first, mut second, mut third) = (
            DotCursor::new(run),
            DotCursor::new(run),
            DotCursor::new(run),
        );
        for start in (0..run.len().saturating_sub(3)).filter(|&i| &run[i..i + 4] == b"vkm_") {
            let Some(d1) = first.at_or_after(start + 4) else {
                break;
            };
            let d2 = second.at_or_after(d1 + 1);
            let d3 = d2.and_then(|d2| third.at_or_after(d2 + 1));
            for (dot, next_dot) in [(Some(d1), d2), (d2, d3)] {
                let Some(dot) = dot else { continue };
                let end = dot + 1 + vault_key_wire::MINTED_TAIL_LEN;
                let tail_has_no_dot = next_dot.is_none_or(|next| next >= end);
                if end <= run.len()
                    && tail_has_no_dot
                    && end - start <= vault_key_wire::MAX_MINTED_TOKEN_LEN
                {
                    candidates.push(run_start + start..run_start + end);
                    if candidates.len() > MOST_CANDIDATES {
                        return true;
                    }
                }
            }
        }
        run_start += run_len.max(1);
    }
    candidates.into_iter().any(|candidate| {
        std::str::from_utf8(&bytes[candidate]).is_ok_and(vault_key_wire::is_minted_token)
    })
}

/// The positions of `.` in a run, asked for in increasing order.
struct DotCursor<'a> {
    run: &'a [u8],
    at: usize,
}

impl<'a> DotCursor<'a> {
    fn new(run: &'a [u8]) -> DotCursor<'a> {
        DotCursor { run, at: 0 }
    }

    /// The first `.` at or after `from` (never asked for an earlier `from` than before).
    fn at_or_after(&mut self, from: usize) -> Option<usize> {
        self.at = self.at.max(from);
        while self.at < self.run.len() && self.run[self.at] != b'.' {
            self.at += 1;
        }
        (self.at < self.run.len()).then_some(self.at)
    }
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

    #[test]
    fn grant_credentials_and_minted_keys_are_found_wherever_they_appear() {
        let grant = vault_key_wire::GrantCredential::from_parts(
            "grt_0123456789abcdefghijkl",
            &"S".repeat(43),
        )
        .unwrap();
        let minted = grant.mint(&vault_key_wire::KeyCaveats {
            grant_id: grant.id().to_owned(),
            key_id: generate_key_id(),
            label: "run-1/x".to_owned(),
            vendor: "stripe".to_owned(),
            daily_cap_micros: 1_000_000,
            allowed_endpoints: vec!["/v1/customers".parse().unwrap()],
            allowed_methods: None,
            issued_at: 0,
            expires_at: 60,
        });
        for token in [grant.token(), minted.clone()] {
            for text in [
                token.clone(),
                format!("description={token}&amount=1"),
                format!("see {token}."),
                format!("{{\"note\": \"{token}-\"}}"),
            ] {
                assert!(appears_in(text.as_bytes()), "{text}");
            }
        }
        // Followed by more text, it is still found.
        for trailing in ["abc", ".com", "xyz123"] {
            assert!(
                appears_in(format!("note:{minted}{trailing}").as_bytes()),
                "{trailing}"
            );
        }
        // One character changed: no longer a token (the checksum says so), so not refused.
        let typo = minted.replacen("vkm_e", "vkm_f", 1);
        assert_ne!(typo, minted);
        assert!(!appears_in(typo.as_bytes()));
        assert!(!appears_in(b"vkm_ and vkg_ in prose"));
    }

    #[test]
    fn token_shaped_junk_is_refused_past_a_handful_of_candidates_and_long_runs_find_nothing() {
        // Every `vkm_` of these shares a tail: checked one by one, each would cost a checksum
        // over kilobytes. Past a handful of candidates the body is refused instead.
        let junk = format!("{}.{}", "vkm_".repeat(2_000), "A".repeat(49));
        assert!(appears_in(junk.as_bytes()));
        // Many short token shapes, each its own candidate: past the cap, refused.
        let shapes = format!("vkm_A.{}", "A".repeat(49)).repeat(17);
        assert!(appears_in(shapes.as_bytes()));
        // A few are checked one by one: none has the right checksum.
        assert!(!appears_in(
            format!("vkm_A.{}", "A".repeat(49)).repeat(3).as_bytes()
        ));
        assert!(!appears_in("vkm_A.".repeat(200_000).as_bytes()));
        // Long runs with no tail: no candidate at all, nothing found. (How long the scan takes is
        // the bench's to say, not a test's; what a test can hold is that these inputs, which cost
        // the first scanner minutes, now give these answers.)
        for body in [
            "vkm_".repeat(250_000),
            format!("vkm_{}", ".".repeat(1_000_000)),
        ] {
            assert!(!appears_in(body.as_bytes()));
        }
    }
}
