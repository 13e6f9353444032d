//! Lists through the `redis` crate: every list command's Redis 7.0 replies
//! and errors, RESP2 and RESP3 shapes, WRONGTYPE, the blocking commands
//! with their timeouts, SORT over and into lists, and what DEL, RENAME,
//! COPY, DUMP/RESTORE and EXPIRE do to a list.

mod common;

use std::time::{Duration, Instant};

use common::{err, q, resp, Server};

fn range(c: &mut redis::Connection, key: &str) -> Vec<String> {
    q(c, &["LRANGE", key, "0", "-1"])
}

#[test]
fn push_pop_and_read_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["RPUSH", "l", "a", "b", "c"]), 3);
    assert_eq!(q::<i64>(&mut c, &["LPUSH", "l", "z", "y"]), 5);
    assert_eq!(range(&mut c, "l"), ["y", "z", "a", "b", "c"]);
    assert_eq!(q::<i64>(&mut c, &["LLEN", "l"]), 5);
    assert_eq!(q::<i64>(&mut c, &["LLEN", "missing"]), 0);
    assert_eq!(q::<String>(&mut c, &["TYPE", "l"]), "list");
    assert_eq!(
        q::<String>(&mut c, &["OBJECT", "ENCODING", "l"]),
        "sequence"
    );

    // LRANGE clamps as Redis does.
    for (start, stop, expected) in [
        ("0", "0", &["y"][..]),
        ("-2", "-1", &["b", "c"]),
        ("1", "100", &["z", "a", "b", "c"]),
        ("-100", "1", &["y", "z"]),
        ("3", "1", &[]),
        ("5", "10", &[]),
        ("-1", "-2", &[]),
    ] {
        assert_eq!(
            q::<Vec<String>>(&mut c, &["LRANGE", "l", start, stop]),
            expected,
            "LRANGE {start} {stop}"
        );
    }
    assert_eq!(
        q::<Vec<String>>(&mut c, &["LRANGE", "nope", "0", "-1"]),
        Vec::<String>::new()
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["LINDEX", "l", "0"]),
        Some("y".into())
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["LINDEX", "l", "-1"]),
        Some("c".into())
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["LINDEX", "l", "3"]),
        Some("b".into())
    );
    assert_eq!(q::<Option<String>>(&mut c, &["LINDEX", "l", "5"]), None);
    assert_eq!(q::<Option<String>>(&mut c, &["LINDEX", "l", "-6"]), None);
    assert_eq!(q::<Option<String>>(&mut c, &["LINDEX", "nope", "0"]), None);
    // As Redis: the key before the index.
    assert_eq!(q::<Option<String>>(&mut c, &["LINDEX", "nope", "x"]), None);
    q::<String>(&mut c, &["SET", "str", "v"]);

    // Pops: one, a count, past the end, a count of 0, a missing key.
    assert_eq!(
        q::<Option<String>>(&mut c, &["LPOP", "l"]),
        Some("y".into())
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["RPOP", "l"]),
        Some("c".into())
    );
    assert_eq!(q::<Vec<String>>(&mut c, &["LPOP", "l", "2"]), ["z", "a"]);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["LPOP", "l", "0"]),
        Vec::<String>::new()
    );
    assert_eq!(q::<Vec<String>>(&mut c, &["RPOP", "l", "9"]), ["b"]);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "l"]),
        0,
        "an emptied list is gone"
    );
    assert_eq!(q::<Option<String>>(&mut c, &["LPOP", "l"]), None);
    assert_eq!(q::<Option<Vec<String>>>(&mut c, &["LPOP", "l", "3"]), None);
    assert_eq!(q::<Option<Vec<String>>>(&mut c, &["RPOP", "l", "0"]), None);

    // LPUSHX / RPUSHX only onto a list that exists.
    assert_eq!(q::<i64>(&mut c, &["LPUSHX", "l", "a"]), 0);
    assert_eq!(q::<i64>(&mut c, &["RPUSHX", "l", "a", "b"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "l"]), 0);
    q::<i64>(&mut c, &["RPUSH", "l", "m"]);
    assert_eq!(q::<i64>(&mut c, &["LPUSHX", "l", "a", "b"]), 3);
    assert_eq!(q::<i64>(&mut c, &["RPUSHX", "l", "z"]), 4);
    assert_eq!(range(&mut c, "l"), ["b", "a", "m", "z"]);

    for (args, text) in [
        (
            &["LPOP", "l", "-1"][..],
            "value is out of range, must be positive",
        ),
        (
            &["LPOP", "l", "x"],
            "value is out of range, must be positive",
        ),
        (&["LINDEX", "str", "x"], "WRONGTYPE"),
        (
            &["LPOP", "l", "1", "2"],
            "wrong number of arguments for 'lpop' command",
        ),
        (
            &["RPOP", "l", "1", "2"],
            "wrong number of arguments for 'rpop' command",
        ),
        (
            &["LRANGE", "l", "a", "1"],
            "value is not an integer or out of range",
        ),
        (
            &["LINDEX", "l", "1.5"],
            "value is not an integer or out of range",
        ),
        (
            &["LPUSH", "l"],
            "wrong number of arguments for 'lpush' command",
        ),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
}

