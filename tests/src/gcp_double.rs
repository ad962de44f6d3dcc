//! The Google Cloud Secret Manager test double
//! (`tests/gcp-double/secretmanager_double.py`): Secret Manager's access
//! call, the service account JWT grant, the STS token exchange and the
//! metadata server, on one plain-HTTP loopback port (clients are pointed at
//! it with endpoint overrides; the provider allows plain http to loopback
//! only).
//!
//! Service account keys are real RSA keys made here with the openssl CLI;
//! the double learns only their public modulus. One double serves all the
//! tests of a test binary that overlap in time (tests seed their own
//! projects, identities and secrets, with unique names); it is stopped by
//! PID when the last [`GcpDouble`] handle drops, and exits by itself if this
//! process dies (it watches its stdin).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::docker::repo_root;
use crate::wait_until;

static SHARED: Mutex<Weak<Running>> = Mutex::new(Weak::new());
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A handle on the running double; cheap to clone, stops it when the last drops.
#[derive(Clone)]
pub struct GcpDouble {
    running: Arc<Running>,
}

struct Running {
    child: Mutex<Option<Child>>,
    /// Closing it tells the double to exit, should the kill be missed.
    _stdin: Mutex<Option<ChildStdin>>,
    port: u16,
    control_port: u16,
    dir: tempfile::TempDir,
}

/// The `.venv-test` interpreter when tests/setup.sh made one (Google's
/// Python client is there), else python3 on PATH.
pub fn python() -> PathBuf {
    let venv = repo_root().join(".venv-test/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

impl Running {
    fn start() -> Running {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready = dir.path().join("ready.json");
        let script = repo_root().join("tests/gcp-double/secretmanager_double.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start the GCP double with {} ({err}); run tests/setup.sh",
                    python().display()
                )
            });
        let stdin = child.stdin.take();
        if !wait_until(Duration::from_secs(15), || ready.exists()) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the GCP double did not start within 15 s");
        }
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(&ready).expect("read ready file"))
                .expect("ready file is JSON");
        let port = |key: &str| info[key].as_u64().expect("port in ready file") as u16;
        let (port, control_port) = (port("port"), port("control_port"));
        if !wait_until(Duration::from_secs(10), || {
            control(control_port, "GET", "/ready", None).is_ok()
        }) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the GCP double's control port did not answer");
        }
        Running {
            child: Mutex::new(Some(child)),
            _stdin: Mutex::new(stdin),
            port,
            control_port,
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
    }
}

/// A plain HTTP/1.1 request to the double's control listener (not a Google API).
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
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("control {path}: {head}")));
    }
    serde_json::from_str(body).map_err(std::io::Error::other)
}

fn openssl(args: &[&str], what: &str) -> String {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run openssl ({err}); run tests/setup.sh"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("openssl output is text")
}

/// A service account's key file, as IAM gives it.
pub struct ServiceAccount {
    pub email: String,
    pub key_file: PathBuf,
    /// The PKCS#8 private key (PEM), for leak checks.
    pub private_key: String,
}

impl GcpDouble {
    /// The running double, started if no test holds it.
    pub fn start() -> GcpDouble {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(running) = shared.upgrade() {
            return GcpDouble { running };
        }
        let running = Arc::new(Running::start());
        *shared = Arc::downgrade(&running);
        GcpDouble { running }
    }

