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

use crate::labels::{Lookup, PATH, ROTATE, ROTATION, VERSION};
use crate::resolve::Resolver;
use crate::tuning::Upstream;
use engine::{Engine, Listed, ListedService};
use plan::{DriverSecret, ServiceUse, UpdateState};

/// Between a backend's clock and the manager's: added to the time a new
/// version needs to reach every task.
const CLOCK_MARGIN: Duration = Duration::from_secs(5);
/// A secret this young is never removed: `docker stack deploy` creates a
/// stack's secret a moment before it points the service at it.
const REMOVAL_GRACE: Duration = Duration::from_secs(60);

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
    /// When the update was issued, by our clock.
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
            && let Err(err) = self.relist_and_clean_up().await
        {
            tracing::error!(error = %shown(&err), "cleaning up failed");
            self.failed = true;
        }
        !self.failed
    }

    /// One look at every watched secret whose provider is due: roll what
    /// changed, report the rolls that ended, remove what no roll needs.
    async fn pass(&mut self) -> Result<(), String> {
        let (listed, mut taken) = self.engine.secrets().await?;
        let services = self.engine.services().await?;
        self.follow(&services);
        let all: Vec<DriverSecret> = listed.iter().map(|l| l.secret.clone()).collect();
        let now = Instant::now();
        let due: HashSet<String> = self
            .resolver
            .upstreams()
            .filter(|u| {
                self.checked
                    .get(&*u.name)
                    .is_none_or(|last| now.duration_since(*last) >= u.tuning.rotate_interval)
            })
            .map(|u| u.name.to_string())
            .collect();
        for name in &due {
            self.checked.insert(name.clone(), now);
        }

        let watched: Vec<Watched<'_>> = listed
            .iter()
            .filter_map(|l| watch(&self.resolver, &self.said, l, &services))
            .filter(|w| due.contains(&*w.upstream.name))
            .collect();
        // One version call per backend secret, however many objects name it.
        let unique: BTreeMap<(String, String), (&Arc<Upstream>, &SecretPath)> = watched
            .iter()
            .map(|w| {
                let key = (w.upstream.name.to_string(), w.lookup.path.to_string());
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
            let key = (w.upstream.name.to_string(), w.lookup.path.to_string());
            let Some(answer) = versions.get(&key) else {
                continue;
            };
            let secret = &w.listed.secret;
            let path = w.lookup.path.to_string();
            let current = match answer
                .as_ref()
                .map_err(ToString::to_string)
                .and_then(checked)
            {
                Ok(current) => current,
                Err(err) => {
                    self.failed = true;
                    tracing::warn!(
                        secret = %shown(&secret.name),
                        provider = %w.upstream.name,
                        path = %shown(&path),
                        error = %shown(&err),
                        "cannot tell whether the secret changed; it is checked again at the next pass"
                    );
                    continue;
                }
            };
            let tuning = &w.upstream.tuning;
            let settle = tuning.cache_ttl + tuning.max_stale + CLOCK_MARGIN;
            let Some(why) = plan::stale(secret, current, settle) else {
                continue;
            };
            let users: Vec<&ListedService> = services
                .iter()
                .filter(|s| s.service.secrets.contains(&secret.id))
                .collect();
            let names: Vec<String> = users
                .iter()
                .map(|s| shown(&s.service.name).into_owned())
                .collect();
            let from = secret
                .labels
                .get(ROTATION)
                .or(secret.labels.get(VERSION))
                .map_or("unpinned", String::as_str);
            if self.options.dry_run {
                println!(
                    "would roll secret {} ({} {}) from {from} to {} in services {}: {why}",
                    shown(&secret.name),
                    w.upstream.name,
                    shown(&path),
                    current.id,
                    names.join(", ")
                );
                continue;
            }
            let known: Vec<DriverSecret> = all.iter().chain(&created).cloned().collect();
            let existing = plan::existing_successor(secret, &path, current, &known)
                .filter(|s| self.same_driver(&listed, s, &w.listed.driver))
                .cloned();
            // A service whose last update failed is rolled only onto a
            // successor for a newer value than the one that failed.
            let rollable: Vec<&ListedService> = users
                .iter()
                .copied()
                .filter(|u| match u.service.update {
                    UpdateState::Settled => true,
                    UpdateState::Updating => {
                        tracing::info!(
                            service = %shown(&u.service.name),
                            secret = %shown(&secret.name),
                            "the service is updating; it is rolled at a later pass"
                        );
                        false
                    }
                    UpdateState::Failed if existing.is_none() => true,
                    UpdateState::Failed => {
                        self.failed = true;
                        say_once(&self.said, format!("failed:{}:{}", u.service.id, current.id), || {
                            tracing::error!(
                                service = %shown(&u.service.name),
                                secret = %shown(&secret.name),
                                engine = %shown(u.service.message.as_deref().unwrap_or("")),
                                outcome = "not_rolled",
                                "the service's last update was paused or rolled back, so it is not rolled onto this value again (no retry loop); fix the service and `docker service update` it, or the next change of the value rolls it"
                            )
                        });
                        false
                    }
                })
                .collect();
            if rollable.is_empty() {
                continue;
            }
            let successor = match existing {
                Some(existing) => existing,
                None => {
                    let name = plan::next_name(&secret.name, &known, &taken);
                    let labels = plan::successor_labels(secret, &path, current);
                    let id = match self
                        .engine
                        .create_secret(&name, labels.clone(), &w.listed.driver)
                        .await
                    {
                        Ok(id) => id,
                        Err(err) => {
                            self.failed = true;
                            say_once(
                                &self.said,
                                format!("create:{name}"),
                                || tracing::error!(secret = %shown(&secret.name), error = %shown(&err), "cannot create the new secret; tried again at the next pass"),
                            );
                            continue;
                        }
                    };
                    tracing::info!(
                        secret = %shown(&secret.name),
                        provider = %w.upstream.name,
                        path = %shown(&path),
                        from,
                        to = %current.id,
                        successor = %name,
                        services = %names.join(","),
                        "change detected: {why}"
                    );
                    let made = DriverSecret {
                        id,
                        name: name.clone(),
                        labels,
                        created: Some(SystemTime::now()),
                    };
                    taken.insert(name);
                    created.push(made.clone());
                    made
                }
            };
            for user in rollable {
                swaps.entry(user.service.id.clone()).or_default().insert(
                    secret.id.clone(),
                    (successor.id.clone(), successor.name.clone()),
                );
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
                        service = %shown(&user.service.name),
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
                    say_once(
                        &self.said,
                        format!("update:{service_id}:{}", names.join(",")),
                        || tracing::error!(service = %shown(&user.service.name), error = %shown(&err), outcome = "update_refused", "the engine refused the update; tried again at the next pass"),
                    );
                }
            }
        }
        if self.pending.is_empty() && !self.options.dry_run {
            self.clean_up(&listed, &services).await?;
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
            // A state from before our update says nothing about it. The
            // engine's start time against our clock: the controller runs
            // on a manager, on its local socket (the service's UpdatedAt
            // cannot serve: status changes move it too).
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

    /// Whether `candidate` (a secret of ours) has `driver`, as its
    /// predecessor has.
    fn same_driver(
        &self,
        listed: &[Listed],
        candidate: &DriverSecret,
        driver: &bollard::models::Driver,
    ) -> bool {
        listed
            .iter()
            .find(|l| l.secret.id == candidate.id)
            .is_some_and(|l| &l.driver == driver)
    }

    /// [`Self::clean_up`] on fresh lists (after waiting for rolls).
    async fn relist_and_clean_up(&mut self) -> Result<(), String> {
        let (listed, _) = self.engine.secrets().await?;
        let services = self.engine.services().await?;
        self.clean_up(&listed, &services).await
    }

    /// Remove the secrets no service and no possible rollback needs.
    /// `listed` and `services`: the engine's current lists (a pass that
    /// started no roll passes its own; nothing changed since).
    async fn clean_up(
        &mut self,
        listed: &[Listed],
        services: &[ListedService],
    ) -> Result<(), String> {
        let all: Vec<DriverSecret> = listed.iter().map(|l| l.secret.clone()).collect();
        let uses: Vec<ServiceUse> = services.iter().map(|s| s.service.clone()).collect();
        let watched = all
            .iter()
            .filter(|s| Lookup::from_labels(&s.name, &s.labels).is_ok_and(|lookup| lookup.rotate));
        for secret in plan::removable(watched, &all, &uses, SystemTime::now(), REMOVAL_GRACE) {
            match self.engine.remove_secret(secret).await {
                Ok(()) => {
                    tracing::info!(secret = %shown(&secret.name), "removed: no service uses it any more")
                }
                Err(err) => say_once(
                    &self.said,
                    format!("remove:{}", secret.id),
                    || tracing::warn!(error = %shown(&err), "kept for now; tried again at later passes"),
                ),
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
    if resolver.has_default_path() && !secret.labels.contains_key(PATH) {
        say_once(
            said,
            format!("path:{}", secret.id),
            || tracing::warn!(secret = %shown(&secret.name), "not watched: its path comes from default_path, which depends on the asking service; give it a vaultbridge.path label"),
        );
        return None;
    }
    let lookup = match Lookup::from_labels(&secret.name, &secret.labels) {
        Ok(lookup) if lookup.rotate && used => lookup,
        Ok(_) => return None,
        Err(err) => {
            say_once(
                said,
                format!("labels:{}", secret.id),
                || tracing::warn!(secret = %shown(&secret.name), error = %err, "not watched: its labels are refused"),
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
                || tracing::warn!(secret = %shown(&secret.name), error = %err, "not watched: no provider for it"),
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

/// A backend's answer checked before it is written into labels: the
/// change stamp and the pin must be what the plugin accepts there.
fn checked(current: &Version) -> Result<&Version, String> {
    if !crate::labels::is_plain_stamp(&current.id) {
        return Err(format!(
            "the backend's version id '{}' cannot be a label value",
            shown(&current.id)
        ));
    }
    if let Some(pin) = &current.pin {
        vaultbridge_providers::path::check_version(pin)
            .map_err(|err| format!("the backend's version '{}' is refused: {err}", shown(pin)))?;
    }
    Ok(current)
}
