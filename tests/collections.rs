//! Hashes and sets through the `redis` crate: Redis 7.0 replies and errors,
//! WRONGTYPE across types, and what a key holding one does under DEL,
//! SET, EXPIRE and TYPE.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{err, q, resp, Server};

const WRONGTYPE: &str = "WRONGTYPE";

#[test]
fn hash_commands_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "a", "1", "b", "2"]), 2);
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "a", "10", "c", "3"]), 1);
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "d", "x", "d", "y"]), 1);
    assert_eq!(
        q::<String>(&mut c, &["HGET", "h", "d"]),
        "y",
        "the last value of a field named twice"
    );
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "a"]), "10");
    assert_eq!(q::<Option<String>>(&mut c, &["HGET", "h", "nope"]), None);
    assert_eq!(q::<Option<String>>(&mut c, &["HGET", "missing", "a"]), None);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 4);
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["HMGET", "h", "a", "zz", "b"]),
        vec![Some("10".into()), None, Some("2".into())]
    );
    let all: BTreeMap<String, String> = q(&mut c, &["HGETALL", "h"]);
    let expected: BTreeMap<String, String> = [("a", "10"), ("b", "2"), ("c", "3"), ("d", "y")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(all, expected);
    // HKEYS and HVALS list in one order (Chorus's: by a hash of the field).
    let keys: Vec<String> = q(&mut c, &["HKEYS", "h"]);
    let vals: Vec<String> = q(&mut c, &["HVALS", "h"]);
    let pairs: BTreeMap<String, String> = keys.into_iter().zip(vals).collect();
    assert_eq!(pairs, expected);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "h", "a"]), 1);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "h", "zz"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HSTRLEN", "h", "a"]), 2);
    assert_eq!(q::<i64>(&mut c, &["HSTRLEN", "h", "zz"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HSETNX", "h", "a", "no"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HSETNX", "h", "e", "5"]), 1);
    assert_eq!(
        q::<String>(&mut c, &["HMSET", "h", "f", "6", "g", "7"]),
        "OK"
    );
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 7);

    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "a", "5"]), 15);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "new", "-3"]), -3);
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "new"]), "-3");
    assert_eq!(
        q::<String>(&mut c, &["HINCRBYFLOAT", "h", "a", "0.5"]),
        "15.5"
    );
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "a"]), "15.5");
    assert!(err(&mut c, &["HINCRBY", "h", "d", "1"]).contains("hash value is not an integer"));
    assert!(err(&mut c, &["HINCRBY", "h", "a", "1"]).contains("hash value is not an integer"));
    assert!(err(&mut c, &["HINCRBYFLOAT", "h", "d", "1"]).contains("hash value is not a float"));
    assert!(err(&mut c, &["HINCRBY", "h", "a", "x"]).contains("value is not an integer"));
    assert_eq!(
        q::<String>(&mut c, &["HSET", "h", "big", "9223372036854775807"]),
        "1"
    );
    assert!(err(&mut c, &["HINCRBY", "h", "big", "1"]).contains("overflow"));
    assert_eq!(
        q::<String>(&mut c, &["HGET", "h", "big"]),
        "9223372036854775807",
        "a failed HINCRBY writes nothing"
    );
    // A field written over its increments reads as written.
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "new", "100"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "new", "1"]), 101);

    assert!(err(&mut c, &["HSET", "h", "a"]).contains("wrong number of arguments for 'hset'"));
    assert!(err(&mut c, &["HMSET", "h", "a", "1", "b"])
        .contains("wrong number of arguments for 'hmset'"));
    assert!(err(&mut c, &["HGET", "h"]).contains("wrong number of arguments"));

    // HDEL of every field deletes the key.
    let fields: Vec<String> = q(&mut c, &["HKEYS", "h"]);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "h", "a", "a", "zz"]), 1);
    let mut args = vec!["HDEL", "h"];
    args.extend(fields.iter().map(String::as_str));
    assert_eq!(q::<i64>(&mut c, &args), fields.len() as i64 - 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "h"]), 0);
    assert_eq!(q::<String>(&mut c, &["TYPE", "h"]), "none");
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 0);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "h", "a"]), 0);
    assert_eq!(
        q::<BTreeMap<String, String>>(&mut c, &["HGETALL", "h"]),
        BTreeMap::new()
    );
}

