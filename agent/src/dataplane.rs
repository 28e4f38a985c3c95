//! The HTTP data plane: takes calls for a function and forwards them to one of its
//! instances on :9000.
//!
//! `/function/<name>/<path>?<query>` is passed to an instance of an HTTP function as
//! `/<path>?<query>`, with method, headers and body streamed through; an event function
//! gets `POST /event-invoke` with the body as the event. Deployed functions are served from
//! their pools (see crate::pool); instances started on their own with StartInstance are
//! picked round robin. Either way a call is sent by one function, [`Dataplane::forward`]:
//! the SCF common headers, the function's timeout, in-flight tracking, metrics.
//!
//! Every call has a request id: the caller's `X-Scf-Request-Id` or a new one. It goes to
//! the instance and back to the caller in that header, and stamps the lines the instance
//! prints while the call is in flight.
//!
//! With the cluster's data plane key set (required when it listens beyond loopback), a
//! call is taken only when the gateway signed it (fnrt_common::signature); others get 401.
//! The metrics (Prometheus text, `/metrics`) are served by a listener of their own
//! ([`Role::Metrics`], loopback by default), never on the calls' port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use fnrt_common::signature::{self, Key, Refused};

use crate::logs::Logs;
use crate::metrics::{ErrorKind, Outcome};
use crate::pool::{AcquireError, Kind, Lease, Pool, Pools, Served};
use crate::request_id::{self, REQUEST_ID};
use crate::upstream::{Address, Body, Upstream};

/// The data plane's state: the pools and instances to forward to and this thread's
/// connections to them.
pub struct Dataplane {
    pools: Arc<Pools>,
    logs: Arc<Logs>,
    upstream: Arc<Upstream>,
    role: Role,
    key: Option<Key>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
}

/// What one caller may take of a data plane.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The longest a request's headers may take to arrive (and a connection may idle).
    pub header_timeout: std::time::Duration,
    /// The largest request body forwarded; larger ones get 413 (or are cut when streamed).
    pub max_body_bytes: u64,
    /// Open connections, shared by the node's data plane threads; more are closed.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// On shutdown, how long the calls in flight may take to finish.
    pub drain: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: std::time::Duration::from_secs(10),
            max_body_bytes: 6_000_000,
            connections: Arc::new(tokio::sync::Semaphore::new(10_000)),
            drain: std::time::Duration::from_secs(10),
        }
    }
}

/// How long a caller has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a data plane listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Calls to functions (and `/healthz`).
    Calls,
    /// `/metrics` (and `/healthz`).
    Metrics,
}

/// A call's answer as the data plane got it, for the gRPC Invoke.
pub struct Answer {
    /// Its response (the function's or the agent's error).
    pub response: Response<Body>,
    /// Whether the call waited for a new instance.
    pub cold: bool,
    /// A cold call's anatomy (see [`crate::instance::phases::server_timing`]).
    pub anatomy: Vec<(&'static str, std::time::Duration)>,
    /// The instance that took it, if one did.
    pub instance: Option<Arc<str>>,
    /// When the function's timeout, counted from the call's arrival, ends.
    pub deadline: Instant,
}

impl Dataplane {
    /// A data plane over `pools`; the lines instances print during calls go to `logs`.
    /// With `key`, calls must be signed by the gateway.
    pub fn new(pools: Arc<Pools>, logs: Arc<Logs>, role: Role, key: Option<Key>) -> Dataplane {
        Dataplane { pools, logs, upstream: Arc::default(), role, key, tls: None, limits: Limits::default() }
    }

