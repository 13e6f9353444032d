//! Property tests: random ops on random nodes, delivered in random orders with
//! duplicates, converge; merge is commutative, associative and idempotent;
//! counters and registers hold what the recorded history says they must.

use std::collections::BTreeMap;

use chorus_crdt::{Coll, Delta, KeyState, KeyType, Kind, NodeId, Read, Stamp};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Set(u8),
    Del,
    Incr(i8),
    IncrFloat(i8),
    Expire(u16),
    Persist,
    /// The key's expire time passed here: the node records its expiry
    /// delete (nothing when the key has no TTL).
    Expired,
    Flush,
    HSet(u8, u8),
    HDel(u8),
    HIncr(u8, i8),
    SAdd(u8),
    SRem(u8),
    ZAdd(u8, i8),
    ZIncr(u8, i8),
    ZRem(u8),
    /// LPUSH (true) or RPUSH of a value.
    Push(bool, u8),
    /// LPOP (true) or RPOP.
    Pop(bool),
    /// LSET at an index (modulo the length).
    LSet(u8, u8),
    /// LINSERT at an index (modulo the length plus one): between the
    /// elements before and at it.
    LInsert(u8, u8),
    /// LREM of every element equal to a value.
    LRem(u8),
    /// LTRIM keeping `len` elements from `start`.
    LTrim(u8, u8),
}

#[derive(Clone, Debug)]
enum Step {
    Op {
        node: usize,
        key: u8,
        op: Op,
    },
    Deliver {
        to: usize,
        pick: usize,
    },
    /// Tombstone GC at `node`, at the causal floor of what was delivered.
    Collect {
        node: usize,
    },
}

fn op(with_flush: bool, with_floats: bool) -> impl Strategy<Value = Op> {
    op_with(with_flush, with_floats, true)
}

fn op_with(with_flush: bool, with_floats: bool, with_colls: bool) -> impl Strategy<Value = Op> {
    let strings = prop_oneof![
        4 => (0u8..4).prop_map(Op::Set),
        2 => Just(Op::Del),
        4 => any::<i8>().prop_map(Op::Incr),
        (if with_floats { 2 } else { 0 }) => any::<i8>().prop_map(Op::IncrFloat),
        (if with_floats { 1 } else { 0 }) => any::<u16>().prop_map(Op::Expire),
        (if with_floats { 1 } else { 0 }) => Just(Op::Persist),
        (if with_floats { 1 } else { 0 }) => Just(Op::Expired),
        (if with_flush { 1 } else { 0 }) => Just(Op::Flush),
    ];
    let colls = prop_oneof![
        3 => (0u8..3, 0u8..3).prop_map(|(f, v)| Op::HSet(f, v)),
        1 => (0u8..3).prop_map(Op::HDel),
        2 => (0u8..3, any::<i8>()).prop_map(|(f, by)| Op::HIncr(f, by)),
        3 => (0u8..3).prop_map(Op::SAdd),
        2 => (0u8..3).prop_map(Op::SRem),
        3 => (0u8..3, -3i8..3).prop_map(|(m, score)| Op::ZAdd(m, score)),
        2 => (0u8..3, any::<i8>()).prop_map(|(m, by)| Op::ZIncr(m, by)),
        1 => (0u8..3).prop_map(Op::ZRem),
        3 => (any::<bool>(), 0u8..4).prop_map(|(head, v)| Op::Push(head, v)),
        2 => any::<bool>().prop_map(Op::Pop),
        1 => (any::<u8>(), 0u8..4).prop_map(|(i, v)| Op::LSet(i, v)),
        2 => (any::<u8>(), 0u8..4).prop_map(|(i, v)| Op::LInsert(i, v)),
        1 => (0u8..4).prop_map(Op::LRem),
        1 => (0u8..3, 0u8..4).prop_map(|(start, len)| Op::LTrim(start, len)),
    ];
    prop_oneof![
        3 => strings,
        (if with_colls { 2 } else { 0 }) => colls,
    ]
}

fn steps(nodes: usize, with_flush: bool, with_floats: bool) -> impl Strategy<Value = Vec<Step>> {
    steps_with(nodes, with_flush, with_floats, true)
}

fn steps_with(
    nodes: usize,
    with_flush: bool,
    with_floats: bool,
    with_colls: bool,
) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0..nodes, 0u8..3, op_with(with_flush, with_floats, with_colls))
                .prop_map(|(node, key, op)| Step::Op { node, key, op }),
            2 => (0..nodes, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
        ],
        1..60,
    )
}

/// One node: its Lamport-style clock, flush floor and key states.
#[derive(Clone, Debug, PartialEq)]
struct Replica {
    node: NodeId,
    time: u64,
    floor: Stamp,
    keys: BTreeMap<Vec<u8>, KeyState>,
    /// Highest increment number of each (key, origin) this node has merged.
    seen_incrs: BTreeMap<(Vec<u8>, NodeId), u64>,
}

/// A register write or delete: its stamp and value.
type RegisterWrite = (Stamp, Option<Vec<u8>>);

/// Ground truth recorded while the ops run.
#[derive(Default)]
struct History {
    log: Vec<(Delta, Option<(NodeId, u64)>)>,
    /// (key, origin, number) -> amount, for every increment made.
    incrs: BTreeMap<(Vec<u8>, NodeId, u64), i64>,
    incr_counter: BTreeMap<(Vec<u8>, NodeId), u64>,
    /// (key, origin) -> highest increment number some reset observed.
    removed: BTreeMap<(Vec<u8>, NodeId), u64>,
    /// key -> (stamp, value) of every register write or delete.
    registers: BTreeMap<Vec<u8>, Vec<RegisterWrite>>,
}

