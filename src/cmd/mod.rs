//! The command layer: a declarative table, one file per command family (as
//! Redis's `t_*.c`), and the dispatcher that runs a command for a session.
//!
//! As in Redis, the table (name, arity, flags, key positions, syntax) lets
//! the dispatcher, not each handler, check arity and authentication, queue
//! commands inside MULTI, and lock exactly the shards a command's keys live
//! in before the handler runs. Commands know the [`Server`] (and its [`Node`])
//! and the client's [`Session`], never a socket.

mod args;
mod bits;
pub mod blocking;
mod client;
mod command;
mod config;
mod connection;
mod crdt;
mod error;
mod expire;
mod hashes;
mod keys;
mod lists;
mod multi;
mod pubsub;
pub mod replication;
mod server;
mod sets;
mod sort;
mod strings;
mod zsets;

pub use args::Args;
pub use error::Error;
pub use server::REDIS_COMPAT_VERSION;

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

use chorus_crdt::{Coll, KeyState, KeyType, Kind, Read, Stamp};
use smallvec::SmallVec;

use crate::keyspace::{Db, Keyspace, Locked, Writer};
use crate::node::Node;
use crate::resp::Reply;
use crate::server::Server;
use crate::session::{Queued, Session};

pub type CmdResult = Result<(), Error>;

pub type Handler = fn(&mut Exec<'_, '_>, &[&[u8]]) -> CmdResult;

/// A property of a command, as COMMAND INFO reports some of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Flag {
    Write,
    ReadOnly,
    Admin,
    /// Allowed before AUTH.
    NoAuth,
    /// Runs at once inside MULTI instead of being queued.
    NoQueue,
    Fast,
    /// Not allowed inside MULTI at all.
    NoMulti,
    /// May grow memory: refused while over `maxmemory` (Redis's
    /// `denyoom`).
    DenyOom,
    /// Looks at its keys without counting as an access: their LRU/LFU
    /// clocks stay (Redis's `LOOKUP_NOTOUCH`: OBJECT, TYPE, EXISTS, TTL).
    NoTouch,
}

/// A set of [`Flag`]s, built in the (const) command table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u16);

impl Flags {
    pub const fn of(flags: &[Flag]) -> Flags {
        let mut bits = 0u16;
        let mut i = 0;
        while i < flags.len() {
            bits |= 1 << flags[i] as u8;
            i += 1;
        }
        Flags(bits)
    }

    pub const fn has(self, flag: Flag) -> bool {
        self.0 & (1 << flag as u8) != 0
    }
}

/// Which keys a command names, and so which shards the dispatcher locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    None,
    /// Redis's (first, last, step): keys at `first`, `first + step`, ... up to
    /// `last`, which counts from the end when negative.
    At {
        first: u8,
        last: i8,
        step: u8,
    },
    /// Keys an argument counts (Redis's `numkeys`): `fixed` keys at 1 up to
    /// `fixed` (ZUNIONSTORE's destination), then the count at `count_at`
    /// and that many keys after it; what follows them are options, not
    /// keys (COMMAND INFO's `movablekeys`).
    Counted {
        fixed: u8,
        count_at: u8,
    },
    /// Whole-keyspace commands (KEYS, SCAN, FLUSHALL, ...): every shard.
    All,
    /// EXEC: the shards of the commands it queued and the keys it watches.
    Queued,
}

impl Keys {
    pub const fn at(first: u8, last: i8, step: u8) -> Keys {
        Keys::At { first, last, step }
    }

    /// Redis's (first, last, step) triple, as COMMAND INFO reports it (of
    /// counted keys, only the fixed ones, as Redis).
    pub fn triple(&self) -> (i64, i64, i64) {
        match *self {
            Keys::At { first, last, step } => (first as i64, last as i64, step as i64),
            Keys::Counted { fixed, .. } if fixed > 0 => (1, fixed as i64, 1),
            _ => (0, 0, 0),
        }
    }