#[test]
fn set_commands_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["SADD", "s", "a", "b", "a"]), 2);
    assert_eq!(q::<i64>(&mut c, &["SADD", "s", "b", "c"]), 1);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 3);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "missing"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", "a"]), 1);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", "z"]), 0);
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["SMISMEMBER", "s", "a", "z", "c"]),
        vec![1, 0, 1]
    );
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["SMISMEMBER", "missing", "a"]),
        vec![0]
    );
    let members: BTreeSet<String> = q(&mut c, &["SMEMBERS", "s"]);
    assert_eq!(members, ["a", "b", "c"].map(String::from).into());
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SMEMBERS", "missing"]),
        Vec::<String>::new()
    );
    assert_eq!(q::<i64>(&mut c, &["SREM", "s", "a", "z", "a"]), 1);
    assert_eq!(q::<i64>(&mut c, &["SREM", "missing", "a"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SREM", "s", "b", "c"]), 2);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "s"]),
        0,
        "the last SREM deletes the key"
    );
    assert!(err(&mut c, &["SADD", "s"]).contains("wrong number of arguments for 'sadd'"));
}

#[test]
fn every_command_meets_another_type_with_wrongtype() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "f", "1"]);
    q::<i64>(&mut c, &["SADD", "s", "m"]);
    q::<String>(&mut c, &["SET", "str", "v"]);
    for args in [
        vec!["GET", "h"],
        vec!["INCR", "h"],
        vec!["INCRBYFLOAT", "s", "1"],
        vec!["APPEND", "h", "x"],
        vec!["STRLEN", "s"],
        vec!["GETRANGE", "h", "0", "1"],
        vec!["SETRANGE", "h", "0", "x"],
        vec!["GETDEL", "h"],
        vec!["GETSET", "h", "x"],
        vec!["SETBIT", "s", "1", "1"],
        vec!["GETBIT", "h", "1"],
        vec!["BITCOUNT", "h"],
        vec!["HSET", "str", "f", "v"],
        vec!["HGET", "s", "f"],
        vec!["HGETALL", "str"],
        vec!["HINCRBY", "s", "f", "1"],
        vec!["HLEN", "s"],
        vec!["SADD", "h", "m"],
        vec!["SMEMBERS", "str"],
        vec!["SISMEMBER", "h", "m"],
        vec!["SREM", "str", "m"],
        vec!["SCARD", "h"],
    ] {
        let e = err(&mut c, &args);
        assert!(e.contains(WRONGTYPE), "{args:?}: {e}");
    }
    // Nothing changed.
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "f"]), "1");
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 1);
    assert_eq!(q::<String>(&mut c, &["GET", "str"]), "v");
    // MGET answers nil for keys of other types, as Redis does.
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["MGET", "h", "str"]),
        vec![None, Some("v".into())]
    );
    assert_eq!(q::<String>(&mut c, &["TYPE", "h"]), "hash");
    assert_eq!(q::<String>(&mut c, &["TYPE", "s"]), "set");
    assert_eq!(q::<String>(&mut c, &["TYPE", "str"]), "string");
    let (_, hashes): (String, Vec<String>) =
        q(&mut c, &["SCAN", "0", "TYPE", "hash", "COUNT", "100"]);
    assert_eq!(hashes, vec!["h"]);
    let (_, sets): (String, Vec<String>) = q(&mut c, &["SCAN", "0", "TYPE", "set", "COUNT", "100"]);
    assert_eq!(sets, vec!["s"]);
}

#[test]
fn set_del_and_expire_work_on_every_type() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "f", "1", "g", "2"]);
    // SET replaces a hash whole; the fields are gone for good.
    assert_eq!(q::<String>(&mut c, &["SET", "h", "plain"]), "OK");
    assert_eq!(q::<String>(&mut c, &["GET", "h"]), "plain");
    assert_eq!(q::<String>(&mut c, &["TYPE", "h"]), "string");
    assert_eq!(q::<i64>(&mut c, &["DEL", "h"]), 1);
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "new", "1"]), 1);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["HKEYS", "h"]),
        vec!["new"],
        "old fields stay deleted"
    );
    // A hash made from a deleted string key has no TTL from it.
    q::<String>(&mut c, &["SET", "t", "v", "EX", "100"]);
    q::<i64>(&mut c, &["DEL", "t"]);
    q::<i64>(&mut c, &["SADD", "t", "m"]);
    assert_eq!(q::<i64>(&mut c, &["TTL", "t"]), -1);
    // EXPIRE, TTL, PERSIST on a set; an expired set is gone.
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "t", "100"]), 1);
    assert!(q::<i64>(&mut c, &["TTL", "t"]) > 90);
    q::<i64>(&mut c, &["SADD", "t", "n"]);
    assert!(
        q::<i64>(&mut c, &["TTL", "t"]) > 90,
        "a member added keeps the key's TTL"
    );
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "t", "30"]), 1);
    std::thread::sleep(std::time::Duration::from_millis(80));
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "t"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SADD", "t", "x"]), 1);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SMEMBERS", "t"]),
        vec!["x"],
        "the expired members stay gone"
    );
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 2);
    assert_eq!(q::<String>(&mut c, &["FLUSHALL"]), "OK");
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SADD", "t", "y"]), 1);
    assert_eq!(q::<Vec<String>>(&mut c, &["SMEMBERS", "t"]), vec!["y"]);
}

