//! The stored and wire encoding: a format version byte, then postcard.
//!
//! Every encoded value starts with [`FORMAT_VERSION`], so data written by
//! this version can be recognised, and migrated, by later ones.

use serde::{de::DeserializeOwned, Serialize};
use smallvec::SmallVec;

use std::collections::BTreeMap;

use crate::coll::{
    Adds, Blob, Coll, Elem, ElemWrite, Kind, ManyWrite, OneWrite, Removed, Score, Written,
};
use crate::conflict::Conflict;
use crate::context::{CausalContext, Dot};
use crate::delta::Delta;
use crate::ekey::EKey;
use crate::emap::EMap;
use crate::fields::{FieldRef, Fields as HashFields};
use crate::lazy::Lazy;
use crate::seq::Seq;
use crate::state::{ExpiryField, Extras, KeyState, Register, Tally};
use crate::{NodeId, NodeMap, Stamp};

/// The current encoding version.
/// 2: a register write names what it had seen of other nodes' writes
/// (`Register::seen`) instead of its parent's time.
/// 3: a key's extras carry its expiry floor (`Extras::floor`).
/// 4: a key's extras carry its collections (`Extras::coll`); a conflict
/// names the element it was about (`Conflict::element`).
/// 5: collections hold lists (`Coll::list`).
/// 6: a write sent or logged under its origin's name leaves the origin of
/// its register's stamp implied (node 0; [`append_plain_key_delta`],
/// [`Delta::restore_origin`]), and a logged tally the node of its epoch
/// ([`append_own_node_tally`], [`Tally::restore_origin`]). Other values
/// are laid out as in 5. Since peer protocol 14, a write's delta may also
/// take the compact form of a one-element write ([`append_one_write`]),
/// and since 15 that of a collection write ([`append_coll_write`]), which
/// an earlier build of version 6 does not read.
/// 7: an element's removal record names the writes its ops killed
/// (`Removed::dead`).
pub const FORMAT_VERSION: u8 = 7;

/// The oldest version a store written by an earlier build may hold; see
/// [`decode_stored`] and [`decode_stored_state`].
pub const OLDEST_STORED_VERSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("malformed encoding: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} trailing bytes after the encoded value")]
    Trailing(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(#[from] postcard::Error);

/// Encodes `value` with the version byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    encode_sized(value, 64)
}

/// [`encode`] into a buffer that starts with room for `capacity` bytes, so
/// a caller that knows the size spares the buffer's regrowth.
pub fn encode_sized<T: Serialize + ?Sized>(
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(capacity.max(1));
    out.push(FORMAT_VERSION);
    Ok(postcard::to_extend(value, out)?)
}

/// Appends [`encode`]'s bytes for `value` to `out` and returns it, so a
/// caller can reuse one buffer for many values.
pub fn encode_append<T: Serialize + ?Sized>(
    value: &T,
    mut out: Vec<u8>,
) -> Result<Vec<u8>, EncodeError> {
    out.push(FORMAT_VERSION);
    Ok(postcard::to_extend(value, out)?)
}

/// Appends postcard's bytes for `state` (no version byte), laid out here
/// directly: every replicated write and stored key is one, and serde's
/// generic path cost a sixth of the writer's extra CPU for strings and a
/// seventh of all of it for a collection's one-element delta. Only a
/// register that saw other nodes' writes (rare: a concurrent write) goes
/// through serde. Held to postcard's bytes by property tests here and in
/// the law tests (every state and delta they make).
pub fn append_state(out: &mut Vec<u8>, state: &KeyState) -> Result<(), EncodeError> {
    if state.reg.seen.is_some() {
        postcard::to_extend(state, Appender(out))?;
        return Ok(());
    }
    let mut w = Writer::new(out);
    write_plain_register(&mut w, &state.reg, None);
    match (state.extras.as_deref(), state.coll.as_deref()) {
        (None, None) => w.byte(0),
        (extras, coll) => {
            w.byte(1);
            write_extras(&mut w, extras);
            match coll {
                None => w.byte(0),
                Some(c) => {
                    w.byte(1);
                    write_coll(&mut w, c);
                }
            }
        }
    }
    Ok(())
}

/// Appends postcard's bytes for `Delta::Key { db, key, state }` when
/// `state` is a plain register (no `seen`, extras or collection: every
/// SET, SETEX or DEL that replaced only its own node's writes) and returns
/// true; false, with nothing appended, for any other state: a logged or
/// transferred string write's form (a replicated one is put straight
/// into its frame, [`put_plain_key_delta`]).
///
/// With `origin`, the bytes are a write of `origin`'s, sent or logged
/// under its name: a register stamp of `origin`'s names node 0 instead
/// (a node id is a ten-byte varint, a sixth of a small SET's frame), and
/// [`Delta::restore_origin`] puts it back. Without, the bytes are
/// exactly postcard's.
pub fn append_plain_key_delta(
    out: &mut Vec<u8>,
    origin: Option<NodeId>,
    db: u32,
    key: &[u8],
    state: &KeyState,
) -> bool {
    let Some(most) = plain_key_delta_most(key, state) else {
        return false;
    };
    append_put(out, most, |room| {
        put_plain_key_delta(room, origin, db, key, state)
    });
    true
}

/// Appends what `put` lays out in `most` bytes of room made once at the
/// end of `out` (it returns how many it took): for a few fields whose
/// most is known, one capacity check where pushes took one each.
#[inline(always)]
pub fn append_put(out: &mut Vec<u8>, most: usize, put: impl FnOnce(&mut [u8]) -> usize) {
    let at = out.len();
    out.resize(at + most, 0);
    let len = put(&mut out[at..]);
    debug_assert!(len <= most, "fields laid out past their room");
    out.truncate(at + len);
}

/// The most bytes [`put_plain_key_delta`] takes for `key` and `state`;
/// `None` when `state` is not a plain register.
#[inline(always)]
pub fn plain_key_delta_most(key: &[u8], state: &KeyState) -> Option<usize> {
    if state.reg.seen.is_some() || state.extras.is_some() || state.coll.is_some() {
        return None;
    }
    // Variant, db, key, stamp, seen, value, expiry, no extras; each
    // varint's whole slot, which [`Slot::varint`] writes.
    Some(
        1 + MAX_VARINT
            + MAX_VARINT
            + key.len()
            + 2 * MAX_VARINT
            + 1
            + 1
            + MAX_VARINT
            + state.reg.value.as_deref().map_or(0, <[u8]>::len)
            + MAX_VARINT
            + 1,
    )
}

/// [`append_plain_key_delta`]'s bytes, written at the start of `out`,
/// which holds at least [`plain_key_delta_most`] bytes (a plain `state`);
/// returns how many. Into a slice rather than onto a `Vec`, so that a
/// caller laying out a frame around it (replication's stage) makes room
/// once for all of it.
#[inline]
pub fn put_plain_key_delta(
    out: &mut [u8],
    origin: Option<NodeId>,
    db: u32,
    key: &[u8],
    state: &KeyState,
) -> usize {
    let reg = &state.reg;
    let mut w = Slot { out, at: 0 };
    w.byte(0);
    w.varint(db as u64);
    w.varint(key.len() as u64);
    w.bytes(key);
    w.varint(reg.stamp.time);
    // (A stamp without a time names its node: the restore leaves those.)
    w.varint(if Some(reg.stamp.node) == origin && reg.stamp.time != 0 {
        0
    } else {
        reg.stamp.node.0
    });
    w.byte(0);
    match reg.value.as_deref() {
        None => w.byte(0),
        Some(v) => {
            w.byte(1);
            w.varint(v.len() as u64);
            w.bytes(v);
        }
    }
    w.varint(reg.expire_at_ms);
    w.byte(0);
    w.at
}

/// The first byte of an own put ([`put_own_put`]) is this, with
/// [`OWN_PUT_VALUE`], [`OWN_PUT_EXPIRY`] and [`OWN_PUT_DB`] as its low
/// bits. Messages start with their format version, which is under 0x80,
/// so an own put never reads as one.
pub const OWN_PUT_TAG: u8 = 0xf0;
/// The write holds a value (a SET; without it, a DEL).
const OWN_PUT_VALUE: u8 = 1;
/// An expiry follows the time (without it, none).
const OWN_PUT_EXPIRY: u8 = 2;
/// A database follows the number (without it, database 0).
const OWN_PUT_DB: u8 = 4;

/// The room [`put_own_put`] needs for `state`, or `None` when `state` is
/// not an own put: a plain register written by `origin` itself.
pub fn own_put_most(key: &[u8], state: &KeyState, origin: NodeId) -> Option<usize> {
    let reg = &state.reg;
    if reg.seen.is_some()
        || state.extras.is_some()
        || state.coll.is_some()
        || reg.stamp.node != origin
        || reg.stamp.time == 0
    {
        return None;
    }
    // Tag, the number's, db's and key length's slots, the key, the time,
    // the expiry's slot, the value's tag, length slot and bytes.
    Some(
        1 + 3 * MAX_VARINT
            + key.len()
            + 8
            + MAX_VARINT
            + 1
            + MAX_VARINT
            + reg.value.as_deref().map_or(0, <[u8]>::len),
    )
}

/// A node's own plain register write (a SET, a DEL) as a whole message for
/// a peer that knows the sender: the tag (its low bits saying which of db,
/// expiry and value follow), the number, the db unless 0, the key, the
/// time in eight fixed bytes, the expiry unless none, the value unless a
/// delete; the origin (and the stamp's node, the same) left to the link.
/// A `ReplMsg::Delta` names the origin in a ten-byte varint and takes the
/// time as a ten-byte one: the own put of a SET with a 16-byte key and a
/// 3-byte value takes 33 bytes where the message took 53, and each byte a
/// link carries costs its writer about 1.6 ns (docs/benchmarks.md, session
/// 49). `out` holds [`own_put_most`]'s room; returns how many bytes it
/// took.
#[inline]
pub fn put_own_put(out: &mut [u8], seq: u64, db: u32, key: &[u8], state: &KeyState) -> usize {
    let reg = &state.reg;
    let value = reg.value.as_deref();
    let mut w = Slot { out, at: 0 };
    w.byte(
        OWN_PUT_TAG
            | if value.is_some() { OWN_PUT_VALUE } else { 0 }
            | if reg.expire_at_ms != 0 {
                OWN_PUT_EXPIRY
            } else {
                0
            }
            | if db != 0 { OWN_PUT_DB } else { 0 },
    );
    w.varint(seq);
    if db != 0 {
        w.varint(db as u64);
    }
    w.varint(key.len() as u64);
    w.bytes(key);
    w.prefix(&reg.stamp.time.to_le_bytes(), 8);
    if reg.expire_at_ms != 0 {
        w.varint(reg.expire_at_ms);
    }
    if let Some(v) = value {
        w.varint(v.len() as u64);
        w.bytes(v);
    }
    w.at
}

/// Whether `payload` is an own put (see [`put_own_put`]).
pub fn is_own_put(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b & !7 == OWN_PUT_TAG)
}

