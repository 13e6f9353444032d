//! Sorted sets through the `redis` crate: Redis 7.0 replies and errors,
//! ranges against a model, the set operations, blocking pops woken by
//! another client, and the key commands on a sorted set.

mod common;

use std::time::{Duration, Instant};

use common::{err, q, resp, Server};

type Scored = Vec<(String, String)>;

#[test]
fn zadd_and_scores_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["ZADD", "z", "1", "a", "2", "b"]), 2);
    assert_eq!(q::<i64>(&mut c, &["ZADD", "z", "3", "a", "4", "c"]), 1);
    assert_eq!(
        q::<i64>(&mut c, &["ZADD", "z", "CH", "3", "a", "5", "b", "6", "d"]),
        2,
        "CH counts the changed score and the new member, not the same score"
    );
    assert_eq!(q::<i64>(&mut c, &["ZADD", "z", "1", "e", "9", "e"]), 1);
    assert_eq!(
        q::<String>(&mut c, &["ZSCORE", "z", "e"]),
        "9",
        "the last of a member named twice"
    );
    assert_eq!(q::<i64>(&mut c, &["ZCARD", "z"]), 5);
    assert_eq!(q::<i64>(&mut c, &["ZCARD", "nope"]), 0);
    assert_eq!(q::<Option<String>>(&mut c, &["ZSCORE", "z", "nope"]), None);
    assert_eq!(
        q::<Vec<Option<String>>>(&mut c, &["ZMSCORE", "z", "a", "x", "b"]),
        vec![Some("3".into()), None, Some("5".into())]
    );
    // NX, XX, GT, LT.
    assert_eq!(
        q::<i64>(&mut c, &["ZADD", "z", "NX", "100", "a", "7", "f"]),
        1
    );
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "z", "a"]), "3");
    assert_eq!(
        q::<i64>(&mut c, &["ZADD", "z", "XX", "100", "a", "7", "g"]),
        0
    );
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "z", "a"]), "100");
    assert_eq!(q::<Option<String>>(&mut c, &["ZSCORE", "z", "g"]), None);
    assert_eq!(
        q::<i64>(&mut c, &["ZADD", "z", "GT", "CH", "50", "a", "60", "b"]),
        1
    );
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "z", "a"]), "100");
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "z", "b"]), "60");
    assert_eq!(
        q::<i64>(&mut c, &["ZADD", "z", "LT", "CH", "50", "a", "70", "b"]),
        1
    );
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "z", "a"]), "50");
    assert_eq!(
        q::<i64>(&mut c, &["ZADD", "z", "GT", "1", "newgt"]),
        1,
        "GT still adds"
    );
    assert_eq!(q::<i64>(&mut c, &["ZADD", "missing", "XX", "1", "a"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "missing"]), 0);
    // INCR and ZINCRBY.
    assert_eq!(
        q::<String>(&mut c, &["ZADD", "z", "INCR", "2.5", "a"]),
        "52.5"
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["ZADD", "z", "NX", "INCR", "1", "a"]),
        None
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["ZADD", "z", "GT", "INCR", "-1", "a"]),
        None
    );
    assert_eq!(
        q::<Option<String>>(&mut c, &["ZADD", "missing", "XX", "INCR", "1", "a"]),
        None
    );
    assert_eq!(q::<String>(&mut c, &["ZINCRBY", "z", "0.5", "a"]), "53");
    assert_eq!(q::<String>(&mut c, &["ZINCRBY", "z", "-3", "fresh"]), "-3");
    assert_eq!(q::<String>(&mut c, &["ZADD", "z", "7", "a"]), "0");
    assert_eq!(
        q::<String>(&mut c, &["ZINCRBY", "z", "1", "a"]),
        "8",
        "a ZADD resets the increments"
    );
    assert_eq!(
        q::<String>(&mut c, &["ZADD", "z", "+inf", "top", "-INF", "bottom"]),
        "2"
    );
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "z", "top"]), "inf");
    assert!(err(&mut c, &["ZINCRBY", "z", "-inf", "top"])
        .contains("resulting score is not a number (NaN)"));
    assert_eq!(
        q::<String>(&mut c, &["ZSCORE", "z", "top"]),
        "inf",
        "a refused increment writes nothing"
    );
    assert_eq!(q::<String>(&mut c, &["ZADD", "z", "0.1", "tenth"]), "1");
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "z", "tenth"]), "0.1");
    // Errors, as Redis words them.
    for (args, text) in [
        (&["ZADD", "z", "nan", "a"][..], "value is not a valid float"),
        (&["ZADD", "z", "x", "a"], "value is not a valid float"),
        (
            &["ZADD", "z", "1"],
            "wrong number of arguments for 'zadd' command",
        ),
        (&["ZADD", "z", "NX", "CH"], "syntax error"),
        (&["ZADD", "z", "1", "a", "2"], "syntax error"),
        (
            &["ZADD", "z", "NX", "XX", "1", "a"],
            "XX and NX options at the same time are not compatible",
        ),
        (
            &["ZADD", "z", "GT", "LT", "1", "a"],
            "GT, LT, and/or NX options at the same time are not compatible",
        ),
        (
            &["ZADD", "z", "NX", "GT", "1", "a"],
            "GT, LT, and/or NX options at the same time are not compatible",
        ),
        (
            &["ZADD", "z", "INCR", "1", "a", "2", "b"],
            "INCR option supports a single increment-element pair",
        ),
        (&["ZINCRBY", "z", "x", "a"], "value is not a valid float"),
        (&["ZADD"], "wrong number of arguments for 'zadd' command"),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
    // ZREM, and the key goes with its last member.
    assert_eq!(q::<i64>(&mut c, &["ZADD", "small", "1", "x", "2", "y"]), 2);
    assert_eq!(q::<i64>(&mut c, &["ZREM", "small", "x", "x", "nope"]), 1);
    assert_eq!(q::<i64>(&mut c, &["ZREM", "small", "y"]), 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "small"]), 0);
    assert_eq!(q::<i64>(&mut c, &["ZREM", "small", "y"]), 0);
}

