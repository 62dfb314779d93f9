//! Delivering one notification to its devices with bounded concurrency.
//!
//! A notification may carry thousands of devices; sending to all of them at once would open
//! as many upstream connections. [`FanOut`] keeps at most `max_concurrent_devices` (per app,
//! default 64) deliveries of one dispatch in flight.

use crate::notification::Device;
use crate::sdk::{PushError, PushkinContext};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::future::Future;

/// The per-app config key bounding deliveries in flight within one dispatch.
pub const MAX_CONCURRENT_DEVICES_KEY: &str = "max_concurrent_devices";

/// Its default.
pub const DEFAULT_MAX_CONCURRENT_DEVICES: usize = 64;

/// Runs one delivery per device, at most `limit` at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    limit: usize,
}

impl Default for FanOut {
    fn default() -> Self {
        FanOut {
            limit: DEFAULT_MAX_CONCURRENT_DEVICES,
        }
    }
}

impl FanOut {
    /// At most `limit` deliveries in flight (at least one).
    pub fn new(limit: usize) -> Self {
        FanOut {
            limit: limit.max(1),
        }
    }

    /// The bound from the app's `max_concurrent_devices` (default 64). Errors name the key.
    pub fn from_context(ctx: &PushkinContext) -> Result<Self, String> {
        match ctx.raw_config().get(MAX_CONCURRENT_DEVICES_KEY) {
            None | Some(serde_json::Value::Null) => Ok(FanOut::default()),
            Some(value) => crate::lenient::as_u64(value)
                .filter(|n| *n >= 1)
                .and_then(|n| usize::try_from(n).ok())
                .map(FanOut::new)
                .ok_or_else(|| {
                    ctx.config_error(MAX_CONCURRENT_DEVICES_KEY, "must be a positive integer")
                }),
        }
    }

    /// The bound.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Calls `deliver` for every device, at most [`limit`](Self::limit) at a time, and joins
    /// the outcomes: `Ok(true)` means the device's pushkey is rejected, `Ok(false)` delivered
    /// (or dropped on purpose). Returns the rejected pushkeys, or the worst error (see
    /// [`PushError::worse`]) once every delivery has finished (so one failing device does not
    /// cancel the others halfway).
    pub async fn run<'a, F, Fut>(
        &self,
        devices: &'a [Device],
        mut deliver: F,
    ) -> Result<Vec<String>, PushError>
    where
        F: FnMut(&'a Device) -> Fut,
        Fut: Future<Output = Result<bool, PushError>>,
    {
        if let [device] = devices {
            // One device, what Synapse sends: no set of deliveries to build and drive.
            return deliver(device).await.map(|rejected| match rejected {
                true => vec![device.pushkey.clone()],
                false => Vec::new(),
            });
        }
        // A hand-driven FuturesUnordered rather than `buffer_unordered` over a mapping
        // closure: the closure would make the caller's future fail rustc's Send check.
        let mut in_flight = FuturesUnordered::new();
        let mut waiting = devices.iter().enumerate();
        // Device indexes, sorted at the end so the answer lists rejected pushkeys in
        // the order the homeserver sent them, whatever order the deliveries finished in.
        let mut rejected = Vec::new();
        let mut failure = None;
        loop {
            while in_flight.len() < self.limit {
                match waiting.next() {
                    Some((index, device)) => in_flight.push(tagged(index, deliver(device))),
                    None => break,
                }
            }
            let Some((index, outcome)) = in_flight.next().await else {
                break;
            };
            match outcome {
                Ok(true) => rejected.push(index),
                Ok(false) => {}
                Err(err) => failure = Some(PushError::worse(failure, err)),
            }
        }
        match failure {
            Some(err) => Err(err),
            None => {
                rejected.sort_unstable();
                Ok(rejected
                    .into_iter()
                    .map(|index| devices[index].pushkey.clone())
                    .collect())
            }
        }
    }
}

async fn tagged<Fut: Future>(index: usize, delivery: Fut) -> (usize, Fut::Output) {
    (index, delivery.await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn devices(n: usize) -> Vec<Device> {
        (0..n)
            .map(|i| Device {
                app_id: "a".into(),
                pushkey: format!("k{i}"),
                ..Device::default()
            })
            .collect()
    }

    #[tokio::test]
    async fn never_more_than_the_limit_in_flight() {
        let devices = devices(50);
        let (now, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let rejected = FanOut::new(7)
            .run(&devices, |device| {
                let (now, peak) = (&now, &peak);
                async move {
                    let current = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(current, Ordering::SeqCst);
                    // Later devices finish first: the answer must still be in device order.
                    let index: u64 = device.pushkey[1..].parse().unwrap();
                    tokio::time::sleep(Duration::from_millis(2 + (50 - index) / 10)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    Ok(device.pushkey.ends_with('3'))
                }
            })
            .await
            .unwrap();
        assert_eq!(
            peak.load(Ordering::SeqCst),
            7,
            "the bound is reached, never passed"
        );
        assert_eq!(rejected, ["k3", "k13", "k23", "k33", "k43"]);
    }

    #[tokio::test]
    async fn an_error_wins_after_every_device_ran() {
        let devices = devices(10);
        let ran = AtomicUsize::new(0);
        let result = FanOut::new(3)
            .run(&devices, |device| {
                let ran = &ran;
                async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                    if device.pushkey == "k2" {
                        Err(PushError::temporary("upstream down"))
                    } else {
                        Ok(true)
                    }
                }
            })
            .await;
        assert_eq!(result, Err(PushError::temporary("upstream down")));
        assert_eq!(ran.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn one_device_gets_the_same_answers() {
        let one = devices(1);
        for (outcome, expected) in [
            (Ok(true), Ok(vec!["k0".to_owned()])),
            (Ok(false), Ok(Vec::new())),
            (
                Err(PushError::temporary("busy")),
                Err(PushError::temporary("busy")),
            ),
        ] {
            let result = FanOut::new(1)
                .run(&one, |_| std::future::ready(outcome.clone()))
                .await;
            assert_eq!(result, expected);
        }
    }

    #[tokio::test]
    async fn a_permanent_error_outranks_a_temporary_one() {
        let devices = devices(6);
        let result = FanOut::new(2)
            .run(&devices, |device| async move {
                match device.pushkey.as_str() {
                    "k1" | "k5" => Err(PushError::temporary("busy")),
                    "k3" => Err(PushError::permanent("bad credentials")),
                    _ => Ok(false),
                }
            })
            .await;
        assert_eq!(result, Err(PushError::permanent("bad credentials")));
    }

    #[test]
    fn the_bound_comes_from_the_app_config() {
        let ctx = |config: serde_json::Value| {
            let serde_json::Value::Object(map) = config else {
                unreachable!()
            };
            PushkinContext::for_tests("app", map, crate::HostInfo::default())
        };
        assert_eq!(
            FanOut::from_context(&ctx(serde_json::json!({})))
                .unwrap()
                .limit(),
            64
        );
        let set = ctx(serde_json::json!({"max_concurrent_devices": 5}));
        assert_eq!(FanOut::from_context(&set).unwrap().limit(), 5);
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!("many"),
        ] {
            let err =
                FanOut::from_context(&ctx(serde_json::json!({"max_concurrent_devices": bad})))
                    .unwrap_err();
            assert!(
                err.starts_with("apps.app.max_concurrent_devices: "),
                "{err}"
            );
        }
    }
}
