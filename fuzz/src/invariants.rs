//! The invariants the fuzz targets and the stable property tests check,
//! written once. `plugin/tests/properties.rs` includes this file with
//! `#[path]`, so it may only use what both builds have: `vaultbridge`,
//! `vaultbridge_providers`, `serde_json`, `url` and std.
//!
//! Every function panics (assert!) when an invariant does not hold; that is
//! what turns a fuzz input or a proptest case into a failure.

use secrecy::ExposeSecret;
use vaultbridge::config::Config;
use vaultbridge::labels::{Decode, Labels, Lookup};
use vaultbridge::protocol::GetSecretRequest;
use vaultbridge_providers::SecretPath;

/// An error message is at most this long, however large the input. Each
/// label error shows at most one foreign string, cut to 200 characters of at
/// most 8 bytes each once escaped (`\u{202e}`), plus under 400 bytes of fixed
/// text: 2 KiB is a real bound, and smaller than what fuzzers and proptest
/// generate, so an unbounded echo of the input is caught.
pub const MAX_ERROR_BYTES: usize = 2048;

/// `Config::parse` errors are one line: the key (`providers.<name>...`)
/// and the message may both quote text from the file.
///
/// `ConfigError`'s Display shows its key and message through
/// `vaultbridge_providers::text::shown_max`. Seeds `fuzz/corpus/config/bug-*.toml`
/// are the inputs that once came back with a raw newline or CR
/// (`default_provider = "a\nb"`, `[providers."a\nb"]`, a key `"a\rb"`).
pub const CONFIG_ERRORS_ARE_ALWAYS_ONE_LINE: bool = true;

/// Accepted paths have no space at either end.
///
/// `SecretPath::parse` refuses a segment with a space at either end. It once
/// accepted `.. ` and `a/. ` (the segment is not `.`/`..` as text), but URL
/// parsers (WHATWG, the `url` crate's `Url::parse`/`join`) strip leading and
/// trailing spaces from the whole input first, so a URL *built as text*,
/// `format!("{base}/{path}")` then parsed, resolves `.. ` to `..`:
/// `Url::parse("https://v/prefix/").join("./.. ")` is `https://v/`. Found by
/// the `path` fuzz target (input `.. `). The Vault client builds URLs with
/// `path_segments_mut`, which encodes the space (`..%20`), so no request
/// escaped even then; the check stays on for that API either way.
pub const SECRET_PATHS_REFUSE_EDGE_SPACES: bool = true;

/// A character that would let text forge or repaint a log line.
fn breaks_a_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

fn assert_clean_message(message: &str) {
    assert!(
        !message.chars().any(breaks_a_line),
        "raw control character in error: {message:?}"
    );
    assert!(
        message.len() <= MAX_ERROR_BYTES,
        "error is {} bytes (bound {MAX_ERROR_BYTES}): {:?}",
        message.len(),
        message.get(..300).unwrap_or(message)
    );
}

/// What every accepted path must be (see `vaultbridge_providers::path`).
pub fn accepted_path(path: &SecretPath) {
    let text = path.as_str();
    assert!(!path.path().is_empty(), "empty path accepted: {text:?}");
    for segment in path.segments() {
        assert!(
            !matches!(segment, "" | "." | ".."),
            "segment {segment:?} accepted in {text:?}"
        );
        // What a proxy that strips `;` path parameters would see.
        let before_params = segment.split(';').next().unwrap_or_default();
        assert!(
            !matches!(before_params, "" | "." | ".."),
            "segment {segment:?} accepted in {text:?}: it is {before_params:?} before its ';'"
        );
    }
    assert!(
        !text.chars().any(breaks_a_line),
        "control character accepted: {text:?}"
    );
    assert!(!text.contains('\\'), "backslash accepted: {text:?}");
    let lower = text.to_ascii_lowercase();
    for escape in ["%2e", "%2f", "%5c"] {
        assert!(!lower.contains(escape), "{escape} accepted: {text:?}");
    }
    // Parsing is idempotent: what was accepted is accepted again, unchanged.
    assert_eq!(SecretPath::parse(text).as_ref(), Ok(path));
    stays_under_a_base_url(path);
}

