//! Keys under WATCH: every change to one (a local write, a replicated
//! merge, an expiry, an eviction, a flush of its database) flags each
//! transaction watching it, as Redis's `touchWatchedKey` does. Comparing
//! the key's state at EXEC with its state at WATCH misses a key that was
//! absent both times but written and deleted between (a state that is
//! gone leaves nothing to compare). Writers pay one atomic load while no
//! key is watched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

/// A transaction watching a key: the database it watches it in, and its
/// flag.
type Watcher = (usize, Weak<AtomicBool>);

/// The registry: a key to the transactions watching it (keyed by the
/// bytes alone, so that a write looks its key up without copying it).
/// Writes only read it (their flags are atomics), so while some client
/// watches, the server's threads still write side by side.
#[derive(Default)]
pub struct Watches {
    /// Registrations held: 0 lets writers skip the lock.
    active: AtomicUsize,
    keys: RwLock<HashMap<Vec<u8>, Vec<Watcher>>>,
}

impl Watches {
    /// `key` in `db` changed: every transaction watching it fails.
    pub fn touched(&self, db: usize, key: &[u8]) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Some(watching) = self.keys.read().get(key) {
            for (d, dirty) in watching {
                if *d == db {
                    if let Some(dirty) = dirty.upgrade() {
                        dirty.store(true, Ordering::Release);
                    }
                }
            }
        }
    }

    /// Every key of `db` (`None`: of every database) changed: a flush, or
    /// a SWAPDB.
    pub fn touched_db(&self, db: Option<usize>) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        for watching in self.keys.read().values() {
            for (d, dirty) in watching {
                if db.is_none_or(|db| db == *d) {
                    if let Some(dirty) = dirty.upgrade() {
                        dirty.store(true, Ordering::Release);
                    }
                }
            }
        }
    }
}

/// One client's watched keys; dropping it unregisters them.
pub struct WatchSet {
    registry: Arc<Watches>,
    dirty: Arc<AtomicBool>,
    keys: Vec<(usize, Vec<u8>)>,
}

impl WatchSet {
    pub fn new(registry: Arc<Watches>) -> WatchSet {
        WatchSet {
            registry,
            dirty: Arc::new(AtomicBool::new(false)),
            keys: Vec::new(),
        }
    }

    /// Watches `key` in `db` from now on.
    pub fn add(&mut self, db: usize, key: &[u8]) {
        let mut keys = self.registry.keys.write();
        keys.entry(key.to_vec())
            .or_default()
            .push((db, Arc::downgrade(&self.dirty)));
        self.registry.active.fetch_add(1, Ordering::AcqRel);
        self.keys.push((db, key.to_vec()));
    }

    /// Whether a watched key changed since it was added.
    pub fn touched(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }
}

impl Drop for WatchSet {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut keys = self.registry.keys.write();
        for (db, key) in &self.keys {
            let Some(watching) = keys.get_mut(key.as_slice()) else {
                continue;
            };
            if let Some(at) = watching
                .iter()
                .position(|(d, w)| d == db && w.as_ptr() == Arc::as_ptr(&self.dirty))
            {
                watching.swap_remove(at);
                self.registry.active.fetch_sub(1, Ordering::AcqRel);
            }
            if watching.is_empty() {
                keys.remove(key.as_slice());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_flags_the_sets_watching_that_key_in_that_database() {
        let registry = Arc::new(Watches::default());
        let mut a = WatchSet::new(registry.clone());
        let mut b = WatchSet::new(registry.clone());
        a.add(0, b"k");
        b.add(1, b"k");
        b.add(0, b"other");
        registry.touched(0, b"k");
        assert!(a.touched());
        assert!(!b.touched(), "k in another database");
        registry.touched_db(Some(1));
        assert!(b.touched());
        drop(a);
        drop(b);
        assert_eq!(registry.active.load(Ordering::Relaxed), 0);
        assert!(registry.keys.read().is_empty(), "dropped sets unregister");
        let mut c = WatchSet::new(registry.clone());
        c.add(0, b"k");
        c.add(0, b"k");
        registry.touched_db(None);
        assert!(c.touched());
        drop(c);
        assert!(registry.keys.read().is_empty());
    }
}
