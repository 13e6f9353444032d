//! The checkers. They read only the recorded history and the nodes' final
//! states: convergence (every node holds the same state), counters (each
//! equals the surviving increments no reset removed), registers (each holds
//! its highest-stamped surviving write), conflicts (recorded where writes
//! were concurrent).
//!
//! Which writes *survive* needs almost no guessing: each origin's writes
//! apply in sequence order everywhere, so after convergence the writes of
//! origin `o` that survive are those numbered up to the converged version
//! vector's entry for `o`. Writes of a node that crashed before passing
//! them on or storing them are gone with it; what its store held must
//! survive (the durability check). One exception: a state transfer carries
//! keys as they are when scanned, so when its sender goes for good mid-way
//! (a crash in memory, a removed member) the receiver can hold some of the
//! gone life's later writes that no vector counts, and repair spreads them
//! to every node. For a life that is gone, then, each key may hold any
//! prefix of its uncounted writes on that key (a key's state is scanned at
//! one moment), and the counter and register checks accept any such
//! prefix; every other origin is held to its vector exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chorus_crdt::{KeyState, NodeId, Stamp};

use crate::cluster::{self, Registry};
use crate::faults::FaultKind;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// liveness, divergence, counter, register, conflict, durability or crash.
    pub kind: &'static str,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum WriteKind {
    Set(String),
    Del,
    Incr(i64),
    Flush,
    /// An SADD of its member (key `e:set:member`): a new dot even when the
    /// member was there, which a concurrent SREM does not remove.
    Add,
    /// An SREM that removed its member (key `e:set:member`).
    Remove,
}

/// One acknowledged write, as the node that took it numbered and stamped it.
#[derive(Debug, Clone)]
pub struct Write {
    pub origin: NodeId,
    pub seq: u64,
    pub key: String,
    pub kind: WriteKind,
    /// The register write's stamp when it won at its origin (a flush's
    /// stamp for a flush); `None` when a write stamped further ahead had
    /// already arrived there.
    pub stamp: Option<Stamp>,
    /// For an increment: the segment of its node's tally it went into.
    pub epoch: Option<Stamp>,
    /// What its node had applied when it was made (its own writes included).
    pub observed: BTreeMap<NodeId, u64>,
    /// The stamp of the register write it replaced on its node, if any.
    pub replaced: Option<Stamp>,
}

#[derive(Debug, Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub flushes: usize,
}

/// One node's state at the end, with what GC drops left out (its
/// collection is timed by each node).
struct View {
    slot: usize,
    /// The node's current life.
    node: NodeId,
    /// Applied per origin, its own writes included.
    vv: BTreeMap<NodeId, u64>,
    keys: Vec<(u32, Vec<u8>, KeyState)>,
    floors: Vec<Stamp>,
    conflict_keys: BTreeSet<Vec<u8>>,
    /// State transfers and relayed writes this node sent.
    transfers: u64,
    relayed: u64,
}

pub struct Snapshot {
    views: Vec<View>,
    down: Vec<usize>,
}

impl Snapshot {
    pub fn take(reg: &Registry, nodes: usize) -> Snapshot {
        let mut views = Vec::new();
        let mut down = Vec::new();
        for slot in 0..nodes {
            let Some((shared, node)) = cluster::node(reg, slot) else {
                down.push(slot);
                continue;
            };
            let repl = shared.repl.as_ref().expect("sim nodes replicate");
            let mut vv: BTreeMap<NodeId, u64> = repl.applied_vv().into_iter().collect();
            vv.insert(node, repl.head_seq());
            vv.retain(|_, s| *s > 0);
            let (mut keys, floors) = shared.ks.dump();
            // What GC drops (tombstones, and the dead weight `compact` takes
            // from kept keys) goes when each node's own floor passes it.
            let beyond_all = Stamp {
                time: u64::MAX,
                node: NodeId(u64::MAX),
            };
            keys.retain_mut(|(_, _, s)| {
                s.compact(beyond_all);
                !s.collectable(beyond_all)
            });
            let conflict_keys = shared
                .ks
                .conflicts
                .all()
                .into_iter()
                .map(|c| c.key)
                .collect();
            let peers = repl.peers.lock().clone();
            let count =
                |f: fn(&chorus::replication::PeerInfo) -> u64| peers.iter().map(|p| f(p)).sum();
            views.push(View {
                slot,
                node,
                vv,
                keys,
                floors,
                conflict_keys,
                transfers: count(|p| p.state_transfers.load(std::sync::atomic::Ordering::Relaxed)),
                relayed: count(|p| p.relayed.load(std::sync::atomic::Ordering::Relaxed)),
            });
        }
        Snapshot { views, down }
    }

