//! Sentry (`metrics.sentry`): a pushkin's panic and a failed dispatch reach a fake Sentry on
//! loopback as envelopes, with the DSN's key in `X-Sentry-Auth`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::serve::serve_http;

const APP: &str = "com.example.sentry";

/// One envelope as the fake received it: the auth header and the three JSON lines.
#[derive(Clone, Debug)]
struct Envelope {
    auth: String,
    header: Value,
    item: Value,
    event: Value,
}

type Received = Arc<Mutex<Vec<Envelope>>>;

async fn envelope(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let text = String::from_utf8_lossy(&body).into_owned();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each envelope line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let auth = headers
        .get("x-sentry-auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    received.lock().unwrap().push(Envelope {
        auth,
        header: lines[0].clone(),
        item: lines[1].clone(),
        event: lines[2].clone(),
    });
    "{}"
}

async fn wait_for_events(received: &Received, count: usize) -> Vec<Envelope> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = received.lock().unwrap().clone();
        if events.len() >= count {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "only {} events: {events:?}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A whole config whose `metrics` section holds `metrics_yaml` (indented by two).
fn config(metrics_yaml: &str) -> String {
    format!(
        "http:\n  bind_addresses: ['127.0.0.1']\n  port: {{port}}\nmetrics:\n{metrics_yaml}apps:\n  {APP}:\n    type: scripted\n"
    )
}

fn body(pushkey: &str) -> Value {
    json!({"notification": {"event_id": "$e", "room_id": "!r:x",
        "devices": [{"app_id": APP, "pushkey": pushkey}]}})
}

#[tokio::test]
async fn plugin_panics_and_dispatch_failures_reach_sentry() {
    let received: Received = Arc::default();
    let fake = serve_http(
        Router::new()
            .route("/api/42/envelope/", post(envelope))
            .with_state(Arc::clone(&received)),
    )
    .await;
    let dsn = format!("http://publickey@127.0.0.1:{}/42", fake.addr.port());
    let gw = Gateway::builder_with_config(&config(&format!(
        "  sentry:\n    enabled: yes\n    dsn: '{dsn}'\n"
    )))
    .start()
    .await;

    assert_eq!(gw.notify(body("panic:device")).await.0, 500);
    let events = wait_for_events(&received, 1).await;
    let panic = &events[0];
    assert!(
        panic.auth.starts_with("Sentry sentry_version=7"),
        "{}",
        panic.auth
    );
    assert!(
        panic.auth.contains("sentry_key=publickey"),
        "{}",
        panic.auth
    );
    assert_eq!(panic.header["dsn"], dsn.as_str());
    assert_eq!(panic.header["event_id"], panic.event["event_id"]);
    assert_eq!(panic.item["type"], "event");
    let exception = &panic.event["exception"]["values"][0];
    assert_eq!(exception["type"], "PushkinPanic");
    assert!(
        exception["value"]
            .as_str()
            .unwrap()
            .contains("scripted panic"),
        "{exception}"
    );
    assert_eq!(panic.event["level"], "error");
    assert_eq!(panic.event["tags"]["app"], APP);
    assert_eq!(panic.event["tags"]["plugin"], "scripted");
    assert!(panic.event["extra"]["request_id"].is_string());
    assert_eq!(panic.event["event_id"].as_str().unwrap().len(), 32);

    // The gateway keeps serving, and a permanent failure is reported too.
    assert_eq!(gw.notify(body("permanent:device")).await.0, 502);
    let events = wait_for_events(&received, 2).await;
    assert_eq!(
        events[1].event["exception"]["values"][0]["type"],
        "PermanentDispatchFailure"
    );
    // Deliveries are not errors.
    assert_eq!(gw.notify(body("fine")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(received.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn sentry_config_errors_name_the_key() {
    for (yaml, key) in [
        ("  sentry:\n    enabled: true\n", "metrics.sentry.dsn:"),
        (
            "  sentry:\n    enabled: true\n    dsn: 'https://nokey.example/1'\n",
            "metrics.sentry.dsn:",
        ),
    ] {
        let (status, output) = Gateway::builder_with_config(&config(yaml))
            .start_expecting_failure()
            .await;
        assert!(!status.success(), "{yaml}");
        assert!(output.contains(key), "{yaml}: {output}");
    }
    // Disabled with no DSN, as Sygnal's sample has it, is fine.
    let output =
        Gateway::builder_with_config(&config("  sentry:\n    enabled: false\n")).run(&["check"]);
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn events_queued_at_shutdown_are_sent_before_exit() {
    // The first envelope is answered after 2 s: the second event waits in the queue behind it
    // while the gateway is told to stop (draining alone takes about a second here).
    let received: Received = Arc::default();
    let slow_first = {
        let received = Arc::clone(&received);
        move |headers: HeaderMap, body: Bytes| {
            let received = Arc::clone(&received);
            async move {
                let answer = envelope(State(Arc::clone(&received)), headers, body).await;
                if received.lock().unwrap().len() == 1 {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                answer
            }
        }
    };
    let fake = serve_http(Router::new().route("/api/42/envelope/", post(slow_first))).await;
    let dsn = format!("http://publickey@127.0.0.1:{}/42", fake.addr.port());
    let mut gw = Gateway::builder_with_config(&config(&format!(
        "  sentry:\n    enabled: true\n    dsn: '{dsn}'\n"
    )))
    .start()
    .await;
    assert_eq!(gw.notify(body("panic:first")).await.0, 500);
    wait_for_events(&received, 1).await;
    assert_eq!(gw.notify(body("permanent:second")).await.0, 502);
    gw.signal("TERM");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits");
    assert!(status.success(), "{status}");
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}\n{}", gw.logs());
    assert_eq!(
        events[1].event["exception"]["values"][0]["type"],
        "PermanentDispatchFailure"
    );
}
