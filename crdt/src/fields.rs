//! A hash's fields (issue #13): packed into one byte buffer while the hash
//! is small and plain, an [`EMap`] of elements otherwise.
//!
//! A hash of ten short fields held as a map costs a 104-byte entry per
//! field (the field's key and hash, its write's dot, time and value, and
//! the small-vector capacities around them), where redis-server packs a
//! listpack of some 20 bytes a field. Most hashes in use are small
//! (sessions, user records) and written by one node at a time, so each
//! field holds one write and no counter: that is what packs. A field
//! packs as its lengths, the index of its writer in the buffer's node
//! table, its write's time as a distance from the buffer's base time, its
//! dot's distance from that time, and the field's and value's bytes: 5 to
//! 9 bytes besides the data.
//!
//! The packed form is storage only. The buffer keeps the fields in the
//! map's order (stable hash, then bytes), so iteration, SCAN cursors and
//! the encoding are those of the map, byte for byte (digests compare
//! encodings across nodes, which may hold one hash packed and the other
//! not). Reads, and HSET of a plain field, work on the buffer in place;
//! anything else (a merge, a counter, a prune that drops a field) unpacks
//! it to the map, and a merge into a whole state packs it again when it
//! qualifies.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::coll::{Blob, Elem, Write};
use crate::context::{CausalContext, Dot};
use crate::digest::stable_hash;
use crate::ekey::{EKey, Probe};
use crate::emap::EMap;
use crate::nodemap::NodeMap;
use crate::stamp::{NodeId, Stamp};
use crate::state::Tally;

/// Most fields a packed hash holds (Redis's `hash-max-listpack-entries`).
pub const PACK_MAX_FIELDS: usize = 128;
/// Longest field or value a packed hash holds (`hash-max-listpack-value`).
pub const PACK_MAX_BYTES: usize = 64;
/// Most writers a packed hash's node table names (an index is one byte).
const PACK_MAX_NODES: usize = 255;

/// See the module doc.
#[derive(Clone)]
pub struct Fields(Repr);

#[derive(Clone)]
enum Repr {
    Map(EMap<Elem<Blob>>),
    Packed(Packed),
}

impl Default for Fields {
    fn default() -> Fields {
        Fields(Repr::Map(EMap::new()))
    }
}

impl From<EMap<Elem<Blob>>> for Fields {
    fn from(map: EMap<Elem<Blob>>) -> Fields {
        Fields(Repr::Map(map))
    }
}

impl FromIterator<(EKey, Elem<Blob>)> for Fields {
    fn from_iter<I: IntoIterator<Item = (EKey, Elem<Blob>)>>(iter: I) -> Fields {
        Fields(Repr::Map(iter.into_iter().collect()))
    }
}

/// One field as a packed hash holds it: a single write, no counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedField<'a> {
    pub field: &'a [u8],
    pub value: &'a [u8],
    pub dot: Dot,
    pub time: u64,
}

impl PackedField<'_> {
    pub fn stamp(&self) -> Stamp {
        Stamp {
            time: self.time,
            node: self.dot.node,
        }
    }

    pub fn to_elem(self) -> Elem<Blob> {
        let mut e = Elem::default();
        e.writes.push(Write {
            dot: self.dot,
            time: self.time,
            value: Blob::new(self.value),
        });
        e
    }
}

/// A field as either form holds it.
#[derive(Debug, Clone, Copy)]
pub enum FieldRef<'a> {
    Elem(&'a Elem<Blob>),
    Packed(PackedField<'a>),
}

impl<'a> FieldRef<'a> {
    /// Its counter tallies (a packed field has none).
    pub fn counts(self) -> Option<&'a NodeMap<Tally>> {
        match self {
            FieldRef::Elem(e) => e.counts.as_deref(),
            FieldRef::Packed(_) => None,
        }
    }

    /// Its element, built for a packed field.
    pub fn to_elem(self) -> Cow<'a, Elem<Blob>> {
        match self {
            FieldRef::Elem(e) => Cow::Borrowed(e),
            FieldRef::Packed(p) => Cow::Owned(p.to_elem()),
        }
    }
}

