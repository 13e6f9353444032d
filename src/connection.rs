//! The connection layer: listening, admission, and the socket loop. The only
//! code in Chorus that knows client sockets.
//!
//! One tokio task per connection (never one per command). A connection reads
//! into its buffer, runs every complete command in it, appends every reply
//! to one output buffer and writes it with a single write: pipelining costs
//! one syscall pair per batch. No lock is held across an await.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chorus_crdt::digest::stable_hash;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::OutputBufferLimit;
use crate::keyspace::Ahead;
use crate::node::Links;
use crate::persist::CutThread;
use crate::resp::{self, Limits, Parsed, Progress, Reply, Source};
use crate::server::Server;
use crate::session::{ClientHandle, Session};

/// Why a node stopped serving, or never started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bind address '{0}' is not an IP address")]
    BadBind(String),
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no address to listen on: none of the optional bind addresses ({0}) is available")]
    NoAddress(String),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
    #[error("TLS for clients: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Binds every configured address, starts the node's background work and
/// serves clients until shutdown is requested.
pub async fn serve(server: Arc<Server>) -> Result<(), ServeError> {
    let node = &server.node;
    let c = &node.config;
    // As in Redis, `port 0` with a `tls-port` serves TLS alone.
    let tls_only = c.tls_port != 0 && c.port == 0;
    let acceptor = match (
        c.tls_port,
        &c.tls_cert_file,
        &c.tls_key_file,
        &c.tls_ca_cert_file,
    ) {
        (0, ..) => None,
        (_, Some(cert), Some(key), Some(ca)) => {
            Some(crate::tls::acceptor(cert, key, ca, c.tls_auth_clients)?)
        }
        // Config validation requires the files with a tls-port.
        _ => None,
    };
    let mut listeners = Vec::new();
    let mut tls_listeners = Vec::new();
    for host in &c.bind {
        let ip: IpAddr = host
            .parse()
            .map_err(|_| ServeError::BadBind(host.clone()))?;
        let optional = c.optional_binds.contains(host);
        if !tls_only {
            let Some(listener) = listen(SocketAddr::new(ip, c.port), optional).await? else {
                continue;
            };
            server
                .listening
                .lock()
                .push(listener.local_addr().map_err(|source| ServeError::Listen {
                    addr: SocketAddr::new(ip, c.port),
                    source,
                })?);
            listeners.push(listener);
        }
        if let Some(acceptor) = &acceptor {
            if let Some(listener) = listen(SocketAddr::new(ip, c.tls_port), optional).await? {
                tls_listeners.push((listener, acceptor.clone()));
            }
        }
    }
    if listeners.is_empty() && tls_listeners.is_empty() {
        return Err(ServeError::NoAddress(c.bind.join(" ")));
    }
    let client_ip = match server.listening.lock().first() {
        Some(a) => Some(a.ip()),
        None => tls_listeners
            .first()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.ip()),
    };
    // Replication first: a client served before it would find the
    // configured peers missing (REPLICAOF REMOVE: "no such peer").
    node.start(Links::FromConfig { client_ip }, CutThread::Blocking)?;
    crate::alloc::mark_startup();
    for listener in listeners {
        announce(&listener, "tcp");
        tokio::spawn(accept_loop(server.clone(), listener));
    }
    for (listener, acceptor) in tls_listeners {
        announce(&listener, "tls");
        tokio::spawn(tls_accept_loop(server.clone(), listener, acceptor));
    }
    let mut stop = node.shutdown.subscribe();
    let _ = stop.wait_for(|s| *s).await;
    Ok(())
}

/// Binds `addr`; `None` for an optional address the host does not have.
async fn listen(addr: SocketAddr, optional: bool) -> Result<Option<TcpListener>, ServeError> {
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) if optional && unavailable(&e) => {
            warn!("not listening on {addr} (optional): {e}");
            return Ok(None);
        }
        Err(source) => return Err(ServeError::Listen { addr, source }),
    };
    Ok(Some(listener))
}

