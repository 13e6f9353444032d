//! Deltas a sink lays out directly, without a delta `Coll`: the bytes must
//! be those of the `Coll` the write would have filled, whatever the state
//! held before (packed or not, one write or several concurrent ones per
//! field, other nodes' dots around).

use chorus_crdt::codec::{
    append_coll_delta, append_coll_part_write, append_coll_write, append_many_write,
    append_one_delta, append_one_write, append_state, append_varint,
};
use chorus_crdt::{
    decode, decode_write_fields, Coll, Delta, KeyState, KeyType, Kind, NodeId, OneWrite, Stamp,
    Written, FORMAT_VERSION,
};
use proptest::prelude::*;

const FIELDS: [&[u8]; 4] = [b"f0", b"f1", b"a-field-name", b"\x00"];

/// A write on one of three replicas: (node, field, value length, time
/// step, whether the replica then sends its state to the next one).
type Op = (u64, usize, usize, u64, bool);

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (
            0u64..3,
            0..FIELDS.len(),
            prop_oneof![Just(0usize), Just(1), Just(64), Just(65), Just(200)],
            0u64..3,
            any::<bool>(),
        ),
        0..12,
    )
}

/// A hash written concurrently on three replicas, as replica 0 holds it.
fn hash_state(ops: &[Op]) -> (KeyState, u64) {
    coll_state(Kind::Hash, ops)
}

/// A hash or a set (members: the fields) written concurrently on three
/// replicas, as replica 0 holds it.
fn coll_state(kind: Kind, ops: &[Op]) -> (KeyState, u64) {
    let mut replicas = vec![KeyState::default(); 3];
    let mut time = 1_000;
    for &(node, field, len, step, send) in ops {
        time += step;
        let stamp = Stamp {
            time,
            node: NodeId(node + 1),
        };
        let value = vec![b'v'; len];
        let r = &mut replicas[node as usize];
        let delta = r.coll_write(stamp, kind, |c, d| match kind {
            Kind::Hash => c.hset_into(d, stamp, FIELDS[field], &value),
            Kind::ZSet => c.zadd_into(d, stamp, FIELDS[field], len as f64 / 4.0),
            _ => c.sadd_into(d, stamp, FIELDS[field]),
        });
        r.merge(&delta);
        if send {
            let sent = replicas[node as usize].clone();
            replicas[(node as usize + 1) % 3].merge(&sent);
        }
    }
    (replicas.swap_remove(0), time)
}

/// The compact form of a one-element write (a write's fields, as a link
/// or the delta log carries them under `origin`'s name) reads back as the
/// key state of the delta `Coll` the write would have filled.
fn assert_compact_reads_back(
    origin: NodeId,
    stamp: Stamp,
    one: &OneWrite,
    elem: &[u8],
    written: Written<'_>,
    delta: &Coll,
) -> Result<(), TestCaseError> {
    let mut fields = Vec::new();
    append_varint(&mut fields, origin.0);
    append_varint(&mut fields, 77);
    append_one_write(&mut fields, origin, 3, b"key", stamp, one, elem, written);
    let mut full = vec![FORMAT_VERSION];
    append_coll_delta(&mut full, delta);
    assert_reads_back_as(&mut fields, origin, &full)?;
    Ok(())
}

