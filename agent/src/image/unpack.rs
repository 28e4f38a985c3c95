//! Applying image layers onto snapshots, keyed by chain ID, the way containerd does.
//!
//! For layers L0..Ln with diff IDs D0..Dn, the snapshot of L0..Li is named by its chain
//! ID: C0 = D0 and Ci = sha256(C(i-1) + " " + Di). A snapshot that exists is reused.

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::types::Descriptor;
use sha2::{Digest, Sha256};

use crate::containerd::{call_err, Containerd, ContainerdError};

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

/// A layer to apply: its blob in the content store and the diff ID it must produce.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The blob's descriptor (media type, digest, size).
    pub blob: Descriptor,
    /// sha256 of the uncompressed tar, from the image config.
    pub diff_id: String,
}

/// Applies one layer onto `parent` as the snapshot `chain_id`, unless that snapshot
/// exists already.
pub async fn unpack_layer(
    cd: &Containerd,
    lease: &str,
    snapshotter: &str,
    layer: &Layer,
    parent: &str,
    chain_id: &str,
) -> Result<(), UnpackError> {
    if !snapshot_exists(cd, snapshotter, chain_id).await? {
        apply(cd, lease, snapshotter, layer, parent, chain_id).await?;
    }
    Ok(())
}

/// A layer that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// containerd refused or failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
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

async fn apply(
    cd: &Containerd,
    lease: &str,
    snapshotter: &str,
    layer: &Layer,
    parent: &str,
    chain_id: &str,
) -> Result<(), UnpackError> {
    let key = format!("fnrt-extract-{:08x}-{chain_id}", rand::random::<u32>());
    let prep = PrepareSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: key.clone(),
        parent: parent.into(),
        labels: Default::default(),
    };
    let mounts = cd
        .snapshots()
        .prepare(cd.leased(prep, lease))
        .await
        .map_err(call_err(format!("prepare snapshot for layer {}", layer.blob.digest)))?
        .into_inner()
        .mounts;
    let result = async {
        let req = ApplyRequest {
            diff: Some(layer.blob.clone()),
            mounts,
            payloads: Default::default(),
            sync_fs: false,
        };
        let applied = cd
            .diff()
            .apply(cd.leased(req, lease))
            .await
            .map_err(call_err(format!("apply layer {}", layer.blob.digest)))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != layer.diff_id {
            return Err(UnpackError::DiffIdMismatch {
                blob: layer.blob.digest.clone(),
                applied,
                expected: layer.diff_id.clone(),
            });
        }
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.into(),
            name: chain_id.into(),
            key: key.clone(),
            labels: Default::default(),
        };
        match cd.snapshots().commit(cd.leased(commit, lease)).await {
            Ok(_) => Ok(()),
            // Another pull committed the same layer first: theirs is as good as ours.
            Err(s) if s.code() == tonic::Code::AlreadyExists => Err(UnpackError::Containerd(call_err("")(s))),
            Err(s) => Err(call_err(format!("commit snapshot {chain_id}"))(s).into()),
        }
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(UnpackError::Containerd(c)) if c.is_already_exists() => {
            remove_snapshot(cd, snapshotter, &key).await?;
            Ok(())
        }
        Err(e) => {
            let _ = remove_snapshot(cd, snapshotter, &key).await;
            Err(e)
        }
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
