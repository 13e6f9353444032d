//! The Chorus server: config, RESP codec, connections, command table,
//! keyspace and expiry. Values are `chorus-crdt` states stamped by the
//! node's hybrid logical clock, so replication adds links, not a rewrite.

pub mod cmd;
pub mod config;
pub mod glob;
pub mod info;
pub mod key;
pub mod keyspace;
pub mod replication;
pub mod resp;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use chorus_crdt::{Clock, NodeId};

pub use config::Config;

/// Applies a new log level to the running process (set by the binary once its
/// logger is installed; CONFIG SET loglevel calls it).
pub static LOG_LEVEL_HOOK: std::sync::OnceLock<Box<dyn Fn(config::LogLevel) + Send + Sync>> =
    std::sync::OnceLock::new();

/// Default `max-clock-drift`: remote stamps further ahead do not move the clock.
pub const DEFAULT_MAX_CLOCK_DRIFT: Duration = Duration::from_millis(500);

/// A fresh node id. An in-memory node takes a new one at every start, so its
/// counter tallies never collide with those of its previous life.
pub fn new_node_id() -> NodeId {
    loop {
        if let Some(id) = NodeId::new(rand::random()) {
            return id;
        }
    }
}

/// Milliseconds since the epoch on the node's physical clock.
fn wall_clock_ms() -> u64 {
    chorus_crdt::stamp::unix_ms_from_ntp(chorus_crdt::system_clock().0)
}

/// Builds the node's shared state from its config. A replicating node's
/// keyspace publishes every write to the replicator.
pub fn build(config: Config) -> Arc<server::Shared> {
    let node = new_node_id();
    let clock = Clock::new(node, chorus_crdt::system_clock, DEFAULT_MAX_CLOCK_DRIFT);
    let mut ks = keyspace::Keyspace::new(config.databases, clock);
    let repl = config.replicating().then(|| {
        let repl = replication::Replicator::new(node, config.repl_backlog_size, wall_clock_ms);
        ks.set_sink(repl.clone());
        repl
    });
    server::Shared::new(config, ks, repl)
}
