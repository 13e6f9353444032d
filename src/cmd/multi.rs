//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH. EXEC runs with the
//! shards of every queued command and watched key locked (see
//! [`lock_queued`]), so nothing interleaves with it.

use super::Flag::*;
use super::{CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use std::sync::atomic::Ordering;

use smallvec::SmallVec;

use crate::keyspace::{Keyspace, Locked};
use crate::session::{Session, Watched};

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "multi",
        arity: 1,
        flags: Flags::of(&[NoQueue, Fast]),
        keys: Keys::None,
        group: "transactions",
        syntax: "",
        summary: "Starts a transaction.",
        run: multi,
    },
    Spec {
        name: "exec",
        arity: 1,
        flags: Flags::of(&[NoQueue]),
        keys: Keys::Queued,
        group: "transactions",
        syntax: "",
        summary: "Executes all commands in a transaction.",
        run: exec,
    },
    Spec {
        name: "discard",
        arity: 1,
        flags: Flags::of(&[NoQueue, Fast]),
        keys: Keys::None,
        group: "transactions",
        syntax: "",
        summary: "Discards a transaction.",
        run: discard,
    },
    Spec {
        name: "watch",
        arity: -2,
        flags: Flags::of(&[NoQueue, Fast]),
        keys: Keys::at(1, -1, 1),
        group: "transactions",
        syntax: "key ...",
        summary: "Monitors changes to keys to determine the execution of a transaction.",
        run: watch,
    },
    Spec {
        name: "unwatch",
        arity: 1,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "transactions",
        syntax: "",
        summary: "Forgets about watched keys of a transaction.",
        run: unwatch,
    },
];

fn multi(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    if x.session.multi.is_some() {
        return Err(Error::err("MULTI calls can not be nested"));
    }
    x.session.multi = Some(Vec::new());
    x.session.handle.in_multi.store(true, Ordering::Relaxed);
    x.out.ok();
    Ok(())
}

fn end_multi(x: &mut Exec) {
    discard_session(x.session);
}

/// Ends the session's transaction, its queue and watches dropped.
pub(super) fn discard_session(session: &mut Session) {
    session.multi = None;
    session.multi_dirty = false;
    session.watched.clear();
    session.watch_set = None;
    session.handle.in_multi.store(false, Ordering::Relaxed);
}

fn discard(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    if x.session.multi.is_none() {
        return Err(Error::err("DISCARD without MULTI"));
    }
    end_multi(x);
    x.out.ok();
    Ok(())
}

/// Whether a watched key still holds what it held at WATCH.
fn unchanged(x: &mut Exec, w: &Watched) -> Result<bool, Error> {
    let now = x.now_ms;
    let acked = x.ks.gc_acked();
    let shard = x.locked.shard(x.ks.shard_of(&w.key))?;
    shard.dbs[w.db].warm(&w.key, acked);
    let state = shard.dbs[w.db].get(&w.key);
    let visible = state.is_some_and(|s| s.exists(now));
    Ok(visible == w.visible && state == w.state.as_ref())
}

fn exec(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    let Some(queue) = x.session.multi.take() else {
        return Err(Error::err("EXEC without MULTI"));
    };
    if x.session.multi_dirty {
        end_multi(x);
        return Err(Error::ExecAbort);
    }
    let watched = std::mem::take(&mut x.session.watched);
    let touched = x.session.watch_set.as_ref().is_some_and(|s| s.touched());
    for w in &watched {
        if touched || !unchanged(x, w)? {
            end_multi(x);
            x.out.null_array();
            return Ok(());
        }
    }
    end_multi(x);
    x.out.array(queue.len());
    x.session.in_exec = true;
    let caching = x.session.caching.take();
    for q in &queue {
        let args: SmallVec<[&[u8]; 8]> = q.args.iter().map(|a| a.as_slice()).collect();
        x.touch_named_keys(q.spec, &args);
        let first_key = q.spec.key_positions(&args).next().map(|i| args[i]);
        let (ks, db) = (x.ks, x.session.db);
        let ran =
            crate::notify::as_command(ks, q.spec.name, first_key, db, || (q.spec.run)(x, &args));
        match ran {
            Ok(()) => x.track_reads(q.spec, &args, caching),
            Err(e) => super::reply_error(x.server, x.out, &e.text()),
        }
    }
    x.session.in_exec = false;
    Ok(())
}

fn watch(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if x.session.multi.is_some() {
        return Err(Error::err("WATCH inside MULTI is not allowed"));
    }
    let now = x.now_ms;
    let db = x.session.db;
    for key in &args[1..] {
        let state = x.db(key)?.get(key).cloned();
        let visible = state.as_ref().is_some_and(|s| s.exists(now));
        x.session.watched.push(Watched {
            db,
            key: key.to_vec(),
            state,
            visible,
        });
        x.session
            .watch_set
            .get_or_insert_with(|| crate::watches::WatchSet::new(x.ks.watches.clone()))
            .add(db, key);
    }
    x.out.ok();
    Ok(())
}

fn unwatch(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    x.session.watched.clear();
    x.session.watch_set = None;
    x.out.ok();
    Ok(())
}

/// The shards EXEC locks: those of every queued command's keys and every
/// watched key, or all of them when a queued command needs all.
pub(super) fn lock_queued<'a>(ks: &'a Keyspace, session: &Session) -> Locked<'a> {
    let Some(queue) = &session.multi else {
        return Locked::empty();
    };
    if queue.iter().any(|q| q.spec.keys == Keys::All) {
        return ks.lock_all();
    }
    let mut shards: SmallVec<[usize; 4]> = session
        .watched
        .iter()
        .map(|w| ks.shard_of(&w.key))
        .collect();
    for q in queue {
        let args: SmallVec<[&[u8]; 8]> = q.args.iter().map(|a| a.as_slice()).collect();
        super::shards_for(ks, q.spec, &args, &mut shards);
    }
    ks.lock(shards)
}
