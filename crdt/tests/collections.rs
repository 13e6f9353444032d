//! Property tests of hashes, sets and sorted sets against the history:
//! random HSETs, HDELs, SADDs, SREMs, ZADDs, ZREMs and DELs on three nodes,
//! their deltas delivered in random orders with duplicates, or in per-origin
//! order as replication delivers them, with GC at random moments; every
//! node converges to what the history says:
//! - a set member is present when some add of it was observed by no later
//!   remove, re-add or DEL (add wins);
//! - a hash field (a member's score) holds the highest-stamped of the
//!   writes no later op observed, and is absent when every write of it was
//!   observed;
//! - two writes of one field or member that survive together are reported
//!   as a conflict on it, wherever they meet; in per-origin and causal
//!   order, only writes neither of which saw the other ever are.

use std::collections::{BTreeMap, BTreeSet};

use chorus_crdt::context::Dot;
use chorus_crdt::{ConflictKind, KeyState, Kind, NodeId, Stamp};
use proptest::prelude::*;

/// The three keys every node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Which {
    Hash,
    Set,
    ZSet,
}

#[derive(Clone, Debug)]
enum Op {
    HSet(u8, u8),
    HDel(u8),
    SAdd(u8),
    SRem(u8),
    ZAdd(u8, i8),
    ZRem(u8),
    Del(Which),
}

#[derive(Clone, Debug)]
enum Step {
    Op {
        node: usize,
        op: Op,
    },
    /// In any order: any delta made so far. Otherwise: the next delta of
    /// origin `pick % 3` that `to` lacks (in causal order, once `to` has
    /// what its origin had when making it) or, one time in four, a delta
    /// `to` already has, again.
    Deliver {
        to: usize,
        pick: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..3usize, prop_oneof![
            4 => (0..3u8, any::<u8>()).prop_map(|(f, v)| Op::HSet(f, v)),
            2 => (0..3u8).prop_map(Op::HDel),
            4 => (0..3u8).prop_map(Op::SAdd),
            2 => (0..3u8).prop_map(Op::SRem),
            3 => (0..3u8, -2..3i8).prop_map(|(m, s)| Op::ZAdd(m, s)),
            1 => (0..3u8).prop_map(Op::ZRem),
            1 => prop_oneof![Just(Which::Hash), Just(Which::Set), Just(Which::ZSet)]
                .prop_map(Op::Del),
        ]).prop_map(|(node, op)| Step::Op { node, op }),
        4 => (0..3usize, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
    ]
}

/// One node: its hash, set and sorted-set keys.
#[derive(Clone, Default, Debug, PartialEq)]
struct Node {
    hash: KeyState,
    set: KeyState,
    zset: KeyState,
}

impl Node {
    fn key(&self, which: Which) -> &KeyState {
        match which {
            Which::Hash => &self.hash,
            Which::Set => &self.set,
            Which::ZSet => &self.zset,
        }
    }

    fn key_mut(&mut self, which: Which) -> &mut KeyState {
        match which {
            Which::Hash => &mut self.hash,
            Which::Set => &mut self.set,
            Which::ZSet => &mut self.zset,
        }
    }
}

/// How deltas reach a node.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// Any delta, any time, again and again.
    Any,
    /// Each origin's in the order it made them, the origins interleaved
    /// at random, as replication delivers them; again at random.
    PerOrigin,
    /// Per origin, and a delta only after every delta its origin had
    /// merged when making it.
    Causal,
}

struct Delta {
    which: Which,
    /// Per origin, how many of its deltas this one's origin had merged.
    after: [usize; 3],
    state: KeyState,
    /// What a node that merges it learns of: the dot its op made and the
    /// dots that op observed.
    dots: BTreeSet<Dot>,
}

/// A write of a hash field or of a sorted-set member's score.
struct Written {
    which: Which,
    elem: u8,
    dot: Dot,
    stamp: Stamp,
    value: i16,
    /// Every dot its node knew of when it wrote.
    knew: BTreeSet<Dot>,
}

struct Run {
    nodes: Vec<Node>,
    deltas: Vec<Delta>,
    /// Per origin, the deltas it made in order; per node and origin, how
    /// many of those the node has had.
    by_origin: [Vec<usize>; 3],
    had: [[usize; 3]; 3],
    /// Field and score writes, by stamp (each op has its own); set adds.
    written: BTreeMap<Stamp, Written>,
    adds: BTreeMap<Dot, u8>,
    /// Every dot some op observed (and so removed or replaced).
    observed: BTreeSet<Dot>,
    /// Per node, every dot the deltas it merged told it of.
    known: Vec<BTreeSet<Dot>>,
    /// Every conflict a merge reported on an element:
    /// (key, kind, element, winner, loser).
    reported: Vec<(Which, ConflictKind, Vec<u8>, Stamp, Stamp)>,
    time: u64,
}

