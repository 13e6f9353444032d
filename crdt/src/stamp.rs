//! Hybrid-logical-clock stamps, node ids and the node's clock.
//!
//! A [`Stamp`] is what every write carries from its origin to every replica:
//! 64 bits of HLC time (uhlc's NTP64: seconds since the UNIX epoch in the high
//! 32 bits, fraction below, a 4-bit logical counter at the bottom) and the
//! origin's [`NodeId`]. Stamps order by time, then node id, the same way on
//! every node, so a tie always breaks the same way everywhere.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uhlc::{HLCBuilder, HLC, ID, NTP64};

/// A node's identity in the mesh: a random nonzero u64 chosen at every
/// start (a node restarted from its store keeps its earlier lives' ids with
/// the data, but never writes under them again). `0` is reserved for
/// [`Stamp::ZERO`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// `None` for 0, which no real node may use.
    pub fn new(id: u64) -> Option<NodeId> {
        (id != 0).then_some(NodeId(id))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The stamp of one write: HLC time then origin node. `Stamp::ZERO` is older
/// than every real write and stands for "never written".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Stamp {
    /// uhlc NTP64 time.
    pub time: u64,
    /// The node that made the write.
    pub node: NodeId,
}

impl Stamp {
    pub const ZERO: Stamp = Stamp {
        time: 0,
        node: NodeId(0),
    };

    /// The stamp of wall-clock instant `unix_ms` at `node`.
    pub fn from_unix_ms(unix_ms: u64, node: NodeId) -> Stamp {
        Stamp {
            time: ntp_from_unix_ms(unix_ms),
            node,
        }
    }

    /// The wall-clock milliseconds this stamp's time stands for.
    pub fn unix_ms(&self) -> u64 {
        unix_ms_from_ntp(self.time)
    }

    pub fn is_zero(&self) -> bool {
        *self == Stamp::ZERO
    }

    /// The smallest stamp of `node` later than `self`.
    pub fn next_after(&self, node: NodeId) -> Stamp {
        Stamp {
            time: self.time.saturating_add(1),
            node,
        }
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.time, self.node)
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.time, self.node)
    }
}

/// NTP64 time of a wall-clock instant given in milliseconds since the epoch.
pub fn ntp_from_unix_ms(unix_ms: u64) -> u64 {
    NTP64::from(Duration::from_millis(unix_ms)).0
}

/// Milliseconds since the epoch of an NTP64 time (rounded down).
pub fn unix_ms_from_ntp(time: u64) -> u64 {
    // to_duration is exact to the nanosecond; u64 milliseconds cover 584 million years.
    NTP64(time).to_duration().as_millis() as u64
}

/// A remote stamp further ahead of the local physical clock than the allowed
/// drift. The write is still merged; the clock just does not follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stamp {stamp} is {ahead_ms} ms ahead of the local clock (max drift {max_drift_ms} ms)")]
pub struct DriftError {
    pub stamp: Stamp,
    pub ahead_ms: u64,
    pub max_drift_ms: u64,
}

/// How far ahead of physical time a stamp this node issues itself may move
/// its clock ([`Clock::issued`]); remote stamps get `max_drift`.
const ISSUED_AHEAD_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// A node's hybrid logical clock: uhlc's HLC with an injectable physical
/// clock (`fn() -> NTP64`), so the simulation can drive it from simulated time.
pub struct Clock {
    hlc: HLC,
    node: NodeId,
    physical: fn() -> NTP64,
    max_drift: Duration,
}

