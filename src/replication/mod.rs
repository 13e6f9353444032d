//! Active-active replication over `chorus-transport`: a thin async driver
//! around the pure state machine in [`core`].
//!
//! Every node dials each peer named by `replicaof` and streams its own writes
//! to it; every node accepts its peers' links and merges what they send.
//!
//! - Local writes reach [`Replicator`] (the keyspace's `DeltaSink`), which
//!   numbers them into the bounded [`backlog`]. Nothing is re-stamped; a
//!   remote delta is merged, never republished (no echo).
//! - On every (re)connect the receiver sends its [`version`] vector
//!   (`Resume`); the sender resumes right after it from the backlog or, when
//!   the backlog no longer reaches back, streams its whole state (flush floors
//!   first) on a separate bulk stream, which the receiver merges, never wipes.
//! - The receiver acknowledges what it applied every 100 ms (`Ack`).
//! - A slow or dead peer never blocks writes: publishing only appends to the
//!   backlog; each peer's sender reads it at its own pace.
//! - Forwarding: every node keeps the other origins' frames it applied in a
//!   bounded [`relay`] log; a sender passes on to its peer any origin's frames
//!   the peer has not acknowledged `RELAY_DELAY_MS` after this node applied
//!   them (its link to that origin is presumed down). Receivers judge every
//!   frame by its origin's sequence number, so a write arriving by two paths
//!   is applied once.
//! - Tombstone GC: each sender sends, in order after its writes, a
//!   `Heartbeat` promise; the [`gc`] view turns promises and the stable
//!   stamps peers report into the GC floor the keyspace collects below.
//!
//! The messages are in [`wire`]; every decision (what to send, relay,
//! transfer, apply, promise, collect) is a method of [`core::Core`], which
//! has unit and property tests of its own. The tasks here only move bytes.

pub mod backlog;
pub mod core;
pub mod gc;
pub mod relay;
mod stage;
pub mod version;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chorus_crdt::digest::{
    differing_leaves, differing_settled, leaf_bits_for, Buckets, DbDigest, LeafDigest, Scope,
    TransferScope, BUCKETS, MAX_LEAF_BITS, MIN_LEAF_BITS,
};
use chorus_crdt::{Delta, KeyState, NodeId, Stamp};
use chorus_transport::peer::Backoff;
use chorus_transport::{
    AuthStats, FrameReceiver, FrameSender, PeerLink, StreamKind, Transport, TransportConfig,
    DEFAULT_MAX_FRAME,
};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tracing::{info, warn};

use self::core::{Core, GcState, Heartbeat, LinkState, PeerAcks, SEND_BATCH_BYTES};
use crate::deltalog::NumberedRead;
use crate::keyspace::{
    shard_reached, ColdReads, DeltaSink, DigestScan, Digests, GcHold, Keyspace, LeafDigests,
    ShardScan, GC_STEP, SHARDS,
};
use version::{Arrival, VersionVector};
use wire::ReplMsg;

/// A receiver compares a repair offer only if its own digest holds at
/// most this many writes the offer does not count: each may make a bucket
/// differ, and costs a needless repair of it.
const MOST_WRITES_AHEAD: u64 = 8;

/// How long a transfer's tail waits for the frames of writes its scan saw
/// (see `state_transfer`) before the link starts over.
const TAIL_WAIT: Duration = Duration::from_secs(10);

/// Refused (member, peer) pairs remembered, each logged once.
const MAX_REFUSALS_KEPT: usize = 1_024;
/// A stream asks its peer for the whole state, for a closed member's writes
/// that came alone, at most this often.
const FULL_ASK_EVERY_MS: u64 = 30_000;

/// How long a receiver holds a live delta that arrived ahead of a state
/// transfer still being merged before it gives up and resets the link (a
/// large state transfer takes a while; a reset makes the sender resume).
const GAP_WAIT: Duration = Duration::from_secs(300);
const ACK_INTERVAL: Duration = Duration::from_millis(100);
const RESUME_WAIT: Duration = Duration::from_secs(10);
/// How long a sender waits for the log's writer to write a record a peer
/// needs and the backlog no longer holds.
const LOG_NOT_YET: Duration = Duration::from_millis(5);
/// Waits for the log's writer in a row before a sender gives up on the log
/// (10 s).
const LOG_WAITS_MAX: u32 = 2_000;
/// How often an idle sender looks for writes to pass on and promises to send.
const SENDER_TICK: Duration = Duration::from_millis(100);
/// How often the node makes a promise and recomputes the GC floor.
const GC_TICK: Duration = Duration::from_millis(200);
/// The most keys a GC sweep compacts under a shard's lock at once (about
/// a tenth of a millisecond).
const GC_PIECE_KEYS: usize = 1024;
/// At most this many peer addresses are remembered for telling a restarted
/// peer by its new id.
const MAX_INBOUND_ADDRS: usize = 1024;

/// A state transfer encodes a shard in pieces of this many keys, or of
/// this many bytes (past one key), releasing the shard's lock between.
const TRANSFER_PIECE_KEYS: usize = 512;
const TRANSFER_PIECE_BYTES: usize = 1 << 20;

/// An ask's number and where its leaf digests go (`None`: the last came).
type LeafReply = (u64, tokio::sync::mpsc::UnboundedSender<Option<LeafDigest>>);

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
    /// Repairs sent to this peer.
    pub repairs: AtomicU64,
    /// Our own writes sent to this peer from the delta log (they had left
    /// the backlog).
    pub from_log: AtomicU64,
    /// Keys and bytes of state sent in transfers (whole, or what differs)
    /// and repairs.
    pub transfer_keys: AtomicU64,
    pub transfer_bytes: AtomicU64,
    /// Pub/sub messages sent to this peer, and dropped because its link
    /// had too many waiting (`OUTBOX_BYTES`) or they passed the message
    /// limit.
    pub pubsub_sent: AtomicU64,
    pub pubsub_dropped: AtomicU64,
    /// Whether the current link's live stream is compressed, and the bytes
    /// of frames before and after compression over every link.
    pub compressing: AtomicBool,
    /// Whether the peer reads own puts (else ours go to it widened).
    pub own_puts: AtomicBool,
    pub compress_in: AtomicU64,
    pub compress_out: AtomicU64,
    /// Where the peer's leaf digests go while a transfer waits for them,
    /// with the number of the ask they answer.
    leaf_reply: Mutex<Option<LeafReply>>,
    leaf_asks: AtomicU64,
    /// The repair the peer asked for on this link, not sent yet.
    repair_asked: Mutex<Option<Scope>>,
    pub last_error: Mutex<String>,
    /// The sender task, aborted when the peer is removed.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl PeerInfo {
    /// A link came up and the peer said what it holds. What it acknowledged
    /// on an earlier link no longer counts: a peer that restarted empty
    /// holds less than it once acknowledged, and WAIT must not count it.
    fn resumed(&self, me: NodeId, resume: VersionVector) {
        self.acked_seq.store(resume.get(me), Ordering::Relaxed);
        *self.acked_vv.lock() = resume;
        *self.repair_asked.lock() = None;
    }

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
            repairs: AtomicU64::new(0),
            from_log: AtomicU64::new(0),
            transfer_keys: AtomicU64::new(0),
            transfer_bytes: AtomicU64::new(0),
            compressing: AtomicBool::new(false),
            own_puts: AtomicBool::new(false),
            compress_in: AtomicU64::new(0),
            compress_out: AtomicU64::new(0),
            pubsub_sent: AtomicU64::new(0),
            pubsub_dropped: AtomicU64::new(0),
            leaf_reply: Mutex::new(None),
            leaf_asks: AtomicU64::new(0),
            repair_asked: Mutex::new(None),
            last_error: Mutex::new(String::new()),
            task: Mutex::new(None),
        }
    }
}

/// The replication state shared by the keyspace (as its sink) and the
/// tasks: the pure [`Core`] under one lock, and what the tasks need to wake
/// each other and to report.
///
/// Lock order: keyspace shard locks, then `core` (local writes reach it
/// from inside a shard lock; the GC promise takes every shard lock, then
/// `core`); and `running`, then `peers`, then one peer's fields
/// (`add_peer`). `core` and `peers` are never held together. No lock is
/// held across an await.
pub struct Replicator {
    node: NodeId,
    /// The heads of `node`'s writes.
    heads: wire::Heads,
    /// Unique in the process (a thread's staged writes name it).
    id: u64,
    /// The newest number a write of ours took. A write is numbered when it
    /// is made, under its shard's lock; its frame may wait in a stage (see
    /// [`stage`]) before it reaches the backlog (`Core::head`).
    numbered: AtomicU64,
    /// Wall clock for lag figures (the node's physical clock).
    now_ms: fn() -> u64,
    core: Mutex<Core>,
    /// Wakes senders waiting for a write; only signalled while one waits
    /// (`sleepers`), so a busy node pays nothing for it per write.
    wake: tokio::sync::Notify,
    sleepers: std::sync::atomic::AtomicUsize,
    /// Wakes receivers holding a frame that arrived ahead of its turn;
    /// signalled only while one waits.
    applied_changed: tokio::sync::Notify,
    applied_waiters: std::sync::atomic::AtomicUsize,
    pub peers: Mutex<Vec<Arc<PeerInfo>>>,
    /// Remote stamps too far ahead of our clock (merged, clock not dragged).
    pub drift_events: AtomicU64,
    /// Digests a peer offered that differed from ours with the same writes
    /// applied (each answered by a repair request).
    pub repairs_asked: AtomicU64,
    /// Peers' writes that came as own puts (INFO `own_puts_received`).
    pub own_puts_received: AtomicU64,
    /// Digests a peer offered that were not compared: our GC floor past
    /// the offer's (see `GC_STEP`), or our digest holding more than
    /// `MOST_WRITES_AHEAD` writes the offer's vector does not count.
    pub offers_skipped: AtomicU64,
    /// Digests a peer offered that were compared with ours.
    pub offers_compared: AtomicU64,
    /// How often a quiet link offers its digest (see `ReplMsg::Digest`);
    /// 0: never.
    repair_interval_ms: AtomicU64,
    /// The last keyspace digest and what the state was when it was taken
    /// (see [`shared_digest`]): every link's offer and every answer to one
    /// reuse it until the state changes.
    digest: Mutex<Option<(DigestAt, TakenDigest)>>,
    /// Held while a digest is taken: one scan at a time, and a second
    /// asker finds the first's digest kept.
    digest_scan: tokio::sync::Mutex<()>,
    /// Keyspace digests taken (each one reads every key).
    pub digests_taken: AtomicU64,
    /// Links refused because a closed removed peer holds writes this node
    /// never received (see `Core::admits`).
    pub refused_closed: AtomicU64,
    /// (closed member, peer) of every link refused for bringing that
    /// member's writes, up to `MAX_REFUSALS_KEPT`.
    refused: Mutex<std::collections::BTreeSet<(NodeId, NodeId)>>,
    pub auth: Mutex<Option<Arc<AuthStats>>>,
    pub listen: Mutex<Option<SocketAddr>>,
    running: Mutex<Option<Running>>,
    /// The node id that last linked in from each address: a different one
    /// there is a restarted peer, whose earlier life is retired (as a
    /// sender finds on the links it dials, which may not have been up
    /// before the restart).
    inbound: Mutex<HashMap<SocketAddr, NodeId>>,
    /// Node names as configured (`node-name`): this node's, and each
    /// peer's as it told it in the handshake. At most `MAX_NAMES_KEPT`.
    names: Mutex<HashMap<NodeId, String>>,
    /// With `appendonly yes`: where every applied write is appended.
    log: std::sync::OnceLock<Arc<crate::deltalog::DeltaLog>>,
    /// The largest message a link carries (a leaf digest must fit).
    max_message: AtomicU64,
    /// `repl-compression lz4`.
    compress: AtomicBool,
    /// Each connected link's pub/sub messages waiting to be sent.
    outboxes: Mutex<Vec<Arc<Outbox>>>,
}

/// Most bytes of pub/sub messages one link holds unsent; past it a message
/// is dropped for that peer (at most once: never a blocked publisher).
pub const OUTBOX_BYTES: usize = 16 << 20;

/// One link's pub/sub messages waiting to be sent, each with the newest of
/// our writes when it was published: it goes once the link has sent that
/// write, so a subscriber there that reads after a message sees what its
/// publisher wrote before publishing.
struct Outbox {
    info: Arc<PeerInfo>,
    queue: Mutex<(std::collections::VecDeque<(u64, bytes::Bytes)>, usize)>,
}

impl Outbox {
    fn push(&self, after: u64, frame: bytes::Bytes) {
        let mut q = self.queue.lock();
        // One message past the bound still goes when nothing waits (the
        // message limit bounds it).
        if !q.0.is_empty() && q.1 + frame.len() > OUTBOX_BYTES {
            self.info.pubsub_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.1 += frame.len();
        q.0.push_back((after, frame));
    }

    /// The messages whose writes were sent (`sent` and below).
    fn take_through(&self, sent: u64) -> Vec<bytes::Bytes> {
        let mut q = self.queue.lock();
        let mut ready = Vec::new();
        while q.0.front().is_some_and(|(after, _)| *after <= sent) {
            if let Some((_, frame)) = q.0.pop_front() {
                q.1 -= frame.len();
                ready.push(frame);
            }
        }
        ready
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.queue.lock().0.is_empty()
    }

    /// Whether a message could go once the link has sent `sent`: one
    /// published after a write still staged waits for it (the batch that
    /// hands it over wakes the sender).
    fn has_ready(&self, sent: u64) -> bool {
        self.queue
            .lock()
            .0
            .front()
            .is_some_and(|(after, _)| *after <= sent)
    }
}

/// A link's outbox, registered while the link is up.
struct OutboxGuard<'a> {
    repl: &'a Replicator,
    outbox: Arc<Outbox>,
}

impl<'a> OutboxGuard<'a> {
    fn new(repl: &'a Replicator, info: &Arc<PeerInfo>) -> OutboxGuard<'a> {
        let outbox = Arc::new(Outbox {
            info: info.clone(),
            queue: Mutex::new((std::collections::VecDeque::new(), 0)),
        });
        repl.outboxes.lock().push(outbox.clone());
        OutboxGuard { repl, outbox }
    }
}

impl Drop for OutboxGuard<'_> {
    fn drop(&mut self) {
        self.repl
            .outboxes
            .lock()
            .retain(|o| !Arc::ptr_eq(o, &self.outbox));
    }
}

/// Node names kept; past it the map starts over (a name is only shown).
const MAX_NAMES_KEPT: usize = 1024;

/// What adding a peer at run time needs.
struct Running {
    ks: std::sync::Weak<Keyspace>,
    transport: Arc<Transport>,
    /// The runtime replication started on: a peer added from outside it (a
    /// simulation's workload) still gets its task there.
    runtime: tokio::runtime::Handle,
}

