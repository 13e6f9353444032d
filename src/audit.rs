//! `chorus audit`: the conflicts every node resolved, asked of each node
//! (`CRDT.CONFLICTS`), merged into one list (DESIGN.md, "Conflict audit").
//!
//! The same conflict is usually resolved on several nodes (each one that
//! merged the losing write): it is one row, naming the nodes that saw it.
//! Rows are sorted by when the winning write was made.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;

/// How to reach the nodes: their password, and TLS (`tls-port`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub password: Option<String>,
    pub tls: Option<TlsFiles>,
}

/// TLS to the nodes' `tls-port`: the CA to verify them with (else the
/// system's roots), and a client certificate for `tls-auth-clients yes`.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cacert: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

/// What to ask and how to print it.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub nodes: Vec<String>,
    pub access: Access,
    pub key: Option<String>,
    /// Unix ms: only conflicts logged at or after it.
    pub since_ms: Option<u64>,
    pub kind: Option<String>,
    pub json: bool,
}

/// Why a node could not be audited: exit code 2, as for bad usage (the
/// command cannot do what was asked), distinct from "conflicts found".
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot reach {node}: {why}")]
    Unreachable { node: String, why: String },
    #[error("{node} refused the password: {why}")]
    Auth { node: String, why: String },
    #[error("{node} is not a Chorus server (no CRDT.CONFLICTS: {why})")]
    NotChorus { node: String, why: String },
    #[error("{0}")]
    Usage(String),
}

/// One side of a conflict as a node reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Side {
    pub origin: String,
    /// The origin's `node-name` as the reporting node knows it, else its id.
    pub origin_name: String,
    pub stamp: String,
    pub stamp_ms: i64,
    pub value: String,
}

/// One conflict, merged over the nodes that resolved it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub db: i64,
    pub key: String,
    /// The hash field (or sorted-set member) both writes were to.
    pub element: Option<String>,
    pub kind: String,
    pub winner: Side,
    pub loser: Side,
    /// The nodes (as given on the command line) that logged it.
    pub nodes: Vec<String>,
}

/// Parses `--since`: a duration back from `now_ms` (`90s`, `10m`, `2h`,
/// `1d`), unix milliseconds, or a UTC time `YYYY-MM-DDTHH:MM:SS[Z]`.
pub fn parse_since(text: &str, now_ms: u64) -> Result<u64, String> {
    let t = text.trim();
    let bad = || {
        format!("--since takes a duration (10m, 2h, 1d), unix milliseconds or YYYY-MM-DDTHH:MM:SSZ, not '{text}'")
    };
    if let Some((num, unit)) = t
        .char_indices()
        .last()
        .filter(|(_, c)| c.is_ascii_alphabetic())
        .map(|(i, c)| (&t[..i], c))
    {
        if t.contains('-') {
            return parse_utc(t).ok_or_else(bad);
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit_ms = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms)));
    }
    if t.contains('-') {
        return parse_utc(t).ok_or_else(bad);
    }
    t.parse().map_err(|_| bad())
}

/// `YYYY-MM-DDTHH:MM:SS[Z]` as unix ms (UTC).
fn parse_utc(t: &str) -> Option<u64> {
    let t = t.strip_suffix('Z').unwrap_or(t);
    let (date, time) = t.split_once('T').unwrap_or((t, "00:00:00"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let h: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, mo, da], [hh, mm, ss]) = (d.as_slice(), h.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(mo) || !(1..=31).contains(da) || *hh > 23 || *mm > 59 || *ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if *mo <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    u64::try_from(secs).ok().map(|s| s * 1_000)
}

fn connect(node: &str, access: &Access) -> Result<redis::Connection, AuditError> {
    let unreachable = |why: String| AuditError::Unreachable {
        node: node.to_string(),
        why,
    };
    let client = match &access.tls {
        None => redis::Client::open(format!("redis://{node}/")),
        Some(tls) => tls_client(node, tls)?,
    }
    .map_err(|e| unreachable(e.to_string()))?;
    let mut conn = client
        .get_connection_with_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| unreachable(e.to_string()))?;
    if let Some(p) = &access.password {
        redis::cmd("AUTH")
            .arg(p)
            .query::<()>(&mut conn)
            .map_err(|e| AuditError::Auth {
                node: node.to_string(),
                why: e.to_string(),
            })?;
    }
    Ok(conn)
}

