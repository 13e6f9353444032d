//! Digests of a keyspace that two nodes compare to find where their states
//! differ without shipping the states: keys fall into [`BUCKETS`] buckets
//! per database by a hash of the key, and a bucket's digest combines its
//! keys' digests in an order-free way. Replication's repair compares them
//! (docs/architecture.md, "Repair").
//!
//! Every hash here is [`stable_hash`]: a digest is compared across nodes,
//! so it must not depend on a per-process seed, a platform or a library
//! version.

use serde::{Deserialize, Serialize};

use crate::codec::{append_state, EncodeError, FORMAT_VERSION};
use crate::stamp::Stamp;
use crate::state::KeyState;

/// Buckets per database.
pub const BUCKETS: usize = 256;

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;

fn round(acc: u64, lane: u64) -> u64 {
    (acc ^ lane.wrapping_mul(P2).rotate_left(31).wrapping_mul(P1))
        .rotate_left(27)
        .wrapping_mul(P1)
        .wrapping_add(P3)
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// A 64-bit hash of `bytes`, fixed for good (a test pins known answers).
/// Not meant to resist an adversary: it finds accidental differences.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = (bytes.len() as u64).wrapping_mul(P1) ^ P3;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut lane = [0u8; 8];
        lane.copy_from_slice(c);
        h = round(h, u64::from_le_bytes(lane));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut lane = [0u8; 8];
        lane[..rest.len()].copy_from_slice(rest);
        h = round(h, u64::from_le_bytes(lane) ^ P2);
    }
    avalanche(h)
}

/// The bucket `key` falls in.
pub fn bucket_of(key: &[u8]) -> u8 {
    (stable_hash(key) >> 56) as u8
}

/// The bucket and sub-bucket `key` falls in: a bucket splits into 256
/// sub-buckets by the next bits of the same hash, so that two nodes
/// narrow a differing bucket down without listing all its keys.
pub fn sub_bucket_of(key: &[u8]) -> (u8, u8) {
    let h = stable_hash(key);
    ((h >> 56) as u8, (h >> 48) as u8)
}

/// One key's contribution to its bucket's digest: [`digest_of_encoded`] of
/// its state's encoding, laid out by the direct encoder (held to serde's
/// bytes by the law tests), which costs a fraction of serde's generic path:
/// a digest reads every key. `scratch` is a buffer the caller reuses across
/// keys.
pub fn key_digest(key: &[u8], state: &KeyState, scratch: &mut Vec<u8>) -> Result<u64, EncodeError> {
    scratch.clear();
    scratch.push(FORMAT_VERSION);
    append_state(scratch, state)?;
    Ok(digest_of_encoded(key, scratch))
}

/// A key's digest from its state's bytes as [`crate::encode`] lays them out.
pub fn digest_of_encoded(key: &[u8], encoded: &[u8]) -> u64 {
    avalanche(stable_hash(key) ^ stable_hash(encoded).wrapping_mul(P1).rotate_left(17))
}

/// A set of buckets of one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Buckets([u64; BUCKETS / 64]);

impl Buckets {
    pub fn all() -> Buckets {
        Buckets([u64::MAX; BUCKETS / 64])
    }

    pub fn insert(&mut self, bucket: u8) {
        self.0[bucket as usize / 64] |= 1 << (bucket % 64);
    }

