//! Taking cuts of the node's state into its [`Store`] (see `store`), and
//! starting a node from what its store holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::server::Shared;
use crate::store::{Cut, Loaded, Store};

/// A node's store and what it did, for INFO.
pub struct Persistence {
    pub store: Arc<dyn Store>,
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
}

impl Persistence {
    pub fn new(store: Arc<dyn Store>, always: bool) -> Persistence {
        Persistence {
            store,
            always,
            cut_lock: parking_lot::Mutex::new(()),
            cuts: AtomicU64::new(0),
            keys_written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_cut_ms: AtomicU64::new(0),
        }
    }
}

/// Loads `loaded` into a node being built: its keys and floors, its clock
/// past every stored stamp, and what it had applied (the replicator resumes
/// from there).
pub fn restore(shared: &Shared, loaded: Loaded) {
    let keys = loaded.keys.len();
    shared.ks.restore(loaded.keys, &loaded.floors);
    if shared.ks.clock.observe(loaded.clock).is_err() {
        // The physical clock runs behind what this node stamped before it
        // stopped: writes may lose to its own earlier ones until it catches up.
        warn!(stored = %loaded.clock, "the clock is behind the stored state's newest stamp");
    }
    if let Some(repl) = &shared.repl {
        repl.restore(&loaded.applied, &loaded.lives);
    }
    info!(
        keys,
        lives = loaded.lives.len(),
        "state loaded from the store"
    );
}

/// Takes one cut and stores it; returns how many keys it wrote.
pub fn cut_once(shared: &Shared, persistence: &Persistence) -> anyhow::Result<usize> {
    let _one_at_a_time = persistence.cut_lock.lock();
    let ks = &shared.ks;
    let stable = shared.repl.as_ref().map(|r| r.stable_for_cut());
    let cut = {
        let mut all = ks.lock_all();
        let (keys, floors) = ks.take_cut(&mut all)?;
        Cut {
            node: ks.node(),
            clock: ks.clock.now(),
            keys,
            floors,
            applied: shared.repl.as_ref().map(|r| r.cut_vv()).unwrap_or_default(),
        }
    };
    let written = cut.keys.len();
    if let Err(e) = persistence.store.write(&cut) {
        ks.mark_dirty(&cut.keys);
        persistence.failures.fetch_add(1, Ordering::Relaxed);
        return Err(e).context("storing a cut");
    }
    if let (Some(repl), Some(stable)) = (&shared.repl, stable) {
        repl.stored(stable);
    }
    persistence.cuts.fetch_add(1, Ordering::Relaxed);
    persistence
        .keys_written
        .fetch_add(written as u64, Ordering::Relaxed);
    persistence
        .last_cut_ms
        .store(ks.clock.physical_unix_ms(), Ordering::Relaxed);
    Ok(written)
}

/// `appendfsync always`: stores a cut if the node wrote since `before`
/// (its local write count when the batch began). A failure is logged and
/// counted: the batch's writes are applied and replicated, not on disk.
pub fn sync_if_written(shared: &Shared, before: u64) {
    let Some(persistence) = shared.persistence.as_ref().filter(|p| p.always) else {
        return;
    };
    if shared.ks.local_writes() == before {
        return;
    }
    if let Err(e) = cut_once(shared, persistence) {
        tracing::error!("appendfsync always: {e:#}");
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

/// Takes a cut every `every`, for as long as the node lives.
pub async fn run(shared: Arc<Shared>, every: Duration, thread: CutThread) {
    if shared.persistence.is_none() {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        let result = match thread {
            CutThread::Inline => cut_with(&shared),
            CutThread::Blocking => {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || cut_with(&shared))
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("the cut task failed: {e}")))
            }
        };
        if let Err(e) = result {
            warn!("{e:#}");
        }
    }
}

fn cut_with(shared: &Shared) -> anyhow::Result<usize> {
    match shared.persistence.as_ref() {
        Some(persistence) => cut_once(shared, persistence),
        None => Ok(0),
    }
}
