//! The control plane's durable state: a narrow key-value interface with two
//! implementations, an embedded one on redb (one machine, the default) and one on etcd
//! (`store = "etcd"`, for several replicas). It offers a consistent snapshot with its
//! revision, atomic batches guarded by conditions (compare-and-swap: nothing changed since
//! a revision, a key holds a value, this replica still leads), a feed of every later batch
//! in order, and leadership. Data keys are `<kind>/<id>` with JSON records; keys the store
//! itself uses for control start with `~`.

mod etcd;
pub mod migrate;
mod redb;

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use self::etcd::{EtcdSettings, EtcdStore};
pub use self::redb::RedbStore;

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open the store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ::redb::DatabaseError,
    },
    /// The etcd cluster could not be reached or refused the client.
    #[error("cannot connect to etcd at {endpoints}: {message}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// The cause.
        message: String,
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

/// Records as a list returns them: (key, value), in key order.
pub type Records = Vec<(String, Vec<u8>)>;

/// A revision of the store: it grows with every batch applied.
pub type Rev = i64;

/// A term of leadership: the revision the leader key was created at. A write guarded by
/// it fails once another replica leads, however late it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The leader key's creation revision (0 on the embedded store: one process, always leader).
    pub rev: Rev,
}

/// A condition a batch is applied under.
#[derive(Debug, Clone)]
pub enum Cond {
    /// No data key (one not starting with `~`) was written after this revision.
    Unchanged(Rev),
    /// The key holds this value (`None`: the key is absent).
    Value(String, Option<Vec<u8>>),
    /// This replica still leads in this term.
    Leader(Fence),
}

/// What a conditional batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied, at this revision.
    Done(Rev),
    /// A condition did not hold; nothing applied (the store's revision then).
    Conflict(Rev),
}

/// One key's change in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was set to the value.
    Put(String, Vec<u8>),
    /// The key was removed.
    Delete(String),
}

/// What the feed of changes brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// One batch, whole, at its revision.
    Batch {
        /// Its revision.
        rev: Rev,
        /// Its changes.
        events: Vec<Event>,
    },
    /// Nothing changed up to this revision.
    Progress(Rev),
    /// Changes were lost to the reader (compacted away, or it fell behind): take a new
    /// snapshot.
    Reset,
}

/// What the control plane needs of a store.
pub trait Store: Send + Sync + 'static {
    /// Every record whose key starts with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Records, StoreError>>;
    /// Every data record (keys not starting with `~`) and the revision they are at.
    fn snapshot(&self) -> BoxFuture<'_, Result<(Records, Rev), StoreError>>;
    /// The value of `key`.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    /// Applies all of `ops` or none of them, durably, when every condition holds.
    fn apply_if(&self, conds: Vec<Cond>, ops: Vec<Op>) -> BoxFuture<'_, Result<Applied, StoreError>>;
    /// Every batch after revision `after`, in order, as long as the stream is read.
    fn watch(&self, after: Rev) -> BoxStream<'static, Result<Feed, StoreError>>;
    /// Whether this replica leads, and in which term; campaigns as `me` from the first call
    /// on. The embedded store always leads.
    fn lead(&self, me: &str) -> tokio::sync::watch::Receiver<Option<Fence>>;
    /// Stops campaigning and gives up leadership at once (the others need not wait for it
    /// to expire).
    fn resign(&self) -> BoxFuture<'_, ()>;

    /// Applies all of `ops` or none of them, durably, unconditionally.
    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.apply_if(vec![], ops).await? {
                Applied::Done(_) => Ok(()),
                Applied::Conflict(_) => Err(StoreError::Io { op: "apply", message: "refused".into() }),
            }
        })
    }
}

/// Whether `key` is one the store keeps for itself, not a record.
pub fn is_control(key: &str) -> bool {
    key.starts_with('~')
}

fn io(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Io { op, message: e.to_string() }
}
