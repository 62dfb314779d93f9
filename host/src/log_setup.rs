//! Sygnal's `log.setup` (Python's `logging.config.dictConfig`) read into a [`LogPlan`]: the
//! handlers (where lines go, at which level, in which format) and the loggers (levels,
//! handlers, `propagate`), as Python would build them. [`crate::log_layer`] then routes every
//! line through the plan exactly as Python's logging does.
//!
//! What Python offers and a plan takes:
//! - handlers: `logging.StreamHandler` (`stream: ext://sys.stderr` or `ext://sys.stdout`),
//!   every `*FileHandler` (`filename`; the file follows rotation like `WatchedFileHandler`),
//!   `logging.NullHandler`; another class is warned about and writes nowhere;
//! - formatters: `format` (or `fmt`) with `%(...)s` fields and `datefmt`; a class or factory
//!   naming JSON (python-json-logger) writes the gateway's JSON lines;
//! - loggers and `root`: `level`, `handlers`, `propagate`; the root's level defaults to WARNING
//!   as in Python, and a logger without a level takes its nearest configured ancestor's.
//! - `filters` are not run: the `%(request)s` field Synapse-style filters provide is built in.
//!
//! The added keys override: `log.level` sets the level of the root and of every configured
//! logger; `log.format: json` makes every handler write JSON; `log.file` sends what every
//! stream and file handler writes to that file instead (each line once). Without `log.setup`
//! (or with one configuring no handler), lines go to stderr (or `log.file`) in the default
//! text format, at `log.level` (default INFO).

use crate::config::LogConfig;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Python's numeric levels, plus TRACE below DEBUG for the gateway's most verbose lines.
pub mod level {
    /// Everything (a handler's default, and the root's `NOTSET`).
    pub const NOTSET: u8 = 0;
    /// The gateway's `trace` lines (Python has no name for it).
    pub const TRACE: u8 = 5;
    /// `DEBUG`.
    pub const DEBUG: u8 = 10;
    /// `INFO`.
    pub const INFO: u8 = 20;
    /// `WARNING`.
    pub const WARNING: u8 = 30;
    /// `ERROR`.
    pub const ERROR: u8 = 40;
    /// `CRITICAL`: above every line the gateway writes (its gravest are errors), so a logger
    /// or handler at CRITICAL is silent.
    pub const CRITICAL: u8 = 50;
}

/// A level as a config names it: Python's names (any case), `warn`/`trace`/`off`, or a number.
pub fn parse_level(value: &Value) -> Option<u8> {
    match value {
        Value::Number(n) => n.as_u64().map(|n| n.min(255) as u8),
        Value::String(s) => parse_level_name(s),
        _ => None,
    }
}

/// A level name (Python's, any case, plus `warn`, `trace`, `fatal`, `off`) or a number.
pub fn parse_level_name(name: &str) -> Option<u8> {
    let name = name.trim();
    if let Ok(n) = name.parse::<u8>() {
        return Some(n);
    }
    Some(match name.to_ascii_lowercase().as_str() {
        "notset" => level::NOTSET,
        "trace" => level::TRACE,
        "debug" => level::DEBUG,
        "info" => level::INFO,
        "warn" | "warning" => level::WARNING,
        "error" => level::ERROR,
        "critical" | "fatal" => level::CRITICAL,
        "off" => u8::MAX,
        _ => return None,
    })
}

/// Where a handler writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Destination {
    /// Standard error.
    Stderr,
    /// Standard output.
    Stdout,
    /// A file, appended to and followed across rotation.
    File(PathBuf),
    /// Nowhere (`NullHandler`, or a handler class the gateway does not have).
    Discard,
}

/// How a handler formats a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// A Python `%`-style format, with its `datefmt`.
    Python {
        /// The format, e.g. `%(asctime)s %(levelname)s %(message)s`.
        format: String,
        /// `strftime` pattern for `%(asctime)s`; Python's default when `None`.
        datefmt: Option<String>,
    },
    /// The gateway's default text lines (`log.format: text` without `log.setup`).
    Native,
    /// One JSON object per line.
    Json,
}

/// Python's default when a handler has no formatter.
pub const PYTHON_DEFAULT_FORMAT: &str = "%(message)s";

