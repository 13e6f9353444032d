//! One test per semantic rule of DESIGN.md, each a race between two nodes.

use chorus_crdt::{
    decode, encode, ConflictKind, KeyState, KeyType, Kind, NodeId, Read, Stamp, Summary,
};

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

fn shown(k: &KeyState) -> Option<Vec<u8>> {
    k.read(0).render().map(|v| v.into_owned())
}

fn at(time: u64, node: NodeId) -> Stamp {
    Stamp { time, node }
}

/// Applies a local op: the delta merges into the node's own state.
fn apply(state: &mut KeyState, delta: &KeyState) -> KeyState {
    let conflicts = state.merge(delta);
    assert!(
        conflicts.is_empty(),
        "a local op conflicts with nothing: {conflicts:?}"
    );
    delta.clone()
}

/// Merges `deltas` into copies of `start` in both orders; both must agree.
fn both_orders(start: &KeyState, x: &KeyState, y: &KeyState) -> KeyState {
    let mut one = start.clone();
    one.merge(x);
    one.merge(y);
    let mut two = start.clone();
    two.merge(y);
    two.merge(x);
    assert_eq!(one, two, "merge order changed the result");
    one
}

#[test]
fn set_and_concurrent_incr_add_up() {
    let empty = KeyState::default();
    let set = empty.write(at(10, A), Some(b"10"), 0);
    let incr = empty.incr(at(5, B), 1, 0.0, false);
    let merged = both_orders(&empty, &set, &incr);
    // The increment is older by stamp but the SET never saw it: it survives.
    assert_eq!(merged.read(0), Read::Int(11));
}

#[test]
fn set_removes_the_increments_it_observed() {
    let mut a = KeyState::default();
    let incr = a.incr(at(1, B), 7, 0.0, false);
    apply(&mut a, &incr);
    assert_eq!(a.read(0), Read::Int(7));
    let set = a.write(at(2, A), Some(b"100"), 0);
    apply(&mut a, &set);
    assert_eq!(shown(&a).as_deref(), Some(&b"100"[..]));

    // B, which made the increment, gets the SET: same result, and its next
    // increment lands on top of 100.
    let mut b = KeyState::default();
    b.merge(&incr);
    b.merge(&set);
    assert_eq!(shown(&b).as_deref(), Some(&b"100"[..]));
    let again = b.incr(at(3, B), 1, 0.0, false);
    apply(&mut b, &again);
    a.merge(&again);
    assert_eq!(a.read(0), Read::Int(101));
    assert_eq!(a, b);
}

#[test]
fn del_and_concurrent_incr_leave_the_increment() {
    let mut a = KeyState::default();
    let first = a.incr(at(1, A), 5, 0.0, false);
    apply(&mut a, &first);
    let mut b = a.clone();

    let del = a.write(at(3, A), None, 0);
    apply(&mut a, &del);
    assert_eq!(a.read(0), Read::Absent);
    let concurrent = b.incr(at(2, B), 2, 0.0, false);
    apply(&mut b, &concurrent);

    a.merge(&concurrent);
    b.merge(&del);
    assert_eq!(a, b);
    assert_eq!(
        a.read(0),
        Read::Int(2),
        "only the unobserved increment survives"
    );
}

#[test]
fn del_and_set_race_by_stamp_in_both_orders() {
    let mut base = KeyState::default();
    let v = base.write(at(1, C), Some(b"old"), 0);
    apply(&mut base, &v);

    let set = base.write(at(10, A), Some(b"new"), 0);
    let del = base.write(at(11, B), None, 0);
    let mut one = base.clone();
    one.merge(&set);
    let c = one.merge(&del);
    assert_eq!(one.read(0), Read::Absent);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, ConflictKind::WriteLostToDelete);
    assert_eq!(c[0].loser.what, Summary::Value(b"new".to_vec()));

    let del = base.write(at(10, B), None, 0);
    let set = base.write(at(11, A), Some(b"new"), 0);
    let mut two = base.clone();
    two.merge(&del);
    let c = two.merge(&set);
    assert_eq!(two.read(0), Read::Str(b"new"));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, ConflictKind::DeleteLostToWrite);
    assert_eq!(c[0].loser.what, Summary::Deleted);
}

#[test]
fn concurrent_sets_converge_and_report_one_conflict_on_each_side() {
    let empty = KeyState::default();
    let x = empty.write(at(10, A), Some(b"x"), 0);
    let y = empty.write(at(10, B), Some(b"y"), 0);
    let mut a = empty.clone();
    apply(&mut a, &x);
    let mut b = empty.clone();
    apply(&mut b, &y);
    let ca = a.merge(&y);
    let cb = b.merge(&x);
    assert_eq!(a, b);
    // Same time, so the node id breaks the tie: B > A.
    assert_eq!(a.read(0), Read::Str(b"y"));
    assert_eq!(ca, cb);
    assert_eq!(ca.len(), 1);
    assert_eq!(ca[0].winner.origin, B);
    assert_eq!(ca[0].loser.origin, A);
    // The winner delivered again is nothing new.
    assert!(a.merge(&y).is_empty());
}

#[test]
fn a_write_that_saw_the_other_is_no_conflict() {
    let mut a = KeyState::default();
    let first = a.write(at(1, A), Some(b"1"), 0);
    apply(&mut a, &first);
    let mut b = a.clone();
    let second = b.write(at(2, B), Some(b"2"), 0);
    apply(&mut b, &second);
    assert!(a.merge(&second).is_empty());
    assert_eq!(a.read(0), Read::Str(b"2"));
}

/// The case a single parent stamp gets wrong (found by the simulation):
/// the winner descends from a write stamped after the loser that had not
/// seen the loser either. The loser must still be reported.
#[test]
fn a_loser_older_than_the_winners_parent_but_unseen_is_a_conflict() {
    let empty = KeyState::default();
    // C writes during a partition; on the other side A writes, B deletes
    // over it, then B writes again, all stamped after C's write.
    let lost = empty.write(at(3488, C), Some(b"v167b"), 0);
    let mut ab = empty.clone();
    apply(&mut ab, &empty.write(at(3367, A), Some(b"v160"), 0));
    let del = ab.write(at(4062, A), None, 0);
    apply(&mut ab, &del);
    let winner = ab.write(at(4526, B), Some(b"v234"), 0);
    apply(&mut ab, &winner);
    let reported = ab.merge(&lost);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].kind, ConflictKind::ConcurrentWrite);
    assert_eq!(
        (reported[0].winner.origin, reported[0].loser.origin),
        (B, C)
    );

    // Had the chain seen C's write, nothing is reported.
    let mut saw = empty.clone();
    apply(&mut saw, &lost);
    let over = saw.write(at(4000, A), Some(b"x"), 0);
    apply(&mut saw, &over);
    let again = saw.write(at(4600, B), Some(b"y"), 0);
    let mut other = empty.clone();
    other.merge(&again);
    assert!(other.merge(&lost).is_empty(), "B's write descends from C's");
}