/// A client of `node` over TLS with `tls`'s files.
fn tls_client(node: &str, tls: &TlsFiles) -> Result<redis::RedisResult<redis::Client>, AuditError> {
    // The process's rustls provider: the same ring the server uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| AuditError::Usage(format!("{flag} {}: {e}", path.display())))
    };
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("--tls-cert", cert)?,
            client_key: read("--tls-key", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(AuditError::Usage(
                "--tls-cert and --tls-key go together".to_string(),
            ))
        }
    };
    let root_cert = tls
        .cacert
        .as_deref()
        .map(|c| read("--tls-cacert", c))
        .transpose()?;
    Ok(redis::Client::build_with_tls(
        format!("rediss://{node}/"),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    ))
}

/// One entry as a node lists it: (db, key, element, kind, winner, loser).
type Entry = (i64, String, Option<String>, String, Side, Side);

/// Entries asked for per `CRDT.CONFLICTS` request.
const PAGE: usize = 1000;

/// How far a node's log has been read: the node's run (a restarted node
/// starts a new log, its ids from 1) and the last id read.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    run_id: String,
    last_id: u64,
}

/// Where each node's log has been read to, by node as given.
pub type Cursors = BTreeMap<String, Cursor>;

/// The conflicts `node` logged past `cursor` that `q` asks for, oldest
/// first, a page at a time; `fetched` counts them as they come.
fn fetch(
    node: &str,
    q: &Query,
    cursor: &mut Cursor,
    fetched: &std::sync::atomic::AtomicUsize,
) -> Result<Vec<Entry>, AuditError> {
    let mut conn = connect(node, &q.access)?;
    let malformed = |what: &str| AuditError::NotChorus {
        node: node.to_string(),
        why: format!("unexpected CRDT.CONFLICTS reply ({what})"),
    };
    let info: String = ask(&mut conn, node, redis::cmd("INFO").arg("server"))?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .ok_or_else(|| malformed("INFO names no run_id"))?
        .trim()
        .to_string();
    if run_id != cursor.run_id {
        *cursor = Cursor { run_id, last_id: 0 };
    }
    let mut found = Vec::new();
    loop {
        let mut cmd = redis::cmd("CRDT.CONFLICTS");
        cmd.arg("COUNT").arg(PAGE).arg("AFTER").arg(cursor.last_id);
        if let Some(k) = &q.key {
            cmd.arg("MATCH").arg(k);
        }
        if let Some(s) = q.since_ms {
            cmd.arg("SINCE").arg(s);
        }
        if let Some(k) = &q.kind {
            cmd.arg("KIND").arg(k);
        }
        let reply: redis::Value = ask(&mut conn, node, &cmd)?;
        let redis::Value::Array(entries) = reply else {
            return Err(malformed("not an array"));
        };
        let page = entries.len();
        for e in entries {
            let f = fields(e.clone()).ok_or_else(|| malformed("an entry is not a map"))?;
            let id = f
                .get("id")
                .and_then(as_int)
                .ok_or_else(|| malformed("an entry lacks its id"))?;
            cursor.last_id = cursor.last_id.max(id as u64);
            found.push(entry(e).ok_or_else(|| malformed("an entry lacks a field"))?);
        }
        fetched.fetch_add(page, std::sync::atomic::Ordering::Relaxed);
        if page < PAGE {
            return Ok(found);
        }
    }
}

/// Every node's entries past its cursor, asked of all nodes at once; a
/// progress line while they take time.
/// Every node's entries past its cursor, and the errors of the nodes that
/// could not be asked (their cursors stay where they were).
type Fetched = (Vec<(String, Vec<Entry>)>, Vec<AuditError>);

