//! The `file` backend: one file per secret under a root directory.
//!
//! Needs no server, so it is the embedded default for local use and tests.
//! `vaultbridge.path` is relative to the root; `..`, absolute paths and
//! symlinks that lead outside the root are refused.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;

use crate::{
    ConfigError, EnvLookup, Provider, ProviderError, SecretPath, SecretRef, SecretValue, Variable,
    Version,
};

/// Where the embedded default looks when nothing else is configured.
pub const DEFAULT_ROOT: &str = "/etc/vaultbridge/secrets";

/// Files larger than this are refused before being read: no Docker secret can
/// be this large, and reading an arbitrary file into memory is a risk.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// The variables [`FileConfig::from_env`] reads.
/// Registered in [`crate::config`]: the provider for one `type = "file"` table.
pub async fn build(
    config: &FileConfig,
    key: &str,
) -> Result<std::sync::Arc<dyn crate::Provider>, ConfigError> {
    Ok(std::sync::Arc::new(FileProvider::new(config, key)?))
}

pub const VARIABLES: &[Variable] = &[Variable {
    name: "VAULTBRIDGE_FILE_DIR",
    meaning: "directory of the file provider made from the environment (e.g. /etc/vaultbridge/secrets)",
}];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The directory secrets are read from.
    pub root: PathBuf,
    /// Whether a path may go through symlinks inside the root. Unset: yes,
    /// but no when the plugin has an access policy (which judges the path
    /// as written, so a link in one team's folder must not reach another's).
    #[serde(default)]
    pub follow_symlinks: Option<bool>,
}

impl FileConfig {
    /// `VAULTBRIDGE_FILE_DIR` makes a provider named `file`.
    pub fn from_env(env: EnvLookup<'_>) -> Option<Self> {
        env("VAULTBRIDGE_FILE_DIR")
            .filter(|dir| !dir.is_empty())
            .map(|dir| FileConfig {
                root: dir.into(),
                follow_symlinks: None,
            })
    }
}

#[derive(Debug)]
pub struct FileProvider {
    /// Canonical, so that containment checks compare like with like.
    root: PathBuf,
    follow_symlinks: bool,
}

impl FileProvider {
    pub fn new(config: &FileConfig, key: &str) -> Result<Self, ConfigError> {
        let root_key = format!("{key}.root");
        let root = std::fs::canonicalize(&config.root).map_err(|err| {
            ConfigError::new(&root_key, format!("{}: {err}", config.root.display()))
        })?;
        if !root.is_dir() {
            return Err(ConfigError::new(
                root_key,
                format!("{}: not a directory", config.root.display()),
            ));
        }
        Ok(Self {
            root,
            follow_symlinks: config.follow_symlinks.unwrap_or(true),
        })
    }

    /// Where `relative` must be opened when symlinks are not followed: the
    /// path as written, or `None` when they are.
    fn exact(&self, relative: &str) -> Option<PathBuf> {
        (!self.follow_symlinks).then(|| self.root.join(relative))
    }

    /// Resolve `path` under the root, refusing anything that escapes it.
    async fn locate(&self, path: &str) -> Result<PathBuf, ProviderError> {
        if path.is_empty() {
            return Err(ProviderError::Invalid("the path is empty".into()));
        }
        let relative = Path::new(path);
        let escapes = relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            return Err(ProviderError::Invalid(format!(
                "path '{path}' must be relative to the provider's root, without '..'"
            )));
        }
        let full = self.root.join(relative);
        let resolved = tokio::fs::canonicalize(&full)
            .await
            .map_err(|err| io_error(path, &self.root, err))?;
        if !resolved.starts_with(&self.root) {
            return Err(ProviderError::Denied(format!(
                "path '{path}' is a symlink that leads outside the root {}",
                self.root.display()
            )));
        }
        if self.exact(path).is_some_and(|exact| exact != resolved) {
            return Err(ProviderError::Denied(format!(
                "path '{path}' goes through a symlink, and this provider does not follow                  symlinks (follow_symlinks = false, the default with an access policy)"
            )));
        }
        Ok(resolved)
    }
}

