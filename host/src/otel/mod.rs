//! OpenTelemetry tracing (`metrics.opentelemetry`): a span per `/notify` request, a child span
//! per pushkin dispatch, and (from inside the plugin, see `sygnal_plugin_api::trace`) a child of
//! that per upstream try, exported over OTLP/HTTP ([`export`]).
//!
//! - The request span continues an incoming W3C `traceparent` (same trace, the caller's span as
//!   parent); without one it starts a trace.
//! - Sampling is parent-based, then by ratio: a request whose `traceparent` says sampled (or
//!   not) is traced (or not) as its caller decided; others are traced with probability
//!   `sample_rate`, decided from the trace id as OpenTelemetry's `TraceIdRatioBased` does.
//! - Disabled or not sampled, nothing is created: one check of a global, no allocation.
//! - Attributes never hold pushkeys or secrets: the request id, the route and status, the app
//!   id and plugin kind, device and rejection counts, and failure reasons (which pushkins
//!   write without secrets, as for logs).
//!
//! The request span is found by the dispatches through a task-local set around the request's
//! handler ([`RequestSpan::scope`]), so the code between them does not carry it.

pub mod export;
mod proto;

use crate::config::OpenTelemetryConfig;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use export::Exporter;
use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};
use sygnal_plugin_api::abi::FfiDispatchResult;
use sygnal_plugin_api::trace::{
    hex_to, join_request_id, new_span_id, new_trace_id, unix_nanos, SpanRecord, TraceContext,
};
use sygnal_plugin_api::HostInfo;

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A string.
    Str(Cow<'static, str>),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// OTLP's `SpanKind` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the gateway (a dispatch).
    Internal = 1,
    /// Serving a request (`/notify`).
    Server = 2,
    /// A request to an upstream (a plugin's try).
    Client = 3,
}

/// A span ready to be exported.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedSpan {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// Its parent, if any.
    pub parent_span_id: Option<[u8; 8]>,
    /// What it is.
    pub name: Cow<'static, str>,
    /// Server, client or internal.
    pub kind: SpanKind,
    /// Start, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nano: u64,
    /// Attributes.
    pub attributes: Vec<(Cow<'static, str>, Attr)>,
    /// Why it failed (the span's status is then an error).
    pub error: Option<String>,
}

