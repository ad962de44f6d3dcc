//! Per-provider request policy: cache lifetime, stale-on-error, deadline,
//! retries and a concurrency limit, written as extra keys in a provider's
//! table (`cache_ttl = "30s"`), and the [`Upstream`] that applies them.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use vaultbridge_providers::{
    ConfigError, Provider, ProviderError, SecretPath, SecretRef, SecretValue, TaskKey, Version,
};

use crate::metrics::{Metrics, ProviderMetrics};

/// The policy keys of a `[providers.<name>]` table. Flattened next to the
/// backend's own keys; the backend's `deny_unknown_fields` still catches typos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Tuning {
    /// How long a value is served from memory before the backend is asked
    /// again. 30 s: a burst (scale-up, leader failover) becomes one backend
    /// call, and a rotated value reaches new tasks within half a minute.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long past `cache_ttl` the last good value may be served while the
    /// backend is *unavailable* (never for not-found or denied). Off by
    /// default: a value the backend may have revoked is only handed out when
    /// the operator chose that trade-off.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// The bound on one lookup, retries included. Well under the engine's
    /// 30 s plugin timeout, because a slow answer stalls a node's dispatch.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// At most this many backend calls in flight for this provider.
    pub max_concurrency: usize,
    /// How often the rotation controller (`vaultbridge rotate`) asks this
    /// backend whether a watched secret changed. Unused by the plugin.
    #[serde(with = "humantime_serde")]
    pub rotate_interval: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(30),
            max_stale: Duration::ZERO,
            deadline: Duration::from_secs(10),
            max_concurrency: 16,
            rotate_interval: DEFAULT_ROTATE_INTERVAL,
        }
    }
}

/// The engine waits at most 30 s for the plugin (`docker plugin enable
/// --timeout`, default 30): a longer deadline only means the engine gives
/// up first and the task fails without our error.
pub const MAX_DEADLINE: Duration = Duration::from_secs(30);
/// Upper bounds that keep every time computation far from overflow and
/// every count sane; values beyond them are typos.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_STALE: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MAX_CONCURRENCY: usize = 1024;
/// A minute: a rotated password reaches every replica within a minute plus
/// the roll, at one metadata call per watched secret per minute.
pub const DEFAULT_ROTATE_INTERVAL: Duration = Duration::from_secs(60);
/// A second at least (a busy loop otherwise), a day at most.
const ROTATE_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(24 * 3600));

impl Tuning {
    /// Check every bound; `key` is the table (`providers.<name>`) or, for
    /// settings from the environment, empty (the variable names are used).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let name = |field: &str, var: &str| {
            if key.is_empty() {
                var.to_string()
            } else {
                format!("{key}.{field}")
            }
        };
        let range =
            |field: &str, var: &str, value: Duration, min: Duration, max: Duration, why: &str| {
                if value < min || value > max {
                    Err(ConfigError::new(
                        name(field, var),
                        format!(
                            "{} is out of range: give {} to {}{why}",
                            humantime::format_duration(value),
                            humantime::format_duration(min),
                            humantime::format_duration(max)
                        ),
                    ))
                } else {
                    Ok(())
                }
            };
        let ms = Duration::from_millis(1);
        range(
            "deadline",
            "VAULTBRIDGE_DEADLINE",
            self.deadline,
            ms,
            MAX_DEADLINE,
            " (the engine waits at most 30 s for an answer, then fails the task without our error)",
        )?;
        range(
            "cache_ttl",
            "VAULTBRIDGE_CACHE_TTL",
            self.cache_ttl,
            Duration::ZERO,
            MAX_CACHE_TTL,
            "",
        )?;
        range(
            "max_stale",
            "VAULTBRIDGE_MAX_STALE",
            self.max_stale,
            Duration::ZERO,
            MAX_STALE,
            "",
        )?;
        range(
            "rotate_interval",
            "rotate_interval",
            self.rotate_interval,
            ROTATE_INTERVAL_RANGE.0,
            ROTATE_INTERVAL_RANGE.1,
            "",
        )?;
        if !(1..=MAX_CONCURRENCY).contains(&self.max_concurrency) {
            return Err(ConfigError::new(
                name("max_concurrency", "VAULTBRIDGE_MAX_CONCURRENCY"),
                format!(
                    "{} is out of range: give 1 to {MAX_CONCURRENCY} backend calls in flight",
                    self.max_concurrency
                ),
            ));
        }
        Ok(())
    }
}

/// First and largest pause between retries of a transient failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A provider behind its policy: a deadline, retries with backoff and
/// jitter for transient failures, and a concurrency limit.
pub struct Upstream {
    /// Shared, not copied, by every answer and cache key that names it.
    pub name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    pub tuning: Tuning,
    permits: Semaphore,
    /// Its backend calls, errors, retries and readiness.
    pub(crate) metrics: Arc<ProviderMetrics>,
}

