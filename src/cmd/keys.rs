//! Keyspace commands (Redis's `db.c`).

use super::Flag::*;
use super::{int_arg, is, Args, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use crate::glob;
use crate::keyspace::Writer;
use chorus_crdt::{KeyState, KeyType, Kind};

pub static COMMANDS: &[Spec] = &[
    Spec { name: "del", arity: -2, flags: Flags::of(&[Write]), keys: Keys::at(1, -1, 1), group: "generic", syntax: "key ...", summary: "Deletes one or more keys.", run: del },
    Spec { name: "unlink", arity: -2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, -1, 1), group: "generic", syntax: "key ...", summary: "Asynchronously deletes one or more keys.", run: del },
    Spec { name: "exists", arity: -2, flags: Flags::of(&[NoTouch, ReadOnly, Fast]), keys: Keys::at(1, -1, 1), group: "generic", syntax: "key ...", summary: "Determines whether one or more keys exist.", run: exists },
    Spec { name: "touch", arity: -2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, -1, 1), group: "generic", syntax: "key ...", summary: "Returns the number of existing keys out of those specified after updating the time they were last accessed.", run: exists },
    Spec { name: "type", arity: 2, flags: Flags::of(&[NoTouch, ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "generic", syntax: "key", summary: "Determines the type of value stored at a key.", run: type_ },
    Spec { name: "keys", arity: 2, flags: Flags::of(&[ReadOnly]), keys: Keys::All, group: "generic", syntax: "pattern", summary: "Returns all key names that match a pattern.", run: keys },
    Spec { name: "scan", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::All, group: "generic", syntax: "cursor [MATCH pattern] [COUNT count] [TYPE type]", summary: "Iterates over the key names in the database.", run: scan },
    Spec { name: "randomkey", arity: 1, flags: Flags::of(&[ReadOnly]), keys: Keys::All, group: "generic", syntax: "", summary: "Returns a random key name from the database.", run: randomkey },
    Spec { name: "dbsize", arity: 1, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::All, group: "server", syntax: "", summary: "Returns the number of keys in the database.", run: dbsize },
    Spec { name: "rename", arity: 3, flags: Flags::of(&[Write]), keys: Keys::at(1, 2, 1), group: "generic", syntax: "key newkey", summary: "Renames a key and overwrites the destination.", run: rename },
    Spec { name: "renamenx", arity: 3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 2, 1), group: "generic", syntax: "key newkey", summary: "Renames a key only when the target key name doesn't exist.", run: renamenx },
    Spec { name: "copy", arity: -3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 2, 1), group: "generic", syntax: "source destination [DB destination-db] [REPLACE]", summary: "Copies the value of a key to a new key.", run: copy },
    Spec { name: "flushdb", arity: -1, flags: Flags::of(&[Write]), keys: Keys::All, group: "server", syntax: "[ASYNC|SYNC]", summary: "Removes all keys from the current database.", run: flushdb },
    Spec { name: "flushall", arity: -1, flags: Flags::of(&[Write]), keys: Keys::All, group: "server", syntax: "[ASYNC|SYNC]", summary: "Removes all keys from all databases.", run: flushall },
    Spec { name: "move", arity: 3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "generic", syntax: "key db", summary: "Moves a key to another database.", run: move_ },
    Spec { name: "object", arity: -2, flags: Flags::of(&[NoTouch, ReadOnly]), keys: Keys::at(2, 2, 1), group: "generic", syntax: "ENCODING|FREQ|IDLETIME|REFCOUNT key | HELP", summary: "A container for object introspection commands.", run: object },
    Spec { name: "memory", arity: -2, flags: Flags::of(&[NoTouch, ReadOnly]), keys: Keys::at(2, 2, 1), group: "server", syntax: "USAGE key [SAMPLES count] | STATS | PURGE | HELP", summary: "A container for memory diagnostics commands.", run: memory },
    Spec { name: "dump", arity: 2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "generic", syntax: "key", summary: "Returns a serialized representation of the value stored at a key.", run: dump },
    Spec { name: "restore", arity: -4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "generic", syntax: "key ttl serialized-value [REPLACE] [ABSTTL] [IDLETIME seconds] [FREQ frequency]", summary: "Creates a key from the serialized representation of a value.", run: restore },
    Spec { name: "swapdb", arity: 3, flags: Flags::of(&[Write, Fast]), keys: Keys::All, group: "server", syntax: "index1 index2", summary: "Swaps two Redis databases.", run: swapdb },
];

