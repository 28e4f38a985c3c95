//! `POST .../functions/{id}/invoke` (extension): calls a deployed function once with the
//! body as its event (an event function gets `POST /event-invoke`, an HTTP function
//! `POST /`).
//!
//! `invocation_type` is SCF's: `request_response` (the default) waits and answers what
//! the function answered (status, body as text, request id, time, cold-start phases);
//! `event` queues the event on the control plane's NATS server and answers 202 with the
//! request id at once, the call made later, at least once (see `scheduler::queue`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::list::ListQuery;
use super::{views, ApiError, Id, Region};
use crate::error::Error;
use crate::scheduler::queue::QueueError;
use crate::{functions, Ctx};

/// The handler.
pub async fn invoke(
    AxState(ctx): AxState<Arc<Ctx>>,
    _r: Region,
    Id(id): Id,
    RawQuery(q): RawQuery,
    b: Bytes,
) -> Result<Response, ApiError> {
    let q = ListQuery::parse(q.as_deref(), &["created_at_asc"])?;
    let queued = match q.given("invocation_type") {
        None | Some("request_response") => false,
        Some("event") => true,
        Some(other) => {
            let why = format!(
                "{other:?} is not request_response (wait for the answer) or event (queue it, answer 202)"
            );
            return Err(Error::invalid("invocation_type", why).into());
        }
    };
    let f = functions::get_live(&ctx.state, &id)?;
    if f.deployed.is_none() {
        let why = format!("function {id} is not deployed (status {}): deploy it first", views::status(&f));
        return Err(Error::Precondition(why).into());
    }
    if queued {
        let request_id = ctx.scheduler.enqueue(&id, b.to_vec()).await.map_err(|e| match e {
            QueueError::Off => Error::Precondition(e.to_string()),
            QueueError::TooLarge(_) => Error::invalid("body", e.to_string()),
            QueueError::Unavailable { .. } => Error::Unavailable(e.to_string()),
        })?;
        return Ok((StatusCode::ACCEPTED, Json(json!({ "request_id": request_id, "status": "queued" })))
            .into_response());
    }
    let r = ctx
        .scheduler
        .call(&id, b.to_vec(), "")
        .await
        .map_err(|e| Error::Precondition(format!("function {id} could not be called: {e}")))?;
    Ok(Json(json!({
        "request_id": r.request_id,
        "status": r.status,
        "body": String::from_utf8_lossy(&r.body),
        "duration_ms": r.duration_ms,
        "cold_start": r.cold_start,
        "cold_start_phases": r.cold_start_phases.iter().map(|p| json!({ "name": p.name, "ms": p.ms })).collect::<Vec<_>>(),
    }))
    .into_response())
}