impl Clock {
    /// A clock for `node` reading physical time from `physical`; remote stamps
    /// more than `max_drift` ahead of it do not move the clock.
    pub fn new(node: NodeId, physical: fn() -> NTP64, max_drift: Duration) -> Clock {
        let id = NonZeroU64::new(node.0).map(ID::from).unwrap_or_else(|| {
            // NodeId 0 is never handed out by NodeId::new; a clock for it still
            // works, it only cannot tie-break against another such clock.
            ID::from(NonZeroU64::MIN)
        });
        let hlc = HLCBuilder::new()
            .with_id(id)
            .with_clock(physical)
            // The drift limit for remote stamps is checked in `observe`.
            .with_max_delta(ISSUED_AHEAD_MAX)
            .build();
        Clock {
            hlc,
            node,
            physical,
            max_drift,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// A new stamp, greater than every stamp this clock made or observed.
    pub fn now(&self) -> Stamp {
        Stamp {
            time: self.hlc.new_timestamp().get_time().0,
            node: self.node,
        }
    }

    /// Current physical time in ms since the epoch, as the clock reads it.
    pub fn physical_unix_ms(&self) -> u64 {
        unix_ms_from_ntp((self.physical)().0)
    }

    /// Current physical time since the epoch, as the clock reads it (TIME).
    pub fn physical_since_epoch(&self) -> Duration {
        (self.physical)().to_duration()
    }

    /// Moves the clock past a remote stamp, unless that stamp is more than the
    /// allowed drift ahead of physical time.
    pub fn observe(&self, stamp: Stamp) -> Result<(), DriftError> {
        let now = (self.physical)().0;
        if stamp.time > now.saturating_add(NTP64::from(self.max_drift).0) {
            return Err(DriftError {
                stamp,
                ahead_ms: unix_ms_from_ntp(stamp.time.saturating_sub(now)),
                max_drift_ms: self.max_drift.as_millis() as u64,
            });
        }
        self.follow(stamp);
        Ok(())
    }

    /// This node issued `stamp` for a write of its own, past its clock (over
    /// state a fast peer stamped): the clock follows, whatever the drift
    /// limit, so that every later stamp and promise of this node is after
    /// it. A node's stamps then grow with its writes, and its peers' record
    /// of what they hold of it (its promises) covers every write it made; a
    /// stale copy of one can then be told from a new write (seed 301481).
    pub fn issued(&self, stamp: Stamp) {
        self.follow(stamp);
    }

    fn follow(&self, stamp: Stamp) {
        let id = NonZeroU64::new(stamp.node.0)
            .map(ID::from)
            .unwrap_or(ID::from(NonZeroU64::MIN));
        // Refused only past `ISSUED_AHEAD_MAX`: the clock then stays.
        let _ = self
            .hlc
            .update_with_timestamp(&uhlc::Timestamp::new(NTP64(stamp.time), id));
    }
}

/// The physical clock of a real node: the system wall clock.
pub fn system_clock() -> NTP64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    NTP64::from(since_epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frozen() -> NTP64 {
        NTP64::from(Duration::from_millis(1_700_000_000_000))
    }

    #[test]
    fn stamps_order_by_time_then_node() {
        let a = Stamp {
            time: 5,
            node: NodeId(9),
        };
        let b = Stamp {
            time: 6,
            node: NodeId(1),
        };
        let c = Stamp {
            time: 6,
            node: NodeId(2),
        };
        assert!(a < b && b < c);
        assert!(Stamp::ZERO < a);
    }

    #[test]
    fn clock_is_strictly_monotonic_on_a_frozen_physical_clock() {
        let clock = Clock::new(NodeId(7), frozen, Duration::from_millis(500));
        let a = clock.now();
        let b = clock.now();
        assert!(b > a);
        assert_eq!(a.node, NodeId(7));
    }

    #[test]
    fn clock_follows_a_near_remote_stamp_but_not_a_far_one() {
        let clock = Clock::new(NodeId(1), frozen, Duration::from_millis(500));
        let base = ntp_from_unix_ms(1_700_000_000_000);
        let near = Stamp {
            time: base + ntp_from_unix_ms(100),
            node: NodeId(2),
        };
        clock.observe(near).expect("100 ms ahead is within drift");
        assert!(clock.now() > near);

        let far = Stamp {
            time: base + ntp_from_unix_ms(10_000),
            node: NodeId(2),
        };
        let err = clock.observe(far).expect_err("10 s ahead exceeds drift");
        assert!(err.ahead_ms >= 9_999, "{err}");
        assert!(clock.now() < far, "a far stamp must not drag the clock");
    }

    #[test]
    fn unix_ms_round_trips() {
        let s = Stamp::from_unix_ms(1_700_000_123_456, NodeId(3));
        assert_eq!(s.unix_ms(), 1_700_000_123_456);
    }
}
