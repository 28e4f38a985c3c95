//! The management API: Scaleway's Serverless Functions v1beta1 REST surface under
//! `/functions/v1beta1/regions/{region}/`, for the official SDKs. Handlers only parse,
//! call the core (`namespaces`, `functions`, `tokens`, `crons`) and shape the answer.

mod cluster;
pub mod code;
mod error;
mod invoke;
mod list;
mod logs;
mod openapi;
mod routes;
#[cfg(test)]
mod tests;
pub mod views;
mod webhook;

use std::sync::Arc;

use axum::extract::{Request, State as AxState};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use error::ApiError;
pub use routes::router;

use crate::Ctx;

/// A JSON object read as `T`; `what` names it in errors. Anything else is refused, arrays
/// included, though serde would read an array as the fields in order.
pub(crate) fn json_object<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, crate::error::Error> {
    serde_json::from_slice::<crate::json::Object<T>>(bytes)
        .map(|o| o.0)
        .map_err(|e| crate::error::Error::invalid("body", format!("not {what}: {e}")))
}

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
    if !fnrt_common::bearer::Expected::token(ctx.cfg.admin_token.expose()).matches(Some(given)) {
        return ApiError(crate::error::Error::Unauthenticated(
            "the X-Auth-Token is not the admin secret key".into(),
        ))
        .into_response();
    }
    next.run(req).await
}

/// The `{region}` of a path, checked against the region this control plane serves.
pub struct Region;

impl axum::extract::FromRequestParts<Arc<Ctx>> for Region {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Arc<Ctx>,
    ) -> Result<Region, ApiError> {
        let region = path_param(parts, ctx, "region").await?;
        if region == ctx.cfg.region {
            Ok(Region)
        } else {
            Err(ApiError(crate::error::Error::invalid(
                "region",
                format!("{region:?} is not served here: this control plane serves {:?}", ctx.cfg.region),
            )))
        }
    }
}

/// The `{id}` of a path.
pub struct Id(pub String);

impl axum::extract::FromRequestParts<Arc<Ctx>> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &Arc<Ctx>,
    ) -> Result<Id, ApiError> {
        path_param(parts, ctx, "id").await.map(Id)
    }
}

async fn path_param(
    parts: &mut axum::http::request::Parts,
    ctx: &Arc<Ctx>,
    name: &str,
) -> Result<String, ApiError> {
    use axum::extract::{FromRequestParts, Path};
    let Path(params) = Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, ctx)
        .await
        .map_err(|e| ApiError(crate::error::Error::invalid(name, e.body_text())))?;
    params
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError(crate::error::Error::Internal(format!("route without {{{name}}}"))))
}