impl Replicator {
    pub fn new(node: NodeId, backlog_bytes: usize, now_ms: fn() -> u64) -> Arc<Replicator> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Arc::new(Replicator {
            node,
            heads: wire::Heads::new(node),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            numbered: AtomicU64::new(0),
            now_ms,
            core: Mutex::new(Core::new(node, backlog_bytes)),
            wake: tokio::sync::Notify::new(),
            sleepers: std::sync::atomic::AtomicUsize::new(0),
            applied_changed: tokio::sync::Notify::new(),
            applied_waiters: std::sync::atomic::AtomicUsize::new(0),
            peers: Mutex::new(Vec::new()),
            drift_events: AtomicU64::new(0),
            repairs_asked: AtomicU64::new(0),
            own_puts_received: AtomicU64::new(0),
            offers_skipped: AtomicU64::new(0),
            offers_compared: AtomicU64::new(0),
            repair_interval_ms: AtomicU64::new(30_000),
            digest: Mutex::new(None),
            digest_scan: tokio::sync::Mutex::new(()),
            digests_taken: AtomicU64::new(0),
            refused_closed: AtomicU64::new(0),
            refused: Mutex::new(std::collections::BTreeSet::new()),
            names: Mutex::new(HashMap::new()),
            auth: Mutex::new(None),
            listen: Mutex::new(None),
            inbound: Mutex::new(HashMap::new()),
            running: Mutex::new(None),
            log: std::sync::OnceLock::new(),
            max_message: AtomicU64::new(DEFAULT_MAX_FRAME as u64),
            compress: AtomicBool::new(false),
            outboxes: Mutex::new(Vec::new()),
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

    /// The newest sequence number handed out (a write's frame may still
    /// wait in a stage: what WAIT and PUBLISH count by it goes out first).
    pub fn head_seq(&self) -> u64 {
        self.numbered.load(Ordering::Acquire)
    }

    /// The newest of our writes in the backlog, ready to send.
    fn backlog_head(&self) -> u64 {
        self.core.lock().head()
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
        let task = run.runtime.spawn(sender(
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
        let mut gone = Vec::new();
        let removed = {
            let mut peers = self.peers.lock();
            let before = peers.len();
            peers.retain(|p| {
                let hit = addr.is_none_or(|a| p.addr == a);
                if hit {
                    if let Some(task) = p.task.lock().take() {
                        task.abort();
                    }
                    gone.extend(NodeId::new(p.peer_node.load(Ordering::Relaxed)));
                }
                !hit
            });
            before - peers.len()
        };
        let now = (self.now_ms)();
        let mut core = self.core.lock();
        for node in gone {
            core.forget(node, now);
        }
        removed
    }

    /// The backlog as INFO shows it.
    pub fn backlog_state(&self) -> BacklogState {
        let core = self.core.lock();
        let now = (self.now_ms)();
        BacklogState {
            head_seq: core.head(),
            bytes: core.backlog_bytes(),
            span_ms: core.backlog().span_ms(now),
            covers_ms: core.backlog().covers_ms(now),
        }
    }

    /// `client-output-buffer-limit replica`: how far the backlog grows past
    /// its size for connected peers it has yet to send to.
    pub fn set_peer_buffer_limit(&self, limit: crate::config::OutputBufferLimit) {
        let bytes = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        self.core.lock().set_hold_limit(backlog::HoldLimit {
            hard: bytes(limit.hard),
            soft: bytes(limit.soft),
            soft_ms: limit.soft_seconds.saturating_mul(1000),
        });
    }

    /// `repl-backlog-min-seconds`: the backlog keeps this long's writes
    /// past its size (within the replica buffer limit's hard bound), so a
    /// peer away that long resumes from it whatever the write rate.
    pub fn set_backlog_min_seconds(&self, secs: u64) {
        self.core
            .lock()
            .set_backlog_keep_ms(secs.saturating_mul(1000));
    }

    /// The delta log, with `appendonly yes`.
    pub fn log(&self) -> Option<&Arc<crate::deltalog::DeltaLog>> {
        self.log.get()
    }

    /// How long the oldest write `peer` has not acknowledged has waited, in
    /// ms; -1 when it is older than the backlog.
    pub fn lag_ms(&self, peer: &PeerInfo) -> i64 {
        let acked = peer.acked_seq.load(Ordering::Relaxed);
        let lag = self.core.lock().lag_ms(acked, (self.now_ms)());
        lag.map_or(-1, |ms| ms as i64)
    }

    /// `removed-peer-grace` (see `Core::set_removed_grace`).
    pub fn set_removed_grace(&self, grace: Duration) {
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.core.lock().set_removed_grace(ms);
    }

    /// Peers (node ids) whose links were refused for holding writes of a
    /// member removed past its grace that this node never received, without
    /// the deletes collected here since (see `Replicator::judge_transfer`).
    pub fn refused_nodes(&self) -> Vec<NodeId> {
        let refused = self.refused.lock();
        let senders: std::collections::BTreeSet<NodeId> =
            refused.iter().map(|(_, sender)| *sender).collect();
        senders.into_iter().collect()
    }

    /// A write of closed `origin` numbered past what we applied arrived:
    /// it may be older than a delete collected here without it. Reopens
    /// `origin` when nothing was collected past its promise (all its writes
    /// we lack are newer than anything collected) and says so (true). The
    /// floor is capped first, and both under every shard lock, so that
    /// nothing is collected past it meanwhile.
    /// `via`: the peer whose link brought them (`origin` itself: it is
    /// linked here, and counts again as a peer).
    fn reopen_if_clear(&self, ks: &Keyspace, origin: NodeId, via: NodeId) -> bool {
        let Some(promise) = self.core.lock().closed_promise(origin) else {
            return true;
        };
        // What was collected only grows: no need to stop every shard for a
        // member that stays closed (each of its frames comes here).
        if ks.collected() > promise {
            return false;
        }
        let _all = ks.lock_all();
        let mut core = self.core.lock();
        let Some(promise) = core.closed_promise(origin) else {
            return true;
        };
        ks.cap_gc_floor(promise);
        // ZERO for both: nothing was ever collected here.
        if ks.collected() <= promise {
            core.reopen(origin, via == origin, (self.now_ms)());
            return true;
        }
        false
    }

    /// A state transfer from `sender` holding writes up to `vv` begins. For
    /// each closed member it holds writes of that we never received:
    /// reopened if nothing was collected here past it, taken if the
    /// sender's state holds every delete we collected past it
    /// (`Core::carries`), refused otherwise. Returns the writes of closed
    /// members it brings.
    fn judge_transfer(
        &self,
        ks: &Keyspace,
        sender: NodeId,
        vv: &[(NodeId, u64)],
    ) -> Result<Vec<(NodeId, u64)>, LinkError> {
        let beyond: Vec<(NodeId, u64)> = {
            let core = self.core.lock();
            vv.iter()
                .copied()
                .filter(|(origin, seq)| !core.admits(*origin, *seq))
                .collect()
        };
        let mut carried = Vec::new();
        for (origin, seq) in beyond {
            if self.reopen_if_clear(ks, origin, sender) {
                continue;
            }
            if self.core.lock().carries(sender, origin, ks.collected()) {
                carried.push((origin, seq));
                continue;
            }
            self.refused_closed.fetch_add(1, Ordering::Relaxed);
            let first = {
                let mut refused = self.refused.lock();
                refused.len() < MAX_REFUSALS_KEPT && refused.insert((origin, sender))
            };
            if first {
                warn!(
                    node = %origin,
                    sender = %sender,
                    "refusing writes of removed member {origin} that this node never received: \
                     deletes were collected without it once its removed-peer-grace ran out, and \
                     they could bring deleted keys back; the node holding them must restart with \
                     an empty store to rejoin (those writes are then lost)"
                );
            }
            return Err(LinkError::Refused(origin));
        }
        Ok(carried)
    }

    /// Records `node`'s configured name (nothing for an empty one).
    pub fn note_name(&self, node: NodeId, name: &str) {
        if name.is_empty() {
            return;
        }
        let mut names = self.names.lock();
        if names.len() >= MAX_NAMES_KEPT && !names.contains_key(&node) {
            names.clear();
        }
        names.insert(node, name.to_string());
    }

    /// `node`'s configured name, if this node has learnt it (its own, or
    /// a peer's that linked with it).
    pub fn name_of(&self, node: NodeId) -> Option<String> {
        self.names.lock().get(&node).cloned()
    }

    /// How often a quiet link offers its digest; zero: never.
    pub fn set_repair_interval(&self, every: Duration) {
        self.repair_interval_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Every write applied here, this node's own included.
    fn full_vv(&self) -> VersionVector {
        let mut vv = self.core.lock().applied_vv().clone();
        vv.advance(self.node, self.head_seq());
        vv
    }

    /// What this node has applied from each other origin.
    pub fn applied_vv(&self) -> Vec<(NodeId, u64)> {
        self.core.lock().applied_vv().entries()
    }

    /// Bytes of other origins' writes kept for forwarding.
    pub fn relay_bytes(&self) -> usize {
        self.core.lock().relay_bytes()
    }

    /// Bytes of writes kept for peers: the backlog and the relay logs,
    /// each bounded by `repl-backlog-size`.
    pub fn buffered_bytes(&self) -> usize {
        let core = self.core.lock();
        core.backlog_bytes() + core.relay_bytes()
    }

    /// Earlier lives of restarted peers.
    pub fn retired(&self) -> Vec<NodeId> {
        self.core.lock().retired()
    }

    /// Our stable stamp and the GC floor, as last computed.
    pub fn gc_state(&self) -> GcState {
        self.core.lock().gc_state()
    }

    /// The node keeps its state in a store: from now on its stable stamp
    /// waits for the cuts (see [`Replicator::stored`]).
    pub fn persisting(&self) {
        self.core.lock().persisting();
    }

    /// The stable stamp to record with a cut about to be taken: everything
    /// stamped up to it was applied before the cut.
    pub fn stable_for_cut(&self) -> Stamp {
        self.core.lock().stable_for_cut()
    }

    /// A cut taken after `stable` was computed is durable.
    pub fn stored(&self, stable: Stamp) {
        self.core.lock().stored(stable);
    }

    /// What a cut records as applied (see [`Core::cut_vv`]).
    pub fn cut_vv(&self) -> Vec<(NodeId, u64)> {
        let numbered = self.head_seq();
        self.core.lock().cut_vv(numbered)
    }

    /// Starts from a store: `applied` as the store holds it (resumed from
    /// there), `lives` the earlier lives of this node, retired.
    pub fn restore(&self, applied: &[(NodeId, u64)], lives: &[NodeId]) {
        let now = (self.now_ms)();
        self.core.lock().restore(applied, lives, now);
    }

    /// From now on every write this node applies, its own and its peers',
    /// is appended to `log` as the frame replication encoded for it.
    pub fn set_log(&self, log: Arc<crate::deltalog::DeltaLog>) {
        let _ = self.log.set(log);
    }

    /// A write merged from the delta log at a restart (see
    /// [`Core::replayed`]).
    pub fn replayed(&self, origin: NodeId, seq: u64) {
        let now = (self.now_ms)();
        self.core.lock().replayed(origin, seq, now);
    }

    /// The stable stamp of the last cut known durable (with a store).
    pub fn stored_stable(&self) -> Option<Stamp> {
        self.core.lock().stored_stable()
    }

    /// Makes a new promise and recomputes our stable stamp and the GC floor.
    pub(crate) fn gc_tick(&self, ks: &Keyspace) -> Stamp {
        {
            // Every write is stamped and numbered under its shard's lock:
            // with all of them held, each write is either numbered by now or
            // will be stamped after this.
            let _all = ks.lock_all();
            let numbered = self.head_seq();
            self.core.lock().promise(ks.clock.now(), numbered);
        }
        let peers = self.peers.lock().clone();
        if let Some(log) = self.log.get() {
            log.keep_for_peers(
                peers
                    .iter()
                    .map(|p| p.acked_seq.load(Ordering::Relaxed) + 1)
                    .collect(),
            );
        }
        let unknown_peer = peers
            .iter()
            .any(|p| p.peer_node.load(Ordering::Relaxed) == 0);
        let acked: Vec<PeerAcks> = peers
            .iter()
            .map(|p| PeerAcks {
                id: NodeId::new(p.peer_node.load(Ordering::Relaxed)),
                acked: p.acked_vv.lock().clone(),
            })
            .collect();
        let mut core = self.core.lock();
        let settled = core.settled(&acked, (self.now_ms)());
        let floor = core.gc_tick(&settled, unknown_peer).floor;
        // Under the lock: a reopening (`reopen_if_clear`) caps the floor
        // after this or is counted in it, never overwritten by a floor
        // computed without it.
        ks.set_gc_floor(floor);
        floor
    }

    fn wake_receivers(&self) {
        if self.applied_waiters.load(Ordering::SeqCst) > 0 {
            self.applied_changed.notify_waiters();
        }
    }

    /// Publishes a local write whose body `encode` appends: numbered now,
    /// its frame staged when this thread has a batch open, else put into
    /// the backlog now.
    fn publish(&self, now_ms: u64, encode: impl FnOnce(&mut Vec<u8>)) {
        let seq = self.numbered.fetch_add(1, Ordering::AcqRel) + 1;
        let gap = Gap {
            repl: self,
            seq,
            now_ms,
        };
        let staged = stage::stage(self.id, &self.heads, seq, now_ms, encode);
        self.publish_numbered(gap, staged);
    }

    /// [`Replicator::publish`] for a payload of at most `most` bytes that
    /// `put` writes whole (given the number) at the start of a slice,
    /// returning how many: staged in one stretch of the stage
    /// ([`stage::stage_put`]). Without a batch open, `full` appends the
    /// body of the write's `ReplMsg::Delta` instead.
    #[inline(always)]
    fn publish_put(
        &self,
        now_ms: u64,
        most: usize,
        put: impl FnOnce(&mut [u8], u64) -> usize,
        full: impl FnOnce(&mut Vec<u8>),
    ) {
        let seq = self.numbered.fetch_add(1, Ordering::AcqRel) + 1;
        let gap = Gap {
            repl: self,
            seq,
            now_ms,
        };
        let staged = match stage::stage_put(self.id, seq, now_ms, most, put) {
            Ok(now) => Ok(stage::Staged::Yes(now)),
            Err(_) => stage::stage(self.id, &self.heads, seq, now_ms, full),
        };
        self.publish_numbered(gap, staged);
    }

    /// The rest of a publish, once write `gap.seq` is numbered and given
    /// to the stage: `staged` is what the stage did with it.
    fn publish_numbered<F: FnOnce(&mut Vec<u8>)>(
        &self,
        gap: Gap<'_>,
        staged: Result<stage::Staged, F>,
    ) {
        let (seq, now_ms) = (gap.seq, gap.now_ms);
        let encode = match staged {
            Ok(stage::Staged::Yes(false)) => return gap.filled(),
            Ok(stage::Staged::Yes(true)) => {
                gap.filled();
                self.publish_staged();
                return;
            }
            Ok(stage::Staged::TooLarge(payload)) => {
                // Entered (parked behind this thread's staged writes)
                // before the gap counts as filled: a panic in publishing
                // them must not replace this write by the gap's no-op.
                let mut core = self.core.lock();
                self.enter(&mut core, seq, now_ms, [&payload, &[]]);
                drop(core);
                gap.filled();
                self.publish_staged();
                self.wake_senders();
                return;
            }
            Err(encode) => encode,
        };
        thread_local! {
            static BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BODY.with_borrow_mut(|body| {
            body.clear();
            encode(body);
            let head = self.heads.of(seq);
            let mut core = self.core.lock();
            self.enter(&mut core, seq, now_ms, [head.as_slice(), body]);
            drop(core);
            if body.capacity() > 64 * 1024 {
                *body = Vec::new();
            }
        });
        gap.filled();
        self.wake_senders();
    }

    /// Puts this thread's staged writes into the backlog (and the log):
    /// in one copy when they are the backlog's next writes, as they are
    /// unless another thread numbered one among them.
    fn publish_staged(&self) {
        let published = stage::drain(self.id, |frames, writes| {
            let mut core = self.core.lock();
            let (Some(first), Some(last)) = (writes.first(), writes.last()) else {
                return;
            };
            let next = core.head() + 1;
            if first.0 != next || last.0 - first.0 + 1 != writes.len() as u64 {
                for (seq, payload, now_ms) in stage::payloads(frames, writes) {
                    self.enter(&mut core, seq, now_ms, [payload, &[]]);
                }
                return;
            }
            // The log first: a panic between the two leaves logged what
            // the backlog lacks, and the retry enters it there; the other
            // way round, the retry found the writes entered and skipped
            // the log's records for good.
            if let Some(log) = self.log.get() {
                let payloads = || stage::payloads(frames, writes).map(|(seq, p, _)| (seq, p));
                if payloads().any(|(_, p)| chorus_crdt::codec::is_own_put(p)) {
                    let wide: Vec<_> = payloads().map(|(seq, p)| (seq, self.logged(p))).collect();
                    log.append_numbered_run(wide.iter().map(|(seq, p)| (*seq, &p[..])));
                } else {
                    log.append_numbered_run(payloads());
                }
            }
            let mut start = 0;
            core.publish_framed_run(
                frames,
                writes.iter().map(|&(_, end, now_ms)| {
                    let len = end - start;
                    start = end;
                    (len, now_ms)
                }),
            );
            self.enter_parked(&mut core);
        });
        if published {
            self.wake_senders();
        }
    }

    /// Puts write `seq` (its payload: `parts` back to back) into the
    /// backlog and the log, with the parked writes that were waiting for
    /// it; parks it if one before it is still staged on another thread
    /// (backlog and log hold writes in order).
    fn enter(&self, core: &mut Core, seq: u64, now_ms: u64, parts: [&[u8]; 2]) {
        if seq <= core.head() {
            // Entered already (a drain that a panic cut short, retried).
        } else if seq != core.head() + 1 {
            core.park(seq, now_ms, parts.concat());
        } else {
            self.append(core, seq, now_ms, parts);
        }
        // The write the head waits for may be parked already: one whose
        // entry a panic cut short.
        self.enter_parked(core);
    }

    fn enter_parked(&self, core: &mut Core) {
        let log = self.log.get();
        core.enter_parked(|seq, payload| {
            if let Some(log) = log {
                log.append_numbered(&self.logged(payload), seq);
            }
        });
    }

    /// The log first, as in [`Replicator::publish_staged`].
    fn append(&self, core: &mut Core, seq: u64, now_ms: u64, parts: [&[u8]; 2]) {
        if let Some(log) = self.log.get() {
            match parts {
                [own, []] if chorus_crdt::codec::is_own_put(own) => {
                    log.append_numbered(&self.logged(own), seq);
                }
                _ => {
                    log.append_numbered_parts(&parts, seq);
                }
            }
        }
        core.publish_parts(now_ms, parts[0], parts[1]);
    }

    /// A payload of ours as the log keeps it: an own put widened, for the
    /// log reads it back without a link to name its origin. (Own puts are
    /// made only without a log; this covers a batch staged as one was
    /// attached.)
    fn logged<'a>(&self, payload: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        wire::widen(payload, self.node).unwrap_or(std::borrow::Cow::Borrowed(payload))
    }

    fn wake_senders(&self) {
        // Pairs with the sender's increment before it rechecks the head.
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.wake.notify_waiters();
        }
    }
}

/// A number taken for a write whose frame is not yet staged or entered.
/// A panic before it is would leave a gap that every later frame parks
/// behind for good: on unwinding, the number gets a frame that changes
/// nothing (a flush of database 0 at the zero stamp, before every write).
struct Gap<'a> {
    repl: &'a Replicator,
    seq: u64,
    now_ms: u64,
}

impl Gap<'_> {
    fn filled(self) {
        std::mem::forget(self);
    }
}

impl Drop for Gap<'_> {
    fn drop(&mut self) {
        let mut body = Vec::new();
        wire::append_flush_body(&mut body, Some(0), Stamp::ZERO);
        let head = self.repl.heads.of(self.seq);
        let mut core = self.repl.core.lock();
        self.repl
            .enter(&mut core, self.seq, self.now_ms, [head.as_slice(), &body]);
    }
}

/// The backlog as INFO shows it.
#[derive(Debug, Clone, Copy)]
pub struct BacklogState {
    pub head_seq: u64,
    pub bytes: usize,
    /// How long ago the oldest write held was made.
    pub span_ms: Option<u64>,
    /// How long an outage the backlog covers at the recent write rate.
    pub covers_ms: Option<u64>,
}

impl DeltaSink for Replicator {
    fn publish_key(&self, db: u32, key: &[u8], state: &KeyState, now_ms: u64) {
        use chorus_crdt::codec;
        if let Some(body_most) = codec::plain_key_delta_most(key, state) {
            let origin = Some(self.node);
            let body =
                move |out: &mut [u8]| codec::put_plain_key_delta(out, origin, db, key, state);
            let full = move |out: &mut Vec<u8>| codec::append_put(out, body_most, body);
            // The log keeps a write as the backlog holds it, and reads it
            // back without the link that names an own put's origin: with
            // a log, the full form.
            let own_most = match self.log.get() {
                None => codec::own_put_most(key, state, self.node),
                Some(_) => None,
            };
            if let Some(most) = own_most {
                let own = |out: &mut [u8], seq| codec::put_own_put(out, seq, db, key, state);
                return self.publish_put(now_ms, most, own, full);
            }
            let heads = &self.heads;
            let whole = move |out: &mut [u8], seq| {
                let head = heads.put(out, seq);
                head + body(&mut out[head..])
            };
            return self.publish_put(now_ms, wire::HEAD_ROOM + body_most, whole, full);
        }
        self.publish(now_ms, |out| {
            let start = out.len();
            if let Err(e) = wire::append_own_key_body(out, self.node, db, key, state) {
                // Our own types always encode; a frame without a body only
                // makes the peer reset the link and resume.
                warn!(error = %e, "a write did not encode");
                out.truncate(start);
            }
        });
    }

