//! Taking cuts of the node's state into its [`Store`] (see `store`), and
//! starting a node from what its store holds. With a delta log (see
//! `deltalog`), a cut is a fold: the log makes writes durable, and cuts
//! come seldom, only to keep the log short.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use chorus_crdt::Stamp;

use chorus_crdt::state::Tally;
use chorus_crdt::{codec, Delta, EncodeError, KeyState, NodeId};
use smallvec::SmallVec;

use crate::deltalog::{DeltaLog, LogError, Replay};
use crate::keyspace::{CutError, DeltaSink, Keyspace, TakenKeys};
use crate::replication::wire::{self, ReplMsg};
use crate::replication::Replicator;
use crate::store::{Cut, Loaded, Store, StoreError};

/// Why a cut was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("taking a cut: {0}")]
    Cut(#[from] CutError),
    #[error("storing a cut: {0}")]
    Store(#[from] StoreError),
    #[error("the cut task failed: {0}")]
    Task(String),
}

/// A node's store, the handles a cut reads (the keyspace, and the
/// replicator whose version vector and stable stamp go with every cut), and
/// what it did, for INFO.
pub struct Persistence {
    pub store: Arc<dyn Store>,
    /// Where every applied write goes between cuts (`appendonly yes`; the
    /// simulation's stores have none, and cut every second).
    pub log: Option<Arc<DeltaLog>>,
    ks: Arc<Keyspace>,
    repl: Option<Arc<Replicator>>,
    /// `appendfsync always`: a connection takes a cut before replying to a
    /// batch that wrote.
    pub always: bool,
    /// One cut at a time: two cuts stored out of order would put older
    /// states over newer ones.
    cut_lock: parking_lot::Mutex<()>,
    pub cuts: AtomicU64,
    pub keys_written: AtomicU64,
    pub failures: AtomicU64,
    /// Unix ms of the last stored cut (0: none yet).
    pub last_cut_ms: AtomicU64,
    /// How long the last stored cut took, in microseconds.
    pub last_cut_us: AtomicU64,
    /// The CPU time the last stored cut took, in microseconds.
    last_cut_cpu_us: AtomicU64,
    /// A store not durable on write (`appendfsync no`): the stable stamp of
    /// the newest cut written since the last sync, and how many cuts ago
    /// that sync was. Only a synced cut's stable stamp may be reported.
    unsynced: parking_lot::Mutex<(Option<Stamp>, u32)>,
}

/// With `appendfsync no`, the store is synced every this many cuts: what
/// the node reports stable (and lets peers collect tombstones below) trails
/// by up to that many seconds.
pub const SYNC_EVERY_CUTS: u32 = 10;

impl Persistence {
    pub fn new(
        store: Arc<dyn Store>,
        log: Option<Arc<DeltaLog>>,
        always: bool,
        ks: Arc<Keyspace>,
        repl: Option<Arc<Replicator>>,
    ) -> Persistence {
        Persistence {
            store,
            log,
            ks,
            repl,
            always,
            cut_lock: parking_lot::Mutex::new(()),
            cuts: AtomicU64::new(0),
            keys_written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_cut_ms: AtomicU64::new(0),
            last_cut_us: AtomicU64::new(0),
            last_cut_cpu_us: AtomicU64::new(0),
            unsynced: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// Loads `loaded` into a node being opened: its keys and floors, its
    /// clock past every stored stamp, and what it had applied (the replicator
    /// resumes from there).
    ///
    /// The keys stream from the store (see [`Store::load_keys`]); with a
    /// flash tier and a limit (`cold_past`), once the allocator holds more
    /// than it the rest stay in the store, each with its stand-in in RAM.
    pub fn restore(&self, loaded: Loaded, cold_past: Option<u64>) -> Result<(), StoreError> {
        self.ks.restore_floors(&loaded.floors);
        let mut keys = 0u64;
        let mut cold = 0u64;
        self.store.load_keys(&mut |db, key, state| {
            let over = cold_past.is_some_and(|limit| {
                crate::alloc::used_bytes().is_some_and(|used| used as u64 > limit)
            });
            keys += 1;
            cold += u64::from(over);
            self.ks.restore_key(db, key, state, over);
        })?;
        self.ks.restored();
        self.ks
            .conflicts
            .restore(loaded.conflicts, loaded.conflicts_next_id);
        if self.ks.clock.observe(loaded.clock).is_err() {
            // The physical clock runs behind what this node stamped before it
            // stopped: writes may lose to its own earlier ones until it catches up.
            warn!(stored = %loaded.clock, "the clock is behind the stored state's newest stamp");
        }
        if let Some(repl) = &self.repl {
            repl.restore(&loaded.applied, &loaded.lives);
        }
        info!(
            keys,
            cold,
            lives = loaded.lives.len(),
            "state loaded from the store"
        );
        Ok(())
    }

    /// Merges every write of the log's unfolded generations into the state
    /// just restored from the store. Returns how many were merged.
    pub fn replay(&self, replay: &Replay) -> Result<u64, LogError> {
        let ks = &self.ks;
        let acked = ks.gc_acked();
        let write_tag = ReplMsg::delta_tag();
        let records = replay.for_each(|payload| {
            let tally_record = match payload.split_first() {
                Some((&TALLY_RECORD, rest)) => Some(read_tally_record(rest)),
                Some((&INT_TALLY_RECORD, rest)) => Some(read_int_tally_record(rest)),
                Some((&OWN_INT_TALLY_RECORD, rest)) => Some(read_own_int_tally_record(rest)),
                _ => None,
            };
            if let Some(record) = tally_record {
                let (db, key, node, tally) =
                    record.map_err(|e| format!("a tally record does not decode: {e}"))?;
                let _ = ks.clock.observe(tally.epoch);
                return merge_key(ks, db, &key, &KeyState::tally_delta(node, tally), acked);
            }
            if let Some((&PLAIN_RECORD, rest)) = payload.split_first() {
                let (db, key, state) = read_plain_record(rest)
                    .map_err(|e| format!("a plain record does not decode: {e}"))?;
                let _ = ks.clock.observe(state.reg.stamp);
                return merge_key(ks, db, &key, &state, acked);
            }
            if let Some((a, b)) = swap_of(payload) {
                if a.max(b) >= ks.databases() {
                    return Err(format!(
                        "a swap of database {a} and {b}, which this node does not have"
                    ));
                }
                for shard in ks.lock_all().shards() {
                    shard.dbs.swap(a, b);
                    shard.swapped(a, b);
                }
                return Ok(());
            }
            let (origin, seq, delta) = chorus_crdt::decode_stored_write(payload, &write_tag)
                .map_err(|e| format!("a record does not decode: {e}"))?;
            let _ = ks.clock.observe(delta.stamp());
            match &delta {
                Delta::Key { db, key, state } => merge_key(ks, *db, key, state, acked)?,
                Delta::Flush { db, stamp } => {
                    let mut all = ks.lock_all();
                    for shard in all.shards() {
                        for (i, d) in shard.dbs.iter_mut().enumerate() {
                            if db.is_none_or(|db| db as usize == i) {
                                d.flush(*stamp);
                            }
                        }
                    }
                }
            }
            if let Some(repl) = &self.repl {
                repl.replayed(origin, seq);
            }
            Ok(())
        })?;
        if records > 0 {
            info!(records, "writes merged from the delta log");
        }
        Ok(records)
    }

    /// A SWAPDB (under every shard lock): the log records it in its place
    /// among the writes, whose database numbers it changes.
    pub fn log_swap(&self, a: usize, b: usize) {
        if let Some(log) = &self.log {
            let mut record = [0u8; 9];
            record[0] = SWAP_RECORD;
            record[1..5].copy_from_slice(&(a as u32).to_le_bytes());
            record[5..].copy_from_slice(&(b as u32).to_le_bytes());
            log.append(&record);
        }
    }

    /// Takes one cut and stores it; returns how many keys it wrote.
    pub fn cut_once(&self) -> Result<usize, PersistError> {
        let _one_at_a_time = self.cut_lock.lock();
        let started = std::time::Instant::now();
        let started_cpu = thread_cpu_time();
        let ks = &self.ks;
        let stable = self.repl.as_ref().map(|r| r.stable_for_cut());
        let mut folding = Folding(None);
        let (taken, swaps, mut cut) = {
            let mut all = ks.lock_all();
            let (taken, floors) = ks.take_changed(&mut all)?;
            // The keys just taken are clean but not stored yet: none may go
            // cold until the store holds them.
            if let Some(tier) = &ks.cold {
                tier.set_folding(true);
                folding.0 = Some(tier);
            }
            if self.log.is_some() {
                ks.cap_gc_for_fold();
            }
            // Every write appended before this was applied before the
            // shards were all locked, so the fold holds it.
            let log_from = self.log.as_ref().map(|log| log.rotate());
            let cut = Cut {
                log_from,
                node: ks.node(),
                clock: ks.clock.now(),
                keys: Vec::new(),
                floors,
                applied: self.repl.as_ref().map(|r| r.cut_vv()).unwrap_or_default(),
                conflicts: ks.conflicts.for_cut(),
            };
            (taken, ks.swaps(), cut)
        };
        let stored = self.store_taken(&taken, swaps, &mut cut);
        if stored.is_err() {
            // Before the flash tier may move them: they are not stored.
            ks.mark_taken_dirty(&taken);
        }
        ks.end_fold_cap();
        drop(folding);
        let written = match stored {
            Ok(written) => written,
            Err(e) => {
                ks.conflicts.cut_failed(&cut.conflicts);
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        drop(taken);
        // Only once the store holds the cut durably do its log files go.
        if let (Some(log), Some(from), true) =
            (&self.log, cut.log_from, self.store.durable_on_write())
        {
            log.folded(from);
        }
        if let (Some(repl), Some(stable)) = (&self.repl, stable) {
            if self.store.durable_on_write() {
                repl.stored(stable);
            } else {
                self.sync_now_and_then(repl, stable)?;
            }
        }
        self.cuts.fetch_add(1, Ordering::Relaxed);
        self.keys_written
            .fetch_add(written as u64, Ordering::Relaxed);
        self.last_cut_ms
            .store(ks.clock.physical_unix_ms(), Ordering::Relaxed);
        self.last_cut_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let cpu = thread_cpu_time().saturating_sub(started_cpu);
        self.last_cut_cpu_us
            .store(cpu.as_micros() as u64, Ordering::Relaxed);
        if ks.cold.is_some() {
            // A flash node's RSS should follow what it holds: the cut's
            // copies of the keys it stored go back to the system.
            drop(cut);
            crate::alloc::give_back_free_pages();
        }
        Ok(written)
    }

    /// Stores the keys a fold took, read a shard at a time under that
    /// shard's lock alone. With a delta log, every [`FOLD_CHUNK_BYTES`] of
    /// encoded states (less on a small flash node) go in a write of their
    /// own (keys only), so a fold holds one chunk of copies at a time, not
    /// every changed key's: the store may then hold states newer than its
    /// version vector says, and a crash between chunks leaves the fold's
    /// log files to replay, both of which merges make harmless. The chunks
    /// before the last are not synced (an fsync each took half a flash
    /// node's fold time); the last, with the fold's metadata, makes them
    /// durable. Without a log (the simulation), everything goes in one
    /// write.
    /// Returns how many keys went.
    fn store_taken(
        &self,
        taken: &TakenKeys,
        swaps: u64,
        cut: &mut Cut,
    ) -> Result<usize, PersistError> {
        let mut written = 0;
        let mut pending_bytes = 0;
        let chunk_bytes = self.chunk_bytes();
        for (index, names) in taken.iter().enumerate() {
            if names.is_empty() {
                continue;
            }
            let from = cut.keys.len();
            self.ks.encode_taken(index, names, swaps, &mut cut.keys)?;
            pending_bytes += cut.keys[from..]
                .iter()
                .map(|(_, key, state)| key.len() + state.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
            if self.log.is_some() && pending_bytes >= chunk_bytes {
                // Stamped after every state in it: a restart moves its clock
                // past the stored clock.
                let chunk = Cut {
                    node: cut.node,
                    clock: self.ks.clock.now(),
                    keys: std::mem::take(&mut cut.keys),
                    ..Cut::default()
                };
                // Durable with the fold's last write, which ends it.
                self.store.write_unsynced(&chunk)?;
                written += chunk.keys.len();
                pending_bytes = 0;
            }
        }
        written += cut.keys.len();
        // The states were read after the keys were taken: the clock stored
        // must be after theirs.
        cut.clock = self.ks.clock.now();
        self.store.write(cut)?;
        Ok(written)
    }

    /// How many bytes of encoded states a fold holds at most before it
    /// stores them: [`FOLD_CHUNK_BYTES`], less on a flash node with a small
    /// limit, where the copies would be a large part of its memory.
    fn chunk_bytes(&self) -> usize {
        let max = self.ks.limits.maxmemory() as usize;
        match self.ks.cold {
            Some(_) if max > 0 => (max / 16).clamp(FOLD_CHUNK_MIN_BYTES, FOLD_CHUNK_BYTES),
            _ => FOLD_CHUNK_BYTES,
        }
    }

    /// A cut carrying `stable` was written to a store that is not durable on
    /// write: report it stored only once a sync covers it, every
    /// [`SYNC_EVERY_CUTS`] cuts.
    fn sync_now_and_then(&self, repl: &Replicator, stable: Stamp) -> Result<(), PersistError> {
        let mut unsynced = self.unsynced.lock();
        unsynced.0 = Some(stable);
        unsynced.1 += 1;
        if unsynced.1 < SYNC_EVERY_CUTS {
            return Ok(());
        }
        self.store.sync()?;
        if let Some(stable) = unsynced.0.take() {
            repl.stored(stable);
        }
        unsynced.1 = 0;
        Ok(())
    }

    /// `appendfsync always`: if the node wrote since `before` (its local
    /// write count when the batch began), waits until the log's fsync
    /// covers the batch's writes; without a log, stores a cut. A failed cut
    /// is logged and counted: the batch's writes are applied and
    /// replicated, not on disk.
    pub async fn sync_if_written(&self, before: u64) {
        if !self.always || self.ks.local_writes() == before {
            return;
        }
        if let Some(log) = &self.log {
            match self.ks.numbered() {
                Some(seq) => log.durable_through(seq).await,
                None => log.durable_at(log.appended()).await,
            }
            return;
        }
        if let Err(e) = self.cut_once() {
            tracing::error!("appendfsync always: {e:#}");
        }
    }

    /// How often cuts are taken: seldom with a log, which makes writes
    /// durable between them.
    pub fn cut_every(&self) -> Duration {
        if self.log.is_some() {
            FOLD_EVERY
        } else {
            CUT_EVERY
        }
    }

    /// Takes a cut every `every` (with a log, longer after a slow fold:
    /// see [`next_fold_in`]), for as long as the node lives.
    pub async fn run(self: Arc<Self>, every: Duration, thread: CutThread) {
        loop {
            let wait = if self.log.is_some() {
                let took = Duration::from_micros(self.last_cut_cpu_us.load(Ordering::Relaxed));
                next_fold_in(every, took)
            } else {
                every
            };
            match &self.ks.cold {
                // Eviction found nothing clean to move out: fold now.
                Some(tier) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tier.fold_wanted.notified() => {}
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
            let result = match thread {
                CutThread::Inline => self.cut_once(),
                CutThread::Blocking => {
                    let this = self.clone();
                    tokio::task::spawn_blocking(move || this.cut_once())
                        .await
                        .unwrap_or_else(|e| Err(PersistError::Task(e.to_string())))
                }
            };
            if let Err(e) = result {
                warn!("{e:#}");
            }
        }
    }
}

/// A fold under way on a flash node: ended however the fold ends, a
/// panic included (else no key could go cold again, and writers held for
/// room would wait for a fold's end that never comes).
struct Folding<'a>(Option<&'a crate::flash::ColdTier>);

impl Drop for Folding<'_> {
    fn drop(&mut self) {
        if let Some(tier) = self.0 {
            tier.set_folding(false);
        }
    }
}

/// How often a node with a store and no log takes a cut: what a crash can
/// lose of the writes no peer received (Redis's `appendfsync everysec`).
pub const CUT_EVERY: Duration = Duration::from_secs(1);

/// How often a node with a delta log folds it into its store: what a
/// restart replays at most, and how long what it reports stable (and so
/// its peers' tombstone collection) may trail.
pub const FOLD_EVERY: Duration = Duration::from_secs(10);

/// A fold may take at most this share of one CPU, on average: the wait
/// after a fold is at least this many times as long as the fold took of
/// CPU. A fold stores every key changed since the last one, so on a node
/// that rewrites the same keys all the time its cost does not grow with
/// the wait, and a 10 s interval spent 8% of the server's CPU on a loop of
/// INCRs over 100,000 keys (the budget for all of persistence is 10%).
pub const FOLD_CPU_SHARE: u32 = 50;

/// The longest a node with a log waits between folds, however slow they
/// are: a restart replays at most about this much of the log.
pub const FOLD_EVERY_MAX: Duration = Duration::from_secs(60);

/// The CPU time this thread has used (a cut runs on one thread).
fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid timespec to fill.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0 {
            return Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
        }
    }
    Duration::ZERO
}

/// How long a node with a log waits after a fold that took `took` of CPU, when
/// it folds every `every` at best.
pub fn next_fold_in(every: Duration, took: Duration) -> Duration {
    (took * FOLD_CPU_SHARE).clamp(every, FOLD_EVERY_MAX.max(every))
}

/// About how many bytes of encoded states a fold stores per write (see
/// `Persistence::store_taken`).
pub const FOLD_CHUNK_BYTES: usize = 8 << 20;

/// The least a flash node's fold stores at a time (see
/// `Persistence::chunk_bytes`).
const FOLD_CHUNK_MIN_BYTES: usize = 256 << 10;

/// The first byte of a log record that is a SWAPDB, not a replication
/// message (whose first byte is the encoding's format version).
const SWAP_RECORD: u8 = 0xff;
/// The first byte of a log record that is an increment of a node's own
/// tally, written by a node without peers: (db, key, node, tally), a few
/// fields where the key state that replication sends has a dozen.
const TALLY_RECORD: u8 = 0xfe;
/// A [`TALLY_RECORD`] of a tally without floats, less those fields (see
/// [`codec::append_own_int_tally`]).
const INT_TALLY_RECORD: u8 = 0xfd;
/// An integer tally of the node's own epoch, laid out on its own (its node
/// and time in fixed width, the epoch's node left out): see
/// [`append_own_int_tally_record`].
const OWN_INT_TALLY_RECORD: u8 = 0xfc;
/// A plain register write (SET, DEL), laid out on its own: see
/// [`put_plain_record`].
const PLAIN_RECORD: u8 = 0xfb;

/// Merges a replayed record's `state` of `key` in database `db`.
fn merge_key(
    ks: &Keyspace,
    db: u32,
    key: &[u8],
    state: &KeyState,
    acked: Stamp,
) -> Result<(), String> {
    let index = ks.shard_of(key);
    let mut locked = ks.lock(SmallVec::from_slice(&[index]));
    let shard = locked.shard(index).map_err(|_| "shard lock".to_string())?;
    let Some(db) = shard.dbs.get_mut(db as usize) else {
        return Err(format!(
            "a write to database {db}, which this node does not have"
        ));
    };
    db.merge(key, state, acked);
    Ok(())
}

fn swap_of(payload: &[u8]) -> Option<(usize, usize)> {
    match payload {
        [SWAP_RECORD, a @ .., b0, b1, b2, b3] if a.len() == 4 => Some((
            u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as usize,
            u32::from_le_bytes([*b0, *b1, *b2, *b3]) as usize,
        )),
        _ => None,
    }
}

/// The sink of a node that keeps a log and does not replicate. Its plain
/// register writes and integer increments are records of their own, which
/// only this log reads ([`PLAIN_RECORD`], [`OWN_INT_TALLY_RECORD`]); its
/// other writes are numbered as replication would number them.
pub struct LogSink {
    heads: wire::Heads,
    seq: AtomicU64,
    log: Arc<DeltaLog>,
}

impl LogSink {
    pub fn new(node: NodeId, log: Arc<DeltaLog>) -> LogSink {
        LogSink {
            heads: wire::Heads::new(node),
            seq: AtomicU64::new(0),
            log,
        }
    }

    /// Appends a write whose body (see `wire::delta_head`) `body` lays out.
    fn append(&self, body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        // Our own types always encode.
        let _ = self.log.append_encoded(|out| {
            self.heads.append(out, seq);
            body(out)
        });
    }
}

impl DeltaSink for LogSink {
    fn publish_key(&self, db: u32, key: &[u8], delta: &chorus_crdt::KeyState, _now_ms: u64) {
        if let Some(most) = plain_record_most(key, delta) {
            self.log
                .append_put(most, |out| put_plain_record(out, db, key, delta));
            return;
        }
        self.append(|out| wire::append_own_key_body(out, self.heads.origin(), db, key, delta));
    }

    fn publish_coll(&self, db: u32, key: &[u8], delta: &chorus_crdt::Coll, _now_ms: u64) {
        self.append(|out| {
            wire::append_coll_body(out, self.heads.origin(), db, key, delta);
            Ok(())
        });
    }

    fn publish_one(
        &self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        one: &chorus_crdt::OneWrite,
        elem: &[u8],
        written: chorus_crdt::Written<'_>,
        _now_ms: u64,
    ) {
        self.append(|out| {
            wire::append_one_body(out, self.heads.origin(), db, key, stamp, one, elem, written);
            Ok(())
        });
    }

    fn publish_many(
        &self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        kind: chorus_crdt::Kind,
        many: &chorus_crdt::ManyWrite,
        _now_ms: u64,
    ) {
        self.append(|out| {
            wire::append_many_body(out, self.heads.origin(), db, key, stamp, kind, many);
            Ok(())
        });
    }

    fn publish_flush(&self, db: Option<u32>, stamp: Stamp, _now_ms: u64) {
        self.append(|out| {
            wire::append_flush_body(out, db, stamp);
            Ok(())
        });
    }

    fn publish_tally(&self, db: u32, key: &[u8], node: NodeId, tally: Tally, _now_ms: u64) {
        if let Some(most) = own_int_tally_record_most(key, node, tally) {
            self.log.append_put(most, |out| {
                put_own_int_tally_record(out, db, key, node, tally)
            });
            return;
        }
        let _ = self.log.append_encoded(|out| {
            append_tally_record(out, db, key, node, tally);
            Ok::<(), std::convert::Infallible>(())
        });
    }
}

/// A tally record: [`OWN_INT_TALLY_RECORD`] when it can be, else
/// [`TALLY_RECORD`] (or [`INT_TALLY_RECORD`] without floats), then
/// `(db, key, node, tally)` as [`chorus_crdt::encode_append`] lays it out,
/// written here by hand (serde's generic path cost 3% of a logging node's
/// CPU on a loop of INCRs), the epoch's node left implied when it is
/// `node` (see [`read_tally_record`]).
fn append_tally_record(out: &mut Vec<u8>, db: u32, key: &[u8], node: NodeId, tally: Tally) {
    if append_own_int_tally_record(out, db, key, node, tally) {
        return;
    }
    let start = out.len();
    out.push(INT_TALLY_RECORD);
    out.push(chorus_crdt::FORMAT_VERSION);
    codec::append_varint(out, db as u64);
    codec::append_bytes(out, key);
    if !codec::append_own_int_tally(out, node, tally) {
        out[start] = TALLY_RECORD;
        codec::append_own_node_tally(out, node, tally);
    }
}

/// An [`OWN_INT_TALLY_RECORD`] of an integer tally whose epoch is `node`'s
/// own (every INCR of a node without peers): `(db, key, node, epoch's
/// time, ops, int)`, the node and the time as eight bytes each, where as
/// varints they took nine or ten and 25 instructions each. False (nothing
/// appended) for any other tally.
fn append_own_int_tally_record(
    out: &mut Vec<u8>,
    db: u32,
    key: &[u8],
    node: NodeId,
    tally: Tally,
) -> bool {
    let Some(most) = own_int_tally_record_most(key, node, tally) else {
        return false;
    };
    codec::append_put(out, most, |room| {
        put_own_int_tally_record(room, db, key, node, tally)
    });
    true
}

/// The most bytes [`put_own_int_tally_record`] takes; `None` for a tally
/// it cannot lay out.
#[inline(always)]
fn own_int_tally_record_most(key: &[u8], node: NodeId, tally: Tally) -> Option<usize> {
    if tally.float.to_bits() != 0
        || tally.float_ops != 0
        || tally.epoch.node != node
        || tally.epoch.time == 0
    {
        return None;
    }
    // Two bytes of prefix, four varints' slots (db, the key's length, ops,
    // the sum), the key and the two fixed fields.
    Some(2 + 4 * codec::MAX_VARINT + key.len() + 16)
}

/// [`append_own_int_tally_record`]'s bytes, into `out`, which holds
/// [`own_int_tally_record_most`]'s room; returns how many.
#[inline(always)]
fn put_own_int_tally_record(
    out: &mut [u8],
    db: u32,
    key: &[u8],
    node: NodeId,
    tally: Tally,
) -> usize {
    let mut w = codec::Slot::new(out);
    put_record_start(
        &mut w,
        OWN_INT_TALLY_RECORD,
        db,
        key,
        node,
        tally.epoch.time,
    );
    w.varint(tally.ops);
    w.varint(((tally.int << 1) ^ (tally.int >> 63)) as u64);
    w.len()
}

/// The most bytes [`put_plain_record`] takes for `key` and `state`; `None`
/// unless `state` is a plain register (no `seen`, extras or collection):
/// every SET, SETEX or DEL of a node without peers.
#[inline(always)]
fn plain_record_most(key: &[u8], state: &chorus_crdt::KeyState) -> Option<usize> {
    let reg = &state.reg;
    if reg.seen.is_some() || state.extras.is_some() || state.coll.is_some() {
        return None;
    }
    // Two bytes of prefix, the db's and the key's length's varint slots,
    // the key, the stamp, the expiry's slot, the value's tag, length slot
    // and bytes.
    Some(
        2 + 2 * codec::MAX_VARINT
            + key.len()
            + 16
            + codec::MAX_VARINT
            + 1
            + codec::MAX_VARINT
            + reg.value.as_deref().map_or(0, <[u8]>::len),
    )
}

/// A [`PLAIN_RECORD`] of a plain register write, into `out`, which holds
/// [`plain_record_most`]'s room: `(db, key, node, time, expiry, value)`,
/// the stamp in sixteen fixed bytes. Returns how many bytes it took. The
/// replication message a logged SET was before (a head with a ten-byte
/// node and a sequence number, the time a nine-byte varint) took a quarter
/// more bytes for a 16-byte key and 190 instructions more: 6% of a logging
/// node's CPU per SET.
#[inline(always)]
fn put_plain_record(out: &mut [u8], db: u32, key: &[u8], state: &chorus_crdt::KeyState) -> usize {
    let reg = &state.reg;
    let mut w = codec::Slot::new(out);
    put_record_start(
        &mut w,
        PLAIN_RECORD,
        db,
        key,
        reg.stamp.node,
        reg.stamp.time,
    );
    w.varint(reg.expire_at_ms);
    match reg.value.as_deref() {
        None => w.byte(0),
        Some(v) => {
            w.byte(1);
            w.varint(v.len() as u64);
            w.bytes(v);
        }
    }
    w.len()
}

/// The fields a [`PLAIN_RECORD`] and an [`OWN_INT_TALLY_RECORD`] start
/// with: `kind`, the format's version, `db`, `key`, then a node and a time
/// (a stamp's, or an epoch's) in eight bytes each.
#[inline(always)]
fn put_record_start(w: &mut codec::Slot, kind: u8, db: u32, key: &[u8], node: NodeId, time: u64) {
    w.byte(kind);
    w.byte(chorus_crdt::FORMAT_VERSION);
    w.varint(db as u64);
    w.varint(key.len() as u64);
    w.bytes(key);
    w.prefix(&node.0.to_le_bytes(), 8);
    w.prefix(&time.to_le_bytes(), 8);
}

/// `(db, key, state)` of what follows [`PLAIN_RECORD`].
fn read_plain_record(
    bytes: &[u8],
) -> Result<(u32, serde_bytes::ByteBuf, chorus_crdt::KeyState), chorus_crdt::DecodeError> {
    type Fields = (
        u32,
        serde_bytes::ByteBuf,
        [u8; 8],
        [u8; 8],
        u64,
        Option<serde_bytes::ByteBuf>,
    );
    let (db, key, node, time, expire_at_ms, value): Fields = chorus_crdt::decode_stored(bytes)?;
    let state = chorus_crdt::KeyState {
        reg: chorus_crdt::Register {
            stamp: Stamp {
                time: u64::from_le_bytes(time),
                node: NodeId(u64::from_le_bytes(node)),
            },
            seen: None,
            value: value.map(|v| v.into_vec().into_boxed_slice()),
            expire_at_ms,
        },
        extras: None,
        coll: None,
    };
    Ok((db, key, state))
}

/// `(db, key, node, tally)` of what follows [`OWN_INT_TALLY_RECORD`].
fn read_own_int_tally_record(
    bytes: &[u8],
) -> Result<(u32, serde_bytes::ByteBuf, NodeId, Tally), chorus_crdt::DecodeError> {
    type Fields = (u32, serde_bytes::ByteBuf, [u8; 8], [u8; 8], u64, i64);
    let (db, key, node, time, ops, int): Fields = chorus_crdt::decode_stored(bytes)?;
    let node = NodeId(u64::from_le_bytes(node));
    let tally = Tally {
        epoch: Stamp {
            time: u64::from_le_bytes(time),
            node,
        },
        ops,
        int,
        float: 0.0,
        float_ops: 0,
    };
    Ok((db, key, node, tally))
}

/// `(db, key, node, tally)` of a tally record (what follows
/// [`TALLY_RECORD`]) written by this build or an earlier one.
fn read_tally_record(
    bytes: &[u8],
) -> Result<(u32, serde_bytes::ByteBuf, NodeId, Tally), chorus_crdt::DecodeError> {
    let (db, key, node, mut tally): (u32, serde_bytes::ByteBuf, NodeId, Tally) =
        chorus_crdt::decode_stored(bytes)?;
    tally.restore_origin(node);
    Ok((db, key, node, tally))
}

/// [`read_tally_record`] of what follows [`INT_TALLY_RECORD`].
fn read_int_tally_record(
    bytes: &[u8],
) -> Result<(u32, serde_bytes::ByteBuf, NodeId, Tally), chorus_crdt::DecodeError> {
    type Fields = (u32, serde_bytes::ByteBuf, NodeId, Stamp, u64, i64);
    let (db, key, node, epoch, ops, int): Fields = chorus_crdt::decode_stored(bytes)?;
    let mut tally = Tally {
        epoch,
        ops,
        int,
        float: 0.0,
        float_ops: 0,
    };
    tally.restore_origin(node);
    Ok((db, key, node, tally))
}

/// Where the periodic cut runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutThread {
    /// On tokio's blocking pool: storing a large cut (a store transaction, an
    /// fsync) never stalls the connections sharing the server threads.
    Blocking,
    /// On the calling task (the simulation: deterministic, one thread).
    Inline,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Fsync;

    /// The payloads of the records in `dir`'s log, in the order written.
    fn logged(dir: &crate::TestDir) -> Vec<Vec<u8>> {
        let (log, replay) = DeltaLog::open(dir, Fsync::No, 0).expect("the log opens");
        let mut out = Vec::new();
        replay
            .for_each(|p| {
                out.push(p.to_vec());
                Ok(())
            })
            .expect("the log reads back");
        log.close();
        out
    }

    /// A node without peers keeps no tombstones, so its log must hold a
    /// key's records in the order of their writes: a DEL replayed before
    /// the SET it deleted would bring the key back. A write made in a
    /// batch on one thread and a later write to the same key on another
    /// reach the log in that order.
    #[test]
    fn a_keys_records_reach_the_log_in_the_order_of_its_writes_across_threads() {
        let dir = crate::TestDir::new("persist", "order");
        let (log, _) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let sink = Arc::new(LogSink::new(NodeId(7), log.clone()));
        let stamp = |time| Stamp {
            time,
            node: NodeId(7),
        };
        let set = KeyState::default().write(stamp(1 << 40), Some(b"the-value"), 0);
        let del = set.write(stamp((1 << 40) + 1), None, 0);
        sink.open_batch();
        sink.publish_key(0, b"k", &set, 0);
        let other = sink.clone();
        std::thread::spawn(move || other.publish_key(0, b"k", &del, 0))
            .join()
            .unwrap();
        sink.close_batch();
        log.close();
        let logged = logged(&dir);
        assert_eq!(logged.len(), 2);
        assert!(
            logged[0].windows(9).any(|w| w == b"the-value"),
            "the DEL's record came before the SET's"
        );
    }

    #[test]
    fn a_slow_fold_waits_long_enough_to_keep_within_its_share_of_a_cpu() {
        let every = FOLD_EVERY;
        assert_eq!(next_fold_in(every, Duration::ZERO), every);
        assert_eq!(next_fold_in(every, Duration::from_millis(100)), every);
        let took = Duration::from_millis(700);
        assert_eq!(next_fold_in(every, took), took * FOLD_CPU_SHARE);
        assert_eq!(next_fold_in(every, Duration::from_secs(30)), FOLD_EVERY_MAX);
        let long = Duration::from_secs(120);
        assert_eq!(next_fold_in(long, Duration::ZERO), long);
    }

    /// An integer tally record of an earlier build, which left its epoch's
    /// node implied (this one writes those as `OWN_INT_TALLY_RECORD`s),
    /// still reads back with that node.
    #[test]
    fn an_earlier_builds_integer_tally_record_reads_back_with_its_epochs_node() {
        let node = NodeId(1 << 63);
        let implied = Stamp {
            time: 1 << 40,
            node: NodeId(0),
        };
        let fields = (
            3u32,
            serde_bytes::Bytes::new(b"n"),
            node,
            implied,
            2u64,
            42i64,
        );
        let record = chorus_crdt::encode_append(&fields, vec![INT_TALLY_RECORD]).expect("encodes");
        let (db, key, read_node, tally) = read_int_tally_record(&record[1..]).expect("reads back");
        assert_eq!((db, &key[..], read_node), (3, &b"n"[..], node));
        assert_eq!(
            tally.epoch,
            Stamp {
                time: 1 << 40,
                node
            }
        );
        assert_eq!((tally.ops, tally.int, tally.float_ops), (2, 42, 0));
    }

    proptest::proptest! {
        /// A plain record holds what serde writes for its fields, and reads
        /// back as the register written.
        #[test]
        fn a_plain_record_holds_what_serde_would_write_and_reads_back_whole(
            db in proptest::prop_oneof![0u32..16, proptest::num::u32::ANY],
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            node in proptest::num::u64::ANY,
            time in proptest::prop_oneof![proptest::strategy::Just(0u64), proptest::num::u64::ANY],
            expire_at_ms in proptest::prop_oneof![proptest::strategy::Just(0u64), proptest::num::u64::ANY],
            value in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..300)),
        ) {
            let state = KeyState {
                reg: chorus_crdt::Register {
                    stamp: Stamp { time, node: NodeId(node) },
                    seen: None,
                    value: value.clone().map(Vec::into_boxed_slice),
                    expire_at_ms,
                },
                extras: None,
                coll: None,
            };
            let most = plain_record_most(&key, &state).expect("a plain register");
            let mut direct = vec![0; most];
            let len = put_plain_record(&mut direct, db, &key, &state);
            direct.truncate(len);
            let fields = (
                db,
                serde_bytes::Bytes::new(&key),
                node.to_le_bytes(),
                time.to_le_bytes(),
                expire_at_ms,
                value.as_deref().map(serde_bytes::Bytes::new),
            );
            let serde = chorus_crdt::encode_append(&fields, vec![PLAIN_RECORD]).expect("encodes");
            proptest::prop_assert_eq!(&direct, &serde);
            let (read_db, read_key, read) = read_plain_record(&direct[1..]).expect("reads back");
            proptest::prop_assert_eq!((read_db, &read_key[..]), (db, &key[..]));
            proptest::prop_assert!(read == state, "read back {:?}", read);
        }
    }

    /// Only a plain register takes a plain record.
    #[test]
    fn a_register_that_saw_another_nodes_write_takes_the_full_record() {
        let mine = Stamp {
            time: 1 << 40,
            node: NodeId(7),
        };
        let theirs = Stamp {
            time: (1 << 40) + 1,
            node: NodeId(8),
        };
        let set = KeyState::default().write(mine, Some(b"v"), 0);
        assert!(plain_record_most(b"k", &set).is_some());
        let over = set.write(theirs, Some(b"w"), 0).write(
            Stamp {
                time: (1 << 40) + 2,
                node: NodeId(7),
            },
            Some(b"x"),
            0,
        );
        assert!(over.reg.seen.is_some());
        assert!(plain_record_most(b"k", &over).is_none());
        let dir = crate::TestDir::new("persist", "full-record");
        let (log, _) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let sink = LogSink::new(NodeId(7), log.clone());
        sink.publish_key(0, b"k", &set, 0);
        sink.publish_key(0, b"k", &over, 0);
        log.close();
        let logged = logged(&dir);
        assert_eq!(logged.len(), 2);
        assert_eq!(logged[0][0], PLAIN_RECORD);
        assert_ne!(logged[1][0], PLAIN_RECORD);
    }

    /// A tally record holds what serde would write, less its epoch's node
    /// when that is the record's node and its floats when it has none (an
    /// integer tally of the node's own epoch: its node and time in fixed
    /// width), and reads back whole.
    #[test]
    fn a_tally_record_holds_what_serde_would_write_less_its_own_epochs_node() {
        for (db, key, node, epoch_node, time, ops, int, float) in [
            (
                7,
                &b"counter:000000012345"[..],
                u64::MAX,
                u64::MAX,
                u64::MAX,
                1,
                i64::MIN,
                0.0,
            ),
            (
                1,
                &[0xffu8; 200][..],
                1 << 63,
                1 << 63,
                1 << 40,
                0,
                i64::MAX,
                0.0,
            ),
            (0, b"", 300, 300, 1, 1, -1, 0.0),
            (0u32, &b""[..], 1u64, 1u64, 1u64, 1u64, 1i64, 0.0f64),
            (3, b"timeless", 9, 9, 0, 1, 1, 0.0),
            (
                15,
                b"counter:000000012345",
                u64::MAX,
                u64::MAX,
                1 << 40,
                300,
                -5,
                2.5,
            ),
            (
                15,
                b"counter:000000012345",
                1 << 63,
                7,
                1 << 40,
                300,
                -5,
                2.5,
            ),
            (0, b"reset", 1 << 63, 0, 0, 0, 0, 0.0),
            (2, b"negative zero", 5, 5, 1 << 40, 1, 3, -0.0),
            (
                u32::MAX,
                &[0xffu8; 200][..],
                1 << 63,
                1 << 63,
                u64::MAX,
                u64::MAX,
                i64::MIN,
                f64::NAN,
            ),
        ] {
            let tally = Tally {
                epoch: Stamp {
                    time,
                    node: NodeId(epoch_node),
                },
                ops,
                int,
                float,
                float_ops: ops / 2,
            };
            let mut direct = Vec::new();
            append_tally_record(&mut direct, db, key, NodeId(node), tally);
            let implied = epoch_node == node && time != 0;
            // An integer tally leaves out the float and its count.
            let int_only = float.to_bits() == 0 && ops / 2 == 0;
            if implied && int_only {
                assert_eq!(direct[0], OWN_INT_TALLY_RECORD);
                let fields = (
                    db,
                    serde_bytes::Bytes::new(key),
                    node.to_le_bytes(),
                    time.to_le_bytes(),
                    ops,
                    int,
                );
                let serde = chorus_crdt::encode_append(&fields, vec![OWN_INT_TALLY_RECORD])
                    .expect("encodes");
                assert_eq!(direct, serde);
                let read = read_own_int_tally_record(&direct[1..]).expect("reads back");
                assert_eq!((read.0, &read.1[..], read.2), (db, key, NodeId(node)));
                assert_eq!(read.3, tally);
                continue;
            }
            let mut serde = vec![TALLY_RECORD];
            serde = chorus_crdt::encode_append(
                &(db, serde_bytes::Bytes::new(key), NodeId(node), tally),
                serde,
            )
            .expect("encodes");
            let node_len = codec::encode_append(&NodeId(node), Vec::new())
                .expect("encodes")
                .len()
                - 1;
            let floats = if int_only { 8 + 1 } else { 0 };
            assert_eq!(
                direct.len() + if implied { node_len - 1 } else { 0 } + floats,
                serde.len()
            );
            if int_only {
                assert_eq!(direct[0], INT_TALLY_RECORD);
                serde[0] = INT_TALLY_RECORD;
                serde.truncate(serde.len() - floats);
            }
            if !implied {
                assert_eq!(direct, serde);
            }
            let read_record = if int_only {
                read_int_tally_record
            } else {
                read_tally_record
            };
            let (read_db, read_key, read_node, read) =
                read_record(&direct[1..]).expect("reads back");
            assert_eq!((read_db, &read_key[..], read_node), (db, key, NodeId(node)));
            assert_eq!(read.epoch, tally.epoch);
            assert_eq!((read.ops, read.int, read.float_ops), (ops, int, ops / 2));
            assert_eq!(read.float.to_bits(), float.to_bits());
        }
    }
}
