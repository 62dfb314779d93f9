//! WebPush pushkin (`type: webpush`): browser pushes, as Sygnal's webpushpushkin sends them.
//!
//! The pushkey is the subscription's `p256dh` key; the pusher's `data` holds the subscription's
//! `endpoint` and `auth`. Each push is a JSON payload ([`payload`]) encrypted for the
//! subscription (RFC 8291 `aes128gcm`) and authorized with the app's VAPID key (RFC 8292)
//! ([`crypto`]), POSTed to the endpoint with `TTL`, `Urgency` and, with `only_last_per_room`,
//! `Topic`. 404 and 410 reject the pushkey; 408, 429 and 5xx are retried (`max_tries`,
//! `retry_delay_base`) and then answered 502; other answers are logged and counted, the pushkey
//! kept (Sygnal's rule). The endpoint comes from the client: `allowed_endpoints` restricts
//! the push services used, and non-public addresses are refused unless allowed there.

pub mod blake2s;
pub mod crypto;
pub mod payload;
mod vapid;

use crypto::{Subscription, VapidKey};
use ring::rand::SystemRandom;
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use sygnal_plugin_api::http::{
    self, reqwest, Allowlist, ClientOptions, ConnectionSlots, EndpointGuard, Refusal,
    RetrySettings, Sender, SlotMetrics, Verdict,
};
use sygnal_plugin_api::{
    export_pushkin, serde_json, tracing, Device, FanOut, Labels, Metrics, Notification, PushError,
    Pushkin, PushkinContext,
};
use vapid::VapidSigner;

/// Seconds a push service keeps an undelivered push (`ttl`), as Sygnal.
pub const DEFAULT_TTL: u64 = 15 * 60;
/// Requests in flight per app (`max_connections`), as Sygnal.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20;

const QUEUE_TIME: (&str, &str) = (
    "sygnal_webpush_queue_time",
    "Time taken waiting for a connection to WebPush endpoint",
);
const REQUEST_TIME: (&str, &str) = (
    "sygnal_webpush_request_time",
    "Time taken to send HTTP request to WebPush endpoint",
);
const PENDING: (&str, &str) = (
    "sygnal_pending_webpush_requests",
    "Number of WebPush requests waiting for a connection",
);
const ACTIVE: (&str, &str) = (
    "sygnal_active_webpush_requests",
    "Number of WebPush requests in flight",
);
const STATUS_CODES: (&str, &str) = (
    "sygnal_webpush_status_codes",
    "Number of HTTP response status codes received from WebPush endpoints",
);

/// The app section (Sygnal's keys; `max_tries`, `retry_delay_base` and
/// `max_concurrent_devices` are read by the SDK).
#[derive(Debug, Deserialize)]
struct Config {
    vapid_private_key: Option<String>,
    vapid_contact_email: Option<String>,
    allowed_endpoints: Option<Vec<String>>,
    ttl: Option<serde_json::Value>,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// Seconds one request may take, response included.
    #[serde(default = "default_timeout")]
    timeout: f64,
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_timeout() -> f64 {
    10.0
}

/// The WebPush pushkin for one app.
pub struct WebPush {
    vapid: VapidSigner,
    ttl: u64,
    guard: EndpointGuard,
    sender: Sender,
    slots: ConnectionSlots,
    fan_out: FanOut,
    rng: SystemRandom,
    metrics: Metrics,
    no_labels: Labels,
    pushkin_labels: Labels,
}

impl Pushkin for WebPush {
    const KIND: &'static str = "webpush";

