//! String, counter and expiry commands through the `redis` crate.

mod common;

use std::time::Duration;

use common::{err, q, Server};

#[test]
fn set_get_and_the_string_family() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<String>(&mut c, &["SET", "k", "hello"]), "OK");
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "hello");
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "missing"]), None);
    assert_eq!(q::<i64>(&mut c, &["APPEND", "k", " world"]), 11);
    assert_eq!(q::<i64>(&mut c, &["STRLEN", "k"]), 11);
    assert_eq!(q::<String>(&mut c, &["GETRANGE", "k", "0", "4"]), "hello");
    assert_eq!(q::<String>(&mut c, &["GETRANGE", "k", "-5", "-1"]), "world");
    assert_eq!(q::<String>(&mut c, &["GETRANGE", "k", "5", "1"]), "");
    assert_eq!(q::<i64>(&mut c, &["SETRANGE", "k", "6", "WORLD"]), 11);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "hello WORLD");
    assert_eq!(q::<i64>(&mut c, &["SETRANGE", "pad", "3", "x"]), 4);
    assert_eq!(q::<Vec<u8>>(&mut c, &["GET", "pad"]), b"\0\0\0x");
    assert!(err(&mut c, &["SETRANGE", "pad", "-1", "x"]).contains("offset is out of range"));

    assert_eq!(q::<i64>(&mut c, &["SETNX", "k", "x"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SETNX", "new", "x"]), 1);
    assert_eq!(q::<String>(&mut c, &["GETSET", "new", "y"]), "x");
    assert_eq!(q::<String>(&mut c, &["GETDEL", "new"]), "y");
    assert_eq!(q::<Option<String>>(&mut c, &["GETDEL", "new"]), None);

    assert_eq!(q::<String>(&mut c, &["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["MGET", "a", "nope", "b"]),
        vec![Some("1".to_string()), None, Some("2".to_string())]
    );
    assert_eq!(q::<i64>(&mut c, &["MSETNX", "a", "9", "z", "9"]), 0);
    assert_eq!(
        q::<Option<String>>(&mut c, &["GET", "z"]),
        None,
        "MSETNX is all or nothing"
    );
    assert_eq!(q::<i64>(&mut c, &["MSETNX", "y", "9", "z", "9"]), 1);
    assert!(err(&mut c, &["MSET", "a", "1", "b"]).contains("wrong number of arguments"));
}

#[test]
fn set_options_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<Option<String>>(&mut c, &["SET", "k", "v", "XX"]), None);
    assert_eq!(
        q::<Option<String>>(&mut c, &["SET", "k", "v", "NX"]),
        Some("OK".into())
    );
    assert_eq!(q::<Option<String>>(&mut c, &["SET", "k", "w", "NX"]), None);
    assert_eq!(
        q::<Option<String>>(&mut c, &["SET", "k", "w", "XX", "GET"]),
        Some("v".into())
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["SET", "fresh", "1", "GET"]),
        None
    );

    q::<()>(&mut c, &["SET", "t", "v", "EX", "100"]);
    let ttl: i64 = q(&mut c, &["TTL", "t"]);
    assert!((99..=100).contains(&ttl), "{ttl}");
    q::<()>(&mut c, &["SET", "t", "v2", "KEEPTTL"]);
    assert!(
        q::<i64>(&mut c, &["TTL", "t"]) > 90,
        "KEEPTTL keeps the TTL"
    );
    q::<()>(&mut c, &["SET", "t", "v3"]);
    assert_eq!(
        q::<i64>(&mut c, &["TTL", "t"]),
        -1,
        "a plain SET clears the TTL"
    );
    q::<()>(&mut c, &["SET", "t", "v", "PX", "100000"]);
    assert!(q::<i64>(&mut c, &["PTTL", "t"]) > 99_000);
    let at = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1000)
        .to_string();
    q::<()>(&mut c, &["SET", "t", "v", "EXAT", &at]);
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "t"]).to_string(), at);

    assert!(err(&mut c, &["SET", "k", "v", "NX", "XX"]).contains("syntax error"));
    assert!(err(&mut c, &["SET", "k", "v", "EX", "10", "PX", "10"]).contains("syntax error"));
    assert!(
        err(&mut c, &["SET", "k", "v", "EX", "0"]).contains("invalid expire time in 'set' command")
    );
    assert!(err(&mut c, &["SET", "k", "v", "EX", "abc"]).contains("not an integer"));
    assert!(err(&mut c, &["SET", "k", "v", "BOGUS"]).contains("syntax error"));
    assert!(
        err(&mut c, &["SETEX", "k", "-1", "v"]).contains("invalid expire time in 'setex' command")
    );
    assert_eq!(q::<String>(&mut c, &["PSETEX", "k", "100000", "v"]), "OK");
    assert!(q::<i64>(&mut c, &["PTTL", "k"]) > 99_000);
}

