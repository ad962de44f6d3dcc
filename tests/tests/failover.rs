//! Issue 16: the plugin on a real multi-manager swarm (three manager
//! dockerds and a worker, each in a network namespace of its own; see
//! `vaultbridge_tests::swarm`), through a leader failover. One test, in
//! order, on one swarm; every step asserted with a deadline; the swarm's
//! `Drop` removes everything, also when a step fails.
//!
//! 1. A Vault secret (real OpenBao in the hub namespace), a file secret
//!    and a per-task Vault token, on a 6-replica service spread over the
//!    nodes: only the leader's plugin is asked.
//! 2. `packaging/check-managers.sh` finds the same plugin on every manager.
//! 3. The leader's dockerd is killed; a new leader is elected.
//! 4. Its plugin answers the engine's re-asks for every task still running:
//!    reusable values from its cache (at most one backend read), per-task
//!    tokens from the `per_task_mount` records the first leader's plugin
//!    wrote (`reissued`; no token minted). The running tasks keep running.
//!    The rotation controller, talking to a manager that stayed up, rolls a
//!    value changed in the leaderless window once a leader is back.
//! 5. New tasks (scale up, a new service) get their values from the new
//!    leader's plugin, and from no other.
//! 6. The killed manager comes back, rejoins, is made leader again, and its
//!    plugin serves new tasks.
//! 7. A manager whose plugin is set up differently is reported by
//!    `check-managers.sh`; made leader, it fails new tasks, as shown; so
//!    does a leader whose plugin is disabled.
//!
//! 6b. The value changes again; the controller, whose manager was demoted
//!    and promoted back while leadership moved, rolls it too.
//!
//! `failover_reask_burst` (gated by `VAULTBRIDGE_FAILOVER_BENCH=1`) measures
//! the re-ask burst for 50 tasks and 5 secrets, for BENCHMARKS.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vaultbridge_tests::assert_log_has_no_values;
use vaultbridge_tests::docker::{ServiceSpec, poll, repo_root};
use vaultbridge_tests::openbao::OpenBao;
use vaultbridge_tests::swarm::{ALIAS, HUB_IP, STATE_ROOT, Swarm, Task, log_field};

/// Converging a service on four daemons sharing two cores.
const CONVERGE: Duration = Duration::from_secs(150);
/// The engine's leaderless window was 11-25 s here (not settable in 20.10).
const ELECTION: Duration = Duration::from_secs(90);
const BAO_PORT: u16 = 8200;

/// The backends every plugin reads: OpenBao in the hub namespace (where
/// every node reaches it) and a file tree in the shared config mount.
struct Backends {
    bao: OpenBao,
    /// The KV value's field and the file's content: what tasks must read.
    vault_value: Vec<u8>,
    file_value: Vec<u8>,
}

impl Backends {
    /// Start OpenBao, seed it, and write config.toml, the token file and
    /// the file provider's secrets into the swarm's config directory.
    /// `kv_paths` extra KV secrets (for the benchmark), each `password=<x>`.
    fn start(swarm: &Swarm, kv_paths: &[&str]) -> Backends {
        let bao = OpenBao::start_in_netns("vbfo-hub", HUB_IP, BAO_PORT);
        // Where the managers' plugins share the per-task values they mint.
        bao.bao(&["secrets", "enable", "-path=vaultbridge-per-task", "kv-v2"]);
        let vault_value = format!("bao-pw-{}", swarm.id).into_bytes();
        for path in ["app/db"].iter().chain(kv_paths) {
            bao.bao(&[
                "kv",
                "put",
                &format!("secret/{path}"),
                "user=app",
                &format!("password={}", String::from_utf8_lossy(&vault_value)),
            ]);
        }
        // The rotated value (step 1), written long before its secret.
        bao.bao(&["kv", "put", "secret/app/rot", "password=rot-1"]);
        let config = &swarm.config_dir;
        std::fs::create_dir_all(config.join("secrets/app")).expect("mkdir secrets");
        let file_value = format!("file-conf-{}\n", swarm.id).into_bytes();
        std::fs::write(config.join("secrets/app/conf"), &file_value).expect("write secret");
        std::fs::write(config.join("secrets/app/extra"), &file_value).expect("write secret");
        std::fs::write(config.join("bao-token"), "root\n").expect("write token file");
        std::fs::write(
            config.join("config.toml"),
            format!(
                "default_provider = \"local\"\n\n\
                 [providers.local]\ntype = \"file\"\nroot = \"/etc/vaultbridge/secrets\"\n\n\
                 [providers.bao]\ntype = \"vault\"\naddress = \"http://{HUB_IP}:{BAO_PORT}\"\n\
                 logical_write_prefixes = [\"auth/token/create\"]\n\
                 per_task_mount = \"vaultbridge-per-task\"\n\
                 [providers.bao.auth]\nmethod = \"token\"\ntoken_file = \"/etc/vaultbridge/bao-token\"\n"
            ),
        )
        .expect("write config.toml");
        Backends {
            bao,
            vault_value,
            file_value,
        }
    }

