//! Where a node's state survives a crash: the [`Store`] trait, and
//! [`MemStore`], an in-memory store that outlives the node using it (the
//! simulation's model of a disk).
//!
//! The keyspace marks every key it changes as dirty; every so often the
//! node takes a [`Cut`]: with every shard locked, the dirty keys' states,
//! the flush floors, and what the node had applied from each origin (its
//! own writes included). Because nothing can write while the cut is taken,
//! the stored state holds exactly the writes the stored version vector
//! names, no more and no less: a restarted node resumes from that vector
//! and its peers send it exactly what it lacks. A crash loses the writes
//! since the last cut that no peer received, as `appendfsync everysec`
//! loses up to a second of writes in Redis.
//!
//! What the node reports as stable to its peers (the stamp below which they
//! may collect tombstones) never passes what it has stored: a node that
//! restarts from its store never brings back a key whose delete its peers
//! have forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chorus_crdt::{KeyState, NodeId, Stamp};
use parking_lot::Mutex;

use crate::alloc::{counted, Uncounted};
use crate::conflicts::{LogCut, LoggedConflict};
use crate::keyspace::StoredKey;

/// One consistent cut of a node's state, as handed to a [`Store`].
#[derive(Debug, Clone, Default)]
pub struct Cut {
    /// The life of the node that took it.
    pub node: NodeId,
    /// A stamp after every write in the cut: a restarted node stamps after it.
    pub clock: Stamp,
    /// Keys changed since the previous cut: their encoded [`KeyState`], or
    /// `None` for a key that is gone.
    pub keys: Vec<StoredKey>,
    /// Each database's flush floor.
    pub floors: Vec<Stamp>,
    /// Applied per origin, this life's own writes and earlier lives' included.
    pub applied: Vec<(NodeId, u64)>,
    /// The conflict log's entries since the previous cut, and the first id
    /// it still keeps.
    pub conflicts: LogCut,
    /// With a delta log: the first generation this cut does not hold (see
    /// `crate::deltalog`); a restart replays from it.
    pub log_from: Option<u64>,
}

/// What a store held when the node started.
#[derive(Debug, Default)]
pub struct Loaded {
    pub keys: Vec<(u32, Vec<u8>, KeyState)>,
    pub floors: Vec<Stamp>,
    pub applied: Vec<(NodeId, u64)>,
    /// Every earlier life of this node that wrote to the store.
    pub lives: Vec<NodeId>,
    pub clock: Stamp,
    /// The conflict log, oldest first, and the id its next entry takes.
    pub conflicts: Vec<LoggedConflict>,
    pub conflicts_next_id: u64,
    /// The first delta log generation the store does not hold.
    pub log_from: u64,
}

/// Why a store could not be opened, read or written. Every variant names
/// where: a corrupt or unreadable store fails start-up with its path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the data store in {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("the data store in {path} is unreadable: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("writing to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("encoding the store's metadata: {0}")]
    Encode(#[from] chorus_crdt::EncodeError),
}

