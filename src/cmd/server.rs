//! Connection, server and transaction commands.

use std::sync::atomic::Ordering;
use std::time::Duration;

use smallvec::SmallVec;

use super::flag::*;
use super::{
    int_arg, is, table, unknown_subcommand, CmdResult, Error, Exec, Spec, DB_RANGE, SYNTAX,
};
use crate::config::Origin;
use crate::glob;
use crate::server::Watched;

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "ping",
        arity: -1,
        flags: FAST,
        keys: (0, 0, 0),
        group: "connection",
        summary: "Returns the server's liveliness response.",
        run: ping,
    },
    Spec {
        name: "echo",
        arity: 2,
        flags: FAST,
        keys: (0, 0, 0),
        group: "connection",
        summary: "Returns the given string.",
        run: echo,
    },
    Spec {
        name: "quit",
        arity: -1,
        flags: NOAUTH | NOQUEUE | FAST,
        keys: (0, 0, 0),
        group: "connection",
        summary: "Closes the connection.",
        run: quit,
    },
    Spec {
        name: "reset",
        arity: 1,
        flags: NOAUTH | NOQUEUE | FAST,
        keys: (0, 0, 0),
        group: "connection",
        summary: "Resets the connection.",
        run: reset,
    },
    Spec {
        name: "hello",
        arity: -1,
        flags: NOAUTH | FAST | NOMULTI,
        keys: (0, 0, 0),
        group: "connection",
        summary: "Handshakes with the Redis server.",
        run: hello,
    },
    Spec {
        name: "auth",
        arity: -2,
        flags: NOAUTH | FAST | NOMULTI,
        keys: (0, 0, 0),
        group: "connection",
        summary: "Authenticates the connection.",
        run: auth,
    },
    Spec {
        name: "select",
        arity: 2,
        flags: FAST,
        keys: (0, 0, 0),
        group: "connection",
        summary: "Changes the selected database.",
        run: select,
    },
    Spec {
        name: "client",
        arity: -2,
        flags: 0,
        keys: (0, 0, 0),
        group: "connection",
        summary: "A container for client connection commands.",
        run: client,
    },
    Spec {
        name: "config",
        arity: -2,
        flags: ADMIN,
        keys: (0, 0, 0),
        group: "server",
        summary: "A container for server configuration commands.",
        run: config,
    },
    Spec {
        name: "info",
        arity: -1,
        flags: 0,
        keys: (0, 0, 0),
        group: "server",
        summary: "Returns information and statistics about the server.",
        run: info,
    },
    Spec {
        name: "command",
        arity: -1,
        flags: 0,
        keys: (0, 0, 0),
        group: "server",
        summary: "Returns detailed information about all commands.",
        run: command,
    },
    Spec {
        name: "time",
        arity: 1,
        flags: FAST,
        keys: (0, 0, 0),
        group: "server",
        summary: "Returns the server time.",
        run: time,
    },
    Spec {
        name: "lastsave",
        arity: 1,
        flags: FAST,
        keys: (0, 0, 0),
        group: "server",
        summary: "Returns the Unix timestamp of the last successful save to disk.",
        run: lastsave,
    },
    Spec {
        name: "shutdown",
        arity: -1,
        flags: ADMIN | NOMULTI,
        keys: (0, 0, 0),
        group: "server",
        summary: "Synchronously saves the database(s) to disk and shuts down the Redis server.",
        run: shutdown,
    },
    Spec {
        name: "debug",
        arity: -2,
        flags: ADMIN,
        keys: (0, 0, 0),
        group: "server",
        summary: "A container for debugging commands.",
        run: debug,
    },
    Spec {
        name: "multi",
        arity: 1,
        flags: NOQUEUE | FAST,
        keys: (0, 0, 0),
        group: "transactions",
        summary: "Starts a transaction.",
        run: multi,
    },
    Spec {
        name: "exec",
        arity: 1,
        flags: NOQUEUE,
        keys: (0, 0, 0),
        group: "transactions",
        summary: "Executes all commands in a transaction.",
        run: exec,
    },
    Spec {
        name: "discard",
        arity: 1,
        flags: NOQUEUE | FAST,
        keys: (0, 0, 0),
        group: "transactions",
        summary: "Discards a transaction.",
        run: discard,
    },
    Spec {
        name: "watch",
        arity: -2,
        flags: NOQUEUE | FAST,
        keys: (1, -1, 1),
        group: "transactions",
        summary: "Monitors changes to keys to determine the execution of a transaction.",
        run: watch,
    },
    Spec {
        name: "unwatch",
        arity: 1,
        flags: FAST,
        keys: (0, 0, 0),
        group: "transactions",
        summary: "Forgets about watched keys of a transaction.",
        run: unwatch,
    },
];

