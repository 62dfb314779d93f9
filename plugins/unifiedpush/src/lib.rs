//! UnifiedPush pushkin (`type: unifiedpush`): how de-Googled Android phones get Matrix pushes.
//!
//! As the UnifiedPush Matrix gateways (common-proxies, ntfy) behave: the pushkey is the device's
//! UnifiedPush endpoint URL, and the gateway POSTs it `{"notification": ...}` (the notification
//! without its devices). 401-404 and 410 mean the endpoint is gone: the pushkey is rejected.
//! Other failures are retried (`max_tries`, `retry_delay_base`), then reported as temporary.
//! The endpoint comes from the client, so non-public addresses are refused unless
//! `allowed_endpoints` lets them through (the SDK's
//! [`EndpointGuard`](sygnal_plugin_api::http::EndpointGuard)): a refused or non-existent
//! endpoint is rejected, an unresolved one (a resolver failure) retried. Redirects are never
//! followed, and responses are bounded in size and time. Devices are delivered at most
//! `max_concurrent_devices` at a time.
//!
//! Push servers must take messages of up to 4096 bytes and may refuse longer ones (413), so a
//! longer body has its strings shaved, longest first, until it fits; one that cannot fit, or
//! that an endpoint refuses as too large all the same, is dropped, logged and counted in
//! `sygnal_unifiedpush_dropped` (answered 200: no retry could deliver it).
//!
//! Built on plugin-api alone, as a third-party pushkin would be.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use sygnal_plugin_api::http::{
    reqwest, Allowlist, ClientOptions, EndpointGuard, RetrySettings, Sender, Verdict,
};
use sygnal_plugin_api::text::shave_longest;
use sygnal_plugin_api::{
    export_pushkin, serde_json, tracing, FanOut, JsonObject, Labels, Metrics, Notification,
    PluginInfo, PushError, Pushkin, PushkinContext,
};

/// The app section.
#[derive(Debug, Deserialize)]
struct Config {
    /// Hosts (globs) allowed even when they resolve to non-public addresses.
    #[serde(default)]
    allowed_endpoints: Vec<String>,
    /// Seconds one POST to an endpoint may take.
    #[serde(default = "default_timeout")]
    timeout: f64,
}

fn default_timeout() -> f64 {
    10.0
}

/// The UnifiedPush pushkin for one app.
pub struct UnifiedPush {
    sender: Sender,
    guard: EndpointGuard,
    fan_out: FanOut,
    metrics: Metrics,
    pushkin_labels: Labels,
}

/// The message size every UnifiedPush server must accept (the spec's minimum).
pub const MAX_BODY_BYTES: usize = 4096;

/// Notifications dropped because no push server would take them.
const DROPPED: (&str, &str) = (
    "sygnal_unifiedpush_dropped",
    "Notifications not sent to a UnifiedPush endpoint because they are over its size limit",
);

/// The body for the endpoints of one notification, or why there is none.
#[derive(Debug, PartialEq)]
pub enum Body {
    /// `{"notification": ...}`, at most [`MAX_BODY_BYTES`].
    Send(Vec<u8>),
    /// Over [`MAX_BODY_BYTES`] even with every string shaved: this many bytes.
    TooLarge(usize),
}

/// Top-level strings that may be shaved, with every string of `content`: the ids and texts a
/// homeserver can make arbitrarily long. `type`, `prio` and `membership` stay whole.
const SHAVED_FIELDS: [&str; 6] = [
    "event_id",
    "room_id",
    "sender",
    "sender_display_name",
    "room_name",
    "room_alias",
];

/// The JSON body POSTed to every endpoint of `notification`: the notification as the
/// homeserver sent it, less the devices (other users' pushkeys), shaved to fit
/// [`MAX_BODY_BYTES`].
pub fn request_body(notification: &Notification) -> Result<Body, String> {
    let encode = |fields: &JsonObject| {
        serde_json::to_vec(&Wrapper {
            notification: fields,
        })
        .map_err(|err| format!("cannot encode the notification: {err}"))
    };
    let mut fields = match serde_json::to_value(notification) {
        Ok(serde_json::Value::Object(fields)) => fields,
        Ok(_) => return Err("cannot encode the notification: not an object".to_owned()),
        Err(err) => return Err(format!("cannot encode the notification: {err}")),
    };
    fields.remove("devices");
    let body = encode(&fields)?;
    if body.len() <= MAX_BODY_BYTES {
        return Ok(Body::Send(body));
    }
    let mut texts: Vec<&mut String> = Vec::new();
    for (key, value) in fields.iter_mut() {
        match value {
            serde_json::Value::String(text) if SHAVED_FIELDS.contains(&key.as_str()) => {
                texts.push(text)
            }
            serde_json::Value::Object(content) if key == "content" => {
                texts.extend(content.values_mut().filter_map(|value| match value {
                    serde_json::Value::String(text) => Some(text),
                    _ => None,
                }))
            }
            _ => {}
        }
    }
    match shave_longest(&mut texts, body.len() - MAX_BODY_BYTES) {
        0 => encode(&fields).map(Body::Send),
        left => Ok(Body::TooLarge(MAX_BODY_BYTES + left)),
    }
}

