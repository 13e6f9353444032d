//! Keyspace notifications (`notify-keyspace-events`) on one node, through
//! the `redis` crate. A peer's writes: tests/replication.rs.

mod common;

use std::time::Duration;

use common::{q, Server};

/// A connection for listening (its `PubSub` unsubscribes when dropped, so
/// each test keeps one for its length).
fn listener(s: &Server) -> redis::Connection {
    let con = s.client().get_connection().unwrap();
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    con
}

/// The next `n` notifications as (channel, message).
fn next(ps: &mut redis::PubSub, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|_| {
            let m = ps.get_message().unwrap();
            (m.get_channel_name().to_string(), m.get_payload().unwrap())
        })
        .collect()
}

fn nothing_more(ps: &mut redis::PubSub) {
    ps.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let extra = ps.get_message();
    assert!(
        extra.is_err(),
        "unexpected {:?}",
        extra.map(|m| m.get_channel_name().to_string())
    );
    ps.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
}

fn pair(channel: &str, message: &str) -> (String, String) {
    (channel.to_string(), message.to_string())
}

#[test]
fn a_write_is_told_on_its_keyspace_and_keyevent_channels() {
    let s = Server::start(&["--notify-keyspace-events", "KEA"]);
    let mut con = listener(&s);
    let mut sub = con.as_pubsub();
    sub.psubscribe("__key*__:*").unwrap();
    let mut c = s.conn();
    assert_eq!(
        q::<Vec<String>>(&mut c, &["CONFIG", "GET", "notify-keyspace-events"]),
        vec!["notify-keyspace-events", "AKE"]
    );
    q::<()>(&mut c, &["SET", "k", "v"]);
    assert_eq!(
        next(&mut sub, 2),
        vec![
            pair("__keyspace@0__:k", "set"),
            pair("__keyevent@0__:set", "k")
        ]
    );
    // A command that changes nothing tells no one.
    let _: bool = q(&mut c, &["SETNX", "k", "other"]);
    let _: i64 = q(&mut c, &["HDEL", "missing", "f"]);
    nothing_more(&mut sub);
    q::<i64>(&mut c, &["INCRBY", "n", "2"]);
    assert_eq!(next(&mut sub, 1), vec![pair("__keyspace@0__:n", "incrby")]);
    next(&mut sub, 1);
    q::<()>(&mut c, &["RENAME", "k", "k2"]);
    assert_eq!(
        next(&mut sub, 4),
        vec![
            pair("__keyspace@0__:k", "rename_from"),
            pair("__keyevent@0__:rename_from", "k"),
            pair("__keyspace@0__:k2", "rename_to"),
            pair("__keyevent@0__:rename_to", "k2"),
        ]
    );
    // A command that empties a collection deletes its key too.
    q::<i64>(&mut c, &["HSET", "h", "f", "1"]);
    next(&mut sub, 2);
    q::<i64>(&mut c, &["HDEL", "h", "f"]);
    assert_eq!(
        next(&mut sub, 4),
        vec![
            pair("__keyspace@0__:h", "hdel"),
            pair("__keyevent@0__:hdel", "h"),
            pair("__keyspace@0__:h", "del"),
            pair("__keyevent@0__:del", "h"),
        ]
    );
    // In another database, named in the channel.
    q::<()>(&mut c, &["SELECT", "3"]);
    q::<i64>(&mut c, &["SADD", "s", "m"]);
    assert_eq!(
        next(&mut sub, 2),
        vec![
            pair("__keyspace@3__:s", "sadd"),
            pair("__keyevent@3__:sadd", "s")
        ]
    );
}

