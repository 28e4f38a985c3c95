//! The pools' logic against a fake node (instant starts that can be made to fail, ends
//! that can be made to happen), on tokio's paused clock: queueing and 429, on-demand
//! starts, scale to zero, crash back-off, rolling updates, instances started on their own.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::{AcquireError, Pools, RawSpec};
use crate::env::Identity;
use crate::error::Error;
use crate::image::ImageInfo;
use crate::instance::{Alive, CallSettings, Instance, InstanceOps, StartRequest};
use crate::metrics::Metrics;
use fnrt_function::Policy;

/// A node whose instances start in `start_delay` and run until told to end.
#[derive(Default)]
struct Fake {
    live: Mutex<HashMap<String, Alive>>,
    /// Starts of each function so far.
    starts: Mutex<Vec<StartRequest>>,
    /// Starts that fail from now on.
    failing: AtomicU32,
    next: AtomicU32,
    identity: Identity,
    /// The images functions keep (image acceleration).
    kept: Mutex<HashMap<String, String>>,
}

impl Fake {
    fn starts_of(&self, function: &str) -> usize {
        self.starts.lock().unwrap().iter().filter(|r| r.function == function).count()
    }

    fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    /// Ends every instance, as a crash would.
    fn crash_all(&self) {
        for (_, alive) in self.live.lock().unwrap().drain() {
            alive.clear();
        }
    }
}

const START_DELAY: Duration = Duration::from_millis(100);

impl InstanceOps for Fake {
    /// The fake node offers runc only.
    fn check_class(&self, class: fnrt_function::SandboxClass) -> Result<(), Error> {
        match class {
            fnrt_function::SandboxClass::Runc => Ok(()),
            other => Err(Error::InvalidArgument {
                field: "sandbox_class",
                reason: format!("{other} is not offered"),
            }),
        }
    }

    fn start(&self, req: StartRequest) -> BoxFuture<'_, Result<(Instance, Option<String>), Error>> {
        Box::pin(async move {
            tokio::time::sleep(START_DELAY).await;
            self.starts.lock().unwrap().push(req.clone());
            if self.failing.load(Ordering::SeqCst) > 0 {
                return Err(Error::InvalidArgument { field: "image", reason: "it does not start".into() });
            }
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            let id = format!("{}-{n:08x}", req.function);
            let alive = Alive::new();
            self.live.lock().unwrap().insert(id.clone(), alive.clone());
            let inst = Instance {
                id,
                function: req.function,
                image: req.image,
                address: SocketAddr::from(([10, 0, 0, (n % 250) as u8 + 2], 9000)),
                netns: None,
                state: "running".into(),
                pid: 1,
                created_at: SystemTime::now(),
                limits: Policy::default().limits(req.memory_mb).unwrap(),
                usage: Default::default(),
                reason: String::new(),
                call: CallSettings::default(),
                alive,
                phases: Default::default(),
                class: req.class,
            };
            Ok((inst, None))
        })
    }

    fn stop<'a>(&'a self, id: &'a str, _why: Option<&'a str>) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            match self.live.lock().unwrap().remove(id) {
                Some(alive) => {
                    alive.clear();
                    Ok(())
                }
                None => Err(Error::InstanceNotFound(id.to_string())),
            }
        })
    }

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        _credentials: Option<&'a fnrt_function::PullCredentials>,
    ) -> BoxFuture<'a, Result<ImageInfo, Error>> {
        Box::pin(async move {
            Ok(ImageInfo { reference: reference.into(), digest: "sha256:0".into(), size_bytes: 1 << 20 })
        })
    }

    fn is_live(&self, id: &str) -> bool {
        self.live.lock().unwrap().contains_key(id)
    }

    fn ended_reason(&self, _id: &str) -> Option<String> {
        Some("exited with status 1".into())
    }

    fn running(&self) -> Vec<Instance> {
        Vec::new()
    }

    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn cached_image_size<'a>(&'a self, _reference: &'a str) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async { Some(1 << 20) })
    }

    fn keep_image(&self, function: &str, image: Option<&str>) {
        let mut kept = self.kept.lock().unwrap();
        match image {
            Some(i) => kept.insert(function.to_string(), i.to_string()),
            None => kept.remove(function),
        };
    }
}

