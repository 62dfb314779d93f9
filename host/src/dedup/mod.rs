//! Duplicate suppression: a homeserver that timed out or got a 5xx sends the same event for the
//! same device again. The gateway answers such a retry with the first attempt's outcome instead
//! of pushing twice.
//!
//! A pair is (event_id, app_id, pushkey). Its outcome (delivered, or rejected) is remembered
//! for `dedup.window`; a failed attempt remembers nothing, so the retry delivers. A duplicate
//! arriving while the first attempt is still being delivered waits for its outcome, at most
//! `dedup.wait_timeout`, then is answered 502 (retry later) rather than pushed twice.
//! Notifications without an event_id (badge updates) are never suppressed.
//!
//! Outcomes live in memory ([`memory`]) and, with `dedup.redis_url`, in Redis ([`redis`]) so
//! replicas behind one load balancer share them. When Redis fails the gateway keeps delivering
//! (each replica then suppresses only its own duplicates), says so in its log (at most once a
//! minute) and in `sygnal_dedup_store_up` / `sygnal_dedup_store_errors_total`, and uses Redis
//! again as soon as it answers.

mod memory;
pub mod redis;

use crate::apps::AppTable;
use crate::config::DedupConfig;
use crate::dispatch::{dispatch, Failure};
use crate::metrics::{label, registry, Kind, Series};
use crate::notify::{DeviceRef, ParsedNotify};
use memory::{MemoryClaim, MemoryGuard, MemoryStore};
use redis::{RedisClient, RedisUrl, Reply};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pair's identity: the first 128 bits of SHA-256 over event id, app id and pushkey (so
/// Redis never holds a pushkey).
pub type Key = [u8; 16];

/// What the first attempt answered for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Pushed.
    Delivered,
    /// The provider rejected the pushkey (it was in `rejected`).
    Rejected,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Rejected => "rejected",
        }
    }
}

/// How often Redis being unreachable is repeated in the log.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How often a duplicate asks Redis whether another replica finished.
const POLL_EVERY: Duration = Duration::from_millis(25);
/// Redis' in-flight marker outlives a crashed replica by at most this much beyond the wait.
const INFLIGHT_MARGIN: Duration = Duration::from_secs(60);

/// Duplicate suppression, or nothing when it is off (see [`DedupConfig::is_enabled`]).
#[derive(Clone, Default)]
pub struct Dedup {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    memory: Arc<MemoryStore>,
    shared: Option<Shared>,
    window: Duration,
    wait: Duration,
    duplicates: [Arc<Series>; 2],
    still_in_flight: Arc<Series>,
}

/// The Redis store and its health.
struct Shared {
    client: RedisClient,
    address: String,
    up: AtomicBool,
    /// Seconds since `started` of the last "unreachable" warning.
    last_warning: AtomicU64,
    started: Instant,
    up_gauge: Arc<Series>,
    errors: Arc<Series>,
    tokens: AtomicU64,
    instance: u64,
}

enum Claimed {
    /// Deliver it, then report through the guard.
    Owner(Guard),
    /// Answered before.
    Known(Outcome),
    /// Another request is still delivering it after the wait.
    StillInFlight,
}

/// The duty to deliver one pair, locally and (when Redis answered) across replicas. Dropped
/// without [`Inner::finish`] (the delivery failed or was cancelled), it releases both claims so
/// the retry delivers.
struct Guard {
    memory: Option<MemoryGuard>,
    key: Key,
    /// Our in-flight marker's value in Redis, when we hold one.
    redis_token: Option<Vec<u8>>,
    inner: Arc<Inner>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(token) = self.redis_token.take() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        let key = redis_key(&self.key);
        // Deletes the marker only if it is still ours (it may have expired and been retaken).
        tokio::spawn(async move {
            if let Some(shared) = &inner.shared {
                let released = shared
                    .client
                    .command(&[b"EVAL", RELEASE_SCRIPT, b"1", &key, &token])
                    .await;
                if let Err(err) = released {
                    shared.failed(&err);
                }
            }
        });
    }
}

/// Deletes KEYS[1] if it still holds ARGV[1].
const RELEASE_SCRIPT: &[u8] =
    b"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

