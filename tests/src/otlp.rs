//! A fake OTLP/HTTP trace receiver on loopback, and the spans it received as decoded by
//! OpenTelemetry's own protobuf definitions (the `opentelemetry-proto` Python package, from
//! PyPI into a venv), not by the gateway's encoder's logic.

use crate::python::venv;
use crate::serve::{serve_http, TestServer};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// One export request: its content type and body.
type Request = (String, Vec<u8>);

/// What the receiver got.
#[derive(Clone, Default)]
pub struct Receiver {
    requests: Arc<Mutex<Vec<Request>>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    receiver
        .requests
        .lock()
        .expect("requests")
        .push((content_type, body.to_vec()));
    StatusCode::OK
}

/// One decoded span.
#[derive(Debug, Clone)]
pub struct Span(pub Value);

impl Span {
    /// A string field (`trace_id`, `span_id`, `parent_span_id` as hex, `name`, ...).
    pub fn str(&self, field: &str) -> &str {
        self.0[field].as_str().unwrap_or_default()
    }

    /// An attribute's value.
    pub fn attribute(&self, key: &str) -> &Value {
        &self.0["attributes"][key]
    }
}

const DECODE: &str = r#"
import json, sys
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
spans = []
for path in sys.argv[1:]:
    request = ExportTraceServiceRequest()
    with open(path, "rb") as body:
        request.ParseFromString(body.read())
    for resource_spans in request.resource_spans:
        resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {}
                for kv in span.attributes:
                    attributes[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
                spans.append({
                    "service": resource.get("service.name"),
                    "scope": scope_spans.scope.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": Span.SpanKind.Name(span.kind),
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": attributes,
                    "status": Status.StatusCode.Name(span.status.code),
                    "status_message": span.status.message,
                })
print(json.dumps(spans))
"#;

impl Receiver {
    /// Starts a receiver taking `POST /v1/traces`.
    pub async fn start() -> (Receiver, TestServer) {
        let receiver = Receiver::default();
        let router = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(receiver.clone());
        (receiver, serve_http(router).await)
    }

    /// Export requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.lock().expect("requests").len()
    }

    /// The content types of the requests received.
    pub fn content_types(&self) -> Vec<String> {
        let requests = self.requests.lock().expect("requests");
        requests.iter().map(|(kind, _)| kind.clone()).collect()
    }

    /// Every span received so far, decoded with opentelemetry-proto.
    pub fn spans(&self) -> Vec<Span> {
        let bodies: Vec<Vec<u8>> = {
            let requests = self.requests.lock().expect("requests");
            requests.iter().map(|(_, body)| body.clone()).collect()
        };
        if bodies.is_empty() {
            return Vec::new();
        }
        let bin = venv("otlp", &["opentelemetry-proto==1.45.2", "protobuf==7.36.2"]);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(bin.join("python"));
        command.arg("-c").arg(DECODE);
        for (index, body) in bodies.iter().enumerate() {
            let path = dir.path().join(format!("{index}.pb"));
            std::fs::write(&path, body).expect("body written");
            command.arg(path);
        }
        let output = command.output().expect("python runs");
        assert!(
            output.status.success(),
            "the export is not a valid ExportTraceServiceRequest: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let spans: Vec<Value> = serde_json::from_slice(&output.stdout).expect("decoder's JSON");
        spans.into_iter().map(Span).collect()
    }
}
