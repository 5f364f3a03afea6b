//! Reading usage out of a vendor's answer as it passes, JSON or server-sent events. Input: a
//! format byte, a chunk-size byte, then the answer.
//!
//! Invariants: no panic; the usage read does not depend on how the answer was cut into chunks
//! on the wire (whole, in chunks of any size, byte by byte).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vault_key_fuzz::choose;
use vault_key_server::meter::llm::{Usage, UsageFormat, UsageReader};

const FORMATS: &[(UsageFormat, bool)] = &[
    (UsageFormat::ChatCompletions, false),
    (UsageFormat::ChatCompletions, true),
    (UsageFormat::Responses, false),
    (UsageFormat::Responses, true),
    (UsageFormat::Embeddings, false),
    (UsageFormat::AnthropicMessages, false),
    (UsageFormat::AnthropicMessages, true),
];

fn read(format: UsageFormat, streamed: bool, answer: &[u8], chunk: usize) -> Option<Usage> {
    let mut reader = UsageReader::new(format, streamed);
    for piece in answer.chunks(chunk.max(1)) {
        reader.feed(piece);
    }
    reader.finish()
}

fuzz_target!(|data: &[u8]| {
    let Some((&(format, streamed), rest)) = choose(data, FORMATS) else {
        return;
    };
    let Some((&chunk, answer)) = rest.split_first() else {
        return;
    };
    let whole = read(format, streamed, answer, answer.len());
    assert_eq!(read(format, streamed, answer, usize::from(chunk)), whole);
    assert_eq!(read(format, streamed, answer, 1), whole);
});