/// Joined onto a backend's base URL, an accepted path stays under it, also
/// after the URL is printed and parsed again (as a proxy or the server
/// would).
fn stays_under_a_base_url(path: &SecretPath) {
    let base = url::Url::parse("https://vault.test:8200/prefix/").unwrap();

    // 1. Segment by segment, as the Vault client builds its URLs.
    let mut url = base.clone();
    url.path_segments_mut()
        .unwrap()
        .pop_if_empty()
        .push("v1")
        .extend(path.segments());
    assert_under(&url, "/prefix/v1/", path);
    let segments: Vec<&str> = url.path_segments().unwrap().skip(2).collect();
    assert_eq!(
        segments.len(),
        path.segments().count(),
        "segments merged or split: {url} from {path:?}"
    );

    // 2. `Url::join` of the path as a relative reference, i.e. a URL built
    //    as text and parsed. It must be written "./<path>": a bare first
    //    segment with a ':' (an AWS ARN, which the path type accepts) would
    //    be read as a URL scheme.
    let edge_space = path.path().starts_with(' ') || path.path().ends_with(' ');
    if edge_space && !SECRET_PATHS_REFUSE_EDGE_SPACES {
        return;
    }
    let joined = base.join(&format!("./{}", path.path())).unwrap();
    assert_under(&joined, "/prefix/", path);
    assert_eq!(
        joined.path_segments().unwrap().count(),
        1 + path.segments().count(),
        "segments changed: {joined} from {path:?}"
    );
}

fn assert_under(url: &url::Url, prefix: &str, path: &SecretPath) {
    assert_eq!(
        url.host_str(),
        Some("vault.test"),
        "host changed: {url} from {path:?}"
    );
    assert!(
        url.path().starts_with(prefix),
        "escaped {prefix}: {url} from {path:?}"
    );
    assert_eq!(url.fragment(), None, "fragment: {url} from {path:?}");
    let again = url::Url::parse(url.as_str()).unwrap();
    assert_eq!(again.path(), url.path(), "re-parsing moved {url}");
}

/// `SecretPath::parse` on any text: no panic, and what it accepts holds
/// [`accepted_path`].
pub fn path_text(raw: &str) {
    if let Ok(path) = SecretPath::parse(raw) {
        assert_eq!(path.as_str(), raw, "the path was rewritten");
        accepted_path(&path);
    }
}

/// `Lookup::from_labels`: no panic; an accepted lookup carries what the
/// labels said and a valid path; an error is one clean, bounded line.
pub fn labels(secret_name: &str, labels: &impl Labels) {
    match Lookup::from_labels(secret_name, labels) {
        Ok(lookup) => {
            accepted_path(&lookup.path);
            if let Some(path) = labels.label(vaultbridge::labels::PATH) {
                assert_eq!(lookup.path.as_str(), path, "the path label was rewritten");
            }
            let label = |name| labels.label(name);
            assert_eq!(lookup.field.as_deref(), label(vaultbridge::labels::FIELD));
            assert_eq!(
                lookup.version.as_deref(),
                label(vaultbridge::labels::VERSION)
            );
            if let Some(version) = lookup.version.as_deref() {
                let before_params = version.split(';').next().unwrap_or_default();
                assert!(
                    !matches!(before_params, "" | "." | ".."),
                    "version {version:?} accepted: a URL segment would resolve it"
                );
            }
            assert_eq!(
                lookup.provider.as_deref(),
                label(vaultbridge::labels::PROVIDER)
            );
        }
        Err(err) => assert_clean_message(&err.to_string()),
    }
}

/// Docker's request body: any bytes parse or fail without panicking, and a
/// parsed request goes through [`labels`].
pub fn request(body: &[u8]) {
    // The plugin's reader (with its fast path for the engine's bodies)
    // gives serde's result or serde's error, whatever the body.
    let ours = GetSecretRequest::parse(body).map(|req| format!("{req:?}"));
    let serde = serde_json::from_slice::<GetSecretRequest>(body).map(|req| format!("{req:?}"));
    match (ours, serde) {
        (Ok(ours), Ok(serde)) => assert_eq!(ours, serde),
        (Err(ours), Err(serde)) => assert_eq!(ours.to_string(), serde.to_string()),
        (ours, serde) => panic!("parse and serde disagree: {ours:?} / {serde:?}"),
    }
    if let Ok(req) = serde_json::from_slice::<GetSecretRequest>(body) {
        labels(&req.secret_name, &req.secret_labels);
        policy_confines(&req);
    }
}

