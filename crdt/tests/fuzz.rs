//! Fuzzing the CRDT decoder (`decode::<KeyState>` for the store,
//! `decode::<Delta>` inside every replication message) on the stable
//! toolchain: arbitrary and corrupted bytes are an error or a value, never a
//! panic, and never make the decoder hold much more memory than the input
//! is long. Frames from a peer and values read back from disk both arrive
//! here, so neither a broken peer nor a corrupt store can crash a node.
//!
//! Case counts are small so `cargo test` stays fast; `PROPTEST_CASES`
//! raises them for the long run (`bench/fuzz.sh`).

use chorus_testkit::{mutate, mutations, peak_heap_during};

use chorus_crdt::{
    decode, encode, Delta, ExpiryField, Extras, KeyState, NodeId, NodeMap, Register, Stamp, Tally,
    FORMAT_VERSION,
};
use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: chorus_testkit::Counting = chorus_testkit::Counting;

/// Heap bytes a decode may hold per input byte. postcard hands a length
/// prefix to serde as a size hint only when the input left could hold that
/// many one-byte elements, so a prefix reserves at most one element per
/// byte left; the largest element, a node's tally entry, is 56 bytes.
const HEAP_PER_INPUT_BYTE: usize = 64;

/// Room for the few boxes of a state (register, seen set, extras).
const HEAP_FIXED: usize = 1024;

/// The most a decode of `input_len` bytes may hold at once.
fn decode_heap_bound(input_len: usize) -> usize {
    HEAP_PER_INPUT_BYTE * input_len + HEAP_FIXED
}

fn stamp() -> impl Strategy<Value = Stamp> {
    (
        prop_oneof![0u64..300, any::<u64>()],
        prop_oneof![0u64..4, any::<u64>()],
    )
        .prop_map(|(time, node)| Stamp {
            time,
            node: NodeId(node),
        })
}

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![0u64..4, any::<u64>()].prop_map(NodeId)
}

fn tally() -> impl Strategy<Value = Tally> {
    (
        stamp(),
        any::<u64>(),
        any::<i64>(),
        any::<f64>(),
        any::<u64>(),
    )
        .prop_map(|(epoch, ops, int, float, float_ops)| Tally {
            epoch,
            ops,
            int,
            float,
            float_ops,
        })
}

/// Any state the type can hold, not only those ops build: the decoder must
/// take whatever a peer of another version or a damaged disk hands it.
fn key_state() -> impl Strategy<Value = KeyState> {
    let register = (
        stamp(),
        proptest::option::of(proptest::collection::vec((node(), any::<u64>()), 0..5)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..48)),
        any::<u64>(),
    )
        .prop_map(|(stamp, seen, value, expire_at_ms)| Register {
            stamp,
            seen: seen.map(|s| Box::new(NodeMap::from(s))),
            value: value.map(Vec::into_boxed_slice),
            expire_at_ms,
        });
    let extras = (
        stamp(),
        any::<u64>(),
        proptest::collection::vec((node(), tally()), 0..4),
        proptest::collection::vec((node(), tally()), 0..4),
        stamp(),
    )
        .prop_map(|(stamp, at_ms, counts, removed, floor)| Extras {
            expiry: ExpiryField { stamp, at_ms },
            counts: NodeMap::from(counts),
            removed: chorus_crdt::lazy::Lazy::new(NodeMap::from(removed)),
            floor,
        });
    (register, proptest::option::of(extras)).prop_map(|(reg, extras)| KeyState {
        reg,
        extras: extras.map(Box::new),
        coll: None,
    })
}

fn delta() -> impl Strategy<Value = Delta> {
    prop_oneof![
        3 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..24), key_state())
            .prop_map(|(db, key, state)| Delta::Key { db, key, state }),
        1 => (proptest::option::of(any::<u32>()), stamp())
            .prop_map(|(db, stamp)| Delta::Flush { db, stamp }),
    ]
}

/// Decodes `bytes` as a key state and as a delta under the heap bound, and
/// checks that whatever decodes encodes again to the same value (so a value
/// that got in can always be stored and sent on).
fn decode_checked(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (state, heap) = peak_heap_during(|| decode::<KeyState>(bytes));
    prop_assert!(
        heap <= decode_heap_bound(bytes.len()),
        "{heap} heap bytes for {} input bytes",
        bytes.len()
    );
    if let Ok(state) = state {
        let again = encode(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode::<KeyState>(&again).ok(), Some(state));
    }
    let (delta, heap) = peak_heap_during(|| decode::<Delta>(bytes));
    prop_assert!(
        heap <= decode_heap_bound(bytes.len()),
        "{heap} heap bytes for {} input bytes",
        bytes.len()
    );
    if let Ok(delta) = delta {
        let again = encode(&delta).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(decode::<Delta>(&again).ok(), Some(delta));
    }
    Ok(())
}

