//! Every directive of Redis 7.0, 7.2 and 7.4 (their redis.conf and the
//! parameters of their `config.c`, hidden ones included) and of KeyDB 6's
//! keydb.conf, with what Chorus does with it.
//!
//! A user's existing config must start unchanged, so nothing Redis or KeyDB
//! accepts may be "unknown" here (Chorus reports `redis_version:7.2.0`, so a
//! 7.2 or 7.4 file must start too); a name missing from this table is a
//! misspelling. Each directive has one of three dispositions:
//!
//! - [`Kind::Applied`]: Chorus implements it; `Config::apply` parses it into a
//!   typed field.
//! - [`Kind::Ignored`]: a tuning knob with no meaning in Chorus (encodings,
//!   RDB/AOF file names, lazyfree, hz, ...). Any value is accepted and kept
//!   as written so that CONFIG GET shows it, and the node lists it once at
//!   start-up.
//! - [`Kind::Refused`]: silently dropping it would change what the user gets
//!   (data evicted, clients on a socket that is not there, a supervisor
//!   waiting for a signal, ...). Only a value that keeps the feature off is
//!   accepted; anything else stops start-up with the reason.
//!
//! `default` is what CONFIG GET shows when the directive is not set: Redis
//! 7.0's default (from `CONFIG GET *` of redis-server 7.0.15), the default of
//! the Redis version that added it for directives new in 7.2 or 7.4, KeyDB
//! 6.3's for KeyDB's own directives, and Chorus's own default for applied
//! ones.
//!
//! Not listed: `req-res-logfile` and `client-default-resp` (Redis 7.2), which
//! exist only in redis-server builds made with `LOG_REQ_RES` for Redis's own
//! test suite; a released redis-server refuses them as well.

/// What Chorus does with a directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Applied,
    Ignored,
    Refused {
        /// The values that keep the feature off.
        off: Off,
        /// Why any other value stops start-up: what the user would lose.
        why: &'static str,
    },
}

/// The values of a refused directive that keep its feature off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Off {
    /// One of these words, in any case.
    Words(&'static [&'static str]),
    /// A size of zero, with or without a unit (`0`, `0mb`).
    Zero,
    /// An empty value (`""`).
    Empty,
    /// None: the directive itself asks for the feature.
    Never,
}

impl Off {
    /// Whether `args` keep the feature off.
    pub fn accepts(&self, args: &[String]) -> bool {
        let value = args.join(" ");
        match self {
            Off::Words(words) => words.iter().any(|w| w.eq_ignore_ascii_case(&value)),
            Off::Zero => super::parse_size(&value) == Some(0),
            Off::Empty => value.is_empty(),
            Off::Never => false,
        }
    }

    /// The accepted values, for messages and docs.
    pub fn describe(&self) -> Option<String> {
        match self {
            Off::Words(words) => Some(words.join(" or ")),
            Off::Zero => Some("0".to_string()),
            Off::Empty => Some("\"\"".to_string()),
            Off::Never => None,
        }
    }
}

#[derive(Debug)]
pub struct Directive {
    pub name: &'static str,
    /// Older or other names for the same setting (`slaveof`, `slave-*`,
    /// the `*-ziplist-*` encodings), accepted like the name itself.
    pub aliases: &'static [&'static str],
    pub default: &'static str,
    pub kind: Kind,
}

/// The directive `name` (lowercase) names, by its name or an alias.
pub fn lookup(name: &str) -> Option<&'static Directive> {
    DIRECTIVES
        .iter()
        .find(|d| d.name == name || d.aliases.contains(&name))
}

const fn applied(name: &'static str, default: &'static str) -> Directive {
    Directive {
        name,
        aliases: &[],
        default,
        kind: Kind::Applied,
    }
}

const fn ignored(name: &'static str, default: &'static str) -> Directive {
    ignored_alias(name, &[], default)
}

const fn ignored_alias(
    name: &'static str,
    aliases: &'static [&'static str],
    default: &'static str,
) -> Directive {
    Directive {
        name,
        aliases,
        default,
        kind: Kind::Ignored,
    }
}