/// A key written by one node only carries no record of what it saw.
#[test]
fn single_writer_keys_carry_no_seen_set() {
    let mut k = KeyState::default();
    for t in 1..5 {
        let w = k.write(at(t, A), Some(b"v"), 0);
        apply(&mut k, &w);
    }
    assert!(k.reg.seen.is_none());
    let w = k.write(at(9, B), Some(b"w"), 0);
    assert_eq!(
        w.reg
            .seen
            .as_deref()
            .map(|s| s.iter().map(|(n, t)| (*n, *t)).collect::<Vec<_>>()),
        Some(vec![(A, 4)])
    );
}

#[test]
fn expiry_is_last_writer_wins() {
    let mut k = KeyState::default();
    let set = k.write(at(1, A), Some(b"v"), 0);
    apply(&mut k, &set);
    let expire = k.expire(at(5, A), 1_000);
    let persist = k.expire(at(6, B), 0);
    let merged = both_orders(&k, &expire, &persist);
    assert_eq!(merged.expire_at_ms(), 0);

    let expire = k.expire(at(7, A), 1_000);
    let merged = both_orders(&k, &expire, &persist);
    assert_eq!(merged.expire_at_ms(), 1_000);
    assert!(merged.is_expired(1_000) && !merged.is_expired(999));
    assert_eq!(merged.read(1_000), Read::Absent);
    assert_eq!(merged.read(999), Read::Str(b"v"));

    // A later plain SET clears the TTL; SET with the TTL it read keeps it.
    let mut cleared = merged.clone();
    let set = cleared.write(at(8, B), Some(b"w"), 0);
    apply(&mut cleared, &set);
    assert_eq!(cleared.expire_at_ms(), 0);
    let mut kept = merged.clone();
    let keep = kept.write(at(8, B), Some(b"w"), kept.expire_at_ms());
    apply(&mut kept, &keep);
    assert_eq!(kept.expire_at_ms(), 1_000);
}

#[test]
fn expiry_delete_removes_everything_and_a_later_write_starts_fresh() {
    let mut k = KeyState::default();
    let incr = k.incr(at(1, A), 3, 0.0, false);
    apply(&mut k, &incr);
    let exp = k.expire(Stamp::from_unix_ms(1_000, A), 2_000);
    apply(&mut k, &exp);
    assert_eq!(k.read(1_999), Read::Int(3));
    assert_eq!(k.read(2_000), Read::Absent);

    let del = k.expiry_delete(B);
    assert_eq!(del.reg.stamp, Stamp::from_unix_ms(2_000, B));
    let mut b = k.clone();
    apply(&mut b, &del);
    assert_eq!(b.read(0), Read::Absent);
    let fresh = b.incr(Stamp::from_unix_ms(2_500, B), 1, 0.0, false);
    apply(&mut b, &fresh);
    assert_eq!(b.read(3_000), Read::Int(1));
    assert!(del.reg.stamp > exp.latest_stamp());
}

#[test]
fn flush_kills_every_older_state_but_not_newer_writes() {
    let mut k = KeyState::default();
    let set = k.write(at(5, A), Some(b"10"), 0);
    apply(&mut k, &set);
    let old_incr = k.incr(at(6, B), 1, 0.0, false);
    apply(&mut k, &old_incr);
    let mut flushed = k.clone();
    flushed.prune(at(8, C));
    assert!(flushed.is_empty());

    let newer = KeyState::default().write(at(9, A), Some(b"x"), 0);
    let mut survivor = k.clone();
    survivor.merge(&newer);
    survivor.prune(at(8, C));
    assert_eq!(survivor.read(0), Read::Str(b"x"));
}

#[test]
fn float_counter_sums_to_the_same_bits_in_every_order() {
    let empty = KeyState::default();
    let deltas = [
        empty.incr(at(1, A), 0, 0.1, true),
        empty.incr(at(2, B), 0, 0.2, true),
        empty.incr(at(3, C), 0, 1e-17, true),
    ];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut bits = None;
    for order in orders {
        let mut k = KeyState::default();
        for i in order {
            k.merge(&deltas[i]);
        }
        let Read::Float(v) = k.read(0) else {
            panic!("float expected")
        };
        assert_eq!(*bits.get_or_insert(v.to_bits()), v.to_bits());
    }
}

#[test]
fn float_increments_after_a_reset_are_exact() {
    let mut k = KeyState::default();
    let big = k.incr(at(1, A), 0, 1e6, true);
    apply(&mut k, &big);
    let reset = k.write(at(2, A), Some(b"0"), 0);
    apply(&mut k, &reset);
    let small = k.incr(at(3, A), 0, 0.1, true);
    apply(&mut k, &small);
    assert_eq!(k.read(0), Read::Float(0.1));
}

#[test]
fn set_of_a_string_over_unseen_increments_is_a_type_clash() {
    let empty = KeyState::default();
    let incr = empty.incr(at(1, A), 4, 0.0, false);
    let set = empty.write(at(2, B), Some(b"hello"), 0);
    let mut a = empty.clone();
    apply(&mut a, &incr);
    let c = a.merge(&set);
    assert_eq!(a.read(0), Read::Str(b"hello"));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, ConflictKind::TypeClash);
    assert_eq!(c[0].loser.what, Summary::Increment { int: 4, float: 0.0 });

    let mut b = empty.clone();
    apply(&mut b, &set);
    let c = b.merge(&incr);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].kind, ConflictKind::IncrementHidden);
    assert_eq!(a, b);

    // A numeric value written later uncovers nothing: it saw the increments.
    let num = b.write(at(3, B), Some(b"1"), 0);
    apply(&mut b, &num);
    assert_eq!(shown(&b).as_deref(), Some(&b"1"[..]));
}

#[test]
fn large_values_are_reported_by_digest() {
    let big = vec![b'x'; 1000];
    let empty = KeyState::default();
    let x = empty.write(at(1, A), Some(&big), 0);
    let y = empty.write(at(2, B), Some(b"small"), 0);
    let mut k = empty.clone();
    k.merge(&y);
    let c = k.merge(&x);
    assert!(matches!(c[0].loser.what, Summary::Digest { len: 1000, .. }));
}

#[test]
fn tombstones_are_collectable_only_once_acknowledged_and_empty() {
    let mut k = KeyState::default();
    let set = k.write(at(1, A), Some(b"v"), 0);
    apply(&mut k, &set);
    assert!(
        !k.collectable(at(100, A)),
        "a live value is never collected"
    );
    let del = k.write(at(5, A), None, 0);
    apply(&mut k, &del);
    assert!(
        !k.collectable(at(4, Z)),
        "not every peer has the delete yet"
    );
    assert!(k.collectable(at(5, A)));

    let late = KeyState::default().incr(at(3, B), 1, 0.0, false);
    k.merge(&late);
    assert!(
        !k.collectable(at(100, A)),
        "a surviving increment keeps the key"
    );
}
const Z: NodeId = NodeId(u64::MAX);

