//! End to end with a real homeserver: Synapse (installed from PyPI on first run, see
//! `sygnal_tests::synapse`) pushes through the real gateway to fake upstreams for a
//! UnifiedPush app, an FCM v1 app and an APNs app.
//!
//! Covered: the full and `event_id_only` formats, the badge-only update Synapse sends after a
//! read receipt (which must clear badges: `unread: 0` reaches every provider), and a pushkey
//! the upstream reports unregistered making Synapse delete the pusher.
//!
//! Run `cargo build --workspace` first.

#[allow(dead_code)] // shared with the FCM tests; not every helper is used here
#[path = "gcm/fake_fcm.rs"]
mod fake_fcm;

#[allow(dead_code)] // shared with the APNs tests
#[path = "apns/fake_apns.rs"]
mod fake_apns;

use base64::Engine as _;
use fake_apns::{FakeApns, KEY_ID, TEAM_ID, TOPIC};
use fake_fcm::{Fake, Reply};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use sygnal_tests::gateway::Gateway;
use sygnal_tests::serve::serve_http;
use sygnal_tests::synapse::{encode, eventually, Synapse, User};
use sygnal_tests::unifiedpush::Endpoint;

const UP_APP: &str = "org.example.up";
const FCM_APP: &str = "com.example.fcm";
const APNS_APP: &str = "com.example.ios";

/// Synapse pushes asynchronously: how long to wait for a push to arrive.
const PUSH_WAIT: Duration = Duration::from_secs(60);

const FCM_FULL: &str = "fcm-full";
const FCM_EIO: &str = "fcm-eio";
const FCM_GONE: &str = "fcm-gone";

/// An APNs pushkey (base64, as apps register it) and the hex token APNs sees.
fn apns_token(seed: u8) -> (String, String) {
    let bytes = [seed; 32];
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (base64::engine::general_purpose::STANDARD.encode(bytes), hex)
}

struct Pusher<'a> {
    app_id: &'a str,
    pushkey: String,
    event_id_only: bool,
}

async fn set_pusher(synapse: &Synapse, user: &User, gateway: &Gateway, pusher: &Pusher<'_>) {
    let mut data = json!({"url": format!("{}/_matrix/push/v1/notify", gateway.url())});
    if pusher.event_id_only {
        data["format"] = json!("event_id_only");
    }
    let body = json!({
        "kind": "http", "app_id": pusher.app_id, "pushkey": pusher.pushkey,
        "app_display_name": "sygnal tests", "device_display_name": "test device",
        "lang": "en", "data": data,
    });
    synapse
        .ok("POST", "/_matrix/client/v3/pushers/set", &user.token, body)
        .await;
}

/// The FCM v1 data sent for `token`, in order.
fn fcm_data(fake: &Fake, token: &str) -> Vec<Value> {
    fake.fcm_requests()
        .into_iter()
        .filter(|r| r.body["message"]["token"] == token)
        .map(|r| r.body["message"]["data"].clone())
        .collect()
}

/// The APNs payloads sent for `hex`, in order.
fn apns_payloads(apns: &FakeApns, hex: &str) -> Vec<Value> {
    apns.received_for(hex).iter().map(|r| r.json()).collect()
}