/// Members in Redis's order: by score, then by bytes.
fn model_order(members: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut m = members.to_vec();
    m.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    m
}

#[test]
fn ranges_ranks_and_counts_agree_with_a_model() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    // Enough members for the index to hold several blocks; scores repeat,
    // so ties order by member.
    let mut x: u64 = 42;
    let mut members: Vec<(String, f64)> = Vec::new();
    let mut cmd = redis::cmd("ZADD");
    cmd.arg("big");
    for i in 0..3000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let score = ((x >> 33) % 200) as f64 / 2.0 - 20.0;
        let m = format!("m{:05}", (i * 7919) % 3000);
        cmd.arg(score).arg(&m);
        members.push((m, score));
    }
    let added: i64 = cmd.query(&mut c).unwrap();
    assert_eq!(added, 3000);
    // Some moves and removals through the in-place paths.
    for (i, (m, score)) in members.iter_mut().enumerate().step_by(13) {
        if i % 2 == 0 {
            *score += 3.0;
            q::<String>(&mut c, &["ZINCRBY", "big", "3", m]);
        } else {
            *score = -(i as f64);
            q::<i64>(&mut c, &["ZADD", "big", &score.to_string(), m]);
        }
    }
    let removed: Vec<String> = members.iter().step_by(17).map(|(m, _)| m.clone()).collect();
    for m in &removed {
        assert_eq!(q::<i64>(&mut c, &["ZREM", "big", m]), 1);
    }
    members.retain(|(m, _)| !removed.contains(m));
    let order = model_order(&members);
    let names: Vec<String> = order.iter().map(|(m, _)| m.clone()).collect();
    let n = names.len() as i64;

    let all: Vec<String> = q(&mut c, &["ZRANGE", "big", "0", "-1"]);
    assert_eq!(all, names);
    for (start, stop) in [
        (0, 9),
        (-10, -1),
        (1000, 1010),
        (5, 2),
        (-5000, 3),
        (n - 2, n + 10),
    ] {
        let got: Vec<String> = q(
            &mut c,
            &["ZRANGE", "big", &start.to_string(), &stop.to_string()],
        );
        let s = if start < 0 { (n + start).max(0) } else { start };
        let e = if stop < 0 { n + stop } else { stop.min(n - 1) };
        let want: Vec<String> = if s > e || s >= n {
            vec![]
        } else {
            names[s as usize..=e as usize].to_vec()
        };
        assert_eq!(got, want, "ZRANGE {start} {stop}");
        let rev: Vec<String> = q(
            &mut c,
            &["ZREVRANGE", "big", &start.to_string(), &stop.to_string()],
        );
        let reversed: Vec<String> = names.iter().rev().cloned().collect();
        let want_rev: Vec<String> = if s > e || s >= n {
            vec![]
        } else {
            reversed[s as usize..=e as usize].to_vec()
        };
        assert_eq!(rev, want_rev, "ZREVRANGE {start} {stop}");
    }
    for (i, (m, score)) in order.iter().enumerate().step_by(101) {
        assert_eq!(q::<i64>(&mut c, &["ZRANK", "big", m]), i as i64);
        assert_eq!(q::<i64>(&mut c, &["ZREVRANK", "big", m]), n - 1 - i as i64);
        let (rank, s): (i64, f64) = q(&mut c, &["ZRANK", "big", m, "WITHSCORE"]);
        assert_eq!((rank, s), (i as i64, *score));
    }
    assert_eq!(q::<Option<i64>>(&mut c, &["ZRANK", "big", "absent"]), None);
    // Score ranges, open and closed, with LIMIT, both ways.
    for (min, max) in [
        ("-5", "5"),
        ("(-5", "(5"),
        ("-inf", "0"),
        ("(10", "+inf"),
        ("3", "1"),
        ("2.5", "2.5"),
    ] {
        let lo = |s: f64| {
            if let Some(v) = min.strip_prefix('(') {
                s > v.parse().unwrap()
            } else {
                s >= min.parse::<f64>().unwrap()
            }
        };
        let hi = |s: f64| {
            if let Some(v) = max.strip_prefix('(') {
                s < v.parse().unwrap()
            } else {
                s <= max.parse::<f64>().unwrap()
            }
        };
        let want: Vec<(String, f64)> = order
            .iter()
            .filter(|(_, s)| lo(*s) && hi(*s))
            .cloned()
            .collect();
        let got: Vec<String> = q(&mut c, &["ZRANGEBYSCORE", "big", min, max]);
        assert_eq!(
            got,
            want.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
            "{min} {max}"
        );
        let ws: Vec<(String, f64)> = q(
            &mut c,
            &["ZRANGE", "big", min, max, "BYSCORE", "WITHSCORES"],
        );
        assert_eq!(ws, want);
        assert_eq!(
            q::<i64>(&mut c, &["ZCOUNT", "big", min, max]),
            want.len() as i64
        );
        let rev: Vec<String> = q(
            &mut c,
            &["ZREVRANGEBYSCORE", "big", max, min, "LIMIT", "2", "5"],
        );
        let want_rev: Vec<String> = want
            .iter()
            .rev()
            .skip(2)
            .take(5)
            .map(|(m, _)| m.clone())
            .collect();
        assert_eq!(rev, want_rev, "{max} {min} reversed");
        let rev2: Vec<String> = q(
            &mut c,
            &[
                "ZRANGE", "big", max, min, "BYSCORE", "REV", "LIMIT", "2", "5",
            ],
        );
        assert_eq!(rev2, want_rev);
        let limited: Vec<String> = q(
            &mut c,
            &["ZRANGE", "big", min, max, "BYSCORE", "LIMIT", "3", "-1"],
        );
        assert_eq!(
            limited,
            want.iter()
                .skip(3)
                .map(|(m, _)| m.clone())
                .collect::<Vec<_>>()
        );
    }
    let none: Vec<String> = q(
        &mut c,
        &["ZRANGEBYSCORE", "big", "-inf", "+inf", "LIMIT", "-1", "5"],
    );
    assert!(none.is_empty(), "a negative offset selects nothing");
    // Lexicographic ranges on equal scores.
    let words = ["a", "b", "c", "d", "e", "f", "g"];
    for w in words {
        q::<i64>(&mut c, &["ZADD", "lex", "0", w]);
    }
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGEBYLEX", "lex", "-", "[c"]),
        vec!["a", "b", "c"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGEBYLEX", "lex", "(a", "(d"]),
        vec!["b", "c"]
    );
    assert_eq!(
        q::<Vec<String>>(
            &mut c,
            &["ZRANGEBYLEX", "lex", "[e", "+", "LIMIT", "1", "1"]
        ),
        vec!["f"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZREVRANGEBYLEX", "lex", "[c", "-"]),
        vec!["c", "b", "a"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "lex", "(e", "[f", "BYLEX", "REV"]),
        Vec::<String>::new()
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "lex", "[f", "[e", "BYLEX", "REV"]),
        vec!["f", "e"]
    );
    assert_eq!(q::<i64>(&mut c, &["ZLEXCOUNT", "lex", "-", "+"]), 7);
    assert_eq!(q::<i64>(&mut c, &["ZLEXCOUNT", "lex", "(b", "[d"]), 2);
    for (args, text) in [
        (
            &["ZRANGEBYLEX", "lex", "a", "+"][..],
            "min or max not valid string range item",
        ),
        (
            &["ZRANGEBYSCORE", "big", "x", "1"],
            "min or max is not a float",
        ),
        (&["ZCOUNT", "big", "(", "1"], "min or max is not a float"),
        (
            &["ZRANGE", "big", "0", "1", "LIMIT", "0", "1"],
            "LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ),
        (
            &["ZRANGE", "lex", "-", "+", "BYLEX", "WITHSCORES"],
            "WITHSCORES not supported in combination with BYLEX",
        ),
        (
            &["ZRANGE", "big", "0", "1", "BYSCORE", "BYLEX"],
            "syntax error",
        ),
        (&["ZREVRANGE", "big", "0", "1", "REV"], "syntax error"),
        (&["ZRANGE", "big", "a", "1"], "value is not an integer"),
        (&["ZRANGE", "big", "0", "1", "LIMIT", "0"], "syntax error"),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
    // Removals by range.
    let first_ten: Vec<String> = names[..10].to_vec();
    assert_eq!(q::<i64>(&mut c, &["ZREMRANGEBYRANK", "big", "0", "9"]), 10);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "big", "0", "0"]),
        vec![names[10].clone()]
    );
    assert!(first_ten
        .iter()
        .all(|m| q::<Option<f64>>(&mut c, &["ZSCORE", "big", m]).is_none()));
    let in_range = order[10..]
        .iter()
        .filter(|(_, s)| (0.0..=5.0).contains(s))
        .count() as i64;
    assert_eq!(
        q::<i64>(&mut c, &["ZREMRANGEBYSCORE", "big", "0", "5"]),
        in_range
    );
    assert_eq!(q::<i64>(&mut c, &["ZCOUNT", "big", "0", "5"]), 0);
    assert_eq!(q::<i64>(&mut c, &["ZREMRANGEBYLEX", "lex", "[b", "(e"]), 3);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "lex", "0", "-1"]),
        vec!["a", "e", "f", "g"]
    );
    // ZRANGESTORE.
    assert_eq!(
        q::<i64>(&mut c, &["ZRANGESTORE", "dst", "lex", "1", "2"]),
        2
    );
    assert_eq!(
        q::<Vec<(String, f64)>>(&mut c, &["ZRANGE", "dst", "0", "-1", "WITHSCORES"]),
        vec![("e".to_string(), 0.0), ("f".to_string(), 0.0)]
    );
    assert_eq!(
        q::<i64>(&mut c, &["ZRANGESTORE", "dst", "lex", "5", "9"]),
        0
    );
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "dst"]),
        0,
        "an empty range deletes the destination"
    );
    assert!(err(
        &mut c,
        &["ZRANGESTORE", "dst", "lex", "0", "1", "WITHSCORES"]
    )
    .contains("syntax error"));
}

