//! The command table and the context every command runs in.
//!
//! As in Redis, a declarative table (name, arity, flags, key positions)
//! lets the dispatcher, not each handler, check arity and authentication,
//! queue commands inside MULTI, and lock exactly the shards a command's keys
//! live in before the handler runs.

mod crdt;
mod docs;
mod expire;
mod keys;
pub mod replication;
mod server;

pub use server::REDIS_COMPAT_VERSION;
mod strings;

use std::borrow::Cow;
use std::sync::LazyLock;

use chorus_crdt::{KeyState, Read};
use smallvec::SmallVec;

use crate::keyspace::{Db, Keyspace, Locked, NotLocked, Writer};
use crate::node::Node;
use crate::resp::Reply;
use crate::session::{Queued, Session};

/// A command's error reply; the text starts with the Redis error code.
#[derive(Debug)]
pub enum Error {
    Static(&'static str),
    Owned(String),
}

impl Error {
    pub fn text(&self) -> &str {
        match self {
            Error::Static(s) => s,
            Error::Owned(s) => s,
        }
    }
}

impl From<NotLocked> for Error {
    fn from(_: NotLocked) -> Self {
        Error::Static("ERR internal error: command touched a key it did not declare")
    }
}

pub type CmdResult = Result<(), Error>;

pub const SYNTAX: Error = Error::Static("ERR syntax error");
pub const NOT_INTEGER: Error = Error::Static("ERR value is not an integer or out of range");
pub const NOT_FLOAT: Error = Error::Static("ERR value is not a valid float");
pub const NO_SUCH_KEY: Error = Error::Static("ERR no such key");
pub const DB_RANGE: Error = Error::Static("ERR DB index is out of range");
pub const NOAUTH: &str = "NOAUTH Authentication required.";

pub type Handler = fn(&mut Exec<'_, '_>, &[&[u8]]) -> CmdResult;

pub mod flag {
    pub const WRITE: u32 = 1;
    pub const READONLY: u32 = 1 << 1;
    pub const ADMIN: u32 = 1 << 2;
    /// Allowed before AUTH.
    pub const NOAUTH: u32 = 1 << 3;
    /// Runs at once inside MULTI instead of being queued.
    pub const NOQUEUE: u32 = 1 << 4;
    /// Needs every shard (whole-keyspace commands).
    pub const ALLKEYS: u32 = 1 << 5;
    pub const FAST: u32 = 1 << 6;
    /// Not allowed inside MULTI at all.
    pub const NOMULTI: u32 = 1 << 7;
}

/// One row of the command table.
pub struct Spec {
    pub name: &'static str,
    /// Redis arity: exact count if positive, minimum count if negative
    /// (both including the command name).
    pub arity: i32,
    pub flags: u32,
    /// First key, last key (negative: from the end), step; 0 when keyless.
    pub keys: (i32, i32, i32),
    pub group: &'static str,
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

    /// Positions of the keys in `args`.
    pub fn key_positions(&self, argc: usize) -> impl Iterator<Item = usize> {
        let (first, last, step) = self.keys;
        let last = if last < 0 {
            argc as i32 + last
        } else {
            last.min(argc as i32 - 1)
        };
        let (start, end, step) = if first > 0 && step > 0 && last >= first {
            (first as usize, last as usize + 1, step as usize)
        } else {
            (0, 0, 1)
        };
        (start..end).step_by(step)
    }

    pub fn has(&self, f: u32) -> bool {
        self.flags & f != 0
    }
}

pub fn table() -> impl Iterator<Item = &'static Spec> {
    strings::COMMANDS
        .iter()
        .chain(keys::COMMANDS)
        .chain(expire::COMMANDS)
        .chain(server::COMMANDS)
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

/// The shards to lock for a command with these arguments.
pub fn shards_for(ks: &Keyspace, spec: &Spec, args: &[&[u8]], into: &mut SmallVec<[usize; 4]>) {
    for i in spec.key_positions(args.len()) {
        if let Some(key) = args.get(i) {
            into.push(ks.shard_of(key));
        }
    }
}

/// Everything a command may touch while it runs.
pub struct Exec<'s, 'c> {
    pub node: &'s Node,
    pub ks: &'s Keyspace,
    pub session: &'c mut Session,
    pub out: &'c mut Reply,
    pub locked: Locked<'s>,
    pub now_ms: u64,
}

impl<'s> Exec<'s, '_> {
    /// The current database's part of the shard holding `key`.
    pub fn db(&mut self, key: &[u8]) -> Result<&mut Db, Error> {
        let db = self.session.db;
        let shard = self.locked.shard(self.ks.shard_of(key))?;
        Ok(&mut shard.dbs[db])
    }

