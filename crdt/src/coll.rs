//! The collection part of a key's state (issues #13, #15): hashes, sets,
//! sorted sets and lists, in one causal context.
//!
//! - A **set** member keeps the adds ("dots") no remove observed: an
//!   observed-remove set, add wins.
//! - A **hash field** and a **sorted-set member** are an element: the
//!   register writes of its value (a field's bytes, a member's score) that
//!   no later write or remove observed, plus a counter (HINCRBY, ZINCRBY) as
//!   a string key has one: per node a [`Tally`], removed by what a reset
//!   observed. Two surviving writes of one element are concurrent writes,
//!   a conflict; the higher stamp is the value.
//!
//! - A **list** element is an element too, keyed by its place (a dense
//!   [`Position`], unique per node): its writes are the register of its
//!   value (LSET). A pop, LREM or LTRIM removes the writes it observed, so
//!   two nodes popping one element concurrently remove it once, and an
//!   LSET the pop did not observe keeps the element, as an HSET survives a
//!   concurrent HDEL. Nothing stays of a removed element: the others'
//!   order never depended on it (see `position.rs`).
//!
//! The key's [`CausalContext`] holds every dot the state has seen, so a
//! removed element leaves no tombstone: an element absent here whose dots
//! the context holds was removed, one whose dots it lacks is new. Removal
//! records (`removed`) are the only per-element metadata a removal leaves:
//! what resets removed of a counter, and which writes ops killed (so that
//! a write relayed ahead of the op that killed what it replaced does not
//! meet that as a sibling, see [`Removed::dead`]); compaction drops them
//! at causal stability, as for strings.
//!
//! A delta is a `Coll` too, marked `part`: it names in its maps every
//! element it touches (a removal as an entry with no writes), so merging it
//! visits those elements only. A whole state (`part` false) may remove any
//! element by its context, and merging one visits them all.

use std::borrow::Cow;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::conflict::{Conflict, ConflictKind, Side, Summary};
use crate::context::{CausalContext, Dot};
use crate::ekey::{EKey, Keyed, Probe};
use crate::emap::EMap;
use crate::fields::{FieldRef, Fields, PACK_MAX_BYTES, PACK_MAX_FIELDS};
use crate::lazy::Lazy;
use crate::nodemap::NodeMap;
use crate::position::Position;
use crate::records::Records;
use crate::seq::Seq;
use crate::stamp::{NodeId, Stamp};
use crate::state::{join_tally, read_value, CounterSum, Read, Tally};
use crate::zindex::{Entry, ScoreIndex};

/// Which collection a part of the state is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum Kind {
    #[default]
    Hash,
    Set,
    ZSet,
    List,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Hash, Kind::Set, Kind::ZSet, Kind::List];

    /// The name TYPE replies with.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::ZSet => "zset",
            Kind::List => "list",
        }
    }
}

/// One add of a set member: its dot and HLC time (the time lets a flush or
/// an expiry floor, which are stamps, tell what they remove).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Add {
    pub dot: Dot,
    pub time: u64,
}

impl Add {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            time: self.time,
            node: self.dot.node,
        }
    }
}

/// A member's surviving adds: almost always one.
pub type Adds = SmallVec<[Add; 1]>;

/// A hash field's value: inline up to 16 bytes (no allocation, which
/// malloc would round up to 32 bytes), on the heap past that.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Blob(pub SmallVec<[u8; 16]>);

/// One copy of the bytes: `SmallVec`'s own clone pushes them one by one
/// (a replicated HSET's delta copy of its value cost so).
impl Clone for Blob {
    fn clone(&self) -> Blob {
        Blob::new(&self.0)
    }
}

impl Blob {
    pub fn new(bytes: &[u8]) -> Blob {
        Blob(SmallVec::from_slice(bytes))
    }

    /// Heap bytes held besides itself (none when inline).
    pub fn heap_len(&self) -> usize {
        if self.0.spilled() {
            self.0.capacity()
        } else {
            0
        }
    }
}

/// Encoded as bytes, as the boxed slice it replaced was.
impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        Ok(Blob::new(&bytes))
    }
}

/// A sorted-set score, ordered totally (scores are never NaN).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Score(pub f64);

impl PartialEq for Score {
    fn eq(&self, other: &Score) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Score) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Score) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// One register write of an element's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Write<V> {
    pub dot: Dot,
    pub time: u64,
    pub value: V,
}

impl<V> Write<V> {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            time: self.time,
            node: self.dot.node,
        }
    }
}

/// A hash field or sorted-set member: surviving value writes and counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elem<V> {
    pub writes: SmallVec<[Write<V>; 1]>,
    /// Latest tally of each node that incremented it; `None` for most.
    pub counts: Option<Box<NodeMap<Tally>>>,
}

impl<V> Default for Elem<V> {
    fn default() -> Self {
        Elem {
            writes: SmallVec::new(),
            counts: None,
        }
    }
}

impl<V> Elem<V> {
    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.counts.is_none()
    }

    /// The value's winning write: the highest stamp.
    pub fn winner(&self) -> Option<&Write<V>> {
        self.writes.iter().max_by_key(|w| w.stamp())
    }
}

/// What resets of one element observed of its counter, per node; what
/// removals and rewrites of its value killed; and the newest such op (for
/// compaction).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Removed {
    pub reset: Stamp,
    pub tallies: NodeMap<Tally>,
    /// Per node, the newest dot number of the element's value writes an
    /// op replaced or removed: that write and the node's earlier ones of
    /// the element are dead (a node's write replaced its own earlier
    /// ones). Every later write of the element carries it while it lasts,
    /// so a node that gets such a write before the op that killed them
    /// drops them at once, and does not report as a conflict what the
    /// writer knew it replaced (a conflict is a loss its winner had not
    /// seen). Dropped with the record once `reset` is stable: by then the
    /// killing ops are everywhere.
    pub dead: NodeMap<u64>,
}

impl Removed {
    /// Whether the record says the write made with `dot` is dead.
    pub fn kills(&self, dot: Dot) -> bool {
        self.dead.get(&dot.node).is_some_and(|&n| dot.n <= n)
    }

    fn note_dead(&mut self, node: NodeId, n: u64) {
        self.dead.upsert(node, n, |mine, n| *mine = (*mine).max(n));
    }
}

fn kills(record: Option<&Removed>, dot: Dot) -> bool {
    record.is_some_and(|r| r.kills(dot))
}

/// Whether a write by `node` over `e` runs in place: no counter (whose
/// removal needs a record) and no other node's write (whose kill does,
/// see `Coll::replace_into`).
fn rewrites_in_place<V>(e: &Elem<V>, node: NodeId) -> bool {
    e.counts.is_none() && e.writes.iter().all(|w| w.dot.node == node)
}

/// Drops the writes `record` kills and the tallies it covers; true when
/// nothing is left.
fn emptied<V>(e: &mut Elem<V>, record: Option<&Removed>) -> bool {
    e.writes.retain(|w| !kills(record, w.dot));
    settle(e, record)
}

fn field_killed(f: FieldRef<'_>, record: Option<&Removed>) -> bool {
    match f {
        FieldRef::Elem(e) => e.writes.iter().any(|w| kills(record, w.dot)),
        FieldRef::Packed(p) => kills(record, p.dot),
    }
}

/// See the module doc. Laid out as declared: `at`, `kind` and the hash's
/// length, which every command's type check reads, share a cache line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct Coll {
    pub ctx: CausalContext,
    /// The newest collection write (adds and removes alike) and its kind:
    /// at or after every stamp in the part, and the key's type when its
    /// collections clash.
    pub at: Stamp,
    pub kind: Kind,
    /// Packed while small and plain (see `fields.rs`).
    pub hash: Fields,
    /// The other kinds and the removal records, each a null pointer while
    /// empty (see `lazy.rs`): most keys hold one kind and no records.
    pub set: Lazy<EMap<Adds>>,
    pub zset: Lazy<EMap<Elem<Score>>>,
    pub list: Lazy<Seq<Elem<Blob>>>,
    pub removed: Lazy<Records>,
    /// A delta (see the module doc); false for a state.
    pub part: bool,
    /// At or before every element stamp here (ZERO: not known), so that a
    /// prune by a floor below it has nothing to scan.
    #[serde(skip)]
    oldest: Hint,
    /// The sorted set's order, built on first use and kept in step by
    /// every change to `zset` after that (see `Coll::reindex`).
    #[serde(skip)]
    zindex: Derived,
}

/// A derived index: no part of the state, so equal on every value.
#[derive(Debug, Clone, Default)]
struct Derived(OnceLock<Box<ScoreIndex>>);

impl PartialEq for Derived {
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}
impl Eq for Derived {}

/// Local bookkeeping that is no part of the state: equal on every value.
#[derive(Debug, Clone, Copy, Default)]
struct Hint(Stamp);

impl PartialEq for Hint {
    fn eq(&self, _: &Hint) -> bool {
        true
    }
}
impl Eq for Hint {}

/// The sum of an element's counter, less what its removal record removed.
pub fn elem_sum(counts: Option<&NodeMap<Tally>>, removed: Option<&Removed>) -> CounterSum {
    let mut sum = CounterSum::default();
    for (node, t) in counts.into_iter().flat_map(NodeMap::iter) {
        if let Some(s) = t.surviving(removed.and_then(|r| r.tallies.get(node))) {
            sum.int = sum.int.wrapping_add(s.int);
            sum.float += s.float;
            sum.float_ops += s.float_ops;
            sum.any = true;
        }
    }
    sum
}

/// Joins two versions of an element: a write survives when both hold it,
/// or one holds it and the other's context lacks its dot; tallies take the
/// later version per node. Returns whether writes the first lacked came in.
fn join_elem<V: Clone + Ord>(
    mine: &mut Elem<V>,
    theirs: Option<&Elem<V>>,
    (my_ctx, their_ctx): (&CausalContext, &CausalContext),
    record: Option<&Removed>,
) -> bool {
    let their_writes = theirs.map_or(&[][..], |t| &t.writes[..]);
    mine.writes.retain(|w| {
        (their_writes.contains(w) || !their_ctx.contains(w.dot)) && !kills(record, w.dot)
    });
    let before = mine.writes.len();
    for w in their_writes {
        if !mine.writes.contains(w) && !my_ctx.contains(w.dot) && !kills(record, w.dot) {
            mine.writes.push(w.clone());
        }
    }
    let grew = mine.writes.len() > before;
    if grew {
        // One order, so that equal elements are equal states.
        mine.writes.sort_unstable();
    }
    if let Some(tc) = theirs.and_then(|t| t.counts.as_deref()) {
        let counts = mine.counts.get_or_insert_with(Default::default);
        for (node, t) in tc.iter() {
            join_tally(counts, *node, t);
        }
    }
    grew
}

/// Drops the tallies a removal record covers; true when nothing is left.
fn settle<V>(elem: &mut Elem<V>, removed: Option<&Removed>) -> bool {
    if let Some(counts) = &mut elem.counts {
        if let Some(r) = removed {
            counts.retain(|node, t| r.tallies.get(node).is_none_or(|r| !r.covers(t)));
        }
        if counts.is_empty() {
            elem.counts = None;
        }
    }
    elem.is_empty()
}

