//! A deployed function's keep-alive and prewarm, learned from its calls (see
//! [`fnrt_function::keepalive`]): until its histogram says enough, its idle instances stay
//! for its fixed keep-alive; then, with a prewarm window, an instance that served a call
//! stops at once and one is started when the next call is due, kept for the keep-alive
//! window; without one, idle instances stay for the keep-alive window.

use std::time::Duration;

use tokio::time::Instant;

use fnrt_function::keepalive::{IdleTimes, Windows};

/// How often the windows are worked out again at most (a pass reads 240 bins).
const RECOMPUTE: Duration = Duration::from_secs(1);

/// What a pool learned of its calls' arrivals.
#[derive(Debug, Default)]
pub(super) struct Learned {
    idle: IdleTimes,
    last_arrival: Option<Instant>,
    windows: Option<Windows>,
    computed_at: Option<Instant>,
    /// When to start an instance ahead of the next call.
    pub prewarm_at: Option<Instant>,
}

impl Learned {
    /// Counts a call to `function` that arrived `now`.
    pub fn arrival(&mut self, function: &str, now: Instant) {
        if let Some(last) = self.last_arrival {
            self.idle.record(now.saturating_duration_since(last));
            if self.computed_at.is_none_or(|t| now.saturating_duration_since(t) >= RECOMPUTE) {
                let windows = self.idle.windows();
                if windows != self.windows {
                    tracing::info!(
                        function,
                        prewarm_s = windows.map(|w| w.prewarm.as_secs()),
                        keep_alive_s = windows.map(|w| w.keep_alive.as_secs()),
                        calls = self.idle.total(),
                        "keep-alive learned from the function's calls (none: its fixed keep-alive)"
                    );
                }
                self.windows = windows;
                self.computed_at = Some(now);
            }
        }
        self.last_arrival = Some(now);
        self.prewarm_at = self.windows.filter(|w| !w.prewarm.is_zero()).map(|w| now + w.prewarm);
    }

    /// The windows in use, if the histogram says enough.
    #[cfg(test)]
    pub fn windows(&self) -> Option<Windows> {
        self.windows
    }

    /// How long an idle instance is kept after it was last used, given the fixed
    /// keep-alive; `prewarmed` when it has not served a call since it started.
    pub fn keep_alive(&self, fixed: Duration, prewarmed: bool) -> Duration {
        self.windows.map_or(fixed, |w| w.keep_for(prewarmed, fixed))
    }

    /// Whether an instance is to be started ahead of the next call now (once per call).
    pub fn prewarm_due(&mut self, now: Instant) -> bool {
        match self.prewarm_at {
            Some(at) if now >= at => {
                self.prewarm_at = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn calls_every_30_minutes_learn_a_prewarm_and_stop_instances_between() {
        let mut l = Learned::default();
        assert_eq!(l.keep_alive(Duration::from_secs(600), false), Duration::from_secs(600), "fixed at first");
        for _ in 0..12 {
            l.arrival("f", Instant::now());
            tokio::time::advance(Duration::from_secs(30 * 60 + 10)).await;
        }
        l.arrival("f", Instant::now());
        let w = l.windows().expect("learned");
        assert_eq!(w.prewarm, Duration::from_secs(27 * 60));
        assert_eq!(l.keep_alive(Duration::from_secs(600), false), Duration::ZERO, "served: stops at once");
        assert_eq!(l.keep_alive(Duration::from_secs(600), true), w.keep_alive, "prewarmed: kept");
        assert!(!l.prewarm_due(Instant::now()));
        tokio::time::advance(w.prewarm).await;
        assert!(l.prewarm_due(Instant::now()));
        assert!(!l.prewarm_due(Instant::now()), "once per call");
    }
}
