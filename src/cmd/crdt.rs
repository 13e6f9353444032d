//! CRDT introspection: the conflict log and a key's CRDT metadata.

use chorus_crdt::{ConflictKind, Side, Stamp, Summary};

use super::Flag::*;
use super::{Args, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use crate::conflicts::Filter;
use crate::resp::Reply;

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "crdt.conflicts",
        arity: -1,
        flags: Flags::of(&[ReadOnly]),
        keys: Keys::None,
        group: "crdt",
        syntax: "[COUNT count] [MATCH pattern] [SINCE unix-time-milliseconds] [KIND kind] \
                 [AFTER id] | RESET",
        summary: "Lists the conflicts this node resolved, newest first (with AFTER: those past \
                  an id, oldest first): id, key, kind, winner and loser; RESET empties the list.",
        run: conflicts,
    },
    Spec {
        name: "crdt.digest",
        arity: -1,
        flags: Flags::of(&[ReadOnly]),
        keys: Keys::None,
        group: "crdt",
        syntax: "[DB index] [MATCH pattern] [RANGE first last | BUCKET bucket [SPLIT | SUB sub]]",
        summary: "A database's digest per key bucket (256 of them, or those of a RANGE), over \
                  the keys a pattern matches; with BUCKET, that bucket's keys and their digests \
                  (SUB: of one of its 256 sub-buckets; SPLIT: the sub-buckets' digests). Two \
                  nodes holding the same state give the same digests.",
        run: digest,
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
        Summary::Collection { kind, len } => format!("<{kind} of {len}>"),
    }
}

/// `node`'s name as configured, where this node knows it; else its id.
fn origin_name(x: &Exec, node: chorus_crdt::NodeId) -> String {
    let own = &x.node.config.node_name;
    if node == x.ks.node() && !own.is_empty() {
        return own.clone();
    }
    x.node
        .repl
        .as_ref()
        .and_then(|r| r.name_of(node))
        .unwrap_or_else(|| node.to_string())
}

fn side(out: &mut Reply, s: &Side, name: &str) {
    out.map(5);
    out.bulk_str("origin");
    out.bulk_str(&s.origin.to_string());
    out.bulk_str("origin_name");
    out.bulk_str(name);
    out.bulk_str("stamp");
    out.bulk_str(&s.stamp.to_string());
    out.bulk_str("stamp_ms");
    out.int(s.stamp.unix_ms() as i64);
    out.bulk_str("value");
    out.bulk_str(&summary_text(&s.what));
}

/// `CRDT.CONFLICTS [COUNT n] [MATCH pattern] [SINCE unix-ms] [KIND kind]
/// [AFTER id]`, or `CRDT.CONFLICTS RESET`. Newest first; with AFTER, the
/// entries past that id, oldest first (a client walks the log, or follows
/// it, a page at a time).
fn conflicts(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if args.len() == 2 && args[1].eq_ignore_ascii_case(b"RESET") {
        x.ks.conflicts.reset();
        x.out.ok();
        return Ok(());
    }
    let mut filter = Filter {
        count: 100,
        pattern: None,
        since_ms: 0,
        kind: None,
        after: None,
    };
    let mut options = Args::new(args, 1);
    while !options.is_empty() {
        if options.eat("COUNT") {
            filter.count = usize::try_from(options.int()?)
                .map_err(|_| Error::err("COUNT must be positive"))?;
        } else if options.eat("MATCH") {
            filter.pattern = Some(options.value()?);
        } else if options.eat("AFTER") {
            filter.after = Some(
                u64::try_from(options.int()?).map_err(|_| Error::err("AFTER must be positive"))?,
            );
        } else if options.eat("SINCE") {
            filter.since_ms =
                u64::try_from(options.int()?).map_err(|_| Error::err("SINCE must be positive"))?;
        } else if options.eat("KIND") {
            let name = options.value()?;
            filter.kind = Some(ConflictKind::parse(name).ok_or_else(|| {
                let kinds: Vec<&str> = ConflictKind::ALL.iter().map(|k| k.as_str()).collect();
                Error::err(format!(
                    "unknown conflict kind '{}', expected one of: {}",
                    String::from_utf8_lossy(name),
                    kinds.join(", ")
                ))
            })?);
        } else {
            return Err(Error::Syntax);
        }
    }
    let picked = x.ks.conflicts.select(&filter);
    x.out.array(picked.len());
    for c in picked {
        x.out.map(8);
        x.out.bulk_str("id");
        x.out.int(c.id as i64);
        x.out.bulk_str("db");
        x.out.int(c.db as i64);
        x.out.bulk_str("key");
        x.out.bulk(&c.key);
        x.out.bulk_str("element");
        x.out.bulk_or_null(c.conflict.element.as_deref());
        x.out.bulk_str("kind");
        x.out.bulk_str(c.conflict.kind.as_str());
        x.out.bulk_str("recorded_ms");
        x.out.int(c.recorded_ms as i64);
        x.out.bulk_str("winner");
        let name = origin_name(x, c.conflict.winner.origin);
        side(x.out, &c.conflict.winner, &name);
        x.out.bulk_str("loser");
        let name = origin_name(x, c.conflict.loser.origin);
        side(x.out, &c.conflict.loser, &name);
    }
    Ok(())
}

