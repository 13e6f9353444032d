//! The causal context of a collection key (a hash, set or sorted set, issue
//! #13): which element writes ("dots") the key's state has seen, so that an
//! element absent here whose dot the context holds is known to be removed,
//! and one whose dot it lacks is known to be new. This is what spares the
//! collections a tombstone per removed element (an ORSWOT, as rust-crdt's
//! `Orswot`).
//!
//! A dot is (node, n): the node's n-th element write on this key, counted
//! per key from 1. A node sees its own writes in order, and replication
//! delivers each origin's writes in order, but a remove carries other
//! nodes' dots: a node may learn of (m, 5) before (m, 3) arrives. So the
//! context is a version vector (every dot up to n of each node) plus a
//! cloud of dots seen past a gap, folded into the vector as gaps fill.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::nodemap::NodeMap;
use crate::stamp::NodeId;

/// One element write: its node, and its number among that node's writes
/// to the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub node: NodeId,
    pub n: u64,
}

/// See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    /// Per node: every dot up to this one is held.
    vv: NodeMap<u64>,
    /// Dots held past a gap in their node's run.
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    pub fn new() -> CausalContext {
        CausalContext::default()
    }

    /// Whether the context holds `dot`.
    pub fn contains(&self, dot: Dot) -> bool {
        self.vv.get(&dot.node).is_some_and(|n| *n >= dot.n) || self.cloud.contains(&dot)
    }

    /// The dot `node`'s next write at HLC time `time` takes, and whether it
    /// is a *birth*: the first dot of the node's run on this key. A run
    /// continues one past the node's newest dot held here (a node always
    /// holds all of its own writes to the key, so its run has no gap). With
    /// none held, a new run starts at `time`: every dot of an earlier run
    /// on the key was numbered at or below its own write's time (each
    /// write's HLC time is at least one past its predecessor's), and the
    /// earlier run is gone only because the key was collected, which waits
    /// until every node applied everything stamped before the collection
    /// floor. So a new run never reuses a dot some node still holds.
    pub fn next_dot(&self, node: NodeId, time: u64) -> (Dot, bool) {
        match self.newest_of(node) {
            Some(n) => (Dot { node, n: n + 1 }, false),
            None => (
                Dot {
                    node,
                    n: time.max(1),
                },
                true,
            ),
        }
    }

    /// Adds a dot [`CausalContext::next_dot`] handed out. A birth claims
    /// every lower dot of its node as held: they belong to a collected run
    /// (see `next_dot`) or were never issued.
    pub fn insert_new(&mut self, dot: Dot, birth: bool) {
        if birth {
            self.vv
                .upsert(dot.node, dot.n, |mine, theirs| *mine = (*mine).max(theirs));
            self.compact();
        } else {
            self.insert(dot);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// The newest dot of `node` held, if any.
    pub fn newest_of(&self, node: NodeId) -> Option<u64> {
        self.vv
            .get(&node)
            .copied()
            .into_iter()
            .chain(self.cloud.iter().filter(|d| d.node == node).map(|d| d.n))
            .max()
    }

    /// Bytes held on the heap (MEMORY USAGE).
    pub fn heap_bytes(&self) -> usize {
        self.vv.heap_bytes() + self.cloud.len() * (std::mem::size_of::<Dot>() + 8)
    }

    /// Adds `dot`, folding the cloud into the vector where it now joins.
    pub fn insert(&mut self, dot: Dot) {
        if self.contains(dot) || dot.n == 0 {
            return;
        }
        let next = self.vv.get(&dot.node).copied().unwrap_or(0) + 1;
        if dot.n == next {
            // The usual case: the dot continues its node's run.
            self.vv
                .upsert(dot.node, dot.n, |mine, theirs| *mine = theirs);
            if !self.cloud.is_empty() {
                self.compact();
            }
            return;
        }
        self.cloud.insert(dot);
        self.compact();
    }

    /// Everything `other` holds, too.
    pub fn merge(&mut self, other: &CausalContext) {
        for (node, n) in other.vv.iter() {
            self.vv
                .upsert(*node, *n, |mine, theirs| *mine = (*mine).max(theirs));
        }
        if !(self.cloud.is_empty() && other.cloud.is_empty()) {
            self.cloud.extend(other.cloud.iter().copied());
            self.compact();
        }
    }

    /// Moves every cloud dot the vector now reaches into it, and drops
    /// cloud dots it already covers.
    fn compact(&mut self) {
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let held = self.vv.get(&dot.node).copied().unwrap_or(0);
            if dot.n <= held {
                continue;
            }
            if dot.n == held + 1 {
                self.vv
                    .upsert(dot.node, dot.n, |mine, theirs| *mine = theirs);
            } else {
                self.cloud.insert(dot);
            }
        }
    }

    /// For CRDT.STATE: each node's run as `node:n`, and the cloud's dots.
    pub fn describe(&self) -> String {
        let runs: Vec<String> = self
            .vv
            .iter()
            .map(|(node, n)| format!("{node}:{n}"))
            .collect();
        let cloud: Vec<String> = self
            .cloud
            .iter()
            .map(|d| format!("{}:{}", d.node, d.n))
            .collect();
        format!("runs=[{}] cloud=[{}]", runs.join(","), cloud.join(","))
    }

    /// Dots held past a gap (0 once every run is contiguous).
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(node: u64, n: u64) -> Dot {
        Dot {
            node: NodeId(node),
            n,
        }
    }

    #[test]
    fn a_dot_past_a_gap_waits_in_the_cloud_until_the_gap_fills() {
        let mut c = CausalContext::new();
        c.insert(dot(1, 1));
        c.insert(dot(1, 3));
        assert!(c.contains(dot(1, 3)) && !c.contains(dot(1, 2)));
        assert_eq!(c.cloud_len(), 1);
        c.insert(dot(1, 2));
        assert_eq!(c.cloud_len(), 0, "folded into the vector");
        assert!(c.contains(dot(1, 2)) && c.contains(dot(1, 3)));
        assert_eq!(c.next_dot(NodeId(1), 99), (dot(1, 4), false));
        assert_eq!(
            c.next_dot(NodeId(2), 99),
            (dot(2, 99), true),
            "a new run starts at its time"
        );
        c.insert_new(dot(2, 99), true);
        assert!(
            c.contains(dot(2, 50)),
            "a birth covers every lower dot of its node"
        );
        assert_eq!(c.cloud_len(), 0);
    }
}
