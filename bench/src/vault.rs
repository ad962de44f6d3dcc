//! Rows 3 and 4, against a real OpenBao dev server started here.
//!
//! 3. Miss path: every request reaches OpenBao (`vaultbridge.reuse=false`:
//!    no cache, no coalescing; no task id, so no re-ask answered from the
//!    per-task store), versus a direct vaultrs KV v2 read of the
//!    same secret at the same concurrency (no socket hop).
//! 4. Burst: 1,000 concurrent GetSecret for one uncached secret; backend
//!    reads counted from OpenBao's audit log.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use vaultbridge_tests::openbao::OpenBao;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use crate::load::{self, Stats, has_value};
use crate::{CONCURRENCIES, RUN, SECRET, Server, per_task_body, request_body, row};

pub async fn bench(
    plugin: &Path,
    figures: &mut Vec<Value>,
    ratios: &mut Map<String, Value>,
) -> anyhow::Result<Value> {
    let bao = OpenBao::start();
    let secret = String::from_utf8(SECRET.to_vec())?;
    bao.bao(&["kv", "put", "secret/bench", &format!("pw={secret}")]);
    bao.bao(&["kv", "put", "secret/burst", &format!("pw={secret}")]);
    let token = bao.file("root-token", b"root");
    // A concurrency limit above the load, so the row measures overhead, not
    // the (deliberate) default limit of 16 calls in flight.
    let config = format!(
        "[providers.bao]\ntype = \"vault\"\naddress = \"{}\"\nmax_concurrency = 1024\nauth = {{ method = \"token\", token_file = \"{}\" }}\n",
        bao.addr,
        token.display()
    );
    let (server, _) = Server::spawn(plugin, &["serve"], Some(&config))?;

    let miss_body = per_task_body(
        "bench",
        &[
            ("vaultbridge.path", "bench"),
            ("vaultbridge.field", "pw"),
            ("vaultbridge.reuse", "false"),
        ],
    );
    let client = std::sync::Arc::new(VaultClient::new(
        VaultClientSettingsBuilder::default()
            .address(&bao.addr)
            .token("root")
            .build()?,
    )?);
    for c in CONCURRENCIES {
        let plugin_stats = load::run(
            &server.socket,
            "/SecretProvider.GetSecret",
            miss_body.clone(),
            c,
            RUN,
            has_value,
        )
        .await?;
        figures.push(row("vaultbridge, miss (OpenBao)", c, &plugin_stats));
        let direct_stats = direct_reads(&client, c, RUN).await?;
        figures.push(row("direct vaultrs kv2 read (OpenBao)", c, &direct_stats));
        ratios.insert(
            format!("miss_p50_over_direct_c{c}"),
            json!(plugin_stats.p50.as_secs_f64() / direct_stats.p50.as_secs_f64()),
        );
    }

    // 4. The burst, on a secret nobody has asked for yet.
    let burst_body = request_body(
        "burst",
        &[("vaultbridge.path", "burst"), ("vaultbridge.field", "pw")],
    );
    let before = bao.audit_reads("secret/data/burst");
    let burst = load::burst(&server.socket, burst_body, 1000).await?;
    let backend_calls = bao.audit_reads("secret/data/burst") - before;
    println!(
        "burst: 1000 concurrent GetSecret, one uncached secret -> {backend_calls} OpenBao read(s) (audit log), p50 {:.1} ms, p99 {:.1} ms, {} errors",
        burst.p50.as_secs_f64() * 1e3,
        burst.p99.as_secs_f64() * 1e3,
        burst.errors
    );
    ratios.insert("burst_backend_calls".into(), json!(backend_calls));
    Ok(json!({
        "burst": {"requests": 1000, "backend_calls": backend_calls,
                  "p50_ms": burst.p50.as_secs_f64() * 1e3, "p99_ms": burst.p99.as_secs_f64() * 1e3,
                  "errors": burst.errors}
    }))
}

/// KV v2 reads straight from vaultrs, `concurrency` at a time.
async fn direct_reads(
    client: &std::sync::Arc<VaultClient>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Stats> {
    let warmup = Duration::from_millis(300);
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            while Instant::now() < end {
                let began = Instant::now();
                let result = vaultrs::kv2::read::<Value>(client.as_ref(), "secret", "bench").await;
                if began >= measure_from {
                    match result {
                        Ok(data) if data["pw"].as_str().map(str::as_bytes) == Some(SECRET) => {
                            latencies.push(began.elapsed())
                        }
                        _ => errors += 1,
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, task_errors) = task.await?;
        all.extend(latencies);
        errors += task_errors;
    }
    Ok(Stats::from_latencies(all, errors, duration))
}
