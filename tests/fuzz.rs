//! Fuzzing what a node reads from others on the stable toolchain: the RESP
//! request parser (clients) and replication messages inside transport frames
//! (peers). Arbitrary and corrupted input is an error or a value, never a
//! panic; a length a header claims is never reserved before its bytes
//! arrive; and a valid stream cut at any byte boundary reads the same as in
//! one piece. (The frame decoder alone is fuzzed in
//! `transport/src/frame.rs`, the CRDT decoder in `crdt/tests/fuzz.rs`.)
//!
//! Case counts are small so `cargo test` stays fast; `PROPTEST_CASES`
//! raises them for the long run (`bench/fuzz.sh`).

use chorus_testkit::{mutate, mutations, peak_heap_during};

use chorus::connection::read_reserve;
use chorus::replication::max_message_for;
use chorus::replication::wire::{decode_msg, decompress, encode_msg, ReplMsg};
use chorus::resp::{self, Limits, Parsed, Progress, ProtocolError, Source};
use chorus_crdt::codec::{append_coll_part_write, append_one_write, append_varint};
use chorus_crdt::{
    decode, Coll, Delta, Dot, ElemDelta, KeyState, Kind, NodeId, OneWrite, Probe, Stamp, Tally,
    Written, FORMAT_VERSION,
};
use chorus_transport::frame::{append_framed, Deframer};
use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: chorus_testkit::Counting = chorus_testkit::Counting;

/// `bytes` cut at `cuts` (taken modulo its length, plus its end), in order.
fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(bytes.len());
    points.sort_unstable();
    let mut at = 0;
    points
        .into_iter()
        .map(|p| {
            let piece = &bytes[at..p];
            at = p;
            piece
        })
        .collect()
}

// ---------------------------------------------------------------- RESP

/// The server's defaults: `proto-max-bulk-len` 512 MiB.
const LIMITS: Limits = Limits {
    max_bulk: 512 * 1024 * 1024,
    max_args: resp::DEFAULT_MAX_ARGS,
    max_inline: resp::DEFAULT_MAX_INLINE,
    unauthenticated: false,
};

/// Small limits, so that random input reaches them.
const TINY_LIMITS: Limits = Limits {
    max_bulk: 16,
    max_args: 4,
    max_inline: 24,
    unauthenticated: false,
};

/// The bytes RESP gives meaning to, and a few others: random strings of
/// these reach counts, lengths and quoting far more often than random bytes.
const RESP_ALPHABET: &[u8] = b"*$\r\n0123456789-+: \"'\\xAz";

/// A connection's read side as `connection.rs` runs it: bytes arrive in
/// pieces, and after each every whole request in the buffer is parsed; the
/// parser is not tried again before the buffer holds what it said it needs,
/// and then resumes a request where it stopped.
struct Reader {
    limits: Limits,
    input: Vec<u8>,
    need: usize,
    requests: Vec<Vec<Vec<u8>>>,
    error: Option<ProtocolError>,
    ranges: Vec<std::ops::Range<usize>>,
    scratch: Vec<u8>,
    progress: Progress,
}

impl Reader {
    fn new(limits: Limits) -> Reader {
        Reader {
            limits,
            input: Vec::new(),
            need: 1,
            requests: Vec::new(),
            error: None,
            ranges: Vec::new(),
            scratch: Vec::new(),
            progress: Progress::default(),
        }
    }

    fn feed(&mut self, piece: &[u8]) -> Result<(), TestCaseError> {
        if self.error.is_some() {
            return Ok(());
        }
        self.input.extend_from_slice(piece);
        let mut consumed = 0;
        while self.input.len() - consumed >= self.need {
            let buf = &self.input[consumed..];
            match resp::parse_resuming(
                buf,
                &self.limits,
                &mut self.ranges,
                &mut self.scratch,
                &mut self.progress,
            ) {
                Ok(Parsed::Request { len, source }) => {
                    prop_assert!(len > 0 && len <= buf.len());
                    let base: &[u8] = match source {
                        Source::Buffer => &buf[..len],
                        Source::Scratch => &self.scratch,
                    };
                    self.requests.push(
                        self.ranges
                            .iter()
                            .map(|r| base[r.clone()].to_vec())
                            .collect(),
                    );
                    prop_assert!(self
                        .requests
                        .last()
                        .is_some_and(|r| r.len() <= self.limits.max_args));
                    consumed += len;
                    self.need = 1;
                }
                Ok(Parsed::Incomplete { need }) => {
                    prop_assert!(need > buf.len(), "need {} with {} held", need, buf.len());
                    self.need = need;
                    break;
                }
                Err(e) => {
                    self.error = Some(e);
                    break;
                }
            }
        }
        self.input.drain(..consumed);
        Ok(())
    }
}

