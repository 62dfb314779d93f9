//! The APNs pushkin (`type: apns`) end to end: the real gateway binary and plugin library
//! against a fake APNs speaking HTTP/2 over TLS on loopback.
//!
//! Run `cargo build --workspace` first: the gateway and the plugin come from target/debug.

#[path = "apns/fake_apns.rs"]
mod fake_apns;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use fake_apns::{FakeApns, Reply, KEY_ID, TEAM_ID, TOPIC};
use serde_json::{json, Value};
use std::time::Duration;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::proxy::ConnectProxy;
use sygnal_tests::synapse_bodies;

const APP: &str = "com.example.ios";

/// A device token: its base64 pushkey (what the homeserver sends) and its hex (what APNs sees).
fn token(seed: u8) -> (String, String) {
    let bytes: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect();
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (STANDARD.encode(&bytes), hex)
}

/// A token-auth app section pointing at the fake; `extra` holds more indented keys.
fn token_app(apns: &FakeApns, extra: &str) -> String {
    format!(
        "{APP}:\n  type: apns\n  keyfile: {}\n  key_id: {KEY_ID}\n  team_id: {TEAM_ID}\n  \
         topic: {TOPIC}\n  platform: sandbox\n  endpoint: {}\n  retry_delay_base: 0.05\n{extra}",
        apns.keyfile().display(),
        apns.url()
    )
}

async fn gateway(apns: &FakeApns, apps: &str) -> Gateway {
    Gateway::builder(apps)
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await
}

fn device(pushkey: &str) -> Value {
    json!({"app_id": APP, "pushkey": pushkey, "pushkey_ts": 1, "data": {}})
}

/// A notification for `devices`, with `fields` merged in.
fn notification(devices: Vec<Value>, fields: Value) -> Value {
    let mut n = json!({
        "event_id": "$event:x", "room_id": "!room:x", "type": "m.room.message",
        "sender": "@alice:x", "sender_display_name": "Alice", "prio": "high",
        "counts": {"unread": 1}, "content": {"msgtype": "m.text", "body": "hello"},
        "devices": devices
    });
    if let Value::Object(fields) = fields {
        for (key, value) in fields {
            n[key] = value;
        }
    }
    json!({"notification": n})
}

fn synapse_body(index: usize, pushkey: &str) -> Value {
    let mut body = synapse_bodies()[index].clone();
    body["notification"]["devices"][0]["app_id"] = json!(APP);
    body["notification"]["devices"][0]["pushkey"] = json!(pushkey);
    body
}

fn assert_uuid(id: &str) {
    let lens: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(lens, [8, 4, 4, 4, 12], "apns-id {id}");
    assert!(
        id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
        "apns-id {id}"
    );
}

#[tokio::test]
async fn synapse_full_notification_reaches_apns_with_every_header() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "")).await;
    let (pushkey, hex) = token(1);

    let body = synapse_body(0, &pushkey);
    assert_eq!(
        gw.notify(body.clone()).await,
        (200, json!({"rejected": []}))
    );

    let received = apns.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/3/device/{hex}"));
    assert_eq!(r.version, axum::http::Version::HTTP_2);
    assert_eq!(r.conn.alpn.as_deref(), Some(&b"h2"[..]));
    let jwt = apns.verify_provider_token(r);
    assert_eq!(r.header("apns-topic"), Some(TOPIC));
    assert_eq!(r.header("apns-priority"), Some("10"));
    assert_eq!(r.header("apns-push-type"), None, "no push_type configured");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_uuid(r.header("apns-id").expect("apns-id"));

    let n = &body["notification"];
    assert_eq!(
        r.json(),
        json!({
            "aps": {
                "alert": {"loc-key": "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
                          "loc-args": ["e2e_sender", "push e2e", n["content"]["body"]]},
                "badge": 1,
                "sound": "default"
            },
            "room_id": n["room_id"], "event_id": n["event_id"]
        })
    );
    // Neither the pushkey nor the provider token appears whole in the (debug level) logs.
    let logs = gw.logs();
    assert!(logs.contains("APNs pushkin ready"), "{logs}");
    assert!(!logs.contains(&pushkey) && !logs.contains(&hex) && !logs.contains(&jwt));
}

