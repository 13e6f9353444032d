//! Set commands (Redis's `t_set.c`): an observed-remove set, add wins
//! (DESIGN.md, Data model; docs/crdt-semantics.md).

use std::collections::BTreeSet;

use chorus_crdt::{Coll, Kind, Written};

use super::keys::{parse_cursor, scan_options};
use super::Flag::*;
use super::{int_arg, pop_count, Args, CmdResult, Error, Exec, Flags, Keys, Spec};
use crate::glob;

#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    Spec { name: "sadd", arity: -3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member [member ...]", summary: "Adds one or more members to a set. Creates the key if it doesn't exist.", run: sadd },
    Spec { name: "srem", arity: -3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member [member ...]", summary: "Removes one or more members from a set. Deletes the set if the last member was removed.", run: srem },
    Spec { name: "sismember", arity: 3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member", summary: "Determines whether a member belongs to a set.", run: sismember },
    Spec { name: "smismember", arity: -3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member [member ...]", summary: "Determines whether multiple members belong to a set.", run: smismember },
    Spec { name: "smembers", arity: 2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key", summary: "Returns all members of a set.", run: smembers },
    Spec { name: "spop", arity: -2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key [count]", summary: "Returns one or more random members from a set after removing them. Deletes the set if the last member was popped.", run: spop },
    Spec { name: "srandmember", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key [count]", summary: "Get one or multiple random members from a set", run: srandmember },
    Spec { name: "smove", arity: 4, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 2, 1), group: "set", syntax: "source destination member", summary: "Moves a member from one set to another.", run: smove },
    Spec { name: "sinter", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, -1, 1), group: "set", syntax: "key [key ...]", summary: "Returns the intersect of multiple sets.", run: sinter },
    Spec { name: "sintercard", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::Counted { fixed: 0, count_at: 1 }, group: "set", syntax: "numkeys key [key ...] [LIMIT limit]", summary: "Returns the number of members of the intersect of multiple sets.", run: sintercard },
    Spec { name: "sinterstore", arity: -3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, -1, 1), group: "set", syntax: "destination key [key ...]", summary: "Stores the intersect of multiple sets in a key.", run: sinterstore },
    Spec { name: "sunion", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, -1, 1), group: "set", syntax: "key [key ...]", summary: "Returns the union of multiple sets.", run: sunion },
    Spec { name: "sunionstore", arity: -3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, -1, 1), group: "set", syntax: "destination key [key ...]", summary: "Stores the union of multiple sets in a key.", run: sunionstore },
    Spec { name: "sdiff", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, -1, 1), group: "set", syntax: "key [key ...]", summary: "Returns the difference of multiple sets.", run: sdiff },
    Spec { name: "sdiffstore", arity: -3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, -1, 1), group: "set", syntax: "destination key [key ...]", summary: "Stores the difference of multiple sets in a key.", run: sdiffstore },
    Spec { name: "sscan", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key cursor [MATCH pattern] [COUNT count]", summary: "Iterates over members of a set.", run: sscan },
    Spec { name: "scard", arity: 2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key", summary: "Returns the number of members in a set.", run: scard },
];

fn sadd(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let members = &args[2..];
    let slow = |c: &Coll, d: &mut Coll, stamp| {
        let mut added = 0;
        for m in members {
            if !c.is_member(m) && d.member_adds(m).is_none_or(|a| a.is_empty()) {
                added += 1;
            }
            // Re-adding a member takes a new dot: an add must survive a
            // concurrent SREM, whether or not the member was here.
            c.sadd_into(d, stamp, m);
        }
        Ok(added)
    };
    let added = if let [member] = members {
        // One member: its delta laid out by the sink, no delta `Coll` filled.
        let one = |w: &mut crate::keyspace::Writer<'_>| {
            w.one_in_place(Kind::Set, member, |c, d, stamp| {
                let fresh = c.sadd_here(stamp, member, d);
                Some((i64::from(fresh), Some(Written::Member)))
            })
        };
        x.coll_update_with(args[1], Kind::Set, one, slow)?
    } else {
        let fast = |c: &mut Coll, mut d: Option<&mut chorus_crdt::ManyWrite>, stamp| {
            let mut added = 0;
            for m in members {
                added += i64::from(c.sadd_here(stamp, m, d.as_deref_mut()));
            }
            Some(added)
        };
        x.coll_update_many(args[1], Kind::Set, fast, slow)?
    };
    x.out.int(added);
    Ok(())
}

