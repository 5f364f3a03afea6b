//! The `#[vault_key]` attribute. Use it through the `vault-key` crate (`vault_key::vault_key`),
//! whose documentation describes it with examples; this crate only parses, validates and expands.
//!
//! Set `VAULT_KEY_MACROS_DEBUG=1` while compiling to print each expansion to stderr.

#![forbid(unsafe_code)]

mod args;
mod expand;
mod validate;

use proc_macro::TokenStream;
use quote::ToTokens;

/// Issues a scoped vendor key when the function is entered, hands it to the function (and to
/// `vault_key::current()`), and revokes it however the function ends. See `vault_key::vault_key`.
#[proc_macro_attribute]
pub fn vault_key(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let function: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => return with_original(not_a_function(&item), item),
    };
    let expanded = args::parse(attr.into()).and_then(|args| validate::plan(args, &function));
    let tokens = match expanded {
        Ok(plan) => expand::expand(plan, function),
        Err(error) => {
            // The function as it would be on success, so that the attribute's errors are the
            // only ones: no "takes 1 argument" at every caller, no `Handler` error at every route.
            let key_params = validate::key_like_params(&function);
            let mut tokens = error.to_compile_error();
            tokens.extend(expand::inert(function, &key_params));
            tokens
        }
    };
    if std::env::var_os("VAULT_KEY_MACROS_DEBUG").is_some() {
        eprintln!("{tokens}");
    }
    tokens.into()
}

/// Why the attribute's item is not one it can rewrite.
fn not_a_function(item: &proc_macro2::TokenStream) -> syn::Error {
    if let Ok(method) = syn::parse2::<syn::TraitItemFn>(item.clone()) {
        if method.default.is_none() {
            return syn::Error::new_spanned(
                &method.sig,
                "#[vault_key] needs the function's body: put it on the method in the `impl` block, \
                 not on its declaration in the trait",
            );
        }
    }
    syn::Error::new(
        proc_macro2::Span::call_site(),
        "#[vault_key] goes on an `async fn` (a free function, a method or an Axum handler); \
         it cannot go on a closure, a struct or another item",
    )
}

/// The errors, and the user's item untouched: the rest of the crate keeps type-checking and the
/// IDE keeps completing (tokio's `token_stream_with_error`).
fn with_original(error: syn::Error, item: proc_macro2::TokenStream) -> TokenStream {
    let mut tokens = error.to_compile_error();
    item.to_tokens(&mut tokens);
    tokens.into()
}
