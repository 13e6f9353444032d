//! Each simulated node's physical clock: simulated time plus that node's
//! skew. The HLC takes a plain `fn() -> NTP64`, so there is one function per
//! node slot, reading this thread's simulation (one simulation per thread).

use std::cell::Cell;
use std::time::Duration;

use chorus_crdt::NTP64;

/// Most nodes a simulation runs.
pub const MAX_NODES: usize = 16;

thread_local! {
    static SKEW_MS: [Cell<i64>; MAX_NODES] = const { [const { Cell::new(0) }; MAX_NODES] };
    /// Simulated time since the epoch as of the last step, for code that
    /// runs outside a host (the workload's commands).
    static NOW: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

pub fn set_skew_ms(slot: usize, skew_ms: i64) {
    SKEW_MS.with(|s| s[slot].set(skew_ms));
}

pub fn skew_ms(slot: usize) -> i64 {
    SKEW_MS.with(|s| s[slot].get())
}

/// Records the simulation's time, read by clocks outside a host.
pub fn set_now(since_epoch: Duration) {
    NOW.with(|n| n.set(since_epoch));
}

pub fn reset() {
    for slot in 0..MAX_NODES {
        set_skew_ms(slot, 0);
    }
    set_now(Duration::ZERO);
}

fn unix_ms(slot: usize) -> u64 {
    let now = turmoil::since_epoch().unwrap_or_else(|| NOW.with(Cell::get));
    (now.as_millis() as u64).saturating_add_signed(skew_ms(slot))
}

fn physical<const SLOT: usize>() -> NTP64 {
    NTP64::from(Duration::from_millis(unix_ms(SLOT)))
}

fn wall_ms<const SLOT: usize>() -> u64 {
    unix_ms(SLOT)
}

macro_rules! per_slot {
    ($f:ident, $t:ty) => {
        [
            $f::<0>, $f::<1>, $f::<2>, $f::<3>, $f::<4>, $f::<5>, $f::<6>, $f::<7>, $f::<8>,
            $f::<9>, $f::<10>, $f::<11>, $f::<12>, $f::<13>, $f::<14>, $f::<15>,
        ] as [$t; MAX_NODES]
    };
}

/// The physical clock of the node in `slot`.
pub fn physical_clock(slot: usize) -> fn() -> NTP64 {
    per_slot!(physical, fn() -> NTP64)[slot]
}

/// The same clock in unix ms.
pub fn wall_clock(slot: usize) -> fn() -> u64 {
    per_slot!(wall_ms, fn() -> u64)[slot]
}
