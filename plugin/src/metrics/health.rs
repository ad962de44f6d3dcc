//! Whether each provider is ready: its last backend call or check
//! succeeded within [`READY_WITHIN`]. Requests report every backend
//! answer ([`Health::answered`]); [`keep_checking`] asks a provider without
//! a success for [`CHECK_AFTER`] (or never asked) with its `check()`, so
//! that readiness means something on an idle plugin too, and so that one
//! failed lookup does not leave it "not ready" until the next success.
//!
//! A reason shown by `/readyz` never quotes a request's failure (its path,
//! or a backend's answer to it, may carry label text or a logical call's
//! body): only a check's own words do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use vaultbridge_providers::{Provider, ProviderError};

use super::{Metrics, ProviderMetrics};

/// A provider is ready when its backend answered within this interval.
pub const READY_WITHIN: Duration = Duration::from_secs(60);
/// A provider not heard from for this long is checked in the background.
pub const CHECK_AFTER: Duration = Duration::from_secs(30);
/// How often the background task looks, and how long one check may take.
const LOOK_EVERY: Duration = Duration::from_secs(5);
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the last backend answers of one provider were.
#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_success: Option<(Instant, SystemTime)>,
    /// The last failure, when it came after the last success.
    failure: Option<(Instant, String)>,
    /// Failed background checks in a row, and when the next one may run:
    /// a failing login is not retried faster than the back-off allows
    /// (Vault and STS lock accounts out after a few failures).
    failed_checks: u32,
    next_check: Option<Instant>,
}

/// One provider's readiness, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Status {
    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record one request's backend answer. Not found and denied are
    /// answers: the backend was reached and took our credentials. A request
    /// the backend cannot take (`Invalid`: our labels) says nothing about
    /// it. A failure's reason is its kind only (its text is in the log).
    pub fn answered(&self, result: Result<(), &ProviderError>) {
        let reason = match result {
            Err(ProviderError::Invalid(_)) => return,
            Err(ProviderError::Unauthenticated(_)) => {
                "a lookup failed: the backend refuses our credentials (see the plugin log)"
            }
            Err(ProviderError::Unavailable(_)) => {
                "a lookup failed: backend unavailable (see the plugin log)"
            }
            _ => return self.succeeded(),
        };
        self.lock().failure = Some((Instant::now(), reason.to_string()));
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        state.last_success = Some((Instant::now(), SystemTime::now()));
        state.failure = None;
        state.failed_checks = 0;
        state.next_check = None;
    }

    /// A request's call that got no answer within the lookup's deadline.
    pub fn timed_out(&self, deadline: Duration) {
        self.lock().failure = Some((
            Instant::now(),
            format!("backend unavailable: no answer within the {deadline:?} deadline"),
        ));
    }

    /// Record a background check: its own words are the reason (a check
    /// reads no secret and sends no request text).
    fn checked(&self, result: Result<(), String>) {
        match result {
            Ok(()) => self.succeeded(),
            Err(reason) => {
                let mut state = self.lock();
                state.failed_checks = state.failed_checks.saturating_add(1);
                let wait = vaultbridge_providers::backoff::after_failures(state.failed_checks);
                let now = Instant::now();
                state.next_check = now.checked_add(wait.max(CHECK_AFTER));
                state.failure = Some((now, reason));
            }
        }
    }

    /// Whether [`keep_checking`] should check now: no success for
    /// [`CHECK_AFTER`], and not backing off after failed checks.
    fn due(&self, now: Instant) -> bool {
        let state = self.lock();
        let quiet = state
            .last_success
            .is_none_or(|(at, _)| now.saturating_duration_since(at) >= CHECK_AFTER);
        quiet && state.next_check.is_none_or(|at| now >= at)
    }

    pub fn last_success_at(&self) -> Option<SystemTime> {
        self.lock().last_success.map(|(_, at)| at)
    }

    pub fn status(&self, now: Instant) -> Status {
        let state = self.lock();
        let not_ready = |reason: String| Status {
            ready: false,
            reason: Some(reason),
        };
        if let Some((_, reason)) = &state.failure {
            return not_ready(reason.clone());
        }
        match state.last_success {
            Some((at, _)) if now.saturating_duration_since(at) <= READY_WITHIN => Status {
                ready: true,
                reason: None,
            },
            Some(_) => not_ready(format!(
                "no backend call or check succeeded in the last {}s",
                READY_WITHIN.as_secs()
            )),
            None => not_ready("not checked yet".into()),
        }
    }
}