/// Durable storage of a node's state. `write` returns once the cut is
/// durable; a cut is applied whole or not at all.
pub trait Store: Send + Sync {
    /// What INFO shows as `storage_provider`.
    fn name(&self) -> &'static str;
    fn load(&self) -> Result<Loaded, StoreError>;
    /// What [`Store::load`] gives but the keys ([`Store::load_keys`]).
    fn load_meta(&self) -> Result<Loaded, StoreError> {
        let mut loaded = self.load()?;
        loaded.keys.clear();
        Ok(loaded)
    }
    /// Every stored key, handed to `each` one at a time: a node with a
    /// flash tier may hold more than fits in RAM.
    fn load_keys(&self, each: &mut dyn FnMut(u32, Vec<u8>, KeyState)) -> Result<(), StoreError> {
        for (db, key, state) in self.load()?.keys {
            each(db, key, state);
        }
        Ok(())
    }
    fn write(&self, cut: &Cut) -> Result<(), StoreError>;
    /// As [`Store::write`], but the cut need only be readable when this
    /// returns: it becomes durable with the next [`Store::write`] (a
    /// fold's chunks before its last, whose writes the delta log keeps
    /// durable meanwhile).
    fn write_unsynced(&self, cut: &Cut) -> Result<(), StoreError> {
        self.write(cut)
    }
    /// Whether a cut is durable once `write` returns; if not, only once
    /// [`Store::sync`] returns (`appendfsync no`).
    fn durable_on_write(&self) -> bool {
        true
    }
    /// Makes everything written so far durable.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Bytes the store takes on disk, where it has a disk.
    fn disk_bytes(&self) -> Option<u64> {
        None
    }
    /// One key's state as the last stored cut left it (`None`: not held),
    /// read without loading the rest: the flash tier reads cold keys so.
    fn read_key(&self, db: u32, key: &[u8]) -> Result<Option<KeyState>, StoreError> {
        let _ = (db, key);
        Err(StoreError::Corrupt {
            path: PathBuf::from(self.name()),
            what: "this store cannot read one key at a time".into(),
        })
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct MemData {
    keys: BTreeMap<(u32, Vec<u8>), Vec<u8>>,
    /// MemStore only: the conflict log's entries, by id.
    conflicts: BTreeMap<u64, Vec<u8>>,
    floors: Vec<Stamp>,
    applied: BTreeMap<NodeId, u64>,
    lives: BTreeSet<NodeId>,
    clock: Stamp,
    cuts: u64,
    /// The first conflict id still stored (those before it were dropped).
    conflicts_from: u64,
    /// The id the conflict log's next entry takes.
    conflicts_next_id: u64,
    /// The first delta log generation not held (`Cut::log_from`).
    log_from: u64,
}

impl MemData {
    /// Folds a cut's floors, version vector, life and clock into what is
    /// held (the keys are each store's own business).
    pub(crate) fn absorb(&mut self, cut: &Cut) {
        if self.floors.len() < cut.floors.len() {
            self.floors.resize(cut.floors.len(), Stamp::ZERO);
        }
        // A cut holds every database's floor as it is now: it replaces what
        // is held (floors only rise, except where SWAPDB moved them).
        for (have, new) in self.floors.iter_mut().zip(&cut.floors) {
            *have = *new;
        }
        for (origin, seq) in &cut.applied {
            let have = self.applied.entry(*origin).or_default();
            *have = (*have).max(*seq);
        }
        self.lives.insert(cut.node);
        self.clock = self.clock.max(cut.clock);
        self.cuts += 1;
        self.conflicts_from = self.conflicts_from.max(cut.conflicts.keep_from);
        self.conflicts_next_id = self.conflicts_next_id.max(cut.conflicts.next_id);
        if let Some(from) = cut.log_from {
            self.log_from = self.log_from.max(from);
        }
    }

    /// What a node starts from: `keys` and what is held besides.
    pub(crate) fn loaded(
        &self,
        keys: Vec<(u32, Vec<u8>, KeyState)>,
        conflicts: Vec<LoggedConflict>,
    ) -> Loaded {
        Loaded {
            keys,
            conflicts,
            conflicts_next_id: self.conflicts_next_id,
            floors: self.floors.clone(),
            applied: self.applied.iter().map(|(n, s)| (*n, *s)).collect(),
            lives: self.lives.iter().copied().collect(),
            clock: self.clock,
            log_from: self.log_from,
        }
    }
}

/// A key as a store holds it: (database, key) from `k`, the database's
/// number big-endian then the key's bytes, and its state from `v`.
fn stored_key(k: &[u8], v: &[u8]) -> Result<(u32, Vec<u8>, KeyState), String> {
    let Some((db, key)) = k.split_first_chunk::<4>() else {
        return Err(format!("a stored key is too short ({} bytes)", k.len()));
    };
    let db = u32::from_be_bytes(*db);
    let state = chorus_crdt::decode_stored_state(v).map_err(|e| {
        format!(
            "stored state of key {:?} in db {db} does not decode: {e}",
            String::from_utf8_lossy(key)
        )
    })?;
    Ok((db, key.to_vec(), state))
}

/// An entry of the conflict log from the bytes a store holds.
fn stored_conflict(bytes: &[u8]) -> Result<LoggedConflict, chorus_crdt::DecodeError> {
    let ((id, db, key, recorded_ms), conflict) =
        chorus_crdt::decode_stored_conflict::<(u64, usize, serde_bytes::ByteBuf, u64)>(bytes)?;
    Ok(LoggedConflict {
        id,
        db,
        key: key.into_vec(),
        recorded_ms,
        conflict,
    })
}

/// A store in memory. It lives outside the node, so a node that is dropped
/// (crashed) and built again from it finds everything its last cut held and
/// nothing after.
#[derive(Debug, Default)]
pub struct MemStore {
    data: Mutex<MemData>,
}

/// An entry of the conflict log as a store holds it.
pub(crate) fn encoded_conflict(c: &LoggedConflict) -> Result<Vec<u8>, StoreError> {
    Ok(chorus_crdt::encode(c)?)
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// How many of `origin`'s writes the store holds (0: none).
    pub fn applied(&self, origin: NodeId) -> u64 {
        self.data.lock().applied.get(&origin).copied().unwrap_or(0)
    }

    /// Drops every stored key, keeping the rest: a broken disk, for proving
    /// that the simulation's checkers catch a node that restarts claiming
    /// writes it lost.
    pub fn forget_keys(&self) {
        self.data.lock().keys.clear();
    }

    /// A copy of everything held now: a backup, for restoring a node from
    /// an older state than its last cut.
    pub fn backup(&self) -> MemStore {
        MemStore {
            data: Mutex::new(self.data.lock().clone()),
        }
    }

    /// Cuts written so far.
    pub fn cuts(&self) -> u64 {
        self.data.lock().cuts
    }

    /// Keys held (tombstones included).
    pub fn len(&self) -> usize {
        self.data.lock().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store for MemStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let data = self.data.lock();
        let mut keys = Vec::with_capacity(data.keys.len());
        for ((db, key), bytes) in &data.keys {
            let state: KeyState = chorus_crdt::decode(bytes).map_err(|e| StoreError::Corrupt {
                path: PathBuf::from("<memory>"),
                what: format!(
                    "stored state of key {:?} in db {db} does not decode: {e}",
                    String::from_utf8_lossy(key)
                ),
            })?;
            keys.push((*db, key.clone(), state));
        }
        let mut conflicts = Vec::with_capacity(data.conflicts.len());
        for (id, bytes) in &data.conflicts {
            conflicts.push(chorus_crdt::decode(bytes).map_err(|e| StoreError::Corrupt {
                path: PathBuf::from("<memory>"),
                what: format!("stored conflict {id} does not decode: {e}"),
            })?);
        }
        Ok(data.loaded(keys, conflicts))
    }

    fn read_key(&self, db: u32, key: &[u8]) -> Result<Option<KeyState>, StoreError> {
        let data = self.data.lock();
        let Some(bytes) = data.keys.get(&(db, key.to_vec())) else {
            return Ok(None);
        };
        chorus_crdt::decode(bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: PathBuf::from("<memory>"),
                what: format!(
                    "stored state of key {:?} in db {db} does not decode: {e}",
                    String::from_utf8_lossy(key)
                ),
            })
    }

    fn write(&self, cut: &Cut) -> Result<(), StoreError> {
        let mut data = self.data.lock();
        data.absorb(cut);
        let keep_from = data.conflicts_from;
        data.conflicts.retain(|id, _| *id >= keep_from);
        for c in &cut.conflicts.new {
            if c.id >= keep_from {
                data.conflicts.insert(c.id, encoded_conflict(c)?);
            }
        }
        for (db, key, state) in &cut.keys {
            match state {
                Some(bytes) => {
                    data.keys.insert((*db, key.clone()), bytes.clone());
                }
                None => {
                    data.keys.remove(&(*db, key.clone()));
                }
            }
        }
        Ok(())
    }
}

/// A store in a sled database under `dir`: the keys of every database with
/// their encoded states, and the cut's floors, version vector, lives and
/// clock. A cut is one sled batch, applied atomically; with
/// `appendfsync always` or `everysec` it is flushed to disk before `write`
/// returns.
pub struct SledStore {
    db: sled::Db,
    path: std::path::PathBuf,
    fsync: bool,
    /// What the store holds of the cuts' merged parts, kept in memory so a
    /// cut never reads the disk.
    meta: Mutex<MemData>,
}

const KEY_PREFIX: u8 = b'k';
/// The conflict log's entries: this byte, then the id (big-endian).
const CONFLICT_PREFIX: u8 = b'c';
const META_FLOORS: &[u8] = b"m:floors";
const META_APPLIED: &[u8] = b"m:applied";
const META_LIVES: &[u8] = b"m:lives";
const META_CLOCK: &[u8] = b"m:clock";
const META_CONFLICTS_NEXT: &[u8] = b"m:conflicts_next";
const META_LOG_FROM: &[u8] = b"m:log_from";

/// The directory inside `dir` that holds a node's sled files.
pub const SLED_DIR: &str = "chorus.sled";

fn conflict_key(id: u64) -> [u8; 9] {
    let mut k = [CONFLICT_PREFIX; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn sled_key(db: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.push(KEY_PREFIX);
    k.extend_from_slice(&db.to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl SledStore {
    /// Opens (or creates) the store in `dir`/[`SLED_DIR`]. `fsync`: flush
    /// every cut to disk before reporting it stored.
    pub fn open(dir: &std::path::Path, fsync: bool) -> Result<SledStore, StoreError> {
        let path = dir.join(SLED_DIR);
        let db = sled::Config::default()
            .path(&path)
            // With `fsync` every cut flushes; otherwise sled's own flusher does.
            .flush_every_ms(if fsync { None } else { Some(500) })
            .open()
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let store = SledStore {
            db,
            path,
            fsync,
            meta: Mutex::new(MemData::default()),
        };
        let loaded_meta = store.read_meta()?;
        *store.meta.lock() = loaded_meta;
        Ok(store)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    fn read_meta(&self) -> Result<MemData, StoreError> {
        let get = |key: &[u8]| -> Result<Option<sled::IVec>, StoreError> {
            self.db
                .get(key)
                .map_err(|e| self.corrupt(format!("reading {}: {e}", String::from_utf8_lossy(key))))
        };
        fn decoded<T: serde::de::DeserializeOwned + Default>(
            store: &SledStore,
            key: &[u8],
            bytes: Option<sled::IVec>,
        ) -> Result<T, StoreError> {
            match bytes {
                None => Ok(T::default()),
                Some(bytes) => chorus_crdt::decode_stored(&bytes).map_err(|e| {
                    store.corrupt(format!(
                        "stored {} does not decode: {e}",
                        String::from_utf8_lossy(key)
                    ))
                }),
            }
        }
        let applied: Vec<(NodeId, u64)> = decoded(self, META_APPLIED, get(META_APPLIED)?)?;
        let lives: Vec<NodeId> = decoded(self, META_LIVES, get(META_LIVES)?)?;
        Ok(MemData {
            keys: BTreeMap::new(),
            floors: decoded(self, META_FLOORS, get(META_FLOORS)?)?,
            applied: applied.into_iter().collect(),
            lives: lives.into_iter().collect(),
            clock: decoded(self, META_CLOCK, get(META_CLOCK)?)?,
            cuts: 0,
            // The first cut that drops entries reads the ids from the start.
            conflicts_from: 0,
            conflicts_next_id: decoded(self, META_CONFLICTS_NEXT, get(META_CONFLICTS_NEXT)?)?,
            conflicts: BTreeMap::new(),
            log_from: decoded(self, META_LOG_FROM, get(META_LOG_FROM)?)?,
        })
    }
}

pub(crate) fn encoded<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(chorus_crdt::encode(value)?)
}

impl Store for SledStore {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn durable_on_write(&self) -> bool {
        self.fsync
    }

    fn disk_bytes(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| StoreError::Write {
            path: self.path.clone(),
            reason: format!("flushing: {e}"),
        })
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let mut keys = Vec::new();
        for entry in self.db.scan_prefix([KEY_PREFIX]) {
            let (k, v) = entry.map_err(|e| self.corrupt(format!("reading the keys: {e}")))?;
            keys.push(
                stored_key(k.get(1..).unwrap_or_default(), &v)
                    .map_err(|what| self.corrupt(what))?,
            );
        }
        let mut conflicts = Vec::new();
        for entry in self.db.scan_prefix([CONFLICT_PREFIX]) {
            let (k, v) =
                entry.map_err(|e| self.corrupt(format!("reading the conflict log: {e}")))?;
            conflicts.push(stored_conflict(&v).map_err(|e| {
                self.corrupt(format!("stored conflict {k:?} does not decode: {e}"))
            })?);
        }
        Ok(self.meta.lock().loaded(keys, conflicts))
    }

    fn write(&self, cut: &Cut) -> Result<(), StoreError> {
        let mut meta = self.meta.lock();
        let mut next = meta.clone();
        next.absorb(cut);
        let mut batch = sled::Batch::default();
        for (db, key, state) in &cut.keys {
            match state {
                Some(bytes) => batch.insert(sled_key(*db, key), bytes.as_slice()),
                None => batch.remove(sled_key(*db, key)),
            }
        }
        batch.insert(META_FLOORS, encoded(&next.floors)?);
        let applied: Vec<(NodeId, u64)> = next.applied.iter().map(|(n, s)| (*n, *s)).collect();
        batch.insert(META_APPLIED, encoded(&applied)?);
        let lives: Vec<NodeId> = next.lives.iter().copied().collect();
        batch.insert(META_LIVES, encoded(&lives)?);
        batch.insert(META_CLOCK, encoded(&next.clock)?);
        batch.insert(META_CONFLICTS_NEXT, encoded(&next.conflicts_next_id)?);
        batch.insert(META_LOG_FROM, encoded(&next.log_from)?);
        // Entries the log no longer keeps (the bound, a RESET): a range of
        // ids from the oldest stored, read only when it moved.
        if next.conflicts_from > meta.conflicts_from {
            let gone = self
                .db
                .range(conflict_key(0)..conflict_key(next.conflicts_from));
            for entry in gone {
                let (k, _) =
                    entry.map_err(|e| self.corrupt(format!("reading the conflict log: {e}")))?;
                batch.remove(k);
            }
        }
        for c in &cut.conflicts.new {
            if c.id >= next.conflicts_from {
                batch.insert(&conflict_key(c.id)[..], encoded_conflict(c)?);
            }
        }
        self.db.apply_batch(batch).map_err(|e| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        if self.fsync {
            self.db.flush().map_err(|e| StoreError::Write {
                path: self.path.clone(),
                reason: format!("flushing: {e}"),
            })?;
        }
        *meta = next;
        Ok(())
    }
}

/// A store in a redb database, `dir`/[`REDB_FILE`]: a copy-on-write B-tree
/// whose freed pages are reused, so overwriting keys does not grow it
/// without bound as sled 0.34 does (docs/benchmarks.md, "Is sled fit").
/// Each cut is one write transaction, durable when its commit returns. A
/// `dir` holding only a sled store is migrated at open: its state is
/// copied in one transaction, then the sled directory is renamed
/// `chorus.sled.migrated` (kept, never deleted).
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
    meta: Mutex<MemData>,
}

/// The most the store engine caches of its file in memory (redb's default
/// is 1 GiB): part of what a node takes besides `maxmemory`, which does
/// not count it (see `crate::alloc::Uncounted`).
pub const STORE_CACHE_BYTES: usize = 64 << 20;

/// The file inside `dir` that holds a node's redb database.
pub const REDB_FILE: &str = "chorus.redb";

const REDB_KEYS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("keys");
const REDB_CONFLICTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("conflicts");
const REDB_META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");

/// (database, key) as the keys table orders them.
fn redb_key(db: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&db.to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, migrating a sled store found
    /// there first.
    pub fn open(dir: &std::path::Path) -> Result<RedbStore, StoreError> {
        let path = dir.join(REDB_FILE);
        let sled_dir = dir.join(SLED_DIR);
        if !path.exists() && sled_dir.exists() {
            Self::migrate(&sled_dir, &path)?;
        }
        let store = RedbStore {
            db: Self::open_file(&path)?,
            path,
            meta: Mutex::new(MemData::default()),
        };
        let meta = store.read_meta()?;
        *store.meta.lock() = meta;
        Ok(store)
    }

    /// redb's own checks report most damage as errors, but some damaged
    /// files make it panic: either way the start fails naming the file.
    fn open_file(path: &std::path::Path) -> Result<redb::Database, StoreError> {
        let opened = std::panic::catch_unwind(|| {
            let _engine = Uncounted::begin();
            redb::Builder::new()
                .set_cache_size(STORE_CACHE_BYTES)
                .create(path)
        });
        match opened {
            Ok(Ok(db)) => Ok(db),
            Ok(Err(e)) => Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(_) => Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                what: "the database file is damaged (the engine panicked opening it)".into(),
            }),
        }
    }

    /// Copies a sled store's whole state into a new redb file in one
    /// transaction, under a temporary name renamed into place only once
    /// committed (an interrupted migration leaves no `chorus.redb` and
    /// runs again at the next start), then renames the sled directory
    /// `chorus.sled.migrated` (kept, never deleted).
    fn migrate(sled_dir: &std::path::Path, path: &std::path::Path) -> Result<(), StoreError> {
        let loaded = {
            let sled = SledStore::open(sled_dir.parent().unwrap_or(sled_dir), true)?;
            sled.load()?
        };
        let partial = path.with_extension("redb.migrating");
        let _ = std::fs::remove_file(&partial);
        let store = RedbStore {
            db: Self::open_file(&partial)?,
            path: partial.clone(),
            meta: Mutex::new(MemData::default()),
        };
        let keys = loaded.keys.len();
        let cut = Cut {
            node: loaded.lives.first().copied().unwrap_or_default(),
            clock: loaded.clock,
            keys: loaded
                .keys
                .iter()
                .map(|(db, key, state)| Ok((*db, key.clone(), Some(encoded(state)?))))
                .collect::<Result<_, StoreError>>()?,
            floors: loaded.floors.clone(),
            applied: loaded.applied.clone(),
            conflicts: LogCut {
                new: loaded.conflicts,
                keep_from: 0,
                next_id: loaded.conflicts_next_id,
            },
            log_from: Some(loaded.log_from),
        };
        store.commit(&cut, &loaded.lives, redb::Durability::Immediate)?;
        drop(store);
        let in_place = |what: &str, e: std::io::Error| StoreError::Write {
            path: path.to_path_buf(),
            reason: format!("{what}: {e}"),
        };
        std::fs::rename(&partial, path)
            .map_err(|e| in_place("moving the migrated store into place", e))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| in_place("syncing its directory", e))?;
        }
        let kept = sled_dir.with_extension("sled.migrated");
        std::fs::rename(sled_dir, &kept).map_err(|e| StoreError::Write {
            path: sled_dir.to_path_buf(),
            reason: format!("renaming it to {} after migrating it: {e}", kept.display()),
        })?;
        tracing::info!(
            keys,
            "migrated the sled store into {}; the sled files are kept in {}",
            path.display(),
            kept.display()
        );
        Ok(())
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    // Errors are made counted: they leave the engine's stretch (see
    // `crate::alloc::Uncounted`).
    fn corrupt(&self, what: String) -> StoreError {
        counted(|| StoreError::Corrupt {
            path: self.path.clone(),
            what,
        })
    }

    fn write_err(&self, e: impl std::fmt::Display) -> StoreError {
        counted(|| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    fn read_meta(&self) -> Result<MemData, StoreError> {
        let _engine = Uncounted::begin();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.corrupt(format!("reading: {e}")))?;
        let table = match txn.open_table(REDB_META) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.corrupt(format!("reading the metadata: {e}"))),
        };
        fn decoded<T: serde::de::DeserializeOwned + Default>(
            store: &RedbStore,
            table: Option<&redb::ReadOnlyTable<&str, &[u8]>>,
            key: &str,
        ) -> Result<T, StoreError> {
            let Some(table) = table else {
                return Ok(T::default());
            };
            match table
                .get(key)
                .map_err(|e| store.corrupt(format!("reading {key}: {e}")))?
            {
                None => Ok(T::default()),
                Some(bytes) => counted(|| chorus_crdt::decode_stored(bytes.value()))
                    .map_err(|e| store.corrupt(format!("stored {key} does not decode: {e}"))),
            }
        }
        let t = table.as_ref();
        let applied: Vec<(NodeId, u64)> = decoded(self, t, "applied")?;
        let lives: Vec<NodeId> = decoded(self, t, "lives")?;
        let floors = decoded(self, t, "floors")?;
        let (clock, conflicts_next_id, log_from) = (
            decoded(self, t, "clock")?,
            decoded(self, t, "conflicts_next")?,
            decoded(self, t, "log_from")?,
        );
        Ok(counted(|| MemData {
            keys: BTreeMap::new(),
            floors,
            applied: applied.into_iter().collect(),
            lives: lives.into_iter().collect(),
            clock,
            cuts: 0,
            conflicts_from: 0,
            conflicts_next_id,
            conflicts: BTreeMap::new(),
            log_from,
        }))
    }
}

