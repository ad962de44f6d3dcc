//! Our HTTP/1.1 client for the calls that read secrets ([`super::http::Http::send`]).
//!
//! A cache miss waits on this call, so it does only what a Vault call
//! needs: keep-alive connections kept in a small pool, each driven by the
//! task of the request using it (hyper's `Connection` polled next to the
//! answer, not spawned: no connection task, no wake-up of another thread),
//! and no redirects, proxies, decompression or retry layers to pass
//! through. The caller builds the request head (`Http` prepares the fixed
//! part once).

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Idle connections kept for later calls; more are closed. Above the
/// number of calls a plugin has in flight at once in practice.
const MAX_IDLE: usize = 32;

/// Vault's token header, made once (a `&str` name is checked per request).
const X_VAULT_TOKEN: HeaderName = HeaderName::from_static("x-vault-token");

/// An idle connection older than this is closed rather than used: servers
/// and load balancers close idle connections after a while (Vault after
/// 5 minutes, many proxies sooner), and one closed under our request costs
/// a retry or, for a call that is never sent twice, a failure.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Where and how to connect, and the connections kept open.
pub(crate) struct Client {
    /// The configured host (not `tls_server_name`) and port.
    host: Host,
    port: u16,
    /// For https: the connector and the name for SNI and verification.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

enum Host {
    Name(String),
    Ip(IpAddr),
}

/// One request, as [`Client::call`] may send it twice (a GET after a
/// reused connection failed under it).
pub(crate) struct Call<'a> {
    pub method: &'a Method,
    /// Origin form: path and query, already encoded.
    pub target: &'a str,
    /// The headers every request carries (prepared once).
    pub headers: &'a HeaderMap,
    /// X-Vault-Token (sensitive).
    pub token: HeaderValue,
    /// A JSON body.
    pub body: Option<Bytes>,
    /// Whether the request may be sent again when a reused connection
    /// failed before any answer (the server had closed it while idle).
    pub may_resend: bool,
}

/// A complete answer, of any status.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<HeaderValue>,
    pub body: Vec<u8>,
}

/// Why a call has no answer.
#[derive(Debug)]
pub(crate) enum Error {
    /// Nothing was sent: no connection, or TLS refused it.
    Connect { message: String, tls: bool },
    /// The request was handed to the connection, so it may have been
    /// acted on: the connection failed, or the answer was not HTTP.
    Exchange { message: String },
    /// The answer's body is larger than allowed; reading stopped.
    TooLarge,
    /// The deadline passed; `sent` as for the two above.
    Timeout { sent: bool },
}

/// A connection: the handle to send on and the state machine that does
/// the I/O (polled only while a request is on it).
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// Dropped as soon as it ends: only then does hyper hand a request it
    /// had queued but not written back to us (as not sent).
    driver: Option<http1::Connection<TokioIo<Stream>, Full<Bytes>>>,
    /// What both sides are polled with (see [`InTask`]).
    waker: Arc<InTask>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// How an exchange on one connection ended without an answer.
enum Failed {
    /// The connection was closed before the request was written.
    NotSent(hyper::Error),
    /// No answer (may have been sent).
    NoAnswer(hyper::Error),
    /// The answer began but its body failed.
    Body(hyper::Error),
    TooLarge,
}

