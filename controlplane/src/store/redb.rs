//! The embedded store: one redb file, crash-safe, every batch one fsync'd transaction.
//! One process owns the file: its revisions count this process's batches, its feed is
//! in memory, and it always leads.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, watch};

use super::{io, is_control, Applied, Cond, Event, Feed, Fence, Op, Records, Rev, Store, StoreError};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// Batches the feed keeps for a slow reader before it must take a new snapshot.
const FEED_BACKLOG: usize = 1024;

/// The revisions: of the last batch, and of the last one that wrote a data key.
#[derive(Default)]
struct Revs {
    last: Rev,
    data: Rev,
}

/// The embedded store: one redb file, crash-safe, every batch one fsync'd transaction.
pub struct RedbStore {
    db: Arc<redb::Database>,
    /// Held across every write, so that revisions follow the commits' order.
    revs: Arc<Mutex<Revs>>,
    feed: broadcast::Sender<(Rev, Vec<Event>)>,
    leader: watch::Sender<Option<Fence>>,
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
        Ok(RedbStore {
            db: Arc::new(db),
            revs: Arc::default(),
            feed: broadcast::channel(FEED_BACKLOG).0,
            leader: watch::channel(Some(Fence { rev: 0 })).0,
        })
    }
}

fn lock(revs: &Mutex<Revs>) -> std::sync::MutexGuard<'_, Revs> {
    revs.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store for RedbStore {
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Records, StoreError>> {
        let (db, prefix) = (self.db.clone(), prefix.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || list(&db, &prefix)).await.map_err(|e| io("list task")(&e))?
        })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<(Records, Rev), StoreError>> {
        let (db, revs) = (self.db.clone(), self.revs.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let revs = lock(&revs);
                let mut all = list(&db, "")?;
                all.retain(|(k, _)| !is_control(k));
                Ok((all, revs.last))
            })
            .await
            .map_err(|e| io("snapshot task")(&e))?
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        let (db, key) = (self.db.clone(), key.to_string());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(|e| io("begin read")(&e))?;
                let table = txn.open_table(TABLE).map_err(|e| io("open table")(&e))?;
                let v = table.get(key.as_str()).map_err(|e| io("get")(&e))?;
                Ok(v.map(|v| v.value().to_vec()))
            })
            .await
            .map_err(|e| io("get task")(&e))?
        })
    }

    fn apply_if(&self, conds: Vec<Cond>, ops: Vec<Op>) -> BoxFuture<'_, Result<Applied, StoreError>> {
        let (db, revs, feed) = (self.db.clone(), self.revs.clone(), self.feed.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut revs = lock(&revs);
                let Some(events) = apply(&db, &revs, &conds, &ops)? else {
                    return Ok(Applied::Conflict(revs.data));
                };
                revs.last += 1;
                if events.iter().any(|e| !is_control(event_key(e))) {
                    revs.data = revs.last;
                }
                // No reader is no error: the feed is for whoever follows.
                let _ = feed.send((revs.last, events));
                Ok(Applied::Done(revs.last))
            })
            .await
            .map_err(|e| io("apply task")(&e))?
        })
    }

    fn watch(&self, after: Rev) -> BoxStream<'static, Result<Feed, StoreError>> {
        let rx = self.feed.subscribe();
        // Batches sent before the subscription are not in it: the reader must list again.
        let missed = lock(&self.revs).last > after;
        let first = futures_util::stream::iter(missed.then_some(Ok(Feed::Reset)));
        let rest = futures_util::stream::unfold((rx, after), |(mut rx, after)| async move {
            loop {
                match rx.recv().await {
                    Ok((rev, _)) if rev <= after => continue,
                    Ok((rev, events)) => return Some((Ok(Feed::Batch { rev, events }), (rx, after))),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((Ok(Feed::Reset), (rx, after)))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Box::pin(first.chain(rest))
    }

    fn lead(&self, _me: &str) -> watch::Receiver<Option<Fence>> {
        self.leader.subscribe()
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn event_key(e: &Event) -> &str {
    match e {
        Event::Put(k, _) | Event::Delete(k) => k,
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

/// One write transaction: `None` when a condition does not hold, else the batch's events.
fn apply(
    db: &redb::Database,
    revs: &Revs,
    conds: &[Cond],
    ops: &[Op],
) -> Result<Option<Vec<Event>>, StoreError> {
    let txn = db.begin_write().map_err(|e| io("begin write")(&e))?;
    let mut events = Vec::with_capacity(ops.len());
    {
        let mut table = txn.open_table(TABLE).map_err(|e| io("open table")(&e))?;
        for cond in conds {
            let holds = match cond {
                Cond::Unchanged(rev) => revs.data <= *rev,
                Cond::Value(k, want) => {
                    let have = table.get(k.as_str()).map_err(|e| io("get")(&e))?.map(|v| v.value().to_vec());
                    have == *want
                }
                Cond::Leader(_) => true,
            };
            if !holds {
                return Ok(None);
            }
        }
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    table.insert(k.as_str(), v.as_slice()).map_err(|e| io("put")(&e))?;
                    events.push(Event::Put(k.clone(), v.clone()));
                }
                Op::Delete(k) => {
                    table.remove(k.as_str()).map_err(|e| io("delete")(&e))?;
                    events.push(Event::Delete(k.clone()));
                }
            }
        }
    }
    txn.commit().map_err(|e| io("commit")(&e))?;
    Ok(Some(events))
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