    fn publish_coll(&self, db: u32, key: &[u8], delta: &chorus_crdt::Coll, now_ms: u64) {
        self.publish(now_ms, |out| {
            wire::append_coll_body(out, self.heads.origin(), db, key, delta)
        });
    }

    fn publish_one(
        &self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        one: &chorus_crdt::OneWrite,
        elem: &[u8],
        written: chorus_crdt::Written<'_>,
        now_ms: u64,
    ) {
        self.publish(now_ms, |out| {
            wire::append_one_body(out, self.heads.origin(), db, key, stamp, one, elem, written)
        });
    }

    fn publish_many(
        &self,
        db: u32,
        key: &[u8],
        stamp: Stamp,
        kind: chorus_crdt::Kind,
        many: &chorus_crdt::ManyWrite,
        now_ms: u64,
    ) {
        self.publish(now_ms, |out| {
            wire::append_many_body(out, self.heads.origin(), db, key, stamp, kind, many)
        });
    }

    fn publish_flush(&self, db: Option<u32>, stamp: Stamp, now_ms: u64) {
        self.publish(now_ms, |out| wire::append_flush_body(out, db, stamp));
    }

    fn publish_tally(
        &self,
        db: u32,
        key: &[u8],
        node: NodeId,
        tally: chorus_crdt::Tally,
        now_ms: u64,
    ) {
        self.publish(now_ms, |out| {
            wire::append_tally_body(out, db, key, node, tally)
        });
    }

    fn open_batch(&self) {
        stage::open(self.id);
    }

    fn close_batch(&self) {
        self.publish_staged();
        stage::close(self.id);
    }

    fn hand_over(&self) {
        self.publish_staged();
    }

    fn numbered(&self) -> Option<u64> {
        Some(self.head_seq())
    }

    fn publish_message(&self, space: crate::pubsub::Space, channel: &[u8], message: &[u8]) {
        if self.outboxes.lock().is_empty() {
            return;
        }
        let after = self.head_seq();
        let msg = ReplMsg::Publish {
            after,
            sharded: space == crate::pubsub::Space::Shard,
            channel: channel.to_vec(),
            message: message.to_vec(),
        };
        let Ok(frame) = chorus_crdt::encode(&msg) else {
            return;
        };
        let frame = bytes::Bytes::from(frame);
        let too_large = frame.len() > self.max_message.load(Ordering::Relaxed) as usize;
        for outbox in self.outboxes.lock().iter() {
            if too_large {
                outbox.info.pubsub_dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                outbox.push(after, frame.clone());
            }
        }
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.wake.notify_waiters();
        }
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
    /// This node's `node-name` (empty: none).
    pub node_name: String,
    pub secret: Vec<u8>,
    pub tls: Option<chorus_transport::tls::TlsFiles>,
    /// The largest message a link carries: a write of the largest key and
    /// value a client may send (see [`max_message_for`]).
    pub max_message: usize,
    /// `repl-window-size`: bytes a link's stream may have in flight.
    pub window: u64,
    /// `repl-congestion-control`.
    pub congestion: chorus_transport::Congestion,
    /// `repl-compression lz4`.
    pub compression: bool,
}

/// The largest replication message for a node whose clients may send bulk
/// strings of `proto_max_bulk_len` bytes: one write holds a key and a value
/// of up to that size each, plus its encoding's overhead.
pub fn max_message_for(proto_max_bulk_len: usize) -> usize {
    proto_max_bulk_len
        .saturating_mul(2)
        .saturating_add(1024 * 1024)
}

/// Binds the replication endpoint and starts the accept loop and one sender
/// per peer. Returns the bound address.
pub fn start(
    ks: Arc<Keyspace>,
    repl: Arc<Replicator>,
    config: ReplConfig,
) -> Result<SocketAddr, StartError> {
    let mut transport_config =
        TransportConfig::new(repl.node.0, &config.cluster_name, &config.secret);
    transport_config.tls = config.tls;
    transport_config.max_frame = config.max_message;
    transport_config.node_name = config.node_name.clone();
    transport_config.window = config.window;
    repl.max_message
        .store(config.max_message as u64, Ordering::Relaxed);
    repl.compress.store(config.compression, Ordering::Relaxed);
    transport_config.congestion = config.congestion;
    repl.note_name(repl.node, &config.node_name);
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
) -> Result<SocketAddr, StartError> {
    let addr = transport.local_addr()?;
    *repl.auth.lock() = Some(transport.stats.clone());
    *repl.listen.lock() = Some(addr);
    info!("replication listening on udp {addr}");
    let transport = Arc::new(transport);
    *repl.running.lock() = Some(Running {
        ks: Arc::downgrade(&ks),
        transport: transport.clone(),
        runtime: tokio::runtime::Handle::current(),
    });
    tokio::spawn(gc_loop(ks.clone(), repl.clone()));
    tokio::spawn(accept_loop(ks, repl.clone(), transport));
    for peer in peers {
        repl.add_peer(peer)
            .map_err(|reason| StartError::Peer { addr: peer, reason })?;
    }
    Ok(addr)
}

/// Why replication could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Transport(#[from] chorus_transport::TransportError),
    #[error("peer {addr}: {reason}")]
    Peer {
        addr: SocketAddr,
        reason: &'static str,
    },
}

