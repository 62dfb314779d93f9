//! The APNs pushkin (`type: apns`): delivers Matrix notifications to Apple devices through the
//! Apple Push Notification service, with Sygnal's configuration keys, payloads and answers.
//!
//! - [`config`]: the app section, validated at startup.
//! - [`payload`]: the JSON payload per device and its truncation (pure, unit-tested).
//! - [`token`]: the ES256 provider token, cached and refreshed.
//! - [`transport`]: the HTTP/2 request, answer classification, retries, metrics.

pub mod cert;
pub mod config;
pub mod payload;
pub mod token;
pub mod transport;

use config::{ApnsConfig, Auth};
use payload::{PayloadOptions, Prepared};
use sygnal_plugin_api::{
    tracing, Device, FanOut, Labels, Notification, PushError, Pushkin, PushkinContext,
};
use transport::{Delivery, Push, Transport};

const DROPPED: &str = "sygnal_apns_dropped";
const DROPPED_HELP: &str = "Notifications not sent to APNs because they can never be delivered";

/// One configured APNs app.
pub struct ApnsPushkin {
    app_id: String,
    metrics: sygnal_plugin_api::Metrics,
    payload_options: PayloadOptions,
    convert_device_token_to_hex: bool,
    fan_out: FanOut,
    transport: Transport,
}

impl Pushkin for ApnsPushkin {
    const KIND: &'static str = "apns";

    fn new(ctx: PushkinContext) -> Result<Self, String> {
        let config: ApnsConfig = config::load(&ctx)?;
        let app_id = ctx.app_id().to_owned();
        if let Auth::Certificate { identity_pem, .. } = &config.auth {
            match cert::expiry_from_pem(identity_pem) {
                Some(expiry) => ctx.metrics().gauge_set(
                    transport::CERT_EXPIRY,
                    transport::CERT_EXPIRY_HELP,
                    &Labels::new(&[("pushkin", &app_id)]),
                    expiry as f64,
                ),
                None => tracing::warn!(app = %app_id, "cannot read the certfile's expiry date"),
            }
        }
        let transport = Transport::new(&app_id, &config, ctx.host(), ctx.metrics())?;
        tracing::info!(
            app = %app_id,
            endpoint = %config.endpoint,
            auth = if matches!(config.auth, Auth::Token { .. }) { "token" } else { "certificate" },
            "APNs pushkin ready"
        );
        Ok(ApnsPushkin {
            app_id,
            metrics: ctx.metrics(),
            payload_options: PayloadOptions {
                send_badge_counts: config.send_badge_counts,
            },
            convert_device_token_to_hex: config.convert_device_token_to_hex,
            fan_out: FanOut::from_context(&ctx)?,
            transport,
        })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        self.fan_out
            .run(&notification.devices, |device| {
                self.dispatch_device(notification, device)
            })
            .await
    }
}

/// A loggable prefix of a pushkey: enough to find it, not enough to push to it.
fn log_key(pushkey: &str) -> &str {
    sygnal_plugin_api::text::truncate_to_chars(pushkey, 6)
}

impl ApnsPushkin {
    /// Delivers to one device; `Ok(true)` when its pushkey is rejected.
    async fn dispatch_device(
        &self,
        notification: &Notification,
        device: &Device,
    ) -> Result<bool, PushError> {
        let key = log_key(&device.pushkey);
        let body = match payload::prepare(notification, device, self.payload_options) {
            Ok(Prepared::Send(body)) => body,
            Ok(Prepared::Nothing) => {
                tracing::info!(app = %self.app_id, token = %key, "nothing to send for this notification");
                return Ok(false);
            }
            Ok(Prepared::Reject(why)) => {
                tracing::warn!(app = %self.app_id, token = %key, "rejecting pushkey: {why}");
                return Ok(true);
            }
            Err(too_long) => {
                // Retrying cannot shrink it (the pusher's default_payload or tweaks make it too
                // big): dropped, not failed, so the homeserver does not retry it for a day.
                tracing::warn!(
                    app = %self.app_id,
                    token = %key,
                    bytes = too_long.bytes,
                    limit = payload::MAX_BODY_BYTES,
                    "payload over APNs' limit even after truncation: notification dropped"
                );
                self.metrics.counter_add(
                    DROPPED,
                    DROPPED_HELP,
                    &Labels::new(&[("pushkin", &self.app_id), ("reason", "payload_too_large")]),
                    1.0,
                );
                return Ok(false);
            }
        };
        let Some(device_token) =
            payload::device_token(&device.pushkey, self.convert_device_token_to_hex)
        else {
            // It cannot become a valid APNs token; Apple would answer BadDeviceToken.
            tracing::warn!(app = %self.app_id, token = %key, "rejecting pushkey: not base64");
            return Ok(true);
        };
        let push = Push {
            device_token: &device_token,
            body: &body,
            priority: if notification.is_low_priority() {
                5
            } else {
                10
            },
            log_key: key,
        };
        match self.transport.send(push).await? {
            Delivery::Delivered => Ok(false),
            Delivery::Rejected { .. } => Ok(true),
        }
    }
}

sygnal_plugin_api::export_pushkin!(ApnsPushkin);
