//! Replication's decisions as a pure state machine (as quinn-proto is under
//! quinn): what to send a peer next, when to pass on another origin's writes,
//! when a state transfer is needed, what arriving writes to apply, what this
//! node promises and reports stable, and the GC floor. No I/O, no clock, no
//! lock: times come in as arguments, and the async driver in `mod.rs` holds
//! the one lock around a [`Core`] and only moves bytes.
//!
//! Sending, per link: [`Core::plan`] reads the link's [`LinkState`] (its
//! cursor into our backlog, how far each other origin was passed on, the
//! last promise sent) and returns a [`Plan`]: frames to send live, in order,
//! then a heartbeat, then relayed frames; or a state transfer when the
//! backlog or a relay log no longer reaches back to what the peer lacks.
//!
//! Receiving: a frame is judged against the version vector
//! ([`Core::judge`]); once merged into the keyspace, [`Core::applied`]
//! advances the vector and keeps the frame for relaying. Heartbeats feed the
//! GC view; [`Core::gc_tick`] turns it into our stable stamp and the floor.

use std::collections::{BTreeMap, BTreeSet};

use chorus_crdt::{NodeId, Stamp};

use super::backlog::{Backlog, Resume};
use super::gc::GcView;
use super::relay::{Relay, Relayed};
use super::version::{Arrival, VersionVector};

/// How long a peer may leave another origin's write unacknowledged before
/// this node passes it on: well above the ack interval plus a round trip,
/// so a healthy mesh never forwards.
pub const RELAY_DELAY_MS: u64 = 1_000;
/// About how many bytes of backlog one plan hands the live stream.
pub const SEND_BATCH_BYTES: usize = 256 * 1024;
/// At most this many relayed frames per origin in one plan.
const RELAY_BATCH: usize = 256;

/// "Every write of ours numbered after `seq` is stamped after `stamp`."
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Promise {
    pub seq: u64,
    pub stamp: Stamp,
}

/// Our stable stamp (we hold every write stamped before it) and the GC
/// floor (every node holds every write stamped before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcState {
    pub stable: Stamp,
    pub floor: Stamp,
}

/// What one outbound link has sent so far. Made anew on every (re)connect
/// from the peer's `Resume`.
#[derive(Debug, Clone)]
pub struct LinkState {
    peer: NodeId,
    /// The next of our own writes to send.
    cursor: u64,
    /// Per other origin, the next of its writes to pass on.
    relayed: BTreeMap<NodeId, u64>,
    /// The last promise stamp sent on this link.
    promised: Stamp,
}

impl LinkState {
    /// A link to `peer`, which has applied what `resume` says.
    pub fn new(me: NodeId, peer: NodeId, resume: &VersionVector) -> LinkState {
        LinkState {
            peer,
            cursor: resume.get(me) + 1,
            relayed: BTreeMap::new(),
            promised: Stamp::ZERO,
        }
    }

    /// The last of our writes handed to this link.
    pub fn sent_seq(&self) -> u64 {
        self.cursor - 1
    }

    /// A state transfer covering `covered` was sent: continue after it.
    pub fn transferred(&mut self, me: NodeId, covered: &VersionVector) {
        let next = covered.get(me) + 1;
        debug_assert!(
            next >= self.cursor,
            "a transfer never moves the cursor back"
        );
        self.cursor = self.cursor.max(next);
        for (origin, seq) in covered.entries() {
            let e = self.relayed.entry(origin).or_insert(0);
            *e = (*e).max(seq + 1);
        }
    }
}

/// A heartbeat to send (see `wire::ReplMsg::Heartbeat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub seq: u64,
    pub promise: Stamp,
    pub stable: Stamp,
    pub retired: Vec<NodeId>,
}

/// What a link sends next, in this order.
#[derive(Debug, Default)]
pub struct Plan {
    /// Our own writes, pre-framed, through sequence number `last`.
    pub live: Option<(u64, Vec<bytes::Bytes>)>,
    pub heartbeat: Option<Heartbeat>,
    /// Other origins' frames the peer has long been missing.
    pub relay: Vec<(NodeId, Vec<bytes::Bytes>)>,
    /// The peer lacks writes no log here holds: stream the whole state.
    pub transfer: bool,
}

impl Plan {
    /// Whether there is anything to send.
    pub fn is_busy(&self) -> bool {
        self.live.is_some() || self.heartbeat.is_some() || !self.relay.is_empty() || self.transfer
    }
}

/// Replication's state. See the module doc.
#[derive(Debug)]
pub struct Core {
    me: NodeId,
    backlog: Backlog,
    /// What this node has applied from each other origin.
    applied: VersionVector,
    relay: Relay,
    gc: GcView,
    promise: Promise,
    gc_state: GcState,
    /// Our stable stamp before the limit of what we have stored.
    unstored_stable: Stamp,
    /// With a store: the stable stamp as of the last stored cut, which what
    /// we report and collect below never passes.
    stored_stable: Option<Stamp>,
}

