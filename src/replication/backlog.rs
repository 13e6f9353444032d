//! This node's outgoing writes: sequence numbers and the bounded backlog
//! peers resume from. Pure: no I/O, no clock (times are passed in).

use std::collections::VecDeque;

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

impl Resume {
    pub fn is_trimmed(&self) -> bool {
        matches!(self, Resume::Trimmed)
    }
}

/// Frames sealed together: contiguous sequence numbers in one buffer.
#[derive(Debug)]
struct Segment {
    first: u64,
    /// How many frames it holds.
    count: usize,
    data: bytes::Bytes,
}

impl Segment {
    fn end(&self) -> u64 {
        self.first + self.count as u64
    }
}

/// The most encoding buffer a backlog keeps between writes.
const SCRATCH_KEPT: usize = 1 << 20;

/// Spent buffers kept beyond the backlog's bound (see `Backlog::spent`).
const SPENT_SPARE: usize = 4;

/// This node's outgoing writes: sequence numbers and the bounded backlog.
///
/// Frames are laid out back to back, already framed for the wire, in one
/// growing buffer; a reader seals what was appended into a segment that
/// shares the buffer. A write costs no allocation of its own, and a sender
/// hands whole segments to the stream without copying them.
#[derive(Debug)]
pub struct Backlog {
    segments: VecDeque<Segment>,
    /// Frames appended since the last seal.
    tail: bytes::BytesMut,
    /// Whether `tail`'s buffer is of the segment size (one for a larger
    /// frame is not kept for reuse).
    tail_standard: bool,
    /// Handles on the segment-sized buffers whose room ran out, oldest
    /// first, for reuse once every segment cut from them is gone (trimmed,
    /// and let go by the links that sent it): a fresh buffer's pages
    /// faulted in and zeroed as the frames first touched them, a fifth of
    /// the time a replicated SET's frame cost its writer (one page a
    /// 70-odd small writes; glibc gave the freed buffers back to the
    /// system and the next ones came new).
    spent: VecDeque<bytes::BytesMut>,
    /// Buffers allocated for the tail, ever.
    buffers_made: u64,
    /// Where each held frame starts in its segment's data (or the tail),
    /// oldest first: one ring for all of them, where a vector a segment
    /// (a segment is sealed at every send) grew by doubling, a few
    /// reallocations for each.
    offsets: VecDeque<u32>,
    /// The first frame in the tail (the head + 1 when it holds none).
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
    /// The lowest next frame a connected peer has yet to be sent
    /// (`u64::MAX`: none): frames from it on are kept past `max_bytes`, as
    /// Redis keeps a replica's output buffer, within `hold_limit`.
    hold_from: u64,
    hold_limit: HoldLimit,
    /// `repl-backlog-min-seconds`: writes younger than this are kept past
    /// `max_bytes` (within the hold limit's hard bound); 0: none.
    keep_ms: u64,
    /// Since when the backlog has held more than the soft limit.
    over_soft_since_ms: Option<u64>,
    /// The time of the last push or hold change.
    last_ms: u64,
}

/// How far the backlog grows past its size for a connected peer that has
/// yet to be sent what it holds: `client-output-buffer-limit replica`
/// (0: no limit), counted as the bytes held beyond the size (what a Redis
/// replica's output buffer would hold). Past `hard` bytes, or past `soft`
/// for `soft_ms`, the oldest frames go and the peer resumes from the delta
/// log or by a state transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldLimit {
    pub hard: usize,
    pub soft: usize,
    pub soft_ms: u64,
}

impl Backlog {
    pub fn new(max_bytes: usize) -> Backlog {
        Backlog {
            segments: VecDeque::new(),
            tail: bytes::BytesMut::new(),
            tail_standard: false,
            spent: VecDeque::new(),
            buffers_made: 0,
            offsets: VecDeque::new(),
            tail_first: 1,
            written_ms: VecDeque::new(),
            scratch: Vec::new(),
            bytes: 0,
            max_bytes,
            // Small enough that trimming keeps close to the bound.
            segment_bytes: (max_bytes / 8).clamp(64, 64 * 1024),
            head: 0,
            hold_from: u64::MAX,
            hold_limit: HoldLimit::default(),
            keep_ms: 0,
            over_soft_since_ms: None,
            last_ms: 0,
        }
    }

