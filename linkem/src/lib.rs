//! A link emulator for tests and benchmarks: a UDP relay that makes a
//! loopback link look like a long-distance one.
//!
//! A [`Relay`] listens on one address and forwards every datagram to a
//! target, and the target's answers back, each direction through a
//! [`Pipe`]: a bottleneck of `rate` bits a second with a queue of `queue`
//! bytes in front of it (a datagram that finds it full is dropped, as a
//! router's tail drop), then `delay` (plus up to `jitter`) of propagation.
//! A datagram is lost with probability `loss`. Datagrams leave in order
//! unless `reorder` lets jitter pass one by another.
//!
//! Every sender seen on the listening address gets an upstream socket of
//! its own, so the target tells them apart as it would tell hosts apart.
//! The decisions are in [`Pipe`] (pure: times are passed in), the tasks
//! only move datagrams.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// One direction of an emulated link.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Up to this much more, uniformly drawn per datagram.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Bottleneck bandwidth in bits a second (`None`: unlimited).
    pub rate: Option<u64>,
    /// Bytes the bottleneck's queue holds.
    pub queue: usize,
    /// Whether jitter may deliver a datagram before one sent earlier.
    pub reorder: bool,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate: None,
            queue: 4 << 20,
            reorder: false,
        }
    }
}

/// What a pipe has done, for reports and tests.
#[derive(Debug, Default)]
pub struct Counts {
    pub passed: AtomicU64,
    pub bytes: AtomicU64,
    pub lost: AtomicU64,
    pub dropped_full: AtomicU64,
}

impl Counts {
    pub fn summary(&self) -> String {
        format!(
            "passed={} bytes={} lost={} dropped_queue_full={}",
            self.passed.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.dropped_full.load(Ordering::Relaxed)
        )
    }
}

/// The decisions of one direction: whether a datagram passes and when it
/// arrives. Pure: the time is passed in.
#[derive(Debug)]
pub struct Pipe {
    link: Link,
    rng: rand::rngs::StdRng,
    /// When the bottleneck finishes sending what it has taken.
    free_at: Instant,
    /// The latest arrival handed out (order is kept unless `reorder`).
    last_arrival: Instant,
}

impl Pipe {
    pub fn new(link: Link, seed: u64, now: Instant) -> Pipe {
        Pipe {
            link,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            free_at: now,
            last_arrival: now,
        }
    }

