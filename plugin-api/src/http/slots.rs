//! `max_connections`: how many requests of one app may be in flight, with Sygnal's metrics.

use crate::{Labels, Metrics};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// A metric's name and help text.
pub type MetricName = (&'static str, &'static str);

/// The requests one app may have in flight (its `max_connections`), each waiting for a free
/// slot at most a bounded time.
///
/// Reports what Sygnal's pushkins do: a gauge of requests waiting for a slot (exported from the
/// start, at 0, as dashboards expect) and a histogram of the time spent waiting.
pub struct ConnectionSlots {
    slots: Semaphore,
    wait: Duration,
    /// What the error names when no slot came free: "FCM", "push service"...
    upstream: &'static str,
    metrics: Metrics,
    pending: MetricName,
    queue_time: MetricName,
    labels: Labels,
}

impl ConnectionSlots {
    /// `max` slots; a request waits at most `wait` for one. `pending` is the gauge of waiting
    /// requests, `queue_time` the histogram of waits, both without labels.
    pub fn new(
        max: usize,
        wait: Duration,
        upstream: &'static str,
        metrics: Metrics,
        pending: MetricName,
        queue_time: MetricName,
    ) -> Self {
        let labels = Labels::default();
        metrics.gauge_add(pending.0, pending.1, &labels, 0.0);
        ConnectionSlots {
            slots: Semaphore::new(max),
            wait,
            upstream,
            metrics,
            pending,
            queue_time,
            labels,
        }
    }

    /// A slot, held until the permit is dropped; an error (worth retrying later) when none came
    /// free within the wait.
    pub async fn acquire(&self) -> Result<SemaphorePermit<'_>, String> {
        let queued = Instant::now();
        // A free slot is taken at once, without counting the request as pending (the gauge
        // would go up and down again in the same instant: two metric updates for nothing).
        let permit = match self.slots.try_acquire() {
            Ok(permit) => Ok(Ok(permit)),
            Err(_) => {
                let _pending =
                    self.metrics
                        .gauge_guard(self.pending.0, self.pending.1, &self.labels);
                // Bounded: with a hung upstream every slot stays taken until its requests time
                // out, and an unbounded queue would answer homeservers long after they gave up.
                tokio::time::timeout(self.wait, self.slots.acquire()).await
            }
        };
        self.metrics.histogram_observe(
            self.queue_time.0,
            self.queue_time.1,
            &self.labels,
            queued.elapsed().as_secs_f64(),
        );
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err("the connection limiter is closed".to_owned()),
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
            ("pending", "waiting"),
            ("queue_time", "waited"),
        );
        let held = slots.acquire().await.expect("a free slot");
        let started = Instant::now();
        let err = slots.acquire().await.expect_err("no slot while held");
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
    }
}
