//! The text log's fields, byte for byte as `tracing_subscriber`'s
//! `DefaultFields` writes them without colours, with less machinery per
//! field: every GetSecret line has a dozen fields, and the default visitor
//! wraps each name in a (colourless) ANSI style and one more layer of
//! formatting. The message, errors, `r#` names and the `log` crate's
//! metadata fields are left to `DefaultVisitor` itself, which escapes and
//! skips them as it always has. A unit test compares both on every kind of
//! field.
//!
//! And the log's timestamps ([`CachedTime`]), byte for byte as its
//! `SystemTime` timer writes them, with the date and time of day formatted
//! once per second instead of once per line.

use std::cell::Cell;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

/// `.with_timer(CachedTime)`: `2026-12-03T17:09:47.123456Z`, as
/// `SystemTime` writes it. The part up to the second is kept per thread and
/// formatted again only when the second changes; the microseconds are
/// written by hand.
#[derive(Debug, Default, Clone, Copy)]
pub struct CachedTime;

/// The first second of the year 10000: from there on (and before 1970),
/// the library's own timer writes the time, as it always did.
const YEAR_10000: u64 = 253_402_300_800;

thread_local! {
    /// The last second a line was written in, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for CachedTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let since_epoch = std::time::SystemTime::now().duration_since(UNIX_EPOCH);
        match since_epoch {
            Ok(since) if since.as_secs() < YEAR_10000 => write_time(w, since),
            _ => SystemTime.format_time(w),
        }
    }
}

