//! The delta log: what makes a node with `appendonly yes` durable between
//! folds into its store.
//!
//! Every write the node applies, its own and its peers', is appended as the
//! bytes replication already encoded for it (a `ReplMsg::Delta`: origin,
//! sequence number, delta), under the shard lock that applied it. One thread
//! writes the appended bytes to the file and, by `appendfsync`, fsyncs them:
//! after every write round (`always`; a client's reply waits for the fsync
//! that covers its writes, and every client whose writes arrived meanwhile
//! shares it: group commit), once a second (`everysec`) or never (`no`).
//!
//! The log is cut into generations, one file each. A fold (a cut of the
//! dirty keys into the store, under every shard lock) starts the next
//! generation in the same critical section and records it in the store:
//! everything in earlier generations was applied before the cut and is in
//! the store, so once the store has it durably those files go. A restart
//! loads the store, then merges every record of the generations from the
//! recorded one on. Merges are idempotent, so a record whose write the
//! store already holds costs nothing but its merge.
//!
//! A record is `len: u32 LE, crc32c(len), crc32c(payload), payload` (both
//! checksums filled in by the writer thread as it takes a round;
//! logs of builds before session 34 used CRC-32 (IEEE) instead; their
//! files still replay, each read by the checksum its first record has). What a
//! crash mid-write leaves at the end of a file (a short header, a checked
//! header whose payload runs past the end, zeros the file system had
//! allocated) is dropped with a warning. A record that does not read back
//! (a header or payload checksum that fails, a payload that does not
//! decode) stops the start with the file's path: the log is never silently
//! replaced, nor cut at a flipped length.
//!
//! A replicating node also serves its peers from the log: its own writes
//! are numbered records (`append_numbered`), indexed in memory by sequence
//! number, and generations a peer still lacks are kept past their fold
//! (bounded by `repl-log-max-size`), so that a peer that fell behind the
//! in-memory backlog, in a burst or an outage, resumes from here instead of
//! by a state transfer (`read_numbered`).
//!
//! A failed fsync stops the process, as Redis does under `always` and as
//! databases have since Linux was found to drop the pages of a failed
//! fsync and report the next one clean: retrying could acknowledge writes
//! that never reached the disk.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tracing::{error, warn};

use crate::config::Fsync;

/// The directory inside `dir` that holds the log's generations.
pub const LOG_DIR: &str = "chorus.deltas";

const HEADER: usize = 12;
/// No record is larger: replication's frames are bounded far below it.
const MAX_RECORD: usize = 1 << 31;
/// Without `always`, how often the writer writes what was appended (unless
/// `WAKE_BYTES` came first): what a crash of the process alone can lose,
/// besides what the kernel holds.
const WRITE_EVERY: Duration = Duration::from_millis(10);
const WAKE_BYTES: usize = 1 << 20;
/// The largest written round's buffer kept for a later round (the two
/// buffers that take turns may each hold up to this while idle).
const SPARE_MAX: usize = 4 * WAKE_BYTES;
/// Past this, an idle log's buffers go back to the allocator once no
/// append came for `IDLE_TICKS` ticks: two rounds' buffers of a burst (up
/// to `SPARE_MAX` each) held for good would sit on the memory a cache has
/// under `maxmemory`.
const IDLE_KEEP: usize = 64 * 1024;
const IDLE_TICKS: u32 = 10;
/// How long the writer waits before trying again after a failed write.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// At most this many bytes of the log between two index marks of numbered
/// records: what a read from the log skips at most before its first record.
const MARK_EVERY: u64 = 64 * 1024;
/// Failed writes after the node began to close before the writer gives up
/// (the final fold holds everything before it).
const GIVE_UP_AT_STOP: u32 = 50;

/// Why the log could not be opened or read back.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the delta log in {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the delta log {path} is unreadable at byte {at}: {what}")]
    Corrupt {
        path: PathBuf,
        at: u64,
        what: String,
    },
}

/// How far past its own record's bytes an append asks for the pending
/// buffer's lines (eight lines: a dozen small records).
const PREFETCH_AHEAD: usize = 512;

/// Appended bytes the writer thread has not taken yet.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The log position after `bytes` (positions count every byte ever
    /// appended in this process).
    end: u64,
    /// (position, generation): from `position` on, bytes go to the file of
    /// `generation`.
    rotations: Vec<(u64, u64)>,
    /// The generation appends go to now.
    generation: u64,
    stop: bool,
    /// (position, generation): where each generation of this process that
    /// is still on disk starts, oldest first.
    starts: VecDeque<(u64, u64)>,
    /// (sequence number, position) of numbered records: the first of every
    /// generation and then one at least every `MARK_EVERY` bytes, oldest
    /// first.
    marks: VecDeque<(u64, u64)>,
    /// The next numbered record at or after this position is marked.
    mark_at: u64,
    /// The last sequence number appended.
    last_numbered: u64,
    /// A written round's buffer, emptied, for the next round's appends:
    /// taken fresh each round, the buffer grew again from nothing, and its
    /// reallocations' copies and new pages cost the server's thread more
    /// than the appends themselves.
    spare: Vec<u8>,
    /// The capacity of the round the writer holds.
    writing: usize,
    /// `bytes`' capacity as `DeltaLog::buffered` last counted it.
    bytes_counted: usize,
}

impl Pending {
    fn buffered(&self) -> usize {
        self.bytes.capacity() + self.spare.capacity() + self.writing
    }
}

/// A record being appended in place: dropped unfinished (its encoding
/// failed or panicked), it leaves the pending bytes as they were.
struct Unfinished<'a> {
    pending: &'a mut Pending,
    before: usize,
    finished: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let before = self.before;
            self.pending.bytes.truncate(before);
        }
    }
}

/// The pending bytes locked for appends. Let go (dropped, or unwound by a
/// panic in an encoding after earlier records of a run went in), it wakes
/// whoever the appends concern: a run cut short under `always` must still
/// wake the writer for the records it left, or their clients would wait
/// for the next fold.
struct Appending<'a> {
    log: &'a DeltaLog,
    pending: parking_lot::MutexGuard<'a, Pending>,
    /// The pending bytes when the lock was taken.
    before: usize,
    numbered: bool,
}

impl Drop for Appending<'_> {
    // Inlined: an append of a record that is not numbered (every write of
    // a node without peers) leaves out the check for numbered waiters.
    #[inline]
    fn drop(&mut self) {
        // The writer is woken for the first bytes only when a client will
        // wait for them (`always`); otherwise it comes by itself every
        // `WRITE_EVERY`, or when `WAKE_BYTES` piled up. A wake per write
        // would cost a context switch each on the server's CPU.
        let (before, after) = (self.before, self.pending.bytes.len());
        let log = self.log;
        let wake = after > before
            && if log.fsync == Fsync::Always {
                before == 0
            } else {
                before < WAKE_BYTES && after >= WAKE_BYTES
            };
        let numbered = self.numbered && log.numbered_waiters.load(Ordering::SeqCst) > 0;
        if wake || numbered {
            // Woken with the lock let go, not into it.
            parking_lot::MutexGuard::unlocked(&mut self.pending, || {
                if wake {
                    log.more.notify_one();
                }
                if numbered {
                    log.numbered_more.notify_waiters();
                }
            });
        }
    }
}