#[tokio::test]
async fn synapse_event_id_only_and_badge_only_payloads() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "")).await;
    let (eid_key, eid_hex) = token(2);
    let (badge_key, badge_hex) = token(3);

    let eid = synapse_body(1, &eid_key);
    assert_eq!(gw.notify(eid.clone()).await, (200, json!({"rejected": []})));
    let badge = synapse_body(2, &badge_key);
    assert_eq!(gw.notify(badge).await, (200, json!({"rejected": []})));

    let n = &eid["notification"];
    assert_eq!(
        apns.received_for(&eid_hex)[0].json(),
        json!({"event_id": n["event_id"], "room_id": n["room_id"], "unread_count": 2})
    );
    assert_eq!(
        apns.received_for(&badge_hex)[0].json(),
        json!({"aps": {"badge": 0}})
    );
}

#[tokio::test]
async fn payload_cases_as_apns_receives_them() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "")).await;
    let cases = [
        (
            json!({"type": "m.call.invite", "content": {"offer": {"sdp": "v=0\r\nm=audio 1\r\nm=video 1"}},
                   "counts": {"unread": 1, "missed_calls": 2}}),
            json!({"data": {}}),
            json!({"aps": {"alert": {"loc-key": "VIDEO_CALL_FROM_USER", "loc-args": ["Alice"]}, "badge": 3},
                   "room_id": "!room:x", "event_id": "$event:x"}),
        ),
        (
            json!({"type": "m.room.member", "membership": "invite", "user_is_target": true,
                   "room_name": "Party", "content": {"membership": "invite"}}),
            json!({"data": {}}),
            json!({"aps": {"alert": {"loc-key": "USER_INVITE_TO_NAMED_ROOM", "loc-args": ["Alice", "Party"]},
                           "badge": 1},
                   "room_id": "!room:x", "event_id": "$event:x"}),
        ),
        (
            json!({"room_alias": "#chat:x", "content": {"msgtype": "m.emote", "body": "waves"}}),
            json!({"data": {}, "tweaks": {"sound": "default"}}),
            json!({"aps": {"alert": {"loc-key": "ACTION_FROM_USER_IN_ROOM", "loc-args": ["#chat:x", "Alice", "waves"]},
                           "badge": 1, "sound": "default"},
                   "room_id": "!room:x", "event_id": "$event:x"}),
        ),
        (
            json!({"content": {"msgtype": "m.image", "body": "cat.jpg"}, "counts": {}}),
            json!({"data": {"default_payload": {"aps": {"mutable-content": 1, "sound": "ping.caf"},
                                                "client": {"v": [1, 2]}}},
                   "tweaks": {"sound": "default"}}),
            json!({"aps": {"alert": {"loc-key": "IMAGE_FROM_USER", "loc-args": ["Alice", "cat.jpg"]},
                           "mutable-content": 1, "sound": "ping.caf"},
                   "client": {"v": [1, 2]}, "room_id": "!room:x", "event_id": "$event:x"}),
        ),
        (
            json!({"type": null, "counts": {"unread": 1, "missed_calls": 2}}),
            json!({"data": {"format": "event_id_only", "default_payload": {"aps": {"content-available": 1}}}}),
            json!({"aps": {"content-available": 1}, "event_id": "$event:x", "room_id": "!room:x",
                   "unread_count": 1, "missed_calls": 2}),
        ),
        (
            json!({"type": "org.example.poll", "sender_display_name": null, "room_name": "R"}),
            json!({"data": {}}),
            json!({"aps": {"alert": {"loc-key": "MSG_FROM_USER", "loc-args": ["@alice:x"]}, "badge": 1},
                   "room_id": "!room:x", "event_id": "$event:x"}),
        ),
    ];
    for (i, (fields, device_fields, expected)) in cases.into_iter().enumerate() {
        let (pushkey, hex) = token(10 + i as u8);
        let mut d = device(&pushkey);
        for (k, v) in device_fields.as_object().expect("object") {
            d[k] = v.clone();
        }
        let (status, answer) = gw.notify(notification(vec![d], fields)).await;
        assert_eq!((status, answer), (200, json!({"rejected": []})), "case {i}");
        let got = apns.received_for(&hex);
        assert_eq!(got.len(), 1, "case {i}");
        assert_eq!(got[0].json(), expected, "case {i}");
    }
}

