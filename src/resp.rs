//! RESP request parsing (multibulk and inline) and reply encoding (RESP2 and
//! RESP3).
//!
//! The parser never copies a multibulk argument: it returns ranges into the
//! connection's read buffer. A frame that has not fully arrived yields
//! [`Parsed::Incomplete`] with the buffer length needed before trying again,
//! so a large bulk arriving in pieces is not re-scanned on every read.

use std::ops::Range;

/// Hard limits on what one request may claim, checked before any allocation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest accepted bulk string (`proto-max-bulk-len`).
    pub max_bulk: usize,
    /// Most arguments in one multibulk request.
    pub max_args: usize,
    /// Longest inline request or count line.
    pub max_inline: usize,
    /// The client has not authenticated: a request past the small limits
    /// gets Redis's own texts for them.
    pub unauthenticated: bool,
}

impl Limits {
    /// What an unauthenticated client may send (as Redis 7 does): small
    /// requests only, so a stranger cannot make the server allocate.
    pub fn unauthenticated(self) -> Limits {
        Limits {
            max_bulk: self.max_bulk.min(16 * 1024),
            max_args: self.max_args.min(10),
            max_inline: self.max_inline,
            unauthenticated: true,
        }
    }
}

/// Redis's bound (INT_MAX). No room is reserved for a declared count: an
/// argument costs its bytes in the read buffer (within
/// `client-query-buffer-limit`) and 16 bytes of range once it has arrived,
/// at most about 2.7 times what it took on the wire (`$0\r\n\r\n`, six
/// bytes), less than Redis's object per argument.
pub const DEFAULT_MAX_ARGS: usize = i32::MAX as usize;
pub const DEFAULT_MAX_INLINE: usize = 64 * 1024;

/// Where the parsed arguments' ranges point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Into the read buffer (multibulk).
    Buffer,
    /// Into the parser's scratch buffer (inline, after unquoting).
    Scratch,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// One request of `len` bytes; its arguments are in `args` (possibly
    /// none: an empty line or `*0`).
    Request { len: usize, source: Source },
    /// More bytes are needed; do not parse again before the buffer holds `need`.
    Incomplete { need: usize },
}

/// A protocol error: reply with it, then close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub std::borrow::Cow<'static, str>);

impl ProtocolError {
    const fn fixed(why: &'static str) -> ProtocolError {
        ProtocolError(std::borrow::Cow::Borrowed(why))
    }
}

impl ProtocolError {
    pub fn message(&self) -> String {
        format!("ERR Protocol error: {}", self.0)
    }
}

/// Where a multibulk request that has not fully arrived stopped, so the next
/// read resumes it: re-parsing from its start on every read would cost time
/// quadratic in its size (a million-argument MSET arrives over thousands of
/// reads). Offsets are from the request's first byte, which stays valid when
/// the bytes before it are drained.
#[derive(Debug, Default)]
pub struct Progress {
    /// Arguments still to read; 0 when no request is under way.
    remaining: u64,
    /// Where the next argument starts.
    pos: usize,
    /// Arguments parsed so far, over all calls: what the work is measured by.
    #[cfg(test)]
    parsed: usize,
}

impl Progress {
    /// Whether a request is under way: its arguments so far are in the
    /// caller's list, which must then be kept as it is.
    pub fn under_way(&self) -> bool {
        self.remaining > 0
    }
}

/// Parses one request from the front of `buf`.
pub fn parse(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, ProtocolError> {
    parse_resuming(buf, limits, args, scratch, &mut Progress::default())
}

/// A glance at the multibulk request at the front of a buffer, for
/// prefetching, not a parse: it checks only what it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peeked<'a> {
    /// The second argument (most commands' first key).
    pub key: &'a [u8],
    /// The element the command most likely names, when there: the fourth
    /// argument of ZADD and ZINCRBY (key score member), the third of the
    /// rest (a hash field, a set or sorted-set member).
    pub elem: Option<&'a [u8]>,
    /// The command increments the element (HINCRBY, HINCRBYFLOAT, ZINCRBY):
    /// its counter is worth bringing in too.
    pub counter: bool,
    /// The whole request's length when all of it is there and it has at
    /// most 16 arguments: where the request after it starts.
    pub len: Option<usize>,
}