#[test]
fn set_insert_remove_trim_and_pos_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["RPUSH", "l", "a", "b", "c", "b", "a", "b"]);
    assert_eq!(q::<String>(&mut c, &["LSET", "l", "1", "B"]), "OK");
    assert_eq!(q::<String>(&mut c, &["LSET", "l", "-1", "end"]), "OK");
    assert_eq!(range(&mut c, "l"), ["a", "B", "c", "b", "a", "end"]);
    let e = err(&mut c, &["LSET", "l", "6", "x"]);
    assert!(e.contains("index out of range"), "{e}");
    let e = err(&mut c, &["LSET", "nope", "x", "x"]);
    assert!(e.contains("no such key"), "{e}");
    let e = err(&mut c, &["LSET", "l", "x", "x"]);
    assert!(e.contains("value is not an integer"), "{e}");

    assert_eq!(
        q::<i64>(&mut c, &["LINSERT", "l", "BEFORE", "a", "first"]),
        7
    );
    assert_eq!(
        q::<i64>(&mut c, &["LINSERT", "l", "after", "end", "last"]),
        8
    );
    assert_eq!(q::<i64>(&mut c, &["LINSERT", "l", "AFTER", "c", "mid"]), 9);
    assert_eq!(
        q::<i64>(&mut c, &["LINSERT", "l", "BEFORE", "absent", "x"]),
        -1
    );
    assert_eq!(
        q::<i64>(&mut c, &["LINSERT", "nope", "BEFORE", "a", "x"]),
        0
    );
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "nope"]), 0);
    let e = err(&mut c, &["LINSERT", "l", "BESIDE", "a", "x"]);
    assert!(e.contains("syntax error"), "{e}");
    assert_eq!(
        range(&mut c, "l"),
        ["first", "a", "B", "c", "mid", "b", "a", "end", "last"]
    );

    // LPOS: first match, RANK from either end, COUNT (0: all), MAXLEN.
    q::<i64>(&mut c, &["DEL", "p"]);
    q::<i64>(
        &mut c,
        &["RPUSH", "p", "a", "b", "c", "1", "2", "3", "c", "c"],
    );
    assert_eq!(q::<Option<i64>>(&mut c, &["LPOS", "p", "c"]), Some(2));
    assert_eq!(
        q::<Option<i64>>(&mut c, &["LPOS", "p", "c", "RANK", "2"]),
        Some(6)
    );
    assert_eq!(
        q::<Option<i64>>(&mut c, &["LPOS", "p", "c", "RANK", "-1"]),
        Some(7)
    );
    assert_eq!(
        q::<Option<i64>>(&mut c, &["LPOS", "p", "c", "RANK", "4"]),
        None
    );
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["LPOS", "p", "c", "COUNT", "2"]),
        [2, 6]
    );
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["LPOS", "p", "c", "COUNT", "0"]),
        [2, 6, 7]
    );
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["LPOS", "p", "c", "RANK", "-1", "COUNT", "2"]),
        [7, 6]
    );
    assert_eq!(
        q::<Option<i64>>(&mut c, &["LPOS", "p", "c", "MAXLEN", "2"]),
        None
    );
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["LPOS", "p", "c", "COUNT", "0", "MAXLEN", "7"]),
        [2, 6]
    );
    assert_eq!(q::<Option<i64>>(&mut c, &["LPOS", "p", "zz"]), None);
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["LPOS", "p", "zz", "COUNT", "0"]),
        Vec::<i64>::new()
    );
    assert_eq!(q::<Option<i64>>(&mut c, &["LPOS", "nope", "a"]), None);
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["LPOS", "nope", "a", "COUNT", "1"]),
        Vec::<i64>::new()
    );
    for (args, text) in [
        (&["LPOS", "p", "c", "RANK", "0"][..], "RANK can't be zero"),
        (
            &["LPOS", "p", "c", "COUNT", "-1"],
            "COUNT can't be negative",
        ),
        (&["LPOS", "p", "c", "COUNT", "x"], "COUNT can't be negative"),
        (&["LPOS", "p", "c", "RANK", "x"], "value is not an integer"),
        (
            &["LPOS", "p", "c", "RANK", "-9223372036854775808"],
            "value is out of range",
        ),
        (
            &["LPOS", "p", "c", "MAXLEN", "-1"],
            "MAXLEN can't be negative",
        ),
        (&["LPOS", "p", "c", "RANK"], "syntax error"),
        (&["LPOS", "p", "c", "FOO", "1"], "syntax error"),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }

    // LREM: from the head, from the tail, all.
    q::<i64>(&mut c, &["DEL", "r"]);
    q::<i64>(&mut c, &["RPUSH", "r", "x", "a", "x", "b", "x", "c", "x"]);
    assert_eq!(q::<i64>(&mut c, &["LREM", "r", "1", "x"]), 1);
    assert_eq!(range(&mut c, "r"), ["a", "x", "b", "x", "c", "x"]);
    assert_eq!(q::<i64>(&mut c, &["LREM", "r", "-2", "x"]), 2);
    assert_eq!(range(&mut c, "r"), ["a", "x", "b", "c"]);
    assert_eq!(q::<i64>(&mut c, &["LREM", "r", "0", "x"]), 1);
    assert_eq!(q::<i64>(&mut c, &["LREM", "r", "0", "absent"]), 0);
    assert_eq!(q::<i64>(&mut c, &["LREM", "nope", "0", "x"]), 0);
    assert_eq!(q::<i64>(&mut c, &["LREM", "r", "0", "a"]), 1);
    assert_eq!(q::<i64>(&mut c, &["LREM", "r", "0", "b"]), 1);
    assert_eq!(q::<i64>(&mut c, &["LREM", "r", "0", "c"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "r"]), 0);

    // LTRIM keeps a range; an empty one deletes the key.
    q::<i64>(&mut c, &["RPUSH", "t", "0", "1", "2", "3", "4", "5"]);
    assert_eq!(q::<String>(&mut c, &["LTRIM", "t", "1", "-2"]), "OK");
    assert_eq!(range(&mut c, "t"), ["1", "2", "3", "4"]);
    assert_eq!(q::<String>(&mut c, &["LTRIM", "t", "-2", "100"]), "OK");
    assert_eq!(range(&mut c, "t"), ["3", "4"]);
    assert_eq!(q::<String>(&mut c, &["LTRIM", "t", "5", "10"]), "OK");
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "t"]), 0);
    assert_eq!(q::<String>(&mut c, &["LTRIM", "nope", "0", "1"]), "OK");
}

