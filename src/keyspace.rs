//! The node's keyspace: every key's [`KeyState`], sharded by key hash.
//!
//! A shard is a mutex over one map per database. A command locks the shards
//! of its keys (in index order, so two commands never deadlock), runs, and
//! unlocks before any I/O. MULTI/EXEC and whole-keyspace commands lock every
//! shard. Every write is a delta: merged here exactly as a replica merges
//! it, then handed to the [`DeltaSink`] (replication, a later layer).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use chorus_crdt::digest::{
    bucket_of, key_digest, sub_bucket_of, Buckets, DbDigest, LeafDigest, TransferScope, BUCKETS,
};
use chorus_crdt::{
    Clock, Coll, Conflict, KeyState, KeyType, Kind, ManyWrite, NodeId, OneWrite, Stamp, Written,
};
use hashbrown::HashSet;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use crate::conflicts::ConflictLog;
use crate::flash::ColdTier;
use crate::key::Key;
use crate::keymap::{Entry, KeyMap};

/// Shards per keyspace: enough that worker threads rarely meet on one lock,
/// few enough that locking all of them (EXEC, FLUSHALL) stays cheap.
/// A divisor of the digest buckets (see `shard_of`).
pub const SHARDS: usize = 64;

/// The most keys, and key bytes, a piece of a digest reads under a shard's
/// lock (about a millisecond of digests of small hashes).
const DIGEST_PIECE_KEYS: usize = 256;
const DIGEST_PIECE_BYTES: usize = 256 * 1024;

/// How far ahead of a scan reading whole keys (digests, transfers) the
/// entries' allocations are asked for ([`prefetch_ahead`]).
const SCAN_AHEAD: usize = 8;

/// Asks the CPU for what reading the entry `SCAN_AHEAD` positions past
/// `position` will touch (its key's bytes, its value and boxes) and, in the
/// entry half as far on, whose boxes were asked for before, a small hash's
/// packed fields: a scan over a shard of a large keyspace otherwise waits
/// for each of those misses in turn.
fn prefetch_ahead(map: &KeyMap, position: usize) {
    use crate::prefetch::{read as prefetch, read_lines as lines};
    if let Some(entry) = map.at(position + SCAN_AHEAD) {
        prefetch(entry.key.as_ptr() as usize);
        let [value, extras, coll] = entry.state.heap_parts();
        for at in [value, extras].into_iter().flatten() {
            prefetch(at);
        }
        if let Some(at) = coll {
            lines(at, std::mem::size_of::<Coll>());
        }
    }
    let half = map.at(position + SCAN_AHEAD / 2);
    if let Some(coll) = half.and_then(|e| e.state.coll.as_deref()) {
        if let Some((at, len)) = coll.hash.packed_bytes() {
            lines(at, len);
        }
    }
}

/// Whether shard `index` holds any of the buckets in `buckets`.
pub fn shard_reached(buckets: &Buckets, index: usize) -> bool {
    (index * BUCKETS_PER_SHARD..(index + 1) * BUCKETS_PER_SHARD).any(|b| buckets.contains(b as u8))
}

/// Digest buckets per shard: bucket `b` lies wholly in shard `b / BUCKETS_PER_SHARD`.
pub const BUCKETS_PER_SHARD: usize = BUCKETS / SHARDS;
const _: () = assert!(BUCKETS.is_multiple_of(SHARDS));

/// Where local writes go: the replication layer. Borrowed parts, so a write
/// pays for exactly one encoding and no copies.
pub trait DeltaSink: Send + Sync {
    /// A write's delta for one key, made at `now_ms` (the command's time:
    /// the sink need not read the clock again).
    fn publish_key(&self, db: u32, key: &[u8], delta: &KeyState, now_ms: u64);
    /// A FLUSHDB (`Some(db)`) or FLUSHALL (`None`).
    fn publish_flush(&self, db: Option<u32>, stamp: Stamp, now_ms: u64);
    /// An increment of `node`'s tally on an existing key: by default its
    /// delta as a key state (`KeyState::tally_delta`); a sink may record
    /// it more briefly.
    fn publish_tally(
        &self,
        db: u32,
        key: &[u8],
        node: chorus_crdt::NodeId,
        tally: chorus_crdt::state::Tally,
        now_ms: u64,
    ) {
        self.publish_key(db, key, &KeyState::tally_delta(node, tally), now_ms);
    }
    /// A collection write's delta made in place: by default as a key state
    /// of that part alone; a sink may encode it without building one.
    fn publish_coll(&self, db: u32, key: &[u8], delta: &Coll, now_ms: u64) {
        let state = KeyState {
            reg: Default::default(),
            extras: None,
            coll: Some(Box::new(delta.clone())),
        };
        self.publish_key(db, key, &state, now_ms);
    }
    /// A one-element write made in place at `stamp` (what it did: `one`):
    /// `written` to the hash field, set member or sorted set member `elem`.
    /// By default as the delta `Coll` it would have filled; a sink may lay
    /// its bytes out directly (`codec::append_one_delta`).
    #[allow(clippy::too_many_arguments)]
    fn publish_one(
        &self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        one: &OneWrite,
        elem: &[u8],
        written: Written<'_>,
        now_ms: u64,
    ) {
        self.publish_coll(db, key, &one.delta(stamp, elem, written), now_ms);
    }
    /// A write of several elements of `kind` made in place at `stamp`
    /// (what it did: `many`). By default as the delta `Coll` it would have
    /// filled; a sink may lay its bytes out directly
    /// (`codec::append_many_write`).
    fn publish_many(
        &self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        kind: Kind,
        many: &ManyWrite,
        now_ms: u64,
    ) {
        self.publish_coll(db, key, &many.delta(stamp, kind), now_ms);
    }
    /// A PUBLISH or SPUBLISH made here, for the peers' subscribers: sent
    /// at most once, never stored.
    fn publish_message(&self, _space: crate::pubsub::Space, _channel: &[u8], _message: &[u8]) {}
    /// This thread starts a batch of commands (see [`Keyspace::batch`]):
    /// the sink may hold the writes' frames until
    /// [`DeltaSink::close_batch`] (numbered, as every write, when made).
    fn open_batch(&self) {}
    /// This thread's batch ends: what it held goes out.
    fn close_batch(&self) {}
    /// What this thread's open batch holds goes out now, before a command
    /// that may run long (writes other threads make meanwhile would wait
    /// behind it).
    fn hand_over(&self) {}
    /// The newest number a write of this node took (`None`: the sink
    /// numbers writes as it appends them to the log): `appendfsync always`
    /// waits for the log to hold every write up to it.
    fn numbered(&self) -> Option<u64> {
        None
    }
}

thread_local! {
    /// The delta an in-place collection write fills for the replication
    /// sink, reused command after command (`Coll::recycle_as_delta`).
    static DELTA: std::cell::RefCell<Coll> = std::cell::RefCell::new(Coll::default());
}

/// Runs `f` on an empty delta `Coll::delta(stamp, kind)`: this thread's
/// reused one, or a fresh one if that is in use.
fn with_delta<R>(stamp: Stamp, kind: Kind, f: impl FnOnce(&mut Coll) -> R) -> R {
    let mut reused = DELTA
        .try_with(|cell| {
            cell.try_borrow_mut()
                .ok()
                .map(|mut d| std::mem::take(&mut *d))
        })
        .ok()
        .flatten()
        .unwrap_or_default();
    reused.recycle_as_delta(stamp, kind);
    let r = f(&mut reused);
    // Nothing of the write (a large value) stays held until the next one.
    reused.recycle_as_delta(stamp, kind);
    let _ = DELTA.try_with(|cell| {
        if let Ok(mut d) = cell.try_borrow_mut() {
            *d = reused;
        }
    });
    r
}

thread_local! {
    /// What an in-place write of several elements records for the
    /// replication sink, reused command after command.
    static MANY: std::cell::RefCell<ManyWrite> = std::cell::RefCell::new(ManyWrite::default());
}

/// Runs `f` with this thread's reused [`ManyWrite`], empty (borrowed in
/// place: moving it in and out cost a three-field HSET 230 instructions),
/// or with a fresh one if that is in use.
fn with_many<R>(f: impl FnOnce(&mut ManyWrite) -> R) -> R {
    let mut f = Some(f);
    let mut run = |many: &mut ManyWrite| {
        many.clear();
        let r = f.take().map(|f| f(many));
        many.clear();
        // Nothing of a large write stays held until the next one.
        if many.bytes.capacity() > MANY_KEPT {
            many.bytes = Vec::new();
        }
        if many.dots.capacity() > MANY_KEPT / 16 {
            many.dots = Default::default();
        }
        if many.writes.capacity() > MANY_KEPT / 16 {
            many.writes = Default::default();
        }
        r
    };
    let reused = MANY
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut many) => run(&mut many),
            Err(_) => run(&mut ManyWrite::default()),
        })
        .ok()
        .flatten();
    match reused {
        Some(r) => r,
        None => run(&mut ManyWrite::default()).expect("`f` runs once"),
    }
}

/// The most element bytes a thread's reused [`ManyWrite`] keeps (and a
/// sixteenth as many dots and writes).
const MANY_KEPT: usize = 16 * 1024;

/// A batch of commands running on this thread (see [`Keyspace::batch`]).
/// Not `Send`: a batch never spans an await, where its task could move to
/// another thread and leave its writes behind in this one's stage.
pub struct Batch<'a> {
    sink: Option<&'a dyn DeltaSink>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if let Some(sink) = self.sink {
            sink.close_batch();
        }
    }
}

/// `tracking-table-max-keys`'s default (Redis's).
pub const DEFAULT_TRACKING_TABLE_MAX_KEYS: usize = 1_000_000;

/// The hasher of the keyspace's maps: random per process in production,
/// fixed by a seed in the simulation (so a seed replays byte for byte).
pub type KeyHasher = foldhash::fast::SeedableRandomState;

/// (database, key, encoded state or `None` when gone), as a cut stores it.
pub type StoredKey = (u32, Vec<u8>, Option<Vec<u8>>);

/// (database, key, state) as [`Keyspace::dump`] lists them.
pub type DumpedKey = (u32, Vec<u8>, KeyState);

/// One database inside one shard.
#[derive(Default)]
pub struct Db {
    pub map: KeyMap,
    /// Keys that read as present (ignoring expiry): tombstones are not keys.
    pub live: usize,
    /// (expire_at_ms, key) of every key with an expiry, for the active cycle.
    pub expiring: BTreeSet<(u64, Key)>,
    /// The latest FLUSHDB/FLUSHALL stamp applied to this database.
    pub floor: Stamp,
    /// When the node has a store: keys gone from `map` since the last cut
    /// (a key still there and changed carries its dirty flag instead:
    /// `Key::is_dirty`), and keys of a cut that could not be stored.
    pub gone: Option<HashSet<Key, KeyHasher>>,
    /// Shared by every database of the keyspace:
    /// `Keyspace::changes_besides_writes`.
    pub changes: Arc<AtomicU64>,
    /// Shared by every database of the keyspace: `Keyspace::collected`.
    pub collected: Arc<AtomicU64>,
    /// Shared by every database of the keyspace: the access clock a new
    /// key starts with (`Keyspace::access_clock`).
    pub access_clock: Arc<AtomicU32>,
    /// Shared by every database of the keyspace: how many entries all the
    /// `expiring` sets hold (`Keyspace::with_expiry`).
    pub with_expiry: Arc<AtomicU64>,
    /// Shared by every database of the keyspace: the sum of every `live`
    /// (`Keyspace::live_keys`).
    pub live_keys: Arc<AtomicU64>,
    /// The database's number where its cold keys are stored: SWAPDB moves
    /// it with the database until `Shard::swapped` brings them back.
    pub index: u32,
    /// The flash tier, if the node has one (see `crate::flash`).
    pub cold: Option<Arc<ColdTier>>,
    /// Keys of `map` that are cold.
    pub cold_keys: usize,
    /// Shared by every database of the keyspace: the epoch of the newest
    /// digest scan running, 0 when none runs (`Keyspace::hold_gc_at`).
    pub scan_epoch: Arc<AtomicU64>,
    /// Per bucket of this shard, the scan epoch of its last change while a
    /// scan ran: a bucket changed during a digest's scan may hold writes the
    /// digest missed (see `Keyspace::unsettled_since`).
    pub bucket_epochs: [u64; BUCKETS_PER_SHARD],
}

/// The shard holding digest bucket `bucket`.
pub fn shard_of_bucket(bucket: u8) -> usize {
    bucket as usize / BUCKETS_PER_SHARD
}

fn is_live(state: &KeyState) -> bool {
    state.exists(0)
}

/// Keys a fold took (see `Keyspace::take_changed`), per shard: (database,
/// key).
pub type TakenKeys = Vec<Vec<(u32, Key)>>;

/// Appends the current states of `names` in `shard` to `into` (see
/// `Keyspace::encode_taken`).
fn encode_in(
    shard: &mut Shard,
    names: &[(u32, Key)],
    into: &mut Vec<StoredKey>,
) -> Result<(), CutError> {
    for (db, key) in names {
        let Some(d) = shard.dbs.get(*db as usize) else {
            continue;
        };
        match d.map.entry(key) {
            // Not while a fold runs (`ColdTier::folding`); a cold key is
            // in the store as it is.
            Some(entry) if entry.key.is_cold() => {}
            Some(entry) => {
                let state = chorus_crdt::encode(&entry.state)
                    .map_err(|e| CutError::Encode(String::from_utf8_lossy(key).into_owned(), e))?;
                into.push((*db, key.to_vec(), Some(state)));
            }
            None => into.push((*db, key.to_vec(), None)),
        }
    }
    Ok(())
}

/// A cold key's state from the store, as RAM would hold it now: without
/// what a flush since removed, compacted to the GC floor (so a digest of it
/// matches a peer's of the same writes).
fn read_cold(tier: &ColdTier, db: u32, key: &[u8], floor: Stamp, gc_acked: Stamp) -> KeyState {
    as_in_ram(tier.read(db, key), floor, gc_acked)
}

/// A state read from the store as RAM would hold it: see [`read_cold`].
fn as_in_ram(mut state: KeyState, floor: Stamp, gc_acked: Stamp) -> KeyState {
    if !floor.is_zero() {
        state.prune(floor);
    }
    state.compact(gc_acked);
    state
}

/// Cold keys a scan met under a shard's lock, read from the flash tier
/// once the lock is released ([`ColdReads::read`]): a disk read under the
/// lock would hold up every write to the shard for its length.
///
/// Read later, a key's stored state is still at least what it was when the
/// scan met it: a cold key's record is written only while the key is warm
/// again, and then with a newer state, and removed only after the key
/// was. A key whose record is gone by then is skipped, as if the scan had
/// come after its removal. (The one exception is a SWAPDB between, which
/// rewrites a database number's records with the other database's keys:
/// a replicating node refuses SWAPDB, so only a standalone node's
/// CRDT.DIGEST can mix the two, as a digest taken across it would.)
#[derive(Default)]
pub struct ColdReads {
    tier: Option<Arc<ColdTier>>,
    acked: Stamp,
    /// (database, where its cold keys are stored, its flush floor, key),
    /// in the order met.
    keys: std::collections::VecDeque<(u32, u32, Stamp, Vec<u8>)>,
}

impl ColdReads {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Reads the keys met, in order, handing each state still stored to
    /// `f(db, key, state)` as [`Db::peek`] would have read it, until what
    /// `f` returns adds up to `budget` (one key at least); the rest wait
    /// for the next call. `acked_now` is the keyspace's GC floor read just
    /// before: a state is compacted to the lower of it and the floor when
    /// met (a floor may be lowered meanwhile, `cap_gc_floor`).
    pub fn read<E>(
        &mut self,
        acked_now: Stamp,
        budget: usize,
        mut f: impl FnMut(u32, &[u8], &KeyState) -> Result<usize, E>,
    ) -> Result<(), E> {
        let acked = self.acked.min(acked_now);
        let Some(tier) = self.tier.clone() else {
            self.keys.clear();
            return Ok(());
        };
        let mut spent = 0;
        while spent < budget {
            let Some((db, index, floor, key)) = self.keys.pop_front() else {
                break;
            };
            let Some(state) = tier.read_if_held(index, &key) else {
                continue;
            };
            tier.peeked.fetch_add(1, Ordering::Relaxed);
            spent += f(db, &key, &as_in_ram(state, floor, acked))?;
        }
        Ok(())
    }

