//! A collection's elements by [`EKey`] (hash, then bytes), kept in that
//! order, found in constant time.
//!
//! Up to [`SPLIT_AT`] elements sit in one sorted vector (most hashes and
//! sets are small: no directory, no slack past a quarter). Past that, a
//! table does extendible hashing on the hash's top bits: a directory of
//! 2^depth slots maps a hash's top `depth` bits to a bucket; a bucket
//! holds, sorted, the keys whose top `bucket.depth` bits are its own, so
//! walking the directory walks every key in order (SCAN cursors, encodings
//! and merge-joins rely on that order, as they did on the B-tree this
//! replaces). A full bucket splits in two on its next bit, doubling the
//! directory when it must (a copy of the directory, 4 bytes a slot: no
//! write rehashes the whole map); a bucket that removals leave with few
//! keys merges back with its buddy, so deletions free buckets and leave no
//! long runs of empty ones for a walk to cross. A B-tree of 100,000 elements cost a cache
//! miss per level on every HSET, SADD or HGET; a lookup here reads the
//! directory slot, the bucket, and (see [`find`]) usually one entry.
//!
//! Keys crafted to share their top bits cannot be split apart without a
//! directory out of proportion to the key count, which is capped at
//! twice the keys: such a bucket grows instead and, past [`TREE_AT`] keys,
//! keeps them in a B-tree, so the worst case is the B-tree's.

use std::collections::{btree_map, BTreeMap};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Bound;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ekey::{EKey, Keyed};

/// A vector or bucket past this many keys splits.
const SPLIT_AT: usize = 16;
/// A table down to this many keys folds back into a vector.
const FOLD_AT: usize = SPLIT_AT / 2;
/// A bucket that cannot split keeps its keys in a B-tree past this many.
const TREE_AT: usize = 64;
/// A merge rewrites its buckets' run of directory slots: at most this many,
/// or a 256th of the directory (see [`Table::merge_from`]).
const MERGE_RUN: usize = 64;

/// See the module doc.
#[derive(Clone)]
pub struct EMap<V>(Repr<V>);

#[derive(Clone)]
enum Repr<V> {
    Few(Vec<(EKey, V)>),
    Table(Box<Table<V>>),
}

#[derive(Clone)]
struct Table<V> {
    /// 2^depth bucket indexes, by the top `depth` bits of a hash.
    dir: Vec<u32>,
    buckets: Vec<Bucket<V>>,
    /// Indexes in `buckets` merges freed, for the next splits.
    free: Vec<u32>,
    depth: u32,
    len: usize,
}

#[derive(Clone)]
struct Bucket<V> {
    /// The leading hash bits its keys share: it fills 2^(table depth -
    /// depth) consecutive slots.
    depth: u32,
    keys: Keys<V>,
}

#[derive(Clone)]
enum Keys<V> {
    Few(Vec<(EKey, V)>),
    Many(BTreeMap<EKey, V>),
}

/// A lookup key made of a hash and bytes, for the B-tree buckets.
struct Parts<'a>(u64, &'a [u8]);

impl Keyed for Parts<'_> {
    fn hash(&self) -> u64 {
        self.0
    }
    fn bytes(&self) -> &[u8] {
        self.1
    }
}

fn order<Q: Keyed + ?Sized>(k: &EKey, hash: u64, q: &Q) -> std::cmp::Ordering {
    k.hash()
        .cmp(&hash)
        .then_with(|| Keyed::bytes(k).cmp(q.bytes()))
}

/// `q`'s place in a sorted vector whose keys share their top `depth`
/// bits. The hash's remaining bits are uniform, so they say about where in
/// the vector it falls: the walk starts there and usually reads one or two
/// entries, where a binary search over 16 entries of 72 bytes or more took
/// four cache misses in a row.
fn find<V, Q: Keyed + ?Sized>(
    v: &[(EKey, V)],
    depth: u32,
    hash: u64,
    q: &Q,
) -> Result<usize, usize> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    if v.is_empty() {
        return Err(0);
    }
    let below = hash << depth;
    let mut i = ((u128::from(below) * v.len() as u128) >> 64) as usize;
    match order(&v[i].0, hash, q) {
        Equal => Ok(i),
        Less => {
            i += 1;
            while i < v.len() {
                match order(&v[i].0, hash, q) {
                    Less => i += 1,
                    Equal => return Ok(i),
                    Greater => return Err(i),
                }
            }
            Err(i)
        }
        Greater => {
            while i > 0 {
                match order(&v[i - 1].0, hash, q) {
                    Greater => i -= 1,
                    Equal => return Ok(i - 1),
                    Less => return Err(i),
                }
            }
            Err(0)
        }
    }
}

/// Inserts at `i`, growing the vector by a quarter when full (doubling
/// would leave a third of a small collection's bytes unused).
fn insert_at<V>(v: &mut Vec<(EKey, V)>, i: usize, entry: (EKey, V)) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 4).max(1));
    }
    v.insert(i, entry);
}

