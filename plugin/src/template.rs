//! Named templates: one secret file built from several lookups
//! (`[templates.<name>]`, selected by the label `vaultbridge.template`).
//!
//! A template's lookups are `secret(provider, path, field=, version=,
//! decode=)` calls. minijinja functions are synchronous and lookups are not,
//! so a template is rendered twice:
//! 1. at start, without values: `secret()` records the lookup and returns a
//!    placeholder. A template has no other input (no context, no files, no
//!    environment, no clock), so this render and the [`Plan`] it makes are
//!    the same for every request;
//! 2. per request, once the resolver has fetched the plan's inputs through
//!    its one pipeline (policy, cache, per-task values, audit): `secret()`
//!    returns the values, and each call must be the one the plan holds at
//!    that position. A lookup that depends on a value (in its arguments,
//!    or in whether it is made) is refused: a value would otherwise become a
//!    path, and paths are logged.
//!
//! Errors name the template and the line. A render error with values in
//! play shows its kind only, unless the render without values stopped on
//! the very same error: minijinja's detail can quote the value it failed on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::value::{Kwargs, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use secrecy::ExposeSecret;
use serde::Deserialize;
use vaultbridge_providers::ConfigError;
use vaultbridge_providers::path::{SecretPath, check_version};
use vaultbridge_providers::text::shown;
use zeroize::Zeroizing;

use crate::cache;
use crate::labels::{self, Decode, Lookup};

/// `[templates.<name>]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// The text (Jinja syntax, rendered by minijinja); its lookups are
    /// `secret(...)` calls.
    pub source: String,
}

/// Distinct lookups one template may make: each is a backend call, a
/// policy decision and an audit record per task.
pub const MAX_INPUTS: usize = 32;
/// minijinja's budget per render: about one unit per instruction and per
/// 64 bytes allocated, so ~16 MB and a few milliseconds at most. A loop
/// cannot hang the plugin, and a template cannot grow a value without end.
pub const FUEL: u64 = 250_000;
/// Nesting of blocks, loops and macros.
const RECURSION_LIMIT: usize = 100;
/// A template is configuration, not data.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;

/// What a placeholder starts and ends with in the render without values:
/// a `secret()` argument that holds one depends on a value.
const MARK: char = '\u{1}';

/// The configured templates, compiled and planned.
#[derive(Default)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
}