/// A counter, an emptied collection written after it, and a concurrent DEL
/// that saw only the counter's first increment: the DEL's tombstone is the
/// newest write, so the surviving increment shows. Once GC drops the
/// tombstone, the collection must go with it; kept, it outdated the counter
/// on this node and not on one that had not compacted yet, and the next
/// INCR here wrote a key creation there it wrote an increment.
#[test]
fn a_collected_tombstone_takes_the_collection_it_outdated_along() {
    let mut k = KeyState::default();
    let first = k.incr(at(4, A), 1, 0.0, false);
    apply(&mut k, &first);
    let at_b = k.clone();
    let second = k.incr(at(5, A), 1, 0.0, false);
    apply(&mut k, &second);
    let emptied = k.coll_write(at(6, A), Kind::List, |_, _| {});
    apply(&mut k, &emptied);
    let del = at_b.write(at(7, B), None, 0);
    apply(&mut k, &del);
    assert_eq!(k.key_type(0), Some(KeyType::String));
    let mut compacted = k.clone();
    compacted.compact(at(9, Z));
    assert_eq!(compacted.key_type(0), k.key_type(0), "{compacted:?}");
    assert_eq!(shown(&compacted), shown(&k));
}

/// The same with a member in the collection: the collection part stays,
/// so the tombstone must stay too while it alone makes the surviving
/// increment newer (dropped, the set showed here and the counter on a node
/// that had not compacted).
#[test]
fn a_tombstone_stays_while_it_shows_a_counter_over_a_collection() {
    let mut k = KeyState::default();
    let first = k.incr(at(4, A), 1, 0.0, false);
    apply(&mut k, &first);
    let at_b = k.clone();
    let second = k.incr(at(5, A), 1, 0.0, false);
    apply(&mut k, &second);
    let sadd =
        KeyState::default().coll_write(at(6, C), Kind::Set, |c, d| c.sadd_into(d, at(6, C), b"m"));
    k.merge(&sadd); // (a type clash, reported)
    let del = at_b.write(at(7, B), None, 0);
    k.merge(&del);
    assert_eq!(k.key_type(0), Some(KeyType::String));
    let mut compacted = k.clone();
    compacted.compact(at(9, Z));
    assert_eq!(compacted.key_type(0), k.key_type(0), "{compacted:?}");
    assert_eq!(shown(&compacted), shown(&k));
    // Once a newer collection write outdates the counter anyway, it goes.
    let sadd2 = compacted.coll_write(at(10, C), Kind::Set, |c, d| c.sadd_into(d, at(10, C), b"n"));
    compacted.merge(&sadd2);
    compacted.compact(at(11, Z));
    assert!(compacted.reg.stamp.is_zero(), "{compacted:?}");
}

/// A sorted set that a string replaced leaves a removal record of its
/// member; once the key is deleted and the floor passes everything, GC
/// drops the key whether or not this node compacted it first. (It asked
/// before compacting, kept the key for the record, and the compaction then
/// dropped the record: a node that had compacted earlier dropped the key,
/// and the two held different states until the next sweep.)
#[test]
fn a_removal_record_below_the_floor_does_not_keep_a_dead_key() {
    let mut k = KeyState::default();
    let zadd = k.coll_write(at(1, B), Kind::ZSet, |c, d| {
        c.zadd_into(d, at(1, B), b"m", 1.0)
    });
    apply(&mut k, &zadd);
    let set = k.write(at(2, A), Some(b"v"), 0);
    apply(&mut k, &set);
    let del = k.write(at(3, A), None, 0);
    apply(&mut k, &del);
    assert!(
        k.coll()
            .is_some_and(|c| c.removed_of(Kind::ZSet, b"m").is_some()),
        "the member's write is recorded as replaced"
    );
    let floor = at(10, Z);
    let mut compacted = k.clone();
    compacted.compact(floor);
    assert!(compacted.collectable(floor));
    assert!(k.collectable(floor), "{k:?}");
    assert!(!k.collectable(at(2, Z)), "not before the delete is stable");
}

