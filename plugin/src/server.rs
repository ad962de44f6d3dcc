//! The HTTP/1.1 server on the plugin's Unix socket.
//!
//! [`app`] builds the router (testable without a socket), [`bind`] prepares
//! the socket file, [`run`] serves until shutdown with a bound on in-flight
//! work. Every failure becomes Docker's `{"Err": "..."}` in [`error_response`].

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::FutureExt as _;
use secrecy::ExposeSecret;
use tokio::net::UnixListener;

use crate::labels::Lookup;
use crate::protocol::{
    ActivateResponse, CONTENT_TYPE, ErrorResponse, GetSecretRequest, GetSecretResponse,
};
use crate::resolve::{ResolveError, Resolver};
use vaultbridge_providers::text::{shown, shown_max};

/// Requests are small JSON documents; anything larger is refused unread.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The longest error message sent to the engine or logged for one request.
const MAX_ERROR_CHARS: usize = 2000;

/// How long in-flight requests may run after a shutdown signal.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    pub resolver: Arc<Resolver>,
}

/// The plugin's routes. Docker sends every call as `POST` with a JSON body
/// and no `Content-Type`, so bodies are parsed by hand, not by `Json`.
pub fn app(resolver: Arc<Resolver>) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/SecretProvider.GetSecret", post(get_secret))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "unknown endpoint; this plugin serves /Plugin.Activate and /SecretProvider.GetSecret") })
        .method_not_allowed_fallback(|| async {
            error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; the plugin protocol uses POST")
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(AppState { resolver })
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
            return error_response(status, &message);
        }
    };
    let request: GetSecretRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            // serde's message can quote the input: keep it bounded and escaped.
            let message = format!("malformed GetSecret request: {}", shown(&err.to_string()));
            tracing::warn!(outcome = "bad_request", error = %message, "GetSecret refused");
            return error_response(StatusCode::BAD_REQUEST, &message);
        }
    };
    // A bug that panics fails this request with an Err, not the
    // connection; shared state is protected where it lives (the cache).
    match std::panic::AssertUnwindSafe(serve_secret(&state.resolver, &request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
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

/// Resolve one request and log exactly one line about it.
async fn serve_secret(resolver: &Resolver, request: &GetSecretRequest) -> Response {
    let started = Instant::now();
    // Labels, then the provider: either may be wrong, and the log line names
    // what was known when it failed.
    let lookup = Lookup::from_labels(&request.secret_name, &request.secret_labels)
        .map_err(|err| ("bad_labels", err.to_string()));
    let routed = lookup.as_ref().map_err(Clone::clone).and_then(|lookup| {
        resolver
            .route(lookup)
            .map(|upstream| (lookup, upstream))
            .map_err(|err| (outcome(&err), err.to_string()))
    });
    let path = lookup.as_ref().map_or("-", |lookup| lookup.path.as_str());
    // Request-controlled: escaped and bounded so that no field can forge a
    // log line (the path is already validated by the labels).
    let (secret, service, task) = (
        shown(&request.secret_name),
        shown(&request.service_name),
        shown(&request.task_name),
    );
    let provider = routed
        .as_ref()
        .map_or("-", |(_, upstream)| upstream.name.as_str());
    let result = match &routed {
        Ok((lookup, upstream)) => resolver
            .resolve(upstream, lookup)
            .await
            .map_err(|err| (outcome(&err), err.to_string())),
        Err(err) => Err(err.clone()),
    };
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(resolved) => {
            let value = resolved.value.expose_secret();
            tracing::info!(
                %secret,
                %service,
                %task,
                provider,
                path,
                outcome = "ok",
                bytes = value.len(),
                per_task = resolved.per_task,
                cache = resolved.source.as_str(),
                duration_ms,
                "secret served"
            );
            json_response(
                StatusCode::OK,
                &GetSecretResponse::value(value, resolved.per_task),
            )
        }
        Err((outcome, message)) => {
            // Errors quote backend answers and labels: one last escape and
            // bound here, the one place they leave the plugin.
            let message = shown_max(&message, MAX_ERROR_CHARS);
            tracing::warn!(
                %secret,
                %service,
                %task,
                provider,
                path,
                outcome,
                duration_ms,
                error = %message,
                "secret lookup failed"
            );
            let message = format!("vaultbridge: secret '{secret}': {message}");
            json_response(StatusCode::OK, &GetSecretResponse::error(&message))
        }
    }
}

/// A short, stable word per failure kind, for logs and (later) metrics.
fn outcome(err: &ResolveError) -> &'static str {
    use vaultbridge_providers::ProviderError as P;
    match err {
        ResolveError::UnknownProvider { .. } | ResolveError::NoDefault { .. } => "bad_labels",
        ResolveError::Shape { .. } => "bad_value",
        ResolveError::Internal(_) => "internal",
        ResolveError::Provider { error, .. } => match error {
            P::NotFound(_) => "not_found",
            P::Denied(_) => "denied",
            P::Unauthenticated(_) => "unauthenticated",
            P::Unavailable(_) => "unavailable",
            P::Invalid(_) => "bad_labels",
        },
    }
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response(),
        Err(err) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &err.to_string()),
    }
}

/// The single place a failure becomes Docker's `{"Err": "..."}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorResponse {
        err: message.to_string(),
    })
    .unwrap_or_else(|_| br#"{"Err":"internal error"}"#.to_vec());
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
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
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let shown = path.display().to_string();
    let io = |source| BindError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
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
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Serve until `shutdown` resolves, then stop accepting and give in-flight
/// requests up to `grace` to finish.
pub async fn run(
    listener: UnixListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let stopping = Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs_f64(),
            "shutting down: finishing in-flight requests"
        );
        notify.notify_one();
    });
    let deadline = async {
        stopping.notified().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server.into_future() => result,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "in-flight requests did not finish in time; stopping anyway");
            Ok(())
        }
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
            },
            "providers.local",
        )
        .unwrap();
        let mut providers: BTreeMap<String, (Arc<dyn vaultbridge_providers::Provider>, _)> =
            BTreeMap::new();
        providers.insert("local".into(), (Arc::new(file), Default::default()));
        app(Arc::new(Resolver::new(providers, None, Default::default())))
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
}
