//! Checking everything that can be checked at compile time, each error at the offending token,
//! with one grammar shared with the server (`vault-key-wire`): a pattern or duration the attribute
//! accepts is one the server accepts.

use std::collections::BTreeSet;

use proc_macro2::Span;
use syn::{FnArg, GenericArgument, ItemFn, LitStr, Pat, PathArguments, ReturnType, Type};
use vault_key_wire::{parse_duration, EndpointPattern, Usd};

use crate::args::{Args, Errors};

/// How the function receives its key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `&VaultKey`
    Ref,
    /// `Arc<VaultKey>`
    Arc,
    /// `Option<&VaultKey>`
    OptionRef,
    /// `Option<Arc<VaultKey>>`
    OptionArc,
}

impl KeyKind {
    fn is_option(self) -> bool {
        matches!(self, KeyKind::OptionRef | KeyKind::OptionArc)
    }
}

/// The parameter that receives the key.
pub struct KeyParam {
    /// Its position among the inputs.
    pub index: usize,
    /// Its type's shape.
    pub kind: KeyKind,
}

/// What to generate: the checked arguments and the function's key parameter.
pub struct Plan {
    pub vendor: LitStr,
    pub cap_micros: u64,
    pub endpoints: Vec<LitStr>,
    pub ttl_secs: u64,
    pub methods: Option<Vec<LitStr>>,
    pub label: Option<LitStr>,
    pub client: Option<syn::Path>,
    pub fail_open: bool,
    pub revoke_await: bool,
    pub key_param: Option<KeyParam>,
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Validates the arguments against the function; every problem is reported.
pub fn plan(args: Args, function: &ItemFn) -> Result<Plan, syn::Error> {
    let Args {
        vendor,
        cap,
        endpoints,
        ttl,
        methods,
        label,
        client,
        on_issue_error,
        revoke,
        mut errors,
    } = args;
    let attribute = Span::call_site();

    if function.sig.asyncness.is_none() {
        errors.push(
            function.sig.fn_token.span,
            "#[vault_key] works on `async fn`s: the key is issued with an HTTP call; add `async`",
        );
    }
    match &vendor {
        None => errors.push(
            attribute,
            "missing `vendor`: add vendor = \"stripe\" (or \"openai\", \"anthropic\", …)",
        ),
        Some(v) if v.value().is_empty() => errors.push(
            v.span(),
            "`vendor` is empty; name the vendor, as in vendor = \"stripe\"",
        ),
        Some(_) => {}
    }
    let cap_micros = match &cap {
        None => {
            errors.push(
                attribute,
                "missing `cap`: add the daily cap in US dollars, as in cap = 500",
            );
            0
        }
        Some(cap) if cap.negative => {
            errors.push_spanned(
                &cap.tokens,
                "`cap` cannot be negative: it is the most the key may spend per day, in US dollars",
            );
            0
        }
        Some(cap) => match cap.digits.parse::<Usd>() {
            Ok(usd) if usd.is_zero() => {
                errors.push_spanned(&cap.tokens, "`cap` must be more than zero: a key that may spend nothing is not useful; use a positive amount such as cap = 5");
                0
            }
            Ok(usd) => usd.micros(),
            Err(e) => {
                errors.push_spanned(&cap.tokens, format!("invalid `cap`: {e}"));
                0
            }
        },
    };
    let endpoints = match endpoints {
        None => {
            errors.push(attribute, "missing `endpoints`: list the vendor paths the key may call, as in endpoints = [\"/v1/payment_intents\"]");
            Vec::new()
        }
        Some(list) if list.items.is_empty() => {
            errors.push(list.span, "`endpoints` is empty: a key must be allowed at least one path, as in [\"/v1/payment_intents\"]");
            Vec::new()
        }
        Some(list) => {
            for item in &list.items {
                if let Err(e) = item.value().parse::<EndpointPattern>() {
                    errors.push(item.span(), e);
                }
            }
            list.items
        }
    };
    let ttl_secs = match &ttl {
        None => 300,
        Some(ttl) => match parse_duration(&ttl.value()) {
            Ok(duration) => duration.as_secs(),
            Err(e) => {
                errors.push(ttl.span(), format!("invalid `ttl`: {e}"));
                300
            }
        },
    };
    let methods = methods.map(|list| {
        if list.items.is_empty() {
            errors.push(list.span, "`methods` is empty: leave it out to allow every method, or list some, as in [\"POST\"]");
        }
        for item in &list.items {
            if !METHODS.contains(&item.value().as_str()) {
                errors.push(item.span(), format!("`{}` is not a method a key can allow; use one of {} (upper case)", item.value(), METHODS.join(", ")));
            }
        }
        list.items
    });
    let fail_open = switch(
        on_issue_error.as_ref(),
        "on_issue_error",
        ("fail", "continue"),
        &mut errors,
    );
    let revoke_await = switch(
        revoke.as_ref(),
        "revoke",
        ("background", "await"),
        &mut errors,
    );

    let key_param = key_param(function, &mut errors);
    if let (Some(param), Some(revoke)) = (&key_param, &revoke) {
        if revoke_await && matches!(param.kind, KeyKind::Arc | KeyKind::OptionArc) {
            errors.push(revoke.span(), "revoke = \"await\" revokes the key before the function returns, while an `Arc<VaultKey>` may still be held by work the function started (which would then be refused with `key_revoked`); take the key as `&VaultKey`, or leave out revoke = \"await\" so that the key is revoked when its last owner drops it");
        }
    }
    if let Some(param) = &key_param {
        if fail_open && !param.kind.is_option() {
            let ty = typed_input(function, param.index).map(|t| &t.ty);
            errors.push_spanned(ty, "with on_issue_error = \"continue\" the function may run without a key, so its key parameter must be `Option<&VaultKey>` or `Option<Arc<VaultKey>>`");
        }
    }
    if !fail_open {
        check_returns_result(function, &mut errors);
    }
    if let Some(label) = &label {
        check_label(label, function, &mut errors);
    }
    errors.into_result()?;
    Ok(Plan {
        vendor: vendor.unwrap_or_else(|| LitStr::new("", attribute)),
        cap_micros,
        endpoints,
        ttl_secs,
        methods,
        label,
        client,
        fail_open,
        revoke_await,
        key_param,
    })
}

/// A two-valued string option: `false` for its default (first) value or when absent.
fn switch(
    value: Option<&LitStr>,
    option: &str,
    (off, on): (&str, &str),
    errors: &mut Errors,
) -> bool {
    let Some(value) = value else { return false };
    let text = value.value();
    if text == on {
        true
    } else {
        if text != off {
            errors.push(
                value.span(),
                format!("`{option}` is \"{off}\" or \"{on}\", not \"{text}\""),
            );
        }
        false
    }
}

fn typed_input(function: &ItemFn, index: usize) -> Option<&syn::PatType> {
    match function.sig.inputs.iter().nth(index) {
        Some(FnArg::Typed(typed)) => Some(typed),
        _ => None,
    }
}

/// The shape of a key parameter's type, if it is one.
pub fn key_kind(ty: &Type) -> Option<KeyKind> {
    match ty {
        Type::Reference(reference)
            if reference.mutability.is_none() && is_vault_key(&reference.elem) =>
        {
            Some(KeyKind::Ref)
        }
        Type::Path(path) => {
            let last = path.path.segments.last()?;
            let inner = single_type_argument(&last.arguments)?;
            match last.ident.to_string().as_str() {
                "Arc" if is_vault_key(inner) => Some(KeyKind::Arc),
                "Option" => match key_kind(inner)? {
                    KeyKind::Ref => Some(KeyKind::OptionRef),
                    KeyKind::Arc => Some(KeyKind::OptionArc),
                    KeyKind::OptionRef | KeyKind::OptionArc => None,
                },
                _ => None,
            }
        }
        Type::Paren(paren) => key_kind(&paren.elem),
        _ => None,
    }
}

fn is_vault_key(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none()
        && path.path.segments.last().is_some_and(|s| s.ident == "VaultKey" && s.arguments.is_empty()))
}

