//! The replication wire protocol: what peers say to each other on a link,
//! encoded with postcard (`chorus_crdt::encode`) inside the transport's
//! length-prefixed frames.
//!
//! On a link the dialing node (the sender) opens the live stream; the
//! accepting node (the receiver) opens the back stream and first sends
//! `Resume`, then `Ack`s. The sender sends `Delta`s and `Heartbeat`s on the
//! live stream, and a state transfer (`SnapshotBegin`, `Snapshot`s, then
//! `SnapshotDone`) on a
//! bulk stream of its own, so neither blocks the other. When the receiver
//! has everything the sender applied, the sender offers its `Digest`; a
//! receiver whose digest differs asks (`RepairAsk`) and gets the differing
//! buckets as a scoped transfer (docs/architecture.md, "Repair"). A sender
//! whose receiver lacks writes no log holds first asks for the receiver's
//! leaf digests (`LeafDigestAsk`) and transfers only the leaves that differ.

use chorus_crdt::codec::{
    append_bytes, append_coll_delta, append_plain_key_delta, append_state, append_tally_delta,
    append_varint, Scratch, MAX_VARINT,
};
use chorus_crdt::digest::{Buckets, DbDigest, LeafDigest, Scope, TransferScope};
use chorus_crdt::{encode, Delta, KeyState, NodeId, Stamp};
use serde::{Deserialize, Serialize};

