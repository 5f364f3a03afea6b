//! The `#[vault_key(...)]` attribute's arguments, parsed, validated and expanded against an
//! annotated handler, as the compiler would run them. Input: the text between the parentheses.
//!
//! Invariants: no panic (a panicking proc macro is an ICE-like error at the user's call site);
//! a refused argument list always comes with a message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_key_fuzz::{args, expand, validate};

const FUNCTION: &str =
    "async fn charge(key: &VaultKey, order: u64) -> Result<u64, AppError> { Ok(order) }";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(attr) = text.parse::<proc_macro2::TokenStream>() else {
        return;
    };
    let function: syn::ItemFn = syn::parse_str(FUNCTION).unwrap();
    match args::parse(attr).and_then(|args| validate::plan(args, &function)) {
        Ok(plan) => {
            let expanded = expand::expand(plan, function);
            syn::parse2::<syn::ItemFn>(expanded).expect("the expansion is a function");
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            let key_params = validate::key_like_params(&function);
            let _ = expand::inert(function, &key_params);
        }
    }
});