    /// Backend calls OpenBao recorded so far: KV reads of `secret/data/…`
    /// and token creations (the per-task secret).
    fn calls(&self, kv_paths: &[&str]) -> (usize, usize) {
        let reads = kv_paths
            .iter()
            .map(|p| self.bao.audit_reads(&format!("secret/data/{p}")))
            .sum();
        (reads, self.bao.audit_count("auth/token/create"))
    }
}

/// `docker secret create --driver vaultbridge` with labels, via `via`.
fn secret_create(swarm: &Swarm, via: usize, name: &str, labels: &[(&str, &str)]) {
    let mut args = vec!["secret", "create", "--driver", ALIAS];
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for label in &labels {
        args.extend(["--label", label]);
    }
    args.push(name);
    swarm.nodes[via].ok(&args);
}

fn step(n: &str, title: &str, started: Instant) {
    eprintln!(
        "[failover {:>6.1}s] step {n}: {title}",
        started.elapsed().as_secs_f64()
    );
}

/// The plugin's `secret served` / `secret lookup failed` lines of node
/// `node` for task `task`, from its `skip`th line on.
fn lines_for_task(swarm: &Swarm, node: usize, skip: usize, task: &str) -> Vec<String> {
    swarm.nodes[node]
        .plugin_lines()
        .into_iter()
        .skip(skip)
        .filter(|l| log_field(l, "task") == Some(task))
        .collect()
}

/// Wait until `count` tasks of `service` run, and each has reported its
/// secret files (read per task, so that a dead node's tasks never block
/// `docker service logs`); returns the tasks and their reports.
fn wait_running_reports(
    swarm: &Swarm,
    via: usize,
    service: &str,
    count: usize,
    targets: usize,
) -> Vec<(Task, BTreeMap<String, Vec<u8>>)> {
    poll(
        &format!("{count} running tasks of {service} to report {targets} secret file(s) each"),
        CONVERGE,
        || {
            let running = swarm.running(via, service);
            if running.len() != count {
                return None;
            }
            let mut out = Vec::new();
            for task in running {
                let id = task.name.rsplit('.').next()?.to_string();
                let reports: BTreeMap<String, Vec<u8>> = swarm
                    .reports(via, &id)
                    .into_iter()
                    .map(|r| (r.target, r.bytes))
                    .collect();
                if reports.len() < targets {
                    return None;
                }
                out.push((task, reports));
            }
            Some(out)
        },
        || swarm.describe(via, service),
    )
}

/// What the new leader's plugin answered for the tasks that were running.
#[derive(Debug, Default)]
struct Burst {
    /// GetSecret calls for those tasks.
    calls: usize,
    /// Of which answered from the cache (`hit`/`coalesced`) or from the
    /// per-task memory (`reissued`); the rest (`miss`, `bypass`) went to
    /// a backend.
    cached: usize,
    reissued: usize,
    backend: usize,
    failed: usize,
    slowest_ms: f64,
    /// From the first answer to the last, by the plugin's own timestamps.
    span_s: f64,
    /// Per-task secret: tasks answered with a fresh value more than once.
    minted_twice: Vec<String>,
}

/// Wait until node `leader`'s plugin (from its `skip`th line) answered
/// every secret in `secrets` for every task in `tasks`, then until it is
/// quiet for 3 s (an agent that reconnects asks again); sum it up.
fn reask_burst(
    swarm: &Swarm,
    leader: usize,
    skip: usize,
    tasks: &[Task],
    secrets: &[&str],
    per_task_secret: &str,
) -> Burst {
    let names: BTreeSet<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let relevant = || -> Vec<String> {
        swarm.nodes[leader]
            .plugin_lines()
            .into_iter()
            .skip(skip)
            .filter(|l| log_field(l, "task").is_some_and(|t| names.contains(t)))
            .collect()
    };
    poll(
        &format!(
            "the new leader's plugin to be asked again for {} running task(s) x {} secret(s)",
            tasks.len(),
            secrets.len()
        ),
        Duration::from_secs(120),
        || {
            let lines = relevant();
            let answered: BTreeSet<(&str, &str)> = lines
                .iter()
                .filter_map(|l| Some((log_field(l, "task")?, log_field(l, "secret")?)))
                .collect();
            names
                .iter()
                .all(|t| secrets.iter().all(|s| answered.contains(&(t, s))))
                .then_some(())
        },
        || swarm.describe(leader, "app"),
    );
    let mut seen = relevant().len();
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    while quiet_since.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = relevant().len();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    let mut burst = Burst::default();
    let mut fresh_per_task: BTreeMap<String, usize> = BTreeMap::new();
    let lines = relevant();
    let times: Vec<f64> = lines
        .iter()
        .map(String::as_str)
        .filter_map(seconds_of_day)
        .collect();
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        burst.span_s = last - first;
    }
    for line in lines {
        burst.calls += 1;
        if let Some(ms) = log_field(&line, "duration_ms").and_then(|d| d.parse::<f64>().ok()) {
            burst.slowest_ms = burst.slowest_ms.max(ms);
        }
        if !line.contains("secret served") {
            burst.failed += 1;
            continue;
        }
        match log_field(&line, "cache") {
            Some("hit" | "coalesced") => burst.cached += 1,
            Some("reissued") => burst.reissued += 1,
            _ => {
                burst.backend += 1;
                if log_field(&line, "secret") == Some(per_task_secret) {
                    let task = log_field(&line, "task").unwrap_or_default().to_string();
                    *fresh_per_task.entry(task).or_default() += 1;
                }
            }
        }
    }
    burst.minted_twice = fresh_per_task
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(t, _)| t)
        .collect();
    burst
}