impl Core {
    pub fn new(me: NodeId, backlog_bytes: usize) -> Core {
        Core {
            me,
            backlog: Backlog::new(backlog_bytes),
            applied: VersionVector::default(),
            relay: Relay::new(backlog_bytes),
            gc: GcView::default(),
            promise: Promise::default(),
            gc_state: GcState::default(),
            unstored_stable: Stamp::ZERO,
            stored_stable: None,
        }
    }

    // ----- local writes -----

    /// Numbers the next local write; `encode` appends its frame's payload.
    pub fn publish(&mut self, now_ms: u64, encode: impl FnOnce(u64, Vec<u8>) -> Vec<u8>) -> u64 {
        let before = self.backlog.head();
        let seq = self.backlog.push(now_ms, encode);
        debug_assert_eq!(seq, before + 1, "sequence numbers have no gaps");
        seq
    }

    /// The newest sequence number handed out.
    pub fn head(&self) -> u64 {
        self.backlog.head()
    }

    pub fn backlog_bytes(&self) -> usize {
        self.backlog.bytes()
    }

    /// How long the oldest write after `acked` has waited at `now_ms`.
    pub fn lag_ms(&self, acked: u64, now_ms: u64) -> Option<u64> {
        self.backlog.lag_ms(acked, now_ms)
    }

    // ----- sending -----

    /// What `link` sends next; `acked` is what its peer last acknowledged.
    /// The link's state moves past everything planned.
    pub fn plan(&mut self, link: &mut LinkState, acked: &VersionVector, now_ms: u64) -> Plan {
        let mut plan = Plan::default();
        match self.backlog.read_from(link.cursor, SEND_BATCH_BYTES) {
            Resume::Frames { last, chunks } => {
                debug_assert!(last >= link.cursor);
                link.cursor = last + 1;
                plan.live = Some((last, chunks));
            }
            Resume::UpToDate => {}
            Resume::Trimmed => {
                plan.transfer = true;
                return plan;
            }
        }
        // A promise goes after every write it speaks of.
        let promise = self.promise;
        if promise.seq < link.cursor && promise.stamp > link.promised {
            plan.heartbeat = Some(Heartbeat {
                seq: promise.seq,
                promise: promise.stamp,
                stable: self.gc_state.stable,
                retired: self.gc.retired(),
            });
            link.promised = promise.stamp;
        }
        for origin in self.relay.origins() {
            if origin == self.me || origin == link.peer {
                continue;
            }
            let sent = link.relayed.get(&origin).copied().unwrap_or(0);
            let from = sent.max(acked.get(origin) + 1);
            match self
                .relay
                .due(origin, from, now_ms, RELAY_DELAY_MS, RELAY_BATCH)
            {
                Relayed::Frames(frames) => {
                    if let Some(&(last, _)) = frames.last() {
                        link.relayed.insert(origin, last + 1);
                        plan.relay
                            .push((origin, frames.into_iter().map(|(_, f)| f).collect()));
                    }
                }
                Relayed::Nothing => {}
                Relayed::Trimmed => {
                    // What is planned goes first, then the transfer.
                    plan.transfer = true;
                    return plan;
                }
            }
        }
        plan
    }

    /// What a state transfer started now covers: every other origin's writes
    /// applied so far and our own up to the newest. Anything numbered later
    /// goes live after it; anything up to it is in the keyspace already.
    pub fn transfer_covers(&self) -> VersionVector {
        let mut covered = self.applied.clone();
        covered.advance(self.me, self.backlog.head());
        covered
    }

    // ----- receiving -----

    /// A link with `peer` came up; `previous` is the node id last seen at
    /// the same address, now retired when it differs (a restarted peer).
    pub fn link_up(&mut self, peer: NodeId, previous: Option<NodeId>) {
        self.gc.know(peer);
        if let Some(old) = previous.filter(|old| *old != peer) {
            self.gc.retire(old);
        }
    }

    pub fn judge(&self, origin: NodeId, seq: u64) -> Arrival {
        self.applied.judge(origin, seq)
    }

    /// Write `seq` of `origin` was merged: advance, and keep its frame to
    /// pass on to peers cut off from `origin`.
    pub fn applied(&mut self, origin: NodeId, seq: u64, now_ms: u64, frame: bytes::Bytes) {
        self.advance(origin, seq);
        self.relay.record(origin, seq, now_ms, frame);
    }

