//! A compose file read as `docker stack deploy -c FILE STACK` reads it, down
//! to the GetSecret requests the engine will send for the stack's secrets:
//! what `vaultbridge check --stack` resolves before a deploy.
//!
//! What the deploy does with a top-level secret (docker/cli
//! `cli/compose/convert`): an `external:` one is not created; one with a
//! `driver:` is created with no data, named `name:` or else `<STACK>_<key>`,
//! with its `labels:` plus `com.docker.stack.namespace=<STACK>`; any other
//! takes its content from `file:`. Services name theirs under `secrets:`
//! (`- key` or `- source: key`) and are named `<STACK>_<service>`.
//!
//! Only the keys used here are typed; every other compose key is ignored,
//! since compose files carry many.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;

use serde::{Deserialize, Deserializer};
use vaultbridge_providers::text::{is_unsafe_char, shown};

use crate::labels::STACK_NAMESPACE;
use crate::protocol::{GetSecretRequest, owned_labels};

/// Stack files are a few KB; a larger one is refused unread.
pub const MAX_STACK_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One top-level secret of the stack file, and what to do with it.
#[derive(Debug)]
pub struct StackSecret {
    /// The Docker secret's name (what the engine sends as `SecretName`).
    pub name: String,
    /// The services that use it, as named in the swarm (`<STACK>_<svc>`).
    pub services: Vec<String>,
    pub check: Check,
}

