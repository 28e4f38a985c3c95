//! The agent against the real containerd, runc, CNI plugins and registry: pull, start,
//! call, stop; side-by-side instances; the :9000 deadline; bad input; restarts; TCP auth.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{
    ListInstancesRequest, NodeStatusRequest, StartInstanceRequest, StopInstanceRequest,
};
use fnrt_tests::{image, real_parts, TestAgent};
use tonic::Code;

fn start_req(function: &str, image: &str) -> StartInstanceRequest {
    StartInstanceRequest {
        function: function.into(),
        image: image.into(),
        env: HashMap::new(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_start_call_through_the_data_plane_and_stop() {
    let mut agent = TestAgent::start().await;
    let echo = image("echo");
    let (img, progress) = fnrt_tests::pull_image(&mut agent.client, &echo).await.unwrap();
    let phases: Vec<&str> = progress.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(phases.first(), Some(&"resolved"), "{phases:?}");
    assert!(phases.contains(&"downloading") && phases.contains(&"unpacking"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"done"), "{phases:?}");
    assert_eq!(img.reference, echo);
    assert!(img.digest.starts_with("sha256:") && img.size_bytes > 0, "{img:?}");

    let mut req = start_req("echo", &echo);
    req.env.insert("GREETING".into(), "hello from the test".into());
    let inst = agent.client.start_instance(req).await.unwrap().into_inner().instance.unwrap();
    assert_eq!(inst.state, "running");
    assert!(inst.address.ends_with(":9000") && inst.pid > 0, "{inst:?}");
    assert!(std::path::Path::new(&format!("/run/netns/{}-{}", agent.cfg.namespace, inst.id)).exists());

    let (status, body) = agent.call("echo", "/some/path?x=1&y=two", "the body").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/some/path?x=1&y=two");
    assert_eq!(v["body"], "the body");
    assert_eq!(v["env"]["GREETING"], "hello from the test");

    let status = agent.client.node_status(NodeStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.architecture, "amd64");
    assert!(
        status.containerd_version.starts_with("1.") || status.containerd_version.starts_with('v'),
        "{status:?}"
    );
    assert_eq!(status.instances.len(), 1);
    assert_eq!(status.images.iter().map(|i| i.reference.as_str()).collect::<Vec<_>>(), vec![echo.as_str()]);

    agent.client.stop_instance(StopInstanceRequest { id: inst.id.clone() }).await.unwrap();
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    assert!(list.instances.is_empty(), "{list:?}");
    let (status, body) = agent.call("echo", "/", "").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no running instance"), "{body}");
    agent.cleanup().await;
}

/// Waits until everything of instance `id` is gone from the node.
async fn gone(agent: &TestAgent, id: &str) {
    let prefix = format!("{}-{id}", agent.cfg.namespace);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fnrt_tests::node_leftovers(&prefix).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", fnrt_tests::node_leftovers(&prefix));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of header `name` in the echo fixture's answer.
fn header<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    v["headers"].as_array()?.iter().find(|h| h[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))?[1]
        .as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_started_on_its_own_is_called_like_a_deployed_function() {
    let mut agent = TestAgent::start().await;
    let echo = image("echo");
    let req = StartInstanceRequest {
        memory_mb: 256,
        version: "7".into(),
        namespace: "team-a".into(),
        timeout_ms: 1500,
        ..start_req("solo", &echo)
    };
    let first = agent.client.start_instance(req).await.unwrap().into_inner().instance.unwrap();
    // A caller's forged X-Scf-* headers are replaced; every common header is there.
    let url = format!("http://{}/function/solo/h", agent.handle.dataplane_address);
    let http = fnrt_tests::http();
    let resp =
        http.get(&url).header("X-Scf-Name", "forged").header("X-Scf-Uin", "forged-uin").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    for (name, want) in [
        ("x-scf-memory", Some("256")),
        ("x-scf-timeout", Some("1500")),
        ("x-scf-version", Some("7")),
        ("x-scf-name", Some("solo")),
        ("x-scf-namespace", Some("team-a")),
        ("x-scf-session-token", Some("")),
        ("x-scf-secret-id", Some("")),
        ("x-scf-secret-key", Some("")),
    ] {
        assert_eq!(header(&v, name), want, "{name}: {v}");
    }
    for name in ["x-scf-request-id", "x-scf-region", "x-scf-appid", "x-scf-uin"] {
        assert!(header(&v, name).is_some(), "{name}: {v}");
    }
    assert_ne!(header(&v, "x-scf-uin"), Some("forged-uin"), "the caller's value is replaced");
    // Past its timeout: 504, and the instance that overran is stopped; the next call gets
    // a new one started like it.
    let base = format!("http://{}/function/solo", agent.handle.dataplane_address);
    let resp = http.get(format!("{base}/_fixture/sleep?ms=4000")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let body = resp.text().await.unwrap();
    assert!(body.contains("timeout of 1500 ms"), "{body}");
    gone(&agent, &first.id).await;
    assert_eq!(http.get(format!("{base}/_fixture/sleep?ms=10")).send().await.unwrap().status(), 200);
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    let running: Vec<&str> =
        list.instances.iter().filter(|i| i.reason.is_empty()).map(|i| i.id.as_str()).collect();
    assert_eq!(running.len(), 1, "{list:?}");
    assert_ne!(running[0], first.id, "the instance that overran was replaced");
    let overran = list.instances.iter().find(|i| i.id == first.id).unwrap();
    assert!(overran.reason.contains("overran"), "{overran:?}");
    // The gRPC Invoke takes the same path.
    let answer = agent
        .client
        .invoke(fnrt_proto::agent::v1::InvokeRequest { function: "solo".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(header(&v, "x-scf-timeout"), Some("1500"), "{v}");
    // Out of range: refused before anything starts.
    let e = agent
        .client
        .start_instance(StartInstanceRequest { timeout_ms: 900_001, ..start_req("solo", &echo) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("timeout_ms"), "{}", e.message());
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_started_without_a_timeout_gets_the_default_3_s() {
    let mut agent = TestAgent::start().await;
    let first = agent.client.start_instance(start_req("slow-solo", &image("echo"))).await.unwrap();
    let first = first.into_inner().instance.unwrap();
    let url = format!("http://{}/function/slow-solo/_fixture/sleep?ms=5000", agent.handle.dataplane_address);
    let started = Instant::now();
    let resp = fnrt_tests::http().get(url).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(4500), "{:?}", started.elapsed());
    assert!(resp.text().await.unwrap().contains("timeout of 3000 ms"));
    gone(&agent, &first.id).await;
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_of_one_function_listen_on_9000_side_by_side() {
    let mut agent = TestAgent::start().await;
    let echo = image("echo");
    let a =
        agent.client.start_instance(start_req("twin", &echo)).await.unwrap().into_inner().instance.unwrap();
    let b =
        agent.client.start_instance(start_req("twin", &echo)).await.unwrap().into_inner().instance.unwrap();
    assert_ne!(a.address, b.address);
    assert!(a.address.ends_with(":9000") && b.address.ends_with(":9000"));
    for inst in [&a, &b] {
        let body = fnrt_tests::http()
            .get(format!("http://{}/direct", inst.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("\"path\":\"/direct\""), "{body}");
    }
    for _ in 0..4 {
        let (status, body) = agent.call("twin", "/", "").await;
        assert_eq!(status, 200, "{body}");
    }
    let list = agent.client.list_instances(ListInstancesRequest { function: "twin".into() }).await.unwrap();
    assert_eq!(list.into_inner().instances.len(), 2);
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_never_listens_fails_at_the_deadline_and_leaves_nothing() {
    let mut agent = TestAgent::start_with(|c| c.health_timeout_ms = 1_500).await;
    let t0 = Instant::now();
    let err = agent.client.start_instance(start_req("silent", &image("never-listens"))).await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(
        err.message(),
        "The request timed out in 1500ms.Please confirm your http server have enabled listening on port 9000."
    );
    assert!(took >= Duration::from_millis(1_500) && took < Duration::from_secs(10), "{took:?}");
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    assert!(list.instances.is_empty(), "{list:?}");
    agent.cleanup().await;
}

/// The default deadline is SCF's 30 s: this test really waits for it.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_deadline_is_30_seconds() {
    let mut agent =
        TestAgent::start_with(|c| c.health_timeout_ms = fnrt_agent::Config::default().health_timeout_ms)
            .await;
    let t0 = Instant::now();
    let err = agent.client.start_instance(start_req("silent", &image("never-listens"))).await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(
        err.message(),
        "The request timed out in 30000ms.Please confirm your http server have enabled listening on port 9000."
    );
    assert!(took >= Duration::from_secs(30) && took < Duration::from_secs(40), "{took:?}");
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_leaves_nothing() {
    // 127.0.0.1:1 is listed, so that its refusal to connect is what is tested.
    let mut agent = TestAgent::start_with(|c| c.allowed_registries.push("127.0.0.1:1".into())).await;
    let registry = real_parts().registry;
    let cases: Vec<(String, Code, String)> = vec![
        (format!("{registry}/fnrt/no-such-image:latest"), Code::NotFound, "not found in registry".into()),
        (
            "127.0.0.1:1/fnrt/echo:latest".into(),
            Code::Unavailable,
            "registry 127.0.0.1:1 is unreachable".into(),
        ),
        (
            "127.0.0.1:2/fnrt/echo:latest".into(),
            Code::PermissionDenied,
            "registry 127.0.0.1:2 is not allowed here: its address is loopback".into(),
        ),
        ("Not A Reference".into(), Code::InvalidArgument, "malformed image reference".into()),
        (
            format!("{registry}/fnrt/echo@sha256:123"),
            Code::InvalidArgument,
            "malformed image reference".into(),
        ),
    ];
    for (reference, code, text) in cases {
        let err = fnrt_tests::pull_image(&mut agent.client, &reference).await.unwrap_err();
        assert_eq!(err.code(), code, "{reference}: {}", err.message());
        assert!(err.message().contains(&text), "{reference}: {}", err.message());
        let err = agent.client.start_instance(start_req("fn", &reference)).await.unwrap_err();
        assert_eq!(err.code(), code, "start {reference}: {}", err.message());
    }
    let err = agent.client.start_instance(start_req("Bad_Name", &image("echo"))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1 to 63 characters of a-z, 0-9 and '-'"), "{}", err.message());

    let err =
        agent.client.stop_instance(StopInstanceRequest { id: "nobody-12345678".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nobody-12345678"), "{}", err.message());

    let (status, body) = agent.call("ghost", "/", "").await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("\"ghost\" is not deployed and has no running instance"),
        "{body}"
    );
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    assert!(list.instances.is_empty());
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_without_containerd_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = fnrt_tests::test_config(dir.path());
    cfg.containerd_socket = dir.path().join("no-containerd.sock");
    let err = fnrt_agent::start(cfg).await.err().expect("no containerd, no agent");
    let msg = fnrt_agent::chain(&err);
    assert!(msg.contains("cannot connect to containerd at") && msg.contains("no-containerd.sock"), "{msg}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_adopts_its_running_instances() {
    let mut agent = TestAgent::start().await;
    let inst = agent
        .client
        .start_instance(StartInstanceRequest {
            version: "3".into(),
            timeout_ms: 1500,
            ..start_req("keep", &image("echo"))
        })
        .await
        .unwrap()
        .into_inner()
        .instance
        .unwrap();
    let TestAgent { handle, cfg, dir, .. } = agent;
    handle.shutdown().await;

    let cfg2 = cfg.clone();
    let handle = fnrt_agent::start(cfg2).await.unwrap();
    let client = fnrt_tests::connect(&handle.socket).await;
    let mut agent = TestAgent { handle, client, cfg, dir };
    let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), vec![inst.id.as_str()]);
    let (status, body) = agent.call("keep", "/again", "").await;
    assert_eq!(status, 200, "{body}");
    // Called with what it was started with, read back from its container's labels.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((header(&v, "x-scf-version"), header(&v, "x-scf-timeout")), (Some("3"), Some("1500")), "{v}");
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tcp_api_needs_the_token() {
    let agent = TestAgent::start_with(|c| {
        c.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tcp_token = Some("test-token-value-of-32-characters".into());
    })
    .await;
    let addr = agent.handle.tcp_address.unwrap();
    let channel =
        tonic::transport::Endpoint::try_from(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = fnrt_proto::agent::v1::agent_client::AgentClient::new(channel.clone());
    let err = client.node_status(NodeStatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!err.message().contains("test-token-value"));
    let mut req = tonic::Request::new(NodeStatusRequest {});
    req.metadata_mut().insert("authorization", "Bearer test-token-value-of-32-characters".parse().unwrap());
    client.node_status(req).await.unwrap();
    agent.cleanup().await;
}
