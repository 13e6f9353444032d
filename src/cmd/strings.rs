//! String and counter commands (Redis's `t_string.c`): thin commands over a
//! few shared helpers, as `setnx`/`setex` sit over `setGenericCommand`.

use chorus_crdt::number::{format_float, parse_int, parse_score};
use chorus_crdt::Read;

use crate::keyspace::Writer;

use super::Flag::*;
use super::{int_arg, is, reply_read, Args, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};

pub static COMMANDS: &[Spec] = &[
    Spec { name: "get", arity: 2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key", summary: "Returns the string value of a key.", run: get },
    Spec { name: "set", arity: -3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]", summary: "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.", run: set },
    Spec { name: "setnx", arity: 3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key value", summary: "Set the string value of a key only when the key doesn't exist.", run: setnx },
    Spec { name: "setex", arity: 4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key seconds value", summary: "Sets the string value and expiration time of a key.", run: setex },
    Spec { name: "psetex", arity: 4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key milliseconds value", summary: "Sets both string value and expiration time in milliseconds of a key.", run: psetex },
    Spec { name: "getset", arity: 3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key value", summary: "Returns the previous string value of a key after setting it to a new value.", run: getset },
    Spec { name: "getdel", arity: 2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key", summary: "Returns the string value of a key after deleting the key.", run: getdel },
    Spec { name: "getex", arity: -2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|PERSIST]", summary: "Returns the string value of a key after setting its expiration time.", run: getex },
    Spec { name: "mget", arity: -2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, -1, 1), group: "string", syntax: "key ...", summary: "Atomically returns the string values of one or more keys.", run: mget },
    Spec { name: "mset", arity: -3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, -1, 2), group: "string", syntax: "(key value) ...", summary: "Atomically creates or modifies the string values of one or more keys.", run: mset },
    Spec { name: "msetnx", arity: -3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, -1, 2), group: "string", syntax: "(key value) ...", summary: "Atomically modifies the string values of one or more keys only when all keys don't exist.", run: msetnx },
    Spec { name: "append", arity: 3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key value", summary: "Appends a string to the value of a key. Creates the key if it doesn't exist.", run: append },
    Spec { name: "strlen", arity: 2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key", summary: "Returns the length of a string value.", run: strlen },
    Spec { name: "getrange", arity: 4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key start end", summary: "Returns a substring of the string stored at a key.", run: getrange },
    Spec { name: "substr", arity: 4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key start end", summary: "Returns a substring from a string value.", run: getrange },
    Spec { name: "setrange", arity: 4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key offset value", summary: "Overwrites a part of a string value with another by an offset. Creates the key if it doesn't exist.", run: setrange },
    Spec { name: "lcs", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 2, 1), group: "string", syntax: "key1 key2 [LEN] [IDX] [MINMATCHLEN min-match-len] [WITHMATCHLEN]", summary: "Finds the longest common substring.", run: lcs },
    Spec { name: "incr", arity: 2, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key", summary: "Increments the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.", run: incr },
    Spec { name: "decr", arity: 2, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key", summary: "Decrements the integer value of a key by one. Uses 0 as initial value if the key doesn't exist.", run: decr },
    Spec { name: "incrby", arity: 3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key increment", summary: "Increments the integer value of a key by a number. Uses 0 as initial value if the key doesn't exist.", run: incrby },
    Spec { name: "decrby", arity: 3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key decrement", summary: "Decrements a number from the integer value of a key. Uses 0 as initial value if the key doesn't exist.", run: decrby },
    Spec { name: "incrbyfloat", arity: 3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "string", syntax: "key increment", summary: "Increment the floating point value of a key by a number. Uses 0 as initial value if the key doesn't exist.", run: incrbyfloat },
];

fn get(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let key = args[1];
    let now = x.now_ms;
    let db = x.session.db;
    let shard = x.locked.shard(x.ks.shard_of(key))?;
    let state = shard.dbs[db].get(key);
    let read = state.map_or(Read::Absent, |s| s.read(now));
    if matches!(read, Read::Absent) {
        if state.is_some_and(|s| matches!(s.key_type(now), Some(chorus_crdt::KeyType::Coll(_)))) {
            return Err(Error::WrongType);
        }
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

/// The TTL options of SET (KEEPTTL) and GETEX (PERSIST), and both's EX,
/// PX, EXAT and PXAT, as Redis reads them: one of them may come again (its
/// last value counts, and only that one is read), another may not.
#[derive(Default)]
struct TtlOptions<'a> {
    given: Option<(&'static str, Option<&'a [u8]>)>,
}

impl<'a> TtlOptions<'a> {
    /// Takes `option` (and its value, from `options`) if it is a TTL
    /// option of the command (`set`: SET's, else GETEX's).
    fn take(&mut self, option: &[u8], options: &mut Args<'a>, set: bool) -> Result<bool, Error> {
        let own = if set { "KEEPTTL" } else { "PERSIST" };
        let Some(name) = [own, "EX", "PX", "EXAT", "PXAT"]
            .into_iter()
            .find(|n| is(option, n))
        else {
            return Ok(false);
        };
        if self.given.is_some_and(|(given, _)| given != name) {
            return Err(Error::Syntax);
        }
        let value = if name == own {
            None
        } else {
            Some(options.value()?)
        };
        self.given = Some((name, value));
        Ok(true)
    }

    /// The TTL the options ask for, its value read now (`cmd` names the
    /// command in Redis's error).
    fn ttl(&self, now_ms: u64, cmd: &str) -> Result<Ttl, Error> {
        let Some((name, value)) = self.given else {
            return Ok(Ttl::Unset);
        };
        let Some(value) = value else {
            return Ok(if name == "KEEPTTL" {
                Ttl::Keep
            } else {
                Ttl::Persist
            });
        };
        let unit_ms: i64 = if name.starts_with('E') { 1000 } else { 1 };
        let absolute = name.len() == 4;
        let n = int_arg(value)?;
        let invalid = || Error::err(format!("invalid expire time in '{cmd}' command"));
        if n <= 0 {
            return Err(invalid());
        }
        let ms = n.checked_mul(unit_ms).ok_or_else(invalid)?;
        let at = if absolute {
            ms
        } else {
            ms.checked_add(now_ms as i64).ok_or_else(invalid)?
        };
        Ok(Ttl::At(at as u64))
    }
}

fn set(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (key, value) = (args[1], args[2]);
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut ttl = TtlOptions::default();
    let mut options = Args::new(args, 3);
    while let Some(a) = options.next() {
        if is(a, "NX") && !xx {
            nx = true;
        } else if is(a, "XX") && !nx {
            xx = true;
        } else if is(a, "GET") {
            get = true;
        } else if !ttl.take(a, &mut options, true)? {
            return Err(Error::Syntax);
        }
    }
    let ttl = ttl.ttl(x.now_ms, "set")?;
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
        let old = if get { super::str_value(w)? } else { None };
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
    let invalid = || Error::err(format!("invalid expire time in '{cmd}' command"));
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
        let value = super::str_value(w)?;
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
    let mut ttl = TtlOptions::default();
    let mut options = Args::new(args, 2);
    while let Some(a) = options.next() {
        if !ttl.take(a, &mut options, false)? {
            return Err(Error::Syntax);
        }
    }
    let at = match ttl.ttl(x.now_ms, "getex")? {
        Ttl::At(at) => Some(at),
        Ttl::Persist => Some(0),
        _ => None,
    };
    let value = x.update(key, |w| {
        let value = super::str_value(w)?;
        // PERSIST of a key without a TTL changes nothing.
        let persisting_nothing = at == Some(0) && w.state().expire_at_ms() == 0;
        if let (Some(_), Some(at)) = (&value, at) {
            if !persisting_nothing {
                w.expire(at);
            }
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
        return Err(Error::Arity("mset".into()));
    }
    for pair in args[1..].chunks(2) {
        x.set_value(pair[0], Some(pair[1]), 0)?;
    }
    x.out.ok();
    Ok(())
}

fn msetnx(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if args.len() % 2 != 1 {
        return Err(Error::Arity("msetnx".into()));
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
        return Err(Error::err(
            "string exceeds maximum allowed size (proto-max-bulk-len)",
        ));
    }
    Ok(())
}

fn append(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let max = x.server.tunables.max_bulk();
    let len = x.update(args[1], |w| {
        let at = w.kept_expiry();
        let mut value = super::str_value(w)?.unwrap_or_default();
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
        return Err(Error::err("offset is out of range"));
    }
    let offset = offset as usize;
    let patch = args[3];
    let max = x.server.tunables.max_bulk();
    let len = x.update(args[1], |w| {
        let at = w.kept_expiry();
        let mut value = super::str_value(w)?.unwrap_or_default();
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
    if w.shows_collection() {
        return Err(Error::WrongType);
    }
    match w.state().read(0) {
        Read::Absent => Ok(0),
        Read::Int(i) => Ok(i),
        Read::Str(v) => parse_int(v).ok_or(Error::NotInteger),
        Read::Float(f) => parse_int(format_float(f).as_bytes()).ok_or(Error::NotInteger),
    }
}

fn incr_generic(x: &mut Exec, key: &[u8], by: i64) -> CmdResult {
    let new = x.update(key, |w| {
        let new = current_int(w)?
            .checked_add(by)
            .ok_or(Error::err("increment or decrement would overflow"))?;
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
        .ok_or(Error::err("decrement would overflow"))?;
    incr_generic(x, args[1], by)
}

fn incrbyfloat(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    // As Redis's strtold: an infinite increment, or value, is a number,
    // refused below for what it would make.
    let by = parse_score(args[2]).ok_or(Error::NotFloat)?;
    let shown = x.update(args[1], |w| {
        let current = if !w.visible() {
            0.0
        } else if w.shows_collection() {
            return Err(Error::WrongType);
        } else {
            match w.state().read(0) {
                Read::Absent => 0.0,
                Read::Int(i) => i as f64,
                Read::Float(f) => f,
                Read::Str(v) => parse_score(v).ok_or(super::Error::NotFloat)?,
            }
        };
        if !(current + by).is_finite() {
            return Err(Error::err("increment would produce NaN or Infinity"));
        }
        w.incr(0, by, true);
        Ok(super::str_value(w)?.unwrap_or_default())
    })?;
    x.out.bulk(&shown);
    Ok(())
}

/// LCS, Redis's algorithm: a table of common-subsequence lengths, walked
/// back from the end to build the string and, with IDX, the matching
/// ranges (last first, as Redis lists them).
fn lcs(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (mut len_only, mut idx, mut min_match, mut with_len) = (false, false, 0i64, false);
    let mut options = Args::new(args, 3);
    while !options.is_empty() {
        if options.eat("LEN") {
            len_only = true;
        } else if options.eat("IDX") {
            idx = true;
        } else if options.eat("WITHMATCHLEN") {
            with_len = true;
        } else if options.eat("MINMATCHLEN") {
            min_match = options.int()?.max(0);
        } else {
            return Err(Error::Syntax);
        }
    }
    if len_only && idx {
        return Err(Error::err(
            "If you want both the length and indexes, please just use IDX.",
        ));
    }
    let not_strings = |e| match e {
        Error::WrongType => Error::err("The specified keys must contain string values"),
        e => e,
    };
    let a = x.value(args[1]).map_err(not_strings)?.unwrap_or_default();
    let b = x.value(args[2]).map_err(not_strings)?.unwrap_or_default();
    let cells = (a.len() as u128 + 1) * (b.len() as u128 + 1) * 4;
    if cells > x.server.tunables.max_bulk() as u128 {
        return Err(Error::err(
            "Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len",
        ));
    }
    let width = b.len() + 1;
    let mut table = vec![0u32; (a.len() + 1) * width];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let at = |i: usize, j: usize| table[i * width + j];
    let total = at(a.len(), b.len()) as usize;
    if len_only {
        x.out.int(total as i64);
        return Ok(());
    }
    let mut common = vec![0u8; total];
    let mut matches: Vec<[usize; 4]> = Vec::new();
    let (mut i, mut j, mut k) = (a.len(), b.len(), total);
    let none = a.len();
    let (mut a_start, mut a_end, mut b_start, mut b_end) = (none, 0, 0, 0);
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            common[k - 1] = a[i - 1];
            if a_start == none {
                (a_start, a_end, b_start, b_end) = (i - 1, i - 1, j - 1, j - 1);
            } else if a_start == i && b_start == j {
                a_start -= 1;
                b_start -= 1;
            } else {
                emit = true;
            }
            if a_start == 0 || b_start == 0 {
                emit = true;
            }
            k -= 1;
            i -= 1;
            j -= 1;
        } else {
            if at(i - 1, j) > at(i, j - 1) {
                i -= 1;
            } else {
                j -= 1;
            }
            emit = a_start != none;
        }
        if emit {
            if a_end - a_start + 1 >= min_match as usize {
                matches.push([a_start, a_end, b_start, b_end]);
            }
            a_start = none;
        }
    }
    if !idx {
        x.out.bulk(&common);
        return Ok(());
    }
    x.out.map(2);
    x.out.bulk_str("matches");
    x.out.array(matches.len());
    for [a0, a1, b0, b1] in matches {
        x.out.array(if with_len { 3 } else { 2 });
        for (start, end) in [(a0, a1), (b0, b1)] {
            x.out.array(2);
            x.out.int(start as i64);
            x.out.int(end as i64);
        }
        if with_len {
            x.out.int((a1 - a0 + 1) as i64);
        }
    }
    x.out.bulk_str("len");
    x.out.int(total as i64);
    Ok(())
}