/// One handler.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerPlan {
    /// Its name in `log.setup.handlers` (for messages).
    pub name: String,
    /// Where it writes.
    pub destination: Destination,
    /// Lines below this level are not written by it.
    pub level: u8,
    /// How it formats.
    pub format: Format,
}

/// One configured logger (or the root, named `""`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoggerPlan {
    /// Its own level; `None` (or `NOTSET` on a non-root logger) defers to its parent.
    pub level: Option<u8>,
    /// Indexes into [`LogPlan::handlers`].
    pub handlers: Vec<usize>,
    /// Whether lines go on to the parent's handlers.
    pub propagate: bool,
}

/// The whole logging setup.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPlan {
    /// The handlers, in config order.
    pub handlers: Vec<HandlerPlan>,
    /// The configured loggers by Python name; the root is `""` and always present.
    pub loggers: BTreeMap<String, LoggerPlan>,
    /// What the config asks for that the gateway does not do (logged once logging is up).
    pub warnings: Vec<String>,
}

/// Builds the plan for `log`. Errors name the key.
pub fn plan(config: &LogConfig) -> Result<LogPlan, String> {
    let level = match &config.level {
        Some(name) => Some(
            parse_level_name(name)
                .ok_or_else(|| format!("log.level: `{name}` is not a log level"))?,
        ),
        None => None,
    };
    let json = config.format.as_deref() == Some("json");
    // Sygnal's default is an empty setup, which Python would refuse: read it as none.
    let setup = config
        .setup
        .as_ref()
        .and_then(Value::as_mapping)
        .filter(|setup| !setup.is_empty());
    let mut plan = match setup {
        Some(setup) => from_dictconfig(setup)?,
        None => LogPlan::empty(),
    };
    if plan.handlers.is_empty() {
        // Nothing says where lines go: stderr in the gateway's own format, as before
        // `log.setup` was followed (Python's last resort would print bare WARNING messages).
        plan.handlers.push(HandlerPlan {
            name: "default".to_owned(),
            destination: Destination::Stderr,
            level: level::NOTSET,
            format: Format::Native,
        });
        let root = plan.root_mut();
        root.handlers = vec![0];
        if setup.is_none() {
            root.level = Some(level::INFO);
        }
    }
    if let Some(level) = level {
        for logger in plan.loggers.values_mut() {
            logger.level = Some(level);
        }
    }
    for handler in &mut plan.handlers {
        if json {
            handler.format = Format::Json;
        }
        if let Some(file) = &config.file {
            if handler.destination != Destination::Discard {
                handler.destination = Destination::File(file.clone());
            }
        }
    }
    Ok(plan)
}

impl LogPlan {
    fn empty() -> LogPlan {
        let mut loggers = BTreeMap::new();
        loggers.insert(
            String::new(),
            LoggerPlan {
                level: Some(level::WARNING),
                handlers: Vec::new(),
                propagate: false,
            },
        );
        LogPlan {
            handlers: Vec::new(),
            loggers,
            warnings: Vec::new(),
        }
    }

    fn root_mut(&mut self) -> &mut LoggerPlan {
        self.loggers.entry(String::new()).or_default()
    }
}

fn get<'a>(map: &'a Mapping, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

