//! The FCM pushkin (`type: gcm`) end to end: the real gateway and plugin library against a fake
//! FCM (legacy and v1) and a fake Google token endpoint on loopback.
//!
//! Run `cargo build --workspace` first.

#[path = "gcm/fake_fcm.rs"]
mod fake_fcm;

use fake_fcm::{Fake, Reply, CLIENT_EMAIL};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

    fn with(fake: Arc<Fake>, server: TestServer) -> Self {
        *fake.token_uri.lock().unwrap() = format!("{}/token", server.url());
        let dir = tempfile::tempdir().unwrap();
        let account = json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "test-key-id",
            "private_key": fake_fcm::TEST_KEY_PEM,
            "client_email": CLIENT_EMAIL,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": format!("{}/token", server.url()),
        });
        std::fs::write(dir.path().join("service-account.json"), account.to_string()).unwrap();
        Upstream { fake, server, dir }
    }

    fn service_account_file(&self) -> String {
        self.dir
            .path()
            .join("service-account.json")
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
// Legacy API

#[tokio::test]
async fn legacy_request_carries_the_key_options_and_every_data_field() {
    let up = Upstream::http().await;
    let app = up.legacy_app("  fcm_options:\n    time_to_live: 3600\n    collapse_key: room\n");
    let gateway = Gateway::builder(&app).start().await;
    let pushkey = key("one");

    let (status, answer) = gateway.notify(notification(&[&pushkey])).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));

    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/fcm/send");
    assert_eq!(request.header("authorization"), format!("key={API_KEY}"));
    assert_eq!(request.header("content-type"), "application/json");
    assert!(
        request.header("user-agent").starts_with("sygnal"),
        "{}",
        request.header("user-agent")
    );
    assert_eq!(
        request.body,
        json!({"time_to_live": 3600, "collapse_key": "room", "priority": "high",
               "to": pushkey, "data": legacy_data()})
    );
}

#[tokio::test]
async fn legacy_sends_one_request_per_app_for_all_its_devices() {
    let up = Upstream::http().await;
    let other = format!(
        "com.example.other:\n  type: gcm\n  api_version: legacy\n  api_key: other-key\n  endpoint: {}\n",
        up.server.url()
    );
    let gateway = Gateway::builder(&format!("{}{other}", up.legacy_app("")))
        .start()
        .await;
    let (a, b, c, d) = (key("a"), key("b"), key("c"), key("d"));
    let mut body = notification(&[&a, &b, &c]);
    body["notification"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(json!({"app_id": "com.example.other", "pushkey": d}));

    let (status, answer) = gateway.notify(body).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));

    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 2, "one request per app");
    let by_key = |auth: &str| {
        requests
            .iter()
            .find(|r| r.header("authorization") == auth)
            .unwrap_or_else(|| panic!("no request with {auth}"))
    };
    let (ours, theirs) = (by_key(&format!("key={API_KEY}")), by_key("key=other-key"));
    assert_eq!(ours.body["registration_ids"], json!([a, b, c]));
    assert!(ours.body.get("to").is_none());
    assert_eq!(ours.body["data"], legacy_data());
    assert_eq!(theirs.body["to"], json!(d));
    assert!(theirs.body.get("registration_ids").is_none());
}

#[tokio::test]
async fn legacy_per_result_errors_reject_drop_or_retry_each_pushkey() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.legacy_app("")).start().await;
    let keys: Vec<String> = [
        "ok",
        "notreg",
        "toobig",
        "unavailable",
        "invalid",
        "mismatch",
        "internal",
    ]
    .iter()
    .map(|n| key(n))
    .collect();
    up.fake.script(
        "*",
        [
            Reply::new(
                200,
                json!({"multicast_id": 1, "success": 1, "failure": 6, "results": [
                    {"message_id": "0:1"}, {"error": "NotRegistered"}, {"error": "MessageTooBig"},
                    {"error": "Unavailable"}, {"error": "InvalidRegistration"},
                    {"error": "MismatchSenderId"}, {"error": "InternalServerError"},
                ]}),
            ),
            // The retry, for the two temporary failures only: one still fails.
            Reply::new(
                200,
                json!({"results": [{"message_id": "0:2"}, {"error": "Unavailable"}]}),
            ),
            Reply::new(200, success_results(1)),
        ],
    );
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (status, answer) = gateway.notify(notification(&refs)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        rejected(&answer),
        vec![keys[1].clone(), keys[4].clone(), keys[5].clone()]
    );

    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].body["registration_ids"], json!(keys));
    assert_eq!(
        requests[1].body["registration_ids"],
        json!([keys[3], keys[6]])
    );
    assert_eq!(requests[2].body["to"], json!(keys[6]));
    assert!(requests[2].body.get("registration_ids").is_none());
    assert_eq!(
        requests[2].body["data"],
        legacy_data(),
        "same payload on retry"
    );
    // retry_delay_base 0.05 doubling: 50 ms, then 100 ms.
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(50));
    assert!(requests[2].at - requests[1].at >= Duration::from_millis(100));
}

