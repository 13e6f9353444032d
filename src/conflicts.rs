//! The conflict log: each write that lost without its winner having seen
//! it, as this node resolved it (DESIGN.md, "Conflict audit").
//!
//! Bounded by `conflict-log-max-len` entries, the oldest dropped first. The
//! same loser can be merged more than once (a resumed link, a state
//! transfer, a repair): one entry per (key, winner, loser, kind), found by a
//! fingerprint set kept in step with the entries, never by a scan.
//!
//! With a store, every cut carries the entries logged since the last one
//! and the id below which entries are gone (the bound, a RESET): a node
//! restarted from its store has its log back, ids going on from there.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use chorus_crdt::{Conflict, ConflictKind};
use hashbrown::HashSet;
use parking_lot::Mutex;

use crate::glob;

/// `conflict-log-max-len` by default.
pub const DEFAULT_MAX_LEN: usize = 10_000;

/// One conflict as logged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoggedConflict {
    /// Unique on this node, in the order logged (across restarts from a
    /// store).
    pub id: u64,
    pub db: usize,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub recorded_ms: u64,
    pub conflict: Conflict,
}

/// Which entries [`ConflictLog::select`] returns.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    pub count: usize,
    pub pattern: Option<&'a [u8]>,
    /// Logged at or after this (unix ms).
    pub since_ms: u64,
    pub kind: Option<ConflictKind>,
    /// Only entries with a larger id, oldest first (a page of a walk
    /// through the log, or what is new since the last look); `None`:
    /// newest first.
    pub after: Option<u64>,
}

impl Filter<'_> {
    /// Every entry, newest first.
    pub fn all() -> Filter<'static> {
        Filter {
            count: usize::MAX,
            pattern: None,
            since_ms: 0,
            kind: None,
            after: None,
        }
    }

    fn keeps(&self, c: &LoggedConflict) -> bool {
        c.recorded_ms >= self.since_ms
            && self.kind.is_none_or(|k| k == c.conflict.kind)
            && self.pattern.is_none_or(|p| glob::matches(p, &c.key, false))
    }
}

struct Entries {
    log: VecDeque<LoggedConflict>,
    fingerprints: HashSet<u64>,
    next_id: u64,
    max_len: usize,
    /// The newest id handed to a cut (see [`ConflictLog::for_cut`]).
    cut_upto: u64,
}

/// What of the log a cut stores: the entries logged since the last cut,
/// and the first id still kept (the store drops those before it).
#[derive(Debug, Clone, Default)]
pub struct LogCut {
    pub new: Vec<LoggedConflict>,
    pub keep_from: u64,
    /// The id the next entry takes: stored so that ids never repeat, even
    /// after a RESET emptied the log and the node restarted.
    pub next_id: u64,
}

/// See the module doc.
pub struct ConflictLog {
    entries: Mutex<Entries>,
    /// Conflicts logged since start, of every kind and per kind (a
    /// duplicate is not counted; an entry the bound dropped still is).
    pub total: AtomicU64,
    by_kind: [AtomicU64; ConflictKind::ALL.len()],
}

impl Default for ConflictLog {
    fn default() -> ConflictLog {
        ConflictLog::new(DEFAULT_MAX_LEN)
    }
}

fn fingerprint(db: usize, key: &[u8], c: &Conflict) -> u64 {
    foldhash::fast::FixedState::with_seed(0x636f_6e66).hash_one((
        db,
        key,
        c.winner.stamp,
        c.loser.stamp,
        c.kind.index(),
    ))
}

impl ConflictLog {
    pub fn new(max_len: usize) -> ConflictLog {
        ConflictLog {
            entries: Mutex::new(Entries {
                log: VecDeque::new(),
                fingerprints: HashSet::new(),
                next_id: 1,
                max_len,
                cut_upto: 0,
            }),
            total: AtomicU64::new(0),
            by_kind: Default::default(),
        }
    }

    pub fn record(&self, db: usize, key: &[u8], recorded_ms: u64, conflicts: Vec<Conflict>) {
        if conflicts.is_empty() {
            return;
        }
        let mut e = self.entries.lock();
        for conflict in conflicts {
            if !e.fingerprints.insert(fingerprint(db, key, &conflict)) {
                continue;
            }
            self.total.fetch_add(1, Ordering::Relaxed);
            self.by_kind[conflict.kind.index()].fetch_add(1, Ordering::Relaxed);
            let id = e.next_id;
            e.next_id += 1;
            e.log.push_back(LoggedConflict {
                id,
                db,
                key: key.to_vec(),
                recorded_ms,
                conflict,
            });
            e.trim();
        }
    }

