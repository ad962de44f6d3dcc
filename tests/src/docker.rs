//! Harness for the Docker engine suite (`tests/tests/docker.rs`): drives the
//! machine's real dockerd with the `docker` CLI, as an operator would.
//!
//! [`Session`] is the cleanup guard. It checks the engine is in a state the
//! suite may use (swarm inactive, no plugin named `vaultbridge`), initialises
//! a single-node swarm, and records everything it creates: services, stacks,
//! secrets, the workload image, plugins, the local registry process and its
//! data, `/etc/hosts` lines. Its `Drop` removes all of it, in the order the
//! engine requires, even when a step panicked, and leaves the swarm only if
//! it was inactive at the start.
//!
//! The plugin's own log is read from the daemon's log file, where the engine
//! writes each line a managed plugin prints, tagged `plugin=<id>`
//! ([`EngineLog`]).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Overrides where the daemon's log is read from.
pub const ENGINE_LOG_ENV: &str = "VAULTBRIDGE_DOCKERD_LOG";

/// The repository root (the tests crate lives in `<repo>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn describe(host: Option<&str>, args: &[&str], output: &Output) -> String {
    let at = host.map(|h| format!("-H {h} ")).unwrap_or_default();
    format!(
        "`docker {at}{}` exited with {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Run `docker ARGS` on the machine's engine, returning the raw output.
pub fn docker(args: &[&str]) -> Output {
    docker_at(None, args)
}

/// Run `docker [-H HOST] ARGS`: `None` is the machine's own engine, `Some`
/// another daemon's socket (the multi-manager swarm's nodes).
pub fn docker_at(host: Option<&str>, args: &[&str]) -> Output {
    let mut command = match host {
        None => Command::new("docker"),
        Some(host) => {
            // A daemon of the harness's own may be dead or hung on purpose:
            // a call to it must not hang the suite.
            let mut timeout = Command::new("timeout");
            timeout.args(["120", "docker", "-H", host]);
            timeout
        }
    };
    command
        .args(args)
        .env("DOCKER_CLI_HINTS", "false")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run `docker`: {err}; is the Docker CLI installed?"))
}

/// Run `docker ARGS`: trimmed stdout on success, the whole output otherwise.
pub fn docker_try(args: &[&str]) -> Result<String, String> {
    docker_try_at(None, args)
}

/// [`docker_try`] on `host` (see [`docker_at`]).
pub fn docker_try_at(host: Option<&str>, args: &[&str]) -> Result<String, String> {
    let output = docker_at(host, args);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(describe(host, args, &output))
    }
}

/// Run `docker ARGS` and panic with everything the engine said if it fails.
pub fn docker_ok(args: &[&str]) -> String {
    docker_try(args).unwrap_or_else(|err| panic!("{err}"))
}

/// Poll `probe` every 250 ms until it returns `Some` or `timeout` passes;
/// then panic with `what` and the last state `describe` reports.
pub fn poll<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {}s waiting for {what}\n{}",
                timeout.as_secs(),
                describe()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A short id unique to this run, for names and tags.
pub fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{:x}{:x}",
        std::process::id(),
        (nanos / 1_000_000) & 0xff_ffff
    )
}

// ---------------------------------------------------------------------------
// The daemon's log

/// The daemon's log file, read from where it stood when the suite started.
pub struct EngineLog {
    pub path: PathBuf,
    start: u64,
}