fn del(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let mut n = 0;
    for key in &args[1..] {
        if x.delete(key)? {
            n += 1;
        }
    }
    x.out.int(n);
    Ok(())
}

fn exists(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let mut n = 0;
    for key in &args[1..] {
        if x.visible_in_index(key)?.is_some() {
            n += 1;
        }
    }
    x.out.int(n);
    Ok(())
}

fn type_(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let t = x.visible_type(args[1])?.map_or("none", |t| t.name());
    x.out.simple(t);
    Ok(())
}

/// Every visible key of the current database, in shard order.
fn for_each_key(x: &mut Exec, mut f: impl FnMut(&[u8])) {
    let (db, now) = (x.session.db, x.now_ms);
    for shard in x.locked.shards() {
        for (k, s) in shard.dbs[db].map.iter() {
            if s.exists(now) {
                f(k);
            }
        }
    }
}

fn keys(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let pattern = args[1];
    let all = pattern == b"*";
    let mut found: Vec<Vec<u8>> = Vec::new();
    for_each_key(x, |k| {
        if all || glob::matches(pattern, k, false) {
            found.push(k.to_vec());
        }
    });
    x.out.array(found.len());
    for k in &found {
        x.out.bulk(k);
    }
    Ok(())
}

/// SCAN's cursor is `shard << 48 | epoch tag << 32 | position in the
/// shard's slab`: each call costs what it returns. Entries keep their
/// position while the map grows and churns; only the compaction of a map
/// that lost more than half its keys moves them, and gives the map a new
/// epoch (`KeyMap::epoch`): a cursor whose tag (the epoch's low 16 bits)
/// is not the map's starts that shard over, so a key that lives
/// throughout the scan is returned at least once, as Redis guarantees
/// (keys of that shard may come twice, as Redis allows).
///
/// SCAN's options after the cursor (SSCAN's and HSCAN's too): MATCH,
/// COUNT, and TYPE where `with_type`.
pub struct ScanOptions<'a> {
    pub pattern: Option<&'a [u8]>,
    pub count: usize,
    pub type_filter: Option<&'a [u8]>,
}

pub fn scan_options<'a>(
    args: &'a [&'a [u8]],
    from: usize,
    with_type: bool,
) -> Result<ScanOptions<'a>, Error> {
    let mut o = ScanOptions {
        pattern: None,
        count: 10,
        type_filter: None,
    };
    let mut options = Args::new(args, from);
    while !options.is_empty() {
        if options.eat("MATCH") {
            o.pattern = Some(options.value()?);
        } else if options.eat("COUNT") {
            let n = options.int()?;
            if n < 1 {
                return Err(Error::Syntax);
            }
            o.count = n as usize;
        } else if with_type && options.eat("TYPE") {
            o.type_filter = Some(options.value()?);
        } else {
            return Err(Error::Syntax);
        }
    }
    Ok(o)
}

/// The part of a map's epoch a SCAN cursor carries.
fn epoch_tag(epoch: u64) -> u64 {
    epoch & 0xffff
}

/// A SCAN cursor argument.
pub fn parse_cursor(arg: &[u8]) -> Result<u64, Error> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Error::err("invalid cursor"))
}

