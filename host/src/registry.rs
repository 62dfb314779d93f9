//! Finding and loading pushkin libraries.
//!
//! An app's `type` is a plugin kind, found as `libsygnal_pushkin_<kind>.so` in the search path
//! (the executable's directory, then `plugins.dirs`), or a path to a library. Sygnal's class
//! paths (`sygnal.apnspushkin.ApnsPushkin`) name the matching kind.
//!
//! Libraries are loaded with `lib_header_from_path(..).init_root_module()`, one root module per
//! file: abi_stable's `RootModule::load_from_file` would cache one library per module type and
//! silently hand every app the first plugin loaded. Libraries are never unloaded.

use abi_stable::library::{lib_header_from_path, LibraryError};
use std::collections::HashMap;
use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use sygnal_plugin_api::abi::{PluginModRef, ABI_VERSION};
use sygnal_plugin_api::PluginInfo;

/// A loaded plugin library.
pub struct PluginLibrary {
    /// Where it was loaded from.
    pub path: PathBuf,
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
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .finish()
    }
}

/// Finds plugin libraries and loads each file at most once.
pub struct PluginRegistry {
    dirs: Vec<PathBuf>,
    loaded: Mutex<HashMap<PathBuf, Arc<PluginLibrary>>>,
}

/// The file name a plugin library of `kind` has.
pub fn library_file_name(kind: &str) -> String {
    format!(
        "{DLL_PREFIX}sygnal_pushkin_{}{DLL_SUFFIX}",
        kind.replace('-', "_")
    )
}

impl PluginRegistry {
    /// A registry searching the executable's directory, then `extra_dirs`.
    pub fn new(extra_dirs: &[PathBuf]) -> Self {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.canonicalize().ok())
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        PluginRegistry {
            dirs: exe_dir
                .into_iter()
                .chain(extra_dirs.iter().cloned())
                .collect(),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The library an app's `type` names.
    pub fn resolve(&self, plugin_type: &str) -> Result<Arc<PluginLibrary>, String> {
        if is_path(plugin_type) {
            return self.load(Path::new(plugin_type));
        }
        let kind = kind_of(plugin_type)?;
        let file_name = library_file_name(&kind);
        let path = self
            .dirs
            .iter()
            .map(|dir| dir.join(&file_name))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
                format!(
                    "no plugin for type `{plugin_type}`: {file_name} not found in {}",
                    dirs.join(", ")
                )
            })?;
        let library = self.load(&path)?;
        if library.kind != kind {
            return Err(format!(
                "{} implements kind `{}`, not `{kind}`",
                path.display(),
                library.kind
            ));
        }
        Ok(library)
    }

    /// Every plugin library in the search path, loaded (or why it could not be).
    pub fn discover(&self) -> Vec<(PathBuf, Result<Arc<PluginLibrary>, String>)> {
        let mut found = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| {
                    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with(&format!("{DLL_PREFIX}sygnal_pushkin_"))
                            && n.ends_with(DLL_SUFFIX)
                    })
                })
                .collect();
            paths.sort();
            for path in paths {
                let loaded = self.load(&path);
                found.push((path, loaded));
            }
        }
        found
    }

    /// Every library loaded so far.
    pub fn discover_loaded(&self) -> Vec<(PathBuf, Arc<PluginLibrary>)> {
        self.loaded
            .lock()
            .map(|loaded| {
                loaded
                    .iter()
                    .map(|(p, l)| (p.clone(), Arc::clone(l)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Loads the library at `path` (once; later calls return the same library).
    pub fn load(&self, path: &Path) -> Result<Arc<PluginLibrary>, String> {
        let canonical = path
            .canonicalize()
            .map_err(|err| format!("{}: {err}", path.display()))?;
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| "plugin registry poisoned".to_owned())?;
        if let Some(library) = loaded.get(&canonical) {
            return Ok(Arc::clone(library));
        }
        let library = Arc::new(load_library(&canonical)?);
        loaded.insert(canonical, Arc::clone(&library));
        Ok(library)
    }
}

fn load_library(path: &Path) -> Result<PluginLibrary, String> {
    let header = lib_header_from_path(path).map_err(|err| describe(path, &err))?;
    let abi_version = header.version_strings().version.to_string();
    let module = header
        .init_root_module::<PluginModRef>()
        .map_err(|err| describe(path, &err))?;
    let kind = module.kind()().as_str().to_owned();
    let version = module.version()().as_str().to_owned();
    let info_json = module.info_json()();
    crate::compat::refuse_unsafe_library(path, info_json.as_str())?;
    let info = serde_json::from_str(info_json.as_str())
        .map_err(|err| format!("{}: invalid plugin info: {err}", path.display()))?;
    Ok(PluginLibrary {
        path: path.to_path_buf(),
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
        LibraryError::OpenError { err, .. } => format!("{file}: cannot open library: {err}"),
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
        let registry = PluginRegistry::new(&[PathBuf::from("/nonexistent")]);
        let err = registry.resolve("nosuchkind").unwrap_err();
        assert!(err.contains("sygnal_pushkin_nosuchkind"), "{err}");
        assert!(err.contains("/nonexistent"), "{err}");
    }
}
