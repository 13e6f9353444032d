//! INFO: real figures, in Redis's section and field names.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::keyspace::Locked;
use crate::server::Server;

const ALL: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "errorstats",
    "keyspace",
];

/// Resident set size of this process in bytes, from /proc.
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_stime), secs(usage.ru_utime))
}

/// Renders the requested sections (`default`, `all`, `everything` or names).
/// `all` holds every shard: the keyspace figures are read under it.
pub fn render(server: &Server, all: &mut Locked<'_>, requested: &[String]) -> String {
    let wanted: Vec<&str> = if requested.is_empty()
        || requested
            .iter()
            .any(|r| r == "default" || r == "all" || r == "everything")
    {
        ALL.to_vec()
    } else {
        ALL.iter()
            .copied()
            .filter(|s| requested.iter().any(|r| r == s))
            .collect()
    };
    let mut out = String::new();
    for section in wanted {
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        let mut title = section.to_string();
        title[..1].make_ascii_uppercase();
        if section == "cpu" {
            // Redis's one title that is not just capitalised.
            title = "CPU".to_string();
        }
        let _ = write!(out, "# {title}\r\n");
        section_body(server, all, section, &mut out);
    }
    out
}

fn section_body(server: &Server, all: &mut Locked<'_>, section: &str, out: &mut String) {
    let node = &*server.node;
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(out, "{k}:{v}\r\n");
    };
    let c = &node.config;
    let st = &server.stats;
    match section {
        "server" => {
            let uptime = node.started.elapsed().as_secs();
            line("redis_version", &crate::cmd::REDIS_COMPAT_VERSION);
            line("chorus_version", &env!("CARGO_PKG_VERSION"));
            line("redis_mode", &"standalone");
            line("os", &std::env::consts::OS);
            line("arch_bits", &(usize::BITS));
            line("multiplexing_api", &"epoll");
            line("process_id", &std::process::id());
            line("run_id", &node.run_id);
            line("node_id", &node.ks.node());
            line("node_name", &c.node_name);
            line("tcp_port", &c.port);
            line("server_threads", &c.server_threads);
            line("uptime_in_seconds", &uptime);
            line("uptime_in_days", &(uptime / 86_400));
            line(
                "config_file",
                &c.config_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            );
        }
        "clients" => {
            line("connected_clients", &server.clients.len());
            line(
                "maxclients",
                &server.tunables.maxclients.load(Ordering::Relaxed),
            );
            line("blocked_clients", &server.node.ks.waiters.blocked());
            line("tracking_clients", &server.node.ks.invalidations.counts().0);
        }
        "memory" => {
            let rss = rss_bytes();
            // Where the counting allocator is not installed (an embedder),
            // the RSS is the best figure there is.
            let used = crate::alloc::used_bytes().map_or(rss, |b| b as u64);
            let peak = (crate::alloc::peak_bytes() as u64).max(used);
            let limits = &node.ks.limits;
            line("used_memory", &used);
            line("used_memory_human", &human(used));
            line("used_memory_rss", &rss);
            line("used_memory_rss_human", &human(rss));
            // The store engine's cache and buffers: outside used_memory
            // and maxmemory (see crate::alloc::Uncounted).
            line("used_memory_store_engine", &crate::alloc::engine_bytes());
            line("used_memory_peak", &peak);
            line("used_memory_peak_human", &human(peak));
            line(
                "used_memory_peak_perc",
                &format!("{:.2}%", used as f64 * 100.0 / peak.max(1) as f64),
            );
            // What maxmemory leaves out: the writes kept for peers and
            // the delta log's buffers (crate::node::Node::buffers_not_counted).
            line("mem_not_counted_for_evict", &node.buffers_not_counted());
            line("maxmemory", &limits.maxmemory());
            line("maxmemory_human", &human(limits.maxmemory()));
            line("maxmemory_policy", &limits.policy().name());
            line(
                "mem_fragmentation_ratio",
                &format!("{:.2}", rss as f64 / used.max(1) as f64),
            );
            line("mem_fragmentation_bytes", &(rss as i64 - used as i64));
            line("mem_allocator", &"libc");
        }
        "persistence" => {
            line("loading", &0);
            line("rdb_changes_since_last_save", &0);
            line("rdb_bgsave_in_progress", &0);
            let last_cut_ms = node
                .persistence
                .as_ref()
                .map_or(0, |p| p.last_cut_ms.load(Ordering::Relaxed));
            let last_save_ms = node.last_save_unix_ms();
            line("rdb_last_save_time", &(last_save_ms / 1000));
            let log = node.persistence.as_ref().and_then(|p| p.log.as_ref());
            line("aof_enabled", &u8::from(log.is_some()));
            if let Some(log) = log {
                let failing = log.failing.load(Ordering::Relaxed);
                line("aof_last_write_status", &if failing { "err" } else { "ok" });
                line(
                    "aof_current_size",
                    &log.unfolded_bytes.load(Ordering::Relaxed),
                );
                line(
                    "log_bytes_written",
                    &log.bytes_written.load(Ordering::Relaxed),
                );
                line("log_fsyncs", &log.fsyncs.load(Ordering::Relaxed));
                line("log_appended_offset", &log.appended());
                line("log_durable_offset", &log.durable());
            }
            match &node.persistence {
                None => line("storage_provider", &"none"),
                Some(p) => {
                    line("storage_provider", &p.store.name());
                    line("store_cuts", &p.cuts.load(Ordering::Relaxed));
                    line(
                        "store_keys_written",
                        &p.keys_written.load(Ordering::Relaxed),
                    );
                    line("store_write_failures", &p.failures.load(Ordering::Relaxed));
                    line("store_last_cut_ms", &last_cut_ms);
                    line(
                        "store_last_cut_usec",
                        &p.last_cut_us.load(Ordering::Relaxed),
                    );
                    if let Some(bytes) = p.store.disk_bytes() {
                        line("store_disk_bytes", &bytes);
                    }
                }
            }
            // The flash tier (`storage-provider flash`): keys whose state
            // is on disk only, and their moves.
            if let Some(tier) = &node.ks.cold {
                line("flash_enabled", &1);
                line("flash_cold_keys", &tier.cold_keys.load(Ordering::Relaxed));
                line("flash_moved_out", &tier.moved_out.load(Ordering::Relaxed));
                line("flash_warmed", &tier.warmed.load(Ordering::Relaxed));
                line("flash_peeked", &tier.peeked.load(Ordering::Relaxed));
                line(
                    "flash_writes_held",
                    &tier.writes_held.load(Ordering::Relaxed),
                );
            }
        }
        "stats" => {
            let (hits, misses) = node.ks.hits_misses(all);
            line(
                "total_connections_received",
                &st.total_connections.load(Ordering::Relaxed),
            );
            line(
                "total_commands_processed",
                &st.total_commands.load(Ordering::Relaxed),
            );
            line(
                "total_net_input_bytes",
                &st.net_input_bytes.load(Ordering::Relaxed),
            );
            line(
                "total_net_output_bytes",
                &st.net_output_bytes.load(Ordering::Relaxed),
            );
            line(
                "rejected_connections",
                &st.rejected_connections.load(Ordering::Relaxed),
            );
            line(
                "total_error_replies",
                &st.errors.total.load(Ordering::Relaxed),
            );
            line(
                "tls_handshakes_refused",
                &st.tls_refused.load(Ordering::Relaxed),
            );
            line(
                "client_query_buffer_limit_disconnections",
                &st.query_buffer_limit_disconnections.load(Ordering::Relaxed),
            );
            line(
                "client_output_buffer_limit_disconnections",
                &st.output_buffer_limit_disconnections
                    .load(Ordering::Relaxed),
            );
            line(
                "expired_keys",
                &node.ks.expired_keys.load(Ordering::Relaxed),
            );
            line(
                "evicted_keys",
                &node.ks.evicted_keys.load(Ordering::Relaxed),
            );
            line("keyspace_hits", &hits);
            line("keyspace_misses", &misses);
            let (channels, shard_channels, patterns) = node.ks.pubsub.counts();
            line("pubsub_channels", &channels);
            line("pubsub_patterns", &patterns);
            line("pubsubshard_channels", &shard_channels);
            let (_, tracked_keys, tracked_items, prefixes) = node.ks.invalidations.counts();
            line("tracking_total_keys", &tracked_keys);
            line("tracking_total_items", &tracked_items);
            line("tracking_total_prefixes", &prefixes);
            let pubsub = &node.ks.pubsub;
            line(
                "pubsub_delivered",
                &pubsub.delivered.load(Ordering::Relaxed),
            );
            line(
                "pubsub_from_peers",
                &pubsub.from_peers.load(Ordering::Relaxed),
            );
            line("pubsub_late_dropped", &pubsub.late.load(Ordering::Relaxed));
            line(
                "conflicts_total",
                &node.ks.conflicts.total.load(Ordering::Relaxed),
            );
            for kind in chorus_crdt::ConflictKind::ALL {
                let name = format!("conflicts_{}", kind.as_str().replace('-', "_"));
                line(&name, &node.ks.conflicts.count_of(kind));
            }
            line("conflict_log_len", &node.ks.conflicts.len());
        }
        "replication" => match &node.repl {
            None => {
                line("role", &"master");
                line("connected_slaves", &0);
                line("active_replica_peers", &0);
                line("master_replid", &node.run_id);
                line("master_repl_offset", &0);
            }
            Some(repl) => {
                let crate::replication::BacklogState {
                    head_seq: head,
                    bytes: backlog_bytes,
                    span_ms,
                    covers_ms,
                } = repl.backlog_state();
                let secs = |ms: Option<u64>| ms.map_or(-1.0, |ms| ms as f64 / 1000.0);
                let now = node.ks.clock.physical_unix_ms();
                let peers = repl.peers.lock().clone();
                line("role", &"active-replica");
                line("node_id", &node.ks.node());
                line("cluster_name", &c.cluster_name);
                line(
                    "replication_listen",
                    &repl
                        .listen
                        .lock()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                );
                line("master_repl_offset", &head);
                line("repl_backlog_size", &c.repl_backlog_size);
                line("repl_backlog_histlen", &backlog_bytes);
                line("repl_backlog_seconds", &format!("{:.1}", secs(span_ms)));
                line(
                    "repl_backlog_covers_seconds",
                    &format!("{:.1}", secs(covers_ms)),
                );
                if let Some(log) = repl.log() {
                    line("repl_log_max_size", &c.repl_log_max_size);
                    line("repl_log_bytes", &log.kept_bytes.load(Ordering::Relaxed));
                    let (first, last) = log.numbered_range().unwrap_or((0, 0));
                    line("repl_log_first_seq", &first);
                    line("repl_log_last_seq", &last);
                }
                line(
                    "connected_peers",
                    &peers
                        .iter()
                        .filter(|p| p.connected.load(Ordering::Relaxed))
                        .count(),
                );
                for (i, p) in peers.iter().enumerate() {
                    let acked = p.acked_seq.load(Ordering::Relaxed);
                    let acked_at = p.acked_at_ms.load(Ordering::Relaxed);
                    let connected = p.connected.load(Ordering::Relaxed);
                    line(
                        &format!("peer{i}"),
                        &format!(
                            "addr={},state={},node={},name={},sent_seq={},acked_seq={},lag_ops={},lag_ms={},ack_age_ms={},state_transfers={},transfer_keys={},transfer_bytes={},from_log={},own_puts={},compression={},compression_ratio={:.2},relayed={},repairs={},pubsub_sent={},pubsub_dropped={},last_error={}",
                            p.addr,
                            if connected { "connected" } else { "connecting" },
                            NodeIdText(p.peer_node.load(Ordering::Relaxed)),
                            chorus_crdt::NodeId::new(p.peer_node.load(Ordering::Relaxed))
                                .and_then(|n| repl.name_of(n))
                                .unwrap_or_default(),
                            p.sent_seq.load(Ordering::Relaxed),
                            acked,
                            head.saturating_sub(acked),
                            repl.lag_ms(p),
                            if acked_at == 0 { -1 } else { now.saturating_sub(acked_at) as i64 },
                            p.state_transfers.load(Ordering::Relaxed),
                            p.transfer_keys.load(Ordering::Relaxed),
                            p.transfer_bytes.load(Ordering::Relaxed),
                            p.from_log.load(Ordering::Relaxed),
                            if p.own_puts.load(Ordering::Relaxed) { "yes" } else { "no" },
                            if p.compressing.load(Ordering::Relaxed) { "lz4" } else { "none" },
                            {
                                let (raw, sent) = (
                                    p.compress_in.load(Ordering::Relaxed),
                                    p.compress_out.load(Ordering::Relaxed),
                                );
                                if sent == 0 { 1.0 } else { raw as f64 / sent as f64 }
                            },
                            p.relayed.load(Ordering::Relaxed),
                            p.repairs.load(Ordering::Relaxed),
                            p.pubsub_sent.load(Ordering::Relaxed),
                            p.pubsub_dropped.load(Ordering::Relaxed),
                            p.last_error.lock().replace(',', ";"),
                        ),
                    );
                }
                if let Some(auth) = repl.auth.lock().as_ref() {
                    line("peer_auth_accepted", &auth.accepted.load(Ordering::Relaxed));
                    line(
                        "peer_auth_refused_secret",
                        &auth.refused_wrong_secret.load(Ordering::Relaxed),
                    );
                    line(
                        "peer_auth_refused_cluster",
                        &auth.refused_cluster.load(Ordering::Relaxed),
                    );
                    line(
                        "peer_auth_refused_certificate",
                        &auth.refused_certificate.load(Ordering::Relaxed),
                    );
                    line(
                        "peer_auth_refused_other",
                        &auth.refused_other.load(Ordering::Relaxed),
                    );
                    line(
                        "peer_auth_refused_limit",
                        &auth.refused_limit.load(Ordering::Relaxed),
                    );
                }
                line(
                    "clock_drift_events",
                    &repl.drift_events.load(Ordering::Relaxed),
                );
                line("repairs_asked", &repl.repairs_asked.load(Ordering::Relaxed));
                line(
                    "own_puts_received",
                    &repl.own_puts_received.load(Ordering::Relaxed),
                );
                line(
                    "repair_offers_compared",
                    &repl.offers_compared.load(Ordering::Relaxed),
                );
                line(
                    "repair_offers_skipped",
                    &repl.offers_skipped.load(Ordering::Relaxed),
                );
                line(
                    "repair_digests_taken",
                    &repl.digests_taken.load(Ordering::Relaxed),
                );
                line(
                    "peer_links_refused_removed",
                    &repl.refused_closed.load(Ordering::Relaxed),
                );
                line("relay_bytes", &repl.relay_bytes());
                let crate::replication::core::GcState { stable, floor } = repl.gc_state();
                let ms = |s: chorus_crdt::Stamp| if s.is_zero() { 0 } else { s.unix_ms() };
                line("gc_stable_ms", &ms(stable));
                line("gc_floor_ms", &ms(floor));
                line("tombstones", &node.ks.tombstones(all));
                let retired: Vec<String> = repl.retired().iter().map(|n| n.to_string()).collect();
                line("retired_nodes", &retired.join(","));
            }
        },
        "errorstats" => {
            for (code, n) in st.errors.by_code() {
                line(&format!("errorstat_{code}"), &format!("count={n}"));
            }
        }
        "cpu" => {
            let (sys, user) = cpu_seconds();
            line("used_cpu_sys", &format!("{sys:.6}"));
            line("used_cpu_user", &format!("{user:.6}"));
        }
        "keyspace" => {
            for (i, (keys, expires)) in node.ks.db_sizes(all).into_iter().enumerate() {
                if keys > 0 {
                    line(
                        &format!("db{i}"),
                        &format!("keys={keys},expires={expires},avg_ttl=0"),
                    );
                }
            }
        }
        _ => {}
    }
}

/// A node id as INFO prints it (hex), or empty before the handshake.
struct NodeIdText(u64);

impl std::fmt::Display for NodeIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            Ok(())
        } else {
            write!(f, "{:016x}", self.0)
        }
    }
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}G", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.2}M", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2}K", b / 1024.0)
    }
}
