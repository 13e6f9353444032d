//! Local writes staged per batch of commands: a connection's pipeline of
//! writes is encoded as it runs and numbered into the backlog once, at the
//! end of the batch, under one lock of the core instead of one per write
//! (that lock, a fence right after each command's stores, and the wake
//! check were a quarter of what replication added to a write).
//!
//! Staging is per thread: a batch runs on one thread between two awaits
//! (the guard that opens it is not `Send`, so the compiler refuses an
//! await while one is open). The GC promise must not count a staged write
//! as "numbered" (see `Core::promise`): each thread's slot holds a time at
//! or before every stamp its open batch may issue, and a promise is made
//! below it (`Replicator::staged_floor`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Bodies at least this big are published at once rather than held to
/// the batch's end: a batch of large values would otherwise sit in the
/// stage and the backlog at once.
pub(super) const STAGE_AT_ONCE: usize = 64 * 1024;

/// The most buffer a thread's stage keeps between batches.
const STAGE_KEPT: usize = 256 * 1024;

/// Distinct replicators a thread keeps a slot for (the simulation runs
/// several nodes on one thread; a server, one).
const SLOTS_KEPT: usize = 16;

/// No batch open (a slot's value).
pub(super) const IDLE: u64 = u64::MAX;

/// Every thread's slot of one replicator.
#[derive(Default)]
pub(super) struct Slots {
    slots: Mutex<Vec<Weak<AtomicU64>>>,
}

impl Slots {
    /// The lowest clock floor any open batch started at (`IDLE`: none):
    /// every write staged is stamped after it. Read with every shard lock
    /// held: a batch that stages after this opened after it, and one whose
    /// slot reads idle has published.
    pub(super) fn floor(&self) -> u64 {
        let mut slots = self.slots.lock();
        slots.retain(|w| w.strong_count() > 0);
        slots
            .iter()
            .filter_map(Weak::upgrade)
            .map(|s| s.load(Ordering::Acquire))
            .min()
            .unwrap_or(IDLE)
    }

    fn register(&self) -> Arc<AtomicU64> {
        let slot = Arc::new(AtomicU64::new(IDLE));
        self.slots.lock().push(Arc::downgrade(&slot));
        slot
    }
}

/// One thread's staged writes.
struct Stage {
    /// The replicator the open batch stages for (its id), 0: none open.
    open: u64,
    slot: Option<Arc<AtomicU64>>,
    /// Slots this thread holds, by replicator id.
    slots: Vec<(u64, Arc<AtomicU64>)>,
    /// Bodies of the staged writes, back to back.
    bodies: Vec<u8>,
    /// Where each body ends in `bodies`, and when it was made (unix ms).
    ends: Vec<(usize, u64)>,
}

thread_local! {
    static STAGE: RefCell<Stage> = const {
        RefCell::new(Stage {
            open: 0,
            slot: None,
            slots: Vec::new(),
            bodies: Vec::new(),
            ends: Vec::new(),
        })
    };
}

/// Opens a batch on this thread for replicator `id` (whose slots are
/// `slots`); `floor` is the clock's floor (`Clock::floor`), read now.
/// Writes made before the matching [`close`] are staged.
pub(super) fn open(id: u64, slots: &Slots, floor: u64) {
    STAGE.with_borrow_mut(|stage| {
        debug_assert!(stage.ends.is_empty(), "a closed batch left writes staged");
        let slot = match stage.slots.iter().position(|(owner, _)| *owner == id) {
            Some(i) => stage.slots[i].1.clone(),
            None => {
                if stage.slots.len() >= SLOTS_KEPT {
                    stage.slots.remove(0);
                }
                let slot = slots.register();
                stage.slots.push((id, slot.clone()));
                slot
            }
        };
        // Before any write of the batch takes its stamp: each is stamped
        // after this time (a promise is made below it).
        slot.store(floor, Ordering::Release);
        stage.slot = Some(slot);
        stage.open = id;
    });
}

/// Stages a write's body for replicator `id` if this thread has a batch
/// open for it: `encode` appends the body. `Ok(true)`: staged, and big
/// enough that the stage should be published now; `Err(encode)`: no batch
/// is open (the caller publishes at once).
pub(super) fn stage<F: FnOnce(&mut Vec<u8>)>(id: u64, now_ms: u64, encode: F) -> Result<bool, F> {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id {
            return Err(encode);
        }
        let start = stage.bodies.len();
        encode(&mut stage.bodies);
        stage.ends.push((stage.bodies.len(), now_ms));
        Ok(stage.bodies.len() - start >= STAGE_AT_ONCE)
    })
}

/// Hands this thread's staged writes for replicator `id` to `publish`
/// (each body and when it was made, in the order they were staged).
/// False when there were none.
pub(super) fn drain(id: u64, publish: impl FnOnce(&mut dyn Iterator<Item = (&[u8], u64)>)) -> bool {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id || stage.ends.is_empty() {
            return false;
        }
        let bodies = &stage.bodies;
        let mut start = 0;
        let mut each = stage.ends.iter().map(|&(end, ms)| {
            let body = &bodies[start..end];
            start = end;
            (body, ms)
        });
        publish(&mut each);
        stage.bodies.clear();
        stage.ends.clear();
        if stage.bodies.capacity() > STAGE_KEPT {
            stage.bodies = Vec::new();
        }
        true
    })
}

/// Closes this thread's batch for replicator `id`: its slot reads idle
/// (after the caller drained and published what it staged).
pub(super) fn close(id: u64) {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id {
            return;
        }
        debug_assert!(stage.ends.is_empty(), "closed with writes staged");
        if let Some(slot) = stage.slot.take() {
            slot.store(IDLE, Ordering::Release);
        }
        stage.open = 0;
    });
}
