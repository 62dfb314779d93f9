//! Rate-limited warnings: a failure that repeats (an unreachable exporter, a full connection
//! table) is logged at most once per interval, with a count of the occurrences held back.

use std::time::{Duration, Instant};

/// Lets a message through at most once per interval, counting the ones held back.
pub struct Throttle {
    interval: Duration,
    next: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// A throttle letting one message through per `interval`; the first passes at once.
    pub const fn every(interval: Duration) -> Self {
        Throttle {
            interval,
            next: None,
            held_back: 0,
        }
    }

    /// `Some(messages held back since the last one)` when this one may be logged.
    pub fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.next.is_some_and(|next| now < next) {
            self.held_back += 1;
            return None;
        }
        self.next = Some(now + self.interval);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_it_holds_back() {
        let mut throttle = Throttle::every(Duration::from_secs(10));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        throttle.next = Some(Instant::now());
        assert_eq!(throttle.admit(), Some(2));
        assert_eq!(throttle.admit(), None);
    }
}
