//! OTLP's protobuf encoding of an `ExportTraceServiceRequest`, written by hand: the few
//! messages a trace export needs (opentelemetry-proto's `collector/trace/v1`, `trace/v1`,
//! `common/v1` and `resource/v1`; field numbers as there).

use super::{Attr, FinishedSpan};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(out, field, LENGTH_DELIMITED);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A nested message, written by `write` into its own buffer first (its length comes first).
fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes(out, field, &inner);
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

/// `KeyValue { string key = 1; AnyValue value = 2; }`, `AnyValue { string_value = 1;
/// bool_value = 2; int64 int_value = 3; double double_value = 4; }`.
fn key_value(out: &mut Vec<u8>, field: u32, name: &str, value: &Attr) {
    message(out, field, |kv| {
        bytes(kv, 1, name.as_bytes());
        message(kv, 2, |any| match value {
            Attr::Str(text) => bytes(any, 1, text.as_bytes()),
            Attr::Bool(b) => {
                key(any, 2, VARINT);
                varint(any, u64::from(*b));
            }
            Attr::Int(n) => {
                key(any, 3, VARINT);
                varint(any, *n as u64); // two's complement, as protobuf writes int64
            }
            Attr::Float(f) => fixed64(any, 4, f.to_bits()),
        });
    });
}

/// `Span`: trace_id = 1, span_id = 2, parent_span_id = 4, name = 5, kind = 6,
/// start_time_unix_nano = 7, end_time_unix_nano = 8, attributes = 9, status = 15, flags = 16.
fn span(out: &mut Vec<u8>, span: &FinishedSpan) {
    message(out, 2, |s| {
        bytes(s, 1, &span.trace_id);
        bytes(s, 2, &span.span_id);
        if let Some(parent) = &span.parent_span_id {
            bytes(s, 4, parent);
        }
        bytes(s, 5, span.name.as_bytes());
        key(s, 6, VARINT);
        varint(s, span.kind as u64);
        fixed64(s, 7, span.start_unix_nano);
        fixed64(s, 8, span.end_unix_nano.max(span.start_unix_nano));
        for (name, value) in &span.attributes {
            key_value(s, 9, name, value);
        }
        if let Some(error) = &span.error {
            // Status { string message = 2; StatusCode code = 3; } with STATUS_CODE_ERROR = 2.
            message(s, 15, |status| {
                bytes(status, 2, error.as_bytes());
                key(status, 3, VARINT);
                varint(status, 2);
            });
        }
        // W3C trace flags in the low byte: sampled.
        key(s, 16, FIXED32);
        s.extend_from_slice(&1u32.to_le_bytes());
    });
}

/// The request body exporting `spans` of the service `resource` (`service.name`, ...).
pub fn export_request(resource: &[(&str, Attr)], spans: &[FinishedSpan]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spans.len() * 256);
    // ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
    message(&mut out, 1, |resource_spans| {
        // ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }
        message(resource_spans, 1, |r| {
            for (name, value) in resource {
                key_value(r, 1, name, value);
            }
        });
        message(resource_spans, 2, |scope_spans| {
            // ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }
            message(scope_spans, 1, |scope| {
                bytes(scope, 1, b"sygnal");
                bytes(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for finished in spans {
                span(scope_spans, finished);
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_negative_ints_are_protobufs() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let mut out = Vec::new();
        key_value(&mut out, 9, "n", &Attr::Int(-1));
        // key 9/LEN, len, key 1/LEN "n", key 2/LEN, len, key 3/VARINT, ten bytes of -1.
        assert_eq!(&out[..7], &[0x4a, 16, 0x0a, 1, b'n', 0x12, 11]);
        assert_eq!(out[7], 0x18);
        assert_eq!(out[8..17], [0xff; 9]);
        assert_eq!(out[17..], [0x01]);
    }
}
