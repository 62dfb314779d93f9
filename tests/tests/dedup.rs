//! Duplicate suppression: a homeserver retrying the same event for the same device gets the
//! first attempt's answer and nothing is pushed twice; in memory, and across two gateway
//! processes sharing a real redis-server (Debian's `redis-server`; `.ci/run` installs it),
//! including Redis going away and coming back.
//!
//! The pushkin is the `scripted` fixture: pushkeys script each outcome, and it counts its
//! dispatches in `scripted_dispatches_total`.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use sygnal_tests::gateway::Gateway;
use sygnal_tests::redis::RedisServer;

const APP: &str = "com.example.dedup";

fn apps() -> String {
    format!("{APP}:\n  type: scripted\n")
}

/// A gateway with duplicate suppression on (off by default), unless `dedup_yaml` says.
async fn gateway(dedup_yaml: &str) -> Gateway {
    let dedup_yaml = if dedup_yaml.is_empty() {
        "dedup:\n  enabled: true\n"
    } else {
        dedup_yaml
    };
    Gateway::builder(&apps())
        .extra_yaml(dedup_yaml)
        .start()
        .await
}

fn body(event_id: Option<&str>, pushkey: &str) -> Value {
    let mut notification = json!({"room_id": "!room:x", "counts": {"unread": 1},
        "devices": [{"app_id": APP, "pushkey": pushkey}]});
    if let Some(event_id) = event_id {
        notification["event_id"] = json!(event_id);
    }
    json!({ "notification": notification })
}

/// A value of the gateway's /metrics (0 when the series is absent).
async fn metric(gateway: &Gateway, series: &str) -> f64 {
    let text = gateway.metrics().await;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn dispatches(gateway: &Gateway) -> f64 {
    metric(
        gateway,
        &format!("scripted_dispatches_total{{pushkin=\"{APP}\"}}"),
    )
    .await
}

/// Waits until `check` holds (re-evaluated every 50 ms), or panics after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_retry_gets_the_first_answer_and_nothing_is_pushed_twice() {
    let gw = gateway("").await;
    let ok = (200, json!({"rejected": []}));
    assert_eq!(gw.notify(body(Some("$e1"), "device-1")).await, ok);
    assert_eq!(gw.notify(body(Some("$e1"), "device-1")).await, ok);
    assert_eq!(dispatches(&gw).await, 1.0);

    // A rejection is answered again, so the homeserver still deletes the pusher.
    let rejected = (200, json!({"rejected": ["reject:device-2"]}));
    assert_eq!(
        gw.notify(body(Some("$e1"), "reject:device-2")).await,
        rejected
    );
    assert_eq!(
        gw.notify(body(Some("$e1"), "reject:device-2")).await,
        rejected
    );
    assert_eq!(dispatches(&gw).await, 2.0);

    // Another event, or another device, is not a duplicate.
    assert_eq!(gw.notify(body(Some("$e2"), "device-1")).await, ok);
    assert_eq!(gw.notify(body(Some("$e1"), "device-3")).await, ok);
    assert_eq!(dispatches(&gw).await, 4.0);

    let duplicates = metric(&gw, "sygnal_dedup_duplicates_total{outcome=\"delivered\"}").await;
    assert_eq!(duplicates, 1.0);
    let duplicates = metric(&gw, "sygnal_dedup_duplicates_total{outcome=\"rejected\"}").await;
    assert_eq!(duplicates, 1.0);
    assert!(gw
        .logs()
        .contains("duplicate notification answered from the first attempt"));
}

#[tokio::test]
async fn a_failed_first_attempt_does_not_suppress_the_retry() {
    let gw = gateway("").await;
    for status in [502, 502] {
        assert_eq!(
            gw.notify(body(Some("$e"), "temporary:device")).await.0,
            status
        );
    }
    assert_eq!(dispatches(&gw).await, 2.0);
    // A panic (500) is not remembered either.
    assert_eq!(gw.notify(body(Some("$e"), "panic:device")).await.0, 500);
    assert_eq!(gw.notify(body(Some("$e"), "panic:device")).await.0, 500);
    assert_eq!(dispatches(&gw).await, 4.0);
}