/// What peers say to each other on a link.
#[derive(Debug, Serialize, Deserialize)]
pub enum ReplMsg {
    /// Receiver → sender, first on a link: what it has applied per origin,
    /// and the compressions of the live stream it reads (`"lz4"`).
    Resume {
        vv: Vec<(NodeId, u64)>,
        accepts: Vec<String>,
    },
    /// Receiver → sender, periodically: as `Resume`, less the retired lives
    /// it settled (the sender keeps what earlier messages said of those).
    Ack {
        vv: Vec<(NodeId, u64)>,
    },
    /// One write of `origin`, numbered `seq`.
    Delta {
        origin: NodeId,
        seq: u64,
        delta: Delta,
    },
    /// Part of a state transfer.
    Snapshot {
        delta: Delta,
    },
    /// End of a state transfer: it covered every origin's writes up to these
    /// sequence numbers.
    SnapshotDone {
        vv: Vec<(NodeId, u64)>,
    },
    /// Sent in order after `origin`'s writes up to `seq`: every later write
    /// of `origin` is stamped after `promise`. `stable` is the sender's
    /// stable stamp (see [`super::gc::GcView`]); `retired` the earlier lives of
    /// restarted nodes it knows of, which never write again (all of them on
    /// a link's first heartbeat, then those it has not settled yet). Also
    /// passed on by other nodes, with `retired` empty, once the receiver
    /// acknowledged `origin`'s writes up to `seq` (`Core::plan`).
    Heartbeat {
        origin: NodeId,
        seq: u64,
        promise: Stamp,
        stable: Stamp,
        retired: Vec<NodeId>,
    },
    /// First of a state transfer: the sender had applied every write of each
    /// node here stamped at or below its stamp (see `Core::holds`), so what
    /// it no longer has of those was deleted and collected. With a `scope`,
    /// a repair: only the keys in it follow, and its `SnapshotDone` covers
    /// no writes.
    SnapshotBegin {
        held: Vec<(NodeId, Stamp)>,
        scope: Option<TransferScope>,
        /// What the sender had applied when it began (its own writes up to
        /// the newest): a receiver takes writes of a closed member it never
        /// received only from a sender whose state holds every delete it
        /// collected past them (`Core::carries`).
        vv: Vec<(NodeId, u64)>,
    },
    /// Sender → receiver, in order on the live stream, when the receiver had
    /// acknowledged everything the sender applied: the sender's keyspace
    /// digest, taken with `vv` applied (its own writes included), every
    /// state compacted to the GC floor `floor` (a step of it, see
    /// `keyspace::GC_STEP`). A receiver that applied `vv`, whose own floor
    /// is not past `floor` (it reads copies compacted to it) and whose
    /// digest holds at most a few writes `vv` does not count compares (see
    /// `RepairAsk`).
    /// Buckets changed while the digest was taken (`unsettled`) may hold
    /// writes it missed: the receiver leaves them out.
    Digest {
        vv: Vec<(NodeId, u64)>,
        floor: u64,
        unsettled: Buckets,
        dbs: Vec<DbDigest>,
    },
    /// Receiver → sender: with the same writes applied, our digests differ
    /// here; send what you hold of it (a repair, `SnapshotBegin` with scope).
    RepairAsk {
        scope: Scope,
    },
    /// Sender → receiver, on the live stream, when the receiver lacks writes
    /// no log here holds: send your digest split into `2^bits` leaves per
    /// database, so that the transfer carries only the leaves that differ.
    /// `ask` numbers the request; the answers carry it. Every state is
    /// read compacted to `floor` (the sender's GC floor), or to the
    /// receiver's if that is past it.
    LeafDigestAsk {
        ask: u64,
        bits: u8,
        floor: u64,
    },
    /// Receiver → sender: one database's leaf digest (only databases that
    /// hold something), then `LeafDigestsEnd`.
    LeafDigest {
        ask: u64,
        digest: LeafDigest,
    },
    LeafDigestsEnd {
        ask: u64,
    },
    /// Sender → receiver, on the live stream of a link whose receiver
    /// accepts lz4 and whose sender has `repl-compression lz4`: frames as
    /// the stream would carry them (transport-framed, back to back),
    /// compressed as one lz4 block with its length (u32 LE) in front.
    Compressed {
        #[serde(with = "serde_bytes")]
        lz4: Vec<u8>,
    },
    /// Sender → receiver, on the live stream after the sender's writes made
    /// before it: a PUBLISH (or SPUBLISH, `sharded`) made on the sender,
    /// for the receiver's subscribers. Never stored, never passed on.
    /// `after`: the sender's newest write then, which the receiver applies
    /// before delivering (it may come by a state transfer's bulk stream).
    Publish {
        after: u64,
        sharded: bool,
        #[serde(with = "serde_bytes")]
        channel: Vec<u8>,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
}

impl ReplMsg {
    /// How a `Delta` message's encoding starts after the format version:
    /// its variant's tag (so the delta log, which holds these, can read
    /// the ones an earlier build wrote; see `decode_stored_write`).
    pub fn delta_tag() -> Vec<u8> {
        let delta = Delta::Flush {
            db: None,
            stamp: Stamp::ZERO,
        };
        let fields = (NodeId(0), 0u64, delta);
        let whole = encode(&ReplMsg::Delta {
            origin: fields.0,
            seq: fields.1,
            delta: fields.2.clone(),
        });
        match (whole, encode(&fields)) {
            // Each is the format version, then its body.
            (Ok(whole), Ok(tail)) => whole[1..whole.len() + 1 - tail.len()].to_vec(),
            _ => Vec::new(),
        }
    }
}

/// The bytes of `ReplMsg::Delta { origin, seq, delta }` are
/// [`delta_head`]`(origin, seq)` followed by the delta's body
/// ([`append_key_body`], [`append_tally_body`], [`append_flush_body`]), laid
/// out without serde: a local write's body is encoded once, when the write
/// is made, and numbered when its batch is published. A test holds them to
/// the owned message's encoding.
pub(crate) type DeltaHead = Scratch<{ 2 + 2 * MAX_VARINT }>;

/// The room [`Heads::put`] needs: the fixed start's whole array, which
/// holds the number's varint slot past the start (version, variant and
/// the origin's varint take at most 2 + MAX_VARINT bytes of it).
pub(crate) const HEAD_ROOM: usize = 2 + 2 * MAX_VARINT;

/// `ReplMsg::Delta`'s variant number.
pub(crate) const DELTA_VARIANT: u32 = 2;
const _: () = assert!(chorus_crdt::FORMAT_VERSION < 0x80 && DELTA_VARIANT < 0x80);

/// The [`delta_head`]s of one origin's writes, its id's varint put once
/// (a local write's head is numbered on every write).
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    origin: NodeId,
    start: DeltaHead,
}

impl Heads {
    pub(crate) fn new(origin: NodeId) -> Heads {
        let mut start = DeltaHead::new();
        // Version byte, variant: both under 128, one byte each.
        start.byte(chorus_crdt::FORMAT_VERSION);
        start.byte(DELTA_VARIANT as u8);
        start.varint(origin.0);
        Heads { origin, start }
    }

