//! `chorus`: the server binary.
//!
//! `chorus server [CONFIG] [--directive value ...]` runs a node, like
//! `redis-server`; `chorus gen-certs` and `chorus sim` are the other tools.
//! Exit codes: 0 done, 1 failed, 2 bad usage.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use chorus::Config;
use clap::{Parser, Subcommand};
use tracing::{info, warn};

/// Chorus: an active-active, Redis-compatible datastore. Every node is a
/// master; values are CRDTs, so nodes converge without failover.
#[derive(Debug, Parser)]
#[command(name = "chorus", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum AuditDiff {
    /// Compare two nodes by digests (CRDT.DIGEST), narrow down to the keys
    /// whose states differ, and print both values side by side. Exit 1 when
    /// a key's value differs, 0 when none does (usable from monitoring), 2
    /// when a node cannot be asked.
    Diff {
        /// One node, host:port.
        a: String,
        /// The other.
        b: String,
        /// Only keys this glob pattern matches.
        #[arg(long, value_name = "PATTERN")]
        key: Option<String>,
        /// The database.
        #[arg(long, default_value_t = 0)]
        db: u32,
        /// The nodes' requirepass.
        #[arg(long)]
        password: Option<String>,
        /// One JSON object per differing key instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// TLS to the nodes' tls-port.
#[derive(Debug, Clone, clap::Args)]
struct TlsArgs {
    /// Connect with TLS (to the nodes' tls-port).
    #[arg(long)]
    tls: bool,
    /// The CA that signed the nodes' certificates (PEM); without it, the
    /// system's trusted roots.
    #[arg(long = "tls-cacert", value_name = "FILE", requires = "tls")]
    cacert: Option<PathBuf>,
    /// A client certificate (PEM), for nodes with tls-auth-clients yes.
    #[arg(long = "tls-cert", value_name = "FILE", requires_all = ["tls", "tls_key"])]
    cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long = "tls-key", id = "tls_key", value_name = "FILE", requires_all = ["tls", "cert"])]
    key: Option<PathBuf>,
}

impl TlsArgs {
    fn access(self, password: Option<String>) -> chorus::audit::Access {
        chorus::audit::Access {
            password,
            tls: self.tls.then_some(chorus::audit::TlsFiles {
                cacert: self.cacert,
                cert: self.cert,
                key: self.key,
            }),
        }
    }
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node, like redis-server: a config file in redis.conf syntax,
    /// then `--directive value ...` overrides (the last word wins).
    /// With no argument: one standalone node on 127.0.0.1:6379, in memory.
    #[command(
        after_help = "Examples:\n  chorus server\n  chorus server conf/chorus.conf --port 6380\n  chorus server --port 7000 --requirepass secret"
    )]
    Server {
        /// A config file (optional), then `--directive value ...` overrides
        #[arg(
            value_name = "CONFIG] [--directive value",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        args: Vec<String>,
    },
    /// List the conflicts every node resolved (which concurrent write lost,
    /// and where), merged: one row per conflict, the nodes that saw it
    /// listed, oldest first. Exit 2 when a node cannot be asked.
    #[command(
        after_help = "Examples:\n  chorus audit --nodes 10.0.1.5:6379,10.0.2.5:6379\n  chorus audit --nodes 127.0.0.1:6379 --key 'user:*' --since 10m --json\n  chorus audit diff 10.0.1.5:6379 10.0.2.5:6379",
        args_conflicts_with_subcommands = true,
        subcommand_negates_reqs = true
    )]
    Audit {
        #[command(subcommand)]
        diff: Option<AuditDiff>,
        /// The nodes to ask, host:port, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_name = "HOST:PORT,..."
        )]
        nodes: Vec<String>,
        /// The nodes' requirepass.
        #[arg(long)]
        password: Option<String>,
        /// Only keys this glob pattern matches.
        #[arg(long, value_name = "PATTERN")]
        key: Option<String>,
        /// Only conflicts logged since: 10m, 2h, 1d, unix milliseconds or
        /// YYYY-MM-DDTHH:MM:SSZ.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only one kind: concurrent-write, write-lost-to-delete,
        /// delete-lost-to-write, type-clash, increment-hidden,
        /// write-lost-to-flush, write-lost-to-expiry.
        #[arg(long)]
        kind: Option<String>,
        /// One JSON object per line instead of the table.
        #[arg(long)]
        json: bool,
        /// After the listing, keep asking every second and print each new
        /// conflict as it is logged (until interrupted).
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Write a CA and node certificates for mutual TLS between peers.
    GenCerts {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// How many node certificates.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
        nodes: u16,
        /// The cluster name the certificates are issued for.
        #[arg(long, default_value = "chorus")]
        cluster: String,
        /// How many client certificates, for clients of tls-port
        /// (client-N.pem, client-N.key: client authentication only).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1000))]
        clients: u16,
        /// Names and addresses clients reach the nodes by on tls-port
        /// (each node certificate is valid for all of them), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
        hosts: Vec<String>,
    },
    /// Run deterministic simulations of N nodes under faults (the chorus-sim
    /// binary, built with `cargo build --release -p chorus-sim`; `chorus sim
    /// --help` lists its options).
    #[command(disable_help_flag = true)]
    Sim {
        /// Passed to chorus-sim as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The system allocator, counted: INFO's `used_memory` and `maxmemory`.
#[global_allocator]
static ALLOCATOR: chorus::alloc::Counting = chorus::alloc::Counting::new();

fn main() {
    chorus::alloc::installed();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server { args } => server(&args),
        Command::GenCerts {
            dir,
            nodes,
            cluster,
            clients,
            hosts,
        } => gen_certs(&dir, nodes.into(), clients.into(), &cluster, &hosts),
        Command::Sim { args } => sim(&args),
        Command::Audit {
            diff:
                Some(AuditDiff::Diff {
                    a,
                    b,
                    key,
                    db,
                    password,
                    json,
                    tls,
                }),
            ..
        } => audit_diff(&a, &b, key, db, tls.access(password), json),
        Command::Audit {
            diff: None,
            nodes,
            password,
            key,
            since,
            kind,
            json,
            follow,
            tls,
        } => audit(
            chorus::audit::Query {
                nodes,
                access: tls.access(password),
                key,
                since_ms: None,
                kind,
                json,
            },
            since,
            follow,
        ),
    };
    if let Err(e) = result {
        eprintln!("chorus: {e:#}");
        std::process::exit(1);
    }
}

