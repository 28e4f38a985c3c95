//! The management API: Scaleway's Serverless Functions v1beta1 REST surface under
//! `/functions/v1beta1/regions/{region}/`, for the official SDKs. Handlers only parse,
//! call the core (`namespaces`, `functions`, `tokens`, `crons`) and shape the answer.

mod cluster;
pub mod code;
mod error;
mod list;
mod routes;
pub mod views;
mod webhook;

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use error::ApiError;
pub use routes::router;

use crate::Ctx;

/// Lets a request through only with the admin key in `X-Auth-Token`.
async fn admin_only(AxState(ctx): AxState<Arc<Ctx>>, req: Request, next: Next) -> Response {
    let given = req.headers().get("x-auth-token").map(|v| v.as_bytes()).unwrap_or_default();
    if given.is_empty() {
        return ApiError(crate::error::Error::Unauthenticated(
            "no X-Auth-Token header: send the control plane's admin secret key".into(),
        ))
        .into_response();
    }
    // Digests of equal length are compared, so the comparison says nothing of the key.
    if !fnrt_common::bearer::Expected::token(&ctx.cfg.admin_token).matches(Some(given)) {
        return ApiError(crate::error::Error::Unauthenticated(
            "the X-Auth-Token is not the admin secret key".into(),
        ))
        .into_response();
    }
    next.run(req).await
}
