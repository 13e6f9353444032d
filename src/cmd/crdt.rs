//! CRDT introspection: the conflict log and a key's CRDT metadata.

use chorus_crdt::{Side, Stamp, Summary};

use super::Flag::*;
use super::{Args, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use crate::glob;
use crate::resp::Reply;

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "crdt.conflicts",
        arity: -1,
        flags: Flags::of(&[ReadOnly]),
        keys: Keys::None,
        group: "crdt",
        syntax: "[COUNT count] [MATCH pattern] [SINCE unix-time-milliseconds]",
        summary:
            "Lists the conflicts this node resolved, newest first: key, kind, winner and loser.",
        run: conflicts,
    },
    Spec {
        name: "crdt.state",
        arity: 2,
        flags: Flags::of(&[ReadOnly]),
        keys: Keys::at(1, 1, 1),
        group: "crdt",
        syntax: "key",
        summary: "Shows a key's CRDT metadata: register, expiry, counter tallies.",
        run: state,
    },
];

fn summary_text(what: &Summary) -> String {
    match what {
        Summary::Value(v) => String::from_utf8_lossy(v).into_owned(),
        Summary::Digest { len, fnv64 } => format!("<{len} bytes, fnv64 {fnv64:016x}>"),
        Summary::Deleted => "<deleted>".to_string(),
        Summary::Increment { int, float } if *float == 0.0 => format!("<increments {int:+}>"),
        Summary::Increment { int, float } => format!("<increments {int:+} and {float:+}>"),
    }
}

fn side(out: &mut Reply, s: &Side) {
    out.map(4);
    out.bulk_str("origin");
    out.bulk_str(&s.origin.to_string());
    out.bulk_str("stamp");
    out.bulk_str(&s.stamp.to_string());
    out.bulk_str("stamp_ms");
    out.int(s.stamp.unix_ms() as i64);
    out.bulk_str("value");
    out.bulk_str(&summary_text(&s.what));
}

/// `CRDT.CONFLICTS [COUNT n] [MATCH pattern] [SINCE unix-ms]`
fn conflicts(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (mut count, mut pattern, mut since) = (100usize, None::<&[u8]>, 0u64);
    let mut options = Args::new(args, 1);
    while !options.is_empty() {
        if options.eat("COUNT") {
            count = usize::try_from(options.int()?)
                .map_err(|_| Error::err("COUNT must be positive"))?;
        } else if options.eat("MATCH") {
            pattern = Some(options.value()?);
        } else if options.eat("SINCE") {
            since =
                u64::try_from(options.int()?).map_err(|_| Error::err("SINCE must be positive"))?;
        } else {
            return Err(Error::Syntax);
        }
    }
    let log = x.ks.conflicts.snapshot();
    let picked: Vec<_> = log
        .iter()
        .rev()
        .filter(|c| {
            c.recorded_ms >= since && pattern.is_none_or(|p| glob::matches(p, &c.key, false))
        })
        .take(count)
        .collect();
    x.out.array(picked.len());
    for c in picked {
        x.out.map(6);
        x.out.bulk_str("db");
        x.out.int(c.db as i64);
        x.out.bulk_str("key");
        x.out.bulk(&c.key);
        x.out.bulk_str("kind");
        x.out.bulk_str(c.conflict.kind.as_str());
        x.out.bulk_str("recorded_ms");
        x.out.int(c.recorded_ms as i64);
        x.out.bulk_str("winner");
        side(x.out, &c.conflict.winner);
        x.out.bulk_str("loser");
        side(x.out, &c.conflict.loser);
    }
    Ok(())
}

/// `CRDT.STATE key`: nil when the node holds nothing for the key.
fn state(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let now = x.now_ms;
    let Some(s) = x.db(args[1])?.get(args[1]).cloned() else {
        x.out.null();
        return Ok(());
    };
    let extras = s.extras.as_deref().cloned().unwrap_or_default();
    x.out.map(9);
    x.out.bulk_str("exists");
    x.out.int(i64::from(s.exists(now)));
    x.out.bulk_str("register_stamp");
    x.out.bulk_str(&s.reg.stamp.to_string());
    x.out.bulk_str("register_seen");
    let seen = s.reg.seen.as_deref().cloned().unwrap_or_default();
    x.out.array(seen.len());
    for (node, time) in seen.iter() {
        x.out.bulk_str(
            &Stamp {
                time: *time,
                node: *node,
            }
            .to_string(),
        );
    }
    x.out.bulk_str("register_value");
    match &s.reg.value {
        Some(v) => x.out.bulk(v),
        None => x.out.null(),
    }
    x.out.bulk_str("register_expire_at_ms");
    x.out.int(s.reg.expire_at_ms as i64);
    x.out.bulk_str("expiry_field");
    x.out
        .bulk_str(&format!("{}@{}", extras.expiry.at_ms, extras.expiry.stamp));
    x.out.bulk_str("effective_expire_at_ms");
    x.out.int(s.expire_at_ms() as i64);
    for (name, map) in [("counts", &extras.counts), ("removed", &extras.removed)] {
        x.out.bulk_str(name);
        x.out.array(map.len());
        for (node, t) in map.iter() {
            x.out.bulk_str(&format!(
                "node={node} epoch={} ops={} int={} float={} float_ops={}",
                t.epoch, t.ops, t.int, t.float, t.float_ops
            ));
        }
    }
    Ok(())
}
