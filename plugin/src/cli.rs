//! The `vaultbridge` command line: `serve` (what Docker runs), and `check`
//! and `get` for operators debugging a configuration.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::FutureExt as _;
use secrecy::ExposeSecret;

use crate::audit::Audit;
use crate::config::{Config, Source};
use crate::log_format::{CachedTime, PlainFields, PlainFormat};
use crate::log_writer;
use crate::metrics;
use crate::metrics_listener;
use crate::protocol::{GetSecretRequest, owned_labels};
use crate::resolve::Resolver;
use crate::rotate;
use crate::server;
use crate::stack::{self, Check};
use vaultbridge_providers::text::shown;

/// What the managed-plugin manifest names: `/run/docker/plugins/<socket>`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/vaultbridge.sock";

/// How long `check` waits for one provider.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Parser)]
#[command(
    name = "vaultbridge",
    version,
    about = "A Docker secrets driver for Vault/OpenBao, AWS Secrets Manager, Azure Key Vault and files"
)]
pub struct Cli {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VAULTBRIDGE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Threads serving requests (1-64). One answers about 100,000 cached
    /// secrets a second on one core; a second one costs more in hand-overs
    /// between threads than it adds (BENCHMARKS.md), and leaves the
    /// manager's other cores to the engine.
    #[arg(long, global = true, default_value_t = 1, env = "VAULTBRIDGE_WORKER_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Docker's secret-provider protocol on a Unix socket.
    Serve {
        #[arg(long, default_value = DEFAULT_SOCKET, env = "VAULTBRIDGE_SOCKET")]
        socket: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        /// Seconds in-flight requests may take to finish after SIGTERM (0-300).
        #[arg(long, default_value_t = server::DEFAULT_GRACE.as_secs(),
              value_parser = clap::value_parser!(u64).range(0..=300))]
        grace_period: u64,
    },
    /// Validate the configuration and check every provider is reachable; with
    /// --stack, resolve a stack file's secrets as the plugin would after
    /// `docker stack deploy`, printing sizes, never values.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// A compose file, as given to `docker stack deploy -c FILE`.
        #[arg(long, value_name = "FILE", requires = "stack_name")]
        stack: Option<PathBuf>,
        /// The stack's name, as given to `docker stack deploy -c FILE NAME`.
        #[arg(long, value_name = "NAME", requires = "stack", value_parser = stack::parse_stack_name)]
        stack_name: Option<String>,
        /// The plugin's name in the stack file's `driver:` (as installed, or
        /// its `--alias`); repeatable. `NAME` and `NAME:latest` are one.
        #[arg(long = "driver", value_name = "NAME", default_value = "vaultbridge")]
        drivers: Vec<String>,
    },
    /// Resolve one secret exactly as the plugin would for the service
    /// described (access policy and default_path included); the value goes
    /// to stdout.
    Get {
        #[command(flatten)]
        config: ConfigArg,
        /// A secret label, as given to `docker secret create --label` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[command(flatten)]
        caller: CallerArgs,
        /// The Docker secret's name.
        name: String,
    },
    /// The rotation controller: when a watched secret's backend value
    /// changes (`--label vaultbridge.rotate=true`), roll every service that
    /// uses it onto a new secret object pinned to the new version. Runs as
    /// a service on a manager with the Docker socket (docs/rotation.md).
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        /// One pass: roll what changed, wait for those rolls, remove the
        /// secrets they replaced, exit (non-zero if anything failed).
        #[arg(long)]
        once: bool,
        /// List what would roll, and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The plugin's name, as installed or its `--alias`; repeatable.
        #[arg(long = "driver", value_name = "NAME", default_value = "vaultbridge")]
        drivers: Vec<String>,
        /// How long a roll it started is followed (with --once: waited for)
        /// before it is reported as not ended.
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        roll_timeout: Duration,
    },
}