fn as_str(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn from_dictconfig(setup: &Mapping) -> Result<LogPlan, String> {
    let mut plan = LogPlan::empty();
    let formatters = formatters(setup, &mut plan.warnings)?;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(handlers) = get(setup, "handlers") {
        let handlers = handlers
            .as_mapping()
            .ok_or("log.setup.handlers: must be a mapping")?;
        for (name, spec) in handlers {
            let name = as_str(name).unwrap_or_default();
            let handler = handler(&name, spec, &formatters, &mut plan.warnings)?;
            names.insert(name, plan.handlers.len());
            plan.handlers.push(handler);
        }
    }
    if let Some(loggers) = get(setup, "loggers") {
        let loggers = loggers
            .as_mapping()
            .ok_or("log.setup.loggers: must be a mapping")?;
        for (name, spec) in loggers {
            let name = as_str(name).unwrap_or_default();
            let key = format!("log.setup.loggers.{name}");
            let logger = logger(&key, spec, &names, false)?;
            plan.loggers.insert(name, logger);
        }
    }
    if let Some(root) = get(setup, "root") {
        let mut logger = logger("log.setup.root", root, &names, true)?;
        logger.level = logger.level.or(Some(level::WARNING));
        plan.loggers.insert(String::new(), logger);
    }
    if get(setup, "filters").is_some() && !mentions_context_filter(setup) {
        plan.warnings.push(
            "log.setup.filters are not run (the %(request)s field is always available)".to_owned(),
        );
    }
    if get(setup, "incremental").and_then(Value::as_bool) == Some(true) {
        plan.warnings
            .push("log.setup.incremental is not supported: the setup is read whole".to_owned());
    }
    Ok(plan)
}

/// Synapse's `LoggingContextFilter` only supplies `%(request)s`, which is built in here.
fn mentions_context_filter(setup: &Mapping) -> bool {
    serde_yaml::to_string(&get(setup, "filters")).is_ok_and(|text| text.contains("ContextFilter"))
}

/// A formatter's or handler's mapping, and its `class` (or `()` factory), `""` if none.
fn section<'a>(key: &str, spec: &'a Value) -> Result<(&'a Mapping, String), String> {
    let spec = spec
        .as_mapping()
        .ok_or_else(|| format!("{key}: must be a mapping"))?;
    let class = get(spec, "class")
        .or_else(|| get(spec, "()"))
        .and_then(as_str)
        .unwrap_or_default();
    Ok((spec, class))
}

fn formatters(
    setup: &Mapping,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, Format>, String> {
    let mut formats = BTreeMap::new();
    let Some(formatters) = get(setup, "formatters") else {
        return Ok(formats);
    };
    let formatters = formatters
        .as_mapping()
        .ok_or("log.setup.formatters: must be a mapping")?;
    for (name, spec) in formatters {
        let name = as_str(name).unwrap_or_default();
        let key = format!("log.setup.formatters.{name}");
        let (spec, class) = section(&key, spec)?;
        let format = if class.to_ascii_lowercase().contains("json") {
            Format::Json
        } else {
            let style = get(spec, "style").and_then(as_str);
            let text = get(spec, "format")
                .or_else(|| get(spec, "fmt"))
                .and_then(as_str)
                .unwrap_or_else(|| PYTHON_DEFAULT_FORMAT.to_owned());
            if style.as_deref().is_some_and(|style| style != "%") {
                warnings.push(format!(
                    "{key}.style: only Python's `%` style is supported; the default text format is used"
                ));
                Format::Native
            } else {
                crate::log_format::PyFormat::compile(&text, None)
                    .map_err(|why| format!("{key}.format: {why}"))?;
                Format::Python {
                    format: text,
                    datefmt: get(spec, "datefmt").and_then(as_str),
                }
            }
        };
        formats.insert(name, format);
    }
    Ok(formats)
}

fn handler(
    name: &str,
    spec: &Value,
    formatters: &BTreeMap<String, Format>,
    warnings: &mut Vec<String>,
) -> Result<HandlerPlan, String> {
    let key = format!("log.setup.handlers.{name}");
    let (spec, class) = section(&key, spec)?;
    let short = class.rsplit('.').next().unwrap_or_default();
    let destination = if short == "StreamHandler" {
        match get(spec, "stream").and_then(as_str).as_deref() {
            None | Some("ext://sys.stderr") => Destination::Stderr,
            Some("ext://sys.stdout") => Destination::Stdout,
            Some(other) => {
                warnings.push(format!(
                    "{key}.stream: `{other}` is not ext://sys.stderr or ext://sys.stdout; stderr is used"
                ));
                Destination::Stderr
            }
        }
    } else if short.ends_with("FileHandler") {
        let filename = get(spec, "filename")
            .and_then(as_str)
            .ok_or_else(|| format!("{key}.filename: missing"))?;
        if short == "RotatingFileHandler" || short == "TimedRotatingFileHandler" {
            warnings.push(format!(
                "{key}: {short} rotation is left to logrotate; the file is followed across rotation like WatchedFileHandler"
            ));
        }
        if get(spec, "mode")
            .and_then(as_str)
            .is_some_and(|mode| mode.starts_with('w'))
        {
            warnings.push(format!(
                "{key}.mode: the file is appended to, never truncated"
            ));
        }
        Destination::File(PathBuf::from(filename))
    } else if short == "NullHandler" {
        Destination::Discard
    } else {
        warnings.push(format!(
            "{key}: handler class `{class}` is not supported; this handler writes nothing"
        ));
        Destination::Discard
    };
    let level = match get(spec, "level") {
        Some(value) => parse_level(value)
            .ok_or_else(|| format!("{key}.level: `{}` is not a log level", show(value)))?,
        None => level::NOTSET,
    };
    let format = match get(spec, "formatter").and_then(as_str) {
        Some(formatter) => formatters
            .get(&formatter)
            .cloned()
            .ok_or_else(|| format!("{key}.formatter: no formatter named `{formatter}`"))?,
        None => Format::Python {
            format: PYTHON_DEFAULT_FORMAT.to_owned(),
            datefmt: None,
        },
    };
    Ok(HandlerPlan {
        name: name.to_owned(),
        destination,
        level,
        format,
    })
}

fn logger(
    key: &str,
    spec: &Value,
    handlers: &BTreeMap<String, usize>,
    root: bool,
) -> Result<LoggerPlan, String> {
    let empty = Mapping::new();
    let spec = match spec {
        Value::Null => &empty,
        other => other
            .as_mapping()
            .ok_or_else(|| format!("{key}: must be a mapping"))?,
    };
    let level = match get(spec, "level") {
        Some(value) => {
            let level = parse_level(value)
                .ok_or_else(|| format!("{key}.level: `{}` is not a log level", show(value)))?;
            // NOTSET on a logger other than the root means "ask the parent".
            (root || level != level::NOTSET).then_some(level)
        }
        None => None,
    };
    let mut indexes = Vec::new();
    if let Some(list) = get(spec, "handlers") {
        let list = list
            .as_sequence()
            .ok_or_else(|| format!("{key}.handlers: must be a list of handler names"))?;
        for name in list {
            let name = as_str(name).unwrap_or_default();
            let index = handlers
                .get(&name)
                .ok_or_else(|| format!("{key}.handlers: no handler named `{name}`"))?;
            indexes.push(*index);
        }
    }
    let propagate = match get(spec, "propagate") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(value) => as_str(value)
            .and_then(|s| sygnal_plugin_api::lenient::parse_bool(&s))
            .ok_or_else(|| format!("{key}.propagate: must be true or false"))?,
    };
    Ok(LoggerPlan {
        level,
        handlers: indexes,
        propagate: propagate && !root,
    })
}