#[test]
fn encoding_round_trips_with_a_version_byte() {
    let mut k = KeyState::default();
    let set = k.write(at(1, A), Some(b"5"), 99);
    apply(&mut k, &set);
    let incr = k.incr(at(2, B), 2, 0.5, true);
    apply(&mut k, &incr);
    let bytes = encode(&k).expect("encodes");
    assert_eq!(bytes[0], chorus_crdt::FORMAT_VERSION);
    let back: KeyState = decode(&bytes).expect("decodes");
    assert_eq!(back, k);

    assert!(decode::<KeyState>(&[]).is_err());
    assert!(decode::<KeyState>(&[99, 0]).is_err());
    assert!(decode::<KeyState>(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode::<KeyState>(&longer).is_err());
}

/// #11 item 3: an increment stamped before a key's expire time dies with
/// the key, even when it reaches the node that expired the key after the
/// expiry delete (it used to survive without the TTL: a key for ever).
#[test]
fn an_increment_from_before_the_expiry_dies_with_the_key_even_when_late() {
    let mut a = KeyState::default();
    let incr = a.incr(Stamp::from_unix_ms(1_000, A), 3, 0.0, false);
    apply(&mut a, &incr);
    let exp = a.expire(Stamp::from_unix_ms(1_100, A), 2_000);
    apply(&mut a, &exp);
    // B, which has the key and its TTL, increments it before it expires.
    let mut b = a.clone();
    let late = b.incr(Stamp::from_unix_ms(1_500, B), 5, 0.0, false);
    apply(&mut b, &late);
    // A expires the key before B's increment reaches it.
    let del = a.expiry_delete(A);
    apply(&mut a, &del);
    a.merge(&late);
    assert_eq!(a.read(0), Read::Absent, "{a:?}");
    b.merge(&del);
    assert_eq!(b.read(0), Read::Absent, "{b:?}");
    assert_eq!(a, b);
    // An increment after the expire time starts a new key on both.
    let fresh = b.incr(Stamp::from_unix_ms(2_500, B), 1, 0.0, false);
    apply(&mut b, &fresh);
    a.merge(&fresh);
    assert_eq!(a.read(3_000), Read::Int(1));
    assert_eq!(a, b);
}

/// #11 item 4: a counter that was reset (DEL, or its expiry) is collected
/// once stable, like any tombstone; its removal records do not keep it.
#[test]
fn a_reset_counter_is_collectable_once_stable() {
    let mut k = KeyState::default();
    let incr = k.incr(at(1, A), 7, 0.0, false);
    apply(&mut k, &incr);
    let mut expiring = k.clone();
    let del = k.write(at(2, A), None, 0);
    apply(&mut k, &del);
    assert!(!k.collectable(at(1, C)), "not before the delete is stable");
    assert!(k.collectable(at(2, C)));

    let exp = expiring.expire(Stamp::from_unix_ms(1_000, A), 2_000);
    apply(&mut expiring, &exp);
    let gone = expiring.expiry_delete(B);
    apply(&mut expiring, &gone);
    assert!(!expiring.collectable(Stamp::from_unix_ms(1_999, C)));
    assert!(expiring.collectable(gone.reg.stamp));
}

/// #11 item 9: what a key holds after a merge does not depend on whether
/// a node had collected an older tombstone. A DEL races an EXPIRE (the
/// expiry field outlives the delete); node A collects the pair, node C has
/// not yet when it increments the absent key. The TTL used to differ.
#[test]
fn a_collected_tombstone_leaves_no_trace_in_later_merges() {
    let k = KeyState::default().write(at(1, A), Some(b"v"), 0);
    let del = k.write(at(2, A), None, 0);
    let exp = k.expire(at(3, B), 5_000);
    let mut c = k.clone();
    c.merge(&del);
    c.merge(&exp);
    assert_eq!(c.read(0), Read::Absent);
    assert!(c.collectable(at(3, C)));
    // A collected it: A's state is empty. C increments the absent key.
    let incr = c.incr(at(11, C), 1, 0.0, false);
    apply(&mut c, &incr);
    let mut a = KeyState::default();
    a.merge(&incr);
    assert_eq!(c.expire_at_ms(), a.expire_at_ms(), "the TTL");
    assert_eq!(c.read(0), a.read(0));
    // Once C strips its dead tombstone the states are equal too.
    c.compact(at(3, C));
    assert_eq!(c, a);
}

/// #11 item 11: a node whose state predates the GC floor (restored from an
/// old copy of its store, or a removed member added back) sends it in a
/// state transfer. What it holds below the receiver's floor was deleted and
/// collected there: it does not come back, neither a string nor a counter
/// whose reset's records were compacted.
#[test]
fn a_transfer_from_a_stale_node_brings_nothing_back_from_below_the_floor() {
    let mut stale = KeyState::default();
    let set = stale.write(at(1, B), Some(b"old"), 0);
    apply(&mut stale, &set);
    // The receiver collected the key's tombstone (floor at 5): it has nothing.
    let mut incoming = stale.clone();
    incoming.drop_collected(None, |_| at(5, C));
    assert!(incoming.is_empty(), "{incoming:?}");
    // Unless the receiver never applied that node's writes so far (a
    // removed member's, made while it was away): then it is new.
    let mut incoming = stale.clone();
    incoming.drop_collected(None, |n| if n == B { at(0, B) } else { at(5, C) });
    assert_eq!(incoming, stale);

    // A counter reset at 3 (observing +7), compacted at the receiver,
    // which since holds a newer value.
    let mut stale = KeyState::default();
    let incr = stale.incr(at(2, B), 7, 0.0, false);
    apply(&mut stale, &incr);
    let mut receiver = stale.clone();
    let reset = receiver.write(at(3, A), Some(b"1"), 0);
    apply(&mut receiver, &reset);
    receiver.compact(at(5, C));
    assert_eq!(receiver.read(0), Read::Str(b"1"));
    let mut incoming = stale.clone();
    incoming.drop_collected(Some(&receiver), |_| at(5, C));
    receiver.merge(&incoming);
    assert_eq!(receiver.read(0), Read::Str(b"1"), "the +7 stays removed");
}

/// What a transfer carries above the floor, or of a segment the receiver
/// still knows, merges as before.
#[test]
fn a_transfer_keeps_what_the_receiver_may_not_have() {
    let mut sender = KeyState::default();
    let incr = sender.incr(at(2, B), 1, 0.0, false);
    apply(&mut sender, &incr);
    let mut receiver = sender.clone();
    // The sender's segment (begun at 2, below the floor) went on to 4.
    for t in 6..9 {
        let more = sender.incr(at(t, B), 1, 0.0, false);
        apply(&mut sender, &more);
    }
    let set = sender.write(at(9, B), Some(b"10"), 0);
    let mut newer = sender.clone();
    apply(&mut newer, &set);
    let more = newer.incr(at(10, B), 5, 0.0, false);
    apply(&mut newer, &more);
    let mut incoming = newer.clone();
    incoming.drop_collected(Some(&receiver), |_| at(5, C));
    receiver.merge(&incoming);
    assert_eq!(receiver, newer);
    assert_eq!(receiver.read(0), Read::Int(15));
}

/// #11 item 11, the receiver's side: a key a transfer's sender no longer
/// holds, though it held the writes this copy has, was deleted and
/// collected there; the stale copy forgets them. What the sender may not
/// have held yet stays.
#[test]
fn a_stale_copy_forgets_only_what_the_sender_held() {
    let held = |a: NodeId| if a == B { at(5, B) } else { Stamp::ZERO };
    let mut string = KeyState::default();
    let set = string.write(at(1, B), Some(b"old"), 5_000);
    apply(&mut string, &set);
    let mut counter = KeyState::default();
    let incr = counter.incr(at(2, B), 7, 0.0, false);
    apply(&mut counter, &incr);
    for mut stale in [string, counter] {
        assert!(stale.forget_held(held));
        assert!(stale.is_empty(), "{stale:?}");
    }

    // A write the sender had not applied yet (by A, or by B after 5) stays.
    let mut string = KeyState::default();
    let set = string.write(at(6, B), Some(b"new"), 0);
    apply(&mut string, &set);
    let mut counter = KeyState::default();
    let incr = counter.incr(at(3, A), 2, 0.0, false);
    apply(&mut counter, &incr);
    for mut newer in [string, counter] {
        let before = newer.clone();
        assert!(!newer.forget_held(held));
        assert_eq!(newer, before);
    }
}

/// The same for a key the transfer names: a stale register the sender held
/// and replaced by nothing (its delete's tombstone collected under
/// surviving increments) goes, as does a counter segment it held whose reset
/// was compacted; a merge alone would keep both.
#[test]
fn a_stale_copy_forgets_what_the_sender_replaced_by_nothing() {
    let held = |_: NodeId| at(5, C);
    // Receiver: an old string write by B, and a counter segment of A.
    let mut mine = KeyState::default();
    let incr = mine.incr(at(2, A), 4, 0.0, false);
    apply(&mut mine, &incr);
    // Sender: the segment reset and compacted, then B incremented anew.
    let mut sender = KeyState::default();
    let incr = sender.incr(at(7, B), 1, 0.0, false);
    apply(&mut sender, &incr);
    assert!(mine.is_stale_against(&sender, held));
    assert!(mine.forget_missing_from(&sender, held));
    mine.merge(&sender);
    assert_eq!(mine, sender);
    assert_eq!(mine.read(0), Read::Int(1));

    let mut string = KeyState::default();
    let set = string.write(at(3, B), Some(b"old"), 0);
    apply(&mut string, &set);
    let mut counter_only = KeyState::default();
    let incr = counter_only.incr(at(6, A), 2, 0.0, false);
    apply(&mut counter_only, &incr);
    assert!(string.forget_missing_from(&counter_only, held));
    assert!(string.is_empty(), "{string:?}");
    // Nothing goes that the sender keeps or never held.
    let mut newer = KeyState::default();
    let set = newer.write(at(8, B), Some(b"new"), 0);
    apply(&mut newer, &set);
    assert!(!newer.is_stale_against(&counter_only, held));
}

/// A named bound (#11): a key rewritten in turn by ever more nodes names at
/// most `MAX_SEEN` of them in what its newest write saw.
#[test]
fn a_writes_seen_set_never_names_more_than_max_seen_nodes() {
    let mut k = KeyState::default();
    for n in 1..=40u64 {
        let w = k.write(at(n, NodeId(n)), Some(b"v"), 0);
        apply(&mut k, &w);
        let named = k.reg.seen.as_ref().map_or(0, |s| s.len());
        assert!(
            named <= chorus_crdt::state::MAX_SEEN,
            "{named} after {n} writers"
        );
    }
    assert_eq!(
        k.reg.seen.as_ref().map(|s| s.len()),
        Some(chorus_crdt::state::MAX_SEEN)
    );
    // The newest writers are the ones named.
    assert!(k.reg.has_seen(
        &KeyState::default()
            .write(at(39, NodeId(39)), Some(b"v"), 0)
            .reg
    ));
}

/// What a write brings to a merge dates from its register, expiry, floor
/// and counter segments, never from the removals it carries: a SET over
/// old increments is as new as the SET.
#[test]
fn a_writes_earliest_added_stamp_leaves_its_removals_out() {
    let mut s = KeyState::default();
    assert_eq!(s.earliest_added_stamp(), None);
    let incr = s.incr(at(10, A), 5, 0.0, false);
    apply(&mut s, &incr);
    assert_eq!(incr.earliest_added_stamp(), Some(at(10, A)));
    let set = s.write(at(50, B), Some(b"v"), 0);
    assert_eq!(
        set.earliest_added_stamp(),
        Some(at(50, B)),
        "the removal of 10 is not added"
    );
    let more = s.incr(at(60, A), 1, 0.0, false);
    assert_eq!(
        more.earliest_added_stamp(),
        Some(at(10, A)),
        "an increment in a segment begun at 10"
    );
}

/// A SET that cleared the TTL, made on B before the key expired on A,
/// loses to A's expiry: reported as lost to the expiry on both sides. A
/// write that kept the same TTL would have gone anyway: no conflict.
#[test]
fn a_write_lost_to_a_concurrent_expiry_is_reported_as_such() {
    let expire_at = 5_000;
    let mut base = KeyState::default();
    let v = base.write(Stamp::from_unix_ms(1_000, A), Some(b"v"), expire_at);
    apply(&mut base, &v);

    let mut a = base.clone();
    let expiry = a.expiry_delete(A);
    apply(&mut a, &expiry);
    let mut b = base.clone();
    let cleared = b.write(Stamp::from_unix_ms(2_000, B), Some(b"kept"), 0);
    apply(&mut b, &cleared);

    let on_a = a.merge(&cleared);
    let on_b = b.merge(&expiry);
    assert_eq!(a, b);
    assert_eq!(a.read(expire_at + 1), Read::Absent);
    for c in [&on_a, &on_b] {
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].kind, ConflictKind::WriteLostToExpiry);
        assert_eq!(c[0].loser.what, Summary::Value(b"kept".to_vec()));
    }

    // The same TTL kept (an overwrite with KEEPTTL): it expired as written.
    let mut b = base.clone();
    let kept_ttl = b.write(Stamp::from_unix_ms(2_000, B), Some(b"kept"), expire_at);
    apply(&mut b, &kept_ttl);
    assert!(b.merge(&expiry).is_empty());
    // A plain DEL at another time is still a delete.
    let mut b = base.clone();
    apply(&mut b, &cleared);
    let del = base.write(Stamp::from_unix_ms(3_000, A), None, 0);
    assert_eq!(b.merge(&del)[0].kind, ConflictKind::WriteLostToDelete);
}

