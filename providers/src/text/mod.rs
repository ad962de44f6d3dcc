//! Showing text we did not write: request fields, labels, backend answers.
//!
//! Anything a secret's creator or a backend controls may reach a log line or
//! an `Err` the engine logs. Operators read those logs as their audit trail,
//! so such text is shown escaped (no newline can start a forged line, no
//! terminal escape can repaint one) and bounded (a 900 KB secret name must
//! not become a 3 MB log line).

use std::borrow::Cow;

mod scrub;
pub use scrub::scrub;
use std::fmt::Write as _;

/// How many characters of one foreign string a log line or error shows.
pub const MAX_SHOWN_CHARS: usize = 200;

/// Characters that change how a line is displayed or split without being
/// visible: control characters (newline, ESC, DEL, C1), Unicode line and
/// paragraph separators, every format character (general category Cf:
/// soft hyphen, bidirectional controls, zero-width characters, tags...) and
/// private-use characters (whose look depends on the font). The same set is
/// refused in secret paths ([`crate::path`]).
pub fn is_unsafe_char(c: char) -> bool {
    // Most text is ASCII, where only the control characters are unsafe:
    // every other class starts above it. Called for every character of
    // every name a request shows or a path holds.
    if c.is_ascii() {
        return c.is_ascii_control();
    }
    c.is_control() || is_format_or_private(c)
}

/// Line and paragraph separators (Zl, Zp), format characters (Cf, Unicode
/// 16) and private-use characters (Co).
fn is_format_or_private(c: char) -> bool {
    matches!(c,
        '\u{2028}' | '\u{2029}'
        // Cf
        | '\u{00ad}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061c}'
        | '\u{06dd}'
        | '\u{070f}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08e2}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{110bd}'
        | '\u{110cd}'
        | '\u{13430}'..='\u{1343f}'
        | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0001}'
        | '\u{e0020}'..='\u{e007f}'
        // Co: the BMP's private-use area and planes 15-16.
        | '\u{e000}'..='\u{f8ff}'
        | '\u{f0000}'..='\u{10ffff}')
}

/// `text` escaped and cut to [`MAX_SHOWN_CHARS`]; borrowed when already
/// safe and short, which is the common case.
pub fn shown(text: &str) -> Cow<'_, str> {
    shown_max(text, MAX_SHOWN_CHARS)
}

/// [`shown`] with an explicit bound, in characters.
pub fn shown_max(text: &str, max_chars: usize) -> Cow<'_, str> {
    // Printable ASCII, at most `max_chars` bytes (so characters): nothing
    // to escape or cut. The common case, checked a byte at a time.
    if text.len() <= max_chars && text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Cow::Borrowed(text);
    }
    let short = text.len() <= max_chars || text.chars().nth(max_chars).is_none();
    if short && !text.chars().any(is_unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max_chars * 2) + 32);
    for (count, (at, c)) in text.char_indices().enumerate() {
        if count == max_chars {
            let _ = write!(out, "…(+{} bytes)", text.len() - at);
            break;
        }
        if is_unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `err` and its causes, `outer: inner: …`, each text once (one already
/// inside an outer one is dropped), without reqwest's ` for url (…)` (our
/// messages name the address once already), then [`scrub`]bed.
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let mut text = e.to_string();
        if let Some(at) = text.find(" for url (") {
            text.truncate(at);
        }
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    scrub(&parts.join(": "))
}

/// The innermost cause's text ("Connection refused (os error 111)"),
/// [`scrub`]bed.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    scrub(&current.to_string())
}

/// At most `max` bytes of `text`, cut at a character boundary, with `…`
/// when cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_shortcut_agrees_with_the_classes() {
        for c in (0..=0x7f_u8).map(char::from) {
            assert_eq!(
                is_unsafe_char(c),
                c.is_control() || is_format_or_private(c),
                "{c:?}"
            );
        }
    }

    #[test]
    fn cause_chains_say_each_cause_once_and_truncation_keeps_characters() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "request failed: {} for url (https://v:8200/x)", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::other("connection refused"));
        assert_eq!(cause_chain(&err), "request failed: connection refused");
        assert_eq!(root_cause(&err), "connection refused");
        assert_eq!(truncate("héllo".into(), 2), "h…");
        assert_eq!(truncate("ok".into(), 2), "ok");
    }

    #[test]
    fn safe_short_text_is_borrowed() {
        assert!(matches!(shown("st_db_password"), Cow::Borrowed(_)));
        assert_eq!(shown(""), "");
    }

    #[test]
    fn escapes_everything_that_could_forge_a_line() {
        let forged = "db\nINFO vaultbridge: secret served\r\x1b[2K\u{2028}\u{202e}\u{7f}";
        let out = shown(forged);
        assert!(!out.chars().any(is_unsafe_char), "{out}");
        assert_eq!(
            out,
            "db\\u{a}INFO vaultbridge: secret served\\u{d}\\u{1b}[2K\\u{2028}\\u{202e}\\u{7f}"
        );
    }

    #[test]
    fn escapes_invisible_format_and_private_use_characters() {
        let invisible = [
            '\u{ad}',
            '\u{600}',
            '\u{605}',
            '\u{61c}',
            '\u{6dd}',
            '\u{70f}',
            '\u{890}',
            '\u{8e2}',
            '\u{180e}',
            '\u{200b}',
            '\u{200f}',
            '\u{202a}',
            '\u{202e}',
            '\u{2060}',
            '\u{2064}',
            '\u{2066}',
            '\u{206f}',
            '\u{feff}',
            '\u{fff9}',
            '\u{fffb}',
            '\u{110bd}',
            '\u{13430}',
            '\u{1bca0}',
            '\u{1d173}',
            '\u{e0001}',
            '\u{e0020}',
            '\u{e007f}',
            '\u{e000}',
            '\u{f8ff}',
            '\u{f0000}',
            '\u{ffffd}',
            '\u{100000}',
            '\u{10fffd}',
        ];
        for c in invisible {
            assert!(is_unsafe_char(c), "U+{:04X}", c as u32);
            let text = format!("db{c}password");
            assert_eq!(shown(&text), format!("db\\u{{{:x}}}password", c as u32));
            assert_eq!(
                crate::path::SecretPath::parse(&text),
                Err(crate::path::PathError::UnsafeChar(c as u32))
            );
        }
        // Visible text, including non-Latin scripts and emoji, is kept.
        for text in ["é", "日本語", "مرحبا", "ü-ß", "🔑"] {
            assert!(matches!(shown(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn bounds_long_text_and_says_how_much_was_cut() {
        let long = "é".repeat(1000);
        let out = shown(&long);
        assert!(out.starts_with(&"é".repeat(MAX_SHOWN_CHARS)));
        assert!(out.ends_with(&format!("…(+{} bytes)", 2000 - 2 * MAX_SHOWN_CHARS)));
        assert_eq!(shown_max("abcdef", 3), "abc…(+3 bytes)");
        assert_eq!(shown_max("abc", 3), "abc");
    }
}
