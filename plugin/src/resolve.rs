//! From a [`Lookup`] to the bytes Docker mounts: pick the provider, fetch,
//! pick a JSON field, decode base64, enforce Docker's size limits.
//!
//! This is the one place that knows the rules every backend shares; the
//! server, the `get` command and `check --stack` all go through
//! [`Resolver::answer`], which turns a GetSecret request into its result.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretSlice};
use vaultbridge_providers::{ConfigError, Provider, SecretRef, SecretValue, TaskKey};

use crate::access::pattern::Pattern;
use crate::access::{Caller, Decision, Policy, Verdict};
use crate::cache::{self, Cache, Fetched, Key, Lifetimes, Source};
use crate::config::Config;
pub use crate::error::{Failure, MAX_ERROR_CHARS, ResolveError};
use crate::issued::{Issued, TaskSecret};
use crate::labels::{self, Decode, FIELD, Lookup, TemplateRef};
use crate::metrics::{Metrics, Scrape};
use crate::protocol::GetSecretRequest;
use crate::template::Templates;
use crate::tuning::{Tuning, Upstream};
use vaultbridge_providers::text::shown;

/// Docker refuses secret values outside 1..=511999 bytes (swarmkit's
/// `MaxSecretSize` is 500 KiB, exclusive).
pub const MAX_VALUE_BYTES: usize = 500 * 1024 - 1;

/// The configured providers, by name, the default among them, and the
/// cache in front of them.
pub struct Resolver {
    providers: BTreeMap<String, Arc<Upstream>>,
    default: Option<String>,
    cache: Arc<Cache>,
    /// Per-task values by (task, secret), for the engine's re-asks.
    issued: Issued,
    /// `[access]`: checked for every request, before the cache.
    policy: Option<Policy>,
    /// `default_path`: the path of a secret without a path label.
    default_path: Option<Pattern>,
    /// `[templates.<name>]`, for secrets labelled `vaultbridge.template`.
    templates: Templates,
    metrics: Arc<Metrics>,
}

/// A value ready for Docker.
pub struct Resolved {
    pub value: cache::Value,
    /// Answer `DoNotReuse: true`: the value is unique to this task.
    pub per_task: bool,
    /// Where the answer came from: the cache, a shared call, the backend.
    pub source: Source,
    /// How long a per-task value stays valid, when the backend said.
    pub lease: Option<std::time::Duration>,
    /// The backend made this value for this request (a lease, a token), as
    /// opposed to one read again for `vaultbridge.reuse=false` or handed
    /// out again: what a new leader's plugin must not make twice.
    pub minted: bool,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("len", &self.value.expose_secret().len())
            .field("per_task", &self.per_task)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What one GetSecret request came to, before it becomes Docker's answer.
#[derive(Debug)]
pub struct Answer {
    /// The provider the request was routed to, once routing got that far.
    pub provider: Option<Arc<str>>,
    /// The validated path, once the labels parsed.
    pub path: Option<String>,
    pub version: Option<String>,
    /// The access policy's verdict, when there is a policy and the request
    /// got as far as a provider and a path.
    pub verdict: Option<Verdict>,
    /// The template the labels named (then provider, path and verdict are
    /// each input's, in `inputs`).
    pub template: Option<String>,
    /// A template's lookups, as judged and fetched for this request.
    pub inputs: Vec<Input>,
    pub result: Result<Resolved, Failure>,
}

/// One lookup of a template, for the log and the audit trail.
#[derive(Debug)]
pub struct Input {
    pub provider: String,
    pub path: String,
    pub version: Option<String>,
    pub verdict: Option<Verdict>,
    /// `ok`, a failure's outcome word, or `skipped` (not fetched: another
    /// input was refused first).
    pub outcome: &'static str,
    pub source: Option<Source>,
}

/// Whether the policy lets the caller read a lookup, and its verdict.
struct Judged {
    verdict: Option<Verdict>,
    refused: Option<Failure>,
}

impl Resolver {
    /// Build every configured provider. No network I/O happens here, so the
    /// socket opens quickly; `vaultbridge check` proves the backends work.
    pub async fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let tables: Vec<(&str, &vaultbridge_providers::ProviderConfig)> = config
            .providers
            .iter()
            .map(|(name, entry)| (name.as_str(), &entry.backend))
            .collect();
        vaultbridge_providers::config::check_together(&tables)?;
        let mut providers = BTreeMap::new();
        for (name, entry) in &config.providers {
            let provider = entry.backend.build(&format!("providers.{name}")).await?;
            providers.insert(name.clone(), (provider, entry.tuning));
        }
        let resolver = Self::new(providers, config.default_provider.clone(), config.cache);
        Ok(resolver
            .with_access(config.policy()?, config.default_path()?)
            .with_templates(config.templates()?))
    }