    /// When a datagram of `len` bytes handed over at `now` arrives, or
    /// `None` when it is lost or finds the queue full.
    pub fn admit(&mut self, now: Instant, len: usize, counts: &Counts) -> Option<Instant> {
        if self.link.loss > 0.0 && self.rng.random_bool(self.link.loss.min(1.0)) {
            counts.lost.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let sent = match self.link.rate {
            Some(rate) => {
                let start = self.free_at.max(now);
                // Bytes waiting ahead of this one: the queue.
                let waiting = (start - now).as_secs_f64() * rate as f64 / 8.0;
                if waiting + len as f64 > self.link.queue as f64 {
                    counts.dropped_full.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                self.free_at = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
                self.free_at
            }
            None => now,
        };
        let jitter = if self.link.jitter.is_zero() {
            Duration::ZERO
        } else {
            self.link.jitter.mul_f64(self.rng.random::<f64>())
        };
        let mut arrival = sent + self.link.delay + jitter;
        if !self.link.reorder {
            arrival = arrival.max(self.last_arrival);
        }
        self.last_arrival = self.last_arrival.max(arrival);
        counts.passed.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(len as u64, Ordering::Relaxed);
        Some(arrival)
    }
}

/// A running relay. Dropping it stops it.
pub struct Relay {
    /// Where senders send to reach the target.
    pub local: SocketAddr,
    /// Towards the target, and back.
    pub forward: Arc<Counts>,
    pub back: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A datagram in flight: (arrival, order of coming, destination, bytes).
type InFlight = (Instant, u64, SocketAddr, Vec<u8>);

/// Datagrams waiting for their arrival time, in arrival order (ties in the
/// order they came).
#[derive(Default)]
struct Waiting {
    heap: BinaryHeap<Reverse<InFlight>>,
    next: u64,
}

impl Waiting {
    fn push(&mut self, at: Instant, to: SocketAddr, datagram: Vec<u8>) {
        self.next += 1;
        self.heap.push(Reverse((at, self.next, to, datagram)));
    }

    fn due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Every datagram due by `now`.
    fn pop_due(&mut self, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        while self.due().is_some_and(|at| at <= now) {
            if let Some(Reverse((_, _, to, d))) = self.heap.pop() {
                out.push((to, d));
            }
        }
        out
    }
}

impl Relay {
    /// Relays datagrams arriving at `listen` to `target` and back, each
    /// direction through its own [`Link`].
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        forward: Link,
        back: Link,
        seed: u64,
    ) -> std::io::Result<Relay> {
        let socket = Arc::new(bind_relay_socket(listen).await?);
        let local = socket.local_addr()?;
        let (fwd_counts, back_counts) = (Arc::new(Counts::default()), Arc::new(Counts::default()));
        let task = tokio::spawn(run(
            socket,
            target,
            (forward, back),
            seed,
            (fwd_counts.clone(), back_counts.clone()),
        ));
        Ok(Relay {
            local,
            forward: fwd_counts,
            back: back_counts,
            task,
        })
    }
}

/// A sender's upstream socket, and the pipe its answers come back through.
struct Upstream {
    socket: Arc<UdpSocket>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MAX_DATAGRAM: usize = 65_536;

/// Socket buffers of the relay's sockets: the relay must not drop what the
/// link it emulates would carry (a default buffer overflows under a burst).
const SOCKET_BUFFER: libc::c_int = 32 << 20;

/// Binds a UDP socket with large buffers (forced past the system's cap
/// where the process may, as root can).
async fn bind_relay_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use std::os::fd::AsRawFd;
    let socket = UdpSocket::bind(addr).await?;
    let fd = socket.as_raw_fd();
    for (forced, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for option in [forced, plain] {
            // SAFETY: a valid socket descriptor, an int option of its size.
            let done = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&SOCKET_BUFFER as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if done == 0 {
                break;
            }
        }
    }
    Ok(socket)
}

async fn run(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    (forward, back): (Link, Link),
    seed: u64,
    (fwd_counts, back_counts): (Arc<Counts>, Arc<Counts>),
) {
    let mut pipe = Pipe::new(forward, seed, Instant::now());
    let mut upstreams: HashMap<SocketAddr, Upstream> = HashMap::new();
    let mut waiting = Waiting::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let due = waiting.due();
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = got else { continue };
                if !upstreams.contains_key(&from) {
                    let bind: SocketAddr = if target.is_ipv4() {
                        ([127, 0, 0, 1], 0).into()
                    } else {
                        (std::net::Ipv6Addr::LOCALHOST, 0).into()
                    };
                    let Ok(up) = bind_relay_socket(bind).await else { continue };
                    let up = Arc::new(up);
                    let task = tokio::spawn(answers(
                        up.clone(),
                        socket.clone(),
                        from,
                        Pipe::new(back, seed ^ upstreams.len() as u64 ^ 0x5eed, Instant::now()),
                        back_counts.clone(),
                    ));
                    upstreams.insert(from, Upstream { socket: up, task });
                }
                if let Some(at) = pipe.admit(Instant::now(), len, &fwd_counts) {
                    waiting.push(at, from, buf[..len].to_vec());
                }
            }
            _ = sleep_until(due) => {
                for (from, datagram) in waiting.pop_due(Instant::now()) {
                    if let Some(up) = upstreams.get(&from) {
                        let _ = up.socket.send_to(&datagram, target).await;
                    }
                }
            }
        }
    }
}

