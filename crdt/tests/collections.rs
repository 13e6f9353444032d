//! Property tests of hashes and sets against the history: random HSETs,
//! HDELs, SADDs, SREMs and DELs on three nodes, their deltas delivered in
//! random orders with duplicates, with GC at random moments; every node
//! converges to what the history says:
//! - a set member is present when some add of it was observed by no later
//!   remove, re-add or DEL (add wins);
//! - a hash field holds the highest-stamped of the writes no later op
//!   observed, and is absent when every write of it was observed;
//! - two writes of one field that survive together are reported as a
//!   conflict on that field, wherever they meet.

use std::collections::{BTreeMap, BTreeSet};

use chorus_crdt::context::Dot;
use chorus_crdt::{KeyState, Kind, NodeId, Stamp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    HSet(u8, u8),
    HDel(u8),
    SAdd(u8),
    SRem(u8),
    /// DEL of the hash (`true`) or the set.
    Del(bool),
}

#[derive(Clone, Debug)]
enum Step {
    Op { node: usize, op: Op },
    Deliver { to: usize, pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3usize, prop_oneof![
            4 => (0..3u8, any::<u8>()).prop_map(|(f, v)| Op::HSet(f, v)),
            2 => (0..3u8).prop_map(Op::HDel),
            4 => (0..3u8).prop_map(Op::SAdd),
            2 => (0..3u8).prop_map(Op::SRem),
            1 => any::<bool>().prop_map(Op::Del),
        ]).prop_map(|(node, op)| Step::Op { node, op }),
        4 => (0..3usize, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
    ]
}

/// One node: its hash key and its set key.
#[derive(Clone, Default, Debug, PartialEq)]
struct Node {
    hash: KeyState,
    set: KeyState,
}

struct Run {
    nodes: Vec<Node>,
    /// Every delta made: (to the hash?, delta).
    deltas: Vec<(bool, KeyState)>,
    /// Field writes: dot -> (field, stamp, value); set adds: dot -> member.
    writes: BTreeMap<Dot, (u8, Stamp, u8)>,
    adds: BTreeMap<Dot, u8>,
    /// Every dot some op observed (and so removed or replaced).
    observed: BTreeSet<Dot>,
    /// Fields some merge reported a conflict on.
    conflicted: BTreeSet<Vec<u8>>,
    time: u64,
}

fn field_dots(s: &KeyState, f: u8) -> Vec<Dot> {
    s.coll()
        .and_then(|c| c.field_elem(&[f]))
        .map(|e| e.writes.iter().map(|w| w.dot).collect())
        .unwrap_or_default()
}

fn member_dots(s: &KeyState, m: u8) -> Vec<Dot> {
    s.coll()
        .and_then(|c| c.member_adds(&[m]))
        .map(|a| a.iter().map(|a| a.dot).collect())
        .unwrap_or_default()
}

impl Run {
    fn new() -> Run {
        Run {
            nodes: vec![Node::default(); 3],
            deltas: Vec::new(),
            writes: BTreeMap::new(),
            adds: BTreeMap::new(),
            observed: BTreeSet::new(),
            conflicted: BTreeSet::new(),
            time: 0,
        }
    }

    fn merge(&mut self, to: usize, is_hash: bool, delta: &KeyState) {
        let node = &mut self.nodes[to];
        let state = if is_hash {
            &mut node.hash
        } else {
            &mut node.set
        };
        // The same merge into the hash held as a map: a packed hash joins
        // a delta in place, to the same state and the same conflicts.
        let mut unpacked = state.clone();
        if let Some(c) = unpacked.coll.as_mut() {
            c.hash.map_mut();
        }
        let expected = unpacked.merge(delta);
        let conflicts = state.merge(delta);
        assert_eq!(conflicts, expected);
        assert_eq!(*state, unpacked);
        for c in conflicts {
            if let Some(e) = c.element {
                self.conflicted.insert(e);
            }
        }
    }

