//! The dispatcher's memory on the leader (never replicated): why each queued build
//! waits, which apps have a deploy in flight (their deploy slots), when the registry
//! grants are looked at next, and the placement counters `/metrics` exports.
//!
//! The work itself (placing, deploying, renewing) is in `dispatch/`; this is the state
//! it keeps between ticks, which the API and the HTTP side read too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::placement::Rejection;

/// Leader-only memory of the dispatcher.
#[derive(Default)]
pub struct DispatchState {
    /// Why each waiting build could not be placed, as of the last attempt.
    pub waiting: Mutex<HashMap<String, Vec<Rejection>>>,
    /// Apps with a deploy (or a grant renewal) in flight on this leader, and the means
    /// to stop it.
    deploying: Mutex<HashMap<String, AbortHandle>>,
    /// Placement decisions taken, for `/metrics`.
    pub placements: PlacementCounters,
    /// When the dispatcher looks at the services' pull grants next.
    next_renewal: Mutex<Option<Instant>>,
    /// When the dispatcher last finished a pass as leader (`/readyz`).
    last_pass: Mutex<Option<Instant>>,
    /// Set while a registry GC runs: queued builds wait in the queue (no pushes may
    /// run during the registry's garbage-collect).
    builds_paused: AtomicBool,
    /// One registry GC at a time on this member.
    pub gc_running: tokio::sync::Mutex<()>,
}

impl DispatchState {
    /// Reasons a queued build waits, node by node.
    pub fn waiting_on(&self, build_id: &str) -> Vec<Rejection> {
        self.waiting.lock().expect("dispatch lock poisoned").get(build_id).cloned().unwrap_or_default()
    }

    /// True while this leader deploys the app.
    pub fn is_deploying(&self, app: &str) -> bool {
        self.deploying.lock().expect("dispatch lock poisoned").contains_key(app)
    }

    /// Takes the app's deploy slot for the task `start` spawns (it returns the task's
    /// abort handle), unless something else holds it: false then, and `start` is not
    /// called. Whoever takes the slot gives it back with [`DispatchState::release`].
    pub fn hold(&self, app: &str, start: impl FnOnce() -> AbortHandle) -> bool {
        let mut deploying = self.deploying.lock().expect("dispatch lock poisoned");
        if deploying.contains_key(app) {
            return false;
        }
        // Still under the lock: a task that ends at once releases its slot after this.
        deploying.insert(app.to_string(), start());
        true
    }

    /// Frees the app's deploy slot.
    pub fn release(&self, app: &str) {
        self.deploying.lock().expect("dispatch lock poisoned").remove(app);
    }

    /// True once `now` reaches the time set for the next look at the pull grants (or
    /// none was set); then the next look is set `period` after `now`.
    pub fn renewal_due(&self, now: Instant, period: Duration) -> bool {
        let mut next = self.next_renewal.lock().expect("dispatch lock poisoned");
        if next.is_some_and(|at| now < at) {
            return false;
        }
        *next = Some(now + period);
        true
    }

    /// Notes that the dispatcher finished a pass as leader.
    pub fn passed(&self) {
        *self.last_pass.lock().expect("dispatch lock poisoned") = Some(Instant::now());
    }

    /// How long ago the dispatcher last finished a pass as leader (None: never).
    pub fn last_pass_age(&self) -> Option<Duration> {
        self.last_pass.lock().expect("dispatch lock poisoned").map(|at| at.elapsed())
    }

    /// Holds queued builds in the queue (true) or lets them be placed again (false).
    pub fn pause_builds(&self, paused: bool) {
        self.builds_paused.store(paused, Ordering::SeqCst);
    }

    /// Whether queued builds are held (a registry GC runs).
    pub fn builds_paused(&self) -> bool {
        self.builds_paused.load(Ordering::SeqCst)
    }

    /// This member stopped leading: its deploys stop (the next leader redeploys whatever
    /// is still pending), and its placement notes are stale.
    pub fn stand_down(&self) {
        for (_, task) in self.deploying.lock().expect("dispatch lock poisoned").drain() {
            task.abort();
        }
        self.waiting.lock().expect("dispatch lock poisoned").clear();
        *self.last_pass.lock().expect("dispatch lock poisoned") = None;
    }
}

/// Placement decisions taken by this member while it led: bumped by the dispatcher.
#[derive(Debug, Default)]
pub struct PlacementCounters {
    placed: AtomicU64,
    no_node: AtomicU64,
}

impl PlacementCounters {
    /// A build was given to a node (the assignment was committed).
    pub fn placed(&self) {
        self.placed.fetch_add(1, Ordering::Relaxed);
    }

    /// A placement attempt found no node that could take the build (it keeps waiting,
    /// and is tried again on the next dispatcher tick).
    pub fn no_node(&self) {
        self.no_node.fetch_add(1, Ordering::Relaxed);
    }

    /// (placed, no node) so far.
    pub fn get(&self) -> (u64, u64) {
        (self.placed.load(Ordering::Relaxed), self.no_node.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count() {
        let c = PlacementCounters::default();
        c.placed();
        c.no_node();
        c.no_node();
        assert_eq!(c.get(), (1, 2));
    }
}