/// `(seq, delta)` of an own put that `origin` sent.
pub fn decode_own_put(bytes: &[u8], origin: NodeId) -> Result<(u64, Delta), DecodeError> {
    let bad = |e: postcard::Error| DecodeError::Malformed(e);
    let mut r = Reader(bytes);
    let tag = r.byte()?;
    if tag & !7 != OWN_PUT_TAG {
        return Err(bad(postcard::Error::DeserializeBadEnum));
    }
    let seq = r.varint()?;
    let db = match tag & OWN_PUT_DB {
        0 => 0,
        _ => u32::try_from(r.varint()?).map_err(|_| bad(postcard::Error::DeserializeBadVarint))?,
    };
    let key = r.string()?.to_vec();
    let time = u64::from_le_bytes(r.fixed::<8>()?);
    let expire_at_ms = match tag & OWN_PUT_EXPIRY {
        0 => 0,
        _ => r.varint()?,
    };
    let value = match tag & OWN_PUT_VALUE {
        0 => None,
        _ => Some(Box::<[u8]>::from(r.string()?)),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    // The writer never sends the zero time: it would read as no write.
    if time == 0 {
        return Err(bad(postcard::Error::DeserializeBadVarint));
    }
    let state = KeyState {
        reg: Register {
            stamp: Stamp { time, node: origin },
            seen: None,
            value,
            expire_at_ms,
        },
        extras: None,
        coll: None,
    };
    Ok((seq, Delta::Key { db, key, state }))
}

/// Writes fields into a slice its caller made room in: a field costs a
/// bounds check, no capacity check, copy or cut. Writing past the slice
/// is a bug, and panics.
pub struct Slot<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl<'a> Slot<'a> {
    pub fn new(out: &'a mut [u8]) -> Slot<'a> {
        Slot { out, at: 0 }
    }

    /// How many bytes were written.
    pub fn len(&self) -> usize {
        self.at
    }

    pub fn is_empty(&self) -> bool {
        self.at == 0
    }

    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        self.out[self.at] = b;
        self.at += 1;
    }

    /// `n`'s varint; takes a whole [`MAX_VARINT`] slot's room.
    #[inline(always)]
    pub fn varint(&mut self, n: u64) {
        let Some(slot) = self.out[self.at..].first_chunk_mut::<MAX_VARINT>() else {
            panic!("a slot is too small for its fields");
        };
        self.at += put_varint(slot, n);
    }

    /// The first `len` bytes of `fixed`, copied as the whole array: an
    /// `N`-byte copy is a few moves where a run-time length is a call.
    /// Takes `N` bytes' room; the `N - len` after the prefix are
    /// overwritten, and are the next field's room.
    #[inline(always)]
    pub fn prefix<const N: usize>(&mut self, fixed: &[u8; N], len: usize) {
        debug_assert!(len <= N, "a prefix longer than its array");
        let Some(slot) = self.out[self.at..].first_chunk_mut::<N>() else {
            panic!("a slot is too small for its fields");
        };
        *slot = *fixed;
        self.at += len.min(N);
    }

    /// `bytes`; up to 32 of them in fixed-size moves (two overlapping
    /// copies, or three byte stores under four) rather than a call to
    /// memcpy (keys and small values).
    #[inline(always)]
    pub fn bytes(&mut self, bytes: &[u8]) {
        let out = &mut self.out[self.at..self.at + bytes.len()];
        copy_small(out, bytes);
        self.at += bytes.len();
    }
}

/// `dst.copy_from_slice(src)` (equal lengths), in fixed-size moves when
/// short (see [`Slot::bytes`]).
#[inline(always)]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    fn ends<const N: usize>(dst: &mut [u8], src: &[u8]) {
        if let (Some(d), Some(s)) = (dst.first_chunk_mut::<N>(), src.first_chunk::<N>()) {
            *d = *s;
        }
        if let (Some(d), Some(s)) = (dst.last_chunk_mut::<N>(), src.last_chunk::<N>()) {
            *d = *s;
        }
    }
    match src.len() {
        0 => {}
        1..=3 => {
            dst[0] = src[0];
            dst[src.len() / 2] = src[src.len() / 2];
            dst[src.len() - 1] = src[src.len() - 1];
        }
        4..=7 => ends::<4>(dst, src),
        8..=15 => ends::<8>(dst, src),
        16..=32 => ends::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// Writes fields into a buffer grown once by the most they can take, and
/// cuts it to what they took when dropped: for a few fields whose most is
/// known, no check per field ([`Writer`]'s cost a SET's delta 80
/// instructions). Writing past that most is a bug, and panics.
struct Exact<'a> {
    out: &'a mut Vec<u8>,
    at: usize,
}

impl<'a> Exact<'a> {
    fn new(out: &'a mut Vec<u8>, most: usize) -> Exact<'a> {
        let at = out.len();
        out.resize(at + most, 0);
        Exact { out, at }
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.out[self.at] = b;
        self.at += 1;
    }

    #[inline(always)]
    fn varint(&mut self, n: u64) {
        let Some(slot) = self.out[self.at..].first_chunk_mut::<MAX_VARINT>() else {
            panic!("a writer's buffer is too small for its fields");
        };
        self.at += put_varint(slot, n);
    }

    #[inline(always)]
    fn bytes(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    /// A varint [`put_varint`] laid out already, `len` bytes of `laid`.
    #[inline(always)]
    fn varint_bytes(&mut self, laid: &[u8; MAX_VARINT], len: usize) {
        let Some(slot) = self.out[self.at..].first_chunk_mut::<MAX_VARINT>() else {
            panic!("a writer's buffer is too small for its fields");
        };
        *slot = *laid;
        self.at += len;
    }
}

impl Drop for Exact<'_> {
    fn drop(&mut self) {
        self.out.truncate(self.at);
    }
}

/// Writes fields into the end of a buffer, which it grows in steps and
/// cuts to what was written when dropped: a field costs a comparison
/// where pushing it took a capacity check, a copy and a cut (a one-field
/// HSET's delta cost 1,500 instructions so, most of them in `Vec`).
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    at: usize,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        let at = out.len();
        Writer { out, at }
    }

    /// Makes room for `n` more bytes.
    #[inline(always)]
    fn room(&mut self, n: usize) {
        if self.out.len() - self.at < n {
            self.grow(n);
        }
    }

    #[cold]
    fn grow(&mut self, n: usize) {
        self.out.resize(self.at + n.max(128), 0);
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.room(1);
        self.out[self.at] = b;
        self.at += 1;
    }

    #[inline(always)]
    fn varint(&mut self, n: u64) {
        self.room(MAX_VARINT);
        if let Some(slot) = self.out[self.at..].first_chunk_mut::<MAX_VARINT>() {
            self.at += put_varint(slot, n);
        }
    }

    #[inline(always)]
    fn bytes(&mut self, bytes: &[u8]) {
        self.room(bytes.len());
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    #[inline(always)]
    fn fixed<const M: usize>(&mut self, bytes: &[u8; M]) {
        self.room(M);
        if let Some(slot) = self.out[self.at..].first_chunk_mut::<M>() {
            *slot = *bytes;
            self.at += M;
        }
    }

    /// A byte string: its length, then the bytes.
    #[inline(always)]
    fn string(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.bytes(bytes);
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        self.out.truncate(self.at);
    }
}

