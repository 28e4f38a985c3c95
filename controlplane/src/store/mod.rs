//! The control plane's durable state: a narrow key-value interface (a prefix range and an
//! atomic batch of puts and deletes) with two implementations: an embedded one on redb
//! (one machine, the default) and one on etcd (`store = "etcd"`). Keys are
//! `<kind>/<id>`; values are JSON records.

mod etcd;
pub mod migrate;
mod redb;

use std::path::PathBuf;

use futures_util::future::BoxFuture;

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

/// What the control plane needs of a store.
pub trait Store: Send + Sync + 'static {
    /// Every record whose key starts with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Records, StoreError>>;
    /// Applies all of `ops` or none of them, durably.
    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<(), StoreError>>;
}

fn io(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Io { op, message: e.to_string() }
}
