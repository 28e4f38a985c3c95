//! The control plane's metrics, in Prometheus text format at `/metrics` on a listener of
//! their own (`metrics_listen`; `scrape` serves them), with the agent's crate
//! (prometheus-client) and style, every name under `fnrt_controlplane_`.
//!
//! Every label value is bounded: the API's route is the route's template (axum's
//! `MatchedPath`, never the path asked for), its method one of the known ones or `other`;
//! the gateway's function is `<namespace>/<function>` of a function the control plane
//! knows, or `unknown`. A client sending random paths or methods adds no series.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The route label of an API request no route matched.
pub const UNMATCHED: &str = "unmatched";
/// The function label of a gateway call that names no known function.
pub const UNKNOWN: &str = "unknown";

/// Labels of an API request's answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiAnswer {
    /// The route's template, e.g. `/functions/v1beta1/regions/{region}/functions/{id}`.
    pub route: String,
    /// GET, POST, ... or `other`.
    pub method: String,
    /// The HTTP status answered.
    pub code: String,
}

/// Labels of an API request that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiFailure {
    /// The route's template.
    pub route: String,
    /// GET, POST, ... or `other`.
    pub method: String,
    /// `4xx` or `5xx`.
    pub class: String,
}

/// Labels of an API route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRoute {
    /// The route's template.
    pub route: String,
    /// GET, POST, ... or `other`.
    pub method: String,
}

/// Labels of an outcome (a deploy's, a cron run's).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// What came of it.
    pub outcome: String,
}

/// Labels of an agent count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentState {
    /// `connected` or `lost`.
    pub state: String,
}

/// Labels of a gateway call's answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayAnswer {
    /// `<namespace>/<function>`, or `unknown`.
    pub function: String,
    /// The HTTP status answered.
    pub code: String,
}

/// Labels of a gateway call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayFunction {
    /// `<namespace>/<function>`, or `unknown`.
    pub function: String,
}

/// A deploy's outcome: the function is `ready`.
pub const DEPLOY_READY: &str = "ready";
/// A deploy's outcome: the function is in `error`.
pub const DEPLOY_ERROR: &str = "error";
/// A cron run's outcome: the function answered below 500.
pub const CRON_OK: &str = "ok";
/// A cron run's outcome: the function answered 5xx.
pub const CRON_ANSWERED_5XX: &str = "answered_5xx";
/// A cron run's outcome: the function could not be called (no agent runs it, the call failed).
pub const CRON_CALL_FAILED: &str = "call_failed";

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    // 100 µs to ~1.6 min, as the agent's.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric of the control plane.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// API requests answered, by route, method and status.
    pub api_requests: Family<ApiAnswer, Counter>,
    /// API requests answered 4xx or 5xx, by route, method and class.
    pub api_errors: Family<ApiFailure, Counter>,
    /// Time from an API request's arrival to its answer's headers.
    pub api_duration: Histograms<ApiRoute>,
    /// Deploys finished, by outcome.
    pub deploys: Family<Outcome, Counter>,
    /// Time each reconcile pass of the scheduler took.
    pub reconcile: Histogram,
    /// Agents by state, set when scraped.
    pub agents: Family<AgentState, Gauge>,
    /// Gateway calls answered, by function and status.
    pub gateway_calls: Family<GatewayAnswer, Counter>,
    /// Time from a gateway call's arrival to its answer's headers.
    pub gateway_duration: Histograms<GatewayFunction>,
    /// Cron runs, by outcome.
    pub cron_runs: Family<Outcome, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fnrt_controlplane");
        let m = Metrics {
            api_requests: Family::default(),
            api_errors: Family::default(),
            api_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            deploys: Family::default(),
            reconcile: histogram(),
            agents: Family::default(),
            gateway_calls: Family::default(),
            gateway_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            cron_runs: Family::default(),
            registry: Registry::default(),
        };
        registry.register("api_requests", "API requests answered", m.api_requests.clone());
        registry.register("api_errors", "API requests answered 4xx or 5xx", m.api_errors.clone());
        registry.register(
            "api_request_duration_seconds",
            "Time from an API request's arrival to its answer's headers",
            m.api_duration.clone(),
        );
        registry.register("deploys", "Deploys finished, by outcome", m.deploys.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time each reconcile pass of the scheduler took",
            m.reconcile.clone(),
        );
        registry.register("agents", "Agents by state", m.agents.clone());
        registry.register("gateway_calls", "Gateway calls answered", m.gateway_calls.clone());
        registry.register(
            "gateway_call_duration_seconds",
            "Time from a gateway call's arrival to its answer's headers",
            m.gateway_duration.clone(),
        );
        registry.register("cron_runs", "Cron runs, by outcome", m.cron_runs.clone());
        Metrics { registry, ..m }
    }
}