/// See [`Peeked`]; none unless the bytes up to the key's end are there.
pub fn peek_request(buf: &[u8]) -> Option<Peeked<'_>> {
    let (count, mut rest) = peek_length(buf, b'*')?;
    if count < 2 {
        return None;
    }
    let mut key = None;
    let mut elem = None;
    let mut len = None;
    let mut elem_at = 2;
    let mut counter = false;
    for i in 0..count {
        if i == 2 && count > 16 {
            break;
        }
        let Some((n, after)) = peek_length(rest, b'$') else {
            break;
        };
        if i == 0 {
            let name = after.get(..n).unwrap_or_default();
            let zincrby = name.eq_ignore_ascii_case(b"zincrby");
            if zincrby || name.eq_ignore_ascii_case(b"zadd") {
                elem_at = 3;
            }
            counter = zincrby
                || name.eq_ignore_ascii_case(b"hincrby")
                || name.eq_ignore_ascii_case(b"hincrbyfloat");
        } else if i == 1 {
            key = Some(after.get(..n)?);
        } else if i == elem_at {
            elem = after.get(..n);
        }
        let Some(next) = n.checked_add(2).and_then(|end| after.get(end..)) else {
            break;
        };
        rest = next;
        if i + 1 == count {
            len = Some(buf.len() - rest.len());
        }
    }
    Some(Peeked {
        key: key?,
        elem,
        counter,
        len,
    })
}

/// The length after `prefix` at the front of `buf`, and what follows its
/// line.
fn peek_length(buf: &[u8], prefix: u8) -> Option<(usize, &[u8])> {
    if buf.first() != Some(&prefix) {
        return None;
    }
    let (n, after) = quick_count(buf, 0)?;
    Some((n, &buf[after..]))
}

/// [`parse`] for a connection: a request that is `Incomplete` is resumed
/// where it stopped on the next call, with `args` and `progress` kept as
/// they were and `buf` starting at the same request.
pub fn parse_resuming(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
    progress: &mut Progress,
) -> Result<Parsed, ProtocolError> {
    if progress.remaining > 0 {
        return parse_multibulk(buf, limits, args, progress);
    }
    args.clear();
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: 1 }),
        Some(b'*') => parse_multibulk(buf, limits, args, progress),
        Some(_) => parse_inline(buf, limits, args, scratch),
    }
}

/// The count of a `<prefix><digits>\r\n` line at `at` in its common form
/// (1 to 18 digits, the first not a 0 unless alone, CR LF there) and the
/// offset after the line; `None` for anything else, which the exact reading
/// ([`count_line`]) then judges. A byte loop: most lines hold one or two
/// digits, where a vectorised search for the CR costs more than the line.
#[inline]
fn quick_count(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let digits = buf.get(at + 1..)?;
    // Most counts are one or two digits: read them without the loop.
    if let [a @ b'1'..=b'9', rest @ ..] = digits {
        match rest {
            [b'\r', b'\n', ..] => return Some(((a - b'0') as usize, at + 4)),
            [b @ b'0'..=b'9', b'\r', b'\n', ..] => {
                return Some(((a - b'0') as usize * 10 + (b - b'0') as usize, at + 5))
            }
            _ => {}
        }
    }
    // In u64 whatever the target: 18 digits would overflow a 32-bit usize.
    let mut n = 0u64;
    let mut i = 0;
    while let Some(&b) = digits.get(i) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if i == 18 {
            return None;
        }
        n = n * 10 + u64::from(d);
        i += 1;
    }
    if i == 0 || (i > 1 && digits[0] == b'0') || digits.get(i..i + 2)? != b"\r\n" {
        return None;
    }
    Some((usize::try_from(n).ok()?, at + 1 + i + 2))
}