#[tokio::test]
async fn legacy_gives_up_after_max_tries_with_a_502() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.legacy_app("  max_tries: 3\n"))
        .start()
        .await;
    let unavailable = Reply::new(200, json!({"results": [{"error": "Unavailable"}]}));
    up.fake.script("*", vec![unavailable; 3]);
    let (status, _) = gateway.notify(notification(&[&key("a")])).await;
    assert_eq!(status, 502);
    assert_eq!(up.fake.fcm_requests().len(), 3);
}

#[tokio::test]
async fn legacy_status_codes() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.legacy_app("")).start().await;
    let (a, b) = (key("a"), key("b"));

    // 404: everything rejected.
    up.fake.script("*", [Reply::new(404, json!({}))]);
    let (status, answer) = gateway.notify(notification(&[&a, &b])).await;
    assert_eq!(
        (status, rejected(&answer)),
        (200, vec![a.clone(), b.clone()])
    );
    assert_eq!(up.fake.fcm_requests().len(), 1);

    // 400 and 401: permanent, not retried.
    for code in [400, 401] {
        up.fake.script("*", [Reply::new(code, json!("nope"))]);
        let before = up.fake.fcm_requests().len();
        let (status, _) = gateway.notify(notification(&[&a])).await;
        assert_eq!(status, 502, "{code}");
        assert_eq!(
            up.fake.fcm_requests().len(),
            before + 1,
            "{code} is not retried"
        );
    }

    // 5xx: retried, then delivered.
    up.fake.script(
        "*",
        [Reply::new(500, json!({})), Reply::new(503, json!({}))],
    );
    let before = up.fake.fcm_requests().len();
    let (status, answer) = gateway.notify(notification(&[&a])).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));
    assert_eq!(up.fake.fcm_requests().len(), before + 3);
}

#[tokio::test]
async fn legacy_honours_retry_after_on_5xx() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.legacy_app("")).start().await;
    up.fake
        .script("*", [Reply::new(503, json!({})).header("retry-after", "1")]);
    let started = Instant::now();
    let (status, _) = gateway.notify(notification(&[&key("a")])).await;
    assert_eq!(status, 200);
    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "waited {waited:?}, not Retry-After's 1 s"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn legacy_is_the_default_api_with_a_warning() {
    let up = Upstream::http().await;
    let app = format!(
        "{APP}:\n  type: gcm\n  api_key: {API_KEY}\n  endpoint: {}\n",
        up.server.url()
    );
    let gateway = Gateway::builder(&app).start().await;
    let (status, _) = gateway.notify(notification(&[&key("a")])).await;
    assert_eq!(status, 200);
    assert_eq!(up.fake.fcm_requests()[0].path, "/fcm/send");
    assert!(
        gateway.logs().contains("api_version not set"),
        "{}",
        gateway.logs()
    );
}