#[test]
fn pops_random_members_and_scan() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(
        &mut c,
        &["ZADD", "z", "1", "a", "2", "b", "3", "c", "4", "d"],
    );
    assert_eq!(q::<Vec<String>>(&mut c, &["ZPOPMIN", "z"]), vec!["a", "1"]);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZPOPMAX", "z", "2"]),
        vec!["d", "4", "c", "3"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZPOPMIN", "z", "0"]),
        Vec::<String>::new()
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZPOPMIN", "z", "10"]),
        vec!["b", "2"]
    );
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "z"]), 0);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZPOPMIN", "z"]),
        Vec::<String>::new()
    );
    assert!(
        err(&mut c, &["ZPOPMIN", "z", "-1"]).contains("value is out of range, must be positive")
    );
    assert!(err(&mut c, &["ZPOPMIN", "z", "1", "2"]).contains("syntax error"));

    let mut cmd = redis::cmd("ZADD");
    cmd.arg("r");
    for i in 0..200 {
        cmd.arg(i).arg(format!("m{i}"));
    }
    let _: i64 = cmd.query(&mut c).unwrap();
    let one: String = q(&mut c, &["ZRANDMEMBER", "r"]);
    assert!(one.starts_with('m'));
    assert_eq!(q::<Option<String>>(&mut c, &["ZRANDMEMBER", "nope"]), None);
    let five: Vec<String> = q(&mut c, &["ZRANDMEMBER", "r", "5"]);
    let distinct: std::collections::BTreeSet<&String> = five.iter().collect();
    assert_eq!((five.len(), distinct.len()), (5, 5));
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANDMEMBER", "r", "500"]).len(),
        200
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANDMEMBER", "r", "-500"]).len(),
        500
    );
    let with: Vec<(String, f64)> = q(&mut c, &["ZRANDMEMBER", "r", "3", "WITHSCORES"]);
    for (m, s) in &with {
        assert_eq!(format!("m{s}"), *m);
    }
    assert!(err(&mut c, &["ZRANDMEMBER", "r", "3", "BAD"]).contains("syntax error"));

    // ZSCAN returns every member once with its score, whatever COUNT.
    let mut cursor = "0".to_string();
    let mut seen = std::collections::BTreeMap::new();
    loop {
        let (next, batch): (String, Vec<(String, f64)>) =
            q(&mut c, &["ZSCAN", "r", &cursor, "COUNT", "7"]);
        for (m, s) in batch {
            seen.insert(m, s);
        }
        cursor = next;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 200);
    assert!(seen.iter().all(|(m, s)| *m == format!("m{s}")));
    let (_, matched): (String, Vec<String>) = q(
        &mut c,
        &["ZSCAN", "r", "0", "MATCH", "m1?", "COUNT", "1000"],
    );
    assert_eq!(matched.len(), 20, "m10..m19, each with its score");
}

