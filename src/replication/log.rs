//! The pure part of replication (no I/O): numbering local writes, the
//! bounded backlog peers resume from, the version vector of what this node
//! has applied from each origin, the relay log of other origins' writes it
//! can pass on, and the view of the cluster that decides tombstone GC.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chorus_crdt::{NodeId, Stamp};

/// Where a peer's resume point stands against the backlog.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// Whole frames (each a transport frame header and its payload), in
    /// order, from the requested sequence number through `last`: ready to
    /// send as they are.
    Frames {
        last: u64,
        chunks: Vec<bytes::Bytes>,
    },
    /// Nothing newer yet.
    UpToDate,
    /// The backlog no longer reaches back that far: a state transfer is needed.
    Trimmed,
}

/// Frames sealed together: contiguous sequence numbers in one buffer.
#[derive(Debug)]
struct Segment {
    first: u64,
    /// Where each frame starts in `data`.
    offsets: Vec<u32>,
    data: bytes::Bytes,
}

impl Segment {
    fn end(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

/// This node's outgoing writes: sequence numbers and the bounded backlog.
///
/// Frames are laid out back to back, already framed for the wire, in one
/// growing buffer; a reader seals what was appended into a segment that
/// shares the buffer. A write costs no allocation of its own, and a sender
/// hands whole segments to the stream without copying them.
#[derive(Debug)]
pub struct Backlog {
    segments: VecDeque<Segment>,
    /// Frames appended since the last seal, and where each starts.
    tail: bytes::BytesMut,
    tail_offsets: Vec<u32>,
    tail_first: u64,
    /// Unix ms each held frame was written, oldest first.
    written_ms: VecDeque<u64>,
    /// Encoding buffer reused by every write.
    scratch: Vec<u8>,
    bytes: usize,
    max_bytes: usize,
    segment_bytes: usize,
    /// The last sequence number handed out (0: none yet).
    head: u64,
}

impl Backlog {
    pub fn new(max_bytes: usize) -> Backlog {
        Backlog {
            segments: VecDeque::new(),
            tail: bytes::BytesMut::new(),
            tail_offsets: Vec::new(),
            tail_first: 1,
            written_ms: VecDeque::new(),
            scratch: Vec::new(),
            bytes: 0,
            max_bytes,
            // Small enough that trimming keeps close to the bound.
            segment_bytes: (max_bytes / 8).clamp(64, 64 * 1024),
            head: 0,
        }
    }

    /// Appends the next write; `encode` appends its payload to the buffer it
    /// is given (told the write's sequence number) and returns the buffer.
    /// `now_ms` is when the write was made (for lag in ms).
    pub fn push(&mut self, now_ms: u64, encode: impl FnOnce(u64, Vec<u8>) -> Vec<u8>) -> u64 {
        self.head += 1;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let scratch = encode(self.head, scratch);
        self.tail_offsets.push(self.tail.len() as u32);
        self.tail
            .extend_from_slice(&chorus_transport::frame::header(scratch.len()));
        self.tail.extend_from_slice(&scratch);
        self.bytes += chorus_transport::frame::HEADER_LEN + scratch.len();
        self.scratch = scratch;
        self.written_ms.push_back(now_ms);
        if self.tail.len() >= self.segment_bytes {
            self.seal();
        }
        self.trim();
        self.head
    }

    fn seal(&mut self) {
        if self.tail_offsets.is_empty() {
            return;
        }
        let data = self.tail.split().freeze();
        let offsets = std::mem::take(&mut self.tail_offsets);
        self.segments.push_back(Segment {
            first: self.tail_first,
            offsets,
            data,
        });
        self.tail_first = self.head + 1;
    }

    /// Drops the oldest sealed segments beyond the bound, keeping at least
    /// the newest frame.
    fn trim(&mut self) {
        while self.bytes > self.max_bytes
            && (self.segments.len() > 1 || !self.tail_offsets.is_empty())
        {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            self.bytes -= old.data.len();
            self.written_ms.drain(..old.offsets.len());
        }
    }

    /// The oldest sequence number held.
    fn oldest(&self) -> u64 {
        self.segments.front().map_or(self.tail_first, |s| s.first)
    }

    /// When write `seq` was made, while the backlog still holds it.
    pub fn written_at(&self, seq: u64) -> Option<u64> {
        let i = usize::try_from(seq.checked_sub(self.oldest())?).ok()?;
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

    /// Frames from sequence number `from` on, about `max_bytes` of them
    /// (whole segments, at least one frame).
    pub fn read_from(&mut self, from: u64, max_bytes: usize) -> Resume {
        if from > self.head {
            return Resume::UpToDate;
        }
        self.seal();
        if from < self.oldest() {
            return Resume::Trimmed;
        }
        let start = self.segments.partition_point(|s| s.end() <= from);
        let mut chunks = Vec::new();
        let mut total = 0;
        let mut last = from - 1;
        for seg in self.segments.iter().skip(start) {
            if total >= max_bytes {
                break;
            }
            let skip = (from.max(seg.first) - seg.first) as usize;
            let chunk = seg.data.slice(seg.offsets[skip] as usize..);
            total += chunk.len();
            chunks.push(chunk);
            last = seg.end() - 1;
        }
        Resume::Frames { last, chunks }
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

    fn append_frame(seq: u64, mut buf: Vec<u8>) -> Vec<u8> {
        buf.extend_from_slice(&frame(seq));
        buf
    }

    /// The payloads in pre-framed chunks.
    fn payloads(chunks: &[bytes::Bytes]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let (len, body) = rest.split_at(4);
                let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
                out.push(body[..len].to_vec());
                rest = &body[len..];
            }
        }
        out
    }

    fn seqs(r: Resume) -> (u64, Vec<u64>) {
        match r {
            Resume::Frames { last, chunks } => (
                last,
                payloads(&chunks)
                    .iter()
                    .map(|p| u64::from_be_bytes(p[..].try_into().unwrap()))
                    .collect(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backlog_serves_contiguous_frames_until_trimmed() {
        // 12 bytes a frame (header and payload); segments of 64 bytes.
        let mut b = Backlog::new(12 * 10);
        for t in 0..5 {
            b.push(1_000 + t, append_frame);
        }
        assert_eq!(b.lag_ms(5, 2_000), Some(0));
        assert_eq!(b.lag_ms(3, 2_000), Some(2_000 - 1_003));
        assert_eq!(b.head(), 5);
        assert_eq!(b.read_from(6, 1 << 20), Resume::UpToDate);
        assert_eq!(seqs(b.read_from(3, 1 << 20)), (5, vec![3, 4, 5]));
        assert_eq!(b.bytes(), 60);
        for t in 5..30 {
            b.push(1_000 + t, append_frame);
        }
        assert!(b.bytes() <= 12 * 10, "{}", b.bytes());
        assert_eq!(b.read_from(1, 1 << 20), Resume::Trimmed);
        assert_eq!(b.lag_ms(0, 2_000), None, "write 1 left the backlog");
        // A small budget still makes progress, in whole segments.
        let (last, got) = seqs(b.read_from(b.oldest(), 1));
        assert!(!got.is_empty() && last == *got.last().unwrap());
        assert_eq!(seqs(b.read_from(30, 1)), (30, vec![30]));
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
        /// after it, in order, or says a state transfer is needed; the
        /// backlog stays near its bound and always holds the newest write.
        #[test]
        fn resume_yields_exactly_the_missing_frames(
            n in 1u64..300,
            cap in 1usize..60,
            acked in 0u64..320,
            budget in 1usize..200,
            reads in proptest::collection::vec(0u64..300, 0..5),
        ) {
            let mut b = Backlog::new(cap * 12);
            for seq in 1..=n {
                b.push(seq, append_frame);
                // Readers seal at arbitrary moments.
                if reads.contains(&seq) {
                    let _ = b.read_from(seq, budget);
                }
                prop_assert!(b.bytes() <= cap * 12 + b.segment_bytes + 12);
            }
            prop_assert_eq!(seqs(b.read_from(n, budget)).1, vec![n]);
            let mut vv = VersionVector::default();
            let origin = NodeId(1);
            vv.advance(origin, acked.min(n));
            let mut cursor = vv.get(origin) + 1;
            let mut got = Vec::new();
            loop {
                match b.read_from(cursor, budget) {
                    r @ Resume::Frames { .. } => {
                        let (last, frames) = seqs(r);
                        for seq in frames {
                            prop_assert_eq!(vv.judge(origin, seq), Arrival::Apply);
                            vv.advance(origin, seq);
                            got.push(seq);
                        }
                        prop_assert_eq!(last, vv.get(origin));
                        cursor = last + 1;
                    }
                    Resume::UpToDate => break,
                    Resume::Trimmed => {
                        prop_assert!(cursor < b.oldest());
                        return Ok(());
                    }
                }
            }
            prop_assert_eq!(vv.get(origin), n);
            prop_assert_eq!(got, ((acked.min(n) + 1)..=n).collect::<Vec<_>>());
        }
    }
}