/// What a flush removes from a delta that arrives after it: its write and
/// its surviving increments stamped before the flush, each won by the
/// flush; nothing stamped after it.
#[test]
fn a_delta_stamped_before_a_flush_is_lost_to_it() {
    let flush = at(100, A);
    let empty = KeyState::default();
    let write = empty.write(at(50, B), Some(b"w"), 0);
    let lost = write.lost_to_flush(flush);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].kind, ConflictKind::WriteLostToFlush);
    assert_eq!(
        (lost[0].winner.stamp, lost[0].winner.what.clone()),
        (flush, Summary::Deleted)
    );
    assert_eq!(lost[0].loser.what, Summary::Value(b"w".to_vec()));
    let incr = empty.incr(at(60, C), 3, 0.0, false);
    let lost = incr.lost_to_flush(flush);
    assert_eq!(lost.len(), 1);
    assert_eq!(
        lost[0].loser.what,
        Summary::Increment { int: 3, float: 0.0 }
    );
    assert!(empty
        .write(at(150, B), Some(b"w"), 0)
        .lost_to_flush(flush)
        .is_empty());
    assert!(
        empty
            .write(at(50, B), None, 0)
            .lost_to_flush(flush)
            .is_empty(),
        "a delete loses nothing"
    );
}

/// A collection command's delta that a flush had not seen loses each of
/// its element writes to it, named by element; removals lose nothing.
#[test]
fn element_writes_stamped_before_a_flush_are_lost_to_it_by_element() {
    let flush = at(100, A);
    let empty = KeyState::default();
    let s = at(50, B);
    let hset = empty.coll_write(s, Kind::Hash, |c, d| c.hset_into(d, s, b"f", b"v"));
    let lost = hset.lost_to_flush(flush);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].element.as_deref(), Some(&b"f"[..]));
    assert_eq!(lost[0].loser.what, Summary::Value(b"v".to_vec()));
    let zincr = empty.coll_write(s, Kind::ZSet, |c, d| {
        c.incr_into(d, Kind::ZSet, b"m", s, (0, 2.5, true))
    });
    let lost = zincr.lost_to_flush(flush);
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].element.as_deref(), Some(&b"m"[..]));
    assert_eq!(
        lost[0].loser.what,
        Summary::Increment { int: 0, float: 2.5 }
    );
    let sadd = empty.coll_write(s, Kind::Set, |c, d| {
        c.sadd_into(d, s, b"x");
        c.sadd_into(d, s, b"y");
    });
    assert_eq!(sadd.lost_to_flush(flush).len(), 2);
    let later = at(150, B);
    let after = empty.coll_write(later, Kind::Set, |c, d| c.sadd_into(d, later, b"x"));
    assert!(after.lost_to_flush(flush).is_empty());
    let mut held = KeyState::default();
    held.merge(&sadd);
    let srem = held.coll_write(s, Kind::Set, |c, d| {
        c.remove_elem_into(d, Kind::Set, b"x", s)
    });
    assert!(
        srem.lost_to_flush(flush).is_empty(),
        "a removal loses nothing"
    );
}

/// Found by the simulation (seed 5015, 5 nodes, no repair): a SET that
/// removed a set member reached a node before the SADD it removed; that
/// node's GC, at a floor below the SET (the SADD still in flight), dropped
/// the SET's record of the removal, and the SADD arriving next came back
/// for good on that node alone.
#[test]
fn a_removal_arriving_before_its_add_survives_gc_below_it() {
    use chorus_crdt::Kind;
    let mut a = KeyState::default();
    let sadd = a.coll_write(at(10, A), Kind::Set, |c, d| c.sadd_into(d, at(10, A), b"m"));
    apply(&mut a, &sadd);
    let mut b = a.clone();
    let set = b.write(at(20, B), Some(b"v"), 0);
    apply(&mut b, &set);
    // C gets the SET first, collects at a floor below it, then the SADD.
    let mut c = KeyState::default();
    c.merge(&set);
    c.compact(at(15, C));
    c.merge(&sadd);
    b.merge(&sadd);
    assert_eq!(
        c.coll().map_or(0, |x| x.len(Kind::Set)),
        0,
        "the member stays removed"
    );
    assert_eq!(shown(&c), Some(b"v".to_vec()));
    let beyond = at(u64::MAX, NodeId(u64::MAX));
    for s in [&mut b, &mut c] {
        s.compact(beyond);
    }
    assert_eq!(b, c);
}

