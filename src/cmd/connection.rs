//! Connection commands (Redis's connection group): PING, ECHO, QUIT, RESET,
//! HELLO, AUTH, SELECT.

use super::Flag::*;
use super::{int_arg, is, Args, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use std::sync::atomic::Ordering;

use super::client::valid_name;
use super::REDIS_COMPAT_VERSION;

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "ping",
        arity: -1,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "connection",
        syntax: "[message]",
        summary: "Returns the server's liveliness response.",
        run: ping,
    },
    Spec {
        name: "echo",
        arity: 2,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "connection",
        syntax: "message",
        summary: "Returns the given string.",
        run: echo,
    },
    Spec {
        name: "quit",
        arity: -1,
        flags: Flags::of(&[NoAuth, NoQueue, Fast]),
        keys: Keys::None,
        group: "connection",
        syntax: "",
        summary: "Closes the connection.",
        run: quit,
    },
    Spec {
        name: "reset",
        arity: 1,
        flags: Flags::of(&[NoAuth, NoQueue, Fast]),
        keys: Keys::None,
        group: "connection",
        syntax: "",
        summary: "Resets the connection.",
        run: reset,
    },
    Spec {
        name: "hello",
        arity: -1,
        flags: Flags::of(&[NoAuth, Fast, NoMulti]),
        keys: Keys::None,
        group: "connection",
        syntax: "[protover [AUTH username password] [SETNAME clientname]]",
        summary: "Handshakes with the Redis server.",
        run: hello,
    },
    Spec {
        name: "auth",
        arity: -2,
        flags: Flags::of(&[NoAuth, Fast, NoMulti]),
        keys: Keys::None,
        group: "connection",
        syntax: "[username] password",
        summary: "Authenticates the connection.",
        run: auth,
    },
    Spec {
        name: "select",
        arity: 2,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "connection",
        syntax: "index",
        summary: "Changes the selected database.",
        run: select,
    },
];

fn ping(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if args.len() <= 2 && !x.out.resp3 && x.session.subscribed() {
        // As Redis: a subscribed RESP2 client reads pushes, so PING
        // answers in their shape.
        x.out.array(2);
        x.out.bulk(b"pong");
        x.out.bulk(args.get(1).copied().unwrap_or_default());
        return Ok(());
    }
    match args.len() {
        1 => x.out.simple("PONG"),
        2 => x.out.bulk(args[1]),
        _ => return Err(Error::Arity("ping".into())),
    }
    Ok(())
}

fn echo(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    x.out.bulk(args[1]);
    Ok(())
}

fn quit(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    x.out.ok();
    x.session.close = true;
    Ok(())
}

fn reset(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    x.session.subs = None;
    x.session.tracking = None;
    x.session.caching = None;
    x.session.handle.redirect.store(-1, Ordering::Relaxed);
    x.session.multi = None;
    x.session.multi_dirty = false;
    x.session.watched.clear();
    x.session.watch_set = None;
    x.session.db = 0;
    x.out.resp3 = false;
    x.session.authed = !x.server.tunables.has_password();
    x.session.handle.db.store(0, Ordering::Relaxed);
    x.session.handle.resp.store(2, Ordering::Relaxed);
    x.session.handle.in_multi.store(false, Ordering::Relaxed);
    *x.session.handle.name.lock() = None;
    x.out.simple("RESET");
    Ok(())
}

/// Checks a password for the default user.
fn check_password(x: &mut Exec, user: Option<&[u8]>, password: &[u8]) -> CmdResult {
    let ok = {
        let required = x.server.tunables.requirepass.read();
        match (required.as_deref(), user) {
            // As Redis: the bare form is refused without a password, while
            // `default` (the one user, passwordless then) takes any.
            (None, None) => {
                return Err(Error::err("AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"))
            }
            (None, Some(u)) => u == b"default",
            (Some(p), _) => user.is_none_or(|u| u == b"default") && constant_time_eq(p, password),
        }
    };
    if !ok {
        return Err(Error::WrongPass);
    }
    x.session.authed = true;
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn auth(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    match args.len() {
        2 => check_password(x, None, args[1])?,
        3 => check_password(x, Some(args[1]), args[2])?,
        _ => return Err(Error::Syntax),
    }
    x.out.ok();
    Ok(())
}

fn hello(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let mut proto = if x.out.resp3 { 3 } else { 2 };
    let mut i = 1;
    if let Some(v) = args.get(1) {
        proto = match int_arg(v) {
            Ok(n @ (2 | 3)) => n,
            Ok(_) => return Err(Error::NoProto),
            Err(_) => {
                return Err(Error::err(
                    "Protocol version is not an integer or out of range",
                ))
            }
        };
        i = 2;
    }
    let mut name: Option<Vec<u8>> = None;
    let mut options = Args::new(args, i);
    while let Some(option) = options.next() {
        if is(option, "AUTH") && options.remaining() >= 2 {
            let (user, password) = (options.value()?, options.value()?);
            check_password(x, Some(user), password)?;
        } else if is(option, "SETNAME") && options.remaining() >= 1 {
            name = Some(valid_name(options.value()?)?.to_vec());
        } else {
            return Err(Error::err(format!(
                "Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(option)
            )));
        }
    }
    if !x.session.authed {
        return Err(Error::NoAuthBecause("HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"));
    }
    if let Some(n) = name {
        *x.session.handle.name.lock() = Some(n);
    }
    x.out.resp3 = proto == 3;
    x.session
        .handle
        .resp
        .store(proto as usize, Ordering::Relaxed);
    x.out.map(7);
    x.out.bulk_str("server");
    x.out.bulk_str("redis");
    x.out.bulk_str("version");
    x.out.bulk_str(REDIS_COMPAT_VERSION);
    x.out.bulk_str("proto");
    x.out.int(proto);
    x.out.bulk_str("id");
    x.out.int(x.session.handle.id as i64);
    x.out.bulk_str("mode");
    x.out.bulk_str("standalone");
    x.out.bulk_str("role");
    x.out.bulk_str("master");
    x.out.bulk_str("modules");
    x.out.array(0);
    Ok(())
}

fn select(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let n = super::db_index_arg(args[1], x.ks.databases())?;
    x.session.db = n;
    x.session.handle.db.store(n, Ordering::Relaxed);
    x.out.ok();
    Ok(())
}
