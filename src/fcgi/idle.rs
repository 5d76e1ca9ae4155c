//! The worker's idle connections, oldest first: when `--max-conns` is
//! reached, the oldest idle one is closed to make room for a new one (as
//! nginx does with its keepalive pool), so idle connections can never lock
//! everyone out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// How an idle connection is asked to close.
#[derive(Clone)]
pub enum Evict {
    /// A connection of the I/O thread: notified, it closes itself.
    Notify(Arc<Notify>),
    /// A kept connection parked between requests ([`super::kept`]).
    Call(Arc<dyn Fn() + Send + Sync>),
}

/// Idle connections, in the order they went idle (of the I/O thread and
/// parked ones alike).
#[derive(Default)]
pub struct IdleList {
    entries: Mutex<BTreeMap<u64, Evict>>,
    next: AtomicU64,
}

impl IdleList {
    /// A connection goes idle; `evict` is notified if it must close.
    /// Returns the key to [`leave`](IdleList::leave) with.
    pub fn enter(&self, evict: Evict) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, evict);
        key
    }

    /// The connection is busy again (or closing).
    pub fn leave(&self, key: u64) {
        self.lock().remove(&key);
    }

    /// Ask the connection idle the longest to close; false when none is idle.
    pub fn evict_oldest(&self) -> bool {
        // (Called without the list locked: a parked connection's eviction
        // takes the kept connections' lock.)
        let oldest = self.lock().pop_first();
        match oldest {
            Some((_, Evict::Notify(evict))) => {
                evict.notify_one();
                true
            }
            Some((_, Evict::Call(evict))) => {
                evict();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Evict>> {
        crate::core::lock(&self.entries)
    }
}
