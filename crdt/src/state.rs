//! The replicated state of one key, the ops that change it, and its merge.
//!
//! A key's state has three independent parts, each a join-semilattice:
//! - a last-writer-wins **register** (SET and every string write, DEL as a
//!   tombstone), which also carries the expiry its writer set;
//! - an LWW **expiry field**, written by EXPIRE/PERSIST and friends; the
//!   effective expiry is the later-stamped of it and the register's own;
//! - a **counter**: per node, a [`Tally`] of that node's increments, and per
//!   node the highest prefix of those increments that some reset (a register
//!   write or delete) had observed and so removed.
//!
//! The counter is observed-remove: a SET or DEL removes exactly the
//! increments its node had seen; an increment concurrent with it survives and
//! is added on top of the register's value when the key is read.
//!
//! An expiry delete also sets the key's **floor**, its expire time:
//! everything stamped before it (a counter segment begun before it included)
//! belonged to the key that expired and is gone, whenever it arrives.
//!
//! Ops are pure: `write`, `incr`, `expire` build a *delta*, itself a
//! `KeyState` holding only what changed, and applying it locally or on a
//! replica is the same [`KeyState::merge`]. Merge is commutative, associative
//! and idempotent for whole states and deltas alike.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::coll::{Coll, Kind};
use crate::conflict::{Conflict, ConflictKind, Side, Summary};
use crate::lazy::Lazy;
use crate::nodemap::{MaxBy, NodeMap};
use crate::number::{parse_float, parse_int};
use crate::stamp::{NodeId, Stamp};

/// The LWW register: the latest string write or delete of the key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Register {
    /// Stamp of the write; `Stamp::ZERO` means never written.
    pub stamp: Stamp,
    /// What this write had seen of the key's register writes by *other*
    /// nodes: per origin, the newest such write's HLC time in the chain of
    /// register states it replaced (its parent, its parent's parent, ...).
    /// A write by the same node was seen if older. `None` when the write
    /// replaced only its own node's writes (or nothing): single-writer keys
    /// pay one empty pointer.
    pub seen: Option<Box<NodeMap<u64>>>,
    /// The value; `None` is a tombstone (DEL, or nothing written).
    #[serde(with = "serde_bytes")]
    pub value: Option<Box<[u8]>>,
    /// Absolute expiry in unix ms set by this write; 0 for none.
    pub expire_at_ms: u64,
}

/// Most other nodes a write's `seen` names: a key rewritten by ever more
/// node lives keeps the newest. Dropping an entry can only make a later
/// merge report a loss its winner had in fact seen, never hide one.
pub const MAX_SEEN: usize = 16;

impl Register {
    /// Total order used to pick the winner. Distinct writes never share a
    /// stamp; the rest of the key only makes the order total on any input.
    fn beats(&self, other: &Register) -> bool {
        (self.stamp, self.expire_at_ms, &self.value, &self.seen)
            > (other.stamp, other.expire_at_ms, &other.value, &other.seen)
    }

    /// Whether this write had seen `other` (a register write of the key).
    pub fn has_seen(&self, other: &Register) -> bool {
        if other.stamp.node == self.stamp.node {
            return other.stamp <= self.stamp;
        }
        self.seen
            .as_ref()
            .and_then(|s| s.get(&other.stamp.node))
            .is_some_and(|&time| time >= other.stamp.time)
    }

    /// The `seen` of a write by `node` that replaces this register: this
    /// write and everything it had seen, but `node`'s own writes.
    fn seen_by_successor(&self, node: NodeId) -> Option<Box<NodeMap<u64>>> {
        if self.stamp.is_zero() || (self.stamp.node == node && self.seen.is_none()) {
            return None;
        }
        let mut seen = self.seen.clone().unwrap_or_default();
        seen.upsert(self.stamp.node, self.stamp.time, |t, new| {
            *t = (*t).max(new)
        });
        seen.retain(|n, _| *n != node);
        if seen.len() > MAX_SEEN {
            let mut times: Vec<u64> = seen.values().copied().collect();
            times.sort_unstable();
            let cutoff = times[times.len() - MAX_SEEN];
            seen.retain(|_, t| *t >= cutoff);
        }
        (!seen.is_empty()).then_some(seen)
    }
}

/// The LWW expiry field written by EXPIRE, PEXPIREAT, PERSIST, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExpiryField {
    pub stamp: Stamp,
    /// Absolute expiry in unix ms; 0 means persistent.
    pub at_ms: u64,
}

/// One node's increments to one key, within a segment that began at `epoch`.
///
/// Only the node itself writes its tally, so `(epoch, ops)` orders every
/// version of it. A node begins a new segment (a fresh epoch) when every
/// increment of its old segment was removed by a reset; so the sums stay
/// small and a float sum after a reset holds exactly the increments since.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Tally {
    pub epoch: Stamp,
    /// Increments in this segment.
    pub ops: u64,
    /// Sum of integer increments in this segment (wrapping).
    pub int: i64,
    /// Sum of INCRBYFLOAT increments in this segment, in the node's order.
    pub float: f64,
    /// How many of the increments were INCRBYFLOAT.
    pub float_ops: u64,
}

impl Tally {
    /// Puts back the node of an epoch that a record of `node`'s own
    /// write left implied (named 0: see
    /// [`crate::codec::append_own_node_tally`]). No epoch begins at a
    /// stamp of node 0's, so one with a time and node 0 is one of these.
    pub fn restore_origin(&mut self, node: NodeId) {
        if self.epoch.node == NodeId(0) && self.epoch.time != 0 {
            self.epoch.node = node;
        }
    }
}

impl PartialEq for Tally {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Tally {}

impl Tally {
    fn key(&self) -> (Stamp, u64, i64, u64, u64) {
        (
            self.epoch,
            self.ops,
            self.int,
            self.float.to_bits(),
            self.float_ops,
        )
    }

    /// True when `self` is the same or a later version than `other`.
    pub(crate) fn covers(&self, other: &Tally) -> bool {
        (self.epoch, self.ops) >= (other.epoch, other.ops)
    }

    /// The part of `self` not removed by `removed` (a version of the same
    /// node's tally that some reset observed).
    pub(crate) fn surviving(&self, removed: Option<&Tally>) -> Option<Tally> {
        let Some(r) = removed else { return Some(*self) };
        if r.covers(self) {
            None
        } else if r.epoch == self.epoch {
            Some(Tally {
                epoch: self.epoch,
                ops: self.ops - r.ops,
                int: self.int.wrapping_sub(r.int),
                float: self.float - r.float,
                float_ops: self.float_ops.saturating_sub(r.float_ops),
            })
        } else {
            // A later segment began after this node saw its earlier ones removed.
            Some(*self)
        }
    }
}

impl Tally {
    /// A node's tally after one more increment: `current` continued, or a
    /// new segment begun at `stamp` when the node has none (every increment
    /// of its last one was removed).
    pub(crate) fn next(
        current: Option<&Tally>,
        stamp: Stamp,
        int: i64,
        float: f64,
        is_float: bool,
    ) -> Tally {
        let float_ops = u64::from(is_float);
        match current {
            Some(c) => Tally {
                epoch: c.epoch,
                ops: c.ops + 1,
                int: c.int.wrapping_add(int),
                float: c.float + float,
                float_ops: c.float_ops + float_ops,
            },
            None => Tally {
                epoch: stamp,
                ops: 1,
                int,
                float,
                float_ops,
            },
        }
    }
}

impl MaxBy for Tally {
    fn max_by_version(self, other: Tally) -> Tally {
        if other.key() > self.key() {
            other
        } else {
            self
        }
    }
}

/// Keep the later of two versions of one node's tally.
pub(crate) fn join_tally(into: &mut NodeMap<Tally>, node: NodeId, t: &Tally) {
    into.upsert(node, *t, |mine, theirs| *mine = mine.max_by_version(theirs));
}

/// Everything but the register, boxed: most keys are plain strings and pay
/// one pointer for it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Extras {
    pub expiry: ExpiryField,
    /// Latest tally of each node.
    pub counts: NodeMap<Tally>,
    /// Per node, the latest version of its tally that some reset observed:
    /// none for most keys, so a null pointer until a reset (`lazy.rs`).
    pub removed: Lazy<NodeMap<Tally>>,
    /// Set by an expiry delete to the expire time: every register write,
    /// expiry write and counter segment stamped before it is dead.
    pub floor: Stamp,
}

