//! Legacy API (`/fcm/send`): one request per app, per-result errors, status codes.

use super::fake_fcm::Reply;
use super::*;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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

#[tokio::test]
async fn legacy_splits_batches_at_1000_registration_ids() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.legacy_app("")).start().await;
    let keys: Vec<String> = (0..2500).map(|n| format!("reg-{n}")).collect();
    let gone = [&keys[5], &keys[1500], &keys[2499]];
    up.fake
        .unregistered
        .lock()
        .unwrap()
        .extend(gone.iter().map(|k| k.to_string()));
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (status, answer) = gateway.notify(notification(&refs)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        rejected(&answer),
        gone.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        "each batch's rejections map back to its own pushkeys"
    );

    let mut batches: Vec<Vec<String>> = up
        .fake
        .fcm_requests()
        .iter()
        .map(|r| {
            assert_eq!(
                r.body["data"],
                legacy_data(),
                "every batch has the same data"
            );
            serde_json::from_value(r.body["registration_ids"].clone()).unwrap()
        })
        .collect();
    batches.sort_by_key(|batch| keys.iter().position(|k| *k == batch[0]));
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    assert_eq!(batches.concat(), keys, "every device in exactly one batch");
}

#[tokio::test]
async fn legacy_badge_only_update_with_zero_unread_clears_the_badge() {
    let up = Upstream::http().await;
    let gateway = Gateway::builder(&up.legacy_app("")).start().await;
    let a = key("a");
    let badge = json!({"notification": {"id": "", "type": null, "sender": "", "counts": {"unread": 0},
        "devices": [{"app_id": APP, "pushkey": a, "pushkey_ts": 1, "data": {}}]}});
    let (status, answer) = gateway.notify(badge).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));
    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 1, "the badge update is sent");
    assert_eq!(
        requests[0].body,
        json!({"to": a, "priority": "high", "data": {"sender": "", "prio": "high", "unread": 0}})
    );
}

/// With the default `max_connections` (64), a burst holds at most 64 requests in flight, and
/// the pool keeps the connections it opened for the next burst.
#[tokio::test]
async fn legacy_default_max_connections_bounds_requests_and_keeps_connections() {
    let up = Upstream::http().await;
    up.fake.delay_ms.store(200, Ordering::SeqCst);
    let gateway = Gateway::builder(&up.legacy_app("")).start().await;
    let burst = |wave: &'static str| {
        let gateway = &gateway;
        futures_util::future::join_all((0..160).map(move |n| async move {
            let pushkey = key(&format!("{wave}{n}"));
            let (status, answer) = gateway.notify(notification(&[&pushkey])).await;
            assert_eq!((status, rejected(&answer)), (200, vec![]), "{answer}");
        }))
    };
    burst("a").await;
    assert_eq!(up.fake.max_in_flight.load(Ordering::SeqCst), 64);
    let opened = up.server.connections();
    assert!(
        opened >= 64,
        "{opened} connections for 64 requests in flight"
    );
    burst("b").await;
    let reopened = up.server.connections() - opened;
    assert!(
        reopened <= 4,
        "the second burst opened {reopened} more connections (the first opened {opened})"
    );
    assert_eq!(up.fake.max_in_flight.load(Ordering::SeqCst), 64);
}

/// An HTTPS upstream that only speaks HTTP/1.1: the first push learns it (through hyper's
/// pool), the next ones go over the pushkin's own HTTP/1.1 connections, one at a time over one
/// kept connection.
#[tokio::test]
async fn legacy_over_tls_speaking_http1_keeps_one_connection() {
    let pki = sygnal_tests::tls::TestPki::new();
    let up = Upstream::tls_offering(&pki, &[b"http/1.1"]).await;
    let gateway = Gateway::builder(&up.legacy_app(""))
        .env("SSL_CERT_FILE", pki.ca_file())
        .start()
        .await;
    for n in 0..6 {
        let pushkey = key(&format!("tls{n}"));
        let (status, answer) = gateway.notify(notification(&[&pushkey])).await;
        assert_eq!((status, rejected(&answer)), (200, vec![]), "{answer}");
    }
    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 6);
    assert!(
        requests
            .iter()
            .all(|r| r.version == axum::http::Version::HTTP_11),
        "{:?}",
        requests.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    assert_eq!(
        up.server.connections(),
        2,
        "one connection for the first push (hyper's pool), one for the rest"
    );
}
