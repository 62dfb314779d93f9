//! A small lock-light Prometheus registry, exposed in the text format Sygnal's Python client
//! produces (counters as `<name>_total`), so existing dashboards keep working.
//!
//! Hot-path series are resolved once into `Arc<Series>` handles and updated with atomics; the
//! registry's lock is only taken to create a series or render /metrics. Plugins report through
//! [`plugin_metric_sink`], which looks series up by name and labels.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use sygnal_plugin_api::abi::MetricOp;

/// Prometheus' default buckets, as Sygnal's client uses them.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

/// An f64 updated atomically.
#[derive(Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    fn add(&self, delta: f64) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + delta).to_bits();
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// One labelled series of a family.
#[derive(Default)]
pub struct Series {
    value: AtomicF64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
}

impl Series {
    /// Adds to a counter or gauge.
    pub fn add(&self, delta: f64) {
        self.value.add(delta);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.value.add(1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, value: f64) {
        self.value.set(value);
    }

    /// Records a histogram observation.
    pub fn observe(&self, value: f64) {
        if let Some(index) = BUCKETS.iter().position(|upper| value <= *upper) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.value.add(value);
    }
}

struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<String, Arc<Series>>,
}

/// All metrics of the process.
#[derive(Default)]
pub struct Registry {
    families: RwLock<BTreeMap<String, Family>>,
    /// `pushkin="<app id>"` label pairs of apps a reload removed: their series are gone and
    /// late reports from their last requests do not bring them back.
    retired: RwLock<BTreeSet<String>>,
}

impl Registry {
    /// The series `name{labels}`, created on first use. `labels` is rendered Prometheus label
    /// syntax without braces. A name already registered with another kind, or labels naming a
    /// removed app, yield `None`.
    pub fn series(&self, name: &str, help: &str, kind: Kind, labels: &str) -> Option<Arc<Series>> {
        if let Ok(families) = self.families.read() {
            if let Some(family) = families.get(name) {
                if family.kind != kind {
                    return None;
                }
                if let Some(series) = family.series.get(labels) {
                    return Some(Arc::clone(series));
                }
            }
        }
        if self.names_retired_app(labels) {
            return None;
        }
        let mut families = self.families.write().ok()?;
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            return None;
        }
        Some(Arc::clone(
            family.series.entry(labels.to_owned()).or_default(),
        ))
    }

    /// Drops every series of a removed app (labelled `pushkin="<app_id>"`), as a restart
    /// would, and keeps them from being created again until [`restore_app`](Self::restore_app).
    pub fn retire_app(&self, app_id: &str) {
        let pair = label("pushkin", app_id);
        if let Ok(mut families) = self.families.write() {
            for family in families.values_mut() {
                family.series.retain(|labels, _| !has_pair(labels, &pair));
            }
        }
        if let Ok(mut retired) = self.retired.write() {
            retired.insert(pair);
        }
    }

    /// Lets an app that is configured (again) have series.
    pub fn restore_app(&self, app_id: &str) {
        if let Ok(mut retired) = self.retired.write() {
            retired.remove(&label("pushkin", app_id));
        }
    }

    fn names_retired_app(&self, labels: &str) -> bool {
        self.retired
            .read()
            .map(|retired| retired.iter().any(|pair| has_pair(labels, pair)))
            .unwrap_or(false)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let Ok(families) = self.families.read() else {
            return out;
        };
        for (name, family) in families.iter() {
            let exposed = match family.kind {
                Kind::Counter if !name.ends_with("_total") => format!("{name}_total"),
                _ => name.clone(),
            };
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {exposed} {}", escape_help(&family.help));
            let _ = writeln!(out, "# TYPE {exposed} {kind}");
            for (labels, series) in &family.series {
                match family.kind {
                    Kind::Counter | Kind::Gauge => {
                        let _ =
                            writeln!(out, "{exposed}{} {:?}", braced(labels), series.value.get());
                    }
                    Kind::Histogram => render_histogram(&mut out, name, labels, series),
                }
            }
        }
        out
    }
}

/// Whether rendered `labels` contain the rendered pair `pair`.
fn has_pair(labels: &str, pair: &str) -> bool {
    labels.match_indices(pair).any(|(at, _)| {
        (at == 0 || labels[..at].ends_with(','))
            && matches!(labels[at + pair.len()..].chars().next(), None | Some(','))
    })
}

fn render_histogram(out: &mut String, name: &str, labels: &str, series: &Series) {
    let separator = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (upper, bucket) in BUCKETS.iter().zip(&series.buckets) {
        cumulative += bucket.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"{upper:?}\"}} {cumulative}.0"
        );
    }
    let count = series.count.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {count}.0"
    );
    let _ = writeln!(out, "{name}_count{} {count}.0", braced(labels));
    let _ = writeln!(out, "{name}_sum{} {:?}", braced(labels), series.value.get());
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The process-wide registry (plugins report through a plain function pointer).
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