    /// A state transfer covering `covered` was merged.
    pub fn snapshot_done(&mut self, covered: &[(NodeId, u64)], now_ms: u64) {
        for &(origin, seq) in covered {
            if origin != self.me {
                self.advance(origin, seq);
                self.relay.jump(origin, seq, now_ms);
            }
        }
    }

    /// A heartbeat from `origin` (see `wire::ReplMsg::Heartbeat`).
    pub fn heartbeat(&mut self, origin: NodeId, hb: Heartbeat) {
        for node in hb.retired {
            self.gc.retire(node);
        }
        // Before the writes it follows are applied (a state transfer still
        // merging), the promise says nothing yet.
        if self.applied.get(origin) >= hb.seq {
            self.gc.promise(origin, hb.promise);
        }
        self.gc.report_stable(origin, hb.stable);
    }

    fn advance(&mut self, origin: NodeId, seq: u64) {
        let before = self.applied.get(origin);
        self.applied.advance(origin, seq);
        debug_assert!(
            self.applied.get(origin) >= before,
            "version vectors never move back"
        );
    }

    pub fn applied_vv(&self) -> &VersionVector {
        &self.applied
    }

    pub fn relay_bytes(&self) -> usize {
        self.relay.bytes()
    }

    pub fn retired(&self) -> Vec<NodeId> {
        self.gc.retired()
    }

    // ----- GC -----

    /// Makes a promise: our writes after the newest so far are stamped after
    /// `stamp`. The caller holds every shard lock, so that each write is
    /// either numbered by now or stamped after `stamp`.
    pub fn promise(&mut self, stamp: Stamp) -> Promise {
        debug_assert!(stamp >= self.promise.stamp, "promises never move back");
        self.promise = Promise {
            seq: self.backlog.head(),
            stamp,
        };
        self.promise
    }

    /// Recomputes our stable stamp and the GC floor after a promise.
    /// `settled`: retired nodes no longer counted; `unknown_peer`: a peer
    /// whose id we have not learnt yet, which holds the floor at zero.
    pub fn gc_tick(&mut self, settled: &BTreeSet<NodeId>, unknown_peer: bool) -> GcState {
        for (origin, _) in self.applied.entries() {
            self.gc.know(origin);
        }
        let own = self.promise.stamp;
        let unstored = self.gc.stable(self.me, own, settled);
        self.unstored_stable = unstored;
        let stable = self.stored_stable.map_or(unstored, |s| unstored.min(s));
        let floor = if unknown_peer {
            Stamp::ZERO
        } else {
            self.gc.floor(self.me, own, settled).min(stable)
        };
        self.gc_state = GcState { stable, floor };
        self.gc_state
    }

    pub fn gc_state(&self) -> GcState {
        self.gc_state
    }

    /// Retired nodes that every peer (by what it acknowledged, `peers_acked`
    /// with each peer's own id) applied exactly as much of as we did: no
    /// write of theirs is still on its way, so they stop counting.
    pub fn settled(&self, peers_acked: &[(Option<NodeId>, VersionVector)]) -> BTreeSet<NodeId> {
        self.gc
            .retired()
            .into_iter()
            .filter(|r| {
                peers_acked
                    .iter()
                    .all(|(id, acked)| *id == Some(*r) || acked.get(*r) == self.applied.get(*r))
            })
            .collect()
    }

    // ----- persistence -----

    /// The node keeps its state in a store: from now on its stable stamp
    /// waits for the cuts.
    pub fn persisting(&mut self) {
        self.stored_stable = Some(Stamp::ZERO);
    }

    /// The stable stamp to record with a cut about to be taken.
    pub fn stable_for_cut(&self) -> Stamp {
        self.unstored_stable
    }

    /// A cut taken after `stable` was computed is durable.
    pub fn stored(&mut self, stable: Stamp) {
        if let Some(s) = self.stored_stable.as_mut() {
            *s = stable;
        }
    }

    /// What a cut records as applied: every other origin's writes, and our
    /// own up to the newest (taken with every shard held, it is exact).
    pub fn cut_vv(&self) -> Vec<(NodeId, u64)> {
        let mut vv = self.applied.entries();
        let head = self.backlog.head();
        if head > 0 {
            vv.push((self.me, head));
        }
        vv
    }

    /// Starts from a store: `applied` as the store holds it, `lives` the
    /// earlier lives of this node, retired.
    pub fn restore(&mut self, applied: &[(NodeId, u64)], lives: &[NodeId], now_ms: u64) {
        for &(origin, seq) in applied {
            if origin == self.me {
                continue;
            }
            self.advance(origin, seq);
            // Their frames are not at hand: a peer behind gets a transfer.
            self.relay.jump(origin, seq, now_ms);
        }
        for &life in lives {
            if life != self.me {
                self.gc.know(life);
                self.gc.retire(life);
            }
        }
    }
}