#[test]
fn copy_rename_move_dump_and_restore_carry_hashes_and_sets() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "f", "1", "g", "two"]);
    q::<i64>(&mut c, &["HINCRBY", "h", "f", "41"]);
    q::<i64>(&mut c, &["SADD", "s", "a", "b"]);
    q::<i64>(&mut c, &["EXPIRE", "s", "1000"]);
    let fields =
        |c: &mut redis::Connection, k: &str| q::<BTreeMap<String, String>>(c, &["HGETALL", k]);
    let members = |c: &mut redis::Connection, k: &str| q::<BTreeSet<String>>(c, &["SMEMBERS", k]);
    let h = fields(&mut c, "h");
    assert_eq!(h["f"], "42");

    assert_eq!(q::<i64>(&mut c, &["COPY", "h", "h2"]), 1);
    assert_eq!(fields(&mut c, "h2"), h);
    assert_eq!(q::<i64>(&mut c, &["COPY", "s", "s2"]), 1);
    assert_eq!(members(&mut c, "s2"), members(&mut c, "s"));
    assert!(
        q::<i64>(&mut c, &["TTL", "s2"]) > 990,
        "COPY carries the TTL"
    );
    // COPY REPLACE over a key of another type.
    assert_eq!(q::<i64>(&mut c, &["COPY", "s", "h2", "REPLACE"]), 1);
    assert_eq!(q::<String>(&mut c, &["TYPE", "h2"]), "set");
    assert_eq!(members(&mut c, "h2"), members(&mut c, "s"));

    assert_eq!(q::<String>(&mut c, &["RENAME", "h", "h3"]), "OK");
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "h"]), 0);
    assert_eq!(fields(&mut c, "h3"), h);
    assert_eq!(q::<i64>(&mut c, &["MOVE", "h3", "1"]), 1);
    q::<String>(&mut c, &["SELECT", "1"]);
    assert_eq!(fields(&mut c, "h3"), h);
    q::<String>(&mut c, &["SELECT", "0"]);

    let payload: Vec<u8> = redis::cmd("DUMP").arg("s").query(&mut c).unwrap();
    let _: () = redis::cmd("RESTORE")
        .arg("s4")
        .arg(0)
        .arg(&payload)
        .query(&mut c)
        .unwrap();
    assert_eq!(members(&mut c, "s4"), members(&mut c, "s"));
    q::<String>(&mut c, &["SELECT", "1"]);
    let payload: Vec<u8> = redis::cmd("DUMP").arg("h3").query(&mut c).unwrap();
    q::<String>(&mut c, &["SELECT", "0"]);
    let _: () = redis::cmd("RESTORE")
        .arg("s4")
        .arg(0)
        .arg(&payload)
        .arg("REPLACE")
        .query(&mut c)
        .unwrap();
    assert_eq!(fields(&mut c, "s4"), h);
    let mut bad = payload.clone();
    let last = bad.len() - 9;
    bad[last] ^= 1;
    let e = redis::cmd("RESTORE")
        .arg("s5")
        .arg(0)
        .arg(&bad)
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");

    assert_eq!(
        q::<String>(&mut c, &["OBJECT", "ENCODING", "s4"]),
        "packed-ormap"
    );
    assert_eq!(q::<String>(&mut c, &["OBJECT", "ENCODING", "s"]), "orset");
    let small: i64 = q(&mut c, &["MEMORY", "USAGE", "s"]);
    let mut args = vec!["SADD".to_string(), "s".to_string()];
    args.extend((0..100).map(|i| format!("member-{i}")));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    q::<i64>(&mut c, &refs);
    let big: i64 = q(&mut c, &["MEMORY", "USAGE", "s"]);
    assert!(
        big > small + 100 * 20,
        "MEMORY USAGE counts the members: {small} then {big}"
    );
}

