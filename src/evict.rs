//! `maxmemory`: the limit, the policy, and eviction by sampling, as Redis
//! does it (`evict.c`): draw a few random keys (`maxmemory-samples`), delete
//! the best candidate by the policy, until the allocator's count is under
//! the limit.
//!
//! An eviction is a delete, replicated like DEL: a node that dropped its
//! part of a CRDT state alone would diverge from its peers for good (a
//! counter's other tallies would come back as the whole value). With peers
//! the deletes' tombstones and backlog entries take memory until the peers
//! acknowledge them, so a replicating node evicts down to a little under the
//! limit ([`Limits::target`]).

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use smallvec::SmallVec;

use crate::key::Key;
use crate::keyspace::{Keyspace, SHARDS};

/// `maxmemory-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Policy {
    #[default]
    NoEviction,
    AllKeysLru,
    AllKeysLfu,
    AllKeysRandom,
    VolatileLru,
    VolatileLfu,
    VolatileRandom,
    VolatileTtl,
}

const POLICIES: [(Policy, &str); 8] = [
    (Policy::NoEviction, "noeviction"),
    (Policy::AllKeysLru, "allkeys-lru"),
    (Policy::AllKeysLfu, "allkeys-lfu"),
    (Policy::AllKeysRandom, "allkeys-random"),
    (Policy::VolatileLru, "volatile-lru"),
    (Policy::VolatileLfu, "volatile-lfu"),
    (Policy::VolatileRandom, "volatile-random"),
    (Policy::VolatileTtl, "volatile-ttl"),
];

impl Policy {
    pub fn parse(name: &str) -> Option<Policy> {
        POLICIES
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }

    pub fn name(self) -> &'static str {
        POLICIES[self as usize].1
    }

    fn from_u8(v: u8) -> Policy {
        POLICIES
            .get(v as usize)
            .map_or(Policy::NoEviction, |(p, _)| *p)
    }

    /// Only keys with an expiry may go.
    fn volatile(self) -> bool {
        matches!(
            self,
            Policy::VolatileLru
                | Policy::VolatileLfu
                | Policy::VolatileRandom
                | Policy::VolatileTtl
        )
    }

    /// What the keys' access clocks must hold for this policy.
    pub fn clock(self) -> Option<Clock> {
        match self {
            Policy::AllKeysLru | Policy::VolatileLru => Some(Clock::Lru),
            Policy::AllKeysLfu | Policy::VolatileLfu => Some(Clock::Lfu),
            _ => None,
        }
    }
}

/// What a key's access clock holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The last access, in tenths of a second.
    Lru,
    /// Redis's LFU word: the minute of the last decrement (24 bits) and a
    /// logarithmic access counter (8 bits).
    Lfu,
}

/// Redis's `lfu-log-factor` and `lfu-decay-time` defaults.
const LFU_LOG_FACTOR: f64 = 10.0;
const LFU_DECAY_MINUTES: u32 = 1;
/// A new key's count, so that it is not the first to go.
const LFU_INIT: u32 = 5;

fn minutes(now_ms: u64) -> u32 {
    ((now_ms / 60_000) & 0xff_ffff) as u32
}

/// Tenths of a second: an LRU clock fine enough to tell a key read a
/// moment ago from one written a second before, wrapping after 13 years
/// (an idle time is a wrapping difference).
fn tenths(now_ms: u64) -> u32 {
    (now_ms / 100) as u32
}

impl Clock {
    /// The word a key created now starts with.
    pub fn new_key(self, now_ms: u64) -> u32 {
        match self {
            Clock::Lru => tenths(now_ms),
            Clock::Lfu => (minutes(now_ms) << 8) | LFU_INIT,
        }
    }

    /// The word after an access now.
    pub fn touch(self, word: u32, now_ms: u64) -> u32 {
        match self {
            Clock::Lru => tenths(now_ms),
            Clock::Lfu => {
                let mut count = lfu_decayed(word, now_ms);
                if count < 255 {
                    let base = count.saturating_sub(LFU_INIT) as f64;
                    if rand::random::<f64>() < 1.0 / (base * LFU_LOG_FACTOR + 1.0) {
                        count += 1;
                    }
                }
                (minutes(now_ms) << 8) | count
            }
        }
    }