/// Postcard's bytes for a key state of the empty register, no extras and
/// the collection part `delta` (a collection write's delta), without
/// building it.
pub fn append_coll_delta(out: &mut Vec<u8>, delta: &Coll) {
    let mut w = Writer::new(out);
    // The empty register, `Some(extras)` of none, then `Some(coll)`.
    w.fixed(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    write_coll(&mut w, delta);
}

/// The bytes [`append_coll_delta`] lays out for the delta of one
/// element's write at `stamp` (`Coll::delta(stamp, kind)` covering `one`'s
/// dots and holding the write at `one.dot`), without filling that delta:
/// `written` to hash field, set member or sorted set member `elem`.
pub fn append_one_delta(
    out: &mut Vec<u8>,
    stamp: Stamp,
    one: &OneWrite,
    elem: &[u8],
    written: Written<'_>,
) {
    if let Written::Count { .. } = written {
        // An increment: no dots, one counter segment; only a peer reading
        // a compact write comes here, and fills the `Coll`.
        append_coll_delta(out, &one.delta(stamp, elem, written));
        return;
    }
    let replaced = one.replaced.len();
    // Fifteen and six fixed bytes, three single ones, the cloud's dots and
    // nine other varints.
    let value_len = match written {
        Written::Field(value) => value.len(),
        Written::Member | Written::Count { .. } => 0,
        Written::Score(_) => 8,
    };
    let most = 24 + elem.len() + value_len + (2 * (replaced + 1) + 9) * MAX_VARINT;
    let mut w = Exact::new(out, most);
    // The write's time is its stamp's, and nearly always its dot's number
    // (the first dot a node numbers at a time is the time): laid out
    // once, copied where it recurs. (Nine bytes each; five such varints
    // were most of this delta's cost.)
    // So is the writer's node id (ids are random: ten bytes), the node of
    // the write's dot, of its stamp and of most dots it replaces.
    let mut time = [0u8; MAX_VARINT];
    let time_len = put_varint(&mut time, stamp.time);
    let number = |w: &mut Exact, n: u64| {
        if n == stamp.time {
            w.varint_bytes(&time, time_len);
        } else {
            w.varint(n);
        }
    };
    let mut writer = [0u8; MAX_VARINT];
    let writer_len = put_varint(&mut writer, stamp.node.0);
    let node_id = |w: &mut Exact, node: NodeId| {
        if node == stamp.node {
            w.varint_bytes(&writer, writer_len);
        } else {
            w.varint(node.0);
        }
    };
    // The empty register, `Some(extras)` of none, `Some(coll)`, then the
    // delta context's floor (a delta's context has none).
    w.bytes(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    // The context's cloud as `CausalContext::insert` keeps it: sorted by
    // (number, node), each dot once.
    let new = (one.dot.n, one.dot.node);
    let cloud = |w: &mut Exact, dots: &[(u64, NodeId)]| {
        w.varint(dots.len() as u64);
        for &(n, node) in dots {
            number(w, n);
            node_id(w, node);
        }
    };
    match one.replaced.as_slice() {
        [] => cloud(&mut w, &[new]),
        [old] => {
            let old = (old.n, old.node);
            match old.cmp(&new) {
                std::cmp::Ordering::Less => cloud(&mut w, &[old, new]),
                std::cmp::Ordering::Equal => cloud(&mut w, &[new]),
                std::cmp::Ordering::Greater => cloud(&mut w, &[new, old]),
            }
        }
        many => {
            let mut dots: SmallVec<[(u64, NodeId); 4]> = many
                .iter()
                .map(|d| (d.n, d.node))
                .chain(std::iter::once(new))
                .collect();
            dots.sort_unstable();
            dots.dedup();
            cloud(&mut w, &dots);
        }
    }
    w.varint_bytes(&time, time_len);
    w.varint_bytes(&writer, writer_len);
    // Kind, then the parts before the one written, empty.
    match written {
        Written::Field(_) => w.bytes(&[Kind::Hash as u8, 1]),
        Written::Member => w.bytes(&[Kind::Set as u8, 0, 1]),
        Written::Score(_) => w.bytes(&[Kind::ZSet as u8, 0, 0, 1]),
        // (Laid out above.)
        Written::Count { .. } => {}
    }
    w.varint(elem.len() as u64);
    w.bytes(elem);
    // Its one write or add.
    w.byte(1);
    node_id(&mut w, one.dot.node);
    number(&mut w, one.dot.n);
    w.varint_bytes(&time, time_len);
    // The value and no counts, then the parts after it, empty; a part.
    match written {
        Written::Field(value) => {
            w.varint(value.len() as u64);
            w.bytes(value);
            w.bytes(&[0, 0, 0, 0, 0, 1]);
        }
        Written::Member => w.bytes(&[0, 0, 0, 1]),
        Written::Score(score) => {
            w.bytes(&score.to_le_bytes());
            w.bytes(&[0, 0, 0, 1]);
        }
        Written::Count { .. } => {}
    }
}

/// `Delta`'s tag, in a write's layout, for the compact form of a
/// one-element write ([`append_one_write`]). Serde's `Delta` has no such
/// variant: [`decode_write_fields`] reads it before serde would.
pub const ONE_WRITE_TAG: u8 = 2;

/// A one-element write (what [`append_one_delta`] lays out in full, as
/// `Delta::Key { db, key, state }`) in the compact form a write sent or
/// logged under `origin`'s name takes: the parts the full form derives
/// from (stamp, the new dot, the dots it replaced, element, value), with
/// `origin`'s node id as 0 and the dots' numbers as distances from the
/// stamp's time. The full form repeats the time four times and the
/// writer's id three (nine and ten bytes each): a one-field HSET's write
/// took 157 bytes (67 so), and sealing them was a fifth of what a peer
/// added to its cost.
/// `decode_write_fields` rebuilds the full form.
#[allow(clippy::too_many_arguments)]
pub fn append_one_write(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    stamp: Stamp,
    one: &OneWrite,
    elem: &[u8],
    written: Written<'_>,
) {
    let value_len = match written {
        Written::Field(value) => value.len(),
        Written::Member => 0,
        Written::Score(_) | Written::Count { .. } => 8,
    };
    let most = 2 + key.len() + elem.len() + value_len + (11 + 2 * one.replaced.len()) * MAX_VARINT;
    let mut w = Exact::new(out, most);
    // No node is numbered 0 (a stamp, dot or epoch of node 0 would read
    // back as the origin's).
    let node_id = |node: NodeId| {
        debug_assert!(node.0 != 0, "a write names node 0");
        if node == origin {
            0
        } else {
            node.0
        }
    };
    w.byte(ONE_WRITE_TAG);
    w.varint(db as u64);
    w.varint(key.len() as u64);
    w.bytes(key);
    if let Written::Count { kind, node, tally } = written {
        // An increment: its counter segment, no dots.
        w.byte(COUNTED | kind as u8);
        w.varint(stamp.time);
        w.varint(node_id(stamp.node));
        w.varint(node_id(node));
        w.varint(stamp.time.wrapping_sub(tally.epoch.time));
        w.varint(node_id(tally.epoch.node));
        w.varint(tally.ops);
        w.varint(((tally.int << 1) ^ (tally.int >> 63)) as u64);
        w.bytes(&tally.float.to_le_bytes());
        w.varint(tally.float_ops);
        w.varint(elem.len() as u64);
        w.bytes(elem);
        return;
    }
    w.byte(written.kind() as u8);
    w.varint(stamp.time);
    w.varint(node_id(stamp.node));
    w.varint(one.dot.n.wrapping_sub(stamp.time));
    w.varint(node_id(one.dot.node));
    w.varint(one.replaced.len() as u64);
    for dot in &one.replaced {
        w.varint(stamp.time.wrapping_sub(dot.n));
        w.varint(node_id(dot.node));
    }
    w.varint(elem.len() as u64);
    w.bytes(elem);
    match written {
        Written::Field(value) => {
            w.varint(value.len() as u64);
            w.bytes(value);
        }
        Written::Member | Written::Count { .. } => {}
        Written::Score(score) => w.bytes(&score.to_le_bytes()),
    }
}

/// The bit of a compact write's kind byte that makes it an increment.
const COUNTED: u8 = 0x80;

/// Reads a write's fields after `ReplMsg::Delta`'s variant (or a delta
/// log record's tag): origin, number, then the delta, in the compact form
/// of [`append_one_write`] or as serde lays out `Delta`. A register stamp
/// or dot the origin left implied names it again.
pub fn decode_write_fields(fields: &[u8]) -> Result<(NodeId, u64, Delta), DecodeError> {
    decode_write_fields_as(fields, |body| match decode_plain_key_delta(body) {
        Some(delta) => Ok(delta),
        None => take_all::<Delta>(body),
    })
}

/// A plain register's write laid out as [`put_plain_key_delta`] lays it
/// out (a SET, a DEL), read by hand: serde's general reading of it was
/// about 600 instructions of a receiver's write. `None` for anything
/// else, valid or not, which serde then reads (and judges): this takes
/// only what serde would read to the same delta.
fn decode_plain_key_delta(body: &[u8]) -> Option<Delta> {
    let mut r = Reader(body);
    if r.byte().ok()? != 0 {
        return None;
    }
    // Serde reads a u32 as at most five bytes.
    let before = r.0.len();
    let db = u32::try_from(r.varint().ok()?).ok()?;
    if before - r.0.len() > 5 {
        return None;
    }
    let key = r.string().ok()?;
    let time = r.varint().ok()?;
    let node = NodeId(r.varint().ok()?);
    // No `seen`.
    if r.byte().ok()? != 0 {
        return None;
    }
    let value = match r.byte().ok()? {
        0 => None,
        1 => Some(r.string().ok()?),
        _ => return None,
    };
    let expire_at_ms = r.varint().ok()?;
    // No extras, and nothing after.
    if r.byte().ok()? != 0 || !r.0.is_empty() {
        return None;
    }
    let value = value.map(Box::<[u8]>::from);
    Some(Delta::Key {
        db,
        key: key.to_vec(),
        state: KeyState {
            reg: Register {
                stamp: Stamp { time, node },
                seen: None,
                value,
                expire_at_ms,
            },
            extras: None,
            coll: None,
        },
    })
}

/// [`decode_write_fields`] with `full` reading the full form (an earlier
/// version's layout in a log it wrote; the compact forms have not changed).
fn decode_write_fields_as(
    fields: &[u8],
    full: impl FnOnce(&[u8]) -> Result<Delta, DecodeError>,
) -> Result<(NodeId, u64, Delta), DecodeError> {
    // Two varints, as serde lays out `(NodeId, u64)`.
    let mut r = Reader(fields);
    let origin = NodeId(r.varint()?);
    let seq = r.varint()?;
    let rest = r.0;
    let mut delta = match rest.split_first() {
        Some((&ONE_WRITE_TAG, one)) => decode_one_write(one, origin)?,
        Some((&COLL_WRITE_TAG, coll)) => decode_coll_write(coll, origin)?,
        _ => full(rest)?,
    };
    delta.restore_origin(origin);
    Ok((origin, seq, delta))
}

/// [`append_one_write`]'s fields (after its tag) as the full delta: laid
/// out by [`append_one_delta`] and read by serde, so that what a peer
/// merges is what the writer's delta `Coll` would have been.
fn decode_one_write(bytes: &[u8], origin: NodeId) -> Result<Delta, DecodeError> {
    let mut r = Reader(bytes);
    let node_id = |n: u64| if n == 0 { origin } else { NodeId(n) };
    let db = u32::try_from(r.varint()?).map_err(|_| postcard::Error::DeserializeBadVarint)?;
    let key = r.string()?.to_vec();
    let kind = r.byte()?;
    let time = r.varint()?;
    let stamp = Stamp {
        time,
        node: node_id(r.varint()?),
    };
    let mut one = OneWrite::default();
    if kind & COUNTED != 0 {
        let kind = match kind & !COUNTED {
            k if k == Kind::Hash as u8 => Kind::Hash,
            k if k == Kind::ZSet as u8 => Kind::ZSet,
            _ => return Err(postcard::Error::DeserializeBadEnum.into()),
        };
        let node = node_id(r.varint()?);
        let tally = Tally {
            epoch: Stamp {
                time: time.wrapping_sub(r.varint()?),
                node: node_id(r.varint()?),
            },
            ops: r.varint()?,
            int: {
                let z = r.varint()?;
                ((z >> 1) as i64) ^ -((z & 1) as i64)
            },
            float: f64::from_le_bytes(r.fixed::<8>()?),
            float_ops: r.varint()?,
        };
        let elem = r.string()?;
        return full_one_write(
            r,
            db,
            key,
            stamp,
            &one,
            elem,
            Written::Count { kind, node, tally },
        );
    }
    let dot = Dot {
        n: time.wrapping_add(r.varint()?),
        node: node_id(r.varint()?),
    };
    let replaced_len = r.varint()?;
    one.dot = dot;
    for _ in 0..replaced_len {
        let n = time.wrapping_sub(r.varint()?);
        let node = node_id(r.varint()?);
        one.replaced.push(Dot { node, n });
    }
    let elem = r.string()?;
    let written = match kind {
        k if k == Kind::Hash as u8 => Written::Field(r.string()?),
        k if k == Kind::Set as u8 => Written::Member,
        k if k == Kind::ZSet as u8 => Written::Score(f64::from_le_bytes(r.fixed::<8>()?)),
        _ => return Err(postcard::Error::DeserializeBadEnum.into()),
    };
    full_one_write(r, db, key, stamp, &one, elem, written)
}

/// The full delta of a compact write read up to its end (`r`: nothing
/// may be left).
fn full_one_write(
    r: Reader<'_>,
    db: u32,
    key: Vec<u8>,
    stamp: Stamp,
    one: &OneWrite,
    elem: &[u8],
    written: Written<'_>,
) -> Result<Delta, DecodeError> {
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    let mut full = Vec::with_capacity(96 + key.len() + elem.len() + 40 * one.replaced.len());
    append_one_delta(&mut full, stamp, one, elem, written);
    Ok(Delta::Key {
        db,
        key,
        state: take_all::<KeyState>(&full)?,
    })
}

/// `Delta`'s tag, in a write's layout, for the compact form of a
/// collection write's delta of any size ([`append_coll_write`]).
pub const COLL_WRITE_TAG: u8 = 3;

/// The bit of a compact collection write's kind byte that says its key
/// state's extras clear the key's expiry at the write's stamp (a write
/// that made the key: `KeyState::coll_write`); without, they are empty.
const EXPIRY_CLEARED: u8 = 0x10;

/// A collection write's key state (the empty register, extras that are
/// empty or clear the expiry at the write's stamp, and the delta `Coll`
/// of a hash, set or sorted set write) in the compact form a write sent
/// or logged under `origin`'s name takes, and true; false, with nothing
/// appended, for any other state (a list's, a counter's, one that names
/// removal records or parts of several kinds). The full form repeats the
/// write's time and the writer's id for every dot and element (nine and
/// ten bytes each): a three-field HSET that made its key took 278 bytes
/// (103 so).
/// Here a node id that is `origin`'s is 0, and dot numbers and times are
/// signed distances from the write's time (zigzag), mostly one byte.
/// `decode_write_fields` rebuilds the full form.
pub fn append_coll_write(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    state: &KeyState,
) -> bool {
    let (reg, Some(coll)) = (&state.reg, state.coll.as_deref()) else {
        return false;
    };
    if !reg.stamp.is_zero() || reg.seen.is_some() || reg.value.is_some() || reg.expire_at_ms != 0 {
        return false;
    }
    let extras = match state.extras.as_deref() {
        None => 0,
        Some(x) if x.is_empty() => 0,
        Some(x)
            if x.expiry.stamp == coll.at
                && x.expiry.at_ms == 0
                && x.counts.is_empty()
                && x.removed.is_empty()
                && x.floor.is_zero() =>
        {
            EXPIRY_CLEARED
        }
        Some(_) => return false,
    };
    append_coll_write_as(out, origin, db, key, extras, coll)
}

/// [`append_coll_write`] of the key state of the collection part `delta`
/// alone (as [`append_coll_delta`] lays it out).
pub fn append_coll_part_write(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    delta: &Coll,
) -> bool {
    append_coll_write_as(out, origin, db, key, 0, delta)
}

fn append_coll_write_as(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    extras: u8,
    c: &Coll,
) -> bool {
    let (floor, cloud) = c.ctx.parts();
    let only_its_kind = match c.kind {
        Kind::Hash => c.set.is_empty() && c.zset.is_empty(),
        Kind::Set => c.hash.is_empty() && c.zset.is_empty(),
        Kind::ZSet => c.hash.is_empty() && c.set.is_empty(),
        Kind::List => false,
    };
    if !c.part
        || !only_its_kind
        || floor != 0
        || !c.list.is_empty()
        || !c.removed.is_empty()
        || c.at.node.0 == 0
    {
        return false;
    }
    let start = out.len();
    let time = c.at.time;
    let near = |n: u64| {
        let d = n.wrapping_sub(time) as i64;
        ((d << 1) ^ (d >> 63)) as u64
    };
    // Node 0 stands for the origin: a part naming node 0 itself (no node
    // is numbered so) goes in the full form.
    let mut names_zero = false;
    let mut node_id = |node: NodeId| {
        names_zero |= node.0 == 0;
        if node == origin {
            0
        } else {
            node.0
        }
    };
    let mut plain = true;
    {
        let mut w = Writer::new(out);
        w.byte(COLL_WRITE_TAG);
        w.varint(db as u64);
        w.string(key);
        w.byte(c.kind as u8 | extras);
        w.varint(time);
        w.varint(node_id(c.at.node));
        w.varint(cloud.len() as u64);
        for &(n, node) in cloud {
            w.varint(near(n));
            w.varint(node_id(node));
        }
        let mut dot = |w: &mut Writer, dot: Dot, at: u64| {
            w.varint(near(dot.n));
            w.varint(node_id(dot.node));
            w.varint(near(at));
        };
        match c.kind {
            Kind::Hash => {
                w.varint(c.hash.len() as u64);
                for (field, f) in c.hash.iter() {
                    w.string(field);
                    match f {
                        FieldRef::Elem(e) => {
                            plain &= e.counts.is_none();
                            w.varint(e.writes.len() as u64);
                            for write in &e.writes {
                                dot(&mut w, write.dot, write.time);
                                w.string(&write.value.0);
                            }
                        }
                        FieldRef::Packed(p) => {
                            w.byte(1);
                            dot(&mut w, p.dot, p.time);
                            w.string(p.value);
                        }
                    }
                }
            }
            Kind::Set => {
                w.varint(c.set.len() as u64);
                for (member, adds) in c.set.part().into_iter().flat_map(|s| s.iter()) {
                    w.string(member.bytes());
                    w.varint(adds.len() as u64);
                    for add in adds {
                        dot(&mut w, add.dot, add.time);
                    }
                }
            }
            Kind::ZSet => {
                w.varint(c.zset.len() as u64);
                for (member, e) in c.zset.part().into_iter().flat_map(|z| z.iter()) {
                    plain &= e.counts.is_none();
                    w.string(member.bytes());
                    w.varint(e.writes.len() as u64);
                    for write in &e.writes {
                        dot(&mut w, write.dot, write.time);
                        w.fixed(&write.value.0.to_le_bytes());
                    }
                }
            }
            Kind::List => {}
        }
    }
    if !plain || names_zero {
        out.truncate(start);
        return false;
    }
    true
}

/// A write a [`ManyWrite`] recorded: element, value, the rest.
type Recorded<'a> = (&'a [u8], &'a [u8], &'a ElemWrite);

/// The compact collection write ([`append_coll_write`]) of a write of
/// several elements of `kind` made in place at `stamp` (what it did:
/// `many`), laid out without the delta `Coll` it would have filled
/// ([`ManyWrite::delta`]): the context's dots sorted and each once, and of
/// an element written twice, its last write. False, with nothing
/// appended, for what the form cannot say (a list; a dot of node 0, which
/// would read back as the origin's).
#[allow(clippy::too_many_arguments)]
pub fn append_many_write(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    stamp: Stamp,
    kind: Kind,
    many: &ManyWrite,
) -> bool {
    if kind == Kind::List
        || stamp.node.0 == 0
        || many.dots.iter().any(|d| d.node.0 == 0)
        || many.writes.iter().any(|w| w.dot.node.0 == 0)
    {
        return false;
    }
    let time = stamp.time;
    let near = |n: u64| {
        let d = n.wrapping_sub(time) as i64;
        ((d << 1) ^ (d >> 63)) as u64
    };
    let node_id = |node: NodeId| if node == origin { 0 } else { node.0 };
    let mut dots: SmallVec<[(u64, NodeId); 8]> = many.dots.iter().map(|d| (d.n, d.node)).collect();
    dots.sort_unstable();
    dots.dedup();
    // Tag, db, key, kind, stamp, the dots, the writes' count; each
    // write's element, value, one, dot, time and score.
    let most = 2
        + key.len()
        + (6 + 2 * dots.len()) * MAX_VARINT
        + many.bytes.len()
        + many.writes.len() * (6 * MAX_VARINT + 9);
    let mut w = Exact::new(out, most);
    w.byte(COLL_WRITE_TAG);
    w.varint(db as u64);
    w.varint(key.len() as u64);
    w.bytes(key);
    w.byte(kind as u8);
    w.varint(time);
    w.varint(node_id(stamp.node));
    w.varint(dots.len() as u64);
    for &(n, node) in &dots {
        w.varint(near(n));
        w.varint(node_id(node));
    }
    let lay = |w: &mut Exact, (elem, value, write): Recorded<'_>| {
        w.varint(elem.len() as u64);
        w.bytes(elem);
        w.byte(1);
        w.varint(near(write.dot.n));
        w.varint(node_id(write.dot.node));
        w.varint(near(write.time));
        match kind {
            Kind::Hash => {
                w.varint(value.len() as u64);
                w.bytes(value);
            }
            Kind::ZSet => w.bytes(&write.score.to_le_bytes()),
            Kind::Set | Kind::List => {}
        }
    };
    if all_distinct(many) {
        w.varint(many.writes.len() as u64);
        for recorded in many.iter() {
            lay(&mut w, recorded);
        }
        return true;
    }
    // An element written twice: its last write only. Stable, so that of
    // one element's writes the last made stays last.
    let mut writes: Vec<Recorded<'_>> = many.iter().collect();
    writes.sort_by(|a, b| a.0.cmp(b.0));
    let mut kept = 0;
    for i in 0..writes.len() {
        if i + 1 < writes.len() && writes[i + 1].0 == writes[i].0 {
            continue;
        }
        writes[kept] = writes[i];
        kept += 1;
    }
    w.varint(kept as u64);
    for &recorded in &writes[..kept] {
        lay(&mut w, recorded);
    }
    true
}