impl Store for RedbStore {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn disk_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.path).map(|m| m.len()).ok()
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let mut keys = Vec::new();
        self.load_keys(&mut |db, key, state| keys.push((db, key, state)))?;
        let mut loaded = self.load_meta()?;
        loaded.keys = keys;
        Ok(loaded)
    }

    fn load_meta(&self) -> Result<Loaded, StoreError> {
        let conflicts = self.guarded(|| self.read_conflicts())?;
        Ok(self.meta.lock().loaded(Vec::new(), conflicts))
    }

    fn load_keys(&self, each: &mut dyn FnMut(u32, Vec<u8>, KeyState)) -> Result<(), StoreError> {
        self.guarded(|| self.read_keys(each))
    }

    fn write(&self, cut: &Cut) -> Result<(), StoreError> {
        self.commit(cut, &[], redb::Durability::Immediate)
    }

    /// Without an fsync: a redb commit of durability `None` is seen by
    /// later reads and made durable by the next immediate commit, which
    /// also frees the pages the unsynced ones left behind.
    fn write_unsynced(&self, cut: &Cut) -> Result<(), StoreError> {
        self.commit(cut, &[], redb::Durability::None)
    }

    fn read_key(&self, db: u32, key: &[u8]) -> Result<Option<KeyState>, StoreError> {
        self.guarded(|| self.read_one(db, key))
    }
}

