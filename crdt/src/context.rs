//! The causal context of a collection key (a hash, set or sorted set, issue
//! #13): which element writes ("dots") the key's state has seen, so that an
//! element absent here whose dot the context holds is known to be removed,
//! and one whose dot it lacks is known to be new. This is what spares the
//! collections a tombstone per removed element (an ORSWOT, as rust-crdt's
//! `Orswot`).
//!
//! A dot is (node, n), where n is the HLC time of the write that made it
//! (plus i for the i-th element one command writes; the node's clock is
//! then moved past the last, so its next write starts above it; and never
//! below the context's floor, which a compaction raises past the newest
//! command's dots, see [`CausalContext::next_dot`]). So a
//! node's dots only grow, across every life of the key, and a dot tells
//! when its write was made: a context is a **floor** below which every dot
//! is held, and a **cloud** of the dots held at or above it. The floor
//! rises with the replication GC floor: every write stamped before it has
//! reached every node, so any dot numbered below it is one this node has
//! seen (and holds, or removed). Dots arrive in any order; nothing depends
//! on delivery order.

use serde::{Deserialize, Deserializer, Serialize};
use smallvec::SmallVec;

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
    /// Dots held at or above the floor, as (n, node), sorted and distinct:
    /// ordered by number, so a rising floor drains a prefix. A vector, not
    /// a tree: a node's dots and its peers' arrive near the newest end, a
    /// node without peers holds one at most between a write and its
    /// compaction (inline: a tree allocated and freed a node for every
    /// write), and the encoding is the same sorted sequence.
    #[serde(deserialize_with = "sorted_cloud")]
    cloud: SmallVec<[(u64, NodeId); 1]>,
}

/// A cloud as encoded, put in order and rid of repeats: a peer's bytes are
/// not trusted to be sorted.
fn sorted_cloud<'de, D: Deserializer<'de>>(d: D) -> Result<SmallVec<[(u64, NodeId); 1]>, D::Error> {
    let mut cloud = SmallVec::<[(u64, NodeId); 1]>::deserialize(d)?;
    if !cloud.windows(2).all(|w| w[0] < w[1]) {
        cloud.sort_unstable();
        cloud.dedup();
    }
    Ok(cloud)
}

impl CausalContext {
    pub fn new() -> CausalContext {
        CausalContext::default()
    }

    /// Whether the context holds `dot`.
    pub fn contains(&self, dot: Dot) -> bool {
        dot.n < self.floor || self.cloud.binary_search(&(dot.n, dot.node)).is_ok()
    }

