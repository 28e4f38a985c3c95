//! Where a cold start's time went: each phase of an instance's start, in order (image,
//! network, container, process, listen), recorded as the start goes and kept with the
//! instance for the call that waited for it. The network and the /tmp are made at once:
//! "network" covers both.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The phases an instance's start went through, with how long each took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartPhases(pub Vec<(&'static str, Duration)>);

impl StartPhases {
    /// The whole start.
    pub fn total(&self) -> Duration {
        self.0.iter().map(|(_, d)| *d).sum()
    }
}

/// Records phases as a start goes: each mark closes the phase that began at the last one.
#[derive(Debug)]
pub struct Timeline(Mutex<(Instant, Vec<(&'static str, Duration)>)>);

impl Timeline {
    /// A timeline starting now.
    pub fn start() -> Timeline {
        Timeline(Mutex::new((Instant::now(), Vec::new())))
    }

    /// Closes phase `name` now.
    pub fn mark(&self, name: &'static str) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let took = now - t.0;
        t.1.push((name, took));
        t.0 = now;
    }

    /// The phases recorded.
    pub fn phases(&self) -> StartPhases {
        StartPhases(self.0.lock().unwrap_or_else(|p| p.into_inner()).1.clone())
    }
}

/// The W3C `Server-Timing` value of a cold call: `queue` (waiting, beyond the start), the
/// start's phases, then `answer` (from the instance taking the call to its answer's head).
pub fn server_timing(phases: &StartPhases, queue: Duration, answer: Duration) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    std::iter::once(("queue", queue))
        .chain(phases.0.iter().copied())
        .chain(std::iter::once(("answer", answer)))
        .map(|(name, d)| format!("{name};dur={:.1}", ms(d)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_marked_in_order_and_written_as_server_timing() {
        let t = Timeline::start();
        t.mark("image");
        std::thread::sleep(Duration::from_millis(5));
        t.mark("network");
        let p = t.phases();
        assert_eq!(p.0.iter().map(|(n, _)| *n).collect::<Vec<_>>(), ["image", "network"]);
        assert!(p.0[1].1 >= Duration::from_millis(5));
        let st =
            StartPhases(vec![("image", Duration::from_micros(1500)), ("listen", Duration::from_millis(20))]);
        assert_eq!(
            server_timing(&st, Duration::from_millis(2), Duration::from_micros(300)),
            "queue;dur=2.0, image;dur=1.5, listen;dur=20.0, answer;dur=0.3"
        );
        assert_eq!(st.total(), Duration::from_micros(21_500));
    }
}