    /// `http://127.0.0.1:<port>`: Secret Manager, the token endpoints and
    /// the metadata server.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.running.port)
    }

    pub fn port(&self) -> u16 {
        self.running.port
    }

    /// The STS token exchange endpoint.
    pub fn sts_url(&self) -> String {
        format!("{}/v1/token", self.url())
    }

    /// The OAuth token endpoint (the JWT grant).
    pub fn token_uri(&self) -> String {
        format!("{}/token", self.url())
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
            .unwrap_or_else(|err| panic!("GCP double control {method} {path}: {err}"))
    }

    /// A project id and its number: names in answers carry the number.
    pub fn add_project(&self, id: &str, number: u64) {
        self.control(
            "PUT",
            &format!("/projects/{id}"),
            Some(&json!({"number": number})),
        );
    }

    /// A service account with a new RSA key; its key file is written in
    /// [`Self::dir`] (`token_uri` pointing at the double).
    pub fn add_service_account(&self, name: &str, project: &str) -> ServiceAccount {
        let email = format!("{name}@{project}.iam.gserviceaccount.com");
        let pem_path = self.dir().join(format!("{name}.pem"));
        let pem_arg = pem_path.to_str().expect("utf-8 path");
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                pem_arg,
            ],
            "openssl genpkey",
        );
        let modulus = openssl(
            &["rsa", "-in", pem_arg, "-noout", "-modulus"],
            "openssl rsa -modulus",
        );
        let n_hex = modulus
            .trim()
            .strip_prefix("Modulus=")
            .expect("openssl prints Modulus=");
        let key_id = format!("{:040x}", UNIQUE.fetch_add(1, Ordering::Relaxed) + 1);
        self.control(
            "PUT",
            &format!("/service-accounts/{email}"),
            Some(&json!({"n_hex": n_hex, "e": 65537, "key_id": key_id})),
        );
        let private_key = std::fs::read_to_string(&pem_path).expect("read key");
        let key_file = self.dir().join(format!("{name}.json"));
        let key = json!({
            "type": "service_account",
            "project_id": project,
            "private_key_id": key_id,
            "private_key": private_key,
            "client_email": email,
            "client_id": "104729",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        });
        std::fs::write(&key_file, key.to_string()).expect("write key file");
        ServiceAccount {
            email,
            key_file,
            private_key,
        }
    }

    /// A workload identity pool provider accepting `subject_token` for
    /// `subject`; returns its audience.
    pub fn add_pool(
        &self,
        project_number: u64,
        pool: &str,
        subject_token: &str,
        subject: &str,
    ) -> String {
        let audience = format!(
            "//iam.googleapis.com/projects/{project_number}/locations/global/workloadIdentityPools/{pool}/providers/oidc"
        );
        self.control(
            "PUT",
            "/pools",
            Some(
                &json!({"audience": audience, "subject_token": subject_token, "subject": subject}),
            ),
        );
        audience
    }

    /// The principal of a federated workload (for secret accessors).
    pub fn principal(audience: &str, subject: &str) -> String {
        let pool = audience
            .strip_prefix("//iam.googleapis.com/")
            .and_then(|a| a.rsplit_once("/providers/"))
            .map(|(pool, _)| pool)
            .expect("an audience");
        format!("principal://iam.googleapis.com/{pool}/subject/{subject}")
    }

    /// An external-account (workload identity federation) credential file
    /// whose subject token is read from `token_file`.
    pub fn external_account_file(&self, name: &str, audience: &str, token_file: &Path) -> PathBuf {
        let path = self.dir().join(format!("{name}.json"));
        let file = json!({
            "type": "external_account",
            "audience": audience,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": self.sts_url(),
            "credential_source": {"file": token_file.display().to_string(), "format": {"type": "text"}},
            "universe_domain": "googleapis.com",
        });
        std::fs::write(&path, file.to_string()).expect("write credential file");
        path
    }

    /// The metadata server's service account (`None`: no account attached,
    /// its token path answers 404) and the status its token path answers.
    pub fn set_metadata(&self, email: Option<&str>, status: u16) {
        self.control(
            "PUT",
            "/metadata",
            Some(&json!({"email": email, "status": status})),
        );
    }

    /// Add a version (returns its number); `location` for a regional secret.
    pub fn add_version(
        &self,
        project: &str,
        location: Option<&str>,
        secret: &str,
        value: &[u8],
    ) -> u64 {
        self.put_secret(
            project,
            location,
            secret,
            json!({"value_b64": base64::engine::general_purpose::STANDARD.encode(value)}),
        )
    }

    /// Create or change a secret: `value_b64` (adds a version) with an
    /// optional `alias`, `accessors` (the identities allowed; absent: all),
    /// `throttle` (that many 429s first), `retry_after`, `unavailable`
    /// (that many 503s first). Returns the new version's number, or 0.
    pub fn put_secret(
        &self,
        project: &str,
        location: Option<&str>,
        secret: &str,
        mut body: Value,
    ) -> u64 {
        body["project"] = json!(project);
        body["location"] = json!(location);
        body["secret"] = json!(secret);
        self.control("PUT", "/secrets", Some(&body))["version"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Set a version's state: `ENABLED`, `DISABLED` or `DESTROYED`.
    pub fn set_state(
        &self,
        project: &str,
        location: Option<&str>,
        secret: &str,
        version: u64,
        state: &str,
    ) {
        self.control(
            "PUT",
            "/state",
            Some(
                &json!({"project": project, "location": location, "secret": secret,
                         "version": version, "state": state}),
            ),
        );
    }

    /// Stop the double's server now (a backend that went down): later
    /// requests find nothing listening. Every handle then sees it stopped.
    pub fn stop_server(&self) {
        if let Some(mut child) = self.running.child.lock().ok().and_then(|mut c| c.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Counters: `tokens` issued per kind (`jwt_grant`, `self_signed`,
    /// `sts`, `metadata`), `token_errors`, `unauthenticated`, and `access`
    /// per `<project number>/<location or ->/<secret>`.
    pub fn stats(&self) -> Value {
        self.control("GET", "/stats", None)
    }

    /// Access calls that reached the double for one secret.
    pub fn accesses(&self, project_number: u64, location: Option<&str>, secret: &str) -> u64 {
        let key = format!("{project_number}/{}/{secret}", location.unwrap_or("-"));
        self.stats()["access"][&key].as_u64().unwrap_or(0)
    }
}
