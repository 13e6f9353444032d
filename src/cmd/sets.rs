//! Set commands (Redis's `t_set.c`): an observed-remove set, add wins
//! (DESIGN.md, Data model; docs/crdt-semantics.md).

use chorus_crdt::Kind;

use super::Flag::*;
use super::{CmdResult, Exec, Flags, Keys, Spec};

#[rustfmt::skip]
pub static COMMANDS: &[Spec] = &[
    Spec { name: "sadd", arity: -3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member [member ...]", summary: "Adds one or more members to a set. Creates the key if it doesn't exist.", run: sadd },
    Spec { name: "srem", arity: -3, flags: Flags::of(&[Write, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member [member ...]", summary: "Removes one or more members from a set. Deletes the set if the last member was removed.", run: srem },
    Spec { name: "sismember", arity: 3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member", summary: "Determines whether a member belongs to a set.", run: sismember },
    Spec { name: "smismember", arity: -3, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key member [member ...]", summary: "Determines whether multiple members belong to a set.", run: smismember },
    Spec { name: "smembers", arity: 2, flags: Flags::of(&[ReadOnly]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key", summary: "Returns all members of a set.", run: smembers },
    Spec { name: "scard", arity: 2, flags: Flags::of(&[ReadOnly, Fast]), keys: Keys::at(1, 1, 1), group: "set", syntax: "key", summary: "Returns the number of members in a set.", run: scard },
];

fn sadd(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let members = &args[2..];
    let added = x.coll_update(args[1], Kind::Set, |c, d, stamp| {
        let mut added = 0;
        for m in members {
            if !c.is_member(m) && d.set.get(*m).is_none_or(|a| a.is_empty()) {
                added += 1;
            }
            // Re-adding a member takes a new dot: an add must survive a
            // concurrent SREM, whether or not the member was here.
            c.sadd_into(d, stamp, m);
        }
        Ok(added)
    })?;
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
            if c.is_member(m) && !d.set.contains_key(*m) {
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