impl Fields {
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Map(m) => m.len(),
            Repr::Packed(p) => p.count(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_packed(&self) -> bool {
        matches!(self.0, Repr::Packed(_))
    }

    pub fn clear(&mut self) {
        self.0 = Repr::Map(EMap::new());
    }

    /// Empties the fields, keeping a small map's room (see
    /// [`EMap::clear_few`]).
    pub fn clear_few(&mut self) {
        match &mut self.0 {
            Repr::Map(m) => m.clear_few(),
            Repr::Packed(_) => self.clear(),
        }
    }

    /// The fields as a map: borrowed, or unpacked into a new one.
    pub fn map(&self) -> Cow<'_, EMap<Elem<Blob>>> {
        match &self.0 {
            Repr::Map(m) => Cow::Borrowed(m),
            Repr::Packed(p) => Cow::Owned(p.unpack()),
        }
    }

    /// The fields as a map to change, unpacked first if packed.
    pub fn map_mut(&mut self) -> &mut EMap<Elem<Blob>> {
        if let Repr::Packed(p) = &self.0 {
            self.0 = Repr::Map(p.unpack());
        }
        match &mut self.0 {
            Repr::Map(m) => m,
            Repr::Packed(_) => unreachable!("unpacked just above"),
        }
    }

    /// Packs a map that qualifies (see the module doc); else nothing.
    pub fn pack(&mut self) {
        if let Repr::Map(m) = &self.0 {
            if let Some(p) = Packed::from_map(m) {
                self.0 = Repr::Packed(p);
            }
        }
    }

    /// Where packed fields lie in memory (address and length), for a scan
    /// reading many keys whole to prefetch.
    pub fn packed_bytes(&self) -> Option<(usize, usize)> {
        match &self.0 {
            Repr::Packed(p) => Some((p.buf.as_ptr() as usize, p.buf.len())),
            Repr::Map(_) => None,
        }
    }

    /// The map, unless packed.
    pub fn unpacked(&self) -> Option<&EMap<Elem<Blob>>> {
        match &self.0 {
            Repr::Map(m) => Some(m),
            Repr::Packed(_) => None,
        }
    }

