//! Formatting one log line: Python `%`-style formats as Sygnal's `log.setup` writes them
//! ([`PyFormat`]), the gateway's default text lines and its JSON lines.
//!
//! A [`Record`] is what a line is made of (level, logger name, message, fields, the spans it
//! happened in); a formatter turns it into text. Formatting happens only for lines some handler
//! writes: [`crate::log_layer`] filters first.
//!
//! Python fields mapped (`%(name)s`, with flags, width and precision as `%`-formatting has
//! them): `asctime` (local time, `datefmt` or `YYYY-MM-DD HH:MM:SS,mmm`), `created`, `msecs`,
//! `relativeCreated`, `levelname` (`DEBUG`, `INFO`, `WARNING`, `ERROR`; `TRACE` below debug),
//! `levelno`, `name` (the logger), `message` (the text, then the line's fields as `key=value`;
//! prefixed by `[request id] ` like Sygnal's lines unless the format has `%(request)s`), `msg`
//! (the text alone), `request` (the request id, `-` outside a request), `process`,
//! `processName`, `thread`, `threadName`, `filename`, `pathname`, `module`, `lineno` and
//! `funcName` (the Rust module path). Others print `-`.

mod python;
mod time;

pub use python::{mark_start, PyFormat};
pub use time::write_access_time;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::SystemTime;
use time::write_rfc3339;
use tracing::Level;

/// One field of a line or span, typed as it was recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// A string recorded as such (quoted in text lines, as `tracing` shows it).
    Str(String),
    /// A value recorded with `%` or `?` (shown as is).
    Shown(String),
    /// Integers, floats, booleans.
    I64(i64),
    /// See [`FieldValue::I64`].
    U64(u64),
    /// See [`FieldValue::I64`].
    F64(f64),
    /// See [`FieldValue::I64`].
    Bool(bool),
}

impl FieldValue {
    fn write_text(&self, out: &mut String) {
        let _ = match self {
            FieldValue::Str(s) => write!(out, "{s:?}"),
            FieldValue::Shown(s) => write!(out, "{s}"),
            FieldValue::I64(n) => write!(out, "{n}"),
            FieldValue::U64(n) => write!(out, "{n}"),
            FieldValue::F64(n) => write!(out, "{n}"),
            FieldValue::Bool(b) => write!(out, "{b}"),
        };
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::Str(s) | FieldValue::Shown(s) => s.as_str().into(),
            FieldValue::I64(n) => (*n).into(),
            FieldValue::U64(n) => (*n).into(),
            FieldValue::F64(n) => serde_json::Number::from_f64(*n)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|| n.to_string().into()),
            FieldValue::Bool(b) => (*b).into(),
        }
    }

    /// The value as plain text (strings unquoted).
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            FieldValue::Str(s) | FieldValue::Shown(s) => Cow::Borrowed(s),
            other => {
                let mut text = String::new();
                other.write_text(&mut text);
                Cow::Owned(text)
            }
        }
    }
}

/// A named field.
pub type Field = (&'static str, FieldValue);

/// A span a line happened in.
pub struct SpanView<'a> {
    /// The span's name (`notify`, ...).
    pub name: &'static str,
    /// Its fields.
    pub fields: &'a [Field],
}

/// Everything a line is made of.
pub struct Record<'a> {
    /// The level.
    pub level: Level,
    /// The Python logger name (`sygnal.api`, `sygnal.access`, ...).
    pub logger: &'a str,
    /// The `tracing` target (`sygnal::api`).
    pub target: &'a str,
    /// The message text.
    pub message: &'a str,
    /// The line's own fields.
    pub fields: &'a [Field],
    /// The spans it happened in, outermost first.
    pub spans: &'a [SpanView<'a>],
    /// The request id, inside a request.
    pub request_id: Option<&'a str>,
    /// When.
    pub time: SystemTime,
    /// The source file, line and module path.
    pub file: Option<&'a str>,
    /// See [`Record::file`].
    pub line: Option<u32>,
    /// See [`Record::file`].
    pub module_path: Option<&'a str>,
}

