//! One function's pool: its instances (slots), what its calls share, and a call's lease on
//! an instance.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::FunctionSpec;
use crate::instance::Instance;

/// Crash-loop back-off of provisioned instances: after `n` failures in a row (starts that
/// failed, instances that ended within [`STABLE`] of their start) the pool waits
/// `BACKOFF_FIRST * 2^(n-1)`, at most [`BACKOFF_MAX`], before it starts another.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// See [`BACKOFF_FIRST`].
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An instance that ran this long was not crash-looping: the failure count starts again.
pub(super) const STABLE: Duration = Duration::from_secs(10);

/// How long provisioned starts wait after `failures` failures in a row.
pub(super) fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// Whose pool it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A deployed function: provisioned instances, on-demand starts, keep-alive.
    Deployed,
    /// A function whose instances an operator started with StartInstance: those serve
    /// its calls, least busy first; none is reaped; when all ended on their own, a call
    /// starts one like the last (`restartable`: not when the pool was rebuilt after a
    /// restart, whose variables and secrets were not kept).
    Started {
        /// Whether a call may start an instance.
        restartable: bool,
    },
}

/// One instance of a pool.
#[derive(Debug)]
pub(super) struct Slot {
    pub id: Arc<str>,
    pub address: SocketAddr,
    pub netns: Option<Arc<std::path::Path>>,
    /// The address as a Host header.
    pub host: HeaderValue,
    pub key: u64,
    pub in_flight: u32,
    pub started: Instant,
    pub last_used: Instant,
    pub retired: bool,
    /// Retired because a call overran the function's timeout.
    pub overran: bool,
    /// Cleared when the instance ends.
    pub alive: crate::instance::Alive,
    /// Where its start's time went.
    pub phases: crate::instance::phases::StartPhases,
}

impl Slot {
    pub fn of(inst: Instance, key: u64) -> Slot {
        let now = Instant::now();
        Slot {
            id: inst.id.clone().into(),
            host: HeaderValue::try_from(inst.address.to_string())
                .unwrap_or(HeaderValue::from_static("localhost")),
            address: inst.address,
            netns: inst.netns,
            key,
            in_flight: 0,
            started: now,
            last_used: now,
            retired: false,
            overran: false,
            alive: inst.alive,
            phases: inst.phases,
        }
    }
}

/// A pool's provisioned instances failing in a row.
#[derive(Debug)]
pub(super) struct CrashLoop {
    pub failures: u32,
    pub why: String,
    pub retry_at: Instant,
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub slots: Vec<Slot>,
    pub starting: u32,
    pub waiting: u32,
    pub last_error: Option<(Instant, String)>,
    /// Provisioned instances that failed in a row, the last failure and when the pool may
    /// start provisioned instances again.
    pub crash_loop: Option<CrashLoop>,
    pub removed: bool,
    /// The deploy is starting the provisioned instances itself.
    pub deploying: bool,
    /// Its calls' arrivals: a deployed function's keep-alive and prewarm.
    pub learned: super::prewarm::Learned,
}

impl State {
    /// Counts one more failure in a row and backs off.
    pub fn failed(&mut self, now: Instant, why: String) {
        let failures = self.crash_loop.as_ref().map_or(0, |c| c.failures) + 1;
        let wait = backoff(failures);
        let why = format!(
            "{why}; provisioned instances start again in {} s ({failures} failures in a row)",
            wait.as_secs()
        );
        self.crash_loop = Some(CrashLoop { failures, why, retry_at: now + wait });
    }

    /// Instances that take calls.
    pub fn live(&self) -> u32 {
        self.slots.iter().filter(|s| !s.retired && s.alive.get()).count() as u32
    }
}

/// What every call of one spec shares, made once per spec: the static SCF headers and
/// the function's metric handles (no label lookups per call).
#[derive(Debug)]
pub struct Served {
    /// The spec.
    pub spec: Arc<FunctionSpec>,
    /// Its instance key.
    pub key: u64,
    /// X-Scf-* headers but the request id.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Calls that found a ready instance.
    pub warm_hits: Counter,
    /// Calls that waited for a new instance.
    pub cold_starts: Counter,
    /// Time calls waited for an instance.
    pub queue_wait: Histogram,
    /// Time to the answer's headers.
    pub duration: Histogram,
    /// Calls answered 200.
    pub ok: Counter,
}