    /// Keeps the frames from `from` on past the backlog's size, within the
    /// limit (`u64::MAX`: none to keep).
    pub fn hold_from(&mut self, from: u64, now_ms: u64) {
        self.hold_from = from;
        self.trim(now_ms);
    }

    pub fn set_hold_limit(&mut self, limit: HoldLimit) {
        self.hold_limit = limit;
        self.trim(self.last_ms);
    }

    /// Keeps the writes of the last `keep_ms` past the size, within the
    /// hold limit's hard bound (0: none kept for their age).
    pub fn set_keep_ms(&mut self, keep_ms: u64) {
        self.keep_ms = keep_ms;
        self.trim(self.last_ms);
    }

    /// Appends the next write; `encode` appends its payload to the buffer it
    /// is given (told the write's sequence number) and returns the buffer.
    /// `now_ms` is when the write was made (for lag in ms).
    pub fn push(&mut self, now_ms: u64, encode: impl FnOnce(u64, Vec<u8>) -> Vec<u8>) -> u64 {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let scratch = encode(self.head + 1, scratch);
        self.push_parts(now_ms, &scratch, &[]);
        // One huge value must not pin its size for the node's life.
        if scratch.capacity() <= SCRATCH_KEPT {
            self.scratch = scratch;
        }
        self.head
    }

    /// Appends the next write, whose payload is `head` then `body` (the
    /// caller numbered it [`Backlog::head`] + 1), framed straight into the
    /// buffer when it fits one fragment.
    pub fn push_parts(&mut self, now_ms: u64, head: &[u8], body: &[u8]) -> u64 {
        let len = head.len() + body.len();
        let framed = chorus_transport::frame::framed_len(len);
        if self.tail.capacity() - self.tail.len() < framed {
            // A new buffer of a segment's size, never a grown copy: grown
            // buffers doubled, and each lived as long as any segment cut
            // from it, so the backlog held up to twice the bytes it counts
            // (maxmemory leaves those bytes out of the data's memory).
            // Sealed before this write takes its number.
            self.seal();
            self.next_tail(framed);
        }
        self.head += 1;
        self.offsets.push_back(self.tail.len() as u32);
        if len <= chorus_transport::frame::MAX_FRAGMENT {
            self.tail.extend_from_slice(&(len as u32).to_be_bytes());
            self.tail.extend_from_slice(head);
            self.tail.extend_from_slice(body);
        } else if body.is_empty() {
            chorus_transport::frame::append_framed(&mut self.tail, head);
        } else {
            let mut whole = Vec::with_capacity(len);
            whole.extend_from_slice(head);
            whole.extend_from_slice(body);
            chorus_transport::frame::append_framed(&mut self.tail, &whole);
        }
        self.bytes += framed;
        self.written_ms.push_back(now_ms);
        if self.tail.len() >= self.segment_bytes {
            self.seal();
        }
        self.trim(now_ms);
        self.head
    }

    /// Appends a run of writes numbered from [`Backlog::head`] + 1 on,
    /// already framed for the wire and laid back to back in `framed`; each
    /// of `writes` is one's framed length and when it was made. One copy
    /// and one trim for the run, where [`Backlog::push_parts`] takes three
    /// copies and a trim a write.
    pub fn push_framed_run(
        &mut self,
        framed: &[u8],
        writes: impl IntoIterator<Item = (usize, u64)>,
    ) -> u64 {
        if self.tail.capacity() - self.tail.len() < framed.len() {
            self.seal();
            self.next_tail(framed.len());
        }
        let mut at = self.tail.len();
        let mut last_ms = self.last_ms;
        for (len, now_ms) in writes {
            self.head += 1;
            self.offsets.push_back(at as u32);
            self.written_ms.push_back(now_ms);
            at += len;
            last_ms = last_ms.max(now_ms);
        }
        debug_assert_eq!(at, self.tail.len() + framed.len(), "lengths cover the run");
        self.tail.extend_from_slice(framed);
        self.bytes += framed.len();
        if self.tail.len() >= self.segment_bytes {
            self.seal();
        }
        self.trim(last_ms);
        self.head
    }

