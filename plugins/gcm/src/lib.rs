//! The FCM pushkin (`type: gcm`): Firebase Cloud Messaging, HTTP v1 and legacy, as Sygnal does it.
//!
//! - [`config`]: the app section, validated at startup.
//! - [`payload`]: the request bodies (pure).
//! - [`response`]: what FCM's answers mean (pure).
//! - [`oauth`]: service-account access tokens for v1, cached.
//! - [`transport`]: requests, retries, `max_connections`, metrics.

pub mod config;
pub mod data;
pub mod oauth;
pub mod payload;
pub mod response;
pub mod transport;

use config::{Api, GcmConfig};
use std::time::Duration;
use sygnal_plugin_api::http::{build_client, ClientOptions, DirectClient};
use sygnal_plugin_api::{FanOut, Notification, PushError, Pushkin, PushkinContext};
use transport::{Auth, Transport, TransportSettings};

/// The FCM pushkin for one app.
pub struct GcmPushkin {
    transport: Transport,
}

impl Pushkin for GcmPushkin {
    const KIND: &'static str = "gcm";

    fn new(ctx: PushkinContext) -> Result<Self, String> {
        let config = GcmConfig::from_context(&ctx)?;
        let request_timeout = Duration::from_secs(30);
        let options = ClientOptions {
            // Keep as many idle connections as may be busy at once, and as many again: a
            // request can take the slot a finished one freed before that one's connection is
            // back in the pool, and the client then opens another. With room for only
            // `max_connections`, those extra connections were closed and reopened (20,000 new
            // connections in 10 s at 256 clients, BENCHMARKS.md).
            max_idle_per_host: config.max_connections.saturating_mul(2),
            request_timeout,
            ..ClientOptions::default()
        };
        let client_error = |err: String| format!("apps.{}: {err}", ctx.app_id());
        // FCM requests go through hyper's client alone (one per notification: see
        // `DirectClient`); the rare token fetch keeps reqwest's conveniences.
        let client = DirectClient::new(ctx.host(), &options).map_err(client_error)?;
        let auth = match config.api {
            Api::Legacy { api_key } => Auth::Legacy {
                header: transport::legacy_authorization(&api_key)
                    .map_err(|why| ctx.config_error("api_key", why))?,
                url: transport::send_url(&format!("{}/fcm/send", config.endpoint))
                    .map_err(|why| ctx.config_error("endpoint", why))?,
            },
            Api::V1 {
                project_id,
                service_account,
            } => Auth::V1 {
                // The token fetch gets the same proxy and trust roots.
                tokens: oauth::TokenSource::new(
                    service_account,
                    build_client(ctx.host(), &options).map_err(client_error)?,
                ),
                url: transport::send_url(&format!(
                    "{}/v1/projects/{project_id}/messages:send",
                    config.endpoint
                ))
                .map_err(|why| ctx.config_error("endpoint", why))?,
            },
        };
        let transport = Transport::new(TransportSettings {
            app_id: ctx.app_id().to_owned(),
            client,
            auth,
            max_connections: config.max_connections,
            // A request waits for a slot at most as long as one request may take.
            slot_wait: request_timeout,
            retry: config.retry,
            fan_out: FanOut::from_context(&ctx)?,
            fcm_options: config.fcm_options,
            send_badge_counts: config.send_badge_counts,
            fallback_user_agent: ctx.host().user_agent.is_empty(),
            metrics: ctx.metrics(),
        });
        Ok(GcmPushkin { transport })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        self.transport.dispatch(notification).await
    }
}

sygnal_plugin_api::export_pushkin!(GcmPushkin);