impl Upstream {
    /// Counted in a registry of its own (tests, tools).
    pub fn new(name: String, provider: Arc<dyn Provider>, tuning: Tuning) -> Self {
        let metrics = Metrics::new([name.as_str()]).providers()[0].clone();
        Self::with_metrics(name, provider, tuning, metrics)
    }

    pub(crate) fn with_metrics(
        name: String,
        provider: Arc<dyn Provider>,
        tuning: Tuning,
        metrics: Arc<ProviderMetrics>,
    ) -> Self {
        let permits = Semaphore::new(tuning.max_concurrency.max(1));
        Self {
            name: name.into(),
            provider,
            tuning,
            permits,
            metrics,
        }
    }

    /// One lookup within the deadline. Providers make one attempt per call;
    /// this is the one place that asks again: only when the provider says
    /// that is safe ([`ProviderError::retry_safe`]: never a call that may
    /// already have minted or written something), never before the
    /// backend's `Retry-After`, and not at all when the wait would end past
    /// the deadline — then the failure is reported at once.
    pub async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        let provider = &*self.provider;
        self.call(secret.path, move || provider.fetch(secret)).await
    }

    /// The current version of a secret (the rotation controller's question),
    /// under the same deadline, retries and concurrency limit as a fetch.
    pub async fn current_version(&self, path: &SecretPath) -> Result<Version, ProviderError> {
        let provider = &*self.provider;
        self.call(path, move || provider.current_version(path))
            .await
    }

    /// The value another manager's plugin (or this one) kept for a task
    /// ([`Provider::recall`]), under the same policy as a fetch.
    pub async fn recall(
        &self,
        path: &SecretPath,
        task: &TaskKey,
    ) -> Result<Option<SecretValue>, ProviderError> {
        let provider = &*self.provider;
        self.call(path, move || provider.recall(path, task)).await
    }

    /// Keep a value just minted for a task ([`Provider::remember`]): one
    /// attempt, as the provider reports every failure of a write as not
    /// safe to retry.
    pub async fn remember(
        &self,
        path: &SecretPath,
        task: &TaskKey,
        value: &[u8],
        expires: std::time::SystemTime,
    ) -> Result<bool, ProviderError> {
        let provider = &*self.provider;
        self.call(path, move || provider.remember(path, task, value, expires))
            .await
    }

    /// One backend call, `op`, under this provider's policy (see
    /// [`Self::fetch`]).
    async fn call<T, F, Fut>(&self, path: &SecretPath, op: F) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let deadline = Instant::now() + self.tuning.deadline;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = async {
                let _permit = self.permits.acquire().await;
                // Timed from the permit: waiting for one is ours, not the backend's.
                let started = Instant::now();
                let result = op().await;
                self.metrics
                    .backend
                    .attempt(started.elapsed(), result.as_ref().err());
                self.metrics.health.answered(result.as_ref().map(|_| ()));
                result
            };
            let attempt_started = Instant::now();
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Err(error)) if error.retry_safe() => error,
                Ok(result) => return result,
                Err(_) => {
                    self.metrics.backend.timed_out(attempt_started.elapsed());
                    self.metrics.health.timed_out(self.tuning.deadline);
                    // The call may have been served after all: not retried.
                    return Err(ProviderError::unavailable(format!(
                        "no answer within the {:?} deadline ({attempts} attempt(s)); raise `deadline` or check the backend",
                        self.tuning.deadline
                    ))
                    .without_retry());
                }
            };
            let asked = error.retry_after();
            let pause = jitter(backoff).max(asked.unwrap_or_default());
            let next = Instant::now().checked_add(pause);
            if next.is_none_or(|next| next >= deadline) {
                let why = match asked {
                    Some(wait) => format!(
                        "the backend asked to wait {:.1}s (Retry-After), past the {:?} deadline; reported at once after {attempts} attempt(s)",
                        wait.as_secs_f64(),
                        self.tuning.deadline
                    ),
                    None => format!(
                        "gave up after {attempts} attempt(s) within the {:?} deadline",
                        self.tuning.deadline
                    ),
                };
                return Err(with_note(error, &why));
            }
            tracing::debug!(provider = %self.name, path = %path, attempts, error = %error, "retrying");
            self.metrics.backend.retried();
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The outage with `note` added to its message ("x (note)").
fn with_note(error: ProviderError, note: &str) -> ProviderError {
    match error {
        ProviderError::Unavailable(outage) => {
            ProviderError::Unavailable(vaultbridge_providers::Outage {
                message: format!("{} ({note})", outage.message),
                ..outage
            })
        }
        other => other,
    }
}

