//! containerd's content store: writing blobs with their expected digest, reading them back.

use std::collections::HashMap;

use bytes::Bytes;
use containerd_client::services::v1::{
    AbortRequest, InfoRequest, ReadContentRequest, WriteAction, WriteContentRequest,
};
use futures_util::{Stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::containerd::{call_err, Containerd, ContainerdError};
use fnrt_registry::RegistryError;

/// A failure while moving a blob into the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// containerd refused or failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The registry failed while sending.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The bytes received are not the ones the manifest named.
    #[error("blob {digest}: received {received} bytes with sha256:{actual}, expected {size} bytes; nothing of it was kept")]
    Mismatch {
        /// The expected digest.
        digest: String,
        /// The expected size.
        size: u64,
        /// How many bytes came.
        received: u64,
        /// The sha256 of what came.
        actual: String,
    },
}

/// Bytes per write message to containerd.
const MESSAGE_BYTES: usize = 1 << 20;

/// True when the content store already has `digest`.
pub async fn exists(cd: &Containerd, digest: &str) -> Result<bool, ContainerdError> {
    let req = cd.req(InfoRequest { digest: digest.to_string() });
    match cd.content().info(req).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(call_err(format!("content info {digest}"))(s)),
    }
}

/// Streams `body` into the content store as `digest` of `size` bytes, under `lease`.
///
/// The sha256 and the byte count are checked while streaming; on a mismatch the ingest is
/// aborted so that nothing of it stays.
pub async fn write(
    cd: &Containerd,
    lease: &str,
    digest: &str,
    size: u64,
    labels: HashMap<String, String>,
    body: impl Stream<Item = Result<Bytes, ContentError>> + Send + 'static,
) -> Result<(), ContentError> {
    let reference = format!("fnrt-{digest}");
    abort(cd, &reference).await?;
    let (tx, rx) = mpsc::channel::<WriteContentRequest>(8);
    let mut client = cd.content();
    let call = client.write(cd.leased(ReceiverStream::new(rx), lease));
    let expected = digest.to_string();
    let feed = async move {
        let mut body = std::pin::pin!(body);
        let mut hasher = Sha256::new();
        let mut offset: u64 = 0;
        // The registry's chunks are small; containerd handles one message per write, so
        // they are gathered into messages of about a MiB.
        let mut pending: Vec<u8> = Vec::with_capacity(MESSAGE_BYTES);
        let mut sent: u64 = 0;
        loop {
            let next = body.try_next().await?;
            if let Some(chunk) = &next {
                hasher.update(chunk);
                offset += chunk.len() as u64;
                if offset > size {
                    break;
                }
                pending.extend_from_slice(chunk);
            }
            if pending.len() >= MESSAGE_BYTES || (next.is_none() && !pending.is_empty()) {
                let data = std::mem::replace(&mut pending, Vec::with_capacity(MESSAGE_BYTES));
                let len = data.len() as u64;
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference.clone(),
                    total: size as i64,
                    expected: expected.clone(),
                    offset: sent as i64,
                    data,
                    labels: HashMap::new(),
                };
                if tx.send(msg).await.is_err() {
                    // containerd ended the call; its answer says why.
                    return Ok(());
                }
                sent += len;
            }
            if next.is_none() {
                break;
            }
        }
        let actual = hex::encode(hasher.finalize());
        if offset != size || format!("sha256:{actual}") != expected {
            return Err(ContentError::Mismatch { digest: expected, size, received: offset, actual });
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference.clone(),
            total: offset as i64,
            expected,
            offset: offset as i64,
            data: Vec::new(),
            labels,
        };
        let _ = tx.send(commit).await;
        Ok::<_, ContentError>(())
    };
    let drain = async move {
        let mut responses = call.await.map_err(call_err(format!("content write {digest}")))?.into_inner();
        while let Some(r) = responses.next().await {
            r.map_err(call_err(format!("content write {digest}")))?;
        }
        Ok::<_, ContentError>(())
    };
    let (fed, drained) = tokio::join!(feed, drain);
    match fed.and(drained) {
        Ok(()) => Ok(()),
        // A commit of content that another pull committed meanwhile is a success.
        Err(ContentError::Containerd(c)) if c.is_already_exists() => Ok(()),
        Err(e) => {
            let _ = abort(cd, &format!("fnrt-{digest}")).await;
            Err(e)
        }
    }
}

/// Writes a small blob held in memory (manifests, configs).
pub async fn write_bytes(
    cd: &Containerd,
    lease: &str,
    digest: &str,
    bytes: Bytes,
    labels: HashMap<String, String>,
) -> Result<(), ContentError> {
    let size = bytes.len() as u64;
    let body = futures_util::stream::iter([Ok::<_, ContentError>(bytes)]);
    write(cd, lease, digest, size, labels, body).await
}

/// Reads a whole blob (for manifests and configs, which are small).
pub async fn read(cd: &Containerd, digest: &str) -> Result<Vec<u8>, ContainerdError> {
    let req = cd.req(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 });
    let op = || format!("content read {digest}");
    let mut stream = cd.content().read(req).await.map_err(call_err(op()))?.into_inner();
    let mut out = Vec::new();
    while let Some(part) = stream.next().await {
        out.extend_from_slice(&part.map_err(call_err(op()))?.data);
    }
    Ok(out)
}

/// Streams a blob out of the store (for layers, which can be large).
pub fn read_stream(cd: &Containerd, digest: &str) -> impl Stream<Item = Result<Bytes, ContentError>> + Send {
    let (cd, digest) = (cd.clone(), digest.to_string());
    futures_util::stream::once(async move {
        let req = cd.req(ReadContentRequest { digest: digest.clone(), offset: 0, size: 0 });
        let op = format!("content read {digest}");
        let stream = cd.content().read(req).await.map_err(call_err(op.clone()))?.into_inner();
        Ok::<_, ContentError>(
            stream.map(move |part| Ok(Bytes::from(part.map_err(call_err(op.clone()))?.data))),
        )
    })
    .try_flatten()
}

/// Drops an unfinished ingest, if there is one.
async fn abort(cd: &Containerd, reference: &str) -> Result<(), ContainerdError> {
    match cd.content().abort(cd.req(AbortRequest { r#ref: reference.to_string() })).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(call_err(format!("content abort {reference}"))(s)),
    }
}