impl Dedup {
    /// Builds the stores from `dedup`; registers the metrics.
    pub fn new(config: &DedupConfig) -> Result<Dedup, String> {
        if !config.is_enabled() {
            return Ok(Dedup::default());
        }
        let registry = registry();
        let series = |name: &str, help: &str, kind: Kind, labels: &str| {
            registry.try_series(name, help, kind, labels)
        };
        let duplicate = |outcome: &str| {
            series(
                "sygnal_dedup_duplicates",
                "Notifications answered from an earlier attempt's outcome instead of being pushed again",
                Kind::Counter,
                &label("outcome", outcome),
            )
        };
        let store_up = |store: &str| {
            series(
                "sygnal_dedup_store_up",
                "Whether the duplicate store answers (1) or the gateway delivers without it (0)",
                Kind::Gauge,
                &label("store", store),
            )
        };
        store_up("memory")?.set(1.0);
        let window = Duration::from_secs_f64(config.window);
        let shared = match &config.redis_url {
            None => None,
            Some(url) => {
                let url = RedisUrl::parse(url).map_err(|err| format!("dedup.redis_url: {err}"))?;
                let up_gauge = store_up("redis")?;
                up_gauge.set(1.0);
                Some(Shared {
                    address: url.address(),
                    client: RedisClient::new(url, Duration::from_secs_f64(config.redis_timeout)),
                    up: AtomicBool::new(true),
                    last_warning: AtomicU64::new(0),
                    started: Instant::now(),
                    up_gauge,
                    errors: series(
                        "sygnal_dedup_store_errors",
                        "Failed requests to the shared duplicate store",
                        Kind::Counter,
                        &label("store", "redis"),
                    )?,
                    tokens: AtomicU64::new(0),
                    instance: instance_id(),
                })
            }
        };
        Ok(Dedup {
            inner: Some(Arc::new(Inner {
                memory: MemoryStore::new(window, config.max_entries),
                shared,
                window,
                wait: Duration::from_secs_f64(config.wait_timeout),
                duplicates: [
                    duplicate(Outcome::Delivered.label())?,
                    duplicate(Outcome::Rejected.label())?,
                ],
                still_in_flight: duplicate("still_in_flight")?,
            })),
        })
    }

    /// Dispatches `parsed` (bounded by `deadline`, see [`dispatch`]), except to devices that
    /// already got this event: those are answered with the earlier outcome. Waiting for a first
    /// attempt in flight is bounded by `dedup.wait_timeout` and by `deadline`.
    pub async fn dispatch(
        &self,
        table: Arc<AppTable>,
        request_id: &str,
        parsed: &ParsedNotify<'_>,
        deadline: Instant,
    ) -> Result<Vec<String>, Failure> {
        let Some(inner) = &self.inner else {
            return dispatch(table, request_id, parsed, deadline).await;
        };
        let Some(event_id) = event_id(parsed) else {
            return dispatch(table, request_id, parsed, deadline).await;
        };
        let wait_until = deadline.min(Instant::now() + inner.wait);
        let mut rejected = Vec::new();
        let mut guards = Vec::with_capacity(parsed.devices.len());
        let mut devices = Vec::with_capacity(parsed.devices.len());
        for device in &parsed.devices {
            let key = key(&event_id, &device.app_id, &device.pushkey);
            match inner.claim(key, wait_until).await {
                Claimed::Owner(guard) => {
                    guards.push(guard);
                    devices.push(DeviceRef {
                        app_id: Cow::Borrowed(&device.app_id),
                        pushkey: Cow::Borrowed(&device.pushkey),
                        raw: device.raw,
                    });
                }
                Claimed::Known(outcome) => {
                    inner.duplicates[outcome as usize].inc();
                    tracing::info!(
                        outcome = outcome.label(),
                        "duplicate notification answered from the first attempt"
                    );
                    if outcome == Outcome::Rejected {
                        rejected.push(device.pushkey.clone().into_owned());
                    }
                }
                Claimed::StillInFlight => {
                    inner.still_in_flight.inc();
                    tracing::warn!(
                        wait = inner.wait.as_secs_f64(),
                        "an identical notification is still being delivered: answering retry-later"
                    );
                    // The guards taken so far are dropped: those devices were not pushed.
                    return Err(Failure::Dispatch);
                }
            }
        }
        if devices.is_empty() {
            return Ok(rejected);
        }
        let subset = ParsedNotify {
            notification: parsed.notification,
            event_id: Some(event_id),
            devices,
        };
        let result = dispatch(table, request_id, &subset, deadline).await;
        if let Ok(newly_rejected) = &result {
            for (guard, device) in guards.into_iter().zip(&subset.devices) {
                let outcome = if newly_rejected.iter().any(|k| *k == device.pushkey) {
                    Outcome::Rejected
                } else {
                    Outcome::Delivered
                };
                inner.finish(guard, outcome).await;
            }
        }
        // On failure the guards drop: nothing is remembered and the retry delivers.
        result.map(|mut newly_rejected| {
            newly_rejected.extend(rejected);
            newly_rejected
        })
    }
}

impl Inner {
    fn guard(
        self: &Arc<Self>,
        key: Key,
        memory: MemoryGuard,
        redis_token: Option<Vec<u8>>,
    ) -> Guard {
        Guard {
            memory: Some(memory),
            key,
            redis_token,
            inner: Arc::clone(self),
        }
    }

