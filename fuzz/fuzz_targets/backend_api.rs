#![no_main]

use arbitrary::Arbitrary;
use spreed_signaling_fuzz::checks::{backend_api, BackendApiInput, ChecksumMode};

#[derive(Debug, Arbitrary)]
enum Sum {
    Valid,
    Mutated(usize),
    Raw(String),
    Missing,
}

#[derive(Debug, Arbitrary)]
struct Input {
    room: String,
    content_length: Option<String>,
    json_content_type: bool,
    content_type: String,
    random: String,
    checksum: Sum,
    backend: Option<String>,
    body: Vec<u8>,
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    backend_api(&BackendApiInput {
        room: i.room,
        content_length: i.content_length,
        content_type: if i.json_content_type {
            "application/json".to_string()
        } else {
            i.content_type
        },
        random: i.random,
        checksum: match i.checksum {
            Sum::Valid => ChecksumMode::Valid,
            Sum::Mutated(n) => ChecksumMode::Mutated(n),
            Sum::Raw(s) => ChecksumMode::Raw(s),
            Sum::Missing => ChecksumMode::Missing,
        },
        backend: i.backend,
        body: i.body,
    });
});
