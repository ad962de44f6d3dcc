//! Docker's GetSecret body: arbitrary bytes -> GetSecretRequest -> Lookup.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| vaultbridge_fuzz::invariants::request(body));