/// A policy that scopes every service to its own stack's subtree and its
/// team's folder: whatever the request holds (labels, names, stack and
/// team values with `/`, `..`, wildcards, invisible characters), a path it
/// allows is under `apps/<the service's stack>/` or is one file in
/// `teams/<the service's team>/`, where stack and team are single plain
/// segments. The path is computed as the plugin does, with
/// `default_path = "apps/{stack}/{secret}"`.
pub fn policy_confines(req: &GetSecretRequest) {
    use vaultbridge::access::pattern::Pattern;
    use vaultbridge::access::{AccessConfig, Caller, Decision, Policy, RuleConfig};
    let rule = |stack: Option<&str>, labels: &[(&str, &str)], path: &str| RuleConfig {
        name: None,
        service: None,
        service_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        image: None,
        image_digest: None,
        stack: stack.map(str::to_string),
        providers: None,
        paths: vec![path.to_string()],
        decision: Decision::Allow,
    };
    let config = AccessConfig {
        default: Decision::Deny,
        rules: vec![
            rule(Some("*"), &[], "apps/{stack}/**"),
            rule(None, &[("team", "*")], "teams/{service.label.team}/*"),
        ],
    };
    let policy = Policy::compile(&config, &["vault"]).expect("a valid policy");
    let template = Pattern::parse("apps/{stack}/{secret}", true, false).expect("a valid template");
    let render = |key: &str| {
        template.render(&Caller {
            request: req,
            secret: key,
        })
    };
    let Ok(lookup) = Lookup::from_labels_or(&req.secret_name, &req.secret_labels, Some(&render))
    else {
        return;
    };
    let path = lookup.path.as_str();
    let caller = Caller {
        request: req,
        secret: vaultbridge::labels::secret_key(&req.secret_name, &req.secret_labels),
    };
    if policy.decide(&caller, "vault", path).decision == Decision::Deny {
        return;
    }
    let plain = |segment: &str| SecretPath::parse(segment).is_ok() && !segment.contains('/');
    let own_stack = caller
        .stack()
        .is_some_and(|stack| plain(stack) && path.starts_with(&format!("apps/{stack}/")));
    let own_team = req.service_labels.get("team").is_some_and(|team| {
        plain(team)
            && path
                .strip_prefix(&format!("teams/{team}/"))
                .is_some_and(|file| !file.contains('/'))
    });
    assert!(
        own_stack || own_team,
        "the policy allowed {path:?} to a service of stack {:?}, team {:?}",
        caller.stack(),
        req.service_labels.get("team")
    );
}

fn field_lookup(field: &str) -> Lookup {
    Lookup {
        provider: None,
        path: SecretPath::parse("p").unwrap(),
        field: Some(field.to_string()),
        version: None,
        decode: Decode::None,
        reuse: true,
        rotate: false,
        rotation: None,
    }
}

/// `shape` on any bytes and field name: no panic; and when the document is
/// a JSON object whose member `field` is a number, the output is that
/// number's text as it appears in the document (checked without knowing
/// how `shape` finds it: it must be a piece of the input that parses to the
/// same number).
pub fn field_in_any_document(raw: &[u8], field: &str) {
    let shaped = vaultbridge::resolve::shape(raw, &field_lookup(field));
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(raw) else {
        return;
    };
    let Some(number @ serde_json::Value::Number(_)) = object.get(field) else {
        return;
    };
    let out = shaped.expect("a number member must be picked");
    let out = out.expose_secret();
    assert!(
        raw.windows(out.len()).any(|w| w == out),
        "output {:?} is not text of the document",
        String::from_utf8_lossy(out)
    );
    assert_eq!(
        &serde_json::from_slice::<serde_json::Value>(out).unwrap(),
        number
    );
}

/// The parts of a JSON number, from which any valid number text is made:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`. Digits are taken mod 10,
/// so every input makes a valid number.
#[derive(Debug, Clone)]
pub struct JsonNumber {
    pub negative: bool,
    pub int: Vec<u8>,
    pub frac: Option<Vec<u8>>,
    /// (`e` or `E`, sign: 0 none / 1 `+` / 2 `-`, digits)
    pub exp: Option<(bool, u8, Vec<u8>)>,
}