    /// Serves TLS with `config`: only callers holding a control plane's certificate of the
    /// cluster CA (the gateway) are served; others get 403.
    pub fn with_tls(mut self, config: Arc<tokio_rustls::rustls::ServerConfig>) -> Dataplane {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// The data plane with `limits` instead of the defaults.
    pub fn with_limits(self, limits: Limits) -> Dataplane {
        Dataplane { limits, ..self }
    }

    /// Serves on `listener` until `shutdown` turns true; then closes it (new callers are
    /// refused, and the gateway holds their calls for the next agent) and lets the calls in
    /// flight finish, for `limits.drain` at most. Idle connections are closed at once, and a
    /// busy one after its answer.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "data plane accept");
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let Ok(slot) = self.limits.connections.clone().try_acquire_owned() else {
                tracing::warn!("a data plane connection over the limit was closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slot = slot;
                let Some(acceptor) = this.tls.clone() else {
                    return this.serve_connection(TokioIo::new(stream), true, watcher).await;
                };
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(error = %e, "data plane TLS handshake"),
                    Err(_) => return tracing::debug!("data plane TLS handshake timed out"),
                };
                let caller = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                let gateway = caller
                    .and_then(|c| fnrt_common::pki::peer(c).ok())
                    .is_some_and(|p| p.role == fnrt_common::pki::Role::ControlPlane);
                this.serve_connection(TokioIo::new(tls), gateway, watcher).await;
            });
        }
        drop(listener);
        let open = graceful.count();
        if open > 0 {
            tracing::info!(connections = open, "data plane draining the calls in flight");
        }
        if tokio::time::timeout(self.limits.drain, graceful.shutdown()).await.is_err() {
            tracing::warn!(
                drain_ms = self.limits.drain.as_millis() as u64,
                "calls still in flight after the drain time were cut"
            );
        }
    }

    /// Serves one connection; one whose caller may not call (`allowed` false) gets 403.
    async fn serve_connection<I>(
        self: Arc<Self>,
        io: I,
        allowed: bool,
        watcher: hyper_util::server::graceful::Watcher,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let timeout = self.limits.header_timeout;
        let service = hyper::service::service_fn(move |req| {
            let this = self.clone();
            async move {
                if !allowed {
                    return Ok::<_, Infallible>(error(
                        StatusCode::FORBIDDEN,
                        "this data plane takes calls from control planes' certificates of the cluster CA only".into(),
                    ));
                }
                Ok::<_, Infallible>(this.handle(req).await)
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(timeout);
        if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
            tracing::debug!(error = %e, "data plane connection");
        }
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        // The caller's connection headers are not the instance's (answers: Upstream::send).
        fnrt_hop::strip(req.headers_mut());
        let request_id =
            match req.headers().get(REQUEST_ID).map(|v| v.to_str()) {
                None => request_id::new(),
                Some(Ok(id)) if request_id::valid(id) => id.to_string(),
                Some(_) => return error(
                    StatusCode::BAD_REQUEST,
                    "X-Scf-Request-Id must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.' and ':'"
                        .into(),
                ),
            };
        if let Err(refused) = self.check_signature(&mut req, &request_id) {
            return error(StatusCode::UNAUTHORIZED, refused.to_string());
        }
        if let Some(why) = fnrt_hop::over_body_limit(req.headers(), self.limits.max_body_bytes) {
            return error(StatusCode::PAYLOAD_TOO_LARGE, why);
        }
        let mut resp = self.route(req, &request_id).await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        resp
    }

    /// Checks (and removes) the gateway's signature of a call, when this data plane has a key.
    fn check_signature(&self, req: &mut Request<Incoming>, request_id: &str) -> Result<(), Refused> {
        let Some(key) = &self.key else { return Ok(()) };
        if self.role == Role::Metrics || req.uri().path() == "/healthz" {
            return Ok(());
        }
        let headers = req.headers_mut();
        let time = headers.remove(signature::TIME);
        let sig = headers.remove(signature::SIGNATURE);
        let text = |v: &Option<HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string);
        // The id signed is the caller's: a call without one cannot carry a valid signature.
        let id = if req.headers().contains_key(REQUEST_ID) { request_id } else { "" };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        key.verify(req.method().as_str(), path, id, text(&time).as_deref(), text(&sig).as_deref())
    }

    async fn route(&self, req: Request<Incoming>, request_id: &str) -> Response<Body> {
        let path = req.uri().path();
        if path == "/healthz" {
            return text(StatusCode::OK, "ok\n".into());
        }
        if self.role == Role::Metrics {
            if path != "/metrics" {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no route for {path}; this listener serves /metrics"),
                );
            }
            self.pools.observe();
            let mut resp = text(StatusCode::OK, self.pools.metrics().encode());
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            return resp;
        }
        let Some((function, target)) = function_target(req.uri()) else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no route for {path}; call a function at /function/<name>/<path>"),
            );
        };
        let target = match target {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot forward path {path:?}: {e}")),
        };
        match self.pools.get(&function) {
            Some(pool) => {
                let limit = self.limits.max_body_bytes as usize;
                let req = req.map(|b| http_body_util::Limited::new(b, limit).boxed());
                self.call(&pool, req, target, request_id).await.response
            }
            None => error(StatusCode::NOT_FOUND, AcquireError::NoInstance(function).to_string()),
        }
    }

    /// A call to a deployed function: an instance from its pool, the SCF headers, its timeout.
    pub async fn call(&self, pool: &Arc<Pool>, req: Request<Body>, target: Uri, request_id: &str) -> Answer {
        let arrived = Instant::now();
        let served = pool.served();
        let spec = &served.spec;
        if spec.kind == Kind::Event && req.method() != Method::POST {
            return self.fail(
                &served,
                "method",
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is an event function: send the event with POST", spec.name),
            );
        }
        let lease = match self.pools.acquire(pool).await {
            Ok(l) => l,
            Err(e) => {
                let (reason, code) = match &e {
                    AcquireError::QueueFull { .. } => ("queue_full", StatusCode::TOO_MANY_REQUESTS),
                    AcquireError::QueueTimeout { .. } => ("queue_timeout", StatusCode::TOO_MANY_REQUESTS),
                    AcquireError::StartFailed { .. } => ("start_failed", StatusCode::SERVICE_UNAVAILABLE),
                    AcquireError::Removed(_) => ("removed", StatusCode::NOT_FOUND),
                    AcquireError::NoInstance(_) => ("no_instance", StatusCode::NOT_FOUND),
                };
                return self.fail(&served, reason, code, e.to_string());
            }
        };
        let (id, host) = (lease.id.clone(), lease.host.clone());
        let phases = lease.phases.clone().map(|p| (p, Instant::now()));
        let (address, netns) = (lease.address, lease.netns.clone());
        let to =
            To { id: &id, address, netns: netns.as_deref(), host: &host, cold: lease.cold, arrived, phases };
        self.forward(&served, lease, to, req, target, request_id).await
    }

    /// Sends a call to one instance as every call is sent: an event function's as `POST
    /// /event-invoke`, the SCF common headers (the caller's X-Scf-* replaced), the trigger
    /// source, in flight for the instance's log lines, the function's timeout (504 past it,
    /// and the instance is recycled), counted in the function's metrics. `hold` is kept
    /// until the answer's body is sent.
    async fn forward(
        &self,
        served: &Served,
        mut hold: Lease,
        to: To<'_>,
        req: Request<Body>,
        target: Uri,
        request_id: &str,
    ) -> Answer {
        let spec = &served.spec;
        let (mut parts, body) = req.into_parts();
        if spec.kind == Kind::Event {
            parts.method = Method::POST;
            parts.uri = Uri::from_static("/event-invoke");
        } else {
            parts.uri = target;
        }
        scf_headers(&mut parts.headers, &served.headers, request_id, to.host);
        if let Some(TriggerSource(src)) = parts.extensions.get::<TriggerSource>() {
            parts.headers.insert(HeaderName::from_static("x-scf-trigger-src"), src.clone());
        }
        // In flight until the answer's body is sent.
        let in_flight = self.logs.call(to.id, request_id);
        let sent = tokio::time::timeout(
            spec.timeout,
            self.upstream.send(
                to.id,
                Address { at: to.address, netns: to.netns },
                Request::from_parts(parts, body),
            ),
        )
        .await;
        let instance = Some(to.id.clone());
        let failed = |reason: &str, code: StatusCode, message: String| {
            let mut a = self.fail(served, reason, code, message);
            (a.cold, a.instance) = (to.cold, instance.clone());
            a
        };
        match sent {
            Err(_) => {
                hold.recycle();
                let ms = spec.timeout.as_millis();
                failed(
                    "timeout",
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("function {:?} did not answer within its timeout of {ms} ms; the instance that overran is recycled", spec.name),
                )
            }
            Ok(Err(e)) => failed(
                "upstream",
                StatusCode::BAD_GATEWAY,
                format!("instance {} of function {:?} did not answer: {e}", to.id, spec.name),
            ),
            Ok(Ok((mut resp, conn))) => {
                served.duration.observe(to.arrived.elapsed().as_secs_f64());
                let anatomy = cold_anatomy(&to, &mut resp, &spec.name);
                self.count(served, resp.status());
                // The timeout covers the whole answer: past it, the body ends in error and
                // the instance is recycled.
                let deadline = to.arrived + spec.timeout;
                let expire = move || {
                    let mut hold = hold;
                    hold.recycle();
                };
                let response = resp.map(move |b| {
                    crate::deadline::Timed::new(b, deadline.into(), expire, (in_flight, conn)).boxed()
                });
                Answer { response, cold: to.cold, anatomy, instance, deadline }
            }
        }
    }

    /// Counts a call's answer in its function's metrics.
    fn count(&self, served: &Served, code: StatusCode) {
        if code == StatusCode::OK {
            served.ok.inc();
        } else {
            let labels = Outcome { function: served.spec.name.clone(), code: code.as_u16().to_string() };
            self.pools.metrics().calls.get_or_create(&labels).inc();
        }
    }

    /// An error answer of the agent's, counted with its reason.
    fn fail(&self, served: &Served, reason: &str, code: StatusCode, message: String) -> Answer {
        let errors = &self.pools.metrics().errors;
        errors.get_or_create(&ErrorKind { function: served.spec.name.clone(), reason: reason.into() }).inc();
        self.count(served, code);
        Answer {
            response: error(code, message),
            cold: false,
            anatomy: Vec::new(),
            instance: None,
            deadline: Instant::now(),
        }
    }

    /// The gRPC Invoke: `call` to an HTTP function as it is, to an event function as POST
    /// /event-invoke; none when the node does not know `function`.
    pub async fn invoke(&self, function: &str, call: Invocation, request_id: &str) -> Option<Answer> {
        let pool = self.pools.get(function)?;
        let mut req = Request::new(Full::new(call.payload).map_err(|never| match never {}).boxed());
        if let Some(t) = call.trigger {
            req.extensions_mut().insert(TriggerSource(t));
        }
        *req.method_mut() = call.method;
        *req.headers_mut() = call.headers;
        fnrt_hop::strip(req.headers_mut());
        if !req.headers().contains_key(CONTENT_TYPE) {
            req.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Some(self.call(&pool, req, call.target, request_id).await)
    }
}

