//! Existing Redis and KeyDB config files start a real `chorus` unchanged
//! (but for what a test on a shared machine must change), and every
//! parameter of the installed Redis 7.x is known.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::q;

const STOCK_REDIS_CONF: &str = "/etc/redis/redis.conf";

/// A port free on 127.0.0.1 and, where the machine has IPv6, on ::1 (the
/// stock file binds both), whose replication port (+10000) is free too.
fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Another range than tests/replication.rs, so the two never race.
    let _ = NEXT.compare_exchange(
        0,
        30_000 + (std::process::id() % 5_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = 30_000 + (p - 30_000) % 5_000;
        let v6_free = !ipv6_loopback() || TcpListener::bind(("::1", p)).is_ok();
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && v6_free
            && UdpSocket::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
}

fn ipv6_loopback() -> bool {
    TcpListener::bind(("::1", 0)).is_ok()
}

/// A directory of this test's, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("chorus-configs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file the test needs from the machine's redis-server package: under CI
/// (where .ci/run installs it) its absence fails the test; elsewhere the
/// test is skipped, loudly.
fn required_from_package(what: &str, found: Result<String, String>) -> Option<String> {
    match found {
        Ok(v) => Some(v),
        Err(e) if std::env::var_os("CI").is_some() => panic!(
            "{what} is not available ({e}): .ci/run must install Debian's redis-server \
             package (apt-get install redis-server redis-tools)"
        ),
        Err(e) => {
            eprintln!(
                "\n**********************************************************************\n\
                 SKIPPED: {what} is not available ({e}).\n\
                 Install Debian's redis-server package to run this test.\n\
                 **********************************************************************\n"
            );
            None
        }
    }
}

/// A process this test started, killed when dropped.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    what: String,
    /// Its data directory, removed once the process is dead (fields drop
    /// after `Drop::drop` ran).
    dir: Option<TempDir>,
}

