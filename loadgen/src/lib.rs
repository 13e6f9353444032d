//! Requests laid out once and replies counted without parsing more than a
//! line: what `redis-benchmark` does per request (formatting, randomising,
//! a reply parser) costs as much CPU as the server it drives, so on a
//! 2-CPU machine it, not the server, sets the pace, and a replicating
//! peer sharing its CPU slows the server's client as well as the server.

use std::fmt;

/// The write a request makes; each is answered by one line (`+OK`, `:n`)
/// or one bulk string (ZINCRBY's new score).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `SET key:<r> <value>`
    Set,
    /// `HSET myhash element:<r> <value>`
    Hset,
    /// `SADD myset element:<r>`
    Sadd,
    /// `INCR counter:<r>`
    Incr,
    /// `ZADD myzset <r> element:<r>`
    Zadd,
    /// `HINCRBY myhash element:<r> 1`
    Hincrby,
    /// `ZINCRBY myzset 1 element:<r>`
    Zincrby,
    /// `HSET session:<r> user <value> ts <value> ip <value>`: a session
    /// store's write of several fields.
    Session,
}

impl Command {
    pub fn parse(name: &str) -> Option<Command> {
        Some(match name.to_ascii_lowercase().as_str() {
            "set" => Command::Set,
            "hset" => Command::Hset,
            "sadd" => Command::Sadd,
            "incr" => Command::Incr,
            "zadd" => Command::Zadd,
            "hincrby" => Command::Hincrby,
            "zincrby" => Command::Zincrby,
            "session" => Command::Session,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Set => "SET",
            Command::Hset => "HSET",
            Command::Sadd => "SADD",
            Command::Incr => "INCR",
            Command::Zadd => "ZADD",
            Command::Hincrby => "HINCRBY",
            Command::Zincrby => "ZINCRBY",
            Command::Session => "HSET3",
        }
    }
}

/// A small, seedable generator: the workload, not the randomness, is what
/// is measured, and a seed makes two runs send the same requests.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Appends one request in RESP, `<r>` as `redis-benchmark -r` writes it
/// (twelve digits, zero-padded).
pub fn append_request(out: &mut Vec<u8>, command: Command, r: u64, value: &[u8]) {
    let element = format!("element:{r:012}");
    let key = format!("key:{r:012}");
    let counter = format!("counter:{r:012}");
    let session = format!("session:{r:012}");
    let score = r.to_string();
    let args: Vec<&[u8]> = match command {
        Command::Set => vec![b"SET", key.as_bytes(), value],
        Command::Hset => vec![b"HSET", b"myhash", element.as_bytes(), value],
        Command::Sadd => vec![b"SADD", b"myset", element.as_bytes()],
        Command::Incr => vec![b"INCR", counter.as_bytes()],
        Command::Zadd => vec![b"ZADD", b"myzset", score.as_bytes(), element.as_bytes()],
        Command::Hincrby => vec![b"HINCRBY", b"myhash", element.as_bytes(), b"1"],
        Command::Zincrby => vec![b"ZINCRBY", b"myzset", b"1", element.as_bytes()],
        Command::Session => vec![
            b"HSET",
            session.as_bytes(),
            b"user",
            value,
            b"ts",
            value,
            b"ip",
            value,
        ],
    };
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// `count` pipelines of `pipeline` requests each, keys drawn from
/// `0..keyspace`; a connection sends them in turn.
pub fn build_batches(
    command: Command,
    pipeline: usize,
    count: usize,
    keyspace: u64,
    value_size: usize,
    seed: u64,
) -> Vec<Vec<u8>> {
    let value = vec![b'x'; value_size];
    let mut rng = XorShift::new(seed);
    (0..count)
        .map(|_| {
            let mut batch = Vec::new();
            for _ in 0..pipeline {
                append_request(&mut batch, command, rng.below(keyspace), &value);
            }
            batch
        })
        .collect()
}

/// A reply the counter cannot take: only one-line replies and bulk
/// strings are expected.
#[derive(Debug, PartialEq, Eq)]
pub struct UnexpectedReply(pub u8);

impl fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a reply of type {:?}: only one-line replies (+, -, :) and bulk strings ($) are counted",
            self.0 as char
        )
    }
}

impl std::error::Error for UnexpectedReply {}

/// Counts complete replies across reads that may split them: one-line
/// replies, and bulk strings, whose body is skipped unread.
#[derive(Debug, Default)]
pub struct ReplyCounter {
    /// The first byte of the line being read, or 0 between replies.
    open: u8,
    /// A bulk string's length, read so far from its header.
    length: Option<u64>,
    /// Bytes of a bulk string's body (with its CRLF) not yet seen.
    body_left: u64,
    pub replies: u64,
    pub errors: u64,
    /// The first error's text, for the report.
    pub first_error: Option<String>,
    error_text: Option<Vec<u8>>,
}

