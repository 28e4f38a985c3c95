//! The image pipeline against containerd's own client, side by side in one run:
//! (a) the agent's pull of fnrt/large (about 200 MB in several layers) against
//!     `ctr images pull` of the same image from the same registry, each into an empty
//!     cache; (b) cold start to the first answer with the image prefetched against the
//!     same with an empty cache (the start then pulls it).
//!
//! Run it with scripts/bench; `pull [runs]`, 3 runs of each by default, alternating.
#![allow(clippy::unwrap_used, clippy::too_many_lines, missing_docs)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{
    PrefetchImageRequest, RemoveImageRequest, StartInstanceRequest, StopInstanceRequest,
};
use fnrt_tests::{image, real_parts, TestAgent};

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args().nth(1).map(|a| a.parse().expect("runs must be a number")).unwrap_or(3);
    let parts = real_parts();
    let large = image("large");
    let mut agent = TestAgent::start().await;
    let ctr_ns = format!("{}-ctr", agent.cfg.namespace);
    let ctr = |args: &[&str]| {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&parts.containerd_socket)
            .arg("--namespace")
            .arg(&ctr_ns)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    // Warm the registry's files in the page cache once, unmeasured.
    fnrt_tests::pull_image(&mut agent.client, &large).await.unwrap();
    let (info, _) = fnrt_tests::pull_image(&mut agent.client, &large).await.unwrap();
    remove(&mut agent, &large).await;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..runs * 2 {
        if (i % 2 == 0) == (i / 2 % 2 == 0) {
            let t0 = Instant::now();
            fnrt_tests::pull_image(&mut agent.client, &large).await.unwrap();
            ours.push(t0.elapsed());
            remove(&mut agent, &large).await;
        } else {
            let t0 = Instant::now();
            ctr(&["images", "pull", "--plain-http", &large]);
            theirs.push(t0.elapsed());
            ctr(&["images", "rm", "--sync", &large]);
        }
    }

    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let req = PrefetchImageRequest { reference: large.clone(), pin: true, registry_credentials: None };
        let mut s = agent.client.prefetch_image(req).await.unwrap().into_inner();
        while s.message().await.unwrap().is_some() {}
        warm.push(start_and_call(&mut agent, &large).await);
        remove(&mut agent, &large).await;
        cold.push(start_and_call(&mut agent, &large).await);
        remove(&mut agent, &large).await;
    }
    agent.cleanup().await;
    let _ = Command::new("ctr")
        .arg("--address")
        .arg(&parts.containerd_socket)
        .args(["namespaces", "rm", &ctr_ns])
        .status();

    println!("image {large}: {} bytes compressed", info.size_bytes);
    row("(a) pull into an empty cache: fnrt PullImage", &ours);
    row("    ctr images pull --plain-http", &theirs);
    println!("    ratio fnrt/ctr: {:.2}x (target: at most 0.8x)", median(&ours) / median(&theirs));
    row("(b) cold start + first call, image prefetched", &warm);
    row("    cold start + first call, empty cache", &cold);
    println!("    speed-up with the prefetch: {:.1}x (target: at least 10x)", median(&cold) / median(&warm));
}

async fn remove(agent: &mut TestAgent, reference: &str) {
    agent.client.remove_image(RemoveImageRequest { reference: reference.into() }).await.unwrap();
}

/// StartInstance until the first 200 through the data plane; the instance is stopped after.
async fn start_and_call(agent: &mut TestAgent, reference: &str) -> Duration {
    let dp = agent.handle.dataplane_address;
    let t0 = Instant::now();
    let req = StartInstanceRequest {
        function: "large".into(),
        image: reference.into(),
        env: Default::default(),
        memory_mb: 0,
        ..Default::default()
    };
    let inst = agent.client.start_instance(req).await.unwrap().into_inner().instance.unwrap();
    let took = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(dp).unwrap();
        s.write_all(b"GET /function/large/ HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        t0.elapsed()
    })
    .await
    .unwrap();
    agent.client.stop_instance(StopInstanceRequest { id: inst.id }).await.unwrap();
    took
}

fn median(v: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms[ms.len() / 2]
}

fn row(name: &str, v: &[Duration]) {
    let ms: Vec<String> = v.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect();
    println!("{name:<48} median {:>8.1} ms   runs: {}", median(v), ms.join(", "));
}
