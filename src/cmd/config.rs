//! CONFIG GET, SET and RESETSTAT.

use super::Flag::*;
use super::{is, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};

use crate::config::Origin;
use crate::glob;
use crate::server::Tunables;

pub static COMMANDS: &[Spec] = &[Spec {
    name: "config",
    arity: -2,
    flags: Flags::of(&[Admin]),
    // RESETSTAT resets counters kept under the shard locks.
    keys: Keys::All,
    group: "server",
    syntax: "GET parameter [parameter ...]|SET parameter value [parameter value ...]|RESETSTAT",
    summary: "A container for server configuration commands.",
    run: config,
}];

/// A live setting the keyspace holds rather than the server's tunables.
const CONFLICT_LOG_MAX_LEN: &str = "conflict-log-max-len";

/// Every parameter CONFIG GET knows, with its current value: the config's
/// own list, with the settings CONFIG SET changes live read from the
/// server's tunables or the keyspace.
fn config_params(x: &Exec) -> Vec<(&'static str, String)> {
    let t = &x.server.tunables;
    let mut params = x.node.config.params();
    for (name, value) in params.iter_mut() {
        if let Some(live) = Tunables::live(name) {
            *value = (live.get)(t);
        } else if *name == CONFLICT_LOG_MAX_LEN {
            *value = x.ks.conflicts.max_len().to_string();
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
        // As Redis: all or nothing. Every parameter is checked (a name given
        // twice is refused) before any is applied.
        let pairs: Vec<&[&[u8]]> = args[2..].chunks(2).collect();
        for (i, pair) in pairs.iter().enumerate() {
            if pairs[..i]
                .iter()
                .any(|p| p[0].eq_ignore_ascii_case(pair[0]))
            {
                return Err(Error::err(format!(
                    "CONFIG SET failed (possibly related to argument '{}') - duplicate parameter",
                    String::from_utf8_lossy(pair[0]).to_ascii_lowercase()
                )));
            }
        }
        let planned = pairs
            .iter()
            .map(|pair| config_set_checked(x, pair[0], pair[1]))
            .collect::<Result<Vec<_>, _>>()?;
        for (name, probe) in planned {
            config_set_apply(x, &name, &probe);
        }
        // A key made from now on starts with the clock of the policy now
        // in force (the active cycle would refresh it only at its tick).
        x.ks.refresh_access_clock(x.now_ms);
        x.out.ok();
    } else if is(sub, "RESETSTAT") && args.len() == 2 {
        x.server.stats.reset();
        x.ks.reset_stats(&mut x.locked);
        x.out.ok();
    } else if is(sub, "HELP") {
        x.out.lines(&[
            "CONFIG GET <pattern> [<pattern> ...]",
            "CONFIG SET <directive> <value> [<directive> <value> ...]",
            "CONFIG RESETSTAT",
        ]);
    } else if is(sub, "GET") || is(sub, "SET") || is(sub, "RESETSTAT") {
        return Err(Error::Arity(
            format!(
                "config|{}",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            )
            .into(),
        ));
    } else {
        return Err(Error::unknown_subcommand("config", sub));
    }
    Ok(())
}

/// Checks CONFIG SET's `name` `value`: the config as it would be with it
/// (read by the config file's own parser), under its lowercased name.
fn config_set_checked(
    x: &mut Exec,
    name: &[u8],
    value: &[u8],
) -> Result<(String, crate::config::Config), Error> {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let value = String::from_utf8_lossy(value).into_owned();
    let mut probe = x.node.config.clone();
    // A value that names only some classes keeps the others as they are now.
    probe.client_output_buffer_limits = *x.server.tunables.output_buffer_limits.read();
    let failed = |msg: String| {
        Error::err(format!(
            "CONFIG SET failed (possibly related to argument '{name}') - {msg}"
        ))
    };
    probe
        .apply(&name, std::slice::from_ref(&value), &Origin::ConfigSet)
        .map_err(|e| failed(e.message))?;
    if name == "proto-max-bulk-len"
        && x.node.repl.is_some()
        && probe.proto_max_bulk_len > x.node.config.proto_max_bulk_len
    {
        // Replication's message limit is set from it at start: a larger
        // value written now could never replicate.
        return Err(failed(format!(
            "a replicating node cannot raise it above its start-up value ({}); restart every \
             node with the new value",
            x.node.config.proto_max_bulk_len
        )));
    }
    if Tunables::live(&name).is_none() && name != CONFLICT_LOG_MAX_LEN {
        return Err(failed("can't set immutable config".to_string()));
    }
    Ok((name, probe))
}

/// Applies a parameter [`config_set_checked`] took.
fn config_set_apply(x: &mut Exec, name: &str, probe: &crate::config::Config) {
    if let (Some(repl), "client-output-buffer-limit") = (&x.node.repl, name) {
        repl.set_peer_buffer_limit(probe.client_output_buffer_limits.replica);
    }
    match Tunables::live(name) {
        Some(live) => (live.set)(&x.server.tunables, probe),
        None => x.ks.conflicts.set_max_len(probe.conflict_log_max_len),
    }
}