    pub fn get(&self, field: &[u8]) -> Option<FieldRef<'_>> {
        match &self.0 {
            Repr::Map(m) => m.get(Probe::new(field).as_keyed()).map(FieldRef::Elem),
            Repr::Packed(p) => p.find(field).map(|(_, f)| FieldRef::Packed(f)),
        }
    }

    /// Every field, in the map's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], FieldRef<'_>)> {
        let (map, packed) = match &self.0 {
            Repr::Map(m) => (Some(m.iter()), None),
            Repr::Packed(p) => (None, Some(p.iter())),
        };
        let map = map
            .into_iter()
            .flatten()
            .map(|(k, e)| (k.bytes(), FieldRef::Elem(e)));
        let packed = packed
            .into_iter()
            .flatten()
            .map(|f| (f.field, FieldRef::Packed(f)));
        map.chain(packed)
    }

    /// The fields whose hash is at least `from`, with their hashes.
    pub fn keys_from(&self, from: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let (map, packed) = match &self.0 {
            Repr::Map(m) => (Some(m.iter_from(from)), None),
            Repr::Packed(p) => (None, Some(p.iter())),
        };
        let map = map
            .into_iter()
            .flatten()
            .map(|(k, _)| (k.hash(), k.bytes()));
        let packed = packed
            .into_iter()
            .flatten()
            .map(|f| (stable_hash(f.field), f.field))
            .skip_while(move |(h, _)| *h < from);
        map.chain(packed)
    }

    /// Every write and counter segment's stamp.
    pub fn stamps(&self) -> impl Iterator<Item = Stamp> + '_ {
        self.iter().flat_map(|(_, f)| {
            let (elem, packed) = match f {
                FieldRef::Elem(e) => (Some(e), None),
                FieldRef::Packed(p) => (None, Some(p.stamp())),
            };
            let elem = elem.into_iter().flat_map(|e| {
                e.writes
                    .iter()
                    .map(Write::stamp)
                    .chain(e.counts.iter().flat_map(|c| c.values()).map(|t| t.epoch))
            });
            elem.chain(packed)
        })
    }

    /// Sets a plain field of a packed hash in place: whether the field is
    /// new, and the dot of the write it replaced; `None` when the hash is
    /// not packed or would no longer qualify, or, with `own_only` (a local
    /// write, which must record the kill of another node's: see
    /// `Coll::hset_into`), when another node wrote the field. Nothing is
    /// changed then.
    pub fn set_packed(
        &mut self,
        (field, value): (&[u8], &[u8]),
        dot: Dot,
        time: u64,
        own_only: bool,
    ) -> Option<(bool, Option<Dot>)> {
        match &mut self.0 {
            Repr::Packed(p) => p.set(field, value, dot, time, own_only),
            Repr::Map(_) => None,
        }
    }

    /// Joins a delta's fields (`theirs`, made under `their_ctx`) into a
    /// packed hash of a whole state in place, as the general join does
    /// (`coll::join_elems` with a delta: only the fields it names change;
    /// only right for a delta into a whole state; `killed` says whether a
    /// field's removal record kills a write): true when done. A
    /// replicated HSET or HDEL so spares unpacking the hash and packing it
    /// again. False when a field needs what the packed form cannot hold
    /// (two writes surviving side by side, a counter, a long value): the
    /// caller then runs the general join, which redoes the fields done
    /// here to the same result (a join is idempotent) and reports their
    /// conflicts, none of them new.
    pub(crate) fn join_packed(
        &mut self,
        theirs: &Fields,
        (my_ctx, their_ctx): (&CausalContext, &CausalContext),
        killed: impl Fn(&[u8], Dot) -> bool,
    ) -> bool {
        for (field, t) in theirs.iter() {
            let their = match t {
                FieldRef::Elem(e) if e.counts.is_some() || e.writes.len() > 1 => return false,
                FieldRef::Elem(e) => e.writes.first().map(|w| (w.dot, w.time, &w.value.0[..])),
                FieldRef::Packed(p) => Some((p.dot, p.time, p.value)),
            };
            let Repr::Packed(p) = &mut self.0 else {
                // Emptied by an earlier field: a map from here on.
                return false;
            };
            let found = p.find(field);
            let same = |m: &PackedField<'_>| their.is_some_and(|w| w == (m.dot, m.time, m.value));
            let keep_mine = found.as_ref().is_some_and(|(_, m)| {
                (same(m) || !their_ctx.contains(m.dot)) && !killed(field, m.dot)
            });
            let already = found.as_ref().is_some_and(|(_, m)| same(m));
            let add = their.filter(|w| !already && !my_ctx.contains(w.0) && !killed(field, w.0));
            match (keep_mine, add, found.map(|(at, _)| at)) {
                // Both survive: a conflict, which the general join reports.
                (true, Some(_), _) => return false,
                (true, None, _) | (false, None, None) => {}
                (false, None, Some(at)) => {
                    p.remove_at(at);
                    if p.count() == 0 {
                        self.0 = Repr::Map(EMap::new());
                    }
                }
                (false, Some((dot, time, value)), _) => {
                    if p.set(field, value, dot, time, false).is_none() {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Whether a packed hash keeps every field stamped at or after `floor`
    /// (a prune would change nothing); false for a map.
    pub fn packed_all_from(&self, floor: Stamp) -> bool {
        match &self.0 {
            Repr::Packed(p) => p.iter().all(|f| f.stamp() >= floor),
            Repr::Map(_) => false,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Map(m) => {
                let mut n = m.heap_bytes();
                for (k, e) in m {
                    n += k.heap_len();
                    n += e.writes.iter().map(|w| w.value.heap_len()).sum::<usize>();
                    if e.writes.spilled() {
                        n += e.writes.capacity() * std::mem::size_of::<Write<Blob>>();
                    }
                }
                n
            }
            Repr::Packed(p) => p.buf.len(),
        }
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Fields) -> bool {
        match (&self.0, &other.0) {
            // Not the bytes: node tables list writers in the order met.
            (Repr::Packed(a), Repr::Packed(b)) => a.count() == b.count() && a.iter().eq(b.iter()),
            _ => *self.map() == *other.map(),
        }
    }
}
impl Eq for Fields {}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.map().fmt(f)
    }
}

/// A packed field encodes as the map's element of one write would.
#[derive(Serialize)]
struct WriteView<'a> {
    dot: Dot,
    time: u64,
    value: &'a serde_bytes::Bytes,
}

#[derive(Serialize)]
struct ElemView<'a> {
    writes: &'a [WriteView<'a>],
    counts: Option<&'a NodeMap<Tally>>,
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.0 {
            Repr::Map(m) => m.serialize(s),
            Repr::Packed(p) => {
                let mut map = s.serialize_map(Some(p.count()))?;
                for f in p.iter() {
                    let write = WriteView {
                        dot: f.dot,
                        time: f.time,
                        value: serde_bytes::Bytes::new(f.value),
                    };
                    let elem = ElemView {
                        writes: std::slice::from_ref(&write),
                        counts: None,
                    };
                    map.serialize_entry(serde_bytes::Bytes::new(f.field), &elem)?;
                }
                map.end()
            }
        }
    }
}

