//! The resources in memory, written through to the [`Store`].
//!
//! Reads take a short lock on the maps and never wait for I/O. Writes are serialized by
//! one async writer lock: a change is computed against the current maps, made durable in
//! the store (on a blocking thread), and only then applied to the maps, so what readers
//! see is always on disk.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::model::{Cron, Domain, Function, Namespace, Token, Trigger};
use crate::route_index::RouteIndex;
use crate::store::{Op, Store};

/// Everything the control plane keeps, by id.
#[derive(Debug, Default, Clone)]
pub struct Data {
    /// Namespaces.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Functions.
    pub functions: BTreeMap<String, Function>,
    /// Tokens.
    pub tokens: BTreeMap<String, Token>,
    /// Crons.
    pub crons: BTreeMap<String, Cron>,
    /// Custom domains.
    pub domains: BTreeMap<String, Domain>,
    /// Triggers.
    pub triggers: BTreeMap<String, Trigger>,
}

/// One change of a write.
// A write holds a handful of changes, briefly: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Change {
    /// Creates or replaces a namespace.
    Namespace(Namespace),
    /// Creates or replaces a function.
    Function(Function),
    /// Creates or replaces a token.
    Token(Token),
    /// Creates or replaces a cron.
    Cron(Cron),
    /// Creates a domain.
    Domain(Domain),
    /// Creates or replaces a trigger.
    Trigger(Trigger),
    /// Removes a trigger.
    DeleteTrigger(String),
    /// Removes a namespace.
    DeleteNamespace(String),
    /// Removes a function.
    DeleteFunction(String),
    /// Removes a token.
    DeleteToken(String),
    /// Removes a cron.
    DeleteCron(String),
    /// Removes a domain.
    DeleteDomain(String),
}

const NAMESPACES: &str = "namespaces/";
const FUNCTIONS: &str = "functions/";
const TOKENS: &str = "tokens/";
const CRONS: &str = "crons/";
const DOMAINS: &str = "domains/";
const TRIGGERS: &str = "triggers/";

impl Change {
    fn op(&self) -> Result<Op, Error> {
        fn put<T: serde::Serialize>(prefix: &str, id: &str, v: &T) -> Result<Op, Error> {
            let bytes =
                serde_json::to_vec(v).map_err(|e| Error::Internal(format!("encode {prefix}{id}: {e}")))?;
            Ok(Op::Put(format!("{prefix}{id}"), bytes))
        }
        match self {
            Change::Namespace(n) => put(NAMESPACES, &n.id, n),
            Change::Function(f) => put(FUNCTIONS, &f.id, f),
            Change::Token(t) => put(TOKENS, &t.id, t),
            Change::Cron(c) => put(CRONS, &c.id, c),
            Change::Domain(x) => put(DOMAINS, &x.id, x),
            Change::DeleteDomain(id) => Ok(Op::Delete(format!("{DOMAINS}{id}"))),
            Change::Trigger(t) => put(TRIGGERS, &t.id, t),
            Change::DeleteTrigger(id) => Ok(Op::Delete(format!("{TRIGGERS}{id}"))),
            Change::DeleteNamespace(id) => Ok(Op::Delete(format!("{NAMESPACES}{id}"))),
            Change::DeleteFunction(id) => Ok(Op::Delete(format!("{FUNCTIONS}{id}"))),
            Change::DeleteToken(id) => Ok(Op::Delete(format!("{TOKENS}{id}"))),
            Change::DeleteCron(id) => Ok(Op::Delete(format!("{CRONS}{id}"))),
        }
    }

