//! Turning a secret's labels into a [`Lookup`]: which provider, which path,
//! and what to do with the bytes.
//!
//! Labels are the only per-secret input Docker forwards to a driver (driver
//! options are stored but never sent), so every knob is a `vaultbridge.*`
//! label. Unknown `vaultbridge.*` labels are typos and are refused.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use vaultbridge_providers::path::{PathError, SecretPath, check_version};
use vaultbridge_providers::text::{is_unsafe_char, shown};

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
/// `true`: the rotation controller (`vaultbridge rotate`) watches this
/// secret and rolls the services that use it when its value changes.
pub const ROTATE: &str = "vaultbridge.rotate";
/// Written by the rotation controller on the secrets it creates: the
/// backend's change stamp of the value this secret was made for. Part of
/// the cache key, so that the new secret's first task reads the backend
/// afresh even where no version can be pinned (a file).
pub const ROTATION: &str = "vaultbridge.rotation";
/// A named template (`[templates.<name>]`) instead of a single lookup.
pub const TEMPLATE: &str = "vaultbridge.template";
const KNOWN: [&str; 9] = [
    PROVIDER, PATH, FIELD, VERSION, DECODE, REUSE, ROTATE, ROTATION, TEMPLATE,
];
/// A change stamp is a version id or a file's change time: short and plain.
const MAX_ROTATION_BYTES: usize = 128;
/// What a template names in each of its lookups, so not a label beside it;
/// and rotation, which rolls single lookups only.
const NOT_WITH_TEMPLATE: [&str; 7] = [PROVIDER, PATH, FIELD, VERSION, DECODE, ROTATE, ROTATION];

/// A secret's labels by name: borrowed from the engine's GetSecret body,
/// owned when read back from the engine's API.
pub trait Labels {
    fn label(&self, name: &str) -> Option<&str>;
    fn names(&self) -> impl Iterator<Item = &str>;
}

impl<K: Borrow<str> + Ord, V: AsRef<str>> Labels for BTreeMap<K, V> {
    fn label(&self, name: &str) -> Option<&str> {
        self.get(name).map(AsRef::as_ref)
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.keys().map(Borrow::borrow)
    }
}

/// What one GetSecret asks for, parsed from its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    /// A configured provider name; the default provider when absent.
    pub provider: Option<String>,
    /// Validated once, here, before any routing or backend decision.
    pub path: SecretPath,
    /// One top-level key of a JSON object value.
    pub field: Option<String>,
    pub version: Option<String>,
    pub decode: Decode,
    /// False for `vaultbridge.reuse=false`: the value is per task.
    pub reuse: bool,
    /// True for `vaultbridge.rotate=true` (read by the rotation controller).
    pub rotate: bool,
    /// `vaultbridge.rotation`: the change stamp the secret was made for.
    pub rotation: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Decode {
    #[default]
    None,
    Base64,
}

/// A secret rendered from a named template (`vaultbridge.template`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub name: String,
    /// False for `vaultbridge.reuse=false`: every input, and so the whole
    /// result, is per task.
    pub reuse: bool,
}

/// JSON keys and provider names are short; anything longer is a mistake
/// (or an attempt to make our errors and logs huge).
const MAX_FIELD_BYTES: usize = 256;
const MAX_PROVIDER_BYTES: usize = 64;