    /// The dot `node`'s next element write at HLC time `time` takes: `time`,
    /// or one past the node's dots at or above it (an earlier element of
    /// the same command), and never below the floor (a compaction may
    /// raise it past the dots of the newest command, a few past its time).
    pub fn next_dot(&self, node: NodeId, time: u64) -> Dot {
        let n = match self.newest_from(node, time) {
            Some(n) => n + 1,
            None => time.max(1).max(self.floor),
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
            .iter()
            .rev()
            .take_while(|(n, _)| *n >= time)
            .find(|(_, d)| *d == node)
            .map(|(n, _)| *n)
    }

    /// Adds `dot`.
    pub fn insert(&mut self, dot: Dot) {
        if dot.n >= self.floor {
            self.add((dot.n, dot.node));
        }
    }

    fn add(&mut self, dot: (u64, NodeId)) {
        // Usually the newest: no search.
        if self.cloud.last().is_none_or(|last| *last < dot) {
            self.cloud.push(dot);
        } else if let Err(at) = self.cloud.binary_search(&dot) {
            self.cloud.insert(at, dot);
        }
    }

    /// Everything `other` holds, too.
    pub fn merge(&mut self, other: &CausalContext) {
        if other.floor > self.floor {
            self.raise_floor(other.floor);
        }
        let floor = self.floor;
        let theirs = other.cloud.iter().filter(move |(n, _)| *n >= floor);
        if other.cloud.len() <= 8 {
            for &dot in theirs {
                self.add(dot);
            }
            return;
        }
        // Two big clouds (a whole state's): one merge of the sorted runs.
        let mine = std::mem::take(&mut self.cloud);
        let mut merged = SmallVec::with_capacity(mine.len() + other.cloud.len());
        let (mut a, mut b) = (mine.into_iter().peekable(), theirs.copied().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x < y => a.next(),
                (Some(x), Some(y)) if x > y => b.next(),
                (Some(_), Some(_)) => {
                    b.next();
                    a.next()
                }
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            merged.extend(next);
        }
        self.cloud = merged;
    }

    /// Holds every dot numbered below `floor` (a GC floor's time: every
    /// write made before it reached every node). Returns whether the
    /// context changed.
    pub fn raise_floor(&mut self, floor: u64) -> bool {
        if floor <= self.floor {
            return false;
        }
        self.floor = floor;
        let below = self.cloud.partition_point(|(n, _)| *n < floor);
        if below > 0 {
            self.cloud.drain(..below);
            // A burst's room goes back once the floor has passed it.
            if self.cloud.spilled() && self.cloud.len() * 4 < self.cloud.capacity() {
                self.cloud.shrink_to_fit();
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self.floor == 0 && self.cloud.is_empty()
    }

    /// Bytes held on the heap (MEMORY USAGE).
    pub fn heap_bytes(&self) -> usize {
        if self.cloud.spilled() {
            self.cloud.capacity() * std::mem::size_of::<(u64, NodeId)>()
        } else {
            0
        }
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

    /// Empties the context, keeping a small cloud's room.
    pub fn clear(&mut self) {
        self.floor = 0;
        if self.cloud.capacity() > 8 {
            self.cloud = SmallVec::new();
        } else {
            self.cloud.clear();
        }
    }

    /// The floor and the dots held at or above it, as encoded.
    pub(crate) fn parts(&self) -> (u64, &[(u64, NodeId)]) {
        (self.floor, &self.cloud)
    }

    /// Dots held above the floor.
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

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

    #[test]
    fn clouds_merge_drain_and_decode_as_sorted_sets_of_dots() {
        let (mut a, mut b) = (CausalContext::new(), CausalContext::new());
        let mut model = BTreeSet::new();
        let mut x: u64 = 3;
        for i in 0..400 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let d = dot((x >> 33) % 3, 100 + (x >> 40) % 500);
            if i % 2 == 0 {
                a.insert(d);
            } else {
                b.insert(d);
            }
            model.insert((d.n, d.node));
        }
        a.merge(&b);
        assert!(a.cloud.iter().eq(model.iter()), "a big merge");
        let mut small = CausalContext::new();
        small.insert(dot(7, 350));
        small.insert(dot(7, 90));
        a.merge(&small);
        model.insert((350, NodeId(7)));
        model.insert((90, NodeId(7)));
        assert!(a.cloud.iter().eq(model.iter()), "a small merge");
        for &(n, node) in &model {
            assert!(a.contains(Dot { node, n }));
        }
        assert!(a.raise_floor(300));
        model.retain(|(n, _)| *n >= 300);
        assert!(a.cloud.iter().eq(model.iter()), "a prefix drained");
        #[derive(Serialize)]
        struct AsATree {
            floor: u64,
            cloud: BTreeSet<(u64, NodeId)>,
        }
        let tree = AsATree {
            floor: 300,
            cloud: model.clone(),
        };
        let bytes = crate::codec::encode(&a).expect("encodes");
        assert_eq!(
            bytes,
            crate::codec::encode(&tree).expect("encodes"),
            "the tree's encoding"
        );
        let unsorted = CausalContext {
            floor: 5,
            cloud: smallvec::smallvec![(9, NodeId(1)), (7, NodeId(2)), (9, NodeId(1))],
        };
        let back: CausalContext =
            crate::codec::decode(&crate::codec::encode(&unsorted).expect("encodes"))
                .expect("decodes");
        assert_eq!(back.cloud.as_slice(), &[(7, NodeId(2)), (9, NodeId(1))]);
        assert!(back.contains(dot(2, 7)) && !back.contains(dot(2, 9)));
    }
}