impl EngineLog {
    /// `$VAULTBRIDGE_DOCKERD_LOG`, else the file dockerd's stderr goes to
    /// (this project's machines: `/var/log/dockerd.log`).
    pub fn locate() -> EngineLog {
        let path = std::env::var_os(ENGINE_LOG_ENV)
            .map(PathBuf::from)
            .or_else(dockerd_stderr_file)
            .or_else(|| {
                ["/var/log/dockerd.log", "/var/log/docker.log"]
                    .into_iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| {
                panic!(
                    "cannot find the Docker daemon's log file (a managed plugin's output lands \
                     there): dockerd's stderr is not a file and /var/log/dockerd.log does not \
                     exist; set {ENGINE_LOG_ENV}=/path/to/dockerd.log"
                )
            });
        let start = std::fs::metadata(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
            .len();
        EngineLog { path, start }
    }

    /// A daemon log file of the harness's own (a swarm node's stderr),
    /// read from its beginning.
    pub fn from_file(path: PathBuf) -> EngineLog {
        EngineLog { path, start: 0 }
    }

    /// What the plugin with this id printed since the suite started, one
    /// entry per line, unescaped.
    pub fn plugin_lines(&self, plugin_id: &str) -> Vec<String> {
        let tag = format!("plugin={plugin_id}");
        self.new_text()
            .lines()
            .filter(|line| line.contains(&tag))
            .filter_map(logfmt_msg)
            .collect()
    }

    /// Every line the daemon wrote since the suite started (for failure reports).
    pub fn new_text(&self) -> String {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(_) => return String::new(),
        };
        let mut text = Vec::new();
        if file.seek(SeekFrom::Start(self.start)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Wait until the plugin printed a line satisfying `pred`, ignoring its
    /// first `skip` lines (those before the event awaited); return it.
    pub fn wait_plugin_line(
        &self,
        plugin_id: &str,
        skip: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        poll(
            what,
            timeout,
            || {
                self.plugin_lines(plugin_id)
                    .into_iter()
                    .skip(skip)
                    .find(|l| pred(l))
            },
            || {
                format!(
                    "plugin {plugin_id} log so far:\n{}",
                    self.plugin_lines(plugin_id).join("\n")
                )
            },
        )
    }
}

/// The file dockerd's stderr is redirected to, if it is a regular file.
fn dockerd_stderr_file() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() != "dockerd" {
            continue;
        }
        let target = std::fs::read_link(entry.path().join("fd/2")).ok()?;
        return target.is_file().then_some(target);
    }
    None
}

/// The unescaped `msg="…"` of a logrus text line.
pub fn logfmt_msg(line: &str) -> Option<String> {
    let start = line.find(" msg=\"")? + 6;
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The session: preconditions, swarm, everything created, cleanup

/// A service for [`Session::service_create`].
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub replicas: u32,
    /// `--secret` values, e.g. `source=S,target=app,mode=0400,uid=123`.
    pub secrets: Vec<String>,
    /// The targets under /run/secrets the workload reports on.
    pub targets: Vec<String>,
    /// `--restart-condition none`: one task, which stays failed.
    pub no_restart: bool,
    /// `--constraint` values, e.g. `node.hostname!=vbfo-m1`.
    pub constraints: Vec<String>,
}

impl ServiceSpec {
    pub fn new(name: &str, secret: &str, target: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            replicas: 1,
            secrets: vec![format!("source={secret},target={target}")],
            targets: vec![target.to_string()],
            no_restart: false,
            constraints: Vec::new(),
        }
    }
}

impl ServiceSpec {
    /// `service create --detach ...` of the workload on `image`, each task
    /// reporting its secret files with [`WORKLOAD_SCRIPT`].
    pub fn create_args(&self, image: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "service",
            "create",
            "--detach",
            "--quiet",
            "--no-resolve-image",
            "--name",
            &self.name,
            "--replicas",
            &self.replicas.to_string(),
            "--env",
            "VB_SLOT={{.Task.Slot}}",
            "--env",
            &format!("VB_TARGETS={}", self.targets.join(" ")),
            "--stop-grace-period",
            "2s",
        ]
        .map(String::from)
        .to_vec();
        if self.no_restart {
            args.extend(["--restart-condition".into(), "none".into()]);
        }
        for secret in &self.secrets {
            args.extend(["--secret".into(), secret.clone()]);
        }
        for constraint in &self.constraints {
            args.extend(["--constraint".into(), constraint.clone()]);
        }
        args.extend([image, "sh", "-c", WORKLOAD_SCRIPT].map(String::from));
        args
    }
}

/// What one task of the workload reported about one secret file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReport {
    pub slot: String,
    pub target: String,
    /// `mode:uid:gid` as busybox stat prints it, empty if the file is missing.
    pub stat: String,
    pub bytes: Vec<u8>,
}

/// The workload's shell script: for every target in `$VB_TARGETS`, print one
/// `vb-result` line (slot, file mode and owner, content in hex), then idle
/// until stopped. Busybox `sh` is PID 1, so it traps TERM to stop promptly.
pub const WORKLOAD_SCRIPT: &str = r#"for t in $VB_TARGETS; do
  f=/run/secrets/$t
  echo "vb-result slot=$VB_SLOT target=$t stat=$(stat -c %a:%u:%g $f 2>/dev/null) hex=$(od -An -v -tx1 $f 2>/dev/null | tr -d ' \n')"
