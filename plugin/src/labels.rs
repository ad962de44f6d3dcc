//! Turning a secret's labels into a [`Lookup`]: which provider, which path,
//! and what to do with the bytes.
//!
//! Labels are the only per-secret input Docker forwards to a driver (driver
//! options are stored but never sent), so every knob is a `vaultbridge.*`
//! label. Unknown `vaultbridge.*` labels are typos and are refused.

use std::collections::BTreeMap;

/// All labels vaultbridge reads start with this.
pub const PREFIX: &str = "vaultbridge.";
/// Set by `docker stack deploy`; secrets are then named `<stack>_<key>`.
pub const STACK_NAMESPACE: &str = "com.docker.stack.namespace";

pub const PROVIDER: &str = "vaultbridge.provider";
pub const PATH: &str = "vaultbridge.path";
pub const FIELD: &str = "vaultbridge.field";
pub const VERSION: &str = "vaultbridge.version";
pub const DECODE: &str = "vaultbridge.decode";
pub const REUSE: &str = "vaultbridge.reuse";
const KNOWN: [&str; 6] = [PROVIDER, PATH, FIELD, VERSION, DECODE, REUSE];

/// What one GetSecret asks for, parsed from its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    /// A configured provider name; the default provider when absent.
    pub provider: Option<String>,
    pub path: String,
    /// One top-level key of a JSON object value.
    pub field: Option<String>,
    pub version: Option<String>,
    pub decode: Decode,
    /// False for `vaultbridge.reuse=false`: the value is per task.
    pub reuse: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Decode {
    #[default]
    None,
    Base64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("unknown label '{label}'; valid vaultbridge labels are {}", KNOWN.join(", "))]
    Unknown { label: String },
    #[error("label '{label}' is empty; remove it or give it a value")]
    Empty { label: &'static str },
    #[error("label '{label}={value}' is not valid; expected {expected}")]
    BadValue {
        label: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("the secret has no name and no '{PATH}' label; add --label {PATH}=<path>")]
    NoPath,
}

impl Lookup {
    /// Parse the labels of the secret `secret_name`.
    pub fn from_labels(
        secret_name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Self, LabelError> {
        if let Some(label) = labels
            .keys()
            .find(|k| k.starts_with(PREFIX) && !KNOWN.contains(&k.as_str()))
        {
            return Err(LabelError::Unknown {
                label: label.clone(),
            });
        }
        let get = |label: &'static str| -> Result<Option<String>, LabelError> {
            match labels.get(label) {
                None => Ok(None),
                Some(value) if value.is_empty() => Err(LabelError::Empty { label }),
                Some(value) => Ok(Some(value.clone())),
            }
        };

        let path = match get(PATH)? {
            Some(path) => path,
            None => default_path(secret_name, labels).ok_or(LabelError::NoPath)?,
        };
        let decode = match get(DECODE)?.as_deref() {
            None | Some("none") => Decode::None,
            Some("base64") => Decode::Base64,
            Some(other) => {
                return Err(LabelError::BadValue {
                    label: DECODE,
                    value: other.to_string(),
                    expected: "'base64' or 'none'",
                });
            }
        };
        let reuse = match get(REUSE)?.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(LabelError::BadValue {
                    label: REUSE,
                    value: other.to_string(),
                    expected: "'true' or 'false'",
                });
            }
        };
        Ok(Lookup {
            provider: get(PROVIDER)?,
            path,
            field: get(FIELD)?,
            version: get(VERSION)?,
            decode,
            reuse,
        })
    }
}

/// The secret's own name, without the `<stack>_` prefix a stack deploy adds.
fn default_path(secret_name: &str, labels: &BTreeMap<String, String>) -> Option<String> {
    let name = labels
        .get(STACK_NAMESPACE)
        .and_then(|stack| secret_name.strip_prefix(stack.as_str())?.strip_prefix('_'))
        .unwrap_or(secret_name);
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_every_label() {
        let lookup = Lookup::from_labels(
            "ignored",
            &labels(&[
                (PROVIDER, "prod"),
                (PATH, "db/creds"),
                (FIELD, "password"),
                (VERSION, "3"),
                (DECODE, "base64"),
                (REUSE, "false"),
                ("team", "payments"),
            ]),
        )
        .unwrap();
        assert_eq!(
            lookup,
            Lookup {
                provider: Some("prod".into()),
                path: "db/creds".into(),
                field: Some("password".into()),
                version: Some("3".into()),
                decode: Decode::Base64,
                reuse: false,
            }
        );
    }

    #[test]
    fn path_defaults_to_the_name_without_the_stack_prefix() {
        let plain = Lookup::from_labels("db_password", &labels(&[])).unwrap();
        assert_eq!(plain.path, "db_password");
        let stacked =
            Lookup::from_labels("st_db_password", &labels(&[(STACK_NAMESPACE, "st")])).unwrap();
        assert_eq!(stacked.path, "db_password");
        // A `name:` override in the stack file keeps the name as written.
        let renamed =
            Lookup::from_labels("global_pw", &labels(&[(STACK_NAMESPACE, "st")])).unwrap();
        assert_eq!(renamed.path, "global_pw");
        assert_eq!(
            Lookup::from_labels("", &labels(&[])),
            Err(LabelError::NoPath)
        );
    }

    #[test]
    fn refuses_typos_empty_and_bad_values() {
        let err = Lookup::from_labels("x", &labels(&[("vaultbridge.feild", "a")])).unwrap_err();
        assert!(err.to_string().contains("'vaultbridge.feild'"), "{err}");
        assert!(err.to_string().contains("vaultbridge.field"), "{err}");
        let err = Lookup::from_labels("x", &labels(&[(PATH, "")])).unwrap_err();
        assert_eq!(err, LabelError::Empty { label: PATH });
        let err = Lookup::from_labels("x", &labels(&[(DECODE, "hex")])).unwrap_err();
        assert!(err.to_string().contains("'base64'"), "{err}");
        let err = Lookup::from_labels("x", &labels(&[(REUSE, "no")])).unwrap_err();
        assert!(err.to_string().contains("'true' or 'false'"), "{err}");
    }
}