#[tokio::test]
async fn priority_push_type_hex_conversion_and_badge_counts_follow_config() {
    let apns = FakeApns::start(false).await;
    // Written as for PyYAML (YAML 1.1 booleans, a quoted number): the SDK reads them leniently.
    let extra = "  push_type: voip\n  convert_device_token_to_hex: no\n  send_badge_counts: Off\n  max_tries: '2'\n";
    let gw = gateway(&apns, &token_app(&apns, extra)).await;
    let raw_token = "ABCDEF0123456789";

    let body = notification(
        vec![device(raw_token)],
        json!({"prio": "low", "counts": {"unread": 5, "missed_calls": 1}}),
    );
    assert_eq!(gw.notify(body).await, (200, json!({"rejected": []})));
    let r = &apns.received_for(raw_token)[0];
    assert_eq!(r.header("apns-priority"), Some("5"));
    assert_eq!(r.header("apns-push-type"), Some("voip"));
    assert_eq!(r.json()["aps"].get("badge"), None);

    // A badge-only update has nothing left to say without counts: nothing is sent.
    let badge_only = json!({"notification": {"id": "", "type": null, "sender": "",
        "counts": {"unread": 0}, "devices": [device("0011")]}});
    assert_eq!(gw.notify(badge_only).await, (200, json!({"rejected": []})));
    assert!(apns.received_for("0011").is_empty());
}

#[tokio::test]
async fn token_rejections_return_the_pushkey_as_sent() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "")).await;
    let rejections = [
        Reply::error(400, "BadDeviceToken"),
        Reply::error(400, "DeviceTokenNotForTopic"),
        Reply::error(400, "TopicDisallowed"),
        Reply::error(410, "Unregistered"),
    ];
    for (i, reply) in rejections.into_iter().enumerate() {
        let (pushkey, hex) = token(40 + i as u8);
        apns.script(&hex, [reply]);
        let (status, answer) = gw
            .notify(notification(vec![device(&pushkey)], json!({})))
            .await;
        assert_eq!(
            (status, answer),
            (200, json!({"rejected": [pushkey]})),
            "{reply:?}"
        );
        assert_eq!(apns.received_for(&hex).len(), 1, "no retry for {reply:?}");
    }

    // Several devices in one notification: only the bad one is rejected.
    let (good, _) = token(50);
    let (bad, bad_hex) = token(51);
    apns.script(&bad_hex, [Reply::error(410, "Unregistered")]);
    let body = notification(vec![device(&good), device(&bad)], json!({}));
    assert_eq!(gw.notify(body).await, (200, json!({"rejected": [bad]})));

    // Pushers that can never work are rejected without asking APNs.
    let mut broken = device("bm90IGEgdG9rZW4gYXQgYWxs");
    broken["data"] = json!({"default_payload": "not an object"});
    let not_base64 = device("not base64 at all!");
    let before = apns.received().len();
    let body = notification(vec![broken, not_base64], json!({}));
    let (status, answer) = gw.notify(body).await;
    assert_eq!(status, 200);
    let mut rejected: Vec<&str> = answer["rejected"]
        .as_array()
        .expect("rejected list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    rejected.sort_unstable();
    assert_eq!(rejected, ["bm90IGEgdG9rZW4gYXQgYWxs", "not base64 at all!"]);
    assert_eq!(apns.received().len(), before);
}

