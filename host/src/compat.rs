//! Load-time checks on what a plugin library reports about itself, beyond abi_stable's
//! version and layout checks. The registry runs them on every library it loads, so `serve`,
//! `check` and `plugins` refuse the same libraries for the same one-line reason.

use std::path::Path;
use sygnal_plugin_api::PANIC_STRATEGY_KEY;

/// Refuses a library that cannot be hosted safely, given its info JSON.
///
/// A library built with `panic = "abort"` ends the whole gateway on its first panic, where
/// the SDK would otherwise fail one request: it is refused. Libraries built before the
/// strategy was reported say nothing, and load as before.
pub fn refuse_unsafe_library(path: &Path, info_json: &str) -> Result<(), String> {
    let info: serde_json::Value = serde_json::from_str(info_json)
        .map_err(|err| format!("{}: invalid plugin info: {err}", path.display()))?;
    match info.get(PANIC_STRATEGY_KEY).and_then(|v| v.as_str()) {
        None | Some("unwind") => Ok(()),
        Some(strategy) => Err(format!(
            "{}: built with panic = \"{strategy}\": a panic in it would end the gateway; rebuild it with panic = \"unwind\"",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aborting_libraries_are_refused_in_one_line() {
        let path = Path::new("/plugins/libsygnal_pushkin_x.so");
        assert_eq!(
            refuse_unsafe_library(path, r#"{"panic_strategy":"unwind"}"#),
            Ok(())
        );
        assert_eq!(
            refuse_unsafe_library(path, "{}"),
            Ok(()),
            "older libraries load"
        );
        let err = refuse_unsafe_library(path, r#"{"panic_strategy":"abort"}"#).unwrap_err();
        assert!(
            err.starts_with("/plugins/libsygnal_pushkin_x.so: built with panic = \"abort\""),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
