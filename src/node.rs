//! The node core: what a Chorus node is, with no client connection in sight.
//!
//! A [`Node`] is its identity and clocks, its config, its keyspace,
//! replication, persistence, and the background work that keeps them going
//! (active expiry, tombstone GC, cuts). It is opened by [`Node::open`],
//! which both the server and the simulation call, and started by
//! [`Node::start`]. It knows nothing of clients: what serving them needs
//! (live settings, counters, the client registry) is the [`Server`]'s.
//!
//! Layering (DESIGN.md, Layout): replication, persistence and the store take
//! the narrow handles they need (the keyspace, the replicator), never a
//! `Node`; commands run against a `Server` (and its `Node`) and a client
//! `Session`; only `connection` knows sockets.
//!
//! [`Server`]: crate::server::Server

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_crdt::{Clock, NodeId, NTP64};
use tokio::sync::watch;
use tracing::debug;

use crate::config::{Config, Fsync};
use crate::deltalog::DeltaLog;
use crate::keyspace::{KeyHasher, Keyspace};
use crate::persist::{CutThread, LogSink, Persistence};
use crate::replication::Replicator;
use crate::store::Store;

/// Why a node could not be opened or started.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("loading the stored state: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("bind address '{0}' is not an IP address")]
    BadBind(String),
    #[error("replicaof {host} {port}: {reason}")]
    Peer {
        host: String,
        port: u16,
        reason: crate::replication::PeerAddrError,
    },
    #[error("starting replication: {0}")]
    Replication(#[from] crate::replication::StartError),
    #[error("links given to a node whose config does not replicate")]
    NotReplicating,
    #[error("the delta log: {0}")]
    Log(#[from] crate::deltalog::LogError),
}

/// What a node is made of besides its config: its identity, clocks,
/// randomness and store. The server takes them from the process
/// ([`NodeEnv::from_process`]); the simulation injects its own so that a
/// seed replays byte for byte.
pub struct NodeEnv {
    pub node: NodeId,
    /// The physical clock the HLC and expiry read.
    pub physical: fn() -> NTP64,
    /// The same clock in unix ms (replication lag figures).
    pub wall_ms: fn() -> u64,
    /// Fixed hashers (and run id) from this seed; `None`: random per process.
    pub hash_seed: Option<u64>,
    /// Where the node's state survives a crash: loaded at open, then cut
    /// into. `None`: in memory only.
    pub store: Option<Arc<dyn Store>>,
    /// With a store: the directory of its delta log (`crate::deltalog`).
    /// `None`: the store alone, cut every second (the simulation).
    pub log_dir: Option<std::path::PathBuf>,
}

impl NodeEnv {
    /// A fresh identity on this process's clock (skewed by
    /// `CHORUS_CLOCK_SKEW_MS`, for drills), and the store `config` asks for.
    pub fn from_process(config: &Config) -> Result<NodeEnv, NodeError> {
        if let Some(skew) = std::env::var("CHORUS_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            CLOCK_SKEW_MS.store(skew, Ordering::Relaxed);
            tracing::warn!(
                skew_ms = skew,
                "physical clock skewed by CHORUS_CLOCK_SKEW_MS"
            );
        }
        let store: Option<Arc<dyn Store>> = match config.data_dir() {
            Some(dir) => {
                if config.flash.is_some() {
                    std::fs::create_dir_all(dir).map_err(|e| crate::store::StoreError::Open {
                        path: dir.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                }
                // Every fold is durable when it returns, whatever
                // `appendfsync` says: the log files it folded go then.
                let store = crate::store::RedbStore::open(dir)?;
                tracing::info!("state kept in {}", store.path().display());
                Some(Arc::new(store))
            }
            None => None,
        };
        Ok(NodeEnv {
            node: new_node_id(),
            physical: process_clock,
            wall_ms: process_wall_ms,
            hash_seed: None,
            log_dir: store
                .as_ref()
                .and_then(|_| config.data_dir().map(|d| d.to_path_buf())),
            store,
        })
    }
}

/// A fresh node id. An in-memory node takes a new one at every start, so its
/// counter tallies never collide with those of its previous life.
pub fn new_node_id() -> NodeId {
    loop {
        if let Some(id) = NodeId::new(rand::random()) {
            return id;
        }
    }
}

/// Fault injection for tests and drills: `CHORUS_CLOCK_SKEW_MS` shifts this
/// process's physical clock (HLC and expiry alike), as a badly synchronised
/// host would. Read once at start-up; 0 when unset.
static CLOCK_SKEW_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn process_clock() -> NTP64 {
    let skew = CLOCK_SKEW_MS.load(Ordering::Relaxed);
    let now = chorus_crdt::system_clock();
    if skew == 0 {
        return now;
    }
    let ms = chorus_crdt::stamp::unix_ms_from_ntp(now.0).saturating_add_signed(skew);
    NTP64(chorus_crdt::stamp::ntp_from_unix_ms(ms))
}

fn process_wall_ms() -> u64 {
    chorus_crdt::stamp::unix_ms_from_ntp(process_clock().0)
}

/// How the node's replication links are carried.
pub enum Links {
    /// Bind the UDP endpoint the config names (next to `client_ip`, the
    /// first client address bound, when there is one) and dial its
    /// `replicaof` peers.
    FromConfig { client_ip: Option<IpAddr> },
    /// Over a transport the caller built (the simulation's simulated UDP),
    /// dialing these replication addresses.
    Over(Box<chorus_transport::Transport>, Vec<SocketAddr>),
}

/// One Chorus node. See the module doc.
pub struct Node {
    pub config: Config,
    pub ks: Arc<Keyspace>,
    pub repl: Option<Arc<Replicator>>,
    pub persistence: Option<Arc<Persistence>>,
    pub shutdown: watch::Sender<bool>,
    pub started: Instant,
    pub started_unix_ms: u64,
    /// INFO's `run_id`: 40 hex digits drawn from the node's identity, so a
    /// simulated node's is the same on every replay.
    pub run_id: String,
    /// The replication backlog and relay logs, in bytes, as the 100 ms
    /// cycle last read them (see `data_memory`).
    pub repl_buffered: std::sync::atomic::AtomicU64,
}

impl Node {
    /// The memory `maxmemory` bounds: what the allocator holds less
    /// `buffers_not_counted`. `None` where the counting allocator is not
    /// installed. The writes kept for peers are read by the 100 ms cycle
    /// (`repl_buffered`), not here: this runs before every command that may
    /// grow memory, and they sit under the replication core's lock. The
    /// log's are read here: a burst grows them faster than the cycle runs.
    pub fn data_memory(&self) -> Option<u64> {
        let used = crate::alloc::used_bytes()? as u64;
        let buffered = self
            .repl_buffered
            .load(std::sync::atomic::Ordering::Relaxed)
            + self.log_buffered();
        Some(used.saturating_sub(buffered))
    }

    /// Bytes of buffers `maxmemory` leaves out, as Redis leaves out its
    /// replica buffers and AOF buffer (INFO `mem_not_counted_for_evict`):
    /// the writes kept for peers (bounded by `repl-backlog-size`; counting
    /// them would make eviction delete data to make room for copies of the
    /// data it deletes) and the delta log's buffers (writes on their way to
    /// the file; counted, a burst's buffers took a cache's headroom, and
    /// with every key that could leave gone, writes were refused).
    pub fn buffers_not_counted(&self) -> u64 {
        self.repl.as_ref().map_or(0, |r| r.buffered_bytes() as u64) + self.log_buffered()
    }

    fn log_buffered(&self) -> u64 {
        self.persistence
            .as_ref()
            .and_then(|p| p.log.as_ref())
            .map_or(0, |log| log.buffered_bytes() as u64)
    }

    /// Opens a node: its keyspace, replicator (when the config replicates)
    /// and store (when `env` has one, whose state it loads). Nothing runs yet;
    /// [`Node::start`] starts the background work. Fails only when the store
    /// cannot be read.
    pub fn open(config: Config, env: NodeEnv) -> Result<Arc<Node>, NodeError> {
        let node = env.node;
        let clock = Clock::new(
            node,
            env.physical,
            Duration::from_millis(config.max_clock_drift_ms),
        );
        let (tags_hasher, maps_hasher) = match env.hash_seed {
            None => (KeyHasher::random(), KeyHasher::random()),
            Some(seed) => {
                let shared = foldhash::SharedSeed::global_fixed();
                (
                    KeyHasher::with_seed(seed, shared),
                    KeyHasher::with_seed(seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15, shared),
                )
            }
        };
        let loaded = env.store.as_ref().map(|s| s.load_meta()).transpose()?;
        let (log, replay) = match (&loaded, &env.log_dir) {
            (Some(loaded), Some(dir)) => {
                let (log, replay) = DeltaLog::open(dir, config.appendfsync, loaded.log_from)?;
                (Some(log), Some(replay))
            }
            _ => (None, None),
        };
        let mut ks = Keyspace::with_hashers(config.databases, clock, tags_hasher, maps_hasher);
        ks.conflicts.set_max_len(config.conflict_log_max_len);
        let repl = config.replicating().then(|| {
            let repl = Replicator::new(node, config.repl_backlog_size, env.wall_ms);
            repl.set_repair_interval(Duration::from_secs(config.repl_repair_interval_secs));
            repl.set_removed_grace(Duration::from_secs(config.removed_peer_grace_secs));
            repl.set_peer_buffer_limit(config.client_output_buffer_limits.replica);
            repl.set_backlog_min_seconds(config.repl_backlog_min_secs);
            ks.set_sink(repl.clone());
            repl
        });
        if let Some(log) = &log {
            match &repl {
                Some(repl) => {
                    log.keep_for_peers_max(config.repl_log_max_size);
                    repl.set_log(log.clone());
                }
                None => ks.set_log_sink(Arc::new(LogSink::new(node, log.clone()))),
            }
        }
        if let (Some(store), Some(_)) = (&env.store, &config.flash) {
            ks.set_cold_tier(Arc::new(crate::flash::ColdTier::new(store.clone())));
        }
        if env.store.is_some() {
            ks.track_dirty();
            if let Some(repl) = &repl {
                repl.persisting();
            }
        }
        let ks = Arc::new(ks);
        let persistence = match (env.store, loaded) {
            (Some(store), Some(loaded)) => {
                let persistence = Persistence::new(
                    store,
                    log,
                    config.appendfsync == Fsync::Always,
                    ks.clone(),
                    repl.clone(),
                );
                let cold_past = (config.flash.is_some()
                    && config.maxmemory > 0
                    && config.maxmemory_policy != crate::evict::Policy::NoEviction)
                    .then_some(config.maxmemory);
                persistence.restore(loaded, cold_past)?;
                if let Some(replay) = &replay {
                    persistence.replay(replay)?;
                }
                if let Some(limit) = cold_past {
                    crate::evict::cool_down(&ks, limit, ks.clock.physical_unix_ms());
                }
                Some(Arc::new(persistence))
            }
            _ => None,
        };
        let started_unix_ms = ks.clock.physical_unix_ms();
        Ok(Arc::new(Node {
            run_id: run_id(node, env.hash_seed),
            repl_buffered: Default::default(),
            config,
            ks,
            repl,
            persistence,
            shutdown: watch::channel(false).0,
            started: Instant::now(),
            started_unix_ms,
        }))
    }

    /// Starts the background work on the current tokio runtime: replication
    /// (its endpoint, senders and GC), the active expiry cycle, and periodic
    /// cuts when the node has a store.
    pub fn start(self: &Arc<Self>, links: Links, cuts: CutThread) -> Result<(), NodeError> {
        if self.repl.is_none() && matches!(links, Links::Over(..)) {
            return Err(NodeError::NotReplicating);
        }
        if let Some(repl) = &self.repl {
            match links {
                Links::FromConfig { client_ip } => {
                    let config = self.repl_config(client_ip)?;
                    crate::replication::start(self.ks.clone(), repl.clone(), config)?;
                }
                Links::Over(transport, peers) => {
                    crate::replication::start_with_transport(
                        self.ks.clone(),
                        repl.clone(),
                        *transport,
                        peers,
                    )?;
                }
            }
        }
        // Before the first client: a key written before the cycle's first
        // tick must not start as the idlest of all.
        self.ks
            .refresh_access_clock(self.ks.clock.physical_unix_ms());
        tokio::spawn(active_expiry(self.clone()));
        if let Some(persistence) = &self.persistence {
            tokio::spawn(persistence.clone().run(persistence.cut_every(), cuts));
        }
        Ok(())
    }

    /// What replication needs from the config: where to listen, whom to
    /// dial, how peers authenticate.
    fn repl_config(
        &self,
        client_ip: Option<IpAddr>,
    ) -> Result<crate::replication::ReplConfig, NodeError> {
        let c = &self.config;
        // The first client address actually bound (an optional one may not
        // be), else the first configured.
        let ip: IpAddr = match client_ip {
            Some(ip) => ip,
            None => c.bind[0]
                .parse()
                .map_err(|_| NodeError::BadBind(c.bind[0].clone()))?,
        };
        let listen = SocketAddr::new(ip, c.replication_listen_port()?);
        let mut peers = Vec::new();
        for (host, port) in &c.replicaof {
            let peer = crate::replication::resolve_peer(host, *port).map_err(|reason| {
                NodeError::Peer {
                    host: host.clone(),
                    port: *port,
                    reason,
                }
            })?;
            peers.push(peer);
        }
        Ok(crate::replication::ReplConfig {
            listen,
            peers,
            cluster_name: c.cluster_name.clone(),
            node_name: c.node_name.clone(),
            secret: c.masterauth.clone().unwrap_or_default(),
            tls: c.peer_tls(),
            max_message: crate::replication::max_message_for(c.proto_max_bulk_len),
            window: c.repl_window_size,
            congestion: c.repl_congestion_control,
            compression: c.repl_compression,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.ks.node()
    }

    /// Unix ms of the last durable point: the last stored cut, or the start
    /// when there is none yet (LASTSAVE and INFO persistence).
    pub fn last_save_unix_ms(&self) -> u64 {
        self.persistence
            .as_ref()
            .map(|p| p.last_cut_ms.load(Ordering::Relaxed))
            .filter(|&ms| ms > 0)
            .unwrap_or(self.started_unix_ms)
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// What runs once the node stops serving: whatever changed since the
    /// last cut is stored.
    pub fn close(&self) {
        if let Some(persistence) = &self.persistence {
            match persistence.cut_once() {
                Ok(keys) => tracing::info!("final cut stored ({keys} keys changed since the last)"),
                Err(e) => tracing::error!("the final cut was not stored: {e:#}"),
            }
            if let Some(log) = &persistence.log {
                log.close();
            }
        }
    }
}

/// 40 hex digits from the node id (and seed): unique per node life, and
/// reproducible in the simulation, which fixes both.
fn run_id(node: NodeId, seed: Option<u64>) -> String {
    let mut state = node.0 ^ seed.unwrap_or(0);
    let mut out = String::with_capacity(40);
    while out.len() < 40 {
        state = splitmix(state);
        for nibble in 0..16 {
            if out.len() == 40 {
                break;
            }
            let digit = ((state >> (nibble * 4)) & 0xf) as u32;
            out.push(char::from_digit(digit, 16).unwrap_or('0'));
        }
    }
    out
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Keys moved to the flash tier in one burst past which the allocator's
/// free pages are handed back when the burst ends.
const TRIM_AFTER_MOVED: u64 = 1024;

/// The active expiry cycle, every 100 ms; with it, the clock new keys
/// start with, and eviction (replicated writes grow memory too, and no
/// command of this node's waits for them).
async fn active_expiry(node: Arc<Node>) {
    let ks = &node.ks;
    let replicating = node.repl.is_some();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // The flash tier's count of keys moved out at the last tick and at the
    // last trim, and the trim running, if one is.
    let (mut moved_last_tick, mut moved_at_trim) = (0, 0);
    let mut trimming: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        let now = ks.clock.physical_unix_ms();
        let deleted = ks.active_expire_cycle(now, 64);
        if deleted > 0 {
            debug!(deleted, "active expiry cycle");
        }
        ks.refresh_access_clock(now);
        let repl_buffered = node.repl.as_ref().map_or(0, |r| r.buffered_bytes() as u64);
        node.repl_buffered
            .store(repl_buffered, std::sync::atomic::Ordering::Relaxed);
        if let Some(tier) = &ks.cold {
            let not_counted = repl_buffered + node.log_buffered();
            tier.not_counted_for_evict
                .store(not_counted, std::sync::atomic::Ordering::Relaxed);
        }
        // The peak moves on the cycle too, not only when INFO asks.
        let _ = crate::alloc::used_bytes();
        let _ = crate::evict::make_room(ks, || node.data_memory(), replicating, now);
        if let Some(tier) = &ks.cold {
            // Moving keys out is local and cheap: after a burst of writes
            // (and each fold) memory comes down without waiting for the
            // next write, a few milliseconds a tick at most.
            let until = std::time::Instant::now() + Duration::from_millis(5);
            while std::time::Instant::now() < until
                && node
                    .data_memory()
                    .is_some_and(|u| u > ks.limits.maxmemory())
                && ks.limits.maxmemory() > 0
            {
                let moved = ks.cold_keys();
                let _ = crate::evict::make_room(ks, || node.data_memory(), replicating, now);
                if ks.cold_keys() == moved {
                    break;
                }
            }
            // The values moved out were freed, but the allocator keeps
            // their pages: once a burst of moves (by this cycle or by
            // writes) is over, a bulk load past the limit with no write
            // and so no fold after it to trim, they go back, or RSS stays
            // at the burst's peak for good. The trim walks the heap: off
            // this cycle, one at a time.
            let moved = tier.moved_out.load(std::sync::atomic::Ordering::Relaxed);
            let quiet = moved == moved_last_tick;
            moved_last_tick = moved;
            if quiet
                && moved.saturating_sub(moved_at_trim) >= TRIM_AFTER_MOVED
                && trimming.as_ref().is_none_or(|t| t.is_finished())
            {
                moved_at_trim = moved;
                trimming = Some(tokio::task::spawn_blocking(
                    crate::alloc::give_back_free_pages,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_forty_hex_digits_fixed_by_the_identity() {
        let a = run_id(NodeId(7), Some(1));
        assert_eq!(a.len(), 40);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, run_id(NodeId(7), Some(1)));
        assert_ne!(a, run_id(NodeId(8), Some(1)));
    }
}