    /// Adds the keys met to `digests`, each compacted to `floor` (see
    /// [`Keyspace::digest_piece`]).
    pub fn add_digests<D: Digests + ?Sized>(
        &mut self,
        floor: Stamp,
        digests: &mut D,
        scratch: &mut Vec<u8>,
    ) -> Result<(), chorus_crdt::EncodeError> {
        self.acked = floor;
        self.read(floor, usize::MAX, |db, key, state| {
            if !state.collectable(floor) {
                digests.add(db, key, key_digest(key, state, scratch)?);
            }
            Ok(1)
        })
    }
}

/// How far the GC floor moves at a time: 4 s of HLC time (uhlc's NTP64
/// counts 2^32 to the second). Tombstones wait up to this much longer for
/// collection; in exchange nodes compact to the same floors, and a repair
/// offer compares states as both nodes hold them compacted to one floor
/// (without it, a bucket read just before a sweep on one node and just
/// after it on the other differed, and was resent whole for nothing).
pub const GC_STEP: u64 = 1 << 34;

/// The GC floor `time` lies in the step of: the last multiple of
/// [`GC_STEP`] at or below it (no peers: everything stays everything).
fn gc_step_of(time: u64) -> u64 {
    match time {
        u64::MAX => u64::MAX,
        time => time & !(GC_STEP - 1),
    }
}

/// What a digest of the keyspace adds its keys and floors to, a shard at a
/// time ([`Keyspace::digest_piece`]).
pub trait Digests {
    fn add(&mut self, db: u32, key: &[u8], key_digest: u64);
    fn floor(&mut self, db: u32, floor: Stamp);
    /// Undoes what the keys of shard `index` added: the buckets of a shard,
    /// and the leaves within them, hold its keys alone.
    fn forget_shard(&mut self, index: usize);
}

/// The part of `slots` (one per bucket, or per leaf within them) that
/// shard `index`'s keys fall in.
fn shard_slots(slots: &mut [u64], index: usize) -> &mut [u64] {
    let per_shard = slots.len() / SHARDS;
    &mut slots[index * per_shard..(index + 1) * per_shard]
}

/// One digest per database, by bucket (a peer's repair offer).
impl Digests for Vec<DbDigest> {
    fn add(&mut self, db: u32, key: &[u8], key_digest: u64) {
        self[db as usize].add(key, key_digest);
    }

    fn floor(&mut self, db: u32, floor: Stamp) {
        let digest = &mut self[db as usize];
        digest.floor = digest.floor.max(floor);
    }

    fn forget_shard(&mut self, index: usize) {
        for digest in self.iter_mut() {
            shard_slots(&mut digest.buckets, index).fill(0);
        }
    }
}

/// One digest of `2^bits` leaves per database, made when it first has a
/// key or a floor (a transfer of what differs).
pub struct LeafDigests {
    pub bits: u8,
    pub dbs: Vec<Option<LeafDigest>>,
}

impl LeafDigests {
    fn of(&mut self, db: u32) -> &mut LeafDigest {
        let bits = self.bits;
        self.dbs[db as usize].get_or_insert_with(|| LeafDigest::empty(db, bits))
    }
}

impl Digests for LeafDigests {
    fn add(&mut self, db: u32, key: &[u8], key_digest: u64) {
        self.of(db).add(key, key_digest);
    }

    fn floor(&mut self, db: u32, floor: Stamp) {
        if !floor.is_zero() {
            let digest = self.of(db);
            digest.floor = digest.floor.max(floor);
        }
    }

    fn forget_shard(&mut self, index: usize) {
        for digest in self.dbs.iter_mut().flatten() {
            shard_slots(&mut digest.leaves, index).fill(0);
        }
    }
}

/// Where a digest of one shard taken in pieces stands
/// ([`Keyspace::digest_piece`]).
#[derive(Debug, Default, Clone)]
pub struct DigestScan {
    scan: ShardScan,
    /// The rest in one piece: the shard's map was compacted under the scan.
    whole: bool,
}

/// Where a scan of one shard that releases its lock between pieces
/// stands ([`Keyspace::scan_piece`]).
#[derive(Debug, Default, Clone)]
pub struct ShardScan {
    db: usize,
    position: usize,
    /// The epoch of the database's map at `position` (`KeyMap::epoch`).
    epoch: Option<u64>,
    /// A database was compacted under the scan, which started it over:
    /// its keys met before may be met again.
    started_over: bool,
}

impl Db {
    /// The state of `key`, tombstones included. A cold key must have been
    /// warmed (the dispatcher warms a command's named keys): its state here
    /// is a stand-in (see `crate::flash`).
    pub fn get(&self, key: &[u8]) -> Option<&KeyState> {
        let entry = self.map.entry(key)?;
        debug_assert!(!entry.key.is_cold(), "{key:?} read cold");
        Some(&entry.state)
    }

    /// The state of `key`, or a cold key's stand-in: enough to tell
    /// whether the key exists and when it expires, without a disk read.
    pub fn indexed(&self, key: &[u8]) -> Option<&KeyState> {
        self.map.get(key)
    }

    /// What `entry` (of this database) holds at `now_ms`, a cold one's
    /// told by the index (`flash::type_tag`) without a disk read.
    pub fn type_of(&self, entry: &Entry, now_ms: u64, gc_acked: Stamp) -> Option<KeyType> {
        if entry.key.is_cold() {
            if !entry.state.exists(now_ms) {
                return None;
            }
            if let Some(t) = crate::flash::tagged_type(entry.clock()) {
                return Some(t);
            }
        }
        self.peek_entry(entry, gc_acked).key_type(now_ms)
    }

    /// Brings a cold `key`'s state back into RAM; nothing if it is not cold.
    pub fn warm(&mut self, key: &[u8], gc_acked: Stamp) {
        self.entry_warmed(key, gc_acked, true);
    }

    /// `key`'s entry, with one lookup, its state brought back into RAM
    /// first if it is cold and `warm`.
    pub fn entry_warmed(&mut self, key: &[u8], gc_acked: Stamp, warm: bool) -> Option<&mut Entry> {
        let Db {
            map,
            cold,
            index,
            floor,
            cold_keys,
            access_clock,
            ..
        } = self;
        let entry = map.entry_mut(key)?;
        if let (true, true, Some(tier)) = (warm, entry.key.is_cold(), cold.as_deref()) {
            let stand_in = std::mem::replace(
                &mut entry.state,
                read_cold(tier, *index, key, *floor, gc_acked),
            );
            entry.key.set_cold(false);
            // Its word held its type (`flash::type_tag`): a clock again.
            entry.set_clock(access_clock.load(Ordering::Relaxed));
            *cold_keys -= 1;
            tier.note_warmed(stand_in.expire_at_ms());
        }
        Some(entry)
    }

    /// `key`'s state wherever it is, tombstones included, without bringing
    /// a cold one back into RAM (a digest, a transfer, a dump).
    pub fn peek(&self, key: &[u8], gc_acked: Stamp) -> Option<Cow<'_, KeyState>> {
        let entry = self.map.entry(key)?;
        Some(self.peek_entry(entry, gc_acked))
    }

    /// Every key and its state as [`Db::peek`] reads it, tombstones
    /// included.
    pub fn states(&self, gc_acked: Stamp) -> impl Iterator<Item = (&Key, Cow<'_, KeyState>)> {
        self.map
            .entries()
            .map(move |e| (&e.key, self.peek_entry(e, gc_acked)))
    }

    /// An entry's state as [`Db::peek`] reads it.
    pub fn peek_entry<'a>(&self, entry: &'a Entry, gc_acked: Stamp) -> Cow<'a, KeyState> {
        match &self.cold {
            Some(tier) if entry.key.is_cold() => {
                tier.peeked.fetch_add(1, Ordering::Relaxed);
                Cow::Owned(read_cold(
                    tier, self.index, &entry.key, self.floor, gc_acked,
                ))
            }
            _ => Cow::Borrowed(&entry.state),
        }
    }

    /// An entry's state if it is in RAM; a cold one's is left to `cold`, to
    /// be read once the shard's lock is released.
    pub fn peek_or_defer<'a>(
        &self,
        db: u32,
        entry: &'a Entry,
        gc_acked: Stamp,
        cold: &mut ColdReads,
    ) -> Option<&'a KeyState> {
        match &self.cold {
            Some(tier) if entry.key.is_cold() => {
                if cold.tier.is_none() {
                    cold.tier = Some(tier.clone());
                }
                cold.acked = gc_acked;
                cold.keys
                    .push_back((db, self.index, self.floor, entry.key.to_vec()));
                None
            }
            _ => Some(&entry.state),
        }
    }

    /// Moves `key`'s state out of RAM into the flash tier, leaving its
    /// stand-in. Only a live key whose newest state the store holds (clean,
    /// and no fold pending) can go. Whether it went.
    pub fn make_cold(&mut self, key: &[u8]) -> bool {
        let Some(tier) = &self.cold else {
            return false;
        };
        if tier.folding() {
            return false;
        }
        let Some(entry) = self.map.entry_mut(key) else {
            return false;
        };
        if entry.key.is_cold() || entry.key.is_dirty() || !is_live(&entry.state) {
            return false;
        }
        let tag = crate::flash::type_tag(&entry.state);
        entry.state = crate::flash::stand_in(&entry.state);
        entry.key.set_cold(true);
        entry.set_clock(tag);
        self.cold_keys += 1;
        tier.note_moved_out(entry.state.expire_at_ms());
        true
    }

    /// Runs `f` on `key`'s state (created empty if absent) with one hash
    /// lookup, then keeps `live`, `expiring` and GC in step with the change.
    pub fn change<R>(
        &mut self,
        key: &[u8],
        gc_acked: Stamp,
        f: impl FnOnce(&mut KeyState) -> R,
    ) -> R {
        let Db {
            map,
            live,
            expiring,
            floor,
            gone,
            changes,
            collected,
            access_clock,
            with_expiry,
            live_keys,
            index,
            cold,
            cold_keys,
            scan_epoch,
            bucket_epochs,
        } = self;
        match scan_epoch.load(Ordering::Relaxed) {
            0 => {}
            epoch => bucket_epochs[bucket_of(key) as usize % BUCKETS_PER_SHARD] = epoch,
        }
        let entry = map.get_or_insert(key, access_clock.load(Ordering::Relaxed));
        // A cold key's state comes back for the change, and goes back to
        // disk if the change leaves it as it was (a merge of what it holds
        // already, a transfer's forgetting of nothing): a full state
        // transfer must not bring every cold key into RAM.
        let mut was_cold = None;
        if entry.key.is_cold() {
            if let Some(tier) = cold.as_deref() {
                let read = read_cold(tier, *index, key, *floor, gc_acked);
                was_cold = Some((std::mem::replace(&mut entry.state, read.clone()), read));
            }
        }
        if gone.is_some() && was_cold.is_none() {
            entry.key.set_dirty(true);
        }
        // `expiring` holds live keys only: an expiry field left under a
        // tombstone expires nothing (and GC may drop it at any moment).
        let was_live = is_live(&entry.state);
        let old_at = if was_live {
            entry.state.expire_at_ms()
        } else {
            0
        };
        let result = f(&mut entry.state);
        if !floor.is_zero() {
            entry.state.prune(*floor);
        }
        if let Some((stand_in, read)) = was_cold {
            if entry.state == read {
                entry.state = stand_in;
                return result;
            }
            entry.key.set_cold(false);
            entry.set_clock(access_clock.load(Ordering::Relaxed));
            if gone.is_some() {
                entry.key.set_dirty(true);
            }
            *cold_keys -= 1;
            if let Some(tier) = cold.as_deref() {
                tier.note_warmed(stand_in.expire_at_ms());
            }
        }
        let state = &mut entry.state;
        let drop = state.is_empty() || state.collectable(gc_acked);
        let compacted = if drop {
            !state.is_empty()
        } else {
            state.compact(gc_acked)
        };
        if compacted {
            changes.fetch_add(1, Ordering::Relaxed);
            collected.fetch_max(gc_acked.time, Ordering::Relaxed);
        }
        let now_live = !drop && is_live(state);
        let new_at = if now_live { state.expire_at_ms() } else { 0 };
        if drop {
            map.remove(key);
            if let Some(gone) = gone {
                gone.insert(Key::new(key));
            }
        }
        if old_at != new_at {
            if old_at != 0 && expiring.remove(&(old_at, Key::new(key))) {
                with_expiry.fetch_sub(1, Ordering::Relaxed);
            }
            if new_at != 0 && expiring.insert((new_at, Key::new(key))) {
                with_expiry.fetch_add(1, Ordering::Relaxed);
            }
        }
        match (was_live, now_live) {
            (false, true) => {
                *live += 1;
                live_keys.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                *live -= 1;
                live_keys.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        result
    }

    /// Merges a replicated `delta` into `key`; returns the conflicts resolved.
    pub fn merge(&mut self, key: &[u8], delta: &KeyState, gc_acked: Stamp) -> Vec<Conflict> {
        self.change(key, gc_acked, |state| state.merge(delta))
    }

    /// [`Db::merge`] of a delta given by value.
    pub fn merge_owned(&mut self, key: &[u8], delta: KeyState, gc_acked: Stamp) -> Vec<Conflict> {
        self.change(key, gc_acked, |state| state.merge_owned(delta))
    }

    /// Applies a flush stamped `stamp`: everything older goes.
    pub fn flush(&mut self, stamp: Stamp) {
        // Every bucket of the shard changes: a digest under way names them
        // all unsettled.
        if let epoch @ 1.. = self.scan_epoch.load(Ordering::Relaxed) {
            self.bucket_epochs = [epoch; BUCKETS_PER_SHARD];
        }
        self.floor = self.floor.max(stamp);
        let floor = self.floor;
        let gone = &mut self.gone;
        let tracking = gone.is_some();
        for entry in self.map.entries_mut() {
            if entry.key.is_cold() {
                let Some(tier) = &self.cold else { continue };
                // A stand-in's stamp is its key's newest: older than the
                // floor, the whole state goes (its stored copy at the next
                // fold); else the parts after the floor stay.
                let expire_at = entry.state.expire_at_ms();
                if entry.state.latest_stamp() >= floor {
                    entry.state = read_cold(tier, self.index, &entry.key, Stamp::ZERO, Stamp::ZERO);
                    tier.note_warmed(expire_at);
                } else {
                    entry.state = KeyState::default();
                    tier.note_gone(expire_at);
                }
                entry.key.set_cold(false);
                entry.set_clock(self.access_clock.load(Ordering::Relaxed));
                self.cold_keys -= 1;
            }
            entry.state.prune(floor);
            entry.key.set_dirty(tracking);
            if entry.state.is_empty() {
                if let Some(gone) = gone.as_mut() {
                    gone.insert(Key::new(&entry.key));
                }
            }
        }
        self.map.retain(|_, s| !s.is_empty());
        let live = self.map.values().filter(|s| is_live(s)).count();
        self.live_keys
            .fetch_sub(self.live as u64, Ordering::Relaxed);
        self.live_keys.fetch_add(live as u64, Ordering::Relaxed);
        self.live = live;
        self.with_expiry
            .fetch_sub(self.expiring.len() as u64, Ordering::Relaxed);
        self.expiring = self
            .map
            .iter()
            .filter(|(_, s)| is_live(s) && s.expire_at_ms() != 0)
            .map(|(k, s)| (s.expire_at_ms(), k.clone()))
            .collect();
        self.with_expiry
            .fetch_add(self.expiring.len() as u64, Ordering::Relaxed);
    }

    /// The newest stamp this database holds: its flush floor, and every
    /// stamp in every key's state.
    pub fn latest_stamp(&self) -> Stamp {
        self.map
            .values()
            .map(KeyState::latest_stamp)
            .fold(self.floor, Stamp::max)
    }

    /// Keys with an expiry (that are live).
    pub fn expires_count(&self) -> usize {
        self.expiring.len()
    }
}

/// A shard: one map per database, plus hit/miss counters kept under its lock
/// so reads pay no shared atomic.
pub struct Shard {
    pub dbs: Vec<Db>,
    pub hits: u64,
    pub misses: u64,
}

impl Shard {
    /// Databases `a` and `b` were just swapped: with a store, every key of
    /// either is changed at both numbers (written where it now is, removed
    /// where it was).
    pub fn swapped(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        let (low, high) = self.dbs.split_at_mut(a.max(b));
        low[a.min(b)].map.swap_hints(&mut high[0].map);
        // Each database's cold keys are stored at its old number, where
        // they are about to be removed: they come back into RAM first, to
        // be written where they now are.
        for d in [a, b] {
            let db = &mut self.dbs[d];
            if db.cold_keys > 0 {
                let cold: Vec<Key> = db.map.keys().filter(|k| k.is_cold()).cloned().collect();
                for key in cold {
                    db.warm(&key, Stamp::ZERO);
                }
            }
            db.index = d as u32;
        }
        if self.dbs[a].gone.is_none() {
            return;
        }
        // What the store holds at one number and the other no longer has
        // there: every key (and removal) of the database that moved away.
        let held_at = |d: &Db| -> Vec<Key> {
            d.map
                .keys()
                .chain(d.gone.iter().flatten())
                .map(|k| Key::new(k))
                .collect()
        };
        let (was_a, was_b) = (held_at(&self.dbs[b]), held_at(&self.dbs[a]));
        for (d, was) in [(a, was_a), (b, was_b)] {
            let db = &mut self.dbs[d];
            for entry in db.map.entries_mut() {
                entry.key.set_dirty(true);
            }
            if let Some(gone) = &mut db.gone {
                gone.extend(was);
            }
        }
    }
}

/// A local write in progress on one key: reads its state, applies deltas.
/// A key whose expiry had passed was already turned into its delete.
pub struct Writer<'a> {
    state: &'a mut KeyState,
    ks: &'a Keyspace,
    db: usize,
    key: &'a [u8],
    now_ms: u64,
    /// The database's flush floor when the write began.
    floor: Stamp,
    /// Whether anything was written: a command that changed nothing tells
    /// no one.
    wrote: bool,
}

