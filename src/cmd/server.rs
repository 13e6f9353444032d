//! Server commands: INFO, TIME, LASTSAVE, SAVE, BGSAVE, BGREWRITEAOF,
//! SHUTDOWN, DEBUG.

use super::Flag::*;
use super::{is, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use std::time::Duration;

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "info",
        arity: -1,
        flags: Flags::of(&[]),
        // Keyspace figures live under the shard locks.
        keys: Keys::All,
        group: "server",
        syntax: "[section ...]",
        summary: "Returns information and statistics about the server.",
        run: info,
    },
    Spec {
        name: "time",
        arity: 1,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "server",
        syntax: "",
        summary: "Returns the server time.",
        run: time,
    },
    Spec {
        name: "lastsave",
        arity: 1,
        flags: Flags::of(&[Fast]),
        keys: Keys::None,
        group: "server",
        syntax: "",
        summary: "Returns the Unix timestamp of the last successful save to disk.",
        run: lastsave,
    },
    Spec {
        name: "save",
        arity: 1,
        flags: Flags::of(&[Admin, NoMulti]),
        keys: Keys::None,
        group: "server",
        syntax: "",
        summary: "Synchronously saves the database(s) to disk.",
        run: save,
    },
    Spec {
        name: "bgsave",
        arity: -1,
        flags: Flags::of(&[Admin, NoMulti]),
        keys: Keys::None,
        group: "server",
        syntax: "[SCHEDULE]",
        summary: "Asynchronously saves the database(s) to disk.",
        run: bgsave,
    },
    Spec {
        name: "bgrewriteaof",
        arity: 1,
        flags: Flags::of(&[Admin, NoMulti]),
        keys: Keys::None,
        group: "server",
        syntax: "",
        summary: "Asynchronously rewrites the append-only file to disk.",
        run: bgsave,
    },
    Spec {
        name: "shutdown",
        arity: -1,
        flags: Flags::of(&[Admin, NoMulti]),
        keys: Keys::None,
        group: "server",
        syntax: "[NOSAVE|SAVE] [NOW] [FORCE]",
        summary: "Synchronously saves the database(s) to disk and shuts down the Redis server.",
        run: shutdown,
    },
    Spec {
        name: "debug",
        arity: -2,
        flags: Flags::of(&[Admin]),
        keys: Keys::None,
        group: "server",
        syntax: "SLEEP seconds",
        summary: "A container for debugging commands.",
        run: debug,
    },
];

/// The Redis version clients are told, for feature detection.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

fn info(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sections: Vec<String> = args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let text = crate::info::render(x.server, &mut x.locked, &sections);
    x.out.verbatim(&text);
    Ok(())
}

fn time(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    // The node's clock, not the system's: skewed in drills, simulated in the sim.
    let now = x.ks.clock.physical_since_epoch();
    x.out.array(2);
    x.out.bulk(now.as_secs().to_string().as_bytes());
    x.out.bulk(now.subsec_micros().to_string().as_bytes());
    Ok(())
}

fn lastsave(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    // Never saved (in memory, or no cut yet): Redis reports its start time.
    let ms = x.node.last_save_unix_ms();
    x.out.int((ms / 1000) as i64);
    Ok(())
}

fn store_of(x: &Exec) -> Result<std::sync::Arc<crate::persist::Persistence>, Error> {
    x.node.persistence.clone().ok_or_else(|| {
        Error::err("this node keeps no store: start it with appendonly yes and a dir")
    })
}

/// A fold of everything changed into the store, durable when the reply
/// comes (the connection awaits it: `Session::save`).
fn save(x: &mut Exec, _args: &[&[u8]]) -> CmdResult {
    x.session.save = Some(store_of(x)?);
    Ok(())
}

/// BGSAVE and BGREWRITEAOF: both a fold, on the blocking pool.
fn bgsave(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let rewrite = is(args[0], "BGREWRITEAOF");
    if !rewrite && args.len() > 2 || args.len() == 2 && !is(args[1], "SCHEDULE") {
        return Err(Error::Syntax);
    }
    let persistence = store_of(x)?;
    tokio::task::spawn_blocking(move || {
        if let Err(e) = persistence.cut_once() {
            tracing::error!("background save: {e:#}");
        }
    });
    x.out.simple(if rewrite {
        "Background append only file rewriting started"
    } else {
        "Background saving started"
    });
    Ok(())
}

fn shutdown(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    for a in &args[1..] {
        if !(is(a, "NOSAVE") || is(a, "SAVE") || is(a, "NOW") || is(a, "FORCE")) {
            return Err(Error::Syntax);
        }
    }
    tracing::info!("User requested shutdown...");
    x.node.request_shutdown();
    x.session.close = true;
    Ok(())
}

fn debug(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let sub = args[1];
    if is(sub, "SLEEP") && args.len() == 3 {
        let secs = super::float_arg(args[2])?;
        if !(0.0..=3600.0).contains(&secs) {
            return Err(Error::err("sleep time must be between 0 and 3600 seconds"));
        }
        x.session.sleep = Some(Duration::from_secs_f64(secs));
        x.out.ok();
        Ok(())
    } else {
        Err(Error::unknown_subcommand("debug", sub))
    }
}
