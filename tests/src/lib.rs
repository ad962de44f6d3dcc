//! Harness for the end-to-end suites: start the real `vaultbridge` binary on
//! a temporary Unix socket and speak raw HTTP/1.1 to it, as dockerd does.
//!
//! Backends used by the suites (OpenBao, moto, the Azure double, Docker,
//! Prometheus) have their own modules; each starts its server, polls until
//! it is ready and stops it by PID on drop. [`proxy`] puts a hung, lossy or
//! throttling peer in front of any of them; [`conformance`] is the one
//! suite every provider runs, each backend supplying a fixture; [`swarm`]
//! is a real three-manager swarm on this machine, in network namespaces.

pub mod azure_double;
pub mod conformance;
pub mod docker;
pub mod gcp_double;
pub mod moto;
pub mod openbao;
pub mod prometheus;
pub mod proxy;
pub mod swarm;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test: `$VAULTBRIDGE_BIN` (what `tests/run` sets, the
/// static release build that also goes into the Docker plugin), else the
/// workspace's debug build next to this test executable.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("VAULTBRIDGE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/vaultbridge
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("vaultbridge"))
        .expect("test executable lives under target/");
    assert!(
        candidate.exists(),
        "{} not found: run `cargo build -p vaultbridge --all-features` or set VAULTBRIDGE_BIN",
        candidate.display()
    );
    candidate
}

/// Poll `ready` every 20 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `vaultbridge serve`, stopped (SIGKILL) on drop.
pub struct Plugin {
    child: Option<Child>,
    pub socket: PathBuf,
    log_path: PathBuf,
    /// Holds the socket, log and config files.
    pub dir: tempfile::TempDir,
    /// When the process was spawned, for start-up latency checks.
    pub started: Instant,
}

/// One HTTP answer from the plugin.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The decoded `Value` of a GetSecret answer; panics with the `Err` otherwise.
    pub fn value(&self) -> Vec<u8> {
        use base64::Engine as _;
        let json = self.json();
        let value = json["Value"]
            .as_str()
            .unwrap_or_else(|| panic!("no Value in answer: {json}"));
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .expect("Value is standard base64")
    }

    /// The `Err` of a GetSecret answer ("" when absent).
    pub fn err(&self) -> String {
        self.json()["Err"].as_str().unwrap_or_default().to_string()
    }
}

impl Plugin {
    /// Start `vaultbridge serve` with an optional TOML config and extra
    /// environment, and wait until the socket answers.
    pub fn start(config: Option<&str>, env: &[(&str, &str)]) -> Plugin {
        let plugin = Self::spawn(config, env, &[]);
        let answered = wait_until(Duration::from_secs(10), || {
            plugin.try_request("POST", "/Plugin.Activate", b"").is_ok()
        });
        assert!(answered, "plugin did not answer; log:\n{}", plugin.log());
        plugin
    }

