//! The FCM pushkin (`type: gcm`) end to end: the real gateway and plugin library against a fake
//! FCM (legacy and v1) and a fake Google token endpoint on loopback.
//!
//! Run `cargo build --workspace` first.

#[path = "gcm/fake_fcm.rs"]
mod fake_fcm;
#[path = "gcm/legacy.rs"]
mod legacy;
#[path = "gcm/v1.rs"]
mod v1;

use fake_fcm::{Fake, Reply};
use serde_json::{json, Value};
use std::sync::Arc;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::serve::{serve_http, serve_tls, TestServer};

const APP: &str = "com.example.android";

const API_KEY: &str = "test-api-key-AAAASECRETKEY";

/// Pushkeys long enough that a log line holding one whole is easy to spot.
fn key(name: &str) -> String {
    format!("{name}:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx-fcm-registration-token")
}

struct Upstream {
    fake: Arc<Fake>,
    server: TestServer,
    dir: tempfile::TempDir,
}

impl Upstream {
    async fn http() -> Self {
        let fake = Fake::new();
        let server = serve_http(fake_fcm::router(Arc::clone(&fake))).await;
        Self::with(fake, server)
    }

    /// A fake FCM and token endpoint over TLS (HTTP/2 or 1.1), trusting `pki`'s CA.
    async fn tls(pki: &sygnal_tests::tls::TestPki) -> Self {
        Self::tls_offering(pki, &[b"h2", b"http/1.1"]).await
    }

    /// A fake FCM and token endpoint over TLS offering the `alpn` protocols.
    async fn tls_offering(pki: &sygnal_tests::tls::TestPki, alpn: &[&[u8]]) -> Self {
        let fake = Fake::new();
        let server = serve_tls(fake_fcm::router(Arc::clone(&fake)), pki.server_config(alpn)).await;
        Self::with(fake, server)
    }

    fn with(fake: Arc<Fake>, server: TestServer) -> Self {
        *fake.token_uri.lock().unwrap() = format!("{}/token", server.url());
        let dir = tempfile::tempdir().unwrap();
        fake_fcm::write_service_account(dir.path(), &server.url());
        Upstream { fake, server, dir }
    }

    fn service_account_file(&self) -> String {
        fake_fcm::service_account_path(self.dir.path())
            .display()
            .to_string()
    }

    /// A legacy app section (`extra` lines are indented already).
    fn legacy_app(&self, extra: &str) -> String {
        format!(
            "{APP}:\n  type: gcm\n  api_version: legacy\n  api_key: {API_KEY}\n  endpoint: {}\n  retry_delay_base: 0.05\n{extra}",
            self.server.url()
        )
    }

    /// A v1 app section.
    fn v1_app(&self, extra: &str) -> String {
        format!(
            "{APP}:\n  type: gcm\n  api_version: v1\n  project_id: test-project\n  service_account_file: {}\n  endpoint: {}\n  retry_delay_base: 0.05\n{extra}",
            self.service_account_file(),
            self.server.url()
        )
    }
}

/// A full notification (as Synapse sends) for `pushkeys` of [`APP`].
fn notification(pushkeys: &[&str]) -> Value {
    let devices: Vec<Value> = pushkeys
        .iter()
        .map(|k| {
            json!({"app_id": APP, "pushkey": k, "pushkey_ts": 12345678, "data": {},
                        "tweaks": {"sound": "default"}})
        })
        .collect();
    json!({"notification": {
        "id": "$3957tyerfgewrf384", "event_id": "$3957tyerfgewrf384",
        "room_id": "!slw48wfj34rtnrf:example.com", "type": "m.room.message",
        "sender": "@exampleuser:matrix.org", "sender_display_name": "Major Tom",
        "room_name": "Mission Control", "room_alias": "#exampleroom:matrix.org",
        "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way.", "other": 1},
        "counts": {"unread": 2, "missed_calls": 1},
        "devices": devices,
    }})
}

fn rejected(answer: &Value) -> Vec<String> {
    answer["rejected"]
        .as_array()
        .unwrap_or_else(|| panic!("no rejected list in {answer}"))
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect()
}

/// The data legacy sends for [`notification`].
fn legacy_data() -> Value {
    json!({
        "event_id": "$3957tyerfgewrf384", "type": "m.room.message",
        "sender": "@exampleuser:matrix.org", "room_name": "Mission Control",
        "room_alias": "#exampleroom:matrix.org", "sender_display_name": "Major Tom",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way.", "other": 1},
        "room_id": "!slw48wfj34rtnrf:example.com", "prio": "high",
        "unread": 2, "missed_calls": 1,
    })
}