/// A map of elements by key: a `BTreeMap` (hash fields, sorted-set
/// members) or a list's [`Seq`], for the joins and prunes all share.
pub(crate) trait ElemMap<K, V> {
    fn elem(&self, key: &K) -> Option<&Elem<V>>;
    fn has(&self, key: &K) -> bool;
    fn take(&mut self, key: &K) -> Option<Elem<V>>;
    fn put(&mut self, key: K, elem: Elem<V>);
    fn keep(&mut self, f: impl FnMut(&K, &mut Elem<V>) -> bool);
    fn elems<'a>(&'a self) -> impl Iterator<Item = (&'a K, &'a Elem<V>)>
    where
        K: 'a,
        V: 'a;
}

impl<V> ElemMap<EKey, V> for EMap<Elem<V>> {
    fn elem(&self, key: &EKey) -> Option<&Elem<V>> {
        self.get(key)
    }
    fn has(&self, key: &EKey) -> bool {
        self.contains_key(key)
    }
    fn take(&mut self, key: &EKey) -> Option<Elem<V>> {
        self.remove(key)
    }
    fn put(&mut self, key: EKey, elem: Elem<V>) {
        self.insert(key, elem);
    }
    fn keep(&mut self, f: impl FnMut(&EKey, &mut Elem<V>) -> bool) {
        self.retain(f);
    }
    fn elems<'a>(&'a self) -> impl Iterator<Item = (&'a EKey, &'a Elem<V>)>
    where
        V: 'a,
    {
        self.iter()
    }
}

impl<V> ElemMap<Position, V> for Seq<Elem<V>> {
    fn elem(&self, key: &Position) -> Option<&Elem<V>> {
        self.get(key)
    }
    fn has(&self, key: &Position) -> bool {
        self.contains_key(key)
    }
    fn take(&mut self, key: &Position) -> Option<Elem<V>> {
        self.remove(key)
    }
    fn put(&mut self, key: Position, elem: Elem<V>) {
        self.insert(key, elem);
    }
    fn keep(&mut self, f: impl FnMut(&Position, &mut Elem<V>) -> bool) {
        self.retain(f);
    }
    fn elems<'a>(&'a self) -> impl Iterator<Item = (&'a Position, &'a Elem<V>)>
    where
        V: 'a,
    {
        self.iter()
    }
}

/// Joins a map of elements; `on_siblings` gets each element whose
/// surviving writes grew to more than one.
fn join_elems<'r, K: Ord + Clone, V: Clone + Ord>(
    mine: &mut impl ElemMap<K, V>,
    theirs: &impl ElemMap<K, V>,
    (my_ctx, their_ctx): (&CausalContext, &CausalContext),
    removed_of: impl Fn(&K) -> Option<&'r Removed>,
    (their_whole, keep_empty): (bool, bool),
    mut on_siblings: impl FnMut(&K, &Elem<V>),
) {
    if their_whole {
        // Theirs may remove any of mine by its context.
        mine.keep(|key, elem| {
            let record = removed_of(key);
            let grew = join_elem(elem, theirs.elem(key), (my_ctx, their_ctx), record);
            if grew && elem.writes.len() > 1 {
                on_siblings(key, elem);
            }
            !settle(elem, record) || keep_empty
        });
    }
    for (key, their) in theirs.elems() {
        if their_whole && mine.has(key) {
            continue;
        }
        let mut elem = mine.take(key).unwrap_or_default();
        let record = removed_of(key);
        let grew = join_elem(&mut elem, Some(their), (my_ctx, their_ctx), record);
        if grew && elem.writes.len() > 1 {
            on_siblings(key, &elem);
        }
        if !settle(&mut elem, record) || keep_empty {
            mine.put(key.clone(), elem);
        }
    }
}

/// An element's counter removal record in `removed` (none for most).
fn record_of<'r>(removed: &'r Records, kind: Kind, key: &EKey) -> Option<&'r Removed> {
    if removed.is_empty() {
        return None;
    }
    removed.get(kind, key.bytes())
}

/// A list element's record in `removed`, named by its place as written
/// out (none for most).
fn list_record_of<'r>(removed: &'r Records, pos: &Position) -> Option<&'r Removed> {
    if removed.is_empty() {
        return None;
    }
    removed.get(Kind::List, pos.to_string().as_bytes())
}

/// As [`join_elems`] for set members (dots only).
fn join_members(
    mine: &mut EMap<Adds>,
    theirs: &EMap<Adds>,
    my_ctx: &CausalContext,
    their_ctx: &CausalContext,
    (their_whole, keep_empty): (bool, bool),
) {
    let join = |adds: &mut Adds, their: &[Add]| {
        adds.retain(|a| their.contains(a) || !their_ctx.contains(a.dot));
        let before = adds.len();
        for a in their {
            if !adds.contains(a) && !my_ctx.contains(a.dot) {
                adds.push(*a);
            }
        }
        if adds.len() > before {
            adds.sort_unstable();
        }
    };
    if their_whole {
        mine.retain(|key, adds| {
            join(adds, theirs.get(key).map_or(&[][..], |t| &t[..]));
            !adds.is_empty() || keep_empty
        });
    }
    for (key, their) in theirs {
        if their_whole && mine.contains_key(key) {
            continue;
        }
        let mut adds = mine.remove(key).unwrap_or_default();
        join(&mut adds, their);
        if !adds.is_empty() || keep_empty {
            mine.insert(key.clone(), adds);
        }
    }
}

/// Adds a field's write dots to `delta`'s context (its removal).
fn remove_field_dots(delta: &mut Coll, f: FieldRef<'_>) {
    match f {
        FieldRef::Elem(e) => {
            for w in &e.writes {
                delta.ctx.insert(w.dot);
            }
        }
        FieldRef::Packed(p) => delta.ctx.insert(p.dot),
    }
}

/// Records in `delta` the kills of `kind`'s element `key`'s writes `killed`
/// by the op at `stamp`, and those this node knew of (`known`, its record).
pub(crate) fn record_kills(
    delta: &mut Coll,
    (kind, key): (Kind, &[u8]),
    known: Option<&Removed>,
    killed: impl IntoIterator<Item = Dot>,
    stamp: Stamp,
) {
    let mut killed = killed.into_iter().peekable();
    if known.is_none() && killed.peek().is_none() {
        return;
    }
    if delta.removed.len() >= KILLS_MAX && delta.removed.get(kind, key).is_none() {
        // An op of many elements: a record each would cost more than what
        // it is for (see `Removed::dead`).
        return;
    }
    // A delta names every element it has a record of, so that merging it
    // into another delta visits the element there.
    match kind {
        Kind::Hash if delta.part => {
            delta.hash.map_mut().entry(EKey::new(key)).or_default();
        }
        Kind::ZSet if delta.part => {
            delta.zset.make().entry(EKey::new(key)).or_default();
        }
        _ => {}
    }
    let r = delta.removed.make().entry(kind, key);
    if let Some(known) = known {
        r.reset = r.reset.max(known.reset);
        for (node, n) in known.dead.iter() {
            r.note_dead(*node, *n);
        }
    }
    if killed.peek().is_some() {
        r.reset = r.reset.max(stamp);
    }
    for d in killed {
        r.note_dead(d.node, d.n);
    }
}

/// The most elements one op records the kills of, one record each: past
/// it (a DEL of a bigger collection records none, a ZREMRANGEBYRANK only
/// its first), a delta of a record per element would cost more than what
/// it is for (see `Removed::dead`).
pub const KILLS_MAX: usize = PACK_MAX_FIELDS;

/// Records in `delta` that `kind`'s element `key` had its counter `counts`
/// reset at `stamp` (what a removal does to a counter).
fn reset_counter(delta: &mut Coll, kind: Kind, key: &[u8], counts: &NodeMap<Tally>, stamp: Stamp) {
    let r = delta.removed.make().entry(kind, key);
    r.reset = r.reset.max(stamp);
    for (node, t) in counts.iter() {
        join_tally(&mut r.tallies, *node, t);
    }
}

impl Coll {
    /// Where a lookup of the element whose stable hash is `hash`, in this
    /// collection's kind, most likely reads (see [`EMap::first_probe`]):
    /// for a command to prefetch the next request's element. Lists have
    /// none.
    pub fn first_probe(&self, hash: u64) -> Option<(usize, usize)> {
        match self.kind {
            Kind::Hash => self.hash.unpacked()?.first_probe(hash),
            Kind::Set => self.set.first_probe(hash),
            Kind::ZSet => self.zset.first_probe(hash),
            Kind::List => None,
        }
    }

    /// Where the counter of the element whose stable hash is `hash` lies
    /// in memory (a box of its own, read by HINCRBY and ZINCRBY), for a
    /// command to prefetch once the element's entry is in the cache.
    pub fn counter_probe(&self, hash: u64) -> Option<(usize, usize)> {
        let counts = match self.kind {
            Kind::Hash => self.hash.unpacked()?.get_by_hash(hash)?.counts.as_deref(),
            Kind::ZSet => self.zset.get_by_hash(hash)?.counts.as_deref(),
            Kind::Set | Kind::List => None,
        }?;
        let at: *const NodeMap<Tally> = counts;
        Some((at as usize, std::mem::size_of::<NodeMap<Tally>>()))
    }

    /// An empty delta of a write of `kind` at `stamp`.
    pub fn delta(stamp: Stamp, kind: Kind) -> Coll {
        Coll {
            at: stamp,
            kind,
            part: true,
            ..Coll::default()
        }
    }

    /// Makes this part `Coll::delta(stamp, kind)` again, keeping the room
    /// a small delta's context and hash took: a node that replicates
    /// reuses one delta for command after command, where a fresh one cost
    /// three allocations and their frees on every HSET.
    pub fn recycle_as_delta(&mut self, stamp: Stamp, kind: Kind) {
        self.ctx.clear();
        self.at = stamp;
        self.kind = kind;
        self.hash.clear_few();
        if let Some(set) = self.set.made_mut() {
            set.clear_few();
        }
        if let Some(zset) = self.zset.made_mut() {
            zset.clear_few();
        }
        self.list.clear();
        self.removed.clear();
        self.part = true;
        self.oldest = Hint::default();
        self.zindex = Derived::default();
    }

    /// This part joined with a whole empty one: no longer a delta, and
    /// without the empty entries only a delta keeps. (A key state without
    /// a collection part is a whole state of none.)
    pub fn make_whole(&mut self) {
        if !self.part {
            return;
        }
        self.part = false;
        self.hash.map_mut().retain(|_, e| !e.is_empty());
        if let Some(zset) = self.zset.made_mut() {
            zset.retain(|_, e| !e.is_empty());
        }
        if let Some(list) = self.list.made_mut() {
            list.retain(|_, e| !e.is_empty());
        }
        if let Some(set) = self.set.made_mut() {
            set.retain(|_, a| !a.is_empty());
        }
        self.tidy();
    }

    /// Whether this delta, made whole, is what merging it into a state of
    /// nothing makes (see [`Coll::settle_as_first_state`]): elements of its own
    /// kind only, each with at most one write and no counter, and no
    /// removal record.
    pub(crate) fn is_plain_first_write(&self) -> bool {
        let own_kind_only = match self.kind {
            Kind::Hash => self.set.is_empty() && self.zset.is_empty(),
            Kind::Set => self.hash.is_empty() && self.zset.is_empty(),
            Kind::ZSet => self.hash.is_empty() && self.set.is_empty(),
            Kind::List => false,
        };
        let one_write = |writes: usize, counted: bool| writes <= 1 && !counted;
        self.part
            && own_kind_only
            && self.list.is_empty()
            && self.removed.is_empty()
            && self.hash.iter().all(|(_, f)| match f {
                FieldRef::Elem(e) => one_write(e.writes.len(), e.counts.is_some()),
                FieldRef::Packed(_) => true,
            })
            && self
                .zset
                .values()
                .all(|e| one_write(e.writes.len(), e.counts.is_some()))
            && self.set.values().all(|adds| adds.len() <= 1)
    }