/// The requests read (each as its arguments), and the protocol error that
/// ended the stream, if one did.
type Outcome = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>);

fn read_in_pieces(limits: Limits, pieces: &[&[u8]]) -> Result<Outcome, TestCaseError> {
    let mut r = Reader::new(limits);
    for piece in pieces {
        r.feed(piece)?;
    }
    Ok((r.requests, r.error))
}

/// A client request: sent as a multibulk array (any bytes) or inline (a
/// line of plain words, as typed into telnet).
#[derive(Debug, Clone)]
enum Request {
    Multibulk(Vec<Vec<u8>>),
    Inline(Vec<String>),
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        3 => proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..5)
            .prop_map(Request::Multibulk),
        1 => proptest::collection::vec("[a-zA-Z0-9]{1,8}", 1..4).prop_map(Request::Inline),
    ]
}

fn wire(requests: &[Request]) -> Vec<u8> {
    let mut wire = Vec::new();
    for request in requests {
        match request {
            Request::Multibulk(args) => {
                wire.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
                for a in args {
                    wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    wire.extend_from_slice(a);
                    wire.extend_from_slice(b"\r\n");
                }
            }
            Request::Inline(words) => {
                wire.extend_from_slice(words.join(" ").as_bytes());
                wire.extend_from_slice(b"\r\n");
            }
        }
    }
    wire
}

fn arguments(requests: &[Request]) -> Vec<Vec<Vec<u8>>> {
    requests
        .iter()
        .map(|r| match r {
            Request::Multibulk(args) => args.clone(),
            Request::Inline(words) => words.iter().map(|w| w.as_bytes().to_vec()).collect(),
        })
        .collect()
}

proptest! {
    /// The parser is a function of the bytes held, so any input, valid or
    /// not, reads the same (the same requests, then the same error if any)
    /// whether it arrives whole or in pieces; every request lies inside the
    /// input and a need for more always asks for more than is held.
    #[test]
    fn resp_arbitrary_bytes_read_the_same_whole_or_in_pieces_without_panicking(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::collection::vec(proptest::sample::select(RESP_ALPHABET), 0..512),
        ],
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        tiny in any::<bool>(),
    ) {
        let limits = if tiny { TINY_LIMITS } else { LIMITS };
        let whole = read_in_pieces(limits, &[&bytes])?;
        prop_assert_eq!(read_in_pieces(limits, &pieces(&bytes, &cuts))?, whole);
    }

    /// Valid pipelines with bytes flipped, inserted, deleted or cut off: the
    /// inputs that get past the first byte into counts and bulk bodies.
    #[test]
    fn resp_mutated_requests_read_the_same_whole_or_in_pieces_without_panicking(
        requests in proptest::collection::vec(request(), 1..5),
        mutations in mutations(1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        tiny in any::<bool>(),
    ) {
        let limits = if tiny { TINY_LIMITS } else { LIMITS };
        let mut bytes = wire(&requests);
        mutate(&mut bytes, &mutations);
        let whole = read_in_pieces(limits, &[&bytes])?;
        prop_assert_eq!(read_in_pieces(limits, &pieces(&bytes, &cuts))?, whole);
        let before_auth = limits.unauthenticated();
        let whole = read_in_pieces(before_auth, &[&bytes])?;
        prop_assert_eq!(read_in_pieces(before_auth, &pieces(&bytes, &cuts))?, whole);
    }
}

/// `write` (a valid write's message) mutated by `mutations`: a message or
/// an error within the heap bound, and a write when not mutated.
fn decodes_if_valid(
    mut bytes: Vec<u8>,
    mutations: &[chorus_testkit::Mutation],
) -> Result<(), TestCaseError> {
    let valid = mutations.is_empty();
    mutate(&mut bytes, mutations);
    decode_checked(&bytes)?;
    if valid {
        let is_write = matches!(decode_msg(&bytes), Ok(ReplMsg::Delta { .. }));
        prop_assert!(is_write, "a valid compact write does not decode");
    }
    Ok(())
}

