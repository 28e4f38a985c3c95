//! The gateway: the endpoint function clients call. A function is reached at
//! `http://<namespace>-<function>.<domain>/...` (by the Host header) or, for local use,
//! `http://<gateway>/<namespace>/<function>/...`, or at a custom domain's host name. Private functions need a valid token of
//! the function or its namespace in `X-Auth-Token`. Calls go to an agent's data plane,
//! which adds the SCF headers and runs the pool.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State as AxState};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use fnrt_common::signature::{self, Key};
use hyper_rustls::{HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use rustls::pki_types::ServerName;
use serde_json::json;

use crate::model::FunctionStatus;
use crate::route_index::Routed;
use crate::{tokens, Ctx};

struct Gateway {
    ctx: Arc<Ctx>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    key: Option<Key>,
    /// The room left for kept bodies, in KiB (see [`Payload`]).
    kept: Arc<tokio::sync::Semaphore>,
}

/// The name a data plane's certificate must carry: its node's.
struct NodeNames(Arc<crate::scheduler::Scheduler>);

impl ResolveServerName for NodeNames {
    fn resolve(&self, uri: &Uri) -> Result<ServerName<'static>, Box<dyn std::error::Error + Sync + Send>> {
        let address = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let node =
            self.0.node_at(address).ok_or_else(|| format!("no agent has its data plane at {address}"))?;
        Ok(ServerName::try_from(node)?)
    }
}

/// The gateway's router. Data planes that serve TLS are called over https with `tls` (the
/// cluster's: the control plane's certificate presented, theirs checked to name the node
/// that registered them; agents register such data planes only with a control plane
/// that has the cluster TLS).
pub fn router(ctx: Arc<Ctx>, tls: rustls::ClientConfig) -> Router {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .with_server_name_resolver(NodeNames(ctx.scheduler.clone()))
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let key = Some(ctx.cfg.dataplane_key.expose()).filter(|k| !k.is_empty()).map(Key::new);
    let gw =
        Arc::new(Gateway { ctx, client, key, kept: Arc::new(tokio::sync::Semaphore::new(KEPT_BODIES_KIB)) });
    Router::new()
        .fallback(call)
        .layer(axum::middleware::from_fn_with_state(gw.clone(), measure))
        .with_state(gw)
}

/// Counts and times every call (until its answer's headers) by the function it is for,
/// `<namespace>/<function>` as the control plane knows it: a call that names no function
/// is `unknown`, so random hosts and paths add no series.
async fn measure(AxState(gw): AxState<Arc<Gateway>>, req: Request, next: axum::middleware::Next) -> Response {
    let function = target(&gw.ctx, &req).map_or_else(
        || crate::metrics::UNKNOWN.to_string(),
        |(f, _)| format!("{}/{}", f.namespace_name, f.name),
    );
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    gw.ctx.scheduler.metrics.gateway_call(&function, resp.status(), started.elapsed());
    resp
}

fn answer(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The function a request is for, and the path to forward (`/rest?query`).
fn target(ctx: &Ctx, req: &Request) -> Option<(Arc<Routed>, String)> {
    let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or_default();
    let host = host.split(':').next().unwrap_or_default();
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    ctx.state.route_target(host, pq, &ctx.cfg.domain)
}

/// Why a call to `f` cannot go on (it is not deployed, or takes events only), as the
/// answer; none when it can.
fn not_callable(f: &crate::route_index::Routed) -> Option<Response> {
    if f.status == FunctionStatus::Deleting {
        return Some(answer(StatusCode::NOT_FOUND, format!("function {} is being deleted", f.name)));
    }
    if !f.deployed {
        let why = match f.status {
            FunctionStatus::Error => {
                format!("its deploy failed: {}", f.error_message.clone().unwrap_or_default())
            }
            FunctionStatus::Pending => "its deploy is under way".into(),
            _ => "deploy it first".into(),
        };
        return Some(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("function {} is not deployed: {why}", f.name),
        ));
    }
    if f.event {
        return Some(answer(
            StatusCode::BAD_REQUEST,
            format!(
                "function {} is an event function: it takes events from its crons and triggers, or POST \
                 .../functions/{}/invoke on the API, not HTTP calls",
                f.name, f.id
            ),
        ));
    }
    None
}