#[test]
fn union_intersection_and_difference() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["ZADD", "a", "1", "x", "2", "y", "3", "z"]);
    q::<i64>(&mut c, &["ZADD", "b", "10", "y", "20", "z", "30", "w"]);
    q::<i64>(&mut c, &["SADD", "s", "z", "w", "v"]);
    let pairs = |v: &[(&str, &str)]| -> Scored {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        q::<Scored>(&mut c, &["ZUNION", "2", "a", "b", "WITHSCORES"]),
        pairs(&[("x", "1"), ("y", "12"), ("z", "23"), ("w", "30")])
    );
    assert_eq!(
        q::<Scored>(
            &mut c,
            &[
                "ZUNION",
                "3",
                "a",
                "b",
                "s",
                "WEIGHTS",
                "2",
                "1",
                "100",
                "AGGREGATE",
                "MAX",
                "WITHSCORES"
            ]
        ),
        pairs(&[
            ("x", "2"),
            ("y", "10"),
            ("v", "100"),
            ("w", "100"),
            ("z", "100")
        ])
    );
    assert_eq!(
        q::<Scored>(
            &mut c,
            &["ZINTER", "2", "a", "b", "AGGREGATE", "MIN", "WITHSCORES"]
        ),
        pairs(&[("y", "2"), ("z", "3")])
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZINTER", "3", "a", "b", "s"]),
        vec!["z"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZDIFF", "2", "a", "b"]),
        vec!["x"]
    );
    assert_eq!(
        q::<Scored>(&mut c, &["ZDIFF", "2", "b", "s", "WITHSCORES"]),
        pairs(&[("y", "10")])
    );
    assert_eq!(q::<i64>(&mut c, &["ZUNIONSTORE", "u", "2", "a", "nope"]), 3);
    assert_eq!(q::<String>(&mut c, &["TYPE", "u"]), "zset");
    assert_eq!(
        q::<i64>(
            &mut c,
            &["ZINTERSTORE", "i", "2", "a", "b", "WEIGHTS", "1", "0.5"]
        ),
        2
    );
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "i", "z"]), "13");
    assert_eq!(q::<i64>(&mut c, &["ZDIFFSTORE", "d", "2", "a", "a"]), 0);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "d"]), 0);
    q::<i64>(&mut c, &["ZADD", "inf", "+inf", "x"]);
    q::<i64>(&mut c, &["ZADD", "ninf", "-inf", "x"]);
    assert_eq!(
        q::<Scored>(&mut c, &["ZUNION", "2", "inf", "ninf", "WITHSCORES"]),
        pairs(&[("x", "0")]),
        "inf + -inf sums to 0, as Redis"
    );
    assert_eq!(q::<i64>(&mut c, &["ZINTERCARD", "2", "a", "b"]), 2);
    assert_eq!(
        q::<i64>(&mut c, &["ZINTERCARD", "2", "a", "b", "LIMIT", "1"]),
        1
    );
    assert_eq!(q::<i64>(&mut c, &["ZINTERCARD", "2", "a", "s"]), 1);
    q::<String>(&mut c, &["SET", "str", "v"]);
    for (args, text) in [
        (
            &["ZUNION", "0", "a"][..],
            "at least 1 input key is needed for 'zunion' command",
        ),
        (
            &["ZUNIONSTORE", "d", "0", "a"],
            "at least 1 input key is needed for 'zunionstore' command",
        ),
        (&["ZUNION", "3", "a", "b"], "syntax error"),
        (&["ZUNION", "2", "a", "str"], "WRONGTYPE"),
        (&["ZUNION", "2", "a", "b", "WEIGHTS", "1"], "syntax error"),
        (
            &["ZUNION", "2", "a", "b", "WEIGHTS", "1", "x"],
            "weight value is not a float",
        ),
        (
            &["ZUNION", "2", "a", "b", "AGGREGATE", "AVG"],
            "syntax error",
        ),
        (
            &["ZUNIONSTORE", "d", "2", "a", "b", "WITHSCORES"],
            "syntax error",
        ),
        (
            &["ZDIFF", "2", "a", "b", "WEIGHTS", "1", "1"],
            "syntax error",
        ),
        (
            &["ZINTERCARD", "2", "a", "b", "LIMIT", "-1"],
            "LIMIT can't be negative",
        ),
        (&["ZINTERCARD", "0", "a"], "at least 1 input key is needed"),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
}