/// Reads a `<prefix><integer>\r\n` line starting at `at`; returns the value
/// and the offset after the line.
fn count_line(
    buf: &[u8],
    at: usize,
    max_line: usize,
    too_big: &'static str,
    invalid: &'static str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at + 1..];
    let Some(cr) = memchr::memchr(b'\r', rest) else {
        if rest.len() > max_line {
            return Err(ProtocolError::fixed(too_big));
        }
        return Ok(None);
    };
    // Refused whether or not the CR has come, so that the verdict does not
    // depend on where a read ended.
    if cr > max_line {
        return Err(ProtocolError::fixed(too_big));
    }
    if cr + 1 >= rest.len() {
        return Ok(None);
    }
    if rest[cr + 1] != b'\n' {
        return Err(ProtocolError::fixed(invalid));
    }
    // Redis reads counts with string2ll: no '+', no leading zeros.
    let n = chorus_crdt::number::parse_int(&rest[..cr]).ok_or(ProtocolError::fixed(invalid))?;
    Ok(Some((n, at + 1 + cr + 2)))
}

fn parse_multibulk(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    progress: &mut Progress,
) -> Result<Parsed, ProtocolError> {
    let result = multibulk_args(buf, limits, args, progress);
    if !matches!(result, Ok(Parsed::Incomplete { .. })) {
        progress.remaining = 0;
    }
    result
}

fn multibulk_args(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    progress: &mut Progress,
) -> Result<Parsed, ProtocolError> {
    if progress.remaining == 0 {
        let quick = quick_count(buf, 0).map(|(n, pos)| (n as i64, pos));
        let Some((count, pos)) = quick.map_or_else(
            || {
                count_line(
                    buf,
                    0,
                    limits.max_inline,
                    "too big mbulk count string",
                    "invalid multibulk length",
                )
            },
            |q| Ok(Some(q)),
        )?
        else {
            return Ok(Parsed::Incomplete {
                need: buf.len() + 1,
            });
        };
        if count <= 0 {
            return Ok(Parsed::Request {
                len: pos,
                source: Source::Buffer,
            });
        }
        if count as u64 > limits.max_args as u64 {
            return Err(ProtocolError::fixed(
                if limits.unauthenticated && count > 10 {
                    "unauthenticated multibulk length"
                } else {
                    "invalid multibulk length"
                },
            ));
        }
        progress.remaining = count as u64;
        progress.pos = pos;
    }
    while progress.remaining > 0 {
        let pos = progress.pos;
        if pos >= buf.len() {
            return Ok(Parsed::Incomplete { need: pos + 1 });
        }
        if buf[pos] != b'$' {
            // Redis names the byte it found, line breaks made spaces; a
            // byte that is not printable ASCII shows as '?'.
            let got = match buf[pos] {
                b'\r' | b'\n' => ' ',
                b if b.is_ascii_graphic() || b == b' ' => char::from(b),
                _ => '?',
            };
            return Err(ProtocolError(std::borrow::Cow::Owned(format!(
                "expected '$', got '{got}'"
            ))));
        }
        let quick = quick_count(buf, pos).map(|(n, data)| (n as i64, data));
        let Some((len, data)) = quick.map_or_else(
            || {
                count_line(
                    buf,
                    pos,
                    limits.max_inline,
                    "too big bulk count string",
                    "invalid bulk length",
                )
            },
            |q| Ok(Some(q)),
        )?
        else {
            return Ok(Parsed::Incomplete {
                need: buf.len() + 1,
            });
        };
        if len < 0 || len as u64 > limits.max_bulk as u64 {
            return Err(ProtocolError::fixed(
                if limits.unauthenticated && len > 16 * 1024 {
                    "unauthenticated bulk length"
                } else {
                    "invalid bulk length"
                },
            ));
        }
        let end = data + len as usize;
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete { need: end + 2 });
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::fixed("invalid bulk length"));
        }
        args.push(data..end);
        progress.pos = end + 2;
        progress.remaining -= 1;
        #[cfg(test)]
        {
            progress.parsed += 1;
        }
    }
    Ok(Parsed::Request {
        len: progress.pos,
        source: Source::Buffer,
    })
}

