//! The log's writer for `serve`: lines go to a bounded queue in memory and
//! one thread of ours writes them to stderr, many lines per `write(2)`.
//!
//! A request therefore never waits for stderr (for a managed plugin, a pipe
//! to dockerd, which may be slow to read it or not read it at all) and
//! makes no system call for its log line; the writer thread makes one per
//! batch. Nothing is lost silently: when stderr does not keep up and the
//! queue is full, a line is dropped and counted; the count is logged as
//! soon as lines get through again and is exported as the metric
//! `vaultbridge_log_lines_dropped_total`. The audit trail (`[audit]`) does
//! not go through here: it is written synchronously and fails closed.
//!
//! Lines still queued are written when [`Flush`] is dropped (`main`
//! returning, after a graceful shutdown). A process killed outright loses
//! at most the lines of the last [`BATCH_WINDOW`].

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Lines waiting for stderr, at most: seconds of a busy plugin's lines.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// How long the writer lets lines gather once the first one arrives: one
/// wake-up and one `write(2)` per window, however many requests it served.
pub const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// How long the writer keeps looking for lines every [`BATCH_WINDOW`] after
/// the queue ran empty, before it sleeps until a line wakes it. While it
/// looks, a request queues its line without a system call (no wake-up of
/// this thread on the request's path); an idle plugin costs no wake-ups.
pub const LINGER: Duration = Duration::from_millis(100);

/// How long [`Flush`] waits for the queued lines to be written at exit: a
/// stderr nobody reads must not keep a stopped plugin alive.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Lines dropped since start, for the metrics.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Bytes queued or being written, for the metrics.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since the process started because stderr did not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Bytes of log lines not yet written to stderr (queued, or in the write
/// under way). 0: every line logged so far is in stderr — what a test that
/// reads the log right after a request waits for.
pub fn pending_bytes() -> u64 {
    PENDING.load(Ordering::Acquire)
}

/// The producers' side: a `tracing_subscriber` writer (one `write_all` per
/// formatted event, so a line is queued whole or dropped whole).
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    /// Signalled when the writer thread has written everything and ended.
    done: Condvar,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    /// The writer waits for a first line: the next one must wake it.
    idle: bool,
    /// Dropped since last reported.
    dropped: u64,
    closed: bool,
    finished: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Appending bytes or swapping a buffer cannot leave the state
        // inconsistent: a panic elsewhere must not stop the log.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Queue {
    /// Queue one line, or count it as dropped when the queue is full.
    pub fn push(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.lines.len() + line.len() > MAX_QUEUED_BYTES {
            state.dropped += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.lines.extend_from_slice(line);
        PENDING.fetch_add(line.len() as u64, Ordering::AcqRel);
        let wake = std::mem::replace(&mut state.idle, false);
        // Unlocked first: the writer woken takes the lock at once.
        drop(state);
        if wake {
            self.shared.ready.notify_one();
        }
    }
}