impl Extras {
    pub(crate) fn is_empty(&self) -> bool {
        self.expiry.stamp.is_zero()
            && self.counts.is_empty()
            && self.removed.is_empty()
            && self.floor.is_zero()
    }

    /// Drops every part stamped before `floor` (the register is the caller's).
    fn prune(&mut self, floor: Stamp) {
        if self.expiry.stamp < floor {
            self.expiry = ExpiryField::default();
        }
        self.counts.retain(|_, t| t.epoch >= floor);
        if let Some(removed) = self.removed.made_mut() {
            removed.retain(|_, t| t.epoch >= floor);
        }
        self.removed.tidy();
    }
}

/// Sum of a key's surviving increments.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CounterSum {
    pub int: i64,
    /// Float increments summed in node-id order, so every node gets the same bits.
    pub float: f64,
    pub float_ops: u64,
    /// Whether any increment survives at all.
    pub any: bool,
}

/// How a key reads at some instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Read<'a> {
    Absent,
    /// A string; also a non-numeric string that hides surviving increments.
    Str(&'a [u8]),
    /// An integer register plus surviving integer increments.
    Int(i64),
    /// A register plus surviving increments of which some were INCRBYFLOAT.
    Float(f64),
}

impl Read<'_> {
    /// The bytes a GET returns, `None` when absent.
    pub fn render(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        match self {
            Read::Absent => None,
            Read::Str(v) => Some(Cow::Borrowed(v)),
            Read::Int(i) => Some(Cow::Owned(i.to_string().into_bytes())),
            Read::Float(f) => Some(Cow::Owned(crate::number::format_float(*f).into_bytes())),
        }
    }
}

/// What a key holds, as TYPE names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    String,
    Coll(Kind),
}

impl KeyType {
    pub fn name(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::Coll(k) => k.name(),
        }
    }
}

/// How a register `value` with surviving increments `sum` reads: a string
/// key, or a hash field.
pub(crate) fn read_value(value: Option<&[u8]>, sum: CounterSum) -> Read<'_> {
    if !sum.any {
        return value.map_or(Read::Absent, Read::Str);
    }
    let float_total = |base: f64| base + sum.int as f64 + sum.float;
    match value {
        None if sum.float_ops == 0 => Read::Int(sum.int),
        None => Read::Float(float_total(0.0)),
        Some(v) => match parse_int(v) {
            Some(base) if sum.float_ops == 0 => Read::Int(base.wrapping_add(sum.int)),
            _ => match parse_float(v) {
                Some(base) => Read::Float(float_total(base)),
                None => Read::Str(v),
            },
        },
    }
}

/// The full replicated state of one key.
///
/// Encoded as it was when the collection part sat in the extras (see the
/// `Serialize` impl below): a register and, if anything else, the extras
/// with the collection part last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyState {
    pub reg: Register,
    pub extras: Option<Box<Extras>>,
    /// Hash, set, sorted-set and list elements, and their causal context:
    /// beside the extras, so that a collection key holds no counter or
    /// expiry room it does not use (a pointer more for every key, 128
    /// bytes less for every collection).
    pub coll: Option<Box<Coll>>,
}

/// The extras as encoded: the collection part last inside them.
#[derive(Serialize)]
struct ExtrasOut<'a> {
    expiry: &'a ExpiryField,
    counts: &'a NodeMap<Tally>,
    removed: &'a Lazy<NodeMap<Tally>>,
    floor: &'a Stamp,
    coll: &'a Option<Box<Coll>>,
}

#[derive(Deserialize)]
struct ExtrasIn {
    expiry: ExpiryField,
    counts: NodeMap<Tally>,
    removed: Lazy<NodeMap<Tally>>,
    floor: Stamp,
    coll: Option<Box<Coll>>,
}

#[derive(Deserialize)]
struct KeyStateIn {
    reg: Register,
    extras: Option<ExtrasIn>,
}

impl Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let none = Extras::default();
        let extras = match (&self.extras, &self.coll) {
            (None, None) => None,
            (x, coll) => {
                let x = x.as_deref().unwrap_or(&none);
                Some(ExtrasOut {
                    expiry: &x.expiry,
                    counts: &x.counts,
                    removed: &x.removed,
                    floor: &x.floor,
                    coll,
                })
            }
        };
        let mut st = s.serialize_struct("KeyState", 2)?;
        st.serialize_field("reg", &self.reg)?;
        st.serialize_field("extras", &extras)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for KeyState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyState, D::Error> {
        let KeyStateIn { reg, extras } = KeyStateIn::deserialize(d)?;
        let Some(x) = extras else {
            return Ok(KeyState {
                reg,
                extras: None,
                coll: None,
            });
        };
        let rest = Extras {
            expiry: x.expiry,
            counts: x.counts,
            removed: x.removed,
            floor: x.floor,
        };
        Ok(KeyState {
            reg,
            extras: (!rest.is_empty()).then(|| Box::new(rest)),
            coll: x.coll,
        })
    }
}

impl KeyState {
    /// Where the state's own allocations lie in memory (its value, its
    /// boxes), for a scan reading many keys whole to prefetch before it
    /// reads them; `None` for each it lacks. Reads no box.
    pub fn heap_parts(&self) -> [Option<usize>; 3] {
        [
            self.reg.value.as_deref().map(|v| v.as_ptr() as usize),
            self.extras.as_deref().map(|x| x as *const Extras as usize),
            self.coll.as_deref().map(|c| c as *const Coll as usize),
        ]
    }

    /// Bytes the state holds on the heap: the value, what its register had
    /// seen, and the counter and expiry metadata (MEMORY USAGE).
    pub fn heap_bytes(&self) -> usize {
        let reg = &self.reg;
        let mut n = reg.value.as_ref().map_or(0, |v| v.len());
        if let Some(seen) = &reg.seen {
            n += std::mem::size_of::<NodeMap<u64>>() + seen.heap_bytes();
        }
        if let Some(x) = &self.extras {
            n += std::mem::size_of::<Extras>() + x.counts.heap_bytes();
            n += x.removed.box_bytes() + x.removed.heap_bytes();
        }
        if let Some(c) = &self.coll {
            n += std::mem::size_of::<Coll>() + c.heap_bytes();
        }
        n
    }

