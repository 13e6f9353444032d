//! The flash tier (`storage-provider flash PATH`, KeyDB's directive): when
//! memory passes `maxmemory`, the keys the policy picks leave RAM for the
//! node's store instead of being deleted, and come back when used.
//!
//! The store is the one persistence folds into (`crate::persist`), so
//! moving a key out writes nothing: a key may go cold once its newest
//! state is in the store (its dirty flag clear, and no fold between taking
//! its cut and storing it). The key stays in the table, flagged cold, with a
//! stand-in state that answers what the index must answer without a disk
//! read: whether the key exists, its expiry, its newest stamp (flushes
//! compare it with their floor). Everything else, a command's read or
//! write, a replicated merge, a digest or a transfer, reads the state
//! through (`Db::warm`, `Db::peek`). Going cold is local: nothing is
//! replicated, and the key's CRDT state is the same wherever it lives.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use chorus_crdt::coll::Kind;
use chorus_crdt::state::{KeyType, Register};
use chorus_crdt::KeyState;

use crate::store::Store;

/// The node's flash tier: where cold keys are read back from, and what it
/// did, for INFO.
pub struct ColdTier {
    store: Arc<dyn Store>,
    /// A cut has been taken and is not stored yet: the keys it took are
    /// clean in RAM but their newest state is not in the store.
    folding: AtomicBool,
    /// Eviction found over the limit and nothing clean to move: the fold
    /// loop folds at once instead of waiting for its period.
    pub fold_wanted: tokio::sync::Notify,
    /// Signalled as each fold ends: writers held past the ceiling (see
    /// [`ColdTier::wait_for_room`]) look again.
    fold_ended: tokio::sync::Notify,
    /// Folds ended so far (stored or failed).
    folds: AtomicU64,
    /// `folds` + 1 when eviction last found nothing it could move (0:
    /// never): until the next fold ends it does not look again, since only
    /// a fold makes keys movable (a write would otherwise sample the table
    /// in vain, again and again).
    starved_at: AtomicU64,
    /// Keys whose state is in the store only.
    pub cold_keys: AtomicU64,
    /// Of those, the keys with an expiry (the `volatile-*` policies'
    /// candidates: when all are cold, nothing is left to move).
    pub cold_volatile: AtomicU64,
    /// Keys moved out of RAM so far.
    pub moved_out: AtomicU64,
    /// Cold keys read back into RAM (a command or a merge used them).
    pub warmed: AtomicU64,
    /// Cold states read without bringing them back (digests, transfers).
    pub peeked: AtomicU64,
    /// Times a writer (a client, or a link's replicated writes) was held
    /// until a fold ended, memory being past [`ceiling`].
    pub writes_held: AtomicU64,
    /// `moved_out` when the last fold ended: eviction that finds nothing
    /// to move before moving anything since, found that the fold freed
    /// nothing (what fills memory is not keys a fold can free: tombstones
    /// waiting for peers, the index, buffers).
    moved_at_fold_end: AtomicU64,
    /// Set then, cleared by the next move: writers are not held, since
    /// the next fold would free nothing either (each write would wait a
    /// whole fold for nothing).
    futile: AtomicBool,
    /// The buffers `maxmemory` does not count
    /// (`crate::node::Node::buffers_not_counted`), as the node's 100 ms
    /// cycle last read them (a link reads them so for every frame, without
    /// the replication core's lock).
    pub not_counted_for_evict: AtomicU64,
}

/// What a flash node's memory may reach while writes outrun its folds:
/// past `maxmemory`, keys can leave RAM only once a fold has stored them,
/// so when every key in RAM has changed since the last fold, writers go on
/// until this and then wait for the fold (a bulk load took 469 MB of a
/// 100 MB limit before). The slack lets writes overlap the fold.
pub fn ceiling(maxmemory: u64) -> u64 {
    maxmemory.saturating_add(maxmemory / 4)
}

/// Before a link applies a replicated write on a flash node: eviction
/// runs as it does before a client's write (else only the 100 ms cycle
/// would move keys out, a few thousand a tick, while a peer's bulk load
/// comes in faster), and the link waits as a client does past the
/// ceiling. Waiting holds the stream, whose flow control slows the peer.
/// Memory is counted as for a client (`crate::node::Node::data_memory`:
/// the replication and log buffers left out).
pub async fn make_room_for_replicated(ks: &crate::keyspace::Keyspace) {
    let Some(tier) = &ks.cold else {
        return;
    };
    let max = ks.limits.maxmemory();
    if max == 0 {
        return;
    }
    let buffered = tier.not_counted_for_evict.load(Ordering::Relaxed);
    let used = || crate::alloc::used_bytes().map(|b| (b as u64).saturating_sub(buffered));
    if used().is_some_and(|u| u > max) {
        let _ = crate::evict::make_room(ks, used, true, ks.clock.physical_unix_ms());
        if tier.holds_writes(used, max) {
            tier.wait_for_room(used, || ks.limits.maxmemory()).await;
        }
    }
}