/// Waits until `found` yields at least `n` items and returns them.
async fn at_least(what: &str, n: usize, mut found: impl FnMut() -> Vec<Value>) -> Vec<Value> {
    eventually(what, PUSH_WAIT, || {
        Some(found()).filter(|items| items.len() >= n)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_pushes_through_the_gateway() {
    // Upstreams.
    let (endpoint, up_server) = Endpoint::start(&[]).await;
    let fcm = Fake::new();
    let fcm_server = serve_http(fake_fcm::router(Arc::clone(&fcm))).await;
    *fcm.token_uri.lock().unwrap() = format!("{}/token", fcm_server.url());
    let fcm_dir = tempfile::tempdir().unwrap();
    let account = fake_fcm::write_service_account(fcm_dir.path(), &fcm_server.url());
    fcm.script(
        FCM_GONE,
        vec![
            Reply::google_error(
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
                json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": "UNREGISTERED"}]),
            );
            10
        ],
    );
    let apns = FakeApns::start(false).await;

    // The gateway.
    let apps = format!(
        "{UP_APP}:\n  type: unifiedpush\n  allowed_endpoints: ['127.0.0.1']\n\
         {FCM_APP}:\n  type: gcm\n  api_version: v1\n  project_id: test-project\n  \
         service_account_file: {}\n  endpoint: {}\n\
         {APNS_APP}:\n  type: apns\n  keyfile: {}\n  key_id: {KEY_ID}\n  team_id: {TEAM_ID}\n  \
         topic: {TOPIC}\n  endpoint: {}\n",
        account.display(),
        fcm_server.url(),
        apns.keyfile().display(),
        apns.url()
    );
    let gateway = Gateway::builder(&apps)
        .env("SSL_CERT_FILE", apns.pki.ca_file())
        .start()
        .await;

    // The homeserver: alice writes to bob in a named room; bob has a pusher per app and format.
    let synapse = Synapse::start().await;
    let alice = synapse.register("alice").await;
    let bob = synapse.register("bob").await;
    let room = synapse
        .ok(
            "POST",
            "/_matrix/client/v3/createRoom",
            &alice.token,
            json!({"name": "push e2e", "preset": "private_chat", "invite": [bob.user_id]}),
        )
        .await["room_id"]
        .as_str()
        .expect("room_id")
        .to_owned();
    synapse
        .ok(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/join", encode(&room)),
            &bob.token,
            json!({}),
        )
        .await;

    let up_full = format!("{}/up/bob-full", up_server.url());
    let up_eio = format!("{}/up/bob-eio", up_server.url());
    let (apns_full, apns_full_hex) = apns_token(1);
    let (apns_eio, apns_eio_hex) = apns_token(2);
    let pushers = [
        (UP_APP, up_full.clone(), false),
        (UP_APP, up_eio.clone(), true),
        (FCM_APP, FCM_FULL.to_owned(), false),
        (FCM_APP, FCM_EIO.to_owned(), true),
        (FCM_APP, FCM_GONE.to_owned(), false),
        (APNS_APP, apns_full.clone(), false),
        (APNS_APP, apns_eio.clone(), true),
    ];
    for (app_id, pushkey, event_id_only) in pushers.iter().cloned() {
        let pusher = Pusher {
            app_id,
            pushkey,
            event_id_only,
        };
        set_pusher(&synapse, &bob, &gateway, &pusher).await;
    }
    assert_eq!(synapse.pushkeys(&bob).await.len(), pushers.len());

    // A message from alice.
    let text = "push through a real homeserver";
    let event_id = synapse
        .ok(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/txn1",
                encode(&room)
            ),
            &alice.token,
            json!({"msgtype": "m.text", "body": text}),
        )
        .await["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();

    // UnifiedPush: the notification as Synapse sent it, without devices.
    let full = at_least("the full UnifiedPush push", 1, || {
        endpoint.bodies_for("bob-full")
    })
    .await;
    let n = &full[0]["notification"];
    assert_eq!(n["event_id"], event_id.as_str(), "{n}");
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id.as_str());
    assert_eq!(n["room_name"], "push e2e");
    assert_eq!(n["content"], json!({"msgtype": "m.text", "body": text}));
    assert_eq!(n["counts"], json!({"unread": 1}));
    assert_eq!(n["prio"], "high");
    assert!(n.get("devices").is_none(), "devices are not forwarded: {n}");
    let eio = at_least("the event_id_only UnifiedPush push", 1, || {
        endpoint.bodies_for("bob-eio")
    })
    .await;
    assert_eq!(
        eio[0],
        json!({"notification": {"event_id": event_id, "room_id": room,
                                "counts": {"unread": 1}, "prio": "high"}})
    );

    // FCM v1: data values are strings; event_id_only carries ids and counts only.
    let full = at_least("the full FCM push", 1, || fcm_data(&fcm, FCM_FULL)).await;
    assert_eq!(full[0]["event_id"], event_id.as_str(), "{}", full[0]);
    assert_eq!(full[0]["room_id"], room.as_str());
    assert_eq!(full[0]["type"], "m.room.message");
    assert_eq!(full[0]["sender"], alice.user_id.as_str());
    assert_eq!(full[0]["content_body"], text);
    assert_eq!(full[0]["unread"], "1");
    let eio = at_least("the event_id_only FCM push", 1, || fcm_data(&fcm, FCM_EIO)).await;
    assert_eq!(
        eio[0],
        json!({"event_id": event_id, "room_id": room, "prio": "high", "unread": "1"})
    );

    // APNs: an alert for the full format, ids and the unread count for event_id_only.
    let full = at_least("the full APNs push", 1, || {
        apns_payloads(&apns, &apns_full_hex)
    })
    .await;
    assert_eq!(
        full[0]["aps"]["alert"]["loc-key"], "MSG_FROM_USER_IN_ROOM_WITH_CONTENT",
        "{}",
        full[0]
    );
    assert_eq!(full[0]["aps"]["alert"]["loc-args"][1], "push e2e");
    assert_eq!(full[0]["aps"]["alert"]["loc-args"][2], text);
    assert_eq!(full[0]["aps"]["badge"], 1);
    assert_eq!(full[0]["event_id"], event_id.as_str());
    let eio = at_least("the event_id_only APNs push", 1, || {
        apns_payloads(&apns, &apns_eio_hex)
    })
    .await;
    assert_eq!(
        eio[0],
        json!({"room_id": room, "event_id": event_id, "unread_count": 1})
    );

    // The pushkey FCM called unregistered: the gateway rejected it, so Synapse deleted it.
    let deadline = std::time::Instant::now() + PUSH_WAIT;
    let remaining = loop {
        let keys = synapse.pushkeys(&bob).await;
        if !keys.iter().any(|k| k == FCM_GONE) {
            break keys;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Synapse kept the rejected pusher: {keys:?}\n{}",
            synapse.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(remaining.len(), pushers.len() - 1, "{remaining:?}");
    assert!(
        !fcm_data(&fcm, FCM_GONE).is_empty(),
        "the unregistered pushkey was tried"
    );

    // Bob reads the message: Synapse sends a badge-only update (no event, type null, sender
    // ""), which must reach every device with unread 0 so the badge clears.
    synapse
        .ok(
            "POST",
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                encode(&room),
                encode(&event_id)
            ),
            &bob.token,
            json!({}),
        )
        .await;
    for token in ["bob-full", "bob-eio"] {
        let bodies = at_least("the UnifiedPush badge update", 2, || {
            endpoint.bodies_for(token)
        })
        .await;
        let badge = &bodies[1]["notification"];
        assert_eq!(badge["counts"], json!({"unread": 0}), "{badge}");
        assert_eq!(badge["type"], Value::Null, "{badge}");
        assert_eq!(badge["sender"], "", "{badge}");
        assert!(badge.get("event_id").is_none(), "{badge}");
    }
    for token in [FCM_FULL, FCM_EIO] {
        let data = at_least("the FCM badge update", 2, || fcm_data(&fcm, token)).await;
        assert_eq!(
            data[1],
            json!({"sender": "", "prio": "high", "unread": "0"}),
            "{token}"
        );
    }
    for hex in [&apns_full_hex, &apns_eio_hex] {
        let payloads = at_least("the APNs badge update", 2, || apns_payloads(&apns, hex)).await;
        assert_eq!(payloads[1], json!({"aps": {"badge": 0}}));
    }
}
