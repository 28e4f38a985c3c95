//! The embedded store: one redb file, crash-safe, every batch one fsync'd transaction.

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use redb::{ReadableDatabase, TableDefinition};

use super::{io, Op, Records, Store, StoreError};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// The embedded store: one redb file, crash-safe, every batch one fsync'd transaction.
pub struct RedbStore {
    db: Arc<redb::Database>,
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
        Ok(RedbStore { db: Arc::new(db) })
    }
}

impl Store for RedbStore {
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Records, StoreError>> {
        let (db, prefix) = (self.db.clone(), prefix.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || list(&db, &prefix)).await.map_err(|e| io("list task")(&e))?
        })
    }

    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || apply(&db, &ops)).await.map_err(|e| io("apply task")(&e))?
        })
    }
}

fn list(db: &redb::Database, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let txn = db.begin_read().map_err(|e| io("begin read")(&e))?;
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

fn apply(db: &redb::Database, ops: &[Op]) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(|e| io("begin write")(&e))?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_are_durable_and_prefixes_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = RedbStore::open(&path).unwrap();
            s.apply(vec![
                Op::Put("ns/a".into(), b"1".to_vec()),
                Op::Put("ns/b".into(), b"2".to_vec()),
                Op::Put("nt/c".into(), b"3".to_vec()),
            ])
            .await
            .unwrap();
            s.apply(vec![Op::Delete("ns/a".into()), Op::Delete("ns/zz".into())]).await.unwrap();
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.list("ns/").await.unwrap(), vec![("ns/b".to_string(), b"2".to_vec())]);
        assert_eq!(s.list("nt/").await.unwrap().len(), 1);
        assert!(s.list("x/").await.unwrap().is_empty());
    }
}
