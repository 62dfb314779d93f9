//! Finding and loading pushkin libraries.
//!
//! An app's `type` is a plugin kind, found as `libsygnal_pushkin_<kind>.so` in the search path
//! (the executable's directory, then `plugins.dirs`), or a path to a library (a relative one is
//! taken from the config file's directory). Sygnal's class paths (`sygnal.apnspushkin.ApnsPushkin`)
//! name the matching kind.
//!
//! Every library is loaded from a private copy ([`crate::snapshot`]), so replacing the installed
//! file never touches the running process, and libraries are told apart by content: loading a
//! file whose content is already loaded returns that library. Loading uses
//! `lib_header_from_path(..).init_root_module()`, one root module per file: abi_stable's
//! `RootModule::load_from_file` would cache one library per module type and silently hand every
//! app the first plugin loaded. Libraries are never unloaded, so a process loads at most
//! `plugins.max_loaded_libraries` distinct builds.

use crate::snapshot::{Sha256, SnapshotDir};
use abi_stable::library::{lib_header_from_path, LibraryError};
use std::collections::HashMap;
use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use sygnal_plugin_api::abi::{PluginModRef, ABI_VERSION};
use sygnal_plugin_api::PluginInfo;

/// A loaded plugin library.
pub struct PluginLibrary {
    /// The installed file it was first loaded from.
    pub source: PathBuf,
    /// The private copy actually mapped.
    pub snapshot: PathBuf,
    /// The hash of its content.
    pub sha256: Sha256,
    /// Its root module.
    pub module: PluginModRef,
    /// The kind it implements.
    pub kind: String,
    /// Its own version.
    pub version: String,
    /// The plugin-api version it was built against.
    pub abi_version: String,
    /// What it offers beyond dispatch.
    pub info: PluginInfo,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary")
            .field("source", &self.source)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// The library an app's `type` resolved to.
#[derive(Clone)]
pub struct Resolved {
    /// The installed file the `type` names (for kinds: the first match in the search path).
    pub installed: PathBuf,
    /// The loaded library (possibly first loaded from another file with the same content).
    pub library: Arc<PluginLibrary>,
}

impl Resolved {
    /// `kind version sha256:<hash> <installed path>`, for logs and listings.
    pub fn describe(&self) -> String {
        let library = &self.library;
        format!(
            "{} {} sha256:{} {}",
            library.kind,
            library.version,
            library.sha256,
            self.installed.display()
        )
    }
}

/// Where libraries are looked for, per config.
#[derive(Debug, Clone)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
    base_dir: PathBuf,
}

impl SearchPath {
    /// The executable's directory, then `extra_dirs`; relative `type` paths are taken from
    /// `base_dir` (the config file's directory).
    pub fn new(extra_dirs: &[PathBuf], base_dir: &Path) -> Self {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.canonicalize().ok())
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        SearchPath {
            dirs: exe_dir
                .into_iter()
                .chain(extra_dirs.iter().cloned())
                .collect(),
            base_dir: base_dir.to_path_buf(),
        }
    }

    /// The installed file an app's `type` names.
    pub fn locate(&self, plugin_type: &str) -> Result<PathBuf, String> {
        if is_path(plugin_type) {
            return Ok(self.base_dir.join(plugin_type));
        }
        let file_name = library_file_name(&kind_of(plugin_type)?);
        self.dirs
            .iter()
            .map(|dir| dir.join(&file_name))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
                format!(
                    "no plugin for type `{plugin_type}`: {file_name} not found in {}",
                    dirs.join(", ")
                )
            })
    }

    /// Every plugin library file in the search path, in search order. `winner` is false for a
    /// file shadowed by one of the same name in an earlier directory.
    pub fn discover(&self) -> Vec<Found> {
        let mut found: Vec<Found> = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| file_kind(path).is_some())
                .collect();
            paths.sort();
            for path in paths {
                let kind = file_kind(&path).unwrap_or_default();
                let winner = !found.iter().any(|f| f.file_kind == kind);
                found.push(Found {
                    path,
                    file_kind: kind,
                    winner,
                });
            }
        }
        found
    }
}

/// A plugin library file found in the search path.
pub struct Found {
    /// The file.
    pub path: PathBuf,
    /// The kind its name promises.
    pub file_kind: String,
    /// Whether a `type` naming that kind loads this file (the first in search order).
    pub winner: bool,
}

/// The kind a file name follows the convention for (`libsygnal_pushkin_<kind>.so`).
fn file_kind(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix(&format!("{DLL_PREFIX}sygnal_pushkin_"))?
        .strip_suffix(DLL_SUFFIX)
        .filter(|kind| !kind.is_empty())
        .map(str::to_owned)
}

/// The libraries this process has loaded, by content.
pub struct PluginRegistry {
    snapshots: SnapshotDir,
    loaded: Mutex<HashMap<Sha256, Arc<PluginLibrary>>>,
    max_loaded: AtomicUsize,
}

