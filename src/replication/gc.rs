//! The view of the cluster that decides tombstone GC.

use std::collections::{BTreeMap, BTreeSet};

use chorus_crdt::{NodeId, Stamp};

/// At most this many earlier lives of restarted peers are remembered (8
/// bytes each, plus a version-vector entry): decades of daily restarts of
/// a dozen in-memory nodes.
pub const MAX_RETIRED: usize = 100_000;

/// What this node knows of the cluster for tombstone GC.
///
/// Each node periodically *promises* that its writes numbered after some
/// sequence number are stamped after some stamp (taken under every shard
/// lock, so no write in flight is missed), and sends the promise in order on
/// its live stream. A node that applied an origin's writes up to the promise
/// has everything that origin stamped before it. Its *stable* stamp is the
/// least promise over every node it knows of: it holds every write stamped
/// before that. The GC floor is the least stable stamp over every node: a
/// tombstone stamped before it has reached everyone and nothing older can
/// still arrive anywhere. A node that is silent, unknown or never heard from
/// holds the floor back, as it must.
#[derive(Debug, Default)]
pub struct GcView {
    /// The newest promise received from each origin (in order, on its link).
    promises: BTreeMap<NodeId, Stamp>,
    /// The newest stable stamp each node reported.
    stables: BTreeMap<NodeId, Stamp>,
    /// The highest stable stamp each node reported: it applied every write
    /// stamped before it, of every origin it counted then.
    highest: BTreeMap<NodeId, Stamp>,
    /// Every node this one has linked with or applied writes from.
    known: BTreeSet<NodeId>,
    /// Earlier lives of restarted in-memory peers: they never write again.
    retired: BTreeSet<NodeId>,
    /// Peers removed from the mesh here (REPLICAOF REMOVE) and not linked
    /// since. Like retired lives they stop counting once settled; unlike
    /// them this is not announced: other nodes may still link with them.
    removed: BTreeSet<NodeId>,
}

impl GcView {
    pub fn know(&mut self, node: NodeId) {
        self.known.insert(node);
    }

    /// `origin` promised that its writes after the ones this node applied
    /// are stamped after `promise`.
    pub fn promise(&mut self, origin: NodeId, promise: Stamp) {
        self.known.insert(origin);
        let p = self.promises.entry(origin).or_insert(promise);
        *p = (*p).max(promise);
    }

    /// `node`'s latest stable stamp. Not a maximum: a node's stable stamp
    /// drops when it learns of a new node.
    pub fn report_stable(&mut self, node: NodeId, stable: Stamp) {
        self.known.insert(node);
        self.stables.insert(node, stable);
        let h = self.highest.entry(node).or_insert(stable);
        *h = (*h).max(stable);
    }

    /// The highest stable stamp `node` reported (ZERO: none).
    pub fn highest_stable(&self, node: NodeId) -> Stamp {
        self.highest.get(&node).copied().unwrap_or(Stamp::ZERO)
    }

    /// `node` is an earlier life of a peer that restarted without its data;
    /// it stops holding GC back once `settled` (every peer applied as much
    /// of it as this node did). Past [`MAX_RETIRED`] ids a new one is
    /// refused (false): it then keeps holding collection back, which loses
    /// nothing, where forgetting an old one would let a peer grow this set
    /// without bound.
    pub fn retire(&mut self, node: NodeId) -> bool {
        if self.retired.len() >= MAX_RETIRED && !self.retired.contains(&node) {
            return false;
        }
        self.retired.insert(node);
        true
    }

    /// `node` left the mesh (REPLICAOF REMOVE): once settled it no longer
    /// holds the floor back, until it links again.
    pub fn remove(&mut self, node: NodeId) {
        self.removed.insert(node);
    }

    /// `node` linked again: it counts again. Returns whether it had been
    /// removed.
    pub fn readmit(&mut self, node: NodeId) -> bool {
        self.removed.remove(&node)
    }

    /// `node`'s newest promise counted here (ZERO: none yet).
    pub fn promise_of(&self, node: NodeId) -> Stamp {
        self.promises.get(&node).copied().unwrap_or(Stamp::ZERO)
    }

