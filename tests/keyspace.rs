//! Keyspace commands, databases and transactions through the `redis` crate.

mod common;

use std::collections::BTreeSet;

use common::{err, q, Server};

#[test]
fn del_exists_type_keys_and_dbsize() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(
        &mut c,
        &["MSET", "user:1", "a", "user:2", "b", "other", "c"],
    );
    q::<()>(&mut c, &["INCR", "count"]);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "user:1", "user:1", "nope"]), 2);
    assert_eq!(q::<i64>(&mut c, &["TOUCH", "user:1", "nope"]), 1);
    assert_eq!(q::<String>(&mut c, &["TYPE", "user:1"]), "string");
    assert_eq!(q::<String>(&mut c, &["TYPE", "nope"]), "none");
    let mut keys: Vec<String> = q(&mut c, &["KEYS", "user:*"]);
    keys.sort();
    assert_eq!(keys, vec!["user:1", "user:2"]);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 4);
    assert_eq!(q::<i64>(&mut c, &["DEL", "user:1", "user:2", "nope"]), 2);
    assert_eq!(q::<i64>(&mut c, &["UNLINK", "count"]), 1);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 1);
    assert_eq!(
        q::<Option<String>>(&mut c, &["RANDOMKEY"]),
        Some("other".into())
    );
    q::<()>(&mut c, &["DEL", "other"]);
    assert_eq!(q::<Option<String>>(&mut c, &["RANDOMKEY"]), None);
}

#[test]
fn scan_visits_every_key_once_when_nothing_changes() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
    }
    pipe.cmd("SET").arg("other").arg(1).ignore();
    pipe.query::<()>(&mut c).unwrap();

    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let (next, batch): (String, Vec<String>) =
            q(&mut c, &["SCAN", &cursor, "MATCH", "key:*", "COUNT", "37"]);
        for k in batch {
            assert!(seen.insert(k), "a key was returned twice");
        }
        calls += 1;
        if next == "0" {
            break;
        }
        cursor = next;
        assert!(calls < 10_000);
    }
    assert_eq!(seen.len(), 1000);
    let (_, typed): (String, Vec<String>) =
        q(&mut c, &["SCAN", "0", "TYPE", "hash", "COUNT", "5000"]);
    assert!(typed.is_empty());
    assert!(err(&mut c, &["SCAN", "x"]).contains("invalid cursor"));
    assert!(err(&mut c, &["SCAN", "0", "COUNT", "0"]).contains("syntax error"));
}

/// Redis's SCAN guarantee: a key present from the scan's start to its end
/// is returned. Deleting most keys makes a shard's map move its entries to
/// the front (a compaction), under a cursor that points into it.
#[test]
fn scan_returns_every_key_that_lives_throughout_across_mass_deletes() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    const N: usize = 64_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(4000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET").arg(format!("key:{i}")).arg(1).ignore();
        }
        pipe.query::<()>(&mut c).unwrap();
    }
    let mut seen = BTreeSet::new();
    let (mut cursor, first): (String, Vec<String>) = q(&mut c, &["SCAN", "0", "COUNT", "500"]);
    seen.extend(first);
    // Nine keys in ten go: every shard's map compacts.
    for chunk in (0..N)
        .filter(|i| i % 10 != 0)
        .collect::<Vec<_>>()
        .chunks(4000)
    {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("DEL").arg(format!("key:{i}")).ignore();
        }
        pipe.query::<()>(&mut c).unwrap();
    }
    let mut calls = 0;
    while cursor != "0" {
        let (next, batch): (String, Vec<String>) = q(&mut c, &["SCAN", &cursor, "COUNT", "500"]);
        seen.extend(batch);
        cursor = next;
        calls += 1;
        assert!(calls < 10_000);
    }
    let missed: Vec<usize> = (0..N)
        .filter(|i| i % 10 == 0 && !seen.contains(&format!("key:{i}")))
        .collect();
    assert!(
        missed.is_empty(),
        "{} kept keys never returned: {:?}",
        missed.len(),
        &missed[..missed.len().min(10)]
    );
}

