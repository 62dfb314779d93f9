//! The WebPush pushkin against a fake push service on loopback that decrypts every push with
//! the subscription's private key (RFC 8291, with an independent P-256 implementation) and
//! verifies its VAPID token (RFC 8292): payload rules, headers, answers, invalid subscriptions,
//! events_only, allowed_endpoints, truncation, metrics and config errors.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::serve::{serve_http, TestServer};

/// A browser's subscription: its keys, as the push service (this test) keeps them.
struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
}

impl Browser {
    fn new() -> Browser {
        let rng = SystemRandom::new();
        let mut scalar = [0u8; 32];
        let mut auth = [0u8; 16];
        rng.fill(&mut scalar).unwrap();
        rng.fill(&mut auth).unwrap();
        Browser {
            secret: p256::SecretKey::from_slice(&scalar).expect("a valid scalar"),
            auth,
        }
    }

    /// The pushkey: the p256dh public key, as browsers encode it.
    fn p256dh(&self) -> String {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    fn auth(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.auth)
    }

    /// Decrypts an `aes128gcm` body (RFC 8291 section 3.4, RFC 8188) into the payload JSON.
    fn decrypt(&self, body: &[u8]) -> Value {
        let (salt, rest) = body.split_at(16);
        let record_size = u32::from_be_bytes(rest[..4].try_into().unwrap());
        assert_eq!(record_size, 4096);
        let key_len = usize::from(rest[4]);
        let (as_public, record) = rest[5..].split_at(key_len);
        let sender = p256::PublicKey::from_sec1_bytes(as_public).expect("sender key is a point");
        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), sender.as_affine());
        struct Len(usize);
        impl KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let expand = |prk: &ring::hkdf::Prk, info: &[&[u8]], len: usize| {
            let mut out = vec![0u8; len];
            prk.expand(info, Len(len)).unwrap().fill(&mut out).unwrap();
            out
        };
        let ua_public = URL_SAFE_NO_PAD.decode(self.p256dh()).unwrap();
        let prk_key = Salt::new(HKDF_SHA256, &self.auth).extract(shared.raw_secret_bytes());
        let ikm = expand(&prk_key, &[b"WebPush: info\0", &ua_public, as_public], 32);
        let prk = Salt::new(HKDF_SHA256, salt).extract(&ikm);
        let cek = expand(&prk, &[b"Content-Encoding: aes128gcm\0"], 16);
        let nonce = expand(&prk, &[b"Content-Encoding: nonce\0"], 12);
        let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).unwrap());
        let mut record = record.to_vec();
        let plain = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                Aad::empty(),
                &mut record,
            )
            .expect("the body decrypts with the subscription's key");
        let end = plain.iter().rposition(|b| *b != 0).unwrap();
        assert_eq!(plain[end], 2, "last-record delimiter");
        serde_json::from_slice(&plain[..end]).expect("the payload is JSON")
    }
}

/// One push as the service received it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A scripted answer: the status, and the TTL header to grant.
type Scripted = (u16, Option<u64>);

