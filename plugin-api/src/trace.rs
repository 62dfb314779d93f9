//! Trace context across the plugin boundary (OpenTelemetry, W3C Trace Context), within the
//! 1.x ABI: nothing in the ABI's types changes.
//!
//! - **Host to plugin.** When the host traces a dispatch (tracing enabled and the request
//!   sampled), the dispatch's `request_id` carries the context after a space:
//!   `"<request id> traceparent=00-<trace id>-<dispatch span id>-01"` ([`join_request_id`]).
//!   The SDK splits it off ([`split_request_id`]): the pushkin and its logs see the plain id.
//!   An untraced dispatch gets the plain id, as before. (A plugin built before this split logs
//!   the whole text as its request id; the host keeps the part before the space.)
//! - **Plugin to host.** Inside a traced dispatch, every upstream try of [`http::retry`] (so of
//!   [`http::Sender`] too) is a span, child of the host's dispatch span. A finished span goes
//!   back through the log callback as a record of level [`LogLevel::Off`] (never printed: a
//!   host that does not know the convention drops it) with target [`SPAN_RECORD_TARGET`] and
//!   the [`SpanRecord`] as JSON in `fields`. The host's exporter sends it with its own spans.
//!
//! Nothing here runs for an untraced dispatch beyond one task-local lookup per try.
//!
//! [`http::retry`]: crate::http::retry
//! [`http::Sender`]: crate::http::Sender

use crate::abi::{LogFn, LogLevel};
use abi_stable::std_types::RStr;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The log-record target of a finished plugin span (with level [`LogLevel::Off`]).
pub const SPAN_RECORD_TARGET: &str = "sygnal::span";