proptest! {
    #[test]
    fn a_one_field_hset_lays_out_the_delta_it_would_have_filled(
        ops in ops(),
        node in 1u64..4,
        field in 0..FIELDS.len(),
        len in prop_oneof![Just(0usize), Just(3), Just(64), Just(65), Just(300)],
        later in 0u64..2,
        origin in 1u64..5,
    ) {
        let (state, time) = hash_state(&ops);
        prop_assume!(state.key_type(0) == Some(KeyType::Coll(Kind::Hash)) && !state.has_hidden_parts());
        let stamp = Stamp { time: time + later, node: NodeId(node) };
        let value = vec![b'w'; len];
        let mut by_coll = state.clone();
        let mut delta = Coll::delta(stamp, Kind::Hash);
        let fresh = by_coll.coll.as_mut().unwrap().hset_here(stamp, FIELDS[field], &value, Some(&mut delta));
        let mut by_one = state.clone();
        let mut one = OneWrite::default();
        let fresh_one = by_one.coll.as_mut().unwrap().hset_here(stamp, FIELDS[field], &value, Some(&mut one));
        prop_assert_eq!(fresh, fresh_one);
        prop_assert_eq!(&by_one, &by_coll);
        if fresh.is_none() {
            return Ok(());
        }
        let (mut laid_out, mut direct) = (vec![7u8], vec![7u8]);
        append_coll_delta(&mut laid_out, &delta);
        append_one_delta(&mut direct, stamp, &one, FIELDS[field], Written::Field(&value));
        prop_assert_eq!(&direct, &laid_out);
        assert_compact_reads_back(NodeId(origin), stamp, &one, FIELDS[field], Written::Field(&value), &delta)?;
        // And a replica that merges it holds what the writer does.
        let mut replica = state.clone();
        replica.merge(&KeyState { coll: Some(Box::new(delta)), ..KeyState::default() });
        prop_assert_eq!(&replica, &by_one);
    }
}

proptest! {
    #[test]
    fn a_one_member_sadd_lays_out_the_delta_it_would_have_filled(
        ops in ops(),
        node in 1u64..4,
        member in 0..FIELDS.len(),
        later in 0u64..2,
        origin in 1u64..5,
    ) {
        let (state, time) = coll_state(Kind::Set, &ops);
        prop_assume!(state.key_type(0) == Some(KeyType::Coll(Kind::Set)) && !state.has_hidden_parts());
        let stamp = Stamp { time: time + later, node: NodeId(node) };
        let mut by_coll = state.clone();
        let mut delta = Coll::delta(stamp, Kind::Set);
        let fresh = by_coll.coll.as_mut().unwrap().sadd_here(stamp, FIELDS[member], Some(&mut delta));
        let mut by_one = state.clone();
        let mut one = OneWrite::default();
        let fresh_one = by_one.coll.as_mut().unwrap().sadd_here(stamp, FIELDS[member], Some(&mut one));
        prop_assert_eq!(fresh, fresh_one);
        prop_assert_eq!(&by_one, &by_coll);
        let (mut laid_out, mut direct) = (vec![7u8], vec![7u8]);
        append_coll_delta(&mut laid_out, &delta);
        append_one_delta(&mut direct, stamp, &one, FIELDS[member], Written::Member);
        prop_assert_eq!(&direct, &laid_out);
        assert_compact_reads_back(NodeId(origin), stamp, &one, FIELDS[member], Written::Member, &delta)?;
        let mut replica = state.clone();
        replica.merge(&KeyState { coll: Some(Box::new(delta)), ..KeyState::default() });
        prop_assert_eq!(&replica, &by_one);
    }
}

proptest! {
    #[test]
    fn a_one_member_zadd_lays_out_the_delta_it_would_have_filled(
        ops in ops(),
        node in 1u64..4,
        member in 0..FIELDS.len(),
        score in prop_oneof![Just(0.0f64), Just(-1.5), Just(f64::INFINITY), any::<f64>().prop_filter("a score", |s| !s.is_nan())],
        later in 0u64..2,
        origin in 1u64..5,
    ) {
        let (state, time) = coll_state(Kind::ZSet, &ops);
        prop_assume!(state.key_type(0) == Some(KeyType::Coll(Kind::ZSet)) && !state.has_hidden_parts());
        let stamp = Stamp { time: time + later, node: NodeId(node) };
        let mut by_coll = state.clone();
        let mut delta = Coll::delta(stamp, Kind::ZSet);
        let old = by_coll.coll.as_mut().unwrap().zadd_here(stamp, FIELDS[member], score, Some(&mut delta));
        let mut by_one = state.clone();
        let mut one = OneWrite::default();
        let old_one = by_one.coll.as_mut().unwrap().zadd_here(stamp, FIELDS[member], score, Some(&mut one));
        prop_assert_eq!(old, old_one);
        prop_assert_eq!(&by_one, &by_coll);
        if old.is_none() {
            return Ok(());
        }
        let (mut laid_out, mut direct) = (vec![7u8], vec![7u8]);
        append_coll_delta(&mut laid_out, &delta);
        append_one_delta(&mut direct, stamp, &one, FIELDS[member], Written::Score(score));
        prop_assert_eq!(&direct, &laid_out);
        assert_compact_reads_back(NodeId(origin), stamp, &one, FIELDS[member], Written::Score(score), &delta)?;
        let mut replica = state.clone();
        replica.merge(&KeyState { coll: Some(Box::new(delta)), ..KeyState::default() });
        prop_assert_eq!(&replica, &by_one);
    }
}

