//! OpenTelemetry traces with the real binary and plugins: a fake OTLP/HTTP receiver on loopback
//! gets a span per /notify, a child per pushkin dispatch and, from inside the UnifiedPush
//! plugin, a child of that per upstream try; an incoming `traceparent` is the root's parent;
//! sampling is honoured.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::otlp::{Receiver, Span};
use sygnal_tests::unifiedpush::Endpoint;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// A gateway config with `metrics` and two apps: UnifiedPush (allowed to reach loopback) and
/// the scripted test pushkin.
fn config(metrics: &str) -> String {
    format!(
        "log:\n  level: debug\nhttp:\n  bind_addresses: ['127.0.0.1']\n  port: {{port}}\nmetrics:\n{metrics}\napps:\n  org.example.up:\n    type: unifiedpush\n    allowed_endpoints: ['127.0.0.1']\n    max_tries: 3\n    retry_delay_base: 0.05\n  com.example.app:\n    type: scripted\n"
    )
}

fn tracing_to(receiver: &str, sample_rate: &str) -> String {
    config(&format!(
        "  opentelemetry:\n    enabled: true\n    endpoint: {receiver}\n    service_name: push-gateway\n    sample_rate: {sample_rate}"
    ))
}

async fn post_notify(gw: &Gateway, body: &Value, traceparent: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{}/_matrix/push/v1/notify", gw.url()))
        .json(body);
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    request
        .send()
        .await
        .expect("gateway reachable")
        .status()
        .as_u16()
}

async fn wait_for_spans(receiver: &Receiver, count: usize) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = receiver.spans();
        if spans.len() >= count || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn spans_reach_the_receiver_with_their_parent_links() {
    let (receiver, otlp) = Receiver::start().await;
    let (endpoint, push_server) = Endpoint::start(&[503]).await;
    let gw = Gateway::builder_with_config(&tracing_to(&otlp.url(), "0.5"))
        .start()
        .await;
    let pushkey = format!("{}/up/secret-device-token", push_server.url());
    let body = json!({"notification": {"event_id": "$event", "room_id": "!room",
    "devices": [
        {"app_id": "org.example.up", "pushkey": pushkey},
        {"app_id": "com.example.app", "pushkey": "private-scripted-key"}
    ]}});
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    assert_eq!(post_notify(&gw, &body, Some(&traceparent)).await, 200);
    assert_eq!(endpoint.hits(), 2, "a 503, then delivered");

    // The request, two dispatches, two upstream tries.
    let spans = wait_for_spans(&receiver, 5).await;
    assert_eq!(spans.len(), 5, "{spans:#?}\n{}", gw.logs());
    assert!(receiver
        .content_types()
        .iter()
        .all(|kind| kind == "application/x-protobuf"));
    for span in &spans {
        assert_eq!(span.str("trace_id"), CALLER_TRACE, "{span:?}");
        assert_eq!(span.str("service"), "push-gateway");
        assert_eq!(span.str("scope"), "sygnal");
        assert!(span.0["end"].as_u64() >= span.0["start"].as_u64());
    }
    let named =
        |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.str("name") == name).collect() };

    let request = named("POST /_matrix/push/v1/notify");
    assert_eq!(request.len(), 1);
    let request = request[0];
    assert_eq!(request.str("parent_span_id"), CALLER_SPAN);
    assert_eq!(request.str("kind"), "SPAN_KIND_SERVER");
    assert_eq!(request.attribute("http.response.status_code"), 200);
    assert_eq!(request.attribute("http.route"), "/_matrix/push/v1/notify");
    assert!(request.attribute("sygnal.request_id").is_string());

    let dispatches = named("pushkin dispatch");
    assert_eq!(dispatches.len(), 2);
    for dispatch in &dispatches {
        assert_eq!(dispatch.str("parent_span_id"), request.str("span_id"));
        assert_eq!(dispatch.attribute("sygnal.devices"), 1);
        assert_eq!(dispatch.attribute("sygnal.rejected"), 0);
        assert_eq!(dispatch.str("status"), "STATUS_CODE_UNSET");
    }
    let up = dispatches
        .iter()
        .find(|d| d.attribute("sygnal.app_id") == "org.example.up")
        .expect("the UnifiedPush dispatch");
    assert_eq!(up.attribute("sygnal.pushkin"), "unifiedpush");

    let mut tries = named("upstream try");
    tries.sort_by_key(|t| t.attribute("sygnal.try").as_i64());
    assert_eq!(tries.len(), 2, "{spans:#?}");
    for (index, attempt) in tries.iter().enumerate() {
        assert_eq!(
            attempt.str("parent_span_id"),
            up.str("span_id"),
            "{attempt:?}"
        );
        assert_eq!(attempt.str("kind"), "SPAN_KIND_CLIENT");
        assert_eq!(attempt.attribute("sygnal.try"), index as i64 + 1);
        assert_eq!(attempt.attribute("sygnal.upstream"), "endpoint 127.0.0.1");
    }
    assert_eq!(tries[0].attribute("http.response.status_code"), 503);
    assert_eq!(tries[0].str("status"), "STATUS_CODE_ERROR");
    assert!(tries[0].str("status_message").contains("answered 503"));
    assert_eq!(tries[1].attribute("http.response.status_code"), 200);

    // No pushkey, nor any part of one, in any attribute or status.
    let everything =
        serde_json::to_string(&spans.iter().map(|s| &s.0).collect::<Vec<_>>()).unwrap();
    for secret in ["secret-device-token", "private-scripted-key", "/up/"] {
        assert!(!everything.contains(secret), "{secret} in {everything}");
    }
    // The plugin's log lines show the plain request id, not the trace context.
    assert!(!gw.logs().contains("traceparent="), "{}", gw.logs());
}

