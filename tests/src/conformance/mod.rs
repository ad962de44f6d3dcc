//! One conformance suite that every provider runs (teller's
//! `ProviderTest::new(p).run()`): a backend supplies a [`Fixture`] — its
//! server, its `[providers.<role>]` tables and environment form, seeded
//! values, a denied path, bad credentials, a hung, throttled and stopped
//! backend — and [`run`] drives the same cases through it twice:
//!
//! - **direct**: in this process, through the plugin's own [`Resolver`]
//!   (built from the same TOML: `Config::parse` + `Resolver::from_config`),
//!   so labels, fields, decoding, the deadline and the retry rules of
//!   `Upstream` are those of production;
//! - **socket**: the real binary ([`Plugin::start`]), a GetSecret request
//!   shaped like the engine's ([`engine_request`]); `check` runs the binary's
//!   `vaultbridge check`.
//!
//! A `skip` in the printed table is the fixture's reason, listed under it;
//! a case may still assert what the backend does instead (a file refuses
//! a version label; the environment form of aws and azure is loaded and
//! checked in process, and read through the socket only).
//!
//! Every case asserts the answer (value, or the `Err` text and the outcome
//! word), counts attempts server-side where that is the point, and checks
//! that no seeded value or credential reached the plugin log (or an error
//! message). A case a backend cannot have (a file has no server to throttle)
//! is skipped with the fixture's reason, printed in the summary table —
//! never silently.
//!
//! Each provider table gets `cache_ttl = "0s"` (every request reaches the
//! backend) and `deadline = "3s"` (a hung backend costs 3 s per run).

pub mod file;

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "vault")]
pub mod vault;

use std::panic::AssertUnwindSafe;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use vaultbridge::config::{Config, Source};
use vaultbridge::labels::Lookup;
use vaultbridge::protocol::GetSecretRequest;
use vaultbridge::resolve::Resolver;
use vaultbridge_providers::{ProviderError, Version};

use crate::proxy::ThrottleProxy;
use crate::{Plugin, assert_log_has_no_values, engine_request};

/// `Err(reason)`: the backend has no such thing; the case is skipped, saying why.
pub type Supported<T> = Result<T, &'static str>;

/// Secret labels, as given to `docker secret create --label`.
pub type Labels = Vec<(String, String)>;

/// The bound on one lookup, retries included, in every provider table.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// The providers a fixture configures, each `[providers.<name>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Good credentials, straight to the backend.
    Ok,
    /// Credentials the backend refuses.
    Unauth,
    /// Credentials the backend accepts but that may read nothing (for a
    /// backend that cannot deny one path to the [`Role::Ok`] credentials).
    Denied,
    /// A backend that accepts connections and never answers.
    Hung,
    /// Through a relay that answers 429 + Retry-After when armed.
    Throttled,
    /// Through a relay that loses the answers of non-idempotent calls.
    Lossy,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Ok,
        Role::Unauth,
        Role::Denied,
        Role::Hung,
        Role::Throttled,
        Role::Lossy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Ok => "ok",
            Role::Unauth => "unauth",
            Role::Denied => "denied",
            Role::Hung => "hung",
            Role::Throttled => "throttled",
            Role::Lossy => "lossy",
        }
    }
}

/// Labels addressing a secret on the provider of `role`.
pub fn labels(role: Role, pairs: &[(&str, &str)]) -> Labels {
    let mut all = vec![("vaultbridge.provider".to_string(), role.name().to_string())];
    all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    all
}

/// `labels` with `vaultbridge.provider` set to `provider`.
fn on(labels: &Labels, provider: &str) -> Labels {
    let mut labels = labels.clone();
    labels.retain(|(k, _)| k != "vaultbridge.provider");
    labels.push(("vaultbridge.provider".into(), provider.into()));
    labels
}

/// A seeded secret: the labels that address it, the bytes it must give.
#[derive(Debug, Clone)]
pub struct Seed {
    pub labels: Labels,
    pub value: Vec<u8>,
}

/// What a backend supplies: a running server (or double) with seeded
/// values, and how to reach it well and badly. Methods are cheap: the
/// fixture starts and seeds everything when it is made.
pub trait Fixture {
    /// The backend kind (`type = "..."`), also the name of the provider
    /// made from the environment.
    fn kind(&self) -> &'static str;