/// A call made through the gRPC Invoke.
pub struct Invocation {
    /// Its method (an event function always gets POST).
    pub method: Method,
    /// The path and query an HTTP function gets.
    pub target: Uri,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body (an event function's event).
    pub payload: Bytes,
    /// What triggered it (X-Scf-Trigger-Src).
    pub trigger: Option<HeaderValue>,
}

/// The instance a call goes to.
struct To<'a> {
    id: &'a Arc<str>,
    address: std::net::SocketAddr,
    /// Its network namespace, when it has one of its own.
    netns: Option<&'a std::path::Path>,
    /// Its address as a Host header.
    host: &'a HeaderValue,
    /// Whether it was started for this call.
    cold: bool,
    /// When the call arrived (its duration counts from there, queue wait included).
    arrived: Instant,
    /// A cold call's instance's start phases, and when the call got the instance.
    phases: Option<(crate::instance::phases::StartPhases, Instant)>,
}

/// A cold call's anatomy: queue, the start's phases, answer; written into the answer's
/// `Server-Timing` header and logged. Empty for a warm call.
fn cold_anatomy<B>(
    to: &To<'_>,
    resp: &mut Response<B>,
    function: &str,
) -> Vec<(&'static str, std::time::Duration)> {
    let Some((phases, leased)) = &to.phases else { return Vec::new() };
    let queue = leased.duration_since(to.arrived).saturating_sub(phases.total());
    let answer = leased.elapsed();
    let timing = crate::instance::phases::server_timing(phases, queue, answer);
    tracing::info!(function, instance = %to.id, timing = %timing, "cold call");
    if let Ok(v) = HeaderValue::from_str(&timing) {
        resp.headers_mut().append("server-timing", v);
    }
    std::iter::once(("queue", queue))
        .chain(phases.0.iter().copied())
        .chain(std::iter::once(("answer", answer)))
        .collect()
}