/// The dots of element `e`'s writes (or adds) held in `s`.
fn elem_dots(s: &KeyState, which: Which, e: u8) -> Vec<Dot> {
    let Some(c) = s.coll() else {
        return Vec::new();
    };
    match which {
        Which::Hash => c
            .field_elem(&[e])
            .map(|e| e.writes.iter().map(|w| w.dot).collect()),
        Which::Set => c
            .member_adds(&[e])
            .map(|a| a.iter().map(|a| a.dot).collect()),
        Which::ZSet => c
            .zset_named(&[e])
            .map(|e| e.writes.iter().map(|w| w.dot).collect()),
    }
    .unwrap_or_default()
}

impl Run {
    fn after(steps: &[Step], order: Order) -> Run {
        let mut run = Run::new();
        for s in steps {
            run.apply(s, order);
        }
        run.deliver_the_rest(order);
        run
    }

    /// The writes of every conflict reported, winner and loser: on a hash
    /// field or a member's score, the later write winning.
    fn reported_pairs(&self) -> Result<Vec<(&Written, &Written)>, TestCaseError> {
        let mut pairs = Vec::new();
        for (which, kind, elem, winner, loser) in &self.reported {
            prop_assert_ne!(*which, Which::Set, "a set reported a conflict");
            prop_assert_eq!(*kind, ConflictKind::ConcurrentWrite);
            let (w, l) = (&self.written[winner], &self.written[loser]);
            prop_assert_eq!((w.which, w.elem), (*which, elem[0]));
            prop_assert_eq!((l.which, l.elem), (*which, elem[0]));
            prop_assert!(w.stamp > l.stamp, "the later write wins");
            pairs.push((w, l));
        }
        Ok(pairs)
    }

    fn new() -> Run {
        Run {
            nodes: vec![Node::default(); 3],
            deltas: Vec::new(),
            by_origin: Default::default(),
            had: [[0; 3]; 3],
            written: BTreeMap::new(),
            adds: BTreeMap::new(),
            observed: BTreeSet::new(),
            known: vec![BTreeSet::new(); 3],
            reported: Vec::new(),
            time: 0,
        }
    }

    fn deliver(&mut self, to: usize, index: usize) {
        let delta = &self.deltas[index];
        let state = self.nodes[to].key_mut(delta.which);
        // The same merge into the hash held as a map: a packed hash joins
        // a delta in place, to the same state and the same conflicts.
        let mut unpacked = state.clone();
        if let Some(c) = unpacked.coll.as_mut() {
            c.hash.map_mut();
        }
        let expected = unpacked.merge(&delta.state);
        let conflicts = state.merge(&delta.state);
        assert_eq!(conflicts, expected);
        assert_eq!(*state, unpacked);
        for c in conflicts {
            if let Some(e) = c.element {
                let (w, l) = (c.winner.stamp, c.loser.stamp);
                self.reported.push((delta.which, c.kind, e, w, l));
            }
        }
        self.known[to].extend(delta.dots.iter().copied());
    }

    /// The next delta of `origin` that `to` has not had, if there is one
    /// and `order` lets it through.
    fn deliver_next(&mut self, to: usize, origin: usize, order: Order) -> bool {
        let Some(&index) = self.by_origin[origin].get(self.had[to][origin]) else {
            return false;
        };
        let after = self.deltas[index].after;
        if order == Order::Causal && (0..3).any(|o| self.had[to][o] < after[o]) {
            return false;
        }
        self.had[to][origin] += 1;
        self.deliver(to, index);
        true
    }