/// Turn an I/O error from resolving or opening `path` into the variant the
/// plugin reacts to. Only errors that may go away by themselves stay
/// `Unavailable` (which is retried until the deadline); a path that can never
/// work — a loop, a file used as a directory, a name the kernel refuses — is
/// reported at once.
fn io_error(path: &str, root: &Path, err: std::io::Error) -> ProviderError {
    use std::io::ErrorKind;
    let root = root.display();
    match err.kind() {
        ErrorKind::NotFound => ProviderError::NotFound(format!("no file '{path}' under {root}")),
        // `a/b` where `a` is a file: there is no such secret.
        ErrorKind::NotADirectory => ProviderError::NotFound(format!(
            "no file '{path}' under {root}: a component of the path is not a directory"
        )),
        ErrorKind::PermissionDenied => ProviderError::Denied(format!(
            "cannot read '{path}' under {root}: permission denied"
        )),
        // ELOOP: a symlink loop while resolving, or — when opening the
        // already-resolved path with O_NOFOLLOW — a symlink swapped in since.
        // (ErrorKind::FilesystemLoop is not stable yet: match the errno.)
        _ if err.raw_os_error() == Some(libc::ELOOP) => ProviderError::Invalid(format!(
            "'{path}' under {root}: too many levels of symbolic links (a symlink loop, \
             or the file was replaced by a symlink while being read)"
        )),
        // ENAMETOOLONG (a component over 255 bytes, or the whole path over
        // PATH_MAX).
        ErrorKind::InvalidFilename => {
            ProviderError::Invalid(format!("'{path}' under {root}: the file name is too long"))
        }
        // std refuses a path with a NUL byte before calling the kernel.
        ErrorKind::InvalidInput => ProviderError::Invalid(format!(
            "'{path}' under {root}: not a valid file name ({err})"
        )),
        // ENXIO: open(2) on a Unix socket. Not a file, and never will be.
        _ if err.raw_os_error() == Some(libc::ENXIO) => {
            ProviderError::Invalid(format!("'{path}' under {root} is not a regular file"))
        }
        _ => ProviderError::unavailable(format!("cannot read '{path}' under {root}: {err}")),
    }
}

/// Why reading one resolved file failed, before it is phrased for the operator.
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    /// What was opened is not a regular file; says what it is instead.
    NotRegular(&'static str),
    /// Larger than the limit: `Some(size)` from fstat, `None` when it grew
    /// past the limit while being read.
    TooLarge(Option<u64>),
    /// What was opened is not under the root (where the kernel says it is).
    Outside(PathBuf),
    /// Where the opened file is could not be learnt (no /proc?): refused,
    /// since containment cannot be shown.
    Unverified(std::io::Error),
}

impl ReadError {
    fn into_provider_error(self, path: &str, root: &Path) -> ProviderError {
        match self {
            ReadError::Io(err) => io_error(path, root, err),
            ReadError::NotRegular(what) => {
                ProviderError::Invalid(format!("'{path}' is {what}, not a regular file"))
            }
            ReadError::TooLarge(Some(size)) => ProviderError::Invalid(format!(
                "'{path}' is {size} bytes; the file provider reads at most {MAX_FILE_BYTES}"
            )),
            ReadError::TooLarge(None) => ProviderError::Invalid(format!(
                "'{path}' grew past {MAX_FILE_BYTES} bytes while being read; \
                 the file provider reads at most {MAX_FILE_BYTES}"
            )),
            ReadError::Outside(real) => ProviderError::Denied(format!(
                "'{path}' was opened at {}, outside the root {}: a directory on the way was \
                 replaced by a symlink after it was checked; refused",
                real.display(),
                root.display()
            )),
            ReadError::Unverified(err) => ProviderError::unavailable(format!(
                "cannot check where '{path}' under {} was opened (/proc/self/fd: {err}); \
                 the file provider needs /proc to prove the file is inside its root",
                root.display()
            )),
        }
    }
}

