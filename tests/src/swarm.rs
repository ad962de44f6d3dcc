//! A real multi-manager swarm on this one machine, for the failover suite
//! (`tests/tests/failover.rs`).
//!
//! [`Swarm::up`] brings up three manager dockerds and one worker, each in a
//! network namespace of its own joined to a bridge in a hub namespace, on
//! addresses that exist only inside those namespaces (nothing is added to
//! the host's network). It forms the swarm, builds the workload image on
//! every node, and serves a local registry (Debian's `docker-registry`)
//! inside the hub, from which [`Swarm::install_plugin`] installs the plugin
//! on every manager with the same settings, as an operator would.
//!
//! Everything it makes is named `vbfo-…` (namespaces, bridge, cgroups) or
//! lives under [`STATE_ROOT`] and [`RUN_ROOT`]. `Drop` stops the daemons and
//! then [`sweep`]s: it kills every process in those namespaces, cgroups or
//! directories, unmounts, deletes the namespaces, the cgroups and the
//! directories. `up` sweeps first too, so a run that was killed (no `Drop`)
//! is cleaned up by the next one. One swarm at a time: a lock file holding
//! the owner's process id.
//!
//! Each daemon's stderr is a file of its own; its plugin's lines are there,
//! tagged `plugin=<id>` ([`Node::plugin_lines`]). Each daemon also has its
//! own mount namespace (`unshare --mount`), so the storage driver's mounts
//! vanish with its processes instead of piling up in the host's table.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::docker::{
    EngineLog, Registry, ServiceSpec, TaskReport, build_plugin_at, build_workload_image, docker_at,
    docker_try_at, poll, run_id, service_reports, which,
};

/// The prefix of every namespace, bridge and cgroup the harness makes.
pub const PREFIX: &str = "vbfo";
/// Data roots, daemon configs and logs, the plugin's config mount.
pub const STATE_ROOT: &str = "/var/lib/vaultbridge-failover";
/// Exec roots: the daemons' sockets and pid files. Short, because a
/// plugin's socket path (`<root>/plugins/<64 hex>/vaultbridge.sock`) must
/// fit a Unix socket address.
pub const RUN_ROOT: &str = "/run/vbfo";
/// Held for the swarm's life: one swarm at a time on the machine.
const LOCK_FILE: &str = "/run/vbfo.lock";

const HUB: &str = "vbfo-hub";
const BRIDGE: &str = "vbfo-br0";
/// The hub's address on the bridge: the registry and test backends serve
/// here, where every node reaches them. A private /24 that exists only
/// inside the harness's namespaces.
pub const HUB_IP: &str = "10.213.7.1";
const REGISTRY_PORT: u16 = 5000;
/// The name the plugin is installed under on every manager.
pub const ALIAS: &str = "vaultbridge";

/// Three managers (quorum survives one loss) and one worker.
const NODES: [(&str, bool); 4] = [("m1", true), ("m2", true), ("m3", true), ("w1", false)];

/// One dockerd in its own network namespace.
pub struct Node {
    /// `vbfo-m1`: its namespace, hostname and swarm node name.
    pub name: String,
    pub ip: String,
    pub manager: bool,
    /// `unix:///run/vbfo/m1/docker.sock`, for `docker -H`.
    pub host: String,
    /// Its stderr, which also holds its plugin's lines.
    pub log: EngineLog,
    /// The installed plugin's id (managers, after `install_plugin`).
    pub plugin_id: Option<String>,
    index: usize,
    dir: PathBuf,
    exec_root: PathBuf,
    daemon: Option<Child>,
}

impl Node {
    /// `docker -H <this node> ARGS`, raw.
    pub fn docker(&self, args: &[&str]) -> Output {
        docker_at(Some(&self.host), args)
    }

    /// `docker -H <this node> ARGS`: trimmed stdout, or everything it said.
    pub fn try_docker(&self, args: &[&str]) -> Result<String, String> {
        docker_try_at(Some(&self.host), args)
    }

    /// `docker -H <this node> ARGS`, panicking with what it said.
    pub fn ok(&self, args: &[&str]) -> String {
        self.try_docker(args).unwrap_or_else(|err| panic!("{err}"))
    }

    pub fn is_up(&self) -> bool {
        self.daemon.is_some()
    }