    /// Puts a buffer with room for `framed` bytes in the full tail's place:
    /// the oldest spent one if nothing holds it any more, else a new one.
    fn next_tail(&mut self, framed: usize) {
        let standard = framed <= self.segment_bytes;
        let segment_bytes = self.segment_bytes;
        let reused = if standard
            && self
                .spent
                .front_mut()
                .is_some_and(|oldest| oldest.try_reclaim(segment_bytes))
        {
            self.spent.pop_front()
        } else {
            None
        };
        let next = reused.unwrap_or_else(|| {
            self.buffers_made += 1;
            bytes::BytesMut::with_capacity(self.segment_bytes.max(framed))
        });
        let full = std::mem::replace(&mut self.tail, next);
        if std::mem::replace(&mut self.tail_standard, standard) {
            self.spent.push_back(full);
        }
        // As many as the bound holds, and a few for its segments still being
        // sent: past that, the oldest are let go (freed with their last
        // segment), so a peer held for far past the bound pins nothing more.
        while self.spent.len() > self.max_bytes / self.segment_bytes + SPENT_SPARE {
            self.spent.pop_front();
        }
    }

    fn seal(&mut self) {
        if self.head < self.tail_first {
            return;
        }
        debug_assert_eq!(
            self.bytes,
            self.segments.iter().map(|s| s.data.len()).sum::<usize>() + self.tail.len(),
            "backlog bytes account for every held frame"
        );
        let data = self.tail.split().freeze();
        self.segments.push_back(Segment {
            first: self.tail_first,
            count: (self.head + 1 - self.tail_first) as usize,
            data,
        });
        self.tail_first = self.head + 1;
    }

