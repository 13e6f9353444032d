//! Configuration: redis.conf syntax, command-line overrides, validated once.
//!
//! `chorus server [FILE] [--directive value ...]` reads FILE (one directive a
//! line, `#` comments, quoted strings, `include`, sizes like `100mb`), then
//! applies the overrides in order, so the last word wins as in redis-server.
//!
//! Every directive of Redis 7's and KeyDB 6's own config files is known (see
//! [`directives`]): applied where Chorus implements it, accepted and listed
//! as ignored where it has no meaning here, and refused, naming file, line and
//! why, where dropping it silently would change what the user gets. An
//! unknown (misspelt) or malformed directive fails start-up naming where it
//! stood.

pub mod directives;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use directives::{Kind, DIRECTIVES};

/// Where a directive came from, for error messages.
#[derive(Debug, Clone)]
pub enum Origin {
    File { path: PathBuf, line: usize },
    CommandLine,
    ConfigSet,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Origin::CommandLine => write!(f, "the command line"),
            Origin::ConfigSet => write!(f, "CONFIG SET"),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("config error at {origin}: directive '{directive}': {message}")]
pub struct ConfigError {
    pub origin: Origin,
    pub directive: String,
    pub message: String,
}

/// The node's configuration. Every field is documented in `conf/chorus.conf`.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind: Vec<String>,
    /// Addresses of `bind` written with Redis's '-' prefix: a node starts
    /// without them when they are not available on the host.
    pub optional_binds: Vec<String>,
    /// Worker threads serving connections; default: the CPUs this process may use.
    pub server_threads: usize,
    /// Pin each worker thread to one CPU.
    pub server_thread_affinity: bool,
    pub requirepass: Option<Vec<u8>>,
    pub protected_mode: bool,
    pub maxclients: usize,
    /// Close a client idle this many seconds; 0 never.
    pub timeout_secs: u64,
    pub databases: usize,
    pub proto_max_bulk_len: usize,
    /// `maxmemory` in bytes (0: no limit), its policy and samples.
    pub maxmemory: u64,
    pub maxmemory_policy: crate::evict::Policy,
    pub maxmemory_samples: usize,
    /// CLIENT TRACKING's table bound, in keys (0: none).
    pub tracking_table_max_keys: usize,
    /// `notify-keyspace-events` as class flags (see `crate::notify`).
    pub notify_keyspace_events: u32,
    pub client_query_buffer_limit: usize,
    pub loglevel: LogLevel,
    pub logfile: Option<PathBuf>,
    /// The config file, for INFO's `config_file`.
    pub config_file: Option<PathBuf>,
    /// Accept replication links from peers (implied by `replicaof`).
    pub active_replica: bool,
    /// Peer masters to replicate with, by client address: (host, port).
    pub replicaof: Vec<(String, u16)>,
    /// The shared secret peers prove to each other.
    pub masterauth: Option<Vec<u8>>,
    /// `tls-port`: clients speaking TLS (0: none).
    pub tls_port: u16,
    pub tls_auth_clients: crate::tls::ClientAuth,
    /// Mutual TLS for peer links (and `tls-port`): this node's certificate
    /// and key, and the CA that signs every peer's.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    pub tls_ca_cert_file: Option<std::path::PathBuf>,
    /// UDP port for replication; default `port + 10000`.
    pub replication_port: Option<u16>,
    /// Peers must share it; a node of another cluster is refused.
    pub cluster_name: String,
    /// How this node names itself to peers, in conflicts and INFO (empty:
    /// its node id).
    pub node_name: String,
    /// Bytes of recent writes kept for peers to resume from.
    pub repl_backlog_size: usize,
    /// Seconds of recent writes the backlog keeps past its size (within
    /// `client-output-buffer-limit replica`'s hard bound); 0: none.
    pub repl_backlog_min_secs: u64,
    /// Bytes a replication stream may have in flight (QUIC's window).
    pub repl_window_size: u64,
    pub repl_congestion_control: chorus_transport::Congestion,
    /// `repl-compression lz4`: compress the live stream to peers that read it.
    pub repl_compression: bool,
    /// With `appendonly yes`: the most bytes of folded delta log kept for
    /// peers that lack writes in it (they resume from the log, not by a
    /// state transfer).
    pub repl_log_max_size: u64,
    /// A remote stamp further ahead than this is merged but does not move
    /// the local clock.
    pub max_clock_drift_ms: u64,
    /// Seconds between digest offers on a quiet link; 0: never (see
    /// docs/architecture.md, "Repair").
    pub repl_repair_interval_secs: u64,
    /// Seconds a peer removed with REPLICAOF REMOVE keeps holding tombstone
    /// collection back (see docs/operations.md, "Removing a member").
    pub removed_peer_grace_secs: u64,
    /// Entries the conflict log keeps (CRDT.CONFLICTS), oldest dropped first.
    pub conflict_log_max_len: usize,
    /// Keep the node's state on disk (in `dir`), all keys in RAM.
    pub appendonly: bool,
    /// Where the data files go.
    pub dir: std::path::PathBuf,
    /// `storage-provider flash PATH`: the store and delta log live in PATH
    /// (persistence on, as `appendonly yes`), and `maxmemory` moves keys
    /// there instead of deleting them (see `crate::flash`).
    pub flash: Option<std::path::PathBuf>,
    /// When writes are made durable.
    pub appendfsync: Fsync,
    /// `client-output-buffer-limit`: the `normal` class is enforced on
    /// clients (see docs/operations.md); the others are kept for pub/sub.
    pub client_output_buffer_limits: OutputBufferLimits,
    /// `save` points as written (seconds, changes). Chorus writes no RDB
    /// snapshots; they are kept to warn the user.
    save: Vec<(u64, u64)>,
    /// The last value written for directives without a typed field, by
    /// directive name, so that CONFIG GET shows what the user wrote.
    written: BTreeMap<&'static str, String>,
    /// Ignored directives the user set, in order: (directive, name as written).
    ignored: Vec<(&'static str, String)>,
    /// Refused directives whose last value turns their feature on, with the
    /// error naming where that value stood. Judged once everything is read,
    /// because the last value wins: `--daemonize no` on the command line
    /// rescues a file's `daemonize yes`, as with redis-server.
    refused: Vec<(&'static str, ConfigError)>,
}

/// One client class's `client-output-buffer-limit`: a client past `hard`
/// bytes, or past `soft` for `soft_seconds`, is disconnected (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputBufferLimit {
    pub hard: u64,
    pub soft: u64,
    pub soft_seconds: u64,
}

