//! `vaultbridge rotate`: the rotation controller. When a backend value
//! changes, it rolls every service that uses it, Docker's own way: a new
//! secret object (driver-backed, no data) pinned to the new version, then
//! one service update that swaps the reference (same target, owner and
//! mode), so that the service's `UpdateConfig` governs the roll; the old
//! object is removed once no roll may need it. The plugin itself keeps no
//! Docker socket: only this controller has one.
//!
//! - [`plan`]: the rules, as pure functions of the engine's and the
//!   backends' answers (all state lives in the secrets' names and labels).
//! - [`engine`]: the Docker Engine API calls.

mod engine;
pub mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use tokio::time::Instant;
use vaultbridge_providers::text::shown;
use vaultbridge_providers::{ProviderError, SecretPath, Version};

use crate::labels::{Lookup, ROTATE, ROTATION, VERSION};
use crate::resolve::Resolver;
use crate::tuning::Upstream;
use engine::{Engine, Listed, ListedService};
use plan::{DriverSecret, ServiceUse, UpdateState};

/// How the controller runs (the `rotate` command's flags).
#[derive(Debug, Clone)]
pub struct Options {
    /// One pass: roll what changed, wait for those rolls, clean up, exit.
    pub once: bool,
    /// Say what would roll; change nothing.
    pub dry_run: bool,
    /// The plugin names (or aliases) whose secrets are watched.
    pub drivers: Vec<String>,
    /// How long a roll it started is followed (with `once`: waited for).
    pub roll_timeout: Duration,
}

/// A roll this controller started and has not seen end.
struct Pending {
    service: String,
    secrets: Vec<String>,
    issued: SystemTime,
    started: Instant,
}

/// A watched secret in use, and where its value lives.
struct Watched<'a> {
    listed: &'a Listed,
    lookup: Lookup,
    upstream: &'a Arc<Upstream>,
}

pub struct Controller {
    engine: Engine,
    resolver: Resolver,
    options: Options,
    pending: HashMap<String, Pending>,
    /// Warnings already given (one per secret or service and cause).
    said: Mutex<HashSet<String>>,
    /// When each provider's secrets were last checked.
    checked: HashMap<String, Instant>,
    /// Something failed in this pass (the exit status of `--once`).
    failed: bool,
}

impl Controller {
    pub async fn connect(resolver: Resolver, mut options: Options) -> Result<Self, String> {
        options.drivers = options
            .drivers
            .iter()
            .map(|d| crate::stack::plugin_ref(d))
            .collect();
        let engine = Engine::connect(options.drivers.clone()).await?;
        Ok(Self {
            engine,
            resolver,
            options,
            pending: HashMap::new(),
            said: Mutex::new(HashSet::new()),
            checked: HashMap::new(),
            failed: false,
        })
    }