#[tokio::test]
async fn other_client_errors_fail_permanently_without_retry() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "")).await;
    for (i, reply) in [
        Reply::error(400, "BadTopic"),
        Reply::error(403, "InvalidProviderToken"),
        Reply::error(410, "ExpiredToken"),
        Reply::error(413, "PayloadTooLarge"),
        Reply::error(429, "TooManyRequests"),
        // A brand-new provider token reported expired: the clock is wrong, retrying won't help.
        Reply::error(403, "ExpiredProviderToken"),
    ]
    .into_iter()
    .enumerate()
    {
        let (pushkey, hex) = token(60 + i as u8);
        apns.script(&hex, [reply]);
        let (status, _) = gw
            .notify(notification(vec![device(&pushkey)], json!({})))
            .await;
        assert_eq!(status, 502, "{reply:?}");
        assert_eq!(apns.received_for(&hex).len(), 1, "no retry for {reply:?}");
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_succeed() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "  max_tries: 3\n")).await;
    let (pushkey, hex) = token(70);
    apns.script(
        &hex,
        [
            Reply::error(503, "ServiceUnavailable"),
            Reply::error(500, "InternalServerError"),
        ],
    );
    let (status, answer) = gw
        .notify(notification(vec![device(&pushkey)], json!({})))
        .await;
    assert_eq!((status, answer), (200, json!({"rejected": []})));
    let tries = apns.received_for(&hex);
    assert_eq!(tries.len(), 3);
    // retry_delay_base 0.05: 50 ms, then 100 ms.
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(50));
    assert!(tries[2].at - tries[1].at >= Duration::from_millis(100));
    // The same notification, so the same apns-id and body on every try.
    let id = tries[0].header("apns-id");
    assert!(tries
        .iter()
        .all(|t| t.header("apns-id") == id && t.body == tries[0].body));
}

#[tokio::test]
async fn retries_exhausted_is_a_502() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "  max_tries: 2\n")).await;
    let (pushkey, hex) = token(80);
    apns.script(&hex, [Reply::error(503, "ServiceUnavailable"); 5]);
    let (status, _) = gw
        .notify(notification(vec![device(&pushkey)], json!({})))
        .await;
    assert_eq!(status, 502);
    assert_eq!(apns.received_for(&hex).len(), 2);
}

#[tokio::test]
async fn connection_failures_are_retried_then_fail() {
    let apns = FakeApns::start(false).await;
    // Nothing listens on this port.
    let closed = format!("https://localhost:{}", sygnal_tests::free_port());
    let apps = token_app(&apns, "  max_tries: 2\n").replace(&apns.url(), &closed);
    let gw = gateway(&apns, &apps).await;
    let (pushkey, _) = token(85);
    let (status, _) = gw
        .notify(notification(vec![device(&pushkey)], json!({})))
        .await;
    assert_eq!(status, 502);
    let logs = gw.logs();
    assert!(logs.contains("gave up after 2 tries"), "{logs}");
    assert!(!logs.contains(&pushkey));
}

