//! Prometheus metrics (the text the `/metrics` routes serve) and each
//! provider's readiness ([`health`]); `metrics_listener` serves them.
//!
//! Every label value comes from a bounded set: provider names from the
//! configuration, outcome words ([`crate::error::Failure`]), cache sources
//! ([`Source`]) and backend error kinds — never a secret's name, path or
//! value. Every series the request path touches is registered at start and
//! its handle kept, so a request costs a few atomic increments and one
//! short lock per histogram: its provider's handles are found by name among
//! the configured few, with no label hashing and no allocation.

pub mod health;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use vaultbridge_providers::{Credential, ProviderError};

pub use crate::cache::Source;
pub use health::Health;

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// What a GetSecret request can come to: `ok`, every
/// [`crate::error::Failure::outcome`] word, and the server's own
/// (`bad_request`: unreadable request; `audit_failed`: withheld because
/// the audit trail could not be written).
pub const OUTCOMES: &[&str] = &[
    "ok",
    "not_found",
    "denied",
    "policy_denied",
    "unauthenticated",
    "unavailable",
    "bad_labels",
    "bad_value",
    "not_configured",
    "internal",
    "bad_request",
    "audit_failed",
];

/// `OUTCOMES[INTERNAL]` is `internal` (a unit test checks it).
const INTERNAL: usize = 9;

/// Where a served value came from ([`Source::as_str`]).
const SOURCES: [Source; 6] = [
    Source::Hit,
    Source::Miss,
    Source::Coalesced,
    Source::Stale,
    Source::Bypass,
    Source::Reissued,
];

/// A failed backend attempt, by [`ProviderError`] kind, plus `timeout`
/// (no answer within the lookup's deadline).
pub const ERROR_KINDS: &[&str] = &[
    "not_found",
    "denied",
    "unauthenticated",
    "unavailable",
    "invalid",
    "timeout",
];

/// The `provider` label of requests routed to no provider (unreadable
/// labels, an unknown provider, nothing configured). Provider names are
/// letters, digits, `-` and `_`: none can be this.
pub const NO_PROVIDER: &str = "(none)";

/// From 100 µs (a cache hit) to 10 s (the default deadline; +Inf beyond).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Answers of one provider (or of [`NO_PROVIDER`]).
pub struct Requests {
    outcomes: Vec<Counter>,
    sources: Vec<Counter>,
    duration: Histogram,
    policy_denials: Counter,
}

impl Requests {
    fn record(&self, outcome: &str, source: Option<Source>, elapsed: Option<Duration>) {
        // Unknown words count as `internal`: a unit test keeps the list whole.
        let index = OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(INTERNAL);
        self.outcomes[index].inc();
        if let Some(source) = source
            && let Some(index) = SOURCES.iter().position(|s| *s == source)
        {
            self.sources[index].inc();
        }
        if outcome == "policy_denied" {
            self.policy_denials.inc();
        }
        if let Some(elapsed) = elapsed {
            self.duration.observe(elapsed.as_secs_f64());
        }
    }
}

/// Calls one provider made to its backend (each attempt, retries included).
pub struct Backend {
    calls: Counter,
    errors: Vec<Counter>,
    retries: Counter,
    duration: Histogram,
}

impl Backend {
    /// One attempt ended after `elapsed`.
    pub fn attempt(&self, elapsed: Duration, error: Option<&ProviderError>) {
        self.calls.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.error(kind_of(error));
        }
    }

    /// An attempt cut short by the lookup's deadline.
    pub fn timed_out(&self, elapsed: Duration) {
        self.calls.inc();
        self.duration.observe(elapsed.as_secs_f64());
        self.error("timeout");
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    fn error(&self, kind: &str) {
        if let Some(index) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[index].inc();
        }
    }
}

fn kind_of(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::NotFound(_) => "not_found",
        ProviderError::Denied(_) => "denied",
        ProviderError::Unauthenticated(_) => "unauthenticated",
        ProviderError::Unavailable(_) => "unavailable",
        ProviderError::Invalid(_) => "invalid",
    }
}

/// Everything counted for one configured provider.
pub struct ProviderMetrics {
    pub name: String,
    pub requests: Requests,
    pub backend: Backend,
    pub health: Health,
}

/// The registry and the handles the request path uses.
pub struct Metrics {
    registry: Registry,
    providers: Vec<Arc<ProviderMetrics>>,
    unrouted: Requests,
    in_flight: Gauge,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    log_lines_dropped: Counter,
    log_queue_bytes: Gauge,
    ready: Family<Labels, Gauge>,
    last_success: Family<Labels, FloatGauge>,
    expires_in: Family<Labels, FloatGauge>,
    last_renewal: Family<Labels, FloatGauge>,
}