impl JsonNumber {
    pub fn text(&self) -> String {
        let digits = |d: &[u8]| -> String {
            let s: String = d.iter().map(|b| char::from(b'0' + b % 10)).collect();
            if s.is_empty() { "0".into() } else { s }
        };
        let mut out = String::new();
        if self.negative {
            out.push('-');
        }
        let int = digits(&self.int);
        // No leading zero unless the integer part is 0.
        let int = int.trim_start_matches('0');
        out.push_str(if int.is_empty() { "0" } else { int });
        if let Some(frac) = &self.frac {
            out.push('.');
            out.push_str(&digits(frac));
        }
        if let Some((big_e, sign, exp)) = &self.exp {
            out.push(if *big_e { 'E' } else { 'e' });
            match sign % 3 {
                1 => out.push('+'),
                2 => out.push('-'),
                _ => {}
            }
            out.push_str(&digits(exp));
        }
        out
    }
}

/// A JSON object whose member `field` is `number`, written between other
/// members: the output is exactly the number's text (big integers and
/// `1.10` are not reformatted by a round trip through f64).
pub fn field_number_is_exact(others: &[(String, String)], field: &str, number: &JsonNumber) {
    let text = number.text();
    let mut doc = String::from("{");
    for (key, value) in others {
        doc.push_str(&serde_json::to_string(key).unwrap());
        doc.push_str(": ");
        doc.push_str(&serde_json::to_string(value).unwrap());
        doc.push_str(", ");
    }
    // Last, so that it wins over a duplicate key among `others`.
    doc.push_str(&serde_json::to_string(field).unwrap());
    doc.push_str(":\n  ");
    doc.push_str(&text);
    doc.push_str(" \n}");
    let out = vaultbridge::resolve::shape(doc.as_bytes(), &field_lookup(field))
        .unwrap_or_else(|err| panic!("{doc:?}: {err}"));
    assert_eq!(
        String::from_utf8_lossy(out.expose_secret()),
        text,
        "in {doc:?}"
    );
}

/// `Config::parse` on any text: no panic; errors are one line (see
/// [`CONFIG_ERRORS_ARE_ALWAYS_ONE_LINE`]).
pub fn config(text: &str) {
    let Err(err) = Config::parse(text) else {
        return;
    };
    let message = err.to_string();
    if CONFIG_ERRORS_ARE_ALWAYS_ONE_LINE {
        assert!(
            !message.contains(['\n', '\r']),
            "config error is not one line: {message:?}"
        );
    } else if err.key == "(file)" {
        // What holds today: `one_line` takes the newlines out of file-level
        // errors.
        assert!(
            !message.contains('\n'),
            "config error is not one line: {message:?}"
        );
    }
}

/// A template of any source, rendered with `value` for every lookup it
/// makes: no panic, no hang (fuel), the output within the limit, errors
/// clean and bounded. Rendered again with a marker value: no error quotes
/// any 6 bytes of it that the source does not hold (errors about the
/// source as written may quote the source).
pub fn template(source: &str, value: &[u8]) {
    use vaultbridge::template::Template;
    const LIMIT: usize = 4096;
    const MARKER: &str = "Zq7VALUExK9w";
    let template = match Template::compile("t", source, &["p"]) {
        Ok(template) => template,
        Err(err) => return assert_clean_message(&err.message),
    };
    let render = |value: &[u8]| {
        let values: Vec<_> = template
            .plan()
            .inputs
            .iter()
            .map(|_| std::sync::Arc::new(secrecy::SecretSlice::from(value.to_vec())))
            .collect();
        template.render(&values, LIMIT)
    };
    for value in [value, MARKER.as_bytes()] {
        match render(value) {
            Ok(out) => assert!(out.len() <= LIMIT, "{} bytes rendered", out.len()),
            Err(err) => assert_clean_message(&err.message),
        }
    }
    if let Err(err) = render(MARKER.as_bytes()) {
        for at in 0..=MARKER.len() - 6 {
            let piece = &MARKER[at..at + 6];
            assert!(
                source.contains(piece) || !err.message.contains(piece),
                "a render error quotes the value: {:?}",
                err.message
            );
        }
    }
}
