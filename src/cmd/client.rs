//! CLIENT: the live clients (ID, NAME, SETINFO, INFO, LIST, KILL).

use super::{int_arg, is, Args, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use std::sync::atomic::Ordering;

pub static COMMANDS: &[Spec] = &[
    Spec { name: "client", arity: -2, flags: Flags::of(&[]), keys: Keys::None, group: "connection", syntax: "ID|GETNAME|SETNAME name|SETINFO LIB-NAME|LIB-VER value|INFO|LIST [TYPE normal|pubsub|master|replica] [ID client-id ...]|KILL [ID client-id] [TYPE normal|pubsub|master|replica] [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no]", summary: "A container for client connection commands.", run: client },
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
    let flags = match (in_multi, subs.iter().any(|&n| n > 0)) {
        (true, _) => "x",
        (false, true) => "P",
        (false, false) => "N",
    };
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={} qbuf={} qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
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
    } else if is(sub, "HELP") {
        let lines = [
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ID",
            "GETNAME",
            "SETNAME <name>",
            "SETINFO <LIB-NAME|LIB-VER> <value>",
            "INFO",
            "LIST [TYPE normal|pubsub|master|replica] [ID id ...]",
            "KILL <ip:port> | KILL [ID id] [TYPE normal|pubsub|master|replica] [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no]",
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
                    .map_err(|_| Error::err("client-id should be greater than 0"))?;
                id = Some(n as u64);
            } else if options.eat("ADDR") {
                addr = Some(String::from_utf8_lossy(options.value()?).into_owned());
            } else if options.eat("LADDR") {
                laddr = Some(String::from_utf8_lossy(options.value()?).into_owned());
            } else if options.eat("SKIPME") {
                skipme = is(options.value()?, "yes");
            } else if options.eat("TYPE") {
                kind = Some(client_type(options.value()?)?);
            } else if options.eat("USER") || options.eat("MAXAGE") {
                // Every client is one of the default user.
                options.value()?;
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