    fn new(ctx: PushkinContext) -> Result<Self, String> {
        let config: Config = ctx.config()?;
        let key_path = config
            .vapid_private_key
            .filter(|path| !path.is_empty())
            .ok_or_else(|| ctx.config_error("vapid_private_key", "not set (a PEM file)"))?;
        let pem = std::fs::read(&key_path)
            .map_err(|err| ctx.config_error("vapid_private_key", format!("{key_path}: {err}")))?;
        let vapid = VapidKey::from_pem(&pem)
            .map_err(|err| ctx.config_error("vapid_private_key", format!("{key_path}: {err}")))?;
        let contact = config
            .vapid_contact_email
            .filter(|email| !email.is_empty())
            .ok_or_else(|| ctx.config_error("vapid_contact_email", "not set"))?;
        let ttl = match config.ttl {
            None => DEFAULT_TTL,
            Some(value) => sygnal_plugin_api::lenient::as_u64(&value)
                .ok_or_else(|| ctx.config_error("ttl", "must be a whole number of seconds"))?,
        };
        if config.max_connections == 0 {
            return Err(ctx.config_error("max_connections", "must be at least 1"));
        }
        if !config.timeout.is_finite() || config.timeout <= 0.0 {
            return Err(ctx.config_error("timeout", "must be a positive number of seconds"));
        }
        // `allowed_endpoints`, when set, also names the only push services used.
        let guard =
            EndpointGuard::new(Allowlist::new(config.allowed_endpoints.unwrap_or_default()));
        let options = ClientOptions {
            request_timeout: Duration::from_secs_f64(config.timeout),
            max_idle_per_host: config.max_connections,
            ..ClientOptions::default()
        };
        let client = guard.client(ctx.host(), &options)?;
        tracing::info!(
            app = ctx.app_id(),
            public_key = vapid.public_key(),
            "VAPID key loaded"
        );
        Ok(WebPush {
            vapid: VapidSigner::new(vapid, format!("mailto:{contact}")),
            ttl,
            guard,
            sender: Sender::new(client, RetrySettings::from_context(&ctx)?),
            slots: ConnectionSlots::new(
                config.max_connections,
                Duration::from_secs_f64(config.timeout),
                "push service",
                ctx.metrics(),
                SlotMetrics {
                    pending: PENDING,
                    active: ACTIVE,
                    queue_time: QUEUE_TIME,
                },
            ),
            fan_out: FanOut::from_context(&ctx)?,
            rng: SystemRandom::new(),
            metrics: ctx.metrics(),
            no_labels: Labels::default(),
            pushkin_labels: Labels::new(&[("pushkin", ctx.app_id())]),
        })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        self.fan_out
            .run(&notification.devices, |device| {
                self.deliver(notification, device)
            })
            .await
    }
}

/// What the pusher's data says about the subscription.
struct Target<'a> {
    endpoint: reqwest::Url,
    host: &'a str,
    subscription: Subscription,
}

impl WebPush {
    /// Delivers to one device: `Ok(true)` when its pushkey is rejected.
    async fn deliver(
        &self,
        notification: &Notification,
        device: &Device,
    ) -> Result<bool, PushError> {
        let Some(data) = device.data.as_ref() else {
            tracing::warn!("rejecting pushkey: device data is not an object");
            return Ok(true);
        };
        // Sygnal's issue 186: pushers may ask not to be woken by badge-only updates.
        let events_only = data.get("events_only") == Some(&serde_json::Value::Bool(true));
        if events_only && notification.event_id.as_deref().unwrap_or("").is_empty() {
            return Ok(false);
        }
        let endpoint = data.get("endpoint").and_then(|v| v.as_str()).unwrap_or("");
        let auth = data.get("auth").and_then(|v| v.as_str()).unwrap_or("");
        let parsed = reqwest::Url::parse(endpoint).ok();
        let allowed = self.guard.allowlist();
        if let Some(url) = parsed.as_ref().filter(|_| !allowed.is_empty()) {
            let host = url.host_str().unwrap_or("");
            let netloc = format!("{host}:{}", url.port_or_known_default().unwrap_or(443));
            if !allowed.allows(host) && !allowed.allows(&netloc) {
                // Not the client's fault alone: the push service may be allowed later.
                tracing::error!(%host, "push service not in allowed_endpoints: nothing sent");
                return Ok(false);
            }
        }
        if device.pushkey.is_empty() || endpoint.is_empty() || auth.is_empty() {
            tracing::warn!(
                "rejecting pushkey: subscription incomplete (p256dh, endpoint or auth missing)"
            );
            return Ok(true);
        }
        let Some(endpoint) = parsed.filter(|url| url.host_str().is_some()) else {
            tracing::warn!("rejecting pushkey: the endpoint is not a URL");
            return Ok(true);
        };
        let subscription = match Subscription::parse(&device.pushkey, auth) {
            Ok(subscription) => subscription,
            Err(why) => {
                tracing::warn!(%why, "rejecting pushkey: invalid subscription keys");
                return Ok(true);
            }
        };
        let host = endpoint.host_str().unwrap_or("").to_owned();
        match self
            .guard
            .check_retrying(&endpoint, self.sender.policy())
            .await?
        {
            Ok(()) => {}
            Err(refusal @ Refusal::NonPublic(_)) => {
                tracing::error!(%refusal, "nothing sent");
                return Ok(false);
            }
            Err(refusal) => {
                tracing::warn!(%refusal, "rejecting pushkey");
                return Ok(true);
            }
        }
        let target = Target {
            endpoint,
            host: &host,
            subscription,
        };
        self.push(notification, device, target).await
    }