done
trap 'exit 0' TERM
sleep 86400 & wait"#;

/// Build the `docker stack deploy` service entry's command for [`WORKLOAD_SCRIPT`].
pub fn workload_compose_command() -> String {
    let script = WORKLOAD_SCRIPT.replace('$', "$$");
    serde_json::to_string(&["sh", "-c", &script]).expect("JSON")
}

/// One backend's part of the suite. Steps 2, 4 and 5 run once per backend
/// in the list the suite builds, so a backend joins the suite by supplying
/// one of these (its server started by its own harness module, reachable
/// from the host network, preferably by a host name added with
/// [`Session::add_host`]).
pub struct BackendCase {
    /// The provider's name in config.toml (and its `vaultbridge.provider`).
    pub provider: String,
    /// Its `[providers.<name>]` table.
    pub config_toml: String,
    /// Step 2: labels of a secret that exists, and its exact bytes.
    pub secret: Labels,
    pub expected: Vec<u8>,
    /// Step 4: a per-task secret (`vaultbridge.reuse=false` or a lease).
    pub per_task: Option<PerTaskCase>,
    /// Step 5: labels naming a secret the backend does not have, and what
    /// the plugin's log line about it must contain (besides the secret's
    /// name and the provider).
    pub missing: Labels,
    pub missing_reason: Vec<String>,
    /// Values that must never appear in the plugin's log.
    pub values: Vec<Vec<u8>>,
    /// `docker plugin set` environment settings it needs (`K=V`).
    pub settings: Vec<String>,
    /// Its server's handle, kept alive for the suite's duration.
    pub server: Option<Box<dyn std::any::Any>>,
}

pub type Labels = Vec<(String, String)>;

/// Label pairs from string slices.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct PerTaskCase {
    pub labels: Labels,
    /// `Some(bytes)`: every task gets these bytes (the backend has one value;
    /// the suite checks the plugin answered DoNotReuse for each task).
    /// `None`: the backend issues a value per call (a Vault lease), and the
    /// two tasks must receive different values.
    pub same_value: Option<Vec<u8>>,
}

pub struct Session {
    pub id: String,
    pub log: EngineLog,
    /// Scratch space: plugin build dirs, config mount, compose files, registry data.
    pub dir: tempfile::TempDir,
    swarm_initialised: bool,
    image: Option<String>,
    /// Other images built this run (removed on drop).
    images: Vec<String>,
    services: Vec<String>,
    stacks: Vec<String>,
    secrets: Vec<String>,
    plugins: Vec<String>,
    /// Plugin ids seen this run, for reading their logs after removal.
    pub plugin_ids: Vec<String>,
    registry: Option<Registry>,
    hosts_marker: Option<String>,
}

/// The name `docker plugin install --alias` gives; the suite refuses to run
/// when the engine already has it.
pub const ALIAS: &str = "vaultbridge";