/// The file name a plugin library of `kind` has.
pub fn library_file_name(kind: &str) -> String {
    format!(
        "{DLL_PREFIX}sygnal_pushkin_{}{DLL_SUFFIX}",
        kind.replace('-', "_")
    )
}

impl PluginRegistry {
    /// A registry copying libraries into `snapshots` and loading at most `max_loaded` of them.
    pub fn new(snapshots: SnapshotDir, max_loaded: usize) -> Self {
        PluginRegistry {
            snapshots,
            loaded: Mutex::new(HashMap::new()),
            max_loaded: AtomicUsize::new(max_loaded),
        }
    }

    /// Changes the bound on distinct libraries (`plugins.max_loaded_libraries`, on reload);
    /// returns the previous one.
    pub fn set_max_loaded(&self, max_loaded: usize) -> usize {
        self.max_loaded.swap(max_loaded, Ordering::Relaxed)
    }

    /// The library an app's `type` names, checked to implement the kind it was looked up by.
    pub fn resolve(&self, search: &SearchPath, plugin_type: &str) -> Result<Resolved, String> {
        let installed = search.locate(plugin_type)?;
        let library = self.load(&installed)?;
        if !is_path(plugin_type) {
            let kind = kind_of(plugin_type)?;
            if library.kind != kind {
                return Err(format!(
                    "{} implements kind `{}`, not `{kind}`",
                    installed.display(),
                    library.kind
                ));
            }
        }
        Ok(Resolved { installed, library })
    }

    /// At exit, once every pushkin is closed: stops every library's runtime (superseded ones
    /// included: they stay ready for a `new` until then) and removes the snapshots.
    pub fn shutdown(&self) {
        for library in self.loaded() {
            library.module.shutdown()();
        }
        self.snapshots.remove();
    }

    /// Every library loaded so far.
    pub fn loaded(&self) -> Vec<Arc<PluginLibrary>> {
        self.loaded
            .lock()
            .map(|loaded| loaded.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Loads the library at `installed` from a private copy. Content already loaded (from this
    /// or any other file) returns that library.
    pub fn load(&self, installed: &Path) -> Result<Arc<PluginLibrary>, String> {
        let snapshot = self.snapshots.copy(installed)?;
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| "plugin registry poisoned".to_owned())?;
        if let Some(library) = loaded.get(&snapshot.sha256) {
            return Ok(Arc::clone(library));
        }
        let max_loaded = self.max_loaded.load(Ordering::Relaxed);
        if loaded.len() >= max_loaded {
            return Err(format!(
                "{}: cannot load another plugin library build: this process has loaded {} (plugins.max_loaded_libraries = {max_loaded}) and never unloads one; restart the gateway (or upgrade it in place) to load this build",
                installed.display(),
                loaded.len()
            ));
        }
        let library = Arc::new(load_library(installed, &snapshot.path, snapshot.sha256)?);
        tracing::info!(
            kind = %library.kind,
            version = %library.version,
            sha256 = %library.sha256,
            path = %installed.display(),
            snapshot = %library.snapshot.display(),
            loaded = loaded.len() + 1,
            max = max_loaded,
            "plugin library loaded"
        );
        loaded.insert(snapshot.sha256, Arc::clone(&library));
        Ok(library)
    }
}

fn load_library(
    installed: &Path,
    snapshot: &Path,
    sha256: Sha256,
) -> Result<PluginLibrary, String> {
    // Errors name the installed file: the copy is an implementation detail.
    let path = installed;
    let header = lib_header_from_path(snapshot).map_err(|err| describe(path, &err))?;
    let abi_version = header.version_strings().version.to_string();
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|err| describe(path, &err))?;
    let kind = module.kind()().as_str().to_owned();
    let version = module.version()().as_str().to_owned();
    let info_json = module.info_json()();
    crate::compat::refuse_unsafe_library(path, info_json.as_str())?;
    // Before any `new`: the library's dispatches are then polled on the host's threads, their
    // sockets in its reactor. Libraries built before plugin-api offered it lack the function.
    if let Some(attach_host_io) = module.attach_host_io() {
        attach_host_io(crate::host_io::HOST_IO);
    }
    let info = serde_json::from_str(info_json.as_str())
        .map_err(|err| format!("{}: invalid plugin info: {err}", path.display()))?;
    Ok(PluginLibrary {
        source: installed.to_path_buf(),
        snapshot: snapshot.to_path_buf(),
        sha256,
        module,
        kind,
        version,
        abi_version,
        info,
    })
}

/// One line on why a library could not be loaded (abi_stable's own errors run to thousands of
/// lines for a layout mismatch).
fn describe(path: &Path, err: &LibraryError) -> String {
    let file = path.display();
    match err {
        LibraryError::OpenError { err, .. } => {
            let hint = if err.to_string().contains("failed to map segment") {
                " (is the plugin snapshot directory on a noexec mount? set plugins.snapshot_dir)"
            } else {
                ""
            };
            format!("{file}: cannot open library: {err}{hint}")
        }
        LibraryError::GetSymbolError { .. } => {
            format!("{file}: not a sygnal plugin library (no abi_stable root module)")
        }
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "{file}: incompatible plugin ABI: built against plugin-api {actual_version}, this host implements {expected_version}"
        ),
        LibraryError::AbiInstability(_) => format!(
            "{file}: incompatible plugin ABI: its type layouts differ from this host's plugin-api {ABI_VERSION} (rebuild the plugin against plugin-api {ABI_VERSION})"
        ),
        LibraryError::InvalidAbiHeader(header) => format!(
            "{file}: incompatible plugin ABI: built with abi_stable ABI {}.{}",
            header.abi_major, header.abi_minor
        ),
        LibraryError::InvalidCAbi { .. } => {
            format!("{file}: incompatible plugin ABI: built by a compiler with another C ABI")
        }
        LibraryError::ParseVersionError(err) => format!("{file}: unreadable plugin version: {err}"),
        LibraryError::RootModule { err, .. } => format!("{file}: plugin failed to initialise: {err}"),
        LibraryError::Many(errors) => errors
            .iter()
            .map(|e| describe(path, e))
            .next()
            .unwrap_or_else(|| format!("{file}: cannot load")),
    }
}

