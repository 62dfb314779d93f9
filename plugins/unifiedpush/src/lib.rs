//! UnifiedPush pushkin (`type: unifiedpush`): how de-Googled Android phones get Matrix pushes.
//!
//! As the UnifiedPush Matrix gateways (common-proxies, ntfy) behave: the pushkey is the device's
//! UnifiedPush endpoint URL, and the gateway POSTs it `{"notification": ...}` (the notification
//! without its devices). 401-404 and 410 mean the endpoint is gone: the pushkey is rejected.
//! Other failures are retried (`max_tries`, `retry_delay_base`), then reported as temporary.
//! The endpoint comes from the client, so non-public addresses are refused unless
//! `allowed_endpoints` lets them through (see [`ssrf`]); redirects are never followed, and
//! responses are bounded in size and time.
//!
//! Built on plugin-api alone, as a third-party pushkin would be.

pub mod ssrf;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use ssrf::{check_endpoint, Allowlist, PublicOnlyResolver};
use std::sync::Arc;
use std::time::Duration;
use sygnal_plugin_api::http::{self, Attempt, ClientOptions, RetryPolicy, RetrySettings};
use sygnal_plugin_api::{
    export_pushkin, serde_json, tracing, Notification, PluginInfo, PushError, Pushkin,
    PushkinContext,
};

/// Response bodies are read up to this many bytes, then dropped.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

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
    client: reqwest::Client,
    allowlist: Allowlist,
    retry: RetryPolicy,
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

/// What an endpoint's answer means.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Delivered,
    /// The endpoint is gone for good: reject the pushkey.
    Gone,
    /// 413: the message is over what the push server takes (the spec's minimum is 4096
    /// bytes). Retrying cannot help: dropped and logged, not failed.
    TooLarge,
    /// Try again.
    Retry,
}

/// Classifies an endpoint's HTTP status.
pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        401..=404 | 410 => Verdict::Gone,
        413 => Verdict::TooLarge,
        _ => Verdict::Retry,
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
        let key = |k: &str, err: String| format!("apps.{}.{k}: {err}", ctx.app_id());
        let retry = RetrySettings::from_context(&ctx)?;
        if !config.timeout.is_finite() || config.timeout <= 0.0 {
            return Err(key(
                "timeout",
                "must be a positive number of seconds".into(),
            ));
        }
        let allowlist = Allowlist::new(config.allowed_endpoints);
        let options = ClientOptions {
            request_timeout: Duration::from_secs_f64(config.timeout),
            ..ClientOptions::default()
        };
        let client = http::client_builder(ctx.host(), &options)?
            .dns_resolver(Arc::new(PublicOnlyResolver::new(allowlist.clone())))
            .build()
            .map_err(|err| format!("cannot build the HTTP client: {err}"))?;
        Ok(UnifiedPush {
            client,
            allowlist,
            retry,
        })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        let body = request_body(notification).map_err(PushError::permanent)?;
        let deliveries = notification
            .devices
            .iter()
            .map(|device| self.deliver(&device.pushkey, &body));
        let mut rejected = Vec::new();
        let mut failure = None;
        for (device, outcome) in notification.devices.iter().zip(join_all(deliveries).await) {
            match outcome {
                Ok(true) => {}
                Ok(false) => rejected.push(device.pushkey.clone()),
                Err(err) => failure = Some(err),
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(rejected),
        }
    }
}

impl UnifiedPush {
    /// Delivers to one endpoint: `Ok(true)` delivered, `Ok(false)` rejected.
    async fn deliver(&self, endpoint: &str, body: &[u8]) -> Result<bool, PushError> {
        let url = match reqwest::Url::parse(endpoint) {
            Ok(url) => url,
            Err(err) => {
                tracing::info!(error = %err, "pushkey is not a URL: rejected");
                return Ok(false);
            }
        };
        if let Err(refusal) = check_endpoint(&url, &self.allowlist).await {
            tracing::warn!(host = url.host_str().unwrap_or(""), %refusal, "endpoint refused: rejected");
            return Ok(false);
        }
        let host = url.host_str().unwrap_or("").to_owned();
        http::retry(&self.retry, |_| {
            let request = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
            let host = host.clone();
            async move {
                let response = match request.send().await {
                    Ok(response) => response,
                    Err(err) => {
                        return Ok(Attempt::Retry {
                            reason: format!(
                                "endpoint {host} unreachable: {}",
                                http::describe_error(err)
                            ),
                            retry_after: None,
                        })
                    }
                };
                let status = response.status().as_u16();
                let retry_after = http::retry_after(response.headers());
                // Drain (bounded) so the connection can be reused; the content is irrelevant.
                let _ = http::read_body_limited(response, MAX_RESPONSE_BYTES).await;
                Ok(match verdict(status) {
                    Verdict::Delivered => Attempt::Done(true),
                    Verdict::Gone => {
                        tracing::info!(%host, status, "endpoint gone: pushkey rejected");
                        Attempt::Done(false)
                    }
                    Verdict::TooLarge => {
                        tracing::warn!(%host, bytes = body.len(), "endpoint refused the message as too large (413): dropped");
                        Attempt::Done(true)
                    }
                    Verdict::Retry => Attempt::Retry {
                        reason: format!("endpoint {host} answered {status}"),
                        retry_after,
                    },
                })
            }
        })
        .await
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
            assert_eq!(verdict(gone), Verdict::Gone, "{gone}");
        }
        assert_eq!(verdict(413), Verdict::TooLarge);
        for retry in [400, 408, 429, 500, 502, 503, 301] {
            assert_eq!(verdict(retry), Verdict::Retry, "{retry}");
        }
    }
}
