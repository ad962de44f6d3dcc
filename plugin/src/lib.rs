//! vaultbridge: a Docker secrets-driver plugin.
//!
//! When Swarm schedules a task that uses a secret created with
//! `--driver vaultbridge`, the leader manager POSTs the secret's name and
//! labels to this plugin's Unix socket; we look the value up in a backend
//! and answer with its bytes, which Docker mounts at `/run/secrets/<name>`.
//!
//! The map of the crate, in the order a request travels:
//! - [`server`]: the socket, the routes, graceful shutdown, errors as `{"Err"}`.
//! - [`protocol`]: the JSON Docker sends and expects.
//! - [`labels`]: `vaultbridge.*` labels -> a [`labels::Lookup`].
//! - [`resolve`]: route a lookup to a provider, pick a field, decode, check size.
//! - [`template`]: `vaultbridge.template`: one file rendered from several lookups.
//! - [`access`]: the access policy (which service may read which paths).
//! - [`audit`]: one record per decision, to its own sink.
//! - [`error`]: how a request fails: outcome word, message, Docker's `Err`.
//! - [`cache`]: TTL cache, request coalescing, stale-on-error.
//! - [`issued`]: the per-task value each task got, for the engine's re-asks.
//! - [`tuning`]: per-provider deadline, retries, concurrency limit.
//! - [`metrics`]: Prometheus metrics and each provider's readiness.
//! - [`metrics_listener`]: the optional HTTP listener for `/metrics`,
//!   `/healthz` and `/readyz`.
//! - [`config`]: the TOML file / environment / embedded default.
//! - [`stack`]: a compose file -> the GetSecret requests its deploy will cause.
//! - [`cli`]: `serve`, `check` (also `check --stack`), `get`, `rotate`.
//! - [`log_writer`]: `serve`'s log lines, written to stderr by a thread of
//!   their own (bounded; drops counted and reported); `log_format`: the
//!   text format's fields and the timestamps, written with less machinery.
//! - [`rotate`]: the rotation controller (the one part with a Docker socket).
//!
//! Backends live in the `vaultbridge-providers` crate; unit tests use an
//! in-memory one (`memory`, compiled for tests only).

pub mod access;
mod audit;
mod cache;
pub mod cli;
pub mod config;
pub mod error;
mod issued;
pub mod labels;
mod log_format;
pub mod log_writer;
#[cfg(test)]
mod memory;
pub mod metrics;
mod metrics_listener;
pub mod protocol;
pub mod resolve;
pub mod rotate;
mod server;
mod stack;
pub mod template;
pub mod tuning;