fn scan(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let cursor = parse_cursor(args[1])?;
    let ScanOptions {
        pattern,
        count,
        type_filter,
    } = scan_options(args, 2, true)?;
    let (mut shard_i, tag, mut pos) = (
        (cursor >> 48) as usize,
        (cursor >> 32) & 0xffff,
        (cursor & 0xffff_ffff) as usize,
    );
    let mut resumed = pos > 0;
    let mut epoch = 0;
    let (db, now) = (x.session.db, x.now_ms);
    let mut found: Vec<Vec<u8>> = Vec::new();
    let mut visited = 0;
    let shards = crate::keyspace::SHARDS;
    // As Redis: holes count a tenth, so that a sparse map (after
    // mass deletes) cannot make one call walk it whole.
    let mut empty = 0;
    let most_empty = count.saturating_mul(10);
    let acked = x.ks.gc_acked();
    while shard_i < shards && visited < count && empty < most_empty {
        let shard = x.locked.shard(shard_i)?;
        let d = &shard.dbs[db];
        let map = &d.map;
        epoch = map.epoch();
        if std::mem::take(&mut resumed) && epoch_tag(epoch) != tag {
            pos = 0;
        }
        while pos < map.positions() && visited < count && empty < most_empty {
            let Some(e) = map.at(pos) else {
                pos += 1;
                empty += 1;
                continue;
            };
            pos += 1;
            visited += 1;
            let (k, s) = (&e.key, &e.state);
            // (A cold key's type from the index, not its stand-in.)
            let type_ok = type_filter
                .is_none_or(|t| d.type_of(e, now, acked).is_some_and(|kt| is(t, kt.name())));
            if type_ok && s.exists(now) && pattern.is_none_or(|p| glob::matches(p, k, false)) {
                found.push(k.to_vec());
            }
        }
        if pos >= map.positions() {
            shard_i += 1;
            pos = 0;
        }
    }
    let next = match (shard_i >= shards, pos) {
        (true, _) => 0,
        (false, 0) => (shard_i as u64) << 48,
        (false, pos) => ((shard_i as u64) << 48) | (epoch_tag(epoch) << 32) | pos as u64,
    };
    x.out.array(2);
    x.out.bulk(next.to_string().as_bytes());
    x.out.array(found.len());
    for k in &found {
        x.out.bulk(k);
    }
    Ok(())
}

fn randomkey(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    let (db, now) = (x.session.db, x.now_ms);
    let total: usize = x.locked.shards().map(|s| s.dbs[db].live).sum();
    if total == 0 {
        x.out.null();
        return Ok(());
    }
    let mut pick = rand::random_range(0..total);
    let mut chosen: Option<Vec<u8>> = None;
    // Expired keys still count in `live` until deleted, so fall back to any
    // visible key when the pick lands on one.
    for shard in x.locked.shards() {
        let db = &shard.dbs[db];
        if pick >= db.live {
            pick -= db.live;
            continue;
        }
        chosen = db
            .map
            .iter()
            .filter(|(_, s)| s.exists(now))
            .nth(pick)
            .or_else(|| db.map.iter().find(|(_, s)| s.exists(now)))
            .map(|(k, _)| k.to_vec());
        if chosen.is_some() {
            break;
        }
        pick = 0;
    }
    x.out.bulk_or_null(chosen.as_deref());
    Ok(())
}

fn dbsize(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    let db = x.session.db;
    let n: usize = x.locked.shards().map(|s| s.dbs[db].live).sum();
    x.out.int(n as i64);
    Ok(())
}

/// A key's value as a client sees it: what COPY, RENAME and MOVE write
/// anew at their destination, and what DUMP serialises.
enum Value {
    Str(Vec<u8>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    Set(Vec<Vec<u8>>),
    ZSet(Vec<(Vec<u8>, f64)>),
    List(Vec<Vec<u8>>),
}

impl Value {
    fn of(state: &KeyState, now_ms: u64) -> Option<Value> {
        match state.key_type(now_ms)? {
            KeyType::String => Some(Value::Str(state.read(0).render()?.into_owned())),
            KeyType::Coll(Kind::Hash) => Some(Value::Hash(
                state
                    .coll()?
                    .fields()
                    .filter_map(|(f, v)| Some((f.to_vec(), v.render()?.into_owned())))
                    .collect(),
            )),
            KeyType::Coll(Kind::Set) => Some(Value::Set(
                state.coll()?.members().map(<[u8]>::to_vec).collect(),
            )),
            KeyType::Coll(Kind::ZSet) => Some(Value::ZSet(
                state
                    .coll()?
                    .zindex()
                    .iter()
                    .map(|e| (e.member.to_vec(), e.score))
                    .collect(),
            )),
            KeyType::Coll(Kind::List) => Some(Value::List(
                state.coll()?.list_iter().map(|(_, v)| v.to_vec()).collect(),
            )),
        }
    }

