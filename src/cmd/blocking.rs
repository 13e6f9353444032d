//! Blocking commands (BZPOPMIN, BZPOPMAX here; BLPOP, BRPOP, BLMOVE,
//! BRPOPLPUSH, BLMPOP in `lists.rs`). When there is nothing to pop,
//! the command leaves a [`Blocked`] in the session and no reply; the
//! connection then waits for a change to one of its keys, made here or
//! replicated from a peer (`crate::waiters`), runs the command again, and
//! answers a null array at the timeout. Inside EXEC nothing blocks.

use std::time::{Duration, Instant};

use super::zsets::pop;
use super::{CmdResult, Error, Exec};

/// What a blocked client waits for.
pub struct Blocked {
    /// The command, to run again when a key changes.
    pub argv: Vec<Vec<u8>>,
    pub db: usize,
    pub keys: Vec<Vec<u8>>,
    /// `None`: wait as long as it takes (timeout 0).
    pub timeout: Option<Duration>,
}

/// A blocking command's timeout in seconds (a float; 0: forever).
pub fn timeout_arg(arg: &[u8]) -> Result<Option<Duration>, Error> {
    let secs = std::str::from_utf8(arg)
        .ok()
        .filter(|s| !s.starts_with(|c: char| c.is_ascii_whitespace()))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .ok_or(Error::err("timeout is not a float or out of range"))?;
    if secs < 0.0 {
        return Err(Error::err("timeout is negative"));
    }
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| Instant::now().checked_add(*d).is_some())
        .map(Some)
        .ok_or(Error::err("timeout is out of range"))
}

/// BZPOPMIN / BZPOPMAX key [key ...] timeout.
pub fn bzpop(x: &mut Exec, args: &[&[u8]], max: bool) -> CmdResult {
    let keys = &args[1..args.len() - 1];
    let timeout = timeout_arg(args[args.len() - 1])?;
    for key in keys {
        let popped = match pop(x, key, 1, max) {
            Err(Error::WrongType) if x.session.retrying_block => continue,
            popped => popped?,
        };
        if let Some((member, score)) = popped.and_then(|mut p| p.pop()) {
            x.out.array(3);
            x.out.bulk(key);
            x.out.bulk(&member);
            x.out.score(score);
            return Ok(());
        }
    }
    if x.session.in_exec {
        x.out.null_array();
        return Ok(());
    }
    block_on(x, args, keys, timeout);
    Ok(())
}

/// Leaves the command (`args`) blocked on `keys` until one changes or
/// `timeout` passes.
pub fn block_on(x: &mut Exec, args: &[&[u8]], keys: &[&[u8]], timeout: Option<Duration>) {
    x.session.blocked = Some(Blocked {
        argv: args.iter().map(|a| a.to_vec()).collect(),
        db: x.session.db,
        keys: keys.iter().map(|k| k.to_vec()).collect(),
        timeout,
    });
}
