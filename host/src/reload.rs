//! Live reload (SIGHUP): re-read the config file and swap the app table atomically, or change
//! nothing.
//!
//! A reload builds the next [`generation`](crate::generation) next to the running table: apps
//! whose source (section, library content, host inputs, named files) is unchanged keep their
//! instance, with its connections and provider tokens; the others are constructed anew. The
//! table is swapped in one atomic store: requests in flight finish on the table they started
//! with, and a replaced pushkin is closed when its last request lets go of it. Any failure
//! leaves the running table as it is and is logged at error level.
//!
//! Settings read only at startup (listeners, logging, the snapshot directory, ...) keep their
//! startup values; a reload that changes them says so and asks for a restart.

use crate::api::AppState;
use crate::config::{self, Loaded};
use crate::generation::{self, Baseline, Changes, HostInputs};
use crate::metrics::{label, registry, Kind, Series};
use crate::registry::PluginRegistry;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing::level_filters::LevelFilter;

/// Config keys a reload applies; any other change needs a restart.
const LIVE_KEYS: &[&str] = &[
    "apps",
    "proxy",
    "plugins.dirs",
    "plugins.max_loaded_libraries",
];

/// Keys whose change needs new listening sockets.
const LISTENER_KEYS: &[&str] = &["http.bind_addresses", "http.port", "metrics.prometheus"];

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new table serves. `summary` lists the apps added, changed, removed and kept;
    /// `warnings` the changed settings that wait for a restart.
    Applied {
        /// `added [..], changed [..], removed [..], kept [..]`.
        summary: String,
        /// Changed settings a reload does not apply.
        warnings: Vec<String>,
    },
    /// Nothing changed; why.
    Failed(String),
}

impl std::fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadOutcome::Applied { summary, warnings } if warnings.is_empty() => {
                write!(f, "config reloaded: {summary}")
            }
            ReloadOutcome::Applied { summary, warnings } => write!(
                f,
                "config reloaded: {summary}; {} setting(s) wait for a restart",
                warnings.len()
            ),
            ReloadOutcome::Failed(reason) => write!(f, "config reload failed: {reason}"),
        }
    }
}

/// Reloads the config file into a running gateway. One reload runs at a time.
pub struct Reloader {
    config_path: PathBuf,
    state: Arc<AppState>,
    plugins: Arc<PluginRegistry>,
    /// The config the process started with: the values of everything a reload does not apply.
    startup_raw: serde_yaml::Value,
    level: LevelFilter,
    worker_threads: usize,
    running: Mutex<()>,
    metrics: ReloadMetrics,
}

impl Reloader {
    /// A reloader for a gateway started from `startup` (read from `config_path`).
    pub fn new(
        config_path: PathBuf,
        startup: &Loaded,
        level: LevelFilter,
        worker_threads: usize,
        state: Arc<AppState>,
        plugins: Arc<PluginRegistry>,
    ) -> Result<Self, String> {
        let metrics = ReloadMetrics::new()?;
        // As Prometheus does: the startup config counts as the last successful load.
        metrics.successful.set(1.0);
        metrics.timestamp.set(unix_now());
        Ok(Reloader {
            config_path,
            state,
            plugins,
            startup_raw: startup.raw.clone(),
            level,
            worker_threads,
            running: Mutex::new(()),
            metrics,
        })
    }

    /// Re-reads the config file and applies it, or changes nothing. Logs the outcome and
    /// updates the `sygnal_config_*` metrics; the work runs off the async workers.
    pub async fn reload(self: &Arc<Self>) -> ReloadOutcome {
        let this = Arc::clone(self);
        match tokio::task::spawn_blocking(move || this.reload_now()).await {
            Ok(outcome) => outcome,
            Err(err) => self.failed(format!("the reload task failed: {err}")),
        }
    }

    /// [`reload`](Self::reload), on the calling thread (it loads libraries and runs
    /// constructors: not for an async worker).
    pub fn reload_now(&self) -> ReloadOutcome {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        tracing::info!(config = %self.config_path.display(), "reloading the config");
        match self.apply() {
            Ok((changes, warnings)) => {
                self.metrics.successful.set(1.0);
                self.metrics.timestamp.set(unix_now());
                self.metrics.successes.inc();
                let summary = changes.summary();
                tracing::info!("config reloaded: {summary}");
                ReloadOutcome::Applied { summary, warnings }
            }
            Err(err) => self.failed(err),
        }
    }

    fn failed(&self, reason: String) -> ReloadOutcome {
        self.metrics.successful.set(0.0);
        self.metrics.failures.inc();
        tracing::error!("config reload failed, the running config is unchanged: {reason}");
        ReloadOutcome::Failed(reason)
    }

    fn apply(&self) -> Result<(Changes, Vec<String>), String> {
        let path = &self.config_path;
        let loaded = config::load(path)
            .map_err(|err| format!("config error in {}: {err}", path.display()))?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let host = HostInputs::new(&loaded.config, self.level, self.worker_threads)?;
        let running = self.state.apps.load_full();
        let previous_max = self
            .plugins
            .set_max_loaded(loaded.config.plugins.max_loaded_libraries);
        let built = generation::build(&loaded, &Baseline::running(&running), &self.plugins, &host);
        let generation = match built {
            Ok(generation) => generation,
            Err(err) => {
                self.plugins.set_max_loaded(previous_max);
                return Err(err);
            }
        };
        self.state.apps.store(Arc::new(generation.table));
        drop(running);
        let changes = generation.changes;
        for id in &changes.removed {
            registry().retire_app(id);
        }
        log_apps_ready(&changes);
        let warnings = restart_needed(&self.startup_raw, &loaded.raw);
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        Ok((changes, warnings))
    }
}

