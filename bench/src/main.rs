//! `cargo run --release -p vaultbridge-bench`: measures vaultbridge against
//! the physical floor of a Unix-socket HTTP server, prints a table with the
//! ratios the targets are stated in, and writes the figures to
//! `bench/last-run.json`. BENCHMARKS.md records the results.
//!
//! Rows (same load generator for every socket row, see `load.rs`):
//! 1. floor: a minimal hyper server answering a fixed Docker-shaped response
//!    of the same size;
//! 2. vaultbridge, cache hit (file provider, warmed);
//! 3. vaultbridge, cache miss against OpenBao vs a direct vaultrs read;
//! 4. burst: 1,000 concurrent GetSecret for one uncached secret, backend
//!    calls counted by OpenBao's file audit device;
//! 5. resident memory idle and under concurrency 256; exec-to-answer time.

mod floor;
mod load;
mod proxy_floor;
mod vault;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;

use crate::load::{Stats, has_value};

/// A typical secret: a 32-character password.
pub(crate) const SECRET: &[u8] = b"bench-password-0123456789abcdef!";
pub(crate) const CONCURRENCIES: [usize; 3] = [1, 64, 256];
pub(crate) const RUN: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("floor") {
        // `floor --socket PATH`, as spawned by `Server::spawn`.
        return floor::serve(Path::new(
            args.get(3).map(String::as_str).unwrap_or("floor.sock"),
        ));
    }
    if args.get(1).map(String::as_str) == Some("proxy-floor") {
        // `proxy-floor --socket PATH VAULT_HOST:PORT TOKEN URL_PATH FIELD`
        // (bench/oha.sh's miss rows).
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        return proxy_floor::serve(
            Path::new(&arg(3)),
            proxy_floor::Upstream {
                vault: arg(4),
                token: arg(5),
                path: arg(6),
                field: arg(7),
            },
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some("load") {
        // `load SOCKET CONCURRENCY SECONDS [per-task]`: the same load against a server
        // you started yourself (e.g. under `perf record`).
        let socket = PathBuf::from(
            args.get(2)
                .map(String::as_str)
                .unwrap_or("vaultbridge.sock"),
        );
        let concurrency = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(64);
        let seconds = args.get(4).and_then(|c| c.parse().ok()).unwrap_or(5);
        // A 5th argument `per-task` makes every request reach the backend.
        let body = if args.get(5).map(String::as_str) == Some("per-task") {
            per_task_body("bench", &[("vaultbridge.reuse", "false")])
        } else {
            request_body("bench", &[])
        };
        let stats = runtime.block_on(load::run(
            &socket,
            "/SecretProvider.GetSecret",
            body,
            concurrency,
            Duration::from_secs(seconds),
            has_value,
        ))?;
        row("load", concurrency, &stats);
        return Ok(());
    }
    runtime.block_on(bench())
}

/// The response the floor serves: what vaultbridge answers for [`SECRET`].
pub fn docker_answer() -> Vec<u8> {
    let value = base64::engine::general_purpose::STANDARD.encode(SECRET);
    format!("{{\"Value\":\"{value}\",\"DoNotReuse\":false}}").into_bytes()
}

/// 99 rules that do not match the bench request (service `st_api`, stack
/// `st`), each as an operator would write it, then the one that allows.
fn hundred_rule_policy() -> String {
    let mut text = String::from("\n[access]\ndefault = \"deny\"\n");
    for i in 0..99 {
        text.push_str(&format!(
            "\n[[access.rules]]\nname = \"team {i}\"\nstack = \"team{i}-*\"\nservice_labels = {{ team = \"team{i}\" }}\npaths = [\"apps/{{stack}}/**\", \"teams/team{i}/*\"]\n"
        ));
    }
    text.push_str("\n[[access.rules]]\nname = \"bench\"\nstack = \"st\"\npaths = [\"bench\"]\n");
    text
}

pub(crate) fn request_body(name: &str, labels: &[(&str, &str)]) -> Bytes {
    Bytes::from(vaultbridge_tests::engine_request(name, labels).to_string())
}

/// A request for a per-task value that reaches the backend every time: no
/// `TaskID`. With one, every request after the first would be the same
/// task asking again, answered with the value it already got (`reissued`).
pub(crate) fn per_task_body(name: &str, labels: &[(&str, &str)]) -> Bytes {
    let mut request = vaultbridge_tests::engine_request(name, labels);
    request["TaskID"] = json!("");
    Bytes::from(request.to_string())
}

/// The release plugin binary: `$VAULTBRIDGE_BIN`, else built next to us.
fn plugin_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("VAULTBRIDGE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "vaultbridge", "--all-features"])
        .status()?;
    anyhow::ensure!(status.success(), "building the plugin failed");
    let exe = std::env::current_exe()?;
    Ok(exe.with_file_name("vaultbridge"))
}

pub(crate) struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn spawn(
        program: &Path,
        args: &[&str],
        config: Option<&str>,
    ) -> anyhow::Result<(Server, Duration)> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("bench.sock");
        let mut command = Command::new(program);
        command.args(args).arg("--socket").arg(&socket);
        if let Some(text) = config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text)?;
            command.arg("--config").arg(path);
        }
        command
            // VAULTBRIDGE_LOG is inherited; unset, it is the default `info`:
            // every GetSecret writes its log line, as in production.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let started = Instant::now();
        let child = command.spawn()?;
        let server = Server {
            child,
            socket,
            _dir: dir,
        };
        // Poll every millisecond: the figure is exec -> first answer.
        loop {
            if vaultbridge_tests::raw_request(&server.socket, "POST", "/Plugin.Activate", b"")
                .is_ok()
            {
                return Ok((server, started.elapsed()));
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "server did not answer"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The load at every concurrency of [`CONCURRENCIES`] on `socket`, one row
/// each in `figures` under `name`; the stats in that order.
async fn rows(
    socket: &Path,
    body: &Bytes,
    name: &str,
    figures: &mut Vec<serde_json::Value>,
) -> anyhow::Result<Vec<Stats>> {
    let mut all = Vec::new();
    for c in CONCURRENCIES {
        let stats = load::run(
            socket,
            "/SecretProvider.GetSecret",
            body.clone(),
            c,
            RUN,
            has_value,
        )
        .await?;
        figures.push(row(name, c, &stats));
        all.push(stats);
    }
    Ok(all)
}

/// `<a>_p50_over_<b>_c<c>` and `<a>_throughput_over_<b>_c<c>` for every
/// concurrency: how row set `a` compares with row set `b`.
fn compare(
    ratios: &mut serde_json::Map<String, serde_json::Value>,
    (a, a_stats): (&str, &[Stats]),
    (b, b_stats): (&str, &[Stats]),
) {
    for ((c, x), y) in CONCURRENCIES.iter().zip(a_stats).zip(b_stats) {
        ratios.insert(
            format!("{a}_p50_over_{b}_c{c}"),
            json!(x.p50.as_secs_f64() / y.p50.as_secs_f64()),
        );
        ratios.insert(
            format!("{a}_throughput_over_{b}_c{c}"),
            json!(x.per_second / y.per_second),
        );
    }
}

pub(crate) fn row(name: &str, concurrency: usize, stats: &Stats) -> serde_json::Value {
    println!(
        "{name:<34} c={concurrency:<4} p50={:>9.1}µs p99={:>9.1}µs {:>9.0} req/s  (n={}, errors={})",
        stats.p50.as_secs_f64() * 1e6,
        stats.p99.as_secs_f64() * 1e6,
        stats.per_second,
        stats.requests,
        stats.errors
    );
    json!({"row": name, "concurrency": concurrency, "p50_us": stats.p50.as_secs_f64() * 1e6,
           "p99_us": stats.p99.as_secs_f64() * 1e6, "per_second": stats.per_second,
           "requests": stats.requests, "errors": stats.errors})
}

/// What counting one cache hit costs (in flight, outcome, source,
/// latency histogram), in process: one thread, then both cores at once on
/// the same series (the worst case: every request of one provider).
fn counting_cost() -> serde_json::Value {
    use vaultbridge::metrics::Metrics;
    const N: u32 = 2_000_000;
    let metrics = std::sync::Arc::new(Metrics::new(["local"]));
    let count = |metrics: &Metrics| {
        let started = Instant::now();
        for _ in 0..N {
            let _in_flight = metrics.in_flight();
            metrics.answered(
                Some("local"),
                "ok",
                Some(vaultbridge::metrics::Source::Hit),
                Duration::from_micros(20),
            );
        }
        started.elapsed().as_nanos() as f64 / f64::from(N)
    };
    let alone = count(&metrics);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let metrics = metrics.clone();
            std::thread::spawn(move || count(&metrics))
        })
        .collect();
    let contended: Vec<f64> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or(f64::NAN))
        .collect();
    println!(
        "metrics counting per request: {alone:.0} ns alone, {:.0} ns with 2 threads on the same series",
        contended.iter().sum::<f64>() / 2.0
    );
    json!({"ns_alone": alone, "ns_two_threads": contended})
}

