//! Client sessions: one client's private state, the handle the rest of the
//! node sees of it (CLIENT LIST/KILL), and the registry of live clients.
//!
//! Nothing here touches a socket: the connection layer creates a session
//! per accepted connection, the simulation creates embedded ones, and
//! commands run against either the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::cmd::Spec;

/// CLIENT SETINFO's library name and version.
#[derive(Debug, Clone, Default)]
pub struct LibInfo {
    pub name: String,
    pub version: String,
}

/// What the rest of the node can see of one client (CLIENT LIST/KILL).
pub struct ClientHandle {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub created: Instant,
    pub name: Mutex<Option<Vec<u8>>>,
    pub lib: Mutex<LibInfo>,
    pub db: AtomicUsize,
    pub resp: AtomicUsize,
    pub last_active_ms: AtomicU64,
    pub last_cmd: Mutex<&'static str>,
    pub in_multi: AtomicBool,
    /// Bytes of requests read and not yet run (CLIENT LIST `qbuf`).
    pub qbuf: AtomicUsize,
    /// Bytes of replies not yet written (`omem`).
    pub omem: AtomicUsize,
    /// What the query and reply buffers hold allocated (`tot-mem`).
    pub buffers: AtomicUsize,
    pub kill: Notify,
    pub killed: AtomicBool,
    /// Channels, patterns and shard channels subscribed to (`sub=`,
    /// `psub=`, `ssub=`).
    pub subscriptions: [AtomicUsize; 3],
    /// Where its pub/sub messages and invalidations (its own, or those
    /// other clients redirect to it) wait for its connection.
    pub mailbox: Arc<crate::pubsub::Mailbox>,
    /// CLIENT TRACKING's redirect (`redir=`): -1 when not tracking.
    pub redirect: std::sync::atomic::AtomicI64,
    /// Waiting in a blocking command (CLIENT LIST's `b` flag; what CLIENT
    /// UNBLOCK may end).
    pub blocked: AtomicBool,
    /// CLIENT UNBLOCK's request: 0 none, [`UNBLOCK_TIMEOUT`] or
    /// [`UNBLOCK_ERROR`]; `unblock` wakes the blocked command to read it.
    pub unblock_as: std::sync::atomic::AtomicU8,
    pub unblock: Notify,
}

/// CLIENT UNBLOCK's reasons: answer as at the timeout, or with an error.
pub const UNBLOCK_TIMEOUT: u8 = 1;
pub const UNBLOCK_ERROR: u8 = 2;

impl ClientHandle {
    fn new(id: u64, addr: SocketAddr, laddr: SocketAddr, now_ms: u64) -> Arc<ClientHandle> {
        Arc::new_cyclic(|me| ClientHandle {
            id,
            addr,
            laddr,
            created: Instant::now(),
            name: Mutex::new(None),
            lib: Mutex::new(LibInfo::default()),
            db: AtomicUsize::new(0),
            resp: AtomicUsize::new(2),
            last_active_ms: AtomicU64::new(now_ms),
            last_cmd: Mutex::new("NULL"),
            in_multi: AtomicBool::new(false),
            qbuf: AtomicUsize::new(0),
            omem: AtomicUsize::new(0),
            buffers: AtomicUsize::new(0),
            kill: Notify::new(),
            killed: AtomicBool::new(false),
            subscriptions: Default::default(),
            mailbox: Arc::new(crate::pubsub::Mailbox::new(me.clone())),
            redirect: std::sync::atomic::AtomicI64::new(-1),
            blocked: AtomicBool::new(false),
            unblock_as: std::sync::atomic::AtomicU8::new(0),
            unblock: Notify::new(),
        })
    }

    /// Asks the client's connection to close after its current batch.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kill.notify_one();
    }
}

/// The live clients, by id; ids are never reused.
pub struct ClientRegistry {
    clients: Mutex<BTreeMap<u64, Arc<ClientHandle>>>,
    next_id: AtomicU64,
}

impl Default for ClientRegistry {
    fn default() -> Self {
        ClientRegistry {
            clients: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
        }
    }
}

impl ClientRegistry {
    /// Registers a new client unless `max` are already connected.
    pub fn register(
        &self,
        addr: SocketAddr,
        laddr: SocketAddr,
        now_ms: u64,
        max: usize,
    ) -> Option<Arc<ClientHandle>> {
        let mut clients = self.clients.lock();
        if clients.len() >= max {
            return None;
        }
        let handle = self.handle(addr, laddr, now_ms);
        clients.insert(handle.id, handle.clone());
        Some(handle)
    }

