//! Code generation: a thin wrapper that calls `::vault_key::__private`, where the logic lives.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

use crate::validate::{KeyKind, Plan};

/// A generated local, invisible to the user's code (mixed-site hygiene).
fn local(name: &str) -> syn::Ident {
    format_ident!("__vault_key_{}", name, span = Span::mixed_site())
}

/// The function, rewritten to issue its key on entry and revoke it however it ends.
pub fn expand(plan: Plan, mut function: ItemFn) -> TokenStream {
    let key = local("key");
    let body_key = local("body_key");
    let owned = local("owned");
    let body = local("body");
    let output = local("output");

    // The key parameter leaves the signature: Axum (or any caller) sees only the other inputs.
    let key_binding = plan.key_param.as_ref().map(|param| {
        let removed = function.sig.inputs.iter().nth(param.index).cloned();
        function.sig.inputs = function
            .sig
            .inputs
            .iter()
            .enumerate()
            .filter(|(index, _)| *index != param.index)
            .map(|(_, input)| input.clone())
            .collect();
        let Some(FnArg::Typed(typed)) = removed else {
            unreachable!("validation found a typed key parameter at this index")
        };
        let (pat, ty) = (&typed.pat, &typed.ty);
        match (param.kind, plan.fail_open) {
            (KeyKind::Ref, _) => quote! { let #owned = #body_key; let #pat: #ty = &#owned; },
            (KeyKind::Arc, _) | (KeyKind::OptionArc, true) => quote! { let #pat: #ty = #body_key; },
            (KeyKind::OptionRef, false) => {
                quote! { let #owned = #body_key; let #pat: #ty = ::core::option::Option::Some(&*#owned); }
            }
            (KeyKind::OptionRef, true) => {
                quote! { let #owned = #body_key; let #pat: #ty = ::core::option::Option::as_deref(&#owned); }
            }
            (KeyKind::OptionArc, false) => quote! { let #pat: #ty = ::core::option::Option::Some(#body_key); },
        }
    });

    let Plan {
        vendor,
        cap_micros,
        endpoints,
        ttl_secs,
        methods,
        label,
        client,
        fail_open,
        revoke_await,
        ..
    } = plan;
    let methods = match methods {
        Some(methods) => quote! { ::core::option::Option::Some(&[#(#methods),*]) },
        None => quote! { ::core::option::Option::None },
    };
    let fn_name = function.sig.ident.to_string();
    let label = match label {
        // The user's literal, so that `{param}` captures resolve among the user's parameters.
        Some(label) => quote! { ::std::format!(#label) },
        None => {
            quote! { ::std::string::String::from(::core::concat!(::core::module_path!(), "::", #fn_name)) }
        }
    };
    let client = match client {
        Some(path) => quote! { ::vault_key::__private::IntoClient::into_client(#path()) },
        None => quote! { ::vault_key::default_client() },
    };
    let spec = quote! { ::vault_key::__private::spec(#vendor, #cap_micros, &[#(#endpoints),*], #ttl_secs, #methods, #label) };

    let return_type = match &function.sig.output {
        ReturnType::Default => quote! { () },
        ReturnType::Type(_, ty) => quote! { #ty },
    };
    let return_span = match &function.sig.output {
        ReturnType::Default => function.sig.paren_token.span.close(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    // A never-taken `return` of the declared type (after tracing's `fake_return_edge`): the body's
    // type errors then point at the user's code and return type, not at this attribute.
    let fake_return = if returns_impl_trait(&function.sig.output) {
        quote! {}
    } else {
        let fake = local("fake_return");
        quote! {
            #[allow(unreachable_code, clippy::empty_loop, clippy::diverging_sub_expression)]
            if false {
                let #fake: #return_type = loop {};
                return #fake;
            }
        }
    };

    let issue = if fail_open {
        quote! { let #key = ::vault_key::__private::issue_or_continue(#client, #spec).await; }
    } else {
        let error = format_ident!("__vault_key_error", span = return_span);
        // Spanned at the return type: a missing `From<vault_key::Error>` is reported there.
        let early_return = quote_spanned! {return_span=>
            return ::core::result::Result::Err(::vault_key::__private::FromIssueError::from_issue_error(#error))
        };
        quote! {
            let #key = match ::vault_key::__private::issue(#client, #spec).await {
                ::core::result::Result::Ok(key) => key,
                ::core::result::Result::Err(#error) => #early_return,
            };
        }
    };
    let pass_key = key_binding
        .as_ref()
        .map(|_| quote! { let #body_key = ::core::clone::Clone::clone(&#key); });
    let user_block = &function.block;
    let send_span = function.sig.ident.span();
    // Spanned at the function's name: a body that is not `Send` is reported at the function.
    let body_future = quote_spanned! {send_span=>
        ::vault_key::__private::body_must_be_send(async move {
            #key_binding
            #fake_return
            #user_block
        })
    };
    let scoped = if fail_open {
        quote! { ::vault_key::__private::maybe_scope(::core::clone::Clone::clone(&#key), #body).await }
    } else {
        quote! { ::vault_key::__private::scope(::core::clone::Clone::clone(&#key), #body).await }
    };
    let revoke = if revoke_await {
        quote! { ::vault_key::__private::revoke_now(#key).await; }
    } else {
        quote! { ::core::mem::drop(#key); }
    };

    let new_block = quote! {
        {
            #issue
            #pass_key
            let #body = #body_future;
            let #output = #scoped;
            #revoke
            #output
        }
    };
    let ItemFn {
        attrs, vis, sig, ..
    } = function;
    quote! {
        #(#attrs)*
        #vis #sig #new_block
    }
}

fn returns_impl_trait(output: &ReturnType) -> bool {
    fn contains_impl(ty: &Type) -> bool {
        match ty {
            Type::ImplTrait(_) => true,
            Type::Path(path) => path
                .path
                .segments
                .iter()
                .any(|segment| match &segment.arguments {
                    syn::PathArguments::AngleBracketed(angle) => angle.args.iter().any(
                        |arg| matches!(arg, syn::GenericArgument::Type(t) if contains_impl(t)),
                    ),
                    _ => false,
                }),
            Type::Tuple(tuple) => tuple.elems.iter().any(contains_impl),
            Type::Reference(reference) => contains_impl(&reference.elem),
            Type::Paren(paren) => contains_impl(&paren.elem),
            _ => false,
        }
    }
    matches!(output, ReturnType::Type(_, ty) if contains_impl(ty))
}

/// The function as it would be on success, for when the attribute has errors: the key
/// parameters leave the signature (so callers and routers see what they would), and the body
/// still type-checks against a stand-in key that never runs. The attribute's own errors are then
/// the only ones (as tokio's entry macros do, expanding with a default configuration).
pub fn inert(mut function: ItemFn, key_params: &[usize]) -> TokenStream {
    let mut bindings = Vec::new();
    function.sig.inputs = function
        .sig
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(index, input)| {
            if !key_params.contains(&index) {
                return Some(input.clone());
            }
            if let FnArg::Typed(typed) = input {
                let (pat, ty) = (&typed.pat, &typed.ty);
                bindings.push(quote! { let #pat: #ty = ::vault_key::__private::inert(); });
            }
            None
        })
        .collect();
    let block = &function.block;
    let ItemFn {
        attrs, vis, sig, ..
    } = &function;
    quote! {
        #(#attrs)*
        #vis #sig {
            #(#bindings)*
            #block
        }
    }
}