/// What triggered an Invoke call (X-Scf-Trigger-Src), carried to `call` with the request.
#[derive(Clone)]
struct TriggerSource(HeaderValue);

/// The function named in `/function/<name>/<rest>?<query>` and the target to forward,
/// `/<rest>?<query>` (None: not a function path).
fn function_target(uri: &Uri) -> Option<(String, Result<Uri, hyper::http::uri::InvalidUri>)> {
    let pq = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    let rest = pq.strip_prefix("/function/")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (function, tail) = rest.split_at(end);
    let target = if tail.starts_with('/') { Uri::try_from(tail) } else { Uri::try_from(format!("/{tail}")) };
    Some((function.to_string(), target))
}

/// The SCF common headers (the request id and the spec's own); what the caller sent
/// under X-Scf-* is replaced.
fn scf_headers(
    h: &mut HeaderMap,
    common: &[(HeaderName, HeaderValue)],
    request_id: &str,
    host: &HeaderValue,
) {
    if h.keys().any(|k| k.as_str().starts_with("x-scf-")) {
        let caller_scf: Vec<HeaderName> =
            h.keys().filter(|k| k.as_str().starts_with("x-scf-")).cloned().collect();
        for k in caller_scf {
            h.remove(k);
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID, v);
    }
    for (k, v) in common {
        h.insert(k.clone(), v.clone());
    }
    h.insert(HOST, host.clone());
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
#[allow(clippy::unwrap_used)]
mod fuzz {
    use super::*;

    /// Any path and any caller headers: the target stays an origin-form path on the
    /// instance (never another host), the function name holds no separator, and after the
    /// SCF headers are set no X-Scf-* header of the caller's is left.
    #[test]
    fn fuzz_paths_and_headers() {
        let common = [(HeaderName::from_static("x-scf-name"), HeaderValue::from_static("f"))];
        let host = HeaderValue::from_static("10.0.0.2:9000");
        fnrt_common::fuzz::run("dataplane-headers", |u| {
            let tail: String = u.arbitrary()?;
            if let Ok(uri) = Uri::try_from(format!("/function/{tail}")) {
                if let Some((function, Ok(target))) = function_target(&uri) {
                    assert!(!function.contains(['/', '?']), "{function:?}");
                    assert!(target.scheme().is_none() && target.authority().is_none(), "{uri} -> {target}");
                    assert!(target.path().starts_with('/'), "{uri} -> {target}");
                }
            }
            let mut h = HeaderMap::new();
            for _ in 0..u.int_in_range(0..=8)? {
                let name: String = u.arbitrary()?;
                let value: String = u.arbitrary()?;
                let scf = format!("x-scf-{}", name.to_ascii_lowercase());
                let name = if u.arbitrary()? { scf } else { name };
                if let (Ok(k), Ok(v)) =
                    (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value))
                {
                    h.append(k, v);
                }
            }
            scf_headers(&mut h, &common, "req-1", &host);
            for (k, v) in &h {
                if k.as_str().starts_with("x-scf-") {
                    assert!(k == "x-scf-name" && v == "f" || k == REQUEST_ID && v == "req-1", "{k}: {v:?}");
                }
            }
            assert_eq!(h.get(HOST), Some(&host));
            Ok(())
        });
    }
}
