//! Hash commands (Redis's `t_hash.c`): each field a register or a counter
//! as a string key is, fields an observed-remove map (DESIGN.md, Data
//! model; docs/crdt-semantics.md).

use chorus_crdt::number::{format_float, parse_int, parse_score};
use chorus_crdt::{Coll, Kind, Read, Written};

use super::keys::{parse_cursor, scan_options};
use super::sets::{random_count_arg, random_distinct, random_repeating};
use super::Flag::*;
use super::{counted, int_arg, is, reply_read, CmdResult, Error, Exec, Flags, Keys, Spec};
use crate::glob;

#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    Spec { name: "hset", arity: -4, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field value [field value ...]", summary: "Creates or modifies the value of a field in a hash.", run: hset },
    Spec { name: "hmset", arity: -4, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field value [field value ...]", summary: "Sets the values of multiple fields.", run: hmset },
    Spec { name: "hsetnx", arity: 4, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field value", summary: "Sets the value of a field in a hash only when the field doesn't exist.", run: hsetnx },
    Spec { name: "hget", arity: 3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field", summary: "Returns the value of a field in a hash.", run: hget },
    Spec { name: "hmget", arity: -3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field [field ...]", summary: "Returns the values of all fields in a hash.", run: hmget },
    Spec { name: "hgetall", arity: 2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key", summary: "Returns all fields and values in a hash.", run: hgetall },
    Spec { name: "hkeys", arity: 2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key", summary: "Returns all fields in a hash.", run: hkeys },
    Spec { name: "hvals", arity: 2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key", summary: "Returns all values in a hash.", run: hvals },
    Spec { name: "hlen", arity: 2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key", summary: "Returns the number of fields in a hash.", run: hlen },
    Spec { name: "hexists", arity: 3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field", summary: "Determines whether a field exists in a hash.", run: hexists },
    Spec { name: "hstrlen", arity: 3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field", summary: "Returns the length of the value of a field.", run: hstrlen },
    Spec { name: "hdel", arity: -3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field [field ...]", summary: "Deletes one or more fields and their values from a hash. Deletes the hash if no fields remain.", run: hdel },
    Spec { name: "hrandfield", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key [count [WITHVALUES]]", summary: "Returns one or more random fields from a hash.", run: hrandfield },
    Spec { name: "hscan", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key cursor [MATCH pattern] [COUNT count] [NOVALUES]", summary: "Iterates over fields and values of a hash.", run: hscan },
    Spec { name: "hincrby", arity: 4, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field increment", summary: "Increments the integer value of a field in a hash by a number. Uses 0 as initial value if the field doesn't exist.", run: hincrby },
    Spec { name: "hincrbyfloat", arity: 4, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "hash", syntax: "key field increment", summary: "Increments the floating point value of a field by a number. Uses 0 as initial value if the field doesn't exist.", run: hincrbyfloat },
];

fn pairs<'a>(args: &'a [&'a [u8]], name: &'static str) -> Result<&'a [&'a [u8]], Error> {
    let pairs = &args[2..];
    if !pairs.len().is_multiple_of(2) {
        return Err(Error::Arity(name.into()));
    }
    Ok(pairs)
}

/// Writes the pairs; returns how many fields were new.
fn hset_pairs(x: &mut Exec, key: &[u8], pairs: &[&[u8]]) -> Result<i64, Error> {
    let slow = |c: &Coll, d: &mut Coll, stamp| {
        let mut added = 0;
        for p in pairs.chunks_exact(2) {
            if c.field(p[0]).is_none() && d.field_elem(p[0]).is_none_or(|e| e.writes.is_empty()) {
                added += 1;
            }
            c.hset_into(d, stamp, p[0], p[1]);
        }
        Ok(added)
    };
    if let [field, value] = pairs {
        // One field: its delta laid out by the sink, no delta `Coll` filled.
        let one = |w: &mut crate::keyspace::Writer<'_>| {
            w.one_in_place(Kind::Hash, field, |c, d, stamp| {
                let fresh = c.hset_here(stamp, field, value, d)?;
                Some((i64::from(fresh), Some(Written::Field(value))))
            })
        };
        return x.coll_update_with(key, Kind::Hash, one, slow);
    }
    let fast =
        |c: &mut Coll, mut d: Option<&mut chorus_crdt::ManyWrite>, stamp: chorus_crdt::Stamp| {
            // A field the in-place write declines (a counter, another node's
            // write) takes the general path, for all of them.
            if pairs.len() > 2
                && pairs
                    .chunks_exact(2)
                    .any(|p| !c.writes_in_place(Kind::Hash, p[0], stamp.node))
            {
                return None;
            }
            let mut added = 0;
            for p in pairs.chunks_exact(2) {
                added += i64::from(c.hset_here(stamp, p[0], p[1], d.as_deref_mut())?);
            }
            Some(added)
        };
    x.coll_update_many(key, Kind::Hash, fast, slow)
}

fn hset(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let pairs = pairs(args, "hset")?;
    let added = hset_pairs(x, args[1], pairs)?;
    x.out.int(added);
    Ok(())
}

fn hmset(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let pairs = pairs(args, "hmset")?;
    hset_pairs(x, args[1], pairs)?;
    x.out.ok();
    Ok(())
}

fn hsetnx(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if x.coll(args[1], Kind::Hash)?
        .0
        .is_some_and(|c| c.field(args[2]).is_some())
    {
        x.out.int(0);
        return Ok(());
    }
    hset_pairs(x, args[1], &args[2..4])?;
    x.out.int(1);
    Ok(())
}

fn hget(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (c, out) = x.coll(args[1], Kind::Hash)?;
    let read = c.and_then(|c| c.field(args[2])).unwrap_or(Read::Absent);
    reply_read(out, read);
    Ok(())
}

fn hmget(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let fields = &args[2..];
    let (c, out) = x.coll(args[1], Kind::Hash)?;
    out.array(fields.len());
    for f in fields {
        reply_read(out, c.and_then(|c| c.field(f)).unwrap_or(Read::Absent));
    }
    Ok(())
}

/// HGETALL, HKEYS, HVALS: fields and/or values, by field.
fn list(x: &mut Exec, key: &[u8], keys: bool, values: bool) -> CmdResult {
    let (c, out) = x.coll(key, Kind::Hash)?;
    let n = c.map_or(0, |c| c.len(Kind::Hash));
    if keys && values {
        out.map(n);
    } else {
        out.array(n);
    }
    for (f, v) in c.into_iter().flat_map(|c| c.fields()) {
        if keys {
            out.bulk(f);
        }
        if values {
            reply_read(out, v);
        }
    }
    Ok(())
}

fn hgetall(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    list(x, args[1], true, true)
}

fn hkeys(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    list(x, args[1], true, false)
}

fn hvals(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    list(x, args[1], false, true)
}

fn hlen(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let n = x
        .coll(args[1], Kind::Hash)?
        .0
        .map_or(0, |c| c.len(Kind::Hash));
    x.out.int(n as i64);
    Ok(())
}

fn hexists(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let found = x
        .coll(args[1], Kind::Hash)?
        .0
        .is_some_and(|c| c.field(args[2]).is_some());
    x.out.int(i64::from(found));
    Ok(())
}

fn hstrlen(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let len = x
        .coll(args[1], Kind::Hash)?
        .0
        .and_then(|c| c.field(args[2]))
        .and_then(|r| r.render().map(|v| v.len()))
        .unwrap_or(0);
    x.out.int(len as i64);
    Ok(())
}

fn hdel(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if x.coll(args[1], Kind::Hash)?.0.is_none() {
        x.out.int(0);
        return Ok(());
    }
    let removed = x.coll_update(args[1], Kind::Hash, |c, d, stamp| {
        let mut removed = 0;
        for f in &args[2..] {
            if c.field(f).is_some() && d.field_elem(f).is_none() {
                removed += 1;
            }
            c.remove_elem_into(d, Kind::Hash, f, stamp);
        }
        Ok(removed)
    })?;
    x.out.int(removed);
    Ok(())
}

/// The integer a field holds for HINCRBY, plus `by`; Redis's errors.
fn int_after(read: Read<'_>, by: i64) -> Result<i64, Error> {
    let current = match read {
        Read::Absent => 0,
        Read::Int(i) => i,
        Read::Str(v) => parse_int(v).ok_or(Error::err("hash value is not an integer"))?,
        Read::Float(f) => parse_int(format_float(f).as_bytes())
            .ok_or(Error::err("hash value is not an integer"))?,
    };
    current
        .checked_add(by)
        .ok_or(Error::err("increment or decrement would overflow"))
}

fn hincrby(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let by = int_arg(args[3])?;
    let field = args[2];
    // One walk of the hash in place, its delta laid out by the sink; an
    // error is left to the general path, which finds it again.
    let fast = |w: &mut crate::keyspace::Writer<'_>| {
        w.one_in_place(Kind::Hash, field, |c, mut d, stamp| {
            let check = |read: Read<'_>| int_after(read, by).ok();
            let new = c.hincr_here(stamp, field, (by, 0.0, false), check, d.as_deref_mut())?;
            Some((new, counted(Kind::Hash, d)))
        })
    };
    let new = x.coll_update_with(args[1], Kind::Hash, fast, |c, d, stamp| {
        let new = int_after(c.field(field).unwrap_or(Read::Absent), by)?;
        c.incr_into(d, Kind::Hash, field, stamp, (by, 0.0, false));
        Ok(new)
    })?;
    x.out.int(new);
    Ok(())
}

fn hincrbyfloat(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    // As Redis's strtold: "inf" is a number, refused as an increment.
    let by = parse_score(args[3]).ok_or(Error::NotFloat)?;
    if by.is_infinite() {
        return Err(Error::err("value is NaN or Infinity"));
    }
    let field = args[2];
    x.coll_update(args[1], Kind::Hash, |c, d, stamp| {
        let current = match c.field(field) {
            None | Some(Read::Absent) => 0.0,
            Some(Read::Int(i)) => i as f64,
            Some(Read::Float(f)) => f,
            Some(Read::Str(v)) => parse_score(v).ok_or(Error::err("hash value is not a float"))?,
        };
        let new = current + by;
        if !new.is_finite() {
            return Err(Error::err("increment would produce NaN or Infinity"));
        }
        c.incr_into(d, Kind::Hash, field, stamp, (0, by, true));
        Ok(())
    })?;
    // The value as HGET now reads it (the sum of the field's increments).
    let (c, out) = x.coll(args[1], Kind::Hash)?;
    reply_read(out, c.and_then(|c| c.field(field)).unwrap_or(Read::Absent));
    Ok(())
}

fn hrandfield(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let count = args.get(2).map(|a| random_count_arg(a)).transpose()?;
    let with_values = match args.get(3) {
        None => false,
        Some(a) if is(a, "WITHVALUES") && args.len() == 4 => true,
        Some(_) => return Err(Error::Syntax),
    };
    super::sets::check_paired_count(count, with_values)?;
    let (c, out) = x.coll(args[1], Kind::Hash)?;
    let Some(n) = count else {
        // One field: one walk of the tree.
        out.bulk_or_null(c.and_then(|c| c.pick(Kind::Hash, rand::random())));
        return Ok(());
    };
    let Some(c) = c else {
        out.array(0);
        return Ok(());
    };
    let picked = if n >= 0 {
        random_distinct(c, Kind::Hash, n as usize)
    } else {
        random_repeating(c, Kind::Hash, n.unsigned_abs())?
    };
    let value = |f: &[u8]| c.field(f).unwrap_or(Read::Absent);
    if with_values && out.resp3 {
        out.array(picked.len());
        for f in picked {
            out.array(2);
            out.bulk(f);
            reply_read(out, value(f));
        }
    } else {
        out.array(picked.len() * if with_values { 2 } else { 1 });
        for f in picked {
            out.bulk(f);
            if with_values {
                reply_read(out, value(f));
            }
        }
    }
    Ok(())
}

fn hscan(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let cursor = parse_cursor(args[2])?;
    let mut rest: Vec<&[u8]> = args.to_vec();
    let novalues = rest.last().is_some_and(|a| is(a, "NOVALUES")) && rest.len() > 3;
    if novalues {
        rest.pop();
    }
    let o = scan_options(&rest, 3, false)?;
    let (pattern, count) = (o.pattern, o.count);
    let (c, out) = x.coll(args[1], Kind::Hash)?;
    let mut found: Vec<(&[u8], Read)> = Vec::new();
    let mut next = 0;
    if let Some(c) = c {
        let (fields, n) = c.scan(Kind::Hash, cursor, count);
        next = n;
        for f in fields {
            if pattern.is_none_or(|p| glob::matches(p, f, false)) {
                found.push((f, c.field(f).unwrap_or(Read::Absent)));
            }
        }
    }
    out.array(2);
    out.bulk(next.to_string().as_bytes());
    out.array(found.len() * if novalues { 1 } else { 2 });
    for (f, v) in found {
        out.bulk(f);
        if !novalues {
            reply_read(out, v);
        }
    }
    Ok(())
}
