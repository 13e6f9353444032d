//! Active-active replication over `chorus-transport`.
//!
//! Every node dials each peer named by `replicaof` and streams its own writes
//! to it; every node accepts its peers' links and merges what they send.
//!
//! - Local writes reach [`Replicator`] (the keyspace's `DeltaSink`), which
//!   numbers them per origin into a bounded [`log::Backlog`]. Nothing is
//!   re-stamped; a remote delta is merged, never republished (no echo).
//! - On every (re)connect the receiver sends its version vector (`Resume`);
//!   the sender resumes right after it from the backlog or, when the backlog
//!   no longer reaches back, streams its whole state (flush floors first) on
//!   a separate bulk stream, which the receiver merges, never wipes.
//! - The receiver acknowledges what it applied every 100 ms (`Ack`).
//! - A slow or dead peer never blocks writes: publishing only appends to the
//!   backlog; each peer's sender reads it at its own pace.
//! - Forwarding: every node keeps the other origins' frames it applied in a
//!   bounded [`log::Relay`]; a sender passes on to its peer any origin's
//!   frames the peer has not acknowledged `RELAY_DELAY` after this node
//!   applied them (its link to that origin is presumed down). Receivers judge
//!   every frame by its origin's sequence number, so a write arriving by two
//!   paths is applied once.
//! - Tombstone GC: each sender sends, in order after its writes, a
//!   `Heartbeat` promise; [`log::GcView`] turns promises and the stable
//!   stamps peers report into the GC floor the keyspace collects below.

pub mod log;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus_crdt::{decode, encode, encode_append, Delta, KeyState, NodeId, Stamp};
use chorus_transport::peer::Backoff;
use chorus_transport::{
    AuthStats, FrameReceiver, FrameSender, PeerLink, StreamKind, Transport, TransportConfig,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use tracing::{info, warn};

use crate::keyspace::{DeltaSink, Keyspace, SHARDS};
use log::{Arrival, Backlog, GcView, Relay, Relayed, Resume, VersionVector};

/// What peers say to each other on a link.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReplMsg {
    /// Receiver → sender, first on a link: what it has applied per origin.
    Resume { vv: Vec<(NodeId, u64)> },
    /// Receiver → sender, periodically.
    Ack { vv: Vec<(NodeId, u64)> },
    /// One write of `origin`, numbered `seq`.
    Delta {
        origin: NodeId,
        seq: u64,
        delta: Delta,
    },
    /// Part of a state transfer.
    Snapshot { delta: Delta },
    /// End of a state transfer: it covered every origin's writes up to these
    /// sequence numbers.
    SnapshotDone { vv: Vec<(NodeId, u64)> },
    /// Sent in order after `origin`'s writes up to `seq`: every later write
    /// of `origin` is stamped after `promise`. `stable` is the sender's
    /// stable stamp (see [`log::GcView`]); `retired` the earlier lives of
    /// restarted nodes it knows of, which never write again.
    Heartbeat {
        origin: NodeId,
        seq: u64,
        promise: Stamp,
        stable: Stamp,
        retired: Vec<NodeId>,
    },
}

/// [`ReplMsg`] for sending a local write from borrowed parts: the same
/// variants in the same order, so it encodes to exactly the bytes of the
/// owned message (a test holds it to that).
#[derive(Serialize)]
enum ReplMsgOut<'a> {
    #[allow(dead_code)]
    Resume { vv: Vec<(NodeId, u64)> },
    #[allow(dead_code)]
    Ack { vv: Vec<(NodeId, u64)> },
    Delta {
        origin: NodeId,
        seq: u64,
        delta: DeltaRef<'a>,
    },
}

/// [`Delta`] by reference, variant for variant.
#[derive(Serialize)]
enum DeltaRef<'a> {
    Key {
        db: u32,
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
        state: &'a KeyState,
    },
    Flush {
        db: Option<u32>,
        stamp: Stamp,
    },
}

/// How long a receiver holds a live delta that arrived ahead of a state
/// transfer still being merged before it gives up and resets the link (a
/// large state transfer takes a while; a reset makes the sender resume).
const GAP_WAIT: Duration = Duration::from_secs(300);
const ACK_INTERVAL: Duration = Duration::from_millis(100);
const RESUME_WAIT: Duration = Duration::from_secs(10);
/// About how many bytes of backlog a sender hands the stream at once.
const SEND_BATCH_BYTES: usize = 256 * 1024;
/// How long a peer may leave another origin's write unacknowledged before
/// this node passes it on: well above the ack interval plus a round trip,
/// so a healthy mesh never forwards.
const RELAY_DELAY_MS: u64 = 1_000;
/// How often an idle sender looks for writes to pass on and promises to send.
const SENDER_TICK: Duration = Duration::from_millis(100);
/// How often the node makes a promise and recomputes the GC floor.
const GC_TICK: Duration = Duration::from_millis(200);
/// How often tombstones below the floor are swept (touched keys go at once).
const SWEEP_EVERY_TICKS: u32 = 25;

