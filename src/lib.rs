//! The Chorus server: config, RESP codec, connections, command table,
//! keyspace and expiry. Values are `chorus-crdt` states stamped by the
//! node's hybrid logical clock, so replication adds links, not a rewrite.

pub mod cmd;
pub mod config;
pub mod glob;
pub mod info;
pub mod key;
pub mod keyspace;
pub mod persist;
pub mod replication;
pub mod resp;
pub mod server;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use chorus_crdt::{Clock, NodeId};

pub use config::Config;

/// Applies a new log level to the running process (set by the binary once its
/// logger is installed; CONFIG SET loglevel calls it).
pub static LOG_LEVEL_HOOK: std::sync::OnceLock<Box<dyn Fn(config::LogLevel) + Send + Sync>> =
    std::sync::OnceLock::new();

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

/// The node's physical clock: the system clock plus any injected skew.
fn node_clock() -> chorus_crdt::NTP64 {
    let skew = CLOCK_SKEW_MS.load(std::sync::atomic::Ordering::Relaxed);
    let now = chorus_crdt::system_clock();
    if skew == 0 {
        return now;
    }
    let ms = chorus_crdt::stamp::unix_ms_from_ntp(now.0).saturating_add_signed(skew);
    chorus_crdt::NTP64(chorus_crdt::stamp::ntp_from_unix_ms(ms))
}

/// Milliseconds since the epoch on the node's physical clock.
fn wall_clock_ms() -> u64 {
    chorus_crdt::stamp::unix_ms_from_ntp(node_clock().0)
}

/// What a node is made of besides its config: its identity and clocks.
pub struct NodeEnv {
    pub node: NodeId,
    /// The physical clock the HLC and expiry read.
    pub physical: fn() -> chorus_crdt::NTP64,
    /// The same clock in unix ms (replication lag figures).
    pub wall_ms: fn() -> u64,
    /// Fixed hashers from this seed, so that a simulated run replays byte for
    /// byte; `None`: random per process.
    pub hash_seed: Option<u64>,
    /// Where the node's state survives a crash: loaded at start, then cut
    /// into by [`persist::run`]. `None`: in memory only.
    pub store: Option<Arc<dyn store::Store>>,
}

/// Builds the node's shared state from its config. A replicating node's
/// keyspace publishes every write to the replicator.
pub fn build(config: Config) -> anyhow::Result<Arc<server::Shared>> {
    if let Some(skew) = std::env::var("CHORUS_CLOCK_SKEW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        CLOCK_SKEW_MS.store(skew, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            skew_ms = skew,
            "physical clock skewed by CHORUS_CLOCK_SKEW_MS"
        );
    }
    let store: Option<Arc<dyn store::Store>> = if config.appendonly {
        let fsync = config.appendfsync != config::Fsync::No;
        let store = store::SledStore::open(&config.dir, fsync)?;
        tracing::info!("state kept in {}", store.path().display());
        Some(Arc::new(store))
    } else {
        None
    };
    build_node(
        config,
        NodeEnv {
            node: new_node_id(),
            physical: node_clock,
            wall_ms: wall_clock_ms,
            hash_seed: None,
            store,
        },
    )
}

/// [`build`] with the identity, clocks and store given (the simulation's).
/// Fails only when the store cannot be read.
pub fn build_node(config: Config, env: NodeEnv) -> anyhow::Result<Arc<server::Shared>> {
    let node = env.node;
    let max_drift = Duration::from_millis(config.max_clock_drift_ms);
    let clock = Clock::new(node, env.physical, max_drift);
    let (shards_hasher, maps_hasher) = match env.hash_seed {
        None => (keyspace::KeyHasher::random(), keyspace::KeyHasher::random()),
        Some(seed) => {
            let shared = foldhash::SharedSeed::global_fixed();
            (
                keyspace::KeyHasher::with_seed(seed, shared),
                keyspace::KeyHasher::with_seed(
                    seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15,
                    shared,
                ),
            )
        }
    };
    let mut ks =
        keyspace::Keyspace::with_hashers(config.databases, clock, shards_hasher, maps_hasher);
    let repl = config.replicating().then(|| {
        let repl = replication::Replicator::new(node, config.repl_backlog_size, env.wall_ms);
        ks.set_sink(repl.clone());
        repl
    });
    let Some(store) = env.store else {
        return Ok(server::Shared::new(config, ks, repl, None));
    };
    ks.track_dirty();
    if let Some(repl) = &repl {
        repl.persisting();
    }
    let loaded = store
        .load()
        .map_err(|e| anyhow::anyhow!("loading the stored state: {e:#}"))?;
    let always = config.appendfsync == config::Fsync::Always;
    let shared = server::Shared::new(
        config,
        ks,
        repl,
        Some(persist::Persistence::new(store, always)),
    );
    persist::restore(&shared, loaded);
    Ok(shared)
}
