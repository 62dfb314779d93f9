//! Metrics a pushkin reports through the host's /metrics.
//!
//! Names and labels are checked here, where the plugin reports them: a metric with an invalid
//! name or label name, a negative counter increment or a non-finite value is refused and logged
//! (once per metric) instead of reaching the host. The host checks again, since a library may
//! not use this SDK, and refuses what would make its exposition invalid.

use crate::abi::{MetricFn, MetricOp};
use abi_stable::std_types::RStr;
use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Mutex;

/// A rendered Prometheus label set (`pushkin="app",code="200"`).
///
/// Build it once per app where you can: rendering allocates, reporting does not. A label name
/// that Prometheus does not allow makes the whole set invalid: metrics reported with it are
/// refused and logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    rendered: String,
    /// The label names, comma-separated (values may contain anything, names cannot).
    names: String,
    /// One of the names is `le` (reserved for histogram buckets): known here so that reporting
    /// a histogram does not look through the names every time.
    has_le: bool,
    problem: Option<String>,
}

impl Labels {
    /// Renders `pairs`; values are escaped. Names must match `[a-zA-Z_][a-zA-Z0-9_]*`, must not
    /// start with `__` (reserved) and must not repeat.
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
        if self.problem.is_none() {
            self.problem = label_name_problem(name).or_else(|| {
                self.names()
                    .any(|existing| existing == name)
                    .then(|| format!("label `{name}` appears twice"))
            });
        }
        if !self.rendered.is_empty() {
            self.rendered.push(',');
            self.names.push(',');
        }
        self.names.push_str(name);
        self.has_le |= name == "le";
        let _ = write!(self.rendered, "{name}=\"");
        for c in value.chars() {
            match c {
                '\\' => self.rendered.push_str("\\\\"),
                '"' => self.rendered.push_str("\\\""),
                '\n' => self.rendered.push_str("\\n"),
                c => self.rendered.push(c),
            }
        }
        self.rendered.push('"');
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.names.split(',').filter(|name| !name.is_empty())
    }

    /// The rendered form, without braces.
    pub fn as_str(&self) -> &str {
        &self.rendered
    }

    /// Why these labels cannot be used, if they cannot.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

/// Whether `name` matches `[a-zA-Z_<also>][a-zA-Z0-9_<also>]*`, Prometheus's grammar for label
/// names (`also` empty) and metric names (`also` = `:`). By bytes: every metric update checks
/// its name, and a non-ASCII character fails either way.
fn is_name(name: &str, also: &[u8]) -> bool {
    let allowed = |c: &u8| *c == b'_' || also.contains(c);
    match name.as_bytes().split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || allowed(first))
                && rest.iter().all(|c| c.is_ascii_alphanumeric() || allowed(c))
        }
        None => false,
    }
}

/// Why `name` is not a usable Prometheus metric name, if it is not.
pub fn metric_name_problem(name: &str) -> Option<String> {
    (!is_name(name, b":"))
        .then(|| format!("`{name}` is not a valid metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"))
}

