//! The control plane's durable state: a narrow key-value interface and its embedded
//! implementation on redb.
//!
//! The interface is what etcd offers too (get, a prefix range, an atomic batch of puts and
//! deletes), so a replicated backend can implement it later. Keys are `<kind>/<id>`;
//! values are JSON records.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open the store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: redb::DatabaseError,
    },
    /// A read or write failed.
    #[error("store {op} failed: {message}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        message: String,
    },
}

/// One change of an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets `key` to the value.
    Put(String, Vec<u8>),
    /// Removes `key` (no error when absent).
    Delete(String),
}

/// What the control plane needs of a store.
pub trait Store: Send + Sync + 'static {
    /// Every record whose key starts with `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies all of `ops` or none of them, durably.
    fn apply(&self, ops: &[Op]) -> Result<(), StoreError>;
}

/// The embedded store: one redb file, crash-safe, every batch one fsync'd transaction.
pub struct RedbStore {
    db: redb::Database,
}

fn io(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Io { op, message: e.to_string() }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = redb::Database::create(path)
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        // The file holds secret values: only its owner may read it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io("chmod")(&e))?;
        let txn = db.begin_write().map_err(|e| io("begin")(&e))?;
        txn.open_table(TABLE).map_err(|e| io("open table")(&e))?;
        txn.commit().map_err(|e| io("commit")(&e))?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| io("begin read")(&e))?;
        let table = txn.open_table(TABLE).map_err(|e| io("open table")(&e))?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| io("range")(&e))? {
            let (k, v) = entry.map_err(|e| io("read")(&e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| io("begin write")(&e))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| io("open table")(&e))?;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        table.insert(k.as_str(), v.as_slice()).map_err(|e| io("put")(&e))?;
                    }
                    Op::Delete(k) => {
                        table.remove(k.as_str()).map_err(|e| io("delete")(&e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| io("commit")(&e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_durable_and_prefixes_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.apply(&[
                Op::Put("ns/a".into(), b"1".to_vec()),
                Op::Put("ns/b".into(), b"2".to_vec()),
                Op::Put("nt/c".into(), b"3".to_vec()),
            ])
            .unwrap();
            s.apply(&[Op::Delete("ns/a".into()), Op::Delete("ns/zz".into())]).unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.list("ns/").unwrap(), vec![("ns/b".to_string(), b"2".to_vec())]);
        assert_eq!(s.list("nt/").unwrap().len(), 1);
        assert!(s.list("x/").unwrap().is_empty());
    }
}