impl Writer<'_> {
    pub fn state(&self) -> &KeyState {
        self.state
    }

    /// What the key shows now (`None`: it does not exist).
    pub fn key_type(&self) -> Option<KeyType> {
        self.state.key_type(self.now_ms)
    }

    /// Whether the key shows a hash, set or sorted set.
    pub fn shows_collection(&self) -> bool {
        matches!(self.key_type(), Some(KeyType::Coll(_)))
    }

    /// Runs a collection command of `kind` (the caller checked the key
    /// shows `kind` or nothing): `ops` adds its element writes to the delta
    /// against the current collection part, stamped as given. A key that
    /// shows nothing but holds hidden parts (a string under a collection,
    /// elements a concurrent write kept) is deleted first, and again if the
    /// command empties it: a key a client saw vanish must not come back as
    /// something it never wrote.
    /// Nothing but that delete is written when `ops` fails.
    pub fn coll_write<R, E>(
        &mut self,
        kind: Kind,
        ops: impl FnOnce(&Coll, &mut Coll, Stamp) -> Result<R, E>,
    ) -> Result<R, E> {
        if !self.visible() && self.state.has_hidden_parts() {
            self.set(None, 0);
        }
        let stamp = self.stamp();
        let mut result = None;
        let delta = self
            .state
            .coll_write(stamp, kind, |c, d| result = Some(ops(c, d, stamp)));
        let r = match result {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(e),
            None => unreachable!("KeyState::coll_write runs its ops"),
        };
        if delta.coll().is_some_and(Coll::names_nothing) {
            // Nothing written: no write to apply or replicate.
            return Ok(r);
        }
        self.apply(delta);
        self.dots_issued(stamp);
        if !self.state.exists(0) && self.state.has_hidden_parts() {
            self.set(None, 0);
        }
        Ok(r)
    }

    /// Runs `op` in place on the collection part when the key shows
    /// `kind` and hides nothing (the common case), publishing the delta it
    /// fills when a replication sink wants one. `None` when that does not
    /// hold or `op` declines; nothing was changed then.
    pub fn coll_in_place<R>(
        &mut self,
        kind: Kind,
        op: impl FnOnce(&mut Coll, Option<&mut Coll>, Stamp) -> Option<R>,
    ) -> Option<R> {
        if !self.state.shows_only(kind, self.now_ms) {
            return None;
        }
        let stamp = self.stamp();
        if self.ks.sink.is_none() {
            let coll = self.state.coll.as_mut()?;
            prefetch_expected(coll);
            let r = op(coll, None, stamp)?;
            self.wrote_in_place(stamp);
            return Some(r);
        }
        with_delta(stamp, kind, |delta| {
            let coll = self.state.coll.as_mut()?;
            prefetch_expected(coll);
            let r = op(coll, Some(&mut *delta), stamp)?;
            self.wrote_in_place(stamp);
            if let Some(sink) = self.ks.sink.as_ref().filter(|_| !delta.names_nothing()) {
                sink.publish_coll(self.db as u32, self.key, delta, self.now_ms);
            }
            Some(r)
        })
    }

    /// [`Writer::coll_in_place`] for a write of several elements (HSET,
    /// SADD, ZADD of many): `op` records what it did in a [`ManyWrite`]
    /// when a sink wants it, and the sink lays out the delta directly.
    pub fn many_in_place<R>(
        &mut self,
        kind: Kind,
        op: impl FnOnce(&mut Coll, Option<&mut ManyWrite>, Stamp) -> Option<R>,
    ) -> Option<R> {
        if !self.state.shows_only(kind, self.now_ms) {
            return None;
        }
        let stamp = self.stamp();
        let ks = self.ks;
        let Some(sink) = ks.sink.as_ref() else {
            let coll = self.state.coll.as_mut()?;
            prefetch_expected(coll);
            let r = op(coll, None, stamp)?;
            self.wrote_in_place(stamp);
            return Some(r);
        };
        with_many(|many| {
            let coll = self.state.coll.as_mut()?;
            prefetch_expected(coll);
            let r = op(coll, Some(&mut *many), stamp)?;
            self.wrote_in_place(stamp);
            if !many.names_nothing() {
                sink.publish_many(self.db as u32, self.key, stamp, kind, many, self.now_ms);
            }
            Some(r)
        })
    }

    /// A write of one element `elem` in place when the key shows `kind`
    /// and hides nothing (see [`Writer::coll_in_place`]): `op` writes it
    /// (`hset_here`, `sadd_here`, `zadd_here`), recording what it did in a
    /// [`OneWrite`] when a sink wants it, and answers with its result and
    /// what it wrote (`None`: nothing, as ZADD NX of a member there). The
    /// sink lays out the delta directly. `None` when the path does not
    /// apply or `op` declines; nothing was changed then.
    pub fn one_in_place<'e, R>(
        &mut self,
        kind: Kind,
        elem: &[u8],
        op: impl FnOnce(&mut Coll, Option<&mut OneWrite>, Stamp) -> Option<(R, Option<Written<'e>>)>,
    ) -> Option<R> {
        if !self.state.shows_only(kind, self.now_ms) {
            return None;
        }
        let stamp = self.stamp();
        let ks = self.ks;
        let coll = self.state.coll.as_mut()?;
        prefetch_expected(coll);
        let mut one = OneWrite::default();
        let record = ks.sink.is_some().then_some(&mut one);
        let (r, written) = op(coll, record, stamp)?;
        self.wrote_in_place(stamp);
        if let (Some(sink), Some(written)) = (ks.sink.as_ref(), written) {
            sink.publish_one(
                self.db as u32,
                self.key,
                stamp,
                &one,
                elem,
                written,
                self.now_ms,
            );
        }
        Some(r)
    }

    /// Bookkeeping after an in-place op: an op may answer without writing
    /// (ZADD NX of a member there, an increment refused); what it wrote is
    /// stamped `stamp`.
    fn wrote_in_place(&mut self, stamp: Stamp) {
        if self.state.coll().is_some_and(|c| c.at == stamp) {
            self.wrote = true;
            self.dots_issued(stamp);
        }
    }

    /// A command that wrote several elements at `stamp` numbered their
    /// dots past its time: the clock moves past the last, so that the
    /// node's next write numbers its dots above them (dots never repeat).
    fn dots_issued(&self, stamp: Stamp) {
        let newest = self
            .state
            .coll()
            .and_then(|c| c.ctx.newest_from(stamp.node, stamp.time));
        if let Some(n) = newest.filter(|n| *n > stamp.time) {
            self.ks.clock.issued(Stamp {
                time: n,
                node: stamp.node,
            });
        }
    }

    /// Whether the key exists now.
    pub fn visible(&self) -> bool {
        self.state.exists(self.now_ms)
    }

    /// The key's expiry (unix ms) if it is visible, else 0: what a write
    /// that keeps the TTL carries over.
    pub fn kept_expiry(&self) -> u64 {
        if self.visible() {
            self.state.expire_at_ms()
        } else {
            0
        }
    }

    /// The stamp for this write: the node's clock, unless the key or its
    /// database's flush floor holds a stamp at or past it (merged from a peer
    /// whose clock runs ahead); then just after that. A write the node
    /// acknowledges replaces what the node had merged, on every node,
    /// whatever the clocks say (DESIGN.md, Replication: causality beats
    /// clocks).
    pub fn stamp(&self) -> Stamp {
        let now = self.ks.clock.now();
        let merged = self.state.latest_stamp().max(self.floor);
        if now > merged {
            now
        } else {
            let stamp = merged.next_after(now.node);
            self.ks.clock.issued(stamp);
            stamp
        }
    }

    /// Applies a local op's delta and publishes it to the replication layer.
    pub fn apply(&mut self, delta: KeyState) {
        self.wrote = true;
        if let Some(sink) = &self.ks.sink {
            sink.publish_key(self.db as u32, self.key, &delta, self.now_ms);
        }
        // Stamped after the state it replaces (see `stamp`), a local write
        // wins here; the merge still reports what it replaced unseen (a
        // concurrent write that arrived first) as a conflict, for the log.
        let conflicts = self.state.merge_owned(delta);
        self.ks
            .conflicts
            .record(self.db, self.key, self.now_ms, conflicts);
    }

    /// Writes `value` (or deletes, for `None`) expiring at `expire_at_ms`.
    /// In place (reusing the old value's allocation when it fits) unless a
    /// replication sink needs the delta.
    pub fn set(&mut self, value: Option<&[u8]>, expire_at_ms: u64) {
        self.wrote = true;
        let stamp = self.stamp();
        match &self.ks.sink {
            None => {
                self.state.write_in_place(stamp, value, expire_at_ms);
            }
            // The common case: a plain string key our write supersedes. No
            // conflict is possible and the new state is the delta itself.
            Some(sink)
                if stamp > self.state.reg.stamp
                    && self.state.extras.is_none()
                    && self.state.coll.is_none() =>
            {
                let is_delta = self.state.write_in_place(stamp, value, expire_at_ms);
                debug_assert!(is_delta);
                sink.publish_key(self.db as u32, self.key, self.state, self.now_ms);
            }
            Some(_) => {
                let delta = self.state.write(stamp, value, expire_at_ms);
                self.apply(delta);
            }
        }
    }

    /// Increments the key's counter on this node (INCRBY by `int`, or
    /// INCRBYFLOAT by `float` with `is_float`). In place: no delta is built
    /// unless a replication sink needs one.
    pub fn incr(&mut self, int: i64, float: f64, is_float: bool) {
        self.wrote = true;
        if !self.visible() && self.state.has_hidden_parts() {
            // A string a collection hid must not come back under the
            // increment: the key starts from nothing, as for a collection.
            self.set(None, 0);
        }
        let stamp = self.stamp();
        if !self.state.exists(0) {
            // Creating the key: the delta also says it has no TTL.
            let delta = self.state.incr(stamp, int, float, is_float);
            self.apply(delta);
            return;
        }
        let tally = self.state.incr_in_place(stamp, int, float, is_float);
        if let Some(sink) = &self.ks.sink {
            sink.publish_tally(self.db as u32, self.key, stamp.node, tally, self.now_ms);
        }
    }

    /// Sets the expiry field: absolute `at_ms`, 0 to persist.
    pub fn expire(&mut self, at_ms: u64) {
        let delta = self.state.expire(self.stamp(), at_ms);
        self.apply(delta);
    }

    /// The value as GET returns it, copied out (`None` when not visible).
    pub fn value(&self) -> Option<Vec<u8>> {
        if !self.visible() {
            return None;
        }
        self.state
            .read(0)
            .render()
            .map(std::borrow::Cow::into_owned)
    }
}

/// Where a key's lookup goes (its shard, and its hash in the shard's
/// maps), worked out once for the prefetches ahead of its command.
#[derive(Clone, Copy, Debug)]
pub struct KeyHint {
    shard: usize,
    hash: u64,
}

pub struct Keyspace {
    shards: Box<[Mutex<Shard>]>,
    /// Where each shard's map of each database keeps its table, by
    /// `shard * databases + db`: read without the shard's lock to prefetch
    /// (see [`Keyspace::prefetch`]).
    hints: Box<[Arc<crate::keytable::ChunksHint>]>,
    maps_hasher: KeyHasher,
    hasher: KeyHasher,
    databases: usize,
    pub clock: Clock,
    pub conflicts: ConflictLog,
    pub expired_keys: AtomicU64,
    /// Keys deleted by `maxmemory` eviction (INFO `evicted_keys`).
    pub evicted_keys: AtomicU64,
    /// The access clock a key starts with when it is created: the time for
    /// LRU, or minutes and a first count for LFU (see `crate::evict`).
    pub access_clock: Arc<AtomicU32>,
    /// Keys with an expiry, in every database: while there are none and no
    /// access clock is kept, a command touches nothing before it runs.
    pub with_expiry: Arc<AtomicU64>,
    /// Keys in every database (tombstones are not keys), read without a
    /// lock (MEMORY STATS, which may run inside an EXEC holding shards).
    pub live_keys: Arc<AtomicU64>,
    /// `maxmemory` and its policy (live: CONFIG SET shares them).
    pub limits: Arc<crate::evict::Limits>,
    sink: Option<Arc<dyn DeltaSink>>,
    /// Tombstones stamped at or before this time may go (see `gc_acked`).
    gc_time: AtomicU64,
    /// Bumped by every change to the state that is not a write (and so
    /// moves no version vector): collection, a transfer's forgetting.
    pub changes_besides_writes: Arc<AtomicU64>,
    /// A time at or after everything collection dropped (the floor's time
    /// less one when it dropped something), or a transfer's forgetting: a
    /// write older than it that arrives late may be one a delete gone from
    /// here had beaten (see `Replicator::reopen_if_clear`).
    collected: Arc<AtomicU64>,
    /// With a store: local write calls so far, so a connection can tell
    /// whether its batch wrote (`appendfsync always`).
    local_writes: AtomicU64,
    tracking: bool,
    /// Clients blocked on keys, woken by every change to them.
    pub waiters: crate::waiters::Waiters,
    /// Keys under WATCH, and the transactions a change to one fails.
    pub watches: Arc<crate::watches::Watches>,
    /// Subscribers, and the messages published to them.
    pub pubsub: Arc<crate::pubsub::PubSub>,
    /// CLIENT TRACKING: whom to tell when a key changes.
    pub invalidations: Arc<crate::tracking::Invalidations>,
    /// `notify-keyspace-events` (0: off).
    pub notify: Arc<crate::notify::Flags>,
    /// The flash tier (`storage-provider flash`), if the node has one.
    pub cold: Option<Arc<ColdTier>>,
    /// SWAPDBs so far: a fold storing keys a shard at a time checks that
    /// none came since it took them.
    swaps: AtomicU64,
    /// While a fold stores its keys, the GC floor it began with (see
    /// `cap_gc_for_fold`); `u64::MAX` otherwise.
    fold_cap: AtomicU64,
    /// While digests are taken, the lowest floor one compacts to (see
    /// [`Keyspace::hold_gc_at`]); `u64::MAX` otherwise. With how many hold it.
    digest_cap: AtomicU64,
    /// The floors digests under way hold collection at, each with how many
    /// hold it: the cap is the lowest, and moves up as those go (a single
    /// lowest-since-idle cap froze GC while scans overlapped).
    digest_holds: Mutex<std::collections::BTreeMap<u64, usize>>,
    /// The newest digest scan's epoch while one runs, else 0 (shared with
    /// every `Db`), and the last epoch given.
    scan_epoch: Arc<AtomicU64>,
    scan_epochs: AtomicU64,
}