    pub(crate) fn origin(&self) -> NodeId {
        self.origin
    }

    /// Appends the head of write `seq` to `out`: the fixed start copied
    /// from here, then the number (not built on the stack and copied out:
    /// that copy read bytes just stored, stalling store forwarding, in
    /// every staged write).
    #[inline(always)]
    pub(crate) fn append(&self, out: &mut Vec<u8>, seq: u64) {
        self.start.append_to(out);
        chorus_crdt::codec::append_varint(out, seq);
    }

    /// Writes the head of write `seq` at the start of `out`, which holds
    /// at least [`HEAD_ROOM`] bytes; returns its length.
    #[inline(always)]
    pub(crate) fn put(&self, out: &mut [u8], seq: u64) -> usize {
        let mut w = chorus_crdt::codec::Slot::new(out);
        w.prefix(self.start.raw(), self.start.len());
        w.varint(seq);
        w.len()
    }

    /// The head of write `seq`.
    #[inline(always)]
    pub(crate) fn of(&self, seq: u64) -> DeltaHead {
        let mut head = self.start;
        head.varint(seq);
        head
    }
}

#[cfg(test)]
pub(crate) fn delta_head(origin: NodeId, seq: u64) -> DeltaHead {
    Heads::new(origin).of(seq)
}

/// `Delta::Key { db, key, state }`.
pub(crate) fn append_key_body(
    out: &mut Vec<u8>,
    db: u32,
    key: &[u8],
    state: &KeyState,
) -> Result<(), chorus_crdt::EncodeError> {
    append_key_body_of(out, None, db, key, state)
}

/// `Delta::Key { db, key, state }` of a write of `origin`'s, to follow
/// its [`delta_head`]: a register stamp of `origin`'s is left implied
/// (see [`decode_msg`]).
pub(crate) fn append_own_key_body(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    state: &KeyState,
) -> Result<(), chorus_crdt::EncodeError> {
    append_key_body_of(out, Some(origin), db, key, state)
}

fn append_key_body_of(
    out: &mut Vec<u8>,
    origin: Option<NodeId>,
    db: u32,
    key: &[u8],
    state: &KeyState,
) -> Result<(), chorus_crdt::EncodeError> {
    if append_plain_key_delta(out, origin, db, key, state) {
        return Ok(());
    }
    if let Some(origin) = origin {
        if chorus_crdt::codec::append_coll_write(out, origin, db, key, state) {
            return Ok(());
        }
    }
    let mut fields = Scratch::<{ 1 + 2 * MAX_VARINT }>::new();
    fields.byte(0);
    fields.varint(db as u64);
    fields.varint(key.len() as u64);
    fields.append_to(out);
    out.extend_from_slice(key);
    append_state(out, state)
}

/// `ReplMsg::Snapshot`'s variant number.
const SNAPSHOT_VARIANT: u8 = 3;
const _: () = assert!(SNAPSHOT_VARIANT < 0x80);

/// The bytes of `ReplMsg::Snapshot { delta: Delta::Key { db, key, state } }`,
/// without copying the state into an owned message: a state transfer sends
/// every key so.
pub(crate) fn snapshot_key_msg(
    db: u32,
    key: &[u8],
    state: &KeyState,
) -> Result<Vec<u8>, chorus_crdt::EncodeError> {
    let mut out = Vec::with_capacity(24 + key.len());
    out.extend_from_slice(&[chorus_crdt::FORMAT_VERSION, SNAPSHOT_VARIANT]);
    append_key_body(&mut out, db, key, state)?;
    Ok(out)
}

/// `Delta::Key` of a key state holding only the collection part `delta`,
/// a write of `origin`'s: in the compact form where it has one
/// (`codec::append_coll_part_write`).
pub(crate) fn append_coll_body(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    delta: &chorus_crdt::Coll,
) {
    if chorus_crdt::codec::append_coll_part_write(out, origin, db, key, delta) {
        return;
    }
    out.push(0);
    append_varint(out, db as u64);
    append_bytes(out, key);
    append_coll_delta(out, delta);
}

/// A one-element write's delta (what [`append_coll_body`] lays out of
/// the delta `Coll` it would have filled) in its compact form, for a
/// write of `origin`'s (`codec::append_one_write`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn append_one_body(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    stamp: Stamp,
    one: &chorus_crdt::OneWrite,
    elem: &[u8],
    written: chorus_crdt::Written<'_>,
) {
    chorus_crdt::codec::append_one_write(out, origin, db, key, stamp, one, elem, written);
}