/// The method label: one of HTTP's methods, or `other` (a client may send any token).
fn method_label(m: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN.iter().find(|k| *k == m).map_or("other", Method::as_str)
}

/// A label value as the text format wants it (the encoder writes values as given):
/// backslash, double quote and newline escaped.
fn escaped(value: &str) -> String {
    if !value.contains(['\\', '"', '\n']) {
        return value.to_string();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }

    /// Counts an API request to `route` (a template) with `method`, answered `status`
    /// after `took`.
    pub fn api_request(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        let (route, method) = (route.to_string(), method_label(method).to_string());
        let code = status.as_u16().to_string();
        self.api_requests
            .get_or_create(&ApiAnswer { route: route.clone(), method: method.clone(), code })
            .inc();
        let class = match status.as_u16() {
            400..=499 => Some("4xx"),
            500..=599 => Some("5xx"),
            _ => None,
        };
        if let Some(class) = class {
            let failure = ApiFailure { route: route.clone(), method: method.clone(), class: class.into() };
            self.api_errors.get_or_create(&failure).inc();
        }
        self.api_duration.get_or_create(&ApiRoute { route, method }).observe(took.as_secs_f64());
    }

    /// Counts a gateway call to `function` (`<namespace>/<function>` or [`UNKNOWN`])
    /// answered `status` after `took`.
    pub fn gateway_call(&self, function: &str, status: StatusCode, took: Duration) {
        let function = escaped(function);
        let code = status.as_u16().to_string();
        self.gateway_calls.get_or_create(&GatewayAnswer { function: function.clone(), code }).inc();
        self.gateway_duration.get_or_create(&GatewayFunction { function }).observe(took.as_secs_f64());
    }

    /// Counts a deploy that ended `outcome` ([`DEPLOY_READY`] or [`DEPLOY_ERROR`]).
    pub fn deploy(&self, outcome: &str) {
        self.deploys.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
    }

    /// Counts a cron run that ended `outcome` ([`CRON_OK`], ...).
    pub fn cron_run(&self, outcome: &str) {
        self.cron_runs.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
    }

    /// Sets the agent counts (both states, so that a zero shows as one).
    pub fn set_agents(&self, connected: usize, lost: usize) {
        for (state, n) in [("connected", connected), ("lost", lost)] {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.agents.get_or_create(&AgentState { state: state.to_string() }).set(n);
        }
    }
}