proptest! {
    /// HINCRBY and ZINCRBY (counters on hash fields and sorted set
    /// members, written or incremented on three replicas before): what the
    /// increment records, sent in its compact form, reads back as the delta
    /// `Coll` it would have filled.
    #[test]
    fn an_increment_of_one_element_lays_out_the_delta_it_would_have_filled(
        ops in ops(),
        increments in proptest::collection::vec((1u64..4, 0..FIELDS.len(), any::<i32>()), 0..6),
        zset in any::<bool>(),
        node in 1u64..4,
        elem in 0..FIELDS.len(),
        by in any::<i32>(),
        later in 0u64..2,
        origin in 1u64..5,
    ) {
        let kind = if zset { Kind::ZSet } else { Kind::Hash };
        let (mut state, mut time) = coll_state(kind, &ops);
        prop_assume!(state.key_type(0) == Some(KeyType::Coll(kind)) && !state.has_hidden_parts());
        // Earlier increments, some on other nodes: the segment continues.
        for &(n, e, b) in &increments {
            time += 1;
            let stamp = Stamp { time, node: NodeId(n) };
            let c = state.coll.as_mut().unwrap();
            increment::<Coll>(c, kind, stamp, FIELDS[e], b, None);
        }
        let stamp = Stamp { time: time + later, node: NodeId(node) };
        let mut by_coll = state.clone();
        let mut delta = Coll::delta(stamp, kind);
        let r = increment(by_coll.coll.as_mut().unwrap(), kind, stamp, FIELDS[elem], by, Some(&mut delta));
        let mut by_one = state.clone();
        let mut one = OneWrite::default();
        let r_one = increment(by_one.coll.as_mut().unwrap(), kind, stamp, FIELDS[elem], by, Some(&mut one));
        prop_assert_eq!(r, r_one);
        prop_assert_eq!(&by_one, &by_coll);
        let (counted_node, tally) = one.counted.expect("an increment records its segment");
        let written = Written::Count { kind, node: counted_node, tally };
        prop_assert_eq!(&one.delta(stamp, FIELDS[elem], written), &delta);
        assert_compact_reads_back(NodeId(origin), stamp, &one, FIELDS[elem], written, &delta)?;
        let mut replica = state.clone();
        replica.merge(&KeyState { coll: Some(Box::new(delta)), ..KeyState::default() });
        prop_assert_eq!(&replica, &by_one);
    }
}

/// HINCRBY `by` or ZINCRBY `by / 4` of `elem` at `stamp`, recorded in
/// `delta`: the value after it.
fn increment<D: chorus_crdt::CountDelta>(
    c: &mut Coll,
    kind: Kind,
    stamp: Stamp,
    elem: &[u8],
    by: i32,
    delta: Option<&mut D>,
) -> Option<f64> {
    match kind {
        Kind::ZSet => c
            .zincr_here(
                stamp,
                elem,
                f64::from(by) / 4.0,
                |_, _| Ok::<(), ()>(()),
                delta,
            )
            .ok(),
        _ => c
            .hincr_here(
                stamp,
                elem,
                (i64::from(by), 0.0, false),
                |_| Some(()),
                delta,
            )
            .map(|()| 0.0),
    }
}