    /// Whether every node is up and holds the same state, having applied
    /// the same writes; otherwise what differs first.
    pub fn converged(&self) -> Result<(), String> {
        if let Some(slot) = self.down.first() {
            return Err(format!("n{slot} is not up"));
        }
        let Some(first) = self.views.first() else {
            return Err("no node is up".into());
        };
        for v in &self.views[1..] {
            if v.vv != first.vv {
                return Err(format!(
                    "applied writes differ: n{} {:?} vs n{} {:?}",
                    first.slot, first.vv, v.slot, v.vv
                ));
            }
            if v.floors != first.floors {
                return Err(format!(
                    "flush floors differ: n{} {:?} vs n{} {:?}",
                    first.slot, first.floors, v.slot, v.floors
                ));
            }
        }
        if let Some(key) = self.first_divergent_key() {
            let mut detail = format!("first divergent key {:?}:", String::from_utf8_lossy(&key.1));
            for v in &self.views {
                let state = v.keys.iter().find(|(db, k, _)| (*db, k) == (key.0, &key.1));
                let _ = write!(detail, "\n    n{}: {:?}", v.slot, state.map(|s| &s.2));
            }
            return Err(detail);
        }
        Ok(())
    }

    fn first_divergent_key(&self) -> Option<(u32, Vec<u8>)> {
        let mut all: BTreeSet<(u32, Vec<u8>)> = BTreeSet::new();
        for v in &self.views {
            all.extend(v.keys.iter().map(|(db, k, _)| (*db, k.clone())));
        }
        all.into_iter().find(|(db, key)| {
            let states: Vec<Option<&KeyState>> = self
                .views
                .iter()
                .map(|v| {
                    v.keys
                        .iter()
                        .find(|(d, k, _)| d == db && k == key)
                        .map(|s| &s.2)
                })
                .collect();
            states.windows(2).any(|w| w[0] != w[1])
        })
    }

    /// One line per node: a digest of its whole state.
    pub fn digests(&self) -> Vec<String> {
        self.views
            .iter()
            .map(|v| {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for (db, key, state) in &v.keys {
                    let bytes = chorus_crdt::encode(&(db, key, state)).unwrap_or_default();
                    for b in bytes {
                        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
                    }
                }
                format!(
                    "digest n{} {h:016x} keys={} transfers={} relayed={} conflicts={:?}",
                    v.slot,
                    v.keys.len(),
                    v.transfers,
                    v.relayed,
                    v.conflict_keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect::<Vec<_>>()
                )
            })
            .collect()
    }
}

/// The value GET returns on `slot`: `None` for nil.
fn get(reg: &Registry, slot: usize, key: &str) -> Result<Option<String>, Failure> {
    // A counter field's pseudo-key "f:hash:field" reads with HGET.
    let reply = match key.strip_prefix("f:").and_then(|k| k.split_once(':')) {
        Some((hash, field)) => {
            cluster::command(reg, slot, &[b"HGET", hash.as_bytes(), field.as_bytes()])
        }
        None => match key.strip_prefix("g:").and_then(|k| k.split_once(':')) {
            // A counter member's "g:zset:member" reads with ZSCORE.
            Some((zset, member)) => {
                cluster::command(reg, slot, &[b"ZSCORE", zset.as_bytes(), member.as_bytes()])
            }
            None => cluster::command(reg, slot, &[b"GET", key.as_bytes()]),
        },
    }
    .ok_or_else(|| Failure::new("liveness", format!("n{slot} went down while checking")))?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    if text.starts_with("$-1") {
        return Ok(None);
    }
    match text.split("\r\n").nth(1) {
        Some(v) if text.starts_with('$') => Ok(Some(v.to_string())),
        _ => Err(Failure::new(
            "register",
            format!("GET {key} on n{slot} replied {text:?}"),
        )),
    }
}

/// Durability, counters, registers and conflicts against the history.
///
/// How much of a run the checkers could check.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    /// Keys whose value could not be checked: more combinations of open
    /// writes than the checker tries, or a winner that cannot be named (a
    /// write that lost at once to one stamped ahead).
    pub unchecked_keys: usize,
    /// Set members the `removed` checker required gone on every node.
    pub removals_checked: usize,
}