    /// Packs a small hash (see `fields.rs`): for a state decoded whole.
    pub fn pack(&mut self) {
        if let Some(c) = &mut self.coll {
            if !c.part {
                c.hash.pack();
            }
        }
    }

    /// The collection part, if the key has one.
    pub fn coll(&self) -> Option<&Coll> {
        self.coll.as_deref()
    }

    /// The newest stamp of the string part: its register write, or the
    /// start of its newest counter segment.
    fn string_at(&self) -> Stamp {
        let mut at = self.reg.stamp;
        if let Some(x) = &self.extras {
            for t in x.counts.values() {
                at = at.max(t.epoch);
            }
        }
        at
    }

    /// Whether the key shows its string part: it has one, and no
    /// collection write is newer (a collection written since hides it, and
    /// keeps it hidden even once emptied: the key was not a string to
    /// whoever emptied it).
    fn string_visible(&self) -> bool {
        if self.reg.value.is_none() && !self.has_counts() {
            return false;
        }
        self.coll().is_none_or(|c| self.string_at() > c.at)
    }

    /// What the key holds at `now_ms` (ignoring expiry when 0); `None`
    /// when it does not exist.
    pub fn key_type(&self, now_ms: u64) -> Option<KeyType> {
        if now_ms != 0 && self.is_expired(now_ms) {
            return None;
        }
        if self.string_visible() {
            return Some(KeyType::String);
        }
        let c = self.coll()?;
        if self.reg.value.is_some() || self.has_counts() {
            // The string part is hidden: so is any collection older than it.
            if self.string_at() > c.at {
                return None;
            }
        }
        c.visible().map(KeyType::Coll)
    }

    /// Whether the key shows a collection of `kind` at `now_ms` (0: ever)
    /// and holds no other part: `key_type` is that collection and
    /// [`KeyState::has_hidden_parts`] is false, told with one pass.
    pub fn shows_only(&self, kind: Kind, now_ms: u64) -> bool {
        if (now_ms != 0 && self.is_expired(now_ms)) || self.reg.value.is_some() || self.has_counts()
        {
            return false;
        }
        self.coll()
            .is_some_and(|c| Kind::ALL.into_iter().all(|k| (c.len(k) > 0) == (k == kind)))
    }

    /// Whether the state holds a part the key does not show (a string
    /// under a collection, or the elements of another collection).
    pub fn has_hidden_parts(&self) -> bool {
        let shown = self.key_type(0);
        let string = self.reg.value.is_some() || self.has_counts();
        if string && shown != Some(KeyType::String) {
            return true;
        }
        self.coll().is_some_and(|c| {
            Kind::ALL
                .into_iter()
                .any(|k| c.len(k) > 0 && shown != Some(KeyType::Coll(k)))
        })
    }

    /// The parts present but not shown, as conflict sides.
    fn hidden_sides(&self) -> Vec<(KeyType, Side)> {
        let shown = self.key_type(0);
        let mut out = Vec::new();
        if shown != Some(KeyType::String) {
            if self.reg.value.is_some() {
                out.push((KeyType::String, register_side(&self.reg)));
            } else if self.has_counts() {
                let sum = self.counter_sum();
                out.push((
                    KeyType::String,
                    Side {
                        origin: self.string_at().node,
                        stamp: self.string_at(),
                        what: Summary::Increment {
                            int: sum.int,
                            float: sum.float,
                        },
                    },
                ));
            }
        }
        if let Some(c) = self.coll() {
            for k in Kind::ALL {
                if c.len(k) > 0 && shown != Some(KeyType::Coll(k)) {
                    out.push((KeyType::Coll(k), c.side(k)));
                }
            }
        }
        out
    }

    /// The side a type clash names as its winner: the part shown.
    fn shown_side(&self) -> Option<Side> {
        match self.key_type(0)? {
            KeyType::String => Some(register_side(&self.reg)),
            KeyType::Coll(k) => self.coll().map(|c| c.side(k)),
        }
    }

    /// True when the state holds nothing at all (no write ever merged).
    pub fn is_empty(&self) -> bool {
        self.reg.stamp.is_zero() && self.extras.is_none() && self.coll.is_none()
    }

    /// Effective absolute expiry in unix ms, 0 when none.
    pub fn expire_at_ms(&self) -> u64 {
        match &self.extras {
            Some(x) if x.expiry.stamp > self.reg.stamp => x.expiry.at_ms,
            _ => self.reg.expire_at_ms,
        }
    }

