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
    fn a_nodes_next_dot_is_past_everything_held_of_it(given in dots()) {
        let c = context(&given);
        for node in 1..=3 {
            let (next, birth) = c.next_dot(NodeId(node), 1_000);
            prop_assert!(!c.contains(next));
            // Past every dot of the node held; a birth only when none is.
            let held = (1..1_000).filter(|n| c.contains(Dot { node: NodeId(node), n: *n })).max();
            prop_assert_eq!(birth, held.is_none());
            prop_assert!(held.is_none_or(|h| next.n == h + 1));
            if birth {
                prop_assert_eq!(next.n, 1_000, "a new run starts at the write's time");
            }
        }
    }
}