/// A one-element write or increment in the compact form a link carries
/// (`codec::append_one_write`), as its whole message.
fn compact_write() -> impl Strategy<Value = Vec<u8>> {
    let dot = (any::<u64>(), 1u64..5).prop_map(|(n, node)| Dot {
        n,
        node: NodeId(node),
    });
    (
        (
            1u64..5,
            any::<u64>(),
            0u32..16,
            proptest::collection::vec(any::<u8>(), 0..24),
        ),
        (stamp(), dot.clone(), proptest::collection::vec(dot, 0..6)),
        (
            proptest::collection::vec(any::<u8>(), 0..24),
            0u8..5,
            any::<i64>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((origin, seq, db, key), (stamp, new, replaced), (elem, what, int, ops))| {
                let origin = NodeId(origin);
                let mut out = vec![FORMAT_VERSION, 2];
                append_varint(&mut out, origin.0);
                append_varint(&mut out, seq);
                let one = OneWrite {
                    dot: new,
                    replaced: replaced.into_iter().collect(),
                    counted: None,
                };
                let tally = Tally {
                    epoch: stamp,
                    ops,
                    int,
                    float: int as f64 / 3.0,
                    float_ops: ops / 2,
                };
                let written = match what {
                    0 => Written::Field(&elem),
                    1 => Written::Member,
                    2 => Written::Score(int as f64),
                    3 => Written::Count {
                        kind: Kind::Hash,
                        node: stamp.node,
                        tally,
                    },
                    _ => Written::Count {
                        kind: Kind::ZSet,
                        node: origin,
                        tally,
                    },
                };
                append_one_write(&mut out, origin, db, &key, stamp, &one, &elem, written);
                out
            },
        )
}

proptest! {
    /// Compact writes, valid or mutated: a message or an error, within the
    /// heap bound.
    #[test]
    fn repl_mutated_compact_writes_decode_to_an_error_or_a_message_within_the_heap_bound(
        write in compact_write(),
        mutations in mutations(0..5),
    ) {
        decodes_if_valid(write, &mutations)?;
    }
}

/// A collection write of several elements in the compact form a link
/// carries (`codec::append_coll_part_write`), as its whole message.
fn compact_coll_write() -> impl Strategy<Value = Vec<u8>> {
    let dot = (any::<u64>(), 1u64..5).prop_map(|(n, node)| Dot {
        n,
        node: NodeId(node),
    });
    (
        (1u64..5, any::<u64>(), 0u32..16, stamp(), 0u8..3),
        proptest::collection::vec(dot.clone(), 0..6),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..12),
                dot,
                any::<u64>(),
            ),
            0..5,
        ),
    )
        .prop_map(|((origin, seq, db, stamp, kind), covered, elems)| {
            let origin = NodeId(origin);
            let kind = [Kind::Hash, Kind::Set, Kind::ZSet][kind as usize];
            let mut delta = Coll::delta(stamp, kind);
            for dot in covered {
                delta.covers(dot);
            }
            for (elem, dot, time) in &elems {
                let probe = Probe::new(elem);
                match kind {
                    Kind::Hash => delta.wrote(&probe, *dot, *time, elem),
                    Kind::Set => delta.added(&probe, *dot, *time),
                    _ => delta.scored(&probe, *dot, *time, *time as f64),
                }
            }
            let mut out = vec![FORMAT_VERSION, 2];
            append_varint(&mut out, origin.0);
            append_varint(&mut out, seq);
            assert!(append_coll_part_write(&mut out, origin, db, b"key", &delta));
            out
        })
}

proptest! {
    /// Compact collection writes, valid or mutated: a message or an
    /// error, within the heap bound.
    #[test]
    fn repl_mutated_compact_collection_writes_decode_to_an_error_or_a_message_within_the_heap_bound(
        write in compact_coll_write(),
        mutations in mutations(0..5),
    ) {
        decodes_if_valid(write, &mutations)?;
    }
}