#[tokio::test]
async fn legacy_low_priority_bad_default_payload_and_empty_badge_updates() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.legacy_app("  send_badge_counts: false\n"))
        .start()
        .await;
    let a = key("a");

    let mut low = notification(&[&a]);
    low["notification"]["prio"] = json!("low");
    assert_eq!(gateway.notify(low).await.0, 200);
    let request = &up.fake.fcm_requests()[0];
    assert_eq!(request.body["priority"], "normal");
    assert_eq!(request.body["data"]["prio"], "normal");
    // send_badge_counts: false
    assert!(request.body["data"].get("unread").is_none());
    assert!(request.body["data"].get("missed_calls").is_none());

    // default_payload that is not an object: rejected, nothing sent.
    let mut bad = notification(&[&a]);
    bad["notification"]["devices"][0]["data"] = json!({"default_payload": "oops"});
    let (status, answer) = gateway.notify(bad).await;
    assert_eq!((status, rejected(&answer)), (200, vec![a.clone()]));

    // A badge-only update with nothing to say (counts off): not sent.
    let badge = json!({"notification": {"id": "", "type": null, "sender": "", "counts": {"unread": 3},
        "devices": [{"app_id": APP, "pushkey": a, "data": {}}]}});
    let (status, answer) = gateway.notify(badge).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));
    assert_eq!(up.fake.fcm_requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// v1 API

#[tokio::test]
async fn v1_request_shape_and_auth() {
    let up = Upstream::http().await;
    let options = "  fcm_options:\n    android:\n      collapse_key: room\n      ttl: 60s\n    apns:\n      headers:\n        apns-priority: '10'\n";
    let gateway = Gateway::builder(&up.v1_app(options)).start().await;
    let pushkey = key("one");

    let (status, answer) = gateway.notify(notification(&[&pushkey])).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));

    assert_eq!(up.fake.token_fetches(), 1);
    assert_eq!(*up.fake.token_errors.lock().unwrap(), Vec::<String>::new());
    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.path, "/v1/projects/test-project/messages:send");
    assert_eq!(request.header("authorization"), "Bearer ya29.test-token-1");
    assert_eq!(request.header("content-type"), "application/json");
    assert!(request.header("user-agent").starts_with("sygnal"));
    assert_eq!(
        request.body,
        json!({"message": {
            "token": pushkey,
            "data": v1_data(),
            "android": {"collapse_key": "room", "ttl": "60s", "priority": "high"},
            "apns": {"headers": {"apns-priority": "10"}},
        }})
    );
}

#[tokio::test]
async fn v1_sends_one_request_per_device_and_rejects_dead_tokens() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.v1_app("")).start().await;
    let (ok, unregistered, invalid, ok2, bad_default) = (
        key("ok"),
        key("unreg"),
        key("invalid"),
        key("ok2"),
        key("baddefault"),
    );
    up.fake.script(
        &unregistered,
        [Reply::google_error(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            fcm_error("UNREGISTERED"),
        )],
    );
    up.fake.script(
        &invalid,
        [Reply::google_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            json!([
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
                {"@type": "type.googleapis.com/google.rpc.BadRequest",
                 "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]},
            ]),
        )],
    );
    let mut body = notification(&[&ok, &unregistered, &invalid, &ok2, &bad_default]);
    body["notification"]["devices"][3]["data"] =
        json!({"default_payload": {"cs": "secret", "n": 5}});
    body["notification"]["devices"][4]["data"] =
        json!({"default_payload": ["not", "an", "object"]});

    let (status, answer) = gateway.notify(body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        rejected(&answer),
        vec![unregistered.clone(), invalid.clone(), bad_default.clone()]
    );

    let requests = up.fake.fcm_requests();
    let mut tokens: Vec<&str> = requests
        .iter()
        .map(|r| r.body["message"]["token"].as_str().unwrap())
        .collect();
    tokens.sort();
    let mut expected = vec![
        ok.as_str(),
        unregistered.as_str(),
        invalid.as_str(),
        ok2.as_str(),
    ];
    expected.sort();
    assert_eq!(
        tokens, expected,
        "one request per device, none for the bad default_payload"
    );
    let with_default = requests
        .iter()
        .find(|r| r.body["message"]["token"] == json!(ok2))
        .unwrap();
    assert_eq!(with_default.body["message"]["data"]["cs"], "secret");
    assert_eq!(
        with_default.body["message"]["data"]["n"], "5",
        "v1 data values are strings"
    );
    assert_eq!(
        up.fake.token_fetches(),
        1,
        "concurrent sends share one token fetch"
    );
}

#[tokio::test]
async fn v1_permanent_failures_are_not_retried() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.v1_app("")).start().await;
    let a = key("a");
    let cases = [
        Reply::google_error(
            400,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data[0].value'",
            json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.data[0].value"}]}]),
        ),
        Reply::google_error(
            403,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            fcm_error("SENDER_ID_MISMATCH"),
        ),
        Reply::google_error(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            json!([]),
        ),
    ];
    for (n, case) in cases.into_iter().enumerate() {
        let code = case.status;
        up.fake.script(&a, [case]);
        let (status, answer) = gateway.notify(notification(&[&a])).await;
        assert_eq!(status, 502, "{code}: {answer}");
        assert_eq!(up.fake.fcm_requests().len(), n + 1, "{code} is not retried");
    }
    // The 401 dropped the cached token: the next push fetches a new one.
    assert_eq!(up.fake.token_fetches(), 1);
    let (status, _) = gateway.notify(notification(&[&a])).await;
    assert_eq!(status, 200);
    assert_eq!(up.fake.token_fetches(), 2);
    assert_eq!(
        up.fake
            .fcm_requests()
            .last()
            .unwrap()
            .header("authorization"),
        "Bearer ya29.test-token-2"
    );
}