impl Client {
    /// `address` is where to connect; `tls` (https only) with the name to
    /// present and verify (`tls_server_name`, else the address's host).
    pub fn new(
        address: &reqwest::Url,
        tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
        connect_timeout: Duration,
    ) -> Self {
        let shown = address.host_str().unwrap_or_default();
        // An IPv6 address comes in brackets.
        let bare = shown.trim_start_matches('[').trim_end_matches(']');
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(shown.to_string()),
        };
        Self {
            host,
            port: address.port_or_known_default().unwrap_or(443),
            tls: tls.map(|(config, name)| (TlsConnector::from(config), name)),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Send `call` and read the whole answer (at most `max_body` bytes of
    /// body) before `deadline`.
    pub async fn call(
        &self,
        call: &Call<'_>,
        max_body: usize,
        deadline: Instant,
    ) -> Result<Answer, Error> {
        let (mut conn, mut reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect(deadline).await?, false),
        };
        // Whether an earlier attempt may have reached the server: then no
        // later failure can say "not sent".
        let mut may_have_left = false;
        loop {
            let exchange = exchange(&mut conn, request(call), max_body);
            let failed = match tokio::time::timeout_at(deadline, exchange).await {
                Err(_elapsed) => return Err(Error::Timeout { sent: true }),
                Ok(Ok((answer, reusable))) => {
                    if reusable {
                        self.keep(conn);
                    }
                    return Ok(answer);
                }
                Ok(Err(failed)) => failed,
            };
            // A connection that waited in the pool may have been closed by
            // the server meanwhile: then it never read our request, and the
            // request is sent once more on a new connection (a request that
            // was certainly not written: always; one that may have been:
            // only if it may be sent twice).
            let again = reused
                && match &failed {
                    Failed::NotSent(_) => true,
                    Failed::NoAnswer(_) => call.may_resend,
                    Failed::Body(_) | Failed::TooLarge => false,
                };
            if !again {
                return Err(match failed {
                    Failed::NotSent(err) if !may_have_left => Error::Connect {
                        message: crate::text::cause_chain(&err),
                        tls: false,
                    },
                    Failed::NotSent(err) | Failed::NoAnswer(err) | Failed::Body(err) => {
                        Error::Exchange {
                            message: crate::text::cause_chain(&err),
                        }
                    }
                    Failed::TooLarge => Error::TooLarge,
                });
            }
            may_have_left |= !matches!(failed, Failed::NotSent(_));
            conn = self.connect(deadline).await.map_err(|err| match err {
                // Not connecting again does not unsend the first attempt.
                Error::Connect { message, .. } if may_have_left => Error::Exchange { message },
                Error::Timeout { .. } => Error::Timeout {
                    sent: may_have_left,
                },
                other => other,
            })?;
            reused = false;
        }
    }

    /// The most recently used idle connection that is still open.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = self.idle.lock().ok()?.pop()?;
            if since.elapsed() < IDLE_LIMIT && still_open(&mut conn) {
                return Some(conn);
            }
        }
    }

    fn keep(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A new connection (TCP, then TLS for https), within the connect
    /// timeout and the call's deadline.
    async fn connect(&self, deadline: Instant) -> Result<Conn, Error> {
        let limit = deadline.min(Instant::now() + self.connect_timeout);
        match tokio::time::timeout_at(limit, self.open(limit)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::Timeout { sent: false }),
        }
    }

    async fn open(&self, limit: Instant) -> Result<Conn, Error> {
        let not_connected = |message: String| Error::Connect {
            message,
            tls: false,
        };
        let addresses: Vec<SocketAddr> = match &self.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), self.port))
                .await
                .map_err(|err| not_connected(format!("cannot resolve {name}: {err}")))?
                .collect(),
        };
        // Each address gets an equal share of the time left, so that one
        // that drops packets (an unreachable IPv6 address) does not use up
        // the whole connect timeout before the next is tried.
        let mut last_error = None;
        let mut tcp = None;
        let count = addresses.len();
        for (tried, address) in addresses.into_iter().enumerate() {
            let share = limit.saturating_duration_since(Instant::now()) / (count - tried) as u32;
            match tokio::time::timeout(share, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    tcp = Some(stream);
                    break;
                }
                Ok(Err(err)) => last_error = Some(format!("connect to {address}: {err}")),
                Err(_elapsed) => {
                    last_error = Some(format!(
                        "connect to {address}: no answer within {} ms",
                        share.as_millis()
                    ));
                }
            }
        }
        let tcp = tcp.ok_or_else(|| {
            not_connected(last_error.unwrap_or_else(|| "the host has no address".into()))
        })?;
        // Requests are small and answered at once: no Nagle delay.
        tcp.set_nodelay(true)
            .map_err(|err| not_connected(err.to_string()))?;
        let stream =
            match &self.tls {
                None => Stream::Plain(tcp),
                Some((connector, name)) => {
                    let tls = connector.connect(name.clone(), tcp).await.map_err(|err| {
                        Error::Connect {
                            message: crate::text::cause_chain(&err),
                            tls: true,
                        }
                    })?;
                    Stream::Tls(Box::new(tls))
                }
            };
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| not_connected(crate::text::cause_chain(&err)))?;
        Ok(Conn {
            sender,
            driver: Some(driver),
            waker: Arc::default(),
        })
    }
}

