//! The Azure Key Vault test double (`tests/azure-double/keyvault_double.py`),
//! served over TLS under real-looking vault names.
//!
//! The official SDK only sends a token to a vault whose authentication
//! challenge names the vault's own domain (`*.vault.azure.net`), and we keep
//! that check on. So the double is reached as `vbtest.vault.azure.net` and
//! `vbtest2.vault.azure.net` through an `/etc/hosts` line the harness adds
//! (tagged with a marker and this process's PID) and removes when the last
//! user drops it. The token endpoint (the authority host) is
//! `https://127.0.0.1:<port>`. The certificate is a leaf signed by a test CA
//! generated here with the openssl CLI; clients trust it through the
//! provider's `ca_file` (or `SSL_CERT_FILE`), never through system trust.
//!
//! One double serves all the tests of a test binary that overlap in time
//! (tests seed their own tenants, clients and secrets, with unique names); it
//! is stopped by PID when the last [`AzureDouble`] handle drops, and exits by
//! itself if this process dies (it watches its stdin).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use crate::docker::repo_root;
use crate::wait_until;

/// The vault names the double answers to (the first DNS label picks the vault).
pub const VAULTS: [&str; 2] = ["vbtest", "vbtest2"];
const VAULT_DOMAIN: &str = "vault.azure.net";
const HOSTS_FILE: &str = "/etc/hosts";
const HOSTS_MARKER: &str = "# vaultbridge-tests azure double pid=";

static SHARED: Mutex<Weak<Running>> = Mutex::new(Weak::new());
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A handle on the running double; cheap to clone, stops it when the last drops.
#[derive(Clone)]
pub struct AzureDouble {
    running: Arc<Running>,
}

struct Running {
    child: Mutex<Option<Child>>,
    /// Closing it tells the double to exit, should the kill be missed.
    _stdin: Mutex<Option<ChildStdin>>,
    tls_port: u16,
    control_port: u16,
    ca_file: PathBuf,
    dir: tempfile::TempDir,
}

/// The `.venv-test` interpreter when tests/setup.sh made one, else python3
/// on PATH (the double uses the standard library only).
fn python() -> PathBuf {
    let venv = repo_root().join(".venv-test/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|err| {
        panic!(
            "{what}: cannot run {:?} ({err}); run tests/setup.sh",
            command.get_program()
        )
    });
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A test CA and a leaf for the vault names and 127.0.0.1 (ECDSA P-256:
/// fast to generate; rustls refuses a self-signed leaf used as its own CA).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_string();
    let sans: Vec<String> = VAULTS
        .iter()
        .map(|v| format!("DNS:{v}.{VAULT_DOMAIN}"))
        .chain(["IP:127.0.0.1".to_string()])
        .collect();
    std::fs::write(
        dir.join("leaf.ext"),
        format!(
            "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            sans.join(",")
        ),
    )
    .expect("write leaf.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.pem"),
                "-days",
                "2",
            ])
            .args(["-subj", "/CN=vaultbridge test CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        "openssl (test CA)",
    );
    run(
        Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-keyout", &path("leaf.key"), "-out", &path("leaf.csr")])
            .args(["-subj", &format!("/CN={}.{VAULT_DOMAIN}", VAULTS[0])]),
        "openssl (leaf request)",
    );
    run(
        Command::new("openssl")
            .args(["x509", "-req", "-in", &path("leaf.csr")])
            .args([
                "-CA",
                &path("ca.pem"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
            ])
            .args([
                "-out",
                &path("leaf.pem"),
                "-days",
                "2",
                "-extfile",
                &path("leaf.ext"),
            ]),
        "openssl (leaf)",
    );
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

/// Add `127.0.0.1 vbtest.vault.azure.net ...` for this process, dropping
/// lines left by dead test processes. Rewritten in place: /etc/hosts may be
/// a bind mount.
fn hosts_add() {
    let pid = std::process::id();
    edit_hosts(|lines| {
        lines.retain(|line| match marker_pid(line) {
            Some(owner) => owner != pid && Path::new(&format!("/proc/{owner}")).exists(),
            None => true,
        });
        let names: Vec<String> = VAULTS
            .iter()
            .map(|v| format!("{v}.{VAULT_DOMAIN}"))
            .collect();
        lines.push(format!("127.0.0.1 {} {HOSTS_MARKER}{pid}", names.join(" ")));
    });
}

fn hosts_remove() {
    let pid = std::process::id();
    edit_hosts(|lines| lines.retain(|line| marker_pid(line) != Some(pid)));
}

fn marker_pid(line: &str) -> Option<u32> {
    line.split_once(HOSTS_MARKER)?.1.trim().parse().ok()
}

fn edit_hosts(change: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(HOSTS_FILE).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    change(&mut lines);
    let mut new = lines.join("\n");
    new.push('\n');
    if new != text {
        std::fs::write(HOSTS_FILE, new).unwrap_or_else(|err| {
            panic!("cannot edit {HOSTS_FILE} ({err}): the Azure suite runs as root, to reach the double as *.{VAULT_DOMAIN}")
        });
    }
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_file, cert, key) = make_certificates(dir.path());
        let ready = dir.path().join("ready.json");
        let script = repo_root().join("tests/azure-double/keyvault_double.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start the Azure double with {} ({err}); run tests/setup.sh",
                    python().display()
                )
            });
        let stdin = child.stdin.take();
        let started = wait_until(Duration::from_secs(15), || ready.exists());
        if !started {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Azure double did not start within 15 s");
        }
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(&ready).expect("read ready file"))
                .expect("ready file is JSON");
        let port = |key: &str| info[key].as_u64().expect("port in ready file") as u16;
        let (tls_port, control_port) = (port("tls_port"), port("control_port"));
        let answered = wait_until(Duration::from_secs(10), || {
            control(control_port, "GET", "/ready", None).is_ok()
        });
        if !answered {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Azure double's control port did not answer");
        }
        // Nothing may panic from here on: `start` holds SHARED, which the
        // drop of a half-built `Running` would take again.
        hosts_add();
        Running {
            child: Mutex::new(Some(child)),
            _stdin: Mutex::new(stdin),
            tls_port,
            control_port,
            ca_file,
            dir,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().ok().and_then(|mut c| c.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Under the lock `start` holds while it adds the line: a double
        // started meanwhile by another test keeps the (shared) hosts line.
        let shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shared.upgrade().is_none() {
            hosts_remove();
        }
    }
}

