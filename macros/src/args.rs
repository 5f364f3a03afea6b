//! Parsing the attribute's arguments: `key = value` pairs, each set at most once.
//!
//! Parsing stops only at a syntax error it cannot recover from; everything else (an unknown or
//! repeated option) is recorded in [`Errors`] and parsing goes on, so one compile shows every
//! mistake.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{Parse, ParseStream};
use syn::{bracketed, LitStr, Token};

mod kw {
    syn::custom_keyword!(vendor);
    syn::custom_keyword!(cap);
    syn::custom_keyword!(endpoints);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(methods);
    syn::custom_keyword!(label);
    syn::custom_keyword!(client);
    syn::custom_keyword!(on_issue_error);
    syn::custom_keyword!(revoke);
}

/// Every option, in the order the documentation lists them.
pub const OPTIONS: &[&str] = &[
    "vendor",
    "cap",
    "endpoints",
    "ttl",
    "methods",
    "label",
    "client",
    "on_issue_error",
    "revoke",
];

/// Errors collected while parsing and validating, combined into one.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    /// Records an error at `span`.
    pub fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push_error(syn::Error::new(span, message));
    }

    /// Records an error underlining all of `tokens` (a type, a signed literal).
    pub fn push_spanned(&mut self, tokens: impl quote::ToTokens, message: impl std::fmt::Display) {
        self.push_error(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error.
    pub fn push_error(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// The combined error, if any was recorded.
    pub fn into_result(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// `cap = 500` or `cap = 12.5`, or a negative one kept to be refused at validation.
pub struct CapArg {
    /// The digits as written (`"500"`, `"12.5"`).
    pub digits: String,
    /// Whether a `-` came first.
    pub negative: bool,
    /// The literal with its sign, for errors that underline all of it.
    pub tokens: TokenStream,
}

/// `[ "a", "b" ]`.
pub struct ListArg {
    /// The items.
    pub items: Vec<LitStr>,
    /// The brackets, for errors about the list as a whole.
    pub span: Span,
}

/// The raw arguments, as written.
#[derive(Default)]
pub struct Args {
    pub vendor: Option<LitStr>,
    pub cap: Option<CapArg>,
    pub endpoints: Option<ListArg>,
    pub ttl: Option<LitStr>,
    pub methods: Option<ListArg>,
    pub label: Option<LitStr>,
    pub client: Option<syn::Path>,
    pub on_issue_error: Option<LitStr>,
    pub revoke: Option<LitStr>,
    /// Unknown and repeated options.
    pub errors: Errors,
}

/// Sets an option once; a second setting is an error at its keyword. One helper for every option,
/// so no option can check the wrong slot.
fn set_once<T>(slot: &mut Option<T>, value: T, keyword: Span, name: &str, errors: &mut Errors) {
    if slot.is_some() {
        errors.push(keyword, format!("`{name}` is given twice; keep one"));
    } else {
        *slot = Some(value);
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Args> {
        let mut args = Args::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            // `name = value` for each option, set once through the one helper.
            macro_rules! option {
                ($name:ident, $value:expr) => {
                    if lookahead.peek(kw::$name) {
                        let keyword: kw::$name = input.parse()?;
                        input.parse::<Token![=]>()?;
                        let value = $value;
                        set_once(&mut args.$name, value, keyword.span, stringify!($name), &mut args.errors);
                        if input.is_empty() {
                            break;
                        }
                        input.parse::<Token![,]>()?;
                        continue;
                    }
                };
            }
            option!(vendor, input.parse()?);
            option!(cap, parse_cap(input)?);
            option!(endpoints, parse_list(input)?);
            option!(ttl, input.parse()?);
            option!(methods, parse_list(input)?);
            option!(label, input.parse()?);
            option!(client, input.parse()?);
            option!(on_issue_error, input.parse()?);
            option!(revoke, input.parse()?);
            if input.peek(syn::Ident) {
                let unknown: syn::Ident = input.parse()?;
                args.errors.push(
                    unknown.span(),
                    format!(
                        "unknown option `{unknown}`; the options are {}",
                        OPTIONS.join(", ")
                    ),
                );
                skip_to_comma(input)?;
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(args)
    }
}

fn parse_cap(input: ParseStream<'_>) -> syn::Result<CapArg> {
    let minus: Option<Token![-]> = input.parse()?;
    let lit: syn::Lit = input.parse()?;
    let digits = match &lit {
        syn::Lit::Int(int) if int.suffix().is_empty() => int.base10_digits().to_owned(),
        syn::Lit::Float(float) if float.suffix().is_empty() => float.base10_digits().to_owned(),
        other => {
            return Err(syn::Error::new(
                other.span(),
                "`cap` is a daily cap in US dollars: a plain number such as 500 or 12.5",
            ))
        }
    };
    let tokens = quote::quote! { #minus #lit };
    Ok(CapArg {
        digits,
        negative: minus.is_some(),
        tokens,
    })
}

fn parse_list(input: ParseStream<'_>) -> syn::Result<ListArg> {
    let content;
    let brackets = bracketed!(content in input);
    let items = content.parse_terminated(<LitStr as Parse>::parse, Token![,])?;
    Ok(ListArg {
        items: items.into_iter().collect(),
        span: brackets.span.join(),
    })
}

/// Skips `= value` of an unknown option, up to the next top-level comma.
fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tree, next)) = rest.token_tree() {
            if matches!(&tree, TokenTree::Punct(p) if p.as_char() == ',') {
                return Ok(((), rest));
            }
            rest = next;
        }
        Ok(((), rest))
    })
}

/// Parses the attribute's arguments.
pub fn parse(attr: TokenStream) -> syn::Result<Args> {
    syn::parse2(attr)
}