/// Whether no element of `many` was written twice, by comparing pairs
/// where there are few (a command names a handful of elements, and
/// sorting them cost more than the layout).
fn all_distinct(many: &ManyWrite) -> bool {
    let n = many.writes.len();
    if n > 16 {
        return false;
    }
    let mut elems: SmallVec<[&[u8]; 16]> = SmallVec::new();
    for (elem, _, _) in many.iter() {
        if elems.contains(&elem) {
            return false;
        }
        elems.push(elem);
    }
    true
}

/// [`append_coll_write`]'s fields (after its tag) as the full delta: its
/// bytes laid out as [`append_state`] lays out that key state, then read
/// by serde, so that what a peer merges is what the writer's was.
fn decode_coll_write(bytes: &[u8], origin: NodeId) -> Result<Delta, DecodeError> {
    let mut r = Reader(bytes);
    let node_id = |n: u64| if n == 0 { origin.0 } else { n };
    let db = u32::try_from(r.varint()?).map_err(|_| postcard::Error::DeserializeBadVarint)?;
    let key = r.string()?.to_vec();
    let flags = r.byte()?;
    let kind = match flags & !EXPIRY_CLEARED {
        k if k == Kind::Hash as u8 => Kind::Hash,
        k if k == Kind::Set as u8 => Kind::Set,
        k if k == Kind::ZSet as u8 => Kind::ZSet,
        _ => return Err(postcard::Error::DeserializeBadEnum.into()),
    };
    let time = r.varint()?;
    let writer = node_id(r.varint()?);
    let far = |z: u64| time.wrapping_add((((z >> 1) as i64) ^ -((z & 1) as i64)) as u64);
    // (A compact byte takes up to ten in the full form; the buffer grows
    // past this guess as it must.)
    let mut full = Vec::with_capacity(64 + 2 * bytes.len());
    {
        let mut w = Writer::new(&mut full);
        // The empty register; the extras; `Some(coll)` and its floor.
        w.fixed(&[0, 0, 0, 0, 0, 1]);
        if flags & EXPIRY_CLEARED != 0 {
            w.varint(time);
            w.varint(writer);
            w.fixed(&[0, 0, 0, 0, 0]);
        } else {
            w.fixed(&[0, 0, 0, 0, 0, 0, 0]);
        }
        w.fixed(&[1, 0]);
        let dots = r.varint()?;
        w.varint(dots);
        for _ in 0..dots {
            w.varint(far(r.varint()?));
            w.varint(node_id(r.varint()?));
        }
        w.varint(time);
        w.varint(writer);
        w.varint(kind as u64);
        // The parts before the one written, empty.
        for _ in 0..kind as u8 {
            w.byte(0);
        }
        let elems = r.varint()?;
        w.varint(elems);
        for _ in 0..elems {
            w.string(r.string()?);
            let writes = r.varint()?;
            w.varint(writes);
            for _ in 0..writes {
                let n = far(r.varint()?);
                w.varint(node_id(r.varint()?));
                w.varint(n);
                w.varint(far(r.varint()?));
                match kind {
                    Kind::Hash => w.string(r.string()?),
                    Kind::ZSet => w.fixed(&r.fixed::<8>()?),
                    Kind::Set | Kind::List => {}
                }
            }
            if kind != Kind::Set {
                // No counts.
                w.byte(0);
            }
        }
        // The parts after it, the list and the removal records, empty;
        // a part.
        for _ in kind as u8 + 1..Kind::List as u8 {
            w.byte(0);
        }
        w.fixed(&[0, 0, 1]);
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Trailing(r.0.len()));
    }
    Ok(Delta::Key {
        db,
        key,
        state: take_all::<KeyState>(&full)?,
    })
}