/// A plain HTTP/1.1 request to the double's control listener (not an Azure API).
fn control(port: u16, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("control {path}: {head}")));
    }
    serde_json::from_str(body).map_err(std::io::Error::other)
}

impl AzureDouble {
    /// The running double, started if no test holds it.
    pub fn start() -> AzureDouble {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(running) = shared.upgrade() {
            return AzureDouble { running };
        }
        let running = Arc::new(Running::start());
        *shared = Arc::downgrade(&running);
        AzureDouble { running }
    }

    /// `https://<vault>.vault.azure.net:<port>`; `vault` is one of [`VAULTS`].
    pub fn vault_url(&self, vault: &str) -> String {
        assert!(VAULTS.contains(&vault), "the double serves {VAULTS:?}");
        format!("https://{vault}.{VAULT_DOMAIN}:{}", self.running.tls_port)
    }

    /// The token endpoint's base: `https://127.0.0.1:<port>`.
    pub fn authority_host(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.tls_port)
    }

    pub fn tls_port(&self) -> u16 {
        self.running.tls_port
    }

    /// The test CA (PEM) that signed the double's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.running.ca_file
    }

    /// A scratch directory that lives as long as the double.
    pub fn dir(&self) -> &Path {
        self.running.dir.path()
    }

    /// A name no other test of this process uses (`<prefix>-<pid>-<n>`).
    pub fn unique(prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        control(self.running.control_port, method, path, body)
            .unwrap_or_else(|err| panic!("Azure double control {method} {path}: {err}"))
    }

    /// Register an app (service principal) with a client secret; its tokens
    /// live `token_lifetime` seconds.
    pub fn add_client(&self, tenant: &str, client_id: &str, secret: &str, token_lifetime: u64) {
        self.control(
            "PUT",
            &format!("/clients/{tenant}/{client_id}"),
            Some(&json!({"secret": secret, "token_lifetime": token_lifetime})),
        );
    }

    /// Make the token endpoint answer the next `count` token requests of
    /// this (already registered) app with 429 + `Retry-After: 1`.
    pub fn throttle_token_endpoint(&self, tenant: &str, client_id: &str, secret: &str, count: u32) {
        self.control(
            "PUT",
            &format!("/clients/{tenant}/{client_id}"),
            Some(&json!({"secret": secret, "token_throttle": count})),
        );
    }

    /// Register an app with a federated credential: `assertion` is the
    /// service account token it accepts (workload identity).
    pub fn add_federated_client(&self, tenant: &str, client_id: &str, assertion: &str) {
        self.control(
            "PUT",
            &format!("/clients/{tenant}/{client_id}"),
            Some(&json!({"assertion": assertion})),
        );
    }

    /// Add a version to a secret; returns its version id.
    pub fn add_version(&self, vault: &str, name: &str, value: &str) -> String {
        self.put_secret(vault, name, json!({"value": value}))
    }

    /// Create or change a secret: `value` (adds a version), `version`,
    /// `enabled`, `denied` (403 for everyone), `throttle` (that many 429s
    /// first) and `retry_after` (seconds, default 1).
    pub fn put_secret(&self, vault: &str, name: &str, body: Value) -> String {
        let answer = self.control(
            "PUT",
            &format!("/vaults/{vault}/secrets/{name}"),
            Some(&body),
        );
        answer["version"].as_str().unwrap_or_default().to_string()
    }

    /// Stop the double's server now (a vault that went down), keeping its
    /// host names: later requests find nothing listening. Every handle
    /// then sees a stopped double.
    pub fn stop_server(&self) {
        if let Some(mut child) = self.running.child.lock().ok().and_then(|mut c| c.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Counters: `tokens_issued` per client id, `token_errors`, `challenges`,
    /// `expired_tokens`, `bad_tokens`, `secret_gets` and `throttled` per
    /// `vault/name`.
    pub fn stats(&self) -> Value {
        self.control("GET", "/stats", None)
    }
}
