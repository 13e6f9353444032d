//! Expiry commands (Redis's `expire.c`). Expiry is an absolute wall-clock
//! time in ms, replicated as such, never as a relative TTL.

use super::Flag::*;
use super::{int_arg, is, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};

pub static COMMANDS: &[Spec] = &[
    Spec {
        name: "expire",
        arity: -3,
        flags: Flags::of(&[Write, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key time [NX|XX|GT|LT]",
        summary: "Sets the expiration time of a key in seconds.",
        run: expire,
    },
    Spec {
        name: "pexpire",
        arity: -3,
        flags: Flags::of(&[Write, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key time [NX|XX|GT|LT]",
        summary: "Sets the expiration time of a key in milliseconds.",
        run: pexpire,
    },
    Spec {
        name: "expireat",
        arity: -3,
        flags: Flags::of(&[Write, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key unix-time [NX|XX|GT|LT]",
        summary: "Sets the expiration time of a key to a Unix timestamp.",
        run: expireat,
    },
    Spec {
        name: "pexpireat",
        arity: -3,
        flags: Flags::of(&[Write, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key unix-time [NX|XX|GT|LT]",
        summary: "Sets the expiration time of a key to a Unix milliseconds timestamp.",
        run: pexpireat,
    },
    Spec {
        name: "ttl",
        arity: 2,
        flags: Flags::of(&[NoTouch, ReadOnly, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key",
        summary: "Returns the expiration time in seconds of a key.",
        run: ttl,
    },
    Spec {
        name: "pttl",
        arity: 2,
        flags: Flags::of(&[NoTouch, ReadOnly, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key",
        summary: "Returns the expiration time in milliseconds of a key.",
        run: pttl,
    },
    Spec {
        name: "expiretime",
        arity: 2,
        flags: Flags::of(&[NoTouch, ReadOnly, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key",
        summary: "Returns the expiration time of a key as a Unix timestamp.",
        run: expiretime,
    },
    Spec {
        name: "pexpiretime",
        arity: 2,
        flags: Flags::of(&[NoTouch, ReadOnly, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key",
        summary: "Returns the expiration time of a key as a Unix milliseconds timestamp.",
        run: pexpiretime,
    },
    Spec {
        name: "persist",
        arity: 2,
        flags: Flags::of(&[Write, Fast]),
        keys: Keys::at(1, 1, 1),
        group: "generic",
        syntax: "key",
        summary: "Removes the expiration time of a key.",
        run: persist,
    },
];

fn expire_generic(
    x: &mut Exec,
    args: &[&[u8]],
    unit_ms: i64,
    absolute: bool,
    cmd: &str,
) -> CmdResult {
    let key = args[1];
    let n = int_arg(args[2])?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for a in &args[3..] {
        match () {
            _ if is(a, "NX") => nx = true,
            _ if is(a, "XX") => xx = true,
            _ if is(a, "GT") => gt = true,
            _ if is(a, "LT") => lt = true,
            _ => {
                return Err(Error::err(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(a)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Error::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Error::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    let invalid = || Error::err(format!("invalid expire time in '{cmd}' command"));
    let ms = n.checked_mul(unit_ms).ok_or_else(invalid)?;
    let at = if absolute {
        ms
    } else {
        ms.checked_add(x.now_ms as i64).ok_or_else(invalid)?
    };
    let now = x.now_ms as i64;
    let set = x.update(key, |w| {
        if !w.visible() {
            return Ok(false);
        }
        let current = w.state().expire_at_ms();
        // No expiry counts as infinite for GT and LT, as in Redis.
        let current_ttl = if current == 0 {
            i64::MAX
        } else {
            current as i64
        };
        let allowed = (!nx || current == 0)
            && (!xx || current != 0)
            && (!gt || at > current_ttl)
            && (!lt || at < current_ttl);
        if !allowed {
            return Ok(false);
        }
        if at <= now {
            w.set(None, 0);
        } else {
            w.expire(at as u64);
        }
        Ok(true)
    })?;
    x.out.int(i64::from(set));
    Ok(())
}

fn expire(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    expire_generic(x, args, 1000, false, "expire")
}

fn pexpire(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    expire_generic(x, args, 1, false, "pexpire")
}

fn expireat(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    expire_generic(x, args, 1000, true, "expireat")
}

fn pexpireat(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    expire_generic(x, args, 1, true, "pexpireat")
}

/// -2 when the key is absent, -1 when it has no expiry, else the expiry.
fn expiry_of(x: &mut Exec, key: &[u8]) -> Result<Option<u64>, Error> {
    Ok(x.visible_in_index(key)?.map(|s| s.expire_at_ms()))
}

fn reply_remaining(x: &mut Exec, key: &[u8], unit_ms: u64) -> CmdResult {
    let reply = match expiry_of(x, key)? {
        None => -2,
        Some(0) => -1,
        Some(at) => {
            let left = at.saturating_sub(x.now_ms);
            ((left + unit_ms / 2) / unit_ms) as i64
        }
    };
    x.out.int(reply);
    Ok(())
}

fn ttl(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    reply_remaining(x, args[1], 1000)
}

fn pttl(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    reply_remaining(x, args[1], 1)
}

fn reply_time(x: &mut Exec, key: &[u8], unit_ms: u64) -> CmdResult {
    let reply = match expiry_of(x, key)? {
        None => -2,
        Some(0) => -1,
        Some(at) => (at / unit_ms) as i64,
    };
    x.out.int(reply);
    Ok(())
}

fn expiretime(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    reply_time(x, args[1], 1000)
}

fn pexpiretime(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    reply_time(x, args[1], 1)
}

fn persist(x: &mut Exec, args: &[&[u8]]) -> CmdResult {
    let removed = x.update(args[1], |w| {
        let has_ttl = w.visible() && w.state().expire_at_ms() != 0;
        if has_ttl {
            w.expire(0);
        }
        Ok(has_ttl)
    })?;
    x.out.int(i64::from(removed));
    Ok(())
}