impl Session {
    /// Check the engine may be used, then `docker swarm init`.
    pub fn begin() -> Session {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert_eq!(
            uid, "0",
            "the Docker suite needs root (it edits /etc/hosts and manages plugins)"
        );
        let state = docker_try(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .unwrap_or_else(|err| panic!("the Docker engine does not answer: {err}"));
        assert_eq!(
            state, "inactive",
            "this engine's swarm is '{state}'; the suite only runs on an engine whose swarm is \
             inactive, so that it can remove everything it creates (it will not touch an existing \
             swarm). Run it on a machine or VM of its own."
        );
        for name in [ALIAS, "vaultbridge:latest"] {
            if let Ok(id) = docker_try(&["plugin", "inspect", "-f", "{{.Id}}", name]) {
                panic!(
                    "a plugin named '{name}' ({id}) is already installed; the suite installs one \
                     under that alias and will not replace yours. Remove it first \
                     (docker plugin disable -f {name} && docker plugin rm {name})."
                );
            }
        }
        for tool in ["busybox", "docker-registry"] {
            assert!(
                which(tool).is_some(),
                "`{tool}` not found: run tests/setup.sh (installs busybox-static and docker-registry)"
            );
        }
        let log = EngineLog::locate();
        let mut session = Session {
            id: run_id(),
            log,
            dir: tempfile::Builder::new()
                .prefix("vaultbridge-docker-e2e.")
                .tempdir()
                .expect("tempdir"),
            swarm_initialised: false,
            image: None,
            images: Vec::new(),
            services: Vec::new(),
            stacks: Vec::new(),
            secrets: Vec::new(),
            plugins: Vec::new(),
            plugin_ids: Vec::new(),
            registry: None,
            hosts_marker: None,
        };
        docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        session.swarm_initialised = true;
        session
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The workload image: `FROM scratch` + Debian's static busybox.
    pub fn workload_image(&mut self) -> String {
        if let Some(image) = &self.image {
            return image.clone();
        }
        let tag = format!("vaultbridge-e2e-workload:{}", self.id);
        self.image = Some(tag.clone());
        build_workload_image(None, &self.path("workload-image"), &tag);
        tag
    }

    /// The rotation controller's image, built by
    /// `packaging/rotate/build-image.sh` from the binary under test.
    pub fn rotate_image(&mut self) -> String {
        let tag = format!("vaultbridge-e2e-rotate:{}", self.id);
        self.images.push(tag.clone());
        run_ok(
            "packaging/rotate/build-image.sh",
            Command::new(repo_root().join("packaging/rotate/build-image.sh"))
                .arg(crate::binary())
                .arg(&tag),
        );
        tag
    }

    /// `docker stack deploy -c FILE` with `env` for the file's variables.
    pub fn stack_deploy_file(&mut self, stack: &str, file: &Path, env: &[(&str, &str)]) {
        self.stacks.push(stack.to_string());
        run_ok(
            &format!("docker stack deploy -c {}", file.display()),
            Command::new("docker")
                .args([
                    "stack",
                    "deploy",
                    "--detach=true",
                    "--resolve-image",
                    "never",
                    "-c",
                ])
                .arg(file)
                .arg(stack)
                .envs(env.iter().copied()),
        );
    }

    /// `packaging/build-plugin.sh` (the documented offline path) with the
    /// binary under test; returns `name:tag`. Not enabled.
    pub fn build_plugin(&mut self, name: &str, tag: &str, sets: &[&str]) -> String {
        let plugin = format!("{name}:{tag}");
        let dir = self.path(&format!("plugin-{}", plugin.replace(['/', ':'], "_")));
        self.plugins.push(plugin.clone());
        build_plugin_at(None, &dir, name, tag, sets);
        self.note_plugin_id(&plugin);
        plugin
    }

    /// Record a plugin created some other way (install), for cleanup.
    pub fn track_plugin(&mut self, plugin: &str) {
        if !self.plugins.iter().any(|p| p == plugin) {
            self.plugins.push(plugin.to_string());
        }
        self.note_plugin_id(plugin);
    }

    pub fn forget_plugin(&mut self, plugin: &str) {
        self.plugins.retain(|p| p != plugin);
    }

    fn note_plugin_id(&mut self, plugin: &str) {
        if let Ok(id) = docker_try(&["plugin", "inspect", "-f", "{{.Id}}", plugin])
            && !self.plugin_ids.contains(&id)
        {
            self.plugin_ids.push(id);
        }
    }

    /// `docker plugin enable`. Right after a failed start the engine may
    /// still be removing the plugin's containerd container and answer "id
    /// already in use" (engine 20.10); that one answer is retried.
    pub fn enable_plugin(&self, plugin: &str) {
        poll(
            &format!("docker plugin enable {plugin}"),
            Duration::from_secs(60),
            || match docker_try(&["plugin", "enable", plugin]) {
                Ok(_) => Some(()),
                Err(err) if err.contains("id already in use") => None,
                Err(err) => panic!("{err}"),
            },
            || format!("the engine kept answering 'id already in use' for {plugin}"),
        );
    }

    pub fn plugin_id(&self, plugin: &str) -> String {
        docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", plugin])
    }

    /// Every line any of this run's plugins printed.
    pub fn all_plugin_lines(&self) -> Vec<String> {
        self.plugin_ids
            .iter()
            .flat_map(|id| self.log.plugin_lines(id))
            .collect()
    }

    /// `docker secret create --driver DRIVER --label k=v... NAME`.
    pub fn secret_create(&mut self, name: &str, driver: &str, labels: &[(String, String)]) {
        let mut args: Vec<String> = vec!["secret".into(), "create".into(), "--driver".into()];
        args.push(driver.into());
        for (key, value) in labels {
            args.push("--label".into());
            args.push(format!("{key}={value}"));
        }
        args.push(name.into());
        self.secrets.push(name.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args);
    }

    /// `docker service create --detach` of the workload.
    pub fn service_create(&mut self, spec: &ServiceSpec) {
        let image = self.workload_image();
        self.services.push(spec.name.clone());
        let args = spec.create_args(&image);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&args);
    }

    /// Record a service created some other way, for cleanup.
    pub fn track_service(&mut self, service: &str) {
        self.services.push(service.to_string());
    }

    /// `docker stack deploy` of a compose file's text.
    pub fn stack_deploy(&mut self, stack: &str, compose: &str) {
        let path = self.path(&format!("{stack}.yml"));
        std::fs::write(&path, compose).expect("write compose file");
        self.stacks.push(stack.to_string());
        let path = path.to_string_lossy().to_string();
        docker_ok(&[
            "stack",
            "deploy",
            "--detach=true",
            "--resolve-image",
            "never",
            "-c",
            &path,
            stack,
        ]);
    }

    /// The `vb-result` lines a service's tasks printed so far.
    pub fn reports(&self, service: &str) -> Vec<TaskReport> {
        service_reports(None, service)
    }

    /// Wait until the service's tasks printed reports for `slots` distinct
    /// slots; returns one report per slot (the latest).
    pub fn wait_reports(&self, service: &str, slots: usize, timeout: Duration) -> Vec<TaskReport> {
        poll(
            &format!("{slots} task(s) of {service} to report their secrets"),
            timeout,
            || {
                let mut by_slot: BTreeMap<String, TaskReport> = BTreeMap::new();
                for report in self.reports(service) {
                    by_slot.insert(format!("{}/{}", report.slot, report.target), report);
                }
                let distinct: std::collections::BTreeSet<&String> =
                    by_slot.values().map(|r| &r.slot).collect();
                (distinct.len() >= slots).then(|| by_slot.into_values().collect())
            },
            || self.describe_service(service),
        )
    }

    /// `docker service ps --no-trunc` as `state | error` lines.
    pub fn task_states(&self, service: &str) -> Vec<String> {
        docker_try(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Name}} | {{.DesiredState}} | {{.CurrentState}} | {{.Error}}",
            service,
        ])
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
    }

    /// Tasks, logs and the plugins' recent log, for failure messages.
    pub fn describe_service(&self, service: &str) -> String {
        let logs =
            docker_try(&["service", "logs", "--raw", "--no-trunc", service]).unwrap_or_else(|e| e);
        let plugin_log: Vec<String> = self.all_plugin_lines();
        let tail = plugin_log.len().saturating_sub(15);
        format!(
            "docker service ps {service}:\n{}\nservice logs:\n{}\nplugin log (last lines):\n{}",
            self.task_states(service).join("\n"),
            logs,
            plugin_log[tail..].join("\n")
        )
    }

    /// Start Debian's `docker-registry` on 127.0.0.1 with its own storage;
    /// returns `127.0.0.1:<port>` once `/v2/` answers.
    pub fn start_registry(&mut self) -> String {
        assert!(self.registry.is_none(), "one registry per session");
        let address = format!("127.0.0.1:{}", free_port());
        let registry = Registry::start(&self.path("registry"), &address, None);
        self.registry = Some(registry);
        address
    }

    /// Add `127.0.0.1 NAME` to /etc/hosts (removed on drop).
    pub fn add_host(&mut self, name: &str, ip: &str) {
        let marker = format!("# vaultbridge-e2e-{}", self.id);
        let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&format!("{ip} {name} {marker}\n"));
        self.hosts_marker = Some(marker);
        // Rewrite in place: /etc/hosts is often a bind mount, which a rename
        // would not update.
        std::fs::write("/etc/hosts", text).expect("write /etc/hosts");
    }

    fn cleanup(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let attempt = |problems: &mut Vec<String>, what: String, args: Vec<String>| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(err) = docker_try(&args) {
                problems.push(format!("{what}: {err}"));
            }
        };
        for stack in self.stacks.drain(..) {
            attempt(
                &mut problems,
                format!("remove stack {stack}"),
                vec!["stack".into(), "rm".into(), stack],
            );
        }
        for service in self.services.drain(..) {
            if docker_try(&["service", "inspect", &service]).is_ok() {
                attempt(
                    &mut problems,
                    format!("remove service {service}"),
                    vec!["service".into(), "rm".into(), service],
                );
            }
        }
        // A secret in use cannot be removed: wait for the tasks to go.
        let deadline = Instant::now() + Duration::from_secs(60);
        let secrets: Vec<String> = self.secrets.drain(..).collect();
        for secret in secrets {
            loop {
                match docker_try(&["secret", "rm", &secret]) {
                    Ok(_) => break,
                    Err(err) if err.contains("not found") || err.contains("No such") => break,
                    Err(err) if Instant::now() >= deadline => {
                        problems.push(format!("remove secret {secret}: {err}"));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(250)),
                }
            }
        }
        if self.swarm_initialised {
            attempt(
                &mut problems,
                "leave the swarm".into(),
                vec!["swarm".into(), "leave".into(), "--force".into()],
            );
            self.swarm_initialised = false;
        }
        for plugin in self.plugins.drain(..) {
            if docker_try(&["plugin", "inspect", &plugin]).is_err() {
                continue;
            }
            let _ = docker_try(&["plugin", "disable", "-f", &plugin]);
            if let Err(err) = docker_try(&["plugin", "rm", "-f", &plugin]) {
                problems.push(format!("remove plugin {plugin}: {err}"));
            }
        }
        let images: Vec<String> = self
            .image
            .take()
            .into_iter()
            .chain(self.images.drain(..))
            .collect();
        for image in images {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match docker_try(&["image", "rm", "-f", &image]) {
                    Ok(_) => break,
                    Err(err) if err.contains("No such image") => break,
                    Err(err) if Instant::now() >= deadline => {
                        problems.push(format!("remove image {image}: {err}"));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(250)),
                }
            }
        }
        // Its Drop stops it.
        self.registry = None;
        if let Some(marker) = self.hosts_marker.take()
            && let Ok(text) = std::fs::read_to_string("/etc/hosts")
        {
            let kept: String = text
                .lines()
                .filter(|line| !line.contains(&marker))
                .map(|line| format!("{line}\n"))
                .collect();
            if let Err(err) = std::fs::write("/etc/hosts", kept) {
                problems.push(format!("restore /etc/hosts: {err}"));
            }
        }
        problems
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let problems = self.cleanup();
        if !problems.is_empty() {
            // Not a panic: this may run while a failed step unwinds.
            eprintln!(
                "docker e2e cleanup could not remove everything:\n{}",
                problems.join("\n")
            );
        }
    }
}

