//! Docker's secret-provider plugin protocol: the JSON the engine sends and
//! the JSON it expects back (see `docker-secret-driver-protocol.md`).
//!
//! Every request field is optional and unknown fields are ignored: the
//! engine adds fields over time, and a driver that rejects them breaks.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

/// The `Content-Type` go-plugins-helpers answers with (the engine ignores it).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.1+json";

/// A label map of a request: borrowed from the body where it can be.
pub type RequestLabels<'a> = BTreeMap<Cow<'a, str>, Cow<'a, str>>;

/// A label map owning its strings, for requests built here (`check`, `get`).
pub fn owned_labels(pairs: impl IntoIterator<Item = (String, String)>) -> RequestLabels<'static> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// `POST /SecretProvider.GetSecret` (swarmkit `SecretsProviderRequest`).
///
/// Its strings borrow from the body when [`GetSecretRequest::parse`] reads
/// it with its plain reader (the engine's bodies); serde's reading, and
/// requests built from owned strings (`'static`), own them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GetSecretRequest<'a> {
    pub secret_name: Cow<'a, str>,
    #[serde(deserialize_with = "null_as_default")]
    pub secret_labels: RequestLabels<'a>,
    /// The raw spec value: templates are not expanded by the engine.
    pub service_hostname: Cow<'a, str>,
    #[serde(rename = "ServiceID")]
    pub service_id: Cow<'a, str>,
    pub service_name: Cow<'a, str>,
    #[serde(deserialize_with = "null_as_default")]
    pub service_labels: RequestLabels<'a>,
    #[serde(rename = "TaskID")]
    pub task_id: Cow<'a, str>,
    pub task_name: Cow<'a, str>,
    pub task_image: Cow<'a, str>,
    /// Sent by the engine, though missing from go-plugins-helpers' struct.
    #[serde(rename = "NodeID")]
    pub node_id: Cow<'a, str>,
    // `ServiceEndpointSpec` is sent too. Nothing here reads it, so it is
    // skipped like any unknown field: a spec we do not use can neither cost
    // a parse nor fail one when the engine changes its types.
}

impl<'a> GetSecretRequest<'a> {
    /// The engine's body, parsed exactly as `serde_json::from_slice` parses
    /// it, with one UTF-8 check of the whole body instead of one per string
    /// (serde_json's `str` reader skips its own). A body that is not UTF-8
    /// is parsed as bytes, so that it fails with the same message as ever.
    ///
    /// A body in the shape the engine sends (the known fields once each,
    /// strings without escapes, unknown fields' values of plain JSON) is
    /// read by [`plain`], with the same result; anything else, and every
    /// error, is serde's.
    pub fn parse(body: &'a [u8]) -> serde_json::Result<Self> {
        match std::str::from_utf8(body) {
            Ok(text) => match plain::request(text) {
                Some(request) => Ok(request),
                None => serde_json::from_str(text),
            },
            Err(_) => serde_json::from_slice(body),
        }
    }
}

/// A reader of the engine's GetSecret body for the bodies it sends, which
/// gives up (`None`) on anything it does not read exactly as serde_json and
/// the derived `Deserialize` would: then the caller parses with serde, for
/// serde's result or error. What it reads:
///
/// - JSON objects (not arrays, which serde also accepts for a struct), the
///   known fields each at most once (serde refuses a repeated field);
/// - strings without a backslash or a control character (serde unescapes
///   the one and refuses the other); the text is UTF-8 already;
/// - `null` for the label maps (as `null_as_default`), and for no other
///   known field;
/// - unknown fields' values, skipped, when they are made of the above,
///   `true`, `false`, integers without fraction or exponent, and arrays,
///   nested at most [`plain::DEPTH`] deep (serde checks their syntax too);
/// - JSON's four whitespace characters between tokens, and nothing after
///   the object but whitespace.
///
/// A label repeated in one map keeps its last value, as serde's map does.
mod plain {
    use std::borrow::Cow;

    use super::{GetSecretRequest, RequestLabels};

    /// How deep a skipped value may nest before serde is left to read it
    /// (serde's own limit is 128; the engine's deepest is 3).
    pub const DEPTH: u8 = 8;
    // `Cursor::skip` keeps the open containers as bits of a `u16`: a deeper
    // limit would shift the outer ones out and match the wrong closers.
    const _: () = assert!(DEPTH <= 16);

