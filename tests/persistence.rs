//! Real `chorus` processes with `appendonly yes`: killed without warning
//! or shut down, restarted on the same `dir`, they come back with their data.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{q, store_cuts, Server};

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-persist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create data dir");
    dir
}

fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
    let dir = dir.to_str().expect("utf-8 temp dir");
    let mut args = vec!["--appendonly", "yes", "--dir", dir];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn get(c: &mut redis::Connection, key: &str) -> Option<String> {
    q(c, &["GET", key])
}

fn kill_hard(mut s: Server) {
    let _ = s.child.kill();
    let _ = s.child.wait();
}

fn info_field(c: &mut redis::Connection, field: &str) -> u64 {
    section_field(c, "persistence", field)
}

fn section_field(c: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = q(c, &["INFO", section]);
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {info}"))
}

/// Waits until the delta log is durable past every write acknowledged so
/// far (`appendfsync everysec`: within a second).
fn wait_for_log_sync(c: &mut redis::Connection) {
    let appended = info_field(c, "log_appended_offset");
    let deadline = Instant::now() + Duration::from_secs(30);
    while info_field(c, "log_durable_offset") < appended {
        assert!(Instant::now() < deadline, "the log was not synced");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_node_restarts_with_what_its_last_cut_stored() {
    let dir = data_dir("kill");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "name", "chorus"]);
    q::<()>(&mut c, &["SET", "volatile", "v", "EX", "1000"]);
    q::<()>(&mut c, &["INCRBY", "visits", "41"]);
    q::<()>(&mut c, &["INCR", "visits"]);
    q::<()>(&mut c, &["SET", "gone", "x"]);
    q::<()>(&mut c, &["DEL", "gone"]);
    q::<()>(&mut c, &["SELECT", "5"]);
    q::<()>(&mut c, &["SET", "in-db5", "y"]);
    let info: String = q(&mut c, &["INFO", "persistence"]);
    assert!(info.contains("storage_provider:redb"), "{info}");
    // Folded into the store: the restart reads it from there.
    q::<()>(&mut c, &["SAVE"]);
    kill_hard(s);

    let s = start(&dir, &[]);
    let mut c = s.conn();
    assert_eq!(get(&mut c, "name").as_deref(), Some("chorus"));
    assert_eq!(q::<i64>(&mut c, &["GET", "visits"]), 42);
    assert_eq!(
        q::<i64>(&mut c, &["INCR", "visits"]),
        43,
        "the counter goes on"
    );
    assert!(
        q::<i64>(&mut c, &["TTL", "volatile"]) > 900,
        "the expiry is kept"
    );
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "gone"]), None);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 3);
    q::<()>(&mut c, &["SELECT", "5"]);
    assert_eq!(get(&mut c, "in-db5").as_deref(), Some("y"));
    let config: Vec<String> = q(&mut c, &["CONFIG", "GET", "appendonly"]);
    assert_eq!(config, vec!["appendonly", "yes"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flush_survives_a_restart() {
    let dir = data_dir("flush");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    for i in 0..50 {
        q::<()>(&mut c, &["SET", &format!("k{i}"), "v"]);
    }
    q::<()>(&mut c, &["SAVE"]);
    // In the log only: the restart merges the flush over the stored keys.
    q::<()>(&mut c, &["FLUSHALL"]);
    q::<()>(&mut c, &["SET", "after", "1"]);
    wait_for_log_sync(&mut c);
    kill_hard(s);
    let s = start(&dir, &[]);
    let mut c = s.conn();
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 1);
    assert_eq!(get(&mut c, "after").as_deref(), Some("1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shutdown_stores_the_writes_since_the_last_cut() {
    let dir = data_dir("shutdown");
    let mut s = start(&dir, &[]);
    // Written and shut down at once: no periodic cut can have taken it.
    let mut raw = s.raw();
    raw.send(&common::resp(&[b"SET", b"last", b"words"]));
    raw.read_until(b"+OK\r\n");
    raw.send(&common::resp(&[b"SHUTDOWN"]));
    s.wait_exit(Duration::from_secs(10))
        .expect("SHUTDOWN stops the server");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    assert_eq!(get(&mut c, "last").as_deref(), Some("words"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn appendfsync_always_stores_a_write_before_replying() {
    let dir = data_dir("always");
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "acked", "1"]);
    // Killed right after the reply: only a cut before it can have kept it.
    kill_hard(s);
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    assert_eq!(get(&mut c, "acked").as_deref(), Some("1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_appendonly_a_restart_starts_empty() {
    let dir = data_dir("off");
    let d = dir.to_str().unwrap();
    let s = Server::start(&["--dir", d]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "v"]);
    std::thread::sleep(Duration::from_millis(1_200));
    kill_hard(s);
    let s = Server::start(&["--dir", d]);
    let mut c = s.conn();
    assert_eq!(q::<Option<String>>(&mut c, &["GET", "k"]), None);
    assert!(!dir.join("chorus.redb").exists(), "nothing written to disk");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_nodes_on_one_dir_or_a_bad_setting_are_refused_at_start() {
    let dir = data_dir("locked");
    let d = dir.to_str().unwrap();
    let _first = start(&dir, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["server", "--port", "0", "--appendonly", "yes", "--dir", d])
        .output()
        .expect("run chorus");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the data store"), "{stderr}");

    for (name, value) in [("--appendonly", "maybe"), ("--appendfsync", "sometimes")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["server", "--port", "0", name, value])
            .output()
            .expect("run chorus");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&name[2..]) && stderr.contains(value),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// #11 item 8: SWAPDB moved the databases in memory but not in the store,
/// so a restart silently un-swapped every key not written since. Also
/// covered: a flush floor moved by the swap (the store kept the larger of
/// the two at both numbers, pruning the other database's keys) and a key
/// deleted just before the swap (it came back where it had been).
#[test]
fn swapdb_survives_a_restart() {
    let dir = data_dir("swapdb");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    let in_db = |c: &mut redis::Connection, db: &str, key: &str| -> Option<String> {
        q::<()>(c, &["SELECT", db]);
        get(c, key)
    };
    q::<()>(&mut c, &["SET", "was-in-0", "a"]);
    q::<()>(&mut c, &["SET", "deleted-in-0", "x"]);
    q::<()>(&mut c, &["SELECT", "1"]);
    q::<()>(&mut c, &["SET", "was-in-1", "b"]);
    q::<()>(&mut c, &["SAVE"]);
    q::<()>(&mut c, &["SELECT", "2"]);
    q::<()>(&mut c, &["SET", "gone", "1"]);
    q::<()>(&mut c, &["FLUSHDB"]);
    q::<()>(&mut c, &["SELECT", "0"]);
    q::<()>(&mut c, &["DEL", "deleted-in-0"]);
    q::<()>(&mut c, &["SWAPDB", "1", "2"]);
    q::<()>(&mut c, &["SWAPDB", "0", "3"]);
    // The swaps in the log among the writes around them, not in the store.
    wait_for_log_sync(&mut c);
    kill_hard(s);

    let s = start(&dir, &[]);
    let mut c = s.conn();
    assert_eq!(
        q::<i64>(&mut c, &["DBSIZE"]),
        0,
        "db 0 swapped with the empty db 3"
    );
    assert_eq!(in_db(&mut c, "2", "was-in-1").as_deref(), Some("b"));
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 1);
    assert_eq!(in_db(&mut c, "1", "was-in-1"), None);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 0);
    assert_eq!(in_db(&mut c, "3", "was-in-0").as_deref(), Some("a"));
    assert_eq!(
        get(&mut c, "deleted-in-0"),
        None,
        "the delete before the swap holds"
    );
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 1);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `appendfsync always`: a SWAPDB that replied OK is on disk.
#[test]
fn swapdb_under_appendfsync_always_is_durable_at_once() {
    let dir = data_dir("swapdb-always");
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "v"]);
    q::<()>(&mut c, &["SWAPDB", "0", "3"]);
    kill_hard(s);
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    assert_eq!(get(&mut c, "k"), None);
    q::<()>(&mut c, &["SELECT", "3"]);
    assert_eq!(get(&mut c, "k").as_deref(), Some("v"));
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes pipelined with a SWAPDB, in one batch, land on the side of the
/// swap they were made on after a restart from the log.
#[test]
fn writes_pipelined_around_a_swapdb_survive_a_kill_on_their_side_of_it() {
    let dir = data_dir("swapdb-pipelined");
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    let () = redis::pipe()
        .cmd("SET")
        .arg("before")
        .arg("v")
        .ignore()
        .cmd("SWAPDB")
        .arg("0")
        .arg("1")
        .ignore()
        .cmd("SET")
        .arg("after")
        .arg("w")
        .ignore()
        .query(&mut c)
        .unwrap();
    kill_hard(s);
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    assert_eq!(get(&mut c, "before"), None, "swapped out of db 0");
    assert_eq!(get(&mut c, "after").as_deref(), Some("w"));
    q::<()>(&mut c, &["SELECT", "1"]);
    assert_eq!(get(&mut c, "before").as_deref(), Some("v"));
    assert_eq!(get(&mut c, "after"), None);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// #14: between folds the delta log keeps every write: killed with no fold
/// since the start, the node comes back with strings, counters, hashes,
/// sets, sorted sets, expiries, deletes and a flush as they were.
#[test]
fn writes_survive_a_kill_between_folds_through_the_delta_log() {
    let dir = data_dir("log-everysec");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "s", "v"]);
    q::<()>(&mut c, &["SET", "ttl", "v", "EX", "1000"]);
    q::<()>(&mut c, &["INCRBY", "n", "41"]);
    q::<()>(&mut c, &["INCR", "n"]);
    q::<()>(&mut c, &["INCRBYFLOAT", "f", "1.25"]);
    q::<()>(&mut c, &["INCRBYFLOAT", "f", "1.5"]);
    q::<()>(&mut c, &["HSET", "h", "f1", "a", "f2", "old"]);
    // One field at a time (a delta laid out without a delta `Coll`).
    q::<()>(&mut c, &["HSET", "h", "f2", "b"]);
    // Several fields of a hash there (a `ManyWrite`, laid out directly).
    q::<()>(&mut c, &["HSET", "h", "f1", "a", "f3", "c"]);
    q::<()>(&mut c, &["HSET", "h1", "only", "one"]);
    q::<()>(&mut c, &["HINCRBY", "h", "count", "7"]);
    q::<()>(&mut c, &["SADD", "set", "x", "y", "z"]);
    q::<()>(&mut c, &["SREM", "set", "y"]);
    q::<()>(&mut c, &["SADD", "set", "w"]);
    q::<()>(&mut c, &["SADD", "set", "x", "q"]);
    q::<()>(&mut c, &["ZADD", "z", "1", "one", "2", "two"]);
    q::<()>(&mut c, &["ZINCRBY", "z", "5", "one"]);
    q::<()>(&mut c, &["ZADD", "z", "3", "three"]);
    q::<()>(&mut c, &["ZADD", "z", "4", "four", "5", "five"]);
    q::<()>(&mut c, &["SET", "deleted", "x"]);
    q::<()>(&mut c, &["DEL", "deleted"]);
    q::<()>(&mut c, &["SELECT", "2"]);
    q::<()>(&mut c, &["SET", "flushed", "x"]);
    q::<()>(&mut c, &["FLUSHDB"]);
    q::<()>(&mut c, &["SET", "after-flush", "y"]);
    wait_for_log_sync(&mut c);
    assert_eq!(
        store_cuts(&mut c),
        0,
        "no fold yet: only the log holds them"
    );
    assert!(info_field(&mut c, "aof_current_size") > 0);
    kill_hard(s);

    let s = start(&dir, &[]);
    let mut c = s.conn();
    assert_eq!(get(&mut c, "s").as_deref(), Some("v"));
    assert!(q::<i64>(&mut c, &["TTL", "ttl"]) > 900);
    assert_eq!(q::<i64>(&mut c, &["INCR", "n"]), 43, "the counter goes on");
    assert_eq!(get(&mut c, "f").as_deref(), Some("2.75"));
    let h: Vec<String> = q(&mut c, &["HMGET", "h", "f1", "f2", "f3", "count"]);
    assert_eq!(h, ["a", "b", "c", "7"]);
    let h1: Vec<(String, String)> = q(&mut c, &["HGETALL", "h1"]);
    assert_eq!(h1, [("only".to_string(), "one".to_string())]);
    let mut members: Vec<String> = q(&mut c, &["SMEMBERS", "set"]);
    members.sort();
    assert_eq!(members, ["q", "w", "x", "z"]);
    let z: Vec<String> = q(&mut c, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]);
    assert_eq!(
        z,
        ["two", "2", "three", "3", "four", "4", "five", "5", "one", "6"]
    );
    assert_eq!(get(&mut c, "deleted"), None);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]), 8);
    q::<()>(&mut c, &["SELECT", "2"]);
    assert_eq!(get(&mut c, "flushed"), None);
    assert_eq!(get(&mut c, "after-flush").as_deref(), Some("y"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// #14: `appendfsync always`: a client's reply waits for the fsync that
/// covers its write, so a node killed in the middle of a stream of writes
/// from several clients comes back with every write any of them saw
/// acknowledged.
#[test]
fn every_acknowledged_write_survives_a_kill_mid_stream_under_appendfsync_always() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = data_dir("log-always");
    let s = start(&dir, &["--appendfsync", "always"]);
    let acked: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let writers: Vec<_> = acked
        .iter()
        .enumerate()
        .map(|(w, acked)| {
            let mut c = s.conn();
            let acked = acked.clone();
            std::thread::spawn(move || {
                for batch in 0.. {
                    let mut p = redis::pipe();
                    for i in batch * 10..(batch + 1) * 10 {
                        p.cmd("SET").arg(format!("w{w}:{i}")).arg(i).ignore();
                        p.cmd("HINCRBY")
                            .arg(format!("h{w}"))
                            .arg("n")
                            .arg(1)
                            .ignore();
                    }
                    if p.query::<()>(&mut c).is_err() {
                        return;
                    }
                    acked.store((batch + 1) * 10, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.iter().any(|a| a.load(Ordering::SeqCst) < 100) {
        assert!(Instant::now() < deadline, "the writers made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_hard(s);
    for w in writers {
        w.join().expect("writer");
    }
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    for (w, acked) in acked.iter().enumerate() {
        let acked = acked.load(Ordering::SeqCst);
        for i in 0..acked {
            assert_eq!(
                q::<Option<i64>>(&mut c, &["GET", &format!("w{w}:{i}")]),
                Some(i as i64),
                "writer {w}'s acknowledged write {i}"
            );
        }
        let n: i64 = q(&mut c, &["HGET", &format!("h{w}"), "n"]);
        assert!(
            n as usize >= acked,
            "writer {w}: {n} increments of {acked} acknowledged"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn log_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("chorus.deltas"))
        .expect("the delta log directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    files.sort();
    files
}

/// #14: a log cut short at its end (a crash mid-write) loses only the cut
/// record; a log that does not read back stops the start, naming its file.
#[test]
fn a_torn_log_tail_is_dropped_and_a_corrupt_log_stops_the_start_with_its_path() {
    let dir = data_dir("log-corrupt");
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "first", "1"]);
    q::<()>(&mut c, &["SET", "second", "2"]);
    kill_hard(s);
    let files = log_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let log = &files[0];
    let len = std::fs::metadata(log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)
        .unwrap()
        .set_len(len - 2)
        .unwrap();
    let s = start(&dir, &["--appendfsync", "always"]);
    let mut c = s.conn();
    assert_eq!(get(&mut c, "first").as_deref(), Some("1"));
    assert_eq!(get(&mut c, "second"), None, "the record cut short");
    drop(c);
    kill_hard(s);

    let mut bytes = std::fs::read(log).unwrap();
    bytes[10] ^= 0x55;
    std::fs::write(log, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["server", "--port", "0", "--appendonly", "yes"])
        .args(["--dir", dir.to_str().unwrap()])
        .output()
        .expect("run chorus");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// #14: SAVE folds everything into the store before it replies, BGSAVE
/// and BGREWRITEAOF start one, LASTSAVE moves; a node without a store
/// says so.
#[test]
fn save_and_bgsave_fold_the_log_into_the_store() {
    let dir = data_dir("save");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "v"]);
    assert_eq!(store_cuts(&mut c), 0);
    assert_eq!(info_field(&mut c, "store_last_cut_usec"), 0);
    assert_eq!(q::<String>(&mut c, &["SAVE"]), "OK");
    assert_eq!(store_cuts(&mut c), 1);
    assert!(info_field(&mut c, "store_disk_bytes") > 0);
    // A fold stores and syncs: it takes some time, and says how long.
    assert!(info_field(&mut c, "store_last_cut_usec") > 0);
    let last: i64 = q(&mut c, &["LASTSAVE"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - last).abs() <= 2, "LASTSAVE {last}, now {now}");
    assert_eq!(
        q::<String>(&mut c, &["BGSAVE"]),
        "Background saving started"
    );
    assert_eq!(
        q::<String>(&mut c, &["BGREWRITEAOF"]),
        "Background append only file rewriting started"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while store_cuts(&mut c) < 3 {
        assert!(Instant::now() < deadline, "BGSAVE folded nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(common::err(&mut c, &["BGSAVE", "NOW"]).contains("syntax"));
    q::<()>(&mut c, &["MULTI"]);
    assert!(common::err(&mut c, &["SAVE"]).contains("not allowed inside a transaction"));
    q::<()>(&mut c, &["DISCARD"]);
    let plain = Server::start(&[]);
    let mut p = plain.conn();
    assert!(common::err(&mut p, &["SAVE"]).contains("appendonly yes"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node that keeps a log and has no peers drops a delete's tombstone at
/// once, as one in memory does (the log's sink once held every tombstone
/// for good: nothing but replication ever let them go).
#[test]
fn a_standalone_node_with_a_log_keeps_no_tombstones() {
    let dir = data_dir("tombstones");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    q::<()>(&mut c, &["SET", "k", "v"]);
    q::<()>(&mut c, &["DEL", "k"]);
    q::<()>(&mut c, &["SET", "e", "v", "PX", "1"]);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(get(&mut c, "e"), None);
    for key in ["k", "e"] {
        assert_eq!(
            q::<redis::Value>(&mut c, &["CRDT.STATE", key]),
            redis::Value::Nil,
            "{key} left a tombstone"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// #15: a list comes back whole after kill -9, its part in the store and
/// its later pops, sets and pushes from the delta log; pushes after the
/// restart land at its ends.
#[test]
fn a_list_survives_a_hard_kill_from_store_and_log() {
    let dir = data_dir("list");
    let s = start(&dir, &[]);
    let mut c = s.conn();
    q::<i64>(&mut c, &["RPUSH", "l", "a", "b", "c", "d"]);
    q::<()>(&mut c, &["SAVE"]);
    q::<Option<String>>(&mut c, &["LPOP", "l"]);
    q::<()>(&mut c, &["LSET", "l", "1", "C"]);
    q::<i64>(&mut c, &["LPUSH", "l", "head"]);
    q::<i64>(&mut c, &["LINSERT", "l", "AFTER", "b", "b2"]);
    let before: Vec<String> = q(&mut c, &["LRANGE", "l", "0", "-1"]);
    assert_eq!(before, ["head", "b", "b2", "C", "d"]);
    wait_for_log_sync(&mut c);
    kill_hard(s);
    let s = start(&dir, &[]);
    let mut c = s.conn();
    assert_eq!(
        q::<Vec<String>>(&mut c, &["LRANGE", "l", "0", "-1"]),
        before
    );
    q::<i64>(&mut c, &["RPUSH", "l", "tail"]);
    q::<i64>(&mut c, &["LPUSH", "l", "first"]);
    assert_eq!(
        q::<Vec<String>>(&mut c, &["LRANGE", "l", "0", "-1"]),
        ["first", "head", "b", "b2", "C", "d", "tail"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn memory_field(c: &mut redis::Connection, field: &str) -> u64 {
    section_field(c, "memory", field)
}

/// The delta log's buffers are left out of what `maxmemory` bounds, as
/// Redis leaves out its AOF buffer, and go back once the log is idle:
/// counted and held, a burst's buffers took a cache's room for good.
#[test]
fn the_logs_buffers_are_left_out_of_maxmemory_and_go_back_when_idle() {
    let dir = data_dir("buffers");
    let s = start(&dir, &["--maxmemory-policy", "noeviction"]);
    let mut c = s.conn();
    let base = memory_field(&mut c, "used_memory");
    let limit = base + 3_000_000;
    let _: () = q(&mut c, &["CONFIG", "SET", "maxmemory", &limit.to_string()]);
    // 2 MB in the keyspace and as much on its way to the log, in writes
    // of 250 KB (one of 2 MB would leave the connection's input buffer
    // that large, which maxmemory counts, as Redis counts query buffers).
    let value = "x".repeat(250_000);
    for i in 0..8 {
        let _: () = q(&mut c, &["SET", &format!("big:{i}"), &value]);
    }
    let counted = |c: &mut redis::Connection| {
        memory_field(c, "used_memory") - memory_field(c, "mem_not_counted_for_evict")
    };
    let now = counted(&mut c);
    assert!(
        now < base + 2_600_000,
        "{now} counted from {base}: the log's buffers counted"
    );
    let _: () = q(&mut c, &["SET", "small", "v"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while memory_field(&mut c, "mem_not_counted_for_evict") > 64 * 1024 {
        assert!(Instant::now() < deadline, "an idle log held its buffers");
        std::thread::sleep(Duration::from_millis(20));
    }
    let used = memory_field(&mut c, "used_memory");
    assert!(used < base + 2_600_000, "{used} bytes used by 2 MB of data");
    let _ = std::fs::remove_dir_all(&dir);
}