#[test]
fn move_and_multi_pop_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["RPUSH", "src", "a", "b", "c"]);
    assert_eq!(
        q::<Option<String>>(&mut c, &["LMOVE", "src", "dst", "LEFT", "RIGHT"]),
        Some("a".into())
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["LMOVE", "src", "dst", "right", "left"]),
        Some("c".into())
    );
    assert_eq!(range(&mut c, "dst"), ["c", "a"]);
    assert_eq!(
        q::<Option<String>>(&mut c, &["RPOPLPUSH", "src", "dst"]),
        Some("b".into())
    );
    assert_eq!(range(&mut c, "dst"), ["b", "c", "a"]);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "src"]), 0);
    assert_eq!(
        q::<Option<String>>(&mut c, &["RPOPLPUSH", "src", "dst"]),
        None
    );
    // Rotating a list onto itself.
    assert_eq!(
        q::<Option<String>>(&mut c, &["LMOVE", "dst", "dst", "LEFT", "RIGHT"]),
        Some("b".into())
    );
    assert_eq!(range(&mut c, "dst"), ["c", "a", "b"]);
    assert_eq!(
        q::<Option<String>>(&mut c, &["RPOPLPUSH", "dst", "dst"]),
        Some("b".into())
    );
    assert_eq!(range(&mut c, "dst"), ["b", "c", "a"]);
    assert_eq!(
        q::<Option<String>>(&mut c, &["LMOVE", "dst", "dst", "LEFT", "LEFT"]),
        Some("b".into())
    );
    assert_eq!(range(&mut c, "dst"), ["b", "c", "a"]);
    // A destination of another type: nothing moves.
    q::<String>(&mut c, &["SET", "str", "v"]);
    let e = err(&mut c, &["LMOVE", "dst", "str", "LEFT", "LEFT"]);
    assert!(e.contains("WRONGTYPE"), "{e}");
    assert_eq!(range(&mut c, "dst"), ["b", "c", "a"]);
    let e = err(&mut c, &["LMOVE", "dst", "x", "UP", "LEFT"]);
    assert!(e.contains("syntax error"), "{e}");

    // LMPOP: the first key with elements, up to COUNT of them.
    q::<i64>(&mut c, &["RPUSH", "m2", "1", "2", "3"]);
    assert_eq!(
        q::<(String, Vec<String>)>(&mut c, &["LMPOP", "2", "m1", "m2", "LEFT"]),
        ("m2".to_string(), vec!["1".to_string()])
    );
    assert_eq!(
        q::<(String, Vec<String>)>(&mut c, &["LMPOP", "2", "m1", "m2", "RIGHT", "COUNT", "5"]),
        ("m2".to_string(), vec!["3".to_string(), "2".to_string()])
    );
    assert_eq!(
        q::<Option<(String, Vec<String>)>>(&mut c, &["LMPOP", "2", "m1", "m2", "LEFT"]),
        None
    );
    for (args, text) in [
        (
            &["LMPOP", "0", "m1", "LEFT"][..],
            "numkeys should be greater than 0",
        ),
        (
            &["LMPOP", "x", "m1", "LEFT"],
            "numkeys should be greater than 0",
        ),
        (&["LMPOP", "3", "m1", "LEFT"], "syntax error"),
        (&["LMPOP", "1", "m1", "UP"], "syntax error"),
        (
            &["LMPOP", "1", "m1", "LEFT", "COUNT", "0"],
            "count should be greater than 0",
        ),
        (
            &["LMPOP", "1", "m1", "LEFT", "COUNT", "1", "COUNT", "1"],
            "syntax error",
        ),
        (&["LMPOP", "1", "str", "LEFT"], "WRONGTYPE"),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
}

