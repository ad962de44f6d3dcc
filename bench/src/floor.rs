//! The physical floor: the least a server on a Unix socket can do to answer
//! GetSecret — read the request, write a fixed response of the same size.

use std::convert::Infallible;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub fn serve(socket: &Path) -> anyhow::Result<()> {
    // Same runtime shape as the plugin: tokio's multi-threaded default.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket)?;
        let answer = Bytes::from(crate::docker_answer());
        loop {
            let (stream, _) = listener.accept().await?;
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        // Read the body, as any real server must.
                        let _ = request.into_body().collect().await;
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/vnd.docker.plugins.v1.1+json")
                                .body(Full::new(answer))
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
