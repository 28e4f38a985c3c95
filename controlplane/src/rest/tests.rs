//! The API in process, on 127.0.0.1:0, with agents registered over the join service as
//! an agent does (their links are never called): the sandbox class extension fields of
//! namespaces and functions, and their refusals at create and update.

use serde_json::{json, Value};

use fnrt_proto::controlplane::v1 as pb;

const CLUSTER_TOKEN: &str = "sandbox-classes-test-cluster-token-0123456789";

/// A control plane with a client of its API.
struct Cp {
    handle: crate::Handle,
    http: reqwest::Client,
    base: String,
    _dir: tempfile::TempDir,
}

async fn cp() -> Cp {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = "127.0.0.1:0".parse().expect("address");
    let cfg = crate::Config {
        api_listen: local,
        gateway_listen: local,
        grpc_listen: local,
        metrics_listen: local,
        state_dir: dir.path().to_path_buf(),
        cluster_token: CLUSTER_TOKEN.into(),
        ..Default::default()
    };
    let handle = crate::start(cfg).await.expect("the control plane starts");
    let base = format!("http://{}/functions/v1beta1/regions/{}", handle.api_address, handle.ctx.cfg.region);
    let http = fnrt_common::tls::default_http_client().expect("http client");
    Cp { handle, http, base, _dir: dir }
}

impl Cp {
    /// Sends `body` to `path` of the API; the status and the JSON answer.
    async fn call(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("X-Auth-Token", self.handle.ctx.cfg.admin_token.expose())
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(body).expect("json"))
            .send()
            .await
            .expect("the API answers");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("a JSON answer"))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, &body).await
    }

    async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path, &body).await
    }

    /// Creates a namespace with `extra` fields; its id.
    async fn namespace(&self, name: &str, extra: Value) -> String {
        let mut body = json!({ "name": name, "project_id": "p" });
        body.as_object_mut().expect("object").extend(extra.as_object().cloned().unwrap_or_default());
        let (status, ns) = self.post("/namespaces", body).await;
        assert_eq!(status, 200, "{ns}");
        ns["id"].as_str().expect("id").to_string()
    }

    /// Registers agent `node` offering `classes` (none: an agent older than classes).
    async fn agent(&self, node: &str, classes: &[&str]) {
        let mut client = pb::control_plane_client::ControlPlaneClient::connect(format!(
            "http://{}",
            self.handle.grpc_address
        ))
        .await
        .expect("join service");
        let mut req = tonic::Request::new(pb::RegisterRequest {
            node: node.into(),
            node_id: format!("{node}-id"),
            // Never called: no function is deployed in these tests.
            grpc_endpoint: "http://127.0.0.1:9".into(),
            dataplane_address: "127.0.0.1:9".into(),
            report: Some(pb::Report {
                cpus: 2,
                memory_bytes: 4 << 30,
                sandbox_classes: classes.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            }),
            dataplane_tls: false,
        });
        let bearer = format!("Bearer {CLUSTER_TOKEN}").parse().expect("header");
        req.metadata_mut().insert("authorization", bearer);
        client.register(req).await.expect("registered");
    }
}