struct Tracer {
    exporter: Exporter,
    /// A root trace is sampled when its id's low 63 bits are below this.
    sample_bound: u64,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Starts tracing as `config` says (call once, inside the runtime).
pub fn start(config: &OpenTelemetryConfig, host: &HostInfo) -> Result<(), String> {
    let tracer = Tracer {
        exporter: Exporter::start(config, host)?,
        sample_bound: (config.sample_rate.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64,
    };
    if TRACER.set(tracer).is_err() {
        return Err("tracing was started twice".to_owned());
    }
    tracing::info!(
        endpoint = %config.traces_url(),
        sample_rate = config.sample_rate,
        "traces are exported over OTLP/HTTP"
    );
    Ok(())
}

/// Sends the spans still queued (at shutdown), waiting at most `timeout`.
pub async fn flush(timeout: Duration) {
    if let Some(tracer) = TRACER.get() {
        tracer.exporter.flush(timeout).await;
    }
}

impl Tracer {
    fn samples(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.sample_bound
    }
}

/// An open span of the gateway's own; exported when finished, or when dropped (then as
/// `cancelled`: the request or dispatch was abandoned).
struct OpenSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &'static str,
    kind: SpanKind,
    started: SystemTime,
    clock: Instant,
    attributes: Vec<(Cow<'static, str>, Attr)>,
    finished: bool,
}

impl OpenSpan {
    fn new(
        trace_id: [u8; 16],
        parent: Option<[u8; 8]>,
        name: &'static str,
        kind: SpanKind,
        attributes: Vec<(Cow<'static, str>, Attr)>,
    ) -> OpenSpan {
        OpenSpan {
            trace_id,
            span_id: new_span_id(),
            parent,
            name,
            kind,
            started: SystemTime::now(),
            clock: Instant::now(),
            attributes,
            finished: false,
        }
    }

    fn set(&mut self, name: &'static str, value: Attr) {
        self.attributes.push((Cow::Borrowed(name), value));
    }

    fn end(&mut self, error: Option<String>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let Some(tracer) = TRACER.get() else { return };
        let start = unix_nanos(self.started);
        let elapsed = u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
        tracer.exporter.send(FinishedSpan {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent,
            name: Cow::Borrowed(self.name),
            kind: self.kind,
            start_unix_nano: start,
            end_unix_nano: start.saturating_add(elapsed),
            attributes: std::mem::take(&mut self.attributes),
            error,
        });
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        self.end(Some("cancelled".to_owned()));
    }
}

/// The request's span, as its dispatches find it.
#[derive(Clone, Copy)]
struct Parent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
}

tokio::task_local! {
    static REQUEST: Parent;
}

/// The caller's trace context (`traceparent`), read only while tracing is on.
pub struct Incoming(Option<TraceContext>);

impl<S: Send + Sync> FromRequestParts<S> for Incoming {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if TRACER.get().is_none() {
            return Ok(Incoming(None));
        }
        Ok(Incoming(
            parts
                .headers
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .and_then(TraceContext::parse_traceparent),
        ))
    }
}

/// The span of one `/notify` request.
pub struct RequestSpan(OpenSpan);

/// Starts the span of a `/notify` request, if tracing is on and the request is sampled.
pub fn start_request(
    incoming: &Incoming,
    route: &'static str,
    request_id: &str,
) -> Option<RequestSpan> {
    let tracer = TRACER.get()?;
    let (trace_id, parent) = match incoming.0 {
        Some(caller) if caller.sampled => (caller.trace_id, Some(caller.span_id)),
        Some(_) => return None,
        None => {
            let trace_id = new_trace_id();
            if !tracer.samples(&trace_id) {
                return None;
            }
            (trace_id, None)
        }
    };
    Some(RequestSpan(OpenSpan::new(
        trace_id,
        parent,
        "POST /_matrix/push/v1/notify",
        SpanKind::Server,
        vec![
            (
                Cow::Borrowed("http.request.method"),
                Attr::Str("POST".into()),
            ),
            (Cow::Borrowed("http.route"), Attr::Str(route.into())),
            (
                Cow::Borrowed("sygnal.request_id"),
                Attr::Str(request_id.to_owned().into()),
            ),
        ],
    )))
}

impl RequestSpan {
    /// Runs the request's handler with this span as its dispatches' parent.
    pub fn scope<F: Future>(&self, handler: F) -> impl Future<Output = F::Output> {
        REQUEST.scope(
            Parent {
                trace_id: self.0.trace_id,
                span_id: self.0.span_id,
            },
            handler,
        )
    }

    /// Ends the span with the response's status (5xx is an error, as for HTTP servers).
    pub fn finish(mut self, status: u16) {
        self.0
            .set("http.response.status_code", Attr::Int(i64::from(status)));
        let error = (status >= 500).then(|| format!("answered {status}"));
        self.0.end(error);
    }
}

/// The span of one app's dispatch.
pub struct DispatchSpan(OpenSpan);

/// Starts the span of a dispatch to `app_id` (plugin `kind`, `devices` devices), inside a
/// traced request.
pub fn start_dispatch(app_id: &str, kind: &str, devices: usize) -> Option<DispatchSpan> {
    let parent = REQUEST.try_with(|parent| *parent).ok()?;
    Some(DispatchSpan(OpenSpan::new(
        parent.trace_id,
        Some(parent.span_id),
        "pushkin dispatch",
        SpanKind::Internal,
        vec![
            (
                Cow::Borrowed("sygnal.app_id"),
                Attr::Str(app_id.to_owned().into()),
            ),
            (
                Cow::Borrowed("sygnal.pushkin"),
                Attr::Str(kind.to_owned().into()),
            ),
            (
                Cow::Borrowed("sygnal.devices"),
                Attr::Int(i64::try_from(devices).unwrap_or(i64::MAX)),
            ),
        ],
    )))
}

impl DispatchSpan {
    /// The request id handed to the plugin: the id with this span as the plugin spans' parent.
    pub fn plugin_request_id(&self, request_id: &str) -> String {
        join_request_id(
            request_id,
            &TraceContext {
                trace_id: self.0.trace_id,
                span_id: self.0.span_id,
                sampled: true,
            },
        )
    }

