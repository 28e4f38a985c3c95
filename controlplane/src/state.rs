//! The resources in memory, following the [`Store`].
//!
//! Reads take a short lock on the maps and never wait for I/O. A write is computed
//! against the maps at their revision and stored only if no record changed since
//! (compare-and-swap); when another write came first, the maps catch up and the write is
//! computed again. A follower task applies every batch of the store's feed, this
//! replica's own and the others', in order, so every replica's maps (and the scheduler and
//! triggers that act on them) see every change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::model::{Cron, Domain, Function, Namespace, Token, Trigger};
use crate::route_index::RouteIndex;
use crate::store::{Applied, Cond, Event, Feed, Op, Rev, Store};

/// Tries of one write before it gives up (others keep writing first).
const WRITE_TRIES: usize = 16;
/// The longest the maps may take to catch up with a revision the store has.
const CATCH_UP: Duration = Duration::from_secs(10);

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

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            // Skipped, not fatal: it stays in the store for the operator.
            tracing::error!(record = %key, error = %e, "a stored record cannot be read; skipped");
            None
        }
    }
}

impl Change {
    /// The change a stored key's new value (`None`: removed) makes; none for keys that
    /// are not records, or records that cannot be read.
    fn from_record(key: &str, value: Option<&[u8]>) -> Option<Change> {
        let (kind, id) = key.split_once('/')?;
        let id = id.to_string();
        let kind = format!("{kind}/");
        Some(match (kind.as_str(), value) {
            (NAMESPACES, Some(b)) => Change::Namespace(decode(key, b)?),
            (FUNCTIONS, Some(b)) => Change::Function(decode(key, b)?),
            (TOKENS, Some(b)) => Change::Token(decode(key, b)?),
            (CRONS, Some(b)) => Change::Cron(decode(key, b)?),
            (DOMAINS, Some(b)) => Change::Domain(decode(key, b)?),
            (TRIGGERS, Some(b)) => Change::Trigger(decode(key, b)?),
            (NAMESPACES, None) => Change::DeleteNamespace(id),
            (FUNCTIONS, None) => Change::DeleteFunction(id),
            (TOKENS, None) => Change::DeleteToken(id),
            (CRONS, None) => Change::DeleteCron(id),
            (DOMAINS, None) => Change::DeleteDomain(id),
            (TRIGGERS, None) => Change::DeleteTrigger(id),
            _ => return None,
        })
    }

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

/// The maps and the store revision they reflect.
struct Maps {
    data: Data,
    rev: Rev,
}

/// The state: the maps and the store under them, the gateway's index of them, and the
/// number of batches applied so far, published to whoever acts on changes (the
/// scheduler's reconcile, the trigger subscriptions).
pub struct State {
    store: Arc<dyn Store>,
    maps: RwLock<Maps>,
    writer: tokio::sync::Mutex<()>,
    routes: RwLock<RouteIndex>,
    changes: tokio::sync::watch::Sender<u64>,
    applied: tokio::sync::watch::Sender<Rev>,
    follower: Mutex<Option<tokio::task::AbortHandle>>,
}

fn data_of(records: Vec<(String, Vec<u8>)>) -> Data {
    let mut data = Data::default();
    for (key, bytes) in records {
        if let Some(c) = Change::from_record(&key, Some(&bytes)) {
            c.apply(&mut data);
        }
    }
    data
}

fn index_of(d: &Data) -> RouteIndex {
    RouteIndex::of(&d.namespaces, &d.functions, &d.domains)
}

impl State {
    /// Loads every record of `store` and follows its changes from then on.
    pub async fn open(store: Arc<dyn Store>) -> Result<Arc<State>, Error> {
        let (records, rev) = store.snapshot().await?;
        let data = data_of(records);
        let routes = RwLock::new(index_of(&data));
        let feed = store.watch(rev);
        let state = Arc::new(State {
            store,
            maps: RwLock::new(Maps { data, rev }),
            writer: tokio::sync::Mutex::new(()),
            routes,
            changes: tokio::sync::watch::channel(0).0,
            applied: tokio::sync::watch::channel(rev).0,
            follower: Mutex::default(),
        });
        let task = tokio::spawn(follow(Arc::downgrade(&state), feed));
        *state.follower.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(state)
    }