/// A write of several elements' delta (what [`append_coll_body`] lays
/// out of the delta `Coll` it would have filled) in the compact form, for
/// a write of `origin`'s (`codec::append_many_write`).
pub(crate) fn append_many_body(
    out: &mut Vec<u8>,
    origin: NodeId,
    db: u32,
    key: &[u8],
    stamp: Stamp,
    kind: chorus_crdt::Kind,
    many: &chorus_crdt::ManyWrite,
) {
    if !chorus_crdt::codec::append_many_write(out, origin, db, key, stamp, kind, many) {
        append_coll_body(out, origin, db, key, &many.delta(stamp, kind));
    }
}

/// `Delta::Key` of [`KeyState::tally_delta`]`(node, tally)`.
pub(crate) fn append_tally_body(
    out: &mut Vec<u8>,
    db: u32,
    key: &[u8],
    node: NodeId,
    tally: chorus_crdt::Tally,
) {
    out.push(0);
    append_varint(out, db as u64);
    append_bytes(out, key);
    append_tally_delta(out, node, tally);
}

/// `Delta::Flush { db, stamp }`.
pub(crate) fn append_flush_body(out: &mut Vec<u8>, db: Option<u32>, stamp: Stamp) {
    out.push(1);
    match db {
        None => out.push(0),
        Some(db) => {
            out.push(1);
            append_varint(out, db as u64);
        }
    }
    append_varint(out, stamp.time);
    append_varint(out, stamp.node.0);
}

/// The compression a receiver reads, named in its `Resume`.
pub const LZ4: &str = "lz4";

/// Batches smaller than this go uncompressed: lz4 gains little on them.
pub const COMPRESS_FROM: usize = 512;

/// `ReplMsg::Compressed`'s variant, read from a frame's leading bytes.
const COMPRESSED_VARIANT: u32 = 12;

/// Whether `frame` is a `ReplMsg::Compressed` (without decoding it).
pub fn is_compressed(frame: &[u8]) -> bool {
    matches!(
        chorus_crdt::decode_prefix::<u32>(frame),
        Ok(COMPRESSED_VARIANT)
    )
}

/// Compresses framed bytes into one `ReplMsg::Compressed` frame payload.
pub fn compress(framed: &[u8]) -> Result<Vec<u8>, chorus_crdt::codec::EncodeError> {
    encode(&ReplMsg::Compressed {
        lz4: lz4_flex::block::compress_prepend_size(framed),
    })
}

/// Why a compressed frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Decompress {
    #[error("a compressed batch claims {0} bytes, more than a link carries")]
    TooLarge(usize),
    #[error("a compressed batch does not decompress: {0}")]
    Corrupt(String),
}

/// The framed bytes of a `ReplMsg::Compressed` block, refusing one that
/// claims more than `max` bytes before allocating them.
pub fn decompress(lz4: &[u8], max: usize) -> Result<Vec<u8>, Decompress> {
    let Some(len) = lz4.get(..4) else {
        return Err(Decompress::Corrupt("no length".into()));
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    // lz4 expands a block 255 times at most: a claim past that is a lie,
    // refused before the decoder allocates what it claims.
    if len > max.min(lz4.len().saturating_mul(255).saturating_add(64)) {
        return Err(Decompress::TooLarge(len));
    }
    lz4_flex::block::decompress_size_prepended(lz4).map_err(|e| Decompress::Corrupt(e.to_string()))
}

/// What a receiver names in its `Resume` when it reads own puts
/// ([`chorus_crdt::codec::put_own_put`]): a sender's plain writes of its
/// own then go as those, a third shorter than `ReplMsg::Delta`. To a
/// receiver that does not name it (an earlier build), the sender widens
/// them back ([`widen_framed`]).
pub const OWN_PUT: &str = "own-put";

/// Decodes a message that `peer` sent: an own put is `peer`'s write
/// ([`chorus_crdt::codec::put_own_put`]), anything else as [`decode_msg`]
/// reads it.
pub fn decode_from(peer: NodeId, bytes: &[u8]) -> Result<ReplMsg, chorus_crdt::DecodeError> {
    if chorus_crdt::codec::is_own_put(bytes) {
        let (seq, delta) = chorus_crdt::codec::decode_own_put(bytes, peer)?;
        return Ok(ReplMsg::Delta {
            origin: peer,
            seq,
            delta,
        });
    }
    decode_msg(bytes)
}

/// `payload` as every reader takes it: an own put of `origin`'s as the
/// `ReplMsg::Delta` of the same write (for the delta log, for a peer of an
/// earlier build, for passing on to a third node, none of which knows the
/// origin from the link); anything else as it is.
pub(crate) fn widen(payload: &[u8], origin: NodeId) -> Result<std::borrow::Cow<'_, [u8]>, String> {
    if !chorus_crdt::codec::is_own_put(payload) {
        return Ok(std::borrow::Cow::Borrowed(payload));
    }
    let (seq, delta) =
        chorus_crdt::codec::decode_own_put(payload, origin).map_err(|e| e.to_string())?;
    let Delta::Key { db, key, state } = delta else {
        unreachable!("an own put reads as a key's delta");
    };
    let mut out = Vec::with_capacity(payload.len() + 2 * MAX_VARINT);
    Heads::new(origin).append(&mut out, seq);
    append_own_key_body(&mut out, origin, db, &key, &state).map_err(|e| e.to_string())?;
    Ok(std::borrow::Cow::Owned(out))
}

