//! The HTTP data plane: takes calls for a function and forwards them to one of its
//! instances on :9000.
//!
//! `/function/<name>/<path>?<query>` is passed to an instance as `/<path>?<query>`, with
//! method, headers and body streamed through.
//!
//! Every call has a request id: the caller's `X-Scf-Request-Id` or a new one. It goes to
//! the instance and back to the caller in that header, and stamps the lines the instance
//! prints while the call is in flight.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::instance::Instances;

type Body = BoxBody<Bytes, hyper::Error>;

/// The request id header of SCF.
pub const REQUEST_ID: &str = "x-scf-request-id";

/// A caller's request id must be 1 to 128 of these.
fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new request id, UUID v4 shaped.
fn new_request_id() -> String {
    let (a, b, c, d, e): (u32, u16, u16, u16, u64) = rand::random();
    format!("{a:08x}-{b:04x}-4{:03x}-{:04x}-{:012x}", c & 0xfff, (d & 0x3fff) | 0x8000, e & 0xffff_ffff_ffff)
}

/// The data plane's state: the instances to forward to and a pooled HTTP client.
pub struct Dataplane {
    instances: Arc<Instances>,
    client: Client<HttpConnector, Incoming>,
}

impl Dataplane {
    /// A data plane over `instances`.
    pub fn new(instances: Arc<Instances>) -> Dataplane {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Dataplane { instances, client }
    }

    /// Serves on `listener` until `shutdown` turns true.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "data plane accept");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %e, "data plane connection");
                }
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let request_id =
            match req.headers().get(REQUEST_ID).map(|v| v.to_str()) {
                None => new_request_id(),
                Some(Ok(id)) if valid_request_id(id) => id.to_string(),
                Some(_) => return error(
                    StatusCode::BAD_REQUEST,
                    "X-Scf-Request-Id must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.' and ':'"
                        .into(),
                ),
            };
        let mut resp = self.forward(req, &request_id).await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        resp
    }

    async fn forward(&self, req: Request<Incoming>, request_id: &str) -> Response<Body> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return text(StatusCode::OK, "ok\n".into());
        }
        let Some(rest) = path.strip_prefix("/function/") else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no route for {path}; call a function at /function/<name>/<path>"),
            );
        };
        let (function, tail) = rest.split_once('/').map_or((rest, ""), |(f, t)| (f, t));
        let instance = match self.instances.pick_or_start(function).await {
            Ok(Some(i)) => i,
            Ok(None) => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("function {function:?} has no running instance on this node; start one with agentctl instance start {function} <image>"),
                )
            }
            Err(e) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("function {function:?} has no running instance and starting one failed: {}", crate::api::chain(&e)),
                )
            }
        };
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let uri: Uri = match format!("http://{}/{tail}{query}", instance.address).parse() {
            Ok(u) => u,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot forward path {path:?}: {e}")),
        };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        if let Ok(host) = HeaderValue::from_str(&instance.address.to_string()) {
            parts.headers.insert(HOST, host);
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            parts.headers.insert(REQUEST_ID, v);
        }
        // In flight until the answer's body is sent.
        let call = self.instances.logs().call(&instance.id, request_id);
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => resp.map(move |b| {
                b.map_frame(move |f| {
                    let _in_flight = &call;
                    f
                })
                .boxed()
            }),
            Err(e) => error(
                StatusCode::BAD_GATEWAY,
                format!("instance {} of function {function:?} did not answer: {e}", instance.id),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = status;
    resp
}

fn error(status: StatusCode, message: String) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = text(status, body);
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked_and_made() {
        for ok in ["a", "req-1", "3f2b_x.y:z", &"a".repeat(128)] {
            assert!(valid_request_id(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(!valid_request_id(bad), "{bad}");
        }
        let id = new_request_id();
        assert!(valid_request_id(&id) && id.len() == 36 && id.as_bytes()[14] == b'4', "{id}");
        assert_ne!(id, new_request_id());
    }
}
