//! `/metrics` on `metrics_listen`: the metrics (`metrics`) in Prometheus text format, with
//! the agents counted by state when scraped. A port of its own, as the agent's: no admin
//! key to hand a scraper, nothing of it on the API's or the gateway's port.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::scheduler::Scheduler;

/// The metrics listener's router: `GET /metrics`, 404 elsewhere.
pub fn router(scheduler: Arc<Scheduler>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "this listener serves /metrics\n") })
        .with_state(scheduler)
}

async fn metrics(axum::extract::State(scheduler): axum::extract::State<Arc<Scheduler>>) -> Response {
    let all = scheduler.agents().len();
    let connected = scheduler.live().len();
    scheduler.metrics.set_agents(connected, all.saturating_sub(connected));
    let mut resp = scheduler.metrics.encode().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}
