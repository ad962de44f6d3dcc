//! The physical floor of a miss: the least a server on a Unix socket can do
//! to answer GetSecret from Vault — read the request, GET the secret over a
//! kept-alive HTTP/1 connection (one per client connection, as hyper's own
//! examples drive it: the connection in a task of its own), take the field
//! out of Vault's JSON, answer Docker's JSON. No labels, no cache, no log,
//! no checks: what remains of a miss once everything a driver does is gone.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

/// Where to read: `vault` is `host:port`, `path` e.g. `/v1/secret/data/bench`.
pub struct Upstream {
    pub vault: String,
    pub token: String,
    pub path: String,
    pub field: String,
}

pub fn serve(socket: &Path, upstream: Upstream) -> anyhow::Result<()> {
    // Same runtime shape as the plugin: tokio's multi-threaded default.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let upstream = Arc::new(upstream);
    runtime.block_on(async {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                // Requests on one connection come one after another: one
                // Vault connection each, opened at the first.
                let vault: Arc<Mutex<Option<SendRequest<Empty<Bytes>>>>> = Arc::default();
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let (upstream, vault) = (upstream.clone(), vault.clone());
                    async move {
                        let _ = request.into_body().collect().await;
                        let body = match read(&upstream, &vault).await {
                            Ok(value) => answer(&value),
                            Err(err) => format!("{{\"Err\":\"{err}\"}}"),
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/vnd.docker.plugins.v1.1+json")
                                .body(Full::new(Bytes::from(body)))
                                .expect("static response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn read(
    upstream: &Upstream,
    vault: &Mutex<Option<SendRequest<Empty<Bytes>>>>,
) -> anyhow::Result<Vec<u8>> {
    let mut vault = vault.lock().await;
    if vault.as_ref().is_none_or(|sender| sender.is_closed()) {
        let stream = tokio::net::TcpStream::connect(&upstream.vault).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        *vault = Some(sender);
    }
    let sender = vault.as_mut().expect("connected above");
    sender.ready().await?;
    let request = Request::get(upstream.path.as_str())
        .header("host", upstream.vault.as_str())
        .header("x-vault-token", upstream.token.as_str())
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "vault answered {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    let value = json["data"]["data"][upstream.field.as_str()]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no field {}", upstream.field))?;
    Ok(value.as_bytes().to_vec())
}

/// Docker's answer for a per-task value, as vaultbridge writes it.
fn answer(value: &[u8]) -> String {
    let value = base64::engine::general_purpose::STANDARD.encode(value);
    format!("{{\"Value\":\"{value}\",\"DoNotReuse\":true}}")
}