    fn apply(self, d: &mut Data) {
        match self {
            Change::Namespace(n) => drop(d.namespaces.insert(n.id.clone(), n)),
            Change::Function(f) => drop(d.functions.insert(f.id.clone(), f)),
            Change::Token(t) => drop(d.tokens.insert(t.id.clone(), t)),
            Change::Cron(c) => drop(d.crons.insert(c.id.clone(), c)),
            Change::Domain(x) => drop(d.domains.insert(x.id.clone(), x)),
            Change::DeleteDomain(id) => drop(d.domains.remove(&id)),
            Change::Trigger(t) => drop(d.triggers.insert(t.id.clone(), t)),
            Change::DeleteTrigger(id) => drop(d.triggers.remove(&id)),
            Change::DeleteNamespace(id) => drop(d.namespaces.remove(&id)),
            Change::DeleteFunction(id) => drop(d.functions.remove(&id)),
            Change::DeleteToken(id) => drop(d.tokens.remove(&id)),
            Change::DeleteCron(id) => drop(d.crons.remove(&id)),
        }
    }
}

/// The state: the maps and the store under them, the gateway's index of them, and the
/// number of writes so far, published to whoever acts on changes (the scheduler's
/// reconcile, the trigger subscriptions).
pub struct State {
    store: Arc<dyn Store>,
    data: RwLock<Data>,
    writer: tokio::sync::Mutex<()>,
    routes: RwLock<Arc<RouteIndex>>,
    changes: tokio::sync::watch::Sender<u64>,
}

/// Every record under `prefix`; one that cannot be read is logged and skipped (it stays
/// in the store for the operator), so one damaged record does not stop the control plane.
async fn load<T: DeserializeOwned>(store: &dyn Store, prefix: &str) -> Result<BTreeMap<String, T>, Error> {
    let mut out = BTreeMap::new();
    for (key, bytes) in store.list(prefix).await? {
        match serde_json::from_slice(&bytes) {
            Ok(v) => {
                out.insert(key[prefix.len()..].to_string(), v);
            }
            Err(e) => tracing::error!(record = %key, error = %e, "a stored record cannot be read; skipped"),
        }
    }
    Ok(out)
}

impl State {
    /// Loads every record of `store`.
    pub async fn open(store: Arc<dyn Store>) -> Result<State, Error> {
        let data = Data {
            namespaces: load(store.as_ref(), NAMESPACES).await?,
            functions: load(store.as_ref(), FUNCTIONS).await?,
            tokens: load(store.as_ref(), TOKENS).await?,
            crons: load(store.as_ref(), CRONS).await?,
            domains: load(store.as_ref(), DOMAINS).await?,
            triggers: load(store.as_ref(), TRIGGERS).await?,
        };
        let routes = RwLock::new(Arc::new(RouteIndex::of(&data.namespaces, &data.functions, &data.domains)));
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(State { store, data: RwLock::new(data), writer: tokio::sync::Mutex::new(()), routes, changes })
    }

    /// Reads the maps.
    pub fn read<R>(&self, f: impl FnOnce(&Data) -> R) -> R {
        let d = self.data.read().unwrap_or_else(|p| p.into_inner());
        f(&d)
    }

    /// Computes changes with `f` against the current maps, stores them, then applies them.
    pub async fn write<R>(
        &self,
        f: impl FnOnce(&Data) -> Result<(Vec<Change>, R), Error>,
    ) -> Result<R, Error> {
        let _writer = self.writer.lock().await;
        let (changes, out) = self.read(f)?;
        if changes.is_empty() {
            return Ok(out);
        }
        let ops = changes.iter().map(Change::op).collect::<Result<Vec<_>, _>>()?;
        self.store.apply(ops).await?;
        let index = {
            let mut d = self.data.write().unwrap_or_else(|p| p.into_inner());
            for c in changes {
                c.apply(&mut d);
            }
            RouteIndex::of(&d.namespaces, &d.functions, &d.domains)
        };
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        self.changes.send_modify(|n| *n += 1);
        Ok(out)
    }

    /// The gateway's index, as of the last write.
    pub fn routes(&self) -> Arc<RouteIndex> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A receiver that sees every write (as a new write count).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Op, RedbStore};

    #[tokio::test]
    async fn a_damaged_record_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        store.apply(vec![Op::Put(format!("{NAMESPACES}bad"), b"{not json".to_vec())]).await.unwrap();
        let state = State::open(Arc::new(store)).await.expect("the control plane starts");
        state.read(|d| assert!(d.namespaces.is_empty()));
    }
}