    /// How many keys a call's count argument names, if it is a count of
    /// at least one that the call's arguments hold (`None` for a call
    /// Redis's COMMAND GETKEYS refuses).
    pub fn counted(&self, args: &[&[u8]]) -> Option<usize> {
        let Keys::Counted { count_at, .. } = *self else {
            return None;
        };
        let n: usize = std::str::from_utf8(args.get(count_at as usize)?)
            .ok()?
            .parse()
            .ok()?;
        (n > 0 && (count_at as usize).checked_add(n)? < args.len()).then_some(n)
    }
}

/// One row of the command table.
pub struct Spec {
    pub name: &'static str,
    /// Redis arity: exact count if positive, minimum count if negative
    /// (both including the command name).
    pub arity: i32,
    pub flags: Flags,
    pub keys: Keys,
    pub group: &'static str,
    /// The arguments after the name in Redis's notation (`[...]` optional,
    /// `...` repeatable), for COMMAND DOCS and redis-cli's hints.
    pub syntax: &'static str,
    pub summary: &'static str,
    pub run: Handler,
}

impl Spec {
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i32;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Positions of the keys in a call with arguments `args` (the name
    /// first). A count that does not name as many keys as the call holds
    /// takes every argument after it (the command refuses the call, under
    /// the locks of all it could have meant).
    pub fn key_positions(&self, args: &[&[u8]]) -> impl Iterator<Item = usize> {
        let argc = args.len();
        let counted = match self.keys {
            Keys::Counted { count_at, .. } => {
                let first = count_at as usize + 1;
                let end = self.keys.counted(args).map_or(argc, |n| first + n);
                first.min(argc)..end
            }
            _ => 0..0,
        };
        let (start, end, step) = match self.keys {
            Keys::At { first, last, step } => {
                let last = if last < 0 {
                    argc as i64 + last as i64
                } else {
                    (last as i64).min(argc as i64 - 1)
                };
                if first > 0 && step > 0 && last >= first as i64 {
                    (first as usize, last as usize + 1, step as usize)
                } else {
                    (0, 0, 1)
                }
            }
            Keys::Counted { fixed, .. } => (1, (fixed as usize + 1).min(argc), 1),
            _ => (0, 0, 1),
        };
        (start..end).step_by(step).chain(counted)
    }

    pub fn has(&self, flag: Flag) -> bool {
        self.flags.has(flag)
    }
}

pub fn table() -> impl Iterator<Item = &'static Spec> {
    strings::COMMANDS
        .iter()
        .chain(bits::COMMANDS)
        .chain(keys::COMMANDS)
        .chain(hashes::COMMANDS)
        .chain(lists::COMMANDS)
        .chain(sets::COMMANDS)
        .chain(zsets::COMMANDS)
        .chain(sort::COMMANDS)
        .chain(expire::COMMANDS)
        .chain(connection::COMMANDS)
        .chain(client::COMMANDS)
        .chain(config::COMMANDS)
        .chain(command::COMMANDS)
        .chain(server::COMMANDS)
        .chain(multi::COMMANDS)
        .chain(pubsub::COMMANDS)
        .chain(replication::COMMANDS)
        .chain(crdt::COMMANDS)
}

static BY_NAME: LazyLock<hashbrown::HashMap<&'static str, &'static Spec>> =
    LazyLock::new(|| table().map(|s| (s.name, s)).collect());

/// Finds a command by name, ignoring ASCII case, without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    let mut lower = [0u8; 32];
    if name.len() > lower.len() {
        return None;
    }
    for (d, s) in lower.iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    let name = std::str::from_utf8(&lower[..name.len()]).ok()?;
    BY_NAME.get(name).copied()
}