/// `client-output-buffer-limit` for the three classes Redis knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputBufferLimits {
    pub normal: OutputBufferLimit,
    /// Also named `slave`.
    pub replica: OutputBufferLimit,
    pub pubsub: OutputBufferLimit,
}

impl Default for OutputBufferLimits {
    /// Redis's defaults.
    fn default() -> Self {
        let limit = |hard, soft, soft_seconds| OutputBufferLimit {
            hard,
            soft,
            soft_seconds,
        };
        OutputBufferLimits {
            normal: limit(0, 0, 0),
            replica: limit(256 << 20, 64 << 20, 60),
            pubsub: limit(32 << 20, 8 << 20, 60),
        }
    }
}

impl OutputBufferLimits {
    /// Applies `CLASS HARD SOFT SECONDS [CLASS HARD SOFT SECONDS ...]`,
    /// all or nothing, as Redis does.
    fn apply(&mut self, args: &[String]) -> Result<(), String> {
        if args.is_empty() || !args.len().is_multiple_of(4) {
            return Err(
                "expects CLASS HARD SOFT SECONDS (class normal, replica or pubsub; \
                        sizes like 256mb)"
                    .to_string(),
            );
        }
        let mut next = *self;
        for group in args.chunks(4) {
            let [class, hard, soft, seconds] = group else {
                continue;
            };
            let size = |v: &str| {
                parse_size(v).ok_or_else(|| format!("expects a size like 64mb, got '{v}'"))
            };
            let limit = OutputBufferLimit {
                hard: size(hard)?,
                soft: size(soft)?,
                soft_seconds: seconds
                    .parse()
                    .map_err(|_| format!("expects seconds (0 or more), got '{seconds}'"))?,
            };
            match class.to_ascii_lowercase().as_str() {
                "normal" => next.normal = limit,
                "replica" | "slave" => next.replica = limit,
                "pubsub" => next.pubsub = limit,
                // Redis refuses `master` too: a master link has no limit.
                _ => {
                    return Err(format!(
                        "unknown client class '{class}' (normal, replica, slave or pubsub)"
                    ))
                }
            }
        }
        *self = next;
        Ok(())
    }
}

impl fmt::Display for OutputBufferLimits {
    /// As Redis's CONFIG GET shows it (the replica class under its old name).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classes = [
            ("normal", &self.normal),
            ("slave", &self.replica),
            ("pubsub", &self.pubsub),
        ];
        for (i, (name, l)) in classes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name} {} {} {}", l.hard, l.soft, l.soft_seconds)?;
        }
        Ok(())
    }
}

/// `appendfsync`: when a node's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Before the reply to every write.
    Always,
    /// Once a second: a crash loses at most about a second of writes no
    /// peer received.
    Everysec,
    /// Written once a second, flushed when the storage engine chooses.
    No,
}

impl Fsync {
    pub fn as_str(&self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
            Fsync::No => "no",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Verbose,
    Notice,
    Warning,
}

impl LogLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Verbose => "verbose",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
        }
    }

    /// The tracing filter for this level.
    pub fn filter(&self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Verbose => "info",
            LogLevel::Notice => "info",
            LogLevel::Warning => "warn",
        }
    }
}

/// The CPUs this process may run on (respects taskset and cgroup limits).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 6379,
            bind: vec!["127.0.0.1".to_string()],
            optional_binds: Vec::new(),
            server_threads: available_cpus(),
            server_thread_affinity: false,
            requirepass: None,
            protected_mode: true,
            maxclients: 10_000,
            timeout_secs: 0,
            databases: 16,
            proto_max_bulk_len: 512 * 1024 * 1024,
            maxmemory: 0,
            maxmemory_policy: crate::evict::Policy::NoEviction,
            maxmemory_samples: 5,
            tracking_table_max_keys: crate::keyspace::DEFAULT_TRACKING_TABLE_MAX_KEYS,
            notify_keyspace_events: 0,
            client_query_buffer_limit: 1024 * 1024 * 1024,
            loglevel: LogLevel::Notice,
            logfile: None,
            config_file: None,
            active_replica: false,
            replicaof: Vec::new(),
            masterauth: None,
            tls_port: 0,
            tls_auth_clients: crate::tls::ClientAuth::Required,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_cert_file: None,
            replication_port: None,
            cluster_name: "chorus".to_string(),
            node_name: String::new(),
            repl_backlog_size: 16 * 1024 * 1024,
            repl_backlog_min_secs: 0,
            repl_log_max_size: 4 << 30,
            repl_window_size: chorus_transport::DEFAULT_WINDOW,
            repl_congestion_control: chorus_transport::Congestion::Cubic,
            repl_compression: false,
            max_clock_drift_ms: 500,
            repl_repair_interval_secs: 30,
            removed_peer_grace_secs: 3600,
            conflict_log_max_len: crate::conflicts::DEFAULT_MAX_LEN,
            appendonly: false,
            dir: std::path::PathBuf::from("."),
            flash: None,
            appendfsync: Fsync::Everysec,
            client_output_buffer_limits: OutputBufferLimits::default(),
            save: Vec::new(),
            written: BTreeMap::new(),
            ignored: Vec::new(),
            refused: Vec::new(),
        }
    }
}

