//! A small map from node id to a value, kept as a sorted vector.
//!
//! A key's counter has one entry per node that incremented it: a handful at
//! most, and usually one. The first entry lives inline (no allocation, no
//! pointer to chase); more spill to the heap. A BTreeMap would cost a node
//! sized for eleven entries. Iteration is in node-id order either way.

use serde::{Deserialize, Serialize};
use smallvec::{smallvec, SmallVec};

use crate::stamp::NodeId;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(from = "Vec<(NodeId, T)>")]
#[serde(bound(deserialize = "T: Deserialize<'de> + Copy + MaxBy"))]
pub struct NodeMap<T>(SmallVec<[(NodeId, T); 1]>);

/// Encoded as the vector of pairs it is decoded from, without building
/// one (serde's `into` cloned the map into a new vector every time).
impl<T: Serialize> Serialize for NodeMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(node, v)| (node, v)))
    }
}

/// How two values for the same node combine when a decoded map repeats a node.
pub trait MaxBy: Copy {
    fn max_by_version(self, other: Self) -> Self;
}

impl MaxBy for u64 {
    fn max_by_version(self, other: u64) -> u64 {
        self.max(other)
    }
}

impl<T> Default for NodeMap<T> {
    fn default() -> Self {
        NodeMap(SmallVec::new())
    }
}

impl<T> NodeMap<T> {
    pub const fn new() -> Self {
        NodeMap(SmallVec::new_const())
    }

    pub fn single(node: NodeId, value: T) -> Self {
        NodeMap(smallvec![(node, value)])
    }

    pub fn get(&self, node: &NodeId) -> Option<&T> {
        self.0
            .binary_search_by_key(node, |(n, _)| *n)
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Bytes it holds on the heap (nothing while its one entry is inline).
    pub fn heap_bytes(&self) -> usize {
        if self.0.spilled() {
            self.0.capacity() * std::mem::size_of::<(NodeId, T)>()
        } else {
            0
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Entries in node-id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &T)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId, &T) -> bool) {
        self.0.retain(|(n, v)| keep(n, v));
    }

    /// Sets `node`'s value to `f(current)`, inserting when absent.
    pub fn upsert(&mut self, node: NodeId, value: T, f: impl FnOnce(&mut T, T)) {
        match self.0.binary_search_by_key(&node, |(n, _)| *n) {
            Ok(i) => f(&mut self.0[i].1, value),
            Err(i) => self.0.insert(i, (node, value)),
        }
    }
}

impl<T: MaxBy> From<Vec<(NodeId, T)>> for NodeMap<T> {
    /// Sorts and merges duplicates, so a decoded map upholds the invariant
    /// whatever bytes it came from.
    fn from(mut entries: Vec<(NodeId, T)>) -> Self {
        entries.sort_by_key(|(n, _)| *n);
        let mut out: SmallVec<[(NodeId, T); 1]> = SmallVec::with_capacity(entries.len());
        for (n, v) in entries {
            match out.last_mut() {
                Some((last, existing)) if *last == n => *existing = existing.max_by_version(v),
                _ => out.push((n, v)),
            }
        }
        NodeMap(out)
    }
}
