//! A real `moto_server` (moto's AWS emulator) for the `aws` suites.
//!
//! [`Moto::start`] picks a free port on 127.0.0.1, starts
//! `moto_server -H 127.0.0.1 -p <port>` (from `<repo>/.venv-test/bin` or
//! `PATH`; `tests/setup.sh` installs it), polls until it answers, and kills
//! it by PID on drop — also when a test panics.
//!
//! Seeding uses raw HTTP, as the AWS CLI would send it: Secrets Manager's
//! JSON protocol (`X-Amz-Target: secretsmanager.<Action>`) and IAM's query
//! protocol. moto routes a request by the service and region named in the
//! `Authorization` header's credential scope, so every request carries one;
//! the signature itself is only checked when credential checks are on
//! ([`Moto::start_with_auth`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::docker::{free_port, repo_root};
use crate::wait_until;

/// The account moto puts resources in.
pub const ACCOUNT: &str = "123456789012";

/// `moto_server` from the repository's test venv, else from `PATH`.
pub fn moto_server_binary() -> PathBuf {
    let local = repo_root().join(".venv-test/bin/moto_server");
    if local.is_file() {
        return local;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("moto_server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "moto_server is neither at {} nor on PATH: run tests/setup.sh \
             (it installs moto[server] into .venv-test)",
            local.display()
        )
    })
}

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    /// `http://127.0.0.1:<port>`: the endpoint to give the SDK.
    pub endpoint: String,
    dir: tempfile::TempDir,
}

/// What moto answered: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("moto's answer is not JSON ({err}): {}", self.body))
    }
}

/// A secret moto created.
#[derive(Debug, Clone)]
pub struct Created {
    /// The full ARN, with moto's 6-character suffix.
    pub arn: String,
    pub version_id: String,
}

impl Created {
    /// The ARN without the random suffix (a "partial ARN").
    pub fn partial_arn(&self) -> &str {
        let (head, suffix) = self.arn.rsplit_once('-').expect("an ARN with a suffix");
        assert_eq!(suffix.len(), 6, "moto's ARN suffix: {}", self.arn);
        head
    }
}

impl Moto {
    /// Start moto with credential checks off (any key is accepted).
    pub fn start() -> Moto {
        Self::start_with_env(&[])
    }

