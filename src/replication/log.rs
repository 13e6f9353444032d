//! The pure part of replication (no I/O): numbering local writes, the
//! bounded backlog peers resume from, and the version vector of what this
//! node has applied from each origin.

use std::collections::{BTreeMap, VecDeque};

use chorus_crdt::NodeId;

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
