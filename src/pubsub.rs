//! Pub/sub on one node: who subscribes to what, and each subscriber's
//! mailbox of messages its connection has yet to write.
//!
//! A publish (from a local client or from a peer's live stream) fans out
//! under a read lock into the mailboxes of the channel's subscribers and of
//! every matching pattern's, and wakes their connections; it never waits
//! for one. A mailbox past `client-output-buffer-limit pubsub` (hard, or
//! soft for its seconds) stops taking messages and has its client closed,
//! as Redis closes a subscriber that does not read. A node with no
//! subscriber pays one atomic load per publish.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::config::OutputBufferLimit;
use crate::resp::Reply;
use crate::session::ClientHandle;

/// The two namespaces of channels: `SUBSCRIBE`/`PUBLISH` and Redis 7's
/// shard channels (`SSUBSCRIBE`/`SPUBLISH`). Patterns cover the first only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Global,
    Shard,
}

/// One message waiting in a mailbox.
#[derive(Debug, Clone)]
enum Push {
    Message {
        space: Space,
        channel: Bytes,
        payload: Bytes,
    },
    PMessage {
        pattern: Bytes,
        channel: Bytes,
        payload: Bytes,
    },
    /// CLIENT TRACKING: `key` changed (`None`: every key, after a flush);
    /// `redirected`: sent to a REDIRECT target.
    Invalidate {
        key: Option<Bytes>,
        redirected: bool,
    },
    /// CLIENT TRACKING: the REDIRECT target `id` went away.
    RedirectBroken { id: u64 },
}

impl Push {
    /// What it costs the mailbox, as Redis counts a reply's bytes.
    fn cost(&self) -> usize {
        const FRAMING: usize = 48;
        match self {
            Push::Message {
                channel, payload, ..
            } => channel.len() + payload.len() + FRAMING,
            Push::PMessage {
                pattern,
                channel,
                payload,
            } => pattern.len() + channel.len() + payload.len() + FRAMING,
            Push::Invalidate { key, .. } => key.as_ref().map_or(0, Bytes::len) + FRAMING,
            Push::RedirectBroken { .. } => FRAMING,
        }
    }

    fn write(&self, out: &mut Reply) {
        match self {
            Push::Message {
                space,
                channel,
                payload,
            } => {
                out.push(3);
                out.bulk(match space {
                    Space::Global => b"message",
                    Space::Shard => b"smessage",
                });
                out.bulk(channel);
                out.bulk(payload);
            }
            Push::PMessage {
                pattern,
                channel,
                payload,
            } => {
                out.push(4);
                out.bulk(b"pmessage");
                out.bulk(pattern);
                out.bulk(channel);
                out.bulk(payload);
            }
            // Queued for a RESP3 client that has since said HELLO 2: not
            // something it can read.
            Push::Invalidate {
                redirected: false, ..
            }
            | Push::RedirectBroken { .. }
                if !out.resp3 => {}
            Push::Invalidate { key, .. } => {
                // RESP3: a push of its own; RESP2 (a REDIRECT target): a
                // message on Redis's channel.
                if out.resp3 {
                    out.push(2);
                    out.bulk(b"invalidate");
                } else {
                    out.push(3);
                    out.bulk(b"message");
                    out.bulk(b"__redis__:invalidate");
                }
                match key {
                    Some(key) => {
                        out.array(1);
                        out.bulk(key);
                    }
                    None => out.null(),
                }
            }
            Push::RedirectBroken { id } => {
                out.push(2);
                out.bulk(b"tracking-redir-broken");
                out.int(*id as i64);
            }
        }
    }
}

/// The messages one subscribed client has yet to be sent.
pub struct Mailbox {
    client: Weak<ClientHandle>,
    queue: Mutex<Queue>,
    /// Signalled when a message arrives (a permit is kept if the
    /// connection is not waiting yet).
    pub ready: tokio::sync::Notify,
    /// Went past its limit: takes nothing more; the connection closes.
    pub overflowed: AtomicBool,
    /// Messages queued: a connection looks here, not in the queue, after
    /// every command.
    pending: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    pushes: VecDeque<Push>,
    bytes: usize,
    /// Since when the queue has held more than the soft limit.
    over_soft_since: Option<Instant>,
    /// The soft limit when a message last came.
    soft: u64,
}

