//! Reconcile and deploy against fake agents (the [`AgentLink`] seam): placement on the
//! agents with room, spreading warm instances, removal of what is no longer wanted,
//! operators' own functions left alone, a failed deploy leaving nothing behind, a
//! function only on agents that offer its sandbox class.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use fnrt_proto::agent::v1 as apb;
use fnrt_proto::controlplane::v1 as pb;
use tonic::Status;

use super::agents::Agent;
use super::link::{AgentLink, Call};
use super::Scheduler;
use crate::model::{Deployed, Function, FunctionStatus, Namespace};
use crate::state::{Change, State};
use crate::store::RedbStore;

/// A fake agent: records every call; refuses deploys, never answers, or fails as an
/// unreachable agent does, when told to.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    /// The sandbox class of each spec deployed or updated.
    classes: Mutex<Vec<String>>,
    refuse_deploys: bool,
    hangs: bool,
    unreachable: bool,
}

impl Fake {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("calls").clone()
    }
    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
    fn classes(&self) -> Vec<String> {
        self.classes.lock().expect("classes").clone()
    }
}

impl AgentLink for Fake {
    fn deploy(&self, spec: apb::FunctionSpec) -> Call<'_, Vec<String>> {
        self.record(format!("deploy {} p{} m{}", spec.name, spec.provisioned, spec.max_instances));
        self.classes.lock().expect("classes").push(spec.sandbox_class.clone());
        let (refuse, hangs, unreachable) = (self.refuse_deploys, self.hangs, self.unreachable);
        Box::pin(async move {
            if hangs {
                std::future::pending::<()>().await;
            }
            if unreachable {
                return Err(Status::unavailable("connection refused"));
            }
            if refuse {
                Err(Status::resource_exhausted("full"))
            } else {
                Ok(vec![])
            }
        })
    }
    fn update(&self, spec: apb::FunctionSpec) -> Call<'_, Vec<String>> {
        self.record(format!("update {} p{} m{}", spec.name, spec.provisioned, spec.max_instances));
        self.classes.lock().expect("classes").push(spec.sandbox_class.clone());
        Box::pin(async { Ok(vec![]) })
    }
    fn remove(&self, name: &str) -> Call<'_, ()> {
        self.record(format!("remove {name}"));
        Box::pin(async { Ok(()) })
    }
    fn prefetch(&self, image: &str, _credentials: Option<apb::RegistryCredentials>) -> Call<'_, ()> {
        self.record(format!("prefetch {image}"));
        Box::pin(async { Ok(()) })
    }
    fn logs(&self, _req: apb::StreamLogsRequest) -> Call<'_, super::link::LogStream> {
        Box::pin(async { Ok(Box::pin(futures_util::stream::empty()) as super::link::LogStream) })
    }
    fn invoke(&self, req: apb::InvokeRequest) -> Call<'_, apb::InvokeResponse> {
        self.record(format!("invoke {} {}", req.function, req.trigger_source));
        Box::pin(async { Ok(apb::InvokeResponse { status: 200, ..Default::default() }) })
    }
}

struct World {
    scheduler: Arc<Scheduler>,
    state: Arc<State>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(&dir.path().join("state.redb")).expect("store");
    let state = State::open(Arc::new(store)).await.expect("state");
    let registry = fnrt_registry::Registry::new(Default::default(), "test").expect("registry client");
    let scheduler = Arc::new(Scheduler::new(Arc::default(), state.clone(), registry));
    World { scheduler, state, _dir: dir }
}

impl World {
    /// An agent of `memory_mb` and 2 CPUs that runs `functions`.
    fn agent(&self, node: &str, memory_mb: u64, functions: &[&str], link: Arc<Fake>) {
        let report = pb::Report {
            cpus: 2,
            memory_bytes: memory_mb << 20,
            functions: functions
                .iter()
                .map(|n| pb::FunctionLoad { name: n.to_string(), ready: 1, ..Default::default() })
                .collect(),
            ..Default::default()
        };
        let mut agent = Agent {
            node_id: String::new(),
            node: node.into(),
            dataplane: format!("{node}:8080"),
            dataplane_tls: false,
            report: pb::Report::default(),
            names: Default::default(),
            last_seen: Instant::now(),
            lost: false,
            link,
        };
        agent.set_report(report);
        self.scheduler.agents_mut().insert(node.into(), agent);
    }

    /// Agent `node` offers `classes` from its next report on.
    fn offers(&self, node: &str, classes: &[&str]) {
        let mut agents = self.scheduler.agents_mut();
        let a = agents.get_mut(node).expect("agent");
        a.report.sandbox_classes = classes.iter().map(|c| c.to_string()).collect();
    }

