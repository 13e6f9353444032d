//! An observed-remove set, add wins (Redis sets, and the member set of
//! hashes and sorted sets; issue #13). Each member keeps the dots of the
//! adds that made it present; a remove takes away the dots it observed and
//! nothing else, so an add concurrent with it survives. The key's
//! [`CausalContext`] tells a member removed here (its dots held, the member
//! absent) from one not seen yet (its dots not held): no tombstone per
//! removed member.
//!
//! A delta is an `OrSet` too: an add is the member with its new dot, in a
//! context of that dot and the dots it replaced; a remove is an empty set
//! in the context of the removed dots. Merging is the same join for states
//! and deltas, in any order, any number of times.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::context::{CausalContext, Dot};
use crate::stamp::NodeId;

/// The dots of one member: almost always one.
pub type Dots = SmallVec<[Dot; 1]>;

/// See the module doc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrSet {
    ctx: CausalContext,
    members: BTreeMap<Vec<u8>, Dots>,
}

impl OrSet {
    pub fn new() -> OrSet {
        OrSet::default()
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.members.contains_key(member)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = &[u8]> {
        self.members.keys().map(Vec::as_slice)
    }

    /// The dots of the adds that make `member` present here.
    pub fn dots(&self, member: &[u8]) -> Option<&Dots> {
        self.members.get(member)
    }

    pub fn context(&self) -> &CausalContext {
        &self.ctx
    }

    /// The delta of `node` adding `member`: a new dot, replacing the dots
    /// the member has here.
    pub fn add(&self, node: NodeId, member: &[u8]) -> OrSet {
        let dot = self.ctx.next_dot(node);
        let mut delta = self.remove(member);
        delta.ctx.insert(dot);
        delta
            .members
            .insert(member.to_vec(), SmallVec::from_elem(dot, 1));
        delta
    }

    /// The delta of removing `member` as this state sees it: the dots it
    /// has here, and nothing more.
    pub fn remove(&self, member: &[u8]) -> OrSet {
        let mut delta = OrSet::new();
        for dot in self.members.get(member).into_iter().flatten() {
            delta.ctx.insert(*dot);
        }
        delta
    }

    /// The delta of removing every member (DEL): every dot held.
    pub fn clear(&self) -> OrSet {
        let mut delta = OrSet::new();
        for dot in self.members.values().flatten() {
            delta.ctx.insert(*dot);
        }
        delta
    }

    /// Joins `other` (a state or a delta) into this state.
    pub fn merge(&mut self, other: &OrSet) {
        self.members = join_entries(
            std::mem::take(&mut self.members),
            &other.members,
            &self.ctx,
            &other.ctx,
            |_, _| {},
        );
        self.ctx.merge(&other.ctx);
    }
}

/// Something held under a dot: a dot itself (a set member's add), or a
/// write carrying its dot (a hash field's value).
pub trait Dotted: Clone + Ord {
    fn dot(&self) -> Dot;
}

impl Dotted for Dot {
    fn dot(&self) -> Dot {
        *self
    }
}

/// The join of two dot stores keyed by element: an item survives when both
/// sides hold it, or one side holds it and the other's context has not seen
/// its dot (had it seen it, it removed it). `on_new(key, items)` sees each
/// key whose items the join changed from ours, for conflict reports.
pub fn join_entries<T: Dotted, S: smallvec::Array<Item = T>>(
    mine: BTreeMap<Vec<u8>, SmallVec<S>>,
    theirs: &BTreeMap<Vec<u8>, SmallVec<S>>,
    my_ctx: &CausalContext,
    their_ctx: &CausalContext,
    mut on_new: impl FnMut(&[u8], &SmallVec<S>),
) -> BTreeMap<Vec<u8>, SmallVec<S>> {
    let mut out = BTreeMap::new();
    let mut theirs_iter = theirs.iter().peekable();
    // A key only they hold: the items our context has not seen (those it
    // has seen were removed here).
    let keep_new = |out: &mut BTreeMap<Vec<u8>, SmallVec<S>>,
                    key: &[u8],
                    items: &SmallVec<S>,
                    on_new: &mut dyn FnMut(&[u8], &SmallVec<S>)| {
        let kept: SmallVec<S> = items
            .iter()
            .filter(|i| !my_ctx.contains(i.dot()))
            .cloned()
            .collect();
        if !kept.is_empty() {
            on_new(key, &kept);
            out.insert(key.to_vec(), kept);
        }
    };
    for (key, mine_items) in mine {
        while let Some((k, items)) = theirs_iter.next_if(|(k, _)| k.as_slice() < key.as_slice()) {
            keep_new(&mut out, k, items, &mut on_new);
        }
        let both = theirs_iter.next_if(|(k, _)| **k == key).map(|(_, i)| i);
        let mut kept: SmallVec<S> = mine_items
            .iter()
            .filter(|i| both.is_some_and(|t| t.contains(i)) || !their_ctx.contains(i.dot()))
            .cloned()
            .collect();
        let before = kept.len();
        kept.extend(
            both.into_iter()
                .flatten()
                .filter(|i| !mine_items.contains(i) && !my_ctx.contains(i.dot()))
                .cloned(),
        );
        // One order, so that equal stores are equal states.
        kept.sort_unstable();
        if kept.len() > before {
            on_new(&key, &kept);
        }
        if !kept.is_empty() {
            out.insert(key, kept);
        }
    }
    for (k, items) in theirs_iter {
        keep_new(&mut out, k, items, &mut on_new);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);

    #[test]
    fn an_add_concurrent_with_a_remove_survives_and_a_seen_one_does_not() {
        let mut a = OrSet::new();
        let add = a.add(A, b"m");
        a.merge(&add);
        let mut b = a.clone();
        // B removes what it saw; A adds again concurrently.
        let remove = b.remove(b"m");
        b.merge(&remove);
        let again = a.add(A, b"m");
        a.merge(&again);
        a.merge(&remove);
        b.merge(&again);
        assert_eq!(a, b);
        assert!(a.contains(b"m"), "add wins");
        // A remove that saw every add: gone for good, whatever arrives late.
        let gone = a.remove(b"m");
        a.merge(&gone);
        a.merge(&add);
        a.merge(&again);
        assert!(!a.contains(b"m"));
        assert_eq!(a.context().cloud_len(), 0);
        let _ = B;
    }
}
