//! Argument syntax per command, for COMMAND DOCS (which redis-cli turns
//! into its as-you-type hints). One line per command in Redis's notation:
//! `[...]` optional, `...` repeatable.

/// The syntax line of a command, after its name.
pub fn syntax(name: &str) -> &'static str {
    match name {
        "get" | "getdel" | "strlen" | "incr" | "decr" | "type" | "ttl" | "pttl" | "expiretime" | "pexpiretime"
        | "persist" | "crdt.state" => "key",
        "set" => "key value [NX|XX] [GET] [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|KEEPTTL]",
        "setnx" | "getset" | "append" => "key value",
        "setex" => "key seconds value",
        "psetex" => "key milliseconds value",
        "getex" => "key [EX seconds|PX milliseconds|EXAT unix-time-seconds|PXAT unix-time-milliseconds|PERSIST]",
        "mget" | "del" | "unlink" | "exists" | "touch" => "key ...",
        "watch" => "key ...",
        "mset" | "msetnx" => "(key value) ...",
        "getrange" | "substr" => "key start end",
        "setrange" => "key offset value",
        "incrby" => "key increment",
        "decrby" => "key decrement",
        "incrbyfloat" => "key increment",
        "keys" => "pattern",
        "scan" => "cursor [MATCH pattern] [COUNT count] [TYPE type]",
        "rename" | "renamenx" => "key newkey",
        "copy" => "source destination [DB destination-db] [REPLACE]",
        "flushdb" | "flushall" => "[ASYNC|SYNC]",
        "swapdb" => "index1 index2",
        "select" => "index",
        "expire" | "pexpire" => "key time [NX|XX|GT|LT]",
        "expireat" | "pexpireat" => "key unix-time [NX|XX|GT|LT]",
        "ping" => "[message]",
        "echo" => "message",
        "hello" => "[protover [AUTH username password] [SETNAME clientname]]",
        "auth" => "[username] password",
        "client" => "ID|GETNAME|SETNAME name|SETINFO LIB-NAME|LIB-VER value|INFO|LIST [TYPE normal] [ID client-id ...]|KILL [ID client-id] [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no]",
        "config" => "GET parameter [parameter ...]|SET parameter value [parameter value ...]|RESETSTAT",
        "info" => "[section ...]",
        "command" => "[COUNT|LIST|INFO [command-name ...]|DOCS [command-name ...]|GETKEYS command [arg ...]]",
        "shutdown" => "[NOSAVE|SAVE] [NOW] [FORCE]",
        "debug" => "SLEEP seconds",
        "wait" => "numpeers timeout",
        "replicaof" | "slaveof" => "host port|REMOVE host port|NO ONE",
        "crdt.conflicts" => "[COUNT count] [MATCH pattern] [SINCE unix-time-milliseconds]",
        _ => "",
    }
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
        let set = arguments(syntax("set"));
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
        let hello = arguments(syntax("hello"));
        assert_eq!(hello.len(), 1);
        assert!(hello[0].1);
    }

    #[test]
    fn every_command_with_arguments_has_a_syntax_line() {
        for spec in super::super::table() {
            let needs_args = spec.arity.abs() > 1;
            assert!(
                !needs_args || !syntax(spec.name).is_empty(),
                "{} has no syntax line",
                spec.name
            );
        }
    }
}