/// Whether a command writes or sends something to the peers, which a
/// CLIENT PAUSE WRITE holds (Redis's `may-replicate`): a write, PUBLISH,
/// WAIT, or an EXEC with a write queued.
fn may_replicate(spec: &Spec, session: &Session) -> bool {
    let one =
        |spec: &Spec| spec.has(Flag::Write) || matches!(spec.name, "publish" | "spublish" | "wait");
    one(spec)
        || (spec.keys == Keys::Queued
            && session
                .multi
                .as_ref()
                .is_some_and(|q| q.iter().any(|c| one(c.spec))))
}

/// Adds the shards of a command's keys to `into`.
pub fn shards_for(ks: &Keyspace, spec: &Spec, args: &[&[u8]], into: &mut SmallVec<[usize; 4]>) {
    for i in spec.key_positions(args) {
        if let Some(key) = args.get(i) {
            into.push(ks.shard_of(key));
        }
    }
}

/// Runs one command for `session`: looks it up, checks arity and
/// authentication, queues it inside MULTI, locks the shards its keys live in
/// and runs it. Returns its name for CLIENT LIST's `cmd=`.
pub fn dispatch(
    server: &Server,
    session: &mut Session,
    out: &mut Reply,
    args: &[&[u8]],
    now_ms: u64,
) -> Option<&'static str> {
    let spec = match session.last_spec {
        Some(last) if last.name.as_bytes().eq_ignore_ascii_case(args[0]) => last,
        _ => {
            let Some(spec) = lookup(args[0]) else {
                if session.multi.is_some() {
                    session.multi_dirty = true;
                }
                reply_error(server, out, &error::unknown_command(args));
                return None;
            };
            session.last_spec = Some(spec);
            spec
        }
    };
    if let Err(e) = admit(session, out.resp3, spec, args) {
        if spec.keys == Keys::Queued && session.multi.is_some() {
            // EXEC refused (its arity): as Redis, the transaction is
            // discarded, saying why.
            multi::discard_session(session);
            let text = e.text();
            let why = format!(
                "EXECABORT Transaction discarded because of: {}",
                text.strip_prefix("ERR ").unwrap_or(&text)
            );
            reply_error(server, out, &why);
            return Some(spec.name);
        }
        if session.multi.is_some() {
            session.multi_dirty = true;
        }
        reply_error(server, out, &e.text());
        return Some(spec.name);
    }
    if denied_for_memory(server, session, spec, now_ms) {
        if spec.keys == Keys::Queued {
            // EXEC: as Redis 7, the transaction is discarded, saying why.
            multi::discard_session(session);
            let why = format!(
                "EXECABORT Transaction discarded because of: {}",
                Error::Oom.text()
            );
            reply_error(server, out, &why);
        } else {
            if session.multi.is_some() {
                session.multi_dirty = true;
            }
            reply_error(server, out, &Error::Oom.text());
        }
        return Some(spec.name);
    }
    // (QUIT goes at once, as Redis answers it before any pause.)
    if server.pause.holds(|| may_replicate(spec, session)) && spec.name != "quit" {
        session.postponed = Some(args.iter().map(|a| a.to_vec()).collect());
        return Some(spec.name);
    }
    if let Some(queue) = &mut session.multi {
        if !spec.has(Flag::NoQueue) {
            queue.push(Queued {
                spec,
                args: args.iter().map(|a| a.to_vec()).collect(),
            });
            out.simple("QUEUED");
            return Some(spec.name);
        }
    }
    let node = &*server.node;
    let ks = &*node.ks;
    if !spec.has(Flag::Fast) && !spec.has(Flag::Write) {
        // A read that may take long (KEYS, SORT, SUNION, INFO...): writes
        // staged before it go out first (see `replication::stage`).
        ks.hand_over_batch();
    }
    let locked = match spec.keys {
        Keys::None => Locked::empty(),
        Keys::All => ks.lock_all(),
        Keys::Queued => multi::lock_queued(ks, session),
        Keys::At {
            first: 1,
            last: 1,
            step: 1,
        } if args.len() > 1 => ks.lock_key(args[1]),
        Keys::At { .. } | Keys::Counted { .. } => {
            let mut shards = SmallVec::new();
            shards_for(ks, spec, args, &mut shards);
            ks.lock(shards)
        }
    };
    let mut x = Exec {
        server,
        node,
        ks,
        session,
        out,
        locked,
        now_ms,
    };
    x.touch_named_keys(spec, args);
    // As Redis: CLIENT CACHING's word lasts until a command other than
    // CLIENT, and through a transaction (MULTI itself included) to its
    // EXEC.
    let caching = match x.session.caching {
        Some(_) if spec.name == "client" || spec.name == "multi" || x.session.multi.is_some() => {
            x.session.caching
        }
        _ => x.session.caching.take(),
    };
    let client = x.session.handle.id;
    let first_key = spec.key_positions(args).next().map(|i| args[i]);
    let db = x.session.db;
    let ran = crate::notify::as_command(ks, spec.name, first_key, db, || {
        crate::tracking::as_client(client, || (spec.run)(&mut x, args))
    });
    match ran {
        Ok(()) => x.track_reads(spec, args, caching),
        Err(e) => reply_error(server, x.out, &e.text()),
    }
    Some(spec.name)
}