/// One function's pool.
#[derive(Debug)]
pub struct Pool {
    pub(super) owner: Owner,
    spec: Mutex<Arc<Served>>,
    state: Mutex<State>,
    pub(super) changed: Notify,
}

impl Pool {
    pub(super) fn new(owner: Owner, served: Served, state: State) -> Pool {
        Pool { owner, spec: Mutex::new(Arc::new(served)), state: Mutex::new(state), changed: Notify::new() }
    }

    /// The spec calls are served with now.
    pub fn spec(&self) -> Arc<FunctionSpec> {
        self.served().spec.clone()
    }

    /// The spec with what its calls share.
    pub fn served(&self) -> Arc<Served> {
        self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_served(&self, served: Served) {
        *self.spec.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(served);
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready instance with room for a call: of the current spec if there is one, else
    /// of an older one not yet retired (during a rolling change). A deployed function's
    /// busiest first, so the others go idle and can be reaped; a started one's least busy
    /// first, so the operator's instances share the calls. `first_try` names the function
    /// on a call's first try: a deployed function counts the call's arrival then, under
    /// the same lock (see super::prewarm).
    pub(super) fn try_lease(
        self: &Arc<Self>,
        key: u64,
        concurrency: u32,
        arrived: Instant,
        first_try: Option<&str>,
    ) -> Option<Lease> {
        let mut st = self.state();
        if let (Some(function), Owner::Deployed) = (first_try, self.owner) {
            st.learned.arrival(function, arrived);
        }
        let spread = matches!(self.owner, Owner::Started { .. });
        let pick = |current: bool| {
            let room = st.slots.iter().enumerate().filter(|(_, s)| {
                !s.retired && s.alive.get() && s.in_flight < concurrency && (s.key == key) == current
            });
            if spread {
                room.min_by_key(|(_, s)| (s.in_flight, s.last_used)).map(|(i, _)| i)
            } else {
                room.max_by_key(|(_, s)| (s.in_flight, s.last_used)).map(|(i, _)| i)
            }
        };
        let i = pick(true).or_else(|| pick(false))?;
        let slot = &mut st.slots[i];
        slot.in_flight += 1;
        slot.last_used = Instant::now();
        Some(Lease {
            pool: self.clone(),
            id: slot.id.clone(),
            address: slot.address,
            netns: slot.netns.clone(),
            host: slot.host.clone(),
            cold: slot.started > arrived,
            phases: (slot.started > arrived).then(|| slot.phases.clone()),
            recycle: false,
        })
    }
}

/// A call's hold on an instance, until dropped.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    /// The instance.
    pub id: Arc<str>,
    /// Its address.
    pub address: SocketAddr,
    /// Its network namespace, when the node made one.
    pub netns: Option<Arc<std::path::Path>>,
    /// Its address as a Host header.
    pub host: HeaderValue,
    /// Whether the instance was started for this call (or while it waited).
    pub cold: bool,
    /// A cold call's instance's start phases.
    pub phases: Option<crate::instance::phases::StartPhases>,
    recycle: bool,
}

impl Lease {
    /// The instance is not to take another call (it overran its timeout): it is stopped
    /// and, if provisioned, replaced.
    pub fn recycle(&mut self) {
        self.recycle = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut st = self.pool.state();
            if let Some(s) = st.slots.iter_mut().find(|s| s.id == self.id) {
                s.in_flight = s.in_flight.saturating_sub(1);
                s.last_used = Instant::now();
                s.retired |= self.recycle;
                s.overran |= self.recycle;
            }
        }
        self.pool.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_loop_back_off_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        let mut st = State::default();
        let now = Instant::now();
        st.failed(now, "instance x ended 300 ms after its start: exited with status 7".into());
        st.failed(now, "instance y ended 310 ms after its start: exited with status 7".into());
        let c = st.crash_loop.as_ref().map(|c| (c.failures, c.retry_at - now, c.why.clone()));
        assert_eq!(
            c,
            Some((
                2,
                Duration::from_secs(2),
                "instance y ended 310 ms after its start: exited with status 7; provisioned instances start again in 2 s (2 failures in a row)".into()
            ))
        );
    }
}
