//! COMMAND: the command table as clients see it (COUNT, LIST, INFO, DOCS,
//! GETKEYS). DOCS reports each command's arguments from its syntax line,
//! which redis-cli turns into its as-you-type hints.

use super::Flag;
use super::Flag::*;
use super::{is, table, CmdResult, Error, Exec, Spec};
use super::{Flags, Keys};
use smallvec::SmallVec;

pub static COMMANDS: &[Spec] = &[Spec {
    name: "command",
    arity: -1,
    flags: Flags::of(&[]),
    keys: Keys::None,
    group: "server",
    syntax:
        "[COUNT|LIST|INFO [command-name ...]|DOCS [command-name ...]|GETKEYS command [arg ...]]",
    summary: "Returns detailed information about all commands.",
    run: command,
}];

/// The flags COMMAND INFO reports, by Redis's names.
const FLAG_NAMES: &[(Flag, &str)] = &[
    (Write, "write"),
    (DenyOom, "denyoom"),
    (ReadOnly, "readonly"),
    (Admin, "admin"),
    (NoAuth, "no_auth"),
    (Fast, "fast"),
    (NoMulti, "no_multi"),
];

fn flag_names(spec: &Spec) -> SmallVec<[&'static str; 6]> {
    let mut names: SmallVec<[&'static str; 6]> = FLAG_NAMES
        .iter()
        .filter(|(flag, _)| spec.has(*flag))
        .map(|(_, name)| *name)
        .collect();
    if matches!(spec.keys, Keys::Counted { .. }) {
        names.push("movablekeys");
    }
    names
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
    let (first, last, step) = spec.keys.triple();
    x.out.int(first);
    x.out.int(last);
    x.out.int(step);
    x.out.set(1);
    x.out.simple(&format!("@{}", spec.group));
    x.out.set(0);
    x.out.array(0);
    x.out.array(0);
}

fn command_docs(x: &mut Exec, spec: &Spec) {
    let args = arguments(spec.syntax);
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
            let spec = super::lookup(args[2]).ok_or(Error::err("Invalid command specified"))?;
            let call = &args[2..];
            if matches!(spec.keys, Keys::Counted { .. }) && spec.keys.counted(call).is_none() {
                return Err(Error::err("Invalid arguments specified for command"));
            }
            let positions: Vec<usize> = spec.key_positions(call).collect();
            x.out.array(positions.len());
            for p in positions {
                x.out.bulk(args[2 + p]);
            }
        }
        Some(sub) => return Err(Error::unknown_subcommand("command", sub)),
    }
    Ok(())
}

/// The inside of `text` if its first character opens a bracket that its
/// last character closes (so `[a] [b]` is not one group).
fn enclosed(text: &str, open: char, close: char) -> Option<&str> {
    let inner = text.strip_prefix(open)?.strip_suffix(close)?;
    let mut depth = 0i32;
    for c in inner.chars() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth < 0 {
                return None;
            }
        }
    }
    Some(inner)
}

/// The arguments of a syntax line, as COMMAND DOCS reports them:
/// (display name, optional, repeatable). `[x]` is optional, `(x y)` groups,
/// a trailing ` ...` repeats the argument before it.
pub fn arguments(line: &str) -> Vec<(String, bool, bool)> {
    let mut groups: Vec<String> = Vec::new();
    let mut depth = 0i32;
    for word in line.split(' ').filter(|w| !w.is_empty()) {
        if word == "..." {
            if let Some(last) = groups.last_mut() {
                last.push_str(" ...");
            }
            continue;
        }
        if depth > 0 {
            if let Some(last) = groups.last_mut() {
                last.push(' ');
                last.push_str(word);
            }
        } else {
            groups.push(word.to_string());
        }
        depth += word.matches(['[', '(']).count() as i32;
        depth -= word.matches([']', ')']).count() as i32;
        depth = depth.max(0);
    }
    groups
        .into_iter()
        .map(|g| {
            let (g, multiple) = match g.strip_suffix(" ...") {
                Some(t) => (t.to_string(), true),
                None => (g, false),
            };
            if let Some(inner) = enclosed(&g, '[', ']') {
                (inner.to_string(), true, multiple)
            } else if let Some(inner) = enclosed(&g, '(', ')') {
                (inner.to_string(), false, multiple)
            } else {
                (g, false, multiple)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_lines_split_into_redis_cli_arguments() {
        let set = arguments(super::super::lookup(b"set").unwrap().syntax);
        assert_eq!(set[0], ("key".to_string(), false, false));
        assert_eq!(set[2], ("NX|XX".to_string(), true, false));
        assert_eq!(set.len(), 5);
        assert_eq!(arguments("key ..."), vec![("key".to_string(), false, true)]);
        assert_eq!(
            arguments("key value ...")[1],
            ("value".to_string(), false, true)
        );
        assert_eq!(
            arguments("(key value) ..."),
            vec![("key value".to_string(), false, true)]
        );
        assert_eq!(arguments("[a] [b]").len(), 2);
        let hello = arguments(super::super::lookup(b"hello").unwrap().syntax);
        assert_eq!(hello.len(), 1);
        assert!(hello[0].1);
    }
}
