//! The unit of replication: what one write changed.

use serde::{Deserialize, Serialize};

use crate::stamp::{NodeId, Stamp};
use crate::state::KeyState;

/// One replicated write. Every client write produces exactly one `Delta`
/// (MSET one per key), stamped at its origin and never re-stamped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delta {
    /// A change to one key: a partial [`KeyState`] merged into the key's state.
    Key {
        db: u32,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        state: KeyState,
    },
    /// FLUSHDB (`db: Some`) or FLUSHALL (`db: None`): everything stamped
    /// before `stamp` is dead; see [`KeyState::prune`].
    Flush { db: Option<u32>, stamp: Stamp },
}

impl Delta {
    /// Puts back the node of a register stamp that a write of `origin`'s
    /// left implied (named node 0: see
    /// [`crate::codec::append_plain_key_delta`]). No write is stamped by
    /// node 0, so a register stamp with a time and node 0 is one of
    /// these; `Stamp::ZERO` (never written) stays as it is.
    pub fn restore_origin(&mut self, origin: NodeId) {
        if let Delta::Key { state, .. } = self {
            let stamp = &mut state.reg.stamp;
            if stamp.node == NodeId(0) && stamp.time != 0 {
                stamp.node = origin;
            }
        }
    }

    /// The stamp the delta was written at (for a key delta, the newest one in it).
    pub fn stamp(&self) -> Stamp {
        match self {
            Delta::Key { state, .. } => state.latest_stamp(),
            Delta::Flush { stamp, .. } => *stamp,
        }
    }
}