fn parse_inline(
    buf: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
    scratch: &mut Vec<u8>,
) -> Result<Parsed, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline {
            return Err(ProtocolError::fixed("too big inline request"));
        }
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    if nl > limits.max_inline {
        return Err(ProtocolError::fixed("too big inline request"));
    }
    let line = match buf[..nl].last() {
        Some(b'\r') => &buf[..nl - 1],
        _ => &buf[..nl],
    };
    scratch.clear();
    split_args(line, args, scratch)?;
    if args.len() > limits.max_args {
        return Err(ProtocolError::fixed("invalid multibulk length"));
    }
    Ok(Parsed::Request {
        len: nl + 1,
        source: Source::Scratch,
    })
}

/// Splits one line into arguments with Redis quoting (also used for config files).
pub fn split_args_public(
    line: &[u8],
    args: &mut Vec<Range<usize>>,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    split_args(line, args, out)
}

/// Splits an inline request like Redis's `sdssplitargs`: spaces separate
/// arguments; "double quotes" take \n \r \t \b \a \\ \" and \xHH escapes;
/// 'single quotes' take \' only. A closing quote must be followed by a space.
fn split_args(
    line: &[u8],
    args: &mut Vec<Range<usize>>,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    const UNBALANCED: ProtocolError = ProtocolError::fixed("unbalanced quotes in request");
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Ok(());
        }
        let start = out.len();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(UNBALANCED),
                        Some(b'\\') if i + 3 < line.len() && line[i + 1] == b'x' => {
                            let hex = std::str::from_utf8(&line[i + 2..i + 4])
                                .ok()
                                .and_then(|h| u8::from_str_radix(h, 16).ok());
                            match hex {
                                Some(b) => {
                                    out.push(b);
                                    i += 4;
                                }
                                None => {
                                    out.push(b'x');
                                    i += 2;
                                }
                            }
                        }
                        Some(b'\\') if i + 1 < line.len() => {
                            out.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            if i < line.len() && !line[i].is_ascii_whitespace() {
                                return Err(UNBALANCED);
                            }
                            break;
                        }
                        Some(&c) => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(UNBALANCED),
                        Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                            out.push(b'\'');
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            if i < line.len() && !line[i].is_ascii_whitespace() {
                                return Err(UNBALANCED);
                            }
                            break;
                        }
                        Some(&c) => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    out.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(start..out.len());
    }
}

/// Most reply bytes one batch gathers before they are written. The rest of
/// the pipeline runs once they are out, so a client that never reads holds
/// this plus one reply of server memory, whatever it sends (redis-server,
/// with no output limit for normal clients, grows without bound).
pub const REPLY_BATCH_BYTES: usize = 256 * 1024;

/// A connection's reply buffer: every reply of a pipeline is appended here
/// and written to the socket with one write.
pub struct Reply {
    pub buf: Vec<u8>,
    /// Whether the client negotiated RESP3 with HELLO 3.
    pub resp3: bool,
}

impl Reply {
    pub fn new() -> Reply {
        Reply {
            buf: Vec::with_capacity(16 * 1024),
            resp3: false,
        }
    }

    fn header(&mut self, prefix: u8, n: i64) {
        // One copy into the buffer: the line is at most 23 bytes.
        let mut line = [0u8; 24];
        let mut itoa = itoa::Buffer::new();
        let digits = itoa.format(n).as_bytes();
        line[0] = prefix;
        line[1..1 + digits.len()].copy_from_slice(digits);
        line[1 + digits.len()..3 + digits.len()].copy_from_slice(b"\r\n");
        self.buf.extend_from_slice(&line[..3 + digits.len()]);
    }

    pub fn ok(&mut self) {
        self.buf.extend_from_slice(b"+OK\r\n");
    }