/// The families of the request counters, registered once.
struct RequestFamilies {
    outcomes: Family<Labels, Counter>,
    sources: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    policy_denials: Family<Labels, Counter>,
}

impl RequestFamilies {
    fn for_provider(&self, name: &str, denials: bool) -> Requests {
        let with = |key: &'static str, value: &str| -> Labels {
            vec![("provider", name.to_string()), (key, value.to_string())]
        };
        let provider: Labels = vec![("provider", name.to_string())];
        Requests {
            outcomes: OUTCOMES
                .iter()
                .map(|o| self.outcomes.get_or_create_owned(&with("outcome", o)))
                .collect(),
            sources: SOURCES
                .iter()
                .map(|s| {
                    self.sources
                        .get_or_create_owned(&with("source", s.as_str()))
                })
                .collect(),
            duration: self.duration.get_or_create_owned(&provider),
            // Only providers have a policy; `(none)` gets a handle no series shows.
            policy_denials: if denials {
                self.policy_denials.get_or_create_owned(&provider)
            } else {
                Counter::default()
            },
        }
    }
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// Every series of the providers named (the configuration's).
    pub fn new<'a>(providers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut registry = Registry::with_prefix("vaultbridge");
        registry.register(
            "build",
            "The running binary: its version and the backends built in",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("backends", backends_built_in()),
            ]),
        );
        let requests = RequestFamilies {
            outcomes: Family::default(),
            sources: Family::default(),
            duration: Family::new_with_constructor(latency),
            policy_denials: Family::default(),
        };
        let calls: Family<Labels, Counter> = Family::default();
        let errors: Family<Labels, Counter> = Family::default();
        let retries: Family<Labels, Counter> = Family::default();
        let backend_duration: Family<Labels, Histogram> = Family::new_with_constructor(latency);
        let providers: Vec<Arc<ProviderMetrics>> = providers
            .into_iter()
            .map(|name| {
                let provider: Labels = vec![("provider", name.to_string())];
                Arc::new(ProviderMetrics {
                    name: name.to_string(),
                    requests: requests.for_provider(name, true),
                    backend: Backend {
                        calls: calls.get_or_create_owned(&provider),
                        errors: ERROR_KINDS
                            .iter()
                            .map(|kind| {
                                let mut labels = provider.clone();
                                labels.push(("kind", kind.to_string()));
                                errors.get_or_create_owned(&labels)
                            })
                            .collect(),
                        retries: retries.get_or_create_owned(&provider),
                        duration: backend_duration.get_or_create_owned(&provider),
                    },
                    health: Health::default(),
                })
            })
            .collect();
        let unrouted = requests.for_provider(NO_PROVIDER, false);
        registry.register(
            "requests",
            "GetSecret requests answered, by provider and outcome",
            requests.outcomes,
        );
        registry.register(
            "cache_answers",
            "Values served, by provider and where the value came from (hit, miss, coalesced, stale, bypass, reissued)",
            requests.sources,
        );
        registry.register_with_unit(
            "request_duration",
            "Time to answer a GetSecret request, by provider",
            Unit::Seconds,
            requests.duration,
        );
        registry.register(
            "policy_denials",
            "Requests the access policy refused, by provider",
            requests.policy_denials,
        );
        registry.register(
            "backend_calls",
            "Calls to a provider's backend (each attempt, retries included)",
            calls,
        );
        registry.register(
            "backend_errors",
            "Backend calls that failed, by provider and kind (not_found, denied, unauthenticated, unavailable, invalid, timeout)",
            errors,
        );
        registry.register(
            "backend_retries",
            "Backend calls made again after a transient failure",
            retries,
        );
        registry.register_with_unit(
            "backend_call_duration",
            "Time of one backend call, by provider",
            Unit::Seconds,
            backend_duration,
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "GetSecret requests being answered now",
            in_flight.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Values held in the cache",
            cache_entries.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register_with_unit(
            "cache",
            "Bytes of secret values held in the cache",
            Unit::Bytes,
            cache_bytes.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines not written because stderr did not keep up (each drop is also reported in the log)",
            log_lines_dropped.clone(),
        );
        let log_queue_bytes = Gauge::default();
        registry.register_with_unit(
            "log_queue",
            "Bytes of log lines not yet written to stderr (queued, or being written)",
            Unit::Bytes,
            log_queue_bytes.clone(),
        );
        let ready = Family::<Labels, Gauge>::default();
        registry.register(
            "provider_ready",
            "1 when the provider's last backend call or check succeeded within the readiness interval",
            ready.clone(),
        );
        let last_success = Family::<Labels, FloatGauge>::default();
        registry.register_with_unit(
            "provider_last_success_timestamp",
            "When the provider's backend last answered a call or a check (Unix time)",
            Unit::Seconds,
            last_success.clone(),
        );
        let expires_in = Family::<Labels, FloatGauge>::default();
        registry.register_with_unit(
            "credential_expires_in",
            "Time until the provider's token or credentials expire (absent: they do not, or the backend cannot say)",
            Unit::Seconds,
            expires_in.clone(),
        );
        let last_renewal = Family::<Labels, FloatGauge>::default();
        registry.register_with_unit(
            "credential_last_renewal_timestamp",
            "When the provider's token or credentials were last obtained or renewed (Unix time)",
            Unit::Seconds,
            last_renewal.clone(),
        );
        Self {
            registry,
            providers,
            unrouted,
            in_flight,
            cache_entries,
            cache_bytes,
            log_lines_dropped,
            log_queue_bytes,
            ready,
            last_success,
            expires_in,
            last_renewal,
        }
    }

    /// The handles of provider `name`.
    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderMetrics>> {
        self.providers.iter().find(|p| p.name == name)
    }

    pub fn providers(&self) -> &[Arc<ProviderMetrics>] {
        &self.providers
    }

    /// Count one answered request: routed to `provider` (when it got that
    /// far), its outcome, where a served value came from, how long it took.
    pub fn answered(
        &self,
        provider: Option<&str>,
        outcome: &str,
        source: Option<Source>,
        elapsed: Duration,
    ) {
        let requests = provider
            .and_then(|name| self.provider(name))
            .map_or(&self.unrouted, |p| &p.requests);
        requests.record(outcome, source, Some(elapsed));
    }

    /// Count a request that ended before it could be routed or timed:
    /// `bad_request` (unreadable), `internal` (a bug panicked).
    pub fn unanswered(&self, outcome: &str) {
        self.unrouted.record(outcome, None, None);
    }

    /// Counts a request in flight until dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// The text format, with the gauges read at scrape time set from
    /// `scrape` first.
    pub fn encode(&self, scrape: &Scrape) -> String {
        self.cache_entries.set(scrape.cache_entries as i64);
        self.cache_bytes.set(scrape.cache_bytes as i64);
        self.log_lines_dropped.inner().store(
            crate::log_writer::dropped_lines(),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.log_queue_bytes
            .set(i64::try_from(crate::log_writer::pending_bytes()).unwrap_or(i64::MAX));
        let now = SystemTime::now();
        let unix = |at: SystemTime| {
            at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        for (provider, credential) in self.providers.iter().zip(&scrape.credentials) {
            let labels: Labels = vec![("provider", provider.name.clone())];
            let status = provider.health.status(std::time::Instant::now());
            self.ready
                .get_or_create(&labels)
                .set(i64::from(status.is_ready()));
            match provider.health.last_success_at() {
                Some(at) => {
                    self.last_success.get_or_create(&labels).set(unix(at));
                }
                None => {
                    self.last_success.remove(&labels);
                }
            }
            match credential.as_ref().and_then(|c| c.expires_at) {
                Some(at) => {
                    let left = at
                        .duration_since(now)
                        .map_or(0.0, |left| left.as_secs_f64());
                    self.expires_in.get_or_create(&labels).set(left);
                }
                None => {
                    self.expires_in.remove(&labels);
                }
            }
            match credential.as_ref().and_then(|c| c.renewed_at) {
                Some(at) => {
                    self.last_renewal.get_or_create(&labels).set(unix(at));
                }
                None => {
                    self.last_renewal.remove(&labels);
                }
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// What is read from the cache and the providers when scraped.
pub struct Scrape {
    pub cache_entries: usize,
    pub cache_bytes: usize,
    /// One per provider, in [`Metrics::providers`] order.
    pub credentials: Vec<Option<Credential>>,
}

/// The content type of [`Metrics::encode`]'s text (OpenMetrics 1.0, which
/// Prometheus negotiates).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn backends_built_in() -> String {
    let built: &[(&str, bool)] = &[
        ("file", cfg!(feature = "file")),
        ("vault", cfg!(feature = "vault")),
        ("aws", cfg!(feature = "aws")),
        ("azure", cfg!(feature = "azure")),
        ("gcp", cfg!(feature = "gcp")),
    ];
    built
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ResolveError;

    #[test]
    fn every_outcome_word_has_its_series() {
        let provider = |error| ResolveError::Provider {
            provider: "p".into(),
            kind: "file",
            path: "x".into(),
            error,
        };
        let errors = [
            ResolveError::UnknownProvider {
                name: "x".into(),
                known: "p".into(),
            },
            ResolveError::NoDefault { known: "p".into() },
            ResolveError::Shape {
                provider: "p".into(),
                path: "x".into(),
                message: "m".into(),
            },
            ResolveError::NotConfigured,
            ResolveError::Internal("x".into()),
            provider(ProviderError::NotFound("x".into())),
            provider(ProviderError::Denied("x".into())),
            provider(ProviderError::Unauthenticated("x".into())),
            provider(ProviderError::unavailable("x")),
            provider(ProviderError::Invalid("x".into())),
        ];
        for error in &errors {
            assert!(OUTCOMES.contains(&error.outcome()), "{}", error.outcome());
        }
        // Words written where they happen (resolve.rs, server.rs).
        for word in ["policy_denied", "bad_request", "audit_failed", "ok"] {
            assert!(OUTCOMES.contains(&word), "{word}");
        }
        assert_eq!(
            OUTCOMES[INTERNAL], "internal",
            "Requests::record falls back to it"
        );
    }

    #[test]
    fn counts_by_provider_outcome_and_source() {
        let metrics = Metrics::new(["vault-prod"]);
        let ms = Duration::from_millis(1);
        metrics.answered(Some("vault-prod"), "ok", Some(Source::Hit), ms);
        metrics.answered(Some("vault-prod"), "ok", Some(Source::Hit), ms);
        metrics.answered(Some("vault-prod"), "policy_denied", None, ms);
        metrics.answered(None, "bad_labels", None, ms);
        metrics.answered(Some("unknown"), "bad_labels", None, ms);
        metrics.unanswered("bad_request");
        let backend = &metrics.provider("vault-prod").unwrap().backend;
        backend.attempt(ms, Some(&ProviderError::unavailable("down")));
        backend.retried();
        backend.timed_out(ms);
        let text = metrics.encode(&Scrape {
            cache_entries: 3,
            cache_bytes: 42,
            credentials: vec![Some(Credential {
                expires_at: Some(SystemTime::now() + Duration::from_secs(600)),
                renewed_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(7)),
            })],
        });
        for line in [
            "vaultbridge_requests_total{provider=\"vault-prod\",outcome=\"ok\"} 2",
            "vaultbridge_cache_answers_total{provider=\"vault-prod\",source=\"hit\"} 2",
            "vaultbridge_policy_denials_total{provider=\"vault-prod\"} 1",
            "vaultbridge_requests_total{provider=\"(none)\",outcome=\"bad_labels\"} 2",
            "vaultbridge_requests_total{provider=\"(none)\",outcome=\"bad_request\"} 1",
            "vaultbridge_backend_calls_total{provider=\"vault-prod\"} 2",
            "vaultbridge_backend_errors_total{provider=\"vault-prod\",kind=\"unavailable\"} 1",
            "vaultbridge_backend_errors_total{provider=\"vault-prod\",kind=\"timeout\"} 1",
            "vaultbridge_backend_retries_total{provider=\"vault-prod\"} 1",
            "vaultbridge_cache_entries 3",
            "vaultbridge_cache_bytes 42",
            "vaultbridge_provider_ready{provider=\"vault-prod\"} 0",
            "vaultbridge_credential_last_renewal_timestamp_seconds{provider=\"vault-prod\"} 7.0",
            "vaultbridge_requests_in_flight 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let expires = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    "vaultbridge_credential_expires_in_seconds{provider=\"vault-prod\"} ",
                )
            })
            .expect("expiry series");
        let left: f64 = expires.parse().unwrap();
        assert!((590.0..=600.0).contains(&left), "{left}");
        // No provider that is not configured gets a series.
        assert!(!text.contains("unknown"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        {
            let _one = metrics.in_flight();
            let text = metrics.encode(&Scrape {
                cache_entries: 0,
                cache_bytes: 0,
                credentials: vec![None],
            });
            assert!(text.contains("vaultbridge_requests_in_flight 1"));
            assert!(!text.contains("credential_expires_in_seconds{"), "{text}");
        }
    }
}