fn srem(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let members = &args[2..];
    let held = x
        .coll(args[1], Kind::Set)?
        .0
        .is_some_and(|c| members.iter().any(|m| c.is_member(m)));
    if !held {
        x.out.int(0);
        return Ok(());
    }
    let removed = x.coll_update(args[1], Kind::Set, |c, d, stamp| {
        let mut removed = 0;
        for m in members {
            if c.is_member(m) && d.member_adds(m).is_none() {
                removed += 1;
                c.remove_elem_into(d, Kind::Set, m, stamp);
            }
        }
        Ok(removed)
    })?;
    x.out.int(removed);
    Ok(())
}

fn sismember(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let found = x
        .coll(args[1], Kind::Set)?
        .0
        .is_some_and(|c| c.is_member(args[2]));
    x.out.int(i64::from(found));
    Ok(())
}

fn smismember(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let members = &args[2..];
    let (c, out) = x.coll(args[1], Kind::Set)?;
    out.array(members.len());
    for m in members {
        out.int(i64::from(c.is_some_and(|c| c.is_member(m))));
    }
    Ok(())
}

fn smembers(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (c, out) = x.coll(args[1], Kind::Set)?;
    out.set(c.map_or(0, |c| c.len(Kind::Set)));
    for m in c.into_iter().flat_map(|c| c.members()) {
        out.bulk(m);
    }
    Ok(())
}

fn scard(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let n = x
        .coll(args[1], Kind::Set)?
        .0
        .map_or(0, |c| c.len(Kind::Set));
    x.out.int(n as i64);
    Ok(())
}

fn sscan(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let cursor = parse_cursor(args[2])?;
    let o = scan_options(args, 3, false)?;
    let (pattern, count) = (o.pattern, o.count);
    let (c, out) = x.coll(args[1], Kind::Set)?;
    let (members, next) = c.map_or((Vec::new(), 0), |c| c.scan(Kind::Set, cursor, count));
    let found: Vec<&[u8]> = members
        .into_iter()
        .filter(|m| pattern.is_none_or(|p| glob::matches(p, m, false)))
        .collect();
    out.array(2);
    out.bulk(next.to_string().as_bytes());
    out.array(found.len());
    for m in found {
        out.bulk(m);
    }
    Ok(())
}

/// Picks `n` distinct positions out of `len` (all when `n >= len`), in order.
pub fn pick_distinct(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    let mut picked = rand::seq::index::sample(&mut rand::rng(), len, n).into_vec();
    picked.sort_unstable();
    picked
}

/// Up to `n` distinct elements of `kind` at random. A few out of many are
/// random picks, one tree walk each (SPOP 10 of a million members costs
/// ten walks, not a million steps); more than a quarter, one pass over
/// all of them.
pub fn random_distinct(c: &Coll, kind: Kind, n: usize) -> Vec<&[u8]> {
    let len = c.len(kind);
    if n >= len {
        return c.scan(kind, 0, usize::MAX).0;
    }
    if n <= len / 4 {
        let mut seen = std::collections::HashSet::with_capacity(n);
        let mut out = Vec::with_capacity(n);
        // Elements that share a hash are picked only by the first of them
        // (crafted collisions could make too few reachable): the tries are
        // bounded, then the walk below serves.
        for _ in 0..4 * n + 16 {
            match c.pick(kind, rand::random()) {
                Some(m) if seen.insert(m) => out.push(m),
                Some(_) => {}
                None => break,
            }
            if out.len() == n {
                return out;
            }
        }
    }
    let all = c.scan(kind, 0, usize::MAX).0;
    pick_distinct(len, n).into_iter().map(|i| all[i]).collect()
}

/// A random-member COUNT (SRANDMEMBER, HRANDFIELD, ZRANDMEMBER): any
/// integer but i64::MIN, whose magnitude no i64 holds (Redis's range, and
/// its text).
pub fn random_count_arg(arg: &[u8]) -> Result<i64, Error> {
    match int_arg(arg)? {
        i64::MIN => Err(Error::err(
            "value is out of range, value must between -9223372036854775807 and 9223372036854775807",
        )),
        n => Ok(n),
    }
}