/// `CRDT.DIGEST [DB index] [MATCH pattern] [RANGE first last | BUCKET b
/// [SPLIT | SUB s]]`. Without BUCKET: a map of the database, its flush
/// floor, how many keys (tombstones included) were digested, the first
/// bucket, and the digests of buckets `first..=last` (all 256 without
/// RANGE) in hex (zero: no key). With BUCKET: `[key, digest]` pairs of that
/// bucket (of its sub-bucket `s` with SUB), sorted by key; with SPLIT, the
/// digests of its 256 sub-buckets. The
/// work is the keys of the shards holding the buckets asked for, one shard
/// locked at a time: a client bounds each request by asking for a range.
fn digest(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let (mut db, mut pattern) = (x.session.db, None::<&[u8]>);
    let (mut range, mut bucket) = (0..=u8::MAX, None::<u8>);
    let (mut split, mut sub) = (false, None::<u8>);
    let mut options = Args::new(args, 1);
    while !options.is_empty() {
        if options.eat("DB") {
            db = usize::try_from(options.int()?)
                .ok()
                .filter(|d| *d < x.ks.databases())
                .ok_or(Error::DbRange)?;
        } else if options.eat("MATCH") {
            pattern = Some(options.value()?);
        } else if options.eat("BUCKET") {
            bucket = Some(bucket_arg(&mut options)?);
        } else if options.eat("SPLIT") {
            split = true;
        } else if options.eat("SUB") {
            sub = Some(bucket_arg(&mut options)?);
        } else if options.eat("RANGE") {
            let (first, last) = (bucket_arg(&mut options)?, bucket_arg(&mut options)?);
            if first > last {
                return Err(Error::err("RANGE's first bucket is past its last"));
            }
            range = first..=last;
        } else {
            return Err(Error::Syntax);
        }
    }
    let failed = |e: chorus_crdt::EncodeError| Error::err(format!("digest failed: {e}"));
    if (bucket.is_none() && (split || sub.is_some())) || (split && sub.is_some()) {
        return Err(Error::Syntax);
    }
    if let (Some(bucket), true) = (bucket, split) {
        let digests =
            x.ks.sub_bucket_digests(db, pattern, bucket)
                .map_err(failed)?;
        x.out.array(digests.len());
        for d in digests {
            x.out.bulk_str(&format!("{d:016x}"));
        }
        return Ok(());
    }
    if let Some(bucket) = bucket {
        let keys =
            x.ks.bucket_digests(db, pattern, bucket, sub)
                .map_err(failed)?;
        x.out.array(keys.len());
        for (key, d) in keys {
            x.out.array(2);
            x.out.bulk(&key);
            x.out.bulk_str(&format!("{d:016x}"));
        }
        return Ok(());
    }
    let first = *range.start();
    let (digests, floor, keys) = x.ks.digest_buckets(db, pattern, range).map_err(failed)?;
    x.out.map(5);
    x.out.bulk_str("db");
    x.out.int(db as i64);
    x.out.bulk_str("floor");
    x.out.bulk_str(&floor.to_string());
    x.out.bulk_str("keys");
    x.out.int(keys as i64);
    x.out.bulk_str("first");
    x.out.int(i64::from(first));
    x.out.bulk_str("buckets");
    x.out.array(digests.len());
    for b in &digests {
        x.out.bulk_str(&format!("{b:016x}"));
    }
    Ok(())
}

fn bucket_arg(options: &mut Args<'_>) -> Result<u8, Error> {
    u8::try_from(options.int()?).map_err(|_| Error::err("buckets are numbered 0 to 255"))
}