    /// Start its dockerd (again): in its network namespace, with a mount and
    /// UTS namespace of its own, its own config file (else it reads the
    /// machine's /etc/docker/daemon.json), data and exec roots, an absolute
    /// cgroup parent (a relative one lands inside the caller's cgroup), and
    /// stderr appended to its log file.
    pub fn start_daemon(&mut self) {
        assert!(
            self.daemon.is_none(),
            "{}: dockerd already running",
            self.name
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log.path)
            .expect("dockerd log");
        let exec_root = self.exec_root.display().to_string();
        let args = [
            "--config-file".to_string(),
            self.dir.join("daemon.json").display().to_string(),
            "--data-root".into(),
            self.dir.join("data").display().to_string(),
            "--exec-root".into(),
            exec_root.clone(),
            "--pidfile".into(),
            format!("{exec_root}/docker.pid"),
            "-H".into(),
            self.host.clone(),
            "--storage-driver".into(),
            "fuse-overlayfs".into(),
            "--cgroup-parent".into(),
            format!("/{}", self.name),
            // A /24: each task takes an address on it (a /28 ran out at 13
            // tasks per node). Distinct per node, so that addresses in the
            // daemons' logs say which node they are on.
            "--bip".into(),
            format!("172.31.{}.1/24", self.index + 1),
            "--default-address-pool".into(),
            format!("base=10.{}.0.0/16,size=24", 220 + self.index),
        ];
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.name))
            .args([
                "--",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "slave",
            ])
            .args(["--", "sh", "-c", "hostname \"$0\" && exec dockerd \"$@\""])
            .arg(&self.name)
            .args(&args)
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        self.daemon = Some(child);
        poll(
            &format!("{}'s dockerd to answer", self.name),
            Duration::from_secs(60),
            || {
                self.try_docker(&["version", "-f", "{{.Server.Version}}"])
                    .ok()
            },
            || self.log_tail(30),
        );
    }

    /// SIGKILL its dockerd: a host that dies. Its containerd and the
    /// containers keep running until the daemon comes back.
    pub fn kill_daemon(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM its dockerd and wait (it stops its containers and plugins).
    fn stop_daemon(&mut self, timeout: Duration) {
        if let Some(mut child) = self.daemon.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of its log (for failure reports).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log.path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// What its plugin printed, one entry per line (empty before install).
    pub fn plugin_lines(&self) -> Vec<String> {
        self.plugin_id
            .as_deref()
            .map(|id| self.log.plugin_lines(id))
            .unwrap_or_default()
    }
}

/// The swarm: see the module documentation.
pub struct Swarm {
    pub nodes: Vec<Node>,
    /// Short and unique to this run, for names and tags.
    pub id: String,
    /// The workload image, built on every node.
    pub image: String,
    /// `10.213.7.1:5000`, reachable from every node.
    pub registry_address: String,
    /// A host directory for the plugin's config mount (the same path on
    /// every manager, as configuration management would lay it out).
    pub config_dir: PathBuf,
    registry: Option<Registry>,
    /// Whether this swarm holds [`LOCK_FILE`] (removed on drop).
    locked: bool,
    pub started: Instant,
}

impl Swarm {
    /// Sweep leftovers, build the network, start the daemons, form the
    /// swarm, start the registry and build the workload image everywhere.
    pub fn up() -> Swarm {
        let started = Instant::now();
        preconditions();
        take_lock();
        let leftovers = sweep();
        if !leftovers.is_empty() {
            eprintln!(
                "[swarm] removed what an earlier run left:\n  {}",
                leftovers.join("\n  ")
            );
        }
        let id = run_id();
        let mut swarm = Swarm {
            nodes: Vec::new(),
            image: format!("vbfo-workload:{id}"),
            id,
            registry_address: format!("{HUB_IP}:{REGISTRY_PORT}"),
            config_dir: Path::new(STATE_ROOT).join("config"),
            registry: None,
            locked: true,
            started,
        };
        std::fs::create_dir_all(&swarm.config_dir).expect("mkdir config");
        // From here on, Drop undoes whatever was made.
        swarm.network();
        swarm.daemons();
        swarm.form();
        let registry_root = Path::new(STATE_ROOT).join("registry");
        swarm.registry = Some(Registry::start(
            &registry_root,
            &swarm.registry_address,
            Some(HUB),
        ));
        let context = Path::new(STATE_ROOT).join("workload-image");
        std::thread::scope(|scope| {
            for node in &swarm.nodes {
                let (context, image) = (&context, &swarm.image);
                scope.spawn(move || {
                    build_workload_image(Some(&node.host), &context.join(&node.name), image)
                });
            }
        });
        eprintln!(
            "[swarm] up in {:.1}s: 3 managers, 1 worker",
            started.elapsed().as_secs_f64()
        );
        swarm
    }

    /// The hub namespace with its bridge, and one namespace per node with a
    /// veth to the bridge; made inside the namespaces, never on the host.
    fn network(&mut self) {
        ip(&["netns", "add", HUB]);
        ip(&["-n", HUB, "link", "set", "lo", "up"]);
        ip(&["-n", HUB, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&[
            "-n",
            HUB,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            BRIDGE,
        ]);
        ip(&["-n", HUB, "link", "set", BRIDGE, "up"]);
        for (index, (short, manager)) in NODES.iter().enumerate() {
            let name = format!("{PREFIX}-{short}");
            let node_ip = format!("10.213.7.{}", 11 + index);
            ip(&["netns", "add", &name]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
            // Both ends made from the hub: the host's namespace never sees them.
            ip(&[
                "-n", HUB, "link", "add", &name, "type", "veth", "peer", "name", "eth0", "netns",
                &name,
            ]);
            ip(&["-n", HUB, "link", "set", &name, "master", BRIDGE, "up"]);
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &name, "link", "set", "eth0", "up"]);
            let exec_root = Path::new(RUN_ROOT).join(short);
            let dir = Path::new(STATE_ROOT).join(short);
            std::fs::create_dir_all(&exec_root).expect("mkdir exec root");
            std::fs::create_dir_all(dir.join("data")).expect("mkdir data root");
            // Its own key (else every node shares the machine engine's ID)
            // and the hub's registry, which is plain HTTP.
            let config = serde_json::json!({
                "deprecated-key-path": dir.join("key.json"),
                "insecure-registries": [format!("{HUB_IP}:{REGISTRY_PORT}")],
            });
            std::fs::write(dir.join("daemon.json"), config.to_string()).expect("daemon.json");
            self.nodes.push(Node {
                host: format!("unix://{}/docker.sock", exec_root.display()),
                log: EngineLog::from_file(dir.join("dockerd.log")),
                name,
                ip: node_ip,
                manager: *manager,
                plugin_id: None,
                index,
                dir,
                exec_root,
                daemon: None,
            });
        }
    }

    fn daemons(&mut self) {
        // Started one after another: four daemons starting at once on two
        // cores take longer than in turn.
        for node in &mut self.nodes {
            node.start_daemon();
        }
    }

    /// `swarm init` on the first manager, the others join with their token.
    fn form(&mut self) {
        let first = &self.nodes[0];
        first.ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            &first.ip,
            "--listen-addr",
            &format!("{}:2377", first.ip),
            "--default-addr-pool",
            "10.215.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
        ]);
        let manager_token = first.ok(&["swarm", "join-token", "-q", "manager"]);
        let worker_token = first.ok(&["swarm", "join-token", "-q", "worker"]);
        let remote = format!("{}:2377", first.ip);
        for node in &self.nodes[1..] {
            let token = if node.manager {
                &manager_token
            } else {
                &worker_token
            };
            node.ok(&[
                "swarm",
                "join",
                "--token",
                token,
                "--advertise-addr",
                &node.ip,
                "--listen-addr",
                &format!("{}:2377", node.ip),
                &remote,
            ]);
        }
        poll(
            "4 nodes Ready, 3 of them managers",
            Duration::from_secs(60),
            || {
                let listed = self.node_table();
                let ready = listed.iter().filter(|l| l.contains(" Ready ")).count();
                let managers = listed
                    .iter()
                    .filter(|l| l.contains("Leader") || l.contains("Reachable"))
                    .count();
                (ready == 4 && managers == 3).then_some(())
            },
            || self.node_table().join("\n"),
        );
    }

    /// `docker node ls` as `hostname status availability manager-status`
    /// lines, asked of the first manager that answers.
    pub fn node_table(&self) -> Vec<String> {
        self.managers_up()
            .find_map(|node| {
                node.try_docker(&[
                    "node",
                    "ls",
                    "--format",
                    "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}",
                ])
                .ok()
            })
            .map(|text| text.lines().map(|l| format!("{l} ")).collect())
            .unwrap_or_default()
    }

    fn managers_up(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.manager && n.is_up())
    }

    /// The index of the current leader, as the managers that answer see it.
    pub fn leader(&self) -> Option<usize> {
        let table = self.node_table();
        let line = table.iter().find(|l| l.contains(" Leader "))?;
        let host = line.split(' ').next()?;
        self.nodes.iter().position(|n| n.name == host)
    }

    /// Wait until a leader other than `not` is elected; its index.
    pub fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> usize {
        poll(
            "a leader to be elected",
            timeout,
            || self.leader().filter(|&l| Some(l) != not),
            || self.node_table().join("\n"),
        )
    }

    /// Wait until `node` is a Ready manager that is Reachable or Leader.
    pub fn wait_reachable(&self, node: usize, timeout: Duration) {
        let name = &self.nodes[node].name;
        poll(
            &format!("{name} to be a Ready, reachable manager"),
            timeout,
            || {
                self.node_table()
                    .iter()
                    .any(|l| {
                        l.starts_with(&format!("{name} Ready "))
                            && (l.contains("Reachable") || l.contains("Leader"))
                    })
                    .then_some(())
            },
            || self.node_table().join("\n"),
        )
    }

    /// Make `target` the leader: demote the other managers, the current
    /// leader last (it then hands leadership to the one manager left),
    /// then promote them back and wait until they are reachable again.
    pub fn make_leader(&self, target: usize) {
        let leader = self.leader();
        let mut others: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != target && self.nodes[i].manager)
            .collect();
        others.sort_by_key(|&i| Some(i) == leader);
        for &other in &others {
            self.set_role(target, other, "worker");
        }
        poll(
            &format!("{} to lead", self.nodes[target].name),
            Duration::from_secs(60),
            || (self.leader() == Some(target)).then_some(()),
            || self.node_table().join("\n"),
        );
        for &other in &others {
            self.set_role(target, other, "manager");
        }
        for &other in &others {
            self.wait_reachable(other, Duration::from_secs(90));
        }
    }

    /// `docker node demote|promote` node `of`, asked of node `via`, until
    /// its spec says `role`. While the cluster reconfigures the engine
    /// answers "update out of sequence", or "node lost leader status" when
    /// the leader demotes itself (applied or not): the role is read again
    /// and the command repeated.
    fn set_role(&self, via: usize, of: usize, role: &str) {
        const RECONFIGURING: [&str; 5] = [
            "update out of sequence",
            "node lost leader status",
            "does not have a leader",
            "code = Unavailable",
            "context deadline exceeded",
        ];
        let (via, name) = (&self.nodes[via], &self.nodes[of].name);
        let verb = if role == "worker" {
            "demote"
        } else {
            "promote"
        };
        let role_now = || via.try_docker(&["node", "inspect", "-f", "{{.Spec.Role}}", name]);
        poll(
            &format!("{name}'s role to be {role}"),
            Duration::from_secs(90),
            || {
                if role_now().is_ok_and(|now| now == role) {
                    return Some(());
                }
                match via.try_docker(&["node", verb, name]) {
                    Err(err) if !RECONFIGURING.iter().any(|e| err.contains(e)) => {
                        panic!("{err}")
                    }
                    _ => None,
                }
            },
            || self.node_table().join("\n"),
        );
    }

    /// Build the plugin on the first manager, push it to the hub's
    /// registry, remove it there, and `docker plugin install --alias
    /// vaultbridge` it on every manager with `settings` (`K=V`, mount
    /// sources). Returns the registry reference.
    pub fn install_plugin(&mut self, settings: &[String]) -> String {
        let name = format!("{}/vaultbridge", self.registry_address);
        let tag = format!("fo-{}", self.id);
        let reference = format!("{name}:{tag}");
        let first = &self.nodes[0];
        build_plugin_at(
            Some(&first.host),
            &Path::new(STATE_ROOT).join("plugin"),
            &name,
            &tag,
            &[],
        );
        first.ok(&["plugin", "push", &reference]);
        first.ok(&["plugin", "rm", &reference]);
        std::thread::scope(|scope| {
            for node in self.nodes.iter().filter(|n| n.manager) {
                let reference = &reference;
                scope.spawn(move || {
                    let mut args = vec![
                        "plugin",
                        "install",
                        "--alias",
                        ALIAS,
                        "--grant-all-permissions",
                        reference,
                    ];
                    args.extend(settings.iter().map(String::as_str));
                    node.ok(&args);
                });
            }
        });
        for node in self.nodes.iter_mut().filter(|n| n.manager) {
            node.plugin_id = Some(node.ok(&["plugin", "inspect", "-f", "{{.Id}}", ALIAS]));
        }
        reference
    }

    /// `service create` of the workload (see [`ServiceSpec`]) through the
    /// manager `via`.
    pub fn service_create(&self, via: usize, spec: &ServiceSpec) {
        let args = spec.create_args(&self.image);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes[via].ok(&args);
    }

    /// The tasks of `service` as (task name as the plugin logs it —
    /// `<service>.<slot>.<task id>` —, node, desired state, current state,
    /// error), asked of manager `via`.
    pub fn tasks(&self, via: usize, service: &str) -> Vec<Task> {
        let Ok(text) = self.nodes[via].try_docker(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Name}}.{{.ID}}|{{.Node}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}",
            service,
        ]) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split('|');
                Some(Task {
                    // A replaced task's name is listed as ` \_ app.1`.
                    name: parts
                        .next()?
                        .trim_start_matches([' ', '\\', '_'])
                        .to_string(),
                    node: parts.next()?.to_string(),
                    desired: parts.next()?.to_string(),
                    current: parts.next()?.to_string(),
                    error: parts.next().unwrap_or_default().to_string(),
                })
            })
            .collect()
    }

    /// Tasks of `service` that run, asked of manager `via`.
    pub fn running(&self, via: usize, service: &str) -> Vec<Task> {
        self.tasks(via, service)
            .into_iter()
            .filter(|t| t.desired == "Running" && t.current.starts_with("Running"))
            .collect()
    }

    /// The workload's reports for `service`, read through manager `via`.
    pub fn reports(&self, via: usize, service: &str) -> Vec<TaskReport> {
        service_reports(Some(&self.nodes[via].host), service)
    }

    /// Tasks, the node table and every plugin's last lines, for failures.
    pub fn describe(&self, via: usize, service: &str) -> String {
        let mut text = format!(
            "nodes:\n{}\ntasks of {service}:\n{}\n",
            self.node_table().join("\n"),
            self.tasks(via, service)
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        for node in self.nodes.iter().filter(|n| n.manager) {
            let lines = node.plugin_lines();
            let tail = lines.len().saturating_sub(8);
            text.push_str(&format!(
                "{}'s plugin (last lines):\n{}\n",
                node.name,
                lines[tail..].join("\n")
            ));
        }
        text
    }
}