/// A field with two concurrent writes, from two nodes: the in-place HSET
/// declines, changing nothing, and the general one records the other
/// node's write as killed (its element's removal record), besides
/// replacing both.
#[test]
fn an_hset_over_another_nodes_write_records_its_kill() {
    let write = |node: u64| {
        let stamp = Stamp {
            time: 1_000,
            node: NodeId(node),
        };
        let mut state = KeyState::default();
        let delta = state.coll_write(stamp, Kind::Hash, |c, d| c.hset_into(d, stamp, b"f", b"v"));
        state.merge(&delta);
        state
    };
    let mut state = write(1);
    state.merge(&write(2));
    let stamp = Stamp {
        time: 1_001,
        node: NodeId(1),
    };
    let before = state.clone();
    let mut one = OneWrite::default();
    let coll = state.coll.as_mut().unwrap();
    assert!(!coll.writes_in_place(Kind::Hash, b"f", stamp.node));
    let fresh = coll.hset_here(stamp, b"f", b"x", Some(&mut one));
    assert_eq!(fresh, None);
    assert_eq!(state, before);
    assert!(one.replaced.is_empty(), "{one:?}");
    let delta = state.coll_write(stamp, Kind::Hash, |c, d| c.hset_into(d, stamp, b"f", b"x"));
    let delta = delta.coll.as_deref().unwrap();
    let record = delta.removed_of(Kind::Hash, b"f").expect("a record");
    let killed: Vec<_> = record.dead.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        killed,
        [NodeId(2)],
        "its own node's write is not recorded: its new write replaces it"
    );
    assert!(state
        .merge(&KeyState {
            coll: Some(Box::new(delta.clone())),
            ..KeyState::default()
        })
        .is_empty());
    assert_eq!(state.coll.as_deref().unwrap().len(Kind::Hash), 1);
}

/// Every number at its largest (ten-byte varints throughout) and three
/// dots replaced, one a duplicate of the new one's number: the layout
/// keeps within the room it takes, and matches the delta `Coll`'s.
#[test]
fn the_largest_numbers_fit_the_room_the_layout_takes() {
    use chorus_crdt::{Dot, ElemDelta, Probe};
    let big = NodeId(u64::MAX);
    let stamp = Stamp {
        time: u64::MAX - 1,
        node: big,
    };
    let mut one = OneWrite {
        dot: Dot {
            node: big,
            n: u64::MAX,
        },
        ..OneWrite::default()
    };
    for (node, n) in [(u64::MAX - 1, u64::MAX), (u64::MAX, u64::MAX), (1, 1)] {
        one.replaced.push(Dot {
            node: NodeId(node),
            n,
        });
    }
    let field = vec![b'f'; 300];
    let mut delta = Coll::delta(stamp, Kind::Hash);
    for &dot in &one.replaced {
        delta.covers(dot);
    }
    delta.wrote(&Probe::new(&field), one.dot, stamp.time, b"v");
    let (mut laid_out, mut direct) = (Vec::new(), Vec::new());
    append_coll_delta(&mut laid_out, &delta);
    append_one_delta(&mut direct, stamp, &one, &field, Written::Field(b"v"));
    assert_eq!(direct, laid_out);
    for origin in [big, NodeId(1), NodeId(7)] {
        assert_compact_reads_back(origin, stamp, &one, &field, Written::Field(b"v"), &delta)
            .expect("the largest numbers read back");
    }
    // And an increment's segment with every number at its largest.
    let tally = chorus_crdt::Tally {
        epoch: Stamp {
            time: 0,
            node: NodeId(u64::MAX - 3),
        },
        ops: u64::MAX,
        int: i64::MIN,
        float: f64::MAX,
        float_ops: u64::MAX,
    };
    for kind in [Kind::Hash, Kind::ZSet] {
        let written = Written::Count {
            kind,
            node: NodeId(u64::MAX - 2),
            tally,
        };
        let delta = one.delta(stamp, &field, written);
        assert_compact_reads_back(NodeId(1), stamp, &one, &field, written, &delta)
            .expect("the largest increment reads back");
    }
}