impl Proc {
    fn spawn(mut command: Command, what: &str) -> Proc {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(pipe) = child.stderr.take() {
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().expect("stderr lines").push(line);
                }
            });
        }
        Proc {
            child,
            stderr,
            what: what.to_string(),
            dir: None,
        }
    }

    /// Waits until the process accepts connections on 127.0.0.1:`port`.
    fn wait_listening(&mut self, port: u16, log: Option<&Path>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = log
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                panic!(
                    "{} is not listening on port {port} (exit: {exited:?})\nstderr:\n{}\nlog:\n{log}",
                    self.what,
                    self.stderr.lock().expect("stderr lines").join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chorus(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chorus"));
    c.arg("server").args(args);
    c
}

fn connect(url: &str) -> redis::Connection {
    let con = redis::Client::open(url)
        .expect("client")
        .get_connection()
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    con.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    con
}

/// Rewrites the value of `directive` on its one line in `text`.
fn rewrite(text: &str, directive: &str, value: &str) -> String {
    let mut found = 0;
    let out: Vec<String> = text
        .lines()
        .map(|line| {
            if line.split_whitespace().next() == Some(directive) {
                found += 1;
                format!("{directive} {value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_eq!(
        found, 1,
        "expected one '{directive}' line in the stock file"
    );
    out.join("\n") + "\n"
}

#[test]
fn debians_stock_redis_conf_starts() {
    let Some(stock) = required_from_package(
        STOCK_REDIS_CONF,
        std::fs::read_to_string(STOCK_REDIS_CONF).map_err(|e| e.to_string()),
    ) else {
        return;
    };
    let tmp = TempDir::new("stock");
    let dir = &tmp.0;
    let port = free_port();
    // Only what two servers on one machine cannot share changes: the port,
    // and daemonize (chorus does not fork; the stock file says yes, and
    // Debian's own unit overrides it with --daemonize no too). The stock
    // logfile under /var/log/redis needs the redis user's rights and would
    // mix our lines into the system's log, so it moves to a temp dir.
    // dir /var/lib/redis and the pidfile stay: with appendonly no chorus
    // writes nothing in dir, and pidfile is an ignored directive.
    let mut conf = rewrite(&stock, "port", &port.to_string());
    conf = rewrite(&conf, "daemonize", "no");
    let log = dir.join("redis-server.log");
    conf = rewrite(&conf, "logfile", &format!("\"{}\"", log.display()));
    // The stock `bind 127.0.0.1 -::1` stays: ::1 is optional ('-'), so a
    // host without IPv6 starts on 127.0.0.1 alone.
    let file = dir.join("redis.conf");
    std::fs::write(&file, conf).expect("write config");

    let file_arg = file.to_str().expect("utf-8 temp path");
    let mut server = Proc::spawn(chorus(&[file_arg]), "chorus with the stock redis.conf");
    server.wait_listening(port, Some(&log));

    let mut c = connect(&format!("redis://127.0.0.1:{port}/"));
    assert_eq!(q::<String>(&mut c, &["PING"]), "PONG");
    let hz: Vec<String> = q(&mut c, &["CONFIG", "GET", "hz"]);
    assert_eq!(hz, vec!["hz", "10"]);
    let limits: Vec<String> = q(&mut c, &["CONFIG", "GET", "client-output-buffer-limit"]);
    assert_eq!(
        limits[1], "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60",
        "the stock file's limits, as Redis shows them"
    );
    // The tuning knobs Chorus does not use are listed once, at start-up.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let listings: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("ignored directives (no meaning in Chorus):"))
        .collect();
    assert_eq!(listings.len(), 1, "{logged}");
    for knob in ["hz", "lazyfree-lazy-eviction", "hash-max-listpack-entries"] {
        assert!(
            listings[0].contains(knob),
            "{knob} not listed: {}",
            listings[0]
        );
    }
    q::<()>(&mut c, &["SET", "migrated", "yes"]);
    assert_eq!(q::<String>(&mut c, &["GET", "migrated"]), "yes");
    if ipv6_loopback() {
        let mut c6 = connect(&format!("redis://[::1]:{port}/"));
        assert_eq!(q::<String>(&mut c6, &["PING"]), "PONG");
    }
}

const SECRET: &str = "keydb-pair-secret";

/// keydb.conf as KeyDB's active-replica article writes it, with the usual
/// lines of KeyDB's sample keydb.conf around it.
fn keydb_conf(port: u16, peer: u16, dir: &Path) -> String {
    format!(
        r#"# KeyDB active-replica node
bind 0.0.0.0
protected-mode yes
port {port}
tcp-backlog 511
timeout 0
tcp-keepalive 300
daemonize no
supervised no
pidfile /var/run/keydb/keydb_{port}.pid
loglevel notice
logfile ""
databases 16
always-show-logo yes
save 900 1
save 300 10
save 60 10000
stop-writes-on-bgsave-error yes
rdbcompression yes
rdbchecksum yes
dbfilename dump.rdb
dir "{dir}"
replica-serve-stale-data yes
replica-read-only no
repl-diskless-sync no
repl-diskless-sync-delay 5
repl-disable-tcp-nodelay no
replica-priority 100
requirepass {SECRET}
masterauth {SECRET}
lazyfree-lazy-eviction no
lazyfree-lazy-expire no
lazyfree-lazy-server-del no
replica-lazy-flush no
appendonly yes
appendfilename "appendonly.aof"
appendfsync everysec
no-appendfsync-on-rewrite no
auto-aof-rewrite-percentage 100
auto-aof-rewrite-min-size 64mb
aof-load-truncated yes
aof-use-rdb-preamble yes
lua-time-limit 5000
slowlog-log-slower-than 10000
slowlog-max-len 128
latency-monitor-threshold 0
notify-keyspace-events ""
hash-max-ziplist-entries 512
hash-max-ziplist-value 64
list-max-ziplist-size -2
list-compress-depth 0
set-max-intset-entries 512
zset-max-ziplist-entries 128
zset-max-ziplist-value 64
hll-sparse-max-bytes 3000
stream-node-max-bytes 4096
stream-node-max-entries 100
activerehashing yes
client-output-buffer-limit normal 0 0 0
client-output-buffer-limit replica 256mb 64mb 60
client-output-buffer-limit pubsub 32mb 8mb 60
hz 10
dynamic-hz yes
aof-rewrite-incremental-fsync yes
rdb-save-incremental-fsync yes
server-threads 2
server-thread-affinity true
min-clients-per-thread 50
active-replica yes
multi-master no
replicaof 127.0.0.1 {peer}
"#,
        dir = dir.display()
    )
}

fn start_keydb_node(tag: &str, port: u16, peer: u16) -> Proc {
    let tmp = TempDir::new(tag);
    let dir = &tmp.0;
    let file = dir.join("keydb.conf");
    std::fs::write(&file, keydb_conf(port, peer, dir)).expect("write config");
    let file_arg = file.to_str().expect("utf-8 temp path");
    // The article binds 0.0.0.0; a test listens on loopback only, so the
    // command line narrows it (overrides apply after the file, as with
    // keydb-server).
    let mut node = Proc::spawn(
        chorus(&[file_arg, "--bind", "127.0.0.1"]),
        &format!("chorus with keydb.conf ({tag})"),
    );
    node.wait_listening(port, None);
    node.dir = Some(tmp);
    node
}

#[test]
fn a_keydb_active_replica_pair_from_its_keydb_conf_replicates() {
    let (pa, pb) = (free_port(), free_port());
    let _a = start_keydb_node("keydb-a", pa, pb);
    let _b = start_keydb_node("keydb-b", pb, pa);
    let mut a = connect(&format!("redis://:{SECRET}@127.0.0.1:{pa}/"));
    let mut b = connect(&format!("redis://:{SECRET}@127.0.0.1:{pb}/"));
    assert_eq!(q::<String>(&mut a, &["PING"]), "PONG");
    assert_eq!(q::<String>(&mut b, &["PING"]), "PONG");
    let threads: Vec<String> = q(&mut a, &["CONFIG", "GET", "server-threads"]);
    assert_eq!(threads, vec!["server-threads", "2"]);

    q::<()>(&mut a, &["SET", "from-a", "1"]);
    q::<()>(&mut b, &["SET", "from-b", "2"]);
    // The first link may wait out a handshake sent before the peer listened.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_b: Option<String> = q(&mut b, &["GET", "from-a"]);
        let on_a: Option<String> = q(&mut a, &["GET", "from-b"]);
        if on_b.as_deref() == Some("1") && on_a.as_deref() == Some("2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not cross within 10 s: from-a on b = {on_b:?}, from-b on a = {on_a:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `redis-server --version` and returns the version number.
fn redis_server_version() -> Result<String, String> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .map_err(|e| format!("redis-server: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map(str::to_string)
        .ok_or_else(|| format!("unexpected redis-server --version output: {text}"))
}

/// Compares the directive table with `CONFIG GET *` of whatever redis-server
/// 7.x is installed (the table covers 7.0, 7.2 and 7.4). A missing
/// redis-server fails under CI, through [`required_from_package`]; one of
/// another major version is skipped, loudly, since its parameters are not
/// the table's to know.
#[test]
fn every_parameter_of_redis_7_is_known_and_answered_by_config_get() {
    let Some(version) = required_from_package("redis-server", redis_server_version()) else {
        return;
    };
    if !version.starts_with("7.") {
        eprintln!(
            "\n**********************************************************************\n\
             SKIPPED: redis-server {version} is not 7.x: the directive table covers\n\
             Redis 7.0, 7.2 and 7.4.\n\
             **********************************************************************\n"
        );
        return;
    }
    let tmp = TempDir::new("redis7");
    let dir = &tmp.0;
    let port = free_port();
    let mut command = Command::new("redis-server");
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir.to_str().expect("utf-8 temp path"),
    ]);
    let mut redis_server = Proc::spawn(command, "redis-server");
    redis_server.wait_listening(port, None);
    let mut r = connect(&format!("redis://127.0.0.1:{port}/"));
    let theirs: Vec<String> = q(&mut r, &["CONFIG", "GET", "*"]);
    drop(redis_server);

    let server = common::Server::start(&[]);
    let mut c = server.conn();
    let ours: Vec<String> = q(&mut c, &["CONFIG", "GET", "*"]);
    let ours: Vec<&str> = ours.chunks(2).map(|p| p[0].as_str()).collect();
    let mut unknown = Vec::new();
    for name in theirs.chunks(2).map(|p| p[0].as_str()) {
        match chorus::config::directives::lookup(name) {
            // Aliases are answered under their directive's name.
            Some(d) => assert!(ours.contains(&d.name), "CONFIG GET * lacks {}", d.name),
            None => unknown.push(name),
        }
    }
    assert!(
        unknown.is_empty(),
        "parameters of redis-server {version} chorus does not know: {unknown:?}"
    );
}
