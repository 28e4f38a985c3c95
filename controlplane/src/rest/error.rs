//! Core errors as Scaleway's JSON error bodies: one exhaustive mapping, with the standard
//! `type`s and fields the SDKs turn into typed errors (scaleway-sdk-go `scw/errors.go`) and
//! the status codes Scaleway answers them with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

/// A core error on its way out of the REST API.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.0.to_string();
        let (status, body) = match self.0 {
            Error::NotFound { resource, id } => (
                StatusCode::NOT_FOUND,
                json!({ "type": "not_found", "message": message, "resource": resource, "resource_id": id }),
            ),
            Error::Invalid(details) => (
                StatusCode::BAD_REQUEST,
                json!({
                    "type": "invalid_arguments",
                    "message": message,
                    "details": details.iter().map(|(a, m)| json!({
                        "argument_name": a, "reason": "constraint", "help_message": m,
                    })).collect::<Vec<_>>(),
                }),
            ),
            Error::AlreadyExists { resource, id, .. } => (
                StatusCode::CONFLICT,
                json!({ "type": "already_exists", "message": message, "resource": resource, "resource_id": id, "help_message": message }),
            ),
            Error::TransientState { resource, id, state } => (
                StatusCode::CONFLICT,
                json!({ "type": "transient_state", "message": message, "resource": resource, "resource_id": id, "current_state": state }),
            ),
            Error::Precondition(_) => (
                StatusCode::PRECONDITION_FAILED,
                json!({ "type": "precondition_failed", "message": message, "precondition": "resource_not_usable", "help_message": message }),
            ),
            Error::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "type": "unavailable", "message": message, "help_message": "try again in a few seconds" }),
            ),
            Error::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                json!({ "type": "denied_authentication", "message": message, "method": "api_key", "reason": "invalid_argument" }),
            ),
            Error::Store(_) | Error::Internal(_) => {
                tracing::error!(error = %message, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({ "type": "internal", "message": message }))
            }
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Any error answer that is not JSON yet (axum's rejections of a path, query or body
/// answer plain text) in Scaleway's JSON error shape, its text as the message.
pub async fn json_shape(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 4096).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let body = match status {
        StatusCode::NOT_FOUND => json!({ "type": "not_found", "message": text, "resource": "path" }),
        StatusCode::UNAUTHORIZED => {
            json!({ "type": "denied_authentication", "message": text, "method": "api_key", "reason": "invalid_argument" })
        }
        s if s.is_server_error() => json!({ "type": "internal", "message": text }),
        _ => json!({
            "type": "invalid_arguments",
            "message": text,
            "details": [{ "argument_name": "request", "reason": "constraint", "help_message": text }],
        }),
    };
    (status, axum::Json(body)).into_response()
}
