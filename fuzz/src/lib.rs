//! Shared by the fuzz targets in `fuzz_targets/`: the invariants
//! ([`invariants`], also run by the stable property tests in
//! `plugin/tests/properties.rs`) and the structured inputs libFuzzer's bytes
//! are turned into.

pub mod invariants;

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};

/// A secret's name and labels, from a fuzz input. Seeds are readable JSON,
/// `{"name": "st_db", "labels": {"vaultbridge.path": "db"}}`; any other
/// bytes are read as a structured [`LabelsInput`], so that every mutation
/// is still a meaningful label map.
pub fn labels_from(data: &[u8]) -> (String, BTreeMap<String, String>) {
    if let Ok(serde_json::Value::Object(seed)) = serde_json::from_slice(data) {
        let name = seed
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let labels = seed
            .get("labels")
            .and_then(|v| v.as_object())
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        return (name.to_string(), labels);
    }
    let input = LabelsInput::arbitrary_take_rest(Unstructured::new(data)).unwrap_or_default();
    (input.secret_name.clone(), input.map())
}

/// A secret's name and labels. Keys are drawn mostly from the labels
/// vaultbridge reads, so that the fuzzer spends its time past the
/// "unknown label" check.
#[derive(Debug, Default, Arbitrary)]
pub struct LabelsInput {
    pub secret_name: String,
    pub labels: Vec<(LabelKey, String)>,
}

#[derive(Debug, Arbitrary)]
pub enum LabelKey {
    Provider,
    Path,
    Field,
    Version,
    Decode,
    Reuse,
    StackNamespace,
    /// Any key: a typo of a `vaultbridge.*` label or someone else's label.
    Other(String),
}

impl LabelsInput {
    pub fn map(&self) -> BTreeMap<String, String> {
        use vaultbridge::labels::*;
        self.labels
            .iter()
            .map(|(key, value)| {
                let key = match key {
                    LabelKey::Provider => PROVIDER,
                    LabelKey::Path => PATH,
                    LabelKey::Field => FIELD,
                    LabelKey::Version => VERSION,
                    LabelKey::Decode => DECODE,
                    LabelKey::Reuse => REUSE,
                    LabelKey::StackNamespace => STACK_NAMESPACE,
                    LabelKey::Other(other) => other,
                };
                (key.to_string(), value.clone())
            })
            .collect()
    }
}

/// The field names to try on a document: every top-level key when it is a
/// JSON object (so that seeds, plain JSON documents, exercise each member),
/// else one name that is not there.
pub fn field_names(doc: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Value>(doc) {
        Ok(serde_json::Value::Object(object)) => object.keys().cloned().collect(),
        _ => vec!["password".to_string()],
    }
}

/// A well-formed number to plant in a document of our own, and the members
/// around it; made from the same fuzz input read as structured data.
#[derive(Debug, Arbitrary)]
pub struct PlantedNumber {
    pub field: String,
    pub others: Vec<(String, String)>,
    pub negative: bool,
    pub int: Vec<u8>,
    pub frac: Option<Vec<u8>>,
    pub exp: Option<(bool, u8, Vec<u8>)>,
}

impl PlantedNumber {
    pub fn from_bytes(data: &[u8]) -> Option<Self> {
        Self::arbitrary_take_rest(Unstructured::new(data)).ok()
    }

    pub fn number(&self) -> invariants::JsonNumber {
        invariants::JsonNumber {
            negative: self.negative,
            int: self.int.clone(),
            frac: self.frac.clone(),
            exp: self.exp.clone(),
        }
    }
}
