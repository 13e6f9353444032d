//! Property tests of the hash field map: random HSETs, HDELs and DELs on
//! three nodes, their deltas delivered in random orders with duplicates,
//! converge; each field holds the highest-stamped of the writes no later
//! op observed, and is absent when every write of it was observed; merging
//! states is commutative, associative and idempotent.

use std::collections::{BTreeMap, BTreeSet};

use chorus_crdt::{Dot, LwwMap, NodeId, Stamp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Set(u8, u8),
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
            5 => (0..3u8, any::<u8>()).prop_map(|(f, v)| Op::Set(f, v)),
            2 => (0..3u8).prop_map(Op::Remove),
            1 => Just(Op::Clear),
        ]).prop_map(|(node, op)| Step::Op { node, op }),
        4 => (0..3usize, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
    ]
}

struct Run {
    nodes: Vec<LwwMap>,
    deltas: Vec<LwwMap>,
    /// Each write: its dot, field, stamp and value; and every dot some op
    /// observed.
    writes: BTreeMap<Dot, (u8, Stamp, u8)>,
    observed: BTreeSet<Dot>,
    time: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            nodes: vec![LwwMap::new(); 3],
            deltas: Vec::new(),
            writes: BTreeMap::new(),
            observed: BTreeSet::new(),
            time: 0,
        }
    }

    /// The dots of `field`'s writes `node` holds: a delta made for the
    /// field at `node` names exactly these as replaced.
    fn held(&self, node: usize, field: u8) -> Vec<Dot> {
        let probe = self.nodes[node].remove(&[field]);
        self.writes
            .iter()
            .filter(|(d, (f, ..))| *f == field && probe.context_holds(**d))
            .map(|(d, _)| *d)
            .collect()
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Op { node, op } => {
                // A global clock is one every node's next write is after.
                self.time += 1;
                let id = NodeId(*node as u64 + 1);
                let stamp = Stamp {
                    time: self.time,
                    node: id,
                };
                let (delta, seen) = match op {
                    Op::Set(f, v) => {
                        let seen = self.held(*node, *f);
                        let d = self.nodes[*node].set(id, stamp, &[*f], &[*v]);
                        let dot = d.context_dots_of(&[*f]);
                        self.writes.insert(dot, (*f, stamp, *v));
                        (d, seen)
                    }
                    Op::Remove(f) => (self.nodes[*node].remove(&[*f]), self.held(*node, *f)),
                    Op::Clear => (
                        self.nodes[*node].clear(),
                        (0..3).flat_map(|f| self.held(*node, f)).collect(),
                    ),
                };
                self.observed.extend(seen);
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

    fn expected(&self) -> BTreeMap<u8, u8> {
        let mut out: BTreeMap<u8, (Stamp, u8)> = BTreeMap::new();
        for (dot, (f, stamp, v)) in &self.writes {
            if self.observed.contains(dot) {
                continue;
            }
            let e = out.entry(*f).or_insert((*stamp, *v));
            if *stamp > e.0 {
                *e = (*stamp, *v);
            }
        }
        out.into_iter().map(|(f, (_, v))| (f, v)).collect()
    }
}

/// Test-only views of a delta.
trait Probe {
    fn context_holds(&self, dot: Dot) -> bool;
    fn context_dots_of(&self, field: &[u8]) -> Dot;
}

impl Probe for LwwMap {
    fn context_holds(&self, dot: Dot) -> bool {
        self.context().contains(dot)
    }

    fn context_dots_of(&self, field: &[u8]) -> Dot {
        self.writes(field).expect("a set's delta holds its write")[0].dot
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
        let deltas = run.deltas.clone();
        for node in run.nodes.iter_mut() {
            for d in deltas.iter().rev() {
                node.merge(d);
            }
        }
        prop_assert_eq!(&run.nodes[0], &run.nodes[1]);
        prop_assert_eq!(&run.nodes[1], &run.nodes[2]);
        let got: BTreeMap<u8, u8> = run.nodes[0].iter().map(|(f, v)| (f[0], v[0])).collect();
        prop_assert_eq!(got, run.expected());
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
        let m = |x: &LwwMap, y: &LwwMap| {
            let mut z = x.clone();
            let _ = z.merge(y);
            z
        };
        prop_assert_eq!(m(a, b), m(b, a));
        prop_assert_eq!(m(&m(a, b), c), m(a, &m(b, c)));
        prop_assert_eq!(m(a, a), a.clone());
    }
}
