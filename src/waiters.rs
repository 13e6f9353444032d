//! Clients blocked on keys (BZPOPMIN, BZPOPMAX): each registers one
//! `Notify` under every key it waits for, and a change to one of those
//! keys, a local write or a replicated merge alike, wakes it to try again.
//! `notify_one` keeps a wake that comes before the client waits, so none
//! is lost between its try and its wait. Writers pay one atomic load while
//! no client is blocked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A database and a key in it.
type Slot = (usize, Vec<u8>);

/// The registry: (database, key) to the clients waiting on it.
#[derive(Default)]
pub struct Waiters {
    blocked: AtomicUsize,
    keys: Mutex<HashMap<Slot, Vec<Weak<Notify>>>>,
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
                map.entry((db, k.clone()))
                    .or_default()
                    .push(Arc::downgrade(&notify));
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

    /// Wakes the clients waiting on `key` of `db`, if any.
    pub fn wake(&self, db: usize, key: &[u8]) {
        if self.blocked.load(Ordering::SeqCst) == 0 {
            return;
        }
        let map = self.keys.lock();
        if let Some(list) = map.get(&(db, key.to_vec())) {
            for w in list.iter().filter_map(Weak::upgrade) {
                w.notify_one();
            }
        }
    }

    /// Clients blocked now (INFO blocked_clients).
    pub fn blocked(&self) -> usize {
        self.blocked.load(Ordering::Relaxed)
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.keys.lock();
        for k in std::mem::take(&mut self.keys) {
            let slot = (self.db, k);
            if let Some(list) = map.get_mut(&slot) {
                list.retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.notify)));
                if list.is_empty() {
                    map.remove(&slot);
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
        drop(watch);
        assert_eq!(w.blocked(), 0);
        assert!(w.keys.lock().is_empty());
    }
}
