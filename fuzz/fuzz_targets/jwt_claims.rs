#![no_main]

use arbitrary::Arbitrary;

#[derive(Debug, Arbitrary)]
struct Input {
    alg: u8,
    now: u32,
    claims: Vec<u8>,
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    spreed_signaling_fuzz::checks::jwt_claims(&i.claims, i.alg, i64::from(i.now));
});
