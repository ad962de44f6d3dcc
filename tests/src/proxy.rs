//! Misbehaving network peers for any HTTP backend: a server that accepts
//! and never answers ([`BlackHole`]), and a relay in front of a real server
//! that, by a rule over each request, passes it on, loses its answer
//! ([`LossyProxy`]: the call took effect, the client cannot know) or answers
//! in the server's place ([`ThrottleProxy`]: 429 + `Retry-After`).
//!
//! Plain HTTP/1.1 only (OpenBao, moto); one request per connection
//! (`Connection: close`). Each stops on drop: the listener, the accepting
//! thread and the connections it holds end.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

/// A TCP listener that accepts connections and never answers (a hung
/// server), for deadline tests. Stopped on drop: the listening socket and
/// every connection it accepted are closed.
pub struct BlackHole {
    pub port: u16,
    _accepting: AcceptLoop,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        // The thread owns the listener and the held connections: both are
        // closed when it returns.
        let mut held = Vec::new();
        let accepting = AcceptLoop::start(move |stream| held.push(stream));
        BlackHole {
            port: accepting.port,
            _accepting: accepting,
        }
    }
}

/// A listener on 127.0.0.1 whose thread hands each connection to `serve`,
/// until dropped: then the thread, the listener and what `serve` kept end.
pub struct AcceptLoop {
    pub port: u16,
    stop: Arc<AtomicBool>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl AcceptLoop {
    pub fn start(mut serve: impl FnMut(TcpStream) + Send + 'static) -> AcceptLoop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let accepting = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                serve(stream);
            }
        });
        AcceptLoop {
            port,
            stop,
            accepting: Some(accepting),
        }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept() so that the thread sees `stop` (wait
        // for it only then: never hang a test in drop).
        if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && let Some(accepting) = self.accepting.take()
        {
            let _ = accepting.join();
        }
    }
}

/// One request as the proxy read it.
pub struct Request<'a> {
    /// The request line and headers.
    pub head: &'a str,
    /// The request target (`/v1/secret/data/app`).
    pub path: &'a str,
    pub body: &'a [u8],
}

impl Request<'_> {
    /// `needle` is in the request target, a header or the body (AWS's JSON
    /// protocol names the secret in the body only).
    pub fn mentions(&self, needle: &str) -> bool {
        self.head.contains(needle) || String::from_utf8_lossy(self.body).contains(needle)
    }
}

/// What the proxy does with one request.
pub enum Action {
    /// Pass it on and relay the answer.
    Relay,
    /// Pass it on (the server acts on it), then answer this instead.
    RelayThenAnswer(Vec<u8>),
    /// Answer this without passing the request on.
    Answer(Vec<u8>),
}

/// A relay to `upstream` (`http://host:port`) that applies a rule to each
/// request. Stopped on drop.
pub struct Proxy {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    pub port: u16,
    _accepting: AcceptLoop,
}

impl Proxy {
    pub fn start(
        upstream: &str,
        rule: impl Fn(&Request<'_>) -> Action + Send + Sync + 'static,
    ) -> Proxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let rule = Arc::new(rule);
        let accepting = AcceptLoop::start(move |stream| {
            let (upstream, rule) = (upstream.clone(), rule.clone());
            std::thread::spawn(move || relay(stream, &upstream, &*rule));
        });
        Proxy {
            addr: format!("http://127.0.0.1:{}", accepting.port),
            port: accepting.port,
            _accepting: accepting,
        }
    }
}

/// An HTTP proxy that relays every request, but answers `502 Bad Gateway`
/// to those whose path contains `fail_after` — after the server has served
/// them, as a gateway that lost the answer would: the call took effect, the
/// client cannot know. Stopped on drop.
pub struct LossyProxy {
    pub addr: String,
    _proxy: Proxy,
}

