//! Instance logs against the real containerd and runc: what a function prints reaches the
//! agent through its FIFOs, stamped with the call's request id, fetched by that id, by
//! instance after the instance is gone, and followed live.
#![allow(missing_docs, clippy::unwrap_used, clippy::too_many_lines)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{LogLine, StartInstanceRequest, StopInstanceRequest, StreamLogsRequest};
use fnrt_tests::{image, TestAgent};

async fn call(
    agent: &TestAgent,
    function: &str,
    path: &str,
    request_id: Option<&str>,
) -> (u16, String, String) {
    let url = format!("http://{}/function/{function}{path}", agent.handle.dataplane_address);
    let mut req = fnrt_tests::http().get(url);
    if let Some(id) = request_id {
        req = req.header("X-Scf-Request-Id", id);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let id =
        resp.headers().get("x-scf-request-id").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, id, resp.text().await.unwrap())
}

async fn lines(agent: &mut TestAgent, req: StreamLogsRequest) -> Vec<LogLine> {
    let mut stream = agent.client.stream_logs(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(l) = stream.message().await.unwrap() {
        out.push(l);
    }
    out
}

/// The lines of a request id, once `n` of them are there (the agent reads output
/// asynchronously), within 5 s.
async fn lines_of_request(agent: &mut TestAgent, id: &str, n: usize) -> Vec<LogLine> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = lines(agent, StreamLogsRequest { request_id: id.into(), ..Default::default() }).await;
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lines_printed_during_a_call_are_found_by_its_request_id_and_followed_live() {
    let mut agent = TestAgent::start().await;
    let req = StartInstanceRequest {
        function: "talk".into(),
        image: image("echo"),
        env: HashMap::new(),
        ..Default::default()
    };
    let inst = agent.client.start_instance(req).await.unwrap().into_inner().instance.unwrap();
    let tag: u32 = rand::random();

    // A follower from before the calls.
    let follow = StreamLogsRequest { function: "talk".into(), follow: true, ..Default::default() };
    let mut followed = agent.client.stream_logs(follow).await.unwrap().into_inner();

    let mine = format!("req-{tag:08x}");
    let (status, echoed, body) =
        call(&agent, "talk", &format!("/_fixture/log?text=first-{tag}"), Some(&mine)).await;
    assert_eq!((status, echoed.as_str()), (200, mine.as_str()), "{body}");
    // Calls on one instance that follow each other closely can share lines for the
    // agent's grace time (see crate::logs); these are apart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, generated, body) =
        call(&agent, "talk", &format!("/_fixture/log?text=second-{tag}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(generated.len(), 36, "a new request id is made when the caller gives none: {generated:?}");

    let got = lines_of_request(&mut agent, &mine, 2).await;
    let seen: Vec<(&str, &str)> = got.iter().map(|l| (l.stream.as_str(), l.line.as_str())).collect();
    let first = format!("first-{tag}");
    let first_err = format!("first-{tag} (stderr)");
    let mut want = vec![("stdout", first.as_str()), ("stderr", first_err.as_str())];
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    want.sort();
    assert_eq!(seen_sorted, want, "exactly the first call's lines");
    for l in &got {
        assert_eq!((l.instance.as_str(), l.function.as_str()), (inst.id.as_str(), "talk"));
        assert!(l.request_ids.contains(&mine), "{l:?}");
        humantime::parse_rfc3339(&l.time).unwrap();
    }
    let second = lines_of_request(&mut agent, &generated, 2).await;
    assert!(second.iter().any(|l| l.line == format!("second-{tag}")), "{second:?}");

    // The follower saw both calls' lines as they came.
    let mut live = Vec::new();
    while live.len() < 4 {
        let l = tokio::time::timeout(Duration::from_secs(5), followed.message()).await;
        let l = l.expect("followed lines within 5 s").unwrap().unwrap();
        if l.line.contains(&tag.to_string()) {
            live.push(l.line);
        }
    }
    assert!(live.contains(&first) && live.contains(&format!("second-{tag}")), "{live:?}");

    // A bad request id is refused with what is allowed.
    let (status, _, body) = call(&agent, "talk", "/_fixture/log?text=x", Some("a/b")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("X-Scf-Request-Id must be 1 to 128 characters"), "{body}");

    // The log outlives the instance.
    agent.client.stop_instance(StopInstanceRequest { id: inst.id.clone() }).await.unwrap();
    let after =
        lines(&mut agent, StreamLogsRequest { instance: inst.id.clone(), ..Default::default() }).await;
    assert!(after.iter().any(|l| l.line == first), "{after:?}");
    let since =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(5)).to_string();
    let none =
        lines(&mut agent, StreamLogsRequest { instance: inst.id.clone(), since, ..Default::default() }).await;
    assert!(none.is_empty(), "{none:?}");

    for (bad, field) in [
        (StreamLogsRequest { since: "yesterday".into(), ..Default::default() }, "since"),
        (StreamLogsRequest { instance: "../x".into(), ..Default::default() }, "instance"),
        (StreamLogsRequest { function: "Bad_Name".into(), ..Default::default() }, "function"),
    ] {
        let e = agent.client.stream_logs(bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{}", e.message());
    }
    drop(followed);
    agent.cleanup().await;
}