/// The `vb-result` lines a service's tasks printed so far, read from the
/// manager at `host` (see [`docker_at`]).
pub fn service_reports(host: Option<&str>, service: &str) -> Vec<TaskReport> {
    let Ok(text) = docker_try_at(host, &["service", "logs", "--raw", "--no-trunc", service]) else {
        return Vec::new();
    };
    text.lines().filter_map(parse_report).collect()
}

/// `docker build` of the workload image (`FROM scratch` + Debian's static
/// busybox) as `tag` on the engine at `host`, from a build context laid out
/// in `context`. The legacy builder: BuildKit is not on every engine here.
pub fn build_workload_image(host: Option<&str>, context: &Path, tag: &str) {
    let busybox = which("busybox").expect("busybox");
    std::fs::create_dir_all(context).expect("mkdir");
    std::fs::copy(&busybox, context.join("busybox")).expect("copy busybox");
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\n",
    )
    .expect("write Dockerfile");
    let mut command = Command::new("docker");
    if let Some(host) = host {
        command.args(["-H", host]);
    }
    run_ok(
        "docker build of the workload image",
        command
            .args(["build", "-q", "-t", tag])
            .arg(context)
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_HOST"),
    );
}

/// `packaging/build-plugin.sh` with the binary under test, laid out in
/// `dir` and created as `name:tag` on the engine at `host` (not enabled).
pub fn build_plugin_at(host: Option<&str>, dir: &Path, name: &str, tag: &str, sets: &[&str]) {
    let mut command = Command::new(repo_root().join("packaging/build-plugin.sh"));
    command
        .arg("--binary")
        .arg(crate::binary())
        .args(["--name", name, "--tag", tag])
        .arg("--dir")
        .arg(dir);
    for kv in sets {
        command.args(["--set", kv]);
    }
    match host {
        // The script drives the `docker` CLI, which honours DOCKER_HOST.
        Some(host) => command.env("DOCKER_HOST", host),
        None => command.env_remove("DOCKER_HOST"),
    };
    run_ok("packaging/build-plugin.sh", &mut command);
}

