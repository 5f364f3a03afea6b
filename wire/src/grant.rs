//! Grants, and the keys a backend mints from one without asking the server.
//!
//! A grant is a credential far narrower than the admin token: keys for one vendor, under one
//! label prefix, each within a largest cap, endpoints, methods and lifetime, and all of them
//! together within a daily cap. Its holder derives keys in-process; the proxy checks each one
//! against its grant the first time it sees it.
//!
//! Two token shapes, both with a public part, a secret part and a checksum (as vault tokens), so
//! that secret scanners can recognise them and a mistyped one is refused without a lookup:
//!
//! - a grant credential: `vkg_` + the grant id's 22 characters (public as `grt_…`) + a
//!   43-character secret + a 6-character base62 CRC-32;
//! - a minted key: `vkm_` + the key's caveats (JSON, base64url) + `.` + a 43-character tag
//!   (base64url) + a 6-character base62 CRC-32.
//!
//! The tag is an HMAC chain in the style of macaroons: `HMAC(secret, grant id)`, then each block
//! of caveats folded in with `HMAC(previous, block)`. Only the grant's secret can produce it, and
//! changing a byte of a caveat changes it.
//!
//! ```
//! use vault_key_wire::{EndpointPattern, GrantCredential, KeyCaveats, MintedToken};
//!
//! let grant = GrantCredential::from_parts("grt_0123456789abcdefghijkl", &"s".repeat(43)).unwrap();
//! let caveats = KeyCaveats {
//!     grant_id: grant.id().to_owned(),
//!     key_id: "key_0123456789abcdefghijkl".to_owned(),
//!     label: "run-42/charge".to_owned(),
//!     vendor: "stripe".to_owned(),
//!     daily_cap_micros: 10_000_000,
//!     allowed_endpoints: vec!["/v1/payment_intents".parse::<EndpointPattern>().unwrap()],
//!     allowed_methods: None,
//!     issued_at: 1_700_000_000,
//!     expires_at: 1_700_000_300,
//! };
//! let token = grant.mint(&caveats);
//! let minted = MintedToken::parse(&token).unwrap();
//! assert!(minted.is_signed_by(grant.secret()));
//! assert_eq!(minted.caveats(), &caveats);
//! ```

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::EndpointPattern;