    async fn push(
        &self,
        notification: &Notification,
        device: &Device,
        target: Target<'_>,
    ) -> Result<bool, PushError> {
        let payload = payload::build_payload(notification, device);
        let plaintext = serde_json::to_vec(&payload)
            .map_err(|err| PushError::permanent(format!("cannot encode the payload: {err}")))?;
        let body = crypto::encrypt(&target.subscription, &plaintext, &self.rng)
            .map_err(PushError::permanent)?;
        let audience = target.endpoint.origin().ascii_serialization();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let authorization = self
            .vapid
            .authorization(&audience, now)
            .map_err(PushError::permanent)?;
        let urgency = payload::urgency(notification);
        let topic = payload::topic(notification, device);

        let _slot = self.slots.acquire().await.map_err(PushError::temporary)?;
        let upstream = format!("push service {}", target.host);
        let (verdict, answer) = self
            .sender
            .send(
                &upstream,
                |client| {
                    let request = client
                        .post(target.endpoint.clone())
                        .header("TTL", self.ttl)
                        .header("Urgency", urgency)
                        .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
                        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                        .header(reqwest::header::AUTHORIZATION, &authorization)
                        .body(body.clone());
                    match &topic {
                        Some(topic) => request.header("Topic", topic),
                        None => request,
                    }
                },
                |answer| {
                    self.metrics.histogram_observe(
                        REQUEST_TIME.0,
                        REQUEST_TIME.1,
                        &self.no_labels,
                        answer.elapsed.as_secs_f64(),
                    );
                    let code = answer.status.as_u16().to_string();
                    self.metrics.counter_add(
                        STATUS_CODES.0,
                        STATUS_CODES.1,
                        &self.pushkin_labels.with("code", &code),
                        1.0,
                    );
                    http::default_verdict(answer.status)
                },
            )
            .await?;
        let status = answer.status.as_u16();
        let granted_ttl = answer
            .headers
            .get("TTL")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(granted) = granted_ttl.filter(|granted| *granted != self.ttl) {
            tracing::info!(
                host = target.host,
                requested = self.ttl,
                granted,
                "the push service changed the TTL"
            );
        }
        match verdict {
            Verdict::Reject => {
                tracing::warn!(
                    host = target.host,
                    status,
                    "subscription gone: rejecting pushkey"
                );
                Ok(true)
            }
            Verdict::Permanent => {
                tracing::warn!(host = target.host, status, body = %answer.body_text(), "push refused: dropped, pushkey kept");
                Ok(false)
            }
            _ => {
                if status != 201 {
                    tracing::info!(
                        host = target.host,
                        status,
                        "push service did not answer 201"
                    );
                }
                Ok(false)
            }
        }
    }
}

export_pushkin!(WebPush);
