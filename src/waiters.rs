//! Clients blocked on keys (BLPOP, BZPOPMIN, ...): each registers one
//! `Notify` under every key it waits for, and a change to one of those
//! keys, a local write or a replicated merge alike, wakes the client that
//! has waited longest on it to try again (Redis serves blocked clients
//! first come, first served). A client that stops waiting, served or not,
//! passes the turn on: it wakes the next in line on each of its keys, which
//! tries in its turn (a push of three elements serves three clients, one
//! after the other). `notify_one` keeps a wake that comes before the
//! client waits, so none is lost between its try and its wait. Writers pay
//! one atomic load while no client is blocked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// The registry: a key to the clients waiting on it, with their database
/// (keyed by the bytes alone, so that a write looks up its key without
/// copying it).
#[derive(Default)]
pub struct Waiters {
    blocked: AtomicUsize,
    keys: Mutex<HashMap<Vec<u8>, Vec<Waiter>>>,
}

struct Waiter {
    db: usize,
    notify: Weak<Notify>,
}

/// One blocked client's registration; dropping it unregisters.
pub struct Watch<'a> {
    waiters: &'a Waiters,
    db: usize,
    keys: Vec<Vec<u8>>,
    pub notify: Arc<Notify>,
}

impl Waiters {
    /// Registers a client waiting on `keys` of `db`.
    pub fn watch(&self, db: usize, keys: Vec<Vec<u8>>) -> Watch<'_> {
        let notify = Arc::new(Notify::new());
        {
            let mut map = self.keys.lock();
            for k in &keys {
                map.entry(k.clone()).or_default().push(Waiter {
                    db,
                    notify: Arc::downgrade(&notify),
                });
            }
        }
        self.blocked.fetch_add(1, Ordering::SeqCst);
        Watch {
            waiters: self,
            db,
            keys,
            notify,
        }
    }

    /// Wakes the client that has waited longest on `key` of `db`, if any.
    pub fn wake(&self, db: usize, key: &[u8]) {
        if self.blocked.load(Ordering::SeqCst) == 0 {
            return;
        }
        let map = self.keys.lock();
        if let Some(list) = map.get(key) {
            wake_first(list, db);
        }
    }

    /// Wakes every client waiting on a key of `db` (SWAPDB brings a whole
    /// other database under its keys).
    pub fn wake_db(&self, db: usize) {
        if self.blocked.load(Ordering::SeqCst) == 0 {
            return;
        }
        let map = self.keys.lock();
        for w in map.values().flatten().filter(|w| w.db == db) {
            if let Some(n) = w.notify.upgrade() {
                n.notify_one();
            }
        }
    }

    /// Clients blocked now (INFO blocked_clients).
    pub fn blocked(&self) -> usize {
        self.blocked.load(Ordering::Relaxed)
    }
}

impl Watch<'_> {
    /// Passes the turn on: wakes, on each key, the first waiter of this
    /// database registered after this one. For a client that was woken and
    /// stays blocked (the change was not one it can take: another type
    /// under the key, or an element someone else took), so that a client
    /// behind it that can take it is not left waiting.
    pub fn pass_on(&self) {
        let map = self.waiters.keys.lock();
        let me = Arc::as_ptr(&self.notify);
        for k in &self.keys {
            let Some(list) = map.get(k) else { continue };
            let after = list
                .iter()
                .position(|w| w.db == self.db && std::ptr::eq(w.notify.as_ptr(), me))
                .map_or(0, |i| i + 1);
            wake_first(&list[after..], self.db);
        }
    }
}

/// Wakes the first live waiter of `db` in `list` (registration order).
fn wake_first(list: &[Waiter], db: usize) {
    if let Some(n) = list
        .iter()
        .filter(|w| w.db == db)
        .find_map(|w| w.notify.upgrade())
    {
        n.notify_one();
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.keys.lock();
        let me = Arc::as_ptr(&self.notify);
        for k in std::mem::take(&mut self.keys) {
            if let Some(list) = map.get_mut(&k) {
                list.retain(|w| !(w.db == self.db && std::ptr::eq(w.notify.as_ptr(), me)));
                if list.is_empty() {
                    map.remove(&k);
                } else {
                    // The turn passes on: what woke this client (or what
                    // it left) may serve the next in line.
                    wake_first(list, self.db);
                }
            }
        }
        self.waiters.blocked.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_wakes_the_longest_waiting_and_leaving_passes_the_turn() {
        let w = Waiters::default();
        let first = w.watch(0, vec![b"k".to_vec()]);
        let second = w.watch(0, vec![b"k".to_vec()]);
        let short = std::time::Duration::from_millis(20);
        w.wake(0, b"k");
        tokio::time::timeout(short * 50, first.notify.notified())
            .await
            .expect("the first in line is woken");
        assert!(
            tokio::time::timeout(short, second.notify.notified())
                .await
                .is_err(),
            "the second waits its turn"
        );
        first.pass_on();
        tokio::time::timeout(short * 50, second.notify.notified())
            .await
            .expect("a woken client that stays blocked wakes the next");
        drop(first);
        tokio::time::timeout(short * 50, second.notify.notified())
            .await
            .expect("the first leaving wakes the next");
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept_and_only_watched_keys_wake() {
        let w = Waiters::default();
        w.wake(0, b"k");
        let watch = w.watch(0, vec![b"k".to_vec(), b"j".to_vec()]);
        assert_eq!(w.blocked(), 1);
        w.wake(1, b"k");
        w.wake(0, b"other");
        let idle = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            watch.notify.notified(),
        );
        assert!(idle.await.is_err(), "no watched key changed");
        w.wake(0, b"j");
        // Woken before waiting: the permit is kept.
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.notify.notified())
            .await
            .expect("the wake reaches the watch");
        let other = w.watch(1, vec![b"x".to_vec()]);
        w.wake_db(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), other.notify.notified())
            .await
            .expect("a database-wide wake reaches the watch");
        drop(other);
        drop(watch);
        assert_eq!(w.blocked(), 0);
        assert!(w.keys.lock().is_empty());
    }
}