    /// The backend's keys of `[providers.<role>]` (the suite adds the
    /// policy keys), or why this backend has no such provider.
    fn table(&self, role: Role) -> Supported<String>;

    /// Variables the plugin needs besides its config file (AWS's shared
    /// credentials file); also given to `vaultbridge check`.
    fn process_env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The environment-variable form: variables that alone make a provider
    /// named [`Self::kind`] on the same backend as [`Role::Ok`].
    fn env_form(&self) -> Vec<(String, String)>;

    /// Whether the in-process run can read a value from the environment
    /// form (an SDK that reads the process environment itself cannot be
    /// pointed at the test backend without changing this process's).
    fn env_direct(&self) -> Supported<()> {
        Ok(())
    }

    /// The resolver for the direct runs, from a parsed configuration.
    fn direct(&self, rt: &Runtime, config: &Config) -> Resolver {
        rt.block_on(Resolver::from_config(config))
            .unwrap_or_else(|err| panic!("building the {} providers: {err}", self.kind()))
    }

    /// A text value.
    fn text(&self) -> Seed;
    /// A JSON object's labels (without `vaultbridge.field`), one of its
    /// keys and that key's value.
    fn json(&self) -> (Labels, String, Vec<u8>);
    /// Bytes that are not UTF-8, addressed as the backend stores binaries
    /// (raw, or base64 with `vaultbridge.decode=base64`).
    fn binary(&self) -> Seed;
    /// An older version and the latest one of one secret.
    fn versions(&self) -> Supported<[Seed; 2]>;
    /// A path where nothing is.
    fn missing(&self) -> Labels;
    /// A path the [`Role::Ok`] credentials (or those of [`Role::Denied`])
    /// may not read.
    fn denied(&self) -> Supported<Labels>;

    /// The relay in front of the [`Role::Throttled`] provider, when the
    /// backend's server cannot throttle by itself: the three methods below
    /// then need no code of the fixture's.
    fn throttle_relay(&self) -> Option<&ThrottleProxy> {
        None
    }
    /// A seeded secret whose reads [`Self::throttle`] can throttle: with a
    /// relay, [`Self::text`] read through the [`Role::Throttled`] provider.
    fn throttled(&self) -> Supported<Seed> {
        if self.throttle_relay().is_none() {
            return Err("this backend has no relay that can throttle");
        }
        let mut seed = self.text();
        seed.labels = on(&seed.labels, Role::Throttled.name());
        Ok(seed)
    }
    /// The next `count` reads of [`Self::throttled`] get 429 with
    /// `Retry-After: <retry_after_secs>`; `count` 0 disarms.
    fn throttle(&self, count: u32, retry_after_secs: u32) {
        if let Some(relay) = self.throttle_relay() {
            relay.arm(count, retry_after_secs);
        }
    }
    /// Reads of [`Self::throttled`] that reached the backend (or the relay
    /// that throttles it) so far.
    fn throttle_seen(&self) -> usize {
        self.throttle_relay().map_or(0, ThrottleProxy::seen)
    }
    /// Whether the provider reports the backend's `Retry-After` (so the
    /// plugin waits it out, or reports at once when it does not fit).
    fn retry_after_honoured(&self) -> Supported<()> {
        Ok(())
    }

    /// A call that may take effect (Vault's `logical_write_prefixes`),
    /// through [`Role::Lossy`], whose answer is always lost.
    fn non_idempotent(&self) -> Supported<Labels>;
    /// Such calls that reached the server so far.
    fn non_idempotent_seen(&self) -> usize {
        0
    }

    /// Every seeded value and every credential: never in a log line, an
    /// error or `check`'s output.
    fn never_logged(&self) -> Vec<Vec<u8>>;

    /// Stop the backend (the [`Role::Ok`] provider then finds it down).
    fn stop(&mut self) -> Supported<()>;
}

/// One way of asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// In this process, through the plugin's `Resolver`.
    Direct,
    /// The real binary: its socket, or `vaultbridge check`.
    Socket,
}