#[test]
fn random_scanning_and_algebra_commands_on_sets_and_hashes() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut args = vec!["SADD".to_string(), "big".to_string()];
    args.extend((0..300).map(|i| format!("m{i:03}")));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(q::<i64>(&mut c, &refs), 300);
    // SSCAN visits every member, COUNT at a time, and ends at cursor 0.
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let (next, batch): (String, Vec<String>) =
            q(&mut c, &["SSCAN", "big", &cursor, "COUNT", "7"]);
        seen.extend(batch);
        calls += 1;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 300);
    assert!(calls >= 300 / 7, "{calls} calls");
    let (_, matched): (String, BTreeSet<String>) = q(
        &mut c,
        &["SSCAN", "big", "0", "MATCH", "m29*", "COUNT", "1000"],
    );
    assert_eq!(matched, (290..300).map(|i| format!("m{i}")).collect());

    let one: String = q(&mut c, &["SRANDMEMBER", "big"]);
    assert!(one.starts_with('m'));
    let five: Vec<String> = q(&mut c, &["SRANDMEMBER", "big", "5"]);
    assert_eq!(
        five.iter().collect::<BTreeSet<_>>().len(),
        5,
        "distinct for a positive count"
    );
    let repeats: Vec<String> = q(&mut c, &["SRANDMEMBER", "big", "-400"]);
    assert_eq!(repeats.len(), 400, "a negative count may repeat");
    for huge in ["-9223372036854775808", "-100000000000"] {
        assert!(err(&mut c, &["SRANDMEMBER", "big", huge]).contains("out of range"));
    }
    let popped: Vec<String> = q(&mut c, &["SPOP", "big", "10"]);
    assert_eq!(popped.len(), 10);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "big"]), 290);
    for m in &popped {
        assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "big", m]), 0);
    }
    let single: String = q(&mut c, &["SPOP", "big"]);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "big", &single]), 0);
    assert_eq!(q::<Option<String>>(&mut c, &["SPOP", "missing"]), None);
    assert!(err(&mut c, &["SPOP", "big", "-1"]).contains("out of range"));

    q::<i64>(&mut c, &["SADD", "a", "1", "2", "3"]);
    q::<i64>(&mut c, &["SADD", "b", "2", "3", "4"]);
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<String>>()
    };
    assert_eq!(
        q::<BTreeSet<String>>(&mut c, &["SINTER", "a", "b"]),
        set(&["2", "3"])
    );
    assert_eq!(
        q::<BTreeSet<String>>(&mut c, &["SUNION", "a", "b"]),
        set(&["1", "2", "3", "4"])
    );
    assert_eq!(
        q::<BTreeSet<String>>(&mut c, &["SDIFF", "a", "b"]),
        set(&["1"])
    );
    assert_eq!(
        q::<BTreeSet<String>>(&mut c, &["SINTER", "a", "missing"]),
        set(&[])
    );
    // Smallest set first, whatever the order named: the same members.
    q::<i64>(
        &mut c,
        &["SADD", "big", "0", "1", "2", "3", "4", "5", "6", "7"],
    );
    q::<i64>(&mut c, &["SADD", "small", "3", "7", "9"]);
    for keys in [
        ["big", "small", "b"],
        ["small", "b", "big"],
        ["b", "big", "small"],
    ] {
        let mut args = vec!["SINTER"];
        args.extend(keys);
        assert_eq!(
            q::<BTreeSet<String>>(&mut c, &args),
            set(&["3"]),
            "{keys:?}"
        );
    }
    // Every key's type is checked, even after a missing one (as Redis).
    q::<()>(&mut c, &["SET", "a-string", "v"]);
    assert!(err(&mut c, &["SINTER", "missing", "a-string"]).contains(WRONGTYPE));
    assert_eq!(q::<i64>(&mut c, &["SINTERCARD", "2", "a", "b"]), 2);
    assert_eq!(
        q::<i64>(&mut c, &["SINTERCARD", "2", "a", "b", "LIMIT", "1"]),
        1
    );
    assert!(err(&mut c, &["SINTERCARD", "0", "a"]).contains("numkeys"));
    assert_eq!(q::<i64>(&mut c, &["SINTERSTORE", "d", "a", "b"]), 2);
    assert_eq!(
        q::<BTreeSet<String>>(&mut c, &["SMEMBERS", "d"]),
        set(&["2", "3"])
    );
    assert_eq!(q::<i64>(&mut c, &["SUNIONSTORE", "d", "a", "b"]), 4);
    assert_eq!(
        q::<i64>(&mut c, &["SCARD", "d"]),
        4,
        "STORE replaces the destination"
    );
    assert_eq!(q::<i64>(&mut c, &["SDIFFSTORE", "d", "a", "a"]), 0);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "d"]),
        0,
        "an empty result deletes the destination"
    );
    q::<String>(&mut c, &["SET", "str", "x"]);
    assert!(err(&mut c, &["SINTER", "a", "str"]).contains(WRONGTYPE));
    assert_eq!(
        q::<i64>(&mut c, &["SINTERSTORE", "str", "a", "b"]),
        2,
        "a STORE overwrites any type"
    );
    assert_eq!(q::<i64>(&mut c, &["SMOVE", "a", "b", "1"]), 1);
    assert_eq!(q::<i64>(&mut c, &["SMOVE", "a", "b", "1"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "b", "1"]), 1);
    q::<String>(&mut c, &["SET", "plain", "x"]);
    assert!(err(&mut c, &["SMOVE", "a", "plain", "2"]).contains(WRONGTYPE));
    assert_eq!(
        q::<i64>(&mut c, &["SMOVE", "nosuch", "plain", "2"]),
        0,
        "as Redis: no source, 0"
    );
    assert!(err(&mut c, &["SINTERCARD", "x", "a"]).contains("numkeys should be greater than 0"));
    assert!(
        err(&mut c, &["SINTERCARD", "1", "a", "LIMIT", "x"]).contains("LIMIT can't be negative")
    );
    // As Redis: LIMIT without its value is a syntax error.
    assert!(err(&mut c, &["SINTERCARD", "1", "a", "LIMIT"]).contains("syntax error"));
    assert_eq!(
        q::<i64>(&mut c, &["SISMEMBER", "a", "2"]),
        1,
        "nothing moved"
    );

    q::<i64>(&mut c, &["HSET", "h", "f1", "v1", "f2", "v2", "f3", "v3"]);
    let f: String = q(&mut c, &["HRANDFIELD", "h"]);
    assert!(f.starts_with('f'));
    let two: Vec<String> = q(&mut c, &["HRANDFIELD", "h", "2", "WITHVALUES"]);
    assert_eq!(two.len(), 4);
    assert_eq!(two[1], two[0].replace('f', "v"));
    assert_eq!(
        q::<Vec<String>>(&mut c, &["HRANDFIELD", "h", "-5"]).len(),
        5
    );
    assert!(err(&mut c, &["HRANDFIELD", "h", "-9223372036854775808"]).contains("out of range"));
    assert_eq!(
        q::<Vec<String>>(&mut c, &["HRANDFIELD", "h", "10"]).len(),
        3
    );
    let (next, all): (String, Vec<String>) = q(&mut c, &["HSCAN", "h", "0"]);
    assert_eq!((next.as_str(), all.len()), ("0", 6));
    let (_, names): (String, Vec<String>) =
        q(&mut c, &["HSCAN", "h", "0", "MATCH", "f2", "NOVALUES"]);
    assert_eq!(names, vec!["f2"]);
}