/// One row of `docker service ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// `<service>.<slot>.<task id>`, as the plugin's log line names it.
    pub name: String,
    pub node: String,
    pub desired: String,
    pub current: String,
    pub error: String,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let started = Instant::now();
        // In parallel: each daemon gives its containers their 2 s to stop.
        std::thread::scope(|scope| {
            for node in &mut self.nodes {
                scope.spawn(move || node.stop_daemon(Duration::from_secs(30)));
            }
        });
        self.registry = None;
        let left = sweep();
        if std::mem::take(&mut self.locked) {
            let _ = std::fs::remove_file(LOCK_FILE);
        }
        eprintln!(
            "[swarm] torn down in {:.1}s{}",
            started.elapsed().as_secs_f64(),
            if left.is_empty() {
                String::new()
            } else {
                format!(" (after the daemons stopped: {})", left.join("; "))
            }
        );
    }
}

/// Create [`LOCK_FILE`] holding this process's id, waiting (up to 30 min)
/// while another live process holds it; a holder that died (a killed run)
/// no longer counts, and its leftovers are swept next.
fn take_lock() {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        match File::options().write(true).create_new(true).open(LOCK_FILE) {
            Ok(mut file) => {
                use std::io::Write as _;
                file.write_all(std::process::id().to_string().as_bytes())
                    .expect("write the swarm lock file");
                return;
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(LOCK_FILE).unwrap_or_default();
                let alive = holder
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if !alive {
                    // Dead, or still writing its pid: look again shortly.
                    std::thread::sleep(Duration::from_millis(200));
                    if std::fs::read_to_string(LOCK_FILE).unwrap_or_default() == holder {
                        let _ = std::fs::remove_file(LOCK_FILE);
                    }
                    continue;
                }
                assert!(
                    Instant::now() < deadline,
                    "process {} has held {LOCK_FILE} (another swarm of this harness) for 30 min",
                    holder.trim()
                );
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(err) => panic!("cannot create {LOCK_FILE}: {err}"),
        }
    }
}