    async fn claim(self: &Arc<Self>, key: Key, wait_until: Instant) -> Claimed {
        let deadline = tokio::time::Instant::from_std(wait_until);
        loop {
            let mut waiting = match self.memory.claim(key) {
                MemoryClaim::Known(outcome) => return Claimed::Known(outcome),
                MemoryClaim::Owner(memory) => {
                    return self.claim_shared(key, memory, deadline).await
                }
                MemoryClaim::InFlight(receiver) => receiver,
            };
            // Wakes when the first attempt answers, or fails (the sender goes away).
            let woke = tokio::time::timeout_at(deadline, waiting.changed()).await;
            if woke.is_err() {
                return Claimed::StillInFlight;
            }
        }
    }

    /// Local claim held: claims the pair in Redis too, or learns its outcome there.
    async fn claim_shared(
        self: &Arc<Self>,
        key: Key,
        memory: MemoryGuard,
        deadline: tokio::time::Instant,
    ) -> Claimed {
        let Some(shared) = &self.shared else {
            return Claimed::Owner(self.guard(key, memory, None));
        };
        let redis_key = redis_key(&key);
        let token = shared.token();
        let marker_ms = (self.wait + INFLIGHT_MARGIN).as_millis().to_string();
        loop {
            let claimed = shared
                .client
                .command(&[
                    b"SET",
                    &redis_key,
                    &token,
                    b"NX",
                    b"PX",
                    marker_ms.as_bytes(),
                ])
                .await;
            let found = match claimed {
                Ok(Reply::Status(_)) => {
                    shared.healthy();
                    return Claimed::Owner(self.guard(key, memory, Some(token)));
                }
                Ok(Reply::Nil) => shared.client.command(&[b"GET", &redis_key]).await,
                Ok(other) => Err(format!("unexpected answer to SET: {other:?}")),
                Err(err) => Err(err),
            };
            match found {
                Ok(Reply::Bulk(value)) if value == b"d" || value == b"r" => {
                    shared.healthy();
                    let outcome = if value == b"d" {
                        Outcome::Delivered
                    } else {
                        Outcome::Rejected
                    };
                    memory.finish(outcome);
                    return Claimed::Known(outcome);
                }
                // Another replica is delivering it, or just gave up: look again shortly.
                Ok(Reply::Bulk(_)) | Ok(Reply::Nil) => {
                    shared.healthy();
                    if tokio::time::Instant::now() + POLL_EVERY >= deadline {
                        return Claimed::StillInFlight;
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Ok(other) => {
                    shared.failed(&format!("unexpected answer to GET: {other:?}"));
                    return Claimed::Owner(self.guard(key, memory, None));
                }
                Err(err) => {
                    // Fail open: deliver, suppressing only this replica's duplicates.
                    shared.failed(&err);
                    return Claimed::Owner(self.guard(key, memory, None));
                }
            }
        }
    }

    async fn finish(&self, mut guard: Guard, outcome: Outcome) {
        if let Some(memory) = guard.memory.take() {
            memory.finish(outcome);
        }
        let (Some(shared), Some(_)) = (&self.shared, guard.redis_token.take()) else {
            return;
        };
        let value: &[u8] = match outcome {
            Outcome::Delivered => b"d",
            Outcome::Rejected => b"r",
        };
        let window_ms = self.window.as_millis().max(1).to_string();
        let key = redis_key(&guard.key);
        match shared
            .client
            .command(&[b"SET", &key, value, b"PX", window_ms.as_bytes()])
            .await
        {
            Ok(_) => shared.healthy(),
            Err(err) => shared.failed(&err),
        }
    }
}

impl Shared {
    fn token(&self) -> Vec<u8> {
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        format!("f:{:x}:{n}", self.instance).into_bytes()
    }

    fn healthy(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.up_gauge.set(1.0);
            tracing::info!(redis = %self.address, "duplicate store reachable again: duplicates are suppressed across replicas");
        }
    }

    fn failed(&self, err: &str) {
        self.errors.inc();
        let was_up = self.up.swap(false, Ordering::AcqRel);
        self.up_gauge.set(0.0);
        let now = self.started.elapsed().as_secs().max(1);
        let last = self.last_warning.load(Ordering::Relaxed);
        if was_up || now.saturating_sub(last) >= WARN_EVERY.as_secs() {
            self.last_warning.store(now, Ordering::Relaxed);
            tracing::warn!(redis = %self.address, error = %err, "duplicate store unreachable: delivering without cross-replica duplicate suppression");
        }
    }
}

fn instance_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// The notification's event_id, when it has a non-empty one.
fn event_id<'a>(parsed: &ParsedNotify<'a>) -> Option<Cow<'a, str>> {
    parsed.event_id.clone().filter(|id| !id.is_empty())
}

fn key(event_id: &str, app_id: &str, pushkey: &str) -> Key {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (index, part) in [event_id, app_id, pushkey].iter().enumerate() {
        if index > 0 {
            context.update(&[0]);
        }
        context.update(part.as_bytes());
    }
    let digest = context.finish();
    let mut key = [0; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

fn redis_key(key: &Key) -> Vec<u8> {
    let mut out = b"sygnal:dedup:".to_vec();
    for byte in key {
        out.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    out
}
