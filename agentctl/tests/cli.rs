//! agentctl against an in-process agent on the real containerd: start, invoke, ls,
//! status, stop, and the documented exit codes (0 ok, 1 failure, 2 bad usage, 3 not found).
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use fnrt_tests::{image, TestAgent};

#[tokio::test(flavor = "multi_thread")]
async fn agentctl_drives_the_agent_with_documented_exit_codes() {
    let agent = TestAgent::start().await;
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_agentctl"));
    let socket = agent.handle.socket.clone();
    let run = move |args: &[&str]| {
        let out = std::process::Command::new(&bin).arg("--socket").arg(&socket).args(args).output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let echo = image("echo");
    let (code, out, err) = tokio::task::spawn_blocking({
        let run = run.clone();
        let echo = echo.clone();
        move || run(&["instance", "start", "cli", &echo, "-o", "json"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let inst: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = inst["id"].as_str().unwrap().to_string();
    let r = tokio::task::spawn_blocking({
        let run = run.clone();
        move || {
            let invoke = run(&["invoke", "cli", "--path", "/from-cli", "-d", "payload"]);
            // What a call printed, by the request id invoke shows on stderr.
            let said = run(&["invoke", "cli", "--path", "/_fixture/log?text=from-cli-call"]);
            let request =
                said.2.lines().find_map(|l| l.strip_prefix("request id: ")).unwrap_or("").to_string();
            let mut logs = run(&["logs", "--request", &request]);
            for _ in 0..50 {
                if logs.1.contains("from-cli-call") {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                logs = run(&["logs", "--request", &request]);
            }
            let bad_since = run(&["logs", "--since", "yesterday"]);
            let ls = run(&["instance", "ls"]);
            let status = run(&["node", "status", "-o", "json"]);
            let missing = run(&["instance", "stop", "cli-00000000"]);
            let bad = run(&["instance", "start", "NO", "x"]);
            let stop = run(&["instance", "stop", &id]);
            (invoke, ls, status, missing, bad, stop, id, (said, request, logs, bad_since))
        }
    })
    .await
    .unwrap();
    let (invoke, ls, status, missing, bad, stop, id, (said, request, logs, bad_since)) = r;
    assert_eq!(said.0, 0, "{}", said.2);
    assert!(!request.is_empty(), "invoke prints the request id on stderr: {}", said.2);
    assert_eq!(logs.0, 0, "{}", logs.2);
    let printed: Vec<&str> = logs.1.lines().collect();
    assert!(
        printed.len() == 2 && printed.iter().all(|l| l.contains(&id) && l.contains(&request)),
        "{}",
        logs.1
    );
    assert!(logs.1.contains(" stdout ") && logs.1.contains("from-cli-call (stderr)"), "{}", logs.1);
    assert_eq!(bad_since.0, 2, "{}", bad_since.2);
    assert!(bad_since.2.contains("neither a duration"), "{}", bad_since.2);
    assert_eq!(invoke.0, 0, "{}", invoke.2);
    assert!(
        invoke.1.contains("\"path\":\"/from-cli\"") && invoke.1.contains("\"body\":\"payload\""),
        "{}",
        invoke.1
    );
    assert!(ls.1.starts_with("ID") && ls.1.contains(&id), "{}", ls.1);
    let s: serde_json::Value = serde_json::from_str(&status.1).unwrap();
    assert_eq!(s["architecture"], "amd64");
    assert_eq!(missing.0, 3, "{}", missing.2);
    assert!(missing.2.starts_with("error: instance \"cli-00000000\" not found"), "{}", missing.2);
    assert_eq!(bad.0, 2, "{}", bad.2);
    assert_eq!(stop.0, 0, "{}", stop.2);
    let gone = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["--socket", "/nonexistent/agent.sock", "node", "status"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("cannot reach the agent at /nonexistent/agent.sock")
    );
    // Functions: deploy, call, list, remove; a second remove is "not found".
    let fns = tokio::task::spawn_blocking({
        let run = run.clone();
        move || {
            let deploy = run(&["function", "deploy", "clifn", &echo, "--provisioned", "1", "-e", "A=1"]);
            let call = run(&["invoke", "clifn", "--path", "/x"]);
            let ls = run(&["function", "ls", "-o", "json"]);
            let rm = run(&["function", "rm", "clifn"]);
            let again = run(&["function", "rm", "clifn"]);
            (deploy, call, ls, rm, again)
        }
    })
    .await
    .unwrap();
    let (deploy, call, ls, rm, again) = fns;
    assert_eq!(deploy.0, 0, "{}", deploy.2);
    assert!(deploy.1.starts_with("NAME") && deploy.1.contains("clifn"), "{}", deploy.1);
    assert_eq!(call.0, 0, "{}", call.2);
    assert!(call.1.contains("\"path\":\"/x\"") && call.1.contains("x-scf-name"), "{}", call.1);
    let listed: serde_json::Value = serde_json::from_str(&ls.1).unwrap();
    assert_eq!(
        (listed[0]["name"].as_str(), listed[0]["ready"].as_u64()),
        (Some("clifn"), Some(1)),
        "{}",
        ls.1
    );
    assert_eq!(rm.0, 0, "{}", rm.2);
    assert_eq!(again.0, 3, "{}", again.2);
    assert!(again.2.contains("not deployed"), "{}", again.2);
    agent.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn agentctl_shows_the_control_plane_view_of_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cp = fnrt_controlplane::start(fnrt_tests::controlplane_config(
        dir.path(),
        "cluster-token-for-the-cli-test-0123456789",
    ))
    .await
    .unwrap();
    let url = format!("http://{}", cp.grpc_address);
    let agent = TestAgent::start_with(move |c| {
        c.controlplane_url = Some(url);
        c.controlplane_token = Some("cluster-token-for-the-cli-test-0123456789".into());
        c.node_name = "cli-node".into();
    })
    .await;
    while cp.ctx.scheduler.agents().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let api = format!("http://{}", cp.api_address);
    let token = cp.ctx.cfg.admin_token.expose().to_string();
    let http = fnrt_tests::http();
    let base = format!("{api}/functions/v1beta1/regions/fr-par");
    let ns: serde_json::Value = serde_json::from_slice(
        &http
            .post(format!("{base}/namespaces"))
            .header("X-Auth-Token", &token)
            .body(r#"{"name":"clins"}"#)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let body = serde_json::json!({ "namespace_id": ns["id"], "name": "clifn" }).to_string();
    let r = http
        .post(format!("{base}/functions"))
        .header("X-Auth-Token", &token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str], token: &str| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentctl"))
                .args(["cluster", "--controlplane", &api, "--admin-token", token])
                .args(args)
                .output()
                .unwrap();
            (
                out.status.code().unwrap(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        (
            run(&["agents"], &token),
            run(&["agents", "-o", "json"], &token),
            run(&["placement"], &token),
            run(&["agents"], "wrong"),
        )
    })
    .await
    .unwrap();
    let (table, json, placement, wrong) = out;
    assert_eq!(table.0, 0, "{}", table.2);
    assert!(
        table.1.starts_with("NODE") && table.1.contains("cli-node") && table.1.contains("ready"),
        "{}",
        table.1
    );
    let v: serde_json::Value = serde_json::from_str(&json.1).unwrap();
    assert_eq!(v["agents"][0]["node"], "cli-node");
    assert_eq!(v["agents"][0]["architecture"], "amd64");
    assert!(placement.1.contains("clins/clifn") && placement.1.contains("created"), "{}", placement.1);
    assert_eq!(wrong.0, 1);
    assert!(wrong.2.contains("401") && wrong.2.contains("admin secret key"), "{}", wrong.2);
    cp.shutdown().await;
    agent.cleanup().await;
}