/// Gives back a vector's spare room once it is half empty (keeping a
/// little, so a bucket going between none and one key does not allocate
/// each time).
fn shrink<T>(v: &mut Vec<T>) {
    if v.capacity() > 4 && v.len() * 2 < v.capacity() {
        v.shrink_to(v.len() + v.len() / 4);
    }
}

impl<V> Keys<V> {
    fn len(&self) -> usize {
        match self {
            Keys::Few(v) => v.len(),
            Keys::Many(t) => t.len(),
        }
    }

    fn get<Q: Keyed + ?Sized>(&self, depth: u32, hash: u64, q: &Q) -> Option<&V> {
        match self {
            Keys::Few(v) => find(v, depth, hash, q).ok().map(|i| &v[i].1),
            Keys::Many(t) => t.get(&Parts(hash, q.bytes()) as &dyn Keyed),
        }
    }

    fn get_mut<Q: Keyed + ?Sized>(&mut self, depth: u32, hash: u64, q: &Q) -> Option<&mut V> {
        match self {
            Keys::Few(v) => match find(v, depth, hash, q) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            Keys::Many(t) => t.get_mut(&Parts(hash, q.bytes()) as &dyn Keyed),
        }
    }

    fn remove<Q: Keyed + ?Sized>(&mut self, depth: u32, hash: u64, q: &Q) -> Option<V> {
        match self {
            Keys::Few(v) => {
                let i = find(v, depth, hash, q).ok()?;
                let removed = v.remove(i).1;
                shrink(v);
                Some(removed)
            }
            Keys::Many(t) => {
                let r = t.remove(&Parts(hash, q.bytes()) as &dyn Keyed);
                if t.len() <= SPLIT_AT {
                    *self = Keys::Few(std::mem::take(t).into_iter().collect());
                }
                r
            }
        }
    }

    fn retain(&mut self, mut f: impl FnMut(&EKey, &mut V) -> bool) {
        match self {
            Keys::Few(v) => {
                v.retain_mut(|(k, v)| f(k, v));
                shrink(v);
            }
            Keys::Many(t) => t.retain(|k, v| f(k, v)),
        }
    }

    /// Keys from the first at or after `hash`.
    fn iter_from(&self, hash: u64) -> Inner<'_, V> {
        match self {
            Keys::Few(v) => Inner::Few(v[v.partition_point(|(k, _)| k.hash() < hash)..].iter()),
            Keys::Many(t) => {
                let from = Parts(hash, &[]);
                let bounds = (Bound::Included(&from as &dyn Keyed), Bound::Unbounded);
                Inner::Many(t.range::<dyn Keyed, _>(bounds))
            }
        }
    }

    /// Moves the keys whose bit `bit` (from the top) is set out, into a
    /// new set of keys: the upper half of this bucket's range.
    fn split_off(&mut self, bit: u32) -> Keys<V> {
        let mask = 1u64 << (63 - bit);
        match self {
            Keys::Few(v) => {
                let at = v.partition_point(|(k, _)| k.hash() & mask == 0);
                let upper = v.split_off(at);
                v.shrink_to(v.len() + v.len() / 4);
                Keys::Few(upper)
            }
            Keys::Many(t) => {
                // The keys share their top `bit` bits: the upper half starts
                // at the smallest hash with those bits and bit `bit` set.
                let first_upper = t.keys().next().map_or(u64::MAX, |k| {
                    let prefix = if bit == 0 {
                        0
                    } else {
                        k.hash() >> (64 - bit) << (64 - bit)
                    };
                    prefix | mask
                });
                let upper = t.split_off(&Parts(first_upper, &[]) as &dyn Keyed);
                let fold = |t: BTreeMap<EKey, V>| {
                    if t.len() <= SPLIT_AT {
                        Keys::Few(t.into_iter().collect())
                    } else {
                        Keys::Many(t)
                    }
                };
                *self = fold(std::mem::take(t));
                fold(upper)
            }
        }
    }
}

impl<V> Table<V> {
    /// A table of one bucket holding `keys` (sorted).
    fn of(keys: Vec<(EKey, V)>) -> Table<V> {
        Table {
            dir: vec![0],
            len: keys.len(),
            buckets: vec![Bucket {
                depth: 0,
                keys: Keys::Few(keys),
            }],
            free: Vec::new(),
            depth: 0,
        }
    }

    fn slot(&self, hash: u64) -> usize {
        if self.depth == 0 {
            0
        } else {
            (hash >> (64 - self.depth)) as usize
        }
    }

    fn bucket_of(&self, hash: u64) -> &Bucket<V> {
        &self.buckets[self.dir[self.slot(hash)] as usize]
    }

