//! A real Prometheus server for the metrics suite.
//!
//! [`Prometheus::start`] writes a scrape configuration for the given
//! targets (1 s interval, the repository's alert rules loaded), runs
//! `prometheus` on a free 127.0.0.1 port with its own temporary storage,
//! polls `GET /-/ready`, and kills the server on drop. Queries go to
//! `/api/v1/query`. `prometheus` and `promtool` come from Debian's
//! `prometheus` package (`tests/setup.sh`); a missing binary fails the test
//! with that hint.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::openbao::free_port;
use crate::wait_until;

/// `name` (prometheus, promtool) on `PATH` or in /usr/bin.
pub fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| {
            panic!("`{name}` was not found: run tests/setup.sh (it installs Debian's prometheus)")
        })
}

/// The repository's example alert rules.
pub fn alert_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/alerts.yml")
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrape `targets` (`host:port`) every second, job `vaultbridge`.
    pub fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: vaultbridge\n    static_configs:\n      - targets: [{targets}]\n",
            rules = alert_rules().display(),
            targets = targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let port = free_port();
        let child = Command::new(binary("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let prometheus = Prometheus {
            child: Some(child),
            port,
            dir,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            prometheus
                .get("/-/ready")
                .is_some_and(|(status, _)| status == 200)
        });
        assert!(ready, "prometheus not ready; log:\n{}", prometheus.log());
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET path` on the server: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(&format!("127.0.0.1:{}", self.port), path)
    }

    /// The instant vector `expr` evaluates to: `(labels, value)` per series.
    pub fn query(&self, expr: &str) -> Vec<(Value, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = self
            .get(&path)
            .unwrap_or_else(|| panic!("query {expr}: no answer"));
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|err| panic!("query {expr}: {err}: {body}"));
        assert_eq!(status, 200, "query {expr}: {json}");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|series| {
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (series["metric"].clone(), value)
            })
            .collect()
    }

    /// Poll `expr` until its single value satisfies `ok` (Prometheus scrapes
    /// every second; the first samples come a few seconds after start).
    pub fn wait_for(&self, expr: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let mut last = Vec::new();
        let met = wait_until(Duration::from_secs(20), || {
            last = self.query(expr);
            matches!(last.as_slice(), [(_, value)] if ok(*value))
        });
        assert!(met, "{expr}: got {last:?}; log:\n{}", self.log());
        last[0].1
    }

    /// The state of alert `name` (`pending`, `firing`), if active.
    pub fn alert_state(&self, name: &str) -> Option<String> {
        let (_, body) = self.get("/api/v1/alerts")?;
        let json: Value = serde_json::from_str(&body).ok()?;
        json["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|alert| alert["labels"]["alertname"] == name)
            .and_then(|alert| alert["state"].as_str().map(str::to_string))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.1 GET to `host:port`: (status, body).
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let answer = crate::parse_response(&raw).ok()?;
    let mut body = answer.body;
    if answer
        .headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Some((answer.status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..end]).ok()?.trim(), 16).ok()?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