/// The asking service, as the engine would describe it.
#[derive(Debug, Args)]
pub struct CallerArgs {
    /// The service's name.
    #[arg(long = "service", value_name = "NAME")]
    pub service: Option<String>,
    /// A service label (repeatable).
    #[arg(long = "service-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub service_labels: Vec<(String, String)>,
    /// The task's image, as in the service spec (`repo:tag@sha256:...`).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The service's stack; the secret too when its name starts `<stack>_`,
    /// as `docker stack deploy` creates them.
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
}

impl CallerArgs {
    /// The GetSecret request the engine would send for secret `name`.
    fn request(self, name: String, labels: Vec<(String, String)>) -> GetSecretRequest<'static> {
        let mut request = GetSecretRequest {
            secret_labels: owned_labels(labels),
            service_name: self.service.unwrap_or_default().into(),
            service_labels: owned_labels(self.service_labels),
            task_image: self.image.unwrap_or_default().into(),
            ..GetSecretRequest::default()
        };
        if let Some(stack) = self.stack {
            let namespace = Cow::Borrowed(crate::labels::STACK_NAMESPACE);
            if name.starts_with(&format!("{stack}_")) {
                request
                    .secret_labels
                    .entry(namespace.clone())
                    .or_insert_with(|| stack.clone().into());
            }
            request.service_labels.insert(namespace, stack.into());
        }
        request.secret_name = name.into();
        request
    }
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// TOML configuration file (default: /etc/vaultbridge/config.toml when it
    /// exists, else standard environment variables, else the file provider).
    #[arg(long = "config", env = "VAULTBRIDGE_CONFIG")]
    pub path: Option<PathBuf>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

/// Log filtering: the operator's `VAULTBRIDGE_LOG` directives, AND a cap on
/// every target that is not ours.
///
/// The README promises no credential in the log at any level, but the SDKs
/// and HTTP clients we embed log credentials at their verbose levels: the
/// AWS SDK logs the session token and the SigV4 `Authorization` header at
/// trace and the access key id at info/debug, vaultrs logs login request
/// bodies at trace, hyper/h2/reqwest log headers. So a third-party event
/// more verbose than its cap is dropped whatever the directives say
/// (`trace`, `aws_smithy_runtime=trace`, ...): the cap is a second filter
/// that must also pass, so no directive can raise it. Our own targets
/// (`vaultbridge`, `vaultbridge_*`) keep the operator's level.
pub fn init_logging(format: LogFormat, command: &Command) -> Option<log_writer::Flush> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let directives = std::env::var("VAULTBRIDGE_LOG").ok();
    // `serve` writes one line per request: through the queue, so that no
    // request waits for stderr (see `log_writer`). The other commands write
    // a few lines, in order with what they print: straight to stderr.
    let queued = match command {
        Command::Serve { .. } => log_writer::start(std::io::stderr(), |dropped| {
            tracing::warn!(
                dropped,
                "log lines were dropped: stderr did not keep up (counted in vaultbridge_log_lines_dropped_total)"
            );
        })
        .ok(),
        _ => None,
    };
    let (queue, flush) = queued.unzip();
    let output = queue.map_or(log_writer::Output::Stderr, log_writer::Output::Queued);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_timer(CachedTime);
    let fmt = match format {
        LogFormat::Text => fmt
            .fmt_fields(PlainFields)
            .event_format(PlainFormat::new(CachedTime))
            .with_writer(output)
            .boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_writer(output).boxed(),
    };
    // `init` also routes the `log` crate's records (rustls, ...) through the
    // same filter, by their own targets.
    tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter(directives.as_deref())))
        .init();
    // Shown only to an operator who asked for debug: why SDK lines are missing.
    tracing::debug!(
        "logging: other crates' lines are capped (aws_* at warn, the rest at info) \
         whatever VAULTBRIDGE_LOG says, as they can carry credentials"
    );
    flush
}