#[tokio::test]
async fn v1_retries_server_errors_then_gives_up() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.v1_app("  max_tries: 3\n"))
        .start()
        .await;
    let a = key("a");
    up.fake
        .script(&a, [Reply::new(500, json!({})), Reply::new(503, json!({}))]);
    let (status, answer) = gateway.notify(notification(&[&a])).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));
    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[1].at - requests[0].at >= Duration::from_millis(50));
    assert!(requests[2].at - requests[1].at >= Duration::from_millis(100));

    up.fake.script(&a, vec![Reply::new(502, json!({})); 3]);
    let (status, _) = gateway.notify(notification(&[&a])).await;
    assert_eq!(status, 502);
    assert_eq!(up.fake.fcm_requests().len(), 6);
}

#[tokio::test]
async fn v1_quota_errors_wait_for_retry_after_or_the_quota_backoff() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.v1_app("")).start().await;
    let a = key("a");
    let quota = || {
        Reply::google_error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded",
            fcm_error("QUOTA_EXCEEDED"),
        )
    };

    up.fake.script(&a, [quota().header("retry-after", "1")]);
    let (status, _) = gateway.notify(notification(&[&a])).await;
    assert_eq!(status, 200);
    let requests = up.fake.fcm_requests();
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "waited {waited:?}, not Retry-After's 1 s"
    );

    // Without Retry-After: 6 x retry_delay_base (Sygnal's 60 s at the default 10 s base).
    up.fake.script(&a, [quota()]);
    let (status, _) = gateway.notify(notification(&[&a])).await;
    assert_eq!(status, 200);
    let requests = up.fake.fcm_requests();
    let waited = requests[3].at - requests[2].at;
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(waited < Duration::from_millis(950), "waited {waited:?}");
}

#[tokio::test]
async fn v1_token_is_fetched_once_for_many_pushes() {
    let up = Upstream::http().await;
    let gateway = Arc::new(Gateway::builder(&up.v1_app("")).start().await);
    for n in 0..10 {
        let (status, _) = gateway
            .notify(notification(&[&key(&format!("seq{n}"))]))
            .await;
        assert_eq!(status, 200);
    }
    let concurrent = (0..10).map(|n| {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            gateway
                .notify(notification(&[&key(&format!("par{n}"))]))
                .await
                .0
        })
    });
    for status in futures_util::future::join_all(concurrent).await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(up.fake.token_fetches(), 1);
    assert_eq!(*up.fake.token_errors.lock().unwrap(), Vec::<String>::new());
    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 20);
    assert!(requests
        .iter()
        .all(|r| r.header("authorization") == "Bearer ya29.test-token-1"));
}

#[tokio::test]
async fn v1_token_is_refreshed_before_it_expires() {
    let up = Upstream::http().await;
    up.fake.token_expires_in.store(2, Ordering::SeqCst);
    let gateway = Gateway::builder(&up.v1_app("")).start().await;
    let a = key("a");
    for _ in 0..3 {
        assert_eq!(gateway.notify(notification(&[&a])).await.0, 200);
    }
    assert_eq!(up.fake.token_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        assert_eq!(gateway.notify(notification(&[&a])).await.0, 200);
    }
    assert_eq!(up.fake.token_fetches(), 2);
    let auth: Vec<String> = up
        .fake
        .fcm_requests()
        .iter()
        .map(|r| r.header("authorization").to_owned())
        .collect();
    assert_eq!(auth[..3], vec!["Bearer ya29.test-token-1".to_owned(); 3]);
    assert_eq!(auth[3..], vec!["Bearer ya29.test-token-2".to_owned(); 3]);
    assert_eq!(*up.fake.token_errors.lock().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn v1_max_connections_bounds_concurrent_requests() {
    let up = Upstream::http().await;
    up.fake.delay_ms.store(150, Ordering::SeqCst);
    let gateway = Gateway::builder(&up.v1_app("  max_connections: 3\n"))
        .start()
        .await;
    let keys: Vec<String> = (0..12).map(|n| key(&format!("d{n}"))).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let started = Instant::now();
    let (status, answer) = gateway.notify(notification(&refs)).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));
    assert_eq!(up.fake.fcm_requests().len(), 12);
    assert_eq!(
        up.fake.max_in_flight.load(Ordering::SeqCst),
        3,
        "concurrent, but at most 3"
    );
    assert!(started.elapsed() >= Duration::from_millis(4 * 150));
}