/// One peer this node dials, as INFO shows it.
#[derive(Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub connected: AtomicBool,
    pub peer_node: AtomicU64,
    /// Highest sequence number sent on the current link.
    pub sent_seq: AtomicU64,
    /// Highest of our sequence numbers the peer acknowledged.
    pub acked_seq: AtomicU64,
    /// What the peer reported it applied from every origin.
    pub acked_vv: Mutex<VersionVector>,
    /// Unix ms of the last acknowledgement.
    pub acked_at_ms: AtomicU64,
    pub state_transfers: AtomicU64,
    /// Other origins' writes passed on to this peer.
    pub relayed: AtomicU64,
    pub last_error: Mutex<String>,
    /// The sender task, aborted when the peer is removed.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl PeerInfo {
    fn new(addr: SocketAddr) -> PeerInfo {
        PeerInfo {
            addr,
            connected: AtomicBool::new(false),
            peer_node: AtomicU64::new(0),
            sent_seq: AtomicU64::new(0),
            acked_seq: AtomicU64::new(0),
            acked_vv: Mutex::new(VersionVector::default()),
            acked_at_ms: AtomicU64::new(0),
            state_transfers: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            task: Mutex::new(None),
        }
    }
}

/// The replication state shared by the keyspace (as its sink) and the tasks.
pub struct Replicator {
    node: NodeId,
    /// Wall clock for lag figures (the node's physical clock).
    now_ms: fn() -> u64,
    backlog: Mutex<Backlog>,
    /// Wakes senders waiting for a write; only signalled while one waits
    /// (`sleepers`), so a busy node pays nothing for it per write.
    wake: tokio::sync::Notify,
    sleepers: std::sync::atomic::AtomicUsize,
    applied: Mutex<VersionVector>,
    /// Wakes receivers holding a frame that arrived ahead of its turn;
    /// signalled only while one waits.
    applied_changed: tokio::sync::Notify,
    applied_waiters: std::sync::atomic::AtomicUsize,
    /// Other origins' writes, to pass on to peers cut off from them.
    relay: Mutex<Relay>,
    gc: Mutex<GcView>,
    /// Our newest promise: (sequence number, stamp).
    promise: Mutex<(u64, Stamp)>,
    /// Our stable stamp and the GC floor, as last computed (for INFO).
    pub gc_state: Mutex<(Stamp, Stamp)>,
    /// Our stable stamp before the limit of what we have stored.
    unstored_stable: Mutex<Stamp>,
    /// With a store: the stable stamp as of the last stored cut, which what
    /// we report and collect below never passes.
    stored_stable: Mutex<Option<Stamp>>,
    pub peers: Mutex<Vec<Arc<PeerInfo>>>,
    /// Remote stamps too far ahead of our clock (merged, clock not dragged).
    pub drift_events: AtomicU64,
    pub auth: Mutex<Option<Arc<AuthStats>>>,
    pub listen: Mutex<Option<SocketAddr>>,
    running: Mutex<Option<Running>>,
}

/// What adding a peer at run time needs.
struct Running {
    ks: std::sync::Weak<Keyspace>,
    transport: Arc<Transport>,
}

impl Replicator {
    pub fn new(node: NodeId, backlog_bytes: usize, now_ms: fn() -> u64) -> Arc<Replicator> {
        Arc::new(Replicator {
            node,
            now_ms,
            backlog: Mutex::new(Backlog::new(backlog_bytes)),
            wake: tokio::sync::Notify::new(),
            sleepers: std::sync::atomic::AtomicUsize::new(0),
            applied: Mutex::new(VersionVector::default()),
            applied_changed: tokio::sync::Notify::new(),
            applied_waiters: std::sync::atomic::AtomicUsize::new(0),
            relay: Mutex::new(Relay::new(backlog_bytes)),
            gc: Mutex::new(GcView::default()),
            promise: Mutex::new((0, Stamp::ZERO)),
            gc_state: Mutex::new((Stamp::ZERO, Stamp::ZERO)),
            unstored_stable: Mutex::new(Stamp::ZERO),
            stored_stable: Mutex::new(None),
            peers: Mutex::new(Vec::new()),
            drift_events: AtomicU64::new(0),
            auth: Mutex::new(None),
            listen: Mutex::new(None),
            running: Mutex::new(None),
        })
    }