/// The `help_message` of a refusal's `sandbox_class` argument, checking its shape.
fn refusal(status: u16, body: &Value) -> String {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "invalid_arguments", "{body}");
    let details = body["details"].as_array().expect("details");
    let d = details.iter().find(|d| d["argument_name"] == "sandbox_class").expect("a sandbox_class detail");
    d["help_message"].as_str().expect("help_message").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_or_weird_sandbox_class_is_refused_with_a_bounded_message() {
    let cp = cp().await;
    cp.agent("n1", &["runc", "gvisor"]).await;
    let ns = cp.namespace("ns", json!({})).await;
    let huge = "gvisor".repeat(100_000);
    let weird = "gvisor\u{0}\n\u{202e}\"}; rm -rf /".to_string();
    for class in [huge, weird, "GVISOR".into(), " runc".into(), "unknown_sandbox_class".into()] {
        let (status, body) =
            cp.post("/functions", json!({ "name": "f", "namespace_id": ns, "sandbox_class": class })).await;
        let help = refusal(status, &body);
        assert!(help.ends_with("is not a sandbox class: use runc or gvisor"), "{help}");
        assert!(body.to_string().len() < 600, "{} bytes: {body}", body.to_string().len());
        assert!(!help.contains('\n') && !help.contains('\0') && !help.contains('\u{202e}'), "{help:?}");
        let (status, body) = cp.post("/namespaces", json!({ "name": "ns2", "sandbox_class": class })).await;
        refusal(status, &body);
        assert!(body.to_string().len() < 600, "{body}");
        let (status, body) = cp.patch(&format!("/namespaces/{ns}"), json!({ "sandbox_class": class })).await;
        refusal(status, &body);
    }
    // Not a string at all: refused as the body's type, still briefly.
    for class in [json!(7), json!({ "name": "gvisor" }), json!(["gvisor"])] {
        let (status, body) =
            cp.post("/functions", json!({ "name": "f", "namespace_id": ns, "sandbox_class": class })).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().len() < 600, "{body}");
    }
    let (_, list) = cp.call(reqwest::Method::GET, "/functions", &json!({})).await;
    assert_eq!(list["total_count"], 0, "nothing refused was kept: {list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_class_is_refused_saying_which_are_allowed() {
    let cp = cp().await;
    let ns = cp.namespace("ns", json!({})).await;
    let (status, body) =
        cp.post("/functions", json!({ "name": "f", "namespace_id": ns, "sandbox_class": "kata" })).await;
    assert_eq!(refusal(status, &body), "\"kata\" is not a sandbox class: use runc or gvisor");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_class_no_live_node_offers_is_refused_at_create_and_update() {
    let cp = cp().await;
    let ns = cp.namespace("ns", json!({})).await;
    // No agent yet: runc, the default, is kept to be placed once one joins; gVisor is not.
    let (status, f) = cp.post("/functions", json!({ "name": "early", "namespace_id": ns })).await;
    assert_eq!((status, f["sandbox_class"].as_str()), (200, Some("runc")), "{f}");
    let (status, body) =
        cp.post("/functions", json!({ "name": "f", "namespace_id": ns, "sandbox_class": "gvisor" })).await;
    assert_eq!(
        refusal(status, &body),
        "sandbox_class \"gvisor\" is offered by no node: no node is connected"
    );

    // Agents that offer runc only (one older than classes, which reports none).
    cp.agent("old", &[]).await;
    cp.agent("new", &["runc"]).await;
    let (status, body) =
        cp.post("/functions", json!({ "name": "f", "namespace_id": ns, "sandbox_class": "gvisor" })).await;
    assert_eq!(refusal(status, &body), "sandbox_class \"gvisor\" is offered by no node: nodes offer runc");
    let id = f["id"].as_str().expect("id");
    let (status, body) = cp.patch(&format!("/functions/{id}"), json!({ "sandbox_class": "gvisor" })).await;
    assert_eq!(refusal(status, &body), "sandbox_class \"gvisor\" is offered by no node: nodes offer runc");
    // A namespace's default too, on create and on update.
    let (status, body) = cp.post("/namespaces", json!({ "name": "ns2", "sandbox_class": "gvisor" })).await;
    assert_eq!(refusal(status, &body), "sandbox_class \"gvisor\" is offered by no node: nodes offer runc");
    let (status, body) = cp.patch(&format!("/namespaces/{ns}"), json!({ "sandbox_class": "gvisor" })).await;
    assert_eq!(refusal(status, &body), "sandbox_class \"gvisor\" is offered by no node: nodes offer runc");
    // What was refused changed nothing; what was offered is taken.
    let (status, f) = cp.patch(&format!("/functions/{id}"), json!({ "sandbox_class": "runc" })).await;
    assert_eq!((status, f["sandbox_class"].as_str()), (200, Some("runc")), "{f}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_namespace_default_is_inherited_and_an_update_changes_the_class() {
    let cp = cp().await;
    cp.agent("n1", &["runc"]).await;
    cp.agent("n2", &["runc", "gvisor"]).await;
    let plain = cp.namespace("plain", json!({ "sandbox_class": null })).await;
    let strict = cp.namespace("strict", json!({ "sandbox_class": "gvisor" })).await;
    let (_, ns) = cp.call(reqwest::Method::GET, &format!("/namespaces/{strict}"), &json!({})).await;
    assert_eq!(ns["sandbox_class"], "gvisor", "{ns}");
    let (_, ns) = cp.call(reqwest::Method::GET, &format!("/namespaces/{plain}"), &json!({})).await;
    assert_eq!(ns["sandbox_class"], "runc", "{ns}");

    // "" is "not set", as the SDKs' zero values are: the namespace's default.
    let (status, inherits) =
        cp.post("/functions", json!({ "name": "a", "namespace_id": strict, "sandbox_class": "" })).await;
    assert_eq!((status, inherits["sandbox_class"].as_str()), (200, Some("gvisor")), "{inherits}");
    let (status, own) =
        cp.post("/functions", json!({ "name": "b", "namespace_id": strict, "sandbox_class": "runc" })).await;
    assert_eq!((status, own["sandbox_class"].as_str()), (200, Some("runc")), "{own}");
    let (_, f) = cp.post("/functions", json!({ "name": "c", "namespace_id": plain })).await;
    assert_eq!(f["sandbox_class"], "runc", "{f}");
    assert_eq!(f["sandbox"], "v2", "Scaleway's sandbox field is apart: {f}");

    // An update changes the class; one without the field (or with "") keeps it.
    let id = f["id"].as_str().expect("id");
    let (status, f) = cp.patch(&format!("/functions/{id}"), json!({ "sandbox_class": "gvisor" })).await;
    assert_eq!((status, f["sandbox_class"].as_str()), (200, Some("gvisor")), "{f}");
    let (_, f) =
        cp.patch(&format!("/functions/{id}"), json!({ "sandbox_class": "", "memory_limit": 512 })).await;
    assert_eq!(f["sandbox_class"], "gvisor", "{f}");
    let (_, f) = cp.call(reqwest::Method::GET, &format!("/functions/{id}"), &json!({})).await;
    assert_eq!((f["sandbox_class"].as_str(), f["memory_limit"].as_u64()), (Some("gvisor"), Some(512)), "{f}");

    // The namespace's default changes what its functions without a class of their own run in.
    let (status, ns) = cp.patch(&format!("/namespaces/{strict}"), json!({ "sandbox_class": "runc" })).await;
    assert_eq!((status, ns["sandbox_class"].as_str()), (200, Some("runc")), "{ns}");
    let inherits_id = inherits["id"].as_str().expect("id");
    let (_, f) = cp.call(reqwest::Method::GET, &format!("/functions/{inherits_id}"), &json!({})).await;
    assert_eq!(f["sandbox_class"], "runc", "{f}");
    let (_, list) =
        cp.call(reqwest::Method::GET, &format!("/namespaces/{strict}/functions"), &json!({})).await;
    let classes: Vec<&str> = list["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .filter_map(|f| f["sandbox_class"].as_str())
        .collect();
    assert_eq!(classes, vec!["runc", "runc"], "{list}");

    // The operator's view of the agents shows what each offers.
    let resp = cp
        .http
        .get(format!("http://{}/fnrt/v1/agents", cp.handle.api_address))
        .header("X-Auth-Token", cp.handle.ctx.cfg.admin_token.expose())
        .send()
        .await
        .expect("agents");
    let agents: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    let offered: Vec<Value> =
        agents["agents"].as_array().expect("agents").iter().map(|a| a["sandbox_classes"].clone()).collect();
    assert_eq!(offered, vec![json!(["runc"]), json!(["runc", "gvisor"])], "{agents}");

    // The gVisor node goes: a function that would inherit gVisor is refused, saying where
    // the class comes from; a change to a function already in gVisor is not refused.
    let late = cp.namespace("late", json!({ "sandbox_class": "gvisor" })).await;
    cp.handle.ctx.scheduler.agents_mut().get_mut("n2").expect("n2").lost = true;
    let (status, body) = cp.post("/functions", json!({ "name": "d", "namespace_id": late })).await;
    assert_eq!(
        refusal(status, &body),
        "sandbox_class \"gvisor\" is offered by no node: nodes offer runc (the default of namespace late: \
         give the function a sandbox_class, or change the namespace's)"
    );
    let (status, f) = cp
        .patch(&format!("/functions/{id}"), json!({ "sandbox_class": "gvisor", "memory_limit": 1024 }))
        .await;
    assert_eq!((status, f["memory_limit"].as_u64()), (200, Some(1024)), "{f}");
}

#[tokio::test(flavor = "multi_thread")]
async fn records_from_before_classes_load_as_runc() {
    let cp = cp().await;
    let ns = cp.namespace("ns", json!({})).await;
    let (_, f) = cp.post("/functions", json!({ "name": "f", "namespace_id": ns })).await;
    let id = f["id"].as_str().expect("id").to_string();
    let (ns, f) = cp.handle.ctx.state.read(|d| (d.namespaces[&ns].clone(), d.functions[&id].clone()));
    // A function that names no class is stored without the field, as before classes.
    let stored = serde_json::to_value(&f).expect("json");
    assert!(stored.get("sandbox_class").is_none(), "{stored}");
    let mut old_ns = serde_json::to_value(&ns).expect("json");
    old_ns.as_object_mut().expect("object").remove("sandbox_class");
    let loaded: crate::model::Namespace = serde_json::from_value(old_ns).expect("an old namespace loads");
    assert_eq!(loaded.sandbox_class, fnrt_function::SandboxClass::Runc);
    let mut old_deployed = serde_json::to_value(crate::model::Deployed::of(&f, &ns)).expect("json");
    old_deployed.as_object_mut().expect("object").remove("sandbox_class");
    let loaded: crate::model::Deployed = serde_json::from_value(old_deployed).expect("an old deploy loads");
    assert_eq!(loaded.sandbox_class, fnrt_function::SandboxClass::Runc);
}
