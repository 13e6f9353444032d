//! What serving clients needs on top of a [`Node`]: the settings CONFIG SET
//! changes while the node runs, the counters INFO shows, the registry of
//! connected clients and the addresses listened on. No socket here: the
//! connection layer fills it, commands read it, and the simulation makes
//! one for its embedded clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::config::{Config, LogLevel, OutputBufferLimits};
use crate::node::Node;
use crate::session::ClientRegistry;

/// Settings CONFIG SET may change while the node runs (see [`LIVE`]).
pub struct Tunables {
    pub requirepass: RwLock<Option<Vec<u8>>>,
    pub maxclients: AtomicUsize,
    pub timeout_secs: AtomicU64,
    pub protected_mode: AtomicBool,
    pub max_bulk: AtomicUsize,
    pub query_buffer_limit: AtomicUsize,
    pub output_buffer_limits: RwLock<OutputBufferLimits>,
    pub loglevel: Mutex<LogLevel>,
    /// The keyspace's `maxmemory` settings, shared with it.
    pub memory: Arc<crate::evict::Limits>,
    /// The keyspace's pub/sub hub, which holds the `pubsub` output limit.
    pub pubsub: Arc<crate::pubsub::PubSub>,
    /// The keyspace's CLIENT TRACKING table (`tracking-table-max-keys`).
    pub invalidations: Arc<crate::tracking::Invalidations>,
    /// The keyspace's `notify-keyspace-events`.
    pub notify: Arc<crate::notify::Flags>,
}

/// One setting CONFIG SET changes live: how to read it for CONFIG GET and
/// how to take it from a config that parsed the new value.
pub struct Live {
    pub name: &'static str,
    pub get: fn(&Tunables) -> String,
    pub set: fn(&Tunables, &Config),
}

fn yes_no(on: bool) -> String {
    if on { "yes" } else { "no" }.to_string()
}

/// Every live setting, the one list of them: start-up, CONFIG GET and
/// CONFIG SET all go through it.
pub static LIVE: &[Live] = &[
    Live {
        name: "requirepass",
        get: |t| {
            t.requirepass
                .read()
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default()
        },
        set: |t, c| *t.requirepass.write() = c.requirepass.clone(),
    },
    Live {
        name: "maxclients",
        get: |t| t.maxclients.load(Ordering::Relaxed).to_string(),
        set: |t, c| t.maxclients.store(c.maxclients, Ordering::Relaxed),
    },
    Live {
        name: "timeout",
        get: |t| t.timeout_secs.load(Ordering::Relaxed).to_string(),
        set: |t, c| t.timeout_secs.store(c.timeout_secs, Ordering::Relaxed),
    },
    Live {
        name: "protected-mode",
        get: |t| yes_no(t.protected_mode.load(Ordering::Relaxed)),
        set: |t, c| t.protected_mode.store(c.protected_mode, Ordering::Relaxed),
    },
    Live {
        name: "maxmemory",
        get: |t| t.memory.maxmemory().to_string(),
        set: |t, c| t.memory.set_maxmemory(c.maxmemory),
    },
    Live {
        name: "maxmemory-policy",
        get: |t| t.memory.policy().name().to_string(),
        set: |t, c| t.memory.set_policy(c.maxmemory_policy),
    },
    Live {
        name: "maxmemory-samples",
        get: |t| t.memory.samples().to_string(),
        set: |t, c| t.memory.set_samples(c.maxmemory_samples),
    },
    Live {
        name: "proto-max-bulk-len",
        get: |t| t.max_bulk().to_string(),
        set: |t, c| t.max_bulk.store(c.proto_max_bulk_len, Ordering::Relaxed),
    },
    Live {
        name: "client-query-buffer-limit",
        get: |t| t.query_buffer_limit.load(Ordering::Relaxed).to_string(),
        set: |t, c| {
            t.query_buffer_limit
                .store(c.client_query_buffer_limit, Ordering::Relaxed)
        },
    },
    Live {
        name: "client-output-buffer-limit",
        get: |t| t.output_buffer_limits.read().to_string(),
        set: |t, c| {
            *t.output_buffer_limits.write() = c.client_output_buffer_limits;
            t.pubsub.set_limit(c.client_output_buffer_limits.pubsub);
        },
    },
    Live {
        name: "notify-keyspace-events",
        get: |t| crate::notify::classes_text(t.notify.load(Ordering::Relaxed)),
        set: |t, c| t.notify.store(c.notify_keyspace_events, Ordering::Relaxed),
    },
    Live {
        name: "tracking-table-max-keys",
        get: |t| t.invalidations.max_keys().to_string(),
        set: |t, c| t.invalidations.set_max_keys(c.tracking_table_max_keys),
    },
    Live {
        name: "loglevel",
        get: |t| t.loglevel.lock().as_str().to_string(),
        set: |t, c| {
            *t.loglevel.lock() = c.loglevel;
            if let Some(apply) = crate::LOG_LEVEL_HOOK.get() {
                apply(c.loglevel);
            }
        },
    },
];