    /// The long-running mode: a pass whenever a provider's
    /// `rotate_interval` is due, until `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let tick = self
            .resolver
            .upstreams()
            .map(|u| u.tuning.rotate_interval)
            .min()
            .unwrap_or(crate::tuning::DEFAULT_ROTATE_INTERVAL)
            .min(Duration::from_secs(5));
        tokio::pin!(stop);
        loop {
            if let Err(err) = self.pass().await {
                tracing::error!(error = %shown(&err), "rotation pass failed; trying again at the next");
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// `--once` and `--dry-run`: one pass, then (unless dry) wait for the
    /// rolls it started and clean up. True when everything went well.
    pub async fn once(mut self) -> bool {
        if let Err(err) = self.pass().await {
            tracing::error!(error = %shown(&err), "rotation pass failed");
            return false;
        }
        if self.options.dry_run {
            return !self.failed;
        }
        let deadline = Instant::now() + self.options.roll_timeout;
        while !self.pending.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match self.engine.services().await {
                Ok(services) => self.follow(&services),
                Err(err) => tracing::warn!(error = %shown(&err), "cannot follow the rolls"),
            }
        }
        for pending in self.pending.values() {
            tracing::error!(
                service = %pending.service,
                secrets = %pending.secrets.join(","),
                outcome = "timeout",
                "the roll did not end within --roll-timeout; the engine carries on with it"
            );
            self.failed = true;
        }
        if self.pending.is_empty()
            && let Err(err) = self.clean_up().await
        {
            tracing::error!(error = %shown(&err), "cleaning up failed");
            self.failed = true;
        }
        !self.failed
    }

    /// One look at every watched secret whose provider is due: roll what
    /// changed, report the rolls that ended, remove what no roll needs.
    async fn pass(&mut self) -> Result<(), String> {
        let listed = self.engine.secrets().await?;
        let services = self.engine.services().await?;
        self.follow(&services);
        let all: Vec<DriverSecret> = listed.iter().map(|l| l.secret.clone()).collect();
        let now = Instant::now();
        let due: HashSet<String> = self
            .resolver
            .upstreams()
            .filter(|u| {
                self.checked
                    .get(&u.name)
                    .is_none_or(|last| now.duration_since(*last) >= u.tuning.rotate_interval)
            })
            .map(|u| u.name.clone())
            .collect();
        for name in &due {
            self.checked.insert(name.clone(), now);
        }

        let watched: Vec<Watched<'_>> = listed
            .iter()
            .filter_map(|l| watch(&self.resolver, &self.said, l, &services))
            .filter(|w| due.contains(&w.upstream.name))
            .collect();
        // One version call per backend secret, however many objects name it.
        let unique: BTreeMap<(String, String), (&Arc<Upstream>, &SecretPath)> = watched
            .iter()
            .map(|w| {
                let key = (w.upstream.name.clone(), w.lookup.path.to_string());
                (key, (w.upstream, &w.lookup.path))
            })
            .collect();
        let answers = join_all(
            unique
                .values()
                .map(|(upstream, path)| upstream.current_version(path)),
        )
        .await;
        let versions: BTreeMap<&(String, String), Result<Version, ProviderError>> =
            unique.keys().zip(answers).collect();

        let mut created: Vec<DriverSecret> = Vec::new();
        let mut swaps: HashMap<String, HashMap<String, (String, String)>> = HashMap::new();
        for w in &watched {
            let key = (w.upstream.name.clone(), w.lookup.path.to_string());
            let Some(answer) = versions.get(&key) else {
                continue;
            };
            let secret = &w.listed.secret;
            let current = match answer {
                Ok(current) => current,
                Err(err) => {
                    self.failed = true;
                    tracing::warn!(
                        secret = %secret.name,
                        provider = %w.upstream.name,
                        path = %w.lookup.path,
                        error = %err,
                        "cannot tell whether the secret changed; it is checked again at the next pass"
                    );
                    continue;
                }
            };
            let Some(why) = plan::stale(secret, current) else {
                continue;
            };
            let users: Vec<&ListedService> = services
                .iter()
                .filter(|s| s.service.secrets.contains(&secret.id))
                .collect();
            let names: Vec<&str> = users.iter().map(|s| s.service.name.as_str()).collect();
            let from = secret
                .labels
                .get(ROTATION)
                .or(secret.labels.get(VERSION))
                .map_or("unpinned", String::as_str);
            if self.options.dry_run {
                println!(
                    "would roll secret {} ({} {}) from {from} to {} in services {}: {why}",
                    secret.name,
                    w.upstream.name,
                    w.lookup.path,
                    current.id,
                    names.join(", ")
                );
                continue;
            }
            let known: Vec<DriverSecret> = all.iter().chain(&created).cloned().collect();
            let successor = match plan::existing_successor(secret, current, &known) {
                Some(existing) => existing.clone(),
                None => {
                    let name = plan::next_name(&secret.name, &known);
                    let labels = plan::successor_labels(secret, current);
                    let id = self
                        .engine
                        .create_secret(&name, labels.clone(), &w.listed.driver)
                        .await?;
                    tracing::info!(
                        secret = %secret.name,
                        provider = %w.upstream.name,
                        path = %w.lookup.path,
                        from,
                        to = %current.id,
                        successor = %name,
                        services = %names.join(","),
                        "change detected: {why}"
                    );
                    let made = DriverSecret {
                        id,
                        name,
                        labels,
                        created: Some(SystemTime::now()),
                    };
                    created.push(made.clone());
                    made
                }
            };
            for user in users {
                let service = &user.service;
                match service.update {
                    UpdateState::Settled => {
                        swaps.entry(service.id.clone()).or_default().insert(
                            secret.id.clone(),
                            (successor.id.clone(), successor.name.clone()),
                        );
                    }
                    UpdateState::Updating => tracing::info!(
                        service = %service.name,
                        secret = %secret.name,
                        "the service is updating; it is rolled at a later pass"
                    ),
                    UpdateState::Failed => {
                        self.failed = true;
                        say_once(
                            &self.said,
                            format!("failed:{}:{}", service.id, successor.id),
                            || {
                                tracing::error!(
                                    service = %service.name,
                                    secret = %secret.name,
                                    successor = %successor.name,
                                    engine = %shown(service.message.as_deref().unwrap_or("")),
                                    outcome = "not_rolled",
                                    "the service's last update was paused or rolled back, so it is not rolled again (no retry loop); fix the service, then `docker service update` it (or let the next change of the secret roll it)"
                                )
                            },
                        );
                    }
                }
            }
        }

        for (service_id, swaps) in swaps {
            let Some(user) = services.iter().find(|s| s.service.id == service_id) else {
                continue;
            };
            let names: Vec<String> = swaps.values().map(|(_, name)| name.clone()).collect();
            match self.engine.swap_secrets(user, &swaps).await {
                Ok(()) => {
                    tracing::info!(
                        service = %user.service.name,
                        secrets = %names.join(","),
                        outcome = "rolling",
                        "service update started"
                    );
                    self.pending.insert(
                        service_id,
                        Pending {
                            service: user.service.name.clone(),
                            secrets: names,
                            issued: SystemTime::now(),
                            started: Instant::now(),
                        },
                    );
                }
                Err(err) => {
                    self.failed = true;
                    tracing::error!(service = %user.service.name, error = %shown(&err), outcome = "update_refused", "the engine refused the update; tried again at the next pass");
                }
            }
        }
        if self.pending.is_empty() && !self.options.dry_run {
            self.clean_up().await?;
        }
        Ok(())
    }

    /// Report the rolls that ended (completed, paused or rolled back).
    fn follow(&mut self, services: &[ListedService]) {
        let mut ended = Vec::new();
        for (id, pending) in &self.pending {
            let Some(listed) = services.iter().find(|s| &s.service.id == id) else {
                tracing::warn!(service = %pending.service, outcome = "gone", "the service was removed during its roll");
                ended.push(id.clone());
                continue;
            };
            let seconds = pending.started.elapsed().as_secs_f64();
            // A state from before our update says nothing about it.
            let ours = listed
                .update_started
                .is_some_and(|started| started + Duration::from_secs(1) >= pending.issued);
            if !ours {
                if pending.started.elapsed() > self.options.roll_timeout {
                    // The engine never reported this update (no tasks to
                    // replace?): stop waiting, so that clean-up goes on.
                    tracing::warn!(
                        service = %pending.service,
                        outcome = "unknown",
                        seconds = format_args!("{seconds:.1}"),
                        "the engine reported no update status for the roll; no longer followed"
                    );
                    ended.push(id.clone());
                }
                continue;
            }
            match listed.service.update {
                UpdateState::Updating => continue,
                UpdateState::Settled => tracing::info!(
                    service = %pending.service,
                    secrets = %pending.secrets.join(","),
                    outcome = "completed",
                    seconds = format_args!("{seconds:.1}"),
                    "service rolled onto the new secret"
                ),
                UpdateState::Failed => {
                    self.failed = true;
                    tracing::error!(
                        service = %pending.service,
                        secrets = %pending.secrets.join(","),
                        outcome = "failed",
                        engine = %shown(listed.service.message.as_deref().unwrap_or("")),
                        seconds = format_args!("{seconds:.1}"),
                        "the roll was paused or rolled back by the service's failure action; it is not retried"
                    );
                }
            }
            ended.push(id.clone());
        }
        for id in ended {
            self.pending.remove(&id);
        }
    }

    /// Remove the secrets no service and no possible rollback needs.
    async fn clean_up(&mut self) -> Result<(), String> {
        let listed = self.engine.secrets().await?;
        let services = self.engine.services().await?;
        let all: Vec<DriverSecret> = listed.iter().map(|l| l.secret.clone()).collect();
        let uses: Vec<ServiceUse> = services.iter().map(|s| s.service.clone()).collect();
        let watched = all
            .iter()
            .filter(|s| Lookup::from_labels(&s.name, &s.labels).is_ok_and(|lookup| lookup.rotate));
        for secret in plan::removable(watched, &all, &uses) {
            match self.engine.remove_secret(secret).await {
                Ok(()) => {
                    tracing::info!(secret = %secret.name, "removed: no service uses it any more")
                }
                Err(err) => tracing::warn!(error = %shown(&err), "kept for now"),
            }
        }
        Ok(())
    }
}

/// A secret we watch and that a service uses, with its provider; a
/// `vaultbridge.rotate` secret whose labels are wrong is reported once.
fn watch<'a>(
    resolver: &'a Resolver,
    said: &Mutex<HashSet<String>>,
    listed: &'a Listed,
    services: &[ListedService],
) -> Option<Watched<'a>> {
    let secret = &listed.secret;
    if !secret.labels.contains_key(ROTATE) {
        return None;
    }
    let used = services
        .iter()
        .any(|s| s.service.secrets.contains(&secret.id));
    let lookup = match Lookup::from_labels(&secret.name, &secret.labels) {
        Ok(lookup) if lookup.rotate && used => lookup,
        Ok(_) => return None,
        Err(err) => {
            say_once(
                said,
                format!("labels:{}", secret.id),
                || tracing::warn!(secret = %secret.name, error = %err, "not watched: its labels are refused"),
            );
            return None;
        }
    };
    match resolver.route(&lookup) {
        Ok(upstream) => Some(Watched {
            listed,
            lookup,
            upstream,
        }),
        Err(err) => {
            say_once(
                said,
                format!("route:{}", secret.id),
                || tracing::warn!(secret = %secret.name, error = %err, "not watched: no provider for it"),
            );
            None
        }
    }
}

/// `say` the first time `key` is seen, so that a long-running controller
/// does not repeat a warning every pass.
fn say_once(said: &Mutex<HashSet<String>>, key: String, say: impl FnOnce()) {
    let first = said
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(key);
    if first {
        say();
    }
}