#[test]
fn rename_copy_select_swapdb_and_flush() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "a", "1", "EX", "1000"]);
    assert_eq!(q::<String>(&mut c, &["RENAME", "a", "b"]), "OK");
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "a"]), None);
    assert_eq!(q::<String>(&mut c, &["GET", "b"]), "1");
    assert!(
        q::<i64>(&mut c, &["TTL", "b"]) > 900,
        "RENAME keeps the TTL"
    );
    assert!(err(&mut c, &["RENAME", "nope", "x"]).contains("no such key"));
    q::<()>(&mut c, &["SET", "c", "3"]);
    assert_eq!(q::<i64>(&mut c, &["RENAMENX", "b", "c"]), 0);
    assert_eq!(q::<i64>(&mut c, &["RENAMENX", "b", "d"]), 1);

    assert_eq!(q::<i64>(&mut c, &["COPY", "d", "c"]), 0);
    assert_eq!(q::<i64>(&mut c, &["COPY", "d", "c", "REPLACE"]), 1);
    assert_eq!(q::<String>(&mut c, &["GET", "c"]), "1");
    assert_eq!(q::<i64>(&mut c, &["COPY", "d", "d", "DB", "3"]), 1);
    assert!(err(&mut c, &["COPY", "d", "d"]).contains("same"));
    assert!(err(&mut c, &["COPY", "d", "e", "DB", "99"]).contains("out of range"));

    assert_eq!(q::<String>(&mut c, &["SELECT", "3"]), "OK");
    assert_eq!(q::<String>(&mut c, &["GET", "d"]), "1");
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 1);
    assert!(err(&mut c, &["SELECT", "16"]).contains("DB index is out of range"));
    assert_eq!(q::<String>(&mut c, &["SWAPDB", "0", "3"]), "OK");
    assert_eq!(
        q::<i64>(&mut c, &["DBSIZE"]),
        2,
        "db 3 now holds what db 0 held"
    );
    assert_eq!(q::<String>(&mut c, &["FLUSHDB"]), "OK");
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
    q::<()>(&mut c, &["SELECT", "0"]);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 1);
    q::<()>(&mut c, &["SET", "after", "x"]);
    assert_eq!(q::<String>(&mut c, &["FLUSHALL", "SYNC"]), "OK");
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
    q::<()>(&mut c, &["SET", "after", "y"]);
    assert_eq!(
        q::<String>(&mut c, &["GET", "after"]),
        "y",
        "writes after a flush stay"
    );
    assert!(err(&mut c, &["FLUSHALL", "BOGUS"]).contains("syntax error"));
}

#[test]
fn multi_exec_is_atomic_and_reports_per_command_errors() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let (a, b): (i64, String) = redis::pipe()
        .atomic()
        .cmd("INCRBY")
        .arg("n")
        .arg(5)
        .cmd("SET")
        .arg("k")
        .arg("v")
        .ignore()
        .cmd("GET")
        .arg("k")
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b.as_str()), (5, "v"));

    // A runtime error inside EXEC does not stop the others.
    q::<()>(&mut c, &["SET", "s", "text"]);
    let mut raw = s.raw();
    raw.roundtrip(
        b"MULTI\r\nINCR s\r\nINCR n\r\n",
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n",
    );
    raw.roundtrip(
        b"EXEC\r\n",
        b"*2\r\n-ERR value is not an integer or out of range\r\n:6\r\n",
    );

    // A refused command while queuing aborts the whole transaction.
    q::<()>(&mut c, &["MULTI"]);
    assert!(err(&mut c, &["NOSUCHCMD"]).contains("unknown command"));
    q::<String>(&mut c, &["INCR", "n"]);
    assert!(err(&mut c, &["EXEC"]).contains("Transaction discarded because of previous errors"));
    assert_eq!(q::<i64>(&mut c, &["GET", "n"]), 6);

    assert!(err(&mut c, &["EXEC"]).contains("EXEC without MULTI"));
    assert!(err(&mut c, &["DISCARD"]).contains("DISCARD without MULTI"));
    q::<()>(&mut c, &["MULTI"]);
    assert!(err(&mut c, &["MULTI"]).contains("can not be nested"));
    assert!(err(&mut c, &["WATCH", "x"]).contains("WATCH inside MULTI"));
    q::<String>(&mut c, &["INCR", "n"]);
    assert_eq!(q::<String>(&mut c, &["DISCARD"]), "OK");
    assert_eq!(q::<i64>(&mut c, &["GET", "n"]), 6);
    // EXEC of the wrong arity discards the transaction, as Redis.
    q::<()>(&mut c, &["MULTI"]);
    q::<String>(&mut c, &["INCR", "n"]);
    let e = err(&mut c, &["EXEC", "x"]);
    assert!(
        e.contains(
            "Transaction discarded because of: wrong number of arguments for 'exec' command"
        ),
        "{e}"
    );
    assert!(err(&mut c, &["DISCARD"]).contains("DISCARD without MULTI"));
    assert_eq!(q::<i64>(&mut c, &["GET", "n"]), 6);
}