#[test]
fn lists_meet_other_types_and_keyspace_commands() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<String>(&mut c, &["SET", "str", "v"]);
    q::<i64>(&mut c, &["HSET", "h", "f", "v"]);
    q::<i64>(&mut c, &["RPUSH", "l", "a", "b"]);
    for args in [
        &["LPUSH", "str", "x"][..],
        &["RPUSH", "h", "x"],
        &["LPUSHX", "str", "x"],
        &["LPOP", "str"],
        &["LLEN", "h"],
        &["LRANGE", "str", "0", "-1"],
        &["LINDEX", "str", "0"],
        &["LSET", "str", "0", "x"],
        &["LINSERT", "str", "BEFORE", "a", "b"],
        &["LREM", "str", "0", "a"],
        &["LTRIM", "str", "0", "1"],
        &["LPOS", "str", "a"],
        &["RPOPLPUSH", "str", "l"],
        &["BLPOP", "str", "0"],
        &["GET", "l"],
        &["HSET", "l", "f", "v"],
        &["SADD", "l", "m"],
        &["ZADD", "l", "1", "m"],
        &["INCR", "l"],
    ] {
        assert!(err(&mut c, args).contains("WRONGTYPE"), "{args:?}");
    }
    assert_eq!(q::<i64>(&mut c, &["COPY", "l", "l2"]), 1);
    assert_eq!(q::<String>(&mut c, &["RENAME", "l2", "l3"]), "OK");
    assert_eq!(range(&mut c, "l3"), ["a", "b"]);
    let dump: Vec<u8> = q(&mut c, &["DUMP", "l3"]);
    let _: () = redis::cmd("RESTORE")
        .arg("l4")
        .arg(0)
        .arg(&dump)
        .query(&mut c)
        .unwrap();
    assert_eq!(range(&mut c, "l4"), ["a", "b"]);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "l4", "100"]), 1);
    assert!(q::<i64>(&mut c, &["TTL", "l4"]) > 0);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "l4", "1"]), 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(q::<i64>(&mut c, &["LLEN", "l4"]), 0, "expired");
    let scanned: (String, Vec<String>) = q(&mut c, &["SCAN", "0", "TYPE", "list"]);
    let mut keys = scanned.1;
    keys.sort();
    assert_eq!(keys, ["l", "l3"]);
    // A string written over a list replaces it; a push after starts anew.
    q::<String>(&mut c, &["SET", "l3", "now a string"]);
    assert_eq!(q::<String>(&mut c, &["TYPE", "l3"]), "string");
    q::<i64>(&mut c, &["DEL", "l3"]);
    assert_eq!(q::<i64>(&mut c, &["RPUSH", "l3", "z"]), 1);
    assert_eq!(range(&mut c, "l3"), ["z"]);
    assert!(q::<i64>(&mut c, &["MEMORY", "USAGE", "l"]) > 0);
    assert_eq!(q::<i64>(&mut c, &["DEL", "l"]), 1);
    assert_eq!(q::<i64>(&mut c, &["LLEN", "l"]), 0);
}