/// The Redis version clients are told, for feature detection.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

fn ping(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    match args.len() {
        1 => x.out.simple("PONG"),
        2 => x.out.bulk(args[1]),
        _ => return Err(Error::Owned(super::wrong_arity("ping"))),
    }
    Ok(())
}

fn echo(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    x.out.bulk(args[1]);
    Ok(())
}

fn quit(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    x.out.ok();
    x.client.close = true;
    Ok(())
}

fn reset(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    x.client.multi = None;
    x.client.multi_dirty = false;
    x.client.watched.clear();
    x.client.db = 0;
    x.out.resp3 = false;
    x.client.authed = !x.shared.tunables.has_password();
    x.client.handle.db.store(0, Ordering::Relaxed);
    x.client.handle.resp.store(2, Ordering::Relaxed);
    x.client.handle.in_multi.store(false, Ordering::Relaxed);
    *x.client.handle.name.lock() = None;
    x.out.simple("RESET");
    Ok(())
}

/// Checks a password for the default user.
fn check_password(x: &mut Exec, user: Option<&[u8]>, password: &[u8]) -> CmdResult {
    let ok = {
        let required = x.shared.tunables.requirepass.read();
        match required.as_deref() {
            None => {
                return Err(Error::Static(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ))
            }
            Some(p) => user.is_none_or(|u| u == b"default") && constant_time_eq(p, password),
        }
    };
    if !ok {
        return Err(Error::Static(
            "WRONGPASS invalid username-password pair or user is disabled.",
        ));
    }
    x.client.authed = true;
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn auth(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    match args.len() {
        2 => check_password(x, None, args[1])?,
        3 => check_password(x, Some(args[1]), args[2])?,
        _ => return Err(SYNTAX),
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
            Ok(_) => return Err(Error::Static("NOPROTO unsupported protocol version")),
            Err(_) => {
                return Err(Error::Static(
                    "ERR Protocol version is not an integer or out of range",
                ))
            }
        };
        i = 2;
    }
    let mut name: Option<Vec<u8>> = None;
    while i < args.len() {
        if is(args[i], "AUTH") && i + 2 < args.len() {
            check_password(x, Some(args[i + 1]), args[i + 2])?;
            i += 3;
        } else if is(args[i], "SETNAME") && i + 1 < args.len() {
            name = Some(valid_name(args[i + 1])?.to_vec());
            i += 2;
        } else {
            return Err(Error::Owned(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(args[i])
            )));
        }
    }
    if !x.client.authed {
        return Err(Error::Static(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ));
    }
    if let Some(n) = name {
        *x.client.handle.name.lock() = Some(n);
    }
    x.out.resp3 = proto == 3;
    x.client
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
    x.out.int(x.client.handle.id as i64);
    x.out.bulk_str("mode");
    x.out.bulk_str("standalone");
    x.out.bulk_str("role");
    x.out.bulk_str("master");
    x.out.bulk_str("modules");
    x.out.array(0);
    Ok(())
}

fn select(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let n = int_arg(args[1])?;
    if n < 0 || n as usize >= x.ks.databases() {
        return Err(DB_RANGE);
    }
    x.client.db = n as usize;
    x.client.handle.db.store(n as usize, Ordering::Relaxed);
    x.out.ok();
    Ok(())
}

