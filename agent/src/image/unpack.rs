//! Unpacking image layers into snapshots keyed by chain ID, as containerd names them.
//!
//! For layers L0..Ln with diff IDs D0..Dn, the snapshot of L0..Li is named by its chain
//! ID: C0 = D0 and Ci = sha256(C(i-1) + " " + Di). A snapshot that exists is reused.
//!
//! containerd's Diff service applies one layer at a time, after its download. The agent
//! instead unpacks each layer while it downloads, into a stage (a snapshot without a
//! parent, so layers unpack side by side), and then, bottom first, prepares each layer's
//! snapshot on its parent, moves the stage's files into its overlayfs upper directory and
//! commits it. Nothing is committed before its bytes and its diff ID are verified.

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use containerd_client::types::Descriptor;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::extract::{extract, Budget, Compression, ExtractError, Extracted};

use crate::containerd::{call_err, Containerd, ContainerdError};
use crate::idmap::IdMap;

/// The chain IDs of a stack of layers, bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}")))),
        };
        out.push(next);
    }
    out
}

/// A layer to unpack: its blob and the diff ID it must produce.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The blob's descriptor (media type, digest, size).
    pub blob: Descriptor,
    /// sha256 of the uncompressed tar, from the image config.
    pub diff_id: String,
}

/// A layer that could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// containerd refused or failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// The tar could not be read or written.
    #[error("layer {blob}: {source}")]
    Extract {
        /// The layer blob.
        blob: String,
        /// What failed.
        source: ExtractError,
    },
    /// The layer did not unpack to the diff ID the image config names.
    #[error("layer {blob} unpacked to {applied}, but the image config says {expected}")]
    DiffIdMismatch {
        /// The layer blob.
        blob: String,
        /// What it unpacked to.
        applied: String,
        /// What the config names.
        expected: String,
    },
    /// The snapshotter gave mounts with no directory to unpack into.
    #[error("snapshotter {snapshotter} gave a {kind:?} mount; the agent unpacks layers into overlayfs upper directories and needs snapshotter = \"overlayfs\"")]
    NotOverlay {
        /// The snapshotter.
        snapshotter: String,
        /// The mount type it gave.
        kind: String,
    },
    /// The files of a layer could not be moved into their snapshot.
    #[error("moving layer {blob} into its snapshot: {source}")]
    Move {
        /// The layer blob.
        blob: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// True when containerd has a snapshot named `key`.
pub async fn snapshot_exists(cd: &Containerd, snapshotter: &str, key: &str) -> Result<bool, ContainerdError> {
    let req = cd.req(StatSnapshotRequest { snapshotter: snapshotter.into(), key: key.into() });
    match cd.snapshots().stat(req).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(call_err(format!("stat snapshot {key}"))(s)),
    }
}

/// An empty snapshot without a parent that a layer is unpacked into while it downloads,
/// before the snapshot of the layers below it exists.
#[derive(Debug)]
pub struct Stage {
    /// The snapshot's key.
    pub key: String,
    /// Its directory.
    pub dir: PathBuf,
}

/// A layer being unpacked on a blocking thread from the bytes sent to it.
pub struct Unpacker {
    /// Where the layer's bytes go; `None` says they were all sent and verified.
    pub feed: mpsc::Sender<Option<Bytes>>,
    task: tokio::task::JoinHandle<Result<(Stage, Extracted), UnpackError>>,
}

impl Unpacker {
    /// Prepares a stage and starts unpacking `layer` into it from what `feed` gets.
    ///
    /// If the feed closes without the final `None` (the download failed or was dropped),
    /// or the tar is bad, the thread reads what is still sent, removes the stage itself and
    /// reports the failure; so nothing half-written outlives the pull.
    pub async fn start(
        cd: &Containerd,
        lease: &str,
        snapshotter: &str,
        layer: &Layer,
        (ids, budget): (IdMap, Arc<Budget>),
    ) -> Result<Unpacker, UnpackError> {
        let compression = Compression::of(&layer.blob.media_type)
            .map_err(|source| UnpackError::Extract { blob: layer.blob.digest.clone(), source })?;
        let key = format!("fnrt-stage-{:016x}", rand::random::<u64>());
        let dir = prepare(cd, lease, snapshotter, &key, "").await?;
        let stage = Stage { key, dir };
        let (feed, rx) = mpsc::channel::<Option<Bytes>>(16);
        let (cd, snapshotter, blob) = (cd.clone(), snapshotter.to_string(), layer.blob.digest.clone());
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || {
            let mut reader = FeedReader { rx, chunk: Bytes::new() };
            match extract(&mut reader, compression, &stage.dir, ids, &budget) {
                Ok(done) => Ok((stage, done)),
                Err(source) => {
                    reader.drain();
                    let _ = runtime.block_on(remove_snapshot(&cd, &snapshotter, &stage.key));
                    Err(UnpackError::Extract { blob, source })
                }
            }
        });
        Ok(Unpacker { feed, task })
    }

    /// Waits for the unpacking to end; the stage is returned only if the layer's diff ID is
    /// the one expected.
    pub async fn finish(
        self,
        cd: &Containerd,
        snapshotter: &str,
        layer: &Layer,
    ) -> Result<Stage, UnpackError> {
        drop(self.feed);
        let (stage, done) = self.task.await.map_err(|e| UnpackError::Extract {
            blob: layer.blob.digest.clone(),
            source: ExtractError::Read(std::io::Error::other(e.to_string())),
        })??;
        if done.diff_id != layer.diff_id {
            remove_snapshot(cd, snapshotter, &stage.key).await?;
            return Err(UnpackError::DiffIdMismatch {
                blob: layer.blob.digest.clone(),
                applied: done.diff_id,
                expected: layer.diff_id.clone(),
            });
        }
        Ok(stage)
    }
}