    /// How many peers have acknowledged every write up to `seq`.
    pub fn peers_acked(&self, seq: u64) -> usize {
        self.peers
            .lock()
            .iter()
            .filter(|p| p.acked_seq.load(Ordering::Relaxed) >= seq)
            .count()
    }

    /// The newest sequence number handed out.
    pub fn head_seq(&self) -> u64 {
        self.backlog.lock().head()
    }

    /// Starts replicating with the peer at `addr` (its replication address).
    /// Returns false when it is already a peer.
    pub fn add_peer(self: &Arc<Self>, addr: SocketAddr) -> Result<bool, &'static str> {
        let running = self.running.lock();
        let Some(run) = running.as_ref() else {
            return Err("replication is not running");
        };
        let Some(ks) = run.ks.upgrade() else {
            return Err("the node is shutting down");
        };
        let mut peers = self.peers.lock();
        if peers.iter().any(|p| p.addr == addr) {
            return Ok(false);
        }
        let info = Arc::new(PeerInfo::new(addr));
        let task = tokio::spawn(sender(
            ks,
            self.clone(),
            run.transport.clone(),
            addr,
            info.clone(),
        ));
        *info.task.lock() = Some(task.abort_handle());
        peers.push(info);
        Ok(true)
    }

    /// Stops replicating with the peer at `addr`, or with every peer for
    /// `None`. Returns how many were removed.
    pub fn remove_peers(&self, addr: Option<SocketAddr>) -> usize {
        let mut peers = self.peers.lock();
        let before = peers.len();
        peers.retain(|p| {
            let hit = addr.is_none_or(|a| p.addr == a);
            if hit {
                if let Some(task) = p.task.lock().take() {
                    task.abort();
                }
            }
            !hit
        });
        before - peers.len()
    }

    /// (head sequence number, backlog bytes).
    pub fn backlog_state(&self) -> (u64, usize) {
        let b = self.backlog.lock();
        (b.head(), b.bytes())
    }

    /// How long the oldest write `peer` has not acknowledged has waited, in
    /// ms; -1 when it is older than the backlog.
    pub fn lag_ms(&self, peer: &PeerInfo) -> i64 {
        let acked = peer.acked_seq.load(Ordering::Relaxed);
        let lag = self.backlog.lock().lag_ms(acked, (self.now_ms)());
        lag.map_or(-1, |ms| ms as i64)
    }

    /// What this node has applied from each other origin.
    pub fn applied_vv(&self) -> Vec<(NodeId, u64)> {
        self.applied.lock().entries()
    }

    /// Bytes of other origins' writes kept for forwarding.
    pub fn relay_bytes(&self) -> usize {
        self.relay.lock().bytes()
    }

    /// Earlier lives of restarted peers.
    pub fn retired(&self) -> Vec<NodeId> {
        self.gc.lock().retired()
    }

    /// Retired nodes every peer applied exactly as much of as we did: no
    /// write of theirs is still on its way anywhere, so they stop counting.
    fn settled(&self) -> std::collections::BTreeSet<NodeId> {
        let retired = self.gc.lock().retired();
        let applied = self.applied.lock().clone();
        let peers = self.peers.lock().clone();
        retired
            .into_iter()
            .filter(|r| {
                peers.iter().all(|p| {
                    p.peer_node.load(Ordering::Relaxed) == r.0
                        || p.acked_vv.lock().get(*r) == applied.get(*r)
                })
            })
            .collect()
    }

    /// The node keeps its state in a store: from now on its stable stamp
    /// waits for the cuts (see [`Replicator::stored`]).
    pub fn persisting(&self) {
        *self.stored_stable.lock() = Some(Stamp::ZERO);
    }

    /// The stable stamp to record with a cut about to be taken: everything
    /// stamped up to it was applied before the cut.
    pub fn stable_for_cut(&self) -> Stamp {
        *self.unstored_stable.lock()
    }

    /// A cut taken after `stable` was computed is durable.
    pub fn stored(&self, stable: Stamp) {
        if let Some(s) = self.stored_stable.lock().as_mut() {
            *s = stable;
        }
    }

    /// What a cut records as applied: every other origin's writes, and our
    /// own up to the newest (taken with every shard held, it is exact).
    pub fn cut_vv(&self) -> Vec<(NodeId, u64)> {
        let mut vv = self.applied.lock().entries();
        let head = self.backlog.lock().head();
        if head > 0 {
            vv.push((self.node, head));
        }
        vv
    }

    /// Starts from a store: `applied` as the store holds it (resumed from
    /// there), `lives` the earlier lives of this node, retired.
    pub fn restore(&self, applied: &[(NodeId, u64)], lives: &[NodeId]) {
        let now = (self.now_ms)();
        for &(origin, seq) in applied {
            if origin == self.node {
                continue;
            }
            self.applied.lock().advance(origin, seq);
            // Their frames are not at hand: a peer behind gets a transfer.
            self.relay.lock().jump(origin, seq, now);
        }
        let mut gc = self.gc.lock();
        for &life in lives {
            if life != self.node {
                gc.know(life);
                gc.retire(life);
            }
        }
    }

    /// Makes a new promise and recomputes our stable stamp and the GC floor.
    fn gc_tick(&self, ks: &crate::keyspace::Keyspace) -> Stamp {
        // Every write is stamped and published under its shard's lock: with
        // all of them held, each write is either numbered by now or will be
        // stamped after this.
        let promise = {
            let _all = ks.lock_all();
            (self.backlog.lock().head(), ks.clock.now())
        };
        *self.promise.lock() = promise;
        let settled = self.settled();
        let unknown_peer = self
            .peers
            .lock()
            .iter()
            .any(|p| p.peer_node.load(Ordering::Relaxed) == 0);
        let stored = *self.stored_stable.lock();
        let mut gc = self.gc.lock();
        for (origin, _) in self.applied.lock().entries() {
            gc.know(origin);
        }
        let unstored = gc.stable(self.node, promise.1, &settled);
        *self.unstored_stable.lock() = unstored;
        let stable = stored.map_or(unstored, |s| unstored.min(s));
        let floor = if unknown_peer {
            Stamp::ZERO
        } else {
            gc.floor(self.node, promise.1, &settled).min(stable)
        };
        *self.gc_state.lock() = (stable, floor);
        floor
    }

    fn advance(&self, origin: NodeId, seq: u64) {
        self.applied.lock().advance(origin, seq);
        if self.applied_waiters.load(Ordering::SeqCst) > 0 {
            self.applied_changed.notify_waiters();
        }
    }
}

