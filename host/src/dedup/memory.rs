//! The in-process store: outcomes of recent (event, device) pairs, and the pairs being delivered
//! right now, in a map split into shards so concurrent requests rarely share a lock. A lock is
//! held for a few map operations, never across an await.

use super::{Key, Outcome};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const SHARDS: usize = 64;

/// Outcomes waiters learn: `Some` once the first attempt is answered; the sender is dropped
/// without a value when it failed (the waiter then tries itself).
pub type OutcomeReceiver = watch::Receiver<Option<Outcome>>;

enum Entry {
    /// Being delivered; duplicates wait on the receiver.
    InFlight(OutcomeReceiver),
    /// Answered; remembered until the instant.
    Done(Outcome, Instant),
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Key, Entry>,
    /// Answered keys in the order they expire (the window is the same for all).
    expiry: VecDeque<(Key, Instant)>,
}

/// What [`MemoryStore::claim`] found.
pub enum MemoryClaim {
    /// Nobody is delivering this pair: the caller does, and reports through the guard.
    Owner(MemoryGuard),
    /// Answered before, within the window.
    Known(Outcome),
    /// Another request is delivering it now.
    InFlight(OutcomeReceiver),
}

/// The in-process store.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    window: Duration,
    per_shard: usize,
}

impl MemoryStore {
    /// A store remembering outcomes for `window`, holding at most about `max_entries` of them
    /// (the oldest are forgotten first).
    pub fn new(window: Duration, max_entries: usize) -> Arc<Self> {
        Arc::new(MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            window,
            per_shard: max_entries.div_ceil(SHARDS).max(1),
        })
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[usize::from(key[0]) % SHARDS];
        // A panic while holding the lock leaves plain data behind: keep using it.
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Looks `key` up, claiming it when nobody has answered or is delivering it.
    pub fn claim(self: &Arc<Self>, key: Key) -> MemoryClaim {
        let now = Instant::now();
        let mut shard = self.shard(&key);
        match shard.entries.get(&key) {
            Some(Entry::Done(outcome, expires)) if *expires > now => {
                return MemoryClaim::Known(*outcome)
            }
            Some(Entry::InFlight(receiver)) => return MemoryClaim::InFlight(receiver.clone()),
            _ => {}
        }
        self.make_room(&mut shard, now);
        let (sender, receiver) = watch::channel(None);
        shard.entries.insert(key, Entry::InFlight(receiver));
        MemoryClaim::Owner(MemoryGuard {
            store: Arc::clone(self),
            key,
            sender: Some(sender),
        })
    }

    /// Forgets expired outcomes, then the oldest ones while the shard is full.
    fn make_room(&self, shard: &mut Shard, now: Instant) {
        while let Some(&(key, expires)) = shard.expiry.front() {
            let full = shard.entries.len() >= self.per_shard;
            if expires > now && !full {
                break;
            }
            shard.expiry.pop_front();
            // The entry may have been answered again since; only its latest record counts.
            if matches!(shard.entries.get(&key), Some(Entry::Done(_, e)) if *e == expires) {
                shard.entries.remove(&key);
            }
        }
    }

    /// How many pairs are remembered or in flight (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.entries.len()).unwrap_or(0))
            .sum()
    }
}

/// The right and duty to deliver one pair. [`finish`](Self::finish) records the outcome and
/// wakes the duplicates waiting for it; dropping the guard unanswered (the delivery failed or
/// was cancelled) forgets the pair, so a retry delivers it.
pub struct MemoryGuard {
    store: Arc<MemoryStore>,
    key: Key,
    sender: Option<watch::Sender<Option<Outcome>>>,
}

impl MemoryGuard {
    /// Records the outcome of the delivery.
    pub fn finish(mut self, outcome: Outcome) {
        let now = Instant::now();
        let expires = now + self.store.window;
        {
            let mut shard = self.store.shard(&self.key);
            shard
                .entries
                .insert(self.key, Entry::Done(outcome, expires));
            shard.expiry.push_back((self.key, expires));
        }
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(outcome));
        }
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let mut shard = self.store.shard(&self.key);
            if let Some(Entry::InFlight(_)) = shard.entries.get(&self.key) {
                shard.entries.remove(&self.key);
            }
            // Dropping the sender wakes the waiters with "no outcome".
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        let mut key = [0; 16];
        key[0] = n;
        key[1] = n.wrapping_mul(7);
        key
    }

    #[test]
    fn first_claim_owns_then_duplicates_learn_the_outcome() {
        let store = MemoryStore::new(Duration::from_secs(60), 1000);
        let MemoryClaim::Owner(guard) = store.claim(key(1)) else {
            panic!("first claim must own")
        };
        let MemoryClaim::InFlight(mut waiter) = store.claim(key(1)) else {
            panic!("second claim must wait")
        };
        guard.finish(Outcome::Rejected);
        assert_eq!(*waiter.borrow_and_update(), Some(Outcome::Rejected));
        assert!(matches!(
            store.claim(key(1)),
            MemoryClaim::Known(Outcome::Rejected)
        ));
        // Other pairs are independent.
        assert!(matches!(store.claim(key(2)), MemoryClaim::Owner(_)));
    }

    #[test]
    fn a_failed_attempt_does_not_suppress_the_retry() {
        let store = MemoryStore::new(Duration::from_secs(60), 1000);
        let MemoryClaim::Owner(guard) = store.claim(key(1)) else {
            panic!()
        };
        let MemoryClaim::InFlight(waiter) = store.claim(key(1)) else {
            panic!()
        };
        drop(guard);
        assert!(waiter.has_changed().is_err(), "waiter sees the sender gone");
        assert!(matches!(store.claim(key(1)), MemoryClaim::Owner(_)));
    }

    #[test]
    fn outcomes_expire_after_the_window() {
        let store = MemoryStore::new(Duration::from_millis(1), 1000);
        let MemoryClaim::Owner(guard) = store.claim(key(1)) else {
            panic!()
        };
        guard.finish(Outcome::Delivered);
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(store.claim(key(1)), MemoryClaim::Owner(_)));
    }

    #[test]
    fn the_store_stays_within_its_bound() {
        let store = MemoryStore::new(Duration::from_secs(600), 64);
        for n in 0..=255u8 {
            for m in 0..4u8 {
                let mut k = key(n);
                k[2] = m;
                if let MemoryClaim::Owner(guard) = store.claim(k) {
                    guard.finish(Outcome::Delivered);
                }
            }
        }
        // One entry per shard at most (64 / 64 shards), plus nothing in flight.
        assert!(store.len() <= 64, "{}", store.len());
        // The newest outcome of a shard is still known.
        let mut newest = key(255);
        newest[2] = 3;
        assert!(matches!(
            store.claim(newest),
            MemoryClaim::Known(Outcome::Delivered)
        ));
    }
}