/// A digest's scan under way: collection held at or below its floor, and
/// every bucket changed meanwhile marked ([`Keyspace::hold_gc_at`]);
/// released when dropped.
pub struct GcHold<'a> {
    ks: &'a Keyspace,
    floor: u64,
    /// This scan's epoch: buckets marked with it or a later one changed
    /// while it ran.
    pub epoch: u64,
}

impl Drop for GcHold<'_> {
    fn drop(&mut self) {
        let mut holds = self.ks.digest_holds.lock();
        if let Some(count) = holds.get_mut(&self.floor) {
            *count -= 1;
            if *count == 0 {
                holds.remove(&self.floor);
            }
        }
        let lowest = holds.keys().next().copied();
        self.ks
            .digest_cap
            .store(lowest.unwrap_or(u64::MAX), Ordering::Relaxed);
        if lowest.is_none() {
            self.ks.scan_epoch.store(0, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// See [`expect_elements`].
    static AHEAD: std::cell::Cell<Ahead> = const { std::cell::Cell::new(Ahead::NONE) };
}

/// Elements the next requests name on the key of the command about to
/// run, by stable hash (see [`expect_elements`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ahead {
    /// The next request's, whose entries to bring in.
    pub entries: Option<u64>,
    /// The request after next's, an increment, whose entries to bring in
    /// now and its counter box during the next command.
    pub after: Option<u64>,
    /// The next request's, an increment whose entries the command before
    /// brought in: its counter box to bring in.
    pub counter: Option<u64>,
}

impl Ahead {
    pub const NONE: Ahead = Ahead {
        entries: None,
        after: None,
        counter: None,
    };
}

/// Tells the command about to run on this thread which elements the next
/// requests name on its key. Once the command has found the key's
/// collection, it asks the CPU for what their lookups will read
/// ([`prefetch_expected`]): in a pipeline on one big hash, set or sorted
/// set, those are the misses each command would otherwise wait for.
pub fn expect_elements(ahead: Ahead) {
    AHEAD.set(ahead);
}

/// See [`expect_elements`]; at most once per announcement.
pub fn prefetch_expected(coll: &Coll) {
    let ahead = AHEAD.replace(Ahead::NONE);
    let lines = |(at, len): (usize, usize)| crate::prefetch::read_lines(at, len);
    for hash in [ahead.entries, ahead.after].into_iter().flatten() {
        if let Some(probe) = coll.first_probe(hash) {
            lines(probe);
        }
    }
    if let Some(probe) = ahead.counter.and_then(|h| coll.counter_probe(h)) {
        lines(probe);
    }
}

/// The shards one command holds, in index order.
pub struct Locked<'a> {
    guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 2]>,
    /// The key a single-key command locked for, by address and length, and
    /// its shard: the command's own lookups of that very slice need not
    /// hash it again.
    known: Option<(usize, usize, usize)>,
}