/// Commands that read only whether their keys exist and when they expire:
/// they leave cold keys in the flash tier (see `Exec::visible_in_index`).
const INDEX_ONLY: &[&str] = &["exists", "ttl", "pttl", "expiretime", "pexpiretime", "type"];

/// Writes an error reply and counts it (INFO errorstats).
pub fn reply_error(server: &Server, out: &mut Reply, msg: &str) {
    server.stats.errors.record(msg);
    out.error(msg);
}

/// Whether a command that may grow memory (or an EXEC of one) must be
/// refused: over `maxmemory`, after eviction had its chance (it runs here,
/// before the command takes its shard locks, since it takes others).
fn denied_for_memory(server: &Server, session: &mut Session, spec: &Spec, now_ms: u64) -> bool {
    let ks = &server.node.ks;
    if ks.limits.maxmemory() == 0 {
        return false;
    }
    // As Redis 7: inside MULTI every command that would be queued is
    // refused (a queue grows memory without bound), and EXEC is when it
    // holds one that may grow memory.
    let grows = spec.has(Flag::DenyOom)
        || (session.multi.is_some() && !spec.has(Flag::NoQueue))
        || (spec.keys == Keys::Queued
            && session
                .multi
                .as_ref()
                .is_some_and(|q| q.iter().any(|c| c.spec.has(Flag::DenyOom))));
    if !grows {
        return false;
    }
    let node = &server.node;
    if crate::evict::make_room(ks, || node.data_memory(), node.repl.is_some(), now_ms).is_err() {
        return true;
    }
    // The write goes ahead (a few over the ceiling are its slack), and
    // the client waits after it.
    if let Some(tier) = &ks.cold {
        session.hold_for_room = tier.holds_writes(|| node.data_memory(), ks.limits.maxmemory());
    }
    false
}

/// What the dispatcher checks before a command runs or is queued.
fn admit(session: &Session, resp3: bool, spec: &Spec, args: &[&[u8]]) -> CmdResult {
    if !spec.arity_ok(args.len()) {
        return Err(Error::Arity(spec.name.into()));
    }
    if !session.authed && !spec.has(Flag::NoAuth) {
        return Err(Error::NoAuth);
    }
    if !resp3 && session.subscribed() && !pubsub::allowed_while_subscribed(spec.name) {
        return Err(Error::err(format!("Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", full_name(spec, args))));
    }
    if session.multi.is_some() && !spec.has(Flag::NoQueue) && spec.has(Flag::NoMulti) {
        return Err(Error::NotInMulti(spec.name));
    }
    Ok(())
}

/// A command's name as Redis 7 reports it in errors: `client|list` for a
/// container command's subcommand.
fn full_name(spec: &Spec, args: &[&[u8]]) -> String {
    const CONTAINERS: &[&str] = &[
        "client",
        "config",
        "command",
        "object",
        "memory",
        "pubsub",
        "debug",
        "crdt.conflicts",
    ];
    match args.get(1) {
        Some(sub) if CONTAINERS.contains(&spec.name) => format!(
            "{}|{}",
            spec.name,
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        ),
        _ => spec.name.to_string(),
    }
}