#[test]
fn classes_choose_what_is_told_and_config_set_applies_at_once() {
    let s = Server::start(&[]);
    let mut con = listener(&s);
    let mut sub = con.as_pubsub();
    sub.psubscribe("__key*__:*").unwrap();
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "quiet", "1"]);
    nothing_more(&mut sub);
    // Expired events and new keys only, as key events.
    q::<()>(&mut c, &["CONFIG", "SET", "notify-keyspace-events", "Exn"]);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["CONFIG", "GET", "notify-keyspace-events"]),
        vec!["notify-keyspace-events", "xnE"]
    );
    q::<()>(&mut c, &["SET", "short", "1", "PX", "50"]);
    assert_eq!(next(&mut sub, 1), vec![pair("__keyevent@0__:new", "short")]);
    // Active expiry finds it without a read.
    assert_eq!(
        next(&mut sub, 1),
        vec![pair("__keyevent@0__:expired", "short")]
    );
    q::<()>(&mut c, &["SET", "quiet", "2"]);
    nothing_more(&mut sub);
    let err = common::err(&mut c, &["CONFIG", "SET", "notify-keyspace-events", "KQ"]);
    assert!(err.contains("notify-keyspace-events"), "{err}");
}

#[test]
fn an_eviction_is_told_as_evicted() {
    let s = Server::start(&[
        "--notify-keyspace-events",
        "Ee",
        "--maxmemory",
        "4mb",
        "--maxmemory-policy",
        "allkeys-random",
    ]);
    let mut con = listener(&s);
    let mut sub = con.as_pubsub();
    sub.psubscribe("__key*__:*").unwrap();
    let mut c = s.conn();
    let value = "x".repeat(1024);
    let mut pipe = redis::pipe();
    for i in 0..20_000 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(&value).ignore();
    }
    pipe.query::<()>(&mut c).unwrap();
    let (channel, _) = next(&mut sub, 1).remove(0);
    assert_eq!(channel, "__keyevent@0__:evicted");
}

#[test]
fn writes_that_change_nothing_or_delete_say_what_redis_says() {
    let s = Server::start(&["--notify-keyspace-events", "KEA"]);
    let mut con = listener(&s);
    let mut sub = con.as_pubsub();
    sub.psubscribe("__keyevent@0__:*").unwrap();
    let mut c = s.conn();
    q::<i64>(&mut c, &["ZADD", "z", "1", "m"]);
    assert_eq!(next(&mut sub, 1), vec![pair("__keyevent@0__:zadd", "z")]);
    // ZADD NX of a member there, GETEX PERSIST of a key without a TTL: no
    // change.
    q::<i64>(&mut c, &["ZADD", "z", "NX", "5", "m"]);
    q::<()>(&mut c, &["SET", "k", "v"]);
    next(&mut sub, 1);
    let _: String = q(&mut c, &["GETEX", "k", "PERSIST"]);
    nothing_more(&mut sub);
    let _: String = q(&mut c, &["ZINCRBY", "z", "1", "m"]);
    assert_eq!(next(&mut sub, 1), vec![pair("__keyevent@0__:zincr", "z")]);
    // An EXPIRE in the past deletes: `del`, not `expire`.
    q::<i64>(&mut c, &["EXPIRE", "k", "-1"]);
    assert_eq!(next(&mut sub, 1), vec![pair("__keyevent@0__:del", "k")]);
    // A store of an empty result deletes its destination: `del` alone.
    q::<i64>(&mut c, &["SADD", "dest", "x"]);
    next(&mut sub, 1);
    q::<i64>(&mut c, &["SINTERSTORE", "dest", "nothing", "dest"]);
    assert_eq!(next(&mut sub, 1), vec![pair("__keyevent@0__:del", "dest")]);
    // A delete of nothing is no change.
    q::<i64>(&mut c, &["DEL", "never-was"]);
    nothing_more(&mut sub);
}

