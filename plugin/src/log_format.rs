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
use std::fmt::{self, Write as _};
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
    type Visitor = PlainVisitor<Writer<'a>>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        PlainVisitor::new(target)
    }
}

/// Where [`PlainVisitor`] writes: the layer's [`Writer`], or a line of
/// [`PlainFormat`]'s own (a `String`, written without a dynamic call per
/// piece).
pub trait Sink: fmt::Write {
    /// The same output as a [`Writer`], for `DefaultVisitor`.
    fn as_writer(&mut self) -> Writer<'_>;

    /// The line itself, when it is one of [`PlainFormat`]'s.
    fn line(&mut self) -> Option<&mut String> {
        None
    }
}

impl Sink for Writer<'_> {
    fn as_writer(&mut self) -> Writer<'_> {
        self.by_ref()
    }
}

impl Sink for &mut String {
    /// Without ANSI colours and with escapes sanitized, as
    /// [`PlainFormat`]'s fast path requires of the layer's writer.
    fn as_writer(&mut self) -> Writer<'_> {
        Writer::new(&mut **self)
    }

    fn line(&mut self) -> Option<&mut String> {
        Some(self)
    }
}

/// What `DefaultVisitor` writes for the `message` field on a writer that
/// sanitizes escapes: `write` (the value's text), then the characters its
/// `EscapingWriter` replaces, replaced. That writer maps each character on
/// its own, so escaping the whole text at once is the same as escaping it
/// piece by piece as it is written.
fn message(line: &mut String, write: impl FnOnce(&mut String) -> fmt::Result) -> fmt::Result {
    let start = line.len();
    write(line)?;
    let bytes = &line.as_bytes()[start..];
    // The C0 characters it escapes are single bytes; C1 (U+0080..=U+009F)
    // is 0xC2 then 0x80..=0x9F in UTF-8.
    let escaped = |(i, b): (usize, &u8)| {
        matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f)
            || (*b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
    };
    if !bytes.iter().enumerate().any(escaped) {
        return Ok(());
    }
    let text = line.split_off(start);
    for ch in text.chars() {
        match ch {
            '\x1b' => line.push_str("\\x1b"),
            '\x07' => line.push_str("\\x07"),
            '\x08' => line.push_str("\\x08"),
            '\x0c' => line.push_str("\\x0c"),
            '\x7f' => line.push_str("\\x7f"),
            ch if ('\u{80}'..='\u{9f}').contains(&ch) => {
                write!(line, "\\u{{{:x}}}", ch as u32)?;
            }
            ch => line.push(ch),
        }
    }
    Ok(())
}

pub struct PlainVisitor<W> {
    writer: W,
    is_empty: bool,
    result: fmt::Result,
}

/// What `DefaultVisitor` does with a field, by its name.
enum Name<'a> {
    /// `message` and `r#` names: left to `DefaultVisitor`.
    Special,
    /// The `log` crate's metadata (`log.*`): already in the line's prefix.
    Skipped,
    /// ` name=` and the value.
    Plain(&'a str),
}

fn name_of(field: &Field) -> Name<'static> {
    let name = field.name();
    if name == "message" || name.starts_with("r#") {
        Name::Special
    } else if name.starts_with("log.") {
        Name::Skipped
    } else {
        Name::Plain(name)
    }
}

impl<W: Sink> PlainVisitor<W> {
    fn new(writer: W) -> Self {
        PlainVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }

    /// `DefaultVisitor`'s own handling of this field (it pads and writes).
    fn delegate(&mut self, visit: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut inner = DefaultVisitor::new(self.writer.as_writer(), self.is_empty);
        visit(&mut inner);
        self.result = inner.finish();
        self.is_empty = false;
    }

    /// The `message` field, into a line of [`PlainFormat`]'s (padded, then
    /// as [`message`] writes it).
    fn message(&mut self, write: impl FnOnce(&mut String) -> fmt::Result) {
        let pad = !std::mem::replace(&mut self.is_empty, false);
        if let Some(line) = self.writer.line() {
            if pad {
                line.push(' ');
            }
            self.result = message(line, write);
        }
    }