    /// Pins function `id` to a digest (its deploy asks no registry) and makes it pending.
    async fn pin_pending(&self, id: &str) {
        self.state
            .write(|d| {
                let mut f = d.functions.get(id).cloned().expect("function");
                f.pushed_digest = Some(format!("sha256:{}", "a".repeat(64)));
                f.status = FunctionStatus::Pending;
                Ok((vec![Change::Function(f)], ()))
            })
            .await
            .expect("write");
    }

    /// Function `id` asks for sandbox `class`, in its record and in what it deployed.
    async fn set_class(&self, id: &str, class: fnrt_function::SandboxClass) {
        self.state
            .write(|d| {
                let mut f = d.functions.get(id).cloned().expect("function");
                f.sandbox_class = Some(class);
                if let Some(deployed) = f.deployed.as_mut() {
                    deployed.sandbox_class = class;
                }
                Ok((vec![Change::Function(f)], ()))
            })
            .await
            .expect("write");
    }

    /// A deployed function of `memory_mb` with `min`..`max` instances; its agent name.
    async fn function(&self, id: &str, memory_mb: u32, min: u32, max: u32) -> String {
        let now = Utc::now();
        let ns = Namespace {
            registry_credentials: None,
            sandbox_class: Default::default(),
            id: "ns".into(),
            name: "ns".into(),
            description: String::new(),
            project_id: String::new(),
            environment_variables: BTreeMap::new(),
            secrets: vec![],
            tags: vec![],
            created_at: now,
            updated_at: now,
        };
        let mut f = Function {
            id: id.into(),
            name: format!("f{}", &id[..4]),
            namespace_id: "ns".into(),
            description: String::new(),
            registry_image: "127.0.0.1:5000/fnrt/echo:latest".into(),
            image_acceleration: false,
            environment_variables: BTreeMap::new(),
            secrets: vec![],
            min_scale: min,
            max_scale: max,
            memory_limit: memory_mb,
            timeout_s: 30,
            privacy: "public".into(),
            http_option: "enabled".into(),
            runtime: String::new(),
            sandbox: "v2".into(),
            handler: String::new(),
            tags: vec![],
            status: FunctionStatus::Ready,
            error_message: None,
            deploys: 1,
            created_at: now,
            updated_at: now,
            ready_at: Some(now),
            deployed: None,
            pushed_digest: None,
            code_digest: None,
            build_message: None,
            process: Default::default(),
            runtime_message: None,
            event: false,
            sandbox_class: None,
        };
        f.deployed = Some(Deployed::of(&f, &ns));
        let name = f.agent_name();
        self.state
            .write(|_| Ok((vec![Change::Namespace(ns.clone()), Change::Function(f.clone())], ())))
            .await
            .expect("write");
        name
    }
}

const F1: &str = "11111111-1111-4111-8111-111111111111";
const F2: &str = "22222222-2222-4222-8222-222222222222";

#[tokio::test]
async fn reconcile_puts_a_function_on_the_agent_with_room_once() {
    let w = world().await;
    let (small, big) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
    w.agent("small", 128, &[], small.clone());
    w.agent("big", 4096, &[], big.clone());
    let name = w.function(F1, 512, 1, 3).await;
    w.scheduler.reconcile().await;
    assert_eq!(big.calls(), vec![format!("deploy {name} p1 m3")]);
    assert!(small.calls().is_empty(), "{:?}", small.calls());
    // Nothing changed: the next pass asks nothing of anyone.
    w.scheduler.reconcile().await;
    assert_eq!(big.calls().len(), 1, "{:?}", big.calls());
}

#[tokio::test]
async fn warm_instances_are_spread_and_a_scale_change_is_an_update() {
    let w = world().await;
    let (a, b) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
    w.agent("a", 4096, &[], a.clone());
    w.agent("b", 4096, &[], b.clone());
    let name = w.function(F1, 256, 2, 4).await;
    w.scheduler.reconcile().await;
    assert_eq!(a.calls(), vec![format!("deploy {name} p1 m2")]);
    assert_eq!(b.calls(), vec![format!("deploy {name} p1 m2")]);
    w.state
        .write(|d| {
            let mut f = d.functions.get(F1).cloned().expect("function");
            f.max_scale = 6;
            Ok((vec![Change::Function(f)], ()))
        })
        .await
        .expect("write");
    w.scheduler.reconcile().await;
    assert_eq!(a.calls().last(), Some(&format!("update {name} p1 m3")));
    assert_eq!(b.calls().last(), Some(&format!("update {name} p1 m3")));
}

