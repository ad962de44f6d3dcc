//! The HTTP/1.1 server on the plugin's Unix socket.
//!
//! [`app`] builds the router (testable without a socket), [`bind`] prepares
//! the socket file (never more open than 0600), [`run`] accepts connections
//! and serves them with hyper, within limits a hostile or broken client
//! cannot lift: header, idle and body timeouts, a connection cap, a memory
//! budget for bodies, and a bound on in-flight work at shutdown. Every
//! failure becomes Docker's `{"Err": "..."}` in [`error_response`].

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::FutureExt as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::ExposeSecret;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

use crate::audit::{Audit, Record};
use crate::protocol::{
    ActivateResponse, CONTENT_TYPE, ErrorResponse, GetSecretRequest, GetSecretResponse,
};
use crate::resolve::{Answer, Resolver};
use vaultbridge_providers::text::shown;

/// Requests are small JSON documents; anything larger is refused unread.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How long in-flight requests may run after a shutdown signal.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    pub resolver: Arc<Resolver>,
    /// The audit trail, when `[audit]` is configured.
    pub audit: Option<Arc<Audit>>,
}

/// The path of the one request Docker sends per task.
const GET_SECRET: &str = "/SecretProvider.GetSecret";

/// The plugin's routes, writing one audit record per GetSecret decision to
/// `audit` when there is one. Docker sends every call as `POST` with a JSON
/// body and no `Content-Type`, so bodies are parsed by hand, not by `Json`.
/// (The router alone: for tests without a socket; [`run`] takes [`routes`].)
#[cfg(test)]
pub fn app(resolver: Arc<Resolver>, audit: Option<Arc<Audit>>) -> Router {
    routes(resolver, audit).router
}

/// What [`run`] serves: the router, and the state its GetSecret handler
/// takes, so that the hot route can be called without the router's layers.
#[derive(Clone)]
pub struct Routes {
    router: Router,
    state: AppState,
}

/// [`app`], for [`run`].
pub fn routes(resolver: Arc<Resolver>, audit: Option<Arc<Audit>>) -> Routes {
    let state = AppState { resolver, audit };
    let router = Router::new()
        .route("/Plugin.Activate", post(activate))
        .route(GET_SECRET, post(get_secret))
        // For root on the host (the socket is 0600): the listener's text.
        .route("/metrics", get(metrics))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "unknown endpoint; this plugin serves /Plugin.Activate, /SecretProvider.GetSecret and GET /metrics") })
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; the plugin protocol uses POST (and GET for /metrics)")
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state.clone());
    Routes { router, state }
}

async fn metrics(State(state): State<AppState>) -> Response {
    crate::metrics_listener::metrics(State(state.resolver)).await
}

async fn activate() -> Response {
    json_response(StatusCode::OK, &ActivateResponse::default())
}

async fn get_secret(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("request body is larger than {MAX_REQUEST_BYTES} bytes")
            } else {
                format!("cannot read request body: {}", rejection.body_text())
            };
            tracing::warn!(outcome = "bad_request", error = %message, "GetSecret refused");
            state.resolver.metrics().unanswered("bad_request");
            return error_response(status, &message);
        }
    };
    let request = match GetSecretRequest::parse(&body) {
        Ok(request) => request,
        Err(err) => {
            // serde's message can quote the input: keep it bounded and escaped.
            let message = format!("malformed GetSecret request: {}", shown(&err.to_string()));
            tracing::warn!(outcome = "bad_request", error = %message, "GetSecret refused");
            state.resolver.metrics().unanswered("bad_request");
            return error_response(StatusCode::BAD_REQUEST, &message);
        }
    };
    // A bug that panics fails this request with an Err, not the
    // connection; shared state is protected where it lives (the cache).
    match std::panic::AssertUnwindSafe(serve_secret(&state, &request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
            state.resolver.metrics().unanswered("internal");
            tracing::error!(
                secret = %shown(&request.secret_name),
                outcome = "internal",
                "internal error while serving a secret (a bug)"
            );
            json_response(
                StatusCode::OK,
                &GetSecretResponse::error("vaultbridge: internal error; see the plugin log"),
            )
        }
    }
}