/// Debian's `docker-registry` with storage of its own under `root`, stopped
/// (by PID) on drop.
pub struct Registry {
    child: Child,
    /// `host:port` it listens on.
    pub address: String,
    root: PathBuf,
}

impl Registry {
    /// Serve on `address` (`ip:port`); with `netns`, inside that network
    /// namespace (`ip netns exec`), where only its own peers reach it.
    /// Returns once `/v2/` answers.
    pub fn start(root: &Path, address: &str, netns: Option<&str>) -> Registry {
        std::fs::create_dir_all(root.join("data")).expect("mkdir registry");
        let config = root.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {address}\n",
                root.join("data").display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(root.join("registry.log")).expect("registry log");
        let binary = which("docker-registry").expect("docker-registry");
        let mut command = match netns {
            Some(netns) => {
                let mut ip = Command::new("ip");
                ip.args(["netns", "exec", netns]).arg(binary);
                ip
            }
            None => Command::new(binary),
        };
        let child = command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let registry = Registry {
            child,
            address: address.to_string(),
            root: root.to_path_buf(),
        };
        poll(
            "the local registry to answer /v2/",
            Duration::from_secs(20),
            || (registry.v2_status(netns) == Some(200)).then_some(()),
            || std::fs::read_to_string(root.join("registry.log")).unwrap_or_default(),
        );
        registry
    }