async fn bench() -> anyhow::Result<()> {
    let counting = counting_cost();
    let plugin = plugin_binary()?;
    let me = std::env::current_exe()?;
    let mut figures = Vec::new();
    let mut ratios = serde_json::Map::new();

    // 1. The floor.
    let (floor, _) = Server::spawn(&me, &["floor"], None)?;
    let floor_socket = floor.socket.clone();
    let body = request_body("bench", &[]);
    let floor_stats = rows(
        &floor_socket,
        &body,
        "floor (minimal hyper server)",
        &mut figures,
    )
    .await?;
    drop(floor);

    // 2. Cache hit, with the file provider.
    let secrets = tempfile::tempdir()?;
    std::fs::write(secrets.path().join("bench"), SECRET)?;
    let config = format!(
        "[providers.local]\ntype = \"file\"\nroot = \"{}\"\ncache_ttl = \"1h\"\n",
        secrets.path().display()
    );
    let (hit_server, _) = Server::spawn(&plugin, &["serve"], Some(&config))?;
    let answer = vaultbridge_tests::raw_request(
        &hit_server.socket,
        "POST",
        "/SecretProvider.GetSecret",
        &body,
    )?;
    anyhow::ensure!(
        answer.body == docker_answer(),
        "vaultbridge's answer differs from the floor's"
    );
    let rss_idle = hit_server.rss_kib();
    let mut hit_stats = Vec::new();
    let mut rss_peak = 0;
    for c in CONCURRENCIES {
        // Sample the resident set while the load runs.
        let pid = hit_server.child.id();
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = tokio::spawn({
            let peak = peak.clone();
            async move {
                loop {
                    peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let stats = load::run(
            &hit_server.socket,
            "/SecretProvider.GetSecret",
            body.clone(),
            c,
            RUN,
            has_value,
        )
        .await?;
        sampler.abort();
        if c == 256 {
            rss_peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        }
        figures.push(row("vaultbridge, cache hit", c, &stats));
        hit_stats.push(stats);
    }
    let rss_256 = rss_peak;
    drop(hit_server);

    compare(&mut ratios, ("hit", &hit_stats), ("floor", &floor_stats));

    // 2b. The same hit path with a 100-rule access policy whose last rule
    // is the one that allows: every request evaluates all 100.
    let policy_config = format!("{config}{}", hundred_rule_policy());
    let (policy_server, _) = Server::spawn(&plugin, &["serve"], Some(&policy_config))?;
    let answer = vaultbridge_tests::raw_request(
        &policy_server.socket,
        "POST",
        "/SecretProvider.GetSecret",
        &body,
    )?;
    anyhow::ensure!(
        answer.body == docker_answer(),
        "with the policy, vaultbridge's answer differs from the floor's"
    );
    let policy_stats = rows(
        &policy_server.socket,
        &body,
        "vaultbridge, cache hit, 100-rule policy",
        &mut figures,
    )
    .await?;
    compare(
        &mut ratios,
        ("policy_hit", &policy_stats),
        ("hit", &hit_stats),
    );
    drop(policy_server);

    // 2c. The hit path with the metrics listener on and scraped every
    // second, as Prometheus would (the counters are updated either way).
    let listen = format!("127.0.0.1:{}", vaultbridge_tests::openbao::free_port());
    let metrics_config = format!("metrics_listen = \"{listen}\"\n{config}");
    let (metrics_server, _) = Server::spawn(&plugin, &["serve"], Some(&metrics_config))?;
    let scraping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scraper = std::thread::spawn({
        let scraping = scraping.clone();
        let listen = listen.clone();
        move || {
            let mut scrapes = 0u32;
            while scraping.load(std::sync::atomic::Ordering::Relaxed) {
                if vaultbridge_tests::prometheus::http_get(&listen, "/metrics")
                    .is_some_and(|(status, _)| status == 200)
                {
                    scrapes += 1;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            scrapes
        }
    });
    let scraped_stats = rows(
        &metrics_server.socket,
        &body,
        "vaultbridge, cache hit, metrics scraped 1/s",
        &mut figures,
    )
    .await?;
    compare(
        &mut ratios,
        ("scraped_hit", &scraped_stats),
        ("hit", &hit_stats),
    );
    scraping.store(false, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.join().unwrap_or(0);
    anyhow::ensure!(scrapes > 0, "the metrics listener never answered");
    drop(metrics_server);

    // 2d. `VAULTBRIDGE_BASELINE_BIN`: the plain hit row with another binary
    // (one built before a change), in the same run.
    if let Some(baseline) = std::env::var_os("VAULTBRIDGE_BASELINE_BIN") {
        let (baseline_server, _) = Server::spawn(Path::new(&baseline), &["serve"], Some(&config))?;
        let baseline_stats = rows(
            &baseline_server.socket,
            &body,
            "baseline binary, cache hit",
            &mut figures,
        )
        .await?;
        compare(
            &mut ratios,
            ("hit", &hit_stats),
            ("baseline", &baseline_stats),
        );
    }

    // 3 and 4. Against OpenBao (`--hit-only` skips them, for profiling).
    let vault_figures = if std::env::args().any(|a| a == "--hit-only") {
        serde_json::Value::Null
    } else {
        vault::bench(&plugin, &mut figures, &mut ratios).await?
    };

    // 5. Start-up: exec -> first answer, 20 times.
    let mut startups = Vec::new();
    for _ in 0..20 {
        let (server, elapsed) = Server::spawn(&plugin, &["serve"], Some(&config))?;
        startups.push(elapsed);
        drop(server);
    }
    startups.sort_unstable();
    let startup_p50 = startups[startups.len() / 2];
    let startup_max = *startups.last().unwrap_or(&Duration::ZERO);

    println!();
    println!(
        "resident memory: idle {:.1} MB, at concurrency 256 {:.1} MB (target < 30 MB)",
        rss_idle as f64 / 1024.0,
        rss_256 as f64 / 1024.0
    );
    println!(
        "exec -> socket answering: median {:.1} ms, max {:.1} ms over 20 starts (target < 50 ms)",
        startup_p50.as_secs_f64() * 1e3,
        startup_max.as_secs_f64() * 1e3
    );
    println!(
        "ratios (targets: hit p50 <= 1.5x floor, hit throughput >= 0.6x floor at c64, miss <= 1.1x direct, burst = 1 backend call):"
    );
    for (name, value) in &ratios {
        println!("  {name:<40} {value}");
    }

    let out = json!({
        "rows": figures,
        "ratios": ratios,
        "metrics_counting": counting,
        "rss_idle_kib": rss_idle,
        "rss_c256_kib": rss_256,
        "startup_ms_median": startup_p50.as_secs_f64() * 1e3,
        "startup_ms_max": startup_max.as_secs_f64() * 1e3,
        "vault": vault_figures,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("last-run.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("figures written to {}", path.display());
    Ok(())
}
