//! String and counter commands (Redis's `t_string.c`): thin commands over a
//! few shared helpers, as `setnx`/`setex` sit over `setGenericCommand`.

use chorus_crdt::number::{format_float, parse_float, parse_int};
use chorus_crdt::Read;

use crate::keyspace::Writer;

use super::flag::*;
use super::{
    float_arg, int_arg, is, reply_read, CmdResult, Error, Exec, Spec, NOT_INTEGER, SYNTAX,
};

pub static COMMANDS: &[Spec] = &[
    Spec { name: "get", arity: 2, flags: READONLY | FAST, keys: (1, 1, 1), group: "string", summary: "Returns the string value of a key.", run: get },
    Spec { name: "set", arity: -3, flags: WRITE, keys: (1, 1, 1), group: "string", summary: "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.", run: set },
    Spec { name: "setnx", arity: 3, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Set the string value of a key only when the key doesn't exist.", run: setnx },
    Spec { name: "setex", arity: 4, flags: WRITE, keys: (1, 1, 1), group: "string", summary: "Sets the string value and expiration time of a key.", run: setex },
    Spec { name: "psetex", arity: 4, flags: WRITE, keys: (1, 1, 1), group: "string", summary: "Sets both string value and expiration time in milliseconds of a key.", run: psetex },
    Spec { name: "getset", arity: 3, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Returns the previous string value of a key after setting it to a new value.", run: getset },
    Spec { name: "getdel", arity: 2, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Returns the string value of a key after deleting the key.", run: getdel },
    Spec { name: "getex", arity: -2, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Returns the string value of a key after setting its expiration time.", run: getex },
    Spec { name: "mget", arity: -2, flags: READONLY | FAST, keys: (1, -1, 1), group: "string", summary: "Atomically returns the string values of one or more keys.", run: mget },
    Spec { name: "mset", arity: -3, flags: WRITE, keys: (1, -1, 2), group: "string", summary: "Atomically creates or modifies the string values of one or more keys.", run: mset },
    Spec { name: "msetnx", arity: -3, flags: WRITE, keys: (1, -1, 2), group: "string", summary: "Atomically modifies the string values of one or more keys only when all keys don't exist.", run: msetnx },
    Spec { name: "append", arity: 3, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Appends a string to the value of a key. Creates the key if it doesn't exist.", run: append },
    Spec { name: "strlen", arity: 2, flags: READONLY | FAST, keys: (1, 1, 1), group: "string", summary: "Returns the length of a string value.", run: strlen },
    Spec { name: "getrange", arity: 4, flags: READONLY, keys: (1, 1, 1), group: "string", summary: "Returns a substring of the string stored at a key.", run: getrange },
    Spec { name: "substr", arity: 4, flags: READONLY, keys: (1, 1, 1), group: "string", summary: "Returns a substring from a string value.", run: getrange },
    Spec { name: "setrange", arity: 4, flags: WRITE, keys: (1, 1, 1), group: "string", summary: "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist.", run: setrange },
    Spec { name: "incr", arity: 2, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.", run: incr },
    Spec { name: "decr", arity: 2, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.", run: decr },
    Spec { name: "incrby", arity: 3, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.", run: incrby },
    Spec { name: "decrby", arity: 3, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.", run: decrby },
    Spec { name: "incrbyfloat", arity: 3, flags: WRITE | FAST, keys: (1, 1, 1), group: "string", summary: "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist.", run: incrbyfloat },
];

fn get(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let key = args[1];
    let now = x.now_ms;
    let db = x.session.db;
    let shard = x.locked.shard(x.ks.shard_of(key))?;
    let read = shard.dbs[db].get(key).map_or(Read::Absent, |s| s.read(now));
    if matches!(read, Read::Absent) {
        shard.misses += 1;
    } else {
        shard.hits += 1;
    }
    reply_read(x.out, read);
    Ok(())
}

/// Expiry options shared by SET and GETEX.
#[derive(Clone, Copy, PartialEq)]
enum Ttl {
    /// No option: SET clears the TTL, GETEX leaves it.
    Unset,
    Keep,
    Persist,
    At(u64),
}

/// Parses `EX s | PX ms | EXAT s | PXAT ms` at `args[i]`; returns the
/// absolute expiry and how many arguments it used.
fn ttl_option(args: &[&[u8]], i: usize, now_ms: u64, cmd: &str) -> Result<Option<u64>, Error> {
    let unit_ms: i64 = match args[i] {
        a if is(a, "EX") || is(a, "EXAT") => 1000,
        a if is(a, "PX") || is(a, "PXAT") => 1,
        _ => return Ok(None),
    };
    let absolute = args[i].len() == 4;
    let n = int_arg(args.get(i + 1).ok_or(SYNTAX)?)?;
    let invalid = || Error::Owned(format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let ms = n.checked_mul(unit_ms).ok_or_else(invalid)?;
    let at = if absolute {
        ms
    } else {
        ms.checked_add(now_ms as i64).ok_or_else(invalid)?
    };
    Ok(Some(at as u64))
}

fn set(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (key, value) = (args[1], args[2]);
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut ttl = Ttl::Unset;
    let mut i = 3;
    while i < args.len() {
        let a = args[i];
        if is(a, "NX") && !xx {
            nx = true;
        } else if is(a, "XX") && !nx {
            xx = true;
        } else if is(a, "GET") {
            get = true;
        } else if is(a, "KEEPTTL") && ttl == Ttl::Unset {
            ttl = Ttl::Keep;
        } else if let Some(at) = ttl_option(args, i, x.now_ms, "set")? {
            if ttl != Ttl::Unset {
                return Err(SYNTAX);
            }
            ttl = Ttl::At(at);
            i += 1;
        } else {
            return Err(SYNTAX);
        }
        i += 1;
    }
    set_generic(x, key, value, nx, xx, get, ttl)
}

fn set_generic(
    x: &mut Exec,
    key: &[u8],
    value: &[u8],
    nx: bool,
    xx: bool,
    get: bool,
    ttl: Ttl,
) -> CmdResult {
    let (done, old) = x.update(key, |w| {
        let exists = w.visible();
        let old = if get { w.value() } else { None };
        if (nx && exists) || (xx && !exists) {
            return Ok((false, old));
        }
        let expire_at = match ttl {
            Ttl::At(at) => at,
            Ttl::Keep => w.kept_expiry(),
            _ => 0,
        };
        w.set(Some(value), expire_at);
        Ok((true, old))
    })?;
    match (get, done) {
        (true, _) => x.out.bulk_or_null(old.as_deref()),
        (false, false) => x.out.null(),
        (false, true) => x.out.ok(),
    }
    Ok(())
}

fn setnx(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let created = x.update(args[1], |w| {
        if w.visible() {
            return Ok(false);
        }
        w.set(Some(args[2]), 0);
        Ok(true)
    })?;
    x.out.int(i64::from(created));
    Ok(())
}

fn setex_generic(x: &mut Exec, args: &[&[u8]], unit_ms: i64, cmd: &str) -> CmdResult {
    let n = int_arg(args[2])?;
    let invalid = || Error::Owned(format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let at = n
        .checked_mul(unit_ms)
        .and_then(|ms| ms.checked_add(x.now_ms as i64))
        .ok_or_else(invalid)?;
    x.set_value(args[1], Some(args[3]), at as u64)?;
    x.out.ok();
    Ok(())
}

fn setex(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    setex_generic(x, args, 1000, "setex")
}

fn psetex(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    setex_generic(x, args, 1, "psetex")
}

fn getset(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    set_generic(x, args[1], args[2], false, false, true, Ttl::Unset)
}

fn getdel(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let value = x.update(args[1], |w| {
        let value = w.value();
        if value.is_some() {
            w.set(None, 0);
        }
        Ok(value)
    })?;
    x.out.bulk_or_null(value.as_deref());
    Ok(())
}

fn getex(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let key = args[1];
    let mut ttl = Ttl::Unset;
    let mut i = 2;
    while i < args.len() {
        if ttl != Ttl::Unset {
            return Err(SYNTAX);
        }
        if is(args[i], "PERSIST") {
            ttl = Ttl::Persist;
        } else if let Some(at) = ttl_option(args, i, x.now_ms, "getex")? {
            ttl = Ttl::At(at);
            i += 1;
        } else {
            return Err(SYNTAX);
        }
        i += 1;
    }
    let at = match ttl {
        Ttl::At(at) => Some(at),
        Ttl::Persist => Some(0),
        _ => None,
    };
    let value = x.update(key, |w| {
        let value = w.value();
        if let (Some(_), Some(at)) = (&value, at) {
            w.expire(at);
        }
        Ok(value)
    })?;
    x.out.bulk_or_null(value.as_deref());
    Ok(())
}

fn mget(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    x.out.array(args.len() - 1);
    let now = x.now_ms;
    let db = x.session.db;
    for key in &args[1..] {
        let shard = x.locked.shard(x.ks.shard_of(key))?;
        let read = shard.dbs[db].get(key).map_or(Read::Absent, |s| s.read(now));
        reply_read(x.out, read);
    }
    Ok(())
}

fn mset(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if args.len() % 2 != 1 {
        return Err(super::Error::Owned(super::wrong_arity("mset")));
    }
    for pair in args[1..].chunks(2) {
        x.set_value(pair[0], Some(pair[1]), 0)?;
    }
    x.out.ok();
    Ok(())
}

fn msetnx(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if args.len() % 2 != 1 {
        return Err(super::Error::Owned(super::wrong_arity("msetnx")));
    }
    for pair in args[1..].chunks(2) {
        if x.visible(pair[0])?.is_some() {
            x.out.int(0);
            return Ok(());
        }
    }
    for pair in args[1..].chunks(2) {
        x.set_value(pair[0], Some(pair[1]), 0)?;
    }
    x.out.int(1);
    Ok(())
}

fn check_size(max: usize, len: usize) -> CmdResult {
    if len > max {
        return Err(Error::Static(
            "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
        ));
    }
    Ok(())
}

fn append(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let max = x.node.tunables.max_bulk();
    let len = x.update(args[1], |w| {
        let at = w.kept_expiry();
        let mut value = w.value().unwrap_or_default();
        check_size(max, value.len() + args[2].len())?;
        value.extend_from_slice(args[2]);
        w.set(Some(&value), at);
        Ok(value.len())
    })?;
    x.out.int(len as i64);
    Ok(())
}

fn strlen(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let len = x.value(args[1])?.map_or(0, |v| v.len());
    x.out.int(len as i64);
    Ok(())
}

fn getrange(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (mut start, mut end) = (int_arg(args[2])?, int_arg(args[3])?);
    let value = x.value(args[1])?.unwrap_or_default();
    let len = value.len() as i64;
    if start < 0 && end < 0 && start > end {
        x.out.bulk(b"");
        return Ok(());
    }
    if start < 0 {
        start = (len + start).max(0);
    }
    if end < 0 {
        end = (len + end).max(0);
    }
    end = end.min(len - 1);
    if len == 0 || start > end {
        x.out.bulk(b"");
    } else {
        x.out.bulk(&value[start as usize..=end as usize]);
    }
    Ok(())
}

fn setrange(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let offset = int_arg(args[2])?;
    if offset < 0 {
        return Err(Error::Static("ERR offset is out of range"));
    }
    let offset = offset as usize;
    let patch = args[3];
    let max = x.node.tunables.max_bulk();
    let len = x.update(args[1], |w| {
        let at = w.kept_expiry();
        let mut value = w.value().unwrap_or_default();
        if patch.is_empty() {
            return Ok(value.len());
        }
        check_size(max, offset.saturating_add(patch.len()))?;
        if value.len() < offset + patch.len() {
            value.resize(offset + patch.len(), 0);
        }
        value[offset..offset + patch.len()].copy_from_slice(patch);
        w.set(Some(&value), at);
        Ok(value.len())
    })?;
    x.out.int(len as i64);
    Ok(())
}

/// The integer a key holds for INCR and friends (0 when absent).
fn current_int(w: &Writer) -> Result<i64, Error> {
    if !w.visible() {
        return Ok(0);
    }
    match w.state().read(0) {
        Read::Absent => Ok(0),
        Read::Int(i) => Ok(i),
        Read::Str(v) => parse_int(v).ok_or(NOT_INTEGER),
        Read::Float(f) => parse_int(format_float(f).as_bytes()).ok_or(NOT_INTEGER),
    }
}

fn incr_generic(x: &mut Exec, key: &[u8], by: i64) -> CmdResult {
    let new = x.update(key, |w| {
        let new = current_int(w)?
            .checked_add(by)
            .ok_or(Error::Static("ERR increment or decrement would overflow"))?;
        w.incr(by, 0.0, false);
        Ok(new)
    })?;
    x.out.int(new);
    Ok(())
}

fn incr(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    incr_generic(x, args[1], 1)
}

fn decr(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    incr_generic(x, args[1], -1)
}

fn incrby(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    incr_generic(x, args[1], int_arg(args[2])?)
}

fn decrby(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let by = int_arg(args[2])?;
    let by = by
        .checked_neg()
        .ok_or(Error::Static("ERR decrement would overflow"))?;
    incr_generic(x, args[1], by)
}

fn incrbyfloat(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let by = float_arg(args[2])?;
    let shown = x.update(args[1], |w| {
        let current = if !w.visible() {
            0.0
        } else {
            match w.state().read(0) {
                Read::Absent => 0.0,
                Read::Int(i) => i as f64,
                Read::Float(f) => f,
                Read::Str(v) => parse_float(v).ok_or(super::NOT_FLOAT)?,
            }
        };
        if !(current + by).is_finite() {
            return Err(Error::Static("ERR increment would produce NaN or Infinity"));
        }
        w.incr(0, by, true);
        Ok(w.value().unwrap_or_default())
    })?;
    x.out.bulk(&shown);
    Ok(())
}
