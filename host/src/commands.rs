//! `sygnal check` and `sygnal plugins`: what a config would load and do, without serving.

use crate::config::{self, Loaded};
use crate::generation::{self, Baseline, Changes, HostInputs};
use crate::registry::{library_file_name, PluginRegistry, SearchPath};
use crate::snapshot::SnapshotDir;
use std::path::{Path, PathBuf};

/// `sygnal check [--against RUNNING]`: runs the reload code path on the config (parsing,
/// loading, constructing) next to the apps a gateway started from RUNNING would run (none by
/// default), prints what a reload would add, change, remove and keep, and exits. Touches no
/// running process.
pub fn check(config_path: Option<PathBuf>, against: Option<PathBuf>) -> Result<(), String> {
    let path = config::config_path(config_path);
    let loaded = load(&path)?;
    let level =
        crate::logging::init(&loaded.config.log).map_err(|err| format!("config error: {err}"))?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let plugins = crate::open_registry(&loaded.config.plugins)?;
    let worker_threads = crate::worker_threads(&loaded.config);
    let outcome = (|| {
        let host = HostInputs::new(&loaded.config, level, worker_threads)?;
        let (baseline, running) = match &against {
            None => (Baseline::default(), None),
            Some(against) => {
                let running = load(against)?;
                let host = HostInputs::new(&running.config, level, worker_threads)?;
                let baseline = Baseline::preview(&running, &plugins, &host)
                    .map_err(|err| format!("in {}: {err}", against.display()))?;
                (baseline, Some(running))
            }
        };
        let generation = generation::build(&loaded, &baseline, &plugins, &host)?;
        print_changes(&loaded, against.as_deref(), &generation.changes);
        if let Some(running) = running {
            for warning in crate::reload::restart_needed(&running.raw, &loaded.raw) {
                println!("warning: {warning}");
            }
        }
        Ok(())
    })();
    plugins.shutdown();
    outcome
}

fn load(path: &Path) -> Result<Loaded, String> {
    config::load(path).map_err(|err| format!("config error in {}: {err}", path.display()))
}

fn print_changes(loaded: &Loaded, against: Option<&Path>, changes: &Changes) {
    let apps = loaded.apps.len();
    match against {
        None => println!("config OK: {apps} app(s) constructed"),
        Some(against) => println!(
            "config OK: {apps} app(s); a reload from {} would add {}, change {}, remove {}, keep {}",
            against.display(),
            changes.added.len(),
            changes.changed.len(),
            changes.removed.len(),
            changes.kept.len()
        ),
    }
    let line = |what: &str, id: &str, detail: String| {
        println!("{}", format!("  {what:<8} {id:<32} {detail}").trim_end());
    };
    for (id, source) in &changes.added {
        line("added", id, source.describe_library());
    }
    for (id, source, what) in &changes.changed {
        let detail = format!("({}) {}", what.join(", "), source.describe_library());
        line("changed", id, detail);
    }
    for id in &changes.removed {
        line("removed", id, String::new());
    }
    for (id, source) in &changes.kept {
        line("kept", id, source.describe_library());
    }
}

/// `sygnal plugins [--config FILE]`: every library in the search path (which file wins a kind
/// found in several directories), then the library each app of the config would run on.
/// Fails when any of them cannot be loaded.
pub fn plugins(config_path: Option<PathBuf>) -> Result<(), String> {
    // Without --config or $SYGNAL_CONF, a missing ./sygnal.yaml just means no config.
    let explicit = config_path.is_some() || std::env::var_os("SYGNAL_CONF").is_some();
    let path = config::config_path(config_path);
    let loaded = (explicit || path.exists()).then(|| load(&path));
    let mut problems = Vec::new();
    let (dirs, base_dir, snapshot_dir) = match &loaded {
        Some(Ok(loaded)) => (
            loaded.config.plugins.dirs.clone(),
            loaded.base_dir.clone(),
            loaded.config.plugins.snapshot_dir.clone(),
        ),
        Some(Err(err)) => {
            problems.push(err.clone());
            (Vec::new(), PathBuf::from("."), None)
        }
        None => (Vec::new(), PathBuf::from("."), None),
    };
    let registry = PluginRegistry::new(SnapshotDir::create(snapshot_dir.as_deref())?, usize::MAX);
    let search = SearchPath::new(&dirs, &base_dir);
    list_search_path(&registry, &search, &mut problems);
    if let Some(Ok(loaded)) = &loaded {
        println!();
        println!("Apps in {}:", path.display());
        println!("{:<32} LIBRARY (kind, version, content hash, file)", "APP");
        for app in &loaded.apps {
            match registry.resolve(&search, &app.plugin_type) {
                Ok(resolved) => println!("{:<32} {}", app.app_id, resolved.describe()),
                Err(err) => {
                    println!("{:<32} cannot be loaded: {err}", app.app_id);
                    problems.push(format!("apps.{}.type: {err}", app.app_id));
                }
            }
        }
    }
    registry.shutdown();
    match problems.len() {
        0 => Ok(()),
        1 => Err(problems.remove(0)),
        n => Err(format!("{n} problems:\n  {}", problems.join("\n  "))),
    }
}

fn list_search_path(registry: &PluginRegistry, search: &SearchPath, problems: &mut Vec<String>) {
    println!(
        "Plugin libraries in the search path (for a kind found twice, the first directory wins):"
    );
    println!(
        "{:<14} {:<10} {:<6} {:<9} {:<71} PATH",
        "KIND", "VERSION", "ABI", "STATUS", "SHA256"
    );
    let found = search.discover();
    for file in &found {
        let winner = found
            .iter()
            .find(|other| other.winner && other.file_kind == file.file_kind);
        let duplicated = found
            .iter()
            .filter(|other| other.file_kind == file.file_kind)
            .count()
            > 1;
        let path = file.path.display();
        let loaded = registry.load(&file.path).and_then(|library| {
            let expected = file.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if library_file_name(&library.kind) == expected {
                Ok(library)
            } else {
                Err(format!(
                    "{path}: implements kind `{}`, not the `{}` its file name promises",
                    library.kind, file.file_kind
                ))
            }
        });
        match loaded {
            Ok(library) => {
                let status = match (file.winner, duplicated) {
                    (true, true) => "wins".to_owned(),
                    (true, false) => "ok".to_owned(),
                    (false, _) => "shadowed".to_owned(),
                };
                let note = match (file.winner, winner) {
                    (false, Some(winner)) => format!(" (by {})", winner.path.display()),
                    _ => String::new(),
                };
                println!(
                    "{:<14} {:<10} {:<6} {status:<9} sha256:{} {path}{note}",
                    library.kind, library.version, library.abi_version, library.sha256
                );
            }
            Err(err) => {
                println!(
                    "{:<14} {:<10} {:<6} {:<9} {:<71} {err}",
                    file.file_kind, "?", "?", "error", "?"
                );
                problems.push(err);
            }
        }
    }
}