    /// The entries a cut must store (and forget); the caller hands back
    /// [`ConflictLog::cut_failed`] if the store refused it.
    pub fn for_cut(&self) -> LogCut {
        let mut e = self.entries.lock();
        let from = e.log.partition_point(|c| c.id <= e.cut_upto);
        let new: Vec<LoggedConflict> = e.log.range(from..).cloned().collect();
        e.cut_upto = e.next_id - 1;
        LogCut {
            keep_from: e.log.front().map_or(e.next_id, |c| c.id),
            next_id: e.next_id,
            new,
        }
    }

    /// A cut from [`ConflictLog::for_cut`] was not stored: the next one
    /// carries its entries again.
    pub fn cut_failed(&self, cut: &LogCut) {
        if let Some(first) = cut.new.first() {
            let mut e = self.entries.lock();
            e.cut_upto = e.cut_upto.min(first.id - 1);
        }
    }

    /// Puts back what a store held (oldest first) into an empty log, and
    /// the id the next entry was to take: ids go on from there, and
    /// everything loaded counts as stored.
    pub fn restore(&self, stored: Vec<LoggedConflict>, next_id: u64) {
        let mut e = self.entries.lock();
        e.next_id = e.next_id.max(next_id);
        e.cut_upto = e.next_id - 1;
        for c in stored {
            if e.log.back().is_some_and(|last| last.id >= c.id) {
                continue;
            }
            e.fingerprints
                .insert(fingerprint(c.db, &c.key, &c.conflict));
            e.next_id = e.next_id.max(c.id + 1);
            e.cut_upto = e.next_id - 1;
            e.log.push_back(c);
        }
        e.trim();
    }

    pub fn max_len(&self) -> usize {
        self.entries.lock().max_len
    }

    /// Keeps at most `max_len` entries from now on (0: none).
    pub fn set_max_len(&self, max_len: usize) {
        let mut e = self.entries.lock();
        e.max_len = max_len;
        e.trim();
    }

    /// The newest entries `filter` keeps, newest first.
    pub fn select(&self, filter: &Filter<'_>) -> Vec<LoggedConflict> {
        let e = self.entries.lock();
        let picked = |entries: &mut dyn Iterator<Item = &LoggedConflict>| {
            entries
                .filter(|c| filter.keeps(c))
                .take(filter.count)
                .cloned()
                .collect()
        };
        match filter.after {
            // Ids grow along the log: the first newer one is found by
            // halving, not by a scan.
            Some(after) => picked(&mut e.log.range(e.log.partition_point(|c| c.id <= after)..)),
            None => picked(&mut e.log.iter().rev()),
        }
    }

    /// Every entry, newest first.
    pub fn all(&self) -> Vec<LoggedConflict> {
        self.select(&Filter::all())
    }

    /// Empties the log (`CRDT.CONFLICTS RESET`); ids keep counting, and so
    /// do the totals (as INFO's other counters, until CONFIG RESETSTAT).
    pub fn reset(&self) -> usize {
        let mut e = self.entries.lock();
        let n = e.log.len();
        e.log.clear();
        e.fingerprints.clear();
        n
    }