    fn apply(&mut self, step: &Step, order: Order) {
        match step {
            Step::Op { node, op } => {
                // A global clock: every node's next write is after all.
                self.time += 1;
                let stamp = Stamp {
                    time: self.time,
                    node: NodeId(*node as u64 + 1),
                };
                let n = &self.nodes[*node];
                let (which, elem, value) = match op {
                    Op::HSet(e, v) => (Which::Hash, Some(*e), Some(i16::from(*v))),
                    Op::HDel(e) => (Which::Hash, Some(*e), None),
                    Op::SAdd(e) => (Which::Set, Some(*e), Some(0)),
                    Op::SRem(e) => (Which::Set, Some(*e), None),
                    Op::ZAdd(e, s) => (Which::ZSet, Some(*e), Some(i16::from(*s))),
                    Op::ZRem(e) => (Which::ZSet, Some(*e), None),
                    Op::Del(which) => (*which, None, None),
                };
                let key = n.key(which);
                let kind = match which {
                    Which::Hash => Kind::Hash,
                    Which::Set => Kind::Set,
                    Which::ZSet => Kind::ZSet,
                };
                let state = match (elem, value) {
                    (None, _) => key.write(stamp, None, 0),
                    (Some(e), None) => {
                        key.coll_write(stamp, kind, |c, d| c.remove_elem_into(d, kind, &[e], stamp))
                    }
                    (Some(e), Some(v)) => key.coll_write(stamp, kind, |c, d| match which {
                        Which::Hash => c.hset_into(d, stamp, &[e], &[v as u8]),
                        Which::Set => c.sadd_into(d, stamp, &[e]),
                        Which::ZSet => c.zadd_into(d, stamp, &[e], f64::from(v)),
                    }),
                };
                let seen: Vec<Dot> = match elem {
                    Some(e) => elem_dots(key, which, e),
                    None => (0..3).flat_map(|e| elem_dots(key, which, e)).collect(),
                };
                let mut dots: BTreeSet<Dot> = seen.iter().copied().collect();
                if let (Some(e), Some(value)) = (elem, value) {
                    let dot = elem_dots(&state, which, e)[0];
                    dots.insert(dot);
                    if which == Which::Set {
                        self.adds.insert(dot, e);
                    } else {
                        let knew = self.known[*node].clone();
                        let w = Written {
                            which,
                            elem: e,
                            dot,
                            stamp,
                            value,
                            knew,
                        };
                        self.written.insert(stamp, w);
                    }
                }
                self.observed.extend(seen);
                let index = self.deltas.len();
                let after = self.had[*node];
                self.deltas.push(Delta {
                    which,
                    after,
                    state,
                    dots,
                });
                self.by_origin[*node].push(index);
                self.had[*node][*node] += 1;
                self.deliver(*node, index);
            }
            Step::Deliver { to, pick } if order != Order::Any => {
                if pick / 3 % 4 == 0 {
                    let had: Vec<usize> = (0..3)
                        .flat_map(|o| self.by_origin[o][..self.had[*to][o]].iter().copied())
                        .collect();
                    if !had.is_empty() {
                        self.deliver(*to, had[pick / 12 % had.len()]);
                    }
                } else {
                    self.deliver_next(*to, pick % 3, order);
                }
            }
            Step::Deliver { to, pick } => {
                if !self.deltas.is_empty() {
                    self.deliver(*to, pick % self.deltas.len());
                }
            }
        }
    }

    /// Everything reaches everyone: in any order, every delta in reverse
    /// and then forward; otherwise what each node lacks of each origin,
    /// the origins taking turns.
    fn deliver_the_rest(&mut self, order: Order) {
        for to in 0..3 {
            if order != Order::Any {
                let mut more = true;
                while more {
                    more = false;
                    for origin in 0..3 {
                        more |= self.deliver_next(to, origin, order);
                    }
                }
            } else {
                let n = self.deltas.len();
                for index in (0..n).rev().chain(0..n) {
                    self.deliver(to, index);
                }
            }
        }
    }

    /// Per field or member: the value of the highest-stamped write no op
    /// observed.
    fn expected(&self, which: Which) -> BTreeMap<u8, i16> {
        let mut out: BTreeMap<u8, (Stamp, i16)> = BTreeMap::new();
        for w in self.written.values() {
            if w.which != which || self.observed.contains(&w.dot) {
                continue;
            }
            let e = out.entry(w.elem).or_insert((w.stamp, w.value));
            if w.stamp > e.0 {
                *e = (w.stamp, w.value);
            }
        }
        out.into_iter().map(|(e, (_, v))| (e, v)).collect()
    }

    fn expected_members(&self) -> BTreeSet<u8> {
        self.adds
            .iter()
            .filter(|(d, _)| !self.observed.contains(d))
            .map(|(_, m)| *m)
            .collect()
    }