    pub fn request(text: &str) -> Option<GetSecretRequest<'_>> {
        let mut cursor = Cursor { text, at: 0 };
        let mut request = GetSecretRequest::default();
        let mut seen = 0u16;
        cursor.object(|cursor, key| {
            let field = match key {
                "SecretName" => 0,
                "SecretLabels" => 1,
                "ServiceHostname" => 2,
                "ServiceID" => 3,
                "ServiceName" => 4,
                "ServiceLabels" => 5,
                "TaskID" => 6,
                "TaskName" => 7,
                "TaskImage" => 8,
                "NodeID" => 9,
                _ => return cursor.skip(),
            };
            once(&mut seen, field)?;
            match field {
                0 => request.secret_name = Cow::Borrowed(cursor.string()?),
                1 => request.secret_labels = cursor.labels()?,
                2 => request.service_hostname = Cow::Borrowed(cursor.string()?),
                3 => request.service_id = Cow::Borrowed(cursor.string()?),
                4 => request.service_name = Cow::Borrowed(cursor.string()?),
                5 => request.service_labels = cursor.labels()?,
                6 => request.task_id = Cow::Borrowed(cursor.string()?),
                7 => request.task_name = Cow::Borrowed(cursor.string()?),
                8 => request.task_image = Cow::Borrowed(cursor.string()?),
                _ => request.node_id = Cow::Borrowed(cursor.string()?),
            }
            Some(())
        })?;
        cursor.end()?;
        Some(request)
    }

    /// Marks `field` seen; `None` if it was already.
    fn once(seen: &mut u16, field: u16) -> Option<()> {
        let bit = 1 << field;
        if *seen & bit != 0 {
            return None;
        }
        *seen |= bit;
        Some(())
    }

    struct Cursor<'a> {
        text: &'a str,
        at: usize,
    }

    impl<'a> Cursor<'a> {
        /// The next byte after whitespace, not consumed.
        fn peek(&mut self) -> Option<u8> {
            let bytes = self.text.as_bytes();
            while let Some(&byte) = bytes.get(self.at) {
                if !matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
                    return Some(byte);
                }
                self.at += 1;
            }
            None
        }

        fn eat(&mut self, byte: u8) -> Option<()> {
            (self.peek()? == byte).then(|| self.at += 1)
        }

        /// Only whitespace left.
        fn end(&mut self) -> Option<()> {
            self.peek().is_none().then_some(())
        }

        /// `null`, consumed; `false` (nothing consumed) for anything else.
        fn null(&mut self) -> bool {
            self.peek() == Some(b'n') && self.word("null").is_some()
        }

        /// A string without escapes or control characters.
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let bytes = self.text.as_bytes();
            let start = self.at;
            let mut at = start;
            // Eight bytes at a time up to the first `"`, `\\` or control
            // character. Each test ("a byte equal to", "a byte below") may
            // also flag bytes after a true match, never before one: the
            // lowest flagged byte is the first match.
            const ONES: u64 = 0x0101_0101_0101_0101;
            const HIGH: u64 = 0x8080_8080_8080_8080;
            const QUOTES: u64 = ONES * b'"' as u64;
            const BACKSLASHES: u64 = ONES * b'\\' as u64;
            const SPACES: u64 = ONES * 0x20;
            while let Some(chunk) = bytes.get(at..at + 8) {
                let x = u64::from_le_bytes(chunk.try_into().ok()?);
                let (quote, backslash) = (x ^ QUOTES, x ^ BACKSLASHES);
                let found = ((quote.wrapping_sub(ONES) & !quote)
                    | (backslash.wrapping_sub(ONES) & !backslash)
                    | (x.wrapping_sub(SPACES) & !x))
                    & HIGH;
                if found != 0 {
                    at += (found.trailing_zeros() / 8) as usize;
                    break;
                }
                at += 8;
            }
            loop {
                match *bytes.get(at)? {
                    b'"' => break,
                    b'\\' | 0..0x20 => return None,
                    _ => at += 1,
                }
            }
            self.at = at + 1;
            // `"` is ASCII: both ends are character boundaries.
            self.text.get(start..at)
        }

        /// An integer as serde_json reads one: an optional `-`, digits, no
        /// leading zero, no fraction or exponent (left to serde).
        fn integer(&mut self) -> Option<()> {
            let bytes = self.text.as_bytes();
            if bytes.get(self.at) == Some(&b'-') {
                self.at += 1;
            }
            let start = self.at;
            while let Some(b'0'..=b'9') = bytes.get(self.at) {
                self.at += 1;
            }
            let digits = self.at - start;
            (digits > 0
                && !(digits > 1 && bytes[start] == b'0')
                && !matches!(bytes.get(self.at), Some(b'.' | b'e' | b'E')))
            .then_some(())
        }

        /// `word`, consumed.
        fn word(&mut self, word: &str) -> Option<()> {
            let found = self.text.as_bytes()[self.at..].starts_with(word.as_bytes());
            found.then(|| self.at += word.len())
        }

        /// Any value made of what this reader reads, passed over in one
        /// loop (no recursion); `None` for anything else, or for more than
        /// [`DEPTH`] containers open at once.
        fn skip(&mut self) -> Option<()> {
            // The open containers, innermost in the lowest bit: 1 for an
            // object, 0 for an array.
            let (mut open, mut depth) = (0u16, 0u8);
            loop {
                // A value.
                match self.peek()? {
                    b'"' => self.string().map(drop)?,
                    opener @ (b'{' | b'[') => {
                        if depth == DEPTH {
                            return None;
                        }
                        self.at += 1;
                        let object = opener == b'{';
                        let closer = if object { b'}' } else { b']' };
                        if self.peek()? == closer {
                            self.at += 1;
                        } else {
                            open = open << 1 | u16::from(object);
                            depth += 1;
                            if object {
                                self.key()?;
                            }
                            continue;
                        }
                    }
                    b'-' | b'0'..=b'9' => self.integer()?,
                    b'n' => self.word("null")?,
                    b't' => self.word("true")?,
                    b'f' => self.word("false")?,
                    _ => return None,
                }
                // After a value: the containers it closes, then a comma
                // before the next value, or the end.
                loop {
                    if depth == 0 {
                        return Some(());
                    }
                    let object = open & 1 == 1;
                    match self.peek()? {
                        b',' => {
                            self.at += 1;
                            if object {
                                self.key()?;
                            }
                            break;
                        }
                        b'}' if object => {}
                        b']' if !object => {}
                        _ => return None,
                    }
                    self.at += 1;
                    open >>= 1;
                    depth -= 1;
                }
            }
        }

        /// An object's `"key":`.
        fn key(&mut self) -> Option<&'a str> {
            let key = self.string()?;
            self.eat(b':')?;
            Some(key)
        }

        /// `{ "key": value, ... }`, each value read by `each`.
        fn object(&mut self, mut each: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
            self.eat(b'{')?;
            if self.peek()? == b'}' {
                self.at += 1;
                return Some(());
            }
            loop {
                let key = self.key()?;
                each(self, key)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        /// A label map, or `null` for none.
        fn labels(&mut self) -> Option<RequestLabels<'a>> {
            let mut labels = RequestLabels::new();
            if self.null() {
                return Some(labels);
            }
            self.object(|cursor, key| {
                let value = cursor.string()?;
                labels.insert(Cow::Borrowed(key), Cow::Borrowed(value));
                Some(())
            })?;
            Some(labels)
        }
    }
}

