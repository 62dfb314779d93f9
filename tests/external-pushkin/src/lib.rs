//! An example third-party pushkin: rejects pushkeys on its config's deny list, accepts the rest.

use sygnal_plugin_api::{
    export_pushkin, serde_json, tracing, Notification, PushError, Pushkin, PushkinContext,
};

/// Rejects the configured pushkeys.
pub struct Acme {
    deny: Vec<String>,
}

impl Pushkin for Acme {
    const KIND: &'static str = "acme";

    fn new(ctx: PushkinContext) -> Result<Self, String> {
        let deny = match ctx.raw_config().get("deny") {
            None => Vec::new(),
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|err| format!("apps.{}.deny: {err}", ctx.app_id()))?,
        };
        Ok(Acme { deny })
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        tracing::info!(devices = notification.devices.len(), "acme dispatch");
        Ok(notification
            .devices
            .iter()
            .filter(|device| self.deny.contains(&device.pushkey))
            .map(|device| device.pushkey.clone())
            .collect())
    }
}

export_pushkin!(Acme);