impl Templates {
    /// Compile every template and plan its lookups; an error names the key
    /// (`templates.<name>.source`), the line and what to fix.
    pub fn compile(
        configs: &BTreeMap<String, TemplateConfig>,
        providers: &[&str],
    ) -> Result<Templates, ConfigError> {
        let mut by_name = BTreeMap::new();
        for (name, config) in configs {
            if !labels::is_valid_name(name) {
                return Err(ConfigError::new(
                    format!("templates.{name}"),
                    "template names use only letters, digits, '-' and '_' (at most 64 bytes)",
                ));
            }
            let template = Template::compile(name, &config.source, providers)
                .map_err(|err| ConfigError::new(format!("templates.{name}.source"), err.message))?;
            by_name.insert(name.clone(), template);
        }
        Ok(Templates { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Template> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Template> {
        self.by_name.values()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The configured names, for an error about an unknown one.
    pub fn names(&self) -> String {
        match self.by_name.is_empty() {
            true => "none".to_string(),
            false => self.by_name.keys().cloned().collect::<Vec<_>>().join(", "),
        }
    }
}

/// One compiled template and the lookups it makes.
pub struct Template {
    name: String,
    env: Environment<'static>,
    providers: Arc<[String]>,
    plan: Plan,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// The lookups of a template, from its render without values.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Distinct lookups, in the order first made (each `reuse: true`).
    pub inputs: Vec<Lookup>,
    /// Every `secret()` call in order: its index in `inputs`.
    calls: Vec<usize>,
    /// Where the render without values stopped, when it did (e.g. `|int`
    /// on a placeholder): calls after it are not in the plan.
    stopped: Option<Stopped>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stopped {
    kind: ErrorKind,
    line: Option<usize>,
    /// From a render without values: safe to show.
    detail: String,
}

/// A template that cannot be compiled or rendered; the message names the
/// template and the line, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
}

/// Kinds of error that no value can cause or cure: found at start.
fn is_written_wrong(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::SyntaxError
            | ErrorKind::UnknownFilter
            | ErrorKind::UnknownTest
            | ErrorKind::UnknownFunction
            | ErrorKind::TooManyArguments
            | ErrorKind::MissingArgument
            | ErrorKind::BadEscape
            | ErrorKind::InvalidDelimiter
            | ErrorKind::OutOfFuel
    )
}

impl Template {
    pub fn compile(
        name: &str,
        source: &str,
        providers: &[&str],
    ) -> Result<Template, TemplateError> {
        let fail = |message: String| TemplateError {
            message: format!("template '{name}': {message}"),
        };
        if source.len() > MAX_SOURCE_BYTES {
            return Err(fail(format!(
                "the source is {} bytes; at most {MAX_SOURCE_BYTES}",
                source.len()
            )));
        }
        let mut env = Environment::new();
        // No loader: `include`, `import` and `extends` are not even parsed
        // (minijinja's `multi_template` feature is off), so nothing reads a
        // file. No context and no function reads the environment or a clock.
        // `debug()` would print the render's state into the output.
        env.remove_global("debug");
        // A misspelt variable fails instead of writing nothing into a secret.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        // The file is what the source says, final newline included.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(|err| fail(describe(&err, true)))?;
        env.set_syntax(syntax);
        env.add_template_owned(name.to_string(), source.to_string())
            .map_err(|err| error_at(name, err.line(), &describe(&err, true)))?;
        let mut template = Template {
            name: name.to_string(),
            env,
            providers: providers.iter().map(|p| p.to_string()).collect(),
            plan: Plan::default(),
        };
        template.plan = template.make_plan()?;
        Ok(template)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lookups a request for this template makes.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Why the render without values stopped early, if it did: lookups
    /// after that line are refused (for `check`).
    pub fn stopped(&self) -> Option<String> {
        self.plan
            .stopped
            .as_ref()
            .map(|stopped| format!("{}: {}", at_line(stopped.line), stopped.detail))
    }

    /// Render without values: which lookups, in which order.
    fn make_plan(&self) -> Result<Plan, TemplateError> {
        let pass = Arc::new(Mutex::new(Pass {
            fill: None,
            plan: Plan::default(),
            call: 0,
            refused: None,
        }));
        let mut out = Capped::new(MAX_SOURCE_BYTES * 16);
        let result = self.run(&pass, &mut out);
        let mut pass = lock(&pass);
        match result {
            Ok(()) => Ok(std::mem::take(&mut pass.plan)),
            Err(err) => {
                if let Some(refused) = pass.refused.take() {
                    return Err(self.error(err.line(), &refused));
                }
                if is_written_wrong(err.kind()) || out.over {
                    return Err(self.error(err.line(), &describe(&err, true)));
                }
                // Maybe only a placeholder's fault: the render with values
                // decides, and refuses lookups this one did not reach.
                let mut plan = std::mem::take(&mut pass.plan);
                plan.stopped = Some(Stopped {
                    kind: err.kind(),
                    line: err.line(),
                    detail: describe(&err, true),
                });
                Ok(plan)
            }
        }
    }

    /// Render with `values`, one per input of the plan, in its order. The
    /// output is at most `limit` bytes.
    pub fn render(
        &self,
        values: &[cache::Value],
        limit: usize,
    ) -> Result<Zeroizing<Vec<u8>>, TemplateError> {
        if values.len() != self.plan.inputs.len() {
            return Err(self.error(None, "internal error: values do not match the lookups"));
        }
        let mut texts = Vec::with_capacity(values.len());
        for (value, lookup) in values.iter().zip(&self.plan.inputs) {
            match std::str::from_utf8(value.expose_secret()) {
                Ok(text) => texts.push(Value::from(text)),
                Err(_) => {
                    return Err(self.error(
                        None,
                        &format!(
                            "the value of {} is not UTF-8 text, and a template inserts text; serve it as a secret of its own",
                            describe_lookup(lookup)
                        ),
                    ));
                }
            }
        }
        let pass = Arc::new(Mutex::new(Pass {
            fill: Some((self.plan.clone(), texts)),
            plan: Plan::default(),
            call: 0,
            refused: None,
        }));
        let mut out = Capped::new(limit);
        let result = self.run(&pass, &mut out);
        let mut pass = lock(&pass);
        if let Err(err) = result {
            if let Some(refused) = pass.refused.take() {
                return Err(self.error(err.line(), &refused));
            }
            if out.over {
                return Err(self.error(
                    None,
                    &format!("the output is larger than {limit} bytes; Docker accepts at most {limit} bytes"),
                ));
            }
            let same = self.plan.stopped.as_ref().is_some_and(|stopped| {
                stopped.kind == err.kind()
                    && stopped.line == err.line()
                    && stopped.detail == describe(&err, true)
            });
            let mut message = describe(&err, same);
            if !same {
                message.push_str(" (its detail is not shown: it may quote a looked-up value)");
            }
            if err.kind() == ErrorKind::OutOfFuel {
                message.push_str(&format!(
                    "; a template may take about {FUEL} steps (a loop over a value?)"
                ));
            }
            return Err(self.error(err.line(), &message));
        }
        if pass.call != self.plan.calls.len() {
            return Err(self.error(None, DEPENDS_ON_A_VALUE));
        }
        pass.fill = None;
        Ok(std::mem::take(&mut out.bytes))
    }

    fn run(&self, pass: &Arc<Mutex<Pass>>, out: &mut Capped) -> Result<(), Error> {
        let mut env = self.env.clone();
        let state = pass.clone();
        let providers = self.providers.clone();
        env.add_function(
            "secret",
            move |provider: Value, path: Value, kwargs: Kwargs| -> Result<Value, Error> {
                lock(&state).secret(&providers, &provider, &path, &kwargs)
            },
        );
        let template = env.get_template(&self.name)?;
        template.render_captured_to((), out).map(|_| ())
    }

    fn error(&self, line: Option<usize>, message: &str) -> TemplateError {
        error_at(&self.name, line, message)
    }
}

/// "template 'pgpass', line 3: <message>".
fn error_at(name: &str, line: Option<usize>, message: &str) -> TemplateError {
    let at = match line {
        Some(line) if line > 0 => format!(", line {line}"),
        _ => String::new(),
    };
    TemplateError {
        message: format!("template '{name}'{at}: {message}"),
    }
}

const DEPENDS_ON_A_VALUE: &str = "the lookups differ once the values are known: a secret() call's arguments, or whether it is made, depend on a looked-up value (which would then be logged as a path); write every lookup with constant arguments, outside conditions on values";

/// One render's bookkeeping, shared with the `secret()` function.
struct Pass {
    /// The render with values: the plan to follow and a value per input.
    fill: Option<(Plan, Vec<Value>)>,
    /// The render without values: what it found so far.
    plan: Plan,
    /// `secret()` calls so far.
    call: usize,
    /// Our own refusal: shown in full (it never quotes a value).
    refused: Option<String>,
}

fn lock(pass: &Mutex<Pass>) -> std::sync::MutexGuard<'_, Pass> {
    pass.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pass {
    fn secret(
        &mut self,
        providers: &[String],
        provider: &Value,
        path: &Value,
        kwargs: &Kwargs,
    ) -> Result<Value, Error> {
        let call = self.call;
        self.call += 1;
        let lookup = lookup_of(providers, provider, path, kwargs);
        let Some((plan, values)) = &self.fill else {
            let lookup = lookup.map_err(|message| self.refuse(message))?;
            let index = match self.plan.inputs.iter().position(|known| *known == lookup) {
                Some(index) => index,
                None if self.plan.inputs.len() == MAX_INPUTS => {
                    return Err(self.refuse(format!(
                        "more than {MAX_INPUTS} different secret() lookups; split the file into several secrets"
                    )));
                }
                None => {
                    self.plan.inputs.push(lookup);
                    self.plan.inputs.len() - 1
                }
            };
            self.plan.calls.push(index);
            return Ok(Value::from(format!("{MARK}input{index}{MARK}")));
        };
        // With values, arguments may hold one: no message may quote them.
        let planned = plan.calls.get(call).copied();
        match (lookup, planned) {
            (Ok(lookup), Some(index)) if plan.inputs[index] == lookup => Ok(values[index].clone()),
            (_, None) if plan.stopped.is_some() => {
                let stopped = plan.stopped.as_ref().map_or(String::new(), |s| {
                    format!("{} ({})", at_line(s.line), s.detail)
                });
                Err(self.refuse(format!(
                    "this secret() call comes after {stopped}, where the render without values stopped, so it is not known before values are fetched; make every lookup first, e.g. {{% set password = secret(...) %}} at the top"
                )))
            }
            _ => Err(self.refuse(DEPENDS_ON_A_VALUE.to_string())),
        }
    }

    fn refuse(&mut self, message: String) -> Error {
        self.refused = Some(message);
        Error::new(ErrorKind::InvalidOperation, "secret() refused")
    }
}

/// A `secret()` call's arguments as a lookup, checked as labels are.
/// Messages quote the arguments: call only where they are constants.
fn lookup_of(
    providers: &[String],
    provider: &Value,
    path: &Value,
    kwargs: &Kwargs,
) -> Result<Lookup, String> {
    let text = |name: &str, value: &Value| -> Result<String, String> {
        let text = match value.as_str() {
            Some(text) => text.to_string(),
            // `version=3` as well as `version="3"`.
            None if value.is_number() => value.to_string(),
            None => return Err(format!("secret(): {name} must be a string")),
        };
        if text.contains(MARK) {
            return Err(format!(
                "secret(): its {name} depends on a looked-up value (which would then be logged as a path); write each lookup's provider, path, field and version as constants"
            ));
        }
        Ok(text)
    };
    let keyword = |name: &str| -> Result<Option<String>, String> {
        let value: Option<Value> = kwargs
            .get(name)
            .map_err(|_| format!("secret(): {name} must be a string"))?;
        value
            .filter(|value| !value.is_none() && !value.is_undefined())
            .map(|value| text(name, &value))
            .transpose()
    };
    let provider = text("provider", provider)?;
    let path = text("path", path)?;
    let field = keyword("field")?;
    let version = keyword("version")?;
    let decode = keyword("decode")?;
    kwargs.assert_all_used().map_err(|_| {
        "secret(): unknown keyword argument; it takes provider, path, field=, version= and decode=".to_string()
    })?;
    if !providers.contains(&provider) {
        return Err(format!(
            "secret(): provider '{}' is not configured (configured: {})",
            shown(&provider),
            providers.join(", ")
        ));
    }
    let path = SecretPath::parse(&path)
        .map_err(|reason| format!("secret(): path '{}' is refused: {reason}", shown(&path)))?;
    if let Some(field) = &field
        && !labels::is_valid_field(field)
    {
        return Err(format!(
            "secret(): field '{}' is not valid; expected {}",
            shown(field),
            labels::FIELD_EXPECTED
        ));
    }
    if let Some(version) = &version {
        check_version(version).map_err(|reason| {
            format!(
                "secret(): version '{}' is refused: {reason}",
                shown(version)
            )
        })?;
    }
    let decode = match decode.as_deref() {
        None | Some("none") => Decode::None,
        Some("base64") => Decode::Base64,
        Some(other) => {
            return Err(format!(
                "secret(): decode '{}' is not valid; expected 'base64' or 'none'",
                shown(other)
            ));
        }
    };
    Ok(Lookup {
        provider: Some(provider),
        path,
        field,
        version,
        decode,
        reuse: true,
        rotate: false,
        rotation: None,
    })
}

/// "provider 'p', path 'a/b'" (field and version too): configuration text.
pub fn describe_lookup(lookup: &Lookup) -> String {
    let mut text = format!(
        "provider '{}', path '{}'",
        lookup.provider.as_deref().unwrap_or("-"),
        shown(lookup.path.path())
    );
    if let Some(field) = &lookup.field {
        text.push_str(&format!(", field '{}'", shown(field)));
    }
    if let Some(version) = &lookup.version {
        text.push_str(&format!(", version '{}'", shown(version)));
    }
    text
}

fn at_line(line: Option<usize>) -> String {
    match line {
        Some(line) if line > 0 => format!("line {line}"),
        _ => "the start".to_string(),
    }
}

/// "syntax error: unexpected end of input"; without the detail, the kind.
fn describe(err: &Error, with_detail: bool) -> String {
    match err.detail() {
        Some(detail) if with_detail => format!("{}: {}", err.kind(), shown(detail)),
        _ => err.kind().to_string(),
    }
}

/// The output, refused past `limit` bytes as soon as it gets there.
struct Capped {
    bytes: Zeroizing<Vec<u8>>,
    limit: usize,
    over: bool,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Zeroizing::new(Vec::new()),
            limit,
            over: false,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("output limit"));
        }
        // Grown by hand, so that no copy is left behind unzeroized.
        if self.bytes.capacity() < self.bytes.len() + buf.len() {
            let wanted = (self.bytes.len() + buf.len())
                .max(self.bytes.capacity() * 2)
                .min(self.limit);
            let mut grown = Zeroizing::new(Vec::with_capacity(wanted));
            grown.extend_from_slice(&self.bytes);
            self.bytes = grown;
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretSlice;

    const PROVIDERS: &[&str] = &["vault", "aws"];

    fn compile(source: &str) -> Result<Template, String> {
        Template::compile("t", source, PROVIDERS).map_err(|err| err.message)
    }

    fn values(texts: &[&[u8]]) -> Vec<cache::Value> {
        texts
            .iter()
            .map(|text| Arc::new(SecretSlice::from(text.to_vec())))
            .collect()
    }

    fn render(template: &Template, texts: &[&[u8]]) -> Result<String, String> {
        template
            .render(&values(texts), 511_999)
            .map(|out| String::from_utf8(out.to_vec()).unwrap())
            .map_err(|err| err.message)
    }

    fn paths(template: &Template) -> Vec<String> {
        template
            .plan()
            .inputs
            .iter()
            .map(|lookup| {
                format!(
                    "{}:{}:{}",
                    lookup.provider.as_deref().unwrap(),
                    lookup.path.as_str(),
                    lookup.field.as_deref().unwrap_or("-")
                )
            })
            .collect()
    }

    #[test]
    fn plans_each_distinct_lookup_once_in_order() {
        let template = compile(
            "{{ secret('vault', 'apps/db', field='host') }}:5432:*:\
             {{ secret('vault', 'apps/db', field='user') }}:{{ secret('aws', 'db-pw') }}\n\
             # {{ secret('vault', 'apps/db', field='user') }}\n",
        )
        .unwrap();
        assert_eq!(
            paths(&template),
            ["vault:apps/db:host", "vault:apps/db:user", "aws:db-pw:-"]
        );
        assert_eq!(
            render(&template, &[b"db.internal", b"billing", b"p:w\\d"]).unwrap(),
            "db.internal:5432:*:billing:p:w\\d\n# billing\n",
            "the final newline is kept"
        );
    }

    #[test]
    fn filters_quote_values_for_the_file_format() {
        let template = compile(
            "jdbc:postgresql://db:5432/app?user={{ secret('vault', 'db', field='user')|urlencode }}\
             &password={{ secret('aws', 'pw')|urlencode }}\n\
             password: {{ secret('aws', 'pw')|tojson }}\n\
             {{ secret('vault', 'db', field='user')|replace('\\\\', '\\\\\\\\')|replace(':', '\\\\:') }}",
        )
        .unwrap();
        let out = render(&template, &[b"a:b", b"p&w=\"x"]).unwrap();
        assert_eq!(
            out,
            "jdbc:postgresql://db:5432/app?user=a%3Ab&password=p%26w%3D%22x\n\
             password: \"p\\u0026w=\\\"x\"\n\
             a\\:b"
        );
    }

    #[test]
    fn keyword_arguments_are_checked_as_labels_are() {
        let template =
            compile("{{ secret('vault', 'kv/x', version=3, decode='base64', field='f') }}")
                .unwrap();
        let lookup = &template.plan().inputs[0];
        assert_eq!(lookup.version.as_deref(), Some("3"));
        assert_eq!(lookup.decode, Decode::Base64);
        for (source, wanted) in [
            (
                "{{ secret('gcp', 'x') }}",
                "provider 'gcp' is not configured (configured: vault, aws)",
            ),
            (
                "{{ secret('vault', 'a/../b') }}",
                "path 'a/../b' is refused",
            ),
            (
                "{{ secret('vault', 'a', version='1/2') }}",
                "version '1/2' is refused",
            ),
            (
                "{{ secret('vault', 'a', decode='hex') }}",
                "decode 'hex' is not valid",
            ),
            (
                "{{ secret('vault', 'a', colour='red') }}",
                "unknown keyword argument",
            ),
            (
                "{{ secret('vault', 'a', field=['x']) }}",
                "field must be a string",
            ),
            ("{{ secret('vault') }}", "missing argument"),
        ] {
            let err = compile(source).unwrap_err();
            assert!(
                err.starts_with("template 't', line 1: ") && err.contains(wanted),
                "{source}: {err}"
            );
        }
    }

    #[test]
    fn written_mistakes_are_found_at_start_with_their_line() {
        for (source, wanted) in [
            ("ok\n{{ secret('vault', 'a') ", "line 2: syntax error"),
            ("{% include 'x' %}", "syntax error"),
            ("{% import 'x' as y %}", "syntax error"),
            ("{% extends 'x' %}", "syntax error"),
            ("{{ debug() }}", "unknown function"),
            (
                "\n\n{{ secret('vault', 'a')|nope }}",
                "line 3: unknown filter",
            ),
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                "fuel",
            ),
        ] {
            let err = compile(source).unwrap_err();
            assert!(
                err.starts_with("template 't'") && err.contains(wanted),
                "{source}: {err}"
            );
        }
        let many: String = (0..=MAX_INPUTS)
            .map(|i| format!("{{{{ secret('vault', 'a{i}') }}}}"))
            .collect();
        assert!(compile(&many).unwrap_err().contains("more than 32"));
        let huge = "x".repeat(MAX_SOURCE_BYTES + 1);
        assert!(compile(&huge).unwrap_err().contains("at most 65536"));
        // A misspelt variable writes nothing into a secret: it fails.
        let template = compile("{{ secret('vault', 'a') }}{{ pasword }}").unwrap();
        let err = render(&template, &[b"v"]).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn a_lookup_cannot_depend_on_a_value() {
        // Its arguments: refused at start.
        for source in [
            "{{ secret('vault', secret('vault', 'a')) }}",
            "{{ secret('vault', 'apps/' ~ secret('vault', 'a')) }}",
            "{{ secret('vault', 'a', field=secret('aws', 'b')|upper) }}",
            "{% set p = secret('vault', 'a') %}{{ secret(p, 'x') }}",
        ] {
            let err = compile(source).unwrap_err();
            assert!(
                err.contains("depends on a looked-up value"),
                "{source}: {err}"
            );
        }
        // Whether it is made: refused once the values are known.
        let template = compile(
            "{% if secret('vault', 'flag') == 'on' %}{{ secret('aws', 'x') }}{% endif %}ok",
        )
        .unwrap();
        assert_eq!(paths(&template), ["vault:flag:-"]);
        assert_eq!(render(&template, &[b"off"]).unwrap(), "ok");
        let err = render(&template, &[b"on"]).unwrap_err();
        assert!(err.contains("the lookups differ"), "{err}");
        // A slice of a value in an argument, which keeps no placeholder mark.
        let template =
            compile("{{ secret('vault', 'a/' ~ (secret('vault', 'k')[1:3] or 'x')) }}").unwrap();
        assert_eq!(paths(&template), ["vault:k:-", "vault:a/in:-"]);
        let err = render(&template, &[b"QZXW", b"y"]).unwrap_err();
        assert!(err.contains("the lookups differ"), "{err}");
        assert!(!err.contains("ZX"), "{err}");
    }

    #[test]
    fn lookups_after_a_placeholder_failure_must_come_first() {
        let late = compile("{{ (secret('vault', 'a')|split(':'))[1] }}\n{{ secret('aws', 'b') }}")
            .unwrap();
        assert_eq!(paths(&late), ["vault:a:-"]);
        assert!(late.stopped().unwrap().starts_with("line 1"));
        let err = render(&late, &[b"x:y"]).unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("set password = secret(...)"),
            "{err}"
        );
        let first = compile(
            "{% set a = secret('vault', 'a') %}{% set b = secret('aws', 'b') %}\
             {{ (a|split(':'))[1] }}/{{ b }}",
        )
        .unwrap();
        assert_eq!(render(&first, &[b"x:y", b"z"]).unwrap(), "y/z");
    }

    const VALUE: &[u8] = b"Hunter2-Tr0ub4dor-s3cret";

    #[test]
    fn render_errors_never_quote_a_value() {
        for source in [
            "{{ secret('vault', 'a')|int }}",
            "{{ secret('vault', 'a') + 1 }}",
            "{{ secret('vault', 'a') - 1 }}",
            "{{ secret('vault', 'a').x.y }}",
            "{{ secret('vault', 'a')[1000] }}",
            "{{ secret('vault', 'a')|float }}",
            "{{ (secret('vault', 'a')|split('-'))[9] }}",
            "{{ range(secret('vault', 'a')) }}",
            "{{ secret('vault', 'a')|attr(secret('vault', 'a')) }}",
            "{{ dict(a=1)[secret('vault', 'a')] }}",
            "{{ {secret('vault', 'a'): 1}[2] }}",
            "{% for k, v in secret('vault', 'a') %}{% endfor %}",
            "{{ secret('vault', 'a')|join(1, 2, 3) }}",
            "{{ secret('vault', 'a') is divisibleby(secret('vault', 'a')) }}",
            "{{ secret('vault', 'a')|replace(1) }}",
            "{{ secret('vault', 'a')|indent(secret('vault', 'a')) }}",
            "{{ secret('vault', 'a')|round }}",
            "{{ secret('vault', 'a')|batch(secret('vault', 'a')) }}",
            "{{ secret('vault', 'a') * secret('vault', 'a') }}",
            "{{ secret('vault', 'a')|tojson(indent=secret('vault', 'a')) }}",
            "{% set x = namespace() %}{{ x[secret('vault', 'a')] }}",
            "{{ secret('vault', 'a') in 42 }}",
        ] {
            let Ok(template) = compile(source) else {
                continue;
            };
            let Err(err) = render(&template, &[VALUE]) else {
                continue;
            };
            assert!(err.starts_with("template 't'"), "{source}: {err}");
            for piece in VALUE.chunks(6) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(!err.contains(piece), "{source}: {err}");
            }
        }
        // minijinja's own details that do quote a value: withheld.
        for (source, value) in [
            ("{{ secret('vault', 'a')|int // 0 }}", "987654321"),
            ("{{ secret('vault', 'a')|int ** 100000 }}", "987654321"),
        ] {
            let template = compile(source).unwrap();
            let err = render(&template, &[value.as_bytes()]).unwrap_err();
            assert!(
                err.contains("not shown") && !err.contains(value),
                "{source}: {err}"
            );
        }
        // And a value-free failure keeps its detail.
        let template = compile("{{ secret('vault', 'a') }}{{ 1 + 'x' }}").unwrap();
        let err = render(&template, &[VALUE]).unwrap_err();
        assert!(
            err.contains("unsupported operand") || err.contains("+"),
            "{err}"
        );
        assert!(!err.contains("not shown"), "{err}");
    }

    #[test]
    fn a_render_is_bounded_in_time_and_size() {
        // A loop over a long value runs out of fuel instead of hanging.
        let template = compile(
            "{% for c in secret('vault', 'a') %}{% for i in range(1000) %}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let long = vec![b'x'; 100_000];
        let started = std::time::Instant::now();
        let err = render(&template, &[&long]).unwrap_err();
        assert!(err.contains("fuel"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // The output stops at the limit.
        let template = compile("{{ secret('vault', 'a') }}{{ secret('vault', 'a') }}").unwrap();
        let half = vec![b'y'; 300_000];
        let err = render(&template, &[&half]).unwrap_err();
        assert!(err.contains("larger than 511999 bytes"), "{err}");
        assert_eq!(
            render(&template, &[&half[..255_999]]).unwrap().len(),
            511_998
        );
        let err = compile("{{ 'x' * 100000000 }}").unwrap_err();
        assert!(err.contains("too large") || err.contains("fuel"), "{err}");
    }

    #[test]
    fn values_must_be_text() {
        let template = compile("{{ secret('vault', 'bin', field='k') }}").unwrap();
        let err = render(&template, &[b"\xff\xfe"]).unwrap_err();
        assert!(
            err.contains("provider 'vault', path 'bin', field 'k'") && err.contains("not UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn the_documented_examples_render_as_documented() {
        #[derive(Deserialize)]
        struct File {
            templates: BTreeMap<String, TemplateConfig>,
        }
        let doc = include_str!("../../docs/templates.md");
        let block = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let file: File = toml::from_str(block).unwrap();
        let templates = Templates::compile(&file.templates, &["vault-prod", "aws"]).unwrap();
        let render = |name: &str| {
            let template = templates.get(name).unwrap();
            let out = template
                .render(&values(&[b"bill:ing", b"p@ss:w\\rd&x"]), 511_999)
                .unwrap();
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(
            render("pgpass"),
            "db.internal:5432:billing:bill\\:ing:p@ss\\:w\\\\rd&x\n"
        );
        assert_eq!(
            render("billing-jdbc"),
            "jdbc:postgresql://db.internal:5432/billing?user=bill%3Aing&password=p%40ss%3Aw%5Crd%26x"
        );
    }

    #[test]
    fn template_names_and_keys_are_checked_in_the_config() {
        let configs = BTreeMap::from([(
            "bad name".to_string(),
            TemplateConfig { source: "x".into() },
        )]);
        let err = Templates::compile(&configs, PROVIDERS).err().unwrap();
        assert_eq!(err.key, "templates.bad name");
        let configs = BTreeMap::from([(
            "pg".to_string(),
            TemplateConfig {
                source: "{{ secret('nope', 'a') }}".into(),
            },
        )]);
        let err = Templates::compile(&configs, PROVIDERS).err().unwrap();
        assert_eq!(err.key, "templates.pg.source");
        assert!(err.message.contains("'nope' is not configured"), "{err}");
    }
}
