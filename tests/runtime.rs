//! The instance runtime against the real containerd, runc and CNI: limits seen from inside
//! the instance and enforced by the kernel (memory, CPU, pids); exits, crashes and OOM
//! kills seen through containerd's events, reported and cleaned up.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fnrt_agent::Containerd;
use fnrt_proto::agent::v1::{Instance, ListInstancesRequest, StartInstanceRequest};
use fnrt_tests::{image, namespace_contents, node_leftovers, TestAgent};

async fn start(
    agent: &mut TestAgent,
    class: &str,
    function: &str,
    memory_mb: u32,
) -> (Instance, Vec<String>) {
    let req = StartInstanceRequest {
        function: function.into(),
        sandbox_class: class.into(),
        image: image("echo"),
        env: HashMap::new(),
        memory_mb,
        // The fixture's actions (a 3 s spin, filling /tmp) take longer than the default 3 s.
        timeout_ms: 60_000,
        ..Default::default()
    };
    let r = agent.client.start_instance(req).await.unwrap().into_inner();
    (r.instance.unwrap(), r.warnings)
}

/// Calls a `/_fixture/` action on a function and parses its JSON answer.
async fn act(agent: &TestAgent, function: &str, action: &str) -> serde_json::Value {
    let (status, body) = agent.call(function, &format!("/_fixture/{action}"), "").await;
    assert_eq!(status, 200, "{action}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{action}: {e}: {body}"))
}

/// A cgroup file of the instance as the instance itself sees it (v1 or v2 layout).
async fn own_cgroup(agent: &TestAgent, function: &str, v1: &str, v2: &str) -> String {
    for path in [v1, v2] {
        let r = act(agent, function, &format!("read?path={path}")).await;
        if let Some(t) = r["text"].as_str() {
            return t.trim().to_string();
        }
    }
    panic!("neither {v1} nor {v2} is readable inside the instance");
}

async fn instance(agent: &mut TestAgent, id: &str) -> Instance {
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    list.instances.into_iter().find(|i| i.id == id).unwrap_or_else(|| panic!("{id} is not listed"))
}