    /// The store under the maps.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Reads the maps.
    pub fn read<R>(&self, f: impl FnOnce(&Data) -> R) -> R {
        let m = self.maps.read().unwrap_or_else(|p| p.into_inner());
        f(&m.data)
    }

    /// The store revision the maps reflect.
    pub fn rev(&self) -> Rev {
        self.maps.read().unwrap_or_else(|p| p.into_inner()).rev
    }

    /// Computes changes with `f` against the current maps and stores them if no record
    /// changed meanwhile; else computes them again on the caught-up maps. `f` may run
    /// more than once.
    pub async fn write<R>(
        &self,
        mut f: impl FnMut(&Data) -> Result<(Vec<Change>, R), Error>,
    ) -> Result<R, Error> {
        // Only spares this replica's own writes from conflicting; the store decides.
        let _writer = self.writer.lock().await;
        for _ in 0..WRITE_TRIES {
            let (base, (changes, out)) = {
                let m = self.maps.read().unwrap_or_else(|p| p.into_inner());
                (m.rev, f(&m.data)?)
            };
            if changes.is_empty() {
                return Ok(out);
            }
            let mut ops = changes.iter().map(Change::op).collect::<Result<Vec<_>, _>>()?;
            // A deleted cron's claims go with it.
            ops.extend(changes.iter().filter_map(|c| match c {
                Change::DeleteCron(id) => Some(Op::Delete(crate::scheduler::timer::claim_key(id))),
                _ => None,
            }));
            match self.store.apply_if(vec![Cond::Unchanged(base)], ops).await? {
                Applied::Done(rev) => {
                    self.apply_batch(rev, changes);
                    return Ok(out);
                }
                Applied::Conflict(newer) => self.caught_up(newer).await?,
            }
        }
        Err(Error::Unavailable("the records kept changing under this write: try again".into()))
    }

    /// Waits until the maps reflect revision `rev`.
    async fn caught_up(&self, rev: Rev) -> Result<(), Error> {
        let mut applied = self.applied.subscribe();
        let caught =
            tokio::time::timeout(CATCH_UP, applied.wait_for(|r| *r >= rev)).await.is_ok_and(|r| r.is_ok());
        match caught {
            true => Ok(()),
            _ => Err(Error::Unavailable(format!(
                "this control plane is behind the store (at revision {}, the store at {rev}): try again",
                self.rev()
            ))),
        }
    }

    /// Applies one batch at revision `rev` (one already applied is skipped: the feed
    /// brings this replica's own writes back).
    fn apply_batch(&self, rev: Rev, changes: Vec<Change>) {
        {
            let mut m = self.maps.write().unwrap_or_else(|p| p.into_inner());
            if rev <= m.rev {
                return;
            }
            m.rev = rev;
            if changes.is_empty() {
                drop(m);
                self.applied.send_replace(rev);
                return;
            }
            // The gateway's index follows: the functions changed, or all of it when a
            // namespace (whose name routes its functions) changed.
            let all = changes.iter().any(|c| matches!(c, Change::Namespace(_) | Change::DeleteNamespace(_)));
            let domains = changes.iter().any(|c| matches!(c, Change::Domain(_) | Change::DeleteDomain(_)));
            let touched: Vec<String> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Function(f) => Some(f.id.clone()),
                    Change::DeleteFunction(id) => Some(id.clone()),
                    _ => None,
                })
                .collect();
            for c in changes {
                c.apply(&mut m.data);
            }
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            if all {
                *routes = index_of(&m.data);
            } else {
                for id in touched {
                    match m.data.functions.get(&id) {
                        Some(f) => routes.put(f, m.data.namespaces.get(&f.namespace_id)),
                        None => routes.remove(&id),
                    }
                }
                if domains {
                    routes.set_domains(&m.data.domains);
                }
            }
        }
        self.applied.send_replace(rev);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Nothing changed up to `rev`.
    fn advance(&self, rev: Rev) {
        self.apply_batch(rev, vec![]);
    }