/// Pre-framed chunks of `origin`'s writes with every own put among them
/// widened ([`widen`]), framed again, for a receiver that does not read
/// own puts. `None` when there was none to widen.
pub(crate) fn widen_framed(
    chunks: &[bytes::Bytes],
    origin: NodeId,
    max_message: usize,
) -> Result<Option<bytes::Bytes>, String> {
    let mut frames = chorus_transport::frame::Deframer::new(max_message);
    let mut out = bytes::BytesMut::new();
    let mut widened = false;
    for chunk in chunks {
        frames.push(chunk);
        while let Some(payload) = frames.next_message().map_err(|e| e.to_string())? {
            let wide = widen(&payload, origin)?;
            widened |= matches!(wide, std::borrow::Cow::Owned(_));
            chorus_transport::frame::append_framed(&mut out, &wide);
        }
    }
    if !frames.is_idle() {
        return Err("the backlog's chunks end mid-frame".into());
    }
    Ok(widened.then(|| out.freeze()))
}

/// Decodes a message off a link: a write's register stamp or dots its
/// origin left implied ([`append_own_key_body`], [`append_one_body`])
/// name the origin again.
pub fn decode_msg(bytes: &[u8]) -> Result<ReplMsg, chorus_crdt::DecodeError> {
    if let [chorus_crdt::FORMAT_VERSION, variant, fields @ ..] = bytes {
        if u32::from(*variant) == DELTA_VARIANT {
            let (origin, seq, delta) = chorus_crdt::decode_write_fields(fields)?;
            return Ok(ReplMsg::Delta { origin, seq, delta });
        }
    }
    chorus_crdt::decode::<ReplMsg>(bytes)
}

