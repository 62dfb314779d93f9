//! A webhook pushkin (`type: webhook`): POSTs `{"notification": ...}` (with the one device it is
//! for) as JSON to `url` with `headers`. 404 and 410 reject the pushkey.

use std::collections::HashMap;
use sygnal_plugin_api::http::{self, reqwest, ClientOptions, RetrySettings, Sender, Verdict};
use sygnal_plugin_api::serde::Deserialize;
use sygnal_plugin_api::{export_pushkin, serde_json, Device, FanOut, Notification};
use sygnal_plugin_api::{PushError, Pushkin, PushkinContext};

#[derive(Deserialize)]
#[serde(crate = "sygnal_plugin_api::serde")]
struct Config {
    url: String,
    #[serde(default)]
    headers: HashMap<String, String>,
}

pub struct Webhook {
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    sender: Sender,
    fan_out: FanOut,
}

impl Pushkin for Webhook {
    const KIND: &'static str = "webhook";

    fn new(ctx: PushkinContext) -> Result<Self, String> {
        let config: Config = ctx.config()?;
        let url = reqwest::Url::parse(&config.url).map_err(|e| ctx.config_error("url", e))?;
        let headers = (&config.headers)
            .try_into()
            .map_err(|e| ctx.config_error("headers", e))?;
        let client = http::build_client(ctx.host(), &ClientOptions::default())?;
        let sender = Sender::new(client, RetrySettings::from_context(&ctx)?);
        let fan_out = FanOut::from_context(&ctx)?; // max_concurrent_devices
        Ok(Webhook {
            url,
            headers,
            sender,
            fan_out,
        })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        let base = Notification { devices: Vec::new(), ..notification.clone() }; // deliver adds one
        self.fan_out.run(&notification.devices, |d| self.deliver(&base, d)).await
    }
}

impl Webhook {
    /// POSTs the notification for one device: `Ok(true)` rejects its pushkey.
    async fn deliver(
        &self,
        notification: &Notification,
        device: &Device,
    ) -> Result<bool, PushError> {
        let devices = vec![device.clone()];
        let body =
            serde_json::json!({"notification": Notification { devices, ..notification.clone() }});
        let upstream = format!("webhook {}", self.url.host_str().unwrap_or(""));
        let request = |client: &reqwest::Client| {
            let request = client.post(self.url.clone()).headers(self.headers.clone());
            request.json(&body)
        };
        // Retries 408/429/5xx and connection failures (max_tries, retry_delay_base).
        let classify = |answer: &http::Answer| http::default_verdict(answer.status);
        let (verdict, answer) = self.sender.send(&upstream, request, classify).await?;
        match verdict {
            Verdict::Permanent => Err(PushError::permanent(format!(
                "{upstream}: {}",
                answer.status
            ))),
            verdict => Ok(verdict == Verdict::Reject),
        }
    }
}

export_pushkin!(Webhook);
