//! The host's logger: a `tracing` layer that routes every line through the [`LogPlan`] as
//! Python's logging routes a record, and writes it with each handler's formatter.
//!
//! Routing, for a line of level L from logger N (the target with `::` read as `.`, see
//! [`logger_name`]): it is dropped unless L reaches N's effective level (N's own, else its
//! nearest configured ancestor's, the root's at last); then it goes to the handlers of N and of
//! each ancestor in turn, stopping after the first logger with `propagate: false`, each handler
//! taking it if L reaches the handler's level. A handler reached twice, or two handlers writing
//! to the same place in the same format, write the line once.
//!
//! The decision depends only on the line's target and level, so it is made once per call site
//! (`tracing` caches it): a line no handler takes costs a load and a branch, and nothing is
//! formatted for it. Spans of the gateway itself (`notify{request_id}`) are always created
//! while anything logs, so warnings carry the request id even when info lines are off.

use crate::log_file::LogFile;
use crate::log_format::{Field, FieldValue, Formatter, PyFormat, Record, SpanView};
use crate::log_setup::{Destination, Format, LogPlan, LoggerPlan};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::BuildHasherDefault;
use std::io::Write as _;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tracing::field::{Field as TracingField, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer;

/// At most this many handlers (and places written to): a bit each in a line's route.
const MAX_HANDLERS: usize = 64;

/// The Python logger name of a `tracing` target: `sygnal::api` is `sygnal.api`, the access
/// log's `sygnal::access` is `sygnal.access`, a plugin's lines (`sygnal::pushkin::apns`) are
/// `sygnal.pushkin.apns`; other crates' targets (`hyper::proto`) become `hyper.proto`.
pub fn logger_name(target: &str) -> String {
    target.replace("::", ".")
}

/// Where lines are written.
enum Sink {
    Stderr,
    Stdout,
    File(Arc<LogFile>),
}

impl Sink {
    fn write(&self, line: &[u8]) {
        // A line that cannot be written is lost; there is nowhere to report it.
        let _ = match self {
            Sink::Stderr => std::io::stderr().write_all(line),
            Sink::Stdout => std::io::stdout().lock().write_all(line),
            Sink::File(file) => file.write_line(line),
        };
    }
}

struct Handler {
    /// Index into `sinks`; `None` writes nowhere.
    sink: Option<usize>,
    /// Index into `formatters`.
    formatter: usize,
}

/// The handlers a line of each level goes to (bit i: handler i), for one logger.
struct Route {
    /// Indexed by [`level_index`].
    masks: [u64; 5],
    logger: Box<str>,
}

fn level_index(level: &Level) -> usize {
    match *level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        Level::TRACE => 4,
    }
}

const LEVELS: [Level; 5] = [
    Level::ERROR,
    Level::WARN,
    Level::INFO,
    Level::DEBUG,
    Level::TRACE,
];

/// The routing of a plan: Python's logger tree over the handlers.
pub struct Router {
    handler_levels: Vec<u8>,
    loggers: BTreeMap<String, LoggerPlan>,
    /// Routes by target, computed on first use and kept (targets are few and static).
    routes: RwLock<HashMap<Box<str>, &'static Route, BuildHasherDefault<Fnv>>>,
}

impl Router {
    /// The routing of `plan`.
    pub fn new(plan: &LogPlan) -> Router {
        Router {
            handler_levels: plan.handlers.iter().map(|h| h.level).collect(),
            loggers: plan.loggers.clone(),
            routes: RwLock::new(HashMap::default()),
        }
    }

