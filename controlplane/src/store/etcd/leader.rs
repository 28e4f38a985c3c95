//! Leadership on etcd: a replica leads while it holds the leader key on a lease of its
//! own. It takes the key only when the key is absent (a compare on its creation
//! revision), keeps the lease alive every second, and steps down when it cannot renew in
//! time, when the key goes, or when it stops. The key's creation revision is the term's
//! fence: a write guarded by it fails once another replica holds the key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use super::super::Fence;

/// The lease's time to live: a dead leader's key goes this long after its last renewal.
const LEASE_TTL_S: i64 = 5;
/// How often the lease is renewed.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// A leader that has not renewed for this long steps down, before etcd can let the key go.
const STEP_DOWN_AFTER: Duration = Duration::from_secs(3);

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// This replica's campaign.
pub(super) struct Leadership {
    client: Client,
    key: String,
    state: watch::Sender<Option<Fence>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    lease: Arc<Mutex<Option<i64>>>,
}

impl Leadership {
    pub(super) fn new(client: Client, key: String) -> Leadership {
        Leadership {
            client,
            key,
            state: watch::channel(None).0,
            task: Mutex::default(),
            lease: Arc::default(),
        }
    }

    /// Starts campaigning as `me` (once); who leads.
    pub(super) fn campaign(&self, me: &str) -> watch::Receiver<Option<Fence>> {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_none() {
            let (client, key, state, lease) =
                (self.client.clone(), self.key.clone(), self.state.clone(), self.lease.clone());
            let me = me.to_string();
            *task = Some(tokio::spawn(async move {
                loop {
                    if let Err(e) = term(&client, &key, &me, &state, &lease).await {
                        tracing::warn!(error = %e, "leader election: campaigning again");
                    }
                    if state.send_replace(None).is_some() {
                        tracing::warn!("stepped down: no longer the leader");
                    }
                    let held = lease.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(id) = held {
                        let _ = tokio::time::timeout(RENEW_EVERY, client.lease_client().revoke(id)).await;
                    }
                    sleep(RENEW_EVERY).await;
                }
            }));
        }
        self.state.subscribe()
    }

    /// Stops campaigning; gives the key up at once (revokes the lease).
    pub(super) async fn resign(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        self.state.send_replace(None);
        let held = self.lease.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(id) = held {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.client.lease_client().revoke(id)).await;
        }
    }
}

impl Drop for Leadership {
    /// Stops campaigning without giving the key up: as a crash would, the lease expires.
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

/// One lease: tries for the key whenever it is free and leads while it holds it; returns
/// when the lease is lost.
async fn term(
    client: &Client,
    key: &str,
    me: &str,
    state: &watch::Sender<Option<Fence>>,
    slot: &Mutex<Option<i64>>,
) -> Result<(), Failure> {
    let mut leases = client.lease_client();
    let lease = leases.grant(LEASE_TTL_S, None).await?.id();
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
    let (mut keeper, mut acks) = leases.keep_alive(lease).await?;
    let mut renewed = Instant::now();
    let mut tick = tokio::time::interval(RENEW_EVERY);
    let mut kv = client.kv_client();
    let mut watcher = client.watch_client();
    loop {
        // Take the key if it is free; or find it ours still (a watch restarted).
        let take = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(key, me, Some(PutOptions::new().with_lease(lease)))])
            .or_else(vec![TxnOp::get(key, None)]);
        let r = kv.txn(take).await?;
        let rev = r.header().map_or(0, |h| h.revision());
        let fence = if r.succeeded() {
            Some(Fence { rev })
        } else {
            holder(&r.op_responses()).filter(|(_, l)| *l == lease).map(|(created, _)| Fence { rev: created })
        };
        if let Some(f) = fence {
            if state.send_replace(Some(f)) != Some(f) {
                tracing::info!(term = f.rev, "leading");
            }
        }
        let mut events = watcher.watch(key, Some(WatchOptions::new().with_start_revision(rev + 1))).await?;
        // Until the key goes (then try again) or the lease is lost (then return).
        'key: loop {
            tokio::select! {
                _ = tick.tick() => keeper.keep_alive().await?,
                ack = acks.message() => match ack? {
                    Some(a) if a.ttl() > 0 => renewed = Instant::now(),
                    _ => return Err("the lease expired".into()),
                },
                msg = events.message() => {
                    let Some(msg) = msg? else { return Err("the watch of the leader key ended".into()) };
                    if msg.canceled() || msg.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        if fence.is_some() {
                            return Err("the leader key went".into());
                        }
                        break 'key;
                    }
                }
                () = tokio::time::sleep_until(renewed + STEP_DOWN_AFTER), if fence.is_some() => {
                    return Err("the lease was not renewed in time".into());
                }
            }
        }
    }
}

/// The holder of the key in a failed take: its creation revision and lease.
fn holder(responses: &[TxnOpResponse]) -> Option<(i64, i64)> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.create_revision(), kv.lease())),
        _ => None,
    })
}
