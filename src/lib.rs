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
pub mod pause;
pub mod persist;
pub mod prefetch;
pub mod pubsub;
pub mod replication;
pub mod resp;
pub mod server;
pub mod session;
pub mod store;
pub mod tls;
pub mod tracking;
pub mod waiters;
pub mod watches;

pub use config::Config;
pub use node::{Node, NodeEnv};

/// Applies a new log level to the running process (set by the binary once its
/// logger is installed; CONFIG SET loglevel calls it).
pub static LOG_LEVEL_HOOK: std::sync::OnceLock<Box<dyn Fn(config::LogLevel) + Send + Sync>> =
    std::sync::OnceLock::new();

/// A directory of a unit test's own under the system's temporary
/// directory, removed with everything in it when dropped.
#[cfg(test)]
pub(crate) struct TestDir(std::path::PathBuf);

#[cfg(test)]
impl TestDir {
    /// A fresh `chorus-{prefix}-{name}-{pid}`.
    pub(crate) fn new(prefix: &str, name: &str) -> TestDir {
        let dir =
            std::env::temp_dir().join(format!("chorus-{prefix}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a test directory");
        TestDir(dir)
    }
}

#[cfg(test)]
impl std::ops::Deref for TestDir {
    type Target = std::path::PathBuf;
    fn deref(&self) -> &std::path::PathBuf {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
impl AsRef<std::path::Path> for TestDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}