    /// How good a victim a key with this word is: the higher, the sooner it
    /// goes (idle time for LRU; 255 less the decayed count for LFU).
    fn idleness(self, word: u32, now_ms: u64) -> u64 {
        match self {
            Clock::Lru => lru_idle_ms(word, now_ms) / 100,
            Clock::Lfu => u64::from(255 - lfu_decayed(word, now_ms)),
        }
    }
}

/// OBJECT FREQ: the access count, decayed to now.
pub fn lfu_count(word: u32, now_ms: u64) -> u32 {
    lfu_decayed(word, now_ms)
}

/// OBJECT IDLETIME: how long since the last access.
pub fn lru_idle_ms(word: u32, now_ms: u64) -> u64 {
    let idle = tenths(now_ms).wrapping_sub(word);
    // A word ahead of `now_ms` (another thread touched the key after this
    // one read the time, or the wall clock stepped back): just used.
    if idle > u32::MAX / 2 {
        return 0;
    }
    u64::from(idle) * 100
}

/// The count less one per `lfu-decay-time` minutes since the last access.
fn lfu_decayed(word: u32, now_ms: u64) -> u32 {
    let (last, count) = (word >> 8, word & 0xff);
    let elapsed = minutes(now_ms).wrapping_sub(last) & 0xff_ffff;
    if elapsed > 0x7f_ffff {
        // Ahead of `now_ms`: no decay.
        return count;
    }
    count.saturating_sub(elapsed / LFU_DECAY_MINUTES)
}

/// The limit and how to keep to it; live (CONFIG SET).
#[derive(Debug, Default)]
pub struct Limits {
    maxmemory: AtomicU64,
    policy: AtomicU8,
    samples: AtomicUsize,
}

impl Limits {
    pub fn set_maxmemory(&self, bytes: u64) {
        self.maxmemory.store(bytes, Ordering::Relaxed);
    }

    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(policy as u8, Ordering::Relaxed);
    }

    pub fn set_samples(&self, samples: usize) {
        self.samples.store(samples.max(1), Ordering::Relaxed);
    }

    /// 0: no limit.
    pub fn maxmemory(&self) -> u64 {
        self.maxmemory.load(Ordering::Relaxed)
    }

    pub fn policy(&self) -> Policy {
        Policy::from_u8(self.policy.load(Ordering::Relaxed))
    }

    pub fn samples(&self) -> usize {
        self.samples.load(Ordering::Relaxed).max(1)
    }

    /// The clock keys must keep now: `None` without a limit (commands then
    /// pay nothing for it); with one, LFU under an LFU policy and LRU under
    /// any other (as Redis keeps it, for OBJECT IDLETIME).
    pub fn clock(&self) -> Option<Clock> {
        if self.maxmemory() == 0 {
            return None;
        }
        Some(self.policy().clock().unwrap_or(Clock::Lru))
    }

    /// What eviction brings memory down to: the limit, or 1/32 under it
    /// on a node that replicates (room for its deletes' tombstones and
    /// backlog entries until the peers have them).
    fn target(&self, replicating: bool) -> u64 {
        let max = self.maxmemory();
        if replicating {
            max - max / 32
        } else {
            max
        }
    }
}

/// Why a write was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfMemory;

/// Most keys one call evicts, so that one command never stalls long; the
/// next command (or the cron) goes on.
const MOST_PER_CALL: usize = 512;

/// Brings memory under the limit if it is over: `Ok` when it is under, or
/// eviction made progress; `OutOfMemory` when it is over and nothing can go
/// (`noeviction`, or no key the policy may take). `used` reads the
/// allocator's count (`None`: not known, so nothing is enforced).
pub fn make_room(
    ks: &Keyspace,
    used: impl Fn() -> Option<u64>,
    replicating: bool,
    now_ms: u64,
) -> Result<(), OutOfMemory> {
    let limits = &ks.limits;
    let max = limits.maxmemory();
    if max == 0 {
        return Ok(());
    }
    let Some(mut now_used) = used() else {
        return Ok(());
    };
    if now_used <= max {
        return Ok(());
    }
    let policy = limits.policy();
    if policy == Policy::NoEviction {
        return Err(OutOfMemory);
    }
    if let Some(tier) = &ks.cold {
        return move_cold(ks, tier, used, now_used, max, policy, now_ms);
    }
    let target = limits.target(replicating);
    let mut evicted = 0;
    while now_used > target && evicted < MOST_PER_CALL {
        let Some((db, key)) = pick(ks, policy, limits.samples(), now_ms, |_| true) else {
            break;
        };
        if ks.evict(db, &key, now_ms) {
            evicted += 1;
        }
        now_used = used().unwrap_or(0);
    }
    if evicted == 0 && now_used > max {
        // Refused only when no key the policy may take is left. Keys there
        // are but none sampled: the table is mostly tombstones waiting for
        // the peers' acknowledgements, which free memory as they come.
        let left = if policy.volatile() {
            ks.with_expiry.load(std::sync::atomic::Ordering::Relaxed)
        } else {
            ks.live_keys.load(std::sync::atomic::Ordering::Relaxed)
        };
        if left == 0 {
            return Err(OutOfMemory);
        }
    }
    Ok(())
}