    fn route(&self, target: &str) -> &'static Route {
        if let Some(route) = self.routes.read().ok().and_then(|r| r.get(target).copied()) {
            return route;
        }
        let logger = logger_name(target);
        let masks =
            LEVELS.map(|level| self.mask(&logger, crate::log_format::python_level_number(level)));
        // Leaked on purpose: one per distinct target, for the life of the process.
        let route: &'static Route = Box::leak(Box::new(Route {
            masks,
            logger: logger.into_boxed_str(),
        }));
        if let Ok(mut routes) = self.routes.write() {
            routes.entry(target.into()).or_insert(route);
        }
        route
    }

    /// The handlers a line of Python level `level` from `logger` goes to.
    pub fn mask(&self, logger: &str, level: u8) -> u64 {
        let effective = ancestors(logger)
            .find_map(|name| self.loggers.get(name).and_then(|l| l.level))
            .unwrap_or(crate::log_setup::level::WARNING);
        if level < effective {
            return 0;
        }
        let mut mask = 0u64;
        for name in ancestors(logger) {
            let Some(node) = self.loggers.get(name) else {
                continue;
            };
            for &handler in &node.handlers {
                if level >= self.handler_levels[handler] {
                    mask |= 1 << handler;
                }
            }
            if !node.propagate {
                break;
            }
        }
        mask
    }

    /// Whether a line of `level` from `target` goes anywhere.
    pub fn enabled(&self, target: &str, level: &Level) -> bool {
        self.route(target).masks[level_index(level)] != 0
    }

    /// The most verbose level any logger may write (for `tracing`'s fast global check, and for
    /// plugins, which skip what the host would not write).
    pub fn max_level(&self) -> LevelFilter {
        let names = self.loggers.keys().map(String::as_str);
        for level in LEVELS.iter().rev() {
            let number = crate::log_format::python_level_number(*level);
            if names.clone().any(|name| self.mask(name, number) != 0) {
                return LevelFilter::from_level(*level);
            }
        }
        LevelFilter::OFF
    }
}

/// FNV-1a: targets are short, and the route of each line is looked up by its target.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// `a.b.c`, `a.b`, `a`, then the root `""`.
fn ancestors(logger: &str) -> impl Iterator<Item = &str> + Clone {
    let mut next = Some(logger);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('.') {
            Some(dot) => Some(&current[..dot]),
            None if current.is_empty() => None,
            None => Some(""),
        };
        Some(current)
    })
}

/// The layer.
pub struct PyLogging {
    router: Router,
    handlers: Vec<Handler>,
    sinks: Vec<Sink>,
    formatters: Vec<Formatter>,
    /// Whether anything is written at all (spans are skipped otherwise).
    logging: bool,
}

impl PyLogging {
    /// Opens the plan's files and compiles its formats. Errors name the handler.
    pub fn new(plan: &LogPlan) -> Result<PyLogging, String> {
        if plan.handlers.len() > MAX_HANDLERS {
            return Err(format!(
                "log.setup.handlers: at most {MAX_HANDLERS} handlers are supported"
            ));
        }
        let mut destinations: Vec<&Destination> = Vec::new();
        let mut sinks = Vec::new();
        let mut formats: Vec<&Format> = Vec::new();
        let mut formatters = Vec::new();
        let mut handlers = Vec::new();
        for handler in &plan.handlers {
            let sink = match &handler.destination {
                Destination::Discard => None,
                destination => Some(match destinations.iter().position(|d| *d == destination) {
                    Some(index) => index,
                    None => {
                        sinks.push(match destination {
                            Destination::Stdout => Sink::Stdout,
                            Destination::File(path) => {
                                Sink::File(LogFile::install(path).map_err(|err| {
                                    format!(
                                        "log.setup.handlers.{}: cannot open log file {}: {err}",
                                        handler.name,
                                        path.display()
                                    )
                                })?)
                            }
                            _ => Sink::Stderr,
                        });
                        destinations.push(destination);
                        sinks.len() - 1
                    }
                }),
            };
            let formatter = match formats.iter().position(|f| **f == handler.format) {
                Some(index) => index,
                None => {
                    formatters.push(match &handler.format {
                        Format::Python { format, datefmt } => Formatter::Python(
                            PyFormat::compile(format, datefmt.as_deref()).map_err(|why| {
                                format!("log.setup.handlers.{}: {why}", handler.name)
                            })?,
                        ),
                        Format::Native => Formatter::Native,
                        Format::Json => Formatter::Json,
                    });
                    formats.push(&handler.format);
                    formatters.len() - 1
                }
            };
            handlers.push(Handler { sink, formatter });
        }
        let router = Router::new(plan);
        let logging = router.max_level() != LevelFilter::OFF;
        Ok(PyLogging {
            router,
            handlers,
            sinks,
            formatters,
            logging,
        })
    }

