//! Code zips shared by replicas. On etcd a replica keeps an uploaded zip on its disk as
//! always and also makes it a blob of `<registry>/fnrt-code/<function id>`, its digest in
//! the function's record; a replica whose disk lacks that zip (or holds another) fetches
//! it from the registry before a build or a download. The registry is what every replica
//! and node share already; etcd takes no large values.

use std::path::Path;

use futures_util::StreamExt;

use crate::error::Error;

/// Chunks an upload is sent in.
const CHUNK: usize = 8 << 20;

fn repository(cfg: &crate::Config, id: &str) -> Result<fnrt_registry::ImageRef, Error> {
    fnrt_registry::ImageRef::parse(&format!("{}/fnrt-code/{id}:code", cfg.registry))
        .map_err(|e| Error::Internal(format!("the code repository of {id}: {e}")))
}

/// `sha256:<hex>` of the file at `path`.
async fn digest_of(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use sha2::Digest;
        let mut file = std::fs::File::open(path)?;
        let mut hash = sha2::Sha256::new();
        std::io::copy(&mut file, &mut hash)?;
        Ok(format!("sha256:{}", hex::encode(hash.finalize())))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Makes the zip at `path` of function `id` a blob in the registry; its digest.
pub async fn publish(
    cfg: &crate::Config,
    registry: &fnrt_registry::Registry,
    id: &str,
    path: &Path,
) -> Result<String, Error> {
    let digest = digest_of(path).await.map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    let repo = repository(cfg, id)?;
    registry.upload_file(&repo, path, &digest, CHUNK).await.map_err(|e| {
        Error::Unavailable(format!("the zip could not be shared with the other control planes: {e}"))
    })?;
    Ok(digest)
}

/// Makes sure the zip at `path` of function `id` is the one of `digest`, fetching it
/// from the registry when it is not.
pub async fn fetch(
    cfg: &crate::Config,
    registry: &fnrt_registry::Registry,
    id: &str,
    digest: &str,
    path: &Path,
) -> Result<(), Error> {
    if digest_of(path).await.is_ok_and(|d| d == digest) {
        return Ok(());
    }
    let internal = |e: std::io::Error| Error::Internal(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(internal)?;
    }
    let unavailable =
        |e: fnrt_registry::RegistryError| Error::Unavailable(format!("the function's zip: {e}"));
    let staged = fnrt_common::durable::Staged::new(path, 0o600).map_err(internal)?;
    let mut out = tokio::fs::File::from_std(staged.file().try_clone().map_err(internal)?);
    let mut blob = registry.blob(&repository(cfg, id)?, digest).await.map_err(unavailable)?;
    let mut size = 0u64;
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    while let Some(chunk) = blob.next().await {
        let chunk = chunk.map_err(unavailable)?;
        size += chunk.len() as u64;
        if size > crate::build::code::MAX_ZIP_BYTES {
            return Err(Error::Internal(format!("the registry's blob {digest} is larger than a zip may be")));
        }
        sha2::Digest::update(&mut hash, &chunk);
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk).await.map_err(internal)?;
    }
    tokio::io::AsyncWriteExt::flush(&mut out).await.map_err(internal)?;
    drop(out);
    // Checked before it replaces anything (dropped uncommitted, the staged file goes).
    if format!("sha256:{}", hex::encode(sha2::Digest::finalize(hash))) != digest {
        return Err(Error::Internal(format!("the registry's blob does not hash to {digest}")));
    }
    staged.commit().map_err(internal)
}