    /// Replaces the maps with a new snapshot (the feed lost changes); its revision.
    async fn reload(&self) -> Result<Rev, Error> {
        let (records, rev) = self.store.snapshot().await?;
        let data = data_of(records);
        let index = index_of(&data);
        {
            let mut m = self.maps.write().unwrap_or_else(|p| p.into_inner());
            *m = Maps { data, rev };
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = index;
        self.applied.send_replace(rev);
        self.changes.send_modify(|n| *n += 1);
        Ok(rev)
    }

    /// The function a gateway call goes to (see [`RouteIndex::target`]).
    pub fn route_target(
        &self,
        host: &str,
        pq: &str,
        domain: &str,
    ) -> Option<(Arc<crate::route_index::Routed>, String)> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).target(host, pq, domain)
    }

    /// A receiver that sees every change of the maps (as a new count).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if let Some(t) = self.follower.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

/// Applies the store's feed to the maps until the state goes: batches in order, a new
/// snapshot when changes were lost, a new feed after a failure.
async fn follow(
    state: Weak<State>,
    mut feed: futures_util::stream::BoxStream<'static, Result<Feed, crate::store::StoreError>>,
) {
    loop {
        let item = feed.next().await;
        let Some(s) = state.upgrade() else { return };
        let again = match item {
            Some(Ok(Feed::Batch { rev, events })) => {
                let changes = events
                    .iter()
                    .filter_map(|e| match e {
                        Event::Put(k, v) => Change::from_record(k, Some(v)),
                        Event::Delete(k) => Change::from_record(k, None),
                    })
                    .collect();
                s.apply_batch(rev, changes);
                None
            }
            Some(Ok(Feed::Progress(rev))) => {
                s.advance(rev);
                None
            }
            Some(Ok(Feed::Reset)) => match s.reload().await {
                Ok(rev) => Some((rev, Duration::ZERO)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the store again; retrying");
                    Some((s.rev(), Duration::from_secs(1)))
                }
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the store's feed broke; following it again");
                Some((s.rev(), Duration::from_secs(1)))
            }
            None => Some((s.rev(), Duration::from_secs(1))),
        };
        if let Some((from, pause)) = again {
            let store = s.store.clone();
            drop(s);
            tokio::time::sleep(pause).await;
            feed = store.watch(from);
        }
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

    #[tokio::test]
    async fn a_write_computed_on_old_maps_is_computed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("state.redb")).unwrap());
        let (a, b) = (State::open(store.clone()).await.unwrap(), State::open(store).await.unwrap());
        let ns = |id: &str, n: u32| Namespace {
            registry_credentials: None,
            sandbox_class: Default::default(),
            id: id.into(),
            name: id.into(),
            description: n.to_string(),
            project_id: String::new(),
            environment_variables: BTreeMap::new(),
            secrets: vec![],
            tags: vec![],
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        // b writes at once, on maps that may not have a's write yet: it is computed again
        // until it builds on it. Then every replica has 1 + 1 + 1.
        a.write(|_| Ok((vec![Change::Namespace(ns("x", 1))], ()))).await.unwrap();
        let bump = |d: &Data| {
            let n = d.namespaces.get("x").map_or(0, |n| n.description.parse::<u32>().unwrap());
            Ok((vec![Change::Namespace(ns("x", n + 1))], ()))
        };
        b.write(bump).await.unwrap();
        a.write(bump).await.unwrap();
        for s in [&a, &b] {
            let mut seen = s.subscribe();
            let three = |_: &u64| s.read(|d| d.namespaces.get("x").is_some_and(|n| n.description == "3"));
            tokio::time::timeout(Duration::from_secs(5), seen.wait_for(three)).await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_damaged_record_is_skipped_not_fatal_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        store.apply(vec![Op::Put(format!("{NAMESPACES}bad"), b"{not json".to_vec())]).await.unwrap();
        let state = State::open(Arc::new(store)).await.expect("the control plane starts");
        state.read(|d| assert!(d.namespaces.is_empty()));
    }
}
