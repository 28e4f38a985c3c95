//! How long a function's idle instance is kept, and when one is started ahead of a call,
//! learned from the gaps between its calls: the hybrid histogram policy of "Serverless in
//! the Wild" (Shahrad et al., USENIX ATC '20).
//!
//! Each function keeps a histogram of its idle times (the gap between one call's arrival
//! and the next one's) in one-minute bins over four hours. When the histogram has enough
//! calls and is concentrated (the coefficient of variation of its bin counts is high),
//! its head and tail give two windows:
//!
//! - **prewarm**: the 5th percentile, less 10%: after a call, no instance is kept until
//!   then (the next call is unlikely to come sooner), and one is started at that time;
//! - **keep-alive**: from the prewarm time to the 99th percentile, plus 10%: how long that
//!   instance (or, with no prewarm, the instance that served the last call) is kept.
//!
//! A function with too few calls, gaps spread evenly, or too many gaps past four hours
//! has no windows: the caller keeps its fixed keep-alive (the paper falls back to a fixed
//! window or to ARIMA for the last case; this falls back to the fixed window).

use std::time::Duration;

/// Width of one bin.
pub const BIN: Duration = Duration::from_secs(60);
/// Bins: four hours of idle times.
pub const BINS: usize = 240;
/// Calls needed before the histogram is trusted.
pub const MIN_SAMPLES: u32 = 10;
/// The least coefficient of variation of the bin counts for a representative histogram.
const MIN_CV: f64 = 2.0;
/// The largest share of idle times past the histogram's range it still copes with.
const MAX_OUT_OF_BOUNDS: f64 = 0.1;
/// Without a prewarm window, the learned keep-alive is at most this many fixed ones.
const NO_PREWARM_CAP: u32 = 2;
/// The head and tail percentiles, and the margin taken off the one and added to the other.
const HEAD: f64 = 0.05;
const TAIL: f64 = 0.99;
const MARGIN: f64 = 0.10;

/// The idle times of one function.
#[derive(Clone, Debug)]
pub struct IdleTimes {
    bins: Box<[u32; BINS]>,
    out_of_bounds: u32,
    total: u32,
}

/// The windows a histogram gives (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// How long after a call no instance is kept; one is started at its end.
    pub prewarm: Duration,
    /// How long an instance is kept from then.
    pub keep_alive: Duration,
}

impl Windows {
    /// How long an idle instance is kept after it was last used, given the function's
    /// fixed keep-alive: an instance that served a call when there is a prewarm window goes
    /// at once (the next call is not due before it ends); one started by the prewarm
    /// (`prewarmed`, no call served yet) is kept for the keep-alive window. Without a
    /// prewarm window (calls close together, then now and then a long gap), the window is
    /// capped at twice the fixed keep-alive: a function whose gaps show no idle period to
    /// skip does not hold an instance for hours.
    pub fn keep_for(&self, prewarmed: bool, fixed: Duration) -> Duration {
        if prewarmed {
            self.keep_alive
        } else if self.prewarm.is_zero() {
            self.keep_alive.min(fixed.saturating_mul(NO_PREWARM_CAP))
        } else {
            Duration::ZERO
        }
    }
}

impl Default for IdleTimes {
    fn default() -> IdleTimes {
        IdleTimes { bins: Box::new([0; BINS]), out_of_bounds: 0, total: 0 }
    }
}

impl IdleTimes {
    /// Counts one idle time.
    pub fn record(&mut self, idle: Duration) {
        let bin = (idle.as_secs() / BIN.as_secs()) as usize;
        match self.bins.get_mut(bin) {
            Some(count) => *count = count.saturating_add(1),
            None => self.out_of_bounds = self.out_of_bounds.saturating_add(1),
        }
        self.total = self.total.saturating_add(1);
    }