/// Decoded as a map; a whole state packs on its next merge or load.
impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        EMap::deserialize(d).map(|m| Fields(Repr::Map(m)))
    }
}

/// The count of fields (beside the buffer: HLEN, TYPE and every command's
/// type check read it, and a read of the buffer is a cache miss of its
/// own), and the buffer: a one-byte count of nodes, each node's id (u64),
/// a base time (u64, at or below every field's time), then per field in
/// the map's order: its length, its value's length, its writer's index in
/// the node table, its time less the base (a varint: one byte for the
/// fields of one command, five for a second apart), its dot's number less
/// its time (a varint: the dot of a write is its time, or a little past it
/// when one command writes many), the field's bytes and the value's.
/// Little-endian throughout.
#[derive(Clone)]
struct Packed {
    count: u16,
    buf: Box<[u8]>,
}

const HEAD: usize = 1;

/// A field's fixed-size part: lengths, node index.
const FIXED: usize = 3;

/// Where the varint at `at` ends.
fn skip_varint(buf: &[u8], mut at: usize) -> usize {
    while buf[at] & 0x80 != 0 {
        at += 1;
    }
    at + 1
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Writes `n`'s varint at the start of `out`, which has room; its length.
fn put_varint_at(out: &mut [u8], mut n: u64) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    i + 1
}

/// A varint of a buffer this module wrote: never more than ten bytes.
fn get_varint(buf: &[u8]) -> (u64, usize) {
    let mut n = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (n, i + 1);
        }
    }
    (n, buf.len())
}

/// A plain element's one write, if it packs.
fn packable<'a>(field: &[u8], e: &'a Elem<Blob>) -> Option<&'a Write<Blob>> {
    if e.counts.is_some() || e.writes.len() != 1 || field.len() > PACK_MAX_BYTES {
        return None;
    }
    let w = &e.writes[0];
    (w.value.0.len() <= PACK_MAX_BYTES && w.dot.n >= w.time).then_some(w)
}

impl Packed {
    fn count(&self) -> usize {
        usize::from(self.count)
    }

    fn nodes(&self) -> usize {
        usize::from(self.buf[0])
    }