    /// The status of `GET /v2/`: from here, or with curl inside `netns`
    /// (this process cannot reach an address that exists only there).
    fn v2_status(&self, netns: Option<&str>) -> Option<u16> {
        let Some(netns) = netns else {
            return http_get_status(&self.address, "/v2/");
        };
        let output = Command::new("ip")
            .args(["netns", "exec", netns, "curl", "-s", "-o", "/dev/null"])
            .args(["-w", "%{http_code}", "--max-time", "2"])
            .arg(format!("http://{}/v2/", self.address))
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    }

    /// Its log (for failure reports).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_report(line: &str) -> Option<TaskReport> {
    let rest = line.trim().strip_prefix("vb-result ")?;
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for part in rest.split(' ') {
        let (key, value) = part.split_once('=')?;
        fields.insert(key, value);
    }
    let hex = fields.get("hex")?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(TaskReport {
        slot: fields.get("slot")?.to_string(),
        target: fields.get("target")?.to_string(),
        stat: fields.get("stat").copied().unwrap_or_default().to_string(),
        bytes,
    })
}

/// Find an executable on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A plain HTTP GET sent to `address`, its answer still to read.
fn http_get(address: &str, path: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    Some(stream)
}

/// Status of a plain HTTP GET, or None if nothing answers.
pub fn http_get_status(address: &str, path: &str) -> Option<u16> {
    let mut head = [0u8; 12];
    http_get(address, path)?.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Run `command`, panicking with its output (naming `what` failed) unless
/// it succeeds.
fn run_ok(what: &str, command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A plain HTTP GET's body (for the registry's catalog).
pub fn http_get_body(address: &str, path: &str) -> Option<String> {
    let mut raw = String::new();
    http_get(address, path)?.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_msg_unescapes() {
        let line = r#"time="x" level=error msg="a \"b\" c=\\d" plugin=abc"#;
        assert_eq!(logfmt_msg(line).as_deref(), Some(r#"a "b" c=\d"#));
        assert_eq!(logfmt_msg("no message here"), None);
    }

    #[test]
    fn parses_workload_reports() {
        let report = parse_report("vb-result slot=3 target=app stat=400:123:0 hex=610a00").unwrap();
        assert_eq!(report.slot, "3");
        assert_eq!(report.target, "app");
        assert_eq!(report.stat, "400:123:0");
        assert_eq!(report.bytes, b"a\n\0");
        let missing = parse_report("vb-result slot=1 target=x stat= hex=").unwrap();
        assert!(missing.bytes.is_empty() && missing.stat.is_empty());
        assert_eq!(parse_report("other output"), None);
    }
}