/// Every message shows request-controlled text through [`shown`]: escaped
/// and bounded, so that a label cannot forge a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("unknown label '{}'; valid vaultbridge labels are {}", shown(label), KNOWN.join(", "))]
    Unknown { label: String },
    #[error("label '{label}' is empty; remove it or give it a value")]
    Empty { label: &'static str },
    #[error("label '{label}={}' is not valid; expected {expected}", shown(value))]
    BadValue {
        label: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("label '{PATH}={}' is refused: {reason}", shown(value))]
    BadPath { value: String, reason: PathError },
    #[error(
        "the secret name '{}' is used as the path (there is no '{PATH}' label) and is refused: {reason}; add --label {PATH}=<path>",
        shown(value)
    )]
    BadName { value: String, reason: PathError },
    #[error("label '{VERSION}={}' is refused: {reason}", shown(value))]
    BadVersion { value: String, reason: PathError },
    #[error("the secret has no name and no '{PATH}' label; add --label {PATH}=<path>")]
    NoPath,
    /// `default_path` could not be filled in for this caller, or gave a
    /// path that is refused (the reason says which).
    #[error("the secret has no '{PATH}' label and {reason}; add --label {PATH}=<path>")]
    DefaultPath { reason: String },
    #[error(
        "label '{label}' cannot be combined with '{TEMPLATE}': a template names the provider, path, field, version and decode of each of its lookups, and is not rotated; remove the label"
    )]
    WithTemplate { label: &'static str },
    /// A caller asked for a single lookup of a secret that names a template.
    #[error("label '{TEMPLATE}' selects a template, not a single lookup")]
    IsTemplate,
}

/// Fills `default_path` in for a secret key; `Err`: why it cannot.
pub type DefaultPath<'a> = dyn Fn(&str) -> Result<String, String> + 'a;

impl Lookup {
    /// Parse the labels of the secret `secret_name`.
    pub fn from_labels(secret_name: &str, labels: &impl Labels) -> Result<Self, LabelError> {
        Self::from_labels_or(secret_name, labels, None)
    }

    /// As [`Self::from_labels`]; without a `vaultbridge.path` label the path
    /// is `default_path` (the configured template, filled in for the
    /// caller) when given, else the secret's name.
    pub fn from_labels_or(
        secret_name: &str,
        labels: &impl Labels,
        default_path: Option<&DefaultPath<'_>>,
    ) -> Result<Self, LabelError> {
        refuse_unknown(labels)?;
        if labels.label(TEMPLATE).is_some() {
            return Err(LabelError::IsTemplate);
        }
        let get = |label: &'static str| get(labels, label);

        let path = match get(PATH)? {
            Some(path) => SecretPath::parse(&path).map_err(|reason| LabelError::BadPath {
                value: path,
                reason,
            })?,
            None => {
                let name = secret_key(secret_name, labels);
                if name.is_empty() {
                    return Err(LabelError::NoPath);
                }
                match default_path {
                    None => SecretPath::parse(name).map_err(|reason| LabelError::BadName {
                        value: name.to_string(),
                        reason,
                    })?,
                    Some(render) => {
                        let path =
                            render(name).map_err(|reason| LabelError::DefaultPath { reason })?;
                        SecretPath::parse(&path).map_err(|reason| LabelError::DefaultPath {
                            reason: format!(
                                "the default_path gives '{}', which is refused: {reason}",
                                shown(&path)
                            ),
                        })?
                    }
                }
            }
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
        let reuse = reuse(labels)?;
        let rotate = match get(ROTATE)?.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(LabelError::BadValue {
                    label: ROTATE,
                    value: other.to_string(),
                    expected: "'true' or 'false'",
                });
            }
        };
        if rotate && !reuse {
            return Err(LabelError::BadValue {
                label: ROTATE,
                value: "true".into(),
                expected: "no vaultbridge.rotate on a per-task secret (vaultbridge.reuse=false): each task already gets a new value",
            });
        }
        let rotation = get(ROTATION)?;
        if let Some(rotation) = &rotation
            && !is_plain_stamp(rotation)
        {
            return Err(LabelError::BadValue {
                label: ROTATION,
                value: rotation.clone(),
                expected: "the change stamp the rotation controller writes (letters, digits, '.', '_', ':', '-'; at most 128)",
            });
        }
        let version = get(VERSION)?;
        if let Some(version) = &version {
            check_version(version).map_err(|reason| LabelError::BadVersion {
                value: version.clone(),
                reason,
            })?;
        }
        let field = get(FIELD)?;
        if let Some(field) = &field
            && !is_valid_field(field)
        {
            return Err(LabelError::BadValue {
                label: FIELD,
                value: field.clone(),
                expected: FIELD_EXPECTED,
            });
        }
        let provider = get(PROVIDER)?;
        if let Some(provider) = &provider
            && !is_valid_name(provider)
        {
            return Err(LabelError::BadValue {
                label: PROVIDER,
                value: provider.clone(),
                expected: "a configured provider name (letters, digits, '-' and '_')",
            });
        }
        Ok(Lookup {
            provider,
            path,
            field,
            version,
            decode,
            reuse,
            rotate,
            rotation,
        })
    }
}