async fn call(AxState(gw): AxState<Arc<Gateway>>, req: Request) -> Response {
    let ctx = &gw.ctx;
    // Bodies past the synchronous limit: refused when announced, cut when streamed.
    let limit = ctx.cfg.max_body_bytes;
    if let Some(why) = fnrt_hop::over_body_limit(req.headers(), limit) {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, why);
    }
    let mut req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit as usize)));
    let Some((f, tail)) = target(ctx, &req) else {
        return answer(
            StatusCode::NOT_FOUND,
            format!(
                "no function at {}{}",
                req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or(""),
                req.uri()
            ),
        );
    };
    // The token is a secret: checked here, never forwarded to the function. Checked
    // first: a private function's state (a failed deploy's message) is for its callers.
    let token = req.headers_mut().remove("x-auth-token");
    if f.private {
        let ok = token
            .as_ref()
            .and_then(|t| t.to_str().ok())
            .is_some_and(|t| tokens::allows(&ctx.state, t, &f.id, &f.namespace_id));
        if !ok {
            return answer(
                StatusCode::FORBIDDEN,
                format!("function {} is private: send a valid, unexpired token of it or of its namespace in X-Auth-Token", f.name),
            );
        }
    }
    if let Some(refused) = not_callable(&f) {
        return refused;
    }
    fnrt_hop::strip(req.headers_mut());
    let (parts, body) = req.into_parts();
    match Payload::new(&parts.headers, body, &gw.kept).await {
        Ok(payload) => forward(&gw, &f, &parts, &tail, payload).await,
        Err(refused) => refused,
    }
}

/// How often a held call is tried again.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Sends a call to an agent that runs `f`. While none can take it (its agent restarts and
/// refuses connections, or no agent running it is connected), holds it for
/// `gateway_hold_ms`, trying again every [`RETRY_EVERY`]: a call is tried again only when
/// no agent can have seen it (no route, or the connection was refused).
async fn forward(gw: &Gateway, f: &Routed, parts: &Parts, tail: &str, mut payload: Payload) -> Response {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(gw.ctx.cfg.gateway_hold_ms);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let again = |payload: &Payload| payload.again() && std::time::Instant::now() + RETRY_EVERY < until;
        let Some(route) = gw.ctx.scheduler.route(&f.agent_name) else {
            if again(&payload) {
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            }
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "function {} runs on no connected agent (the call waited {} ms for one)",
                    f.name, gw.ctx.cfg.gateway_hold_ms
                ),
            );
        };
        let req = match request_to(gw, parts, tail, &route, payload.take()) {
            Ok(req) => req,
            Err(why) => return answer(StatusCode::BAD_REQUEST, why),
        };
        match gw.client.request(req).await {
            Ok(resp) => {
                if tries > 1 {
                    tracing::debug!(function = %f.name, tries, "a held call was taken");
                }
                // The route counts the call as in flight until the answer's body is done.
                let (mut parts, body) = resp.into_parts();
                fnrt_hop::strip(&mut parts.headers);
                let body = Body::new(GuardedBody { inner: body, _route: route });
                return Response::from_parts(parts, body);
            }
            Err(e) if unseen(&e, &parts.method) && again(&payload) => {
                drop(route);
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => {
                return answer(
                    StatusCode::BAD_GATEWAY,
                    format!("agent {} did not answer: {e}", route.dataplane),
                )
            }
        }
    }
}

/// Whether a call that failed with `e` may be sent again: its connection was refused (no
/// agent saw it), or, for an idempotent method (RFC 9110 §9.2.2), the connection closed
/// before any answer: a draining agent closes its idle connections, and a call the gateway
/// sent on one at that instant was never read. (A killed agent may have passed such a call
/// on; an idempotent method allows it to be sent twice, others are never sent again.)
fn unseen(e: &hyper_util::client::legacy::Error, method: &axum::http::Method) -> bool {
    if e.is_connect() {
        return true;
    }
    let closed = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(|h| h.is_incomplete_message() || h.is_canceled());
    closed && method.is_idempotent()
}