fn fetch_all(q: &Query, cursors: &mut Cursors) -> Fetched {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fetched = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let asks: Vec<_> = q
            .nodes
            .iter()
            .map(|node| {
                let mut cursor = cursors.get(node).cloned().unwrap_or_default();
                let fetched = &fetched;
                let handle = s.spawn(move || {
                    fetch(node, q, &mut cursor, fetched).map(|entries| (cursor, entries))
                });
                (node, handle)
            })
            .collect();
        let mut progress = Progress::new();
        while asks.iter().any(|(_, h)| !h.is_finished()) {
            progress.show(|| {
                let waiting: Vec<&str> = asks
                    .iter()
                    .filter(|(_, h)| !h.is_finished())
                    .map(|(n, _)| n.as_str())
                    .collect();
                format!(
                    "{} conflicts read; waiting for {}",
                    fetched.load(Ordering::Relaxed),
                    waiting.join(", ")
                )
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let (mut out, mut errors) = (Vec::new(), Vec::new());
        for (node, handle) in asks {
            let asked = handle.join().unwrap_or_else(|_| {
                Err(AuditError::Unreachable {
                    node: node.clone(),
                    why: "the thread asking it failed".into(),
                })
            });
            match asked {
                Ok((cursor, entries)) => {
                    cursors.insert(node.clone(), cursor);
                    out.push((node.clone(), entries));
                }
                Err(e) => errors.push(e),
            }
        }
        (out, errors)
    })
}

/// One `CRDT.CONFLICTS` entry.
fn entry(e: redis::Value) -> Option<Entry> {
    let f = fields(e)?;
    let side = |name: &str| -> Option<Side> {
        let s = fields(f.get(name)?.clone())?;
        let origin = s.get("origin").and_then(as_text)?;
        Some(Side {
            origin_name: s
                .get("origin_name")
                .and_then(as_text)
                .unwrap_or_else(|| origin.clone()),
            origin,
            stamp: s.get("stamp").and_then(as_text)?,
            stamp_ms: s.get("stamp_ms").and_then(as_int)?,
            value: s.get("value").and_then(as_text)?,
        })
    };
    Some((
        f.get("db").and_then(as_int)?,
        f.get("key").and_then(as_text)?,
        f.get("element").and_then(as_text),
        f.get("kind").and_then(as_text)?,
        side("winner")?,
        side("loser")?,
    ))
}

fn fields(v: redis::Value) -> Option<BTreeMap<String, redis::Value>> {
    let pairs: Vec<(redis::Value, redis::Value)> = match v {
        redis::Value::Map(m) => m,
        redis::Value::Array(a) if a.len() % 2 == 0 => {
            let mut it = a.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        _ => return None,
    };
    pairs
        .into_iter()
        .map(|(k, v)| Some((as_text(&k)?, v)))
        .collect()
}

fn as_text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn as_int(v: &redis::Value) -> Option<i64> {
    match v {
        redis::Value::Int(i) => Some(*i),
        other => as_text(other)?.parse().ok(),
    }
}

/// Asks every node and merges: one row per conflict, the nodes that saw it
/// listed, sorted by when the winning write was made.
pub fn audit(q: &Query) -> Result<Vec<Row>, AuditError> {
    audit_from(q, &mut Cursors::new())
}

/// [`audit`] of the entries past `cursors`, which move past them; an
/// error when any node cannot be asked.
pub fn audit_from(q: &Query, cursors: &mut Cursors) -> Result<Vec<Row>, AuditError> {
    let (rows, mut errors) = audit_available(q, cursors)?;
    match errors.is_empty() {
        true => Ok(rows),
        false => Err(errors.swap_remove(0)),
    }
}

/// [`audit_from`] of the nodes that answered, and why the others did not
/// (`--follow` goes on with the nodes it can reach).
pub fn audit_available(
    q: &Query,
    cursors: &mut Cursors,
) -> Result<(Vec<Row>, Vec<AuditError>), AuditError> {
    if q.nodes.is_empty() {
        return Err(AuditError::Usage("--nodes names no node".into()));
    }
    let (fetched, errors) = fetch_all(q, cursors);
    Ok((merge(fetched), errors))
}

/// One row per conflict over every node's entries, sorted by when the
/// winning write was made.
fn merge(fetched: Vec<(String, Vec<Entry>)>) -> Vec<Row> {
    // One conflict seen from both sides can carry two kinds (a SET over
    // increments it had not seen is a type clash where the increments were,
    // hidden increments where the SET was): one row, both kinds.
    let mut rows: BTreeMap<RowId, Row> = BTreeMap::new();
    for (node, entries) in fetched {
        for (db, key, element, kind, winner, loser) in entries {
            let id = (db, key.clone(), winner.stamp.clone(), loser.stamp.clone());
            let row = rows.entry(id).or_insert_with(|| Row {
                db,
                key,
                element,
                kind: kind.clone(),
                winner: winner.clone(),
                loser: loser.clone(),
                nodes: Vec::new(),
            });
            if !row.kind.split('/').any(|k| k == kind) {
                let mut kinds: Vec<&str> = row.kind.split('/').chain([kind.as_str()]).collect();
                kinds.sort_unstable();
                row.kind = kinds.join("/");
            }
            if !row.nodes.contains(&node) {
                row.nodes.push(node.clone());
            }
            // A node that knows an origin's name tells more than one that
            // only knows its id.
            for (mine, theirs) in [(&mut row.winner, &winner), (&mut row.loser, &loser)] {
                if mine.origin_name == mine.origin {
                    mine.origin_name = theirs.origin_name.clone();
                }
            }
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        (a.winner.stamp_ms, &a.key, &a.loser.stamp).cmp(&(
            b.winner.stamp_ms,
            &b.key,
            &b.loser.stamp,
        ))
    });
    rows
}

/// What makes two nodes' entries one conflict: (db, key, winner's stamp,
/// loser's stamp).
pub type RowId = (i64, String, String, String);

impl Row {
    pub fn id(&self) -> RowId {
        (
            self.db,
            self.key.clone(),
            self.winner.stamp.clone(),
            self.loser.stamp.clone(),
        )
    }
}

/// JSON lines, one row each.
pub fn to_json_lines(rows: &[Row]) -> anyhow::Result<String> {
    let mut out = String::new();
    for row in rows {
        out.push_str(&serde_json::to_string(row).context("encoding a row")?);
        out.push('\n');
    }
    Ok(out)
}

/// A table a person reads at a glance.
pub fn to_table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no conflicts\n".to_string();
    }
    let cut = |s: &str, n: usize| -> String {
        if s.chars().count() <= n {
            s.to_string()
        } else {
            let mut t: String = s.chars().take(n - 1).collect();
            t.push('~');
            t
        }
    };
    let side = |s: &Side| cut(&format!("{} ({})", s.value, s.origin_name), 40);
    let when = utc;
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                match &r.element {
                    Some(e) => format!("{} [{}]", cut(&r.key, 32), cut(e, 24)),
                    None => cut(&r.key, 32),
                },
                r.kind.clone(),
                side(&r.winner),
                side(&r.loser),
                when(r.winner.stamp_ms),
                r.nodes.join(","),
            ]
        })
        .collect();
    let head = ["KEY", "KIND", "WINNER", "LOSER", "WHEN (UTC)", "NODES"];
    let mut width = head.map(str::len);
    for row in &table {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&head.map(String::from));
    for row in &table {
        line(row);
    }
    out.push_str(&format!(
        "{} conflict{}\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    ));
    out
}

/// One line per row, for `--follow`: when, key, kind, winner, loser, nodes.
pub fn to_lines(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{}  {}  {}  winner {} ({})  loser {} ({})  seen by {}",
            utc(r.winner.stamp_ms),
            match &r.element {
                Some(e) => format!("{} [{e}]", r.key),
                None => r.key.clone(),
            },
            r.kind,
            r.winner.value,
            r.winner.origin_name,
            r.loser.value,
            r.loser.origin_name,
            r.nodes.join(",")
        );
    }
    out
}