/// With a flash tier: the policy's victims move to the store, which
/// replicates nothing, so no room is kept for tombstones. Only keys the
/// store holds as they are can go (see `crate::flash`); when every key in
/// RAM has changed since the last fold, a fold is asked for and the write
/// goes ahead, up to `crate::flash::ceiling`, past which the writer waits
/// for the fold (`ColdTier::holds_writes`). Refused only when nothing the
/// policy may take is left in RAM.
fn move_cold(
    ks: &Keyspace,
    tier: &crate::flash::ColdTier,
    used: impl Fn() -> Option<u64>,
    mut now_used: u64,
    max: u64,
    policy: Policy,
    now_ms: u64,
) -> Result<(), OutOfMemory> {
    // While a fold runs, the keys it took look clean but may not go until
    // it has stored them: sampling them would spin until it ends (a
    // quarter of a bulk load's CPU went so). The writer goes ahead, up to
    // the ceiling (`crate::flash::ColdTier::holds_writes`).
    if tier.starved() || tier.folding() {
        return Ok(());
    }
    let movable = |e: &crate::keymap::Entry| !e.key.is_cold() && !e.key.is_dirty();
    let (mut moved, mut tries) = (0, 0);
    while now_used > max && tries < MOST_PER_CALL {
        tries += 1;
        let Some((db, key)) = pick(ks, policy, ks.limits.samples(), now_ms, movable) else {
            break;
        };
        if ks.move_cold(db, &key) {
            moved += 1;
        } else if tier.folding() {
            return Ok(());
        }
        now_used = used().unwrap_or(0);
    }
    if now_used <= max || moved > 0 {
        return Ok(());
    }
    let in_ram = if policy.volatile() {
        ks.with_expiry
            .load(Ordering::Relaxed)
            .saturating_sub(tier.cold_volatile.load(Ordering::Relaxed))
    } else {
        ks.live_keys
            .load(Ordering::Relaxed)
            .saturating_sub(ks.cold_keys())
    };
    if in_ram == 0 {
        return Err(OutOfMemory);
    }
    tier.starve();
    Ok(())
}

/// A node starting with a flash tier: moves random keys out until the
/// allocator holds at most `limit` (the keys the store loaded past it went
/// straight to disk, but their stand-ins and the log's replay came on top).
/// Every loaded key is clean, so any may go.
pub fn cool_down(ks: &Keyspace, limit: u64, now_ms: u64) {
    let Some(tier) = &ks.cold else {
        return;
    };
    let used = || crate::alloc::used_bytes().map(|b| b as u64);
    loop {
        let Some(now_used) = used() else {
            return;
        };
        let before = ks.cold_keys();
        if now_used <= limit {
            return;
        }
        let _ = move_cold(
            ks,
            tier,
            used,
            now_used,
            limit,
            Policy::AllKeysRandom,
            now_ms,
        );
        if ks.cold_keys() == before {
            return;
        }
    }
}