    fn get<Q: Keyed + ?Sized>(&self, hash: u64, q: &Q) -> Option<&V> {
        let bucket = self.bucket_of(hash);
        bucket.keys.get(bucket.depth, hash, q)
    }

    fn get_mut<Q: Keyed + ?Sized>(&mut self, hash: u64, q: &Q) -> Option<&mut V> {
        let b = self.dir[self.slot(hash)] as usize;
        let bucket = &mut self.buckets[b];
        bucket.keys.get_mut(bucket.depth, hash, q)
    }

    fn insert(&mut self, key: EKey, value: V) -> Option<V> {
        let hash = key.hash();
        loop {
            let b = self.dir[self.slot(hash)] as usize;
            let depth = self.buckets[b].depth;
            let at = match &mut self.buckets[b].keys {
                Keys::Few(v) => match find(v, depth, hash, &key) {
                    Ok(i) => return Some(std::mem::replace(&mut v[i].1, value)),
                    Err(i) => i,
                },
                Keys::Many(t) => {
                    if let Some(old) = t.get_mut(&key as &dyn Keyed) {
                        return Some(std::mem::replace(old, value));
                    }
                    0
                }
            };
            if self.buckets[b].keys.len() >= SPLIT_AT && self.split(b, hash) {
                continue;
            }
            let keys = &mut self.buckets[b].keys;
            match keys {
                Keys::Few(v) => {
                    insert_at(v, at, (key, value));
                    if v.len() > TREE_AT {
                        let tree = std::mem::take(v).into_iter().collect();
                        *keys = Keys::Many(tree);
                    }
                }
                Keys::Many(t) => {
                    t.insert(key, value);
                }
            }
            self.len += 1;
            return None;
        }
    }

    /// Splits bucket `b` (which holds `hash`) on its next bit, doubling
    /// the directory first if the bucket fills one slot; false when that
    /// would make the directory more than twice the keys (see the module
    /// doc).
    fn split(&mut self, b: usize, hash: u64) -> bool {
        let d = self.buckets[b].depth;
        if d >= 63 {
            return false;
        }
        if d == self.depth {
            let doubled = 2usize << self.depth;
            if doubled > 2 * self.len.max(4 * SPLIT_AT) {
                return false;
            }
            self.dir = self.dir.iter().flat_map(|&b| [b, b]).collect();
            self.depth += 1;
        }
        let run = 1usize << (self.depth - d);
        let start = self.slot(hash) & !(run - 1);
        let upper = self.buckets[b].keys.split_off(d);
        self.buckets[b].depth = d + 1;
        let upper = Bucket {
            depth: d + 1,
            keys: upper,
        };
        let new = match self.free.pop() {
            Some(i) => {
                self.buckets[i as usize] = upper;
                i
            }
            None => {
                self.buckets.push(upper);
                u32::try_from(self.buckets.len() - 1).expect("fewer buckets than keys")
            }
        };
        for slot in &mut self.dir[start + run / 2..start + run] {
            *slot = new;
        }
        true
    }

    fn remove<Q: Keyed + ?Sized>(&mut self, hash: u64, q: &Q) -> Option<V> {
        let b = self.dir[self.slot(hash)] as usize;
        let bucket = &mut self.buckets[b];
        let removed = bucket.keys.remove(bucket.depth, hash, q)?;
        self.len -= 1;
        self.merge_from(self.slot(hash));
        self.after_removals();
        Some(removed)
    }

    fn retain(&mut self, mut f: impl FnMut(&EKey, &mut V) -> bool) {
        let mut len = 0;
        for b in &mut self.buckets {
            b.keys.retain(&mut f);
            len += b.keys.len();
        }
        self.len = len;
        let mut slot = 0;
        while slot < self.dir.len() {
            self.merge_from(slot);
            let run = 1usize << (self.depth - self.buckets[self.dir[slot] as usize].depth);
            slot = (slot & !(run - 1)) + run;
        }
        self.after_removals();
    }