    pub fn len(&self) -> usize {
        self.entries.lock().log.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Conflicts of `kind` logged since start.
    pub fn count_of(&self, kind: ConflictKind) -> u64 {
        self.by_kind[kind.index()].load(Ordering::Relaxed)
    }
}

impl Entries {
    fn trim(&mut self) {
        while self.log.len() > self.max_len {
            if let Some(old) = self.log.pop_front() {
                self.fingerprints
                    .remove(&fingerprint(old.db, &old.key, &old.conflict));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_crdt::{NodeId, Side, Stamp, Summary};

    fn conflict(kind: ConflictKind, winner: u64, loser: u64) -> Conflict {
        let side = |t: u64| Side {
            origin: NodeId(t),
            stamp: Stamp {
                time: t,
                node: NodeId(1),
            },
            what: Summary::Value(b"v".to_vec()),
        };
        Conflict {
            element: None,
            kind,
            winner: side(winner),
            loser: side(loser),
        }
    }

    fn all() -> Filter<'static> {
        Filter::all()
    }

    #[test]
    fn the_same_loser_merged_again_is_logged_once() {
        let log = ConflictLog::new(10);
        let c = conflict(ConflictKind::ConcurrentWrite, 2, 1);
        log.record(0, b"k", 1, vec![c.clone()]);
        log.record(0, b"k", 2, vec![c.clone()]);
        log.record(1, b"k", 3, vec![c.clone()]);
        log.record(0, b"other", 4, vec![c]);
        assert_eq!(log.len(), 3, "once per database and key");
        assert_eq!(log.total.load(Ordering::Relaxed), 3);
        let ids: Vec<u64> = log.select(&all()).iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![3, 2, 1], "newest first, ids in order");
    }

    #[test]
    fn the_bound_drops_the_oldest_and_forgets_its_fingerprint() {
        let log = ConflictLog::new(3);
        for i in 0..5 {
            log.record(
                0,
                b"k",
                i,
                vec![conflict(ConflictKind::ConcurrentWrite, i + 10, i)],
            );
        }
        let kept: Vec<u64> = log.select(&all()).iter().map(|c| c.recorded_ms).collect();
        assert_eq!(kept, vec![4, 3, 2]);
        // The dropped one is new again: logged, not taken for a duplicate.
        log.record(
            0,
            b"k",
            9,
            vec![conflict(ConflictKind::ConcurrentWrite, 10, 0)],
        );
        assert_eq!(log.select(&all())[0].recorded_ms, 9);
        assert_eq!(log.len(), 3);
        log.set_max_len(1);
        assert_eq!(log.len(), 1);
        assert_eq!(
            log.total.load(Ordering::Relaxed),
            6,
            "the total keeps counting"
        );
    }

    #[test]
    fn select_filters_by_kind_pattern_time_and_count() {
        let log = ConflictLog::new(100);
        log.record(
            0,
            b"user:1",
            10,
            vec![conflict(ConflictKind::ConcurrentWrite, 2, 1)],
        );
        log.record(
            0,
            b"user:2",
            20,
            vec![conflict(ConflictKind::TypeClash, 3, 1)],
        );
        log.record(
            0,
            b"cart:1",
            30,
            vec![conflict(ConflictKind::ConcurrentWrite, 4, 1)],
        );
        let keys =
            |f: Filter<'_>| -> Vec<Vec<u8>> { log.select(&f).into_iter().map(|c| c.key).collect() };
        let kind = Some(ConflictKind::ConcurrentWrite);
        assert_eq!(
            keys(Filter { kind, ..all() }),
            vec![b"cart:1".to_vec(), b"user:1".to_vec()]
        );
        let pattern = Some(&b"user:*"[..]);
        assert_eq!(
            keys(Filter { pattern, ..all() }),
            vec![b"user:2".to_vec(), b"user:1".to_vec()]
        );
        assert_eq!(
            keys(Filter {
                since_ms: 20,
                ..all()
            })
            .len(),
            2
        );
        assert_eq!(keys(Filter { count: 1, ..all() }), vec![b"cart:1".to_vec()]);
        // A walk after an id goes oldest first, a page at a time.
        let after = |after, count| -> Vec<u64> {
            let f = Filter {
                after: Some(after),
                count,
                ..all()
            };
            log.select(&f).iter().map(|c| c.id).collect()
        };
        assert_eq!(after(0, 2), vec![1, 2]);
        assert_eq!(after(2, 2), vec![3]);
        assert!(after(3, 2).is_empty());
        let f = Filter {
            after: Some(1),
            kind,
            ..all()
        };
        assert_eq!(
            log.select(&f)[0].key,
            b"cart:1",
            "filters apply on the walk"
        );
        assert_eq!(log.count_of(ConflictKind::ConcurrentWrite), 2);
        assert_eq!(log.count_of(ConflictKind::TypeClash), 1);
        assert_eq!(log.reset(), 3);
        assert!(log.is_empty());
        log.record(
            0,
            b"user:1",
            40,
            vec![conflict(ConflictKind::ConcurrentWrite, 2, 1)],
        );
        assert_eq!(
            log.select(&all())[0].id,
            4,
            "ids keep counting after a reset"
        );
    }
}
