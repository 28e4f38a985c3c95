//! A circuit breaker per agent: after `TRIP_AFTER` calls in a row fail as a dead or hung
//! agent fails (unreachable, deadline passed, cut), the scheduler stops calling it for
//! `OPEN_FOR`, then tries one call (half-open): a success closes the breaker, a failure
//! opens it again. A refusal (a spec the agent will not take) is an answer, not a
//! failure of the agent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed calls in a row that open the breaker.
pub const TRIP_AFTER: u32 = 3;
/// How long an open breaker lets no call through.
pub const OPEN_FOR: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
}

/// The breakers, by node.
#[derive(Default)]
pub struct Breakers {
    map: Mutex<HashMap<String, Circuit>>,
}

/// Whether `code` says the agent itself failed (rather than answering).
pub fn is_agent_failure(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Circuit>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call to `node` may go now.
    pub fn allows(&self, node: &str, now: Instant) -> bool {
        self.lock().get(node).and_then(|c| c.open_until).is_none_or(|until| now >= until)
    }

    /// Records how a call to `node` ended: `failed` when the agent failed.
    pub fn record(&self, node: &str, failed: bool, now: Instant) {
        let mut map = self.lock();
        let c = map.entry(node.to_string()).or_default();
        if failed {
            c.failures += 1;
            if c.failures >= TRIP_AFTER {
                if c.open_until.is_none_or(|until| now >= until) {
                    tracing::warn!(
                        node,
                        failures = c.failures,
                        "agent calls keep failing: not calling it for {} s",
                        OPEN_FOR.as_secs()
                    );
                }
                c.open_until = Some(now + OPEN_FOR);
            }
        } else {
            *c = Circuit::default();
        }
    }

    /// Whether `node`'s breaker is open now.
    pub fn is_open(&self, node: &str, now: Instant) -> bool {
        !self.allows(node, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_failures_in_a_row_lets_one_through_later_and_closes_on_success() {
        let b = Breakers::default();
        let t0 = Instant::now();
        for _ in 0..TRIP_AFTER - 1 {
            b.record("a", true, t0);
        }
        assert!(b.allows("a", t0));
        b.record("a", false, t0);
        for _ in 0..TRIP_AFTER {
            b.record("a", true, t0);
        }
        assert!(b.is_open("a", t0) && b.allows("other", t0));
        let later = t0 + OPEN_FOR;
        assert!(b.allows("a", later), "half-open: one call goes");
        b.record("a", true, later);
        assert!(b.is_open("a", later), "a failed trial opens it again");
        b.record("a", false, later + OPEN_FOR);
        assert!(b.allows("a", later + OPEN_FOR));
        assert!(
            !is_agent_failure(tonic::Code::ResourceExhausted) && is_agent_failure(tonic::Code::Unavailable)
        );
    }
}