proptest! {
    /// Random bytes, with and without a valid version byte in front (without
    /// it nearly every input stops at the version check).
    #[test]
    fn arbitrary_bytes_decode_to_an_error_or_a_value_within_the_heap_bound(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        decode_checked(&bytes)?;
        let mut versioned = vec![FORMAT_VERSION];
        versioned.extend_from_slice(&bytes);
        decode_checked(&versioned)?;
    }

    /// Valid encodings with bytes flipped, inserted, deleted or cut off: the
    /// inputs that get past the version byte and deep into the structure.
    #[test]
    fn mutated_encodings_decode_to_an_error_or_a_value_within_the_heap_bound(
        state in key_state(),
        delta in delta(),
        mutations in mutations(1..5),
    ) {
        for mut bytes in [encode(&state).unwrap(), encode(&delta).unwrap()] {
            mutate(&mut bytes, &mutations);
            decode_checked(&bytes)?;
        }
    }

    /// The encoding is self-delimiting: a value read from a short write or a
    /// cut-off frame is refused, never taken for a different value.
    #[test]
    fn every_strict_prefix_of_an_encoding_is_refused(state in key_state(), delta in delta()) {
        let bytes = encode(&state).unwrap();
        prop_assert_eq!(decode::<KeyState>(&bytes).unwrap(), state);
        for cut in 0..bytes.len() {
            prop_assert!(decode::<KeyState>(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
        let bytes = encode(&delta).unwrap();
        prop_assert_eq!(decode::<Delta>(&bytes).unwrap(), delta);
        for cut in 0..bytes.len() {
            prop_assert!(decode::<Delta>(&bytes[..cut]).is_err(), "cut at {}", cut);
        }
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

/// A key state's encoding up to its register's `seen` (stamp 1 of node 1).
fn register_head() -> Vec<u8> {
    vec![FORMAT_VERSION, 1, 1]
}

#[test]
fn a_seen_set_claiming_more_entries_than_bytes_left_reserves_nothing_for_them() {
    let mut bytes = register_head();
    bytes.push(1); // seen: Some
    bytes.extend(varint(1 << 60));
    bytes.extend([7, 9]); // one entry, then the input ends
    let (result, heap) = peak_heap_during(|| decode::<KeyState>(&bytes));
    assert!(result.is_err());
    assert!(heap <= HEAP_FIXED, "{heap} heap bytes");
}

#[test]
fn a_value_claiming_huge_length_is_refused_before_any_reservation() {
    let mut bytes = register_head();
    bytes.push(0); // seen: None
    bytes.push(1); // value: Some
    bytes.extend(varint(u64::MAX >> 1));
    bytes.extend([b'x'; 16]);
    let (result, heap) = peak_heap_during(|| decode::<KeyState>(&bytes));
    assert!(result.is_err());
    assert!(heap <= HEAP_FIXED, "{heap} heap bytes");
}

#[test]
fn a_delta_key_claiming_huge_length_is_refused_before_any_reservation() {
    let mut bytes = vec![FORMAT_VERSION, 0, 3]; // Delta::Key, db 3
    bytes.extend(varint(1 << 40));
    bytes.extend(b"key");
    let (result, heap) = peak_heap_during(|| decode::<Delta>(&bytes));
    assert!(result.is_err());
    assert!(heap <= HEAP_FIXED, "{heap} heap bytes");
}

/// The worst case the heap bound allows for: a tally list claiming exactly
/// as many entries as there are bytes left, which postcard passes on.
#[test]
fn a_tally_list_claiming_one_entry_per_byte_left_reserves_within_the_heap_bound() {
    assert!(std::mem::size_of::<(NodeId, Tally)>() <= HEAP_PER_INPUT_BYTE);
    let mut bytes = register_head();
    bytes.extend([0, 0, 0]); // seen, value: None; expire_at_ms 0
    bytes.push(1); // extras: Some
    bytes.extend([0, 0, 0]); // expiry: stamp (0, 0), at_ms 0
    bytes.extend(varint(1000)); // counts: 1000 entries claimed
    bytes.extend([0; 1000]); // room for 71 all-zero entries, then cut off
    let (result, heap) = peak_heap_during(|| decode::<KeyState>(&bytes));
    assert!(result.is_err());
    assert!(
        heap > 1000 * 40,
        "the claim was not passed on: {heap} heap bytes"
    );
    assert!(heap <= decode_heap_bound(bytes.len()), "{heap} heap bytes");
}