/// Resolve one request, log exactly one line about it, and write its audit
/// record.
async fn serve_secret(state: &AppState, request: &GetSecretRequest<'_>) -> Response {
    let started = Instant::now();
    let metrics = state.resolver.metrics();
    let _in_flight = metrics.in_flight();
    let answer = state.resolver.answer(request).await;
    // Request-controlled: escaped and bounded so that no field can forge a
    // log line (the path is already validated by the labels).
    let (secret, service, task) = (
        shown(&request.secret_name),
        shown(&request.service_name),
        shown(&request.task_name),
    );
    let provider = answer.provider.as_deref().unwrap_or("-");
    let path = answer.path.as_deref().unwrap_or("-");
    let policy = answer.verdict.as_ref().map(|v| v.to_string());
    let policy = policy.as_deref().unwrap_or("-");
    let elapsed = started.elapsed();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let template = answer.template.as_deref().unwrap_or("-");
    let audited = match &state.audit {
        Some(audit) => {
            audit
                .record_all(&audit_records(request, &answer, duration_ms))
                .await
        }
        None => Ok(()),
    };
    if let Err(err) = audited {
        // Fail closed, as Vault's audit devices do: no record, no secret.
        tracing::error!(
            %secret,
            %service,
            error = %err,
            "the audit trail cannot be written; the secret is withheld"
        );
        metrics.answered(answer.provider.as_deref(), "audit_failed", None, elapsed);
        let message = format!(
            "vaultbridge: secret '{secret}': the audit trail cannot be written, so the secret is withheld; see the plugin log"
        );
        return json_response(StatusCode::OK, &GetSecretResponse::error(&message));
    }
    match answer.result {
        Ok(resolved) => {
            let value = resolved.value.expose_secret();
            metrics.answered(
                answer.provider.as_deref(),
                "ok",
                Some(resolved.source),
                elapsed,
            );
            tracing::info!(
                %secret,
                %service,
                %task,
                provider,
                path,
                template,
                inputs = answer.inputs.len(),
                policy,
                outcome = "ok",
                bytes = value.len(),
                per_task = resolved.per_task,
                cache = resolved.source.as_str(),
                duration_ms,
                "secret served"
            );
            let body = crate::protocol::value_json(value, resolved.per_task);
            (StatusCode::OK, [content_type()], body).into_response()
        }
        Err(failure) => {
            metrics.answered(answer.provider.as_deref(), failure.outcome, None, elapsed);
            // The failure's message is already escaped and bounded: it
            // quotes backend answers and labels.
            tracing::warn!(
                %secret,
                %service,
                %task,
                provider,
                path,
                template,
                inputs = answer.inputs.len(),
                policy,
                outcome = failure.outcome,
                duration_ms,
                error = %failure.message,
                "secret lookup failed"
            );
            json_response(
                StatusCode::OK,
                &GetSecretResponse::error(&failure.docker_err(&secret)),
            )
        }
    }
}

/// The audit records of one answer: who asked, for what, what was decided
/// and how it ended; for a template, one per input and then one for the
/// whole. Never a value.
fn audit_records<'a>(
    request: &GetSecretRequest<'_>,
    answer: &'a Answer,
    duration_ms: f64,
) -> Vec<Record<'a>> {
    let field = Record::field;
    let (outcome, cache) = match &answer.result {
        Ok(resolved) => ("ok", Some(resolved.source.as_str())),
        Err(failure) => (failure.outcome, None),
    };
    let record = Record {
        log_type: "audit",
        time: Record::now(),
        node: field(&request.node_id),
        service_id: field(&request.service_id),
        service_name: field(&request.service_name),
        task_id: field(&request.task_id),
        task_name: field(&request.task_name),
        // Long enough for a registry, a repository, a tag and the digest.
        image: vaultbridge_providers::text::shown_max(&request.task_image, 512).into_owned(),
        secret: field(&request.secret_name),
        template: answer.template.as_deref(),
        provider: answer.provider.as_deref(),
        path: answer.path.as_deref(),
        version: answer.version.as_deref().map(field),
        decision: answer
            .verdict
            .as_ref()
            .map_or("none", |v| v.decision.as_str()),
        rule: answer.verdict.as_ref().map(|v| &*v.by),
        outcome,
        cache,
        duration_ms,
    };
    let mut records: Vec<Record<'a>> = answer
        .inputs
        .iter()
        .map(|input| Record {
            provider: Some(&input.provider),
            path: Some(&input.path),
            version: input.version.as_deref().map(field),
            decision: input
                .verdict
                .as_ref()
                .map_or("none", |v| v.decision.as_str()),
            rule: input.verdict.as_ref().map(|v| &*v.by),
            outcome: input.outcome,
            cache: input.source.map(|source| source.as_str()),
            ..record.clone()
        })
        .collect();
    records.push(record);
    records
}