    /// Serve `templates` for secrets labelled `vaultbridge.template`.
    pub fn with_templates(mut self, templates: Templates) -> Self {
        self.templates = templates;
        self
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Check `policy` on every request; fill `default_path` in for secrets
    /// without a path label.
    pub fn with_access(mut self, policy: Option<Policy>, default_path: Option<Pattern>) -> Self {
        self.policy = policy;
        self.default_path = default_path;
        self
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }

    pub fn new(
        providers: BTreeMap<String, (Arc<dyn Provider>, Tuning)>,
        default: Option<String>,
        limits: cache::Limits,
    ) -> Self {
        // With a single provider there is nothing to choose between.
        let default = default.or_else(|| {
            (providers.len() == 1)
                .then(|| providers.keys().next().cloned())
                .flatten()
        });
        let metrics = Arc::new(Metrics::new(providers.keys().map(String::as_str)));
        let providers = providers
            .into_iter()
            .map(|(name, (provider, tuning))| {
                let counted = metrics.provider(&name).cloned();
                let upstream = match counted {
                    Some(counted) => {
                        Upstream::with_metrics(name.clone(), provider, tuning, counted)
                    }
                    None => Upstream::new(name.clone(), provider, tuning),
                };
                (name, Arc::new(upstream))
            })
            .collect();
        Self {
            providers,
            default,
            cache: Arc::new(Cache::new(limits)),
            issued: Issued::default(),
            policy: None,
            default_path: None,
            templates: Templates::default(),
            metrics,
        }
    }

    /// The counters the server and the backends' calls update.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metrics in the Prometheus text format, as scraped now.
    pub fn render_metrics(&self) -> String {
        let (cache_entries, cache_bytes) = self.cache.usage();
        let credentials = self
            .metrics
            .providers()
            .iter()
            .map(|counted| {
                self.providers
                    .get(&counted.name)
                    .and_then(|upstream| upstream.provider.credential())
            })
            .collect();
        self.metrics.encode(&Scrape {
            cache_entries,
            cache_bytes,
            credentials,
        })
    }

    /// Whether secrets without a path label get theirs from `default_path`
    /// (which depends on the asking service).
    pub fn has_default_path(&self) -> bool {
        self.default_path.is_some()
    }

    /// Every provider behind its request policy.
    pub fn upstreams(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.providers.values()
    }

    pub fn providers(&self) -> impl Iterator<Item = (&str, &Arc<dyn Provider>)> {
        self.providers
            .iter()
            .map(|(name, upstream)| (name.as_str(), &upstream.provider))
    }

    /// The provider a lookup is routed to, by name.
    pub fn route(&self, lookup: &Lookup) -> Result<&Arc<Upstream>, ResolveError> {
        if self.providers.is_empty() {
            return Err(ResolveError::NotConfigured);
        }
        let name = match (&lookup.provider, &self.default) {
            (Some(name), _) | (None, Some(name)) => name,
            (None, None) => {
                return Err(ResolveError::NoDefault {
                    known: self.known(),
                });
            }
        };
        self.providers
            .get(name)
            .ok_or_else(|| ResolveError::UnknownProvider {
                name: name.clone(),
                known: self.known(),
            })
    }

    fn known(&self) -> String {
        self.providers
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The whole pipeline for one GetSecret request: its labels, then the
    /// provider, then the access policy, then the value. Any step may fail,
    /// and the answer says what was known when it did.
    pub async fn answer(&self, request: &GetSecretRequest<'_>) -> Answer {
        let mut answer = Answer {
            provider: None,
            path: None,
            version: None,
            verdict: None,
            template: None,
            inputs: Vec::new(),
            // Replaced on every path below; built without `Failure::new`'s
            // escaping, which leaves this text as it is.
            result: Err(Failure {
                outcome: "internal",
                message: String::from("not answered"),
            }),
        };
        match labels::template_of(&request.secret_labels) {
            Ok(None) => {}
            Ok(Some(template)) => return self.answer_template(request, template, answer).await,
            Err(err) => {
                answer.result = Err(Failure::new("bad_labels", &err.to_string()));
                return answer;
            }
        }
        let render = self.default_path.as_ref().map(|template| {
            move |key: &str| -> Result<String, String> {
                let caller = Caller {
                    request,
                    secret: key,
                };
                template.render(&caller).map_err(|why| {
                    format!(
                        "the default_path '{template}' cannot be filled in for this service: {why}"
                    )
                })
            }
        });
        let default_path = render
            .as_ref()
            .map(|render| render as &labels::DefaultPath<'_>);
        let lookup = match Lookup::from_labels_or(
            &request.secret_name,
            &request.secret_labels,
            default_path,
        ) {
            Ok(lookup) => lookup,
            Err(err) => {
                answer.result = Err(Failure::new("bad_labels", &err.to_string()));
                return answer;
            }
        };
        // Without the query: a logical call's body may carry a credential.
        answer.path = Some(lookup.path.path().to_string());
        answer.version = lookup.version.clone();
        let upstream = match self.route(&lookup) {
            Ok(upstream) => upstream,
            Err(err) => {
                answer.result = Err(Failure::from(&err));
                return answer;
            }
        };
        answer.provider = Some(upstream.name.clone());
        let judged = self.judge(request, upstream, &lookup);
        answer.verdict = judged.verdict;
        if let Some(failure) = judged.refused {
            answer.result = Err(failure);
            return answer;
        }
        answer.result = self
            .resolve_for_task(upstream, &lookup, &request.task_id, &request.secret_name)
            .await
            .map_err(|err| Failure::from(&err));
        answer
    }

    /// Whether the access policy lets `request`'s caller read `lookup` from
    /// `upstream` (always, without a policy).
    fn judge(
        &self,
        request: &GetSecretRequest<'_>,
        upstream: &Upstream,
        lookup: &Lookup,
    ) -> Judged {
        let Some(policy) = &self.policy else {
            return Judged {
                verdict: None,
                refused: None,
            };
        };
        let caller = Caller {
            request,
            secret: labels::secret_key(&request.secret_name, &request.secret_labels),
        };
        // The backend's one spelling of the path, so that no other
        // spelling of the same secret passes a glob this one is held to.
        let name = match upstream.provider.policy_name(&lookup.path) {
            Ok(name) => name,
            Err(error) => {
                let err = ResolveError::Provider {
                    provider: upstream.name.to_string(),
                    kind: upstream.provider.kind(),
                    path: lookup.path.path().to_string(),
                    error,
                };
                return Judged {
                    verdict: None,
                    refused: Some(Failure::from(&err)),
                };
            }
        };
        let verdict = policy.decide(&caller, &upstream.name, &name);
        let refused = (verdict.decision == Decision::Deny).then(|| {
            // Not which rule would allow it: that is the operator's map.
            let message = format!(
                "the access policy does not allow {} to read path '{}' from provider '{}'",
                caller.describe(),
                shown(&name),
                upstream.name
            );
            Failure::new("policy_denied", &message)
        });
        Judged {
            verdict: Some(verdict),
            refused,
        }
    }

    /// A secret rendered from a template: every input judged by the policy
    /// before any is fetched, then all fetched at once through the same
    /// cache and per-task rules as a single lookup, then the render.
    async fn answer_template(
        &self,
        request: &GetSecretRequest<'_>,
        wanted: TemplateRef,
        mut answer: Answer,
    ) -> Answer {
        answer.template = Some(wanted.name.clone());
        let Some(template) = self.templates.get(&wanted.name) else {
            let message = format!(
                "template '{}' is not configured (label {}); configured: {}",
                wanted.name,
                labels::TEMPLATE,
                self.templates.names()
            );
            answer.result = Err(Failure::new("bad_labels", &message));
            return answer;
        };
        let prefix = format!("template '{}': ", wanted.name);
        let mut routed = Vec::new();
        let mut refused = None;
        for planned in &template.plan().inputs {
            let lookup = Lookup {
                reuse: wanted.reuse,
                ..planned.clone()
            };
            let upstream = match self.route(&lookup).map(Arc::clone) {
                Ok(upstream) => upstream,
                Err(err) => {
                    // The providers were checked at start: not reached.
                    answer.result = Err(Failure::from(&err).prefixed(&prefix));
                    return answer;
                }
            };
            let judged = self.judge(request, &upstream, &lookup);
            let outcome = judged.refused.as_ref().map_or("skipped", |f| f.outcome);
            answer.inputs.push(Input {
                provider: upstream.name.to_string(),
                path: lookup.path.path().to_string(),
                version: lookup.version.clone(),
                verdict: judged.verdict,
                outcome,
                source: None,
            });
            if refused.is_none() {
                refused = judged.refused;
            }
            routed.push((upstream, lookup));
        }
        if let Some(failure) = refused {
            answer.result = Err(failure.prefixed(&prefix));
            return answer;
        }
        let fetches = routed.iter().map(|(upstream, lookup)| {
            self.resolve_for_task(upstream, lookup, &request.task_id, &request.secret_name)
        });
        let results = futures::future::join_all(fetches).await;
        let mut values = Vec::with_capacity(results.len());
        let (mut per_task, mut lease, mut sources) = (false, None, Vec::new());
        let mut failed = None;
        for (input, result) in answer.inputs.iter_mut().zip(results) {
            match result {
                Ok(resolved) => {
                    input.outcome = "ok";
                    input.source = Some(resolved.source);
                    sources.push(resolved.source);
                    if resolved.per_task {
                        per_task = true;
                        // The whole file lasts as long as its shortest lease.
                        lease = match (lease, resolved.lease) {
                            (Some(a), Some(b)) => Some(std::cmp::min(a, b)),
                            (a, b) => a.or(b),
                        };
                    }
                    values.push(resolved.value);
                }
                Err(err) => {
                    let mut failure = Failure::from(&err);
                    if let ResolveError::Shape { .. } = err {
                        // Said of the labels; here `secret()` set them.
                        for label in [labels::FIELD, labels::DECODE] {
                            let label = format!("label {label}=");
                            let argument = label.trim_start_matches("label vaultbridge.");
                            failure.message = failure.message.replace(&label, argument);
                        }
                        failure.message =
                            failure.message.replace("remove the label", "remove field=");
                    }
                    input.outcome = failure.outcome;
                    failed.get_or_insert(failure);
                }
            }
        }
        if let Some(failure) = failed {
            answer.result = Err(failure.prefixed(&prefix));
            return answer;
        }
        answer.result = template
            .render(&values, MAX_VALUE_BYTES)
            .map_err(|err| Failure::new("bad_value", &err.message))
            .and_then(|rendered| {
                check_size(rendered.len())
                    .map_err(|message| Failure::new("bad_value", &format!("{prefix}{message}")))?;
                // Exactly its length: the boxed slice is this allocation.
                let value = SecretSlice::from(rendered.as_slice().to_vec());
                Ok(Resolved {
                    value: Arc::new(value),
                    per_task: per_task || !wanted.reuse,
                    source: combined(&sources),
                    lease,
                    minted: false,
                })
            });
        answer
    }

    /// Fetch and shape one secret from the provider [`Self::route`] chose,
    /// through the cache unless it is per task.
    pub async fn resolve(
        &self,
        upstream: &Arc<Upstream>,
        lookup: &Lookup,
    ) -> Result<Resolved, ResolveError> {
        if !lookup.reuse {
            // `vaultbridge.reuse=false`: this task's own value, never shared.
            let fetched = fetch_and_shape(upstream.clone(), lookup.clone()).await?;
            return Ok(Resolved {
                value: fetched.value,
                per_task: true,
                source: Source::Bypass,
                lease: fetched.lease,
                minted: fetched.per_task,
            });
        }
        self.resolve_shared(upstream, lookup, &cache_key(upstream, lookup))
            .await
    }

    /// [`Self::resolve`] of a shared lookup (`reuse`), whose cache key is
    /// `key`: through the cache.
    async fn resolve_shared(
        &self,
        upstream: &Arc<Upstream>,
        lookup: &Lookup,
        key: &Key,
    ) -> Result<Resolved, ResolveError> {
        let lifetimes = Lifetimes {
            ttl: upstream.tuning.cache_ttl,
            max_stale: upstream.tuning.max_stale,
        };
        let (fetched, source) = self
            .cache
            .get_or_fetch(key, lifetimes, || {
                fetch_and_shape(upstream.clone(), lookup.clone())
            })
            .await?;
        Ok(Resolved {
            value: fetched.value,
            per_task: fetched.per_task,
            source,
            lease: fetched.lease,
            minted: fetched.per_task,
        })
    }

    /// [`Self::resolve`] for one of the engine's tasks: a per-task value is
    /// remembered under (task, secret), so that the engine asking again for
    /// a task that already has its value (failover, node reconnect) gets the
    /// same bytes instead of a new lease. Without a task id, as `resolve`.
    pub async fn resolve_for_task(
        &self,
        upstream: &Arc<Upstream>,
        lookup: &Lookup,
        task_id: &str,
        secret_name: &str,
    ) -> Result<Resolved, ResolveError> {
        if task_id.is_empty() {
            return self.resolve(upstream, lookup).await;
        }
        let key = cache_key(upstream, lookup);
        let task_secret = |lookup_key: Key| TaskSecret {
            task_id: task_id.to_string(),
            secret_name: secret_name.to_string(),
            lookup: lookup_key,
            reuse: lookup.reuse,
        };
        // With nothing remembered (no per-task value handed out, as for
        // shared secrets) there is nothing to find: the task's key is built
        // only when it can be used.
        if !self.issued.is_empty()
            && let Some(value) = self.issued.get(&task_secret(key.clone()))
        {
            return Ok(Resolved {
                value,
                per_task: true,
                source: Source::Reissued,
                lease: None,
                minted: false,
            });
        }
        // A value this backend mints may have been minted for this task by
        // another manager's plugin (before a failover). Not asked when the
        // cache holds the lookup: then its value is shared, never minted.
        let shared = (upstream.provider.shares_issued(&lookup.path) && !self.cache.holds(&key))
            .then(|| task_secret(key.clone()).shared_key())
            .flatten();
        if let Some(shared) = &shared
            && let Some(recalled) = recall(upstream, lookup, shared).await
        {
            let value: cache::Value = Arc::new(recalled.expose().to_vec().into());
            self.issued
                .insert(task_secret(key), value.clone(), recalled.lease);
            return Ok(Resolved {
                value,
                per_task: true,
                source: Source::Reissued,
                lease: recalled.lease,
                minted: false,
            });
        }
        let resolved = if lookup.reuse {
            self.resolve_shared(upstream, lookup, &key).await?
        } else {
            self.resolve(upstream, lookup).await?
        };
        if resolved.per_task {
            self.issued
                .insert(task_secret(key), resolved.value.clone(), resolved.lease);
            if let Some(shared) = shared
                && resolved.minted
            {
                remember(upstream, lookup, shared, &resolved);
            }
        }
        Ok(resolved)
    }
}

/// How long looking for a kept per-task value may take, as a share of the
/// provider's `deadline`: the fetch that may follow has its own.
const RECALL_SHARE: u32 = 4;

/// The value kept for `key` by a manager's plugin, if any: one attempt,
/// within a quarter of the deadline. A failure is logged and costs a new
/// value, as without sharing.
async fn recall(upstream: &Upstream, lookup: &Lookup, key: &TaskKey) -> Option<SecretValue> {
    let within = upstream.tuning.deadline / RECALL_SHARE;
    let result = tokio::time::timeout(within, upstream.recall(&lookup.path, key)).await;
    let error = match result {
        Ok(Ok(recalled)) => return recalled,
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("no answer within {within:?}"),
    };
    tracing::warn!(
        provider = %upstream.name,
        path = %lookup.path.path(),
        error = %error,
        "cannot read the per-task value other managers' plugins keep; minting a new one"
    );
    None
}

/// Keep a value just minted for a task where every manager's plugin finds
/// it, in the background: the task is answered at once. A failure is
/// logged (the task has its value; after a failover it would get another).
fn remember(upstream: &Arc<Upstream>, lookup: &Lookup, key: TaskKey, resolved: &Resolved) {
    let keep = resolved.lease.unwrap_or(crate::issued::DEFAULT_KEEP);
    let Some(expires) = std::time::SystemTime::now().checked_add(keep) else {
        return;
    };
    let (upstream, path) = (upstream.clone(), lookup.path.clone());
    let value = resolved.value.clone();
    tokio::spawn(async move {
        let result = upstream
            .remember(&path, &key, value.expose_secret(), expires)
            .await;
        let problem = match result {
            Ok(true) => return,
            Ok(false) => "a record for this task and secret is already kept (an expired or foreign one?); it was left as is".to_string(),
            Err(err) => err.to_string(),
        };
        tracing::warn!(
            provider = %upstream.name,
            path = %path.path(),
            error = %problem,
            "cannot keep the per-task value for other managers' plugins; after a failover this task would be given a new one"
        );
    });
}

/// Where a template's answer came from, for its log line: the most
/// notable of its inputs' (a stale one above all).
fn combined(sources: &[Source]) -> Source {
    [
        Source::Stale,
        Source::Bypass,
        Source::Reissued,
        Source::Miss,
        Source::Coalesced,
    ]
    .into_iter()
    .find(|wanted| sources.contains(wanted))
    .unwrap_or(Source::Hit)
}

/// Everything that makes two lookups on `upstream` return the same bytes.
fn cache_key(upstream: &Upstream, lookup: &Lookup) -> Key {
    Key {
        provider: upstream.name.clone(),
        path: lookup.path.as_str().to_string(),
        version: lookup.version.clone(),
        field: lookup.field.clone(),
        decode: lookup.decode,
        rotation: lookup.rotation.clone(),
    }
}

/// One backend call (deadline, retries, concurrency limit), then shaping.
async fn fetch_and_shape(upstream: Arc<Upstream>, lookup: Lookup) -> Result<Fetched, ResolveError> {
    let fetched = upstream
        .fetch(SecretRef {
            path: &lookup.path,
            version: lookup.version.as_deref(),
        })
        .await
        .map_err(|error| ResolveError::Provider {
            provider: upstream.name.to_string(),
            kind: upstream.provider.kind(),
            path: lookup.path.to_string(),
            error,
        })?;
    let value = shape(fetched.expose(), &lookup).map_err(|message| ResolveError::Shape {
        provider: upstream.name.to_string(),
        path: lookup.path.to_string(),
        message,
    })?;
    Ok(Fetched {
        value: Arc::new(value),
        per_task: fetched.per_task,
        lease: fetched.lease,
    })
}

/// Apply `vaultbridge.field` and `vaultbridge.decode`, then Docker's limits.
/// Error messages never quote the value.
pub fn shape(raw: &[u8], lookup: &Lookup) -> Result<SecretSlice<u8>, String> {
    let picked: Vec<u8> = match &lookup.field {
        None => raw.to_vec(),
        Some(field) => pick_field(raw, field)?,
    };
    let decoded: Vec<u8> = match lookup.decode {
        Decode::None => picked,
        Decode::Base64 => decode_base64(&picked)?,
    };
    let value = SecretSlice::from(decoded);
    check_size(value.expose_secret().len())?;
    Ok(value)
}

/// The member `field` of a JSON object, as the bytes the backend stored:
/// a string's content (unescaped), anything else its original text
/// (`123456789012345678901234567890` and `1.10` stay as written, where a
/// parse into `f64` would change them).
pub fn pick_field(raw: &[u8], field: &str) -> Result<Vec<u8>, String> {
    use serde_json::value::RawValue;
    let not_object = || {
        format!(
            "label {FIELD}={field} needs a JSON object, but the value is not one; remove the label to get the whole value"
        )
    };
    let object: HashMap<String, &RawValue> =
        serde_json::from_slice(raw).map_err(|_| not_object())?;
    match object.get(field) {
        Some(member) if member.get().starts_with('"') => {
            serde_json::from_str::<String>(member.get())
                .map(String::into_bytes)
                .map_err(|_| not_object())
        }
        Some(member) => Ok(member.get().as_bytes().to_vec()),
        // Key names can be sensitive too: say how many, not which.
        None => Err(format!(
            "label {FIELD}={field}: the JSON object has no key '{field}' (it has {} key(s)); check the key's spelling and case",
            object.len()
        )),
    }
}

fn decode_base64(text: &[u8]) -> Result<Vec<u8>, String> {
    // Files and consoles add newlines and spaces; padding is optional.
    let compact: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    // The decoder's own message quotes the offending byte: report only where.
    engine.decode(&compact).map_err(|err| {
        let at = match err {
            base64::DecodeError::InvalidByte(offset, _)
            | base64::DecodeError::InvalidLastSymbol(offset, _) => format!(" near byte {offset}"),
            _ => String::new(),
        };
        format!("label vaultbridge.decode=base64: the value is not valid base64{at}")
    })
}

fn check_size(len: usize) -> Result<(), String> {
    if len == 0 {
        return Err(format!(
            "the value is empty (0 bytes); Docker needs 1 to {MAX_VALUE_BYTES} bytes"
        ));
    }
    if len > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is {len} bytes; Docker accepts at most {MAX_VALUE_BYTES} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(field: Option<&str>, decode: Decode) -> Lookup {
        Lookup {
            provider: None,
            path: vaultbridge_providers::SecretPath::parse("p").unwrap(),
            field: field.map(str::to_string),
            version: None,
            decode,
            reuse: true,
            rotate: false,
            rotation: None,
        }
    }

    fn shaped(raw: &[u8], field: Option<&str>, decode: Decode) -> Result<Vec<u8>, String> {
        shape(raw, &lookup(field, decode)).map(|v| v.expose_secret().to_vec())
    }

    #[test]
    fn picks_fields_as_raw_strings_or_compact_json() {
        let doc = br#"{"user":"app","port":5432,"tls":{"on": true},"b64":"aGk="}"#;
        assert_eq!(shaped(doc, Some("user"), Decode::None).unwrap(), b"app");
        assert_eq!(shaped(doc, Some("port"), Decode::None).unwrap(), b"5432");
        assert_eq!(
            shaped(doc, Some("tls"), Decode::None).unwrap(),
            br#"{"on": true}"#
        );
        assert_eq!(shaped(doc, Some("b64"), Decode::Base64).unwrap(), b"hi");
        let err = shaped(doc, Some("pass"), Decode::None).unwrap_err();
        assert!(
            err.contains("no key 'pass'") && err.contains("4 key(s)"),
            "{err}"
        );
        assert!(!err.contains("user") && !err.contains("port"), "{err}");
        let err = shaped(b"not json at all", Some("x"), Decode::None).unwrap_err();
        assert!(!err.contains("not json at all"), "{err}");
    }

    #[test]
    fn fields_come_back_exactly_as_stored() {
        let doc = br#"{"big": 123456789012345678901234567890, "f": 1.10, "e": -0.0e+00,
            "s": "line\nbreak \u00e9", "nested": {"x": [1.0, 2]}, "null": null}"#;
        let field =
            |name| String::from_utf8(shaped(doc, Some(name), Decode::None).unwrap()).unwrap();
        assert_eq!(field("big"), "123456789012345678901234567890");
        assert_eq!(field("f"), "1.10");
        assert_eq!(field("e"), "-0.0e+00");
        assert_eq!(field("s"), "line\nbreak é");
        assert_eq!(field("nested"), r#"{"x": [1.0, 2]}"#);
        assert_eq!(field("null"), "null");
        let err = shaped(b"[1,2]", Some("x"), Decode::None).unwrap_err();
        assert!(err.contains("needs a JSON object"), "{err}");
    }

    #[test]
    fn decodes_base64_without_quoting_the_value() {
        assert_eq!(
            shaped(b"aGVs\nbG8=\n", None, Decode::Base64).unwrap(),
            b"hello"
        );
        assert_eq!(shaped(b"aGVsbG8", None, Decode::Base64).unwrap(), b"hello");
        let err = shaped(b"secret!value", None, Decode::Base64).unwrap_err();
        assert!(
            err.contains("not valid base64") && !err.contains('!'),
            "{err}"
        );
    }

    #[test]
    fn enforces_dockers_size_limits() {
        assert!(
            shaped(b"", None, Decode::None)
                .unwrap_err()
                .contains("empty")
        );
        let max = vec![b'x'; MAX_VALUE_BYTES];
        assert_eq!(shaped(&max, None, Decode::None).unwrap().len(), 511_999);
        let over = vec![b'x'; MAX_VALUE_BYTES + 1];
        let err = shaped(&over, None, Decode::None).unwrap_err();
        assert!(
            err.contains("512000 bytes") && err.contains("at most 511999"),
            "{err}"
        );
    }

    // ------------------------------------------ the pipeline, in memory

    use std::time::Duration;

    use vaultbridge_providers::ProviderError;

    use crate::memory::Memory;

    /// A resolver with one in-memory provider, `mem`, caching for `ttl`.
    fn resolver(memory: &Arc<Memory>, ttl: Duration) -> Resolver {
        let tuning = Tuning {
            cache_ttl: ttl,
            ..Tuning::default()
        };
        let provider: Arc<dyn Provider> = memory.clone();
        let providers = BTreeMap::from([("mem".to_string(), (provider, tuning))]);
        Resolver::new(providers, None, cache::Limits::default())
    }

    /// The answer to a GetSecret for secret `s` of `task`.
    async fn ask(
        resolver: &Resolver,
        labels: &[(&str, &str)],
        task: &str,
    ) -> Result<(Vec<u8>, Source), Failure> {
        let request = GetSecretRequest {
            secret_name: "s".into(),
            secret_labels: labels.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
            task_id: task.into(),
            ..GetSecretRequest::default()
        };
        resolver
            .answer(&request)
            .await
            .result
            .map(|resolved| (resolved.value.expose_secret().to_vec(), resolved.source))
    }

    const TTL: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn fields_versions_and_base64_go_through_one_pipeline() {
        let memory = Arc::new(Memory::new().with("app/db", br#"{"user":"app","pw":"aGk="}"#));
        memory.set("app/db", br#"{"user":"app2","pw":"aGk="}"#, false);
        let resolver = resolver(&memory, TTL);
        let path = ("vaultbridge.path", "app/db");
        let field = |name| ("vaultbridge.field", name);
        assert_eq!(
            ask(&resolver, &[path, field("user")], "t1")
                .await
                .unwrap()
                .0,
            b"app2"
        );
        assert_eq!(
            ask(
                &resolver,
                &[path, field("user"), ("vaultbridge.version", "1")],
                "t1"
            )
            .await
            .unwrap()
            .0,
            b"app"
        );
        assert_eq!(
            ask(
                &resolver,
                &[path, field("pw"), ("vaultbridge.decode", "base64")],
                "t1"
            )
            .await
            .unwrap()
            .0,
            b"hi"
        );
        let missing = ask(&resolver, &[("vaultbridge.path", "app/nope")], "t1")
            .await
            .unwrap_err();
        assert_eq!(missing.outcome, "not_found", "{}", missing.message);
        assert!(
            missing
                .message
                .contains("provider 'mem' (memory), path 'app/nope'"),
            "{}",
            missing.message
        );
        let unknown = ask(&resolver, &[path, ("vaultbridge.provider", "other")], "t1")
            .await
            .unwrap_err();
        assert_eq!(unknown.outcome, "bad_labels");
        assert!(
            unknown.message.contains("configured: mem"),
            "{}",
            unknown.message
        );
    }

    #[tokio::test]
    async fn a_value_is_fetched_once_then_served_from_the_cache() {
        let memory = Arc::new(Memory::new().with("app/db", b"v1"));
        let cached = resolver(&memory, TTL);
        let labels = [("vaultbridge.path", "app/db")];
        assert_eq!(
            ask(&cached, &labels, "t1").await.unwrap(),
            (b"v1".to_vec(), Source::Miss)
        );
        memory.set("app/db", b"v2", false);
        assert_eq!(
            ask(&cached, &labels, "t2").await.unwrap(),
            (b"v1".to_vec(), Source::Hit)
        );
        assert_eq!(memory.calls(), 1);
        // `cache_ttl = "0s"`: every request reaches the backend.
        let uncached = resolver(&memory, Duration::ZERO);
        assert_eq!(ask(&uncached, &labels, "t1").await.unwrap().0, b"v2");
        assert_eq!(ask(&uncached, &labels, "t2").await.unwrap().0, b"v2");
        assert_eq!(memory.calls(), 3);
    }

    #[tokio::test]
    async fn errors_are_never_cached() {
        let refused = ProviderError::unavailable("HTTP 502").without_retry();
        let memory = Arc::new(Memory::new().with("app/db", b"v1").failing(1, refused));
        let resolver = resolver(&memory, TTL);
        let labels = [("vaultbridge.path", "app/db")];
        let failure = ask(&resolver, &labels, "t1").await.unwrap_err();
        assert_eq!(failure.outcome, "unavailable", "{}", failure.message);
        assert_eq!(ask(&resolver, &labels, "t1").await.unwrap().0, b"v1");
        assert_eq!(memory.calls(), 2);
    }

    #[tokio::test]
    async fn per_task_values_are_never_shared_but_reissued_to_their_task() {
        let memory = Arc::new(Memory::new().with_per_task("db/creds", b"lease"));
        let resolver = resolver(&memory, TTL);
        let labels = [("vaultbridge.path", "db/creds")];
        let first = ask(&resolver, &labels, "t1").await.unwrap().0;
        let second = ask(&resolver, &labels, "t2").await.unwrap().0;
        assert_ne!(first, second, "two tasks shared a per-task value");
        // The engine asks again for t1 (failover): the same value, no call.
        assert_eq!(
            ask(&resolver, &labels, "t1").await.unwrap(),
            (first, Source::Reissued)
        );
        assert_eq!(memory.calls(), 2);
    }

    /// A resolver with two in-memory providers, `mem` and `other`, and
    /// templates made of `(name, source)`.
    fn with_templates(
        memory: &Arc<Memory>,
        other: &Arc<Memory>,
        templates: &[(&str, &str)],
        policy: Option<&str>,
    ) -> Resolver {
        let mem: Arc<dyn Provider> = memory.clone();
        let other: Arc<dyn Provider> = other.clone();
        let tuning = Tuning {
            cache_ttl: TTL,
            ..Tuning::default()
        };
        let providers = BTreeMap::from([
            ("mem".to_string(), (mem, tuning)),
            ("other".to_string(), (other, tuning)),
        ]);
        let configs = templates
            .iter()
            .map(|(name, source)| {
                let config = crate::template::TemplateConfig {
                    source: source.to_string(),
                };
                (name.to_string(), config)
            })
            .collect();
        let compiled = Templates::compile(&configs, &["mem", "other"]).unwrap();
        let policy = policy.map(|text| {
            let config: crate::access::AccessConfig = toml::from_str(text).unwrap();
            Policy::compile(&config, &["mem", "other"]).unwrap()
        });
        Resolver::new(providers, Some("mem".into()), cache::Limits::default())
            .with_access(policy, None)
            .with_templates(compiled)
    }

    const PGPASS: &str = "{{ secret('mem', 'app/db', field='host') }}:5432:*:\
{{ secret('mem', 'app/db', field='user') }}:{{ secret('other', 'db-pw') }}\n";

    #[tokio::test]
    async fn a_template_renders_its_inputs_through_the_cache() {
        let memory = Arc::new(Memory::new().with("app/db", br#"{"host":"db","user":"app"}"#));
        let other = Arc::new(Memory::new().with("db-pw", b"s3cret"));
        let resolver = with_templates(&memory, &other, &[("pgpass", PGPASS)], None);
        let labels = [("vaultbridge.template", "pgpass")];
        let (value, source) = ask(&resolver, &labels, "t1").await.unwrap();
        assert_eq!(value, b"db:5432:*:app:s3cret\n");
        assert_eq!(source, Source::Miss);
        // Two fields of one document are two cache entries, one call each.
        assert_eq!((memory.calls(), other.calls()), (2, 1));
        let (again, source) = ask(&resolver, &labels, "t2").await.unwrap();
        assert_eq!((again, source), (value, Source::Hit));
        assert_eq!((memory.calls(), other.calls()), (2, 1));
        // A single lookup of the same input shares its cache entry.
        let single = [
            ("vaultbridge.provider", "other"),
            ("vaultbridge.path", "db-pw"),
        ];
        assert_eq!(ask(&resolver, &single, "t3").await.unwrap().1, Source::Hit);
    }

    #[tokio::test]
    async fn one_per_task_input_makes_the_file_per_task_and_reissued() {
        let memory = Arc::new(Memory::new().with("app/db", br#"{"host":"db","user":"app"}"#));
        let other = Arc::new(Memory::new().with_per_task("db-pw", b"lease"));
        let resolver = with_templates(&memory, &other, &[("pgpass", PGPASS)], None);
        let request = |task: &str| GetSecretRequest {
            secret_name: "pg".into(),
            secret_labels: [("vaultbridge.template".into(), "pgpass".into())].into(),
            task_id: task.to_string().into(),
            ..GetSecretRequest::default()
        };
        let first = resolver.answer(&request("t1")).await.result.unwrap();
        let second = resolver.answer(&request("t2")).await.result.unwrap();
        assert!(first.per_task && second.per_task);
        assert_ne!(first.value.expose_secret(), second.value.expose_secret());
        // The engine asks again for t1: the same file, no new lease.
        let again = resolver.answer(&request("t1")).await;
        let again_value = again.result.unwrap();
        assert_eq!(
            again_value.value.expose_secret(),
            first.value.expose_secret()
        );
        assert_eq!(again_value.source, Source::Reissued);
        assert_eq!(other.calls(), 2);
        assert_eq!(again.inputs.len(), 3);
        assert_eq!(again.inputs[2].source, Some(Source::Reissued));
        // `vaultbridge.reuse=false`: every input is the task's own.
        let labels = [
            ("vaultbridge.template", "pgpass"),
            ("vaultbridge.reuse", "false"),
        ];
        let (_, source) = ask(&resolver, &labels, "t9").await.unwrap();
        assert_eq!(source, Source::Bypass);
    }

    #[tokio::test]
    async fn the_policy_judges_every_input_before_any_is_fetched() {
        let memory = Arc::new(Memory::new().with("app/db", br#"{"host":"db","user":"app"}"#));
        let other = Arc::new(Memory::new().with("db-pw", b"s3cret"));
        let policy = "default = \"deny\"\n[[rules]]\nservice = \"api\"\nproviders = [\"mem\"]\npaths = [\"app/**\"]\n";
        let resolver = with_templates(&memory, &other, &[("pgpass", PGPASS)], Some(policy));
        let request = GetSecretRequest {
            secret_name: "pg".into(),
            secret_labels: [("vaultbridge.template".into(), "pgpass".into())].into(),
            service_name: "api".into(),
            ..GetSecretRequest::default()
        };
        let answer = resolver.answer(&request).await;
        let failure = answer.result.unwrap_err();
        assert_eq!(failure.outcome, "policy_denied");
        assert!(
            failure.message.starts_with("template 'pgpass': the access policy does not allow service 'api' to read path 'db-pw' from provider 'other'"),
            "{}",
            failure.message
        );
        assert_eq!((memory.calls(), other.calls()), (0, 0));
        let outcomes: Vec<_> = answer.inputs.iter().map(|i| i.outcome).collect();
        assert_eq!(outcomes, ["skipped", "skipped", "policy_denied"]);
        assert!(answer.inputs.iter().all(|i| i.verdict.is_some()));
    }

    #[tokio::test]
    async fn template_labels_and_failures_say_what_to_fix() {
        let memory = Arc::new(Memory::new().with("app/db", br#"{"host":"db"}"#));
        let other = Arc::new(Memory::new().with("db-pw", b"s3cret"));
        let resolver = with_templates(
            &memory,
            &other,
            &[
                ("pgpass", PGPASS),
                (
                    "big",
                    "{% for i in range(3) %}{{ secret('other', 'db-pw') * 30000 }}{% endfor %}",
                ),
            ],
            None,
        );
        let failure = ask(
            &resolver,
            &[
                ("vaultbridge.template", "pgpass"),
                ("vaultbridge.path", "x"),
            ],
            "t1",
        )
        .await
        .unwrap_err();
        assert_eq!(failure.outcome, "bad_labels");
        assert!(
            failure.message.contains(
                "label 'vaultbridge.path' cannot be combined with 'vaultbridge.template'"
            ),
            "{}",
            failure.message
        );
        let failure = ask(&resolver, &[("vaultbridge.template", "nope")], "t1")
            .await
            .unwrap_err();
        assert!(
            failure
                .message
                .contains("template 'nope' is not configured")
                && failure.message.contains("configured: big, pgpass"),
            "{}",
            failure.message
        );
        // An input's own failure, named; nothing of the other values.
        let failure = ask(&resolver, &[("vaultbridge.template", "pgpass")], "t1")
            .await
            .unwrap_err();
        assert_eq!(failure.outcome, "bad_value");
        assert!(
            failure.message.starts_with(
                "template 'pgpass': provider 'mem', path 'app/db': field=user: the JSON object has no key 'user'"
            ),
            "{}",
            failure.message
        );
        assert!(!failure.message.contains("s3cret"), "{}", failure.message);
        let failure = ask(&resolver, &[("vaultbridge.template", "big")], "t1")
            .await
            .unwrap_err();
        assert_eq!(failure.outcome, "bad_value");
        assert!(
            failure.message.contains("larger than 511999 bytes"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn resolved_debug_is_redacted() {
        let resolved = Resolved {
            value: Arc::new(SecretSlice::from(b"topsecret".to_vec())),
            per_task: false,
            source: Source::Hit,
            lease: None,
            minted: false,
        };
        assert!(!format!("{resolved:?}").contains("topsecret"));
    }
}