/// The best victim among `samples` random keys of one random shard (in
/// each of its databases), drawn from consecutive buckets as Redis's
/// `dictGetSomeKeys` draws them: the table is in hash order, so neighbours
/// are as random as scattered keys, and they share cache lines (scattered
/// samples cost a cache miss each, most of an eviction's time);
/// `None` when none of several rounds found any key the policy may take.
fn pick(
    ks: &Keyspace,
    policy: Policy,
    samples: usize,
    now_ms: u64,
    may_take: impl Fn(&crate::keymap::Entry) -> bool,
) -> Option<(usize, Key)> {
    let clock = policy.clock();
    let mut best: Option<(u64, usize, Key)> = None;
    for _round in 0..16 {
        let shard = rand::random_range(0..SHARDS);
        let mut locked = ks.lock(SmallVec::from_slice(&[shard]));
        let Ok(s) = locked.shard(shard) else {
            continue;
        };
        for (db, d) in s.dbs.iter().enumerate() {
            if d.live == 0 {
                continue;
            }
            let mut consider = |entry: &crate::keymap::Entry| {
                let score = match (policy, clock) {
                    (Policy::VolatileTtl, _) => u64::MAX - entry.state.expire_at_ms(),
                    (_, Some(c)) => c.idleness(entry.clock(), now_ms),
                    _ => rand::random(),
                };
                if best.as_ref().is_none_or(|(b, _, _)| score > *b) {
                    best = Some((score, db, entry.key.clone()));
                }
            };
            if policy.volatile() {
                for _ in 0..samples {
                    if let Some(entry) = volatile_sample(d, policy, &may_take) {
                        consider(entry);
                    }
                }
            } else {
                // Past tombstones (deletes the peers have not all
                // acknowledged yet): only a key can be evicted.
                let start = rand::random_range(0..d.map.buckets().max(1));
                for entry in d
                    .map
                    .sample_run(start, samples, 1024, |e| e.state.exists(0) && may_take(e))
                {
                    consider(entry);
                }
            }
        }
        if best.is_some() {
            break;
        }
    }
    best.map(|(_, db, key)| (db, key))
}

/// A key with an expiry from one database of a shard that `may_take`
/// allows: the soonest to expire for volatile-ttl, else the first from a
/// random point of the expiry order (looking at a few dozen at most from
/// each point; volatile-ttl tries a random point when the soonest ones
/// may not go, as with a flash tier once they are on disk).
fn volatile_sample<'d>(
    d: &'d crate::keyspace::Db,
    policy: Policy,
    may_take: &impl Fn(&crate::keymap::Entry) -> bool,
) -> Option<&'d crate::keymap::Entry> {
    let (first, _) = d.expiring.first()?;
    let (last, _) = d.expiring.last()?;
    let from = |at: u64| {
        d.expiring
            .range((at, Key::new(b""))..)
            .take(VOLATILE_LOOKS)
            .filter_map(|(_, key)| d.map.entry(key))
            .find(|e| may_take(e))
    };
    let random = || from(rand::random_range(*first..=*last));
    if policy == Policy::VolatileTtl {
        from(*first).or_else(random)
    } else {
        random()
    }
}

/// Most entries of the expiry order one volatile sample looks at for one
/// the policy may take (with a flash tier, cold and changed keys may not).
const VOLATILE_LOOKS: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_by_redis_names() {
        for (p, name) in POLICIES {
            assert_eq!(Policy::parse(name), Some(p));
            assert_eq!(Policy::parse(&name.to_uppercase()), Some(p));
            assert_eq!(p.name(), name);
            assert_eq!(Policy::from_u8(p as u8), p);
        }
        assert_eq!(Policy::parse("allkeys"), None);
    }

    #[test]
    fn lru_prefers_the_longest_idle_and_lfu_the_least_used() {
        let now = 10_000_000_000;
        let lru = Clock::Lru;
        let old = lru.new_key(now - 60_000);
        let fresh = lru.touch(old, now);
        assert!(lru.idleness(old, now) > lru.idleness(fresh, now));

        let lfu = Clock::Lfu;
        let mut busy = lfu.new_key(now);
        for _ in 0..10_000 {
            busy = lfu.touch(busy, now);
        }
        let idle = lfu.new_key(now);
        assert!(busy & 0xff > LFU_INIT + 5, "counted, logarithmically");
        assert!(busy & 0xff < 255);
        assert!(lfu.idleness(idle, now) > lfu.idleness(busy, now));
        // A count decays by one a minute.
        let later = now + 3 * 60_000;
        assert_eq!(lfu_decayed(busy, later), (busy & 0xff) - 3);
        // A word from a moment ahead of the reader's time is just used,
        // never the idlest of all.
        let ahead = lru.touch(0, now + 300);
        assert_eq!(lru.idleness(ahead, now), 0);
        assert_eq!(lru_idle_ms(ahead, now), 0);
        let ahead = lfu.touch(busy, now + 120_000);
        assert_eq!(lfu_decayed(ahead, now), ahead & 0xff);
    }
}