/// `ms` since the epoch as an ISO 8601 UTC time.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

/// A key whose state differs between two nodes, and the value each serves
/// for it as text (`None`: absent there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DiffKey {
    pub key: String,
    pub a: Option<String>,
    pub b: Option<String>,
    /// Both serve the same value (typed, not as text: a string that reads
    /// `set {x}` is not the set {x}): the states differ in metadata only.
    #[serde(skip)]
    pub same_value: bool,
}

/// A value as a node serves it, by type, to compare two nodes' values.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(Vec<u8>),
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    Set(Vec<Vec<u8>>),
    ZSet(Vec<(Vec<u8>, String)>),
    List(Vec<Vec<u8>>),
    /// A type the audit does not read, by name.
    Other(String),
    /// Its type changed while it was read: equal to nothing.
    Changing,
}

impl Value {
    /// The value as the diff shows it: a string as it is; a hash, set,
    /// sorted set or list as its type's name and its contents
    /// (`hash {f: v}`, `zset {m: 1.5}`, `list [a, b]`).
    fn shown(&self) -> String {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let joined = |items: Vec<String>| items.join(", ");
        match self {
            Value::Str(v) => text(v),
            Value::Hash(fields) => format!(
                "hash {{{}}}",
                joined(
                    fields
                        .iter()
                        .map(|(f, v)| format!("{}: {}", text(f), text(v)))
                        .collect()
                )
            ),
            Value::Set(members) => {
                format!(
                    "set {{{}}}",
                    joined(members.iter().map(|m| text(m)).collect())
                )
            }
            Value::ZSet(members) => format!(
                "zset {{{}}}",
                joined(
                    members
                        .iter()
                        .map(|(m, s)| format!("{}: {s}", text(m)))
                        .collect()
                )
            ),
            Value::List(items) => {
                format!("list [{}]", joined(items.iter().map(|i| text(i)).collect()))
            }
            Value::Other(kind) => format!("({kind})"),
            Value::Changing => "(its type changed while read)".to_string(),
        }
    }

