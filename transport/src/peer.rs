//! Reconnecting to a peer: exponential backoff with jitter. (Replication's
//! senders read the shared backlog at their own pace, so no per-peer queue
//! sits here: memory is bounded once for all peers.)

use std::time::Duration;

/// Reconnect delays: doubling from `min` to `max`, each scaled by a random
/// factor in [0.5, 1.5) so that many nodes do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: rand::rngs::SmallRng,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff::seeded(min, max, rand::random())
    }

    /// The same delays for the same seed (the simulation replays a run).
    pub fn seeded(min: Duration, max: Duration, seed: u64) -> Backoff {
        use rand::SeedableRng;
        Backoff {
            min,
            max,
            attempt: 0,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let base = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.5 + self.rng.random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}
