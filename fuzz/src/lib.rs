//! What the fuzz targets share: requests as the proxy builds them, and the attribute's parser.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use vault_key_server::meter::ForwardRequest;

/// The `#[vault_key]` attribute's parser, validator and expander: the macros crate's own files,
/// compiled here because a proc-macro crate can export nothing but its macros.
#[allow(dead_code)]
#[path = "../../macros/src/args.rs"]
pub mod args;
#[allow(dead_code)]
#[path = "../../macros/src/expand.rs"]
pub mod expand;
#[allow(dead_code)]
#[path = "../../macros/src/validate.rs"]
pub mod validate;

/// A request as the proxy forwards it, with `content_type` when given.
pub fn forward_request(
    method: Method,
    path: &str,
    content_type: Option<&'static str>,
    body: &[u8],
) -> ForwardRequest {
    let mut headers = HeaderMap::new();
    if let Some(content_type) = content_type {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
    }
    ForwardRequest {
        method,
        path: path.to_owned(),
        query: None,
        headers,
        body: Bytes::copy_from_slice(body),
    }
}

/// Picks one of `choices` with the input's first byte, and returns it with the rest.
pub fn choose<'a, T>(data: &'a [u8], choices: &'a [T]) -> Option<(&'a T, &'a [u8])> {
    let (first, rest) = data.split_first()?;
    Some((&choices[usize::from(*first) % choices.len()], rest))
}
