//! The access policy: which asking service may read which provider paths.
//!
//! A secret's labels are chosen by whoever creates the secret; without a
//! policy they alone decide what the plugin's credentials read. The engine
//! also says who is asking (service name and labels, image, stack): the
//! `[access]` rules match on that and allow or deny provider/path globs.
//! The first rule whose caller conditions, provider and path all match
//! decides; when none does, `default` does. It is evaluated for every
//! request before the cache, so a cached value never bypasses it.

pub mod pattern;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use vaultbridge_providers::ConfigError;
use vaultbridge_providers::path::SecretPath;

use crate::labels::{Labels as _, STACK_NAMESPACE};
use crate::protocol::GetSecretRequest;
use pattern::{Pattern, Placeholder, Values};

/// The longest service name, label value, stack or image that rules are
/// matched against (Docker's names are far shorter; image references are at
/// most a few hundred bytes).
pub const MAX_CALLER_TEXT: usize = 1024;

/// `[access]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// What happens when no rule matches; required, so that it is a choice.
    pub default: Decision,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One `[[access.rules]]` table. Every caller condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in the log line of the decisions it makes.
    pub name: Option<String>,
    /// Glob on the service's name.
    pub service: Option<String>,
    /// Globs on service labels (each label must be present).
    #[serde(default)]
    pub service_labels: BTreeMap<String, String>,
    /// Glob on the image's repository (the image without tag and digest).
    pub image: Option<String>,
    /// The image must be pinned to exactly this digest (`sha256:...`).
    pub image_digest: Option<String>,
    /// Glob on the service's stack (`com.docker.stack.namespace`); the
    /// service must be in a stack.
    pub stack: Option<String>,
    /// Globs on provider names; every provider when absent.
    pub providers: Option<Vec<String>>,
    /// Globs on paths, with placeholders for the caller.
    pub paths: Vec<String>,
    #[serde(default)]
    pub decision: Decision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    #[default]
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// Who is asking, from the engine's request.
pub struct Caller<'a> {
    pub request: &'a GetSecretRequest<'a>,
    /// The secret's name without its stack prefix (`{secret}`).
    pub secret: &'a str,
}

impl Caller<'_> {
    /// The service's stack, when it was deployed with `docker stack deploy`.
    pub fn stack(&self) -> Option<&str> {
        self.request
            .service_labels
            .label(STACK_NAMESPACE)
            .filter(|s| !s.is_empty())
    }

    /// Shown in a denial: the service's name, or that there is none.
    pub fn describe(&self) -> String {
        match &*self.request.service_name {
            "" => "a caller with no service name".to_string(),
            name => format!("service '{}'", vaultbridge_providers::text::shown(name)),
        }
    }
}

impl Values for Caller<'_> {
    fn value(&self, placeholder: &Placeholder) -> Result<&str, String> {
        let value = match placeholder {
            Placeholder::ServiceName => Some(&*self.request.service_name),
            Placeholder::Stack => self.stack(),
            Placeholder::Secret => Some(self.secret),
            Placeholder::ServiceLabel(key) => self.request.service_labels.label(key),
        };
        value.ok_or_else(|| match placeholder {
            Placeholder::Stack => "{stack}: the service is not part of a stack".to_string(),
            other => format!("{other}: the service has no such label"),
        })
    }
}

/// An image reference split as the engine sends it: `repo[:tag][@digest]`.
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // A ':' after the last '/' starts the tag (before it: a registry port).
    let repository = match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    };
    (repository, digest)
}

/// The policy, parsed and checked.
#[derive(Debug, Clone)]
pub struct Policy {
    default: Decision,
    default_label: Arc<str>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `rule 3` or `rule 3 (billing)`: how logs and `check` name it.
    label: Arc<str>,
    service: Option<Pattern>,
    service_labels: Vec<(String, Pattern)>,
    image: Option<Pattern>,
    image_digest: Option<String>,
    stack: Option<Pattern>,
    providers: Vec<Pattern>,
    paths: Vec<Pattern>,
    decision: Decision,
}

/// What the policy said about one request, and which rule said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// `rule 3 (billing)` or `default`.
    pub by: Arc<str>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {}", self.decision.as_str(), self.by)
    }
}

