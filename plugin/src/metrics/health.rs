//! Whether each provider is ready: its last backend call or check
//! succeeded within [`READY_WITHIN`]. Requests report every backend
//! answer ([`Health::answered`]); [`keep_checking`] asks a provider that
//! has been quiet for [`CHECK_AFTER`] (or never asked) with its `check()`,
//! so that readiness means something on an idle plugin too.

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

    /// Record one backend answer. Not found and denied are answers: the
    /// backend was reached and took our credentials. A request the backend
    /// cannot take (`Invalid`: our labels) says nothing about it.
    pub fn answered(&self, result: Result<(), &ProviderError>) {
        match result {
            Ok(()) | Err(ProviderError::NotFound(_) | ProviderError::Denied(_)) => {
                let mut state = self.lock();
                state.last_success = Some((Instant::now(), SystemTime::now()));
                state.failure = None;
            }
            Err(ProviderError::Invalid(_)) => {}
            // The message is escaped and bounded, and never carries a
            // credential (the providers' rule).
            Err(error) => self.lock().failure = Some((Instant::now(), error.to_string())),
        }
    }

    /// A call that got no answer within the lookup's deadline.
    pub fn timed_out(&self, deadline: Duration) {
        self.lock().failure = Some((
            Instant::now(),
            format!("backend unavailable: no answer within the {deadline:?} deadline"),
        ));
    }

    pub fn last_success_at(&self) -> Option<SystemTime> {
        self.lock().last_success.map(|(_, at)| at)
    }

    /// When the backend was last heard from, answer or failure.
    fn last_heard(&self) -> Option<Instant> {
        let state = self.lock();
        let success = state.last_success.map(|(at, _)| at);
        let failure = state.failure.as_ref().map(|(at, _)| *at);
        success.max(failure)
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

/// Check, in the background, every provider not heard from for
/// [`CHECK_AFTER`] (all of them at start), each bounded by a timeout.
pub async fn keep_checking(providers: Vec<(Arc<dyn Provider>, Arc<ProviderMetrics>)>) {
    loop {
        let now = Instant::now();
        let quiet = providers.iter().filter(|(_, metrics)| {
            metrics
                .health
                .last_heard()
                .is_none_or(|at| now - at >= CHECK_AFTER)
        });
        let checks = quiet.map(|(provider, metrics)| async move {
            let name = metrics.name.as_str();
            match tokio::time::timeout(CHECK_TIMEOUT, provider.check()).await {
                Ok(Ok(_)) => metrics.health.answered(Ok(())),
                Ok(Err(error)) => {
                    tracing::warn!(provider = name, error = %error, "readiness check failed");
                    metrics.health.answered(Err(&error));
                }
                Err(_) => {
                    tracing::warn!(provider = name, "readiness check got no answer in time");
                    metrics.health.timed_out(CHECK_TIMEOUT);
                }
            }
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
        health.answered(Err(&ProviderError::unavailable("connection refused\n")));
        let status = health.status(Instant::now());
        assert!(!status.ready);
        assert_eq!(
            status.reason.as_deref(),
            Some("backend unavailable: connection refused\\u{a}")
        );
        health.answered(Ok(()));
        assert!(health.status(Instant::now()).ready);
        let later = Instant::now() + READY_WITHIN + Duration::from_secs(1);
        assert!(!health.status(later).ready);
    }
}
