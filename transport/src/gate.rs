//! Which inbound connections may start a peer handshake.
//!
//! A handshake costs the acceptor a task, a TLS session and SPAKE2 work, and
//! each one is an online guess at the shared secret. So at most
//! [`MAX_PENDING_HANDSHAKES`] run at once, at most
//! [`MAX_PENDING_PER_SOURCE`] of them from one source (one party cannot
//! take every slot), and a source whose handshakes keep failing waits: it
//! may fail [`FAILURE_BURST`] times in a row, then once per
//! [`FAILURE_REFILL`]. A peer that proves the secret costs its source
//! nothing. Everything refused here is refused at once; peers retry with
//! backoff.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually holds a
//! whole /64, and would otherwise get a fresh budget per address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Inbound handshakes in progress at once, over every source.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Inbound handshakes in progress at once from one source.
pub const MAX_PENDING_PER_SOURCE: usize = 8;
/// Failed handshakes a source may have in a row before it waits.
pub const FAILURE_BURST: u32 = 16;
/// Once past the burst, a source may fail once per this long: two guesses
/// a second at the secret.
pub const FAILURE_REFILL: Duration = Duration::from_millis(500);
/// Sources whose failures are remembered; past this the one that failed
/// longest ago is forgotten (it gets a fresh burst).
pub const MAX_SOURCES_REMEMBERED: usize = 4096;

/// An IPv4 address, or an IPv6 address's first 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(u32::from(v4) as u128),
                None => Source((u128::from(v6) >> 64) << 64 | 1 << 32),
            },
        }
    }
}

/// Why a connection may not start a handshake now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// [`MAX_PENDING_HANDSHAKES`] are in progress.
    Busy,
    /// [`MAX_PENDING_PER_SOURCE`] from its source are in progress.
    SourceBusy,
    /// Its source failed too often lately.
    Failing,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Busy => "too many handshakes in progress",
            Refused::SourceBusy => "too many handshakes in progress from this source",
            Refused::Failing => "too many failed handshakes from this source lately",
        }
    }
}

#[derive(Debug, Default)]
pub struct Gate {
    pending: HashMap<Source, usize>,
    total: usize,
    /// Per source, when its failure budget is whole again (a source whose
    /// time has passed has its full burst).
    failures: HashMap<Source, Instant>,
}

impl Gate {
    /// A connection from `ip` asks to start a handshake; on `Ok` the caller
    /// must report its end with [`Gate::finished`].
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<Source, Refused> {
        let source = Source::of(ip);
        if self
            .failures
            .get(&source)
            .is_some_and(|whole| *whole > now + FAILURE_REFILL * (FAILURE_BURST - 1))
        {
            return Err(Refused::Failing);
        }
        if self.total >= MAX_PENDING_HANDSHAKES {
            return Err(Refused::Busy);
        }
        let pending = self.pending.entry(source).or_insert(0);
        if *pending >= MAX_PENDING_PER_SOURCE {
            return Err(Refused::SourceBusy);
        }
        *pending += 1;
        self.total += 1;
        Ok(source)
    }

    /// A handshake admitted for `source` ended; `failed` unless the peer
    /// proved itself.
    pub fn finished(&mut self, source: Source, failed: bool, now: Instant) {
        if let Some(n) = self.pending.get_mut(&source) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.pending.remove(&source);
            }
        }
        if !failed {
            return;
        }
        if !self.failures.contains_key(&source) && self.failures.len() >= MAX_SOURCES_REMEMBERED {
            self.failures.retain(|_, whole| *whole > now);
            if self.failures.len() >= MAX_SOURCES_REMEMBERED {
                if let Some(oldest) = self
                    .failures
                    .iter()
                    .min_by_key(|(_, w)| **w)
                    .map(|(s, _)| *s)
                {
                    self.failures.remove(&oldest);
                }
            }
        }
        let whole = self.failures.entry(source).or_insert(now);
        *whole = (*whole).max(now) + FAILURE_REFILL;
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.total
    }

    /// Sources whose failures are remembered.
    pub fn remembered(&self) -> usize {
        self.failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn one_source_takes_at_most_its_share_of_the_handshake_slots() {
        let mut gate = Gate::default();
        let now = Instant::now();
        for _ in 0..MAX_PENDING_PER_SOURCE {
            gate.admit(v4(1), now).expect("within its share");
        }
        assert_eq!(gate.admit(v4(1), now), Err(Refused::SourceBusy));
        // Others still get in, up to the total.
        let mut last = 2;
        while gate.pending() < MAX_PENDING_HANDSHAKES {
            if gate.admit(v4(last), now).is_err() {
                last += 1;
            }
        }
        assert_eq!(gate.admit(v4(200), now), Err(Refused::Busy));
        // A slot freed is a slot again.
        gate.finished(Source::of(v4(1)), false, now);
        assert!(gate.admit(v4(200), now).is_ok());
    }

    #[tokio::test]
    async fn addresses_of_one_ipv6_64_are_one_source() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(v4(1)));
        assert_ne!(
            Source::of("::1".parse().unwrap()),
            Source::of("0.0.0.1".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn a_source_that_keeps_failing_waits_and_then_gets_one_try_per_refill() {
        let mut gate = Gate::default();
        let now = Instant::now();
        for _ in 0..FAILURE_BURST {
            let s = gate.admit(v4(1), now).expect("within the burst");
            gate.finished(s, true, now);
        }
        assert_eq!(gate.admit(v4(1), now), Err(Refused::Failing));
        assert!(gate.admit(v4(2), now).is_ok(), "other sources unaffected");
        let later = now + FAILURE_REFILL;
        let s = gate.admit(v4(1), later).expect("one more try");
        gate.finished(s, true, later);
        assert_eq!(gate.admit(v4(1), later), Err(Refused::Failing));
        // A success costs nothing; the budget comes back whole with time.
        let whole = later + FAILURE_REFILL * FAILURE_BURST;
        for _ in 0..FAILURE_BURST * 2 {
            let s = gate.admit(v4(1), whole).expect("successes are free");
            gate.finished(s, false, whole);
        }
        for _ in 0..FAILURE_BURST {
            let s = gate.admit(v4(1), whole).expect("a whole burst again");
            gate.finished(s, true, whole);
        }
        assert_eq!(gate.admit(v4(1), whole), Err(Refused::Failing));
    }

    #[tokio::test]
    async fn failures_of_many_sources_are_remembered_up_to_the_bound() {
        let mut gate = Gate::default();
        let now = Instant::now();
        for i in 0..MAX_SOURCES_REMEMBERED as u32 + 100 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let s = gate.admit(ip, now).expect("a fresh source");
            gate.finished(s, true, now);
        }
        assert_eq!(gate.remembered(), MAX_SOURCES_REMEMBERED);
        assert_eq!(gate.pending(), 0);
    }
}