/// `fields` (a write's origin, number, then a delta in a compact form)
/// reads back as the key state `full` (laid out by `append_state` or
/// `append_coll_delta`), and cut anywhere or with a byte more, errs.
fn assert_reads_back_as(
    fields: &mut Vec<u8>,
    origin: NodeId,
    full: &[u8],
) -> Result<(), TestCaseError> {
    let state = decode::<KeyState>(full).expect("a full delta decodes");
    let (read_origin, seq, read) = decode_write_fields(fields).expect("a compact write decodes");
    prop_assert_eq!((read_origin, seq), (origin, 77));
    prop_assert_eq!(
        read,
        Delta::Key {
            db: 3,
            key: b"key".to_vec(),
            state
        }
    );
    for cut in 0..fields.len() {
        prop_assert!(decode_write_fields(&fields[..cut]).is_err());
    }
    fields.push(0);
    prop_assert!(decode_write_fields(fields).is_err());
    Ok(())
}

proptest! {
    /// A write of several elements, adds and removes, of a hash, set or
    /// sorted set that exists or not: its compact form reads back as the
    /// key state it was made from, whoever the origin; only a delta that
    /// clears elements of another kind (hidden parts) keeps the full form.
    #[test]
    fn a_collection_write_reads_back_from_its_compact_form(
        kind in prop_oneof![Just(Kind::Hash), Just(Kind::Set), Just(Kind::ZSet)],
        ops in ops(),
        other_kind in prop_oneof![Just(Kind::Hash), Just(Kind::Set), Just(Kind::ZSet)],
        writes in proptest::collection::vec((0..FIELDS.len(), any::<bool>(), 0usize..70), 1..6),
        node in 1u64..4,
        later in 0u64..2,
        origin in 1u64..5,
        fresh_key in any::<bool>(),
    ) {
        let (state, time) = if fresh_key {
            (KeyState::default(), 1_000)
        } else {
            coll_state(other_kind, &ops)
        };
        let stamp = Stamp { time: time + later, node: NodeId(node) };
        let delta = state.coll_write(stamp, kind, |c, d| {
            for &(field, remove, len) in &writes {
                let elem = FIELDS[field];
                match (remove, kind) {
                    (true, _) => c.remove_elem_into(d, kind, elem, stamp),
                    (false, Kind::Hash) => c.hset_into(d, stamp, elem, &vec![b'v'; len]),
                    (false, Kind::ZSet) => c.zadd_into(d, stamp, elem, len as f64 / 3.0),
                    (false, _) => c.sadd_into(d, stamp, elem),
                }
            }
        });
        let coll = delta.coll().expect("a collection delta");
        let holds = |k: Kind| match k {
            Kind::Hash => !coll.hash.is_empty(),
            Kind::Set => !coll.set.is_empty(),
            Kind::ZSet => !coll.zset.is_empty(),
            Kind::List => !coll.list.is_empty(),
        };
        let clears_others = Kind::ALL.into_iter().any(|k| k != kind && holds(k))
            || !coll.removed.is_empty();
        let origin = NodeId(origin);
        let head = |fields: &mut Vec<u8>| {
            append_varint(fields, origin.0);
            append_varint(fields, 77);
        };
        // As the write's key state (a write that made its key or not).
        let mut fields = Vec::new();
        head(&mut fields);
        let compact = append_coll_write(&mut fields, origin, 3, b"key", &delta);
        prop_assert_eq!(compact, !clears_others);
        let mut full = vec![FORMAT_VERSION];
        append_state(&mut full, &delta).unwrap();
        if compact {
            assert_reads_back_as(&mut fields, origin, &full)?;
        } else {
            prop_assert_eq!(fields.len(), 2, "nothing appended");
        }
        // As its collection part alone (the in-place path).
        let mut fields = Vec::new();
        head(&mut fields);
        let compact = append_coll_part_write(&mut fields, origin, 3, b"key", coll);
        prop_assert_eq!(compact, !clears_others);
        let mut full = vec![FORMAT_VERSION];
        append_coll_delta(&mut full, coll);
        if compact {
            assert_reads_back_as(&mut fields, origin, &full)?;
        }
    }
}