/// A random-member COUNT with values or scores (HRANDFIELD's WITHVALUES,
/// ZRANDMEMBER's WITHSCORES) must stay within half the range: Redis
/// replies with twice as many elements.
pub fn check_paired_count(count: Option<i64>, paired: bool) -> Result<(), Error> {
    if paired && count.is_some_and(|n| !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&n)) {
        return Err(Error::err("value is out of range"));
    }
    Ok(())
}

/// `n` elements of `kind` at random, repeats allowed (a negative COUNT),
/// one tree walk each; an error past [`MAX_REPEATING`].
pub fn random_repeating(c: &Coll, kind: Kind, n: u64) -> Result<Vec<&[u8]>, Error> {
    if n > MAX_REPEATING {
        return Err(Error::err("value is out of range"));
    }
    Ok((0..n)
        .filter_map(|_| c.pick(kind, rand::random()))
        .collect())
}

/// The most picks a negative COUNT may ask for: the reply is built in
/// memory before it is sent, so a count of 2^62 (which Redis would start
/// streaming until memory ran out) is refused instead.
pub const MAX_REPEATING: u64 = 10_000_000;

/// `n` positions out of `len`, repeats allowed (a negative COUNT); an
/// error past [`MAX_REPEATING`].
pub fn pick_repeating(len: usize, n: u64) -> Result<Vec<usize>, Error> {
    if n > MAX_REPEATING {
        return Err(Error::err("value is out of range"));
    }
    Ok((0..n).map(|_| rand::random_range(0..len)).collect())
}

fn spop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if args.len() > 3 {
        return Err(Error::Syntax);
    }
    let count = args.get(2).map(|a| pop_count(a)).transpose()?;
    let members: Vec<Vec<u8>> = match x.coll(args[1], Kind::Set)?.0 {
        None => Vec::new(),
        // One member: one walk of the tree.
        Some(c) if count.is_none() => c
            .pick(Kind::Set, rand::random())
            .map(|m| vec![m.to_vec()])
            .unwrap_or_default(),
        Some(c) => random_distinct(c, Kind::Set, count.unwrap_or(1))
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect(),
    };
    if !members.is_empty() {
        x.coll_update(args[1], Kind::Set, |c, d, stamp| {
            for m in &members {
                c.remove_elem_into(d, Kind::Set, m, stamp);
            }
            Ok(())
        })?;
    }
    match count {
        None => x.out.bulk_or_null(members.first().map(Vec::as_slice)),
        Some(_) => {
            x.out.set(members.len());
            for m in &members {
                x.out.bulk(m);
            }
        }
    }
    Ok(())
}

fn srandmember(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if args.len() > 3 {
        return Err(Error::Syntax);
    }
    let count = args.get(2).map(|a| random_count_arg(a)).transpose()?;
    let (c, out) = x.coll(args[1], Kind::Set)?;
    if count.is_none() {
        out.bulk_or_null(c.and_then(|c| c.pick(Kind::Set, rand::random())));
        return Ok(());
    }
    let Some(n) = count else {
        out.null();
        return Ok(());
    };
    let picked = match c {
        None => Vec::new(),
        Some(c) if n >= 0 => random_distinct(c, Kind::Set, n as usize),
        Some(c) => random_repeating(c, Kind::Set, n.unsigned_abs())?,
    };
    out.array(picked.len());
    for m in picked {
        out.bulk(m);
    }
    Ok(())
}

fn smove(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (src, dst, member) = (args[1], args[2], args[3]);
    // As Redis: a missing source is 0 whatever the destination holds; else
    // both types are checked before anything is written.
    let Some(present) = x.coll(src, Kind::Set)?.0.map(|c| c.is_member(member)) else {
        x.out.int(0);
        return Ok(());
    };
    x.coll(dst, Kind::Set)?;
    if !present {
        x.out.int(0);
        return Ok(());
    }
    if src != dst {
        x.coll_update(src, Kind::Set, |c, d, stamp| {
            c.remove_elem_into(d, Kind::Set, member, stamp);
            Ok(())
        })?;
        x.coll_update(dst, Kind::Set, |c, d, stamp| {
            c.sadd_into(d, stamp, member);
            Ok(())
        })?;
    }
    x.out.int(1);
    Ok(())
}

/// The members of each set named (an absent key: empty), WRONGTYPE for
/// any other type.
fn sets_of(x: &mut Exec, keys: &[&[u8]]) -> Result<Vec<BTreeSet<Vec<u8>>>, Error> {
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let members = x
            .coll(k, Kind::Set)?
            .0
            .map(|c| c.members().map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        out.push(members);
    }
    Ok(out)
}