/// The data v1 sends for [`notification`]: all strings, content flattened.
fn v1_data() -> Value {
    json!({
        "event_id": "$3957tyerfgewrf384", "type": "m.room.message",
        "sender": "@exampleuser:matrix.org", "room_name": "Mission Control",
        "room_alias": "#exampleroom:matrix.org", "sender_display_name": "Major Tom",
        "content_msgtype": "m.text", "content_body": "I'm floating in a most peculiar way.",
        "room_id": "!slw48wfj34rtnrf:example.com", "prio": "high",
        "unread": "2", "missed_calls": "1",
    })
}

fn success_results(n: usize) -> Value {
    let results: Vec<Value> = (0..n)
        .map(|i| json!({"message_id": format!("0:{i}")}))
        .collect();
    json!({"multicast_id": 1, "success": n, "failure": 0, "canonical_ids": 0, "results": results})
}

fn fcm_error(code: &str) -> Value {
    json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}])
}

// ---------------------------------------------------------------------------------------------
// Configuration, metrics, logs

#[tokio::test]
async fn invalid_config_fails_check_naming_app_and_key() {
    let up = Upstream::http().await;
    let bad_json = up.dir.path().join("bad.json");
    std::fs::write(
        &bad_json,
        "{\"type\": \"service_account\", \"private_key\": ",
    )
    .unwrap();
    let v1 = |rest: &str| format!("{APP}:\n  type: gcm\n  api_version: v1\n{rest}");
    let cases = [
        (
            v1(&format!(
                "  service_account_file: {}\n",
                up.service_account_file()
            )),
            "project_id",
        ),
        (v1("  project_id: p\n"), "service_account_file"),
        (
            v1("  project_id: p\n  service_account_file: /nonexistent/sa.json\n"),
            "service_account_file",
        ),
        (
            v1(&format!(
                "  project_id: p\n  service_account_file: {}\n",
                bad_json.display()
            )),
            "service_account_file",
        ),
        (
            format!("{APP}:\n  type: gcm\n  api_version: v2\n  api_key: k\n"),
            "api_version",
        ),
        (
            format!("{APP}:\n  type: gcm\n  api_version: legacy\n"),
            "api_key",
        ),
        (
            format!("{APP}:\n  type: gcm\n  api_key: k\n  max_connections: 0\n"),
            "max_connections",
        ),
    ];
    for (app, key) in cases {
        let output = Gateway::builder(&app).run(&["check"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{app}\n{text}");
        assert!(text.contains(&format!("apps.{APP}.{key}")), "{app}\n{text}");
    }
    let ok = Gateway::builder(&up.v1_app("")).run(&["check"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[tokio::test]
async fn metrics_use_sygnal_names() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.v1_app("")).start().await;
    let (a, gone) = (key("a"), key("gone"));
    up.fake.script(
        &gone,
        [Reply::google_error(
            404,
            "NOT_FOUND",
            "not found",
            fcm_error("UNREGISTERED"),
        )],
    );
    assert_eq!(gateway.notify(notification(&[&a])).await.0, 200);
    assert_eq!(gateway.notify(notification(&[&a])).await.0, 200);
    assert_eq!(gateway.notify(notification(&[&gone])).await.0, 200);
    let metrics = gateway.metrics().await;
    let value = |prefix: &str, must: &[&str]| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && must.iter().all(|m| l.contains(m)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let pushkin = format!("pushkin=\"{APP}\"");
    assert_eq!(
        value(
            "sygnal_gcm_status_codes_total{",
            &[&pushkin, "code=\"200\""]
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            "sygnal_gcm_status_codes_total{",
            &[&pushkin, "code=\"404\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value("sygnal_gcm_request_time_count", &[]),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        value("sygnal_gcm_queue_time_count", &[]),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        value("sygnal_active_gcm_requests", &[]),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        value("sygnal_pending_gcm_requests", &[]),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn secrets_and_pushkeys_stay_out_of_the_logs() {
    let up = Upstream::http().await;
    let legacy = up.legacy_app("").replace(APP, "com.example.legacy");
    let gateway = Gateway::builder(&format!("{}{legacy}", up.v1_app("")))
        .start()
        .await;
    let (a, b) = (key("v1-device"), key("legacy-device"));
    up.fake.script(&a, [Reply::new(503, json!({}))]);
    up.fake.script(
        "*",
        [Reply::new(
            200,
            json!({"results": [{"error": "NotRegistered"}]}),
        )],
    );
    let mut body = notification(&[&a]);
    body["notification"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"app_id": "com.example.legacy", "pushkey": b}));
    let (status, answer) = gateway.notify(body).await;
    assert_eq!((status, rejected(&answer)), (200, vec![b.clone()]));
    let logs = gateway.logs();
    assert!(
        logs.contains("NotRegistered"),
        "the rejection is logged:\n{logs}"
    );
    for secret in [
        a.as_str(),
        b.as_str(),
        API_KEY,
        "ya29.test-token",
        "PRIVATE KEY",
    ] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}