/// The most a compact collection write makes its reader hold per byte:
/// thousands of covered dots (three bytes each) and of elements written
/// (five), each laid out in full before serde reads them.
#[test]
fn repl_a_compact_collection_write_of_thousands_of_dots_decodes_within_the_heap_bound() {
    let stamp = Stamp {
        time: 1 << 40,
        node: NodeId(1),
    };
    for elements in [false, true] {
        let mut delta = Coll::delta(stamp, Kind::Set);
        for i in 1..10_000u64 {
            let dot = Dot {
                n: stamp.time - i,
                node: NodeId(i % 3 + 1),
            };
            if elements {
                delta.added(&Probe::new(&i.to_le_bytes()[..2]), dot, stamp.time);
            } else {
                delta.covers(dot);
            }
        }
        let mut bytes = vec![FORMAT_VERSION, 2];
        append_varint(&mut bytes, 1);
        append_varint(&mut bytes, 7);
        assert!(append_coll_part_write(
            &mut bytes,
            NodeId(1),
            0,
            b"s",
            &delta
        ));
        let (message, heap) = peak_heap_during(|| decode_msg(&bytes));
        assert!(matches!(message, Ok(ReplMsg::Delta { .. })), "{message:?}");
        assert!(
            heap <= HEAP_PER_INPUT_BYTE * bytes.len() + HEAP_FIXED,
            "{heap} heap bytes for {} input bytes",
            bytes.len()
        );
    }
}

/// The most a compact write makes its reader hold per byte: one that
/// replaces thousands of distinct dots (three bytes each) decodes within
/// the heap bound.
#[test]
fn repl_a_compact_write_replacing_thousands_of_dots_decodes_within_the_heap_bound() {
    let stamp = Stamp {
        time: 1 << 40,
        node: NodeId(1),
    };
    let one = OneWrite {
        dot: Dot {
            n: stamp.time,
            node: NodeId(1),
        },
        replaced: (1..10_000u64)
            .map(|i| Dot {
                n: stamp.time - i,
                node: NodeId(i % 3 + 1),
            })
            .collect(),
        counted: None,
    };
    let mut bytes = vec![FORMAT_VERSION, 2];
    append_varint(&mut bytes, 1);
    append_varint(&mut bytes, 7);
    append_one_write(
        &mut bytes,
        NodeId(1),
        0,
        b"h",
        stamp,
        &one,
        b"f",
        Written::Field(b"v"),
    );
    let (message, heap) = peak_heap_during(|| decode_msg(&bytes));
    assert!(matches!(message, Ok(ReplMsg::Delta { .. })), "{message:?}");
    assert!(
        heap <= HEAP_PER_INPUT_BYTE * bytes.len() + HEAP_FIXED,
        "{heap} heap bytes for {} input bytes",
        bytes.len()
    );
}

proptest! {
    // Every case is read once per cut: fewer cases than the default 256
    // (`PROPTEST_CASES` overrides this as it does the default).
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A valid pipeline cut at every byte boundary, and fed a byte at a
    /// time, reads as the requests sent: a need for more never asks past
    /// the end of the request, or the reader would wait for bytes a client
    /// sends only after its reply.
    #[test]
    fn resp_a_valid_pipeline_split_at_every_byte_boundary_reads_the_same(
        requests in proptest::collection::vec(request(), 1..4),
    ) {
        let bytes = wire(&requests);
        let expected = (arguments(&requests), None);
        prop_assert_eq!(&read_in_pieces(LIMITS, &[&bytes])?, &expected);
        for cut in 0..=bytes.len() {
            let split = read_in_pieces(LIMITS, &[&bytes[..cut], &bytes[cut..]])?;
            prop_assert_eq!(&split, &expected, "cut at {}", cut);
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&read_in_pieces(LIMITS, &bytewise)?, &expected);
    }

    /// The read buffer grows towards a bulk a header announced in steps of
    /// at most what has arrived, so a header alone never reserves more than
    /// one read, yet a large value needs few regrowths.
    #[test]
    fn resp_read_room_is_at_most_what_arrived_or_one_read(
        held in 0usize..(1 << 30),
        need in 0usize..(1 << 30),
    ) {
        let room = read_reserve(held, need);
        prop_assert!(room <= held.max(READ_ROOM), "{} bytes of room with {} held", room, held);
        prop_assert!(room > 0);
        if need > held {
            prop_assert!(room >= (need - held).min(held.max(READ_ROOM)));
        }
    }
}

