//! Client-side caching (Redis 6's CLIENT TRACKING): who to tell when a key
//! changes, whether a local client or a peer changed it.
//!
//! Default mode remembers, per key, the clients that read it (a key is told
//! once, then forgotten until read again); BCAST mode tells a client of
//! every change under its prefixes. An invalidation goes to the mailbox of
//! the client (RESP3 push) or of its REDIRECT target (RESP2: a message on
//! `__redis__:invalidate`), as pub/sub messages do. Keys are remembered
//! without their database, as Redis does. The table holds at most
//! `tracking-table-max-keys` keys: past it, keys are forgotten and their
//! readers told, so a client's cache never outlives what is remembered.
//! A node where no client tracks pays one atomic load per change.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::config::OutputBufferLimit;
use crate::pubsub::{Mailbox, PubSub};

thread_local! {
    /// The client whose command runs on this thread now (0: none, as for
    /// replication and background work): NOLOOP spares it.
    static CURRENT_CLIENT: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` as client `id`'s command (see NOLOOP).
pub fn as_client<R>(id: u64, f: impl FnOnce() -> R) -> R {
    /// Puts the previous client back however `f` ends.
    struct Restore(u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT_CLIENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT_CLIENT.with(|c| c.replace(id)));
    f()
}

/// CLIENT TRACKING's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub bcast: bool,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
    /// BCAST's prefixes (none: every key).
    pub prefixes: Vec<Bytes>,
    /// REDIRECT's client id (0: the client itself).
    pub redirect: u64,
}

/// One tracking client, as the table sees it.
pub struct Tracker {
    id: u64,
    options: Options,
    own: Weak<Mailbox>,
    /// REDIRECT's target, if any.
    target: Option<Weak<Mailbox>>,
    /// The redirect target went away.
    pub broken: AtomicBool,
}

impl Tracker {
    /// Queues an invalidation of `key` (`None`: everything, after a flush)
    /// where this client reads them.
    fn tell(&self, key: Option<&Bytes>, limit: OutputBufferLimit) {
        match &self.target {
            None => {
                if let Some(own) = self.own.upgrade() {
                    own.invalidate(key.cloned(), false, limit);
                }
            }
            Some(target) => match target.upgrade() {
                Some(t) => t.invalidate(key.cloned(), true, limit),
                // Said at every invalidation it misses, as Redis does.
                None => {
                    self.broken.store(true, Ordering::Relaxed);
                    if let Some(own) = self.own.upgrade() {
                        own.redirect_broken(self.options.redirect, limit);
                    }
                }
            },
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Whether this client's read is remembered, given CLIENT CACHING's
    /// word for it.
    pub fn remembers(&self, caching: Option<bool>) -> bool {
        let o = &self.options;
        !o.bcast
            && match (o.optin, o.optout) {
                (true, _) => caching == Some(true),
                (_, true) => caching != Some(false),
                _ => true,
            }
    }
}

/// The node's table of tracked keys and tracking clients.
pub struct Invalidations {
    /// Whose output limit (`pubsub`) bounds invalidations waiting too.
    pubsub: Arc<PubSub>,
    /// Tracking clients: 0 lets a change skip every lock.
    active: AtomicUsize,
    broadcasting: AtomicUsize,
    clients: RwLock<HashMap<u64, Arc<Tracker>>>,
    table: Mutex<Table>,
    /// (key, client) pairs remembered.
    items: AtomicUsize,
    /// `tracking-table-max-keys` (0: no bound).
    max_keys: AtomicUsize,
}

/// The remembered keys, and the order they came in: past the bound the
/// oldest go first. `order` may name keys already told and gone (skipped,
/// and compacted once it is twice the table).
#[derive(Default)]
struct Table {
    readers: HashMap<Bytes, SmallVec<[u64; 2]>>,
    order: std::collections::VecDeque<Bytes>,
}

impl Invalidations {
    pub fn new(max_keys: usize, pubsub: Arc<PubSub>) -> Invalidations {
        Invalidations {
            pubsub,
            active: AtomicUsize::new(0),
            broadcasting: AtomicUsize::new(0),
            clients: RwLock::new(HashMap::new()),
            table: Mutex::new(Table::default()),
            items: AtomicUsize::new(0),
            max_keys: AtomicUsize::new(max_keys),
        }
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }

    pub fn set_max_keys(&self, max: usize) {
        self.max_keys.store(max, Ordering::Relaxed);
    }

    /// Starts tracking for client `id` (or changes its options).
    pub fn enable(
        self: &Arc<Self>,
        id: u64,
        options: Options,
        own: &Arc<Mailbox>,
        target: Option<&Arc<Mailbox>>,
    ) -> TrackingGuard {
        let bcast = options.bcast;
        let tracker = Arc::new(Tracker {
            id,
            options,
            own: Arc::downgrade(own),
            target: target.map(Arc::downgrade),
            broken: AtomicBool::new(false),
        });
        let previous = self.clients.write().insert(id, tracker.clone());
        match previous {
            Some(p) => {
                if p.options.bcast {
                    self.broadcasting.fetch_sub(1, Ordering::Relaxed);
                }
            }
            None => {
                self.active.fetch_add(1, Ordering::Release);
            }
        }
        if bcast {
            self.broadcasting.fetch_add(1, Ordering::Relaxed);
        }
        TrackingGuard {
            table: self.clone(),
            tracker,
        }
    }

    fn disable(&self, id: u64) {
        if let Some(t) = self.clients.write().remove(&id) {
            self.active.fetch_sub(1, Ordering::Release);
            if t.options.bcast {
                self.broadcasting.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // Its entries in the table go lazily: a change finds no client.
    }

    /// Remembers that client `id` read `keys`. Past the bound, the
    /// oldest keys are forgotten first, and their readers told.
    pub fn remember<'k>(&self, id: u64, keys: impl Iterator<Item = &'k [u8]>) {
        let mut evicted = Vec::new();
        {
            let mut table = self.table.lock();
            let table = &mut *table;
            for key in keys {
                match table.readers.get_mut(key) {
                    Some(readers) => {
                        if !readers.contains(&id) {
                            readers.push(id);
                            self.items.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        let key = Bytes::copy_from_slice(key);
                        table
                            .readers
                            .insert(key.clone(), SmallVec::from_slice(&[id]));
                        table.order.push_back(key);
                        self.items.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // The oldest first. A key this read named may go too (a read of
            // more keys than the bound): its reader is told after the reply
            // it came in, so it never caches it.
            let max = self.max_keys.load(Ordering::Relaxed);
            while max > 0 && table.readers.len() > max {
                let Some(key) = table.order.pop_front() else {
                    break;
                };
                if let Some(readers) = table.readers.remove(&key) {
                    self.items.fetch_sub(readers.len(), Ordering::Relaxed);
                    evicted.push((key, readers));
                }
            }
            if table.order.len() > 2 * table.readers.len() + 1024 {
                let readers = &table.readers;
                table.order.retain(|k| readers.contains_key(k));
            }
        }
        for (key, readers) in evicted {
            self.tell_readers(&key, &readers, 0);
        }
    }

    /// Tells the clients that should know that `key` changed.
    pub fn changed(&self, key: &[u8]) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        let writer = CURRENT_CLIENT.with(|c| c.get());
        let readers = self.table.lock().readers.remove_entry(key);
        if let Some((key, readers)) = readers {
            self.items.fetch_sub(readers.len(), Ordering::Relaxed);
            self.tell_readers(&key, &readers, writer);
        }
        if self.broadcasting.load(Ordering::Relaxed) > 0 {
            let mut shared: Option<Bytes> = None;
            for t in self.clients.read().values() {
                let o = &t.options;
                let told = o.bcast
                    && !(o.noloop && t.id == writer)
                    && o.prefixes.iter().any(|p| key.starts_with(p));
                if told {
                    let key = shared.get_or_insert_with(|| Bytes::copy_from_slice(key));
                    t.tell(Some(key), self.pubsub.limit());
                }
            }
        }
    }

    fn tell_readers(&self, key: &Bytes, readers: &[u64], writer: u64) {
        let clients = self.clients.read();
        for id in readers {
            let Some(t) = clients.get(id) else { continue };
            if t.options.bcast || (t.options.noloop && *id == writer) {
                continue;
            }
            t.tell(Some(key), self.pubsub.limit());
        }
    }

    /// Tells every tracking client to drop everything (a flush, SWAPDB),
    /// and forgets every key.
    pub fn changed_all(&self) {
        if self.active.load(Ordering::Acquire) == 0 {
            return;
        }
        {
            let mut table = self.table.lock();
            table.readers.clear();
            table.order.clear();
            self.items.store(0, Ordering::Relaxed);
        }
        for t in self.clients.read().values() {
            t.tell(None, self.pubsub.limit());
        }
    }

    /// (tracking clients, keys, items, prefixes) for INFO.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let clients = self.clients.read();
        let prefixes = clients.values().map(|t| t.options.prefixes.len()).sum();
        (
            clients.len(),
            self.table.lock().readers.len(),
            self.items.load(Ordering::Relaxed),
            prefixes,
        )
    }
}

/// A client's tracking; dropping it (CLIENT TRACKING OFF, RESET, the
/// client gone) stops it.
pub struct TrackingGuard {
    table: Arc<Invalidations>,
    pub tracker: Arc<Tracker>,
}

impl Drop for TrackingGuard {
    fn drop(&mut self) {
        // Only if it is still this guard's: CLIENT TRACKING ON again
        // replaced the tracker before this guard went.
        let mine = {
            let clients = self.table.clients.read();
            clients
                .get(&self.tracker.id)
                .is_some_and(|t| Arc::ptr_eq(t, &self.tracker))
        };
        if mine {
            self.table.disable(self.tracker.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::Reply;
    use crate::session::{ClientHandle, ClientRegistry};

    fn client(registry: &ClientRegistry) -> Arc<ClientHandle> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let c = registry.register(addr, addr, 0, 100).unwrap();
        c.resp.store(3, Ordering::Relaxed);
        c
    }

    fn pushes(c: &Arc<ClientHandle>) -> String {
        let mut out = Reply::new();
        out.resp3 = true;
        c.mailbox.drain_into(&mut out, usize::MAX);
        String::from_utf8_lossy(&out.buf).into_owned()
    }

    #[test]
    fn a_reader_is_told_once_per_read_and_noloop_spares_the_writer() {
        let registry = ClientRegistry::default();
        let table = Arc::new(Invalidations::new(0, Arc::new(PubSub::new())));
        let (a, b) = (client(&registry), client(&registry));
        let _ga = table.enable(a.id, Options::default(), &a.mailbox, None);
        let noloop = Options {
            noloop: true,
            ..Options::default()
        };
        let _gb = table.enable(b.id, noloop, &b.mailbox, None);
        table.remember(a.id, [&b"k"[..]].into_iter());
        table.remember(b.id, [&b"k"[..]].into_iter());
        as_client(b.id, || table.changed(b"k"));
        assert_eq!(pushes(&a), ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n");
        assert_eq!(pushes(&b), "", "NOLOOP: its own write");
        table.changed(b"k");
        assert_eq!(pushes(&a), "", "told once until read again");
        assert_eq!(table.counts(), (2, 0, 0, 0));
    }

    #[test]
    fn bcast_tells_every_change_under_a_prefix_and_a_full_table_forgets_with_a_word() {
        let registry = ClientRegistry::default();
        let table = Arc::new(Invalidations::new(2, Arc::new(PubSub::new())));
        let (a, b) = (client(&registry), client(&registry));
        let bcast = Options {
            bcast: true,
            prefixes: vec![Bytes::from_static(b"user:")],
            ..Options::default()
        };
        let _ga = table.enable(a.id, bcast, &a.mailbox, None);
        table.changed(b"user:1");
        table.changed(b"order:1");
        assert_eq!(
            pushes(&a),
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n$6\r\nuser:1\r\n"
        );
        let _gb = table.enable(b.id, Options::default(), &b.mailbox, None);
        table.remember(b.id, [&b"x"[..], b"y", b"z"].into_iter());
        assert_eq!(table.counts().1, 2);
        assert_eq!(pushes(&b).matches("invalidate").count(), 1);
        table.changed_all();
        assert!(pushes(&b).ends_with("invalidate\r\n_\r\n"));
        assert_eq!(table.counts().1, 0);
    }

    #[test]
    fn a_redirect_to_a_client_that_left_is_reported_at_each_invalidation() {
        let registry = ClientRegistry::default();
        let table = Arc::new(Invalidations::new(0, Arc::new(PubSub::new())));
        let a = client(&registry);
        let target = client(&registry);
        let redirect = Options {
            redirect: target.id,
            ..Options::default()
        };
        let _g = table.enable(a.id, redirect, &a.mailbox, Some(&target.mailbox));
        table.remember(a.id, [&b"k"[..]].into_iter());
        table.changed(b"k");
        assert_eq!(
            pushes(&target),
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
        );
        let id = target.id;
        registry.remove(id);
        drop(target);
        for _ in 0..2 {
            table.remember(a.id, [&b"k"[..]].into_iter());
            table.changed(b"k");
        }
        let broken = format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n");
        assert_eq!(pushes(&a), broken.repeat(2));
    }
}