#[derive(Serialize)]
struct Wrapper<'a> {
    notification: &'a JsonObject,
}

/// What an endpoint's HTTP status means: 401-404 and 410 say the endpoint is gone; 413 says the
/// message is over what the push server takes (the spec's minimum is 4096 bytes), which no retry
/// can fix; anything else but success is worth retrying (a distributor may be restarting).
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        401..=404 | 410 => Verdict::Reject,
        413 => Verdict::Permanent,
        _ => Verdict::Temporary,
    }
}

impl Pushkin for UnifiedPush {
    const KIND: &'static str = "unifiedpush";

    fn plugin_info() -> PluginInfo {
        PluginInfo {
            notify_get_response: Some(serde_json::json!({"unifiedpush": {"gateway": "matrix"}})),
        }
    }

    fn new(ctx: PushkinContext) -> Result<Self, String> {
        let config: Config = ctx.config()?;
        let retry = RetrySettings::from_context(&ctx)?;
        if !config.timeout.is_finite() || config.timeout <= 0.0 {
            return Err(ctx.config_error("timeout", "must be a positive number of seconds"));
        }
        let guard = EndpointGuard::new(Allowlist::new(config.allowed_endpoints));
        let options = ClientOptions {
            request_timeout: Duration::from_secs_f64(config.timeout),
            ..ClientOptions::default()
        };
        let client = guard.client(ctx.host(), &options)?;
        Ok(UnifiedPush {
            sender: Sender::new(client, retry),
            guard,
            fan_out: FanOut::from_context(&ctx)?,
            metrics: ctx.metrics(),
            pushkin_labels: Labels::new(&[("pushkin", ctx.app_id())]),
        })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        let body = match request_body(notification).map_err(PushError::permanent)? {
            Body::Send(body) => body,
            Body::TooLarge(bytes) => {
                tracing::warn!(
                    bytes,
                    limit = MAX_BODY_BYTES,
                    "notification over UnifiedPush's size limit even with every string shaved: dropped"
                );
                self.count_drop("payload_too_large", notification.devices.len());
                return Ok(Vec::new());
            }
        };
        self.fan_out
            .run(&notification.devices, |device| {
                self.deliver(&device.pushkey, &body)
            })
            .await
    }
}

