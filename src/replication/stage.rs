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

use chorus_transport::frame::{HEADER_LEN, MAX_FRAGMENT};

use super::wire;

/// A stage holding this many writes, or this many bytes, is handed over
/// at once rather than at the batch's end: writes other threads number
/// meanwhile wait behind it (parked), so a long pipeline must not hold
/// the node's replication (and its peers' GC) for its whole length, nor
/// a batch of large values sit in the stage and the backlog at once.
/// The bytes stay under the backlog's segment at its default size (64 KB),
/// so that a run goes into a buffer the backlog reuses: a run longer than
/// a segment takes a fresh buffer of its own, whose pages fault in anew.
const STAGE_WRITES: usize = 64;
const STAGE_BYTES: usize = 16 * 1024;

/// The most buffer a thread's stage keeps between batches.
const STAGE_KEPT: usize = 256 * 1024;

/// One thread's staged writes.
struct Stage {
    /// The replicator the open batch stages for (its id); 0: none open.
    open: u64,
    /// The staged writes as the backlog holds them, back to back: each
    /// framed for the wire (its length, then the delta's head and body),
    /// so that a run of them enters the backlog in one copy. Bytes past
    /// the last write's end are not a frame: earlier batches' frames and
    /// room, kept so that [`stage_put`] need not grow and zero its room
    /// again.
    frames: Vec<u8>,
    /// Each write's number, where its frame ends in `frames`, and when it
    /// was made (unix ms).
    writes: Vec<(u64, usize, u64)>,
}

thread_local! {
    static STAGE: RefCell<Stage> = const {
        RefCell::new(Stage {
            open: 0,
            frames: Vec::new(),
            writes: Vec::new(),
        })
    };
}

/// What became of a write given to [`stage`].
pub(super) enum Staged {
    /// Staged; true when the stage is big enough to publish now.
    Yes(bool),
    /// Not staged: its payload (head and body) is larger than one frame's
    /// fragment, and a run holds only whole one-fragment frames. The
    /// caller publishes it after what is staged.
    TooLarge(Vec<u8>),
}

/// Opens a batch on this thread for replicator `id`: writes made before
/// the matching [`close`] are staged.
pub(super) fn open(id: u64) {
    STAGE.with_borrow_mut(|stage| {
        debug_assert!(stage.writes.is_empty(), "a closed batch left writes staged");
        stage.open = id;
    });
}

/// Stages write `seq`'s frame for replicator `id` (`heads`: its node's)
/// if this thread has a batch open for it: `encode` appends the body.
/// `Err(encode)`: no batch is open (the caller publishes at once).
pub(super) fn stage<F: FnOnce(&mut Vec<u8>)>(
    id: u64,
    heads: &wire::Heads,
    seq: u64,
    now_ms: u64,
    encode: F,
) -> Result<Staged, F> {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id {
            return Err(encode);
        }
        // (Bytes an encoding that panicked left behind are not a frame.)
        let start = stage.writes.last().map_or(0, |w| w.1);
        let frames = &mut stage.frames;
        frames.truncate(start);
        frames.extend_from_slice(&[0; HEADER_LEN]);
        heads.append(frames, seq);
        encode(frames);
        let len = frames.len() - start - HEADER_LEN;
        if len > MAX_FRAGMENT {
            let payload = frames[start + HEADER_LEN..].to_vec();
            frames.truncate(start);
            // A drain of nothing staged would not shrink it.
            frames.shrink_to(STAGE_KEPT);
            return Ok(Staged::TooLarge(payload));
        }
        frames[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        stage.writes.push((seq, frames.len(), now_ms));
        Ok(Staged::Yes(
            stage.writes.len() >= STAGE_WRITES || frames.len() >= STAGE_BYTES,
        ))
    })
}

/// The largest payload [`stage_put`] lays out; a larger one goes through
/// [`stage`] (which also knows a payload too large for one fragment).
/// Small, so that the room a write makes (and the buffer keeps) past the
/// stage's hand-over size stays small.
const PUT_MOST: usize = 4 * 1024 + wire::HEAD_ROOM;

/// Stages write `seq`'s frame, like [`stage`], for a payload of at most
/// `most` bytes that `put` writes whole (head and body, given the number)
/// at the start of the slice it is given, returning how many: the frame's
/// length and payload are laid out in one stretch of the stage's buffer,
/// made room for once, where appending each part took a capacity check, a
/// copy and a cut of its own (most of what staging a SET cost).
/// `Ok(true)`: the stage is big enough to publish now. `Err(put)`: no
/// batch is open, or the payload may be larger than this lays out.
#[inline(always)]
pub(super) fn stage_put<F: FnOnce(&mut [u8], u64) -> usize>(
    id: u64,
    seq: u64,
    now_ms: u64,
    most: usize,
    put: F,
) -> Result<bool, F> {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id || most > PUT_MOST {
            return Err(put);
        }
        let start = stage.writes.last().map_or(0, |w| w.1);
        // The buffer keeps the length it grew to: bytes past the last
        // frame are room, already made, for the next.
        let room = start + HEADER_LEN + most;
        if stage.frames.len() < room {
            stage.frames.resize(room, 0);
        }
        let frame = &mut stage.frames[start..];
        let len = put(&mut frame[HEADER_LEN..], seq);
        // (The slice runs to the end of the kept buffer: a room undercounted
        // would not always panic.)
        debug_assert!(len <= most, "a payload past its room");
        frame[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        let end = start + HEADER_LEN + len;
        stage.writes.push((seq, end, now_ms));
        Ok(stage.writes.len() >= STAGE_WRITES || end >= STAGE_BYTES)
    })
}

/// Hands this thread's staged writes for replicator `id` to `publish`:
/// their frames back to back, and each one's number, where its frame ends
/// and when it was made, in the order they were staged. False when there
/// were none.
pub(super) fn drain(id: u64, publish: impl FnOnce(&[u8], &[(u64, usize, u64)])) -> bool {
    STAGE.with_borrow_mut(|stage| {
        if stage.open != id || stage.writes.is_empty() {
            return false;
        }
        let end = stage.writes.last().map_or(0, |w| w.1);
        publish(&stage.frames[..end], &stage.writes);
        // The bytes stay: cleared, the next batch's `stage_put` would
        // grow and zero its room again.
        stage.writes.clear();
        if stage.frames.capacity() > STAGE_KEPT {
            stage.frames = Vec::new();
        }
        true
    })
}

/// The payload of each staged frame (its head and body, without the
/// frame's length), with its number and time.
pub(super) fn payloads<'a>(
    frames: &'a [u8],
    writes: &'a [(u64, usize, u64)],
) -> impl Iterator<Item = (u64, &'a [u8], u64)> + 'a {
    let mut start = 0;
    writes.iter().map(move |&(seq, end, ms)| {
        let payload = &frames[start + HEADER_LEN..end];
        start = end;
        (seq, payload, ms)
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