impl Replicator {
    fn publish(&self, delta: DeltaRef<'_>, now_ms: u64) {
        self.backlog.lock().push(now_ms, |seq, buf| {
            let msg = ReplMsgOut::Delta {
                origin: self.node,
                seq,
                delta,
            };
            // Our own types always encode; an empty frame would only make
            // the peer reset the link and resume.
            encode_append(&msg, buf).unwrap_or_default()
        });
        // Pairs with the sender's increment before it rechecks the head.
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.wake.notify_waiters();
        }
    }
}

impl DeltaSink for Replicator {
    fn publish_key(&self, db: u32, key: &[u8], state: &KeyState, now_ms: u64) {
        self.publish(DeltaRef::Key { db, key, state }, now_ms);
    }

    fn publish_flush(&self, db: Option<u32>, stamp: Stamp, now_ms: u64) {
        self.publish(DeltaRef::Flush { db, stamp }, now_ms);
    }
}

/// A peer's replication address from its client address: replication
/// listens on the client port + 10000 unless `replication-port` says
/// otherwise (the one place that rule is written).
pub fn resolve_peer(host: &str, client_port: u16) -> Result<SocketAddr, PeerAddrError> {
    use std::net::ToSocketAddrs;
    let port = crate::config::default_replication_port(client_port).ok_or(PeerAddrError::Port)?;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| PeerAddrError::Resolve(host.to_string()))
}

/// Why a peer's address could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PeerAddrError {
    #[error("port + 10000 must be below 65536")]
    Port,
    #[error("cannot resolve '{0}'")]
    Resolve(String),
}

/// What replication needs from the config.
#[derive(Debug, Clone)]
pub struct ReplConfig {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub cluster_name: String,
    pub secret: Vec<u8>,
    pub tls: Option<chorus_transport::tls::TlsFiles>,
}

/// Binds the replication endpoint and starts the accept loop and one sender
/// per peer. Returns the bound address.
pub fn start(
    ks: Arc<Keyspace>,
    repl: Arc<Replicator>,
    config: ReplConfig,
) -> anyhow::Result<SocketAddr> {
    let mut transport_config =
        TransportConfig::new(repl.node.0, &config.cluster_name, &config.secret);
    transport_config.tls = config.tls;
    let transport = Transport::bind(config.listen, transport_config)?;
    start_with_transport(ks, repl, transport, config.peers)
}

