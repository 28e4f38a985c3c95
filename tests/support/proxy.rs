//! A registry in front of the real one, speaking the same protocol: it counts the
//! requests it forwards and can misbehave on one blob (wrong bytes, or a connection that
//! breaks half-way), for the tests of the agent's pull.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How the proxy treats the blob it is told about.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Flip one byte of this blob's body (same length, wrong sha256).
    Corrupt(String),
    /// Send this many bytes of this blob, then break the connection.
    CutAfter(String, usize),
    /// Ask for Basic credentials (user, password) on every /v2/ request.
    Basic(String, String),
    /// Ask for a bearer token, issued at /token to these Basic credentials.
    Bearer(String, String),
}

/// The token the proxy issues in Bearer mode.
pub const TOKEN: &str = "test-token-4f2a";

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

fn deny(challenge: String) -> Response<Body> {
    let body = Full::new(Bytes::from_static(b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}"));
    let mut resp = Response::new(body.map_err(|never| match never {}).boxed());
    *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, challenge.parse().unwrap());
    resp
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A running proxy; stops with the test's runtime.
pub struct RegistryProxy {
    /// Its address, to use as the registry of image references.
    pub addr: SocketAddr,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl RegistryProxy {
    /// Lists the proxy in `cfg`'s allowed registries (it is on loopback, so an agent
    /// reaches it only when it is listed by name).
    pub fn allow(&self, cfg: &mut fnrt_agent::Config) {
        cfg.allowed_registries.push(self.addr.to_string());
    }

    /// Starts a proxy to `upstream` with `fault`, over plain HTTP.
    pub async fn start(upstream: &str, fault: Fault) -> RegistryProxy {
        Self::start_with(upstream, fault, None).await
    }

    /// Starts a proxy over HTTPS with a certificate for 127.0.0.1 from a CA made for the
    /// occasion; returns it with the CA's certificate in PEM, for the agent to trust.
    pub async fn start_tls(upstream: &str, fault: Fault) -> (RegistryProxy, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "fnrt test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(fnrt_common::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
            .unwrap();
        let proxy = Self::start_with(upstream, fault, Some(Arc::new(config))).await;
        (proxy, ca.pem())
    }

    async fn start_with(
        upstream: &str,
        fault: Fault,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> RegistryProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let client: Client<HttpConnector, hyper::body::Incoming> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let (upstream, c) = (upstream.to_string(), counts.clone());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, upstream, counts, fault) =
                    (client.clone(), upstream.clone(), c.clone(), fault.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (client, upstream, counts, fault) =
                            (client.clone(), upstream.clone(), counts.clone(), fault.clone());
                        async move { forward(req, &client, &upstream, &counts, &fault).await }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                    }
                });
            }
        });
        RegistryProxy { addr, counts }
    }

    /// How many requests went to `path` (e.g. "/v2/fnrt/echo/blobs/sha256:...").
    pub fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// How many requests had a path containing `part`.
    pub fn count_containing(&self, part: &str) -> usize {
        self.counts.lock().unwrap().iter().filter(|(p, _)| p.contains(part)).map(|(_, n)| n).sum()
    }
}

async fn forward(
    req: Request<hyper::body::Incoming>,
    client: &Client<HttpConnector, hyper::body::Incoming>,
    upstream: &str,
    counts: &Mutex<HashMap<String, usize>>,
    fault: &Fault,
) -> Result<Response<Body>, std::io::Error> {
    let path = req.uri().path().to_string();
    *counts.lock().unwrap().entry(path.clone()).or_default() += 1;
    let given =
        req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    match fault {
        Fault::Basic(u, p) if given.as_deref() != Some(basic(u, p).as_str()) => {
            return Ok(deny("Basic realm=\"fnrt-test\"".into()));
        }
        Fault::Bearer(u, p) if path == "/token" => {
            if given.as_deref() != Some(basic(u, p).as_str()) {
                return Ok(deny("Basic realm=\"fnrt-test-token\"".into()));
            }
            let body = Full::new(Bytes::from(format!("{{\"token\":\"{TOKEN}\"}}")));
            return Ok(Response::new(body.map_err(|never| match never {}).boxed()));
        }
        Fault::Bearer(..) if given.as_deref() != Some(format!("Bearer {TOKEN}").as_str()) => {
            let challenge =
                format!("Bearer realm=\"http://{host}/token\",service=\"fnrt-test\",scope=\"repository:fnrt/echo:pull\"");
            return Ok(deny(challenge));
        }
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{upstream}{}", parts.uri.path_and_query().map_or("/", |p| p.as_str()))
        .parse()
        .unwrap();
    let resp = client.request(Request::from_parts(parts, body)).await.map_err(std::io::Error::other)?;
    let (parts, body) = resp.into_parts();
    let matches = |d: &str| path.ends_with(&format!("/blobs/{d}"));
    let body: Body = match fault {
        Fault::Corrupt(d) if matches(d) => {
            let mut bytes = body.collect().await.map_err(std::io::Error::other)?.to_bytes().to_vec();
            let middle = bytes.len() / 2;
            if let Some(b) = bytes.get_mut(middle) {
                *b ^= 0xff;
            }
            Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed()
        }
        Fault::CutAfter(d, n) if matches(d) => {
            let bytes = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
            let head = bytes.slice(..(*n).min(bytes.len()));
            let frames = futures_util::stream::iter(vec![
                Ok(Frame::data(head)),
                Err(std::io::Error::other("the test registry went away")),
            ]);
            StreamBody::new(frames).boxed()
        }
        _ => body.map_err(std::io::Error::other).boxed(),
    };
    Ok(Response::from_parts(parts, body))
}