/// #11 item 11 for collections: a state transfer from a node that removed
/// a member and collected the record of it makes a receiver holding an
/// older copy forget the member; and a transfer from a node with an older
/// copy brings back nothing the receiver removed and collected.
#[test]
fn state_transfers_neither_keep_nor_bring_back_a_collected_removal() {
    use chorus_crdt::Kind;
    let mut old = KeyState::default();
    let add = old.coll_write(at(10, A), Kind::Set, |c, d| {
        c.sadd_into(d, at(10, A), b"gone");
        c.sadd_into(d, at(10, A), b"kept");
    });
    apply(&mut old, &add);
    let mut now = old.clone();
    let rem = now.coll_write(at(20, B), Kind::Set, |c, d| {
        c.remove_elem_into(d, Kind::Set, b"gone", at(20, B))
    });
    apply(&mut now, &rem);
    now.compact(at(30, C));
    let held = |_| at(30, C);
    // The sender (now) applied A's add and no longer holds "gone".
    let mut receiver = old.clone();
    assert!(receiver.is_stale_against(&now, held));
    receiver.forget_missing_from(&now, held);
    receiver.merge(&now);
    let members: Vec<Vec<u8>> = receiver
        .coll()
        .unwrap()
        .members()
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(members, vec![b"kept".to_vec()]);
    // The other way: the old copy arriving at a node that collected.
    let mut incoming = old.clone();
    incoming.drop_collected(Some(&now), held);
    let mut merged = now.clone();
    merged.merge(&incoming);
    let members: Vec<Vec<u8>> = merged
        .coll()
        .unwrap()
        .members()
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(members, vec![b"kept".to_vec()]);
}

/// Review finding: with dots numbered per node from 1 (the earlier design),
/// a node whose context GC had dropped could take a dot it had used before
/// and lose a write. Dots are write times now: a node's later dots are past
/// every earlier one, whatever any context forgot.
#[test]
fn a_node_never_reuses_a_dot_after_its_context_was_compacted() {
    use chorus_crdt::Kind;
    let mut a = KeyState::default();
    let two = a.coll_write(at(10, A), Kind::Hash, |c, d| {
        c.hset_into(d, at(10, A), b"f1", b"x");
        c.hset_into(d, at(10, A), b"f2", b"y");
    });
    apply(&mut a, &two);
    let mut b = a.clone();
    a.compact(at(20, C));
    let over = b.coll_write(at(21, B), Kind::Hash, |c, d| {
        c.hset_into(d, at(21, B), b"f1", b"z")
    });
    apply(&mut b, &over);
    a.merge(&over);
    let g = a.coll_write(at(22, A), Kind::Hash, |c, d| {
        c.hset_into(d, at(22, A), b"g", b"w")
    });
    apply(&mut a, &g);
    b.merge(&g);
    for s in [&a, &b] {
        let fields: Vec<(Vec<u8>, Option<Vec<u8>>)> = s
            .coll()
            .unwrap()
            .fields()
            .map(|(f, v)| (f.to_vec(), v.render().map(|v| v.into_owned())))
            .collect();
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert!(fields.contains(&(b"g".to_vec(), Some(b"w".to_vec()))));
    }
}

/// Review finding: a string a collection hid (a SET concurrent with an HSET
/// whose field was then deleted) must not show again when GC drops the
/// emptied collection.
#[test]
fn gc_does_not_bring_back_a_string_a_collection_hid() {
    use chorus_crdt::Kind;
    let mut a = KeyState::default();
    let set = a.write(at(10, A), Some(b"10"), 0);
    apply(&mut a, &set);
    let mut b = KeyState::default();
    let hset = b.coll_write(at(11, B), Kind::Hash, |c, d| {
        c.hset_into(d, at(11, B), b"f", b"x")
    });
    apply(&mut b, &hset);
    let hdel = b.coll_write(at(12, B), Kind::Hash, |c, d| {
        c.remove_elem_into(d, Kind::Hash, b"f", at(12, B))
    });
    apply(&mut b, &hdel);
    a.merge(&hset);
    a.merge(&hdel);
    b.merge(&set);
    assert_eq!(a, b);
    assert!(!a.exists(0), "the key shows nothing");
    a.compact(at(u64::MAX, NodeId(u64::MAX)));
    assert!(!a.exists(0), "not even after GC");
    assert_eq!(shown(&a), None);
}

/// A node without peers collects at "everything" after every write; its
/// next write must still count as new.
#[test]
fn a_write_after_gc_at_everything_is_new() {
    use chorus_crdt::Kind;
    let mut a = KeyState::default();
    let everything = at(u64::MAX, NodeId(u64::MAX));
    for (t, f) in [(10, &b"f1"[..]), (11, b"f2"), (12, b"f1")] {
        let d = a.coll_write(at(t, A), Kind::Hash, |c, d| {
            c.hset_into(d, at(t, A), f, b"v")
        });
        apply(&mut a, &d);
        a.compact(everything);
    }
    let d = a.coll_write(at(13, A), Kind::Hash, |c, d| {
        c.hset_into(d, at(13, A), b"f3", b"v")
    });
    apply(&mut a, &d);
    assert_eq!(a.coll().unwrap().len(Kind::Hash), 3);
}

fn list_of(k: &KeyState) -> Vec<Vec<u8>> {
    k.coll()
        .map(|c| c.list_iter().map(|(_, v)| v.to_vec()).collect())
        .unwrap_or_default()
}

fn push(k: &KeyState, stamp: Stamp, head: bool, v: &[u8]) -> KeyState {
    k.coll_write(stamp, Kind::List, |c, d| {
        c.list_push_into(d, stamp, head, v)
    })
}

fn pop(k: &KeyState, stamp: Stamp, head: bool) -> KeyState {
    k.coll_write(stamp, Kind::List, |c, d| {
        let end = if head {
            c.list_iter().next()
        } else {
            c.list_iter().next_back()
        };
        let pos = end.map(|(p, _)| p.clone()).expect("an element");
        c.list_remove_into(d, &pos);
    })
}

/// Two nodes pop one element at once: it is removed once, and the element
/// after it stays.
#[test]
fn a_list_element_popped_on_two_nodes_is_removed_once() {
    let mut base = KeyState::default();
    for (i, v) in [b"x", b"y", b"z"].iter().enumerate() {
        let d = push(&base, at(i as u64 + 1, A), false, *v);
        base.merge(&d);
    }
    let pa = pop(&base, at(10, A), true);
    let pb = pop(&base, at(11, B), true);
    let end = both_orders(&base, &pa, &pb);
    assert_eq!(list_of(&end), [b"y".to_vec(), b"z".to_vec()]);
}