fn announce(listener: &TcpListener, what: &str) {
    if let Ok(local) = listener.local_addr() {
        info!("Ready to accept connections {what} on {local}");
    }
}

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn tls_accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    // Handshakes cost CPU before anything is known of the client: a bound
    // on those in flight keeps a flood of them from taking the node.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_HANDSHAKES));
    loop {
        let (sock, addr) = next_client(&server, &listener).await;
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            server.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (server, acceptor) = (server.clone(), acceptor.clone());
        tokio::spawn(async move {
            let Ok(local) = sock.local_addr() else {
                return;
            };
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock));
            let tls = match handshake.await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    server.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
                    debug!(%addr, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    server.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
                    debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            drop(permit);
            if let Err(e) = admit(server, tls, addr, local).await {
                debug!(%addr, "connection ended: {e}");
            }
        });
    }
}

/// TLS handshakes in flight per listener; a client past it is closed.
const MAX_TLS_HANDSHAKES: usize = 256;

/// The next client of `listener`, counted, with Nagle off.
async fn next_client(
    server: &Server,
    listener: &TcpListener,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((sock, addr)) => {
                let _ = sock.set_nodelay(true);
                server
                    .stats
                    .total_connections
                    .fetch_add(1, Ordering::Relaxed);
                return (sock, addr);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn accept_loop(server: Arc<Server>, listener: TcpListener) {
    loop {
        let (sock, addr) = next_client(&server, &listener).await;
        let server = server.clone();
        tokio::spawn(async move {
            let Ok(local) = sock.local_addr() else {
                return;
            };
            if let Err(e) = admit(server, sock, addr, local).await {
                debug!(%addr, "connection ended: {e}");
            }
        });
    }
}

/// Whether a bind failed because the host lacks the address or its whole
/// family (IPv6 disabled), which an optional address may (as in Redis).
fn unavailable(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::AddrNotAvailable
        || matches!(
            e.raw_os_error(),
            Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT)
        )
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

/// Room to make in a connection's read buffer before the next read, when it
/// holds `held` unparsed bytes and the parser needs `need` of them: at most
/// what has arrived, or one read.
pub fn read_reserve(held: usize, need: usize) -> usize {
    const READ: usize = 16 * 1024;
    // A large bulk announces its size, but a header alone must not buy a
    // client megabytes of our memory (any client, when there is no
    // password): the buffer grows towards the bulk by at most what came,
    // so it doubles per regrowth and a large value needs only a few.
    if need > held {
        (need - held).min(held.max(READ))
    } else {
        READ
    }
}

const DENIED: &str = "-DENIED Chorus is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers to Chorus you may adopt one of the following solutions: 1) Just disable protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting to Chorus from the same host the server is running, however MAKE SURE Chorus is not publicly accessible from internet if you do so. 2) Alternatively you can just disable the protected mode by editing the Chorus configuration file, and setting the protected mode option to 'no', and then restarting the server. 3) If you started the server manually just for testing, restart it with the '--protected-mode no' option. 4) Set up an authentication password for the default user. NOTE: You only need to do one of the above things in order for the server to start accepting connections from the outside.\r\n";

async fn admit<S: AsyncRead + AsyncWrite + Unpin>(
    server: Arc<Server>,
    mut sock: S,
    addr: SocketAddr,
    local: SocketAddr,
) -> std::io::Result<()> {
    let t = &server.tunables;
    if protected_refuses(
        t.protected_mode.load(Ordering::Relaxed),
        t.has_password(),
        addr.ip(),
    ) {
        server
            .stats
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        sock.write_all(DENIED.as_bytes()).await?;
        return sock.shutdown().await;
    }
    let handle = server.clients.register(
        addr,
        local,
        server.node.ks.clock.physical_unix_ms(),
        t.maxclients.load(Ordering::Relaxed),
    );
    let Some(handle) = handle else {
        server
            .stats
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        sock.write_all(b"-ERR max number of clients reached\r\n")
            .await?;
        return sock.shutdown().await;
    };
    let id = handle.id;
    let result = connection(&server, &mut sock, handle).await;
    server.clients.remove(id);
    // A TLS client learns the close was meant (close_notify).
    let _ = sock.shutdown().await;
    result
}

pub use crate::resp::REPLY_BATCH_BYTES;

/// A request's key and where the request after it starts, as offsets in
/// the connection's input: what a prefetch needs of it.
struct Peek {
    key: std::ops::Range<usize>,
    /// The field or member it names, as far as a glance tells.
    elem: Option<std::ops::Range<usize>>,
    /// It increments that element.
    counter: bool,
    /// The command before the one before it was told to bring in its
    /// element's entries (see `keyspace::Ahead`).
    entries_coming: bool,
    end: Option<usize>,
    /// Where its lookup goes, once the first prefetch worked it out.
    hint: Option<crate::keyspace::KeyHint>,
}

/// [`resp::peek_request`] of the request at `at` in `input`, each request
/// read once for the two prefetches it serves.
fn peek_at(input: &[u8], at: usize) -> Option<Peek> {
    let peeked = resp::peek_request(input.get(at..)?)?;
    let range = |arg: &[u8]| {
        let start = arg.as_ptr() as usize - input.as_ptr() as usize;
        start..start + arg.len()
    };
    Some(Peek {
        key: range(peeked.key),
        elem: peeked.elem.map(range),
        counter: peeked.counter,
        entries_coming: false,
        end: peeked.len.map(|l| at + l),
        hint: None,
    })
}

/// Why a connection loop closed its client on its own.
enum Verdict {
    /// Its replies went past the `normal` class's hard limit, or stayed
    /// past the soft one for its seconds.
    OutputLimit,
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    sock: &mut S,
    handle: Arc<ClientHandle>,
) -> std::io::Result<()> {
    let mut session = Session::new(handle.clone(), server.tunables.has_password());
    let mut input: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out = Reply::new();
    let mut ranges = Vec::new();
    let mut scratch = Vec::new();
    let mut progress = Progress::default();
    let mut need = 1usize;
    let full_limits = |s: &Server| Limits {
        max_bulk: s.tunables.max_bulk(),
        max_args: resp::DEFAULT_MAX_ARGS,
        max_inline: resp::DEFAULT_MAX_INLINE,
        unauthenticated: false,
    };
    loop {
        // Run every complete request in the buffer.
        let mut consumed = 0;
        let mut commands = 0u64;
        // One clock read per batch, as Redis caches mstime per event-loop turn.
        let mut now_ms = server.node.ks.clock.physical_unix_ms();
        let mut last_cmd: Option<&'static str> = None;
        let writes_before = server.node.ks.local_writes();
        let out_limit = {
            let limits = server.tunables.output_buffer_limits.read();
            match session.subscribed() {
                true => limits.pubsub,
                false => limits.normal,
            }
        };
        let mut verdict = None;
        // A command that waits (a blocking one, WAIT, DEBUG SLEEP, SAVE)
        // ends the batch its writes were staged in: the staged writes go
        // out before the task may move to another thread. (A batch is not
        // Send: the compiler refuses an await while one is open.)
        loop {
            let mut waits = false;
            {
                let _batch = server.node.ks.batch();
                // The request after the next one, peeked for its prefetch:
                // where it starts, and what `peek_at` found there.
                let mut peeked: (usize, Option<Peek>) = (usize::MAX, None);
                while input.len() - consumed >= need
                    && !session.close
                    && out.buf.len() < REPLY_BATCH_BYTES
                {
                    let limits = if session.authed {
                        full_limits(server)
                    } else {
                        full_limits(server).unauthenticated()
                    };
                    match resp::parse_resuming(
                        &input[consumed..],
                        &limits,
                        &mut ranges,
                        &mut scratch,
                        &mut progress,
                    ) {
                        Ok(Parsed::Request { len, source }) => {
                            let base: &[u8] = match source {
                                Source::Buffer => &input[consumed..consumed + len],
                                Source::Scratch => &scratch,
                            };
                            let mut few: [&[u8]; 8] = [&[]; 8];
                            let many: Vec<&[u8]>;
                            let argv: &[&[u8]] = if ranges.len() <= few.len() {
                                for (arg, r) in few.iter_mut().zip(ranges.iter()) {
                                    *arg = &base[r.clone()];
                                }
                                &few[..ranges.len()]
                            } else {
                                many = ranges.iter().map(|r| &base[r.clone()]).collect();
                                &many
                            };
                            consumed += len;
                            need = 1;
                            if argv.is_empty() {
                                continue;
                            }
                            // The next requests' keys: their lookups' memory
                            // accesses overlap this command's work, a step
                            // at a time (the table's chunk two requests
                            // ahead; the entries of the next one, whose
                            // chunk came in during the previous command).
                            // A next request on this command's key finds the
                            // key's structures in the cache: what it will miss
                            // is its element's entry in a big collection.
                            let ks = &server.node.ks;
                            let next = match peeked {
                                (at, next) if at == consumed => next,
                                _ => peek_at(&input, consumed),
                            };
                            peeked = (usize::MAX, None);
                            // (A long third argument is more likely a string's
                            // value than an element: not hashed.)
                            let on_this_key = |p: &Peek| match &p.elem {
                                Some(elem)
                                    if elem.len() <= 128
                                        && argv.get(1) == Some(&&input[p.key.clone()]) =>
                                {
                                    Some(stable_hash(&input[elem.clone()]))
                                }
                                _ => None,
                            };
                            let mut ahead = Ahead::NONE;
                            // A next key too long to live in its entry: its
                            // bytes once this command ran (its entries are
                            // on their way now).
                            let long_next = next
                                .as_ref()
                                .filter(|n| n.key.len() > crate::key::INLINE)
                                .map(|n| (n.key.clone(), n.hint));
                            if let Some(next) = next {
                                let element = on_this_key(&next);
                                if next.counter && next.entries_coming {
                                    ahead.counter = element;
                                } else {
                                    ahead.entries = element;
                                }
                                if element.is_none() {
                                    ks.prefetch_entries(session.db, &input[next.key], next.hint);
                                }
                                if let Some(at) = next.end {
                                    let mut second = peek_at(&input, at);
                                    if let Some(second) = &mut second {
                                        if second.counter {
                                            // Its entries now, its counter next time.
                                            ahead.after = on_this_key(second);
                                            second.entries_coming = ahead.after.is_some();
                                        }
                                        second.hint =
                                            ks.prefetch(session.db, &input[second.key.clone()]);
                                    }
                                    peeked = (at, second);
                                }
                            }
                            commands += 1;
                            // Messages that came before the command go before its
                            // reply (an UNSUBSCRIBE's, say).
                            handle.mailbox.drain_into(&mut out, REPLY_BATCH_BYTES);
                            crate::keyspace::expect_elements(ahead);
                            let mark = out.buf.len();
                            session.muted =
                                session.reply_off || std::mem::take(&mut session.reply_skip_next);
                            last_cmd =
                                crate::cmd::dispatch(server, &mut session, &mut out, argv, now_ms)
                                    .or(last_cmd);
                            crate::keyspace::expect_elements(Ahead::NONE);
                            if let Some((key, hint)) = long_next {
                                ks.prefetch_key_bytes(session.db, &input[key], hint);
                            }
                            if session.muted {
                                // CLIENT REPLY OFF or SKIP (what a command
                                // that waits answers later goes the same way).
                                out.buf.truncate(mark);
                            }
                            if session.blocked.is_some()
                                || session.postponed.is_some()
                                || session.sleep.is_some()
                                || session.wait.is_some()
                                || session.save.is_some()
                                || session.hold_for_room
                            {
                                waits = true;
                                break;
                            }
                            if out_limit.hard > 0 && out.buf.len() as u64 > out_limit.hard {
                                verdict = Some(Verdict::OutputLimit);
                                break;
                            }
                        }
                        Ok(Parsed::Incomplete { need: n }) => {
                            need = n;
                            break;
                        }
                        Err(e) => {
                            debug!(addr = %handle.addr, "protocol error: {}", e.0);
                            crate::cmd::reply_error(server, &mut out, &e.message());
                            session.close = true;
                        }
                    }
                }
            }
            if !waits {
                break;
            }
            // A command CLIENT PAUSE holds, and one that blocks: either
            // may turn into the other (a blocked pop retried under a pause
            // is held; a held one may block when it runs).
            loop {
                while let Some(held) = session.postponed.take() {
                    // The replies before it go out meanwhile.
                    if !send_replies_so_far(server, sock, &mut out, writes_before, out_limit)
                        .await?
                    {
                        return Ok(());
                    }
                    if !wait_held(server, &session, sock, &mut input, out.resp3, out_limit).await? {
                        // Killed or gone while held: the command goes
                        // with the client, unrun (as Redis frees it).
                        return Ok(());
                    }
                    now_ms = server.node.ks.clock.physical_unix_ms();
                    let argv: Vec<&[u8]> = held.iter().map(Vec::as_slice).collect();
                    let mark = out.buf.len();
                    last_cmd = crate::cmd::dispatch(server, &mut session, &mut out, &argv, now_ms)
                        .or(last_cmd);
                    if session.muted {
                        out.buf.truncate(mark);
                    }
                }
                let Some(blocked) = session.blocked.take() else {
                    break;
                };
                let waited = block(
                    server,
                    &mut session,
                    &mut out,
                    sock,
                    &mut input,
                    (blocked, writes_before),
                    out_limit,
                )
                .await?;
                if !waited {
                    return Ok(());
                }
                now_ms = server.node.ks.clock.physical_unix_ms();
            }
            if let Some(pause) = session.sleep.take() {
                tokio::time::sleep(pause).await;
                now_ms = server.node.ks.clock.physical_unix_ms();
            }
            if let Some(wait) = session.wait.take() {
                let answer = wait.run().await;
                if !session.muted {
                    out.int(answer);
                }
                now_ms = server.node.ks.clock.physical_unix_ms();
            }
            if std::mem::take(&mut session.hold_for_room) {
                if let Some(tier) = &server.node.ks.cold {
                    // The replies so far go out first (a client must not
                    // time out on writes that were made, and retry them).
                    if !send_replies_so_far(server, sock, &mut out, writes_before, out_limit)
                        .await?
                    {
                        return Ok(());
                    }
                    let node = &server.node;
                    tier.wait_for_room(|| node.data_memory(), || node.ks.limits.maxmemory())
                        .await;
                }
                now_ms = server.node.ks.clock.physical_unix_ms();
            }
            if let Some(persistence) = session.save.take() {
                let mark = out.buf.len();
                let saved = tokio::task::spawn_blocking(move || persistence.cut_once()).await;
                match saved {
                    Ok(Ok(_)) => out.ok(),
                    Ok(Err(e)) => crate::cmd::reply_error(server, &mut out, &format!("ERR {e}")),
                    Err(e) => crate::cmd::reply_error(
                        server,
                        &mut out,
                        &format!("ERR the save failed: {e}"),
                    ),
                }
                if session.muted {
                    out.buf.truncate(mark);
                }
                now_ms = server.node.ks.clock.physical_unix_ms();
            }
            if out_limit.hard > 0 && out.buf.len() as u64 > out_limit.hard {
                verdict = Some(Verdict::OutputLimit);
                break;
            }
        }
        if consumed > 0 {
            input.drain(..consumed);
            need = need.max(1);
        }
        // A request of very many arguments (up to Redis's INT_MAX) leaves
        // its argument list's room behind: not kept for the next ones (but
        // a request still arriving keeps the arguments it has so far).
        if ranges.capacity() > RANGES_KEPT && !progress.under_way() {
            ranges = Vec::new();
        }
        if commands > 0 {
            server
                .stats
                .total_commands
                .fetch_add(commands, Ordering::Relaxed);
            handle.last_active_ms.store(now_ms, Ordering::Relaxed);
            if let Some(name) = last_cmd {
                *handle.last_cmd.lock() = name;
            }
        }
        if let Some(persistence) = &server.node.persistence {
            persistence.sync_if_written(writes_before).await;
        }
        // Full of replies: the rest of the pipeline runs before anything
        // more is read. (Messages alone never keep a client from being read.)
        let batch_full = out.buf.len() >= REPLY_BATCH_BYTES;
        let mailbox = &handle.mailbox;
        if mailbox.overflowed.load(Ordering::Relaxed) {
            verdict = Some(Verdict::OutputLimit);
        } else if !session.close {
            // (Nothing follows QUIT's +OK.)
            mailbox.drain_into(&mut out, REPLY_BATCH_BYTES);
        }
        if verdict.is_none() && !out.buf.is_empty() {
            handle.qbuf.store(input.len(), Ordering::Relaxed);
            handle.omem.store(out.buf.len(), Ordering::Relaxed);
            handle
                .buffers
                .store(input.capacity() + out.buf.capacity(), Ordering::Relaxed);
            // The replies wait until the other clients with requests in
            // have run theirs, as Redis writes its replies before it sleeps:
            // a client then wakes for many replies at once, where a write per
            // task as each finished woke it (a cross-CPU wake-up, dear in a
            // VM) for nearly every one.
            tokio::task::yield_now().await;
            // A subscriber that stops reading must not keep its task in a
            // write while its mailbox overflows.
            let sent = tokio::select! {
                sent = write_replies(sock, &out.buf, out_limit) => sent,
                _ = handle.kill.notified() => match mailbox.overflowed.load(Ordering::Relaxed) {
                    true => Ok(false),
                    // CLIENT KILL.
                    false => return Ok(()),
                },
            };
            handle.omem.store(0, Ordering::Relaxed);
            if sent? {
                server
                    .stats
                    .net_output_bytes
                    .fetch_add(out.buf.len() as u64, Ordering::Relaxed);
            } else {
                verdict = Some(Verdict::OutputLimit);
            }
            out.buf.clear();
            if out.buf.capacity() > 1024 * 1024 {
                out.buf.shrink_to(64 * 1024);
            }
        }
        if let Some(Verdict::OutputLimit) = verdict {
            server
                .stats
                .output_buffer_limit_disconnections
                .fetch_add(1, Ordering::Relaxed);
            warn!(addr = %handle.addr, "closing client that exceeded client-output-buffer-limit");
            return Ok(());
        }
        if session.close {
            return Ok(());
        }
        if batch_full {
            continue;
        }
        if past_query_limit(server, &handle.addr, &input) {
            return Ok(());
        }
        input.reserve(read_reserve(input.len(), need));
        // As Redis, `timeout` spares subscribers: they only listen.
        let timeout_secs = match session.subscribed() {
            true => 0,
            false => server.tunables.timeout_secs.load(Ordering::Relaxed),
        };
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
        let mail = async {
            // More than one batch was waiting: the next goes at once.
            if mailbox.is_empty() {
                mailbox.ready.notified().await;
            }
        };
        let n = tokio::select! {
            r = read => r?,
            _ = handle.kill.notified() => 0,
            _ = mail => continue,
        };
        if mailbox.overflowed.load(Ordering::Relaxed) {
            server
                .stats
                .output_buffer_limit_disconnections
                .fetch_add(1, Ordering::Relaxed);
            warn!(addr = %handle.addr, "closing subscriber that exceeded client-output-buffer-limit pubsub");
            return Ok(());
        }
        if n == 0 || handle.killed.load(Ordering::Relaxed) {
            return Ok(());
        }
        server
            .stats
            .net_input_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        handle.qbuf.store(input.len(), Ordering::Relaxed);
        if input.capacity() > 4 * 1024 * 1024 && input.len() < 64 * 1024 {
            input.shrink_to(64 * 1024);
        }
    }
}

/// The most argument ranges a connection keeps room for between batches
/// (16 bytes each).
const RANGES_KEPT: usize = 64 * 1024;

/// A pipeline's replies so far go out before its connection waits (a
/// blocked command, a hold for room), once their writes are as durable as
/// `appendfsync` promises. False when the client went away.
async fn send_replies_so_far<S: AsyncWrite + Unpin>(
    server: &Server,
    sock: &mut S,
    out: &mut Reply,
    writes_before: u64,
    out_limit: OutputBufferLimit,
) -> std::io::Result<bool> {
    if let Some(persistence) = &server.node.persistence {
        persistence.sync_if_written(writes_before).await;
    }
    if !out.buf.is_empty() {
        if !write_replies(sock, &out.buf, out_limit).await? {
            return Ok(false);
        }
        server
            .stats
            .net_output_bytes
            .fetch_add(out.buf.len() as u64, Ordering::Relaxed);
        out.buf.clear();
    }
    Ok(true)
}

/// Runs a blocked command (see `cmd::blocking`) again each time one of
/// its keys changes, until it answers or its timeout passes (a null
/// array). What the client sends meanwhile is read into `input`, to run
/// after it. Returns false when the client went away or was killed.
async fn block<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    session: &mut Session,
    out: &mut Reply,
    sock: &mut S,
    input: &mut Vec<u8>,
    (blocked, writes_before): (crate::cmd::blocking::Blocked, u64),
    out_limit: OutputBufferLimit,
) -> std::io::Result<bool> {
    if !send_replies_so_far(server, sock, out, writes_before, out_limit).await? {
        return Ok(false);
    }
    let handle = session.handle.clone();
    handle.unblock_as.store(0, Ordering::Relaxed);
    handle.blocked.store(true, Ordering::Release);
    let mark = out.buf.len();
    let waited = wait_blocked(server, session, out, sock, input, blocked, out_limit).await;
    handle.blocked.store(false, Ordering::Release);
    if session.muted {
        out.buf.truncate(mark);
    }
    waited
}

/// Waits for the end of the CLIENT PAUSE holding this client's command,
/// while its messages go out and what it sends is read (not run). False
/// when the client is to close: killed, gone, past its query buffer limit
/// or its messages' limit.
async fn wait_held<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    session: &Session,
    sock: &mut S,
    input: &mut Vec<u8>,
    resp3: bool,
    out_limit: OutputBufferLimit,
) -> std::io::Result<bool> {
    let handle = &session.handle;
    loop {
        if handle.killed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let ended = server.pause.ended();
        match wait_serving(server, handle, sock, input, resp3, out_limit, ended).await? {
            Woke::By(()) => return Ok(true),
            Woke::Close => return Ok(false),
            Woke::Served => {}
        }
    }
}

