//! Hybrid-logical-clock stamps, node ids and the node's clock.
//!
//! A [`Stamp`] is what every write carries from its origin to every replica:
//! 64 bits of HLC time (uhlc's NTP64: seconds since the UNIX epoch in the high
//! 32 bits, fraction below, a 4-bit logical counter at the bottom) and the
//! origin's [`NodeId`]. Stamps order by time, then node id, the same way on
//! every node, so a tie always breaks the same way everywhere.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uhlc::NTP64;

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

/// The low bits of an NTP64 time that count stamps within one tick of the
/// physical clock (uhlc's layout): a time read from the physical clock has
/// them zero.
const COUNTER_BITS: u64 = (1 << 4) - 1;

/// A node's hybrid logical clock, on uhlc's time layout, with an
/// injectable physical clock (`fn() -> NTP64`), so the simulation can
/// drive it from simulated time.
///
/// One atomic word holds the latest time it stamped or followed. uhlc's
/// HLC took a mutex and read the physical clock for every remote stamp it
/// followed; following needs neither (the next stamp is after the word
/// whatever the physical clock says), and a receiver followed every write
/// it applied, on a VM whose clock reads were a tenth of its time.
pub struct Clock {
    last: AtomicU64,
    node: NodeId,
    physical: fn() -> NTP64,
    max_drift: Duration,
}

impl Clock {
    /// A clock for `node` reading physical time from `physical`; remote stamps
    /// more than `max_drift` ahead of it do not move the clock.
    pub fn new(node: NodeId, physical: fn() -> NTP64, max_drift: Duration) -> Clock {
        Clock {
            last: AtomicU64::new(0),
            node,
            physical,
            max_drift,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// A new stamp, greater than every stamp this clock made or observed:
    /// the physical time when that is later than all of them, else one
    /// count past the latest. (At `u64::MAX` it would repeat; no stamp
    /// gets near it: followed ones are at most a year ahead of physical
    /// time.)
    pub fn now(&self) -> Stamp {
        let physical = (self.physical)().0 & !COUNTER_BITS;
        let mut last = self.last.load(Ordering::Acquire);
        loop {
            let next = if physical > last & !COUNTER_BITS {
                physical
            } else {
                last.saturating_add(1)
            };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Stamp {
                        time: next,
                        node: self.node,
                    }
                }
                Err(seen) => last = seen,
            }
        }
    }

    /// Current physical time, as the clock reads it.
    pub fn physical(&self) -> NTP64 {
        (self.physical)()
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
        self.observe_near(stamp, self.physical())
    }

