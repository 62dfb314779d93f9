//! The series plugins reported to lately, per thread.
//!
//! A plugin reports a handful of series on every request (its request time, its active
//! connections), by name and rendered labels. Finding them in the registry takes its lock and
//! two ordered-map walks; this cache finds them by comparing the two strings with a few recent
//! ones. It is per thread (the threads calling the sink are a plugin runtime's few workers), so
//! a hit touches no shared state but the registry's epoch.
//!
//! Whatever removes series (a reload retiring an app, the gateway taking back a name) moves the
//! registry's epoch on, and an entry of another epoch is never used.

use super::{Kind, Registry, Series};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A registry's epoch. Values are unique across registries, so an entry cannot match another
/// registry (tests make several).
pub(super) struct Epoch(AtomicU64);

/// The last epoch handed out.
static LAST_EPOCH: AtomicU64 = AtomicU64::new(0);

impl Default for Epoch {
    fn default() -> Self {
        Epoch(AtomicU64::new(
            LAST_EPOCH.fetch_add(1, Ordering::Relaxed) + 1,
        ))
    }
}

impl Epoch {
    /// Forgets every cached series of this registry: call after removing series.
    pub(super) fn advance(&self) {
        let next = LAST_EPOCH.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.store(next, Ordering::Release);
    }

    fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Distinct series a thread keeps: more than a pushkin reports per request.
const KEPT: usize = 32;

struct Recent {
    epoch: u64,
    kind: Kind,
    name: Box<str>,
    labels: Box<str>,
    series: Arc<Series>,
}

thread_local! {
    static RECENT: RefCell<Vec<Recent>> = const { RefCell::new(Vec::new()) };
}

/// Applies `update` to the plugin series `name{labels}` of `kind`, found among this thread's
/// recent ones or else by `lookup` (which checks and creates it, and then is remembered).
pub(super) fn with_series(
    registry: &Registry,
    kind: Kind,
    name: &str,
    labels: &str,
    lookup: impl FnOnce() -> Result<Arc<Series>, String>,
    update: impl Fn(&Series),
) -> Result<(), String> {
    let epoch = registry.epoch.current();
    let hit = RECENT.with(|recent| {
        let recent = recent.borrow();
        let found = recent.iter().find(|entry| {
            entry.epoch == epoch
                && entry.kind == kind
                && *entry.name == *name
                && *entry.labels == *labels
        });
        found.map(|entry| update(&entry.series)).is_some()
    });
    if hit {
        return Ok(());
    }
    let series = lookup()?;
    update(&series);
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if recent.first().is_some_and(|entry| entry.epoch != epoch) {
            recent.retain(|entry| entry.epoch == epoch);
        }
        if recent.len() >= KEPT {
            recent.remove(0);
        }
        recent.push(Recent {
            epoch,
            kind,
            name: name.into(),
            labels: labels.into(),
            series,
        });
    });
    Ok(())
}