/// What a connection makes room for when it has nothing to go on.
const READ_ROOM: usize = 16 * 1024;

fn parse_one(input: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    resp::parse(input, limits, &mut Vec::new(), &mut Vec::new())
}

#[test]
fn resp_a_1gb_bulk_length_over_a_512mb_limit_is_refused_with_redis_error() {
    let (result, heap) = peak_heap_during(|| parse_one(b"*1\r\n$1073741824\r\n", &LIMITS));
    let err = result.expect_err("a bulk over proto-max-bulk-len");
    assert_eq!(err.message(), "ERR Protocol error: invalid bulk length");
    assert_eq!(heap, 0, "{heap} heap bytes");
}

#[test]
fn resp_a_multibulk_count_over_the_limit_is_refused_with_redis_error() {
    let over = format!("*{}\r\n", resp::DEFAULT_MAX_ARGS + 1);
    let (result, heap) = peak_heap_during(|| parse_one(over.as_bytes(), &LIMITS));
    let err = result.expect_err("a count over the limit");
    assert_eq!(
        err.message(),
        "ERR Protocol error: invalid multibulk length"
    );
    assert_eq!(heap, 0, "{heap} heap bytes");
    let before_auth = LIMITS.unauthenticated();
    assert!(parse_one(b"*1\r\n$16385\r\n", &before_auth).is_err());
    assert!(parse_one(b"*11\r\n", &before_auth).is_err());
}

/// A count line longer than the limit is refused as soon as it is too long,
/// not only while its CR has not come: otherwise the verdict would depend
/// on where the stream was cut (the whole-or-in-pieces property fails on
/// such a line within its default cases).
#[test]
fn resp_an_overlong_count_line_is_refused_whether_or_not_its_cr_has_arrived() {
    for prefix in ["*", "*1\r\n$"] {
        let mut line = prefix.as_bytes().to_vec();
        line.extend(std::iter::repeat_n(b'1', resp::DEFAULT_MAX_INLINE + 1));
        let without_cr = parse_one(&line, &LIMITS).expect_err("too long without its CR");
        line.push(b'\r');
        let with_cr = parse_one(&line, &LIMITS).expect_err("too long with its CR");
        assert_eq!(with_cr, without_cr, "{prefix}");
    }
}

/// A bulk under the limit is waited for, and the room made for it before
/// its bytes come is bounded by what came, not by what the header claims.
#[test]
fn resp_a_bulk_length_under_the_limit_reserves_only_what_arrived_plus_one_read() {
    let header = b"*1\r\n$536870000\r\n";
    let mut ranges = Vec::with_capacity(4);
    let mut scratch = Vec::new();
    let (result, heap) =
        peak_heap_during(|| resp::parse(header, &LIMITS, &mut ranges, &mut scratch));
    let need = match result {
        Ok(Parsed::Incomplete { need }) => need,
        other => panic!("{other:?}"),
    };
    assert_eq!(need, header.len() + 536870000 + 2);
    assert_eq!(heap, 0, "{heap} heap bytes");

    // The buffer as the connection keeps it, bytes arriving a read at a time.
    let mut input: Vec<u8> = Vec::with_capacity(READ_ROOM);
    input.extend_from_slice(header);
    let mut regrowths = 0;
    while input.len() < 8 * 1024 * 1024 {
        let before = input.capacity();
        input.reserve(read_reserve(input.len(), need));
        regrowths += usize::from(input.capacity() != before);
        // Vec's own regrowth may double what was asked for, never more.
        assert!(
            input.capacity() <= 4 * input.len().max(READ_ROOM),
            "{} bytes reserved with {} held",
            input.capacity(),
            input.len()
        );
        let read = (input.capacity() - input.len()).min(64 * 1024);
        input.resize(input.len() + read, b'x');
    }
    assert!(regrowths <= 12, "{regrowths} regrowths for 8 MiB");
}

// ---------------------------------------------------------- replication

/// Heap bytes a message's decode may hold per input byte: a length prefix
/// reserves at most one element per byte left (postcard passes a larger
/// claim on to serde as no size hint at all), and the largest element, a
/// node's tally entry in a key state, is 56 bytes.
const HEAP_PER_INPUT_BYTE: usize = 64;

/// Room for the few boxes of a message (key state, seen set, extras).
const HEAP_FIXED: usize = 1024;