impl Tunables {
    fn from_config(
        config: &Config,
        memory: Arc<crate::evict::Limits>,
        pubsub: Arc<crate::pubsub::PubSub>,
        invalidations: Arc<crate::tracking::Invalidations>,
        notify: Arc<crate::notify::Flags>,
    ) -> Tunables {
        let t = Tunables {
            requirepass: RwLock::new(None),
            maxclients: AtomicUsize::new(0),
            timeout_secs: AtomicU64::new(0),
            protected_mode: AtomicBool::new(false),
            max_bulk: AtomicUsize::new(0),
            query_buffer_limit: AtomicUsize::new(0),
            output_buffer_limits: RwLock::new(OutputBufferLimits::default()),
            loglevel: Mutex::new(config.loglevel),
            memory,
            pubsub,
            invalidations,
            notify,
        };
        for live in LIVE {
            (live.set)(&t, config);
        }
        t
    }

    /// The live setting called `name`, if it is one.
    pub fn live(name: &str) -> Option<&'static Live> {
        LIVE.iter().find(|l| l.name == name)
    }

    pub fn max_bulk(&self) -> usize {
        self.max_bulk.load(Ordering::Relaxed)
    }

    pub fn has_password(&self) -> bool {
        self.requirepass.read().is_some()
    }
}

/// Error replies by their first word (`ERR`, `WRONGTYPE`, ...), for INFO
/// errorstats; at most `MAX_ERROR_CODES` codes, as Redis keeps 128.
#[derive(Default)]
pub struct ErrorStats {
    pub total: AtomicU64,
    by_code: Mutex<std::collections::BTreeMap<String, u64>>,
}

const MAX_ERROR_CODES: usize = 128;

impl ErrorStats {
    /// Counts an error reply `msg` (its code is its first word).
    pub fn record(&self, msg: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let code = msg.split(' ').next().unwrap_or("ERR");
        let mut by_code = self.by_code.lock();
        if let Some(n) = by_code.get_mut(code) {
            *n += 1;
        } else if by_code.len() < MAX_ERROR_CODES {
            by_code.insert(code.to_string(), 1);
        }
    }

    /// (code, count), by code.
    pub fn by_code(&self) -> Vec<(String, u64)> {
        self.by_code
            .lock()
            .iter()
            .map(|(c, n)| (c.clone(), *n))
            .collect()
    }

    pub fn reset(&self) {
        self.total.store(0, Ordering::Relaxed);
        self.by_code.lock().clear();
    }
}