fn valid_name(name: &[u8]) -> Result<&[u8], Error> {
    if name.iter().any(|&b| b <= b' ' || b > b'~') {
        return Err(Error::Static(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(name)
}

fn client_line(x: &Exec, c: &crate::server::ClientHandle) -> String {
    let now = x.ks.clock.physical_unix_ms();
    let name = c.name.lock().clone().unwrap_or_default();
    let lib = c.lib.lock().clone();
    let in_multi = c.in_multi.load(Ordering::Relaxed);
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
        c.id,
        c.addr,
        c.laddr,
        String::from_utf8_lossy(&name),
        c.created.elapsed().as_secs(),
        now.saturating_sub(c.last_active_ms.load(Ordering::Relaxed)) / 1000,
        if in_multi { "x" } else { "N" },
        c.db.load(Ordering::Relaxed),
        if in_multi { 0 } else { -1 },
        c.last_cmd.lock(),
        c.resp.load(Ordering::Relaxed),
        lib.0,
        lib.1,
    )
}

fn client(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    if is(sub, "ID") && args.len() == 2 {
        x.out.int(x.client.handle.id as i64);
    } else if is(sub, "SETNAME") && args.len() == 3 {
        let name = valid_name(args[2])?;
        *x.client.handle.name.lock() = (!name.is_empty()).then(|| name.to_vec());
        x.out.ok();
    } else if is(sub, "GETNAME") && args.len() == 2 {
        let name = x.client.handle.name.lock().clone();
        x.out.bulk_or_null(name.as_deref());
    } else if is(sub, "SETINFO") && args.len() == 4 {
        let value = String::from_utf8_lossy(valid_name(args[3])?).into_owned();
        let mut lib = x.client.handle.lib.lock();
        if is(args[2], "LIB-NAME") {
            lib.0 = value;
        } else if is(args[2], "LIB-VER") {
            lib.1 = value;
        } else {
            return Err(Error::Owned(format!(
                "ERR Unrecognized option '{}'",
                String::from_utf8_lossy(args[2])
            )));
        }
        drop(lib);
        x.out.ok();
    } else if is(sub, "INFO") && args.len() == 2 {
        let line = client_line(x, &x.client.handle.clone());
        x.out.verbatim(&format!("{line}\n"));
    } else if is(sub, "LIST") {
        let mut ids: Option<Vec<u64>> = None;
        let mut i = 2;
        while i < args.len() {
            if is(args[i], "TYPE") && i + 1 < args.len() {
                if !is(args[i + 1], "normal") {
                    ids = Some(Vec::new());
                }
                i += 2;
            } else if is(args[i], "ID") && i + 1 < args.len() {
                let mut list = Vec::new();
                for a in &args[i + 1..] {
                    let n = int_arg(a).map_err(|_| Error::Static("ERR Invalid client ID"))?;
                    list.push(n as u64);
                }
                ids = Some(list);
                i = args.len();
            } else {
                return Err(SYNTAX);
            }
        }
        let handles: Vec<_> = x.shared.clients.lock().values().cloned().collect();
        let mut text = String::new();
        for h in handles {
            if ids.as_ref().is_none_or(|l| l.contains(&h.id)) {
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
            "LIST [TYPE normal] [ID id ...]",
            "KILL <ip:port> | KILL [ID id] [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no]",
        ];
        x.out.array(lines.len());
        for l in lines {
            x.out.simple(l);
        }
    } else {
        return Err(unknown_subcommand("client", sub));
    }
    Ok(())
}

fn client_kill(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let me = x.client.handle.id;
    let handles: Vec<_> = x.shared.clients.lock().values().cloned().collect();
    let old_style = args.len() == 3;
    let (mut id, mut addr, mut laddr, mut skipme) = (None, None, None, true);
    if old_style {
        addr = Some(String::from_utf8_lossy(args[2]).into_owned());
        skipme = false;
    } else {
        let mut i = 2;
        while i < args.len() {
            let v = args.get(i + 1).ok_or(SYNTAX)?;
            if is(args[i], "ID") {
                id = Some(
                    int_arg(v)
                        .map_err(|_| Error::Static("ERR client-id should be greater than 0"))?
                        as u64,
                );
            } else if is(args[i], "ADDR") {
                addr = Some(String::from_utf8_lossy(v).into_owned());
            } else if is(args[i], "LADDR") {
                laddr = Some(String::from_utf8_lossy(v).into_owned());
            } else if is(args[i], "SKIPME") {
                skipme = is(v, "yes");
            } else if is(args[i], "TYPE") || is(args[i], "USER") || is(args[i], "MAXAGE") {
                // Every client is a normal client of the default user.
            } else {
                return Err(SYNTAX);
            }
            i += 2;
        }
    }
    let mut killed = 0;
    for h in handles {
        let matches = id.is_none_or(|i| i == h.id)
            && addr.as_ref().is_none_or(|a| *a == h.addr.to_string())
            && laddr.as_ref().is_none_or(|a| *a == h.laddr.to_string())
            && !(skipme && h.id == me);
        if matches {
            killed += 1;
            if h.id == me {
                x.client.close = true;
            } else {
                h.killed.store(true, Ordering::Relaxed);
                h.kill.notify_one();
            }
        }
    }
    if old_style {
        if killed == 0 {
            return Err(Error::Static("ERR No such client"));
        }
        x.out.ok();
    } else {
        x.out.int(killed);
    }
    Ok(())
}

/// Every parameter CONFIG GET knows, with its current value.
fn config_params(x: &Exec) -> Vec<(&'static str, String)> {
    let c = &x.shared.config;
    let t = &x.shared.tunables;
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut params = vec![
        ("port", c.port.to_string()),
        ("bind", c.bind.join(" ")),
        ("server-threads", c.server_threads.to_string()),
        ("server-thread-affinity", yes(c.server_thread_affinity)),
        (
            "requirepass",
            t.requirepass
                .read()
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
        ),
        (
            "protected-mode",
            yes(t.protected_mode.load(Ordering::Relaxed)),
        ),
        (
            "maxclients",
            t.maxclients.load(Ordering::Relaxed).to_string(),
        ),
        (
            "timeout",
            t.timeout_secs.load(Ordering::Relaxed).to_string(),
        ),
        ("databases", c.databases.to_string()),
        ("proto-max-bulk-len", t.max_bulk().to_string()),
        (
            "client-query-buffer-limit",
            t.query_buffer_limit.load(Ordering::Relaxed).to_string(),
        ),
        ("loglevel", t.loglevel.lock().as_str().to_string()),
        (
            "logfile",
            c.logfile
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        // No RDB snapshots; tools such as redis-benchmark ask.
        ("save", String::new()),
        (
            "appendonly",
            if c.appendonly { "yes" } else { "no" }.to_string(),
        ),
        ("appendfsync", c.appendfsync.as_str().to_string()),
        ("dir", c.dir.display().to_string()),
    ];
    // Every other known directive, as written or its default.
    for (name, value) in c.params() {
        if !params.iter().any(|(listed, _)| *listed == name) {
            params.push((name, value));
        }
    }
    params
}

fn config(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    if is(sub, "GET") && args.len() >= 3 {
        let params = config_params(x);
        let mut found: Vec<&(&str, String)> = Vec::new();
        for pattern in &args[2..] {
            for p in &params {
                if glob::matches(pattern, p.0.as_bytes(), true) && !found.iter().any(|f| f.0 == p.0)
                {
                    found.push(p);
                }
            }
        }
        x.out.map(found.len());
        for (name, value) in found {
            x.out.bulk_str(name);
            x.out.bulk_str(value);
        }
    } else if is(sub, "SET") && args.len() >= 4 && args.len().is_multiple_of(2) {
        for pair in args[2..].chunks(2) {
            config_set(x, pair[0], pair[1])?;
        }
        x.out.ok();
    } else if is(sub, "RESETSTAT") && args.len() == 2 {
        let s = &x.shared.stats;
        for c in [
            &s.total_commands,
            &s.total_connections,
            &s.rejected_connections,
            &s.net_input_bytes,
            &s.net_output_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        x.ks.reset_stats();
        x.out.ok();
    } else if is(sub, "HELP") {
        x.out.array(3);
        x.out.simple("CONFIG GET <pattern> [<pattern> ...]");
        x.out
            .simple("CONFIG SET <directive> <value> [<directive> <value> ...]");
        x.out.simple("CONFIG RESETSTAT");
    } else if is(sub, "GET") || is(sub, "SET") || is(sub, "RESETSTAT") {
        return Err(Error::Owned(format!(
            "ERR wrong number of arguments for 'config|{}' command",
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        )));
    } else {
        return Err(unknown_subcommand("config", sub));
    }
    Ok(())
}

fn config_set(x: &mut Exec, name: &[u8], value: &[u8]) -> CmdResult {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let value = String::from_utf8_lossy(value).into_owned();
    // Validate with the same parser as the config file.
    let mut probe = x.shared.config.clone();
    let failed = |msg: String| {
        Error::Owned(format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - {msg}"
        ))
    };
    probe
        .apply(&name, std::slice::from_ref(&value), &Origin::ConfigSet)
        .map_err(|e| failed(e.message))?;
    let t = &x.shared.tunables;
    match name.as_str() {
        "requirepass" => *t.requirepass.write() = probe.requirepass,
        "maxclients" => t.maxclients.store(probe.maxclients, Ordering::Relaxed),
        "timeout" => t.timeout_secs.store(probe.timeout_secs, Ordering::Relaxed),
        "protected-mode" => t
            .protected_mode
            .store(probe.protected_mode, Ordering::Relaxed),
        "proto-max-bulk-len" => t
            .max_bulk
            .store(probe.proto_max_bulk_len, Ordering::Relaxed),
        "client-query-buffer-limit" => t
            .query_buffer_limit
            .store(probe.client_query_buffer_limit, Ordering::Relaxed),
        "loglevel" => {
            *t.loglevel.lock() = probe.loglevel;
            if let Some(apply) = crate::LOG_LEVEL_HOOK.get() {
                apply(probe.loglevel);
            }
        }
        _ => return Err(failed("can't set immutable config".to_string())),
    }
    Ok(())
}

fn info(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sections: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let text = crate::info::render(x.shared, &sections);
    x.out.verbatim(&text);
    Ok(())
}

fn flag_names(spec: &Spec) -> SmallVec<[&'static str; 6]> {
    let mut f = SmallVec::new();
    if spec.has(WRITE) {
        f.push("write");
    }
    if spec.has(READONLY) {
        f.push("readonly");
    }
    if spec.has(ADMIN) {
        f.push("admin");
    }
    if spec.has(NOAUTH) {
        f.push("no_auth");
    }
    if spec.has(FAST) {
        f.push("fast");
    }
    if spec.has(NOMULTI) {
        f.push("no_multi");
    }
    f
}

fn command_info(x: &mut Exec, spec: &Spec) {
    x.out.array(10);
    x.out.bulk_str(spec.name);
    x.out.int(spec.arity as i64);
    let flags = flag_names(spec);
    x.out.set(flags.len());
    for f in flags {
        x.out.simple(f);
    }
    x.out.int(spec.keys.0 as i64);
    x.out.int(spec.keys.1 as i64);
    x.out.int(spec.keys.2 as i64);
    x.out.set(1);
    x.out.simple(&format!("@{}", spec.group));
    x.out.set(0);
    x.out.array(0);
    x.out.array(0);
}

fn command_docs(x: &mut Exec, spec: &Spec) {
    let args = super::docs::arguments(super::docs::syntax(spec.name));
    x.out.bulk_str(spec.name);
    x.out.map(if args.is_empty() { 3 } else { 4 });
    x.out.bulk_str("summary");
    x.out.bulk_str(spec.summary);
    x.out.bulk_str("since");
    x.out.bulk_str("1.0.0");
    x.out.bulk_str("group");
    x.out.bulk_str(spec.group);
    if args.is_empty() {
        return;
    }
    // redis-cli builds its hints from these: name, type, optional/multiple.
    x.out.bulk_str("arguments");
    x.out.array(args.len());
    for (name, optional, multiple) in args {
        let flags: Vec<&str> = [(optional, "optional"), (multiple, "multiple")]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
            .collect();
        x.out.map(if flags.is_empty() { 2 } else { 3 });
        x.out.bulk_str("name");
        x.out.bulk_str(&name);
        x.out.bulk_str("type");
        x.out.bulk_str("string");
        if !flags.is_empty() {
            x.out.bulk_str("flags");
            x.out.array(flags.len());
            for f in flags {
                x.out.simple(f);
            }
        }
    }
}

fn command(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let all: Vec<&'static Spec> = table().collect();
    let pick = |names: &[&[u8]]| -> Vec<Option<&'static Spec>> {
        names.iter().map(|n| super::lookup(n)).collect()
    };
    match args.get(1) {
        None => {
            x.out.array(all.len());
            for s in all {
                command_info(x, s);
            }
        }
        Some(sub) if is(sub, "COUNT") => x.out.int(all.len() as i64),
        Some(sub) if is(sub, "LIST") => {
            x.out.array(all.len());
            for s in all {
                x.out.bulk_str(s.name);
            }
        }
        Some(sub) if is(sub, "INFO") => {
            let specs = if args.len() == 2 {
                all.into_iter().map(Some).collect()
            } else {
                pick(&args[2..])
            };
            x.out.array(specs.len());
            for s in specs {
                match s {
                    Some(s) => command_info(x, s),
                    None => x.out.null(),
                }
            }
        }
        Some(sub) if is(sub, "DOCS") => {
            let specs: Vec<&Spec> = if args.len() == 2 {
                all
            } else {
                pick(&args[2..]).into_iter().flatten().collect()
            };
            x.out.map(specs.len());
            for s in specs {
                command_docs(x, s);
            }
        }
        Some(sub) if is(sub, "GETKEYS") && args.len() >= 3 => {
            let spec =
                super::lookup(args[2]).ok_or(Error::Static("ERR Invalid command specified"))?;
            let positions: Vec<usize> = spec.key_positions(args.len() - 2).collect();
            x.out.array(positions.len());
            for p in positions {
                x.out.bulk(args[2 + p]);
            }
        }
        Some(sub) => return Err(unknown_subcommand("command", sub)),
    }
    Ok(())
}

fn time(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    x.out.array(2);
    x.out.bulk(now.as_secs().to_string().as_bytes());
    x.out.bulk(now.subsec_micros().to_string().as_bytes());
    Ok(())
}

fn lastsave(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    // Never saved (in memory, or no cut yet): Redis reports its start time.
    let last_cut_ms = x.shared.persistence.as_ref().map_or(0, |p| {
        p.last_cut_ms.load(std::sync::atomic::Ordering::Relaxed)
    });
    let ms = if last_cut_ms == 0 {
        x.shared.started_unix_ms
    } else {
        last_cut_ms
    };
    x.out.int((ms / 1000) as i64);
    Ok(())
}

fn shutdown(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    for a in &args[1..] {
        if !(is(a, "NOSAVE") || is(a, "SAVE") || is(a, "NOW") || is(a, "FORCE")) {
            return Err(SYNTAX);
        }
    }
    tracing::info!("User requested shutdown...");
    x.shared.request_shutdown();
    x.client.close = true;
    Ok(())
}

fn debug(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    if is(sub, "SLEEP") && args.len() == 3 {
        let secs = super::float_arg(args[2])?;
        if !(0.0..=3600.0).contains(&secs) {
            return Err(Error::Static(
                "ERR sleep time must be between 0 and 3600 seconds",
            ));
        }
        x.client.sleep = Some(Duration::from_secs_f64(secs));
        x.out.ok();
        Ok(())
    } else {
        Err(unknown_subcommand("debug", sub))
    }
}

fn multi(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    if x.client.multi.is_some() {
        return Err(Error::Static("ERR MULTI calls can not be nested"));
    }
    x.client.multi = Some(Vec::new());
    x.client.handle.in_multi.store(true, Ordering::Relaxed);
    x.out.ok();
    Ok(())
}

fn end_multi(x: &mut Exec) {
    x.client.multi = None;
    x.client.multi_dirty = false;
    x.client.watched.clear();
    x.client.handle.in_multi.store(false, Ordering::Relaxed);
}

fn discard(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    if x.client.multi.is_none() {
        return Err(Error::Static("ERR DISCARD without MULTI"));
    }
    end_multi(x);
    x.out.ok();
    Ok(())
}

/// Whether a watched key still holds what it held at WATCH.
fn unchanged(x: &mut Exec, w: &Watched) -> Result<bool, Error> {
    let now = x.now_ms;
    let shard = x.locked.shard(x.ks.shard_of(&w.key))?;
    let state = shard.dbs[w.db].get(&w.key);
    let visible = state.is_some_and(|s| s.exists(now));
    Ok(visible == w.visible && state == w.state.as_ref())
}

fn exec(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    let Some(queue) = x.client.multi.take() else {
        return Err(Error::Static("ERR EXEC without MULTI"));
    };
    if x.client.multi_dirty {
        end_multi(x);
        return Err(Error::Static(
            "EXECABORT Transaction discarded because of previous errors.",
        ));
    }
    let watched = std::mem::take(&mut x.client.watched);
    for w in &watched {
        if !unchanged(x, w)? {
            end_multi(x);
            x.out.null_array();
            return Ok(());
        }
    }
    end_multi(x);
    x.out.array(queue.len());
    for q in &queue {
        let args: SmallVec<[&[u8]; 8]> = q.args.iter().map(|a| a.as_slice()).collect();
        if let Err(e) = (q.spec.run)(x, &args) {
            x.out.error(e.text());
        }
    }
    Ok(())
}

fn watch(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    if x.client.multi.is_some() {
        return Err(Error::Static("ERR WATCH inside MULTI is not allowed"));
    }
    let now = x.now_ms;
    let db = x.client.db;
    for key in &args[1..] {
        let state = x.db(key)?.get(key).cloned();
        let visible = state.as_ref().is_some_and(|s| s.exists(now));
        x.client.watched.push(Watched {
            db,
            key: key.to_vec(),
            state,
            visible,
        });
    }
    x.out.ok();
    Ok(())
}

fn unwatch(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    x.client.watched.clear();
    x.out.ok();
    Ok(())
}
