//! Listening, connections and dispatch.
//!
//! One tokio task per connection (never one per command). A connection reads
//! into its buffer, runs every complete command in it, appends every reply
//! to one output buffer and writes it with a single write: pipelining costs
//! one syscall pair per batch. No lock is held across an await.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use crate::cmd::{self, flag, Exec, Spec};
use crate::config::Config;
use crate::keyspace::Keyspace;
use crate::resp::{self, Limits, Parsed, Reply, Source};

/// Settings CONFIG SET may change while the node runs.
pub struct Tunables {
    pub requirepass: RwLock<Option<Vec<u8>>>,
    pub maxclients: AtomicUsize,
    pub timeout_secs: AtomicU64,
    pub protected_mode: AtomicBool,
    pub max_bulk: AtomicUsize,
    pub query_buffer_limit: AtomicUsize,
    pub loglevel: Mutex<crate::config::LogLevel>,
}

impl Tunables {
    pub fn max_bulk(&self) -> usize {
        self.max_bulk.load(Ordering::Relaxed)
    }

    pub fn has_password(&self) -> bool {
        self.requirepass.read().is_some()
    }
}

#[derive(Default)]
pub struct Stats {
    pub total_connections: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub total_commands: AtomicU64,
    pub net_input_bytes: AtomicU64,
    pub net_output_bytes: AtomicU64,
}

/// What the rest of the node can see of one connection (CLIENT LIST/KILL).
pub struct ClientHandle {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub created: Instant,
    pub name: Mutex<Option<Vec<u8>>>,
    pub lib: Mutex<(String, String)>,
    pub db: AtomicUsize,
    pub resp: AtomicUsize,
    pub last_active_ms: AtomicU64,
    pub last_cmd: Mutex<&'static str>,
    pub in_multi: AtomicBool,
    pub kill: Notify,
    pub killed: AtomicBool,
}

/// A command queued between MULTI and EXEC.
pub struct Queued {
    pub spec: &'static Spec,
    pub args: Vec<Vec<u8>>,
}

/// A key under WATCH and what it held then.
pub struct Watched {
    pub db: usize,
    pub key: Vec<u8>,
    pub state: Option<chorus_crdt::KeyState>,
    pub visible: bool,
}

/// One connection's private state.
pub struct Client {
    pub handle: Arc<ClientHandle>,
    pub db: usize,
    pub authed: bool,
    pub multi: Option<Vec<Queued>>,
    /// A command inside MULTI was refused: EXEC must abort.
    pub multi_dirty: bool,
    pub watched: Vec<Watched>,
    /// Close once the pending replies are written.
    pub close: bool,
    /// DEBUG SLEEP: wait this long before running the rest of the pipeline.
    pub sleep: Option<Duration>,
    /// WAIT: its reply comes once enough peers acknowledged.
    pub wait: Option<crate::cmd::replication::PendingWait>,
}

impl Client {
    /// A client inside the process, with no connection: for embedding the
    /// node (the simulation drives commands through [`dispatch`] with it).
    /// It is not listed by CLIENT LIST.
    pub fn embedded(shared: &Shared) -> Client {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Client {
            handle: Arc::new(ClientHandle {
                id: shared.next_client_id.fetch_add(1, Ordering::Relaxed),
                addr: unspecified,
                laddr: unspecified,
                created: Instant::now(),
                name: Mutex::new(None),
                lib: Mutex::new((String::new(), String::new())),
                db: AtomicUsize::new(0),
                resp: AtomicUsize::new(2),
                last_active_ms: AtomicU64::new(0),
                last_cmd: Mutex::new("NULL"),
                in_multi: AtomicBool::new(false),
                kill: Notify::new(),
                killed: AtomicBool::new(false),
            }),
            db: 0,
            authed: true,
            multi: None,
            multi_dirty: false,
            watched: Vec::new(),
            close: false,
            sleep: None,
            wait: None,
        }
    }
}

/// Everything the connections share.
pub struct Shared {
    pub ks: Keyspace,
    pub config: Config,
    pub tunables: Tunables,
    pub clients: Mutex<BTreeMap<u64, Arc<ClientHandle>>>,
    pub next_client_id: AtomicU64,
    pub stats: Stats,
    pub shutdown: watch::Sender<bool>,
    pub started: Instant,
    pub started_unix_ms: u64,
    pub run_id: String,
    pub listening: Mutex<Vec<SocketAddr>>,
    pub repl: Option<Arc<crate::replication::Replicator>>,
    /// The node's store, when it has one.
    pub persistence: Option<crate::persist::Persistence>,
}