/// The fake push service: answers each push with the next scripted (status, TTL header),
/// then 201.
#[derive(Clone, Default)]
struct PushService {
    script: Arc<Mutex<Vec<Scripted>>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl PushService {
    async fn start(script: &[Scripted]) -> (PushService, TestServer) {
        let service = PushService {
            script: Arc::new(Mutex::new(script.iter().rev().copied().collect())),
            ..PushService::default()
        };
        let router = Router::new()
            .route("/push/{id}", post(receive))
            .with_state(service.clone());
        (service, serve_http(router).await)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(
    State(service): State<PushService>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap) {
    service.received.lock().unwrap().push(Received {
        path: id,
        headers,
        body: body.to_vec(),
    });
    let (status, ttl) = service.script.lock().unwrap().pop().unwrap_or((201, None));
    let mut answer = HeaderMap::new();
    if let Some(ttl) = ttl {
        answer.insert("TTL", ttl.into());
    }
    (StatusCode::from_u16(status).unwrap(), answer)
}

/// The app's VAPID key, written as a PEM file: (its directory, the file, its public key).
fn vapid_key() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let public = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vapid.pem");
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(pkcs8.as_ref())
    );
    std::fs::write(&path, pem).unwrap();
    (dir, path, public)
}

fn app(key: &std::path::Path, extra: &str) -> String {
    format!(
        "com.example.web:\n  type: webpush\n  vapid_private_key: {}\n  vapid_contact_email: ops@example.org\n  max_tries: 2\n  retry_delay_base: 0.05\n{extra}",
        key.display()
    )
}

const LOOPBACK_ALLOWED: &str = "  allowed_endpoints: ['127.0.0.1']\n";

fn notify(browser: &Browser, endpoint: &str, data: Value, notification: Value) -> Value {
    let mut data = data;
    data["endpoint"] = json!(endpoint);
    data["auth"] = json!(browser.auth());
    let mut notification = notification;
    notification["devices"] =
        json!([{"app_id": "com.example.web", "pushkey": browser.p256dh(), "data": data}]);
    json!({"notification": notification})
}

fn message() -> Value {
    json!({
        "event_id": "$event", "room_id": "!room:example.org", "type": "m.room.message",
        "sender": "@alice:example.org", "sender_display_name": "Alice", "room_name": "Tea",
        "prio": "low", "counts": {"unread": 2},
        "content": {"msgtype": "m.text", "body": "hello", "formatted_body": "<b>hello</b>"}
    })
}

/// Checks the VAPID token against the app's public key: signature, aud, sub and exp.
fn verify_vapid(headers: &HeaderMap, public: &[u8], audience: &str) {
    let authorization = headers["authorization"].to_str().unwrap();
    let (token, key) = authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(",k="))
        .unwrap_or_else(|| panic!("not a VAPID authorization: {authorization}"));
    assert_eq!(
        URL_SAFE_NO_PAD.decode(key).unwrap(),
        public,
        "k= is the app's public key"
    );
    let (signed, signature) = token.rsplit_once('.').unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .expect("the VAPID signature verifies");
    let (header, claims) = signed.split_once('.').unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["aud"], audience);
    assert_eq!(claims["sub"], "mailto:ops@example.org");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        exp > now + 3600 && exp <= now + 24 * 3600,
        "exp {exp}, now {now}"
    );
}

