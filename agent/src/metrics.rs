//! The data plane's metrics, in Prometheus text format at `/metrics` (prometheus-client).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a per-function metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Fn {
    /// The function.
    pub function: String,
}

/// Labels of a call's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// The function.
    pub function: String,
    /// The HTTP status answered.
    pub code: String,
}

/// Labels of an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKind {
    /// The function.
    pub function: String,
    /// What went wrong: timeout, queue_full, queue_timeout, start_failed, upstream.
    pub reason: String,
}

/// Labels of an instance count.
/// The phase of an instance's start (see `instance::phases`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Phase {
    /// image, network, scratch, container, process, listen.
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceState {
    /// The function.
    pub function: String,
    /// idle, busy or starting.
    pub state: String,
}

fn histogram() -> Histogram {
    // 100 µs to ~1.6 min.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric of the agent.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Calls answered, by function and status.
    pub calls: Family<Outcome, Counter>,
    /// Calls that failed on the agent's side, by reason.
    pub errors: Family<ErrorKind, Counter>,
    /// Calls that waited for a new instance.
    pub cold_starts: Family<Fn, Counter>,
    /// Calls that found a ready instance.
    pub warm_hits: Family<Fn, Counter>,
    /// Time calls waited for an instance.
    pub queue_wait: Family<Fn, Histogram, fn() -> Histogram>,
    /// Time from a call's arrival to its answer's headers.
    pub call_duration: Family<Fn, Histogram, fn() -> Histogram>,
    /// Instances by state, set when scraped.
    pub instances: Family<InstanceState, Gauge>,
    /// Starts that found their image in the node cache.
    pub image_cache_hits: Counter,
    /// Starts that had to pull their image.
    pub image_cache_misses: Counter,
    /// Time each phase of instance starts took.
    pub cold_start_phases: Family<Phase, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fnrt");
        let m = Metrics {
            calls: Family::default(),
            errors: Family::default(),
            cold_starts: Family::default(),
            warm_hits: Family::default(),
            queue_wait: Family::new_with_constructor(histogram as fn() -> Histogram),
            call_duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            instances: Family::default(),
            image_cache_hits: Counter::default(),
            image_cache_misses: Counter::default(),
            cold_start_phases: Family::new_with_constructor(histogram as fn() -> Histogram),
            registry: Registry::default(),
        };
        registry.register("calls", "Calls answered through the data plane", m.calls.clone());
        registry.register("call_errors", "Calls that failed on the agent's side", m.errors.clone());
        registry.register("cold_starts", "Calls that waited for a new instance", m.cold_starts.clone());
        registry.register("warm_hits", "Calls that found a ready instance", m.warm_hits.clone());
        registry.register("queue_wait_seconds", "Time calls waited for an instance", m.queue_wait.clone());
        registry.register(
            "call_duration_seconds",
            "Time from a call's arrival to its answer's headers",
            m.call_duration.clone(),
        );
        registry.register("instances", "Instances of deployed functions by state", m.instances.clone());
        registry.register(
            "image_cache_hits",
            "Starts whose image was in the node cache",
            m.image_cache_hits.clone(),
        );
        registry.register(
            "image_cache_misses",
            "Starts that pulled their image",
            m.image_cache_misses.clone(),
        );
        registry.register(
            "cold_start_phase_seconds",
            "Time each phase of an instance's start took",
            m.cold_start_phases.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }

    /// Records that phase `phase` of an instance's start took `took`.
    pub fn cold_start_phase(&self, phase: &str, took: std::time::Duration) {
        self.cold_start_phases.get_or_create(&Phase { phase: phase.to_string() }).observe(took.as_secs_f64());
    }

    /// The labels of `function`.
    pub fn f(function: &str) -> Fn {
        Fn { function: function.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::default();
        m.cold_starts.get_or_create(&Metrics::f("echo")).inc();
        m.queue_wait.get_or_create(&Metrics::f("echo")).observe(0.002);
        m.image_cache_hits.inc();
        let text = m.encode();
        assert!(text.contains("fnrt_cold_starts_total{function=\"echo\"} 1"), "{text}");
        assert!(text.contains("fnrt_queue_wait_seconds_count{function=\"echo\"} 1"), "{text}");
        assert!(text.contains("fnrt_image_cache_hits_total 1"), "{text}");
    }
}