#[test]
fn crdt_state_shows_a_collections_metadata() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "f", "v", "g", "w"]);
    q::<i64>(&mut c, &["HINCRBY", "h", "n", "3"]);
    q::<i64>(&mut c, &["HDEL", "h", "g"]);
    let state: BTreeMap<String, redis::Value> = q(&mut c, &["CRDT.STATE", "h"]);
    assert_eq!(state["type"], redis::Value::BulkString(b"hash".to_vec()));
    let text = format!("{:?}", state["collection"]);
    for part in [
        "hash_elements",
        "int(2)",
        "floor=",
        "hash f writes=[",
        "=v]",
        "int=3",
        "context",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    q::<i64>(&mut c, &["SADD", "s", "m"]);
    let state: BTreeMap<String, redis::Value> = q(&mut c, &["CRDT.STATE", "s"]);
    assert_eq!(state["type"], redis::Value::BulkString(b"set".to_vec()));
    assert!(format!("{:?}", state["collection"]).contains("set m adds=["));
    q::<i64>(&mut c, &["ZADD", "z", "1.5", "m"]);
    q::<String>(&mut c, &["ZINCRBY", "z", "2", "m"]);
    let state: BTreeMap<String, redis::Value> = q(&mut c, &["CRDT.STATE", "z"]);
    assert_eq!(state["type"], redis::Value::BulkString(b"zset".to_vec()));
    let text = format!("{:?}", state["collection"]);
    assert!(
        text.contains("zset m score=3.5 writes=[")
            && text.contains("=1.5]")
            && text.contains("float=2"),
        "{text}"
    );
    q::<String>(&mut c, &["SET", "str", "x"]);
    let state: BTreeMap<String, redis::Value> = q(&mut c, &["CRDT.STATE", "str"]);
    assert_eq!(state["type"], redis::Value::BulkString(b"string".to_vec()));
    assert!(!state.contains_key("collection"));
}

#[test]
fn single_random_picks_reach_every_element() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let members: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let mut args = vec!["SADD", "s"];
    args.extend(members.iter().map(String::as_str));
    q::<i64>(&mut c, &args);
    let mut hfields = vec!["HSET", "h"];
    for m in &members {
        hfields.extend([m.as_str(), "v"]);
    }
    q::<i64>(&mut c, &hfields);
    let mut seen = BTreeSet::new();
    let mut fields = BTreeSet::new();
    for _ in 0..300 {
        seen.insert(q::<String>(&mut c, &["SRANDMEMBER", "s"]));
        fields.insert(q::<String>(&mut c, &["HRANDFIELD", "h"]));
    }
    assert!(seen.len() >= 8, "SRANDMEMBER picked only {seen:?}");
    assert!(fields.len() >= 8, "HRANDFIELD picked only {fields:?}");
    let mut popped = BTreeSet::new();
    while let Some(m) = q::<Option<String>>(&mut c, &["SPOP", "s"]) {
        assert!(popped.insert(m), "a member popped twice");
    }
    assert_eq!(popped, members.into_iter().collect::<BTreeSet<_>>());
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s"]), 0);
}

