//! What a merge reports when a write lost without its winner having seen it.

use serde::{Deserialize, Serialize};

use crate::stamp::{NodeId, Stamp};

/// Values longer than this are reported by length and digest, not in full,
/// so a conflict log entry stays small whatever the values are.
pub const INLINE_VALUE_MAX: usize = 64;

/// Why a write lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictKind {
    /// Two concurrent register writes (SET and friends); the higher stamp won.
    ConcurrentWrite,
    /// A register write lost to a concurrent, later-stamped delete.
    WriteLostToDelete,
    /// A delete lost to a concurrent, later-stamped register write.
    DeleteLostToWrite,
    /// A non-numeric value was written over a counter whose increments it had
    /// not seen; those increments are hidden until a numeric value is set.
    TypeClash,
    /// Increments arrived on top of a non-numeric value and are hidden by it.
    IncrementHidden,
    /// A write (or increments) lost to a concurrent FLUSHDB/FLUSHALL that
    /// had not seen it: stamped before the flush, it arrived after it.
    WriteLostToFlush,
    /// A write lost to the key's expiry on a node that had not seen it (a
    /// SET that cleared the TTL, made before the key expired elsewhere).
    WriteLostToExpiry,
}

impl ConflictKind {
    /// Every kind, in the order INFO lists them.
    pub const ALL: [ConflictKind; 7] = [
        ConflictKind::ConcurrentWrite,
        ConflictKind::WriteLostToDelete,
        ConflictKind::DeleteLostToWrite,
        ConflictKind::TypeClash,
        ConflictKind::IncrementHidden,
        ConflictKind::WriteLostToFlush,
        ConflictKind::WriteLostToExpiry,
    ];

    /// The kind named `name` (as [`ConflictKind::as_str`] spells it, any
    /// case).
    pub fn parse(name: &[u8]) -> Option<ConflictKind> {
        ConflictKind::ALL
            .into_iter()
            .find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    /// Its place in [`ConflictKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictKind::ConcurrentWrite => "concurrent-write",
            ConflictKind::WriteLostToDelete => "write-lost-to-delete",
            ConflictKind::DeleteLostToWrite => "delete-lost-to-write",
            ConflictKind::TypeClash => "type-clash",
            ConflictKind::IncrementHidden => "increment-hidden",
            ConflictKind::WriteLostToFlush => "write-lost-to-flush",
            ConflictKind::WriteLostToExpiry => "write-lost-to-expiry",
        }
    }
}

/// A short description of one side's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Summary {
    /// The value itself, when at most [`INLINE_VALUE_MAX`] bytes.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A longer value: its length and 64-bit FNV-1a digest (not cryptographic).
    Digest { len: u64, fnv64: u64 },
    /// A delete.
    Deleted,
    /// Increments of one node not removed by any reset.
    Increment { int: i64, float: f64 },
    /// A hash, set or sorted set of `len` elements (a type clash's side).
    Collection { kind: String, len: u64 },
}

impl Summary {
    pub fn of_value(value: Option<&[u8]>) -> Summary {
        match value {
            None => Summary::Deleted,
            Some(v) if v.len() <= INLINE_VALUE_MAX => Summary::Value(v.to_vec()),
            Some(v) => Summary::Digest {
                len: v.len() as u64,
                fnv64: fnv1a64(v),
            },
        }
    }
}

/// One side of a conflict: who wrote it, when, and what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub origin: NodeId,
    /// The write's stamp; for increments, the stamp that began the node's
    /// current counter segment.
    pub stamp: Stamp,
    pub what: Summary,
}

/// A write that lost without having been seen by the write that beat it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub winner: Side,
    pub loser: Side,
    /// The hash field or sorted-set member both sides wrote; `None` for
    /// the key itself.
    pub element: Option<Vec<u8>>,
}

/// 64-bit FNV-1a: a stable digest, identical on every node and platform.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