#[cfg(debug_assertions)]
thread_local! {
    /// Shard lock sets this thread holds. Each set is taken in ascending
    /// order at once; a second set taken while one is held could deadlock
    /// against a thread taking them the other way round.
    static SHARD_SETS_HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<'a> Locked<'a> {
    /// Counts a non-empty set as held by this thread (debug builds check
    /// the lock order with it).
    fn held(guards: SmallVec<[(usize, MutexGuard<'a, Shard>); 2]>) -> Locked<'a> {
        debug_assert!(
            guards.windows(2).all(|w| w[0].0 < w[1].0),
            "shards are locked in ascending order"
        );
        #[cfg(debug_assertions)]
        if !guards.is_empty() {
            SHARD_SETS_HELD.with(|n| n.set(n.get() + 1));
        }
        Locked {
            guards,
            known: None,
        }
    }

    /// The shard holding `key`, which `shard_of` names: the one worked out
    /// when the lock was taken if `key` is that very slice.
    pub fn shard_for(
        &mut self,
        key: &[u8],
        shard_of: impl FnOnce(&[u8]) -> usize,
    ) -> Result<&mut Shard, NotLocked> {
        let index = match self.known {
            Some((at, len, index)) if at == key.as_ptr() as usize && len == key.len() => index,
            _ => shard_of(key),
        };
        self.shard(index)
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        if !self.guards.is_empty() {
            SHARD_SETS_HELD.with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
}

/// Panics (in debug builds) when this thread already holds shard locks.
fn assert_no_shard_held() {
    #[cfg(debug_assertions)]
    SHARD_SETS_HELD.with(|n| {
        assert_eq!(
            n.get(),
            0,
            "shard locks taken while this thread holds others: lock order violated"
        )
    });
}

/// Why a cut could not be taken: each is a bug in the caller, or a state
/// the codec cannot encode.
#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error("a cut needs every shard locked")]
    NotAllLocked,
    #[error("the keyspace does not track changed keys (no store)")]
    NotTracking,
    #[error("cannot encode the state of key {0:?}: {1}")]
    Encode(String, chorus_crdt::codec::EncodeError),
    #[error("a SWAPDB came while the fold was storing keys; the next fold stores them")]
    Swapped,
}

/// A command touched a key whose shard it had not locked: a bug in a command
/// table entry, reported to the client rather than taking the node down.
#[derive(Debug, thiserror::Error)]
#[error("internal error: a shard was touched without its lock")]
pub struct NotLocked;

impl<'a> Locked<'a> {
    pub fn empty() -> Locked<'a> {
        Locked {
            guards: SmallVec::new(),
            known: None,
        }
    }

    pub fn shard(&mut self, index: usize) -> Result<&mut Shard, NotLocked> {
        if self.guards.len() == SHARDS {
            return Ok(&mut self.guards[index].1);
        }
        self.guards
            .iter_mut()
            .find(|(i, _)| *i == index)
            .map(|(_, g)| &mut **g)
            .ok_or(NotLocked)
    }

    /// Every locked shard, for whole-keyspace commands.
    pub fn shards(&mut self) -> impl Iterator<Item = &mut Shard> + use<'_, 'a> {
        self.guards.iter_mut().map(|(_, g)| &mut **g)
    }

    pub fn holds_all(&self) -> bool {
        self.guards.len() == SHARDS
    }
}

impl Keyspace {
    pub fn new(databases: usize, clock: Clock) -> Keyspace {
        Keyspace::with_hashers(databases, clock, KeyHasher::random(), KeyHasher::random())
    }

    /// A keyspace whose maps hash with `maps_hasher` and whose state
    /// transfers tag keys with `tags_hasher`.
    pub fn with_hashers(
        databases: usize,
        clock: Clock,
        tags_hasher: KeyHasher,
        maps_hasher: KeyHasher,
    ) -> Keyspace {
        let changes = Arc::new(AtomicU64::new(0));
        let collected = Arc::new(AtomicU64::new(0));
        let access_clock = Arc::new(AtomicU32::new(0));
        let with_expiry = Arc::new(AtomicU64::new(0));
        let live_keys = Arc::new(AtomicU64::new(0));
        let scan_epoch = Arc::new(AtomicU64::new(0));
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    dbs: (0..databases)
                        .map(|index| Db {
                            index: index as u32,
                            map: KeyMap::with_hasher(maps_hasher),
                            changes: changes.clone(),
                            collected: collected.clone(),
                            access_clock: access_clock.clone(),
                            with_expiry: with_expiry.clone(),
                            live_keys: live_keys.clone(),
                            scan_epoch: scan_epoch.clone(),
                            ..Db::default()
                        })
                        .collect(),
                    hits: 0,
                    misses: 0,
                })
            })
            .collect::<Box<[Mutex<Shard>]>>();
        let hints = shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .dbs
                    .iter()
                    .map(|d| d.map.hint())
                    .collect::<Vec<_>>()
            })
            .collect();
        let pubsub = Arc::new(crate::pubsub::PubSub::new());
        let invalidations = Arc::new(crate::tracking::Invalidations::new(
            DEFAULT_TRACKING_TABLE_MAX_KEYS,
            pubsub.clone(),
        ));
        Keyspace {
            shards,
            hints,
            maps_hasher,
            hasher: tags_hasher,
            databases,
            clock,
            conflicts: ConflictLog::default(),
            expired_keys: AtomicU64::new(0),
            evicted_keys: AtomicU64::new(0),
            access_clock,
            with_expiry,
            live_keys,
            limits: Default::default(),
            sink: None,
            gc_time: AtomicU64::new(u64::MAX),
            changes_besides_writes: changes,
            collected,
            local_writes: AtomicU64::new(0),
            tracking: false,
            waiters: Default::default(),
            watches: Default::default(),
            pubsub,
            invalidations,
            notify: Default::default(),
            cold: None,
            swaps: AtomicU64::new(0),
            fold_cap: AtomicU64::new(u64::MAX),
            digest_cap: AtomicU64::new(u64::MAX),
            digest_holds: Mutex::new(std::collections::BTreeMap::new()),
            scan_epoch,
            scan_epochs: AtomicU64::new(0),
        }
    }

    /// Brings the start of `key`'s lookup in database `db` into the CPU's
    /// cache, without a lock: a connection calls it for the request after
    /// the next one it holds before running the current one. Returns where
    /// the lookup goes, for that request's [`Keyspace::prefetch_entries`].
    pub fn prefetch(&self, db: usize, key: &[u8]) -> Option<KeyHint> {
        if db >= self.databases {
            return None;
        }
        let hint = KeyHint {
            shard: self.shard_of(key),
            hash: crate::keymap::key_hash(&self.maps_hasher, key),
        };
        self.hints[hint.shard * self.databases + db].prefetch(hint.hash);
        Some(hint)
    }

    /// Asks the CPU to bring in the entries a lookup of `key` in `db` will
    /// read, once its chunk came in (a [`Keyspace::prefetch`] one request
    /// earlier, whose answer is `hint`). Reads the table, so under the
    /// shard's lock: skipped when another thread holds it.
    pub fn prefetch_entries(&self, db: usize, key: &[u8], hint: Option<KeyHint>) {
        self.with_free_map(db, key, hint, KeyMap::prefetch_entries);
    }

    /// `f` with the map of `key` in `db` and the key's hash, if its shard's
    /// lock is free (a prefetch never waits for one).
    fn with_free_map(
        &self,
        db: usize,
        key: &[u8],
        hint: Option<KeyHint>,
        f: impl FnOnce(&KeyMap, u64),
    ) {
        let hint = hint.unwrap_or_else(|| KeyHint {
            shard: self.shard_of(key),
            hash: crate::keymap::key_hash(&self.maps_hasher, key),
        });
        if let Some(shard) = self.shards[hint.shard].try_lock() {
            if let Some(d) = shard.dbs.get(db) {
                f(&d.map, hint.hash);
            }
        }
    }

    /// Asks the CPU to bring in the bytes of a key too long to live in its
    /// entry, which the lookup of `key` will compare: once its entries came
    /// in (a [`Keyspace::prefetch_entries`] a command earlier). Without it,
    /// that comparison waited on memory in every lookup of such a key (a
    /// fifth of the time of an INCR on `counter:<12 digits>`).
    pub fn prefetch_key_bytes(&self, db: usize, key: &[u8], hint: Option<KeyHint>) {
        self.with_free_map(db, key, hint, KeyMap::prefetch_key_bytes);
    }

    /// Gives the keyspace a flash tier: from now on eviction moves keys
    /// into `tier`'s store instead of deleting them.
    pub fn set_cold_tier(&mut self, tier: Arc<ColdTier>) {
        for shard in self.shards.iter() {
            for db in shard.lock().dbs.iter_mut() {
                db.cold = Some(tier.clone());
            }
        }
        self.cold = Some(tier);
    }

    /// Keys whose state is in the flash tier only.
    pub fn cold_keys(&self) -> u64 {
        self.cold
            .as_ref()
            .map_or(0, |t| t.cold_keys.load(Ordering::Relaxed))
    }

    /// Delivers a message published by a local client to this node's
    /// subscribers and hands it to the replication sink for the peers'.
    /// Returns the local receivers, as PUBLISH answers.
    pub fn publish_message(
        &self,
        space: crate::pubsub::Space,
        channel: &[u8],
        message: &[u8],
    ) -> usize {
        if let Some(sink) = &self.sink {
            sink.publish_message(space, channel, message);
        }
        self.pubsub.publish(space, channel, message)
    }

    /// The newest number a write of this node took, when its sink numbers
    /// writes as they are made (see [`DeltaSink::numbered`]).
    pub fn numbered(&self) -> Option<u64> {
        self.sink.as_deref().and_then(|s| s.numbered())
    }

    /// See [`DeltaSink::hand_over`].
    pub fn hand_over_batch(&self) {
        if let Some(sink) = &self.sink {
            sink.hand_over();
        }
    }

    /// Opens a batch of commands on this thread: their writes reach the
    /// sink together when it drops (one lock of the replication core per
    /// pipeline instead of one per write). Drop it before any await.
    pub fn batch(&self) -> Batch<'_> {
        let sink = self.sink.as_deref();
        if let Some(sink) = sink {
            sink.open_batch();
        }
        Batch {
            sink,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Sends every local write to `sink`. Tombstones are then kept until
    /// the replication layer says every peer has passed them.
    pub fn set_sink(&mut self, sink: Arc<dyn DeltaSink>) {
        self.sink = Some(sink);
        self.gc_time.store(0, Ordering::Relaxed);
    }

    /// A sink that only logs (a node with a delta log and no peers): no
    /// other node must see a delete, so its tombstone still goes at once.
    pub fn set_log_sink(&mut self, sink: Arc<dyn DeltaSink>) {
        self.sink = Some(sink);
    }

    pub fn databases(&self) -> usize {
        self.databases
    }

    /// Keeps track of the keys every change touches, for [`Keyspace::take_cut`].
    pub fn track_dirty(&mut self) {
        self.tracking = true;
        for shard in self.shards.iter_mut() {
            for db in shard.get_mut().dbs.iter_mut() {
                db.gone = Some(HashSet::with_hasher(*db.map.hasher()));
            }
        }
    }

    /// Local writes so far (counted only with a store).
    /// Counts a local change made without [`Keyspace::update`] (SWAPDB), so
    /// that `appendfsync always` stores it before the reply.
    pub fn note_local_write(&self) {
        if self.tracking {
            self.local_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn local_writes(&self) -> u64 {
        self.local_writes.load(Ordering::Relaxed)
    }

    /// Keys changed since the last cut, all shards: (db, key, encoded state
    /// or `None` when gone), and each database's flush floor. Takes them:
    /// the next cut starts afresh. The caller holds every shard, so the
    /// cut is consistent.
    pub fn take_cut(
        &self,
        locked: &mut Locked<'_>,
    ) -> Result<(Vec<StoredKey>, Vec<Stamp>), CutError> {
        let (taken, floors) = self.take_changed(locked)?;
        let mut keys = Vec::new();
        for (index, names) in taken.iter().enumerate() {
            let shard = locked.shard(index).map_err(|_| CutError::NotAllLocked)?;
            if let Err(e) = encode_in(shard, names, &mut keys) {
                self.mark_taken_dirty_in(locked, &taken);
                return Err(e);
            }
        }
        Ok((keys, floors))
    }

    /// A fold's first step, under every shard lock: per shard, the keys
    /// changed since the last fold, removed ones included (their dirty
    /// flags cleared: the next fold starts afresh), and each database's
    /// flush floor. Nothing is encoded here, so the pause is a scan for
    /// flags; [`Keyspace::encode_taken`] reads the states a shard at a time.
    pub fn take_changed(
        &self,
        locked: &mut Locked<'_>,
    ) -> Result<(TakenKeys, Vec<Stamp>), CutError> {
        if !locked.holds_all() {
            return Err(CutError::NotAllLocked);
        }
        let mut taken: TakenKeys = vec![Vec::new(); SHARDS];
        let mut floors = vec![Stamp::ZERO; self.databases];
        for (index, shard) in locked.shards().enumerate() {
            let names = &mut taken[index];
            for (i, db) in shard.dbs.iter_mut().enumerate() {
                floors[i] = floors[i].max(db.floor);
                let Some(gone) = db.gone.as_mut() else {
                    return Err(CutError::NotTracking);
                };
                for entry in db.map.entries_mut() {
                    if !entry.key.is_dirty() {
                        continue;
                    }
                    entry.key.set_dirty(false);
                    // Never the case (a change warms the key first): a
                    // stand-in stored would replace the key's state.
                    if entry.key.is_cold() {
                        debug_assert!(false, "cold key {:?} marked dirty", entry.key);
                        continue;
                    }
                    names.push((i as u32, Key::new(&entry.key)));
                }
                // A key gone and back again is taken above.
                for key in gone.drain() {
                    if !db.map.contains_key(&key) {
                        names.push((i as u32, key));
                    }
                }
            }
        }
        Ok((taken, floors))
    }

    /// The states of `names` (shard `index`'s keys from
    /// [`Keyspace::take_changed`]) as they are now, under that shard's
    /// lock, appended to `into`: a key changed since it was taken goes as
    /// it is now (what the store holds may run ahead of the fold's version
    /// vector: merges are idempotent and the log's replay brings the rest),
    /// a key gone as `None`. Fails with [`CutError::Swapped`] when a SWAPDB
    /// came after `swaps` ([`Keyspace::swaps`] when the keys were taken):
    /// the database numbers `names` holds mean other databases now.
    pub fn encode_taken(
        &self,
        index: usize,
        names: &[(u32, Key)],
        swaps: u64,
        into: &mut Vec<StoredKey>,
    ) -> Result<(), CutError> {
        let mut locked = self.lock(SmallVec::from_slice(&[index]));
        let shard = locked.shard(index).map_err(|_| CutError::NotAllLocked)?;
        if self.swaps.load(Ordering::SeqCst) != swaps {
            return Err(CutError::Swapped);
        }
        encode_in(shard, names, into)
    }

    /// SWAPDBs so far (see [`Keyspace::encode_taken`]).
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::SeqCst)
    }

    /// A SWAPDB, under every shard lock.
    pub fn note_swap(&self) {
        self.swaps.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks keys a fold took changed again (a fold that could not store
    /// them).
    pub fn mark_taken_dirty(&self, taken: &TakenKeys) {
        let mut all = self.lock_all();
        self.mark_taken_dirty_in(&mut all, taken);
    }

    fn mark_taken_dirty_in(&self, locked: &mut Locked<'_>, taken: &TakenKeys) {
        for (index, names) in taken.iter().enumerate() {
            let Ok(shard) = locked.shard(index) else {
                continue;
            };
            for (db, key) in names {
                let Some(d) = shard.dbs.get_mut(*db as usize) else {
                    continue;
                };
                match d.map.entry_mut(key) {
                    // A cold key is in the store as it is.
                    Some(entry) if !entry.key.is_cold() => entry.key.set_dirty(true),
                    Some(_) => {}
                    None => {
                        if let Some(gone) = &mut d.gone {
                            gone.insert(key.clone());
                        }
                    }
                }
            }
        }
    }

    /// Merges a stored state into the keyspace (a node starting from its
    /// store): floors first, then every key. Nothing loaded counts as dirty.
    pub fn restore(&self, keys: Vec<(u32, Vec<u8>, KeyState)>, floors: &[Stamp]) {
        self.restore_floors(floors);
        for (db, key, state) in keys {
            self.restore_key(db, key, state, false);
        }
        self.restored();
    }

    /// The first step of [`Keyspace::restore`]: each database's floor.
    pub fn restore_floors(&self, floors: &[Stamp]) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            for (db, floor) in shard.dbs.iter_mut().zip(floors) {
                db.flush(*floor);
            }
        }
    }

    /// One stored key of [`Keyspace::restore`]; `cold`: left in the flash
    /// tier (the store holds it as it is), its stand-in in RAM.
    pub fn restore_key(&self, db: u32, key: Vec<u8>, state: KeyState, cold: bool) {
        let acked = self.gc_acked();
        let mut shard = self.shards[self.shard_of(&key)].lock();
        if let Some(d) = shard.dbs.get_mut(db as usize) {
            d.change(&key, acked, |s| s.merge_owned(state));
            if cold {
                if let Some(entry) = d.map.entry_mut(&key) {
                    entry.key.set_dirty(false);
                }
                d.make_cold(&key);
            }
        }
    }

    /// The last step of [`Keyspace::restore`]: nothing loaded counts as
    /// changed since the store's last cut.
    pub fn restored(&self) {
        for shard in self.shards.iter() {
            for db in shard.lock().dbs.iter_mut() {
                if let Some(gone) = &mut db.gone {
                    gone.clear();
                    for entry in db.map.entries_mut() {
                        entry.key.set_dirty(false);
                    }
                }
            }
        }
    }

    pub fn node(&self) -> NodeId {
        self.clock.node()
    }

    /// The shard of `key`: the one holding its digest bucket, so that a
    /// bucket's keys are listed from one shard (CRDT.DIGEST, repair). The
    /// maps inside a shard hash keys with their own random seed, so a
    /// client choosing keys can crowd a shard's lock but never its map.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        shard_of_bucket(bucket_of(key))
    }

    /// Locks the given shards in index order.
    pub fn lock(&self, mut indexes: SmallVec<[usize; 4]>) -> Locked<'_> {
        indexes.sort_unstable();
        indexes.dedup();
        if indexes.is_empty() {
            return Locked::empty();
        }
        assert_no_shard_held();
        Locked::held(
            indexes
                .into_iter()
                .map(|i| (i, self.shards[i].lock()))
                .collect(),
        )
    }

    /// Locks the shard holding `key`, for a command on that key alone.
    pub fn lock_key(&self, key: &[u8]) -> Locked<'_> {
        let index = self.shard_of(key);
        assert_no_shard_held();
        let mut locked = Locked::held(smallvec::smallvec![(index, self.shards[index].lock())]);
        locked.known = Some((key.as_ptr() as usize, key.len(), index));
        locked
    }

    pub fn lock_all(&self) -> Locked<'_> {
        assert_no_shard_held();
        Locked::held(
            self.shards
                .iter()
                .enumerate()
                .map(|(i, s)| (i, s.lock()))
                .collect(),
        )
    }

    /// Tombstones at or before this stamp may go: every node has applied
    /// everything stamped before the GC floor. With no peers, nobody can
    /// still need a tombstone.
    ///
    /// It moves in steps of [`GC_STEP`]: two nodes whose floors lie in the
    /// same step compact every state to the same floor, so a digest that
    /// compacts what it reads to its step gives both the same bytes for the
    /// same writes, whichever of them swept last (a repair offer).
    pub fn gc_acked(&self) -> Stamp {
        let time = self
            .gc_floor_time()
            .min(self.digest_cap.load(Ordering::Relaxed));
        Stamp {
            time: gc_step_of(time),
            node: NodeId(u64::MAX),
        }
    }

    /// The GC floor's time as replication and a fold set it, before a
    /// digest's hold and the step.
    fn gc_floor_time(&self) -> u64 {
        self.gc_time
            .load(Ordering::Relaxed)
            .min(self.fold_cap.load(Ordering::Relaxed))
    }

    /// Holds collection at or below `floor` until the hold is dropped: a
    /// digest compacting what it reads to `floor` must not meet a state
    /// compacted past it (a digest of millions of keys takes seconds, and
    /// the floor would move a step meanwhile). Whoever collects reads the
    /// floor under its shard's lock, so nothing collected after this
    /// returns goes past `floor`.
    ///
    /// From then on every change marks its bucket with the hold's epoch
    /// (see [`Keyspace::unsettled_since`]): a change made after the scan
    /// read its shard's lock is made after this store, so it sees the
    /// epoch.
    pub fn hold_gc_at(&self, floor: Stamp) -> GcHold<'_> {
        let mut holds = self.digest_holds.lock();
        *holds.entry(floor.time).or_default() += 1;
        self.digest_cap.fetch_min(floor.time, Ordering::Relaxed);
        let epoch = self.scan_epochs.fetch_add(1, Ordering::Relaxed) + 1;
        self.scan_epoch.store(epoch, Ordering::Relaxed);
        GcHold {
            ks: self,
            floor: floor.time,
            epoch,
        }
    }

    /// The buckets (of any database) changed since the scan of epoch
    /// `epoch` began: its digest may have read them before a change it
    /// does not hold, or after one its vector does not count. A peer
    /// leaves them out of a comparison, and compares them at a later offer.
    pub fn unsettled_since(&self, epoch: u64) -> Buckets {
        let mut unsettled = Buckets::default();
        for (index, shard) in self.shards.iter().enumerate() {
            let shard = shard.lock();
            for d in &shard.dbs {
                for (i, e) in d.bucket_epochs.iter().enumerate() {
                    if *e >= epoch {
                        unsettled.insert((index * BUCKETS_PER_SHARD + i) as u8);
                    }
                }
            }
        }
        unsettled
    }

    /// How far into its step the GC floor is, in HLC time (see
    /// [`GC_STEP`]): a repair offer waits until a step's first moments
    /// are past, so that a peer whose floor lags a little is in it too.
    pub fn gc_step_progress(&self) -> u64 {
        match self.gc_floor_time() {
            u64::MAX => 0,
            time => time % GC_STEP,
        }
    }

    /// Holds collection at the GC floor it has now until
    /// [`Keyspace::end_fold_cap`], under every shard lock (a fold taking
    /// its keys). A fold reads states after it rotated the log: were a
    /// tombstone collected meanwhile above the floor the fold began with,
    /// the store could hold its key as gone while the log's replay from
    /// that rotation holds an older write to it, which would come back.
    /// Below that floor no such write can be in the log: every node applied
    /// it before the floor passed it.
    pub fn cap_gc_for_fold(&self) {
        self.fold_cap
            .store(self.gc_time.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The fold is stored (or failed): collection follows the floor again.
    pub fn end_fold_cap(&self) {
        self.fold_cap.store(u64::MAX, Ordering::Relaxed);
    }

    /// A stamp at or after everything collection dropped so far (ZERO when
    /// nothing was).
    pub fn collected(&self) -> Stamp {
        match self.collected.load(Ordering::Relaxed) {
            0 => Stamp::ZERO,
            time => Stamp {
                time,
                node: NodeId(u64::MAX),
            },
        }
    }

    /// Parts of states stamped up to `upto` were forgotten (a transfer's
    /// sender had collected them): for late writes, as if collected here.
    pub fn note_forgotten(&self, upto: Stamp) {
        self.collected.fetch_max(upto.time, Ordering::Relaxed);
    }

    /// Lowers the GC floor to before `stamp` until the next
    /// [`Keyspace::set_gc_floor`]. Whoever collects reads the floor under
    /// its shard's lock, so with every shard held nothing stamped at or
    /// after `stamp` is collected from then on.
    pub fn cap_gc_floor(&self, stamp: Stamp) {
        self.gc_time
            .fetch_min(stamp.time.saturating_sub(1), Ordering::Relaxed);
    }

    /// Sets the GC floor (from the replication layer).
    pub fn set_gc_floor(&self, floor: Stamp) {
        // Strictly before the floor's time: whatever the node ids.
        self.gc_time
            .store(floor.time.saturating_sub(1), Ordering::Relaxed);
    }

    /// Sweeps the next piece of shard `index`, at most `most_keys` keys:
    /// compacts every state below the GC floor in place and drops the
    /// tombstones that can go, counting them in `collected`. Whether the
    /// shard is done. Between two pieces the shard's lock is free (a sweep
    /// every few seconds held a shard of a 10M-key node for all its
    /// 156,000 keys); a compaction of a map between pieces (removals) has
    /// its database swept again from its start, which compacts nothing
    /// twice.
    pub fn collect_garbage_piece(
        &self,
        index: usize,
        scan: &mut ShardScan,
        most_keys: usize,
        collected: &mut usize,
    ) -> bool {
        let mut shard = self.shards[index].lock();
        // Read under the lock: a floor lowered meanwhile (see
        // `cap_gc_floor`) holds for every piece not swept yet.
        let acked = self.gc_acked();
        let mut keys = 0;
        while let Some(db) = shard.dbs.get_mut(scan.db) {
            let epoch = db.map.epoch();
            if scan.epoch != Some(epoch) {
                scan.position = 0;
                scan.epoch = Some(epoch);
            }
            // A tombstone, floor or removal record under a counter is
            // dropped in place (the key stays, its count and expiry
            // untouched).
            let (mut compacted, mut doomed) = (false, Vec::new());
            let tombstones = db.map.len() != db.live;
            while scan.position < db.map.positions() && keys < most_keys {
                prefetch_ahead(&db.map, scan.position);
                if let Some(state) = db.map.state_at_mut(scan.position) {
                    compacted |= state.compact(acked);
                    if tombstones && state.collectable(acked) {
                        doomed.push(scan.position);
                    }
                }
                scan.position += 1;
                keys += 1;
            }
            if compacted {
                db.changes.fetch_add(1, Ordering::Relaxed);
                db.collected.fetch_max(acked.time, Ordering::Relaxed);
            }
            let doomed: Vec<Key> = doomed
                .into_iter()
                .filter_map(|p| db.map.at(p).map(|e| e.key.clone()))
                .collect();
            for key in doomed {
                db.change(&key, acked, |_| ());
                *collected += 1;
            }
            if scan.position < db.map.positions() || db.map.epoch() != epoch {
                return false;
            }
            scan.db += 1;
            scan.position = 0;
            scan.epoch = None;
        }
        true
    }

    /// Sweeps the whole of shard `index` (see
    /// [`Keyspace::collect_garbage_piece`]); returns how many tombstones
    /// went.
    #[cfg(test)]
    pub(crate) fn collect_garbage_in(&self, index: usize) -> usize {
        let (mut scan, mut collected) = (ShardScan::default(), 0);
        while !self.collect_garbage_piece(index, &mut scan, usize::MAX, &mut collected) {}
        collected
    }

    /// Every key's state in every database, ordered by (db, key), and each
    /// database's flush floor: the node's whole CRDT state, for comparing
    /// nodes (the simulation) and debugging.
    pub fn dump(&self) -> (Vec<DumpedKey>, Vec<Stamp>) {
        let mut keys = Vec::new();
        let mut floors = vec![Stamp::ZERO; self.databases];
        for shard in self.shards.iter() {
            let shard = shard.lock();
            let acked = self.gc_acked();
            for (db, d) in shard.dbs.iter().enumerate() {
                floors[db] = floors[db].max(d.floor);
                for (key, state) in d.states(acked) {
                    keys.push((db as u32, key.to_vec(), state.into_owned()));
                }
            }
        }
        keys.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        (keys, floors)
    }

    /// One key's state, tombstones included.
    pub fn state_of(&self, db: usize, key: &[u8]) -> Option<KeyState> {
        let shard = self.shards[self.shard_of(key)].lock();
        let acked = self.gc_acked();
        Some(shard.dbs.get(db)?.peek(key, acked)?.into_owned())
    }

    /// Adds the next piece of shard `index`'s keys to `digests` (and its
    /// floors, once the last piece is read), its cold keys left in `cold`
    /// to be added once the lock is released ([`ColdReads::add_digests`]).
    /// Whether the shard is done. Between two pieces the shard's lock is
    /// free: a digest of millions of keys holds up a write for a piece at
    /// most. Writes between pieces are in the digest or not (a key removed
    /// and made again may count twice, which its bucket shows as a
    /// difference: a repair of a bucket it did not need). A compaction of
    /// the shard's map between pieces moves keys: what the shard added is
    /// forgotten, and it is read again, in one piece. `scratch` is reused
    /// across keys.
    pub fn digest_piece<D: Digests + ?Sized>(
        &self,
        index: usize,
        floor: Stamp,
        scan: &mut DigestScan,
        digests: &mut D,
        scratch: &mut Vec<u8>,
        cold: &mut ColdReads,
    ) -> Result<bool, chorus_crdt::EncodeError> {
        let (most_keys, budget) = match scan.whole {
            true => (usize::MAX, usize::MAX),
            false => (DIGEST_PIECE_KEYS, DIGEST_PIECE_BYTES),
        };

        let done = self.scan_piece(
            index,
            &mut scan.scan,
            most_keys,
            budget,
            |_| true,
            |_, _| true,
            Some(floor),
            |db, key, state| {
                // Left out: a node that swept it holds nothing.
                if state.collectable(floor) {
                    return Ok(0);
                }
                digests.add(db, key, key_digest(key, state, scratch)?);
                Ok::<_, chorus_crdt::EncodeError>(scratch.len())
            },
            cold,
        )?;
        if scan.scan.started_over {
            digests.forget_shard(index);
            *cold = ColdReads::default();
            *scan = DigestScan {
                whole: true,
                ..DigestScan::default()
            };
            return Ok(false);
        }
        if done {
            let shard = self.shards[index].lock();
            for (db, d) in shard.dbs.iter().enumerate() {
                digests.floor(db as u32, d.floor);
            }
        }
        Ok(done)
    }

    /// Adds every key and floor to `digests`, each state compacted to
    /// `floor` (see [`Keyspace::digest_piece`]), a piece at a time, without
    /// pausing between pieces (a test's digest).
    #[cfg(test)]
    pub(crate) fn digest_all<D: Digests + ?Sized>(&self, floor: Stamp, digests: &mut D) {
        let mut scratch = Vec::new();
        for i in 0..SHARDS {
            let (mut scan, mut cold) = (DigestScan::default(), ColdReads::default());
            while !self
                .digest_piece(i, floor, &mut scan, digests, &mut scratch, &mut cold)
                .unwrap()
            {}
            cold.add_digests(floor, digests, &mut scratch).unwrap();
        }
    }

    /// Whether shard `index`'s lock is held (by any thread).
    #[cfg(test)]
    pub(crate) fn shard_is_locked(&self, index: usize) -> bool {
        self.shards[index].is_locked()
    }

    /// Runs `f(db, key, state)` on the next keys of shard `index` in the
    /// databases `dbs` takes that `wanted(db, key)`, under the shard's
    /// lock, until it met `most_keys` keys or what `f` returns adds up to
    /// `budget`; cold keys go to `cold`, to be read after (see
    /// [`ColdReads`]). Whether the shard is done. Writes go on between
    /// two pieces: a key that lived throughout the scan is met at least
    /// once (a compaction of a map, which moves its entries, starts its
    /// database over), a key made or removed meanwhile perhaps not.
    #[allow(clippy::too_many_arguments)]
    pub fn scan_piece<E>(
        &self,
        index: usize,
        scan: &mut ShardScan,
        most_keys: usize,
        budget: usize,
        dbs: impl Fn(usize) -> bool,
        wanted: impl Fn(usize, &[u8]) -> bool,
        compact_to: Option<Stamp>,
        mut f: impl FnMut(u32, &[u8], &KeyState) -> Result<usize, E>,
        cold: &mut ColdReads,
    ) -> Result<bool, E> {
        let mut shard = self.shards[index].lock();
        let acked = self.gc_acked();
        let (mut keys, mut spent, mut examined) = (0, 0, 0);
        // Holes and keys not wanted (a repair's scope) are passed over
        // cheaply, but not without end under the lock.
        let most_examined = most_keys.saturating_mul(16);
        while let Some(d) = shard.dbs.get_mut(scan.db) {
            let epoch = d.map.epoch();
            if scan.epoch != Some(epoch) {
                scan.started_over |= scan.epoch.is_some();
                scan.position = 0;
                scan.epoch = Some(epoch);
            }
            while dbs(scan.db) && scan.position < d.map.positions() {
                if keys >= most_keys || spent >= budget || examined >= most_examined {
                    return Ok(false);
                }
                prefetch_ahead(&d.map, scan.position);
                let position = scan.position;
                scan.position += 1;
                examined += 1;
                if !d.map.at(position).is_some_and(|e| wanted(scan.db, &e.key)) {
                    continue;
                }
                keys += 1;
                // A digest reads every state compacted to one floor (see
                // `GC_STEP`): at this node's floor, in place, as the GC
                // sweep would (a kept digest is not spoiled by it:
                // compacted again to the same floor, a state digests the
                // same); past it (a peer's offer), a copy.
                let in_place = compact_to.filter(|to| *to <= acked);
                if let Some(to) = in_place {
                    if let Some(state) = d.map.state_at_mut(position) {
                        if state.compact(to) {
                            d.collected.fetch_max(to.time, Ordering::Relaxed);
                        }
                    }
                }
                let Some(entry) = d.map.at(position) else {
                    continue;
                };
                let read_at = compact_to.unwrap_or(acked);
                if let Some(state) = d.peek_or_defer(scan.db as u32, entry, read_at, cold) {
                    let copy;
                    let state = match compact_to {
                        Some(to) if in_place.is_none() => {
                            copy = {
                                let mut copy = state.clone();
                                copy.compact(to);
                                copy
                            };
                            &copy
                        }
                        _ => state,
                    };
                    spent += f(scan.db as u32, &entry.key, state)?;
                }
            }
            scan.db += 1;
            scan.position = 0;
            scan.epoch = None;
        }
        Ok(true)
    }

    /// The keys of `db` in digest bucket `bucket` (and sub-bucket `sub`, if
    /// given) that `pattern` matches, each with its digest, sorted by key:
    /// what a bucket's digest is made of (CRDT.DIGEST ... BUCKET). Reads
    /// the one shard holding it.
    pub fn bucket_digests(
        &self,
        db: usize,
        pattern: Option<&[u8]>,
        bucket: u8,
        sub: Option<u8>,
    ) -> Result<Vec<(Vec<u8>, u64)>, chorus_crdt::EncodeError> {
        let mut found = Vec::new();
        self.each_in_bucket(db, pattern, bucket, sub, |key, _, digest| {
            found.push((key.to_vec(), digest));
        })?;
        found.sort_unstable();
        Ok(found)
    }

    /// The digests of the 256 sub-buckets of `db`'s bucket `bucket`, over
    /// the keys `pattern` matches (CRDT.DIGEST ... BUCKET b SPLIT).
    pub fn sub_bucket_digests(
        &self,
        db: usize,
        pattern: Option<&[u8]>,
        bucket: u8,
    ) -> Result<Vec<u64>, chorus_crdt::EncodeError> {
        let mut digests = vec![0u64; 256];
        self.each_in_bucket(db, pattern, bucket, None, |_, sub, digest| {
            digests[sub as usize] ^= digest;
        })?;
        Ok(digests)
    }

    /// Runs `f(key, sub-bucket, digest)` on every key of `db` in `bucket`
    /// (and in sub-bucket `only`, if given) that `pattern` matches, under
    /// the lock of the one shard holding it. Only those keys are digested.
    fn each_in_bucket(
        &self,
        db: usize,
        pattern: Option<&[u8]>,
        bucket: u8,
        only: Option<u8>,
        mut f: impl FnMut(&[u8], u8, u64),
    ) -> Result<(), chorus_crdt::EncodeError> {
        let mut scratch = Vec::new();
        let mut cold = ColdReads::default();
        {
            let shard = self.shards[shard_of_bucket(bucket)].lock();
            let Some(d) = shard.dbs.get(db) else {
                return Ok(());
            };
            let acked = self.gc_acked();
            for entry in d.map.entries() {
                let key = &entry.key;
                let (b, sub) = sub_bucket_of(key);
                if b == bucket
                    && only.is_none_or(|o| o == sub)
                    && pattern.is_none_or(|p| crate::glob::matches(p, key, false))
                {
                    if let Some(state) = d.peek_or_defer(db as u32, entry, acked, &mut cold) {
                        f(key, sub, key_digest(key, state, &mut scratch)?);
                    }
                }
            }
        }
        cold.read(self.gc_acked(), usize::MAX, |_, key, state| {
            f(
                key,
                sub_bucket_of(key).1,
                key_digest(key, state, &mut scratch)?,
            );
            Ok(1)
        })
    }

    /// Digests of `db`'s buckets `buckets` over the keys `pattern` matches,
    /// its flush floor, and how many keys they cover. Reads only the shards
    /// holding those buckets, one at a time: a caller bounds the work of
    /// one request by asking for fewer buckets (CRDT.DIGEST ... RANGE).
    pub fn digest_buckets(
        &self,
        db: usize,
        pattern: Option<&[u8]>,
        buckets: std::ops::RangeInclusive<u8>,
    ) -> Result<(Vec<u64>, Stamp, usize), chorus_crdt::EncodeError> {
        let first = *buckets.start();
        let mut digests = vec![0u64; buckets.clone().count()];
        let (mut floor, mut keys, mut scratch) = (Stamp::ZERO, 0, Vec::new());
        let shards = shard_of_bucket(first)..=shard_of_bucket(*buckets.end());
        for shard in shards.filter(|_| !buckets.is_empty()) {
            let mut cold = ColdReads::default();
            {
                let shard = self.shards[shard].lock();
                let Some(d) = shard.dbs.get(db) else {
                    continue;
                };
                floor = floor.max(d.floor);
                let acked = self.gc_acked();
                for position in 0..d.map.positions() {
                    prefetch_ahead(&d.map, position);
                    let Some(entry) = d.map.at(position) else {
                        continue;
                    };
                    let key = &entry.key;
                    let bucket = bucket_of(key);
                    if buckets.contains(&bucket)
                        && pattern.is_none_or(|p| crate::glob::matches(p, key, false))
                    {
                        if let Some(state) = d.peek_or_defer(db as u32, entry, acked, &mut cold) {
                            digests[(bucket - first) as usize] ^=
                                key_digest(key, state, &mut scratch)?;
                            keys += 1;
                        }
                    }
                }
            }
            cold.read(self.gc_acked(), usize::MAX, |_, key, state| {
                digests[(bucket_of(key) - first) as usize] ^= key_digest(key, state, &mut scratch)?;
                keys += 1;
                Ok::<_, chorus_crdt::EncodeError>(1)
            })?;
        }
        Ok((digests, floor, keys))
    }

    /// A tag for `key` of `db` in a state transfer's record of the keys it
    /// named (a collision only keeps a stale key, never drops a live one).
    pub fn transfer_tag(&self, db: u32, key: &[u8]) -> u64 {
        self.hasher.hash_one(key) ^ u64::from(db).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// After a complete state transfer that named the keys tagged in
    /// `named`: every other key forgets what the sender held (`held`, per
    /// node; see `KeyState::forget_held`), since the sender no longer has
    /// it. Local only: it brings this node in line, it is not a write.
    /// Returns how many keys changed.
    /// With a `scope` (a repair), only the keys in it.
    pub fn forget_held_absent(
        &self,
        named: &HashSet<u64>,
        held: &std::collections::BTreeMap<NodeId, Stamp>,
        scope: Option<&TransferScope>,
    ) -> usize {
        let held_max = held.values().copied().max().unwrap_or(Stamp::ZERO);
        let held = |n: NodeId| held.get(&n).copied().unwrap_or(Stamp::ZERO);
        let reached = scope.map(TransferScope::buckets);
        let mut changed = 0;
        for (index, shard) in self.shards.iter().enumerate() {
            // A repair of a bucket or two reads one shard or two, not
            // every key.
            if reached.is_some_and(|r| !shard_reached(&r, index)) {
                continue;
            }
            let mut shard = shard.lock();
            let acked = self.gc_acked();
            for (db, d) in shard.dbs.iter_mut().enumerate() {
                let unnamed: Vec<Key> = d
                    .map
                    .keys()
                    .filter(|k| scope.is_none_or(|s| s.covers(db as u32, k)))
                    .filter(|k| !named.contains(&self.transfer_tag(db as u32, k)))
                    .cloned()
                    .collect();
                for key in unnamed {
                    // A cold key's stand-in tells what notifications read;
                    // the change reads it back, and leaves it cold if it
                    // forgets nothing.
                    let before = crate::notify::Before::of(self, d.indexed(&key));
                    if d.change(&key, acked, |s| s.forget_held(held)) {
                        changed += 1;
                        self.key_changed(db, &key);
                        crate::notify::after_merge(self, db, &key, before, d.indexed(&key));
                    }
                }
            }
        }
        if changed > 0 {
            self.note_forgotten(held_max);
        }
        changed
    }

    /// Deleted keys still held (as tombstones) for replication.
    pub fn tombstones(&self, all: &mut Locked<'_>) -> usize {
        debug_assert!(all.holds_all());
        all.shards()
            .map(|s| s.dbs.iter().map(|d| d.map.len() - d.live).sum::<usize>())
            .sum()
    }

    /// A key changed (a local write, a replicated merge, an expiry or an
    /// eviction): clients blocked on it retry, clients caching it are told,
    /// and transactions watching it fail.
    pub fn key_changed(&self, db: usize, key: &[u8]) {
        self.waiters.wake(db, key);
        self.invalidations.changed(key);
        self.watches.touched(db, key);
    }

    /// Runs a local write on `key` in `db`: one hash lookup, expiry first.
    pub fn update<R>(
        &self,
        locked: &mut Locked<'_>,
        db: usize,
        key: &[u8],
        now_ms: u64,
        f: impl FnOnce(&mut Writer<'_>) -> R,
    ) -> Result<R, NotLocked> {
        let acked = self.gc_acked();
        let shard = locked.shard_for(key, |k| self.shard_of(k))?;
        if self.tracking {
            self.local_writes.fetch_add(1, Ordering::Relaxed);
        }
        let floor = shard.dbs[db].floor;
        // Whether the key existed before and after: only keyspace
        // notifications read it (one turned on mid-command is told from
        // the next).
        let notifying = self.notify.load(Ordering::Relaxed) != 0;
        let (result, outcome) = shard.dbs[db].change(key, acked, |state| {
            let existed = notifying && state.exists(now_ms);
            let mut w = Writer {
                state,
                ks: self,
                db,
                key,
                now_ms,
                floor,
                wrote: false,
            };
            // A key that does not exist has nothing to expire: whether a
            // tombstone still carries an expiry field depends on GC timing.
            let expired = w.state.is_expired(now_ms) && w.state.exists(0);
            if expired {
                let delete = w.state.expiry_delete(self.node());
                // The delete may be stamped past the clock; later writes must follow it.
                let _ = self.clock.observe(delete.reg.stamp);
                self.expired_keys.fetch_add(1, Ordering::Relaxed);
                w.apply(delete);
                w.wrote = false;
            }
            let result = f(&mut w);
            let exists = notifying && w.state.exists(now_ms);
            let outcome = (existed, exists, expired, w.wrote);
            (result, outcome)
        });
        let (_, _, expired, wrote) = outcome;
        if wrote || expired {
            self.key_changed(db, key);
            crate::notify::after_write(self, db, key, outcome);
        }
        Ok(result)
    }

    /// Applies a local FLUSHDB (`Some(db)`) or FLUSHALL (`None`) on all shards.
    pub fn flush_local(&self, locked: &mut Locked<'_>, db: Option<usize>) {
        if self.tracking {
            self.local_writes.fetch_add(1, Ordering::Relaxed);
        }
        // After everything the flushed databases hold (a key or floor merged
        // from a peer whose clock runs ahead included): a flush that replied
        // OK removes all of it, on every node.
        let now = self.clock.now();
        let mut merged = Stamp::ZERO;
        for shard in locked.shards() {
            for (i, d) in shard.dbs.iter().enumerate() {
                if db.is_none_or(|want| want == i) {
                    merged = merged.max(d.latest_stamp());
                }
            }
        }
        let stamp = if now > merged {
            now
        } else {
            let stamp = merged.next_after(now.node);
            self.clock.issued(stamp);
            stamp
        };
        self.invalidations.changed_all();
        self.watches.touched_db(db);
        for shard in locked.shards() {
            match db {
                Some(d) => shard.dbs[d].flush(stamp),
                None => shard.dbs.iter_mut().for_each(|d| d.flush(stamp)),
            }
        }
        if let Some(sink) = &self.sink {
            sink.publish_flush(db.map(|d| d as u32), stamp, self.clock.physical_unix_ms());
        }
    }

    /// Sets the access clock new keys start with to `now_ms`'s (the
    /// active cycle does it every tick).
    pub fn refresh_access_clock(&self, now_ms: u64) {
        if let Some(clock) = self.limits.clock() {
            self.access_clock
                .store(clock.new_key(now_ms), Ordering::Relaxed);
        }
    }

    /// Evicts `key` of `db` for `maxmemory`: a delete, replicated like DEL.
    /// Whether the key was there to go (an expired one goes as expired).
    pub fn evict(&self, db: usize, key: &[u8], now_ms: u64) -> bool {
        let mut locked = self.lock(SmallVec::from_slice(&[self.shard_of(key)]));
        let deleted = crate::notify::as_cause(crate::notify::EVICTED, "evicted", || {
            self.update(&mut locked, db, key, now_ms, |w| {
                let visible = w.visible();
                if visible {
                    w.set(None, 0);
                }
                visible
            })
        });
        match deleted {
            Ok(true) => {
                self.evicted_keys.fetch_add(1, Ordering::Relaxed);
                true
            }
            // Gone already, or expired by the update itself: memory freed
            // either way, nothing evicted.
            _ => false,
        }
    }

    /// Moves `key` of `db` into the flash tier (see `Db::make_cold`).
    pub fn move_cold(&self, db: usize, key: &[u8]) -> bool {
        let index = self.shard_of(key);
        let mut locked = self.lock(SmallVec::from_slice(&[index]));
        locked
            .shard(index)
            .is_ok_and(|s| s.dbs.get_mut(db).is_some_and(|d| d.make_cold(key)))
    }

    /// Records the delete of a key whose expiry has passed, if it has.
    pub fn expire_if_due(
        &self,
        locked: &mut Locked<'_>,
        db: usize,
        key: &[u8],
        now_ms: u64,
    ) -> Result<(), NotLocked> {
        let due = {
            let shard = locked.shard_for(key, |k| self.shard_of(k))?;
            shard.dbs[db]
                .indexed(key)
                .is_some_and(|s| s.is_expired(now_ms) && s.exists(0))
        };
        if due {
            self.update(locked, db, key, now_ms, |_| ())?;
        }
        Ok(())
    }

    /// One round of active expiry: deletes up to `budget` keys per shard whose
    /// expiry has passed. Returns how many it deleted.
    pub fn active_expire_cycle(&self, now_ms: u64, budget: usize) -> usize {
        let mut done = 0;
        for index in 0..SHARDS {
            let mut locked = self.lock(SmallVec::from_slice(&[index]));
            for db in 0..self.databases {
                let due: Vec<Key> = {
                    let Ok(shard) = locked.shard(index) else {
                        break;
                    };
                    shard.dbs[db]
                        .expiring
                        .iter()
                        .take_while(|(at, _)| *at <= now_ms)
                        .take(budget)
                        .map(|(_, k)| k.clone())
                        .collect()
                };
                for key in due {
                    if self.expire_if_due(&mut locked, db, &key, now_ms).is_ok() {
                        done += 1;
                    }
                }
            }
        }
        done
    }

    /// Per-database (keys, keys with expiry), summed over shards.
    pub fn db_sizes(&self, all: &mut Locked<'_>) -> Vec<(usize, usize)> {
        debug_assert!(all.holds_all());
        let mut sizes = vec![(0usize, 0usize); self.databases];
        for shard in all.shards() {
            for (i, db) in shard.dbs.iter().enumerate() {
                sizes[i].0 += db.live;
                sizes[i].1 += db.expires_count();
            }
        }
        sizes
    }

    /// (keyspace hits, misses) summed over shards.
    pub fn hits_misses(&self, all: &mut Locked<'_>) -> (u64, u64) {
        debug_assert!(all.holds_all());
        all.shards()
            .fold((0, 0), |(h, m), s| (h + s.hits, m + s.misses))
    }

    pub fn reset_stats(&self, all: &mut Locked<'_>) {
        debug_assert!(all.holds_all());
        for s in all.shards() {
            s.hits = 0;
            s.misses = 0;
        }
        self.expired_keys.store(0, Ordering::Relaxed);
        self.evicted_keys.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keyspace() -> Keyspace {
        Keyspace::new(
            2,
            Clock::new(
                NodeId(1),
                chorus_crdt::system_clock,
                Duration::from_millis(500),
            ),
        )
    }

    /// Counts what a keyspace publishes.
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<Vec<u8>>>);

    impl DeltaSink for Recorder {
        fn publish_key(&self, _: u32, key: &[u8], _: &KeyState, _: u64) {
            self.0.lock().unwrap().push(key.to_vec());
        }
        fn publish_flush(&self, _: Option<u32>, _: Stamp, _: u64) {}
    }

    /// A collection command that changes nothing (every member skipped by
    /// its flags, an absent field removed) neither writes nor replicates:
    /// its delta would move only the peers' newest-write stamp.
    #[test]
    fn a_collection_command_that_changes_nothing_publishes_nothing() {
        let mut ks = keyspace();
        let sink = Arc::new(Recorder::default());
        ks.set_sink(sink.clone());
        let mut l = ks.lock_all();
        ks.update(&mut l, 0, b"z", 0, |w| {
            w.coll_write(Kind::ZSet, |c, d, stamp| -> Result<(), ()> {
                c.zadd_into(d, stamp, b"m", 5.0);
                Ok(())
            })
        })
        .unwrap()
        .unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        let before = l.shard(ks.shard_of(b"z")).unwrap().dbs[0]
            .get(b"z")
            .cloned();
        // In place, doing nothing (ZADD GT of a lower score).
        let r = ks
            .update(&mut l, 0, b"z", 0, |w| {
                w.coll_in_place(Kind::ZSet, |_, _, _| Some(()))
            })
            .unwrap();
        assert_eq!(r, Some(()));
        // The same for a write of several elements (ZADD NX of members
        // there), which records into a `ManyWrite`.
        let r = ks
            .update(&mut l, 0, b"z", 0, |w| {
                w.many_in_place(Kind::ZSet, |_, _, _| Some(()))
            })
            .unwrap();
        assert_eq!(r, Some(()));
        // The general path, doing nothing (ZREM of an absent member).
        ks.update(&mut l, 0, b"z", 0, |w| {
            w.coll_write(Kind::ZSet, |c, d, stamp| -> Result<(), ()> {
                c.remove_elem_into(d, Kind::ZSet, b"absent", stamp);
                Ok(())
            })
        })
        .unwrap()
        .unwrap();
        assert_eq!(sink.0.lock().unwrap().len(), 1, "nothing published");
        let after = l.shard(ks.shard_of(b"z")).unwrap().dbs[0]
            .get(b"z")
            .cloned();
        assert_eq!(before, after, "nothing written");
    }

    /// `n` key names that fall in shard `shard`.
    fn names_in_shard(ks: &Keyspace, shard: usize, n: usize) -> Vec<Vec<u8>> {
        (0..)
            .map(|i| format!("key:{i}").into_bytes())
            .filter(|k| ks.shard_of(k) == shard)
            .take(n)
            .collect()
    }

    /// A scan in pieces meets every key that lives throughout, though
    /// deletes between two pieces compact the map under it (moving
    /// entries from positions not yet read to positions already read).
    #[test]
    fn a_scan_in_pieces_meets_every_key_across_a_compaction() {
        let ks = keyspace();
        let names = names_in_shard(&ks, 5, 1400);
        assert_eq!(names.len(), 1400);
        {
            let mut l = ks.lock_all();
            for (i, key) in names.iter().enumerate() {
                ks.update(&mut l, i % 2, key, 0, |w| w.set(Some(b"v"), 0))
                    .unwrap();
            }
        }
        let epoch = |db: usize| ks.shards[5].lock().dbs[db].map.epoch();
        let before = epoch(0);
        let mut met: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut scan = ShardScan::default();
        let mut cold = ColdReads::default();
        let mut piece = |scan: &mut ShardScan, met: &mut Vec<(u32, Vec<u8>)>| {
            ks.scan_piece(
                5,
                scan,
                100,
                usize::MAX,
                |_| true,
                |_, _| true,
                None,
                |db, key, _| {
                    met.push((db, key.to_vec()));
                    Ok::<_, ()>(1)
                },
                &mut cold,
            )
            .unwrap()
        };
        for _ in 0..3 {
            assert!(!piece(&mut scan, &mut met));
        }
        // Every key met so far, and 100 more of db 0, deleted.
        let gone: Vec<(u32, Vec<u8>)> = met
            .iter()
            .cloned()
            .chain(
                names
                    .iter()
                    .enumerate()
                    .filter(|(i, k)| i % 2 == 0 && !met.contains(&(0, k.to_vec())))
                    .map(|(_, k)| (0, k.clone()))
                    .take(100),
            )
            .collect();
        {
            let mut l = ks.lock_all();
            for (db, key) in &gone {
                ks.update(&mut l, *db as usize, key, 0, |w| w.set(None, 0))
                    .unwrap();
            }
        }
        assert_ne!(epoch(0), before, "the deletes compacted db 0's map");
        while !piece(&mut scan, &mut met) {}
        assert!(cold.is_empty());
        // A scan that wants nothing (a repair of other keys) still lets go
        // of the lock after a bounded walk.
        let mut pieces = 0;
        let mut scan = ShardScan::default();
        while !ks
            .scan_piece(
                5,
                &mut scan,
                10,
                usize::MAX,
                |_| true,
                |_, _| false,
                None,
                |_, _, _| Ok::<_, ()>(1),
                &mut cold,
            )
            .unwrap()
        {
            pieces += 1;
        }
        assert!(pieces >= 4, "{pieces} pieces");
        for (i, key) in names.iter().enumerate() {
            let db = (i % 2) as u32;
            if !gone.contains(&(db, key.clone())) {
                assert!(
                    met.contains(&(db, key.clone())),
                    "{key:?} in db {db} was not met"
                );
            }
        }
    }

    /// Counts the keys each piece adds on top of the digests it keeps.
    struct Counted {
        dbs: Vec<DbDigest>,
        added: usize,
        forgotten: usize,
    }

    impl Digests for Counted {
        fn add(&mut self, db: u32, key: &[u8], key_digest: u64) {
            self.added += 1;
            self.dbs.add(db, key, key_digest);
        }
        fn floor(&mut self, db: u32, floor: Stamp) {
            self.dbs.floor(db, floor);
        }
        fn forget_shard(&mut self, index: usize) {
            self.forgotten += 1;
            self.dbs.forget_shard(index);
        }
    }

    /// What a keyspace's digest must read, computed from its dump.
    fn digest_of_dump(ks: &Keyspace) -> Vec<DbDigest> {
        let (keys, floors) = ks.dump();
        let mut dbs: Vec<DbDigest> = (0..2).map(DbDigest::empty).collect();
        let mut scratch = Vec::new();
        for (db, key, state) in &keys {
            dbs[*db as usize].add(key, key_digest(key, state, &mut scratch).unwrap());
        }
        for (db, floor) in floors.into_iter().enumerate() {
            dbs[db].floor = floor;
        }
        dbs
    }

    /// A keyspace digest (a peer's repair offer) holds a shard's lock for
    /// a piece of its keys at a time; a compaction of the shard's map
    /// between two pieces, which moves keys to positions already read,
    /// has the shard read again rather than counting keys twice.
    #[test]
    fn a_digest_in_pieces_reads_a_shard_again_after_a_compaction() {
        let ks = keyspace();
        let names = names_in_shard(&ks, 5, 1400);
        {
            let mut l = ks.lock_all();
            for (i, key) in names.iter().enumerate() {
                ks.update(&mut l, i % 2, key, 0, |w| w.set(Some(b"v"), 0))
                    .unwrap();
            }
        }
        let mut digests = Counted {
            dbs: (0..2).map(DbDigest::empty).collect(),
            added: 0,
            forgotten: 0,
        };
        let (mut scratch, mut cold) = (Vec::new(), ColdReads::default());
        // Untouched, the shard takes pieces of at most DIGEST_PIECE_KEYS.
        let mut scan = DigestScan::default();
        let mut pieces = 0;
        loop {
            let before = digests.added;
            let done = ks
                .digest_piece(
                    5,
                    ks.gc_acked(),
                    &mut scan,
                    &mut digests,
                    &mut scratch,
                    &mut cold,
                )
                .unwrap();
            assert!(digests.added - before <= DIGEST_PIECE_KEYS);
            pieces += 1;
            if done {
                break;
            }
        }
        assert_eq!(
            (digests.added, pieces),
            (1400, 1400 / DIGEST_PIECE_KEYS + 1)
        );
        let whole = digests.dbs.clone();
        // Another take, with most keys deleted after its first piece.
        digests.dbs = (0..2).map(DbDigest::empty).collect();
        let mut scan = DigestScan::default();
        assert!(!ks
            .digest_piece(
                5,
                ks.gc_acked(),
                &mut scan,
                &mut digests,
                &mut scratch,
                &mut cold
            )
            .unwrap());
        let epoch = ks.shards[5].lock().dbs[0].map.epoch();
        {
            let mut l = ks.lock_all();
            for key in names.iter().take(1000) {
                ks.update(&mut l, 0, key, 0, |w| w.set(None, 0)).unwrap();
            }
        }
        assert_ne!(ks.shards[5].lock().dbs[0].map.epoch(), epoch, "compacted");
        while !ks
            .digest_piece(
                5,
                ks.gc_acked(),
                &mut scan,
                &mut digests,
                &mut scratch,
                &mut cold,
            )
            .unwrap()
        {}
        for i in (0..SHARDS).filter(|i| *i != 5) {
            let mut scan = DigestScan::default();
            while !ks
                .digest_piece(
                    i,
                    ks.gc_acked(),
                    &mut scan,
                    &mut digests,
                    &mut scratch,
                    &mut cold,
                )
                .unwrap()
            {}
        }
        assert!(cold.is_empty());
        assert_eq!(digests.dbs, digest_of_dump(&ks));
        assert_ne!(digests.dbs, whole);
        assert_eq!(digests.forgotten, 1);
    }

    /// After a repair of one bucket, forgetting what the sender no longer
    /// holds reads the one shard holding that bucket: a shard held by
    /// another thread throughout does not hold it up.
    #[test]
    fn forgetting_after_a_repair_reads_only_the_shards_of_its_buckets() {
        let ks = Arc::new(keyspace());
        let key = b"k".to_vec();
        {
            let mut l = ks.lock_all();
            ks.update(&mut l, 0, &key, 0, |w| w.set(Some(b"v"), 0))
                .unwrap();
        }
        let mut buckets = Buckets::default();
        buckets.insert(bucket_of(&key));
        let scope = TransferScope::Buckets(chorus_crdt::digest::Scope(vec![(0, buckets)]));
        let other = (ks.shard_of(&key) + 1) % SHARDS;
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held_tx, held) = std::sync::mpsc::channel::<()>();
        let holder = {
            let ks = ks.clone();
            std::thread::spawn(move || {
                let _guard = ks.shards[other].lock();
                held_tx.send(()).unwrap();
                let _ = released.recv_timeout(Duration::from_secs(60));
            })
        };
        held.recv().unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        let forgetter = {
            let ks = ks.clone();
            std::thread::spawn(move || {
                let named = HashSet::default();
                let forgotten = ks.forget_held_absent(&named, &Default::default(), Some(&scope));
                done_tx.send(forgotten).unwrap();
            })
        };
        let forgotten = done.recv_timeout(Duration::from_secs(20));
        release.send(()).unwrap();
        holder.join().unwrap();
        forgetter.join().unwrap();
        assert_eq!(forgotten, Ok(0), "waited for a shard outside the scope");
    }

    #[test]
    fn live_count_and_expiry_index_follow_writes_and_deletes() {
        let ks = keyspace();
        let mut l = ks.lock_all();
        ks.update(&mut l, 0, b"a", 0, |w| w.set(Some(b"1"), 5_000))
            .unwrap();
        let db = &l.shard(ks.shard_of(b"a")).unwrap().dbs[0];
        assert_eq!((db.live, db.expires_count()), (1, 1));
        assert_eq!(ks.with_expiry.load(Ordering::Relaxed), 1);
        let other: &[u8] = [&b"b"[..], b"c", b"d", b"e", b"f"]
            .into_iter()
            .find(|k| ks.shard_of(k) != ks.shard_of(b"a"))
            .unwrap();
        ks.update(&mut l, 0, other, 0, |w| w.set(Some(b"1"), 6_000))
            .unwrap();
        assert_eq!(ks.with_expiry.load(Ordering::Relaxed), 2);
        assert_eq!(ks.live_keys.load(Ordering::Relaxed), 2);
        let shard = ks.shard_of(other);
        let end = Stamp {
            time: u64::MAX,
            node: NodeId(1),
        };
        l.shard(shard).unwrap().dbs[0].flush(end);
        assert_eq!(ks.with_expiry.load(Ordering::Relaxed), 1, "b flushed");
        assert_eq!(ks.live_keys.load(Ordering::Relaxed), 1);

        ks.update(&mut l, 0, b"a", 0, |w| w.set(None, 0)).unwrap();
        let db = &l.shard(ks.shard_of(b"a")).unwrap().dbs[0];
        assert_eq!((db.live, db.expires_count()), (0, 0));
        assert_eq!(ks.with_expiry.load(Ordering::Relaxed), 0);
        assert_eq!(ks.live_keys.load(Ordering::Relaxed), 0);
        assert!(
            db.get(b"a").is_none(),
            "standalone: the tombstone is collected at once"
        );
    }

    /// Two nodes holding the same writes of a minute ago, from a third
    /// node, none compacted (their GC floor at zero): three-field session
    /// hashes (their dots wait in each context for the floor) and, every
    /// third key, a delete. Also the physical time they were made at.
    fn two_nodes_with_old_sessions() -> (Keyspace, Keyspace, u64) {
        let (a, b) = (keyspace(), keyspace());
        let now = a.clock.physical_unix_ms();
        for ks in [&a, &b] {
            ks.set_gc_floor(Stamp::ZERO);
        }
        for i in 0..300u64 {
            let at = Stamp::from_unix_ms(now - 60_000 + i, NodeId(3));
            let key = format!("session:{i}");
            let state = match i % 3 {
                0 => KeyState::default().write(at, None, 0),
                _ => KeyState::default().coll_write(at, Kind::Hash, |c, d| {
                    for field in [&b"user"[..], b"cart", b"seen"] {
                        c.hset_into(d, at, field, b"v");
                    }
                }),
            };
            for ks in [&a, &b] {
                let mut l = ks.lock_all();
                let shard = l.shard_for(key.as_bytes(), |k| ks.shard_of(k)).unwrap();
                shard.dbs[0].merge(key.as_bytes(), &state, Stamp::ZERO);
            }
        }
        (a, b, now)
    }

    /// Session 37's finding: right after a burst, a node that had swept and
    /// one that had not yet digested every bucket differently, and repair
    /// resent them all. With the floor in the same step, a digest compacts
    /// what it reads to it and leaves out what GC may drop: both digest
    /// alike, swept or not.
    #[test]
    fn a_node_that_swept_and_one_that_did_not_digest_alike() {
        let (a, b, now) = two_nodes_with_old_sessions();
        assert_eq!(a.dump(), b.dump());
        let floor = Stamp::from_unix_ms(now - 10_000, NodeId(1));
        for ks in [&a, &b] {
            ks.set_gc_floor(floor);
        }
        assert!(a.gc_acked() > Stamp::from_unix_ms(now - 60_000 + 300, NodeId(3)));
        for i in 0..SHARDS {
            a.collect_garbage_in(i);
        }
        assert_ne!(a.dump(), b.dump(), "the sweep compacted A alone");
        let digest = |ks: &Keyspace| {
            let mut dbs: Vec<DbDigest> = (0..2).map(DbDigest::empty).collect();
            ks.digest_all(ks.gc_acked(), &mut dbs);
            dbs
        };
        assert_eq!(digest(&a), digest(&b));
    }

    /// A node whose GC floor lags a peer's offer reads copies compacted to
    /// the offer's floor: its digest is the peer's, and its own states are
    /// not compacted past its floor.
    #[test]
    fn a_node_behind_an_offers_floor_digests_copies_compacted_to_it() {
        let (a, b, now) = two_nodes_with_old_sessions();
        a.set_gc_floor(Stamp::from_unix_ms(now - 10_000, NodeId(1)));
        for i in 0..SHARDS {
            a.collect_garbage_in(i);
        }
        let floor = a.gc_acked();
        let digest_at = |ks: &Keyspace, floor: Stamp| {
            let mut dbs: Vec<DbDigest> = (0..2).map(DbDigest::empty).collect();
            ks.digest_all(floor, &mut dbs);
            dbs
        };
        let before = b.dump();
        assert_eq!(digest_at(&b, floor), digest_at(&a, floor));
        assert_eq!(b.dump(), before, "B compacted nothing in place");
        assert_ne!(digest_at(&b, b.gc_acked()), digest_at(&a, floor));
    }

    /// A change while a digest's scan runs marks its bucket unsettled for
    /// that scan; one made before it began, or while none runs, does not.
    #[test]
    fn a_change_during_a_digest_marks_its_bucket_unsettled() {
        let ks = keyspace();
        let write = |key: &str| {
            let mut l = ks.lock_all();
            ks.update(&mut l, 1, key.as_bytes(), 0, |w| w.set(Some(b"v"), 0))
                .unwrap();
        };
        let (before, during, after) = ("before", "during", "after:2");
        assert!(
            [before, during, after]
                .map(|k| bucket_of(k.as_bytes()))
                .windows(2)
                .all(|w| w[0] != w[1]),
            "three buckets"
        );
        write(before);
        let hold = ks.hold_gc_at(ks.gc_acked());
        write(during);
        let mut expected = Buckets::default();
        expected.insert(bucket_of(during.as_bytes()));
        assert_eq!(ks.unsettled_since(hold.epoch), expected);
        drop(hold);
        write(after);
        let hold = ks.hold_gc_at(ks.gc_acked());
        assert!(ks.unsettled_since(hold.epoch).is_empty());
    }

    /// While a digest holds collection at a floor, the GC floor stays at
    /// or below it however far the replication layer moves it; it follows
    /// again once every hold is dropped.
    #[test]
    fn a_digest_holds_collection_at_its_floor() {
        let ks = keyspace();
        let at = |t: u64| Stamp::from_unix_ms(t, NodeId(1));
        ks.set_gc_floor(at(100_000));
        let held = ks.gc_acked();
        let first = ks.hold_gc_at(held);
        let second = ks.hold_gc_at(held);
        ks.set_gc_floor(at(200_000));
        assert_eq!(ks.gc_acked(), held);
        drop(first);
        assert_eq!(ks.gc_acked(), held, "another digest still holds it");
        drop(second);
        assert_eq!(ks.gc_acked().time, gc_step_of(at(200_000).time - 1));

        // Overlapping holds at two floors: once the lower one goes, the
        // cap moves up to the other, not to wherever the first left it.
        let high_floor = ks.gc_acked();
        assert!(high_floor > held);
        let high = ks.hold_gc_at(high_floor);
        let low = ks.hold_gc_at(held);
        ks.set_gc_floor(at(300_000));
        assert_eq!(ks.gc_acked(), held);
        drop(low);
        assert_eq!(ks.gc_acked(), high_floor, "held at the other's floor");
        drop(high);
        assert_eq!(ks.gc_acked().time, gc_step_of(at(300_000).time - 1));
    }

    /// The GC floor is its last step: a multiple of `GC_STEP` at or below
    /// it, less than a step behind.
    #[test]
    fn the_gc_floor_moves_in_steps() {
        let ks = keyspace();
        let floor = Stamp::from_unix_ms(ks.clock.physical_unix_ms(), NodeId(1));
        ks.set_gc_floor(floor);
        let acked = ks.gc_acked();
        assert_eq!(acked.time % GC_STEP, 0);
        assert!(acked.time < floor.time && floor.time - acked.time <= GC_STEP);
        assert_eq!(acked.time + ks.gc_step_progress(), floor.time - 1);
    }

    /// A GC sweep goes a piece at a time, letting go of the shard between
    /// pieces, and drops every tombstone below the floor, across the
    /// compaction its own removals make of the map.
    #[test]
    fn a_gc_sweep_in_pieces_drops_every_tombstone_below_the_floor() {
        let ks = keyspace();
        let names = names_in_shard(&ks, 5, 1400);
        // Tombstones stay while the floor is below them.
        ks.set_gc_floor(Stamp::ZERO);
        {
            let mut l = ks.lock_all();
            for key in &names {
                ks.update(&mut l, 0, key, 0, |w| w.set(Some(b"v"), 0))
                    .unwrap();
            }
            for key in names.iter().take(1000) {
                ks.update(&mut l, 0, key, 0, |w| w.set(None, 0)).unwrap();
            }
        }
        let held = |ks: &Keyspace| {
            let shard = ks.shards[5].lock();
            (shard.dbs[0].map.len(), shard.dbs[0].live)
        };
        assert_eq!(held(&ks), (1400, 400));
        let epoch = ks.shards[5].lock().dbs[0].map.epoch();
        ks.set_gc_floor(Stamp::from_unix_ms(
            ks.clock.physical_unix_ms() + 5_000,
            NodeId(1),
        ));
        let (mut scan, mut collected, mut pieces) = (ShardScan::default(), 0, 0);
        while !ks.collect_garbage_piece(5, &mut scan, 100, &mut collected) {
            pieces += 1;
            assert!(!ks.shard_is_locked(5));
        }
        assert!(pieces + 1 >= 1400 / 100, "{pieces} pieces");
        assert_eq!(collected, 1000);
        assert_eq!(held(&ks), (400, 400));
        assert_ne!(ks.shards[5].lock().dbs[0].map.epoch(), epoch, "compacted");
        // Nothing left: a whole sweep finds nothing more.
        assert_eq!(ks.collect_garbage_in(5), 0);
    }

    /// While a fold stores its keys, collection stays at the GC floor the
    /// fold began with, however far the floor moves meanwhile.
    #[test]
    fn a_fold_holds_collection_at_the_floor_it_began_with() {
        let mut ks = keyspace();
        ks.set_sink(Arc::new(Recorder::default()));
        let at = |t: u64| Stamp::from_unix_ms(t, NodeId(1));
        ks.set_gc_floor(at(1_000));
        let began = ks.gc_acked();
        ks.cap_gc_for_fold();
        ks.set_gc_floor(at(5_000));
        assert_eq!(ks.gc_acked(), began);
        ks.end_fold_cap();
        assert!(ks.gc_acked() > began);
        assert_eq!(ks.gc_acked().time, gc_step_of(at(5_000).time - 1));
    }

    /// State merged from a peer whose clock runs ten minutes ahead: a flush
    /// floor and a key's stamps. Every local write after it must replace
    /// what it replaces, whatever the local clock says.
    #[test]
    fn local_writes_are_stamped_after_what_was_merged_from_a_fast_peer() {
        let ks = keyspace();
        let ahead = Stamp::from_unix_ms(ks.clock.physical_unix_ms() + 600_000, NodeId(2));
        let mut l = ks.lock_all();
        let value = |l: &mut Locked<'_>, key: &[u8]| {
            let db = &l.shard(ks.shard_of(key)).unwrap().dbs[0];
            db.get(key)
                .and_then(|s| s.read(0).render().map(|v| v.into_owned()))
        };
        // A flush floor from the future.
        for shard in l.shards() {
            shard.dbs[0].flush(ahead);
        }
        ks.update(&mut l, 0, b"k", 0, |w| w.set(Some(b"v"), 0))
            .unwrap();
        assert_eq!(value(&mut l, b"k").as_deref(), Some(&b"v"[..]));
        // The clock follows a stamp it issued past itself: every later
        // stamp (and promise) of this node is after that write (301481).
        assert!(ks.clock.now() > ahead, "the clock follows its own write");
        ks.update(&mut l, 0, b"c", 0, |w| w.incr(1, 0.0, false))
            .unwrap();
        assert_eq!(value(&mut l, b"c").as_deref(), Some(&b"1"[..]));
        // A key whose register and expiry a fast peer stamped.
        let mut remote = KeyState::default();
        let write = remote.write(ahead.next_after(NodeId(2)), Some(b"far"), 0);
        remote.merge(&write);
        let shard = l.shard(ks.shard_of(b"e")).unwrap();
        shard.dbs[0].merge(b"e", &remote, Stamp::ZERO);
        let at = ks.clock.physical_unix_ms() + 100_000;
        ks.update(&mut l, 0, b"e", 0, |w| w.expire(at)).unwrap();
        let db = &l.shard(ks.shard_of(b"e")).unwrap().dbs[0];
        assert_eq!(
            db.get(b"e").unwrap().expire_at_ms(),
            at,
            "EXPIRE took effect"
        );
        ks.update(&mut l, 0, b"e", 0, |w| w.set(Some(b"near"), 0))
            .unwrap();
        assert_eq!(value(&mut l, b"e").as_deref(), Some(&b"near"[..]));
        // A local FLUSHDB removes the fast peer's keys too.
        let shard = l.shard(ks.shard_of(b"f")).unwrap();
        let far = remote.write(
            ahead.next_after(NodeId(2)).next_after(NodeId(2)),
            Some(b"x"),
            0,
        );
        shard.dbs[0].merge(b"f", &far, Stamp::ZERO);
        ks.flush_local(&mut l, Some(0));
        assert!(value(&mut l, b"f").is_none() && value(&mut l, b"k").is_none());
    }

    #[test]
    fn keys_spread_over_all_shards_and_over_map_slots_within_one() {
        let ks = keyspace();
        let mut per_shard = vec![0usize; SHARDS];
        let mut low_bits_in_shard0 = std::collections::HashSet::new();
        let maps_hasher = KeyHasher::random();
        for i in 0..20_000 {
            let key = format!("key:{i:012}");
            let shard = ks.shard_of(key.as_bytes());
            assert_eq!(shard, shard_of_bucket(bucket_of(key.as_bytes())));
            per_shard[shard] += 1;
            if shard == 0 {
                low_bits_in_shard0
                    .insert(crate::keymap::key_hash(&maps_hasher, key.as_bytes()) & 0xff);
            }
        }
        assert!(per_shard.iter().all(|&n| n > 150), "{per_shard:?}");
        // ~312 random draws from 256 values give ~180 distinct; a collapse gives a handful.
        assert!(
            low_bits_in_shard0.len() > 120,
            "map slots collapse within a shard"
        );
    }

    #[test]
    fn a_range_of_bucket_digests_reads_only_its_shards_and_matches_the_whole() {
        let ks = keyspace();
        let mut l = ks.lock_all();
        for i in 0..2_000 {
            let key = format!("k:{i}");
            ks.update(&mut l, 0, key.as_bytes(), 1, |w| w.set(Some(b"v"), 0))
                .unwrap();
        }
        drop(l);
        let (whole, _, n) = ks.digest_buckets(0, None, 0..=255).unwrap();
        assert_eq!(n, 2_000);
        let mut pieced = Vec::new();
        let mut counted = 0;
        for first in (0..=255u8).step_by(16) {
            let (part, _, n) = ks.digest_buckets(0, None, first..=first + 15).unwrap();
            pieced.extend(part);
            counted += n;
        }
        assert_eq!((pieced, counted), (whole.clone(), 2_000));
        // A bucket's listing XORs to its digest.
        let listed = ks.bucket_digests(0, None, 77, None).unwrap();
        assert!(!listed.is_empty());
        assert_eq!(listed.iter().fold(0, |a, (_, d)| a ^ d), whole[77]);
        // So do its sub-buckets', and each sub-bucket's listing to its own.
        let subs = ks.sub_bucket_digests(0, None, 77).unwrap();
        assert_eq!(subs.iter().fold(0, |a, d| a ^ d), whole[77]);
        let s = subs.iter().position(|d| *d != 0).unwrap() as u8;
        let in_sub = ks.bucket_digests(0, None, 77, Some(s)).unwrap();
        assert!(!in_sub.is_empty() && in_sub.len() < listed.len());
        assert_eq!(in_sub.iter().fold(0, |a, (_, d)| a ^ d), subs[s as usize]);
        // The work of a range stays in its shards: with another shard
        // locked elsewhere, a range outside it still answers.
        let held = ks.lock(SmallVec::from_slice(&[shard_of_bucket(200)]));
        let (part, _, _) = std::thread::scope(|s| {
            s.spawn(|| ks.digest_buckets(0, None, 0..=15).unwrap())
                .join()
                .unwrap()
        });
        drop(held);
        assert_eq!(part, whole[..16]);
    }

    #[test]
    fn active_expiry_deletes_due_keys_only() {
        let ks = keyspace();
        {
            let mut l = ks.lock_all();
            for (k, at) in [(&b"x"[..], 1_000u64), (b"y", 10_000)] {
                ks.update(&mut l, 1, k, 0, |w| w.set(Some(b"v"), at))
                    .unwrap();
            }
        }
        assert_eq!(ks.active_expire_cycle(5_000, 100), 1);
        assert_eq!(ks.db_sizes(&mut ks.lock_all())[1], (1, 1));
    }
}