impl Mailbox {
    /// A client's mailbox (see `ClientHandle::mailbox`).
    pub fn new(client: Weak<ClientHandle>) -> Mailbox {
        Mailbox {
            client,
            queue: Mutex::new(Queue::default()),
            ready: tokio::sync::Notify::new(),
            overflowed: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
        }
    }

    /// Queues a CLIENT TRACKING invalidation, if the client reads them:
    /// in RESP3, or in RESP2 as a subscribed REDIRECT target (as Redis).
    pub fn invalidate(&self, key: Option<Bytes>, redirected: bool, limit: OutputBufferLimit) {
        let Some(client) = self.client.upgrade() else {
            return;
        };
        let resp3 = client.resp.load(Ordering::Relaxed) > 2;
        let subscribed = client
            .subscriptions
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0);
        if resp3 || (redirected && subscribed) {
            self.deliver(Push::Invalidate { key, redirected }, limit);
        }
    }

    /// Tells a RESP3 client that its REDIRECT target went away.
    pub fn redirect_broken(&self, id: u64, limit: OutputBufferLimit) {
        if self
            .client
            .upgrade()
            .is_some_and(|c| c.resp.load(Ordering::Relaxed) > 2)
        {
            self.deliver(Push::RedirectBroken { id }, limit);
        }
    }

    /// Queues `push` unless that takes the mailbox past `limit`, in which
    /// case the mailbox overflows and its client is asked to close.
    fn deliver(&self, push: Push, limit: OutputBufferLimit) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let mut q = self.queue.lock();
        let bytes = q.bytes + push.cost();
        let over_hard = limit.hard > 0 && bytes as u64 > limit.hard;
        let over_soft = limit.soft > 0 && bytes as u64 > limit.soft;
        q.soft = limit.soft;
        // As Redis: the first crossing starts the clock; the client goes
        // once it has stayed above for longer than the seconds.
        let soft_expired = match (over_soft, q.over_soft_since) {
            (false, _) => {
                q.over_soft_since = None;
                false
            }
            (true, None) => {
                q.over_soft_since = Some(Instant::now());
                false
            }
            (true, Some(since)) => since.elapsed().as_millis() > limit.soft_seconds as u128 * 1000,
        };
        if over_hard || soft_expired {
            q.pushes.clear();
            q.bytes = 0;
            self.pending.store(0, Ordering::Release);
            drop(q);
            self.overflowed.store(true, Ordering::Relaxed);
            if let Some(client) = self.client.upgrade() {
                client.omem.store(0, Ordering::Relaxed);
                client.kill();
            }
            self.ready.notify_one();
            return false;
        }
        q.bytes = bytes;
        q.pushes.push_back(push);
        self.pending.store(q.pushes.len(), Ordering::Release);
        if let Some(client) = self.client.upgrade() {
            client.omem.store(bytes, Ordering::Relaxed);
        }
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Writes queued messages into `out` until it holds `max` bytes.
    pub fn drain_into(&self, out: &mut Reply, max: usize) {
        if self.is_empty() {
            return;
        }
        let mut q = self.queue.lock();
        while out.buf.len() < max {
            let Some(push) = q.pushes.pop_front() else {
                break;
            };
            q.bytes -= push.cost();
            push.write(out);
        }
        self.pending.store(q.pushes.len(), Ordering::Release);
        if q.soft == 0 || q.bytes as u64 <= q.soft {
            q.over_soft_since = None;
        }
        if let Some(client) = self.client.upgrade() {
            client.omem.store(q.bytes, Ordering::Relaxed);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}

type Subscribers = Vec<Arc<Mailbox>>;

#[derive(Default)]
struct Registry {
    channels: HashMap<Bytes, Subscribers>,
    shard_channels: HashMap<Bytes, Subscribers>,
    patterns: HashMap<Bytes, Subscribers>,
}

impl Registry {
    fn map(&mut self, space: Space) -> &mut HashMap<Bytes, Subscribers> {
        match space {
            Space::Global => &mut self.channels,
            Space::Shard => &mut self.shard_channels,
        }
    }
}

/// The node's pub/sub hub.
pub struct PubSub {
    /// Subscriptions of every kind: 0 lets a publish skip the lock.
    subscriptions: AtomicUsize,
    registry: RwLock<Registry>,
    /// `client-output-buffer-limit pubsub`: hard, soft, seconds.
    limit: [AtomicU64; 3],
    /// Messages delivered to a mailbox, and refused by a full one.
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
    /// Messages peers published that reached this node.
    pub from_peers: AtomicU64,
    /// Messages from peers dropped because the writes their publisher
    /// made before them did not arrive in time (see `PUBLISH_WAIT`).
    pub late: AtomicU64,
}

impl Default for PubSub {
    /// A hub without output limits (see [`PubSub::new`]).
    fn default() -> Self {
        PubSub {
            subscriptions: AtomicUsize::new(0),
            registry: RwLock::new(Registry::default()),
            limit: Default::default(),
            delivered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            from_peers: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }
}

impl PubSub {
    pub fn new() -> PubSub {
        let hub = PubSub::default();
        hub.set_limit(crate::config::OutputBufferLimits::default().pubsub);
        hub
    }

    /// `client-output-buffer-limit pubsub`.
    pub fn set_limit(&self, limit: OutputBufferLimit) {
        self.limit[0].store(limit.hard, Ordering::Relaxed);
        self.limit[1].store(limit.soft, Ordering::Relaxed);
        self.limit[2].store(limit.soft_seconds, Ordering::Relaxed);
    }

    pub fn limit(&self) -> OutputBufferLimit {
        OutputBufferLimit {
            hard: self.limit[0].load(Ordering::Relaxed),
            soft: self.limit[1].load(Ordering::Relaxed),
            soft_seconds: self.limit[2].load(Ordering::Relaxed),
        }
    }

    /// Whether anyone subscribes to anything here.
    pub fn has_subscribers(&self) -> bool {
        self.subscriptions.load(Ordering::Acquire) > 0
    }

    /// Delivers `payload` to the local subscribers of `channel` (and, in
    /// the global space, of every pattern it matches). Returns how many
    /// received it, as PUBLISH answers.
    pub fn publish(&self, space: Space, channel: &[u8], payload: &[u8]) -> usize {
        if self.subscriptions.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let limit = self.limit();
        let registry = self.registry.read();
        let channel = Bytes::copy_from_slice(channel);
        let payload = Bytes::copy_from_slice(payload);
        let mut receivers = 0usize;
        let mut refused = 0u64;
        let mut deliver = |mailbox: &Mailbox, push: Push| {
            receivers += 1;
            if !mailbox.deliver(push, limit) {
                refused += 1;
            }
        };
        let by_channel = match space {
            Space::Global => &registry.channels,
            Space::Shard => &registry.shard_channels,
        };
        for mailbox in by_channel.get(&channel).into_iter().flatten() {
            let push = Push::Message {
                space,
                channel: channel.clone(),
                payload: payload.clone(),
            };
            deliver(mailbox, push);
        }
        if space == Space::Global {
            for (pattern, mailboxes) in &registry.patterns {
                if !crate::glob::matches(pattern, &channel, false) {
                    continue;
                }
                for mailbox in mailboxes {
                    let push = Push::PMessage {
                        pattern: pattern.clone(),
                        channel: channel.clone(),
                        payload: payload.clone(),
                    };
                    deliver(mailbox, push);
                }
            }
        }
        self.delivered
            .fetch_add(receivers as u64 - refused, Ordering::Relaxed);
        self.refused.fetch_add(refused, Ordering::Relaxed);
        receivers
    }

    fn add(&self, space: Option<Space>, name: &Bytes, mailbox: &Arc<Mailbox>) {
        let mut r = self.registry.write();
        let map = match space {
            Some(space) => r.map(space),
            None => &mut r.patterns,
        };
        map.entry(name.clone()).or_default().push(mailbox.clone());
        self.subscriptions.fetch_add(1, Ordering::Release);
    }

    fn remove(&self, space: Option<Space>, name: &[u8], mailbox: &Arc<Mailbox>) {
        let mut r = self.registry.write();
        let map = match space {
            Some(space) => r.map(space),
            None => &mut r.patterns,
        };
        if let Some(list) = map.get_mut(name) {
            let before = list.len();
            list.retain(|m| !Arc::ptr_eq(m, mailbox));
            if list.len() < before {
                self.subscriptions.fetch_sub(1, Ordering::Release);
            }
            if list.is_empty() {
                map.remove(name);
            }
        }
    }

    /// Channels of `space` with a subscriber here, matching `pattern` if
    /// one is given (PUBSUB CHANNELS, SHARDCHANNELS).
    pub fn channels(&self, space: Space, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let r = self.registry.read();
        let map = match space {
            Space::Global => &r.channels,
            Space::Shard => &r.shard_channels,
        };
        map.keys()
            .filter(|c| pattern.is_none_or(|p| crate::glob::matches(p, c, false)))
            .cloned()
            .collect()
    }

    /// Subscribers of `channel` here (PUBSUB NUMSUB, SHARDNUMSUB).
    pub fn subscribers(&self, space: Space, channel: &[u8]) -> usize {
        let r = self.registry.read();
        let map = match space {
            Space::Global => &r.channels,
            Space::Shard => &r.shard_channels,
        };
        map.get(channel).map_or(0, Vec::len)
    }

    /// Distinct patterns subscribed here (PUBSUB NUMPAT).
    pub fn patterns(&self) -> usize {
        self.registry.read().patterns.len()
    }

    /// Channels (global, shard) and patterns with subscribers (INFO).
    pub fn counts(&self) -> (usize, usize, usize) {
        let r = self.registry.read();
        (r.channels.len(), r.shard_channels.len(), r.patterns.len())
    }
}

/// One client's subscriptions; dropping it unsubscribes from everything.
pub struct Subscriptions {
    hub: Arc<PubSub>,
    pub mailbox: Arc<Mailbox>,
    channels: HashSet<Bytes>,
    shard_channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
}

/// Which of a client's subscriptions a command names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    // In CLIENT LIST's order.
    Channel,
    Pattern,
    ShardChannel,
}

impl Kind {
    fn space(self) -> Option<Space> {
        match self {
            Kind::Channel => Some(Space::Global),
            Kind::ShardChannel => Some(Space::Shard),
            Kind::Pattern => None,
        }
    }
}

impl Subscriptions {
    pub fn new(hub: Arc<PubSub>, mailbox: &Arc<Mailbox>) -> Subscriptions {
        Subscriptions {
            hub,
            mailbox: mailbox.clone(),
            channels: HashSet::new(),
            shard_channels: HashSet::new(),
            patterns: HashSet::new(),
        }
    }

    fn set(&mut self, kind: Kind) -> &mut HashSet<Bytes> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::ShardChannel => &mut self.shard_channels,
        }
    }

    /// Subscribes; false if it already was.
    pub fn subscribe(&mut self, kind: Kind, name: &[u8]) -> bool {
        let name = Bytes::copy_from_slice(name);
        if !self.set(kind).insert(name.clone()) {
            return false;
        }
        self.hub.add(kind.space(), &name, &self.mailbox);
        self.counted(kind);
        true
    }

    /// Unsubscribes; false if it was not subscribed.
    pub fn unsubscribe(&mut self, kind: Kind, name: &[u8]) -> bool {
        if !self.set(kind).remove(name) {
            return false;
        }
        self.hub.remove(kind.space(), name, &self.mailbox);
        self.counted(kind);
        true
    }

    /// What the client is subscribed to of `kind`, sorted.
    pub fn names(&self, kind: Kind) -> Vec<Bytes> {
        let set = match kind {
            Kind::Channel => &self.channels,
            Kind::Pattern => &self.patterns,
            Kind::ShardChannel => &self.shard_channels,
        };
        let mut names: Vec<Bytes> = set.iter().cloned().collect();
        names.sort();
        names
    }

    /// The count a (un)subscribe reply carries: channels and patterns
    /// together, shard channels alone (as Redis 7.0).
    pub fn count_for(&self, kind: Kind) -> usize {
        match kind {
            Kind::ShardChannel => self.shard_channels.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }

    fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Channel => self.channels.len(),
            Kind::Pattern => self.patterns.len(),
            Kind::ShardChannel => self.shard_channels.len(),
        }
    }

    /// CLIENT LIST's counts follow.
    fn counted(&self, kind: Kind) {
        if let Some(client) = self.mailbox.client.upgrade() {
            client.subscriptions[kind as usize].store(self.len(kind), Ordering::Relaxed);
        }
    }

    /// Whether the client is in Redis's subscribed context.
    pub fn any(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty())
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for kind in [Kind::Channel, Kind::Pattern, Kind::ShardChannel] {
            for name in std::mem::take(self.set(kind)) {
                self.hub.remove(kind.space(), &name, &self.mailbox);
            }
            self.counted(kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Arc<ClientHandle> {
        let registry = crate::session::ClientRegistry::default();
        let unspecified = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        registry.register(unspecified, unspecified, 0, 10).unwrap()
    }

    /// Keeps a test's client alive for the test's length (a mailbox holds
    /// its client weakly).
    fn keep(c: Arc<ClientHandle>) -> Arc<ClientHandle> {
        std::mem::forget(c.clone());
        c
    }

    fn drained(mailbox: &Mailbox) -> Vec<u8> {
        let mut out = Reply::new();
        mailbox.drain_into(&mut out, usize::MAX);
        out.buf
    }

    #[test]
    fn a_publish_reaches_channel_and_pattern_subscribers_once_each() {
        let hub = Arc::new(PubSub::new());
        let mut a = Subscriptions::new(hub.clone(), &keep(client()).mailbox);
        let mut b = Subscriptions::new(hub.clone(), &keep(client()).mailbox);
        assert!(a.subscribe(Kind::Channel, b"news"));
        assert!(!a.subscribe(Kind::Channel, b"news"));
        assert!(b.subscribe(Kind::Pattern, b"n*"));
        assert!(b.subscribe(Kind::ShardChannel, b"news"));
        assert_eq!(hub.publish(Space::Global, b"news", b"hi"), 2);
        assert_eq!(
            drained(&a.mailbox),
            b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
        );
        assert_eq!(
            drained(&b.mailbox),
            b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
        );
        assert_eq!(hub.publish(Space::Shard, b"news", b"s"), 1);
        assert_eq!(
            drained(&b.mailbox),
            b"*3\r\n$8\r\nsmessage\r\n$4\r\nnews\r\n$1\r\ns\r\n"
        );
        assert_eq!(hub.publish(Space::Global, b"other", b"x"), 0);
        assert_eq!(hub.counts(), (1, 1, 1));
        drop(a);
        drop(b);
        assert_eq!(hub.counts(), (0, 0, 0));
        assert_eq!(hub.subscriptions.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_mailbox_past_its_hard_limit_overflows_and_closes_its_client() {
        let hub = Arc::new(PubSub::new());
        hub.set_limit(OutputBufferLimit {
            hard: 1100,
            soft: 0,
            soft_seconds: 0,
        });
        let handle = client();
        let mut s = Subscriptions::new(hub.clone(), &handle.mailbox);
        s.subscribe(Kind::Channel, b"c");
        for _ in 0..3 {
            assert_eq!(hub.publish(Space::Global, b"c", &[b'x'; 300]), 1);
        }
        assert!(!s.mailbox.overflowed.load(Ordering::Relaxed));
        hub.publish(Space::Global, b"c", &[b'x'; 300]);
        assert!(s.mailbox.overflowed.load(Ordering::Relaxed));
        assert!(handle.killed.load(Ordering::Relaxed));
        assert!(s.mailbox.is_empty());
        assert_eq!(hub.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_mailbox_over_its_soft_limit_for_its_seconds_overflows() {
        let hub = Arc::new(PubSub::new());
        hub.set_limit(OutputBufferLimit {
            hard: 0,
            soft: 100,
            soft_seconds: 0,
        });
        let s = {
            let mut s = Subscriptions::new(hub.clone(), &keep(client()).mailbox);
            s.subscribe(Kind::Channel, b"c");
            s
        };
        hub.publish(Space::Global, b"c", b"small");
        assert!(!s.mailbox.overflowed.load(Ordering::Relaxed));
        // The first crossing starts the clock.
        hub.publish(Space::Global, b"c", &[0; 200]);
        assert!(!s.mailbox.overflowed.load(Ordering::Relaxed));
        // Drained below the soft limit, the clock stops.
        s.mailbox.drain_into(&mut Reply::new(), usize::MAX);
        std::thread::sleep(std::time::Duration::from_millis(5));
        hub.publish(Space::Global, b"c", &[0; 200]);
        assert!(!s.mailbox.overflowed.load(Ordering::Relaxed));
        std::thread::sleep(std::time::Duration::from_millis(5));
        hub.publish(Space::Global, b"c", b"more");
        assert!(s.mailbox.overflowed.load(Ordering::Relaxed));
    }
}