fn stamp() -> impl Strategy<Value = Stamp> {
    (prop_oneof![0u64..300, any::<u64>()], 1u64..5).prop_map(|(time, node)| Stamp {
        time,
        node: NodeId(node),
    })
}

fn version_vector() -> impl Strategy<Value = Vec<(NodeId, u64)>> {
    proptest::collection::vec(((1u64..5).prop_map(NodeId), any::<u64>()), 0..4)
}

/// A key's delta as nodes make them: writes, deletes, increments and
/// expiries merged in any order.
fn key_state() -> impl Strategy<Value = KeyState> {
    proptest::collection::vec(
        (
            stamp(),
            0u8..4,
            proptest::collection::vec(any::<u8>(), 0..32),
            any::<i64>(),
            any::<u64>(),
        ),
        1..4,
    )
    .prop_map(|ops| {
        let mut state = KeyState::default();
        for (stamp, op, value, n, at_ms) in ops {
            let delta = match op {
                0 => state.write(stamp, Some(&value), at_ms),
                1 => state.write(stamp, None, 0),
                2 => state.incr(stamp, n, n as f64 / 3.0, n % 2 == 0),
                _ => state.expire(stamp, at_ms),
            };
            state.merge(&delta);
        }
        state
    })
}

fn delta() -> impl Strategy<Value = Delta> {
    prop_oneof![
        3 => (0u32..16, proptest::collection::vec(any::<u8>(), 0..24), key_state())
            .prop_map(|(db, key, state)| Delta::Key { db, key, state }),
        1 => (proptest::option::of(0u32..16), stamp())
            .prop_map(|(db, stamp)| Delta::Flush { db, stamp }),
    ]
}

fn message() -> impl Strategy<Value = ReplMsg> {
    let node = (1u64..5).prop_map(NodeId);
    prop_oneof![
        1 => (version_vector(), proptest::collection::vec("[a-z0-9]{0,6}", 0..3))
            .prop_map(|(vv, accepts)| ReplMsg::Resume { vv, accepts }),
        1 => (any::<u64>(), any::<u8>(), any::<u64>()).prop_map(|(ask, bits, floor)| ReplMsg::LeafDigestAsk { ask, bits, floor }),
        1 => any::<u64>().prop_map(|ask| ReplMsg::LeafDigestsEnd { ask }),
        1 => proptest::collection::vec(any::<u8>(), 0..64)
            .prop_map(|framed| ReplMsg::Compressed { lz4: lz4_flex::block::compress_prepend_size(&framed) }),
        1 => (any::<u64>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..16), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(after, sharded, channel, message)| ReplMsg::Publish { after, sharded, channel, message }),
        1 => version_vector().prop_map(|vv| ReplMsg::Ack { vv }),
        4 => (node.clone(), any::<u64>(), delta())
            .prop_map(|(origin, seq, delta)| ReplMsg::Delta { origin, seq, delta }),
        1 => delta().prop_map(|delta| ReplMsg::Snapshot { delta }),
        1 => version_vector().prop_map(|vv| ReplMsg::SnapshotDone { vv }),
        1 => (
            node.clone(),
            any::<u64>(),
            stamp(),
            stamp(),
            proptest::collection::vec(node, 0..3),
        )
            .prop_map(|(origin, seq, promise, stable, retired)| ReplMsg::Heartbeat {
                origin,
                seq,
                promise,
                stable,
                retired,
            }),
    ]
}

fn encoded(message: &ReplMsg) -> Result<Vec<u8>, TestCaseError> {
    encode_msg(message).map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Decodes `bytes` as a link does, within the heap bound; a message that
/// decodes encodes again to a message that decodes the same.
fn decode_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (message, heap) = peak_heap_during(|| decode_msg(bytes));
    prop_assert!(
        heap <= HEAP_PER_INPUT_BYTE * bytes.len() + HEAP_FIXED,
        "{} heap bytes for {} input bytes",
        heap,
        bytes.len()
    );
    if let Ok(message) = message {
        let again = encoded(&message)?;
        let twice = decode_msg(&again).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(encoded(&twice)?, again);
    }
    Ok(())
}