    /// Merges the bucket filling `slot` with its buddy (the other half of
    /// the range one bit shorter) while the two are at the same depth and
    /// hold [`FOLD_AT`] keys or fewer between them, and their run is at
    /// most [`MERGE_RUN`] slots or a 256th of the directory. The cap bounds
    /// what keys made to split and merge one region over and over cost (a
    /// merge and a split rewrite the run, every 18 writes at worst), and
    /// still leaves an emptied region in at most about 256 empty buckets
    /// for a walk to cross.
    fn merge_from(&mut self, slot: usize) {
        let max_run = MERGE_RUN.max(self.dir.len() / 256);
        loop {
            let b = self.dir[slot] as usize;
            let d = self.buckets[b].depth;
            if d == 0 {
                return;
            }
            let shift = self.depth - d;
            if 2usize << shift > max_run {
                return;
            }
            let prefix = slot >> shift;
            let buddy = self.dir[(prefix ^ 1) << shift] as usize;
            if self.buckets[buddy].depth != d
                || self.buckets[b].keys.len() + self.buckets[buddy].keys.len() > FOLD_AT
            {
                return;
            }
            let (lower, upper) = if prefix & 1 == 0 {
                (b, buddy)
            } else {
                (buddy, b)
            };
            let vector = |keys: Keys<V>| match keys {
                Keys::Few(v) => v,
                Keys::Many(t) => t.into_iter().collect(),
            };
            let empty = || Keys::Few(Vec::new());
            let mut keys = vector(std::mem::replace(&mut self.buckets[lower].keys, empty()));
            keys.extend(vector(std::mem::replace(
                &mut self.buckets[upper].keys,
                empty(),
            )));
            keys.shrink_to(keys.len() + keys.len() / 4);
            self.buckets[lower] = Bucket {
                depth: d - 1,
                keys: Keys::Few(keys),
            };
            let start = (prefix & !1) << shift;
            for s in &mut self.dir[start..start + (2 << shift)] {
                *s = lower as u32;
            }
            self.free.push(upper as u32);
        }
    }

    /// Rebuilds a directory far too big for the keys left (merges never
    /// shrink it), or buckets far too many.
    fn after_removals(&mut self) {
        let live = self.buckets.len() - self.free.len();
        let big_dir = self.dir.len() > 8 * self.len.max(4 * SPLIT_AT);
        // A table about to fold back into a vector needs no rebuild.
        if self.len > FOLD_AT && (big_dir || (live > 8 && self.len * 4 < live)) {
            let keys = std::mem::replace(self, Table::of(Vec::new())).into_sorted();
            for (k, v) in keys {
                self.insert(k, v);
            }
        }
    }

    /// Bytes on the heap besides the entries' own.
    fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(EKey, V)>();
        let mut n = std::mem::size_of::<Table<V>>()
            + self.dir.capacity() * 4
            + self.free.capacity() * 4
            + self.buckets.capacity() * std::mem::size_of::<Bucket<V>>();
        for b in &self.buckets {
            n += match &b.keys {
                Keys::Few(v) => v.capacity() * entry,
                // A B-tree node's slack, as `Coll::heap_bytes` counted it.
                Keys::Many(t) => t.len() * (entry + 8),
            };
        }
        n
    }

    /// Every key in order.
    fn into_sorted(mut self) -> Vec<(EKey, V)> {
        let mut out = Vec::with_capacity(self.len);
        let mut slot = 0;
        while let Some(&b) = self.dir.get(slot) {
            let bucket = &mut self.buckets[b as usize];
            slot += 1 << (self.depth - bucket.depth);
            match std::mem::replace(&mut bucket.keys, Keys::Few(Vec::new())) {
                Keys::Few(v) => out.extend(v),
                Keys::Many(t) => out.extend(t),
            }
        }
        out
    }

    fn iter_from(&self, hash: u64) -> Iter<'_, V> {
        let bucket = self.bucket_of(hash);
        let run = 1usize << (self.depth - bucket.depth);
        Iter {
            table: Some(self),
            slot: (self.slot(hash) & !(run - 1)) + run,
            inner: bucket.keys.iter_from(hash),
        }
    }
}

impl<V> Default for EMap<V> {
    fn default() -> Self {
        EMap(Repr::Few(Vec::new()))
    }
}

impl<V> EMap<V> {
    pub const fn new() -> EMap<V> {
        EMap(Repr::Few(Vec::new()))
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(v) => v.len(),
            Repr::Table(t) => t.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        *self = EMap::default();
    }

    /// Empties a map of a few keys keeping its vector's room for the next
    /// few (a delta reused, command after command); a larger one is freed.
    pub fn clear_few(&mut self) {
        match &mut self.0 {
            Repr::Few(v) if v.capacity() <= SPLIT_AT => v.clear(),
            _ => self.clear(),
        }
    }

    /// The sorted vector a lookup of `hash` searches, and the hash bits
    /// its keys share; none for a B-tree bucket.
    fn sorted_run(&self, hash: u64) -> Option<(&[(EKey, V)], u32)> {
        match &self.0 {
            Repr::Few(v) => Some((v, 0)),
            Repr::Table(t) => {
                let bucket = t.bucket_of(hash);
                match &bucket.keys {
                    Keys::Few(v) => Some((v, bucket.depth)),
                    Keys::Many(_) => None,
                }
            }
        }
    }

    /// Where the entries a lookup of `hash` compares (see [`find`]) most
    /// likely lie in memory, address and size, for a caller to prefetch a
    /// request ahead: reads the directory and the bucket, not the entries.
    pub fn first_probe(&self, hash: u64) -> Option<(usize, usize)> {
        let (v, depth) = self.sorted_run(hash)?;
        if v.is_empty() {
            return None;
        }
        let i = ((u128::from(hash << depth) * v.len() as u128) >> 64) as usize;
        // The guess and a neighbour each side: where most searches end.
        let around = &v[i.saturating_sub(1)..v.len().min(i + 2)];
        Some((around.as_ptr() as usize, std::mem::size_of_val(around)))
    }