    fn same_as(&self, other: &Value) -> bool {
        self != &Value::Changing && self == other
    }
}

/// What `chorus audit diff` found.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    /// Buckets whose digests differed (of 256).
    pub buckets: usize,
    /// Keys listed in those buckets, on either node.
    pub keys_compared: usize,
    /// Keys (tombstones included) the first node digested.
    pub keys_scanned: u64,
    /// The keys whose states differ; a key with the same value on both
    /// differs in metadata only (a delete one node has not collected yet).
    pub keys: Vec<DiffKey>,
}

fn ask<T: redis::FromRedisValue>(
    conn: &mut redis::Connection,
    node: &str,
    cmd: &redis::Cmd,
) -> Result<T, AuditError> {
    cmd.query(conn).map_err(|e| failed(node, e))
}

/// What a request's failure says of the node.
fn failed(node: &str, e: redis::RedisError) -> AuditError {
    let why = e.to_string();
    let node = node.to_string();
    if why.contains("NOAUTH") || why.contains("WRONGPASS") {
        AuditError::Auth { node, why }
    } else if why.contains("unknown command") {
        AuditError::NotChorus { node, why }
    } else if why.contains("unknown conflict kind") {
        AuditError::Usage(why)
    } else {
        AuditError::Unreachable { node, why }
    }
}

/// Buckets asked for per `CRDT.DIGEST` request: each request reads the
/// keys of one shard of one node, so a diff never holds a node for more
/// than that (1M keys: about 16,000).
pub const DIGEST_RANGE: usize = crate::keyspace::BUCKETS_PER_SHARD;