fn pools() -> (Arc<Pools>, Arc<Fake>, tempfile::TempDir) {
    let fake = Arc::new(Fake::default());
    let dir = tempfile::tempdir().unwrap();
    let pools = Pools::new(fake.clone(), Arc::new(Metrics::default()), Policy::default(), dir.path().into());
    (Arc::new(pools), fake, dir)
}

fn spec(name: &str) -> RawSpec {
    RawSpec { name: name.into(), image: "r/i".into(), ..Default::default() }
}

/// Lets the pools' care run for `d` of (paused) time.
async fn run_for(pools: &Arc<Pools>, d: Duration) {
    run_every(pools, d, Duration::from_millis(200)).await;
}

/// Looks after the pools every `tick` of the paused clock for `d`.
async fn run_every(pools: &Arc<Pools>, d: Duration, tick: Duration) {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        pools.tend_all().await;
        tokio::time::sleep(tick).await;
    }
}

#[tokio::test(start_paused = true)]
async fn provisioned_instances_start_at_deploy_and_take_calls_warm() {
    let (pools, fake, _dir) = pools();
    let (view, _) = pools.deploy(RawSpec { provisioned: 2, ..spec("warm") }).await.unwrap();
    assert_eq!((view.ready, fake.live()), (2, 2));
    let pool = pools.get("warm").unwrap();
    let (a, b) = (pools.acquire(&pool).await.unwrap(), pools.acquire(&pool).await.unwrap());
    assert!(!a.cold && !b.cold && a.id != b.id, "two calls, two warm instances");
    assert_eq!(fake.starts_of("warm"), 2);
}