/// Makes `stage` the snapshot `chain_id` on top of `parent`: a stage without a parent is
/// committed as it is; otherwise a snapshot is prepared on the parent and the stage's
/// directory becomes its upper directory. A snapshot that another pull committed first is
/// as good as ours.
pub async fn commit(
    cd: &Containerd,
    lease: &str,
    snapshotter: &str,
    stage: Stage,
    layer: &Layer,
    parent: &str,
    chain_id: &str,
) -> Result<(), UnpackError> {
    if parent.is_empty() {
        return commit_key(cd, lease, snapshotter, &stage.key, chain_id).await;
    }
    let key = format!("fnrt-extract-{:016x}", rand::random::<u64>());
    let result = async {
        let upper = prepare(cd, lease, snapshotter, &key, parent).await?;
        let moved = std::fs::rename(&stage.dir, &upper).and_then(|()| std::fs::create_dir(&stage.dir));
        moved.map_err(|source| UnpackError::Move { blob: layer.blob.digest.clone(), source })?;
        commit_key(cd, lease, snapshotter, &key, chain_id).await
    }
    .await;
    let _ = remove_snapshot(cd, snapshotter, &stage.key).await;
    if result.is_err() {
        let _ = remove_snapshot(cd, snapshotter, &key).await;
    }
    result
}

async fn commit_key(
    cd: &Containerd,
    lease: &str,
    snapshotter: &str,
    key: &str,
    chain_id: &str,
) -> Result<(), UnpackError> {
    let commit = CommitSnapshotRequest {
        snapshotter: snapshotter.into(),
        name: chain_id.into(),
        key: key.into(),
        labels: Default::default(),
    };
    match cd.snapshots().commit(cd.leased(commit, lease)).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(remove_snapshot(cd, snapshotter, key).await?),
        Err(s) => {
            let _ = remove_snapshot(cd, snapshotter, key).await;
            Err(call_err(format!("commit snapshot {chain_id}"))(s).into())
        }
    }
}

/// Prepares the active snapshot `key` on `parent` and returns the directory its writes go
/// to: the bind mount's source without a parent, the overlay's upper directory with one.
async fn prepare(
    cd: &Containerd,
    lease: &str,
    snapshotter: &str,
    key: &str,
    parent: &str,
) -> Result<PathBuf, UnpackError> {
    let prep = PrepareSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: key.into(),
        parent: parent.into(),
        labels: Default::default(),
    };
    let mounts = cd
        .snapshots()
        .prepare(cd.leased(prep, lease))
        .await
        .map_err(call_err(format!("prepare snapshot {key}")))?
        .into_inner()
        .mounts;
    let dir = match mounts.as_slice() {
        [m] if m.r#type == "bind" => Some(PathBuf::from(&m.source)),
        [m] if m.r#type == "overlay" => {
            m.options.iter().find_map(|o| o.strip_prefix("upperdir=")).map(PathBuf::from)
        }
        _ => None,
    };
    match dir {
        Some(d) => Ok(d),
        None => {
            let _ = remove_snapshot(cd, snapshotter, key).await;
            let kind = mounts.iter().map(|m| m.r#type.as_str()).collect::<Vec<_>>().join("+");
            Err(UnpackError::NotOverlay { snapshotter: snapshotter.into(), kind })
        }
    }
}

/// The blocking side of a layer's byte channel.
struct FeedReader {
    rx: mpsc::Receiver<Option<Bytes>>,
    chunk: Bytes,
}

impl FeedReader {
    /// Reads and drops whatever is still sent, so the sender never waits on a reader that
    /// gave up.
    fn drain(&mut self) {
        while let Some(Some(_)) = self.rx.blocking_recv() {}
    }
}

impl Read for FeedReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Some(chunk)) => self.chunk = chunk,
                Some(None) => return Ok(0),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the layer's download stopped before its end",
                    ))
                }
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Removes a snapshot; one that is gone already is fine.
pub async fn remove_snapshot(cd: &Containerd, snapshotter: &str, key: &str) -> Result<(), ContainerdError> {
    let req = cd.req(RemoveSnapshotRequest { snapshotter: snapshotter.into(), key: key.into() });
    match cd.snapshots().remove(req).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(call_err(format!("remove snapshot {key}"))(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))));
        assert_eq!(ids[1], expected);
    }
}