/// The target's answers to one sender, back through `pipe`.
async fn answers(
    up: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    to: SocketAddr,
    mut pipe: Pipe,
    counts: Arc<Counts>,
) {
    let mut waiting = Waiting::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let due = waiting.due();
        tokio::select! {
            got = up.recv_from(&mut buf) => {
                let Ok((len, _)) = got else { continue };
                if let Some(at) = pipe.admit(Instant::now(), len, &counts) {
                    waiting.push(at, to, buf[..len].to_vec());
                }
            }
            _ = sleep_until(due) => {
                for (to, datagram) in waiting.pop_due(Instant::now()) {
                    let _ = listen.send_to(&datagram, to).await;
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Parses `50ms`, `2s`, `1.5ms`, `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1e-3)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {text} (50ms, 1s)"))?;
    if !(0.0..=3600.0).contains(&(v * scale)) {
        return Err(format!("out of range: {text}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

/// Parses a bit rate: `100mbit`, `1gbit`, `500kbit`, or bits a second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let (num, scale) = if let Some(n) = lower.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = lower.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = lower.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        (lower.as_str(), 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("not a rate: {text} (100mbit, 1gbit)"))?;
    if v.is_nan() || v * scale < 8_000.0 {
        return Err(format!("a rate of at least 8kbit: {text}"));
    }
    Ok((v * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link {
            delay: Duration::from_millis(50),
            ..Link::default()
        }
    }

    #[test]
    fn a_datagram_arrives_after_the_delay_and_in_order() {
        let now = Instant::now();
        let counts = Counts::default();
        let mut pipe = Pipe::new(
            Link {
                jitter: Duration::from_millis(20),
                ..link()
            },
            1,
            now,
        );
        let mut last = now;
        for i in 0..1000 {
            let at = pipe
                .admit(now + Duration::from_micros(i * 10), 100, &counts)
                .unwrap();
            assert!(at >= now + Duration::from_millis(50));
            assert!(at <= now + Duration::from_micros(i * 10) + Duration::from_millis(71));
            assert!(at >= last, "in order without reorder");
            last = at;
        }
    }

    #[test]
    fn jitter_with_reorder_lets_datagrams_pass_each_other() {
        let now = Instant::now();
        let counts = Counts::default();
        let mut pipe = Pipe::new(
            Link {
                jitter: Duration::from_millis(20),
                reorder: true,
                ..link()
            },
            2,
            now,
        );
        let arrivals: Vec<Instant> = (0..100)
            .map(|i| {
                pipe.admit(now + Duration::from_micros(i * 10), 100, &counts)
                    .unwrap()
            })
            .collect();
        assert!(arrivals.windows(2).any(|w| w[1] < w[0]));
    }

    #[test]
    fn the_rate_spaces_datagrams_and_a_full_queue_drops() {
        let now = Instant::now();
        let counts = Counts::default();
        // 8 Mbit/s: 1,000 bytes take 1 ms; the queue holds 10 of them.
        let mut pipe = Pipe::new(
            Link {
                rate: Some(8_000_000),
                queue: 10_000,
                ..link()
            },
            3,
            now,
        );
        let first = pipe.admit(now, 1000, &counts).unwrap();
        let second = pipe.admit(now, 1000, &counts).unwrap();
        assert_eq!(second - first, Duration::from_millis(1));
        let passed = (0..100)
            .filter(|_| pipe.admit(now, 1000, &counts).is_some())
            .count();
        assert!((8..=10).contains(&passed), "{passed}");
        assert!(counts.dropped_full.load(Ordering::Relaxed) >= 90);
        // Once the queue drained, datagrams pass again.
        assert!(pipe
            .admit(now + Duration::from_millis(20), 1000, &counts)
            .is_some());
    }

    #[test]
    fn loss_drops_about_its_share() {
        let now = Instant::now();
        let counts = Counts::default();
        let mut pipe = Pipe::new(
            Link {
                loss: 0.1,
                ..link()
            },
            4,
            now,
        );
        let passed = (0..10_000)
            .filter(|_| pipe.admit(now, 100, &counts).is_some())
            .count();
        assert!((8_700..=9_300).contains(&passed), "{passed}");
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_millis(7));
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert!(parse_rate("1").is_err());
    }

    #[tokio::test]
    async fn datagrams_cross_the_relay_both_ways_after_the_delay() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let _ = echo.send_to(&buf[..n], from).await;
            }
        });
        let delay = Link {
            delay: Duration::from_millis(30),
            ..Link::default()
        };
        let relay = Relay::start("127.0.0.1:0".parse().unwrap(), target, delay, delay, 5)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        client.send_to(b"ping", relay.local).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, relay.local);
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "both ways delayed"
        );
        assert_eq!(relay.forward.passed.load(Ordering::Relaxed), 1);
        assert_eq!(relay.back.passed.load(Ordering::Relaxed), 1);
    }
}
