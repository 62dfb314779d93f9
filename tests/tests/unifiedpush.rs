//! The UnifiedPush pushkin against a fake endpoint on loopback: delivery, rejection, retries,
//! SSRF refusals, discovery, and the shipped sample config.

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::serve::serve_http;
use sygnal_tests::unifiedpush::Endpoint;

fn apps(allowed: &str) -> String {
    format!(
        "org.example.up:\n  type: unifiedpush\n  allowed_endpoints: {allowed}\n  max_tries: 3\n  retry_delay_base: 0.05\n"
    )
}

fn notify_body(pushkey: &str) -> Value {
    json!({"notification": {
        "event_id": "$event", "room_id": "!room", "type": "m.room.message",
        "sender": "@alice:example.org", "counts": {"unread": 3}, "prio": "high",
        "devices": [{"app_id": "org.example.up", "pushkey": pushkey, "pushkey_ts": 12345,
                     "data": {"url": "https://gateway.example.org/_matrix/push/v1/notify"}}]
    }})
}

#[tokio::test]
async fn delivers_the_notification_without_devices() {
    let (endpoint, server) = Endpoint::start(&[]).await;
    let gw = Gateway::builder(&apps("['127.0.0.1']")).start().await;
    let pushkey = format!("{}/up/device-token", server.url());
    let (status, answer) = gw.notify(notify_body(&pushkey)).await;
    assert_eq!((status, answer), (200, json!({"rejected": []})));
    let bodies = endpoint.bodies.lock().unwrap().clone();
    assert_eq!(
        bodies,
        vec![json!({"notification": {
            "event_id": "$event", "room_id": "!room", "type": "m.room.message",
            "sender": "@alice:example.org", "counts": {"unread": 3}, "prio": "high"
        }})]
    );
}

#[tokio::test]
async fn gone_endpoints_are_rejected() {
    for status in [401, 403, 404, 410] {
        let (endpoint, server) = Endpoint::start(&[status]).await;
        let gw = Gateway::builder(&apps("['127.0.0.1']")).start().await;
        let pushkey = format!("{}/up/gone", server.url());
        let (code, answer) = gw.notify(notify_body(&pushkey)).await;
        assert_eq!(
            (code, answer),
            (200, json!({"rejected": [pushkey]})),
            "{status}"
        );
        assert_eq!(
            endpoint.hits(),
            1,
            "{status}: a gone endpoint is not retried"
        );
    }
}