    /// Writes this value over whatever the writer's key holds, expiring at
    /// `at` (0: never): new writes, stamped here.
    fn write(&self, w: &mut Writer<'_>, at: u64) {
        match self {
            Value::Str(v) => w.set(Some(v), at),
            Value::Hash(_) | Value::Set(_) | Value::ZSet(_) | Value::List(_) => {
                if w.visible() {
                    w.set(None, 0);
                }
                let kind = match self {
                    Value::Hash(_) => Kind::Hash,
                    Value::Set(_) => Kind::Set,
                    Value::List(_) => Kind::List,
                    _ => Kind::ZSet,
                };
                let _ = w.coll_write(kind, |c, d, stamp| -> Result<(), ()> {
                    match self {
                        Value::Hash(fields) => {
                            for (f, v) in fields {
                                c.hset_into(d, stamp, f, v);
                            }
                        }
                        Value::Set(members) => {
                            for m in members {
                                c.sadd_into(d, stamp, m);
                            }
                        }
                        Value::ZSet(members) => {
                            for (m, score) in members {
                                c.zadd_into(d, stamp, m, *score);
                            }
                        }
                        Value::List(items) => {
                            for v in items {
                                c.list_push_into(d, stamp, false, v);
                            }
                        }
                        Value::Str(_) => {}
                    }
                    Ok(())
                });
                if at != 0 {
                    w.expire(at);
                }
            }
        }
    }

    /// DUMP's body: the kind byte, then the value (collections as
    /// length-prefixed items, lengths as u32 little-endian).
    fn encode(&self) -> Vec<u8> {
        fn item(out: &mut Vec<u8>, bytes: &[u8]) {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        match self {
            Value::Str(v) => [&[DUMP_STRING][..], v].concat(),
            Value::Hash(fields) => {
                let mut out = vec![DUMP_HASH];
                for (f, v) in fields {
                    item(&mut out, f);
                    item(&mut out, v);
                }
                out
            }
            Value::List(items) => {
                let mut out = vec![DUMP_LIST];
                for v in items {
                    item(&mut out, v);
                }
                out
            }
            Value::Set(members) => {
                let mut out = vec![DUMP_SET];
                for m in members {
                    item(&mut out, m);
                }
                out
            }
            Value::ZSet(members) => {
                let mut out = vec![DUMP_ZSET];
                for (m, score) in members {
                    item(&mut out, m);
                    item(&mut out, &score.to_le_bytes());
                }
                out
            }
        }
    }

    fn decode(body: &[u8]) -> Option<Value> {
        let (&kind, mut rest) = body.split_first()?;
        let mut items = Vec::new();
        if kind != DUMP_STRING {
            while !rest.is_empty() {
                let (len, tail) = rest.split_at_checked(4)?;
                let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
                let (item, tail) = tail.split_at_checked(len)?;
                items.push(item.to_vec());
                rest = tail;
            }
        }
        match kind {
            DUMP_STRING => Some(Value::Str(rest.to_vec())),
            DUMP_HASH if items.len() % 2 == 0 => {
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(f), Some(v)) = (it.next(), it.next()) {
                    pairs.push((f, v));
                }
                Some(Value::Hash(pairs))
            }
            DUMP_SET => Some(Value::Set(items)),
            DUMP_LIST => Some(Value::List(items)),
            DUMP_ZSET if items.len() % 2 == 0 => {
                let mut members = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(m), Some(s)) = (it.next(), it.next()) {
                    let score = f64::from_le_bytes(s.as_slice().try_into().ok()?);
                    if score.is_nan() {
                        return None;
                    }
                    members.push((m, score));
                }
                Some(Value::ZSet(members))
            }
            _ => None,
        }
    }
}

/// Copies `src`'s value and TTL to `dst` in database `dst_db`.
fn copy_value(x: &mut Exec, src: &[u8], dst: &[u8], dst_db: usize) -> CmdResult {
    move_value(x, src, dst, dst_db, false)
}

/// Writes `src`'s value (and expiry) to `dst` in `dst_db`; with `take`,
/// deletes `src` first (RENAME, MOVE: its notification comes first, as in
/// Redis).
fn move_value(x: &mut Exec, src: &[u8], dst: &[u8], dst_db: usize, take: bool) -> CmdResult {
    let now = x.now_ms;
    let (value, at) = match x.visible(src)? {
        Some(s) => (Value::of(s, now), s.expire_at_ms()),
        None => (None, 0),
    };
    let value = value.ok_or(Error::NoSuchKey)?;
    if take {
        x.set_value(src, None, 0)?;
    }
    x.update_in(dst_db, dst, |w| {
        value.write(w, at);
        Ok(())
    })
}