    /// Drops the oldest sealed segments beyond the bound, keeping at least
    /// the newest frame, and those a connected peer has yet to be sent
    /// within the hold limit.
    fn trim(&mut self, now_ms: u64) {
        let HoldLimit {
            hard,
            soft,
            soft_ms,
        } = self.hold_limit;
        self.last_ms = self.last_ms.max(now_ms);
        let beyond = |bytes: usize, max: usize| bytes.saturating_sub(max);
        if soft > 0 && beyond(self.bytes, self.max_bytes) > soft {
            self.over_soft_since_ms.get_or_insert(now_ms);
        } else {
            self.over_soft_since_ms = None;
        }
        let soft_ran_out = self
            .over_soft_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) >= soft_ms);
        while self.bytes > self.max_bytes
            && (self.segments.len() > 1 || self.head >= self.tail_first)
        {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            let within_hard = hard == 0 || beyond(self.bytes, self.max_bytes) <= hard;
            if within_hard && !soft_ran_out && oldest.end() > self.hold_from {
                break;
            }
            // Its newest write is the last of it to age past the target.
            let newest_ms = self.written_ms.get(oldest.count.saturating_sub(1));
            let young = newest_ms.is_some_and(|&t| now_ms.saturating_sub(t) < self.keep_ms);
            if within_hard && young {
                break;
            }
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            self.bytes -= old.data.len();
            self.written_ms.drain(..old.count);
            self.offsets.drain(..old.count);
        }
        debug_assert_eq!(
            self.written_ms.len() as u64,
            self.head + 1 - self.oldest(),
            "one write time per held frame"
        );
        debug_assert_eq!(
            self.offsets.len(),
            self.written_ms.len(),
            "one offset per held frame"
        );
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

    /// How long ago the oldest held write was made (`None`: none held).
    pub fn span_ms(&self, now_ms: u64) -> Option<u64> {
        self.written_ms.front().map(|&t| now_ms.saturating_sub(t))
    }

    /// How long an outage the backlog covers at the rate writes came while
    /// it holds them: its bound over that rate, in ms, or the time target
    /// while that rate keeps within the hard bound (`None`: too few writes
    /// to tell).
    pub fn covers_ms(&self, now_ms: u64) -> Option<u64> {
        let span = self.span_ms(now_ms)?;
        if span == 0 || self.bytes == 0 {
            return None;
        }
        let at_rate = |bound: usize| {
            (bound as u128 * span as u128 / self.bytes as u128).min(u64::MAX as u128) as u64
        };
        let by_size = at_rate(self.max_bytes);
        let by_age = match self.hold_limit.hard {
            0 => self.keep_ms,
            hard => self
                .keep_ms
                .min(at_rate(self.max_bytes.saturating_add(hard))),
        };
        Some(by_size.max(by_age))
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
        let oldest = self.oldest();
        let start = self.segments.partition_point(|s| s.end() <= from);
        let mut chunks = Vec::new();
        let mut total = 0;
        let mut last = from - 1;
        for seg in self.segments.iter().skip(start) {
            if total >= max_bytes {
                break;
            }
            let at = self.offsets[(from.max(seg.first) - oldest) as usize];
            let chunk = seg.data.slice(at as usize..);
            total += chunk.len();
            chunks.push(chunk);
            last = seg.end() - 1;
        }
        Resume::Frames { last, chunks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::version::{Arrival, VersionVector};
    use chorus_crdt::NodeId;
    use proptest::prelude::*;

    /// Review of #11 item 1: the encoding buffer kept the size of the
    /// largest write (a 70 MB value: 70 MB for good).
    #[test]
    fn a_huge_write_does_not_pin_its_encoding_buffer() {
        let mut backlog = Backlog::new(1 << 20);
        backlog.push(0, |_, mut buf| {
            buf.resize(4 * SCRATCH_KEPT, b'x');
            buf
        });
        assert!(backlog.scratch.capacity() <= SCRATCH_KEPT);
        backlog.push(0, |_, mut buf| {
            buf.extend_from_slice(b"small");
            buf
        });
        assert!(
            backlog.scratch.capacity() >= 5,
            "a small one is kept for reuse"
        );
    }

    /// Once the backlog is full, its writes go into the buffers of the
    /// segments it trimmed, not new ones; a buffer a reader still holds a
    /// segment of is left alone, its bytes as they were.
    #[test]
    fn trimmed_segments_buffers_are_written_again_unless_still_held() {
        let mut b = Backlog::new(16 * 1024);
        for _ in 0..100 {
            b.push(0, sized(100));
        }
        let Resume::Frames { chunks: held, .. } = b.read_from(1, usize::MAX) else {
            panic!("the first writes are held");
        };
        let before = payloads(&held);
        for _ in 0..2_000 {
            b.push(0, sized(100));
        }
        let made = b.buffers_made;
        for _ in 0..20_000 {
            b.push(0, sized(100));
        }
        assert_eq!(b.buffers_made, made, "the spent buffers came back");
        // What a reader took before stays intact though its buffer was due.
        assert_eq!(payloads(&held), before);
        let firsts: Vec<u64> = before
            .iter()
            .map(|p| u64::from_be_bytes(p[..8].try_into().unwrap()))
            .collect();
        assert_eq!(firsts, (1..=100).collect::<Vec<_>>());
        // And what the backlog holds reads back whole.
        let (_, now) = seqs(b.read_from(b.head() - 9, usize::MAX));
        assert_eq!(now, (b.head() - 9..=b.head()).collect::<Vec<_>>());
        assert!(b.spent.len() <= 16 * 1024 / b.segment_bytes + SPENT_SPARE);
    }

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

    /// A frame of `n` bytes.
    fn sized(n: usize) -> impl FnOnce(u64, Vec<u8>) -> Vec<u8> {
        move |seq, mut buf| {
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.resize(n, 0);
            buf
        }
    }

    /// `repl-backlog-min-seconds`: with no peer connected, the writes of
    /// the last seconds stay past the size, within the hard bound.
    #[test]
    fn recent_writes_stay_past_the_size_for_the_time_target() {
        let mut b = Backlog::new(16 * 1024);
        b.set_hold_limit(HoldLimit {
            hard: 1 << 20,
            soft: 64 * 1024,
            soft_ms: 10,
        });
        b.set_keep_ms(60_000);
        for t in 0..300 {
            b.push(t * 100, sized(1024));
        }
        // 30 s of writes, 300 KB: all kept, past the size and the soft limit.
        assert_eq!(seqs(b.read_from(1, usize::MAX)).1.len(), 300);
        assert_eq!(b.covers_ms(30_000), Some(60_000));
        // Those older than a minute go as writes come.
        b.push(70_000, sized(1024));
        assert!(b.read_from(90, 1).is_trimmed());
        assert_eq!(seqs(b.read_from(110, usize::MAX)).1.len(), 301 - 110 + 1);
        // The hard bound holds whatever the target.
        for _ in 0..2_000 {
            b.push(70_000, sized(1024));
        }
        assert!(b.bytes() <= (1 << 20) + 32 * 1024, "{}", b.bytes());
        assert!(b.covers_ms(70_010).unwrap() < 60_000);
        // Without the target, the size alone bounds it.
        b.set_keep_ms(0);
        assert!(b.bytes() <= 32 * 1024, "{}", b.bytes());
    }

    #[test]
    fn frames_a_connected_peer_lacks_stay_past_the_size_within_the_hold_limit() {
        let mut b = Backlog::new(16 * 1024);
        b.set_hold_limit(HoldLimit {
            hard: 1 << 20,
            soft: 512 * 1024,
            soft_ms: 1_000,
        });
        b.hold_from(1, 0);
        for _ in 0..400 {
            b.push(0, sized(1024));
        }
        assert!(b.bytes() > 400 * 1024, "held for the peer: {}", b.bytes());
        let (_, got) = seqs(b.read_from(1, usize::MAX));
        assert_eq!(got, (1..=400).collect::<Vec<_>>());
        // The peer was sent up to 300: what it has goes.
        b.hold_from(301, 0);
        assert!(b.bytes() <= 120 * 1024, "{}", b.bytes());
        assert_eq!(seqs(b.read_from(301, usize::MAX)).1.len(), 100);
        // Past the soft limit for its time, the peer is no longer held for.
        for _ in 0..500 {
            b.push(10, sized(1024));
        }
        assert!(!b.read_from(301, 1).is_trimmed(), "within 1 s");
        b.push(1_100, sized(1024));
        assert!(b.read_from(301, 1).is_trimmed());
        assert!(b.bytes() <= 32 * 1024, "{}", b.bytes());
        // Past the hard limit at once.
        b.hold_from(b.head() + 1, 2_000);
        let first = b.head() + 1;
        for _ in 0..1_100 {
            b.push(2_000, sized(1024));
        }
        assert!(b.read_from(first, 1).is_trimmed());
        assert!(b.bytes() <= (1 << 20) + 32 * 1024, "{}", b.bytes());
        // With no peer to hold for, the size alone bounds it.
        b.hold_from(u64::MAX, 3_000);
        assert!(b.bytes() <= 32 * 1024, "{}", b.bytes());
        // A lower limit applies at once, counted beyond the size.
        b.hold_from(b.head() + 1, 3_000);
        for _ in 0..200 {
            b.push(3_000, sized(1024));
        }
        assert!(b.bytes() > 150 * 1024);
        b.set_hold_limit(HoldLimit {
            hard: 64 * 1024,
            ..HoldLimit::default()
        });
        assert!(b.bytes() <= (16 + 64 + 16) * 1024, "{}", b.bytes());
    }

    fn seqs(r: Resume) -> (u64, Vec<u64>) {
        match r {
            Resume::Frames { last, chunks } => (
                last,
                payloads(&chunks)
                    .iter()
                    .map(|p| u64::from_be_bytes(p[..8].try_into().unwrap()))
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

    /// Frames of every size, many larger than what is left of the
    /// segment buffer: each is sealed before it takes its number, so
    /// resuming anywhere gives every number once, in order; and the
    /// buffers held stay close to the bytes counted.
    #[test]
    fn frames_that_do_not_fit_the_buffer_start_a_new_one() {
        let mut b = Backlog::new(1 << 20);
        for seq in 1..=2000u64 {
            let size = (seq * 37 % 3000) as usize;
            b.push(seq, |n, mut buf| {
                assert_eq!(n, seq, "the number the write gets");
                buf.extend_from_slice(&n.to_be_bytes());
                buf.resize(8 + size, 0);
                buf
            });
            if seq % 7 == 0 {
                // A reader seals what was appended.
                let _ = b.read_from(seq, 1 << 30);
            }
        }
        let Resume::Frames { last, chunks } = b.read_from(b.oldest(), usize::MAX) else {
            panic!("frames");
        };
        let got: Vec<u64> = payloads(&chunks)
            .iter()
            .map(|p| u64::from_be_bytes(p[..8].try_into().unwrap()))
            .collect();
        assert_eq!(last, 2000);
        assert_eq!(got, (b.oldest()..=2000).collect::<Vec<_>>());
    }

    proptest! {
        /// Runs of framed writes, single writes and reads in any mix hold
        /// and serve the same frames, numbers and times as the same writes
        /// pushed one by one.
        #[test]
        fn a_framed_run_holds_what_its_writes_pushed_one_by_one_would(
            steps in proptest::collection::vec((0usize..20, 0usize..40), 1..40),
            cap in 1usize..400,
            reads in proptest::collection::vec(0u64..400, 0..6),
        ) {
            let mut by_run = Backlog::new(cap * 12);
            let mut by_one = Backlog::new(cap * 12);
            let mut seq = 0u64;
            let mut largest_run = 0;
            let payload = |seq: u64, pad: usize| {
                let mut p = seq.to_be_bytes().to_vec();
                p.resize(8 + pad, seq as u8);
                p
            };
            for (run, pad) in steps {
                if run == 0 {
                    seq += 1;
                    let p = payload(seq, pad);
                    by_run.push_parts(seq * 10, &p[..3], &p[3..]);
                    by_one.push_parts(seq * 10, &p, &[]);
                } else {
                    let mut framed = Vec::new();
                    let mut writes = Vec::new();
                    for _ in 0..run {
                        seq += 1;
                        let p = payload(seq, pad + seq as usize % 7);
                        framed.extend_from_slice(&(p.len() as u32).to_be_bytes());
                        framed.extend_from_slice(&p);
                        writes.push((4 + p.len(), seq * 10));
                        by_one.push_parts(seq * 10, &p, &[]);
                    }
                    largest_run = largest_run.max(framed.len());
                    prop_assert_eq!(by_run.push_framed_run(&framed, writes), seq);
                }
                if reads.contains(&seq) {
                    // A reader seals what was appended.
                    prop_assert_eq!(seqs(by_run.read_from(seq, 1)), (seq, vec![seq]));
                }
                prop_assert_eq!(by_run.head(), by_one.head());
                // Trimmed as it grows: beyond the bound, at most the oldest
                // segment kept, which a run may have filled.
                prop_assert!(
                    by_run.bytes() <= cap * 12 + by_run.segment_bytes + largest_run + 60,
                    "{} bytes held", by_run.bytes()
                );
            }
            // Trimming goes by segments, whose bounds may differ.
            let from = by_run.oldest().max(by_one.oldest());
            let frames = |b: &mut Backlog| match b.read_from(from, usize::MAX) {
                Resume::Frames { last, chunks } => (last, payloads(&chunks)),
                other => panic!("{other:?}"),
            };
            prop_assert_eq!(frames(&mut by_run), frames(&mut by_one));
            // Resuming at each write finds its frame (its offset).
            for s in from..=seq {
                prop_assert_eq!(by_run.written_at(s), Some(s * 10));
                let (last, got) = seqs(by_run.read_from(s, 1));
                prop_assert_eq!(got.first(), Some(&s));
                prop_assert_eq!(got, (s..=last).collect::<Vec<_>>());
            }
            prop_assert_eq!(by_run.read_from(seq, 1).is_trimmed(), false);
        }

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
