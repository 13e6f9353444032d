//! The fault model: what a seed may break, and when.

use std::fmt;
use std::str::FromStr;

/// A class of fault a run may inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The nodes split into two groups that cannot reach each other.
    Partition,
    /// One pair cut while both still reach the others (A-B-C, A and C cut).
    Partial,
    /// One direction of one pair cut.
    Asymmetric,
    /// Random packet loss on every link.
    Loss,
    /// A long fixed delay on every message (nodes regions apart).
    Delay,
    /// A node crashes, losing its memory, and restarts as a new incarnation.
    Crash,
    /// Each node's clock is off by up to several seconds.
    Skew,
    /// A node joins only halfway through the run.
    Join,
    /// One node's clock jumps minutes ahead, and stays there.
    Jump,
    /// A member goes down and is removed from the others' meshes (REPLICAOF
    /// REMOVE), so they collect tombstones without it; it comes back later
    /// with what its store kept (or empty) and is added back.
    Remove,
    /// Some writes carry values larger than a replication fragment.
    Large,
    /// A node with a store is restored from an older copy of it (a backup
    /// taken 20-150 operations before its crash; it stays down 20-150
    /// operations more): its writes stored since are gone from it, and
    /// keys deleted since are in it.
    Restore,
}

/// What `all` draws from: every class.
pub const ALL: [FaultKind; 12] = [
    FaultKind::Partition,
    FaultKind::Partial,
    FaultKind::Asymmetric,
    FaultKind::Loss,
    FaultKind::Delay,
    FaultKind::Crash,
    FaultKind::Skew,
    FaultKind::Join,
    FaultKind::Jump,
    FaultKind::Remove,
    FaultKind::Large,
    FaultKind::Restore,
];

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Partial => "partial",
            FaultKind::Asymmetric => "asymmetric",
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::Crash => "crash",
            FaultKind::Skew => "skew",
            FaultKind::Join => "join",
            FaultKind::Jump => "jump",
            FaultKind::Remove => "remove",
            FaultKind::Large => "large",
            FaultKind::Restore => "restore",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultKind, String> {
        ALL.iter().copied().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
            format!(
                "unknown fault '{s}' (known: {}, all, none)",
                names.join(", ")
            )
        })
    }
}

/// Parses `partition,crash`, `all` or `none`.
pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
    match text {
        "all" => Ok(ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        _ => {
            let mut kinds = text
                .split(',')
                .map(|s| s.trim().parse())
                .collect::<Result<Vec<FaultKind>, String>>()?;
            kinds.sort();
            kinds.dedup();
            Ok(kinds)
        }
    }
}

pub fn list_text(kinds: &[FaultKind]) -> String {
    if kinds.is_empty() {
        return "none".into();
    }
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
}