/// Everything a command may touch while it runs.
pub struct Exec<'s, 'c> {
    pub server: &'s Server,
    pub node: &'s Node,
    pub ks: &'s Keyspace,
    pub session: &'c mut Session,
    pub out: &'c mut Reply,
    pub locked: Locked<'s>,
    pub now_ms: u64,
}

impl<'s> Exec<'s, '_> {
    /// The current database's part of the shard holding `key`.
    /// Before a command runs, each key it names is touched: its access
    /// clock moves (when an LRU or LFU `maxmemory-policy` is on), and, as
    /// Redis's lazy expiry, a key whose time has passed is deleted and the
    /// delete replicated. A read that answered "gone" thus made the delete
    /// that keeps it gone: a write a peer made before the expiry, arriving
    /// later, loses to it instead of bringing the key back.
    pub fn touch_named_keys(&mut self, spec: &Spec, args: &[&[u8]]) {
        let db = self.session.db;
        let clock = self.ks.limits.clock();
        let cold = self.ks.cold_keys() > 0;
        if clock.is_none() && !cold && self.ks.with_expiry.load(Ordering::Relaxed) == 0 {
            return;
        }
        // What the index answers alone needs no disk read.
        let warms = cold && !INDEX_ONLY.contains(&spec.name);
        let acked = self.ks.gc_acked();
        for i in spec.key_positions(args) {
            let Some(key) = args.get(i) else { continue };
            let Ok(shard) = self.locked.shard_for(key, |k| self.ks.shard_of(k)) else {
                continue;
            };
            let d = &mut shard.dbs[db];
            let warm = warms && d.cold_keys > 0;
            if d.expiring.is_empty() && clock.is_none() && !warm {
                continue;
            }
            let Some(entry) = d.entry_warmed(key, acked, warm) else {
                continue;
            };
            // (A cold key's word holds its type until it is warmed.)
            if let Some(c) = clock.filter(|_| !spec.has(Flag::NoTouch) && !entry.key.is_cold()) {
                entry.set_clock(c.touch(entry.clock(), self.now_ms));
            }
            if entry.state.is_expired(self.now_ms) && entry.state.exists(0) {
                let _ = self
                    .ks
                    .expire_if_due(&mut self.locked, db, key, self.now_ms);
            }
        }
    }

    /// After a read-only command of a tracking client: its keys are
    /// remembered, to tell it when they change (CLIENT TRACKING).
    pub fn track_reads(&self, spec: &Spec, args: &[&[u8]], caching: Option<bool>) {
        let Some(guard) = &self.session.tracking else {
            return;
        };
        if !spec.has(Flag::ReadOnly) || !guard.tracker.remembers(caching) {
            return;
        }
        // SORT_RO locks every shard (its BY and GET patterns name keys only
        // as it runs), and is tracked on its key, as Redis tracks it.
        let sorted = (spec.name == "sort_ro")
            .then(|| args.get(1).copied())
            .flatten();
        let keys = spec
            .key_positions(args)
            .filter_map(|i| args.get(i).copied())
            .chain(sorted);
        self.ks.invalidations.remember(self.session.handle.id, keys);
    }

    /// The current database's part of the shard holding `key`, with `key`
    /// warmed if it was cold (see `crate::flash`).
    pub fn db(&mut self, key: &[u8]) -> Result<&mut Db, Error> {
        let db = self.session.db;
        let acked = self.ks.gc_acked();
        let shard = self.locked.shard_for(key, |k| self.ks.shard_of(k))?;
        let d = &mut shard.dbs[db];
        if d.cold_keys > 0 {
            d.warm(key, acked);
        }
        Ok(d)
    }

    /// The key's state if it is visible now (present and not expired).
    pub fn visible(&mut self, key: &[u8]) -> Result<Option<&KeyState>, Error> {
        let now = self.now_ms;
        Ok(self.db(key)?.get(key).filter(|s| s.exists(now)))
    }

    /// What the key holds if it is visible now, a cold key's told by the
    /// index (TYPE, with no disk read).
    pub fn visible_type(&mut self, key: &[u8]) -> Result<Option<KeyType>, Error> {
        let (now, db, acked) = (self.now_ms, self.session.db, self.ks.gc_acked());
        let shard = self.locked.shard_for(key, |k| self.ks.shard_of(k))?;
        let d = &shard.dbs[db];
        Ok(d.map.entry(key).and_then(|e| d.type_of(e, now, acked)))
    }

    /// The key's state, or a cold key's stand-in, if it is visible now:
    /// for what the index answers alone (EXISTS, TTL), with no disk read.
    pub fn visible_in_index(&mut self, key: &[u8]) -> Result<Option<&KeyState>, Error> {
        let now = self.now_ms;
        let db = self.session.db;
        let shard = self.locked.shard_for(key, |k| self.ks.shard_of(k))?;
        Ok(shard.dbs[db].indexed(key).filter(|s| s.exists(now)))
    }

    /// The key's value as GET returns it, copied out; WRONGTYPE for a
    /// key holding a collection.
    pub fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let now = self.now_ms;
        let Some(state) = self.db(key)?.get(key) else {
            return Ok(None);
        };
        match state.read(now) {
            Read::Absent if matches!(state.key_type(now), Some(KeyType::Coll(_))) => {
                Err(Error::WrongType)
            }
            read => Ok(read.render().map(Cow::into_owned)),
        }
    }

    /// The key's collection part if it shows `kind` now (`None` if it
    /// does not exist; WRONGTYPE if it shows another type), with the reply
    /// to write while reading it.
    pub fn coll(&mut self, key: &[u8], kind: Kind) -> Result<(Option<&Coll>, &mut Reply), Error> {
        let now = self.now_ms;
        let db = self.session.db;
        let shard = self.locked.shard_for(key, |k| self.ks.shard_of(k))?;
        let out = &mut *self.out;
        let Some(state) = shard.dbs[db].get(key) else {
            return Ok((None, out));
        };
        match state.key_type(now) {
            None => Ok((None, out)),
            Some(KeyType::Coll(k)) if k == kind => {
                let coll = state.coll();
                if let Some(c) = coll {
                    crate::keyspace::prefetch_expected(c);
                }
                Ok((coll, out))
            }
            Some(_) => Err(Error::WrongType),
        }
    }

    /// [`Exec::coll_update`] that first tries `fast` in place (see
    /// `Writer::coll_in_place`): the hot commands' path.
    pub fn coll_update_fast<R>(
        &mut self,
        key: &[u8],
        kind: Kind,
        fast: impl FnOnce(&mut Coll, Option<&mut Coll>, Stamp) -> Option<R>,
        slow: impl FnOnce(&Coll, &mut Coll, Stamp) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.coll_update_with(key, kind, |w| w.coll_in_place(kind, fast), slow)
    }

    /// [`Exec::coll_update_fast`] for a write of several elements, whose
    /// fast path records what it did in a `ManyWrite`
    /// (`Writer::many_in_place`).
    pub fn coll_update_many<R>(
        &mut self,
        key: &[u8],
        kind: Kind,
        fast: impl FnOnce(&mut Coll, Option<&mut chorus_crdt::ManyWrite>, Stamp) -> Option<R>,
        slow: impl FnOnce(&Coll, &mut Coll, Stamp) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.coll_update_with(key, kind, |w| w.many_in_place(kind, fast), slow)
    }

    /// [`Exec::coll_update_fast`] with a fast path given the key's writer.
    pub fn coll_update_with<R>(
        &mut self,
        key: &[u8],
        kind: Kind,
        fast: impl FnOnce(&mut crate::keyspace::Writer<'_>) -> Option<R>,
        slow: impl FnOnce(&Coll, &mut Coll, Stamp) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.update(key, |w| {
            if let Some(r) = fast(w) {
                return Ok(r);
            }
            match w.key_type() {
                None => {}
                Some(KeyType::Coll(k)) if k == kind => {}
                Some(_) => return Err(Error::WrongType),
            }
            w.coll_write(kind, slow)
        })
    }

    /// Runs a collection command of `kind` on `key`: WRONGTYPE unless the
    /// key shows `kind` or nothing. `f` reads the current part and fills
    /// the delta (see `Writer::coll_write`); its result is the reply's.
    pub fn coll_update<R>(
        &mut self,
        key: &[u8],
        kind: Kind,
        f: impl FnOnce(&Coll, &mut Coll, Stamp) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.update(key, |w| {
            match w.key_type() {
                None => {}
                Some(KeyType::Coll(k)) if k == kind => {}
                Some(_) => return Err(Error::WrongType),
            }
            w.coll_write(kind, f)
        })
    }

    /// Runs a write on `key` in the current database (see [`Keyspace::update`]).
    pub fn update<R>(
        &mut self,
        key: &[u8],
        f: impl FnOnce(&mut Writer<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let db = self.session.db;
        self.update_in(db, key, f)
    }

    pub fn update_in<R>(
        &mut self,
        db: usize,
        key: &[u8],
        f: impl FnOnce(&mut Writer<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        self.ks.update(&mut self.locked, db, key, self.now_ms, f)?
    }

    /// Writes `value` (or deletes, for `None`) with an absolute expiry.
    pub fn set_value(&mut self, key: &[u8], value: Option<&[u8]>, expire_at_ms: u64) -> CmdResult {
        self.update(key, |w| {
            w.set(value, expire_at_ms);
            Ok(())
        })
    }

    /// Deletes `key` if visible; returns whether it was.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, Error> {
        self.update(key, |w| {
            let visible = w.visible();
            if visible {
                w.set(None, 0);
            }
            Ok(visible)
        })
    }
}

/// A string key's value inside a write: WRONGTYPE when the key holds a
/// collection.
pub fn str_value(w: &Writer) -> Result<Option<Vec<u8>>, Error> {
    if w.shows_collection() {
        return Err(Error::WrongType);
    }
    Ok(w.value())
}

/// A count of at least `min`, as Redis's getRangeLong with a message: one
/// error text, `text`, for a count out of range and for one that is not a
/// number.
pub fn count_arg(arg: &[u8], min: usize, text: &'static str) -> Result<usize, Error> {
    chorus_crdt::number::parse_int(arg)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n >= min)
        .ok_or(Error::err(text))
}