    /// Ends the span with the plugin's answer.
    pub fn finish(mut self, outcome: &FfiDispatchResult) {
        match outcome.as_ref().into_result() {
            Ok(rejected) => {
                let rejected = i64::try_from(rejected.len()).unwrap_or(i64::MAX);
                self.0.set("sygnal.rejected", Attr::Int(rejected));
                self.0.end(None);
            }
            Err(err) => {
                let kind = crate::dispatch::kind_label(err.kind);
                self.0.set("error.type", Attr::Str(kind.into()));
                self.0.end(Some(err.message.to_string()));
            }
        }
    }
}

/// Attributes a plugin span may carry, at most; longer strings are cut.
const MAX_PLUGIN_ATTRIBUTES: usize = 32;
const MAX_PLUGIN_TEXT: usize = 1024;

/// Takes a span a plugin finished (a [`SpanRecord`] as JSON, from the log callback) and queues
/// it for export. Malformed records are ignored.
pub fn plugin_span(json: &str) {
    let Some(tracer) = TRACER.get() else { return };
    let Ok(record) = serde_json::from_str::<SpanRecord>(json) else {
        return;
    };
    if let Some(span) = from_record(record) {
        tracer.exporter.send(span);
    }
}

fn cut(mut text: String) -> String {
    if text.len() > MAX_PLUGIN_TEXT {
        let mut end = MAX_PLUGIN_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn from_record(record: SpanRecord) -> Option<FinishedSpan> {
    let attributes = record
        .attributes
        .into_iter()
        .take(MAX_PLUGIN_ATTRIBUTES)
        .filter_map(|(name, value)| {
            let value = match value {
                serde_json::Value::String(text) => Attr::Str(cut(text).into()),
                serde_json::Value::Bool(b) => Attr::Bool(b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Attr::Int(i),
                    None => Attr::Float(n.as_f64()?),
                },
                _ => return None,
            };
            Some((Cow::Owned(cut(name)), value))
        })
        .collect();
    Some(FinishedSpan {
        trace_id: hex_to(&record.trace_id)?,
        span_id: hex_to(&record.span_id)?,
        parent_span_id: Some(hex_to(&record.parent_span_id)?),
        name: Cow::Owned(cut(record.name)),
        kind: match record.kind.as_str() {
            "client" => SpanKind::Client,
            "server" => SpanKind::Server,
            _ => SpanKind::Internal,
        },
        start_unix_nano: record.start_unix_nano,
        end_unix_nano: record.end_unix_nano,
        attributes,
        error: record.error.map(cut),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let tracer = |rate: f64| (rate * (1u64 << 63) as f64) as u64;
        let samples = |bound: u64, low: u64| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low.to_be_bytes());
            let mut low = [0u8; 8];
            low.copy_from_slice(&id[8..]);
            (u64::from_be_bytes(low) >> 1) < bound
        };
        assert!(samples(tracer(1.0), u64::MAX));
        assert!(!samples(tracer(0.0), 0));
        assert!(samples(tracer(0.5), u64::MAX / 2 - 2));
        assert!(!samples(tracer(0.5), u64::MAX / 2 + 2));
    }

    #[test]
    fn plugin_records_are_checked_and_bounded() {
        let record = |trace: &str| SpanRecord {
            trace_id: trace.to_owned(),
            span_id: "00f067aa0ba902b7".to_owned(),
            parent_span_id: "00f067aa0ba902b8".to_owned(),
            name: "upstream try".to_owned(),
            kind: "client".to_owned(),
            start_unix_nano: 1,
            end_unix_nano: 2,
            attributes: (0..40)
                .map(|i| {
                    (
                        format!("a{i:02}"),
                        serde_json::Value::from("x".repeat(2000)),
                    )
                })
                .collect(),
            error: None,
        };
        let span = from_record(record("4bf92f3577b34da6a3ce929d0e0e4736")).unwrap();
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.attributes.len(), MAX_PLUGIN_ATTRIBUTES);
        assert!(matches!(&span.attributes[0].1, Attr::Str(s) if s.len() == MAX_PLUGIN_TEXT));
        assert!(from_record(record("not hex")).is_none());
    }
}