/// The time of day, in seconds, of a plugin line starting with its RFC 3339
/// timestamp (`2026-12-03T08:15:46.373034Z  WARN …`).
fn seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split('T').nth(1)?;
    let mut parts = time.trim_end_matches('Z').split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// Run `packaging/check-managers.sh` against every manager, and the
/// worker too with `with_worker`: (exit code, what it printed).
fn check_managers(swarm: &Swarm, with_worker: bool) -> (i32, String) {
    let output = Command::new(repo_root().join("packaging/check-managers.sh"))
        .args(
            swarm
                .nodes
                .iter()
                .filter(|n| n.manager || with_worker)
                .map(|n| &n.host),
        )
        .env_remove("DOCKER_HOST")
        .output()
        .expect("run packaging/check-managers.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

/// `vaultbridge rotate` as an operator may run it: against one manager's
/// socket, from inside that node's namespace (where OpenBao is reached).
/// Killed when dropped (and by the swarm's sweep, being in a namespace of
/// its own, when the test run itself is killed).
struct RotateController {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl RotateController {
    fn start(swarm: &Swarm, node: usize) -> RotateController {
        let n = &swarm.nodes[node];
        let config = swarm.config_dir.join("rotate.toml");
        std::fs::write(
            &config,
            format!(
                "[providers.bao]\ntype = \"vault\"\naddress = \"http://{HUB_IP}:{BAO_PORT}\"\n\
                 rotate_interval = \"2s\"\n\
                 [providers.bao.auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
                swarm.config_dir.join("bao-token").display()
            ),
        )
        .expect("write rotate.toml");
        let log = Path::new(STATE_ROOT).join("rotate.log");
        let out = std::fs::File::create(&log).expect("rotate.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &n.name])
            .arg(vaultbridge_tests::binary())
            .args(["rotate", "--driver", ALIAS])
            .env("DOCKER_HOST", &n.host)
            .env("VAULTBRIDGE_CONFIG", &config)
            .env("VAULTBRIDGE_LOG", "info")
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("start vaultbridge rotate");
        RotateController { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RotateController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until every running task of `rot` reads `value` (a roll done).
fn wait_rolled(swarm: &Swarm, via: usize, value: &[u8], controller: Option<&RotateController>) {
    poll(
        &format!(
            "every running task of rot to read {}",
            String::from_utf8_lossy(value)
        ),
        CONVERGE,
        || {
            let running = swarm.running(via, "rot");
            let rolled = running.len() == 2
                && running.iter().all(|task| {
                    let id = task.name.rsplit('.').next().unwrap_or_default();
                    swarm
                        .reports(via, id)
                        .iter()
                        .any(|r| r.target == "rot" && r.bytes == value)
                });
            rolled.then_some(())
        },
        || {
            format!(
                "{}\ncontroller log:\n{}",
                swarm.describe(via, "rot"),
                controller.map(RotateController::log).unwrap_or_default()
            )
        },
    );
}

/// Wait until node `node`'s plugin says it listens, from its `skip`th line.
fn wait_listening(swarm: &Swarm, node: usize, skip: usize) {
    let n = &swarm.nodes[node];
    let id = n.plugin_id.clone().expect("plugin installed");
    n.log.wait_plugin_line(
        &id,
        skip,
        &format!("{}'s plugin to listen", n.name),
        Duration::from_secs(60),
        |l| l.contains("vaultbridge listening"),
    );
}

/// The settings every manager's plugin gets, the same everywhere.
fn settings(swarm: &Swarm) -> Vec<String> {
    vec![
        format!("config.source={}", swarm.config_dir.display()),
        "VAULTBRIDGE_LOG=info".into(),
    ]
}

#[test]
fn failover_across_managers() {
    let started = Instant::now();
    let mut swarm = Swarm::up();
    let backends = Backends::start(&swarm, &[]);
    step(
        "0",
        "install the plugin from the hub's registry on every manager",
        started,
    );
    swarm.install_plugin(&settings(&swarm));
    for node in 0..3 {
        wait_listening(&swarm, node, 0);
    }

    // ---------------------------------------------------------------- 1
    step("1", "Vault, file and per-task secrets; 6 replicas", started);
    let first_leader = swarm.wait_leader(None, ELECTION);
    let via = first_leader;
    secret_create(
        &swarm,
        via,
        "vbfo_vault",
        &[
            ("vaultbridge.provider", "bao"),
            ("vaultbridge.path", "app/db"),
            ("vaultbridge.field", "password"),
        ],
    );
    secret_create(
        &swarm,
        via,
        "vbfo_file",
        &[("vaultbridge.path", "app/conf")],
    );
    secret_create(
        &swarm,
        via,
        "vbfo_token",
        &[
            ("vaultbridge.provider", "bao"),
            (
                "vaultbridge.path",
                "auth/token/create?policies=default&ttl=10m",
            ),
            ("vaultbridge.field", "client_token"),
        ],
    );
    let secrets = ["vbfo_vault", "vbfo_file", "vbfo_token"];
    let mut app = ServiceSpec::new("app", "vbfo_vault", "db");
    app.replicas = 6;
    app.secrets = vec![
        "source=vbfo_vault,target=db".into(),
        "source=vbfo_file,target=conf".into(),
        "source=vbfo_token,target=tok".into(),
    ];
    app.targets = vec!["db".into(), "conf".into(), "tok".into()];
    swarm.service_create(via, &app);
    // Rotated (issue 19): pinned to the version it starts on, so the
    // controller rolls it only when the value changes. Its tasks stay off
    // the manager killed in step 3.
    secret_create(
        &swarm,
        via,
        "vbfo_rot",
        &[
            ("vaultbridge.provider", "bao"),
            ("vaultbridge.path", "app/rot"),
            ("vaultbridge.field", "password"),
            ("vaultbridge.version", "1"),
            ("vaultbridge.rotate", "true"),
        ],
    );
    let mut rot = ServiceSpec::new("rot", "vbfo_rot", "rot");
    rot.replicas = 2;
    rot.constraints = vec![format!("node.hostname!={}", swarm.nodes[first_leader].name)];
    swarm.service_create(via, &rot);
    let initial = wait_running_reports(&swarm, via, "app", 6, 3);
    let mut tokens = BTreeSet::new();
    for (task, files) in &initial {
        assert_eq!(files["db"], backends.vault_value, "{}: db", task.name);
        assert_eq!(files["conf"], backends.file_value, "{}: conf", task.name);
        assert!(!files["tok"].is_empty(), "{}: empty token", task.name);
        tokens.insert(files["tok"].clone());
    }
    assert_eq!(tokens.len(), 6, "the per-task token is not per task");
    let spread: BTreeSet<&str> = initial.iter().map(|(t, _)| t.node.as_str()).collect();
    assert!(
        spread.len() >= 3,
        "the 6 tasks run on {spread:?} only; the failover needs them spread"
    );
    eprintln!(
        "  6 tasks on {spread:?}; leader {}",
        swarm.nodes[first_leader].name
    );
    for (task, _) in &initial {
        for node in 0..3 {
            let asked = !lines_for_task(&swarm, node, 0, &task.name).is_empty();
            assert_eq!(
                asked,
                node == first_leader,
                "{}: {}'s plugin {} asked (only the leader's is)",
                task.name,
                swarm.nodes[node].name,
                if asked { "was" } else { "was not" }
            );
        }
    }

    wait_rolled(&swarm, via, b"rot-1", None);
    let rotating_via = (0..3)
        .find(|&n| n != first_leader)
        .expect("another manager");
    let controller = RotateController::start(&swarm, rotating_via);
    eprintln!(
        "  rotation controller on {}'s socket",
        swarm.nodes[rotating_via].name
    );

    // ---------------------------------------------------------------- 2
    step(
        "2",
        "check-managers.sh: the same plugin everywhere",
        started,
    );
    let (code, report) = check_managers(&swarm, false);
    assert_eq!(code, 0, "check-managers.sh:\n{report}");
    eprintln!("  {}", report.trim().replace('\n', "\n  "));
    // A node without the plugin (here the worker, as a manager someone
    // forgot) is named.
    let (code, report) = check_managers(&swarm, true);
    let worker = &swarm.nodes[3].host;
    assert_eq!(code, 1, "check-managers.sh:\n{report}");
    assert!(
        report.contains(&format!("DIFFERS {worker}: no plugin named 'vaultbridge'")),
        "{report}"
    );

    // ---------------------------------------------------------------- 3
    step("3", "kill the leader's dockerd", started);
    let killed = first_leader;
    let killed_name = swarm.nodes[killed].name.clone();
    let skips: Vec<usize> = (0..3)
        .map(|n| swarm.nodes[n].plugin_lines().len())
        .collect();
    let calls_before = backends.calls(&["app/db"]);
    let record_reads = || {
        backends
            .bao
            .audited_under("vaultbridge-per-task/data/")
            .iter()
            .filter(|l| l.starts_with("read "))
            .count()
    };
    let record_reads_before = record_reads();
    let survivors: Vec<Task> = initial
        .iter()
        .map(|(t, _)| t.clone())
        .filter(|t| t.node != killed_name)
        .collect();
    let killed_at = Instant::now();
    swarm.nodes[killed].kill_daemon();
    // A change while no manager leads: the controller cannot roll yet.
    backends
        .bao
        .bao(&["kv", "put", "secret/app/rot", "password=rot-2"]);
    let leader = swarm.wait_leader(Some(killed), ELECTION);
    let window = killed_at.elapsed();
    eprintln!(
        "  new leader {} after {:.1}s without one",
        swarm.nodes[leader].name,
        window.as_secs_f64()
    );

    // ---------------------------------------------------------------- 4
    step("4", "the re-ask burst on the new leader", started);
    let burst = reask_burst(
        &swarm,
        leader,
        skips[leader],
        &survivors,
        &secrets,
        "vbfo_token",
    );
    let calls_after = backends.calls(&["app/db"]);
    let (kv_reads, token_creations) = (
        calls_after.0 - calls_before.0,
        calls_after.1 - calls_before.1,
    );
    eprintln!(
        "  {} GetSecret calls for {} running tasks x {} secrets: {} from the cache, {} reissued, \
         {} to a backend ({kv_reads} KV read(s), {token_creations} token(s) minted in OpenBao), \
         {} failed; slowest {:.1} ms, all within {:.1}s",
        burst.calls,
        survivors.len(),
        secrets.len(),
        burst.cached,
        burst.reissued,
        burst.backend,
        burst.failed,
        burst.slowest_ms,
        burst.span_s
    );
    assert_eq!(burst.failed, 0, "a re-ask failed: {burst:?}");
    assert!(
        kv_reads <= 1,
        "the Vault KV secret was read {kv_reads} times for the re-asks: the cache should \
         answer all but the first"
    );
    assert!(
        burst.minted_twice.is_empty(),
        "tasks given a fresh per-task value twice by the same plugin: {:?}",
        burst.minted_twice
    );
    // The plugin that minted each running task's token kept it in the
    // per_task_mount: the new leader hands it back and mints none.
    assert_eq!(
        token_creations,
        0,
        "tokens minted for {} running tasks that have theirs",
        survivors.len()
    );
    let recalled = record_reads() - record_reads_before;
    assert!(
        recalled >= survivors.len(),
        "{recalled} per-task records read for {} running tasks",
        survivors.len()
    );
    for node in (0..3).filter(|&n| n != leader && n != killed) {
        for task in &survivors {
            assert!(
                lines_for_task(&swarm, node, skips[node], &task.name).is_empty(),
                "{} re-asked of {}, which does not lead",
                task.name,
                swarm.nodes[node].name
            );
        }
    }
    let still: BTreeSet<String> = swarm
        .running(leader, "app")
        .into_iter()
        .map(|t| t.name)
        .collect();
    for task in &survivors {
        assert!(
            still.contains(&task.name),
            "{} (on {}) stopped running across the failover:\n{}",
            task.name,
            task.node,
            swarm.describe(leader, "app")
        );
    }

    wait_rolled(&swarm, leader, b"rot-2", Some(&controller));
    eprintln!(
        "  every task of rot reads the value changed without a leader, {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // ---------------------------------------------------------------- 5
    step(
        "5",
        "scale up and a new service, on the new leader",
        started,
    );
    let before: BTreeSet<String> = swarm
        .tasks(leader, "app")
        .into_iter()
        .map(|t| t.name)
        .collect();
    let skips: Vec<usize> = (0..3)
        .map(|n| swarm.nodes[n].plugin_lines().len())
        .collect();
    swarm.nodes[leader].ok(&["service", "scale", "--detach", "app=9"]);
    let mut late = ServiceSpec::new("late", "vbfo_vault", "db");
    late.replicas = 2;
    late.secrets = vec![
        "source=vbfo_vault,target=db".into(),
        "source=vbfo_file,target=conf".into(),
    ];
    late.targets = vec!["db".into(), "conf".into()];
    swarm.service_create(leader, &late);
    let scaled = wait_running_reports(&swarm, leader, "app", 9, 3);
    let late_tasks = wait_running_reports(&swarm, leader, "late", 2, 2);
    let new_tasks: Vec<&(Task, BTreeMap<String, Vec<u8>>)> = scaled
        .iter()
        .filter(|(t, _)| !before.contains(&t.name))
        .chain(late_tasks.iter())
        .collect();
    assert!(new_tasks.len() >= 5, "{} new tasks", new_tasks.len());
    for (task, files) in &new_tasks {
        assert_eq!(files["db"], backends.vault_value, "{}: db", task.name);
        assert_eq!(files["conf"], backends.file_value, "{}: conf", task.name);
        let served = lines_for_task(&swarm, leader, skips[leader], &task.name);
        assert!(
            served.iter().any(|l| l.contains("secret served")),
            "{}: no 'secret served' line from the new leader {}",
            task.name,
            swarm.nodes[leader].name
        );
        for node in (0..3).filter(|&n| n != leader) {
            assert!(
                lines_for_task(&swarm, node, skips[node], &task.name).is_empty(),
                "{} was served by {}, which does not lead",
                task.name,
                swarm.nodes[node].name
            );
        }
    }
    eprintln!(
        "  {} new tasks served by {}'s plugin only",
        new_tasks.len(),
        swarm.nodes[leader].name
    );

    // ---------------------------------------------------------------- 6
    step("6", "the killed manager rejoins and leads again", started);
    let skip = swarm.nodes[killed].plugin_lines().len();
    swarm.nodes[killed].start_daemon();
    swarm.wait_reachable(killed, Duration::from_secs(90));
    // Its plugin comes back enabled by itself with the daemon.
    wait_listening(&swarm, killed, skip);
    let elected = Instant::now();
    swarm.make_leader(killed);
    eprintln!(
        "  {} leads again ({:.1}s to move leadership and re-promote the others)",
        killed_name,
        elected.elapsed().as_secs_f64()
    );
    let skip = swarm.nodes[killed].plugin_lines().len();
    let before: BTreeSet<String> = swarm
        .tasks(killed, "late")
        .into_iter()
        .map(|t| t.name)
        .collect();
    swarm.nodes[killed].ok(&["service", "scale", "--detach", "late=4"]);
    let late_tasks = wait_running_reports(&swarm, killed, "late", 4, 2);
    for (task, files) in late_tasks.iter().filter(|(t, _)| !before.contains(&t.name)) {
        assert_eq!(files["db"], backends.vault_value, "{}: db", task.name);
        assert!(
            lines_for_task(&swarm, killed, skip, &task.name)
                .iter()
                .any(|l| l.contains("secret served")),
            "{}: not served by {}'s plugin, which leads again",
            task.name,
            killed_name
        );
    }

    // ---------------------------------------------------------------- 6b
    step(
        "6b",
        "a change after leadership moved (the controller's manager was demoted and promoted)",
        started,
    );
    backends
        .bao
        .bao(&["kv", "put", "secret/app/rot", "password=rot-3"]);
    wait_rolled(&swarm, killed, b"rot-3", Some(&controller));
    // It says a roll completed at its next pass after the engine's.
    poll(
        "the controller to report two completed rolls",
        Duration::from_secs(60),
        || (controller.log().matches("outcome=\"completed\"").count() >= 2).then_some(()),
        || controller.log(),
    );
    assert_log_has_no_values(
        &controller.log(),
        &[b"rot-1".as_slice(), b"rot-2", b"rot-3"],
    );
    drop(controller);

    // ---------------------------------------------------------------- 7
    step("7", "one manager's plugin set up differently", started);
    let odd = (0..3).find(|&n| n != killed).expect("another manager");
    let odd_name = swarm.nodes[odd].name.clone();
    let empty = Path::new(STATE_ROOT).join("config-forgotten");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let node = &swarm.nodes[odd];
    node.ok(&["plugin", "disable", ALIAS]);
    // Its config mount points at a folder nobody filled, and its log
    // level was changed by hand.
    node.ok(&[
        "plugin",
        "set",
        ALIAS,
        &format!("config.source={}", empty.display()),
        "VAULTBRIDGE_LOG=info,vaultbridge=debug",
    ]);
    let skip = node.plugin_lines().len();
    node.ok(&["plugin", "enable", ALIAS]);
    wait_listening(&swarm, odd, skip);
    let (code, report) = check_managers(&swarm, false);
    eprintln!("  {}", report.trim().replace('\n', "\n  "));
    assert_eq!(code, 1, "check-managers.sh:\n{report}");
    let differs: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("DIFFERS "))
        .collect();
    assert_eq!(differs.len(), 1, "{report}");
    assert!(
        differs[0].contains(&swarm.nodes[odd].host)
            && differs[0].contains("mounts")
            && differs[0].contains(&empty.display().to_string())
            && differs[0].contains("environment differs: VAULTBRIDGE_LOG"),
        "{report}"
    );
    let before_leading = swarm.nodes[odd].plugin_lines().len();
    // make_leader demotes and re-promotes the other managers. While such a
    // node's agent restarts in its new role the new leader may mark it
    // Down, and the engine then moves its tasks: its rule for a node that
    // is down, nothing the plugin does. So the tasks watched here are those
    // on the nodes that keep their role: the new leader and the worker.
    let app_running: Vec<Task> = swarm
        .running(odd, "app")
        .into_iter()
        .filter(|t| {
            t.node == odd_name || swarm.nodes.iter().any(|n| n.name == t.node && !n.manager)
        })
        .collect();
    assert!(
        !app_running.is_empty(),
        "no app task on {odd_name} or the worker:\n{}",
        swarm.describe(odd, "app")
    );
    swarm.make_leader(odd);
    let skip = swarm.nodes[odd].plugin_lines().len();
    let mut doomed = ServiceSpec::new("doomed", "vbfo_vault", "db");
    doomed.no_restart = true;
    swarm.service_create(odd, &doomed);
    let failed = poll(
        "the task scheduled by the misconfigured leader to fail",
        CONVERGE,
        || {
            swarm
                .tasks(odd, "doomed")
                .into_iter()
                .find(|t| t.current.starts_with("Failed") || t.current.starts_with("Rejected"))
        },
        || swarm.describe(odd, "doomed"),
    );
    eprintln!("  a task scheduled by {odd_name} sees: {}", failed.error);
    assert!(
        failed.error.contains("secret") && failed.error.contains("not found"),
        "{failed:?}"
    );
    let why = swarm.nodes[odd].log.wait_plugin_line(
        swarm.nodes[odd].plugin_id.as_deref().expect("plugin"),
        skip,
        "the misconfigured plugin's line about the doomed task",
        Duration::from_secs(30),
        |l| log_field(l, "task") == Some(failed.name.as_str()),
    );
    assert!(why.contains("not_configured"), "{why}");
    eprintln!("  {odd_name}'s plugin says: {why}");
    // The engine re-asked for the running tasks when it took over, and got
    // errors; they keep running with the files they started with.
    let failed_reasks = app_running
        .iter()
        .flat_map(|t| lines_for_task(&swarm, odd, before_leading, &t.name))
        .filter(|l| l.contains("not_configured"))
        .count();
    assert!(
        failed_reasks > 0,
        "{odd_name} was not re-asked for the running tasks when it took over"
    );
    let still: BTreeSet<String> = swarm
        .running(odd, "app")
        .into_iter()
        .map(|t| t.name)
        .collect();
    for task in &app_running {
        assert!(
            still.contains(&task.name),
            "{} stopped running under the misconfigured leader:\n{}",
            task.name,
            swarm.describe(odd, "app")
        );
    }
    eprintln!(
        "  {failed_reasks} re-asks for running tasks failed (not_configured); all {} kept running",
        app_running.len()
    );

    // The leader's plugin disabled (as good as missing): named by the
    // check, and a new task fails the same way, with nothing in any log.
    swarm.nodes[odd].ok(&["plugin", "disable", ALIAS]);
    let (code, report) = check_managers(&swarm, false);
    assert_eq!(code, 1, "check-managers.sh:\n{report}");
    assert!(
        report.contains(&format!(
            "DIFFERS {}: plugin disabled",
            swarm.nodes[odd].host
        )),
        "{report}"
    );
    let mut orphan = ServiceSpec::new("orphan", "vbfo_file", "conf");
    orphan.no_restart = true;
    swarm.service_create(odd, &orphan);
    let failed = poll(
        "the task scheduled by a leader without its plugin to fail",
        CONVERGE,
        || {
            swarm
                .tasks(odd, "orphan")
                .into_iter()
                .find(|t| t.current.starts_with("Failed") || t.current.starts_with("Rejected"))
        },
        || swarm.describe(odd, "orphan"),
    );
    eprintln!(
        "  a task scheduled by {odd_name} without its plugin sees: {}",
        failed.error
    );
    assert!(
        failed.error.contains("secret") && failed.error.contains("not found"),
        "{failed:?}"
    );

    // ---------------------------------------------- values never logged
    let mut log = String::new();
    for node in swarm.nodes.iter().filter(|n| n.manager) {
        log.push_str(&node.plugin_lines().join("\n"));
    }
    let mut values: Vec<&[u8]> = vec![&backends.vault_value, &backends.file_value];
    values.extend(tokens.iter().map(Vec::as_slice));
    assert_log_has_no_values(&log, &values);

    drop(backends);
    drop(swarm);
    eprintln!(
        "[failover] all steps passed in {:.1}s (teardown included)",
        started.elapsed().as_secs_f64()
    );
}

/// The re-ask burst at a failover for 50 running tasks and 5 secrets (two
/// Vault KV, one per-task Vault token, two files): GetSecret calls on the
/// new leader, backend calls, slowest answer. For BENCHMARKS.md; only with
/// `VAULTBRIDGE_FAILOVER_BENCH=1` (it takes minutes).
#[test]
fn failover_reask_burst() {
    if std::env::var_os("VAULTBRIDGE_FAILOVER_BENCH").is_none() {
        eprintln!(
            "failover_reask_burst: skipped, a measurement for BENCHMARKS.md; run it with \
             VAULTBRIDGE_FAILOVER_BENCH=1"
        );
        return;
    }
    const TASKS: usize = 50;
    let started = Instant::now();
    let mut swarm = Swarm::up();
    let backends = Backends::start(&swarm, &["app/cache"]);
    swarm.install_plugin(&settings(&swarm));
    for node in 0..3 {
        wait_listening(&swarm, node, 0);
    }
    let via = swarm.wait_leader(None, ELECTION);
    // No task on the leader: all 50 survive its loss and are re-asked.
    swarm.nodes[via].ok(&[
        "node",
        "update",
        "--availability",
        "drain",
        &swarm.nodes[via].name,
    ]);
    let kv = |path: &'static str| {
        vec![
            ("vaultbridge.provider", "bao"),
            ("vaultbridge.path", path),
            ("vaultbridge.field", "password"),
        ]
    };
    secret_create(&swarm, via, "vbfo_kv1", &kv("app/db"));
    secret_create(&swarm, via, "vbfo_kv2", &kv("app/cache"));
    secret_create(
        &swarm,
        via,
        "vbfo_token",
        &[
            ("vaultbridge.provider", "bao"),
            (
                "vaultbridge.path",
                "auth/token/create?policies=default&ttl=10m",
            ),
            ("vaultbridge.field", "client_token"),
        ],
    );
    secret_create(
        &swarm,
        via,
        "vbfo_file1",
        &[("vaultbridge.path", "app/conf")],
    );
    secret_create(
        &swarm,
        via,
        "vbfo_file2",
        &[("vaultbridge.path", "app/extra")],
    );
    let secrets = [
        "vbfo_kv1",
        "vbfo_kv2",
        "vbfo_token",
        "vbfo_file1",
        "vbfo_file2",
    ];
    let mut app = ServiceSpec::new("app", "vbfo_kv1", "kv1");
    app.replicas = TASKS as u32;
    app.secrets = secrets
        .iter()
        .map(|s| format!("source={s},target={s}"))
        .collect();
    app.targets = secrets.iter().map(|s| s.to_string()).collect();
    swarm.service_create(via, &app);
    poll(
        "50 tasks running",
        Duration::from_secs(600),
        || (swarm.running(via, "app").len() == TASKS).then_some(()),
        || swarm.describe(via, "app"),
    );
    let running = swarm.running(via, "app");
    let leader = via;
    let killed_name = swarm.nodes[leader].name.clone();
    let survivors: Vec<Task> = running
        .into_iter()
        .filter(|t| t.node != killed_name)
        .collect();
    let skips: Vec<usize> = (0..3)
        .map(|n| swarm.nodes[n].plugin_lines().len())
        .collect();
    let kv_paths = ["app/db", "app/cache"];
    let calls_before = backends.calls(&kv_paths);
    let killed_at = Instant::now();
    swarm.nodes[leader].kill_daemon();
    let new_leader = swarm.wait_leader(Some(leader), ELECTION);
    let window = killed_at.elapsed();
    let burst = reask_burst(
        &swarm,
        new_leader,
        skips[new_leader],
        &survivors,
        &secrets,
        "vbfo_token",
    );
    let calls_after = backends.calls(&kv_paths);
    println!(
        "failover re-ask burst: {} running tasks on the surviving nodes x {} secrets; \
         leaderless {:.1}s; {} GetSecret calls on the new leader ({} cache, {} reissued, \
         {} to a backend, {} failed); OpenBao: {} KV read(s), {} token(s) minted; \
         slowest answer {:.1} ms; first to last answer {:.1}s",
        survivors.len(),
        secrets.len(),
        window.as_secs_f64(),
        burst.calls,
        burst.cached,
        burst.reissued,
        burst.backend,
        burst.failed,
        calls_after.0 - calls_before.0,
        calls_after.1 - calls_before.1,
        burst.slowest_ms,
        burst.span_s
    );
    drop(backends);
    drop(swarm);
    eprintln!(
        "[failover bench] done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