impl ReplyCounter {
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), UnexpectedReply> {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skipped = self.body_left.min(bytes.len() as u64);
                self.body_left -= skipped;
                bytes = &bytes[skipped as usize..];
                if self.body_left == 0 {
                    self.replies += 1;
                }
                continue;
            }
            if self.open == 0 {
                match bytes[0] {
                    b'+' | b':' => {}
                    b'$' => self.length = Some(0),
                    b'-' => {
                        self.errors += 1;
                        if self.first_error.is_none() {
                            self.error_text = Some(Vec::new());
                        }
                    }
                    other => return Err(UnexpectedReply(other)),
                }
                self.open = bytes[0];
                bytes = &bytes[1..];
                if let Some(text) = self.error_text.as_mut() {
                    text.push(b'-');
                }
            }
            let end = memchr::memchr(b'\n', bytes);
            let line = &bytes[..end.unwrap_or(bytes.len())];
            if let Some(text) = self.error_text.as_mut() {
                text.extend_from_slice(line);
            }
            if let Some(length) = self.length.as_mut() {
                // `$-1` (a nil) has no body: its `-` leaves no digit.
                for &b in line.iter().filter(|b| b.is_ascii_digit()) {
                    *length = *length * 10 + u64::from(b - b'0');
                }
                if line.first() == Some(&b'-') {
                    self.length = None;
                }
            }
            match end {
                Some(end) => {
                    bytes = &bytes[end + 1..];
                    self.open = 0;
                    match self.length.take() {
                        Some(length) => self.body_left = length + 2,
                        None => self.replies += 1,
                    }
                    if let Some(text) = self.error_text.take() {
                        let text = String::from_utf8_lossy(&text);
                        self.first_error = Some(text.trim_end().to_string());
                    }
                }
                None => bytes = &[],
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_the_resp_redis_benchmark_sends() {
        let mut out = Vec::new();
        append_request(&mut out, Command::Set, 42, b"xxx");
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$3\r\nxxx\r\n".to_vec()
        );
        out.clear();
        append_request(&mut out, Command::Zadd, 7, b"");
        assert_eq!(
            out,
            b"*4\r\n$4\r\nZADD\r\n$6\r\nmyzset\r\n$1\r\n7\r\n$20\r\nelement:000000000007\r\n"
                .to_vec()
        );
        out.clear();
        append_request(&mut out, Command::Zincrby, 7, b"");
        assert_eq!(
            out,
            b"*4\r\n$7\r\nZINCRBY\r\n$6\r\nmyzset\r\n$1\r\n1\r\n$20\r\nelement:000000000007\r\n"
                .to_vec()
        );
        out.clear();
        append_request(&mut out, Command::Session, 7, b"x");
        assert_eq!(
            out,
            b"*8\r\n$4\r\nHSET\r\n$20\r\nsession:000000000007\r\n$4\r\nuser\r\n$1\r\nx\r\n$2\r\nts\r\n$1\r\nx\r\n$2\r\nip\r\n$1\r\nx\r\n"
                .to_vec()
        );
        out.clear();
        append_request(&mut out, Command::Hincrby, 7, b"");
        assert_eq!(
            out,
            b"*4\r\n$7\r\nHINCRBY\r\n$6\r\nmyhash\r\n$20\r\nelement:000000000007\r\n$1\r\n1\r\n"
                .to_vec()
        );
    }

    #[test]
    fn batches_hold_the_pipeline_and_stay_in_the_keyspace() {
        let batches = build_batches(Command::Incr, 16, 8, 10, 3, 1);
        assert_eq!(batches.len(), 8);
        for batch in &batches {
            assert_eq!(batch.windows(6).filter(|w| w == b"$4\r\nIN").count(), 16);
            let text = String::from_utf8_lossy(batch);
            for key in text.split("counter:").skip(1) {
                let digits: u64 = key[..12].parse().unwrap();
                assert!(digits < 10);
            }
        }
    }

    #[test]
    fn replies_split_anywhere_count_once_each() {
        let stream = b"+OK\r\n:1\r\n-ERR wrong\r\n:0\r\n";
        for cut in 0..stream.len() {
            let mut counter = ReplyCounter::default();
            counter.feed(&stream[..cut]).unwrap();
            counter.feed(&stream[cut..]).unwrap();
            assert_eq!(counter.replies, 4, "cut at {cut}");
            assert_eq!(counter.errors, 1);
            assert_eq!(counter.first_error.as_deref(), Some("-ERR wrong"));
        }
    }

    #[test]
    fn bulk_strings_split_anywhere_count_once_each() {
        let stream = b"$3\r\n1.5\r\n$-1\r\n$12\r\nab\r\n\r\n$\r\nxyz\r\n:7\r\n$0\r\n\r\n";
        for cut in 0..stream.len() {
            for second in cut..stream.len() {
                let mut counter = ReplyCounter::default();
                counter.feed(&stream[..cut]).unwrap();
                counter.feed(&stream[cut..second]).unwrap();
                counter.feed(&stream[second..]).unwrap();
                assert_eq!(counter.replies, 5, "cut at {cut} and {second}");
                assert_eq!(counter.errors, 0);
            }
        }
    }

    #[test]
    fn an_array_reply_is_refused_not_miscounted() {
        let mut counter = ReplyCounter::default();
        assert_eq!(counter.feed(b"*1\r\n:1\r\n"), Err(UnexpectedReply(b'*')));
    }
}