#[tokio::test]
async fn v1_synapse_bodies() {
    let up = Upstream::http().await;
    let app = up.v1_app("").replace(APP, "com.example.e2e");
    let gateway = Gateway::builder(&app).start().await;
    let bodies = sygnal_tests::synapse_bodies();
    for body in &bodies {
        let (status, answer) = gateway.notify(body.clone()).await;
        assert_eq!((status, rejected(&answer)), (200, vec![]), "{body}");
    }
    let requests = up.fake.fcm_requests();
    assert_eq!(
        requests.len(),
        2,
        "the badge-only update with unread 0 is not sent"
    );
    assert_eq!(
        requests[0].body["message"]["data"],
        json!({
            "event_id": "$LCA5sbLCYlwxwO-nFVAVvEtefuHxGZ8dOUdGVHu5u4U", "type": "m.room.message",
            "sender": "@e2e_sender:localhost", "room_name": "push e2e",
            "sender_display_name": "e2e_sender", "content_body": "e2e push test 1795706932",
            "content_msgtype": "m.text", "room_id": "!F0e71EYMcxyjqoh7pZ74UNuiXZk2tbxMFppQvkzRPoE",
            "prio": "high", "unread": "1",
        })
    );
    assert_eq!(
        requests[1].body["message"],
        json!({"token": "pushkey-event_id_only", "android": {"priority": "high"}, "data": {
            "event_id": "$jFlYVIFuitEfqDRKzev7eCM4XCBkL-nQ0gYwflh3wZ8",
            "room_id": "!_3Zl3QKyURPMqBx2_W6qGIhtj-A3NzqUERzZPwkwRmc",
            "prio": "high", "unread": "2",
        }})
    );
}

#[tokio::test]
async fn v1_through_an_authenticating_connect_proxy() {
    let pki = sygnal_tests::tls::TestPki::new();
    let fake = Fake::new();
    let server = serve_tls(
        fake_fcm::router(Arc::clone(&fake)),
        pki.server_config(&[b"h2", b"http/1.1"]),
    )
    .await;
    let up = Upstream::with(fake, server);
    let proxy = sygnal_tests::proxy::ConnectProxy::start(Some(("proxyuser", "proxy-pass"))).await;
    let proxy_url = proxy.url();
    let gateway = Gateway::builder(&up.v1_app(""))
        .extra_yaml(&format!("proxy: {proxy_url}"))
        .env("SSL_CERT_FILE", pki.ca_file())
        .start()
        .await;
    let a = key("a");
    let (status, answer) = gateway.notify(notification(&[&a])).await;
    assert_eq!(
        (status, rejected(&answer)),
        (200, vec![]),
        "{}",
        gateway.logs()
    );
    assert_eq!(
        up.fake.token_fetches(),
        1,
        "the token fetch went through too"
    );
    assert_eq!(up.fake.fcm_requests().len(), 1);
    let target = format!("localhost:{}", up.server.addr.port());
    let tunnels = proxy.tunnels();
    assert!(
        !tunnels.is_empty() && tunnels.iter().all(|t| *t == target),
        "{tunnels:?}"
    );
    assert_eq!(
        up.server.connections(),
        tunnels.len(),
        "every connection came through the proxy"
    );
    assert_eq!(proxy.rejected_auth(), 0);
    assert!(
        !gateway.logs().contains("proxy-pass"),
        "proxy password logged"
    );
}

#[tokio::test]
async fn v1_proxy_refusing_our_credentials_fails_the_push() {
    let pki = sygnal_tests::tls::TestPki::new();
    let fake = Fake::new();
    let server = serve_tls(
        fake_fcm::router(Arc::clone(&fake)),
        pki.server_config(&[b"h2", b"http/1.1"]),
    )
    .await;
    let up = Upstream::with(fake, server);
    let proxy = sygnal_tests::proxy::ConnectProxy::start(Some(("proxyuser", "right"))).await;
    let wrong = proxy.url().replace(":right@", ":wrong@");
    let gateway = Gateway::builder(&up.v1_app("  max_tries: 1\n"))
        .extra_yaml(&format!("proxy: {wrong}"))
        .env("SSL_CERT_FILE", pki.ca_file())
        .start()
        .await;
    let (status, _) = gateway.notify(notification(&[&key("a")])).await;
    assert_eq!(status, 502);
    assert!(proxy.rejected_auth() >= 1);
    assert_eq!(up.server.connections(), 0);
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