/// "Full jitter": a uniformly random pause up to `backoff`, so that many
/// plugins retrying the same vault do not retry in lockstep.
fn jitter(backoff: Duration) -> Duration {
    backoff.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Memory;

    /// Fails with "connection refused" `failures` times, then answers; or hangs.
    fn upstream(failures: usize, hang: bool, deadline: Duration) -> (Upstream, Arc<Memory>) {
        failing_with(
            ProviderError::unavailable("connection refused"),
            failures,
            hang,
            deadline,
        )
    }

    fn failing_with(
        error: ProviderError,
        failures: usize,
        hang: bool,
        deadline: Duration,
    ) -> (Upstream, Arc<Memory>) {
        let mut memory = Memory::new().with("x", b"v").failing(failures, error);
        if hang {
            memory = memory.hanging();
        }
        let memory = Arc::new(memory);
        let tuning = Tuning {
            deadline,
            ..Tuning::default()
        };
        (Upstream::new("p".into(), memory.clone(), tuning), memory)
    }

    static PATH: std::sync::LazyLock<vaultbridge_providers::SecretPath> =
        std::sync::LazyLock::new(|| vaultbridge_providers::SecretPath::parse("x").unwrap());
    fn secret() -> SecretRef<'static> {
        SecretRef {
            path: &PATH,
            version: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_inside_the_deadline() {
        let (up, backend) = upstream(3, false, Duration::from_secs(10));
        assert!(up.fetch(secret()).await.is_ok());
        assert_eq!(backend.calls(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_with_a_clear_error() {
        let (up, _) = upstream(usize::MAX, false, Duration::from_secs(2));
        let err = up.fetch(secret()).await.unwrap_err();
        assert!(err.is_transient());
        assert!(err.to_string().contains("connection refused"), "{err}");
        assert!(err.to_string().contains("2s deadline"), "{err}");

        let (up, _) = upstream(0, true, Duration::from_secs(3));
        let err = up.fetch(secret()).await.unwrap_err();
        assert!(
            err.to_string().contains("no answer within the 3s deadline"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_may_have_taken_effect_is_made_once() {
        let minted = ProviderError::unavailable("HTTP 502 from pki/issue/web").without_retry();
        let (up, backend) = failing_with(minted, 1, false, Duration::from_secs(10));
        let err = up.fetch(secret()).await.unwrap_err();
        assert_eq!(backend.calls(), 1);
        assert!(err.to_string().contains("HTTP 502"), "{err}");
        // Neither are errors that asking again cannot fix.
        for permanent in [
            ProviderError::NotFound("x".into()),
            ProviderError::Invalid("x".into()),
            ProviderError::Denied("x".into()),
            ProviderError::Unauthenticated("x".into()),
        ] {
            let (up, backend) = failing_with(permanent, 1, false, Duration::from_secs(10));
            assert!(up.fetch(secret()).await.is_err());
            assert_eq!(backend.calls(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_for_or_reported_at_once() {
        let throttled = |wait: u64| {
            ProviderError::unavailable("HTTP 429").with_retry_after(Duration::from_secs(wait))
        };
        // Fits in the deadline: the second attempt comes no earlier.
        let (up, backend) = failing_with(throttled(3), 1, false, Duration::from_secs(10));
        let started = Instant::now();
        assert!(up.fetch(secret()).await.is_ok());
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(backend.calls(), 2);

        // Does not fit: one attempt, reported at once, saying why.
        let (up, backend) = failing_with(throttled(30), usize::MAX, false, Duration::from_secs(10));
        let started = Instant::now();
        let err = up.fetch(secret()).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(backend.calls(), 1);
        assert!(err.to_string().contains("Retry-After"), "{err}");
        // A wait no clock can hold is refused, not a panic.
        let (up, _) = failing_with(
            ProviderError::unavailable("x").with_retry_after(Duration::MAX),
            usize::MAX,
            false,
            Duration::from_secs(10),
        );
        assert!(up.fetch(secret()).await.is_err());
    }

    #[test]
    fn tuning_parses_human_durations() {
        let tuning: Tuning =
            toml::from_str("cache_ttl = \"5m\"\nmax_stale = \"1h\"\ndeadline = \"1500ms\"")
                .unwrap();
        assert_eq!(tuning.cache_ttl, Duration::from_secs(300));
        assert_eq!(tuning.max_stale, Duration::from_secs(3600));
        assert_eq!(tuning.deadline, Duration::from_millis(1500));
        assert_eq!(tuning.max_concurrency, 16);
    }
}