/// A pop's count (LPOP, ZPOPMIN, ...).
pub fn pop_count(arg: &[u8]) -> Result<usize, Error> {
    count_arg(arg, 0, "value is out of range, must be positive")
}

/// What an increment recorded in `one` (`hincr_here`, `zincr_here`),
/// for `Writer::one_in_place`: `None` when nothing was recorded (no sink
/// wanted it).
pub fn counted(
    kind: Kind,
    one: Option<&mut chorus_crdt::OneWrite>,
) -> Option<chorus_crdt::Written<'static>> {
    let (node, tally) = one?.counted?;
    Some(chorus_crdt::Written::Count { kind, node, tally })
}

/// Parses an integer argument.
pub fn int_arg(arg: &[u8]) -> Result<i64, Error> {
    chorus_crdt::number::parse_int(arg).ok_or(Error::NotInteger)
}

/// A key and the elements popped from it.
pub type KeyPopped<T> = (Vec<u8>, Vec<T>);

/// Pops from the first of `keys` holding elements (LMPOP, ZMPOP and their
/// blocking forms), notified as `event`: the key and what `pop` took from
/// it, or `None`. Woken, a key turned into another type is passed over:
/// the client keeps waiting (as Redis 7.0).
pub fn pop_first<T>(
    x: &mut Exec,
    keys: &[&[u8]],
    event: &'static str,
    mut pop: impl FnMut(&mut Exec, &[u8]) -> Result<Option<Vec<T>>, Error>,
) -> Result<Option<KeyPopped<T>>, Error> {
    let (ks, db) = (x.ks, x.session.db);
    for key in keys {
        let popped = crate::notify::as_command(ks, event, Some(key), db, || pop(x, key));
        let popped = match popped {
            Err(Error::WrongType) if x.session.retrying_block => continue,
            popped => popped?,
        };
        if let Some(v) = popped.filter(|v| !v.is_empty()) {
            return Ok(Some((key.to_vec(), v)));
        }
    }
    Ok(None)
}