impl RedbStore {
    fn read_one(&self, db: u32, key: &[u8]) -> Result<Option<KeyState>, StoreError> {
        let _engine = Uncounted::begin();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.corrupt(format!("reading: {e}")))?;
        let table = match txn.open_table(REDB_KEYS) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.corrupt(format!("reading the keys: {e}"))),
            Ok(table) => table,
        };
        let k = redb_key(db, key);
        let Some(v) = table
            .get(k.as_slice())
            .map_err(|e| self.corrupt(format!("reading the keys: {e}")))?
        else {
            return Ok(None);
        };
        // The key's bytes are dropped on the counted side too.
        let state = counted(|| stored_key(&k, v.value()).map(|(_, _, state)| state))
            .map_err(|what| self.corrupt(what))?;
        Ok(Some(state))
    }

    /// As at open: a damaged page may make the engine panic, and the start
    /// then fails naming the file.
    fn guarded<T>(&self, read: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
            Err(self
                .corrupt("the database file is damaged (the engine panicked reading it)".into()))
        })
    }

    fn read_keys(&self, each: &mut dyn FnMut(u32, Vec<u8>, KeyState)) -> Result<(), StoreError> {
        let _engine = Uncounted::begin();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.corrupt(format!("reading: {e}")))?;
        match txn.open_table(REDB_KEYS) {
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.corrupt(format!("reading the keys: {e}"))),
            Ok(table) => {
                let entries = table
                    .range::<&[u8]>(..)
                    .map_err(|e| self.corrupt(format!("reading the keys: {e}")))?;
                for entry in entries {
                    let (k, v) =
                        entry.map_err(|e| self.corrupt(format!("reading the keys: {e}")))?;
                    counted(|| -> Result<(), StoreError> {
                        let (db, key, state) =
                            stored_key(k.value(), v.value()).map_err(|what| self.corrupt(what))?;
                        each(db, key, state);
                        Ok(())
                    })?;
                }
            }
        }
        Ok(())
    }

    fn read_conflicts(&self) -> Result<Vec<LoggedConflict>, StoreError> {
        let _engine = Uncounted::begin();
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.corrupt(format!("reading: {e}")))?;
        let mut conflicts = Vec::new();
        match txn.open_table(REDB_CONFLICTS) {
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.corrupt(format!("reading the conflict log: {e}"))),
            Ok(table) => {
                let entries = table
                    .range::<u64>(..)
                    .map_err(|e| self.corrupt(format!("reading the conflict log: {e}")))?;
                for entry in entries {
                    let (k, v) = entry
                        .map_err(|e| self.corrupt(format!("reading the conflict log: {e}")))?;
                    let conflict = counted(|| stored_conflict(v.value())).map_err(|e| {
                        self.corrupt(format!(
                            "stored conflict {} does not decode: {e}",
                            k.value()
                        ))
                    })?;
                    counted(|| conflicts.push(conflict));
                }
            }
        }
        Ok(conflicts)
    }

    /// Stores `cut`, and `lives` besides its own (a migration's), in one
    /// transaction.
    fn commit(
        &self,
        cut: &Cut,
        lives: &[NodeId],
        durability: redb::Durability,
    ) -> Result<(), StoreError> {
        let mut meta = self.meta.lock();
        let mut next = meta.clone();
        next.absorb(cut);
        next.lives.extend(lives.iter().copied());
        // Not a life: what a cut of a store that had none names.
        next.lives.remove(&NodeId::default());
        let _engine = Uncounted::begin();
        let mut txn = self.db.begin_write().map_err(|e| self.write_err(e))?;
        txn.set_durability(durability);
        {
            let mut keys = txn.open_table(REDB_KEYS).map_err(|e| self.write_err(e))?;
            // In the tree's order: each leaf is then copied and filled once
            // while it is hot, where the cut's hash order touched a random
            // leaf per key: a first fold of 250,000 keys took 1.9 s that
            // way, 1.2 s sorted.
            let mut order: Vec<&StoredKey> = cut.keys.iter().collect();
            order.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            for (db, key, state) in order {
                let k = redb_key(*db, key);
                match state {
                    Some(bytes) => {
                        keys.insert(k.as_slice(), bytes.as_slice())
                            .map_err(|e| self.write_err(e))?;
                    }
                    None => {
                        keys.remove(k.as_slice()).map_err(|e| self.write_err(e))?;
                    }
                }
            }
            let mut m = txn.open_table(REDB_META).map_err(|e| self.write_err(e))?;
            let applied: Vec<(NodeId, u64)> = next.applied.iter().map(|(n, s)| (*n, *s)).collect();
            let lives: Vec<NodeId> = next.lives.iter().copied().collect();
            for (name, bytes) in [
                ("floors", encoded(&next.floors)?),
                ("applied", encoded(&applied)?),
                ("lives", encoded(&lives)?),
                ("clock", encoded(&next.clock)?),
                ("conflicts_next", encoded(&next.conflicts_next_id)?),
                ("log_from", encoded(&next.log_from)?),
            ] {
                m.insert(name, bytes.as_slice())
                    .map_err(|e| self.write_err(e))?;
            }
            let mut conflicts = txn
                .open_table(REDB_CONFLICTS)
                .map_err(|e| self.write_err(e))?;
            if next.conflicts_from > meta.conflicts_from {
                let from = next.conflicts_from;
                conflicts
                    .retain_in::<u64, _>(..from, |_, _| false)
                    .map_err(|e| self.write_err(e))?;
            }
            for c in &cut.conflicts.new {
                if c.id >= next.conflicts_from {
                    conflicts
                        .insert(c.id, encoded_conflict(c)?.as_slice())
                        .map_err(|e| self.write_err(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.write_err(e))?;
        counted(|| *meta = next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use chorus_crdt::{Clock, NodeId};

    use super::*;
    use crate::keyspace::Keyspace;

    /// A directory of this process's own, empty.
    fn empty_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("chorus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn tracking_keyspace(node: u64) -> Keyspace {
        let mut ks = Keyspace::new(
            2,
            Clock::new(
                NodeId(node),
                chorus_crdt::system_clock,
                Duration::from_millis(500),
            ),
        );
        ks.track_dirty();
        ks
    }

    fn cut(ks: &Keyspace) -> Cut {
        let mut all = ks.lock_all();
        let (keys, floors) = ks.take_cut(&mut all).unwrap();
        Cut {
            node: ks.node(),
            clock: ks.clock.now(),
            keys,
            floors,
            applied: vec![(NodeId(9), 4)],
            conflicts: ks.conflicts.for_cut(),
            log_from: None,
        }
    }

    /// A standalone node with the default config, built on `store`.
    fn node_with(store: Arc<dyn Store>) -> Arc<crate::Node> {
        crate::Node::open(
            crate::Config::load(None, &[]).unwrap(),
            crate::NodeEnv {
                node: NodeId(1),
                physical: chorus_crdt::system_clock,
                wall_ms: || 0,
                hash_seed: None,
                store: Some(store),
                log_dir: None,
            },
        )
        .unwrap()
    }

    fn set(ks: &Keyspace, db: usize, key: &[u8], value: Option<&[u8]>) {
        let mut all = ks.lock_all();
        ks.update(&mut all, db, key, 0, |w| w.set(value, 0))
            .unwrap();
    }

    #[test]
    fn a_keyspace_restored_from_its_cuts_equals_the_original() {
        let ks = tracking_keyspace(1);
        let store = MemStore::new();
        set(&ks, 0, b"a", Some(b"1"));
        set(&ks, 1, b"b", Some(b"2"));
        store.write(&cut(&ks)).unwrap();
        set(&ks, 0, b"a", Some(b"3"));
        {
            let mut all = ks.lock_all();
            ks.update(&mut all, 0, b"n", 0, |w| w.incr(5, 0.0, false))
                .unwrap();
        }
        let second = cut(&ks);
        assert_eq!(
            second.keys.len(),
            2,
            "only what changed since the first cut"
        );
        store.write(&second).unwrap();
        assert!(cut(&ks).keys.is_empty(), "a cut takes the dirty keys");

        let loaded = store.load().unwrap();
        assert_eq!(loaded.lives, vec![NodeId(1)]);
        assert_eq!(loaded.applied, vec![(NodeId(9), 4)]);
        let restarted = tracking_keyspace(2);
        restarted.restore(loaded.keys, &loaded.floors);
        assert_eq!(restarted.dump(), ks.dump());
        assert!(cut(&restarted).keys.is_empty(), "nothing loaded is dirty");
    }

    #[test]
    fn a_flush_reaches_the_store_as_removals_and_a_floor() {
        let ks = tracking_keyspace(1);
        let store = MemStore::new();
        set(&ks, 0, b"a", Some(b"1"));
        set(&ks, 0, b"b", Some(b"2"));
        store.write(&cut(&ks)).unwrap();
        ks.flush_local(&mut ks.lock_all(), None);
        let flushed = cut(&ks);
        assert!(flushed.keys.iter().all(|(_, _, s)| s.is_none()));
        assert!(!flushed.floors[0].is_zero());
        store.write(&flushed).unwrap();
        assert!(store.is_empty());
        let loaded = store.load().unwrap();
        assert_eq!(loaded.floors, ks.dump().1);
    }

    /// A store that refuses every write.
    struct Failing;

    impl Store for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn load(&self) -> Result<Loaded, StoreError> {
            Ok(Loaded::default())
        }
        fn write(&self, _: &Cut) -> Result<(), StoreError> {
            Err(StoreError::Write {
                path: PathBuf::from("/failing"),
                reason: "disk full".into(),
            })
        }
    }

    #[test]
    fn keys_of_a_cut_that_could_not_be_stored_go_into_the_next() {
        let node = node_with(Arc::new(Failing));
        set(&node.ks, 0, b"a", Some(b"1"));
        let persistence = node.persistence.as_ref().unwrap();
        let err = persistence.cut_once().unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        let server = crate::server::Server::new(node.clone());
        let info = crate::info::render(&server, &mut node.ks.lock_all(), &["persistence".into()]);
        assert!(info.contains("storage_provider:failing\r\n"), "{info}");
        assert!(info.contains("store_write_failures:1\r\n"), "{info}");
        assert!(info.contains("store_cuts:0\r\n"), "{info}");
        let mut all = node.ks.lock_all();
        let (keys, _) = node.ks.take_cut(&mut all).unwrap();
        assert_eq!(keys.len(), 1, "the key is dirty again");
    }

    #[test]
    fn a_node_with_a_store_cuts_into_it_and_shows_it_in_info() {
        let store = Arc::new(MemStore::new());
        let node = node_with(store.clone());
        set(&node.ks, 0, b"a", Some(b"1"));
        let persistence = node.persistence.as_ref().unwrap();
        assert_eq!(persistence.cut_once().unwrap(), 1);
        assert_eq!(persistence.cut_once().unwrap(), 0);
        assert_eq!(store.len(), 1);
        let server = crate::server::Server::new(node.clone());
        let info = crate::info::render(&server, &mut node.ks.lock_all(), &["persistence".into()]);
        for line in [
            "storage_provider:memory",
            "store_cuts:2",
            "store_keys_written:1",
            "store_write_failures:0",
        ] {
            assert!(info.contains(&format!("{line}\r\n")), "{info}");
        }
    }

    fn log_conflict(log: &crate::conflicts::ConflictLog, n: u64) {
        use chorus_crdt::{Conflict, ConflictKind, Side, Summary};
        let side = |t: u64| Side {
            origin: NodeId(t),
            stamp: Stamp {
                time: t,
                node: NodeId(t),
            },
            what: Summary::Value(format!("v{t}").into_bytes()),
        };
        let c = Conflict {
            element: None,
            kind: ConflictKind::ConcurrentWrite,
            winner: side(n + 100),
            loser: side(n),
        };
        log.record(0, format!("k{n}").as_bytes(), n, vec![c]);
    }

    /// #12: the conflict log lives in the store: a node reopened has the
    /// entries its cuts carried, minus those the bound or a RESET dropped,
    /// and ids go on after the newest; a cut the store refused is carried
    /// by the next.
    #[test]
    fn the_conflict_log_survives_a_reopen_without_what_it_dropped() {
        use crate::conflicts::ConflictLog;
        let dir = empty_dir("sled-log");
        let write = |store: &dyn Store, log: &ConflictLog| {
            let cut = Cut {
                conflicts: log.for_cut(),
                log_from: None,
                ..Cut::default()
            };
            store.write(&cut).unwrap();
        };
        let ids = |loaded: &Loaded| -> Vec<u64> { loaded.conflicts.iter().map(|c| c.id).collect() };
        let log = ConflictLog::new(3);
        {
            let store = SledStore::open(&dir, true).unwrap();
            log_conflict(&log, 1);
            log_conflict(&log, 2);
            write(&store, &log);
            log_conflict(&log, 3);
            let refused = log.for_cut();
            assert_eq!(refused.new.len(), 1);
            log.cut_failed(&refused);
            for n in 4..=5 {
                log_conflict(&log, n);
            }
            write(&store, &log);
        }
        let store = reopen(&dir, true);
        let loaded = store.load().unwrap();
        assert_eq!(ids(&loaded), vec![3, 4, 5], "the bound dropped 1 and 2");
        let again = ConflictLog::new(3);
        again.restore(loaded.conflicts, loaded.conflicts_next_id);
        log_conflict(&again, 6);
        assert_eq!(again.all()[0].id, 6, "ids go on");
        assert_eq!(again.len(), 3);
        write(&store, &again);
        assert_eq!(ids(&store.load().unwrap()), vec![4, 5, 6]);
        again.reset();
        write(&store, &again);
        drop(store);
        assert!(
            reopen(&dir, true).load().unwrap().conflicts.is_empty(),
            "RESET reached the store"
        );
        let _ = std::fs::remove_dir_all(&dir);
        // The memory store keeps the same.
        let mem = MemStore::new();
        let log = ConflictLog::new(2);
        for n in 1..=3 {
            log_conflict(&log, n);
        }
        write(&mem, &log);
        assert_eq!(ids(&mem.load().unwrap()), vec![2, 3]);
    }

    #[test]
    fn a_sled_store_reopened_holds_what_its_cuts_wrote() {
        let dir = empty_dir("sled-unit");
        let ks = tracking_keyspace(1);
        set(&ks, 0, b"a", Some(b"1"));
        set(&ks, 1, b"b", Some(b"2"));
        {
            let store = SledStore::open(&dir, true).unwrap();
            store.write(&cut(&ks)).unwrap();
            set(&ks, 1, b"b", None);
            store.write(&cut(&ks)).unwrap();
        }
        let store = reopen(&dir, true);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.lives, vec![NodeId(1)]);
        assert_eq!(loaded.applied, vec![(NodeId(9), 4)]);
        let restarted = tracking_keyspace(2);
        restarted.restore(loaded.keys, &loaded.floors);
        assert_eq!(restarted.dump(), ks.dump());
        // A later life adds itself; earlier lives stay.
        let mut next = cut(&restarted);
        next.node = NodeId(2);
        next.applied = vec![(NodeId(9), 7), (NodeId(1), 3)];
        store.write(&next).unwrap();
        drop(store);
        let loaded = reopen(&dir, false).load().unwrap();
        assert_eq!(loaded.lives, vec![NodeId(1), NodeId(2)]);
        assert_eq!(loaded.applied, vec![(NodeId(1), 3), (NodeId(9), 7)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A cut holds exactly the keys changed since the previous one: a key
    /// written, a key deleted (a removal), a key deleted and written again
    /// (its state), and after a flush every key the database had.
    #[test]
    fn a_cut_holds_what_changed_since_the_last_and_nothing_else() {
        let ks = tracking_keyspace(1);
        let names = |cut: &Cut| -> Vec<(u32, String, bool)> {
            let mut v: Vec<_> = cut
                .keys
                .iter()
                .map(|(db, k, s)| (*db, String::from_utf8_lossy(k).into_owned(), s.is_some()))
                .collect();
            v.sort();
            v
        };
        set(&ks, 0, b"a", Some(b"1"));
        set(&ks, 0, b"b", Some(b"1"));
        set(&ks, 1, b"a-rather-long-key-on-the-heap", Some(b"1"));
        assert_eq!(
            names(&cut(&ks)),
            vec![
                (0, "a".into(), true),
                (0, "b".into(), true),
                (1, "a-rather-long-key-on-the-heap".into(), true)
            ]
        );
        assert!(cut(&ks).keys.is_empty(), "nothing changed since");
        set(&ks, 0, b"a", None);
        set(&ks, 0, b"b", None);
        set(&ks, 0, b"b", Some(b"2"));
        set(&ks, 1, b"a-rather-long-key-on-the-heap", Some(b"2"));
        assert_eq!(
            names(&cut(&ks)),
            vec![
                (0, "a".into(), false),
                (0, "b".into(), true),
                (1, "a-rather-long-key-on-the-heap".into(), true)
            ]
        );
        set(&ks, 1, b"c", Some(b"3"));
        cut(&ks);
        let mut all = ks.lock_all();
        for shard in all.shards() {
            shard.dbs[1].flush(ks.clock.now());
        }
        drop(all);
        assert_eq!(
            names(&cut(&ks)),
            vec![
                (1, "a-rather-long-key-on-the-heap".into(), false),
                (1, "c".into(), false)
            ]
        );
    }

    /// The store a node opens: what its cuts wrote (keys, removals, lives,
    /// version vector, conflict log and its bound, the log generation) is
    /// what it loads after a reopen.
    #[test]
    fn a_redb_store_reopened_holds_what_its_cuts_wrote() {
        use crate::conflicts::ConflictLog;
        let dir = empty_dir("redb-unit");
        let ks = tracking_keyspace(1);
        let log = ConflictLog::new(2);
        set(&ks, 0, b"a", Some(b"1"));
        set(&ks, 1, b"b", Some(b"2"));
        {
            let store = RedbStore::open(&dir).unwrap();
            store.write(&cut(&ks)).unwrap();
            set(&ks, 1, b"b", None);
            for n in 1..=3 {
                log_conflict(&log, n);
            }
            store
                .write(&Cut {
                    conflicts: log.for_cut(),
                    log_from: Some(7),
                    ..cut(&ks)
                })
                .unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.lives, vec![NodeId(1)]);
        assert_eq!(loaded.applied, vec![(NodeId(9), 4)]);
        assert_eq!(loaded.log_from, 7);
        let ids: Vec<u64> = loaded.conflicts.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![2, 3], "the bound dropped 1");
        let restarted = tracking_keyspace(2);
        restarted.restore(loaded.keys, &loaded.floors);
        assert_eq!(restarted.dump(), ks.dump());
        assert!(store.disk_bytes().unwrap() > 0);
        // A second node on the same dir is refused, naming the file.
        let err = RedbStore::open(&dir).err().expect("refused").to_string();
        assert!(
            err.contains("cannot open the data store") && err.contains(REDB_FILE),
            "{err}"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A damaged store file fails the start naming the file, whatever the
    /// engine makes of it (an error or a panic).
    #[test]
    fn a_damaged_redb_file_is_an_error_naming_it() {
        let dir = empty_dir("redb-bad");
        let junk: Vec<u8> = (0..65536u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(dir.join(REDB_FILE), &junk).unwrap();
        let err = RedbStore::open(&dir).err().expect("refused").to_string();
        assert!(err.contains(REDB_FILE), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// #14: a dir holding a sled store (every node before redb) starts with
    /// all of it in redb, and the sled files kept aside, not deleted.
    #[test]
    fn a_sled_store_is_migrated_into_redb_once_and_kept() {
        let dir = empty_dir("migrate");
        let ks = tracking_keyspace(1);
        set(&ks, 0, b"a", Some(b"1"));
        set(&ks, 1, b"b", Some(b"2"));
        let log = crate::conflicts::ConflictLog::new(10);
        log_conflict(&log, 1);
        {
            let sled = SledStore::open(&dir, true).unwrap();
            let mut first = cut(&ks);
            first.conflicts = log.for_cut();
            sled.write(&first).unwrap();
            let mut second = cut(&tracking_keyspace(2));
            second.node = NodeId(2);
            sled.write(&second).unwrap();
        }
        let before = {
            // While something else holds the sled store, the start fails,
            // and leaves nothing that would stop the next from migrating.
            let held = reopen(&dir, true);
            let err = RedbStore::open(&dir)
                .err()
                .expect("sled is locked")
                .to_string();
            assert!(err.contains(SLED_DIR), "{err}");
            assert!(!dir.join(REDB_FILE).exists());
            held.load().unwrap()
        };
        // A migration cut short before: its partial file is not the store.
        std::fs::write(dir.join("chorus.redb.migrating"), b"half a copy").unwrap();
        let store = RedbStore::open(&dir).unwrap();
        assert!(!dir.join("chorus.redb.migrating").exists());
        assert!(!dir.join(SLED_DIR).exists());
        assert!(dir.join("chorus.sled.migrated").exists(), "kept aside");
        let loaded = store.load().unwrap();
        assert_eq!(loaded.lives, vec![NodeId(1), NodeId(2)]);
        assert_eq!(loaded.applied, before.applied);
        assert_eq!(loaded.clock, before.clock);
        assert_eq!(loaded.conflicts.len(), 1);
        assert_eq!(loaded.conflicts_next_id, before.conflicts_next_id);
        let restarted = tracking_keyspace(3);
        restarted.restore(loaded.keys, &loaded.floors);
        assert_eq!(restarted.dump(), ks.dump());
        drop(store);
        // Opened again: no second migration, the same state.
        let again = RedbStore::open(&dir).unwrap().load().unwrap();
        assert_eq!(again.lives, vec![NodeId(1), NodeId(2)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A store that, like sled under `appendfsync no`, holds a cut only
    /// in memory until synced.
    struct Lazy {
        inner: MemStore,
        syncs: std::sync::atomic::AtomicU64,
    }

    impl Store for Lazy {
        fn name(&self) -> &'static str {
            "lazy"
        }
        fn load(&self) -> Result<Loaded, StoreError> {
            self.inner.load()
        }
        fn write(&self, cut: &Cut) -> Result<(), StoreError> {
            self.inner.write(cut)
        }
        fn durable_on_write(&self) -> bool {
            false
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }

    /// #11 item 10: with `appendfsync no` a node reported as stable (and so
    /// let peers collect tombstones below) what its last cut held before
    /// that cut was on disk; a crash then could bring a deleted key back.
    #[test]
    fn with_appendfsync_no_only_a_synced_cut_is_reported_stable() {
        let store = Arc::new(Lazy {
            inner: MemStore::new(),
            syncs: Default::default(),
        });
        let config = crate::Config::load(
            None,
            &["--active-replica", "yes", "--masterauth", "s"].map(String::from),
        )
        .unwrap();
        let node = crate::Node::open(
            config,
            crate::NodeEnv {
                node: NodeId(1),
                physical: chorus_crdt::system_clock,
                wall_ms: || 0,
                hash_seed: None,
                store: Some(store.clone()),
                log_dir: None,
            },
        )
        .unwrap();
        let repl = node.repl.clone().unwrap();
        let persistence = node.persistence.clone().unwrap();
        repl.gc_tick(&node.ks);
        let first = repl.stable_for_cut();
        assert!(!first.is_zero(), "alone, the node's own promise");
        for _ in 1..crate::persist::SYNC_EVERY_CUTS {
            persistence.cut_once().unwrap();
            assert_eq!(
                repl.stored_stable(),
                Some(Stamp::ZERO),
                "written, not synced"
            );
        }
        persistence.cut_once().unwrap();
        assert_eq!(store.syncs.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(repl.stored_stable(), Some(first), "synced: now stable");
    }

    /// Opens a store just closed: sled's flusher thread may hold the file
    /// lock for a moment after the last handle is dropped.
    fn reopen(dir: &std::path::Path, fsync: bool) -> SledStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match SledStore::open(dir, fsync) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(format!("{e:#}").contains("lock"), "{e:#}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e:#}"),
            }
        }
    }

    #[test]
    fn stored_bytes_that_do_not_decode_are_an_error_not_a_panic() {
        let store = MemStore::new();
        store
            .write(&Cut {
                keys: vec![(0, b"k".to_vec(), Some(vec![0xff, 0x00, 0x13]))],
                ..Cut::default()
            })
            .unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    /// Writes keys k0, k1... of 8 KB values, three fold chunks' worth;
    /// returns how many.
    fn write_three_chunks(ks: &Keyspace) -> usize {
        let value = vec![b'v'; 8 << 10];
        let keys = 3 * crate::persist::FOLD_CHUNK_BYTES / value.len();
        for i in 0..keys {
            let key = format!("k{i}");
            let mut l = ks.lock(smallvec::smallvec![ks.shard_of(key.as_bytes())]);
            ks.update(&mut l, 0, key.as_bytes(), 0, |w| w.set(Some(&value), 0))
                .unwrap();
        }
        keys
    }

    /// A store whose unsynced writes go through and whose synced ones fail
    /// while `failing`: a disk that fills up at a fold's last chunk.
    #[derive(Default)]
    struct FailsAtTheEnd {
        inner: MemStore,
        failing: std::sync::atomic::AtomicBool,
        unsynced: std::sync::atomic::AtomicU64,
    }

    impl Store for FailsAtTheEnd {
        fn name(&self) -> &'static str {
            "fails-at-the-end"
        }
        fn load(&self) -> Result<Loaded, StoreError> {
            self.inner.load()
        }
        fn write(&self, cut: &Cut) -> Result<(), StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Write {
                    path: PathBuf::from("/fails-at-the-end"),
                    reason: "disk full".into(),
                });
            }
            self.inner.write(cut)
        }
        fn write_unsynced(&self, cut: &Cut) -> Result<(), StoreError> {
            self.unsynced
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.write(cut)
        }
    }

    /// A fold whose last write fails after chunks went unsynced: the store
    /// may hold those chunks, but nothing says they are durable, so the
    /// fold's log files stay (a restart replays them), its metadata is not
    /// stored, and every key it took is stored by the next fold.
    #[test]
    fn a_fold_whose_last_write_fails_keeps_its_log_and_leaves_its_keys_to_the_next() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = empty_dir("fold-fails-last");
        let store = Arc::new(FailsAtTheEnd::default());
        let ks = Arc::new(tracking_keyspace(1));
        let (log, _) = crate::deltalog::DeltaLog::open(&dir, crate::config::Fsync::No, 0).unwrap();
        let persistence =
            crate::persist::Persistence::new(store.clone(), Some(log), false, ks.clone(), None);
        let generations = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.join(crate::deltalog::LOG_DIR))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let keys = write_three_chunks(&ks);
        let before = generations();
        assert_eq!(before.len(), 1, "{before:?}");

        store.failing.store(true, Relaxed);
        let err = persistence.cut_once().unwrap_err();
        assert!(format!("{err:#}").contains("disk full"), "{err:#}");
        assert!(store.unsynced.load(Relaxed) >= 2, "chunks went first");
        assert!(!store.inner.is_empty(), "the chunks are in the store");
        assert_eq!(store.inner.load().unwrap().log_from, 0, "no metadata");
        let after = generations();
        assert!(
            before.iter().all(|g| after.contains(g)),
            "the fold's log files stay: {before:?} -> {after:?}"
        );

        store.failing.store(false, Relaxed);
        assert_eq!(persistence.cut_once().unwrap(), keys, "every key again");
        assert_eq!(store.inner.len(), keys);
        let loaded = store.inner.load().unwrap();
        assert_eq!(loaded.log_from, 2, "the second fold's metadata");
        // The writer thread starts the fold's new generation, then the
        // older files go.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while generations() != ["0000000000000002.log"] {
            assert!(std::time::Instant::now() < deadline, "{:?}", generations());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fold with a delta log stores its keys a chunk at a time, each
    /// shard read under its own lock; a SWAPDB between taking the keys and
    /// storing them fails the fold, and the next one stores them.
    #[test]
    fn a_fold_stores_in_chunks_and_a_swapdb_meanwhile_leaves_its_keys_to_the_next() {
        let dir = empty_dir("chunked-fold");
        let store = Arc::new(MemStore::new());
        let ks = Arc::new(tracking_keyspace(1));
        let (log, _) = crate::deltalog::DeltaLog::open(&dir, crate::config::Fsync::No, 0).unwrap();
        let persistence =
            crate::persist::Persistence::new(store.clone(), Some(log), false, ks.clone(), None);
        let keys = write_three_chunks(&ks);
        assert_eq!(persistence.cut_once().unwrap(), keys);
        assert!(store.cuts() >= 3, "{} writes", store.cuts());
        assert_eq!(store.len(), keys);
        let loaded = store.load().unwrap();
        assert_eq!(loaded.log_from, 1, "the metadata went with the last chunk");

        // Taken, then a SWAPDB: nothing of them is stored.
        let mut l = ks.lock(smallvec::smallvec![ks.shard_of(b"k0")]);
        ks.update(&mut l, 0, b"k0", 0, |w| w.set(Some(b"new"), 0))
            .unwrap();
        drop(l);
        let (taken, _) = ks.take_changed(&mut ks.lock_all()).unwrap();
        let swaps = ks.swaps();
        ks.note_swap();
        let index = ks.shard_of(b"k0");
        let mut into = Vec::new();
        assert!(matches!(
            ks.encode_taken(index, &taken[index], swaps, &mut into),
            Err(crate::keyspace::CutError::Swapped)
        ));
        ks.mark_taken_dirty(&taken);
        persistence.cut_once().unwrap();
        let state = store.read_key(0, b"k0").unwrap().unwrap();
        assert_eq!(state.read(0).render().as_deref(), Some(&b"new"[..]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