const MAX_INCLUDE_DEPTH: usize = 8;

/// Parses a size: a number with an optional unit (k kb m mb g gb, any case),
/// as redis.conf's `memtoll`.
pub fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: u64 = num.parse().ok()?;
    let mul: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mul)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

impl Config {
    /// Builds the config from an optional file and `--name value...` overrides.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            config.config_file = Some(path.to_path_buf());
            config.read_file(path, 0)?;
        }
        for (name, args) in split_overrides(overrides)? {
            config.apply(&name, &args, &Origin::CommandLine)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn read_file(&mut self, path: &Path, depth: usize) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: Origin::File {
                path: path.to_path_buf(),
                line: 0,
            },
            directive: String::new(),
            message: format!("cannot read file: {e}"),
        })?;
        for (i, raw) in text.lines().enumerate() {
            let origin = Origin::File {
                path: path.to_path_buf(),
                line: i + 1,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words = split_line(line).ok_or_else(|| ConfigError {
                origin: origin.clone(),
                directive: line.to_string(),
                message: "unbalanced quotes".to_string(),
            })?;
            let Some((name, args)) = words.split_first() else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            if name == "include" {
                let [target] = args else {
                    return Err(err(&origin, &name, "expects one file name"));
                };
                if depth >= MAX_INCLUDE_DEPTH {
                    return Err(err(&origin, &name, "includes nested too deeply"));
                }
                let target = Path::new(target);
                let target = if target.is_relative() {
                    path.parent().unwrap_or(Path::new(".")).join(target)
                } else {
                    target.to_path_buf()
                };
                self.read_file(&target, depth + 1)?;
                continue;
            }
            self.apply(&name, args, &origin)?;
        }
        Ok(())
    }

    /// Applies one directive.
    pub fn apply(
        &mut self,
        name: &str,
        args: &[String],
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        // Names are case-insensitive, as in Redis.
        let lower = name.to_ascii_lowercase();
        let name = lower.as_str();
        let one = || -> Result<&str, ConfigError> {
            match args {
                [v] => Ok(v.as_str()),
                _ => Err(err(
                    origin,
                    name,
                    "wrong number of arguments (expects one value)",
                )),
            }
        };
        let bad = |what: &str| err(origin, name, &format!("{what}, got '{}'", args.join(" ")));
        match name {
            "port" => {
                self.port = one()?.parse().map_err(|_| bad("expects a port 0-65535"))?;
            }
            "tls-port" => {
                self.tls_port = one()?.parse().map_err(|_| bad("expects a port 0-65535"))?;
            }
            "tls-auth-clients" => {
                self.tls_auth_clients = crate::tls::ClientAuth::parse(one()?)
                    .ok_or_else(|| bad("expects yes, no or optional"))?;
            }
            "bind" => {
                if args.is_empty() {
                    return Err(err(origin, name, "expects at least one address"));
                }
                // Redis's '-' prefix: skip the address if it is not there;
                // '*' and '::*' (Redis 7's sample file) are every address.
                let mut bind = Vec::new();
                let mut optional = Vec::new();
                for arg in args {
                    let (dash, addr) = match arg.strip_prefix('-') {
                        Some(addr) => (true, addr),
                        None => (false, arg.as_str()),
                    };
                    let addr = match addr {
                        "*" => "0.0.0.0",
                        "::*" => "::",
                        other => other,
                    };
                    if addr.parse::<std::net::IpAddr>().is_err() {
                        return Err(bad("expects IP addresses (or * and ::*)"));
                    }
                    if dash {
                        optional.push(addr.to_string());
                    }
                    bind.push(addr.to_string());
                }
                self.bind = bind;
                self.optional_binds = optional;
            }
            "server-threads" => {
                let n: usize = one()?.parse().map_err(|_| bad("expects a thread count"))?;
                if !(1..=256).contains(&n) {
                    return Err(bad("expects 1 to 256 threads"));
                }
                self.server_threads = n;
            }
            "server-thread-affinity" => {
                self.server_thread_affinity =
                    parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            "requirepass" => {
                let v = one()?;
                self.requirepass = (!v.is_empty()).then(|| v.as_bytes().to_vec());
            }
            "protected-mode" => {
                self.protected_mode = parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            "maxclients" => {
                let n: usize = one()?.parse().map_err(|_| bad("expects a number"))?;
                if n == 0 {
                    return Err(bad("expects at least 1"));
                }
                self.maxclients = n;
            }
            "timeout" => {
                self.timeout_secs = one()?.parse().map_err(|_| bad("expects seconds"))?;
            }
            "databases" => {
                let n: usize = one()?.parse().map_err(|_| bad("expects a number"))?;
                if !(1..=1024).contains(&n) {
                    return Err(bad("expects 1 to 1024 databases"));
                }
                self.databases = n;
            }
            "maxmemory" => {
                self.maxmemory =
                    parse_size(one()?).ok_or_else(|| bad("expects a size like 2gb"))?;
            }
            "maxmemory-policy" => {
                self.maxmemory_policy = crate::evict::Policy::parse(one()?).ok_or_else(|| {
                    bad(
                        "expects noeviction, allkeys-lru, allkeys-lfu, allkeys-random, \
                         volatile-lru, volatile-lfu, volatile-random or volatile-ttl",
                    )
                })?;
            }
            "maxmemory-samples" => {
                let n: usize = one()?.parse().map_err(|_| bad("expects a number"))?;
                if !(1..=64).contains(&n) {
                    return Err(bad("expects 1 to 64 samples"));
                }
                self.maxmemory_samples = n;
            }
            "notify-keyspace-events" => {
                self.notify_keyspace_events =
                    crate::notify::parse_classes(one()?).ok_or_else(|| {
                        bad("expects Redis's event classes: K E g $ l s h z x e t m d n A")
                    })?;
            }
            "tracking-table-max-keys" => {
                self.tracking_table_max_keys = one()?
                    .parse()
                    .map_err(|_| bad("expects a number of keys (0: no limit)"))?;
            }
            "proto-max-bulk-len" => {
                let n = parse_size(one()?).ok_or_else(|| bad("expects a size like 512mb"))?;
                if n < 1024 {
                    return Err(bad("expects at least 1kb"));
                }
                self.proto_max_bulk_len = usize::try_from(n).map_err(|_| bad("too large"))?;
            }
            "client-output-buffer-limit" => {
                // CONFIG SET passes the classes as one value.
                let words: Vec<String> = match args {
                    [one] => one.split_whitespace().map(str::to_string).collect(),
                    _ => args.to_vec(),
                };
                self.client_output_buffer_limits
                    .apply(&words)
                    .map_err(|m| err(origin, name, &m))?;
            }
            "client-query-buffer-limit" => {
                let n = parse_size(one()?).ok_or_else(|| bad("expects a size like 1gb"))?;
                if n < 1024 * 1024 {
                    return Err(bad("expects at least 1mb"));
                }
                self.client_query_buffer_limit =
                    usize::try_from(n).map_err(|_| bad("too large"))?;
            }
            "loglevel" => {
                self.loglevel = match one()?.to_ascii_lowercase().as_str() {
                    "debug" => LogLevel::Debug,
                    "verbose" => LogLevel::Verbose,
                    "notice" => LogLevel::Notice,
                    "warning" => LogLevel::Warning,
                    _ => return Err(bad("expects debug, verbose, notice or warning")),
                };
            }
            "logfile" => {
                let v = one()?;
                self.logfile = (!v.is_empty()).then(|| PathBuf::from(v));
            }
            "appendonly" => {
                self.appendonly = parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            "appendfsync" => {
                self.appendfsync = match one()?.to_ascii_lowercase().as_str() {
                    "always" => Fsync::Always,
                    "everysec" => Fsync::Everysec,
                    "no" => Fsync::No,
                    _ => return Err(bad("expects always, everysec or no")),
                };
            }
            "dir" => {
                let dir = one()?;
                if dir.is_empty() {
                    return Err(bad("expects a directory"));
                }
                self.dir = std::path::PathBuf::from(dir);
            }
            "active-replica" => {
                self.active_replica = parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
            }
            // KeyDB's name for the same mesh; every Chorus node is a master.
            "multi-master" => {
                let on = parse_bool(one()?).ok_or_else(|| bad("expects yes or no"))?;
                self.written
                    .insert("multi-master", if on { "yes" } else { "no" }.to_string());
            }
            "storage-provider" => {
                // CONFIG SET passes both words as one value.
                let words: Vec<String> = match args {
                    [one] => one.split_whitespace().map(str::to_string).collect(),
                    _ => args.to_vec(),
                };
                let [provider, path] = words.as_slice() else {
                    return Err(err(origin, name, "expects flash PATH"));
                };
                if !provider.eq_ignore_ascii_case("flash") || path.is_empty() {
                    return Err(bad("expects flash PATH (the only provider is flash)"));
                }
                self.flash = Some(std::path::PathBuf::from(path));
            }
            "replicaof" | "slaveof" => {
                let [host, port] = args else {
                    return Err(err(origin, name, "expects HOST PORT"));
                };
                let port: u16 = port.parse().map_err(|_| bad("expects HOST PORT"))?;
                self.replicaof.push((host.clone(), port));
            }
            "masterauth" => {
                let v = one()?;
                self.masterauth = (!v.is_empty()).then(|| v.as_bytes().to_vec());
            }
            "tls-cert-file" | "tls-key-file" | "tls-ca-cert-file" => {
                let v = one()?;
                let path = (!v.is_empty()).then(|| std::path::PathBuf::from(v));
                match name {
                    "tls-cert-file" => self.tls_cert_file = path,
                    "tls-key-file" => self.tls_key_file = path,
                    _ => self.tls_ca_cert_file = path,
                }
            }
            "replication-port" => {
                self.replication_port =
                    Some(one()?.parse().map_err(|_| bad("expects a port 0-65535"))?);
            }
            "cluster-name" => {
                let v = one()?;
                if v.is_empty() {
                    return Err(bad("expects a name"));
                }
                self.cluster_name = v.to_string();
            }
            "node-name" => {
                let v = one()?;
                if !chorus_transport::auth::valid_name(v) {
                    return Err(bad(
                        "expects up to 64 visible ASCII characters other than ',' and '='",
                    ));
                }
                self.node_name = v.to_string();
            }
            "max-clock-drift" => {
                self.max_clock_drift_ms =
                    one()?.parse().map_err(|_| bad("expects milliseconds"))?;
            }
            "repl-backlog-min-seconds" => {
                self.repl_backlog_min_secs = one()?
                    .parse()
                    .ok()
                    .filter(|s| *s <= 86_400)
                    .ok_or_else(|| bad("expects seconds, 0 (none) to 86400"))?;
            }
            "repl-repair-interval" => {
                self.repl_repair_interval_secs = one()?
                    .parse()
                    .ok()
                    .filter(|s| *s <= 86_400)
                    .ok_or_else(|| bad("expects seconds, 0 (never) to 86400"))?;
            }
            "conflict-log-max-len" => {
                self.conflict_log_max_len = one()?
                    .parse()
                    .ok()
                    .filter(|n| *n <= 10_000_000)
                    .ok_or_else(|| bad("expects a number of entries, 0 to 10000000"))?;
            }
            "removed-peer-grace" => {
                self.removed_peer_grace_secs = one()?
                    .parse()
                    .ok()
                    .filter(|s| *s <= 30 * 86_400)
                    .ok_or_else(|| bad("expects seconds, 0 to 2592000 (30 days)"))?;
            }
            "repl-window-size" => {
                self.repl_window_size = parse_size(one()?)
                    .filter(|n| (64 * 1024..=1 << 32).contains(n))
                    .ok_or_else(|| bad("expects a size from 64kb to 4gb, like 32mb"))?;
            }
            "repl-compression" => {
                self.repl_compression = match one()?.to_ascii_lowercase().as_str() {
                    "lz4" => true,
                    "no" | "none" => false,
                    _ => return Err(bad("expects no or lz4")),
                };
            }
            "repl-congestion-control" => {
                self.repl_congestion_control = one()?.parse().map_err(|e: String| bad(&e))?;
            }
            "repl-log-max-size" => {
                self.repl_log_max_size =
                    parse_size(one()?).ok_or_else(|| bad("expects a size like 4gb"))?;
            }
            "repl-backlog-size" => {
                let n = parse_size(one()?).ok_or_else(|| bad("expects a size like 16mb"))?;
                self.repl_backlog_size = usize::try_from(n)
                    .map_err(|_| bad("too large"))?
                    .max(16 * 1024);
            }
            _ => self.apply_unimplemented(name, args, origin)?,
        }
        Ok(())
    }

    /// A directive Chorus does not implement: ignored or refused by its
    /// entry in [`DIRECTIVES`]; unknown if it has none.
    fn apply_unimplemented(
        &mut self,
        name: &str,
        args: &[String],
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        if name == "include" {
            return Err(err(origin, name, "works only inside a config file"));
        }
        let Some(directive) = directives::lookup(name) else {
            let message = match directives::suggest(name) {
                Some(close) => format!("unknown directive (did you mean '{close}'?)"),
                None => "unknown directive".to_string(),
            };
            return Err(err(origin, name, &message));
        };
        match directive.kind {
            // `apply` parses every applied directive before coming here; a
            // unit test keeps the two in step.
            Kind::Applied => return Err(err(origin, name, "unknown directive")),
            Kind::Refused { off, why } => {
                self.refused.retain(|(d, _)| *d != directive.name);
                if !off.accepts(args) {
                    let message = match off.describe() {
                        Some(values) => format!("{why} (only {values} is accepted)"),
                        None => why.to_string(),
                    };
                    let error = err(origin, name, &message);
                    // CONFIG SET has no later value to wait for.
                    if matches!(origin, Origin::ConfigSet) {
                        return Err(error);
                    }
                    self.refused.push((directive.name, error));
                }
            }
            Kind::Ignored => {
                if args.is_empty() {
                    return Err(err(origin, name, "expects a value"));
                }
                if directive.name == "save" {
                    self.apply_save(name, args, origin)?;
                }
                // `save` gets a warning of its own (Config::warnings): losing
                // it loses persistence, unlike the tuning knobs listed here.
                if directive.name != "save"
                    && !self.ignored.iter().any(|(d, _)| *d == directive.name)
                {
                    self.ignored.push((directive.name, name.to_string()));
                }
            }
        }
        self.written.insert(directive.name, args.join(" "));
        Ok(())
    }

    /// `save SECONDS CHANGES [SECONDS CHANGES ...]` adds save points and
    /// `save ""` removes them, as in Redis.
    fn apply_save(
        &mut self,
        name: &str,
        args: &[String],
        origin: &Origin,
    ) -> Result<(), ConfigError> {
        if let [only] = args {
            if only.is_empty() {
                self.save.clear();
                return Ok(());
            }
        }
        let bad = || {
            err(
                origin,
                name,
                &format!(
                    "expects SECONDS CHANGES pairs (seconds at least 1) or \"\", got '{}'",
                    args.join(" ")
                ),
            )
        };
        if !args.len().is_multiple_of(2) {
            return Err(bad());
        }
        let mut points = Vec::new();
        for pair in args.chunks(2) {
            let [seconds, changes] = pair else {
                return Err(bad());
            };
            let seconds: u64 = seconds.parse().map_err(|_| bad())?;
            let changes: u64 = changes.parse().map_err(|_| bad())?;
            if seconds == 0 {
                return Err(bad());
            }
            points.push((seconds, changes));
        }
        self.save.extend(points);
        Ok(())
    }

    /// The ignored directives the user set (names as written, first
    /// occurrence, in order), for the one start-up line listing them.
    /// `save` is not among them: see [`Config::warnings`].
    pub fn ignored_directives(&self) -> Vec<&str> {
        self.ignored.iter().map(|(_, name)| name.as_str()).collect()
    }

    /// Start-up warnings about settings that are accepted but change what
    /// the user gets, each to be logged on its own. Today: `save` points,
    /// since Chorus writes no RDB snapshots.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.save.is_empty() {
            let points = self
                .save
                .iter()
                .map(|(s, c)| format!("{s} {c}"))
                .collect::<Vec<_>>()
                .join(" ");
            let data = if let Some(dir) = self.data_dir() {
                format!("the data is kept on disk (in {})", dir.display())
            } else {
                "with appendonly no this node keeps its data in memory only: set appendonly \
                 yes to keep it on disk"
                    .to_string()
            };
            out.push(format!(
                "save {points}: chorus writes no RDB snapshots; {data}"
            ));
        }
        if self.flash.is_some()
            && (self.maxmemory == 0 || self.maxmemory_policy == crate::evict::Policy::NoEviction)
        {
            out.push(
                "storage-provider flash: no key leaves RAM until maxmemory is set and \
                 maxmemory-policy is not noeviction (the policy picks the keys that move)"
                    .to_string(),
            );
        }
        out
    }

    /// Where the node keeps its store and delta log: the flash path, else
    /// `dir` with `appendonly yes`; `None`: in memory only.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match &self.flash {
            Some(path) => Some(path),
            None => self.appendonly.then_some(self.dir.as_path()),
        }
    }

    /// Every known directive (not its aliases) with its current value, as
    /// CONFIG GET shows it: applied ones from their typed fields, the
    /// others as last written, or their default.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        DIRECTIVES
            .iter()
            .map(|d| {
                let value = self
                    .typed_value(d.name)
                    .or_else(|| self.written.get(d.name).cloned())
                    .unwrap_or_else(|| d.default.to_string());
                (d.name, value)
            })
            .collect()
    }

    fn typed_value(&self, name: &str) -> Option<String> {
        let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
        let text = |v: &Option<Vec<u8>>| {
            v.as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        Some(match name {
            "port" => self.port.to_string(),
            "tls-port" => self.tls_port.to_string(),
            "tls-auth-clients" => self.tls_auth_clients.as_str().to_string(),
            "bind" => self
                .bind
                .iter()
                .map(|b| {
                    let dash = if self.optional_binds.contains(b) {
                        "-"
                    } else {
                        ""
                    };
                    format!("{dash}{b}")
                })
                .collect::<Vec<_>>()
                .join(" "),
            "server-threads" => self.server_threads.to_string(),
            "server-thread-affinity" => yes(self.server_thread_affinity),
            "requirepass" => text(&self.requirepass),
            "protected-mode" => yes(self.protected_mode),
            "maxclients" => self.maxclients.to_string(),
            "timeout" => self.timeout_secs.to_string(),
            "databases" => self.databases.to_string(),
            "proto-max-bulk-len" => self.proto_max_bulk_len.to_string(),
            "maxmemory" => self.maxmemory.to_string(),
            "maxmemory-policy" => self.maxmemory_policy.name().to_string(),
            "maxmemory-samples" => self.maxmemory_samples.to_string(),
            "tracking-table-max-keys" => self.tracking_table_max_keys.to_string(),
            "notify-keyspace-events" => crate::notify::classes_text(self.notify_keyspace_events),
            "client-query-buffer-limit" => self.client_query_buffer_limit.to_string(),
            "loglevel" => self.loglevel.as_str().to_string(),
            "logfile" => path(&self.logfile),
            // The flash tier keeps its store and log as `appendonly yes`.
            "appendonly" => yes(self.appendonly || self.flash.is_some()),
            "appendfsync" => self.appendfsync.as_str().to_string(),
            "dir" => self.dir.display().to_string(),
            "storage-provider" => self
                .flash
                .as_ref()
                .map_or(String::new(), |p| format!("flash {}", p.display())),
            "active-replica" => yes(self.active_replica),
            "replicaof" => self
                .replicaof
                .iter()
                .map(|(host, port)| format!("{host} {port}"))
                .collect::<Vec<_>>()
                .join(" "),
            "masterauth" => text(&self.masterauth),
            "tls-cert-file" => path(&self.tls_cert_file),
            "tls-key-file" => path(&self.tls_key_file),
            "tls-ca-cert-file" => path(&self.tls_ca_cert_file),
            "replication-port" => self
                .replication_listen_port()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            "cluster-name" => self.cluster_name.clone(),
            "node-name" => self.node_name.clone(),
            "max-clock-drift" => self.max_clock_drift_ms.to_string(),
            "repl-repair-interval" => self.repl_repair_interval_secs.to_string(),
            "repl-backlog-min-seconds" => self.repl_backlog_min_secs.to_string(),
            "removed-peer-grace" => self.removed_peer_grace_secs.to_string(),
            "conflict-log-max-len" => self.conflict_log_max_len.to_string(),
            "repl-backlog-size" => self.repl_backlog_size.to_string(),
            "repl-log-max-size" => self.repl_log_max_size.to_string(),
            "repl-window-size" => self.repl_window_size.to_string(),
            "repl-congestion-control" => self.repl_congestion_control.to_string(),
            "repl-compression" => if self.repl_compression { "lz4" } else { "no" }.to_string(),
            // No snapshots are taken whatever was written; tools such as
            // redis-benchmark read `save` to learn whether the server
            // snapshots.
            "save" => String::new(),
            "client-output-buffer-limit" => self.client_output_buffer_limits.to_string(),
            _ => return None,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some((_, error)) = self.refused.first() {
            return Err(error.clone());
        }
        if self.bind.is_empty() {
            return Err(err(&Origin::CommandLine, "bind", "no address to listen on"));
        }
        let tls_set = [
            ("tls-cert-file", &self.tls_cert_file),
            ("tls-key-file", &self.tls_key_file),
            ("tls-ca-cert-file", &self.tls_ca_cert_file),
        ];
        if tls_set.iter().any(|(_, f)| f.is_some()) {
            if let Some((missing, _)) = tls_set.iter().find(|(_, f)| f.is_none()) {
                return Err(err(
                    &Origin::CommandLine,
                    missing,
                    "TLS (mutual TLS for peer links, tls-port for clients) needs tls-cert-file, \
                     tls-key-file and tls-ca-cert-file together",
                ));
            }
        }
        if self.tls_port != 0 && self.tls_cert_file.is_none() {
            return Err(err(
                &Origin::CommandLine,
                "tls-port",
                "TLS for clients needs tls-cert-file, tls-key-file and tls-ca-cert-file",
            ));
        }
        if self.tls_port != 0
            && self.tls_auth_clients != crate::tls::ClientAuth::No
            && self.masterauth.is_none()
        {
            return Err(err(
                &Origin::CommandLine,
                "tls-port",
                "client certificates are checked against tls-ca-cert-file, the CA that admits \
                 peers: set masterauth too, so that a client's certificate alone never lets it \
                 join the cluster (or tls-auth-clients no)",
            ));
        }
        if self.replicating() && self.masterauth.is_none() && self.peer_tls().is_none() {
            return Err(err(
                &Origin::CommandLine,
                "masterauth",
                "replication needs peers to authenticate: set masterauth to the same value on \
                 every node, or tls-cert-file, tls-key-file and tls-ca-cert-file",
            ));
        }
        if self.replicating() {
            self.replication_listen_port()?;
        }
        Ok(())
    }

    /// The mutual-TLS files for peer links, when all three are set.
    pub fn peer_tls(&self) -> Option<chorus_transport::tls::TlsFiles> {
        Some(chorus_transport::tls::TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
            ca: self.tls_ca_cert_file.clone()?,
        })
    }

    /// Whether this node joins a replication mesh.
    pub fn replicating(&self) -> bool {
        self.active_replica || !self.replicaof.is_empty()
    }

    /// The UDP port replication listens on.
    pub fn replication_listen_port(&self) -> Result<u16, ConfigError> {
        match self.replication_port {
            Some(p) => Ok(p),
            None if self.port == 0 => Ok(0),
            None => default_replication_port(self.port).ok_or_else(|| {
                err(
                    &Origin::CommandLine,
                    "replication-port",
                    "port + 10000 is past 65535: set replication-port",
                )
            }),
        }
    }
}

/// The replication port of a node listening for clients on `client_port`,
/// when `replication-port` is not set: port + 10000.
pub fn default_replication_port(client_port: u16) -> Option<u16> {
    client_port.checked_add(10_000)
}

fn err(origin: &Origin, directive: &str, message: &str) -> ConfigError {
    ConfigError {
        origin: origin.clone(),
        directive: directive.to_string(),
        message: message.to_string(),
    }
}

/// `--port 6380 --bind 127.0.0.1 ::1` into (name, values) pairs.
fn split_overrides(args: &[String]) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for arg in args {
        if let Some(name) = arg.strip_prefix("--") {
            out.push((name.to_ascii_lowercase(), Vec::new()));
        } else if let Some((_, values)) = out.last_mut() {
            values.push(arg.clone());
        } else {
            return Err(err(
                &Origin::CommandLine,
                arg,
                "expected --directive before a value",
            ));
        }
    }
    Ok(out)
}