/// `since` (after 1970, before the year 10000) as `SystemTime` writes it.
fn write_time(w: &mut Writer<'_>, since: Duration) -> fmt::Result {
    let secs = since.as_secs();
    let second = SECOND.with(|cached| {
        let (cached_secs, text) = cached.get();
        if cached_secs == secs {
            return text;
        }
        // humantime writes `YYYY-MM-DDTHH:MM:SSZ` for these years.
        let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
        let mut text = [0; 19];
        text.copy_from_slice(&whole.to_string().as_bytes()[..19]);
        cached.set((secs, text));
        text
    });
    let mut fraction = *b".000000Z";
    let mut micros = since.subsec_micros();
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    // Both are ASCII: digits, '-', ':', 'T', '.', 'Z'.
    w.write_str(std::str::from_utf8(&second).map_err(|_| fmt::Error)?)?;
    w.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// `.fmt_fields(PlainFields)` on a text layer without ANSI colours.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainFields;

impl<'a> MakeVisitor<Writer<'a>> for PlainFields {
    type Visitor = PlainVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        PlainVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

pub struct PlainVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl PlainVisitor<'_> {
    /// `DefaultVisitor`'s own handling of this field (it pads and writes).
    fn delegate(&mut self, visit: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        visit(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }

    /// Whether `DefaultVisitor` treats this field specially.
    fn special(name: &str) -> bool {
        name == "message" || name.starts_with("r#")
    }

    /// ` name=` then the value, as `DefaultVisitor` writes it without colour.
    fn field(&mut self, name: &str, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        let padded = if self.is_empty {
            self.is_empty = false;
            Ok(())
        } else {
            self.writer.write_char(' ')
        };
        self.result = padded
            .and_then(|()| self.writer.write_str(name))
            .and_then(|()| self.writer.write_char('='))
            .and_then(|()| value(&mut self.writer));
    }
}

/// A string whose `Debug` is itself in quotes: printable ASCII, without
/// the two characters `Debug` escapes in that range.
fn plain(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if Self::special(name) {
            return self.delegate(|v| v.record_str(field, value));
        }
        if name.starts_with("log.") {
            return; // the `log` crate's metadata, already in the line's prefix
        }
        self.field(name, |w| {
            if plain(value) {
                w.write_char('"')?;
                w.write_str(value)?;
                w.write_char('"')
            } else {
                write!(w, "{value:?}")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.delegate(|v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if Self::special(name) {
            return self.delegate(|v| v.record_debug(field, value));
        }
        if name.starts_with("log.") {
            return;
        }
        self.field(name, |w| write!(w, "{value:?}"));
    }
}

impl VisitOutput<fmt::Result> for PlainVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for PlainVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer \"failure\"")]
    struct Outer(#[source] std::io::Error);

    /// Every kind of field the plugin logs, and the awkward ones.
    fn events() {
        let shown = "st_api";
        let error = Outer(std::io::Error::other("inner cause"));
        let plain_error = std::io::Error::other("alone");
        tracing::info!(
            secret = %shown,
            service = %"a \"quoted\" name",
            provider = "local",
            path = "db/with space",
            odd = "tab\there \"q\" back\\slash é \u{1b}[31m",
            empty = "",
            inputs = 0usize,
            signed = -3i64,
            per_task = true,
            duration_ms = 0.001_785_000_000_000_000_1f64,
            whole = 2.0f64,
            cache = ?Some("hit"),
            r#type = "raw",
            "secret served"
        );
        tracing::warn!(
            error = &error as &(dyn std::error::Error + 'static),
            "with a source"
        );
        tracing::warn!(
            error = &plain_error as &(dyn std::error::Error + 'static),
            "no source"
        );
        tracing::error!("message only: {} \u{1b}[2J", "x");
        tracing::info!(a = 1u64, b = "two");
        tracing::info!(message = "a message field", after = 1u8);
    }

    fn render(plain: bool) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = {
            let buf = buf.clone();
            move || buf.clone()
        };
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_writer(writer);
        let subscriber = tracing_subscriber::registry();
        if plain {
            let subscriber = subscriber.with(layer.fmt_fields(PlainFields));
            tracing::subscriber::with_default(subscriber, events);
        } else {
            let subscriber = subscriber.with(layer.fmt_fields(DefaultFields::new()));
            tracing::subscriber::with_default(subscriber, events);
        }
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// What `timer` writes, as a string.
    fn time_of(timer: &impl FormatTime) -> String {
        let mut text = String::new();
        timer.format_time(&mut Writer::new(&mut text)).unwrap();
        text
    }

    #[test]
    fn cached_time_writes_what_the_system_time_timer_writes() {
        // Now, as both write it: equal but for the microseconds, unless a
        // second ended between the two (then try again).
        let (mut ours, mut theirs) = (time_of(&CachedTime), time_of(&SystemTime));
        for _ in 0..10 {
            if ours[..19] == theirs[..19] {
                break;
            }
            (ours, theirs) = (time_of(&CachedTime), time_of(&SystemTime));
        }
        assert_eq!(ours.len(), theirs.len(), "{ours} / {theirs}");
        assert_eq!(ours[..20], theirs[..20], "{ours} / {theirs}");
        assert!(ours.ends_with('Z'), "{ours}");
        // Twice in the same second (the cached path), and at chosen times.
        for (secs, micros, want) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (0, 7, "1970-01-01T00:00:00.000007Z"),
            (951_782_399, 999_999, "2000-02-28T23:59:59.999999Z"),
            (951_782_400, 120, "2000-02-29T00:00:00.000120Z"),
            (951_782_400, 120_000, "2000-02-29T00:00:00.120000Z"),
            (1_796_318_987, 123_456, "2026-12-03T17:29:47.123456Z"),
            (1_796_318_987, 654_321, "2026-12-03T17:29:47.654321Z"),
            (4_107_542_400, 1, "2100-03-01T00:00:00.000001Z"),
            (YEAR_10000 - 1, 999_999, "9999-12-31T23:59:59.999999Z"),
        ] {
            let mut text = String::new();
            let since = Duration::from_secs(secs) + Duration::from_micros(micros);
            write_time(&mut Writer::new(&mut text), since).unwrap();
            assert_eq!(text, want);
        }
    }

    #[test]
    fn writes_exactly_what_the_default_fields_write() {
        let (plain, default) = (render(true), render(false));
        assert_eq!(plain.lines().count(), 6, "{plain}");
        assert_eq!(plain, default);
    }
}