/// Counted random picks from large sets and hashes: a few are random
/// picks, many one walk; distinct when the count is positive, members all.
#[test]
fn counted_random_picks_of_large_collections() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let members: Vec<String> = (0..2_000).map(|i| format!("m{i}")).collect();
    let mut args = vec!["SADD", "big"];
    args.extend(members.iter().map(String::as_str));
    assert_eq!(q::<i64>(&mut c, &args), 2_000);
    let all: BTreeSet<String> = members.iter().cloned().collect();
    for n in [10usize, 1_500, 5_000] {
        let got: Vec<String> = q(&mut c, &["SRANDMEMBER", "big", &n.to_string()]);
        let distinct: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(got.len(), n.min(2_000), "SRANDMEMBER {n}");
        assert_eq!(distinct.len(), got.len(), "SRANDMEMBER {n} repeats");
        assert!(distinct.is_subset(&all));
    }
    let got: Vec<String> = q(&mut c, &["SRANDMEMBER", "big", "-50"]);
    assert_eq!(got.len(), 50);
    assert!(got.iter().all(|m| all.contains(m)));
    let popped: Vec<String> = q(&mut c, &["SPOP", "big", "10"]);
    let distinct: BTreeSet<String> = popped.iter().cloned().collect();
    assert_eq!(distinct.len(), 10);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "big"]), 1_990);
    for m in &popped {
        assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "big", m]), 0);
    }
    assert!(err(&mut c, &["SPOP", "big", "x"]).contains("value is out of range, must be positive"));
    assert!(err(&mut c, &["SPOP", "big", "x", "y"]).contains("syntax error"));

    let mut args = vec!["HSET", "h"];
    let pairs: Vec<(String, String)> = (0..1_000)
        .map(|i| (format!("f{i}"), format!("v{i}")))
        .collect();
    for (f, v) in &pairs {
        args.push(f);
        args.push(v);
    }
    q::<i64>(&mut c, &args);
    let got: Vec<String> = q(&mut c, &["HRANDFIELD", "h", "5", "WITHVALUES"]);
    assert_eq!(got.len(), 10);
    for pair in got.chunks(2) {
        assert_eq!(pair[1], format!("v{}", &pair[0][1..]), "{pair:?}");
    }
    let got: Vec<String> = q(&mut c, &["HRANDFIELD", "h", "-3"]);
    assert_eq!(got.len(), 3);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["HRANDFIELD", "nope", "-3"]),
        Vec::<String>::new()
    );
}

/// Members crafted to share one element hash (the hash is public and not
/// meant to resist an adversary): a counted SPOP or SRANDMEMBER still
/// answers, where random picks alone could only ever reach one of them.
#[test]
fn counted_picks_answer_when_members_share_a_hash() {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    fn inv(a: u64) -> u64 {
        let mut x = a;
        for _ in 0..6 {
            x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        }
        x
    }
    fn round(acc: u64, lane: u64) -> u64 {
        (acc ^ lane.wrapping_mul(P2).rotate_left(31).wrapping_mul(P1))
            .rotate_left(27)
            .wrapping_mul(P1)
            .wrapping_add(P3)
    }
    // Two 8-byte lanes: the second chosen so that both rounds end at `T`.
    const T: u64 = 0x0123_4567_89ab_cdef;
    let x = T.wrapping_sub(P3).wrapping_mul(inv(P1)).rotate_right(27);
    let members: Vec<Vec<u8>> = (1..=8u64)
        .map(|first| {
            let acc = round(16u64.wrapping_mul(P1) ^ P3, first);
            let y = (acc ^ x).wrapping_mul(inv(P1)).rotate_right(31);
            let second = y.wrapping_mul(inv(P2));
            assert_eq!(round(acc, second), T);
            [first.to_le_bytes(), second.to_le_bytes()].concat()
        })
        .collect();
    let hash = chorus_crdt::digest::stable_hash(&members[0]);
    assert!(members
        .iter()
        .all(|m| chorus_crdt::digest::stable_hash(m) == hash));

    let s = Server::start(&[]);
    let mut c = s.conn();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let added: i64 = redis::cmd("SADD")
        .arg("s")
        .arg(&members)
        .query(&mut c)
        .unwrap();
    assert_eq!(added, 8);
    let picked: Vec<Vec<u8>> = redis::cmd("SRANDMEMBER")
        .arg("s")
        .arg(2)
        .query(&mut c)
        .unwrap();
    assert_eq!(picked.len(), 2);
    assert_ne!(picked[0], picked[1]);
    let popped: Vec<Vec<u8>> = redis::cmd("SPOP").arg("s").arg(2).query(&mut c).unwrap();
    assert_eq!(popped.len(), 2);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]), 6);
}