/// What is left of a compact write while its fields are read.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self
            .0
            .split_first()
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.0 = rest;
        Ok(b)
    }

    /// A varint as postcard lays out a `u64`: at most ten bytes, the
    /// tenth holding the top bit only.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        // Most fields are one byte.
        if let Some((&b, rest)) = self.0.split_first() {
            if b < 0x80 {
                self.0 = rest;
                return Ok(u64::from(b));
            }
        }
        // HLC times and node ids take nine or ten: read eight at once.
        if let Some((&first, rest)) = self.0.split_first_chunk::<8>() {
            let word = u64::from_le_bytes(first);
            let ends = !word & 0x8080_8080_8080_8080;
            if ends != 0 {
                let len = ends.trailing_zeros() as usize / 8 + 1;
                let kept = if len == 8 {
                    word
                } else {
                    word & ((1u64 << (8 * len)) - 1)
                };
                self.0 = &self.0[len..];
                return Ok(gather_sevens(kept));
            }
            let low = gather_sevens(word);
            match *rest {
                [b, ..] if b < 0x80 => {
                    self.0 = &rest[1..];
                    return Ok(low | u64::from(b) << 56);
                }
                [b, last, ..] if last <= 1 => {
                    self.0 = &rest[2..];
                    return Ok(low | u64::from(b & 0x7f) << 56 | u64::from(last) << 63);
                }
                [_, _, ..] => return Err(postcard::Error::DeserializeBadVarint.into()),
                _ => {}
            }
        }
        self.varint_near_end()
    }

    /// [`Reader::varint`] of one that starts less than ten bytes before
    /// the end.
    #[cold]
    fn varint_near_end(&mut self) -> Result<u64, DecodeError> {
        let mut n = 0u64;
        for (i, &b) in self.0.iter().take(MAX_VARINT).enumerate() {
            if i == MAX_VARINT - 1 && b > 1 {
                return Err(postcard::Error::DeserializeBadVarint.into());
            }
            n |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.0 = &self.0[i + 1..];
                return Ok(n);
            }
        }
        Err(if self.0.len() < MAX_VARINT {
            postcard::Error::DeserializeUnexpectedEnd
        } else {
            postcard::Error::DeserializeBadVarint
        }
        .into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < len {
            return Err(postcard::Error::DeserializeUnexpectedEnd.into());
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn string(&mut self) -> Result<&'a [u8], DecodeError> {
        let len =
            usize::try_from(self.varint()?).map_err(|_| postcard::Error::DeserializeBadVarint)?;
        self.take(len)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

/// The low seven bits of each byte of `word`, packed together (a
/// varint's groups, least significant first).
#[inline(always)]
fn gather_sevens(word: u64) -> u64 {
    let x = word & 0x7f7f_7f7f_7f7f_7f7f;
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// The extras' own fields (`None`: the empty ones).
fn write_extras(w: &mut Writer, extras: Option<&Extras>) {
    let Some(x) = extras else {
        // Expiry, counts, removed, floor.
        w.fixed(&[0, 0, 0, 0, 0, 0, 0]);
        return;
    };
    write_stamp(w, x.expiry.stamp);
    w.varint(x.expiry.at_ms);
    write_tallies(w, &x.counts);
    write_tallies(w, &x.removed);
    write_stamp(w, x.floor);
}

fn write_tallies(w: &mut Writer, tallies: &NodeMap<Tally>) {
    w.varint(tallies.len() as u64);
    for (node, tally) in tallies.iter() {
        write_node_tally(w, *node, *tally, false);
    }
}

fn write_coll(w: &mut Writer, c: &Coll) {
    let (floor, cloud) = c.ctx.parts();
    w.varint(floor);
    w.varint(cloud.len() as u64);
    for &(n, node) in cloud {
        w.varint(n);
        w.varint(node.0);
    }
    write_stamp(w, c.at);
    w.varint(c.kind as u64);
    w.varint(c.hash.len() as u64);
    for (field, f) in c.hash.iter() {
        w.string(field);
        match f {
            FieldRef::Elem(e) => write_elem(w, e, |w, v| w.string(&v.0)),
            FieldRef::Packed(p) => {
                w.byte(1);
                write_dot(w, p.dot);
                w.varint(p.time);
                w.string(p.value);
                // No counts.
                w.byte(0);
            }
        }
    }
    // Most parts are empty (a delta holds one kind, a state rarely any
    // removal records): their iterators, set up and run dry, cost a
    // one-field HSET's delta 200 instructions.
    w.varint(c.set.len() as u64);
    for (member, adds) in c.set.part().into_iter().flat_map(|s| s.iter()) {
        w.string(member.bytes());
        w.varint(adds.len() as u64);
        for add in adds {
            write_dot(w, add.dot);
            w.varint(add.time);
        }
    }
    w.varint(c.zset.len() as u64);
    for (member, e) in c.zset.part().into_iter().flat_map(|z| z.iter()) {
        w.string(member.bytes());
        write_elem(w, e, |w, score| w.fixed(&score.0.to_le_bytes()));
    }
    w.varint(c.list.len() as u64);
    for (pos, e) in c.list.part().into_iter().flat_map(|l| l.iter()) {
        w.varint(pos.0.len() as u64);
        for part in &pos.0 {
            w.varint(part.digit);
            w.varint(part.node.0);
            w.varint(part.n);
        }
        write_elem(w, e, |w, v| w.string(&v.0));
    }
    w.varint(c.removed.len() as u64);
    for ((kind, key), r) in c.removed.part().into_iter().flat_map(|r| r.iter()) {
        w.varint(*kind as u64);
        w.string(key);
        write_stamp(w, r.reset);
        write_tallies(w, &r.tallies);
        w.varint(r.dead.len() as u64);
        for (node, n) in r.dead.iter() {
            w.varint(node.0);
            w.varint(*n);
        }
    }
    w.byte(c.part as u8);
}

fn write_elem<V>(w: &mut Writer, e: &Elem<V>, value: impl Fn(&mut Writer, &V)) {
    w.varint(e.writes.len() as u64);
    for write in &e.writes {
        write_dot(w, write.dot);
        w.varint(write.time);
        value(w, &write.value);
    }
    match e.counts.as_deref() {
        None => w.byte(0),
        Some(counts) => {
            w.byte(1);
            write_tallies(w, counts);
        }
    }
}

#[inline(always)]
fn write_dot(w: &mut Writer, dot: Dot) {
    w.varint(dot.node.0);
    w.varint(dot.n);
}

/// Extends a borrowed buffer: postcard's `to_extend` takes its writer by
/// value, and a failed encoding must not take the caller's bytes with it.
struct Appender<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Appender<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// Postcard's bytes for [`KeyState::tally_delta`]`(node, tally)`, without
/// building it.
pub fn append_tally_delta(out: &mut Vec<u8>, node: NodeId, tally: Tally) {
    let mut s = Scratch::<{ 14 + NODE_TALLY_MOST }>::new();
    // The empty register, then `Some(extras)` with an empty expiry field,
    // and `counts` of one entry.
    s.fixed::<10>(|slot| {
        *slot = [0, 0, 0, 0, 0, 1, 0, 0, 0, 1];
        10
    });
    put_node_tally(&mut s, node, tally, false);
    // No `removed`, a zero floor, no collection.
    s.fixed::<4>(|slot| {
        *slot = [0; 4];
        4
    });
    s.append_to(out);
}

/// Postcard's bytes for `(node, tally)`.
pub fn append_node_tally(out: &mut Vec<u8>, node: NodeId, tally: Tally) {
    let mut s = Scratch::<NODE_TALLY_MOST>::new();
    put_node_tally(&mut s, node, tally, false);
    s.append_to(out);
}

/// [`append_node_tally`] in a record of `node`'s own write: an epoch of
/// `node`'s leaves its node implied (named 0), as a write's register stamp
/// does ([`append_plain_key_delta`]); [`Tally::restore_origin`] puts it
/// back.
pub fn append_own_node_tally(out: &mut Vec<u8>, node: NodeId, tally: Tally) {
    put_node_tally(&mut Exact::new(out, NODE_TALLY_MOST), node, tally, true);
}

/// [`append_own_node_tally`] of a tally without floats (no INCRBYFLOAT in
/// its segment, `float` +0.0), less those two fields: a logged INCR's
/// record, whose bytes the log's writer copies into the page cache, nine
/// bytes shorter. The tuple `(node, epoch, ops, int)` is what postcard
/// reads back. False (nothing appended) for a tally with floats.
pub fn append_own_int_tally(out: &mut Vec<u8>, node: NodeId, tally: Tally) -> bool {
    if tally.float.to_bits() != 0 || tally.float_ops != 0 {
        return false;
    }
    let mut w = Exact::new(out, NODE_TALLY_MOST);
    put_int_tally(&mut w, node, tally, true);
    true
}

/// The most bytes `(node, tally)` takes: six varints and a float.
const NODE_TALLY_MOST: usize = 6 * MAX_VARINT + 8;

fn write_node_tally(w: &mut Writer, node: NodeId, tally: Tally, implied: bool) {
    let mut s = Scratch::<NODE_TALLY_MOST>::new();
    put_node_tally(&mut s, node, tally, implied);
    w.bytes(s.as_slice());
}

/// Where [`put_node_tally`] lays its fields: a [`Scratch`] on the stack,
/// or an [`Exact`] straight in the output (what a logged INCR's record
/// takes: fields laid on the stack and copied out whole were read back
/// before their stores had landed, a stall of the CPU's store forwarding).
trait Fields {
    fn fixed<const M: usize>(&mut self, put: impl FnOnce(&mut [u8; M]) -> usize);

    #[inline(always)]
    fn varint(&mut self, n: u64) {
        self.fixed::<MAX_VARINT>(|slot| put_varint(slot, n));
    }
}

impl<const N: usize> Fields for Scratch<N> {
    #[inline(always)]
    fn fixed<const M: usize>(&mut self, put: impl FnOnce(&mut [u8; M]) -> usize) {
        Scratch::fixed(self, put);
    }
}

impl Fields for Exact<'_> {
    #[inline(always)]
    fn fixed<const M: usize>(&mut self, put: impl FnOnce(&mut [u8; M]) -> usize) {
        let Some(slot) = self.out[self.at..].first_chunk_mut::<M>() else {
            panic!("a writer's buffer is too small for its fields");
        };
        self.at += put(slot);
    }
}

/// `(node, tally)`: a logged or replicated INCR's delta is little more,
/// and a [`Writer`] zeroed 128 bytes of room for it.
#[inline(always)]
fn put_node_tally(s: &mut impl Fields, node: NodeId, tally: Tally, implied: bool) {
    put_int_tally(s, node, tally, implied);
    s.fixed::<8>(|slot| {
        *slot = tally.float.to_le_bytes();
        8
    });
    s.varint(tally.float_ops);
}

/// `(node, tally)` up to its integer sum.
#[inline(always)]
fn put_int_tally(s: &mut impl Fields, node: NodeId, tally: Tally, implied: bool) {
    s.varint(node.0);
    s.varint(tally.epoch.time);
    s.varint(
        if implied && tally.epoch.node == node && tally.epoch.time != 0 {
            0
        } else {
            tally.epoch.node.0
        },
    );
    s.varint(tally.ops);
    s.varint(((tally.int << 1) ^ (tally.int >> 63)) as u64);
}

/// A register without `seen`; with `origin`, its stamp's node left
/// implied when it is `origin` (see [`append_plain_key_delta`]).
#[inline(always)]
fn write_plain_register(w: &mut Writer, reg: &Register, origin: Option<NodeId>) {
    w.varint(reg.stamp.time);
    // (A stamp without a time names its node: the restore leaves those.)
    w.varint(if Some(reg.stamp.node) == origin && reg.stamp.time != 0 {
        0
    } else {
        reg.stamp.node.0
    });
    // `seen`: none.
    w.byte(0);
    match &reg.value {
        None => w.byte(0),
        Some(v) => {
            w.byte(1);
            w.string(v);
        }
    }
    w.varint(reg.expire_at_ms);
}

#[inline(always)]
fn write_stamp(w: &mut Writer, stamp: Stamp) {
    w.varint(stamp.time);
    w.varint(stamp.node.0);
}

/// Postcard's bytes for a byte string: its length, then the bytes.
pub fn append_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    append_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Postcard's (LEB128) bytes for an unsigned integer of any width.
#[inline(always)]
pub fn append_varint(out: &mut Vec<u8>, n: u64) {
    // All ten bytes copied, then the length cut: a copy of a length known
    // only at run time is a call to memmove, which cost more than the
    // varint (a delta's stamps, dots and node ids are nine or ten bytes
    // each, and it holds ten of them).
    let mut buf = [0; MAX_VARINT];
    let len = put_varint(&mut buf, n);
    let start = out.len();
    out.extend_from_slice(&buf);
    out.truncate(start + len);
}

/// The most bytes a varint of a `u64` takes.
pub const MAX_VARINT: usize = 10;

/// A few short fields laid out on the stack, then appended to a buffer in
/// one copy of the whole array, cut to length. Appended one by one, each
/// varint took a capacity check, a copy and a cut of its own: a SET's
/// stamp (two varints) cost 147 instructions so. `N` must hold the most
/// bytes the caller's fields can take; writing past it is a bug, and
/// panics.
#[derive(Clone, Copy)]
pub struct Scratch<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Scratch<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Scratch<N> {
    pub fn new() -> Self {
        Scratch {
            buf: [0; N],
            len: 0,
        }
    }

    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    /// `n`'s varint (postcard's LEB128).
    #[inline(always)]
    pub fn varint(&mut self, n: u64) {
        self.fixed::<MAX_VARINT>(|slot| put_varint(slot, n));
    }

    /// Bytes `put` writes at the start of an `M`-byte slot, returning how
    /// many: the slot is copied whole where a run-time length would be a
    /// call to memmove.
    #[inline(always)]
    pub fn fixed<const M: usize>(&mut self, put: impl FnOnce(&mut [u8; M]) -> usize) {
        let Some(slot) = self.buf[self.len..].first_chunk_mut::<M>() else {
            panic!("a scratch of {N} bytes is too small for its fields");
        };
        self.len += put(slot);
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The whole array, of which the first [`Scratch::len`] bytes hold
    /// the fields (for [`Slot::prefix`]).
    pub fn raw(&self) -> &[u8; N] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends the fields to `out`.
    #[inline(always)]
    pub fn append_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.buf);
        out.truncate(start + self.len);
    }
}

/// Writes `n`'s varint at the start of `buf`; returns its length. Past
/// two bytes, its seven-bit groups are spread over a word at once, not one
/// byte per loop turn: stamps, dots and node ids, most of a delta, take
/// nine or ten bytes each. Bytes of `buf` past the length are left set.
#[inline(always)]
pub fn put_varint(buf: &mut [u8; MAX_VARINT], n: u64) -> usize {
    if n < 0x80 {
        buf[0] = n as u8;
        return 1;
    }
    if n < 0x4000 {
        // Lengths of values past 127 bytes, counts and sums: two bytes
        // without the spreading below.
        buf[..2]
            .copy_from_slice(&((n as u16 & 0x7f) | 0x80 | ((n as u16 >> 7) << 8)).to_le_bytes());
        return 2;
    }
    let len = (64 - n.leading_zeros() as usize).div_ceil(7);
    // The low 56 bits' eight groups of seven, each moved up to its byte in
    // three halvings (28 bits to each half of the word, 14 to each
    // quarter, 7 to each byte): nine operations where a loop over the
    // groups took twenty-four.
    let x = n & 0x00ff_ffff_ffff_ffff;
    let x = (x & 0x0fff_ffff) | ((x & 0x00ff_ffff_f000_0000) << 4);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x0fff_c000_0fff_c000) << 2);
    let low = (x & 0x007f_007f_007f_007f) | ((x & 0x3f80_3f80_3f80_3f80) << 1);
    // A continuation bit on every byte but the last.
    let more = if len > 8 {
        u64::MAX
    } else {
        (1u64 << (8 * (len - 1))) - 1
    };
    buf[..8].copy_from_slice(&(low | (more & 0x8080_8080_8080_8080)).to_le_bytes());
    // The last two bytes in one store: a copy of the ten reads them as one
    // load, which two one-byte stores could not forward to.
    let high = n >> 56;
    let ninth = (high & 0x7f) | if len > 9 { 0x80 } else { 0 };
    buf[8..].copy_from_slice(&((ninth | (high >> 7) << 8) as u16).to_le_bytes());
    len
}

/// Decodes what [`encode`] produced; any truncation, corruption or unknown
/// version is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Decodes the first value of what [`encode`] produced and ignores the rest:
/// a message's leading fields read without decoding the whole of it.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    Ok(postcard::take_from_bytes(body)?.0)
}

/// Decodes a value read from a store written by this or an earlier build,
/// for types whose encoding has not changed since [`OLDEST_STORED_VERSION`]
/// (everything a store holds but key states). The wire takes [`decode`]:
/// every node of a cluster runs one version.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.first() {
        Some(&v) if (OLDEST_STORED_VERSION..FORMAT_VERSION).contains(&v) => {
            let mut current = bytes.to_vec();
            current[0] = FORMAT_VERSION;
            decode(&current)
        }
        _ => decode(bytes),
    }
}

