//! Python `%`-style log formats: `%(name)s` fields with flags, width, precision and
//! conversion, as Python's logging formats a record.

use super::{python_level_name, python_level_number, Record};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// A Python `%`-style log format, compiled.
#[derive(Debug)]
pub struct PyFormat {
    pieces: Vec<Piece>,
    datefmt: Option<std::ffi::CString>,
    /// The format shows the request id itself: `%(message)s` then does not.
    has_request: bool,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Field { key: Key, spec: Spec },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Asctime,
    Created,
    Msecs,
    RelativeCreated,
    LevelName,
    LevelNo,
    Name,
    Message,
    Msg,
    Request,
    Process,
    ProcessName,
    Thread,
    ThreadName,
    FileName,
    PathName,
    Module,
    LineNo,
    FuncName,
    Unknown,
}

impl Key {
    fn of(name: &str) -> Key {
        match name {
            "asctime" => Key::Asctime,
            "created" => Key::Created,
            "msecs" => Key::Msecs,
            "relativeCreated" => Key::RelativeCreated,
            "levelname" => Key::LevelName,
            "levelno" => Key::LevelNo,
            "name" => Key::Name,
            "message" => Key::Message,
            "msg" => Key::Msg,
            "request" => Key::Request,
            "process" => Key::Process,
            "processName" => Key::ProcessName,
            "thread" => Key::Thread,
            "threadName" => Key::ThreadName,
            "filename" => Key::FileName,
            "pathname" => Key::PathName,
            "module" => Key::Module,
            "lineno" => Key::LineNo,
            "funcName" => Key::FuncName,
            _ => Key::Unknown,
        }
    }
}

/// `%`-formatting's conversion spec: `-` (left-align), `0` (zero-pad), width, precision, type.
#[derive(Debug, Clone, Copy, Default)]
struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
    conversion: char,
}

/// What a field is, before the spec applies.
enum PyValue<'a> {
    Text(Cow<'a, str>),
    Int(i64),
    Float(f64),
}

