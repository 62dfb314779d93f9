//! A small lock-light Prometheus registry, exposed in the text format Sygnal's Python client
//! produces (counters as `<name>_total`), so existing dashboards keep working.
//!
//! Hot-path series are resolved once into `Arc<Series>` handles and updated with atomics; the
//! registry's lock is only taken to create a series or render /metrics. Plugins report through
//! [`plugin_metric_sink`], which looks series up by name and labels.
//!
//! The exposition stays valid whatever plugins report: a plugin's series is only created after
//! its name, labels and values are checked (see [`Registry::plugin_series`]), plugins cannot
//! write the gateway's own series, and no two families may expose the same sample name.
//! Refusals are logged once per metric and problem.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use sygnal_plugin_api::abi::MetricOp;
use sygnal_plugin_api::{label_name_problem, metric_name_problem};

mod recent;

/// The gateway's own metric names: plugins may not report these, nor any name they start
/// (which could collide with their `_total`, `_bucket`, `_count` or `_sum` samples).
const HOST_OWNED: &[&str] = &[
    "sygnal_notifications_received",
    "sygnal_notifications_devices_received",
    "sygnal_per_pushkin_type",
    "sygnal_pushgateway_status_codes",
    "sygnal_notify_time",
    "sygnal_requests_in_flight",
    "sygnal_inflight_request_limit_drop",
    "sygnal_reload",
    "sygnal_config",
    "process_",
];

/// Prometheus' default buckets, as Sygnal's client uses them.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// The name a family of this kind is exposed under (counters end in `_total`).
    fn exposed(self, name: &str) -> String {
        match self {
            Kind::Counter if !name.ends_with("_total") => format!("{name}_total"),
            _ => name.to_owned(),
        }
    }

    /// Every sample name a family of this kind writes, its TYPE name first.
    fn sample_names(self, name: &str) -> Vec<String> {
        match self {
            Kind::Counter | Kind::Gauge => vec![self.exposed(name)],
            Kind::Histogram => ["", "_bucket", "_count", "_sum"]
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .collect(),
        }
    }
}

struct Family {
    help: String,
    kind: Kind,
    /// Reported by a plugin (else created by the host).
    from_plugin: bool,
    series: BTreeMap<String, Arc<Series>>,
}

#[derive(Default)]
struct Families {
    by_name: BTreeMap<String, Family>,
    /// Every sample name some family writes -> that family's name.
    claimed: HashMap<String, String>,
}

impl Families {
    /// Creates the family `name`, unless one of its sample names is already someone else's.
    fn create(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        from_plugin: bool,
    ) -> Result<&mut Family, String> {
        let samples = kind.sample_names(name);
        if let Some(owner) = samples.iter().find_map(|sample| self.claimed.get(sample)) {
            return Err(format!(
                "its samples would collide with those of metric `{owner}`"
            ));
        }
        for sample in samples {
            self.claimed.insert(sample, name.to_owned());
        }
        Ok(self.by_name.entry(name.to_owned()).or_insert(Family {
            help: help.to_owned(),
            kind,
            from_plugin,
            series: BTreeMap::new(),
        }))
    }

    fn remove(&mut self, name: &str) {
        if let Some(family) = self.by_name.remove(name) {
            for sample in family.kind.sample_names(name) {
                self.claimed.remove(&sample);
            }
        }
    }
}

/// All metrics of the process.
#[derive(Default)]
pub struct Registry {
    families: RwLock<Families>,
    /// Refusals already logged (metric and problem), so a refused metric reported on every
    /// request is logged once.
    logged: Mutex<HashSet<String>>,
    /// `pushkin="<app id>"` label pairs of apps a reload removed: their series are gone, and
    /// late reports from their last requests do not bring them back.
    retired: RwLock<BTreeSet<String>>,
    /// Moves on whenever series are removed: plugins' series cached per thread are then looked
    /// up again.
    epoch: recent::Epoch,
}

/// Why a plugin's report about an app a reload removed is dropped (silently: it is expected
/// from the app's last requests in flight).
const REMOVED_APP: &str = "the app was removed by a reload";