/// A database index (SELECT, COPY's DB, MOVE): read as Redis reads it, a
/// C int first, then one of the `databases`.
pub fn db_index_arg(arg: &[u8], databases: usize) -> Result<usize, Error> {
    let n = int_arg(arg)?;
    if i32::try_from(n).is_err() {
        return Err(Error::err(
            "value is out of range, value must between -2147483648 and 2147483647",
        ));
    }
    if n < 0 || n as usize >= databases {
        return Err(Error::DbRange);
    }
    Ok(n as usize)
}

/// Parses a float argument.
pub fn float_arg(arg: &[u8]) -> Result<f64, Error> {
    chorus_crdt::number::parse_float(arg).ok_or(Error::NotFloat)
}

/// Writes a key's read value as a bulk reply (or null).
pub fn reply_read(out: &mut Reply, read: Read<'_>) {
    match read {
        Read::Absent => out.null(),
        Read::Str(v) => out.bulk(v),
        Read::Int(i) => out.bulk(itoa::Buffer::new().format(i).as_bytes()),
        Read::Float(f) => out.bulk(chorus_crdt::number::format_float(f).as_bytes()),
    }
}

/// Whether an option word equals `name`, ignoring case.
pub fn is(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_with_arguments_has_a_syntax_line() {
        for spec in table() {
            let needs_args = spec.arity.abs() > 1;
            assert!(
                !needs_args || !spec.syntax.is_empty(),
                "{} has no syntax line",
                spec.name
            );
        }
    }

    #[test]
    fn key_positions_follow_redis_key_specs() {
        fn at(words: &str) -> Vec<usize> {
            let args: Vec<&[u8]> = words.split(' ').map(str::as_bytes).collect();
            lookup(args[0]).unwrap().key_positions(&args).collect()
        }
        assert_eq!(at("MSET a 1 b 2"), vec![1, 3]);
        assert_eq!(at("get k"), vec![1]);
        assert_eq!(lookup(b"exec").unwrap().keys, Keys::Queued);
        assert_eq!(lookup(b"flushall").unwrap().keys, Keys::All);
        assert!(at("ping x").is_empty());
        // Counted keys: the options after them are no keys.
        assert_eq!(at("zunionstore d 2 a b WEIGHTS 1 2"), vec![1, 3, 4]);
        assert_eq!(at("lmpop 2 a b LEFT COUNT 3"), vec![2, 3]);
        assert_eq!(at("blmpop 0 2 a b LEFT"), vec![3, 4]);
        assert_eq!(at("sintercard 1 a LIMIT 5"), vec![2]);
        // A count the call cannot hold: all after it, for the locks.
        assert_eq!(at("zunion 3 a b"), vec![2, 3]);
        assert_eq!(at("zunion x a b"), vec![2, 3]);
        assert_eq!(at("zunionstore d"), vec![1]);
    }

    #[test]
    fn flags_hold_exactly_what_they_were_built_from() {
        let f = Flags::of(&[Flag::Write, Flag::Fast]);
        assert!(f.has(Flag::Write) && f.has(Flag::Fast));
        assert!(!f.has(Flag::ReadOnly) && !f.has(Flag::NoMulti));
    }
}