    /// Makes a plain first write's delta ([`Coll::is_plain_first_write`])
    /// the state a merge of it into nothing makes: whole, packed, no index.
    pub(crate) fn settle_as_first_state(&mut self) {
        self.make_whole();
        self.hash.pack();
        self.unindex();
    }

    /// Frees the parts of other kinds emptied.
    fn tidy(&mut self) {
        self.set.tidy();
        self.zset.tidy();
        self.list.tidy();
        self.removed.tidy();
    }

    /// Holds nothing at all (not even a context).
    pub fn is_empty(&self) -> bool {
        self.ctx.is_empty()
            && self.at.is_zero()
            && self.hash.is_empty()
            && self.set.is_empty()
            && self.zset.is_empty()
            && self.list.is_empty()
            && self.removed.is_empty()
    }

    /// A delta that touches no element and removes nothing: a command
    /// that wrote nothing (a ZADD its flags skipped, an HDEL of absent
    /// fields). Applying or sending one would only move `at`.
    pub fn names_nothing(&self) -> bool {
        self.ctx.is_empty()
            && self.hash.is_empty()
            && self.set.is_empty()
            && self.zset.is_empty()
            && self.list.is_empty()
            && self.removed.is_empty()
    }

    /// Whether a key's GC may drop this part, context and all: no element,
    /// no write after the GC floor `acked`, and no removal record but those
    /// [`Coll::compact`] at `acked` drops (without elements, every one reset
    /// at or below it: its tallies continue no count here). Asked before
    /// compacting or after, the answer is the same, so a node that
    /// compacted at an earlier floor and one that did not collect alike.
    pub fn is_collectable(&self, acked: Stamp) -> bool {
        !self.has_elements() && self.at <= acked && self.removed.values().all(|r| r.reset <= acked)
    }

