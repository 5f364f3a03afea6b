//! What a key allows, checked on its typed terms: its state, its vendor, the methods and paths it
//! may use. Each check answers with the [`Refusal`] that applies, in the order of the wire
//! contract's table; the meter (what a call costs) and the store (whether it fits the cap) come
//! after these, in the proxy.

use std::sync::Arc;

use http::Method;
use time::OffsetDateTime;

use crate::app::LiveVendor;
use crate::proxy::Refusal;
use crate::store::KeyRecord;
use vault_key_wire::KeyStatus;

/// Revoked or expired keys are refused. The proxy checks this when the key is found and again
/// immediately before the money moves (inside the reservation, or after a body has arrived).
pub(crate) fn check_state(key: &KeyRecord, now: OffsetDateTime) -> Result<(), Refusal> {
    usable(key.status(now))
}

/// A status as the proxy answers it: active goes on, revoked and expired are refused (a minted
/// key's grant and run are held to this too).
pub(crate) fn usable(status: KeyStatus) -> Result<(), Refusal> {
    match status {
        KeyStatus::Active => Ok(()),
        KeyStatus::Revoked => Err(Refusal::KeyRevoked),
        KeyStatus::Expired => Err(Refusal::KeyExpired),
    }
}

/// The vendor of the route must be the key's.
pub(crate) fn check_vendor<'a>(
    key: &KeyRecord,
    route_vendor: Option<&'a Arc<LiveVendor>>,
) -> Result<&'a Arc<LiveVendor>, Refusal> {
    route_vendor
        .filter(|v| v.vendor.name == key.vendor)
        .ok_or_else(|| Refusal::VendorMismatch {
            key_vendor: key.vendor.clone(),
        })
}

/// The method must be one the vendor's API uses.
pub(crate) fn check_vendor_method(vendor: &LiveVendor, method: &Method) -> Result<(), Refusal> {
    if vendor.vendor.methods.contains(method) {
        Ok(())
    } else {
        Err(Refusal::MethodNotUsed)
    }
}

/// The canonical path must match one of the key's patterns, and the method be one it allows.
pub(crate) fn check_route(key: &KeyRecord, method: &Method, path: &str) -> Result<(), Refusal> {
    if !key.allowed_endpoints.iter().any(|p| p.matches_path(path)) {
        return Err(Refusal::EndpointNotAllowed(path.to_owned()));
    }
    match &key.allowed_methods {
        Some(methods) if !methods.contains(method) => {
            Err(Refusal::MethodNotAllowed(method.to_string()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenHash;
    use vault_key_wire::Usd;

    fn key(methods: Option<Vec<Method>>) -> KeyRecord {
        let now = OffsetDateTime::now_utc();
        KeyRecord {
            id: "key_1".to_owned(),
            token_hash: TokenHash([0; 32]),
            label: "l".to_owned(),
            vendor: "stripe".to_owned(),
            daily_cap: Usd::from_micros(1),
            allowed_endpoints: vec!["/v1/charges/*".parse().unwrap()],
            allowed_methods: methods,
            created_at: now,
            expires_at: now + time::Duration::minutes(5),
            revoked_at: None,
            requests: 0,
            refusals: 0,
            grant_id: None,
        }
    }

    #[test]
    fn routes_are_checked_against_typed_terms() {
        let open = key(None);
        assert!(check_route(&open, &Method::POST, "/v1/charges/ch_1").is_ok());
        assert!(matches!(
            check_route(&open, &Method::POST, "/v1/charges"),
            Err(Refusal::EndpointNotAllowed(_))
        ));
        let read_only = key(Some(vec![Method::GET]));
        assert!(matches!(
            check_route(&read_only, &Method::POST, "/v1/charges/ch_1"),
            Err(Refusal::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn revocation_wins_over_expiry() {
        let mut key = key(None);
        let later = key.expires_at + time::Duration::seconds(1);
        assert!(matches!(check_state(&key, later), Err(Refusal::KeyExpired)));
        key.revoked_at = Some(key.created_at);
        assert!(matches!(check_state(&key, later), Err(Refusal::KeyRevoked)));
    }
}