/// The template a secret's labels select, if any: `vaultbridge.template`,
/// with `vaultbridge.reuse` and no label a template's lookups name.
pub fn template_of(labels: &impl Labels) -> Result<Option<TemplateRef>, LabelError> {
    refuse_unknown(labels)?;
    let Some(name) = get(labels, TEMPLATE)? else {
        return Ok(None);
    };
    if let Some(label) = NOT_WITH_TEMPLATE
        .into_iter()
        .find(|label| labels.label(label).is_some())
    {
        return Err(LabelError::WithTemplate { label });
    }
    if !is_valid_name(&name) {
        return Err(LabelError::BadValue {
            label: TEMPLATE,
            value: name,
            expected: "a configured template name (letters, digits, '-' and '_')",
        });
    }
    Ok(Some(TemplateRef {
        name,
        reuse: reuse(labels)?,
    }))
}

fn refuse_unknown(labels: &impl Labels) -> Result<(), LabelError> {
    match labels
        .names()
        .find(|k| k.starts_with(PREFIX) && !KNOWN.contains(k))
    {
        Some(label) => Err(LabelError::Unknown {
            label: label.to_owned(),
        }),
        None => Ok(()),
    }
}

fn get(labels: &impl Labels, label: &'static str) -> Result<Option<String>, LabelError> {
    match labels.label(label) {
        None => Ok(None),
        Some("") => Err(LabelError::Empty { label }),
        Some(value) => Ok(Some(value.to_owned())),
    }
}

fn reuse(labels: &impl Labels) -> Result<bool, LabelError> {
    match get(labels, REUSE)?.as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(LabelError::BadValue {
            label: REUSE,
            value: other.to_string(),
            expected: "'true' or 'false'",
        }),
    }
}

/// What a valid `vaultbridge.field` (or a template's `field=`) is.
pub const FIELD_EXPECTED: &str = "a JSON key of at most 256 bytes without control characters";

pub fn is_valid_field(field: &str) -> bool {
    field.len() <= MAX_FIELD_BYTES && !field.chars().any(is_unsafe_char)
}

