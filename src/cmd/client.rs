//! CLIENT: the live clients (ID, NAME, SETINFO, INFO, LIST, KILL) and
//! client-side caching (TRACKING, CACHING, GETREDIR, TRACKINGINFO).

use super::{int_arg, is, Args, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use crate::pause::PauseMode;
use std::sync::atomic::Ordering;

pub static COMMANDS: &[Spec] = &[
    Spec { name: "client", arity: -2, flags: Flags::of(&[]), keys: Keys::None, group: "connection", syntax: "ID|GETNAME|SETNAME name|SETINFO LIB-NAME|LIB-VER value|INFO|LIST [TYPE normal|pubsub|master|replica] [ID client-id ...]|KILL [ID client-id] [TYPE normal|pubsub|master|replica] [USER username] [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no]|TRACKING ON|OFF [REDIRECT client-id] [PREFIX prefix ...] [BCAST] [OPTIN] [OPTOUT] [NOLOOP]|CACHING YES|NO|GETREDIR|TRACKINGINFO|REPLY ON|OFF|SKIP|UNBLOCK client-id [TIMEOUT|ERROR]", summary: "A container for client connection commands.", run: client },
];

pub(super) fn valid_name(name: &[u8]) -> Result<&[u8], Error> {
    if name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err(Error::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(name)
}

fn client_line(x: &Exec, c: &crate::session::ClientHandle) -> String {
    let now = x.ks.clock.physical_unix_ms();
    let name = c.name.lock().clone().unwrap_or_default();
    let lib = c.lib.lock().clone();
    let in_multi = c.in_multi.load(Ordering::Relaxed);
    let subs = c
        .subscriptions
        .each_ref()
        .map(|n| n.load(Ordering::Relaxed));
    // In Redis's order.
    let mut flags = String::new();
    if subs.iter().any(|&n| n > 0) {
        flags.push('P');
    }
    if in_multi {
        flags.push('x');
    }
    if c.blocked.load(Ordering::Acquire) {
        flags.push('b');
    }
    if c.redirect.load(Ordering::Relaxed) >= 0 {
        flags.push('t');
    }
    if flags.is_empty() {
        flags.push('N');
    }
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={} qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user=default redir={} resp={} lib-name={} lib-ver={}",
        c.id,
        c.addr,
        c.laddr,
        String::from_utf8_lossy(&name),
        c.created.elapsed().as_secs(),
        now.saturating_sub(c.last_active_ms.load(Ordering::Relaxed)) / 1000,
        flags,
        c.db.load(Ordering::Relaxed),
        subs[0],
        subs[1],
        subs[2],
        if in_multi { 0 } else { -1 },
        c.qbuf.load(Ordering::Relaxed),
        c.omem.load(Ordering::Relaxed),
        c.buffers.load(Ordering::Relaxed),
        c.last_cmd.lock(),
        c.redirect.load(Ordering::Relaxed),
        c.resp.load(Ordering::Relaxed),
        lib.name,
        lib.version,
    )
}

fn client(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    if is(sub, "ID") && args.len() == 2 {
        x.out.int(x.session.handle.id as i64);
    } else if is(sub, "SETNAME") && args.len() == 3 {
        let name = valid_name(args[2])?;
        *x.session.handle.name.lock() = (!name.is_empty()).then(|| name.to_vec());
        x.out.ok();
    } else if is(sub, "GETNAME") && args.len() == 2 {
        let name = x.session.handle.name.lock().clone();
        x.out.bulk_or_null(name.as_deref());
    } else if is(sub, "SETINFO") && args.len() == 4 {
        let value = String::from_utf8_lossy(valid_name(args[3])?).into_owned();
        let mut lib = x.session.handle.lib.lock();
        if is(args[2], "LIB-NAME") {
            lib.name = value;
        } else if is(args[2], "LIB-VER") {
            lib.version = value;
        } else {
            return Err(Error::err(format!(
                "Unrecognized option '{}'",
                String::from_utf8_lossy(args[2])
            )));
        }
        drop(lib);
        x.out.ok();
    } else if is(sub, "REPLY") && args.len() == 3 {
        // As Redis: ON answers OK; OFF and SKIP answer nothing (this
        // command is muted by them, see `connection`).
        if is(args[2], "ON") {
            x.session.reply_off = false;
            x.session.reply_skip_next = false;
            x.session.muted = false;
            x.out.ok();
        } else if is(args[2], "OFF") {
            x.session.reply_off = true;
            x.session.muted = true;
        } else if is(args[2], "SKIP") {
            if !x.session.reply_off {
                x.session.reply_skip_next = true;
            }
            x.session.muted = true;
        } else {
            return Err(Error::Syntax);
        }
    } else if is(sub, "UNBLOCK") && (args.len() == 3 || args.len() == 4) {
        let reason = match args.get(3) {
            None => crate::session::UNBLOCK_TIMEOUT,
            Some(r) if is(r, "TIMEOUT") => crate::session::UNBLOCK_TIMEOUT,
            Some(r) if is(r, "ERROR") => crate::session::UNBLOCK_ERROR,
            Some(_) => {
                return Err(Error::err(
                    "CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                ))
            }
        };
        let id = int_arg(args[2])?;
        let target = x
            .server
            .clients
            .list()
            .into_iter()
            .find(|h| h.id as i64 == id && h.blocked.load(Ordering::Acquire));
        match target {
            Some(h) => {
                h.unblock_as.store(reason, Ordering::Release);
                h.unblock.notify_one();
                x.out.int(1);
            }
            None => x.out.int(0),
        }
    } else if is(sub, "INFO") && args.len() == 2 {
        let line = client_line(x, &x.session.handle.clone());
        x.out.verbatim(&format!("{line}\n"));
    } else if is(sub, "LIST") {
        let mut ids: Option<Vec<u64>> = None;
        let mut kind = None;
        let mut options = Args::new(args, 2);
        while !options.is_empty() {
            if options.eat("TYPE") {
                kind = Some(client_type(options.value()?)?);
            } else if options.eat("ID") && !options.is_empty() {
                let mut list = Vec::new();
                for a in options.rest() {
                    let n = int_arg(a).map_err(|_| Error::err("Invalid client ID"))?;
                    list.push(n as u64);
                }
                ids = Some(list);
            } else {
                return Err(Error::Syntax);
            }
        }
        let handles: Vec<_> = x.server.clients.list();
        let mut text = String::new();
        for h in handles {
            if ids.as_ref().is_none_or(|l| l.contains(&h.id))
                && kind.is_none_or(|k| k == ClientType::of(&h))
            {
                text.push_str(&client_line(x, &h));
                text.push('\n');
            }
        }
        x.out.verbatim(&text);
    } else if is(sub, "KILL") {
        client_kill(x, args)?;
    } else if is(sub, "PAUSE") && (args.len() == 3 || args.len() == 4) {
        let ms = chorus_crdt::number::parse_int(args[2])
            .ok_or(Error::err("timeout is not an integer or out of range"))?;
        let ms = u64::try_from(ms).map_err(|_| Error::err("timeout is negative"))?;
        let mode = match args.get(3) {
            None => PauseMode::All,
            Some(m) if is(m, "ALL") => PauseMode::All,
            Some(m) if is(m, "WRITE") => PauseMode::Write,
            Some(_) => return Err(Error::err("CLIENT PAUSE mode must be WRITE or ALL")),
        };
        x.server.pause.pause(ms, mode);
        x.out.ok();
    } else if is(sub, "UNPAUSE") && args.len() == 2 {
        x.server.pause.unpause();
        x.out.ok();
    } else if is(sub, "TRACKING") && args.len() >= 3 {
        tracking(x, args)?;
    } else if is(sub, "CACHING") && args.len() == 3 {
        caching(x, args[2])?;
    } else if is(sub, "GETREDIR") && args.len() == 2 {
        let redirect = match &x.session.tracking {
            None => -1,
            Some(t) => t.tracker.options().redirect as i64,
        };
        x.out.int(redirect);
    } else if is(sub, "TRACKINGINFO") && args.len() == 2 {
        tracking_info(x);
    } else if is(sub, "HELP") {
        let lines = [
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ID",
            "GETNAME",
            "SETNAME <name>",
            "SETINFO <LIB-NAME|LIB-VER> <value>",
            "INFO",
            "LIST [TYPE normal|pubsub|master|replica] [ID id ...]",
            "PAUSE <timeout> [WRITE|ALL]",
            "UNPAUSE",
            "KILL <ip:port> | KILL [ID id] [TYPE normal|pubsub|master|replica] [USER username] [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no]",
            "TRACKING (ON|OFF) [REDIRECT <id>] [BCAST] [PREFIX <prefix> [...]] [OPTIN] [OPTOUT] [NOLOOP]",
            "CACHING (YES|NO)",
            "GETREDIR",
            "TRACKINGINFO",
            "REPLY (ON|OFF|SKIP)",
            "UNBLOCK <id> [TIMEOUT|ERROR]",
        ];
        x.out.lines(&lines);
    } else {
        return Err(Error::unknown_subcommand("client", sub));
    }
    Ok(())
}

fn client_kill(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let me = x.session.handle.id;
    let handles: Vec<_> = x.server.clients.list();
    let old_style = args.len() == 3;
    let (mut id, mut addr, mut laddr, mut skipme) = (None, None, None, true);
    let mut kind = None;
    if old_style {
        addr = Some(String::from_utf8_lossy(args[2]).into_owned());
        skipme = false;
    } else {
        let mut options = Args::new(args, 2);
        while !options.is_empty() {
            if options.eat("ID") {
                let n = int_arg(options.value()?)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(Error::err("client-id should be greater than 0"))?;
                id = Some(n as u64);
            } else if options.eat("ADDR") {
                addr = Some(String::from_utf8_lossy(options.value()?).into_owned());
            } else if options.eat("LADDR") {
                laddr = Some(String::from_utf8_lossy(options.value()?).into_owned());
            } else if options.eat("SKIPME") {
                let value = options.value()?;
                skipme = if is(value, "yes") {
                    true
                } else if is(value, "no") {
                    false
                } else {
                    return Err(Error::Syntax);
                };
            } else if options.eat("TYPE") {
                kind = Some(client_type(options.value()?)?);
            } else if options.eat("USER") {
                // Every client is one of the default user, the only one.
                let user = options.value()?;
                if user != b"default" {
                    return Err(Error::err(format!(
                        "No such user '{}'",
                        String::from_utf8_lossy(user)
                    )));
                }
            } else {
                return Err(Error::Syntax);
            }
        }
    }
    let mut killed = 0;
    for h in handles {
        let matches = id.is_none_or(|i| i == h.id)
            && addr.as_ref().is_none_or(|a| *a == h.addr.to_string())
            && laddr.as_ref().is_none_or(|a| *a == h.laddr.to_string())
            && kind.is_none_or(|k| k == ClientType::of(&h))
            && !(skipme && h.id == me);
        if matches {
            killed += 1;
            if h.id == me {
                x.session.close = true;
            } else {
                h.kill();
            }
        }
    }
    if old_style {
        if killed == 0 {
            return Err(Error::err("No such client"));
        }
        x.out.ok();
    } else {
        x.out.int(killed);
    }
    Ok(())
}

/// CLIENT LIST and KILL's `TYPE`: a client is `pubsub` while subscribed,
/// else `normal` (peers replicate over QUIC: no client is a master or a
/// replica).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientType {
    Normal,
    PubSub,
    Replication,
}

impl ClientType {
    fn of(h: &crate::session::ClientHandle) -> ClientType {
        match h
            .subscriptions
            .iter()
            .any(|n| n.load(Ordering::Relaxed) > 0)
        {
            true => ClientType::PubSub,
            false => ClientType::Normal,
        }
    }
}

fn client_type(name: &[u8]) -> Result<ClientType, Error> {
    if is(name, "normal") {
        Ok(ClientType::Normal)
    } else if is(name, "pubsub") {
        Ok(ClientType::PubSub)
    } else if is(name, "master") || is(name, "replica") || is(name, "slave") {
        Ok(ClientType::Replication)
    } else {
        Err(Error::err(format!(
            "Unknown client type '{}'",
            String::from_utf8_lossy(name)
        )))
    }
}

/// CLIENT TRACKING ON|OFF with its options, checked in Redis 7.0's order
/// and words.
fn tracking(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let mut o = crate::tracking::Options::default();
    let mut target = None;
    let mut options = Args::new(args, 3);
    while !options.is_empty() {
        if options.eat("REDIRECT") {
            if o.redirect != 0 {
                return Err(Error::err(
                    "A client can only redirect to a single other client",
                ));
            }
            let id = int_arg(options.value()?)?;
            let handle = x
                .server
                .clients
                .list()
                .into_iter()
                .find(|h| h.id as i64 == id);
            let Some(handle) = handle else {
                return Err(Error::err(
                    "The client ID you want redirect to does not exist",
                ));
            };
            o.redirect = handle.id;
            target = Some(handle.mailbox.clone());
        } else if options.eat("BCAST") {
            o.bcast = true;
        } else if options.eat("OPTIN") {
            o.optin = true;
        } else if options.eat("OPTOUT") {
            o.optout = true;
        } else if options.eat("NOLOOP") {
            o.noloop = true;
        } else if options.eat("PREFIX") {
            o.prefixes
                .push(bytes::Bytes::copy_from_slice(options.value()?));
        } else {
            return Err(Error::Syntax);
        }
    }
    if is(args[2], "off") {
        x.session.tracking = None;
        x.session.caching = None;
        x.session.handle.redirect.store(-1, Ordering::Relaxed);
        x.out.ok();
        return Ok(());
    }
    if !is(args[2], "on") {
        return Err(Error::Syntax);
    }
    let current = x
        .session
        .tracking
        .as_ref()
        .map(|t| t.tracker.options().clone());
    if !o.bcast && !o.prefixes.is_empty() {
        return Err(Error::err(
            "PREFIX option requires BCAST mode to be enabled",
        ));
    }
    if let Some(c) = &current {
        if c.bcast != o.bcast {
            return Err(Error::err("You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode."));
        }
    }
    if o.bcast && (o.optin || o.optout) {
        return Err(Error::err("OPTIN and OPTOUT are not compatible with BCAST"));
    }
    if o.optin && o.optout {
        return Err(Error::err(
            "You can't specify both OPTIN mode and OPTOUT mode",
        ));
    }
    if let Some(c) = &current {
        if (o.optin && c.optout) || (o.optout && c.optin) {
            return Err(Error::err("You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode."));
        }
    }
    if o.bcast {
        // As Redis: BCAST without a prefix is the empty prefix, every key;
        // prefixes given again add to those already on, none overlapping.
        let mut given = std::mem::take(&mut o.prefixes);
        if given.is_empty() && current.as_ref().is_none_or(|c| c.prefixes.is_empty()) {
            given.push(bytes::Bytes::new());
        }
        let existing = current.map(|c| c.prefixes).unwrap_or_default();
        let overlap = |a: &[u8], b: &[u8]| a.starts_with(b) || b.starts_with(a);
        for (n, p) in given.iter().enumerate() {
            if let Some(e) = existing.iter().find(|e| overlap(e, p)) {
                return Err(Error::err(format!(
                    "Prefix '{}' overlaps with an existing prefix '{}'. Prefixes for a single client must not overlap.",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(e)
                )));
            }
            if let Some(other) = given[n + 1..].iter().find(|q| overlap(q, p)) {
                return Err(Error::err(format!(
                    "Prefix '{}' overlaps with another provided prefix '{}'. Prefixes for a single client must not overlap.",
                    String::from_utf8_lossy(p),
                    String::from_utf8_lossy(other)
                )));
            }
        }
        o.prefixes = existing.into_iter().chain(given).collect();
    }
    let redirect = o.redirect as i64;
    let guard = x.ks.invalidations.enable(
        x.session.handle.id,
        o,
        &x.session.handle.mailbox,
        target.as_ref(),
    );
    x.session.tracking = Some(guard);
    x.session.handle.redirect.store(redirect, Ordering::Relaxed);
    x.out.ok();
    Ok(())
}

fn caching(x: &mut Exec, word: &[u8]) -> CmdResult {
    let Some(o) = x
        .session
        .tracking
        .as_ref()
        .map(|t| t.tracker.options().clone())
    else {
        return Err(Error::err("CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"));
    };
    if is(word, "yes") {
        if !o.optin {
            return Err(Error::err(
                "CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            ));
        }
        x.session.caching = Some(true);
    } else if is(word, "no") {
        if !o.optout {
            return Err(Error::err(
                "CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            ));
        }
        x.session.caching = Some(false);
    } else {
        return Err(Error::Syntax);
    }
    x.out.ok();
    Ok(())
}

fn tracking_info(x: &mut Exec) {
    let tracker = x.session.tracking.as_ref().map(|t| t.tracker.clone());
    let o = tracker.as_ref().map(|t| t.options().clone());
    let mut flags: Vec<&str> = Vec::new();
    match &o {
        None => flags.push("off"),
        Some(o) => {
            flags.push("on");
            if o.bcast {
                flags.push("bcast");
            }
            if o.optin {
                flags.push("optin");
                if x.session.caching == Some(true) {
                    flags.push("caching-yes");
                }
            }
            if o.optout {
                flags.push("optout");
                if x.session.caching == Some(false) {
                    flags.push("caching-no");
                }
            }
            if o.noloop {
                flags.push("noloop");
            }
            if tracker
                .as_ref()
                .is_some_and(|t| t.broken.load(Ordering::Relaxed))
            {
                flags.push("broken_redirect");
            }
        }
    }
    x.out.map(3);
    x.out.bulk(b"flags");
    x.out.set(flags.len());
    for f in &flags {
        x.out.bulk(f.as_bytes());
    }
    x.out.bulk(b"redirect");
    x.out.int(o.as_ref().map_or(-1, |o| o.redirect as i64));
    x.out.bulk(b"prefixes");
    let prefixes = o.map(|o| o.prefixes).unwrap_or_default();
    x.out.array(prefixes.len());
    for p in &prefixes {
        x.out.bulk(p);
    }
}