fn show(value: &Value) -> String {
    as_str(value).unwrap_or_else(|| format!("{value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_config(yaml: &str) -> LogConfig {
        let value: Value = serde_yaml::from_str(yaml).unwrap();
        LogConfig {
            setup: value.get("setup").cloned(),
            level: value.get("level").and_then(as_str),
            format: value.get("format").and_then(as_str),
            file: value.get("file").and_then(as_str).map(PathBuf::from),
            ..LogConfig::default()
        }
    }

    /// The `log` section of Sygnal's own sygnal.yaml.sample.
    const SYGNAL_SAMPLE: &str = include_str!("../../tests/data/sygnal-sample-log.yaml");

    #[test]
    fn reads_sygnals_sample() {
        let plan = plan(&log_config(SYGNAL_SAMPLE)).unwrap();
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let destinations: Vec<_> = plan.handlers.iter().map(|h| &h.destination).collect();
        assert_eq!(
            destinations,
            [
                &Destination::Stderr,
                &Destination::Stdout,
                &Destination::File("./sygnal.log".into())
            ]
        );
        assert!(
            matches!(&plan.handlers[2].format, Format::Python { format, .. } if format.contains("%(levelname)-5s"))
        );
        let access = &plan.loggers["sygnal.access"];
        assert_eq!(
            (access.level, &access.handlers[..], access.propagate),
            (Some(level::INFO), &[1][..], false)
        );
        let sygnal = &plan.loggers["sygnal"];
        assert_eq!(
            (sygnal.level, &sygnal.handlers[..], sygnal.propagate),
            (None, &[0, 2][..], false)
        );
        assert_eq!(plan.loggers[""].level, Some(level::INFO));
    }

    #[test]
    fn root_defaults_to_warning_and_overrides_apply() {
        let yaml = "setup:\n  version: 1\n  handlers:\n    h: {class: logging.StreamHandler}\n  root:\n    handlers: [h]\n";
        let plan = plan(&log_config(yaml)).unwrap();
        assert_eq!(plan.loggers[""].level, Some(level::WARNING));
        assert!(
            matches!(&plan.handlers[0].format, Format::Python { format, .. } if format == PYTHON_DEFAULT_FORMAT)
        );

        let overridden = super::plan(&log_config(&format!(
            "{SYGNAL_SAMPLE}level: debug\nformat: json\nfile: /var/log/x.log\n"
        )))
        .unwrap();
        assert!(overridden
            .loggers
            .values()
            .all(|l| l.level == Some(level::DEBUG)));
        assert!(overridden.handlers.iter().all(|h| h.format == Format::Json
            && h.destination == Destination::File("/var/log/x.log".into())));
    }

    #[test]
    fn without_setup_lines_go_to_stderr_at_info() {
        let plan = plan(&LogConfig::default()).unwrap();
        assert_eq!(plan.handlers.len(), 1);
        assert_eq!(plan.handlers[0].destination, Destination::Stderr);
        assert_eq!(plan.handlers[0].format, Format::Native);
        assert_eq!(plan.loggers[""].level, Some(level::INFO));
        let plan = super::plan(&log_config(
            "setup:\n  version: 1\n  root: {level: DEBUG}\nfile: /tmp/l\n",
        ))
        .unwrap();
        assert_eq!(plan.loggers[""].level, Some(level::DEBUG));
        assert_eq!(
            plan.handlers[0].destination,
            Destination::File("/tmp/l".into())
        );
    }

    #[test]
    fn errors_name_the_key_and_unsupported_parts_warn() {
        let err = |yaml: &str| plan(&log_config(yaml)).unwrap_err();
        assert!(err("setup:\n  loggers:\n    sygnal: {handlers: [nope]}\n")
            .starts_with("log.setup.loggers.sygnal.handlers: no handler named `nope`"));
        assert!(
            err("setup:\n  handlers:\n    h: {class: logging.StreamHandler, level: LOUD}\n")
                .starts_with("log.setup.handlers.h.level:")
        );
        assert!(
            err("setup:\n  handlers:\n    f: {class: logging.FileHandler}\n")
                .starts_with("log.setup.handlers.f.filename: missing")
        );
        assert!(
            err("setup:\n  handlers:\n    h: {class: logging.StreamHandler, formatter: x}\n")
                .starts_with("log.setup.handlers.h.formatter: no formatter named `x`")
        );
        assert!(err("level: loud\n").starts_with("log.level:"));
        let plan = plan(&log_config(
            "setup:\n  filters:\n    f: {name: x}\n  handlers:\n    s: {class: logging.handlers.SysLogHandler}\n    r: {class: logging.handlers.RotatingFileHandler, filename: /tmp/r.log, maxBytes: 10}\n    n: {class: logging.NullHandler}\n    j: {class: logging.StreamHandler, formatter: js}\n  formatters:\n    js: {class: pythonjsonlogger.jsonlogger.JsonFormatter}\n",
        ))
        .unwrap();
        assert_eq!(plan.handlers[0].destination, Destination::Discard);
        assert_eq!(plan.handlers[2].destination, Destination::Discard);
        assert_eq!(plan.handlers[3].format, Format::Json);
        assert_eq!(plan.warnings.len(), 3, "{:?}", plan.warnings);
    }

    #[test]
    fn levels_read_as_python_does() {
        let level = |yaml: &str| parse_level(&serde_yaml::from_str(yaml).unwrap());
        assert_eq!(level("WARNING"), Some(level::WARNING));
        assert_eq!(level("warn"), Some(level::WARNING));
        assert_eq!(level("15"), Some(15));
        assert_eq!(level("'20'"), Some(level::INFO));
        assert_eq!(level("Critical"), Some(level::CRITICAL));
        assert_eq!(level("loud"), None);
    }
}