    /// Installs the layer as the process's logger. Returns the most verbose level written.
    pub fn install(self) -> Result<LevelFilter, String> {
        let level = self.router.max_level();
        crate::log_format::mark_start();
        tracing_subscriber::registry()
            .with(self)
            .try_init()
            .map_err(|err| format!("cannot install the logger: {err}"))?;
        Ok(level)
    }

    fn wanted(&self, metadata: &Metadata<'_>) -> bool {
        if metadata.is_span() {
            // The gateway's own spans carry the request id for every line inside them.
            return self.logging && metadata.target().starts_with("sygnal");
        }
        self.router.enabled(metadata.target(), metadata.level())
    }

    fn write(&self, record: &Record<'_>, mask: u64) {
        thread_local! {
            static BUFFER: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        BUFFER.with(|buffer| {
            let Ok(mut buffer) = buffer.try_borrow_mut() else {
                return; // A line logged while formatting one: dropped rather than recursing.
            };
            let mut formatted: Option<usize> = None;
            let mut written = 0u64;
            for (index, handler) in self.handlers.iter().enumerate() {
                let Some(sink) = handler.sink else { continue };
                if mask & (1 << index) == 0 || written & (1 << sink) != 0 {
                    continue;
                }
                if formatted != Some(handler.formatter) {
                    buffer.clear();
                    self.formatters[handler.formatter].format(record, &mut buffer);
                    formatted = Some(handler.formatter);
                }
                self.sinks[sink].write(buffer.as_bytes());
                written |= 1 << sink;
            }
            if buffer.capacity() > 64 * 1024 {
                *buffer = String::new(); // Do not keep one huge line's buffer per thread.
            }
        });
    }
}

/// A span's fields, recorded when it is created.
struct SpanFields(Vec<Field>);

#[derive(Default)]
struct Visitor {
    message: String,
    fields: Vec<Field>,
}

impl Visitor {
    fn put(&mut self, field: &TracingField, value: FieldValue) {
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        if name.starts_with("log.") {
            return;
        }
        match self
            .fields
            .iter_mut()
            .find(|(existing, _)| *existing == name)
        {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name, value)),
        }
    }
}

impl Visit for Visitor {
    fn record_f64(&mut self, field: &TracingField, value: f64) {
        self.put(field, FieldValue::F64(value));
    }

    fn record_i64(&mut self, field: &TracingField, value: i64) {
        self.put(field, FieldValue::I64(value));
    }

    fn record_u64(&mut self, field: &TracingField, value: u64) {
        self.put(field, FieldValue::U64(value));
    }

    fn record_bool(&mut self, field: &TracingField, value: bool) {
        self.put(field, FieldValue::Bool(value));
    }

    fn record_str(&mut self, field: &TracingField, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.put(field, FieldValue::Str(value.to_owned()));
        }
    }

    fn record_error(&mut self, field: &TracingField, value: &(dyn std::error::Error + 'static)) {
        self.put(field, FieldValue::Shown(value.to_string()));
    }

    fn record_debug(&mut self, field: &TracingField, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            // One allocation for a usual line rather than several as it grows.
            self.message.reserve(256);
            let _ = write!(self.message, "{value:?}");
        } else {
            self.put(field, FieldValue::Shown(format!("{value:?}")));
        }
    }
}

