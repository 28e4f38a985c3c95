//! A registry that misbehaves on purpose: it answers each request as the test's `route`
//! says (a manifest, an endless or trickling body, a redirect), and records what it was
//! asked. It serves on a listener the test gives it (on loopback, or in a test host's
//! network namespace).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// How to answer one request.
pub enum Reply {
    /// 200 with these bytes and content type.
    Bytes(Vec<u8>, &'static str),
    /// 200 with `total` zero bytes, sent as fast as the client reads, without a length.
    Endless(u64),
    /// 200 announcing `total` bytes and sending one byte a second.
    Trickle(u64),
    /// 307 to this location.
    Redirect(String),
    /// This status, no body.
    Status(u16),
}

type Body = BoxBody<Bytes, Infallible>;

/// A running fake registry; it stops with the test's runtime.
pub struct FakeRegistry {
    /// Where it listens.
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

impl FakeRegistry {
    /// Serves on `listener`, answering each request's path with `route`.
    pub fn serve(
        listener: std::net::TcpListener,
        route: impl Fn(&str) -> Reply + Send + Sync + 'static,
    ) -> FakeRegistry {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let asked: Arc<Mutex<Vec<String>>> = Arc::default();
        let (route, log) = (Arc::new(route), asked.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (route, log) = (route.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let path = req.uri().path().to_string();
                        log.lock().unwrap().push(path.clone());
                        let reply = route(&path);
                        async move { Ok::<_, Infallible>(answer(reply)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeRegistry { addr, asked }
    }

    /// Serves on a fresh loopback port.
    pub fn on_loopback(route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> FakeRegistry {
        FakeRegistry::serve(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), route)
    }

    /// The paths it was asked for, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn answer(reply: Reply) -> Response<Body> {
    let mut builder = Response::builder();
    let body: Body = match reply {
        Reply::Bytes(bytes, content_type) => {
            builder = builder.header("content-type", content_type);
            Full::new(Bytes::from(bytes)).boxed()
        }
        Reply::Endless(total) => {
            let chunk = Bytes::from(vec![0u8; 64 << 10]);
            let chunks = futures_util::stream::unfold(0u64, move |sent| {
                let chunk = chunk.clone();
                async move {
                    (sent < total)
                        .then(|| (Ok::<_, Infallible>(Frame::data(chunk.clone())), sent + chunk.len() as u64))
                }
            });
            StreamBody::new(chunks).boxed()
        }
        Reply::Trickle(total) => {
            builder = builder.header("content-length", total.to_string());
            let bytes = futures_util::stream::unfold(0u64, move |sent| async move {
                if sent >= total {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x"))), sent + 1))
            });
            StreamBody::new(bytes).boxed()
        }
        Reply::Redirect(location) => {
            builder = builder.status(307).header("location", location);
            Full::new(Bytes::new()).boxed()
        }
        Reply::Status(code) => {
            builder = builder.status(code);
            Full::new(Bytes::new()).boxed()
        }
    };
    builder.body(body).unwrap()
}