/// What one request came to.
#[derive(Debug)]
pub struct Got {
    /// The value, or the error text (Docker's `Err`, or the direct failure).
    pub result: Result<Vec<u8>, String>,
    /// The outcome word (`ok`, `not_found`, ...).
    pub outcome: String,
    pub elapsed: Duration,
}

impl Got {
    #[track_caller]
    pub fn value(&self) -> &[u8] {
        match &self.result {
            Ok(value) => value,
            Err(err) => panic!("expected a value, got Err: {err}"),
        }
    }

    /// Asserts a failure with `outcome` whose text contains each of `needles`.
    #[track_caller]
    pub fn failed(&self, outcome: &str, needles: &[&str]) -> &str {
        let err = match &self.result {
            Ok(value) => panic!("expected {outcome}, got a value of {} bytes", value.len()),
            Err(err) => err,
        };
        assert_eq!(self.outcome, outcome, "outcome of: {err}");
        for needle in needles {
            assert!(err.contains(needle), "expected {needle:?} in: {err}");
        }
        err
    }
}

/// The suite's state for one backend.
pub struct Suite<'a> {
    pub fixture: &'a mut dyn Fixture,
    rt: Runtime,
    resolver: Resolver,
    plugin: Plugin,
}

/// `[providers.<role>]` for every role the fixture has (or only `only`).
fn config_toml(fixture: &dyn Fixture, only: &[Role]) -> String {
    let mut text = String::new();
    for role in Role::ALL {
        if !only.is_empty() && !only.contains(&role) {
            continue;
        }
        if let Ok(table) = fixture.table(role) {
            text.push_str(&format!(
                "[providers.{}]\n{table}\ncache_ttl = \"0s\"\ndeadline = \"{}s\"\n\n",
                role.name(),
                DEADLINE.as_secs()
            ));
        }
    }
    // The suite appends keys after the fixture's: fixtures write nested
    // tables inline (`credential = { ... }`).
    text
}

/// None of `secrets` (values, credentials) appears in `text`.
#[track_caller]
pub fn no_secrets(text: &str, secrets: &[Vec<u8>]) {
    let refs: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    assert_log_has_no_values(text, &refs);
}

fn env_pairs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

impl<'a> Suite<'a> {
    pub fn new(fixture: &'a mut dyn Fixture) -> Suite<'a> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let toml = config_toml(fixture, &[]);
        let config = Config::parse(&toml).unwrap_or_else(|err| panic!("{err}\n{toml}"));
        let resolver = fixture.direct(&rt, &config);
        let plugin = Plugin::start(Some(&toml), &env_pairs(&fixture.process_env()));
        Suite {
            fixture,
            rt,
            resolver,
            plugin,
        }
    }

    /// Ask for secret `s` with `labels`, one way.
    pub fn ask(&self, via: Via, labels: &Labels) -> Got {
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let request = engine_request("s", &pairs);
        let started = Instant::now();
        let got = match via {
            Via::Direct => {
                let request: GetSecretRequest =
                    serde_json::from_value(request).expect("an engine request parses");
                let answer = self.rt.block_on(self.resolver.answer(&request));
                let elapsed = started.elapsed();
                match answer.result {
                    Ok(resolved) => {
                        use secrecy::ExposeSecret as _;
                        Got {
                            result: Ok(resolved.value.expose_secret().to_vec()),
                            outcome: "ok".into(),
                            elapsed,
                        }
                    }
                    Err(failure) => Got {
                        result: Err(failure.message),
                        outcome: failure.outcome.to_string(),
                        elapsed,
                    },
                }
            }
            Via::Socket => ask_plugin(&self.plugin, &request, started),
        };
        if let Err(err) = &got.result {
            no_secrets(err, &self.never_logged());
        }
        got
    }

    fn never_logged(&self) -> Vec<Vec<u8>> {
        self.fixture.never_logged()
    }

    /// The rotation controller's question for the secret `labels` name,
    /// through the provider's request policy, as `vaultbridge rotate` asks.
    pub fn current(&self, labels: &Labels) -> Result<Version, ProviderError> {
        let labels: std::collections::BTreeMap<String, String> = labels.iter().cloned().collect();
        let lookup = Lookup::from_labels("s", &labels).expect("labels parse");
        let upstream = self.resolver.route(&lookup).expect("a provider");
        self.rt.block_on(upstream.current_version(&lookup.path))
    }

