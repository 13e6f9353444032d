//! The causal context of a collection key (a hash, set or sorted set, issue
//! #13): which element writes ("dots") the key's state has seen, so that an
//! element absent here whose dot the context holds is known to be removed,
//! and one whose dot it lacks is known to be new. This is what spares the
//! collections a tombstone per removed element (an ORSWOT, as rust-crdt's
//! `Orswot`).
//!
//! A dot is (node, n), where n is the HLC time of the write that made it
//! (plus i for the i-th element one command writes; the node's clock is
//! then moved past the last, so its next write starts above it). So a
//! node's dots only grow, across every life of the key, and a dot tells
//! when its write was made: a context is a **floor** below which every dot
//! is held, and a **cloud** of the dots held at or above it. The floor
//! rises with the replication GC floor: every write stamped before it has
//! reached every node, so any dot numbered below it is one this node has
//! seen (and holds, or removed). Dots arrive in any order; nothing depends
//! on delivery order.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::stamp::NodeId;

/// One element write: its node, and its number (the write's HLC time,
/// plus its place among one command's elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub node: NodeId,
    pub n: u64,
}

/// See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CausalContext {
    /// Every dot numbered below this is held.
    floor: u64,
    /// Dots held at or above the floor, as (n, node): ordered by number, so
    /// a rising floor splits them off in one step.
    cloud: BTreeSet<(u64, NodeId)>,
}

impl CausalContext {
    pub fn new() -> CausalContext {
        CausalContext::default()
    }

    /// Whether the context holds `dot`.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.n < self.floor || self.cloud.contains(&(dot.n, dot.node))
    }

    /// The dot `node`'s next element write at HLC time `time` takes: `time`,
    /// or one past the node's dots at or above it (an earlier element of
    /// the same command).
    pub fn next_dot(&self, node: NodeId, time: u64) -> Dot {
        let n = match self.newest_from(node, time) {
            Some(n) => n + 1,
            None => time.max(1),
        };
        Dot { node, n }
    }

    /// The newest dot of `node` held here numbered at or above `time`.
    pub fn newest_from(&self, node: NodeId, time: u64) -> Option<u64> {
        // The common cases without a walk: nothing held at or past
        // `time`, or the newest dot held is this node's (a local write).
        match self.cloud.last() {
            None => return None,
            Some(&(n, _)) if n < time => return None,
            Some(&(n, d)) if d == node => return Some(n),
            Some(_) => {}
        }
        self.cloud
            .range((time, NodeId(0))..)
            .rev()
            .find(|(_, d)| *d == node)
            .map(|(n, _)| *n)
    }

    /// Adds `dot`.
    pub fn insert(&mut self, dot: Dot) {
        if dot.n >= self.floor {
            self.cloud.insert((dot.n, dot.node));
        }
    }

    /// Everything `other` holds, too.
    pub fn merge(&mut self, other: &CausalContext) {
        if other.floor > self.floor {
            self.raise_floor(other.floor);
        }
        for &(n, node) in &other.cloud {
            if n >= self.floor {
                self.cloud.insert((n, node));
            }
        }
    }

    /// Holds every dot numbered below `floor` (a GC floor's time: every
    /// write made before it reached every node). Returns whether the
    /// context changed.
    pub fn raise_floor(&mut self, floor: u64) -> bool {
        if floor <= self.floor {
            return false;
        }
        self.floor = floor;
        // Usually one dot or none goes: no new tree, as split_off makes.
        while self.cloud.first().is_some_and(|(n, _)| *n < floor) {
            self.cloud.pop_first();
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.floor == 0 && self.cloud.is_empty()
    }

    /// Bytes held on the heap (MEMORY USAGE).
    pub fn heap_bytes(&self) -> usize {
        self.cloud.len() * (std::mem::size_of::<(u64, NodeId)>() + 8)
    }

    /// For CRDT.STATE: the floor, and the cloud's dots as `node:n`.
    pub fn describe(&self) -> String {
        let cloud: Vec<String> = self
            .cloud
            .iter()
            .map(|(n, node)| format!("{node}:{n}"))
            .collect();
        format!("floor={} cloud=[{}]", self.floor, cloud.join(","))
    }

    /// Dots held above the floor.
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
    fn a_floor_holds_every_dot_below_it_and_a_command_takes_dots_past_its_time() {
        let mut c = CausalContext::new();
        c.insert(dot(1, 10));
        c.insert(dot(2, 30));
        assert!(c.contains(dot(1, 10)) && !c.contains(dot(1, 9)));
        assert!(c.raise_floor(20));
        assert!(c.contains(dot(1, 9)), "below the floor: held");
        assert_eq!(c.cloud_len(), 1);
        assert_eq!(c.next_dot(NodeId(3), 40), dot(3, 40));
        c.insert(dot(3, 40));
        c.insert(dot(3, 41));
        assert_eq!(
            c.next_dot(NodeId(3), 40),
            dot(3, 42),
            "the command's next element"
        );
        assert_eq!(c.next_dot(NodeId(3), 50), dot(3, 50));
        c.insert(dot(1, 5));
        assert_eq!(c.cloud_len(), 3, "a dot below the floor adds nothing");
    }
}