/// [`start`] over a transport the caller built (the simulation's, over
/// simulated UDP).
pub fn start_with_transport(
    ks: Arc<Keyspace>,
    repl: Arc<Replicator>,
    transport: Transport,
    peers: Vec<SocketAddr>,
) -> anyhow::Result<SocketAddr> {
    let addr = transport.local_addr()?;
    *repl.auth.lock() = Some(transport.stats.clone());
    *repl.listen.lock() = Some(addr);
    info!("replication listening on udp {addr}");
    let transport = Arc::new(transport);
    *repl.running.lock() = Some(Running {
        ks: Arc::downgrade(&ks),
        transport: transport.clone(),
    });
    tokio::spawn(gc_loop(ks.clone(), repl.clone()));
    tokio::spawn(accept_loop(ks, repl.clone(), transport));
    for peer in peers {
        repl.add_peer(peer).map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(addr)
}

/// Counts a task as waiting (for writes, or for its turn) while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(sleepers: &'a std::sync::atomic::AtomicUsize) -> Waiting<'a> {
        sleepers.fetch_add(1, Ordering::SeqCst);
        Waiting(sleepers)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A helper task that ends with the future owning it, however that ends
/// (including being aborted by REPLICAOF REMOVE).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn send_msg(msg: &ReplMsg) -> anyhow::Result<Vec<u8>> {
    Ok(encode(msg)?)
}

/// Promises, the GC floor, and sweeping tombstones below it.
async fn gc_loop(ks: Arc<Keyspace>, repl: Arc<Replicator>) {
    let mut ticks = 0u32;
    let mut swept = Stamp::ZERO;
    loop {
        tokio::time::sleep(GC_TICK).await;
        let floor = repl.gc_tick(&ks);
        ks.set_gc_floor(floor);
        ticks += 1;
        if ticks.is_multiple_of(SWEEP_EVERY_TICKS) && floor > swept {
            swept = floor;
            let collected = ks.collect_garbage();
            if collected > 0 {
                tracing::debug!(collected, "tombstones collected");
            }
        }
    }
}

// ----- sending our writes to one peer -----

