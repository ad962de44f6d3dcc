//! The audit trail: one JSON record per GetSecret decision, to a sink of
//! its own (a size-rotated file, or stdout marked as audit), so that it can
//! be shipped to a SIEM apart from the debug log. Never a value.
//!
//! Like Vault's audit devices, it fails closed: a secret whose record cannot
//! be written is not served.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use vaultbridge_providers::ConfigError;
use vaultbridge_providers::text::shown;

/// `[audit]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub sink: SinkKind,
    /// The file, with `sink = "file"` (in the plugin: under its `audit` mount).
    pub path: Option<PathBuf>,
    /// The file is rotated when a record would take it past this size.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` is the newest).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Stdout,
    File,
}

fn default_max_bytes() -> u64 {
    10 * 1024 * 1024
}

fn default_keep() -> u32 {
    5
}

const MIN_MAX_BYTES: u64 = 4096;
const MAX_KEEP: u32 = 100;

impl AuditConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (self.sink, &self.path) {
            (SinkKind::File, None) => {
                return Err(ConfigError::new(
                    "audit.path",
                    "sink = \"file\" needs a path, e.g. /var/log/vaultbridge/audit.log (the plugin's audit mount)",
                ));
            }
            (SinkKind::File, Some(path)) if !path.is_absolute() => {
                return Err(ConfigError::new(
                    "audit.path",
                    format!(
                        "'{}' is not an absolute path",
                        shown(&path.display().to_string())
                    ),
                ));
            }
            (SinkKind::Stdout, Some(_)) => {
                return Err(ConfigError::new(
                    "audit.path",
                    "is only for sink = \"file\"; remove it or set sink = \"file\"",
                ));
            }
            _ => {}
        }
        if self.max_bytes < MIN_MAX_BYTES {
            return Err(ConfigError::new(
                "audit.max_bytes",
                format!(
                    "{} is out of range: at least {MIN_MAX_BYTES}",
                    self.max_bytes
                ),
            ));
        }
        if !(1..=MAX_KEEP).contains(&self.keep) {
            return Err(ConfigError::new(
                "audit.keep",
                format!("{} is out of range: 1 to {MAX_KEEP}", self.keep),
            ));
        }
        Ok(())
    }
}

/// One decision. Request-controlled fields are escaped and bounded before
/// they get here (see [`Record::field`]); JSON encoding does the rest.
#[derive(Debug, Clone, Serialize)]
pub struct Record<'a> {
    /// Marks the line as audit on a shared stream (stdout).
    pub log_type: &'static str,
    pub time: String,
    pub node: String,
    pub service_id: String,
    pub service_name: String,
    pub task_id: String,
    pub task_name: String,
    pub image: String,
    pub secret: String,
    /// The template the secret is rendered from; its inputs have a record
    /// each, with this field, before the template's own record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub path: Option<&'a str>,
    pub version: Option<String>,
    /// `allow`, `deny`, or `none` (no policy, or refused before it).
    pub decision: &'static str,
    /// The rule that decided, or `default`.
    pub rule: Option<&'a str>,
    pub outcome: &'a str,
    /// hit, miss, coalesced, stale, bypass, reissued; absent on failure.
    pub cache: Option<&'static str>,
    pub duration_ms: f64,
}

impl Record<'_> {
    /// A request-controlled field as it may appear in the trail.
    pub fn field(text: &str) -> String {
        shown(text).into_owned()
    }

    pub fn now() -> String {
        humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
    }
}

/// The open sink. Cheap to share: one lock around one write per record.
pub struct Audit {
    sink: Mutex<Sink>,
}

enum Sink {
    Stdout,
    File(RotatingFile),
}

struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl Audit {
    /// Open the sink (creating the file, 0600) so that a bad path fails at
    /// start, not at the first secret.
    pub fn open(config: &AuditConfig) -> Result<Audit, ConfigError> {
        let sink = match (config.sink, &config.path) {
            (SinkKind::File, Some(path)) => {
                let file = open_append(path).map_err(|err| {
                    ConfigError::new(
                        "audit.path",
                        format!("cannot open {}: {err}", shown(&path.display().to_string())),
                    )
                })?;
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                Sink::File(RotatingFile {
                    path: path.clone(),
                    file,
                    size,
                    max_bytes: config.max_bytes,
                    keep: config.keep,
                })
            }
            _ => Sink::Stdout,
        };
        Ok(Audit {
            sink: Mutex::new(sink),
        })
    }

    /// Write one record as one line, on this thread (the tests' way).
    #[cfg(test)]
    pub fn record(&self, record: &Record<'_>) -> std::io::Result<()> {
        self.write(&Self::lines(std::slice::from_ref(record))?)
    }

    /// Write `records`, one line each, on a blocking thread, not the
    /// caller's: a stdout nobody reads (a full pipe to dockerd) or a hung
    /// file system then holds only the requests waiting for their records,
    /// never the runtime's worker — which also accepts connections, answers
    /// `/healthz`, enforces deadlines and handles SIGTERM.
    pub async fn record_all(self: &Arc<Self>, records: &[Record<'_>]) -> std::io::Result<()> {
        let lines = Self::lines(records)?;
        let audit = self.clone();
        tokio::task::spawn_blocking(move || audit.write(&lines))
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the audit write did not finish")))
    }

    fn lines(records: &[Record<'_>]) -> std::io::Result<Vec<u8>> {
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record).map_err(std::io::Error::other)?;
            lines.push(b'\n');
        }
        Ok(lines)
    }

    fn write(&self, lines: &[u8]) -> std::io::Result<()> {
        // A panic elsewhere while holding the lock left no partial state
        // that matters: each write is whole lines.
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *sink {
            Sink::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(lines)?;
                stdout.flush()
            }
            Sink::File(file) => file.append(lines),
        }
    }
}

