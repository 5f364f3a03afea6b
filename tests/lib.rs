//! End-to-end tests live in `patterns.rs`; this crate has no code of its own.