/// `CRDT.STATE key`: nil when the node holds nothing for the key.
fn state(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let now = x.now_ms;
    let Some(s) = x.db(args[1])?.get(args[1]).cloned() else {
        x.out.null();
        return Ok(());
    };
    let extras = s.extras.as_deref().cloned().unwrap_or_default();
    let coll = s.coll.as_deref();
    x.out.map(if coll.is_some() { 11 } else { 10 });
    x.out.bulk_str("exists");
    x.out.int(i64::from(s.exists(now)));
    x.out.bulk_str("type");
    x.out.bulk_str(s.key_type(now).map_or("none", |t| t.name()));
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
    if let Some(c) = coll {
        x.out.bulk_str("collection");
        collection(x.out, c);
    }
    Ok(())
}

/// Elements CRDT.STATE lists of a collection; the counts say how many more.
const STATE_ELEMENTS: usize = 100;

/// An element's value writes as `node:n@stamp=value`.
fn writes_text<V>(e: &chorus_crdt::coll::Elem<V>, show: impl Fn(&V) -> String) -> Vec<String> {
    e.writes
        .iter()
        .map(|w| {
            format!(
                "{}:{}@{}={}",
                w.dot.node,
                w.dot.n,
                w.stamp(),
                show(&w.value)
            )
        })
        .collect()
}

fn blob_writes(e: &chorus_crdt::coll::Elem<chorus_crdt::coll::Blob>) -> Vec<String> {
    writes_text(e, |v| String::from_utf8_lossy(&v.0).into_owned())
}

/// A collection part: its newest write, context, sizes, and the first
/// elements of each kind with their dots.
fn collection(out: &mut Reply, c: &chorus_crdt::Coll) {
    use chorus_crdt::Kind;
    out.map(9);
    out.bulk_str("at");
    out.bulk_str(&c.at.to_string());
    out.bulk_str("kind");
    out.bulk_str(c.kind.name());
    out.bulk_str("context");
    out.bulk_str(&c.ctx.describe());
    for kind in Kind::ALL {
        out.bulk_str(&format!("{}_elements", kind.name()));
        out.int(c.len(kind) as i64);
    }
    out.bulk_str("removal_records");
    out.int(c.removed.len() as i64);
    let mut lines: Vec<String> = Vec::new();
    for (f, e) in c.hash.iter().take(STATE_ELEMENTS) {
        let e = e.to_elem();
        let writes = blob_writes(&e);
        let counts: Vec<String> = e
            .counts
            .iter()
            .flat_map(|c| c.iter())
            .map(|(node, t)| {
                format!(
                    "node={node} epoch={} ops={} int={} float={}",
                    t.epoch, t.ops, t.int, t.float
                )
            })
            .collect();
        lines.push(format!(
            "hash {} writes=[{}] counts=[{}]",
            String::from_utf8_lossy(f),
            writes.join(" "),
            counts.join(" ")
        ));
    }
    for (m, adds) in c.set.iter().take(STATE_ELEMENTS) {
        let adds: Vec<String> = adds
            .iter()
            .map(|a| format!("{}:{}@{}", a.dot.node, a.dot.n, a.stamp()))
            .collect();
        lines.push(format!(
            "set {} adds=[{}]",
            String::from_utf8_lossy(m.bytes()),
            adds.join(" ")
        ));
    }
    for (m, e) in c.zset.iter().take(STATE_ELEMENTS) {
        let writes = writes_text(e, |v| chorus_crdt::number::format_score(v.0));
        let counts: Vec<String> = e
            .counts
            .iter()
            .flat_map(|c| c.iter())
            .map(|(node, t)| {
                format!(
                    "node={node} epoch={} ops={} float={}",
                    t.epoch, t.ops, t.float
                )
            })
            .collect();
        let score = c
            .score(m.bytes())
            .map_or_else(|| "none".to_string(), chorus_crdt::number::format_score);
        lines.push(format!(
            "zset {} score={score} writes=[{}] counts=[{}]",
            String::from_utf8_lossy(m.bytes()),
            writes.join(" "),
            counts.join(" ")
        ));
    }
    for (i, (pos, e)) in c.list.iter().take(STATE_ELEMENTS).enumerate() {
        let writes = blob_writes(e);
        lines.push(format!("list {i} at={pos} writes=[{}]", writes.join(" ")));
    }
    out.bulk_str("elements");
    out.array(lines.len());
    for l in &lines {
        out.bulk_str(l);
    }
}