/// The log of one running node.
pub struct DeltaLog {
    dir: PathBuf,
    fsync: Fsync,
    pending: Mutex<Pending>,
    more: Condvar,
    /// The position up to which the log is durable as `appendfsync` asks:
    /// fsynced (`always`, `everysec`) or handed to the kernel (`no`).
    durable: tokio::sync::watch::Sender<u64>,
    pub bytes_written: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Whether the last write or fsync failed (INFO `aof_last_write_status`).
    pub failing: AtomicBool,
    /// Bytes in the generations not folded yet (INFO `aof_current_size`).
    pub unfolded_bytes: AtomicU64,
    /// Bytes of folded generations kept because a peer lacks numbered
    /// records in them (INFO `repl_log_bytes`).
    pub kept_bytes: AtomicU64,
    /// The most bytes of folded generations kept for peers.
    keep_max: AtomicU64,
    /// Per peer, the first sequence number it lacks.
    peer_needs: Mutex<Vec<u64>>,
    /// The position up to which appended bytes are in the files.
    written: AtomicU64,
    /// Tasks waiting for a numbered record to be appended
    /// ([`DeltaLog::durable_through`]), woken by each such append.
    numbered_more: tokio::sync::Notify,
    numbered_waiters: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `buffered_bytes`, set under the pending lock whenever a buffer's
    /// capacity changes.
    buffered: AtomicUsize,
    /// Tests: the numbered append of this number panics, once.
    #[cfg(test)]
    pub(crate) panic_at: AtomicU64,
}

/// Bytes the writer took to write in one go.
struct Round {
    bytes: Vec<u8>,
    /// The log position after `bytes`.
    end: u64,
    rotations: Vec<(u64, u64)>,
    stop: bool,
}

/// What [`DeltaLog::read_numbered`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum NumberedRead {
    /// Records from the requested sequence number through `last`, handed
    /// over in order.
    Read { last: u64 },
    /// The requested record is appended but not in the files yet.
    NotYet,
    /// The log no longer holds the requested record (or cannot read it).
    Gone,
}

/// The records of the generations a restart replays, oldest first.
pub struct Replay {
    pub files: Vec<PathBuf>,
}

/// A record's checksums, of its length and of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checksum {
    /// CRC-32C, which the CPU computes: what this build writes.
    Castagnoli,
    /// CRC-32 (IEEE): what builds before session 34 wrote.
    Ieee,
}

impl Checksum {
    fn of(self, bytes: &[u8]) -> u32 {
        match self {
            Checksum::Castagnoli => crate::checksum::crc32c(bytes),
            Checksum::Ieee => crc32fast::hash(bytes),
        }
    }

    /// The checksum a file's first record header (`len`, `len_crc`) was
    /// written with, if either.
    fn of_first(len: u32, len_crc: u32) -> Option<Checksum> {
        [Checksum::Castagnoli, Checksum::Ieee]
            .into_iter()
            .find(|kind| kind.of(&len.to_le_bytes()) == len_crc)
    }
}

fn file_of(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation:016x}.log"))
}