/// Python's name for a level.
pub fn python_level_name(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Python's number for a level.
pub fn python_level_number(level: Level) -> u8 {
    use crate::log_setup::level;
    match level {
        Level::ERROR => level::ERROR,
        Level::WARN => level::WARNING,
        Level::INFO => level::INFO,
        Level::DEBUG => level::DEBUG,
        Level::TRACE => level::TRACE,
    }
}

/// A compiled handler format.
#[derive(Debug)]
pub enum Formatter {
    /// Python `%`-style.
    Python(PyFormat),
    /// The default text line: `2025-01-30T12:34:56.123456Z  INFO notify{request_id=..}: target: message k=v`.
    Native,
    /// One JSON object per line: `timestamp`, `level`, `logger`, `target`, `fields` (with
    /// `message`), and the spans (`span`: the innermost, `spans`: all).
    Json,
}

impl Formatter {
    /// Appends `record`'s line, newline included, to `out`.
    pub fn format(&self, record: &Record<'_>, out: &mut String) {
        match self {
            Formatter::Python(format) => format.render(record, out),
            Formatter::Native => native(record, out),
            Formatter::Json => json(record, out),
        }
        out.push('\n');
    }
}

fn native(record: &Record<'_>, out: &mut String) {
    write_rfc3339(record.time, out);
    let level = match record.level {
        Level::ERROR => "ERROR",
        Level::WARN => " WARN",
        Level::INFO => " INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    };
    out.push(' ');
    out.push_str(level);
    out.push(' ');
    for span in record.spans {
        out.push_str(span.name);
        if !span.fields.is_empty() {
            out.push('{');
            write_fields(span.fields, out);
            out.push('}');
        }
        out.push(':');
    }
    if !record.spans.is_empty() {
        out.push(' ');
    }
    out.push_str(record.target);
    out.push_str(": ");
    out.push_str(record.message);
    if !record.fields.is_empty() {
        if !record.message.is_empty() {
            out.push(' ');
        }
        write_fields(record.fields, out);
    }
}

fn write_fields(fields: &[Field], out: &mut String) {
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            out.push(' ');
        }
        out.push_str(name);
        out.push('=');
        value.write_text(out);
    }
}

fn json(record: &Record<'_>, out: &mut String) {
    use serde_json::{Map, Value};
    let fields_of = |fields: &[Field]| -> Map<String, Value> {
        fields
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.to_json()))
            .collect()
    };
    let mut timestamp = String::with_capacity(27);
    write_rfc3339(record.time, &mut timestamp);
    let mut line = Map::new();
    line.insert("timestamp".into(), timestamp.into());
    line.insert("level".into(), record.level.as_str().into());
    let mut fields = Map::new();
    fields.insert("message".into(), record.message.into());
    fields.extend(fields_of(record.fields));
    line.insert("fields".into(), fields.into());
    line.insert("target".into(), record.target.into());
    line.insert("logger".into(), record.logger.into());
    let spans: Vec<Value> = record
        .spans
        .iter()
        .map(|span| {
            let mut fields = fields_of(span.fields);
            fields.insert("name".into(), span.name.into());
            Value::Object(fields)
        })
        .collect();
    if let Some(innermost) = spans.last() {
        line.insert("span".into(), innermost.clone());
    }
    if !spans.is_empty() {
        line.insert("spans".into(), spans.into());
    }
    let _ = write!(out, "{}", Value::Object(line));
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    pub(super) fn record<'a>(fields: &'a [Field], spans: &'a [SpanView<'a>]) -> Record<'a> {
        Record {
            level: Level::WARN,
            logger: "sygnal.dispatch",
            target: "sygnal::dispatch",
            message: "dispatch failed",
            fields,
            spans,
            request_id: Some("0a1b-7"),
            time: UNIX_EPOCH + Duration::from_millis(1_738_240_496_789),
            file: Some("host/src/dispatch.rs"),
            line: Some(118),
            module_path: Some("sygnal::dispatch"),
        }
    }

    #[test]
    fn native_and_json_lines_keep_their_shape() {
        let span_fields = [("request_id", FieldValue::Shown("0a1b-7".into()))];
        let spans = [SpanView {
            name: "notify",
            fields: &span_fields,
        }];
        let fields = [
            ("app", FieldValue::Shown("a".into())),
            ("plugin", FieldValue::Str("scripted".into())),
            ("devices", FieldValue::U64(1)),
        ];
        let record = record(&fields, &spans);
        let mut line = String::new();
        Formatter::Native.format(&record, &mut line);
        assert_eq!(
            line,
            "2025-01-30T12:34:56.789000Z  WARN notify{request_id=0a1b-7}: sygnal::dispatch: dispatch failed app=a plugin=\"scripted\" devices=1\n"
        );
        let mut line = String::new();
        Formatter::Json.format(&record, &mut line);
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["span"]["name"], "notify");
        assert_eq!(json["span"]["request_id"], "0a1b-7");
        assert_eq!(json["fields"]["message"], "dispatch failed");
        assert_eq!(json["fields"]["devices"], 1);
        assert_eq!(json["logger"], "sygnal.dispatch");
        assert_eq!(json["level"], "WARN");
    }
}