impl Replica {
    fn new(i: usize) -> Replica {
        Replica {
            node: NodeId(i as u64 + 1),
            time: 0,
            floor: Stamp::ZERO,
            keys: BTreeMap::new(),
            seen_incrs: BTreeMap::new(),
        }
    }

    fn stamp(&mut self) -> Stamp {
        self.time += 1;
        Stamp {
            time: self.time,
            node: self.node,
        }
    }

    fn apply(&mut self, delta: &Delta, incr: Option<(NodeId, u64)>) {
        self.time = self.time.max(delta.stamp().time);
        match delta {
            Delta::Key { key, state, .. } => {
                if let Some((origin, n)) = incr {
                    let seen = self.seen_incrs.entry((key.clone(), origin)).or_default();
                    *seen = (*seen).max(n);
                }
                let mut incoming = state.clone();
                incoming.prune(self.floor);
                let entry = self.keys.entry(key.clone()).or_default();
                // Built before, so that the merge must keep it in step.
                if let Some(c) = entry.coll() {
                    c.zindex();
                }
                entry.merge(&incoming);
                assert_index_in_step(entry);
                if entry.is_empty() {
                    self.keys.remove(key);
                }
            }
            Delta::Flush { stamp, .. } => {
                self.floor = self.floor.max(*stamp);
                let floor = self.floor;
                self.keys.retain(|_, s| {
                    s.prune(floor);
                    !s.is_empty()
                });
            }
        }
    }

    fn local(&mut self, key: u8, op: &Op, history: &mut History) {
        let key = vec![b'k', key];
        let stamp = self.stamp();
        let state = self.keys.get(&key).cloned().unwrap_or_default();
        let mut incr = None;
        let delta_state = match op {
            Op::Set(_) | Op::Del => {
                let value = match op {
                    Op::Set(v) => Some(vec![b'0' + v]),
                    _ => None,
                };
                for ((k, origin), n) in &self.seen_incrs {
                    if *k == key {
                        let r = history.removed.entry((key.clone(), *origin)).or_default();
                        *r = (*r).max(*n);
                    }
                }
                history
                    .registers
                    .entry(key.clone())
                    .or_default()
                    .push((stamp, value.clone()));
                state.write(stamp, value.as_deref(), 0)
            }
            Op::Incr(by) => {
                let n = history
                    .incr_counter
                    .entry((key.clone(), self.node))
                    .or_default();
                *n += 1;
                history
                    .incrs
                    .insert((key.clone(), self.node, *n), i64::from(*by));
                incr = Some((self.node, *n));
                state.incr(stamp, i64::from(*by), 0.0, false)
            }
            Op::IncrFloat(by) => state.incr(stamp, 0, f64::from(*by) / 10.0, true),
            Op::Expire(at) => state.expire(stamp, u64::from(*at) + 1),
            Op::Persist => state.expire(stamp, 0),
            // As the keyspace: only a key that exists is expired.
            Op::Expired if state.expire_at_ms() == 0 || !state.exists(0) => return,
            Op::Expired => state.expiry_delete(self.node),
            Op::Flush => {
                let delta = Delta::Flush { db: None, stamp };
                self.apply(&delta, None);
                history.log.push((delta, None));
                return;
            }
            Op::HSet(f, v) => state.coll_write(stamp, Kind::Hash, |c, d| {
                c.hset_into(d, stamp, &[b'f', *f], &[b'0' + v])
            }),
            Op::HDel(f) => state.coll_write(stamp, Kind::Hash, |c, d| {
                c.remove_elem_into(d, Kind::Hash, &[b'f', *f], stamp)
            }),
            Op::HIncr(f, by) => state.coll_write(stamp, Kind::Hash, |c, d| {
                c.incr_into(
                    d,
                    Kind::Hash,
                    &[b'f', *f],
                    stamp,
                    (i64::from(*by), 0.0, false),
                )
            }),
            Op::SAdd(m) => state.coll_write(stamp, Kind::Set, |c, d| c.sadd_into(d, stamp, &[*m])),
            Op::SRem(m) => state.coll_write(stamp, Kind::Set, |c, d| {
                c.remove_elem_into(d, Kind::Set, &[*m], stamp)
            }),
            Op::ZAdd(m, score) => state.coll_write(stamp, Kind::ZSet, |c, d| {
                c.zadd_into(d, stamp, &[b'z', *m], f64::from(*score))
            }),
            Op::ZIncr(m, by) => state.coll_write(stamp, Kind::ZSet, |c, d| {
                c.incr_into(
                    d,
                    Kind::ZSet,
                    &[b'z', *m],
                    stamp,
                    (0, f64::from(*by) / 2.0, true),
                )
            }),
            Op::ZRem(m) => state.coll_write(stamp, Kind::ZSet, |c, d| {
                c.remove_elem_into(d, Kind::ZSet, &[b'z', *m], stamp)
            }),
            Op::Push(head, v) => state.coll_write(stamp, Kind::List, |c, d| {
                c.list_push_into(d, stamp, *head, &[b'0' + v])
            }),
            Op::Pop(head) => state.coll_write(stamp, Kind::List, |c, d| {
                let end = if *head {
                    c.list_iter().next()
                } else {
                    c.list_iter().next_back()
                };
                if let Some(p) = end.map(|(p, _)| p.clone()) {
                    c.list_remove_into(d, &p);
                }
            }),
            Op::LSet(i, v) => state.coll_write(stamp, Kind::List, |c, d| {
                let len = c.len(Kind::List).max(1);
                if let Some(p) = c.list_get(usize::from(*i) % len).map(|(p, _)| p.clone()) {
                    c.list_set_into(d, stamp, &p, &[b'0' + v]);
                }
            }),
            Op::LInsert(i, v) => state.coll_write(stamp, Kind::List, |c, d| {
                let at = usize::from(*i) % (c.len(Kind::List) + 1);
                let lo = at
                    .checked_sub(1)
                    .and_then(|j| c.list_get(j))
                    .map(|(p, _)| p.clone());
                let hi = c.list_get(at).map(|(p, _)| p.clone());
                c.list_insert_into(d, stamp, lo.as_ref(), hi.as_ref(), &[b'0' + v]);
            }),
            Op::LRem(v) => state.coll_write(stamp, Kind::List, |c, d| {
                let doomed: Vec<_> = c
                    .list_iter()
                    .filter(|(_, x)| *x == [b'0' + v])
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in &doomed {
                    c.list_remove_into(d, p);
                }
            }),
            Op::LTrim(start, len) => state.coll_write(stamp, Kind::List, |c, d| {
                let (start, len) = (usize::from(*start), usize::from(*len));
                let doomed: Vec<_> = c
                    .list_iter()
                    .enumerate()
                    .filter(|(i, _)| *i < start || *i >= start + len)
                    .map(|(_, (p, _))| p.clone())
                    .collect();
                for p in &doomed {
                    c.list_remove_into(d, p);
                }
            }),
        };
        let delta = Delta::Key {
            db: 0,
            key,
            state: delta_state,
        };
        self.apply(&delta, incr);
        history.log.push((delta, incr));
    }
}

