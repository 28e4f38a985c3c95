//! Keep-alive policies on a replayed trace: the fixed 10-minute keep-alive against the
//! hybrid histogram policy the agent learns per function (fnrt_function::keepalive, as
//! the agent's pools apply it: an instance that served a call with a prewarm window goes
//! at once; one is started when the prewarm ends and kept for the keep-alive window).
//!
//! The trace is generated (seeded, so runs are the same) with the arrival patterns
//! "Serverless in the Wild" describes: periodic functions (timers of 5 to 60 minutes with
//! a little jitter), bursty ones (bursts of calls seconds apart, the bursts minutes to
//! hours apart), frequent ones (a call every few seconds to minutes) and rare ones (hours
//! apart). Each function is replayed through both policies in simulated time (no
//! instance is started: the policies are compared on the same arrivals), one instance per
//! function, calls taking no time. Printed per pattern and in all: cold starts per call,
//! and instance-hours held (the memory the policy keeps, in instances).
//!
//! `prewarm [functions per pattern] [days] [seed]`: 50, 3 and 1 by default.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use fnrt_function::keepalive::{IdleTimes, Windows};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const FIXED: Duration = Duration::from_secs(600);

/// Call arrivals of one function, in seconds from the start, sorted.
fn generate(pattern: &str, rng: &mut StdRng, end: f64) -> Vec<f64> {
    let exp = |rng: &mut StdRng, mean: f64| -mean * (1.0 - rng.random::<f64>()).ln();
    let mut out = Vec::new();
    match pattern {
        "periodic" => {
            let period = [300.0, 900.0, 1800.0, 3600.0][rng.random_range(0..4)];
            let mut t = rng.random::<f64>() * period;
            while t < end {
                out.push(t + rng.random::<f64>() * 20.0);
                t += period;
            }
        }
        "bursty" => {
            let between = [600.0, 1800.0, 7200.0][rng.random_range(0..3)];
            let mut t = exp(rng, between);
            while t < end {
                for _ in 0..rng.random_range(3..20) {
                    out.push(t);
                    t += exp(rng, 5.0);
                }
                t += exp(rng, between);
            }
        }
        "frequent" => {
            let mean = [10.0, 60.0, 240.0][rng.random_range(0..3)];
            let mut t = exp(rng, mean);
            while t < end {
                out.push(t);
                t += exp(rng, mean);
            }
        }
        _ => {
            let mut t = exp(rng, 4.0 * 3600.0);
            while t < end {
                out.push(t);
                t += exp(rng, 4.0 * 3600.0);
            }
        }
    }
    out.retain(|t| *t < end);
    out.sort_by(f64::total_cmp);
    out
}

/// One instance's life under a policy.
#[derive(Default)]
struct Replay {
    idle: IdleTimes,
    windows: Option<Windows>,
    up_since: Option<f64>,
    last_used: f64,
    prewarmed: bool,
    prewarm_at: Option<f64>,
    last_arrival: Option<f64>,
    held: f64,
    cold: u32,
}

impl Replay {
    fn keep(&self, learn: bool) -> f64 {
        let keep =
            if learn { self.windows.map_or(FIXED, |w| w.keep_for(self.prewarmed, FIXED)) } else { FIXED };
        keep.as_secs_f64()
    }

    /// Stops the instance if it idled past its keep-alive before `t`.
    fn expire(&mut self, t: f64, learn: bool) {
        if let Some(up) = self.up_since {
            let until = self.last_used + self.keep(learn);
            if until < t {
                self.held += until - up;
                self.up_since = None;
            }
        }
    }

    fn call(&mut self, t: f64, learn: bool) {
        self.expire(t, learn);
        if let Some(at) = self.prewarm_at.take().filter(|at| *at <= t) {
            if self.up_since.is_none() {
                (self.up_since, self.last_used, self.prewarmed) = (Some(at), at, true);
                self.expire(t, learn);
            }
        }
        if self.up_since.is_none() {
            self.cold += 1;
            self.up_since = Some(t);
        }
        if learn {
            if let Some(last) = self.last_arrival {
                self.idle.record(Duration::from_secs_f64((t - last).max(0.0)));
            }
            self.last_arrival = Some(t);
            self.windows = self.idle.windows();
            self.prewarm_at =
                self.windows.filter(|w| !w.prewarm.is_zero()).map(|w| t + w.prewarm.as_secs_f64());
        }
        (self.last_used, self.prewarmed) = (t, false);
    }

    fn finish(&mut self, end: f64, learn: bool) {
        self.expire(end, learn);
        if let Some(up) = self.up_since {
            self.held += (self.last_used + self.keep(learn)).min(end) - up;
        }
    }
}

fn replay(arrivals: &[f64], end: f64, learn: bool) -> (u32, f64) {
    let mut r = Replay::default();
    for &t in arrivals {
        r.call(t, learn);
    }
    r.finish(end, learn);
    (r.cold, r.held)
}

fn main() {
    let arg =
        |n: usize, default: u64| std::env::args().nth(n).map_or(default, |a| a.parse().expect("a number"));
    let (per, days, seed) = (arg(1, 50) as usize, arg(2, 3), arg(3, 1));
    let end = days as f64 * 86_400.0;
    let mut rng = StdRng::seed_from_u64(seed);
    println!(
        "\nkeep-alive policies on a generated trace: {per} functions per pattern, {days} days, seed {seed}"
    );
    println!(
        "{:<10} {:>8} {:>12} {:>12} {:>14} {:>14}",
        "pattern", "calls", "cold fixed", "cold hybrid", "inst-h fixed", "inst-h hybrid"
    );
    let mut all = (0u64, 0u64, 0u64, 0.0, 0.0);
    for pattern in ["periodic", "bursty", "frequent", "rare"] {
        let mut sum = (0u64, 0u64, 0u64, 0.0, 0.0);
        for _ in 0..per {
            let a = generate(pattern, &mut rng, end);
            let (cf, hf) = replay(&a, end, false);
            let (ch, hh) = replay(&a, end, true);
            sum = (
                sum.0 + a.len() as u64,
                sum.1 + u64::from(cf),
                sum.2 + u64::from(ch),
                sum.3 + hf,
                sum.4 + hh,
            );
        }
        let pct = |c: u64| 100.0 * c as f64 / sum.0.max(1) as f64;
        println!(
            "{pattern:<10} {:>8} {:>11.2}% {:>11.2}% {:>14.1} {:>14.1}",
            sum.0,
            pct(sum.1),
            pct(sum.2),
            sum.3 / 3600.0,
            sum.4 / 3600.0
        );
        all = (all.0 + sum.0, all.1 + sum.1, all.2 + sum.2, all.3 + sum.3, all.4 + sum.4);
    }
    let pct = |c: u64| 100.0 * c as f64 / all.0.max(1) as f64;
    println!(
        "{:<10} {:>8} {:>11.2}% {:>11.2}% {:>14.1} {:>14.1}",
        "all",
        all.0,
        pct(all.1),
        pct(all.2),
        all.3 / 3600.0,
        all.4 / 3600.0
    );
    println!(
        "hybrid/fixed: cold starts {:.2}x, instance-hours held {:.2}x (target: fewer cold starts at no more memory)",
        all.2 as f64 / all.1.max(1) as f64,
        all.4 / all.3.max(f64::MIN_POSITIVE)
    );
}