/// Logs the library serving each app constructed by this generation.
pub fn log_apps_ready(changes: &Changes) {
    let constructed = changes
        .added
        .iter()
        .map(|(id, source)| (id, source))
        .chain(changes.changed.iter().map(|(id, source, _)| (id, source)));
    for (id, source) in constructed {
        let library = &source.library.library;
        tracing::info!(
            app = %id,
            kind = %library.kind,
            version = %library.version,
            sha256 = %library.sha256,
            path = %source.library.installed.display(),
            "app ready"
        );
    }
}

/// The changed settings a reload does not apply, each as a warning for the operator.
pub fn restart_needed(running: &serde_yaml::Value, new: &serde_yaml::Value) -> Vec<String> {
    let mut keys = Vec::new();
    differing_keys("", running, new, &mut keys);
    keys.into_iter()
        .filter(|key| !LIVE_KEYS.iter().any(|live| is_under(key, live)))
        .map(|key| {
            let why = if LISTENER_KEYS.iter().any(|k| is_under(&key, k)) {
                "it needs a new listener"
            } else {
                "it is read at startup only"
            };
            format!(
                "{key} changed in the config file but {why}: the startup value stays in force until the gateway is restarted (or its binary upgraded in place)"
            )
        })
        .collect()
}

fn is_under(key: &str, prefix: &str) -> bool {
    key == prefix || key.starts_with(&format!("{prefix}."))
}

/// The dotted paths of the leaves that differ (a missing section is an empty one).
fn differing_keys<'a>(
    prefix: &str,
    old: &'a serde_yaml::Value,
    new: &'a serde_yaml::Value,
    out: &mut Vec<String>,
) {
    use serde_yaml::{Mapping, Value};
    if old == new {
        return;
    }
    let empty = Mapping::new();
    let as_mapping = |value: &'a Value| match value {
        Value::Null => Some(&empty),
        Value::Mapping(map) => Some(map),
        _ => None,
    };
    let (Some(old_map), Some(new_map)) = (as_mapping(old), as_mapping(new)) else {
        out.push(prefix.to_owned());
        return;
    };
    let only_new = new_map.keys().filter(|key| old_map.get(*key).is_none());
    for key in old_map.keys().chain(only_new) {
        let name = match key {
            Value::String(name) => name.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        differing_keys(
            &path,
            old_map.get(key).unwrap_or(&Value::Null),
            new_map.get(key).unwrap_or(&Value::Null),
            out,
        );
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `sygnal_config_last_reload_successful`, `sygnal_config_last_reload_success_timestamp_seconds`
/// and `sygnal_config_reloads_total{result}`.
struct ReloadMetrics {
    successful: Arc<Series>,
    timestamp: Arc<Series>,
    successes: Arc<Series>,
    failures: Arc<Series>,
}

impl ReloadMetrics {
    fn new() -> Result<Self, String> {
        let registry = registry();
        let series = |name: &str, help: &str, kind: Kind, labels: &str| {
            registry.try_series(name, help, kind, labels)
        };
        let reloads = |result: &str| {
            series(
                "sygnal_config_reloads_total",
                "Config reloads (SIGHUP), by result",
                Kind::Counter,
                &label("result", result),
            )
        };
        Ok(ReloadMetrics {
            successful: series(
                "sygnal_config_last_reload_successful",
                "Whether the last config reload succeeded (1) or failed and changed nothing (0)",
                Kind::Gauge,
                "",
            )?,
            timestamp: series(
                "sygnal_config_last_reload_success_timestamp_seconds",
                "When the config was last loaded successfully (startup or reload), in Unix seconds",
                Kind::Gauge,
                "",
            )?,
            successes: reloads("success")?,
            failures: reloads("failure")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn settings_read_at_startup_only_are_reported() {
        let running = yaml(
            "http:\n  port: 5000\nlog:\n  level: info\nproxy: http://a:1\nplugins:\n  dirs: [a]\napps:\n  a: {type: x}\n",
        );
        let new = yaml(
            "http:\n  port: 5001\n  bind_addresses: ['127.0.0.1']\nlog:\n  level: debug\nproxy: http://b:1\nplugins:\n  dirs: [b]\n  worker_threads: 2\napps:\n  b: {type: y}\nmetrics:\n  prometheus: {enabled: true}\n",
        );
        let warnings = restart_needed(&running, &new);
        let keys: Vec<&str> = warnings
            .iter()
            .map(|w| w.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            vec![
                "http.port",
                "http.bind_addresses",
                "log.level",
                "plugins.worker_threads",
                "metrics.prometheus.enabled"
            ],
            "{warnings:#?}"
        );
        assert!(
            warnings[0].contains("needs a new listener"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[2].contains("read at startup only"),
            "{}",
            warnings[2]
        );
        assert!(restart_needed(&running, &running).is_empty());
        // An empty section is the same as a missing one.
        assert!(restart_needed(&yaml("apps: {}"), &yaml("http: {}\napps: {}")).is_empty());
    }
}