fn request(call: &Call<'_>) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(call.body.clone().unwrap_or_default()));
    *request.method_mut() = call.method.clone();
    *request.uri_mut() = match http::Uri::try_from(call.target) {
        Ok(uri) => uri,
        // `Http` builds the target from encoded parts only; a bad one is
        // a bug, and goes out as "/" to get an error rather than a panic.
        Err(_) => http::Uri::from_static("/"),
    };
    let headers = request.headers_mut();
    *headers = call.headers.clone();
    headers.insert(X_VAULT_TOKEN, call.token.clone());
    if call.body.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    request
}

/// Whether an idle connection is still usable: polling it once reads
/// what arrived meanwhile, so a close by the server is seen here instead
/// of under the next request.
fn still_open(conn: &mut Conn) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let Some(driver) = conn.driver.as_mut() else {
        return false;
    };
    Pin::new(driver).poll(&mut cx).is_pending() && !conn.sender.is_closed()
}

/// One request and its whole answer on `conn`, driving the connection in
/// this task; whether the connection can serve another request after it.
async fn exchange(
    conn: &mut Conn,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<(Answer, bool), Failed> {
    let Conn {
        sender,
        driver,
        waker,
    } = conn;
    let answer =
        async {
            sender.ready().await.map_err(Failed::NotSent)?;
            let response = sender.try_send_request(request).await.map_err(|mut err| {
                match err.take_message() {
                    Some(_) => Failed::NotSent(err.into_error()),
                    None => Failed::NoAnswer(err.into_error()),
                }
            })?;
            let status = response.status().as_u16();
            let retry_after = response.headers().get(RETRY_AFTER).cloned();
            let closing = response
                .headers()
                .get_all(CONNECTION)
                .iter()
                .any(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
            // Bounded: a hostile or broken server must not make us buffer
            // gigabytes.
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(Failed::Body)?.into_data() {
                    if bytes.len() + data.len() > max_body {
                        return Err(Failed::TooLarge);
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            let answer = Answer {
                status,
                retry_after,
                body: bytes,
            };
            Ok((answer, !closing))
        };
    tokio::pin!(answer);
    poll_fn(|cx| {
        waker.polling(cx.waker());
        let own = Waker::from(waker.clone());
        let mut own = Context::from_waker(&own);
        for _ in 0..MAX_ROUNDS {
            if let Poll::Ready(result) = answer.as_mut().poll(&mut own) {
                // Reusable only if the connection is still open after the
                // answer (polled once more: it reads what came after).
                let result = result.map(|(answer, keep_alive)| {
                    let open = driver
                        .as_mut()
                        .is_some_and(|d| Pin::new(d).poll(&mut own).is_pending());
                    (answer, keep_alive && open)
                });
                waker.idle();
                return Poll::Ready(result);
            }
            // Ended (closed or failed): dropped, so that the answer's side
            // sees it too, also for a request still queued (a close read
            // before the request was written fails it as not sent).
            if driver
                .as_mut()
                .is_some_and(|d| Pin::new(d).poll(&mut own).is_ready())
            {
                *driver = None;
            }
            if !waker.woken_again() {
                return Poll::Pending;
            }
        }
        // Still woken after that many rounds: something wakes us on every
        // poll (tokio defers the wake of a spent cooperative budget until
        // the task is back in the scheduler, so not that today), and
        // polling on might never end. Back to the scheduler.
        waker.idle();
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Rounds of polls of both sides within one poll of the task; an exchange
/// needs a handful.
const MAX_ROUNDS: usize = 64;

/// The waker a connection's two sides (hyper's `Connection` and our
/// request and answer) are polled with. hyper's channels between them wake
/// the other side as they hand over a request, an answer head or body
/// bytes; with the task's own waker each such wake, happening while the
/// task is being polled, would make tokio reschedule the task as if it
/// had yielded, and wake another worker thread to steal it: the answer
/// would then be written from the other thread (measured: about two more
/// futex calls and one more context switch per call). Wakes that come
/// while [`exchange`] polls are noted here and answered by polling both
/// sides again in the same poll; only the others (the socket became
/// readable) wake the task.
#[derive(Default)]
struct InTask {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

/// [`InTask::state`]: not being polled, being polled, woken meanwhile.
const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl InTask {
    /// A poll begins, for the task whose waker is `task`.
    fn polling(&self, task: &Waker) {
        if let Ok(mut slot) = self.task.lock()
            && !slot.as_ref().is_some_and(|w| w.will_wake(task))
        {
            *slot = Some(task.clone());
        }
        self.state.store(POLLING, Ordering::SeqCst);
    }

    fn idle(&self) {
        self.state.store(IDLE, Ordering::SeqCst);
    }

    /// At the end of a round of polls: whether a side was woken during
    /// it (poll again); if not, the poll ends and later wakes go to the task.
    fn woken_again(&self) -> bool {
        match self
            .state
            .compare_exchange(POLLING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => false,
            Err(_) => {
                self.state.store(POLLING, Ordering::SeqCst);
                true
            }
        }
    }
}

impl Wake for InTask {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let noted = self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst);
        match noted {
            // Being polled: the round of polls sees it.
            Ok(_) | Err(WOKEN) => {}
            Err(_) => {
                if let Ok(task) = self.task.lock()
                    && let Some(task) = task.as_ref()
                {
                    task.wake_by_ref();
                }
            }
        }
    }
}

/// TCP or TLS over TCP.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers `answers` requests with `{}` on each
    /// connection it accepts, then closes it after `close_after`.
    fn server(answers: usize, close_after: Duration) -> reqwest::Url {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    for _ in 0..answers {
                        if !matches!(stream.read(&mut buf), Ok(n) if n > 0) {
                            return;
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                    }
                    std::thread::sleep(close_after);
                });
            }
        });
        reqwest::Url::parse(&format!("http://{address}")).unwrap()
    }

    fn get<'a>(headers: &'a HeaderMap) -> Call<'a> {
        Call {
            method: &Method::GET,
            target: "/v1/secret/data/x",
            headers,
            token: HeaderValue::from_static("t"),
            body: None,
            may_resend: true,
        }
    }

    /// The server closed an idle connection and the close is read only
    /// under the next request (after `still_open` said "open"): the queued
    /// request comes back at once as not sent, not at the deadline.
    #[tokio::test]
    async fn a_close_read_before_the_request_was_written_fails_it_as_not_sent() {
        let url = server(1, Duration::from_millis(20));
        let client = Client::new(&url, None, Duration::from_secs(5));
        let headers = HeaderMap::new();
        let call = get(&headers);
        let deadline = Instant::now() + Duration::from_secs(5);
        client
            .call(&call, 1 << 20, deadline)
            .await
            .map_err(|_| ())
            .unwrap();
        let mut conn = client.idle.lock().unwrap().pop().expect("kept").conn;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            exchange(&mut conn, request(&call), 1 << 20),
        )
        .await
        .expect("the exchange waited for the deadline");
        assert!(matches!(outcome, Err(Failed::NotSent(_))), "not 'not sent'");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// Polled outside a worker thread (`block_on`) with the task's
    /// cooperative budget spent, every poll wakes at once: the exchange
    /// must hand the thread back rather than poll on forever, and end.
    #[test]
    fn a_spent_budget_outside_a_worker_does_not_spin() {
        let url = server(usize::MAX, Duration::ZERO);
        let (done, finished) = std::sync::mpsc::channel();
        // Its own thread, left behind if it spins: the test fails anyway.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let client = Client::new(&url, None, Duration::from_secs(2));
            let headers = HeaderMap::new();
            let call = get(&headers);
            let ask = |spend: usize| {
                runtime.block_on(async {
                    for _ in 0..spend {
                        tokio::task::consume_budget().await;
                    }
                    let deadline = Instant::now() + Duration::from_secs(2);
                    client.call(&call, 1 << 20, deadline).await.map(|_| ())
                })
            };
            // The first call leaves a connection in the pool; the second
            // takes it with one unit of budget left.
            let outcome = ask(0).and_then(|()| ask(127));
            let _ = done.send(outcome.map_err(|err| format!("{err:?}")));
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("the call spun past its deadline")
            .expect("answered");
    }
}
