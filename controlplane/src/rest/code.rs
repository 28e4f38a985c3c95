//! Code of code functions: `upload-url` and `download-url` (admin) give short-lived URLs
//! signed with the control plane's key; `PUT`/`GET /fnrt/v1/code/{id}` at those URLs take
//! or give the zip. A zip is checked before it is kept; a bad one is refused and nothing
//! changes. An upload URL carries the length it was asked for (signed with it): the PUT
//! must send exactly that many bytes, is authenticated before any byte of its body is
//! read, and the URL serves once.

use std::sync::Arc;

use std::collections::HashMap;
use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, State as AxState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;

use super::list::ListQuery;
use super::ApiError;
use crate::build::code::{self, Entry, MAX_ZIP_BYTES};
use crate::error::Error;
use crate::{functions, Ctx};

const URL_LIFETIME_S: i64 = 900;

/// Signatures of upload URLs already used, with when they expire (then they are
/// refused as expired, and forgotten here).
#[derive(Debug, Default)]
pub struct UsedUrls(Mutex<HashMap<String, i64>>);

impl UsedUrls {
    /// Marks an upload URL's signature used; false when it was already.
    fn first_use(&self, sig: &str, expires: i64) -> bool {
        let now = chrono::Utc::now().timestamp();
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, e| *e >= now);
        used.insert(sig.to_string(), expires).is_none()
    }
}

