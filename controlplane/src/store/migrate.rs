//! `fnrt-controlplane migrate-store`: copies the redb store of a stopped control plane
//! (`<state_dir>/state.redb`) into the etcd its configuration names, before it is started
//! with `store = "etcd"`. An etcd prefix that holds records already is left alone.

use super::{EtcdStore, Op, RedbStore, Store, StoreError};

/// Records per etcd transaction (etcd 3.4 takes at most 128 operations in one).
const BATCH: usize = 100;

/// Why the copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The configuration does not name etcd.
    #[error("set store = \"etcd\" and etcd_endpoints: the records go there")]
    NotEtcd,
    /// There are records under the prefix already.
    #[error("etcd holds {0} records under etcd_prefix already: choose an empty prefix (or remove them)")]
    NotEmpty(usize),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every record; how many.
pub async fn redb_to_etcd(cfg: &crate::Config) -> Result<usize, MigrateError> {
    if cfg.store != "etcd" || cfg.etcd_endpoints.is_empty() {
        return Err(MigrateError::NotEtcd);
    }
    let path = cfg.state_dir.join("state.redb");
    if !path.exists() {
        return Err(MigrateError::Store(StoreError::Io {
            op: "migrate",
            message: format!("{} does not exist: nothing to copy", path.display()),
        }));
    }
    let redb = tokio::task::spawn_blocking(move || RedbStore::open(&path))
        .await
        .map_err(|e| StoreError::Io { op: "open task", message: e.to_string() })??;
    let etcd = EtcdStore::connect(&cfg.etcd_settings()).await?;
    // Records only: keys the store keeps for itself (`~...`) are not copied or compared.
    let there = etcd.snapshot().await?.0.len();
    if there > 0 {
        return Err(MigrateError::NotEmpty(there));
    }
    let records = redb.snapshot().await?.0;
    let n = records.len();
    for chunk in records.chunks(BATCH) {
        etcd.apply(chunk.iter().map(|(k, v)| Op::Put(k.clone(), v.clone())).collect()).await?;
    }
    // Read back: the same records, byte for byte.
    if etcd.snapshot().await?.0 != records {
        return Err(MigrateError::Store(StoreError::Io {
            op: "migrate",
            message: "etcd does not hold what was copied (was it written to meanwhile?)".into(),
        }));
    }
    Ok(n)
}