#[tokio::test]
async fn sampling_is_parent_based_then_by_ratio() {
    let (receiver, otlp) = Receiver::start().await;
    let mut gw = Gateway::builder_with_config(&tracing_to(&otlp.url(), "0"))
        .start()
        .await;
    let body = json!({"notification": {"event_id": "$e",
        "devices": [{"app_id": "com.example.app", "pushkey": "ok:1"}]}});
    // Rate 0: a request without a sampling decision is not traced, nor one its caller did
    // not sample; one the caller sampled is.
    for _ in 0..20 {
        assert_eq!(post_notify(&gw, &body, None).await, 200);
    }
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    assert_eq!(post_notify(&gw, &body, Some(&unsampled)).await, 200);
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let sampled = format!("00-{sampled_trace}-b7ad6b7169203331-01");
    assert_eq!(post_notify(&gw, &body, Some(&sampled)).await, 200);

    // Stopping flushes what is queued.
    gw.signal("TERM");
    assert!(gw
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    let spans = receiver.spans();
    assert_eq!(
        spans.len(),
        2,
        "the sampled request and its dispatch: {spans:#?}"
    );
    assert!(spans.iter().all(|s| s.str("trace_id") == sampled_trace));
}

#[tokio::test]
async fn nothing_is_traced_when_disabled() {
    let (receiver, otlp) = Receiver::start().await;
    let mut gw = Gateway::builder_with_config(&config(&format!(
        "  opentracing:\n    enabled: true\n    implementation: jaeger\n  opentelemetry:\n    enabled: false\n    endpoint: {}",
        otlp.url()
    )))
    .start()
    .await;
    let body = json!({"notification": {"event_id": "$e",
        "devices": [{"app_id": "com.example.app", "pushkey": "ok:1"}]}});
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    assert_eq!(post_notify(&gw, &body, Some(&traceparent)).await, 200);
    gw.signal("TERM");
    assert!(gw
        .wait_exit(Duration::from_secs(20))
        .await
        .is_some_and(|s| s.success()));
    assert_eq!(receiver.requests(), 0);
    assert!(
        gw.logs().contains("metrics.opentracing (Jaeger) is not supported and is ignored: use metrics.opentelemetry"),
        "{}",
        gw.logs()
    );
}