    pub fn simple(&mut self, s: &str) {
        self.buf.push(b'+');
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// An error reply; `msg` starts with its code (`ERR ...`, `WRONGTYPE ...`).
    /// CR and LF would break the protocol, so they become spaces.
    pub fn error(&mut self, msg: &str) {
        self.buf.push(b'-');
        self.buf.extend(
            msg.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A HELP reply: one status line each.
    pub fn lines(&mut self, lines: &[&str]) {
        self.array(lines.len());
        for l in lines {
            self.simple(l);
        }
    }

    pub fn int(&mut self, n: i64) {
        self.header(b':', n);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.header(b'$', data.len() as i64);
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(b"\r\n");
    }

    /// A bulk reply, or null for `None`.
    pub fn bulk_or_null(&mut self, data: Option<&[u8]>) {
        match data {
            Some(d) => self.bulk(d),
            None => self.null(),
        }
    }

    pub fn bulk_str(&mut self, s: &str) {
        self.bulk(s.as_bytes());
    }

    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    pub fn null(&mut self) {
        if self.resp3 {
            self.buf.extend_from_slice(b"_\r\n");
        } else {
            self.buf.extend_from_slice(b"$-1\r\n");
        }
    }

    /// A missing array (EXEC aborted by WATCH): `*-1` in RESP2, `_` in RESP3.
    pub fn null_array(&mut self) {
        if self.resp3 {
            self.buf.extend_from_slice(b"_\r\n");
        } else {
            self.buf.extend_from_slice(b"*-1\r\n");
        }
    }

    pub fn array(&mut self, n: usize) {
        self.header(b'*', n as i64);
    }

    /// An out-of-band message of `n` parts (pub/sub, invalidations): `>`
    /// in RESP3, an array in RESP2.
    pub fn push(&mut self, n: usize) {
        self.header(if self.resp3 { b'>' } else { b'*' }, n as i64);
    }

    /// A map of `n` pairs: `%` in RESP3, a flat array of 2n in RESP2.
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.header(b'%', n as i64);
        } else {
            self.header(b'*', 2 * n as i64);
        }
    }

    /// A set: `~` in RESP3, an array in RESP2.
    pub fn set(&mut self, n: usize) {
        self.header(if self.resp3 { b'~' } else { b'*' }, n as i64);
    }

    /// A double: `,` in RESP3, a bulk string in RESP2.
    pub fn double(&mut self, v: f64) {
        let text = chorus_crdt::number::format_float(v);
        if self.resp3 {
            self.buf.push(b',');
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text.as_bytes());
        }
    }

    /// A sorted-set score: a double as [`Reply::double`], printed as
    /// `format_score` prints it (`inf`, exponents).
    pub fn score(&mut self, v: f64) {
        let text = chorus_crdt::number::format_score(v);
        if self.resp3 {
            self.buf.push(b',');
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text.as_bytes());
        }
    }

    /// A verbatim text (INFO, CLIENT INFO): `=` in RESP3, bulk in RESP2.
    pub fn verbatim(&mut self, text: &str) {
        if self.resp3 {
            self.header(b'=', text.len() as i64 + 4);
            self.buf.extend_from_slice(b"txt:");
            self.buf.extend_from_slice(text.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text.as_bytes());
        }
    }
}