/// One node's digests of buckets `first..first + DIGEST_RANGE`, and how many
/// keys they cover.
fn range_digests(
    conn: &mut redis::Connection,
    node: &str,
    db: u32,
    pattern: Option<&str>,
    first: usize,
) -> Result<(Vec<String>, i64), AuditError> {
    let mut cmd = redis::cmd("CRDT.DIGEST");
    cmd.arg("DB").arg(db);
    if let Some(p) = pattern {
        cmd.arg("MATCH").arg(p);
    }
    cmd.arg("RANGE").arg(first).arg(first + DIGEST_RANGE - 1);
    let reply: redis::Value = ask(conn, node, &cmd)?;
    let f = fields(reply);
    let buckets = f
        .as_ref()
        .and_then(|f| f.get("buckets").cloned())
        .and_then(|b| redis::from_redis_value::<Vec<String>>(b).ok())
        .filter(|b| b.len() == DIGEST_RANGE);
    let keys = f.as_ref().and_then(|f| f.get("keys")).and_then(as_int);
    buckets.zip(keys).ok_or_else(|| AuditError::NotChorus {
        node: node.to_string(),
        why: "unexpected CRDT.DIGEST reply".into(),
    })
}

/// A progress line on stderr for work that may take a while: shown only on
/// a terminal and only once the work has run for half a second, so quick
/// runs and scripts see nothing of it.
pub struct Progress {
    on: bool,
    started: std::time::Instant,
    shown: bool,
}

impl Progress {
    pub fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            on: std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
            shown: false,
        }
    }

    pub fn show(&mut self, line: impl FnOnce() -> String) {
        if self.on && self.started.elapsed() >= std::time::Duration::from_millis(500) {
            eprint!("\r{}\x1b[K", line());
            self.shown = true;
        }
    }
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

/// Compares nodes `a` and `b` by digests of database `db` (over the keys
/// `pattern` matches), `DIGEST_RANGE` buckets per request; lists the keys of
/// the buckets that differ, and reads the value of each key whose digest
/// differs on both.
pub fn diff(
    a: &str,
    b: &str,
    db: u32,
    pattern: Option<&str>,
    access: &Access,
) -> Result<Diff, AuditError> {
    let mut nodes = [(a, connect(a, access)?), (b, connect(b, access)?)];
    for (node, conn) in nodes.iter_mut() {
        ask::<()>(conn, node, redis::cmd("SELECT").arg(db))?;
    }
    let [(na, ca), (nb, cb)] = &mut nodes;
    let mut out = Diff::default();
    let mut progress = Progress::new();
    for first in (0..chorus_crdt::digest::BUCKETS).step_by(DIGEST_RANGE) {
        progress.show(|| {
            format!(
                "compared {first} of 256 buckets ({} keys on {na}); {} keys differ so far",
                out.keys_scanned,
                out.keys.len()
            )
        });
        let (da, keys_a) = range_digests(ca, na, db, pattern, first)?;
        let (db_, _) = range_digests(cb, nb, db, pattern, first)?;
        out.keys_scanned += keys_a as u64;
        for bucket in (0..DIGEST_RANGE).filter(|i| da[*i] != db_[*i]) {
            diff_bucket(
                &mut out,
                [(*na, &mut *ca), (*nb, &mut *cb)],
                db,
                pattern,
                first + bucket,
            )?;
        }
    }
    Ok(out)
}

/// Differing sub-buckets past which `diff_bucket` lists the whole bucket.
const WHOLE_BUCKET_PAST: usize = 16;

