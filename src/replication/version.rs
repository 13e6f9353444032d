//! Version vectors: per origin, the highest sequence number applied
//! without a gap, and how an arriving write is judged against it.

use std::collections::BTreeMap;

use chorus_crdt::NodeId;

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

    /// Takes the higher of the two for every origin: an acknowledgement
    /// that leaves an origin out still holds what an earlier one said.
    pub fn merge(&mut self, other: &VersionVector) {
        for (n, s) in &other.0 {
            self.advance(*n, *s);
        }
    }

    /// Whether every write `other` counts is counted here.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(n, s)| self.get(*n) >= *s)
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
        let m = NodeId(8);
        vv.merge(&VersionVector::from_entries(&[(m, 4), (n, 0)]));
        assert_eq!((vv.get(n), vv.get(m)), (1, 4), "a merge keeps the higher");
    }
}