#[tokio::test]
async fn a_browser_subscription_receives_the_decrypted_payload() {
    let (_dir, key, public) = vapid_key();
    let (service, server) = PushService::start(&[]).await;
    let gw = Gateway::builder(&app(&key, LOOPBACK_ALLOWED)).start().await;
    let browser = Browser::new();
    let endpoint = format!("{}/push/sub-1", server.url());
    let data =
        json!({"default_payload": {"url": "https://app.example.org"}, "only_last_per_room": true});
    assert_eq!(
        gw.notify(notify(&browser, &endpoint, data, message()))
            .await,
        (200, json!({"rejected": []}))
    );

    let received = service.received();
    assert_eq!(received.len(), 1);
    let push = &received[0];
    assert_eq!(push.path, "sub-1");
    assert_eq!(
        browser.decrypt(&push.body),
        json!({
            "url": "https://app.example.org", "event_id": "$event", "room_id": "!room:example.org",
            "type": "m.room.message", "sender": "@alice:example.org", "sender_display_name": "Alice",
            "room_name": "Tea", "unread": 2, "content": {"msgtype": "m.text", "body": "hello"}
        })
    );
    let header = |name: &str| {
        push.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(header("ttl").as_deref(), Some("900"));
    assert_eq!(header("urgency").as_deref(), Some("low"));
    assert_eq!(header("content-encoding").as_deref(), Some("aes128gcm"));
    // urlsafe_b64encode(blake2s(b"!room:example.org", digest_size=22).digest()), as Sygnal.
    assert_eq!(
        header("topic").as_deref(),
        Some("wMM9sx0_4uCn3aAmE6newKcNvYOuTQ==")
    );
    verify_vapid(&push.headers, &public, &server.url());

    // Sygnal's metric names.
    let metrics = gw.metrics().await;
    for name in [
        "sygnal_webpush_queue_time_count",
        "sygnal_webpush_request_time_count",
        "# TYPE sygnal_pending_webpush_requests gauge",
        "# TYPE sygnal_active_webpush_requests gauge",
        "sygnal_webpush_status_codes_total{pushkin=\"com.example.web\",code=\"201\"} 1.0",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // The pushkey (the browser's key) and the endpoint never reach the logs.
    let logs = gw.logs();
    assert!(
        !logs.contains(&browser.p256dh()) && !logs.contains("sub-1"),
        "{logs}"
    );
}

#[tokio::test]
async fn answers_reject_retry_or_drop_as_sygnal_would() {
    let (_dir, key, _) = vapid_key();
    let gw = Gateway::builder(&app(&key, &format!("{LOOPBACK_ALLOWED}  ttl: 60\n")))
        .start()
        .await;
    let cases: [(&[Scripted], u16, bool, usize); 6] = [
        (&[(404, None)], 200, true, 1),
        (&[(410, None)], 200, true, 1),
        // Other refusals: logged, not rejected, not retried.
        (&[(400, None)], 200, false, 1),
        (&[(403, None)], 200, false, 1),
        // Temporary: retried (max_tries 2), then 502 for the homeserver to retry.
        (&[(503, None), (201, None)], 200, false, 2),
        (&[(500, None), (429, None)], 502, false, 2),
    ];
    for (script, status, rejected, hits) in cases {
        let (service, server) = PushService::start(script).await;
        let browser = Browser::new();
        let endpoint = format!("{}/push/x", server.url());
        let (code, answer) = gw
            .notify(notify(&browser, &endpoint, json!({}), message()))
            .await;
        assert_eq!(code, status, "{script:?}: {answer}");
        if code == 200 {
            let expected = if rejected {
                json!([browser.p256dh()])
            } else {
                json!([])
            };
            assert_eq!(answer["rejected"], expected, "{script:?}");
        }
        assert_eq!(service.received().len(), hits, "{script:?}");
        assert_eq!(service.received()[0].headers["ttl"], "60");
    }
    // A TTL granted other than the one asked for is logged.
    let (_service, server) = PushService::start(&[(201, Some(30))]).await;
    let browser = Browser::new();
    let endpoint = format!("{}/push/ttl", server.url());
    assert_eq!(
        gw.notify(notify(&browser, &endpoint, json!({}), message()))
            .await
            .0,
        200
    );
    assert!(
        gw.wait_for_log("changed the TTL", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("changed the TTL"))
        .unwrap();
    assert!(
        line.contains("requested=60") && line.contains("granted=30"),
        "{line}"
    );
}

#[tokio::test]
async fn invalid_subscriptions_are_rejected_and_policy_refusals_are_not() {
    let (_dir, key, _) = vapid_key();
    let (service, server) = PushService::start(&[]).await;
    let gw = Gateway::builder(&app(&key, LOOPBACK_ALLOWED)).start().await;
    let browser = Browser::new();
    let endpoint = format!("{}/push/x", server.url());
    let device = |pushkey: &str, data: Value| json!({"notification": {"event_id": "$e", "devices": [{"app_id": "com.example.web", "pushkey": pushkey, "data": data}]}});
    let invalid = [
        device(&browser.p256dh(), Value::Null),
        device(&browser.p256dh(), json!({"endpoint": endpoint})),
        device(&browser.p256dh(), json!({"auth": browser.auth()})),
        device(
            &browser.p256dh(),
            json!({"endpoint": endpoint, "auth": "short"}),
        ),
        device(
            "not-a-key",
            json!({"endpoint": endpoint, "auth": browser.auth()}),
        ),
        device(
            &browser.p256dh(),
            json!({"endpoint": "not a url", "auth": browser.auth()}),
        ),
    ];
    for body in invalid {
        let pushkey = body["notification"]["devices"][0]["pushkey"].clone();
        assert_eq!(
            gw.notify(body.clone()).await,
            (200, json!({"rejected": [pushkey]})),
            "{body}"
        );
    }
    assert!(service.received().is_empty());

    // events_only: a badge-only update (no event id) is not sent, nor rejected.
    let badge = json!({"id": "", "type": null, "sender": "", "counts": {"unread": 0}});
    let events_only = json!({"events_only": true});
    assert_eq!(
        gw.notify(notify(
            &browser,
            &endpoint,
            events_only.clone(),
            badge.clone()
        ))
        .await,
        (200, json!({"rejected": []}))
    );
    assert!(service.received().is_empty());
    assert_eq!(
        gw.notify(notify(&browser, &endpoint, json!({}), badge))
            .await
            .0,
        200
    );
    assert_eq!(
        browser.decrypt(&service.received()[0].body),
        json!({"unread": 0})
    );
    assert_eq!(
        gw.notify(notify(&browser, &endpoint, events_only, message()))
            .await
            .0,
        200
    );
    assert_eq!(service.received().len(), 2);

    // A push service outside allowed_endpoints: nothing sent, not rejected, logged as an error.
    let elsewhere = Gateway::builder(&app(&key, "  allowed_endpoints: ['*.push.example.org']\n"))
        .start()
        .await;
    assert_eq!(
        elsewhere
            .notify(notify(&browser, &endpoint, json!({}), message()))
            .await,
        (200, json!({"rejected": []}))
    );
    assert!(
        elsewhere
            .wait_for_log("not in allowed_endpoints", Duration::from_secs(5))
            .await
    );
    assert!(elsewhere
        .logs()
        .lines()
        .any(|l| l.contains("not in allowed_endpoints") && l.contains("ERROR")));
    // Without allowed_endpoints, non-public endpoints are refused the same way.
    let open = Gateway::builder(&app(&key, "")).start().await;
    assert_eq!(
        open.notify(notify(&browser, &endpoint, json!({}), message()))
            .await,
        (200, json!({"rejected": []}))
    );
    assert!(
        open.wait_for_log("is not public", Duration::from_secs(5))
            .await,
        "{}",
        open.logs()
    );
    assert_eq!(
        service.received().len(),
        2,
        "no refused endpoint was contacted"
    );
}

#[tokio::test]
async fn long_bodies_are_cut_and_long_ciphertext_left_out() {
    let (_dir, key, _) = vapid_key();
    let (service, server) = PushService::start(&[]).await;
    let gw = Gateway::builder(&app(&key, LOOPBACK_ALLOWED)).start().await;
    let browser = Browser::new();
    let endpoint = format!("{}/push/long", server.url());
    let mut long = message();
    long["content"] = json!({"body": "ü".repeat(1500), "ciphertext": "c".repeat(2001), "algorithm": "m.megolm.v1.aes-sha2"});
    assert_eq!(
        gw.notify(notify(&browser, &endpoint, json!({}), long))
            .await
            .0,
        200
    );
    let payload = browser.decrypt(&service.received()[0].body);
    let body = payload["content"]["body"].as_str().unwrap();
    assert_eq!(body.chars().count(), 1000);
    assert!(body.ends_with("ü…"), "{body}");
    assert_eq!(payload["content"].get("ciphertext"), None);
    assert_eq!(payload["content"]["algorithm"], "m.megolm.v1.aes-sha2");
}

#[tokio::test]
async fn config_errors_name_the_key() {
    let (_dir, key, _) = vapid_key();
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "not a key").unwrap();
    let cases = [
        ("com.example.web:\n  type: webpush\n  vapid_contact_email: a@b\n".to_owned(), "apps.com.example.web.vapid_private_key: not set"),
        ("com.example.web:\n  type: webpush\n  vapid_private_key: /nonexistent.pem\n  vapid_contact_email: a@b\n".to_owned(), "apps.com.example.web.vapid_private_key: /nonexistent.pem"),
        (format!("com.example.web:\n  type: webpush\n  vapid_private_key: {}\n  vapid_contact_email: a@b\n", garbage.path().display()), "apps.com.example.web.vapid_private_key"),
        (format!("com.example.web:\n  type: webpush\n  vapid_private_key: {}\n", key.display()), "apps.com.example.web.vapid_contact_email: not set"),
        (app(&key, "  ttl: soon\n"), "apps.com.example.web.ttl"),
    ];
    for (apps, expected) in cases {
        let check = Gateway::builder(&apps).run(&["check"]);
        let stderr = String::from_utf8_lossy(&check.stderr);
        assert!(!check.status.success(), "{apps}");
        assert!(stderr.contains(expected), "{apps}: {stderr}");
    }
}

/// The sample config's webpush section, uncommented once, with a real key: a Sygnal section
/// works unchanged.
#[test]
fn the_sample_webpush_section_works_uncommented() {
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sygnal.yaml.sample"
    ))
    .unwrap();
    let start = sample
        .find("  #com.example.myapp.web:")
        .expect("a webpush example");
    let section: String = sample[start..]
        .lines()
        .take_while(|line| line.starts_with("  #"))
        .map(|line| format!("{}\n", line.replacen("  #", "", 1)))
        .collect();
    let (_dir, key, _) = vapid_key();
    let section = section.replace("/path/to/private.pem", &key.display().to_string());
    assert!(section.contains("type: webpush"), "{section}");
    let check = Gateway::builder(&section).run(&["check"]);
    assert!(
        check.status.success(),
        "{section}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[tokio::test]
async fn a_push_waits_for_a_connection_slot_no_longer_than_the_timeout() {
    // A push service that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hung.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let (_dir, key, _) = vapid_key();
    // (max_tries 2 from `app`: the one timed-out try is retried once.)
    let extra = format!("{LOOPBACK_ALLOWED}  max_connections: 1\n  timeout: 2\n");
    let gw = Gateway::builder(&app(&key, &extra)).start().await;
    let endpoint = format!("http://127.0.0.1:{port}/push/x");
    let browsers = [Browser::new(), Browser::new(), Browser::new()];
    // The first push takes the only slot and holds it while it hangs (2 s per try, two
    // tries); the two queued behind it, 0.3 s and 0.6 s later, wait 2 s at most for the slot
    // and fail then, instead of waiting for the first without bound.
    let push = |n: usize| {
        let body = notify(&browsers[n], &endpoint, json!({}), message());
        let gw = &gw;
        async move {
            tokio::time::sleep(Duration::from_millis(300 * n as u64)).await;
            let started = std::time::Instant::now();
            let (status, answer) = gw.notify(body).await;
            (status, answer, started.elapsed())
        }
    };
    let (first, second, third) = tokio::join!(push(0), push(1), push(2));
    assert_eq!(
        (first.0, second.0, third.0),
        (502, 502, 502),
        "{first:?} / {second:?} / {third:?}"
    );
    for queued in [&second, &third] {
        assert!(
            queued.2 >= Duration::from_millis(1800) && queued.2 < Duration::from_millis(3300),
            "a queued push was answered after {:?}",
            queued.2
        );
    }
    assert!(
        gw.wait_for_log(
            "no free push service connection slot",
            Duration::from_secs(5)
        )
        .await,
        "{}",
        gw.logs()
    );
    holder.abort();
}