    /// Idle times counted.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The windows, when the histogram says enough; none means "keep the fixed keep-alive".
    pub fn windows(&self) -> Option<Windows> {
        if self.total < MIN_SAMPLES
            || f64::from(self.out_of_bounds) > MAX_OUT_OF_BOUNDS * f64::from(self.total)
        {
            return None;
        }
        let in_range: u64 = self.bins.iter().map(|&c| u64::from(c)).sum();
        if in_range == 0 || self.cv() < MIN_CV {
            return None;
        }
        let percentile = |p: f64| -> usize {
            let want = (p * in_range as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, &c) in self.bins.iter().enumerate() {
                seen += u64::from(c);
                if seen >= want {
                    return i;
                }
            }
            BINS - 1
        };
        // The head bin's start, the tail bin's end.
        let head = BIN.mul_f64(percentile(HEAD) as f64 * (1.0 - MARGIN));
        let tail = BIN.mul_f64((percentile(TAIL) + 1) as f64 * (1.0 + MARGIN));
        Some(Windows { prewarm: head, keep_alive: tail.saturating_sub(head) })
    }

    /// The coefficient of variation of the bin counts.
    fn cv(&self) -> f64 {
        let n = BINS as f64;
        let mean = self.bins.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
        if mean == 0.0 {
            return 0.0;
        }
        let var = self.bins.iter().map(|&c| (f64::from(c) - mean).powi(2)).sum::<f64>() / n;
        var.sqrt() / mean
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn of(idle_minutes: &[f64]) -> IdleTimes {
        let mut h = IdleTimes::default();
        for m in idle_minutes {
            h.record(Duration::from_secs_f64(m * 60.0));
        }
        h
    }

    #[test]
    fn a_function_called_every_30_minutes_is_prewarmed_just_before_and_kept_a_little() {
        let h = of(&[30.2; 20]);
        let w = h.windows().unwrap();
        assert_eq!(w.keep_for(false, Duration::from_secs(600)), Duration::ZERO, "served: goes at once");
        assert_eq!(w.keep_for(true, Duration::from_secs(600)), w.keep_alive, "prewarmed: kept");
        // Bin 30: prewarm at 27 min (30 less 10%), kept until 34.1 min (31 plus 10%).
        assert_eq!(w.prewarm, Duration::from_secs(27 * 60));
        assert_eq!(w.prewarm + w.keep_alive, Duration::from_secs_f64(31.0 * 60.0 * 1.1));
    }

    #[test]
    fn bursts_keep_the_instance_with_no_prewarm() {
        // Mostly back-to-back calls, now and then a gap of a few minutes.
        let mut gaps = vec![0.01; 90];
        gaps.extend([3.5; 10]);
        let w = of(&gaps).windows().unwrap();
        assert_eq!(w.prewarm, Duration::ZERO);
        assert_eq!(w.keep_alive, Duration::from_secs_f64(4.0 * 60.0 * 1.1));
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(w.keep_for(false, ten_minutes), w.keep_alive);
        assert_eq!(
            w.keep_for(false, Duration::from_secs(60)),
            Duration::from_secs(120),
            "at most twice the fixed"
        );
    }

    #[test]
    fn too_few_calls_spread_gaps_or_gaps_past_four_hours_keep_the_fixed_keep_alive() {
        assert_eq!(of(&[30.0; 9]).windows(), None, "9 calls");
        let spread: Vec<f64> = (0..240).map(|m| m as f64 + 0.5).collect();
        assert_eq!(of(&spread).windows(), None, "every bin alike");
        let mut rare = vec![300.0; 10];
        rare.extend([30.0; 5]);
        assert_eq!(of(&rare).windows(), None, "mostly past 4 h");
    }

    #[test]
    fn counts_saturate_rather_than_wrap() {
        let mut h = IdleTimes::default();
        h.bins[0] = u32::MAX;
        h.total = u32::MAX;
        h.record(Duration::ZERO);
        assert_eq!((h.bins[0], h.total()), (u32::MAX, u32::MAX));
    }
}