const fn refused(
    name: &'static str,
    default: &'static str,
    off: Off,
    why: &'static str,
) -> Directive {
    Directive {
        name,
        aliases: &[],
        default,
        kind: Kind::Refused { off, why },
    }
}

const NO: Off = Off::Words(&["no", "false"]);

const ACL: &str = "ACL users are not implemented (requirepass protects the default user): the \
                   users it defines could not log in and its rules would not apply";

/// Every known directive. Order: as in redis.conf's sections, then KeyDB's
/// own, then Chorus's own.
pub static DIRECTIVES: &[Directive] = &[
    // ---- network
    applied("bind", "127.0.0.1"),
    // Outgoing replication runs over QUIC from replication-port; peers are
    // authenticated by masterauth or certificates, never by source address.
    ignored("bind-source-addr", ""),
    applied("protected-mode", "yes"),
    applied("port", "6379"),
    ignored("tcp-backlog", "511"),
    refused(
        "unixsocket",
        "",
        Off::Empty,
        "listening on a Unix socket is not implemented: clients configured for the socket \
         would find nothing there",
    ),
    ignored("unixsocketperm", "0"),
    applied("timeout", "0"),
    ignored("tcp-keepalive", "300"),
    // Redis 7.4: how many connections one event-loop cycle accepts.
    ignored("max-new-connections-per-cycle", "10"),
    ignored("socket-mark-id", "0"),
    // ---- TLS: the three files secure the peer links, and clients on
    // tls-port (tls-auth-clients says whether clients need a certificate).
    applied("tls-port", "0"),
    applied("tls-cert-file", ""),
    applied("tls-key-file", ""),
    ignored("tls-key-file-pass", ""),
    ignored("tls-client-cert-file", ""),
    ignored("tls-client-key-file", ""),
    ignored("tls-client-key-file-pass", ""),
    ignored("tls-dh-params-file", ""),
    applied("tls-ca-cert-file", ""),
    ignored("tls-ca-cert-dir", ""),
    applied("tls-auth-clients", "yes"),
    // Peer links are always TLS in Chorus.
    ignored("tls-replication", "no"),
    ignored("tls-cluster", "no"),
    ignored("tls-protocols", ""),
    ignored("tls-ciphers", ""),
    ignored("tls-ciphersuites", ""),
    ignored("tls-prefer-server-ciphers", "no"),
    ignored("tls-session-caching", "yes"),
    ignored("tls-session-cache-size", "20480"),
    ignored("tls-session-cache-timeout", "300"),
    // Redis 7.4: how many TLS handshakes one event-loop cycle starts.
    ignored("max-new-tls-connections-per-cycle", "1"),
    // ---- general
    refused(
        "daemonize",
        "no",
        NO,
        "chorus does not fork into the background: set daemonize no and run it under systemd \
         (Type=simple) or with &",
    ),
    refused(
        "supervised",
        "no",
        Off::Words(&["no"]),
        "chorus does not signal readiness to systemd or upstart, so the supervisor would wait \
         for a signal that never comes: set supervised no (Type=simple in a systemd unit)",
    ),
    // Chorus does not fork; a supervisor tracks the process itself.
    ignored("pidfile", ""),
    applied("loglevel", "notice"),
    applied("logfile", ""),
    refused(
        "syslog-enabled",
        "no",
        NO,
        "logging to syslog is not implemented, so the log would not reach syslog: use logfile, \
         or stderr (journald keeps it)",
    ),
    ignored("syslog-ident", "redis"),
    ignored("syslog-facility", "local0"),
    ignored("crash-log-enabled", "yes"),
    ignored("crash-memcheck-enabled", "yes"),
    // Redis 7.4: keep keys, values and command arguments out of the log.
    // Chorus's log never contains them (no crash report of client
    // arguments, no key in any message), so `yes` already holds.
    ignored("hide-user-data-from-log", "no"),
    applied("databases", "16"),
    ignored("always-show-logo", "no"),
    ignored("set-proc-title", "yes"),
    ignored("proc-title-template", "{title} {listen-addr} {server-mode}"),
    // Redis 7.2: the locale of strcoll, used by SORT ... ALPHA and Lua's
    // string comparisons; Chorus has neither, and compares bytes.
    ignored("locale-collate", ""),
    // ---- snapshotting: Chorus writes no RDB files. `save` is validated by
    // Config::apply and reported by Config::warnings rather than in the
    // ignored list, because losing it loses persistence.
    ignored("save", ""),
    ignored("stop-writes-on-bgsave-error", "yes"),
    ignored("rdbcompression", "yes"),
    ignored("rdbchecksum", "yes"),
    ignored("sanitize-dump-payload", "no"),
    ignored("dbfilename", "dump.rdb"),
    ignored("rdb-del-sync-files", "no"),
    applied("dir", "."),
    // ---- replication: every Chorus node is a master, so the settings of a
    // replica of one master (read-only, stale data, priority for Sentinel's
    // failover) have nothing to apply to. `replica-read-only yes` in
    // particular is in Debian's stock file and must start: it describes
    // the node only while it replicates one master, which a Chorus node
    // never does.
    Directive {
        name: "replicaof",
        aliases: &["slaveof"],
        default: "",
        kind: Kind::Applied,
    },
    applied("masterauth", ""),
    ignored("masteruser", ""),
    ignored_alias(
        "replica-serve-stale-data",
        &["slave-serve-stale-data"],
        "yes",
    ),
    ignored_alias("replica-read-only", &["slave-read-only"], "yes"),
    ignored("repl-diskless-sync", "yes"),
    ignored("repl-diskless-sync-delay", "5"),
    ignored("repl-diskless-sync-max-replicas", "0"),
    ignored("repl-diskless-load", "disabled"),
    ignored_alias(
        "repl-ping-replica-period",
        &["repl-ping-slave-period"],
        "10",
    ),
    ignored("repl-timeout", "60"),
    ignored("repl-disable-tcp-nodelay", "no"),
    applied("repl-backlog-size", "16777216"),
    ignored("repl-backlog-ttl", "3600"),
    ignored_alias("replica-priority", &["slave-priority"], "100"),
    ignored("propagation-error-behavior", "ignore"),
    ignored("replica-ignore-disk-write-errors", "no"),
    ignored("replica-announced", "yes"),
    Directive {
        name: "min-replicas-to-write",
        aliases: &["min-slaves-to-write"],
        default: "0",
        kind: Kind::Refused {
            off: Off::Words(&["0"]),
            why: "every chorus node is a master and accepts writes whatever its peers' state, \
                  so writes would not be refused when too few peers are connected: use WAIT \
                  numpeers timeout for writes that must reach peers",
        },
    },
    ignored_alias("min-replicas-max-lag", &["min-slaves-max-lag"], "10"),
    ignored_alias("replica-announce-ip", &["slave-announce-ip"], ""),
    ignored_alias("replica-announce-port", &["slave-announce-port"], "0"),
    // ---- keys tracking
    applied("tracking-table-max-keys", "1000000"),
    // ---- security
    refused("aclfile", "", Off::Empty, ACL),
    refused("user", "", Off::Never, ACL),
    ignored("acllog-max-len", "128"),
    ignored("acl-pubsub-default", "resetchannels"),
    applied("requirepass", ""),
    refused(
        "rename-command",
        "",
        Off::Never,
        "renaming or hiding commands is not implemented: the command would stay callable \
         under its own name",
    ),
    // ---- clients and memory
    applied("maxclients", "10000"),
    applied("maxmemory", "0"),
    applied("maxmemory-policy", "noeviction"),
    applied("maxmemory-samples", "5"),
    ignored("maxmemory-eviction-tenacity", "10"),
    ignored_alias(
        "replica-ignore-maxmemory",
        &["slave-ignore-maxmemory"],
        "yes",
    ),
    ignored("active-expire-effort", "1"),
    refused(
        "maxmemory-clients",
        "0",
        Off::Zero,
        "client eviction is not implemented: the memory of client connections would not be \
         limited",
    ),
    // ---- lazy freeing
    ignored("lazyfree-lazy-eviction", "no"),
    ignored("lazyfree-lazy-expire", "no"),
    ignored("lazyfree-lazy-server-del", "no"),
    ignored_alias("replica-lazy-flush", &["slave-lazy-flush"], "no"),
    ignored("lazyfree-lazy-user-del", "no"),
    ignored("lazyfree-lazy-user-flush", "no"),
    // ---- threads: Chorus's own threading is server-threads.
    ignored("io-threads", "1"),
    ignored("io-threads-do-reads", "no"),
    // ---- kernel and process
    ignored("oom-score-adj", "no"),
    ignored("oom-score-adj-values", "0 200 800"),
    ignored("disable-thp", "yes"),
    // Redis 7.4 names these with dashes and keeps the underscores as
    // aliases; CONFIG GET answers under 7.0's and 7.2's name.
    ignored_alias("server_cpulist", &["server-cpulist"], ""),
    ignored_alias("bio_cpulist", &["bio-cpulist"], ""),
    ignored_alias("aof_rewrite_cpulist", &["aof-rewrite-cpulist"], ""),
    ignored_alias("bgsave_cpulist", &["bgsave-cpulist"], ""),
    ignored("ignore-warnings", ""),
    // ---- append only mode: appendonly keeps the state in a store and a
    // delta log in `dir`, so the AOF's file names and rewrite policy mean nothing.
    applied("appendonly", "no"),
    ignored("appendfilename", "appendonly.aof"),
    ignored("appenddirname", "appendonlydir"),
    applied("appendfsync", "everysec"),
    ignored("no-appendfsync-on-rewrite", "no"),
    ignored("auto-aof-rewrite-percentage", "100"),
    ignored("auto-aof-rewrite-min-size", "67108864"),
    ignored("aof-load-truncated", "yes"),
    ignored("aof-use-rdb-preamble", "yes"),
    ignored("aof-timestamp-enabled", "no"),
    ignored("aof-disable-auto-gc", "no"),
    ignored("aof-rewrite-incremental-fsync", "yes"),
    ignored("rdb-save-incremental-fsync", "yes"),
    // ---- shutdown
    ignored("shutdown-timeout", "10"),
    ignored("shutdown-on-sigint", "default"),
    ignored("shutdown-on-sigterm", "default"),
    // ---- scripting (not implemented: the commands answer unknown command)
    ignored_alias("busy-reply-threshold", &["lua-time-limit"], "5000"),
    ignored("lua-replicate-commands", "yes"),
    ignored("lua-enable-deprecated-api", "no"),
    // ---- cluster: only meaningful with cluster-enabled, which is refused.
    refused(
        "cluster-enabled",
        "no",
        NO,
        "Redis Cluster is not implemented: every chorus node holds the whole dataset and \
         replicates with replicaof, so cluster clients would find no slots",
    ),
    ignored("cluster-config-file", "nodes.conf"),
    ignored("cluster-node-timeout", "15000"),
    ignored("cluster-port", "0"),
    ignored_alias(
        "cluster-replica-validity-factor",
        &["cluster-slave-validity-factor"],
        "10",
    ),
    ignored("cluster-migration-barrier", "1"),
    ignored("cluster-allow-replica-migration", "yes"),
    ignored("cluster-require-full-coverage", "yes"),
    ignored_alias(
        "cluster-replica-no-failover",
        &["cluster-slave-no-failover"],
        "no",
    ),
    ignored("cluster-allow-reads-when-down", "no"),
    ignored("cluster-allow-pubsubshard-when-down", "yes"),
    ignored("cluster-link-sendbuf-limit", "0"),
    ignored("cluster-announce-hostname", ""),
    // Redis 7.2.
    ignored("cluster-announce-human-nodename", ""),
    ignored("cluster-preferred-endpoint-type", "ip"),
    ignored("cluster-announce-ip", ""),
    ignored("cluster-announce-port", "0"),
    ignored("cluster-announce-tls-port", "0"),
    ignored("cluster-announce-bus-port", "0"),
    // ---- monitoring: SLOWLOG and LATENCY are not implemented yet.
    ignored("slowlog-log-slower-than", "10000"),
    ignored("slowlog-max-len", "128"),
    ignored("latency-monitor-threshold", "0"),
    ignored("latency-tracking", "yes"),
    ignored("latency-tracking-info-percentiles", "50 99 99.9"),
    // ---- event notification
    applied("notify-keyspace-events", ""),
    // ---- encodings: Chorus's values are CRDTs with their own layout.
    ignored_alias(
        "hash-max-listpack-entries",
        &["hash-max-ziplist-entries"],
        "512",
    ),
    ignored_alias("hash-max-listpack-value", &["hash-max-ziplist-value"], "64"),
    ignored_alias("list-max-listpack-size", &["list-max-ziplist-size"], "-2"),
    // Dead in Redis 7 too (accepted and ignored there).
    ignored("list-max-ziplist-entries", ""),
    ignored("list-max-ziplist-value", ""),
    ignored("list-compress-depth", "0"),
    ignored("set-max-intset-entries", "512"),
    // Redis 7.2 (small sets as listpacks).
    ignored("set-max-listpack-entries", "128"),
    ignored("set-max-listpack-value", "64"),
    ignored_alias(
        "zset-max-listpack-entries",
        &["zset-max-ziplist-entries"],
        "128",
    ),
    ignored_alias("zset-max-listpack-value", &["zset-max-ziplist-value"], "64"),
    ignored("hll-sparse-max-bytes", "3000"),
    ignored("stream-node-max-bytes", "4096"),
    ignored("stream-node-max-entries", "100"),
    // ---- advanced
    ignored("activerehashing", "yes"),
    applied(
        "client-output-buffer-limit",
        "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
    ),
    applied("client-query-buffer-limit", "1073741824"),
    applied("proto-max-bulk-len", "536870912"),
    ignored("hz", "10"),
    ignored("dynamic-hz", "yes"),
    ignored("lfu-log-factor", "10"),
    ignored("lfu-decay-time", "1"),
    ignored("activedefrag", "no"),
    ignored("active-defrag-ignore-bytes", "104857600"),
    ignored("active-defrag-threshold-lower", "10"),
    ignored("active-defrag-threshold-upper", "100"),
    ignored("active-defrag-cycle-min", "1"),
    ignored("active-defrag-cycle-max", "25"),
    ignored("active-defrag-max-scan-fields", "1000"),
    ignored("jemalloc-bg-thread", "yes"),
    ignored("enable-protected-configs", "no"),
    ignored("enable-debug-command", "no"),
    ignored("enable-module-command", "no"),
    refused(
        "loadmodule",
        "",
        Off::Never,
        "modules are not supported: the commands the module adds would be missing",
    ),
    refused(
        "sentinel",
        "",
        Off::Never,
        "there is no Sentinel mode: every chorus node is a master, so there is no failover to \
         manage",
    ),
    // ---- Redis 7's hidden (testing) directives
    ignored("key-load-delay", "0"),
    ignored("rdb-key-save-delay", "0"),
    ignored("loading-process-events-interval-bytes", "2097152"),
    ignored("use-exit-on-panic", "no"),
    ignored("watchdog-period", "0"),
    ignored("cluster-ping-interval", "0"),
    // ---- KeyDB 6
    // Default: the CPUs this process may use.
    applied("server-threads", ""),
    applied("server-thread-affinity", "no"),
    applied("active-replica", "no"),
    applied("multi-master", "no"),
    ignored("multi-master-no-forward", "no"),
    ignored("replica-weighting-factor", "2"),
    ignored("replica-quorum", "-1"),
    ignored("min-clients-per-thread", "20"),
    ignored("active-client-balancing", "yes"),
    ignored("maxclients-reserved", "0"),
    ignored("availability-zone", ""),
    ignored("enable-motd", "yes"),
    ignored("version-override", ""),
    ignored("testmode", "no"),
    ignored("rdbfuzz-mode", ""),
    ignored("time-thread-priority", "no"),
    ignored("prefetch-enabled", "yes"),
    ignored("allow-rdb-resize-op", "yes"),
    ignored("enable-async-commands", "no"),
    ignored("multithread-load-enabled", "no"),
    ignored("loading-process-events-interval-keys", "8192"),
    ignored("allow-write-during-load", "no"),
    ignored("soft-shutdown", "no"),
    ignored("use-fork", "yes"),
    ignored("enable-async-rehash", "yes"),
    ignored("enable-keydb-fastsync", "no"),
    ignored("semi-ordered-set-bucket-size", "0"),
    ignored("max-rand-count", "4611686018427387903"),
    ignored("max-snapshot-slip", "400"),
    ignored("tracking-table-max-fill", "10"),
    ignored("repl-backlog-disk-reserve", "0"),
    ignored("force-backlog-disk-reserve", "no"),
    ignored("tls-rotation", "no"),
    refused(
        "tls-allowlist",
        "",
        Off::Empty,
        "restricting TLS clients by certificate name is not implemented: every client \
         certificate the CA signed would be let in",
    ),
    applied("storage-provider", ""),
    // KeyDB's tuning of its RocksDB flash tier: Chorus's tier is its own
    // store (see crate::flash), which they do not describe.
    ignored("storage-provider-options", ""),
    ignored("storage-cache-mode", "writethrough"),
    ignored("storage-flush-period", "500"),
    ignored("maxstorage", "0"),
    ignored("flash-disable-key-cache", "no"),
    ignored("delete-on-evict", "no"),
    refused(
        "scratch-file-path",
        "",
        Off::Never,
        "KeyDB's scratch-file storage (memkind) is not implemented: values would stay in RAM",
    ),
    refused(
        "db-s3-object",
        "",
        Off::Empty,
        "loading from and saving to S3 is not implemented: the data would be neither loaded \
         from nor saved to the bucket",
    ),
    refused(
        "force-eviction-percent",
        "0",
        Off::Zero,
        "not yet supported by this version of chorus (eviction lands in a later release): \
         nothing would be evicted when system memory runs short",
    ),
    refused(
        "overload-protect-percent",
        "0",
        Off::Zero,
        "load shedding is not implemented: the node would not refuse clients under CPU \
         overload",
    ),
    refused(
        "enable-pro",
        "",
        Off::Never,
        "KeyDB Pro features do not exist in chorus",
    ),
    // ---- Chorus's own
    // Shown as the port in use: port + 10000 unless set.
    applied("replication-port", "16379"),
    applied("cluster-name", "chorus"),
    applied("node-name", ""),
    applied("max-clock-drift", "500"),
    applied("repl-repair-interval", "30"),
    applied("removed-peer-grace", "3600"),
    applied("conflict-log-max-len", "10000"),
    applied("repl-log-max-size", "4294967296"),
    applied("repl-backlog-min-seconds", "0"),
    applied("repl-window-size", "33554432"),
    applied("repl-congestion-control", "cubic"),
    applied("repl-compression", "no"),
];

/// The known name closest to a misspelt `name`, if any is close enough to
/// be what the user meant.
pub fn suggest(name: &str) -> Option<&'static str> {
    let names = DIRECTIVES
        .iter()
        .flat_map(|d| std::iter::once(&d.name).chain(d.aliases));
    let (best, distance) = names
        .map(|n| (*n, edit_distance(name, n)))
        .min_by_key(|(_, d)| *d)?;
    // Two edits catch a dropped, doubled or swapped letter without
    // suggesting unrelated short names.
    (distance <= 2 && distance < name.len()).then_some(best)
}

/// Levenshtein distance over bytes (directive names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}
