//! List commands (Redis's `t_list.c`): a sequence CRDT (DESIGN.md, Data
//! model; docs/crdt-semantics.md). Pushes from every node all survive in
//! one order; a pop, LREM or LTRIM removes the elements it saw, so one
//! element popped on two nodes at once goes to both clients and is
//! removed once.

use chorus_crdt::{Coll, Kind, Position};

use super::blocking::timeout_arg;
use super::Flag::*;
use super::{count_arg, int_arg, pop_count, Args, CmdResult, Error, Exec, Flags, Keys, Spec};

#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    Spec { name: "lpush", arity: -3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key element [element ...]", summary: "Prepends one or more elements to a list. Creates the key if it doesn't exist.", run: lpush },
    Spec { name: "rpush", arity: -3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key element [element ...]", summary: "Appends one or more elements to a list. Creates the key if it doesn't exist.", run: rpush },
    Spec { name: "lpushx", arity: -3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key element [element ...]", summary: "Prepends one or more elements to a list only when the list exists.", run: lpushx },
    Spec { name: "rpushx", arity: -3, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key element [element ...]", summary: "Appends an element to a list only when the list exists.", run: rpushx },
    Spec { name: "lpop", arity: -2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key [count]", summary: "Returns the first elements in a list after removing it. Deletes the list if the last element was popped.", run: lpop },
    Spec { name: "rpop", arity: -2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key [count]", summary: "Returns and removes the last elements of a list. Deletes the list if the last element was popped.", run: rpop },
    Spec { name: "llen", arity: 2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key", summary: "Returns the length of a list.", run: llen },
    Spec { name: "lrange", arity: 4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key start stop", summary: "Returns a range of elements from a list.", run: lrange },
    Spec { name: "lindex", arity: 3, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key index", summary: "Returns an element from a list by its index.", run: lindex },
    Spec { name: "lset", arity: 4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key index element", summary: "Sets the value of an element in a list by its index.", run: lset },
    Spec { name: "linsert", arity: 5, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key BEFORE|AFTER pivot element", summary: "Inserts an element before or after another element in a list.", run: linsert },
    Spec { name: "lrem", arity: 4, flags: Flags::of(&[Write]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key count element", summary: "Removes elements from a list. Deletes the list if the last element was removed.", run: lrem },
    Spec { name: "ltrim", arity: 4, flags: Flags::of(&[Write]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key start stop", summary: "Removes elements from both ends a list. Deletes the list if all elements were trimmed.", run: ltrim },
    Spec { name: "lpos", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "list", syntax: "key element [RANK rank] [COUNT num-matches] [MAXLEN len]", summary: "Returns the index of matching elements in a list.", run: lpos },
    Spec { name: "lmove", arity: 5, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 2, 1), group: "list", syntax: "source destination LEFT|RIGHT LEFT|RIGHT", summary: "Returns an element after popping it from one list and pushing it to another. Deletes the list if the last element was moved.", run: lmove },
    Spec { name: "rpoplpush", arity: 3, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 2, 1), group: "list", syntax: "source destination", summary: "Returns the last element of a list after removing and pushing it to another list. Deletes the list if the last element was popped.", run: rpoplpush },
    Spec { name: "lmpop", arity: -4, flags: Flags::of(&[Write]), keys: Keys::Counted { fixed: 0, count_at: 1 }, group: "list", syntax: "numkeys key [key ...] LEFT|RIGHT [COUNT count]", summary: "Returns multiple elements from a list after removing them. Deletes the list if the last element was popped.", run: lmpop },
    Spec { name: "blpop", arity: -3, flags: Flags::of(&[Write]), keys: Keys::at(1, -2, 1), group: "list", syntax: "key [key ...] timeout", summary: "Removes and returns the first element in a list. Blocks until an element is available otherwise. Deletes the list if the last element was popped.", run: blpop },
    Spec { name: "brpop", arity: -3, flags: Flags::of(&[Write]), keys: Keys::at(1, -2, 1), group: "list", syntax: "key [key ...] timeout", summary: "Removes and returns the last element in a list. Blocks until an element is available otherwise. Deletes the list if the last element was popped.", run: brpop },
    Spec { name: "blmove", arity: 6, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 2, 1), group: "list", syntax: "source destination LEFT|RIGHT LEFT|RIGHT timeout", summary: "Pops an element from a list, pushes it to another list and returns it. Blocks until an element is available otherwise. Deletes the list if the last element was moved.", run: blmove },
    Spec { name: "brpoplpush", arity: 4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 2, 1), group: "list", syntax: "source destination timeout", summary: "Pops an element from a list, pushes it to another list and returns it. Block until an element is available otherwise. Deletes the list if the last element was popped.", run: brpoplpush },
    Spec { name: "blmpop", arity: -5, flags: Flags::of(&[Write]), keys: Keys::Counted { fixed: 0, count_at: 2 }, group: "list", syntax: "timeout numkeys key [key ...] LEFT|RIGHT [COUNT count]", summary: "Pops the first element from one of multiple lists. Blocks until an element is available otherwise. Deletes the list if the last element was popped.", run: blmpop },
];

/// Redis's index: from the head, or from the tail when negative.
fn index_in(len: usize, index: i64) -> Option<usize> {
    let i = if index < 0 {
        (len as i64).checked_add(index)?
    } else {
        index
    };
    usize::try_from(i).ok().filter(|i| *i < len)
}

/// LRANGE's and LTRIM's `start`..=`stop` within a list of `len` (`None`:
/// empty), as Redis clamps them.
fn range_in(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len_i = len as i64;
    let start = if start < 0 {
        start.saturating_add(len_i)
    } else {
        start
    }
    .max(0);
    let stop = if stop < 0 {
        stop.saturating_add(len_i)
    } else {
        stop
    };
    if start > stop || start >= len_i {
        return None;
    }
    Some((start as usize, stop.min(len_i - 1) as usize))
}

/// LEFT or RIGHT (any case): whether it names the head.
fn side_arg(arg: &[u8]) -> Result<bool, Error> {
    if arg.eq_ignore_ascii_case(b"left") {
        Ok(true)
    } else if arg.eq_ignore_ascii_case(b"right") {
        Ok(false)
    } else {
        Err(Error::Syntax)
    }
}

/// The list at `key`, for a read: `None` when missing, WRONGTYPE when
/// another type.
fn list<'a>(x: &'a mut Exec, key: &[u8]) -> Result<Option<&'a Coll>, Error> {
    Ok(x.coll(key, Kind::List)?.0)
}

/// Pushes `values` at the head or tail of `key`'s list; its new length.
fn push_values(x: &mut Exec, key: &[u8], head: bool, values: &[&[u8]]) -> Result<usize, Error> {
    let fast = |c: &mut Coll, mut d: Option<&mut Coll>, stamp| {
        for v in values {
            c.list_push_here(stamp, head, v, d.as_deref_mut());
        }
        Some(c.len(Kind::List))
    };
    x.coll_update_fast(key, Kind::List, fast, |c, d, stamp| {
        for v in values {
            c.list_push_into(d, stamp, head, v);
        }
        Ok(c.len(Kind::List) + values.len())
    })
}

fn push(x: &mut Exec, args: &[&[u8]], head: bool, only_if_there: bool) -> CmdResult {
    if only_if_there && list(x, args[1])?.is_none() {
        x.out.int(0);
        return Ok(());
    }
    let len = push_values(x, args[1], head, &args[2..])?;
    x.out.int(len as i64);
    Ok(())
}

fn lpush(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    push(x, args, true, false)
}

fn rpush(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    push(x, args, false, false)
}

fn lpushx(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    push(x, args, true, true)
}

fn rpushx(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    push(x, args, false, true)
}

/// Removes up to `count` elements from the head or tail of `key`'s list;
/// `None` when the key is missing.
pub fn pop(
    x: &mut Exec,
    key: &[u8],
    head: bool,
    count: usize,
) -> Result<Option<Vec<Vec<u8>>>, Error> {
    let Some(c) = list(x, key)? else {
        return Ok(None);
    };
    let n = count.min(c.len(Kind::List));
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let fast = |c: &mut Coll, mut d: Option<&mut Coll>, stamp| {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match c.list_pop_here(stamp, head, d.as_deref_mut()) {
                Some(v) => out.push(v.0.into_vec()),
                None => break,
            }
        }
        Some(out)
    };
    let popped = x.coll_update_fast(key, Kind::List, fast, |c, d, _| {
        let ends: Vec<(Position, Vec<u8>)> = if head {
            c.list_iter()
                .take(n)
                .map(|(p, v)| (p.clone(), v.to_vec()))
                .collect()
        } else {
            c.list_iter()
                .rev()
                .take(n)
                .map(|(p, v)| (p.clone(), v.to_vec()))
                .collect()
        };
        for (p, _) in &ends {
            c.list_remove_into(d, p);
        }
        Ok(ends.into_iter().map(|(_, v)| v).collect())
    })?;
    Ok(Some(popped))
}

fn pop_cmd(x: &mut Exec, args: &[&[u8]], head: bool) -> CmdResult {
    if args.len() > 3 {
        return Err(Error::Arity(args_name(head).into()));
    }
    let count = args.get(2).map(|a| pop_count(a)).transpose()?;
    match (pop(x, args[1], head, count.unwrap_or(1))?, count) {
        (None, None) => x.out.null(),
        (None, Some(_)) => x.out.null_array(),
        (Some(mut v), None) => match v.pop() {
            Some(v) => x.out.bulk(&v),
            None => x.out.null(),
        },
        (Some(v), Some(_)) => {
            x.out.array(v.len());
            for e in &v {
                x.out.bulk(e);
            }
        }
    }
    Ok(())
}

fn args_name(head: bool) -> &'static str {
    if head {
        "lpop"
    } else {
        "rpop"
    }
}

fn lpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    pop_cmd(x, args, true)
}

fn rpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    pop_cmd(x, args, false)
}

fn llen(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let n = list(x, args[1])?.map_or(0, |c| c.len(Kind::List));
    x.out.int(n as i64);
    Ok(())
}

fn lrange(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (start, stop) = (int_arg(args[2])?, int_arg(args[3])?);
    let (c, out) = x.coll(args[1], Kind::List)?;
    let range = c.and_then(|c| Some((c, range_in(c.len(Kind::List), start, stop)?)));
    let Some((c, (a, b))) = range else {
        out.array(0);
        return Ok(());
    };
    out.array(b - a + 1);
    let len = c.len(Kind::List);
    if a <= len - 1 - b {
        for (_, v) in c.list_iter().skip(a).take(b - a + 1) {
            out.bulk(v);
        }
    } else {
        for (_, v) in c.list_range(a, b) {
            out.bulk(v);
        }
    }
    Ok(())
}

fn lindex(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    // As Redis: the key (and its type) before the index.
    let (c, out) = x.coll(args[1], Kind::List)?;
    let Some(c) = c else {
        out.null();
        return Ok(());
    };
    let index = int_arg(args[2])?;
    let found = c.list_get(index_in(c.len(Kind::List), index).unwrap_or(usize::MAX));
    out.bulk_or_null(found.map(|(_, v)| v));
    Ok(())
}

fn lset(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let c = list(x, args[1])?.ok_or(Error::NoSuchKey)?;
    let index = int_arg(args[2])?;
    let (pos, _) = index_in(c.len(Kind::List), index)
        .and_then(|i| c.list_get(i))
        .ok_or(Error::err("index out of range"))?;
    let pos = pos.clone();
    let value = args[3];
    x.coll_update(args[1], Kind::List, |c, d, stamp| {
        c.list_set_into(d, stamp, &pos, value);
        Ok(())
    })?;
    x.out.ok();
    Ok(())
}

fn linsert(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let before = if args[2].eq_ignore_ascii_case(b"before") {
        true
    } else if args[2].eq_ignore_ascii_case(b"after") {
        false
    } else {
        return Err(Error::Syntax);
    };
    let (pivot, value) = (args[3], args[4]);
    let Some(c) = list(x, args[1])? else {
        x.out.int(0);
        return Ok(());
    };
    let len = c.len(Kind::List) + 1;
    let bounds = neighbours(c, pivot, before);
    let Some((lo, hi)) = bounds else {
        x.out.int(-1);
        return Ok(());
    };
    x.coll_update(args[1], Kind::List, |c, d, stamp| {
        c.list_insert_into(d, stamp, lo.as_ref(), hi.as_ref(), value);
        Ok(())
    })?;
    x.out.int(len as i64);
    Ok(())
}

/// The places either side of where LINSERT puts its element: before or
/// after the first element equal to `pivot` (`None`: no such element).
fn neighbours(
    c: &Coll,
    pivot: &[u8],
    before: bool,
) -> Option<(Option<Position>, Option<Position>)> {
    let mut prev: Option<&Position> = None;
    let mut it = c.list_iter();
    for (p, v) in it.by_ref() {
        if v == pivot {
            return Some(if before {
                (prev.cloned(), Some(p.clone()))
            } else {
                (Some(p.clone()), it.next().map(|(n, _)| n.clone()))
            });
        }
        prev = Some(p);
    }
    None
}

/// Removes the elements at `doomed` from `key`'s list.
fn remove_at(x: &mut Exec, key: &[u8], doomed: &[Position]) -> CmdResult {
    if doomed.is_empty() {
        return Ok(());
    }
    x.coll_update(key, Kind::List, |c, d, _| {
        for p in doomed {
            c.list_remove_into(d, p);
        }
        Ok(())
    })
}

fn lrem(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let count = int_arg(args[2])?;
    let value = args[3];
    let Some(c) = list(x, args[1])? else {
        x.out.int(0);
        return Ok(());
    };
    let limit = if count == 0 {
        usize::MAX
    } else {
        usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX)
    };
    let matching = |(p, v): (&Position, &[u8])| (v == value).then(|| p.clone());
    let doomed: Vec<Position> = if count < 0 {
        c.list_iter()
            .rev()
            .filter_map(matching)
            .take(limit)
            .collect()
    } else {
        c.list_iter().filter_map(matching).take(limit).collect()
    };
    remove_at(x, args[1], &doomed)?;
    x.out.int(doomed.len() as i64);
    Ok(())
}

fn ltrim(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (start, stop) = (int_arg(args[2])?, int_arg(args[3])?);
    if let Some(c) = list(x, args[1])? {
        let len = c.len(Kind::List);
        let doomed: Vec<Position> = match range_in(len, start, stop) {
            None => c.list_iter().map(|(p, _)| p.clone()).collect(),
            Some((a, b)) => {
                let head = c.list_iter().take(a);
                let tail = c.list_iter().rev().take(len - 1 - b);
                head.chain(tail).map(|(p, _)| p.clone()).collect()
            }
        };
        remove_at(x, args[1], &doomed)?;
    }
    x.out.ok();
    Ok(())
}

fn lpos(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let value = args[2];
    let (mut rank, mut count, mut maxlen) = (1i64, None::<usize>, 0usize);
    let mut options = Args::new(args, 3);
    while !options.is_empty() {
        if options.remaining() >= 2 && options.eat("RANK") {
            rank = options.int()?;
            if rank == i64::MIN {
                return Err(Error::err(
                    "value is out of range, value must between -9223372036854775807 and 9223372036854775807",
                ));
            }
            if rank == 0 {
                return Err(Error::err(
                    "RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                ));
            }
        } else if options.remaining() >= 2 && options.eat("COUNT") {
            count = Some(count_arg(options.value()?, 0, "COUNT can't be negative")?);
        } else if options.remaining() >= 2 && options.eat("MAXLEN") {
            maxlen = count_arg(options.value()?, 0, "MAXLEN can't be negative")?;
        } else {
            return Err(Error::Syntax);
        }
    }
    let (c, out) = x.coll(args[1], Kind::List)?;
    let mut found: Vec<usize> = Vec::new();
    if let Some(c) = c {
        let len = c.len(Kind::List);
        let want = match count {
            Some(0) => usize::MAX,
            Some(n) => n,
            None => 1,
        };
        let scan = if maxlen == 0 { len } else { maxlen.min(len) };
        let skip = usize::try_from(rank.unsigned_abs() - 1).unwrap_or(usize::MAX);
        let matches = |(i, (_, v)): (usize, (&Position, &[u8]))| (v == value).then_some(i);
        if rank > 0 {
            let it = c.list_iter().enumerate().take(scan).filter_map(matches);
            found.extend(it.skip(skip).take(want));
        } else {
            let it = c
                .list_iter()
                .enumerate()
                .rev()
                .take(scan)
                .filter_map(matches);
            found.extend(it.skip(skip).take(want));
        }
    }
    if count.is_some() {
        out.array(found.len());
        for i in found {
            out.int(i as i64);
        }
    } else {
        match found.first() {
            Some(i) => out.int(*i as i64),
            None => out.null(),
        }
    }
    Ok(())
}

/// Moves the element at one end of `src` to one end of `dst`; `None` when
/// `src` is missing. Its events come as Redis's: the push on `dst`, then
/// the pop on `src`.
fn move_element(
    x: &mut Exec,
    (src, dst): (&[u8], &[u8]),
    from_head: bool,
    to_head: bool,
) -> Result<Option<Vec<u8>>, Error> {
    let Some(c) = list(x, src)? else {
        return Ok(None);
    };
    let end = if from_head {
        c.list_iter().next()
    } else {
        c.list_iter().next_back()
    };
    let Some((pos, value)) = end.map(|(p, v)| (p.clone(), v.to_vec())) else {
        return Ok(None);
    };
    // A destination of another type is refused before anything moves.
    list(x, dst)?;
    let (ks, db) = (x.ks, x.session.db);
    let push_event = if to_head { "lpush" } else { "rpush" };
    crate::notify::as_command(ks, push_event, Some(dst), db, || {
        push_values(x, dst, to_head, &[&value])
    })?;
    let pop_event = if from_head { "lpop" } else { "rpop" };
    crate::notify::as_command(ks, pop_event, Some(src), db, || {
        remove_at(x, src, std::slice::from_ref(&pos))
    })?;
    Ok(Some(value))
}

fn lmove(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (from, to) = (side_arg(args[3])?, side_arg(args[4])?);
    let moved = move_element(x, (args[1], args[2]), from, to)?;
    x.out.bulk_or_null(moved.as_deref());
    Ok(())
}

fn rpoplpush(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let moved = move_element(x, (args[1], args[2]), false, true)?;
    x.out.bulk_or_null(moved.as_deref());
    Ok(())
}

/// LMPOP's and BLMPOP's arguments from `numkeys`: the keys, the end and
/// the count.
fn mpop_args<'a>(args: &'a [&'a [u8]], at: usize) -> Result<(&'a [&'a [u8]], bool, usize), Error> {
    mpop_args_with(args, at, side_arg)
}

/// The arguments of a pop from the first of several keys (LMPOP, ZMPOP
/// and their blocking forms) from `numkeys`: the keys, the end (as `end`
/// reads it) and the count.
pub(super) fn mpop_args_with<'a>(
    args: &'a [&'a [u8]],
    at: usize,
    end: fn(&[u8]) -> Result<bool, Error>,
) -> Result<(&'a [&'a [u8]], bool, usize), Error> {
    let numkeys = count_arg(args[at], 1, "numkeys should be greater than 0")?;
    let side_at = at.saturating_add(numkeys).saturating_add(1);
    let side = args.get(side_at).ok_or(Error::Syntax)?;
    let head = end(side)?;
    let mut count = None;
    let mut options = Args::new(args, side_at + 1);
    while !options.is_empty() {
        if count.is_none() && options.remaining() >= 2 && options.eat("COUNT") {
            count = Some(count_arg(
                options.value()?,
                1,
                "count should be greater than 0",
            )?);
        } else {
            return Err(Error::Syntax);
        }
    }
    Ok((&args[at + 1..side_at], head, count.unwrap_or(1)))
}

/// A key and the elements popped from it.
type Popped = (Vec<u8>, Vec<Vec<u8>>);

/// Pops from the first of `keys` holding elements: its name and what was
/// popped, or `None`.
fn mpop(x: &mut Exec, keys: &[&[u8]], head: bool, count: usize) -> Result<Option<Popped>, Error> {
    let event = if head { "lpop" } else { "rpop" };
    super::pop_first(x, keys, event, |x, key| pop(x, key, head, count))
}

fn reply_mpop(x: &mut Exec, popped: Option<Popped>) {
    match popped {
        None => x.out.null_array(),
        Some((key, values)) => {
            x.out.array(2);
            x.out.bulk(&key);
            x.out.array(values.len());
            for v in &values {
                x.out.bulk(v);
            }
        }
    }
}

fn lmpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (keys, head, count) = mpop_args(args, 1)?;
    let popped = mpop(x, keys, head, count)?;
    reply_mpop(x, popped);
    Ok(())
}

fn bpop(x: &mut Exec, args: &[&[u8]], head: bool) -> CmdResult {
    let keys = &args[1..args.len() - 1];
    let timeout = timeout_arg(args[args.len() - 1])?;
    if let Some((key, mut values)) = mpop(x, keys, head, 1)? {
        if let Some(v) = values.pop() {
            x.out.array(2);
            x.out.bulk(&key);
            x.out.bulk(&v);
            return Ok(());
        }
    }
    if x.session.in_exec {
        x.out.null_array();
        return Ok(());
    }
    super::blocking::block_on(x, args, keys, timeout);
    Ok(())
}

fn blpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    bpop(x, args, true)
}

