//! A secret's name and labels -> Lookup: no panic, errors clean and bounded.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (name, labels) = vaultbridge_fuzz::labels_from(data);
    vaultbridge_fuzz::invariants::labels(&name, &labels);
});