    pub fn contains(&self, bucket: u8) -> bool {
        self.0[bucket as usize / 64] & (1 << (bucket % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds every bucket of `other`.
    pub fn extend(&mut self, other: &Buckets) {
        for (w, o) in self.0.iter_mut().zip(other.0) {
            *w |= o;
        }
    }
}

/// Which keys a repair covers: per database, a set of buckets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scope(pub Vec<(u32, Buckets)>);

impl Scope {
    /// Every key of `databases` databases.
    pub fn everything(databases: usize) -> Scope {
        Scope(
            (0..databases as u32)
                .map(|db| (db, Buckets::all()))
                .collect(),
        )
    }

    /// Whether the scope covers every key of `databases` databases.
    pub fn is_everything(&self, databases: usize) -> bool {
        (0..databases as u32).all(|db| self.0.iter().any(|(d, b)| *d == db && *b == Buckets::all()))
    }

    pub fn covers_db(&self, db: u32) -> bool {
        self.0.iter().any(|(d, _)| *d == db)
    }

    pub fn covers(&self, db: u32, key: &[u8]) -> bool {
        self.0
            .iter()
            .any(|(d, b)| *d == db && b.contains(bucket_of(key)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// At most one entry per database, each below `databases`: what a
    /// peer sends, and what keeps `covers` cheap.
    pub fn is_well_formed(&self, databases: usize) -> bool {
        let mut seen = std::collections::BTreeSet::new();
        self.0
            .iter()
            .all(|(db, _)| (*db as usize) < databases && seen.insert(*db))
    }

    /// Buckets in the scope, over every database.
    pub fn buckets(&self) -> usize {
        self.0.iter().map(|(_, b)| b.len()).sum()
    }
}

/// One database's digest: its flush floor and, per bucket, the XOR of its
/// keys' digests (zero for an empty bucket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbDigest {
    pub db: u32,
    pub floor: Stamp,
    pub buckets: Vec<u64>,
}

impl DbDigest {
    pub fn empty(db: u32) -> DbDigest {
        DbDigest {
            db,
            floor: Stamp::ZERO,
            buckets: vec![0; BUCKETS],
        }
    }

    pub fn add(&mut self, key: &[u8], key_digest: u64) {
        self.buckets[bucket_of(key) as usize] ^= key_digest;
    }

    pub fn is_empty(&self) -> bool {
        self.floor.is_zero() && self.buckets.iter().all(|b| *b == 0)
    }
}

/// Where two keyspace digests differ: the databases whose floors differ
/// (with whatever buckets differ in them, possibly none) and the differing
/// buckets of the others. A database missing from one side is empty there.
pub fn differing(mine: &[DbDigest], theirs: &[DbDigest]) -> Scope {
    differing_settled(mine, theirs, &Buckets::default())
}

/// [`differing`], leaving out the buckets in `unsettled` (in every
/// database): buckets changed while a digest was taken, which differ for
/// changes one side's digest holds and the other's not.
pub fn differing_settled(mine: &[DbDigest], theirs: &[DbDigest], unsettled: &Buckets) -> Scope {
    let empty = |db| DbDigest::empty(db);
    let mut dbs: Vec<u32> = mine.iter().chain(theirs).map(|d| d.db).collect();
    dbs.sort_unstable();
    dbs.dedup();
    let mut scope = Vec::new();
    for db in dbs {
        let find = |side: &[DbDigest]| side.iter().find(|d| d.db == db).cloned();
        let a = find(mine).unwrap_or_else(|| empty(db));
        let b = find(theirs).unwrap_or_else(|| empty(db));
        let mut buckets = Buckets::default();
        for (i, (x, y)) in a.buckets.iter().zip(b.buckets.iter()).enumerate() {
            if x != y && !unsettled.contains(i as u8) {
                buckets.insert(i as u8);
            }
        }
        // A malformed digest (wrong length) differs everywhere.
        if a.buckets.len() != b.buckets.len() {
            buckets = Buckets::all();
        }
        if a.floor != b.floor || !buckets.is_empty() {
            scope.push((db, buckets));
        }
    }
    Scope(scope)
}

/// Bits of the finest leaves a transfer compares: 2^20 leaves, 8 MB of
/// digests a database.
pub const MAX_LEAF_BITS: u8 = 20;
/// Bits of the coarsest: one leaf a bucket.
pub const MIN_LEAF_BITS: u8 = 8;

/// The leaf `key` falls in when a database splits into `2^bits` leaves by
/// the top bits of its key's hash (so a leaf lies within its bucket).
pub fn leaf_of(key: &[u8], bits: u8) -> u32 {
    let bits = bits.clamp(MIN_LEAF_BITS, MAX_LEAF_BITS);
    (stable_hash(key) >> (64 - u32::from(bits))) as u32
}

/// Leaf bits for a state of `keys` keys: about a key a leaf, so that a
/// transfer of what differs ships little more than the keys that do (the
/// digests cost 8 bytes a leaf, a key's state tens to thousands).
pub fn leaf_bits_for(keys: u64) -> u8 {
    let bits = 64 - keys.max(1).leading_zeros();
    (bits as u8).clamp(MIN_LEAF_BITS, MAX_LEAF_BITS)
}

/// One database's digest split into `2^bits` leaves: its flush floor and,
/// per leaf, the XOR of its keys' digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafDigest {
    pub db: u32,
    pub floor: Stamp,
    pub bits: u8,
    pub leaves: Vec<u64>,
}

impl LeafDigest {
    pub fn empty(db: u32, bits: u8) -> LeafDigest {
        let bits = bits.clamp(MIN_LEAF_BITS, MAX_LEAF_BITS);
        LeafDigest {
            db,
            floor: Stamp::ZERO,
            bits,
            leaves: vec![0; 1 << bits],
        }
    }

    pub fn add(&mut self, key: &[u8], key_digest: u64) {
        self.leaves[leaf_of(key, self.bits) as usize] ^= key_digest;
    }

    pub fn is_empty(&self) -> bool {
        self.floor.is_zero() && self.leaves.iter().all(|l| *l == 0)
    }

    fn is_well_formed(&self) -> bool {
        (MIN_LEAF_BITS..=MAX_LEAF_BITS).contains(&self.bits) && self.leaves.len() == 1 << self.bits
    }
}

/// Which keys a transfer of what differs carries: per database, the leaves
/// (of `2^bits`) whose digests differ, ascending. A database listed with no
/// leaves differs only in its flush floor.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Leaves {
    pub bits: u8,
    pub dbs: Vec<(u32, Vec<u32>)>,
}

impl Leaves {
    pub fn covers_db(&self, db: u32) -> bool {
        self.dbs.iter().any(|(d, _)| *d == db)
    }

    pub fn covers(&self, db: u32, key: &[u8]) -> bool {
        self.dbs
            .iter()
            .any(|(d, leaves)| *d == db && leaves.binary_search(&leaf_of(key, self.bits)).is_ok())
    }

    /// Leaves in the scope, over every database.
    pub fn count(&self) -> usize {
        self.dbs.iter().map(|(_, l)| l.len()).sum()
    }
}

/// Where two leaf digests of the same split differ (a database missing on
/// one side is empty there). `None` when they are not comparable (another
/// split, a malformed digest): then everything must go.
pub fn differing_leaves(bits: u8, mine: &[LeafDigest], theirs: &[LeafDigest]) -> Option<Leaves> {
    let bits = bits.clamp(MIN_LEAF_BITS, MAX_LEAF_BITS);
    if mine
        .iter()
        .chain(theirs)
        .any(|d| d.bits != bits || !d.is_well_formed())
    {
        return None;
    }
    let mut dbs: Vec<u32> = mine.iter().chain(theirs).map(|d| d.db).collect();
    dbs.sort_unstable();
    dbs.dedup();
    let mut out = Vec::new();
    for db in dbs {
        let find = |side: &[LeafDigest]| side.iter().find(|d| d.db == db).cloned();
        let a = find(mine).unwrap_or_else(|| LeafDigest::empty(db, bits));
        let b = find(theirs).unwrap_or_else(|| LeafDigest::empty(db, bits));
        let leaves: Vec<u32> = (0..a.leaves.len())
            .filter(|&i| a.leaves[i] != b.leaves[i])
            .map(|i| i as u32)
            .collect();
        if a.floor != b.floor || !leaves.is_empty() {
            out.push((db, leaves));
        }
    }
    Some(Leaves { bits, dbs: out })
}

/// The keys a state transfer carries: buckets (a repair) or the leaves
/// that differ (a transfer of what differs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferScope {
    Buckets(Scope),
    Leaves(Leaves),
}

impl TransferScope {
    pub fn covers_db(&self, db: u32) -> bool {
        match self {
            TransferScope::Buckets(s) => s.covers_db(db),
            TransferScope::Leaves(l) => l.covers_db(db),
        }
    }

    pub fn covers(&self, db: u32, key: &[u8]) -> bool {
        match self {
            TransferScope::Buckets(s) => s.covers(db, key),
            TransferScope::Leaves(l) => l.covers(db, key),
        }
    }

    /// Whether it is a repair of every key of `databases` databases.
    pub fn is_everything(&self, databases: usize) -> bool {
        matches!(self, TransferScope::Buckets(s) if s.is_everything(databases))
    }

    /// The buckets holding keys it covers, in any database: a scan for
    /// those keys can pass over the rest of the keyspace.
    pub fn buckets(&self) -> Buckets {
        let mut reached = Buckets::default();
        match self {
            TransferScope::Buckets(s) => {
                for bucket in 0..=u8::MAX {
                    if s.0.iter().any(|(_, b)| b.contains(bucket)) {
                        reached.insert(bucket);
                    }
                }
            }
            TransferScope::Leaves(l) => {
                // A leaf lies within the bucket of its top 8 bits.
                let below = u32::from(l.bits.clamp(MIN_LEAF_BITS, MAX_LEAF_BITS) - 8);
                for leaf in l.dbs.iter().flat_map(|(_, leaves)| leaves) {
                    reached.insert((leaf >> below) as u8);
                }
            }
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::NodeId;

    /// A scope's buckets hold every key it covers, and no bucket without one.
    #[test]
    fn a_scope_reaches_the_buckets_of_the_keys_it_covers() {
        let keys: Vec<Vec<u8>> = (0..4000).map(|i| format!("key:{i}").into_bytes()).collect();
        let mut some = Buckets::default();
        for b in [3u8, 100, 255] {
            some.insert(b);
        }
        let leaves = |bits: u8| Leaves {
            bits,
            dbs: vec![
                (0, vec![leaf_of(&keys[0], bits), leaf_of(&keys[1], bits)]),
                (2, vec![leaf_of(&keys[2], bits)]),
            ],
        };
        for scope in [
            TransferScope::Buckets(Scope(vec![(1, some)])),
            TransferScope::Leaves(leaves(8)),
            TransferScope::Leaves(leaves(13)),
            TransferScope::Leaves(leaves(20)),
            // Bits from the wire, unchecked, read as the nearest split.
            TransferScope::Leaves(leaves(0)),
            TransferScope::Leaves(leaves(30)),
        ] {
            let reached = scope.buckets();
            for key in &keys {
                if (0..3).any(|db| scope.covers(db, key)) {
                    assert!(reached.contains(bucket_of(key)));
                }
            }
            let count = (0..=u8::MAX).filter(|b| reached.contains(*b)).count();
            assert!((1..=3).contains(&count), "{count} buckets");
        }
    }

    #[test]
    fn the_hash_never_changes() {
        // Nodes of different builds compare digests: these answers are fixed
        // (computed independently of this code when it was written).
        assert_eq!(
            stable_hash(b""),
            0xd8a3_1015_0df9_0781,
            "{:#x}",
            stable_hash(b"")
        );
        assert_eq!(
            stable_hash(b"chorus"),
            0x2971_44aa_25bd_1d50,
            "{:#x}",
            stable_hash(b"chorus")
        );
        assert_eq!(
            stable_hash(b"a key longer than eight bytes"),
            0xd02f_eb98_ace9_eefa,
            "{:#x}",
            stable_hash(b"a key longer than eight bytes")
        );
    }

    #[test]
    fn keys_spread_over_every_bucket() {
        let mut seen = [0u32; BUCKETS];
        for i in 0..BUCKETS * 64 {
            seen[bucket_of(format!("key:{i}").as_bytes()) as usize] += 1;
        }
        assert!(seen.iter().all(|n| (24..=112).contains(n)), "{seen:?}");
    }

    fn digest_of(keys: &[(&[u8], KeyState)]) -> DbDigest {
        let mut d = DbDigest::empty(0);
        let mut scratch = Vec::new();
        for (k, s) in keys {
            d.add(k, key_digest(k, s, &mut scratch).unwrap());
        }
        d
    }

    #[test]
    fn a_digest_depends_on_every_key_but_not_their_order() {
        let set = |v: &[u8], ms, node| {
            KeyState::default().write(Stamp::from_unix_ms(ms, NodeId(node)), Some(v), 0)
        };
        let a = set(b"1", 5, 1);
        let b = set(b"2", 6, 2);
        let b_later = set(b"2", 7, 2);
        let one = digest_of(&[(b"a", a.clone()), (b"b", b.clone())]);
        let other_order = digest_of(&[(b"b", b.clone()), (b"a", a.clone())]);
        assert_eq!(one, other_order);
        let restamped = digest_of(&[(b"a", a.clone()), (b"b", b_later)]);
        assert_eq!(
            differing(std::slice::from_ref(&one), &[restamped]).buckets(),
            1
        );
        let missing = digest_of(&[(b"a", a)]);
        let scope = differing(&[one], &[missing]);
        assert!(scope.covers(0, b"b") && !scope.covers(1, b"b"));
        assert!(scope.is_well_formed(1));
        assert!(!scope.is_well_formed(0), "a database the node lacks");
        let twice = Scope(vec![scope.0[0], scope.0[0]]);
        assert!(!twice.is_well_formed(16), "a database named twice");
        assert_eq!(scope.buckets(), 1);
    }

    #[test]
    fn a_differing_floor_names_its_database() {
        let mut flushed = DbDigest::empty(3);
        flushed.floor = Stamp::from_unix_ms(9, NodeId(1));
        let scope = differing(&[flushed], &[]);
        assert!(scope.covers_db(3));
        assert_eq!(scope.buckets(), 0);
        assert!(differing(&[DbDigest::empty(3)], &[]).is_empty());
    }

    /// Buckets a side names unsettled are left out of a comparison, in
    /// every database; the rest still differ.
    #[test]
    fn unsettled_buckets_are_left_out() {
        let (mut mine, theirs) = (DbDigest::empty(0), DbDigest::empty(0));
        let mut other_db = DbDigest::empty(1);
        for b in [7usize, 9] {
            mine.buckets[b] = 1;
            other_db.buckets[b] = 1;
        }
        let mut unsettled = Buckets::default();
        unsettled.insert(7);
        let scope = differing_settled(
            &[mine, other_db.clone()],
            &[theirs, DbDigest::empty(1)],
            &unsettled,
        );
        let mut only_nine = Buckets::default();
        only_nine.insert(9);
        assert_eq!(scope, Scope(vec![(0, only_nine), (1, only_nine)]));
        let mut both = unsettled;
        both.extend(&only_nine);
        assert!(differing_settled(&[other_db], &[], &both).is_empty());
    }

    fn set(v: &[u8], ms: u64, node: u64) -> KeyState {
        KeyState::default().write(Stamp::from_unix_ms(ms, NodeId(node)), Some(v), 0)
    }

    fn leaf_digest_of(bits: u8, keys: &[(&[u8], KeyState)]) -> LeafDigest {
        let mut d = LeafDigest::empty(0, bits);
        let mut scratch = Vec::new();
        for (k, s) in keys {
            d.add(k, key_digest(k, s, &mut scratch).unwrap());
        }
        d
    }

    #[test]
    fn leaves_narrow_a_difference_to_the_keys_that_differ() {
        let keys: Vec<Vec<u8>> = (0..2_000)
            .map(|i| format!("key:{i}").into_bytes())
            .collect();
        let bits = leaf_bits_for(keys.len() as u64);
        assert_eq!(bits, 11);
        let states = |changed: &[usize]| -> Vec<(&[u8], KeyState)> {
            keys.iter()
                .enumerate()
                .map(|(i, k)| {
                    let t = if changed.contains(&i) { 9 } else { 5 };
                    (&k[..], set(b"v", t, 1))
                })
                .collect()
        };
        let mine = leaf_digest_of(bits, &states(&[]));
        let theirs = leaf_digest_of(bits, &states(&[7, 1_500]));
        let scope = differing_leaves(bits, std::slice::from_ref(&mine), &[theirs]).unwrap();
        assert!(scope.count() <= 2 && scope.count() >= 1, "{scope:?}");
        assert!(scope.covers(0, &keys[7]) && scope.covers(0, &keys[1_500]));
        let carried = keys.iter().filter(|k| scope.covers(0, k)).count();
        assert!(carried < 10, "a few keys besides the two: {carried}");
        // The same state differs nowhere; an empty side differs wherever
        // the other holds keys.
        let same = differing_leaves(
            bits,
            std::slice::from_ref(&mine),
            std::slice::from_ref(&mine),
        )
        .unwrap();
        assert_eq!(same.count(), 0);
        assert!(same.dbs.is_empty());
        let all = differing_leaves(bits, std::slice::from_ref(&mine), &[]).unwrap();
        assert!(keys.iter().all(|k| all.covers(0, k)));
        // Other splits are not comparable.
        assert!(differing_leaves(bits + 1, std::slice::from_ref(&mine), &[]).is_none());
        let mut short = mine;
        short.leaves.pop();
        assert!(differing_leaves(bits, &[short], &[]).is_none());
    }

    #[test]
    fn a_leaf_lies_within_its_bucket() {
        for i in 0..1_000 {
            let key = format!("k{i}");
            let leaf = leaf_of(key.as_bytes(), 16);
            assert_eq!((leaf >> 8) as u8, bucket_of(key.as_bytes()));
        }
        assert_eq!(leaf_bits_for(0), MIN_LEAF_BITS);
        assert_eq!(leaf_bits_for(u64::MAX), MAX_LEAF_BITS);
    }
}