#[tokio::test]
async fn long_multibyte_messages_are_shaved_to_4096_bytes() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "")).await;
    let (pushkey, hex) = token(90);
    let text = "日本語😀é".repeat(500);
    let body = notification(
        vec![device(&pushkey)],
        json!({"room_name": "Room", "content": {"msgtype": "m.text", "body": text}}),
    );
    assert_eq!(gw.notify(body).await, (200, json!({"rejected": []})));
    let r = &apns.received_for(&hex)[0];
    assert!(
        r.body.len() <= 4096 && r.body.len() > 4096 - 4,
        "{} bytes",
        r.body.len()
    );
    let payload = r.json();
    let args = payload["aps"]["alert"]["loc-args"]
        .as_array()
        .expect("loc-args");
    assert_eq!(args[..2], [json!("Alice"), json!("Room")]);
    let shaved = args[2].as_str().expect("text");
    assert!(text.starts_with(shaved) && shaved.len() < text.len());

    // Nothing shaveable (no aps in an event_id_only push): it can never be delivered, so it
    // is dropped, logged and counted, not failed (a 5xx would be retried for a day).
    let (pushkey, hex) = token(91);
    let mut d = device(&pushkey);
    d["data"] = json!({"format": "event_id_only", "default_payload": {"blob": "x".repeat(5000)}});
    let answer = gw
        .notify(notification(vec![d], json!({"type": null})))
        .await;
    assert_eq!(answer, (200, json!({"rejected": []})));
    assert!(apns.received_for(&hex).is_empty());
    assert!(gw.logs().contains("notification dropped"), "{}", gw.logs());
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "sygnal_apns_dropped_total{{pushkin=\"{APP}\",reason=\"payload_too_large\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn certificate_auth_presents_the_client_certificate() {
    let apns = FakeApns::start(true).await;
    let apps = format!(
        "{APP}:\n  type: apns\n  certfile: {}\n  topic: {TOPIC}\n  endpoint: {}\n  retry_delay_base: 0.05\n",
        apns.certfile().display(),
        apns.url()
    );
    let gw = gateway(&apns, &apps).await;
    let (pushkey, hex) = token(100);
    assert_eq!(
        gw.notify(notification(vec![device(&pushkey)], json!({})))
            .await,
        (200, json!({"rejected": []}))
    );
    let r = &apns.received_for(&hex)[0];
    assert_eq!(
        r.conn.peer_certificates.len(),
        1,
        "the client certificate was presented"
    );
    assert_eq!(r.header("authorization"), None);
    assert_eq!(r.header("apns-topic"), Some(TOPIC));

    let metrics = gw.metrics().await;
    let expiry = metrics
        .lines()
        .find(|l| l.starts_with(&format!("sygnal_client_cert_expiry{{pushkin=\"{APP}\"}}")))
        .unwrap_or_else(|| panic!("no expiry gauge in:\n{metrics}"));
    let value: f64 = expiry
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value");
    assert!(value > 1.7e9, "{expiry}");

    // Without a topic, no apns-topic header (APNs takes it from the certificate).
    let apps = format!(
        "{APP}:\n  type: apns\n  certfile: {}\n  endpoint: {}\n",
        apns.certfile().display(),
        apns.url()
    );
    let gw = gateway(&apns, &apps).await;
    let (pushkey, hex) = token(101);
    assert_eq!(
        gw.notify(notification(vec![device(&pushkey)], json!({})))
            .await
            .0,
        200
    );
    assert_eq!(apns.received_for(&hex)[0].header("apns-topic"), None);
}

#[tokio::test]
async fn untrusted_server_certificate_fails_the_push() {
    let apns = FakeApns::start(false).await;
    // No SSL_CERT_FILE: the test CA is not trusted.
    let gw = Gateway::builder(&token_app(&apns, "  max_tries: 1\n"))
        .start()
        .await;
    let (pushkey, _) = token(110);
    let (status, _) = gw
        .notify(notification(vec![device(&pushkey)], json!({})))
        .await;
    assert_eq!(status, 502);
    assert!(apns.received().is_empty());
}

#[tokio::test]
async fn proxy_with_basic_auth_carries_apns_and_recovers_from_broken_tunnels() {
    let apns = FakeApns::start(false).await;
    let proxy = ConnectProxy::start(Some(("user", "s3cret"))).await;
    let gw = Gateway::builder(&token_app(&apns, ""))
        .extra_yaml(&format!("proxy: {}", proxy.url()))
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await;
    let target = format!("localhost:{}", apns.server.addr.port());

    let (first, first_hex) = token(120);
    assert_eq!(
        gw.notify(notification(vec![device(&first)], json!({})))
            .await,
        (200, json!({"rejected": []}))
    );
    assert_eq!(proxy.tunnels(), std::slice::from_ref(&target));
    assert_eq!(proxy.rejected_auth(), 0);
    assert_eq!(apns.received_for(&first_hex).len(), 1);

    // The proxy drops every tunnel (Sygnal #304): the next pushes get through on a new one.
    proxy.break_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for seed in 121..124 {
        let (pushkey, hex) = token(seed);
        assert_eq!(
            gw.notify(notification(vec![device(&pushkey)], json!({})))
                .await,
            (200, json!({"rejected": []}))
        );
        assert!(!apns.received_for(&hex).is_empty());
    }
    assert_eq!(proxy.tunnels(), [target.clone(), target]);
    assert!(!gw.logs().contains("s3cret"), "proxy credentials logged");
}