impl From<std::io::Error> for ReadError {
    fn from(err: std::io::Error) -> Self {
        ReadError::Io(err)
    }
}

/// Open an already-canonicalized path, once, and make sure it is a regular
/// file. Checking the type *before* opening (stat, then open) leaves a window
/// in which the file can be swapped for a FIFO, whose open or read then blocks
/// a thread forever; so the check is done on what was actually opened.
///
/// - `O_NONBLOCK`: opening a FIFO or a device must not wait (for a writer, a
///   carrier...). It changes nothing for a regular file.
/// - `O_NOFOLLOW`: `canonical` has no symlink in it, so a symlink as its final
///   component can only have been swapped in since it was resolved; refuse it
///   (ELOOP) rather than follow it out of the root. A *directory* on the way
///   swapped for a symlink in between is followed by open(2); that is caught
///   after the open, by [`check_opened_inside`].
/// - `O_NOCTTY`: opening a terminal must not make it our controlling one.
/// - `O_CLOEXEC`: std sets it anyway; spelled out because a descriptor to a
///   secret must not leak into a child process.
fn open_regular(canonical: &Path) -> Result<std::fs::File, ReadError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(canonical)?;
    // fstat: the type of what we hold, not of whatever the path names now.
    let kind = file.metadata()?.file_type();
    let what = if kind.is_file() {
        return Ok(file);
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    };
    Err(ReadError::NotRegular(what))
}

/// Read at most `limit` bytes. The size fstat reported is only a hint: the
/// file may grow while it is read, so one byte past the limit is asked for
/// and, if it comes, the value is refused rather than silently cut.
fn read_capped(reader: impl std::io::Read, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(None));
    }
    Ok(bytes)
}

/// Make sure `file` really is under `root` (canonical), whatever happened
/// to the directories on the way between `canonicalize` and `open`: the
/// kernel's own name for the open descriptor must have `root` as a
/// whole-component prefix. (openat2's RESOLVE_BENEATH would refuse during
/// the open instead, but needs a raw syscall, and `unsafe` is not used.)
/// With `exact`, the file must be that very path (no symlink swapped in).
fn check_opened_inside(
    file: &std::fs::File,
    root: &Path,
    exact: Option<&Path>,
) -> Result<(), ReadError> {
    use std::os::fd::AsRawFd;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(ReadError::Unverified)?;
    let inside = match exact {
        Some(exact) => real == exact,
        None => real.starts_with(root) && real != root,
    };
    if inside {
        Ok(())
    } else {
        Err(ReadError::Outside(real))
    }
}

/// One secret file: open it once, check where it is and what it is, read
/// it within the limit.
fn read_secret_file(
    canonical: &Path,
    root: &Path,
    exact: Option<&Path>,
) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(canonical)?;
    check_opened_inside(&file, root, exact)?;
    let size = file.metadata()?.len();
    if size > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(Some(size)));
    }
    read_capped(file, MAX_FILE_BYTES)
}

/// One secret file's change stamp, checked like a read (inside the root,
/// a regular file) but without reading it: its inode and change time,
/// which every write and every replacement by rename moves (and which,
/// unlike the modification time, no one can set back).
fn stamp_secret_file(
    canonical: &Path,
    root: &Path,
    exact: Option<&Path>,
) -> Result<Version, ReadError> {
    use std::os::unix::fs::MetadataExt;
    let file = open_regular(canonical)?;
    check_opened_inside(&file, root, exact)?;
    let meta = file.metadata()?;
    Ok(Version {
        id: format!("{}.{:09}-{}", meta.ctime(), meta.ctime_nsec(), meta.ino()),
        pin: None,
        created: meta.modified().ok(),
    })
}