fn single_type_argument(arguments: &PathArguments) -> Option<&Type> {
    let PathArguments::AngleBracketed(angle) = arguments else {
        return None;
    };
    let mut types = angle.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let first = types.next()?;
    types.next().is_none().then_some(first)
}

/// Whether a type names `VaultKey` anywhere (`VaultKey`, `&mut VaultKey`, `Box<VaultKey>`, …).
fn mentions_vault_key(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_path_segment(&mut self, segment: &'ast syn::PathSegment) {
            self.0 |= segment.ident == "VaultKey";
            syn::visit::visit_path_segment(self, segment);
        }
    }
    let mut finder = Finder(false);
    syn::visit::Visit::visit_type(&mut finder, ty);
    finder.0
}

/// The positions of the parameters that hold a key, in a supported shape or not: what the
/// function emitted after an error leaves out of its signature.
pub fn key_like_params(function: &ItemFn) -> Vec<usize> {
    function
        .sig
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, input)| matches!(input, FnArg::Typed(typed) if mentions_vault_key(&typed.ty)))
        .map(|(index, _)| index)
        .collect()
}

fn key_param(function: &ItemFn, errors: &mut Errors) -> Option<KeyParam> {
    let mut found: Option<KeyParam> = None;
    for (index, input) in function.sig.inputs.iter().enumerate() {
        let FnArg::Typed(typed) = input else { continue };
        let Some(kind) = key_kind(&typed.ty) else {
            if mentions_vault_key(&typed.ty) {
                errors.push_spanned(&typed.ty, "the key is shared, not owned or borrowed mutably: take it as `&VaultKey` (or `Arc<VaultKey>` to hand it to other tasks, `Option<…>` of either with on_issue_error = \"continue\")");
            }
            continue;
        };
        if found.is_some() {
            errors.push_spanned(&typed.ty, "a second key parameter: #[vault_key] issues one key per call; remove this one (share the key as `Arc<VaultKey>` if needed)");
            continue;
        }
        if !matches!(&*typed.pat, Pat::Ident(_) | Pat::Wild(_)) {
            errors.push_spanned(
                &typed.pat,
                "the key parameter must be a plain name, such as `key: &VaultKey`",
            );
            continue;
        }
        found = Some(KeyParam { index, kind });
    }
    found
}