/// An `https://` proxy: TLS to the proxy, then APNs' own TLS and HTTP/2 inside the tunnel.
#[tokio::test]
async fn apns_through_a_proxy_spoken_to_over_tls() {
    let apns = FakeApns::start(false).await;
    let proxy =
        ConnectProxy::start_tls(Some(("user", "s3cret")), apns.pki.server_config(&[])).await;
    assert!(proxy.url().starts_with("https://"), "{}", proxy.url());
    let gw = Gateway::builder(&token_app(&apns, ""))
        .extra_yaml(&format!("proxy: {}", proxy.url()))
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await;
    let (pushkey, hex) = token(125);
    assert_eq!(
        gw.notify(notification(vec![device(&pushkey)], json!({})))
            .await,
        (200, json!({"rejected": []})),
        "{}",
        gw.logs()
    );
    let target = format!("localhost:{}", apns.server.addr.port());
    assert_eq!(proxy.tunnels(), [target]);
    assert_eq!(proxy.rejected_auth(), 0);
    assert_eq!(apns.received_for(&hex).len(), 1);
    assert!(!gw.logs().contains("s3cret"), "proxy password logged");
}

#[tokio::test]
async fn wrong_proxy_credentials_fail_the_push() {
    let apns = FakeApns::start(false).await;
    let proxy = ConnectProxy::start(Some(("user", "s3cret"))).await;
    let wrong = proxy.url().replace("s3cret", "wrong");
    let gw = Gateway::builder(&token_app(&apns, "  max_tries: 1\n"))
        .extra_yaml(&format!("proxy: {wrong}"))
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await;
    let (pushkey, _) = token(125);
    let (status, _) = gw
        .notify(notification(vec![device(&pushkey)], json!({})))
        .await;
    assert_eq!(status, 502);
    assert!(proxy.rejected_auth() >= 1);
    assert!(apns.received().is_empty());
}

