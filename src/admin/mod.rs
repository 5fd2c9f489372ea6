//! Admin HTTP server (hyper): `/metrics`, `/healthz`, `/readyz`, `/status`, `/api/v1/…`.
//!
//! STUB: the observability work completes this module.

use crate::gateway::Gateway;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;

/// Bind the admin address and serve it in the background.
pub async fn spawn(gw: &Gateway) -> std::io::Result<()> {
    let shared = gw.shared.clone();
    let bind = shared.runtime().config.admin.bind;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(bind = %listener.local_addr()?, "admin API listening");
    let stop = shared.background.clone();
    let tracker = shared.bg_tracker.clone();
    tracker.spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(&shared, req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn route(
    shared: &Arc<crate::gateway::Shared>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(shared.metrics.render())))
            .unwrap_or_default(),
        "/healthz" => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}