/// A pushes x, B sees it; A pops x and pushes y at the same end while B
/// sets x's value: both B's element (the LSET kept it) and y stay, two
/// elements, not one merged out of both.
#[test]
fn a_push_after_a_pop_is_a_new_element_beside_a_concurrent_lset() {
    let mut a = KeyState::default();
    let d = push(&a, at(1, A), true, b"x");
    a.merge(&d);
    let b = a.clone();
    let popped = pop(&a, at(2, A), true);
    a.merge(&popped);
    let pushed = push(&a, at(3, A), true, b"y");
    let set = b.coll_write(at(4, B), Kind::List, |c, d| {
        let pos = c.list_iter().next().map(|(p, _)| p.clone()).expect("x");
        c.list_set_into(d, at(4, B), &pos, b"set-on-b");
    });
    let mut left = b.clone();
    left.merge(&set);
    left.merge(&popped);
    left.merge(&pushed);
    let mut right = a.clone();
    right.merge(&pushed);
    right.merge(&set);
    assert_eq!(left, right);
    let mut list = list_of(&left);
    list.sort();
    assert_eq!(list, [b"set-on-b".to_vec(), b"y".to_vec()]);
}

/// A delta reused for the next command (`Coll::recycle_as_delta`) is the
/// fresh delta that command would have made: nothing of the last write
/// (its fields, members, list elements, removal records, context) stays.
#[test]
fn a_recycled_delta_is_a_fresh_one() {
    let mut state = KeyState::default();
    let first = at(10, A);
    let hash = state.coll_write(first, Kind::Hash, |c, d| {
        c.hset_into(d, first, b"f", b"v");
        c.incr_into(d, Kind::Hash, b"n", first, (3, 0.0, false));
    });
    apply(&mut state, &hash);
    let mut used = hash.coll().expect("a collection delta").clone();
    let second = at(11, A);
    let current = state.coll().expect("a hash").clone();
    current.hset_into(&mut used, second, b"f", &[7; 4096]);
    current.remove_elem_into(&mut used, Kind::Hash, b"n", second);
    current.sadd_into(&mut used, second, b"m");
    current.zadd_into(&mut used, second, b"z", 2.5);
    current.list_push_into(&mut used, second, true, b"x");
    assert!(
        used.removed.len() == 1 && used.ctx.cloud_len() > 2,
        "{used:?}"
    );
    let third = at(12, B);
    for kind in Kind::ALL {
        used.recycle_as_delta(third, kind);
        let fresh = chorus_crdt::Coll::delta(third, kind);
        assert_eq!(used, fresh);
        let as_state = |c: &chorus_crdt::Coll| KeyState {
            coll: Some(Box::new(c.clone())),
            ..KeyState::default()
        };
        assert_eq!(
            encode(&as_state(&used)).unwrap(),
            encode(&as_state(&fresh)).unwrap()
        );
    }
    // Used again, it fills as a fresh one does.
    used.recycle_as_delta(third, Kind::Hash);
    let mut fresh = chorus_crdt::Coll::delta(third, Kind::Hash);
    let mut mine = current.clone();
    let mut theirs = current;
    assert_eq!(
        mine.hset_here(third, b"f", b"w", Some(&mut used)),
        theirs.hset_here(third, b"f", b"w", Some(&mut fresh))
    );
    assert_eq!(used, fresh);
    assert_eq!(mine, theirs);
}

/// DEL's delta walks each element once (a packed hash's lookup by name is
/// a walk of its buffer), and removes exactly what removing each element
/// by name removes: every dot, every counter as a removal record, and
/// every write as killed (up to `KILLS_MAX` elements).
#[test]
fn a_clear_removes_what_removing_each_element_by_name_removes() {
    let build = |kind: Kind, counters: bool| {
        let mut state = KeyState::default();
        for i in 0..100u64 {
            let s = at(10 + i, if i % 3 == 0 { B } else { A });
            let name = format!("e{}", i % 60);
            let d = state.coll_write(s, kind, |c, d| match (kind, counters && i % 2 == 0) {
                (Kind::Set, _) => c.sadd_into(d, s, name.as_bytes()),
                (Kind::ZSet, false) => c.zadd_into(d, s, name.as_bytes(), i as f64),
                (Kind::Hash, false) => c.hset_into(d, s, name.as_bytes(), b"v"),
                (_, _) => c.incr_into(d, kind, name.as_bytes(), s, (0, 1.5, true)),
            });
            apply(&mut state, &d);
        }
        state.coll().expect("a collection").clone()
    };
    let by_name = |c: &chorus_crdt::Coll, stamp: Stamp| {
        let mut d = chorus_crdt::Coll::default();
        for (k, _) in c.hash.iter() {
            c.remove_elem_into(&mut d, Kind::Hash, k, stamp);
        }
        for k in c.set.keys() {
            c.remove_elem_into(&mut d, Kind::Set, k.bytes(), stamp);
        }
        for k in c.zset.keys() {
            c.remove_elem_into(&mut d, Kind::ZSet, k.bytes(), stamp);
        }
        d.hash.clear();
        d.set.clear();
        d.zset.clear();
        d.part = false;
        d
    };
    let packed = build(Kind::Hash, false);
    assert!(packed.hash.is_packed());
    let mut unpacked = packed.clone();
    unpacked.hash.map_mut();
    let stamp = at(500, C);
    for c in [
        packed,
        unpacked,
        build(Kind::Hash, true),
        build(Kind::Set, false),
        build(Kind::ZSet, false),
        build(Kind::ZSet, true),
    ] {
        let cleared = c.clear(stamp);
        assert_eq!(cleared, by_name(&c, stamp));

        let mut gone = KeyState {
            coll: Some(Box::new(c.clone())),
            ..KeyState::default()
        };
        gone.merge(&KeyState {
            coll: Some(Box::new(cleared)),
            ..KeyState::default()
        });
        assert!(!gone.exists(0), "{gone:?}");
    }
}

/// A node's later write of a field or member has seen its earlier one, as
/// a register's has: A writes, B removes what it saw, A merges that and
/// writes again. C gets A's two writes (in A's order) before B's removal:
/// the two are siblings for a while, and that is not a conflict.
#[test]
fn a_nodes_rewrite_of_an_element_never_conflicts_with_its_earlier_write() {
    let (a, b) = (NodeId(1), NodeId(2));
    for (kind, elem) in [(Kind::Hash, &b"f"[..]), (Kind::ZSet, &b"m"[..])] {
        let write = |state: &KeyState, stamp: Stamp, value: u8| {
            state.coll_write(stamp, kind, |c, d| match kind {
                Kind::Hash => c.hset_into(d, stamp, elem, &[value]),
                _ => c.zadd_into(d, stamp, elem, f64::from(value)),
            })
        };
        let s1 = Stamp { time: 10, node: a };
        let mut at_a = KeyState::default();
        let first = write(&at_a, s1, 1);
        at_a.merge(&first);
        let mut at_b = KeyState::default();
        at_b.merge(&first);
        let s2 = Stamp { time: 20, node: b };
        let removal = at_b.coll_write(s2, kind, |c, d| c.remove_elem_into(d, kind, elem, s2));
        at_b.merge(&removal);
        assert!(at_a.merge(&removal).is_empty());
        let s3 = Stamp { time: 30, node: a };
        let second = write(&at_a, s3, 2);
        at_a.merge(&second);

        let mut at_c = KeyState::default();
        assert!(at_c.merge(&first).is_empty());
        let siblings = at_c.merge(&second);
        assert!(siblings.is_empty(), "{kind:?}: {siblings:?}");
        assert!(at_c.merge(&removal).is_empty());
        assert_eq!(at_c, at_a);
    }
}