/// The metrics sink handed to plugins.
pub extern "C" fn plugin_metric_sink(
    op: MetricOp,
    name: abi_stable::std_types::RStr<'_>,
    help: abi_stable::std_types::RStr<'_>,
    labels: abi_stable::std_types::RStr<'_>,
    value: f64,
) {
    // A panic must not unwind into the plugin's frames.
    let _ = std::panic::catch_unwind(|| {
        let kind = match op {
            MetricOp::CounterAdd => Kind::Counter,
            MetricOp::GaugeSet | MetricOp::GaugeAdd => Kind::Gauge,
            MetricOp::HistogramObserve => Kind::Histogram,
        };
        if !valid_metric_name(name.as_str()) || !value.is_finite() {
            return;
        }
        if let Some(series) = registry().series(name.as_str(), help.as_str(), kind, labels.as_str())
        {
            match op {
                MetricOp::CounterAdd if value >= 0.0 => series.add(value),
                MetricOp::CounterAdd => {}
                MetricOp::GaugeSet => series.set(value),
                MetricOp::GaugeAdd => series.add(value),
                MetricOp::HistogramObserve => series.observe(value),
            }
        }
    });
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Renders one label pair, escaped.
pub fn label(name: &str, value: &str) -> String {
    sygnal_plugin_api::Labels::new(&[(name, value)])
        .as_str()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms_like_sygnal() {
        let registry = Registry::default();
        registry
            .series(
                "sygnal_notifications_received",
                "Number of notification pokes received",
                Kind::Counter,
                "",
            )
            .unwrap()
            .add(2.0);
        registry
            .series(
                "sygnal_requests_in_flight",
                "in flight",
                Kind::Gauge,
                "resource=\"V1NotifyHandler\"",
            )
            .unwrap()
            .set(3.0);
        let histogram = registry
            .series(
                "sygnal_notify_time",
                "notify time",
                Kind::Histogram,
                "code=\"200\"",
            )
            .unwrap();
        histogram.observe(0.02);
        histogram.observe(20.0);
        let text = registry.render();
        assert!(text.contains("# TYPE sygnal_notifications_received_total counter\nsygnal_notifications_received_total 2.0\n"), "{text}");
        assert!(
            text.contains("sygnal_requests_in_flight{resource=\"V1NotifyHandler\"} 3.0\n"),
            "{text}"
        );
        assert!(
            text.contains("sygnal_notify_time_bucket{code=\"200\",le=\"0.01\"} 0.0\n"),
            "{text}"
        );
        assert!(
            text.contains("sygnal_notify_time_bucket{code=\"200\",le=\"0.025\"} 1.0\n"),
            "{text}"
        );
        assert!(
            text.contains("sygnal_notify_time_bucket{code=\"200\",le=\"+Inf\"} 2.0\n"),
            "{text}"
        );
        assert!(
            text.contains("sygnal_notify_time_count{code=\"200\"} 2.0\n"),
            "{text}"
        );
        assert!(
            text.contains("sygnal_notify_time_sum{code=\"200\"} 20.02\n"),
            "{text}"
        );
    }

    #[test]
    fn a_name_keeps_its_first_kind() {
        let registry = Registry::default();
        assert!(registry.series("m", "", Kind::Counter, "").is_some());
        assert!(registry.series("m", "", Kind::Gauge, "").is_none());
    }

    #[test]
    fn a_retired_app_loses_its_series_until_restored() {
        let registry = Registry::default();
        let gone = label("pushkin", "gone.app");
        let kept = label("pushkin", "gone.app.2");
        let with_code = format!("{gone},code=\"200\"");
        for labels in [&gone, &kept, &with_code] {
            registry
                .series("sygnal_per_pushkin_type", "", Kind::Counter, labels)
                .unwrap()
                .inc();
        }
        registry.retire_app("gone.app");
        let text = registry.render();
        assert!(!text.contains("pushkin=\"gone.app\""), "{text}");
        assert!(text.contains("pushkin=\"gone.app.2\""), "{text}");
        // A late report from the removed app's last request does not bring it back.
        assert!(registry
            .series("sygnal_apns_status_codes", "", Kind::Counter, &with_code)
            .is_none());
        registry.restore_app("gone.app");
        assert!(registry
            .series("sygnal_per_pushkin_type", "", Kind::Counter, &gone)
            .is_some());
    }

    #[test]
    fn metric_names_are_validated() {
        assert!(valid_metric_name("sygnal_apns_request_time"));
        assert!(!valid_metric_name("9lives"));
        assert!(!valid_metric_name("bad name"));
        assert!(!valid_metric_name(""));
    }
}