    /// Spawn without waiting (for start-up and failure tests).
    pub fn spawn(config: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Plugin {
        Self::spawn_after(None, config, env, args)
    }

    /// Spawn through `sh -c '<setup>; exec vaultbridge serve ...'`, e.g.
    /// `ulimit -n 40` or `umask 000`. `exec` keeps one process (the PID we
    /// signal and kill is the plugin's).
    pub fn spawn_in_shell(
        setup: &str,
        config: Option<&str>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Plugin {
        Self::spawn_after(Some(setup), config, env, args)
    }

    fn spawn_after(
        setup: Option<&str>,
        config: Option<&str>,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Plugin {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("vaultbridge.sock");
        let log_path = dir.path().join("plugin.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = match setup {
            None => Command::new(binary()),
            Some(setup) => {
                let mut sh = Command::new("sh");
                // "$0" is the binary, "$@" the arguments added below.
                sh.arg("-c")
                    .arg(format!("{setup}; exec \"$0\" \"$@\""))
                    .arg(binary());
                sh
            }
        };
        command
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("VAULTBRIDGE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        if let Some(text) = config {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, text).expect("write config");
            command.arg("--config").arg(path);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let started = Instant::now();
        let child = command.spawn().expect("spawn vaultbridge");
        Plugin {
            child: Some(child),
            socket,
            log_path,
            dir,
            started,
        }
    }

    /// The plugin's process id (while it has not been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Everything the plugin has logged so far (stdout and stderr). `serve` writes its log from
    /// a queue (a line reaches the file a few milliseconds after its
    /// request is answered): first wait until the plugin reports nothing
    /// left to write (`vaultbridge_log_queue_bytes` 0), unless it does not
    /// answer within a second (it has exited and wrote what it had, or it
    /// is not accepting connections: then the file is read as it is).
    pub fn log(&self) -> String {
        wait_until(Duration::from_secs(5), || {
            let probe =
                raw_request_within(&self.socket, "GET", "/metrics", b"", Duration::from_secs(1));
            let Ok(answer) = probe else {
                return true;
            };
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            // Not a plugin with the queue (or not answering metrics): read as is.
            let Some(line) = text
                .lines()
                .find(|l| l.starts_with("vaultbridge_log_queue_bytes "))
            else {
                return true;
            };
            line.ends_with(" 0")
        });
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Answer {
        self.try_request(method, path, body)
            .unwrap_or_else(|err| panic!("request {path} failed: {err}; log:\n{}", self.log()))
    }

    /// One request on a fresh connection, shaped like dockerd's.
    pub fn try_request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Answer> {
        raw_request(&self.socket, method, path, body)
    }

    pub fn get_secret(&self, request: &Value) -> Answer {
        self.request(
            "POST",
            "/SecretProvider.GetSecret",
            request.to_string().as_bytes(),
        )
    }

    /// The value of one series in `GET /metrics` on the socket, written as
    /// in the text (`vaultbridge_cache_entries`, `name{provider="x"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = String::from_utf8(self.request("GET", "/metrics", b"").body).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    /// Send SIGTERM and wait up to `timeout` for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal_term();
        self.wait_exit(timeout)
    }

    /// Send SIGTERM without waiting for the process to exit.
    pub fn signal_term(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Wait up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw HTTP/1.1 request over a Unix socket, with dockerd's headers.
pub fn raw_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Answer> {
    raw_request_within(socket, method, path, body, Duration::from_secs(60))
}

/// [`raw_request`], failing when no answer comes within `timeout`.
pub fn raw_request_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nUser-Agent: Go-http-client/1.1\r\n\
         Accept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // The server may answer (413) and close before reading an oversized
    // body; the answer is still there to read.
    let written = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    if let Err(err) = written
        && err.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(err);
    }
    read_answer(&mut stream)
}

/// Read one answer from a connection the server closes after replying.
pub fn read_answer(stream: &mut UnixStream) -> std::io::Result<Answer> {
    // After an early answer (413 before the body was read) Linux reports
    // ECONNRESET once the answer has been read, where a normal close gives EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {
                break;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    parse_response(&raw)
}

/// Split a raw HTTP/1.1 answer (read to the end) into status, headers, body.
pub(crate) fn parse_response(raw: &[u8]) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// A GetSecret body shaped like the engine's (every field it sends).
pub fn engine_request(secret_name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    json!({
        "SecretName": secret_name,
        "SecretLabels": labels,
        "ServiceHostname": "{{.Service.Name}}-{{.Task.Slot}}",
        "ServiceID": "k3fz2yq8e0v1",
        "ServiceName": "st_api",
        "ServiceLabels": {"com.docker.stack.namespace": "st"},
        "TaskID": "x9q1w2e3r4t5",
        "TaskName": "st_api.2.x9q1w2e3r4t5",
        "TaskImage": "repo/api:1.4@sha256:0123",
        "NodeID": "n7c0a1b2c3d4",
        "ServiceEndpointSpec": {"Mode": 1, "Ports": [{"Name": "http", "Protocol": 0,
            "TargetPort": 8080, "PublishedPort": 80, "PublishMode": 1}]}
    })
}

/// Fail if any of `values` appears anywhere in `log`.
pub fn assert_log_has_no_values(log: &str, values: &[&[u8]]) {
    for value in values {
        let text = String::from_utf8_lossy(value);
        assert!(
            !log.contains(text.as_ref()),
            "the plugin log contains a secret value ({} bytes)",
            value.len()
        );
    }
}

/// `vaultbridge check --config <file>` with a cleared environment plus `env`.
pub fn check_cli(config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run vaultbridge check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