    /// `vaultbridge check` on the tables of `roles`: (success, output).
    pub fn check_cli(&self, roles: &[Role]) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config_toml(&*self.fixture, roles)).expect("write config");
        let out = Command::new(crate::binary())
            .arg("check")
            .arg("--config")
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env_pairs(&self.fixture.process_env()))
            .output()
            .expect("run vaultbridge check");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        no_secrets(&text, &self.never_logged());
        (out.status.code(), text)
    }

    /// `check` of the provider of `role`, in this process.
    pub fn check_direct(&self, role: Role) -> Result<String, String> {
        let (_, provider) = self
            .resolver
            .providers()
            .find(|(name, _)| *name == role.name())
            .unwrap_or_else(|| panic!("no provider {}", role.name()));
        let result = self
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(20), provider.check()).await
            })
            .unwrap_or_else(|_| panic!("check of {} did not answer in 20 s", role.name()))
            .map_err(|err| err.to_string());
        let text = match &result {
            Ok(text) | Err(text) => text,
        };
        no_secrets(text, &self.never_logged());
        result
    }
}

/// One GetSecret over the plugin's socket; the outcome word from its log.
fn ask_plugin(plugin: &Plugin, request: &serde_json::Value, started: Instant) -> Got {
    let before = plugin.log().len();
    let answer = plugin.get_secret(request);
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 200, "log:\n{}", plugin.log());
    let log = plugin.log();
    let outcome = log
        .get(before..)
        .and_then(|lines| lines.rsplit_once("outcome="))
        .map(|(_, rest)| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default();
    let err = answer.err();
    let result = if err.is_empty() {
        Ok(answer.value())
    } else {
        Err(err)
    };
    Got {
        result,
        outcome,
        elapsed,
    }
}