impl LossyProxy {
    pub fn start(upstream: &str, fail_after: &str) -> LossyProxy {
        let fail_after = fail_after.to_string();
        let proxy = Proxy::start(upstream, move |request| {
            if request.path.contains(&fail_after) {
                Action::RelayThenAnswer(http_answer(
                    502,
                    "Bad Gateway",
                    &[],
                    "{\"errors\":[\"gateway\"]}",
                ))
            } else {
                Action::Relay
            }
        });
        LossyProxy {
            addr: proxy.addr.clone(),
            _proxy: proxy,
        }
    }
}

/// A relay that answers `429 Too Many Requests` with `Retry-After` in the
/// server's place to the next [`ThrottleProxy::arm`]ed requests that mention
/// a needle, and counts every request that mentions it. Stopped on drop.
pub struct ThrottleProxy {
    pub addr: String,
    state: Arc<Throttle>,
    _proxy: Proxy,
}

struct Throttle {
    /// How many more matching requests get a 429.
    armed: AtomicU32,
    /// The `Retry-After` they carry, in seconds.
    retry_after: AtomicU32,
    /// Matching requests seen (throttled or relayed).
    seen: AtomicUsize,
}

impl ThrottleProxy {
    /// `body` is the backend's own 429 body (`{"errors":[...]}` for Vault,
    /// `{"__type":"ThrottlingException",...}` for AWS); `headers` its extra
    /// headers (AWS's `x-amzn-ErrorType`).
    pub fn start(
        upstream: &str,
        needle: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> ThrottleProxy {
        let state = Arc::new(Throttle {
            armed: AtomicU32::new(0),
            retry_after: AtomicU32::new(0),
            seen: AtomicUsize::new(0),
        });
        let (needle, body) = (needle.to_string(), body.to_string());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let shared = state.clone();
        let proxy = Proxy::start(upstream, move |request| {
            if !request.mentions(&needle) {
                return Action::Relay;
            }
            shared.seen.fetch_add(1, Ordering::SeqCst);
            let throttled = shared
                .armed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !throttled {
                return Action::Relay;
            }
            let wait = shared.retry_after.load(Ordering::SeqCst).to_string();
            let mut extra: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            extra.push(("Retry-After", &wait));
            Action::Answer(http_answer(429, "Too Many Requests", &extra, &body))
        });
        ThrottleProxy {
            addr: proxy.addr.clone(),
            state,
            _proxy: proxy,
        }
    }

    /// The next `count` matching requests get a 429 with `Retry-After:
    /// <retry_after_secs>`; 0 relays them all again.
    pub fn arm(&self, count: u32, retry_after_secs: u32) {
        self.state
            .retry_after
            .store(retry_after_secs, Ordering::SeqCst);
        self.state.armed.store(count, Ordering::SeqCst);
    }

    /// Matching requests that reached the proxy so far.
    pub fn seen(&self) -> usize {
        self.state.seen.load(Ordering::SeqCst)
    }
}

/// A whole HTTP/1.1 answer with a JSON body.
pub fn http_answer(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (key, value) in headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    head.into_bytes()
}

/// One request from `client` to `upstream` and its answer back, as `rule` says.
fn relay(mut client: TcpStream, upstream: &str, rule: &(dyn Fn(&Request<'_>) -> Action + Sync)) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    // Headers, then as many body bytes as Content-Length says.
    let header_end = loop {
        let Ok(n) = client.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..header_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while request.len() < header_end + length {
        let Ok(n) = client.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let action = rule(&Request {
        head: &head,
        path,
        body: &request[header_end..],
    });
    let replacement = match action {
        Action::Answer(answer) => {
            let _ = client.write_all(&answer);
            return;
        }
        Action::Relay => None,
        Action::RelayThenAnswer(answer) => Some(answer),
    };
    // Ask for one answer per connection, then relay it whole.
    let head = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\r\n");
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = server.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = server.write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes());
    let _ = server.write_all(&request[header_end..]);
    let mut answer = Vec::new();
    let _ = server.read_to_end(&mut answer);
    let _ = client.write_all(&replacement.unwrap_or(answer));
}