/// The plugin protocol's `Content-Type`, as a static value: parsing and
/// copying the text again for every answer costs an allocation.
fn content_type() -> (header::HeaderName, HeaderValue) {
    (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [content_type()], bytes).into_response(),
        Err(err) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// The single place a failure becomes Docker's `{"Err": "..."}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorResponse {
        err: message.to_string(),
    })
    .unwrap_or_else(|_| br#"{"Err":"internal error"}"#.to_vec());
    (status, [content_type()], body).into_response()
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another server is already answering on {0}; stop it first")]
    InUse(String),
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(String),
    #[error("cannot create socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Bind the Unix socket: create its folder, replace a stale socket file,
/// refuse when a live server answers, and restrict it to the owner (0600).
///
/// The socket is never reachable with a wider mode, whatever the umask:
/// `bind(2)` creates the file with the umask's mode, so it is created inside
/// a fresh 0700 folder next to `path` (nobody else can reach it there), set to
/// 0600, and only then linked to `path`. A hard link, not a rename, so a
/// socket that another server created at `path` meanwhile is not replaced.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let shown = path.display().to_string();
    let io = |source| BindError::Io {
        path: shown.clone(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new(""));
    std::fs::create_dir_all(parent).map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => return Err(BindError::NotASocket(shown)),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(shown));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(err)),
    }
    // The staging folder goes away on every path out of here.
    let (listener, staged) = stage(parent).map_err(io)?;
    match std::fs::hard_link(&staged.socket, path) {
        Ok(()) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Err(BindError::InUse(shown)),
        Err(err) => Err(io(err)),
    }
}

/// Bind a socket inside a new private (0700) folder in `parent` and set it to
/// 0600. The returned guard removes that folder and the socket's name in it.
fn stage(parent: &Path) -> std::io::Result<(UnixListener, Staging)> {
    // Short names: the staged path is at most as long as
    // `<parent>/vaultbridge.sock`, so it fits the 108-byte socket address
    // whenever the default name does. `create` (not `create_all`) fails on an
    // existing folder: we never bind inside a folder we did not make.
    let dir = parent.join(format!(".vb-{:08x}", fastrand::u32(..)));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let staging = Staging {
        socket: dir.join("s"),
        dir,
    };
    let listener = UnixListener::bind(&staging.socket)?;
    std::fs::set_permissions(&staging.socket, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, staging))
}

struct Staging {
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Only the name goes: the listener keeps the socket, and the hard
        // link at the final path keeps it reachable.
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// How long a client has to send a request's complete headers. hyper starts
/// this timer again as soon as a kept-alive connection goes idle after an
/// answer, so it is also the idle timeout: an idle connection is closed after
/// 5 s. dockerd sends its headers at once, reconnects cheaply on a Unix
/// socket, and retries a request that hit a connection closed under it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a body may take to arrive once its headers have. Docker's are
/// ~1 KB and come with the headers; a stalled upload would otherwise hold its
/// buffer and its connection slot forever. Answered 408 `{"Err"}`, then closed.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once. Each costs a file descriptor and a read
/// buffer; beyond the cap new connections wait in the kernel's listen queue
/// (not refused: Docker's requests get through as soon as a slot frees, and
/// an unanswered connection frees its slot within HEADER_READ_TIMEOUT +
/// BODY_TIMEOUT). A plugin needs few: Docker sends one call per task.
pub const MAX_CONNECTIONS: u32 = 256;

/// hyper's read buffer per connection (its default may grow to ~400 KiB):
/// Docker's headers are a few hundred bytes. At most 256 × 64 KiB = 16 MiB.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Request bodies held in memory at once, across all connections: 16 at the
/// 1 MiB limit, or thousands of Docker's. A body that finds no room waits,
/// within its BODY_TIMEOUT, instead of growing the process.
pub const BODY_BUDGET_BYTES: usize = 16 * 1024 * 1024;
// A body at the limit must fit (the byte that proves one too large is not
// charged: see `Gathered`).
const _: () = assert!(BODY_BUDGET_BYTES > MAX_REQUEST_BYTES);

/// Pause after a failed accept (EMFILE, ENFILE, ...): retrying at once would
/// fail the same way and spin a core until a descriptor frees.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one log line per interval about failed accepts; the next line
/// says how many were not logged.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Serve until `shutdown` resolves, then stop accepting, close connections
/// that have no request in flight, and give in-flight requests up to `grace`
/// to finish.
pub async fn run(
    listener: UnixListener,
    app: Routes,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS as usize));
    let budget = Arc::new(Semaphore::new(BODY_BUDGET_BYTES));
    let (stop, stopping) = watch::channel(false);
    let mut accept_errors = AcceptErrors::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A slot before accepting: beyond the cap, connections wait queued.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break, // never: the semaphore is not closed
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                if let Some(suppressed) = accept_errors.recovered() {
                    tracing::info!(suppressed, "accepting connections again");
                }
                let connection =
                    serve_connection(stream, app.clone(), budget.clone(), stopping.clone(), slot);
                tokio::spawn(connection);
            }
            Err(err) => {
                if let Some(suppressed) = accept_errors.failed(Instant::now()) {
                    tracing::warn!(
                        error = %err,
                        suppressed,
                        retry_ms = ACCEPT_BACKOFF.as_millis() as u64,
                        "cannot accept a connection (out of file descriptors? see `ulimit -n`)"
                    );
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    // Stop accepting at once: a new connection is refused, not queued.
    drop(listener);
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: finishing in-flight requests"
    );
    let _ = stop.send(true);
    // Each connection holds its slot until it ends: all slots back, all done.
    if tokio::time::timeout(grace, slots.acquire_many(MAX_CONNECTIONS))
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs_f64(),
            "in-flight requests did not finish in time; stopping anyway"
        );
    }
}