async fn sender(
    ks: Arc<Keyspace>,
    repl: Arc<Replicator>,
    transport: Arc<Transport>,
    addr: SocketAddr,
    info: Arc<PeerInfo>,
) {
    // Seeded from who we are and whom we dial: distinct per link, and the
    // same in a replayed simulation.
    let seed = repl.node.0
        ^ addr.port() as u64
        ^ u64::from(match addr.ip() {
            std::net::IpAddr::V4(ip) => u32::from(ip),
            std::net::IpAddr::V6(ip) => ip.to_bits() as u32,
        });
    let mut backoff = Backoff::seeded(Duration::from_millis(100), Duration::from_secs(5), seed);
    loop {
        match transport.connect(addr).await {
            Ok(link) => {
                backoff.reset();
                info.connected.store(true, Ordering::Relaxed);
                let before = info.peer_node.swap(link.peer_node, Ordering::Relaxed);
                {
                    let mut gc = repl.gc.lock();
                    gc.know(NodeId(link.peer_node));
                    if before != 0 && before != link.peer_node {
                        info!(peer = %addr, old = %NodeId(before), "peer restarted with a new node id; its old id is retired");
                        gc.retire(NodeId(before));
                    }
                }
                info!(peer = %addr, node = %NodeId(link.peer_node), "replication link up");
                if let Err(e) = serve_peer(&ks, &repl, &link, &info).await {
                    *info.last_error.lock() = e.to_string();
                    info!(peer = %addr, "replication link down: {e}");
                }
                link.close("resetting");
                info.connected.store(false, Ordering::Relaxed);
            }
            Err(e) => *info.last_error.lock() = e.to_string(),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn serve_peer(
    ks: &Arc<Keyspace>,
    repl: &Replicator,
    link: &PeerLink,
    info: &Arc<PeerInfo>,
) -> anyhow::Result<()> {
    let mut live = link.open(StreamKind::Live).await?;
    let (_, mut back) = tokio::time::timeout(RESUME_WAIT, link.accept_stream()).await??;
    let resume = match back.recv().await?.map(|f| decode::<ReplMsg>(&f)) {
        Some(Ok(ReplMsg::Resume { vv })) => VersionVector::from_entries(&vv),
        other => anyhow::bail!("expected Resume from the peer, got {other:?}"),
    };
    let me = repl.node;
    let peer = NodeId(link.peer_node);
    *info.acked_vv.lock() = resume.clone();
    let _acks = AbortOnDrop(tokio::spawn(read_acks(back, me, info.clone(), ks.clone())));
    let mut cursor = resume.get(me) + 1;
    // Per other origin, the next of its writes to pass on over this link.
    let mut relayed: std::collections::BTreeMap<NodeId, u64> = Default::default();
    let mut promised = Stamp::ZERO;
    let mut tick = tokio::time::interval(SENDER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut busy = false;
        let mut transfer = false;
        let next = repl.backlog.lock().read_from(cursor, SEND_BATCH_BYTES);
        match next {
            Resume::Frames { last, mut chunks } => {
                live.send_framed(&mut chunks).await?;
                cursor = last + 1;
                info.sent_seq.store(last, Ordering::Relaxed);
                busy = true;
            }
            Resume::UpToDate => {}
            Resume::Trimmed => transfer = true,
        }
        // A promise goes after every write it speaks of.
        let (seq, stamp) = *repl.promise.lock();
        if !transfer && seq < cursor && stamp > promised {
            let stable = repl.gc_state.lock().0;
            live.send(&send_msg(&ReplMsg::Heartbeat {
                origin: me,
                seq,
                promise: stamp,
                stable,
                retired: repl.retired(),
            })?)
            .await?;
            promised = stamp;
        }
        if !transfer {
            let acked = info.acked_vv.lock().clone();
            let now = (repl.now_ms)();
            let origins = repl.relay.lock().origins();
            for origin in origins.into_iter().filter(|o| *o != me && *o != peer) {
                let from = relayed
                    .get(&origin)
                    .copied()
                    .unwrap_or(0)
                    .max(acked.get(origin) + 1);
                let due = repl
                    .relay
                    .lock()
                    .due(origin, from, now, RELAY_DELAY_MS, 256);
                match due {
                    Relayed::Frames(frames) => {
                        if let Some(&(last, _)) = frames.last() {
                            let payloads: Vec<&[u8]> = frames.iter().map(|(_, f)| &f[..]).collect();
                            live.send_batch(&payloads).await?;
                            relayed.insert(origin, last + 1);
                            info.relayed
                                .fetch_add(payloads.len() as u64, Ordering::Relaxed);
                            busy = true;
                        }
                    }
                    Relayed::Nothing => {}
                    Relayed::Trimmed => transfer = true,
                }
            }
        }
        if transfer {
            info.state_transfers.fetch_add(1, Ordering::Relaxed);
            let covered = state_transfer(ks, repl, link).await?;
            cursor = covered.get(me) + 1;
            for (origin, seq) in covered.entries() {
                relayed.insert(origin, seq + 1);
            }
            info.sent_seq.store(cursor - 1, Ordering::Relaxed);
            continue;
        }
        if !busy {
            let notified = repl.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _waiting = Waiting::new(&repl.sleepers);
            if repl.backlog.lock().head() < cursor {
                tokio::select! {
                    biased;
                    _ = &mut notified => {}
                    _ = tick.tick() => {}
                    reason = link.closed() => anyhow::bail!("link closed: {reason}"),
                }
                // The write that woke us runs us next (tokio's LIFO slot),
                // before the other clients' ready batches: let those run
                // first so one send carries all of them in full packets.
                // Idle, this returns at once.
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn read_acks(mut back: FrameReceiver, me: NodeId, info: Arc<PeerInfo>, ks: Arc<Keyspace>) {
    while let Ok(Some(frame)) = back.recv().await {
        if let Ok(ReplMsg::Ack { vv }) = decode::<ReplMsg>(&frame) {
            let vv = VersionVector::from_entries(&vv);
            info.acked_seq.fetch_max(vv.get(me), Ordering::Relaxed);
            *info.acked_vv.lock() = vv;
            info.acked_at_ms
                .store(ks.clock.physical_unix_ms(), Ordering::Relaxed);
        }
    }
}

/// Streams this node's whole state on a bulk stream; returns what it covers
/// per origin (every write numbered up to that is included).
async fn state_transfer(
    ks: &Keyspace,
    repl: &Replicator,
    link: &PeerLink,
) -> anyhow::Result<VersionVector> {
    // Read what is applied first: anything numbered after it is sent live
    // later, anything up to it is already in the keyspace and so in the
    // snapshot.
    let mut covered = repl.applied.lock().clone();
    covered.advance(repl.node, repl.backlog.lock().head());
    let mut bulk = link.open(StreamKind::Bulk).await?;
    for db in 0..ks.databases() {
        let mut floor = chorus_crdt::Stamp::ZERO;
        for i in 0..SHARDS {
            let mut l = ks.lock(SmallVec::from_slice(&[i]));
            floor = floor.max(l.shard(i)?.dbs[db].floor);
        }
        if !floor.is_zero() {
            let delta = Delta::Flush {
                db: Some(db as u32),
                stamp: floor,
            };
            bulk.send(&send_msg(&ReplMsg::Snapshot { delta })?).await?;
        }
    }
    for i in 0..SHARDS {
        // Encode one shard under its lock, send after releasing it.
        let frames: Vec<Vec<u8>> = {
            let mut l = ks.lock(SmallVec::from_slice(&[i]));
            let shard = l.shard(i)?;
            let mut frames = Vec::new();
            for (db, d) in shard.dbs.iter().enumerate() {
                for (key, state) in &d.map {
                    let delta = Delta::Key {
                        db: db as u32,
                        key: key.to_vec(),
                        state: state.clone(),
                    };
                    frames.push(send_msg(&ReplMsg::Snapshot { delta })?);
                }
            }
            frames
        };
        for f in frames {
            bulk.send(&f).await?;
        }
    }
    bulk.send(&send_msg(&ReplMsg::SnapshotDone {
        vv: covered.entries(),
    })?)
    .await?;
    bulk.finish()?;
    Ok(covered)
}

// ----- receiving a peer's writes -----

async fn accept_loop(ks: Arc<Keyspace>, repl: Arc<Replicator>, transport: Arc<Transport>) {
    while let Some(result) = transport.accept().await {
        match result {
            Ok(link) => {
                tokio::spawn(receiver(ks.clone(), repl.clone(), link));
            }
            Err(e) => warn!("replication peer refused: {e}"),
        }
    }
}

async fn receiver(ks: Arc<Keyspace>, repl: Arc<Replicator>, link: PeerLink) {
    if let Err(e) = receive(&ks, &repl, &link).await {
        info!(peer = %link.remote_address(), "inbound replication link ended: {e}");
    }
    link.close("ended");
}

async fn receive(
    ks: &Arc<Keyspace>,
    repl: &Arc<Replicator>,
    link: &PeerLink,
) -> anyhow::Result<()> {
    repl.gc.lock().know(NodeId(link.peer_node));
    let mut back = link.open(StreamKind::Live).await?;
    back.send(&send_msg(&ReplMsg::Resume {
        vv: repl.applied_vv(),
    })?)
    .await?;
    let _acker = {
        let repl = repl.clone();
        AbortOnDrop(tokio::spawn(async move {
            let _ = send_acks(back, repl).await;
        }))
    };
    let result = async {
        loop {
            let (_, rx) = link.accept_stream().await?;
            let (ks, repl, link) = (ks.clone(), repl.clone(), link.clone());
            tokio::spawn(async move {
                if let Err(e) = apply_stream(&ks, &repl, rx).await {
                    // A stream we stop reading would stall the sender on flow
                    // control: reset the whole link so it reconnects and resumes.
                    warn!(peer = %link.remote_address(), "replication stream failed, resetting the link: {e}");
                    link.close("stream error");
                }
            });
        }
    }
    .await;
    result
}

async fn send_acks(mut back: FrameSender, repl: Arc<Replicator>) -> anyhow::Result<()> {
    loop {
        tokio::time::sleep(ACK_INTERVAL).await;
        back.send(&send_msg(&ReplMsg::Ack {
            vv: repl.applied_vv(),
        })?)
        .await?;
    }
}

async fn apply_stream(
    ks: &Keyspace,
    repl: &Replicator,
    mut rx: FrameReceiver,
) -> anyhow::Result<()> {
    while let Some(frame) = rx.recv().await? {
        match decode::<ReplMsg>(&frame)? {
            ReplMsg::Delta { origin, seq, delta } => loop {
                let verdict = repl.applied.lock().judge(origin, seq);
                match verdict {
                    Arrival::Apply => {
                        apply(ks, repl, &delta);
                        repl.advance(origin, seq);
                        let now = (repl.now_ms)();
                        repl.relay.lock().record(origin, seq, now, frame);
                        break;
                    }
                    Arrival::Duplicate => break,
                    Arrival::Gap { expected } => {
                        // A state transfer on the bulk stream may still be
                        // merging what comes before: wait for it, briefly.
                        let changed = repl.applied_changed.notified();
                        tokio::pin!(changed);
                        changed.as_mut().enable();
                        let _waiting = Waiting::new(&repl.applied_waiters);
                        let still = repl.applied.lock().judge(origin, seq);
                        if matches!(still, Arrival::Gap { .. })
                            && tokio::time::timeout(GAP_WAIT, changed).await.is_err()
                        {
                            anyhow::bail!("gap from {origin}: expected {expected}, got {seq}");
                        }
                    }
                }
            },
            ReplMsg::Snapshot { delta } => apply(ks, repl, &delta),
            ReplMsg::SnapshotDone { vv } => {
                let now = (repl.now_ms)();
                for (origin, seq) in vv {
                    if origin != repl.node {
                        repl.advance(origin, seq);
                        repl.relay.lock().jump(origin, seq, now);
                    }
                }
            }
            ReplMsg::Heartbeat {
                origin,
                seq,
                promise,
                stable,
                retired,
            } => {
                let applied = repl.applied.lock().get(origin);
                let mut gc = repl.gc.lock();
                for node in retired {
                    gc.retire(node);
                }
                // Before the writes it follows are applied (a state transfer
                // still merging), the promise says nothing yet.
                if applied >= seq {
                    gc.promise(origin, promise);
                }
                gc.report_stable(origin, stable);
            }
            ReplMsg::Resume { .. } | ReplMsg::Ack { .. } => {}
        }
    }
    Ok(())
}

/// Merges a remote delta into the keyspace, exactly as a local write merges.
fn apply(ks: &Keyspace, repl: &Replicator, delta: &Delta) {
    if ks.clock.observe(delta.stamp()).is_err() {
        repl.drift_events.fetch_add(1, Ordering::Relaxed);
    }
    match delta {
        Delta::Key { db, key, state } => {
            let db = *db as usize;
            if db >= ks.databases() {
                warn!(
                    db,
                    "replicated write for a database this node does not have"
                );
                return;
            }
            let index = ks.shard_of(key);
            let mut locked = ks.lock(SmallVec::from_slice(&[index]));
            let Ok(shard) = locked.shard(index) else {
                return;
            };
            let conflicts = shard.dbs[db].merge(key, state, ks.gc_acked());
            drop(locked);
            ks.conflicts
                .record(db, key, ks.clock.physical_unix_ms(), conflicts);
        }
        Delta::Flush { db, stamp } => {
            let mut locked = ks.lock_all();
            for shard in locked.shards() {
                match db {
                    Some(d) if (*d as usize) < shard.dbs.len() => {
                        shard.dbs[*d as usize].flush(*stamp)
                    }
                    Some(_) => {}
                    None => shard.dbs.iter_mut().for_each(|d| d.flush(*stamp)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node with a store reports as stable, and collects below, only what
    /// its last stored cut holds: after a crash it can never bring back a key
    /// whose tombstone its peers collected.
    #[test]
    fn with_a_store_the_stable_stamp_waits_for_the_cuts() {
        let ks = crate::keyspace::Keyspace::new(
            1,
            chorus_crdt::Clock::new(
                NodeId(1),
                chorus_crdt::system_clock,
                Duration::from_millis(500),
            ),
        );
        let repl = Replicator::new(NodeId(1), 1 << 20, || 0);
        assert!(!repl.gc_tick(&ks).is_zero(), "alone: its own promise");
        repl.persisting();
        assert_eq!(repl.gc_tick(&ks), Stamp::ZERO, "nothing stored yet");
        assert_eq!(repl.gc_state.lock().0, Stamp::ZERO);
        let at_cut = repl.stable_for_cut();
        repl.stored(at_cut);
        assert_eq!(repl.gc_tick(&ks), at_cut);
        assert_eq!(repl.gc_state.lock().0, at_cut);
        assert!(repl.stable_for_cut() > at_cut, "unstored, it moves on");
    }

    /// The borrowed form a node sends must decode as the owned message.
    #[test]
    fn borrowed_and_owned_messages_encode_identically() {
        let node = NodeId(42);
        let mut state = KeyState::default();
        let write = state.write(Stamp { time: 9, node }, Some(b"value"), 1234);
        state.merge(&write);
        let incr = state.incr(Stamp { time: 10, node }, 3, 0.5, true);
        for delta in [write, incr] {
            let owned = encode(&ReplMsg::Delta {
                origin: node,
                seq: 7,
                delta: Delta::Key {
                    db: 3,
                    key: b"key".to_vec(),
                    state: delta.clone(),
                },
            })
            .unwrap();
            // Appended to a reused buffer, as the backlog does.
            let borrowed = encode_append(
                &ReplMsgOut::Delta {
                    origin: node,
                    seq: 7,
                    delta: DeltaRef::Key {
                        db: 3,
                        key: b"key",
                        state: &delta,
                    },
                },
                Vec::with_capacity(8),
            )
            .unwrap();
            assert_eq!(owned, borrowed);
        }
        let stamp = Stamp { time: 5, node };
        let owned = encode(&ReplMsg::Delta {
            origin: node,
            seq: 1,
            delta: Delta::Flush { db: None, stamp },
        })
        .unwrap();
        let borrowed = encode(&ReplMsgOut::Delta {
            origin: node,
            seq: 1,
            delta: DeltaRef::Flush { db: None, stamp },
        })
        .unwrap();
        assert_eq!(owned, borrowed);
    }
}
