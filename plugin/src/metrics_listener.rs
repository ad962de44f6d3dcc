//! The optional HTTP listener for Prometheus and health checks
//! (`metrics_listen`): `GET /metrics`, `/healthz`, `/readyz`. Off by
//! default; the managed plugin uses the host's network, so it binds where
//! the operator says (loopback, or an interface a local agent reaches).
//! Nothing it serves is a secret: counts, provider names, outcome words and
//! the providers' error messages (which never carry a credential).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::metrics::health;
use crate::resolve::Resolver;

/// A scraper and a health checker or two: more connections wait.
const MAX_CONNECTIONS: usize = 16;
/// A scraper sends its request at once; holding a slot idle is refused
/// quickly, and connections are not kept alive (a scrape a few seconds
/// apart reconnects), so no client can hold the slots for long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// No connection lives longer (a client that never reads).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET /metrics`, for the plugin's socket and the listener.
pub async fn metrics(State(resolver): State<Arc<Resolver>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        resolver.render_metrics(),
    )
        .into_response()
}

async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// 200 when every provider is ready, else 503; the body says which is not
/// and why.
async fn readyz(State(resolver): State<Arc<Resolver>>) -> Response {
    let readiness = health::readiness(resolver.metrics());
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &readiness)
}

fn json<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

pub fn app(resolver: Arc<Resolver>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(resolver)
}

/// Bind `addr`; the error names it. Not loopback: said once, since the
/// listener has no authentication and `/readyz` names backend addresses.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "metrics_listen {addr} is not a loopback address: anyone who reaches it reads the metrics and /readyz (backend addresses, error reasons); bind it to 127.0.0.1 or a trusted interface"
        );
    }
    TcpListener::bind(addr)
        .await
        .map_err(|err| format!("metrics_listen {addr}: cannot listen: {err}"))
}

/// Serve `app` until `shutdown`, within the limits above.
pub async fn run(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => return,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "metrics listener: cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |request| app.clone().oneshot(request));
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}