/// Go encodes a nil map or slice as `null`; treat it as empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The answer to `GetSecret`: either a value or a non-empty `Err`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetSecretResponse<'a> {
    #[serde(serialize_with = "as_base64", skip_serializing_if = "<[u8]>::is_empty")]
    pub value: &'a [u8],
    #[serde(skip_serializing_if = "str::is_empty")]
    pub err: &'a str,
    pub do_not_reuse: bool,
}

impl<'a> GetSecretResponse<'a> {
    pub fn value(value: &'a [u8], do_not_reuse: bool) -> Self {
        Self {
            value,
            err: "",
            do_not_reuse,
        }
    }

    pub fn error(err: &'a str) -> Self {
        Self {
            value: &[],
            err,
            do_not_reuse: false,
        }
    }
}

/// The JSON of `GetSecretResponse::value(value, do_not_reuse)`, byte for
/// byte as serde_json writes it, built in one buffer: base64 text needs no
/// JSON escaping, so the encoded value goes straight in.
pub fn value_json(value: &[u8], do_not_reuse: bool) -> Vec<u8> {
    let tail = if do_not_reuse {
        r#""DoNotReuse":true}"#
    } else {
        r#""DoNotReuse":false}"#
    };
    if value.is_empty() {
        return format!("{{{tail}").into_bytes();
    }
    let encoded = base64::encoded_len(value.len(), true).unwrap_or(0);
    let mut json = String::with_capacity(12 + encoded + tail.len());
    json.push_str(r#"{"Value":""#);
    base64::engine::general_purpose::STANDARD.encode_string(value, &mut json);
    json.push_str("\",");
    json.push_str(tail);
    json.into_bytes()
}

fn as_base64<S: serde::Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `POST /Plugin.Activate`, for the legacy (v1) plugin discovery path.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ActivateResponse {
    pub implements: [&'static str; 1],
}

impl Default for ActivateResponse {
    fn default() -> Self {
        Self {
            implements: ["secretprovider"],
        }
    }
}

/// Any other failure (unknown route, malformed request): `{"Err": "..."}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResponse {
    pub err: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_engine_request_and_ignores_unknown_fields() {
        let body = r#"{"SecretName":"st_db","SecretLabels":{"vaultbridge.path":"db"},
            "ServiceHostname":"{{.Service.Name}}-{{.Task.Slot}}","ServiceID":"s1",
            "ServiceName":"st_api","ServiceLabels":null,"TaskID":"t1","TaskName":"st_api.1.t1",
            "TaskImage":"wl:1","NodeID":"n1","FutureField":{"x":[1,2]},
            "ServiceEndpointSpec":{"Mode":1,"Ports":[{"Name":"http","Protocol":0,
            "TargetPort":8080,"PublishedPort":80,"PublishMode":1}]}}"#;
        let req: GetSecretRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.secret_name, "st_db");
        assert_eq!(req.node_id, "n1");
        assert!(req.service_labels.is_empty());

        let empty: GetSecretRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.secret_name, "");
    }

    #[test]
    fn parse_is_from_slice_with_one_utf8_check() {
        let bodies: [&[u8]; 11] = [
            br#"{"SecretName":"st_db","SecretLabels":{"a":"b"},"TaskID":"t1","Extra":[1,{"x":null}]}"#,
            br#"{"SecretName":"caf\u00e9 \"q\"","ServiceLabels":null,"ServiceEndpointSpec":null}"#,
            "{\"SecretName\":\"é∑😀\"}".as_bytes(),
            b"{\"SecretName\":\"\xff\xfe\"}",
            b"{\"SecretName\":\"x\"}\xff",
            b"\xc3{}",
            br#"{"SecretName":1}"#,
            b"{\"SecretName\":\"a\x01b\"}",
            br#"{"ServiceEndpointSpec":{"Ports":[{"TargetPort":-1}]}}"#,
            br#"{"SecretName":"\ud800"}"#,
            b"{nope",
        ];
        for body in bodies {
            let ours = GetSecretRequest::parse(body).map(|r| format!("{r:?}"));
            let serde = serde_json::from_slice::<GetSecretRequest>(body).map(|r| format!("{r:?}"));
            match (ours, serde) {
                (Ok(ours), Ok(serde)) => assert_eq!(ours, serde),
                (Err(ours), Err(serde)) => assert_eq!(ours.to_string(), serde.to_string()),
                (ours, serde) => panic!("{body:?}: {ours:?} / {serde:?}"),
            }
        }
    }

    /// `parse` and serde_json's `from_slice` agree on `body`: the same
    /// request (by its `Debug`, which shows every field) or the same error.
    fn agrees_with_serde(body: &[u8]) {
        let ours = GetSecretRequest::parse(body).map(|r| format!("{r:?}"));
        let serde = serde_json::from_slice::<GetSecretRequest>(body).map(|r| format!("{r:?}"));
        match (ours, serde) {
            (Ok(ours), Ok(serde)) => assert_eq!(ours, serde, "{}", String::from_utf8_lossy(body)),
            (Err(ours), Err(serde)) => assert_eq!(ours.to_string(), serde.to_string()),
            (ours, serde) => panic!("{}: {ours:?} / {serde:?}", String::from_utf8_lossy(body)),
        }
    }

    /// When the plain reader answers for `body`, serde accepts it too, with
    /// the same request; whether it answered.
    fn plain_agrees_with_serde(body: &str) -> bool {
        let Some(ours) = plain::request(body) else {
            return false;
        };
        let serde = serde_json::from_str::<GetSecretRequest>(body)
            .unwrap_or_else(|err| panic!("plain accepted, serde refused ({err}): {body:?}"));
        assert_eq!(format!("{ours:?}"), format!("{serde:?}"), "{body:?}");
        true
    }

    /// The engine's body (as bench/oha.sh and the tests send it).
    const ENGINE: &str = r#"{"SecretName":"bench","SecretLabels":{},"ServiceHostname":"{{.Service.Name}}-{{.Task.Slot}}","ServiceID":"k3fz2yq8e0v1","ServiceName":"st_api","ServiceLabels":{"com.docker.stack.namespace":"st"},"TaskID":"x9q1w2e3r4t5","TaskName":"st_api.2.x9q1w2e3r4t5","TaskImage":"repo/api:1.4@sha256:0123","NodeID":"n7c0a1b2c3d4","ServiceEndpointSpec":{"Mode":1,"Ports":[{"Name":"http","Protocol":0,"TargetPort":8080,"PublishedPort":80,"PublishMode":1}]}}"#;

    #[test]
    fn the_plain_reader_reads_the_engines_bodies_as_serde_does() {
        let bodies = [
            ENGINE,
            "{}",
            " {\n\t\"SecretName\" :\r \"x\" , \"SecretLabels\":null,\"ServiceLabels\":null} \n",
            r#"{"SecretLabels":{"a":"1","b":"2","a":"3"},"ServiceEndpointSpec":null}"#,
            r#"{"ServiceEndpointSpec":{"Mode":4294967295,"Ports":null}}"#,
            r#"{"ServiceEndpointSpec":{"Ports":[]}}"#,
            r#"{"ServiceEndpointSpec":{"Ports":[{},{"Name":"é😀 x","PublishMode":0}]}}"#,
            r#"{"SecretName":"0123456789abcdefghijklmnopqrstuvwxyz-long-enough-for-eight-byte-steps é∑😀"}"#,
            r#"{"Future":[true,false,null,-0,-12,0,{"a":[[]],"b":{}}],"SecretName":"x","Future":"y"}"#,
            r#"{"ServiceEndpointSpec":{"Ports":[{"TargetPort":-1}]}}"#,
        ];
        for body in bodies {
            assert!(plain::request(body).is_some(), "{body}");
            agrees_with_serde(body.as_bytes());
        }
    }

    #[test]
    fn unknown_values_the_plain_reader_does_not_read_exactly_are_left_to_serde() {
        let deep = |n| format!(r#"{{"Future":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        let bodies = [
            deep(plain::DEPTH as usize + 1),
            deep(130),
            r#"{"Future":1.5}"#.to_owned(),
            r#"{"Future":1e3}"#.to_owned(),
            r#"{"Future":01}"#.to_owned(),
            r#"{"Future":-}"#.to_owned(),
            r#"{"Future":"\n"}"#.to_owned(),
            r#"{"Future":nul}"#.to_owned(),
            r#"{"Future":truex}"#.to_owned(),
            r#"{"Future":[1,]}"#.to_owned(),
            r#"{"Future":{"a"}}"#.to_owned(),
        ];
        for body in &bodies {
            assert!(plain::request(body).is_none(), "{body}");
            agrees_with_serde(body.as_bytes());
        }
        assert!(plain::request(&deep(plain::DEPTH as usize)).is_some());
    }

    #[test]
    fn parse_agrees_with_serde_on_every_edit_of_engine_bodies() {
        let mut seeds: Vec<Vec<u8>> = vec![
            ENGINE.as_bytes().to_vec(),
            br#"{"SecretName":"a","SecretLabels":{"k":"v"},"ServiceLabels":null,"ServiceEndpointSpec":{"Mode":0,"Ports":[{"Name":"","TargetPort":0},{}]}}"#.to_vec(),
            br#"{"ServiceEndpointSpec":null,"SecretLabels":null}"#.to_vec(),
        ];
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/request");
        for entry in std::fs::read_dir(corpus).unwrap() {
            seeds.push(std::fs::read(entry.unwrap().path()).unwrap());
        }
        let bytes: &[u8] = b"\"\\{}[],:0129-.eEnul \n\t\r\x01\x1fxa\xc3\xa9\xff";
        let words: [&[u8]; 12] = [
            b"null",
            b"4294967296",
            b"4294967295",
            b"01",
            b"1.0",
            b"1e2",
            b"-0",
            b"\"\\u0041\"",
            b"\"SecretName\":\"x\",",
            b",\"Extra\":[1]",
            b"\"Mode\":2,",
            b"[]",
        ];
        let mut checked = 0;
        for seed in &seeds {
            agrees_with_serde(seed);
            for at in 0..=seed.len() {
                let mut edits: Vec<Vec<u8>> = Vec::new();
                if at < seed.len() {
                    let mut removed = seed.clone();
                    removed.remove(at);
                    edits.push(removed);
                    edits.push([&seed[..=at], &seed[at..]].concat());
                }
                for &byte in bytes {
                    edits.push([&seed[..at], &[byte], &seed[at..]].concat());
                    if at < seed.len() {
                        edits.push([&seed[..at], &[byte], &seed[at + 1..]].concat());
                    }
                }
                for word in words {
                    edits.push([&seed[..at], word, &seed[at..]].concat());
                }
                for edit in edits {
                    agrees_with_serde(&edit);
                    checked += 1;
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn value_json_is_what_serde_writes() {
        for value in [&b""[..], b"x", b"pw", b"supersecret", &[0, 255, 34, 92, 10]] {
            for do_not_reuse in [false, true] {
                let serde = serde_json::to_vec(&GetSecretResponse::value(value, do_not_reuse));
                assert_eq!(value_json(value, do_not_reuse), serde.unwrap());
            }
        }
    }

    #[test]
    fn encodes_values_as_padded_base64() {
        let json = serde_json::to_string(&GetSecretResponse::value(b"supersecret", true)).unwrap();
        assert_eq!(json, r#"{"Value":"c3VwZXJzZWNyZXQ=","DoNotReuse":true}"#);
        let json = serde_json::to_string(&GetSecretResponse::error("boom")).unwrap();
        assert_eq!(json, r#"{"Err":"boom","DoNotReuse":false}"#);
    }

    /// Review: every string length around the 8-byte steps, with each kind
    /// of stop byte (and multi-byte characters) at every offset.
    #[test]
    fn the_string_scan_agrees_with_serde_at_every_offset() {
        let specials: [&str; 14] = [
            "\"", "\\", "\\n", "\u{0}", "\u{1f}", " ", "!", "\u{7f}", "\u{80}", "é", "😀",
            "\u{2028}", "\t", "\\\"",
        ];
        let mut checked = 0;
        for len in 0..40usize {
            for at in 0..=len {
                for special in specials {
                    for field in ["SecretName", "TaskImage"] {
                        let text: String = (0..len)
                            .map(|i| {
                                if i == at {
                                    special.to_string()
                                } else {
                                    "a".to_string()
                                }
                            })
                            .collect();
                        let body = format!(
                            "{{\"{field}\":\"{text}\",\"SecretLabels\":{{\"{text}\":\"{text}\"}}}}"
                        );
                        agrees_with_serde(body.as_bytes());
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000);
    }

    /// Review: random bodies from a grammar around the engine's shape, with
    /// hostile choices at every point; `plain` must agree with serde
    /// whenever it answers, and `parse` with serde always.
    #[test]
    fn random_hostile_bodies_agree_with_serde() {
        fn ws(rng: &mut fastrand::Rng, out: &mut String) {
            const WS: [&str; 10] = [
                "", "", "", " ", "\n", "\t", "\r", "\u{b}", "\u{c}", "\u{a0}",
            ];
            if rng.u8(..4) == 0 {
                out.push_str(WS[rng.usize(..WS.len())]);
            }
        }
        fn string(rng: &mut fastrand::Rng, out: &mut String) {
            const PIECES: [&str; 22] = [
                "a",
                "Z",
                "0",
                " ",
                "é",
                "😀",
                "\u{7f}",
                "\u{85}",
                "\\n",
                "\\\"",
                "\\\\",
                "\\u0041",
                "\\ud83d\\ude00",
                "\\ud800",
                "\u{1}",
                "\n",
                "\u{1b}[31m",
                "SecretName",
                "{",
                "}",
                ":",
                ",",
            ];
            if rng.u8(..30) == 0 {
                out.push_str(["null", "1", "true", "[]", "{}", "\"a\"\"b\""][rng.usize(..6)]);
                return;
            }
            out.push('"');
            for _ in 0..rng.usize(..20) {
                if rng.bool() {
                    out.push('a');
                } else {
                    out.push_str(PIECES[rng.usize(..PIECES.len())]);
                }
            }
            if rng.u8(..40) != 0 {
                out.push('"');
            }
        }
        fn number(rng: &mut fastrand::Rng, out: &mut String) {
            const N: [&str; 26] = [
                "0",
                "1",
                "80",
                "4294967295",
                "4294967296",
                "9999999999",
                "99999999999",
                "18446744073709551616",
                "00",
                "01",
                "-0",
                "-1",
                "1.0",
                "1e2",
                "1E0",
                "0.0",
                "1.",
                "+1",
                "0x1",
                "null",
                "\"1\"",
                "true",
                "1 1",
                "NaN",
                "-",
                "123456789012345678901234567890",
            ];
            if rng.bool() {
                out.push_str(&rng.u32(..).to_string());
            } else {
                out.push_str(N[rng.usize(..N.len())]);
            }
        }
        fn key(rng: &mut fastrand::Rng, out: &mut String, known: &[&str]) {
            if rng.u8(..10) == 0 {
                string(rng, out);
            } else {
                out.push('"');
                out.push_str(known[rng.usize(..known.len())]);
                out.push('"');
            }
        }
        fn labels(rng: &mut fastrand::Rng, out: &mut String) {
            match rng.u8(..12) {
                0 => out.push_str("null"),
                1 => out.push_str("[]"),
                2 => out.push_str("nul"),
                3 => out.push_str("nullx"),
                _ => {
                    out.push('{');
                    let n = rng.usize(..4);
                    for i in 0..n {
                        ws(rng, out);
                        if rng.u8(..3) == 0 {
                            out.push_str("\"k\"");
                        } else {
                            string(rng, out);
                        }
                        ws(rng, out);
                        out.push(':');
                        ws(rng, out);
                        string(rng, out);
                        ws(rng, out);
                        if i + 1 < n || rng.u8(..20) == 0 {
                            out.push(',');
                        }
                    }
                    out.push('}');
                }
            }
        }
        fn object(
            rng: &mut fastrand::Rng,
            out: &mut String,
            known: &[&str],
            value: &dyn Fn(&mut fastrand::Rng, &mut String, &str),
        ) {
            if rng.u8(..25) == 0 {
                out.push_str(["[]", "[\"x\"]", "null", "\"x\"", "{,}"][rng.usize(..5)]);
                return;
            }
            out.push('{');
            let n = rng.usize(..known.len() + 2);
            for i in 0..n {
                ws(rng, out);
                let mut k = String::new();
                key(rng, &mut k, known);
                out.push_str(&k);
                ws(rng, out);
                if rng.u8(..50) != 0 {
                    out.push(':');
                }
                ws(rng, out);
                value(rng, out, k.trim_matches('"'));
                ws(rng, out);
                if i + 1 < n || rng.u8(..30) == 0 {
                    out.push(',');
                }
            }
            if rng.u8(..40) != 0 {
                out.push('}');
            }
        }
        fn port(rng: &mut fastrand::Rng, out: &mut String) {
            object(
                rng,
                out,
                &[
                    "Name",
                    "Protocol",
                    "TargetPort",
                    "PublishedPort",
                    "PublishMode",
                    "Other",
                ],
                &|rng, out, k| {
                    if k == "Name" {
                        string(rng, out)
                    } else {
                        number(rng, out)
                    }
                },
            );
        }
        fn spec(rng: &mut fastrand::Rng, out: &mut String) {
            if rng.u8(..8) == 0 {
                out.push_str("null");
                return;
            }
            object(
                rng,
                out,
                &["Mode", "Ports", "Other"],
                &|rng, out, k| match k {
                    "Mode" => number(rng, out),
                    _ => match rng.u8(..8) {
                        0 => out.push_str("null"),
                        1 => out.push_str("[ ]"),
                        _ => {
                            out.push('[');
                            let n = rng.usize(..3);
                            for i in 0..n {
                                ws(rng, out);
                                port(rng, out);
                                ws(rng, out);
                                if i + 1 < n || rng.u8(..20) == 0 {
                                    out.push(',');
                                }
                            }
                            out.push(']');
                        }
                    },
                },
            );
        }
        const TOP: [&str; 13] = [
            "SecretName",
            "SecretLabels",
            "ServiceHostname",
            "ServiceID",
            "ServiceName",
            "ServiceLabels",
            "TaskID",
            "TaskName",
            "TaskImage",
            "NodeID",
            "ServiceEndpointSpec",
            "secretName",
            "Unknown",
        ];
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let (mut fast, mut total) = (0, 0);
        for _ in 0..300_000 {
            let mut body = String::new();
            if rng.u8(..50) == 0 {
                body.push('\u{feff}');
            }
            ws(&mut rng, &mut body);
            object(&mut rng, &mut body, &TOP, &|rng, out, k| match k {
                "SecretLabels" | "ServiceLabels" => labels(rng, out),
                "ServiceEndpointSpec" => spec(rng, out),
                _ => string(rng, out),
            });
            ws(&mut rng, &mut body);
            if rng.u8(..40) == 0 {
                body.push_str(["x", "{}", "\u{0}", ",", "\u{a0}"][rng.usize(..5)]);
            }
            if plain_agrees_with_serde(&body) {
                fast += 1;
            }
            agrees_with_serde(body.as_bytes());
            total += 1;
        }
        eprintln!("fast path on {fast} of {total}");
        assert!(fast > 10_000, "{fast}");
    }

    /// Review: unknown fields' values made of random token streams (mostly
    /// well formed, nested around `plain::DEPTH`, with stray closers,
    /// commas, colons and prefixes of words); plain must agree with serde
    /// whenever it answers, and parse with from_slice always.
    #[test]
    fn review_random_skipped_values_agree_with_serde() {
        fn value(rng: &mut fastrand::Rng, out: &mut String, depth: usize) {
            const WS: [&str; 6] = ["", "", " ", "\n", "\t\r", "  "];
            const LEAF: [&str; 24] = [
                "0",
                "-0",
                "-",
                "12",
                "-12",
                "01",
                "1.5",
                "1e3",
                "true",
                "false",
                "null",
                "tru",
                "nul",
                "fals",
                "truefalse",
                "\"\"",
                "\"a\"",
                "\"\\n\"",
                "\"é\"",
                "\"SecretName\"",
                "-a",
                "--1",
                "1-",
                "0-",
            ];
            const GOOD: [&str; 9] = [
                "0", "-0", "12", "-12", "true", "false", "null", "\"a\"", "\"é\"",
            ];
            out.push_str(WS[rng.usize(..WS.len())]);
            let nest = depth < 12 && rng.u8(..3) != 0;
            if !nest {
                if rng.u8(..20) == 0 {
                    out.push_str(LEAF[rng.usize(..LEAF.len())]);
                } else {
                    out.push_str(GOOD[rng.usize(..GOOD.len())]);
                }
            } else if rng.bool() {
                out.push('[');
                let n = rng.usize(..3);
                for i in 0..n {
                    value(rng, out, depth + 1);
                    if i + 1 < n || rng.u8(..200) == 0 {
                        out.push(',');
                    }
                }
                out.push_str(WS[rng.usize(..WS.len())]);
                out.push(if rng.u8(..200) == 0 { '}' } else { ']' });
            } else {
                out.push('{');
                let n = rng.usize(..4);
                for i in 0..n {
                    out.push_str(WS[rng.usize(..WS.len())]);
                    out.push_str(if rng.u8(..30) == 0 {
                        ["k", "\"\\u0041\"", "1"][rng.usize(..3)]
                    } else {
                        ["\"k\"", "\"SecretName\"", "\"\""][rng.usize(..3)]
                    });
                    out.push_str(WS[rng.usize(..WS.len())]);
                    if rng.u8(..200) != 0 {
                        out.push(':');
                    }
                    value(rng, out, depth + 1);
                    if i + 1 < n || rng.u8(..200) == 0 {
                        out.push(',');
                    }
                }
                out.push_str(WS[rng.usize(..WS.len())]);
                out.push(if rng.u8(..200) == 0 { ']' } else { '}' });
            }
            out.push_str(WS[rng.usize(..WS.len())]);
        }
        let mut rng = fastrand::Rng::with_seed(0xdeb7);
        let (mut fast, mut deep) = (0, 0);
        for _ in 0..200_000 {
            let mut body = String::from("{");
            if rng.bool() {
                body.push_str("\"SecretName\":\"s\",");
            }
            body.push_str(["\"Future\":", "\"ServiceEndpointSpec\":", "\"X\" :"][rng.usize(..3)]);
            value(&mut rng, &mut body, 0);
            if rng.u8(..4) == 0 {
                body.push_str(",\"SecretName\":\"t\"");
            }
            if rng.u8(..4) == 0 {
                body.push_str(",\"Future\":[1]");
            }
            body.push('}');
            if plain_agrees_with_serde(&body) {
                fast += 1;
                if body.matches('[').count() + body.matches('{').count() > 6 {
                    deep += 1;
                }
            }
            agrees_with_serde(body.as_bytes());
        }
        eprintln!("fast {fast}, deep {deep}");
        assert!(fast > 5_000 && deep > 100, "{fast} {deep}");
    }

    /// Review: every nesting depth around `plain::DEPTH`, arrays, objects
    /// and mixes, empty and not, plain must agree with serde.
    #[test]
    fn review_every_depth_around_the_limit_agrees_with_serde() {
        for n in 0..=(plain::DEPTH as usize + 3) {
            for inner in ["", "1", "{}", "[]", "{\"a\":1}"] {
                for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
                    let body = format!(
                        "{{\"Future\":{}{}{},\"SecretName\":\"x\"}}",
                        open.repeat(n),
                        if inner.is_empty() && open == "{\"k\":" && n > 0 {
                            "0"
                        } else {
                            inner
                        },
                        close.repeat(n)
                    );
                    plain_agrees_with_serde(&body);
                    agrees_with_serde(body.as_bytes());
                }
            }
        }
    }
}