    /// Fields and members with two writes no op observed: concurrent, a
    /// conflict.
    fn concurrent(&self) -> BTreeSet<(Which, u8)> {
        let mut per_elem: BTreeMap<(Which, u8), usize> = BTreeMap::new();
        for w in self.written.values() {
            if !self.observed.contains(&w.dot) {
                *per_elem.entry((w.which, w.elem)).or_default() += 1;
            }
        }
        per_elem
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(e, _)| e)
            .collect()
    }

    /// Every node holds the same keys, what the history says they hold,
    /// after GC too; of the writes of a field or member that survived
    /// together, every one but the winner was reported lost.
    fn check_converged(&self, gc_at: u64) -> Result<(), TestCaseError> {
        for n in &self.nodes[1..] {
            prop_assert_eq!(n, &self.nodes[0]);
        }
        let node = &self.nodes[0];
        let reads = |n: &Node| (fields_of(&n.hash), members_of(&n.set), scores_of(&n.zset));
        let expected = (
            self.expected(Which::Hash),
            self.expected_members(),
            self.expected(Which::ZSet),
        );
        prop_assert_eq!(reads(node), expected.clone());
        // Every such write but the winner was reported lost (to it or to
        // a write that lost to it since).
        for (which, e) in self.concurrent() {
            let survivors: Vec<&Written> = self
                .written
                .values()
                .filter(|w| (w.which, w.elem) == (which, e) && !self.observed.contains(&w.dot))
                .collect();
            let winner = survivors.iter().map(|w| w.stamp).max();
            for lost in survivors.iter().filter(|w| Some(w.stamp) != winner) {
                let reported = self
                    .reported
                    .iter()
                    .any(|r| (r.0, &r.2[..], r.4) == (which, &[e][..], lost.stamp));
                prop_assert!(
                    reported,
                    "{:?} {}: {:?} lost silently",
                    which,
                    e,
                    lost.stamp
                );
            }
        }
        // GC once everything arrived changes what every node reads nothing.
        let acked = Stamp {
            time: gc_at % (self.time + 2),
            node: NodeId(u64::MAX),
        };
        let mut collected = node.clone();
        for which in [Which::Hash, Which::Set, Which::ZSet] {
            collected.key_mut(which).compact(acked);
        }
        prop_assert_eq!(reads(&collected), expected);
        Ok(())
    }
}

fn fields_of(s: &KeyState) -> BTreeMap<u8, i16> {
    s.coll()
        .map(|c| {
            c.fields()
                .map(|(f, v)| (f[0], i16::from(v.render().expect("a field has a value")[0])))
                .collect()
        })
        .unwrap_or_default()
}

fn members_of(s: &KeyState) -> BTreeSet<u8> {
    s.coll()
        .map(|c| c.members().map(|m| m[0]).collect())
        .unwrap_or_default()
}

fn scores_of(s: &KeyState) -> BTreeMap<u8, i16> {
    let Some(c) = s.coll() else {
        return BTreeMap::new();
    };
    (0..3u8)
        .filter_map(|m| c.score(&[m]).map(|score| (m, score as i16)))
        .collect()
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
            run.apply(s, Order::Any);
        }
        run.deliver_the_rest(Order::Any);
        run.check_converged(gc_at)?;
    }

    /// In causal order a conflict is reported only between two writes of
    /// one field or member neither of which saw the other: a write made
    /// knowing of another (merged, or removed by an op its node merged)
    /// never conflicts with it, wherever and whenever the two meet; a
    /// set's adds and removals report none (add wins by design).
    #[test]
    fn causal_order_reports_conflicts_only_between_writes_neither_saw(
        steps in prop::collection::vec(step(), 1..80),
        gc_at in any::<u64>(),
    ) {
        let run = Run::after(&steps, Order::Causal);
        run.check_converged(gc_at)?;
        for (w, l) in run.reported_pairs()? {
            prop_assert!(!w.knew.contains(&l.dot), "{:?} knew {:?}", w.stamp, l.stamp);
            prop_assert!(!l.knew.contains(&w.dot), "{:?} knew {:?}", l.stamp, w.stamp);
        }
    }

    /// In per-origin order, as replication delivers, the same: a write
    /// known only through a third node's op (which replaced or removed
    /// it) is dead by that op's removal record wherever the later write
    /// arrives first, so the two never meet as siblings.
    #[test]
    fn per_origin_order_reports_conflicts_only_between_writes_neither_saw(
        steps in prop::collection::vec(step(), 1..80),
        gc_at in any::<u64>(),
    ) {
        let run = Run::after(&steps, Order::PerOrigin);
        run.check_converged(gc_at)?;
        for (w, l) in run.reported_pairs()? {
            prop_assert!(!w.knew.contains(&l.dot), "{:?} knew {:?}", w.stamp, l.stamp);
            prop_assert!(!l.knew.contains(&w.dot), "{:?} knew {:?}", l.stamp, w.stamp);
        }
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
