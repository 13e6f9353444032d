//! The Chorus server library, in layers (DESIGN.md, Layout):
//!
//! - the node core: [`keyspace`] (sharded CRDT states, expiry), [`replication`],
//!   [`store`] and [`persist`], opened together as a [`node::Node`];
//! - the command layer: [`cmd`] (the command table, one file per family)
//!   running against a [`server::Server`] (a node as its clients see it:
//!   live settings, counters, the client registry) and a client
//!   [`session::Session`], with [`resp`] replies and [`info`];
//! - the connection layer: [`connection`], the only code that knows sockets.
//!
//! Values are `chorus-crdt` states stamped by the node's hybrid logical clock.

pub mod alloc;
pub mod audit;
pub mod checksum;
pub mod cmd;
pub mod config;
pub mod conflicts;
pub mod connection;
pub mod deltalog;
pub mod evict;
pub mod flash;
pub mod glob;
pub mod info;
pub mod key;
pub mod keymap;
pub mod keyspace;
pub mod keytable;
pub mod node;
pub mod notify;
pub mod persist;
pub mod pubsub;
pub mod replication;
pub mod resp;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod tracking;
pub mod waiters;

pub use config::Config;
pub use node::{Node, NodeEnv};

/// Applies a new log level to the running process (set by the binary once its
/// logger is installed; CONFIG SET loglevel calls it).
pub static LOG_LEVEL_HOOK: std::sync::OnceLock<Box<dyn Fn(config::LogLevel) + Send + Sync>> =
    std::sync::OnceLock::new();