fn rename_generic(x: &mut Exec, args: &[&[u8]], nx: bool) -> CmdResult {
    let (src, dst) = (args[1], args[2]);
    if x.visible(src)?.is_none() {
        return Err(Error::NoSuchKey);
    }
    let done = if src == dst || (nx && x.visible(dst)?.is_some()) {
        false
    } else {
        let db = x.session.db;
        move_value(x, src, dst, db, true)?;
        true
    };
    if nx {
        x.out.int(i64::from(done));
    } else {
        x.out.ok();
    }
    Ok(())
}

fn rename(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    rename_generic(x, args, false)
}

fn renamenx(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    rename_generic(x, args, true)
}

fn parse_db(x: &Exec, arg: &[u8]) -> Result<usize, Error> {
    super::db_index_arg(arg, x.ks.databases())
}

fn copy(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (src, dst) = (args[1], args[2]);
    let mut dst_db = x.session.db;
    let mut replace = false;
    let mut options = Args::new(args, 3);
    while !options.is_empty() {
        if options.eat("REPLACE") {
            replace = true;
        } else if options.eat("DB") {
            dst_db = parse_db(x, options.value()?)?;
        } else {
            return Err(Error::Syntax);
        }
    }
    if src == dst && dst_db == x.session.db {
        return Err(Error::err("source and destination objects are the same"));
    }
    if x.visible(src)?.is_none() {
        x.out.int(0);
        return Ok(());
    }
    let now = x.now_ms;
    let dst_exists = {
        let shard = x.locked.shard(x.ks.shard_of(dst))?;
        shard.dbs[dst_db]
            .indexed(dst)
            .is_some_and(|s| s.exists(now))
    };
    if dst_exists && !replace {
        x.out.int(0);
        return Ok(());
    }
    copy_value(x, src, dst, dst_db)?;
    x.out.int(1);
    Ok(())
}

fn flush_mode(args: &[&[u8]]) -> CmdResult {
    match args.get(1) {
        None => Ok(()),
        Some(a) if args.len() == 2 && (is(a, "SYNC") || is(a, "ASYNC")) => Ok(()),
        _ => Err(Error::Syntax),
    }
}

fn flushdb(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    flush_mode(args)?;
    let db = x.session.db;
    x.ks.flush_local(&mut x.locked, Some(db));
    x.out.ok();
    Ok(())
}

fn flushall(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    flush_mode(args)?;
    x.ks.flush_local(&mut x.locked, None);
    x.out.ok();
    Ok(())
}

fn swapdb(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    // As Redis: both read as C ints, each with its own error, then both
    // checked against the databases.
    let parse = |a: &[u8], which: &'static str| -> Result<i64, Error> {
        int_arg(a)
            .ok()
            .filter(|n| i32::try_from(*n).is_ok())
            .ok_or(Error::err(which))
    };
    let (a, b) = (
        parse(args[1], "invalid first DB index")?,
        parse(args[2], "invalid second DB index")?,
    );
    let in_range = |n: i64| (0..x.ks.databases() as i64).contains(&n);
    if !in_range(a) || !in_range(b) {
        return Err(Error::DbRange);
    }
    let (a, b) = (a as usize, b as usize);
    if x.node.repl.is_some() {
        // Replicated writes name database numbers: a swap on one node would
        // send every later write of the swapped databases astray for good.
        return Err(Error::err(
            "SWAPDB is not allowed on a replicating node: a swap has no meaning across nodes",
        ));
    }
    for shard in x.locked.shards() {
        shard.dbs.swap(a, b);
        shard.swapped(a, b);
    }
    x.ks.note_swap();
    if let Some(persistence) = &x.node.persistence {
        persistence.log_swap(a, b);
    }
    x.ks.invalidations.changed_all();
    x.ks.watches.touched_db(Some(a));
    x.ks.watches.touched_db(Some(b));
    x.ks.waiters.wake_db(a);
    x.ks.waiters.wake_db(b);
    x.ks.note_local_write();
    x.out.ok();
    Ok(())
}

