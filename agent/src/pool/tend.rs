//! The pools' care, every [`TICK`]: instances that ended are dropped (one that ended soon
//! after its start counts towards the crash-loop back-off), retired and idle ones stopped,
//! missing provisioned ones started.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::pool::STABLE;
use super::{FunctionSpec, Owner, Pool, Pools, State};

/// How often pools are looked after.
const TICK: Duration = Duration::from_millis(200);

/// What a tend pass decided for one pool.
struct Plan {
    /// Instances to stop, and whether each overran a call's timeout.
    stop: Vec<(String, bool)>,
    /// Instances to start.
    start: u32,
}

impl Pools {
    /// Looks after the pools until `shutdown`.
    pub async fn maintain(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            self.tend_all().await;
        }
    }

    /// One pass over every pool.
    pub(super) async fn tend_all(self: &Arc<Self>) {
        let mut pools: Vec<Arc<Pool>> = self.map().values().cloned().collect();
        pools.extend(super::locked(&self.started).values().cloned());
        pools.extend(super::locked(&self.draining).iter().cloned());
        for pool in pools {
            self.tend(&pool).await;
        }
        super::locked(&self.draining).retain(|p| {
            let st = p.state();
            !(st.slots.is_empty() && st.starting == 0)
        });
        self.forget_started();
    }

    async fn tend(self: &Arc<Self>, pool: &Arc<Pool>) {
        let spec = pool.spec();
        let plan = {
            let mut st = pool.state();
            let now = Instant::now();
            let before = st.slots.len();
            self.drop_ended(&mut st, &spec, now);
            if st.slots.len() < before {
                // Calls waiting for a started function's instance may start one now.
                pool.changed.notify_waiters();
            }
            retire_idle(&mut st, &spec, now);
            let stop = take_done(&mut st);
            let start = if pool.owner == Owner::Deployed {
                provisioned_missing(&mut st, &spec, now) + prewarm(&mut st, &spec, now)
            } else {
                0
            };
            Plan { stop, start }
        };
        for _ in 0..plan.start {
            self.spawn_start(pool.clone(), spec.clone());
        }
        for (id, overran) in plan.stop {
            let why = overran.then_some("a call overran the function's timeout");
            self.stop_instance_quietly(&id, why).await;
        }
    }

    /// Drops the slots of instances that ended on their own (crash, OOM kill); one that
    /// ended soon after its start counts as a failure in a row. An instance that ran
    /// [`STABLE`] ends the crash loop.
    fn drop_ended(&self, st: &mut State, spec: &FunctionSpec, now: Instant) {
        let mut short_lived = Vec::new();
        st.slots.retain(|s| {
            let live = self.ops.is_live(&s.id);
            if !live && !s.retired && now.duration_since(s.started) < STABLE {
                short_lived.push((s.id.clone(), now.duration_since(s.started)));
            }
            live
        });
        for (id, lived) in short_lived {
            let reason = self.ops.ended_reason(&id).unwrap_or_else(|| "it ended".into());
            tracing::warn!(function = %spec.name, instance = %id, %reason, "instance ended soon after its start");
            st.failed(now, format!("instance {id} ended {} ms after its start: {reason}", lived.as_millis()));
        }
        let key = spec.instance_key();
        if st.crash_loop.is_some()
            && st.slots.iter().any(|s| !s.retired && s.key == key && now.duration_since(s.started) >= STABLE)
        {
            st.crash_loop = None;
        }
    }
}

/// Retires idle instances above the provisioned count after the keep-alive, oldest idle
/// first; instances of an older spec whenever idle past it.
fn retire_idle(st: &mut State, spec: &FunctionSpec, now: Instant) {
    let key = spec.instance_key();
    let mut current = st.slots.iter().filter(|s| !s.retired && s.key == key).count() as u32;
    let mut idle: Vec<usize> = (0..st.slots.len())
        .filter(|&i| {
            let s = &st.slots[i];
            let keep = st.learned.keep_alive(spec.keep_alive, s.last_used == s.started);
            !s.retired && s.in_flight == 0 && now.saturating_duration_since(s.last_used) >= keep
        })
        .collect();
    idle.sort_by_key(|&i| st.slots[i].last_used);
    for i in idle {
        let is_current = st.slots[i].key == key;
        if is_current && current <= spec.provisioned {
            continue;
        }
        st.slots[i].retired = true;
        if is_current {
            current -= 1;
        }
    }
}

/// Takes the retired instances whose calls are done, to stop them.
fn take_done(st: &mut State) -> Vec<(String, bool)> {
    let mut stop = Vec::new();
    st.slots.retain(|s| {
        let done = s.retired && s.in_flight == 0;
        if done {
            stop.push((s.id.to_string(), s.overran));
        }
        !done
    });
    stop
}

/// One instance to start ahead of the next call, when the function's learned prewarm
/// window ends and none runs or starts.
fn prewarm(st: &mut State, spec: &FunctionSpec, now: Instant) -> u32 {
    let backing_off = st.crash_loop.as_ref().is_some_and(|c| now < c.retry_at);
    if !st.learned.prewarm_due(now) || st.removed || st.deploying || backing_off {
        return 0;
    }
    if st.live() + st.starting > 0 || spec.max_instances == 0 {
        return 0;
    }
    st.starting += 1;
    1
}

/// How many provisioned instances to start now (counted as starting), unless the pool is
/// removed, being deployed or backing off.
fn provisioned_missing(st: &mut State, spec: &FunctionSpec, now: Instant) -> u32 {
    let backing_off = st.crash_loop.as_ref().is_some_and(|c| now < c.retry_at);
    if st.removed || st.deploying || backing_off {
        return 0;
    }
    let key = spec.instance_key();
    let current = st.slots.iter().filter(|s| !s.retired && s.key == key).count() as u32;
    let live = st.live();
    let missing = spec.provisioned.saturating_sub(current + st.starting);
    let start = missing.min(spec.max_instances.saturating_sub(live + st.starting));
    st.starting += start;
    start
}