#[tokio::test]
async fn concurrent_notifications_share_one_connection() {
    let apns = FakeApns::start(false).await;
    // Slow answers, so the streams really overlap on the connection.
    apns.default_reply(Reply::ok().delayed(Duration::from_millis(200)));
    let gw = gateway(&apns, &token_app(&apns, "")).await;
    let pushes = (0..60u8).map(|seed| {
        let (pushkey, _) = token(seed);
        gw.notify(notification(vec![device(&pushkey)], json!({})))
    });
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all(pushes).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    // Concurrent, not one after another (60 x 200 ms would be 12 s).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(apns.server.connections(), 1);
    let received = apns.received();
    assert_eq!(received.len(), 60);
    assert!(received.iter().all(|r| r.conn.connection_id == 0));
    let mut ids: Vec<_> = received
        .iter()
        .filter_map(|r| r.header("apns-id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 60, "a fresh apns-id per push");
    // One provider token for all of them.
    let jwts: std::collections::HashSet<String> = received
        .iter()
        .map(|r| apns.verify_provider_token(r))
        .collect();
    assert_eq!(jwts.len(), 1);
}

#[tokio::test]
async fn max_concurrent_devices_bounds_one_notifications_fan_out() {
    let apns = FakeApns::start(false).await;
    apns.default_reply(Reply::ok().delayed(Duration::from_millis(100)));
    let gw = gateway(&apns, &token_app(&apns, "  max_concurrent_devices: 3\n")).await;
    let devices = (0..12u8).map(|seed| device(&token(140 + seed).0)).collect();
    let (status, answer) = gw.notify(notification(devices, json!({}))).await;
    assert_eq!((status, answer), (200, json!({"rejected": []})));
    assert_eq!(apns.received().len(), 12);
    assert_eq!(apns.max_in_flight(), 3, "concurrent, but at most 3");
}

#[tokio::test]
async fn metrics_use_sygnal_names() {
    let apns = FakeApns::start(false).await;
    let gw = gateway(&apns, &token_app(&apns, "  max_tries: 1\n")).await;
    let (ok, _) = token(130);
    let (gone, gone_hex) = token(131);
    let (busy, busy_hex) = token(132);
    apns.script(&gone_hex, [Reply::error(410, "Unregistered")]);
    apns.script(&busy_hex, [Reply::error(503, "ServiceUnavailable")]);
    for pushkey in [&ok, &gone, &busy] {
        gw.notify(notification(vec![device(pushkey)], json!({})))
            .await;
    }
    let metrics = gw.metrics().await;
    for expected in [
        format!("sygnal_apns_status_codes_total{{pushkin=\"{APP}\",code=\"200\"}} 1.0"),
        format!("sygnal_apns_status_codes_total{{pushkin=\"{APP}\",code=\"410\"}} 1.0"),
        format!("sygnal_apns_status_codes_total{{pushkin=\"{APP}\",code=\"503\"}} 1.0"),
        "sygnal_apns_request_time_count 3.0".to_owned(),
        "sygnal_active_apns_requests 0.0".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
    assert!(
        metrics.contains("sygnal_apns_request_time_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn config_errors_name_the_app_and_key() {
    let apns = FakeApns::start(false).await;
    std::fs::write(
        apns.dir().join("bad.p8"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("bad key");
    let keyfile = apns.keyfile().display().to_string();
    let bad_key = apns.dir().join("bad.p8").display().to_string();
    let cases = [
        (format!("{APP}:\n  type: apns\n  keyfile: /nonexistent.p8\n  key_id: K\n  team_id: T\n  topic: t\n"),
         format!("apps.{APP}.keyfile")),
        (format!("{APP}:\n  type: apns\n  keyfile: {keyfile}\n  team_id: T\n  topic: t\n"),
         format!("apps.{APP}.key_id")),
        (format!("{APP}:\n  type: apns\n  keyfile: {keyfile}\n  key_id: K\n  team_id: T\n"),
         format!("apps.{APP}.topic")),
        (format!("{APP}:\n  type: apns\n  keyfile: {bad_key}\n  key_id: K\n  team_id: T\n  topic: t\n"),
         format!("apps.{APP}.keyfile")),
        (format!("{APP}:\n  type: apns\n  certfile: /nonexistent.pem\n"), format!("apps.{APP}.certfile")),
        (format!("{APP}:\n  type: apns\n  keyfile: {keyfile}\n  key_id: K\n  team_id: T\n  topic: t\n  platform: staging\n"),
         format!("apps.{APP}.platform")),
        (format!("{APP}:\n  type: apns\n  keyfile: {keyfile}\n  key_id: K\n  team_id: T\n  topic: t\n  push_type: loud\n"),
         format!("apps.{APP}.push_type")),
    ];
    for (apps, expected) in cases {
        let (status, output) = Gateway::builder(&apps).start_expecting_failure().await;
        assert!(!status.success(), "{apps}");
        assert!(
            output.contains(&expected),
            "expected {expected:?} in:\n{output}"
        );
    }
}

#[tokio::test]
async fn unknown_keys_are_warned_and_sygnal_keys_are_accepted() {
    let apns = FakeApns::start(false).await;
    let extra = "  inflight_request_limit: 512\n  send_badge_counts: true\n  \
                 convert_device_token_to_hex: true\n  max_tries: 2\n  colour: blue\n";
    let gw = gateway(&apns, &token_app(&apns, extra)).await;
    assert!(
        gw.wait_for_log("key=colour", Duration::from_secs(5)).await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    for known in [
        "type",
        "inflight_request_limit",
        "send_badge_counts",
        "convert_device_token_to_hex",
        "retry_delay_base",
        "max_tries",
        "endpoint",
        "platform",
        "keyfile",
        "key_id",
        "team_id",
        "topic",
    ] {
        assert!(
            !logs.contains(&format!("key={known}\"")),
            "{known} reported unknown:\n{logs}"
        );
    }
}