/// Provider and template names: short, plain, safe in any log line.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROVIDER_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A change stamp as `vaultbridge.rotation` holds it: short and plain.
pub fn is_plain_stamp(stamp: &str) -> bool {
    !stamp.is_empty()
        && stamp.len() <= MAX_ROTATION_BYTES
        && stamp
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// The secret's own name, without the `<stack>_` prefix a stack deploy adds.
pub fn secret_key<'a>(secret_name: &'a str, labels: &impl Labels) -> &'a str {
    labels
        .label(STACK_NAMESPACE)
        .and_then(|stack| secret_name.strip_prefix(stack)?.strip_prefix('_'))
        .unwrap_or(secret_name)
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
                path: SecretPath::parse("db/creds").unwrap(),
                field: Some("password".into()),
                version: Some("3".into()),
                decode: Decode::Base64,
                reuse: false,
                rotate: false,
                rotation: None,
            }
        );
    }

    #[test]
    fn path_defaults_to_the_name_without_the_stack_prefix() {
        let plain = Lookup::from_labels("db_password", &labels(&[])).unwrap();
        assert_eq!(plain.path.as_str(), "db_password");
        let stacked =
            Lookup::from_labels("st_db_password", &labels(&[(STACK_NAMESPACE, "st")])).unwrap();
        assert_eq!(stacked.path.as_str(), "db_password");
        // A `name:` override in the stack file keeps the name as written.
        let renamed =
            Lookup::from_labels("global_pw", &labels(&[(STACK_NAMESPACE, "st")])).unwrap();
        assert_eq!(renamed.path.as_str(), "global_pw");
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

    #[test]
    fn paths_versions_and_fields_are_validated_once_here() {
        let err = Lookup::from_labels(
            "x",
            &labels(&[(PATH, "database/creds/../../auth/token/lookup-self")]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            LabelError::BadPath {
                reason: PathError::DotSegment,
                ..
            }
        ));
        assert!(
            err.to_string().contains("label 'vaultbridge.path="),
            "{err}"
        );
        let err = Lookup::from_labels("x", &labels(&[(PATH, "a/%2e%2e/b")])).unwrap_err();
        assert!(err.to_string().contains("percent escape"), "{err}");
        // A name used as the path passes the same check.
        let err = Lookup::from_labels("..", &labels(&[])).unwrap_err();
        assert!(err.to_string().contains("secret name '..'"), "{err}");
        let err = Lookup::from_labels("x", &labels(&[(VERSION, "1/../2")])).unwrap_err();
        assert!(
            err.to_string().starts_with("label 'vaultbridge.version="),
            "{err}"
        );
        let err = Lookup::from_labels("x", &labels(&[(FIELD, "a\nb")])).unwrap_err();
        assert!(
            matches!(err, LabelError::BadValue { label: FIELD, .. }),
            "{err}"
        );
        let err = Lookup::from_labels("x", &labels(&[(PROVIDER, "prod/../x")])).unwrap_err();
        assert!(
            matches!(
                err,
                LabelError::BadValue {
                    label: PROVIDER,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_template_label_combines_with_reuse_only() {
        assert_eq!(template_of(&labels(&[("team", "x")])), Ok(None));
        assert_eq!(
            template_of(&labels(&[
                (TEMPLATE, "pg"),
                (REUSE, "false"),
                ("team", "x")
            ])),
            Ok(Some(TemplateRef {
                name: "pg".into(),
                reuse: false
            }))
        );
        for label in NOT_WITH_TEMPLATE {
            let err = template_of(&labels(&[(TEMPLATE, "pg"), (label, "x")])).unwrap_err();
            assert_eq!(err, LabelError::WithTemplate { label });
            assert!(err.to_string().contains("remove the label"), "{err}");
        }
        let err = template_of(&labels(&[(TEMPLATE, "a/../b")])).unwrap_err();
        assert!(
            matches!(
                err,
                LabelError::BadValue {
                    label: TEMPLATE,
                    ..
                }
            ),
            "{err}"
        );
        let err = template_of(&labels(&[(TEMPLATE, "")])).unwrap_err();
        assert_eq!(err, LabelError::Empty { label: TEMPLATE });
        let err = template_of(&labels(&[(TEMPLATE, "pg"), ("vaultbridge.tempalte", "x")]));
        assert!(matches!(err, Err(LabelError::Unknown { .. })), "{err:?}");
        // A single lookup is never made of a template's secret.
        assert_eq!(
            Lookup::from_labels("x", &labels(&[(TEMPLATE, "pg")])),
            Err(LabelError::IsTemplate)
        );
    }

    #[test]
    fn errors_never_carry_raw_control_characters_or_huge_values() {
        let forged = format!("a\nINFO forged line\x1b[2K{}", "x".repeat(900_000));
        for labels in [
            labels(&[(PATH, forged.as_str())]),
            labels(&[(DECODE, forged.as_str())]),
            labels(&[(VERSION, forged.as_str())]),
            labels(&[(FIELD, forged.as_str())]),
            labels(&[(forged.replace('a', "vaultbridge.a").as_str(), "1")]),
        ] {
            let message = Lookup::from_labels(&forged, &labels)
                .unwrap_err()
                .to_string();
            assert!(!message.chars().any(is_unsafe_char), "{message:.200}");
            assert!(message.len() < 2_000, "{} bytes", message.len());
        }
    }
}
