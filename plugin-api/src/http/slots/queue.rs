//! The slots themselves: a counting semaphore that gives a freed slot to a request waiting on
//! the thread that freed it.
//!
//! A host that lends its reactor polls each dispatch on the connection thread that received
//! it (`host_io`), so the requests waiting for an app's slots wait on several threads. A FIFO
//! semaphore (tokio's) hands each freed slot to the oldest waiter, which is on another thread
//! most of the time, and waking a task on another thread costs a system call there and a
//! wake-up of that thread: at 256 clients and 64 slots, one per notification (BENCHMARKS.md).
//! Here a freed slot goes to the oldest waiter on the freeing thread, a local wake-up, and to
//! the oldest waiter of all at least every [`MAX_LOCAL_GRANTS`]-th time and whenever the
//! freeing thread has none, so no waiter is passed over for long.

use super::super::h1::this_thread;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// How many slots in a row may go to waiters on the freeing thread while an older waiter
/// elsewhere waits: the oldest waiter of all is served at least every this many slots.
pub(super) const MAX_LOCAL_GRANTS: u32 = 4;

/// A counting semaphore (see the module's documentation).
pub(super) struct SlotQueue {
    state: Mutex<State>,
}

impl SlotQueue {
    /// `max` free slots.
    pub(super) fn new(max: usize) -> Self {
        SlotQueue {
            state: Mutex::new(State {
                free: max,
                ..State::default()
            }),
        }
    }

    /// A free slot now, if there is one.
    pub(super) fn try_acquire(&self) -> Option<Permit<'_>> {
        let taken = self.lock().take_free();
        taken.then(|| Permit { queue: self })
    }

    /// A slot, when one is free; waits in line otherwise.
    pub(super) fn acquire(&self) -> Acquire<'_> {
        Acquire {
            queue: self,
            waiting: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The only calls out under the lock clone or drop a waker, and each change to the state
        // is whole before or after them: a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self) {
        let woken = self.lock().grant(this_thread());
        if let Some(waker) = woken {
            waker.wake();
        }
    }
}

/// A slot held; freed when dropped.
pub(super) struct Permit<'a> {
    queue: &'a SlotQueue,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.queue.release();
    }
}

/// Waits for a slot; gives it on if dropped after one was granted.
pub(super) struct Acquire<'a> {
    queue: &'a SlotQueue,
    /// Its place in line, once it waits.
    waiting: Option<Ticket>,
}

impl<'a> Future for Acquire<'a> {
    type Output = Permit<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit<'a>> {
        let queue = self.queue;
        let mut state = queue.lock();
        let granted = match self.waiting {
            None if state.take_free() => true,
            None => {
                self.waiting = Some(state.enqueue(this_thread(), cx.waker().clone()));
                false
            }
            Some(ticket) => state.take_grant(ticket, cx.waker()),
        };
        if !granted {
            return Poll::Pending;
        }
        self.waiting = None;
        Poll::Ready(Permit { queue })
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.waiting.take() else {
            return;
        };
        // Granted but never taken (timed out or cancelled meanwhile): it goes on.
        let granted = self.queue.lock().leave(ticket);
        if granted {
            self.queue.release();
        }
    }
}

/// A waiter's entry: its index in `State::waiters` and its number (to tell it from a later
/// waiter reusing the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    index: usize,
    number: u64,
}

struct Waiter {
    number: u64,
    waker: Waker,
    granted: bool,
}

#[derive(Default)]
struct State {
    free: usize,
    /// Waiters by index; `None` is a vacant index (listed in `vacant`).
    waiters: Vec<Option<Waiter>>,
    vacant: Vec<usize>,
    /// Every waiter in arrival order. Entries of waiters already granted or gone stay until
    /// they reach the front.
    all: VecDeque<Ticket>,
    /// The same waiters by the thread they wait on (indexed by `this_thread()`).
    by_thread: Vec<VecDeque<Ticket>>,
    next_number: u64,
    /// Slots given in a row to a waiter that was not the oldest.
    local_grants: u32,
}

impl State {
    /// Takes a free slot if there is one. Free slots and waiters never coexist: a freed slot
    /// goes to a waiter when there is one.
    fn take_free(&mut self) -> bool {
        let free = self.free > 0;
        if free {
            self.free -= 1;
        }
        free
    }