/// Why `name` is not a usable Prometheus label name, if it is not.
pub fn label_name_problem(name: &str) -> Option<String> {
    if !is_name(name, b"") {
        Some(format!(
            "`{name}` is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        ))
    } else if name.starts_with("__") {
        Some(format!(
            "label names starting with `__` are reserved (`{name}`)"
        ))
    } else {
        None
    }
}

/// Why reporting `value` with `op` under `name` and `labels` must be refused, if it must.
fn report_problem(op: MetricOp, name: &str, labels: &Labels, value: f64) -> Option<String> {
    if let Some(problem) = metric_name_problem(name) {
        return Some(problem);
    }
    if let Some(problem) = labels.problem() {
        return Some(problem.to_owned());
    }
    if !value.is_finite() {
        return Some(format!("value {value} is not finite"));
    }
    match op {
        MetricOp::CounterAdd if value < 0.0 => {
            Some(format!("counters only go up: cannot add {value}"))
        }
        MetricOp::HistogramObserve if labels.has_le => {
            Some("`le` is reserved for histogram buckets".to_owned())
        }
        _ => None,
    }
}

/// Logs a refused report, once per metric name and problem (a refused metric is usually
/// reported on every request).
fn log_refusal(name: &str, problem: &str) {
    static LOGGED: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let first_time = LOGGED
        .lock()
        .map(|mut logged| {
            let logged = logged.get_or_insert_with(HashSet::new);
            // Bounded: past this many distinct refusals, the log itself would be the problem.
            logged.len() < 1000 && logged.insert(format!("{name}\0{problem}"))
        })
        .unwrap_or(false);
    if first_time {
        tracing::error!(target: "sygnal_plugin_api::metrics", metric = %name, problem = %problem, "metric refused");
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
        if let Some(problem) = report_problem(op, name, labels, value) {
            log_refusal(name, &problem);
            return;
        }
        (self.sink)(
            op,
            RStr::from_str(name),
            RStr::from_str(help),
            RStr::from_str(labels.as_str()),
            value,
        );
    }

    /// Adds `value` (non-negative) to a counter. Prometheus shows it as `<name>_total`.
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
    fn names_follow_the_prometheus_grammar() {
        for valid in ["a", "_", ":x", "a:b_c9", "sygnal_gcm_request_time", "Z9"] {
            assert_eq!(metric_name_problem(valid), None, "{valid}");
        }
        for valid in ["a", "_x", "code", "Z9"] {
            assert_eq!(label_name_problem(valid), None, "{valid}");
        }
        for invalid in ["", "9a", "a-b", "é", "aé", "a b", "a\u{0}"] {
            assert!(metric_name_problem(invalid).is_some(), "{invalid}");
            assert!(label_name_problem(invalid).is_some(), "{invalid}");
        }
        for invalid in [":x", "a:b", "__x"] {
            assert!(label_name_problem(invalid).is_some(), "{invalid}");
        }
        assert!(Labels::new(&[("code", "200"), ("le", "1")]).has_le);
        assert!(!Labels::new(&[("code", "le")]).has_le);
    }

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
    fn invalid_names_labels_and_values_are_refused_before_the_host() {
        use std::sync::Mutex;
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        extern "C" fn record(_: MetricOp, name: RStr<'_>, _: RStr<'_>, _: RStr<'_>, _: f64) {
            SEEN.lock().unwrap().push(name.as_str().to_owned());
        }
        let metrics = Metrics::new(record);
        let ok = Labels::new(&[("pushkin", "app")]);
        metrics.counter_add("bad-name", "", &ok, 1.0);
        metrics.counter_add("9lives", "", &ok, 1.0);
        metrics.counter_add("good", "", &Labels::new(&[("bad-label", "x")]), 1.0);
        metrics.counter_add("good", "", &Labels::new(&[("__reserved", "x")]), 1.0);
        metrics.counter_add("good", "", &ok.with("pushkin", "again"), 1.0);
        metrics.counter_add("good", "", &ok, -1.0);
        metrics.gauge_set("good_gauge", "", &ok, f64::NAN);
        metrics.histogram_observe("good_seconds", "", &ok.with("le", "1"), 0.1);
        assert!(
            SEEN.lock().unwrap().is_empty(),
            "{:?}",
            SEEN.lock().unwrap()
        );
        metrics.counter_add("good", "", &ok, 1.0);
        metrics.gauge_add("good_gauge", "", &ok.with("le", "fine on a gauge"), -1.0);
        assert_eq!(*SEEN.lock().unwrap(), ["good", "good_gauge"]);
        assert!(Labels::new(&[("bad-label", "x")])
            .problem()
            .unwrap()
            .contains("bad-label"));
        // A value may hold anything, separators included.
        assert_eq!(Labels::new(&[("a", "x\",le=\"1")]).problem(), None);
    }

    #[test]
    fn labels_render_and_escape() {
        let labels = Labels::new(&[("pushkin", "com.example")]).with("code", "a\"b\\c");
        assert_eq!(labels.as_str(), r#"pushkin="com.example",code="a\"b\\c""#);
        assert_eq!(Labels::new(&[]).as_str(), "");
    }
}