#[test]
fn counters_and_their_errors() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["INCR", "n"]), 1);
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "n", "41"]), 42);
    assert_eq!(q::<i64>(&mut c, &["DECR", "n"]), 41);
    assert_eq!(q::<i64>(&mut c, &["DECRBY", "n", "-9"]), 50);
    assert_eq!(q::<String>(&mut c, &["GET", "n"]), "50");
    q::<()>(&mut c, &["SET", "n", "10"]);
    assert_eq!(
        q::<i64>(&mut c, &["INCR", "n"]),
        11,
        "SET resets the counter"
    );
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "n", "0.5"]), "11.5");
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "n", "0.5"]), "12");
    assert_eq!(
        q::<i64>(&mut c, &["INCR", "n"]),
        13,
        "an integral float accepts INCR"
    );
    assert_eq!(q::<String>(&mut c, &["INCRBYFLOAT", "f", "-1.5e2"]), "-150");
    assert_eq!(q::<String>(&mut c, &["TYPE", "n"]), "string");

    q::<()>(&mut c, &["SET", "s", "abc"]);
    assert!(err(&mut c, &["INCR", "s"]).contains("value is not an integer or out of range"));
    assert!(err(&mut c, &["INCRBYFLOAT", "s", "1"]).contains("value is not a valid float"));
    assert!(err(&mut c, &["INCRBY", "n", "x"]).contains("value is not an integer or out of range"));
    q::<()>(&mut c, &["SET", "big", &i64::MAX.to_string()]);
    assert!(err(&mut c, &["INCR", "big"]).contains("increment or decrement would overflow"));
    assert!(
        err(&mut c, &["DECRBY", "n", &i64::MIN.to_string()]).contains("decrement would overflow")
    );
    assert!(err(&mut c, &["INCRBYFLOAT", "n", "inf"]).contains("NaN or Infinity"));
    q::<()>(&mut c, &["SET", "fl", "1e308"]);
    assert!(err(&mut c, &["INCRBYFLOAT", "fl", "1e308"]).contains("NaN or Infinity"));
    assert_eq!(
        q::<String>(&mut c, &["GET", "big"]),
        i64::MAX.to_string(),
        "a refused INCR changes nothing"
    );
}

#[test]
fn crdt_state_shows_a_keys_metadata() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "n", "10", "EX", "100"]);
    q::<()>(&mut c, &["INCRBY", "n", "5"]);
    let state: Vec<redis::Value> = q(&mut c, &["CRDT.STATE", "n"]);
    let text = format!("{state:?}");
    for needle in [
        "register_stamp",
        "register_value",
        "counts",
        "ops=1 int=5",
        "effective_expire_at_ms",
    ] {
        assert!(text.contains(needle), "{needle} missing: {text}");
    }
    assert_eq!(
        q::<Option<String>>(&mut c, &["CRDT.STATE", "missing"]),
        None
    );
    let log: Vec<redis::Value> = q(&mut c, &["CRDT.CONFLICTS"]);
    assert!(log.is_empty(), "a single node has no conflicts");
    assert!(err(&mut c, &["CRDT.CONFLICTS", "COUNT"]).contains("syntax error"));
}