#[test]
fn sort_reads_lists_and_stores_into_them() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["RPUSH", "n", "3", "1", "2"]);
    assert_eq!(q::<Vec<String>>(&mut c, &["SORT", "n"]), ["1", "2", "3"]);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SORT_RO", "n", "DESC"]),
        ["3", "2", "1"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SORT", "n", "BY", "nosort"]),
        ["3", "1", "2"],
        "BY without * keeps the list's order"
    );
    q::<String>(&mut c, &["MSET", "w_1", "30", "w_2", "20", "w_3", "10"]);
    assert_eq!(
        q::<Vec<Option<String>>>(
            &mut c,
            &["SORT", "n", "BY", "w_*", "GET", "#", "GET", "nope_*"]
        ),
        [
            Some("3".into()),
            None,
            Some("2".into()),
            None,
            Some("1".into()),
            None
        ]
    );
    assert_eq!(q::<i64>(&mut c, &["SORT", "n", "STORE", "out"]), 3);
    assert_eq!(range(&mut c, "out"), ["1", "2", "3"]);
    // GET values that are missing are stored as empty strings.
    assert_eq!(
        q::<i64>(&mut c, &["SORT", "n", "GET", "nope_*", "STORE", "out"]),
        3
    );
    assert_eq!(range(&mut c, "out"), ["", "", ""]);
    // Over a key of another type, with a TTL: replaced, TTL gone.
    q::<String>(&mut c, &["SET", "dst", "v", "EX", "100"]);
    assert_eq!(
        q::<i64>(&mut c, &["SORT", "n", "LIMIT", "0", "2", "STORE", "dst"]),
        2
    );
    assert_eq!(range(&mut c, "dst"), ["1", "2"]);
    assert_eq!(q::<i64>(&mut c, &["TTL", "dst"]), -1);
    // An empty result deletes the destination.
    assert_eq!(q::<i64>(&mut c, &["SORT", "missing", "STORE", "dst"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "dst"]), 0);
    let e = err(&mut c, &["SORT_RO", "n", "STORE", "dst"]);
    assert!(e.contains("syntax error"), "{e}");
}

