//! Forwards the plugin's `tracing` events to the host's logger.
//!
//! A cdylib carries its own copy of `tracing`, with its own global dispatcher: without this the
//! plugin's events would go nowhere. Span fields (the dispatch span carries `request_id` and
//! `app`) are appended to each event's fields, since host spans cannot cross into plugin threads.

use crate::abi::{LogFn, LogLevel};
use abi_stable::std_types::RStr;
use std::fmt::{Debug, Write};
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{filter::LevelFilter, Layer};

struct HostLogLayer {
    sink: LogFn,
    plugin: &'static str,
}

/// A span's fields, rendered once when the span is created.
struct SpanFields(String);

#[derive(Default)]
struct FieldWriter {
    message: String,
    fields: String,
}

impl Visit for FieldWriter {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            push_field(&mut self.fields, field.name(), format_args!("{value}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            push_field(&mut self.fields, field.name(), format_args!("{value:?}"));
        }
    }
}

fn push_field(out: &mut String, name: &str, value: std::fmt::Arguments<'_>) {
    if !out.is_empty() {
        out.push(' ');
    }
    let _ = write!(out, "{name}={value}");
}

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        Level::TRACE => LogLevel::Trace,
    }
}

fn filter_of(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

impl<S> Layer<S> for HostLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut writer = FieldWriter::default();
        attrs.record(&mut writer);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(writer.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut writer = FieldWriter::default();
        event.record(&mut writer);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    if !fields.is_empty() {
                        if !writer.fields.is_empty() {
                            writer.fields.push(' ');
                        }
                        writer.fields.push_str(fields);
                    }
                }
            }
        }
        let metadata = event.metadata();
        (self.sink)(
            level_of(metadata.level()),
            RStr::from_str(self.plugin),
            RStr::from_str(metadata.target()),
            RStr::from_str(&writer.message),
            RStr::from_str(&writer.fields),
        );
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs, once per library, the forwarding subscriber and a panic hook that logs through it.
pub(crate) fn install(sink: LogFn, max_level: LogLevel, plugin: &'static str) {
    INSTALLED.get_or_init(|| {
        let layer = HostLogLayer { sink, plugin }.with_filter(filter_of(max_level));
        let subscriber = tracing_subscriber::registry().with(layer);
        // Fails only if the plugin installed its own dispatcher first; theirs then wins.
        let _ = tracing::subscriber::set_global_default(subscriber);
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let payload = crate::sdk::panic_message(info.payload());
            // Through tracing, so the dispatch span's request id is attached.
            tracing::error!(target: "panic", %location, "pushkin panicked: {payload}");
        }));
    });
}
