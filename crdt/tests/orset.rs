//! Property tests of the observed-remove set: random adds, removes and
//! clears on three nodes, their deltas delivered in random orders with
//! duplicates, converge to the set the history says (a member is present
//! when some add of it was observed by no remove or later add); merging
//! states is commutative, associative and idempotent.

use std::collections::{BTreeMap, BTreeSet};

use chorus_crdt::{Dot, NodeId, OrSet};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Add(u8),
    Remove(u8),
    Clear,
}

#[derive(Clone, Debug)]
enum Step {
    Op { node: usize, op: Op },
    Deliver { to: usize, pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3usize, prop_oneof![
            4 => (0..4u8).prop_map(Op::Add),
            2 => (0..4u8).prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]).prop_map(|(node, op)| Step::Op { node, op }),
        4 => (0..3usize, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
    ]
}

struct Run {
    nodes: Vec<OrSet>,
    /// Every delta made, for any node to receive in any order, again.
    deltas: Vec<OrSet>,
    /// The history: each add's dot and member, and every dot some op saw
    /// (and so removed or replaced).
    added: BTreeMap<Dot, u8>,
    observed: BTreeSet<Dot>,
}

impl Run {
    fn new() -> Run {
        Run {
            nodes: vec![OrSet::new(); 3],
            deltas: Vec::new(),
            added: BTreeMap::new(),
            observed: BTreeSet::new(),
        }
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Op { node, op } => {
                let state = &self.nodes[*node];
                let seen = |m: u8| -> Vec<Dot> {
                    state.dots(&[m]).map(|d| d.to_vec()).unwrap_or_default()
                };
                let (delta, seen_dots) = match op {
                    Op::Add(m) => (state.add(NodeId(*node as u64 + 1), &[*m]), seen(*m)),
                    Op::Remove(m) => (state.remove(&[*m]), seen(*m)),
                    Op::Clear => (state.clear(), (0..4).flat_map(seen).collect()),
                };
                if let Op::Add(m) = op {
                    let dot = delta.dots(&[*m]).unwrap()[0];
                    self.added.insert(dot, *m);
                }
                self.observed.extend(seen_dots);
                self.nodes[*node].merge(&delta);
                self.deltas.push(delta);
            }
            Step::Deliver { to, pick } => {
                if !self.deltas.is_empty() {
                    let delta = self.deltas[pick % self.deltas.len()].clone();
                    self.nodes[*to].merge(&delta);
                }
            }
        }
    }

    fn expected(&self) -> BTreeSet<Vec<u8>> {
        self.added
            .iter()
            .filter(|(d, _)| !self.observed.contains(d))
            .map(|(_, m)| vec![*m])
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn deltas_in_any_order_converge_to_the_history(steps in prop::collection::vec(step(), 1..80)) {
        let mut run = Run::new();
        for s in &steps {
            run.apply(s);
        }
        // Everything reaches everyone, in reverse order for good measure.
        let deltas = run.deltas.clone();
        for node in run.nodes.iter_mut() {
            for d in deltas.iter().rev() {
                node.merge(d);
            }
        }
        prop_assert_eq!(&run.nodes[0], &run.nodes[1]);
        prop_assert_eq!(&run.nodes[1], &run.nodes[2]);
        let present: BTreeSet<Vec<u8>> = run.nodes[0].members().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(present, run.expected());
        prop_assert_eq!(run.nodes[0].context().cloud_len(), 0);
    }

    #[test]
    fn merging_states_is_commutative_associative_and_idempotent(
        steps in prop::collection::vec(step(), 1..60)
    ) {
        let mut run = Run::new();
        for s in &steps {
            run.apply(s);
        }
        let [a, b, c] = [&run.nodes[0], &run.nodes[1], &run.nodes[2]];
        let m = |x: &OrSet, y: &OrSet| {
            let mut z = x.clone();
            z.merge(y);
            z
        };
        prop_assert_eq!(m(a, b), m(b, a));
        prop_assert_eq!(m(&m(a, b), c), m(a, &m(b, c)));
        prop_assert_eq!(m(a, a), a.clone());
    }
}