/// #15: list commands tell Redis's events: the push and pop names, LMOVE's
/// push on the destination before the pop on the source, `del` after the
/// command that empties a list, `sortstore`.
#[test]
fn list_commands_tell_redis_events() {
    let s = Server::start(&["--notify-keyspace-events", "Kl$g"]);
    let mut con = listener(&s);
    let mut sub = con.as_pubsub();
    sub.psubscribe("__keyspace@0__:*").unwrap();
    let mut c = s.conn();
    let ks = |key: &str, event: &str| pair(&format!("__keyspace@0__:{key}"), event);
    q::<i64>(&mut c, &["RPUSH", "l", "a", "b", "c"]);
    q::<i64>(&mut c, &["LPUSHX", "l", "z"]);
    q::<i64>(&mut c, &["LINSERT", "l", "BEFORE", "b", "x"]);
    q::<()>(&mut c, &["LSET", "l", "0", "y"]);
    q::<i64>(&mut c, &["LREM", "l", "0", "x"]);
    q::<()>(&mut c, &["LTRIM", "l", "0", "2"]);
    assert_eq!(
        next(&mut sub, 6),
        vec![
            ks("l", "rpush"),
            ks("l", "lpush"),
            ks("l", "linsert"),
            ks("l", "lset"),
            ks("l", "lrem"),
            ks("l", "ltrim"),
        ]
    );
    // l is [y, a, b]: LMOVE tells the push on the destination first.
    q::<String>(&mut c, &["LMOVE", "l", "m", "RIGHT", "LEFT"]);
    assert_eq!(next(&mut sub, 2), vec![ks("m", "lpush"), ks("l", "rpop")]);
    q::<Vec<String>>(&mut c, &["LPOP", "l", "5"]);
    assert_eq!(next(&mut sub, 2), vec![ks("l", "lpop"), ks("l", "del")]);
    q::<Vec<String>>(&mut c, &["BRPOP", "m", "1"]);
    assert_eq!(next(&mut sub, 2), vec![ks("m", "rpop"), ks("m", "del")]);
    q::<i64>(&mut c, &["RPUSH", "m", "1", "2"]);
    q::<redis::Value>(&mut c, &["LMPOP", "1", "m", "RIGHT"]);
    q::<redis::Value>(&mut c, &["BLMPOP", "1", "1", "m", "LEFT"]);
    assert_eq!(
        next(&mut sub, 4),
        vec![
            ks("m", "rpush"),
            ks("m", "rpop"),
            ks("m", "lpop"),
            ks("m", "del")
        ]
    );
    // Nothing to pop, nothing told.
    let _: Option<String> = q(&mut c, &["RPOPLPUSH", "l", "m"]);
    let _: i64 = q(&mut c, &["LPUSHX", "l", "v"]);
    nothing_more(&mut sub);
    q::<i64>(&mut c, &["RPUSH", "n", "2", "1"]);
    q::<i64>(&mut c, &["SORT", "n", "STORE", "sorted"]);
    assert_eq!(
        next(&mut sub, 2),
        vec![ks("n", "rpush"), ks("sorted", "sortstore")]
    );
}

/// ZMPOP and BZMPOP tell `zpopmax` or `zpopmin`, as Redis does, and `del`
/// once the sorted set is empty.
#[test]
fn zmpop_tells_the_pops_event() {
    let s = Server::start(&["--notify-keyspace-events", "Kzg"]);
    let mut con = listener(&s);
    let mut sub = con.as_pubsub();
    sub.psubscribe("__keyspace@0__:*").unwrap();
    let mut c = s.conn();
    let ks = |key: &str, event: &str| pair(&format!("__keyspace@0__:{key}"), event);
    q::<i64>(&mut c, &["ZADD", "z", "1", "a", "2", "b"]);
    q::<redis::Value>(&mut c, &["ZMPOP", "2", "none", "z", "MAX"]);
    q::<redis::Value>(&mut c, &["BZMPOP", "1", "1", "z", "MIN", "COUNT", "5"]);
    assert_eq!(
        next(&mut sub, 4),
        vec![
            ks("z", "zadd"),
            ks("z", "zpopmax"),
            ks("z", "zpopmin"),
            ks("z", "del")
        ]
    );
    q::<redis::Value>(&mut c, &["ZMPOP", "1", "z", "MIN"]);
    nothing_more(&mut sub);
}