#[test]
fn sorted_sets_among_the_other_types() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["ZADD", "z", "1.5", "a", "2", "b"]);
    assert_eq!(q::<String>(&mut c, &["TYPE", "z"]), "zset");
    assert_eq!(q::<String>(&mut c, &["OBJECT", "ENCODING", "z"]), "orzset");
    let (_, keys): (String, Vec<String>) = q(&mut c, &["SCAN", "0", "TYPE", "zset"]);
    assert_eq!(keys, vec!["z"]);
    q::<String>(&mut c, &["SET", "str", "v"]);
    q::<i64>(&mut c, &["SADD", "set", "m"]);
    for args in [
        &["ZADD", "str", "1", "a"][..],
        &["ZSCORE", "set", "a"],
        &["ZRANGE", "str", "0", "-1"],
        &["ZINCRBY", "set", "1", "a"],
        &["ZPOPMIN", "str"],
        &["GET", "z"],
        &["SADD", "z", "m"],
        &["HSET", "z", "f", "v"],
        &["BZPOPMIN", "str", "0"],
    ] {
        assert!(err(&mut c, args).contains("WRONGTYPE"), "{args:?}");
    }
    assert_eq!(q::<i64>(&mut c, &["COPY", "z", "z2"]), 1);
    assert_eq!(q::<String>(&mut c, &["RENAME", "z2", "z3"]), "OK");
    assert_eq!(
        q::<Vec<(String, f64)>>(&mut c, &["ZRANGE", "z3", "0", "-1", "WITHSCORES"]),
        vec![("a".to_string(), 1.5), ("b".to_string(), 2.0)]
    );
    let dump: Vec<u8> = q(&mut c, &["DUMP", "z3"]);
    let _: () = redis::cmd("RESTORE")
        .arg("z4")
        .arg(0)
        .arg(&dump)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "z4", "0", "-1", "WITHSCORES"]),
        vec!["a", "1.5", "b", "2"]
    );
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "z4", "100"]), 1);
    assert!(q::<i64>(&mut c, &["TTL", "z4"]) > 0);
    assert_eq!(q::<i64>(&mut c, &["DEL", "z4"]), 1);
    assert_eq!(q::<i64>(&mut c, &["ZCARD", "z4"]), 0);
    // A string written over a sorted set replaces it; a ZADD after starts anew.
    q::<String>(&mut c, &["SET", "z3", "now a string"]);
    assert_eq!(q::<String>(&mut c, &["TYPE", "z3"]), "string");
    assert!(err(&mut c, &["ZCARD", "z3"]).contains("WRONGTYPE"));
    q::<i64>(&mut c, &["DEL", "z3"]);
    assert_eq!(q::<i64>(&mut c, &["ZADD", "z3", "5", "c"]), 1);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "z3", "0", "-1"]),
        vec!["c"]
    );
    assert!(q::<i64>(&mut c, &["MEMORY", "USAGE", "z"]) > 0);
}

