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

    /// Records an observation (in seconds, for timings) in a histogram.
    pub fn histogram_observe(&self, name: &str, help: &str, labels: &Labels, value: f64) {
        self.report(MetricOp::HistogramObserve, name, help, labels, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_render_and_escape() {
        let labels = Labels::new(&[("pushkin", "com.example")]).with("code", "a\"b\\c");
        assert_eq!(labels.as_str(), r#"pushkin="com.example",code="a\"b\\c""#);
        assert_eq!(Labels::new(&[]).as_str(), "");
    }
}
