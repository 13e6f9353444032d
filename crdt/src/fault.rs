//! Deliberately broken merge rules, switched on per thread by tests that
//! must show the simulation notices them. Compiled only with the
//! `fault-injection` feature; off unless a test turns it on.

use std::cell::Cell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Correct rules.
    None,
    /// A counter reads as its largest tally instead of their sum.
    CounterMax,
    /// A merge ignores an incoming delete (tombstone) that should win.
    DropDeletes,
    /// A register write that lost counts as seen by its winner when its
    /// origin's node id is the lower: half the conflicts go unreported.
    HideConflicts,
    /// A list push lands one element in from its end (LPUSH after the
    /// head, RPUSH before the tail): out of its node's order.
    ListOrder,
    /// An SREM removes every add of its member but the oldest it holds:
    /// the member stays, on every node alike.
    RemoveMissesDot,
}

thread_local! {
    static BROKEN: Cell<Broken> = const { Cell::new(Broken::None) };
}

/// Breaks (or with `Broken::None` restores) the rules on this thread.
pub fn set(broken: Broken) {
    BROKEN.with(|b| b.set(broken));
}

pub(crate) fn get() -> Broken {
    BROKEN.with(Cell::get)
}