    /// Elements of `kind` present.
    pub fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Hash => self.hash.len(),
            Kind::Set => self.set.len(),
            Kind::ZSet => self.zset.len(),
            Kind::List => self.list.len(),
        }
    }

    /// Whether any collection holds an element.
    pub fn has_elements(&self) -> bool {
        !(self.hash.is_empty()
            && self.set.is_empty()
            && self.zset.is_empty()
            && self.list.is_empty())
    }

    /// The collection the key shows: the kind of the newest collection
    /// write if it holds elements, else the first that does (elements only
    /// a concurrent add kept, which no write here has seen).
    pub fn visible(&self) -> Option<Kind> {
        if self.len(self.kind) > 0 {
            return Some(self.kind);
        }
        Kind::ALL.into_iter().find(|k| self.len(*k) > 0)
    }

    /// A side for a conflict report: the collection of `kind` as it stands.
    pub fn side(&self, kind: Kind) -> Side {
        let newest = self.newest(kind);
        Side {
            origin: newest.node,
            stamp: newest,
            what: Summary::Collection {
                kind: kind.name().to_string(),
                len: self.len(kind) as u64,
            },
        }
    }

    /// The newest element write of `kind` (an element's own stamp; counter
    /// segments by their start).
    fn newest(&self, kind: Kind) -> Stamp {
        let newest = match kind {
            Kind::Hash => self.hash.stamps().max(),
            Kind::ZSet => self.zset.values().flat_map(elem_stamps).max(),
            Kind::Set => self.set.values().flatten().map(Add::stamp).max(),
            Kind::List => self.list.values().flat_map(elem_stamps).max(),
        };
        newest.unwrap_or(Stamp::ZERO)
    }

    /// The removal record of an element.
    pub fn removed_of(&self, kind: Kind, key: &[u8]) -> Option<&Removed> {
        if self.removed.is_empty() {
            return None;
        }
        self.removed.get(kind, key)
    }

    /// A hash field's value as a string key's would read: its winning
    /// write plus its surviving increments.
    pub fn field(&self, field: &[u8]) -> Option<Read<'_>> {
        let f = self.hash.get(field)?;
        Some(self.read_field(field, f))
    }

    fn read_field<'a>(&'a self, field: &[u8], f: FieldRef<'a>) -> Read<'a> {
        match f {
            FieldRef::Elem(e) => self.read_elem(Kind::Hash, field, e),
            FieldRef::Packed(p) => Read::Str(p.value),
        }
    }

    fn read_elem<'a>(&'a self, kind: Kind, key: &[u8], e: &'a Elem<Blob>) -> Read<'a> {
        let value = e.winner().map(|w| &*w.value.0);
        match &e.counts {
            None => value.map_or(Read::Absent, Read::Str),
            Some(c) => read_value(value, elem_sum(Some(c), self.removed_of(kind, key))),
        }
    }

    /// Every field of the hash with its value, by field.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], Read<'_>)> {
        self.hash.iter().map(|(k, f)| (k, self.read_field(k, f)))
    }

    /// A hash field's element (its writes and counter).
    pub fn field_elem(&self, field: &[u8]) -> Option<Cow<'_, Elem<Blob>>> {
        self.hash.get(field).map(|f| match f {
            FieldRef::Elem(e) => Cow::Borrowed(e),
            FieldRef::Packed(p) => Cow::Owned(p.to_elem()),
        })
    }

    /// A hash field's counter tallies, if it has any.
    pub fn field_counts(&self, field: &[u8]) -> Option<&NodeMap<Tally>> {
        self.hash.get(field).and_then(FieldRef::counts)
    }

    /// A sorted-set member's element as this part holds it (a delta names
    /// a member it removes with an empty one).
    pub fn zset_named(&self, member: &[u8]) -> Option<&Elem<Score>> {
        self.zset.get(Probe::new(member).as_keyed())
    }

    /// Whether `kind`'s element has counter increments (HINCRBY, ZINCRBY).
    pub fn has_increments(&self, kind: Kind, key: &[u8]) -> bool {
        let probe = Probe::new(key);
        match kind {
            Kind::Hash => self.hash.get(key).is_some_and(|f| f.counts().is_some()),
            Kind::ZSet => self
                .zset
                .get(probe.as_keyed())
                .is_some_and(|e| e.counts.is_some()),
            Kind::Set | Kind::List => false,
        }
    }

    /// A set member's adds.
    pub fn member_adds(&self, member: &[u8]) -> Option<&Adds> {
        self.set.get(Probe::new(member).as_keyed())
    }

    /// A SCAN step over `kind`'s elements: up to `count` of them from the
    /// first whose hash is at least `from`, and the hash to go on from (0:
    /// done). Elements are in hash order, so one present for the whole
    /// scan is returned at least once.
    pub fn scan(&self, kind: Kind, from: u64, count: usize) -> (Vec<&[u8]>, u64) {
        let keys: Box<dyn Iterator<Item = (u64, &[u8])>> = match kind {
            Kind::Hash => Box::new(self.hash.keys_from(from)),
            Kind::Set => Box::new(self.set.iter_from(from).map(|(k, _)| (k.hash(), k.bytes()))),
            Kind::ZSet => Box::new(
                self.zset
                    .iter_from(from)
                    .map(|(k, _)| (k.hash(), k.bytes())),
            ),
            // Lists are walked by index, never by hash.
            Kind::List => Box::new(std::iter::empty()),
        };
        let mut keys = keys.peekable();
        let mut found: Vec<&[u8]> = Vec::new();
        let mut last = None;
        // COUNT elements, then the rest of the last one's hash: a cursor
        // names a hash, so a batch never ends inside a run of equal ones
        // (and the next hash, above the last, is never the 0 that ends a
        // scan).
        while let Some((hash, k)) = keys.next_if(|(h, _)| found.len() < count || Some(*h) == last) {
            last = Some(hash);
            found.push(k);
        }
        let next = keys.next().map_or(0, |(h, _)| h);
        (found, next)
    }

    /// The element of `kind` at or after hash `r` (wrapping to the first):
    /// a random pick in one walk when `r` is random. Elements whose hash
    /// follows a wide gap come up more often than others, as Redis's
    /// bucket picks favour some keys: fair enough for SPOP, SRANDMEMBER and
    /// HRANDFIELD without a count.
    pub fn pick(&self, kind: Kind, r: u64) -> Option<&[u8]> {
        let key = match kind {
            Kind::Hash => {
                return self
                    .hash
                    .keys_from(r)
                    .next()
                    .or_else(|| self.hash.keys_from(0).next())
                    .map(|(_, k)| k)
            }
            Kind::Set => self
                .set
                .iter_from(r)
                .next()
                .or_else(|| self.set.iter().next())
                .map(|(k, _)| k),
            Kind::ZSet => self
                .zset
                .iter_from(r)
                .next()
                .or_else(|| self.zset.iter().next())
                .map(|(k, _)| k),
            Kind::List => None,
        };
        key.map(EKey::bytes)
    }

    /// Every member of the set, in hash order.
    pub fn members(&self) -> impl Iterator<Item = &[u8]> {
        self.set.keys().map(EKey::bytes)
    }

    pub fn is_member(&self, member: &[u8]) -> bool {
        self.set.contains_key(Probe::new(member).as_keyed())
    }

    /// A sorted-set member's score: its winning ZADD (0 without one) plus
    /// its surviving ZINCRBY increments.
    pub fn score(&self, member: &[u8]) -> Option<f64> {
        let e = self.zset.get(Probe::new(member).as_keyed())?;
        self.elem_score(member, e)
    }

    fn elem_score(&self, member: &[u8], e: &Elem<Score>) -> Option<f64> {
        let removed = match &e.counts {
            Some(_) => self.removed_of(Kind::ZSet, member),
            None => None,
        };
        score_of(e, removed)
    }

    /// The sorted set in order (by score, then member), built on first use.
    pub fn zindex(&self) -> &ScoreIndex {
        self.zindex.0.get_or_init(|| {
            Box::new(ScoreIndex::from_entries(
                self.zset
                    .iter()
                    .filter_map(|(k, e)| {
                        Some(Entry {
                            score: self.elem_score(k.bytes(), e)?,
                            member: crate::ekey::ElemBytes::from_slice(k.bytes()),
                        })
                    })
                    .collect(),
            ))
        })
    }

    /// Moves `member` in a built index from `old` to its score now.
    fn reindex(&mut self, member: &[u8], old: Option<f64>) {
        if self.zindex.0.get().is_none() {
            return;
        }
        let new = self.score(member);
        self.reindex_to(member, old, new);
    }

    /// Moves `member` in a built index from `old` to `new`.
    fn reindex_to(&mut self, member: &[u8], old: Option<f64>, new: Option<f64>) {
        if old.map(f64::to_bits) == new.map(f64::to_bits) {
            return;
        }
        if let Some(ix) = self.zindex.0.get_mut() {
            if let Some(old) = old {
                ix.remove(old, member);
            }
            if let Some(new) = new {
                ix.insert(new, member);
            }
        }
    }

    /// Drops a built index (after a change that may touch any member).
    fn unindex(&mut self) {
        self.zindex.0.take();
    }

    // ----- ops: each builds a delta against this state -----

    /// Adds to `delta` the removal of everything `kind`'s element `key`
    /// holds here: its dots, and its counter as a removal record.
    fn remove_into(&self, delta: &mut Coll, kind: Kind, key: &[u8], stamp: Stamp) {
        self.replace_into(delta, kind, key, stamp, false);
    }

    /// [`Coll::remove_into`] by an op that writes the element anew when
    /// `rewrites` (HSET, ZADD) and so records no kill of its own node's
    /// writes: its new write carries that.
    fn replace_into(&self, delta: &mut Coll, kind: Kind, key: &[u8], stamp: Stamp, rewrites: bool) {
        let probe = Probe::new(key);
        let mut killed: SmallVec<[Dot; 2]> = SmallVec::new();
        let counts = match kind {
            Kind::Hash => match self.hash.get(key) {
                Some(f) => {
                    remove_field_dots(delta, f);
                    match f {
                        FieldRef::Elem(e) => killed.extend(e.writes.iter().map(|w| w.dot)),
                        FieldRef::Packed(p) => killed.push(p.dot),
                    }
                    delta.hash.map_mut().entry(probe.to_key()).or_default();
                    f.counts()
                }
                None => None,
            },
            Kind::ZSet => match self.zset.get(probe.as_keyed()) {
                Some(e) => {
                    for w in &e.writes {
                        delta.ctx.insert(w.dot);
                        killed.push(w.dot);
                    }
                    delta.zset.make().entry(probe.to_key()).or_default();
                    e.counts.as_deref()
                }
                None => None,
            },
            Kind::Set => {
                if let Some(adds) = self.set.get(probe.as_keyed()) {
                    #[cfg(feature = "fault-injection")]
                    let kept =
                        usize::from(crate::fault::get() == crate::fault::Broken::RemoveMissesDot);
                    #[cfg(not(feature = "fault-injection"))]
                    let kept = 0;
                    for a in adds.iter().skip(kept) {
                        delta.ctx.insert(a.dot);
                    }
                    delta.set.make().entry(probe.to_key()).or_default();
                }
                None
            }
            // List elements are named by place: `list_remove_into`.
            Kind::List => None,
        };
        if let Some(counts) = counts {
            reset_counter(delta, kind, key, counts, stamp);
        }
        if matches!(kind, Kind::Hash | Kind::ZSet) {
            killed.retain(|d| !(rewrites && d.node == stamp.node));
            // A removal of an absent element writes nothing, and records
            // nothing either.
            let known = self
                .removed_of(kind, key)
                .filter(|r| !r.dead.is_empty() && (rewrites || !killed.is_empty()));
            record_kills(delta, (kind, key), known, killed, stamp);
        }
    }

    /// The delta of removing every element held here, of every kind (DEL,
    /// and a register write over the key), made at `stamp`. A whole-state
    /// delta: it may remove any element. It moves no `at`: the register
    /// write carries the stamp.
    pub fn clear(&self, stamp: Stamp) -> Coll {
        let mut delta = Coll::default();
        let kills = self.hash.len() + self.zset.len() <= KILLS_MAX;
        // Each element as it is walked, not looked up again by name (a
        // packed hash's lookup is a walk: the clear of one would be
        // quadratic).
        for (key, f) in self.hash.iter() {
            remove_field_dots(&mut delta, f);
            if kills {
                let dots: SmallVec<[Dot; 2]> = match f {
                    FieldRef::Elem(e) => e.writes.iter().map(|w| w.dot).collect(),
                    FieldRef::Packed(p) => SmallVec::from_slice(&[p.dot]),
                };
                record_kills(&mut delta, (Kind::Hash, key), None, dots, stamp);
            }
            if let Some(counts) = f.counts() {
                reset_counter(&mut delta, Kind::Hash, key, counts, stamp);
            }
        }
        for (_, adds) in self.set.iter() {
            for a in adds.iter() {
                delta.ctx.insert(a.dot);
            }
        }
        for (key, e) in self.zset.iter() {
            for w in e.writes.iter() {
                delta.ctx.insert(w.dot);
            }
            if kills {
                let dots = e.writes.iter().map(|w| w.dot);
                record_kills(&mut delta, (Kind::ZSet, key.bytes()), None, dots, stamp);
            }
            if let Some(counts) = e.counts.as_deref() {
                reset_counter(&mut delta, Kind::ZSet, key.bytes(), counts, stamp);
            }
        }
        // What this node knew of dead writes goes on with the clear.
        for ((kind, key), r) in self.removed.iter().filter(|(_, r)| !r.dead.is_empty()) {
            record_kills(&mut delta, (*kind, key), Some(r), None, stamp);
        }
        for pos in self.list.keys() {
            self.list_remove_into(&mut delta, pos);
        }
        delta.list.clear();
        delta.part = false;
        delta
    }

    /// The delta of removing the elements of every kind but `kind` (what a
    /// write of `kind` clears when concurrent writes left others hidden).
    pub fn clear_others_into(&self, delta: &mut Coll, kind: Kind, stamp: Stamp) {
        for other in Kind::ALL {
            if other == kind || self.len(other) == 0 {
                continue;
            }
            let keys: Vec<Vec<u8>> = match other {
                Kind::Hash => self.hash.iter().map(|(k, _)| k.to_vec()).collect(),
                Kind::Set => self.set.keys().map(|k| k.bytes().to_vec()).collect(),
                Kind::ZSet => self.zset.keys().map(|k| k.bytes().to_vec()).collect(),
                Kind::List => {
                    for pos in self.list.keys() {
                        self.list_remove_into(delta, pos);
                    }
                    continue;
                }
            };
            for key in keys {
                self.remove_into(delta, other, &key, stamp);
            }
        }
    }

    /// A new dot for `stamp.node`, recorded in `delta`'s context: past
    /// this state's and past those `delta` already took (one command may
    /// write many elements).
    pub(crate) fn new_dot(&self, delta: &mut Coll, stamp: Stamp) -> Dot {
        let mine = self.ctx.next_dot(stamp.node, stamp.time);
        let theirs = delta.ctx.next_dot(stamp.node, stamp.time);
        let dot = if theirs.n > mine.n { theirs } else { mine };
        delta.ctx.insert(dot);
        dot
    }

    /// HSET of one field, into `delta` (a delta of `Coll::delta(stamp, Hash)`).
    pub fn hset_into(&self, delta: &mut Coll, stamp: Stamp, field: &[u8], value: &[u8]) {
        self.replace_into(delta, Kind::Hash, field, stamp, true);
        let dot = self.new_dot(delta, stamp);
        let elem = delta.hash.map_mut().entry(EKey::new(field)).or_default();
        // The same field twice in one command: the last value stands.
        elem.writes.clear();
        elem.writes.push(Write {
            dot,
            time: stamp.time,
            value: Blob::new(value),
        });
    }

    /// HDEL (or ZREM, SREM) of one element, into `delta`.
    pub fn remove_elem_into(&self, delta: &mut Coll, kind: Kind, key: &[u8], stamp: Stamp) {
        self.remove_into(delta, kind, key, stamp);
    }

    /// SADD of one member, into `delta`: a new dot replacing the adds held
    /// (so that it survives a concurrent SREM, as an add must).
    pub fn sadd_into(&self, delta: &mut Coll, stamp: Stamp, member: &[u8]) {
        self.remove_into(delta, Kind::Set, member, stamp);
        let dot = self.new_dot(delta, stamp);
        let adds = delta.set.make().entry(EKey::new(member)).or_default();
        adds.clear();
        adds.push(Add {
            dot,
            time: stamp.time,
        });
    }

    /// ZADD of one member at `score`, into `delta`: its earlier score and
    /// increments removed, as HSET's are.
    pub fn zadd_into(&self, delta: &mut Coll, stamp: Stamp, member: &[u8], score: f64) {
        self.replace_into(delta, Kind::ZSet, member, stamp, true);
        let dot = self.new_dot(delta, stamp);
        let elem = delta.zset.make().entry(EKey::new(member)).or_default();
        elem.writes.clear();
        elem.writes.push(Write {
            dot,
            time: stamp.time,
            value: Score(score),
        });
    }

    /// An increment of `kind`'s element `key` by this node, into `delta`:
    /// the node's next tally, continuing its segment while one survives.
    pub fn incr_into(
        &self,
        delta: &mut Coll,
        kind: Kind,
        key: &[u8],
        stamp: Stamp,
        by: (i64, f64, bool),
    ) {
        let (int, float, is_float) = by;
        let probe = Probe::new(key);
        let current = match kind {
            Kind::Hash => self.hash.get(key).and_then(|f| f.counts()),
            Kind::ZSet => self
                .zset
                .get(probe.as_keyed())
                .and_then(|e| e.counts.as_deref()),
            Kind::Set | Kind::List => None,
        }
        .and_then(|c| c.get(&stamp.node));
        let tally = Tally::next(current, stamp, int, float, is_float);
        let counts = match kind {
            Kind::Hash => {
                &mut delta
                    .hash
                    .map_mut()
                    .entry(probe.to_key())
                    .or_default()
                    .counts
            }
            Kind::ZSet => &mut delta.zset.make().entry(probe.to_key()).or_default().counts,
            Kind::Set | Kind::List => return,
        };
        counts
            .get_or_insert_with(Default::default)
            .upsert(stamp.node, tally, |mine, new| *mine = new);
    }

    // ----- this node's own ops, in place -----
    //
    // Each is the same state as merging the op's delta built above
    // (property-tested), without building it unless `delta` asks (a
    // replication sink). The caller uses them on a key that shows the
    // op's kind and hides nothing; `None` means "not here": nothing was
    // changed and the general path must run.

    /// Whether `node`'s write of `kind`'s element `key` runs in place
    /// (`hset_here`, `zadd_here`): the element has no counter, no write by
    /// another node and no record of killed writes, whose removal and
    /// kills the general path records. A command writing several elements
    /// checks them all first: the in-place path cannot stop halfway.
    pub fn writes_in_place(&self, kind: Kind, key: &[u8], node: NodeId) -> bool {
        if self.records_kill(kind, key) {
            return false;
        }
        match kind {
            Kind::Hash => match self.hash.get(key) {
                None => true,
                Some(FieldRef::Packed(p)) => p.dot.node == node,
                Some(FieldRef::Elem(e)) => rewrites_in_place(e, node),
            },
            Kind::ZSet => self
                .zset
                .get(Probe::new(key).as_keyed())
                .is_none_or(|e| rewrites_in_place(e, node)),
            Kind::Set | Kind::List => true,
        }
    }

    /// Whether `kind`'s element `key` has a record of killed writes, which
    /// its next write must carry (the general path's `replace_into`).
    pub fn records_kill(&self, kind: Kind, key: &[u8]) -> bool {
        !self.removed.is_empty()
            && self
                .removed_of(kind, key)
                .is_some_and(|r| !r.dead.is_empty())
    }

    /// Records a local write of `kind` at `stamp`: its dot, and the newest write.
    pub(crate) fn note_local(&mut self, stamp: Stamp, kind: Kind, dot: Dot) {
        self.ctx.insert(dot);
        if (stamp, kind) > (self.at, self.kind) {
            self.at = stamp;
            self.kind = kind;
        }
    }

    /// HSET of one field here; returns whether the field is new. `None`
    /// where [`Coll::writes_in_place`] says no (a counter, another node's
    /// write, a record of kills: the general path records their removal;
    /// nothing is changed or recorded then). What the write did goes
    /// to `delta`: a delta `Coll`, or a [`OneWrite`] that a sink lays out
    /// directly.
    pub fn hset_here<D: ElemDelta>(
        &mut self,
        stamp: Stamp,
        field: &[u8],
        value: &[u8],
        mut delta: Option<&mut D>,
    ) -> Option<bool> {
        if self.records_kill(Kind::Hash, field) {
            return None;
        }
        let dot = self.ctx.next_dot(stamp.node, stamp.time);
        let probe = Probe::new(field);
        if self.hash.is_packed() {
            if let Some((fresh, old)) = self.hash.set_packed((field, value), dot, stamp.time, true)
            {
                if let Some(d) = delta {
                    if let Some(old) = old {
                        d.covers(old);
                    }
                    d.wrote(&probe, dot, stamp.time, value);
                }
                self.note_local(stamp, Kind::Hash, dot);
                return Some(fresh);
            }
            // Over another node's write: the general path, the hash left
            // packed.
            if matches!(self.hash.get(field), Some(FieldRef::Packed(p)) if p.dot.node != stamp.node)
            {
                return None;
            }
        }
        let write = Write {
            dot,
            time: stamp.time,
            value: Blob::new(value),
        };
        let fresh = match self.hash.map_mut().get_mut(probe.as_keyed()) {
            Some(e) if !rewrites_in_place(e, stamp.node) => return None,
            Some(e) => {
                if let Some(d) = delta.as_deref_mut() {
                    for w in &e.writes {
                        d.covers(w.dot);
                    }
                }
                e.writes.clear();
                e.writes.push(write);
                false
            }
            None => {
                let mut writes = SmallVec::new();
                writes.push(write);
                self.hash.map_mut().insert(
                    probe.to_key(),
                    Elem {
                        writes,
                        counts: None,
                    },
                );
                true
            }
        };
        if let Some(d) = delta {
            d.wrote(&probe, dot, stamp.time, value);
        }
        // A hash a long value or a counter unpacked packs again once it
        // qualifies, without waiting for a merge (a node without peers
        // never merges).
        if value.len() <= PACK_MAX_BYTES
            && field.len() <= PACK_MAX_BYTES
            && self.hash.len() <= PACK_MAX_FIELDS
        {
            self.hash.pack();
        }
        self.note_local(stamp, Kind::Hash, dot);
        Some(fresh)
    }

    /// SADD of one member here; returns whether the member is new.
    pub fn sadd_here<D: ElemDelta>(
        &mut self,
        stamp: Stamp,
        member: &[u8],
        mut delta: Option<&mut D>,
    ) -> bool {
        let dot = self.ctx.next_dot(stamp.node, stamp.time);
        let add = Add {
            dot,
            time: stamp.time,
        };
        let probe = Probe::new(member);
        let fresh = match self.set.make().get_mut(probe.as_keyed()) {
            Some(adds) => {
                if let Some(d) = delta.as_deref_mut() {
                    for a in adds.iter() {
                        d.covers(a.dot);
                    }
                }
                adds.clear();
                adds.push(add);
                false
            }
            None => {
                let mut adds = SmallVec::new();
                adds.push(add);
                self.set.make().insert(probe.to_key(), adds);
                true
            }
        };
        if let Some(d) = delta {
            d.added(&probe, dot, stamp.time);
        }
        self.note_local(stamp, Kind::Set, dot);
        fresh
    }

    /// ZADD of one member here; returns its score before (`None`: new).
    /// `None` outside for a member with increments (the general path
    /// records their removal).
    pub fn zadd_here<D: ElemDelta>(
        &mut self,
        stamp: Stamp,
        member: &[u8],
        score: f64,
        mut delta: Option<&mut D>,
    ) -> Option<Option<f64>> {
        if self.records_kill(Kind::ZSet, member) {
            return None;
        }
        let dot = self.ctx.next_dot(stamp.node, stamp.time);
        let write = Write {
            dot,
            time: stamp.time,
            value: Score(score),
        };
        let probe = Probe::new(member);
        let old = match self.zset.make().get_mut(probe.as_keyed()) {
            Some(e) if !rewrites_in_place(e, stamp.node) => return None,
            Some(e) => {
                if let Some(d) = delta.as_deref_mut() {
                    for w in &e.writes {
                        d.covers(w.dot);
                    }
                }
                let old = e.winner().map(|w| w.value.0);
                e.writes.clear();
                e.writes.push(write);
                old
            }
            None => {
                let mut writes = SmallVec::new();
                writes.push(write);
                self.zset.make().insert(
                    probe.to_key(),
                    Elem {
                        writes,
                        counts: None,
                    },
                );
                None
            }
        };
        if let Some(d) = delta {
            d.scored(&probe, dot, stamp.time, score);
        }
        self.note_local(stamp, Kind::ZSet, dot);
        self.reindex_to(member, old, Some(score));
        Some(old)
    }

    /// ZINCRBY here in one walk of the sorted set: `check` sees the
    /// member's score before (absent for a new member) and after, and may
    /// refuse, leaving everything as it was; returns the score after.
    pub fn zincr_here<E, D: CountDelta>(
        &mut self,
        stamp: Stamp,
        member: &[u8],
        by: f64,
        check: impl FnOnce(Option<f64>, f64) -> Result<(), E>,
        delta: Option<&mut D>,
    ) -> Result<f64, E> {
        let probe = Probe::new(member);
        let removed = if self.removed.is_empty() {
            None
        } else {
            self.removed.get(Kind::ZSet, member)
        };
        let node = stamp.node;
        let next = |current: Option<&Tally>| Tally::next(current, stamp, 0, by, true);
        let (old, new, tally) = match self.zset.make().get_mut(probe.as_keyed()) {
            Some(e) => {
                let old = score_of(e, removed);
                let had_counts = e.counts.is_some();
                let counts = e.counts.get_or_insert_with(Default::default);
                let before = counts.get(&node).copied();
                let t = next(before.as_ref());
                counts.upsert(node, t, |mine, new| *mine = new);
                let new = score_of(e, removed).unwrap_or(0.0);
                if let Err(refused) = check(old, new) {
                    match (had_counts, before) {
                        (false, _) => e.counts = None,
                        (true, Some(b)) => {
                            if let Some(c) = &mut e.counts {
                                c.upsert(node, b, |mine, old| *mine = old);
                            }
                        }
                        (true, None) => {
                            if let Some(c) = &mut e.counts {
                                c.retain(|n, _| *n != node);
                            }
                        }
                    }
                    return Err(refused);
                }
                (old, new, t)
            }
            None => {
                let t = next(None);
                let e = Elem {
                    writes: SmallVec::new(),
                    counts: Some(Box::new(NodeMap::single(node, t))),
                };
                let new = score_of(&e, removed).unwrap_or(0.0);
                check(None, new)?;
                self.zset.make().insert(probe.to_key(), e);
                (None, new, t)
            }
        };
        if let Some(d) = delta {
            d.counted(Kind::ZSet, &probe, node, tally);
        }
        if (stamp, Kind::ZSet) > (self.at, self.kind) {
            self.at = stamp;
            self.kind = Kind::ZSet;
        }
        self.reindex_to(member, old, Some(new));
        Ok(new)
    }

    /// A member's score once `delta` (writes and increments of this node's
    /// making, no removal) is merged: what a ZINCRBY on the general path
    /// checks before it is applied.
    pub fn score_after(&self, delta: &Coll, member: &[u8]) -> Option<f64> {
        let probe = Probe::new(member);
        let mut e = self.zset.get(probe.as_keyed()).cloned().unwrap_or_default();
        if let Some(d) = delta.zset.get(probe.as_keyed()) {
            if !d.writes.is_empty() {
                e.writes = d.writes.clone();
            }
            for (node, t) in d.counts.iter().flat_map(|c| c.iter()) {
                join_tally(e.counts.get_or_insert_with(Default::default), *node, t);
            }
        }
        score_of(&e, self.removed_of(Kind::ZSet, member))
    }

    /// HINCRBY or HINCRBYFLOAT here in one walk of the hash: `check` sees
    /// the field's value (absent for a new field) and returns the reply,
    /// or `None` to leave everything as it was.
    pub fn hincr_here<R, D: CountDelta>(
        &mut self,
        stamp: Stamp,
        field: &[u8],
        by: (i64, f64, bool),
        check: impl FnOnce(Read<'_>) -> Option<R>,
        delta: Option<&mut D>,
    ) -> Option<R> {
        let probe = Probe::new(field);
        let removed = if self.removed.is_empty() {
            None
        } else {
            self.removed.get(Kind::Hash, field)
        };
        let next = |current: Option<&Tally>| Tally::next(current, stamp, by.0, by.1, by.2);
        // A packed field has no counter: checked before anything unpacks,
        // so that a refused increment leaves the hash packed.
        let mut check = Some(check);
        let mut run_check = |read: Read<'_>| check.take().and_then(|c| c(read));
        let checked = if self.hash.is_packed() {
            let read = match self.hash.get(field) {
                Some(f) => self.read_field(field, f),
                None => Read::Absent,
            };
            Some(run_check(read)?)
        } else {
            None
        };
        let (reply, tally) = match self.hash.map_mut().get_mut(probe.as_keyed()) {
            Some(e) => {
                let reply = match checked {
                    Some(reply) => reply,
                    None => {
                        let value = e.winner().map(|w| &*w.value.0);
                        let read = match &e.counts {
                            None => value.map_or(Read::Absent, Read::Str),
                            Some(c) => read_value(value, elem_sum(Some(c), removed)),
                        };
                        run_check(read)?
                    }
                };
                let counts = e.counts.get_or_insert_with(Default::default);
                let t = next(counts.get(&stamp.node));
                counts.upsert(stamp.node, t, |mine, new| *mine = new);
                (reply, t)
            }
            None => {
                let reply = match checked {
                    Some(reply) => reply,
                    None => run_check(Read::Absent)?,
                };
                let t = next(None);
                self.hash.map_mut().insert(
                    probe.to_key(),
                    Elem {
                        writes: SmallVec::new(),
                        counts: Some(Box::new(NodeMap::single(stamp.node, t))),
                    },
                );
                (reply, t)
            }
        };
        if let Some(d) = delta {
            d.counted(Kind::Hash, &probe, stamp.node, tally);
        }
        if (stamp, Kind::Hash) > (self.at, self.kind) {
            self.at = stamp;
            self.kind = Kind::Hash;
        }
        Some(reply)
    }

    /// An increment of `kind`'s element here (HINCRBY, ZINCRBY), the
    /// element's current value checked first by the caller.
    pub fn incr_here(
        &mut self,
        kind: Kind,
        key: &[u8],
        stamp: Stamp,
        by: (i64, f64, bool),
        delta: Option<&mut Coll>,
    ) {
        let (int, float, is_float) = by;
        let probe = Probe::new(key);
        fn bump<V>(
            map: &mut EMap<Elem<V>>,
            probe: &Probe,
            stamp: Stamp,
            by: (i64, f64, bool),
        ) -> Tally {
            let tally = |current: Option<&Tally>| Tally::next(current, stamp, by.0, by.1, by.2);
            match map.get_mut(probe.as_keyed()) {
                Some(e) => {
                    let counts = e.counts.get_or_insert_with(Default::default);
                    let t = tally(counts.get(&stamp.node));
                    counts.upsert(stamp.node, t, |mine, new| *mine = new);
                    t
                }
                None => {
                    let t = tally(None);
                    map.insert(
                        probe.to_key(),
                        Elem {
                            writes: SmallVec::new(),
                            counts: Some(Box::new(NodeMap::single(stamp.node, t))),
                        },
                    );
                    t
                }
            }
        }
        let old_score = match kind {
            Kind::ZSet => self.score(key),
            _ => None,
        };
        let tally = match kind {
            Kind::Hash => bump(self.hash.map_mut(), &probe, stamp, (int, float, is_float)),
            Kind::ZSet => bump(self.zset.make(), &probe, stamp, (int, float, is_float)),
            Kind::Set | Kind::List => return,
        };
        if kind == Kind::ZSet {
            self.reindex(key, old_score);
        }
        if let Some(d) = delta {
            let counts = match kind {
                Kind::Hash => &mut d.hash.map_mut().entry(probe.to_key()).or_default().counts,
                Kind::ZSet => &mut d.zset.make().entry(probe.to_key()).or_default().counts,
                Kind::Set | Kind::List => return,
            };
            counts
                .get_or_insert_with(Default::default)
                .upsert(stamp.node, tally, |mine, new| *mine = new);
        }
        if (stamp, kind) > (self.at, self.kind) {
            self.at = stamp;
            self.kind = kind;
        }
    }

    /// Records a local removal of `kind` at `stamp` (no new dot).
    pub(crate) fn note_removal(&mut self, stamp: Stamp, kind: Kind) {
        if (stamp, kind) > (self.at, self.kind) {
            self.at = stamp;
            self.kind = kind;
        }
    }

    // ----- merge -----

    /// Joins `other` (a state or a delta) into this part; returns, per
    /// element, the concurrent writes this join brought together (each
    /// loser with the winner).
    pub fn merge(&mut self, other: &Coll) -> Vec<(Vec<u8>, Conflict)> {
        let mut conflicts = Vec::new();
        // The members whose score this merge may move, with their scores
        // before it: a delta's (it names them), or all (a whole state).
        let moved: Vec<(Vec<u8>, Option<f64>)> = if self.zindex.0.get().is_none() {
            Vec::new()
        } else if !other.part {
            self.unindex();
            Vec::new()
        } else {
            let named = other.zset.keys().map(EKey::bytes);
            let recorded = other
                .removed
                .keys()
                .filter(|(k, _)| *k == Kind::ZSet)
                .map(|(_, m)| &m[..]);
            let moved: Vec<(Vec<u8>, Option<f64>)> = named
                .chain(recorded)
                .map(|m| (m.to_vec(), self.score(m)))
                .collect();
            // A delta naming many members (ZREMRANGEBYSCORE of most of
            // them) is cheaper rebuilt on the next read than moved one
            // by one.
            if moved.len() > 64 && moved.len() > self.zset.len() / 8 {
                self.unindex();
                Vec::new()
            } else {
                moved
            }
        };
        for (key, r) in other.removed.iter() {
            let mine = self.removed.make().entry(key.0, &key.1);
            mine.reset = mine.reset.max(r.reset);
            for (node, t) in r.tallies.iter() {
                join_tally(&mut mine.tallies, *node, t);
            }
            for (node, n) in r.dead.iter() {
                mine.note_dead(*node, *n);
            }
        }
        // A delta keeps the entries of elements it empties: they name what
        // it removes.
        let how = (!other.part, self.part && other.part);
        let ctxs = (&self.ctx, &other.ctx);
        let removed = &self.removed;
        // A delta without fields changes none (and leaves a packed hash
        // packed); a delta's plain fields join a packed hash in place.
        let in_place = other.part
            && !self.part
            && self.hash.is_packed()
            && self
                .hash
                .join_packed(&other.hash, (&self.ctx, &other.ctx), |f, dot| {
                    kills(self.removed.get(Kind::Hash, f), dot)
                });
        if !in_place && (!other.hash.is_empty() || (!other.part && !self.hash.is_empty())) {
            join_elems(
                self.hash.map_mut(),
                &*other.hash.map(),
                ctxs,
                |k| record_of(removed, Kind::Hash, k),
                how,
                |key, e| siblings(&mut conflicts, key.bytes(), e, blob_side),
            );
        }
        // A kind neither side holds has nothing to join (and stays
        // unallocated).
        if !other.set.is_empty() || !self.set.is_empty() {
            join_members(self.set.make(), &other.set, &self.ctx, &other.ctx, how);
        }
        if !other.zset.is_empty() || !self.zset.is_empty() {
            join_elems(
                self.zset.make(),
                &*other.zset,
                ctxs,
                |k| record_of(removed, Kind::ZSet, k),
                how,
                |key, e| siblings(&mut conflicts, key.bytes(), e, score_side),
            );
        }
        if !other.list.is_empty() || !self.list.is_empty() {
            join_elems(
                self.list.make(),
                &*other.list,
                ctxs,
                |pos| list_record_of(removed, pos),
                how,
                |pos, e| siblings(&mut conflicts, pos.to_string().as_bytes(), e, blob_side),
            );
        }
        // Elements a removal record now covers whole (a record that
        // arrived without its element).
        let stays_delta = self.part && other.part;
        if !other.removed.is_empty() && !stays_delta {
            for (kind, key) in other.removed.keys() {
                let r = self.removed.get(*kind, key);
                let probe = Probe::new(key);
                match kind {
                    // A packed field has no counter: only a kill empties it.
                    Kind::Hash
                        if self.hash.is_packed()
                            && !self.hash.get(key).is_some_and(|f| field_killed(f, r)) => {}
                    Kind::Hash => {
                        let hash = self.hash.map_mut();
                        if hash
                            .get_mut(probe.as_keyed())
                            .is_some_and(|e| emptied(e, r))
                        {
                            hash.remove(probe.as_keyed());
                        }
                    }
                    Kind::ZSet => {
                        if let Some(zset) = self.zset.made_mut() {
                            if zset
                                .get_mut(probe.as_keyed())
                                .is_some_and(|e| emptied(e, r))
                            {
                                zset.remove(probe.as_keyed());
                            }
                        }
                    }
                    Kind::Set | Kind::List => {}
                }
            }
        }
        self.ctx.merge(&other.ctx);
        if (other.at, other.kind) > (self.at, self.kind) {
            self.at = other.at;
            self.kind = other.kind;
        }
        self.part &= other.part;
        if !self.part {
            self.hash.pack();
        }
        self.tidy();
        for (member, old) in moved {
            self.reindex(&member, old);
        }
        if !self.oldest.0.is_zero() {
            if let Some(e) = other.oldest_stamp() {
                self.oldest.0 = self.oldest.0.min(e);
            }
        }
        conflicts
    }

    /// The element writes, adds and counter segments here stamped before
    /// `flush`, each with its element: what a flush that had not seen them
    /// removes (see `KeyState::lost_to_flush`).
    pub fn lost_to_flush(&self, flush: Stamp) -> Vec<(Vec<u8>, Side)> {
        let mut lost = Vec::new();
        fn elems<V>(
            lost: &mut Vec<(Vec<u8>, Side)>,
            kind: Kind,
            map: &EMap<Elem<V>>,
            removed: &Records,
            flush: Stamp,
            side: fn(&Write<V>) -> Side,
        ) {
            for (key, e) in map {
                for w in e.writes.iter().filter(|w| w.stamp() < flush) {
                    lost.push((key.bytes().to_vec(), side(w)));
                }
                let r = removed.get(kind, key.bytes());
                for (node, t) in e.counts.iter().flat_map(|c| c.iter()) {
                    let surviving = t.surviving(r.and_then(|r| r.tallies.get(node)));
                    if let Some(s) = surviving.filter(|s| s.epoch < flush) {
                        lost.push((
                            key.bytes().to_vec(),
                            Side {
                                origin: *node,
                                stamp: s.epoch,
                                what: Summary::Increment {
                                    int: s.int,
                                    float: s.float,
                                },
                            },
                        ));
                    }
                }
            }
        }
        elems(
            &mut lost,
            Kind::Hash,
            &*self.hash.map(),
            &self.removed,
            flush,
            blob_side,
        );
        elems(
            &mut lost,
            Kind::ZSet,
            &self.zset,
            &self.removed,
            flush,
            score_side,
        );
        for (key, adds) in &self.set {
            for a in adds.iter().filter(|a| a.stamp() < flush) {
                lost.push((
                    key.bytes().to_vec(),
                    Side {
                        origin: a.dot.node,
                        stamp: a.stamp(),
                        what: Summary::Value(key.bytes().to_vec()),
                    },
                ));
            }
        }
        for (pos, e) in self.list.iter() {
            for w in e.writes.iter().filter(|w| w.stamp() < flush) {
                lost.push((pos.to_string().into_bytes(), blob_side(w)));
            }
        }
        lost
    }

    /// Drops every element write, add and counter segment stamped before
    /// `floor` (a flush, or the key's expiry floor), and their records.
    pub fn prune(&mut self, floor: Stamp) {
        if floor.is_zero() {
            return;
        }
        if self.at < floor && !self.part {
            self.unindex();
            // Every element here is older: only the context stays, so that
            // those elements stay removed wherever they arrive from.
            // (Removal records may be newer: a register write's.)
            self.hash.clear();
            self.set.clear();
            self.zset.clear();
            self.list.clear();
        }
        if !self.oldest.0.is_zero() && floor <= self.oldest.0 {
            return;
        }
        // A delta keeps its entries, emptied or not: they name what it removes.
        let keep = self.part;
        if !self.zset.is_empty() {
            self.unindex();
        }
        fn prune_elems<K, V>(map: &mut impl ElemMap<K, V>, floor: Stamp, keep: bool) {
            map.keep(|_, e| {
                if e.is_empty() {
                    return keep;
                }
                e.writes.retain(|w| w.stamp() >= floor);
                if let Some(c) = &mut e.counts {
                    c.retain(|_, t| t.epoch >= floor);
                    if c.is_empty() {
                        e.counts = None;
                    }
                }
                !e.is_empty() || keep
            });
        }
        // A packed hash's fields are plain writes: unpacked only when the
        // floor drops one.
        if !self.hash.is_empty() && !self.hash.packed_all_from(floor) {
            prune_elems(self.hash.map_mut(), floor, keep);
        }
        if let Some(zset) = self.zset.made_mut() {
            prune_elems(zset, floor, keep);
        }
        if let Some(list) = self.list.made_mut() {
            prune_elems(list, floor, keep);
        }
        if let Some(set) = self.set.made_mut() {
            set.retain(|_, adds| {
                if adds.is_empty() {
                    return keep;
                }
                adds.retain(|a| a.stamp() >= floor);
                !adds.is_empty() || keep
            });
        }
        // A record goes with its reset, not with its tallies: a record
        // whose tallies are all older than the floor may have merged, on
        // another node, into one whose tallies are not, and its reset
        // with it; dropping it here would leave the two resets apart.
        //
        // A kill goes with its own dot, which merging never changes: one
        // below the floor's time covers only writes the floor removes. A
        // record kept for its kills alone takes the floor as its reset, so
        // that its reset too is what it would be had it merged first with
        // another one older than the floor (that reset is the larger).
        if let Some(removed) = self.removed.made_mut() {
            removed.retain(|_, r| {
                r.tallies.retain(|_, t| t.epoch >= floor);
                r.dead.retain(|_, n| *n >= floor.time);
                if r.reset < floor && !r.dead.is_empty() {
                    r.reset = floor;
                }
                r.reset >= floor
            });
        }
        if !self.part {
            self.hash.pack();
        }
        self.tidy();
        self.oldest.0 = self.oldest_stamp().unwrap_or(self.at).max(floor);
    }

    /// The oldest stamp a prune looks at: elements' and removal records'
    /// (a kill as the oldest stamp of its dot's time).
    fn oldest_stamp(&self) -> Option<Stamp> {
        let kill = |n: &u64| Stamp {
            time: *n,
            node: NodeId(0),
        };
        let records = self.removed.values().flat_map(|r| {
            let tallies = r.tallies.values().map(|t| t.epoch);
            tallies.chain(r.dead.values().map(kill)).chain([r.reset])
        });
        self.earliest_added().into_iter().chain(records).min()
    }

    /// The oldest stamp this part brings to a merge (element writes, adds,
    /// counter segments), `None` when it brings none.
    pub fn earliest_added(&self) -> Option<Stamp> {
        let hash = self.hash.stamps();
        let zset = self.zset.values().flat_map(elem_stamps);
        let set = self.set.values().flatten().map(Add::stamp);
        let list = self.list.values().flat_map(elem_stamps);
        hash.chain(zset).chain(set).chain(list).min()
    }

    /// Drops what the GC floor `acked` makes dead weight: removal records
    /// no tally here continues, once their reset is at or below it; and
    /// the context's dots below its time, which the context's floor now
    /// covers (every write made before it reached every node, and every
    /// node stamps its later writes past it). Returns whether anything was
    /// dropped.
    pub fn compact(&mut self, acked: Stamp) -> bool {
        let before = self.removed.len();
        let mut kills_dropped = false;
        let (hash, zset) = (&self.hash, &self.zset);
        if let Some(removed) = self.removed.made_mut() {
            removed.retain(|(kind, key), r| {
                if r.reset > acked {
                    return true;
                }
                if !r.dead.is_empty() {
                    r.dead = NodeMap::default();
                    kills_dropped = true;
                }
                let probe = Probe::new(key);
                let counts = match kind {
                    Kind::Hash => hash.get(key).and_then(|f| f.counts()),
                    Kind::ZSet => zset.get(probe.as_keyed()).and_then(|e| e.counts.as_deref()),
                    Kind::Set | Kind::List => None,
                };
                r.tallies.retain(|node, t| {
                    counts
                        .and_then(|c| c.get(node))
                        .is_some_and(|c| c.epoch == t.epoch)
                });
                !r.tallies.is_empty()
            });
            self.removed.tidy();
        }
        // Never past the newest write known here (a node without peers
        // collects at "everything"), but past every dot its command took:
        // an HSET of ten fields numbers them from its time up, and those
        // left above the floor would stay in the cloud until the key's
        // next write. A later write's dots are numbered from the floor up
        // (`CausalContext::next_dot`), so it is still new.
        let cloud = self.ctx.cloud_len();
        let newest = self
            .ctx
            .newest_from(self.at.node, self.at.time)
            .map_or(self.at.time, |n| n.max(self.at.time));
        self.ctx
            .raise_floor(acked.time.min(newest.saturating_add(1)));
        kills_dropped || self.removed.len() != before || self.ctx.cloud_len() != cloud
    }

    // ----- state transfers from a node that collected what this one holds -----

    /// Whether [`Coll::forget_missing_from`] would drop anything.
    pub fn is_stale_against(&self, sender: Option<&Coll>, held: &impl Fn(NodeId) -> Stamp) -> bool {
        let mut stale = false;
        self.visit_stale(sender, held, |_, _, _| {
            stale = true;
        });
        stale || !self.stale_list_writes(sender, held).is_empty()
    }

    /// The list element writes a transfer's sender applied and no longer
    /// holds (see [`Coll::forget_missing_from`]).
    fn stale_list_writes(
        &self,
        sender: Option<&Coll>,
        held: &impl Fn(NodeId) -> Stamp,
    ) -> Vec<(Position, Dot)> {
        let is_held = |s: Stamp| !s.is_zero() && s <= held(s.node);
        let mut stale = Vec::new();
        for (pos, e) in self.list.iter() {
            let their = sender.and_then(|c| c.list.get(pos));
            for w in &e.writes {
                let kept = their.is_some_and(|t| t.writes.iter().any(|x| x.dot == w.dot));
                if is_held(w.stamp()) && !kept {
                    stale.push((pos.clone(), w.dot));
                }
            }
        }
        stale
    }

    /// Forgets the element writes, adds and counter segments that a state
    /// transfer's sender applied (stamped at or below `held` of their
    /// node) and no longer holds: a remove it applied took them, and its
    /// record of that (its context) may be collected. The receiver's copy
    /// predates that remove (see `KeyState::forget_missing_from`). Returns
    /// whether anything went.
    pub fn forget_missing_from(
        &mut self,
        sender: Option<&Coll>,
        held: &impl Fn(NodeId) -> Stamp,
    ) -> bool {
        let mut stale: Vec<(Kind, EKey, Option<Dot>, Option<NodeId>)> = Vec::new();
        self.visit_stale(sender, held, |kind, key, what| {
            stale.push((kind, key.clone(), what.0, what.1))
        });
        let stale_list = self.stale_list_writes(sender, held);
        for (pos, dot) in &stale_list {
            forget_in(self.list.make(), pos, Some(*dot), None);
        }
        if stale.is_empty() {
            self.list.tidy();
            return !stale_list.is_empty();
        }
        self.unindex();
        for (kind, key, dot, node) in stale {
            match kind {
                Kind::Hash => forget_in(self.hash.map_mut(), &key, dot, node),
                Kind::ZSet => forget_in(self.zset.make(), &key, dot, node),
                Kind::List => {}
                Kind::Set => {
                    let set = self.set.make();
                    if let (Some(adds), Some(dot)) = (set.get_mut(&key), dot) {
                        adds.retain(|a| a.dot != dot);
                        if adds.is_empty() {
                            set.remove(&key);
                        }
                    }
                }
            }
        }
        if !self.part {
            self.hash.pack();
        }
        self.tidy();
        true
    }

    /// Calls `f(kind, key, (dot, tally node))` for each stale part: an
    /// element write or add (its dot), or a counter segment (its node).
    fn visit_stale(
        &self,
        sender: Option<&Coll>,
        held: &impl Fn(NodeId) -> Stamp,
        mut f: impl FnMut(Kind, &EKey, (Option<Dot>, Option<NodeId>)),
    ) {
        let is_held = |s: Stamp| !s.is_zero() && s <= held(s.node);
        fn elems<'a, V>(
            kind: Kind,
            mine: &'a EMap<Elem<V>>,
            theirs: Option<&'a EMap<Elem<V>>>,
            removed: Option<&'a Records>,
            is_held: &impl Fn(Stamp) -> bool,
            f: &mut impl FnMut(Kind, &EKey, (Option<Dot>, Option<NodeId>)),
        ) {
            for (key, e) in mine {
                let their = theirs.and_then(|t| t.get(key));
                for w in &e.writes {
                    let kept = their.is_some_and(|t| t.writes.iter().any(|x| x.dot == w.dot));
                    if is_held(w.stamp()) && !kept {
                        f(kind, key, (Some(w.dot), None));
                    }
                }
                for (node, t) in e.counts.iter().flat_map(|c| c.iter()) {
                    let known = their
                        .and_then(|t| t.counts.as_deref())
                        .is_some_and(|c| c.get(node).is_some())
                        || removed
                            .and_then(|r| r.get(kind, key.bytes()))
                            .is_some_and(|r| r.tallies.get(node).is_some());
                    if is_held(t.epoch) && !known {
                        f(kind, key, (None, Some(*node)));
                    }
                }
            }
        }
        let removed = sender.map(|c| &*c.removed);
        let their_hash = sender.map(|c| c.hash.map());
        elems(
            Kind::Hash,
            &*self.hash.map(),
            their_hash.as_deref(),
            removed,
            &is_held,
            &mut f,
        );
        elems(
            Kind::ZSet,
            &self.zset,
            sender.map(|c| &*c.zset),
            removed,
            &is_held,
            &mut f,
        );
        for (key, adds) in &self.set {
            let their = sender.and_then(|c| c.set.get(key));
            for a in adds {
                if is_held(a.stamp()) && !their.is_some_and(|t| t.contains(a)) {
                    f(Kind::Set, key, (Some(a.dot), None));
                }
            }
        }
    }

    /// Strips from a state that arrived in a state transfer the element
    /// writes, adds and counter segments the receiver applied (at or below
    /// `held` of their node) and does not hold: it removed them and may
    /// have collected the record (see `KeyState::drop_collected`).
    pub fn drop_collected(&mut self, mine: Option<&Coll>, held: &impl Fn(NodeId) -> Stamp) {
        self.unindex();
        let is_held = |s: Stamp| !s.is_zero() && s <= held(s.node);
        fn strip<V>(
            kind: Kind,
            theirs: &mut EMap<Elem<V>>,
            mine: Option<&EMap<Elem<V>>>,
            my_removed: Option<&Records>,
            is_held: &impl Fn(Stamp) -> bool,
        ) {
            theirs.retain(|key, e| {
                let my = mine.and_then(|m| m.get(key));
                e.writes.retain(|w| {
                    !is_held(w.stamp())
                        || my.is_some_and(|m| m.writes.iter().any(|x| x.dot == w.dot))
                });
                if let Some(counts) = &mut e.counts {
                    counts.retain(|node, t| {
                        !is_held(t.epoch)
                            || my
                                .and_then(|m| m.counts.as_deref())
                                .and_then(|c| c.get(node))
                                .is_some_and(|c| c.epoch == t.epoch)
                            || my_removed
                                .and_then(|r| r.get(kind, key.bytes()))
                                .and_then(|r| r.tallies.get(node))
                                .is_some_and(|r| r.epoch == t.epoch)
                    });
                    if counts.is_empty() {
                        e.counts = None;
                    }
                }
                !e.is_empty()
            });
        }
        let my_removed = mine.map(|c| &*c.removed);
        let my_hash = mine.map(|c| c.hash.map());
        strip(
            Kind::Hash,
            self.hash.map_mut(),
            my_hash.as_deref(),
            my_removed,
            &is_held,
        );
        if let Some(zset) = self.zset.made_mut() {
            strip(
                Kind::ZSet,
                zset,
                mine.map(|c| &*c.zset),
                my_removed,
                &is_held,
            );
        }
        if let Some(set) = self.set.made_mut() {
            set.retain(|key, adds| {
                let my = mine.and_then(|c| c.set.get(key));
                adds.retain(|a| !is_held(a.stamp()) || my.is_some_and(|m| m.contains(a)));
                !adds.is_empty()
            });
        }
        if let Some(list) = self.list.made_mut() {
            list.retain(|pos, e| {
                let my = mine.and_then(|c| c.list.get(pos));
                e.writes.retain(|w| {
                    !is_held(w.stamp())
                        || my.is_some_and(|m| m.writes.iter().any(|x| x.dot == w.dot))
                });
                !e.is_empty()
            });
        }
        self.tidy();
    }

    /// Bytes held on the heap, roughly: per element its key, entry and
    /// value (MEMORY USAGE).
    pub fn heap_bytes(&self) -> usize {
        let mut n = self.ctx.heap_bytes();
        n += self.set.box_bytes() + self.zset.box_bytes();
        n += self.list.box_bytes() + self.removed.box_bytes();
        n += self.hash.heap_bytes() + self.set.heap_bytes() + self.zset.heap_bytes();
        for (k, a) in &self.set {
            n += k.heap_len();
            if a.spilled() {
                n += a.capacity() * std::mem::size_of::<Add>();
            }
        }
        for (k, e) in &self.zset {
            n += k.heap_len();
            if e.writes.spilled() {
                n += e.writes.capacity() * std::mem::size_of::<Write<Score>>();
            }
        }
        n += self.removed.heap_bytes();
        n += self.list.heap_bytes();
        for (pos, e) in self.list.iter() {
            n += pos.heap_len();
            n += e.writes.iter().map(|w| w.value.heap_len()).sum::<usize>();
            if e.writes.spilled() {
                n += e.writes.capacity() * std::mem::size_of::<Write<Blob>>();
            }
        }
        n + self
            .zindex
            .0
            .get()
            .map_or(0, |ix| std::mem::size_of::<ScoreIndex>() + ix.heap_bytes())
    }
}