#[async_trait]
impl Provider for FileProvider {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn fetch(&self, secret: SecretRef<'_>) -> Result<SecretValue, ProviderError> {
        if secret.version.is_some() {
            return Err(ProviderError::Invalid(
                "the file provider keeps no versions; remove the vaultbridge.version label".into(),
            ));
        }
        let full = self.locate(secret.path).await?;
        // Open, fstat and read on one blocking thread: a single hop, and
        // nothing in it can block for long now that special files are
        // refused before the first read.
        let root = self.root.clone();
        let exact = self.exact(secret.path.as_str());
        let bytes =
            tokio::task::spawn_blocking(move || read_secret_file(&full, &root, exact.as_deref()))
                .await
                .map_err(|err| {
                    ProviderError::unavailable(format!("reading '{}' failed: {err}", secret.path))
                })?
                .map_err(|err| err.into_provider_error(secret.path, &self.root))?;
        Ok(SecretValue::new(bytes))
    }

    async fn current_version(&self, path: &SecretPath) -> Result<Version, ProviderError> {
        let full = self.locate(path).await?;
        let root = self.root.clone();
        let exact = self.exact(path.as_str());
        tokio::task::spawn_blocking(move || stamp_secret_file(&full, &root, exact.as_deref()))
            .await
            .map_err(|err| ProviderError::unavailable(format!("reading '{path}' failed: {err}")))?
            .map_err(|err| err.into_provider_error(path, &self.root))
    }

