//! The host's logger, set up as Sygnal's `log` section says ([`crate::log_setup`] reads it,
//! [`crate::log_layer`] routes and writes the lines), and the sink plugins forward their log
//! records to.

use crate::config::LogConfig;
use crate::log_format::PyFormat;
use crate::log_layer::PyLogging;
use crate::log_setup::{self, Format};
use abi_stable::std_types::RStr;
use sygnal_plugin_api::abi::LogLevel;
use sygnal_plugin_api::trace::SPAN_RECORD_TARGET;
use tracing::level_filters::LevelFilter;

/// Installs the global logger from `log`. Returns the most verbose level any line is written
/// at. Errors name the config key.
pub fn init(config: &LogConfig) -> Result<LevelFilter, String> {
    let plan = log_setup::plan(config)?;
    let level = PyLogging::new(&plan)?.install()?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    for handler in &plan.handlers {
        if let Format::Python { format, .. } = &handler.format {
            let unknown = PyFormat::unknown_fields(format);
            if !unknown.is_empty() {
                tracing::warn!(
                    handler = %handler.name,
                    fields = ?unknown,
                    "log format fields the gateway does not have print `-`"
                );
            }
        }
    }
    Ok(level)
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
/// where a host line carries them (see [`crate::plugin_log`]), and hands finished spans to
/// the trace exporter.
pub extern "C" fn plugin_log_sink(
    level: LogLevel,
    plugin: RStr<'_>,
    target: RStr<'_>,
    message: RStr<'_>,
    fields: RStr<'_>,
) {
    // A panic must not unwind into the plugin's frames.
    let _ = std::panic::catch_unwind(|| {
        // A finished span, not a line (sygnal_plugin_api::trace): never printed.
        if level == LogLevel::Off && target.as_str() == SPAN_RECORD_TARGET {
            return crate::otel::plugin_span(fields.as_str());
        }
        crate::plugin_log::emit(
            level,
            plugin.as_str(),
            target.as_str(),
            message.as_str(),
            fields.as_str(),
        )
    });
}