#[tokio::test]
async fn what_is_no_longer_wanted_goes_and_operators_functions_stay() {
    let w = world().await;
    let a = Arc::new(Fake::default());
    let stale = fnrt_function::naming::on_agents(F2);
    w.agent("a", 4096, &[stale.as_str(), "operators-own"], a.clone());
    let name = w.function(F1, 256, 1, 1).await;
    w.scheduler.reconcile().await;
    let calls = a.calls();
    assert!(calls.contains(&format!("deploy {name} p1 m1")), "{calls:?}");
    assert!(calls.contains(&format!("remove {stale}")), "{calls:?}");
    assert!(!calls.iter().any(|c| c.contains("operators-own")), "{calls:?}");
}

#[tokio::test]
async fn a_deploy_refused_by_one_agent_is_taken_off_the_others() {
    let w = world().await;
    let ok = Arc::new(Fake::default());
    let full = Arc::new(Fake { refuse_deploys: true, ..Fake::default() });
    w.agent("ok", 4096, &[], ok.clone());
    w.agent("full", 4096, &[], full.clone());
    // A digest-pinned image: the deploy asks no registry.
    w.function(F1, 256, 2, 2).await;
    w.pin_pending(F1).await;
    w.scheduler.run_deploy(F1).await;
    let f = w.state.read(|d| d.functions.get(F1).cloned()).expect("function");
    assert_eq!(f.status, FunctionStatus::Error);
    let message = f.error_message.unwrap_or_default();
    assert!(message.contains("agent full: full"), "{message}");
    let name = fnrt_function::naming::on_agents(F1);
    assert_eq!(ok.calls(), vec![format!("deploy {name} p1 m1"), format!("remove {name}")]);
}

#[tokio::test]
async fn a_trigger_call_goes_to_the_agent_that_runs_the_function() {
    let w = world().await;
    let (a, b) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
    let name = fnrt_function::naming::on_agents(F1);
    w.agent("a", 4096, &[], a.clone());
    w.agent("b", 4096, &[name.as_str()], b.clone());
    assert_eq!(w.scheduler.invoke(F1, b"{}".to_vec(), "timer").await.expect("invoke"), 200);
    assert_eq!(b.calls(), vec![format!("invoke {name} timer")]);
    assert!(a.calls().is_empty());
    let err = w.scheduler.invoke(F2, vec![], "timer").await.expect_err("not running");
    assert!(err.to_string().contains("runs on no agent"), "{err}");
}

#[tokio::test]
async fn a_failing_cron_is_in_error_with_the_reason_until_a_run_succeeds() {
    let w = world().await;
    let cron = crate::model::Cron {
        id: "c1".into(),
        function_id: F1.into(),
        schedule: "* * * * *".into(),
        args: Default::default(),
        name: "nightly".into(),
        created_at: Utc::now(),
    };
    w.scheduler.clone().fire(cron.clone(), Utc::now()).await;
    let why = w.scheduler.cron_error("c1").expect("the failed run is kept");
    assert!(why.contains("runs on no agent"), "{why}");
    let view = crate::rest::views::cron(&cron, "ready", w.scheduler.cron_error("c1"));
    assert_eq!(
        (view["status"].as_str(), view["error_message"].as_str()),
        (Some("error"), Some(why.as_str()))
    );
    let name = fnrt_function::naming::on_agents(F1);
    w.agent("b", 4096, &[name.as_str()], Arc::new(Fake::default()));
    w.scheduler.clone().fire(cron, Utc::now()).await;
    assert_eq!(w.scheduler.cron_error("c1"), None, "a run that succeeds clears it");
}

#[tokio::test]
async fn a_start_failure_an_agent_reports_is_told_with_its_node() {
    let w = world().await;
    let name = fnrt_function::naming::on_agents(F1);
    w.agent("b", 4096, &[name.as_str()], Arc::new(Fake::default()));
    assert_eq!(w.scheduler.start_failure(&name), None);
    w.scheduler.agents_mut().get_mut("b").expect("agent b").report.functions[0].last_error =
        "the instance exited with status 3 before listening on :9000".into();
    let told = w.scheduler.start_failure(&name).expect("the failure");
    assert_eq!(told, "on b: the instance exited with status 3 before listening on :9000");
}

#[tokio::test]
async fn a_code_function_is_creating_while_its_image_is_built() {
    let w = world().await;
    assert!(!w.scheduler.is_building(F1));
    {
        let _b = super::deploy::Building::new(&w.scheduler, F1);
        assert!(w.scheduler.is_building(F1));
        assert!(!w.scheduler.is_building(F2));
    }
    assert!(!w.scheduler.is_building(F1), "a build that ends, however, is no longer creating");
}

