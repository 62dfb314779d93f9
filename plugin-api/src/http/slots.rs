//! `max_connections`: how many requests of one app may be in flight, with Sygnal's metrics.

use crate::{GaugeGuard, Labels, Metrics};
use queue::{Permit, SlotQueue};
use std::time::{Duration, Instant};

mod queue;

/// A metric's name and help text.
pub type MetricName = (&'static str, &'static str);

/// The metrics Sygnal's pushkins keep about their connection slots, all without labels.
#[derive(Debug, Clone, Copy)]
pub struct SlotMetrics {
    /// Gauge: requests waiting for a slot.
    pub pending: MetricName,
    /// Gauge: requests holding a slot (in flight).
    pub active: MetricName,
    /// Histogram: time spent waiting for a slot.
    pub queue_time: MetricName,
}

/// The requests one app may have in flight (its `max_connections`), each waiting for a free
/// slot at most a bounded time.
///
/// Reports what Sygnal's pushkins do: gauges of the requests waiting for a slot (exported from
/// the start, at 0, as dashboards expect) and holding one, and a histogram of the time spent
/// waiting.
///
/// A freed slot goes to a request waiting on the thread that freed it, and to the oldest
/// waiter at least every few slots (see `queue`).
pub struct ConnectionSlots {
    slots: SlotQueue,
    wait: Duration,
    /// What the error names when no slot came free: "FCM", "push service"...
    upstream: &'static str,
    metrics: Metrics,
    names: SlotMetrics,
    labels: Labels,
}

/// A slot: the request holding it counts as active until it is dropped.
#[must_use = "the slot is given back when dropped"]
pub struct Slot<'a> {
    _permit: Permit<'a>,
    _active: GaugeGuard<'a>,
}

impl ConnectionSlots {
    /// `max` slots; a request waits at most `wait` for one. `names` are the metrics kept.
    pub fn new(
        max: usize,
        wait: Duration,
        upstream: &'static str,
        metrics: Metrics,
        names: SlotMetrics,
    ) -> Self {
        let labels = Labels::default();
        metrics.gauge_add(names.pending.0, names.pending.1, &labels, 0.0);
        ConnectionSlots {
            slots: SlotQueue::new(max),
            wait,
            upstream,
            metrics,
            names,
            labels,
        }
    }

    /// A slot, held until it is dropped; an error (worth retrying later) when none came free
    /// within the wait.
    pub async fn acquire(&self) -> Result<Slot<'_>, String> {
        // A free slot is taken at once, without counting the request as pending (the gauge
        // would go up and down again in the same instant: two metric updates for nothing) and
        // without reading the clock for a wait of zero.
        let (permit, waited) = match self.slots.try_acquire() {
            Some(permit) => (Ok(permit), 0.0),
            None => {
                let queued = Instant::now();
                let (name, help) = self.names.pending;
                let _pending = self.metrics.gauge_guard(name, help, &self.labels);
                // Bounded: with a hung upstream every slot stays taken until its requests time
                // out, and an unbounded queue would answer homeservers long after they gave up.
                let permit = tokio::time::timeout(self.wait, self.slots.acquire()).await;
                (permit, queued.elapsed().as_secs_f64())
            }
        };
        let (name, help) = self.names.queue_time;
        self.metrics
            .histogram_observe(name, help, &self.labels, waited);
        match permit {
            Ok(permit) => {
                let (name, help) = self.names.active;
                Ok(Slot {
                    _permit: permit,
                    _active: self.metrics.gauge_guard(name, help, &self.labels),
                })
            }
            Err(_) => Err(format!(
                "no free {} connection slot (max_connections) within {} s",
                self.upstream,
                self.wait.as_secs_f64()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::MetricOp;
    use abi_stable::std_types::RStr;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(MetricOp, String, f64)>> = Mutex::new(Vec::new());

    extern "C" fn record(op: MetricOp, name: RStr<'_>, _: RStr<'_>, _: RStr<'_>, value: f64) {
        SEEN.lock()
            .unwrap()
            .push((op, name.as_str().to_owned(), value));
    }

    #[tokio::test]
    async fn waits_a_bounded_time_for_a_slot_and_counts_the_waiters() {
        let slots = ConnectionSlots::new(
            1,
            Duration::from_millis(200),
            "FCM",
            Metrics::new(record),
            SlotMetrics {
                pending: ("pending", "waiting"),
                active: ("active", "in flight"),
                queue_time: ("queue_time", "waited"),
            },
        );
        let held = slots.acquire().await.expect("a free slot");
        let started = Instant::now();
        let Err(err) = slots.acquire().await else {
            panic!("a slot while the only one is held");
        };
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            err,
            "no free FCM connection slot (max_connections) within 0.2 s"
        );
        drop(held);
        assert!(slots.acquire().await.is_ok());
        let seen: Vec<(MetricOp, String, f64)> = SEEN.lock().unwrap().clone();
        let pending: Vec<f64> = seen
            .iter()
            .filter(|(_, name, _)| name == "pending")
            .map(|(_, _, value)| *value)
            .collect();
        // Exported at 0 from the start; only the request that waited moved it, and back.
        assert_eq!(pending, [0.0, 1.0, -1.0]);
        let waits = seen.iter().filter(|(_, name, _)| name == "queue_time");
        assert_eq!(waits.count(), 3);
        // Each slot held counted as active while held: two slots taken, two given back.
        let active: Vec<f64> = seen
            .iter()
            .filter(|(_, name, _)| name == "active")
            .map(|(_, _, value)| *value)
            .collect();
        assert_eq!(active, [1.0, -1.0, 1.0, -1.0]);
    }
}