/// Encodes a message for a frame.
pub fn encode_msg(msg: &ReplMsg) -> Result<Vec<u8>, chorus_crdt::codec::EncodeError> {
    encode(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head appended or put in place holds what the message's encoding
    /// starts with, for numbers and origins of every varint length.
    #[test]
    fn an_appended_head_is_the_encodings_start() {
        for origin in [1u64, 127, 128, 1 << 35, 1 << 56, u64::MAX] {
            let heads = Heads::new(NodeId(origin));
            for seq in [
                1u64,
                127,
                128,
                16_383,
                16_384,
                1 << 40,
                1 << 56,
                1 << 63,
                u64::MAX,
            ] {
                let mut appended = b"before".to_vec();
                heads.append(&mut appended, seq);
                let message = encode(&ReplMsg::Delta {
                    origin: NodeId(origin),
                    seq,
                    delta: Delta::Flush {
                        db: None,
                        stamp: Stamp::ZERO,
                    },
                })
                .unwrap();
                let head = &appended[b"before".len()..];
                assert!(message.starts_with(head), "{origin} {seq}");
                assert_eq!(head, delta_head(NodeId(origin), seq).as_slice());
                let mut room = [0xaa; HEAD_ROOM];
                let put = heads.put(&mut room, seq);
                assert_eq!(&room[..put], head, "put in place: {origin} {seq}");
            }
        }
    }

    #[test]
    fn a_logged_write_reads_back_through_its_tag() {
        let write = ReplMsg::Delta {
            origin: NodeId(3),
            seq: 300,
            delta: Delta::Flush {
                db: Some(2),
                stamp: Stamp {
                    time: 1 << 40,
                    node: NodeId(3),
                },
            },
        };
        let bytes = encode(&write).unwrap();
        let tag = ReplMsg::delta_tag();
        assert!(!tag.is_empty());
        let (origin, seq, delta) = chorus_crdt::decode_stored_write(&bytes, &tag).unwrap();
        assert_eq!((origin, seq), (NodeId(3), 300));
        let ReplMsg::Delta { delta: sent, .. } = write else {
            unreachable!()
        };
        assert_eq!(delta, sent);
        let other = encode(&ReplMsg::Ack { vv: Vec::new() }).unwrap();
        assert!(chorus_crdt::decode_stored_write(&other, &tag).is_err());
    }

    #[test]
    fn a_compressed_batch_reads_back_as_the_frames_it_holds() {
        let mut framed = bytes::BytesMut::new();
        let big = vec![7u8; 3 << 20];
        let messages: Vec<Vec<u8>> = vec![b"one".to_vec(), big, b"three".repeat(100)];
        for m in &messages {
            chorus_transport::frame::append_framed(&mut framed, m);
        }
        let frame = compress(&framed).unwrap();
        assert!(is_compressed(&frame));
        assert!(
            frame.len() < framed.len() / 20,
            "{} of {}",
            frame.len(),
            framed.len()
        );
        let Ok(ReplMsg::Compressed { lz4 }) = chorus_crdt::decode::<ReplMsg>(&frame) else {
            panic!("not a compressed batch")
        };
        let back = decompress(&lz4, 8 << 20).unwrap();
        assert_eq!(back, framed.to_vec());
        let mut deframer = chorus_transport::frame::Deframer::new(8 << 20);
        deframer.push(&back);
        for m in &messages {
            assert_eq!(deframer.next_message().unwrap().unwrap().to_vec(), *m);
        }
        // A claim past the limit is refused before anything is allocated;
        // garbage is an error, never a panic.
        assert!(matches!(
            decompress(&lz4, 1 << 20),
            Err(Decompress::TooLarge(_))
        ));
        assert!(decompress(&[0xff, 0xff, 0, 0, 1, 2, 3], 1 << 20).is_err());
        // A few bytes claiming a megabyte: refused, not allocated.
        assert!(matches!(
            decompress(&[0, 0, 16, 0, 1, 2, 3, 4], 1 << 30),
            Err(Decompress::TooLarge(_))
        ));
        assert!(decompress(&[1], 1 << 20).is_err());
        let other = encode(&ReplMsg::LeafDigestsEnd { ask: 1 }).unwrap();
        assert!(!is_compressed(&other));
    }

    /// The point of the compact form: a one-field HSET as a client makes
    /// it (a random node id, a clock's time, one older write replaced)
    /// takes less than half the bytes of its full delta.
    #[test]
    fn a_one_field_hset_travels_in_less_than_half_its_full_delta() {
        use chorus_crdt::{Coll, Dot, ElemDelta, Kind, OneWrite, Probe, Written};
        let node = NodeId(0x9e37_79b9_7f4a_7c15);
        let stamp = Stamp {
            time: 0x67a1_2345_6789_abcd,
            node,
        };
        let old = Dot {
            node,
            n: stamp.time - (1 << 32),
        };
        let new = Dot {
            node,
            n: stamp.time,
        };
        let (field, value) = (b"element:000000012345", b"v");
        let mut delta = Coll::delta(stamp, Kind::Hash);
        delta.covers(old);
        delta.wrote(&Probe::new(field), new, stamp.time, value);
        let mut full = delta_head(node, 123_456).as_slice().to_vec();
        append_full_coll_body(&mut full, 0, b"myhash", &delta);
        let one = OneWrite {
            dot: new,
            replaced: [old].into_iter().collect(),
            counted: None,
        };
        let mut compact = delta_head(node, 123_456).as_slice().to_vec();
        append_one_body(
            &mut compact,
            node,
            0,
            b"myhash",
            stamp,
            &one,
            field,
            Written::Field(value),
        );
        assert!(
            2 * compact.len() < full.len(),
            "compact {} bytes, full {}",
            compact.len(),
            full.len()
        );
        let read = |bytes: &[u8]| match decode_msg(bytes) {
            Ok(ReplMsg::Delta { delta, .. }) => delta,
            other => panic!("not a write: {other:?}"),
        };
        assert_eq!(read(&compact), read(&full));
    }

    /// `Delta::Key` of the collection part `delta` as serde lays it out.
    fn append_full_coll_body(out: &mut Vec<u8>, db: u32, key: &[u8], delta: &chorus_crdt::Coll) {
        out.push(0);
        append_varint(out, db as u64);
        append_bytes(out, key);
        chorus_crdt::codec::append_coll_delta(out, delta);
    }

    fn read_write(bytes: &[u8]) -> Delta {
        match decode_msg(bytes) {
            Ok(ReplMsg::Delta { delta, .. }) => delta,
            other => panic!("not a write: {other:?}"),
        }
    }

    /// A three-field HSET that makes its key, as a session store writes
    /// it: its compact form takes under 40% of the full one's bytes (103
    /// of 278, of which 50 are the key, fields and values), and so does
    /// the next one, which replaces all three fields.
    #[test]
    fn a_three_field_hset_travels_in_under_40_percent_of_its_full_delta() {
        use chorus_crdt::Kind;
        let node = NodeId(0x9e37_79b9_7f4a_7c15);
        let first = Stamp {
            time: 0x67a1_2345_6789_abcd,
            node,
        };
        let hset = |state: &KeyState, stamp: Stamp| {
            state.coll_write(stamp, Kind::Hash, |c, d| {
                for (field, value) in [
                    (&b"user"[..], &b"1042"[..]),
                    (b"ts", b"1733320000"),
                    (b"ip", b"10.0.0.7"),
                ] {
                    c.hset_into(d, stamp, field, value);
                }
            })
        };
        let made = hset(&KeyState::default(), first);
        let mut state = KeyState::default();
        state.merge(&made);
        let then = hset(
            &state,
            Stamp {
                time: first.time + (5 << 16),
                node,
            },
        );
        for delta in [&made, &then] {
            let mut full = delta_head(node, 9).as_slice().to_vec();
            append_key_body(&mut full, 0, b"session:000000012345", delta).unwrap();
            let mut compact = delta_head(node, 9).as_slice().to_vec();
            append_own_key_body(&mut compact, node, 0, b"session:000000012345", delta).unwrap();
            assert!(
                5 * compact.len() < 2 * full.len(),
                "compact {} bytes, full {}",
                compact.len(),
                full.len()
            );
            assert_eq!(read_write(&compact), read_write(&full));
            // The in-place path's delta, its collection part alone.
            let coll = delta.coll().expect("a collection delta");
            let mut part = delta_head(node, 9).as_slice().to_vec();
            append_coll_body(&mut part, node, 0, b"session:000000012345", coll);
            let mut part_full = delta_head(node, 9).as_slice().to_vec();
            append_full_coll_body(&mut part_full, 0, b"session:000000012345", coll);
            assert!(
                5 * part.len() < 2 * part_full.len(),
                "compact {} bytes, full {}",
                part.len(),
                part_full.len()
            );
            assert_eq!(read_write(&part), read_write(&part_full));
        }
    }

    fn varint_len(n: u64) -> usize {
        let mut v = Vec::new();
        chorus_crdt::codec::append_varint(&mut v, n);
        v.len()
    }

    proptest::proptest! {
        /// A write laid out from its parts encodes as the owned message.
        #[test]
        fn a_write_laid_out_by_hand_encodes_as_the_owned_message(
            origin in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
            db in proptest::prelude::any::<u32>(),
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            int in proptest::prelude::any::<i64>(),
            flush_db in proptest::option::of(proptest::prelude::any::<u32>()),
        ) {
            let node = NodeId(origin | 1);
            let mut state = KeyState::default();
            let write = state.write(Stamp { time: 9, node }, Some(b"value"), 1234);
            state.merge(&write);
            let incr = state.incr(Stamp { time: 10, node }, 3, 0.5, true);
            let tally = state.incr_in_place(Stamp { time: 11, node }, int, 0.0, false);
            let owned = |delta: Delta| encode(&ReplMsg::Delta { origin: node, seq, delta }).unwrap();
            let key_delta = |state: &KeyState| Delta::Key { db, key: key.clone(), state: state.clone() };
            for delta in [&write, &incr, &state] {
                let mut direct = delta_head(node, seq).as_slice().to_vec();
                append_key_body(&mut direct, db, &key, delta).unwrap();
                proptest::prop_assert_eq!(&direct, &owned(key_delta(delta)));
                // A write under its origin's name: the same, less the
                // register stamp's node, which reads back.
                let mut own = delta_head(node, seq).as_slice().to_vec();
                append_own_key_body(&mut own, node, db, &key, delta).unwrap();
                let implied = delta.reg.stamp.node == node && delta.reg.seen.is_none()
                    && delta.extras.is_none() && delta.coll.is_none();
                let node_len = if implied { direct.len() - own.len() + 1 } else { 1 };
                proptest::prop_assert_eq!(node_len, if implied { varint_len(node.0) } else { 1 });
                let Ok(ReplMsg::Delta { origin, seq: read_seq, delta: read }) = decode_msg(&own) else {
                    panic!("an own write does not decode");
                };
                proptest::prop_assert_eq!((origin, read_seq), (node, seq));
                proptest::prop_assert_eq!(read, key_delta(delta));
            }
            // A write of another node's register: named in full.
            let theirs = KeyState::default().write(Stamp { time: 9, node: NodeId(node.0 ^ 2) }, Some(b"v"), 0);
            let mut own = delta_head(node, seq).as_slice().to_vec();
            append_own_key_body(&mut own, node, db, &key, &theirs).unwrap();
            proptest::prop_assert_eq!(&own, &owned(key_delta(&theirs)));
            for delta in [&write, &incr, &state] {
                let snapshot = encode(&ReplMsg::Snapshot { delta: key_delta(delta) }).unwrap();
                proptest::prop_assert_eq!(snapshot_key_msg(db, &key, delta).unwrap(), snapshot);
            }
            let mut direct = delta_head(node, seq).as_slice().to_vec();
            append_tally_body(&mut direct, db, &key, node, tally);
            proptest::prop_assert_eq!(direct, owned(key_delta(&KeyState::tally_delta(node, tally))));
            let hset = KeyState::default().coll_write(Stamp { time: 12, node }, chorus_crdt::Kind::Hash, |c, d| {
                c.hset_into(d, Stamp { time: 12, node }, &key, b"value");
            });
            let hset = KeyState { extras: None, ..hset };
            let mut direct = delta_head(node, seq).as_slice().to_vec();
            append_full_coll_body(&mut direct, db, &key, hset.coll().expect("a collection delta"));
            proptest::prop_assert_eq!(&direct, &owned(key_delta(&hset)));
            // Sent under its origin's name, in the compact form: the same.
            let mut compact = delta_head(node, seq).as_slice().to_vec();
            append_coll_body(&mut compact, node, db, &key, hset.coll().expect("a collection delta"));
            proptest::prop_assert!(compact.len() < direct.len());
            proptest::prop_assert_eq!(read_write(&compact), read_write(&direct));
            // The same write in its compact form reads back as that delta.
            let one = chorus_crdt::OneWrite {
                dot: chorus_crdt::Dot { node, n: 12 },
                ..chorus_crdt::OneWrite::default()
            };
            let mut compact = delta_head(node, seq).as_slice().to_vec();
            let written = chorus_crdt::Written::Field(b"value");
            append_one_body(&mut compact, node, db, &key, Stamp { time: 12, node }, &one, &key, written);
            let Ok(ReplMsg::Delta { origin, seq: read_seq, delta: read }) = decode_msg(&compact) else {
                panic!("a compact write does not decode");
            };
            proptest::prop_assert_eq!((origin, read_seq), (node, seq));
            proptest::prop_assert_eq!(read, key_delta(&hset));
            let stamp = Stamp { time: seq ^ 77, node };
            let mut direct = delta_head(node, seq).as_slice().to_vec();
            append_flush_body(&mut direct, flush_db, stamp);
            proptest::prop_assert_eq!(direct, owned(Delta::Flush { db: flush_db, stamp }));
        }
    }
}