    /// The value of the first key whose hash is `hash`, the bytes not
    /// compared: for a prefetch, which a collision only misleads.
    pub fn get_by_hash(&self, hash: u64) -> Option<&V> {
        let (v, depth) = self.sorted_run(hash)?;
        // Empty bytes order first among keys of one hash.
        let i = match find(v, depth, hash, &Parts(hash, &[])) {
            Ok(i) | Err(i) => i,
        };
        v.get(i)
            .filter(|(k, _)| k.hash() == hash)
            .map(|(_, value)| value)
    }

    pub fn get<Q: Keyed + ?Sized>(&self, q: &Q) -> Option<&V> {
        let hash = q.hash();
        match &self.0 {
            Repr::Few(v) => find(v, 0, hash, q).ok().map(|i| &v[i].1),
            Repr::Table(t) => t.get(hash, q),
        }
    }

    pub fn get_mut<Q: Keyed + ?Sized>(&mut self, q: &Q) -> Option<&mut V> {
        let hash = q.hash();
        match &mut self.0 {
            Repr::Few(v) => match find(v, 0, hash, q) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            Repr::Table(t) => t.get_mut(hash, q),
        }
    }

    pub fn contains_key<Q: Keyed + ?Sized>(&self, q: &Q) -> bool {
        self.get(q).is_some()
    }

    /// Inserts `value` at `key`; returns the value it replaced.
    pub fn insert(&mut self, key: EKey, value: V) -> Option<V> {
        let v = match &mut self.0 {
            Repr::Table(t) => return t.insert(key, value),
            Repr::Few(v) => v,
        };
        match find(v, 0, key.hash(), &key) {
            Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
            Err(i) if v.len() < SPLIT_AT => {
                insert_at(v, i, (key, value));
                None
            }
            Err(_) => {
                let mut t = Box::new(Table::of(std::mem::take(v)));
                t.insert(key, value);
                self.0 = Repr::Table(t);
                None
            }
        }
    }

    pub fn remove<Q: Keyed + ?Sized>(&mut self, q: &Q) -> Option<V> {
        let hash = q.hash();
        let removed = match &mut self.0 {
            Repr::Few(v) => {
                let i = find(v, 0, hash, q).ok()?;
                let removed = v.remove(i).1;
                shrink(v);
                return Some(removed);
            }
            Repr::Table(t) => t.remove(hash, q)?,
        };
        self.fold();
        Some(removed)
    }

    pub fn retain(&mut self, mut f: impl FnMut(&EKey, &mut V) -> bool) {
        match &mut self.0 {
            Repr::Few(v) => {
                v.retain_mut(|(k, v)| f(k, v));
                shrink(v);
            }
            Repr::Table(t) => {
                t.retain(f);
                self.fold();
            }
        }
    }

    /// A table down to a few keys goes back to a vector.
    fn fold(&mut self) {
        if let Repr::Table(t) = &mut self.0 {
            if t.len <= FOLD_AT {
                let t = std::mem::replace(&mut **t, Table::of(Vec::new()));
                let mut v = t.into_sorted();
                v.shrink_to_fit();
                self.0 = Repr::Few(v);
            }
        }
    }

    /// The value at `key`, inserted by `make` if there is none.
    pub fn get_or_insert_with(&mut self, key: EKey, make: impl FnOnce() -> V) -> &mut V {
        // Looked up again after an insert: a split may have moved it.
        if self.get(&key).is_none() {
            let value = make();
            self.insert(key.clone(), value);
        }
        self.get_mut(&key).expect("inserted above")
    }

    pub fn entry(&mut self, key: EKey) -> Entry<'_, V> {
        Entry { map: self, key }
    }

    /// Every key in order.
    pub fn iter(&self) -> Iter<'_, V> {
        self.iter_from(0)
    }

    /// The keys from the first whose hash is at least `hash`, in order.
    pub fn iter_from(&self, hash: u64) -> Iter<'_, V> {
        match &self.0 {
            Repr::Few(v) => Iter {
                table: None,
                slot: 0,
                inner: Inner::Few(v[v.partition_point(|(k, _)| k.hash() < hash)..].iter()),
            },
            Repr::Table(t) => t.iter_from(hash),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &EKey> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn first_key_value(&self) -> Option<(&EKey, &V)> {
        self.iter().next()
    }

    /// Bytes the map holds on the heap: its entries' room (keys and values
    /// as laid out, not what they point to) and, past a vector, the
    /// directory and buckets (MEMORY USAGE).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Few(v) => v.capacity() * std::mem::size_of::<(EKey, V)>(),
            Repr::Table(t) => t.heap_bytes(),
        }
    }
}

