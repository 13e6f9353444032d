//! The relay log: other origins' writes as this node applied them, kept
//! (bounded per origin) to pass on to peers cut off from their origin.

use std::collections::{BTreeMap, VecDeque};

use chorus_crdt::NodeId;

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

    /// Drops `origin`'s frames, keeping how far it went: every peer holds
    /// them (a retired node, settled). A peer that lacks them after all (a
    /// node new to the mesh) gets a state transfer, as after a jump long ago.
    pub fn release(&mut self, origin: NodeId) {
        if let Some(log) = self.logs.get_mut(&origin) {
            log.entries.clear();
            log.bytes = 0;
            log.jumped_ms = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Vec<u8> {
        seq.to_be_bytes().to_vec()
    }

    /// A named bound (#11): however much an origin writes, its relay log
    /// holds at most its limit (plus the newest frame, when that alone is
    /// larger), and the newest frames are the ones kept.
    #[test]
    fn a_relay_log_never_grows_past_its_limit() {
        let mut relay = Relay::new(1024);
        let origin = NodeId(2);
        for seq in 1..=10_000u64 {
            let f = vec![0u8; 1 + (seq as usize * 7) % 300];
            relay.record(origin, seq, 0, bytes::Bytes::from(f));
            assert!(relay.bytes() <= 1024, "{} bytes at {seq}", relay.bytes());
        }
        let kept = relay_frames(relay.due(origin, 9_990, 0, 0, usize::MAX));
        assert_eq!(kept.last(), Some(&10_000));
        relay.record(origin, 10_001, 0, bytes::Bytes::from(vec![0u8; 5_000]));
        assert_eq!(
            relay.bytes(),
            5_000,
            "one frame over the limit is kept alone"
        );
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
}