/// Every number at its largest in a compact collection write: dots
/// numbered below and above the write's time, node ids of ten bytes.
#[test]
fn a_collection_write_with_the_largest_numbers_reads_back() {
    use chorus_crdt::{Dot, ElemDelta, Probe};
    for time in [0, 1, u64::MAX - 1, u64::MAX] {
        for kind in [Kind::Hash, Kind::Set, Kind::ZSet] {
            let big = NodeId(u64::MAX);
            let stamp = Stamp { time, node: big };
            let mut delta = Coll::delta(stamp, kind);
            for (node, n) in [(u64::MAX - 1, u64::MAX), (1, 0), (7, time.wrapping_add(1))] {
                delta.covers(Dot {
                    node: NodeId(node),
                    n,
                });
            }
            let dot = Dot {
                node: big,
                n: time.wrapping_sub(1),
            };
            let elem = Probe::new(&[0xff; 300]);
            match kind {
                Kind::Hash => delta.wrote(&elem, dot, u64::MAX, &[b'v'; 200]),
                Kind::Set => delta.added(&elem, dot, 0),
                _ => delta.scored(&elem, dot, time, f64::MIN),
            }
            // The same as a record of an in-place write of several
            // elements, two of them one element.
            let mut many = chorus_crdt::ManyWrite::default();
            for (node, n) in [(u64::MAX - 1, u64::MAX), (1, 0), (7, time.wrapping_add(1))] {
                many.covers(Dot {
                    node: NodeId(node),
                    n,
                });
            }
            for (elem, n) in [
                (&[0xff; 300][..], 0),
                (&[0xfe; 2][..], u64::MAX),
                (&[0xff; 300][..], 1),
            ] {
                let dot = Dot { node: big, n };
                match kind {
                    Kind::Hash => many.wrote(&Probe::new(elem), dot, u64::MAX, &[b'v'; 200]),
                    Kind::Set => many.added(&Probe::new(elem), dot, 0),
                    _ => many.scored(&Probe::new(elem), dot, time, f64::MIN),
                }
            }
            for origin in [big, NodeId(1)] {
                let mut fields = Vec::new();
                append_varint(&mut fields, origin.0);
                append_varint(&mut fields, 77);
                assert!(append_coll_part_write(
                    &mut fields,
                    origin,
                    3,
                    b"key",
                    &delta
                ));
                let mut full = vec![FORMAT_VERSION];
                append_coll_delta(&mut full, &delta);
                assert_reads_back_as(&mut fields, origin, &full)
                    .expect("the largest numbers read back");
                let mut fields = Vec::new();
                append_varint(&mut fields, origin.0);
                append_varint(&mut fields, 77);
                assert!(append_many_write(
                    &mut fields,
                    origin,
                    3,
                    b"key",
                    stamp,
                    kind,
                    &many
                ));
                let mut full = vec![FORMAT_VERSION];
                append_coll_delta(&mut full, &many.delta(stamp, kind));
                assert_reads_back_as(&mut fields, origin, &full)
                    .expect("the largest numbers read back");
            }
        }
    }
}

/// The writes of one command of several elements, in place, recorded in
/// `delta`; their results.
fn write_many<D: chorus_crdt::ElemDelta>(
    state: &mut KeyState,
    kind: Kind,
    stamp: Stamp,
    writes: &[(usize, usize)],
    mut delta: Option<&mut D>,
) -> Vec<Option<String>> {
    let coll = state.coll.as_mut().expect("a collection");
    writes
        .iter()
        .map(|&(field, len)| {
            let elem = FIELDS[field];
            let d = delta.as_deref_mut();
            match kind {
                Kind::Hash => format!("{:?}", coll.hset_here(stamp, elem, &vec![b'w'; len], d)),
                Kind::Set => format!("{:?}", coll.sadd_here(stamp, elem, d)),
                _ => format!("{:?}", coll.zadd_here(stamp, elem, len as f64 / 8.0, d)),
            }
        })
        .map(Some)
        .collect()
}