impl Policy {
    /// Parse `[access]`; `providers` are the configured provider names, for
    /// provider globs that can never match.
    pub fn compile(config: &AccessConfig, providers: &[&str]) -> Result<Policy, ConfigError> {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| Rule::compile(i, rule, providers))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            default: config.default,
            default_label: "default".into(),
            rules,
        })
    }

    /// The verdict on `caller` reading `path` from `provider`.
    pub fn decide(&self, caller: &Caller<'_>, provider: &str, path: &str) -> Verdict {
        let image = split_image(&caller.request.task_image);
        for rule in &self.rules {
            if rule.applies(caller, image, provider, path) {
                return Verdict {
                    decision: rule.decision,
                    by: rule.label.clone(),
                };
            }
        }
        Verdict {
            decision: self.default,
            by: self.default_label.clone(),
        }
    }

    /// One line for `check`: how many rules, and the default.
    pub fn summary(&self) -> String {
        format!(
            "{} rule(s), default {}",
            self.rules.len(),
            self.default.as_str()
        )
    }

    /// Rules that can never decide because an earlier one always does
    /// first (found conservatively: the obvious cases).
    pub fn findings(&self) -> Vec<String> {
        let mut findings = Vec::new();
        for (j, later) in self.rules.iter().enumerate() {
            if let Some(earlier) = self.rules[..j].iter().find(|e| e.shadows(later)) {
                findings.push(format!(
                    "access.rules[{j}]: {} never decides: {} matches every request it matches, first",
                    later.label, earlier.label
                ));
            }
        }
        findings
    }
}