impl Default for Reply {
    fn default() -> Self {
        Reply::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peek_request_reads_a_whole_key_only() {
        let peeked = peek_request(b"*3\r\n$3\r\nSET\r\n$4\r\nkey1\r\n$1").unwrap();
        assert_eq!(
            (peeked.key, peeked.elem, peeked.len),
            (&b"key1"[..], None, None),
            "the rest of the request need not be there"
        );
        for partial in [
            &b"*2\r\n$3\r\nGET\r\n$3\r\nfo"[..],
            b"*2\r\n$3\r\nGET\r\n$3",
            b"*2\r\n$3\r\nGE",
            b"*1\r\n$4\r\nPING\r\n",
            b"PING\r\n",
            b"*2\r\n$x\r\nGET\r\n$3\r\nfoo\r\n",
            b"*2\r\n$99999999999999999999\r\n",
            b"*2\r\n$3\r\nGET\r\n$9999999999\r\nfoo\r\n",
            b"*2\r\n$18446744073709551615\r\nGET\r\n$3\r\nfoo\r\n",
            b"",
        ] {
            assert_eq!(
                peek_request(partial),
                None,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
    }

    #[test]
    fn peek_request_measures_a_whole_request_only() {
        type Parts<'a> = (&'a [u8], Option<&'a [u8]>, Option<usize>);
        fn at(buf: &[u8]) -> Option<Parts<'_>> {
            peek_request(buf).map(|p| (p.key, p.elem, p.len))
        }
        let two = b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n";
        assert_eq!(at(two), Some((&b"foo"[..], None, Some(22))));
        assert_eq!(
            at(&two[22..]),
            Some((&b"k"[..], Some(&b"vv"[..]), Some(two.len() - 22)))
        );
        // The key is there, the request's end is not.
        assert_eq!(
            at(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv"),
            Some((&b"k"[..], None, None))
        );
        assert_eq!(
            at(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r"),
            Some((&b"k"[..], Some(&b"vv"[..]), None))
        );
        assert_eq!(at(b"*1\r\n$4\r\nPING\r\n"), None);
        assert_eq!(
            at(b"*4\r\n$4\r\nzadd\r\n$1\r\nk\r\n$1\r\n1\r\n$1\r\nm\r\n"),
            Some((&b"k"[..], Some(&b"m"[..]), Some(35))),
            "ZADD names its member after the score"
        );
        let incr = b"*4\r\n$7\r\nHINCRBY\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\n1\r\n";
        assert!(peek_request(incr).is_some_and(|p| p.counter && p.elem == Some(b"f")));
        let zincr = b"*4\r\n$7\r\nzincrby\r\n$1\r\nz\r\n$1\r\n1\r\n$1\r\nm\r\n";
        assert!(peek_request(zincr).is_some_and(|p| p.counter && p.elem == Some(b"m")));
        assert!(peek_request(&two[22..]).is_some_and(|p| !p.counter));
        let float = b"*4\r\n$12\r\nhincrbyfloat\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\n1\r\n";
        assert!(peek_request(float).is_some_and(|p| p.counter && p.elem == Some(b"f")));
        assert_eq!(
            at(b"*3\r\n$4\r\nZADD\r\n$1\r\nk\r\n$1\r\n1\r\n"),
            Some((&b"k"[..], None, Some(28))),
            "a ZADD without its member names no element"
        );
        let many = format!("*17\r\n{}", "$1\r\nk\r\n".repeat(17));
        assert_eq!(at(many.as_bytes()), Some((&b"k"[..], None, None)));
    }

    use super::*;

    proptest::proptest! {
        /// The byte-loop reading of a count line answers only where the
        /// exact reading agrees, and answers for every count in the form
        /// clients send.
        #[test]
        fn a_quick_count_agrees_with_the_exact_reading(
            sign in proptest::sample::select(vec!["", "-", "+"]),
            digits in "[0-9]{0,20}",
            tail in proptest::sample::select(vec!["\r\n", "\r", "", "\n", "x\r\n", "\r\r\n"]),
            n in 0u64..1_000_000_000_000_000_000,
            small in 0u64..120,
        ) {
            let buf = format!("${sign}{digits}{tail}").into_bytes();
            if let Some((count, after)) = quick_count(&buf, 0) {
                let exact = count_line(&buf, 0, DEFAULT_MAX_INLINE, "too big", "invalid");
                proptest::prop_assert_eq!(exact, Ok(Some((count as i64, after))));
            }
            for n in [n, small] {
                let common = format!("${n}\r\n");
                proptest::prop_assert_eq!(
                    quick_count(common.as_bytes(), 0),
                    Some((n as usize, common.len()))
                );
            }
        }
    }

    const LIMITS: Limits = Limits {
        max_bulk: 512 * 1024 * 1024,
        max_args: DEFAULT_MAX_ARGS,
        max_inline: DEFAULT_MAX_INLINE,
        unauthenticated: false,
    };

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut out = Vec::new();
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        let mut at = 0;
        while at < input.len() {
            match parse(&input[at..], &LIMITS, &mut args, &mut scratch)? {
                Parsed::Request { len, source } => {
                    let base: &[u8] = match source {
                        Source::Buffer => &input[at..],
                        Source::Scratch => &scratch,
                    };
                    out.push(args.iter().map(|r| base[r.clone()].to_vec()).collect());
                    at += len;
                }
                Parsed::Incomplete { .. } => break,
            }
        }
        Ok(out)
    }

    #[test]
    fn multibulk_and_inline_pipeline() {
        let got =
            parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset a \"b c\\x41\"\r\n").unwrap();
        assert_eq!(
            got,
            vec![
                vec![b"GET".to_vec(), b"k".to_vec()],
                vec![b"PING".to_vec()],
                vec![b"set".to_vec(), b"a".to_vec(), b"b cA".to_vec()],
            ]
        );
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        for cut in 1..frame.len() {
            match parse(&frame[..cut], &LIMITS, &mut args, &mut scratch).unwrap() {
                Parsed::Incomplete { need } => assert!(need > cut, "cut {cut}"),
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(frame, &LIMITS, &mut args, &mut scratch).unwrap(),
            Parsed::Request { len, .. } if len == frame.len()
        ));
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n+a\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$3\r\nabcde\r\n",
            b"*99999999999\r\n",
            b"set \"a\r\n",
            b"*1\r\n$9999999999999\r\n",
            b"*1\r\n$03\r\nGET\r\n",
        ] {
            assert!(
                parse_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn unauthenticated_limits_are_small() {
        let limits = LIMITS.unauthenticated();
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        let refused = |r: Result<Parsed, ProtocolError>| r.err().map(|e| e.0.into_owned());
        // In Redis's words for them.
        assert_eq!(
            refused(parse(b"*11\r\n", &limits, &mut args, &mut scratch)).as_deref(),
            Some("unauthenticated multibulk length")
        );
        assert_eq!(
            refused(parse(b"*1\r\n$20000\r\n", &limits, &mut args, &mut scratch)).as_deref(),
            Some("unauthenticated bulk length")
        );
    }

    /// #11 item 12: a large request arriving over many reads is resumed
    /// where it stopped, not re-parsed from its start on each read. On the
    /// earlier parser this request cost about 40 million argument parses.
    #[test]
    fn a_request_arriving_in_pieces_is_parsed_in_linear_work() {
        let count = 20_000;
        let mut wire = format!("*{count}\r\n").into_bytes();
        for i in 0..count {
            let arg = format!("k{i}");
            wire.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        let (mut args, mut scratch) = (Vec::new(), Vec::new());
        let mut progress = Progress::default();
        let (mut have, mut need, mut calls) = (0, 1, 0);
        let len = loop {
            have = (have + 64).min(wire.len());
            if have < need {
                continue;
            }
            calls += 1;
            match parse_resuming(
                &wire[..have],
                &LIMITS,
                &mut args,
                &mut scratch,
                &mut progress,
            )
            .unwrap()
            {
                Parsed::Request { len, .. } => break len,
                Parsed::Incomplete { need: n } => need = n,
            }
        };
        assert_eq!(len, wire.len());
        assert_eq!(args.len(), count);
        assert_eq!(
            &wire[args[count - 1].clone()],
            format!("k{}", count - 1).as_bytes()
        );
        assert!(calls > 1000, "arrived in {calls} pieces");
        assert_eq!(progress.parsed, count, "each argument parsed once");
        // The next request starts afresh.
        let next = b"*1\r\n$4\r\nPING\r\n";
        assert_eq!(
            parse_resuming(next, &LIMITS, &mut args, &mut scratch, &mut progress),
            Ok(Parsed::Request {
                len: next.len(),
                source: Source::Buffer
            })
        );
        assert_eq!(args, vec![8..12]);
    }

    #[test]
    fn resp3_and_resp2_shapes() {
        let mut r = Reply::new();
        r.null();
        r.map(1);
        r.resp3 = true;
        r.null();
        r.map(1);
        r.double(1.5);
        assert_eq!(r.buf, b"$-1\r\n*2\r\n_\r\n%1\r\n,1.5\r\n");
    }
}
