//! The pure part of replication (no I/O): numbering local writes, the
//! bounded backlog peers resume from, the version vector of what this node
//! has applied from each origin, the relay log of other origins' writes it
//! can pass on, and the view of the cluster that decides tombstone GC.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chorus_crdt::{NodeId, Stamp};

/// Where a peer's resume point stands against the backlog.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// These frames, in order, starting at the requested sequence number.
    Frames(Vec<(u64, bytes::Bytes)>),
    /// Nothing newer yet.
    UpToDate,
    /// The backlog no longer reaches back that far: a state transfer is needed.
    Trimmed,
}

/// This node's outgoing writes: sequence numbers and the bounded backlog.
#[derive(Debug)]
pub struct Backlog {
    /// (seq, encoded frame), oldest first, contiguous.
    entries: VecDeque<(u64, bytes::Bytes)>,
    /// Unix ms each entry was written, parallel to `entries`.
    written_ms: VecDeque<u64>,
    bytes: usize,
    max_bytes: usize,
    /// The last sequence number handed out (0: none yet).
    head: u64,
}

impl Backlog {
    pub fn new(max_bytes: usize) -> Backlog {
        Backlog {
            entries: VecDeque::new(),
            written_ms: VecDeque::new(),
            bytes: 0,
            max_bytes,
            head: 0,
        }
    }

    /// The next sequence number, to stamp into the frame `build` returns;
    /// `now_ms` is when the write was made (for lag in ms).
    pub fn push(&mut self, now_ms: u64, build: impl FnOnce(u64) -> Vec<u8>) -> u64 {
        self.head += 1;
        // Bytes takes the Vec as it is: no copy.
        let frame = bytes::Bytes::from(build(self.head));
        self.bytes += frame.len();
        self.entries.push_back((self.head, frame));
        self.written_ms.push_back(now_ms);
        // Keep at least the newest frame, whatever its size.
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some((_, old)) = self.entries.pop_front() {
                self.bytes -= old.len();
                self.written_ms.pop_front();
            }
        }
        self.head
    }

    /// When write `seq` was made, while the backlog still holds it.
    pub fn written_at(&self, seq: u64) -> Option<u64> {
        let &(first, _) = self.entries.front()?;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.written_ms.get(i).copied()
    }

    /// How long the oldest write after `acked` has been waiting at `now_ms`:
    /// 0 when nothing is outstanding, `None` when it left the backlog.
    pub fn lag_ms(&self, acked: u64, now_ms: u64) -> Option<u64> {
        if acked >= self.head {
            return Some(0);
        }
        self.written_at(acked + 1).map(|t| now_ms.saturating_sub(t))
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    /// Bytes held, for INFO.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Up to `max` frames from sequence number `from` on.
    pub fn read_from(&self, from: u64, max: usize) -> Resume {
        if from > self.head {
            return Resume::UpToDate;
        }
        let Some(&(first, _)) = self.entries.front() else {
            return Resume::Trimmed;
        };
        if from < first {
            return Resume::Trimmed;
        }
        let skip = (from - first) as usize;
        Resume::Frames(self.entries.iter().skip(skip).take(max).cloned().collect())
    }
}

/// What arrived against what was applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next one from its origin: apply it.
    Apply,
    /// Already applied: skip it.
    Duplicate,
    /// Something before it is missing: do not apply, resume from `expected`.
    Gap { expected: u64 },
}