    /// A handle with a fresh id that is not listed (embedded sessions).
    fn handle(&self, addr: SocketAddr, laddr: SocketAddr, now_ms: u64) -> Arc<ClientHandle> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        ClientHandle::new(id, addr, laddr, now_ms)
    }

    pub fn remove(&self, id: u64) {
        self.clients.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live clients, in id order (copied out: no lock held after).
    pub fn list(&self) -> Vec<Arc<ClientHandle>> {
        self.clients.lock().values().cloned().collect()
    }
}

/// A command queued between MULTI and EXEC.
pub struct Queued {
    pub spec: &'static Spec,
    pub args: Vec<Vec<u8>>,
}

/// A key under WATCH and what it held then.
pub struct Watched {
    pub db: usize,
    pub key: Vec<u8>,
    pub state: Option<chorus_crdt::KeyState>,
    pub visible: bool,
}

/// One client's private state.
pub struct Session {
    pub handle: Arc<ClientHandle>,
    pub db: usize,
    pub authed: bool,
    pub multi: Option<Vec<Queued>>,
    /// A command inside MULTI was refused: EXEC must abort.
    pub multi_dirty: bool,
    pub watched: Vec<Watched>,
    /// The watched keys' registrations: flagged by any change to one.
    pub watch_set: Option<crate::watches::WatchSet>,
    /// Close once the pending replies are written.
    pub close: bool,
    /// DEBUG SLEEP: wait this long before running the rest of the pipeline.
    pub sleep: Option<Duration>,
    /// A command CLIENT PAUSE holds: it runs once the pause ends, before
    /// the rest of the pipeline.
    pub postponed: Option<Vec<Vec<u8>>>,
    /// WAIT: its reply comes once enough peers acknowledged.
    pub wait: Option<crate::cmd::replication::PendingWait>,
    /// SAVE: its reply comes once this store's fold is durable.
    pub save: Option<std::sync::Arc<crate::persist::Persistence>>,
    /// A write took a flash node's memory past its ceiling while a fold
    /// is due: the connection waits for room before its next command
    /// (`crate::flash::ColdTier::wait_for_room`).
    pub hold_for_room: bool,
    /// A blocking command found nothing: the connection waits for its keys.
    pub blocked: Option<crate::cmd::blocking::Blocked>,
    /// Running EXEC's queue, where a blocking command must not block.
    pub in_exec: bool,
    /// Running a blocked command again after a wake: a key now of another
    /// type keeps it waiting instead of failing it (as Redis 7.0).
    pub retrying_block: bool,
    /// CLIENT REPLY OFF: no reply is sent until CLIENT REPLY ON.
    pub reply_off: bool,
    /// CLIENT REPLY SKIP: the next command's reply is not sent.
    pub reply_skip_next: bool,
    /// The command running now sends no reply (CLIENT REPLY OFF or SKIP):
    /// what it writes, now or when it stops waiting, is dropped.
    pub muted: bool,
    /// Channels and patterns subscribed to, with the mailbox their
    /// messages wait in (created by the first subscribe).
    pub subs: Option<crate::pubsub::Subscriptions>,
    /// CLIENT TRACKING, while on.
    pub tracking: Option<crate::tracking::TrackingGuard>,
    /// CLIENT CACHING's word for the next command (OPTIN, OPTOUT).
    pub caching: Option<bool>,
    /// The command this client ran last: a pipeline mostly repeats one,
    /// and a comparison of its name costs less than a lookup.
    pub last_spec: Option<&'static crate::cmd::Spec>,
}

impl Session {
    /// Whether the client is in Redis's subscribed context.
    pub fn subscribed(&self) -> bool {
        self.subs.as_ref().is_some_and(|s| s.any())
    }
}

impl Session {
    /// The session of a registered client; it must AUTH first when
    /// `needs_auth`.
    pub fn new(handle: Arc<ClientHandle>, needs_auth: bool) -> Session {
        Session {
            handle,
            db: 0,
            authed: !needs_auth,
            multi: None,
            multi_dirty: false,
            watched: Vec::new(),
            watch_set: None,
            close: false,
            sleep: None,
            postponed: None,
            wait: None,
            save: None,
            hold_for_room: false,
            blocked: None,
            in_exec: false,
            retrying_block: false,
            reply_off: false,
            reply_skip_next: false,
            muted: false,
            subs: None,
            tracking: None,
            caching: None,
            last_spec: None,
        }
    }

    /// A client inside the process, with no connection (the simulation
    /// drives commands with it). Authenticated, and not listed by CLIENT LIST.
    pub fn embedded(clients: &ClientRegistry) -> Session {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Session::new(clients.handle(unspecified, unspecified, 0), false)
    }
}