/// A W3C trace context: which trace, which span is the parent, whether it is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never all zeroes).
    pub trace_id: [u8; 16],
    /// The parent span's id (never all zeroes).
    pub span_id: [u8; 8],
    /// The `sampled` trace flag.
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`). Versions above `00` are
    /// read as the specification says (their first four fields as version 00's); `ff`, zero
    /// ids, upper-case hex and malformed values give `None`.
    pub fn parse_traceparent(value: &str) -> Option<TraceContext> {
        let value = value.trim();
        let mut parts = value.splitn(5, '-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        let extra = parts.next();
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let version = hex_to::<1>(version)?[0];
        if flags.len() != 2 || (version == 0 && extra.is_some()) {
            return None;
        }
        let context = TraceContext {
            trace_id: hex_to(trace)?,
            span_id: hex_to(span)?,
            sampled: hex_to::<1>(flags)?[0] & 1 == 1,
        };
        (context.trace_id != [0; 16] && context.span_id != [0; 8]).then_some(context)
    }

    /// The `traceparent` text (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

/// `N` bytes from `2N` lower-case hex digits.
pub fn hex_to<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != N * 2 {
        return None;
    }
    let value = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(bytes)
}

/// What the dispatch's `request_id` carries after the id, before the context.
const TRACEPARENT_PREFIX: &str = "traceparent=";

/// The dispatch `request_id` for a traced dispatch: `"<id> traceparent=<context>"`.
pub fn join_request_id(request_id: &str, context: &TraceContext) -> String {
    format!("{request_id} {TRACEPARENT_PREFIX}{}", context.traceparent())
}

/// Splits a dispatch's `request_id` into the id and, when the host traces the dispatch, its
/// context. Unknown `key=value` parts after the id are ignored (room to grow).
pub fn split_request_id(wire: &str) -> (&str, Option<TraceContext>) {
    let Some((id, rest)) = wire.split_once(' ') else {
        return (wire, None);
    };
    let context = rest
        .split(' ')
        .find_map(|part| part.strip_prefix(TRACEPARENT_PREFIX))
        .and_then(TraceContext::parse_traceparent);
    (id, context)
}

/// A random 64-bit number from a per-thread generator (SplitMix64 seeded from the standard
/// library's per-process random keys): ids, not secrets.
fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            hasher.finish()
        });
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new random trace id (never all zeroes).
pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random_u64().to_be_bytes());
    id[8..].copy_from_slice(&(random_u64() | 1).to_be_bytes());
    id
}

/// A new random span id (never all zeroes).
pub fn new_span_id() -> [u8; 8] {
    (random_u64() | 1).to_be_bytes()
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A finished span as a plugin sends it to the host (JSON in the log record's `fields`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits: the host's dispatch span.
    pub parent_span_id: String,
    /// What the span is (`upstream try`).
    pub name: String,
    /// `client` (a request to an upstream) or `internal`.
    pub kind: String,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// Attributes: strings, numbers, booleans. Never secrets or whole pushkeys.
    #[serde(default)]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// Why the operation failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A traced dispatch, as the SDK runs it: where its spans go.
struct Dispatch {
    context: TraceContext,
    sink: LogFn,
    plugin: &'static str,
}

tokio::task_local! {
    static DISPATCH: Dispatch;
    static TRY: Arc<TryState>;
}

/// Runs `dispatch` with `context` as the parent of the spans it makes, sending them through
/// `sink` (the host's log callback) as `plugin`. Called by the SDK.
pub(crate) fn in_dispatch<F: Future>(
    context: TraceContext,
    sink: LogFn,
    plugin: &'static str,
    dispatch: F,
) -> impl Future<Output = F::Output> {
    DISPATCH.scope(
        Dispatch {
            context,
            sink,
            plugin,
        },
        dispatch,
    )
}

/// What a try learns while it runs (see [`record_http_status`]).
#[derive(Default)]
struct TryState {
    status: AtomicU16,
    upstream: OnceLock<String>,
}

/// One upstream try being traced.
pub struct TrySpan {
    context: TraceContext,
    sink: LogFn,
    plugin: &'static str,
    span_id: [u8; 8],
    try_number: u32,
    started: SystemTime,
    clock: Instant,
    state: Arc<TryState>,
}

/// Starts the span of try `try_number` (0 for the first), if the dispatch is traced.
pub fn start_try(try_number: u32) -> Option<TrySpan> {
    DISPATCH
        .try_with(|dispatch| TrySpan {
            context: dispatch.context,
            sink: dispatch.sink,
            plugin: dispatch.plugin,
            span_id: new_span_id(),
            try_number,
            started: SystemTime::now(),
            clock: Instant::now(),
            state: Arc::default(),
        })
        .ok()
}

/// Notes the upstream's HTTP status on the try being traced (no-op otherwise).
pub fn record_http_status(status: u16) {
    let _ = TRY.try_with(|state| state.status.store(status, Ordering::Relaxed));
}

/// Names the upstream the try being traced talks to, as logs name it (a host name or a label
/// such as `endpoint push.example.org`, never a URL: URLs may hold pushkeys).
pub fn record_upstream(name: &str) {
    let _ = TRY.try_with(|state| state.upstream.get_or_init(|| name.to_owned()).len());
}

impl TrySpan {
    /// Runs the try's future with this span as the one [`record_http_status`] reaches.
    pub fn scope<F: Future>(&self, attempt: F) -> impl Future<Output = F::Output> {
        TRY.scope(Arc::clone(&self.state), attempt)
    }

    /// Ends the span (`error`: why the try failed) and sends it to the host.
    pub fn finish(self, error: Option<&str>) {
        let mut attributes = serde_json::Map::new();
        attributes.insert("sygnal.try".into(), (self.try_number + 1).into());
        attributes.insert("sygnal.pushkin".into(), self.plugin.into());
        let status = self.state.status.load(Ordering::Relaxed);
        if status != 0 {
            attributes.insert("http.response.status_code".into(), status.into());
        }
        if let Some(upstream) = self.state.upstream.get() {
            attributes.insert("sygnal.upstream".into(), upstream.as_str().into());
        }
        let record = SpanRecord {
            trace_id: hex(&self.context.trace_id),
            span_id: hex(&self.span_id),
            parent_span_id: hex(&self.context.span_id),
            name: "upstream try".to_owned(),
            kind: "client".to_owned(),
            start_unix_nano: unix_nanos(self.started),
            end_unix_nano: unix_nanos(self.started + self.clock.elapsed()),
            attributes,
            error: error.map(str::to_owned),
        };
        if let Ok(json) = serde_json::to_string(&record) {
            (self.sink)(
                LogLevel::Off,
                RStr::from_str(self.plugin),
                RStr::from_str(SPAN_RECORD_TARGET),
                RStr::from_str(""),
                RStr::from_str(&json),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn traceparent_round_trips_and_rejects_what_w3c_rejects() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse_traceparent(text).unwrap();
        assert!(context.sampled);
        assert_eq!(
            context.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(context.traceparent(), text);
        let unsampled = TraceContext::parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )
        .unwrap();
        assert!(!unsampled.sampled);
        // A later version may append fields.
        assert!(TraceContext::parse_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_request_id_carries_the_context_after_a_space() {
        let context = TraceContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            sampled: true,
        };
        let wire = join_request_id("0a1b2c3d-7", &context);
        assert_eq!(split_request_id(&wire), ("0a1b2c3d-7", Some(context)));
        assert_eq!(split_request_id("0a1b2c3d-7"), ("0a1b2c3d-7", None));
        assert_eq!(split_request_id("id future=1"), ("id", None));
        assert_ne!(new_trace_id(), new_trace_id());
        assert_ne!(new_span_id(), [0; 8]);
    }

    static RECORDS: Mutex<Vec<(LogLevel, String, String)>> = Mutex::new(Vec::new());

    extern "C" fn record(
        level: LogLevel,
        _plugin: RStr<'_>,
        target: RStr<'_>,
        _message: RStr<'_>,
        fields: RStr<'_>,
    ) {
        RECORDS.lock().unwrap().push((
            level,
            target.as_str().to_owned(),
            fields.as_str().to_owned(),
        ));
    }

    #[tokio::test]
    async fn a_try_inside_a_traced_dispatch_becomes_a_span_record() {
        assert!(start_try(0).is_none(), "no span outside a traced dispatch");
        let context = TraceContext {
            trace_id: new_trace_id(),
            span_id: new_span_id(),
            sampled: true,
        };
        in_dispatch(context, record, "test", async {
            let span = start_try(1).unwrap();
            span.scope(async {
                record_upstream("push.example.org");
                record_http_status(503);
            })
            .await;
            span.finish(Some("push.example.org answered 503"));
        })
        .await;
        let records = RECORDS.lock().unwrap().clone();
        let (level, target, fields) = &records[0];
        assert_eq!(
            (*level, target.as_str()),
            (LogLevel::Off, SPAN_RECORD_TARGET)
        );
        let span: SpanRecord = serde_json::from_str(fields).unwrap();
        assert_eq!(span.trace_id, hex(&context.trace_id));
        assert_eq!(span.parent_span_id, hex(&context.span_id));
        assert_eq!(span.attributes["sygnal.try"], 2);
        assert_eq!(span.attributes["http.response.status_code"], 503);
        assert_eq!(span.attributes["sygnal.upstream"], "push.example.org");
        assert_eq!(span.error.as_deref(), Some("push.example.org answered 503"));
        assert!(span.end_unix_nano >= span.start_unix_nano);
    }
}