    fn node(&self, ix: usize) -> NodeId {
        let at = HEAD + 8 * ix;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[at..at + 8]);
        NodeId(u64::from_le_bytes(b))
    }

    /// Where the base time is.
    fn base_at(&self) -> usize {
        HEAD + 8 * self.nodes()
    }

    fn base(&self) -> u64 {
        let at = self.base_at();
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[at..at + 8]);
        u64::from_le_bytes(b)
    }

    fn first(&self) -> usize {
        self.base_at() + 8
    }

    fn iter(&self) -> PackedIter<'_> {
        PackedIter {
            packed: self,
            at: self.first(),
            left: self.count(),
        }
    }

    /// The field at byte `at`, and where the next one starts.
    fn field_at(&self, at: usize) -> (PackedField<'_>, usize) {
        let b = &self.buf;
        let (flen, vlen, ix) = (usize::from(b[at]), usize::from(b[at + 1]), b[at + 2]);
        let (since, used) = get_varint(&b[at + FIXED..]);
        let time = self.base().wrapping_add(since);
        let (extra, more) = get_varint(&b[at + FIXED + used..]);
        let start = at + FIXED + used + more;
        let field = &b[start..start + flen];
        let value = &b[start + flen..start + flen + vlen];
        let f = PackedField {
            field,
            value,
            dot: Dot {
                node: self.node(usize::from(ix)),
                n: time.wrapping_add(extra),
            },
            time,
        };
        (f, start + flen + vlen)
    }

    /// The byte offset of the field named `field`.
    fn offset_of(&self, field: &[u8]) -> Option<usize> {
        let b = &self.buf;
        let mut at = self.first();
        for _ in 0..self.count() {
            let (flen, vlen) = (usize::from(b[at]), usize::from(b[at + 1]));
            let start = skip_varint(b, skip_varint(b, at + FIXED));
            // The last byte first: fields often share a prefix (`field1`).
            if flen == field.len()
                && (flen == 0 || b[start + flen - 1] == field[flen - 1])
                && &b[start..start + flen] == field
            {
                return Some(at);
            }
            at = start + flen + vlen;
        }
        None
    }

    /// The field named `field` and its byte offset.
    fn find(&self, field: &[u8]) -> Option<(usize, PackedField<'_>)> {
        let at = self.offset_of(field)?;
        Some((at, self.field_at(at).0))
    }

    fn unpack(&self) -> EMap<Elem<Blob>> {
        self.iter()
            .map(|f| (EKey::new(f.field), f.to_elem()))
            .collect()
    }

    /// The packed form of a map, if every field qualifies.
    fn from_map(m: &EMap<Elem<Blob>>) -> Option<Packed> {
        if m.is_empty() || m.len() > PACK_MAX_FIELDS {
            return None;
        }
        let mut nodes: Vec<NodeId> = Vec::new();
        let mut body = 0;
        let mut base = u64::MAX;
        for (k, e) in m {
            let w = packable(k.bytes(), e)?;
            if !nodes.contains(&w.dot.node) {
                nodes.push(w.dot.node);
            }
            base = base.min(w.time);
            body += FIXED + 20 + k.bytes().len() + w.value.0.len();
        }
        if nodes.len() > PACK_MAX_NODES {
            return None;
        }
        let mut out = Vec::with_capacity(HEAD + 8 * nodes.len() + 8 + body);
        out.push(nodes.len() as u8);
        for n in &nodes {
            out.extend_from_slice(&n.0.to_le_bytes());
        }
        out.extend_from_slice(&base.to_le_bytes());
        for (k, e) in m {
            let w = &e.writes[0];
            let ix = nodes.iter().position(|n| *n == w.dot.node).unwrap_or(0);
            put_field(
                &mut out,
                k.bytes(),
                &w.value.0,
                ix as u8,
                w.time - base,
                w.dot.n - w.time,
            );
        }
        Some(Packed {
            count: m.len() as u16,
            buf: out.into_boxed_slice(),
        })
    }

    /// A place in the node table that no field names.
    fn unnamed_node(&self) -> Option<usize> {
        let nodes = self.nodes();
        if nodes == 0 {
            return None;
        }
        let b = &self.buf;
        let mut named = [0u64; 4];
        let mut at = self.first();
        for _ in 0..self.count() {
            let (flen, vlen, ix) = (usize::from(b[at]), usize::from(b[at + 1]), b[at + 2]);
            named[usize::from(ix / 64)] |= 1 << (ix % 64);
            at = skip_varint(b, skip_varint(b, at + FIXED)) + flen + vlen;
        }
        (0..nodes).find(|&i| named[i / 64] & (1 << (i % 64)) == 0)
    }

    /// Drops the field at byte `at`.
    fn remove_at(&mut self, at: usize) {
        let (_, end) = self.field_at(at);
        let mut buf = std::mem::take(&mut self.buf).into_vec();
        buf.drain(at..end);
        self.buf = buf.into_boxed_slice();
        self.count -= 1;
    }

    /// See [`Fields::set_packed`].
    fn set(
        &mut self,
        field: &[u8],
        value: &[u8],
        dot: Dot,
        time: u64,
        own_only: bool,
    ) -> Option<(bool, Option<Dot>)> {
        if field.len() > PACK_MAX_BYTES || value.len() > PACK_MAX_BYTES || dot.n < time {
            return None;
        }
        // Where the new field goes: in place of the old, or before the
        // first field ordered after it.
        let found = self.offset_of(field);
        let (old_dot, old_end) = match found {
            Some(at) => {
                let (f, end) = self.field_at(at);
                (Some(f.dot), Some(end))
            }
            None => (None, None),
        };
        if own_only && old_dot.is_some_and(|d| d.node != dot.node) {
            return None;
        }
        if found.is_none() && self.count() >= PACK_MAX_FIELDS {
            return None;
        }
        let base = self.base();
        if time < base {
            // Older than every field here (a clock behind a peer's):
            // packed anew around a lower base. Rare.
            let mut m = self.unpack();
            let fresh = m
                .insert(
                    EKey::new(field),
                    PackedField {
                        field,
                        value,
                        dot,
                        time,
                    }
                    .to_elem(),
                )
                .is_none();
            *self = Packed::from_map(&m)?;
            return Some((fresh, old_dot));
        }
        let nodes = self.nodes();
        let mut ix = (0..nodes).find(|i| self.node(*i) == dot.node);
        if ix.is_none() {
            // A writer no field names any more gives its place to the new
            // one: the table holds at most one more than the writers of the
            // fields held, however many wrote before (a node takes a new id
            // each life). Past every refusal: `None` changes nothing.
            match self.unnamed_node() {
                Some(free) => {
                    let at = HEAD + 8 * free;
                    self.buf[at..at + 8].copy_from_slice(&dot.node.0.to_le_bytes());
                    ix = Some(free);
                }
                None if nodes >= PACK_MAX_NODES => return None,
                None => {}
            }
        }
        let size =
            FIXED + varint_len(time - base) + varint_len(dot.n - time) + field.len() + value.len();
        if let (Some(at), Some(end), Some(ix)) = (found, old_end, ix) {
            // The same size (a value of the same length, times as far
            // apart): rewritten where it stands, with no buffer between.
            if size == end - at {
                let slot = &mut self.buf[at..end];
                slot[..FIXED].copy_from_slice(&[field.len() as u8, value.len() as u8, ix as u8]);
                let mut i = FIXED;
                i += put_varint_at(&mut slot[i..], time - base);
                i += put_varint_at(&mut slot[i..], dot.n - time);
                slot[i..i + field.len()].copy_from_slice(field);
                slot[i + field.len()..].copy_from_slice(value);
                return Some((false, old_dot));
            }
        }
        let (at, end, fresh) = match (found, old_end) {
            (Some(at), Some(end)) => (at, end, false),
            _ => {
                let hash = stable_hash(field);
                let mut at = self.first();
                for _ in 0..self.count() {
                    let (f, next) = self.field_at(at);
                    if (stable_hash(f.field), f.field) > (hash, field) {
                        break;
                    }
                    at = next;
                }
                (at, at, true)
            }
        };
        let grow_head = if ix.is_none() { 8 } else { 0 };
        let mut out = Vec::with_capacity(self.buf.len() + grow_head + size - (end - at));
        out.push((nodes + usize::from(ix.is_none())) as u8);
        out.extend_from_slice(&self.buf[HEAD..self.base_at()]);
        if ix.is_none() {
            out.extend_from_slice(&dot.node.0.to_le_bytes());
        }
        out.extend_from_slice(&self.buf[self.base_at()..at]);
        let ix = ix.unwrap_or(nodes) as u8;
        put_field(&mut out, field, value, ix, time - base, dot.n - time);
        out.extend_from_slice(&self.buf[end..]);
        self.buf = out.into_boxed_slice();
        self.count += u16::from(fresh);
        Some((fresh, old_dot))
    }
}