    fn apply(&mut self, step: &Step) {
        match step {
            Step::Op { node, op } => {
                // A global clock: every node's next write is after all.
                self.time += 1;
                let stamp = Stamp {
                    time: self.time,
                    node: NodeId(*node as u64 + 1),
                };
                let n = &self.nodes[*node];
                let (is_hash, delta, seen) = match op {
                    Op::HSet(f, v) => {
                        let d = n.hash.coll_write(stamp, Kind::Hash, |c, d| {
                            c.hset_into(d, stamp, &[*f], &[*v])
                        });
                        let dot = field_dots(&d, *f)[0];
                        self.writes.insert(dot, (*f, stamp, *v));
                        (true, d, field_dots(&n.hash, *f))
                    }
                    Op::HDel(f) => (
                        true,
                        n.hash.coll_write(stamp, Kind::Hash, |c, d| {
                            c.remove_elem_into(d, Kind::Hash, &[*f], stamp)
                        }),
                        field_dots(&n.hash, *f),
                    ),
                    Op::SAdd(m) => {
                        let d = n
                            .set
                            .coll_write(stamp, Kind::Set, |c, d| c.sadd_into(d, stamp, &[*m]));
                        self.adds.insert(member_dots(&d, *m)[0], *m);
                        (false, d, member_dots(&n.set, *m))
                    }
                    Op::SRem(m) => (
                        false,
                        n.set.coll_write(stamp, Kind::Set, |c, d| {
                            c.remove_elem_into(d, Kind::Set, &[*m], stamp)
                        }),
                        member_dots(&n.set, *m),
                    ),
                    Op::Del(h) => {
                        let s = if *h { &n.hash } else { &n.set };
                        let seen: Vec<Dot> = (0..3)
                            .flat_map(|e| {
                                if *h {
                                    field_dots(s, e)
                                } else {
                                    member_dots(s, e)
                                }
                            })
                            .collect();
                        (*h, s.write(stamp, None, 0), seen)
                    }
                };
                self.observed.extend(seen);
                self.merge(*node, is_hash, &delta);
                self.deltas.push((is_hash, delta));
            }
            Step::Deliver { to, pick } => {
                if !self.deltas.is_empty() {
                    let (h, d) = self.deltas[pick % self.deltas.len()].clone();
                    self.merge(*to, h, &d);
                }
            }
        }
    }

    fn expected_fields(&self) -> BTreeMap<u8, u8> {
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

    fn expected_members(&self) -> BTreeSet<u8> {
        self.adds
            .iter()
            .filter(|(d, _)| !self.observed.contains(d))
            .map(|(_, m)| *m)
            .collect()
    }

    /// Fields with two writes no op observed: concurrent, a conflict.
    fn concurrent_fields(&self) -> BTreeSet<Vec<u8>> {
        let mut per_field: BTreeMap<u8, usize> = BTreeMap::new();
        for (dot, (f, ..)) in &self.writes {
            if !self.observed.contains(dot) {
                *per_field.entry(*f).or_default() += 1;
            }
        }
        per_field
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(f, _)| vec![f])
            .collect()
    }
}

fn fields_of(s: &KeyState) -> BTreeMap<u8, u8> {
    s.coll()
        .map(|c| {
            c.fields()
                .map(|(f, v)| (f[0], v.render().expect("a field has a value")[0]))
                .collect()
        })
        .unwrap_or_default()
}

fn members_of(s: &KeyState) -> BTreeSet<u8> {
    s.coll()
        .map(|c| c.members().map(|m| m[0]).collect())
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn deltas_in_any_order_converge_to_the_history(
        steps in prop::collection::vec(step(), 1..80),
        gc_at in any::<u64>(),
    ) {
        let mut run = Run::new();
        for s in &steps {
            run.apply(s);
        }
        // Everything reaches everyone, in reverse order, twice.
        let deltas = run.deltas.clone();
        for to in 0..3 {
            for (h, d) in deltas.iter().rev().chain(deltas.iter()) {
                run.merge(to, *h, d);
            }
        }
        for n in &run.nodes[1..] {
            prop_assert_eq!(n, &run.nodes[0]);
        }
        let node = &run.nodes[0];
        prop_assert_eq!(fields_of(&node.hash), run.expected_fields());
        prop_assert_eq!(members_of(&node.set), run.expected_members());
        // Concurrent writes of a field were reported on that field.
        for f in run.concurrent_fields() {
            prop_assert!(run.conflicted.contains(&f), "field {:?} lost silently", f);
        }
        // GC once everything arrived changes what every node reads nothing.
        let acked = Stamp { time: gc_at % (run.time + 2), node: NodeId(u64::MAX) };
        let mut collected = node.clone();
        collected.hash.compact(acked);
        collected.set.compact(acked);
        prop_assert_eq!(fields_of(&collected.hash), run.expected_fields());
        prop_assert_eq!(members_of(&collected.set), run.expected_members());
    }
}