/// Runs the simulator, a separate binary so that the server never links it
/// (it brings turmoil and tokio's test clock).
fn sim(args: &[String]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot locate the chorus binary")?;
    let sim = exe.with_file_name(format!("chorus-sim{}", std::env::consts::EXE_SUFFIX));
    if !sim.exists() {
        bail!(
            "chorus sim runs the chorus-sim binary, not found next to {}: build it with \
             `cargo build --release -p chorus-sim` (or run `cargo run --release -p chorus-sim -- ...`)",
            exe.display()
        );
    }
    let status = std::process::Command::new(&sim)
        .args(args)
        .status()
        .with_context(|| format!("could not run {}", sim.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

fn audit(
    mut query: chorus::audit::Query,
    since: Option<String>,
    follow: bool,
) -> anyhow::Result<()> {
    use chorus::audit::{self, AuditError};
    use std::io::Write as _;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let fail = |e: AuditError| -> ! {
        eprintln!("chorus audit: {e}");
        std::process::exit(2);
    };
    query.since_ms = match since.map(|s| audit::parse_since(&s, now_ms)).transpose() {
        Ok(s) => s,
        Err(e) => fail(AuditError::Usage(e)),
    };
    let mut cursors = audit::Cursors::new();
    let rows = audit::audit_from(&query, &mut cursors).unwrap_or_else(|e| fail(e));
    let out = match (query.json, follow) {
        (true, _) => audit::to_json_lines(&rows)?,
        (false, false) => audit::to_table(&rows),
        (false, true) => audit::to_lines(&rows),
    };
    print!("{out}");
    if !follow {
        return Ok(());
    }
    // Each conflict once, though a node may log it long after another did.
    let mut printed: std::collections::HashSet<audit::RowId> =
        rows.iter().map(|r| r.id()).collect();
    let mut failing = std::collections::BTreeSet::new();
    loop {
        std::io::stdout().flush()?;
        std::thread::sleep(std::time::Duration::from_secs(1));
        // A node down for a while is no reason to stop watching the others:
        // each failing node is reported once, until it answers again.
        let (rows, errors) =
            audit::audit_available(&query, &mut cursors).unwrap_or_else(|e| fail(e));
        let now_failing: std::collections::BTreeSet<String> =
            errors.iter().map(|e| e.to_string()).collect();
        for e in now_failing.difference(&failing) {
            eprintln!("chorus audit: {e} (asking again every second)");
        }
        failing = now_failing;
        // Bounded memory for a follow of days: past a million, forget the
        // oldest lookups (a conflict logged again that late may print twice).
        if printed.len() > 1_000_000 {
            printed.clear();
        }
        let new: Vec<audit::Row> = rows
            .into_iter()
            .filter(|r| printed.insert(r.id()))
            .collect();
        let out = if query.json {
            audit::to_json_lines(&new)?
        } else {
            audit::to_lines(&new)
        };
        print!("{out}");
    }
}

fn audit_diff(
    a: &str,
    b: &str,
    key: Option<String>,
    db: u32,
    access: chorus::audit::Access,
    json: bool,
) -> anyhow::Result<()> {
    use chorus::audit;
    let diff = audit::diff(a, b, db, key.as_deref(), &access).unwrap_or_else(|e| {
        eprintln!("chorus audit diff: {e}");
        std::process::exit(2);
    });
    let out = if json {
        audit::diff_json_lines(&diff)?
    } else {
        audit::diff_table(a, b, &diff)
    };
    print!("{out}");
    if diff.keys.iter().any(|k| !k.same_value) {
        std::process::exit(1);
    }
    Ok(())
}

fn gen_certs(
    dir: &Path,
    nodes: usize,
    clients: usize,
    cluster: &str,
    hosts: &[String],
) -> anyhow::Result<()> {
    let written = chorus_transport::tls::write_cluster(dir, cluster, nodes, clients, hosts)?;
    for path in &written {
        println!("{}", path.display());
    }
    println!(
        "On node N set: tls-cert-file node-N.pem, tls-key-file node-N.key, tls-ca-cert-file ca.pem \
         (keep ca.key offline)."
    );
    Ok(())
}

fn server(args: &[String]) -> anyhow::Result<()> {
    let (file, overrides) = match args.first() {
        Some(first) if !first.starts_with("--") => (Some(PathBuf::from(first)), &args[1..]),
        _ => (None, args),
    };
    let config = Config::load(file.as_deref(), overrides)?;
    init_logging(&config)?;
    let ignored = config.ignored_directives();
    if !ignored.is_empty() {
        warn!(
            "ignored directives (no meaning in Chorus): {}",
            ignored.join(", ")
        );
    }
    for warning in config.warnings() {
        warn!("{warning}");
    }
    info!(
        "chorus {} starting: {} server thread(s), port {}",
        env!("CARGO_PKG_VERSION"),
        config.server_threads,
        config.port
    );
    let runtime = build_runtime(&config)?;
    let env = chorus::NodeEnv::from_process(&config)?;
    let node = chorus::Node::open(config, env)?;
    info!("node id {}", node.node_id());
    runtime.block_on(async {
        let stop = shutdown_signal();
        let server = chorus::server::Server::new(node.clone());
        let serving = tokio::spawn(chorus::connection::serve(server));
        tokio::select! {
            r = serving => r.context("server task failed")??,
            _ = stop => {
                info!("Received shutdown signal, scheduling shutdown...");
            }
        }
        anyhow::Ok(())
    })?;
    node.close();
    info!("Chorus is now ready to exit, bye bye...");
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now, before the node reports
/// it is ready (a signal right after "Ready" must stop it cleanly, not kill
/// it), and returns what completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    warn!("could not install signal handlers; stop with SHUTDOWN");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};

    let from_env = EnvFilter::try_from_env("CHORUS_LOG").ok();
    let env_overrides = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(config.loglevel.filter()));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match &config.logfile {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open logfile {}", path.display()))?;
            registry
                .with(
                    fmt::layer()
                        .with_target(false)
                        .with_ansi(false)
                        .with_writer(Arc::new(file)),
                )
                .init();
        }
        None => {
            use std::io::IsTerminal;
            registry
                .with(
                    fmt::layer()
                        .with_target(false)
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(std::io::stderr),
                )
                .init();
        }
    }
    // CHORUS_LOG is the operator's explicit choice; CONFIG SET does not undo it.
    if !env_overrides {
        let _ = chorus::LOG_LEVEL_HOOK.set(Box::new(move |level| {
            if let Err(e) = handle.reload(EnvFilter::new(level.filter())) {
                warn!("could not change the log level: {e}");
            }
        }));
    }
    Ok(())
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the set we own; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&i| libc::CPU_ISSET(i, &set))
            .collect()
    }
}

fn pin_current_thread(cpu: usize) {
    // SAFETY: the set is a local we own; the call only affects this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!("could not pin a server thread to CPU {cpu}");
        }
    }
}

fn build_runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(config.server_threads)
        .thread_name("chorus-server")
        .enable_all();
    if config.server_thread_affinity {
        let cpus = allowed_cpus();
        if !cpus.is_empty() {
            let next = Arc::new(AtomicUsize::new(0));
            builder.on_thread_start(move || {
                let i = next.fetch_add(1, Ordering::Relaxed);
                pin_current_thread(cpus[i % cpus.len()]);
            });
        }
    }
    builder.build().context("could not start the runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand's arguments are consistent (clap checks names,
    /// groups and requirements only when a command is built).
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