/// The members in every one of `keys`' sets, as Redis computes it: every
/// key's type checked first, then the smallest set's members kept while
/// each next-larger set holds them, so the work follows the smallest set,
/// not the sum of them all (a missing key is an empty set: nothing).
fn intersection(x: &mut Exec, keys: &[&[u8]]) -> Result<BTreeSet<Vec<u8>>, Error> {
    let mut sized = Vec::with_capacity(keys.len());
    for k in keys {
        let len = x.coll(k, Kind::Set)?.0.map_or(0, |c| c.len(Kind::Set));
        sized.push((len, *k));
    }
    sized.sort_by_key(|(len, _)| *len);
    let Some(&(smallest, first)) = sized.first() else {
        return Ok(BTreeSet::new());
    };
    if smallest == 0 {
        return Ok(BTreeSet::new());
    }
    let mut members: BTreeSet<Vec<u8>> = x
        .coll(first, Kind::Set)?
        .0
        .map(|c| c.members().map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    for (_, k) in &sized[1..] {
        if members.is_empty() {
            break;
        }
        let c = x.coll(k, Kind::Set)?.0;
        members.retain(|m| c.is_some_and(|c| c.is_member(m)));
    }
    Ok(members)
}

#[derive(Clone, Copy)]
enum SetOp {
    Inter,
    Union,
    Diff,
}

fn combine(sets: Vec<BTreeSet<Vec<u8>>>, op: SetOp) -> BTreeSet<Vec<u8>> {
    let mut it = sets.into_iter();
    let Some(mut acc) = it.next() else {
        return BTreeSet::new();
    };
    for s in it {
        match op {
            // Intersections take `intersection`, smallest set first.
            SetOp::Inter => acc.retain(|m| s.contains(m)),
            SetOp::Union => acc.extend(s),
            SetOp::Diff => acc.retain(|m| !s.contains(m)),
        }
    }
    acc
}

fn set_op(x: &mut Exec, args: &[&[u8]], op: SetOp) -> CmdResult {
    let result = match op {
        SetOp::Inter => intersection(x, &args[1..])?,
        _ => combine(sets_of(x, &args[1..])?, op),
    };
    x.out.set(result.len());
    for m in &result {
        x.out.bulk(m);
    }
    Ok(())
}

/// Replaces `dst` with a set of `members` (deletes it when empty): new
/// writes, stamped here.
pub fn store_set(x: &mut Exec, dst: &[u8], members: &BTreeSet<Vec<u8>>) -> CmdResult {
    x.update(dst, |w| {
        if w.visible() {
            w.set(None, 0);
        }
        if !members.is_empty() {
            w.coll_write(Kind::Set, |c, d, stamp| -> Result<(), Error> {
                for m in members {
                    c.sadd_into(d, stamp, m);
                }
                Ok(())
            })?;
        }
        Ok(())
    })
}

fn set_op_store(x: &mut Exec, args: &[&[u8]], op: SetOp) -> CmdResult {
    let result = match op {
        SetOp::Inter => intersection(x, &args[2..])?,
        _ => combine(sets_of(x, &args[2..])?, op),
    };
    store_set(x, args[1], &result)?;
    x.out.int(result.len() as i64);
    Ok(())
}

fn sinter(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    set_op(x, args, SetOp::Inter)
}
fn sunion(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    set_op(x, args, SetOp::Union)
}
fn sdiff(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    set_op(x, args, SetOp::Diff)
}
fn sinterstore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    set_op_store(x, args, SetOp::Inter)
}
fn sunionstore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    set_op_store(x, args, SetOp::Union)
}
fn sdiffstore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    set_op_store(x, args, SetOp::Diff)
}

fn sintercard(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let numkeys = super::count_arg(args[1], 1, "numkeys should be greater than 0")?;
    let keys = args.get(2..2 + numkeys).ok_or(Error::err(
        "Number of keys can't be greater than number of args",
    ))?;
    let mut limit = 0usize;
    let mut options = Args::new(args, 2 + numkeys);
    while !options.is_empty() {
        if options.eat("LIMIT") {
            limit = super::count_arg(options.value()?, 0, "LIMIT can't be negative")?;
        } else {
            return Err(Error::Syntax);
        }
    }
    let n = intersection(x, keys)?.len();
    x.out.int(if limit > 0 { n.min(limit) } else { n } as i64);
    Ok(())
}