/// Where an in-place write of one element (a hash field, a set member, a
/// sorted set member) records what it did, for its delta.
pub trait ElemDelta {
    /// The delta covers `dot`: a write the new one replaced.
    fn covers(&mut self, dot: Dot);
    /// The field's new write (the delta covers its dot, too).
    fn wrote(&mut self, field: &Probe<'_>, dot: Dot, time: u64, value: &[u8]);
    /// The member's new add (the delta covers its dot, too).
    fn added(&mut self, member: &Probe<'_>, dot: Dot, time: u64);
    /// The sorted set member's new score (the delta covers its dot, too).
    fn scored(&mut self, member: &Probe<'_>, dot: Dot, time: u64, score: f64);
}

/// An [`ElemDelta`] that also records an increment of one element.
pub trait CountDelta: ElemDelta {
    /// The hash field's or sorted set member's counter segment of `node`
    /// after an increment (HINCRBY, ZINCRBY): no dot, nothing replaced.
    fn counted(&mut self, kind: Kind, elem: &Probe<'_>, node: NodeId, tally: Tally);
}

/// What a one-element write wrote, besides its element: a hash field's
/// value, a set member's add, a sorted set member's score.
/// Or an increment of a hash field or sorted set member (`kind`): the
/// counter segment of `node` after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Written<'a> {
    Field(&'a [u8]),
    Member,
    Score(f64),
    Count {
        kind: Kind,
        node: NodeId,
        tally: Tally,
    },
}

impl Written<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Written::Field(_) => Kind::Hash,
            Written::Member => Kind::Set,
            Written::Score(_) => Kind::ZSet,
            Written::Count { kind, .. } => *kind,
        }
    }
}

impl ElemDelta for Coll {
    fn covers(&mut self, dot: Dot) {
        self.ctx.insert(dot);
    }