#[test]
fn increments_from_many_connections_on_all_threads_add_up() {
    let s = Server::start(&["--server-threads", "2"]);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let client = s.client();
            std::thread::spawn(move || {
                let mut c = client.get_connection().unwrap();
                for _ in 0..500 {
                    let _: i64 = redis::cmd("INCR").arg("shared").query(&mut c).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(q::<i64>(&mut s.conn(), &["GET", "shared"]), 2000);
}

#[test]
fn expire_family_and_conditions() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "none", "10"]), 0);
    assert_eq!(q::<i64>(&mut c, &["TTL", "none"]), -2);
    q::<()>(&mut c, &["SET", "k", "v"]);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]), -1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "k"]), -1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100", "XX"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100", "NX"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "200", "NX"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "50", "GT"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "200", "GT"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "300", "LT"]), 0);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "k", "150000", "LT"]), 1);
    let pttl: i64 = q(&mut c, &["PTTL", "k"]);
    assert!((149_000..=150_000).contains(&pttl), "{pttl}");
    assert!(err(&mut c, &["EXPIRE", "k", "1", "NX", "XX"]).contains("not compatible"));
    assert!(err(&mut c, &["EXPIRE", "k", "1", "GT", "LT"]).contains("not compatible"));
    assert!(err(&mut c, &["EXPIRE", "k", "x"]).contains("not an integer"));
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "k"]), 1);
    assert_eq!(q::<i64>(&mut c, &["PERSIST", "k"]), 0);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]), -1);

    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        q::<i64>(&mut c, &["EXPIREAT", "k", &(now_s + 500).to_string()]),
        1
    );
    assert_eq!(q::<i64>(&mut c, &["EXPIRETIME", "k"]), (now_s + 500) as i64);
    assert_eq!(
        q::<i64>(&mut c, &["PEXPIRETIME", "k"]),
        ((now_s + 500) * 1000) as i64
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXPIREAT", "k", &(now_s - 10).to_string()]),
        1
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "k"]),
        0,
        "an expiry in the past deletes"
    );

    q::<()>(&mut c, &["SET", "g", "v"]);
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "EX", "100"]), "v");
    assert!(q::<i64>(&mut c, &["TTL", "g"]) > 90);
    assert_eq!(q::<String>(&mut c, &["GETEX", "g", "PERSIST"]), "v");
    assert_eq!(q::<i64>(&mut c, &["TTL", "g"]), -1);
    assert!(err(&mut c, &["GETEX", "g", "EX", "1", "PX", "1"]).contains("syntax error"));

    q::<()>(&mut c, &["INCRBY", "ctr", "5"]);
    q::<()>(&mut c, &["EXPIRE", "ctr", "100"]);
    q::<()>(&mut c, &["INCR", "ctr"]);
    assert!(q::<i64>(&mut c, &["TTL", "ctr"]) > 90, "INCR keeps the TTL");
}

#[test]
fn keys_expire_lazily_and_actively() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "lazy", "v", "PX", "50"]);
    q::<()>(&mut c, &["SET", "active", "v", "PX", "50"]);
    q::<()>(&mut c, &["SET", "stays", "v"]);
    q::<()>(&mut c, &["INCR", "ctr"]);
    q::<()>(&mut c, &["PEXPIRE", "ctr", "50"]);
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "lazy"]), None);
    assert_eq!(
        q::<i64>(&mut c, &["INCR", "ctr"]),
        1,
        "a write after expiry starts from nothing"
    );
    assert_eq!(q::<i64>(&mut c, &["TTL", "ctr"]), -1);
    // The active cycle runs every 100 ms and removes the untouched key.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while q::<i64>(&mut c, &["DBSIZE"]) != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "active expiry did not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let info: String = q(&mut c, &["INFO", "stats"]);
    assert!(info.contains("expired_keys:"), "{info}");
    assert!(!info.contains("expired_keys:0\r"), "{info}");
}