    /// ` name=` then the value, as `DefaultVisitor` writes it without colour.
    fn field(&mut self, name: &str, value: impl FnOnce(&mut W) -> fmt::Result) {
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

    /// A number or a bool: the text of its `Debug`, written without
    /// `core::fmt` (the same characters: `{:?}` of an integer without
    /// flags is its decimal digits, of a bool `true` or `false`).
    fn text(&mut self, field: &Field, text: &str, debug: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        match name_of(field) {
            Name::Special => self.delegate(|v| v.record_debug(field, debug)),
            Name::Skipped => {}
            Name::Plain(name) => self.field(name, |w| w.write_str(text)),
        }
    }
}

/// A string whose `Debug` is itself in quotes: printable ASCII, without
/// the two characters `Debug` escapes in that range.
fn plain(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `value` (negated when `negative`) in decimal, as `{:?}` writes it, at
/// the end of `buf`.
fn decimal(negative: bool, mut value: u64, buf: &mut [u8; 21]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        buf[at] = b'-';
    }
    // Only ASCII digits and '-' were written.
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

impl<W: Sink> Visit for PlainVisitor<W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        match name_of(field) {
            Name::Special if field.name() == "message" && self.writer.line().is_some() => {
                self.message(|line| {
                    line.push_str(value);
                    Ok(())
                });
            }
            Name::Special => self.delegate(|v| v.record_str(field, value)),
            Name::Skipped => {}
            Name::Plain(name) => self.field(name, |w| {
                if plain(value) {
                    w.write_char('"')?;
                    w.write_str(value)?;
                    w.write_char('"')
                } else {
                    write!(w, "{value:?}")
                }
            }),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let mut buf = [0; 21];
        self.text(field, decimal(false, value, &mut buf), &value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let mut buf = [0; 21];
        let text = decimal(value < 0, value.unsigned_abs(), &mut buf);
        self.text(field, text, &value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.text(field, if value { "true" } else { "false" }, &value);
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
        match name_of(field) {
            Name::Special if field.name() == "message" && self.writer.line().is_some() => {
                self.message(|line| write!(line, "{value:?}"));
            }
            Name::Special => self.delegate(|v| v.record_debug(field, value)),
            Name::Skipped => {}
            Name::Plain(name) => self.field(name, |w| write!(w, "{value:?}")),
        }
    }
}

impl<W: Sink> VisitOutput<fmt::Result> for PlainVisitor<W> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl<W: Sink> VisitFmt for PlainVisitor<W> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// `.event_format(PlainFormat::new(timer))` with `.fmt_fields(PlainFields)`:
/// the lines of `tracing_subscriber`'s default (`Full`) format with `timer`,
/// byte for byte, for a layer without ANSI colours. A line is built in a
/// buffer of this thread's and handed to the layer in one piece: the
/// default writes the level and target through (colourless) ANSI styles
/// and `core::fmt`, and each piece of the line through the layer's writer.
/// An event this does not know how to write exactly as the default does
/// (inside a span, from the `log` crate, for a coloured or unsanitized
/// writer) is written by the default format itself.
#[derive(Debug, Clone)]
pub struct PlainFormat<T> {
    timer: T,
    stock: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Full, T>,
}

impl<T: FormatTime + Clone> PlainFormat<T> {
    pub fn new(timer: T) -> Self {
        PlainFormat {
            stock: tracing_subscriber::fmt::format::Format::default().with_timer(timer.clone()),
            timer,
        }
    }
}

/// Lines longer than this do not keep their buffer's memory.
const LINE_KEPT_BYTES: usize = 16 * 1024;

thread_local! {
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<S, T> tracing_subscriber::fmt::FormatEvent<S, PlainFields> for PlainFormat<T>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    T: FormatTime,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, PlainFields>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // The `log` crate's records all have the target `log` until
        // normalized; a span's name and fields go before the target.
        if writer.has_ansi_escapes()
            || !writer.sanitizes_ansi_escapes()
            || meta.target() == "log"
            || ctx.event_scope().is_some()
        {
            return self.stock.format_event(ctx, writer, event);
        }
        LINE.with(|cell| {
            let mut own = String::new();
            let mut borrowed = cell.try_borrow_mut();
            let line = match &mut borrowed {
                Ok(line) => &mut **line,
                Err(_) => &mut own, // a line being written on this thread logged
            };
            line.clear();
            let written = self.write_line(line, event);
            let result = written.and_then(|()| writer.write_str(line));
            if line.capacity() > LINE_KEPT_BYTES {
                *line = String::new();
            }
            result
        })
    }
}

impl<T: FormatTime> PlainFormat<T> {
    /// What `Format<Full, T>` writes for an event outside any span, without
    /// colours: the time, the level, the target, the fields.
    fn write_line(&self, line: &mut String, event: &tracing::Event<'_>) -> fmt::Result {
        if self.timer.format_time(&mut Writer::new(line)).is_err() {
            line.push_str("<unknown time>");
        }
        let meta = event.metadata();
        line.push_str(match *meta.level() {
            tracing::Level::TRACE => " TRACE ",
            tracing::Level::DEBUG => " DEBUG ",
            tracing::Level::INFO => "  INFO ",
            tracing::Level::WARN => "  WARN ",
            tracing::Level::ERROR => " ERROR ",
        });
        line.push_str(meta.target());
        line.push_str(": ");
        let mut visitor = PlainVisitor::new(&mut *line);
        event.record(&mut visitor);
        visitor.finish()?;
        line.push('\n');
        Ok(())
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

    /// A writer keeping what the layer wrote, for the tests to read.
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

    fn render(plain: bool) -> String {
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

    /// A timer that writes the same text every time.
    #[derive(Clone)]
    struct FixedTime;
    impl FormatTime for FixedTime {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-12-03T17:29:47.123456Z")
        }
    }

    /// A timer that fails after writing part of its text.
    #[derive(Clone)]
    struct FailingTime;
    impl FormatTime for FailingTime {
        fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
            w.write_str("2026-")?;
            Err(fmt::Error)
        }
    }

    /// A value whose `Debug` fails: the default drops the whole line.
    struct Broken;
    impl fmt::Debug for Broken {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            Err(fmt::Error)
        }
    }

    /// [`events`], then what else a whole line can hold: every level,
    /// other targets, spans, the `log` crate's target, escapes in the
    /// message, numbers at their limits, `log.` and `r#` names of every
    /// type.
    fn more_events() {
        events();
        tracing::trace!(n = 1u64, "at trace");
        tracing::debug!(n = 2u64, "at debug");
        tracing::info!(target: "other::target", n = 3u64, "elsewhere");
        tracing::warn!(target: "log", n = 4u64, "as the log crate's");
        tracing::error!(
            max = u64::MAX,
            zero = 0u64,
            min = i64::MIN,
            max_i = i64::MAX,
            minus_one = -1i64,
            big = u128::MAX,
            neg = -5i128,
            no = false,
            yes = true,
            nan = f64::NAN,
            inf = f64::NEG_INFINITY,
            small = 1e-300f64,
            "limits"
        );
        tracing::info!(
            log.target = "t",
            log.line = 3u64,
            log.x = -3i64,
            log.y = true,
            log.z = 1.5f64,
            log.w = ?Some(1),
            r#u = 5u64,
            r#i = -5i64,
            r#b = false,
            r#f = 2.5f64,
            "ansi \u{1b}[31m bel \u{7} bs \u{8} ff \u{c} del \u{7f} c1 \u{85}\u{9b} \u{80}\u{9f}\u{a0} é"
        );
        tracing::info!(
            message = "str message \u{1b}[2J \u{9b} \"q\" é",
            after = 1u8
        );
        tracing::info!(message = ?"debug message \u{1b}", other = 1);
        tracing::info!(message = %"display message \u{1b}");
        // Every character up to U+0250, as the message and as a field.
        let all: String = (0u32..0x250).filter_map(char::from_u32).collect();
        tracing::info!("{all}");
        tracing::info!(message = all.as_str());
        tracing::info!(all = all.as_str(), shown = %all, debug = ?all);
        tracing::info!(message = 7u64, m = 8u64);
        tracing::info!(message = -7i64);
        tracing::info!(message = true);
        tracing::info!(message = 1.5f64);
        tracing::info!(r#message = 1u64);
        tracing::info!(first = ?Broken, "a field that cannot be written");
        tracing::info!("{:?}", Broken);
        tracing::warn!("");
        tracing::info!(only = 1u64);
        {
            let span = tracing::info_span!("outer", id = 7u64, name = "x");
            let _outer = span.enter();
            let inner = tracing::debug_span!("inner");
            let _inner = inner.enter();
            tracing::info!(n = 5u64, "inside spans");
        }
        let empty = tracing::info_span!("empty");
        empty.in_scope(|| tracing::warn!("inside an empty span"));
    }

    /// The lines of the stock format (`DefaultFields`, `Format<Full>`) or
    /// ours (`PlainFields`, `PlainFormat`), with `timer`.
    fn render_lines<T: FormatTime + Clone + Send + Sync + 'static>(ours: bool, timer: T) -> String {
        let buf = Buf::default();
        let writer = {
            let buf = buf.clone();
            move || buf.clone()
        };
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(writer);
        let subscriber = tracing_subscriber::registry();
        if ours {
            let layer = layer
                .fmt_fields(PlainFields)
                .event_format(PlainFormat::new(timer));
            tracing::subscriber::with_default(subscriber.with(layer), more_events);
        } else {
            let layer = layer.fmt_fields(DefaultFields::new()).with_timer(timer);
            tracing::subscriber::with_default(subscriber.with(layer), more_events);
        }
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn plain_format_writes_exactly_the_lines_of_the_default_format() {
        for (ours, stock) in [
            (
                render_lines(true, FixedTime),
                render_lines(false, FixedTime),
            ),
            (
                render_lines(true, FailingTime),
                render_lines(false, FailingTime),
            ),
        ] {
            assert!(stock.lines().count() >= 30, "{stock}");
            for (a, b) in ours.lines().zip(stock.lines()) {
                assert_eq!(a, b);
            }
            assert_eq!(ours, stock);
        }
        // The escapes were exercised, and the spans were written.
        let stock = render_lines(false, FixedTime);
        assert!(
            stock.contains("\\x1b[31m bel \\x07") && stock.contains("\\u{85}"),
            "{stock}"
        );
        assert!(stock.contains("outer{id=7 name=\"x\"}:inner: "), "{stock}");
        assert!(render_lines(false, FailingTime).contains("2026-<unknown time>  INFO "));
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
