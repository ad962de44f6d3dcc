//! The `vaultbridge` command line: `serve` (what Docker runs), and `check`
//! and `get` for operators debugging a configuration.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;

use crate::config::{Config, Source};
use crate::labels::Lookup;
use crate::resolve::Resolver;
use crate::server;

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
    /// Validate the configuration and check every provider is reachable.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Resolve one secret exactly as the plugin would; the value goes to stdout.
    Get {
        #[command(flatten)]
        config: ConfigArg,
        /// A secret label, as given to `docker secret create --label` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The Docker secret's name.
        name: String,
    },
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

pub fn init_logging(format: LogFormat) {
    // Unset, empty or unparsable: `info` (an empty filter would hide errors too).
    let filter = std::env::var("VAULTBRIDGE_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

async fn load(config: &ConfigArg) -> Result<(Resolver, Source), String> {
    let (config, source) = Config::load(config.path.as_deref(), &process_env)
        .map_err(|err| format!("configuration error: {err}"))?;
    let resolver = Resolver::from_config(&config)
        .await
        .map_err(|err| format!("configuration error ({source}): {err}"))?;
    Ok((resolver, source))
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve {
            socket,
            config,
            grace_period,
        } => serve(socket, config, Duration::from_secs(grace_period)).await,
        Command::Check { config } => check(config).await,
        Command::Get {
            config,
            labels,
            name,
        } => get(config, labels, name).await,
    }
}

async fn serve(socket: PathBuf, config: ConfigArg, grace: Duration) -> ExitCode {
    let (resolver, source) = match load(&config).await {
        Ok(loaded) => loaded,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::FAILURE;
        }
    };
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
        "vaultbridge listening"
    );
    let app = server::app(Arc::new(resolver));
    // `run` cannot fail once bound: accept errors are logged and retried.
    server::run(listener, app, shutdown_signal(), grace).await;
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

async fn check(config: ConfigArg) -> ExitCode {
    let (resolver, source) = match load(&config).await {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    println!("configuration: {source}");
    let mut failed = 0;
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

async fn get(config: ConfigArg, labels: Vec<(String, String)>, name: String) -> ExitCode {
    let (resolver, _) = match load(&config).await {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let labels: BTreeMap<String, String> = labels.into_iter().collect();
    let result = match Lookup::from_labels(&name, &labels) {
        Ok(lookup) => match resolver.route(&lookup) {
            Ok(upstream) => resolver
                .resolve(upstream, &lookup)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        },
        Err(err) => Err(err.to_string()),
    };
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
        Err(message) => {
            eprintln!("secret '{name}': {message}");
            ExitCode::FAILURE
        }
    }
}
