//! The control plane in-process with real agents: two agents behind one gateway (tokens,
//! crons, a lost agent), a restart that keeps everything, push-then-deploy and triggers.
//! The official Python SDK drives the release binaries instead (tests/shipped.rs).
#![allow(clippy::unwrap_used, clippy::too_many_lines)]

use std::path::Path;
use std::time::{Duration, Instant};

use fnrt_controlplane::Config as CpConfig;
use fnrt_proto::agent::v1::{
    ListFunctionsRequest, ListInstancesRequest, RemoveFunctionRequest, StreamLogsRequest,
};
use fnrt_tests::nats::Nats;
use fnrt_tests::{connect, controlplane_config, image, real_parts, TestAgent};
use serde_json::{json, Value};

const CLUSTER_TOKEN: &str = "cluster-token-for-tests-0123456789";

async fn start_cp(dir: &Path) -> fnrt_controlplane::Handle {
    fnrt_controlplane::start(controlplane_config(dir, CLUSTER_TOKEN)).await.expect("control plane starts")
}

async fn joined_agent(cp: &fnrt_controlplane::Handle, node: &str) -> TestAgent {
    joined_agent_allowing(cp, node, &[]).await
}

/// As [`joined_agent`], the agent also allowed `registries`.
async fn joined_agent_allowing(
    cp: &fnrt_controlplane::Handle,
    node: &str,
    registries: &[String],
) -> TestAgent {
    let url = format!("http://{}", cp.grpc_address);
    let node = node.to_string();
    let agent = TestAgent::start_with(move |c| {
        c.controlplane_url = Some(url);
        c.controlplane_token = Some(CLUSTER_TOKEN.into());
        c.node_name = node;
        c.allowed_registries.extend_from_slice(registries);
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cp.ctx.scheduler.agents().iter().any(|a| a.node == agent.cfg.node_name) {
        assert!(Instant::now() < deadline, "agent {} did not join", agent.cfg.node_name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent
}

/// Takes every function off an agent and waits until its instances are gone, then cleans it up.
async fn clean(mut agent: TestAgent) {
    let fns = agent.client.list_functions(ListFunctionsRequest {}).await.unwrap().into_inner().functions;
    for f in fns {
        let name = f.spec.unwrap().name;
        let _ = agent.client.remove_function(RemoveFunctionRequest { name }).await;
    }
    // Removed functions' instances stop on their own once their calls end.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = agent.client.list_instances(ListInstancesRequest::default()).await.unwrap().into_inner();
        if list.instances.iter().all(|i| !i.reason.is_empty()) {
            break;
        }
        assert!(Instant::now() < deadline, "instances of removed functions did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.cleanup().await;
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn new(cp: &fnrt_controlplane::Handle) -> Api {
        Api {
            base: format!("http://{}/functions/v1beta1/regions/fr-par", cp.api_address),
            token: cp.ctx.cfg.admin_token.expose().to_string(),
            http: fnrt_tests::http(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.http.request(method, format!("{}{path}", self.base)).header("X-Auth-Token", &self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap())
    }

    /// A call outside the region's API (the operator's /fnrt/v1 paths).
    async fn call_path(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let root = self.base.split("/functions/").next().unwrap();
        let resp = self
            .http
            .request(method, format!("{root}{path}"))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(s, 200, "POST {path}: {v}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    async fn wait_ready(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let f = self.get(&format!("/functions/{id}")).await;
            if f["status"] != "pending" && f["status"] != "creating" {
                return f;
            }
            assert!(Instant::now() < deadline, "function {id} stayed pending");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether each agent's cache lists the image whose reference contains `needle` as pinned.
async fn pinned_on(agents: &[&TestAgent], needle: &str) -> Vec<bool> {
    let mut out = Vec::new();
    for a in agents {
        let list = a.client.clone().list_images(fnrt_proto::agent::v1::ListImagesRequest {}).await.unwrap();
        let images = list.into_inner().images;
        out.push(images.iter().any(|i| i.reference.contains(needle) && i.pinned));
    }
    out
}

/// The ready instances of `name` on each agent.
async fn ready_on(agents: &[&TestAgent], name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for a in agents {
        let fns =
            a.client.clone().list_functions(ListFunctionsRequest {}).await.unwrap().into_inner().functions;
        out.push(fns.iter().find(|f| f.spec.as_ref().unwrap().name == name).map_or(0, |f| f.ready));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_one_gateway_private_calls_a_cron_and_a_lost_agent() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_cp(dir.path()).await;
    let a = joined_agent(&cp, "node-a").await;
    let b = joined_agent(&cp, "node-b").await;
    let api = Api::new(&cp);

    let ns = api.post("/namespaces", json!({ "name": "e2e" })).await;
    let f = api
        .post(
            "/functions",
            json!({
                "namespace_id": ns["id"], "name": "echo", "min_scale": 2, "max_scale": 4,
                "memory_limit": 128, "privacy": "private", "registry_image": image("echo"),
                "image_acceleration": true,
            }),
        )
        .await;
    let id = f["id"].as_str().unwrap().to_string();
    let name = format!("fn-{id}");
    api.post(&format!("/functions/{id}/deploy"), json!({})).await;
    let ready = api.wait_ready(&id).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    // min_scale 2 over two agents: one warm instance each.
    assert_eq!(ready_on(&[&a, &b], &name).await, vec![1, 1]);
    // Image acceleration: both agents keep its image (never evicted, listed pinned).
    assert_eq!(pinned_on(&[&a, &b], "fnrt/echo").await, vec![true, true]);
    // At most 5 accelerated functions per namespace (SCF's limit): 4 more, then a refusal.
    let accelerated = |n: usize| json!({ "namespace_id": ns["id"], "name": format!("acc{n}"), "registry_image": image("echo"), "image_acceleration": true });
    let mut extra = Vec::new();
    for n in 0..4 {
        extra.push(api.post("/functions", accelerated(n)).await["id"].as_str().unwrap().to_string());
    }
    let (status, refused) = api.call(reqwest::Method::POST, "/functions", Some(accelerated(4))).await;
    assert_eq!(
        (status, refused["details"][0]["argument_name"].as_str()),
        (400, Some("image_acceleration")),
        "{refused}"
    );
    for id in extra {
        api.call(reqwest::Method::DELETE, &format!("/functions/{id}"), None).await;
    }
    // The operator's view shows it on both, once their heartbeats report it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, placement) = api.call_path(reqwest::Method::GET, "/fnrt/v1/placement").await;
        let mut nodes: Vec<String> = placement["functions"][0]["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["node"].as_str().unwrap().to_string())
            .collect();
        nodes.sort();
        if nodes == ["node-a", "node-b"] {
            break;
        }
        assert!(Instant::now() < deadline, "placement: {placement}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Through the gateway, by host name and by path: private, then with a token.
    let gw = format!("http://{}", cp.gateway_address);
    let http = fnrt_tests::http();
    let host = format!("e2e-echo.{}", cp.ctx.cfg.domain);
    let r = http.get(format!("{gw}/x")).header("host", &host).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let token = api.post("/tokens", json!({ "function_id": id })).await;
    let secret = token["token"].as_str().unwrap().to_string();
    for _ in 0..6 {
        let r = http
            .get(format!("{gw}/x?q=1"))
            .header("host", &host)
            .header("X-Auth-Token", &secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let seen: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(seen["path"], "/x?q=1");
    }
    let r = http.get(format!("{gw}/e2e/echo/y")).header("X-Auth-Token", &secret).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Hop-by-hop headers stop at the gateway, both ways (RFC 9110 §7.6.1).
    let hop_call = |path: &str| {
        http.get(format!("{gw}/e2e/echo{path}"))
            .header("X-Auth-Token", &secret)
            .header("Connection", "X-Caller-Hop")
            .header("X-Caller-Hop", "1")
            .send()
    };
    let r = hop_call("/_fixture/hop").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-end-to-end"], "1");
    for hop in ["connection", "x-hop-only", "keep-alive"] {
        assert!(r.headers().get(hop).is_none(), "{hop} came back: {:?}", r.headers());
    }
    let r = hop_call("/").await.unwrap();
    let seen: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(!seen["headers"].to_string().to_lowercase().contains("x-caller-hop"), "{seen}");
    // Instances see the function's own name, not the id agents know it by.
    assert_eq!(
        (seen["env"]["SCF_FUNCTIONNAME"].as_str(), seen["env"]["SCF_NAMESPACE"].as_str()),
        (Some("echo"), Some("e2e"))
    );
    assert!(
        seen["headers"].as_array().unwrap().iter().any(|h| h[0]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case("x-scf-name")
            && h[1] == "echo"),
        "{seen}"
    );
    let (s, body) = api
        .call(
            reqwest::Method::POST,
            "/tokens",
            Some(json!({ "function_id": id, "expires_at": "2000-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!((s, body["details"][0]["argument_name"].as_str()), (400, Some("expires_at")));
    let (s, _) = api.call(reqwest::Method::GET, "/tokens/none", None).await;
    assert_eq!(s, 404);
    let soon = chrono_now_plus(1);
    let short = api.post("/tokens", json!({ "function_id": id, "expires_at": soon })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http
        .get(format!("{gw}/e2e/echo/"))
        .header("X-Auth-Token", short["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an expired token is refused");

    // A cron every minute: the function sees the timer event with the cron's args.
    api.post("/crons", json!({ "function_id": id, "schedule": "* * * * *", "args": { "job": "e2e-cron" } }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(75);
    'seen: loop {
        for agent in [&a, &b] {
            let mut logs = agent
                .client
                .clone()
                .stream_logs(StreamLogsRequest { function: name.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            while let Some(line) = logs.message().await.unwrap() {
                if line.line.contains("echo: Timer event") && line.line.contains("e2e-cron") {
                    break 'seen;
                }
            }
        }
        assert!(Instant::now() < deadline, "no cron call reached the function in 75 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Agent a goes away: after lost_after_ms its share is placed on b (two warm there).
    let TestAgent { handle, cfg, dir: a_dir, .. } = a;
    handle.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_on(&[&b], &name).await != vec![2] {
        assert!(Instant::now() < deadline, "min_scale was not restored on the other agent");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http.get(format!("{gw}/e2e/echo/")).header("X-Auth-Token", &secret).send().await.unwrap();
    assert_eq!(r.status(), 200, "calls go to the agent that is left");

    // Cleanup: the function goes from b; a comes back standalone to stop what it adopted.
    let (s, _) = api.call(reqwest::Method::DELETE, &format!("/functions/{id}"), None).await;
    assert_eq!(s, 200);
    // Gone from b, the function keeps its image there no more.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pinned_on(&[&b], "fnrt/echo").await != vec![false] {
        assert!(Instant::now() < deadline, "b still keeps the image of a deleted function");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cp.shutdown().await;
    let mut cfg = cfg;
    cfg.controlplane_url = None;
    let handle = fnrt_agent::start(cfg.clone()).await.unwrap();
    let client = connect(&handle.socket).await;
    clean(TestAgent { handle, client, cfg, dir: a_dir }).await;
    clean(b).await;
}

fn chrono_now_plus(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs);
    humantime::format_rfc3339_millis(t).to_string()
}

#[tokio::test]
async fn a_restarted_control_plane_keeps_namespaces_functions_tokens_and_crons() {
    let dir = tempfile::tempdir().unwrap();
    let cp = start_cp(dir.path()).await;
    let api = Api::new(&cp);
    let ns = api
        .post(
            "/namespaces",
            json!({ "name": "keep", "secret_environment_variables": [{"key": "S", "value": "v"}] }),
        )
        .await;
    let f = api
        .post("/functions", json!({ "namespace_id": ns["id"], "name": "f", "registry_image": image("echo") }))
        .await;
    // A registry_image may only name allowed registries (the node's own services are not).
    for (bad, why) in [
        ("127.0.0.1:2379/x/y:t", "registry 127.0.0.1:2379 is not allowed here"),
        ("ghcr.io/x/y:t", "registry ghcr.io is not allowed here: it is not listed"),
        ("no such reference", "it contains white space"),
    ] {
        let body = json!({ "namespace_id": ns["id"], "name": "bad", "registry_image": bad });
        let (status, v) = api.call(reqwest::Method::POST, "/functions", Some(body)).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v.to_string().contains(why) && v.to_string().contains("registry_image"), "{bad}: {v}");
        let update = json!({ "registry_image": bad });
        let path = format!("/functions/{}", f["id"].as_str().unwrap());
        let (status, v) = api.call(reqwest::Method::PATCH, &path, Some(update)).await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    // Host labels: one per function, within 63 characters.
    api.post(
        "/functions",
        json!({ "namespace_id": ns["id"], "name": "a-b", "registry_image": image("echo") }),
    )
    .await;
    let keep_a = api.post("/namespaces", json!({ "name": "keep-a" })).await;
    let body = json!({ "namespace_id": keep_a["id"], "name": "b", "registry_image": image("echo") });
    let (status, v) = api.call(reqwest::Method::POST, "/functions", Some(body)).await;
    assert_eq!(status, 409, "keep-a + b is keep + a-b's host: {v}");
    assert!(v["message"].as_str().unwrap().contains("already answers on the host label \"keep-a-b\""), "{v}");
    let long = format!("f{}", "x".repeat(60));
    let body = json!({ "namespace_id": ns["id"], "name": long, "registry_image": image("echo") });
    let (status, v) = api.call(reqwest::Method::POST, "/functions", Some(body)).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("a DNS label holds 63"), "{v}");
    // Custom domains claim neither the functions' own names nor addresses.
    for host in ["keep-f.functions.localhost", "functions.localhost", "10.0.0.1"] {
        let body = json!({ "hostname": host, "function_id": f["id"] });
        let (status, v) = api.call(reqwest::Method::POST, "/domains", Some(body)).await;
        assert_eq!(status, 400, "{host}: {v}");
    }
    // A private function says nothing of itself to a caller without a token, not even
    // that it is not deployed.
    let body = json!({ "namespace_id": ns["id"], "name": "hidden", "privacy": "private", "registry_image": image("echo") });
    api.post("/functions", body).await;
    let r =
        fnrt_tests::http().get(format!("http://{}/keep/hidden/", cp.gateway_address)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(!r.text().await.unwrap().contains("deploy"), "a private function's state was shown");
    // axum's own rejections (a query that does not parse, a method a path lacks) answer
    // in Scaleway's JSON error shape too (the calls would panic on plain text).
    let (status, v) = api.call_path(reqwest::Method::PUT, "/fnrt/v1/code/x?expires=soon").await;
    assert_eq!((status, v["type"].as_str()), (400, Some("invalid_arguments")), "{v}");
    let (status, v) = api.call(reqwest::Method::DELETE, "/runtimes", None).await;
    assert_eq!((status, v["type"].as_str()), (405, Some("invalid_arguments")), "{v}");
    // Scaleway's seed names the expiry expire_at: it is read (a past one is refused).
    let body = json!({ "namespace_id": ns["id"], "expire_at": "2001-01-01T00:00:00Z" });
    let (status, v) = api.call(reqwest::Method::POST, "/tokens", Some(body)).await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("the expiry is in the past"), "{v}");
    let t = api.post("/tokens", json!({ "namespace_id": ns["id"] })).await;
    let c = api
        .post("/crons", json!({ "function_id": f["id"], "schedule": "0 0 * * *", "args": {"a": 1} }))
        .await;
    let admin = cp.ctx.cfg.admin_token.clone();
    cp.shutdown().await;

    let cp = start_cp(dir.path()).await;
    assert_eq!(cp.ctx.cfg.admin_token, admin, "the made admin key is kept");
    let api = Api::new(&cp);
    assert_eq!(api.get(&format!("/namespaces/{}", ns["id"].as_str().unwrap())).await, ns);
    assert_eq!(
        api.get(&format!("/functions/{}", f["id"].as_str().unwrap())).await["registry_image"],
        f["registry_image"]
    );
    let tok = api.get(&format!("/tokens/{}", t["id"].as_str().unwrap())).await;
    assert!(tok["token"].is_null(), "the token itself is never answered again");
    assert_eq!(api.get(&format!("/crons/{}", c["id"].as_str().unwrap())).await, c);
    assert!(fnrt_controlplane::tokens::allows(
        &cp.ctx.state,
        t["token"].as_str().unwrap(),
        f["id"].as_str().unwrap(),
        ns["id"].as_str().unwrap()
    ));
    let (s, _) =
        api.call(reqwest::Method::DELETE, &format!("/namespaces/{}", ns["id"].as_str().unwrap()), None).await;
    assert_eq!(s, 200);
    let (s, body) =
        api.call(reqwest::Method::GET, &format!("/crons/{}", c["id"].as_str().unwrap()), None).await;
    assert_eq!((s, body["resource"].as_str()), (404, Some("cron")), "a namespace goes with all it holds");
    cp.shutdown().await;
}

/// A registry of the test's own whose notifications go to the control plane's webhook.
struct NotifyingRegistry {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl NotifyingRegistry {
    /// A free loopback address for it (the control plane must allow it before it starts).
    fn address() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("127.0.0.1:{port}")
    }

    async fn start(addr: String, webhook: &str, token: &str) -> NotifyingRegistry {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n\
             notifications:\n  endpoints:\n    - name: fnrt\n      url: {webhook}\n      headers:\n        Authorization: [\"Bearer {token}\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry runs (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while fnrt_tests::http().get(format!("http://{addr}/v2/")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the test registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        NotifyingRegistry { child, addr, _dir: dir }
    }
}

impl Drop for NotifyingRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

async fn upload_blob(http: &reqwest::Client, registry: &str, repo: &str, bytes: Vec<u8>) -> String {
    let digest = sha256(&bytes);
    let r = http.post(format!("http://{registry}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let url = if location.starts_with("http") { location } else { format!("http://{registry}{location}") };
    let sep = if url.contains('?') { '&' } else { '?' };
    let r = http.put(format!("{url}{sep}digest={digest}")).body(bytes).send().await.unwrap();
    assert_eq!(r.status(), 201, "blob upload");
    digest
}

/// Pushes the echo image to `registry`/fnrt/app:`tag` with VERSION=`version` in its
/// environment (and another entrypoint, if given), over the distribution API; returns the
/// manifest's digest.
async fn push_variant(registry: &str, tag: &str, version: u32, entrypoint: Option<&[&str]>) -> String {
    let http = fnrt_tests::http();
    let src = real_parts().registry;
    let accept =
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
    let r = http
        .get(format!("http://{src}/v2/fnrt/echo/manifests/latest"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    let media_type = r.headers()["content-type"].to_str().unwrap().to_string();
    let mut manifest: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    let blob = |d: &str| format!("http://{src}/v2/fnrt/echo/blobs/{d}");
    for layer in manifest["layers"].as_array().unwrap().clone() {
        let bytes =
            http.get(blob(layer["digest"].as_str().unwrap())).send().await.unwrap().bytes().await.unwrap();
        upload_blob(&http, registry, "fnrt/app", bytes.to_vec()).await;
    }
    let config_bytes = http
        .get(blob(manifest["config"]["digest"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut config: Value = serde_json::from_slice(&config_bytes).unwrap();
    let env = config["config"]["Env"].as_array().cloned().unwrap_or_default();
    let mut env: Vec<Value> =
        env.into_iter().filter(|e| !e.as_str().unwrap_or("").starts_with("VERSION=")).collect();
    env.push(json!(format!("VERSION={version}")));
    config["config"]["Env"] = json!(env);
    if let Some(ep) = entrypoint {
        config["config"]["Entrypoint"] = json!(ep);
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["size"] = json!(config_bytes.len());
    manifest["config"]["digest"] = json!(upload_blob(&http, registry, "fnrt/app", config_bytes).await);
    let body = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256(&body);
    let r = http
        .put(format!("http://{registry}/v2/fnrt/app/manifests/{tag}"))
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "manifest push");
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_to_a_tracked_tag_redeploys_without_a_failed_call() {
    let dir = tempfile::tempdir().unwrap();
    let token = "webhook-token-for-tests";
    real_parts();
    let reg_addr = NotifyingRegistry::address();
    let cp = fnrt_controlplane::start(CpConfig {
        webhook_token: token.into(),
        allowed_registries: vec![reg_addr.clone()],
        ..controlplane_config(dir.path(), CLUSTER_TOKEN)
    })
    .await
    .unwrap();
    let webhook = format!("http://{}/fnrt/v1/registry-events", cp.api_address);
    let reg = NotifyingRegistry::start(reg_addr.clone(), &webhook, token).await;
    let agent = joined_agent_allowing(&cp, "push-node", &[reg_addr]).await;
    let api = Api::new(&cp);

    push_variant(&reg.addr, "live", 1, None).await;
    let ns = api.post("/namespaces", json!({ "name": "push" })).await;
    let image = format!("{}/fnrt/app:live", reg.addr);
    let f = api
        .post("/functions", json!({ "namespace_id": ns["id"], "name": "app", "min_scale": 1, "memory_limit": 128, "registry_image": image }))
        .await;
    let id = f["id"].as_str().unwrap().to_string();
    api.post(&format!("/functions/{id}/deploy"), json!({})).await;
    assert_eq!(api.wait_ready(&id).await["status"], "ready");

    // Calls all along: every one must succeed; the versions they saw are kept.
    let url = format!("http://{}/push/app/v", cp.gateway_address);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = tokio::spawn({
        let stop = stop.clone();
        async move {
            let http = fnrt_tests::http();
            let (mut failures, mut seen) = (Vec::new(), Vec::<String>::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
                        let version = v["env"]["VERSION"].as_str().unwrap_or("").to_string();
                        if seen.last() != Some(&version) {
                            seen.push(version);
                        }
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (failures, seen)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // v2 to the tag: the notification redeploys, pinned to the pushed digest.
    let v2 = push_variant(&reg.addr, "live", 2, None).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // One read of the record: its status and deploy count together.
        let (ready, deploys) = cp.ctx.state.read(|d| {
            let f = &d.functions[&id];
            (f.status == fnrt_controlplane::model::FunctionStatus::Ready, f.deploys)
        });
        if ready && deploys == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the push did not redeploy (deploys {deploys})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deployed = cp.ctx.state.read(|d| d.functions[&id].deployed.clone().unwrap().image);
    assert_eq!(deployed, format!("{image}@{v2}"));

    // The same notification again (registries retry): no new deploy.
    let again = json!({ "events": [{ "action": "push", "target": {
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": v2, "repository": "fnrt/app",
        "tag": "live", "url": format!("http://{}/v2/fnrt/app/manifests/{v2}", reg.addr) } }] });
    let r =
        fnrt_tests::http().post(&webhook).bearer_auth(token).body(again.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(r["deploying"], json!([]), "a digest already seen is not a new deploy");
    let r = fnrt_tests::http().post(&webhook).bearer_auth("wrong").body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);

    // v3 never listens: its deploy fails, v2 keeps serving.
    push_variant(&reg.addr, "live", 3, Some(&["/fixture", "never-listen"])).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f = api.get(&format!("/functions/{id}")).await;
        if f["status"] == "error" {
            assert!(f["error_message"].as_str().unwrap().contains("9000"), "{f}");
            break;
        }
        assert!(Instant::now() < deadline, "the failing push did not end in error: {f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (failures, seen) = caller.await.unwrap();
    assert!(failures.is_empty(), "calls failed during the switches: {failures:?}");
    assert_eq!(seen, ["1", "2"], "calls saw v1, then v2, and v2 stayed after the failed v3");

    let (s, v) = api.call(reqwest::Method::DELETE, &format!("/functions/{id}"), None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("deleting")), "{v}");
    // Deleting until no agent runs it: changes are refused meanwhile, then it is gone.
    // (The agent still reports it until its next heartbeat after the removal.)
    let (s, v) = api.call(reqwest::Method::GET, &format!("/functions/{id}"), None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("deleting")), "{v}");
    let (s, v) =
        api.call(reqwest::Method::PATCH, &format!("/functions/{id}"), Some(json!({ "min_scale": 2 }))).await;
    assert!(s == 404 || (s == 409 && v["type"] == "transient_state"), "{s} {v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent
        .client
        .clone()
        .list_functions(ListFunctionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .functions
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the deleted function stayed on the agent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while api.call(reqwest::Method::GET, &format!("/functions/{id}"), None).await.0 != 404 {
        assert!(Instant::now() < deadline, "the deleted function's record stayed once no agent ran it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.shutdown().await;
    drop(reg);
    clean(agent).await;
}

/// Whether a line of `function`'s output on `agent` contains `text`.
async fn printed(agent: &TestAgent, function: &str, text: &str) -> bool {
    let mut logs = agent
        .client
        .clone()
        .stream_logs(StreamLogsRequest { function: function.to_string(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    while let Some(line) = logs.message().await.unwrap() {
        if line.line.contains(text) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_messages_call_the_function_and_failed_deliveries_show_on_the_trigger() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    real_parts();
    let cp = fnrt_controlplane::start(CpConfig {
        nats_url: nats.url.clone(),
        ..controlplane_config(dir.path(), CLUSTER_TOKEN)
    })
    .await
    .unwrap();
    let agent = joined_agent(&cp, "nats-node").await;
    let api = Api::new(&cp);
    let ns = api.post("/namespaces", json!({ "name": "nats" })).await;
    let f = api
        .post("/functions", json!({ "namespace_id": ns["id"], "name": "echo", "min_scale": 1, "memory_limit": 128, "registry_image": image("echo") }))
        .await;
    let id = f["id"].as_str().unwrap().to_string();
    api.post(&format!("/functions/{id}/deploy"), json!({})).await;
    assert_eq!(api.wait_ready(&id).await["status"], "ready");
    let nats_config = |subject: &str| json!({ "subject": subject, "mnq_nats_account_id": "acc", "mnq_project_id": "proj", "mnq_region": "fr-par" });
    let t = api
        .post(
            "/triggers",
            json!({ "name": "orders", "function_id": id, "scw_nats_config": nats_config("orders.new") }),
        )
        .await;
    assert_eq!((t["status"].as_str(), t["input_type"].as_str()), (Some("ready"), Some("scw_nats")));

    // A published message reaches the function as its event.
    let client = async_nats::connect(nats.url.as_str()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        client.publish("orders.new", r#"{"order":42}"#.into()).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if printed(&agent, &format!("fn-{id}"), r#"echo: nats event: {"order":42}"#).await {
            break;
        }
        assert!(Instant::now() < deadline, "no NATS message reached the function in 20 s");
    }

    // A trigger of a function that runs nowhere: retried, then shown as the trigger's error.
    let idle = api.post("/functions", json!({ "namespace_id": ns["id"], "name": "idle" })).await;
    let bad = api
        .post(
            "/triggers",
            json!({ "function_id": idle["id"], "scw_nats_config": nats_config("orders.idle") }),
        )
        .await;
    let bad_id = bad["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        client.publish("orders.idle", "x".into()).await.unwrap();
        client.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let t = api.get(&format!("/triggers/{bad_id}")).await;
        if t["status"] == "error" {
            let m = t["error_message"].as_str().unwrap();
            assert!(m.contains("3 attempts") && m.contains("runs on no agent"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "the failed delivery did not show on the trigger: {t}");
    }

    // Bad triggers.
    let (s, body) = api
        .call(
            reqwest::Method::POST,
            "/triggers",
            Some(json!({ "function_id": id, "scw_nats_config": nats_config("a b") })),
        )
        .await;
    assert_eq!((s, body["details"][0]["argument_name"].as_str()), (400, Some("scw_nats_config.subject")));
    let (s, _) = api
        .call(reqwest::Method::POST, "/triggers", Some(json!({ "function_id": id, "sqs_config": {} })))
        .await;
    assert_eq!(s, 400);
    let list = api.get(&format!("/triggers?function_id={id}")).await;
    assert_eq!(list["total_count"], 1);

    let (s, _) =
        api.call(reqwest::Method::DELETE, &format!("/namespaces/{}", ns["id"].as_str().unwrap()), None).await;
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent
        .client
        .clone()
        .list_functions(ListFunctionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .functions
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the deleted function stayed on the agent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cp.shutdown().await;
    clean(agent).await;
    drop(nats);
}

/// A control plane started on the store of one just shut down in this process: the old
/// one's connection tasks (an agent's open HTTP/2 stream) let go of the redb file a
/// moment later, which redb reports as DatabaseAlreadyOpen until then. A new process
/// never meets this.
async fn start_again(cfg: CpConfig) -> fnrt_controlplane::Handle {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match fnrt_controlplane::start(cfg.clone()).await {
            Ok(cp) => return cp,
            Err(e) if format!("{e:?}").contains("DatabaseAlreadyOpen") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the control plane did not start again: {e:?}"),
        }
    }
}

/// The lines the control plane gathers for call `request_id` of `id`.
async fn call_lines(api: &Api, id: &str, request_id: &str) -> Vec<String> {
    let (s, v) = api
        .call_path(reqwest::Method::GET, &format!("/fnrt/v1/functions/{id}/logs?request_id={request_id}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["logs"].as_array().unwrap().iter().map(|l| l["line"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_invocations_are_queued_on_nats_and_survive_a_control_plane_restart() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    real_parts();
    let config = || CpConfig { nats_url: nats.url.clone(), ..controlplane_config(dir.path(), CLUSTER_TOKEN) };
    let cp = fnrt_controlplane::start(config()).await.unwrap();
    let agent = joined_agent(&cp, "async-a").await;
    let api = Api::new(&cp);
    let ns = api.post("/namespaces", json!({ "name": "queued" })).await;
    let f = api
        .post("/functions", json!({ "namespace_id": ns["id"], "name": "ev", "min_scale": 1, "memory_limit": 128, "registry_image": image("echo"), "scf_type": "event" }))
        .await;
    let id = f["id"].as_str().unwrap().to_string();
    api.post(&format!("/functions/{id}/deploy"), json!({})).await;
    assert_eq!(api.wait_ready(&id).await["status"], "ready");
    let invoke = |kind: &str| format!("/functions/{id}/invoke?invocation_type={kind}");

    // Queued: 202 and a request id at once; the call comes with that id, as an event.
    let (s, v) = api.call(reqwest::Method::POST, &invoke("event"), Some(json!({ "n": 1 }))).await;
    assert_eq!((s, v["status"].as_str()), (202, Some("queued")), "{v}");
    let first = v["request_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !call_lines(&api, &id, &first).await.iter().any(|l| l.contains(r#"echo: async event: {"n":1}"#)) {
        assert!(Instant::now() < deadline, "the queued call did not come in 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Refused: an unknown invocation type, an event past 128 KiB.
    let (s, v) = api.call(reqwest::Method::POST, &invoke("later"), Some(json!({}))).await;
    assert_eq!((s, v["details"][0]["argument_name"].as_str()), (400, Some("invocation_type")), "{v}");
    let big = json!({ "pad": "x".repeat(130 * 1024) });
    let (s, v) = api.call(reqwest::Method::POST, &invoke("event"), Some(big)).await;
    assert!(s == 400 && v["message"].as_str().unwrap().contains("at most 131072"), "{s} {v}");

    // Its node goes away: the queued event waits (retried with back-off) while the
    // control plane restarts, and reaches the function on the node that joins after.
    clean(agent).await;
    let (s, v) = api.call(reqwest::Method::POST, &invoke("event"), Some(json!({ "n": 2 }))).await;
    assert_eq!(s, 202, "{v}");
    let second = v["request_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cp.shutdown().await;
    let cp = start_again(config()).await;
    let api = Api::new(&cp);
    let agent = joined_agent(&cp, "async-b").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !call_lines(&api, &id, &second).await.iter().any(|l| l.contains(r#"echo: async event: {"n":2}"#)) {
        assert!(Instant::now() < deadline, "the event queued before the restart did not come in 60 s");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Without NATS: refused with what to set.
    cp.shutdown().await;
    let cp = start_again(CpConfig { nats_url: String::new(), ..config() }).await;
    let api = Api::new(&cp);
    let (s, v) = api.call(reqwest::Method::POST, &invoke("event"), Some(json!({}))).await;
    assert!(s == 412 && v["message"].as_str().unwrap().contains("nats_url"), "{s} {v}");
    let (s, _) =
        api.call(reqwest::Method::DELETE, &format!("/namespaces/{}", ns["id"].as_str().unwrap()), None).await;
    assert_eq!(s, 200);
    cp.shutdown().await;
    clean(agent).await;
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespaces_registry_credentials_pull_its_images_only_and_never_reach_an_agents_disk() {
    const PASSWORD: &str = "tenant-a-pw-5e1f0c";
    let proxy = fnrt_tests::proxy::RegistryProxy::start(
        &real_parts().registry,
        fnrt_tests::proxy::Fault::Bearer("tenant-a".into(), PASSWORD.into()),
    )
    .await;
    let host = proxy.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let cp = fnrt_controlplane::start(CpConfig {
        allowed_registries: vec![host.clone()],
        ..controlplane_config(dir.path(), CLUSTER_TOKEN)
    })
    .await
    .unwrap();
    let agent = joined_agent_allowing(&cp, "creds-node", std::slice::from_ref(&host)).await;
    let api = Api::new(&cp);
    let creds = |password: &str| json!({ "registry": host, "username": "tenant-a", "password": password });

    // Set on a namespace: answered with a hash, never the password.
    let a =
        api.post("/namespaces", json!({ "name": "tenant-a", "registry_credentials": creds(PASSWORD) })).await;
    assert_eq!(a["registry_credentials"]["registry"], host.as_str(), "{a}");
    assert!(a["registry_credentials"]["hashed_password"].as_str().unwrap().starts_with("$argon2id$"), "{a}");
    let listed = api.get("/namespaces").await.to_string();
    assert!(!a.to_string().contains(PASSWORD) && !listed.contains(PASSWORD), "{listed}");
    // Bad ones are refused with what is allowed.
    for bad in [
        json!({ "registry": host, "username": "a:b", "password": "x" }),
        json!({ "registry": "", "username": "u", "password": "p" }),
        json!({ "registry": host, "username": "u", "password": "p", "extra": 1 }),
        json!("text"),
    ] {
        let (s, v) = api
            .call(
                reqwest::Method::POST,
                "/namespaces",
                Some(json!({ "name": "bad", "registry_credentials": bad })),
            )
            .await;
        assert_eq!(
            (s, v["details"][0]["argument_name"].as_str()),
            (400, Some("registry_credentials")),
            "{v}"
        );
    }

    // Its function's private image is pulled with them and serves.
    let image = format!("{host}/fnrt/echo:latest");
    let deploy = |ns: Value, name: &'static str| {
        let (api, image) = (&api, image.clone());
        async move {
            let f = api
                .post("/functions", json!({ "namespace_id": ns["id"], "name": name, "min_scale": 1, "memory_limit": 128, "registry_image": image }))
                .await;
            let id = f["id"].as_str().unwrap().to_string();
            api.post(&format!("/functions/{id}/deploy"), json!({})).await;
            api.wait_ready(&id).await
        }
    };
    let fa = deploy(a.clone(), "fa").await;
    assert_eq!(fa["status"], "ready", "{fa}");
    let called = api.post(&format!("/functions/{}/invoke", fa["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(called["status"], 200, "{called}");

    // Another namespace on the same node gets nothing from that pull: without credentials
    // or with wrong ones, its deploy of the same (cached) image is refused by the registry.
    let b = api.post("/namespaces", json!({ "name": "tenant-b" })).await;
    let fb = deploy(b, "fb").await;
    assert_eq!(fb["status"], "error", "{fb}");
    assert!(fb["error_message"].as_str().unwrap().contains("credentials"), "{fb}");
    let c = api
        .post("/namespaces", json!({ "name": "tenant-c", "registry_credentials": creds("wrong-pw-c") }))
        .await;
    let fc = deploy(c, "fc").await;
    assert_eq!(fc["status"], "error", "{fc}");
    assert!(!fc.to_string().contains("wrong-pw-c"), "{fc}");

    // The agent kept them in memory only: nothing under its state has the password.
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                files(&p, out);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    let mut all = Vec::new();
    files(&agent.cfg.state_dir, &mut all);
    assert!(!all.is_empty());
    for f in &all {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert!(
            !bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()),
            "the password is in {}",
            f.display()
        );
    }
    // Nor does the agent show them.
    let listed = agent.client.clone().list_functions(ListFunctionsRequest {}).await.unwrap().into_inner();
    assert!(!format!("{listed:?}").contains(PASSWORD));

    // Removed from the namespace: its functions are deployed again, and the pull is refused.
    let (s, v) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/namespaces/{}", a["id"].as_str().unwrap()),
            Some(json!({ "registry_credentials": null })),
        )
        .await;
    assert_eq!((s, v["registry_credentials"].is_null()), (200, true), "{v}");
    let after = api.wait_ready(fa["id"].as_str().unwrap()).await;
    assert_eq!(after["status"], "error", "{after}");

    for ns in ["tenant-a", "tenant-b", "tenant-c"] {
        let list = api.get(&format!("/namespaces?name={ns}")).await;
        let id = list["namespaces"][0]["id"].as_str().unwrap().to_string();
        api.call(reqwest::Method::DELETE, &format!("/namespaces/{id}"), None).await;
    }
    cp.shutdown().await;
    clean(agent).await;
}
