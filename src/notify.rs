//! Keyspace notifications (`notify-keyspace-events`): a change to a key,
//! made by a local command or merged from a peer, published to this node's
//! subscribers of `__keyspace@<db>__:<key>` (the event as message) and
//! `__keyevent@<db>__:<event>` (the key as message). Never sent to peers:
//! every node notifies the changes it sees, its own and replicated ones.
//!
//! A local command's event is Redis's, from the command's name (and, for
//! commands that write two keys, which key); the dispatcher names the
//! command on its thread. A merged change carries no command: it is
//! notified by what the key shows after it (`set`, `incrby`, `hset`,
//! `sadd`, `zadd`, `lpush`) or `del` when it is gone.

use std::cell::Cell;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::atomic::{AtomicU32, Ordering};

use chorus_crdt::{KeyState, KeyType, Kind, Read};

use crate::keyspace::Keyspace;
use crate::pubsub::Space;

/// Event classes, as Redis's letters.
pub const KEYSPACE: u32 = 1 << 0; // K
pub const KEYEVENT: u32 = 1 << 1; // E
pub const GENERIC: u32 = 1 << 2; // g
pub const STRING: u32 = 1 << 3; // $
pub const LIST: u32 = 1 << 4; // l
pub const SET: u32 = 1 << 5; // s
pub const HASH: u32 = 1 << 6; // h
pub const ZSET: u32 = 1 << 7; // z
pub const EXPIRED: u32 = 1 << 8; // x
pub const EVICTED: u32 = 1 << 9; // e
pub const STREAM: u32 = 1 << 10; // t
pub const KEY_MISS: u32 = 1 << 11; // m
pub const MODULE: u32 = 1 << 12; // d
pub const NEW: u32 = 1 << 13; // n
/// `A`: every class but `m` and `n`, as Redis.
const ALL: u32 = GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

const LETTERS: &[(char, u32)] = &[
    ('g', GENERIC),
    ('$', STRING),
    ('l', LIST),
    ('s', SET),
    ('h', HASH),
    ('z', ZSET),
    ('x', EXPIRED),
    ('e', EVICTED),
    ('t', STREAM),
    ('m', KEY_MISS),
    ('d', MODULE),
    ('n', NEW),
];

/// Parses Redis's class letters; `None` for a letter it does not know.
pub fn parse_classes(text: &str) -> Option<u32> {
    let mut flags = 0;
    for c in text.chars() {
        flags |= match c {
            'A' => ALL,
            'K' => KEYSPACE,
            'E' => KEYEVENT,
            c => LETTERS.iter().find(|(l, _)| *l == c)?.1,
        };
    }
    Some(flags)
}

/// The letters of `flags` as CONFIG GET shows them, in Redis 7.0's order
/// (`A`, or the class letters with `n` last; then K, E, m: with `A`, Redis
/// leaves `n` out, and so does this).
pub fn classes_text(flags: u32) -> String {
    let mut out = String::new();
    if flags & ALL == ALL {
        out.push('A');
    } else {
        for (l, f) in LETTERS.iter().filter(|(_, f)| *f != KEY_MISS) {
            if flags & f != 0 {
                out.push(*l);
            }
        }
    }
    for (l, f) in [('K', KEYSPACE), ('E', KEYEVENT), ('m', KEY_MISS)] {
        if flags & f != 0 {
            out.push(l);
        }
    }
    out
}

/// What a command on this thread writes, for the events of the keys it
/// changes: its name, its first key's hash and database (commands that
/// write two keys name each differently).
#[derive(Clone, Copy)]
struct Running {
    command: &'static str,
    first_key: u64,
    db: usize,
}

thread_local! {
    static RUNNING: Cell<Option<Running>> = const { Cell::new(None) };
    /// Background work that deletes (eviction): its event.
    static CAUSE: Cell<Option<(u32, &'static str)>> = const { Cell::new(None) };
}

type KeyHash = BuildHasherDefault<std::hash::DefaultHasher>;

fn key_hash(key: &[u8]) -> u64 {
    KeyHash::default().hash_one(key)
}

/// Runs `f` as the command `command` (its first key `first_key`, run in
/// `db`), when notifications are on.
pub fn as_command<R>(
    ks: &Keyspace,
    command: &'static str,
    first_key: Option<&[u8]>,
    db: usize,
    f: impl FnOnce() -> R,
) -> R {
    if ks.notify.load(Ordering::Relaxed) == 0 {
        return f();
    }
    struct Restore(Option<Running>);
    impl Drop for Restore {
        fn drop(&mut self) {
            RUNNING.with(|r| r.set(self.0));
        }
    }
    let running = Running {
        command,
        first_key: first_key.map_or(0, key_hash),
        db,
    };
    let _restore = Restore(RUNNING.with(|r| r.replace(Some(running))));
    f()
}

/// Runs `f` as background work whose deletes are `event` of `class`
/// (eviction).
pub fn as_cause<R>(class: u32, event: &'static str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(u32, &'static str)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAUSE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAUSE.with(|c| c.replace(Some((class, event)))));
    f()
}