impl PyFormat {
    /// Compiles `format`; `datefmt` is a `strftime` pattern for `%(asctime)s`. Errors say
    /// what is wrong, as Python's validation would refuse it.
    pub fn compile(format: &str, datefmt: Option<&str>) -> Result<PyFormat, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = format;
        while let Some(at) = rest.find('%') {
            text.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                text.push('%');
                rest = after;
                continue;
            }
            let Some(after) = rest.strip_prefix('(') else {
                return Err(format!(
                    "`%` must be followed by `(name)` or `%` in {format:?}"
                ));
            };
            let close = after
                .find(')')
                .ok_or_else(|| format!("unclosed `%(` in {format:?}"))?;
            let name = &after[..close];
            let (spec, remaining) = parse_spec(&after[close + 1..])
                .ok_or_else(|| format!("bad conversion after `%({name})` in {format:?}"))?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Field {
                key: Key::of(name),
                spec,
            });
            rest = remaining;
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        let datefmt = datefmt
            .map(|pattern| {
                std::ffi::CString::new(pattern).map_err(|_| "datefmt holds a NUL byte".to_owned())
            })
            .transpose()?;
        let has_request = pieces.iter().any(|piece| {
            matches!(
                piece,
                Piece::Field {
                    key: Key::Request,
                    ..
                }
            )
        });
        Ok(PyFormat {
            pieces,
            datefmt,
            has_request,
        })
    }

    /// The names of fields in `format` that print `-` here (for a warning at startup).
    pub fn unknown_fields(format: &str) -> Vec<String> {
        let mut unknown = Vec::new();
        let mut rest = format;
        while let Some(at) = rest.find("%(") {
            rest = &rest[at + 2..];
            if let Some(close) = rest.find(')') {
                let name = &rest[..close];
                if Key::of(name) == Key::Unknown && !unknown.iter().any(|n| n == name) {
                    unknown.push(name.to_owned());
                }
            }
        }
        unknown
    }

    pub(super) fn render(&self, record: &Record<'_>, out: &mut String) {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                // The common `%(message)s`: written in place, without a copy.
                Piece::Field {
                    key: Key::Message,
                    spec:
                        Spec {
                            width: 0,
                            precision: None,
                            conversion: 's',
                            ..
                        },
                } => self.write_message(record, out),
                Piece::Field { key, spec } => {
                    let value = self.value(*key, record);
                    apply(spec, value, out);
                }
            }
        }
    }

    fn value<'a>(&self, key: Key, record: &'a Record<'a>) -> PyValue<'a> {
        let since_epoch = record.time.duration_since(UNIX_EPOCH).unwrap_or_default();
        match key {
            Key::Asctime => {
                let mut text = String::with_capacity(23);
                super::time::local_time(since_epoch.as_secs(), self.datefmt.as_deref(), &mut text);
                if self.datefmt.is_none() {
                    let _ = write!(text, ",{:03}", since_epoch.subsec_millis());
                }
                PyValue::Text(Cow::Owned(text))
            }
            Key::Created => PyValue::Float(since_epoch.as_secs_f64()),
            Key::Msecs => PyValue::Float(f64::from(since_epoch.subsec_micros()) / 1000.0),
            Key::RelativeCreated => {
                let start = *PROCESS_START.get_or_init(SystemTime::now);
                let elapsed = record.time.duration_since(start).unwrap_or_default();
                PyValue::Float(elapsed.as_secs_f64() * 1000.0)
            }
            Key::LevelName => PyValue::Text(Cow::Borrowed(python_level_name(record.level))),
            Key::LevelNo => PyValue::Int(i64::from(python_level_number(record.level))),
            Key::Name => PyValue::Text(Cow::Borrowed(record.logger)),
            Key::Message => {
                let mut text = String::with_capacity(record.message.len() + 32);
                self.write_message(record, &mut text);
                PyValue::Text(Cow::Owned(text))
            }
            Key::Msg => PyValue::Text(Cow::Borrowed(record.message)),
            Key::Request => PyValue::Text(Cow::Borrowed(record.request_id.unwrap_or("-"))),
            Key::Process => PyValue::Int(i64::from(process_id())),
            Key::ProcessName => PyValue::Text(Cow::Borrowed("MainProcess")),
            Key::Thread => PyValue::Int(crate::sys::thread_id()),
            Key::ThreadName => PyValue::Text(Cow::Owned(
                std::thread::current()
                    .name()
                    .unwrap_or("unnamed")
                    .to_owned(),
            )),
            Key::FileName => PyValue::Text(Cow::Borrowed(
                record
                    .file
                    .map(|file| file.rsplit('/').next().unwrap_or(file))
                    .unwrap_or("-"),
            )),
            Key::PathName => PyValue::Text(Cow::Borrowed(record.file.unwrap_or("-"))),
            Key::Module => PyValue::Text(Cow::Borrowed(
                record
                    .file
                    .and_then(|file| file.rsplit('/').next())
                    .map(|name| name.strip_suffix(".rs").unwrap_or(name))
                    .unwrap_or("-"),
            )),
            Key::LineNo => PyValue::Int(record.line.map_or(0, i64::from)),
            Key::FuncName => PyValue::Text(Cow::Borrowed(record.module_path.unwrap_or("-"))),
            Key::Unknown => PyValue::Text(Cow::Borrowed("-")),
        }
    }

    /// `%(message)s`: `[request id] text key=value ...`, as Sygnal's lines read.
    fn write_message(&self, record: &Record<'_>, text: &mut String) {
        let start = text.len();
        if let (Some(id), false) = (record.request_id, self.has_request) {
            text.push('[');
            text.push_str(id);
            text.push_str("] ");
        }
        text.push_str(record.message);
        let span_fields = record.spans.iter().flat_map(|span| span.fields.iter());
        for (name, value) in record
            .fields
            .iter()
            .chain(span_fields.filter(|(name, _)| *name != "request_id"))
        {
            if text.len() > start {
                text.push(' ');
            }
            text.push_str(name);
            text.push('=');
            value.write_text(text);
        }
    }
}

static PROCESS_START: std::sync::OnceLock<SystemTime> = std::sync::OnceLock::new();

/// The process id, asked once (`getpid` is a system call).
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Notes the time `%(relativeCreated)d` counts from (call when logging starts).
pub fn mark_start() {
    PROCESS_START.get_or_init(SystemTime::now);
}

/// Parses `[#0- +]*[width][.precision][hlL]type` after `%(name)`.
fn parse_spec(text: &str) -> Option<(Spec, &str)> {
    let mut spec = Spec::default();
    let mut chars = text.char_indices().peekable();
    while let Some(&(_, c)) = chars.peek() {
        match c {
            '-' => spec.left = true,
            '0' => spec.zero = true,
            '#' | ' ' | '+' => {}
            _ => break,
        }
        chars.next();
    }
    let number = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        let mut value: Option<usize> = None;
        while let Some(&(_, c)) = chars.peek() {
            let Some(digit) = c.to_digit(10) else { break };
            value = Some(value.unwrap_or(0).saturating_mul(10) + digit as usize);
            chars.next();
        }
        value
    };
    spec.width = number(&mut chars).unwrap_or(0);
    if chars.peek().is_some_and(|&(_, c)| c == '.') {
        chars.next();
        spec.precision = Some(number(&mut chars).unwrap_or(0));
    }
    while chars
        .peek()
        .is_some_and(|&(_, c)| matches!(c, 'h' | 'l' | 'L'))
    {
        chars.next();
    }
    let (at, conversion) = chars.next()?;
    if !"diouxXeEfFgGcrsa".contains(conversion) {
        return None;
    }
    spec.conversion = conversion;
    Some((spec, &text[at + conversion.len_utf8()..]))
}

