#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    spreed_signaling_fuzz::checks::federation_rewrite(data);
});
