//! The patterns of the access policy and of `default_path`: globs over
//! names and paths, with placeholders for the asking service.
//!
//! `*` matches any run of characters but `/`, `**` any run including `/`,
//! `?` one character but `/`; `{service.name}`, `{stack}`, `{secret}` and
//! `{service.label.KEY}` stand for the caller's own values, always matched
//! literally (a `*` in a service name is a `*`). Everything else is literal.
//!
//! Matching is an NFA over a fixed 256-bit state set: linear in the text,
//! no allocation, no backtracking, whatever a hostile name contains.

use std::fmt;

use vaultbridge_providers::text::is_unsafe_char;

/// A pattern has at most this many pieces once its placeholders are filled
/// in (one state bit each, plus the accepting state).
pub const MAX_PIECES: usize = 255;
/// A placeholder's value is a name: one path segment, at most this long.
pub const MAX_VALUE_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    ServiceName,
    Stack,
    Secret,
    ServiceLabel(String),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::ServiceName => f.write_str("{service.name}"),
            Placeholder::Stack => f.write_str("{stack}"),
            Placeholder::Secret => f.write_str("{secret}"),
            Placeholder::ServiceLabel(key) => write!(f, "{{service.label.{key}}}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Char(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**`
    Globstar,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Piece(Piece),
    Placeholder(Placeholder),
}

/// A parsed pattern; [`Pattern::text`] is what the operator wrote.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
    /// Set when the pattern has neither wildcard nor placeholder.
    literal: Option<String>,
    /// Set when it has no placeholder: the pieces, ready to match.
    pieces: Option<Vec<Piece>>,
}

/// Where a placeholder's value comes from.
pub trait Values {
    /// The value, or why there is none usable.
    fn value(&self, placeholder: &Placeholder) -> Result<&str, String>;
}