#[tokio::test]
async fn badge_updates_without_an_event_id_are_never_suppressed() {
    let gw = gateway("").await;
    let ok = (200, json!({"rejected": []}));
    for _ in 0..2 {
        assert_eq!(gw.notify(body(None, "device")).await, ok);
        assert_eq!(gw.notify(body(Some(""), "device")).await, ok);
    }
    assert_eq!(dispatches(&gw).await, 4.0);
}

/// Sends a notification for `pushkey`, and the same again 300 ms later while the first is in
/// flight: both answers, and how long the duplicate took.
async fn first_and_duplicate(
    gw: &Gateway,
    pushkey: &str,
) -> ((u16, Value), (u16, Value), Duration) {
    let first = gw.notify(body(Some("$e"), pushkey));
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let answer = gw.notify(body(Some("$e"), pushkey)).await;
        (answer, started.elapsed())
    };
    let (first, (second, waited)) = tokio::join!(first, second);
    (first, second, waited)
}

#[tokio::test]
async fn a_duplicate_in_flight_waits_for_the_first_outcome() {
    let gw = gateway("").await;
    let (first, second, waited) = first_and_duplicate(&gw, "delay:1200:device").await;
    assert_eq!(first, (200, json!({"rejected": []})));
    assert_eq!(second, first);
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
    assert_eq!(dispatches(&gw).await, 1.0);
}

#[tokio::test]
async fn the_wait_is_bounded_and_answered_retry_later() {
    let gw = gateway("dedup:\n  enabled: true\n  wait_timeout: 0.3\n").await;
    let (first, second, waited) = first_and_duplicate(&gw, "delay:2500:device").await;
    assert_eq!(first.0, 200);
    assert_eq!(second.0, 502, "{second:?}");
    assert!(waited < Duration::from_millis(2000), "{waited:?}");
    assert_eq!(dispatches(&gw).await, 1.0);
    let timeouts = metric(
        &gw,
        "sygnal_dedup_duplicates_total{outcome=\"still_in_flight\"}",
    )
    .await;
    assert_eq!(timeouts, 1.0);
}

#[tokio::test]
async fn outcomes_are_forgotten_after_the_window_and_the_switch_turns_it_off() {
    let gw = gateway("dedup:\n  enabled: true\n  window: 0.3\n").await;
    gw.notify(body(Some("$e"), "device")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.notify(body(Some("$e"), "device")).await;
    assert_eq!(dispatches(&gw).await, 2.0);

    let off = gateway("dedup:\n  enabled: no\n").await;
    off.notify(body(Some("$e"), "device")).await;
    off.notify(body(Some("$e"), "device")).await;
    assert_eq!(dispatches(&off).await, 2.0);
}

#[tokio::test]
async fn off_by_default_and_on_with_a_shared_store() {
    // Without a `dedup` section every request is delivered, as Sygnal does.
    let default = Gateway::builder(&apps()).start().await;
    default.notify(body(Some("$e"), "device")).await;
    default.notify(body(Some("$e"), "device")).await;
    assert_eq!(dispatches(&default).await, 2.0);

    // Giving replicas a Redis turns it on without `enabled`.
    let redis = RedisServer::start();
    let shared = gateway(&format!("dedup:\n  redis_url: '{}'\n", redis.url())).await;
    shared.notify(body(Some("$e"), "device")).await;
    shared.notify(body(Some("$e"), "device")).await;
    assert_eq!(dispatches(&shared).await, 1.0);
}

#[tokio::test]
async fn bad_dedup_config_is_refused_naming_the_key() {
    for (yaml, key) in [
        ("dedup:\n  window: 0\n", "dedup.window:"),
        ("dedup:\n  max_entries: 0\n", "dedup.max_entries:"),
        ("dedup:\n  redis_url: 'http://x'\n", "dedup.redis_url:"),
        ("dedup:\n  redis_url: 'rediss://x'\n", "dedup.redis_url:"),
    ] {
        let (status, output) = Gateway::builder(&apps())
            .extra_yaml(yaml)
            .start_expecting_failure()
            .await;
        assert!(!status.success(), "{yaml}");
        assert!(output.contains(key), "{yaml}: {output}");
    }
}

async fn replica(redis: &RedisServer, extra: &str) -> Gateway {
    gateway(&format!(
        "dedup:\n  redis_url: '{}'\n  redis_timeout: 0.5\n{extra}",
        redis.url()
    ))
    .await
}

async fn total_dispatches(replicas: &[&Gateway]) -> f64 {
    let mut total = 0.0;
    for gateway in replicas {
        total += dispatches(gateway).await;
    }
    total
}

#[tokio::test]
async fn two_gateways_sharing_redis_push_once() {
    let redis = RedisServer::start();
    let a = replica(&redis, "").await;
    let b = replica(&redis, "").await;
    let ok = (200, json!({"rejected": []}));
    let rejected = (200, json!({"rejected": ["reject:d2"]}));

    // The retry lands on the other replica.
    assert_eq!(a.notify(body(Some("$e1"), "d1")).await, ok);
    assert_eq!(b.notify(body(Some("$e1"), "d1")).await, ok);
    assert_eq!(b.notify(body(Some("$e1"), "reject:d2")).await, rejected);
    assert_eq!(a.notify(body(Some("$e1"), "reject:d2")).await, rejected);
    assert_eq!(total_dispatches(&[&a, &b]).await, 2.0);

    // While the first is in flight on one replica, the duplicate on the other waits for it.
    let key = "delay:1200:d3";
    let first = a.notify(body(Some("$e1"), key));
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.notify(body(Some("$e1"), key)).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first, ok);
    assert_eq!(second, ok);
    assert_eq!(total_dispatches(&[&a, &b]).await, 3.0);

    // A failure on one replica does not suppress the retry on the other.
    assert_eq!(a.notify(body(Some("$e1"), "temporary:d4")).await.0, 502);
    assert_eq!(b.notify(body(Some("$e1"), "temporary:d4")).await.0, 502);
    assert_eq!(total_dispatches(&[&a, &b]).await, 5.0);
    assert_eq!(
        metric(&a, "sygnal_dedup_store_up{store=\"redis\"}").await,
        1.0
    );
}