impl Registry {
    /// [`Registry::series`], with the error a caller building its metrics at start reports.
    pub fn try_series(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &str,
    ) -> Result<Arc<Series>, String> {
        self.series(name, help, kind, labels)
            .ok_or_else(|| format!("metric {name} registered with another type"))
    }

    /// The gateway's own series `name{labels}`, created on first use. `labels` is rendered
    /// Prometheus label syntax without braces. A name already registered with another kind
    /// yields `None`. A plugin's family of the same name is dropped: the name is the host's.
    pub fn series(&self, name: &str, help: &str, kind: Kind, labels: &str) -> Option<Arc<Series>> {
        if let Ok(families) = self.families.read() {
            if let Some(family) = families.by_name.get(name) {
                if family.kind != kind && !family.from_plugin {
                    return None;
                }
                if let Some(series) = family.series.get(labels).filter(|_| !family.from_plugin) {
                    return Some(Arc::clone(series));
                }
            }
        }
        self.create_host_series(name, help, kind, labels)
    }

    fn create_host_series(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &str,
    ) -> Option<Arc<Series>> {
        let mut families = self.families.write().ok()?;
        if families
            .by_name
            .get(name)
            .is_some_and(|family| family.from_plugin)
        {
            tracing::error!(
                metric = name,
                "a plugin reported the gateway's own metric; its series are dropped"
            );
            families.remove(name);
            self.epoch.advance();
        }
        if !families.by_name.contains_key(name) {
            if let Err(problem) = families.create(name, help, kind, false) {
                tracing::error!(metric = name, %problem, "metric not registered");
                return None;
            }
        }
        let family = families.by_name.get_mut(name)?;
        if family.kind != kind {
            return None;
        }
        Some(Arc::clone(
            family.series.entry(labels.to_owned()).or_default(),
        ))
    }

    /// A plugin's series `name{labels}`, created on first use once `name` and `labels` are
    /// known to make a valid exposition: a valid, unreserved name of one kind whose samples
    /// collide with no other family's, and well-formed, unique label names.
    pub fn plugin_series(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &str,
    ) -> Result<Arc<Series>, String> {
        let lookup = |families: &Families| -> Option<Result<Arc<Series>, String>> {
            let family = families.by_name.get(name)?;
            if !family.from_plugin {
                return Some(Err("the name belongs to the gateway".to_owned()));
            }
            if family.kind != kind {
                return Some(Err(format!(
                    "reported as a {} but registered as a {}",
                    kind.name(),
                    family.kind.name()
                )));
            }
            family
                .series
                .get(labels)
                .map(|series| Ok(Arc::clone(series)))
        };
        let families = self
            .families
            .read()
            .map_err(|_| "metrics registry poisoned")?;
        if let Some(found) = lookup(&families) {
            return found;
        }
        drop(families);
        if let Some(problem) = metric_name_problem(name) {
            return Err(problem);
        }
        if HOST_OWNED.iter().any(|owned| name.starts_with(owned)) {
            return Err("the name belongs to the gateway".to_owned());
        }
        check_labels(labels, kind)?;
        if self.names_retired_app(labels) {
            return Err(REMOVED_APP.to_owned());
        }
        let mut families = self
            .families
            .write()
            .map_err(|_| "metrics registry poisoned")?;
        if let Some(found) = lookup(&families) {
            return found;
        }
        let family = match families.by_name.get_mut(name) {
            Some(family) => family,
            None => families.create(name, help, kind, true)?,
        };
        Ok(Arc::clone(
            family.series.entry(labels.to_owned()).or_default(),
        ))
    }