/// Per origin, the highest sequence number applied without a gap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    pub fn get(&self, origin: NodeId) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    pub fn judge(&self, origin: NodeId, seq: u64) -> Arrival {
        let have = self.get(origin);
        if seq <= have {
            Arrival::Duplicate
        } else if seq == have + 1 {
            Arrival::Apply
        } else {
            Arrival::Gap { expected: have + 1 }
        }
    }

    /// Records `seq` from `origin` as applied (never moves backwards).
    pub fn advance(&mut self, origin: NodeId, seq: u64) {
        let e = self.0.entry(origin).or_default();
        *e = (*e).max(seq);
    }

    pub fn entries(&self) -> Vec<(NodeId, u64)> {
        self.0.iter().map(|(n, s)| (*n, *s)).collect()
    }

    pub fn from_entries(entries: &[(NodeId, u64)]) -> VersionVector {
        let mut vv = VersionVector::default();
        for (n, s) in entries {
            vv.advance(*n, *s);
        }
        vv
    }
}

/// What a sender may pass on of another origin's writes right now.
#[derive(Debug, PartialEq, Eq)]
pub enum Relayed {
    /// These frames, in order, starting at the requested sequence number.
    Frames(Vec<(u64, bytes::Bytes)>),
    /// Nothing due: the peer has it all, or has not been missing it long.
    Nothing,
    /// The peer has long been missing writes this log no longer holds.
    Trimmed,
}

/// One origin's frames, as this node applied them, oldest first, contiguous.
#[derive(Debug, Default)]
struct OriginLog {
    /// (seq, unix ms applied here, frame).
    entries: VecDeque<(u64, u64, bytes::Bytes)>,
    bytes: usize,
    /// The highest sequence number applied from this origin.
    head: u64,
    /// When `head` was reached without a frame (a state transfer).
    jumped_ms: u64,
}

/// Other origins' writes as this node applied them, kept (bounded per
/// origin) so that a peer cut off from their origin can get them from here.
#[derive(Debug)]
pub struct Relay {
    logs: BTreeMap<NodeId, OriginLog>,
    max_bytes: usize,
}

impl Relay {
    pub fn new(max_bytes_per_origin: usize) -> Relay {
        Relay {
            logs: BTreeMap::new(),
            max_bytes: max_bytes_per_origin,
        }
    }

    /// Keeps frame `seq` of `origin`, applied at `now_ms`. A frame that does
    /// not follow the last one restarts the log (it stays contiguous).
    pub fn record(&mut self, origin: NodeId, seq: u64, now_ms: u64, frame: bytes::Bytes) {
        let log = self.logs.entry(origin).or_default();
        if seq <= log.head {
            return;
        }
        if seq != log.head + 1 {
            log.entries.clear();
            log.bytes = 0;
        }
        log.head = seq;
        log.bytes += frame.len();
        log.entries.push_back((seq, now_ms, frame));
        while log.bytes > self.max_bytes && log.entries.len() > 1 {
            if let Some((_, _, old)) = log.entries.pop_front() {
                log.bytes -= old.len();
            }
        }
    }

    /// Records that `origin`'s writes up to `seq` arrived without frames
    /// (in a state transfer) at `now_ms`.
    pub fn jump(&mut self, origin: NodeId, seq: u64, now_ms: u64) {
        let log = self.logs.entry(origin).or_default();
        if seq > log.head {
            log.entries.clear();
            log.bytes = 0;
            log.head = seq;
            log.jumped_ms = now_ms;
        }
    }

    pub fn origins(&self) -> Vec<NodeId> {
        self.logs.keys().copied().collect()
    }

    /// Bytes held, for INFO.
    pub fn bytes(&self) -> usize {
        self.logs.values().map(|l| l.bytes).sum()
    }