/// An HSET of ten fields numbers its dots from its time up; compacted on
/// a node without peers (GC at "everything"), none of them stays in the
/// context, the hash packs, and the node's next write, one tick later,
/// is still new: it shows, and so does the field it did not touch.
#[test]
fn a_many_field_write_leaves_no_dots_behind_and_the_next_write_shows() {
    let everything = Stamp {
        time: u64::MAX,
        node: NodeId(u64::MAX),
    };
    let node = NodeId(1);
    let t0 = Stamp { time: 1_000, node };
    let mut state = KeyState::default();
    let delta = state.coll_write(t0, Kind::Hash, |c, d| {
        for f in 0..10u8 {
            c.hset_into(d, t0, &[b'f', b'0' + f], b"v");
        }
    });
    state.merge(&delta);
    state.compact(everything);
    let coll = state.coll().unwrap();
    assert_eq!(coll.ctx.cloud_len(), 0, "{:?}", coll.ctx);
    assert!(coll.hash.is_packed());

    let t1 = Stamp { time: 1_001, node };
    for general in [false, true] {
        let mut s = state.clone();
        if general {
            let d = s.coll_write(t1, Kind::Hash, |c, d| c.hset_into(d, t1, b"f3", b"new"));
            s.merge(&d);
        } else {
            let c = s.coll.as_mut().unwrap();
            assert_eq!(
                c.hset_here(t1, b"f3", b"new", None::<&mut chorus_crdt::Coll>),
                Some(false)
            );
        }
        s.compact(everything);
        let c = s.coll().unwrap();
        assert_eq!(c.field(b"f3"), Some(chorus_crdt::Read::Str(b"new")));
        assert_eq!(c.field(b"f4"), Some(chorus_crdt::Read::Str(b"v")));
        assert_eq!(c.len(Kind::Hash), 10);
    }
}

/// A refused HINCRBY leaves a packed hash packed, and a hash a long value
/// unpacked packs again once that value is overwritten by a short one.
#[test]
fn a_packed_hash_stays_packed_through_refusals_and_repacks_after_long_values() {
    let node = NodeId(1);
    let t0 = Stamp { time: 1_000, node };
    let mut state = KeyState::default();
    let delta = state.coll_write(t0, Kind::Hash, |c, d| {
        c.hset_into(d, t0, b"name", b"ann");
        c.hset_into(d, t0, b"city", b"oslo");
    });
    state.merge(&delta);
    let c = state.coll.as_mut().unwrap();
    assert!(c.hash.is_packed());

    let t1 = Stamp { time: 2_000, node };
    let refused: Option<()> = c.hincr_here(
        t1,
        b"name",
        (1, 0.0, false),
        |_| None,
        None::<&mut chorus_crdt::Coll>,
    );
    assert!(refused.is_none());
    assert!(c.hash.is_packed(), "a refused increment unpacks nothing");

    let long = vec![b'x'; chorus_crdt::fields::PACK_MAX_BYTES + 1];
    assert_eq!(
        c.hset_here(t1, b"city", &long, None::<&mut chorus_crdt::Coll>),
        Some(false)
    );
    assert!(!c.hash.is_packed());
    let t2 = Stamp { time: 3_000, node };
    assert_eq!(
        c.hset_here(t2, b"city", b"rome", None::<&mut chorus_crdt::Coll>),
        Some(false)
    );
    assert!(c.hash.is_packed(), "short again, packed again");
    assert_eq!(c.field(b"city"), Some(chorus_crdt::Read::Str(b"rome")));
    assert_eq!(c.field(b"name"), Some(chorus_crdt::Read::Str(b"ann")));

    let t3 = Stamp { time: 4_000, node };
    let reply = c.hincr_here(
        t3,
        b"n",
        (5, 0.0, false),
        |_| Some(5),
        None::<&mut chorus_crdt::Coll>,
    );
    assert_eq!(reply, Some(5));
    assert!(!c.hash.is_packed(), "a counter field does not pack");
    assert_eq!(c.field(b"n"), Some(chorus_crdt::Read::Int(5)));
}

/// A hash holds no part of the other kinds nor removal records, and once
/// compacted no extras: written here, merged as a delta and as a whole
/// state, pruned, compacted and with a field deleted, it allocates none of
/// them (each costs a box); a set allocates only its own.
#[test]
fn a_hash_allocates_no_part_of_the_other_kinds() {
    let everything = Stamp {
        time: u64::MAX,
        node: NodeId(u64::MAX),
    };
    let (a, b) = (NodeId(1), NodeId(2));
    let t0 = Stamp {
        time: 1_000,
        node: a,
    };
    let mut here = KeyState::default();
    let delta = here.coll_write(t0, Kind::Hash, |c, d| {
        c.hset_into(d, t0, b"name", b"ann");
        c.hset_into(d, t0, b"city", b"oslo");
    });
    here.merge(&delta);
    let mut there = KeyState::default();
    there.merge(&delta);
    let t1 = Stamp {
        time: 2_000,
        node: b,
    };
    let d2 = there.coll_write(t1, Kind::Hash, |c, d| {
        c.remove_elem_into(d, Kind::Hash, b"city", t1)
    });
    there.merge(&d2);
    here.merge(&d2);
    here.merge(&there);
    here.prune(Stamp { time: 10, node: a });
    here.compact(everything);
    let others_made = |s: &KeyState| {
        let c = s.coll().expect("a collection");
        (
            c.set.is_made(),
            c.zset.is_made(),
            c.list.is_made(),
            c.removed.is_made(),
        )
    };
    assert_eq!(others_made(&here), (false, false, false, false));
    assert_eq!(here.coll().unwrap().len(Kind::Hash), 1);
    assert!(
        here.extras.is_none(),
        "no expiry, counter or floor: no extras"
    );

    let mut set = KeyState::default();
    let d = set.coll_write(t0, Kind::Set, |c, d| c.sadd_into(d, t0, b"m"));
    set.merge(&d);
    assert_eq!(others_made(&set), (true, false, false, false));
}