/// Decodes a key's state read from a store written by this or an earlier
/// build, migrating the old layout.
pub fn decode_stored_state(bytes: &[u8]) -> Result<KeyState, DecodeError> {
    let mut state: KeyState = match bytes.first() {
        Some(2) => take_all::<KeyStateV2>(&bytes[1..])?.into(),
        Some(3) => take_all::<KeyStateV3>(&bytes[1..])?.into(),
        Some(4) => take_all::<KeyStateV4>(&bytes[1..])?.into(),
        Some(5 | 6) => take_all::<KeyStateV6>(&bytes[1..])?.into(),
        _ => decode(bytes)?,
    };
    state.pack();
    Ok(state)
}

/// Decodes a write `(origin, seq, delta)` of the delta log written by
/// this build or the two before: `tag` is the encoding of the log
/// record's message kind (its enum variant), which has not changed, and
/// must lead the body. The origin a record left implied is put back.
pub fn decode_stored_write(bytes: &[u8], tag: &[u8]) -> Result<(NodeId, u64, Delta), DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let fields = body
        .strip_prefix(tag)
        .ok_or(DecodeError::Malformed(postcard::Error::DeserializeBadEnum))?;
    match version {
        4 => {
            let (origin, seq, delta) = take_all::<(NodeId, u64, DeltaV4)>(fields)?;
            let mut delta: Delta = delta.into();
            delta.restore_origin(origin);
            Ok((origin, seq, delta))
        }
        5 | 6 => decode_write_fields_as(fields, |full| Ok(take_all::<DeltaV6>(full)?.into())),
        FORMAT_VERSION => decode_write_fields(fields),
        v => Err(DecodeError::UnknownVersion(v)),
    }
}

/// Decodes a conflict record read from a store written by this or an
/// earlier build: `Head` is what the record holds before its conflict
/// (the store's own fields), decoded as it always was.
pub fn decode_stored_conflict<Head: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(Head, Conflict), DecodeError> {
    match bytes.first() {
        Some(&v) if (OLDEST_STORED_VERSION..4).contains(&v) => {
            let (head, c) = take_all::<(Head, ConflictV3)>(&bytes[1..])?;
            Ok((
                head,
                Conflict {
                    kind: c.kind,
                    winner: c.winner,
                    loser: c.loser,
                    element: None,
                },
            ))
        }
        _ => decode_stored(bytes),
    }
}

