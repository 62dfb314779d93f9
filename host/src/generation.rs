//! Building a generation of the app table from a config, next to the one before it.
//!
//! Startup, a reload (SIGHUP) and `sygnal check` all run [`build`]: parse -> resolve and load
//! each app's library -> compare each app's [`AppSource`] with the baseline's -> construct only
//! the apps that are new or whose source changed. The first failure aborts the whole build,
//! naming the config key or file; the pushkins constructed until then are closed as they drop.

use crate::apps::{self, App, AppSource, AppTable};
use crate::config::{self, Loaded};
use crate::registry::{PluginRegistry, SearchPath};
use crate::snapshot::Sha256;
use abi_stable::std_types::RString;
use ring::digest;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use sygnal_plugin_api::abi::HostCtx;
use sygnal_plugin_api::HostInfo;
use tracing::level_filters::LevelFilter;

/// The host-level inputs of every pushkin, and their fingerprint.
pub struct HostInputs {
    /// What the constructors get.
    pub ctx: HostCtx,
    /// Hash of `host_info_json` and the trust roots' content: when it changes, every app is
    /// rebuilt.
    pub digest: Sha256,
}

impl HostInputs {
    /// The inputs for `config`, with the log level and plugin runtime size fixed at startup.
    pub fn new(
        config: &config::Config,
        level: LevelFilter,
        worker_threads: usize,
    ) -> Result<Self, String> {
        let info = host_info(config, worker_threads);
        let host_info_json = serde_json::to_string(&info).map_err(|err| err.to_string())?;
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(host_info_json.as_bytes());
        for file in &info.extra_root_certs {
            hash_file(&mut context, file);
        }
        Ok(HostInputs {
            ctx: HostCtx {
                log: crate::logging::plugin_log_sink,
                max_log_level: crate::logging::plugin_max_level(level),
                metric: crate::metrics::plugin_metric_sink,
                host_info_json: RString::from(host_info_json),
            },
            digest: finish(context),
        })
    }
}