/// Redis's event (and class) for a key `command` wrote: `first` when it is
/// the command's first key, `same_db` when in the command's database.
fn command_event(command: &str, first: bool, same_db: bool) -> Option<(u32, &'static str)> {
    Some(match command {
        "set" | "setnx" | "setex" | "psetex" | "getset" | "mset" | "msetnx" | "bitop" => {
            (STRING, "set")
        }
        "setrange" => (STRING, "setrange"),
        "append" => (STRING, "append"),
        "incr" | "decr" | "incrby" | "decrby" => (STRING, "incrby"),
        "incrbyfloat" => (STRING, "incrbyfloat"),
        "setbit" | "bitfield" => (STRING, "setbit"),
        "del" | "unlink" | "getdel" => (GENERIC, "del"),
        "expire" | "pexpire" | "expireat" | "pexpireat" => (GENERIC, "expire"),
        "getex" => (GENERIC, "expire"),
        "persist" => (GENERIC, "persist"),
        "rename" | "renamenx" if first => (GENERIC, "rename_from"),
        "rename" | "renamenx" => (GENERIC, "rename_to"),
        "move" if same_db => (GENERIC, "move_from"),
        "move" => (GENERIC, "move_to"),
        "copy" => (GENERIC, "copy_to"),
        "restore" => (GENERIC, "restore"),
        "hset" | "hmset" | "hsetnx" => (HASH, "hset"),
        "hincrby" => (HASH, "hincrby"),
        "hincrbyfloat" => (HASH, "hincrbyfloat"),
        "hdel" => (HASH, "hdel"),
        "sadd" => (SET, "sadd"),
        "srem" => (SET, "srem"),
        "spop" => (SET, "spop"),
        "smove" if first => (SET, "srem"),
        "smove" => (SET, "sadd"),
        "sinterstore" => (SET, "sinterstore"),
        "sunionstore" => (SET, "sunionstore"),
        "sdiffstore" => (SET, "sdiffstore"),
        "lpush" | "lpushx" => (LIST, "lpush"),
        "rpush" | "rpushx" => (LIST, "rpush"),
        "lpop" | "blpop" => (LIST, "lpop"),
        "rpop" | "brpop" => (LIST, "rpop"),
        "linsert" => (LIST, "linsert"),
        "lset" => (LIST, "lset"),
        "lrem" => (LIST, "lrem"),
        "ltrim" => (LIST, "ltrim"),
        "sort" => (LIST, "sortstore"),
        "zadd" => (ZSET, "zadd"),
        "zincrby" => (ZSET, "zincr"),
        "zrem" => (ZSET, "zrem"),
        "zremrangebyscore" => (ZSET, "zremrangebyscore"),
        "zremrangebyrank" => (ZSET, "zremrangebyrank"),
        "zremrangebylex" => (ZSET, "zremrangebylex"),
        "zpopmin" | "bzpopmin" => (ZSET, "zpopmin"),
        "zpopmax" | "bzpopmax" => (ZSET, "zpopmax"),
        "zunionstore" => (ZSET, "zunionstore"),
        "zinterstore" => (ZSET, "zinterstore"),
        "zdiffstore" => (ZSET, "zdiffstore"),
        "zrangestore" => (ZSET, "zrangestore"),
        _ => return None,
    })
}

/// What a merged change shows, as an event.
fn merged_event(state: Option<&KeyState>, now_ms: u64) -> (u32, &'static str) {
    let Some(state) = state else {
        return (GENERIC, "del");
    };
    match state.key_type(now_ms) {
        None => (GENERIC, "del"),
        Some(KeyType::Coll(Kind::Hash)) => (HASH, "hset"),
        Some(KeyType::Coll(Kind::Set)) => (SET, "sadd"),
        Some(KeyType::Coll(Kind::ZSet)) => (ZSET, "zadd"),
        Some(KeyType::Coll(Kind::List)) => (LIST, "lpush"),
        // A counter's value (its tallies) reads as a number.
        Some(KeyType::String) => match state.read(now_ms) {
            Read::Int(_) | Read::Float(_) => (STRING, "incrby"),
            _ => (STRING, "set"),
        },
    }
}

/// Events that remove elements: a command that empties its key says so,
/// then `del`.
fn removes_elements(event: &str) -> bool {
    matches!(
        event,
        "srem"
            | "lpop"
            | "rpop"
            | "lrem"
            | "ltrim"
            | "spop"
            | "hdel"
            | "zrem"
            | "zremrangebyscore"
            | "zremrangebyrank"
            | "zremrangebylex"
            | "zpopmin"
            | "zpopmax"
    )
}