    /// Whether the key's expiry has passed at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        let at = self.expire_at_ms();
        at != 0 && at <= now_ms
    }

    /// Sum of the increments no reset has removed.
    pub fn counter_sum(&self) -> CounterSum {
        let mut sum = CounterSum::default();
        let Some(x) = &self.extras else { return sum };
        for (node, tally) in x.counts.iter() {
            if let Some(s) = tally.surviving(x.removed.get(node)) {
                #[cfg(feature = "fault-injection")]
                if crate::fault::get() == crate::fault::Broken::CounterMax {
                    sum.int = if sum.any { sum.int.max(s.int) } else { s.int };
                    sum.any = true;
                    continue;
                }
                sum.int = sum.int.wrapping_add(s.int);
                sum.float += s.float;
                sum.float_ops += s.float_ops;
                sum.any = true;
            }
        }
        sum
    }

    /// How the key reads at `now_ms`, ignoring expiry when `now_ms` is 0.
    pub fn read(&self, now_ms: u64) -> Read<'_> {
        if now_ms != 0 && self.is_expired(now_ms) {
            return Read::Absent;
        }
        if self.coll.is_some() && !self.string_visible() {
            return Read::Absent;
        }
        read_value(self.reg.value.as_deref(), self.counter_sum())
    }

    /// Whether the key exists at `now_ms` (ignoring expiry when 0). O(1):
    /// `normalize` keeps only tallies with surviving increments in `counts`.
    pub fn exists(&self, now_ms: u64) -> bool {
        if now_ms != 0 && self.is_expired(now_ms) {
            return false;
        }
        if self.coll.is_some() {
            return self.key_type(0).is_some();
        }
        self.reg.value.is_some() || self.has_counts()
    }

    /// The latest stamp anywhere in the state that a reset must follow.
    pub fn latest_stamp(&self) -> Stamp {
        let mut latest = self.reg.stamp;
        if let Some(x) = &self.extras {
            latest = latest.max(x.expiry.stamp).max(x.floor);
            for t in x.counts.values().chain(x.removed.values()) {
                latest = latest.max(t.epoch);
            }
        }
        if let Some(c) = &self.coll {
            latest = latest.max(c.at);
        }
        latest
    }

    /// The earliest stamp of what this state brings to a merge: its
    /// register, expiry, floor and counter segments (ZERO parts left out);
    /// `None` when it brings none. Removal records only remove, so they are
    /// left out too: a write whose every part is newer than a delete can
    /// never be one that delete beat.
    pub fn earliest_added_stamp(&self) -> Option<Stamp> {
        let mut parts = vec![self.reg.stamp];
        if let Some(x) = &self.extras {
            parts.extend([x.expiry.stamp, x.floor]);
            parts.extend(x.counts.values().map(|t| t.epoch));
        }
        parts.extend(self.coll.as_ref().and_then(|c| c.earliest_added()));
        parts.into_iter().filter(|s| !s.is_zero()).min()
    }

    // ----- ops: pure, each returns a delta to merge locally and replicate -----

    /// The delta of a collection command of `kind` at `stamp`: `ops` adds
    /// its element writes to the delta against the current collection
    /// part. Elements of other kinds that concurrent writes left hidden go
    /// (the command saw the key as `kind`). A command that creates the key
    /// also persists it, as INCR does; a key that shows nothing but holds
    /// hidden parts is deleted first (the caller's job: see the server's
    /// `Writer`).
    pub fn coll_write(
        &self,
        stamp: Stamp,
        kind: Kind,
        ops: impl FnOnce(&Coll, &mut Coll),
    ) -> KeyState {
        let empty = Coll::default();
        let current = self.coll().unwrap_or(&empty);
        let mut delta = Coll::delta(stamp, kind);
        current.clear_others_into(&mut delta, kind, stamp);
        ops(current, &mut delta);
        let expiry = if self.exists(0) {
            ExpiryField::default()
        } else {
            ExpiryField { stamp, at_ms: 0 }
        };
        KeyState {
            reg: Register::default(),
            extras: (!expiry.stamp.is_zero()).then(|| {
                Box::new(Extras {
                    expiry,
                    ..Extras::default()
                })
            }),
            coll: Some(Box::new(delta)),
        }
    }

    /// A register write (`Some(value)`) or delete (`None`) stamped `stamp`,
    /// expiring at `expire_at_ms` (0: never). It removes every increment this
    /// state has observed.
    pub fn write(&self, stamp: Stamp, value: Option<&[u8]>, expire_at_ms: u64) -> KeyState {
        let expire_at_ms = if value.is_some() { expire_at_ms } else { 0 };
        let removed = match &self.extras {
            Some(x) if !x.counts.is_empty() => Some(Box::new(Extras {
                removed: Lazy::new(x.counts.clone()),
                ..Extras::default()
            })),
            _ => None,
        };
        KeyState {
            reg: Register {
                stamp,
                seen: self.reg.seen_by_successor(stamp.node),
                value: value.map(Box::from),
                expire_at_ms,
            },
            extras: removed,
            coll: self
                .coll
                .as_ref()
                .filter(|c| c.has_elements())
                .map(|c| Box::new(c.clear(stamp))),
        }
    }

    /// Applies this node's own register write in place: the same state as
    /// `self.merge_owned(self.write(stamp, value, expire_at_ms))`, but a
    /// value of the old one's length is copied into the old allocation
    /// instead of allocating anew and freeing the old.
    ///
    /// Returns true when the resulting state *is* the write's delta (the
    /// write won outright and the key holds no counter or expiry field), so
    /// a caller that must replicate the delta can send the state instead of
    /// building it.
    pub fn write_in_place(
        &mut self,
        stamp: Stamp,
        value: Option<&[u8]>,
        expire_at_ms: u64,
    ) -> bool {
        if stamp <= self.reg.stamp || self.coll().is_some_and(Coll::has_elements) {
            // Not newer than what is here (never so for a local HLC stamp),
            // or elements to remove: let the merge decide.
            let delta = self.write(stamp, value, expire_at_ms);
            self.merge_owned(delta);
            return false;
        }
        match (&mut self.reg.value, value) {
            (Some(old), Some(new)) if old.len() == new.len() => old.copy_from_slice(new),
            (slot, new) => *slot = new.map(Box::from),
        }
        self.reg.seen = self.reg.seen_by_successor(stamp.node);
        self.reg.stamp = stamp;
        self.reg.expire_at_ms = if value.is_some() { expire_at_ms } else { 0 };
        if let Some(x) = &mut self.extras {
            // The write removes every increment it observed: all of them.
            let counts = std::mem::take(&mut x.counts);
            for (node, t) in counts.iter() {
                join_tally(x.removed.make(), *node, t);
            }
        }
        self.normalize();
        self.extras.is_none() && self.coll.is_none()
    }

    /// The tally `stamp.node` has after one more increment on this state.
    fn next_tally(&self, stamp: Stamp, int: i64, float: f64, is_float: bool) -> Tally {
        // A tally that every reset so far removed is gone from `counts`
        // (see `normalize`), so a present one still has surviving increments.
        let current = self.extras.as_ref().and_then(|x| x.counts.get(&stamp.node));
        Tally::next(current, stamp, int, float, is_float)
    }

    /// An increment by `int` (INCRBY) or by `float` (INCRBYFLOAT, with
    /// `is_float`) made by `stamp.node` at `stamp`.
    ///
    /// On a key that does not exist it creates one, and a new key has no
    /// TTL: the delta also persists the key. Without that, an expiry field
    /// left under a tombstone would apply to the new counter on a node that
    /// still held the pair and not on one that had collected it.
    pub fn incr(&self, stamp: Stamp, int: i64, float: f64, is_float: bool) -> KeyState {
        let mut delta =
            KeyState::tally_delta(stamp.node, self.next_tally(stamp, int, float, is_float));
        if !self.exists(0) {
            if let Some(x) = &mut delta.extras {
                x.expiry = ExpiryField { stamp, at_ms: 0 };
            }
        }
        delta
    }

    /// The delta that carries one node's tally.
    pub fn tally_delta(node: NodeId, tally: Tally) -> KeyState {
        KeyState {
            reg: Register::default(),
            extras: Some(Box::new(Extras {
                counts: NodeMap::single(node, tally),
                ..Extras::default()
            })),
            coll: None,
        }
    }

    /// Applies this node's own increment to a key that exists in place: the
    /// same state as `self.merge(&self.incr(..))`, without building the
    /// delta. Returns the new tally, which [`KeyState::tally_delta`] turns
    /// into the delta to replicate. (A newer tally of this node is never
    /// covered by `removed`, and a local increment is only made on a numeric
    /// value, so neither normalisation nor conflict detection has anything
    /// to do.)
    pub fn incr_in_place(&mut self, stamp: Stamp, int: i64, float: f64, is_float: bool) -> Tally {
        debug_assert!(self.exists(0), "creating a key takes `incr`");
        let tally = self.next_tally(stamp, int, float, is_float);
        let extras = self.extras.get_or_insert_with(Default::default);
        extras
            .counts
            .upsert(stamp.node, tally, |mine, new| *mine = new);
        tally
    }

    /// Sets the key's expiry to `at_ms` (0: persist), stamped `stamp`.
    pub fn expire(&self, stamp: Stamp, at_ms: u64) -> KeyState {
        KeyState {
            reg: Register::default(),
            extras: Some(Box::new(Extras {
                expiry: ExpiryField { stamp, at_ms },
                ..Extras::default()
            })),
            coll: None,
        }
    }

    /// The delete that `node` records for a key whose expiry has passed:
    /// stamped at the expiry time, or just after the newest stamp in the
    /// state if that is later, so that it removes everything the key held;
    /// and with the expire time as the key's floor, so that what was stamped
    /// before it and arrives later is dead too.
    pub fn expiry_delete(&self, node: NodeId) -> KeyState {
        let expire_at_ms = self.expire_at_ms();
        let at = Stamp::from_unix_ms(expire_at_ms, node);
        let latest = self.latest_stamp();
        let stamp = if at > latest {
            at
        } else {
            latest.next_after(node)
        };
        let mut delta = self.write(stamp, None, 0);
        delta.extras.get_or_insert_with(Default::default).floor =
            Stamp::from_unix_ms(expire_at_ms, NodeId(0));
        // A delta is in canonical form too: removal records the floor
        // already covers go.
        delta.normalize();
        delta
    }

    // ----- merge -----

    /// Merges `other` (a state or a delta) into `self` and returns the
    /// conflicts this merge resolved: writes that lost without their winner
    /// having seen them. The state is idempotent; the report is per delivery
    /// (merging a concurrent loser again reports it again), which is why the
    /// replication layer applies each delta once and conflict logs dedupe by
    /// (key, winner stamp, loser stamp).
    pub fn merge(&mut self, other: &KeyState) -> Vec<Conflict> {
        self.merge_parts(
            Cow::Borrowed(&other.reg),
            other.extras.as_deref(),
            other.coll.as_deref(),
        )
    }

    /// [`KeyState::merge`] taking `other` by value, so a winning value moves
    /// in rather than being copied.
    pub fn merge_owned(&mut self, other: KeyState) -> Vec<Conflict> {
        if self.holds_nothing() && other.is_plain_first_write() {
            // A key's first write: the delta, made whole, is the state (the
            // general merge cost a three-field HSET that made its key as
            // much again as the write). Nothing was there to conflict.
            *self = other;
            if let Some(c) = self.coll.as_deref_mut() {
                c.settle_as_first_state();
            }
            self.normalize();
            return Vec::new();
        }
        let KeyState { reg, extras, coll } = other;
        self.merge_parts(Cow::Owned(reg), extras.as_deref(), coll.as_deref())
    }

    /// Never written: the state of a key that does not exist here.
    fn holds_nothing(&self) -> bool {
        *self == KeyState::default()
    }

    /// A delta with no register write, extras of an expiry and this
    /// node's counters at most, and a plain collection write
    /// ([`Coll::is_plain_first_write`]), if any.
    fn is_plain_first_write(&self) -> bool {
        self.reg == Register::default()
            && self
                .extras
                .as_deref()
                .is_none_or(|x| x.removed.is_empty() && x.floor.is_zero())
            && self.coll.as_deref().is_none_or(Coll::is_plain_first_write)
    }

    fn merge_parts(
        &mut self,
        other_reg: Cow<'_, Register>,
        other_extras: Option<&Extras>,
        other_coll: Option<&Coll>,
    ) -> Vec<Conflict> {
        let mut conflicts = Vec::new();
        let colls = self.coll.is_some() || other_coll.is_some();
        let clashes_before = if colls {
            self.hidden_sides()
        } else {
            Vec::new()
        };
        let counters = self.has_counts() || other_extras.is_some_and(|x| !x.counts.is_empty());
        let hidden_before = if counters {
            self.hidden_increments()
        } else {
            Vec::new()
        };

        let mut reg_changed = false;
        if *other_reg != self.reg {
            let other_wins = other_reg.beats(&self.reg);
            #[cfg(feature = "fault-injection")]
            let other_wins = other_wins
                && !(crate::fault::get() == crate::fault::Broken::DropDeletes
                    && other_reg.value.is_none());
            let (winner, loser) = if other_wins {
                (&*other_reg, &self.reg)
            } else {
                (&self.reg, &*other_reg)
            };
            let expiry_floor = self
                .extras
                .as_ref()
                .map_or(Stamp::ZERO, |x| x.floor)
                .max(other_extras.map_or(Stamp::ZERO, |x| x.floor));
            if let Some(c) = register_conflict(winner, loser, expiry_floor) {
                conflicts.push(c);
            }
            if other_wins {
                self.reg = other_reg.into_owned();
                reg_changed = true;
            }
        }

        if let Some(theirs) = other_extras {
            let mine = self.extras.get_or_insert_with(Default::default);
            if (theirs.expiry.stamp, theirs.expiry.at_ms) > (mine.expiry.stamp, mine.expiry.at_ms) {
                mine.expiry = theirs.expiry;
            }
            for (node, t) in theirs.counts.iter() {
                join_tally(&mut mine.counts, *node, t);
            }
            for (node, t) in theirs.removed.iter() {
                join_tally(mine.removed.make(), *node, t);
            }
            mine.floor = mine.floor.max(theirs.floor);
        }
        match other_coll {
            Some(tc) => {
                let c = self.coll.get_or_insert_with(Default::default);
                for (element, mut conflict) in c.merge(tc) {
                    conflict.element = Some(element);
                    conflicts.push(conflict);
                }
            }
            None => {
                if let Some(c) = &mut self.coll {
                    c.make_whole();
                }
            }
        }
        self.normalize();
        if colls {
            for (part, side) in self.hidden_sides() {
                if clashes_before.iter().any(|(p, _)| *p == part) {
                    continue;
                }
                if let Some(winner) = self.shown_side() {
                    conflicts.push(Conflict {
                        kind: ConflictKind::TypeClash,
                        winner,
                        loser: side,
                        element: None,
                    });
                }
            }
        }

        if counters {
            let kind = if reg_changed {
                ConflictKind::TypeClash
            } else {
                ConflictKind::IncrementHidden
            };
            for side in self.hidden_increments() {
                if !hidden_before.contains(&side) {
                    conflicts.push(Conflict {
                        kind,
                        winner: register_side(&self.reg),
                        loser: side,
                        element: None,
                    });
                }
            }
        }
        conflicts
    }

    /// What of this delta a flush stamped `flush` removes, as conflicts won
    /// by the flush: its write and its increments stamped before it. Only
    /// the node that made the flush can tell a delta it had not seen (one
    /// arriving after it), so only it asks.
    pub fn lost_to_flush(&self, flush: Stamp) -> Vec<Conflict> {
        let winner = Side {
            origin: flush.node,
            stamp: flush,
            what: Summary::Deleted,
        };
        let lost = |loser: Side| Conflict {
            kind: ConflictKind::WriteLostToFlush,
            winner: winner.clone(),
            loser,
            element: None,
        };
        let mut conflicts = Vec::new();
        if self.reg.value.is_some() && self.reg.stamp < flush {
            conflicts.push(lost(register_side(&self.reg)));
        }
        if let Some(x) = &self.extras {
            for (node, t) in x.counts.iter() {
                if let Some(s) = t.surviving(x.removed.get(node)).filter(|s| s.epoch < flush) {
                    conflicts.push(lost(Side {
                        origin: *node,
                        stamp: s.epoch,
                        what: Summary::Increment {
                            int: s.int,
                            float: s.float,
                        },
                    }));
                }
            }
        }
        if let Some(c) = &self.coll {
            for (element, loser) in c.lost_to_flush(flush) {
                let mut conflict = lost(loser);
                conflict.element = Some(element);
                conflicts.push(conflict);
            }
        }
        conflicts
    }

    /// Drops everything stamped before `floor`: the effect of a FLUSHDB or
    /// FLUSHALL stamped `floor` on this key.
    pub fn prune(&mut self, floor: Stamp) {
        if self.reg.stamp < floor {
            self.reg = Register::default();
        }
        if let Some(x) = &mut self.extras {
            x.prune(floor);
        }
        if let Some(c) = &mut self.coll {
            c.prune(floor);
            if c.is_empty() {
                self.coll = None;
            }
        }
        self.normalize();
    }

    /// Whether this state may be dropped at the GC floor `acked`: a
    /// tombstone with no surviving increment and nothing stamped after
    /// `acked`.
    ///
    /// Removal records and the floor go with it. That is safe because the
    /// GC floor is causal (see the replication layer's GcView): every node
    /// has applied everything stamped before it, and this node has applied
    /// every write any node made before applying those. So no increment
    /// concurrent with a reset before `acked` can still arrive here, and a
    /// node's later increments start a new segment no record speaks of.
    pub fn collectable(&self, acked: Stamp) -> bool {
        self.reg.value.is_none()
            && self.reg.stamp <= acked
            && self
                .extras
                .as_ref()
                .is_none_or(|x| x.expiry.stamp <= acked && x.counts.is_empty() && x.floor <= acked)
            && self.coll.as_ref().is_none_or(|c| c.is_collectable(acked))
    }

    /// Drops what the GC floor `acked` makes dead weight from a state that
    /// is kept: a tombstone register at or below it (nothing older can
    /// arrive for it to beat), what the register says it saw at or below
    /// it, the floor, and removal records of
    /// segments no tally here continues (nothing of them can arrive; see
    /// [`KeyState::collectable`]). Nodes compact at different moments;
    /// nothing they merge later reads differently for it, and once each has
    /// compacted past the same floor their states are equal. Returns whether
    /// anything changed.
    pub fn compact(&mut self, acked: Stamp) -> bool {
        let mut changed = false;
        // The tombstone goes last: below, it still counts as the write
        // after a collection part it outdates, as it does on a node that
        // has not compacted yet.
        let reg_stamp = self.reg.stamp;
        let dead_tombstone = self.reg.value.is_none() && !reg_stamp.is_zero() && reg_stamp <= acked;
        // A write at or below the floor reached every node long ago: it can
        // never arrive again to lose, so whether this one saw it no longer
        // matters (and nodes that collected it would not say so).
        if let Some(seen) = &mut self.reg.seen {
            if seen.values().any(|&t| t <= acked.time) {
                seen.retain(|_, t| *t > acked.time);
                if seen.is_empty() {
                    self.reg.seen = None;
                }
                changed = true;
            }
        }
        if let Some(x) = &mut self.extras {
            // A persist (an expiry field of no time, as every key's
            // creation writes) at or below the floor: no older expiry it
            // beats can still arrive, and without it the key reads the
            // same when its register sets no expiry of its own. A new hash
            // keeps no extras for it.
            let persist = x.expiry.at_ms == 0 && !x.expiry.stamp.is_zero();
            if persist && x.expiry.stamp <= acked && self.reg.expire_at_ms == 0 {
                x.expiry = ExpiryField::default();
                changed = true;
            }
            if !x.floor.is_zero() && x.floor <= acked {
                x.floor = Stamp::ZERO;
                changed = true;
            }
            if self.reg.stamp <= acked && !x.removed.is_empty() {
                let counts = &x.counts;
                let before = x.removed.len();
                if let Some(removed) = x.removed.made_mut() {
                    removed.retain(|node, r| counts.get(node).is_some_and(|t| t.epoch == r.epoch));
                }
                x.removed.tidy();
                changed |= x.removed.len() != before;
            }
        }
        if let Some(c) = &mut self.coll {
            changed |= c.compact(acked);
            // Not while it hides a string part: that would show again.
            let counts = self.extras.as_ref().map(|x| &x.counts);
            let hides = (self.reg.value.is_some() || counts.is_some_and(|c| !c.is_empty())) && {
                let mut at = self.reg.stamp;
                for t in counts.into_iter().flat_map(|c| c.values()) {
                    at = at.max(t.epoch);
                }
                at <= c.at
            };
            if c.is_collectable(acked) && self.reg.stamp <= acked && !hides {
                // Its context too: every dot it holds is below the
                // floor, and a node's later dots are numbered past it.
                self.coll = None;
                changed = true;
            }
        }
        // Not while it alone makes surviving increments newer than a
        // collection part that stays: without it, that part would hide
        // them here and not on a node that has not compacted.
        if dead_tombstone && !self.tombstone_shows_counts_over_coll() {
            self.reg = Register::default();
            changed = true;
        }
        if changed {
            self.normalize();
        }
        changed
    }

    /// Strips from a state that arrived in a *state transfer* what the
    /// receiver must already hold or have collected: `held(a)` is a stamp at
    /// or below which the receiver applied every write of node `a`, and
    /// `mine` its state of the key. A part stamped at or below that is here
    /// already (merging it changes nothing) or was deleted and collected
    /// here. A sender whose state predates it (restored from an old copy of
    /// its store, or a removed member added back) thus cannot bring deleted
    /// keys or removed increments back (#11 item 11); and writes the
    /// receiver never applied (a removed member's, made while it was away)
    /// are never taken for collected ones, as a GC floor computed without
    /// that member would.
    ///
    /// A counter segment begun at or below that is kept when the receiver
    /// still knows that segment (a tally or removal record of the same
    /// epoch): its later increments may be new. Not otherwise: any version
    /// of it made before the segment's reset was applied here before the
    /// reset's records were compacted (the GC floor is causal).
    pub fn drop_collected(&mut self, mine: Option<&KeyState>, held: impl Fn(NodeId) -> Stamp) {
        let is_held = |s: Stamp| !s.is_zero() && s <= held(s.node);
        if is_held(self.reg.stamp) {
            self.reg = Register::default();
        }
        if let Some(x) = &mut self.extras {
            if is_held(x.expiry.stamp) {
                x.expiry = ExpiryField::default();
            }
            let known = mine.and_then(|m| m.extras.as_deref());
            x.counts.retain(|node, t| {
                t.epoch.is_zero()
                    || t.epoch > held(*node)
                    || known.is_some_and(|k| {
                        k.counts.get(node).is_some_and(|c| c.epoch == t.epoch)
                            || k.removed.get(node).is_some_and(|r| r.epoch == t.epoch)
                    })
            });
        }
        if let Some(c) = &mut self.coll {
            c.drop_collected(mine.and_then(KeyState::coll), &held);
        }
        self.normalize();
    }

    /// Forgets the parts of a key that a state transfer's sender no longer
    /// holds at all though it *held* them: `held(a)` is a stamp such that the
    /// sender applied every write of node `a` stamped at or below it. Such a
    /// part reached the sender and is gone there, so a delete removed it and
    /// was collected; a receiver whose copy predates that (restored from an
    /// old copy of its store, or a removed member added back) drops it
    /// instead of keeping, and serving, a deleted key for good (#11 item 11).
    /// A counter segment goes with its start: increments to it made before
    /// their node saw the delete reached the sender before it could collect
    /// (the GC floor is causal), and later ones start a new segment.
    /// Returns whether anything went.
    pub fn forget_held(&mut self, held: impl Fn(NodeId) -> Stamp) -> bool {
        self.forget_missing_from(&KeyState::default(), held)
    }

    /// As [`KeyState::forget_held`], for a key the transfer did name with
    /// `sender`'s state: a part here the sender held, and of which it keeps
    /// neither the part nor anything newer in its place (a tombstone
    /// register collected under surviving increments, a counter segment
    /// whose reset's records were compacted), goes. A merge alone would
    /// keep it.
    pub fn forget_missing_from(
        &mut self,
        sender: &KeyState,
        held: impl Fn(NodeId) -> Stamp,
    ) -> bool {
        let stale = Stale::of(self, sender, &held);
        if !stale.any() {
            return false;
        }
        if stale.reg {
            self.reg = Register::default();
        }
        if let Some(x) = &mut self.extras {
            if stale.expiry {
                x.expiry = ExpiryField::default();
            }
            if stale.counts {
                x.counts
                    .retain(|node, t| !segment_gone(sender, *node, t, &held));
            }
        }
        if stale.coll {
            if let Some(c) = &mut self.coll {
                c.forget_missing_from(sender.coll(), &held);
            }
        }
        self.normalize();
        true
    }

    /// Whether [`KeyState::forget_missing_from`] would drop anything (it
    /// changes nothing then: most keys of a transfer are not stale).
    pub fn is_stale_against(&self, sender: &KeyState, held: impl Fn(NodeId) -> Stamp) -> bool {
        Stale::of(self, sender, &held).any()
    }

    /// Whether the register (a tombstone) is all that makes the counter
    /// part newer than the collection part, so that the key shows the
    /// counter.
    fn tombstone_shows_counts_over_coll(&self) -> bool {
        let (Some(c), Some(x)) = (self.coll(), &self.extras) else {
            return false;
        };
        let newest_count = x.counts.values().map(|t| t.epoch).max();
        newest_count.is_some_and(|at| at <= c.at) && c.at < self.reg.stamp
    }

    fn has_counts(&self) -> bool {
        self.extras.as_ref().is_some_and(|x| !x.counts.is_empty())
    }

    /// One canonical form per state, so that equal states compare and encode
    /// equal on every node: fully removed tallies, an expiry field a later
    /// register write superseded (never read again: the write carries its
    /// own expiry), and empty extras go.
    fn normalize(&mut self) {
        if let Some(x) = &mut self.extras {
            if !x.floor.is_zero() {
                x.prune(x.floor);
                if let Some(c) = &mut self.coll {
                    c.prune(x.floor);
                }
                if self.reg.stamp < x.floor {
                    self.reg = Register::default();
                }
            }
            if !x.expiry.stamp.is_zero() && x.expiry.stamp <= self.reg.stamp {
                x.expiry = ExpiryField::default();
            }
            let removed = &x.removed;
            x.counts
                .retain(|node, t| removed.get(node).is_none_or(|r| !r.covers(t)));
            if x.is_empty() {
                self.extras = None;
            }
        }
        if self.coll.as_ref().is_some_and(|c| c.is_empty()) {
            self.coll = None;
        }
    }

    /// Surviving increments hidden because the register holds a non-number.
    fn hidden_increments(&self) -> Vec<Side> {
        let Some(x) = &self.extras else {
            return Vec::new();
        };
        let numeric = match self.reg.value.as_deref() {
            None => true,
            Some(v) => parse_int(v).is_some() || parse_float(v).is_some(),
        };
        if numeric {
            return Vec::new();
        }
        x.counts
            .iter()
            .filter_map(|(node, t)| {
                let s = t.surviving(x.removed.get(node))?;
                Some(Side {
                    origin: *node,
                    stamp: s.epoch,
                    what: Summary::Increment {
                        int: s.int,
                        float: s.float,
                    },
                })
            })
            .collect()
    }
}

