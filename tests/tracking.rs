//! Client-side caching (CLIENT TRACKING) on one node, through raw sockets
//! for the exact RESP2 and RESP3 shapes. Across nodes: tests/replication.rs.

mod common;

use std::time::Duration;

use common::{q, resp, Raw, Server};

fn invalidation(key: &str) -> String {
    format!(
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{key}\r\n",
        key.len()
    )
}

fn expect(raw: &mut Raw, want: &str) {
    let got = raw.read_n(want.len());
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// Nothing more arrives within a short while.
fn expect_nothing(raw: &mut Raw) {
    raw.0
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let got = raw.read_n(1);
    raw.0
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
}

#[test]
fn a_reader_is_told_when_a_key_it_read_changes_once_per_read() {
    let s = Server::start(&[]);
    let mut a = s.raw();
    a.hello3();
    a.roundtrip(&resp(&[b"CLIENT", b"TRACKING", b"ON"]), b"+OK\r\n");
    a.roundtrip(&resp(&[b"GET", b"k"]), b"_\r\n");
    a.roundtrip(&resp(&[b"HGET", b"h", b"f"]), b"_\r\n");
    let mut b = s.conn();
    q::<()>(&mut b, &["SET", "k", "v"]);
    expect(&mut a, &invalidation("k"));
    // Told once: not again until read again.
    q::<()>(&mut b, &["SET", "k", "w"]);
    expect_nothing(&mut a);
    a.roundtrip(&resp(&[b"GET", b"k"]), b"$1\r\nw\r\n");
    // A write that changes nothing tells no one.
    let _: bool = q(&mut b, &["SETNX", "k", "other"]);
    expect_nothing(&mut a);
    q::<()>(&mut b, &["DEL", "k"]);
    expect(&mut a, &invalidation("k"));
    q::<i64>(&mut b, &["HSET", "h", "f", "1"]);
    expect(&mut a, &invalidation("h"));
    // Its own write tells it too, after the reply (as Redis 7), unless
    // NOLOOP.
    a.roundtrip(&resp(&[b"GET", b"k"]), b"_\r\n");
    a.send(&resp(&[b"SET", b"k", b"mine"]));
    expect(&mut a, &format!("+OK\r\n{}", invalidation("k")));
    a.roundtrip(
        &resp(&[b"CLIENT", b"TRACKING", b"ON", b"NOLOOP"]),
        b"+OK\r\n",
    );
    a.roundtrip(&resp(&[b"GET", b"k"]), b"$4\r\nmine\r\n");
    a.roundtrip(&resp(&[b"SET", b"k", b"again"]), b"+OK\r\n");
    expect_nothing(&mut a);
    // A flush tells every tracking client to drop everything.
    q::<()>(&mut b, &["FLUSHALL"]);
    expect(&mut a, ">2\r\n$10\r\ninvalidate\r\n_\r\n");
    // Off: nothing more.
    a.roundtrip(&resp(&[b"CLIENT", b"TRACKING", b"OFF"]), b"+OK\r\n");
    a.roundtrip(&resp(&[b"GET", b"k"]), b"_\r\n");
    q::<()>(&mut b, &["SET", "k", "v"]);
    expect_nothing(&mut a);
}

#[test]
fn a_resp2_client_redirects_its_invalidations_to_a_subscriber() {
    let s = Server::start(&[]);
    let mut listener = s.raw();
    listener.roundtrip(
        &resp(&[b"SUBSCRIBE", b"__redis__:invalidate"]),
        b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n",
    );
    let mut ids = s.conn();
    let list: String = q(&mut ids, &["CLIENT", "LIST"]);
    let listener_id = list
        .lines()
        .find(|l| l.contains("flags=P"))
        .and_then(|l| l.strip_prefix("id="))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_string();
    let mut a = s.conn();
    q::<()>(
        &mut a,
        &["CLIENT", "TRACKING", "ON", "REDIRECT", &listener_id],
    );
    assert_eq!(
        q::<i64>(&mut a, &["CLIENT", "GETREDIR"]),
        listener_id.parse::<i64>().unwrap()
    );
    let _: Option<String> = q(&mut a, &["GET", "cached"]);
    q::<()>(&mut ids, &["SET", "cached", "1"]);
    expect(
        &mut listener,
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$6\r\ncached\r\n",
    );
    let list: String = q(&mut ids, &["CLIENT", "LIST"]);
    assert!(
        list.lines()
            .any(|l| l.contains("flags=t") && l.contains(&format!("redir={listener_id} "))),
        "{list}"
    );
    assert!(
        common::err(&mut a, &["CLIENT", "TRACKING", "ON", "REDIRECT", "999999"])
            .contains("The client ID you want redirect to does not exist")
    );
}

#[test]
fn bcast_tells_every_change_under_its_prefixes_without_reads() {
    let s = Server::start(&[]);
    let mut a = s.raw();
    a.hello3();
    a.roundtrip(
        &resp(&[
            b"CLIENT",
            b"TRACKING",
            b"ON",
            b"BCAST",
            b"PREFIX",
            b"user:",
            b"PREFIX",
            b"cfg",
        ]),
        b"+OK\r\n",
    );
    let mut b = s.conn();
    q::<()>(&mut b, &["SET", "order:1", "x"]);
    q::<()>(&mut b, &["SET", "user:7", "x"]);
    q::<()>(&mut b, &["SET", "cfg", "x"]);
    expect(
        &mut a,
        &format!("{}{}", invalidation("user:7"), invalidation("cfg")),
    );
    // An expiry is a change too.
    q::<()>(&mut b, &["SET", "user:8", "x", "PX", "50"]);
    expect(&mut a, &invalidation("user:8"));
    std::thread::sleep(Duration::from_millis(300));
    let _: Option<String> = q(&mut b, &["GET", "user:8"]);
    expect(&mut a, &invalidation("user:8"));
    let info = {
        a.send(&resp(&[b"CLIENT", b"TRACKINGINFO"]));
        a.read_until(b"cfg\r\n")
    };
    let info = String::from_utf8_lossy(&info);
    assert!(
        info.starts_with("%3\r\n$5\r\nflags\r\n~2\r\n$2\r\non\r\n$5\r\nbcast\r\n"),
        "{info}"
    );
    assert!(info.contains("$8\r\nredirect\r\n:0\r\n"), "{info}");
    let errors = [
        (&["CLIENT", "TRACKING", "ON", "PREFIX", "x"][..], "PREFIX option requires BCAST mode to be enabled"),
        (&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "user"][..], "Prefix 'user' overlaps with an existing prefix 'user:'"),
        (&["CLIENT", "TRACKING", "ON", "OPTIN", "OPTOUT"][..], "You can't specify both OPTIN mode and OPTOUT mode"),
        (&["CLIENT", "TRACKING", "ON", "BCAST", "OPTIN"][..], "OPTIN and OPTOUT are not compatible with BCAST"),
        (&["CLIENT", "CACHING", "YES"][..], "CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"),
        (&["CLIENT", "TRACKING", "MAYBE"][..], "syntax error"),
    ];
    let mut plain = s.conn();
    let mut bcasting = s.conn();
    q::<()>(
        &mut bcasting,
        &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "user:"],
    );
    for (args, want) in errors {
        let con = match args.contains(&"user") {
            true => &mut bcasting,
            false => &mut plain,
        };
        let got = common::err(con, args);
        assert!(got.contains(want), "{args:?}: {got}");
    }
    // Checked in Redis's order: a switch of mode first.
    assert!(
        common::err(&mut bcasting, &["CLIENT", "TRACKING", "ON", "OPTIN"])
            .contains("You can't switch BCAST mode on/off")
    );
}