/// A local write changed `key` in `db`: `existed` before, `exists` after;
/// `expired`: its expiry passed and its delete came first; `wrote`: the
/// command wrote.
pub fn after_write(
    ks: &Keyspace,
    db: usize,
    key: &[u8],
    (existed, exists, expired, wrote): (bool, bool, bool, bool),
) {
    let flags = ks.notify.load(Ordering::Relaxed);
    if flags == 0 || !ks.pubsub.has_subscribers() {
        return;
    }
    if expired {
        publish(ks, flags, db, key, (EXPIRED, "expired"));
    }
    // Nothing there before or after (a delete of nothing, a store of an
    // empty result): no change a client saw.
    if !wrote || (!existed && !exists) {
        return;
    }
    if let Some(cause) = CAUSE.with(|c| c.get()) {
        publish(ks, flags, db, key, cause);
        return;
    }
    // Named by the dispatcher while notifications were on (turned on
    // mid-command: told from the next one).
    let Some(running) = RUNNING.with(|r| r.get()) else {
        return;
    };
    let first = running.first_key == key_hash(key);
    let Some(event) = command_event(running.command, first, running.db == db) else {
        return;
    };
    if !existed {
        publish(ks, flags, db, key, (NEW, "new"));
    }
    if existed && !exists {
        // Gone: a command that removes elements says so, then `del`; one
        // that moves or deletes keys says what it did; any other (an
        // EXPIRE in the past, a store of an empty result) deleted it.
        if removes_elements(event.1) {
            publish(ks, flags, db, key, event);
            publish(ks, flags, db, key, (GENERIC, "del"));
        } else if matches!(event.1, "del" | "rename_from" | "move_from") {
            publish(ks, flags, db, key, event);
        } else {
            publish(ks, flags, db, key, (GENERIC, "del"));
        }
        return;
    }
    publish(ks, flags, db, key, event);
}

/// A key as it was before a merge, when notifications are on: whether it
/// existed, and its newest stamp (unchanged: the merge took nothing).
#[derive(Clone, Copy)]
pub struct Before(Option<(bool, chorus_crdt::Stamp)>);

impl Before {
    pub fn of(ks: &Keyspace, state: Option<&KeyState>) -> Before {
        if ks.notify.load(Ordering::Relaxed) == 0 {
            return Before(None);
        }
        let now_ms = ks.clock.physical_unix_ms();
        Before(Some(state.map_or((false, chorus_crdt::Stamp::ZERO), |s| {
            (s.exists(now_ms), s.latest_stamp())
        })))
    }
}

/// A peer's change merged into `key` in `db` (as it was `before`).
pub fn after_merge(ks: &Keyspace, db: usize, key: &[u8], before: Before, now: Option<&KeyState>) {
    let flags = ks.notify.load(Ordering::Relaxed);
    let Before(Some((existed, stamp))) = before else {
        return;
    };
    if flags == 0 || !ks.pubsub.has_subscribers() {
        return;
    }
    if now.map_or(chorus_crdt::Stamp::ZERO, KeyState::latest_stamp) == stamp {
        // A duplicate, or a write older than what the key holds.
        return;
    }
    let now_ms = ks.clock.physical_unix_ms();
    let event = merged_event(now, now_ms);
    if !existed && event.1 == "del" {
        // Nothing there before or after (a tombstone arriving): no change
        // a client saw.
        return;
    }
    if !existed {
        publish(ks, flags, db, key, (NEW, "new"));
    }
    publish(ks, flags, db, key, event);
}

fn publish(ks: &Keyspace, flags: u32, db: usize, key: &[u8], (class, event): (u32, &str)) {
    if flags & class == 0 {
        return;
    }
    if flags & KEYSPACE != 0 {
        let mut channel = format!("__keyspace@{db}__:").into_bytes();
        channel.extend_from_slice(key);
        ks.pubsub.publish(Space::Global, &channel, event.as_bytes());
    }
    if flags & KEYEVENT != 0 {
        let channel = format!("__keyevent@{db}__:{event}");
        ks.pubsub.publish(Space::Global, channel.as_bytes(), key);
    }
}

/// `notify-keyspace-events` as the keyspace holds it.
pub type Flags = AtomicU32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_letters_parse_and_print_as_redis_does() {
        let all = parse_classes("KEA").unwrap();
        assert_eq!(classes_text(all), "AKE");
        assert_eq!(classes_text(parse_classes("Egx").unwrap()), "gxE");
        assert_eq!(classes_text(parse_classes("").unwrap()), "");
        assert_eq!(parse_classes("Kq"), None);
        assert_eq!(classes_text(parse_classes("KEAnm").unwrap()), "AKEm");
        assert_eq!(classes_text(parse_classes("Egn").unwrap()), "gnE");
    }

    #[test]
    fn two_key_commands_name_each_key() {
        assert_eq!(
            command_event("rename", true, true),
            Some((GENERIC, "rename_from"))
        );
        assert_eq!(
            command_event("rename", false, true),
            Some((GENERIC, "rename_to"))
        );
        assert_eq!(command_event("smove", true, true), Some((SET, "srem")));
        assert_eq!(
            command_event("move", true, false),
            Some((GENERIC, "move_to"))
        );
        assert_eq!(command_event("get", true, true), None);
    }
}