fn register_side(reg: &Register) -> Side {
    Side {
        origin: reg.stamp.node,
        stamp: reg.stamp,
        what: Summary::of_value(reg.value.as_deref()),
    }
}

/// The conflict, if any, of `loser` losing to `winner`: one the winner had
/// not seen. `expiry_floor` is the key's expiry floor (see
/// [`KeyState::expiry_delete`]): a winning delete stamped at it is the
/// key's expiry.
fn register_conflict(winner: &Register, loser: &Register, expiry_floor: Stamp) -> Option<Conflict> {
    if loser.stamp.is_zero() || loser.stamp == winner.stamp || winner.has_seen(loser) {
        return None;
    }
    #[cfg(feature = "fault-injection")]
    if crate::fault::get() == crate::fault::Broken::HideConflicts
        && loser.stamp.node < winner.stamp.node
    {
        return None;
    }
    let is_expiry = |r: &Register| {
        r.value.is_none() && expiry_floor.node == NodeId(0) && r.stamp.time == expiry_floor.time
    };
    let kind = match (winner.value.is_some(), loser.value.is_some()) {
        (true, true) => ConflictKind::ConcurrentWrite,
        // A write that carried the same expiry, or an earlier one, would
        // have gone anyway: the TTL did what it said.
        (false, true)
            if is_expiry(winner)
                && loser.expire_at_ms != 0
                && loser.expire_at_ms <= expiry_floor.unix_ms() =>
        {
            return None
        }
        (false, true) if is_expiry(winner) => ConflictKind::WriteLostToExpiry,
        (false, true) => ConflictKind::WriteLostToDelete,
        (true, false) => ConflictKind::DeleteLostToWrite,
        (false, false) => return None,
    };
    Some(Conflict {
        kind,
        winner: register_side(winner),
        loser: register_side(loser),
        element: None,
    })
}

