//! CONFIG GET, SET and RESETSTAT.

use super::Flag::*;
use super::{is, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use std::sync::atomic::Ordering;

use crate::config::Origin;
use crate::glob;

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

/// Every parameter CONFIG GET knows, with its current value: the config's
/// own list, with the settings CONFIG SET changes live read from the
/// node's tunables.
fn config_params(x: &Exec) -> Vec<(&'static str, String)> {
    let t = &x.node.tunables;
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut params = x.node.config.params();
    for (name, value) in params.iter_mut() {
        let live = match *name {
            "requirepass" => t
                .requirepass
                .read()
                .as_ref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            "protected-mode" => yes(t.protected_mode.load(Ordering::Relaxed)),
            "maxclients" => t.maxclients.load(Ordering::Relaxed).to_string(),
            "timeout" => t.timeout_secs.load(Ordering::Relaxed).to_string(),
            "proto-max-bulk-len" => t.max_bulk().to_string(),
            "client-query-buffer-limit" => t.query_buffer_limit.load(Ordering::Relaxed).to_string(),
            "loglevel" => t.loglevel.lock().as_str().to_string(),
            _ => continue,
        };
        *value = live;
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
        let s = &x.node.stats;
        for c in [
            &s.total_commands,
            &s.total_connections,
            &s.rejected_connections,
            &s.net_input_bytes,
            &s.net_output_bytes,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        x.ks.reset_stats(&mut x.locked);
        x.out.ok();
    } else if is(sub, "HELP") {
        x.out.array(3);
        x.out.simple("CONFIG GET <pattern> [<pattern> ...]");
        x.out
            .simple("CONFIG SET <directive> <value> [<directive> <value> ...]");
        x.out.simple("CONFIG RESETSTAT");
    } else if is(sub, "GET") || is(sub, "SET") || is(sub, "RESETSTAT") {
        return Err(Error::err(format!(
            "wrong number of arguments for 'config|{}' command",
            String::from_utf8_lossy(sub).to_ascii_lowercase()
        )));
    } else {
        return Err(Error::unknown_subcommand("config", sub));
    }
    Ok(())
}

fn config_set(x: &mut Exec, name: &[u8], value: &[u8]) -> CmdResult {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let value = String::from_utf8_lossy(value).into_owned();
    // Validate with the same parser as the config file.
    let mut probe = x.node.config.clone();
    let failed = |msg: String| {
        Error::err(format!(
            "CONFIG SET failed (possibly related to argument '{name}') - {msg}"
        ))
    };
    probe
        .apply(&name, std::slice::from_ref(&value), &Origin::ConfigSet)
        .map_err(|e| failed(e.message))?;
    let t = &x.node.tunables;
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
