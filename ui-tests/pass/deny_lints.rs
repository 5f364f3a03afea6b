//! Generated code must never trip its users' lints.
#![deny(warnings, unused_qualifications, unused_results, unreachable_pub)]
#![forbid(unsafe_code)]

use vault_key::{vault_key, VaultKey};

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], label = "lint-{n}")]
async fn tidy(n: u8, key: &VaultKey) -> Result<String, vault_key::Error> {
    Ok(format!("{n}{}", key.id()))
}

#[vault_key(vendor = "stripe", cap = 5, endpoints = ["/v1/customers"], on_issue_error = "continue", revoke = "await")]
async fn tidy_open() -> u8 {
    0
}

fn main() {
    drop(tidy(1));
    drop(tidy_open());
}