/// A write that replaced a write it knew only through a third node's
/// replacement or removal of it is no conflict: C writes, A replaces (or
/// removes) C's write, B merges A's op and writes. C gets B's write before
/// A's op, as replication may deliver them (each origin's in order,
/// origins in any order): C's write is dead, and B knew it. B's delta says
/// so (the element's removal record), so C drops its write at once. The
/// same when A deleted the whole key.
#[test]
fn a_write_that_arrives_before_the_replacement_it_followed_never_conflicts() {
    let (a, b, c) = (NodeId(1), NodeId(2), NodeId(3));
    for (kind, elem) in [(Kind::Hash, &b"f"[..]), (Kind::ZSet, &b"m"[..])] {
        for a_op in ["writes", "removes", "deletes the key"] {
            let write = |state: &KeyState, stamp: Stamp, value: u8| {
                state.coll_write(stamp, kind, |c, d| match kind {
                    Kind::Hash => c.hset_into(d, stamp, elem, &[value]),
                    _ => c.zadd_into(d, stamp, elem, f64::from(value)),
                })
            };
            let s1 = Stamp { time: 10, node: c };
            let mut at_c = KeyState::default();
            let first = write(&at_c, s1, 1);
            at_c.merge(&first);
            let mut at_a = KeyState::default();
            at_a.merge(&first);
            let s2 = Stamp { time: 20, node: a };
            let second = match a_op {
                "writes" => write(&at_a, s2, 2),
                "removes" => {
                    at_a.coll_write(s2, kind, |c, d| c.remove_elem_into(d, kind, elem, s2))
                }
                _ => at_a.write(s2, None, 0),
            };
            at_a.merge(&second);
            let mut at_b = KeyState::default();
            at_b.merge(&second);
            let s3 = Stamp { time: 30, node: b };
            let third = write(&at_b, s3, 3);
            at_b.merge(&third);

            let case = format!("{kind:?}, A {a_op}");
            let conflicts = at_c.merge(&third);
            assert!(conflicts.is_empty(), "{case}: {conflicts:?}");
            let coll = at_c.coll.as_deref().expect("a collection");
            assert_eq!(coll.len(kind), 1, "{case}: C's own write dropped");
            assert!(at_c.merge(&second).is_empty(), "{case}");
            assert!(at_b.merge(&first).is_empty(), "{case}");
            assert!(at_a.merge(&third).is_empty(), "{case}");
            assert_eq!(at_c, at_b, "{case}");
            assert_eq!(at_a, at_b, "{case}");
        }
    }
}

/// What a removal record says is dead stays dead when the write arrives
/// after the record: D learns from B's write that C's write is dead, then
/// gets C's write (C's stream slower than B's).
#[test]
fn a_write_a_removal_record_covers_is_dropped_when_it_arrives_late() {
    let (a, b, c) = (NodeId(1), NodeId(2), NodeId(3));
    let hset = |state: &KeyState, stamp: Stamp, value: &[u8]| {
        state.coll_write(stamp, Kind::Hash, |c, d| c.hset_into(d, stamp, b"f", value))
    };
    let mut at_c = KeyState::default();
    let first = hset(&at_c, Stamp { time: 10, node: c }, b"c");
    at_c.merge(&first);
    let mut at_a = KeyState::default();
    at_a.merge(&first);
    let second = hset(&at_a, Stamp { time: 20, node: a }, b"a");
    at_a.merge(&second);
    let mut at_b = KeyState::default();
    at_b.merge(&second);
    let third = hset(&at_b, Stamp { time: 30, node: b }, b"b");
    at_b.merge(&third);

    let mut at_d = KeyState::default();
    assert!(at_d.merge(&third).is_empty());
    let late = at_d.merge(&first);
    assert!(late.is_empty(), "{late:?}");
    assert!(at_d.merge(&second).is_empty());
    at_b.merge(&first);
    assert_eq!(at_d, at_b);
}

/// The relay case for a list element's LSETs: C pushes x, A sets it, B
/// merges A's LSET and sets it again; C gets B's LSET before A's. C's
/// push is dead (A replaced it knowingly) and B knew it: no conflict.
#[test]
fn an_lset_that_arrives_before_the_lset_it_followed_never_conflicts() {
    let lset = |k: &KeyState, stamp: Stamp, v: &[u8]| {
        k.coll_write(stamp, Kind::List, |c, d| {
            let pos = c.list_iter().next().map(|(p, _)| p.clone()).expect("x");
            c.list_set_into(d, stamp, &pos, v);
        })
    };
    let mut at_c = KeyState::default();
    let first = push(&at_c, at(10, C), true, b"x");
    at_c.merge(&first);
    let mut at_a = at_c.clone();
    let second = lset(&at_a, at(20, A), b"a");
    at_a.merge(&second);
    let mut at_b = KeyState::default();
    at_b.merge(&second);
    let third = lset(&at_b, at(30, B), b"b");
    at_b.merge(&third);

    let conflicts = at_c.merge(&third);
    assert!(conflicts.is_empty(), "{conflicts:?}");
    assert_eq!(list_of(&at_c), [b"b".to_vec()]);
    assert!(at_c.merge(&second).is_empty());
    assert!(at_b.merge(&first).is_empty());
    assert!(at_a.merge(&third).is_empty());
    assert_eq!(at_c, at_b);
    assert_eq!(at_a, at_b);
}

/// An HDEL or ZREM of an element that is not there writes nothing, though
/// the node holds a record of the element's killed writes (the record
/// goes with writes of the element, not with removals of nothing).
#[test]
fn removing_an_absent_element_writes_nothing_even_beside_its_record() {
    for (kind, elem) in [(Kind::Hash, &b"f"[..]), (Kind::ZSet, &b"m"[..])] {
        let write = |state: &KeyState, stamp: Stamp| {
            state.coll_write(stamp, kind, |c, d| match kind {
                Kind::Hash => c.hset_into(d, stamp, elem, b"v"),
                _ => c.zadd_into(d, stamp, elem, 1.0),
            })
        };
        let mut state = KeyState::default();
        let first = write(&state, at(10, C));
        state.merge(&first);
        let over = write(&state, at(20, A));
        state.merge(&over);
        let removal = state.coll_write(at(30, A), kind, |c, d| {
            c.remove_elem_into(d, kind, elem, at(30, A))
        });
        state.merge(&removal);
        assert!(state
            .coll()
            .and_then(|c| c.removed_of(kind, elem))
            .is_some_and(|r| !r.dead.is_empty()));
        let again = state.coll_write(at(40, A), kind, |c, d| {
            c.remove_elem_into(d, kind, elem, at(40, A))
        });
        assert!(
            again.coll().is_some_and(|c| c.names_nothing()),
            "{kind:?}: {again:?}"
        );
    }
}