/// A key's place in an [`EMap`], as `btree_map::Entry`'s common uses.
pub struct Entry<'a, V> {
    map: &'a mut EMap<V>,
    key: EKey,
}

impl<'a, V> Entry<'a, V> {
    pub fn or_insert_with(self, make: impl FnOnce() -> V) -> &'a mut V {
        self.map.get_or_insert_with(self.key, make)
    }

    pub fn or_default(self) -> &'a mut V
    where
        V: Default,
    {
        self.map.get_or_insert_with(self.key, V::default)
    }
}

enum Inner<'a, V> {
    Few(std::slice::Iter<'a, (EKey, V)>),
    Many(btree_map::Range<'a, EKey, V>),
}

/// An [`EMap`]'s keys in order.
pub struct Iter<'a, V> {
    /// The table whose buckets come next (none for a vector).
    table: Option<&'a Table<V>>,
    /// The next directory slot to read a bucket from.
    slot: usize,
    inner: Inner<'a, V>,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a EKey, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let next = match &mut self.inner {
                Inner::Few(i) => i.next().map(|(k, v)| (k, v)),
                Inner::Many(i) => i.next(),
            };
            if next.is_some() {
                return next;
            }
            let table = self.table?;
            let b = &table.buckets[*table.dir.get(self.slot)? as usize];
            self.slot += 1 << (table.depth - b.depth);
            self.inner = b.keys.iter_from(0);
        }
    }
}

impl<'a, V> IntoIterator for &'a EMap<V> {
    type Item = (&'a EKey, &'a V);
    type IntoIter = Iter<'a, V>;

    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V> IntoIterator for EMap<V> {
    type Item = (EKey, V);
    type IntoIter = std::vec::IntoIter<(EKey, V)>;

    fn into_iter(self) -> Self::IntoIter {
        match self.0 {
            Repr::Few(v) => v.into_iter(),
            Repr::Table(t) => t.into_sorted().into_iter(),
        }
    }
}

impl<V> Extend<(EKey, V)> for EMap<V> {
    fn extend<I: IntoIterator<Item = (EKey, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<V> FromIterator<(EKey, V)> for EMap<V> {
    fn from_iter<I: IntoIterator<Item = (EKey, V)>>(iter: I) -> EMap<V> {
        let mut map = EMap::new();
        map.extend(iter);
        map
    }
}

impl<V: PartialEq> PartialEq for EMap<V> {
    fn eq(&self, other: &EMap<V>) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<V: Eq> Eq for EMap<V> {}

impl<V: fmt::Debug> fmt::Debug for EMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Encoded as the B-tree it replaced: a map, in key order.
impl<V: Serialize> Serialize for EMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for EMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EMap<V>, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = EMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of collection elements")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<EMap<V>, A::Error> {
                let mut map = EMap::new();
                while let Some((k, v)) = access.next_entry()? {
                    map.insert(k, v);
                }
                Ok(map)
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ekey::Probe;
    use proptest::prelude::*;

    /// A key with a chosen hash, as a crafted collision would have.
    fn crafted(hash: u64, n: u32) -> EKey {
        EKey::with_hash(hash, &n.to_le_bytes())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u8),
        Remove(u16),
        Retain(u8),
        Scan(u64, u8),
    }

    fn op(space: u16) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..space, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (0..space).prop_map(Op::Remove),
            1 => any::<u8>().prop_map(Op::Retain),
            1 => (any::<u64>(), 1..20u8).prop_map(|(h, n)| Op::Scan(h, n)),
        ]
    }

    /// Crafted keys share their top 6 bits, differ in the next two and
    /// then only in their lowest bits, among a few hashes: under 128 keys
    /// the directory may not reach those two bits, so their bucket turns
    /// into a B-tree, which splits both ways once the map grows past that.
    fn clustered(k: u64) -> u64 {
        0xA800_0000_0000_0000 | ((k % 4) << 56) | (k % 5)
    }

    /// Keys 0..space as bytes, or crafted (see `clustered`) when `collide`.
    fn key(k: u16, collide: bool) -> EKey {
        if collide {
            crafted(clustered(u64::from(k)), u32::from(k))
        } else {
            EKey::new(format!("k{k}").as_bytes())
        }
    }

    fn check(map: &EMap<u8>, model: &BTreeMap<EKey, u8>) {
        assert_eq!(map.len(), model.len());
        assert!(map.iter().eq(model.iter()), "order or content differs");
        for (k, v) in model {
            assert_eq!(map.get(k), Some(v));
            let probe = Probe::new(k.bytes());
            assert_eq!(map.get(probe.as_keyed()), model.get(probe.as_keyed()));
        }
    }