/// What plugins (and the host's own outbound clients) are told about the outbound side.
pub fn host_info(config: &config::Config, worker_threads: usize) -> HostInfo {
    HostInfo {
        host_version: env!("CARGO_PKG_VERSION").to_owned(),
        proxy: config::effective_proxy(config),
        extra_root_certs: std::env::var_os("SSL_CERT_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .collect(),
        user_agent: format!("sygnal/{}", env!("CARGO_PKG_VERSION")),
        worker_threads,
    }
}

/// What the apps of the previous generation were built from, and their instances when they
/// are running (a preview by `sygnal check --against` has none).
#[derive(Default)]
pub struct Baseline {
    apps: BTreeMap<String, (AppSource, Option<Arc<App>>)>,
}

impl Baseline {
    /// The running table's apps.
    pub fn running(table: &AppTable) -> Self {
        let apps = table
            .apps()
            .map(|app| {
                (
                    app.id.clone(),
                    (app.source().clone(), Some(Arc::clone(app))),
                )
            })
            .collect();
        Baseline { apps }
    }

    /// What a gateway started from `loaded` would run, without constructing anything.
    pub fn preview(
        loaded: &Loaded,
        plugins: &PluginRegistry,
        host: &HostInputs,
    ) -> Result<Self, String> {
        let search = SearchPath::new(&loaded.config.plugins.dirs, &loaded.base_dir);
        let mut apps = BTreeMap::new();
        for config in &loaded.apps {
            let source = source(config, &search, plugins, host)?;
            apps.insert(config.app_id.clone(), (source, None));
        }
        Ok(Baseline { apps })
    }
}

/// How a new generation differs from its baseline, each list in config order.
#[derive(Default)]
pub struct Changes {
    /// Apps new in this generation.
    pub added: Vec<(String, AppSource)>,
    /// Apps rebuilt, with what changed.
    pub changed: Vec<(String, AppSource, Vec<&'static str>)>,
    /// Apps of the baseline no longer configured.
    pub removed: Vec<String>,
    /// Apps whose instance carries over.
    pub kept: Vec<(String, AppSource)>,
}

impl Changes {
    /// One line for the log: `added [a], changed [b (library)], removed [c], kept [d]`.
    pub fn summary(&self) -> String {
        let ids = |apps: &[(String, AppSource)]| {
            apps.iter()
                .map(|(id, _)| id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let changed: Vec<String> = self
            .changed
            .iter()
            .map(|(id, _, what)| format!("{id} ({})", what.join(", ")))
            .collect();
        format!(
            "added [{}], changed [{}], removed [{}], kept [{}]",
            ids(&self.added),
            changed.join(", "),
            self.removed.join(", "),
            ids(&self.kept)
        )
    }
}

/// A built generation: the new table (kept apps share their instances with the baseline) and
/// how it differs.
pub struct Generation {
    /// The table to serve.
    pub table: AppTable,
    /// What changed.
    pub changes: Changes,
}

/// Builds the generation `loaded` describes next to `baseline`.
pub fn build(
    loaded: &Loaded,
    baseline: &Baseline,
    plugins: &PluginRegistry,
    host: &HostInputs,
) -> Result<Generation, String> {
    let search = SearchPath::new(&loaded.config.plugins.dirs, &loaded.base_dir);
    let mut changes = Changes::default();
    // Constructed (or kept) instances, in config order; wrapped into `App`s once all succeeded
    // so that a failed build registers nothing, and closed if it fails.
    let mut instances = Instances(Vec::with_capacity(loaded.apps.len()));
    for config in &loaded.apps {
        let source = source(config, &search, plugins, host)?;
        let id = config.app_id.clone();
        match baseline.apps.get(&id) {
            Some((old, running)) => {
                let what = old.differences(&source);
                if what.is_empty() {
                    if let Some(app) = running {
                        instances.0.push(Instance::Kept(Arc::clone(app)));
                    }
                    changes.kept.push((id, source));
                    continue;
                }
                changes.changed.push((id, source.clone(), what));
            }
            None => changes.added.push((id, source.clone())),
        }
        let pushkin = apps::construct(config, &source, &host.ctx)?;
        instances
            .0
            .push(Instance::New(config, Some(pushkin), source));
    }
    changes.removed = baseline
        .apps
        .keys()
        .filter(|id| !loaded.apps.iter().any(|app| &app.app_id == *id))
        .cloned()
        .collect();
    let mut apps = Vec::with_capacity(instances.0.len());
    for instance in &mut instances.0 {
        apps.push(match instance {
            Instance::Kept(app) => Arc::clone(app),
            Instance::New(config, pushkin, source) => {
                // Taken only here: from now on the App owns it (and closes it when dropped).
                let pushkin = pushkin.take().ok_or("pushkin taken twice")?;
                App::new(config, pushkin, source.clone())?
            }
        });
    }
    Ok(Generation {
        table: AppTable::new(apps),
        changes,
    })
}

enum Instance<'a> {
    Kept(Arc<App>),
    New(
        &'a config::AppConfig,
        Option<sygnal_plugin_api::abi::PushkinBox>,
        AppSource,
    ),
}

/// The instances of a build in progress: those constructed and not yet handed to an `App` are
/// closed if the build fails.
struct Instances<'a>(Vec<Instance<'a>>);

impl Drop for Instances<'_> {
    fn drop(&mut self) {
        for instance in &mut self.0 {
            if let Instance::New(_, Some(pushkin), _) = instance {
                pushkin.close();
            }
        }
    }
}

/// Resolves an app's library and fingerprints what its instance would be built from.
fn source(
    config: &config::AppConfig,
    search: &SearchPath,
    plugins: &PluginRegistry,
    host: &HostInputs,
) -> Result<AppSource, String> {
    let library = plugins
        .resolve(search, &config.plugin_type)
        .map_err(|err| format!("apps.{}.type: {err}", config.app_id))?;
    let section = serde_json::to_string(&config.section)
        .map_err(|err| format!("apps.{}: {err}", config.app_id))?;
    Ok(AppSource {
        library,
        section,
        host: host.digest,
        files: files_digest(&config.section),
    })
}

/// Files bigger than this are fingerprinted by size and modification time, not content.
const MAX_HASHED_FILE: u64 = 1024 * 1024;

/// Hash of the content of every file an app's section names (string values that are paths of
/// existing files, `type` aside): rotating a key or certificate in place and reloading rebuilds
/// the app even though its section is unchanged. Paths are taken as the plugin takes them
/// (relative to the working directory).
fn files_digest(section: &serde_json::Map<String, Value>) -> Sha256 {
    let mut context = digest::Context::new(&digest::SHA256);
    let mut strings = Vec::new();
    for (key, value) in section {
        if key != "type" {
            collect_strings(value, &mut strings);
        }
    }
    for text in strings {
        if text.is_empty() || text.len() > 4096 || text.contains('\n') {
            continue;
        }
        let path = Path::new(text);
        if path.is_file() {
            context.update(text.as_bytes());
            context.update(b"\0");
            hash_file(&mut context, path);
        }
    }
    finish(context)
}

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(text) => out.push(text),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, out)),
        Value::Object(map) => map.values().for_each(|item| collect_strings(item, out)),
        _ => {}
    }
}

/// Adds a file's content (or, for a large or unreadable one, what can be said of it).
fn hash_file(context: &mut digest::Context, path: &Path) {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_HASHED_FILE => {
            let stamp = format!("{}:{}:{}", meta.len(), meta.mtime(), meta.mtime_nsec());
            context.update(stamp.as_bytes());
        }
        Ok(_) => {
            let mut content = Vec::new();
            match std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut content)) {
                Ok(_) => context.update(&content),
                Err(err) => context.update(err.to_string().as_bytes()),
            }
        }
        Err(err) => context.update(err.to_string().as_bytes()),
    }
    context.update(b"\0");
}

fn finish(context: digest::Context) -> Sha256 {
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    Sha256(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_named_by_a_section_are_fingerprinted_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.p8");
        std::fs::write(&key, "first key").unwrap();
        let section: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
            "type": "apns",
            "keyfile": key.display().to_string(),
            "topic": "com.example.app",
            "nested": {"list": [1, "not a file"]},
        }))
        .unwrap();
        let first = files_digest(&section);
        assert_eq!(files_digest(&section), first);
        std::fs::write(&key, "rotated key").unwrap();
        assert_ne!(files_digest(&section), first);
    }
}