/// A sorted set's index, however it was kept, orders exactly the members
/// present by their scores now.
fn assert_index_in_step(state: &KeyState) {
    let Some(c) = state.coll() else { return };
    let kept: Vec<(u64, Vec<u8>)> = c
        .zindex()
        .iter()
        .map(|e| (e.score.to_bits(), e.member.to_vec()))
        .collect();
    let mut fresh: Vec<(f64, Vec<u8>)> = c
        .zset
        .keys()
        .filter_map(|k| Some((c.score(k.bytes())? + 0.0, k.bytes().to_vec())))
        .collect();
    fresh.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let fresh: Vec<(u64, Vec<u8>)> = fresh.into_iter().map(|(s, m)| (s.to_bits(), m)).collect();
    assert_eq!(kept, fresh, "the score index left its members' scores");
}

/// A deterministic shuffle driven by proptest's seed.
fn shuffled(len: usize, mut seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    order
}

/// Runs `steps`, then delivers the whole log to every node twice, each time
/// in its own random order.
fn run(nodes: usize, steps: &[Step], seed: u64) -> (Vec<Replica>, History) {
    let mut replicas: Vec<Replica> = (0..nodes).map(Replica::new).collect();
    let mut history = History::default();
    for step in steps {
        match step {
            Step::Op { node, key, op } => replicas[*node].local(*key, op, &mut history),
            Step::Deliver { to, pick } if !history.log.is_empty() => {
                let (delta, incr) = &history.log[pick % history.log.len()];
                replicas[*to].apply(delta, *incr);
            }
            Step::Deliver { .. } | Step::Collect { .. } => {}
        }
    }
    for (i, r) in replicas.iter_mut().enumerate() {
        for round in 0..2u64 {
            for j in shuffled(history.log.len(), seed ^ (i as u64 * 31 + round + 1)) {
                let (delta, incr) = &history.log[j];
                r.apply(delta, *incr);
            }
        }
    }
    (replicas, history)
}

fn gc_steps(nodes: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0..nodes, 0u8..2, op(true, true))
                .prop_map(|(node, key, op)| Step::Op { node, key, op }),
            3 => (0..nodes, any::<usize>()).prop_map(|(to, pick)| Step::Deliver { to, pick }),
            1 => (0..nodes).prop_map(|node| Step::Collect { node }),
        ],
        1..80,
    )
}

/// Drops what `acked` lets this replica drop, as the keyspace does.
fn collect_at(r: &mut Replica, acked: Stamp) {
    r.keys.retain(|_, s| {
        if s.collectable(acked) {
            return false;
        }
        s.compact(acked);
        // The sweep compacts first and then asks (and a write's access
        // asks first): what either keeps, the other must keep too, or
        // nodes that collected at different moments hold different states.
        assert!(
            s.is_empty() || !s.collectable(acked),
            "a state compacted at {acked:?} became collectable: {s:?}"
        );
        !s.is_empty()
    });
}

/// Runs `steps` delivering each delta at most once per node (as replication
/// does), with GC at `Collect` steps when `collect`, then delivers the rest
/// and collects everywhere at a floor past everything.
///
/// A node collects only once it holds every delta made so far, at a floor
/// below every delta some node still lacks: the causal floor of
/// replication's GcView (every node applied what is below it, and this one
/// has every write made before those were applied).
fn run_with_gc(nodes: usize, steps: &[Step], seed: u64, collect: bool) -> Vec<Replica> {
    let mut replicas: Vec<Replica> = (0..nodes).map(Replica::new).collect();
    let mut history = History::default();
    let mut stamps: Vec<Stamp> = Vec::new();
    let mut delivered: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); nodes];
    for step in steps {
        match step {
            Step::Op { node, key, op } => {
                let before = history.log.len();
                replicas[*node].local(*key, op, &mut history);
                for i in before..history.log.len() {
                    delivered[*node].insert(i);
                    let r = &replicas[*node];
                    stamps.push(Stamp {
                        time: r.time,
                        node: r.node,
                    });
                }
            }
            Step::Deliver { to, pick } if !history.log.is_empty() => {
                // The next write of some origin that `to` lacks: replication
                // delivers each origin's writes in order. (In any order, a
                // write could land before its node's earlier one that made
                // the key persistent, and an expiry in between would see an
                // expiry field left under a tombstone that GC may or may
                // not have dropped yet: a different op, not a different
                // merge.)
                let origin = stamps[pick % history.log.len()].node;
                let next = (0..history.log.len())
                    .find(|&i| stamps[i].node == origin && !delivered[*to].contains(&i));
                if let Some(i) = next {
                    delivered[*to].insert(i);
                    let (delta, incr) = &history.log[i];
                    replicas[*to].apply(delta, *incr);
                }
            }
            Step::Collect { node } if collect && delivered[*node].len() == history.log.len() => {
                let lacking = (0..history.log.len())
                    .filter(|i| delivered.iter().any(|d| !d.contains(i)))
                    .map(|i| stamps[i])
                    .min();
                let acked = match lacking {
                    Some(s) if s.time == 0 => continue,
                    Some(s) => Stamp {
                        time: s.time - 1,
                        node: NodeId(u64::MAX),
                    },
                    None => stamps.iter().copied().max().unwrap_or(Stamp::ZERO),
                };
                collect_at(&mut replicas[*node], acked);
            }
            Step::Deliver { .. } | Step::Collect { .. } => {}
        }
    }
    for (i, r) in replicas.iter_mut().enumerate() {
        for j in shuffled(history.log.len(), seed ^ (i as u64 * 31 + 1)) {
            if delivered[i].insert(j) {
                let (delta, incr) = &history.log[j];
                r.apply(delta, *incr);
            }
        }
        collect_at(
            r,
            Stamp {
                time: u64::MAX,
                node: NodeId(u64::MAX),
            },
        );
    }
    replicas
}

