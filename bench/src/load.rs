//! The one load generator every row uses: HTTP/1.1 keep-alive connections
//! over a Unix socket, one request at a time per connection, `concurrency`
//! connections at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Latency and throughput of one run.
#[derive(Debug, Clone)]
pub struct Stats {
    pub requests: usize,
    pub errors: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub per_second: f64,
}

impl Stats {
    pub fn from_latencies(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let pick = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Stats {
            requests: latencies.len(),
            errors,
            p50: pick(0.50),
            p99: pick(0.99),
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        }
    }
}

/// Open one keep-alive connection.
async fn connect(
    socket: &Path,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// POST `body` to `path` as fast as the server answers, from `concurrency`
/// connections, for `duration` (after a short warm-up). `check` validates
/// each answer's body.
pub async fn run(
    socket: &Path,
    path: &'static str,
    body: Bytes,
    concurrency: usize,
    duration: Duration,
    check: fn(&[u8]) -> bool,
) -> anyhow::Result<Stats> {
    let warmup = Duration::from_millis(300);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let socket: PathBuf = socket.to_path_buf();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&socket).await?;
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let request = Request::post(path)
                    .header("host", "plugin.moby.localhost")
                    .header("accept", "application/vnd.docker.plugins.v1.2+json")
                    .body(Full::new(body.clone()))?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                let bytes = response.into_body().collect().await?.to_bytes();
                if began >= measure_from {
                    if ok && check(&bytes) {
                        latencies.push(began.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((latencies, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, task_errors) = task.await??;
        all.extend(latencies);
        errors += task_errors;
    }
    Ok(Stats::from_latencies(all, errors, duration))
}

/// Fire `count` requests at once, each on its own connection; one latency each.
pub async fn burst(socket: &Path, body: Bytes, count: usize) -> anyhow::Result<Stats> {
    let mut senders = Vec::new();
    for _ in 0..count {
        senders.push(connect(socket).await?);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(count));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut sender in senders {
        let body = body.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let began = Instant::now();
            let request = Request::post("/SecretProvider.GetSecret")
                .header("host", "plugin.moby.localhost")
                .body(Full::new(body))?;
            let response = sender.send_request(request).await?;
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((began.elapsed(), has_value(&bytes)))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latency, ok) = task.await??;
        if ok {
            latencies.push(latency);
        } else {
            errors += 1;
        }
    }
    Ok(Stats::from_latencies(latencies, errors, started.elapsed()))
}

/// A GetSecret answer that carries a value.
pub fn has_value(body: &[u8]) -> bool {
    body.starts_with(b"{\"Value\":\"")
}
