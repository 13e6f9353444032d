//! Pub/sub on one node, through the `redis` crate and raw sockets (the
//! exact RESP2 and RESP3 shapes). Across nodes: tests/replication.rs.

mod common;

use std::time::{Duration, Instant};

use common::{q, resp, Server};

/// Sends `command name` (SUBSCRIBE and the like) and reads its RESP2
/// confirmation, which carries `count`.
fn confirm(raw: &mut common::Raw, command: &str, name: &str, count: i64) {
    let word = command.to_ascii_lowercase();
    let want = format!(
        "*3\r\n${}\r\n{word}\r\n${}\r\n{name}\r\n:{count}\r\n",
        word.len(),
        name.len()
    );
    raw.roundtrip(
        &resp(&[command.as_bytes(), name.as_bytes()]),
        want.as_bytes(),
    );
}

fn publish(con: &mut redis::Connection, channel: &str, message: &str) -> i64 {
    q(con, &["PUBLISH", channel, message])
}

#[test]
fn channel_and_pattern_subscribers_get_every_message_in_order() {
    let s = Server::start(&[]);
    let mut sub = s.raw();
    sub.roundtrip(
        &resp(&[b"SUBSCRIBE", b"news", b"sport"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$5\r\nsport\r\n:2\r\n",
    );
    confirm(&mut sub, "PSUBSCRIBE", "n*", 3);
    let mut other = s.client().get_connection().unwrap();
    let mut listener = other.as_pubsub();
    listener.subscribe("news").unwrap();
    let mut p = s.conn();
    // The raw client twice (channel and pattern), the other once.
    assert_eq!(publish(&mut p, "news", "one"), 3);
    assert_eq!(publish(&mut p, "news", "two"), 3);
    assert_eq!(publish(&mut p, "nothing-here", "x"), 1);
    assert_eq!(publish(&mut p, "elsewhere", "x"), 0);
    let expected = [
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$3\r\none\r\n",
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$3\r\none\r\n",
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$3\r\ntwo\r\n",
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$3\r\ntwo\r\n",
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$12\r\nnothing-here\r\n$1\r\nx\r\n",
    ]
    .concat();
    let got = sub.read_n(expected.len());
    assert_eq!(String::from_utf8_lossy(&got), expected);
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for want in ["one", "two"] {
        let msg = listener.get_message().unwrap();
        assert_eq!(msg.get_channel_name(), "news");
        assert_eq!(msg.get_payload::<String>().unwrap(), want);
    }
}

#[test]
fn a_resp2_subscriber_may_only_subscribe_ping_and_leave() {
    let s = Server::start(&[]);
    let mut sub = s.raw();
    confirm(&mut sub, "SUBSCRIBE", "c", 1);
    sub.roundtrip(
        &resp(&[b"GET", b"k"]),
        b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
    sub.roundtrip(&resp(&[b"PING"]), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    sub.roundtrip(
        &resp(&[b"PING", b"hi"]),
        b"*2\r\n$4\r\npong\r\n$2\r\nhi\r\n",
    );
    // UNSUBSCRIBE alone leaves every channel; with none left, one reply
    // with a null name.
    sub.roundtrip(
        &resp(&[b"UNSUBSCRIBE"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n",
    );
    sub.roundtrip(
        &resp(&[b"PUNSUBSCRIBE"]),
        b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n",
    );
    sub.roundtrip(&resp(&[b"GET", b"k"]), b"$-1\r\n");
    sub.roundtrip(&resp(&[b"PING"]), b"+PONG\r\n");
    // RESET leaves every subscription too.
    confirm(&mut sub, "PSUBSCRIBE", "*", 1);
    sub.roundtrip(&resp(&[b"RESET"]), b"+RESET\r\n");
    let mut p = s.conn();
    assert_eq!(publish(&mut p, "c", "x"), 0);
    sub.roundtrip(&resp(&[b"GET", b"k"]), b"$-1\r\n");
    // Not inside MULTI.
    sub.roundtrip(&resp(&[b"MULTI"]), b"+OK\r\n");
    let refused = {
        sub.send(&resp(&[b"SUBSCRIBE", b"c"]));
        sub.read_until(b"\r\n")
    };
    assert!(
        String::from_utf8_lossy(&refused).starts_with("-ERR"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
}

#[test]
fn a_resp3_subscriber_gets_pushes_and_may_run_any_command() {
    let s = Server::start(&[]);
    let mut sub = s.raw();
    sub.hello3();
    sub.roundtrip(
        &resp(&[b"SUBSCRIBE", b"c"]),
        b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n",
    );
    sub.roundtrip(&resp(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    sub.roundtrip(&resp(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    let mut p = s.conn();
    assert_eq!(publish(&mut p, "c", "hello"), 1);
    let want = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhello\r\n";
    assert_eq!(
        String::from_utf8_lossy(&sub.read_n(want.len())),
        String::from_utf8_lossy(want)
    );
    sub.roundtrip(&resp(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn shard_channels_are_their_own_namespace() {
    let s = Server::start(&[]);
    let mut sub = s.raw();
    confirm(&mut sub, "SSUBSCRIBE", "orders", 1);
    let mut p = s.conn();
    assert_eq!(publish(&mut p, "orders", "not for shard subscribers"), 0);
    assert_eq!(q::<i64>(&mut p, &["SPUBLISH", "orders", "o1"]), 1);
    let want = b"*3\r\n$8\r\nsmessage\r\n$6\r\norders\r\n$2\r\no1\r\n";
    assert_eq!(
        String::from_utf8_lossy(&sub.read_n(want.len())),
        String::from_utf8_lossy(want)
    );
    let shard: Vec<String> = q(&mut p, &["PUBSUB", "SHARDCHANNELS"]);
    assert_eq!(shard, vec!["orders"]);
    let channels: Vec<String> = q(&mut p, &["PUBSUB", "CHANNELS"]);
    assert!(channels.is_empty());
    let counts: Vec<redis::Value> = q(&mut p, &["PUBSUB", "SHARDNUMSUB", "orders", "x"]);
    assert_eq!(
        counts,
        vec![
            redis::Value::BulkString(b"orders".to_vec()),
            redis::Value::Int(1),
            redis::Value::BulkString(b"x".to_vec()),
            redis::Value::Int(0),
        ]
    );
    confirm(&mut sub, "SUNSUBSCRIBE", "orders", 0);
}

#[test]
fn pubsub_introspection_counts_this_nodes_subscribers() {
    let s = Server::start(&[]);
    let mut a = s.raw();
    confirm(&mut a, "SUBSCRIBE", "news.1", 1);
    confirm(&mut a, "PSUBSCRIBE", "news.*", 2);
    let mut b = s.raw();
    b.roundtrip(
        &resp(&[b"SUBSCRIBE", b"news.1", b"misc"]),
        b"*3\r\n$9\r\nsubscribe\r\n$6\r\nnews.1\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$4\r\nmisc\r\n:2\r\n",
    );
    let mut c = s.conn();
    let mut channels: Vec<String> = q(&mut c, &["PUBSUB", "CHANNELS"]);
    channels.sort();
    assert_eq!(channels, vec!["misc", "news.1"]);
    let matching: Vec<String> = q(&mut c, &["PUBSUB", "CHANNELS", "news.*"]);
    assert_eq!(matching, vec!["news.1"]);
    let numsub: Vec<redis::Value> = q(&mut c, &["PUBSUB", "NUMSUB", "news.1", "none"]);
    assert_eq!(numsub[1], redis::Value::Int(2));
    assert_eq!(numsub[3], redis::Value::Int(0));
    assert_eq!(q::<i64>(&mut c, &["PUBSUB", "NUMPAT"]), 1);
    let list: String = q(&mut c, &["CLIENT", "LIST"]);
    assert!(
        list.lines()
            .any(|l| l.contains("flags=P") && l.contains("sub=1 psub=1 ssub=0")),
        "{list}"
    );
    let info: String = q(&mut c, &["INFO", "stats"]);
    assert!(info.contains("pubsub_channels:2\r\n"), "{info}");
    assert!(info.contains("pubsub_patterns:1\r\n"), "{info}");
    assert!(common::err(&mut c, &["PUBSUB", "NOPE"]).contains("unknown subcommand"));
    // A subscriber that leaves takes its subscriptions with it.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while q::<i64>(&mut c, &["PUBSUB", "NUMPAT"]) != 0 {
        assert!(Instant::now() < deadline, "the pattern outlived its client");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(publish(&mut c, "news.1", "x"), 1);
}

#[test]
fn a_subscriber_that_does_not_read_is_closed_by_its_limit_and_slows_nothing() {
    let s = Server::start(&["--client-output-buffer-limit", "pubsub 1mb 0 0"]);
    let mut stuck = s.raw();
    confirm(&mut stuck, "SUBSCRIBE", "feed", 1);
    let mut reader = s.client().get_connection().unwrap();
    let mut reader = reader.as_pubsub();
    reader.subscribe("feed").unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut p = s.conn();
    let payload = "x".repeat(64 * 1024);
    // 64 MB: far past what the stuck client's socket buffers absorb.
    let started = Instant::now();
    for _ in 0..1024 {
        let _: i64 = q(&mut p, &["PUBLISH", "feed", &payload]);
        // The reader keeps up; the stuck one never reads.
        let msg = reader.get_message().unwrap();
        assert_eq!(msg.get_payload::<String>().unwrap().len(), payload.len());
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "publishing waited on the stuck subscriber"
    );
    let info: String = q(&mut p, &["INFO", "stats"]);
    assert!(
        info.contains("client_output_buffer_limit_disconnections:1\r\n"),
        "{info}"
    );
    // The stuck client's socket ends: what was written, then the close.
    stuck
        .0
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let got = stuck.read_to_close();
    assert!(got.len() < 1024 * payload.len());
    let numsub: Vec<redis::Value> = q(&mut p, &["PUBSUB", "NUMSUB", "feed"]);
    assert_eq!(numsub[1], redis::Value::Int(1), "the reader stays");
}

#[test]
fn client_list_and_kill_tell_subscribers_by_type() {
    let s = Server::start(&[]);
    let mut sub = s.raw();
    confirm(&mut sub, "SUBSCRIBE", "c", 1);
    let mut plain = s.conn();
    let mut admin = s.conn();
    let listed: String = q(&mut admin, &["CLIENT", "LIST", "TYPE", "pubsub"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("flags=P"), "{listed}");
    let normal: String = q(&mut admin, &["CLIENT", "LIST", "TYPE", "normal"]);
    assert_eq!(normal.lines().count(), 2, "{normal}");
    let none: String = q(&mut admin, &["CLIENT", "LIST", "TYPE", "master"]);
    assert!(none.is_empty());
    assert!(
        common::err(&mut admin, &["CLIENT", "LIST", "TYPE", "bogus"])
            .contains("Unknown client type 'bogus'")
    );
    assert_eq!(
        q::<i64>(&mut admin, &["CLIENT", "KILL", "TYPE", "replica"]),
        0
    );
    assert_eq!(
        q::<i64>(&mut admin, &["CLIENT", "KILL", "TYPE", "pubsub"]),
        1
    );
    assert!(sub.read_to_close().is_empty());
    assert_eq!(
        q::<String>(&mut plain, &["PING"]),
        "PONG",
        "the others stay"
    );
}

#[test]
fn a_subscribed_resp2_client_is_told_arity_first_and_the_full_command_name() {
    let s = Server::start(&[]);
    let mut sub = s.raw();
    confirm(&mut sub, "SUBSCRIBE", "c", 1);
    sub.roundtrip(
        &resp(&[b"GET"]),
        b"-ERR wrong number of arguments for 'get' command\r\n",
    );
    sub.roundtrip(
        &resp(&[b"CLIENT", b"LIST"]),
        b"-ERR Can't execute 'client|list': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
    // Nothing follows QUIT's reply, not even a message waiting.
    let mut p = s.conn();
    assert_eq!(publish(&mut p, "c", "late"), 1);
    std::thread::sleep(Duration::from_millis(50));
    sub.send(&resp(&[b"QUIT"]));
    let rest = sub.read_to_close();
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\nlate\r\n+OK\r\n"
    );
}

#[test]
fn a_resp3_subscriber_gets_its_messages_while_blocked_and_its_own_before_the_reply() {
    let s = Server::start(&[]);
    let mut sub = s.raw();
    sub.hello3();
    sub.roundtrip(
        &resp(&[b"SUBSCRIBE", b"c"]),
        b">3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n",
    );
    // Its own message comes before PUBLISH's reply, as Redis writes it.
    sub.roundtrip(
        &resp(&[b"PUBLISH", b"c", b"self"]),
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\nself\r\n:1\r\n",
    );
    sub.send(&resp(&[b"BZPOPMIN", b"q", b"0"]));
    let mut p = s.conn();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(publish(&mut p, "c", "while-blocked"), 1);
    let want = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$13\r\nwhile-blocked\r\n";
    assert_eq!(
        String::from_utf8_lossy(&sub.read_n(want.len())),
        String::from_utf8_lossy(want)
    );
    q::<i64>(&mut p, &["ZADD", "q", "1", "m"]);
    let popped = b"*3\r\n$1\r\nq\r\n$1\r\nm\r\n,1\r\n";
    assert_eq!(
        String::from_utf8_lossy(&sub.read_n(popped.len())),
        String::from_utf8_lossy(popped)
    );
}