/// A small hash of plain fields is packed in one buffer (OBJECT ENCODING
/// `packed-ormap`); a long value or a counter field makes it a map, and it
/// packs again once it qualifies. Every read answers alike either way.
#[test]
fn small_hashes_pack_and_unpack_as_they_change() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let enc = |c: &mut redis::Connection| q::<String>(c, &["OBJECT", "ENCODING", "h"]);
    let fields: Vec<String> = (0..20).map(|i| format!("field{i}")).collect();
    let mut args = vec!["HSET".to_string(), "h".to_string()];
    for f in &fields {
        args.extend([f.clone(), format!("v-{f}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(q::<i64>(&mut c, &args), 20);
    assert_eq!(enc(&mut c), "packed-ormap");
    let packed_usage: i64 = q(&mut c, &["MEMORY", "USAGE", "h"]);
    let expected: BTreeMap<String, String> = fields
        .iter()
        .map(|f| (f.clone(), format!("v-{f}")))
        .collect();
    let all: BTreeMap<String, String> = q(&mut c, &["HGETALL", "h"]);
    assert_eq!(all, expected);

    // A value past 64 bytes: a map, reading the same.
    let long = "x".repeat(65);
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "field3", &long]), 0);
    assert_eq!(enc(&mut c), "ormap");
    let map_usage: i64 = q(&mut c, &["MEMORY", "USAGE", "h"]);
    assert!(
        packed_usage < map_usage / 2,
        "packed {packed_usage} bytes, as a map {map_usage}"
    );
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "field3"]), long);

    // Short again: packed again, every field as written.
    assert_eq!(q::<i64>(&mut c, &["HSET", "h", "field3", "v-field3"]), 0);
    assert_eq!(enc(&mut c), "packed-ormap");
    let all: BTreeMap<String, String> = q(&mut c, &["HGETALL", "h"]);
    assert_eq!(all, expected);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 20);
    let (cursor, scanned): (u64, Vec<String>) = q(&mut c, &["HSCAN", "h", "0", "COUNT", "100"]);
    assert_eq!((cursor, scanned.len()), (0, 40));

    // A refused increment changes nothing; a counter field makes a map.
    assert!(err(&mut c, &["HINCRBY", "h", "field1", "1"]).contains("not an integer"));
    assert_eq!(enc(&mut c), "packed-ormap");
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "n", "5"]), 5);
    assert_eq!(enc(&mut c), "ormap");
    assert_eq!(q::<i64>(&mut c, &["HDEL", "h", "n", "field0"]), 2);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]), 19);
    assert_eq!(
        enc(&mut c),
        "packed-ormap",
        "plain again after the HDEL's merge"
    );
    assert_eq!(q::<Option<String>>(&mut c, &["HGET", "h", "field0"]), None);
    assert_eq!(q::<String>(&mut c, &["HGET", "h", "field19"]), "v-field19");
}