/// The generations present in `dir`, ascending.
fn generations(dir: &Path) -> Result<Vec<u64>, LogError> {
    let open_err = |source| LogError::Open {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(open_err)? {
        let entry = entry.map_err(open_err)?;
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        // Only names `file_of` makes: anything else is not the log's.
        if hex.len() != 16 {
            continue;
        }
        if let Ok(generation) = u64::from_str_radix(hex, 16) {
            found.push(generation);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl DeltaLog {
    /// Opens the log in `dir`/[`LOG_DIR`]: files of generations before
    /// `folded_from` (what the store already holds) are removed, the rest
    /// are returned to be replayed, and appends go to a new generation
    /// after all of them (never to a file a crash may have cut short).
    pub fn open(
        dir: &Path,
        fsync: Fsync,
        folded_from: u64,
    ) -> Result<(Arc<DeltaLog>, Replay), LogError> {
        let dir = dir.join(LOG_DIR);
        let open_err = |source| LogError::Open {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(open_err)?;
        let mut replay = Vec::new();
        let mut next = folded_from;
        for generation in generations(&dir)? {
            let path = file_of(&dir, generation);
            if generation < folded_from {
                std::fs::remove_file(&path).map_err(|source| LogError::Open {
                    path: path.clone(),
                    source,
                })?;
            } else {
                replay.push(path);
                next = next.max(generation + 1);
            }
        }
        let file = Self::create(&dir, next).map_err(open_err)?;
        let unfolded: u64 = replay
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let log = Arc::new(DeltaLog {
            dir: dir.clone(),
            fsync,
            pending: Mutex::new(Pending {
                generation: next,
                starts: VecDeque::from([(0, next)]),
                ..Pending::default()
            }),
            more: Condvar::new(),
            durable: tokio::sync::watch::channel(0).0,
            numbered_more: tokio::sync::Notify::new(),
            numbered_waiters: AtomicU64::new(0),
            buffered: AtomicUsize::new(0),
            bytes_written: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            unfolded_bytes: AtomicU64::new(unfolded),
            kept_bytes: AtomicU64::new(0),
            keep_max: AtomicU64::new(0),
            peer_needs: Mutex::new(Vec::new()),
            written: AtomicU64::new(0),
            writer: Mutex::new(None),
            #[cfg(test)]
            panic_at: AtomicU64::new(0),
        });
        let writer = log.clone();
        let handle = std::thread::Builder::new()
            .name("chorus-log".into())
            .spawn(move || writer.write_loop(file))
            .map_err(open_err)?;
        *log.writer.lock() = Some(handle);
        Ok((log, Replay { files: replay }))
    }

    fn create(dir: &Path, generation: u64) -> std::io::Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(file_of(dir, generation))?;
        sync_dir(dir)?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Appends one record; returns the log position after it.
    pub fn append(&self, payload: &[u8]) -> u64 {
        self.append_record(&[payload])
    }

    /// Appends one of this node's own writes, numbered `seq` (numbers
    /// ascend with every call), which [`DeltaLog::read_numbered`] can find.
    /// A number the log holds already is not appended again (a hand-over
    /// that a panic cut short, retried); returns the log position after it.
    pub fn append_numbered(&self, payload: &[u8], seq: u64) -> u64 {
        self.append_numbered_parts(&[payload], seq)
    }

    /// [`DeltaLog::append_numbered`] of a payload in parts.
    pub fn append_numbered_parts(&self, parts: &[&[u8]], seq: u64) -> u64 {
        let mut appending = self.appending(true);
        self.append_numbered_locked(&mut appending.pending, seq, parts);
        appending.pending.end
    }

    /// [`DeltaLog::append_numbered`] of several records under one lock of
    /// the pending bytes. A panic leaves the records before the one it cut
    /// short appended, and nothing of that one.
    pub fn append_numbered_run<'a>(&self, records: impl IntoIterator<Item = (u64, &'a [u8])>) {
        let mut appending = self.appending(true);
        for (seq, payload) in records {
            self.append_numbered_locked(&mut appending.pending, seq, &[payload]);
        }
    }

    fn append_numbered_locked(&self, pending: &mut Pending, seq: u64, parts: &[&[u8]]) {
        if seq <= pending.last_numbered {
            return;
        }
        let appended = self.append_locked(pending, Some(seq), |bytes| {
            for part in parts {
                bytes.extend_from_slice(part);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        if let Err(never) = appended {
            match never {}
        }
    }

    fn append_record(&self, parts: &[&[u8]]) -> u64 {
        let appended = self.append_with(None, |bytes| {
            for part in parts {
                bytes.extend_from_slice(part);
            }
            Ok::<(), std::convert::Infallible>(())
        });
        match appended {
            Ok(end) => end,
            Err(never) => match never {},
        }
    }

    /// Appends one record whose payload `encode` appends, in place in the
    /// pending bytes (no copy through a buffer of its own: for a node that
    /// logs every write, that copy and its buffer's cache line cost more
    /// than the encoding). A failed `encode` appends nothing.
    pub fn append_encoded<E>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<u64, E> {
        self.append_with(None, encode)
    }

    fn append_with<E>(
        &self,
        seq: Option<u64>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut appending = self.appending(seq.is_some());
        self.append_locked(&mut appending.pending, seq, encode)?;
        Ok(appending.pending.end)
    }

    /// Appends one record under the pending bytes' lock.
    fn append_locked<E>(
        &self,
        pending: &mut Pending,
        seq: Option<u64>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let before = pending.bytes.len();
        let mut record = Unfinished {
            pending,
            before,
            finished: false,
        };
        record.pending.bytes.extend_from_slice(&[0; HEADER]);
        #[cfg(test)]
        if seq.is_some_and(|seq| {
            self.panic_at
                .compare_exchange(seq, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        }) {
            panic!("the test's panic in appending record {seq:?}");
        }
        // On an error or a panic, `record` drops unfinished and takes its
        // bytes back out.
        encode(&mut record.pending.bytes)?;
        record.finished = true;
        self.finish_record(record.pending, before, seq);
        Ok(())
    }

    /// Appends one record whose payload `put` writes into `most` bytes of
    /// room and returns its length: room made once, where
    /// [`DeltaLog::append_encoded`]'s encoding grows the pending bytes
    /// field by field. A panic in `put` appends nothing. Returns the log
    /// position after the record.
    pub fn append_put(&self, most: usize, put: impl FnOnce(&mut [u8]) -> usize) -> u64 {
        let mut appending = self.appending(false);
        let pending = &mut *appending.pending;
        let before = pending.bytes.len();
        let mut record = Unfinished {
            pending,
            before,
            finished: false,
        };
        record.pending.bytes.resize(before + HEADER + most, 0);
        let len = put(&mut record.pending.bytes[before + HEADER..]);
        debug_assert!(len <= most, "a record laid out past its room");
        record.pending.bytes.truncate(before + HEADER + len);
        record.finished = true;
        self.finish_record(record.pending, before, None);
        record.pending.end
    }

    /// Completes the record appended at `before` in the pending bytes: its
    /// length, its place among the numbered records, the log's end.
    #[inline(always)]
    fn finish_record(&self, pending: &mut Pending, before: usize, seq: Option<u64>) {
        let payload_len = pending.bytes.len() - before - HEADER;
        // The checksums are the writer's to fill in (`seal_records`).
        pending.bytes[before..before + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
        if let Some(seq) = seq {
            let at = pending.end;
            if at >= pending.mark_at {
                pending.marks.push_back((seq, at));
                pending.mark_at = at + MARK_EVERY;
            }
            pending.last_numbered = seq;
        }
        pending.end += (HEADER + payload_len) as u64;
        // A round's bytes are written, read by the writer and copied into
        // the page cache before their buffer comes back for a later round:
        // by then a busy keyspace has pushed its lines out of the cache,
        // and an append that began a line waited for it at the lock's
        // release (6.4% of a loop of logged INCRs' time, 1.6% with this).
        // The lines as far ahead as this record's, whatever its length.
        let room = pending.bytes.capacity();
        if room != pending.bytes_counted {
            self.count_buffers(pending);
        }
        let from = (before + PREFETCH_AHEAD).min(room);
        let to = (pending.bytes.len() + PREFETCH_AHEAD).min(room);
        let base = pending.bytes.as_ptr() as usize;
        if to - from <= 64 {
            // The record before asked for the lines up to `from`: a short
            // record's are then at most the one at its end (no loop).
            if to > from {
                crate::prefetch::write(base + to - 1);
            }
        } else {
            crate::prefetch::write_lines(base + from, to - from);
        }
    }

    /// The pending bytes locked for appends (see [`Appending`]).
    fn appending(&self, numbered: bool) -> Appending<'_> {
        let pending = self.pending.lock();
        Appending {
            log: self,
            before: pending.bytes.len(),
            pending,
            numbered,
        }
    }

    /// Waits until the log holds every numbered record up to `seq` and is
    /// durable past them: a write is numbered when made, and its record
    /// may wait for one numbered before it that another thread's batch
    /// has yet to hand over (within that batch, never across an await).
    pub async fn durable_through(&self, seq: u64) {
        loop {
            let notified = self.numbered_more.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (last, end) = {
                let pending = self.pending.lock();
                (pending.last_numbered, pending.end)
            };
            if last >= seq {
                return self.durable_at(end).await;
            }
            self.numbered_waiters.fetch_add(1, Ordering::SeqCst);
            // Rechecked after counting ourselves: an append between the
            // check and the count did not know to wake us.
            let last = self.pending.lock().last_numbered;
            if last < seq {
                notified.await;
            }
            self.numbered_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// The position after everything appended so far.
    pub fn appended(&self) -> u64 {
        self.pending.lock().end
    }

    /// Starts the next generation: what is appended from now on goes to
    /// it. Returns its number. Called under every shard lock by a fold.
    pub fn rotate(&self) -> u64 {
        let mut pending = self.pending.lock();
        pending.generation += 1;
        let (at, generation) = (pending.end, pending.generation);
        pending.rotations.push((at, generation));
        pending.starts.push_back((at, generation));
        // A generation's first numbered record is marked: reading from the
        // oldest one kept needs no mark from a deleted one.
        pending.mark_at = at;
        drop(pending);
        self.more.notify_one();
        generation
    }

    /// The store holds everything before `generation` durably: those files
    /// go, but for those a peer still lacks numbered records in (within
    /// [`DeltaLog::keep_for_peers_max`]).
    pub fn folded(&self, generation: u64) {
        let Ok(found) = generations(&self.dir) else {
            return;
        };
        let sizes: Vec<(u64, u64)> = found
            .into_iter()
            .map(|g| {
                let len = std::fs::metadata(file_of(&self.dir, g)).map_or(0, |m| m.len());
                (g, len)
            })
            .collect();
        let keep_from = self.kept_from(generation, &sizes);
        let (mut unfolded, mut kept) = (0, 0);
        for (g, len) in sizes {
            if g >= generation {
                unfolded += len;
            } else if g >= keep_from {
                kept += len;
            } else if let Err(e) = std::fs::remove_file(file_of(&self.dir, g)) {
                warn!(
                    "removing folded log {}: {e}",
                    file_of(&self.dir, g).display()
                );
            }
        }
        let mut pending = self.pending.lock();
        while pending.starts.len() > 1 && pending.starts[0].1 < keep_from {
            pending.starts.pop_front();
        }
        let oldest = pending.starts[0].0;
        while pending.marks.front().is_some_and(|&(_, at)| at < oldest) {
            pending.marks.pop_front();
        }
        drop(pending);
        self.unfolded_bytes.store(unfolded, Ordering::Relaxed);
        self.kept_bytes.store(kept, Ordering::Relaxed);
    }

    /// The oldest generation to keep when the store holds everything before
    /// `folded`: the one holding the first numbered record some peer lacks,
    /// unless the kept bytes would pass the bound.
    fn kept_from(&self, folded: u64, sizes: &[(u64, u64)]) -> u64 {
        let needs = self.peer_needs.lock().clone();
        let pending = self.pending.lock();
        let Some(&(oldest_seq, _)) = pending.marks.front() else {
            return folded;
        };
        // A peer that lacks records the log no longer holds gets a state
        // transfer: it holds nothing back.
        let Some(need) = needs
            .into_iter()
            .filter(|&n| n >= oldest_seq && n <= pending.last_numbered)
            .min()
        else {
            return folded;
        };
        let Some(&(_, at)) = pending.marks.iter().rev().find(|&&(seq, _)| seq <= need) else {
            return folded;
        };
        let Some(&(_, holding)) = pending.starts.iter().rev().find(|&&(start, _)| start <= at)
        else {
            return folded;
        };
        drop(pending);
        let max = self.keep_max.load(Ordering::Relaxed);
        let wanted = holding.min(folded);
        let mut keep = wanted;
        let mut kept: u64 = sizes
            .iter()
            .filter(|&&(g, _)| g >= wanted && g < folded)
            .map(|&(_, len)| len)
            .sum();
        for &(g, len) in sizes.iter().filter(|&&(g, _)| g >= wanted && g < folded) {
            if kept <= max {
                break;
            }
            kept -= len;
            keep = g + 1;
        }
        keep
    }

    /// The first sequence number each peer lacks: the generations holding
    /// them are kept past their fold (see [`DeltaLog::folded`]).
    pub fn keep_for_peers(&self, needs: Vec<u64>) {
        *self.peer_needs.lock() = needs;
    }

    /// `repl-log-max-size`: the most bytes of folded generations kept for
    /// peers.
    pub fn keep_for_peers_max(&self, bytes: u64) {
        self.keep_max.store(bytes, Ordering::Relaxed);
    }

    /// The oldest numbered record the log holds, and the newest appended.
    pub fn numbered_range(&self) -> Option<(u64, u64)> {
        let pending = self.pending.lock();
        pending
            .marks
            .front()
            .map(|&(first, _)| (first, pending.last_numbered))
    }

    /// Hands `each` the payloads of the numbered records from `from` on, in
    /// order, about `max_bytes` of them; `seq_of` tells a numbered record's
    /// number from its payload (`None`: not a numbered record).
    pub fn read_numbered(
        &self,
        from: u64,
        max_bytes: usize,
        seq_of: impl Fn(&[u8]) -> Option<u64>,
        mut each: impl FnMut(&[u8]),
    ) -> NumberedRead {
        let (mut at, starts, written) = {
            let pending = self.pending.lock();
            let Some(&(_, at)) = pending.marks.iter().rev().find(|&&(seq, _)| seq <= from) else {
                return NumberedRead::Gone;
            };
            let first = pending
                .starts
                .iter()
                .rposition(|&(start, _)| start <= at)
                .unwrap_or(0);
            let starts: Vec<(u64, u64)> = pending.starts.iter().skip(first).copied().collect();
            // Read with the generations: a rotation written after this
            // would put `written` past the last of them.
            (at, starts, self.written.load(Ordering::Acquire))
        };
        let mut next = from;
        let mut bytes = 0;
        'files: for (i, &(start, generation)) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(written, |&(s, _)| s.min(written));
            if at >= end {
                if end == written {
                    break;
                }
                continue;
            }
            let path = file_of(&self.dir, generation);
            let gone = |what: String| {
                warn!("reading {} for a peer: {what}", path.display());
                NumberedRead::Gone
            };
            let mut file = match File::open(&path) {
                Ok(f) => BufReader::with_capacity(1 << 20, f),
                // Folded and removed since: the peer needs a transfer.
                Err(e) => return gone(format!("{e}")),
            };
            if let Err(e) = file.seek(SeekFrom::Start(at - start)) {
                return gone(format!("{e}"));
            }
            let mut header = [0u8; HEADER];
            let mut payload = Vec::new();
            while at < end {
                if let Err(e) = file.read_exact(&mut header) {
                    return gone(format!("at byte {}: {e}", at - start));
                }
                let word = |i: usize| {
                    u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
                };
                let (len, len_crc, crc) = (word(0), word(4), word(8));
                // (Only this process's files: written with CRC-32C.)
                if Checksum::Castagnoli.of(&len.to_le_bytes()) != len_crc {
                    return gone(format!(
                        "a record header checksum mismatch at byte {}",
                        at - start
                    ));
                }
                payload.resize(len as usize, 0);
                if let Err(e) = file.read_exact(&mut payload) {
                    return gone(format!("at byte {}: {e}", at - start));
                }
                if Checksum::Castagnoli.of(&payload) != crc {
                    return gone(format!("a record checksum mismatch at byte {}", at - start));
                }
                at += (HEADER + payload.len()) as u64;
                match seq_of(&payload) {
                    Some(seq) if seq < next => {}
                    Some(seq) if seq == next => {
                        each(&payload);
                        next += 1;
                        bytes += payload.len();
                        if bytes >= max_bytes {
                            break 'files;
                        }
                    }
                    Some(seq) => {
                        return gone(format!("record {seq} where {next} was expected"));
                    }
                    None => {}
                }
            }
        }
        if next == from {
            NumberedRead::NotYet
        } else {
            NumberedRead::Read { last: next - 1 }
        }
    }

    /// Waits until the log is durable (as `appendfsync` says) up to
    /// `position`.
    pub async fn durable_at(&self, position: u64) {
        let mut rx = self.durable.subscribe();
        let _ = rx.wait_for(|&d| d >= position).await;
    }

    /// Bytes the log's buffers hold (their capacity: appended bytes not
    /// written yet, the round being written, the spare buffer). Like
    /// Redis's AOF buffer they are left out of what `maxmemory` bounds
    /// (`crate::node::Node::buffers_not_counted`).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Sets `buffered` after a buffer's capacity changed (under the
    /// pending lock, which every change holds).
    fn count_buffers(&self, pending: &mut Pending) {
        pending.bytes_counted = pending.bytes.capacity();
        self.buffered.store(pending.buffered(), Ordering::Relaxed);
    }

    /// The position up to which the log is durable (see `durable`).
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Whether a client's reply waits for the fsync covering its writes.
    pub fn waits_for_fsync(&self) -> bool {
        self.fsync == Fsync::Always
    }

    /// Writes what is pending and stops the writer (the node is closing).
    pub fn close(&self) {
        self.pending.lock().stop = true;
        self.more.notify_one();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }

    fn write_loop(&self, mut file: File) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        let mut file_len = 0;
        // What a failed round left to write again.
        let mut carry: Option<Round> = None;
        let mut failures_since_stop = 0;
        let mut written: Option<Vec<u8>> = None;
        loop {
            let round = match carry.take() {
                Some(round) => {
                    let mut pending = self.pending.lock();
                    pending.writing = round.bytes.capacity();
                    self.count_buffers(&mut pending);
                    round
                }
                None => {
                    let mut round = self.next_round(unsynced, last_sync, written.take());
                    seal_records(&mut round.bytes);
                    round
                }
            };
            if let Err((done, e)) = self.write_round(&mut file, &mut file_len, &round) {
                self.failed(&e);
                if self.pending.lock().stop {
                    failures_since_stop += 1;
                    if failures_since_stop >= GIVE_UP_AT_STOP {
                        error!(
                            "the delta log in {} could not be written at shutdown; the final fold holds every write before it",
                            self.dir.display()
                        );
                        return;
                    }
                }
                // What was not written goes again.
                let start = round.end - round.bytes.len() as u64;
                carry = Some(Round {
                    bytes: round.bytes[(done - start) as usize..].to_vec(),
                    rotations: round
                        .rotations
                        .into_iter()
                        .filter(|(at, _)| *at >= done)
                        .collect(),
                    ..round
                });
                continue;
            }
            self.failing.store(false, Ordering::Relaxed);
            unsynced |= !round.bytes.is_empty() && self.fsync != Fsync::No;
            let sync_now = match self.fsync {
                Fsync::Always => true,
                Fsync::Everysec => round.stop || last_sync.elapsed() >= Duration::from_secs(1),
                Fsync::No => false,
            };
            if sync_now && unsynced {
                if let Err(e) = file.sync_data() {
                    self.fatal(&format!("fsync: {e}"));
                }
                self.fsyncs.fetch_add(1, Ordering::Relaxed);
                unsynced = false;
                last_sync = Instant::now();
            }
            if !unsynced {
                let end = round.end;
                self.durable.send_if_modified(|d| {
                    let moved = *d < end;
                    *d = (*d).max(end);
                    moved
                });
            }
            if round.stop {
                return;
            }
            written = Some(round.bytes);
        }
    }

    /// Waits for appended bytes, a rotation, the stop, or (with bytes
    /// written but not synced) the next second's fsync.
    fn next_round(&self, unsynced: bool, last_sync: Instant, written: Option<Vec<u8>>) -> Round {
        // A buffer grown far past a round's usual size by a burst goes
        // back to the allocator rather than stay held (freed here, not
        // under the lock every append takes).
        let written = written.filter(|b| b.capacity() <= SPARE_MAX);
        let mut pending = self.pending.lock();
        if let Some(mut spare) = written {
            spare.clear();
            pending.spare = spare;
        }
        pending.writing = 0;
        self.count_buffers(&mut pending);
        let mut idle_ticks = 0;
        loop {
            if pending.stop || !pending.rotations.is_empty() {
                break;
            }
            let ready = match self.fsync {
                Fsync::Always => !pending.bytes.is_empty(),
                _ => pending.bytes.len() >= WAKE_BYTES,
            };
            if ready {
                break;
            }
            let holding = pending.bytes.capacity() + pending.spare.capacity() > IDLE_KEEP;
            let tick = if self.fsync == Fsync::Always && !holding {
                None
            } else {
                Some(WRITE_EVERY)
            };
            let until_sync =
                unsynced.then(|| Duration::from_secs(1).saturating_sub(last_sync.elapsed()));
            let wait = match (tick, until_sync) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match wait {
                Some(wait) => {
                    if wait.is_zero() || self.more.wait_for(&mut pending, wait).timed_out() {
                        // A tick: write what there is, or sync what is due.
                        if !pending.bytes.is_empty() || until_sync.is_some_and(|w| w <= wait) {
                            break;
                        }
                        idle_ticks += 1;
                        if holding && idle_ticks >= IDLE_TICKS {
                            let held = (
                                std::mem::take(&mut pending.bytes),
                                std::mem::take(&mut pending.spare),
                            );
                            self.count_buffers(&mut pending);
                            parking_lot::MutexGuard::unlocked(&mut pending, || drop(held));
                        }
                    }
                }
                None => self.more.wait(&mut pending),
            }
        }
        let spare = std::mem::take(&mut pending.spare);
        let bytes = std::mem::replace(&mut pending.bytes, spare);
        pending.writing = bytes.capacity();
        self.count_buffers(&mut pending);
        Round {
            bytes,
            rotations: std::mem::take(&mut pending.rotations),
            end: pending.end,
            stop: pending.stop,
        }
    }

    fn fatal(&self, what: &str) -> ! {
        error!(
            "the delta log in {} cannot be made durable ({what}): stopping, as nothing written since its last fsync can be trusted to be on disk",
            self.dir.display()
        );
        std::process::exit(1);
    }

    fn failed(&self, what: &str) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            error!("writing the delta log in {}: {what}", self.dir.display());
        }
        std::thread::sleep(RETRY_AFTER);
    }

    /// Writes a round's bytes, switching files at each rotation. On
    /// failure, returns the position written up to.
    fn write_round(
        &self,
        file: &mut File,
        file_len: &mut u64,
        round: &Round,
    ) -> Result<(), (u64, String)> {
        let start = round.end - round.bytes.len() as u64;
        let mut at = start;
        for &(switch_at, generation) in &round.rotations {
            let part = &round.bytes[(at - start) as usize..(switch_at - start) as usize];
            self.write_part(file, file_len, part)
                .map_err(|e| (at, format!("write: {e}")))?;
            self.written.store(switch_at, Ordering::Release);
            at = switch_at;
            // Whole before the next file takes writes: a torn record is
            // only ever at the end of the newest file a life wrote.
            if let Err(e) = file.sync_data() {
                self.fatal(&format!("fsync before rotating: {e}"));
            }
            *file = Self::create(&self.dir, generation)
                .map_err(|e| (at, format!("starting generation {generation}: {e}")))?;
            *file_len = 0;
        }
        let part = &round.bytes[(at - start) as usize..];
        self.write_part(file, file_len, part)
            .map_err(|e| (at, format!("write: {e}")))?;
        self.written.store(round.end, Ordering::Release);
        Ok(())
    }

    /// Writes all of `part` or, failing, leaves the file as it was (a
    /// write cut short would put half a record before its retry).
    fn write_part(&self, file: &mut File, file_len: &mut u64, part: &[u8]) -> std::io::Result<()> {
        if let Err(e) = file.write_all(part) {
            if let Err(trunc) = file.set_len(*file_len) {
                self.fatal(&format!("{e}, then undoing the partial write: {trunc}"));
            }
            return Err(e);
        }
        *file_len += part.len() as u64;
        self.counted(part.len());
        Ok(())
    }

    fn counted(&self, n: usize) {
        self.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        self.unfolded_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Replay {
    /// Calls `each` with every record's payload, file by file. A file may
    /// end in a record cut short (a crash mid-write): dropped, and the file
    /// truncated to its last whole record.
    pub fn for_each(
        &self,
        mut each: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<u64, LogError> {
        let mut records = 0;
        for path in &self.files {
            let corrupt = |at: u64, what: String| LogError::Corrupt {
                path: path.clone(),
                at,
                what,
            };
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|source| LogError::Open {
                    path: path.clone(),
                    source,
                })?;
            let mut at = 0usize;
            let mut kind = Checksum::Castagnoli;
            while at < bytes.len() {
                // A crash mid-write cuts the last record of the file its
                // life wrote short; a later life wrote its own files after.
                let torn = |what: &str| -> Result<(), LogError> {
                    warn!(
                        "{}: the last record is cut short ({what}) at byte {at}: a crash mid-write; dropped",
                        path.display()
                    );
                    truncate(path, at as u64).map_err(|source| LogError::Open {
                        path: path.clone(),
                        source,
                    })
                };
                if bytes.len() - at < HEADER {
                    torn("header")?;
                    break;
                }
                let word = |i: usize| {
                    u32::from_le_bytes([
                        bytes[at + i],
                        bytes[at + i + 1],
                        bytes[at + i + 2],
                        bytes[at + i + 3],
                    ])
                };
                let (len, len_crc, crc) = (word(0), word(4), word(8));
                if at == 0 {
                    kind = Checksum::of_first(len, len_crc).unwrap_or(Checksum::Castagnoli);
                }
                if kind.of(&len.to_le_bytes()) != len_crc {
                    if bytes[at..].iter().all(|&b| b == 0) {
                        torn("zeros")?;
                        break;
                    }
                    return Err(corrupt(
                        at as u64,
                        "a record header checksum mismatch".into(),
                    ));
                }
                let len = len as usize;
                if len >= MAX_RECORD {
                    return Err(corrupt(at as u64, format!("a record of {len} bytes")));
                }
                if bytes.len() - at - HEADER < len {
                    torn("payload")?;
                    break;
                }
                let payload = &bytes[at + HEADER..at + HEADER + len];
                if kind.of(payload) != crc {
                    return Err(corrupt(at as u64, "a record checksum mismatch".into()));
                }
                each(payload).map_err(|what| corrupt(at as u64, what))?;
                records += 1;
                at += HEADER + len;
            }
        }
        Ok(records)
    }
}

/// Fills in the length's and the payload's checksums of each record in
/// `bytes` (whole records, as appended). Done by the writer as it takes a
/// round, not by the append: there the checksum read the payload right
/// after the encoding's stores, before they had landed, and the CPU's
/// store forwarding stalled (a logged INCR's checksum took twice the time
/// its instructions needed); and the length's took the server's thread a
/// call and a CPU check per write.
fn seal_records(bytes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { seal_records_sse42(bytes) };
    }
    seal_records_by(bytes, crate::checksum::crc32c);
}

/// [`seal_records`] with the checksum's instructions in its loop: through
/// [`crate::checksum::crc32c`], each record's two checksums took a CPU
/// check and a call each, about 100 instructions a record, as many as its
/// layout.
///
/// # Safety
/// The CPU must have SSE4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn seal_records_sse42(bytes: &mut [u8]) {
    // SAFETY: the caller's CPU has SSE4.2.
    seal_records_by(bytes, |piece| unsafe {
        crate::checksum::crc32c_sse42(piece)
    });
}

#[inline(always)]
fn seal_records_by(bytes: &mut [u8], crc32c: impl Fn(&[u8]) -> u32) {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let len_crc = crc32c(&header[..4]);
        let payload = at + HEADER..at + HEADER + len;
        let Some(crc) = bytes.get(payload.clone()).map(&crc32c) else {
            debug_assert!(false, "a round of whole records");
            return;
        };
        bytes[at + 4..at + 8].copy_from_slice(&len_crc.to_le_bytes());
        bytes[at + 8..at + HEADER].copy_from_slice(&crc.to_le_bytes());
        at = payload.end;
    }
}

fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(len)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> crate::TestDir {
        crate::TestDir::new("log", name)
    }

    fn replayed(replay: &Replay) -> Result<Vec<Vec<u8>>, LogError> {
        let mut out = Vec::new();
        replay.for_each(|p| {
            out.push(p.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    proptest::proptest! {
        /// A round sealed by the CPU's instructions holds the same bytes as
        /// one sealed by the portable checksum, and each header holds
        /// CRC-32C of its length and of its payload.
        #[test]
        fn a_sealed_round_holds_each_records_checksums(
            payloads in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..100),
                0..20,
            ),
        ) {
            let mut round = Vec::new();
            for p in &payloads {
                round.extend_from_slice(&(p.len() as u32).to_le_bytes());
                round.extend_from_slice(&[0; HEADER - 4]);
                round.extend_from_slice(p);
            }
            let mut portable = round.clone();
            seal_records_by(&mut portable, crate::checksum::crc32c);
            seal_records(&mut round);
            proptest::prop_assert_eq!(&round, &portable);
            let mut at = 0;
            for p in &payloads {
                let word = |i: usize| u32::from_le_bytes(round[at + i..at + i + 4].try_into().unwrap());
                proptest::prop_assert_eq!(word(4), crate::checksum::crc32c(&(p.len() as u32).to_le_bytes()));
                proptest::prop_assert_eq!(word(8), crate::checksum::crc32c(p));
                at += HEADER + p.len();
            }
        }
    }

    /// Records as builds before session 34 wrote them: CRC-32 (IEEE).
    fn ieee_records(all: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for r in all {
            let len = (r.len() as u32).to_le_bytes();
            bytes.extend_from_slice(&len);
            bytes.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(r).to_le_bytes());
            bytes.extend_from_slice(r);
        }
        bytes
    }

    /// This build writes CRC-32C, and still replays the CRC-32 (IEEE) of
    /// the logs an earlier build left (an upgrade restarts on them), each
    /// file by the checksum of its first record; a flipped byte in one is
    /// corruption as before.
    #[test]
    fn a_log_an_earlier_build_wrote_still_replays() {
        let dir = temp_dir("earlier-build");
        let (log, _) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let all = records(6);
        log.append(&all[3]);
        log.close();
        let logs = dir.join(LOG_DIR);
        let ours = std::fs::read(file_of(&logs, 0)).unwrap();
        let len = (all[3].len() as u32).to_le_bytes();
        assert_eq!(
            ours[4..12],
            [
                crate::checksum::crc32c(&len).to_le_bytes(),
                crate::checksum::crc32c(&all[3]).to_le_bytes()
            ]
            .concat()[..],
            "written with CRC-32C"
        );
        // Generation 0 as an earlier build left it, before this build's.
        let earlier = ieee_records(&all[..3]);
        std::fs::write(file_of(&logs, 0), &earlier).unwrap();
        std::fs::write(file_of(&logs, 1), &ours).unwrap();
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        assert_eq!(replayed(&replay).unwrap(), all[..4].to_vec());
        log.append(&all[4]);
        log.append(&all[5]);
        log.close();
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        assert_eq!(replayed(&replay).unwrap(), all);
        log.close();
        let mut flipped = earlier.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        std::fs::write(file_of(&logs, 0), &flipped).unwrap();
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let err = replayed(&replay).unwrap_err().to_string();
        assert!(err.contains("a record checksum mismatch"), "{err}");
        log.close();
    }

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("record {i}").into_bytes()).collect()
    }

    /// `appendfsync always` with writes numbered as they are made: a
    /// reply waits until the records up to its write's number are in, and
    /// durable.
    #[tokio::test]
    async fn durable_through_waits_for_the_numbered_records_up_to_it() {
        let dir = temp_dir("through");
        let (log, _) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        log.append_numbered(b"one", 1);
        tokio::time::timeout(Duration::from_secs(5), log.durable_through(1))
            .await
            .expect("record 1 is in");
        let waiting = {
            let log = log.clone();
            tokio::spawn(async move { log.durable_through(3).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.append_numbered(b"two", 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "record 3 is not in yet");
        log.append_numbered_parts(&[b"thr", b"ee"], 3);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by record 3")
            .unwrap();
        assert!(log.durable() >= log.appended());
        log.close();
    }

    #[test]
    fn what_is_appended_is_replayed_in_order_across_generations() {
        let dir = temp_dir("order");
        let (log, _) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        let all = records(30);
        for (i, r) in all.iter().enumerate() {
            log.append(r);
            if i % 10 == 9 {
                log.rotate();
            }
        }
        log.close();
        let (log, replay) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        assert_eq!(replay.files.len(), 4, "three rotations, four files");
        assert_eq!(replayed(&replay).unwrap(), all);
        log.close();
    }

    /// Review of session 22: a record is encoded in place in the pending
    /// bytes, so an encoding that fails, or panics, must leave nothing of
    /// it there (a zeroed header would fail the next start as corrupt).
    #[test]
    fn an_encoding_that_fails_or_panics_leaves_no_trace() {
        let dir = temp_dir("encode-fails");
        let (log, _) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        log.append(b"before");
        assert_eq!(
            log.append_encoded(|out| {
                out.extend_from_slice(b"half");
                Err("no")
            }),
            Err("no")
        );
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = log.append_encoded(|out| -> Result<(), ()> {
                out.extend_from_slice(b"half");
                panic!("an encoder's bug");
            });
        }));
        assert!(panicked.is_err());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            log.append_put(8, |out| {
                out[..4].copy_from_slice(b"half");
                panic!("a layout's bug");
            });
        }));
        assert!(panicked.is_err());
        let end = log.append_encoded(|out| {
            out.extend_from_slice(b"after");
            Ok::<(), ()>(())
        });
        assert_eq!(end, Ok(log.appended()));
        let put = log.append_put(16, |out| {
            out[..3].copy_from_slice(b"put");
            3
        });
        assert_eq!(put, log.appended());
        log.close();
        let (log, replay) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        assert_eq!(
            replayed(&replay).unwrap(),
            vec![b"before".to_vec(), b"after".to_vec(), b"put".to_vec()]
        );
        log.close();
    }

    /// A run of numbered records that a panic cuts short keeps those
    /// before it whole; offered again, the numbers the log holds are not
    /// appended twice.
    #[test]
    fn a_numbered_run_cut_short_and_retried_holds_each_record_once() {
        let dir = temp_dir("run-retried");
        let (log, _) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        let all = records(4);
        let run = || (1..=4u64).zip(all.iter().map(|r| &r[..]));
        log.panic_at.store(3, Ordering::SeqCst);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            log.append_numbered_run(run())
        }));
        assert!(panicked.is_err());
        assert_eq!(log.pending.lock().last_numbered, 2);
        log.append_numbered_run(run());
        log.append_numbered(b"again", 4);
        log.close();
        let (log, replay) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        assert_eq!(replayed(&replay).unwrap(), all);
        log.close();
    }

    /// Under `always`, a run that a panic cut short still wakes the
    /// writer for the records it left: their clients wait for them.
    #[tokio::test]
    async fn a_run_cut_short_under_always_still_wakes_the_writer() {
        let dir = temp_dir("cut-short-wakes");
        let (log, _) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        let all = records(3);
        // The writer asleep, waiting for appends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        log.panic_at.store(2, Ordering::SeqCst);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            log.append_numbered_run((1..=3u64).zip(all.iter().map(|r| &r[..])))
        }));
        assert!(panicked.is_err());
        let end = log.appended();
        assert!(end > 0, "record 1 is in");
        tokio::time::timeout(Duration::from_secs(5), log.durable_at(end))
            .await
            .expect("the writer was woken for record 1");
        log.close();
    }

    #[test]
    fn folded_generations_are_removed_and_not_replayed() {
        let dir = temp_dir("folded");
        let (log, _) = DeltaLog::open(&dir, Fsync::Everysec, 0).unwrap();
        let all = records(4);
        log.append(&all[0]);
        log.append(&all[1]);
        let generation = log.rotate();
        log.append(&all[2]);
        log.append(&all[3]);
        log.close();
        log.folded(generation);
        let (log, replay) = DeltaLog::open(&dir, Fsync::Everysec, generation).unwrap();
        assert_eq!(replayed(&replay).unwrap(), all[2..].to_vec());
        log.close();
    }

    #[test]
    fn a_record_cut_short_is_dropped_and_a_flipped_byte_is_an_error() {
        let dir = temp_dir("torn");
        let (log, _) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let all = records(3);
        for r in &all {
            log.append(r);
        }
        log.close();
        let newest = *generations(&dir.join(LOG_DIR)).unwrap().last().unwrap();
        let path = file_of(&dir.join(LOG_DIR), newest);
        let len = std::fs::metadata(&path).unwrap().len();
        truncate(&path, len - 3).unwrap();
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        assert_eq!(replayed(&replay).unwrap(), all[..2].to_vec());
        log.close();
        // Reopened: the cut file is now an older generation, whole again.
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        assert_eq!(replayed(&replay).unwrap(), all[..2].to_vec());
        log.close();
        // A flipped byte anywhere is corruption, named with its file.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let err = replayed(&replay).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("checksum"), "{err}");
        log.close();
    }

    #[test]
    fn a_flipped_length_is_an_error_and_a_zeroed_tail_is_dropped() {
        let dir = temp_dir("length");
        let (log, _) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let all = records(3);
        for r in &all {
            log.append(r);
        }
        log.close();
        let path = file_of(&dir.join(LOG_DIR), 0);
        let whole = std::fs::read(&path).unwrap();
        // Zeros after the last record (space the file system allocated
        // before a crash) are a torn tail.
        let mut zeroed = whole.clone();
        zeroed.extend_from_slice(&[0; 40]);
        std::fs::write(&path, &zeroed).unwrap();
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        assert_eq!(replayed(&replay).unwrap(), all);
        log.close();
        // A length that runs past the end, in the first record: not a torn
        // tail to cut the rest at, but corruption.
        let mut flipped = whole.clone();
        flipped[3] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        let (log, replay) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let err = replayed(&replay).unwrap_err().to_string();
        assert!(err.contains("header checksum"), "{err}");
        log.close();
        assert_eq!(std::fs::read(&path).unwrap(), flipped, "nothing cut");
    }

    /// A numbered record's number, as replication reads its own frames.
    fn seq_of(payload: &[u8]) -> Option<u64> {
        std::str::from_utf8(payload)
            .ok()?
            .strip_prefix("own ")?
            .parse()
            .ok()
    }

    fn read_all(log: &DeltaLog, from: u64, max: usize) -> (NumberedRead, Vec<u64>) {
        let mut got = Vec::new();
        let read = log.read_numbered(from, max, seq_of, |p| got.push(seq_of(p).unwrap()));
        (read, got)
    }

    fn wait_written(log: &DeltaLog) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.written.load(Ordering::Acquire) < log.appended() {
            assert!(Instant::now() < deadline, "the writer never wrote");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Once appends stop, the log's buffers go back to the allocator: a
    /// burst's two round buffers held for good sat on a cache's memory.
    #[test]
    fn an_idle_logs_buffers_go_back_to_the_allocator() {
        for fsync in [Fsync::Always, Fsync::Everysec, Fsync::No] {
            let dir = temp_dir("idle");
            let (log, _) = DeltaLog::open(&dir, fsync, 0).unwrap();
            log.append(&vec![7u8; 2_000_000]);
            assert!(
                log.buffered_bytes() >= 2_000_000,
                "{fsync:?}: {} bytes buffered after a 2 MB append",
                log.buffered_bytes()
            );
            wait_written(&log);
            let deadline = Instant::now() + Duration::from_secs(10);
            while log.buffered_bytes() > IDLE_KEEP {
                assert!(
                    Instant::now() < deadline,
                    "{fsync:?}: {} bytes still buffered by an idle log",
                    log.buffered_bytes()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            log.close();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    /// A written round's buffer takes a later round's appends: a fresh one
    /// each round grew again from nothing, copying itself at every doubling.
    #[test]
    fn a_written_rounds_buffer_takes_the_next_rounds_appends() {
        let dir = temp_dir("spare");
        let (log, _) = DeltaLog::open(&dir, Fsync::No, 0).unwrap();
        let record = [7u8; 100];
        let mut reused = false;
        // A round the writer's tick cut short leaves a small buffer: a few
        // tries.
        for _ in 0..5 {
            for _ in 0..2_000 {
                log.append(&record);
            }
            wait_written(&log);
            log.append(&record);
            if log.pending.lock().bytes.capacity() >= 100_000 {
                reused = true;
                break;
            }
        }
        assert!(reused, "every round's appends began in a new buffer");
        log.close();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Appends own writes 1..=n with a peer's write after each, rotating
    /// every `rotate_every` of them.
    fn numbered_log(dir: &Path, n: u64, rotate_every: u64) -> Arc<DeltaLog> {
        let (log, _) = DeltaLog::open(dir, Fsync::No, 0).unwrap();
        for seq in 1..=n {
            log.append_numbered(format!("own {seq}").as_bytes(), seq);
            log.append(format!("peer write {}", "x".repeat(seq as usize % 97)).as_bytes());
            if seq % rotate_every == 0 {
                log.rotate();
            }
        }
        wait_written(&log);
        log
    }

    #[test]
    fn numbered_records_read_back_from_any_number_across_generations() {
        let dir = temp_dir("numbered");
        let log = numbered_log(&dir, 5_000, 700);
        for from in [1, 2, 699, 700, 701, 2_345, 4_999, 5_000] {
            let (read, got) = read_all(&log, from, usize::MAX);
            assert_eq!(read, NumberedRead::Read { last: 5_000 }, "from {from}");
            assert_eq!(got, (from..=5_000).collect::<Vec<_>>(), "from {from}");
        }
        // A batch stops after about `max` bytes, and the next goes on.
        let (read, got) = read_all(&log, 10, 100);
        let NumberedRead::Read { last } = read else {
            panic!("{read:?}")
        };
        assert_eq!(got, (10..=last).collect::<Vec<_>>());
        assert!(last < 30, "a batch of about 100 bytes: {last}");
        // Appended and not written yet.
        log.append_numbered(b"own 5001", 5_001);
        let later = log.read_numbered(5_001, usize::MAX, seq_of, |_| {});
        assert!(
            matches!(
                later,
                NumberedRead::NotYet | NumberedRead::Read { last: 5_001 }
            ),
            "{later:?}"
        );
        log.close();
    }

    #[test]
    fn folded_generations_stay_while_a_peer_lacks_them_within_the_bound() {
        let dir = temp_dir("kept");
        let log = numbered_log(&dir, 3_000, 1_000);
        log.keep_for_peers_max(u64::MAX);
        let current = log.rotate();
        // The writer opens the new generation's file in its own time (a
        // loaded machine showed the test before it had).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !generations(&dir.join(LOG_DIR)).unwrap().contains(&current) {
            assert!(Instant::now() < deadline, "the writer never rotated");
            std::thread::sleep(Duration::from_millis(2));
        }
        // A peer that lacks write 1_500 keeps the generation holding it,
        // not the one before.
        log.keep_for_peers(vec![1_500, 2_900]);
        log.folded(current);
        let (read, got) = read_all(&log, 1_500, usize::MAX);
        assert_eq!(read, NumberedRead::Read { last: 3_000 });
        assert_eq!(got.len(), 1_501);
        assert!(log.kept_bytes.load(Ordering::Relaxed) > 0);
        assert_eq!(read_all(&log, 999, usize::MAX).0, NumberedRead::Gone);
        // Past the bound, the oldest go even though a peer lacks them.
        log.keep_for_peers_max(1);
        log.folded(current);
        assert_eq!(read_all(&log, 1_500, usize::MAX).0, NumberedRead::Gone);
        assert_eq!(read_all(&log, 2_500, usize::MAX).0, NumberedRead::Gone);
        // Once every peer has everything, nothing folded is kept.
        log.keep_for_peers_max(u64::MAX);
        log.keep_for_peers(vec![3_001]);
        log.folded(current);
        assert_eq!(log.kept_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(
            generations(&dir.join(LOG_DIR)).unwrap(),
            vec![current],
            "only the generation not folded"
        );
        log.close();
    }

    #[test]
    fn an_always_log_is_durable_at_every_appended_position() {
        let dir = temp_dir("always");
        let (log, _) = DeltaLog::open(&dir, Fsync::Always, 0).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for r in records(50) {
            let at = log.append(&r);
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), log.durable_at(at))
                    .await
                    .expect("durable in time")
            });
        }
        assert!(log.fsyncs.load(Ordering::Relaxed) >= 1);
        log.close();
    }
}