/// Writes `value` as `%`-formatting would with `spec`.
fn apply(spec: &Spec, value: PyValue<'_>, out: &mut String) {
    let numeric_conversion = "diouxXeEfFgG".contains(spec.conversion);
    let text: Cow<'_, str> = match (value, spec.conversion) {
        (PyValue::Int(n), 'd' | 'i' | 'u') => Cow::Owned(pad_digits(
            n.unsigned_abs().to_string(),
            spec.precision,
            n < 0,
        )),
        (PyValue::Float(f), 'd' | 'i' | 'u') => Cow::Owned((f.trunc() as i64).to_string()),
        (PyValue::Int(n), 'x') => Cow::Owned(format!("{n:x}")),
        (PyValue::Int(n), 'X') => Cow::Owned(format!("{n:X}")),
        (PyValue::Int(n), 'o') => Cow::Owned(format!("{n:o}")),
        (PyValue::Int(n), 'e' | 'E' | 'f' | 'F' | 'g' | 'G') => {
            Cow::Owned(format!("{:.*}", spec.precision.unwrap_or(6), n as f64))
        }
        (PyValue::Float(f), 'e' | 'E' | 'f' | 'F' | 'g' | 'G') => {
            Cow::Owned(format!("{:.*}", spec.precision.unwrap_or(6), f))
        }
        (PyValue::Int(n), _) => Cow::Owned(n.to_string()),
        (PyValue::Float(f), _) => Cow::Owned(f.to_string()),
        (PyValue::Text(text), 'r' | 'a') => Cow::Owned(format!("'{text}'")),
        (PyValue::Text(text), _) => match spec.precision {
            Some(max) if !numeric_conversion && text.chars().count() > max => {
                Cow::Owned(text.chars().take(max).collect())
            }
            _ => text,
        },
    };
    let len = text.chars().count();
    let fill = spec.width.saturating_sub(len);
    if spec.left {
        out.push_str(&text);
        out.extend(std::iter::repeat_n(' ', fill));
    } else if spec.zero && numeric_conversion {
        let (sign, digits) = match text.strip_prefix('-') {
            Some(digits) => ("-", digits),
            None => ("", &*text),
        };
        out.push_str(sign);
        out.extend(std::iter::repeat_n('0', fill));
        out.push_str(digits);
    } else {
        out.extend(std::iter::repeat_n(' ', fill));
        out.push_str(&text);
    }
}

fn pad_digits(digits: String, precision: Option<usize>, negative: bool) -> String {
    let zeros = precision.unwrap_or(0).saturating_sub(digits.len());
    let mut text = String::with_capacity(digits.len() + zeros + 1);
    if negative {
        text.push('-');
    }
    text.extend(std::iter::repeat_n('0', zeros));
    text.push_str(&digits);
    text
}

#[cfg(test)]
mod tests {
    use super::super::tests::record;
    use super::super::FieldValue;
    use super::*;

    fn python(format: &str, record: &Record<'_>) -> String {
        let mut out = String::new();
        PyFormat::compile(format, Some("%Y"))
            .unwrap()
            .render(record, &mut out);
        out
    }

    #[test]
    fn python_fields_widths_and_the_request_id() {
        let fields = [("app", FieldValue::Shown("com.example".into()))];
        let record = record(&fields, &[]);
        assert_eq!(
            python("%(levelname)-5s|%(name)s|%(message)s", &record),
            "WARNING|sygnal.dispatch|[0a1b-7] dispatch failed app=com.example"
        );
        assert_eq!(
            python("%(request)s %(levelname)8s %(message)s", &record),
            "0a1b-7  WARNING dispatch failed app=com.example"
        );
        assert_eq!(
            python(
                "%(filename)s:%(lineno)d %(module)s %(levelno)03d %%",
                &record
            ),
            "dispatch.rs:118 dispatch 030 %"
        );
        assert_eq!(python("%(msecs)03d %(asctime)s", &record), "789 2025");
        assert_eq!(python("%(created).1f %(nope)s", &record), "1738240496.8 -");
        assert_eq!(
            python("%(process)d", &record),
            std::process::id().to_string()
        );
        assert_eq!(PyFormat::unknown_fields("%(nope)s %(name)s"), ["nope"]);
        assert!(PyFormat::compile("%(name", None).is_err());
        assert!(PyFormat::compile("%(name)q", None).is_err());
        assert!(PyFormat::compile("50% off", None).is_err());
    }
}