#[test]
fn watch_aborts_exec_when_another_client_writes() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut other = s.conn();
    q::<()>(&mut c, &["SET", "w", "1"]);
    q::<()>(&mut c, &["WATCH", "w"]);
    q::<()>(&mut other, &["INCR", "w"]);
    q::<()>(&mut c, &["MULTI"]);
    q::<String>(&mut c, &["SET", "w", "from-tx"]);
    let aborted: redis::Value = q(&mut c, &["EXEC"]);
    assert_eq!(aborted, redis::Value::Nil);
    assert_eq!(q::<String>(&mut c, &["GET", "w"]), "2");

    // Unmodified: EXEC runs. A watched key that did not exist may be created.
    q::<()>(&mut c, &["WATCH", "w", "absent"]);
    q::<()>(&mut c, &["MULTI"]);
    q::<String>(&mut c, &["SET", "w", "from-tx"]);
    let ran: Vec<String> = q(&mut c, &["EXEC"]);
    assert_eq!(ran, vec!["OK"]);
    q::<()>(&mut c, &["WATCH", "w"]);
    q::<()>(&mut c, &["UNWATCH"]);
    q::<()>(&mut other, &["SET", "w", "x"]);
    q::<()>(&mut c, &["MULTI"]);
    q::<String>(&mut c, &["GET", "w"]);
    let ran: Vec<String> = q(&mut c, &["EXEC"]);
    assert_eq!(ran, vec!["x"]);
}

#[test]
fn pipelines_of_thousands_answer_in_order() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut pipe = redis::pipe();
    for i in 0..5000 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
        pipe.cmd("INCR").arg("seq");
    }
    let seq: Vec<i64> = pipe.query(&mut c).unwrap();
    assert_eq!(seq, (1..=5000).collect::<Vec<_>>());
    let mut pipe = redis::pipe();
    for i in 0..5000 {
        pipe.cmd("GET").arg(format!("p{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut c).unwrap();
    assert_eq!(values, (0..5000).collect::<Vec<_>>());
}

/// INFO and CONFIG RESETSTAT read and reset counters kept under the shard
/// locks. Queued behind a write, they used to take the lock of a shard EXEC
/// already held: the client hung, and the shard with it.
#[test]
fn info_and_config_resetstat_inside_exec_answer() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["MULTI"]);
    q::<String>(&mut c, &["SET", "k", "v"]);
    q::<String>(&mut c, &["GET", "k"]);
    q::<String>(&mut c, &["INFO", "keyspace", "stats"]);
    q::<String>(&mut c, &["CONFIG", "RESETSTAT"]);
    q::<String>(&mut c, &["INFO", "stats"]);
    let replies: Vec<redis::Value> = q(&mut c, &["EXEC"]);
    assert_eq!(replies.len(), 5);
    let text = format!("{replies:?}");
    assert!(text.contains("db0:keys=1"), "{text}");
    assert!(text.contains("keyspace_hits:1"), "before RESETSTAT: {text}");
    assert!(text.contains("keyspace_hits:0"), "after RESETSTAT: {text}");
    // The shard is free again for everyone.
    let mut other = s.conn();
    assert_eq!(q::<String>(&mut other, &["GET", "k"]), "v");
}

/// MOVE and OBJECT, as Redis replies, with Chorus's own encodings.
#[test]
fn move_and_object_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "v", "EX", "100"]);
    assert_eq!(q::<i64>(&mut c, &["MOVE", "k", "3"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "k"]), 0);
    assert_eq!(q::<i64>(&mut c, &["MOVE", "k", "3"]), 0, "gone here");
    q::<()>(&mut c, &["SELECT", "3"]);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "v");
    assert!(
        q::<i64>(&mut c, &["TTL", "k"]) > 90,
        "the TTL moves with it"
    );
    q::<()>(&mut c, &["SELECT", "0"]);
    q::<()>(&mut c, &["SET", "k", "here"]);
    assert_eq!(q::<i64>(&mut c, &["MOVE", "k", "3"]), 0, "taken there");
    assert_eq!(q::<String>(&mut c, &["GET", "k"]), "here");
    assert!(
        err(&mut c, &["MOVE", "k", "0"]).contains("source and destination objects are the same")
    );
    assert!(err(&mut c, &["MOVE", "k", "99"]).contains("DB index is out of range"));

    q::<()>(&mut c, &["INCRBY", "n", "5"]);
    assert_eq!(
        q::<String>(&mut c, &["OBJECT", "ENCODING", "k"]),
        "register"
    );
    assert_eq!(q::<String>(&mut c, &["OBJECT", "ENCODING", "n"]), "counter");
    assert_eq!(
        q::<Option<String>>(&mut c, &["OBJECT", "ENCODING", "nokey"]),
        None
    );
    assert_eq!(q::<i64>(&mut c, &["OBJECT", "REFCOUNT", "k"]), 1);
    assert!(err(&mut c, &["OBJECT", "FREQ", "k"]).contains("LFU maxmemory policy is not selected"));
    assert!(err(&mut c, &["OBJECT", "IDLETIME", "k"]).contains("not tracked"));
    assert!(err(&mut c, &["OBJECT", "NOPE", "k"])
        .contains("unknown subcommand 'NOPE'. Try OBJECT HELP."));
    let help: Vec<String> = q(&mut c, &["OBJECT", "HELP"]);
    assert!(help[0].starts_with("OBJECT <subcommand>") && help.len() > 5);
}