    fn wrote(&mut self, field: &Probe<'_>, dot: Dot, time: u64, value: &[u8]) {
        self.ctx.insert(dot);
        let e = self.hash.map_mut().entry(field.to_key()).or_default();
        e.writes.clear();
        e.writes.push(Write {
            dot,
            time,
            value: Blob::new(value),
        });
    }

    fn added(&mut self, member: &Probe<'_>, dot: Dot, time: u64) {
        self.ctx.insert(dot);
        let adds = self.set.make().entry(member.to_key()).or_default();
        adds.clear();
        adds.push(Add { dot, time });
    }

    fn scored(&mut self, member: &Probe<'_>, dot: Dot, time: u64, score: f64) {
        self.ctx.insert(dot);
        let e = self.zset.make().entry(member.to_key()).or_default();
        e.writes.clear();
        e.writes.push(Write {
            dot,
            time,
            value: Score(score),
        });
    }
}

impl CountDelta for Coll {
    fn counted(&mut self, kind: Kind, elem: &Probe<'_>, node: NodeId, tally: Tally) {
        let counts = match kind {
            Kind::ZSet => &mut self.zset.make().entry(elem.to_key()).or_default().counts,
            _ => &mut self.hash.map_mut().entry(elem.to_key()).or_default().counts,
        };
        counts
            .get_or_insert_with(Default::default)
            .upsert(node, tally, |mine, new| *mine = new);
    }
}

/// What a one-element write did, for a sink that lays out its delta
/// without filling a delta `Coll` (`codec::append_one_delta`): the new
/// write's dot and those of the writes it replaced. (Filling and laying
/// out a `Coll` for a one-field HSET cost a replicating node about as
/// much as the HSET itself.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneWrite {
    pub dot: Dot,
    pub replaced: SmallVec<[Dot; 2]>,
    /// An increment's counter segment (its node and tally).
    pub counted: Option<(NodeId, Tally)>,
}