fn is_path(plugin_type: &str) -> bool {
    plugin_type.contains(std::path::MAIN_SEPARATOR) || plugin_type.ends_with(DLL_SUFFIX)
}

/// The kind a `type` names: a bare kind, or one of Sygnal's class paths.
fn kind_of(plugin_type: &str) -> Result<String, String> {
    if !plugin_type.contains('.') {
        return Ok(plugin_type.to_owned());
    }
    // sygnal.apnspushkin.ApnsPushkin -> apns
    let module = plugin_type
        .rsplit_once('.')
        .map(|(module, _)| module)
        .unwrap_or("");
    module
        .strip_prefix("sygnal.")
        .and_then(|m| m.strip_suffix("pushkin"))
        .filter(|kind| !kind.is_empty() && !kind.contains('.'))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!("`{plugin_type}` is a Python class path; name a plugin kind or a library path")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_sygnal_class_paths() {
        assert_eq!(kind_of("apns").unwrap(), "apns");
        assert_eq!(kind_of("sygnal.apnspushkin.ApnsPushkin").unwrap(), "apns");
        assert_eq!(kind_of("sygnal.gcmpushkin.GcmPushkin").unwrap(), "gcm");
        assert_eq!(
            kind_of("sygnal.webpushpushkin.WebpushPushkin").unwrap(),
            "webpush"
        );
        assert!(kind_of("mycompany.pushkins.Custom").is_err());
    }

    #[test]
    fn paths_are_recognised() {
        assert!(is_path("/opt/plugins/libcustom.so"));
        assert!(is_path("libcustom.so"));
        assert!(!is_path("apns"));
    }

    #[test]
    fn file_names_follow_the_crate_naming_convention() {
        assert_eq!(
            library_file_name("apns"),
            format!("{DLL_PREFIX}sygnal_pushkin_apns{DLL_SUFFIX}")
        );
        assert_eq!(
            library_file_name("my-kind"),
            format!("{DLL_PREFIX}sygnal_pushkin_my_kind{DLL_SUFFIX}")
        );
    }

    #[test]
    fn missing_kind_names_the_file_and_dirs() {
        let search = SearchPath::new(&[PathBuf::from("/nonexistent")], Path::new("."));
        let err = search.locate("nosuchkind").unwrap_err();
        assert!(err.contains("sygnal_pushkin_nosuchkind"), "{err}");
        assert!(err.contains("/nonexistent"), "{err}");
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_directory() {
        let search = SearchPath::new(&[], Path::new("/etc/sygnal"));
        assert_eq!(
            search.locate("plugins/libcustom.so").unwrap(),
            PathBuf::from("/etc/sygnal/plugins/libcustom.so")
        );
        assert_eq!(
            search.locate("/opt/libcustom.so").unwrap(),
            PathBuf::from("/opt/libcustom.so")
        );
    }

    #[test]
    fn the_first_directory_wins_a_kind() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        for dir in [&first, &second] {
            std::fs::write(dir.path().join(library_file_name("dup")), b"x").unwrap();
        }
        std::fs::write(second.path().join("unrelated.so"), b"x").unwrap();
        let search = SearchPath::new(
            &[first.path().to_path_buf(), second.path().to_path_buf()],
            Path::new("."),
        );
        let found: Vec<_> = search
            .discover()
            .into_iter()
            .filter(|f| f.file_kind == "dup")
            .collect();
        assert_eq!(found.len(), 2);
        assert!(found[0].winner && found[0].path.starts_with(first.path()));
        assert!(!found[1].winner && found[1].path.starts_with(second.path()));
        assert_eq!(
            search.locate("dup").unwrap(),
            first.path().join(library_file_name("dup"))
        );
    }
}