/// Why a link, or one of its streams, ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Transport(#[from] chorus_transport::TransportError),
    #[error("a message does not decode: {0}")]
    Decode(#[from] chorus_crdt::DecodeError),
    #[error("encoding a message: {0}")]
    Encode(#[from] chorus_crdt::EncodeError),
    #[error("the peer sent no Resume within {0:?}")]
    ResumeTimeout(Duration),
    #[error("expected Resume from the peer, got {0}")]
    Protocol(String),
    #[error("link closed: {0}")]
    Closed(String),
    #[error("gap from {origin}: expected {expected}, got {seq}")]
    Gap {
        origin: NodeId,
        expected: u64,
        seq: u64,
    },
    #[error(transparent)]
    Keyspace(#[from] crate::keyspace::NotLocked),
    #[error(
        "refused: this node holds writes of {0}, a member removed from the peer's mesh, that \
         the peer never received; it collected deletes without them once removed-peer-grace \
         ran out, and they could bring deleted keys back. Restart this node with an empty store \
         to rejoin"
    )]
    Refused(NodeId),
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

fn send_msg(msg: &ReplMsg) -> Result<Vec<u8>, LinkError> {
    Ok(wire::encode_msg(msg)?)
}

/// Promises, the GC floor, and sweeping tombstones below it.
async fn gc_loop(ks: Arc<Keyspace>, repl: Arc<Replicator>) {
    loop {
        tokio::time::sleep(GC_TICK).await;
        let floor = repl.gc_tick(&ks);
        let sweep = repl.core.lock().sweep_due(floor);
        if sweep {
            let mut collected = 0;
            for shard in 0..SHARDS {
                // Connections on this thread run between pieces: a sweep
                // of a million keys stalled them ~10 ms at once, and a
                // shard whole held its writes up for all its keys.
                let mut scan = ShardScan::default();
                while !ks.collect_garbage_piece(shard, &mut scan, GC_PIECE_KEYS, &mut collected) {
                    tokio::task::yield_now().await;
                }
                tokio::task::yield_now().await;
            }
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
                let previous = NodeId::new(before);
                if previous.is_some_and(|p| p.0 != link.peer_node) {
                    info!(peer = %addr, old = %NodeId(before), "peer restarted with a new node id; its old id is retired");
                }
                repl.core.lock().link_up(NodeId(link.peer_node), previous);
                repl.note_name(NodeId(link.peer_node), &link.peer_name);
                info!(peer = %addr, node = %NodeId(link.peer_node), name = %link.peer_name, "replication link up");
                if let Err(e) = serve_peer(&ks, &repl, &link, &info).await {
                    *info.last_error.lock() = e.to_string();
                    info!(peer = %addr, "replication link down: {e}");
                }
                link.close("resetting");
                info.connected.store(false, Ordering::Relaxed);
                info.compressing.store(false, Ordering::Relaxed);
            }
            Err(e) => *info.last_error.lock() = e.to_string(),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Whether this node's receivers name [`wire::OWN_PUT`] in their
/// `Resume`. An earlier build's do not; `CHORUS_OWN_PUTS=no` in the
/// environment makes this one's behave so (an own put read is then an
/// error, as it is to an earlier build), for drills and tests of the
/// widening its peers then do.
fn reads_own_puts() -> bool {
    static READS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READS.get_or_init(|| std::env::var("CHORUS_OWN_PUTS").map_or(true, |v| v != "no"))
}

/// A relay batch's frames as a third node reads them: an own put names
/// its origin only through the link it came on, so it goes widened.
fn relayed(batch: &self::core::RelayBatch) -> Result<Vec<std::borrow::Cow<'_, [u8]>>, LinkError> {
    batch
        .frames
        .iter()
        .map(|f| wire::widen(f, batch.origin).map_err(LinkError::Protocol))
        .collect()
}

/// `origin`'s heartbeat as the wire says it: our own, or one passed on.
fn heartbeat_msg(origin: NodeId, hb: Heartbeat) -> ReplMsg {
    ReplMsg::Heartbeat {
        origin,
        seq: hb.seq,
        promise: hb.promise,
        stable: hb.stable,
        retired: hb.retired,
    }
}

async fn serve_peer(
    ks: &Arc<Keyspace>,
    repl: &Replicator,
    link: &PeerLink,
    info: &Arc<PeerInfo>,
) -> Result<(), LinkError> {
    let mut live = link.open(StreamKind::Live).await?;
    let (_, mut back) = tokio::time::timeout(RESUME_WAIT, link.accept_stream())
        .await
        .map_err(|_| LinkError::ResumeTimeout(RESUME_WAIT))??;
    let (resume, accepts) = match back.recv().await?.map(|f| wire::decode_msg(&f)) {
        Some(Ok(ReplMsg::Resume { vv, accepts })) => (VersionVector::from_entries(&vv), accepts),
        other => return Err(LinkError::Protocol(format!("{other:?}"))),
    };
    let compress = repl.compress.load(Ordering::Relaxed) && accepts.iter().any(|a| a == wire::LZ4);
    info.compressing.store(compress, Ordering::Relaxed);
    // A peer of an earlier build gets our own puts widened.
    let own_puts = accepts.iter().any(|a| a == wire::OWN_PUT);
    info.own_puts.store(own_puts, Ordering::Relaxed);
    let widen_for = (!own_puts).then_some(repl.node);
    let max_message = repl.max_message.load(Ordering::Relaxed) as usize;
    let me = repl.node;
    // However this ends (an error, the task aborted by REPLICAOF REMOVE),
    // the backlog no longer holds for this link.
    let _holding = LinkHold {
        repl,
        peer: NodeId(link.peer_node),
    };
    let outbox = OutboxGuard::new(repl, info);
    let mut state = LinkState::new(me, NodeId(link.peer_node), &resume);
    info.resumed(me, resume);
    let _acks = AbortOnDrop(tokio::spawn(read_acks(back, me, info.clone(), ks.clone())));
    let mut tick = tokio::time::interval(SENDER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let repair_every = || match repl.repair_interval_ms.load(Ordering::Relaxed) {
        0 => u64::MAX,
        ms => ms,
    };
    let mut next_offer_ms = (repl.now_ms)().saturating_add(repair_every());
    let mut log_waits = 0u32;
    loop {
        let acked = info.acked_vv.lock().clone();
        let now = (repl.now_ms)();
        let mut plan = repl.core.lock().plan(&mut state, &acked, now);
        if let Some(frames) = plan.live.as_mut() {
            send_live(
                &mut live,
                &mut frames.chunks,
                widen_for,
                compress,
                max_message,
                info,
            )
            .await?;
            info.sent_seq.store(frames.last, Ordering::Relaxed);
        }
        if let Some(hb) = plan.heartbeat.take() {
            live.send(&send_msg(&heartbeat_msg(me, hb))?).await?;
        }
        let messages = outbox.outbox.take_through(state.sent_seq());
        if !messages.is_empty() {
            let payloads: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
            live.send_batch(&payloads).await?;
            info.pubsub_sent
                .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        }
        for batch in &plan.relay {
            let payloads = relayed(batch)?;
            live.send_batch(&payloads).await?;
            info.relayed
                .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        }
        for (origin, hb) in plan.passed_on.drain(..) {
            live.send(&send_msg(&heartbeat_msg(origin, hb))?).await?;
        }
        let log = repl.log.get().filter(|_| log_waits < LOG_WAITS_MAX);
        if let (true, Some(from), Some(log)) = (plan.transfer, plan.trimmed_from, log) {
            match send_from_log(me, log, from, &mut live, compress, max_message, info).await? {
                NumberedRead::Read { last } => {
                    info.from_log.fetch_add(last + 1 - from, Ordering::Relaxed);
                    state.sent_through(last);
                    info.sent_seq.store(last, Ordering::Relaxed);
                    log_waits = 0;
                    continue;
                }
                // Appended a moment ago and not written yet: the log's
                // writer takes at most a few ms (a writer that never
                // comes: a transfer after `LOG_WAITS_MAX` tries).
                NumberedRead::NotYet if !log.failing.load(Ordering::Relaxed) => {
                    log_waits += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(LOG_NOT_YET) => {}
                        reason = link.closed() => return Err(LinkError::Closed(reason.to_string())),
                    }
                    continue;
                }
                NumberedRead::NotYet | NumberedRead::Gone => {}
            }
        }
        if plan.transfer {
            info.state_transfers.fetch_add(1, Ordering::Relaxed);
            // A peer that holds something may hold most of it: ship only
            // what differs.
            let holds_something = !info.acked_vv.lock().entries().is_empty();
            let kind = match holds_something {
                true => match peer_leaves(ks, repl, link, &mut live, info).await? {
                    Some((bits, floor, theirs)) => Transfer::Differing {
                        bits,
                        floor,
                        theirs,
                    },
                    None => Transfer::Whole,
                },
                false => Transfer::Whole,
            };
            let covered = state_transfer(ks, repl, link, info, kind, widen_for).await?;
            state.transferred(me, &covered);
            log_waits = 0;
            info.sent_seq.store(state.sent_seq(), Ordering::Relaxed);
            continue;
        }
        let asked = info.repair_asked.lock().take();
        if let Some(scope) = asked {
            info!(peer = %info.addr, buckets = scope.buckets(), "repairing where the peer's state differs from ours");
            state_transfer(ks, repl, link, info, Transfer::Repair(scope), widen_for).await?;
            info.repairs.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !plan.is_busy() && now >= next_offer_ms {
            let mine = repl.full_vv();
            let mut theirs = info.acked_vv.lock().clone();
            theirs.advance(NodeId(link.peer_node), u64::MAX);
            if theirs.covers(&mine) {
                // Quiet, and the peer has all we have: whatever still differs
                // is something no version vector counts (docs/architecture.md,
                // "Repair").
                // Offered early in the floor's step (an eighth in to three
                // eighths): a peer whose floor lags ours compacts copies
                // to ours, and one that leads by less than the rest of the
                // step, less the digest's time, is still in it; one past
                // it cannot compare. A floor that does not move (a peer
                // away) waits a step at most.
                let progress = ks.gc_step_progress();
                let early = (GC_STEP / 8..GC_STEP / 8 * 3).contains(&progress);
                let step_ms = (GC_STEP >> 32) * 1000;
                if early || now >= next_offer_ms.saturating_add(step_ms) {
                    next_offer_ms = now.saturating_add(repair_every());
                    // Writes applied during the scan are in it or not:
                    // offered with the vector after it, and the buckets
                    // they changed named unsettled, which the peer leaves
                    // out. (Offering only a digest no write met was
                    // dropped: under a steady trickle no offer went.)
                    let digest = shared_digest(ks, repl, Stamp::ZERO).await?;
                    live.send(&send_msg(&ReplMsg::Digest {
                        vv: digest.vv.entries(),
                        floor: digest.floor.time,
                        unsettled: digest.unsettled,
                        dbs: digest.dbs.to_vec(),
                    })?)
                    .await?;
                }
            }
        }
        if !plan.is_busy() {
            let notified = repl.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _waiting = Waiting::new(&repl.sleepers);
            if repl.backlog_head() <= state.sent_seq() && !outbox.outbox.has_ready(state.sent_seq())
            {
                tokio::select! {
                    biased;
                    _ = &mut notified => {}
                    _ = tick.tick() => {}
                    reason = link.closed() => return Err(LinkError::Closed(reason.to_string())),
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

/// Ends a link's hold on the backlog when dropped (see `Core::link_down`).
struct LinkHold<'a> {
    repl: &'a Replicator,
    peer: NodeId,
}

impl Drop for LinkHold<'_> {
    fn drop(&mut self) {
        let now = (self.repl.now_ms)();
        self.repl.core.lock().link_down(self.peer, now);
    }
}

/// Sends our own writes from `from` on, as far as one batch goes, from the
/// delta log: for a peer that fell behind the backlog.
async fn send_from_log(
    me: NodeId,
    log: &Arc<crate::deltalog::DeltaLog>,
    from: u64,
    live: &mut FrameSender,
    compress: bool,
    max: usize,
    info: &PeerInfo,
) -> Result<NumberedRead, LinkError> {
    let log = log.clone();
    let (read, framed) = tokio::task::spawn_blocking(move || {
        let mut framed = bytes::BytesMut::new();
        let read = log.read_numbered(
            from,
            SEND_BATCH_BYTES,
            |payload| own_seq(me, payload),
            |payload| chorus_transport::frame::append_framed(&mut framed, payload),
        );
        (read, framed)
    })
    .await
    .map_err(|e| LinkError::Protocol(format!("reading the delta log: {e}")))?;
    if let NumberedRead::Read { .. } = read {
        send_live(live, &mut [framed.freeze()], None, compress, max, info).await?;
    }
    Ok(read)
}

/// Sends pre-framed chunks of our own writes on the live stream, as one
/// compressed batch when the link compresses and the batch is worth it.
/// `widen_for`: our node, when the peer does not read own puts.
async fn send_live(
    live: &mut FrameSender,
    chunks: &mut [bytes::Bytes],
    widen_for: Option<NodeId>,
    compress: bool,
    max: usize,
    info: &PeerInfo,
) -> Result<(), LinkError> {
    let mut widened;
    let chunks = match widen_for.map(|me| wire::widen_framed(chunks, me, max)) {
        Some(Ok(Some(wide))) => {
            widened = [wide];
            &mut widened[..]
        }
        Some(Err(e)) => return Err(LinkError::Protocol(e)),
        Some(Ok(None)) | None => chunks,
    };
    let len: usize = chunks.iter().map(|c| c.len()).sum();
    if !compress || len < wire::COMPRESS_FROM {
        live.send_framed(chunks).await?;
        return Ok(());
    }
    let mut whole = Vec::with_capacity(len);
    for chunk in chunks.iter() {
        whole.extend_from_slice(chunk);
    }
    let frame = wire::compress(&whole)?;
    // What does not compress goes as it is; so does a batch whose one
    // frame would pass the message limit.
    if frame.len() >= len || frame.len() > max {
        live.send_framed(chunks).await?;
        return Ok(());
    }
    info.compress_in.fetch_add(len as u64, Ordering::Relaxed);
    info.compress_out
        .fetch_add(frame.len() as u64, Ordering::Relaxed);
    live.send(&frame).await?;
    Ok(())
}

/// The sequence number of a log record that is one of `me`'s writes.
fn own_seq(me: NodeId, payload: &[u8]) -> Option<u64> {
    // `ReplMsg::Delta`'s leading fields: its variant, origin and number.
    match chorus_crdt::decode_prefix::<(u32, NodeId, u64)>(payload) {
        Ok((wire::DELTA_VARIANT, origin, seq)) if origin == me => Some(seq),
        _ => None,
    }
}

async fn read_acks(mut back: FrameReceiver, me: NodeId, info: Arc<PeerInfo>, ks: Arc<Keyspace>) {
    while let Ok(Some(frame)) = back.recv().await {
        let msg = wire::decode_msg(&frame);
        if let Ok(ReplMsg::RepairAsk { scope }) = msg {
            // One entry per database at most: anything else is not what
            // this node's peers send, and would cost per key under locks.
            if scope.is_well_formed(ks.databases()) {
                *info.repair_asked.lock() = Some(scope);
            }
        } else if let Ok(ReplMsg::LeafDigest { ask, digest }) = msg {
            if let Some((_, reply)) = info.leaf_reply.lock().as_ref().filter(|r| r.0 == ask) {
                let _ = reply.send(Some(digest));
            }
        } else if let Ok(ReplMsg::LeafDigestsEnd { ask }) = msg {
            let mut waiting = info.leaf_reply.lock();
            if waiting.as_ref().is_some_and(|r| r.0 == ask) {
                if let Some((_, reply)) = waiting.take() {
                    let _ = reply.send(None);
                }
            }
        } else if let Ok(ReplMsg::Ack { vv }) = msg {
            let vv = VersionVector::from_entries(&vv);
            info.acked_seq.fetch_max(vv.get(me), Ordering::Relaxed);
            // An ack leaves out the retired lives the peer settled: what it
            // said of them before (at least in its Resume) still holds.
            info.acked_vv.lock().merge(&vv);
            info.acked_at_ms
                .store(ks.clock.physical_unix_ms(), Ordering::Relaxed);
        }
    }
}

/// How long a sender waits for its peer's leaf digests before it sends its
/// whole state instead (the peer scans its keyspace to make them).
const LEAF_WAIT: Duration = Duration::from_secs(120);

/// What a state transfer carries.
enum Transfer {
    /// Every key: covers every write applied when it began.
    Whole,
    /// The keys in the leaves where our digests differ from the peer's
    /// (`theirs`, taken before the transfer began): covers as much as a
    /// whole one, for a key whose digests agree is held by the peer as we
    /// hold it, and what we apply later comes in the tail.
    Differing {
        bits: u8,
        floor: Stamp,
        theirs: Vec<LeafDigest>,
    },
    /// The keys in the buckets a peer asked for: covers no writes.
    Repair(Scope),
}

/// Asks the peer for its leaf digests at a split fit for our key count;
/// `None` when it does not answer in time (a whole transfer then).
async fn peer_leaves(
    ks: &Keyspace,
    repl: &Replicator,
    link: &PeerLink,
    live: &mut FrameSender,
    info: &PeerInfo,
) -> Result<Option<(u8, Stamp, Vec<LeafDigest>)>, LinkError> {
    // A database's digest must fit one message, with room to spare.
    let fits = (repl.max_message.load(Ordering::Relaxed) / 16).max(1);
    let fit_bits = (63 - fits.leading_zeros()) as u8;
    let bits = leaf_bits_for(ks.live_keys.load(Ordering::Relaxed))
        .min(fit_bits)
        .clamp(MIN_LEAF_BITS, MAX_LEAF_BITS);
    if u64::from(8u32) << bits > repl.max_message.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // An answer to an earlier ask that timed out must not pass for this
    // one's: each ask has its own number.
    let ask = info.leaf_asks.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    *info.leaf_reply.lock() = Some((ask, tx));
    // Both digests read every state compacted to one floor: ours now
    // (unless the peer's, or ours by the time of our own, is past it).
    let floor = ks.gc_acked();
    live.send(&send_msg(&ReplMsg::LeafDigestAsk {
        ask,
        bits,
        floor: floor.time,
    })?)
    .await?;
    let mut theirs = Vec::new();
    let collect = async {
        while let Some(Some(digest)) = rx.recv().await {
            if theirs.len() >= ks.databases() {
                return false;
            }
            theirs.push(digest);
        }
        true
    };
    let collected = tokio::select! {
        done = tokio::time::timeout(LEAF_WAIT, collect) => done,
        reason = link.closed() => {
            *info.leaf_reply.lock() = None;
            return Err(LinkError::Closed(reason.to_string()));
        }
    };
    *info.leaf_reply.lock() = None;
    Ok(match collected {
        Ok(true) => Some((bits, floor, theirs)),
        _ => {
            warn!(peer = %info.addr, "the peer sent no leaf digests in time: sending the whole state");
            None
        }
    })
}

/// This node's leaf digests, every state compacted to `floor` or this
/// node's GC floor if it is past that (see [`digest_keyspace`]); only the
/// databases that hold something.
async fn leaf_digests(ks: &Keyspace, bits: u8, floor: Stamp) -> Result<Vec<LeafDigest>, LinkError> {
    // A database's leaves are made at its first key or floor: 2^bits of
    // them for every database would be 8 MB each at 20 bits.
    let digests = LeafDigests {
        bits,
        dbs: vec![None; ks.databases()],
    };
    let (digests, _, _) = digest_keyspace(ks, digests, floor).await?;
    Ok(digests
        .dbs
        .into_iter()
        .flatten()
        .filter(|d| !d.is_empty())
        .collect())
}

/// Adds every key and floor of this node to `digests`, one shard at a time
/// and each in pieces (see [`Keyspace::digest_piece`]), letting the
/// runtime's other tasks run between pieces; cold keys are read off the
/// runtime's threads. Every state is read compacted to `floor` (a peer's,
/// to compare with its digest), or to this node's GC floor if that is past
/// it; collection is held there until the hold returned with the digest
/// is dropped, and every bucket changed since the scan began is marked
/// (see [`Keyspace::unsettled_since`]). Returns the floor used.
async fn digest_keyspace<D: Digests + Send + 'static>(
    ks: &Keyspace,
    mut digests: D,
    floor: Stamp,
) -> Result<(D, Stamp, GcHold<'_>), LinkError> {
    let floor = floor.max(ks.gc_acked());
    // Between the floor read and the hold, a sweep's piece may begin past
    // it: at worst a key that differs for nothing (a needless repair).
    let hold = ks.hold_gc_at(floor);
    let mut scratch = Vec::new();
    for i in 0..SHARDS {
        let mut scan = DigestScan::default();
        loop {
            let mut cold = ColdReads::default();
            let done =
                ks.digest_piece(i, floor, &mut scan, &mut digests, &mut scratch, &mut cold)?;
            if !cold.is_empty() {
                digests = tokio::task::spawn_blocking(move || {
                    cold.add_digests(floor, &mut digests, &mut Vec::new())
                        .map(|()| digests)
                })
                .await
                .map_err(|e| LinkError::Protocol(format!("reading cold keys: {e}")))??;
            }
            tokio::task::yield_now().await;
            if done {
                break;
            }
        }
    }
    Ok((digests, floor, hold))
}

/// Streams this node's state on a bulk stream (see [`Transfer`]); returns
/// what it covers per origin (every write numbered up to that is included).
async fn state_transfer(
    ks: &Keyspace,
    repl: &Replicator,
    link: &PeerLink,
    info: &PeerInfo,
    kind: Transfer,
    widen_for: Option<NodeId>,
) -> Result<VersionVector, LinkError> {
    // Read what is applied first: anything numbered after it is sent live
    // later, anything up to it is already in the keyspace and so in the
    // snapshot.
    let (mut covered, held, vv) = {
        let core = repl.core.lock();
        let vv = core.transfer_covers(repl.head_seq());
        let covered = match kind {
            Transfer::Repair(_) => VersionVector::default(),
            Transfer::Whole | Transfer::Differing { .. } => vv.clone(),
        };
        (covered, core.holds(), vv.entries())
    };
    let (scope, covering) = match kind {
        Transfer::Whole => (None, true),
        Transfer::Repair(scope) => (Some(TransferScope::Buckets(scope)), false),
        Transfer::Differing {
            bits,
            floor,
            theirs,
        } => {
            // Ours taken after what the transfer covers was read: a write
            // it misses is in the tail.
            let mine = leaf_digests(ks, bits, floor).await?;
            match differing_leaves(bits, &mine, &theirs) {
                Some(leaves) => {
                    info!(
                        peer = %info.addr,
                        leaves = leaves.count(),
                        of = (1u64 << bits) * mine.len().max(1) as u64,
                        "state transfer of the leaves that differ"
                    );
                    (Some(TransferScope::Leaves(leaves)), true)
                }
                None => (None, true),
            }
        }
    };
    let mut bulk = link.open(StreamKind::Bulk).await?;
    bulk.send(&send_msg(&ReplMsg::SnapshotBegin {
        held: held.into_iter().collect(),
        scope: scope.clone(),
        vv,
    })?)
    .await?;
    let in_scope = |db: usize, key: &[u8]| scope.as_ref().is_none_or(|s| s.covers(db as u32, key));
    for db in 0..ks.databases() {
        if scope.as_ref().is_some_and(|s| !s.covers_db(db as u32)) {
            continue;
        }
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
    // Keys sent: a database whose map was compacted during the scan
    // starts over, and its keys met before count twice.
    let (mut keys, mut bytes) = (0u64, 0u64);
    let reached = scope.as_ref().map(TransferScope::buckets);
    for i in 0..SHARDS {
        if reached.is_some_and(|r| !shard_reached(&r, i)) {
            continue;
        }
        // A piece of a shard encoded under its lock, sent after releasing
        // it: writes wait for one piece at most, and what is held in frames
        // is about a piece (a shard of a large keyspace is gigabytes).
        let mut scan = ShardScan::default();
        loop {
            let mut frames: Vec<Vec<u8>> = Vec::new();
            let mut cold = ColdReads::default();
            let done = ks.scan_piece(
                i,
                &mut scan,
                TRANSFER_PIECE_KEYS,
                TRANSFER_PIECE_BYTES,
                |db| scope.as_ref().is_none_or(|s| s.covers_db(db as u32)),
                |db, key| in_scope(db, key),
                None,
                |db, key, state| {
                    let f = wire::snapshot_key_msg(db, key, state)?;
                    let len = f.len();
                    frames.push(f);
                    Ok::<_, LinkError>(len)
                },
                &mut cold,
            )?;
            loop {
                keys += frames.len() as u64;
                for f in frames.drain(..) {
                    bytes += f.len() as u64;
                    bulk.send(&f).await?;
                }
                if cold.is_empty() {
                    break;
                }
                // A cold key is read from the flash tier, off the runtime's
                // threads, and stays there.
                let acked = ks.gc_acked();
                let read = tokio::task::spawn_blocking(move || {
                    let mut frames = Vec::new();
                    let read = cold.read(acked, TRANSFER_PIECE_BYTES, |db, key, state| {
                        let f = wire::snapshot_key_msg(db, key, state)?;
                        let len = f.len();
                        frames.push(f);
                        Ok::<_, chorus_crdt::EncodeError>(len)
                    });
                    read.map(|()| (cold, frames))
                })
                .await
                .map_err(|e| LinkError::Protocol(format!("reading cold keys: {e}")))??;
                (cold, frames) = read;
            }
            if done {
                break;
            }
        }
    }
    info.transfer_keys.fetch_add(keys, Ordering::Relaxed);
    info.transfer_bytes.fetch_add(bytes, Ordering::Relaxed);
    if covering {
        // The scan may hold a write numbered since the start whose frame
        // still waits in a batch: the tail ends at the backlog's head, so
        // it waits for that frame (a batch never spans an await; this takes
        // microseconds) and the peer never holds a write no vector counts.
        let numbered = repl.head_seq();
        let deadline = tokio::time::Instant::now() + TAIL_WAIT;
        while repl.backlog_head() < numbered {
            if tokio::time::Instant::now() >= deadline {
                return Err(LinkError::Protocol(format!(
                    "write {numbered} did not reach the backlog within {TAIL_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let peer = NodeId(link.peer_node);
        let mut tail = repl.core.lock().transfer_tail(peer, &mut covered);
        let max = repl.max_message.load(Ordering::Relaxed) as usize;
        match widen_for.map(|me| wire::widen_framed(&tail.own, me, max)) {
            Some(Ok(Some(wide))) => bulk.send_framed(&mut [wide]).await?,
            Some(Err(e)) => return Err(LinkError::Protocol(e)),
            Some(Ok(None)) | None => bulk.send_framed(&mut tail.own).await?,
        }
        // In pieces, as relaying sends them: a batch is copied whole into
        // one buffer, and the tail may hold every relay log.
        for piece in tail.others.chunks(self::core::RELAY_BATCH) {
            let payloads = piece
                .iter()
                .map(|(origin, f)| wire::widen(f, *origin).map_err(LinkError::Protocol))
                .collect::<Result<Vec<_>, _>>()?;
            bulk.send_batch(&payloads).await?;
        }
    }
    bulk.send(&send_msg(&ReplMsg::SnapshotDone {
        vv: covered.entries(),
    })?)
    .await?;
    bulk.finish()?;
    Ok(covered)
}

/// What the state was at: the writes applied, the other changes, and the
/// floor every state was compacted to.
type DigestAt = (VersionVector, u64, Stamp);

fn digest_at(ks: &Keyspace, repl: &Replicator, floor: Stamp) -> DigestAt {
    (
        repl.full_vv(),
        ks.changes_besides_writes.load(Ordering::SeqCst),
        floor,
    )
}

/// A keyspace digest as a repair offer carries it and a receiver compares
/// it.
#[derive(Clone)]
struct TakenDigest {
    /// Every state was read compacted to this floor.
    floor: Stamp,
    dbs: Arc<Vec<DbDigest>>,
    /// The writes applied when the scan ended: the digest holds at most
    /// these, and all of them outside `unsettled`.
    vv: VersionVector,
    /// Buckets changed while the scan ran (see
    /// [`Keyspace::unsettled_since`]).
    unsettled: Buckets,
}

/// This node's keyspace digest with every state compacted to `floor`, or
/// to this node's GC floor if that is past it (see [`digest_keyspace`]):
/// the last one taken at that floor while the state has not changed since
/// (with `n` peers, one scan per interval instead of `2n`), or a new one.
async fn shared_digest(
    ks: &Keyspace,
    repl: &Replicator,
    floor: Stamp,
) -> Result<TakenDigest, LinkError> {
    let kept = |floor: Stamp| {
        let at = digest_at(ks, repl, floor.max(ks.gc_acked()));
        match &*repl.digest.lock() {
            Some((taken_at, digest)) if *taken_at == at => Ok(digest.clone()),
            _ => Err(at),
        }
    };
    if let Ok(digest) = kept(floor) {
        return Ok(digest);
    }
    let _scan = repl.digest_scan.lock().await;
    let at = match kept(floor) {
        Ok(digest) => return Ok(digest),
        Err(at) => at,
    };
    let floor = at.2;
    let dbs: Vec<DbDigest> = (0..ks.databases() as u32).map(DbDigest::empty).collect();
    let (mut dbs, floor, hold) = digest_keyspace(ks, dbs, floor).await?;
    dbs.retain(|d| !d.is_empty());
    // The vector first: a change after the scan that it counts is marked
    // (the hold still stands), and one it does not count is the peer's to
    // see as ours ahead of its offer.
    let vv = repl.full_vv();
    let unsettled = ks.unsettled_since(hold.epoch);
    drop(hold);
    let digest = TakenDigest {
        floor,
        dbs: Arc::new(dbs),
        vv,
        unsettled,
    };
    repl.digests_taken.fetch_add(1, Ordering::Relaxed);
    // Taken one shard at a time: kept only if nothing changed meanwhile.
    if digest_at(ks, repl, floor) == at {
        *repl.digest.lock() = Some((at, digest.clone()));
    }
    Ok(digest)
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
) -> Result<(), LinkError> {
    let peer = NodeId(link.peer_node);
    let previous = {
        let mut inbound = repl.inbound.lock();
        if inbound.len() >= MAX_INBOUND_ADDRS && !inbound.contains_key(&link.remote_address()) {
            // Forgetting which id linked from where only keeps an earlier
            // life counted (collection waits); it loses nothing.
            inbound.clear();
        }
        inbound.insert(link.remote_address(), peer)
    };
    if previous.is_some_and(|p| p != peer) {
        info!(peer = %link.remote_address(), node = %peer, "a peer linked in with a new node id; its old id is retired");
    }
    repl.core.lock().link_up(peer, previous);
    repl.note_name(peer, &link.peer_name);
    let mut back = link.open(StreamKind::Live).await?;
    back.send(&send_msg(&ReplMsg::Resume {
        vv: repl.applied_vv(),
        accepts: match reads_own_puts() {
            true => vec![wire::LZ4.to_string(), wire::OWN_PUT.to_string()],
            false => vec![wire::LZ4.to_string()],
        },
    })?)
    .await?;
    // Repair requests and leaf digests go back on the acknowledgement
    // stream; one repair request waiting is enough (a later digest asks
    // again).
    let (asks, asked) = tokio::sync::mpsc::channel::<Back>(1);
    let _acker = {
        let repl = repl.clone();
        AbortOnDrop(tokio::spawn(async move {
            let _ = send_acks(back, repl, asked).await;
        }))
    };
    let result = async {
        loop {
            let (_, rx) = link.accept_stream().await?;
            let (ks, repl, link, asks) = (ks.clone(), repl.clone(), link.clone(), asks.clone());
            tokio::spawn(async move {
                match apply_stream(&ks, &repl, peer, rx, &asks).await {
                    Ok(()) => {}
                    // Logged once by `Replicator::judge_transfer`; the
                    // peer reads why in its INFO (the link's last error).
                    Err(e @ LinkError::Refused(_)) => link.close(&e.to_string()),
                    Err(e) => {
                        // A stream we stop reading would stall the sender on
                        // flow control: reset the whole link so it
                        // reconnects and resumes.
                        warn!(peer = %link.remote_address(), "replication stream failed, resetting the link: {e}");
                        link.close("stream error");
                    }
                }
            });
        }
    }
    .await;
    result
}

/// A stream's frames, with compressed batches opened into theirs.
struct Frames {
    rx: FrameReceiver,
    opened: chorus_transport::frame::Deframer,
    max: usize,
}

impl Frames {
    fn new(rx: FrameReceiver, max: usize) -> Frames {
        Frames {
            rx,
            opened: chorus_transport::frame::Deframer::new(max),
            max,
        }
    }

    /// Changes whenever [`Frames::next`] read (or waited on) the stream.
    fn reads(&self) -> u64 {
        self.rx.reads()
    }

    async fn next(&mut self) -> Result<Option<bytes::Bytes>, LinkError> {
        loop {
            if let Some(frame) = self.opened.next_message()? {
                if wire::is_compressed(&frame) {
                    return Err(LinkError::Protocol(
                        "a compressed batch inside another".into(),
                    ));
                }
                return Ok(Some(frame));
            }
            // A batch holds whole frames: anything left is a sender's error.
            if !self.opened.is_idle() {
                return Err(LinkError::Protocol(
                    "a compressed batch ends mid-frame".into(),
                ));
            }
            let Some(frame) = self.rx.recv().await? else {
                return Ok(None);
            };
            if !wire::is_compressed(&frame) {
                return Ok(Some(frame));
            }
            let ReplMsg::Compressed { lz4 } = wire::decode_msg(&frame)? else {
                return Err(LinkError::Protocol("a compressed batch that is not".into()));
            };
            // A batch holds up to a send's worth of frames, each within the
            // message limit.
            let framed = wire::decompress(&lz4, self.max.saturating_mul(2))
                .map_err(|e| LinkError::Protocol(e.to_string()))?;
            self.opened.push(&framed);
        }
    }
}

/// What a receiver sends its peer besides acknowledgements.
enum Back {
    Repair(Scope),
    /// The leaf digests answering ask number `.0`.
    Leaves(u64, Vec<LeafDigest>),
}

async fn send_acks(
    mut back: FrameSender,
    repl: Arc<Replicator>,
    mut asked: tokio::sync::mpsc::Receiver<Back>,
) -> Result<(), LinkError> {
    let mut reported = BTreeMap::new();
    let mut tick = tokio::time::interval(ACK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let vv = repl.core.lock().ack_vv(&mut reported);
                back.send(&send_msg(&ReplMsg::Ack { vv })?).await?;
            }
            Some(what) = asked.recv() => match what {
                Back::Repair(scope) => {
                    back.send(&send_msg(&ReplMsg::RepairAsk { scope })?).await?;
                }
                Back::Leaves(ask, digests) => {
                    for digest in digests {
                        back.send(&send_msg(&ReplMsg::LeafDigest { ask, digest })?).await?;
                    }
                    back.send(&send_msg(&ReplMsg::LeafDigestsEnd { ask })?).await?;
                }
            },
        }
    }
}

async fn apply_stream(
    ks: &Keyspace,
    repl: &Replicator,
    peer: NodeId,
    rx: FrameReceiver,
    asks: &tokio::sync::mpsc::Sender<Back>,
) -> Result<(), LinkError> {
    // The keys a state transfer on this stream named so far, and what this
    // node had applied when it began.
    let mut named: hashbrown::HashSet<u64> = hashbrown::HashSet::new();
    // The keys a repair under way covers (`None`: a whole transfer).
    let mut scope: Option<TransferScope> = None;
    let mut mine_held: Option<BTreeMap<NodeId, Stamp>> = None;
    // What the sender of the transfer under way had applied.
    let mut sender_held: BTreeMap<NodeId, Stamp> = BTreeMap::new();
    // Between a transfer's begin and its end, deltas are its tail (see
    // `Core::transfer_tail`): merged as its parts, counted at its end.
    let mut in_transfer = false;
    // Writes of closed members the transfer under way brings (see
    // `Replicator::judge_transfer`).
    let mut carried: Vec<(NodeId, u64)> = Vec::new();
    // Closed members one of whose writes this stream dropped: their later
    // ones go too (they would wait on the gap), until a transfer that
    // brings them ends.
    let mut dropping: SmallVec<[NodeId; 2]> = SmallVec::new();
    let mut asked_all_at: Option<u64> = None;
    let mut publish_stalled = false;
    let mut frames = Frames::new(rx, repl.max_message.load(Ordering::Relaxed) as usize);
    let mut clock = StreamClock::new(ks, repl);
    let reads_own_puts = reads_own_puts();
    while let Some(frame) = frames.next().await? {
        if ks.cold.is_some() {
            crate::flash::make_room_for_replicated(ks).await;
            clock.waited();
        }
        let msg = match reads_own_puts {
            true if chorus_crdt::codec::is_own_put(&frame) => {
                repl.own_puts_received.fetch_add(1, Ordering::Relaxed);
                wire::decode_from(peer, &frame)?
            }
            _ => wire::decode_msg(&frame)?,
        };
        if !matches!(msg, ReplMsg::Delta { .. }) {
            // Its handling may wait (a digest, a send).
            clock.waited();
        }
        match msg {
            ReplMsg::Delta {
                origin, seq, delta, ..
            } if in_transfer => {
                // The tail: writes the sender applied after the transfer
                // began, judged on their own (see the lone writes below).
                if !repl.core.lock().admits(origin, seq) && !newer_than_collected(ks, &delta) {
                    continue;
                }
                let held = mine_held.get_or_insert_with(|| repl.core.lock().holds());
                apply_transferred(ks, repl, held, &sender_held, delta, false);
            }
            ReplMsg::Delta { origin, seq, delta } => loop {
                if dropping.contains(&origin) {
                    break;
                }
                let verdict = {
                    let core = repl.core.lock();
                    if !core.admits(origin, seq) && !newer_than_collected(ks, &delta) {
                        drop(core);
                        if repl.reopen_if_clear(ks, origin, peer) {
                            continue;
                        }
                        // Alone, it could bring back a key whose delete was
                        // collected here: it is taken only with the state
                        // around it, in a transfer judged like any other
                        // (`Replicator::judge_transfer`). At most one
                        // request a `FULL_ASK_EVERY_MS` per stream: a member
                        // still writing through a peer that never removed it
                        // sends many.
                        dropping.push(origin);
                        let now = (repl.now_ms)();
                        if asked_all_at.is_none_or(|at| now.saturating_sub(at) >= FULL_ASK_EVERY_MS)
                            && asks
                                .try_send(Back::Repair(Scope::everything(ks.databases())))
                                .is_ok()
                        {
                            asked_all_at = Some(now);
                            repl.repairs_asked.fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    core.judge(origin, seq)
                };
                match verdict {
                    Arrival::Apply => {
                        let recent = clock.read(ks, repl, frames.reads());
                        if apply(ks, repl, delta, Some((origin, seq, frame.clone())), recent) {
                            repl.wake_receivers();
                        }
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
                        let still = repl.core.lock().judge(origin, seq);
                        if matches!(still, Arrival::Gap { .. })
                            && tokio::time::timeout(GAP_WAIT, changed).await.is_err()
                        {
                            return Err(LinkError::Gap {
                                origin,
                                expected,
                                seq,
                            });
                        }
                        clock.waited();
                    }
                }
            },
            ReplMsg::Snapshot { delta } => {
                if let Delta::Key { db, key, .. } = &delta {
                    named.insert(ks.transfer_tag(*db, key));
                }
                let held = mine_held.get_or_insert_with(|| repl.core.lock().holds());
                apply_transferred(ks, repl, held, &sender_held, delta, true);
            }
            ReplMsg::SnapshotBegin { held, scope: s, vv } => {
                carried = repl.judge_transfer(ks, peer, &vv)?;
                scope = s;
                in_transfer = true;
                sender_held = held.into_iter().collect();
                named = hashbrown::HashSet::new();
                mine_held = None;
            }
            ReplMsg::SnapshotDone { vv } => {
                // The vector first: a live write it covers that is still on
                // its way is then judged a duplicate under its shard lock
                // (see `apply`), so none is merged after the forgetting.
                let now = (repl.now_ms)();
                {
                    let mut core = repl.core.lock();
                    let vv = core.clamp_closed(&vv, &carried);
                    core.snapshot_done(&vv, now);
                    // A repair of every key holds the closed members' writes
                    // it was begun with: they count as received now.
                    if scope
                        .as_ref()
                        .is_some_and(|s| s.is_everything(ks.databases()))
                    {
                        core.snapshot_done(&carried, now);
                    }
                }
                dropping.retain(|o| !carried.iter().any(|(c, _)| c == o));
                carried = Vec::new();
                let forgotten = ks.forget_held_absent(&named, &sender_held, scope.as_ref());
                // A repair's merges and any transfer's forgetting move no
                // vector.
                ks.changes_besides_writes.fetch_add(1, Ordering::SeqCst);
                scope = None;
                in_transfer = false;
                if forgotten > 0 {
                    info!(
                        forgotten,
                        "keys deleted on the sender while this node's copy was away are gone here too"
                    );
                }
                named = hashbrown::HashSet::new();
                mine_held = None;
                sender_held = BTreeMap::new();
                repl.wake_receivers();
            }
            ReplMsg::Heartbeat {
                origin,
                seq,
                promise,
                stable,
                retired,
            } => {
                let closed = {
                    let mut core = repl.core.lock();
                    core.heartbeat(
                        origin,
                        Heartbeat {
                            seq,
                            promise,
                            stable,
                            retired,
                        },
                    );
                    core.is_closed(origin)
                };
                // Its writes we lack are stamped after the promise it
                // counted, if it did: reopened when nothing was collected
                // past that.
                if closed && repl.reopen_if_clear(ks, origin, peer) && dropping.contains(&origin) {
                    // Its writes this stream dropped come again once the
                    // link resumes from what we applied.
                    return Err(LinkError::Closed(format!("{origin} reopened: resuming")));
                }
            }
            ReplMsg::Digest {
                vv,
                floor,
                unsettled,
                dbs,
            } => {
                // Holding at least what the sender held, whatever still
                // differs in its favour is something no vector counts; a
                // bucket that differs only by our newer writes costs a
                // needless repair of it, nothing more (its forgetting stops
                // at what the sender held, older than those writes). Under
                // a steady trickle of writes most offers find one such
                // bucket; waiting for a moment when both sides hold exactly
                // the same writes instead would leave a written keyspace
                // without repair, and a repair's cost is kept to the
                // shards its buckets lie in.
                let offered = VersionVector::from_entries(&vv);
                let well_formed =
                    dbs.iter().all(|d| d.buckets.len() == BUCKETS) && dbs.len() <= ks.databases();
                if !repl.full_vv().covers(&offered) || !well_formed {
                    repl.offers_skipped.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Compared only with every state compacted to the
                    // same floor: else a state one node swept since and
                    // the other not differs in what both hold alike. Our
                    // states compacted past the offer's floor cannot be;
                    // at or below it, they are read compacted to it.
                    let floor = Stamp {
                        time: floor,
                        node: NodeId(u64::MAX),
                    };
                    let mine = match ks.gc_acked() <= floor {
                        true => Some(shared_digest(ks, repl, floor).await?),
                        false => None,
                    };
                    // Writes our digest holds and the offer's vector does
                    // not count differ in buckets we cannot name: a few
                    // cost a needless repair of theirs, more would make
                    // the comparison ask for most of the keyspace.
                    let ahead = |mine: &TakenDigest| -> u64 {
                        mine.vv
                            .entries()
                            .iter()
                            .map(|(node, seq)| seq.saturating_sub(offered.get(*node)))
                            .sum()
                    };
                    let all_unsettled = |mine: &TakenDigest| {
                        let mut both = unsettled;
                        both.extend(&mine.unsettled);
                        both.len() == BUCKETS
                    };
                    match mine {
                        Some(mine)
                            if mine.floor == floor
                                && ahead(&mine) <= MOST_WRITES_AHEAD
                                && !all_unsettled(&mine) =>
                        {
                            repl.offers_compared.fetch_add(1, Ordering::Relaxed);
                            let mut unsettled = unsettled;
                            unsettled.extend(&mine.unsettled);
                            let differ = differing_settled(&mine.dbs, &dbs, &unsettled);
                            if !differ.is_empty() {
                                info!(
                                    buckets = differ.buckets(),
                                    writes_ahead = ahead(&mine),
                                    unsettled = unsettled.len(),
                                    "a peer's digest differs from ours: asking for a repair"
                                );
                                if asks.try_send(Back::Repair(differ)).is_ok() {
                                    repl.repairs_asked.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        _ => {
                            repl.offers_skipped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            ReplMsg::LeafDigestAsk { ask, bits, floor } => {
                let bits = bits.clamp(MIN_LEAF_BITS, MAX_LEAF_BITS);
                let floor = Stamp {
                    time: floor,
                    node: NodeId(u64::MAX),
                };
                let digests = leaf_digests(ks, bits, floor).await?;
                if asks.send(Back::Leaves(ask, digests)).await.is_err() {
                    return Err(LinkError::Closed("the acknowledgement stream ended".into()));
                }
            }
            ReplMsg::Publish {
                after,
                sharded,
                channel,
                message,
            } => {
                // One wait that timed out is enough: later messages that
                // would wait too go at once until the writes arrive.
                let wait = match publish_stalled {
                    true => Duration::ZERO,
                    false => PUBLISH_WAIT,
                };
                publish_stalled = !applied_through(repl, peer, after, wait).await;
                if publish_stalled {
                    ks.pubsub.late.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let space = match sharded {
                    true => crate::pubsub::Space::Shard,
                    false => crate::pubsub::Space::Global,
                };
                ks.pubsub.from_peers.fetch_add(1, Ordering::Relaxed);
                ks.pubsub.publish(space, &channel, &message);
            }
            ReplMsg::Resume { .. }
            | ReplMsg::Compressed { .. }
            | ReplMsg::Ack { .. }
            | ReplMsg::RepairAsk { .. }
            | ReplMsg::LeafDigest { .. }
            | ReplMsg::LeafDigestsEnd { .. } => {}
        }
    }
    Ok(())
}

/// How long a published message waits for the writes its sender made
/// before it (arriving by a state transfer's bulk stream) before it is
/// dropped.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// Whether `origin`'s writes through `seq` are applied here, waiting up to
/// `wait` for them.
async fn applied_through(repl: &Replicator, origin: NodeId, seq: u64, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = repl.applied_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let _waiting = Waiting::new(&repl.applied_waiters);
        if repl.core.lock().applied_vv().get(origin) >= seq {
            return true;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return false;
        }
    }
}

/// Merges one key of a state transfer: as [`apply`], less what this node
/// applied already (`held`, as of the transfer's start; see [`Core::holds`]),
/// so that a sender whose state predates it cannot bring deleted keys back
/// (`KeyState::drop_collected`). `whole`: the sender's whole state of the
/// key, not a write of its tail, so what it lacks of what it held is gone.
fn apply_transferred(
    ks: &Keyspace,
    repl: &Replicator,
    held: &BTreeMap<NodeId, Stamp>,
    sender_held: &BTreeMap<NodeId, Stamp>,
    mut delta: Delta,
    whole: bool,
) {
    let sender_held_max = sender_held.values().copied().max().unwrap_or(Stamp::ZERO);
    let sender_held = |n: NodeId| sender_held.get(&n).copied().unwrap_or(Stamp::ZERO);
    if let Delta::Key { db, key, state } = &mut delta {
        let index = ks.shard_of(key);
        let mut locked = ks.lock(SmallVec::from_slice(&[index]));
        let acked = ks.gc_acked();
        if let Ok(shard) = locked.shard(index) {
            if let Some(d) = shard.dbs.get_mut(*db as usize) {
                // Most keys a repair or a transfer to a node that holds
                // something sends are held here as they are: a state merged
                // with itself is unchanged, and there is nothing to forget
                // (a merge unpacks and packs a small hash again).
                // A cold key is read through, not brought back: most keys a
                // transfer sends are held here already.
                // What the sender held and replaced by nothing (a tombstone
                // collected under surviving increments, a compacted reset)
                // goes here too: a merge alone would keep it.
                let (same, stale) = match d.peek(key, acked) {
                    Some(mine) if *mine == *state => (true, false),
                    Some(mine) => (false, whole && mine.is_stale_against(state, sender_held)),
                    None => (false, false),
                };
                if same {
                    return;
                }
                // A transfer's merges move no vector: a digest kept from
                // before them must not serve after them (nor after a
                // transfer broken off before its end).
                ks.changes_besides_writes.fetch_add(1, Ordering::SeqCst);
                if stale {
                    let incoming: &KeyState = state;
                    let before = crate::notify::Before::of(ks, d.indexed(key));
                    if d.change(key, acked, |m| m.forget_missing_from(incoming, sender_held)) {
                        ks.key_changed(*db as usize, key);
                        crate::notify::after_merge(ks, *db as usize, key, before, d.indexed(key));
                    }
                    // As good as collected here: a late write older than
                    // what went must not count as newer than everything
                    // collected (`Replicator::reopen_if_clear`).
                    ks.note_forgotten(sender_held_max);
                }
                let mine = d.peek(key, acked);
                state.drop_collected(mine.as_deref(), |n| {
                    held.get(&n).copied().unwrap_or(Stamp::ZERO)
                });
            }
        }
        drop(locked);
        if state.is_empty() {
            return;
        }
    } else {
        ks.changes_besides_writes.fetch_add(1, Ordering::SeqCst);
    }
    apply(ks, repl, delta, None, Recent::read(ks, repl));
}

/// The clocks as read a moment ago, shared by the writes a receiver
/// applies in one stretch: clock reads are dear on the receive path (on
/// a VM, a tenth of a receiver's time when each write read them), and a
/// reading a few writes old serves both uses: the drift check reads again
/// when in doubt (`Clock::observe_near`), and the relay's times need only
/// be right to a few milliseconds.
#[derive(Clone, Copy)]
struct Recent {
    /// The keyspace clock's physical time (`Clock::observe_near`).
    physical: chorus_crdt::NTP64,
    /// The replicator's wall clock, ms (the relay's times).
    ms: u64,
}

impl Recent {
    fn read(ks: &Keyspace, repl: &Replicator) -> Recent {
        Recent {
            physical: ks.clock.physical(),
            ms: (repl.now_ms)(),
        }
    }
}

/// How many writes of one stretch of a stream share a reading of the
/// clocks: a stretch ends at every read of the stream and at every other
/// await, so a reading never spans one (a blocking lock may still fall
/// inside: its wait is short), and at most this many writes apart it is
/// read again.
const RECENT_WRITES: u32 = 64;

/// The clocks a stream's writes are applied with ([`Recent`]): read again
/// when the stream was read since, or after [`RECENT_WRITES`] writes.
struct StreamClock {
    recent: Recent,
    reads: u64,
    uses: u32,
}

impl StreamClock {
    fn new(ks: &Keyspace, repl: &Replicator) -> StreamClock {
        StreamClock {
            recent: Recent::read(ks, repl),
            reads: u64::MAX,
            uses: 0,
        }
    }

    fn read(&mut self, ks: &Keyspace, repl: &Replicator, reads: u64) -> Recent {
        if reads != self.reads || self.uses >= RECENT_WRITES {
            self.recent = Recent::read(ks, repl);
            self.reads = reads;
            self.uses = 0;
        }
        self.uses += 1;
        self.recent
    }

    /// The stream's task waited on something besides the stream.
    fn waited(&mut self) {
        self.uses = RECENT_WRITES;
    }
}

/// Merges a remote delta into the keyspace, exactly as a local write merges.
/// `live`: the origin and number of a write from a live stream, judged again
/// under the shard lock: a state transfer that covers it may have completed
/// since it was first judged, and forgotten keys its sender deleted and
/// collected, this write's among them; merging it after that would bring it
/// back here alone. Returns whether it was merged.
fn apply(
    ks: &Keyspace,
    repl: &Replicator,
    delta: Delta,
    live: Option<(NodeId, u64, bytes::Bytes)>,
    recent: Recent,
) -> bool {
    let still_due = || {
        live.as_ref()
            .is_none_or(|(o, seq, _)| repl.core.lock().judge(*o, *seq) == Arrival::Apply)
    };
    // Counted before the shard lock goes, so that a state transfer's scan
    // never sees the write without its count (`Core::transfer_tail`).
    let count = |live: Option<(NodeId, u64, bytes::Bytes)>| {
        if let Some((origin, seq, frame)) = live {
            if let Some(log) = repl.log.get() {
                // The log reads a write back without the link that named an
                // own put's origin.
                match wire::widen(&frame, origin) {
                    Ok(wide) => {
                        log.append(&wide);
                    }
                    Err(e) => warn!(%origin, seq, "a write applied could not be logged: {e}"),
                }
            }
            repl.core.lock().applied(origin, seq, recent.ms, frame);
        }
    };
    let stamp = delta.stamp();
    match delta {
        Delta::Key { db, key, state } => {
            let db = db as usize;
            if db >= ks.databases() {
                warn!(
                    db,
                    "replicated write for a database this node does not have"
                );
                return false;
            }
            let index = ks.shard_of(&key);
            let mut locked = ks.lock(SmallVec::from_slice(&[index]));
            let Ok(shard) = locked.shard(index) else {
                return false;
            };
            if !still_due() {
                return false;
            }
            observe(ks, repl, stamp, recent);
            // A write new to this node, stamped before this node's own
            // flush: the flush had not seen it (only the flushing node can
            // tell, so only it logs this).
            let floor = shard.dbs[db].floor;
            let mut conflicts = if live.is_some() && floor.node == ks.node() {
                state.lost_to_flush(floor)
            } else {
                Vec::new()
            };
            // Notifications read existence and the newest stamp, which a
            // cold key's stand-in tells: the merge alone reads it back.
            let before = crate::notify::Before::of(ks, shard.dbs[db].indexed(&key));
            // A register's winning value moves into the key rather than
            // being copied. Anything more takes the general merge: the
            // owned one's first-write shortcut is held to it only for
            // deltas made over nothing, which a peer's need not be.
            let merged = if state.extras.is_none() && state.coll.is_none() {
                shard.dbs[db].merge_owned(&key, state, ks.gc_acked())
            } else {
                shard.dbs[db].merge(&key, &state, ks.gc_acked())
            };
            crate::notify::after_merge(ks, db, &key, before, shard.dbs[db].indexed(&key));
            let reported: Vec<Stamp> = conflicts.iter().map(|c| c.loser.stamp).collect();
            conflicts.extend(
                merged
                    .into_iter()
                    .filter(|c| !reported.contains(&c.loser.stamp)),
            );
            count(live);
            // Under the shard lock: a client that read the key before the
            // merge was remembered before it, and is told.
            ks.key_changed(db, &key);
            drop(locked);
            if !conflicts.is_empty() {
                ks.conflicts
                    .record(db, &key, ks.clock.physical_unix_ms(), conflicts);
            }
        }
        Delta::Flush { db, stamp } => {
            let mut locked = ks.lock_all();
            if !still_due() {
                return false;
            }
            observe(ks, repl, stamp, recent);
            ks.invalidations.changed_all();
            ks.watches.touched_db(db.map(|d| d as usize));
            for shard in locked.shards() {
                match db {
                    Some(d) if (d as usize) < shard.dbs.len() => shard.dbs[d as usize].flush(stamp),
                    Some(_) => {}
                    None => shard.dbs.iter_mut().for_each(|d| d.flush(stamp)),
                }
            }
            count(live);
        }
    }
    true
}

/// Whether merging `delta` alone cannot bring back anything a delete
/// collected here had beaten: everything it brings is stamped after all
/// that went (a flush only removes). A closed member's write that is
/// (`Core::admits`) merges like any other: its new writes after it came
/// back, say.
fn newer_than_collected(ks: &Keyspace, delta: &Delta) -> bool {
    match delta {
        Delta::Key { state, .. } => state
            .earliest_added_stamp()
            .is_none_or(|s| s > ks.collected()),
        Delta::Flush { .. } => true,
    }
}

fn observe(ks: &Keyspace, repl: &Replicator, stamp: Stamp, recent: Recent) {
    if ks.clock.observe_near(stamp, recent.physical).is_err() {
        repl.drift_events.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log serves a peer by reading the leading fields of our frames:
    /// they must stay where `own_seq` looks for them.
    #[test]
    fn an_outbox_holds_a_message_until_the_writes_before_it_were_sent_and_drops_past_its_bound() {
        let info = Arc::new(PeerInfo::new(SocketAddr::from(([127, 0, 0, 1], 1))));
        let outbox = Outbox {
            info: info.clone(),
            queue: Mutex::new((std::collections::VecDeque::new(), 0)),
        };
        outbox.push(5, bytes::Bytes::from_static(b"after 5"));
        outbox.push(7, bytes::Bytes::from_static(b"after 7"));
        assert!(outbox.take_through(4).is_empty());
        assert_eq!(
            outbox.take_through(6),
            vec![bytes::Bytes::from_static(b"after 5")]
        );
        assert_eq!(outbox.take_through(7).len(), 1);
        assert!(outbox.is_empty());
        let big = bytes::Bytes::from(vec![0u8; OUTBOX_BYTES / 2 + 1]);
        outbox.push(0, big.clone());
        outbox.push(0, big.clone());
        assert_eq!(info.pubsub_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(outbox.take_through(0).len(), 1);
        outbox.push(0, big);
        assert_eq!(info.pubsub_dropped.load(Ordering::Relaxed), 1, "room again");
        outbox.take_through(0);
        // Alone, a message past the bound still goes.
        outbox.push(0, bytes::Bytes::from(vec![0u8; OUTBOX_BYTES + 1]));
        assert_eq!(outbox.take_through(0).len(), 1);
    }

    #[test]
    fn own_seq_reads_the_number_of_our_own_frames_only() {
        let me = NodeId(77);
        let stamp = Stamp { time: 5, node: me };
        let frame = |origin: NodeId, seq: u64| {
            chorus_crdt::encode(&ReplMsg::Delta {
                origin,
                seq,
                delta: Delta::Flush { db: Some(1), stamp },
            })
            .unwrap()
        };
        assert_eq!(own_seq(me, &frame(me, 300)), Some(300));
        assert_eq!(own_seq(me, &frame(me, u64::MAX)), Some(u64::MAX));
        assert_eq!(own_seq(me, &frame(NodeId(78), 300)), None);
        let heartbeat = chorus_crdt::encode(&ReplMsg::Heartbeat {
            origin: me,
            seq: 300,
            promise: stamp,
            stable: stamp,
            retired: vec![],
        })
        .unwrap();
        assert_eq!(own_seq(me, &heartbeat), None);
        assert_eq!(own_seq(me, &[0xfe, 1, 2, 3]), None, "a tally record");
        assert_eq!(
            own_seq(me, &[0xfd, 1, 2, 3]),
            None,
            "an integer tally record"
        );
        assert_eq!(
            own_seq(me, &[0xfc, 1, 2, 3]),
            None,
            "an integer tally record of the node's own epoch"
        );
        assert_eq!(own_seq(me, &[]), None);
    }

    /// #11 item 14: WAIT counted a peer by the highest sequence it ever
    /// acknowledged, so a peer that restarted empty still counted.
    #[test]
    fn a_peer_that_resumes_with_less_than_it_acknowledged_no_longer_counts_for_wait() {
        let me = NodeId(1);
        let repl = Replicator::new(me, 1 << 20, || 0);
        let peer = Arc::new(PeerInfo::new("127.0.0.1:1".parse().unwrap()));
        repl.peers.lock().push(peer.clone());
        peer.resumed(me, VersionVector::from_entries(&[(me, 0)]));
        peer.acked_seq.fetch_max(7, Ordering::Relaxed);
        assert_eq!(repl.peers_acked(7), 1);
        // It restarted empty: its new link resumes from nothing.
        peer.resumed(me, VersionVector::default());
        assert_eq!(repl.peers_acked(7), 0);
        assert_eq!(repl.peers_acked(0), 1);
    }

    fn wall_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Without a log, a batch's plain writes of this node's own (SET, SET
    /// with an expiry, DEL) go into the backlog as own puts, a third
    /// shorter than their messages; a write outside a batch goes as a
    /// message (`own_put_most` keeps the others out). Read with
    /// the sender named, an own put is the message it stands for, and
    /// widened (for the log, a third node, a peer of an earlier build) it
    /// is that message's bytes.
    #[test]
    fn plain_writes_go_as_own_puts_that_widen_to_their_messages() {
        let me = NodeId(1);
        let mut ks = Keyspace::new(
            1,
            chorus_crdt::Clock::new(me, chorus_crdt::system_clock, Duration::from_millis(500)),
        );
        let repl = Replicator::new(me, 1 << 20, wall_ms);
        ks.set_sink(repl.clone());
        let set = |key: &[u8], value: Option<&[u8]>, expiry: u64| {
            let mut locked = ks.lock(smallvec::smallvec![ks.shard_of(key)]);
            ks.update(&mut locked, 0, key, wall_ms(), |w| w.set(value, expiry))
                .expect("locked");
        };
        set(b"alone", Some(b"v"), 0);
        let batch = ks.batch();
        set(b"a", Some(b"value"), 0);
        set(b"b", Some(b"v"), wall_ms() + 60_000);
        set(b"a", None, 0);
        drop(batch);

        let backlog::Resume::Frames { chunks, .. } =
            repl.core.lock().backlog_mut().read_from(1, usize::MAX)
        else {
            panic!("the writes are held");
        };
        let mut frames = chorus_transport::frame::Deframer::new(1 << 20);
        let mut payloads = Vec::new();
        for chunk in &chunks {
            frames.push(chunk);
            while let Some(p) = frames.next_message().expect("whole frames") {
                payloads.push(p);
            }
        }
        let own: Vec<bool> = payloads
            .iter()
            .map(|p| chorus_crdt::codec::is_own_put(p))
            .collect();
        assert_eq!(own, [false, true, true, true], "alone, a, b, a deleted");
        let read: Vec<ReplMsg> = payloads
            .iter()
            .map(|p| wire::decode_from(me, p).expect("decodes"))
            .collect();
        for (i, msg) in read.iter().enumerate() {
            let ReplMsg::Delta { origin, seq, .. } = msg else {
                panic!("not a write: {msg:?}");
            };
            assert_eq!((*origin, *seq), (me, i as u64 + 1));
        }
        let ReplMsg::Delta {
            delta: Delta::Key { key, state, .. },
            ..
        } = &read[3]
        else {
            panic!("a key's write");
        };
        assert_eq!(
            (&key[..], state.reg.value.as_deref()),
            (&b"a"[..], None),
            "a delete"
        );
        // (Compared as encoded: `ReplMsg` has no equality.)
        let same = |a: &ReplMsg, b: &ReplMsg| {
            wire::encode_msg(a).expect("encodes") == wire::encode_msg(b).expect("encodes")
        };
        for (payload, msg) in payloads.iter().zip(&read) {
            let wide = wire::widen(payload, me).expect("widens");
            assert!(!chorus_crdt::codec::is_own_put(&wide));
            assert!(same(&wire::decode_msg(&wide).expect("a message"), msg));
        }
        let wide = wire::widen_framed(&chunks, me, 1 << 20)
            .expect("widens")
            .expect("there were own puts");
        let mut frames = chorus_transport::frame::Deframer::new(1 << 20);
        frames.push(&wide);
        let mut widened = Vec::new();
        while let Some(p) = frames.next_message().expect("whole frames") {
            assert!(!chorus_crdt::codec::is_own_put(&p));
            widened.push(wire::decode_msg(&p).expect("a message"));
        }
        assert_eq!(widened.len(), read.len());
        assert!(widened.iter().zip(&read).all(|(a, b)| same(a, b)));
        assert_eq!(
            wire::widen_framed(&chunks[..0], me, 1 << 20).expect("nothing"),
            None,
            "nothing to widen"
        );
    }

    /// A write is numbered when made, batch or not; a batch's frames reach
    /// the backlog when it closes, and a write numbered after one of them
    /// on another thread waits for it there: backlog (and log) stay in
    /// number order, and a promise or a cut counts every write made.
    #[test]
    fn a_batch_hands_its_writes_over_when_it_closes_and_the_backlog_stays_in_order() {
        let me = NodeId(1);
        let mut ks = Keyspace::new(
            1,
            chorus_crdt::Clock::new(me, chorus_crdt::system_clock, Duration::from_millis(500)),
        );
        let repl = Replicator::new(me, 1 << 20, wall_ms);
        // A delta log attached: each path that enters writes (a run, one by
        // one, parked) logs them too, in number order.
        let dir = std::env::temp_dir().join(format!("chorus-batch-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (log, _) = crate::deltalog::DeltaLog::open(&dir, crate::config::Fsync::No, 0)
            .expect("a delta log");
        repl.set_log(log.clone());
        ks.set_sink(repl.clone());
        let set = |key: &[u8]| {
            let mut locked = ks.lock(smallvec::smallvec![ks.shard_of(key)]);
            ks.update(&mut locked, 0, key, wall_ms(), |w| {
                w.set(Some(b"v"), 0);
                w.state().reg.stamp
            })
            .expect("locked")
        };
        let promise = |repl: &Replicator| {
            repl.gc_tick(&ks);
            repl.core.lock().last_promise()
        };
        set(b"before");
        assert_eq!((repl.head_seq(), repl.backlog_head()), (1, 1));

        let batch = ks.batch();
        set(b"a");
        assert_eq!((repl.head_seq(), repl.backlog_head()), (2, 1), "staged");
        // Another thread's write, numbered after the staged one, waits.
        let b = std::thread::scope(|s| s.spawn(|| set(b"b")).join().unwrap());
        assert_eq!((repl.head_seq(), repl.backlog_head()), (3, 1));
        let during = promise(&repl);
        assert_eq!(during.seq, 3);
        assert!(during.stamp > b);
        assert!(repl.cut_vv().contains(&(me, 3)));
        drop(batch);
        assert_eq!(repl.backlog_head(), 3);
        // A batch's writes with another thread's numbered among them enter
        // one by one (not as one run), in number order.
        let batch = ks.batch();
        set(b"x");
        std::thread::scope(|s| s.spawn(|| set(b"y")).join().unwrap());
        set(b"z");
        assert_eq!((repl.head_seq(), repl.backlog_head()), (6, 3));
        drop(batch);
        assert_eq!(repl.backlog_head(), 6);

        let mut frames = Vec::new();
        let mut payloads = Vec::new();
        match repl.core.lock().backlog_mut().read_from(1, usize::MAX) {
            backlog::Resume::Frames { chunks, .. } => {
                for chunk in chunks {
                    let mut at = 0;
                    while at < chunk.len() {
                        let len =
                            u32::from_be_bytes(chunk[at..at + 4].try_into().unwrap()) as usize;
                        payloads.push(chunk[at + 4..at + 4 + len].to_vec());
                        match wire::decode_msg(&chunk[at + 4..at + 4 + len]).expect("decodes") {
                            ReplMsg::Delta {
                                seq,
                                delta: Delta::Key { key, .. },
                                ..
                            } => frames.push((seq, key)),
                            other => panic!("{other:?}"),
                        }
                        at += 4 + len;
                    }
                }
            }
            other => panic!("{other:?}"),
        }
        let expected: Vec<(u64, Vec<u8>)> = vec![
            (1, b"before".to_vec()),
            (2, b"a".to_vec()),
            (3, b"b".to_vec()),
            (4, b"x".to_vec()),
            (5, b"y".to_vec()),
            (6, b"z".to_vec()),
        ];
        assert_eq!(frames, expected);

        // A long pipeline hands its writes over every 64, and before a
        // command that may run long, not only at its end.
        let batch = ks.batch();
        for i in 0..64u32 {
            set(format!("k{i}").as_bytes());
        }
        assert_eq!(repl.backlog_head(), 6 + 64);
        set(b"c");
        assert_eq!(repl.backlog_head(), 6 + 64);
        ks.hand_over_batch();
        assert_eq!(repl.backlog_head(), 6 + 65);
        drop(batch);

        // The log holds what the backlog does, record for record.
        log.close();
        let mut logged = Vec::new();
        let read = log.read_numbered(
            1,
            usize::MAX,
            |p| own_seq(me, p),
            |p| logged.push(p.to_vec()),
        );
        assert!(
            matches!(read, crate::deltalog::NumberedRead::Read { last: 71, .. }),
            "{read:?}"
        );
        assert_eq!(logged[..6], payloads[..]);
        let numbers: Vec<Option<u64>> = logged.iter().map(|p| own_seq(me, p)).collect();
        assert_eq!(numbers, (1..=71).map(Some).collect::<Vec<_>>());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A keyspace replicating as `me`, with a delta log in a fresh
    /// directory named after `name`.
    fn logging_node(
        me: NodeId,
        name: &str,
    ) -> (
        Keyspace,
        Arc<Replicator>,
        Arc<crate::deltalog::DeltaLog>,
        std::path::PathBuf,
    ) {
        logging_node_with(me, name, 1 << 20)
    }

    /// [`logging_node`] with a backlog of `backlog_bytes`.
    fn logging_node_with(
        me: NodeId,
        name: &str,
        backlog_bytes: usize,
    ) -> (
        Keyspace,
        Arc<Replicator>,
        Arc<crate::deltalog::DeltaLog>,
        std::path::PathBuf,
    ) {
        let mut ks = Keyspace::new(
            1,
            chorus_crdt::Clock::new(me, chorus_crdt::system_clock, Duration::from_millis(500)),
        );
        let repl = Replicator::new(me, backlog_bytes, wall_ms);
        let dir = std::env::temp_dir().join(format!("chorus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (log, _) = crate::deltalog::DeltaLog::open(&dir, crate::config::Fsync::No, 0)
            .expect("a delta log");
        repl.set_log(log.clone());
        ks.set_sink(repl.clone());
        (ks, repl, log, dir)
    }

    fn set_on(ks: &Keyspace, key: &[u8]) {
        let mut locked = ks.lock(smallvec::smallvec![ks.shard_of(key)]);
        ks.update(&mut locked, 0, key, wall_ms(), |w| w.set(Some(b"v"), 0))
            .expect("locked");
    }

    /// The log, closed, holds `me`'s records 1 to `last`, each once and in
    /// order.
    fn assert_logged_once_each(log: &crate::deltalog::DeltaLog, me: NodeId, last: u64) {
        log.close();
        let mut numbers = Vec::new();
        let read = log.read_numbered(
            1,
            usize::MAX,
            |p| own_seq(me, p),
            |p| numbers.push(own_seq(me, p)),
        );
        assert_eq!(read, crate::deltalog::NumberedRead::Read { last });
        assert_eq!(numbers, (1..=last).map(Some).collect::<Vec<_>>());
    }

    /// A panic while a pipeline's writes go into the log, after some of
    /// them did, costs the log none of them: the next hand-over logs the
    /// rest, each once and in number order.
    #[test]
    fn a_panic_while_logging_a_run_loses_none_of_its_records() {
        let me = NodeId(5);
        let (ks, repl, log, dir) = logging_node(me, "run-panic");
        let set = |key: &[u8]| set_on(&ks, key);
        let batch = ks.batch();
        for key in [b"a", b"b", b"c"] {
            set(key);
        }
        log.panic_at.store(2, Ordering::SeqCst);
        let panicked =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ks.hand_over_batch()));
        assert!(panicked.is_err(), "the log's append panicked");
        drop(batch);
        set(b"d");
        assert_eq!(repl.backlog_head(), 4);

        assert_logged_once_each(&log, me, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A panic while a parked write goes into the log leaves it parked:
    /// the next write enters it, logged once, and the backlog goes on.
    #[test]
    fn a_panic_while_logging_a_parked_write_leaves_it_parked() {
        let me = NodeId(6);
        let (ks, repl, log, dir) = logging_node(me, "park-panic");
        let set = |key: &[u8]| set_on(&ks, key);
        let batch = ks.batch();
        set(b"a");
        // Another thread's write, numbered 2, parks behind the staged 1.
        std::thread::scope(|s| s.spawn(|| set(b"b")).join().unwrap());
        assert_eq!((repl.head_seq(), repl.backlog_head()), (2, 0));
        log.panic_at.store(2, Ordering::SeqCst);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(batch)));
        assert!(panicked.is_err(), "the log's append panicked");
        assert_eq!(repl.backlog_head(), 1);
        // The thread's next pipeline (its batch, cut short, is still open).
        set(b"c");
        ks.hand_over_batch();
        assert_eq!(repl.backlog_head(), 3, "2 was entered, then 3");

        assert_logged_once_each(&log, me, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writes laid out in one stretch of the stage (short values) and
    /// appended (a value past what a stretch takes, a flush) mix in one
    /// batch, a later batch lays its frames over the bytes of a longer
    /// one, and a value past one fragment, or a write outside any batch,
    /// skips the stage: the backlog's frames and the log's records read
    /// back as the writes made, in order.
    #[test]
    fn staged_writes_of_either_layout_read_back_whole() {
        let me = NodeId(8);
        // Room for the value past one fragment, and all before it.
        let (ks, repl, log, dir) = logging_node_with(me, "stage-layouts", 8 << 20);
        let set = |key: &[u8], value: &[u8]| {
            let mut locked = ks.lock(smallvec::smallvec![ks.shard_of(key)]);
            ks.update(&mut locked, 0, key, wall_ms(), |w| w.set(Some(value), 0))
                .expect("locked");
        };
        let long = vec![b'x'; 5000];
        let huge = vec![b'h'; chorus_transport::frame::MAX_FRAGMENT + 10];
        let batches: [&[(&[u8], &[u8])]; 4] = [
            &[
                (b"k0", &long),
                (b"k1", b"v1"),
                (b"flush", b""),
                (b"k2", &[b'y'; 40]),
            ],
            &[(b"k3", b"z"), (b"a-longer-key-than-before", b"abc")],
            &[(b"k4", b"before"), (b"k5", &huge), (b"k6", b"after")],
            // Outside any batch (below).
            &[(b"k7", b"alone"), (b"k8", b"")],
        ];
        for (i, writes) in batches.iter().enumerate() {
            let batch = (i < 3).then(|| ks.batch());
            for &(key, value) in writes.iter() {
                if key == b"flush" {
                    repl.publish_flush(Some(3), Stamp { time: 9, node: me }, wall_ms());
                } else {
                    set(key, value);
                }
            }
            drop(batch);
        }
        let expected: Vec<_> = batches.iter().flat_map(|b| b.iter()).collect();
        let check = |seq: u64, msg: ReplMsg| {
            let ReplMsg::Delta {
                origin,
                seq: got,
                delta,
            } = msg
            else {
                panic!("not a write: {msg:?}");
            };
            assert_eq!((origin, got), (me, seq));
            let (key, value) = *expected[seq as usize - 1];
            match delta {
                Delta::Key { key: k, state, .. } => {
                    assert_eq!(k, key);
                    assert_eq!(state.reg.value.as_deref(), Some(value));
                    assert_eq!(state.reg.stamp.node, me, "the origin put back");
                }
                Delta::Flush { db, .. } => assert_eq!((key, db), (&b"flush"[..], Some(3))),
            }
        };

        let tail = repl
            .core
            .lock()
            .transfer_tail(NodeId(99), &mut VersionVector::default());
        let framed: Vec<u8> = tail.own.iter().flat_map(|c| c.iter().copied()).collect();
        let mut rest = &framed[..];
        let (mut seq, mut message) = (0, Vec::new());
        while let Some((header, after)) = rest.split_first_chunk::<4>() {
            let header = u32::from_be_bytes(*header);
            let len = (header & !(1 << 31)) as usize;
            message.extend_from_slice(&after[..len]);
            rest = &after[len..];
            if header >> 31 == 0 {
                seq += 1;
                check(seq, wire::decode_msg(&message).expect("a frame decodes"));
                message.clear();
            }
        }
        assert_eq!(seq, expected.len() as u64, "every write framed");

        log.close();
        let mut seq = 0;
        log.read_numbered(
            1,
            usize::MAX,
            |p| own_seq(me, p),
            |p| {
                seq += 1;
                check(seq, wire::decode_msg(p).expect("a record decodes"));
            },
        );
        assert_eq!(seq, expected.len() as u64, "every write logged");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A one-element write and an increment that another node's dots
    /// surround go out (to the log, as to the backlog) in their compact
    /// form under this node's name, and read back as the delta `Coll` each
    /// would have filled: the origin the body leaves implied is the head's.
    #[test]
    fn a_compact_write_reads_back_under_its_writers_name() {
        use chorus_crdt::{Dot, ElemDelta, Kind, OneWrite, Tally, Written};
        let me = NodeId(5);
        let (_ks, repl, log, dir) = logging_node(me, "compact-origin");
        let stamp = Stamp {
            time: 1 << 40,
            node: me,
        };
        let one = OneWrite {
            dot: Dot {
                n: stamp.time,
                node: me,
            },
            replaced: [(me, 3), (NodeId(9), 4)]
                .into_iter()
                .map(|(node, n)| Dot { node, n })
                .collect(),
            counted: None,
        };
        let tally = Tally {
            epoch: Stamp {
                time: 7,
                node: NodeId(9),
            },
            ops: 2,
            int: -4,
            float: 0.0,
            float_ops: 0,
        };
        let writes = [
            Written::Field(b"value"),
            Written::Count {
                kind: Kind::ZSet,
                node: me,
                tally,
            },
        ];
        for written in writes {
            repl.publish_one(0, b"key", stamp, &one, b"elem", written, wall_ms());
        }
        // A write of several elements that made its key, and the same
        // write's collection part alone (the compact collection form).
        let made = KeyState::default().coll_write(stamp, Kind::Set, |c, d| {
            for member in [&b"a"[..], b"b", b"c"] {
                c.sadd_into(d, stamp, member);
            }
        });
        let mut part = made.coll().expect("a collection delta").clone();
        part.covers(Dot {
            node: NodeId(9),
            n: 4,
        });
        repl.publish_key(0, b"key", &made, wall_ms());
        repl.publish_coll(0, b"key", &part, wall_ms());
        // A write of several elements in place, one named twice.
        let mut many = chorus_crdt::ManyWrite::default();
        many.covers(Dot {
            node: NodeId(9),
            n: 4,
        });
        for (member, n) in [(&b"a"[..], 0), (b"b", 1), (b"a", 2)] {
            let dot = Dot {
                node: me,
                n: stamp.time + n,
            };
            many.added(&chorus_crdt::Probe::new(member), dot, stamp.time);
        }
        repl.publish_many(0, b"key", stamp, Kind::Set, &many, wall_ms());
        log.close();
        let mut read = Vec::new();
        log.read_numbered(
            1,
            usize::MAX,
            |p| own_seq(me, p),
            |p| read.push(wire::decode_msg(p).expect("a logged write decodes")),
        );
        assert_eq!(read.len(), 5);
        let parts = read.split_off(2);
        let whole = |msg: &ReplMsg| match msg {
            ReplMsg::Delta {
                origin,
                delta: Delta::Key { state, .. },
                ..
            } => (*origin, state.clone()),
            other => panic!("not a key's write: {other:?}"),
        };
        assert_eq!(whole(&parts[0]), (me, made.clone()));
        let (origin, state) = whole(&parts[1]);
        assert_eq!((origin, state.coll()), (me, Some(&part)));
        let (origin, state) = whole(&parts[2]);
        assert_eq!(
            (origin, state.coll()),
            (me, Some(&many.delta(stamp, Kind::Set)))
        );
        for (msg, written) in read.into_iter().zip(writes) {
            let ReplMsg::Delta {
                origin,
                delta: Delta::Key { state, .. },
                ..
            } = msg
            else {
                panic!("not a key's write: {msg:?}");
            };
            assert_eq!(origin, me);
            assert_eq!(state.coll(), Some(&one.delta(stamp, b"elem", written)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write whose encoding panics still leaves no gap in the numbers:
    /// the writes after it reach the backlog.
    #[test]
    fn a_write_that_panics_while_encoding_leaves_no_gap() {
        let repl = Replicator::new(NodeId(1), 1 << 20, wall_ms);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            repl.publish(0, |_| panic!("an encoding bug"));
        }));
        assert!(panicked.is_err());
        repl.publish_key(0, b"k", &KeyState::default(), 0);
        assert_eq!((repl.head_seq(), repl.backlog_head()), (2, 2));
    }

    async fn linked_node(id: u64, repair_every: Duration) -> (Arc<Keyspace>, Arc<Replicator>) {
        let mut ks = Keyspace::new(
            1,
            chorus_crdt::Clock::new(
                NodeId(id),
                chorus_crdt::system_clock,
                Duration::from_millis(500),
            ),
        );
        let repl = Replicator::new(NodeId(id), 1 << 20, wall_ms);
        repl.set_repair_interval(repair_every);
        ks.set_sink(repl.clone());
        let ks = Arc::new(ks);
        let config = ReplConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            peers: Vec::new(),
            cluster_name: "repair-test".into(),
            node_name: String::new(),
            secret: b"a secret long enough for the handshake".to_vec(),
            tls: None,
            max_message: max_message_for(1 << 20),
            window: chorus_transport::DEFAULT_WINDOW,
            congestion: chorus_transport::Congestion::Cubic,
            compression: false,
        };
        start(ks.clone(), repl.clone(), config).unwrap();
        (ks, repl)
    }

    fn holds(ks: &Keyspace, key: &[u8]) -> bool {
        ks.dump().0.iter().any(|(_, k, _)| k == key)
    }

    /// What no version vector counts (the part of a state transfer that
    /// arrived before its sender went down for good) reaches no other node
    /// by relaying or transfers: nodes whose vectors agree compare digests
    /// and repair where they differ.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_no_version_vector_counts_reaches_the_other_node_by_repair() {
        let (ka, ra) = linked_node(1, Duration::from_millis(200)).await;
        let (kb, rb) = linked_node(2, Duration::from_millis(200)).await;
        let addr = |r: &Replicator| r.listen.lock().unwrap();
        ra.add_peer(addr(&rb)).unwrap();
        rb.add_peer(addr(&ra)).unwrap();
        // Merged on A as a transfer merges, counted by no vector.
        let state =
            KeyState::default().write(Stamp::from_unix_ms(wall_ms(), NodeId(9)), Some(b"v"), 0);
        {
            let i = ka.shard_of(b"orphan");
            let mut locked = ka.lock(SmallVec::from_slice(&[i]));
            locked.shard(i).unwrap().dbs[0].merge(b"orphan", &state, Stamp::ZERO);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !holds(&kb, b"orphan") {
            assert!(
                std::time::Instant::now() < deadline,
                "B never got the key A holds uncounted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(rb.repairs_asked.load(Ordering::Relaxed) >= 1);
        assert_eq!(ra.applied_vv(), rb.applied_vv(), "no vector moved");
    }

    /// Review of repair: every link's offer and every answer to one read
    /// every key; with `n` peers that was `2n` scans per interval. One
    /// digest now serves until a write, a collection or a transfer changes
    /// the state.
    #[tokio::test]
    async fn one_digest_serves_every_link_until_the_state_changes() {
        let ks = Keyspace::new(
            1,
            chorus_crdt::Clock::new(
                NodeId(1),
                chorus_crdt::system_clock,
                Duration::from_millis(500),
            ),
        );
        let repl = Replicator::new(NodeId(1), 1 << 20, || 0);
        let digest =
            |ks, repl| async move { shared_digest(ks, repl, Stamp::ZERO).await.unwrap().dbs };
        let first = digest(&ks, &repl).await;
        let again = digest(&ks, &repl).await;
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(repl.digests_taken.load(Ordering::Relaxed), 1);
        repl.publish_key(0, b"k", &KeyState::default(), 0);
        let after_a_write = digest(&ks, &repl).await;
        assert!(!Arc::ptr_eq(&first, &after_a_write));
        ks.changes_besides_writes.fetch_add(1, Ordering::SeqCst);
        let after_a_collection = digest(&ks, &repl).await;
        assert!(!Arc::ptr_eq(&after_a_write, &after_a_collection));
        assert_eq!(repl.digests_taken.load(Ordering::Relaxed), 3);
    }

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
        assert_eq!(repl.gc_state().stable, Stamp::ZERO);
        let at_cut = repl.stable_for_cut();
        repl.stored(at_cut);
        assert_eq!(repl.gc_tick(&ks), at_cut);
        assert_eq!(repl.gc_state().stable, at_cut);
        assert!(repl.stable_for_cut() > at_cut, "unstored, it moves on");
    }
}