fn check_returns_result(function: &ItemFn, errors: &mut Errors) {
    let message = "#[vault_key] returns the issuance error early, so this function must return a `Result` \
                   whose error type implements `From<vault_key::Error>`; or set on_issue_error = \"continue\" \
                   and take the key as an `Option`";
    match &function.sig.output {
        ReturnType::Default => errors.push(function.sig.paren_token.span.close(), message),
        ReturnType::Type(_, ty) => {
            let is_result = matches!(&**ty, Type::Path(path)
                if path.path.segments.last().is_some_and(|s| s.ident.to_string().ends_with("Result")));
            if !is_result {
                errors.push_spanned(ty, message);
            }
        }
    }
}

/// The names a function's parameters bind, through destructuring patterns.
fn bound_names(function: &ItemFn) -> BTreeSet<String> {
    fn walk(pat: &Pat, names: &mut BTreeSet<String>) {
        match pat {
            Pat::Ident(ident) => {
                names.insert(ident.ident.to_string());
                if let Some((_, sub)) = &ident.subpat {
                    walk(sub, names);
                }
            }
            Pat::TupleStruct(tuple) => tuple.elems.iter().for_each(|p| walk(p, names)),
            Pat::Tuple(tuple) => tuple.elems.iter().for_each(|p| walk(p, names)),
            Pat::Struct(structure) => structure.fields.iter().for_each(|f| walk(&f.pat, names)),
            Pat::Reference(reference) => walk(&reference.pat, names),
            Pat::Type(typed) => walk(&typed.pat, names),
            Pat::Paren(paren) => walk(&paren.pat, names),
            Pat::Slice(slice) => slice.elems.iter().for_each(|p| walk(p, names)),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    for input in &function.sig.inputs {
        match input {
            FnArg::Typed(typed) => walk(&typed.pat, &mut names),
            FnArg::Receiver(_) => {
                names.insert("self".to_owned());
            }
        }
    }
    names
}

/// `label` is a format string whose every `{name}` names a parameter.
fn check_label(label: &LitStr, function: &ItemFn, errors: &mut Errors) {
    let names = bound_names(function);
    let text = label.value();
    if text.is_empty() {
        errors.push(
            label.span(),
            "`label` is empty; leave it out for the default (module path and function name)",
        );
        return;
    }
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
            }
            '{' => {
                let placeholder: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let name = placeholder.split(':').next().unwrap_or("").trim();
                if name.is_empty() {
                    errors.push(label.span(), "`label` has an empty `{}`: name the parameter to put there, as in \"run-{run_id}\"");
                } else if !names.contains(name) {
                    let known: Vec<&str> = names.iter().map(String::as_str).collect();
                    errors.push(
                        label.span(),
                        format!("`label` uses `{{{name}}}` but the function has no parameter `{name}`; its parameters are: {}", if known.is_empty() { "(none)".to_owned() } else { known.join(", ") }),
                    );
                }
            }
            '}' => errors.push(
                label.span(),
                "`label` has a `}` with no `{`; write `}}` for a literal brace",
            ),
            _ => {}
        }
    }
}