fn take_all<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes::<T>(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Versions 4 to 6's removal record of an element: no kills.
#[derive(serde::Deserialize, serde::Serialize)]
struct RemovedV6 {
    reset: Stamp,
    tallies: NodeMap<Tally>,
}

impl RemovedV6 {
    #[cfg(test)]
    fn of(r: &Removed) -> RemovedV6 {
        RemovedV6 {
            reset: r.reset,
            tallies: r.tallies.clone(),
        }
    }

    fn upgrade((at, r): ((Kind, Vec<u8>), RemovedV6)) -> ((Kind, Vec<u8>), Removed) {
        let r = Removed {
            reset: r.reset,
            tallies: r.tallies,
            dead: NodeMap::default(),
        };
        (at, r)
    }
}

#[derive(serde::Deserialize, serde::Serialize)]
struct CollV6 {
    ctx: CausalContext,
    at: Stamp,
    kind: Kind,
    hash: HashFields,
    set: EMap<Adds>,
    zset: EMap<Elem<Score>>,
    list: Seq<Elem<Blob>>,
    removed: BTreeMap<(Kind, Vec<u8>), RemovedV6>,
    part: bool,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ExtrasV6 {
    expiry: ExpiryField,
    counts: NodeMap<Tally>,
    removed: NodeMap<Tally>,
    floor: Stamp,
    coll: Option<Box<CollV6>>,
}

/// Versions 5 and 6's key state: removal records without kills.
#[derive(serde::Deserialize, serde::Serialize)]
struct KeyStateV6 {
    reg: Register,
    extras: Option<Box<ExtrasV6>>,
}

impl From<KeyStateV6> for KeyState {
    fn from(v6: KeyStateV6) -> KeyState {
        let Some(x) = v6.extras.map(|x| *x) else {
            return KeyState {
                reg: v6.reg,
                extras: None,
                coll: None,
            };
        };
        let rest = Extras {
            expiry: x.expiry,
            counts: x.counts,
            removed: Lazy::new(x.removed),
            floor: x.floor,
        };
        KeyState {
            reg: v6.reg,
            extras: (!rest.is_empty()).then(|| Box::new(rest)),
            coll: x.coll.map(|c| {
                let mut coll = Box::<Coll>::default();
                coll.ctx = c.ctx;
                coll.at = c.at;
                coll.kind = c.kind;
                coll.hash = c.hash;
                coll.set = Lazy::new(c.set);
                coll.zset = Lazy::new(c.zset);
                coll.list = Lazy::new(c.list);
                coll.removed = Lazy::new(c.removed.into_iter().map(RemovedV6::upgrade).collect());
                coll.part = c.part;
                coll
            }),
        }
    }
}

/// An earlier version's delta, of its key states `S`.
#[derive(serde::Deserialize, serde::Serialize)]
enum OldDelta<S> {
    Key {
        db: u32,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        state: S,
    },
    Flush {
        db: Option<u32>,
        stamp: Stamp,
    },
}

impl<S: Into<KeyState>> From<OldDelta<S>> for Delta {
    fn from(old: OldDelta<S>) -> Delta {
        match old {
            OldDelta::Key { db, key, state } => Delta::Key {
                db,
                key,
                state: state.into(),
            },
            OldDelta::Flush { db, stamp } => Delta::Flush { db, stamp },
        }
    }
}

/// Versions 5 and 6's delta.
type DeltaV6 = OldDelta<KeyStateV6>;

/// Versions 2 and 3's conflict: no element.
#[derive(serde::Deserialize, serde::Serialize)]
struct ConflictV3 {
    kind: crate::ConflictKind,
    winner: crate::Side,
    loser: crate::Side,
}

/// Version 4's key state: collections without lists.
#[derive(serde::Deserialize, serde::Serialize)]
struct KeyStateV4 {
    reg: Register,
    extras: Option<Box<ExtrasV4>>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ExtrasV4 {
    expiry: ExpiryField,
    counts: NodeMap<Tally>,
    removed: NodeMap<Tally>,
    floor: Stamp,
    coll: Option<Box<CollV4>>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct CollV4 {
    ctx: CausalContext,
    at: Stamp,
    kind: Kind,
    hash: BTreeMap<EKey, Elem<Blob>>,
    set: BTreeMap<EKey, Adds>,
    zset: BTreeMap<EKey, Elem<Score>>,
    removed: BTreeMap<(Kind, Vec<u8>), RemovedV6>,
    part: bool,
}

/// Version 4's state is version 6's without lists.
impl From<KeyStateV4> for KeyState {
    fn from(v4: KeyStateV4) -> KeyState {
        let extras = v4.extras.map(|x| {
            Box::new(ExtrasV6 {
                expiry: x.expiry,
                counts: x.counts,
                removed: x.removed,
                floor: x.floor,
                coll: x.coll.map(|c| {
                    Box::new(CollV6 {
                        ctx: c.ctx,
                        at: c.at,
                        kind: c.kind,
                        hash: c.hash.into_iter().collect(),
                        set: c.set.into_iter().collect(),
                        zset: c.zset.into_iter().collect(),
                        list: Seq::new(),
                        removed: c.removed,
                        part: c.part,
                    })
                }),
            })
        });
        KeyStateV6 {
            reg: v4.reg,
            extras,
        }
        .into()
    }
}

/// Version 4's delta: key states without lists.
type DeltaV4 = OldDelta<KeyStateV4>;

/// Version 3's key state: no collections.
#[derive(serde::Deserialize, serde::Serialize)]
struct KeyStateV3 {
    reg: Register,
    extras: Option<Box<ExtrasV3>>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ExtrasV3 {
    expiry: ExpiryField,
    counts: NodeMap<Tally>,
    removed: NodeMap<Tally>,
    floor: crate::Stamp,
}

impl From<KeyStateV3> for KeyState {
    fn from(v3: KeyStateV3) -> KeyState {
        KeyState {
            reg: v3.reg,
            extras: v3.extras.map(|x| {
                Box::new(Extras {
                    expiry: x.expiry,
                    counts: x.counts,
                    removed: Lazy::new(x.removed),
                    floor: x.floor,
                })
            }),
            coll: None,
        }
    }
}

/// Version 2's key state: no expiry floor.
#[derive(serde::Deserialize, serde::Serialize)]
struct KeyStateV2 {
    reg: Register,
    extras: Option<Box<ExtrasV2>>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct ExtrasV2 {
    expiry: ExpiryField,
    counts: NodeMap<Tally>,
    removed: NodeMap<Tally>,
}

impl From<KeyStateV2> for KeyState {
    fn from(v2: KeyStateV2) -> KeyState {
        KeyState {
            reg: v2.reg,
            extras: v2.extras.map(|x| {
                Box::new(Extras {
                    expiry: x.expiry,
                    counts: x.counts,
                    removed: Lazy::new(x.removed),
                    floor: crate::Stamp::ZERO,
                })
            }),
            coll: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, Stamp};
    use proptest::prelude::*;

    fn edge_u64() -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), 0u64..300, Just(u64::MAX), Just(1 << 63)]
    }

    proptest! {
        /// Edge values the law tests' operations rarely reach: every width
        /// of varint, negative and extreme sums, NaN and signed zeros.
        #[test]
        fn direct_encodings_are_postcards(
            time in edge_u64(), node in edge_u64(), ops in edge_u64(), float_ops in edge_u64(),
            int in prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), Just(-1i64)],
            float in prop_oneof![any::<f64>(), Just(f64::NAN), Just(-0.0f64), Just(f64::INFINITY)],
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            expire in edge_u64(),
        ) {
            let stamp = Stamp { time, node: NodeId(node) };
            let tally = Tally { epoch: stamp, ops, int, float, float_ops };
            let tally_state = KeyState::tally_delta(NodeId(node), tally);
            let plain = KeyState {
                reg: Register {
                    stamp,
                    seen: None,
                    value: value.map(Vec::into_boxed_slice),
                    expire_at_ms: expire,
                },
                extras: None,
                coll: None,
            };
            for state in [tally_state, plain] {
                let mut direct = Vec::new();
                append_state(&mut direct, &state).expect("encodes");
                prop_assert_eq!(&direct, &postcard::to_allocvec(&state).expect("encodes"));
            }
            let mut direct = Vec::new();
            append_tally_delta(&mut direct, NodeId(node), tally);
            prop_assert_eq!(direct, postcard::to_allocvec(&KeyState::tally_delta(NodeId(node), tally)).expect("encodes"));
            let mut direct = Vec::new();
            append_node_tally(&mut direct, NodeId(node), tally);
            prop_assert_eq!(direct, postcard::to_allocvec(&(NodeId(node), tally)).expect("encodes"));
        }
    }

    proptest! {
        /// An own put's bytes are serde's of its fields after the tag; it
        /// reads back as the full delta of the same write, the origin named
        /// again; it stays within its room.
        #[test]
        fn an_own_put_is_its_fields_and_reads_back_as_the_full_delta(
            seq in edge_u64(),
            db in prop_oneof![0u32..3, any::<u32>()],
            key in proptest::collection::vec(any::<u8>(), 0..200),
            time in edge_u64().prop_filter("a written stamp", |t| *t != 0),
            origin in edge_u64().prop_filter("a node", |n| *n != 0),
            value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            expire in edge_u64(),
        ) {
            let origin = NodeId(origin);
            let state = KeyState {
                reg: Register {
                    stamp: Stamp { time, node: origin },
                    seen: None,
                    value: value.clone().map(Vec::into_boxed_slice),
                    expire_at_ms: expire,
                },
                extras: None,
                coll: None,
            };
            let most = own_put_most(&key, &state, origin).expect("an own put");
            let mut room = vec![0xee; most + 3];
            let len = put_own_put(&mut room, seq, db, &key, &state);
            prop_assert!(room[most..].iter().all(|&b| b == 0xee), "wrote past its most");
            // Serde's bytes of each field there is, after the tag.
            fn field<T: Serialize>(v: &T) -> Vec<u8> {
                postcard::to_allocvec(v).expect("encodes")
            }
            let mut serde = vec![OWN_PUT_TAG
                | u8::from(value.is_some())
                | if expire != 0 { 2 } else { 0 }
                | if db != 0 { 4 } else { 0 }];
            serde.extend(field(&seq));
            if db != 0 {
                serde.extend(field(&db));
            }
            serde.extend(field(&serde_bytes::ByteBuf::from(key.clone())));
            serde.extend(time.to_le_bytes());
            if expire != 0 {
                serde.extend(field(&expire));
            }
            if let Some(v) = &value {
                serde.extend(field(&serde_bytes::ByteBuf::from(v.clone())));
            }
            prop_assert_eq!(&room[..len], &serde[..]);
            prop_assert!(is_own_put(&room[..len]));

            let full = Delta::Key { db, key: key.clone(), state: state.clone() };
            let (read_seq, read) = decode_own_put(&room[..len], origin).expect("reads");
            prop_assert_eq!(read_seq, seq);
            prop_assert_eq!(read, full);

            // Cut short or with a byte more, it is refused, not misread.
            prop_assert!(decode_own_put(&room[..len - 1], origin).is_err());
            let mut longer = room[..len].to_vec();
            longer.push(0);
            prop_assert!(decode_own_put(&longer, origin).is_err());
        }

        /// Whatever follows the tag, reading it returns (a write or an
        /// error) without panicking.
        #[test]
        fn any_bytes_after_the_own_put_tag_read_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut payload = vec![OWN_PUT_TAG];
            payload.extend(bytes);
            let _ = decode_own_put(&payload, NodeId(7));
        }
    }

    /// Only a plain register its own node wrote is an own put.
    #[test]
    fn only_a_plain_register_its_node_wrote_is_an_own_put() {
        let me = NodeId(5);
        let own = KeyState::default().write(Stamp { time: 9, node: me }, Some(b"v"), 0);
        assert!(own_put_most(b"k", &own, me).is_some());
        assert!(
            own_put_most(b"k", &own, NodeId(6)).is_none(),
            "another node's write"
        );
        let mut seen = own.clone();
        seen.reg.seen = Some(Box::default());
        assert!(
            own_put_most(b"k", &seen, me).is_none(),
            "it saw another's write"
        );
        let mut unwritten = own.clone();
        unwritten.reg.stamp.time = 0;
        assert!(own_put_most(b"k", &unwritten, me).is_none(), "no write");
        let counted = KeyState::tally_delta(
            me,
            Tally {
                epoch: Stamp { time: 9, node: me },
                ops: 1,
                int: 1,
                float: 0.0,
                float_ops: 0,
            },
        );
        assert!(own_put_most(b"k", &counted, me).is_none(), "a counter");
    }

    proptest! {
        /// Collection states and deltas with values the law tests' small
        /// ones never reach: wide varints in stamps, dots and node ids,
        /// long fields and values (unpacked hashes), extreme scores,
        /// counters and their removal records, lists, an expiry.
        #[test]
        fn collection_encodings_are_postcards(
            time in prop_oneof![1u64..300, 1u64..(1 << 62)],
            node in edge_u64(),
            field in proptest::collection::vec(any::<u8>(), 0..200),
            value in proptest::collection::vec(any::<u8>(), 0..200),
            score in prop_oneof![-1e300f64..1e300, Just(-0.0f64), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
            int in any::<i64>(),
            float in any::<f64>(),
            expire in edge_u64(),
        ) {
            use crate::coll::Kind;
            let at = |dt: u64| Stamp { time: time + dt, node: NodeId(node) };
            let mut made = Vec::new();
            for kind in Kind::ALL {
                let mut state = KeyState::default();
                let mut apply = |state: &mut KeyState, delta: KeyState| {
                    made.push(delta.clone());
                    state.merge_owned(delta);
                    made.push(state.clone());
                };
                let other: &[u8] = b"other";
                let d = state.coll_write(at(0), kind, |c, d| match kind {
                    Kind::Hash => {
                        c.hset_into(d, at(0), &field, &value);
                        c.hset_into(d, at(0), other, b"v");
                    }
                    Kind::Set => {
                        c.sadd_into(d, at(0), &field);
                        c.sadd_into(d, at(0), other);
                    }
                    Kind::ZSet => {
                        c.zadd_into(d, at(0), &field, score);
                        c.zadd_into(d, at(0), other, 1.0);
                    }
                    Kind::List => {
                        c.list_push_into(d, at(0), true, &value);
                        c.list_push_into(d, at(0), false, other);
                    }
                });
                apply(&mut state, d);
                if matches!(kind, Kind::Hash | Kind::ZSet) {
                    let d = state.coll_write(at(1), kind, |c, d| {
                        c.incr_into(d, kind, other, at(1), (int, float, true));
                    });
                    apply(&mut state, d);
                }
                let d = state.coll_write(at(2), kind, |c, d| match kind {
                    Kind::List => {
                        let first = c.list.iter().next().map(|(p, _)| p.clone());
                        if let Some(p) = first {
                            c.list_remove_into(d, &p);
                        }
                    }
                    _ => c.remove_elem_into(d, kind, other, at(2)),
                });
                apply(&mut state, d);
                let d = state.expire(at(3), expire);
                apply(&mut state, d);
            }
            for state in &made {
                let mut direct = Vec::new();
                append_state(&mut direct, state).expect("encodes");
                prop_assert_eq!(&direct, &postcard::to_allocvec(state).expect("encodes"));
                if let (Some(c), None, true) =
                    (state.coll(), &state.extras, state.reg == Register::default())
                {
                    let mut direct = Vec::new();
                    append_coll_delta(&mut direct, c);
                    prop_assert_eq!(&direct, &postcard::to_allocvec(state).expect("encodes"));
                }
            }
        }
    }

    /// Every width of varint, at both ends of it, as postcard writes it.
    #[test]
    fn varints_are_postcards() {
        for shift in 0..64 {
            for n in [
                1u64 << shift,
                (1u64 << shift) - 1,
                (1u64 << shift) | 1,
                u64::MAX >> shift,
                0x0123_4567_89ab_cdef >> shift,
                0xfedc_ba98_7654_3210 << shift,
                0x5555_5555_5555_5555 >> shift,
            ] {
                let mut direct = vec![7];
                append_varint(&mut direct, n);
                assert_eq!(
                    direct[1..],
                    postcard::to_allocvec(&n).expect("encodes")[..],
                    "{n}"
                );
                assert_eq!(direct[0], 7);
            }
        }
    }

    /// A state far past the writer's first step of room, appended after
    /// bytes already in the buffer, is postcard's and leaves them be.
    #[test]
    fn a_large_collection_appends_as_postcard_lays_it_out() {
        let node = NodeId(u64::MAX - 5);
        let mut state = KeyState::default();
        for i in 0..2_000u64 {
            let at = Stamp {
                time: (1 << 60) + i,
                node,
            };
            let field = format!("field:{i}");
            let d = state.coll_write(at, crate::coll::Kind::Hash, |c, d| {
                c.hset_into(d, at, field.as_bytes(), &[b'v'; 70]);
            });
            state.merge_owned(d);
        }
        let mut direct = b"prefix".to_vec();
        append_state(&mut direct, &state).expect("encodes");
        let whole = postcard::to_allocvec(&state).expect("encodes");
        assert!(whole.len() > 100_000, "{}", whole.len());
        assert_eq!(&direct[..6], b"prefix");
        assert_eq!(&direct[6..], &whole[..]);
    }

    /// A plain write's delta, put into a slice or appended, is postcard's
    /// for keys and values of every short length (each of the small
    /// copy's cases and their edges) and for long ones; under its origin's
    /// name it decodes back to the same delta.
    #[test]
    fn a_plain_write_lays_out_as_postcard_for_every_short_length() {
        let me = NodeId(0x0123_4567_89ab_cdef);
        let lengths = (0..=40).chain([63, 64, 65, 1000, 5000]);
        for key_len in lengths.clone() {
            for value_len in lengths.clone().map(Some).chain([None]) {
                let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + 1) as u8).collect();
                let value: Option<Vec<u8>> =
                    value_len.map(|n| (0..n).map(|i| (i * 13 + 5) as u8).collect());
                let mut state = KeyState::default();
                state.reg.stamp = Stamp {
                    time: (1 << 62) + key_len as u64,
                    node: me,
                };
                state.reg.value = value.as_deref().map(Into::into);
                state.reg.expire_at_ms = if key_len % 2 == 0 { 0 } else { 1 << 41 };
                let delta = Delta::Key {
                    db: key_len as u32 * 20,
                    key: key.clone(),
                    state: state.clone(),
                };
                let whole = postcard::to_allocvec(&delta).expect("encodes");
                let db = key_len as u32 * 20;

                let mut appended = b"before".to_vec();
                assert!(append_plain_key_delta(
                    &mut appended,
                    None,
                    db,
                    &key,
                    &state
                ));
                assert_eq!(&appended[..6], b"before");
                assert_eq!(
                    appended[6..],
                    whole[..],
                    "key {key_len}, value {value_len:?}"
                );

                let most = plain_key_delta_most(&key, &state).expect("plain");
                let mut slot = vec![0xee; most + 3];
                let len = put_plain_key_delta(&mut slot, None, db, &key, &state);
                assert_eq!(slot[..len], whole[..], "key {key_len}, value {value_len:?}");
                assert!(
                    slot[most..].iter().all(|&b| b == 0xee),
                    "wrote past its most"
                );

                let len = put_plain_key_delta(&mut slot, Some(me), db, &key, &state);
                let mut back: Delta = postcard::from_bytes(&slot[..len]).expect("decodes");
                back.restore_origin(me);
                assert_eq!(back, delta, "key {key_len}, value {value_len:?}");
                assert_eq!(
                    decode_plain_key_delta(&whole).as_ref(),
                    Some(&delta),
                    "read by hand: key {key_len}, value {value_len:?}"
                );
            }
        }
    }

    proptest::proptest! {
        /// A varint read by hand is what serde reads as a `u64`: the same
        /// value and rest, or the same error.
        #[test]
        fn a_varint_reads_as_serde_reads_it(
            bytes in proptest::prop_oneof![
                proptest::collection::vec(
                    proptest::prop_oneof![proptest::prelude::any::<u8>(), 0x80u8..=0xff, 0u8..=2],
                    0..13,
                ),
                // A varint of any length, whole, cut short or followed by more.
                (proptest::prelude::any::<u64>(), 0u32..64, 0usize..11, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3))
                    .prop_map(|(n, shift, cut, tail)| {
                        let mut v = postcard::to_allocvec(&(n >> shift)).expect("encodes");
                        if cut < v.len() && cut % 2 == 1 {
                            v.truncate(cut);
                        }
                        v.extend(tail);
                        v
                    }),
            ],
        ) {
            let mut r = Reader(&bytes);
            let by_hand = r.varint().map(|n| (n, r.0.to_vec())).map_err(|e| e.to_string());
            let by_serde = postcard::take_from_bytes::<u64>(&bytes)
                .map(|(n, rest)| (n, rest.to_vec()))
                .map_err(|e| DecodeError::from(e).to_string());
            proptest::prop_assert_eq!(by_hand, by_serde);
        }
    }

    /// The hand reading of a plain write takes exactly what serde reads
    /// to the same delta: every plain layout, and every one of them with a
    /// byte changed, cut short or followed by more, read by hand either
    /// gives serde's delta or leaves it to serde.
    #[test]
    fn a_plain_write_read_by_hand_is_what_serde_reads() {
        let mut checked = 0;
        for (key_len, value_len, expire_at_ms, db, time, node) in [
            (0, None, 0, 0, 0, 0),
            (16, Some(3), 0, 0, 1 << 62, 0),
            (1, Some(0), 1 << 41, 15, 1, u64::MAX),
            (130, Some(200), u64::MAX, u32::MAX, u64::MAX, 1 << 35),
            (5, Some(5), 7, 128, 300, 9),
        ] {
            let mut state = KeyState::default();
            state.reg.stamp = Stamp {
                time,
                node: NodeId(node),
            };
            state.reg.value = value_len.map(|n: usize| vec![b'v'; n].into());
            state.reg.expire_at_ms = expire_at_ms;
            let mut plain = Vec::new();
            assert!(append_plain_key_delta(
                &mut plain,
                None,
                db,
                &vec![b'k'; key_len],
                &state
            ));
            let mut variants = vec![plain.clone(), [&plain[..], &[0]].concat()];
            for cut in 0..plain.len() {
                variants.push(plain[..cut].to_vec());
            }
            for at in 0..plain.len() {
                for b in [0, 1, 2, 0x0f, 0x10, 0x7f, 0x80, 0xff] {
                    let mut changed = plain.clone();
                    changed[at] = b;
                    variants.push(changed);
                }
            }
            for bytes in variants {
                let by_serde = take_all::<Delta>(&bytes).ok();
                if let Some(by_hand) = decode_plain_key_delta(&bytes) {
                    assert_eq!(Some(by_hand), by_serde, "{bytes:02x?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "the hand reading took only {checked}");
    }

    /// A plain write laid out under its origin's name leaves the stamp's
    /// node out and reads back whole, from the log as from a link; one
    /// laid out without (a state transfer's) is postcard's own.
    #[test]
    fn an_own_write_leaves_its_stamps_origin_implied_and_reads_back_whole() {
        let me = NodeId(0xfedc_ba98_7654_3210);
        let tag = [3u8];
        let record = |origin: Option<NodeId>, state: &KeyState| {
            let mut bytes = vec![FORMAT_VERSION, 3];
            bytes.extend(postcard::to_allocvec(&(me, 7u64)).expect("encode"));
            let mut body = Vec::new();
            if !append_plain_key_delta(&mut body, origin, 1, b"k", state) {
                body.clear();
                body.push(0);
                append_varint(&mut body, 1);
                append_bytes(&mut body, b"k");
                append_state(&mut body, state).expect("encode");
            }
            bytes.extend(body);
            bytes
        };
        let full = |state: &KeyState| {
            let mut bytes = vec![FORMAT_VERSION, 3];
            let write = Delta::Key {
                db: 1,
                key: b"k".to_vec(),
                state: state.clone(),
            };
            bytes.extend(postcard::to_allocvec(&(me, 7u64, write)).expect("encode"));
            bytes
        };
        let mine = KeyState::default().write(
            Stamp {
                time: 1 << 62,
                node: me,
            },
            Some(b"v"),
            5,
        );
        let theirs = KeyState::default().write(
            Stamp {
                time: 1 << 62,
                node: NodeId(3),
            },
            None,
            0,
        );
        let never = KeyState::default().write(Stamp::ZERO, Some(b"v"), 0);
        // No real write's stamp lacks a time; one that did names its node.
        let timeless = KeyState::default().write(Stamp { time: 0, node: me }, Some(b"v"), 0);
        for state in [&mine, &theirs, &never, &timeless] {
            let read = |bytes: &[u8]| decode_stored_write(bytes, &tag).expect("a write").2;
            let want = Delta::Key {
                db: 1,
                key: b"k".to_vec(),
                state: state.clone(),
            };
            assert_eq!(record(None, state), full(state), "postcard's bytes");
            assert_eq!(read(&record(Some(me), state)), want);
        }
        assert_eq!(
            record(Some(me), &mine).len() + 9,
            full(&mine).len(),
            "the node's ten-byte varint is one byte"
        );
        assert_eq!(record(Some(me), &theirs), full(&theirs));
    }

    /// A store written by the previous build opens: its key states decode
    /// into the new layout, its other records as they were.
    #[test]
    fn version_2_stores_decode() {
        let mut state = KeyState::default();
        let stamp = Stamp {
            time: 5,
            node: NodeId(1),
        };
        state.merge(&state.incr(stamp, 4, 0.0, false));
        state.merge(&state.expire(stamp.next_after(NodeId(1)), 9_000));
        let x = state.extras.as_deref().expect("extras");
        let v2 = KeyStateV2 {
            reg: state.reg.clone(),
            extras: Some(Box::new(ExtrasV2 {
                expiry: x.expiry,
                counts: x.counts.clone(),
                removed: (*x.removed).clone(),
            })),
        };
        let mut bytes = vec![2];
        bytes.extend(postcard::to_allocvec(&v2).expect("encode"));
        assert_eq!(decode_stored_state(&bytes).expect("v2 state"), state);
        assert!(
            decode::<KeyState>(&bytes).is_err(),
            "the wire takes the current version only"
        );
        assert_eq!(
            decode_stored_state(&encode(&state).expect("encode")).expect("v5 state"),
            state
        );
        // Version 3: the same state with its floor, no collections.
        let v3 = KeyStateV3 {
            reg: state.reg.clone(),
            extras: Some(Box::new(ExtrasV3 {
                expiry: x.expiry,
                counts: x.counts.clone(),
                removed: (*x.removed).clone(),
                floor: x.floor,
            })),
        };
        let mut bytes = vec![3];
        bytes.extend(postcard::to_allocvec(&v3).expect("encode"));
        assert_eq!(decode_stored_state(&bytes).expect("v3 state"), state);

        // A conflict record of version 3: no element.
        let side = crate::Side {
            origin: NodeId(1),
            stamp,
            what: crate::Summary::Deleted,
        };
        let old = ConflictV3 {
            kind: crate::ConflictKind::ConcurrentWrite,
            winner: side.clone(),
            loser: side.clone(),
        };
        let mut bytes = vec![3];
        bytes.extend(postcard::to_allocvec(&(7u64, old)).expect("encode"));
        let (head, c) = decode_stored_conflict::<u64>(&bytes).expect("v3 conflict");
        assert_eq!((head, c.element, c.loser), (7, None, side));

        // Version 4: a collection without lists, as a stored state and as
        // a write in the delta log.
        let mut hash = KeyState::default();
        let stamp = Stamp {
            time: 9,
            node: NodeId(2),
        };
        let delta = hash.coll_write(stamp, Kind::Hash, |c, d| c.hset_into(d, stamp, b"f", b"v"));
        hash.merge(&delta);
        let without_records = hash.clone();
        // A counter's removal record, laid out as version 4 laid it out.
        let counted = hash.coll_write(stamp, Kind::Hash, |c, d| {
            c.incr_into(d, Kind::Hash, b"n", stamp, (1, 0.0, false))
        });
        hash.merge(&counted);
        let later = Stamp { time: 10, ..stamp };
        let reset = hash.coll_write(later, Kind::Hash, |c, d| {
            c.remove_elem_into(d, Kind::Hash, b"n", later)
        });
        hash.merge(&reset);
        assert!(hash.coll().is_some_and(|c| !c.removed.is_empty()));
        let c = hash.coll().expect("a collection");
        let none = Extras::default();
        let as_v4 = |state: &KeyState| KeyStateV4 {
            reg: state.reg.clone(),
            extras: (state.extras.is_some() || state.coll.is_some()).then(|| {
                let x = state.extras.as_deref().unwrap_or(&none);
                Box::new(ExtrasV4 {
                    expiry: x.expiry,
                    counts: x.counts.clone(),
                    removed: (*x.removed).clone(),
                    floor: x.floor,
                    coll: state.coll.as_deref().map(|c| {
                        Box::new(CollV4 {
                            ctx: c.ctx.clone(),
                            at: c.at,
                            kind: c.kind,
                            hash: c
                                .hash
                                .map()
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                            set: c.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                            zset: c.zset.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                            removed: c
                                .removed
                                .iter()
                                .map(|(k, r)| (k.clone(), RemovedV6::of(r)))
                                .collect(),
                            part: c.part,
                        })
                    }),
                })
            }),
        };
        assert!(!c.hash.is_empty());
        let mut bytes = vec![4];
        bytes.extend(postcard::to_allocvec(&as_v4(&hash)).expect("encode"));
        assert_eq!(decode_stored_state(&bytes).expect("v4 state"), hash);
        let tag = [3u8];
        let v4_write = DeltaV4::Key {
            db: 1,
            key: b"k".to_vec(),
            state: as_v4(&delta),
        };
        let mut bytes = vec![4, 3];
        bytes.extend(postcard::to_allocvec(&(NodeId(2), 7u64, v4_write)).expect("encode"));
        let (origin, seq, read) = decode_stored_write(&bytes, &tag).expect("v4 write");
        assert_eq!((origin, seq), (NodeId(2), 7));
        assert_eq!(
            read,
            Delta::Key {
                db: 1,
                key: b"k".to_vec(),
                state: delta.clone()
            }
        );
        bytes[1] = 4;
        assert!(
            decode_stored_write(&bytes, &tag).is_err(),
            "another message kind"
        );
        let mut bytes = vec![FORMAT_VERSION, 3];
        let write = Delta::Key {
            db: 1,
            key: b"k".to_vec(),
            state: delta,
        };
        bytes.extend(postcard::to_allocvec(&(NodeId(2), 7u64, &write)).expect("encode"));
        assert_eq!(
            decode_stored_write(&bytes, &tag).expect("v5 write").2,
            write
        );

        bytes[0] = 5;
        assert_eq!(
            decode_stored_write(&bytes, &tag).expect("v5 write").2,
            write,
            "version 5 laid writes out as 6 does"
        );
        // Without removal records, versions 5 and 6 laid states out as 7 does.
        let mut v5_state = encode(&without_records).expect("encode");
        v5_state[0] = 5;
        assert_eq!(
            decode_stored_state(&v5_state).expect("v5 state"),
            without_records
        );

        // Version 6: removal records without kills, as a stored state and
        // as a write in the delta log.
        let mut records = KeyState::default();
        let (s1, s2) = (
            Stamp {
                time: 20,
                node: NodeId(2),
            },
            Stamp {
                time: 21,
                node: NodeId(3),
            },
        );
        let d1 = records.coll_write(s1, Kind::Hash, |c, d| {
            c.hset_into(d, s1, b"f", b"v");
            c.incr_into(d, Kind::Hash, b"n", s1, (1, 0.0, false));
        });
        records.merge(&d1);
        let d2 = records.coll_write(s2, Kind::Hash, |c, d| {
            c.remove_elem_into(d, Kind::Hash, b"f", s2);
            c.remove_elem_into(d, Kind::Hash, b"n", s2);
        });
        records.merge(&d2);
        let record =
            |s: &KeyState, e: &[u8]| s.coll().and_then(|c| c.removed_of(Kind::Hash, e)).cloned();
        assert!(record(&records, b"f").is_some_and(|r| !r.dead.is_empty()));
        assert!(record(&records, b"n").is_some_and(|r| !r.tallies.is_empty()));
        let without_kills = |state: &KeyState| {
            let mut s = state.clone();
            if let Some(records) = s.coll.as_deref_mut().and_then(|c| c.removed.made_mut()) {
                records
                    .values_mut()
                    .for_each(|r| r.dead = NodeMap::default());
            }
            s
        };
        let as_v6 = |state: &KeyState| KeyStateV6 {
            reg: state.reg.clone(),
            extras: (state.extras.is_some() || state.coll.is_some()).then(|| {
                let x = state.extras.as_deref().unwrap_or(&none);
                Box::new(ExtrasV6 {
                    expiry: x.expiry,
                    counts: x.counts.clone(),
                    removed: (*x.removed).clone(),
                    floor: x.floor,
                    coll: state.coll.as_deref().map(|c| {
                        Box::new(CollV6 {
                            ctx: c.ctx.clone(),
                            at: c.at,
                            kind: c.kind,
                            hash: c.hash.clone(),
                            set: (*c.set).clone(),
                            zset: (*c.zset).clone(),
                            list: (*c.list).clone(),
                            removed: c
                                .removed
                                .iter()
                                .map(|(k, r)| (k.clone(), RemovedV6::of(r)))
                                .collect(),
                            part: c.part,
                        })
                    }),
                })
            }),
        };
        let mut bytes = vec![6];
        bytes.extend(postcard::to_allocvec(&as_v6(&records)).expect("encode"));
        assert_eq!(
            decode_stored_state(&bytes).expect("v6 state"),
            without_kills(&records)
        );
        let v6_write = DeltaV6::Key {
            db: 1,
            key: b"k".to_vec(),
            state: as_v6(&d2),
        };
        let mut bytes = vec![6, 3];
        bytes.extend(postcard::to_allocvec(&(NodeId(3), 8u64, v6_write)).expect("encode"));
        let (_, _, read) = decode_stored_write(&bytes, &tag).expect("v6 write");
        assert_eq!(
            read,
            Delta::Key {
                db: 1,
                key: b"k".to_vec(),
                state: without_kills(&d2)
            }
        );

        let meta: Vec<(NodeId, u64)> = vec![(NodeId(7), 42)];
        let mut old = encode(&meta).expect("encode");
        old[0] = 2;
        assert_eq!(
            decode_stored::<Vec<(NodeId, u64)>>(&old).expect("v2 meta"),
            meta
        );
        old[0] = 1;
        assert!(decode_stored::<Vec<(NodeId, u64)>>(&old).is_err());
    }
}