    proptest! {
        #[test]
        fn behaves_as_a_btree_map_in_key_order(
            ops in proptest::collection::vec(op(600), 1..900),
            collide in any::<bool>(),
        ) {
            let mut map = EMap::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(map.insert(key(k, collide), v), model.insert(key(k, collide), v));
                    }
                    Op::Remove(k) => {
                        let k = key(k, collide);
                        prop_assert_eq!(map.remove(&k), model.remove(&k));
                    }
                    Op::Retain(m) => {
                        map.retain(|_, v| *v % 4 != m % 4);
                        model.retain(|_, v| *v % 4 != m % 4);
                    }
                    Op::Scan(h, n) => {
                        let h = if collide && h % 2 == 0 { clustered(h / 2) } else { h };
                        let got: Vec<_> = map.iter_from(h).take(n.into()).collect();
                        let want: Vec<_> = model
                            .range::<dyn Keyed, _>((
                                Bound::Included(Probe::at_hash(h).as_keyed()),
                                Bound::Unbounded,
                            ))
                            .take(n.into())
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                }
            }
            check(&map, &model);
            let encoded = crate::codec::encode(&map).expect("encodes");
            prop_assert_eq!(encoded.clone(), crate::codec::encode(&model).expect("encodes"));
            // A decoded key's hash is computed from its bytes: crafted
            // ones come back as the keys they imitate.
            if !collide {
                let decoded: EMap<u8> = crate::codec::decode(&encoded).expect("decodes");
                prop_assert_eq!(&decoded, &map);
            }
            prop_assert_eq!(map.clone().into_iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
        }
    }

    fn table<V>(map: &EMap<V>) -> &Table<V> {
        match &map.0 {
            Repr::Table(t) => t,
            Repr::Few(_) => panic!("a vector of {} keys", map.len()),
        }
    }

    #[test]
    fn keys_sharing_their_top_bits_keep_the_directory_small() {
        let mut map = EMap::new();
        // All within one 2^-50 sliver of the hash space: no split parts them
        // before the directory would reach 2^50 slots.
        for n in 0..10_000u32 {
            map.insert(crafted(0x1234_5600_0000_0000 | u64::from(n), n), n);
        }
        let t = table(&map);
        assert!(
            t.dir.len() <= 2 * map.len(),
            "directory of {} slots",
            t.dir.len()
        );
        assert!(matches!(
            t.bucket_of(0x1234_5600_0000_0000).keys,
            Keys::Many(_)
        ));
        for n in 0..10_000u32 {
            assert_eq!(
                map.get(&crafted(0x1234_5600_0000_0000 | u64::from(n), n)),
                Some(&n)
            );
        }
    }

    #[test]
    fn the_first_probe_covers_where_lookups_end() {
        for size in [1u32, 5, 16, 17, 200, 20_000] {
            let mut map = EMap::new();
            for n in 0..size {
                map.insert(EKey::new(&n.to_le_bytes()), n);
            }
            let mut covered = 0;
            for n in 0..size {
                let key = EKey::new(&n.to_le_bytes());
                let found: *const u32 = map.get(&key).unwrap();
                let (at, len) = map.first_probe(key.hash()).unwrap();
                assert!(
                    len <= 3 * std::mem::size_of::<(EKey, u32)>(),
                    "three entries"
                );
                if (at..at + len).contains(&(found as usize)) {
                    covered += 1;
                }
            }
            // Interpolation within a bucket of at most 16 ends on the guess
            // or a neighbour about three times in four (a window of three
            // put at random would cover about one in four).
            assert!(covered * 10 >= size * 7, "{covered} of {size}");
        }
        assert_eq!(EMap::<u32>::new().first_probe(7), None);
        let mut map = EMap::new();
        for n in 0..5_000u32 {
            map.insert(EKey::new(&n.to_le_bytes()), n);
        }
        for n in 0..5_000u32 {
            let key = EKey::new(&n.to_le_bytes());
            assert_eq!(map.get_by_hash(key.hash()), Some(&n));
        }
        let absent = EKey::new(b"absent");
        assert_eq!(map.get_by_hash(absent.hash()), None);
        let mut crafted_map = EMap::new();
        for n in 0..1_000u32 {
            crafted_map.insert(crafted(0x1234_5600_0000_0000 | u64::from(n), n), n);
        }
        assert_eq!(
            crafted_map.first_probe(0x1234_5600_0000_0000),
            None,
            "a B-tree bucket has no place to guess"
        );
    }

    #[test]
    fn a_million_keys_split_into_small_buckets_and_removals_free_them() {
        let mut map = EMap::new();
        for n in 0..1_000_000u32 {
            map.insert(EKey::new(&n.to_le_bytes()), n);
        }
        let t = table(&map);
        let biggest = t.buckets.iter().map(|b| b.keys.len()).max();
        assert!(biggest <= Some(SPLIT_AT), "a bucket of {biggest:?}");
        assert!(t.dir.len() <= 2 * map.len());
        map.retain(|_, n| *n % 100 == 0);
        assert_eq!(map.len(), 10_000);
        let t = table(&map);
        assert!(t.buckets.len() < 2_000, "{} buckets", t.buckets.len());
        for n in (0..1_000_000u32).step_by(100) {
            assert_eq!(map.get(&EKey::new(&n.to_le_bytes())), Some(&n));
        }
        map.retain(|_, n| *n < 500);
        assert!(matches!(map.0, Repr::Few(_)), "five keys back in a vector");
        map.retain(|_, _| false);
        assert!(matches!(&map.0, Repr::Few(v) if v.capacity() == 0));
    }

    #[test]
    fn draining_a_big_map_in_order_merges_its_buckets_and_frees_them() {
        let mut map = EMap::new();
        for n in 0..200_000u32 {
            map.insert(EKey::new(&n.to_le_bytes()), n);
        }
        let full = map.heap_bytes();
        // Remove the lowest 90% in key order, as a drain by SSCAN would.
        let doomed: Vec<EKey> = map.keys().take(180_000).cloned().collect();
        for k in &doomed {
            assert!(map.remove(k).is_some());
        }
        assert_eq!(map.len(), 20_000);
        let t = table(&map);
        let live: Vec<&Bucket<u32>> = (0..t.buckets.len())
            .filter(|i| !t.free.contains(&(*i as u32)))
            .map(|i| &t.buckets[i])
            .collect();
        let empty = live.iter().filter(|b| b.keys.len() == 0).count();
        assert!(
            empty <= 256 + 2 * t.depth as usize,
            "{empty} empty buckets left"
        );
        assert!(
            live.len() < 20_000 / 4,
            "{} buckets for 20,000 keys",
            live.len()
        );
        assert!(
            map.heap_bytes() < full / 3,
            "{} of {full} bytes kept",
            map.heap_bytes()
        );
        // The first key is found without a walk across the emptied range.
        assert_eq!(
            map.iter().next().map(|(k, _)| k),
            map.iter_from(0).next().map(|(k, _)| k)
        );
        let doomed: std::collections::HashSet<&[u8]> = doomed.iter().map(|k| k.bytes()).collect();
        let rest: std::collections::HashSet<u32> = map.values().copied().collect();
        let want: std::collections::HashSet<u32> = (0..200_000u32)
            .filter(|n| !doomed.contains(&n.to_le_bytes()[..]))
            .collect();
        assert_eq!(rest, want);
    }

    #[test]
    fn a_sparse_region_of_a_big_directory_does_not_merge_back_a_wide_run() {
        // 50,000 keys in the upper half of the hash space, then keys made
        // to split and merge the nearly empty lower half: each merge there
        // would rewrite half the directory, and a split rewrite it again.
        let mut map = EMap::new();
        let mut n = 0u32;
        while map.len() < 50_000 {
            let k = EKey::new(&n.to_le_bytes());
            if k.hash() >> 63 == 1 {
                map.insert(k, n);
            }
            n += 1;
        }
        let low = |i: u64| crafted(((i % 2) << 62) | (i << 20), i as u32);
        for i in 0..17 {
            map.insert(low(i), 0);
        }
        for i in 0..9 {
            map.remove(&low(i));
        }
        let t = table(&map);
        assert!(
            t.bucket_of(0).depth >= 2,
            "merged back into half the directory"
        );
        for i in 9..17 {
            assert_eq!(map.get(&low(i)), Some(&0));
        }
    }

    #[test]
    fn crafted_keys_deleted_down_to_a_few_leave_no_big_directory() {
        let mut map = EMap::new();
        for n in 0..5_000u32 {
            map.insert(crafted(0x5500_0000_0000_0000 | u64::from(n), n), n);
        }
        for n in 0..5_000u32 {
            map.insert(EKey::new(&n.to_le_bytes()), n);
        }
        for n in 9..5_000u32 {
            map.remove(&crafted(0x5500_0000_0000_0000 | u64::from(n), n));
            map.remove(&EKey::new(&n.to_le_bytes()));
        }
        assert_eq!(map.len(), 18);
        let t = table(&map);
        assert!(
            t.dir.len() <= 8 * 4 * SPLIT_AT,
            "a directory of {} slots",
            t.dir.len()
        );
    }

    #[test]
    fn a_small_map_is_one_vector_with_little_slack() {
        let mut map = EMap::new();
        assert_eq!(
            std::mem::size_of::<EMap<u8>>(),
            24,
            "as small as a BTreeMap"
        );
        for n in 0..10u32 {
            map.insert(EKey::new(&n.to_le_bytes()), n);
        }
        match &map.0 {
            Repr::Few(v) => assert!(v.capacity() <= 12, "capacity {}", v.capacity()),
            Repr::Table(_) => panic!("a table for ten keys"),
        }
    }
}