/// Caps of third-party targets, first matching prefix wins (read from what
/// each crate logs at each level; see [`init_logging`]).
const THIRD_PARTY_CAPS: &[(&str, tracing::Level)] = &[
    // Its warnings quote the container credentials' auth token when that is
    // not a valid header value.
    ("aws_config::ecs", tracing::Level::ERROR),
    // info: the Credentials' Debug (access key id) when loaded and cached;
    // debug: canonical requests and identities; trace: every header,
    // including `x-amz-security-token` and `Authorization`.
    ("aws_", tracing::Level::WARN),
];
/// Every other crate (hyper, hyper_util, h2, reqwest, rustls, tower, tokio,
/// azure_*, typespec*, vaultrs, rustify, ...): their info lines are
/// lifecycle messages; their debug/trace carry headers, bodies and URLs.
const DEFAULT_THIRD_PARTY_CAP: tracing::Level = tracing::Level::INFO;

fn is_ours(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or_default();
    krate == "vaultbridge" || krate.starts_with("vaultbridge_")
}

/// The most verbose level allowed for `target`; `None`: ours, uncapped.
fn cap_of(target: &str) -> Option<tracing::Level> {
    if is_ours(target) {
        return None;
    }
    let cap = THIRD_PARTY_CAPS
        .iter()
        .find(|(prefix, _)| target.starts_with(prefix))
        .map_or(DEFAULT_THIRD_PARTY_CAP, |(_, cap)| *cap);
    Some(cap)
}

fn within_cap(metadata: &tracing::Metadata<'_>) -> bool {
    // A Level compares greater when it is more verbose.
    cap_of(metadata.target()).is_none_or(|cap| *metadata.level() <= cap)
}

/// The operator's directives (unset, empty or unparsable: `info`, since an
/// empty filter would hide errors too) and the third-party caps.
fn log_filter<S>(directives: Option<&str>) -> impl tracing_subscriber::layer::Filter<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt as _;
    let operator = directives
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let caps: fn(&tracing::Metadata<'_>) -> bool = within_cap;
    operator.and(tracing_subscriber::filter::filter_fn(caps))
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn load(config: &ConfigArg) -> Result<(Resolver, Source), String> {
    let (resolver, source, _) = load_config(config).await?;
    Ok((resolver, source))
}

/// What `serve` needs besides the resolver.
struct Serving {
    source: Source,
    audit: Option<Audit>,
    metrics_listen: Option<std::net::SocketAddr>,
}

/// [`load`], and the audit sink opened (only the server writes the trail).
async fn load_for_serve(config: &ConfigArg) -> Result<(Resolver, Serving), String> {
    let (resolver, source, config) = load_config(config).await?;
    let audit = config
        .audit
        .as_ref()
        .map(Audit::open)
        .transpose()
        .map_err(|err| format!("configuration error ({source}): {err}"))?;
    let serving = Serving {
        source,
        audit,
        metrics_listen: config.metrics_listen,
    };
    Ok((resolver, serving))
}

async fn load_config(config: &ConfigArg) -> Result<(Resolver, Source, Config), String> {
    let (config, source) = Config::load(config.path.as_deref(), &process_env)
        .map_err(|err| format!("configuration error: {err}"))?;
    let resolver = Resolver::from_config(&config)
        .await
        .map_err(|err| format!("configuration error ({source}): {err}"))?;
    Ok((resolver, source, config))
}

/// Without a policy: that every service reads every path its labels name
/// (said once, at start: it is the default, not a mistake).
pub const NO_POLICY: &str = "no [access] policy: every service may read every path the providers' credentials allow (see docs/access.md)";

/// The policy's rules that never decide, one warning each; how many.
fn warn_findings(resolver: &Resolver, mut warn: impl FnMut(&str)) -> usize {
    let findings = resolver.policy().map(|p| p.findings()).unwrap_or_default();
    for finding in &findings {
        warn(finding);
    }
    findings.len()
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            socket,
            config,
            grace_period,
        } => serve(socket, config, Duration::from_secs(grace_period)).await,
        Command::Check {
            config,
            stack: Some(file),
            stack_name: Some(name),
            drivers,
        } => check_stack(config, file, name, drivers).await,
        Command::Check { config, .. } => check(config).await,
        Command::Get {
            config,
            labels,
            caller,
            name,
        } => get(config, caller.request(name, labels)).await,
        Command::Rotate {
            config,
            once,
            dry_run,
            drivers,
            roll_timeout,
        } => {
            let options = rotate::Options {
                once: once || dry_run,
                dry_run,
                drivers,
                roll_timeout,
            };
            rotate(config, options).await
        }
    }
}