#[test]
fn optin_tracks_only_reads_after_caching_yes() {
    let s = Server::start(&[]);
    let mut a = s.raw();
    a.hello3();
    a.roundtrip(
        &resp(&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN"]),
        b"+OK\r\n",
    );
    a.roundtrip(&resp(&[b"GET", b"not-cached"]), b"_\r\n");
    a.roundtrip(&resp(&[b"CLIENT", b"CACHING", b"YES"]), b"+OK\r\n");
    a.roundtrip(&resp(&[b"GET", b"cached"]), b"_\r\n");
    a.roundtrip(&resp(&[b"GET", b"after"]), b"_\r\n");
    let mut b = s.conn();
    for k in ["not-cached", "after", "cached"] {
        q::<()>(&mut b, &["SET", k, "1"]);
    }
    expect(&mut a, &invalidation("cached"));
    expect_nothing(&mut a);
    a.send(&resp(&[b"CLIENT", b"CACHING", b"NO"]));
    let e = a.read_until(b"\r\n");
    assert!(
        String::from_utf8_lossy(&e).contains("only valid when tracking is enabled in OPTOUT mode")
    );
}

#[test]
fn optout_tracks_every_read_but_the_one_after_caching_no() {
    let s = Server::start(&[]);
    let mut a = s.raw();
    a.hello3();
    a.roundtrip(
        &resp(&[b"CLIENT", b"TRACKING", b"ON", b"OPTOUT"]),
        b"+OK\r\n",
    );
    a.roundtrip(&resp(&[b"GET", b"cached"]), b"_\r\n");
    a.roundtrip(&resp(&[b"CLIENT", b"CACHING", b"NO"]), b"+OK\r\n");
    a.roundtrip(&resp(&[b"GET", b"not-cached"]), b"_\r\n");
    // CACHING NO covers the next command only.
    a.roundtrip(&resp(&[b"GET", b"after"]), b"_\r\n");
    let mut b = s.conn();
    for k in ["not-cached", "cached", "after"] {
        q::<()>(&mut b, &["SET", k, "1"]);
    }
    let both = invalidation("cached") + &invalidation("after");
    expect(&mut a, &both);
    expect_nothing(&mut a);
    a.send(&resp(&[b"CLIENT", b"CACHING", b"YES"]));
    let e = a.read_until(b"\r\n");
    assert!(
        String::from_utf8_lossy(&e).contains("only valid when tracking is enabled in OPTIN mode")
    );
}

#[test]
fn a_full_tracking_table_forgets_keys_and_tells_their_readers() {
    let s = Server::start(&["--tracking-table-max-keys", "2"]);
    let mut a = s.raw();
    a.hello3();
    a.roundtrip(&resp(&[b"CLIENT", b"TRACKING", b"ON"]), b"+OK\r\n");
    a.send(&resp(&[b"MGET", b"x", b"y", b"z"]));
    // One of the three had to go, and its reader hears of it at once.
    let reply = "*3\r\n_\r\n_\r\n_\r\n";
    let push = ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\n";
    let got = String::from_utf8_lossy(&a.read_n(reply.len() + push.len() + 3)).into_owned();
    assert!(got.contains(push) && got.contains(reply), "{got}");
    let mut c = s.conn();
    let info: String = q(&mut c, &["INFO", "stats"]);
    assert!(info.contains("tracking_total_keys:2\r\n"), "{info}");
    assert_eq!(
        q::<Vec<String>>(&mut c, &["CONFIG", "GET", "tracking-table-max-keys"]),
        vec!["tracking-table-max-keys", "2"]
    );
}

#[test]
fn bcast_without_a_prefix_covers_every_key_and_an_idle_redirect_target_is_woken() {
    let s = Server::start(&[]);
    // The target says nothing after HELLO: its connection only waits.
    let mut target = s.raw();
    target.hello3();
    let mut ids = s.conn();
    let target_id = {
        let list: String = q(&mut ids, &["CLIENT", "LIST"]);
        list.lines()
            .find(|l| l.contains("resp=3"))
            .and_then(|l| l.strip_prefix("id="))
            .and_then(|l| l.split(' ').next())
            .unwrap()
            .to_string()
    };
    let mut a = s.conn();
    q::<()>(
        &mut a,
        &["CLIENT", "TRACKING", "ON", "BCAST", "REDIRECT", &target_id],
    );
    q::<()>(&mut ids, &["SET", "anything", "1"]);
    expect(&mut target, &invalidation("anything"));
    let err = common::err(
        &mut a,
        &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "x"],
    );
    assert!(
        err.contains("Prefix 'x' overlaps with an existing prefix ''"),
        "{err}"
    );
    let err = common::err(
        &mut a,
        &["CLIENT", "TRACKING", "ON", "REDIRECT", "1", "REDIRECT", "2"],
    );
    assert!(
        err.contains("A client can only redirect to a single other client"),
        "{err}"
    );
    let mut plain = s.conn();
    q::<()>(&mut plain, &["CLIENT", "TRACKING", "ON"]);
    let err = common::err(&mut plain, &["CLIENT", "CACHING", "YES"]);
    assert!(
        err.contains("CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode."),
        "{err}"
    );
}

