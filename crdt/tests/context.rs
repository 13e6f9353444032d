//! Property tests of the collections' causal context: whatever the order
//! dots arrive in and however contexts are merged, a context holds exactly
//! the dots it was given, and merging is commutative, associative and
//! idempotent.

use std::collections::BTreeSet;

use chorus_crdt::{CausalContext, Dot, NodeId};
use proptest::prelude::*;

fn dots() -> impl Strategy<Value = Vec<Dot>> {
    prop::collection::vec((0u64..3, 1u64..12), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|(node, n)| Dot {
                node: NodeId(node + 1),
                n,
            })
            .collect()
    })
}

fn context(dots: &[Dot]) -> CausalContext {
    let mut c = CausalContext::new();
    for d in dots {
        c.insert(*d);
    }
    c
}

fn merged(a: &CausalContext, b: &CausalContext) -> CausalContext {
    let mut m = a.clone();
    m.merge(b);
    m
}

fn every_dot() -> impl Iterator<Item = Dot> {
    (1..=3).flat_map(|node| {
        (1..=12).map(move |n| Dot {
            node: NodeId(node),
            n,
        })
    })
}

proptest! {
    #[test]
    fn a_context_holds_exactly_the_dots_given_in_any_order(mut given in dots(), seed in any::<u64>()) {
        let c = context(&given);
        let set: BTreeSet<Dot> = given.iter().copied().collect();
        for d in every_dot() {
            prop_assert_eq!(c.contains(d), set.contains(&d), "{:?}", d);
        }
        // Another order, the same context (one representation per set).
        let len = given.len().max(1);
        given.rotate_left(seed as usize % len);
        given.reverse();
        prop_assert_eq!(context(&given), c);
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent(a in dots(), b in dots(), c in dots()) {
        let (a, b, c) = (context(&a), context(&b), context(&c));
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &a), a.clone());
        let ab = merged(&a, &b);
        for d in every_dot() {
            prop_assert_eq!(ab.contains(d), a.contains(d) || b.contains(d));
        }
    }

    #[test]
    fn a_nodes_next_dot_is_new_and_at_or_past_the_writes_time(given in dots(), time in 1u64..14) {
        let c = context(&given);
        for node in 1..=3 {
            let next = c.next_dot(NodeId(node), time);
            prop_assert!(!c.contains(next));
            prop_assert!(next.n >= time);
        }
    }

    #[test]
    fn a_floor_holds_everything_below_it_and_merges_as_the_higher(given in dots(), f in 0u64..14, g in 0u64..14) {
        let mut a = context(&given);
        a.raise_floor(f);
        let mut b = context(&given[..given.len() / 2]);
        b.raise_floor(g);
        for d in every_dot() {
            prop_assert_eq!(a.contains(d), d.n < f || given.contains(&d));
        }
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        let m = merged(&a, &b);
        for d in every_dot() {
            prop_assert_eq!(m.contains(d), a.contains(d) || b.contains(d));
        }
    }
}
