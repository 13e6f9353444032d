//! Taking cuts of the node's state into its [`Store`] (see `store`), and
//! starting a node from what its store holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use chorus_crdt::Stamp;

use crate::keyspace::CutError;
use crate::keyspace::Keyspace;
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
        always: bool,
        ks: Arc<Keyspace>,
        repl: Option<Arc<Replicator>>,
    ) -> Persistence {
        Persistence {
            store,
            ks,
            repl,
            always,
            cut_lock: parking_lot::Mutex::new(()),
            cuts: AtomicU64::new(0),
            keys_written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_cut_ms: AtomicU64::new(0),
            unsynced: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// Loads `loaded` into a node being opened: its keys and floors, its
    /// clock past every stored stamp, and what it had applied (the replicator
    /// resumes from there).
    pub fn restore(&self, loaded: Loaded) {
        let keys = loaded.keys.len();
        self.ks.restore(loaded.keys, &loaded.floors);
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
            lives = loaded.lives.len(),
            "state loaded from the store"
        );
    }

    /// Takes one cut and stores it; returns how many keys it wrote.
    pub fn cut_once(&self) -> Result<usize, PersistError> {
        let _one_at_a_time = self.cut_lock.lock();
        let ks = &self.ks;
        let stable = self.repl.as_ref().map(|r| r.stable_for_cut());
        let cut = {
            let mut all = ks.lock_all();
            let (keys, floors) = ks.take_cut(&mut all)?;
            Cut {
                node: ks.node(),
                clock: ks.clock.now(),
                keys,
                floors,
                applied: self.repl.as_ref().map(|r| r.cut_vv()).unwrap_or_default(),
                conflicts: ks.conflicts.for_cut(),
            }
        };
        let written = cut.keys.len();
        if let Err(e) = self.store.write(&cut) {
            ks.mark_dirty(&cut.keys);
            ks.conflicts.cut_failed(&cut.conflicts);
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
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
        Ok(written)
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

    /// `appendfsync always`: stores a cut if the node wrote since `before`
    /// (its local write count when the batch began). A failure is logged and
    /// counted: the batch's writes are applied and replicated, not on disk.
    pub fn sync_if_written(&self, before: u64) {
        if !self.always || self.ks.local_writes() == before {
            return;
        }
        if let Err(e) = self.cut_once() {
            tracing::error!("appendfsync always: {e:#}");
        }
    }

    /// Takes a cut every `every`, for as long as the node lives.
    pub async fn run(self: Arc<Self>, every: Duration, thread: CutThread) {
        loop {
            tokio::time::sleep(every).await;
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

/// How often a node with a store takes a cut: what a crash can lose of the
/// writes no peer received (Redis's `appendfsync everysec`).
pub const CUT_EVERY: Duration = Duration::from_secs(1);

/// Where the periodic cut runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutThread {
    /// On tokio's blocking pool: storing a large cut (sled inserts, an
    /// fsync) never stalls the connections sharing the server threads.
    Blocking,
    /// On the calling task (the simulation: deterministic, one thread).
    Inline,
}