    fn enqueue(&mut self, thread: u32, waker: Waker) -> Ticket {
        let number = self.next_number;
        self.next_number += 1;
        let waiter = Some(Waiter {
            number,
            waker,
            granted: false,
        });
        let index = match self.vacant.pop() {
            Some(index) => {
                self.waiters[index] = waiter;
                index
            }
            None => {
                self.waiters.push(waiter);
                self.waiters.len() - 1
            }
        };
        let ticket = Ticket { index, number };
        self.all.push_back(ticket);
        let thread = thread as usize;
        if self.by_thread.len() <= thread {
            self.by_thread.resize_with(thread + 1, VecDeque::new);
        }
        let line = &mut self.by_thread[thread];
        // A thread that only waits (its slots freed elsewhere) never pops its line.
        while line.front().is_some_and(|&t| !is_waiting(&self.waiters, t)) {
            line.pop_front();
        }
        line.push_back(ticket);
        ticket
    }

    /// True, and the waiter gone, when its slot was granted; otherwise keeps `waker`.
    fn take_grant(&mut self, ticket: Ticket, waker: &Waker) -> bool {
        let Some(waiter) = self.waiter_mut(ticket) else {
            return false;
        };
        if !waiter.granted {
            waiter.waker.clone_from(waker);
            return false;
        }
        self.remove(ticket);
        true
    }

    /// Removes a waiter that stops waiting; true if a slot had been granted to it.
    fn leave(&mut self, ticket: Ticket) -> bool {
        let granted = self.waiter_mut(ticket).is_some_and(|waiter| waiter.granted);
        self.remove(ticket);
        granted
    }

    /// Gives a freed slot (freed on `thread`) to a waiter, whose waker is returned, or keeps it.
    fn grant(&mut self, thread: u32) -> Option<Waker> {
        let oldest = pop_waiting(&mut self.all, &self.waiters);
        let chosen = match oldest {
            Some(oldest) if self.local_grants < MAX_LOCAL_GRANTS => {
                let local = self
                    .by_thread
                    .get_mut(thread as usize)
                    .and_then(|line| pop_waiting(line, &self.waiters));
                match local {
                    Some(local) if local != oldest => {
                        // The oldest keeps its place at the front.
                        self.all.push_front(oldest);
                        self.local_grants += 1;
                        local
                    }
                    _ => {
                        self.local_grants = 0;
                        oldest
                    }
                }
            }
            Some(oldest) => {
                self.local_grants = 0;
                oldest
            }
            None => {
                self.free += 1;
                return None;
            }
        };
        match self.waiter_mut(chosen) {
            Some(waiter) => {
                waiter.granted = true;
                // A granted waiter's next poll takes its slot without waiting: its waker is
                // not needed again.
                Some(std::mem::replace(&mut waiter.waker, Waker::noop().clone()))
            }
            // `pop_waiting` has just seen it waiting; kept rather than lost all the same.
            None => {
                self.free += 1;
                None
            }
        }
    }

    fn waiter_mut(&mut self, ticket: Ticket) -> Option<&mut Waiter> {
        self.waiters
            .get_mut(ticket.index)?
            .as_mut()
            .filter(|waiter| waiter.number == ticket.number)
    }

    fn remove(&mut self, ticket: Ticket) {
        if self.waiter_mut(ticket).is_some() {
            self.waiters[ticket.index] = None;
            self.vacant.push(ticket.index);
        }
    }
}

/// The waiter `ticket` names, if it has not left.
fn find(waiters: &[Option<Waiter>], ticket: Ticket) -> Option<&Waiter> {
    waiters
        .get(ticket.index)?
        .as_ref()
        .filter(|waiter| waiter.number == ticket.number)
}

fn is_waiting(waiters: &[Option<Waiter>], ticket: Ticket) -> bool {
    find(waiters, ticket).is_some_and(|waiter| !waiter.granted)
}