/// MOVE: the key goes to database `db` unless a key of that name is there.
/// Replicated as a write there and a delete here (the shard is the same:
/// it does not depend on the database).
fn move_(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let key = args[1];
    let to = parse_db(x, args[2])?;
    if to == x.session.db {
        return Err(Error::err("source and destination objects are the same"));
    }
    let now = x.now_ms;
    let taken = {
        let shard = x.locked.shard(x.ks.shard_of(key))?;
        shard.dbs[to].indexed(key).is_some_and(|s| s.exists(now))
    };
    if taken || x.visible(key)?.is_none() {
        x.out.int(0);
        return Ok(());
    }
    move_value(x, key, key, to, true)?;
    x.out.int(1);
    Ok(())
}

/// OBJECT: what Chorus knows of a key's representation. ENCODING names
/// Chorus's own structures (`register`: a last-writer-wins value;
/// `counter`: a value with per-node increments; `ormap`, `orset`: the
/// observed-remove hash and set; `packed-ormap`: a small hash in one
/// buffer), never Redis's.
fn object(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    if is(sub, "HELP") && args.len() == 2 {
        let lines = [
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ENCODING <key>",
            "    Return the kind of internal representation used in order to store the value",
            "    associated with a <key>: register (a last-writer-wins value), counter (a",
            "    value with per-node increments), ormap (a hash: an observed-remove map of",
            "    fields), packed-ormap (a small hash of plain fields, packed in one buffer),",
            "    orset (a set: an observed-remove set, add wins) or orzset (a sorted",
            "    set: an observed-remove set of members with scores, and a score index).",
            "FREQ <key>",
            "    Return the access frequency index of the key <key>: kept while maxmemory is",
            "    set with an LFU policy.",
            "IDLETIME <key>",
            "    Return the idle time of the key <key>: kept while maxmemory is set with any",
            "    other policy.",
            "REFCOUNT <key>",
            "    Return the number of references of the value associated with the specified",
            "    <key>: always 1, as values are never shared.",
            "HELP",
            "    Print this help.",
        ];
        x.out.lines(&lines);
        return Ok(());
    }
    let known = ["ENCODING", "FREQ", "IDLETIME", "REFCOUNT"];
    if args.len() != 3 || !known.iter().any(|k| is(sub, k)) {
        return Err(Error::unknown_subcommand("object", sub));
    }
    let Some(state) = x.visible(args[2])? else {
        x.out.null();
        return Ok(());
    };
    let counter = state.extras.as_ref().is_some_and(|e| !e.counts.is_empty());
    let encoding = match state.key_type(0) {
        Some(KeyType::Coll(Kind::Hash)) => match state.coll() {
            Some(c) if c.hash.is_packed() => "packed-ormap",
            _ => "ormap",
        },
        Some(KeyType::Coll(Kind::Set)) => "orset",
        Some(KeyType::Coll(Kind::ZSet)) => "orzset",
        Some(KeyType::Coll(Kind::List)) => "sequence",
        _ if counter => "counter",
        _ => "register",
    };
    if is(sub, "ENCODING") {
        x.out.bulk_str(encoding);
    } else if is(sub, "REFCOUNT") {
        x.out.int(1);
    } else {
        let clock = x.ks.limits.clock();
        let lfu_policy = x.ks.limits.policy().clock() == Some(crate::evict::Clock::Lfu);
        let word = x.db(args[2])?.map.entry(args[2]).map_or(0, |e| e.clock());
        let now = x.now_ms;
        const SWITCHING: &str = "Please note that when switching between policies at runtime \
                                 LRU and LFU data will take some time to adjust.";
        const NO_LIMIT: &str = "Chorus keeps access clocks only while maxmemory is set.";
        if is(sub, "FREQ") {
            if !lfu_policy {
                return Err(Error::err(format!(
                    "An LFU maxmemory policy is not selected, access frequency not tracked. \
                     {SWITCHING}"
                )));
            }
            if clock != Some(crate::evict::Clock::Lfu) {
                return Err(Error::err(format!(
                    "access frequency not tracked: {NO_LIMIT}"
                )));
            }
            x.out.int(crate::evict::lfu_count(word, now).into());
        } else {
            if lfu_policy {
                return Err(Error::err(format!(
                    "An LFU maxmemory policy is selected, idle time not tracked. {SWITCHING}"
                )));
            }
            if clock != Some(crate::evict::Clock::Lru) {
                return Err(Error::err(format!("idle time not tracked: {NO_LIMIT}")));
            }
            x.out
                .int((crate::evict::lru_idle_ms(word, now) / 1000) as i64);
        }
    }
    Ok(())
}

