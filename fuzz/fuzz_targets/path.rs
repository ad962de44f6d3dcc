//! vaultbridge.path: any text -> SecretPath::parse; what is accepted cannot
//! leave its prefix, as text or as a URL.
#![no_main]

libfuzzer_sys::fuzz_target!(|raw: &str| vaultbridge_fuzz::invariants::path_text(raw));