#[test]
fn resp3_replies_scores_as_doubles_and_pairs_nested() {
    let s = Server::start(&[]);
    let mut raw = s.raw();
    raw.send(&resp(&[b"HELLO", b"3"]));
    raw.read_until(b"modules\r\n*0\r\n");
    raw.roundtrip(&resp(&[b"ZADD", b"z", b"1.5", b"a", b"2", b"b"]), b":2\r\n");
    raw.roundtrip(&resp(&[b"ZSCORE", b"z", b"a"]), b",1.5\r\n");
    raw.roundtrip(&resp(&[b"ZSCORE", b"z", b"x"]), b"_\r\n");
    raw.roundtrip(
        &resp(&[b"ZRANGE", b"z", b"0", b"-1", b"WITHSCORES"]),
        b"*2\r\n*2\r\n$1\r\na\r\n,1.5\r\n*2\r\n$1\r\nb\r\n,2\r\n",
    );
    raw.roundtrip(&resp(&[b"ZPOPMIN", b"z"]), b"*2\r\n$1\r\na\r\n,1.5\r\n");
    raw.roundtrip(
        &resp(&[b"ZPOPMAX", b"z", b"1"]),
        b"*1\r\n*2\r\n$1\r\nb\r\n,2\r\n",
    );
    raw.roundtrip(&resp(&[b"BZPOPMIN", b"z", b"0.01"]), b"_\r\n");
    raw.send(&resp(&[b"HELLO", b"2"]));
    raw.read_until(b"modules\r\n*0\r\n");
    raw.roundtrip(&resp(&[b"BZPOPMIN", b"z", b"0.01"]), b"*-1\r\n");
}

#[test]
fn bzpopmin_waits_for_a_write_by_another_client() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    let mut waiter = s.conn();
    // Something to pop: answered at once, from the first key that has one.
    q::<i64>(&mut c, &["ZADD", "second", "5", "m"]);
    assert_eq!(
        q::<Vec<String>>(&mut waiter, &["BZPOPMIN", "first", "second", "1"]),
        vec!["second", "m", "5"]
    );
    // Nothing: the timeout passes and the reply is nil.
    let started = Instant::now();
    assert_eq!(
        q::<Option<Vec<String>>>(&mut waiter, &["BZPOPMAX", "first", "0.2"]),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(190));
    // A write from another client wakes it.
    let blocked = std::thread::spawn(move || {
        let got: Vec<String> = q(&mut waiter, &["BZPOPMAX", "first", "second", "0"]);
        (got, waiter)
    });
    let mut info = String::new();
    for _ in 0..500 {
        info = q(&mut c, &["INFO", "clients"]);
        if info.contains("blocked_clients:1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(info.contains("blocked_clients:1"), "{info}");
    q::<i64>(&mut c, &["ZADD", "first", "1", "low", "9", "high"]);
    let (got, mut waiter) = blocked.join().unwrap();
    assert_eq!(got, vec!["first", "high", "9"]);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "first", "0", "-1"]),
        vec!["low"]
    );
    // The connection is usable after, and blocks nothing inside MULTI.
    let _: () = redis::cmd("MULTI").query(&mut waiter).unwrap();
    let _: () = redis::cmd("BZPOPMIN")
        .arg("empty")
        .arg(0)
        .query(&mut waiter)
        .unwrap();
    let r: Vec<Option<Vec<String>>> = redis::cmd("EXEC").query(&mut waiter).unwrap();
    assert_eq!(r, vec![None]);
    for (args, text) in [
        (
            &["BZPOPMIN", "k", "x"][..],
            "timeout is not a float or out of range",
        ),
        (&["BZPOPMIN", "k", "-1"], "timeout is negative"),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
    let info: String = q(&mut c, &["INFO", "clients"]);
    assert!(info.contains("blocked_clients:0"), "{info}");

    // A key turned into another type keeps the client waiting (Redis
    // 7.0); SWAPDB bringing a sorted set under the key wakes it.
    let mut waiter = s.conn();
    let blocked = std::thread::spawn(move || {
        let got: Vec<String> = q(&mut waiter, &["BZPOPMIN", "later", "0"]);
        got
    });
    let wait_blocked = |c: &mut redis::Connection| {
        for _ in 0..500 {
            if q::<String>(c, &["INFO", "clients"]).contains("blocked_clients:1") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the client never blocked");
    };
    wait_blocked(&mut c);
    q::<()>(&mut c, &["SET", "later", "a string"]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(q::<String>(&mut c, &["INFO", "clients"]).contains("blocked_clients:1"));
    q::<()>(&mut c, &["SELECT", "1"]);
    q::<i64>(&mut c, &["ZADD", "later", "4", "swapped"]);
    q::<()>(&mut c, &["SWAPDB", "0", "1"]);
    assert_eq!(blocked.join().unwrap(), vec!["later", "swapped", "4"]);
}

/// A command that writes nothing writes nothing: no stamp moves (a peer
/// would otherwise hold a different state than the node that ran it).
#[test]
fn commands_that_change_nothing_write_nothing() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["ZADD", "z", "5", "m"]);
    q::<i64>(&mut c, &["HSET", "h", "f", "v"]);
    let at = |c: &mut redis::Connection, key: &str| -> String {
        let state: std::collections::BTreeMap<String, redis::Value> = q(c, &["CRDT.STATE", key]);
        let text = format!("{:?}", state["collection"]);
        text.split("\"at\"")
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take(60)
            .collect()
    };
    let (z0, h0) = (at(&mut c, "z"), at(&mut c, "h"));
    assert_eq!(q::<i64>(&mut c, &["ZADD", "z", "GT", "1", "m"]), 0);
    assert_eq!(q::<i64>(&mut c, &["ZADD", "z", "XX", "1", "new"]), 0);
    assert_eq!(
        q::<Option<String>>(&mut c, &["ZADD", "z", "NX", "INCR", "1", "m"]),
        None
    );
    q::<i64>(&mut c, &["ZADD", "z", "+inf", "top"]);
    let z1 = at(&mut c, "z");
    assert!(err(&mut c, &["ZINCRBY", "z", "-inf", "top"]).contains("NaN"));
    assert_eq!(at(&mut c, "z"), z1, "a refused ZINCRBY");
    assert_ne!(z0, z1);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "h", "absent"]), 0);
    assert_eq!(at(&mut c, "h"), h0, "an HDEL of an absent field");
    // An increment that overflows to infinity then meets -inf is refused:
    // no NaN is ever stored by one node.
    q::<i64>(&mut c, &["ZADD", "o", "-inf", "m"]);
    assert_eq!(q::<String>(&mut c, &["ZINCRBY", "o", "1e308", "m"]), "-inf");
    assert!(err(&mut c, &["ZINCRBY", "o", "1e308", "m"]).contains("NaN"));
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "o", "m"]), "-inf");
    // Redis's order of checks and layouts.
    q::<()>(&mut c, &["SET", "str", "x"]);
    assert!(err(&mut c, &["ZPOPMIN", "str", "0"]).contains("WRONGTYPE"));
    assert_eq!(
        q::<Vec<String>>(&mut c, &["ZRANGE", "z", "0", "-1", "LIMIT", "0", "-1"]),
        vec!["m", "top"]
    );
    assert!(err(&mut c, &["ZRANDMEMBER", "z", "abc", "foo"]).contains("value is not an integer"));
    assert!(err(
        &mut c,
        &["ZRANDMEMBER", "z", "-9223372036854775807", "WITHSCORES"]
    )
    .contains("value is out of range"));
    q::<i64>(
        &mut c,
        &[
            "ZADD", "f", "1e300", "big", "-1.5e-7", "tiny", "-0", "negzero",
        ],
    );
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "f", "big"]), "1e+300");
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "f", "tiny"]), "-1.5e-07");
    assert_eq!(q::<String>(&mut c, &["ZSCORE", "f", "negzero"]), "-0");
}

