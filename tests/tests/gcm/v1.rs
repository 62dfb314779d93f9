//! HTTP v1 API: request shape, per-device requests, responses, OAuth tokens, concurrency, proxy.

use super::fake_fcm::Reply;
use super::*;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
async fn v1_max_concurrent_devices_bounds_one_notifications_fan_out() {
    let up = Upstream::http().await;
    up.fake.delay_ms.store(100, Ordering::SeqCst);
    let gateway = Gateway::builder(&up.v1_app("  max_concurrent_devices: 2\n"))
        .start()
        .await;
    let keys: Vec<String> = (0..8).map(|n| key(&format!("f{n}"))).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (status, answer) = gateway.notify(notification(&refs)).await;
    assert_eq!((status, rejected(&answer)), (200, vec![]));
    assert_eq!(up.fake.fcm_requests().len(), 8);
    assert_eq!(
        up.fake.max_in_flight.load(Ordering::SeqCst),
        2,
        "max_connections is 64: the device bound is what holds"
    );
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
        3,
        "the badge-only update with unread 0 is sent: it clears the badge"
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
    assert_eq!(
        requests[2].body["message"],
        json!({"token": "key-badge", "android": {"priority": "high"}, "data": {
            "sender": "", "prio": "high", "unread": "0",
        }})
    );
}

#[tokio::test]
async fn v1_through_an_authenticating_connect_proxy() {
    push_through_proxy(ProxySetting::Config).await;
}

#[tokio::test]
async fn v1_through_the_https_proxy_environment_variable() {
    push_through_proxy(ProxySetting::Environment).await;
}

/// An `https://` proxy: TLS to the proxy (trusted like any server), then TLS to FCM inside
/// the tunnel, for the token fetch and the push alike.
#[tokio::test]
async fn v1_through_a_proxy_spoken_to_over_tls() {
    push_through_proxy(ProxySetting::ConfigOverTls).await;
}

enum ProxySetting {
    /// The config's `proxy` key.
    Config,
    /// `HTTPS_PROXY`, used when the config has no `proxy`.
    Environment,
    /// The config's `proxy` key, naming an `https://` proxy.
    ConfigOverTls,
}

async fn push_through_proxy(setting: ProxySetting) {
    let pki = sygnal_tests::tls::TestPki::new();
    let up = Upstream::tls(&pki).await;
    let auth = Some(("proxyuser", "proxy-pass"));
    let proxy = match setting {
        ProxySetting::ConfigOverTls => {
            sygnal_tests::proxy::ConnectProxy::start_tls(auth, pki.server_config(&[])).await
        }
        _ => sygnal_tests::proxy::ConnectProxy::start(auth).await,
    };
    let proxy_url = proxy.url();
    let builder = Gateway::builder(&up.v1_app("")).env("SSL_CERT_FILE", pki.ca_file());
    let builder = match setting {
        ProxySetting::Config | ProxySetting::ConfigOverTls => {
            builder.extra_yaml(&format!("proxy: {proxy_url}"))
        }
        ProxySetting::Environment => builder.env("HTTPS_PROXY", &proxy_url),
    };
    let gateway = builder.start().await;
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
    let up = Upstream::tls(&pki).await;
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

/// FCM's API speaks HTTP/2: over TLS the pushkin negotiates it (ALPN) and, once connected,
/// sends concurrent pushes as streams over that connection; the token fetch has a connection of
/// its own. (A burst on a cold client opens a connection per request: the pool cannot know
/// before the handshake that the connection will be shared.)
#[tokio::test]
async fn v1_over_tls_multiplexes_pushes_over_one_http2_connection() {
    let pki = sygnal_tests::tls::TestPki::new();
    let up = Upstream::tls(&pki).await;
    up.fake.delay_ms.store(100, Ordering::SeqCst);
    let gateway = Gateway::builder(&up.v1_app(""))
        .env("SSL_CERT_FILE", pki.ca_file())
        .start()
        .await;
    let (status, _) = gateway.notify(notification(&[&key("first")])).await;
    assert_eq!(status, 200);
    let keys: Vec<String> = (0..20).map(|n| key(&format!("h{n}"))).collect();
    let answers = futures_util::future::join_all(
        keys.iter()
            .map(|pushkey| gateway.notify(notification(&[pushkey.as_str()]))),
    )
    .await;
    for (status, answer) in answers {
        assert_eq!((status, rejected(&answer)), (200, vec![]), "{answer}");
    }
    let requests = up.fake.fcm_requests();
    assert_eq!(requests.len(), 21);
    assert!(
        requests
            .iter()
            .all(|r| r.version == axum::http::Version::HTTP_2),
        "{:?}",
        requests.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    assert!(
        up.fake.max_in_flight.load(Ordering::SeqCst) > 1,
        "pushes were concurrent"
    );
    assert_eq!(up.fake.token_fetches(), 1);
    assert_eq!(
        up.server.connections(),
        2,
        "one connection for the pushes, one for the token"
    );
}