/// Durability, counters, registers and conflicts against the history;
/// `coverage` counts what could and could not be checked.
pub fn invariants(
    reg: &Registry,
    snap: &Snapshot,
    history: &History,
    chosen: &[FaultKind],
    coverage: &mut Coverage,
) -> Option<Failure> {
    check_all(reg, snap, history, chosen, coverage).err()
}

fn check_all(
    reg: &Registry,
    snap: &Snapshot,
    history: &History,
    chosen: &[FaultKind],
    coverage: &mut Coverage,
) -> Result<(), Failure> {
    let unchecked = &mut coverage.unchecked_keys;
    lists(snap)?;
    let vv = &snap.views[0].vv;
    // Causality beats clocks (DESIGN.md, Replication): a write is stamped
    // after everything its node had merged into what it replaces, so it
    // never loses on the spot to a peer's write or flush stamped by a faster
    // clock. One that did was acknowledged and then gone.
    for w in &history.writes {
        let lost_at_once = match w.kind {
            WriteKind::Set(_) | WriteKind::Del => w.stamp.is_none(),
            WriteKind::Incr(_) => w.epoch.is_none(),
            WriteKind::Flush | WriteKind::Add | WriteKind::Remove => false,
        };
        if lost_at_once {
            return Err(Failure::new(
                "vanished",
                format!(
                    "{:?} of {} by {} (seq {}) lost on its own node as it was made, to state \
                     merged from a peer's faster clock",
                    w.kind, w.key, w.origin, w.seq
                ),
            ));
        }
    }
    // What a crashed node's store held must not be lost with it.
    for slot in reg.borrow().iter() {
        for &(life, kept) in &slot.crashed {
            let have = vv.get(&life).copied().unwrap_or(0);
            if have < kept {
                return Err(Failure::new(
                    "durability",
                    format!(
                        "{} (life {life:?}) crashed with its writes up to #{kept} stored; \
                         the cluster kept them only up to #{have}",
                        slot.name
                    ),
                ));
            }
        }
    }
    let have = |o: &NodeId| vv.get(o).copied().unwrap_or(0);
    let alive: BTreeSet<NodeId> = snap.views.iter().map(|v| v.node).collect();
    // Numbered past the converged vector by a life that is gone: part of a
    // state transfer it was sending when it went (module doc).
    let uncertain = |w: &Write| w.seq > have(&w.origin) && !alive.contains(&w.origin);
    let surviving: Vec<&Write> = history
        .writes
        .iter()
        .filter(|w| w.seq <= have(&w.origin))
        .collect();
    let is_flush = |w: &Write| matches!(w.kind, WriteKind::Flush);
    let counted_floor = surviving
        .iter()
        .filter(|w| is_flush(w))
        .filter_map(|w| w.stamp)
        .max();
    // The floor the nodes hold: every counted flush, or a later one of a
    // gone life that reached them uncounted.
    let held_floor = snap.views[0]
        .floors
        .first()
        .copied()
        .filter(|f| !f.is_zero());
    let floor_explained = held_floor == counted_floor
        || held_floor.is_some_and(|f| {
            counted_floor.is_none_or(|c| f > c)
                && history
                    .writes
                    .iter()
                    .any(|w| is_flush(w) && uncertain(w) && w.stamp == Some(f))
        });
    if !floor_explained {
        return Err(Failure::new(
            "flush",
            format!(
                "the flush floor is {held_floor:?}; the counted flushes reach {counted_floor:?}"
            ),
        ));
    }
    let flush_floor = held_floor;
    let slots: Vec<usize> = snap.views.iter().map(|v| v.slot).collect();
    // Equal states must read alike: a sorted set's order comes from an
    // index each node derives and keeps for itself, which no digest sees.
    for key in ["z0", "z1", "z2", "zc0", "zc1"] {
        let mut first: Option<(usize, Vec<u8>)> = None;
        for &slot in &slots {
            let argv: [&[u8]; 5] = [b"ZRANGE", key.as_bytes(), b"0", b"-1", b"WITHSCORES"];
            let Some(reply) = cluster::command(reg, slot, &argv) else {
                return Err(Failure::new(
                    "liveness",
                    format!("n{slot} went down while checking"),
                ));
            };
            match &first {
                None => first = Some((slot, reply)),
                Some((s0, r0)) if *r0 != reply => {
                    return Err(Failure::new(
                        "order",
                        format!(
                            "ZRANGE {key} 0 -1 WITHSCORES: n{s0} {:?}, n{slot} {:?}",
                            String::from_utf8_lossy(r0),
                            String::from_utf8_lossy(&reply)
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    coverage.removals_checked += removals(
        reg,
        &slots,
        &history.writes,
        |w| w.seq <= have(&w.origin),
        uncertain,
    )?;
    let pasts = causal_pasts(&history.writes);

    let mut by_key: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for w in &surviving {
        by_key.entry(w.key.as_str()).or_default().push(w);
    }
    // Per key, per gone life, its uncounted writes in order: of those, a
    // prefix survives (a transfer carries a key's state as of one moment).
    let mut unsure: BTreeMap<&str, BTreeMap<NodeId, Vec<&Write>>> = BTreeMap::new();
    for w in history
        .writes
        .iter()
        .filter(|w| uncertain(w) && !is_flush(w))
    {
        by_key.entry(w.key.as_str()).or_default();
        unsure
            .entry(w.key.as_str())
            .or_default()
            .entry(w.origin)
            .or_default()
            .push(w);
    }
    for (key, writes) in &by_key {
        // Counters: keys "c*", counter fields "f:hash:field" and counter
        // members "g:zset:member".
        let is_counter = key.starts_with('c') || key.starts_with("f:") || key.starts_with("g:");
        let is_register = key.starts_with('r');
        if !is_counter && !is_register {
            continue;
        }
        let Some(candidates) = survivor_sets(writes, unsure.get(key)) else {
            *unchecked += 1;
            continue;
        };
        let expected: Vec<Option<String>> = if is_counter {
            candidates
                .iter()
                .map(|ws| Some(counter_expected(ws, flush_floor).to_string()))
                .collect()
        } else {
            let mut e = Vec::new();
            for ws in &candidates {
                match register_expected(ws, flush_floor) {
                    Some(v) => e.push(v),
                    // A winner that cannot be named for sure.
                    None => {
                        e.clear();
                        break;
                    }
                }
            }
            if e.is_empty() {
                *unchecked += 1;
                continue;
            }
            e
        };
        for &slot in &slots {
            let got = get(reg, slot, key)?;
            let got = if is_counter {
                Some(got.unwrap_or_else(|| "0".into()))
            } else {
                got
            };
            if !expected.contains(&got) {
                let kind = if is_counter { "counter" } else { "register" };
                let what = if is_counter {
                    "the surviving increments no reset removed"
                } else {
                    "its highest-stamped surviving write"
                };
                let winner = (!is_counter)
                    .then(|| writes.iter().max_by_key(|w| w.stamp))
                    .flatten()
                    .map(|w| format!("; write {:?} by {} seq {}", w.kind, w.origin, w.seq))
                    .unwrap_or_default();
                return Err(Failure::new(
                    kind,
                    format!(
                        "{key} on n{slot} is {got:?}, expected {} ({what}{winner})",
                        expected
                            .iter()
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .take(4)
                            .map(|e| format!("{e:?}"))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                ));
            }
        }
        if !is_register || unsure.contains_key(key) {
            continue;
        }
        // Concurrent writes (neither saw the other) must leave a conflict
        // record. A crash can take a node's log with it, so only without
        // (a member removed is down while out, a node restored from a copy
        // goes down for it).
        if chosen.contains(&FaultKind::Crash)
            || chosen.contains(&FaultKind::Remove)
            || chosen.contains(&FaultKind::Restore)
        {
            continue;
        }
        // Or replaced it where it was made: a write that came in a state
        // transfer is in no vector until the transfer ends.
        let saw = |a: &Write, b: &Write| {
            pasts[&(a.origin, a.seq)]
                .get(&b.origin)
                .copied()
                .unwrap_or(0)
                >= b.seq
                || (b.stamp.is_some() && a.replaced == b.stamp)
        };
        // A flush removes older writes without reporting them (it does not
        // know what it saw): only writes after the last flush can conflict.
        let live: Vec<&&Write> = writes
            .iter()
            .filter(|w| flush_floor.is_none_or(|f| w.stamp > Some(f)))
            .collect();
        // A write is lost silently when the final winner had not seen it and
        // no other write knowingly replaced it (had one, that write's own
        // fate decides). Two deletes lose nothing.
        let Some(last) = live.iter().max_by_key(|w| w.stamp) else {
            continue;
        };
        let is_del = |w: &Write| matches!(w.kind, WriteKind::Del);
        let unseen = live.iter().find(|l| {
            let l: &Write = l;
            let replaced_knowingly = live.iter().any(|w| {
                let w: &Write = w;
                !std::ptr::eq(w, l) && (w.origin == l.origin && w.seq > l.seq || saw(w, l))
            });
            let harmless = std::ptr::eq(l, **last)
                || (is_del(l) && is_del(last))
                || replaced_knowingly
                || saw(last, l);
            !harmless
        });
        let concurrent = unseen.map(|l| (last, l));
        let recorded = snap
            .views
            .iter()
            .any(|v| v.conflict_keys.contains(key.as_bytes()));
        if let (Some((a, b)), false) = (concurrent, recorded) {
            return Err(Failure::new(
                "conflict",
                format!(
                    "{key}: concurrent writes but no node recorded a conflict: {:?} by {} seq {}, {:?} by {} seq {}",
                    a.kind, a.origin, a.seq, b.kind, b.origin, b.seq
                ),
            ));
        }
    }
    Ok(())
}

/// The sets of writes on one key that may have survived: the counted ones,
/// plus for each gone life a prefix of its uncounted ones. `None` when
/// there are too many combinations to try.
fn survivor_sets<'a>(
    counted: &[&'a Write],
    unsure: Option<&BTreeMap<NodeId, Vec<&'a Write>>>,
) -> Option<Vec<Vec<&'a Write>>> {
    let lists: Vec<&Vec<&Write>> = unsure.map(|u| u.values().collect()).unwrap_or_default();
    let combos = lists
        .iter()
        .try_fold(1usize, |n, l| n.checked_mul(l.len() + 1))
        .filter(|n| *n <= 4096)?;
    let mut sets = Vec::with_capacity(combos);
    for mut c in 0..combos {
        let mut ws: Vec<&Write> = counted.to_vec();
        for l in &lists {
            let take = c % (l.len() + 1);
            c /= l.len() + 1;
            ws.extend(l.iter().take(take));
        }
        sets.push(ws);
    }
    Some(sets)
}

/// A counter's value from its surviving writes: per origin, the increments
/// of its tally's last segment, unless a flush removed that segment (see
/// docs/crdt-semantics.md).
fn counter_expected(writes: &[&Write], flush_floor: Option<Stamp>) -> i64 {
    let mut per_origin: BTreeMap<NodeId, Vec<&Write>> = BTreeMap::new();
    for w in writes {
        per_origin.entry(w.origin).or_default().push(w);
    }
    let mut expected: i64 = 0;
    for incs in per_origin.values() {
        let Some(last) = incs.iter().max_by_key(|w| w.seq) else {
            continue;
        };
        // No tally right after the increment: a flush stamped ahead of
        // this node's clock (skew beyond the drift limit) pruned it.
        let Some(epoch) = last.epoch else {
            continue;
        };
        if flush_floor.is_some_and(|f| epoch < f) {
            continue;
        }
        expected += incs
            .iter()
            .filter(|w| w.epoch == Some(epoch))
            .map(|w| match w.kind {
                WriteKind::Incr(by) => by,
                _ => 0,
            })
            .sum::<i64>();
    }
    expected
}

/// A register's value from its surviving writes: the highest-stamped one
/// decides. `None` when a write lost at once to one stamped ahead (its own
/// stamp is unknown, so the winner cannot be named for sure).
fn register_expected(writes: &[&Write], flush_floor: Option<Stamp>) -> Option<Option<String>> {
    if writes.iter().any(|w| w.stamp.is_none()) {
        return None;
    }
    let Some(winner) = writes.iter().max_by_key(|w| w.stamp) else {
        return Some(None);
    };
    Some(match &winner.kind {
        _ if flush_floor.is_some_and(|f| winner.stamp < Some(f)) => None,
        WriteKind::Set(v) => Some(v.clone()),
        _ => None,
    })
}

/// Each write's causal past as a version vector: what its node had applied,
/// and transitively what those writes had seen (a write can arrive after one
/// that was made on top of it: per origin delivery is ordered, across
/// origins it is not).
fn causal_pasts(writes: &[Write]) -> BTreeMap<(NodeId, u64), BTreeMap<NodeId, u64>> {
    let mut by_origin: BTreeMap<NodeId, Vec<&Write>> = BTreeMap::new();
    for w in writes {
        by_origin.entry(w.origin).or_default().push(w);
    }
    for list in by_origin.values_mut() {
        list.sort_by_key(|w| w.seq);
    }
    let mut pasts: BTreeMap<(NodeId, u64), BTreeMap<NodeId, u64>> = BTreeMap::new();
    // Until nothing grows: every round folds in the pasts of the latest
    // recorded write each past covers per origin.
    for w in writes {
        pasts.insert((w.origin, w.seq), w.observed.clone());
    }
    loop {
        let mut grew = false;
        for w in writes {
            let past = pasts[&(w.origin, w.seq)].clone();
            let mut merged = past.clone();
            for (origin, &upto) in &past {
                let Some(list) = by_origin.get(origin) else {
                    continue;
                };
                let idx = list.partition_point(|x| x.seq <= upto);
                if idx == 0 || (*origin == w.origin && list[idx - 1].seq >= w.seq) {
                    continue;
                }
                let latest = list[idx - 1];
                for (o, s) in &pasts[&(latest.origin, latest.seq)] {
                    let e = merged.entry(*o).or_default();
                    if *s > *e {
                        *e = *s;
                    }
                }
            }
            if merged != past {
                grew = true;
                pasts.insert((w.origin, w.seq), merged);
            }
        }
        if !grew {
            return pasts;
        }
    }
}

/// The queue-like lists ("q" keys, fed with values `p<life>.<L|R>.<n>`):
/// no value twice, none that was never pushed, and each node life's pushes
/// at one end in the order it made them (an RPUSH after another lands
/// after it; an LPUSH, before it), whatever reached it in between.
/// Whether an element must be gone: some surviving removal of it had seen
/// every add of it that may survive (add wins only over the adds a
/// removal had not seen).
fn must_be_gone(adds: &[&Write], removes: &[&Write]) -> bool {
    removes.iter().any(|r| {
        adds.iter()
            .all(|a| r.observed.get(&a.origin).is_some_and(|&seen| a.seq <= seen))
    })
}

/// A set member removed after every add of it was observed stays removed,
/// on every node. Every add that survives or may (`uncertain`: a gone
/// life's, uncounted) counts; only removals that survive do. Returns how
/// many members it required gone.
fn removals(
    reg: &Registry,
    slots: &[usize],
    writes: &[Write],
    survives: impl Fn(&Write) -> bool,
    uncertain: impl Fn(&Write) -> bool,
) -> Result<usize, Failure> {
    let mut by_member: BTreeMap<&str, (Vec<&Write>, Vec<&Write>)> = BTreeMap::new();
    for w in writes {
        match w.kind {
            WriteKind::Add if survives(w) || uncertain(w) => {
                by_member.entry(&w.key).or_default().0.push(w)
            }
            WriteKind::Remove if survives(w) => by_member.entry(&w.key).or_default().1.push(w),
            _ => {}
        }
    }
    let mut checked = 0;
    for (key, (adds, removes)) in &by_member {
        if !must_be_gone(adds, removes) {
            continue;
        }
        let Some((set, member)) = key.strip_prefix("e:").and_then(|k| k.split_once(':')) else {
            continue;
        };
        checked += usize::from(!adds.is_empty());
        for &slot in slots {
            let argv: [&[u8]; 3] = [b"SISMEMBER", set.as_bytes(), member.as_bytes()];
            let Some(reply) = cluster::command(reg, slot, &argv) else {
                return Err(Failure::new(
                    "liveness",
                    format!("n{slot} went down while checking"),
                ));
            };
            // (Another type over the key holds no member at all.)
            if reply != b":0\r\n" && !reply.starts_with(b"-WRONGTYPE") {
                return Err(Failure::new(
                    "removed",
                    format!(
                        "{member} of {set} is back on n{slot} ({:?}) though an SREM saw every \
                         SADD of it",
                        String::from_utf8_lossy(&reply)
                    ),
                ));
            }
        }
    }
    Ok(checked)
}

fn lists(snap: &Snapshot) -> Result<(), Failure> {
    let Some(view) = snap.views.first() else {
        return Ok(());
    };
    for (_, key, state) in &view.keys {
        if !key.starts_with(b"q") {
            continue;
        }
        let Some(c) = state.coll() else { continue };
        let name = String::from_utf8_lossy(key);
        let mut seen = BTreeSet::new();
        // Per (life, end): the last number met walking the list.
        let mut last: BTreeMap<(u64, bool), u64> = BTreeMap::new();
        for (_, v) in c.list_iter() {
            let text = String::from_utf8_lossy(v);
            let parsed = text.strip_prefix('p').and_then(|t| {
                let mut parts = t.split('.');
                let life = parts.next()?.parse::<u64>().ok()?;
                let right = match parts.next()? {
                    "R" => true,
                    "L" => false,
                    _ => return None,
                };
                let n = parts.next()?.parse::<u64>().ok()?;
                Some((life, right, n))
            });
            let Some((life, right, n)) = parsed else {
                return Err(Failure::new(
                    "list",
                    format!("{name} holds {text:?}, never pushed"),
                ));
            };
            if !seen.insert(v.to_vec()) {
                return Err(Failure::new("list", format!("{name} holds {text:?} twice")));
            }
            if let Some(prev) = last.insert((life, right), n) {
                // Walking from the head: RPUSHes grow, LPUSHes shrink.
                if (right && prev > n) || (!right && prev < n) {
                    return Err(Failure::new(
                        "list",
                        format!(
                            "{name}: life {life}'s pushes out of order at {text:?} (after #{prev})"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(origin: u64, seq: u64, by: i64) -> Write {
        Write {
            origin: NodeId(origin),
            seq,
            key: "c0".into(),
            kind: WriteKind::Incr(by),
            stamp: None,
            epoch: Some(Stamp {
                time: 1,
                node: NodeId(origin),
            }),
            observed: BTreeMap::new(),
            replaced: None,
        }
    }

    fn element(kind: WriteKind, origin: u64, seq: u64, observed: &[(u64, u64)]) -> Write {
        Write {
            origin: NodeId(origin),
            seq,
            key: "e:s0:m1".into(),
            kind,
            stamp: None,
            epoch: None,
            observed: observed.iter().map(|&(o, s)| (NodeId(o), s)).collect(),
            replaced: None,
        }
    }

    /// A member must be gone when one removal saw every add of it; an add
    /// the removal had not seen (concurrent, or after it) keeps it.
    #[test]
    fn a_removal_that_saw_every_add_leaves_its_member_gone() {
        let a1 = element(WriteKind::Add, 1, 5, &[]);
        let a2 = element(WriteKind::Add, 2, 3, &[]);
        let saw_both = element(WriteKind::Remove, 3, 1, &[(1, 5), (2, 3)]);
        let saw_one = element(WriteKind::Remove, 3, 1, &[(1, 5), (2, 2)]);
        assert!(must_be_gone(&[&a1, &a2], &[&saw_both]));
        assert!(
            !must_be_gone(&[&a1, &a2], &[&saw_one]),
            "add wins over an unseen add"
        );
        assert!(must_be_gone(&[&a1, &a2], &[&saw_one, &saw_both]));
        assert!(!must_be_gone(&[&a1], &[]), "never removed");
        let after = element(WriteKind::Add, 1, 6, &[]);
        assert!(
            !must_be_gone(&[&a1, &a2, &after], &[&saw_both]),
            "added again after"
        );
    }

    /// A gone life's uncounted increments may survive, but only as a prefix
    /// of its writes on the key: a total that skips one is still caught.
    #[test]
    fn a_gone_lifes_uncounted_writes_survive_only_as_a_prefix() {
        let counted = [incr(1, 1, 10), incr(2, 1, 1)];
        let gone = [incr(2, 2, 100), incr(2, 3, 1000)];
        let counted: Vec<&Write> = counted.iter().collect();
        let mut unsure: BTreeMap<NodeId, Vec<&Write>> = BTreeMap::new();
        unsure.insert(NodeId(2), gone.iter().collect());
        let sets = survivor_sets(&counted, Some(&unsure)).expect("few combinations");
        let mut totals: Vec<i64> = sets.iter().map(|ws| counter_expected(ws, None)).collect();
        totals.sort_unstable();
        assert_eq!(totals, vec![11, 111, 1111], "never 1011: #3 without #2");
        let none = survivor_sets(&counted, None).expect("one set");
        assert_eq!(none.len(), 1);
        assert_eq!(counter_expected(&none[0], None), 11);
    }
}