/// What `/readyz` answers.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub providers: BTreeMap<String, Status>,
}

/// Every provider's status; ready when all are (and there is one).
pub fn readiness(metrics: &Metrics) -> Readiness {
    let now = Instant::now();
    let providers: BTreeMap<String, Status> = metrics
        .providers()
        .iter()
        .map(|p| (p.name.clone(), p.health.status(now)))
        .collect();
    let configured = !providers.is_empty();
    Readiness {
        ready: configured && providers.values().all(Status::is_ready),
        reason: (!configured).then_some("no provider is configured; see the plugin log"),
        providers,
    }
}

/// Check, in the background, every provider without a success for
/// [`CHECK_AFTER`] (all of them at start), each bounded by a timeout, each
/// backing off after failures, and none able to stop the others by
/// panicking (a bug, or a hostile backend's numbers).
pub async fn keep_checking(providers: Vec<(Arc<dyn Provider>, Arc<ProviderMetrics>)>) {
    use futures::FutureExt as _;
    loop {
        let now = Instant::now();
        let due = providers
            .iter()
            .filter(|(_, metrics)| metrics.health.due(now));
        let checks = due.map(|(provider, metrics)| async move {
            let name = metrics.name.as_str();
            let check = tokio::time::timeout(CHECK_TIMEOUT, provider.check());
            let result = match std::panic::AssertUnwindSafe(check).catch_unwind().await {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(error))) => {
                    tracing::warn!(provider = name, error = %error, "readiness check failed");
                    Err(error.to_string())
                }
                Ok(Err(_)) => {
                    tracing::warn!(provider = name, "readiness check got no answer in time");
                    Err(format!(
                        "backend unavailable: the check got no answer within {}s",
                        CHECK_TIMEOUT.as_secs()
                    ))
                }
                Err(_) => {
                    tracing::error!(provider = name, "readiness check panicked (a bug)");
                    Err("the readiness check failed (a bug; see the plugin log)".to_string())
                }
            };
            metrics.health.checked(result);
        });
        futures::future::join_all(checks).await;
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_an_answer_not_after_a_failure_or_silence() {
        let health = Health::default();
        let now = Instant::now();
        assert_eq!(
            health.status(now).reason.as_deref(),
            Some("not checked yet")
        );
        health.answered(Err(&ProviderError::NotFound("x".into())));
        assert!(health.status(Instant::now()).ready);
        health.answered(Err(&ProviderError::Invalid("x".into())));
        assert!(health.status(Instant::now()).ready);
        // A request's failure: its kind only, never its text.
        health.answered(Err(&ProviderError::unavailable("apps/x?token=s.abc")));
        let status = health.status(Instant::now());
        assert!(!status.ready);
        assert_eq!(
            status.reason.as_deref(),
            Some("a lookup failed: backend unavailable (see the plugin log)")
        );
        // A check's failure: its words, and a back-off before the next.
        health.checked(Err("backend unavailable: connection refused".into()));
        assert!(!health.due(Instant::now()));
        assert!(health.due(Instant::now() + CHECK_AFTER + Duration::from_secs(1)));
        health.answered(Ok(()));
        assert!(health.status(Instant::now()).ready);
        let later = Instant::now() + READY_WITHIN + Duration::from_secs(1);
        assert!(!health.status(later).ready);
    }
}