/// MEMORY USAGE estimates what a key holds: more for a longer value, a
/// long name, a TTL or counter metadata; nil for a missing key.
#[test]
fn memory_usage_grows_with_what_a_key_holds() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let usage =
        |c: &mut redis::Connection, key: &str| q::<Option<i64>>(c, &["MEMORY", "USAGE", key]);
    q::<()>(&mut c, &["SET", "small", "12345"]);
    q::<()>(&mut c, &["SET", "big", &"x".repeat(105)]);
    let small = usage(&mut c, "small").unwrap();
    assert!(small > 5 && small < 200, "{small}");
    assert_eq!(usage(&mut c, "big").unwrap(), small + 100);
    let long_name = "n".repeat(40);
    q::<()>(&mut c, &["SET", &long_name, "12345"]);
    assert_eq!(usage(&mut c, &long_name).unwrap(), small + 40);
    q::<()>(&mut c, &["SET", "ttl", "12345", "EX", "100"]);
    assert!(usage(&mut c, "ttl").unwrap() > small);
    q::<()>(&mut c, &["INCRBY", "n", "12345"]);
    assert!(usage(&mut c, "n").unwrap() > small, "counter metadata");
    assert_eq!(usage(&mut c, "missing"), None);
    assert_eq!(
        q::<Option<i64>>(&mut c, &["MEMORY", "USAGE", "small", "SAMPLES", "0"]),
        Some(small)
    );
    assert!(err(&mut c, &["MEMORY", "DOCTOR"])
        .contains("unknown subcommand 'DOCTOR'. Try MEMORY HELP."));
    let help: Vec<String> = q(&mut c, &["MEMORY", "HELP"]);
    assert!(help[0].starts_with("MEMORY <subcommand>"));
}

/// DUMP and RESTORE in Chorus's own payload: a round trip, TTLs relative
/// and absolute, REPLACE and BUSYKEY, and a damaged or foreign payload
/// refused with Redis's words.
#[test]
fn dump_and_restore_round_trip_in_chorus_format() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "hello"]);
    let payload: Vec<u8> = q(&mut c, &["DUMP", "k"]);
    assert_eq!(q::<Option<Vec<u8>>>(&mut c, &["DUMP", "nokey"]), None);
    let restore =
        |c: &mut redis::Connection, key: &str, ttl: &str, payload: &[u8], extra: &[&str]| {
            redis::cmd("RESTORE")
                .arg(key)
                .arg(ttl)
                .arg(payload)
                .arg(extra)
                .query::<String>(c)
        };
    assert_eq!(restore(&mut c, "copy", "0", &payload, &[]).unwrap(), "OK");
    assert_eq!(q::<String>(&mut c, &["GET", "copy"]), "hello");
    assert_eq!(q::<i64>(&mut c, &["TTL", "copy"]), -1);
    let busy = restore(&mut c, "copy", "0", &payload, &[]).unwrap_err();
    assert!(busy.to_string().contains("BUSYKEY"), "{busy}");
    assert_eq!(
        restore(&mut c, "copy", "5000", &payload, &["REPLACE"]).unwrap(),
        "OK"
    );
    let ttl = q::<i64>(&mut c, &["PTTL", "copy"]);
    assert!(ttl > 4000 && ttl <= 5000, "{ttl}");
    let at = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000)
        .to_string();
    assert_eq!(
        restore(&mut c, "abs", &at, &payload, &["ABSTTL", "IDLETIME", "10"]).unwrap(),
        "OK"
    );
    assert!(q::<i64>(&mut c, &["TTL", "abs"]) > 50);
    assert_eq!(
        restore(&mut c, "gone", "1", &payload, &["ABSTTL"]).unwrap(),
        "OK"
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "gone"]),
        0,
        "already expired: nothing made"
    );
    // Damaged, foreign (a Redis payload) or bad options.
    let mut damaged = payload.clone();
    damaged[5] ^= 1;
    let redis_payload = b"\x00\x05hello\x0a\x00\x81\x9e\x1d\x90\x8b\x11\x2d\x0c";
    for bad in [&damaged[..], &redis_payload[..], b""] {
        let e = restore(&mut c, "x", "0", bad, &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("DUMP payload version or checksum are wrong"),
            "{e}"
        );
    }
    for (opts, why) in [
        (&["IDLETIME", "-1"][..], "Invalid IDLETIME value"),
        (&["FREQ", "256"], "Invalid FREQ value"),
        (&["FREQ", "1", "IDLETIME", "1"], "syntax error"),
    ] {
        let e = restore(&mut c, "x", "0", &payload, opts).unwrap_err();
        assert!(e.to_string().contains(why), "{opts:?}: {e}");
    }
    let e = restore(&mut c, "x", "-5", &payload, &[]).unwrap_err();
    assert!(
        e.to_string().contains("Invalid TTL value, must be >= 0"),
        "{e}"
    );
}