proptest! {
    /// HSET, SADD and ZADD of several elements (some named twice) in
    /// place: what `ManyWrite` records makes the delta `Coll` the write
    /// would have filled, and its compact form, laid out from the record,
    /// reads back as that delta.
    #[test]
    fn a_write_of_several_elements_lays_out_the_delta_it_would_have_filled(
        kind in prop_oneof![Just(Kind::Hash), Just(Kind::Set), Just(Kind::ZSet)],
        ops in ops(),
        writes in proptest::collection::vec((0..FIELDS.len(), prop_oneof![Just(0usize), Just(3), Just(64), Just(65)]), 2..7),
        node in 1u64..4,
        later in 0u64..2,
        origin in 1u64..5,
    ) {
        let (state, time) = coll_state(kind, &ops);
        prop_assume!(state.key_type(0) == Some(KeyType::Coll(kind)) && !state.has_hidden_parts());
        let stamp = Stamp { time: time + later, node: NodeId(node) };
        // As the commands do: a write the in-place path would decline
        // takes the general path for every element.
        let coll = state.coll().expect("a collection");
        prop_assume!(writes.iter().all(|&(f, _)| coll.writes_in_place(kind, FIELDS[f], stamp.node)));
        let mut by_coll = state.clone();
        let mut delta = Coll::delta(stamp, kind);
        let done = write_many(&mut by_coll, kind, stamp, &writes, Some(&mut delta));
        let mut by_many = state.clone();
        let mut many = chorus_crdt::ManyWrite::default();
        let done_many = write_many(&mut by_many, kind, stamp, &writes, Some(&mut many));
        prop_assert_eq!(done, done_many);
        prop_assert_eq!(&by_many, &by_coll);
        prop_assert_eq!(&many.delta(stamp, kind), &delta);
        let origin = NodeId(origin);
        let mut fields = Vec::new();
        append_varint(&mut fields, origin.0);
        append_varint(&mut fields, 77);
        assert!(append_many_write(&mut fields, origin, 3, b"key", stamp, kind, &many));
        let mut full = vec![FORMAT_VERSION];
        append_coll_delta(&mut full, &delta);
        assert_reads_back_as(&mut fields, origin, &full)?;
        // And a replica that merges it holds what the writer does.
        let mut replica = state.clone();
        replica.merge(&KeyState { coll: Some(Box::new(delta)), ..KeyState::default() });
        prop_assert_eq!(&replica, &by_many);
    }
}

