//! A pushkin that does no delivery work at all, so timing a dispatch times the machinery around
//! it. Shared as source by the cdylib (lib.rs) and the in-process side of the boundary benchmark.

use sygnal_plugin_api::{Notification, PushError, Pushkin, PushkinContext};

/// Rejects the devices with an empty pushkey (none, in the benchmark): reading the input keeps
/// the compiler from optimising the dispatch away, and the answer is the usual empty list.
pub struct NoOp;

impl Pushkin for NoOp {
    const KIND: &'static str = "bench-noop";

    fn new(_ctx: PushkinContext) -> Result<Self, String> {
        Ok(NoOp)
    }

    async fn dispatch(&self, notification: &Notification) -> Result<Vec<String>, PushError> {
        Ok(notification
            .devices
            .iter()
            .filter(|device| device.pushkey.is_empty())
            .map(|device| device.pushkey.clone())
            .collect())
    }
}