fn preconditions() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the failover suite needs root (network namespaces, dockerds)"
    );
    for tool in [
        "dockerd",
        "nsenter",
        "unshare",
        "curl",
        "fuse-overlayfs",
        "busybox",
        "docker-registry",
    ] {
        assert!(
            which(tool).is_some(),
            "`{tool}` not found: run tests/setup.sh (busybox-static, docker-registry; the rest \
             comes with the Docker engine and util-linux)"
        );
    }
}

/// `ip ARGS`, panicking with its stderr.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Remove everything a swarm of this harness can leave behind, whether its
/// run ended or was killed; returns what it found, one entry per kind.
pub fn sweep() -> Vec<String> {
    let mut found = Vec::new();
    let namespaces: Vec<String> = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{PREFIX}-")))
        .map(str::to_string)
        .collect();
    let namespace_ids: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let cgroups = our_cgroups();
    // Kill until nothing is left: a dying containerd may still reap shims.
    let mut killed = std::collections::BTreeSet::new();
    for _round in 0..20 {
        let pids = our_processes(&namespace_ids, &cgroups);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            signal(*pid, "KILL");
        }
        killed.extend(pids);
        std::thread::sleep(Duration::from_millis(250));
    }
    if !killed.is_empty() {
        found.push(format!("{} process(es) killed", killed.len()));
    }
    let mounts = our_mounts();
    for mount in &mounts {
        let _ = Command::new("umount").args(["-l", mount]).status();
    }
    if !mounts.is_empty() {
        found.push(format!("{} mount(s) unmounted", mounts.len()));
    }
    for name in &namespaces {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
    }
    if !namespaces.is_empty() {
        found.push(format!("namespaces {}", namespaces.join(" ")));
    }
    // Deepest first: a cgroup goes only once its children have.
    let mut removed = 0;
    for dir in cgroups.iter().rev() {
        if std::fs::remove_dir(dir).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        found.push(format!("{removed} cgroup(s)"));
    }
    for root in [STATE_ROOT, RUN_ROOT] {
        if Path::new(root).exists() {
            match std::fs::remove_dir_all(root) {
                Ok(()) => found.push(format!("{root} removed")),
                Err(err) => found.push(format!("{root} could not be removed: {err}")),
            }
        }
    }
    found
}