/// MEMORY USAGE: an estimate of the bytes a key holds, as Redis's is: its
/// slot in the table, its name past what fits inline, its value and CRDT
/// metadata, and its entry in the expiry index. Allocator rounding and the
/// table's spare room are not counted. SAMPLES is accepted and has nothing
/// to sample (a value is one allocation).
fn memory(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    if is(sub, "HELP") && args.len() == 2 {
        let lines = [
            "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "USAGE <key> [SAMPLES <count>]",
            "    Return the estimated memory usage of <key>: its entry, name, value and",
            "    CRDT metadata, and its expiry index entry.",
            "STATS",
            "    Show memory usage details: the allocator's count, its peak and start-up",
            "    figures, the replication backlog, the AOF buffer, keys, and the dataset.",
            "PURGE",
            "    Return freed memory to the system (glibc's malloc_trim).",
            "HELP",
            "    Print this help.",
        ];
        x.out.lines(&lines);
        return Ok(());
    }
    if is(sub, "STATS") && args.len() == 2 {
        return memory_stats(x);
    }
    if is(sub, "PURGE") && args.len() == 2 {
        crate::alloc::give_back_free_pages();
        x.out.ok();
        return Ok(());
    }
    if !is(sub, "USAGE") || args.len() < 3 {
        return Err(Error::unknown_subcommand("memory", sub));
    }
    let mut options = Args::new(args, 3);
    while !options.is_empty() {
        if options.eat("SAMPLES") {
            if options.int()? < 0 {
                return Err(Error::Syntax);
            }
        } else {
            return Err(Error::Syntax);
        }
    }
    let key = args[2];
    let Some((state_bytes, expires)) = x
        .visible(key)?
        .map(|s| (s.heap_bytes(), s.expire_at_ms() != 0))
    else {
        x.out.null();
        return Ok(());
    };
    let name = crate::key::Key::new(key);
    let name_heap = if name.is_heap() { key.len() } else { 0 };
    let slot = std::mem::size_of::<(crate::key::Key, chorus_crdt::KeyState)>() + 1;
    let expiry = if expires {
        std::mem::size_of::<(u64, crate::key::Key)>() + name_heap
    } else {
        0
    };
    x.out.int((slot + name_heap + state_bytes + expiry) as i64);
    Ok(())
}

/// MEMORY STATS, with Redis's field names where Chorus has the figure.
fn memory_stats(x: &mut Exec) -> CmdResult {
    let rss = crate::info::rss_bytes();
    let total = crate::alloc::used_bytes().map_or(rss, |b| b as u64);
    let peak = (crate::alloc::peak_bytes() as u64).max(total);
    let startup = (crate::alloc::startup_bytes() as u64).min(total);
    let backlog = x
        .node
        .repl
        .as_ref()
        .map_or(0, |r| r.buffered_bytes() as u64);
    let aof = x
        .node
        .persistence
        .as_ref()
        .and_then(|p| p.log.as_ref())
        .map_or(0, |log| log.buffered_bytes() as u64);
    let keys = x.ks.live_keys.load(std::sync::atomic::Ordering::Relaxed) as usize;
    let overhead = startup + backlog + aof;
    let dataset = total.saturating_sub(overhead);
    let percent = |part: u64, whole: u64| part as f64 * 100.0 / whole.max(1) as f64;
    x.out.map(14);
    let ints: [(&str, u64); 6] = [
        ("peak.allocated", peak),
        ("total.allocated", total),
        ("startup.allocated", startup),
        ("replication.backlog", backlog),
        ("aof.buffer", aof),
        ("overhead.total", overhead),
    ];
    for (name, value) in ints {
        x.out.bulk_str(name);
        x.out.int(value as i64);
    }
    x.out.bulk_str("keys.count");
    x.out.int(keys as i64);
    x.out.bulk_str("keys.bytes-per-key");
    x.out
        .int((total.saturating_sub(startup) / keys.max(1) as u64) as i64);
    x.out.bulk_str("dataset.bytes");
    x.out.int(dataset as i64);
    x.out.bulk_str("dataset.percentage");
    x.out
        .double(percent(dataset, total.saturating_sub(startup)));
    x.out.bulk_str("peak.percentage");
    x.out.double(percent(total, peak));
    x.out.bulk_str("allocator.resident");
    x.out.int(rss as i64);
    x.out.bulk_str("fragmentation");
    x.out.double(rss as f64 / total.max(1) as f64);
    x.out.bulk_str("fragmentation.bytes");
    x.out.int(rss as i64 - total as i64);
    Ok(())
}

