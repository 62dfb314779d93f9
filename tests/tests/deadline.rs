//! `http.notify_timeout`: one /notify is answered 502 by its deadline however the upstream
//! misbehaves (hung, or failing with retries), and the cancelled work stops.
//!
//! Run `cargo build --workspace` first.

#[allow(dead_code)] // shared with the FCM tests; not every helper is used here
#[path = "gcm/fake_fcm.rs"]
mod fake_fcm;

#[allow(dead_code)] // shared with the APNs tests
#[path = "apns/fake_apns.rs"]
mod fake_apns;

use fake_apns::{FakeApns, KEY_ID, TEAM_ID, TOPIC};
use fake_fcm::{Fake, Reply};
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::serve::serve_http;

const DEADLINE: f64 = 1.5;
/// Room for a busy machine: the answer must come by the deadline plus this.
const SLACK: Duration = Duration::from_secs(5);

fn http_with_deadline(seconds: f64) -> String {
    format!(
        "http:\n  bind_addresses: ['127.0.0.1']\n  port: {{port}}\n  notify_timeout: {seconds}\n"
    )
}

fn notification(app: &str, pushkey: &str) -> Value {
    json!({"notification": {
        "event_id": "$e", "room_id": "!r", "type": "m.room.message", "sender": "@a:x",
        "counts": {"unread": 1}, "content": {"msgtype": "m.text", "body": "hi"},
        "devices": [{"app_id": app, "pushkey": pushkey, "pushkey_ts": 1, "data": {}}]
    }})
}

/// Asserts every answer is a 502 given by the deadline (plus slack).
fn assert_answered_by_deadline(answers: &[(u16, Duration)]) {
    let deadline = Duration::from_secs_f64(DEADLINE);
    for (status, took) in answers {
        assert_eq!(*status, 502, "answered {status} after {took:?}");
        assert!(
            *took >= deadline - Duration::from_millis(100) && *took <= deadline + SLACK,
            "answered after {took:?}, deadline {deadline:?}"
        );
    }
}

async fn timed_notify(gateway: &Gateway, body: Value) -> (u16, Duration) {
    let started = Instant::now();
    let (status, _) = gateway.notify(body).await;
    (status, started.elapsed())
}

#[tokio::test]
async fn hung_fcm_upstream_is_answered_502_by_the_deadline_even_waiting_for_a_slot() {
    let fake = Fake::new();
    fake.delay_ms.store(3_600_000, Ordering::SeqCst);
    let server = serve_http(fake_fcm::router(Arc::clone(&fake))).await;
    let app = format!(
        "com.example.fcm:\n  type: gcm\n  api_version: legacy\n  api_key: k\n  endpoint: {}\n  max_connections: 2\n",
        server.url()
    );
    let gateway = Gateway::builder(&app)
        .http_yaml(&http_with_deadline(DEADLINE))
        .start()
        .await;
    // 40 notifications for 2 connection slots held by a hung upstream: most wait for a slot.
    // The bound is read before any deadline passes: a request cancelled at its deadline frees
    // its slot, but the fake server, which never notices the closed connection, still counts it.
    let before_the_deadline = async {
        tokio::time::sleep(Duration::from_secs_f64(DEADLINE - 0.5)).await;
        fake.max_in_flight.load(Ordering::SeqCst)
    };
    let (answers, in_flight) = tokio::join!(
        join_all(
            (0..40)
                .map(|n| timed_notify(&gateway, notification("com.example.fcm", &format!("k{n}"))))
        ),
        before_the_deadline
    );
    assert_answered_by_deadline(&answers);
    assert_eq!(in_flight, 2, "max_connections held");
    assert!(
        gateway
            .wait_for_log("notify deadline", Duration::from_secs(5))
            .await,
        "{}",
        gateway.logs()
    );
}

#[tokio::test]
async fn hung_apns_upstream_is_answered_502_by_the_deadline() {
    let apns = FakeApns::start(false).await;
    apns.default_reply(fake_apns::Reply::ok().delayed(Duration::from_secs(3600)));
    let app = format!(
        "com.example.ios:\n  type: apns\n  keyfile: {}\n  key_id: {KEY_ID}\n  team_id: {TEAM_ID}\n  topic: {TOPIC}\n  endpoint: {}\n",
        apns.keyfile().display(),
        apns.url()
    );
    let gateway = Gateway::builder(&app)
        .http_yaml(&http_with_deadline(DEADLINE))
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await;
    let answers = join_all((0..10u8).map(|n| {
        let token = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [n; 32]);
        timed_notify(&gateway, notification("com.example.ios", &token))
    }))
    .await;
    assert_answered_by_deadline(&answers);
    assert_eq!(
        apns.received().len(),
        10,
        "every push reached the hung upstream"
    );
}

#[tokio::test]
async fn cancelled_dispatch_stops_retrying_after_the_deadline() {
    let fake = Fake::new();
    let server = serve_http(fake_fcm::router(Arc::clone(&fake))).await;
    // Every request fails with "retry after 1 s": without cancellation the pushkin would go
    // on retrying once a second for 100 tries.
    fake.script(
        "*",
        vec![Reply::new(503, json!({})).header("retry-after", "1"); 100],
    );
    let app = format!(
        "com.example.fcm:\n  type: gcm\n  api_version: legacy\n  api_key: k\n  endpoint: {}\n  max_tries: 100\n",
        server.url()
    );
    let gateway = Gateway::builder(&app)
        .http_yaml(&http_with_deadline(2.5))
        .start()
        .await;
    let started = Instant::now();
    let (status, _) = gateway.notify(notification("com.example.fcm", "k")).await;
    let took = started.elapsed();
    assert_eq!(status, 502);
    assert!(took < Duration::from_secs_f64(2.5) + SLACK, "took {took:?}");
    let at_answer = fake.fcm_requests().len();
    assert!(at_answer >= 2, "retried before the deadline: {at_answer}");
    // Three more retry intervals: a dispatch still running would have sent three more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.fcm_requests().len(),
        at_answer,
        "the upstream saw retries after the deadline"
    );
}
