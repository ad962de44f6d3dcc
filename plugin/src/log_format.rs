//! The text log's fields, byte for byte as `tracing_subscriber`'s
//! `DefaultFields` writes them without colours, with less machinery per
//! field: every GetSecret line has a dozen fields, and the default visitor
//! wraps each name in a (colourless) ANSI style and one more layer of
//! formatting. The message, errors, `r#` names and the `log` crate's
//! metadata fields are left to `DefaultVisitor` itself, which escapes and
//! skips them as it always has. A unit test compares both on every kind of
//! field.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

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

    #[test]
    fn writes_exactly_what_the_default_fields_write() {
        let (plain, default) = (render(true), render(false));
        assert_eq!(plain.lines().count(), 6, "{plain}");
        assert_eq!(plain, default);
    }
}