/// How often a held writer looks again without a fold's end (a FLUSHALL,
/// a raised limit or a failed fold may have made room).
const HELD_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The longest a writer is held, should no fold end (a fold that failed
/// before it began, or whose task died).
const HELD_MOST: std::time::Duration = std::time::Duration::from_secs(10);

impl ColdTier {
    pub fn new(store: Arc<dyn Store>) -> ColdTier {
        ColdTier {
            store,
            folding: AtomicBool::new(false),
            fold_wanted: tokio::sync::Notify::new(),
            fold_ended: tokio::sync::Notify::new(),
            folds: AtomicU64::new(0),
            starved_at: AtomicU64::new(0),
            cold_keys: AtomicU64::new(0),
            cold_volatile: AtomicU64::new(0),
            moved_out: AtomicU64::new(0),
            warmed: AtomicU64::new(0),
            peeked: AtomicU64::new(0),
            writes_held: AtomicU64::new(0),
            moved_at_fold_end: AtomicU64::new(0),
            futile: AtomicBool::new(false),
            not_counted_for_evict: AtomicU64::new(0),
        }
    }

    /// A cut was taken (`true`, under every shard lock) or its store write
    /// ended (`false`).
    pub fn set_folding(&self, to: bool) {
        self.folding.store(to, Ordering::SeqCst);
        if !to {
            self.moved_at_fold_end
                .store(self.moved_out.load(Ordering::SeqCst), Ordering::SeqCst);
            self.folds.fetch_add(1, Ordering::SeqCst);
            self.fold_ended.notify_waiters();
        }
    }

    /// Whether a writer must wait for a fold before it writes more: memory
    /// (`used`, the allocator's count) is past [`ceiling`] of `maxmemory`,
    /// and eviction found nothing it could move or a fold is under way
    /// (its keys may not go until it ends).
    pub fn holds_writes(&self, used: impl FnOnce() -> Option<u64>, maxmemory: u64) -> bool {
        maxmemory > 0
            && (self.starved() || self.folding())
            && !self.futile.load(Ordering::Relaxed)
            && used().is_some_and(|u| u > ceiling(maxmemory))
    }

    /// Waits while [`ColdTier::holds_writes`]: until a fold ends, or
    /// something else made room. One fold at most: it leaves every key it
    /// stored free to go, and if what fills memory is not keys (buffers,
    /// keys already on disk), waiting longer would stall the writer for
    /// good (a client's next write is then refused as without the tier, a
    /// link's applied). No lock is held.
    pub async fn wait_for_room(&self, used: impl Fn() -> Option<u64>, maxmemory: impl Fn() -> u64) {
        let folds = self.folds.load(Ordering::SeqCst);
        // However a fold fails, a writer is not held past this.
        let until = tokio::time::Instant::now() + HELD_MOST;
        let mut counted = false;
        while self.folds.load(Ordering::SeqCst) == folds && tokio::time::Instant::now() < until {
            let ended = self.fold_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.holds_writes(&used, maxmemory()) {
                return;
            }
            if !std::mem::replace(&mut counted, true) {
                self.writes_held.fetch_add(1, Ordering::Relaxed);
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep(HELD_RECHECK) => {}
            }
        }
    }

    /// Eviction found nothing to move: a fold is asked for, and eviction
    /// rests until it ends.
    pub fn starve(&self) {
        if self.moved_out.load(Ordering::SeqCst) == self.moved_at_fold_end.load(Ordering::SeqCst)
            && self.folds.load(Ordering::SeqCst) > 0
        {
            self.futile.store(true, Ordering::Relaxed);
        }
        self.starved_at
            .store(self.folds.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
        self.fold_wanted.notify_one();
    }

    /// Whether eviction rests (see [`ColdTier::starve`]).
    pub fn starved(&self) -> bool {
        self.starved_at.load(Ordering::SeqCst) == self.folds.load(Ordering::SeqCst) + 1
    }

    /// Read under a shard lock: the cut is taken under every shard lock, so
    /// a key seen clean while no fold is pending is in the store as it is.
    pub fn folding(&self) -> bool {
        self.folding.load(Ordering::SeqCst)
    }

    /// A key expiring at `expire_at_ms` (0: never) went cold.
    pub fn note_moved_out(&self, expire_at_ms: u64) {
        if self.futile.load(Ordering::Relaxed) {
            self.futile.store(false, Ordering::Relaxed);
        }
        self.cold_keys.fetch_add(1, Ordering::Relaxed);
        self.moved_out.fetch_add(1, Ordering::Relaxed);
        if expire_at_ms != 0 {
            self.cold_volatile.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A cold key came back into RAM.
    pub fn note_warmed(&self, expire_at_ms: u64) {
        self.note_gone(expire_at_ms);
        self.warmed.fetch_add(1, Ordering::Relaxed);
    }

    /// A cold key is cold no more (warmed, or dropped by a flush).
    pub fn note_gone(&self, expire_at_ms: u64) {
        self.cold_keys.fetch_sub(1, Ordering::Relaxed);
        if expire_at_ms != 0 {
            self.cold_volatile.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A key's state as stored, if the store holds it: for a key that was
    /// cold when a scan met it, read after the scan let go of the shard
    /// (see `crate::keyspace::ColdReads`), by when it may have been
    /// removed. An error reading it stops the process, as in
    /// [`ColdTier::read`].
    pub fn read_if_held(&self, db: u32, key: &[u8]) -> Option<KeyState> {
        match self.store.read_key(db, key) {
            Ok(state) => state,
            Err(e) => fail(&format!(
                "reading cold key {:?} in db {db}: {e}",
                String::from_utf8_lossy(key)
            )),
        }
    }

    /// A cold key's state. A store that cannot give back what it was
    /// handed has lost data: the process stops, naming the store's error,
    /// as it does when an fsync fails (see `crate::deltalog`), rather than
    /// answer or merge as if the key were empty.
    pub fn read(&self, db: u32, key: &[u8]) -> KeyState {
        match self.store.read_key(db, key) {
            Ok(Some(state)) => state,
            Ok(None) => fail(&format!(
                "the flash store holds no state for cold key {:?} in db {db}",
                String::from_utf8_lossy(key)
            )),
            Err(e) => fail(&format!(
                "reading cold key {:?} in db {db}: {e}",
                String::from_utf8_lossy(key)
            )),
        }
    }
}

fn fail(what: &str) -> ! {
    tracing::error!("{what}: stopping, the flash tier cannot serve its data");
    eprintln!("chorus: {what}: stopping, the flash tier cannot serve its data");
    std::process::exit(1)
}

/// What stays in RAM for a cold key: a state that exists exactly when
/// `state` does (ignoring expiry), expires when it does, and whose newest
/// stamp is `state`'s. It holds no value bytes (an empty box allocates
/// nothing) and no metadata.
pub fn stand_in(state: &KeyState) -> KeyState {
    KeyState {
        reg: Register {
            stamp: state.latest_stamp(),
            seen: None,
            value: Some(Box::default()),
            expire_at_ms: state.expire_at_ms(),
        },
        extras: None,
        coll: None,
    }
}

/// What a cold key's access-clock word holds in place of its clock: its
/// type, so that TYPE and SCAN TYPE answer from the index, as the issue's
/// "no disk read" list asks (a cold key is no eviction candidate, so its
/// clock has no use until it is warmed, which starts it afresh). 0: not
/// known (a state with no visible type), read from the store.
pub fn type_tag(state: &KeyState) -> u32 {
    match state.key_type(0) {
        None => 0,
        Some(KeyType::String) => 1,
        Some(KeyType::Coll(kind)) => Kind::ALL
            .iter()
            .position(|&k| k == kind)
            .map_or(0, |i| 2 + i as u32),
    }
}

/// The type [`type_tag`] put in a cold key's word, if it knew one.
pub fn tagged_type(tag: u32) -> Option<KeyType> {
    match tag {
        0 => None,
        1 => Some(KeyType::String),
        t => Kind::ALL.get((t - 2) as usize).map(|&k| KeyType::Coll(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_crdt::{NodeId, Stamp};

    #[test]
    fn a_stand_in_answers_existence_expiry_and_newest_stamp_as_its_key() {
        let node = NodeId(7);
        let stamp = |t: u64| Stamp::from_unix_ms(t, node);
        let empty = KeyState::default();
        let plain = empty.write(stamp(2_000), Some(&[7u8; 1000]), 5_000);
        let counter = empty.incr(stamp(3_000), 12, 0.0, false);
        let mut hash = empty.coll_write(stamp(4_000), Kind::Hash, |c, d| {
            c.hset_into(d, stamp(4_000), b"field", b"value")
        });
        hash.merge(&hash.expire(stamp(4_500), 9_000));
        for (name, state) in [("string", plain), ("counter", counter), ("hash", hash)] {
            let s = stand_in(&state);
            for now in [0, 4_999, 5_000, 8_999, 9_000] {
                assert_eq!(s.exists(now), state.exists(now), "{name} at {now}");
            }
            assert!(state.exists(0), "{name}");
            assert_eq!(s.expire_at_ms(), state.expire_at_ms(), "{name}");
            assert_eq!(s.latest_stamp(), state.latest_stamp(), "{name}");
            assert!(!s.is_empty(), "{name}");
            assert_eq!(s.heap_bytes(), 0, "{name}: nothing on the heap");
        }
    }

    #[test]
    fn a_type_tag_names_the_type_of_every_kind_of_key() {
        let node = NodeId(7);
        let stamp = |t: u64| Stamp::from_unix_ms(t, node);
        let empty = KeyState::default();
        let mut states = vec![
            empty.write(stamp(1_000), Some(b"v"), 0),
            empty.incr(stamp(1_000), 3, 0.0, false),
        ];
        for kind in Kind::ALL {
            states.push(empty.coll_write(stamp(2_000), kind, |c, d| match kind {
                Kind::Hash => c.hset_into(d, stamp(2_000), b"f", b"v"),
                Kind::Set => c.sadd_into(d, stamp(2_000), b"m"),
                Kind::ZSet => c.zadd_into(d, stamp(2_000), b"m", 1.0),
                Kind::List => c.list_push_into(d, stamp(2_000), true, b"x"),
            }));
        }
        for state in &states {
            let t = state.key_type(0);
            assert!(t.is_some());
            assert_eq!(tagged_type(type_tag(state)), t);
        }
        assert_eq!(type_tag(&empty), 0);
        assert_eq!(tagged_type(0), None);
    }

    use crate::keyspace::{Keyspace, Locked, SHARDS};
    use crate::persist::Persistence;
    use crate::store::MemStore;
    use chorus_crdt::digest::DbDigest;
    use chorus_crdt::Clock;
    use smallvec::SmallVec;
    use std::time::Duration;

    #[tokio::test]
    async fn a_writer_waits_for_one_fold_at_most_and_not_after_a_fold_that_freed_nothing() {
        let tier = Arc::new(ColdTier::new(Arc::new(MemStore::new())));
        let (max, over) = (1_000, || Some(2_000u64));
        assert!(!tier.holds_writes(over, max), "nothing asked of a fold");
        assert!(
            !tier.holds_writes(|| Some(1_100), max),
            "within the ceiling"
        );
        tier.starve();
        assert!(tier.holds_writes(over, max));
        let waiting = tier.clone();
        let writer = tokio::spawn(async move { waiting.wait_for_room(over, || 1_000).await });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!writer.is_finished(), "released before a fold ended");
        // A fold ends, and memory is still past the ceiling: one fold only.
        tier.set_folding(true);
        tier.set_folding(false);
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("released by the fold's end")
            .unwrap();
        assert_eq!(tier.writes_held.load(Ordering::Relaxed), 1);
        // Eviction finds nothing to move with no move since that fold:
        // waiting for the next would free nothing either.
        tier.starve();
        assert!(!tier.holds_writes(over, max), "held after a futile fold");
        tier.note_moved_out(0);
        assert!(
            tier.holds_writes(over, max),
            "a move makes folds worth waiting for"
        );
        // Nor is a writer held while memory is not past the ceiling.
        tier.wait_for_room(|| Some(500), || 1_000).await;
        assert_eq!(tier.writes_held.load(Ordering::Relaxed), 1);
    }

    fn tiered() -> (Arc<Keyspace>, Arc<ColdTier>, Persistence) {
        tiered_on(Arc::new(MemStore::new()))
    }

    fn tiered_on(store: Arc<dyn Store>) -> (Arc<Keyspace>, Arc<ColdTier>, Persistence) {
        let clock = Clock::new(
            NodeId(1),
            chorus_crdt::system_clock,
            Duration::from_millis(500),
        );
        let mut ks = Keyspace::new(2, clock);
        let tier = Arc::new(ColdTier::new(store.clone()));
        ks.set_cold_tier(tier.clone());
        ks.track_dirty();
        let ks = Arc::new(ks);
        let persistence = Persistence::new(store, None, false, ks.clone(), None);
        (ks, tier, persistence)
    }

    fn locked<'a>(ks: &'a Keyspace, key: &[u8]) -> Locked<'a> {
        ks.lock(SmallVec::from_slice(&[ks.shard_of(key)]))
    }

    fn digests(ks: &Keyspace) -> Vec<DbDigest> {
        let mut dbs = vec![DbDigest::empty(0), DbDigest::empty(1)];
        ks.digest_all(ks.gc_acked(), &mut dbs);
        assert!(!dbs[0].is_empty());
        dbs
    }

    /// A read, as a command's: the key warmed, then read.
    fn value(ks: &Keyspace, key: &[u8]) -> Option<Vec<u8>> {
        let mut l = locked(ks, key);
        let d = &mut l.shard(ks.shard_of(key)).unwrap().dbs[0];
        d.warm(key, ks.gc_acked());
        d.get(key)?.read(0).render().map(|v| v.into_owned())
    }

    /// A store that counts the keys read while the key's shard is locked.
    #[derive(Default)]
    struct Watched {
        inner: MemStore,
        keyspace: std::sync::OnceLock<std::sync::Weak<Keyspace>>,
        reads: AtomicU64,
        under_lock: AtomicU64,
    }

    impl Store for Watched {
        fn name(&self) -> &'static str {
            "watched"
        }
        fn load(&self) -> Result<crate::store::Loaded, crate::store::StoreError> {
            self.inner.load()
        }
        fn write(&self, cut: &crate::store::Cut) -> Result<(), crate::store::StoreError> {
            self.inner.write(cut)
        }
        fn read_key(
            &self,
            db: u32,
            key: &[u8],
        ) -> Result<Option<KeyState>, crate::store::StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let ks = self.keyspace.get().and_then(std::sync::Weak::upgrade);
            if ks.is_some_and(|ks| ks.shard_is_locked(ks.shard_of(key))) {
                self.under_lock.fetch_add(1, Ordering::Relaxed);
            }
            self.inner.read_key(db, key)
        }
    }

    /// Digests (a peer's repair offer, CRDT.DIGEST, a transfer of the
    /// leaves that differ) and a state transfer read cold keys from the
    /// store after letting go of the shard, so a disk read holds up no
    /// write; and they read what they read in RAM.
    #[test]
    fn digests_and_transfers_read_cold_keys_with_the_shard_unlocked() {
        let store = Arc::new(Watched::default());
        let (ks, tier, persistence) = tiered_on(store.clone());
        store.keyspace.set(Arc::downgrade(&ks)).unwrap();
        let names: Vec<(usize, Vec<u8>)> = (0..60)
            .map(|i| (i % 2, format!("key:{i}").into_bytes()))
            .collect();
        for (db, key) in &names {
            let mut l = locked(&ks, key);
            ks.update(&mut l, *db, key, 0, |w| w.set(Some(key), 0))
                .unwrap();
        }
        persistence.cut_once().unwrap();
        let all_digests = |ks: &Keyspace| {
            let mut leaves = crate::keyspace::LeafDigests {
                bits: 6,
                dbs: vec![None, None],
            };
            ks.digest_all(ks.gc_acked(), &mut leaves);
            let leaves = leaves.dbs;
            let buckets: Vec<_> = (0..=255u8)
                .map(|b| ks.bucket_digests(1, None, b, None).unwrap())
                .collect();
            (
                digests(ks),
                leaves,
                buckets,
                ks.digest_buckets(0, None, 0..=255).unwrap(),
            )
        };
        let (before, states) = (all_digests(&ks), ks.dump().0);
        for (db, key) in &names {
            assert!(ks.move_cold(*db, key));
        }
        assert_eq!(store.reads.load(Ordering::Relaxed), 0);
        assert_eq!(all_digests(&ks), before);
        // A state transfer's scan, in pieces of 7 keys.
        let mut met = Vec::new();
        for i in 0..SHARDS {
            let mut scan = crate::keyspace::ShardScan::default();
            loop {
                let mut cold = crate::keyspace::ColdReads::default();
                let mut take = |db: u32, key: &[u8], state: &KeyState| {
                    met.push((db, key.to_vec(), state.clone()));
                    Ok::<_, ()>(1)
                };
                let done = ks
                    .scan_piece(
                        i,
                        &mut scan,
                        7,
                        usize::MAX,
                        |_| true,
                        |_, _| true,
                        None,
                        &mut take,
                        &mut cold,
                    )
                    .unwrap();
                assert!(cold.len() <= 7);
                while !cold.is_empty() {
                    cold.read(ks.gc_acked(), 3, &mut take).unwrap();
                }
                if done {
                    break;
                }
            }
        }
        met.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        assert_eq!(met, states);
        assert_eq!(ks.cold_keys(), 60, "read, and left cold");
        assert!(store.reads.load(Ordering::Relaxed) >= 4 * 60);
        assert_eq!(store.under_lock.load(Ordering::Relaxed), 0);
        assert!(tier.peeked.load(Ordering::Relaxed) >= 4 * 60);
    }

    /// A cold key read after the scan let go of its shard: one deleted
    /// (and its record removed) since is skipped; one written since is
    /// read as the store holds it then, newer than when met.
    #[test]
    fn a_cold_key_read_later_is_skipped_if_gone_and_newer_if_written() {
        let (ks, _tier, persistence) = tiered();
        let write = |key: &[u8], value: Option<&[u8]>| {
            let mut l = locked(&ks, key);
            ks.update(&mut l, 0, key, 0, |w| w.set(value, 0)).unwrap();
        };
        for key in [&b"gone"[..], b"rewritten", b"kept"] {
            write(key, Some(b"old"));
        }
        persistence.cut_once().unwrap();
        for key in [&b"gone"[..], b"rewritten", b"kept"] {
            assert!(ks.move_cold(0, key));
        }
        let mut cold = crate::keyspace::ColdReads::default();
        for i in 0..SHARDS {
            let mut scan = crate::keyspace::ShardScan::default();
            let done = ks
                .scan_piece(
                    i,
                    &mut scan,
                    100,
                    usize::MAX,
                    |_| true,
                    |_, _| true,
                    None,
                    |_, key, _| -> Result<usize, ()> { panic!("{key:?} is cold") },
                    &mut cold,
                )
                .unwrap();
            assert!(done);
        }
        assert_eq!(cold.len(), 3);
        write(b"gone", None);
        write(b"rewritten", Some(b"new"));
        // Moved out again once stored: the record is what a read finds.
        persistence.cut_once().unwrap();
        assert!(ks.move_cold(0, b"rewritten"));
        let mut read = Vec::new();
        cold.read(ks.gc_acked(), usize::MAX, |_, key, state| {
            read.push((key.to_vec(), state.read(0).render().map(|v| v.into_owned())));
            Ok::<_, ()>(1)
        })
        .unwrap();
        read.sort();
        assert_eq!(
            read,
            vec![
                (b"kept".to_vec(), Some(b"old".to_vec())),
                (b"rewritten".to_vec(), Some(b"new".to_vec())),
            ]
        );
    }

    #[test]
    fn a_key_goes_cold_only_once_stored_and_comes_back_as_it_was() {
        let (ks, tier, persistence) = tiered();
        let big = vec![b'x'; 4000];
        for key in [&b"string"[..], b"counter", b"hash"] {
            let mut l = locked(&ks, key);
            ks.update(&mut l, 0, key, 0, |w| match key {
                b"string" => w.set(Some(&big), 0),
                b"counter" => w.incr(5, 0.0, false),
                _ => {
                    let _ = w.coll_write(Kind::Hash, |c, d, stamp| {
                        c.hset_into(d, stamp, b"f", b"v");
                        Ok::<(), ()>(())
                    });
                }
            })
            .unwrap();
        }
        assert!(!ks.move_cold(0, b"string"), "changed since the last cut");
        persistence.cut_once().unwrap();
        tier.set_folding(true);
        assert!(!ks.move_cold(0, b"string"), "a cut is being stored");
        tier.set_folding(false);
        let (before, digest_before) = (ks.dump(), digests(&ks));
        for key in [&b"string"[..], b"counter", b"hash"] {
            assert!(ks.move_cold(0, key), "{key:?}");
            assert!(!ks.move_cold(0, key), "already cold");
        }
        assert!(!ks.move_cold(0, b"absent"));
        assert_eq!(ks.cold_keys(), 3);
        // Its stand-in holds none of the value.
        {
            let l = locked(&ks, b"string");
            let mut l = l;
            let d = &l.shard(ks.shard_of(b"string")).unwrap().dbs[0];
            assert_eq!(d.indexed(b"string").unwrap().heap_bytes(), 0);
            assert!(d.indexed(b"string").unwrap().exists(0));
        }
        // Peeks (dumps, digests, transfers) read through and leave it cold.
        assert_eq!(ks.dump(), before);
        assert_eq!(digests(&ks), digest_before);
        assert_eq!(ks.cold_keys(), 3);
        assert!(tier.peeked.load(Ordering::Relaxed) > 0);
        // A write reads it back first.
        let mut l = locked(&ks, b"counter");
        ks.update(&mut l, 0, b"counter", 0, |w| w.incr(1, 0.0, false))
            .unwrap();
        drop(l);
        assert_eq!(value(&ks, b"counter").as_deref(), Some(&b"6"[..]));
        assert_eq!(value(&ks, b"string"), Some(big));
        assert_eq!(ks.cold_keys(), 1);
        assert_eq!(tier.warmed.load(Ordering::Relaxed), 2);
        // Nothing warmed counts as changed but the written key.
        let mut all = ks.lock_all();
        let (cut, _) = ks.take_cut(&mut all).unwrap();
        let names: Vec<&[u8]> = cut.iter().map(|(_, k, _)| k.as_slice()).collect();
        assert_eq!(names, vec![&b"counter"[..]]);
    }

    #[test]
    fn a_flush_drops_older_cold_keys_and_keeps_what_a_newer_write_left() {
        let (ks, _tier, persistence) = tiered();
        for key in [&b"old"[..], b"new"] {
            let mut l = locked(&ks, key);
            ks.update(&mut l, 0, key, 0, |w| w.set(Some(b"value"), 0))
                .unwrap();
        }
        let new_stamp = ks.state_of(0, b"new").unwrap().latest_stamp();
        let old_stamp = ks.state_of(0, b"old").unwrap().latest_stamp();
        assert!(old_stamp < new_stamp);
        persistence.cut_once().unwrap();
        assert!(ks.move_cold(0, b"old") && ks.move_cold(0, b"new"));
        // A flush from a peer stamped between the two writes.
        {
            let mut all = ks.lock_all();
            for shard in all.shards() {
                shard.dbs[0].flush(new_stamp);
            }
        }
        assert_eq!(ks.cold_keys(), 0, "neither is cold any more");
        assert_eq!(ks.state_of(0, b"old"), None);
        assert_eq!(value(&ks, b"new").as_deref(), Some(&b"value"[..]));
        // The dropped key leaves the store at the next cut.
        let mut all = ks.lock_all();
        let (cut, _) = ks.take_cut(&mut all).unwrap();
        assert!(cut.contains(&(0, b"old".to_vec(), None)), "{cut:?}");
    }

    /// A cold key's access-clock word holds its type tag; every way a key
    /// comes back into RAM puts an access clock there again, or eviction
    /// would rank it by its type (a hash as a key idle since boot).
    #[test]
    fn every_way_back_into_ram_gives_a_key_an_access_clock_again() {
        let (ks, _tier, persistence) = tiered();
        const NOW: u32 = 0x00ab_cdef;
        ks.access_clock.store(NOW, Ordering::Relaxed);
        let keys: [&[u8]; 6] = [
            b"read", b"written", b"merged", b"kept", b"flushed", b"swapped",
        ];
        let fill = |db: usize| {
            for key in keys {
                let mut l = locked(&ks, key);
                ks.update(&mut l, db, key, 0, |w| {
                    let _ = w.coll_write(Kind::Hash, |c, d, stamp| {
                        c.hset_into(d, stamp, b"f", b"v");
                        Ok::<(), ()>(())
                    });
                })
                .unwrap();
            }
            persistence.cut_once().unwrap();
            for key in keys {
                assert!(ks.move_cold(db, key), "{key:?}");
            }
        };
        fill(0);
        let word = |db: usize, key: &[u8]| {
            let mut l = locked(&ks, key);
            let d = &l.shard(ks.shard_of(key)).unwrap().dbs[db];
            let entry = d.map.entry(key).unwrap();
            (entry.key.is_cold(), entry.clock())
        };
        let hash_tag = (false, type_tag(&ks.state_of(0, b"read").unwrap()));
        assert_eq!(word(0, b"read"), (true, hash_tag.1), "cold: its type");
        assert_ne!(hash_tag.1, NOW);
        // A command's read warms it.
        let mut l = locked(&ks, b"read");
        l.shard(ks.shard_of(b"read")).unwrap().dbs[0].warm(b"read", ks.gc_acked());
        drop(l);
        assert_eq!(word(0, b"read"), (false, NOW));
        // A write changes it.
        let mut l = locked(&ks, b"written");
        ks.update(&mut l, 0, b"written", 0, |w| {
            let _ = w.coll_write(Kind::Hash, |c, d, stamp| {
                c.hset_into(d, stamp, b"g", b"w");
                Ok::<(), ()>(())
            });
        })
        .unwrap();
        drop(l);
        assert_eq!(word(0, b"written"), (false, NOW));
        // A merge of something new warms it; one of what it holds leaves
        // it cold, its tag in place.
        let held = ks.state_of(0, b"kept").unwrap();
        let stamp = Stamp::from_unix_ms(ks.clock.physical_unix_ms() + 1, NodeId(2));
        let newer = ks
            .state_of(0, b"merged")
            .unwrap()
            .coll_write(stamp, Kind::Hash, |c, d| c.hset_into(d, stamp, b"x", b"y"));
        for (key, delta) in [(&b"merged"[..], &newer), (b"kept", &held)] {
            let mut l = locked(&ks, key);
            l.shard(ks.shard_of(key)).unwrap().dbs[0].merge(key, delta, ks.gc_acked());
        }
        assert_eq!(word(0, b"merged"), (false, NOW));
        assert_eq!(word(0, b"kept"), (true, hash_tag.1));
        // A flush older than the key reads it back.
        {
            let mut all = ks.lock_all();
            for shard in all.shards() {
                shard.dbs[0].flush(Stamp::from_unix_ms(1, NodeId(2)));
            }
        }
        assert_eq!(word(0, b"flushed"), (false, NOW));
        assert_eq!(word(0, b"kept"), (false, NOW));
        // SWAPDB brings a database's cold keys back.
        fill(1);
        {
            let mut all = ks.lock_all();
            for shard in all.shards() {
                shard.dbs.swap(0, 1);
                shard.swapped(0, 1);
            }
        }
        assert_eq!(word(0, b"swapped"), (false, NOW));
        assert_eq!(ks.cold_keys(), 0);
    }

    #[test]
    fn a_cold_key_expires_and_swapdb_brings_cold_keys_back_to_their_new_number() {
        let (ks, _tier, persistence) = tiered();
        let now = ks.clock.physical_unix_ms();
        for (key, at) in [(&b"soon"[..], now + 50), (b"kept", 0)] {
            let mut l = locked(&ks, key);
            ks.update(&mut l, 1, key, 0, |w| w.set(Some(b"value"), at))
                .unwrap();
        }
        persistence.cut_once().unwrap();
        assert!(ks.move_cold(1, b"soon") && ks.move_cold(1, b"kept"));
        assert_eq!(ks.active_expire_cycle(now + 100, 10), 1);
        assert!(ks.state_of(1, b"soon").is_none_or(|s| !s.exists(0)));
        assert_eq!(ks.cold_keys(), 1);
        {
            let mut all = ks.lock_all();
            for shard in all.shards() {
                shard.dbs.swap(0, 1);
                shard.swapped(0, 1);
            }
        }
        assert_eq!(ks.cold_keys(), 0);
        persistence.cut_once().unwrap();
        assert!(ks.move_cold(0, b"kept"));
        assert_eq!(value(&ks, b"kept").as_deref(), Some(&b"value"[..]));
    }

    #[test]
    fn a_merge_that_changes_nothing_leaves_a_cold_key_cold() {
        let (ks, tier, persistence) = tiered();
        let mut l = locked(&ks, b"k");
        ks.update(&mut l, 0, b"k", 0, |w| w.set(Some(&[b'v'; 2000]), 0))
            .unwrap();
        drop(l);
        persistence.cut_once().unwrap();
        assert!(ks.move_cold(0, b"k"));
        let held = ks.state_of(0, b"k").unwrap();
        let acked = ks.gc_acked();
        let newer = held.write(ks.clock.now(), Some(b"newer"), 0);
        let mut l = locked(&ks, b"k");
        let d = &mut l.shard(ks.shard_of(b"k")).unwrap().dbs[0];
        // What a state transfer or a duplicate delivery brings: held already.
        d.merge(b"k", &held, acked);
        assert_eq!(d.cold_keys, 1, "still cold");
        assert!(d
            .map
            .entry(b"k")
            .is_some_and(|e| e.key.is_cold() && !e.key.is_dirty()));
        assert_eq!(d.indexed(b"k").unwrap().heap_bytes(), 0);
        // A write it lacks brings it back, changed.
        d.merge(b"k", &newer, acked);
        assert_eq!(d.cold_keys, 0);
        assert!(d
            .map
            .entry(b"k")
            .is_some_and(|e| !e.key.is_cold() && e.key.is_dirty()));
        assert_eq!(
            d.get(b"k").unwrap().read(0).render().as_deref(),
            Some(&b"newer"[..])
        );
        drop(l);
        assert_eq!(ks.cold_keys(), 0);
        assert_eq!(tier.warmed.load(Ordering::Relaxed), 1);
    }
}