/// Whether a client's unread input passed `client-query-buffer-limit`:
/// then it is counted and logged, and the client is to close.
fn past_query_limit(server: &Server, addr: &std::net::SocketAddr, input: &[u8]) -> bool {
    if input.len() <= server.tunables.query_buffer_limit.load(Ordering::Relaxed) {
        return false;
    }
    server
        .stats
        .query_buffer_limit_disconnections
        .fetch_add(1, Ordering::Relaxed);
    warn!(addr = %addr, "closing client that exceeded client-query-buffer-limit");
    true
}

/// What ended a [`wait_serving`].
enum Woke<T> {
    /// The awaited event, with its output.
    By(T),
    /// The client sent something or was sent messages: wait again.
    Served,
    /// The client is to close.
    Close,
}

/// One wait of a client whose command waits (blocked or held by a pause)
/// for `event`, serving its connection meanwhile: its messages (a RESP3
/// subscriber's pushes) go out, and what it sends is read into `input`,
/// to run later. `Close` when it is killed, gone, past its query buffer
/// limit or its messages' limit.
async fn wait_serving<S: AsyncRead + AsyncWrite + Unpin, T>(
    server: &Server,
    handle: &crate::session::ClientHandle,
    sock: &mut S,
    input: &mut Vec<u8>,
    resp3: bool,
    out_limit: OutputBufferLimit,
    event: impl std::future::Future<Output = T>,
) -> std::io::Result<Woke<T>> {
    if past_query_limit(server, &handle.addr, input) {
        return Ok(Woke::Close);
    }
    input.reserve(4096);
    let mailbox = &handle.mailbox;
    let mail = async {
        if mailbox.is_empty() {
            mailbox.ready.notified().await;
        }
    };
    tokio::select! {
        out = event => Ok(Woke::By(out)),
        _ = mail => {
            if mailbox.overflowed.load(Ordering::Relaxed) {
                return Ok(Woke::Close);
            }
            let mut pushes = Reply::new();
            pushes.resp3 = resp3;
            mailbox.drain_into(&mut pushes, REPLY_BATCH_BYTES);
            if !pushes.buf.is_empty() && !write_replies(sock, &pushes.buf, out_limit).await? {
                return Ok(Woke::Close);
            }
            Ok(Woke::Served)
        }
        _ = handle.kill.notified() => Ok(Woke::Close),
        read = sock.read_buf(input) => {
            if read? == 0 {
                return Ok(Woke::Close);
            }
            Ok(Woke::Served)
        }
    }
}