impl Rule {
    fn compile(index: usize, config: &RuleConfig, providers: &[&str]) -> Result<Rule, ConfigError> {
        let key = |field: &str| format!("access.rules[{index}].{field}");
        let name_glob = |field: &str, text: &str| {
            Pattern::parse(text, false, true)
                .map_err(|why| ConfigError::new(key(field), format!("'{}' {why}", shown(text))))
        };
        let label = match &config.name {
            Some(name) => {
                let name = name_glob("name", name)?;
                format!("rule {index} ({name})").into()
            }
            None => format!("rule {index}").into(),
        };
        let service = config
            .service
            .as_deref()
            .map(|t| name_glob("service", t))
            .transpose()?;
        if let Some(service) = &service
            && service.text().contains('/')
        {
            return Err(ConfigError::new(
                key("service"),
                format!("'{service}' can never match: service names have no '/'"),
            ));
        }
        let service_labels = config
            .service_labels
            .iter()
            .map(|(k, v)| Ok((k.clone(), name_glob(&format!("service_labels.{k}"), v)?)))
            .collect::<Result<_, ConfigError>>()?;
        let image = config
            .image
            .as_deref()
            .map(|t| name_glob("image", t))
            .transpose()?;
        if let Some(digest) = &config.image_digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::new(
                    key("image_digest"),
                    format!("'{}' is not sha256:<64 hex digits>", shown(digest)),
                ));
            }
        }
        let stack = config
            .stack
            .as_deref()
            .map(|t| name_glob("stack", t))
            .transpose()?;
        let providers_globs = match &config.providers {
            None => vec![Pattern::parse("*", false, true).expect("a valid glob")],
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    key("providers"),
                    "is empty, so the rule never matches; remove the key to mean every provider",
                ));
            }
            Some(list) => list
                .iter()
                .map(|t| {
                    let glob = name_glob("providers", t)?;
                    let none = providers
                        .iter()
                        .all(|p| !glob.matches(p, &NoValues).unwrap_or(false));
                    if none {
                        return Err(ConfigError::new(
                            key("providers"),
                            format!(
                                "'{glob}' matches no configured provider (configured: {})",
                                providers.join(", ")
                            ),
                        ));
                    }
                    Ok(glob)
                })
                .collect::<Result<_, _>>()?,
        };
        if config.paths.is_empty() {
            return Err(ConfigError::new(
                key("paths"),
                "is empty, so the rule never matches; give at least one path glob (\"**\": every path)",
            ));
        }
        let paths = config
            .paths
            .iter()
            .map(|t| {
                let glob = Pattern::parse(t, true, true).map_err(|why| {
                    ConfigError::new(key("paths"), format!("'{}' {why}", shown(t)))
                })?;
                never_a_path(t).map_err(|why| {
                    ConfigError::new(
                        key("paths"),
                        format!("'{}' can never match a path: {why}", shown(t)),
                    )
                })?;
                Ok(glob)
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Rule {
            label,
            service,
            service_labels,
            image,
            image_digest: config.image_digest.clone(),
            stack,
            providers: providers_globs,
            paths,
            decision: config.decision,
        })
    }

    /// `image`: the caller's image as [`split_image`] splits it.
    fn applies(
        &self,
        caller: &Caller<'_>,
        (repository, digest): (&str, Option<&str>),
        provider: &str,
        path: &str,
    ) -> bool {
        let request = caller.request;
        // A name glob has no placeholder: it never fails to evaluate. A
        // caller's text beyond any real name's length is not matched (which
        // would cost time linear in a hostile megabyte): an allow rule does
        // not apply, a deny rule does (fail closed).
        let name = |glob: &Pattern, text: &str| {
            if text.len() > MAX_CALLER_TEXT {
                return self.decision == Decision::Deny;
            }
            glob.matches(text, &NoValues).unwrap_or(false)
        };
        let caller_matches = self
            .service
            .as_ref()
            .is_none_or(|g| name(g, &request.service_name))
            && self.service_labels.iter().all(|(key, glob)| {
                request
                    .service_labels
                    .label(key)
                    .is_some_and(|v| name(glob, v))
            })
            && self
                .image
                .as_ref()
                .is_none_or(|g| !repository.is_empty() && name(g, repository))
            && self
                .image_digest
                .as_deref()
                .is_none_or(|d| digest == Some(d))
            && self
                .stack
                .as_ref()
                .is_none_or(|g| caller.stack().is_some_and(|s| name(g, s)));
        if !caller_matches || !self.providers.iter().any(|g| name(g, provider)) {
            return false;
        }
        self.paths
            .iter()
            .any(|glob| match glob.matches(path, caller) {
                Ok(matched) => matched,
                // A placeholder the caller cannot fill: an allow rule cannot
                // grant with it, a deny rule applies (fail closed).
                Err(_) => self.decision == Decision::Deny,
            })
    }

    /// Whether `self`, earlier, matches every request `later` matches.
    fn shadows(&self, later: &Rule) -> bool {
        let covers = |mine: &Option<Pattern>, theirs: &Option<Pattern>| match (mine, theirs) {
            (None, _) => true,
            (Some(m), Some(t)) => m.covers(t),
            (Some(_), None) => false,
        };
        covers(&self.service, &later.service)
            && covers(&self.image, &later.image)
            && covers(&self.stack, &later.stack)
            && (self.image_digest.is_none() || self.image_digest == later.image_digest)
            && self.service_labels.iter().all(|(key, mine)| {
                later
                    .service_labels
                    .iter()
                    .any(|(k, theirs)| k == key && mine.covers(theirs))
            })
            && later
                .providers
                .iter()
                .all(|t| self.providers.iter().any(|m| m.covers(t)))
            && later
                .paths
                .iter()
                .all(|t| self.paths.iter().any(|m| m.covers(t)))
    }
}

/// Name globs have no placeholders.
struct NoValues;

impl Values for NoValues {
    fn value(&self, placeholder: &Placeholder) -> Result<&str, String> {
        Err(format!(
            "{placeholder}: placeholders are allowed only in paths"
        ))
    }
}

/// Why no valid secret path can match `glob`: its literal segments must
/// themselves be possible path segments.
fn never_a_path(glob: &str) -> Result<(), String> {
    if glob.starts_with('/') {
        return Err("paths never start with '/'".into());
    }
    for segment in glob.split('/') {
        if segment.contains(['*', '?', '{']) {
            continue;
        }
        // A literal segment: must be a valid one-segment path.
        SecretPath::parse(segment).map_err(|why| format!("segment '{}': {why}", shown(segment)))?;
    }
    Ok(())
}

fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    vaultbridge_providers::text::shown(text)
}

#[cfg(test)]
mod tests;