fn wait_blocked(c: &mut redis::Connection, n: usize) {
    let want = format!("blocked_clients:{n}");
    for _ in 0..500 {
        if q::<String>(c, &["INFO", "clients"]).contains(&want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("never {want}");
}

#[test]
fn blocking_pops_wait_for_a_push_or_time_out() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut waiter = s.conn();
    // Something to pop: answered at once, from the first key holding one.
    q::<i64>(&mut c, &["RPUSH", "second", "x", "y"]);
    assert_eq!(
        q::<Vec<String>>(&mut waiter, &["BLPOP", "first", "second", "1"]),
        ["second", "x"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut waiter, &["BRPOP", "first", "second", "1"]),
        ["second", "y"]
    );
    // Nothing: a null array after the timeout.
    let started = Instant::now();
    assert_eq!(
        q::<Option<Vec<String>>>(&mut waiter, &["BLPOP", "first", "0.2"]),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(190));
    // A push from another client wakes it.
    let blocked = std::thread::spawn(move || {
        let got: Vec<String> = q(&mut waiter, &["BRPOP", "first", "second", "0"]);
        (got, waiter)
    });
    wait_blocked(&mut c, 1);
    q::<i64>(&mut c, &["RPUSH", "second", "a", "b"]);
    let (got, mut waiter) = blocked.join().unwrap();
    assert_eq!(got, ["second", "b"]);
    assert_eq!(range(&mut c, "second"), ["a"]);

    // BLMOVE and BRPOPLPUSH: at once, then blocked until a push.
    assert_eq!(
        q::<Option<String>>(
            &mut waiter,
            &["BLMOVE", "second", "dst", "LEFT", "LEFT", "1"]
        ),
        Some("a".into())
    );
    let started = Instant::now();
    assert_eq!(
        q::<Option<String>>(&mut waiter, &["BRPOPLPUSH", "second", "dst", "0.2"]),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(190));
    let blocked = std::thread::spawn(move || {
        let got: Option<String> = q(
            &mut waiter,
            &["BLMOVE", "src", "dst", "RIGHT", "RIGHT", "0"],
        );
        (got, waiter)
    });
    wait_blocked(&mut c, 1);
    q::<i64>(&mut c, &["LPUSH", "src", "moved"]);
    let (got, mut waiter) = blocked.join().unwrap();
    assert_eq!(got.as_deref(), Some("moved"));
    assert_eq!(range(&mut c, "dst"), ["a", "moved"]);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "src"]), 0);

    // BLMPOP: at once, timed out, woken.
    q::<i64>(&mut c, &["RPUSH", "m", "1", "2", "3"]);
    assert_eq!(
        q::<(String, Vec<String>)>(
            &mut waiter,
            &["BLMPOP", "1", "2", "x", "m", "RIGHT", "COUNT", "2"]
        ),
        ("m".to_string(), vec!["3".to_string(), "2".to_string()])
    );
    assert_eq!(
        q::<Option<(String, Vec<String>)>>(&mut waiter, &["BLMPOP", "0.1", "1", "x", "LEFT"]),
        None
    );
    let blocked = std::thread::spawn(move || {
        let got: (String, Vec<String>) = q(
            &mut waiter,
            &["BLMPOP", "0", "2", "x", "y", "LEFT", "COUNT", "10"],
        );
        (got, waiter)
    });
    wait_blocked(&mut c, 1);
    q::<i64>(&mut c, &["RPUSH", "y", "p", "q"]);
    let (got, mut waiter) = blocked.join().unwrap();
    assert_eq!(
        got,
        ("y".to_string(), vec!["p".to_string(), "q".to_string()])
    );

    // Inside MULTI nothing blocks: BLPOP answers a null array, BLMOVE a
    // null bulk (as Redis).
    let _: () = redis::cmd("MULTI").query(&mut waiter).unwrap();
    let _: () = redis::cmd("BLPOP")
        .arg("empty")
        .arg(0)
        .query(&mut waiter)
        .unwrap();
    let _: () = redis::cmd("BLMOVE")
        .arg(&["empty", "dst", "LEFT", "LEFT", "0"])
        .query(&mut waiter)
        .unwrap();
    let r: Vec<redis::Value> = redis::cmd("EXEC").query(&mut waiter).unwrap();
    assert_eq!(r, vec![redis::Value::Nil, redis::Value::Nil]);
    for (args, text) in [
        (
            &["BLPOP", "k", "x"][..],
            "timeout is not a float or out of range",
        ),
        (&["BRPOP", "k", "-1"], "timeout is negative"),
        (&["BLMPOP", "-1", "1", "k", "LEFT"], "timeout is negative"),
        (
            &["BLMPOP", "0", "0", "k", "LEFT"],
            "numkeys should be greater than 0",
        ),
        (&["BLMOVE", "a", "b", "LEFT", "UP", "0"], "syntax error"),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
    assert!(q::<String>(&mut c, &["INFO", "clients"]).contains("blocked_clients:0"));
}