#[tokio::test]
async fn redis_going_away_fails_open_and_comes_back() {
    let mut redis = RedisServer::start();
    let a = replica(&redis, "").await;
    let b = replica(&redis, "").await;
    let ok = (200, json!({"rejected": []}));
    assert_eq!(a.notify(body(Some("$e1"), "d1")).await, ok);
    assert_eq!(b.notify(body(Some("$e1"), "d1")).await, ok);
    assert_eq!(total_dispatches(&[&a, &b]).await, 1.0);

    redis.kill();
    // Every notification is still delivered, promptly.
    for n in 0..5 {
        let started = Instant::now();
        let event = format!("$down{n}");
        assert_eq!(a.notify(body(Some(&event), "d1")).await, ok);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Duplicates on the same replica are still caught in memory.
        assert_eq!(a.notify(body(Some(&event), "d1")).await, ok);
    }
    assert_eq!(total_dispatches(&[&a, &b]).await, 6.0);
    assert!(
        a.logs().contains("duplicate store unreachable"),
        "{}",
        a.logs()
    );
    // Said once, not once per request.
    assert_eq!(a.logs().matches("duplicate store unreachable").count(), 1);
    assert_eq!(
        metric(&a, "sygnal_dedup_store_up{store=\"redis\"}").await,
        0.0
    );
    assert!(metric(&a, "sygnal_dedup_store_errors_total{store=\"redis\"}").await >= 1.0);

    redis.restart();
    // Once Redis answers again, the replicas share outcomes again.
    let mut n = 0;
    eventually(
        "dedup across replicas again",
        Duration::from_secs(20),
        || {
            n += 1;
            let event = format!("$up{n}");
            let (a, b) = (&a, &b);
            async move {
                let before = total_dispatches(&[a, b]).await;
                a.notify(body(Some(&event), "d1")).await;
                b.notify(body(Some(&event), "d1")).await;
                total_dispatches(&[a, b]).await == before + 1.0
            }
        },
    )
    .await;
    assert!(
        a.logs().contains("duplicate store reachable again"),
        "{}",
        a.logs()
    );
    assert_eq!(
        metric(&a, "sygnal_dedup_store_up{store=\"redis\"}").await,
        1.0
    );
}
