//! Metrics a pushkin reports through the host's /metrics.

use crate::abi::{MetricFn, MetricOp};
use abi_stable::std_types::RStr;
use std::fmt::Write;

/// A rendered Prometheus label set (`pushkin="app",code="200"`).
///
/// Build it once per app where you can: rendering allocates, reporting does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(String);

impl Labels {
    /// Renders `pairs` (names must be valid Prometheus label names; values are escaped).
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        let mut labels = Labels::default();
        for (name, value) in pairs {
            labels.push(name, value);
        }
        labels
    }

    /// A copy of these labels with one more pair.
    pub fn with(&self, name: &str, value: &str) -> Self {
        let mut labels = self.clone();
        labels.push(name, value);
        labels
    }

    fn push(&mut self, name: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push(',');
        }
        let _ = write!(self.0, "{name}=\"");
        for c in value.chars() {
            match c {
                '\\' => self.0.push_str("\\\\"),
                '"' => self.0.push_str("\\\""),
                '\n' => self.0.push_str("\\n"),
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    /// The rendered form, without braces.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A handle on the host's metrics registry. Cheap to copy.
///
/// Series are created on first use. Use Sygnal's metric names where Sygnal has one, so
/// existing dashboards keep working.
#[derive(Clone, Copy)]
pub struct Metrics {
    sink: MetricFn,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub(crate) fn new(sink: MetricFn) -> Self {
        Metrics { sink }
    }

    fn report(&self, op: MetricOp, name: &str, help: &str, labels: &Labels, value: f64) {
        (self.sink)(
            op,
            RStr::from_str(name),
            RStr::from_str(help),
            RStr::from_str(labels.as_str()),
            value,
        );
    }

    /// Adds `value` (non-negative) to a counter.
    pub fn counter_add(&self, name: &str, help: &str, labels: &Labels, value: f64) {
        self.report(MetricOp::CounterAdd, name, help, labels, value);
    }

    /// Sets a gauge.
    pub fn gauge_set(&self, name: &str, help: &str, labels: &Labels, value: f64) {
        self.report(MetricOp::GaugeSet, name, help, labels, value);
    }

    /// Adds `delta` to a gauge.
    pub fn gauge_add(&self, name: &str, help: &str, labels: &Labels, delta: f64) {
        self.report(MetricOp::GaugeAdd, name, help, labels, delta);
    }

    /// Adds one to a gauge now and takes it back when the guard is dropped, so an in-flight
    /// count stays right even when the dispatch is cancelled mid-request.
    pub fn gauge_guard<'a>(
        &self,
        name: &'a str,
        help: &'a str,
        labels: &'a Labels,
    ) -> GaugeGuard<'a> {
        self.gauge_add(name, help, labels, 1.0);
        GaugeGuard {
            metrics: *self,
            name,
            help,
            labels,
        }
    }

    /// Records an observation (in seconds, for timings) in a histogram.
    pub fn histogram_observe(&self, name: &str, help: &str, labels: &Labels, value: f64) {
        self.report(MetricOp::HistogramObserve, name, help, labels, value);
    }
}

/// Counts something in flight in a gauge while alive (see [`Metrics::gauge_guard`]).
#[must_use = "the gauge is decremented when the guard is dropped"]
pub struct GaugeGuard<'a> {
    metrics: Metrics,
    name: &'a str,
    help: &'a str,
    labels: &'a Labels,
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.metrics
            .gauge_add(self.name, self.help, self.labels, -1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_guards_add_and_take_back() {
        use std::sync::Mutex;
        static SEEN: Mutex<Vec<(MetricOp, String, f64)>> = Mutex::new(Vec::new());
        extern "C" fn record(op: MetricOp, name: RStr<'_>, _: RStr<'_>, _: RStr<'_>, value: f64) {
            SEEN.lock()
                .unwrap()
                .push((op, name.as_str().to_owned(), value));
        }
        let metrics = Metrics::new(record);
        let labels = Labels::default();
        {
            let _guard = metrics.gauge_guard("active", "help", &labels);
            assert_eq!(SEEN.lock().unwrap().len(), 1);
        }
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (MetricOp::GaugeAdd, "active".to_owned(), 1.0),
                (MetricOp::GaugeAdd, "active".to_owned(), -1.0)
            ]
        );
    }

    #[test]
    fn labels_render_and_escape() {
        let labels = Labels::new(&[("pushkin", "com.example")]).with("code", "a\"b\\c");
        assert_eq!(labels.as_str(), r#"pushkin="com.example",code="a\"b\\c""#);
        assert_eq!(Labels::new(&[]).as_str(), "");
    }
}
