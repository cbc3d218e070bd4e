#![no_main]

use arbitrary::Arbitrary;

#[derive(Debug, Arbitrary)]
struct Input {
    secret: Vec<u8>,
    random: Vec<u8>,
    body: Vec<u8>,
    flip: usize,
    what: u8,
    sum: String,
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    use spreed_signaling_fuzz::checks;
    checks::checksum_roundtrip(&i.secret, &i.random, &i.body, i.flip, i.what);
    checks::checksum_verify_any(&i.random, &i.body, &i.sum);
});