#[tokio::test]
async fn a_hung_agent_delays_no_other_and_a_failing_one_trips_its_breaker() {
    let w = world().await;
    let hung = Arc::new(Fake { hangs: true, ..Fake::default() });
    let fine = Arc::new(Fake::default());
    w.agent("hung", 4096, &[], hung.clone());
    w.agent("fine", 4096, &[], fine.clone());
    let name = w.function(F1, 256, 2, 4).await;
    let t0 = Instant::now();
    w.scheduler.reconcile().await;
    assert!(t0.elapsed() < std::time::Duration::from_secs(5), "the pass waited {:?}", t0.elapsed());
    assert_eq!(fine.calls(), vec![format!("deploy {name} p1 m2")]);
    // The hung agent's call still runs: the next pass leaves it out and ends at once.
    let t1 = Instant::now();
    w.scheduler.reconcile().await;
    assert!(t1.elapsed() < std::time::Duration::from_millis(500), "{:?}", t1.elapsed());
    assert_eq!(hung.calls().len(), 1, "{:?}", hung.calls());

    // An unreachable agent: after three failed calls its breaker opens and passes call it no more.
    let w = world().await;
    let down = Arc::new(Fake { unreachable: true, ..Fake::default() });
    w.agent("down", 4096, &[], down.clone());
    w.function(F2, 256, 1, 2).await;
    for _ in 0..5 {
        w.scheduler.reconcile().await;
    }
    assert_eq!(down.calls().len(), super::breaker::TRIP_AFTER as usize, "{:?}", down.calls());
}

#[tokio::test]
async fn a_gvisor_function_goes_only_to_agents_offering_gvisor_and_its_spec_says_so() {
    use fnrt_function::SandboxClass;
    let w = world().await;
    let (runc, gvisor) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
    // The runc node has far more room: placement would prefer it but for the class.
    w.agent("runc", 16384, &[], runc.clone());
    w.agent("gvisor", 1024, &[], gvisor.clone());
    w.offers("gvisor", &["runc", "gvisor"]);
    let name = w.function(F1, 256, 2, 2).await;
    w.set_class(F1, SandboxClass::Gvisor).await;
    w.scheduler.reconcile().await;
    assert_eq!(gvisor.calls(), vec![format!("deploy {name} p2 m2")]);
    assert_eq!(gvisor.classes(), vec!["gvisor".to_string()]);
    assert!(runc.calls().is_empty(), "{:?}", runc.calls());

    // A runc function goes to the roomier node, and its spec names runc.
    let other = w.function(F2, 256, 1, 1).await;
    w.scheduler.reconcile().await;
    assert_eq!(runc.calls(), vec![format!("deploy {other} p1 m1")]);
    assert_eq!(runc.classes(), vec!["runc".to_string()]);
}

#[tokio::test]
async fn a_function_whose_class_changes_moves_to_a_node_that_offers_it() {
    use fnrt_function::SandboxClass;
    let w = world().await;
    let (runc, gvisor) = (Arc::new(Fake::default()), Arc::new(Fake::default()));
    let name = fnrt_function::naming::on_agents(F1);
    w.agent("runc", 16384, &[name.as_str()], runc.clone());
    w.agent("gvisor", 1024, &[], gvisor.clone());
    w.offers("gvisor", &["gvisor"]);
    w.function(F1, 256, 1, 1).await;
    w.set_class(F1, SandboxClass::Gvisor).await;
    w.scheduler.reconcile().await;
    assert_eq!(gvisor.calls(), vec![format!("deploy {name} p1 m1")]);
    assert_eq!(runc.calls(), vec![format!("remove {name}")]);
}

#[tokio::test]
async fn a_deploy_no_agent_can_take_for_its_class_fails_saying_what_agents_offer() {
    use fnrt_function::SandboxClass;
    let w = world().await;
    let runc = Arc::new(Fake::default());
    // An agent older than classes reports none: it offers runc.
    w.agent("old", 4096, &[], runc.clone());
    w.function(F1, 256, 1, 1).await;
    w.set_class(F1, SandboxClass::Gvisor).await;
    w.pin_pending(F1).await;
    w.scheduler.run_deploy(F1).await;
    let f = w.state.read(|d| d.functions.get(F1).cloned()).expect("function");
    assert_eq!(f.status, FunctionStatus::Error);
    assert_eq!(
        f.error_message.as_deref(),
        Some("no agent offers sandbox class gvisor (1 agents connected, offering runc)")
    );
    assert!(runc.calls().is_empty(), "{:?}", runc.calls());
    assert_eq!(w.scheduler.offered().classes.into_iter().collect::<Vec<_>>(), vec![SandboxClass::Runc]);
}