    /// [`Clock::observe`], judged first against `recent`, a physical time
    /// read a moment ago: a stamp within the drift of it is within the
    /// drift of now (the physical clock having moved on since), and one
    /// that is not is judged again against a fresh reading. A receiver
    /// reads the clock once for many writes. Should the wall clock step
    /// back between the two readings, a stamp up to the step further ahead
    /// is followed: as it would have been just before the step.
    pub fn observe_near(&self, stamp: Stamp, recent: NTP64) -> Result<(), DriftError> {
        let drift = NTP64::from(self.max_drift).0;
        if stamp.time > recent.0.saturating_add(drift) {
            let now = (self.physical)().0;
            if stamp.time > now.saturating_add(drift) {
                return Err(DriftError {
                    stamp,
                    ahead_ms: unix_ms_from_ntp(stamp.time.saturating_sub(now)),
                    max_drift_ms: self.max_drift.as_millis() as u64,
                });
            }
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
    /// Only a stamp more than `ISSUED_AHEAD_MAX` ahead is refused: the
    /// clock then stays.
    pub fn issued(&self, stamp: Stamp) {
        let now = (self.physical)().0;
        if stamp.time <= now.saturating_add(NTP64::from(ISSUED_AHEAD_MAX).0) {
            self.follow(stamp);
        }
    }

    /// Every later stamp of this clock is after `stamp`.
    fn follow(&self, stamp: Stamp) {
        self.last.fetch_max(stamp.time, Ordering::AcqRel);
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

    thread_local! {
        /// The physical time `steered` reads (one per test thread).
        static STEERED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn steered() -> NTP64 {
        NTP64(STEERED.with(|t| t.get()))
    }

    /// What a test does to a clock.
    #[derive(Debug, Clone)]
    enum Step {
        /// The physical clock moves by this many NTP64 units (back, too:
        /// wall clocks are stepped).
        Physical(i64),
        Now,
        /// A remote stamp this far from physical time.
        Observe(i64),
        /// The same, judged against a reading this far in the past.
        ObserveNear(i64, u64),
        /// This node issues a stamp this far past its clock's last.
        Issued(u64),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let ms = NTP64::from(Duration::from_millis(1)).0 as i64;
        prop_oneof![
            (-1000 * ms..1000 * ms).prop_map(Step::Physical),
            (-40i64..40).prop_map(Step::Physical),
            Just(Step::Now),
            Just(Step::Now),
            (-1000 * ms..1000 * ms).prop_map(Step::Observe),
            (-40i64..40).prop_map(Step::Observe),
            (-1000 * ms..1000 * ms, 0..2000 * ms as u64).prop_map(|(a, b)| Step::ObserveNear(a, b)),
            (0u64..40).prop_map(Step::Issued),
        ]
    }

    proptest::proptest! {
        /// Whatever the physical clock does, every stamp is after every
        /// stamp made before it and every remote stamp followed, at or
        /// after the physical time it was made at; a remote stamp is
        /// followed exactly when it is within the drift of physical time,
        /// whatever reading it was first judged against.
        #[test]
        fn stamps_grow_past_everything_made_and_followed(
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let base = NTP64::from(Duration::from_secs(1_700_000_000)).0;
            let drift = Duration::from_millis(500);
            let drift_ntp = NTP64::from(drift).0;
            STEERED.with(|t| t.set(base));
            let clock = Clock::new(NodeId(5), steered, drift);
            let mut floor = Stamp::ZERO;
            for step in steps {
                let physical = steered().0;
                match step {
                    Step::Physical(by) => {
                        STEERED.with(|t| t.set(physical.saturating_add_signed(by)));
                    }
                    Step::Now => {
                        let stamp = clock.now();
                        proptest::prop_assert!(stamp > floor, "{stamp} after {floor}");
                        proptest::prop_assert!(stamp.time >= physical & !COUNTER_BITS);
                        proptest::prop_assert_eq!(stamp.node, NodeId(5));
                        floor = stamp;
                    }
                    Step::Observe(at) | Step::ObserveNear(at, _) => {
                        let remote = Stamp {
                            time: physical.saturating_add_signed(at),
                            node: NodeId(6),
                        };
                        let judged = match step {
                            Step::ObserveNear(_, ago) => {
                                clock.observe_near(remote, NTP64(physical.saturating_sub(ago)))
                            }
                            _ => clock.observe(remote),
                        };
                        let within = remote.time <= physical + drift_ntp;
                        proptest::prop_assert_eq!(judged.is_ok(), within);
                        if within {
                            floor = floor.max(remote);
                        }
                    }
                    Step::Issued(past) => {
                        let stamp = clock.now();
                        floor = floor.max(stamp);
                        let issued = Stamp { time: stamp.time + past, node: NodeId(5) };
                        clock.issued(issued);
                        floor = floor.max(issued);
                    }
                }
            }
        }
    }

    #[test]
    fn a_stamp_issued_more_than_a_year_ahead_does_not_move_the_clock() {
        let clock = Clock::new(NodeId(1), frozen, Duration::from_millis(500));
        let far = Stamp {
            time: frozen().0 + NTP64::from(ISSUED_AHEAD_MAX).0 + 1,
            node: NodeId(1),
        };
        clock.issued(far);
        assert!(clock.now() < far);
        let near = Stamp {
            time: frozen().0 + NTP64::from(Duration::from_secs(3600)).0,
            node: NodeId(1),
        };
        clock.issued(near);
        assert!(clock.now() > near);
    }

    #[test]
    fn threads_stamping_at_once_never_share_a_stamp() {
        let clock = std::sync::Arc::new(Clock::new(NodeId(3), frozen, Duration::from_millis(500)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    (0..20_000).map(|_| clock.now().time).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let stamps = t.join().expect("a stamping thread panicked");
            assert!(
                stamps.windows(2).all(|w| w[0] < w[1]),
                "one thread's stamps grow"
            );
            all.extend(stamps);
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn unix_ms_round_trips() {
        let s = Stamp::from_unix_ms(1_700_000_123_456, NodeId(3));
        assert_eq!(s.unix_ms(), 1_700_000_123_456);
    }
}
