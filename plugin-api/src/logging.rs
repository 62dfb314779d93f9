//! Forwards the plugin's `tracing` events to the host's logger.
//!
//! A cdylib carries its own copy of `tracing`, with its own global dispatcher: without this the
//! plugin's events would go nowhere. Fields cross the ABI as one JSON object (typed: numbers
//! and booleans stay numbers and booleans), the event's own fields followed by those of its
//! enclosing spans (the dispatch span carries `request_id` and `app`), since host spans cannot
//! cross into plugin threads. The host places them where its own lines carry them.

use crate::abi::{LogFn, LogLevel};
use abi_stable::std_types::RStr;
use serde_json::{Map, Value};
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

/// A span's fields, recorded once when the span is created.
struct SpanFields(Map<String, Value>);

#[derive(Default)]
struct FieldWriter {
    message: String,
    fields: Map<String, Value>,
}

impl FieldWriter {
    fn put(&mut self, field: &Field, value: Value) {
        self.fields.insert(field.name().to_owned(), value);
    }
}

impl Visit for FieldWriter {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities: those travel as text.
        match serde_json::Number::from_f64(value) {
            Some(number) => self.put(field, Value::Number(number)),
            None => self.put(field, Value::String(value.to_string())),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.put(field, Value::String(value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.put(field, Value::String(format!("{value:?}")));
        }
    }
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
                    for (name, value) in fields {
                        // The event's own field wins over a span's of the same name.
                        if !writer.fields.contains_key(name) {
                            writer.fields.insert(name.clone(), value.clone());
                        }
                    }
                }
            }
        }
        let fields = if writer.fields.is_empty() {
            String::new()
        } else {
            Value::Object(writer.fields).to_string()
        };
        let metadata = event.metadata();
        (self.sink)(
            level_of(metadata.level()),
            RStr::from_str(self.plugin),
            RStr::from_str(metadata.target()),
            RStr::from_str(&writer.message),
            RStr::from_str(&fields),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static RECORDS: Mutex<Vec<(LogLevel, String, String, String)>> = Mutex::new(Vec::new());

    extern "C" fn record(
        level: LogLevel,
        _plugin: RStr<'_>,
        target: RStr<'_>,
        message: RStr<'_>,
        fields: RStr<'_>,
    ) {
        RECORDS.lock().unwrap().push((
            level,
            target.as_str().to_owned(),
            message.as_str().to_owned(),
            fields.as_str().to_owned(),
        ));
    }

    #[test]
    fn fields_cross_as_a_typed_json_object_with_span_fields() {
        let layer = HostLogLayer {
            sink: record,
            plugin: "test",
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("dispatch", request_id = "r-7", app = "com.example");
            let _entered = span.enter();
            tracing::warn!(
                status = 404_u16,
                delta = -3_i64,
                ratio = 0.5,
                retried = true,
                host = %"push.example.org",
                event_id = ?Some("$e"),
                app = "overridden",
                "endpoint gone"
            );
            tracing::info!("no fields of its own");
        });
        let records = RECORDS.lock().unwrap().clone();
        let (level, _, message, fields) = &records[0];
        assert_eq!(
            (*level, message.as_str()),
            (LogLevel::Warn, "endpoint gone")
        );
        let fields: Value = serde_json::from_str(fields).unwrap();
        assert_eq!(
            fields,
            serde_json::json!({
                "status": 404, "delta": -3, "ratio": 0.5, "retried": true,
                "host": "push.example.org", "event_id": "Some(\"$e\")",
                "app": "overridden", "request_id": "r-7"
            })
        );
        let fields: Value = serde_json::from_str(&records[1].3).unwrap();
        assert_eq!(
            fields,
            serde_json::json!({"request_id": "r-7", "app": "com.example"})
        );
    }
}
