//! The TOML configuration file: any text -> Config::parse.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| vaultbridge_fuzz::invariants::config(text));