/// How many bytes `n` takes as a varint.
fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// A field's bytes: `since` is its time less the buffer's base.
fn put_field(out: &mut Vec<u8>, field: &[u8], value: &[u8], ix: u8, since: u64, extra: u64) {
    out.push(field.len() as u8);
    out.push(value.len() as u8);
    out.push(ix);
    put_varint(out, since);
    put_varint(out, extra);
    out.extend_from_slice(field);
    out.extend_from_slice(value);
}

struct PackedIter<'a> {
    packed: &'a Packed,
    at: usize,
    left: usize,
}

impl<'a> Iterator for PackedIter<'a> {
    type Item = PackedField<'a>;

    fn next(&mut self) -> Option<PackedField<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (f, next) = self.packed.field_at(self.at);
        self.at = next;
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn elem(node: u64, n: u64, time: u64, value: &[u8]) -> Elem<Blob> {
        PackedField {
            field: b"",
            value,
            dot: Dot {
                node: NodeId(node),
                n,
            },
            time,
        }
        .to_elem()
    }

    fn map_of(fields: &[(Vec<u8>, u64, u64, Vec<u8>)]) -> EMap<Elem<Blob>> {
        fields
            .iter()
            .map(|(f, node, time, v)| (EKey::new(f), elem(*node, *time + 1, *time, v)))
            .collect()
    }

