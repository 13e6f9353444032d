//! Sorted-set commands (Redis's `t_zset.c`): members an observed-remove
//! set, each score a register (ZADD) plus a counter (ZINCRBY), ranges read
//! from the derived score index (DESIGN.md, Data model;
//! docs/crdt-semantics.md).

use std::collections::HashMap;

use chorus_crdt::number::{format_score, parse_int, parse_score};
use chorus_crdt::zindex::{Entry, ScoreIndex};
use chorus_crdt::{Coll, KeyType, Kind, Written};

use super::keys::{parse_cursor, scan_options};
use super::sets::{pick_distinct, pick_repeating};
use super::Flag::*;
use super::{counted, int_arg, is, Args, CmdResult, Error, Exec, Flags, Keys, Spec};
use crate::glob;
use crate::resp::Reply;

#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    Spec { name: "zadd", arity: -4, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]", summary: "Adds one or more members to a sorted set, or updates their scores. Creates the key if it doesn't exist.", run: zadd },
    Spec { name: "zincrby", arity: 4, flags: Flags::of(&[DenyOom, Write, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key increment member", summary: "Increments the score of a member in a sorted set.", run: zincrby },
    Spec { name: "zrem", arity: -3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key member [member ...]", summary: "Removes one or more members from a sorted set. Deletes the sorted set if all members were removed.", run: zrem },
    Spec { name: "zscore", arity: 3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key member", summary: "Returns the score of a member in a sorted set.", run: zscore },
    Spec { name: "zmscore", arity: -3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key member [member ...]", summary: "Returns the score of one or more members in a sorted set.", run: zmscore },
    Spec { name: "zcard", arity: 2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key", summary: "Returns the number of members in a sorted set.", run: zcard },
    Spec { name: "zcount", arity: 4, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key min max", summary: "Returns the count of members in a sorted set that have scores within a range.", run: zcount },
    Spec { name: "zlexcount", arity: 4, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key min max", summary: "Returns the number of members in a sorted set within a lexicographical range.", run: zlexcount },
    Spec { name: "zrange", arity: -4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]", summary: "Returns members in a sorted set within a range of indexes.", run: zrange },
    Spec { name: "zrangestore", arity: -5, flags: Flags::of(&[DenyOom, Write]), keys: Keys::at(1, 2, 1), group: "sorted-set", syntax: "dst src min max [BYSCORE|BYLEX] [REV] [LIMIT offset count]", summary: "Stores a range of members from sorted set in a key.", run: zrangestore },
    Spec { name: "zrevrange", arity: -4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key start stop [WITHSCORES]", summary: "Returns members in a sorted set within a range of indexes in reverse order.", run: zrevrange },
    Spec { name: "zrangebyscore", arity: -4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key min max [WITHSCORES] [LIMIT offset count]", summary: "Returns members in a sorted set within a range of scores.", run: zrangebyscore },
    Spec { name: "zrevrangebyscore", arity: -4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key max min [WITHSCORES] [LIMIT offset count]", summary: "Returns members in a sorted set within a range of scores in reverse order.", run: zrevrangebyscore },
    Spec { name: "zrangebylex", arity: -4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key min max [LIMIT offset count]", summary: "Returns members in a sorted set within a lexicographical range.", run: zrangebylex },
    Spec { name: "zrevrangebylex", arity: -4, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key max min [LIMIT offset count]", summary: "Returns members in a sorted set within a lexicographical range in reverse order.", run: zrevrangebylex },
    Spec { name: "zrank", arity: -3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key member [WITHSCORE]", summary: "Returns the index of a member in a sorted set ordered by ascending scores.", run: zrank },
    Spec { name: "zrevrank", arity: -3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key member [WITHSCORE]", summary: "Returns the index of a member in a sorted set ordered by descending scores.", run: zrevrank },
    Spec { name: "zremrangebyrank", arity: 4, flags: Flags::of(&[Write]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key start stop", summary: "Removes members in a sorted set within a range of indexes. Deletes the sorted set if all members were removed.", run: zremrangebyrank },
    Spec { name: "zremrangebyscore", arity: 4, flags: Flags::of(&[Write]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key min max", summary: "Removes members in a sorted set within a range of scores. Deletes the sorted set if all members were removed.", run: zremrangebyscore },
    Spec { name: "zremrangebylex", arity: 4, flags: Flags::of(&[Write]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key min max", summary: "Removes members in a sorted set within a lexicographical range. Deletes the sorted set if all members were removed.", run: zremrangebylex },
    Spec { name: "zpopmin", arity: -2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key [count]", summary: "Returns the lowest-scoring members from a sorted set after removing them. Deletes the sorted set if the last member was popped.", run: zpopmin },
    Spec { name: "zpopmax", arity: -2, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key [count]", summary: "Returns the highest-scoring members from a sorted set after removing them. Deletes the sorted set if the last member was popped.", run: zpopmax },
    Spec { name: "zmpop", arity: -4, flags: Flags::of(&[Write]), keys: Keys::Counted { fixed: 0, count_at: 1 }, group: "sorted-set", syntax: "numkeys key [key ...] MIN|MAX [COUNT count]", summary: "Returns the highest- or lowest-scoring members from one or more sorted sets after removing them. Deletes the sorted set if the last member was popped.", run: zmpop },
    Spec { name: "bzmpop", arity: -5, flags: Flags::of(&[Write]), keys: Keys::Counted { fixed: 0, count_at: 2 }, group: "sorted-set", syntax: "timeout numkeys key [key ...] MIN|MAX [COUNT count]", summary: "Removes and returns a member by score from one or more sorted sets. Blocks until a member is available otherwise. Deletes the sorted set if the last element was popped.", run: bzmpop },
    Spec { name: "bzpopmin", arity: -3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, -2, 1), group: "sorted-set", syntax: "key [key ...] timeout", summary: "Removes and returns the member with the lowest score from one or more sorted sets. Blocks until a member is available otherwise. Deletes the sorted set if the last element was popped.", run: bzpopmin },
    Spec { name: "bzpopmax", arity: -3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, -2, 1), group: "sorted-set", syntax: "key [key ...] timeout", summary: "Removes and returns the member with the highest score from one or more sorted sets. Blocks until a member available otherwise.  Deletes the sorted set if the last element was popped.", run: bzpopmax },
    Spec { name: "zrandmember", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key [count [WITHSCORES]]", summary: "Returns one or more random members from a sorted set.", run: zrandmember },
    Spec { name: "zunion", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::Counted { fixed: 0, count_at: 1 }, group: "sorted-set", syntax: "numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]", summary: "Returns the union of multiple sorted sets.", run: zunion },
    Spec { name: "zinter", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::Counted { fixed: 0, count_at: 1 }, group: "sorted-set", syntax: "numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]", summary: "Returns the intersect of multiple sorted sets.", run: zinter },
    Spec { name: "zdiff", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::Counted { fixed: 0, count_at: 1 }, group: "sorted-set", syntax: "numkeys key [key ...] [WITHSCORES]", summary: "Returns the difference between multiple sorted sets.", run: zdiff },
    Spec { name: "zunionstore", arity: -4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::Counted { fixed: 1, count_at: 2 }, group: "sorted-set", syntax: "destination numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX]", summary: "Stores the union of multiple sorted sets in a key.", run: zunionstore },
    Spec { name: "zinterstore", arity: -4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::Counted { fixed: 1, count_at: 2 }, group: "sorted-set", syntax: "destination numkeys key [key ...] [WEIGHTS weight [weight ...]] [AGGREGATE SUM|MIN|MAX]", summary: "Stores the intersect of multiple sorted sets in a key.", run: zinterstore },
    Spec { name: "zdiffstore", arity: -4, flags: Flags::of(&[DenyOom, Write]), keys: Keys::Counted { fixed: 1, count_at: 2 }, group: "sorted-set", syntax: "destination numkeys key [key ...]", summary: "Stores the difference of multiple sorted sets in a key.", run: zdiffstore },
    Spec { name: "zintercard", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::Counted { fixed: 0, count_at: 1 }, group: "sorted-set", syntax: "numkeys key [key ...] [LIMIT limit]", summary: "Returns the number of members of the intersect of multiple sorted sets.", run: zintercard },
    Spec { name: "zscan", arity: -3, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "sorted-set", syntax: "key cursor [MATCH pattern] [COUNT count]", summary: "Iterates over members and scores of a sorted set.", run: zscan },
];

/// A member and its score, owned.
pub type Member = (Vec<u8>, f64);

fn score_arg(arg: &[u8]) -> Result<f64, Error> {
    parse_score(arg).ok_or(Error::NotFloat)
}

fn nan_result() -> Error {
    Error::err("resulting score is not a number (NaN)")
}

// ----- ZADD, ZINCRBY -----

#[derive(Default, Clone, Copy)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

impl AddFlags {
    fn plain(self) -> bool {
        !(self.nx || self.xx || self.gt || self.lt || self.incr)
    }

    /// The score a ZADD (not INCR) of `score` gives a member now at
    /// `current`, or `None` when its flags leave the member as it is.
    fn decide(self, current: Option<f64>, score: f64) -> Option<f64> {
        match current {
            None => (!self.xx).then_some(score),
            Some(_) if self.nx => None,
            Some(cur) if (self.lt && score >= cur) || (self.gt && score <= cur) => None,
            Some(_) => Some(score),
        }
    }

    /// Whether an increment taking a member from `current` to `new` goes
    /// ahead under these flags; a NaN result is refused, as Redis refuses it.
    fn allows_incr(self, current: Option<f64>, new: f64) -> Result<bool, Error> {
        let Some(cur) = current else {
            return Ok(!self.xx);
        };
        if self.nx {
            return Ok(false);
        }
        if new.is_nan() {
            return Err(nan_result());
        }
        Ok(!((self.lt && new >= cur) || (self.gt && new <= cur)))
    }
}

/// What a ZADD did: members added, scores changed, and for INCR the
/// member's score after it (`None`: left alone).
#[derive(Default)]
struct Added {
    added: i64,
    changed: i64,
    score: Option<f64>,
}

fn zadd(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let mut f = AddFlags::default();
    let mut at = 2;
    while at < args.len() {
        let a = args[at];
        match () {
            _ if is(a, "NX") => f.nx = true,
            _ if is(a, "XX") => f.xx = true,
            _ if is(a, "GT") => f.gt = true,
            _ if is(a, "LT") => f.lt = true,
            _ if is(a, "CH") => f.ch = true,
            _ if is(a, "INCR") => f.incr = true,
            _ => break,
        }
        at += 1;
    }
    let pairs = &args[at..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(Error::Syntax);
    }
    if f.nx && f.xx {
        return Err(Error::err(
            "XX and NX options at the same time are not compatible",
        ));
    }
    if (f.nx && (f.gt || f.lt)) || (f.gt && f.lt) {
        return Err(Error::err(
            "GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if f.incr && pairs.len() > 2 {
        return Err(Error::err(
            "INCR option supports a single increment-element pair",
        ));
    }
    let mut scored = Vec::with_capacity(pairs.len() / 2);
    for p in pairs.chunks_exact(2) {
        scored.push((score_arg(p[0])?, p[1]));
    }
    let done = if f.xx && x.coll(args[1], Kind::ZSet)?.0.is_none() {
        Added::default()
    } else {
        add_scores(x, args[1], &scored, f)?
    };
    if f.incr {
        match done.score {
            Some(s) => x.out.score(s),
            None => x.out.null(),
        }
    } else {
        x.out.int(done.added + if f.ch { done.changed } else { 0 });
    }
    Ok(())
}

fn zincrby(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let by = score_arg(args[2])?;
    let f = AddFlags {
        incr: true,
        ..AddFlags::default()
    };
    let done = add_scores(x, args[1], &[(by, args[3])], f)?;
    match done.score {
        Some(s) => x.out.score(s),
        None => x.out.null(),
    }
    Ok(())
}

/// ZADD's writes, in place when it can (see `Exec::coll_update_fast`).
fn add_scores(
    x: &mut Exec,
    key: &[u8],
    scored: &[(f64, &[u8])],
    f: AddFlags,
) -> Result<Added, Error> {
    let slow = |c: &Coll, d: &mut Coll, stamp| add_into(c, d, stamp, scored, f);
    if let (false, [(score, member)]) = (f.incr, scored) {
        // One member: its delta laid out by the sink, no delta `Coll` filled.
        let one = |w: &mut crate::keyspace::Writer<'_>| {
            w.one_in_place(Kind::ZSet, member, |c, d, stamp| {
                let write = if f.plain() {
                    Some(*score)
                } else {
                    f.decide(c.score(member), *score)
                };
                let Some(score) = write else {
                    return Some((Ok(Added::default()), None));
                };
                let mut done = Added::default();
                match c.zadd_here(stamp, member, score, d)? {
                    None => done.added = 1,
                    Some(o) if o != score => done.changed = 1,
                    Some(_) => {}
                }
                Some((Ok(done), Some(Written::Score(score))))
            })
        };
        return x.coll_update_with(key, Kind::ZSet, one, slow)?;
    }
    if let (true, [(by, member)]) = (f.incr, scored) {
        // An increment (ZINCRBY, ZADD INCR): its delta laid out by the sink.
        let one = |w: &mut crate::keyspace::Writer<'_>| {
            w.one_in_place(Kind::ZSet, member, |c, mut d, stamp| {
                let mut done = Added::default();
                // Err(None): the flags leave the member alone.
                let check = |cur: Option<f64>, new: f64| match f.allows_incr(cur, new) {
                    Err(e) => Err(Some(e)),
                    Ok(false) => Err(None),
                    Ok(true) => {
                        done.added = i64::from(cur.is_none());
                        Ok(())
                    }
                };
                Some(
                    match c.zincr_here(stamp, member, *by, check, d.as_deref_mut()) {
                        Ok(score) => {
                            let done = Added {
                                score: Some(score),
                                ..done
                            };
                            (Ok(done), counted(Kind::ZSet, d))
                        }
                        Err(Some(e)) => (Err(e), None),
                        Err(None) => (Ok(Added::default()), None),
                    },
                )
            })
        };
        return x.coll_update_with(key, Kind::ZSet, one, slow)?;
    }
    let fast = |c: &mut Coll,
                mut d: Option<&mut chorus_crdt::ManyWrite>,
                stamp: chorus_crdt::Stamp|
     -> Option<Result<Added, Error>> {
        let mut done = Added::default();
        // A member the in-place write declines (increments, another node's
        // score) takes the general path, for all of them.
        if scored.len() > 1
            && scored
                .iter()
                .any(|(_, m)| !c.writes_in_place(Kind::ZSet, m, stamp.node))
        {
            return None;
        }
        for &(score, m) in scored {
            let write = if f.plain() {
                Some(score)
            } else {
                f.decide(c.score(m), score)
            };
            let Some(score) = write else { continue };
            let old = c.zadd_here(stamp, m, score, d.as_deref_mut())?;
            match old {
                None => done.added += 1,
                Some(o) if o != score => done.changed += 1,
                Some(_) => {}
            }
        }
        Some(Ok(done))
    };
    x.coll_update_many(key, Kind::ZSet, fast, slow)?
}

/// ZADD's general path: every write into the delta. Members named twice
/// see their first write (`pending`), as Redis applies them in turn.
fn add_into(
    c: &Coll,
    d: &mut Coll,
    stamp: chorus_crdt::Stamp,
    scored: &[(f64, &[u8])],
    f: AddFlags,
) -> Result<Result<Added, Error>, Error> {
    let mut done = Added::default();
    if f.incr {
        let (by, m) = scored[0];
        let cur = c.score(m);
        let mut trial = Coll::delta(stamp, Kind::ZSet);
        c.incr_into(&mut trial, Kind::ZSet, m, stamp, (0, by, true));
        let new = c.score_after(&trial, m).unwrap_or(0.0);
        if f.allows_incr(cur, new)? {
            c.incr_into(d, Kind::ZSet, m, stamp, (0, by, true));
            done.added = i64::from(cur.is_none());
            done.score = Some(new);
        }
        return Ok(Ok(done));
    }
    let mut pending: HashMap<&[u8], f64> = HashMap::new();
    for &(score, m) in scored {
        let cur = pending.get(m).copied().or_else(|| c.score(m));
        let Some(new) = f.decide(cur, score) else {
            continue;
        };
        c.zadd_into(d, stamp, m, new);
        match cur {
            None => done.added += 1,
            Some(o) if o != new => done.changed += 1,
            Some(_) => {}
        }
        pending.insert(m, new);
    }
    Ok(Ok(done))
}

fn zrem(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let members = &args[2..];
    let held = x
        .coll(args[1], Kind::ZSet)?
        .0
        .is_some_and(|c| members.iter().any(|m| c.score(m).is_some()));
    if !held {
        x.out.int(0);
        return Ok(());
    }
    let n = remove_members(x, args[1], members.iter().copied())?;
    x.out.int(n);
    Ok(())
}

/// Removes members (each counted once, if present); returns how many.
fn remove_members<'m>(
    x: &mut Exec,
    key: &[u8],
    members: impl IntoIterator<Item = &'m [u8]>,
) -> Result<i64, Error> {
    x.coll_update(key, Kind::ZSet, |c, d, stamp| {
        let mut removed = 0;
        for m in members {
            if c.score(m).is_some() && d.zset_named(m).is_none() {
                removed += 1;
                c.remove_elem_into(d, Kind::ZSet, m, stamp);
            }
        }
        Ok(removed)
    })
}

// ----- reads -----

fn zscore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (c, out) = x.coll(args[1], Kind::ZSet)?;
    match c.and_then(|c| c.score(args[2])) {
        Some(s) => out.score(s),
        None => out.null(),
    }
    Ok(())
}

fn zmscore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (c, out) = x.coll(args[1], Kind::ZSet)?;
    out.array(args.len() - 2);
    for m in &args[2..] {
        match c.and_then(|c| c.score(m)) {
            Some(s) => out.score(s),
            None => out.null(),
        }
    }
    Ok(())
}

fn zcard(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let n = x
        .coll(args[1], Kind::ZSet)?
        .0
        .map_or(0, |c| c.len(Kind::ZSet));
    x.out.int(n as i64);
    Ok(())
}

/// One end of a score range: `(1.5` excludes, `-inf`/`+inf` allowed.
#[derive(Clone, Copy)]
struct ScoreBound {
    value: f64,
    open: bool,
}

fn score_bound(arg: &[u8]) -> Option<ScoreBound> {
    let (open, text) = match arg.split_first() {
        Some((b'(', rest)) => (true, rest),
        _ => (false, arg),
    };
    Some(ScoreBound {
        value: parse_score(text)?,
        open,
    })
}

/// One end of a lexicographic range: `-`, `+`, `[a` or `(a`.
#[derive(Clone, Copy)]
enum LexBound<'a> {
    Lowest,
    Highest,
    Closed(&'a [u8]),
    Open(&'a [u8]),
}

fn lex_bound(arg: &[u8]) -> Option<LexBound<'_>> {
    match arg.split_first()? {
        (b'-', []) => Some(LexBound::Lowest),
        (b'+', []) => Some(LexBound::Highest),
        (b'[', rest) => Some(LexBound::Closed(rest)),
        (b'(', rest) => Some(LexBound::Open(rest)),
        _ => None,
    }
}

/// What a range selects.
#[derive(Clone, Copy)]
enum Bounds<'a> {
    Rank(i64, i64),
    Score(ScoreBound, ScoreBound),
    Lex(LexBound<'a>, LexBound<'a>),
}

impl Bounds<'_> {
    /// Whether an entry lies past the low end (entries before it do not).
    fn past_low(&self, e: &Entry) -> bool {
        match self {
            Bounds::Rank(..) => true,
            Bounds::Score(min, _) => {
                if min.open {
                    e.score > min.value
                } else {
                    e.score >= min.value
                }
            }
            Bounds::Lex(min, _) => match min {
                LexBound::Lowest => true,
                LexBound::Highest => false,
                LexBound::Closed(b) => *e.member >= **b,
                LexBound::Open(b) => *e.member > **b,
            },
        }
    }

    /// Whether an entry lies within the high end (entries after it do not).
    fn within_high(&self, e: &Entry) -> bool {
        match self {
            Bounds::Rank(..) => true,
            Bounds::Score(_, max) => {
                if max.open {
                    e.score < max.value
                } else {
                    e.score <= max.value
                }
            }
            Bounds::Lex(_, max) => match max {
                LexBound::Lowest => false,
                LexBound::Highest => true,
                LexBound::Closed(b) => *e.member <= **b,
                LexBound::Open(b) => *e.member < **b,
            },
        }
    }
}

fn parse_bounds<'a>(by: By, min: &'a [u8], max: &'a [u8]) -> Result<Bounds<'a>, Error> {
    Ok(match by {
        By::Rank => Bounds::Rank(int_arg(min)?, int_arg(max)?),
        By::Score => match (score_bound(min), score_bound(max)) {
            (Some(a), Some(b)) => Bounds::Score(a, b),
            _ => return Err(Error::err("min or max is not a float")),
        },
        By::Lex => match (lex_bound(min), lex_bound(max)) {
            (Some(a), Some(b)) => Bounds::Lex(a, b),
            _ => return Err(Error::err("min or max not valid string range item")),
        },
    })
}

/// Entries in `bounds`, lowest first (`rev`: highest first), after
/// skipping `offset` and keeping at most `limit` (negative: all).
fn select<'i>(
    ix: &'i ScoreIndex,
    bounds: &Bounds,
    rev: bool,
    (offset, limit): (i64, i64),
) -> Vec<&'i Entry> {
    let len = ix.len() as i64;
    if offset < 0 {
        return Vec::new();
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let offset = offset as usize;
    match *bounds {
        Bounds::Rank(start, end) => {
            let start = if start < 0 {
                (len + start).max(0)
            } else {
                start
            };
            let end = if end < 0 { len + end } else { end.min(len - 1) };
            if start > end || start >= len {
                return Vec::new();
            }
            let n = (end - start + 1) as usize;
            if rev {
                ix.iter_down_from((len - 1 - start) as usize)
                    .take(n)
                    .collect()
            } else {
                ix.iter_from(start as usize).take(n).collect()
            }
        }
        _ if rev => {
            let within = ix.count_below(|e| bounds.within_high(e));
            if within == 0 {
                return Vec::new();
            }
            ix.iter_down_from(within - 1)
                .take_while(|e| bounds.past_low(e))
                .skip(offset)
                .take(limit)
                .collect()
        }
        _ => {
            let first = ix.count_below(|e| !bounds.past_low(e));
            ix.iter_from(first)
                .take_while(|e| bounds.within_high(e))
                .skip(offset)
                .take(limit)
                .collect()
        }
    }
}

/// How many entries `bounds` (scores or lex) holds, by two searches.
fn count_in(ix: &ScoreIndex, bounds: &Bounds) -> usize {
    let before = ix.count_below(|e| !bounds.past_low(e));
    let upto = ix.count_below(|e| bounds.within_high(e));
    upto.saturating_sub(before)
}

fn zcount(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    count_cmd(x, args, By::Score)
}

fn zlexcount(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    count_cmd(x, args, By::Lex)
}

fn count_cmd(x: &mut Exec, args: &[&[u8]], by: By) -> CmdResult {
    let bounds = parse_bounds(by, args[2], args[3])?;
    let n = x
        .coll(args[1], Kind::ZSet)?
        .0
        .map_or(0, |c| count_in(c.zindex(), &bounds));
    x.out.int(n as i64);
    Ok(())
}

/// Writes members, with their scores when asked: RESP3 as [member, score]
/// pairs, RESP2 flat.
fn reply_entries<'e>(
    out: &mut Reply,
    entries: impl ExactSizeIterator<Item = (&'e [u8], f64)>,
    withscores: bool,
) {
    let n = entries.len();
    if !withscores {
        out.array(n);
        for (m, _) in entries {
            out.bulk(m);
        }
        return;
    }
    let nested = out.resp3;
    out.array(if nested { n } else { 2 * n });
    for (m, s) in entries {
        if nested {
            out.array(2);
        }
        out.bulk(m);
        out.score(s);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum By {
    Rank,
    Score,
    Lex,
}

/// A ZRANGE-family request, as `zrangeGenericCommand` parses it.
struct RangeRequest<'a> {
    bounds: Bounds<'a>,
    rev: bool,
    limit: (i64, i64),
    withscores: bool,
}

/// Parses `min max [options]` from `args[at..]`; `by` and `rev` are the
/// legacy commands' presets (`None`: ZRANGE's options choose).
fn range_request<'a>(
    args: &'a [&'a [u8]],
    at: usize,
    by: Option<By>,
    rev: Option<bool>,
    store: bool,
) -> Result<RangeRequest<'a>, Error> {
    let (mut by_opt, mut rev_opt) = (by, rev);
    let mut limit = None;
    let mut withscores = false;
    let mut options = Args::new(args, at + 2);
    while !options.is_empty() {
        if options.eat("WITHSCORES") {
            withscores = true;
        } else if options.remaining() >= 3 && options.eat("LIMIT") {
            limit = Some((options.int()?, options.int()?));
        } else if rev_opt.is_none() && options.eat("REV") {
            rev_opt = Some(true);
        } else if by_opt.is_none() && options.eat("BYLEX") {
            by_opt = Some(By::Lex);
        } else if by_opt.is_none() && options.eat("BYSCORE") {
            by_opt = Some(By::Score);
        } else {
            return Err(Error::Syntax);
        }
    }
    let by = by_opt.unwrap_or(By::Rank);
    let rev = rev_opt.unwrap_or(false);
    // As Redis: a LIMIT whose count is -1 (all) passes with a rank range.
    if limit.is_some_and(|(_, count)| count != -1) && by == By::Rank {
        return Err(Error::err(
            "syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if withscores && by == By::Lex {
        return Err(Error::err(
            "syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    if withscores && store {
        return Err(Error::Syntax);
    }
    // Reverse score and lex ranges are given high end first.
    let (min, max) = if rev && by != By::Rank {
        (args[at + 1], args[at])
    } else {
        (args[at], args[at + 1])
    };
    Ok(RangeRequest {
        bounds: parse_bounds(by, min, max)?,
        rev,
        limit: limit.unwrap_or((0, -1)),
        withscores,
    })
}

fn range_cmd(x: &mut Exec, args: &[&[u8]], by: Option<By>, rev: Option<bool>) -> CmdResult {
    let req = range_request(args, 2, by, rev, false)?;
    let (c, out) = x.coll(args[1], Kind::ZSet)?;
    let picked = c.map_or_else(Vec::new, |c| {
        select(c.zindex(), &req.bounds, req.rev, req.limit)
    });
    reply_entries(
        out,
        picked.iter().map(|e| (&*e.member, e.score)),
        req.withscores,
    );
    Ok(())
}

fn zrange(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    range_cmd(x, args, None, None)
}
fn zrevrange(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    range_cmd(x, args, Some(By::Rank), Some(true))
}
fn zrangebyscore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    range_cmd(x, args, Some(By::Score), Some(false))
}
fn zrevrangebyscore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    range_cmd(x, args, Some(By::Score), Some(true))
}
fn zrangebylex(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    range_cmd(x, args, Some(By::Lex), Some(false))
}
fn zrevrangebylex(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    range_cmd(x, args, Some(By::Lex), Some(true))
}

fn zrangestore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let req = range_request(args, 3, None, None, true)?;
    let picked: Vec<(Vec<u8>, f64)> = match x.coll(args[2], Kind::ZSet)?.0 {
        None => Vec::new(),
        Some(c) => select(c.zindex(), &req.bounds, req.rev, req.limit)
            .into_iter()
            .map(|e| (e.member.to_vec(), e.score))
            .collect(),
    };
    store_zset(x, args[1], &picked)?;
    x.out.int(picked.len() as i64);
    Ok(())
}

fn rank_cmd(x: &mut Exec, args: &[&[u8]], rev: bool) -> CmdResult {
    let withscore = match args.len() {
        3 => false,
        4 if is(args[3], "WITHSCORE") => true,
        _ => return Err(Error::Syntax),
    };
    let (c, out) = x.coll(args[1], Kind::ZSet)?;
    let found = c.and_then(|c| {
        let score = c.score(args[2])?;
        let ix = c.zindex();
        let rank = ix.rank(score, args[2])?;
        Some((if rev { ix.len() - 1 - rank } else { rank }, score))
    });
    match found {
        None if withscore => out.null_array(),
        None => out.null(),
        Some((rank, score)) if withscore => {
            out.array(2);
            out.int(rank as i64);
            out.score(score);
        }
        Some((rank, _)) => out.int(rank as i64),
    }
    Ok(())
}

fn zrank(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    rank_cmd(x, args, false)
}
fn zrevrank(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    rank_cmd(x, args, true)
}

fn remrange(x: &mut Exec, args: &[&[u8]], by: By) -> CmdResult {
    let bounds = parse_bounds(by, args[2], args[3])?;
    let members: Vec<Vec<u8>> = match x.coll(args[1], Kind::ZSet)?.0 {
        None => Vec::new(),
        Some(c) => select(c.zindex(), &bounds, false, (0, -1))
            .into_iter()
            .map(|e| e.member.to_vec())
            .collect(),
    };
    if members.is_empty() {
        x.out.int(0);
        return Ok(());
    }
    let n = remove_members(x, args[1], members.iter().map(Vec::as_slice))?;
    x.out.int(n);
    Ok(())
}

fn zremrangebyrank(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    remrange(x, args, By::Rank)
}
fn zremrangebyscore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    remrange(x, args, By::Score)
}
fn zremrangebylex(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    remrange(x, args, By::Lex)
}

// ----- pops -----

/// Removes the `count` lowest (or highest) members of `key`; returns them
/// with their scores. `None`: the key holds no sorted set.
pub fn pop(
    x: &mut Exec,
    key: &[u8],
    count: usize,
    max: bool,
) -> Result<Option<Vec<Member>>, Error> {
    let Some(c) = x.coll(key, Kind::ZSet)?.0 else {
        return Ok(None);
    };
    let ix = c.zindex();
    let picked: Vec<(Vec<u8>, f64)> = if max {
        ix.iter()
            .rev()
            .take(count)
            .map(|e| (e.member.to_vec(), e.score))
            .collect()
    } else {
        ix.iter()
            .take(count)
            .map(|e| (e.member.to_vec(), e.score))
            .collect()
    };
    if !picked.is_empty() {
        remove_members(x, key, picked.iter().map(|(m, _)| m.as_slice()))?;
    }
    Ok(Some(picked))
}

fn pop_cmd(x: &mut Exec, args: &[&[u8]], max: bool) -> CmdResult {
    if args.len() > 3 {
        return Err(Error::Syntax);
    }
    let count = args.get(2).map(|a| super::pop_count(a)).transpose()?;
    if count == Some(0) {
        // As Redis: nothing popped, but the key's type checked.
        x.coll(args[1], Kind::ZSet)?;
        x.out.array(0);
        return Ok(());
    }
    let popped = pop(x, args[1], count.unwrap_or(1), max)?.unwrap_or_default();
    if count.is_some() {
        reply_entries(x.out, popped.iter().map(|(m, s)| (m.as_slice(), *s)), true);
    } else {
        // One member: a flat [member, score] in RESP3 too.
        x.out.array(2 * popped.len());
        for (m, s) in &popped {
            x.out.bulk(m);
            x.out.score(*s);
        }
    }
    Ok(())
}

fn zpopmin(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    pop_cmd(x, args, false)
}
fn zpopmax(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    pop_cmd(x, args, true)
}

/// ZMPOP's and BZMPOP's end: MAX (true) or MIN.
fn min_max_arg(arg: &[u8]) -> Result<bool, Error> {
    if is(arg, "MAX") {
        Ok(true)
    } else if is(arg, "MIN") {
        Ok(false)
    } else {
        Err(Error::Syntax)
    }
}

/// A key and the members popped from it, with their scores.
type ZPopped = (Vec<u8>, Vec<Member>);

/// Pops up to `count` members from the first of `keys` holding any: its
/// name and what was popped, or `None`. Notified as ZPOPMIN or ZPOPMAX,
/// as Redis does.
fn zmpop_from(
    x: &mut Exec,
    keys: &[&[u8]],
    max: bool,
    count: usize,
) -> Result<Option<ZPopped>, Error> {
    let event = if max { "zpopmax" } else { "zpopmin" };
    super::pop_first(x, keys, event, |x, key| pop(x, key, count, max))
}

/// The key, then its members as [member, score] pairs (in RESP2 too);
/// a null array when nothing was popped.
fn reply_zmpop(out: &mut Reply, popped: Option<ZPopped>) {
    let Some((key, members)) = popped else {
        out.null_array();
        return;
    };
    out.array(2);
    out.bulk(&key);
    out.array(members.len());
    for (member, score) in &members {
        out.array(2);
        out.bulk(member);
        out.score(*score);
    }
}

fn zmpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (keys, max, count) = super::lists::mpop_args_with(args, 1, min_max_arg)?;
    let popped = zmpop_from(x, keys, max, count)?;
    reply_zmpop(x.out, popped);
    Ok(())
}

fn bzmpop(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    // As Redis: the keys, the end and the count are read before the timeout.
    let (keys, max, count) = super::lists::mpop_args_with(args, 2, min_max_arg)?;
    let timeout = super::blocking::timeout_arg(args[1])?;
    let popped = zmpop_from(x, keys, max, count)?;
    if popped.is_some() || x.session.in_exec {
        reply_zmpop(x.out, popped);
        return Ok(());
    }
    super::blocking::block_on(x, args, keys, timeout);
    Ok(())
}

fn bzpopmin(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    super::blocking::bzpop(x, args, false)
}
fn bzpopmax(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    super::blocking::bzpop(x, args, true)
}

// ----- random, scan -----

fn zrandmember(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let count = args
        .get(2)
        .map(|a| super::sets::random_count_arg(a))
        .transpose()?;
    let withscores = match args.len() {
        2 | 3 => false,
        4 if is(args[3], "WITHSCORES") => true,
        _ => return Err(Error::Syntax),
    };
    super::sets::check_paired_count(count, withscores)?;
    let (c, out) = x.coll(args[1], Kind::ZSet)?;
    let Some(n) = count else {
        out.bulk_or_null(c.and_then(|c| c.pick(Kind::ZSet, rand::random())));
        return Ok(());
    };
    let Some(ix) = c.map(|c| c.zindex()) else {
        out.array(0);
        return Ok(());
    };
    let picks = if n >= 0 {
        pick_distinct(ix.len(), n as usize)
    } else if ix.is_empty() {
        Vec::new()
    } else {
        pick_repeating(ix.len(), n.unsigned_abs())?
    };
    // A few picks find their ranks; many walk the index once.
    let entries: Vec<&Entry> = if picks.len() <= 64 {
        picks.iter().filter_map(|&i| ix.get(i)).collect()
    } else {
        let all: Vec<&Entry> = ix.iter().collect();
        picks.iter().map(|&i| all[i]).collect()
    };
    reply_entries(
        out,
        entries.iter().map(|e| (&*e.member, e.score)),
        withscores,
    );
    Ok(())
}

fn zscan(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let cursor = parse_cursor(args[2])?;
    let o = scan_options(args, 3, false)?;
    let (c, out) = x.coll(args[1], Kind::ZSet)?;
    let mut found: Vec<(&[u8], f64)> = Vec::new();
    let mut next = 0;
    if let Some(c) = c {
        let (members, n) = c.scan(Kind::ZSet, cursor, o.count);
        next = n;
        for m in members {
            if o.pattern.is_none_or(|p| glob::matches(p, m, false)) {
                found.push((m, c.score(m).unwrap_or(0.0)));
            }
        }
    }
    out.array(2);
    out.bulk(next.to_string().as_bytes());
    out.array(found.len() * 2);
    for (m, s) in found {
        out.bulk(m);
        out.bulk(format_score(s).as_bytes());
    }
    Ok(())
}

// ----- ZUNION, ZINTER, ZDIFF -----

#[derive(Clone, Copy, PartialEq)]
enum SetOp {
    Union,
    Inter,
    Diff,
}

#[derive(Clone, Copy)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

impl Aggregate {
    fn apply(self, acc: f64, v: f64) -> f64 {
        match self {
            Aggregate::Sum => {
                let s = acc + v;
                // inf + -inf: Redis takes 0.
                if s.is_nan() {
                    0.0
                } else {
                    s
                }
            }
            Aggregate::Min => acc.min(v),
            Aggregate::Max => acc.max(v),
        }
    }
}

/// A sorted set's or a set's members with their scores (a set's all 1), an
/// absent key's none; WRONGTYPE for any other type.
fn scored_members(x: &mut Exec, key: &[u8]) -> Result<Vec<(Vec<u8>, f64)>, Error> {
    let now = x.now_ms;
    let Some(state) = x.visible(key)? else {
        return Ok(Vec::new());
    };
    match state.key_type(now) {
        None => Ok(Vec::new()),
        Some(KeyType::Coll(Kind::ZSet)) => Ok(state.coll().map_or_else(Vec::new, |c| {
            c.zindex()
                .iter()
                .map(|e| (e.member.to_vec(), e.score))
                .collect()
        })),
        Some(KeyType::Coll(Kind::Set)) => Ok(state.coll().map_or_else(Vec::new, |c| {
            c.members().map(|m| (m.to_vec(), 1.0)).collect()
        })),
        Some(_) => Err(Error::WrongType),
    }
}

/// The result of a ZUNION/ZINTER/ZDIFF family command: its members by
/// score, and whether to reply with scores.
struct Combined {
    members: Vec<(Vec<u8>, f64)>,
    withscores: bool,
}

/// Parses `numkeys key... [options]` from `args[at..]` and combines the
/// inputs as `zunionInterDiffGenericCommand` does.
fn combine(
    x: &mut Exec,
    args: &[&[u8]],
    at: usize,
    op: SetOp,
    name: &str,
    store: bool,
) -> Result<Combined, Error> {
    let n = int_arg(args[at])?;
    if n < 1 {
        return Err(Error::err(format!(
            "at least 1 input key is needed for '{name}' command"
        )));
    }
    let n = n as usize;
    let Some(keys) = args.get(at + 1..at + 1 + n) else {
        return Err(Error::Syntax);
    };
    let mut inputs = Vec::with_capacity(n);
    for k in keys {
        inputs.push(scored_members(x, k)?);
    }
    let mut weights = vec![1.0; n];
    let mut aggregate = Aggregate::Sum;
    let mut withscores = false;
    let mut options = Args::new(args, at + 1 + n);
    while !options.is_empty() {
        if op != SetOp::Diff && options.remaining() > n && options.eat("WEIGHTS") {
            for w in weights.iter_mut() {
                *w = parse_score(options.value()?)
                    .ok_or(Error::err("weight value is not a float"))?;
            }
        } else if op != SetOp::Diff && options.remaining() >= 2 && options.eat("AGGREGATE") {
            let a = options.value()?;
            aggregate = match () {
                _ if is(a, "SUM") => Aggregate::Sum,
                _ if is(a, "MIN") => Aggregate::Min,
                _ if is(a, "MAX") => Aggregate::Max,
                _ => return Err(Error::Syntax),
            };
        } else if !store && options.eat("WITHSCORES") {
            withscores = true;
        } else {
            return Err(Error::Syntax);
        }
    }
    let weighted = |v: f64, w: f64| {
        let s = v * w;
        if s.is_nan() {
            0.0
        } else {
            s
        }
    };
    let mut acc: HashMap<Vec<u8>, f64> = HashMap::new();
    for (i, input) in inputs.into_iter().enumerate() {
        let w = weights[i];
        match op {
            SetOp::Union => {
                for (m, s) in input {
                    let v = weighted(s, w);
                    acc.entry(m)
                        .and_modify(|a| *a = aggregate.apply(*a, v))
                        .or_insert(v);
                }
            }
            SetOp::Inter if i == 0 => {
                acc = input
                    .into_iter()
                    .map(|(m, s)| (m, weighted(s, w)))
                    .collect();
            }
            SetOp::Inter => {
                let mut next = HashMap::with_capacity(acc.len().min(input.len()));
                for (m, s) in input {
                    if let Some(a) = acc.remove(&m) {
                        next.insert(m, aggregate.apply(a, weighted(s, w)));
                    }
                }
                acc = next;
            }
            SetOp::Diff if i == 0 => acc = input.into_iter().collect(),
            SetOp::Diff => {
                for (m, _) in input {
                    acc.remove(&m);
                }
            }
        }
    }
    let mut members: Vec<(Vec<u8>, f64)> = acc.into_iter().collect();
    members.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Combined {
        members,
        withscores,
    })
}

fn combine_cmd(x: &mut Exec, args: &[&[u8]], op: SetOp, name: &str) -> CmdResult {
    let r = combine(x, args, 1, op, name, false)?;
    reply_entries(
        x.out,
        r.members.iter().map(|(m, s)| (m.as_slice(), *s)),
        r.withscores,
    );
    Ok(())
}

fn combine_store(x: &mut Exec, args: &[&[u8]], op: SetOp, name: &str) -> CmdResult {
    let r = combine(x, args, 2, op, name, true)?;
    store_zset(x, args[1], &r.members)?;
    x.out.int(r.members.len() as i64);
    Ok(())
}

fn zunion(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    combine_cmd(x, args, SetOp::Union, "zunion")
}
fn zinter(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    combine_cmd(x, args, SetOp::Inter, "zinter")
}
fn zdiff(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    combine_cmd(x, args, SetOp::Diff, "zdiff")
}
fn zunionstore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    combine_store(x, args, SetOp::Union, "zunionstore")
}
fn zinterstore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    combine_store(x, args, SetOp::Inter, "zinterstore")
}
fn zdiffstore(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    combine_store(x, args, SetOp::Diff, "zdiffstore")
}

fn zintercard(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let n = int_arg(args[1])?;
    if n < 1 {
        return Err(Error::err(
            "at least 1 input key is needed for 'zintercard' command",
        ));
    }
    let n = n as usize;
    let Some(keys) = args.get(2..2 + n) else {
        return Err(Error::Syntax);
    };
    let mut inputs = Vec::with_capacity(n);
    for k in keys {
        inputs.push(scored_members(x, k)?);
    }
    let mut limit = 0usize;
    let mut options = Args::new(args, 2 + n);
    while !options.is_empty() {
        if options.remaining() >= 2 && options.eat("LIMIT") {
            limit = options
                .value()
                .ok()
                .and_then(parse_int)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or(Error::err("LIMIT can't be negative"))?;
        } else {
            return Err(Error::Syntax);
        }
    }
    // The smallest input against the others, stopping at LIMIT.
    inputs.sort_by_key(Vec::len);
    let mut rest = inputs.split_off(1.min(inputs.len()));
    let others: Vec<std::collections::HashSet<Vec<u8>>> = rest
        .iter_mut()
        .map(|i| i.drain(..).map(|(m, _)| m).collect())
        .collect();
    let mut count = 0usize;
    for (m, _) in inputs.into_iter().flatten() {
        if others.iter().all(|o| o.contains(&m)) {
            count += 1;
            if limit > 0 && count >= limit {
                break;
            }
        }
    }
    x.out.int(count as i64);
    Ok(())
}

/// Replaces `dst` with a sorted set of `members` (deletes it when empty):
/// new writes, stamped here.
pub fn store_zset(x: &mut Exec, dst: &[u8], members: &[(Vec<u8>, f64)]) -> CmdResult {
    x.update(dst, |w| {
        if w.visible() {
            w.set(None, 0);
        }
        if !members.is_empty() {
            w.coll_write(Kind::ZSet, |c, d, stamp| -> Result<(), Error> {
                for (m, s) in members {
                    c.zadd_into(d, stamp, m, *s);
                }
                Ok(())
            })?;
        }
        Ok(())
    })
}