    /// Start moto with credential checks on after the first `setup_actions`
    /// AWS calls (moto's `INITIAL_NO_AUTH_ACTION_COUNT`): the harness makes
    /// exactly that many calls to create users, keys and secrets, and every
    /// call after them needs a key of a moto IAM user and a valid signature.
    pub fn start_with_auth(setup_actions: u32) -> Moto {
        Self::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", &setup_actions.to_string())])
    }

    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let binary = moto_server_binary();
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let log_path = dir.path().join("moto.log");
            let log = std::fs::File::create(&log_path).expect("moto log file");
            let port = free_port();
            let mut command = Command::new(&binary);
            command
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("moto log file"))
                .stderr(log);
            for (key, value) in env {
                command.env(key, value);
            }
            let child = command
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
            let mut moto = Moto {
                child: Some(child),
                port,
                endpoint: format!("http://127.0.0.1:{port}"),
                dir,
            };
            let mut exited = false;
            let ready = wait_until(Duration::from_secs(60), || {
                if let Some(child) = moto.child.as_mut() {
                    exited = matches!(child.try_wait(), Ok(Some(_)));
                }
                exited || moto.is_ready()
            });
            if ready && !exited {
                return moto;
            }
            last_log = moto.log();
            moto.stop();
            if !exited {
                break; // it ran but never answered: retrying will not help
            }
        }
        panic!("moto_server did not become ready; its log:\n{last_log}");
    }

    /// moto's own dashboard answers once the server is up; it is not an AWS
    /// action, so it does not use up `INITIAL_NO_AUTH_ACTION_COUNT`.
    fn is_ready(&self) -> bool {
        matches!(
            http(self.port, "GET", "/moto-api/", &[], b""),
            Ok(reply) if reply.status == 200
        )
    }

    /// Everything moto logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Kill the server now and wait for it (for "backend down" tests).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One Secrets Manager call (JSON protocol) signed by access key `key`
    /// in `region`; the signature is a placeholder.
    pub fn secrets_as(&self, key: &str, region: &str, action: &str, body: &Value) -> Reply {
        let auth = authorization(key, region, "secretsmanager");
        let target = format!("secretsmanager.{action}");
        http(
            self.port,
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-amz-json-1.1"),
                ("X-Amz-Target", &target),
                ("Authorization", &auth),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|err| panic!("moto {action}: {err}"))
    }

    /// A Secrets Manager call that must succeed; returns its JSON.
    pub fn secrets(&self, region: &str, action: &str, body: Value) -> Value {
        let reply = self.secrets_as("test", region, action, &body);
        assert_eq!(
            reply.status, 200,
            "moto {action} {body}: HTTP {}: {}",
            reply.status, reply.body
        );
        reply.json()
    }

    /// Two IAM users, five IAM calls: `reader` (may call GetSecretValue,
    /// ListSecrets and DescribeSecret on every secret) and `nobody` (no policy). Returns their
    /// `CreateAccessKey` answers (XML), reader's first.
    pub fn reader_and_nobody(&self) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", "reader")]);
        let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue", "secretsmanager:ListSecrets", "secretsmanager:DescribeSecret"], "Resource": "*"}]});
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "reader"),
            ("PolicyName", "read-secrets"),
            ("PolicyDocument", &policy.to_string()),
        ]);
        let reader = self.iam(&[("Action", "CreateAccessKey"), ("UserName", "reader")]);
        self.iam(&[("Action", "CreateUser"), ("UserName", "nobody")]);
        let nobody = self.iam(&[("Action", "CreateAccessKey"), ("UserName", "nobody")]);
        (reader, nobody)
    }

    /// An IAM call (query protocol) that must succeed; returns the XML.
    pub fn iam(&self, params: &[(&str, &str)]) -> String {
        let mut form = String::from("Version=2010-05-08");
        for (key, value) in params {
            form.push('&');
            form.push_str(key);
            form.push('=');
            form.push_str(&url_encode(value));
        }
        let auth = authorization("test", "us-east-1", "iam");
        let reply = http(
            self.port,
            "POST",
            "/",
            &[
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("Authorization", &auth),
            ],
            form.as_bytes(),
        )
        .unwrap_or_else(|err| panic!("moto IAM {params:?}: {err}"));
        assert_eq!(
            reply.status, 200,
            "moto IAM {params:?}: HTTP {}: {}",
            reply.status, reply.body
        );
        reply.body
    }

    /// Create a string secret.
    pub fn create_string(&self, region: &str, name: &str, value: &str) -> Created {
        created(self.secrets(
            region,
            "CreateSecret",
            json!({"Name": name, "SecretString": value}),
        ))
    }

    /// Create a binary secret.
    pub fn create_binary(&self, region: &str, name: &str, value: &[u8]) -> Created {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        created(self.secrets(
            region,
            "CreateSecret",
            json!({"Name": name, "SecretBinary": encoded}),
        ))
    }

    /// Add a string version; `stages` empty means AWSCURRENT. Returns its VersionId.
    pub fn put_string(&self, region: &str, id: &str, value: &str, stages: &[&str]) -> String {
        let mut body = json!({"SecretId": id, "SecretString": value});
        if !stages.is_empty() {
            body["VersionStages"] = json!(stages);
        }
        let answer = self.secrets(region, "PutSecretValue", body);
        answer["VersionId"]
            .as_str()
            .expect("PutSecretValue returns a VersionId")
            .to_string()
    }

    /// Schedule a secret for deletion (recoverable for 7 days).
    pub fn delete(&self, region: &str, id: &str) {
        self.secrets(
            region,
            "DeleteSecret",
            json!({"SecretId": id, "RecoveryWindowInDays": 7}),
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}

fn created(answer: Value) -> Created {
    Created {
        arn: answer["ARN"].as_str().expect("ARN").to_string(),
        version_id: answer["VersionId"].as_str().expect("VersionId").to_string(),
    }
}

/// An AWS SigV4 `Authorization` header whose credential scope names the
/// key, region and service (what moto routes on); the signature is fake.
pub fn authorization(key: &str, region: &str, service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={key}/20260101/{region}/{service}/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date, Signature={}",
        "0".repeat(64)
    )
}

/// The `<Tag>…</Tag>` text of an XML answer.
pub fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + open.len();
    let end = xml[start..].find("</").expect("closing tag") + start;
    xml[start..end].to_string()
}

fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One HTTP/1.1 request on a fresh connection to 127.0.0.1:`port`.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (key, value) in headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let answer = crate::parse_response(&raw)?;
    if answer
        .headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "chunked answers are not expected from moto",
        ));
    }
    Ok(Reply {
        status: answer.status,
        body: String::from_utf8_lossy(&answer.body).to_string(),
    })
}