    /// The key's state if it is visible now (present and not expired).
    pub fn visible(&mut self, key: &[u8]) -> Result<Option<&KeyState>, Error> {
        let now = self.now_ms;
        Ok(self.db(key)?.get(key).filter(|s| s.exists(now)))
    }

    /// The key's value as GET returns it, copied out.
    pub fn value(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let now = self.now_ms;
        Ok(self
            .db(key)?
            .get(key)
            .and_then(|s| s.read(now).render().map(Cow::into_owned)))
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

/// Parses an integer argument.
pub fn int_arg(arg: &[u8]) -> Result<i64, Error> {
    chorus_crdt::number::parse_int(arg).ok_or(NOT_INTEGER)
}

/// Parses a float argument.
pub fn float_arg(arg: &[u8]) -> Result<f64, Error> {
    chorus_crdt::number::parse_float(arg).ok_or(NOT_FLOAT)
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

/// The Redis error for an unknown command.
pub fn unknown_command(args: &[&[u8]]) -> String {
    let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default());
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        truncate(&name)
    );
    for a in args.iter().skip(1).take(16) {
        msg.push('\'');
        msg.push_str(&truncate(&String::from_utf8_lossy(a)));
        msg.push_str("' ");
    }
    msg
}

/// The Redis error for a bad subcommand.
pub fn unknown_subcommand(cmd: &str, sub: &[u8]) -> Error {
    Error::Owned(format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        truncate(&String::from_utf8_lossy(sub)),
        cmd.to_ascii_uppercase()
    ))
}

fn truncate(s: &str) -> String {
    s.chars().take(128).collect()
}

pub fn wrong_arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

/// Runs one command for `session`: looks it up, checks arity and
/// authentication, queues it inside MULTI, locks the shards its keys live in
/// and runs it. Returns its name for CLIENT LIST's `cmd=`.
pub fn dispatch(
    node: &Node,
    session: &mut Session,
    out: &mut Reply,
    args: &[&[u8]],
    now_ms: u64,
) -> Option<&'static str> {
    let Some(spec) = lookup(args[0]) else {
        if session.multi.is_some() {
            session.multi_dirty = true;
        }
        out.error(&unknown_command(args));
        return None;
    };
    if !spec.arity_ok(args.len()) {
        if session.multi.is_some() {
            session.multi_dirty = true;
        }
        out.error(&wrong_arity(spec.name));
        return Some(spec.name);
    }
    if !session.authed && !spec.has(flag::NOAUTH) {
        if session.multi.is_some() {
            session.multi_dirty = true;
        }
        out.error(NOAUTH);
        return Some(spec.name);
    }
    if let Some(queue) = &mut session.multi {
        if !spec.has(flag::NOQUEUE) {
            if spec.has(flag::NOMULTI) {
                session.multi_dirty = true;
                out.error(&format!(
                    "ERR Command not allowed inside a transaction: {}",
                    spec.name
                ));
                return Some(spec.name);
            }
            queue.push(Queued {
                spec,
                args: args.iter().map(|a| a.to_vec()).collect(),
            });
            out.simple("QUEUED");
            return Some(spec.name);
        }
    }
    let ks = &*node.ks;
    let locked = if spec.name == "exec" {
        lock_for_exec(ks, session)
    } else if spec.has(flag::ALLKEYS) {
        ks.lock_all()
    } else if spec.keys.0 == 0 {
        Locked::empty()
    } else {
        let mut shards = SmallVec::new();
        shards_for(ks, spec, args, &mut shards);
        ks.lock(shards)
    };
    let mut x = Exec {
        node,
        ks,
        session,
        out,
        locked,
        now_ms,
    };
    if let Err(e) = (spec.run)(&mut x, args) {
        x.out.error(e.text());
    }
    Some(spec.name)
}

/// EXEC locks every shard its queued commands and watched keys live in.
fn lock_for_exec<'a>(ks: &'a Keyspace, session: &Session) -> Locked<'a> {
    let Some(queue) = &session.multi else {
        return Locked::empty();
    };
    if queue.iter().any(|q| q.spec.has(flag::ALLKEYS)) {
        return ks.lock_all();
    }
    let mut shards: SmallVec<[usize; 4]> = session
        .watched
        .iter()
        .map(|w| ks.shard_of(&w.key))
        .collect();
    for q in queue {
        let args: SmallVec<[&[u8]; 8]> = q.args.iter().map(|a| a.as_slice()).collect();
        shards_for(ks, q.spec, &args, &mut shards);
    }
    ks.lock(shards)
}
