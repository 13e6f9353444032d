//! Dense positions for the list CRDT (issue #15): an element's place in a
//! list is an identifier from a dense, totally ordered space, so that every
//! node sorts the same elements the same way and a new element always fits
//! between any two (Logoot's idea). Nothing is kept for a removed element:
//! the order of the others never depended on it, so there are no list
//! tombstones to collect, unlike RGA, whose inserts name the element they
//! follow.
//!
//! A position is a sequence of components `(digit, node, n)`, compared
//! lexicographically (a prefix first). Each component a node makes carries
//! its own id and the number of the dot its element took, so two nodes
//! inserting at one place concurrently make different positions (the one
//! with the higher node id after the other), and a node never makes the
//! same position twice, even at a place whose element it removed since (a
//! position made again would merge a new element with what a concurrent
//! LSET of the old one wrote there).
//! LPUSH and RPUSH make one-component positions a step below the head or
//! above the tail, so a list fed at its ends stays one component per
//! element; only inserts between close neighbours grow a position.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::context::Dot;
use crate::stamp::NodeId;

/// One level of a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Component {
    pub digit: u64,
    pub node: NodeId,
    /// The number of the dot of the element it was made for.
    pub n: u64,
}

/// An element's place in a list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Position(pub SmallVec<[Component; 1]>);

/// How far below the head or above the tail a push goes: room for 2^32
/// inserts between two pushed neighbours before a position grows.
pub const STEP: u64 = 1 << 32;
/// The digit a position starts from in an empty list.
pub const MIDDLE: u64 = 1 << 63;
/// Digits a node makes stay within 1..=MAX_DIGIT: 0 and u64::MAX are never
/// made, so that there is always room below and above any made component.
const MAX_DIGIT: u64 = u64::MAX - 1;

impl Position {
    /// A position strictly between `lo` and `hi` (`None`: the list's head
    /// or tail), made for the element whose first write took `dot`. `lo`
    /// must sort before `hi`.
    pub fn between(lo: Option<&Position>, hi: Option<&Position>, dot: Dot) -> Position {
        let (node, n) = (dot.node, dot.n);
        debug_assert!(match (lo, hi) {
            (Some(l), Some(h)) => l < h,
            _ => true,
        });
        let lo = lo.map_or(&[][..], |p| &p.0[..]);
        let hi = hi.map(|p| &p.0[..]);
        let mut out: SmallVec<[Component; 1]> = SmallVec::new();
        // Whether `out` still equals the bound's prefix (so that bound
        // still constrains the next level).
        let mut under_lo = true;
        let mut under_hi = hi.is_some();
        for level in 0.. {
            let l = if under_lo {
                lo.get(level).copied()
            } else {
                None
            };
            let h = if under_hi {
                hi.and_then(|h| h.get(level).copied())
            } else {
                None
            };
            let low = l.map_or(0, |c| c.digit);
            let high = h.map_or(u64::MAX, |c| c.digit);
            // Room for a digit of our own strictly between the bounds'.
            if high - low >= 2 {
                let digit = match (l, h) {
                    (None, None) => MIDDLE,
                    (Some(_), None) => low + STEP.min((high - low) / 2),
                    (None, Some(_)) => high - STEP.min((high - low) / 2),
                    (Some(_), Some(_)) => low + (high - low) / 2,
                };
                out.push(Component {
                    digit: digit.clamp(1, MAX_DIGIT),
                    node,
                    n,
                });
                return Position(out);
            }
            // The bounds' digits touch: our own component at the lower
            // digit may still sort between them by its node.
            let mine = Component {
                digit: low,
                node,
                n,
            };
            let above_lo = l.is_none_or(|l| mine > l);
            let below_hi = h.is_none_or(|h| mine < h);
            if above_lo && below_hi && (1..=MAX_DIGIT).contains(&low) {
                out.push(mine);
                return Position(out);
            }
            // Otherwise go a level down: under the lower bound's component,
            // or, with nothing below, under the smallest component there is
            // (no node makes it as a position's last), which keeps us below
            // `hi` (extending a position sorts it higher, so going down
            // under `hi`'s own component could pass it).
            let down = l.unwrap_or(Component {
                digit: 0,
                node: NodeId(0),
                n: 0,
            });
            out.push(down);
            under_lo = under_lo && l == Some(down);
            under_hi = under_hi && h == Some(down);
            debug_assert!(level < 1 << 16, "a position without end");
        }
        unreachable!("the loop returns")
    }

    /// How many components it has (memory: one for a list fed at its
    /// ends).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes held besides itself (none for one component).
    pub fn heap_len(&self) -> usize {
        if self.0.spilled() {
            self.0.capacity() * std::mem::size_of::<Component>()
        } else {
            0
        }
    }
}

