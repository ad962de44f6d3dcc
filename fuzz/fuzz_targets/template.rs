//! A template's source and one value for its lookups, split at the first
//! NUL byte -> Template::compile and render.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (source, value) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"s3cret-value"[..]),
    };
    if let Ok(source) = std::str::from_utf8(source) {
        vaultbridge_fuzz::invariants::template(source, value);
    }
});
