//! Compile-time and behaviour tests of `#[vault_key]`; see `README.md`.