impl RotatingFile {
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.follow_path()?;
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Write to whatever file is at `path` now: when it was removed or
    /// replaced (by hand, by logrotate), start a new one there, so records
    /// never go to a file nobody can read. If that fails, the record fails.
    fn follow_path(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let open = self.file.metadata()?;
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|at| at.dev() == open.dev() && at.ino() == open.ino());
        if !same {
            self.file = open_append(&self.path)?;
            self.size = self.file.metadata()?.len();
        }
        Ok(())
    }

    /// `audit.log` -> `audit.log.1` -> ... -> `audit.log.<keep>` (dropped).
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..self.keep).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        // Shifted once: if the new file cannot be made, the next record
        // tries to make it again (follow_path), without shifting again.
        self.size = 0;
        self.file = open_append(&self.path)?;
        Ok(())
    }
}

/// Append-only, owner-only, a regular file, and never through a symlink
/// planted at `path` (nor blocked on a FIFO planted there).
fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::PermissionsExt;
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(secret: &str) -> Record<'static> {
        Record {
            log_type: "audit",
            time: Record::now(),
            node: "n1".into(),
            service_id: "s1".into(),
            service_name: Record::field("billing_api"),
            task_id: "t1".into(),
            task_name: "billing_api.1.t1".into(),
            image: "app:1".into(),
            secret: Record::field(secret),
            template: None,
            provider: Some("vault"),
            path: Some("apps/billing/db"),
            version: None,
            decision: "allow",
            rule: Some("rule 0"),
            outcome: "ok",
            cache: Some("miss"),
            duration_ms: 1.5,
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let config = AuditConfig {
            sink: SinkKind::File,
            path: Some(path.clone()),
            max_bytes: MIN_MAX_BYTES,
            keep: 2,
        };
        config.validate().unwrap();
        let audit = Audit::open(&config).unwrap();
        for i in 0..100 {
            audit.record(&record(&format!("s{i}"))).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let current = read(&path);
        assert!(current.len() as u64 <= MIN_MAX_BYTES);
        assert!(current.contains("\"secret\":\"s99\""), "{current}");
        let one = read(&dir.path().join("audit.log.1"));
        assert!(!one.is_empty() && one.len() as u64 <= MIN_MAX_BYTES);
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
        // Every line is a whole JSON record.
        for line in current.lines().chain(one.lines()) {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["log_type"], "audit");
            assert_eq!(value["decision"], "allow");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_removed_or_replaced_file_is_started_again_and_modes_are_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let config = AuditConfig {
            sink: SinkKind::File,
            path: Some(path.clone()),
            max_bytes: default_max_bytes(),
            keep: 2,
        };
        let audit = Audit::open(&config).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        audit.record(&record("first")).unwrap();
        std::fs::rename(&path, dir.path().join("moved.log")).unwrap();
        audit.record(&record("second")).unwrap();
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.contains("second") && !now.contains("first"), "{now}");
        // The folder gone: the record fails (and the secret is withheld).
        drop(dir);
        assert!(audit.record(&record("third")).is_err());
    }

    #[test]
    fn request_fields_cannot_forge_a_record() {
        let forged = "x\"}\n{\"log_type\":\"audit\",\"decision\":\"allow\u{202e}";
        let line = serde_json::to_string(&record(forged)).unwrap();
        assert!(!line.contains('\n') && !line.contains('\u{202e}'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(value["secret"].as_str().unwrap().starts_with("x\""));
    }

    #[test]
    fn refuses_a_symlink_and_bad_settings() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("audit.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let config = AuditConfig {
            sink: SinkKind::File,
            path: Some(link),
            max_bytes: default_max_bytes(),
            keep: 1,
        };
        let err = Audit::open(&config).err().expect("a symlink is refused");
        assert_eq!(err.key, "audit.path");
        // A FIFO is refused at once, not waited on.
        let fifo = dir.path().join("fifo.log");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let config = AuditConfig {
            path: Some(fifo),
            ..config
        };
        // (ENXIO with no reader, "not a regular file" with one.)
        let err = Audit::open(&config).err().expect("a FIFO is refused");
        assert_eq!(err.key, "audit.path");

        for (config, key) in [
            ("sink = \"file\"", "audit.path"),
            ("sink = \"file\"\npath = \"rel/a.log\"", "audit.path"),
            ("sink = \"stdout\"\npath = \"/a.log\"", "audit.path"),
            ("sink = \"stdout\"\nmax_bytes = 10", "audit.max_bytes"),
            ("sink = \"stdout\"\nkeep = 0", "audit.keep"),
        ] {
            let config: AuditConfig = toml::from_str(config).unwrap();
            assert_eq!(config.validate().unwrap_err().key, key);
        }
    }
}