/// Which parts of a receiver's state a transfer's sender held and replaced
/// by nothing (see [`KeyState::forget_missing_from`]).
struct Stale {
    reg: bool,
    expiry: bool,
    counts: bool,
    coll: bool,
}

impl Stale {
    fn of(mine: &KeyState, sender: &KeyState, held: &impl Fn(NodeId) -> Stamp) -> Stale {
        let is_held = |s: Stamp| !s.is_zero() && s <= held(s.node);
        let theirs = sender.extras.as_deref();
        let their_expiry = theirs.map_or(Stamp::ZERO, |t| t.expiry.stamp);
        let x = mine.extras.as_deref();
        Stale {
            reg: is_held(mine.reg.stamp) && sender.reg.stamp < mine.reg.stamp,
            expiry: x.is_some_and(|x| is_held(x.expiry.stamp) && their_expiry < x.expiry.stamp),
            counts: x.is_some_and(|x| {
                x.counts
                    .iter()
                    .any(|(node, t)| segment_gone(sender, *node, t, held))
            }),
            coll: mine
                .coll()
                .is_some_and(|c| c.is_stale_against(sender.coll(), held)),
        }
    }

    fn any(&self) -> bool {
        self.reg || self.expiry || self.counts || self.coll
    }
}

/// Whether `node`'s tally `t` is a segment the sender held (its start at or
/// below `held(node)`) of which `sender` keeps neither a tally nor a removal
/// record.
fn segment_gone(
    sender: &KeyState,
    node: NodeId,
    t: &Tally,
    held: &impl Fn(NodeId) -> Stamp,
) -> bool {
    if t.epoch.is_zero() || t.epoch > held(node) {
        return false;
    }
    !sender
        .extras
        .as_deref()
        .is_some_and(|x| x.counts.get(&node).is_some() || x.removed.get(&node).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    mod first_write {
        use super::*;
        use crate::coll::Kind;
        use proptest::prelude::*;

        const ELEMS: [&[u8]; 3] = [b"a", b"bb", b"a-longer-element-name"];

        /// A key's first write of each kind a command makes: a collection
        /// write of several elements (adds, removes of absent ones,
        /// increments), an INCR, an EXPIRE, a SET, and a stored counter.
        fn first_write() -> impl Strategy<Value = KeyState> {
            let stamp = (1u64..1 << 50, 1u64..5).prop_map(|(time, node)| Stamp {
                time,
                node: NodeId(node),
            });
            let ops = proptest::collection::vec((0..ELEMS.len(), 0u8..3, 0usize..80), 0..6);
            (stamp, 0u8..7, ops).prop_map(|(stamp, what, ops)| {
                let empty = KeyState::default();
                let kind = [Kind::Hash, Kind::Set, Kind::ZSet][what as usize % 3];
                match what {
                    0..=2 => empty.coll_write(stamp, kind, |c, d| {
                        for &(elem, op, len) in &ops {
                            let elem = ELEMS[elem];
                            match (op, kind) {
                                (0, _) => c.remove_elem_into(d, kind, elem, stamp),
                                (1, Kind::Hash) => {
                                    c.incr_into(d, kind, elem, stamp, (len as i64, 0.0, false))
                                }
                                (1, Kind::ZSet) => {
                                    c.incr_into(d, kind, elem, stamp, (0, len as f64, true))
                                }
                                (_, Kind::Hash) => c.hset_into(d, stamp, elem, &vec![b'v'; len]),
                                (_, Kind::ZSet) => c.zadd_into(d, stamp, elem, len as f64),
                                (_, _) => c.sadd_into(d, stamp, elem),
                            }
                        }
                    }),
                    3 => empty.incr(stamp, ops.len() as i64 - 2, 0.0, false),
                    4 => empty.expire(stamp, 1_000 + ops.len() as u64),
                    5 => empty.write(stamp, Some(b"v"), 0),
                    _ => {
                        let mut stored = empty.clone();
                        stored.merge(&empty.incr(stamp, 3, 0.0, false));
                        stored
                    }
                }
            })
        }

        proptest! {
            /// Into a state of nothing, the first-write path makes what the
            /// general merge makes, byte for byte (a digest compares the
            /// bytes), with the same representation and conflicts.
            #[test]
            fn a_first_write_makes_what_the_general_merge_makes(delta in first_write()) {
                let mut fast = KeyState::default();
                let fast_conflicts = fast.merge_owned(delta.clone());
                let mut general = KeyState::default();
                let general_conflicts = general.merge_parts(
                    Cow::Owned(delta.reg.clone()),
                    delta.extras.as_deref(),
                    delta.coll.as_deref(),
                );
                prop_assert_eq!(&fast, &general);
                prop_assert_eq!(crate::encode(&fast).unwrap(), crate::encode(&general).unwrap());
                prop_assert_eq!(fast_conflicts, general_conflicts);
                prop_assert_eq!(
                    fast.coll().map(|c| c.hash.is_packed()),
                    general.coll().map(|c| c.hash.is_packed())
                );
                // And it goes on as the general one's does.
                let stamp = delta.latest_stamp().next_after(NodeId(9));
                let next = fast.coll_write(stamp, Kind::ZSet, |c, d| c.zadd_into(d, stamp, b"z", 1.0));
                fast.merge(&next);
                general.merge(&next);
                prop_assert_eq!(crate::encode(&fast).unwrap(), crate::encode(&general).unwrap());
            }
        }
    }

    /// The layout before the collection part moved beside the extras.
    #[derive(Serialize)]
    struct OldKeyState<'a> {
        reg: &'a Register,
        extras: Option<OldExtras<'a>>,
    }

    #[derive(Serialize)]
    struct OldExtras<'a> {
        expiry: ExpiryField,
        counts: &'a NodeMap<Tally>,
        removed: &'a NodeMap<Tally>,
        floor: Stamp,
        coll: &'a Option<Box<Coll>>,
    }

    fn old_bytes(s: &KeyState) -> Vec<u8> {
        let none = Extras::default();
        let extras = (s.extras.is_some() || s.coll.is_some()).then(|| {
            let x = s.extras.as_deref().unwrap_or(&none);
            OldExtras {
                expiry: x.expiry,
                counts: &x.counts,
                removed: &x.removed,
                floor: x.floor,
                coll: &s.coll,
            }
        });
        postcard::to_allocvec(&OldKeyState {
            reg: &s.reg,
            extras,
        })
        .expect("encodes")
    }

    /// Compaction drops a persist at or below the floor only where the key
    /// reads the same without it: not over a register that sets an expiry
    /// of its own (PERSIST after SET EX).
    #[test]
    fn compaction_drops_a_persist_only_where_nothing_reads_differently() {
        let node = NodeId(3);
        let at = |time| Stamp { time, node };
        let everything = Stamp {
            time: u64::MAX,
            node: NodeId(u64::MAX),
        };
        let mut hash = KeyState::default();
        hash.merge(&hash.coll_write(at(10), Kind::Hash, |c, d| {
            c.hset_into(d, at(10), b"f", b"v")
        }));
        assert_eq!(hash.extras.as_ref().map(|x| x.expiry.at_ms), Some(0));
        assert!(!hash.compact(at(9)), "above the floor: kept");
        assert!(hash.compact(at(10)));
        assert!(hash.extras.is_none());
        assert_eq!(hash.expire_at_ms(), 0);

        let mut string = KeyState::default();
        string.merge(&string.write(at(20), Some(b"x"), 99_000));
        string.merge(&string.expire(at(30), 0));
        assert_eq!(string.expire_at_ms(), 0);
        string.compact(everything);
        assert_eq!(
            string.expire_at_ms(),
            0,
            "the persist still hides SET EX's expiry"
        );
    }

    /// Every kind of key encodes as it did when the collection part sat in
    /// the extras (stores, logs, peers and digests hold those bytes), and
    /// decodes back to itself.
    #[test]
    fn a_key_state_encodes_as_before_the_collection_part_moved() {
        let node = NodeId(3);
        let at = |time| Stamp { time, node };
        let mut hash = KeyState::default();
        hash.merge(&hash.coll_write(at(10), Kind::Hash, |c, d| {
            c.hset_into(d, at(10), b"f", b"v")
        }));
        assert!(hash.extras.is_some(), "a new key's persist");
        hash.compact(at(15));
        let mut expiring_hash = hash.clone();
        expiring_hash.merge(&expiring_hash.expire(at(20), 99_000));
        let mut counter = KeyState::default();
        counter.merge(&counter.incr(at(30), 5, 0.0, false));
        let mut string = KeyState::default();
        string.merge(&string.write(at(40), Some(b"x"), 0));
        let mut overwritten = hash.clone();
        overwritten.merge(&overwritten.write(at(50), Some(b"s"), 0));
        assert!(hash.extras.is_none() && hash.coll.is_some());
        assert!(expiring_hash.extras.is_some() && expiring_hash.coll.is_some());
        for s in [
            hash,
            expiring_hash,
            counter,
            string,
            overwritten,
            KeyState::default(),
        ] {
            let bytes = postcard::to_allocvec(&s).expect("encodes");
            assert_eq!(bytes, old_bytes(&s), "{s:?}");
            let back: KeyState = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(back, s);
        }
    }
}