#[test]
fn resp2_and_resp3_shapes_match_redis() {
    let s = Server::start(&[]);
    let mut raw = s.raw();
    raw.roundtrip(&resp(&[b"LPOP", b"none"]), b"$-1\r\n");
    raw.roundtrip(&resp(&[b"LPOP", b"none", b"2"]), b"*-1\r\n");
    raw.roundtrip(&resp(&[b"LMPOP", b"1", b"none", b"LEFT"]), b"*-1\r\n");
    raw.roundtrip(&resp(&[b"BLPOP", b"none", b"0.01"]), b"*-1\r\n");
    raw.roundtrip(
        &resp(&[b"BLMOVE", b"none", b"d", b"LEFT", b"LEFT", b"0.01"]),
        b"*-1\r\n",
    );
    raw.roundtrip(&resp(&[b"LPOS", b"none", b"a"]), b"$-1\r\n");
    raw.roundtrip(&resp(&[b"RPUSH", b"l", b"a", b"b"]), b":2\r\n");
    raw.roundtrip(
        &resp(&[b"LMPOP", b"1", b"l", b"LEFT"]),
        b"*2\r\n$1\r\nl\r\n*1\r\n$1\r\na\r\n",
    );
    raw.hello3();
    raw.roundtrip(&resp(&[b"LPOP", b"none"]), b"_\r\n");
    raw.roundtrip(&resp(&[b"LPOP", b"none", b"2"]), b"_\r\n");
    raw.roundtrip(&resp(&[b"BLPOP", b"none", b"0.01"]), b"_\r\n");
    raw.roundtrip(&resp(&[b"LINDEX", b"l", b"5"]), b"_\r\n");
    raw.roundtrip(
        &resp(&[b"BLPOP", b"l", b"0.01"]),
        b"*2\r\n$1\r\nl\r\n$1\r\nb\r\n",
    );
}

