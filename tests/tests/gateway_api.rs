//! The Push Gateway API as a homeserver sees it: status codes, errors, routing, concurrency,
//! the in-flight limit, panics, metrics, request ids and graceful shutdown. The pushkin is the
//! `scripted` fixture plugin, whose pushkeys script each outcome.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::synapse_bodies;

const APPS: &str = "\
com.example.e2e:
  type: scripted
com.example.a:
  type: scripted
com.example.b:
  type: scripted
com.example.c:
  type: scripted
com.example.d:
  type: scripted
com.glob.*:
  type: scripted
com.both.*:
  type: scripted
com.*.ambiguous:
  type: scripted
com.exact.match:
  type: scripted
com.exact.*:
  type: scripted
com.limited:
  type: scripted
  inflight_request_limit: 1
";

async fn gateway() -> Gateway {
    Gateway::builder(APPS).start().await
}

fn notification(devices: &[(&str, &str)]) -> Value {
    let devices: Vec<Value> = devices
        .iter()
        .map(|(app_id, pushkey)| json!({"app_id": app_id, "pushkey": pushkey}))
        .collect();
    json!({"notification": {"event_id": "$event", "room_id": "!room", "devices": devices}})
}

fn sorted(rejected: &Value) -> Vec<String> {
    let mut keys: Vec<String> = rejected["rejected"]
        .as_array()
        .expect("rejected is a list")
        .iter()
        .map(|k| k.as_str().expect("string").to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn synapse_bodies_are_accepted() {
    let gw = gateway().await;
    for body in synapse_bodies() {
        let (status, answer) = gw.notify(body.clone()).await;
        assert_eq!((status, answer), (200, json!({"rejected": []})), "{body}");
    }
}

#[tokio::test]
async fn health_404_and_405_follow_the_spec() {
    let gw = gateway().await;
    assert_eq!(gw.request("GET", "/health").await, (200, String::new()));
    let (status, body) = gw.request("GET", "/nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );
    for (method, path) in [
        ("PUT", "/_matrix/push/v1/notify"),
        ("DELETE", "/_matrix/push/v1/notify"),
        // No unifiedpush app here, so there is nothing to discover.
        ("GET", "/_matrix/push/v1/notify"),
        ("POST", "/health"),
    ] {
        let (status, body) = gw.request(method, path).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["errcode"],
            "M_UNRECOGNIZED"
        );
    }
}

#[tokio::test]
async fn malformed_input_is_a_400_with_a_reason() {
    let gw = gateway().await;
    let (status, body) = gw
        .post_raw("/_matrix/push/v1/notify", b"{not json".to_vec())
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errcode"], "M_NOT_JSON");
    let device = json!({"app_id": "com.example.a", "pushkey": "k"});
    let cases = [
        (json!([]), "notification"),
        (json!({"nope": 1}), "notification"),
        (json!({"notification": "text"}), "must be an object"),
        (json!({"notification": {}}), "notification.devices: missing"),
        (
            json!({"notification": {"devices": {}}}),
            "notification.devices",
        ),
        (
            json!({"notification": {"devices": []}}),
            "must not be empty",
        ),
        (
            json!({"notification": {"devices": [{"pushkey": "k"}]}}),
            "app_id",
        ),
        (
            json!({"notification": {"devices": [{"app_id": 5, "pushkey": "k"}]}}),
            "devices[0].app_id",
        ),
        (
            json!({"notification": {"devices": [{"app_id": "a", "pushkey": ["k"]}]}}),
            "devices[0].pushkey",
        ),
        (
            json!({"notification": {"devices": [{"app_id": "a", "pushkey": "k", "data": "x"}]}}),
            "devices[0].data",
        ),
        (
            json!({"notification": {"devices": [device], "counts": {"unread": "2"}}}),
            "counts.unread",
        ),
        (
            json!({"notification": {"devices": [device], "counts": {"missed_calls": 1.5}}}),
            "counts.missed_calls",
        ),
        (
            json!({"notification": {"devices": [device], "content": []}}),
            "content",
        ),
        (
            json!({"notification": {"devices": [device], "room_id": 7}}),
            "room_id",
        ),
    ];
    for (body, reason) in cases {
        let (status, answer) = gw.notify(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["errcode"], "M_BAD_JSON", "{body}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(reason), "{body}: {error}");
    }
    // Still serving.
    let (status, _) = gw.notify(notification(&[("com.example.a", "ok")])).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_serving_continues() {
    let gw = gateway().await;
    let padding = "x".repeat(600 * 1024);
    let mut body = notification(&[("com.example.a", "ok")]);
    body["notification"]["content"] = json!({ "body": padding });
    let (status, _) = gw.notify(body).await;
    assert_eq!(status, 413);
    // Just under the limit is fine.
    let mut body = notification(&[("com.example.a", "ok")]);
    body["notification"]["content"] = json!({ "body": "y".repeat(500 * 1024) });
    assert_eq!(gw.notify(body).await.0, 200);
}

#[tokio::test]
async fn dispatch_outcomes_map_to_status_codes() {
    let gw = gateway().await;
    let (status, body) = gw
        .notify(notification(&[("com.example.a", "reject:1")]))
        .await;
    assert_eq!((status, body), (200, json!({"rejected": ["reject:1"]})));
    assert_eq!(
        gw.notify(notification(&[("com.example.a", "permanent:1")]))
            .await
            .0,
        502
    );
    assert_eq!(
        gw.notify(notification(&[("com.example.a", "temporary:1")]))
            .await
            .0,
        502
    );
    assert_eq!(
        gw.notify(notification(&[("com.example.a", "panic:1")]))
            .await
            .0,
        500
    );
    // A panic fails one request; the host and the plugin keep serving.
    let (status, body) = gw.notify(notification(&[("com.example.a", "ok")])).await;
    assert_eq!((status, body), (200, json!({"rejected": []})));
    // The worst failure wins across apps.
    let mixed = notification(&[
        ("com.example.a", "permanent:1"),
        ("com.example.b", "panic:2"),
    ]);
    assert_eq!(gw.notify(mixed).await.0, 500);
}

#[tokio::test]
async fn routing_exact_glob_ambiguous_unknown_and_mixed() {
    let gw = gateway().await;
    let cases = [
        // Glob patterns: * any run, ? one character, whole string, case-sensitive.
        (
            notification(&[("com.glob.anything", "reject:glob")]),
            vec!["reject:glob"],
        ),
        (
            notification(&[("com.glob.", "reject:empty-run")]),
            vec!["reject:empty-run"],
        ),
        (
            notification(&[("COM.glob.x", "unknown-case")]),
            vec!["unknown-case"],
        ),
        (
            notification(&[("xcom.glob.x", "unknown-prefix")]),
            vec!["unknown-prefix"],
        ),
        // Exact match wins over a matching pattern.
        (notification(&[("com.exact.match", "ok")]), vec![]),
        (
            notification(&[("com.exact.other", "reject:via-glob")]),
            vec!["reject:via-glob"],
        ),
        // com.both.ambiguous matches com.both.* and com.*.ambiguous: rejected.
        (
            notification(&[("com.both.ambiguous", "ambiguous")]),
            vec!["ambiguous"],
        ),
        (notification(&[("org.unknown", "unknown")]), vec!["unknown"]),
    ];
    for (body, expected) in cases {
        let (status, answer) = gw.notify(body.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(sorted(&answer), expected, "{body}");
    }
    let mixed = notification(&[
        ("com.example.a", "reject:a"),
        ("com.example.a", "ok-a"),
        ("com.example.b", "reject:b"),
        ("org.unknown", "unknown"),
        ("com.glob.z", "ok-z"),
    ]);
    let (status, answer) = gw.notify(mixed).await;
    assert_eq!(status, 200);
    assert_eq!(sorted(&answer), vec!["reject:a", "reject:b", "unknown"]);
    // Both devices of app a went to it in one dispatch.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("scripted_dispatches_total{pushkin=\"com.example.a\"} 1.0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sygnal_per_pushkin_type_total{pushkin=\"com.example.a\"} 2.0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn apps_are_dispatched_concurrently() {
    let gw = gateway().await;
    let delay = 600;
    let key = format!("delay:{delay}:x");
    let body = notification(&[
        ("com.example.a", &key),
        ("com.example.b", &key),
        ("com.example.c", &key),
        ("com.example.d", &key),
    ]);
    let started = Instant::now();
    let (status, _) = gw.notify(body).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed >= Duration::from_millis(delay), "{elapsed:?}");
    // One after another would take four delays.
    assert!(
        elapsed < Duration::from_millis(delay * 2),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn inflight_limit_fails_fast_and_is_counted() {
    let gw = gateway().await;
    let slow = gw.notify(notification(&[("com.limited", "delay:800:x")]));
    let rejected_fast = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let outcome = gw.notify(notification(&[("com.limited", "ok")])).await;
        (outcome, started.elapsed())
    };
    let ((slow_status, _), ((fast_status, _), fast_elapsed)) = tokio::join!(slow, rejected_fast);
    assert_eq!(slow_status, 200);
    assert_eq!(fast_status, 502);
    assert!(
        fast_elapsed < Duration::from_millis(400),
        "{fast_elapsed:?}"
    );
    // The slot is released afterwards.
    assert_eq!(
        gw.notify(notification(&[("com.limited", "ok")])).await.0,
        200
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("sygnal_inflight_request_limit_drop_total{pushkin=\"com.limited\"} 1.0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn core_metrics_use_sygnal_names() {
    let gw = gateway().await;
    gw.notify(notification(&[
        ("com.example.a", "ok"),
        ("com.example.b", "ok"),
    ]))
    .await;
    gw.notify(notification(&[("com.example.a", "permanent:x")]))
        .await;
    gw.post_raw("/_matrix/push/v1/notify", b"nope".to_vec())
        .await;
    let metrics = gw.metrics().await;
    for expected in [
        "# TYPE sygnal_notifications_received_total counter",
        "sygnal_notifications_received_total 3.0",
        "sygnal_notifications_devices_received_total 3.0",
        "sygnal_per_pushkin_type_total{pushkin=\"com.example.b\"} 1.0",
        "sygnal_pushgateway_status_codes_total{code=\"200\"} 1.0",
        "sygnal_pushgateway_status_codes_total{code=\"502\"} 1.0",
        "sygnal_pushgateway_status_codes_total{code=\"400\"} 1.0",
        "# TYPE sygnal_notify_time histogram",
        "sygnal_notify_time_count{code=\"200\"} 1.0",
        "sygnal_notify_time_bucket{code=\"200\",le=\"+Inf\"} 1.0",
        "# TYPE sygnal_requests_in_flight gauge",
        "sygnal_requests_in_flight{resource=\"V1NotifyHandler\"} 0.0",
        "# TYPE sygnal_inflight_request_limit_drop_total counter",
        // Reported by the plugin through the host's metrics sink.
        "scripted_dispatches_total{pushkin=\"com.example.a\"} 2.0",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn dispatches_are_polled_on_the_connection_threads() {
    let gw = gateway().await;
    let (status, _) = gw.notify(notification(&[("com.example.a", "k")])).await;
    assert_eq!(status, 200);
    assert!(
        gw.wait_for_log("scripted dispatch", Duration::from_secs(5))
            .await
    );
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("scripted dispatch"))
        .unwrap_or_else(|| panic!("no plugin log line in\n{logs}"));
    // Not the plugin runtime's own threads: the host lends its reactor, and polls the
    // dispatch where it serves the connection.
    assert!(line.contains("sygnal-shard-"), "{line}");
}

#[tokio::test]
async fn every_log_line_about_a_request_carries_its_id() {
    let gw = gateway().await;
    let (status, _) = gw
        .notify(notification(&[
            ("com.example.a", "panic:x"),
            ("org.unknown", "k"),
        ]))
        .await;
    assert_eq!(status, 500);
    assert!(
        gw.wait_for_log("dispatch failed", Duration::from_secs(5))
            .await
    );
    let logs = gw.logs();
    let plugin_line = logs
        .lines()
        .find(|l| l.contains("scripted dispatch"))
        .unwrap_or_else(|| panic!("no plugin log line in\n{logs}"));
    let id = plugin_line
        .split("request_id=")
        .nth(1)
        .and_then(|rest| rest.split([' ', '"', '}']).next())
        .unwrap_or_else(|| panic!("no request id in {plugin_line}"))
        .to_owned();
    for needle in [
        "scripted dispatch",
        "pushkin panicked",
        "no unique app",
        "dispatch failed",
    ] {
        let line = logs
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line in\n{logs}"));
        assert!(
            line.contains(&id),
            "{needle:?} line lacks request id {id}: {line}"
        );
    }
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut gw = gateway().await;
    // SIGHUP does not stop the gateway.
    gw.signal("HUP");
    assert!(
        gw.wait_for_log("SIGHUP received", Duration::from_secs(5))
            .await
    );
    assert_eq!(
        gw.notify(notification(&[("com.example.a", "ok")])).await.0,
        200
    );
    let url = gw.url();
    let in_flight = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let response = client
            .post(format!("{url}/_matrix/push/v1/notify"))
            .json(&notification(&[("com.example.a", "delay:1000:x")]))
            .send()
            .await
            .expect("answered");
        response.status().as_u16()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("TERM");
    assert_eq!(in_flight.await.unwrap(), 200);
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("exited");
    assert!(status.success(), "{status}");
    // No longer accepting.
    let refused = reqwest::Client::new()
        .get(format!("{}/health", gw.url()))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err());
}