/// SETBIT, GETBIT, BITCOUNT, BITPOS and BITOP, on Redis's documented
/// examples; a bit write keeps the TTL; errors as Redis words them.
#[test]
fn bit_commands_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let set_bytes = |c: &mut redis::Connection, key: &str, bytes: &[u8]| {
        redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .query::<()>(c)
            .unwrap();
    };
    assert_eq!(q::<i64>(&mut c, &["SETBIT", "mykey", "7", "1"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SETBIT", "mykey", "7", "0"]), 1);
    assert_eq!(q::<i64>(&mut c, &["SETBIT", "mykey", "7", "1"]), 0);
    assert_eq!(q::<i64>(&mut c, &["GETBIT", "mykey", "0"]), 0);
    assert_eq!(q::<i64>(&mut c, &["GETBIT", "mykey", "7"]), 1);
    assert_eq!(q::<i64>(&mut c, &["GETBIT", "mykey", "100"]), 0);
    assert_eq!(q::<i64>(&mut c, &["SETBIT", "grown", "17", "1"]), 0);
    assert_eq!(q::<Vec<u8>>(&mut c, &["GET", "grown"]), vec![0, 0, 0x40]);

    assert_eq!(q::<String>(&mut c, &["SET", "mykey", "foobar"]), "OK");
    assert_eq!(q::<i64>(&mut c, &["BITCOUNT", "mykey"]), 26);
    assert_eq!(q::<i64>(&mut c, &["BITCOUNT", "mykey", "0", "0"]), 4);
    assert_eq!(q::<i64>(&mut c, &["BITCOUNT", "mykey", "1", "1"]), 6);
    assert_eq!(
        q::<i64>(&mut c, &["BITCOUNT", "mykey", "1", "1", "BYTE"]),
        6
    );
    assert_eq!(
        q::<i64>(&mut c, &["BITCOUNT", "mykey", "5", "30", "BIT"]),
        17
    );
    assert_eq!(q::<i64>(&mut c, &["BITCOUNT", "nokey"]), 0);
    assert!(err(&mut c, &["BITCOUNT", "mykey", "1"]).contains("syntax error"));

    set_bytes(&mut c, "mykey", &[0xff, 0xf0, 0x00]);
    assert_eq!(q::<i64>(&mut c, &["BITPOS", "mykey", "0"]), 12);
    set_bytes(&mut c, "mykey", &[0x00, 0xff, 0xf0]);
    assert_eq!(q::<i64>(&mut c, &["BITPOS", "mykey", "1", "0"]), 8);
    assert_eq!(q::<i64>(&mut c, &["BITPOS", "mykey", "1", "2"]), 16);
    assert_eq!(
        q::<i64>(&mut c, &["BITPOS", "mykey", "1", "2", "-1", "BYTE"]),
        16
    );
    assert_eq!(
        q::<i64>(&mut c, &["BITPOS", "mykey", "1", "7", "15", "BIT"]),
        8
    );
    set_bytes(&mut c, "mykey", &[0x00, 0x00, 0x00]);
    assert_eq!(q::<i64>(&mut c, &["BITPOS", "mykey", "1"]), -1);
    assert_eq!(
        q::<i64>(&mut c, &["BITPOS", "mykey", "1", "7", "-3", "BIT"]),
        -1
    );
    set_bytes(&mut c, "ones", &[0xff, 0xff]);
    assert_eq!(
        q::<i64>(&mut c, &["BITPOS", "ones", "0"]),
        16,
        "past the end"
    );
    assert_eq!(
        q::<i64>(&mut c, &["BITPOS", "ones", "0", "0", "-1"]),
        -1,
        "an end given"
    );
    assert_eq!(q::<i64>(&mut c, &["BITPOS", "nokey", "0"]), 0);
    assert_eq!(q::<i64>(&mut c, &["BITPOS", "nokey", "1"]), -1);
    assert!(err(&mut c, &["BITPOS", "mykey", "2"]).contains("The bit argument must be 1 or 0."));

    q::<()>(&mut c, &["SET", "key1", "foobar"]);
    q::<()>(&mut c, &["SET", "key2", "abcdef"]);
    assert_eq!(
        q::<i64>(&mut c, &["BITOP", "AND", "dest", "key1", "key2"]),
        6
    );
    assert_eq!(q::<String>(&mut c, &["GET", "dest"]), "`bc`ab");
    assert_eq!(
        q::<i64>(&mut c, &["BITOP", "OR", "dest", "key1", "key2"]),
        6
    );
    assert_eq!(q::<String>(&mut c, &["GET", "dest"]), "goofev");
    set_bytes(&mut c, "short", &[0x0f]);
    assert_eq!(
        q::<i64>(&mut c, &["BITOP", "XOR", "dest", "short", "ones"]),
        2
    );
    assert_eq!(q::<Vec<u8>>(&mut c, &["GET", "dest"]), vec![0xf0, 0xff]);
    assert_eq!(q::<i64>(&mut c, &["BITOP", "NOT", "dest", "short"]), 1);
    assert_eq!(q::<Vec<u8>>(&mut c, &["GET", "dest"]), vec![0xf0]);
    assert_eq!(
        q::<i64>(&mut c, &["BITOP", "OR", "dest", "nokey", "nokey2"]),
        0
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "dest"]),
        0,
        "an empty result deletes"
    );
    assert!(err(&mut c, &["BITOP", "NOT", "dest", "key1", "key2"])
        .contains("BITOP NOT must be called with a single source key."));
    assert!(err(&mut c, &["BITOP", "NAND", "dest", "key1"]).contains("syntax error"));

    assert!(err(&mut c, &["SETBIT", "k", "-1", "1"])
        .contains("bit offset is not an integer or out of range"));
    assert!(err(&mut c, &["SETBIT", "k", "4294967296", "1"])
        .contains("bit offset is not an integer or out of range"));
    assert!(
        err(&mut c, &["SETBIT", "k", "0", "2"]).contains("bit is not an integer or out of range")
    );
    assert!(
        err(&mut c, &["GETBIT", "k", "x"]).contains("bit offset is not an integer or out of range")
    );
    // A bit write keeps the TTL, as any string modification does.
    q::<()>(&mut c, &["SET", "ttl", "v", "EX", "100"]);
    q::<()>(&mut c, &["SETBIT", "ttl", "0", "1"]);
    assert!(q::<i64>(&mut c, &["TTL", "ttl"]) > 90);
    // Over a counter: the bits of its decimal text, and a SETBIT replaces it.
    q::<()>(&mut c, &["INCRBY", "n", "1"]);
    assert_eq!(q::<i64>(&mut c, &["BITCOUNT", "n"]), 3, "'1' is 0x31");
    q::<()>(&mut c, &["SETBIT", "n", "6", "1"]);
    assert_eq!(q::<String>(&mut c, &["GET", "n"]), "3");
    assert_eq!(q::<i64>(&mut c, &["INCR", "n"]), 4);
}