#[test]
fn sort_orders_sets_and_sorted_sets() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["SADD", "nums", "10", "2", "33", "-1"]);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SORT", "nums"]),
        vec!["-1", "2", "10", "33"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SORT", "nums", "DESC", "LIMIT", "1", "2"]),
        vec!["10", "2"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SORT_RO", "nums", "ALPHA"]),
        vec!["-1", "10", "2", "33"]
    );
    q::<i64>(&mut c, &["SADD", "words", "b", "a", "c"]);
    assert!(err(&mut c, &["SORT", "words"])
        .contains("One or more scores can't be converted into double"));
    // BY and GET through string keys and hash fields; # is the element.
    q::<i64>(
        &mut c,
        &["ZADD", "users", "1", "ann", "2", "bob", "3", "cy"],
    );
    for (u, age, name) in [
        ("ann", "40", "Ann"),
        ("bob", "20", "Bob"),
        ("cy", "30", "Cy"),
    ] {
        q::<()>(&mut c, &["SET", &format!("age:{u}"), age]);
        q::<i64>(&mut c, &["HSET", &format!("user:{u}"), "name", name]);
    }
    assert_eq!(
        q::<Vec<String>>(
            &mut c,
            &[
                "SORT",
                "users",
                "BY",
                "age:*",
                "GET",
                "#",
                "GET",
                "user:*->name"
            ]
        ),
        vec!["bob", "Bob", "cy", "Cy", "ann", "Ann"]
    );
    assert_eq!(
        q::<Vec<Option<String>>>(
            &mut c,
            &["SORT", "users", "BY", "nosort", "GET", "missing:*"]
        ),
        vec![None, None, None],
        "BY without * keeps the sorted set's order; a missing GET key is nil"
    );
    assert_eq!(
        q::<Vec<String>>(
            &mut c,
            &["SORT", "users", "BY", "user:*->name", "ALPHA", "DESC"]
        ),
        vec!["cy", "bob", "ann"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["SORT", "absent"]),
        Vec::<String>::new()
    );
    q::<()>(&mut c, &["SET", "str", "x"]);
    assert!(err(&mut c, &["SORT", "str"]).contains("WRONGTYPE"));
    assert!(err(&mut c, &["SORT", "nums", "LIMIT", "1"]).contains("syntax error"));
    assert!(err(&mut c, &["SORT_RO", "nums", "STORE", "dst"]).contains("syntax error"));
    assert_eq!(q::<i64>(&mut c, &["SORT", "nums", "STORE", "dst"]), 4);
    assert_eq!(q::<String>(&mut c, &["TYPE", "dst"]), "list");
}