/// CLIENT CACHING's word before MULTI covers the transaction's reads, and
/// SORT_RO's key is tracked, as in Redis (a differential run found both
/// left untracked, so a client's cache went stale).
#[test]
fn caching_before_multi_and_sort_ro_are_tracked() {
    let s = Server::start(&[]);
    let mut b = s.conn();
    let mut a = s.raw();
    a.hello3();
    a.roundtrip(
        &resp(&[b"CLIENT", b"TRACKING", b"ON", b"OPTIN"]),
        b"+OK\r\n",
    );
    a.roundtrip(&resp(&[b"CLIENT", b"CACHING", b"YES"]), b"+OK\r\n");
    a.roundtrip(&resp(&[b"MULTI"]), b"+OK\r\n");
    a.roundtrip(&resp(&[b"GET", b"om1"]), b"+QUEUED\r\n");
    a.roundtrip(&resp(&[b"EXEC"]), b"*1\r\n_\r\n");
    q::<()>(&mut b, &["SET", "om1", "x"]);
    expect(&mut a, &invalidation("om1"));

    let mut c = s.raw();
    c.hello3();
    c.roundtrip(
        &resp(&[b"CLIENT", b"TRACKING", b"ON", b"OPTOUT"]),
        b"+OK\r\n",
    );
    c.roundtrip(&resp(&[b"CLIENT", b"CACHING", b"NO"]), b"+OK\r\n");
    c.roundtrip(&resp(&[b"MULTI"]), b"+OK\r\n");
    c.roundtrip(&resp(&[b"GET", b"om2"]), b"+QUEUED\r\n");
    c.roundtrip(&resp(&[b"EXEC"]), b"*1\r\n_\r\n");
    q::<()>(&mut b, &["SET", "om2", "x"]);
    expect_nothing(&mut c);

    let mut d = s.raw();
    d.hello3();
    d.roundtrip(&resp(&[b"CLIENT", b"TRACKING", b"ON"]), b"+OK\r\n");
    d.roundtrip(&resp(&[b"SORT_RO", b"t11"]), b"*0\r\n");
    q::<i64>(&mut b, &["RPUSH", "t11", "1"]);
    expect(&mut d, &invalidation("t11"));
}