/// What a blocked command's wait ended on, besides serving its client.
enum BlockEnd {
    /// A change to one of its keys.
    Woken,
    Timeout,
    /// CLIENT UNBLOCK.
    Unblocked,
}

/// [`block`]'s wait: the command retried at each change to its keys until
/// it answers, its timeout passes or CLIENT UNBLOCK ends it.
async fn wait_blocked<S: AsyncRead + AsyncWrite + Unpin>(
    server: &Server,
    session: &mut Session,
    out: &mut Reply,
    sock: &mut S,
    input: &mut Vec<u8>,
    blocked: crate::cmd::blocking::Blocked,
    out_limit: OutputBufferLimit,
) -> std::io::Result<bool> {
    let ks = &server.node.ks;
    let watch = ks.waiters.watch(blocked.db, blocked.keys);
    let deadline = blocked.timeout.map(|t| tokio::time::Instant::now() + t);
    let argv: Vec<&[u8]> = blocked.argv.iter().map(Vec::as_slice).collect();
    let handle = session.handle.clone();
    // CLIENT UNBLOCK's answer: as at the timeout, or an error.
    let unblocked = |out: &mut Reply| match handle.unblock_as.swap(0, Ordering::AcqRel) {
        0 => false,
        crate::session::UNBLOCK_ERROR => {
            crate::cmd::reply_error(server, out, "UNBLOCKED client unblocked via CLIENT UNBLOCK");
            true
        }
        _ => {
            out.null_array();
            true
        }
    };
    let mut woken = false;
    loop {
        // Again at once: a change may have come between the first try
        // and the watch.
        let now_ms = ks.clock.physical_unix_ms();
        session.retrying_block = true;
        crate::cmd::dispatch(server, session, out, &argv, now_ms);
        session.retrying_block = false;
        if session.blocked.take().is_none() {
            return Ok(true);
        }
        if std::mem::take(&mut woken) {
            // Woken first in line for a change this client cannot take:
            // the next in line may.
            watch.pass_on();
        }
        let end = async {
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = watch.notify.notified() => BlockEnd::Woken,
                _ = timeout => BlockEnd::Timeout,
                _ = handle.unblock.notified() => BlockEnd::Unblocked,
            }
        };
        // A RESP3 subscriber may block: its messages go out meanwhile.
        match wait_serving(server, &handle, sock, input, out.resp3, out_limit, end).await? {
            Woke::Close => return Ok(false),
            Woke::Served => {}
            Woke::By(BlockEnd::Woken) => woken = true,
            Woke::By(BlockEnd::Timeout) => {
                out.null_array();
                return Ok(true);
            }
            Woke::By(BlockEnd::Unblocked) => {
                if unblocked(out) {
                    return Ok(true);
                }
            }
        }
        if handle.killed.load(Ordering::Relaxed) {
            return Ok(false);
        }
    }
}

/// Writes one batch of replies. Returns false, with the client to be
/// closed, when a batch above the soft limit is not all written within the
/// limit's seconds (the hard limit is checked as replies are added). Redis
/// watches its buffer stay above the soft limit; Chorus reads no more from
/// a client while its replies wait, so the batch is what it holds.
async fn write_replies<S: AsyncWrite + Unpin>(
    sock: &mut S,
    buf: &[u8],
    limit: OutputBufferLimit,
) -> std::io::Result<bool> {
    // A TLS stream holds what it encrypted until flushed; a socket's flush
    // is free.
    let write = async {
        sock.write_all(buf).await?;
        sock.flush().await
    };
    if limit.soft == 0 || buf.len() as u64 <= limit.soft {
        write.await?;
        return Ok(true);
    }
    let within = Duration::from_secs(limit.soft_seconds);
    match tokio::time::timeout(within, write).await {
        Ok(written) => written.map(|()| true),
        Err(_) => Ok(false),
    }
}