    async fn check(&self) -> Result<String, ProviderError> {
        // One entry read proves the directory is readable; counting them all
        // would cost as much as the folder is large, at every check.
        let mut entries = tokio::fs::read_dir(&self.root)
            .await
            .map_err(|err| io_error(".", &self.root, err))?;
        let empty = entries
            .next_entry()
            .await
            .map_err(|err| io_error(".", &self.root, err))?
            .is_none();
        let what = if empty { "empty" } else { "not empty" };
        Ok(format!(
            "directory {} is readable ({what})",
            self.root.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(dir: &Path) -> FileProvider {
        FileProvider::new(
            &FileConfig {
                root: dir.to_path_buf(),
                follow_symlinks: None,
            },
            "providers.file",
        )
        .unwrap()
    }

    /// Through the shared path check first, as the plugin does.
    async fn fetch(p: &FileProvider, path: &str) -> Result<Vec<u8>, ProviderError> {
        let path = crate::SecretPath::parse(path)
            .map_err(|err| ProviderError::Invalid(err.to_string()))?;
        p.fetch(SecretRef {
            path: &path,
            version: None,
        })
        .await
        .map(|v| v.expose().to_vec())
    }

    #[tokio::test]
    async fn without_follow_symlinks_no_link_inside_the_root_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("apps/a")).unwrap();
        std::fs::create_dir_all(dir.path().join("apps/b")).unwrap();
        std::fs::write(dir.path().join("apps/a/own"), b"a-own").unwrap();
        std::fs::write(dir.path().join("apps/b/db"), b"b-db").unwrap();
        std::os::unix::fs::symlink("../b/db", dir.path().join("apps/a/steal")).unwrap();
        std::os::unix::fs::symlink("../b", dir.path().join("apps/a/dir")).unwrap();
        let following = provider(dir.path());
        assert_eq!(fetch(&following, "apps/a/steal").await.unwrap(), b"b-db");
        let strict = FileProvider::new(
            &FileConfig {
                root: dir.path().to_path_buf(),
                follow_symlinks: Some(false),
            },
            "providers.file",
        )
        .unwrap();
        assert_eq!(fetch(&strict, "apps/a/own").await.unwrap(), b"a-own");
        for path in ["apps/a/steal", "apps/a/dir/db"] {
            let err = fetch(&strict, path).await.unwrap_err();
            assert!(
                matches!(&err, ProviderError::Denied(m) if m.contains("goes through a symlink")),
                "{path}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn reads_nested_files_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        std::fs::write(dir.path().join("db/password"), b"s3cret").unwrap();
        std::fs::write(outside.path().join("stolen"), b"nope").unwrap();
        std::os::unix::fs::symlink(outside.path().join("stolen"), dir.path().join("link")).unwrap();
        let p = provider(dir.path());

        assert_eq!(fetch(&p, "db/password").await.unwrap(), b"s3cret");
        assert!(matches!(
            fetch(&p, "./db/password").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "missing").await,
            Err(ProviderError::NotFound(_))
        ));
        assert!(matches!(
            fetch(&p, "../x").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "db/../../x").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "/etc/passwd").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "link").await,
            Err(ProviderError::Denied(_))
        ));
        assert!(matches!(
            fetch(&p, "db").await,
            Err(ProviderError::Invalid(_))
        ));
        assert!(matches!(
            fetch(&p, "").await,
            Err(ProviderError::Invalid(_))
        ));
    }

    /// Fetch `path` under `root` on a thread of its own and give up after a
    /// few seconds. A fetch that blocks (a FIFO opened without O_NONBLOCK)
    /// then fails the test instead of hanging it: the stuck thread is simply
    /// abandoned, which an in-runtime timeout could not do (dropping a runtime
    /// waits for its blocking threads).
    fn fetch_within_seconds(root: &Path, path: &str) -> Result<Vec<u8>, ProviderError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (root, path_owned) = (root.to_path_buf(), path.to_string());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let result = runtime.block_on(async { fetch(&provider(&root), &path_owned).await });
            let _ = tx.send(result);
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("fetching '{path}' did not finish within 5 s"))
    }

    /// The error, which must come quickly and not be retryable.
    fn permanent_error(root: &Path, path: &str) -> ProviderError {
        let err = fetch_within_seconds(root, path).expect_err(path);
        assert!(
            !err.is_transient(),
            "'{path}' gave a retryable error: {err}"
        );
        err
    }

    fn mkfifo(path: &Path) {
        // std has no mkfifo and libc's needs unsafe: use the coreutils tool.
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("run mkfifo");
        assert!(status.success(), "mkfifo {}", path.display());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        mkfifo(&dir.path().join("pipe"));
        let err = permanent_error(dir.path(), "pipe");
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("a FIFO, not a regular file")),
            "{err}"
        );
        // The helper itself, on the resolved path: the type check happens on
        // what was opened, not before.
        let opened = open_regular(&dir.path().canonicalize().unwrap().join("pipe"));
        assert!(matches!(opened, Err(ReadError::NotRegular("a FIFO"))));
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_is_caught_after_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let elsewhere = outside.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("app")).unwrap();
        std::fs::write(root.join("app/db"), b"inside").unwrap();
        std::fs::write(elsewhere.join("db"), b"outside").unwrap();
        // As `locate` returned it: canonical, inside the root.
        let resolved = root.join("app/db");
        assert_eq!(read_secret_file(&resolved, &root, None).unwrap(), b"inside");

        // Between canonicalize and open, `app` becomes a symlink out of the
        // root. O_NOFOLLOW guards only the last component: the open succeeds.
        std::fs::remove_dir_all(root.join("app")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("app")).unwrap();
        let opened = open_regular(&resolved).unwrap();
        // The check on the opened descriptor is what refuses it.
        let err = check_opened_inside(&opened, &root, None)
            .unwrap_err()
            .into_provider_error("app/db", &root);
        assert!(
            matches!(&err, ProviderError::Denied(m) if m.contains("outside the root") && m.contains("'app/db'")),
            "{err}"
        );
        let err = read_secret_file(&resolved, &root, None)
            .unwrap_err()
            .into_provider_error("app/db", &root);
        assert!(matches!(err, ProviderError::Denied(_)), "{err}");

        // Whole components: `<elsewhere>/db` is not under `<elsewhere>/d`.
        let file = std::fs::File::open(elsewhere.join("db")).unwrap();
        assert!(check_opened_inside(&file, &elsewhere, None).is_ok());
        assert!(matches!(
            check_opened_inside(&file, &elsewhere.join("d"), None),
            Err(ReadError::Outside(_))
        ));
    }

    #[test]
    fn a_symlink_swapped_in_after_resolution_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("real"), b"inside").unwrap();
        let resolved = root.join("secret");
        std::fs::write(&resolved, b"v1").unwrap();
        assert_eq!(read_secret_file(&resolved, &root, None).unwrap(), b"v1");
        // Between canonicalize and open, `secret` becomes a symlink — even
        // one to a regular file inside the root is refused, since the path
        // was checked as a real file.
        std::fs::remove_file(&resolved).unwrap();
        std::os::unix::fs::symlink(root.join("real"), &resolved).unwrap();
        let err = read_secret_file(&resolved, &root, None)
            .unwrap_err()
            .into_provider_error("secret", &root);
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("symbolic links")),
            "{err}"
        );
        // Symlinks that stay inside the root still work through fetch,
        // which resolves them first.
        assert_eq!(fetch_within_seconds(&root, "secret").unwrap(), b"inside");
    }

    #[test]
    fn special_files_and_impossible_paths_fail_at_once_and_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("plain"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("loop-a"), root.join("loop-b")).unwrap();
        std::os::unix::fs::symlink(root.join("loop-b"), root.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", root.join("zero")).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();

        let err = permanent_error(root, "dir");
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("a directory")),
            "{err}"
        );
        // Out of the root, so refused before it is even opened.
        let err = permanent_error(root, "zero");
        assert!(matches!(err, ProviderError::Denied(_)), "{err}");
        let err = permanent_error(root, "sock");
        assert!(matches!(err, ProviderError::Invalid(_)), "{err}");
        let err = permanent_error(root, "plain/b");
        assert!(
            matches!(&err, ProviderError::NotFound(m) if m.contains("not a directory")),
            "{err}"
        );
        // 5000 characters: the shared path check refuses it first...
        let err = permanent_error(root, &"n".repeat(5000));
        assert!(matches!(err, ProviderError::Invalid(_)), "{err}");
        // ...but a 300-byte component passes it, and the kernel's
        // ENAMETOOLONG must not be retried either.
        let err = permanent_error(root, &"n".repeat(300));
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("too long")),
            "{err}"
        );
        let err = permanent_error(root, "loop-a");
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("symbolic links")),
            "{err}"
        );
        // A NUL never passes SecretPath; locate() still classifies std's
        // InvalidInput as permanent, should one ever reach it.
        let err = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(provider(root).locate("a\0b"))
            .unwrap_err();
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("not a valid file name")),
            "{err}"
        );

        // A device reached some other way (were it inside the root) is
        // refused by the type check on the opened file.
        let opened = open_regular(Path::new("/dev/zero"));
        assert!(matches!(
            opened,
            Err(ReadError::NotRegular("a character device"))
        ));
    }

    #[test]
    fn the_size_limit_holds_even_if_the_file_grows_while_read() {
        // An endless reader stands for a file that grows faster than it is
        // read: its fstat size said nothing of that.
        let err = read_capped(std::io::repeat(b'x'), 10).unwrap_err();
        assert!(matches!(err, ReadError::TooLarge(None)), "{err:?}");
        assert_eq!(read_capped(&b"0123456789"[..], 10).unwrap().len(), 10);

        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let err = permanent_error(dir.path(), "big");
        assert!(
            matches!(&err, ProviderError::Invalid(m) if m.contains("at most")),
            "{err}"
        );
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(
            fetch_within_seconds(dir.path(), "big").unwrap().len(),
            MAX_FILE_BYTES as usize
        );
    }

    #[tokio::test]
    async fn refuses_versions_and_missing_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let p = provider(dir.path());
        let err = p
            .fetch(SecretRef {
                path: &crate::SecretPath::parse("a").unwrap(),
                version: Some("2"),
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("vaultbridge.version"), "{err}");

        let err = FileProvider::new(
            &FileConfig {
                root: dir.path().join("nope"),
                follow_symlinks: None,
            },
            "providers.local",
        )
        .unwrap_err();
        assert_eq!(err.key, "providers.local.root");
        assert!(p.check().await.unwrap().contains("is readable (not empty)"));
    }
}