/// What the compact collection form cannot say keeps the full form: for
/// each such delta or key state the encoder declines, appending nothing.
#[test]
fn what_the_compact_collection_form_cannot_say_is_refused() {
    use chorus_crdt::coll::Removed;
    use chorus_crdt::state::Extras;
    use chorus_crdt::{CountDelta, Dot, ElemDelta, ManyWrite, Probe, Tally};
    let node = NodeId(5);
    let stamp = Stamp {
        time: 1 << 40,
        node,
    };
    let dot = Dot {
        node,
        n: stamp.time,
    };
    let mut plain = Coll::delta(stamp, Kind::Hash);
    plain.wrote(&Probe::new(b"f"), dot, stamp.time, b"v");
    let state_of = |coll: &Coll| KeyState {
        coll: Some(Box::new(coll.clone())),
        ..KeyState::default()
    };
    let part_taken = |coll: &Coll| {
        let mut out = vec![9];
        let taken = append_coll_part_write(&mut out, node, 0, b"k", coll);
        assert!(taken || out == [9], "nothing appended when declined");
        taken
    };
    let state_taken = |state: &KeyState| {
        let mut out = vec![9];
        let taken = append_coll_write(&mut out, node, 0, b"k", state);
        assert!(taken || out == [9], "nothing appended when declined");
        taken
    };
    assert!(part_taken(&plain) && state_taken(&state_of(&plain)));

    let mut whole = plain.clone();
    whole.part = false;
    let list = Coll::delta(stamp, Kind::List);
    let mut node_zero = plain.clone();
    node_zero.covers(Dot {
        node: NodeId(0),
        n: 3,
    });
    let mut stamp_zero = Coll::delta(
        Stamp {
            time: stamp.time,
            node: NodeId(0),
        },
        Kind::Hash,
    );
    stamp_zero.wrote(&Probe::new(b"f"), dot, stamp.time, b"v");
    let mut floor = plain.clone();
    floor.ctx.raise_floor(2);
    let mut other_kind = plain.clone();
    other_kind.added(&Probe::new(b"m"), Dot { node, n: dot.n + 1 }, stamp.time);
    let tally = Tally {
        epoch: stamp,
        ops: 1,
        int: 1,
        float: 0.0,
        float_ops: 0,
    };
    let mut counted = plain.clone();
    counted.counted(Kind::Hash, &Probe::new(b"f"), node, tally);
    let mut removed = plain.clone();
    *removed.removed.make().entry(Kind::Hash, b"f") = Removed::default();
    for (what, coll) in [
        ("a whole state", &whole),
        ("a list", &list),
        ("a dot of node 0", &node_zero),
        ("a stamp of node 0", &stamp_zero),
        ("a context with a floor", &floor),
        ("another kind's part", &other_kind),
        ("an element's counter", &counted),
        ("a removal record", &removed),
    ] {
        assert!(!part_taken(coll), "{what}");
        assert!(!state_taken(&state_of(coll)), "{what}");
    }

    // Key states around a plain delta: only the empty register, and
    // extras that are empty or clear the expiry at the write's stamp.
    let with_extras = |extras: Extras| KeyState {
        extras: Some(Box::new(extras)),
        ..state_of(&plain)
    };
    let cleared = chorus_crdt::state::ExpiryField { stamp, at_ms: 0 };
    assert!(state_taken(&with_extras(Extras::default())));
    assert!(state_taken(&with_extras(Extras {
        expiry: cleared,
        ..Extras::default()
    })));
    let refused = [
        (
            "a register with a value",
            KeyState {
                reg: KeyState::default().write(stamp, Some(b"v"), 0).reg.clone(),
                ..state_of(&plain)
            },
        ),
        (
            "an expiry at a time",
            with_extras(Extras {
                expiry: chorus_crdt::state::ExpiryField { stamp, at_ms: 7 },
                ..Extras::default()
            }),
        ),
        (
            "an expiry stamped before the write",
            with_extras(Extras {
                expiry: chorus_crdt::state::ExpiryField {
                    stamp: Stamp {
                        time: 1,
                        node: NodeId(9),
                    },
                    at_ms: 0,
                },
                ..Extras::default()
            }),
        ),
        (
            "a key's counter",
            with_extras(Extras {
                counts: chorus_crdt::NodeMap::single(node, tally),
                ..Extras::default()
            }),
        ),
        (
            "an expiry floor",
            with_extras(Extras {
                floor: stamp,
                ..Extras::default()
            }),
        ),
    ];
    for (what, state) in &refused {
        assert!(!state_taken(state), "{what}");
    }

    // A record of a write of several elements: a list, or a dot of node 0.
    let mut many = ManyWrite::default();
    many.wrote(&Probe::new(b"f"), dot, stamp.time, b"v");
    let many_taken = |many: &ManyWrite, kind: Kind| {
        let mut out = vec![9];
        let taken = append_many_write(&mut out, node, 0, b"k", stamp, kind, many);
        assert!(taken || out == [9], "nothing appended when declined");
        taken
    };
    assert!(many_taken(&many, Kind::Hash));
    assert!(!many_taken(&many, Kind::List), "a list");
    many.covers(Dot {
        node: NodeId(0),
        n: 3,
    });
    assert!(!many_taken(&many, Kind::Hash), "a dot of node 0");
}