    pub fn is_removed(&self, node: NodeId) -> bool {
        self.removed.contains(&node)
    }

    pub fn is_retired(&self, node: NodeId) -> bool {
        self.retired.contains(&node)
    }

    /// The nodes that stop counting once settled: retired lives and removed
    /// peers.
    pub fn leaving(&self) -> Vec<NodeId> {
        self.retired.union(&self.removed).copied().collect()
    }

    /// Per origin, the newest promise counted: every write of it stamped
    /// at or below that has been applied here.
    pub fn promises(&self) -> impl Iterator<Item = (NodeId, Stamp)> + '_ {
        self.promises.iter().map(|(n, s)| (*n, *s))
    }

    pub fn retired(&self) -> Vec<NodeId> {
        self.retired.iter().copied().collect()
    }

    fn counted<'a>(
        &'a self,
        me: NodeId,
        settled: &'a BTreeSet<NodeId>,
    ) -> impl Iterator<Item = NodeId> + 'a {
        self.known.iter().copied().filter(move |n| {
            *n != me
                && !((self.retired.contains(n) || self.removed.contains(n)) && settled.contains(n))
        })
    }

    /// This node's stable stamp, given its own latest promise; `settled`
    /// names the retired nodes no longer counted.
    pub fn stable(&self, me: NodeId, own: Stamp, settled: &BTreeSet<NodeId>) -> Stamp {
        self.counted(me, settled)
            .map(|n| self.promises.get(&n).copied().unwrap_or(Stamp::ZERO))
            .fold(own, Stamp::min)
    }

    /// The GC floor: the least stable stamp over this node and every other.
    pub fn floor(&self, me: NodeId, own: Stamp, settled: &BTreeSet<NodeId>) -> Stamp {
        let mine = self.stable(me, own, settled);
        self.counted(me, settled)
            .map(|n| self.stables.get(&n).copied().unwrap_or(Stamp::ZERO))
            .fold(mine, Stamp::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(time: u64) -> Stamp {
        Stamp {
            time,
            node: NodeId(1),
        }
    }

    #[test]
    fn gc_floor_is_held_back_by_every_node_not_heard_from() {
        let (me, b, c) = (NodeId(1), NodeId(2), NodeId(3));
        let none = BTreeSet::new();
        let mut gc = GcView::default();
        assert_eq!(
            gc.floor(me, st(100), &none),
            st(100),
            "alone: our own promise"
        );
        gc.know(b);
        assert_eq!(
            gc.stable(me, st(100), &none),
            Stamp::ZERO,
            "no promise from b"
        );
        gc.promise(b, st(80));
        assert_eq!(gc.stable(me, st(100), &none), st(80));
        assert_eq!(
            gc.floor(me, st(100), &none),
            Stamp::ZERO,
            "b's stable unknown"
        );
        gc.report_stable(b, st(70));
        assert_eq!(gc.floor(me, st(100), &none), st(70));
        gc.promise(b, st(60));
        assert_eq!(
            gc.stable(me, st(100), &none),
            st(80),
            "promises never go back"
        );
        gc.report_stable(b, st(10));
        assert_eq!(
            gc.floor(me, st(100), &none),
            st(10),
            "a stable stamp can drop"
        );
        // A new node holds everything back until heard from.
        gc.know(c);
        assert_eq!(gc.floor(me, st(100), &none), Stamp::ZERO);
        gc.promise(c, st(90));
        gc.report_stable(c, st(90));
        gc.report_stable(b, st(95));
        assert_eq!(gc.floor(me, st(100), &none), st(80));
        // c restarts: its old life counts until settled.
        gc.retire(c);
        assert_eq!(gc.floor(me, st(100), &none), st(80));
        gc.promise(b, st(99));
        assert_eq!(
            gc.floor(me, st(100), &none),
            st(90),
            "retired c still counts"
        );
        let settled: BTreeSet<NodeId> = [c].into();
        assert_eq!(gc.floor(me, st(100), &settled), st(95));
        assert_eq!(gc.retired(), vec![c]);
    }
}