fn brpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    bpop(x, args, false)
}

fn bmove(
    x: &mut Exec,
    args: &[&[u8]],
    (from_head, to_head): (bool, bool),
    timeout: &[u8],
) -> CmdResult {
    let timeout = timeout_arg(timeout)?;
    // Woken, a source turned into another type keeps the client waiting;
    // a destination of another type answers WRONGTYPE (as Redis).
    let source_other_type = x.session.retrying_block && list(x, args[1]).is_err();
    let moved = if source_other_type {
        None
    } else {
        move_element(x, (args[1], args[2]), from_head, to_head)?
    };
    if let Some(v) = moved {
        x.out.bulk(&v);
        return Ok(());
    }
    if x.session.in_exec {
        // As Redis: a null bulk inside a transaction, a null array at the
        // timeout.
        x.out.null();
        return Ok(());
    }
    super::blocking::block_on(x, args, &args[1..2], timeout);
    Ok(())
}

fn blmove(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sides = (side_arg(args[3])?, side_arg(args[4])?);
    bmove(x, args, sides, args[5])
}

fn brpoplpush(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    bmove(x, args, (false, true), args[3])
}

fn blmpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    // As Redis: the keys, the end and the count are read before the timeout.
    let (keys, head, count) = mpop_args(args, 2)?;
    let timeout = timeout_arg(args[1])?;
    let popped = mpop(x, keys, head, count)?;
    if popped.is_some() || x.session.in_exec {
        reply_mpop(x, popped);
        return Ok(());
    }
    super::blocking::block_on(x, args, keys, timeout);
    Ok(())
}