impl Default for OneWrite {
    fn default() -> OneWrite {
        OneWrite {
            dot: Dot {
                node: NodeId(0),
                n: 0,
            },
            replaced: SmallVec::new(),
            counted: None,
        }
    }
}

impl OneWrite {
    /// The delta `Coll` the write would have filled: `written` to `elem`
    /// at `stamp`, as recorded here.
    pub fn delta(&self, stamp: Stamp, elem: &[u8], written: Written<'_>) -> Coll {
        let mut delta = Coll::delta(stamp, written.kind());
        let probe = Probe::new(elem);
        if let Written::Count { kind, node, tally } = written {
            delta.counted(kind, &probe, node, tally);
            return delta;
        }
        for &dot in &self.replaced {
            delta.covers(dot);
        }
        match written {
            Written::Field(value) => delta.wrote(&probe, self.dot, stamp.time, value),
            Written::Member => delta.added(&probe, self.dot, stamp.time),
            Written::Score(score) => delta.scored(&probe, self.dot, stamp.time, score),
            Written::Count { .. } => {}
        }
        delta
    }
}

impl ElemDelta for OneWrite {
    fn covers(&mut self, dot: Dot) {
        self.replaced.push(dot);
    }

    fn wrote(&mut self, _field: &Probe<'_>, dot: Dot, _time: u64, _value: &[u8]) {
        self.dot = dot;
    }