/// Public ids of grants start with this.
pub const GRANT_ID_PREFIX: &str = "grt_";
const GRANT_TOKEN_PREFIX: &str = "vkg_";
const MINTED_PREFIX: &str = "vkm_";
const ID_LEN: usize = 22;
const SECRET_LEN: usize = 43;
const TAG_LEN: usize = 43;
const CHECKSUM_LEN: usize = 6;
/// What follows a minted key's last `.`: its tag and checksum.
pub const MINTED_TAIL_LEN: usize = TAG_LEN + CHECKSUM_LEN;
/// Length of every grant credential.
pub const GRANT_TOKEN_LEN: usize = GRANT_TOKEN_PREFIX.len() + ID_LEN + SECRET_LEN + CHECKSUM_LEN;
/// The longest minted key the proxy reads (its caveats are bounded by the server's own limits on
/// labels and endpoint lists; this bounds the work of refusing a junk one).
pub const MAX_MINTED_TOKEN_LEN: usize = 8 * 1024;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a grant credential or a minted key was not accepted as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not the shape of the token (prefix, length, characters).
    #[error("not a {0}")]
    Malformed(&'static str),
    /// The shape is right but the checksum is not: mistyped or cut.
    #[error("the {0}'s checksum does not match (mistyped or truncated)")]
    Checksum(&'static str),
    /// A minted key whose caveats cannot be read.
    #[error("the minted key's caveats cannot be read: {0}")]
    Caveats(String),
}

/// The base62 CRC-32 of `body`, six characters: the checksum of every vault-key token shape.
pub fn checksum(body: &str) -> String {
    let mut value = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

/// Whether the last six characters of `token` are the checksum of what precedes them.
fn checksum_matches(token: &str) -> bool {
    token.len() > CHECKSUM_LEN && token.is_char_boundary(token.len() - CHECKSUM_LEN) && {
        let (body, sum) = token.split_at(token.len() - CHECKSUM_LEN);
        bool::from(checksum(body).as_bytes().ct_eq(sum.as_bytes()))
    }
}

fn is_base62(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A grant's credential: its public id and the secret keys are minted with. The secret never
/// shows in `Debug`.
#[derive(Clone)]
pub struct GrantCredential {
    id: String,
    secret: String,
}

impl Drop for GrantCredential {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl std::fmt::Debug for GrantCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantCredential")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl GrantCredential {
    /// A credential from a grant id (`grt_` + 22 base62) and its secret (43 base62).
    pub fn from_parts(id: &str, secret: &str) -> Result<GrantCredential, TokenError> {
        let malformed = TokenError::Malformed("grant id and secret");
        let body = id.strip_prefix(GRANT_ID_PREFIX).ok_or(malformed.clone())?;
        if body.len() != ID_LEN
            || !is_base62(body)
            || secret.len() != SECRET_LEN
            || !is_base62(secret)
        {
            return Err(malformed);
        }
        Ok(GrantCredential {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// Reads a grant credential (`vkg_…`), checking its shape and checksum.
    pub fn parse(token: &str) -> Result<GrantCredential, TokenError> {
        const WHAT: &str = "grant credential";
        let rest = token
            .strip_prefix(GRANT_TOKEN_PREFIX)
            .filter(|rest| {
                rest.len() == GRANT_TOKEN_LEN - GRANT_TOKEN_PREFIX.len() && is_base62(rest)
            })
            .ok_or(TokenError::Malformed(WHAT))?;
        if !checksum_matches(token) {
            return Err(TokenError::Checksum(WHAT));
        }
        let (id, secret) = rest[..ID_LEN + SECRET_LEN].split_at(ID_LEN);
        GrantCredential::from_parts(&format!("{GRANT_ID_PREFIX}{id}"), secret)
    }

    /// The credential as its holder keeps it (`vkg_…`).
    pub fn token(&self) -> String {
        let mut token = String::with_capacity(GRANT_TOKEN_LEN);
        token.push_str(GRANT_TOKEN_PREFIX);
        token.push_str(&self.id[GRANT_ID_PREFIX.len()..]);
        token.push_str(&self.secret);
        token.push_str(&checksum(&token));
        token
    }

    /// The grant's public id (`grt_…`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret keys are minted with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Mints a key with these caveats: no server contact. Whether the caveats fit the grant is
    /// the proxy's to judge when the key is first used.
    pub fn mint(&self, caveats: &KeyCaveats) -> String {
        let block = block_of(caveats);
        let tag = chain_tag(&self.id, &self.secret, &[&block]);
        minted_token(&[&block], &tag)
    }

    /// Opens a run budget under this grant: a credential of its own, derived with no server
    /// contact, from which the run's keys are minted. The proxy records the run at its first
    /// key's first use and holds the run's cap across all its keys (and the grant's, as ever).
    pub fn open_run(&self, run: &RunCaveats) -> RunCredential {
        let block = block_of(run);
        let tag = chain_tag(&self.id, &self.secret, &[&block]);
        RunCredential {
            grant_id: self.id.clone(),
            run: run.clone(),
            block,
            tag,
        }
    }
}

/// A run budget's credential: the grant's chain extended by the run's caveats. Its tag is a
/// secret (it mints the run's keys) and never shows in `Debug`.
#[derive(Clone)]
pub struct RunCredential {
    grant_id: String,
    run: RunCaveats,
    block: Vec<u8>,
    tag: [u8; 32],
}

impl Drop for RunCredential {
    fn drop(&mut self) {
        // The tag mints the run's keys.
        self.tag.zeroize();
    }
}

impl std::fmt::Debug for RunCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCredential")
            .field("grant_id", &self.grant_id)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl RunCredential {
    /// The grant the run is under.
    pub fn grant_id(&self) -> &str {
        &self.grant_id
    }

    /// The run's caveats.
    pub fn run(&self) -> &RunCaveats {
        &self.run
    }

    /// Mints a key of the run (`caveats.grant_id` is the grant's id, as for any minted key).
    pub fn mint(&self, caveats: &KeyCaveats) -> String {
        let block = block_of(caveats);
        let tag = chain_tag_from(self.tag, &[&block]);
        minted_token(&[&self.block, &block], &tag)
    }
}

/// Caveats as the bytes a chain signs. Serializing a plain struct of strings and integers
/// cannot fail.
fn block_of(caveats: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(caveats).unwrap_or_default()
}

/// `vkm_` + each block (base64url) and a `.` after it + the tag + the checksum.
fn minted_token(blocks: &[&[u8]], tag: &[u8; 32]) -> String {
    let size: usize = blocks.iter().map(|b| b.len() * 4 / 3 + 2).sum();
    let mut token = String::with_capacity(MINTED_PREFIX.len() + size + 60);
    token.push_str(MINTED_PREFIX);
    for block in blocks {
        URL_SAFE_NO_PAD.encode_string(block, &mut token);
        token.push('.');
    }
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token.push_str(&checksum(&token));
    token
}

/// `HMAC(secret, grant id)`, then each block folded in: `HMAC(previous tag, block)`.
fn chain_tag(grant_id: &str, secret: &str, blocks: &[&[u8]]) -> [u8; 32] {
    chain_tag_from(hmac(secret.as_bytes(), grant_id.as_bytes()), blocks)
}

/// Each block folded into `tag`.
fn chain_tag_from(tag: [u8; 32], blocks: &[&[u8]]) -> [u8; 32] {
    blocks.iter().fold(tag, |tag, block| hmac(&tag, block))
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Whether `label` is under a run's `prefix`: the prefix itself, or the prefix followed by more
/// at a segment boundary (`run-4` takes `run-4/charge`, not `run-42/charge`).
pub fn label_is_under(label: &str, prefix: &str) -> bool {
    label
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'))
}

/// A run budget under a grant: the caveats of the block between the grant and a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunCaveats {
    /// The run's id, public as a grant's (`grt_…`), chosen at random by the minter.
    pub run_id: String,
    /// Every key of the run has a label starting with this; it starts with the grant's prefix.
    pub label_prefix: String,
    /// The daily cap of all the run's keys together, in micro-dollars; at most the grant's.
    pub daily_cap_micros: u64,
    /// When the run ends (Unix seconds); not after the grant's own expiry.
    pub expires_at: i64,
}

/// What a minted key may do: the terms the proxy checks against its grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCaveats {
    /// The grant it is minted from (`grt_…`).
    pub grant_id: String,
    /// The key's public id (`key_…`), chosen at random by the minter.
    pub key_id: String,
    /// Its label; must start with the grant's label prefix.
    pub label: String,
    /// Its vendor; the grant's.
    pub vendor: String,
    /// Its daily cap in micro-dollars; at most the grant's largest key cap.
    pub daily_cap_micros: u64,
    /// Its endpoints; each within one of the grant's.
    pub allowed_endpoints: Vec<EndpointPattern>,
    /// Its methods (`None`: the grant's); each one the grant allows.
    pub allowed_methods: Option<Vec<String>>,
    /// When it was minted (Unix seconds).
    pub issued_at: i64,
    /// When it expires (Unix seconds); at most the grant's longest key lifetime after
    /// `issued_at`, and not after the grant's own expiry.
    pub expires_at: i64,
}

/// A minted key as presented: its caveats, and the tag that proves who minted them. (Its blocks
/// and tag together are the bearer token: `Debug` shows the caveats only.)
#[derive(Clone)]
pub struct MintedToken {
    run: Option<RunCaveats>,
    caveats: KeyCaveats,
    blocks: Vec<Vec<u8>>,
    tag: [u8; 32],
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("run", &self.run)
            .field("caveats", &self.caveats)
            .finish_non_exhaustive()
    }
}

impl MintedToken {
    /// Reads a minted key (`vkm_…`): shape, checksum and caveats; not yet whether it is signed.
    pub fn parse(token: &str) -> Result<MintedToken, TokenError> {
        const WHAT: &str = "minted key";
        if !is_minted_token(token) {
            return Err(if looks_minted(token) {
                TokenError::Checksum(WHAT)
            } else {
                TokenError::Malformed(WHAT)
            });
        }
        let body = &token[MINTED_PREFIX.len()..token.len() - CHECKSUM_LEN];
        let (blocks, tag) = body.rsplit_once('.').ok_or(TokenError::Malformed(WHAT))?;
        let tag: [u8; 32] = URL_SAFE_NO_PAD
            .decode(tag)
            .ok()
            .and_then(|tag| tag.try_into().ok())
            .ok_or(TokenError::Malformed(WHAT))?;
        let blocks = blocks
            .split('.')
            .map(|block| URL_SAFE_NO_PAD.decode(block))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TokenError::Malformed(WHAT))?;
        let caveats_error = |e: serde_json::Error| TokenError::Caveats(e.to_string());
        // A key's caveats, under at most one run's.
        let (run, caveats) = match &blocks[..] {
            [key] => (None, serde_json::from_slice(key).map_err(caveats_error)?),
            [run, key] => (
                Some(serde_json::from_slice(run).map_err(caveats_error)?),
                serde_json::from_slice(key).map_err(caveats_error)?,
            ),
            _ => return Err(TokenError::Malformed(WHAT)),
        };
        Ok(MintedToken {
            run,
            caveats,
            blocks,
            tag,
        })
    }

    /// The run it was minted under, if any.
    pub fn run(&self) -> Option<&RunCaveats> {
        self.run.as_ref()
    }

    /// Its caveats.
    pub fn caveats(&self) -> &KeyCaveats {
        &self.caveats
    }

    /// Whether the grant with this secret minted it, exactly as it reads (constant time).
    pub fn is_signed_by(&self, grant_secret: &str) -> bool {
        let blocks: Vec<&[u8]> = self.blocks.iter().map(Vec::as_slice).collect();
        let expected = chain_tag(&self.caveats.grant_id, grant_secret, &blocks);
        expected.ct_eq(&self.tag).into()
    }
}

/// The shape of a minted key, without its checksum checked.
fn looks_minted(candidate: &str) -> bool {
    candidate.len() <= MAX_MINTED_TOKEN_LEN
        && candidate.starts_with(MINTED_PREFIX)
        && candidate[MINTED_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && (1..=2).contains(
            &candidate[MINTED_PREFIX.len()..]
                .bytes()
                .filter(|b| *b == b'.')
                .count(),
        )
        && candidate
            .rsplit_once('.')
            .is_some_and(|(_, tail)| tail.len() == TAG_LEN + CHECKSUM_LEN)
}

/// Whether `candidate` has the shape and checksum of a minted key.
pub fn is_minted_token(candidate: &str) -> bool {
    looks_minted(candidate) && checksum_matches(candidate)
}

/// Whether `candidate` has the shape and checksum of a grant credential.
pub fn is_grant_token(candidate: &str) -> bool {
    GrantCredential::parse(candidate).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> GrantCredential {
        GrantCredential::from_parts("grt_AAAAAAAAAAAAAAAAAAAAAA", &"k".repeat(SECRET_LEN)).unwrap()
    }

    fn caveats() -> KeyCaveats {
        KeyCaveats {
            grant_id: grant().id().to_owned(),
            key_id: "key_BBBBBBBBBBBBBBBBBBBBBB".to_owned(),
            label: "run-1/charge".to_owned(),
            vendor: "stripe".to_owned(),
            daily_cap_micros: 10_000_000,
            allowed_endpoints: vec!["/v1/payment_intents".parse().unwrap()],
            allowed_methods: Some(vec!["POST".to_owned()]),
            issued_at: 1_000,
            expires_at: 1_300,
        }
    }

    #[test]
    fn a_grant_credential_reads_back_and_a_typo_is_caught() {
        let token = grant().token();
        assert_eq!(token.len(), GRANT_TOKEN_LEN);
        let read = GrantCredential::parse(&token).unwrap();
        assert_eq!((read.id(), read.secret()), (grant().id(), grant().secret()));
        let mut typo = token.clone().into_bytes();
        typo[30] = if typo[30] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert_eq!(
            GrantCredential::parse(&typo).unwrap_err(),
            TokenError::Checksum("grant credential")
        );
        assert!(GrantCredential::parse(&token[1..]).is_err());
        assert!(!format!("{:?}", grant()).contains(grant().secret()));
    }

    #[test]
    fn a_minted_key_verifies_only_against_its_grant_and_only_as_minted() {
        let token = grant().mint(&caveats());
        assert!(is_minted_token(&token));
        let minted = MintedToken::parse(&token).unwrap();
        assert!(minted.is_signed_by(grant().secret()));
        assert!(!minted.is_signed_by(&"x".repeat(SECRET_LEN)));

        // Caveats changed by the holder: a different block under the same tag.
        let mut wider = caveats();
        wider.daily_cap_micros = 1_000_000_000;
        let forged_block = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).unwrap());
        let tag = token[..token.len() - CHECKSUM_LEN]
            .rsplit_once('.')
            .unwrap()
            .1;
        let mut forged = format!("{MINTED_PREFIX}{forged_block}.{tag}");
        forged.push_str(&checksum(&forged));
        let forged = MintedToken::parse(&forged).unwrap();
        assert_eq!(forged.caveats(), &wider);
        assert!(!forged.is_signed_by(grant().secret()));

        // A byte off anywhere is a checksum error, not a different key.
        let mut typo = token.clone().into_bytes();
        typo[10] ^= 1;
        assert!(MintedToken::parse(&String::from_utf8(typo).unwrap()).is_err());
    }

    #[test]
    fn a_run_extends_the_chain_and_only_its_own_keys_verify() {
        let run = RunCaveats {
            run_id: "grt_RRRRRRRRRRRRRRRRRRRRRR".to_owned(),
            label_prefix: "run-1/".to_owned(),
            daily_cap_micros: 5_000_000,
            expires_at: 1_200,
        };
        let credential = grant().open_run(&run);
        let token = credential.mint(&caveats());
        assert!(is_minted_token(&token));
        let minted = MintedToken::parse(&token).unwrap();
        assert_eq!(minted.run(), Some(&run));
        assert!(minted.is_signed_by(grant().secret()));
        let resign = |body: String| {
            let mut token = format!("{MINTED_PREFIX}{body}");
            token.push_str(&checksum(&token));
            MintedToken::parse(&token).unwrap()
        };
        let inner = &token[MINTED_PREFIX.len()..token.len() - CHECKSUM_LEN];
        let (_, key_and_tag) = inner.split_once('.').unwrap();
        // The run's block edited (a larger cap): the chain no longer verifies.
        let mut richer = run.clone();
        richer.daily_cap_micros = 5_000_000_000;
        let edited = resign(format!(
            "{}.{key_and_tag}",
            URL_SAFE_NO_PAD.encode(block_of(&richer))
        ));
        assert!(!edited.is_signed_by(grant().secret()));
        // The run's key without its run block: not signed by the grant either.
        assert!(!resign(key_and_tag.to_owned()).is_signed_by(grant().secret()));
        assert!(!format!("{credential:?}").contains(grant().secret()));
    }

    #[test]
    fn junk_is_not_a_minted_key() {
        for junk in [
            "",
            "vkm_",
            "vkm_.x",
            "vk_abc",
            "vkm_a.b.c",
            &format!("vkm_{}", "a".repeat(10_000)),
        ] {
            assert!(!is_minted_token(junk), "{junk}");
            assert!(MintedToken::parse(junk).is_err(), "{junk}");
        }
        // The right shape with caveats that are not caveats.
        let mut token = format!(
            "{MINTED_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(b"{}"),
            "A".repeat(TAG_LEN)
        );
        token.push_str(&checksum(&token));
        assert!(matches!(
            MintedToken::parse(&token),
            Err(TokenError::Caveats(_))
        ));
    }
}
