#![no_main]

use arbitrary::Arbitrary;

#[derive(Debug, Arbitrary)]
struct Input {
    token: String,
    key: String,
    now: u32,
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    // `now` is the server's clock: any time between 1970 and 2106.
    spreed_signaling_fuzz::checks::jwt_verify(&i.token, &i.key, i64::from(i.now));
});