    /// Drops every series of a removed app (labelled `pushkin="<app_id>"`), as a restart
    /// would, and keeps plugins from creating them again until [`restore_app`](Self::restore_app).
    pub fn retire_app(&self, app_id: &str) {
        let pair = label("pushkin", app_id);
        if let Ok(mut families) = self.families.write() {
            for family in families.by_name.values_mut() {
                family.series.retain(|labels, _| !has_pair(labels, &pair));
            }
        }
        if let Ok(mut retired) = self.retired.write() {
            retired.insert(pair);
        }
        self.epoch.advance();
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

    /// Logs a refused report at error level, once per metric and problem.
    fn log_refusal(&self, name: &str, problem: &str) {
        let first_time = self
            .logged
            .lock()
            .map(|mut logged| logged.len() < 1000 && logged.insert(format!("{name}\0{problem}")))
            .unwrap_or(false);
        if first_time {
            tracing::error!(metric = name, %problem, "metric from a plugin refused");
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let Ok(families) = self.families.read() else {
            return out;
        };
        for (name, family) in families.by_name.iter() {
            let exposed = family.kind.exposed(name);
            let kind = family.kind.name();
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

/// The metrics sink handed to plugins. What would break the exposition is refused and logged.
pub extern "C" fn plugin_metric_sink(
    op: MetricOp,
    name: abi_stable::std_types::RStr<'_>,
    help: abi_stable::std_types::RStr<'_>,
    labels: abi_stable::std_types::RStr<'_>,
    value: f64,
) {
    // A panic must not unwind into the plugin's frames.
    let _ = std::panic::catch_unwind(|| {
        let (name, help, labels) = (name.as_str(), help.as_str(), labels.as_str());
        match report(registry(), op, name, help, labels, value) {
            Ok(()) => {}
            Err(problem) if problem == REMOVED_APP => {}
            Err(problem) => registry().log_refusal(name, &problem),
        }
    });
}

fn report(
    registry: &Registry,
    op: MetricOp,
    name: &str,
    help: &str,
    labels: &str,
    value: f64,
) -> Result<(), String> {
    let kind = match op {
        MetricOp::CounterAdd => Kind::Counter,
        MetricOp::GaugeSet | MetricOp::GaugeAdd => Kind::Gauge,
        MetricOp::HistogramObserve => Kind::Histogram,
    };
    if !value.is_finite() {
        return Err(format!("value {value} is not finite"));
    }
    if op == MetricOp::CounterAdd && value < 0.0 {
        return Err(format!("counters only go up: cannot add {value}"));
    }
    recent::with_series(
        registry,
        kind,
        name,
        labels,
        || registry.plugin_series(name, help, kind, labels),
        |series| match op {
            MetricOp::CounterAdd | MetricOp::GaugeAdd => series.add(value),
            MetricOp::GaugeSet => series.set(value),
            MetricOp::HistogramObserve => series.observe(value),
        },
    )
}

/// Checks rendered label syntax (`a="x",b="y\"z"`): valid, unreserved, unique names, and
/// values using only the escapes the text format knows (`\\`, `\"`, `\n`).
fn check_labels(labels: &str, kind: Kind) -> Result<(), String> {
    let mut names = HashSet::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("labels `{labels}` are not name=\"value\" pairs"))?;
        if let Some(problem) = label_name_problem(name) {
            return Err(problem);
        }
        if kind == Kind::Histogram && name == "le" {
            return Err("`le` is reserved for histogram buckets".to_owned());
        }
        if !names.insert(name) {
            return Err(format!("label `{name}` appears twice"));
        }
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    _ => return Err(format!("label `{name}` has an invalid escape")),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => return Err(format!("label `{name}` has a raw newline")),
                Some(_) => {}
                None => return Err(format!("label `{name}` has an unterminated value")),
            }
        };
        rest = &after[end + 1..];
        if !rest.is_empty() {
            rest = rest
                .strip_prefix(',')
                .filter(|next| !next.is_empty())
                .ok_or_else(|| format!("labels `{labels}` are not comma-separated pairs"))?;
        }
    }
    Ok(())
}

/// Renders one label pair, escaped.
pub fn label(name: &str, value: &str) -> String {
    sygnal_plugin_api::Labels::new(&[(name, value)])
        .as_str()
        .to_owned()
}

#[cfg(test)]
mod tests;