/// A case: asserts by panicking, or says why the backend cannot have it.
pub type Case = fn(&Suite<'_>, Via) -> Supported<()>;

/// The cases run while the backend is up, in this order.
pub const CASES: &[(&str, Case)] = &[
    ("found", found),
    ("json_field", json_field),
    ("version", version),
    ("binary", binary),
    ("not_found", not_found),
    ("denied", denied),
    ("unauthenticated", unauthenticated),
    ("hung", hung),
    ("throttled", throttled),
    ("non_idempotent", non_idempotent),
    ("check", check),
    ("check_unauth", check_unauth),
    ("environment", environment),
    ("current_version", current_version),
];

/// The cases run after [`Fixture::stop`].
pub const DOWN_CASES: &[(&str, Case)] = &[("down", down), ("check_down", check_down)];

/// How one (case, way) ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Pass,
    Skip(&'static str),
    Fail(String),
}

/// Run every case both ways against `fixture`; prints a table; panics
/// naming each failed (case, way).
pub fn run(fixture: &mut dyn Fixture) {
    let kind = fixture.kind();
    let started = Instant::now();
    let mut results: Vec<(&str, Via, Outcome)> = Vec::new();
    let suite = Suite::new(fixture);
    let mut run_cases = |suite: &Suite<'_>, cases: &[(&'static str, Case)]| {
        for (name, case) in cases {
            for via in [Via::Direct, Via::Socket] {
                let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let result = case(suite, via);
                    // No case may put a value or credential in the log.
                    no_secrets(&suite.plugin.log(), &suite.never_logged());
                    result
                })) {
                    Ok(Ok(())) => Outcome::Pass,
                    Ok(Err(reason)) => Outcome::Skip(reason),
                    Err(panic) => Outcome::Fail(
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default(),
                    ),
                };
                results.push((name, via, outcome));
            }
        }
    };
    run_cases(&suite, CASES);
    let stopped = suite.fixture.stop();
    match stopped {
        Ok(()) => run_cases(&suite, DOWN_CASES),
        Err(reason) => {
            for (name, _) in DOWN_CASES {
                for via in [Via::Direct, Via::Socket] {
                    results.push((name, via, Outcome::Skip(reason)));
                }
            }
        }
    }
    drop(suite);

    let mut table = format!(
        "\nconformance: {kind} ({:.1} s)\n{:<16} {:<8} {}\n",
        started.elapsed().as_secs_f64(),
        "case",
        "direct",
        "socket"
    );
    let word = |o: &Outcome| match o {
        Outcome::Pass => "pass".to_string(),
        Outcome::Skip(_) => "skip".to_string(),
        Outcome::Fail(_) => "FAIL".to_string(),
    };
    let mut failed = Vec::new();
    let mut reasons = Vec::new();
    for pair in results.chunks(2) {
        let [(name, _, direct), (_, _, socket)] = pair else {
            continue;
        };
        table.push_str(&format!(
            "{name:<16} {:<8} {}\n",
            word(direct),
            word(socket)
        ));
        for (via, outcome) in [("direct", direct), ("socket", socket)] {
            match outcome {
                Outcome::Fail(message) => failed.push(format!("{kind}/{name}/{via}: {message}")),
                Outcome::Skip(reason) => {
                    let line = format!("  skipped {name}: {reason}");
                    if !reasons.contains(&line) {
                        reasons.push(line);
                    }
                }
                _ => {}
            }
        }
    }
    // Shown with --nocapture, and with the failure.
    println!("{table}{}", reasons.join("\n"));
    assert!(
        failed.is_empty(),
        "{table}\n{} conformance failure(s):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ------------------------------------------------------------------ cases

fn found(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let seed = suite.fixture.text();
    let got = suite.ask(via, &seed.labels);
    assert_eq!(got.value(), seed.value.as_slice());
    assert_eq!(got.outcome, "ok");
    Ok(())
}

fn json_field(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let (mut labels, field, expected) = suite.fixture.json();
    // The whole value is the JSON object.
    let whole = suite.ask(via, &labels);
    let object: serde_json::Value =
        serde_json::from_slice(whole.value()).expect("the whole value is JSON");
    assert!(object.get(&field).is_some(), "no key {field} in the object");
    labels.push(("vaultbridge.field".into(), field.clone()));
    let got = suite.ask(via, &labels);
    assert_eq!(got.value(), expected.as_slice());
    // A key that is not there: a clear error that quotes no value.
    labels.retain(|(k, _)| k != "vaultbridge.field");
    labels.push(("vaultbridge.field".into(), "no-such-key".into()));
    suite
        .ask(via, &labels)
        .failed("bad_value", &["no key 'no-such-key'"]);
    Ok(())
}

fn version(suite: &Suite<'_>, via: Via) -> Supported<()> {
    match suite.fixture.versions() {
        Ok([older, latest]) => {
            assert_eq!(
                suite.ask(via, &older.labels).value(),
                older.value.as_slice()
            );
            assert_eq!(
                suite.ask(via, &latest.labels).value(),
                latest.value.as_slice()
            );
            Ok(())
        }
        Err(reason) => {
            // No versions: a version label is refused, never ignored.
            let mut labels = suite.fixture.text().labels;
            labels.push(("vaultbridge.version".into(), "1".into()));
            suite.ask(via, &labels).failed("bad_labels", &["version"]);
            Err(reason)
        }
    }
}

/// The rotation controller's question: the current version, told without
/// the value and stable while nothing changes; its pin reads the latest
/// value; a miss and a denial are sorted as for a read.
fn current_version(suite: &Suite<'_>, via: Via) -> Supported<()> {
    if via == Via::Socket {
        return Err("the rotation controller asks backends directly: there is no socket form");
    }
    let seed = suite.fixture.text();
    let current = match suite.current(&seed.labels) {
        Err(ProviderError::Invalid(message)) if message.contains("cannot be rotated") => {
            return Err("this backend cannot tell a secret's version (no rotation)");
        }
        other => other.expect("the current version"),
    };
    assert!(!current.id.is_empty(), "an empty change stamp");
    no_secrets(&format!("{current:?}"), &suite.never_logged());
    assert_eq!(
        suite.current(&seed.labels).expect("asked again").id,
        current.id,
        "nothing changed, yet the change stamp did"
    );
    let pinned = |labels: &Labels, pin: &str| {
        let mut labels = labels.clone();
        labels.push(("vaultbridge.version".into(), pin.to_string()));
        suite.ask(via, &labels)
    };
    if let Some(pin) = &current.pin {
        assert_eq!(pinned(&seed.labels, pin).value(), seed.value.as_slice());
    }
    if let Ok([older, latest]) = suite.fixture.versions() {
        let now = suite.current(&latest.labels).expect("the current version");
        let pin = now.pin.expect("a backend with versions pins one");
        assert_eq!(
            pinned(&latest.labels, &pin).value(),
            latest.value.as_slice()
        );
        assert_ne!(pinned(&latest.labels, &pin).value(), older.value.as_slice());
    }
    match suite.current(&suite.fixture.missing()) {
        Err(ProviderError::NotFound(_)) => {}
        other => panic!("a missing secret's version: {other:?}"),
    }
    if let Ok(denied) = suite.fixture.denied() {
        match suite.current(&denied) {
            Err(ProviderError::Denied(message)) => no_secrets(&message, &suite.never_logged()),
            other => panic!("a denied secret's version: {other:?}"),
        }
    }
    Ok(())
}

fn binary(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let seed = suite.fixture.binary();
    assert!(
        std::str::from_utf8(&seed.value).is_err(),
        "the binary seed must not be UTF-8"
    );
    assert_eq!(suite.ask(via, &seed.labels).value(), seed.value.as_slice());
    Ok(())
}

fn not_found(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let got = suite.ask(via, &suite.fixture.missing());
    got.failed("not_found", &["not found"]);
    assert!(got.elapsed < Duration::from_secs(2), "{:?}", got.elapsed);
    Ok(())
}

fn denied(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let labels = suite.fixture.denied()?;
    let got = suite.ask(via, &labels);
    got.failed("denied", &["access denied"]);
    // Not retried: asking again cannot help.
    assert!(got.elapsed < Duration::from_secs(2), "{:?}", got.elapsed);
    Ok(())
}

fn unauthenticated(suite: &Suite<'_>, via: Via) -> Supported<()> {
    suite.fixture.table(Role::Unauth)?;
    let labels = on(&suite.fixture.text().labels, Role::Unauth.name());
    let got = suite.ask(via, &labels);
    got.failed("unauthenticated", &["authentication failed"]);
    Ok(())
}

fn hung(suite: &Suite<'_>, via: Via) -> Supported<()> {
    suite.fixture.table(Role::Hung)?;
    let labels = on(&suite.fixture.text().labels, Role::Hung.name());
    let got = suite.ask(via, &labels);
    got.failed("unavailable", &["backend unavailable"]);
    assert!(
        got.elapsed >= DEADLINE - Duration::from_millis(100)
            && got.elapsed < DEADLINE + Duration::from_secs(2),
        "cut off at the deadline, not {:?}",
        got.elapsed
    );
    Ok(())
}

fn throttled(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let fixture = &*suite.fixture;
    let seed = fixture.throttled()?;
    // One 429 with a Retry-After that fits in the deadline: waited out,
    // then the second attempt succeeds.
    fixture.throttle(1, 1);
    let seen = fixture.throttle_seen();
    let got = suite.ask(via, &seed.labels);
    fixture.throttle(0, 0);
    assert_eq!(got.value(), seed.value.as_slice());
    assert_eq!(fixture.throttle_seen() - seen, 2, "attempts at the backend");
    let honoured = fixture.retry_after_honoured();
    if honoured.is_ok() {
        assert!(
            got.elapsed >= Duration::from_millis(950),
            "asked again before Retry-After: {:?}",
            got.elapsed
        );
    }

    // A Retry-After past the deadline: reported at once, one attempt.
    fixture.throttle(1000, 30);
    let seen = fixture.throttle_seen();
    let got = suite.ask(via, &seed.labels);
    fixture.throttle(0, 0);
    let attempts = fixture.throttle_seen() - seen;
    match honoured {
        Ok(()) => {
            got.failed("unavailable", &["Retry-After", "1 attempt(s)"]);
            assert_eq!(attempts, 1, "attempts at the backend");
            assert!(
                got.elapsed < Duration::from_millis(1500),
                "{:?}",
                got.elapsed
            );
            Ok(())
        }
        Err(reason) => {
            // Throttling is still transient: retried with backoff until
            // the deadline, then reported as unavailable.
            got.failed("unavailable", &["backend unavailable"]);
            assert!(attempts >= 2, "a throttled read is retried ({attempts})");
            Err(reason)
        }
    }
}

fn non_idempotent(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let labels = suite.fixture.non_idempotent()?;
    let seen = suite.fixture.non_idempotent_seen();
    let got = suite.ask(via, &labels);
    got.failed("unavailable", &["backend unavailable"]);
    assert_eq!(
        suite.fixture.non_idempotent_seen() - seen,
        1,
        "a call that may have taken effect was sent again"
    );
    Ok(())
}

fn check(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let kind = suite.fixture.kind();
    match via {
        Via::Direct => {
            suite
                .check_direct(Role::Ok)
                .expect("check of a good provider");
        }
        Via::Socket => {
            let (code, out) = suite.check_cli(&[Role::Ok]);
            assert_eq!(code, Some(0), "{out}");
            assert!(out.contains(&format!("ok    ok ({kind})")), "{out}");
        }
    }
    Ok(())
}

fn check_unauth(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let kind = suite.fixture.kind();
    suite.fixture.table(Role::Unauth)?;
    match via {
        Via::Direct => {
            let err = suite
                .check_direct(Role::Unauth)
                .expect_err("check of refused credentials");
            assert!(err.contains("authentication failed"), "{err}");
        }
        Via::Socket => {
            let (code, out) = suite.check_cli(&[Role::Unauth]);
            assert_eq!(code, Some(1), "{out}");
            assert!(out.contains(&format!("FAIL  unauth ({kind})")), "{out}");
            assert!(out.contains("authentication failed"), "{out}");
        }
    }
    Ok(())
}

fn environment(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let kind = suite.fixture.kind();
    let env = suite.fixture.env_form();
    let seed = suite.fixture.text();
    let labels = on(&seed.labels, kind);
    match via {
        Via::Direct => {
            let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            let (config, source) =
                Config::load(None, &lookup).expect("config from the environment");
            assert_eq!(source, Source::Environment);
            assert_eq!(config.names(), vec![kind]);
            suite.fixture.env_direct()?;
            let resolver = suite.fixture.direct(&suite.rt, &config);
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let request: GetSecretRequest =
                serde_json::from_value(engine_request("s", &pairs)).expect("request");
            let answer = suite.rt.block_on(resolver.answer(&request));
            use secrecy::ExposeSecret as _;
            match answer.result {
                Ok(resolved) => assert_eq!(resolved.value.expose_secret(), seed.value.as_slice()),
                Err(failure) => panic!("{}: {}", failure.outcome, failure.message),
            }
        }
        Via::Socket => {
            let plugin = Plugin::start(None, &env_pairs(&env));
            let pairs: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let got = ask_plugin(&plugin, &engine_request("s", &pairs), Instant::now());
            assert_eq!(got.value(), seed.value.as_slice(), "log:\n{}", plugin.log());
            assert!(
                plugin.log().contains("config=environment variables"),
                "{}",
                plugin.log()
            );
            no_secrets(&plugin.log(), &suite.never_logged());
        }
    }
    Ok(())
}

fn down(suite: &Suite<'_>, via: Via) -> Supported<()> {
    let got = suite.ask(via, &suite.fixture.text().labels);
    got.failed("unavailable", &["backend unavailable"]);
    assert!(
        got.elapsed < DEADLINE + Duration::from_secs(2),
        "{:?}",
        got.elapsed
    );
    Ok(())
}

fn check_down(suite: &Suite<'_>, via: Via) -> Supported<()> {
    match via {
        Via::Direct => {
            let err = suite
                .check_direct(Role::Ok)
                .expect_err("check of a stopped backend");
            assert!(err.contains("backend unavailable"), "{err}");
        }
        Via::Socket => {
            let (code, out) = suite.check_cli(&[Role::Ok]);
            assert_eq!(code, Some(1), "{out}");
            assert!(out.contains("FAIL  ok"), "{out}");
            assert!(out.contains("backend unavailable"), "{out}");
        }
    }
    Ok(())
}