/// Every cgroup directory under a `vbfo-*` one, parents before children.
fn our_cgroups() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return dirs;
    };
    for hierarchy in hierarchies.flatten() {
        let Ok(entries) = std::fs::read_dir(hierarchy.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{PREFIX}-"))
            {
                collect_dirs(&entry.path(), &mut dirs);
            }
        }
    }
    dirs
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// What the harness runs outside containers (`comm` prefixes).
const DAEMONS: [&str; 7] = [
    "dockerd",
    "containerd",
    "docker-proxy",
    "docker-registry",
    "fuse-overlayfs",
    "bao",
    "runc",
];

/// Processes in the harness's network namespaces or cgroups, or daemons
/// whose command line names its directories.
fn our_processes(namespaces: &[(u64, u64)], cgroups: &[PathBuf]) -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = cgroups
        .iter()
        .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let in_namespace = std::fs::metadata(entry.path().join("ns/net"))
                .is_ok_and(|m| namespaces.contains(&(m.dev(), m.ino())));
            // A daemon (or its helper) of ours whose namespace is gone; never
            // anyone's shell or pager that merely names the directories.
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let daemon = DAEMONS.iter().any(|d| comm.trim().starts_with(d));
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let names_ours = daemon
                && (cmdline.contains(&format!("{RUN_ROOT}/")) || cmdline.contains(STATE_ROOT));
            if in_namespace || names_ours {
                pids.push(pid);
            }
        }
    }
    pids.retain(|&pid| pid != me);
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Mount points under the harness's directories, deepest first.
fn our_mounts() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(RUN_ROOT) || point.starts_with(STATE_ROOT))
        .map(str::to_string)
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts.dedup();
    mounts
}

/// The value of `key` in a plugin log line (`key=value` or `key="value"`).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split(' ').next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_a_plugin_line() {
        let line = r#"INFO vaultbridge::server: secret served secret=vb_db service=app task=app.1.abc provider="bao" cache="hit" duration_ms=0.41"#;
        assert_eq!(log_field(line, "task"), Some("app.1.abc"));
        assert_eq!(log_field(line, "cache"), Some("hit"));
        assert_eq!(log_field(line, "duration_ms"), Some("0.41"));
        assert_eq!(log_field(line, "provider"), Some("bao"));
        assert_eq!(log_field(line, "path"), None);
    }
}