/// LCS on Redis's documented example: the string, LEN, IDX with
/// MINMATCHLEN and WITHMATCHLEN; errors as Redis words them.
#[test]
fn lcs_follows_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["MSET", "key1", "ohmytext", "key2", "mynewtext"]);
    assert_eq!(q::<String>(&mut c, &["LCS", "key1", "key2"]), "mytext");
    assert_eq!(q::<i64>(&mut c, &["LCS", "key1", "key2", "LEN"]), 6);
    type Range = (i64, i64);
    let idx: (String, Vec<(Range, Range)>, String, i64) =
        q(&mut c, &["LCS", "key1", "key2", "IDX"]);
    assert_eq!(
        idx,
        (
            "matches".to_string(),
            vec![((4, 7), (5, 8)), ((2, 3), (0, 1))],
            "len".to_string(),
            6
        )
    );
    let min: (String, Vec<(Range, Range, i64)>, String, i64) = q(
        &mut c,
        &[
            "LCS",
            "key1",
            "key2",
            "IDX",
            "MINMATCHLEN",
            "4",
            "WITHMATCHLEN",
        ],
    );
    assert_eq!(min.1, vec![((4, 7), (5, 8), 4)]);
    assert_eq!(q::<String>(&mut c, &["LCS", "key1", "nokey"]), "");
    assert!(err(&mut c, &["LCS", "key1", "key2", "LEN", "IDX"])
        .contains("If you want both the length and indexes, please just use IDX."));
    assert!(err(&mut c, &["LCS", "key1", "key2", "NOPE"]).contains("syntax error"));
    // Its table is bounded by proto-max-bulk-len, as in Redis.
    let small = Server::start(&["--proto-max-bulk-len", "1mb"]);
    let mut c = small.conn();
    let long = "x".repeat(1000);
    q::<()>(&mut c, &["MSET", "a", &long, "b", &long]);
    assert!(err(&mut c, &["LCS", "a", "b"]).contains("exceeds proto-max-bulk-len"));
}