#[tokio::test]
async fn failures_are_retried_then_reported() {
    let gw = Gateway::builder(&apps("['127.0.0.1']")).start().await;
    // Two failures, then success within max_tries = 3.
    let (endpoint, server) = Endpoint::start(&[503, 500]).await;
    let pushkey = format!("{}/up/flaky", server.url());
    assert_eq!(
        gw.notify(notify_body(&pushkey)).await,
        (200, json!({"rejected": []}))
    );
    assert_eq!(endpoint.hits(), 3);
    // Always failing: max_tries attempts, then 502 for the homeserver to retry later.
    let (endpoint, server) = Endpoint::start(&[503, 503, 503, 503]).await;
    let pushkey = format!("{}/up/down", server.url());
    assert_eq!(gw.notify(notify_body(&pushkey)).await.0, 502);
    assert_eq!(endpoint.hits(), 3);
    // Nothing listening: connection errors are retried the same way.
    let closed = format!(
        "http://127.0.0.1:{}/up/secret-token",
        sygnal_tests::free_port()
    );
    assert_eq!(gw.notify(notify_body(&closed)).await.0, 502);
    // The endpoint URL is the pushkey: it never reaches the logs, not even in errors.
    let logs = gw.logs();
    assert!(logs.contains("unreachable"), "{logs}");
    for secret in ["/up/flaky", "/up/down", "/up/secret-token"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}

#[tokio::test]
async fn non_public_endpoints_are_refused_unless_allowed() {
    let (endpoint, server) = Endpoint::start(&[]).await;
    let port = server.addr.port();
    let gw = Gateway::builder(&apps("[]")).start().await;
    for pushkey in [
        format!("http://127.0.0.1:{port}/up/loopback"),
        // Refused before any connection is attempted.
        "http://10.1.2.3/up/private".to_owned(),
        "http://192.168.0.10:8080/up/private".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        format!("http://[::1]:{port}/up/v6-loopback"),
        format!("http://localhost:{port}/up/name-resolving-to-loopback"),
        "not a url".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let (status, answer) = gw.notify(notify_body(&pushkey)).await;
        assert_eq!((status, answer), (200, json!({"rejected": [pushkey]})));
    }
    assert_eq!(endpoint.hits(), 0, "no refused endpoint may be contacted");
    assert!(gw.logs().contains("not in allowed_endpoints"));

    // The operator's explicit allow (by name) lets a local endpoint through.
    let gw = Gateway::builder(&apps("['localhost']")).start().await;
    let pushkey = format!("http://localhost:{port}/up/allowed");
    assert_eq!(
        gw.notify(notify_body(&pushkey)).await,
        (200, json!({"rejected": []}))
    );
    assert_eq!(endpoint.hits(), 1);
    // ... and only that host.
    let other = format!("http://127.0.0.1:{port}/up/not-allowed");
    assert_eq!(
        gw.notify(notify_body(&other)).await,
        (200, json!({"rejected": [other]}))
    );
    assert_eq!(endpoint.hits(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Endpoint::start(&[]).await;
    let location = format!("{}/up/elsewhere", target.1.url());
    let router = Router::new().route(
        "/up/{token}",
        post(move || {
            let location = location.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", location)]) }
        }),
    );
    let redirecting = serve_http(router).await;
    let gw = Gateway::builder(&apps("['127.0.0.1']")).start().await;
    let pushkey = format!("{}/up/token", redirecting.url());
    assert_eq!(gw.notify(notify_body(&pushkey)).await.0, 502);
    assert_eq!(target.0.hits(), 0);
}

#[tokio::test]
async fn distributors_can_discover_the_gateway() {
    let gw = Gateway::builder(&apps("[]")).start().await;
    let (status, body) = gw.request("GET", "/_matrix/push/v1/notify").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"unifiedpush": {"gateway": "matrix"}})
    );
}

/// The shipped sample config, as the README runs it, delivers to a UnifiedPush endpoint
/// (allowed by config, since the test endpoint is on loopback).
#[tokio::test]
async fn the_sample_config_serves_unifiedpush() {
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sygnal.yaml.sample"
    ))
    .expect("sygnal.yaml.sample");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&sample).expect("sample is YAML");
    config["http"]["bind_addresses"] = serde_yaml::from_str("['127.0.0.1']").unwrap();
    config["http"]["port"] = serde_yaml::Value::String("{port}".into());
    let apps = config["apps"].as_mapping_mut().expect("apps");
    assert_eq!(apps.len(), 1, "the sample enables exactly one app");
    let (_, app) = apps.iter_mut().next().unwrap();
    assert_eq!(app["type"], "unifiedpush");
    app["allowed_endpoints"] = serde_yaml::from_str("['127.0.0.1']").unwrap();
    let text = serde_yaml::to_string(&config)
        .unwrap()
        .replace("'{port}'", "{port}");

    let gw = Gateway::builder_with_config(&text).start().await;
    let (endpoint, server) = Endpoint::start(&[]).await;
    let pushkey = format!("{}/up/sample", server.url());
    let mut body = notify_body(&pushkey);
    body["notification"]["devices"][0]["app_id"] = json!("im.fluffychat");
    assert_eq!(gw.notify(body).await, (200, json!({"rejected": []})));
    assert_eq!(endpoint.hits(), 1);
    assert_eq!(
        endpoint.bodies.lock().unwrap()[0]["notification"]["event_id"],
        "$event"
    );
}