/// Every message in `pieces` through a link's deframer, decoded and encoded
/// again for comparison (`ReplMsg` has no equality of its own).
fn receive(pieces: &[&[u8]], max_message: usize) -> Result<Vec<Vec<u8>>, TestCaseError> {
    let mut deframer = Deframer::new(max_message);
    let mut out = Vec::new();
    for piece in pieces {
        deframer.push(piece);
        while let Some(frame) = deframer
            .next_message()
            .map_err(|e| TestCaseError::fail(e.to_string()))?
        {
            let message =
                decode::<ReplMsg>(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            out.push(encoded(&message)?);
        }
    }
    prop_assert!(deframer.is_idle(), "bytes left over");
    Ok(out)
}

proptest! {
    /// Random bytes, with and without a valid version byte in front.
    #[test]
    fn repl_arbitrary_bytes_decode_to_an_error_or_a_message_within_the_heap_bound(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        decode_checked(&bytes)?;
        let mut versioned = vec![FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        decode_checked(&versioned)?;
    }

    /// A compressed batch, valid or mutated, opens to its frames or to an
    /// error, never past the limit it is read with.
    #[test]
    fn repl_compressed_batches_open_or_fail_within_their_limit(
        framed in proptest::collection::vec(any::<u8>(), 0..512),
        mutations in mutations(0..4),
    ) {
        let mut lz4 = lz4_flex::block::compress_prepend_size(&framed);
        mutate(&mut lz4, &mutations);
        let limit = 1024;
        let (opened, heap) = peak_heap_during(|| decompress(&lz4, limit));
        prop_assert!(heap <= limit + HEAP_FIXED, "{} heap bytes", heap);
        if mutations.is_empty() {
            prop_assert_eq!(opened.ok(), Some(framed));
        }
    }

    /// Valid messages with bytes flipped, inserted, deleted or cut off.
    #[test]
    fn repl_mutated_messages_decode_to_an_error_or_a_message_within_the_heap_bound(
        message in message(),
        mutations in mutations(1..5),
    ) {
        let mut bytes = encoded(&message)?;
        mutate(&mut bytes, &mutations);
        decode_checked(&bytes)?;
    }
}

proptest! {
    // Every case is read once per cut: fewer cases than the default 256
    // (`PROPTEST_CASES` overrides this as it does the default).
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Messages framed as a sender frames them, cut at every byte boundary
    /// and fed a byte at a time, decode to the messages sent.
    #[test]
    fn repl_messages_framed_and_split_at_every_byte_boundary_decode_the_same(
        messages in proptest::collection::vec(message(), 1..4),
    ) {
        let sent: Vec<Vec<u8>> = messages.iter().map(encoded).collect::<Result<_, _>>()?;
        let mut framed = bytes::BytesMut::new();
        for m in &sent {
            append_framed(&mut framed, m);
        }
        let max = max_message_for(LIMITS.max_bulk);
        prop_assert_eq!(&receive(&[&framed], max)?, &sent);
        for cut in 0..=framed.len() {
            prop_assert_eq!(&receive(&[&framed[..cut], &framed[cut..]], max)?, &sent, "cut at {}", cut);
        }
        let bytewise: Vec<&[u8]> = framed.chunks(1).collect();
        prop_assert_eq!(&receive(&bytewise, max)?, &sent);
    }
}

/// `n` as a postcard varint.
fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

#[test]
fn repl_a_version_vector_claiming_huge_length_reserves_nothing_for_it() {
    let mut bytes = vec![FORMAT_VERSION, 0]; // ReplMsg::Resume
    bytes.extend(varint(1 << 60));
    bytes.extend([1, 7]); // one entry, then the input ends
    let (result, heap) = peak_heap_during(|| decode::<ReplMsg>(&bytes));
    assert!(result.is_err());
    assert!(heap <= HEAP_FIXED, "{heap} heap bytes");
}

#[test]
fn repl_a_delta_key_claiming_huge_length_is_refused_before_any_reservation() {
    let mut bytes = vec![FORMAT_VERSION, 2, 1, 7, 0, 3]; // Delta from node 1, seq 7, Key in db 3
    bytes.extend(varint(1 << 40));
    bytes.extend(b"key");
    let (result, heap) = peak_heap_during(|| decode::<ReplMsg>(&bytes));
    assert!(result.is_err());
    assert!(heap <= HEAP_FIXED, "{heap} heap bytes");
}