/// BITFIELD and BITFIELD_RO on Redis's documented examples: GET, SET,
/// INCRBY, `#` offsets, OVERFLOW WRAP/SAT/FAIL; errors as Redis words them.
#[test]
fn bitfield_follows_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let bf = |c: &mut redis::Connection, args: &[&str]| -> Vec<Option<i64>> {
        q(c, &[&["BITFIELD"][..], args].concat())
    };
    assert_eq!(
        bf(
            &mut c,
            &["mykey", "INCRBY", "i5", "100", "1", "GET", "u4", "0"]
        ),
        vec![Some(1), Some(0)]
    );
    assert_eq!(
        bf(
            &mut c,
            &["mystring", "SET", "i8", "#0", "100", "SET", "i8", "#1", "200"]
        ),
        vec![Some(0), Some(0)]
    );
    assert_eq!(q::<Vec<u8>>(&mut c, &["GET", "mystring"]), vec![100, 0xc8]);
    assert_eq!(
        bf(&mut c, &["mystring", "GET", "u8", "#0", "GET", "i8", "#1"]),
        vec![Some(100), Some(-56)]
    );
    let sat = [
        "ov", "INCRBY", "u2", "100", "1", "OVERFLOW", "SAT", "INCRBY", "u2", "102", "1",
    ];
    assert_eq!(bf(&mut c, &sat), vec![Some(1), Some(1)]);
    assert_eq!(bf(&mut c, &sat), vec![Some(2), Some(2)]);
    assert_eq!(bf(&mut c, &sat), vec![Some(3), Some(3)]);
    assert_eq!(
        bf(&mut c, &sat),
        vec![Some(0), Some(3)],
        "wraps, then saturates"
    );
    assert_eq!(
        bf(
            &mut c,
            &["ov", "OVERFLOW", "FAIL", "INCRBY", "u2", "102", "1"]
        ),
        vec![None]
    );
    assert_eq!(bf(&mut c, &["nokey", "GET", "u8", "0"]), vec![Some(0)]);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "nokey"]),
        0,
        "reading creates nothing"
    );
    let ro: Vec<i64> = q(&mut c, &["BITFIELD_RO", "mystring", "GET", "u8", "0"]);
    assert_eq!(ro, vec![100]);
    assert!(
        err(&mut c, &["BITFIELD_RO", "mystring", "SET", "u8", "0", "1"])
            .contains("BITFIELD_RO only supports the GET subcommand")
    );
    assert!(err(&mut c, &["BITFIELD", "k", "GET", "u64", "0"]).contains("Invalid bitfield type"));
    assert!(
        err(&mut c, &["BITFIELD", "k", "GET", "u8", "-1"]).contains("bit offset is not an integer")
    );
    assert!(err(&mut c, &["BITFIELD", "k", "OVERFLOW", "NOPE"])
        .contains("Invalid OVERFLOW type specified"));
    assert!(err(&mut c, &["BITFIELD", "k", "SET", "u8", "0"]).contains("syntax error"));
    assert!(err(&mut c, &["BITFIELD", "k", "SET", "u8", "0", "x"]).contains("not an integer"));
}