    fn field_of(values: usize) -> impl Strategy<Value = (Vec<u8>, u64, u64, Vec<u8>)> {
        // Few field names and one common value length, so that writes
        // often hit a field held and rewrite it in place.
        (
            prop_oneof![
                prop::collection::vec(0u8..3, 0..4),
                prop::collection::vec(any::<u8>(), 0..12),
            ],
            1..4u64,
            any::<u64>().prop_map(|t| t >> 2),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 4..=4),
                prop::collection::vec(any::<u8>(), 0..values),
            ],
        )
    }

    fn small_field() -> impl Strategy<Value = (Vec<u8>, u64, u64, Vec<u8>)> {
        field_of(PACK_MAX_BYTES)
    }

    #[test]
    fn a_small_plain_hash_packs_and_reads_back() {
        let m = map_of(&[
            (b"name".to_vec(), 1, 100, b"ann".to_vec()),
            (b"city".to_vec(), 2, 90, b"oslo".to_vec()),
        ]);
        let mut f = Fields::from(m.clone());
        f.pack();
        assert!(f.is_packed());
        assert_eq!(f.len(), 2);
        assert_eq!(*f.map(), m);
        match f.get(b"city") {
            Some(FieldRef::Packed(p)) => {
                assert_eq!(p.value, b"oslo");
                assert_eq!(
                    p.dot,
                    Dot {
                        node: NodeId(2),
                        n: 91
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(f.get(b"zip").is_none());
    }

    #[test]
    fn what_does_not_qualify_stays_a_map() {
        let long = map_of(&[(b"f".to_vec(), 1, 1, vec![7; PACK_MAX_BYTES + 1])]);
        let many: EMap<Elem<Blob>> = (0..=PACK_MAX_FIELDS)
            .map(|i| (EKey::new(format!("f{i}").as_bytes()), elem(1, 2, 1, b"v")))
            .collect();
        let mut two_writes = map_of(&[(b"f".to_vec(), 1, 1, b"a".to_vec())]);
        let second = elem(2, 5, 5, b"b").writes[0].clone();
        two_writes
            .get_mut(Probe::new(b"f").as_keyed())
            .unwrap()
            .writes
            .push(second);
        let mut counted = map_of(&[(b"f".to_vec(), 1, 1, b"a".to_vec())]);
        counted.get_mut(Probe::new(b"f").as_keyed()).unwrap().counts = Some(Box::default());
        for m in [long, many, two_writes, counted, EMap::new()] {
            let mut f = Fields::from(m);
            f.pack();
            assert!(!f.is_packed());
        }
    }

    /// A field written by one node after another (a node takes a new id
    /// each life) stays packed, its node table no longer than the writers
    /// its fields name, and one.
    #[test]
    fn writers_no_field_names_give_their_place_in_the_node_table() {
        let m = map_of(&[
            (b"kept".to_vec(), 1, 10, b"a".to_vec()),
            (b"f".to_vec(), 2, 10, b"b".to_vec()),
        ]);
        let mut f = Fields::from(m);
        f.pack();
        let start = f.heap_bytes();
        let mut replaced = Dot {
            node: NodeId(2),
            n: 11,
        };
        for writer in 3..400u64 {
            let dot = Dot {
                node: NodeId(writer),
                n: 20 + writer,
            };
            assert_eq!(
                f.set_packed((b"f", b"c"), dot, 20 + writer, false),
                Some((false, Some(replaced)))
            );
            replaced = dot;
            assert!(f.is_packed(), "writer {writer}");
            let Repr::Packed(p) = &f.0 else {
                unreachable!()
            };
            assert!(p.nodes() <= 3, "writer {writer}: {} nodes", p.nodes());
        }
        assert!(
            f.heap_bytes() <= start + 8 + 4,
            "{} against {start}",
            f.heap_bytes()
        );
        match f.get(b"kept") {
            Some(FieldRef::Packed(p)) => assert_eq!(p.dot.node, NodeId(1)),
            other => panic!("{other:?}"),
        }
        match f.get(b"f") {
            Some(FieldRef::Packed(p)) => {
                assert_eq!((p.dot.node, p.value), (NodeId(399), &b"c"[..]))
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// The packed form holds what the map held, in its order, and
        /// encodes to the map's bytes (digests compare encodings).
        #[test]
        fn packing_keeps_content_order_and_encoding(
            fields in prop::collection::vec(small_field(), 1..40),
        ) {
            let m = map_of(&fields);
            let mut f = Fields::from(m.clone());
            f.pack();
            let plain = crate::codec::encode(&m).unwrap();
            prop_assert_eq!(crate::codec::encode(&f).unwrap(), plain);
            prop_assert_eq!(&*f.map(), &m);
            let order: Vec<&[u8]> = f.iter().map(|(k, _)| k).collect();
            let expected: Vec<&[u8]> = m.keys().map(EKey::bytes).collect();
            prop_assert_eq!(order, expected);
            let from = m.keys().nth(m.len() / 2).map_or(0, EKey::hash);
            let scanned: Vec<&[u8]> = f.keys_from(from).map(|(_, k)| k).collect();
            let expected: Vec<&[u8]> = m.iter_from(from).map(|(k, _)| k.bytes()).collect();
            prop_assert_eq!(scanned, expected);
        }

        /// HSET in place on a packed hash leaves what the same write on
        /// the map leaves.
        #[test]
        fn setting_in_place_matches_the_map(
            fields in prop::collection::vec(small_field(), 1..30),
            writes in prop::collection::vec(field_of(PACK_MAX_BYTES + 6), 1..20),
        ) {
            let mut m = map_of(&fields);
            let mut f = Fields::from(m.clone());
            f.pack();
            for (field, node, time, value) in writes {
                let dot = Dot { node: NodeId(node), n: time + 3 };
                let fresh = m.get(Probe::new(&field).as_keyed()).is_none();
                let e = elem(node, time + 3, time, &value);
                match f.set_packed((&field, &value), dot, time, false) {
                    Some((was_new, _)) => {
                        prop_assert_eq!(was_new, fresh);
                        m.insert(EKey::new(&field), e);
                    }
                    None => {
                        prop_assert!(value.len() > PACK_MAX_BYTES || !f.is_packed());
                        m.insert(EKey::new(&field), e);
                        f.map_mut().insert(EKey::new(&field), elem(node, time + 3, time, &value));
                    }
                }
                prop_assert_eq!(&*f.map(), &m);
                prop_assert_eq!(f.len(), m.len());
            }
            prop_assert_eq!(crate::codec::encode(&f).unwrap(), crate::codec::encode(&m).unwrap());
        }
    }
}