/// Splits a config line into words with redis.conf quoting.
fn split_line(line: &str) -> Option<Vec<String>> {
    let mut ranges = Vec::new();
    let mut out = Vec::new();
    crate::resp::split_args_public(line.as_bytes(), &mut ranges, &mut out).ok()?;
    Some(
        ranges
            .into_iter()
            .map(|r| String::from_utf8_lossy(&out[r]).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod disposition_tests;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn conflict_log_max_len_takes_a_count_up_to_ten_million() {
        let load = |v: &str| Config::load(None, &["--conflict-log-max-len".into(), v.into()]);
        assert_eq!(load("0").unwrap().conflict_log_max_len, 0);
        assert_eq!(load("10000000").unwrap().conflict_log_max_len, 10_000_000);
        for bad in ["10000001", "-1", "many"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("conflict-log-max-len"), "{e}");
        }
        assert_eq!(
            Config::load(None, &[]).unwrap().conflict_log_max_len,
            10_000
        );
    }

    #[test]
    fn wan_link_settings_take_a_window_size_and_a_congestion_control() {
        let load = |name: &str, v: &str| Config::load(None, &[format!("--{name}"), v.into()]);
        let c = load("repl-window-size", "64mb").unwrap();
        assert_eq!(c.repl_window_size, 64 << 20);
        for bad in ["1kb", "8gb", "wide"] {
            let e = load("repl-window-size", bad).unwrap_err().to_string();
            assert!(e.contains("repl-window-size"), "{e}");
        }
        let c = load("repl-congestion-control", "BBR").unwrap();
        assert_eq!(c.repl_congestion_control, chorus_transport::Congestion::Bbr);
        assert_eq!(
            c.typed_value("repl-congestion-control").as_deref(),
            Some("bbr")
        );
        let e = load("repl-congestion-control", "fast")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cubic, bbr or newreno"), "{e}");
        let c = load("repl-log-max-size", "1gb").unwrap();
        assert_eq!(c.repl_log_max_size, 1 << 30);
        let c = load("repl-backlog-min-seconds", "600").unwrap();
        assert_eq!(c.repl_backlog_min_secs, 600);
        assert_eq!(
            c.typed_value("repl-backlog-min-seconds").as_deref(),
            Some("600")
        );
        let e = load("repl-backlog-min-seconds", "1h")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expects seconds"), "{e}");
        assert!(load("repl-compression", "lz4").unwrap().repl_compression);
        assert!(!load("repl-compression", "no").unwrap().repl_compression);
        let e = load("repl-compression", "zip").unwrap_err().to_string();
        assert!(e.contains("no or lz4"), "{e}");
        let d = Config::load(None, &[]).unwrap();
        assert!(!d.repl_compression);
        assert_eq!(d.repl_window_size, 32 << 20);
        assert_eq!(
            d.repl_congestion_control,
            chorus_transport::Congestion::Cubic
        );
    }

    #[test]
    fn node_name_takes_a_short_visible_name() {
        let load = |v: &str| Config::load(None, &["--node-name".into(), v.into()]);
        assert_eq!(load("eu-west-1").unwrap().node_name, "eu-west-1");
        for bad in ["eu west", "a,b", "a=b", &"x".repeat(65)] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("node-name"), "{e}");
        }
        assert_eq!(Config::load(None, &[]).unwrap().node_name, "");
    }

    #[test]
    fn removed_peer_grace_takes_seconds_up_to_thirty_days() {
        let load = |v: &str| Config::load(None, &["--removed-peer-grace".into(), v.into()]);
        assert_eq!(load("0").unwrap().removed_peer_grace_secs, 0);
        assert_eq!(load("2592000").unwrap().removed_peer_grace_secs, 2_592_000);
        assert!(load("2592001").is_err());
        assert!(load("-1").is_err());
        assert!(load("1h").is_err());
        assert_eq!(
            Config::load(None, &[]).unwrap().removed_peer_grace_secs,
            3600
        );
    }

    #[test]
    fn repl_repair_interval_takes_seconds_and_refuses_the_rest() {
        let load = |v: &str| Config::load(None, &["--repl-repair-interval".into(), v.into()]);
        assert_eq!(load("0").unwrap().repl_repair_interval_secs, 0);
        assert_eq!(load("5").unwrap().repl_repair_interval_secs, 5);
        assert_eq!(
            Config::load(None, &[]).unwrap().repl_repair_interval_secs,
            30
        );
        for bad in ["-1", "soon", "86401", "1.5"] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains("expects seconds"), "{bad}: {e}");
        }
    }

    pub(super) fn tempdir(tag: &str) -> crate::TestDir {
        crate::TestDir::new("config", tag)
    }

    #[test]
    fn file_include_quotes_units_and_overrides() {
        let dir = tempdir("ok");
        write(&dir, "extra.conf", "maxclients 77\n");
        let main = write(
            &dir,
            "main.conf",
            "# comment\nport 7000\nrequirepass \"s3 cret\"\nproto-max-bulk-len 1mb\ninclude extra.conf\nappendonly no\n",
        );
        let c = Config::load(
            Some(&main),
            &[
                "--port".into(),
                "7001".into(),
                "--bind".into(),
                "127.0.0.1".into(),
                "::1".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.port, 7001);
        assert_eq!(c.requirepass.as_deref(), Some(&b"s3 cret"[..]));
        assert_eq!(c.proto_max_bulk_len, 1024 * 1024);
        assert_eq!(c.maxclients, 77);
        assert_eq!(c.bind, vec!["127.0.0.1", "::1"]);
    }

    #[test]
    fn errors_name_file_line_and_directive() {
        let dir = tempdir("bad");
        let main = write(&dir, "bad.conf", "port 7000\n\nfrobnicate yes\n");
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        assert!(
            e.contains("bad.conf:3") && e.contains("frobnicate") && e.contains("unknown"),
            "{e}"
        );

        let main = write(&dir, "bad2.conf", "port seventy\n");
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        assert!(e.contains("bad2.conf:1") && e.contains("port"), "{e}");

        let main = write(
            &dir,
            "bad3.conf",
            "storage-provider rocksdb /var/lib/chorus\n",
        );
        let e = Config::load(Some(&main), &[]).unwrap_err().to_string();
        assert!(
            e.contains("bad3.conf:1") && e.contains("expects flash PATH"),
            "{e}"
        );

        let e = Config::load(None, &["--maxmemory-policy".into(), "lru".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("command line") && e.contains("allkeys-lru"),
            "{e}"
        );
    }

    #[test]
    fn persistence_directives_parse_and_bad_values_are_errors() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Config::load(
            None,
            &args(&[
                "--appendonly",
                "yes",
                "--dir",
                "/data",
                "--appendfsync",
                "always",
            ]),
        )
        .unwrap();
        assert!(c.appendonly);
        assert_eq!(c.dir, std::path::PathBuf::from("/data"));
        assert_eq!(c.appendfsync, Fsync::Always);
        let d = Config::load(None, &[]).unwrap();
        assert_eq!((d.appendonly, d.appendfsync), (false, Fsync::Everysec));
        for bad in [
            &["--appendonly", "maybe"][..],
            &["--appendfsync", "sometimes"],
            &["--dir", ""],
        ] {
            let e = Config::load(None, &args(bad)).unwrap_err().to_string();
            assert!(e.contains(&bad[0][2..]), "{e}");
        }
    }

    #[test]
    fn the_sample_replication_configs_load() {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
        for file in [
            "node-a.conf",
            "node-b.conf",
            "three/node-1.conf",
            "three/node-2.conf",
            "three/node-3.conf",
        ] {
            let c =
                Config::load(Some(&conf.join(file)), &[]).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(c.replicating() && c.masterauth.is_some(), "{file}");
            let peers = if file.starts_with("three") { 2 } else { 1 };
            assert_eq!(c.replicaof.len(), peers, "{file}");
            assert_eq!(c.replication_listen_port().unwrap(), c.port + 10_000);
        }
    }

    #[test]
    fn peers_authenticate_by_secret_or_all_three_certificate_files() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = Config::load(None, &args(&["--active-replica", "yes"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("masterauth") && e.contains("tls-cert-file"),
            "{e}"
        );
        let e = Config::load(
            None,
            &args(&[
                "--active-replica",
                "yes",
                "--tls-cert-file",
                "n.pem",
                "--tls-key-file",
                "n.key",
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("tls-ca-cert-file") && e.contains("together"),
            "{e}"
        );
        let c = Config::load(
            None,
            &args(&[
                "--active-replica",
                "yes",
                "--tls-cert-file",
                "n.pem",
                "--tls-key-file",
                "n.key",
                "--tls-ca-cert-file",
                "ca.pem",
            ]),
        )
        .unwrap();
        assert_eq!(c.peer_tls().unwrap().ca, Path::new("ca.pem"));
        assert!(c.masterauth.is_none());
    }

    #[test]
    fn bind_takes_redis_wildcards_and_optional_addresses_and_refuses_names() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Config::load(None, &args(&["--bind", "*", "-::*"])).unwrap();
        assert_eq!(c.bind, vec!["0.0.0.0", "::"]);
        assert_eq!(c.optional_binds, vec!["::"]);
        let c = Config::load(None, &args(&["--bind", "127.0.0.1", "-::1"])).unwrap();
        assert_eq!(c.bind, vec!["127.0.0.1", "::1"]);
        assert_eq!(c.optional_binds, vec!["::1"]);
        let e = Config::load(None, &args(&["--bind", "localhost"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'bind'") && e.contains("IP address"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100mb"), Some(100 * 1024 * 1024));
        assert_eq!(parse_size("1k"), Some(1000));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("12xb"), None);
        assert_eq!(parse_size(""), None);
    }
}