/// Replies a differential run against redis-server 7.0.15 found to differ
/// (session 39): an option named twice is taken as Redis takes it (the last
/// value wins), and the error texts of float increments, BITPOS, BITFIELD_RO
/// and LCS are Redis's.
#[test]
fn repeated_options_and_error_texts_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(
        q::<String>(&mut c, &["SET", "k", "v", "EX", "10", "EX", "20"]),
        "OK"
    );
    let ttl: i64 = q(&mut c, &["TTL", "k"]);
    assert!((19..=20).contains(&ttl), "the last EX wins: {ttl}");
    assert_eq!(
        q::<String>(&mut c, &["SET", "k", "w", "KEEPTTL", "KEEPTTL"]),
        "OK"
    );
    assert!(q::<i64>(&mut c, &["TTL", "k"]) > 15);
    assert_eq!(
        q::<String>(&mut c, &["GETEX", "k", "PERSIST", "PERSIST"]),
        "w"
    );
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]), -1);
    assert_eq!(
        q::<String>(&mut c, &["GETEX", "k", "EX", "5", "EX", "50"]),
        "w"
    );
    assert!(q::<i64>(&mut c, &["TTL", "k"]) > 40);
    assert_eq!(
        q::<String>(&mut c, &["SET", "k", "v", "EX", "abc", "EX", "30"]),
        "OK",
        "only the last value is read"
    );
    assert!(q::<i64>(&mut c, &["TTL", "k"]) > 25);
    assert!(err(&mut c, &["SET", "k", "v", "EX", "10", "KEEPTTL"]).contains("syntax error"));
    assert!(err(&mut c, &["GETEX", "k", "EX", "10", "PERSIST"]).contains("syntax error"));

    q::<()>(&mut c, &["SET", "n", "1"]);
    for bad in ["inf", "-inf"] {
        let e = err(&mut c, &["INCRBYFLOAT", "n", bad]);
        assert!(e.contains("increment would produce NaN or Infinity"), "{e}");
    }
    q::<()>(&mut c, &["SET", "infinite", "inf"]);
    let e = err(&mut c, &["INCRBYFLOAT", "infinite", "1"]);
    assert!(e.contains("increment would produce NaN or Infinity"), "{e}");
    assert!(err(&mut c, &["INCRBYFLOAT", "n", "x"]).contains("value is not a valid float"));
    assert_eq!(q::<String>(&mut c, &["GET", "n"]), "1");
    q::<i64>(&mut c, &["HSET", "h", "a", "1"]);
    let e = err(&mut c, &["HINCRBYFLOAT", "h", "a", "inf"]);
    assert!(e.contains("value is NaN or Infinity"), "{e}");
    assert!(err(&mut c, &["HINCRBYFLOAT", "h", "a", "x"]).contains("value is not a valid float"));

    q::<()>(&mut c, &["SET", "s", "ab"]);
    let e = err(&mut c, &["BITPOS", "s", "x"]);
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    assert!(err(&mut c, &["BITPOS", "s", "2"]).contains("The bit argument must be 1 or 0."));
    assert!(err(&mut c, &["BITFIELD_RO", "s", "foo"]).contains("syntax error"));
    assert_eq!(
        q::<Vec<i64>>(
            &mut c,
            &["BITFIELD_RO", "s", "OVERFLOW", "SAT", "GET", "u8", "0"]
        ),
        [97]
    );
    assert!(err(&mut c, &["BITFIELD", "s", "SET", "i8", "-129"]).contains("syntax error"));
    let e = err(&mut c, &["BITFIELD_RO", "s", "SET", "u8", "0", "x"]);
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    let e = err(
        &mut c,
        &["BITFIELD_RO", "s", "SET", "u8", "0", "1", "GET", "u99", "0"],
    );
    assert!(e.contains("Invalid bitfield type"), "{e}");
    let e = err(&mut c, &["BITFIELD_RO", "s", "SET", "u8", "0", "1"]);
    assert!(
        e.contains("BITFIELD_RO only supports the GET subcommand"),
        "{e}"
    );
    let e = err(&mut c, &["LCS", "s", "h"]);
    assert!(
        e.contains("The specified keys must contain string values"),
        "{e}"
    );
    let e = err(&mut c, &["LCS", "h", "s"]);
    assert!(
        e.contains("The specified keys must contain string values"),
        "{e}"
    );
}