impl Write for &Queue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.push(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Queue {
    type Writer = &'a Queue;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Where the log's lines go: `serve`'s queue, or straight to stderr (the
/// other commands write a few lines, in order with what they print).
pub enum Output {
    Queued(Queue),
    Stderr,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Output {
    type Writer = tracing_subscriber::fmt::writer::EitherWriter<&'a Queue, std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        use tracing_subscriber::fmt::writer::EitherWriter;
        match self {
            Output::Queued(queue) => EitherWriter::A(queue),
            Output::Stderr => EitherWriter::B(std::io::stderr()),
        }
    }
}

/// Writes what is still queued and stops the writer thread when dropped,
/// waiting at most [`FLUSH_TIMEOUT`] (then the lines still queued are lost
/// with the process: stderr was not being read).
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Flush {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.ready.notify_one();
        let (state, _) = self
            .shared
            .done
            .wait_timeout_while(state, FLUSH_TIMEOUT, |state| !state.finished)
            .unwrap_or_else(|e| e.into_inner());
        if state.finished {
            drop(state);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Start the writer thread, writing to `out`; `report` is called (on that
/// thread, with no lock held) with the number of lines dropped since the
/// last report, after the lines that did get through.
pub fn start<W, R>(mut out: W, report: R) -> std::io::Result<(Queue, Flush)>
where
    W: Write + Send + 'static,
    R: Fn(u64) + Send + 'static,
{
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        ready: Condvar::new(),
        done: Condvar::new(),
    });
    let thread = std::thread::Builder::new()
        .name("vaultbridge-log".into())
        .spawn({
            let shared = shared.clone();
            move || {
                let mut batch = Vec::new();
                // How long the queue has been found empty since the last line.
                let mut empty_for = LINGER;
                loop {
                    {
                        let mut state = shared.lock();
                        let empty = state.lines.is_empty() && state.dropped == 0;
                        if empty && state.closed {
                            // Closed, and everything written.
                            state.finished = true;
                            shared.done.notify_all();
                            return;
                        }
                        if empty && empty_for >= LINGER {
                            state.idle = true;
                            while state.idle && !state.closed {
                                state = shared.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                            }
                            state.idle = false;
                            empty_for = Duration::ZERO;
                            continue;
                        }
                    }
                    // Let the lines of concurrent requests gather.
                    std::thread::sleep(BATCH_WINDOW);
                    let dropped = {
                        let mut state = shared.lock();
                        std::mem::swap(&mut batch, &mut state.lines);
                        std::mem::take(&mut state.dropped)
                    };
                    if batch.is_empty() && dropped == 0 {
                        empty_for += BATCH_WINDOW;
                        continue;
                    }
                    empty_for = Duration::ZERO;
                    // stderr closed: nothing else can be done with the lines.
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    PENDING.fetch_sub(batch.len() as u64, Ordering::AcqRel);
                    batch.clear();
                    if batch.capacity() > MAX_QUEUED_BYTES / 4 {
                        // A burst's buffer is not kept for good.
                        batch = Vec::new();
                    }
                    if dropped > 0 {
                        report(dropped);
                    }
                }
            }
        })?;
    Ok((
        Queue {
            shared: shared.clone(),
        },
        Flush {
            shared,
            thread: Some(thread),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that keeps what it got, and can be made to block.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
        writing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writing.store(true, Ordering::SeqCst);
            let _open = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_flush_returns() {
        let sink = Sink::default();
        let (queue, flush) = start(sink.clone(), |_| panic!("nothing dropped")).unwrap();
        for i in 0..10_000 {
            (&queue)
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(flush);
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_000);
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}"))
        );
    }

    /// Waits up to a second for `sink` to hold `want`.
    fn written(sink: &Sink, want: &str) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            if String::from_utf8_lossy(&sink.bytes.lock().unwrap()).contains(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn the_writer_lingers_after_a_batch_then_sleeps_until_a_line_wakes_it() {
        let sink = Sink::default();
        let (queue, flush) = start(sink.clone(), |_| panic!("nothing dropped")).unwrap();
        let idle = || queue.shared.lock().idle;
        // Started idle: the first line wakes it.
        (&queue).write_all(b"first\n").unwrap();
        assert!(written(&sink, "first\n"));
        // Just after a batch it still looks for lines: no wake-up needed.
        assert!(!idle(), "the writer went idle at once");
        (&queue).write_all(b"lingering\n").unwrap();
        assert!(written(&sink, "lingering\n"));
        // Then, nothing for a while: it sleeps until woken.
        let started = std::time::Instant::now();
        while !idle() {
            assert!(
                started.elapsed() < LINGER * 10,
                "the writer never went idle"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        (&queue).write_all(b"after a pause\n").unwrap();
        assert!(written(&sink, "after a pause\n"));
        drop(flush);
        assert_eq!(
            String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap(),
            "first\nlingering\nafter a pause\n"
        );
    }

    #[test]
    fn a_stderr_nobody_reads_does_not_hold_the_exit_longer_than_the_timeout() {
        let sink = Sink::default();
        let (queue, flush) = start(sink.clone(), |_| {}).unwrap();
        let stalled = sink.gate.lock().unwrap();
        (&queue).write_all(b"stuck\n").unwrap();
        while !sink.writing.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = std::time::Instant::now();
        drop(flush);
        let waited = started.elapsed();
        assert!(
            waited >= FLUSH_TIMEOUT && waited < FLUSH_TIMEOUT * 2,
            "{waited:?}"
        );
        drop(stalled);
    }

    #[test]
    fn a_stalled_stderr_drops_whole_lines_counts_them_and_reports_them() {
        let sink = Sink::default();
        let reported = Arc::new(AtomicU64::new(0));
        let (queue, flush) = start(sink.clone(), {
            let reported = reported.clone();
            move |n| {
                reported.fetch_add(n, Ordering::Relaxed);
            }
        })
        .unwrap();
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let before = dropped_lines();
        {
            // stderr blocks: the writer holds one batch, the queue fills.
            let _stalled = sink.gate.lock().unwrap();
            (&queue).write_all(&line).unwrap();
            while !sink.writing.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            for _ in 0..(MAX_QUEUED_BYTES / line.len() + 100) {
                (&queue).write_all(&line).unwrap();
            }
        }
        drop(flush);
        let dropped = reported.load(Ordering::Relaxed);
        assert_eq!(dropped, 100, "the lines beyond the queue's bound");
        assert!(dropped_lines() - before >= 100);
        let written = sink.bytes.lock().unwrap().len();
        assert_eq!(written % line.len(), 0, "only whole lines");
        assert_eq!(written / line.len(), MAX_QUEUED_BYTES / line.len() + 1);
    }
}