#[tokio::test(start_paused = true)]
async fn calls_past_the_queue_bound_get_queue_full_and_waiters_time_out() {
    let (pools, fake, _dir) = pools();
    let raw = RawSpec { max_instances: 1, queue_max: 2, queue_timeout_ms: 1000, ..spec("busy") };
    pools.deploy(raw).await.unwrap();
    let pool = pools.get("busy").unwrap();
    // The first call cold-starts the one instance it may have and keeps it busy.
    let first = pools.acquire(&pool).await.unwrap();
    assert!(first.cold);
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn({
                let (pools, pool) = (pools.clone(), pool.clone());
                async move { pools.acquire(&pool).await.map(drop) }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    match pools.acquire(&pool).await {
        Err(AcquireError::QueueFull { max: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    for w in waiters {
        match w.await.unwrap() {
            Err(AcquireError::QueueTimeout { max_instances: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fake.starts_of("busy"), 1, "never past max_instances");
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn waiting_calls_start_no_more_instances_than_they_need() {
    let (pools, fake, _dir) = pools();
    pools.deploy(RawSpec { concurrency: 4, max_instances: 10, ..spec("burst") }).await.unwrap();
    let pool = pools.get("burst").unwrap();
    let calls = (0..8).map(|_| {
        let (pools, pool) = (pools.clone(), pool.clone());
        tokio::spawn(async move { pools.acquire(&pool).await.unwrap() })
    });
    let leases = futures_util::future::join_all(calls).await;
    assert_eq!(leases.len(), 8);
    assert_eq!(fake.starts_of("burst"), 2, "8 calls of 4 at a time each need 2 instances");
}

#[tokio::test(start_paused = true)]
async fn idle_on_demand_instances_stop_after_the_keep_alive_so_the_function_scales_to_zero() {
    let (pools, fake, _dir) = pools();
    pools.deploy(RawSpec { keep_alive_s: 5, ..spec("idle") }).await.unwrap();
    let pool = pools.get("idle").unwrap();
    drop(pools.acquire(&pool).await.unwrap());
    assert_eq!(fake.live(), 1);
    run_for(&pools, Duration::from_secs(3)).await;
    assert_eq!(fake.live(), 1, "kept within the keep-alive");
    run_for(&pools, Duration::from_secs(3)).await;
    assert_eq!(fake.live(), 0, "scaled to zero");
}

#[tokio::test(start_paused = true)]
async fn provisioned_instances_that_keep_crashing_are_restarted_with_back_off() {
    let (pools, fake, _dir) = pools();
    pools.deploy(RawSpec { provisioned: 1, ..spec("loop") }).await.unwrap();
    // Every instance ends at once: without back-off one would start every tick (5/s).
    let mut ends = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(8);
    while tokio::time::Instant::now() < end {
        if fake.live() > 0 {
            fake.crash_all();
            ends += 1;
        }
        pools.tend_all().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 1 s, 2 s, 4 s apart: 4 or 5 starts in 8 s (about 40 without back-off).
    let starts = fake.starts_of("loop");
    assert!((3..=5).contains(&starts), "{starts} starts, {ends} ends");
    let last = pools.list()[0].last_error.clone();
    assert!(last.contains("failures in a row") && last.contains("exited with status 1"), "{last}");
}

#[tokio::test(start_paused = true)]
async fn an_update_starts_the_new_instances_before_the_old_retire_and_a_failed_one_keeps_the_old() {
    let (pools, fake, _dir) = pools();
    pools.deploy(RawSpec { provisioned: 1, version: "1".into(), ..spec("roll") }).await.unwrap();
    let pool = pools.get("roll").unwrap();
    let old = pools.acquire(&pool).await.unwrap();
    let (view, _) =
        pools.update(RawSpec { provisioned: 1, version: "2".into(), ..spec("roll") }).await.unwrap();
    assert_eq!(view.spec.version, "2");
    assert_eq!(fake.live(), 2, "the new instance runs while the old finishes its call");
    let new = pools.acquire(&pool).await.unwrap();
    assert_ne!(new.id, old.id, "new calls go to the new instance");
    drop((old, new));
    run_for(&pools, Duration::from_millis(400)).await;
    assert_eq!(fake.live(), 1, "the old one retired once idle");
    fake.failing.store(1, Ordering::SeqCst);
    let err = pools.update(RawSpec { provisioned: 1, version: "3".into(), ..spec("roll") }).await;
    assert!(err.is_err());
    assert_eq!((pool.spec().version.as_str(), fake.live()), ("2", 1), "the old spec keeps serving");
}

#[tokio::test(start_paused = true)]
async fn instances_started_on_their_own_share_calls_and_are_replaced_only_when_all_ended() {
    let (pools, fake, _dir) = pools();
    let req = |timeout_ms| StartRequest {
        function: "solo".into(),
        display_name: String::new(),
        image: "r/i".into(),
        env: Default::default(),
        secrets: Default::default(),
        version: String::new(),
        namespace: String::new(),
        memory_mb: 0,
        timeout_ms,
        process: Default::default(),
        credentials: None,
        class: Default::default(),
    };
    let (a, _) = pools.start_instance(req(1500)).await.unwrap();
    let (b, _) = pools.start_instance(req(1500)).await.unwrap();
    let pool = pools.get("solo").unwrap();
    assert_eq!(pool.spec().timeout, Duration::from_millis(1500));
    let (x, y) = (pools.acquire(&pool).await.unwrap(), pools.acquire(&pool).await.unwrap());
    assert_ne!(x.id, y.id, "least busy first");
    drop((x, y));
    assert!(pools.list().is_empty(), "not a deployed function");
    // Both crash: the next call (before the pools' care saw it) starts one like the last.
    fake.crash_all();
    let lease = pools.acquire(&pool).await.unwrap();
    assert!(lease.cold && *lease.id != *a.id && *lease.id != *b.id);
    assert_eq!(fake.starts_of("solo"), 3);
    drop(lease);
    // The operator stops the last one: calls get no instance.
    let id = fake.live.lock().unwrap().keys().next().cloned().unwrap();
    pools.stop_instance(&id).await.unwrap();
    assert!(pools.get("solo").is_none());
    // A deployed function's instances are not started this way.
    pools.deploy(spec("dep")).await.unwrap();
    assert!(matches!(
        pools.start_instance(StartRequest { function: "dep".into(), ..req(0) }).await,
        Err(Error::FunctionDeployed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_class_the_node_does_not_offer_is_refused_before_anything_starts() {
    let (pools, fake, _dir) = pools();
    let gvisor = RawSpec { provisioned: 2, sandbox_class: "gvisor".into(), ..spec("gv") };
    let e = pools.deploy(gvisor.clone()).await.unwrap_err().to_string();
    assert!(e.contains("sandbox_class") && e.contains("gvisor"), "{e}");
    assert_eq!((fake.starts_of("gv"), pools.list().len()), (0, 0), "nothing started, nothing kept");
    pools.deploy(RawSpec { provisioned: 1, ..spec("gv") }).await.unwrap();
    let e = pools.update(gvisor).await.unwrap_err().to_string();
    assert!(e.contains("sandbox_class"), "{e}");
    assert_eq!(fake.starts_of("gv"), 1, "the runc instance keeps serving, no other started");
}

#[tokio::test(start_paused = true)]
async fn an_accelerated_function_keeps_its_image_while_deployed() {
    let (pools, fake, _dir) = pools();
    let kept = |f: &Fake| f.kept.lock().unwrap().clone();
    pools.deploy(RawSpec { keep_image: true, ..spec("fast") }).await.unwrap();
    pools.deploy(spec("plain")).await.unwrap();
    assert_eq!(kept(&fake), HashMap::from([("fast".to_string(), "r/i".to_string())]));
    // Acceleration turned off (same instances), then on again, then the function goes.
    pools.update(RawSpec { keep_image: false, ..spec("fast") }).await.unwrap();
    assert!(kept(&fake).is_empty());
    pools.update(RawSpec { keep_image: true, ..spec("fast") }).await.unwrap();
    assert_eq!(kept(&fake).len(), 1);
    pools.remove("fast").unwrap();
    assert!(kept(&fake).is_empty(), "a removed function keeps nothing");
}

#[tokio::test(start_paused = true)]
async fn a_function_called_every_30_minutes_learns_to_be_started_just_before_its_calls() {
    let (pools, fake, _dir) = pools();
    pools.deploy(RawSpec { keep_alive_s: 600, ..spec("periodic") }).await.unwrap();
    let pool = pools.get("periodic").unwrap();
    let gap = Duration::from_secs(30 * 60 + 10);
    let mut cold = Vec::new();
    for _ in 0..14 {
        let lease = pools.acquire(&pool).await.unwrap();
        cold.push(lease.cold);
        drop(lease);
        run_every(&pools, Duration::from_secs(20 * 60), Duration::from_secs(5)).await;
        // Learned (10 gaps): nothing is kept between calls; with the fixed 10-minute
        // keep-alive, nothing either.
        assert_eq!(fake.live(), 0, "20 minutes after a call");
        run_every(&pools, gap - Duration::from_secs(20 * 60), Duration::from_secs(5)).await;
    }
    // Every call but the first 11 (the fixed keep-alive while 10 gaps are learned) found an
    // instance started ahead of it (prewarm at 27 minutes).
    assert!(cold[..11].iter().all(|c| *c), "{cold:?}");
    assert!(cold[11..].iter().all(|c| !*c), "{cold:?}");
    assert_eq!(fake.live(), 1, "started ahead of the next call");
}