/// ZPOPMIN and ZPOPMAX with a count of 0 check the key's type first, as
/// Redis does (a differential run found them answering an empty array).
#[test]
fn a_pop_of_zero_members_checks_the_type_first() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "s", "v"]);
    q::<i64>(&mut c, &["HSET", "h", "f", "v"]);
    for cmd in ["ZPOPMIN", "ZPOPMAX"] {
        for key in ["s", "h"] {
            assert!(
                err(&mut c, &[cmd, key, "0"]).contains("WRONGTYPE"),
                "{cmd} {key}"
            );
        }
        assert!(q::<Vec<String>>(&mut c, &[cmd, "nokey", "0"]).is_empty());
    }
    q::<i64>(&mut c, &["ZADD", "z", "1", "a"]);
    assert!(q::<Vec<String>>(&mut c, &["ZPOPMIN", "z", "0"]).is_empty());
    assert_eq!(q::<i64>(&mut c, &["ZCARD", "z"]), 1);
}

type MPopped = Option<(String, Vec<(String, String)>)>;

/// ZMPOP and BZMPOP (Redis 7.0; a differential run found them missing):
/// the first of the keys holding members, MIN or MAX, COUNT; nil when none
/// holds any; Redis's errors; BZMPOP woken by another client's write.
#[test]
fn zmpop_and_bzmpop_follow_redis() {
    let s = Server::start(&[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["ZADD", "z", "1", "a", "2", "b", "3", "c"]);
    q::<i64>(&mut c, &["ZADD", "y", "5", "e"]);
    let pair = |m: &str, s: &str| (m.to_string(), s.to_string());
    assert_eq!(
        q::<MPopped>(
            &mut c,
            &["ZMPOP", "3", "nokey", "z", "y", "MIN", "COUNT", "2"]
        ),
        Some(("z".into(), vec![pair("a", "1"), pair("b", "2")]))
    );
    assert_eq!(
        q::<MPopped>(&mut c, &["ZMPOP", "1", "z", "max", "COUNT", "10"]),
        Some(("z".into(), vec![pair("c", "3")]))
    );
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "z"]), 0, "emptied, deleted");
    assert_eq!(
        q::<MPopped>(&mut c, &["ZMPOP", "2", "z", "y", "MAX"]),
        Some(("y".into(), vec![pair("e", "5")]))
    );
    assert_eq!(q::<MPopped>(&mut c, &["ZMPOP", "2", "z", "y", "MIN"]), None);
    q::<()>(&mut c, &["SET", "s", "v"]);
    for (args, text) in [
        (
            &["ZMPOP", "0", "z", "MIN"][..],
            "numkeys should be greater than 0",
        ),
        (
            &["ZMPOP", "1", "z", "MIN", "COUNT", "0"],
            "count should be greater than 0",
        ),
        (&["ZMPOP", "1", "z", "MIDDLE"], "syntax error"),
        (&["ZMPOP", "2", "z", "MIN"], "syntax error"),
        (
            &["ZMPOP", "1", "z", "MIN", "COUNT", "1", "COUNT", "1"],
            "syntax error",
        ),
        (&["ZMPOP", "2", "nokey", "s", "MIN"], "WRONGTYPE"),
        (
            &["BZMPOP", "x", "1", "z", "MIN"],
            "timeout is not a float or out of range",
        ),
        (&["BZMPOP", "-1", "1", "z", "MIN"], "timeout is negative"),
        // As Redis, the keys, the end and the count come before the timeout.
        (
            &["BZMPOP", "x", "0", "z", "MIN"],
            "numkeys should be greater than 0",
        ),
        (
            &["BLMPOP", "x", "0", "z", "LEFT"],
            "numkeys should be greater than 0",
        ),
    ] {
        let e = err(&mut c, args);
        assert!(e.contains(text), "{args:?}: {e}");
    }
    // RESP3: the score is a double.
    let mut raw = s.raw();
    raw.hello3();
    raw.roundtrip(&resp(&[b"ZADD", b"r", b"1.5", b"m"]), b":1\r\n");
    raw.roundtrip(
        &resp(&[b"ZMPOP", b"1", b"r", b"MIN"]),
        b"*2\r\n$1\r\nr\r\n*1\r\n*2\r\n$1\r\nm\r\n,1.5\r\n",
    );
    raw.roundtrip(&resp(&[b"ZMPOP", b"1", b"r", b"MIN"]), b"_\r\n");

    // BZMPOP: at once when a key holds members, nil at the timeout,
    // woken by a write from another client.
    let mut waiter = s.conn();
    q::<i64>(&mut c, &["ZADD", "w", "1", "x"]);
    assert_eq!(
        q::<MPopped>(&mut waiter, &["BZMPOP", "1", "2", "v", "w", "MIN"]),
        Some(("w".into(), vec![pair("x", "1")]))
    );
    let started = Instant::now();
    assert_eq!(
        q::<MPopped>(&mut waiter, &["BZMPOP", "0.2", "1", "w", "MIN"]),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(190));
    let blocked = std::thread::spawn(move || {
        q::<MPopped>(
            &mut waiter,
            &["BZMPOP", "0", "2", "v", "w", "MAX", "COUNT", "5"],
        )
    });
    let mut waiting = false;
    for _ in 0..500 {
        if q::<String>(&mut c, &["INFO", "clients"]).contains("blocked_clients:1") {
            waiting = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(waiting, "the client never blocked");
    q::<i64>(&mut c, &["ZADD", "w", "1", "low", "9", "high"]);
    assert_eq!(
        blocked.join().unwrap(),
        Some(("w".into(), vec![pair("high", "9"), pair("low", "1")]))
    );
}