/// How a conflict report names a list element: its components, each a
/// digit in hex, the node that made it and its dot's number.
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{:x}@{}:{}", c.digit, c.node.0, c.n)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dot of node `id`, numbered past every one made before.
    fn n(id: u64) -> Dot {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Dot {
            node: NodeId(id),
            n: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    #[test]
    fn pushes_at_the_ends_stay_one_component() {
        let mut list: Vec<Position> = Vec::new();
        for i in 0..10_000u64 {
            let node = n(1 + i % 3);
            if i % 2 == 0 {
                let p = Position::between(list.last(), None, node);
                list.push(p);
            } else {
                let p = Position::between(None, list.first(), node);
                list.insert(0, p);
            }
        }
        assert!(list.windows(2).all(|w| w[0] < w[1]));
        assert!(list.iter().all(|p| p.len() == 1));
    }

    #[test]
    fn inserts_crowded_at_the_head_and_between_two_stay_in_order() {
        let mut list: Vec<Position> = Vec::new();
        for i in 0..3_000u64 {
            let node = n(1 + i % 2);
            let at = match i % 3 {
                0 => 0,
                _ => list.len().min(1),
            };
            let p = Position::between(
                at.checked_sub(1).and_then(|i| list.get(i)),
                list.get(at),
                node,
            );
            list.insert(at, p);
        }
        assert!(list.windows(2).all(|w| w[0] < w[1]));
    }

    proptest::proptest! {
        /// Whatever the inserts, from whichever nodes, every position made
        /// sorts strictly between its neighbours and no two are equal.
        #[test]
        fn every_position_falls_between_its_neighbours(
            ops in proptest::collection::vec((0usize..1_000, 1u64..4), 1..400)
        ) {
            let mut list: Vec<Position> = Vec::new();
            for (at, node) in ops {
                let at = at % (list.len() + 1);
                let lo = at.checked_sub(1).and_then(|i| list.get(i));
                let hi = list.get(at);
                let p = Position::between(lo, hi, n(node));
                proptest::prop_assert!(lo.is_none_or(|l| *l < p));
                proptest::prop_assert!(hi.is_none_or(|h| p < *h));
                list.insert(at, p);
            }
        }

        /// Two nodes inserting at one place concurrently (same neighbours)
        /// make two different positions, both between the neighbours.
        #[test]
        fn concurrent_inserts_never_collide(
            ops in proptest::collection::vec((0usize..1_000, 1u64..4), 1..100),
            at in 0usize..1_000,
        ) {
            let mut list: Vec<Position> = Vec::new();
            for (i, node) in ops {
                let i = i % (list.len() + 1);
                let p = Position::between(
                    i.checked_sub(1).and_then(|j| list.get(j)),
                    list.get(i),
                    n(node),
                );
                list.insert(i, p);
            }
            let at = at % (list.len() + 1);
            let lo = at.checked_sub(1).and_then(|i| list.get(i));
            let hi = list.get(at);
            let x = Position::between(lo, hi, n(5));
            let y = Position::between(lo, hi, n(6));
            proptest::prop_assert_ne!(&x, &y);
            for p in [&x, &y] {
                proptest::prop_assert!(lo.is_none_or(|l| l < p));
                proptest::prop_assert!(hi.is_none_or(|h| p < h));
            }
        }
    }

    #[test]
    fn the_ends_of_the_digit_range_still_leave_room() {
        let at = |digit, node| {
            Position(SmallVec::from_slice(&[Component {
                digit,
                node: NodeId(node),
                n: 1,
            }]))
        };
        // A head at the lowest digit a node makes, and one a level down.
        for head in [at(1, 3), Position::between(None, Some(&at(1, 3)), n(5))] {
            for node in [1, 9] {
                let p = Position::between(None, Some(&head), n(node));
                assert!(p < head, "{p:?} before {head:?}");
            }
        }
        // A tail at the highest.
        let tail = at(MAX_DIGIT, 9);
        for node in [1, 10] {
            let p = Position::between(Some(&tail), None, n(node));
            assert!(tail < p, "{p:?} after {tail:?}");
        }
        // Neighbours one digit apart.
        let (a, b) = (at(5, 2), at(6, 1));
        for node in [1, 2, 3] {
            let p = Position::between(Some(&a), Some(&b), n(node));
            assert!(a < p && p < b, "{p:?}");
        }
    }

    #[test]
    fn a_place_made_again_is_a_new_position() {
        let a = Position::between(None, None, n(1));
        let b = Position::between(None, None, n(1));
        assert_ne!(a, b, "a pushed, popped, pushed again");
        let lo = Position::between(None, None, n(2));
        let hi = Position::between(Some(&lo), None, n(2));
        let x = Position::between(Some(&lo), Some(&hi), n(3));
        let y = Position::between(Some(&lo), Some(&hi), n(3));
        assert_ne!(x, y, "inserted, removed, inserted again");
    }

    #[test]
    fn concurrent_inserts_at_one_place_differ_by_node() {
        let a = Position::between(None, None, n(1));
        let b = Position::between(Some(&a), None, n(1));
        let x = Position::between(Some(&a), Some(&b), n(1));
        let y = Position::between(Some(&a), Some(&b), n(2));
        assert_ne!(x, y);
        for p in [&x, &y] {
            assert!(a < *p && *p < b);
        }
    }
}