async fn memory_cpu_and_pids_limits_are_what_the_instance_sees(class: &'static str) {
    let mut agent = TestAgent::start_class(class, |_| {}).await;
    let (inst, warnings) = start(&mut agent, class, "limits", 448).await;
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(inst.sandbox_class, class);
    // Which kernel answers the function's system calls, as the function sees it.
    let version =
        act(&agent, "limits", "read?path=/proc/version").await["text"].as_str().unwrap().to_string();
    let host = std::fs::read_to_string("/proc/version").unwrap();
    match class {
        "gvisor" => assert!(version != host && version.starts_with("Linux version 4.4.0"), "{version}"),
        _ => assert_eq!(version, host),
    }
    assert_eq!((inst.memory_mb, inst.cpu_millis, inst.pids_limit), (448, 250, 1024));
    if class == "gvisor" {
        // gVisor's kernel shows its own cgroups, not the node's: it sizes its memory to the
        // limit (MemTotal), and the node's cgroup of the sandbox enforces the limits.
        let meminfo = act(&agent, "limits", "read?path=/proc/meminfo").await;
        let total = meminfo["text"]
            .as_str()
            .unwrap()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .unwrap()
            .to_string();
        assert_eq!(total.split_whitespace().nth(1), Some((448u64 * 1024).to_string().as_str()), "{total}");
        let node = |v1: &str, v2: &str| host_cgroup(&agent.cfg.namespace, &inst.id, v1, v2);
        assert_eq!(node("memory/memory.limit_in_bytes", "memory.max"), (448u64 << 20).to_string());
        // Its start-up CPU lasts one CFS period past ready under gVisor.
        let deadline = Instant::now() + Duration::from_secs(2);
        let cpu = loop {
            let cpu = node("cpu/cpu.cfs_quota_us", "cpu.max");
            if cpu.starts_with("25000") || Instant::now() > deadline {
                break cpu;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(cpu == "25000" || cpu == "25000 100000", "cpu quota {cpu}");
        assert_eq!(node("pids/pids.max", "pids.max"), "1024");
        agent.cleanup().await;
        return;
    }
    let mem = own_cgroup(
        &agent,
        "limits",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory.max",
    )
    .await;
    assert_eq!(mem, (448u64 << 20).to_string());
    let cpu =
        own_cgroup(&agent, "limits", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max").await;
    assert!(cpu == "25000" || cpu == "25000 100000", "cpu quota {cpu}");
    let pids = own_cgroup(&agent, "limits", "/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max").await;
    assert_eq!(pids, "1024");
    agent.cleanup().await;
}

/// A cgroup file of an instance as the node has it: `v1` under the controller's
/// hierarchy (`memory/memory.limit_in_bytes`), or `v2` in the unified one.
fn host_cgroup(namespace: &str, id: &str, v1: &str, v2: &str) -> String {
    let (controller, file) = v1.split_once('/').unwrap();
    for path in [
        format!("/sys/fs/cgroup/{controller}/fnrt/{namespace}-{id}/{file}"),
        format!("/sys/fs/cgroup/fnrt/{namespace}-{id}/{v2}"),
    ] {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return text.trim().to_string();
        }
    }
    panic!("no cgroup file {v1} or {v2} of instance {id}");
}

/// The CFS quota of the first cgroup of this agent's instances found on the node (v1 or
/// v2 layout), read from the host.
fn host_cpu_quota(namespace: &str) -> Option<String> {
    for (dir, file) in [
        ("/sys/fs/cgroup/cpu/fnrt", "cpu.cfs_quota_us"),
        ("/sys/fs/cgroup/cpu,cpuacct/fnrt", "cpu.cfs_quota_us"),
        ("/sys/fs/cgroup/fnrt", "cpu.max"),
    ] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&format!("{namespace}-")) {
                return std::fs::read_to_string(e.path().join(file)).ok().map(|t| t.trim().to_string());
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_has_a_whole_vcpu_until_it_is_ready_then_its_share() {
    // An instance that never listens stays in its start: its quota is the start-up CPU
    // (1,000 thousandths by default), not its share of 0.1 vCPU.
    let mut agent = TestAgent::start_with(|c| c.health_timeout_ms = 3_000).await;
    let namespace = agent.cfg.namespace.clone();
    let req = StartInstanceRequest {
        function: "slow".into(),
        image: fnrt_tests::image("never-listens"),
        memory_mb: 128,
        ..Default::default()
    };
    let mut client = agent.client.clone();
    let starting = tokio::spawn(async move { client.start_instance(req).await });
    let deadline = Instant::now() + Duration::from_secs(3);
    // runc makes the cgroup, then writes its limits: until then the quota reads as none.
    let boosted = loop {
        match host_cpu_quota(&namespace) {
            Some(q) if q != "-1" && !q.starts_with("max") => break q,
            q if Instant::now() > deadline => panic!("no quota on the starting instance's cgroup: {q:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(boosted == "100000" || boosted == "100000 100000", "quota while starting: {boosted}");
    assert_eq!(starting.await.unwrap().unwrap_err().code(), tonic::Code::DeadlineExceeded);
    // Ready, it has its share: 128 MB buys 0.1 vCPU (the floor).
    let (inst, _) = start(&mut agent, "runc", "ready", 128).await;
    assert_eq!(inst.cpu_millis, 100);
    let cpu =
        own_cgroup(&agent, "ready", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max").await;
    assert!(cpu == "10000" || cpu == "10000 100000", "quota once ready: {cpu}");
    assert_eq!(
        host_cpu_quota(&namespace).as_deref().map(|q| q.split(' ').next().unwrap_or("")),
        Some("10000")
    );
    agent.cleanup().await;
}

/// A gVisor instance keeps its start-up CPU one CFS period past ready (its kernel is still
/// finishing its start; agent/src/instance/start.rs), then has its share like any other.
#[tokio::test(flavor = "multi_thread")]
async fn a_gvisor_instance_has_its_share_soon_after_it_is_ready() {
    let mut agent = TestAgent::start_class("gvisor", |_| {}).await;
    let namespace = agent.cfg.namespace.clone();
    let (inst, _) = start(&mut agent, "gvisor", "ready", 128).await;
    assert_eq!(inst.cpu_millis, 100);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let quota = host_cpu_quota(&namespace);
        if quota.as_deref().map(|q| q.split(' ').next().unwrap_or("")) == Some("10000") {
            break;
        }
        assert!(Instant::now() < deadline, "quota 2 s after ready: {quota:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_below_what_the_image_calls_for_is_a_warning_and_bad_memory_an_error() {
    let mut agent = TestAgent::start().await;
    let (_, warnings) = start(&mut agent, "runc", "small", 128).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("memory 128 MB is below what an image of 1 MB calls for (256 to 512 MB)"));
    let req = StartInstanceRequest {
        function: "bad".into(),
        image: image("echo"),
        env: HashMap::new(),
        memory_mb: 10,
        ..Default::default()
    };
    let err = agent.client.start_instance(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("memory_mb 10 is out of range: use 64 to 32768 MB"), "{}", err.message());
    agent.cleanup().await;
}

async fn a_busy_loop_with_a_quarter_vcpu_uses_about_a_quarter_of_a_core(class: &'static str) {
    let mut agent = TestAgent::start_class(class, |_| {}).await;
    let (inst, _) = start(&mut agent, class, "spin", 448).await;
    let before = instance(&mut agent, &inst.id).await.cpu_used_ns;
    let t0 = Instant::now();
    act(&agent, "spin", "spin?ms=3000").await;
    let wall = t0.elapsed();
    let used = instance(&mut agent, &inst.id).await.cpu_used_ns - before;
    let cores = used as f64 / wall.as_nanos() as f64;
    // CFS hands out the quota per 100 ms period; over 3 s the share lands close to 0.25.
    assert!((0.20..=0.30).contains(&cores), "used {cores:.3} of a core (target 0.25 ± 0.05)");
    agent.cleanup().await;
}

async fn a_fork_bomb_stops_at_the_pids_limit_and_the_neighbours_keep_working(class: &'static str) {
    let mut agent = TestAgent::start_class(class, |c| c.pids_limit = 64).await;
    let (bomb, _) = start(&mut agent, class, "bomb", 128).await;
    let (neighbour, _) = start(&mut agent, class, "calm", 128).await;
    if class == "gvisor" {
        // gVisor's processes are its kernel's, not the node's: the pids limit counts the
        // sandbox's threads on the node, and a sandbox that needs one more than it allows
        // ends, as one past its memory does.
        let (status, body) = agent.call("bomb", "/_fixture/fork?n=500", "").await;
        if status == 200 {
            let r: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(r["started"].as_u64().unwrap() < 500, "{r}");
        } else {
            assert_eq!(status, 502, "{body}");
            let ended = wait_for_state(&mut agent, &bomb.id, "crashed").await;
            assert!(!ended.reason.is_empty());
        }
    } else {
        let r = act(&agent, "bomb", "fork?n=500").await;
        let started = r["started"].as_u64().unwrap();
        assert!(started < 64, "started {started} children with a pids limit of 64");
        assert!(r["error"].as_str().unwrap().contains("Resource temporarily unavailable"), "{r}");
    }
    let (status, _) = agent.call("calm", "/still-there", "").await;
    assert_eq!(status, 200);
    assert_eq!(instance(&mut agent, &neighbour.id).await.state, "running");
    tokio::time::sleep(Duration::from_millis(10)).await;
    agent.cleanup().await;
}

/// Polls ListInstances until `id` is in `state`, for up to 10 s.
async fn wait_for_state(agent: &mut TestAgent, id: &str, state: &str) -> Instance {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
        let found = list.instances.into_iter().find(|i| i.id == id);
        match found {
            Some(i) if i.state == state => return i,
            other if Instant::now() > deadline => panic!("{id} never reached {state}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until nothing of instance `id` is left: container, snapshot, netns, CNI, cgroup.
async fn wait_removed(agent: &TestAgent, id: &str) {
    let cd = Containerd::connect(&agent.cfg.containerd_socket, &agent.cfg.namespace).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left: Vec<String> =
            namespace_contents(&cd).await.into_iter().filter(|t| t.ends_with(&format!(" {id}"))).collect();
        left.extend(node_leftovers(&format!("{}-{id}", agent.cfg.namespace)));
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "instance {id} left {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_instance_past_its_memory_is_oom_killed_reported_and_removed_and_neighbours_stay(
    class: &'static str,
) {
    let mut agent = TestAgent::start_class(class, |_| {}).await;
    let (victim, _) = start(&mut agent, class, "hungry", 128).await;
    let (neighbour, _) = start(&mut agent, class, "calm", 128).await;
    let (status, body) = agent.call("hungry", "/_fixture/alloc?mb=300", "").await;
    assert_eq!(status, 502, "{body}");
    let ended = wait_for_state(&mut agent, &victim.id, "oom-killed").await;
    assert!(ended.reason.contains("out of memory: it used all of its 128 MB"), "{}", ended.reason);
    wait_removed(&agent, &victim.id).await;
    assert_eq!(agent.call("calm", "/", "").await.0, 200);
    assert_eq!(instance(&mut agent, &neighbour.id).await.state, "running");
    // The next calls get a new instance, started like the last: four at once make one.
    let calls = (0..4).map(|_| agent.call("hungry", "/", ""));
    for (status, body) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200, "{body}");
    }
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    let fresh: Vec<&Instance> =
        list.instances.iter().filter(|i| i.function == "hungry" && i.state == "running").collect();
    assert_eq!(fresh.len(), 1, "one cold start for the waiting calls: {fresh:?}");
    assert_ne!(fresh[0].id, victim.id);
    assert_eq!(fresh[0].memory_mb, 128);
    agent.cleanup().await;
}

async fn an_instance_that_crashes_is_reported_with_its_exit_status_and_removed(class: &'static str) {
    let mut agent = TestAgent::start_class(class, |_| {}).await;
    let (inst, _) = start(&mut agent, class, "crash", 128).await;
    let (status, _) = agent.call("crash", "/_fixture/exit?code=3", "").await;
    assert_eq!(status, 502);
    let ended = wait_for_state(&mut agent, &inst.id, "crashed").await;
    assert_eq!(ended.reason, "its process exited with status 3");
    wait_removed(&agent, &inst.id).await;
    // The next call gets a new instance; the crashed one stays listed with its cause.
    let (status, body) = agent.call("crash", "/", "").await;
    assert_eq!(status, 200, "{body}");
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    let states: Vec<(bool, &str)> =
        list.instances.iter().map(|i| (i.id == inst.id, i.state.as_str())).collect();
    assert_eq!(states, vec![(true, "crashed"), (false, "running")], "{:?}", list.instances);
    agent.cleanup().await;
}

/// Everything the agents in this test process log, at every level.
fn captured_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: &'static std::sync::Mutex<Vec<u8>> = Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct W(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || W(buf))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_function_sees_every_variable_and_a_secret_appears_nowhere_else() {
    let logs = captured_logs();
    let secret = format!("s3cret-{:016x}", rand::random::<u64>());
    let mut agent = TestAgent::start().await;
    let req = StartInstanceRequest {
        function: "envy".into(),
        image: image("echo"),
        env: HashMap::from([("GREETING".to_string(), "hi".to_string())]),
        secrets: HashMap::from([("API_KEY".to_string(), secret.clone())]),
        version: "7".into(),
        namespace: "team".into(),
        ..Default::default()
    };
    let started = agent.client.start_instance(req).await.unwrap().into_inner();
    let (status, body) = agent.call("envy", "/", "").await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let env = &seen["env"];
    for (k, v) in [
        ("TENCENTCLOUD_RUNENV", "SCF"),
        ("USER_CODE_ROOT", "/var/user/"),
        ("USER", "qcloud"),
        ("SCF_FUNCTIONNAME", "envy"),
        ("SCF_FUNCTIONVERSION", "7"),
        ("SCF_NAMESPACE", "team"),
        ("TENCENTCLOUD_REGION", "local"),
        ("TENCENTCLOUD_APPID", "0"),
        ("TENCENTCLOUD_UIN", "0"),
        ("GREETING", "hi"),
        ("API_KEY", secret.as_str()),
    ] {
        assert_eq!(env[k].as_str(), Some(v), "{k} in {env}");
    }

    // Refusals name the variable, never its value.
    let mut answers = vec![format!("{started:?}")];
    for (secrets, env) in [
        (HashMap::from([("USER".to_string(), secret.clone())]), HashMap::new()),
        (
            HashMap::from([("K".to_string(), secret.clone())]),
            HashMap::from([("K".to_string(), "x".to_string())]),
        ),
    ] {
        let req = StartInstanceRequest {
            function: "envy".into(),
            image: image("echo"),
            env,
            secrets,
            ..Default::default()
        };
        let err = agent.client.start_instance(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
        answers.push(err.message().to_string());
    }
    let req = StartInstanceRequest {
        function: "envy".into(),
        image: "127.0.0.1:1/nothing:latest".into(),
        secrets: HashMap::from([("API_KEY".to_string(), secret.clone())]),
        ..Default::default()
    };
    answers.push(agent.client.start_instance(req).await.unwrap_err().message().to_string());
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    answers.push(format!("{list:?}"));
    let status = agent.client.node_status(fnrt_proto::agent::v1::NodeStatusRequest {}).await.unwrap();
    answers.push(format!("{:?}", status.into_inner()));
    agent.cleanup().await;

    for a in &answers {
        assert!(!a.contains(&secret), "an answer carries the secret: {a}");
    }
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("instance ready"), "the agent's logs were not captured");
    assert!(!text.contains(&secret), "the agent's logs carry the secret");
}

async fn tmp_takes_500_mb_from_a_128_mb_function_stops_at_512_and_the_rest_is_read_only(class: &'static str) {
    let mut agent = TestAgent::start_class(class, |_| {}).await;
    let (first, _) = start(&mut agent, class, "disk", 128).await;
    let r = act(&agent, "disk", "write?path=/tmp/big&mb=500").await;
    assert_eq!((r["written_mb"].as_u64(), r["error"].as_str()), (Some(500), Some("")), "{r}");
    let r = act(&agent, "disk", "write?path=/tmp/more&mb=100").await;
    assert_eq!(r["error"].as_str(), Some("ENOSPC"), "{r}");
    let total = 500 + r["written_mb"].as_u64().unwrap();
    assert!((511..=514).contains(&total), "{total} MiB fit in /tmp (512 MiB allowed): {r}");
    let r = act(&agent, "disk", "write?path=/etc-file&mb=1").await;
    assert_eq!(r["error"].as_str(), Some("EROFS"), "{r}");
    assert_eq!(instance(&mut agent, &first.id).await.state, "running", "the writes did not kill it");
    agent.client.stop_instance(fnrt_proto::agent::v1::StopInstanceRequest { id: first.id }).await.unwrap();
    start(&mut agent, class, "disk", 128).await;
    let r = act(&agent, "disk", "read?path=/tmp/big").await;
    assert!(r["text"].is_null(), "a new instance sees an empty /tmp: {r}");
    agent.cleanup().await;
}

async fn a_function_that_crashes_at_start_fails_its_start_at_once_with_its_output(class: &'static str) {
    let mut agent = TestAgent::start_class(class, |c| c.health_timeout_ms = 30_000).await;
    let t0 = Instant::now();
    let req = StartInstanceRequest {
        sandbox_class: class.into(),
        function: "crashy".into(),
        image: image("crashes"),
        // A secret the function happens to print: the answer must not carry it.
        secrets: HashMap::from([("CONF_NAME".to_string(), "app.conf".to_string())]),
        ..Default::default()
    };
    let e = agent.client.start_instance(req).await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let msg = e.message();
    assert!(msg.contains("ended before listening on :9000"), "{msg}");
    assert!(msg.contains("exited with status 3"), "{msg}");
    assert!(msg.contains("cannot read /etc/<redacted>"), "its last output, secret redacted: {msg}");
    assert!(!msg.contains("app.conf"), "{msg}");
    // Not the 30 s deadline (the pull of the image is in this time too).
    assert!(took < Duration::from_secs(10), "{took:?}");
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    assert!(list.instances.is_empty(), "{:?}", list.instances);
    agent.cleanup().await;
}

fnrt_tests::each_class!(
    memory_cpu_and_pids_limits_are_what_the_instance_sees,
    a_busy_loop_with_a_quarter_vcpu_uses_about_a_quarter_of_a_core,
    a_fork_bomb_stops_at_the_pids_limit_and_the_neighbours_keep_working,
    an_instance_past_its_memory_is_oom_killed_reported_and_removed_and_neighbours_stay,
    an_instance_that_crashes_is_reported_with_its_exit_status_and_removed,
    tmp_takes_500_mb_from_a_128_mb_function_stops_at_512_and_the_rest_is_read_only,
    a_function_that_crashes_at_start_fails_its_start_at_once_with_its_output,
);
