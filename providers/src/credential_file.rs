//! Credential files (tokens, ids, passwords, JWTs, key files): read whole,
//! bounded, and wiped after use.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use secrecy::zeroize::Zeroizing;

/// A credential file is a few KiB: a bigger file is the wrong file and is
/// not read into memory whole.
pub(crate) const MAX_BYTES: usize = 64 * 1024;

/// The file's bytes, read into one buffer made once at its largest size
/// (no reallocation leaves a copy of the credential behind) and wiped when
/// dropped. A file over [`MAX_BYTES`] is an error; the message never quotes
/// the content.
pub(crate) fn read(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let limit = MAX_BYTES + 1;
    let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
    std::fs::File::open(path)?
        .take(limit as u64)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB: not a credential file",
            MAX_BYTES / 1024
        )));
    }
    Ok(bytes)
}

/// [`read`], as text: a file that is not UTF-8 is an error (which does not
/// quote it). The text is the same buffer, wiped when dropped.
pub(crate) fn read_text(path: &Path) -> std::io::Result<Zeroizing<String>> {
    let mut bytes = read(path)?;
    match String::from_utf8(std::mem::take(&mut *bytes)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(err) => {
            drop(Zeroizing::new(err.into_bytes()));
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        }
    }
}

/// [`read_text`] for a running provider (files re-read at every login or
/// token request): on a blocking thread, so that a hung file system (a
/// stalled network mount, a FIFO nobody writes) holds that thread, never
/// the runtime's worker, which may be the only one serving the engine.
///
/// One read per file at a time: a caller cancelled while the read hangs
/// (its deadline) leaves the thread blocked, and the next caller waits for
/// that read to end instead of blocking one more thread, so that retries
/// cannot take the whole blocking pool (audit writes, the file provider).
pub(crate) async fn read_text_blocking(path: &Path) -> std::io::Result<Zeroizing<String>> {
    // One lock per configured credential path: a handful, for the process.
    static READING: LazyLock<std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let file = READING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.to_path_buf())
        .or_default()
        .clone();
    // Held by the blocking read until it returns, even if we are dropped.
    let reading = file.lock_owned().await;
    let owned = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let _reading = reading;
        read_text(&owned)
    });
    read.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the read failed (a bug; please report it)",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_read_up_to_the_bound_and_never_quoted_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credential");
        std::fs::write(&file, "t".repeat(MAX_BYTES)).unwrap();
        assert_eq!(read_text(&file).unwrap().len(), MAX_BYTES);
        // One byte more, an endless device, bytes that are not UTF-8.
        std::fs::write(&file, "t".repeat(MAX_BYTES + 1)).unwrap();
        let err = read_text(&file).unwrap_err().to_string();
        assert_eq!(err, "larger than 64 KiB: not a credential file");
        let err = read_text(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(err, "larger than 64 KiB: not a credential file");
        std::fs::write(&file, b"s3cr3t\xff").unwrap();
        let err = read_text(&file).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "not UTF-8 text");
    }

    #[test]
    fn hung_reads_hold_one_blocking_thread_and_never_the_runtime() {
        hung::cancelled_reads_leave_the_pool(|path| async move {
            let _ = read_text_blocking(&path).await;
        });
    }
}

/// A credential file whose reads hang, for the providers' tests: a FIFO
/// nobody writes (in life, a file on a stalled network mount).
#[cfg(test)]
pub(crate) mod hung {
    use std::future::Future;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    pub fn file(dir: &Path) -> PathBuf {
        let fifo = dir.join("hung-credential");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        fifo
    }

    /// Lets a blocked open of `fifo` return, so that no thread is left
    /// behind: opened for reading and writing, a FIFO opens at once, as a
    /// writer.
    pub fn release(fifo: &Path) {
        drop(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(fifo),
        );
    }

    /// `read` of a hung file, cancelled at its deadline three times on a
    /// one-thread runtime whose blocking pool has two threads, must leave
    /// that runtime free (each deadline fires) and the pool able to read a
    /// healthy file: else every retry takes one more blocking thread, and
    /// audit writes and the file provider queue behind them forever.
    pub fn cancelled_reads_leave_the_pool<F, Fut>(read: F)
    where
        F: Fn(PathBuf) -> Fut + Send + 'static,
        Fut: Future + Send,
    {
        let dir = tempfile::tempdir().unwrap();
        let fifo = file(dir.path());
        let healthy = dir.path().join("healthy");
        std::fs::write(&healthy, "r-1\n").unwrap();
        let (done, outcome) = std::sync::mpsc::channel();
        let (path, good) = (fifo.clone(), healthy.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .max_blocking_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let healthy_read = runtime.block_on(async {
                for _ in 0..3 {
                    let timed = tokio::time::timeout(Duration::from_millis(50), read(path.clone()));
                    assert!(timed.await.is_err(), "the FIFO read returned");
                }
                let read = super::read_text_blocking(&good);
                tokio::time::timeout(Duration::from_millis(2000), read)
                    .await
                    .map(|r| r.map(|text| text.trim().to_string()).ok())
            });
            let _ = done.send(healthy_read);
            // Do not wait for the blocked threads on drop.
            runtime.shutdown_background();
        });
        let healthy_read = outcome.recv_timeout(Duration::from_secs(10));
        // Release every blocked open (each opens as a writer in turn).
        for _ in 0..4 {
            release(&fifo);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            healthy_read,
            Ok(Ok(Some("r-1".to_string()))),
            "a hung read blocked the runtime, or the hung reads took the blocking pool"
        );
    }
}