    /// Up to `max` of `origin`'s frames from `from` on that this node applied
    /// at least `delay_ms` before `now_ms`: a peer that has not acknowledged
    /// them by then is presumed cut off from their origin.
    pub fn due(
        &self,
        origin: NodeId,
        from: u64,
        now_ms: u64,
        delay_ms: u64,
        max: usize,
    ) -> Relayed {
        let Some(log) = self.logs.get(&origin) else {
            return Relayed::Nothing;
        };
        if from > log.head {
            return Relayed::Nothing;
        }
        let old_enough = |at: u64| at.saturating_add(delay_ms) <= now_ms;
        match log.entries.front() {
            Some(&(first, _, _)) if from >= first => {
                let frames: Vec<(u64, bytes::Bytes)> = log
                    .entries
                    .iter()
                    .skip((from - first) as usize)
                    .take(max)
                    .take_while(|(_, at, _)| old_enough(*at))
                    .map(|(seq, _, f)| (*seq, f.clone()))
                    .collect();
                if frames.is_empty() {
                    Relayed::Nothing
                } else {
                    Relayed::Frames(frames)
                }
            }
            // The missing write was applied here no later than the oldest
            // frame still held (or the jump that emptied the log).
            front => {
                let applied_by = front.map_or(log.jumped_ms, |&(_, at, _)| at);
                if old_enough(applied_by) {
                    Relayed::Trimmed
                } else {
                    Relayed::Nothing
                }
            }
        }
    }
}

/// What this node knows of the cluster for tombstone GC.
///
/// Each node periodically *promises* that its writes numbered after some
/// sequence number are stamped after some stamp (taken under every shard
/// lock, so no write in flight is missed), and sends the promise in order on
/// its live stream. A node that applied an origin's writes up to the promise
/// has everything that origin stamped before it. Its *stable* stamp is the
/// least promise over every node it knows of: it holds every write stamped
/// before that. The GC floor is the least stable stamp over every node: a
/// tombstone stamped before it has reached everyone and nothing older can
/// still arrive anywhere. A node that is silent, unknown or never heard from
/// holds the floor back, as it must.
#[derive(Debug, Default)]
pub struct GcView {
    /// The newest promise received from each origin (in order, on its link).
    promises: BTreeMap<NodeId, Stamp>,
    /// The newest stable stamp each node reported.
    stables: BTreeMap<NodeId, Stamp>,
    /// Every node this one has linked with or applied writes from.
    known: BTreeSet<NodeId>,
    /// Earlier lives of restarted in-memory peers: they never write again.
    retired: BTreeSet<NodeId>,
}

impl GcView {
    pub fn know(&mut self, node: NodeId) {
        self.known.insert(node);
    }

    /// `origin` promised that its writes after the ones this node applied
    /// are stamped after `promise`.
    pub fn promise(&mut self, origin: NodeId, promise: Stamp) {
        self.known.insert(origin);
        let p = self.promises.entry(origin).or_insert(promise);
        *p = (*p).max(promise);
    }

    /// `node`'s latest stable stamp. Not a maximum: a node's stable stamp
    /// drops when it learns of a new node.
    pub fn report_stable(&mut self, node: NodeId, stable: Stamp) {
        self.known.insert(node);
        self.stables.insert(node, stable);
    }

    /// `node` is an earlier life of a peer that restarted without its data;
    /// it stops holding GC back once `settled` (every peer applied as much
    /// of it as this node did).
    pub fn retire(&mut self, node: NodeId) {
        self.retired.insert(node);
    }

    pub fn retired(&self) -> Vec<NodeId> {
        self.retired.iter().copied().collect()
    }