impl Pattern {
    /// Parse `text`; `placeholders` and `wildcards` say what it may hold.
    pub fn parse(text: &str, placeholders: bool, wildcards: bool) -> Result<Pattern, String> {
        if text.chars().any(is_unsafe_char) {
            return Err("contains a control or invisible character".into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            let (part, len) = match c {
                '*' if rest.starts_with("**") => (Part::Piece(Piece::Globstar), 2),
                '*' => (Part::Piece(Piece::Star), 1),
                '?' => (Part::Piece(Piece::One), 1),
                '{' => {
                    let end = rest
                        .find('}')
                        .ok_or("has a '{' without its '}'".to_string())?;
                    (Part::Placeholder(placeholder(&rest[1..end])?), end + 1)
                }
                '}' => return Err("has a '}' without its '{'".into()),
                c => (Part::Piece(Piece::Char(c)), c.len_utf8()),
            };
            match &part {
                Part::Placeholder(p) if !placeholders => {
                    return Err(format!("{p}: placeholders are allowed only in paths"));
                }
                Part::Piece(Piece::Char(_)) => {}
                Part::Piece(_) if !wildcards => {
                    return Err("wildcards (*, **, ?) are not allowed here".into());
                }
                _ => {}
            }
            parts.push(part);
            rest = &rest[len..];
        }
        // A placeholder is a whole path segment: `apps/{stack}/x`, never
        // `{stack}-x`, which would let stack `a` reach stack `a-prod`'s.
        for (i, part) in parts.iter().enumerate() {
            if let Part::Placeholder(p) = part {
                let slash = |part: Option<&Part>| {
                    part.is_none_or(|part| *part == Part::Piece(Piece::Char('/')))
                };
                if !slash(i.checked_sub(1).and_then(|j| parts.get(j))) || !slash(parts.get(i + 1)) {
                    return Err(format!(
                        "uses {p} inside a path segment; a placeholder must be a whole segment (between '/')"
                    ));
                }
            }
        }
        if parts.len() > MAX_PIECES / 2 {
            return Err(format!("is longer than {} characters", MAX_PIECES / 2));
        }
        let literal = parts
            .iter()
            .all(|p| matches!(p, Part::Piece(Piece::Char(_))))
            .then(|| text.to_string());
        let pieces = parts
            .iter()
            .map(|p| match p {
                Part::Piece(piece) => Some(*piece),
                Part::Placeholder(_) => None,
            })
            .collect();
        Ok(Pattern {
            text: text.to_string(),
            parts,
            literal,
            pieces,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &Placeholder> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(p) => Some(p),
            Part::Piece(_) => None,
        })
    }

    /// The characters before the first wildcard or placeholder.
    fn literal_prefix(&self) -> String {
        self.parts
            .iter()
            .map_while(|p| match p {
                Part::Piece(Piece::Char(c)) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// Whether `text` matches. A placeholder without a usable value: `Err`.
    pub fn matches(&self, text: &str, values: &dyn Values) -> Result<bool, String> {
        if let Some(literal) = &self.literal {
            return Ok(literal == text);
        }
        if let Some(pieces) = &self.pieces {
            return Ok(nfa_matches(pieces, text));
        }
        let mut pieces = [Piece::One; MAX_PIECES];
        let mut n = 0;
        let mut push = |piece: Piece| -> Result<(), String> {
            *pieces
                .get_mut(n)
                .ok_or("is too long once its placeholders are filled in")? = piece;
            n += 1;
            Ok(())
        };
        for part in &self.parts {
            match part {
                Part::Piece(piece) => push(*piece)?,
                Part::Placeholder(p) => {
                    for c in usable(p, values)?.chars() {
                        push(Piece::Char(c))?;
                    }
                }
            }
        }
        Ok(nfa_matches(&pieces[..n], text))
    }

    /// The text with every placeholder filled in (a pattern without
    /// wildcards, such as `default_path`).
    pub fn render(&self, values: &dyn Values) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Piece(Piece::Char(c)) => out.push(*c),
                Part::Piece(_) => return Err("has a wildcard".into()),
                Part::Placeholder(p) => out.push_str(usable(p, values)?),
            }
        }
        Ok(out)
    }

    /// Conservatively, whether every text `other` matches is matched by
    /// `self` (for "this rule can never decide"): equal patterns, `**`
    /// after a literal prefix of `other`, or `*` over a one-segment pattern.
    pub fn covers(&self, other: &Pattern) -> bool {
        if self.parts == other.parts {
            return true;
        }
        match self.parts.split_last() {
            Some((Part::Piece(Piece::Globstar), head))
                if head
                    .iter()
                    .all(|p| matches!(p, Part::Piece(Piece::Char(_)))) =>
            {
                let prefix: String = self.text.strip_suffix("**").unwrap_or_default().into();
                other.literal_prefix().starts_with(&prefix)
            }
            // Placeholder values never hold a '/'.
            _ if self.text == "*" => {
                !other.text.contains('/') && !other.parts.contains(&Part::Piece(Piece::Globstar))
            }
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn placeholder(name: &str) -> Result<Placeholder, String> {
    Ok(match name {
        "service.name" => Placeholder::ServiceName,
        "stack" => Placeholder::Stack,
        "secret" => Placeholder::Secret,
        _ => match name.strip_prefix("service.label.") {
            Some(key) if !key.is_empty() => Placeholder::ServiceLabel(key.to_string()),
            _ => {
                return Err(format!(
                    "has an unknown placeholder '{{{name}}}'; known: {{service.name}}, {{stack}}, {{secret}}, {{service.label.KEY}}"
                ));
            }
        },
    })
}

/// A placeholder's value, if it is a plain name: letters, digits, `.`,
/// `_`, `-` (what Docker allows in service, stack and secret names), not
/// `.`/`..`, not empty, not huge. Anything else cannot be used.
fn usable<'v>(placeholder: &Placeholder, values: &'v dyn Values) -> Result<&'v str, String> {
    let value = values.value(placeholder)?;
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let bad = if value.is_empty() {
        Some("is empty")
    } else if value.len() > MAX_VALUE_BYTES {
        Some("is too long")
    } else if !plain || value == "." || value == ".." {
        Some("is not a plain name (letters, digits, '.', '_', '-')")
    } else {
        None
    };
    match bad {
        Some(why) => Err(format!("{placeholder} {why}")),
        None => Ok(value),
    }
}

/// A set of NFA states (piece positions 0..=MAX_PIECES).
#[derive(Clone, Copy, Default)]
struct States([u64; 4]);

impl States {
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }
}

/// State `i`: the first `i` pieces match the text read so far.
fn nfa_matches(pieces: &[Piece], text: &str) -> bool {
    // A star may match nothing: its state also reaches the next one.
    let close = |states: &mut States| {
        for (i, piece) in pieces.iter().enumerate() {
            if states.has(i) && matches!(piece, Piece::Star | Piece::Globstar) {
                states.set(i + 1);
            }
        }
    };
    let mut states = States::default();
    states.set(0);
    close(&mut states);
    for c in text.chars() {
        let mut next = States::default();
        for (i, piece) in pieces.iter().enumerate() {
            if !states.has(i) {
                continue;
            }
            match *piece {
                Piece::Char(x) if x == c => next.set(i + 1),
                Piece::One if c != '/' => next.set(i + 1),
                Piece::Star if c != '/' => next.set(i),
                Piece::Globstar => next.set(i),
                _ => {}
            }
        }
        close(&mut next);
        if next.is_empty() {
            return false;
        }
        states = next;
    }
    states.has(pieces.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Caller;
    impl Values for Caller {
        fn value(&self, placeholder: &Placeholder) -> Result<&str, String> {
            match placeholder {
                Placeholder::ServiceName => Ok("billing_api"),
                Placeholder::Stack => Ok("billing"),
                Placeholder::Secret => Ok("a*b"),
                Placeholder::ServiceLabel(k) if k == "team" => Ok("../x"),
                Placeholder::ServiceLabel(_) => Err("no such label".into()),
            }
        }
    }

    fn m(pattern: &str, text: &str) -> bool {
        Pattern::parse(pattern, true, true)
            .unwrap()
            .matches(text, &Caller)
            .unwrap()
    }

    #[test]
    fn wildcards_stop_at_slashes_but_globstars_do_not() {
        assert!(m("apps/*", "apps/db"));
        assert!(!m("apps/*", "apps/db/x"));
        assert!(m("apps/**", "apps/db/x"));
        assert!(m("apps/**", "apps/"));
        assert!(!m("apps/**", "apps"));
        assert!(m("**", ""));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "a/c"));
        assert!(m("*_api", "billing_api"));
        assert!(!m("*_api", "billing_api2"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
        assert!(m("reg.example.com/**/app", "reg.example.com/t/u/app"));
        assert!(m("é*", "été"));
    }

    #[test]
    fn placeholders_match_literally() {
        assert!(m("apps/{stack}/**", "apps/billing/db"));
        assert!(!m("apps/{stack}/**", "apps/payments/db"));
        assert!(m("{service.name}", "billing_api"));
        // `{secret}` is "a*b": not a plain name, so never usable (and
        // never a wildcard).
        let p = Pattern::parse("s/{secret}", true, true).unwrap();
        assert!(p.matches("s/a*b", &Caller).is_err());
        let p = Pattern::parse("t/{service.label.team}/*", true, true).unwrap();
        let err = p.matches("t/../x/y", &Caller).unwrap_err();
        assert!(err.contains("not a plain name"), "{err}");
        let p = Pattern::parse("t/{service.label.owner}", true, true).unwrap();
        assert!(p.matches("t/x", &Caller).is_err());
    }

    #[test]
    fn parsing_says_what_is_wrong() {
        for (text, placeholders, wildcards, wanted) in [
            ("a/{nope}", true, true, "unknown placeholder"),
            ("a/{stack", true, true, "without its '}'"),
            ("a}", true, true, "without its '{'"),
            ("{stack}", false, true, "only in paths"),
            ("a*", true, false, "wildcards"),
            ("a\nb", true, true, "control"),
            ("{service.label.}", true, true, "unknown placeholder"),
            ("apps/{stack}-*", true, true, "whole segment"),
            ("apps/x{stack}/*", true, true, "whole segment"),
            ("{stack}{secret}", true, true, "whole segment"),
        ] {
            let err = Pattern::parse(text, placeholders, wildcards).unwrap_err();
            assert!(err.contains(wanted), "{text:?}: {err}");
        }
        assert!(Pattern::parse(&"a".repeat(200), true, true).is_err());
    }

    #[test]
    fn hostile_text_is_matched_in_linear_time() {
        let pattern = Pattern::parse("*a*a*a*a*a*a*a*a*a*b", true, true).unwrap();
        let text = "a".repeat(1 << 20);
        let started = std::time::Instant::now();
        assert!(!pattern.matches(&text, &Caller).unwrap());
        // Backtracking would take forever; the NFA takes milliseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn renders_templates() {
        let p = Pattern::parse("apps/{stack}/{service.name}", true, false).unwrap();
        assert_eq!(p.render(&Caller).unwrap(), "apps/billing/billing_api");
        let p = Pattern::parse("t/{service.label.team}", true, false).unwrap();
        assert!(p.render(&Caller).is_err());
    }

    #[test]
    fn coverage_is_conservative() {
        let p = |t: &str| Pattern::parse(t, true, true).unwrap();
        assert!(p("apps/**").covers(&p("apps/{stack}/*")));
        assert!(p("**").covers(&p("x")));
        assert!(p("apps/b*").covers(&p("apps/b*")));
        assert!(p("*").covers(&p("billing_*")));
        assert!(!p("*").covers(&p("a/b")));
        assert!(!p("apps/**").covers(&p("ap*")));
        assert!(!p("apps/a*").covers(&p("apps/ab")));
    }
}
