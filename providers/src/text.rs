//! Showing text we did not write: request fields, labels, backend answers.
//!
//! Anything a secret's creator or a backend controls may reach a log line or
//! an `Err` the engine logs. Operators read those logs as their audit trail,
//! so such text is shown escaped (no newline can start a forged line, no
//! terminal escape can repaint one) and bounded (a 900 KB secret name must
//! not become a 3 MB log line).

use std::borrow::Cow;
use std::fmt::Write as _;

/// How many characters of one foreign string a log line or error shows.
pub const MAX_SHOWN_CHARS: usize = 200;

/// Characters that change how a line is displayed or split without being
/// visible: control characters (newline, ESC, DEL, C1), Unicode line and
/// paragraph separators, bidirectional overrides and zero-width characters.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}')
}

/// `text` escaped and cut to [`MAX_SHOWN_CHARS`]; borrowed when already
/// safe and short, which is the common case.
pub fn shown(text: &str) -> Cow<'_, str> {
    shown_max(text, MAX_SHOWN_CHARS)
}

/// [`shown`] with an explicit bound, in characters.
pub fn shown_max(text: &str, max_chars: usize) -> Cow<'_, str> {
    let short = text.len() <= max_chars || text.chars().nth(max_chars).is_none();
    if short && !text.chars().any(is_unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max_chars * 2) + 32);
    let mut count = 0;
    for (at, c) in text.char_indices() {
        if count == max_chars {
            let _ = write!(out, "…(+{} bytes)", text.len() - at);
            break;
        }
        if is_unsafe_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
        count += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bounds_long_text_and_says_how_much_was_cut() {
        let long = "é".repeat(1000);
        let out = shown(&long);
        assert!(out.starts_with(&"é".repeat(MAX_SHOWN_CHARS)));
        assert!(out.ends_with(&format!("…(+{} bytes)", 2000 - 2 * MAX_SHOWN_CHARS)));
        assert_eq!(shown_max("abcdef", 3), "abc…(+3 bytes)");
        assert_eq!(shown_max("abc", 3), "abc");
    }
}
