//! Re-emitting a plugin's log records as the host's own, fields included.
//!
//! Plugins send their fields as a JSON object. `tracing` wants field names known when a call
//! site is declared, so each distinct (level, plugin kind, field names) shape a plugin uses gets
//! a call site of its own, created once and kept (bounded: past [`MAX_CALLSITES`] shapes, or
//! for the old `k=v` text, fields travel as one `fields` string). Its target is
//! `sygnal::pushkin::<kind>`: the Python logger `sygnal.pushkin.<kind>` in `log.setup`. The
//! request id goes into a `notify` span, exactly where the host's own lines carry it; the other
//! fields are the event's, typed as the plugin sent them.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use sygnal_plugin_api::abi::LogLevel;
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{Field, FieldSet, Value as TracingValue};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};

/// Distinct field shapes given call sites of their own; beyond, fields are flattened to text.
const MAX_CALLSITES: usize = 512;
/// Fields per record beyond the fixed ones; more are dropped (with a note).
const MAX_FIELDS: usize = 24;
/// Fields every plugin record has, first.
const FIXED_FIELDS: [&str; 3] = ["message", "plugin", "plugin_target"];
/// The one field of records whose fields travel as text.
const FLAT: &str = "fields";

/// A call site made at run time for one shape of plugin record.
struct DynamicCallsite {
    metadata: OnceLock<Metadata<'static>>,
}

impl Callsite for DynamicCallsite {
    fn set_interest(&self, _interest: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.metadata.get().expect("set before registration")
    }
}

type Shape = (Level, String, Vec<String>);

#[derive(Default)]
struct Callsites {
    by_shape: HashMap<Shape, &'static Metadata<'static>>,
    /// `sygnal::pushkin::<kind>`, by kind.
    targets: HashMap<String, &'static str>,
}

fn callsites() -> &'static Mutex<Callsites> {
    static CALLSITES: OnceLock<Mutex<Callsites>> = OnceLock::new();
    CALLSITES.get_or_init(|| Mutex::new(Callsites::default()))
}

/// The call site for `kind`'s records of `level` with `names` (after the fixed fields), made on
/// first use. `None` once [`MAX_CALLSITES`] shapes exist, except for the flat shape (a
/// `fields` string), which every kind and level always gets.
fn metadata_for(level: Level, kind: &str, names: &[&str]) -> Option<&'static Metadata<'static>> {
    let mut known = callsites().lock().ok()?;
    let shape: Shape = (
        level,
        kind.to_owned(),
        names.iter().map(|n| (*n).to_owned()).collect(),
    );
    if let Some(metadata) = known.by_shape.get(&shape) {
        return Some(metadata);
    }
    if known.by_shape.len() >= MAX_CALLSITES && !names.is_empty() && names != [FLAT] {
        return None;
    }
    // Kinds are bounded by the libraries a process may load (plugins.max_loaded_libraries).
    let target: &'static str = known
        .targets
        .entry(kind.to_owned())
        .or_insert_with(|| Box::leak(format!("sygnal::pushkin::{kind}").into_boxed_str()));
    // Leaked on purpose: tracing requires 'static call sites, and the shapes are bounded.
    let all_names: Vec<&'static str> = FIXED_FIELDS
        .iter()
        .copied()
        .chain(
            names
                .iter()
                .map(|n| &*Box::leak(n.to_string().into_boxed_str())),
        )
        .collect();
    let all_names: &'static [&'static str] = Box::leak(all_names.into_boxed_slice());
    let callsite: &'static DynamicCallsite = Box::leak(Box::new(DynamicCallsite {
        metadata: OnceLock::new(),
    }));
    let metadata = Metadata::new(
        "plugin log",
        target,
        level,
        None,
        None,
        None,
        FieldSet::new(all_names, Identifier(callsite)),
        Kind::EVENT,
    );
    let _ = callsite.metadata.set(metadata);
    tracing::callsite::register(callsite);
    let metadata = callsite.metadata.get()?;
    known.by_shape.insert(shape, metadata);
    Some(metadata)
}

fn level_of(level: LogLevel) -> Option<Level> {
    Some(match level {
        LogLevel::Off => return None,
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Trace => Level::TRACE,
    })
}

/// One field's value, typed for `tracing`: strings are shown like the host's `%field`s.
enum Typed<'a> {
    Str(&'a str),
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Json(String),
}

impl<'a> Typed<'a> {
    fn of(value: &'a Value) -> Self {
        match value {
            Value::String(s) => Typed::Str(s),
            Value::Bool(b) => Typed::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => Typed::U64(u),
                (_, Some(i), _) => Typed::I64(i),
                (_, _, Some(f)) => Typed::F64(f),
                _ => Typed::Json(n.to_string()),
            },
            other => Typed::Json(other.to_string()),
        }
    }
}