/// A small hash written by one command costs little: no extras box once
/// the node's GC floor passes its creation (CRDT.STATE shows no expiry
/// field), and MEMORY USAGE of ten short fields stays under 60 bytes a
/// field (846 bytes for the ten before the key's unused parts became null
/// pointers and the packed times distances; redis-server's listpack: 41
/// bytes a field of RSS, docs/benchmarks.md).
#[test]
fn a_small_hash_carries_no_room_it_does_not_use() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut args = vec!["HSET".to_string(), "user:1".to_string()];
    for i in 0..10 {
        args.extend([format!("fld{i:03}"), format!("value-{i:010}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(q::<i64>(&mut c, &args), 10);
    assert_eq!(
        q::<String>(&mut c, &["OBJECT", "ENCODING", "user:1"]),
        "packed-ormap"
    );
    let state: BTreeMap<String, redis::Value> = q(&mut c, &["CRDT.STATE", "user:1"]);
    assert_eq!(
        state["expiry_field"],
        redis::Value::BulkString(b"0@0@0000000000000000".to_vec()),
        "the creation's persist is compacted away"
    );
    let usage: i64 = q(&mut c, &["MEMORY", "USAGE", "user:1"]);
    assert!(usage <= 600, "MEMORY USAGE of ten fields: {usage} bytes");
    assert_eq!(
        q::<String>(&mut c, &["HGET", "user:1", "fld007"]),
        "value-0000000007"
    );
}

/// Count arguments out of range answer Redis's texts (a differential run
/// found HRANDFIELD with WITHVALUES returning the whole hash for a count
/// whose double overflows, and a bare "value is out of range" for
/// i64::MIN).
#[test]
fn random_member_counts_out_of_range_answer_redis_texts() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["HSET", "h", "a", "1"]);
    q::<i64>(&mut c, &["SADD", "s", "a"]);
    q::<i64>(&mut c, &["ZADD", "z", "1", "a"]);
    let e = err(
        &mut c,
        &["HRANDFIELD", "h", "9223372036854775807", "WITHVALUES"],
    );
    assert!(e.contains("value is out of range"), "{e}");
    let e = err(
        &mut c,
        &["HRANDFIELD", "h", "-4611686018427387904", "WITHVALUES"],
    );
    assert!(e.contains("value is out of range"), "{e}");
    assert_eq!(
        q::<Vec<String>>(
            &mut c,
            &["HRANDFIELD", "h", "4611686018427387903", "WITHVALUES"]
        ),
        ["a", "1"],
        "a count at the bound is taken"
    );
    let bound =
        "value is out of range, value must between -9223372036854775807 and 9223372036854775807";
    for cmd in [
        &["SRANDMEMBER", "s", "-9223372036854775808"][..],
        &["HRANDFIELD", "h", "-9223372036854775808"],
        &["ZRANDMEMBER", "z", "-9223372036854775808"],
    ] {
        let e = err(&mut c, cmd);
        assert!(e.contains(bound), "{cmd:?}: {e}");
    }
}

/// Hashes and sets in RESP3 answer with the types redis-server 7.0.15 sends
/// (checked byte for byte against it): maps, sets, nulls and pairs; in
/// RESP2 the same as flat arrays.
#[test]
fn hashes_and_sets_reply_in_resp3_as_redis_does() {
    let s = Server::start(&[]);
    let mut r = s.raw();
    r.hello3();
    let cases: &[(&[&[u8]], &[u8])] = &[
        (&[b"HSET", b"h", b"f", b"1"], b":1\r\n"),
        (&[b"HGETALL", b"h"], b"%1\r\n$1\r\nf\r\n$1\r\n1\r\n"),
        (&[b"HGETALL", b"nohash"], b"%0\r\n"),
        (
            &[b"HRANDFIELD", b"h", b"1", b"WITHVALUES"],
            b"*1\r\n*2\r\n$1\r\nf\r\n$1\r\n1\r\n",
        ),
        (
            &[b"HRANDFIELD", b"h", b"-1", b"WITHVALUES"],
            b"*1\r\n*2\r\n$1\r\nf\r\n$1\r\n1\r\n",
        ),
        (&[b"HMGET", b"h", b"f", b"x"], b"*2\r\n$1\r\n1\r\n_\r\n"),
        (&[b"HKEYS", b"h"], b"*1\r\n$1\r\nf\r\n"),
        (&[b"HVALS", b"h"], b"*1\r\n$1\r\n1\r\n"),
        (
            &[b"HSCAN", b"h", b"0"],
            b"*2\r\n$1\r\n0\r\n*2\r\n$1\r\nf\r\n$1\r\n1\r\n",
        ),
        (&[b"SADD", b"s", b"a"], b":1\r\n"),
        (&[b"SMEMBERS", b"s"], b"~1\r\n$1\r\na\r\n"),
        (&[b"SMEMBERS", b"nos"], b"~0\r\n"),
        (&[b"SINTER", b"s"], b"~1\r\n$1\r\na\r\n"),
        (&[b"SUNION", b"s", b"nos"], b"~1\r\n$1\r\na\r\n"),
        (&[b"SDIFF", b"s", b"nos"], b"~1\r\n$1\r\na\r\n"),
        (&[b"SRANDMEMBER", b"s", b"1"], b"*1\r\n$1\r\na\r\n"),
        (&[b"SPOP", b"nos", b"1"], b"~0\r\n"),
        (&[b"SMISMEMBER", b"s", b"a", b"b"], b"*2\r\n:1\r\n:0\r\n"),
        (
            &[b"SSCAN", b"s", b"0"],
            b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\na\r\n",
        ),
        (&[b"SINTERCARD", b"1", b"s"], b":1\r\n"),
    ];
    for (args, want) in cases {
        r.roundtrip(&resp(args), want);
    }
    let mut r2 = s.raw();
    r2.roundtrip(&resp(&[b"HGETALL", b"h"]), b"*2\r\n$1\r\nf\r\n$1\r\n1\r\n");
    r2.roundtrip(&resp(&[b"SMEMBERS", b"s"]), b"*1\r\n$1\r\na\r\n");
    r2.roundtrip(&resp(&[b"HMGET", b"h", b"x"]), b"*1\r\n$-1\r\n");
}
