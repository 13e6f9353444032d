//! Starts a real `chorus` process on an ephemeral 127.0.0.1 port.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the server logged after it was ready.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `chorus server --port 0 <args>` and waits until it listens.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(None, args)
    }

    /// Starts `chorus server FILE --port 0 <args>`.
    pub fn start_with(file: Option<&str>, args: &[&str]) -> Server {
        Server::start_env(file, args, &[])
    }

    /// Like [`Server::start_with`], with extra environment variables.
    pub fn start_env(file: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .envs(env.iter().copied())
            .arg("server")
            .args(file)
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chorus");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Owned by `Server` from here on, so a failed start still kills it.
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: rx,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = server
                .log
                .recv_timeout(left)
                .expect("chorus did not report its address in time");
            if let Some(addr) = line.split("Ready to accept connections tcp on ").nth(1) {
                server.addr = addr.trim().parse().expect("address");
                return server;
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    pub fn conn(&self) -> redis::Connection {
        let con = self.client().get_connection().expect("connect");
        con.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        con
    }

    pub fn raw(&self) -> Raw {
        let s = TcpStream::connect(self.addr).expect("raw connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw(s)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw TCP connection for bytes no well-behaved client would send.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).expect("write");
    }

    /// Reads until `expected` bytes arrived or the peer closed.
    pub fn read_n(&mut self, expected: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while out.len() < expected {
            match self.0.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    }

    /// Reads until what arrived ends with `suffix`.
    pub fn read_until(&mut self, suffix: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while !out.ends_with(suffix) {
            match self.0.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    }

    /// Reads everything until the server closes the connection.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        self.read_n(usize::MAX)
    }

    /// Switches the connection to RESP3 (HELLO 3) and reads HELLO's map,
    /// which ends with its empty list of modules.
    pub fn hello3(&mut self) {
        self.send(&resp(&[b"HELLO", b"3"]));
        self.read_until(b"modules\r\n*0\r\n");
    }

    /// Sends `bytes` and reads exactly the reply `expected`.
    pub fn roundtrip(&mut self, bytes: &[u8], expected: &[u8]) {
        self.send(bytes);
        let got = self.read_n(expected.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }
}

/// Builds a RESP multibulk request.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Runs a command and returns its error text, panicking if it succeeded.
pub fn err(con: &mut redis::Connection, args: &[&str]) -> String {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    match c.query::<redis::Value>(con) {
        Ok(v) => panic!("{args:?} succeeded with {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// Runs a command and returns its reply.
pub fn q<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// How many cuts the node has stored (INFO persistence).
pub fn store_cuts(c: &mut redis::Connection) -> u64 {
    let info: String = q(c, &["INFO", "persistence"]);
    info.lines()
        .find_map(|l| l.strip_prefix("store_cuts:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A client port whose replication port (+10000) is free too.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 8_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = 20_000 + (p - 20_000) % 9_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && UdpSocket::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
}

/// The 256 bucket digests CRDT.DIGEST lists.
pub fn digest_buckets(c: &mut redis::Connection) -> Vec<String> {
    let reply: Vec<redis::Value> = q(c, &["CRDT.DIGEST"]);
    let at = reply
        .iter()
        .position(|v| *v == redis::Value::BulkString(b"buckets".to_vec()))
        .expect("a buckets entry");
    redis::from_redis_value(reply[at + 1].clone()).unwrap()
}
