//! The fields of a hash (issue #13): an observed-remove map whose fields
//! are last-writer-wins registers. A field keeps the writes no later write
//! or HDEL observed, each under its dot; two of them at once are writes
//! made concurrently, a conflict, and the one with the higher stamp is the
//! value. A later write or HDEL on a node that holds both observes both and
//! clears them. Removal works as in [`crate::orset`]: no tombstone per
//! field, the key's context tells a removed field from one not seen yet.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::conflict::{Conflict, ConflictKind, Side, Summary};
use crate::context::{CausalContext, Dot};
use crate::orset::{join_entries, Dotted};
use crate::stamp::{NodeId, Stamp};

/// One write of a field: its dot, its HLC time (the stamp's node is the
/// dot's), and the value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldWrite {
    pub dot: Dot,
    pub time: u64,
    #[serde(with = "serde_bytes")]
    pub value: Box<[u8]>,
}

impl FieldWrite {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            time: self.time,
            node: self.dot.node,
        }
    }

    fn side(&self) -> Side {
        Side {
            origin: self.dot.node,
            stamp: self.stamp(),
            what: Summary::of_value(Some(&self.value)),
        }
    }
}

impl Dotted for FieldWrite {
    fn dot(&self) -> Dot {
        self.dot
    }
}

/// A field's surviving writes: almost always one.
pub type Writes = SmallVec<[FieldWrite; 1]>;

/// See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LwwMap {
    ctx: CausalContext,
    fields: BTreeMap<Vec<u8>, Writes>,
}

/// A field's value: its highest-stamped surviving write.
fn winner(writes: &Writes) -> Option<&FieldWrite> {
    writes.iter().max_by_key(|w| w.stamp())
}

impl LwwMap {
    pub fn new() -> LwwMap {
        LwwMap::default()
    }

    pub fn get(&self, field: &[u8]) -> Option<&[u8]> {
        self.fields.get(field).and_then(winner).map(|w| &*w.value)
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// The surviving writes of `field` (more than one: a conflict).
    pub fn writes(&self, field: &[u8]) -> Option<&Writes> {
        self.fields.get(field)
    }

    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// (field, value), by field.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .filter_map(|(f, w)| Some((f.as_slice(), &*winner(w)?.value)))
    }

    /// The delta of `node` writing `value` to `field` at `stamp`: a new
    /// dot, replacing every write of the field this state holds.
    pub fn set(&self, node: NodeId, stamp: Stamp, field: &[u8], value: &[u8]) -> LwwMap {
        let dot = self.ctx.next_dot(node);
        let mut delta = self.remove(field);
        delta.ctx.insert(dot);
        let write = FieldWrite {
            dot,
            time: stamp.time,
            value: value.into(),
        };
        delta
            .fields
            .insert(field.to_vec(), SmallVec::from_elem(write, 1));
        delta
    }

    /// The delta of HDEL: the writes of `field` this state holds.
    pub fn remove(&self, field: &[u8]) -> LwwMap {
        let mut delta = LwwMap::new();
        for w in self.fields.get(field).into_iter().flatten() {
            delta.ctx.insert(w.dot);
        }
        delta
    }

    /// The delta of DEL: every write held.
    pub fn clear(&self) -> LwwMap {
        let mut delta = LwwMap::new();
        for w in self.fields.values().flatten() {
            delta.ctx.insert(w.dot);
        }
        delta
    }

    /// Joins `other` (a state or a delta); returns, per field, the
    /// concurrent writes this join brought together: each loser with the
    /// winner.
    pub fn merge(&mut self, other: &LwwMap) -> Vec<(Vec<u8>, Conflict)> {
        let mut conflicts = Vec::new();
        self.fields = join_entries(
            std::mem::take(&mut self.fields),
            &other.fields,
            &self.ctx,
            &other.ctx,
            |field, writes| {
                let Some(win) = winner(writes) else { return };
                for lost in writes.iter().filter(|w| w.dot != win.dot) {
                    conflicts.push((
                        field.to_vec(),
                        Conflict {
                            kind: ConflictKind::ConcurrentWrite,
                            winner: win.side(),
                            loser: lost.side(),
                        },
                    ));
                }
            },
        );
        self.ctx.merge(&other.ctx);
        conflicts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    fn at(time: u64, node: NodeId) -> Stamp {
        Stamp { time, node }
    }

    #[test]
    fn concurrent_writes_of_a_field_are_a_conflict_the_later_stamp_wins_and_a_later_write_clears() {
        let (mut a, mut b) = (LwwMap::new(), LwwMap::new());
        let x = a.set(A, at(10, A), b"f", b"x");
        let y = b.set(B, at(11, B), b"f", b"y");
        assert!(a.merge(&x).is_empty() && b.merge(&y).is_empty());
        let on_a = a.merge(&y);
        let on_b = b.merge(&x);
        assert_eq!(a, b);
        assert_eq!(a.get(b"f"), Some(&b"y"[..]));
        for c in [&on_a, &on_b] {
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].1.loser.what, Summary::Value(b"x".to_vec()));
        }
        // A write that saw both replaces both, everywhere.
        let z = a.set(A, at(12, A), b"f", b"z");
        a.merge(&z);
        b.merge(&z);
        assert_eq!(a, b);
        assert_eq!(a.fields[&b"f"[..]].len(), 1);
        // HDEL that saw a write removes it; one concurrent with a write does not.
        let del = b.remove(b"f");
        let w = a.set(A, at(13, A), b"f", b"w");
        a.merge(&w);
        a.merge(&del);
        b.merge(&del);
        b.merge(&w);
        assert_eq!(a, b);
        assert_eq!(
            a.get(b"f"),
            Some(&b"w"[..]),
            "the write HDEL had not seen survives"
        );
    }
}