/// Emits one plugin record through the host's logger.
pub fn emit(level: LogLevel, plugin: &str, target: &str, message: &str, fields: &str) {
    let Some(level) = level_of(level) else {
        return;
    };
    // Whether the line is written depends on its level and target only (the callsite without
    // fields has both): decided before the fields are parsed and the span is made.
    if metadata_for(level, plugin, &[]).is_some_and(|metadata| !enabled(metadata)) {
        return;
    }
    let structured = fields
        .trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str::<Map<String, Value>>(fields).ok())
        .flatten();
    let Some(mut map) = structured else {
        return emit_flat(level, plugin, target, message, fields);
    };
    let request_id = match map.remove("request_id") {
        // A plugin built before the trace context was split off logs the dispatch's whole
        // request id: the id is the part before the first space (docs/plugin-abi.md).
        Some(Value::String(id)) => Some(match id.split_once(' ') {
            Some((id, _)) => id.to_owned(),
            None => id,
        }),
        Some(other) => Some(other.to_string()),
        None => None,
    };
    let span = match &request_id {
        // The host's own request span, so the id sits where host lines have it.
        Some(id) => tracing::info_span!("notify", request_id = %id),
        None => tracing::Span::none(),
    };
    let _entered = span.enter();
    let dropped = map.len().saturating_sub(MAX_FIELDS);
    let names: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|name| !FIXED_FIELDS.contains(name))
        .take(MAX_FIELDS)
        .collect();
    let Some(metadata) = metadata_for(level, plugin, &names) else {
        let flat = map
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        return emit_flat(level, plugin, target, message, &flat);
    };
    if !enabled(metadata) {
        return;
    }
    let typed: Vec<Typed<'_>> = names.iter().map(|name| Typed::of(&map[*name])).collect();
    let message = if dropped > 0 {
        format!("{message} ({dropped} more fields dropped)")
    } else {
        message.to_owned()
    };
    let message_arg = format_args!("{message}");
    let fixed: [&dyn TracingValue; 3] = [&message_arg, &plugin, &target];
    let displayed: Vec<tracing::field::DisplayValue<&str>> = typed
        .iter()
        .map(|t| match t {
            Typed::Str(s) => tracing::field::display(*s),
            _ => tracing::field::display(""),
        })
        .collect();
    let mut values: Vec<&dyn TracingValue> = fixed.to_vec();
    for (t, shown) in typed.iter().zip(&displayed) {
        values.push(match t {
            Typed::Str(_) => shown,
            Typed::Bool(b) => b,
            Typed::I64(i) => i,
            Typed::U64(u) => u,
            Typed::F64(f) => f,
            Typed::Json(text) => text,
        });
    }
    dispatch_values(metadata, &values);
}

/// Dispatches an event whose values are all of `metadata`'s fields, in order.
fn dispatch_values(metadata: &'static Metadata<'static>, values: &[&dyn TracingValue]) {
    let fields = metadata.fields();
    let pairs: Vec<(Field, Option<&dyn TracingValue>)> =
        fields.iter().zip(values.iter().map(|v| Some(*v))).collect();
    // `value_set` takes an array of a fixed size: pad with value-less entries of the first
    // field, which are skipped when recorded.
    let mut padded: [(&Field, Option<&dyn TracingValue>); FIXED_FIELDS.len() + MAX_FIELDS] =
        [(&pairs[0].0, None); FIXED_FIELDS.len() + MAX_FIELDS];
    for (slot, (field, value)) in padded.iter_mut().zip(&pairs) {
        *slot = (field, *value);
    }
    let value_set = fields.value_set(&padded);
    Event::dispatch(metadata, &value_set);
}

fn enabled(metadata: &'static Metadata<'static>) -> bool {
    tracing::dispatcher::get_default(|dispatch| dispatch.enabled(metadata))
}

/// The old form: fields as one `fields` string (`k=v k=v`).
fn emit_flat(level: Level, plugin: &str, target: &str, message: &str, fields: &str) {
    let names: &[&str] = if fields.is_empty() { &[] } else { &[FLAT] };
    let Some(metadata) = metadata_for(level, plugin, names) else {
        return;
    };
    if !enabled(metadata) {
        return;
    }
    let message_arg = format_args!("{message}");
    let values: [&dyn TracingValue; 4] = [&message_arg, &plugin, &target, &fields];
    dispatch_values(metadata, &values[..FIXED_FIELDS.len() + names.len()]);
}