/// The first entry of `line` still waiting, taken off the line with those before it.
fn pop_waiting(line: &mut VecDeque<Ticket>, waiters: &[Option<Waiter>]) -> Option<Ticket> {
    while let Some(ticket) = line.pop_front() {
        if is_waiting(waiters, ticket) {
            return Some(ticket);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// Counts its wake-ups.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Waker, Arc<Count>) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Waker::from(Arc::clone(&count)), count)
    }

    fn granted(state: &State, ticket: Ticket) -> bool {
        find(&state.waiters, ticket).is_some_and(|waiter| waiter.granted)
    }

    #[test]
    fn a_freed_slot_goes_to_a_waiter_on_the_freeing_thread_first() {
        let mut state = State::default();
        let (waker_a, woken_a) = waker();
        let (waker_b, woken_b) = waker();
        let on_other = state.enqueue(1, waker_a);
        let on_this = state.enqueue(2, waker_b);
        assert!(state.grant(2).is_some_and(|waker| {
            waker.wake();
            true
        }));
        assert!(granted(&state, on_this) && !granted(&state, on_other));
        assert_eq!(woken_b.0.load(Ordering::Relaxed), 1);
        assert_eq!(woken_a.0.load(Ordering::Relaxed), 0);
        // A thread without waiters frees the next: the oldest gets it.
        state.grant(3);
        assert!(granted(&state, on_other));
        assert_eq!(state.free, 0);
        state.grant(1);
        assert_eq!(state.free, 1, "nobody waits: the slot is kept");
    }

    #[test]
    fn the_oldest_waiter_is_served_at_least_every_few_slots() {
        let mut state = State::default();
        let oldest = state.enqueue(1, waker().0);
        let locals: Vec<Ticket> = (0..10).map(|_| state.enqueue(2, waker().0)).collect();
        for local in &locals[..MAX_LOCAL_GRANTS as usize] {
            state.grant(2);
            assert!(granted(&state, *local));
            assert!(!granted(&state, oldest));
        }
        state.grant(2);
        assert!(granted(&state, oldest), "passed over more than allowed");
        // ...and then the local ones again.
        state.grant(2);
        assert!(granted(&state, locals[MAX_LOCAL_GRANTS as usize]));
    }

    #[test]
    fn a_waiter_that_leaves_is_skipped_and_a_granted_one_gives_its_slot_on() {
        let mut state = State::default();
        let gone = state.enqueue(1, waker().0);
        let next = state.enqueue(1, waker().0);
        assert!(!state.leave(gone), "nothing was granted to it");
        state.grant(1);
        assert!(granted(&state, next));
        assert!(state.leave(next), "it had a slot to give on");
        // Its index is reused; the old ticket does not name the new waiter.
        let reuser = state.enqueue(1, waker().0);
        assert_eq!(reuser.index, next.index);
        assert!(!state.take_grant(next, &waker().0));
        assert!(!state.leave(next));
        assert!(!granted(&state, reuser));
    }

    #[test]
    fn a_line_only_waited_on_does_not_grow() {
        let mut state = State::default();
        for _ in 0..1000 {
            let ticket = state.enqueue(1, waker().0);
            // Its slot freed on another thread, then taken.
            state.grant(2);
            assert!(state.take_grant(ticket, &waker().0));
        }
        assert!(state.by_thread[1].len() <= 1);
        assert!(state.all.len() <= 1);
        assert!(state.vacant.len() <= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_are_never_over_issued_and_every_waiter_gets_one() {
        let queue = Arc::new(SlotQueue::new(3));
        let held = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (queue, held) = (Arc::clone(&queue), Arc::clone(&held));
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let _permit = queue.acquire().await;
                        assert!(held.fetch_add(1, Ordering::SeqCst) < 3, "over-issued");
                        tokio::task::yield_now().await;
                        held.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a waiter panicked");
        }
        assert_eq!(queue.lock().free, 3, "every slot given back");
        // A waiter dropped with its slot granted gives it on.
        let first = queue.try_acquire().expect("free");
        let (second, third) = (queue.try_acquire(), queue.try_acquire());
        let mut waiting = Box::pin(queue.acquire());
        let noop = Waker::noop();
        assert!(waiting
            .as_mut()
            .poll(&mut Context::from_waker(noop))
            .is_pending());
        drop(first);
        drop(waiting);
        assert_eq!(queue.lock().free, 1);
        drop((second, third));
        assert_eq!(queue.lock().free, 3);
    }
}