/// DUMP's payload, Chorus's own: a magic, a format version, the kind of
/// value, the value, and a 64-bit FNV-1a checksum of all that before it.
/// A key's value only: a RESTORE is a new write, never a copy of another
/// node's CRDT state (its stamps mean nothing in another cluster).
const DUMP_MAGIC: &[u8] = b"CHRS";
const DUMP_VERSION: u8 = 1;
/// The kinds of value a payload holds.
const DUMP_STRING: u8 = 0;
const DUMP_HASH: u8 = 1;
const DUMP_SET: u8 = 2;
const DUMP_ZSET: u8 = 3;
const DUMP_LIST: u8 = 4;

fn dump_payload(value: &Value) -> Vec<u8> {
    let body = value.encode();
    let mut out = Vec::with_capacity(body.len() + 13);
    out.extend_from_slice(DUMP_MAGIC);
    out.push(DUMP_VERSION);
    out.extend_from_slice(&body);
    let sum = chorus_crdt::conflict::fnv1a64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// The value in a payload, if it is one this version wrote intact.
fn undump(payload: &[u8]) -> Option<Value> {
    let (body, sum) = payload.split_at_checked(payload.len().checked_sub(8)?)?;
    if chorus_crdt::conflict::fnv1a64(body).to_le_bytes() != sum {
        return None;
    }
    let rest = body.strip_prefix(DUMP_MAGIC)?;
    match rest {
        [DUMP_VERSION, body @ ..] => Value::decode(body),
        _ => None,
    }
}

fn dump(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let now = x.now_ms;
    let value = x.visible(args[1])?.and_then(|s| Value::of(s, now));
    match value {
        Some(value) => x.out.bulk(&dump_payload(&value)),
        None => x.out.null(),
    }
    Ok(())
}

/// RESTORE: writes the payload's value as a new write. IDLETIME and FREQ
/// are checked as Redis checks them and have nothing to set (Chorus keeps
/// no access time or frequency).
fn restore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let key = args[1];
    let ttl = int_arg(args[2])?;
    let (mut replace, mut absolute, mut idle, mut freq) = (false, false, false, false);
    let mut options = Args::new(args, 4);
    while !options.is_empty() {
        if options.eat("REPLACE") {
            replace = true;
        } else if options.eat("ABSTTL") {
            absolute = true;
        } else if options.eat("IDLETIME") && !freq {
            if options.int()? < 0 {
                return Err(Error::err("Invalid IDLETIME value, must be >= 0"));
            }
            idle = true;
        } else if options.eat("FREQ") && !idle {
            if !(0..=255).contains(&options.int()?) {
                return Err(Error::err("Invalid FREQ value, must be >= 0 and <= 255"));
            }
            freq = true;
        } else {
            return Err(Error::Syntax);
        }
    }
    if ttl < 0 {
        return Err(Error::err("Invalid TTL value, must be >= 0"));
    }
    if !replace && x.visible(key)?.is_some() {
        return Err(Error::BusyKey);
    }
    let value =
        undump(args[3]).ok_or_else(|| Error::err("DUMP payload version or checksum are wrong"))?;
    let expire_at = match (ttl, absolute) {
        (0, _) => 0,
        (t, true) => t as u64,
        (t, false) => x.now_ms.saturating_add(t as u64),
    };
    if expire_at != 0 && expire_at <= x.now_ms {
        // Already expired: nothing is created (a replaced key goes).
        if replace {
            x.delete(key)?;
        }
    } else {
        x.update(key, |w| {
            value.write(w, expire_at);
            Ok(())
        })?;
    }
    x.out.ok();
    Ok(())
}
