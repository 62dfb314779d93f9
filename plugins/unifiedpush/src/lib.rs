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
//! Built on plugin-api alone, as a third-party pushkin would be.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use sygnal_plugin_api::http::{
    self, Allowlist, ClientOptions, EndpointGuard, RetrySettings, Sender, Verdict,
};
use sygnal_plugin_api::{
    export_pushkin, serde_json, tracing, FanOut, Notification, PluginInfo, PushError, Pushkin,
    PushkinContext,
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
}

use sygnal_plugin_api::http::reqwest;

/// What an endpoint is sent.
#[derive(Serialize)]
struct Body<'a> {
    notification: NotificationWithoutDevices<'a>,
}

/// The notification as the homeserver sent it, less the devices (other users' pushkeys).
struct NotificationWithoutDevices<'a>(&'a Notification);

impl Serialize for NotificationWithoutDevices<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(self.0).map_err(serde::ser::Error::custom)?;
        if let Some(object) = value.as_object_mut() {
            object.remove("devices");
        }
        value.serialize(serializer)
    }
}

/// The JSON body POSTed to every endpoint of `notification`.
pub fn request_body(notification: &Notification) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&Body {
        notification: NotificationWithoutDevices(notification),
    })
    .map_err(|err| format!("cannot encode the notification: {err}"))
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
        let client = http::client_builder(ctx.host(), &options)?
            .dns_resolver(guard.resolver())
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(UnifiedPush {
            sender: Sender::new(client, retry),
            guard,
            fan_out: FanOut::from_context(&ctx)?,
        })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        let body = request_body(notification).map_err(PushError::permanent)?;
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
                Ok(false)
            }
            _ => Ok(false),
        }
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
        let body: serde_json::Value =
            serde_json::from_slice(&request_body(&notification).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"notification": {"event_id": "$e", "room_id": "!r", "counts": {"unread": 2}, "future": 1}})
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use sygnal_plugin_api::testing::accepted_notifications;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever the host accepts encodes, without the devices.
            #[test]
            fn every_accepted_notification_encodes(n in accepted_notifications()) {
                let body = request_body(&n).map_err(TestCaseError::fail)?;
                let value: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|err| TestCaseError::fail(err.to_string()))?;
                prop_assert!(value["notification"].get("devices").is_none());
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
