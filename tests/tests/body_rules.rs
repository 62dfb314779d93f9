//! One definition of a valid body, through the real gateway: what the pushkins could not parse
//! is a 400 with the reason, never a 5xx the homeserver would retry; over-long strings are cut
//! to each provider's limit and delivered.
//!
//! Run `cargo build --workspace` first.

#[allow(dead_code)] // shared with the FCM tests; not every helper is used here
#[path = "gcm/fake_fcm.rs"]
mod fake_fcm;

#[allow(dead_code)] // shared with the APNs tests
#[path = "apns/fake_apns.rs"]
mod fake_apns;

use fake_apns::{FakeApns, KEY_ID, TEAM_ID, TOPIC};
use serde_json::{json, Value};
use std::sync::Arc;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::serve::serve_http;

const DEVICE: &str = r#"{"app_id":"com.example.up","pushkey":"https://push.example.org/up/x"}"#;

#[tokio::test]
async fn what_pushkins_could_not_parse_is_a_400_with_the_reason() {
    let gateway = Gateway::builder("com.example.up:\n  type: unifiedpush\n")
        .start()
        .await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases = [
        (
            format!(r#"{{"content":{{"x":{deep}}},"devices":[{DEVICE}]}}"#),
            "notification.content.x",
        ),
        (
            format!(
                r#"{{"devices":[{{"app_id":"com.example.up","pushkey":"k","data":{{"d":{deep}}}}}]}}"#
            ),
            "notification.devices[0].data.d",
        ),
        (
            format!(r#"{{"content":{{"n":1e400}},"devices":[{DEVICE}]}}"#),
            "notification.content.n",
        ),
        (
            format!(r#"{{"unknown":[1e400],"devices":[{DEVICE}]}}"#),
            "notification.unknown[0]",
        ),
        (
            format!(r#"{{"content":{{"body":"\ud800"}},"devices":[{DEVICE}]}}"#),
            "notification.content.body",
        ),
    ];
    for (notification, path) in cases {
        let body = format!(r#"{{"notification":{notification}}}"#).into_bytes();
        let (status, answer) = gateway.post_raw("/_matrix/push/v1/notify", body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["errcode"], "M_BAD_JSON");
        let reason = answer["error"].as_str().unwrap_or("");
        assert!(reason.starts_with(path), "{path}: {reason}");
    }
}

/// A notification with a 400 KB room id and a 100 KB event id (the body stays under 512 KiB).
fn huge_ids(app_id: &str, pushkey: &str) -> Value {
    json!({"notification": {
        "event_id": format!("${}", "e".repeat(100 * 1024)),
        "room_id": format!("!{}", "r".repeat(400 * 1024)),
        "type": "m.room.message", "sender": "@a:x", "counts": {"unread": 2},
        "content": {"msgtype": "m.text", "body": "hello"},
        "devices": [{"app_id": app_id, "pushkey": pushkey, "data": {}}]
    }})
}

#[tokio::test]
async fn huge_ids_are_cut_and_delivered_by_apns() {
    let apns = FakeApns::start(false).await;
    let app = format!(
        "com.example.ios:\n  type: apns\n  keyfile: {}\n  key_id: {KEY_ID}\n  team_id: {TEAM_ID}\n  topic: {TOPIC}\n  endpoint: {}\n",
        apns.keyfile().display(),
        apns.url()
    );
    let gateway = Gateway::builder(&app)
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await;
    let pushkey = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (status, answer) = gateway.notify(huge_ids("com.example.ios", pushkey)).await;
    assert_eq!((status, answer), (200, json!({"rejected": []})));
    let received = apns.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].body.len() <= 4096,
        "{} bytes",
        received[0].body.len()
    );
    let payload = received[0].json();
    assert_eq!(payload["room_id"].as_str().map(str::len), Some(255));
    assert_eq!(payload["event_id"].as_str().map(str::len), Some(255));
    assert_eq!(payload["aps"]["badge"], 2);
}

#[tokio::test]
async fn huge_ids_are_cut_and_delivered_by_fcm() {
    let fake = fake_fcm::Fake::new();
    let server = serve_http(fake_fcm::router(Arc::clone(&fake))).await;
    *fake.token_uri.lock().unwrap() = format!("{}/token", server.url());
    let dir = tempfile::tempdir().unwrap();
    let account = fake_fcm::write_service_account(dir.path(), &server.url());
    let apps = format!(
        "com.example.legacy:\n  type: gcm\n  api_version: legacy\n  api_key: k\n  endpoint: {url}\n\
         com.example.v1:\n  type: gcm\n  api_version: v1\n  project_id: test-project\n  \
         service_account_file: {}\n  endpoint: {url}\n",
        account.display(),
        url = server.url()
    );
    let gateway = Gateway::builder(&apps).start().await;
    for app in ["com.example.legacy", "com.example.v1"] {
        let (status, answer) = gateway.notify(huge_ids(app, "token")).await;
        assert_eq!((status, answer), (200, json!({"rejected": []})), "{app}");
    }
    let requests = fake.fcm_requests();
    assert_eq!(requests.len(), 2);
    for request in requests {
        let data = match request.body.get("message") {
            Some(message) => message["data"].clone(),
            None => request.body["data"].clone(),
        };
        let size = data.to_string().len();
        assert!(size <= 4096, "{}: {size} bytes", request.path);
        assert_eq!(data["event_id"].as_str().map(str::len), Some(1024));
        assert_eq!(data["type"], "m.room.message");
    }
}

#[tokio::test]
async fn huge_ids_are_cut_and_delivered_by_unifiedpush_and_a_413_is_a_counted_drop() {
    use sygnal_tests::unifiedpush::Endpoint;
    let (endpoint, server) = Endpoint::start(&[200, 413]).await;
    let gateway = Gateway::builder(
        "com.example.up:\n  type: unifiedpush\n  allowed_endpoints: ['127.0.0.1']\n  retry_delay_base: 0.05\n",
    )
    .start()
    .await;
    let pushkey = format!("{}/up/device", server.url());
    let (status, answer) = gateway.notify(huge_ids("com.example.up", &pushkey)).await;
    assert_eq!((status, answer), (200, json!({"rejected": []})));
    let bodies = endpoint.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    let size = bodies[0].to_string().len();
    assert!(size <= 4096, "{size} bytes");
    let notification = &bodies[0]["notification"];
    assert!(notification["room_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("!r")));
    assert_eq!(notification["content"]["body"], "hello");
    assert_eq!(notification["counts"]["unread"], 2);

    // An endpoint refusing the message as too large: not retried, answered 200, counted.
    let (status, answer) = gateway.notify(huge_ids("com.example.up", &pushkey)).await;
    assert_eq!((status, answer), (200, json!({"rejected": []})));
    assert_eq!(endpoint.hits(), 2);
    let metrics = gateway.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("sygnal_unifiedpush_dropped_total{")
                && line.contains("reason=\"refused_as_too_large\"")
                && line.ends_with(" 1.0")),
        "{metrics}"
    );
}
