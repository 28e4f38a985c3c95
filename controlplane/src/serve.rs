//! The control plane's HTTP listeners (the API and the gateway): TCP_NODELAY on every
//! connection (axum leaves Nagle's algorithm on: an answer written as headers then body
//! waited 40 ms for the client's delayed ACK), a limit on open connections, a deadline on
//! reading a request's headers (a client sending one byte a second, or a keep-alive
//! connection left idle, is closed), a deadline on a whole request, and a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// How much one listener takes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
    /// The longest a request's headers may take to arrive (and a connection may idle).
    pub header_timeout: Duration,
    /// The longest a request may take until its answer starts.
    pub request_timeout: Duration,
}

/// Serves `app` on `listener` within `limits` until `stop` turns true; connections still
/// open then get 10 s to finish.
pub fn spawn(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let app = app.layer(axum::middleware::from_fn(move |req, next: axum::middleware::Next| {
        deadline(req, next, limits.request_timeout)
    }));
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(limit = limits.max_connections, "a connection over the limit was closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
                drop(slot);
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    })
}

/// `next` within `limit`; past it, 408 in Scaleway's error shape.
async fn deadline(
    req: axum::extract::Request,
    next: axum::middleware::Next,
    limit: Duration,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let message =
                format!("the request took longer than {} s (http_request_timeout_s)", limit.as_secs());
            let body = serde_json::json!({ "type": "invalid_request", "message": message });
            axum::response::IntoResponse::into_response((
                axum::http::StatusCode::REQUEST_TIMEOUT,
                axum::Json(body),
            ))
        }
    }
}