fn assert_converged(replicas: &[Replica]) -> Result<(), TestCaseError> {
    for r in &replicas[1..] {
        prop_assert_eq!(&r.floor, &replicas[0].floor);
        prop_assert_eq!(&r.keys, &replicas[0].keys);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn every_node_converges(nodes in 2usize..12, steps in steps(11, true, true), seed in any::<u64>()) {
        let steps: Vec<Step> = steps.into_iter().map(|s| match s {
            Step::Op { node, key, op } => Step::Op { node: node % nodes, key, op },
            Step::Deliver { to, pick } => Step::Deliver { to: to % nodes, pick },
            Step::Collect { node } => Step::Collect { node: node % nodes },
        }).collect();
        let (replicas, history) = run(nodes, &steps, seed);
        assert_converged(&replicas)?;
        // The direct encoder lays out every state and delta as postcard does.
        let deltas = history.log.iter().filter_map(|(d, _)| match d {
            Delta::Key { state, .. } => Some(state),
            Delta::Flush { .. } => None,
        });
        for state in replicas.iter().flat_map(|r| r.keys.values()).chain(deltas) {
            // The in-place write's one-pass test reads as its two parts.
            for kind in Kind::ALL {
                prop_assert_eq!(
                    state.shows_only(kind, 0),
                    state.key_type(0) == Some(KeyType::Coll(kind)) && !state.has_hidden_parts()
                );
            }
            let mut direct = vec![chorus_crdt::codec::FORMAT_VERSION];
            chorus_crdt::codec::append_state(&mut direct, state).expect("encodes");
            let encoded = chorus_crdt::encode(state).expect("encodes");
            prop_assert_eq!(&direct, &encoded);
            // A digest reads the direct encoder's bytes: the same digest.
            prop_assert_eq!(
                chorus_crdt::digest::key_digest(b"k", state, &mut Vec::new()).expect("encodes"),
                chorus_crdt::digest::digest_of_encoded(b"k", &encoded)
            );
        }
        // A flush leaves nothing stamped before it.
        let floor = replicas[0].floor;
        for state in replicas[0].keys.values() {
            prop_assert!(state.reg.stamp.is_zero() || state.reg.stamp >= floor);
            if let Some(x) = &state.extras {
                prop_assert!(x.expiry.stamp.is_zero() || x.expiry.stamp >= floor);
                prop_assert!(x.counts.values().all(|t| t.epoch >= floor));
            }
        }
    }

    #[test]
    fn counters_and_registers_hold_what_history_says(steps in steps_with(3, false, false, false), seed in any::<u64>()) {
        let (replicas, history) = run(3, &steps, seed);
        assert_converged(&replicas)?;
        let keys: Vec<Vec<u8>> = (0u8..3).map(|k| vec![b'k', k]).collect();
        for key in keys {
            let state = replicas[0].keys.get(&key).cloned().unwrap_or_default();
            // The register holds the highest-stamped write.
            let winner = history.registers.get(&key)
                .and_then(|w| w.iter().max_by_key(|(s, _)| *s).cloned());
            prop_assert_eq!(state.reg.stamp, winner.as_ref().map_or(Stamp::ZERO, |w| w.0));
            let base = winner.and_then(|w| w.1);
            prop_assert_eq!(state.reg.value.as_deref(), base.as_deref());

            // The counter is the sum of increments that no reset observed.
            let mut surviving = 0i64;
            let mut any = false;
            for ((k, origin, n), by) in &history.incrs {
                let removed = history.removed.get(&(k.clone(), *origin)).copied().unwrap_or(0);
                if *k == key && *n > removed {
                    surviving += by;
                    any = true;
                }
            }
            let expected = match (&base, any) {
                (None, false) => Read::Absent,
                (None, true) => Read::Int(surviving),
                (Some(v), false) => Read::Str(v),
                (Some(v), true) => Read::Int(
                    std::str::from_utf8(v).unwrap().parse::<i64>().unwrap() + surviving,
                ),
            };
            prop_assert_eq!(state.read(0), expected);
        }
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent(
        steps in steps(3, false, true), seed in any::<u64>(), picks in prop::array::uniform3(any::<usize>()),
    ) {
        // The pool: every delta of one key, and every node's final state of it.
        let (replicas, history) = run(3, &steps, seed);
        let key = vec![b'k', 0];
        let mut pool: Vec<KeyState> = history.log.iter().filter_map(|(d, _)| match d {
            Delta::Key { key: k, state, .. } if *k == key => Some(state.clone()),
            _ => None,
        }).collect();
        pool.extend(replicas.iter().filter_map(|r| r.keys.get(&key).cloned()));
        prop_assume!(!pool.is_empty());
        let [a, b, c] = picks.map(|p| pool[p % pool.len()].clone());
        let join = |x: &KeyState, y: &KeyState| { let mut z = x.clone(); z.merge(y); z };

        prop_assert_eq!(join(&a, &b), join(&b, &a));
        prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
        prop_assert_eq!(join(&a, &a), a.clone());
        let ab = join(&a, &b);
        prop_assert_eq!(join(&ab, &b), ab);
    }

    #[test]
    fn conflicts_are_reported_exactly_when_neither_write_saw_the_other(
        ta in 1u64..100, tb in 1u64..100, b_saw_a in any::<bool>(),
        a_deletes in any::<bool>(), b_deletes in any::<bool>(),
    ) {
        let (a_node, b_node) = (NodeId(1), NodeId(2));
        let empty = KeyState::default();
        let a_write = empty.write(Stamp { time: ta, node: a_node }, (!a_deletes).then_some(&b"a"[..]), 0);
        let mut a = empty.clone();
        a.merge(&a_write);
        let mut b = empty.clone();
        let mut tb = tb;
        if b_saw_a {
            b.merge(&a_write);
            tb = tb.max(ta + 1); // the HLC moved past what it saw
        }
        let b_write = b.write(Stamp { time: tb, node: b_node }, (!b_deletes).then_some(&b"b"[..]), 0);
        b.merge(&b_write);
        let at_a = a.merge(&b_write);
        let at_b = b.merge(&a_write);
        prop_assert_eq!(&a, &b);
        let both_deletes = a_deletes && b_deletes;
        let expected = if b_saw_a || both_deletes { 0 } else { 1 };
        prop_assert_eq!(at_a.len(), expected);
        prop_assert_eq!(at_b.len(), if b_saw_a { 0 } else { expected });
        if expected == 1 {
            // On equal times the higher node id (B) wins.
            let winner = if tb >= ta { b_node } else { a_node };
            prop_assert_eq!(at_a[0].winner.origin, winner);
        }
    }

    #[test]
    fn in_place_increment_equals_merging_its_delta(
        steps in steps(3, false, true), seed in any::<u64>(), node in 1u64..4, by in any::<i8>(), is_float in any::<bool>(),
    ) {
        let (replicas, _) = run(3, &steps, seed);
        for r in &replicas {
            for state in r.keys.values() {
                let stamp = Stamp { time: r.time + 1, node: NodeId(node) };
                let (int, float) = if is_float { (0, f64::from(by) / 4.0) } else { (i64::from(by), 0.0) };
                // In place is for keys that exist; creating one persists it.
                if state.exists(0) {
                    let mut merged = state.clone();
                    merged.merge(&state.incr(stamp, int, float, is_float));
                    let mut in_place = state.clone();
                    let tally = in_place.incr_in_place(stamp, int, float, is_float);
                    prop_assert_eq!(&in_place, &merged);
                    prop_assert_eq!(KeyState::tally_delta(NodeId(node), tally), state.incr(stamp, int, float, is_float));
                } else {
                    let mut created = state.clone();
                    created.merge(&state.incr(stamp, int, float, is_float));
                    prop_assert_eq!(created.expire_at_ms(), 0);
                }
                // A register write in place equals merging its delta.
                for value in [Some(&b"7"[..]), Some(b"a-longer-value"), None] {
                    let mut merged = state.clone();
                    merged.merge_owned(state.write(stamp, value, 99));
                    let mut in_place = state.clone();
                    let is_delta = in_place.write_in_place(stamp, value, 99);
                    prop_assert_eq!(&in_place, &merged);
                    // When it says so, the written state is the write's delta.
                    if is_delta {
                        prop_assert_eq!(&in_place, &state.write(stamp, value, 99));
                    }
                    // The keyspace's fast path relies on this case.
                    if stamp > state.reg.stamp && state.extras.is_none() && state.coll.is_none() {
                        prop_assert!(is_delta);
                    }
                    let old = Stamp { time: 0, node: NodeId(node) };
                    let mut merged = state.clone();
                    merged.merge_owned(state.write(old, value, 99));
                    let mut in_place = state.clone();
                    in_place.write_in_place(old, value, 99);
                    prop_assert_eq!(&in_place, &merged);
                }
                // The collection ops made in place equal merging their
                // deltas, and their deltas bring a replica the same state.
                for kind in [Kind::Hash, Kind::Set, Kind::ZSet] {
                    if state.key_type(0) != Some(KeyType::Coll(kind)) || state.has_hidden_parts() {
                        continue;
                    }
                    for elem in [&b"f0"[..], b"\x01", b"z\x01", b"new"] {
                        let general = state.coll_write(stamp, kind, |c, d| match kind {
                            Kind::Hash => c.hset_into(d, stamp, elem, b"v"),
                            Kind::ZSet => c.zadd_into(d, stamp, elem, 1.5),
                            Kind::Set => c.sadd_into(d, stamp, elem),
                            Kind::List => unreachable!("not in this loop"),
                        });
                        let mut merged = state.clone();
                        merged.merge(&general);
                        let mut in_place = state.clone();
                        let mut delta = Coll::delta(stamp, kind);
                        let coll = in_place.coll.as_mut().unwrap();
                        coll.zindex();
                        let done = match kind {
                            Kind::Hash => coll.hset_here(stamp, elem, b"v", Some(&mut delta)).is_some(),
                            Kind::ZSet => coll.zadd_here(stamp, elem, 1.5, Some(&mut delta)).is_some(),
                            Kind::Set => { coll.sadd_here(stamp, elem, Some(&mut delta)); true }
                            Kind::List => unreachable!("not in this loop"),
                        };
                        assert_index_in_step(&in_place);
                        if !done {
                            prop_assert_eq!(&in_place, state, "a declined op changes nothing");
                            continue;
                        }
                        prop_assert_eq!(&in_place, &merged);
                        let mut replica = state.clone();
                        replica.merge(&KeyState {
                            reg: Default::default(),
                            extras: None,
                            coll: Some(Box::new(delta)),
                        });
                        prop_assert_eq!(&replica, &merged);
                    }
                    if kind == Kind::ZSet {
                        for member in [&b"z\x01"[..], b"new"] {
                            let by = (0, f64::from(by) / 2.0, true);
                            let general = state.coll_write(stamp, kind, |c, d| c.incr_into(d, kind, member, stamp, by));
                            let mut merged = state.clone();
                            merged.merge(&general);
                            let mut in_place = state.clone();
                            let mut delta = Coll::delta(stamp, kind);
                            let coll = in_place.coll.as_mut().unwrap();
                            coll.zindex();
                            coll.incr_here(kind, member, stamp, by, Some(&mut delta));
                            assert_index_in_step(&in_place);
                            prop_assert_eq!(&in_place, &merged);
                            // ZINCRBY's one-walk path: the same state, delta
                            // and index; a refusal changes nothing.
                            let mut one_walk = state.clone();
                            let mut delta2 = Coll::delta(stamp, kind);
                            let c = one_walk.coll.as_mut().unwrap();
                            c.zindex();
                            let score = c.zincr_here(stamp, member, by.1, |_, _| Ok::<(), ()>(()), Some(&mut delta2));
                            prop_assert_eq!(Ok(c.score(member).unwrap()), score);
                            assert_index_in_step(&one_walk);
                            prop_assert_eq!(&one_walk, &merged);
                            prop_assert_eq!(&delta2, &delta);
                            let mut refused = state.clone();
                            let c = refused.coll.as_mut().unwrap();
                            prop_assert_eq!(c.zincr_here(stamp, member, by.1, |_, _| Err(()), None::<&mut chorus_crdt::Coll>), Err(()));
                            prop_assert_eq!(&refused, state);
                            let mut replica = state.clone();
                            replica.merge(&KeyState {
                                reg: Default::default(),
                                extras: None,
                            coll: Some(Box::new(delta)),
                            });
                            prop_assert_eq!(&replica, &merged);
                        }
                    }
                    if kind == Kind::Hash {
                        for field in [&b"f0"[..], b"new"] {
                            let by = (i64::from(by), 0.0, false);
                            let general = state.coll_write(stamp, kind, |c, d| c.incr_into(d, kind, field, stamp, by));
                            let mut merged = state.clone();
                            merged.merge(&general);
                            let mut in_place = state.clone();
                            let mut delta = Coll::delta(stamp, kind);
                            let coll = in_place.coll.as_mut().unwrap();
                            coll.incr_here(kind, field, stamp, by, Some(&mut delta));
                            prop_assert_eq!(&in_place, &merged);
                            // HINCRBY's one-walk path: the same state and
                            // delta; declining changes nothing.
                            let mut one_walk = state.clone();
                            let mut delta2 = Coll::delta(stamp, kind);
                            let c = one_walk.coll.as_mut().unwrap();
                            prop_assert_eq!(c.hincr_here(stamp, field, by, |_| Some(()), Some(&mut delta2)), Some(()));
                            prop_assert_eq!(&one_walk, &merged);
                            prop_assert_eq!(&delta2, &delta);
                            let mut declined = state.clone();
                            let c = declined.coll.as_mut().unwrap();
                            prop_assert_eq!(c.hincr_here(stamp, field, by, |_| None::<()>, None::<&mut chorus_crdt::Coll>), None);
                            prop_assert_eq!(&declined, state);
                            let mut replica = state.clone();
                            replica.merge(&KeyState {
                                reg: Default::default(),
                                extras: None,
                            coll: Some(Box::new(delta)),
                            });
                            prop_assert_eq!(&replica, &merged);
                        }
                    }
                }
                // A push or pop in place equals merging its delta.
                if state.key_type(0) == Some(KeyType::Coll(Kind::List)) && !state.has_hidden_parts() {
                    for head in [true, false] {
                        let general = state.coll_write(stamp, Kind::List, |c, d| {
                            c.list_push_into(d, stamp, head, b"pushed")
                        });
                        let mut merged = state.clone();
                        merged.merge(&general);
                        let mut in_place = state.clone();
                        let mut delta = Coll::delta(stamp, Kind::List);
                        let coll = in_place.coll.as_mut().unwrap();
                        coll.list_push_here(stamp, head, b"pushed", Some(&mut delta));
                        prop_assert_eq!(&in_place, &merged);
                        let mut replica = state.clone();
                        replica.merge(&KeyState {
                            reg: Default::default(),
                            extras: None,
                            coll: Some(Box::new(delta)),
                        });
                        prop_assert_eq!(&replica, &merged);

                        let general = state.coll_write(stamp, Kind::List, |c, d| {
                            let end = if head { c.list_iter().next() } else { c.list_iter().next_back() };
                            let p = end.map(|(p, _)| p.clone()).unwrap();
                            c.list_remove_into(d, &p);
                        });
                        let mut merged = state.clone();
                        merged.merge(&general);
                        let mut in_place = state.clone();
                        let mut delta = Coll::delta(stamp, Kind::List);
                        let coll = in_place.coll.as_mut().unwrap();
                        let expected = if head { state.coll().unwrap().list_iter().next() } else { state.coll().unwrap().list_iter().next_back() };
                        let popped = coll.list_pop_here(stamp, head, Some(&mut delta));
                        prop_assert_eq!(popped.as_ref().map(|b| &b.0[..]), expected.map(|(_, v)| v));
                        prop_assert_eq!(&in_place, &merged);
                        let mut replica = state.clone();
                        replica.merge(&KeyState {
                            reg: Default::default(),
                            extras: None,
                            coll: Some(Box::new(delta)),
                        });
                        prop_assert_eq!(&replica, &merged);
                    }
                }
                // Owned and borrowed merges agree too.
                let delta = state.write(stamp, Some(b"7"), 0);
                let mut owned = state.clone();
                owned.merge_owned(delta.clone());
                let mut borrowed = state.clone();
                borrowed.merge(&delta);
                prop_assert_eq!(owned, borrowed);
            }
        }
    }

    /// #11 item 9: state after merge does not depend on GC timing. The
    /// same ops and deliveries, with tombstone GC at random moments on
    /// random nodes or with none until the end, leave every node with the
    /// same keys, TTLs and counts.
    #[test]
    fn gc_at_any_causally_stable_moment_changes_nothing(nodes in 2usize..5, steps in gc_steps(4), seed in any::<u64>()) {
        let steps: Vec<Step> = steps.into_iter().map(|s| match s {
            Step::Op { node, key, op } => Step::Op { node: node % nodes, key, op },
            Step::Deliver { to, pick } => Step::Deliver { to: to % nodes, pick },
            Step::Collect { node } => Step::Collect { node: node % nodes },
        }).collect();
        let collected = run_with_gc(nodes, &steps, seed, true);
        let uncollected = run_with_gc(nodes, &steps, seed, false);
        assert_converged(&collected)?;
        assert_converged(&uncollected)?;
        // Bit for bit but the numbers of dots: a writer whose context GC
        // dropped starts a new run of them (each run replicates as chosen,
        // so nodes of one history still agree bit for bit, above).
        prop_assert_eq!(views(&collected[0]), views(&uncollected[0]));
    }
}

/// What a client can read of every key, and the parts of its state no
/// dot numbering touches.
fn views(r: &Replica) -> BTreeMap<Vec<u8>, String> {
    r.keys
        .iter()
        .map(|(k, s)| {
            let mut plain = s.clone();
            let coll = plain.coll.take();
            let coll = coll.map(|c| {
                let fields: Vec<_> = c
                    .fields()
                    .map(|(f, v)| (f.to_vec(), format!("{v:?}")))
                    .collect();
                let members: Vec<_> = c.members().map(<[u8]>::to_vec).collect();
                let scores: Vec<_> = c
                    .zindex()
                    .iter()
                    .map(|e| (e.member.to_vec(), e.score))
                    .collect();
                let list: Vec<_> = c.list_iter().map(|(_, v)| v.to_vec()).collect();
                (
                    c.at,
                    c.kind,
                    fields,
                    members,
                    scores,
                    list,
                    c.removed.clone(),
                )
            });
            (k.clone(), format!("{plain:?} {coll:?} {:?}", s.key_type(0)))
        })
        .collect()
}

/// One register write in the conflict model: its delta and everything its
/// node had merged, transitively, when it was made (its causal past).
struct ModelWrite {
    delta: KeyState,
    past: std::collections::BTreeSet<usize>,
}

/// Register writes of one key on a few nodes, with each node's causal
/// knowledge and, per write, the winners it was reported losing to.
struct ConflictModel {
    states: Vec<KeyState>,
    merged: Vec<std::collections::BTreeSet<usize>>,
    times: Vec<u64>,
    writes: Vec<ModelWrite>,
    lost_to: Vec<Vec<Stamp>>,
}

impl ConflictModel {
    fn new(nodes: usize) -> ConflictModel {
        ConflictModel {
            states: vec![KeyState::default(); nodes],
            merged: vec![Default::default(); nodes],
            times: vec![0; nodes],
            writes: Vec::new(),
            lost_to: Vec::new(),
        }
    }

    fn deliver(&mut self, to: usize, w: usize) {
        let delta = &self.writes[w].delta;
        self.times[to] = self.times[to].max(delta.reg.stamp.time);
        for c in self.states[to].merge(delta) {
            if let Some(l) = self
                .writes
                .iter()
                .position(|x| x.delta.reg.stamp == c.loser.stamp)
            {
                self.lost_to[l].push(c.winner.stamp);
            }
        }
        self.merged[to].insert(w);
        let past = self.writes[w].past.clone();
        self.merged[to].extend(past);
    }

    fn write(&mut self, node: usize, value: Option<u8>) {
        self.times[node] += 1;
        let stamp = Stamp {
            time: self.times[node],
            node: NodeId(node as u64 + 1),
        };
        let value = value.map(|v| vec![b'0' + v % 4]);
        let delta = self.states[node].write(stamp, value.as_deref(), 0);
        self.writes.push(ModelWrite {
            delta,
            past: self.merged[node].clone(),
        });
        self.lost_to.push(Vec::new());
        self.deliver(node, self.writes.len() - 1);
    }
}

/// Register writes on 2-5 nodes with arbitrary partial delivery, then full
/// delivery everywhere in random order.
fn conflict_run(nodes: usize, steps: &[(usize, Option<u8>, usize)], seed: u64) -> ConflictModel {
    let mut m = ConflictModel::new(nodes);
    for &(node, value, pick) in steps {
        let node = node % nodes;
        if pick % 3 == 0 && !m.writes.is_empty() {
            m.deliver(node, pick % m.writes.len());
        } else {
            m.write(node, value);
        }
    }
    for round in 0..2u64 {
        for to in 0..nodes {
            for w in shuffled(m.writes.len(), seed ^ (to as u64 + 1) ^ (round << 32)) {
                m.deliver(to, w);
            }
        }
    }
    m
}

proptest! {
    /// Every register write the final winner never saw, and no other write
    /// knowingly replaced, is reported lost to that winner somewhere
    /// (delete over delete aside): no silent loss, whatever the delivery.
    #[test]
    fn no_write_is_lost_without_a_conflict_report(
        nodes in 2usize..6,
        steps in prop::collection::vec((0usize..6, prop::option::of(0u8..4), any::<usize>()), 1..40),
        seed in any::<u64>(),
    ) {
        let ConflictModel { writes, lost_to, states, .. } = conflict_run(nodes, &steps, seed);
        prop_assume!(!writes.is_empty());
        for s in &states[1..] {
            prop_assert_eq!(s, &states[0]);
        }
        let last = (0..writes.len()).max_by_key(|&w| writes[w].delta.reg.stamp).unwrap();
        let winner = &writes[last].delta.reg;
        prop_assert_eq!(&states[0].reg, winner);
        for (l, w) in writes.iter().enumerate() {
            let replaced_knowingly = writes.iter().any(|x| x.past.contains(&l));
            let both_deletes = w.delta.reg.value.is_none() && winner.value.is_none();
            if l == last || replaced_knowingly || both_deletes || writes[last].past.contains(&l) {
                continue;
            }
            prop_assert!(
                lost_to[l].contains(&winner.stamp),
                "write {} ({:?}) lost silently to {:?}", l, w.delta.reg.stamp, winner.stamp
            );
        }
    }
}

/// One list op of the ordering test: on `node`, a push (`head` or tail)
/// or a pop, or a delivery of a random pending delta to `node`.
#[derive(Clone, Debug)]
enum ListStep {
    Push { node: usize, head: bool },
    Pop { node: usize, head: bool },
    Deliver { node: usize, pick: usize },
}

fn list_steps() -> impl Strategy<Value = Vec<ListStep>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0usize..3, any::<bool>()).prop_map(|(node, head)| ListStep::Push { node, head }),
            1 => (0usize..3, any::<bool>()).prop_map(|(node, head)| ListStep::Pop { node, head }),
            4 => (0usize..3, any::<usize>()).prop_map(|(node, pick)| ListStep::Deliver { node, pick }),
        ],
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Pushes and pops on three nodes, delivered in any order: every node
    /// ends with the same list; each node's own pushes keep the order it
    /// made them in (its RPUSHes in order, its LPUSHes reversed); every
    /// element pushed is there unless some node popped it, and an element
    /// two nodes popped concurrently is removed once.
    #[test]
    fn every_node_sees_one_list_order_that_keeps_each_nodes_pushes(steps in list_steps(), seed in any::<u64>()) {
        let mut states = vec![KeyState::default(); 3];
        let mut times = [0u64; 3];
        let mut log: Vec<KeyState> = Vec::new();
        let mut delivered: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); 3];
        let mut pushed: Vec<Vec<u8>> = Vec::new();
        let mut popped: std::collections::BTreeSet<Vec<u8>> = Default::default();
        let mut seq = 0u16;
        for step in &steps {
            match *step {
                ListStep::Push { node, head } | ListStep::Pop { node, head } => {
                    times[node] = times[node].max(states[node].latest_stamp().time) + 1;
                    let stamp = Stamp { time: times[node], node: NodeId(node as u64 + 1) };
                    let state = &states[node];
                    let delta = if matches!(step, ListStep::Push { .. }) {
                        seq += 1;
                        let value = [&[node as u8, u8::from(head)][..], &seq.to_be_bytes()].concat();
                        pushed.push(value.clone());
                        state.coll_write(stamp, Kind::List, |c, d| c.list_push_into(d, stamp, head, &value))
                    } else {
                        let Some(c) = state.coll() else { continue };
                        let end = if head { c.list_iter().next() } else { c.list_iter().next_back() };
                        let Some((_, v)) = end else { continue };
                        popped.insert(v.to_vec());
                        state.coll_write(stamp, Kind::List, |c, d| {
                            let end = if head { c.list_iter().next() } else { c.list_iter().next_back() };
                            let p = end.map(|(p, _)| p.clone()).unwrap();
                            c.list_remove_into(d, &p);
                        })
                    };
                    states[node].merge(&delta);
                    delivered[node].insert(log.len());
                    log.push(delta);
                }
                ListStep::Deliver { node, pick } => {
                    let pending: Vec<usize> = (0..log.len()).filter(|i| !delivered[node].contains(i)).collect();
                    if let Some(&i) = pending.get(pick % pending.len().max(1)) {
                        states[node].merge(&log[i]);
                        delivered[node].insert(i);
                    }
                }
            }
        }
        for (node, state) in states.iter_mut().enumerate() {
            for i in shuffled(log.len(), seed ^ node as u64) {
                state.merge(&log[i]);
            }
        }
        prop_assert_eq!(&states[1], &states[0]);
        prop_assert_eq!(&states[2], &states[0]);
        let list: Vec<Vec<u8>> = states[0]
            .coll()
            .map(|c| c.list_iter().map(|(_, v)| v.to_vec()).collect())
            .unwrap_or_default();
        let expected: std::collections::BTreeSet<Vec<u8>> =
            pushed.iter().filter(|v| !popped.contains(*v)).cloned().collect();
        let present: std::collections::BTreeSet<Vec<u8>> = list.iter().cloned().collect();
        prop_assert_eq!(present.len(), list.len(), "an element twice");
        prop_assert_eq!(present, expected);
        for node in 0..3u8 {
            for head in [0u8, 1] {
                let mine: Vec<&Vec<u8>> = list.iter().filter(|v| v[0] == node && v[1] == head).collect();
                let in_order = mine.windows(2).all(|w| if head == 1 { w[0][2..] > w[1][2..] } else { w[0][2..] < w[1][2..] });
                prop_assert!(in_order, "node {}'s pushes out of order: {:?}", node, mine);
            }
        }
    }
}