fn signature(ctx: &Ctx, method: &str, id: &str, expires: i64, length: Option<u64>, nonce: &str) -> String {
    // HMAC keys of any length are accepted.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&ctx.cfg.url_key).expect("any key length");
    let length = length.map(|n| n.to_string()).unwrap_or_default();
    mac.update(format!("{method}\n{id}\n{expires}\n{length}\n{nonce}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn signed_url(ctx: &Ctx, method: &str, id: &str, length: Option<u64>) -> String {
    let expires = chrono::Utc::now().timestamp() + URL_LIFETIME_S;
    // A nonce of its own: two URLs asked for in the same second for the same length are
    // two URLs, each usable once.
    let nonce = hex::encode(rand::random::<[u8; 12]>());
    let sig = signature(ctx, method, id, expires, length, &nonce);
    let length = length.map(|n| format!("&length={n}")).unwrap_or_default();
    format!("{}/fnrt/v1/code/{id}?expires={expires}{length}&nonce={nonce}&sig={sig}", ctx.cfg.public_url)
}

/// The zip of function `id` on disk.
pub fn zip_path(ctx: &Ctx, id: &str) -> std::path::PathBuf {
    crate::build::zip_path(&ctx.cfg.state_dir, id)
}

/// The entry file a code function's zip must hold; an error when it is not a code function.
pub fn entry_of(ctx: &Ctx, f: &crate::model::Function) -> Result<Entry, Error> {
    if !f.registry_image.is_empty() || ctx.cfg.runtime_image(&f.runtime).is_none() {
        return Err(Error::Precondition(format!(
            "function {} is not a code function: give it runtime python311 or custom and no registry_image",
            f.id
        )));
    }
    Entry::of(&f.runtime, &f.handler).map_err(|m| Error::invalid("handler", m.0))
}

/// `GET .../functions/{id}/upload-url?content_length=N`.
pub async fn upload_url(
    AxState(ctx): AxState<Arc<Ctx>>,
    _r: super::Region,
    super::Id(id): super::Id,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    // The request's own errors first, then the function's state.
    let q = ListQuery::parse(q.as_deref(), &["created_at_asc"])?;
    let mut length = None;
    if let Some(n) = q.given("content_length") {
        let n: u64 =
            n.parse().map_err(|_| Error::invalid("content_length", format!("{n:?} is not a number")))?;
        if n > MAX_ZIP_BYTES {
            return Err(Error::invalid(
                "content_length",
                format!("{n} bytes: a zip may have at most {MAX_ZIP_BYTES}"),
            )
            .into());
        }
        length = Some(n);
    }
    entry_of(&ctx, &functions::get_live(&ctx.state, &id)?)?;
    let url = signed_url(&ctx, "PUT", &id, length);
    Ok(Json(json!({ "url": url, "headers": { "Content-Type": ["application/octet-stream"] } })))
}

/// `GET .../functions/{id}/download-url`.
pub async fn download_url(
    AxState(ctx): AxState<Arc<Ctx>>,
    _r: super::Region,
    super::Id(id): super::Id,
) -> Result<Json<Value>, ApiError> {
    let f = functions::get(&ctx.state, &id)?;
    if f.code_digest.is_none() && !zip_path(&ctx, &id).exists() {
        return Err(Error::NotFound { resource: "code", id }.into());
    }
    Ok(Json(json!({ "url": signed_url(&ctx, "GET", &id, None), "headers": {} })))
}

/// The signature part of a code URL.
#[derive(Deserialize)]
pub struct Signed {
    #[serde(default)]
    expires: i64,
    #[serde(default)]
    length: Option<u64>,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    sig: String,
}

fn verify(ctx: &Ctx, method: &str, id: &str, s: &Signed) -> Result<(), Error> {
    if s.expires < chrono::Utc::now().timestamp() {
        return Err(Error::Unauthenticated("this code URL has expired: ask for a new one".into()));
    }
    let want = signature(ctx, method, id, s.expires, s.length, &s.nonce);
    use sha2::Digest;
    if Sha256::digest(want.as_bytes()) != Sha256::digest(s.sig.as_bytes()) {
        return Err(Error::Unauthenticated("this code URL is not signed by this control plane".into()));
    }
    Ok(())
}

/// `PUT /fnrt/v1/code/{id}`: checks the zip and keeps it.
pub async fn put_code(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    Query(s): Query<Signed>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    // Nothing of the body is read before the URL is checked.
    verify(&ctx, "PUT", &id, &s)?;
    if !ctx.used_uploads.first_use(&s.sig, s.expires) {
        return Err(
            Error::Unauthenticated("this upload URL was used already: ask for a new one".into()).into()
        );
    }
    let f = functions::get_live(&ctx.state, &id)?;
    let entry = entry_of(&ctx, &f)?;
    let limit = s.length.unwrap_or(MAX_ZIP_BYTES).min(MAX_ZIP_BYTES);
    // Streamed to a file of its own beside the current zip, never held whole: a refused or
    // broken upload removes it and leaves the last good zip; two uploads at once do not mix.
    let path = zip_path(&ctx, &id);
    let internal = |e: std::io::Error| Error::Internal(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(internal)?;
    }
    let staged = fnrt_common::durable::Staged::new(&path, 0o600).map_err(internal)?;
    let size = receive(body, &staged, limit).await?;
    if s.length.is_some_and(|n| n != size) {
        let why = format!("the body is {size} bytes; this upload URL was made for {limit}");
        return Err(Error::invalid("code", why).into());
    }
    tokio::task::spawn_blocking(move || -> Result<(), Error> {
        code::check(&mut staged.file(), &entry).map_err(|m| Error::invalid("code", m.0))?;
        staged.commit().map_err(|e| Error::Internal(format!("keeping the zip: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    if ctx.cfg.store == "etcd" {
        let digest = crate::build::shared::publish(&ctx.cfg, &ctx.scheduler.registry, &id, &path).await?;
        ctx.state
            .write(|d| {
                let Some(mut f) = d.functions.get(&id).cloned() else { return Ok((vec![], ())) };
                f.code_digest = Some(digest.clone());
                Ok((vec![crate::state::Change::Function(f)], ()))
            })
            .await?;
    }
    tracing::info!(function = %id, bytes = size, "code uploaded");
    Ok(Json(json!({ "function_id": id, "size": size })))
}

/// Writes `body` into `staged`, refusing it past `limit` bytes; its size.
async fn receive(body: Body, staged: &fnrt_common::durable::Staged, limit: u64) -> Result<u64, Error> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut out = tokio::fs::File::from_std(
        staged.file().try_clone().map_err(|e| Error::Internal(format!("the upload's file: {e}")))?,
    );
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::invalid("code", format!("the upload broke off: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            let why = if limit < MAX_ZIP_BYTES {
                "the length this upload URL was made for"
            } else {
                "the most a zip may have"
            };
            return Err(Error::invalid("code", format!("the body is over {limit} bytes, {why}")));
        }
        out.write_all(&chunk).await.map_err(|e| Error::Internal(format!("writing the upload: {e}")))?;
    }
    out.flush().await.map_err(|e| Error::Internal(format!("writing the upload: {e}")))?;
    Ok(size)
}

/// `GET /fnrt/v1/code/{id}`: the current zip.
pub async fn get_code(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    Query(s): Query<Signed>,
) -> Response {
    if let Err(e) = verify(&ctx, "GET", &id, &s) {
        return ApiError(e).into_response();
    }
    let shared = ctx.state.read(|d| d.functions.get(&id).and_then(|f| f.code_digest.clone()));
    if let Some(digest) = shared {
        let path = zip_path(&ctx, &id);
        if let Err(e) =
            crate::build::shared::fetch(&ctx.cfg, &ctx.scheduler.registry, &id, &digest, &path).await
        {
            return ApiError(e).into_response();
        }
    }
    let Ok(file) = tokio::fs::File::open(zip_path(&ctx, &id)).await else {
        return ApiError(Error::NotFound { resource: "code", id }).into_response();
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    // Sent as it is read, 64 KiB at a time.
    let chunks = futures_util::stream::try_unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 << 10];
        let n = f.read(&mut buf).await?;
        buf.truncate(n);
        Ok::<_, std::io::Error>((n > 0).then(|| (axum::body::Bytes::from(buf), f)))
    });
    let headers = [("content-type", "application/zip".to_string()), ("content-length", len.to_string())];
    (StatusCode::OK, headers, Body::from_stream(chunks)).into_response()
}
