//! Local writes staged per batch of commands: a connection's pipeline of
//! writes is numbered and encoded as it runs (under each write's shard
//! lock, as before) and put into the backlog once, at the end of the
//! batch, under one lock of the core instead of one per write (that lock,
//! a fence right after each command's stores, and the wake check were a
//! quarter of what replication added to a write).
//!
//! Staging is per thread: a batch runs on one thread between two awaits
//! (the guard that opens it is not `Send`, so the compiler refuses an
//! await while one is open). A write is numbered when it is made, so
//! everything that counts writes by number (promises, cuts, transfers,
//! WAIT) sees it as before; only its frame waits, and a write another
//! thread numbers later waits for it (`Core::park`), so the backlog and
//! the log stay in number order.

use std::cell::RefCell;

/// A stage holding this many writes, or this many bytes, is handed over
/// at once rather than at the batch's end: writes other threads number
/// meanwhile wait behind it (parked), so a long pipeline must not hold
/// the node's replication (and its peers' GC) for its whole length, nor
/// a batch of large values sit in the stage and the backlog at once.
const STAGE_WRITES: usize = 64;
const STAGE_BYTES: usize = 64 * 1024;

/// The most buffer a thread's stage keeps between batches.
const STAGE_KEPT: usize = 256 * 1024;

/// One thread's staged writes.
struct Stage {
    /// The replicator the open batch stages for (its id); 0: none open.
    open: u64,
    /// Bodies of the staged writes, back to back.
    bodies: Vec<u8>,
    /// Each write's number, where its body ends in `bodies`, and when it
    /// was made (unix ms).
    writes: Vec<(u64, usize, u64)>,
}

thread_local! {
    static STAGE: RefCell<Stage> = const {
        RefCell::new(Stage {
            open: 0,
            bodies: Vec::new(),
            writes: Vec::new(),
        })
    };
}

/// Opens a batch on this thread for replicator `id`: writes made before
/// the matching [`close`] are staged.
pub(super) fn open(id: u64) {
    STAGE.with_borrow_mut(|stage| {
        debug_assert!(stage.writes.is_empty(), "a closed batch left writes staged");
        stage.open = id;
    });
}

/// Stages write `seq`'s body for replicator `id` if this thread has a
/// batch open for it: `encode` appends the body. `Ok(true)`: staged, and
/// big enough that the stage should be published now; `Err(encode)`: no
/// batch is open (the caller publishes at once).
pub(super) fn stage<F: FnOnce(&mut Vec<u8>)>(
    id: u64,
    seq: u64,
    now_ms: u64,
    encode: F,
) -> Result<bool, F> {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id {
            return Err(encode);
        }
        // (Bytes an encoding that panicked left behind are not a body.)
        let start = stage.writes.last().map_or(0, |w| w.1);
        stage.bodies.truncate(start);
        encode(&mut stage.bodies);
        stage.writes.push((seq, stage.bodies.len(), now_ms));
        Ok(stage.writes.len() >= STAGE_WRITES || stage.bodies.len() >= STAGE_BYTES)
    })
}

/// Hands this thread's staged writes for replicator `id` to `publish`
/// (each number, body and time made, in the order they were staged).
/// False when there were none.
pub(super) fn drain(
    id: u64,
    publish: impl FnOnce(&mut dyn Iterator<Item = (u64, &[u8], u64)>),
) -> bool {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id || stage.writes.is_empty() {
            return false;
        }
        let bodies = &stage.bodies;
        let mut start = 0;
        let mut each = stage.writes.iter().map(|&(seq, end, ms)| {
            let body = &bodies[start..end];
            start = end;
            (seq, body, ms)
        });
        publish(&mut each);
        stage.bodies.clear();
        stage.writes.clear();
        if stage.bodies.capacity() > STAGE_KEPT {
            stage.bodies = Vec::new();
        }
        true
    })
}

/// Closes this thread's batch for replicator `id` (after the caller
/// drained and published what it staged).
pub(super) fn close(id: u64) {
    STAGE.with_borrow_mut(|stage| {
        if stage.open == id {
            debug_assert!(stage.writes.is_empty(), "closed with writes staged");
            stage.open = 0;
        }
    });
}