    fn counted<'a>(
        &'a self,
        me: NodeId,
        settled: &'a BTreeSet<NodeId>,
    ) -> impl Iterator<Item = NodeId> + 'a {
        self.known
            .iter()
            .copied()
            .filter(move |n| *n != me && !(self.retired.contains(n) && settled.contains(n)))
    }

    /// This node's stable stamp, given its own latest promise; `settled`
    /// names the retired nodes no longer counted.
    pub fn stable(&self, me: NodeId, own: Stamp, settled: &BTreeSet<NodeId>) -> Stamp {
        self.counted(me, settled)
            .map(|n| self.promises.get(&n).copied().unwrap_or(Stamp::ZERO))
            .fold(own, Stamp::min)
    }

    /// The GC floor: the least stable stamp over this node and every other.
    pub fn floor(&self, me: NodeId, own: Stamp, settled: &BTreeSet<NodeId>) -> Stamp {
        let mine = self.stable(me, own, settled);
        self.counted(me, settled)
            .map(|n| self.stables.get(&n).copied().unwrap_or(Stamp::ZERO))
            .fold(mine, Stamp::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(seq: u64) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    #[test]
    fn backlog_serves_contiguous_frames_until_trimmed() {
        let mut b = Backlog::new(8 * 3);
        for t in 0..5 {
            b.push(1_000 + t, frame);
        }
        assert_eq!(b.lag_ms(5, 2_000), Some(0));
        assert_eq!(b.lag_ms(3, 2_000), Some(2_000 - 1_003));
        assert_eq!(b.lag_ms(0, 2_000), None, "write 1 left the backlog");
        assert_eq!(b.head(), 5);
        assert_eq!(b.read_from(6, 10), Resume::UpToDate);
        assert_eq!(b.read_from(2, 10), Resume::Trimmed, "only 3 frames fit");
        match b.read_from(3, 2) {
            Resume::Frames(f) => {
                assert_eq!(f.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 4])
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.bytes(), 24);
    }

    #[test]
    fn version_vector_judges_arrivals() {
        let mut vv = VersionVector::default();
        let n = NodeId(7);
        assert_eq!(vv.judge(n, 1), Arrival::Apply);
        assert_eq!(vv.judge(n, 3), Arrival::Gap { expected: 1 });
        vv.advance(n, 1);
        assert_eq!(vv.judge(n, 1), Arrival::Duplicate);
        assert_eq!(vv.judge(n, 2), Arrival::Apply);
        vv.advance(n, 0);
        assert_eq!(vv.get(n), 1, "never moves backwards");
    }

    fn relay_frames(r: Relayed) -> Vec<u64> {
        match r {
            Relayed::Frames(f) => f.into_iter().map(|(s, _)| s).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relay_passes_on_only_frames_the_peer_has_long_been_missing() {
        let o = NodeId(3);
        let mut r = Relay::new(8 * 4);
        for seq in 1..=3 {
            r.record(o, seq, 100 * seq, bytes::Bytes::from(frame(seq)));
        }
        assert_eq!(
            r.due(o, 4, 10_000, 50, 10),
            Relayed::Nothing,
            "peer has all"
        );
        assert_eq!(r.due(NodeId(9), 1, 10_000, 50, 10), Relayed::Nothing);
        assert_eq!(relay_frames(r.due(o, 1, 200, 50, 10)), vec![1]);
        assert_eq!(relay_frames(r.due(o, 1, 250, 50, 10)), vec![1, 2]);
        assert_eq!(relay_frames(r.due(o, 2, 10_000, 50, 1)), vec![2]);
        // Bounded: the oldest go; a peer needing them is sent a state transfer
        // once it has been missing them long enough.
        for seq in 4..=6 {
            r.record(o, seq, 1_000, bytes::Bytes::from(frame(seq)));
        }
        assert_eq!(r.bytes(), 32);
        // Frame 1 was applied no later than frame 3, the oldest held (t=300).
        assert_eq!(r.due(o, 1, 320, 50, 10), Relayed::Nothing);
        assert_eq!(r.due(o, 1, 350, 50, 10), Relayed::Trimmed);
        // A frame that does not follow restarts the log.
        r.record(o, 9, 2_000, bytes::Bytes::from(frame(9)));
        assert_eq!(relay_frames(r.due(o, 9, 3_000, 50, 10)), vec![9]);
        assert_eq!(r.due(o, 7, 3_000, 50, 10), Relayed::Trimmed);
        // A state transfer empties it; the jump's time bounds the wait.
        r.jump(o, 20, 5_000);
        assert_eq!(r.bytes(), 0);
        assert_eq!(r.due(o, 15, 5_010, 50, 10), Relayed::Nothing);
        assert_eq!(r.due(o, 15, 5_050, 50, 10), Relayed::Trimmed);
        assert_eq!(r.due(o, 21, 9_000, 50, 10), Relayed::Nothing);
        r.record(o, 21, 6_000, bytes::Bytes::from(frame(21)));
        assert_eq!(relay_frames(r.due(o, 21, 9_000, 50, 10)), vec![21]);
        assert_eq!(r.origins(), vec![o]);
    }

    fn st(time: u64) -> Stamp {
        Stamp {
            time,
            node: NodeId(1),
        }
    }

    #[test]
    fn gc_floor_is_held_back_by_every_node_not_heard_from() {
        let (me, b, c) = (NodeId(1), NodeId(2), NodeId(3));
        let none = BTreeSet::new();
        let mut gc = GcView::default();
        assert_eq!(
            gc.floor(me, st(100), &none),
            st(100),
            "alone: our own promise"
        );
        gc.know(b);
        assert_eq!(
            gc.stable(me, st(100), &none),
            Stamp::ZERO,
            "no promise from b"
        );
        gc.promise(b, st(80));
        assert_eq!(gc.stable(me, st(100), &none), st(80));
        assert_eq!(
            gc.floor(me, st(100), &none),
            Stamp::ZERO,
            "b's stable unknown"
        );
        gc.report_stable(b, st(70));
        assert_eq!(gc.floor(me, st(100), &none), st(70));
        gc.promise(b, st(60));
        assert_eq!(
            gc.stable(me, st(100), &none),
            st(80),
            "promises never go back"
        );
        gc.report_stable(b, st(10));
        assert_eq!(
            gc.floor(me, st(100), &none),
            st(10),
            "a stable stamp can drop"
        );
        // A new node holds everything back until heard from.
        gc.know(c);
        assert_eq!(gc.floor(me, st(100), &none), Stamp::ZERO);
        gc.promise(c, st(90));
        gc.report_stable(c, st(90));
        gc.report_stable(b, st(95));
        assert_eq!(gc.floor(me, st(100), &none), st(80));
        // c restarts: its old life counts until settled.
        gc.retire(c);
        assert_eq!(gc.floor(me, st(100), &none), st(80));
        gc.promise(b, st(99));
        assert_eq!(
            gc.floor(me, st(100), &none),
            st(90),
            "retired c still counts"
        );
        let settled: BTreeSet<NodeId> = [c].into();
        assert_eq!(gc.floor(me, st(100), &settled), st(95));
        assert_eq!(gc.retired(), vec![c]);
    }

    proptest! {
        /// Resuming from any acknowledged point yields exactly the frames
        /// after it, in order, or says a state transfer is needed.
        #[test]
        fn resume_yields_exactly_the_missing_frames(n in 1u64..200, cap in 1usize..50, acked in 0u64..220) {
            let mut b = Backlog::new(cap * 8);
            for _ in 0..n {
                b.push(0, frame);
            }
            let mut vv = VersionVector::default();
            let origin = NodeId(1);
            vv.advance(origin, acked.min(n));
            let mut cursor = vv.get(origin) + 1;
            let mut got = Vec::new();
            loop {
                match b.read_from(cursor, 7) {
                    Resume::Frames(f) => {
                        for (seq, bytes) in f {
                            prop_assert_eq!(vv.judge(origin, seq), Arrival::Apply);
                            prop_assert_eq!(&bytes[..], &frame(seq)[..]);
                            vv.advance(origin, seq);
                            got.push(seq);
                            cursor = seq + 1;
                        }
                    }
                    Resume::UpToDate => break,
                    Resume::Trimmed => {
                        prop_assert!(cursor < n + 1 - (cap as u64).min(n));
                        return Ok(());
                    }
                }
            }
            prop_assert_eq!(vv.get(origin), n);
            prop_assert_eq!(got, ((acked.min(n) + 1)..=n).collect::<Vec<_>>());
        }
    }
}