impl UnifiedPush {
    /// Delivers to one endpoint: `Ok(true)` when the pushkey is rejected.
    async fn deliver(&self, endpoint: &str, body: &[u8]) -> Result<bool, PushError> {
        let url = match reqwest::Url::parse(endpoint) {
            Ok(url) => url,
            Err(err) => {
                tracing::info!(error = %err, "pushkey is not a URL: rejected");
                return Ok(true);
            }
        };
        if let Err(refusal) = self
            .guard
            .check_retrying(&url, self.sender.policy())
            .await?
        {
            tracing::warn!(host = url.host_str().unwrap_or(""), %refusal, "endpoint refused: rejected");
            return Ok(true);
        }
        let host = url.host_str().unwrap_or("");
        let upstream = format!("endpoint {host}");
        let (verdict, answer) = self
            .sender
            .send(
                &upstream,
                |client| {
                    client
                        .post(url.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.to_vec())
                },
                |answer| verdict(answer.status.as_u16()),
            )
            .await?;
        match verdict {
            Verdict::Reject => {
                tracing::info!(%host, status = answer.status.as_u16(), "endpoint gone: pushkey rejected");
                Ok(true)
            }
            Verdict::Permanent => {
                tracing::warn!(%host, bytes = body.len(), "endpoint refused the message as too large (413): dropped");
                self.count_drop("refused_as_too_large", 1);
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Counts `devices` pushes dropped for `reason` (answered 200: a retry would not help).
    fn count_drop(&self, reason: &str, devices: usize) {
        let labels = self.pushkin_labels.with("reason", reason);
        self.metrics
            .counter_add(DROPPED.0, DROPPED.1, &labels, devices as f64);
    }
}

export_pushkin!(UnifiedPush);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_notification_without_devices() {
        let notification: Notification = serde_json::from_str(
            r#"{"event_id":"$e","room_id":"!r","counts":{"unread":2},"future":1,
                "devices":[{"app_id":"a","pushkey":"https://push.example.org/up?token=secret"}]}"#,
        )
        .unwrap();
        let body = sent(&notification);
        assert_eq!(
            body,
            serde_json::json!({"notification": {"event_id": "$e", "room_id": "!r", "counts": {"unread": 2}, "future": 1}})
        );
    }

    fn sent(notification: &Notification) -> serde_json::Value {
        match request_body(notification).unwrap() {
            Body::Send(body) => {
                assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
                serde_json::from_slice(&body).unwrap()
            }
            Body::TooLarge(bytes) => panic!("dropped at {bytes} bytes"),
        }
    }

    #[test]
    fn long_ids_and_texts_are_shaved_longest_first_to_fit() {
        let notification: Notification = serde_json::from_value(serde_json::json!({
            "event_id": format!("${}", "e".repeat(100 * 1024)),
            "room_id": format!("!{}", "r".repeat(400 * 1024)),
            "type": "m.room.message",
            "sender": "@a:x",
            "content": {"msgtype": "m.text", "body": "b".repeat(3000)},
            "counts": {"unread": 2},
            "devices": [{"app_id": "a", "pushkey": "https://push.example.org/up"}],
        }))
        .unwrap();
        let body = sent(&notification)["notification"].clone();
        let encoded = serde_json::json!({ "notification": body }).to_string();
        assert!(
            (MAX_BODY_BYTES - 4..=MAX_BODY_BYTES).contains(&encoded.len()),
            "{} bytes",
            encoded.len()
        );
        let length = |value: &serde_json::Value| value.as_str().map_or(0, str::len);
        // Shaved longest first: the three long strings end up about equally long.
        let (event_id, room_id, text) = (
            length(&body["event_id"]),
            length(&body["room_id"]),
            length(&body["content"]["body"]),
        );
        assert!(event_id.abs_diff(room_id) <= 1 && room_id.abs_diff(text) <= 1);
        assert_eq!(body["sender"], "@a:x");
        assert_eq!(body["type"], "m.room.message");
        assert_eq!(body["counts"]["unread"], 2);
    }

    #[test]
    fn what_shaving_cannot_fit_is_too_large() {
        let mut fields = serde_json::Map::new();
        for i in 0..400 {
            fields.insert(format!("unknown_{i}"), serde_json::json!(12345));
        }
        fields.insert(
            "devices".into(),
            serde_json::json!([{"app_id": "a", "pushkey": "k"}]),
        );
        let notification: Notification =
            serde_json::from_value(serde_json::Value::Object(fields)).unwrap();
        assert!(matches!(
            request_body(&notification),
            Ok(Body::TooLarge(bytes)) if bytes > MAX_BODY_BYTES
        ));
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use sygnal_plugin_api::testing::accepted_notifications;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever the host accepts encodes within the size limit, without the devices,
            /// or is reported too large.
            #[test]
            fn every_accepted_notification_encodes(n in accepted_notifications()) {
                match request_body(&n).map_err(TestCaseError::fail)? {
                    Body::Send(body) => {
                        prop_assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
                        let value: serde_json::Value = serde_json::from_slice(&body)
                            .map_err(|err| TestCaseError::fail(err.to_string()))?;
                        prop_assert!(value["notification"].get("devices").is_none());
                    }
                    Body::TooLarge(bytes) => prop_assert!(bytes > MAX_BODY_BYTES),
                }
            }
        }
    }

    #[test]
    fn statuses_map_to_verdicts() {
        assert_eq!(verdict(200), Verdict::Delivered);
        assert_eq!(verdict(202), Verdict::Delivered);
        for gone in [401, 402, 403, 404, 410] {
            assert_eq!(verdict(gone), Verdict::Reject, "{gone}");
        }
        assert_eq!(verdict(413), Verdict::Permanent);
        for retry in [400, 408, 429, 500, 502, 503, 301] {
            assert_eq!(verdict(retry), Verdict::Temporary, "{retry}");
        }
    }
}