async fn rotate(config: ConfigArg, options: rotate::Options) -> ExitCode {
    let (resolver, source) = match load(&config).await {
        Ok(loaded) => loaded,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let once = options.once;
    let controller = match rotate::Controller::connect(resolver, options).await {
        Ok(controller) => controller,
        Err(message) => {
            tracing::error!("{}", shown(&message));
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %source, once, "rotation controller started");
    if once {
        return if controller.once().await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    controller.run(shutdown_signal()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn serve(socket: PathBuf, config: ConfigArg, grace: Duration) -> ExitCode {
    let (resolver, serving) = match load_for_serve(&config).await {
        Ok(loaded) => loaded,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let Serving {
        source,
        audit,
        metrics_listen,
    } = serving;
    // Before the socket: a plugin that cannot serve what it was told to
    // fails to enable, with the reason in its log.
    let metrics_listener = match metrics_listen {
        Some(addr) => match metrics_listener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(err) => {
                tracing::error!("configuration error ({source}): {err}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if matches!(source, Source::File(_)) && process_env("VAULTBRIDGE_METRICS_LISTEN").is_some() {
        tracing::warn!(
            "VAULTBRIDGE_METRICS_LISTEN is ignored: the configuration comes from a file, which says metrics_listen instead"
        );
    }
    let listener = match server::bind(&socket) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let providers: Vec<String> = resolver
        .providers()
        .map(|(name, p)| format!("{name} ({})", p.kind()))
        .collect();
    tracing::info!(
        socket = %socket.display(),
        config = %source,
        providers = %providers.join(", "),
        version = env!("CARGO_PKG_VERSION"),
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "vaultbridge listening"
    );
    if source == Source::Nothing {
        // Once here; each request answers the same, and logs its own line.
        tracing::warn!("{}", crate::config::NOT_CONFIGURED);
    } else {
        if resolver.policy().is_none() {
            tracing::info!("{NO_POLICY}");
        }
        warn_findings(&resolver, |line| tracing::warn!("{line}"));
    }
    let resolver = Arc::new(resolver);
    let shutdown = shutdown_signal().shared();
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(address = %addr, "metrics listener: /metrics, /healthz, /readyz");
        }
        // Readiness means something only if someone can ask: checks only then.
        let checked = resolver
            .providers()
            .filter_map(|(name, provider)| {
                let counted = resolver.metrics().provider(name)?;
                Some((provider.clone(), counted.clone()))
            })
            .collect();
        tokio::spawn(metrics::health::keep_checking(checked));
        let app = metrics_listener::app(resolver.clone());
        tokio::spawn(metrics_listener::run(listener, app, shutdown.clone()));
    }
    let app = server::routes(resolver, audit.map(Arc::new));
    // `run` cannot fail once bound: accept errors are logged and retried.
    server::run(listener, app, shutdown, grace).await;
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGTERM (what Docker sends on disable) or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!("cannot listen for SIGTERM: {err}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The configuration for `check`: said on stdout, or why there is none
/// usable on stderr with exit code 2 (also when nothing is configured).
async fn load_for_check(
    config: &ConfigArg,
) -> Result<(Resolver, Option<crate::audit::AuditConfig>), ExitCode> {
    let (resolver, source, config) = load_config(config).await.map_err(|message| {
        eprintln!("{message}");
        ExitCode::from(2)
    })?;
    if source == Source::Nothing {
        eprintln!("{}", crate::config::NOT_CONFIGURED);
        return Err(ExitCode::from(2));
    }
    println!("configuration: {source}");
    Ok((resolver, config.audit))
}

async fn check(config: ConfigArg) -> ExitCode {
    let (resolver, audit) = match load_for_check(&config).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut failed = 0;
    // Where the trail goes; a file's folder must exist (not created here:
    // `check` writes nothing), or the plugin would not start.
    match audit.as_ref().map(|a| (a.sink, a.path.as_deref())) {
        None => println!("audit: none"),
        Some((crate::audit::SinkKind::File, Some(path))) => {
            let folder = path.parent().unwrap_or(path);
            if folder.is_dir() {
                println!("audit: file {}", path.display());
            } else {
                failed += 1;
                println!(
                    "FAIL  audit: the folder {} of audit.path does not exist (for the managed plugin: set its audit mount)",
                    folder.display()
                );
            }
        }
        Some(_) => println!("audit: stdout"),
    }
    match resolver.policy() {
        Some(policy) => println!("access: {}", policy.summary()),
        None => println!("access: no policy"),
    }
    // A policy whose rules never decide is a mistake to fix before it matters.
    failed += warn_findings(&resolver, |line| println!("WARN  {line}"));
    // Compiled and their lookups checked when the configuration loaded.
    for template in resolver.templates().iter() {
        let lookups: Vec<String> = template
            .plan()
            .inputs
            .iter()
            .map(crate::template::describe_lookup)
            .collect();
        println!(
            "template {}: {} lookup(s): {}",
            template.name(),
            lookups.len(),
            lookups.join("; ")
        );
        if let Some(stopped) = template.stopped() {
            println!(
                "note  template {}: without values it stops at {stopped}; a lookup after that is refused",
                template.name()
            );
        }
    }
    for (name, provider) in resolver.providers() {
        let result = tokio::time::timeout(CHECK_TIMEOUT, provider.check()).await;
        match result {
            Ok(Ok(detail)) => println!("ok    {name} ({}): {detail}", provider.kind()),
            Ok(Err(err)) => {
                failed += 1;
                println!("FAIL  {name} ({}): {err}", provider.kind());
            }
            Err(_) => {
                failed += 1;
                println!(
                    "FAIL  {name} ({}): no answer within {}s",
                    provider.kind(),
                    CHECK_TIMEOUT.as_secs()
                );
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Resolve every vaultbridge secret of a stack file through the server's
/// own pipeline; 0: all resolve, 1: one does not, 2: the file or the
/// configuration is unusable.
async fn check_stack(
    config: ConfigArg,
    file: PathBuf,
    stack_name: String,
    drivers: Vec<String>,
) -> ExitCode {
    let secrets = match stack::load(&file, &stack_name, &drivers, &process_env) {
        Ok(secrets) => secrets,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let resolver = match load_for_check(&config).await {
        Ok((resolver, _)) => resolver,
        Err(code) => return code,
    };
    let (mut ok, mut failed, mut skipped) = (0, 0, 0);
    for secret in &secrets {
        let name = shown(&secret.name);
        let unused = if secret.services.is_empty() {
            " (unused)"
        } else {
            ""
        };
        let requests = match &secret.check {
            Check::Resolve(requests) => requests,
            Check::Skip(reason) => {
                skipped += 1;
                println!("skip  {name}{unused}: {reason}");
                continue;
            }
        };
        for request in requests {
            // Which service asks, when several do (the policy may differ).
            let asking = if requests.len() > 1 {
                format!(" for {}", shown(&request.service_name))
            } else {
                String::new()
            };
            // Each provider call has its configured deadline.
            let answer = resolver.answer(request).await;
            match answer.result {
                Ok(resolved) => {
                    ok += 1;
                    let source = match &answer.template {
                        Some(template) => {
                            format!("template {template}, {} lookup(s)", answer.inputs.len())
                        }
                        None => format!(
                            "{}, {}",
                            answer.provider.as_deref().unwrap_or("-"),
                            answer.path.as_deref().unwrap_or("-")
                        ),
                    };
                    let bytes = resolved.value.expose_secret().len();
                    let per_task = if resolved.per_task { ", per task" } else { "" };
                    println!("ok    {name}{asking} ({source}): {bytes} bytes{per_task}{unused}");
                }
                Err(failure) => {
                    failed += 1;
                    println!("FAIL  {name}{asking}{unused}: {}", failure.message);
                }
            }
        }
    }
    println!("{ok} ok, {failed} failed, {skipped} skipped");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn get(config: ConfigArg, request: GetSecretRequest<'static>) -> ExitCode {
    let (resolver, _) = match load(&config).await {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let result = resolver.answer(&request).await.result;
    match result {
        Ok(resolved) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(resolved.value.expose_secret())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            if resolved.per_task {
                eprintln!("note: this value is per task (DoNotReuse: true)");
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            let name = shown(&request.secret_name);
            eprintln!("secret '{name}': {}", failure.message);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// What `directives` let through of one event per (target, level).
    fn logged(directives: Option<&str>) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(log_filter(directives));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            // `target:` must be a constant: one line per case.
            tracing::trace!(target: "vaultbridge::server", "ours-trace");
            tracing::debug!(target: "vaultbridge_providers::aws", "ours-debug");
            tracing::trace!(target: "aws_sigv4::http_request::sign", "sigv4-trace");
            tracing::info!(target: "aws_config::profile::credentials", "aws-info");
            tracing::warn!(target: "aws_smithy_runtime::client", "aws-warn");
            tracing::warn!(target: "aws_config::ecs", "ecs-warn");
            tracing::error!(target: "aws_config::ecs", "ecs-error");
            tracing::trace!(target: "hyper::proto::h1", "hyper-trace");
            tracing::debug!(target: "reqwest::connect", "reqwest-debug");
            tracing::info!(target: "typespec_client_core::http", "typespec-info");
            tracing::debug!(target: "vaultrs::api", "vaultrs-debug");
            // A crate we did not list is capped too.
            tracing::debug!(target: "some_new_dependency", "unknown-debug");
            // Not ours, though the name starts the same.
            tracing::debug!(target: "vaultbridgex", "lookalike-debug");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn third_party_targets_are_capped_whatever_the_directives() {
        let always = ["aws-warn", "ecs-error"];
        let never = [
            "sigv4-trace",
            "aws-info",
            "ecs-warn",
            "hyper-trace",
            "reqwest-debug",
            "vaultrs-debug",
            "unknown-debug",
            "lookalike-debug",
        ];
        for directives in [
            "trace",
            "aws_smithy_runtime=trace,aws_sigv4=trace,aws_config=trace",
            "trace,hyper=trace,reqwest=trace,vaultrs=trace",
            "info,[{x}]=trace,some_new_dependency=trace,vaultbridgex=trace",
        ] {
            let log = logged(Some(directives));
            for line in always {
                assert!(log.contains(line), "{directives}: {line} missing:\n{log}");
            }
            for line in never {
                assert!(!log.contains(line), "{directives}: {line} logged:\n{log}");
            }
        }
        // Ours keep the operator's level; info-level third-party lines pass.
        let log = logged(Some("trace"));
        for line in ["ours-trace", "ours-debug", "typespec-info"] {
            assert!(log.contains(line), "{line} missing:\n{log}");
        }
        let log = logged(Some("vaultbridge=debug,warn"));
        assert!(
            log.contains("ours-debug") && !log.contains("ours-trace"),
            "{log}"
        );
        assert!(!log.contains("typespec-info"), "{log}");
    }

    #[test]
    fn unset_empty_or_bad_directives_mean_info() {
        for directives in [None, Some(""), Some("  "), Some("=[bad")] {
            let log = logged(directives);
            assert!(log.contains("typespec-info"), "{directives:?}:\n{log}");
            assert!(log.contains("aws-warn"), "{directives:?}:\n{log}");
            assert!(!log.contains("ours-debug"), "{directives:?}:\n{log}");
        }
    }

    #[test]
    fn ours_is_the_vaultbridge_crates_only() {
        assert_eq!(cap_of("vaultbridge"), None);
        assert_eq!(cap_of("vaultbridge::cli"), None);
        assert_eq!(cap_of("vaultbridge_providers::vault::auth"), None);
        assert_eq!(cap_of("aws_config::ecs"), Some(tracing::Level::ERROR));
        assert_eq!(cap_of("aws_sigv4"), Some(tracing::Level::WARN));
        assert_eq!(cap_of("h2::codec"), Some(tracing::Level::INFO));
        assert_eq!(cap_of("log"), Some(tracing::Level::INFO));
    }
}