/// Counters the connection layer feeds and INFO reads.
#[derive(Default)]
pub struct Stats {
    pub errors: ErrorStats,
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    /// TLS clients whose handshake failed or timed out (`tls-port`).
    pub tls_refused: AtomicU64,
    pub total_commands: AtomicU64,
    pub net_input_bytes: AtomicU64,
    pub net_output_bytes: AtomicU64,
    pub query_buffer_limit_disconnections: AtomicU64,
    pub output_buffer_limit_disconnections: AtomicU64,
}

impl Stats {
    /// CONFIG RESETSTAT.
    pub fn reset(&self) {
        self.errors.reset();
        for c in [
            &self.total_commands,
            &self.total_connections,
            &self.rejected_connections,
            &self.tls_refused,
            &self.net_input_bytes,
            &self.net_output_bytes,
            &self.query_buffer_limit_disconnections,
            &self.output_buffer_limit_disconnections,
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// A node as its clients see it. See the module doc.
pub struct Server {
    pub node: Arc<Node>,
    pub tunables: Tunables,
    pub stats: Stats,
    pub clients: ClientRegistry,
    /// The client addresses the connection layer listens on.
    pub listening: Mutex<Vec<SocketAddr>>,
    /// CLIENT PAUSE.
    pub pause: crate::pause::ClientPause,
}

impl Server {
    pub fn new(node: Arc<Node>) -> Arc<Server> {
        Arc::new(Server {
            tunables: Tunables::from_config(
                &node.config,
                node.ks.limits.clone(),
                node.ks.pubsub.clone(),
                node.ks.invalidations.clone(),
                node.ks.notify.clone(),
            ),
            node,
            stats: Stats::default(),
            clients: ClientRegistry::default(),
            listening: Mutex::new(Vec::new()),
            pause: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Start-up and CONFIG SET take every live setting from a config the
    /// same way, and CONFIG GET reads back what was set.
    #[test]
    fn every_live_setting_round_trips_through_its_table_entry() {
        let args: Vec<String> = [
            "--maxclients",
            "77",
            "--timeout",
            "9",
            "--protected-mode",
            "no",
            "--requirepass",
            "pw",
            "--proto-max-bulk-len",
            "2mb",
            "--client-query-buffer-limit",
            "3mb",
            "--client-output-buffer-limit",
            "normal 4mb 2mb 7",
            "--loglevel",
            "warning",
            "--maxmemory",
            "1mb",
            "--maxmemory-policy",
            "allkeys-lfu",
            "--maxmemory-samples",
            "9",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let config = Config::load(None, &args).unwrap();
        let t = Tunables::from_config(
            &config,
            Default::default(),
            Default::default(),
            Arc::new(crate::tracking::Invalidations::new(0, Default::default())),
            Default::default(),
        );
        let got: Vec<(&str, String)> = LIVE.iter().map(|l| (l.name, (l.get)(&t))).collect();
        assert_eq!(
            got,
            vec![
                ("requirepass", "pw".to_string()),
                ("maxclients", "77".to_string()),
                ("timeout", "9".to_string()),
                ("protected-mode", "no".to_string()),
                ("maxmemory", (1024 * 1024).to_string()),
                ("maxmemory-policy", "allkeys-lfu".to_string()),
                ("maxmemory-samples", "9".to_string()),
                ("proto-max-bulk-len", (2 * 1024 * 1024).to_string()),
                ("client-query-buffer-limit", (3 * 1024 * 1024).to_string()),
                (
                    "client-output-buffer-limit",
                    "normal 4194304 2097152 7 slave 268435456 67108864 60 pubsub 33554432 8388608 60"
                        .to_string()
                ),
                ("notify-keyspace-events", "".to_string()),
                ("tracking-table-max-keys", "1000000".to_string()),
                ("loglevel", "warning".to_string()),
            ]
        );
        // Each name is one the config knows, as CONFIG GET lists it.
        let known: Vec<&str> = config.params().into_iter().map(|(n, _)| n).collect();
        for live in LIVE {
            assert!(known.contains(&live.name), "{}", live.name);
        }
    }
}