/// What a small collection key costs besides its elements: the sizes of
/// the boxes every one of them holds.
#[test]
fn a_collection_keys_boxes_stay_small() {
    let coll = std::mem::size_of::<chorus_crdt::Coll>();
    let extras = std::mem::size_of::<chorus_crdt::Extras>();
    eprintln!("Coll {coll} bytes, Extras {extras} bytes");
    assert!(coll <= 160, "Coll is {coll} bytes");
    assert!(extras <= 120, "Extras is {extras} bytes");
}

/// An op on a hash for [`a_packed_hash_joins_every_delta_as_its_map_does`].
#[derive(Clone, Debug)]
enum HashOp {
    /// HSET of these fields; values of 65 bytes (too long to pack) when set.
    Set(Vec<(u8, u8)>, bool),
    Del(Vec<u8>),
    Incr(u8, i64),
    /// DEL of the key.
    Clear,
}

fn hash_op() -> impl Strategy<Value = HashOp> {
    prop_oneof![
        6 => (prop::collection::vec((0..4u8, any::<u8>()), 1..4), prop::bool::weighted(0.1))
            .prop_map(|(f, long)| HashOp::Set(f, long)),
        3 => prop::collection::vec(0..4u8, 1..4).prop_map(HashOp::Del),
        1 => (0..4u8, -5..5i64).prop_map(|(f, n)| HashOp::Incr(f, n)),
        1 => Just(HashOp::Clear),
    ]
}

/// Merges `delta` into `state`, and into a copy whose hash is held as a
/// map: the same state and the same conflicts either way.
fn merge_both_ways(state: &mut KeyState, delta: &KeyState) {
    let mut unpacked = state.clone();
    if let Some(c) = unpacked.coll.as_mut() {
        c.hash.map_mut();
    }
    let expected = unpacked.merge(delta);
    assert_eq!(state.merge(delta), expected);
    assert_eq!(*state, unpacked);
}

proptest! {
    /// A packed hash joins every delta (several fields, long values,
    /// counters, HDELs of fields held or not, DELs) as the same hash held
    /// as a map does, whether the delta joins in place, in part, or not.
    #[test]
    fn a_packed_hash_joins_every_delta_as_its_map_does(
        steps in prop::collection::vec((0..3usize, hash_op(), 0..3usize, any::<usize>()), 1..50),
    ) {
        let mut nodes = vec![KeyState::default(); 3];
        let mut deltas: Vec<KeyState> = Vec::new();
        for (t, (node, op, to, pick)) in steps.into_iter().enumerate() {
            let stamp = Stamp { time: t as u64 + 1, node: NodeId(node as u64 + 1) };
            let delta = match &op {
                HashOp::Clear => nodes[node].write(stamp, None, 0),
                op => nodes[node].coll_write(stamp, Kind::Hash, |c, d| match op {
                    HashOp::Set(fields, long) => {
                        for (f, v) in fields {
                            let value = vec![*v; if *long { 65 } else { 2 }];
                            c.hset_into(d, stamp, &[*f], &value);
                        }
                    }
                    HashOp::Del(fields) => {
                        for f in fields {
                            c.remove_elem_into(d, Kind::Hash, &[*f], stamp);
                        }
                    }
                    HashOp::Incr(f, n) => c.incr_into(d, Kind::Hash, &[*f], stamp, (*n, 0.0, false)),
                    HashOp::Clear => unreachable!(),
                }),
            };
            merge_both_ways(&mut nodes[node], &delta);
            deltas.push(delta);
            let delivered = deltas[pick % deltas.len()].clone();
            merge_both_ways(&mut nodes[to], &delivered);
        }
    }
}