/// Database arguments answer Redis's texts (a differential run found
/// SWAPDB naming the first index for a bad second one, and COPY's DB past
/// 32 bits answering "DB index is out of range").
#[test]
fn database_arguments_answer_redis_texts() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "v"]);
    assert!(err(&mut c, &["SWAPDB", "x", "0"]).contains("invalid first DB index"));
    assert!(err(&mut c, &["SWAPDB", "0", "x"]).contains("invalid second DB index"));
    assert!(err(&mut c, &["SWAPDB", "0", "99"]).contains("DB index is out of range"));
    assert!(
        err(&mut c, &["SWAPDB", "99", "x"]).contains("invalid second DB index"),
        "both are read before either is checked"
    );
    let e = err(&mut c, &["COPY", "k", "t", "DB", "9999999999"]);
    assert!(
        e.contains("value is out of range, value must between -2147483648 and 2147483647"),
        "{e}"
    );
    assert!(err(&mut c, &["COPY", "k", "t", "DB", "99"]).contains("DB index is out of range"));
    for args in [&["SELECT", "9999999999"][..], &["MOVE", "k", "9999999999"]] {
        let e = err(&mut c, args);
        assert!(
            e.contains("value must between -2147483648 and 2147483647"),
            "{args:?}: {e}"
        );
    }
    assert!(err(&mut c, &["SELECT", "99"]).contains("DB index is out of range"));
}

/// A watched key absent at WATCH and at EXEC, but written and deleted in
/// between, fails the transaction, as in Redis (a differential run found
/// EXEC running: the key's state was compared, and absent equals absent).
/// So do its expiry, a flush of its database, and the watcher's own write.
#[test]
fn a_watched_key_written_and_deleted_fails_the_transaction() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut other = s.conn();
    let exec = |c: &mut redis::Connection| -> Option<Vec<String>> {
        q::<()>(c, &["MULTI"]);
        q::<()>(c, &["PING"]);
        q(c, &["EXEC"])
    };
    let changes: &[&[&[&str]]] = &[
        &[&["SET", "nk", "1"], &["DEL", "nk"]],
        &[&["LPUSH", "nk", "a"], &["LPOP", "nk"]],
        &[&["HSET", "nk", "f", "v"], &["HDEL", "nk", "f"]],
        &[&["INCR", "nk"], &["DEL", "nk"]],
        &[&["SET", "nk", "1"], &["FLUSHDB"]],
    ];
    for change in changes {
        q::<()>(&mut c, &["WATCH", "nk"]);
        for cmd in *change {
            q::<redis::Value>(&mut other, cmd);
        }
        assert_eq!(exec(&mut c), None, "{change:?}");
    }
    // The watcher's own write and delete.
    q::<()>(&mut c, &["WATCH", "nk"]);
    q::<()>(&mut c, &["SET", "nk", "1"]);
    q::<()>(&mut c, &["DEL", "nk"]);
    assert_eq!(exec(&mut c), None);
    // An expiry between WATCH and EXEC.
    q::<()>(&mut c, &["WATCH", "nk"]);
    q::<()>(&mut other, &["SET", "nk", "1", "PX", "30"]);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(exec(&mut c), None);
    // Untouched, or touched in another database: EXEC runs.
    q::<()>(&mut c, &["WATCH", "nk"]);
    q::<()>(&mut other, &["SELECT", "1"]);
    q::<()>(&mut other, &["SET", "nk", "1"]);
    q::<()>(&mut other, &["DEL", "nk"]);
    assert_eq!(exec(&mut c), Some(vec!["PONG".to_string()]));
    assert_eq!(
        exec(&mut c),
        Some(vec!["PONG".to_string()]),
        "EXEC unwatches"
    );
}
