//! One outbound peer kept connected: a bounded queue in front, a task that
//! dials with exponential backoff and jitter, and live-stream delivery.
//!
//! Writers never wait: [`Outbound::try_send`] fails at once when the queue is
//! full and marks the peer overflowed, which tells the replication layer to
//! fall back to a state transfer. Frames in flight when a link drops are not
//! re-sent here: the receiver's acknowledgements say where to resume.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::{StreamKind, Transport};

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

/// What the node reports about one peer link.
#[derive(Debug, Default)]
pub struct PeerState {
    pub connected: AtomicBool,
    /// The queue was full at least once since the last `take_overflow`.
    pub overflowed: AtomicBool,
    pub sent_frames: AtomicU64,
    pub dropped_frames: AtomicU64,
    pub connects: AtomicU64,
    pub peer_node: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// The sending side of one managed peer. Dropping it stops the task.
pub struct Outbound {
    tx: mpsc::Sender<Vec<u8>>,
    pub state: Arc<PeerState>,
    pub addr: SocketAddr,
}

/// `try_send` found the queue full; the frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

impl Outbound {
    /// Starts keeping `addr` connected, with a queue of `capacity` frames.
    pub fn spawn(
        transport: Arc<Transport>,
        addr: SocketAddr,
        capacity: usize,
        backoff: Backoff,
    ) -> Outbound {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let state = Arc::new(PeerState::default());
        tokio::spawn(run(transport, addr, rx, state.clone(), backoff));
        Outbound { tx, state, addr }
    }

    /// Queues a frame without waiting.
    pub fn try_send(&self, frame: Vec<u8>) -> Result<(), QueueFull> {
        self.tx.try_send(frame).map_err(|_| {
            self.state.overflowed.store(true, Ordering::Relaxed);
            self.state.dropped_frames.fetch_add(1, Ordering::Relaxed);
            QueueFull
        })
    }

    /// Whether the queue overflowed since the last call, clearing the flag.
    pub fn take_overflow(&self) -> bool {
        self.state.overflowed.swap(false, Ordering::Relaxed)
    }

    /// Frames waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn record_error(state: &PeerState, error: String) {
    if let Ok(mut last) = state.last_error.lock() {
        *last = Some(error);
    }
}

async fn run(
    transport: Arc<Transport>,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    state: Arc<PeerState>,
    mut backoff: Backoff,
) {
    while !rx.is_closed() {
        match transport.connect(addr).await {
            Ok(link) => {
                backoff.reset();
                state.connected.store(true, Ordering::Relaxed);
                state.connects.fetch_add(1, Ordering::Relaxed);
                state.peer_node.store(link.peer_node, Ordering::Relaxed);
                info!(peer = %addr, node = link.peer_node, "replication link up");
                match link.open(StreamKind::Live).await {
                    Ok(mut live) => loop {
                        tokio::select! {
                            biased;
                            frame = rx.recv() => match frame {
                                None => {
                                    let _ = live.finish();
                                    link.close("peer removed");
                                    state.connected.store(false, Ordering::Relaxed);
                                    return;
                                }
                                Some(frame) => match live.send(&frame).await {
                                    Ok(()) => {
                                        state.sent_frames.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => {
                                        record_error(&state, e.to_string());
                                        break;
                                    }
                                },
                            },
                            reason = link.closed() => {
                                record_error(&state, reason);
                                break;
                            }
                        }
                    },
                    Err(e) => record_error(&state, e.to_string()),
                }
                state.connected.store(false, Ordering::Relaxed);
                info!(peer = %addr, "replication link down");
            }
            Err(e) => {
                debug!(peer = %addr, "dial failed: {e}");
                record_error(&state, e.to_string());
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