impl Shared {
    pub fn new(
        config: Config,
        ks: Keyspace,
        repl: Option<Arc<crate::replication::Replicator>>,
        persistence: Option<crate::persist::Persistence>,
    ) -> Arc<Shared> {
        let tunables = Tunables {
            requirepass: RwLock::new(config.requirepass.clone()),
            maxclients: AtomicUsize::new(config.maxclients),
            timeout_secs: AtomicU64::new(config.timeout_secs),
            protected_mode: AtomicBool::new(config.protected_mode),
            max_bulk: AtomicUsize::new(config.proto_max_bulk_len),
            query_buffer_limit: AtomicUsize::new(config.client_query_buffer_limit),
            loglevel: Mutex::new(config.loglevel),
        };
        let run_id: String = (0..40)
            .map(|_| char::from_digit(rand::random_range(0..16), 16).unwrap_or('0'))
            .collect();
        Arc::new(Shared {
            started_unix_ms: ks.clock.physical_unix_ms(),
            ks,
            config,
            tunables,
            clients: Mutex::new(BTreeMap::new()),
            next_client_id: AtomicU64::new(1),
            stats: Stats::default(),
            shutdown: watch::channel(false).0,
            started: Instant::now(),
            run_id,
            listening: Mutex::new(Vec::new()),
            repl,
            persistence,
        })
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

/// Binds every configured address and serves until shutdown is requested.
pub async fn serve(shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for host in &shared.config.bind {
        let ip: IpAddr = host
            .parse()
            .with_context(|| format!("bind address '{host}' is not an IP address"))?;
        let addr = SocketAddr::new(ip, shared.config.port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("could not listen on {addr}"))?;
        let local = listener.local_addr()?;
        info!("Ready to accept connections tcp on {local}");
        shared.listening.lock().push(local);
        listeners.push(listener);
    }
    for listener in listeners {
        tokio::spawn(accept_loop(shared.clone(), listener));
    }
    if let Some(repl) = &shared.repl {
        start_replication(&shared, repl.clone())?;
    }
    tokio::spawn(active_expiry(shared.clone()));
    if shared.persistence.is_some() {
        tokio::spawn(crate::persist::run(
            shared.clone(),
            crate::persist::CUT_EVERY,
            crate::persist::CutThread::Blocking,
        ));
    }
    let mut stop = shared.shutdown.subscribe();
    let _ = stop.wait_for(|s| *s).await;
    Ok(())
}

fn start_replication(
    shared: &Arc<Shared>,
    repl: Arc<crate::replication::Replicator>,
) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let c = &shared.config;
    let ip: IpAddr = c.bind[0]
        .parse()
        .with_context(|| format!("bind address '{}' is not an IP address", c.bind[0]))?;
    let listen = SocketAddr::new(ip, c.replication_listen_port()?);
    let mut peers = Vec::new();
    for (host, port) in &c.replicaof {
        let repl_port = port
            .checked_add(10_000)
            .with_context(|| format!("replicaof {host} {port}: port + 10000 is past 65535"))?;
        let addr = (host.as_str(), repl_port)
            .to_socket_addrs()
            .with_context(|| format!("replicaof {host} {port}: cannot resolve"))?
            .next()
            .with_context(|| format!("replicaof {host} {port}: no address"))?;
        peers.push(addr);
    }
    let secret = c.masterauth.clone().unwrap_or_default();
    crate::replication::start(
        shared.clone(),
        repl,
        crate::replication::ReplConfig {
            listen,
            peers,
            cluster_name: c.cluster_name.clone(),
            secret,
            tls: c.peer_tls(),
        },
    )?;
    Ok(())
}

/// The active expiry cycle, every 100 ms (`serve` runs it; an embedded node
/// runs it itself).
pub async fn active_expiry(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = shared.ks.clock.physical_unix_ms();
        let deleted = shared.ks.active_expire_cycle(now, 64);
        if deleted > 0 {
            debug!(deleted, "active expiry cycle");
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let (sock, addr) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        shared
            .stats
            .total_connections
            .fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = admit(shared, sock, addr).await {
                debug!(%addr, "connection ended: {e}");
            }
        });
    }
}