#[derive(Debug)]
pub enum Check {
    /// Ours: the requests the leader will send, one per service using it
    /// (one without a service when none does).
    Resolve(Vec<GetSecretRequest<'static>>),
    /// Not asked of this driver; why.
    Skip(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: larger than {MAX_STACK_FILE_BYTES} bytes; is it a stack file?")]
    TooLarge { file: String },
    #[error("{file}: {key}: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

/// A stack name as `docker stack deploy` accepts it (and one we can print).
pub fn parse_stack_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.trim() != name || name.chars().any(is_unsafe_char) {
        return Err(format!(
            "'{}' is not a stack name: it must be non-empty, without surrounding spaces or control characters",
            shown(name)
        ));
    }
    Ok(name.to_string())
}

/// Read `file` and list its secrets for the stack `stack`. `drivers` are
/// the names this plugin is installed under (`vaultbridge`, an alias);
/// `env` is where `${VAR}` in the file is looked up, as the deploy does.
pub fn load(
    file: &Path,
    stack: &str,
    drivers: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<StackSecret>, StackError> {
    let shown_file = shown(&file.display().to_string()).into_owned();
    let read = |source| StackError::Read {
        file: shown_file.clone(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(read)?
        .take(MAX_STACK_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_STACK_FILE_BYTES {
        return Err(StackError::TooLarge { file: shown_file });
    }
    parse(&text, stack, drivers, env).map_err(|(key, message)| StackError::Invalid {
        file: shown_file,
        key,
        message,
    })
}

/// The most nodes alias expansion may add, estimated as (alias uses) ×
/// (items in the file): each use copies at most the whole file. Compose
/// files use a few anchors (`<<: *defaults`); a file that could expand to
/// more is refused before parsing, as Docker's own YAML decoder refuses
/// "excessive aliasing". (The YAML library bounds the nested, exponential
/// case itself; this bounds the wide one: many uses of a large anchor.)
const MAX_ALIAS_EXPANSION: usize = 1_000_000;

fn check_aliasing(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    // An alias is `*name` where a node starts: after a space, a flow
    // indicator or a line start. Counting `*` in quoted text too only
    // makes this stricter.
    let uses = bytes
        .iter()
        .enumerate()
        .filter(|&(at, &b)| {
            b == b'*'
                && bytes
                    .get(at + 1)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
                && (at == 0
                    || matches!(
                        bytes[at - 1],
                        b' ' | b'\t' | b'\n' | b'[' | b'{' | b',' | b':' | b'-'
                    ))
        })
        .count();
    let items = 1 + bytes.iter().filter(|&&b| b == b'\n' || b == b',').count();
    if uses.saturating_mul(items) > MAX_ALIAS_EXPANSION {
        return Err(format!(
            "{uses} alias uses in a file of {items} items could expand past {MAX_ALIAS_EXPANSION} nodes; use fewer anchors"
        ));
    }
    Ok(())
}

/// The typed part of a compose file: `(key path, message)` on error.
pub fn parse(
    text: &str,
    stack: &str,
    drivers: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<StackSecret>, (String, String)> {
    let top = || "(top level)".to_string();
    check_aliasing(text).map_err(|message| (top(), message))?;
    let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(|err| {
        (
            top(),
            format!("not valid YAML: {}", shown(&err.to_string())),
        )
    })?;
    if !value.is_mapping() {
        return Err((
            top(),
            "a compose file is a mapping (services:, secrets:, ...)".into(),
        ));
    }
    // `<<: *defaults`, as Go's YAML decoder applies it.
    value
        .apply_merge()
        .map_err(|err| (top(), shown(&err.to_string()).into_owned()))?;
    interpolate_tree(&mut value, &mut String::new(), env)?;
    let compose: ComposeFile = serde_path_to_error::deserialize(value).map_err(|err| {
        (
            shown(&err.path().to_string()).into_owned(),
            shown(&err.inner().to_string()).into_owned(),
        )
    })?;
    plan(compose, stack, drivers)
}

fn plan(
    compose: ComposeFile,
    stack: &str,
    drivers: &[String],
) -> Result<Vec<StackSecret>, (String, String)> {
    let mut users: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (service, spec) in &compose.services {
        let spec = spec.as_ref();
        for (at, used) in spec
            .map(|s| s.secrets.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let key = used.source();
            if !compose.secrets.contains_key(key) {
                return Err((
                    format!("services.{}.secrets[{at}]", shown(service)),
                    format!("refers to undefined secret '{}'", shown(key)),
                ));
            }
            let list = users.entry(key).or_default();
            let name = format!("{stack}_{service}");
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
    let ours: Vec<String> = drivers.iter().map(|d| plugin_ref(d)).collect();
    let mut secrets = Vec::new();
    for (key, spec) in &compose.secrets {
        let spec = spec.clone().unwrap_or_default();
        let services = users.remove(key.as_str()).unwrap_or_default();
        let external = match &spec.external {
            None | Some(External::Flag(false)) => None,
            Some(External::Flag(true)) => Some(None),
            Some(External::Legacy { name }) => Some(name.clone()),
        };
        if let Some(legacy_name) = external {
            // Not created by the deploy: its name is used as written.
            let name = spec.name.or(legacy_name).unwrap_or_else(|| key.clone());
            secrets.push(StackSecret {
                name,
                services,
                check: Check::Skip(
                    "external: created outside this stack (check it with `vaultbridge get`)".into(),
                ),
            });
            continue;
        }
        let name = spec.name.unwrap_or_else(|| format!("{stack}_{key}"));
        let check = match (&spec.driver, &spec.file) {
            (Some(driver), _) if ours.contains(&plugin_ref(driver)) => {
                let mut labels = spec.labels.0.clone();
                labels.insert(STACK_NAMESPACE.into(), stack.into());
                // The engine asks once per service it schedules, with that
                // service's name, labels and image (the access policy and
                // default_path depend on them); an unused secret, once bare.
                let users: Vec<Option<&String>> = if services.is_empty() {
                    vec![None]
                } else {
                    services.iter().map(Some).collect()
                };
                let requests = users
                    .into_iter()
                    .map(|service| {
                        let spec = service
                            .and_then(|s| s.strip_prefix(stack)?.strip_prefix('_'))
                            .and_then(|svc| compose.services.get(svc)?.as_ref());
                        let mut service_labels = spec
                            .map(|spec| spec.deploy.labels.0.clone())
                            .unwrap_or_default();
                        if service.is_some() {
                            service_labels.insert(STACK_NAMESPACE.into(), stack.into());
                        }
                        GetSecretRequest {
                            secret_name: name.clone().into(),
                            secret_labels: owned_labels(labels.clone()),
                            service_name: service.cloned().unwrap_or_default().into(),
                            service_labels: owned_labels(service_labels),
                            task_image: spec
                                .and_then(|s| s.image.clone())
                                .unwrap_or_default()
                                .into(),
                            ..GetSecretRequest::default()
                        }
                    })
                    .collect();
                Check::Resolve(requests)
            }
            (Some(driver), _) => {
                Check::Skip(format!("driver '{}' (another plugin)", shown(driver)))
            }
            (None, Some(_)) => Check::Skip("file: the deploy stores its content".into()),
            (None, None) => Check::Skip("no driver: and no file:".into()),
        };
        secrets.push(StackSecret {
            name,
            services,
            check,
        });
    }
    Ok(secrets)
}

/// A plugin reference as the engine compares them: `vaultbridge`,
/// `vaultbridge:latest` and `docker.io/library/vaultbridge:latest` are one.
pub(crate) fn plugin_ref(name: &str) -> String {
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
/// `${VAR?message}`, `$VAR` and `$$` in every string value, as the compose
/// loader does before anything else; an unset variable without a default is
/// empty, as there.
fn interpolate_tree(
    value: &mut serde_norway::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    use serde_norway::Value;
    match value {
        Value::String(text) if text.contains('$') => {
            *text =
                interpolate(text, env).map_err(|message| (shown(path).into_owned(), message))?;
        }
        Value::Sequence(items) => {
            for (at, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{at}]"));
                interpolate_tree(item, path, env)?;
                path.truncate(len);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key.as_str().unwrap_or("?"));
                interpolate_tree(item, path, env)?;
                path.truncate(len);
            }
        }
        Value::Tagged(tagged) => interpolate_tree(&mut tagged.value, path, env)?,
        _ => {}
    }
    Ok(())
}

/// Variables a stack file may not read: the plugin's own settings and
/// credentials (`check --stack` runs with them), and any of the backends'
/// ecosystems. A hostile file could otherwise print `${VAULT_TOKEN}` in a
/// secret's name, or send it to a backend as a path.
fn is_protected(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "VAULTBRIDGE_",
        "VAULT_",
        "BAO_",
        "AWS_",
        "AZURE_",
        "GOOGLE_",
    ];
    PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || crate::config::variables().iter().any(|v| v.name == name)
}

fn interpolate(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let env = |name: &str| -> Result<Option<String>, String> {
        if is_protected(name) {
            return Err(format!(
                "${{{name}}} is not substituted: the plugin's settings and credentials are not for stack files; write the value itself"
            ));
        }
        Ok(env(name))
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("'${{' without '}}' in '{}'", shown(text)))?;
            let (inner, after) = (&braced[..end], &braced[end + 1..]);
            let name_end = inner.find(|c| !is_name(c)).unwrap_or(inner.len());
            let (name, op) = inner.split_at(name_end);
            if name.is_empty() {
                return Err(format!("invalid interpolation '${{{}}}'", shown(inner)));
            }
            let value = env(name)?;
            let set = value.as_deref().is_some_and(|v| !v.is_empty());
            let resolved = match op {
                "" => value.unwrap_or_default(),
                _ if op.starts_with(":-") => {
                    if set {
                        value.unwrap_or_default()
                    } else {
                        op[2..].to_string()
                    }
                }
                _ if op.starts_with('-') => value.unwrap_or_else(|| op[1..].to_string()),
                _ if op.starts_with(":?") || op.starts_with('?') => {
                    let missing = if op.starts_with(':') {
                        !set
                    } else {
                        value.is_none()
                    };
                    if missing {
                        let message = op.trim_start_matches(':')[1..].to_string();
                        return Err(format!(
                            "required variable {name} is missing a value: {}",
                            shown(&message)
                        ));
                    }
                    value.unwrap_or_default()
                }
                _ => return Err(format!("invalid interpolation '${{{}}}'", shown(inner))),
            };
            out.push_str(&resolved);
            rest = after;
        } else {
            let end = rest.find(|c| !is_name(c)).unwrap_or(rest.len());
            if end == 0 {
                return Err(format!(
                    "invalid interpolation: a lone '$' in '{}' (write '$$')",
                    shown(text)
                ));
            }
            out.push_str(&env(&rest[..end])?.unwrap_or_default());
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ComposeFile {
    #[serde(deserialize_with = "null_as_default")]
    services: BTreeMap<String, Option<Service>>,
    #[serde(deserialize_with = "null_as_default")]
    secrets: BTreeMap<String, Option<SecretSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Service {
    /// What the engine sends as `TaskImage` (for the access policy).
    image: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    secrets: Vec<ServiceSecret>,
    #[serde(deserialize_with = "null_as_default")]
    deploy: Deploy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Deploy {
    #[serde(deserialize_with = "null_as_default")]
    labels: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a secret name, or a mapping with source:")]
enum ServiceSecret {
    Short(String),
    Long { source: String },
}

impl ServiceSecret {
    fn source(&self) -> &str {
        match self {
            ServiceSecret::Short(source) | ServiceSecret::Long { source } => source,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct SecretSpec {
    name: Option<String>,
    driver: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    labels: Labels,
    external: Option<External>,
    file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "true, false, or a mapping with name:")]
enum External {
    Flag(bool),
    /// The old `external: {name: NAME}` form.
    Legacy {
        name: Option<String>,
    },
}

/// `labels:` as a mapping (values may be strings, numbers or booleans, as
/// the compose loader prints them) or a list of `key=value`.
#[derive(Debug, Default, Clone)]
struct Labels(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Flag(bool),
            Int(i64),
            Unsigned(u64),
            Float(f64),
        }
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a mapping of labels, or a list of \"key=value\" strings"
        )]
        enum Form {
            Map(BTreeMap<String, Option<Scalar>>),
            List(Vec<String>),
        }
        let labels = match Form::deserialize(deserializer)? {
            Form::Map(map) => map
                .into_iter()
                .map(|(key, value)| {
                    let value = match value {
                        None => String::new(),
                        Some(Scalar::Text(text)) => text,
                        Some(Scalar::Flag(flag)) => flag.to_string(),
                        Some(Scalar::Int(n)) => n.to_string(),
                        Some(Scalar::Unsigned(n)) => n.to_string(),
                        Some(Scalar::Float(x)) => x.to_string(),
                    };
                    (key, value)
                })
                .collect(),
            // `key` alone is an empty value, as in the compose loader.
            Form::List(list) => list
                .into_iter()
                .map(|item| match item.split_once('=') {
                    Some((key, value)) => (key.to_string(), value.to_string()),
                    None => (item, String::new()),
                })
                .collect(),
        };
        Ok(Labels(labels))
    }
}

/// `key:` with nothing after it is YAML's null: read it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn secrets(text: &str) -> Vec<StackSecret> {
        parse(text, "st", &["vaultbridge".to_string()], &no_env).unwrap()
    }

    fn request(secret: &StackSecret) -> &GetSecretRequest<'static> {
        match &secret.check {
            Check::Resolve(requests) => &requests[0],
            Check::Skip(reason) => panic!("{} skipped: {reason}", secret.name),
        }
    }

    fn skipped(secret: &StackSecret) -> &str {
        match &secret.check {
            Check::Skip(reason) => reason,
            Check::Resolve(_) => panic!("{} not skipped", secret.name),
        }
    }

    const STACK: &str = r#"
version: "3.8"
x-common: &common
  image: busybox
  secrets:
    - shared
services:
  api:
    # Its own secrets: replace the merged list, as in Go's YAML.
    <<: *common
    deploy:
      labels: {team: payments}
    secrets:
      - db
      - source: cfg
        target: app.json
        mode: 0400
  worker:
    image: busybox
    secrets: [db]
  idle:
    <<: *common
secrets:
  db:
    driver: vaultbridge
    labels:
      vaultbridge.path: apps/db
      vaultbridge.version: 3
      vaultbridge.reuse: false
  cfg:
    driver: vaultbridge:latest
    name: global_cfg
    labels:
      - vaultbridge.field=api_key
      - vaultbridge.path=apps/cfg.json
      - com.docker.stack.namespace=forged
  shared:
    driver: docker.io/library/vaultbridge
  unused:
    driver: vaultbridge
  other:
    driver: some-other-driver
    labels: [x=y]
  local:
    file: ./local.txt
  ext:
    external: true
  legacy:
    external:
      name: real_legacy
"#;

    #[test]
    fn reads_short_and_long_syntax_labels_names_and_drivers() {
        let all = secrets(STACK);
        let by: BTreeMap<&str, &StackSecret> = all.iter().map(|s| (s.name.as_str(), s)).collect();
        let names: Vec<&str> = by.keys().copied().collect();
        assert_eq!(
            names,
            [
                "ext",
                "global_cfg",
                "real_legacy",
                "st_db",
                "st_local",
                "st_other",
                "st_shared",
                "st_unused"
            ]
        );

        let db = request(by["st_db"]);
        assert_eq!(by["st_db"].services, ["st_api", "st_worker"]);
        assert_eq!(db.service_name, "st_api");
        assert_eq!(db.secret_labels["vaultbridge.path"], "apps/db");
        // Numbers and booleans as the compose loader prints them.
        assert_eq!(db.secret_labels["vaultbridge.version"], "3");
        assert_eq!(db.secret_labels["vaultbridge.reuse"], "false");
        assert_eq!(db.secret_labels[STACK_NAMESPACE], "st");
        assert_eq!(db.service_labels["team"], "payments");
        assert_eq!(db.service_labels[STACK_NAMESPACE], "st");

        // `name:` is kept as written; the deploy's namespace label wins.
        let cfg = request(by["global_cfg"]);
        assert_eq!(cfg.secret_labels["vaultbridge.field"], "api_key");
        assert_eq!(cfg.secret_labels[STACK_NAMESPACE], "st");
        assert_eq!(cfg.service_name, "st_api");

        // Used through a merge key, with the full plugin reference.
        assert_eq!(by["st_shared"].services, ["st_idle"]);

        assert!(by["st_unused"].services.is_empty());
        assert_eq!(request(by["st_unused"]).service_name, "");

        assert!(skipped(by["st_other"]).contains("some-other-driver"));
        assert!(skipped(by["st_local"]).starts_with("file:"));
        assert!(skipped(by["ext"]).starts_with("external"));
        assert!(skipped(by["real_legacy"]).starts_with("external"));
    }

    #[test]
    fn an_alias_is_ours_and_the_default_name_is_not() {
        let text = "secrets:\n  a: {driver: 'vb:2.1'}\n  b: {driver: vaultbridge}\n";
        let all = parse(text, "st", &["vb:2.1".to_string()], &no_env).unwrap();
        assert_eq!(request(&all[0]).secret_name, "st_a");
        assert_eq!(skipped(&all[1]), "driver 'vaultbridge' (another plugin)");
    }

    #[test]
    fn empty_sections_and_label_keys_alone_are_accepted() {
        let all = secrets(
            "services:\n  api:\nsecrets:\n  a:\n    driver: vaultbridge\n    labels: [vaultbridge.path]\n  b:\n",
        );
        assert_eq!(request(&all[0]).secret_labels["vaultbridge.path"], "");
        assert_eq!(skipped(&all[1]), "no driver: and no file:");
    }

    #[test]
    fn variables_are_interpolated_as_the_deploy_does() {
        let env = |name: &str| match name {
            "ENV" => Some("prod".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let text = "secrets:\n  a:\n    driver: vaultbridge\n    labels:\n      vaultbridge.path: \"$ENV/${ENV}/${NOPE:-dflt}/${EMPTY:-e}/${EMPTY-x}/$$ENV/${NOPE}\"\n";
        let all = parse(text, "st", &["vaultbridge".to_string()], &env).unwrap();
        assert_eq!(
            request(&all[0]).secret_labels["vaultbridge.path"],
            "prod/prod/dflt/e//$ENV/"
        );
        let text = "secrets:\n  a:\n    labels: {k: \"${NOPE:?set it}\"}\n";
        let (key, message) = parse(text, "st", &[], &env).unwrap_err();
        assert_eq!(key, "secrets.a.labels.k");
        assert!(
            message.contains("NOPE") && message.contains("set it"),
            "{message}"
        );
    }

    #[test]
    fn the_plugins_own_variables_are_never_substituted() {
        let env = |name: &str| Some(format!("value-of-{name}"));
        for name in [
            "VAULT_TOKEN",
            "AWS_SECRET_ACCESS_KEY",
            "AZURE_CLIENT_SECRET",
            "SSL_CERT_FILE",
            "VAULTBRIDGE_CONFIG",
            "BAO_TOKEN",
        ] {
            for form in [
                format!("${name}"),
                format!("${{{name}}}"),
                format!("${{{name}:-x}}"),
            ] {
                let text =
                    format!("secrets:\n  a:\n    driver: vaultbridge\n    name: \"{form}\"\n");
                let (key, message) =
                    parse(&text, "st", &["vaultbridge".to_string()], &env).unwrap_err();
                assert_eq!(key, "secrets.a.name", "{form}");
                assert!(
                    message.contains("not substituted") && !message.contains("value-of"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn wide_alias_expansion_is_refused_before_parsing() {
        let k = 2_000;
        let anchor = vec!["~"; k].join(",");
        let uses = vec!["*a"; 600].join(",");
        let bomb = format!("x-a: &a [{anchor}]\nx-b: [{uses}]\nsecrets: {{}}\n");
        let (_, message) = parse(&bomb, "st", &[], &no_env).unwrap_err();
        assert!(message.contains("alias uses"), "{message}");
        // Ordinary anchors (the STACK above) are fine.
        assert!(!secrets(STACK).is_empty());
    }

    #[test]
    fn errors_name_the_key_path() {
        let cases = [
            (
                "secrets:\n  a:\n    labels: 3\n",
                "secrets.a.labels",
                "key=value",
            ),
            (
                "secrets:\n  a:\n    external: maybe\n",
                "secrets.a.external",
                "true, false",
            ),
            (
                "services:\n  api:\n    secrets:\n      - {target: x}\n",
                "services.api.secrets[0]",
                "source:",
            ),
            (
                "services:\n  api:\n    secrets: [nope]\nsecrets: {}\n",
                "services.api.secrets[0]",
                "undefined secret 'nope'",
            ),
            ("secrets: [a, b]\n", "secrets", "map"),
            ("just text\n", "(top level)", "mapping"),
            (
                "secrets:\n  a: {driver: x\n",
                "(top level)",
                "not valid YAML",
            ),
        ];
        for (text, path, needle) in cases {
            let (key, message) = parse(text, "st", &[], &no_env).unwrap_err();
            assert_eq!(key, path, "{text}: {message}");
            assert!(message.contains(needle), "{text}: {message}");
        }
    }

    #[test]
    fn stack_names_and_plugin_references() {
        assert!(parse_stack_name("st").is_ok());
        for bad in ["", " st", "s\nt"] {
            assert!(parse_stack_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(plugin_ref("vaultbridge"), "vaultbridge:latest");
        assert_eq!(
            plugin_ref("docker.io/library/vaultbridge:latest"),
            "vaultbridge:latest"
        );
        assert_eq!(
            plugin_ref("registry:5000/org/vb"),
            "registry:5000/org/vb:latest"
        );
        assert_eq!(plugin_ref("org/vb:1.2"), "org/vb:1.2");
    }

    #[test]
    fn a_large_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("stack.yml");
        std::fs::write(&file, vec![b'#'; MAX_STACK_FILE_BYTES as usize + 1]).unwrap();
        let err = load(&file, "st", &[], &no_env).unwrap_err();
        assert!(matches!(err, StackError::TooLarge { .. }), "{err}");
        let err = load(&dir.path().join("nope.yml"), "st", &[], &no_env).unwrap_err();
        assert!(err.to_string().contains("nope.yml: cannot read"), "{err}");
    }
}