/// A client blocked in BLMOVE whose destination turned into another type
/// is answered WRONGTYPE when the source gets an element, which stays (as
/// Redis 7.0).
#[test]
fn a_blocked_move_to_a_key_of_another_type_answers_wrongtype() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut waiter = s.conn();
    let blocked = std::thread::spawn(move || {
        redis::cmd("BLMOVE")
            .arg(&["src", "dst", "LEFT", "RIGHT", "0"])
            .query::<Option<String>>(&mut waiter)
            .map_err(|e| e.to_string())
    });
    wait_blocked(&mut c, 1);
    q::<String>(&mut c, &["SET", "dst", "string"]);
    q::<i64>(&mut c, &["RPUSH", "src", "job"]);
    let got = blocked.join().unwrap();
    assert!(
        got.as_ref().is_err_and(|e| e.contains("WRONGTYPE")),
        "{got:?}"
    );
    assert_eq!(range(&mut c, "src"), ["job"]);
}

/// As Redis: clients blocked on one list are served in the order they
/// blocked, each one element, in the list's order.
#[test]
fn blocked_clients_are_served_first_come_first_served() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut blocked = Vec::new();
    for i in 0..3 {
        let mut waiter = s.conn();
        blocked.push(std::thread::spawn(move || {
            let got: Vec<String> = q(&mut waiter, &["BLPOP", "q", "10"]);
            (i, got[1].clone())
        }));
        wait_blocked(&mut c, i + 1);
    }
    q::<i64>(&mut c, &["RPUSH", "q", "a", "b", "c"]);
    let served: Vec<(usize, String)> = blocked.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        served,
        [
            (0, "a".to_string()),
            (1, "b".to_string()),
            (2, "c".to_string())
        ]
    );
    // One element at a time, to whoever has waited longest.
    let mut blocked = Vec::new();
    for i in 0..3 {
        let mut waiter = s.conn();
        blocked.push(std::thread::spawn(move || {
            let got: Vec<String> = q(&mut waiter, &["BRPOP", "q", "10"]);
            (i, got[1].clone())
        }));
        wait_blocked(&mut c, i + 1);
    }
    for v in ["x", "y", "z"] {
        q::<i64>(&mut c, &["LPUSH", "q", v]);
    }
    let served: Vec<(usize, String)> = blocked.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        served,
        [
            (0, "x".to_string()),
            (1, "y".to_string()),
            (2, "z".to_string())
        ]
    );
}

/// A client first in line that cannot take what arrived (it waits for a
/// sorted set; a list came) passes its turn: the list client behind it is
/// served (as Redis, which serves the clients blocked for that type).
#[test]
fn a_blocked_client_of_another_type_does_not_hold_up_the_line() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut zset_waiter = s.conn();
    let zset = std::thread::spawn(move || {
        let got: Option<Vec<String>> = q(&mut zset_waiter, &["BZPOPMIN", "k", "3"]);
        got
    });
    wait_blocked(&mut c, 1);
    let mut list_waiter = s.conn();
    let list = std::thread::spawn(move || {
        let got: Option<Vec<String>> = q(&mut list_waiter, &["BLPOP", "k", "10"]);
        got
    });
    wait_blocked(&mut c, 2);
    let started = Instant::now();
    q::<i64>(&mut c, &["LPUSH", "k", "x"]);
    assert_eq!(
        list.join().unwrap(),
        Some(vec!["k".to_string(), "x".to_string()])
    );
    assert!(started.elapsed() < Duration::from_secs(2), "served at once");
    assert_eq!(
        zset.join().unwrap(),
        None,
        "the sorted-set client timed out"
    );
}
