//! The host's logger, and the sink plugins forward their log records to.

use crate::config::{dictconfig_file, dictconfig_level, LogConfig};
use crate::log_file::LogFile;
use abi_stable::std_types::RStr;
use sygnal_plugin_api::abi::LogLevel;
use tracing::level_filters::LevelFilter;

/// Installs the global logger from `log`. Returns the level in force.
pub fn init(config: &LogConfig) -> Result<LevelFilter, String> {
    let level_name = config
        .level
        .clone()
        .or_else(|| config.setup.as_ref().and_then(dictconfig_level))
        .unwrap_or_else(|| "info".to_owned());
    let level = parse_level(&level_name)
        .ok_or_else(|| format!("log.level: `{level_name}` is not a log level"))?;
    let file = config
        .file
        .clone()
        .or_else(|| config.setup.as_ref().and_then(dictconfig_file));
    let json = config.format.as_deref() == Some("json");

    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(true)
        .with_thread_ids(false);
    let result = match (file, json) {
        (Some(path), json) => {
            let file = LogFile::install(&path)
                .map_err(|err| format!("log file {}: {err}", path.display()))?;
            let builder = builder.with_ansi(false).with_writer(file);
            if json {
                builder.json().try_init()
            } else {
                builder.try_init()
            }
        }
        (None, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (None, false) => builder
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    result.map_err(|err| format!("cannot install the logger: {err}"))?;
    Ok(level)
}

fn parse_level(name: &str) -> Option<LevelFilter> {
    // Python's level names included, as Sygnal's dictConfig uses them.
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" | "notset" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warn" | "warning" => LevelFilter::WARN,
        "error" | "critical" | "fatal" => LevelFilter::ERROR,
        "off" => LevelFilter::OFF,
        _ => return None,
    })
}

/// The most verbose level plugins should bother to forward.
pub fn plugin_max_level(level: LevelFilter) -> LogLevel {
    match level.into_level() {
        None => LogLevel::Off,
        Some(tracing::Level::ERROR) => LogLevel::Error,
        Some(tracing::Level::WARN) => LogLevel::Warn,
        Some(tracing::Level::INFO) => LogLevel::Info,
        Some(tracing::Level::DEBUG) => LogLevel::Debug,
        Some(tracing::Level::TRACE) => LogLevel::Trace,
    }
}

/// The log sink handed to plugins: re-emits each record in the host's logger, its fields
/// where a host line carries them (see [`crate::plugin_log`]).
pub extern "C" fn plugin_log_sink(
    level: LogLevel,
    plugin: RStr<'_>,
    target: RStr<'_>,
    message: RStr<'_>,
    fields: RStr<'_>,
) {
    // A panic must not unwind into the plugin's frames.
    let _ = std::panic::catch_unwind(|| {
        crate::plugin_log::emit(
            level,
            plugin.as_str(),
            target.as_str(),
            message.as_str(),
            fields.as_str(),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_level_names_are_understood() {
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::WARN));
        assert_eq!(parse_level("CRITICAL"), Some(LevelFilter::ERROR));
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::DEBUG));
        assert_eq!(parse_level("loud"), None);
    }
}
