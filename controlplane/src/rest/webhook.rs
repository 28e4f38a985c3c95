//! `POST /fnrt/v1/registry-events`: the registry's notifications (push-then-deploy).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

use super::ApiError;
use crate::error::Error;
use crate::{webhook, Ctx};

/// The largest notification envelope read.
const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// Reads the events, records tag pushes and starts the deploys they call for.
pub async fn events(
    AxState(ctx): AxState<Arc<Ctx>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let want = &ctx.cfg.webhook_token;
    let given =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if want.is_empty() {
        return Err(Error::Precondition(
            "push-then-deploy is off: set webhook_token on the control plane".into(),
        )
        .into());
    }
    if !fnrt_common::bearer::Expected::token(want.expose()).matches(given.map(str::as_bytes)) {
        return Err(Error::Unauthenticated(
            "registry notifications need Authorization: Bearer <webhook_token>".into(),
        )
        .into());
    }
    // Read only once the token is checked, and at most 1 MiB (an envelope lists events).
    let body = axum::body::to_bytes(body, MAX_ENVELOPE_BYTES).await.map_err(|_| {
        Error::invalid("body", format!("over {MAX_ENVELOPE_BYTES} bytes: not a notification envelope"))
    })?;
    let envelope: webhook::Envelope = super::json_object(&body, "a registry notification envelope")?;
    let mut deployed = Vec::new();
    for push in webhook::pushes(envelope) {
        for (id, busy) in webhook::record(&ctx.state, &push).await? {
            tracing::info!(function = %id, image = %push.reference, digest = %push.digest, "tag pushed: deploying");
            if !busy {
                ctx.scheduler.deploy(&id);
            }
            deployed.push(id);
        }
    }
    Ok(Json(json!({ "deploying": deployed })))
}