/// Whether protected mode refuses `peer`: no password set and not loopback.
pub fn protected_refuses(protected_mode: bool, has_password: bool, peer: IpAddr) -> bool {
    let loopback = match peer {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    protected_mode && !has_password && !loopback
}

const DENIED: &str = "-DENIED Chorus is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers to Chorus you may adopt one of the following solutions: 1) Just disable protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting to Chorus from the same host the server is running, however MAKE SURE Chorus is not publicly accessible from internet if you do so. 2) Alternatively you can just disable the protected mode by editing the Chorus configuration file, and setting the protected mode option to 'no', and then restarting the server. 3) If you started the server manually just for testing, restart it with the '--protected-mode no' option. 4) Set up an authentication password for the default user. NOTE: You only need to do one of the above things in order for the server to start accepting connections from the outside.\r\n";

async fn admit(shared: Arc<Shared>, mut sock: TcpStream, addr: SocketAddr) -> std::io::Result<()> {
    let t = &shared.tunables;
    if protected_refuses(
        t.protected_mode.load(Ordering::Relaxed),
        t.has_password(),
        addr.ip(),
    ) {
        shared
            .stats
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        sock.write_all(DENIED.as_bytes()).await?;
        return Ok(());
    }
    let handle = {
        let mut clients = shared.clients.lock();
        if clients.len() >= t.maxclients.load(Ordering::Relaxed) {
            None
        } else {
            let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
            let handle = Arc::new(ClientHandle {
                id,
                addr,
                laddr: sock.local_addr()?,
                created: Instant::now(),
                name: Mutex::new(None),
                lib: Mutex::new((String::new(), String::new())),
                db: AtomicUsize::new(0),
                resp: AtomicUsize::new(2),
                last_active_ms: AtomicU64::new(shared.ks.clock.physical_unix_ms()),
                last_cmd: Mutex::new("NULL"),
                in_multi: AtomicBool::new(false),
                kill: Notify::new(),
                killed: AtomicBool::new(false),
            });
            clients.insert(id, handle.clone());
            Some(handle)
        }
    };
    let Some(handle) = handle else {
        shared
            .stats
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        sock.write_all(b"-ERR max number of clients reached\r\n")
            .await?;
        return Ok(());
    };
    let id = handle.id;
    let result = connection(&shared, sock, handle).await;
    shared.clients.lock().remove(&id);
    result
}

async fn connection(
    shared: &Shared,
    mut sock: TcpStream,
    handle: Arc<ClientHandle>,
) -> std::io::Result<()> {
    let mut client = Client {
        handle: handle.clone(),
        db: 0,
        authed: !shared.tunables.has_password(),
        multi: None,
        multi_dirty: false,
        watched: Vec::new(),
        close: false,
        sleep: None,
        wait: None,
    };
    let mut input: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out = Reply::new();
    let mut ranges = Vec::new();
    let mut scratch = Vec::new();
    let mut need = 1usize;
    let full_limits = |s: &Shared| Limits {
        max_bulk: s.tunables.max_bulk(),
        max_args: resp::DEFAULT_MAX_ARGS,
        max_inline: resp::DEFAULT_MAX_INLINE,
    };
    loop {
        // Run every complete request in the buffer.
        let mut consumed = 0;
        let mut commands = 0u64;
        // One clock read per batch, as Redis caches mstime per event-loop turn.
        let mut now_ms = shared.ks.clock.physical_unix_ms();
        let mut last_cmd: Option<&'static str> = None;
        let writes_before = shared.ks.local_writes();
        while input.len() - consumed >= need && !client.close {
            let limits = if client.authed {
                full_limits(shared)
            } else {
                full_limits(shared).unauthenticated()
            };
            match resp::parse(&input[consumed..], &limits, &mut ranges, &mut scratch) {
                Ok(Parsed::Request { len, source }) => {
                    let base: &[u8] = match source {
                        Source::Buffer => &input[consumed..consumed + len],
                        Source::Scratch => &scratch,
                    };
                    let argv: SmallVec<[&[u8]; 8]> =
                        ranges.iter().map(|r| &base[r.clone()]).collect();
                    consumed += len;
                    need = 1;
                    if argv.is_empty() {
                        continue;
                    }
                    commands += 1;
                    last_cmd = dispatch(shared, &mut client, &mut out, &argv, now_ms).or(last_cmd);
                    if let Some(pause) = client.sleep.take() {
                        tokio::time::sleep(pause).await;
                        now_ms = shared.ks.clock.physical_unix_ms();
                    }
                    if let Some(wait) = client.wait.take() {
                        out.int(wait.run().await);
                        now_ms = shared.ks.clock.physical_unix_ms();
                    }
                }
                Ok(Parsed::Incomplete { need: n }) => {
                    need = n;
                    break;
                }
                Err(e) => {
                    debug!(addr = %handle.addr, "protocol error: {}", e.0);
                    out.error(&e.message());
                    client.close = true;
                }
            }
        }
        if consumed > 0 {
            input.drain(..consumed);
            need = need.max(1);
        }
        if commands > 0 {
            shared
                .stats
                .total_commands
                .fetch_add(commands, Ordering::Relaxed);
            handle.last_active_ms.store(now_ms, Ordering::Relaxed);
            if let Some(name) = last_cmd {
                *handle.last_cmd.lock() = name;
            }
        }
        if !out.buf.is_empty() {
            crate::persist::sync_if_written(shared, writes_before);
            sock.write_all(&out.buf).await?;
            shared
                .stats
                .net_output_bytes
                .fetch_add(out.buf.len() as u64, Ordering::Relaxed);
            out.buf.clear();
            if out.buf.capacity() > 1024 * 1024 {
                out.buf.shrink_to(64 * 1024);
            }
        }
        if client.close {
            return Ok(());
        }
        if input.len() > shared.tunables.query_buffer_limit.load(Ordering::Relaxed) {
            warn!(addr = %handle.addr, "closing client that exceeded client-query-buffer-limit");
            return Ok(());
        }
        // A large bulk announces its size: make room once, not per read.
        if need > input.len() {
            input.reserve((need - input.len()).min(64 * 1024 * 1024));
        } else {
            input.reserve(16 * 1024);
        }
        let timeout_secs = shared.tunables.timeout_secs.load(Ordering::Relaxed);
        let read = async {
            if timeout_secs > 0 {
                match tokio::time::timeout(
                    Duration::from_secs(timeout_secs),
                    sock.read_buf(&mut input),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Ok(0),
                }
            } else {
                sock.read_buf(&mut input).await
            }
        };
        let n = tokio::select! {
            r = read => r?,
            _ = handle.kill.notified() => 0,
        };
        if n == 0 || handle.killed.load(Ordering::Relaxed) {
            return Ok(());
        }
        shared
            .stats
            .net_input_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        if input.capacity() > 4 * 1024 * 1024 && input.len() < 64 * 1024 {
            input.shrink_to(64 * 1024);
        }
    }
}

/// Runs one command; returns its name for CLIENT LIST's `cmd=`.
pub fn dispatch(
    shared: &Shared,
    client: &mut Client,
    out: &mut Reply,
    args: &[&[u8]],
    now_ms: u64,
) -> Option<&'static str> {
    let Some(spec) = cmd::lookup(args[0]) else {
        if client.multi.is_some() {
            client.multi_dirty = true;
        }
        out.error(&cmd::unknown_command(args));
        return None;
    };
    if !spec.arity_ok(args.len()) {
        if client.multi.is_some() {
            client.multi_dirty = true;
        }
        out.error(&cmd::wrong_arity(spec.name));
        return Some(spec.name);
    }
    if !client.authed && !spec.has(flag::NOAUTH) {
        if client.multi.is_some() {
            client.multi_dirty = true;
        }
        out.error(cmd::NOAUTH);
        return Some(spec.name);
    }
    if let Some(queue) = &mut client.multi {
        if !spec.has(flag::NOQUEUE) {
            if spec.has(flag::NOMULTI) {
                client.multi_dirty = true;
                out.error(&format!(
                    "ERR Command not allowed inside a transaction: {}",
                    spec.name
                ));
                return Some(spec.name);
            }
            queue.push(Queued {
                spec,
                args: args.iter().map(|a| a.to_vec()).collect(),
            });
            out.simple("QUEUED");
            return Some(spec.name);
        }
    }
    let ks = &shared.ks;
    let locked = if spec.name == "exec" {
        lock_for_exec(ks, client)
    } else if spec.has(flag::ALLKEYS) {
        ks.lock_all()
    } else if spec.keys.0 == 0 {
        crate::keyspace::Locked::empty()
    } else {
        let mut shards = SmallVec::new();
        cmd::shards_for(ks, spec, args, &mut shards);
        ks.lock(shards)
    };
    let mut x = Exec {
        shared,
        ks,
        client,
        out,
        locked,
        now_ms,
    };
    if let Err(e) = (spec.run)(&mut x, args) {
        x.out.error(e.text());
    }
    Some(spec.name)
}

/// EXEC locks every shard its queued commands and watched keys live in.
fn lock_for_exec<'a>(ks: &'a Keyspace, client: &Client) -> crate::keyspace::Locked<'a> {
    let Some(queue) = &client.multi else {
        return crate::keyspace::Locked::empty();
    };
    if queue.iter().any(|q| q.spec.has(flag::ALLKEYS)) {
        return ks.lock_all();
    }
    let mut shards: SmallVec<[usize; 4]> =
        client.watched.iter().map(|w| ks.shard_of(&w.key)).collect();
    for q in queue {
        let args: SmallVec<[&[u8]; 8]> = q.args.iter().map(|a| a.as_slice()).collect();
        cmd::shards_for(ks, q.spec, &args, &mut shards);
    }
    ks.lock(shards)
}