/// Narrows a differing `bucket` down: its 256 sub-bucket digests on both
/// nodes, then the keys of the sub-buckets that differ; reads the value of
/// each key whose digest differs.
fn diff_bucket(
    out: &mut Diff,
    [(na, ca), (nb, cb)]: [(&str, &mut redis::Connection); 2],
    db: u32,
    pattern: Option<&str>,
    bucket: usize,
) -> Result<(), AuditError> {
    out.buckets += 1;
    let digest_cmd = || {
        let mut cmd = redis::cmd("CRDT.DIGEST");
        cmd.arg("DB").arg(db);
        if let Some(p) = pattern {
            cmd.arg("MATCH").arg(p);
        }
        cmd.arg("BUCKET").arg(bucket);
        cmd
    };
    let split = |conn: &mut redis::Connection, node: &str| {
        ask::<Vec<String>>(conn, node, digest_cmd().arg("SPLIT"))
    };
    let (sa, sb) = (split(ca, na)?, split(cb, nb)?);
    let differing: Vec<usize> = (0..sa.len().min(sb.len()))
        .filter(|s| sa[*s] != sb[*s])
        .collect();
    // Each listing reads the bucket's shard: past a few sub-buckets, one
    // listing of the whole bucket costs the node less.
    let subs: Vec<Option<usize>> = if differing.len() > WHOLE_BUCKET_PAST {
        vec![None]
    } else {
        differing.into_iter().map(Some).collect()
    };
    for sub in subs {
        let listing = |conn: &mut redis::Connection, node: &str| {
            let mut cmd = digest_cmd();
            if let Some(sub) = sub {
                cmd.arg("SUB").arg(sub);
            }
            ask::<Vec<(String, String)>>(conn, node, &cmd)
        };
        let la: BTreeMap<String, String> = listing(ca, na)?.into_iter().collect();
        let lb: BTreeMap<String, String> = listing(cb, nb)?.into_iter().collect();
        let mut keys: Vec<&String> = la.keys().chain(lb.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        out.keys_compared += keys.len();
        for key in keys {
            if la.get(key) == lb.get(key) {
                continue;
            }
            let (a, b) = (read_value(ca, na, key)?, read_value(cb, nb, key)?);
            let same_value = match (&a, &b) {
                (Some(a), Some(b)) => a.same_as(b),
                (None, None) => true,
                _ => false,
            };
            out.keys.push(DiffKey {
                key: key.clone(),
                a: a.map(|v| v.shown()),
                b: b.map(|v| v.shown()),
                same_value,
            });
        }
    }
    Ok(())
}

/// How many times a key is read again when its type changed between its
/// `TYPE` and the read (a write racing the diff).
const READS_OF_A_CHANGING_KEY: usize = 3;

/// The value `node` serves for `key`, read by its type's command, whole
/// (HGETALL, SMEMBERS, ZRANGE 0 -1 WITHSCORES, LRANGE 0 -1); fields and
/// members sorted, a sorted set in rank order. `None`: absent.
fn read_value(
    conn: &mut redis::Connection,
    node: &str,
    key: &str,
) -> Result<Option<Value>, AuditError> {
    for _ in 0..READS_OF_A_CHANGING_KEY {
        let kind: String = ask(conn, node, redis::cmd("TYPE").arg(key))?;
        let read = match kind.as_str() {
            "none" => return Ok(None),
            "string" => redis::cmd("GET")
                .arg(key)
                .query::<Option<Vec<u8>>>(conn)
                .map(|v| v.map(Value::Str)),
            "hash" => redis::cmd("HGETALL")
                .arg(key)
                .query::<Vec<(Vec<u8>, Vec<u8>)>>(conn)
                .map(|mut fields| {
                    fields.sort_unstable();
                    Some(Value::Hash(fields))
                }),
            "set" => redis::cmd("SMEMBERS")
                .arg(key)
                .query::<Vec<Vec<u8>>>(conn)
                .map(|mut members| {
                    members.sort_unstable();
                    Some(Value::Set(members))
                }),
            "zset" => redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query::<Vec<(Vec<u8>, String)>>(conn)
                .map(|members| Some(Value::ZSet(members))),
            "list" => redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query::<Vec<Vec<u8>>>(conn)
                .map(|items| Some(Value::List(items))),
            other => return Ok(Some(Value::Other(other.to_string()))),
        };
        match read {
            Ok(value) => return Ok(value),
            Err(e) if e.code() == Some("WRONGTYPE") => {}
            Err(e) => return Err(failed(node, e)),
        }
    }
    Ok(Some(Value::Changing))
}

/// JSON lines, one differing key each.
pub fn diff_json_lines(d: &Diff) -> anyhow::Result<String> {
    let mut out = String::new();
    for k in &d.keys {
        let mut v = serde_json::to_value(k).context("encoding a key")?;
        v["same_value"] = serde_json::Value::Bool(k.same_value);
        out.push_str(&v.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// Both nodes' values side by side, and a summary line.
pub fn diff_table(a: &str, b: &str, d: &Diff) -> String {
    let show = |v: &Option<String>| match v {
        Some(v) if v.chars().count() > 40 => format!("{}~", v.chars().take(39).collect::<String>()),
        Some(v) => v.clone(),
        None => "(absent)".to_string(),
    };
    let rows: Vec<[String; 3]> = d
        .keys
        .iter()
        .map(|k| {
            let key = if k.same_value {
                format!("{} (metadata only)", k.key)
            } else {
                k.key.clone()
            };
            [key, show(&k.a), show(&k.b)]
        })
        .collect();
    let head = ["KEY".to_string(), a.to_string(), b.to_string()];
    let mut width = [0usize; 3];
    for row in rows.iter().chain([&head]) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in [&head].into_iter().chain(&rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {}",
            row[0],
            row[1],
            row[2],
            w0 = width[0],
            w1 = width[1]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let differ = d.keys.iter().filter(|k| !k.same_value).count();
    out.push_str(&format!(
        "{differ} key{} differ{} ({} in metadata only); {} keys compared in {} differing buckets of 256; {} keys digested on {a}\n",
        if differ == 1 { "" } else { "s" },
        if differ == 1 { "s" } else { "" },
        d.keys.len() - differ,
        d.keys_compared,
        d.buckets,
        d.keys_scanned
    ));
    out
}

/// (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_unix_ms_and_utc_times() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_since("10m", now), Ok(now - 600_000));
        assert_eq!(parse_since("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_since("1d", now), Ok(now - 86_400_000));
        assert_eq!(parse_since("1700000000000", now), Ok(1_700_000_000_000));
        assert_eq!(
            parse_since("2026-11-30T10:00:00Z", now),
            Ok(1_796_032_800_000)
        );
        assert_eq!(parse_since("1970-01-01", now), Ok(0));
        for bad in ["", "10x", "m", "2026-13-01T00:00:00Z", "yesterday"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_round_trip_through_the_civil_date() {
        for days in [-1, 0, 59, 365, 10_957, 20_422, 30_000] {
            let (y, m, d) = civil_from_days(days);
            let text = format!("{y:04}-{m:02}-{d:02}T00:00:00Z");
            assert_eq!(
                parse_utc(&text),
                u64::try_from(days * 86_400_000).ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn the_table_has_a_header_a_row_per_conflict_and_a_count() {
        let side = |v: &str, ms| Side {
            origin: "n1".into(),
            origin_name: "eu-west".into(),
            stamp: format!("{ms}@n1"),
            stamp_ms: ms,
            value: v.into(),
        };
        let mut rows = vec![Row {
            db: 0,
            key: "user:1".into(),
            element: None,
            kind: "concurrent-write".into(),
            winner: side("b", 1_796_032_800_123),
            loser: side("a", 1_796_032_800_000),
            nodes: vec!["127.0.0.1:7000".into(), "127.0.0.1:7001".into()],
        }];
        let t = to_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("KEY"), "{t}");
        assert!(
            lines[1].contains("user:1") && lines[1].contains("b (eu-west)"),
            "{t}"
        );
        assert!(lines[1].contains("2026-11-30T10:00:00.123Z"), "{t}");
        assert!(lines[1].ends_with("127.0.0.1:7000,127.0.0.1:7001"), "{t}");
        assert_eq!(lines[2], "1 conflict");
        assert_eq!(to_table(&[]), "no conflicts\n");
        // A conflict on a hash field names the field after the key.
        rows[0].element = Some("email".into());
        assert!(to_table(&rows).contains("user:1 [email]"));
        assert!(to_lines(&rows).contains("user:1 [email]"));
    }
}
