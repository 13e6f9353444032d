//! SORT and SORT_RO (Redis's `sort.c`) over lists, sets and sorted sets;
//! STORE writes the result as a list. BY and GET may name any key, so both
//! lock every shard (as KEYS does).

use std::cmp::Ordering;

use chorus_crdt::{KeyType, Kind};

use super::Flag::*;
use super::{Args, CmdResult, Error, Exec, Flags, Keys, Spec};

#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    Spec { name: "sort", arity: -2, flags: Flags::of(&[DenyOom, Write]), keys: Keys::All, group: "generic", syntax: "key [BY pattern] [LIMIT offset count] [GET pattern [GET pattern ...]] [ASC|DESC] [ALPHA] [STORE destination]", summary: "Sorts the elements in a list, a set, or a sorted set, optionally storing the result.", run: sort },
    Spec { name: "sort_ro", arity: -2, flags: Flags::of(&[ReadOnly]), keys: Keys::All, group: "generic", syntax: "key [BY pattern] [LIMIT offset count] [GET pattern [GET pattern ...]] [ASC|DESC] [ALPHA]", summary: "Returns the sorted elements of a list, a set, or a sorted set.", run: sort_ro },
];

fn sort(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    sort_generic(x, args, false)
}

fn sort_ro(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    sort_generic(x, args, true)
}

/// The value a BY or GET pattern names for `elem`: `#` is the element,
/// the first `*` is replaced by it, and `key->field` reads a hash field.
/// `None` for a pattern without `*`, a missing key or field, or a key of
/// another type.
fn lookup(x: &mut Exec, pattern: &[u8], elem: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    if pattern == b"#" {
        return Ok(Some(elem.to_vec()));
    }
    let Some(star) = pattern.iter().position(|&b| b == b'*') else {
        return Ok(None);
    };
    let after = &pattern[star + 1..];
    let (rest, field) = match after.windows(2).position(|w| w == b"->") {
        Some(at) if at + 2 < after.len() => (&after[..at], Some(&after[at + 2..])),
        _ => (after, None),
    };
    let key = [&pattern[..star], elem, rest].concat();
    let now = x.now_ms;
    let Some(state) = x.visible(&key)? else {
        return Ok(None);
    };
    Ok(match (state.key_type(now), field) {
        (Some(KeyType::String), None) => state.read(now).render().map(|v| v.into_owned()),
        (Some(KeyType::Coll(Kind::Hash)), Some(f)) => state
            .coll()
            .and_then(|c| c.field(f))
            .and_then(|r| r.render().map(|v| v.into_owned())),
        _ => None,
    })
}

fn sort_generic(x: &mut Exec, args: &[&[u8]], read_only: bool) -> CmdResult {
    let key = args[1];
    let (mut desc, mut alpha) = (false, false);
    let mut limit: Option<(i64, i64)> = None;
    let mut by: Option<&[u8]> = None;
    let mut gets: Vec<&[u8]> = Vec::new();
    let mut store: Option<&[u8]> = None;
    let mut options = Args::new(args, 2);
    while !options.is_empty() {
        if options.eat("ASC") {
            desc = false;
        } else if options.eat("DESC") {
            desc = true;
        } else if options.eat("ALPHA") {
            alpha = true;
        } else if options.remaining() >= 3 && options.eat("LIMIT") {
            limit = Some((options.int()?, options.int()?));
        } else if !read_only && options.remaining() >= 2 && options.eat("STORE") {
            store = Some(options.value()?);
        } else if options.remaining() >= 2 && options.eat("BY") {
            by = Some(options.value()?);
        } else if options.remaining() >= 2 && options.eat("GET") {
            gets.push(options.value()?);
        } else {
            return Err(Error::Syntax);
        }
    }
    // BY without '*' sorts nothing: the elements keep their order (a
    // list's; a sorted set's, by score; a set's, by hash).
    let dont_sort = by.is_some_and(|p| !p.contains(&b'*'));
    let now = x.now_ms;
    let elems: Vec<Vec<u8>> = match x.visible(key)? {
        None => Vec::new(),
        Some(state) => match state.key_type(now) {
            None => Vec::new(),
            Some(KeyType::Coll(Kind::List)) => state
                .coll()
                .map(|c| c.list_iter().map(|(_, v)| v.to_vec()).collect())
                .unwrap_or_default(),
            Some(KeyType::Coll(Kind::Set)) => state
                .coll()
                .map(|c| c.members().map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
            Some(KeyType::Coll(Kind::ZSet)) => state
                .coll()
                .map(|c| c.zindex().iter().map(|e| e.member.to_vec()).collect())
                .unwrap_or_default(),
            Some(_) => return Err(Error::WrongType),
        },
    };
    let mut items: Vec<(Vec<u8>, Weight)> = Vec::with_capacity(elems.len());
    for e in elems {
        let weight = if dont_sort {
            Weight::None
        } else {
            let basis = match by {
                Some(p) => lookup(x, p, &e)?,
                None => Some(e.clone()),
            };
            if alpha {
                Weight::Bytes(basis)
            } else {
                // A missing BY value weighs 0, as in Redis.
                let v = match basis {
                    None => 0.0,
                    Some(b) => chorus_crdt::number::parse_score(&b).ok_or(Error::err(
                        "One or more scores can't be converted into double",
                    ))?,
                };
                Weight::Number(v)
            }
        };
        items.push((e, weight));
    }
    if !dont_sort {
        items.sort_by(|a, b| {
            let order = match (&a.1, &b.1) {
                (Weight::Number(x), Weight::Number(y)) => {
                    x.partial_cmp(y).unwrap_or(Ordering::Equal)
                }
                (Weight::Bytes(x), Weight::Bytes(y)) => x.cmp(y),
                _ => Ordering::Equal,
            };
            // Equal weights: by the element, a fixed order (Redis leaves
            // it to its quicksort).
            let order = order.then_with(|| a.0.cmp(&b.0));
            if desc {
                order.reverse()
            } else {
                order
            }
        });
    } else if desc {
        items.reverse();
    }
    let len = items.len() as i64;
    let (start, end) = match limit {
        None => (0, len - 1),
        Some((offset, count)) => {
            let start = offset.max(0);
            let end = if count < 0 {
                len - 1
            } else {
                start.saturating_add(count) - 1
            };
            (start, end.min(len - 1))
        }
    };
    let picked: &[(Vec<u8>, Weight)] = if start > end || start >= len {
        &[]
    } else {
        &items[start as usize..=end as usize]
    };
    let mut reply: Vec<Option<Vec<u8>>> = Vec::with_capacity(picked.len() * gets.len().max(1));
    for (e, _) in picked {
        if gets.is_empty() {
            reply.push(Some(e.clone()));
        }
        for g in &gets {
            reply.push(lookup(x, g, e)?);
        }
    }
    if let Some(dst) = store {
        // As Redis: a missing GET value is stored as an empty string, and
        // an empty result deletes the destination.
        let n = reply.len();
        x.update(dst, |w| {
            if w.visible() {
                w.set(None, 0);
            }
            if n == 0 {
                return Ok(());
            }
            w.coll_write(Kind::List, |c, d, stamp| {
                for v in &reply {
                    c.list_push_into(d, stamp, false, v.as_deref().unwrap_or_default());
                }
                Ok(())
            })
        })?;
        x.out.int(n as i64);
        return Ok(());
    }
    x.out.array(reply.len());
    for r in &reply {
        x.out.bulk_or_null(r.as_deref());
    }
    Ok(())
}

/// What an element sorts by.
enum Weight {
    None,
    Number(f64),
    Bytes(Option<Vec<u8>>),
}
