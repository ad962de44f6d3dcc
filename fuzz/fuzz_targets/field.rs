//! vaultbridge.field: the input as a document, each of its keys as the
//! field; and the same bytes as a planted number that must come back byte
//! for byte.
#![no_main]

use vaultbridge_fuzz::{PlantedNumber, field_names, invariants};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for field in field_names(data) {
        invariants::field_in_any_document(data, &field);
    }
    if let Some(planted) = PlantedNumber::from_bytes(data) {
        invariants::field_number_is_exact(&planted.others, &planted.field, &planted.number());
    }
});