    fn added(&mut self, _member: &Probe<'_>, dot: Dot, _time: u64) {
        self.dot = dot;
    }

    fn scored(&mut self, _member: &Probe<'_>, dot: Dot, _time: u64, _score: f64) {
        self.dot = dot;
    }
}

impl CountDelta for OneWrite {
    fn counted(&mut self, _kind: Kind, _elem: &Probe<'_>, node: NodeId, tally: Tally) {
        self.counted = Some((node, tally));
    }
}

/// What a write of several elements did in place (HSET, SADD or ZADD of
/// many), for a sink that lays out its delta without filling a delta
/// `Coll` (`codec::append_many_write`): the dots the delta covers and each
/// element's new write, in the order made. (Filling the delta's maps cost
/// a replicating node a third of a three-field HSET.) An element written
/// twice is recorded twice; the last write is the delta's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManyWrite {
    /// The dots the delta covers: those of the writes replaced and the new
    /// writes'.
    pub dots: SmallVec<[Dot; 8]>,
    /// Each write made, in order.
    pub writes: SmallVec<[ElemWrite; 4]>,
    /// The elements' bytes, each followed by its value's (hash fields).
    pub bytes: Vec<u8>,
}

/// One element's write in a [`ManyWrite`]: where its element's and value's
/// bytes end in `bytes` (each begins where the one before ends), its dot
/// and time, and its score (sorted sets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ElemWrite {
    pub elem_end: usize,
    pub value_end: usize,
    pub dot: Dot,
    pub time: u64,
    pub score: f64,
}

impl ManyWrite {
    /// Empty again, keeping its room.
    pub fn clear(&mut self) {
        self.dots.clear();
        self.writes.clear();
        self.bytes.clear();
    }

    /// Nothing written or covered: no delta to send.
    pub fn names_nothing(&self) -> bool {
        self.dots.is_empty() && self.writes.is_empty()
    }

    /// Each write: its element, its value (hash fields; empty otherwise),
    /// dot, time and score.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], &ElemWrite)> + '_ {
        let mut start = 0;
        self.writes.iter().map(move |w| {
            let elem = &self.bytes[start..w.elem_end];
            let value = &self.bytes[w.elem_end..w.value_end];
            start = w.value_end;
            (elem, value, w)
        })
    }

    /// The delta `Coll` the write would have filled, of `kind` at `stamp`.
    pub fn delta(&self, stamp: Stamp, kind: Kind) -> Coll {
        let mut delta = Coll::delta(stamp, kind);
        for &dot in &self.dots {
            delta.covers(dot);
        }
        for (elem, value, w) in self.iter() {
            let probe = Probe::new(elem);
            match kind {
                Kind::Hash => delta.wrote(&probe, w.dot, w.time, value),
                Kind::Set => delta.added(&probe, w.dot, w.time),
                Kind::ZSet => delta.scored(&probe, w.dot, w.time, w.score),
                Kind::List => {}
            }
        }
        delta
    }

    fn record(&mut self, elem: &[u8], value: &[u8], dot: Dot, time: u64, score: f64) {
        self.dots.push(dot);
        self.bytes.extend_from_slice(elem);
        let elem_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.writes.push(ElemWrite {
            elem_end,
            value_end: self.bytes.len(),
            dot,
            time,
            score,
        });
    }
}

impl ElemDelta for ManyWrite {
    fn covers(&mut self, dot: Dot) {
        self.dots.push(dot);
    }

    fn wrote(&mut self, field: &Probe<'_>, dot: Dot, time: u64, value: &[u8]) {
        self.record(field.bytes(), value, dot, time, 0.0);
    }

    fn added(&mut self, member: &Probe<'_>, dot: Dot, time: u64) {
        self.record(member.bytes(), &[], dot, time, 0.0);
    }

    fn scored(&mut self, member: &Probe<'_>, dot: Dot, time: u64, score: f64) {
        self.record(member.bytes(), &[], dot, time, score);
    }
}

/// Forgets one stale part of an element: a write (by dot) or a node's
/// counter segment.
fn forget_in<K: Clone, V>(
    map: &mut impl ElemMap<K, V>,
    key: &K,
    dot: Option<Dot>,
    node: Option<NodeId>,
) {
    let Some(mut e) = map.take(key) else { return };
    if let Some(dot) = dot {
        e.writes.retain(|w| w.dot != dot);
    }
    if let (Some(node), Some(counts)) = (node, &mut e.counts) {
        counts.retain(|n, _| *n != node);
        if counts.is_empty() {
            e.counts = None;
        }
    }
    if !e.is_empty() {
        map.put(key.clone(), e);
    }
}

/// A sorted-set element's score: its winning ZADD (0 without one) plus
/// the increments `removed` does not cover; `None` for an empty element.
fn score_of(e: &Elem<Score>, removed: Option<&Removed>) -> Option<f64> {
    if e.is_empty() {
        return None;
    }
    let base = e.winner().map_or(0.0, |w| w.value.0);
    Some(match &e.counts {
        None => base,
        Some(c) => {
            let sum = elem_sum(Some(c), removed);
            base + sum.float + sum.int as f64
        }
    })
}

fn elem_stamps<V>(e: &Elem<V>) -> impl Iterator<Item = Stamp> + '_ {
    e.writes
        .iter()
        .map(Write::stamp)
        .chain(e.counts.iter().flat_map(|c| c.values()).map(|t| t.epoch))
}

/// Reports each of an element's surviving writes but the winner, and but
/// those of the winner's node, as lost to it: writes no later write
/// observed, so concurrent.
fn siblings<V>(
    conflicts: &mut Vec<(Vec<u8>, Conflict)>,
    key: &[u8],
    e: &Elem<V>,
    side: fn(&Write<V>) -> Side,
) {
    let Some(win) = e.winner() else { return };
    // The winner's node had its own earlier write, as for registers: the
    // two meet where a removal between them has not arrived yet.
    for lost in e.writes.iter().filter(|w| w.dot.node != win.dot.node) {
        conflicts.push((
            key.to_vec(),
            Conflict {
                kind: ConflictKind::ConcurrentWrite,
                winner: side(win),
                loser: side(lost),
                element: None,
            },
        ));
    }
}

fn blob_side(w: &Write<Blob>) -> Side {
    Side {
        origin: w.dot.node,
        stamp: w.stamp(),
        what: Summary::of_value(Some(&w.value.0)),
    }
}

fn score_side(w: &Write<Score>) -> Side {
    Side {
        origin: w.dot.node,
        stamp: w.stamp(),
        what: Summary::Value(crate::number::format_float(w.value.0).into_bytes()),
    }
}
