//! The sandbox classes side by side, on one agent that offers both: the cold start of a
//! pulled image (`StartInstance` until the first 200 through the data plane), runs
//! alternating between runc and gvisor; then warm calls (sequential GETs through the data
//! plane on kept-alive connections) to one ready instance of each, in alternating blocks.
//! The ratios gvisor/runc of the medians are printed, with the targets of issue 22 (cold
//! start at most 2x, warm calls at most 1.5x).
//!
//! Run it with scripts/bench (which starts containerd and the registry and sets the
//! environment); `sandboxes [runs] [calls] [memory_mb]`, 20 cold starts and 2,000 warm
//! calls of each class by default, the warm instances of the default size (128 MB, so
//! 0.1 vCPU) unless memory_mb says otherwise (1792: a whole vCPU).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fnrt_proto::agent::v1::{StartInstanceRequest, StopInstanceRequest};
use fnrt_tests::{image, TestAgent};

const CLASSES: [&str; 2] = ["runc", "gvisor"];
/// Warm calls are made in blocks of this many, alternating between the classes.
const BLOCK: usize = 100;

#[tokio::main]
async fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).map_or(d, |a| a.parse().expect("a number"));
    let (runs, calls, memory_mb) = (arg(1, 20), arg(2, 2000), arg(3, 0) as u32);
    let echo = image("echo");
    // FNRT_BENCH_GVISOR_FLAGS: runsc flags (space-separated) to try, e.g. "--overlay2=none".
    let flags: Vec<String> = std::env::var("FNRT_BENCH_GVISOR_FLAGS")
        .map(|f| f.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut agent = TestAgent::start_class("gvisor", |c| c.gvisor_flags.extend(flags)).await;
    fnrt_tests::pull_image(&mut agent.client, &echo).await.unwrap();
    let http = fnrt_common::tls::http_client(&[]).unwrap().build().unwrap();
    let dp = agent.handle.dataplane_address;

    // One unmeasured start of each warms the page cache and the binaries.
    for class in CLASSES {
        cold(&mut agent, &http, &echo, class).await;
    }
    let mut starts: [Vec<Duration>; 2] = Default::default();
    let mut phases: [Vec<Phases>; 2] = Default::default();
    for i in 0..runs {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for c in order {
            let (took, p) = cold(&mut agent, &http, &echo, CLASSES[c]).await;
            starts[c].push(took);
            phases[c].push(p);
        }
    }

    let mut ids = Vec::new();
    for class in CLASSES {
        ids.push(start(&mut agent, &echo, &format!("warm-{class}"), class, memory_mb).await.0);
    }
    let mut warm: [Vec<Duration>; 2] = Default::default();
    for c in [0, 1] {
        // Unmeasured: the data plane's pooled connection and the instance's first calls.
        block(&http, dp, CLASSES[c], 20).await;
    }
    for i in 0..calls.div_ceil(BLOCK) {
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for c in order {
            warm[c].extend(block(&http, dp, CLASSES[c], BLOCK).await);
        }
    }
    for id in ids {
        agent.client.stop_instance(StopInstanceRequest { id }).await.unwrap();
    }
    agent.cleanup().await;

    let size = if memory_mb == 0 { "the default size".to_string() } else { format!("{memory_mb} MB") };
    println!("sandbox classes on one agent: cold start ({runs} each, alternating) and warm calls ({} each, alternating blocks of {BLOCK}, instances of {size})", warm[0].len());
    println!("{:<44} {:>8} {:>8} {:>8} {:>8} {:>8}", "", "p50 ms", "mean", "min", "p90", "p99");
    let mut p50 = [[0.0; 2]; 2];
    for (k, (what, sets)) in [("cold start", &starts), ("warm call", &warm)].into_iter().enumerate() {
        for c in [0, 1] {
            let s = stats(&sets[c]);
            p50[k][c] = s[0];
            let label = format!("{what}, {}", CLASSES[c]);
            println!("{label:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}", s[0], s[1], s[2], s[3], s[4]);
        }
    }
    println!("ratio gvisor/runc, cold start p50: {:.2}x (target: at most 2x)", p50[0][1] / p50[0][0]);
    println!("ratio gvisor/runc, warm call p50: {:.2}x (target: at most 1.5x)", p50[1][1] / p50[1][0]);
    println!("where the cold start went (median ms, as StartInstance reports it): runc, gvisor");
    for (i, (name, _)) in phases[0].first().into_iter().flatten().enumerate() {
        let median = |runs: &[Phases]| {
            let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(i).map(|p| p.1)).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        println!("  {name:<10} {:>8.1} {:>8.1}", median(&phases[0]), median(&phases[1]));
    }
}

/// A start's phases as the agent recorded them: name, ms.
type Phases = Vec<(String, f64)>;

/// p50, mean, min, p90, p99 in ms.
fn stats(v: &[Duration]) -> [f64; 5] {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    [p(0.5), ms.iter().sum::<f64>() / ms.len() as f64, ms[0], p(0.9), p(0.99)]
}

/// Starts an instance of `function` in `class`; its id and start phases.
async fn start(
    agent: &mut TestAgent,
    echo: &str,
    function: &str,
    class: &str,
    memory_mb: u32,
) -> (String, Phases) {
    let req = StartInstanceRequest {
        memory_mb,
        function: function.into(),
        image: echo.into(),
        sandbox_class: class.into(),
        ..Default::default()
    };
    let inst = agent.client.start_instance(req).await.unwrap().into_inner().instance.unwrap();
    (inst.id, inst.start_phases.iter().map(|p| (p.name.clone(), p.ms)).collect())
}

/// StartInstance, then GET through the data plane until 200; then StopInstance (not timed).
async fn cold(agent: &mut TestAgent, http: &reqwest::Client, echo: &str, class: &str) -> (Duration, Phases) {
    let function = format!("cold-{class}");
    let url = format!("http://{}/function/{function}/", agent.handle.dataplane_address);
    let t0 = Instant::now();
    let (id, phases) = start(agent, echo, &function, class, 0).await;
    loop {
        if http.get(&url).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no 200 from {url}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = t0.elapsed();
    agent.client.stop_instance(StopInstanceRequest { id }).await.unwrap();
    (took, phases)
}

/// `n` sequential GETs of the warm instance of `class`, each timed.
async fn block(http: &reqwest::Client, dp: std::net::SocketAddr, class: &str, n: usize) -> Vec<Duration> {
    let url = format!("http://{dp}/function/warm-{class}/");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let resp = http.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        out.push(t0.elapsed());
    }
    out
}