impl<S> Layer<S> for PyLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.wanted(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        self.wanted(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.router.max_level())
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut visitor = Visitor::default();
        attrs.record(&mut visitor);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(visitor.fields));
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            let mut visitor = Visitor {
                message: String::new(),
                fields: std::mem::take(fields),
            };
            values.record(&mut visitor);
            *fields = visitor.fields;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        let route = self.router.route(metadata.target());
        let mask = route.masks[level_index(metadata.level())];
        if mask == 0 {
            return;
        }
        let mut visitor = Visitor::default();
        event.record(&mut visitor);
        let scope: Vec<_> = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = scope.iter().map(|span| span.extensions()).collect();
        let spans: Vec<SpanView<'_>> = scope
            .iter()
            .zip(&extensions)
            .map(|(span, extensions)| SpanView {
                name: span.name(),
                fields: extensions
                    .get::<SpanFields>()
                    .map_or(&[][..], |fields| &fields.0),
            })
            .collect();
        let request_id = spans
            .iter()
            .rev()
            .find_map(|span| span.fields.iter().find(|(name, _)| *name == "request_id"))
            .map(|(_, value)| value.as_text());
        let record = Record {
            level: *metadata.level(),
            logger: &route.logger,
            target: metadata.target(),
            message: &visitor.message,
            fields: &visitor.fields,
            spans: &spans,
            request_id: request_id.as_deref(),
            time: SystemTime::now(),
            file: metadata.file(),
            line: metadata.line(),
            module_path: metadata.module_path(),
        };
        self.write(&record, mask);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;
    use crate::log_setup::{level, plan};

    fn router(setup: &str) -> Router {
        let config = LogConfig {
            setup: Some(serde_yaml::from_str(setup).unwrap()),
            ..LogConfig::default()
        };
        Router::new(&plan(&config).unwrap())
    }

    const SAMPLE: &str = "
version: 1
handlers:
  stderr: {class: logging.StreamHandler}
  stdout: {class: logging.StreamHandler, stream: 'ext://sys.stdout'}
  file: {class: logging.handlers.WatchedFileHandler, filename: ./sygnal.log, level: WARNING}
loggers:
  sygnal.access: {propagate: false, handlers: [stdout], level: INFO}
  sygnal: {propagate: false, handlers: [stderr, file]}
root: {handlers: [stderr], level: INFO}
";

    #[test]
    fn routes_as_python_does() {
        let router = router(SAMPLE);
        let (stderr, stdout, file) = (1, 2, 4);
        // sygnal.access: its own handler only (propagate false), from INFO.
        assert_eq!(router.mask("sygnal.access", level::INFO), stdout);
        assert_eq!(router.mask("sygnal.access", level::DEBUG), 0);
        // A module of the gateway: the `sygnal` logger's handlers, at the root's level (the
        // nearest configured one), the file from WARNING.
        assert_eq!(router.mask("sygnal.api", level::INFO), stderr);
        assert_eq!(router.mask("sygnal.api", level::WARNING), stderr | file);
        assert_eq!(router.mask("sygnal.pushkin.apns", level::DEBUG), 0);
        // Another crate: the root's.
        assert_eq!(router.mask("hyper.proto", level::INFO), stderr);
        assert_eq!(router.max_level(), LevelFilter::INFO);
    }

    #[test]
    fn a_logger_level_beats_the_roots_and_propagation_reaches_the_root() {
        let router = router(
            "handlers:\n  e: {class: logging.StreamHandler}\n  o: {class: logging.StreamHandler, stream: 'ext://sys.stdout'}\nloggers:\n  sygnal: {level: INFO, handlers: [o]}\nroot: {level: WARNING, handlers: [e]}\n",
        );
        assert_eq!(router.mask("sygnal.api", level::INFO), 0b11);
        assert_eq!(router.mask("sygnal.api", level::DEBUG), 0);
        assert_eq!(router.mask("h2.codec", level::INFO), 0);
        assert_eq!(router.mask("h2.codec", level::ERROR), 0b01);
        assert!(router.enabled("sygnal::api", &Level::INFO));
        assert!(!router.enabled("h2::codec", &Level::INFO));
        assert_eq!(router.max_level(), LevelFilter::INFO);
    }

    #[test]
    fn ancestors_end_at_the_root() {
        assert_eq!(
            ancestors("sygnal.pushkin.apns").collect::<Vec<_>>(),
            ["sygnal.pushkin.apns", "sygnal.pushkin", "sygnal", ""]
        );
        assert_eq!(ancestors("").collect::<Vec<_>>(), [""]);
        assert_eq!(logger_name("sygnal::pushkin::gcm"), "sygnal.pushkin.gcm");
    }
}