/// Middleware of the API's router: counts and times every request by its route's
/// template. Layered with `Router::layer` after the routes, it runs once a route has
/// matched, where `MatchedPath` is known; a request no route took is [`UNMATCHED`].
pub async fn track_api(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED, MatchedPath::as_str).to_string();
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    m.api_request(&route, &method, resp.status(), started.elapsed());
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::default();
        let ms = Duration::from_millis(3);
        m.api_request("/functions/{id}", &Method::GET, StatusCode::OK, ms);
        m.api_request("/functions/{id}", &Method::GET, StatusCode::NOT_FOUND, ms);
        m.deploy(DEPLOY_READY);
        m.reconcile.observe(0.002);
        m.set_agents(1, 0);
        m.gateway_call("ns/echo", StatusCode::OK, ms);
        m.cron_run(CRON_ANSWERED_5XX);
        let text = m.encode();
        for line in [
            "fnrt_controlplane_api_requests_total{route=\"/functions/{id}\",method=\"GET\",code=\"200\"} 1",
            "fnrt_controlplane_api_requests_total{route=\"/functions/{id}\",method=\"GET\",code=\"404\"} 1",
            "fnrt_controlplane_api_errors_total{route=\"/functions/{id}\",method=\"GET\",class=\"4xx\"} 1",
            "fnrt_controlplane_api_request_duration_seconds_count{route=\"/functions/{id}\",method=\"GET\"} 2",
            "fnrt_controlplane_deploys_total{outcome=\"ready\"} 1",
            "fnrt_controlplane_reconcile_duration_seconds_count 1",
            "fnrt_controlplane_agents{state=\"connected\"} 1",
            "fnrt_controlplane_agents{state=\"lost\"} 0",
            "fnrt_controlplane_gateway_calls_total{function=\"ns/echo\",code=\"200\"} 1",
            "fnrt_controlplane_gateway_call_duration_seconds_count{function=\"ns/echo\"} 1",
            "fnrt_controlplane_cron_runs_total{outcome=\"answered_5xx\"} 1",
            "# TYPE fnrt_controlplane_api_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        // A success is no error.
        assert!(!text.contains("class=\"2xx\""), "{text}");
    }

    #[test]
    fn a_hostile_label_value_cannot_forge_a_series() {
        let m = Metrics::default();
        m.gateway_call(
            "a\"} 1\nfnrt_controlplane_agents{state=\"connected\"} 99\\",
            StatusCode::OK,
            Duration::ZERO,
        );
        let text = m.encode();
        assert!(!text.lines().any(|l| l.starts_with("fnrt_controlplane_agents")), "{text}");
        assert!(
            text.contains(r#"function="a\"} 1\nfnrt_controlplane_agents{state=\"connected\"} 99\\""#),
            "{text}"
        );
    }

    /// A router shaped as the API's: routes nested under a template, a fallback, the
    /// metrics layered last.
    fn router(m: Arc<Metrics>) -> Router {
        let inner = Router::new().route("/functions/{id}", get(|| async { "f" }));
        Router::new()
            .nest("/regions/{region}", inner)
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(axum::middleware::from_fn_with_state(m, track_api))
    }

    async fn send(app: &Router, method: &str, path: &str) -> StatusCode {
        let req = axum::http::Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        app.clone().oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_api_is_counted_by_route_template_never_by_path_or_odd_method() {
        let m = Arc::new(Metrics::default());
        let app = router(m.clone());
        // The attacker's scan first: random paths and made-up methods.
        for i in 0..50 {
            assert_eq!(send(&app, "GET", &format!("/scan/{i}/{:x}", i * 7919)).await, StatusCode::NOT_FOUND);
            send(&app, &format!("BREW{i}"), "/regions/x/functions/y").await;
        }
        // Under a template, yet no route's.
        for i in 0..5 {
            assert_eq!(send(&app, "GET", &format!("/regions/r{i}/nothing/{i}")).await, StatusCode::NOT_FOUND);
        }
        for id in ["a", "b", "c"] {
            assert_eq!(send(&app, "GET", &format!("/regions/fr-par/functions/{id}")).await, StatusCode::OK);
        }
        let text = m.encode();
        let series: Vec<&str> =
            text.lines().filter(|l| l.starts_with("fnrt_controlplane_api_requests_total")).collect();
        assert!(series.len() <= 3, "{series:#?}");
        let route = "/regions/{region}/functions/{id}";
        let ok = format!(
            "fnrt_controlplane_api_requests_total{{route=\"{route}\",method=\"GET\",code=\"200\"}} 3"
        );
        assert!(series.contains(&ok.as_str()), "{series:#?}");
        assert!(
            series.iter().any(|l| l.contains("route=\"unmatched\",method=\"GET\",code=\"404\"} 55")),
            "{series:#?}"
        );
        assert!(series.iter().any(|l| l.contains("method=\"other\"") && l.ends_with(" 50")), "{series:#?}");
        assert!(!text.contains("fr-par") && !text.contains("BREW") && !text.contains("/scan/"), "{text}");
    }
}