/// One connection, until the client closes it, a timeout does, or shutdown.
async fn serve_connection(
    stream: UnixStream,
    app: Routes,
    budget: Arc<Semaphore>,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    // Set once a request's headers are complete. Until then nothing is in
    // flight, and shutdown closes the connection at once: hyper's graceful
    // shutdown would wait for the first request's headers.
    let had_request = Arc::new(AtomicBool::new(false));
    let service = {
        let had_request = had_request.clone();
        hyper::service::service_fn(move |request| {
            had_request.store(true, Ordering::Relaxed);
            handle(request, app.clone(), budget.clone())
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(READ_BUFFER_BYTES);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    // Sender gone (run returned) or `true`: either way, stop.
    let stop_requested = async {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop_requested => {
            if !had_request.load(Ordering::Relaxed) {
                return;
            }
            // Closes a kept-alive connection between requests (also one with
            // the next request's headers half sent); lets the current finish.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Header timeouts, clients hanging up mid-request, garbage: the
        // client's problem, and a flood of them must not flood the log.
        tracing::debug!(error = %err, "connection closed with an error");
    }
}

/// Read the body within BODY_TIMEOUT, then hand the request to GetSecret's
/// handler (the route Docker calls per task) or to the router (any other).
async fn handle(
    request: Request<Incoming>,
    app: Routes,
    budget: Arc<Semaphore>,
) -> Result<Response, Infallible> {
    let (parts, body) = request.into_parts();
    let Ok(read) = tokio::time::timeout(BODY_TIMEOUT, read_body(body, &budget)).await else {
        tracing::warn!(
            path = %vaultbridge_providers::text::shown(parts.uri.path()),
            timeout_secs = BODY_TIMEOUT.as_secs(),
            "request body did not arrive in time; closing the connection"
        );
        let message = format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        );
        let mut response = error_response(StatusCode::REQUEST_TIMEOUT, &message);
        // The rest of the body may still come: do not read it as a request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(response);
    };
    let (body, charge) = match read {
        Ok(read) => read,
        Err(err) => {
            // The client hung up mid-body or sent broken chunks: it will
            // most likely not read this answer.
            tracing::debug!(error = %err, "cannot read request body");
            let message = format!("cannot read request body: {err}");
            return Ok(error_response(StatusCode::BAD_REQUEST, &message));
        }
    };
    let response = if parts.method == Method::POST
        && parts.uri.path() == GET_SECRET
        && body.len() <= MAX_REQUEST_BYTES
    {
        // The one request Docker sends per task: straight to its handler,
        // which is what the router would call for it (a body over the limit
        // goes through the router, for its 413).
        Ok(get_secret(State(app.state), Ok(body)).await)
    } else {
        app.router
            .oneshot(Request::from_parts(parts, axum::body::Body::from(body)))
            .await
    };
    // The handler held the body's bytes until now.
    drop(charge);
    response
}

/// Read a body into memory, charging what it holds to the shared budget
/// (see [`Gathered`]). Stops after `MAX_REQUEST_BYTES + 1` bytes: enough
/// for the router's own limit to refuse it (413, with its usual message),
/// without reading the rest.
async fn read_body(
    mut body: Incoming,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), hyper::Error> {
    let announced = hyper::body::Body::size_hint(&body).exact();
    let mut gathered = Gathered::new(announced);
    let mut charge: Option<OwnedSemaphorePermit> = None;
    while !gathered.full() {
        let Some(frame) = body.frame().await else {
            break;
        };
        // Trailers carry nothing for us.
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let data = gathered.cut(data);
        take(budget, &mut charge, gathered.charge_for(&data)).await;
        gathered.push(data);
    }
    Ok((gathered.body(), charge))
}

/// A body's frames, up to `MAX_REQUEST_BYTES + 1` bytes. A body that came
/// in one frame (the engine's always do) is that frame's bytes, not a
/// copy (a slice of hyper's read buffer, bounded on its own by
/// READ_BUFFER_BYTES); one in several frames is gathered in one buffer,
/// grown by doubling up to the limit, and never past the length the
/// client announced while the body keeps to it. What is charged is what is
/// held: the frame, or the buffer's whole capacity, so that no body holds
/// more memory than its charge (but for the moment of a copy into a bigger
/// buffer), and none is charged more than twice what it sent: a length
/// announced but not sent takes nothing from the budget. The byte that
/// proves a body too large (and its room) is not charged: 16 bodies at the
/// limit fit the budget exactly, and none waits for budget only to be
/// refused.
struct Gathered {
    announced: usize,
    first: Option<Bytes>,
    buffered: Vec<u8>,
    len: usize,
    charged: usize,
}

impl Gathered {
    const LIMIT: usize = MAX_REQUEST_BYTES + 1;

    fn new(announced: Option<u64>) -> Self {
        let announced = announced.map_or(0, |length| {
            usize::try_from(length)
                .unwrap_or(Self::LIMIT)
                .min(Self::LIMIT)
        });
        Gathered {
            announced,
            first: None,
            buffered: Vec::new(),
            len: 0,
            charged: 0,
        }
    }

    fn full(&self) -> bool {
        self.len >= Self::LIMIT
    }

    /// The part of `data` that is kept.
    fn cut(&self, mut data: Bytes) -> Bytes {
        data.truncate(Self::LIMIT - self.len);
        data
    }

    /// Whether the next frame is the body's first (kept as it came).
    fn at_start(&self) -> bool {
        self.first.is_none() && self.len == 0
    }

    /// How much more to charge before `data` is pushed.
    fn charge_for(&self, data: &Bytes) -> usize {
        let len = self.len + data.len();
        let held = if self.at_start() {
            data.len()
        } else if len > self.buffered.capacity() {
            self.grown(len)
        } else {
            return 0;
        };
        held.min(MAX_REQUEST_BYTES).saturating_sub(self.charged)
    }

    /// The buffer's capacity for `len` bytes: doubled, up to the announced
    /// length while the body keeps to it, and up to the limit.
    fn grown(&self, len: usize) -> usize {
        let ceiling = if self.announced >= len {
            self.announced
        } else {
            Self::LIMIT
        };
        len.max((2 * self.buffered.capacity()).min(ceiling))
            .min(Self::LIMIT)
    }

    /// Keeps `data`, once [`Self::charge_for`] it is charged.
    fn push(&mut self, data: Bytes) {
        self.charged += self.charge_for(&data);
        let at_start = self.at_start();
        self.len += data.len();
        if at_start {
            self.first = Some(data);
            return;
        }
        if self.len > self.buffered.capacity() {
            let capacity = self.grown(self.len);
            self.buffered.reserve_exact(capacity - self.buffered.len());
        }
        if let Some(earlier) = self.first.take() {
            self.buffered.extend_from_slice(&earlier);
        }
        self.buffered.extend_from_slice(&data);
    }

    /// Bytes of memory held for the body.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.buffered.capacity()
    }

    fn body(self) -> Bytes {
        self.first.unwrap_or_else(|| Bytes::from(self.buffered))
    }
}

/// Takes `bytes` more of the shared body budget into `charge`, waiting for
/// them if other requests hold it.
async fn take(budget: &Arc<Semaphore>, charge: &mut Option<OwnedSemaphorePermit>, bytes: usize) {
    if bytes == 0 {
        return;
    }
    // A body's charge is at most MAX_REQUEST_BYTES (1 MiB) in all.
    let Ok(permit) = budget.clone().acquire_many_owned(bytes as u32).await else {
        return; // never: the semaphore is not closed
    };
    match charge {
        Some(charge) => charge.merge(permit),
        None => *charge = Some(permit),
    }
}

/// Rate limit for the accept-error log line.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    /// Count a failed accept. `Some(n)`: log it, with `n` failures not
    /// logged since the previous line.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        if let Some(last) = self.last_logged
            && now.duration_since(last) < ACCEPT_ERROR_LOG_INTERVAL
        {
            self.suppressed += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// An accept succeeded. `Some(n)` after failures were logged: say the
    /// episode is over, with `n` failures not logged since the last line.
    fn recovered(&mut self) -> Option<u64> {
        self.last_logged.take()?;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use vaultbridge_providers::file::{FileConfig, FileProvider};

    use super::*;

    fn router(dir: &Path) -> Router {
        let file = FileProvider::new(
            &FileConfig {
                root: dir.to_path_buf(),
                follow_symlinks: None,
            },
            "providers.local",
        )
        .unwrap();
        let mut providers: BTreeMap<String, (Arc<dyn vaultbridge_providers::Provider>, _)> =
            BTreeMap::new();
        providers.insert("local".into(), (Arc::new(file), Default::default()));
        app(
            Arc::new(Resolver::new(providers, None, Default::default())),
            None,
        )
    }

    async fn call(
        router: Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// Frames as they may come (empty, tiny, whole, past the limit), with
    /// or without an announced length: the body is their bytes up to the
    /// limit, and what is held never exceeds what was charged.
    #[test]
    fn a_body_holds_no_more_than_its_charge() {
        const LIMIT: usize = MAX_REQUEST_BYTES + 1;
        let mut rng = fastrand::Rng::with_seed(18);
        let sizes = [0, 1, 7, 4096, 65_536, LIMIT - 1, LIMIT, LIMIT + 5];
        for case in 0..400 {
            let frames: Vec<usize> = match case {
                // The engine's body; a 1 MiB + 1 body in 64 KiB frames.
                0 => vec![431],
                1 => [vec![65_536; 16], vec![1]].concat(),
                // A length announced, two bytes sent (below).
                2 => vec![1, 1],
                _ => (0..rng.usize(1..40))
                    .map(|_| sizes[rng.usize(..sizes.len())].min(rng.usize(0..=70_000)))
                    .collect(),
            };
            let total: usize = frames.iter().sum();
            let announced = match if case == 2 { 2 } else { rng.u8(..3) } {
                0 => None,
                1 => Some(total as u64),
                _ => Some(rng.u64(..2 * LIMIT as u64)),
            };
            let mut gathered = Gathered::new(announced);
            let (mut sent, mut kept, mut charged) = (Vec::new(), 0, 0);
            for (i, size) in frames.iter().enumerate() {
                if gathered.full() {
                    break;
                }
                let data = Bytes::from(vec![i as u8; *size]);
                sent.extend_from_slice(&data);
                let data = gathered.cut(data);
                kept += data.len();
                charged += gathered.charge_for(&data);
                gathered.push(data);
                // Held: no more than charged, but the byte that proves a
                // body too large (its room is not charged); charged:
                // no more than twice what was sent, nor than the limit.
                assert!(gathered.held() <= charged + 1, "case {case}: {frames:?}");
                assert!(
                    charged <= 2 * kept && charged <= MAX_REQUEST_BYTES,
                    "case {case}: {frames:?}"
                );
            }
            sent.truncate(LIMIT);
            assert_eq!(gathered.body(), sent, "case {case}: {frames:?}");
        }
    }

    #[tokio::test]
    async fn activate_accepts_any_body() {
        let dir = tempfile::tempdir().unwrap();
        for body in ["", "{}", "garbage"] {
            let (status, json) = call(router(dir.path()), "POST", "/Plugin.Activate", body).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(json, serde_json::json!({"Implements": ["secretprovider"]}));
        }
    }

    #[tokio::test]
    async fn serves_a_secret_and_reports_errors_as_err() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"pw").unwrap();
        let (status, json) = call(
            router(dir.path()),
            "POST",
            "/SecretProvider.GetSecret",
            r#"{"SecretName":"st_db","SecretLabels":{"com.docker.stack.namespace":"st"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json,
            serde_json::json!({"Value": "cHc=", "DoNotReuse": false})
        );

        let (_, json) = call(
            router(dir.path()),
            "POST",
            "/SecretProvider.GetSecret",
            r#"{"SecretName":"nope"}"#,
        )
        .await;
        let err = json["Err"].as_str().unwrap();
        assert!(
            err.contains("secret 'nope'") && err.contains("not found"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_requests_get_json_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (status, json) = call(
            router(dir.path()),
            "POST",
            "/SecretProvider.GetSecret",
            "{nope",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(json["Err"].as_str().unwrap().contains("malformed"));

        let (status, json) = call(router(dir.path()), "POST", "/Nope", "{}").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(json["Err"].as_str().unwrap().contains("unknown endpoint"));

        let (status, json) = call(router(dir.path()), "GET", "/SecretProvider.GetSecret", "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(json["Err"].as_str().unwrap().contains("POST"));

        let huge = format!("{{\"SecretName\":\"{}\"}}", "x".repeat(MAX_REQUEST_BYTES));
        let (status, json) = call(
            router(dir.path()),
            "POST",
            "/SecretProvider.GetSecret",
            &huge,
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(json["Err"].as_str().unwrap().contains("larger than"));
    }

    #[tokio::test]
    async fn get_metrics_counts_what_was_served_without_names_or_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"metrics-unit-value").unwrap();
        let app = router(dir.path());
        let _ = call(
            app.clone(),
            "POST",
            "/SecretProvider.GetSecret",
            r#"{"SecretName":"db"}"#,
        )
        .await;
        let _ = call(app.clone(), "POST", "/SecretProvider.GetSecret", "{nope").await;
        let request = Request::builder()
            .method("GET")
            .uri("/metrics")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        for line in [
            "vaultbridge_requests_total{provider=\"local\",outcome=\"ok\"} 1",
            "vaultbridge_cache_answers_total{provider=\"local\",source=\"miss\"} 1",
            "vaultbridge_requests_total{provider=\"(none)\",outcome=\"bad_request\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("metrics-unit-value") && !text.contains("\"db\""));
    }

    #[test]
    fn accept_errors_log_once_per_interval_with_the_count_not_logged() {
        let mut errors = AcceptErrors::default();
        let start = Instant::now();
        assert_eq!(
            errors.recovered(),
            None,
            "nothing to report before a failure"
        );
        assert_eq!(errors.failed(start), Some(0));
        for ms in [100, 500, 999] {
            assert_eq!(errors.failed(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(errors.failed(start + Duration::from_millis(1000)), Some(3));
        assert_eq!(errors.failed(start + Duration::from_millis(1100)), None);
        assert_eq!(errors.recovered(), Some(1));
        assert_eq!(errors.recovered(), None);
        // A new episode logs its first failure at once.
        assert_eq!(errors.failed(start + Duration::from_millis(1200)), Some(0));
    }

    #[tokio::test]
    async fn the_socket_is_staged_in_a_private_folder_then_linked_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, staging) = stage(dir.path()).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        // Whatever the umask, nobody else can reach the socket while staged.
        assert_eq!(mode(&staging.dir), 0o700);
        assert_eq!(mode(&staging.socket), 0o600);
        assert_eq!(staging.dir.parent(), Some(dir.path()));
        let staged_dir = staging.dir.clone();
        drop(staging);
        assert!(!staged_dir.exists(), "staging folder left behind");
        drop(listener);

        let path = dir.path().join("vaultbridge.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["vaultbridge.sock"], "only the socket remains");
        // It is the listener's socket: a client reaches it.
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.unwrap();
        connected.unwrap();
    }

    #[tokio::test]
    async fn bind_refuses_a_live_server_and_a_non_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vaultbridge.sock");
        let _live = bind(&path).unwrap();
        assert!(matches!(bind(&path), Err(BindError::InUse(_))));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(BindError::NotASocket(_))));
        // Neither attempt left a staging folder behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