/// The request for `route`'s data plane: `parts` with the data plane's URI, host and
/// signature.
fn request_to(
    gw: &Gateway,
    parts: &Parts,
    tail: &str,
    route: &crate::scheduler::Route,
    body: Body,
) -> Result<Request, String> {
    let scheme = if route.tls { "https" } else { "http" };
    let uri: Uri = format!("{scheme}://{}/function/{}{}", route.dataplane, route.name, tail)
        .parse()
        .map_err(|e| format!("the path cannot be forwarded: {e}"))?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    if let Some(key) = &gw.key {
        sign(key, &mut req);
    }
    if let Ok(v) = HeaderValue::from_str(&route.dataplane) {
        req.headers_mut().insert("host", v);
    }
    Ok(req)
}

/// The most of a request body kept to send the call again while it is held.
const KEPT_BODY_MAX: u64 = 1 << 20;

/// What all the calls' kept bodies may take together, in KiB (64 MiB): past it a body is
/// streamed, so many slow callers cannot make the gateway hold their bodies in memory.
const KEPT_BODIES_KIB: usize = 64 * 1024;

/// A call's body: kept whole when small (it can be sent again), else streamed once.
enum Payload {
    /// The body, and its share of [`KEPT_BODIES_KIB`] (given back when the call ends).
    Kept {
        body: bytes::Bytes,
        _share: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    Streamed(Option<Body>),
}

impl Payload {
    /// Keeps a body announced up to [`KEPT_BODY_MAX`] (or none) while `kept` has room for
    /// it; streams a larger or chunked one.
    async fn new(
        headers: &axum::http::HeaderMap,
        body: Body,
        kept: &Arc<tokio::sync::Semaphore>,
    ) -> Result<Payload, Response> {
        let chunked = headers.contains_key(axum::http::header::TRANSFER_ENCODING);
        let length = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if chunked || length.is_some_and(|n| n > KEPT_BODY_MAX) {
            return Ok(Payload::Streamed(Some(body)));
        }
        let kib = length.unwrap_or(0).div_ceil(1024) as u32;
        let share = match kib {
            0 => None,
            _ => match kept.clone().try_acquire_many_owned(kib) {
                Ok(p) => Some(p),
                Err(_) => return Ok(Payload::Streamed(Some(body))),
            },
        };
        match http_body_util::BodyExt::collect(body).await {
            Ok(whole) => Ok(Payload::Kept { body: whole.to_bytes(), _share: share }),
            Err(e) => {
                Err(answer(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}")))
            }
        }
    }

    /// Whether the call can be sent (again).
    fn again(&self) -> bool {
        matches!(self, Payload::Kept { .. } | Payload::Streamed(Some(_)))
    }

    /// The body to send; a streamed one only once (then empty).
    fn take(&mut self) -> Body {
        match self {
            Payload::Kept { body, .. } => Body::from(body.clone()),
            Payload::Streamed(b) => b.take().unwrap_or_else(Body::empty),
        }
    }
}

/// Signs a call for the data plane; a call without a request id gets one, since the
/// signature covers it.
fn sign(key: &Key, req: &mut Request) {
    let headers = req.headers_mut();
    headers.remove(signature::TIME);
    headers.remove(signature::SIGNATURE);
    if !headers.contains_key(REQUEST_ID) {
        let id = format!("{:032x}", rand::random::<u128>());
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert(REQUEST_ID, v);
        }
    }
    let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let (time, sig) = key.sign(req.method().as_str(), &path, &id);
    for (name, value) in [(signature::TIME, time), (signature::SIGNATURE, sig)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            req.headers_mut().insert(name, v);
        }
    }
}

/// The header of a call's request id.
const REQUEST_ID: &str = "x-scf-request-id";

/// A response body that holds its route until it ends.
struct GuardedBody {
    inner: hyper::body::Incoming,
    _route: crate::scheduler::Route,
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
