//! The app table: every configured app's pushkin, and routing an app id to it.
//!
//! The table is immutable once built and lives behind one atomically swappable pointer in the
//! server state: a request holds the table it started with, so a reload never changes the
//! apps under an in-flight request.

use crate::config::AppConfig;
use crate::metrics::{label, registry, Kind, Series};
use crate::registry::Resolved;
use crate::snapshot::Sha256;
use abi_stable::std_types::{RResult, RStr};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use sygnal_plugin_api::abi::{HostCtx, PushkinBox};
use sygnal_plugin_api::text::glob_match;

/// One configured app and its pushkin instance.
pub struct App {
    /// The app id (or glob pattern) from the config.
    pub id: String,
    /// The plugin kind serving it.
    pub kind: String,
    /// The plugin instance.
    pub pushkin: PushkinBox,
    inflight: AtomicUsize,
    inflight_limit: usize,
    /// `sygnal_per_pushkin_type{pushkin}`: devices handed to this app.
    pub devices_sent: Arc<Series>,
    /// `sygnal_inflight_request_limit_drop{pushkin}`: dispatches refused by the in-flight limit.
    pub inflight_drops: Arc<Series>,
    /// `sygnal_pushkin_dispatch_time{pushkin}`: how long this app's dispatches take.
    pub dispatch_time: Arc<Series>,
    source: AppSource,
}

/// Everything an app instance is built from. A reload keeps an instance whose source is
/// unchanged, with its connections and provider tokens.
#[derive(Clone)]
pub struct AppSource {
    /// The library serving the app.
    pub library: Resolved,
    /// The app's config section, as canonical JSON.
    pub section: String,
    /// The host-level inputs every pushkin gets (proxy, extra trust roots, ...).
    pub host: Sha256,
    /// The content of the files the section names (keys, certificates, service accounts).
    pub files: Sha256,
}

impl AppSource {
    /// What differs between two sources, for the operator ("config", "library", ...).
    pub fn differences(&self, other: &AppSource) -> Vec<&'static str> {
        let mut differences = Vec::new();
        if self.section != other.section {
            differences.push("config");
        }
        if self.library.library.sha256 != other.library.library.sha256 {
            differences.push("library");
        }
        if self.host != other.host {
            differences.push("host settings");
        }
        if self.files != other.files {
            differences.push("files");
        }
        differences
    }

    /// `kind version sha256:... path` of the library, for logs and listings.
    pub fn describe_library(&self) -> String {
        self.library.describe()
    }
}

impl App {
    /// Reserves an in-flight slot, or `None` when the app is at its limit.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InflightGuard> {
        let previous = self.inflight.fetch_add(1, Ordering::AcqRel);
        if previous >= self.inflight_limit {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InflightGuard(Arc::clone(self)))
    }

    /// What this instance was built from.
    pub fn source(&self) -> &AppSource {
        &self.source
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.pushkin.close();
    }
}

/// Releases an in-flight slot when the dispatch ends (or is cancelled).
pub struct InflightGuard(Arc<App>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All apps, routable by app id.
#[derive(Default)]
pub struct AppTable {
    exact: HashMap<String, Arc<App>>,
    patterns: Vec<Arc<App>>,
    /// The body for `GET /_matrix/push/v1/notify`, when a configured plugin offers one.
    pub notify_get_response: Option<serde_json::Value>,
}

impl AppTable {
    /// The app serving `app_id`: an exact match, else the one glob pattern matching it.
    /// `None` when nothing matches or several patterns do (the pushkey is then rejected).
    pub fn route(&self, app_id: &str) -> Option<&Arc<App>> {
        if let Some(app) = self.exact.get(app_id) {
            return Some(app);
        }
        let mut matching = self
            .patterns
            .iter()
            .filter(|app| glob_match(&app.id, app_id));
        let first = matching.next()?;
        match matching.next() {
            None => Some(first),
            Some(_) => None,
        }
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.exact.values().chain(self.patterns.iter())
    }

    /// A table of `apps`, given in config order.
    pub fn new(apps: Vec<Arc<App>>) -> Self {
        let mut table = AppTable::default();
        for app in apps {
            if table.notify_get_response.is_none() {
                table.notify_get_response =
                    app.source.library.library.info.notify_get_response.clone();
            }
            if is_pattern(&app.id) {
                table.patterns.push(app);
            } else {
                table.exact.insert(app.id.clone(), app);
            }
        }
        table
    }
}

/// Calls the library's constructor for one app. The error names the app's config key.
pub fn construct(
    config: &AppConfig,
    source: &AppSource,
    host: &HostCtx,
) -> Result<PushkinBox, String> {
    let library = &source.library.library;
    match library.module.new()(
        host.clone(),
        RStr::from_str(&config.app_id),
        RStr::from_str(&source.section),
    ) {
        RResult::ROk(pushkin) => Ok(pushkin),
        RResult::RErr(err) if err.starts_with("apps.") => Err(err.into()),
        RResult::RErr(err) => Err(format!("apps.{}: {err}", config.app_id)),
    }
}

impl App {
    /// Wraps a constructed pushkin, resolving its metric series.
    pub fn new(
        config: &AppConfig,
        pushkin: PushkinBox,
        source: AppSource,
    ) -> Result<Arc<App>, String> {
        let labels = label("pushkin", &config.app_id);
        let metrics = registry();
        metrics.restore_app(&config.app_id);
        Ok(Arc::new(App {
            id: config.app_id.clone(),
            kind: source.library.library.kind.clone(),
            pushkin,
            inflight: AtomicUsize::new(0),
            inflight_limit: config.inflight_request_limit,
            devices_sent: metrics
                .series(
                    "sygnal_per_pushkin_type",
                    "Number of pushes sent via each type of pushkin",
                    Kind::Counter,
                    &labels,
                )
                .ok_or("metric sygnal_per_pushkin_type has the wrong type")?,
            inflight_drops: metrics
                .series(
                    "sygnal_inflight_request_limit_drop",
                    "Number of notifications dropped because the number of inflight requests exceeded the configured inflight_request_limit.",
                    Kind::Counter,
                    &labels,
                )
                .ok_or("metric sygnal_inflight_request_limit_drop has the wrong type")?,
            dispatch_time: metrics
                .series(
                    "sygnal_pushkin_dispatch_time",
                    "Time taken by each app's pushkin to dispatch one notification",
                    Kind::Histogram,
                    &labels,
                )
                .ok_or("metric sygnal_pushkin_dispatch_time has the wrong type")?,
            source,
        }))
    }
}

fn is_pattern(app_id: &str) -> bool {
    app_id.contains(['*', '?'])
}
