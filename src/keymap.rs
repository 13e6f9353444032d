//! One database's keys in one shard: a hash table of positions into a slab
//! of entries (key, state, access clock), looked up by the key's bytes.
//!
//! Our own structure (not a map) because eviction needs what a map does not
//! offer: a few random keys in O(1) (a random bucket, then the next full
//! ones, as Redis's `dictGetSomeKeys`), and a place for the access clock
//! that LRU and LFU sample; and SCAN resumes at a position instead of
//! walking the table from its start.
//!
//! Why a slab behind 4-byte positions rather than entries in the table's
//! own slots: a hash table doubles when it fills, so at some key counts
//! every slot stands about half empty, and an entry is 80 bytes. Empty
//! positions cost 5 bytes instead, and the slab grows a segment at a
//! time, so a key costs its entry plus about 10 bytes whatever the count
//! (1M small strings: 218 bytes of RSS a key in the table's slots; see
//! docs/benchmarks.md). The price is one more memory access per lookup.
//!
//! Entries never move while they live, except when a map that lost more
//! than half its keys is compacted: a SCAN running across that compaction
//! may miss keys, as one running across a table's growth could before.

use std::hash::BuildHasher;

use chorus_crdt::KeyState;

use crate::key::Key;
use crate::keyspace::KeyHasher;
use crate::keytable::{ChunksHint, KeyTable};

/// A key and its state. The key's mark holds when it was last used:
/// tenths of a second for LRU, or Redis's LFU word (minutes << 8 |
/// logarithmic counter).
pub struct Entry {
    pub key: Key,
    pub state: KeyState,
}

impl Entry {
    pub fn clock(&self) -> u32 {
        self.key.mark()
    }

    pub fn set_clock(&mut self, clock: u32) {
        self.key.set_mark(clock);
    }
}

/// Entries a full segment holds (22 KB of 88-byte entries): what a map
/// wastes past its last entry is at most one segment.
const SEGMENT: usize = 256;
const SEGMENT_BITS: u32 = SEGMENT.trailing_zeros();

/// Entries in segments, addressed by position. A removal leaves a hole
/// that the next insertion fills.
#[derive(Default)]
struct Slab {
    segments: Vec<Vec<Option<Entry>>>,
    holes: Vec<u32>,
}

impl Slab {
    /// Positions in use or holes.
    fn positions(&self) -> usize {
        match self.segments.last() {
            None => 0,
            Some(last) => (self.segments.len() - 1) * SEGMENT + last.len(),
        }
    }

    /// Where position `pos` lives in memory, if the slab reaches it.
    fn address(&self, pos: u32) -> Option<usize> {
        let pos = pos as usize;
        let segment = self.segments.get(pos >> SEGMENT_BITS)?;
        let at = segment.get(pos & (SEGMENT - 1))?;
        Some(at as *const Option<Entry> as usize)
    }

    fn get(&self, pos: u32) -> Option<&Entry> {
        let pos = pos as usize;
        self.segments
            .get(pos >> SEGMENT_BITS)
            .and_then(|s| s.get(pos & (SEGMENT - 1)))
            .and_then(Option::as_ref)
    }

    fn get_mut(&mut self, pos: u32) -> Option<&mut Entry> {
        let pos = pos as usize;
        self.segments
            .get_mut(pos >> SEGMENT_BITS)
            .and_then(|s| s.get_mut(pos & (SEGMENT - 1)))
            .and_then(Option::as_mut)
    }

    fn slot(&mut self, pos: u32) -> &mut Option<Entry> {
        let pos = pos as usize;
        &mut self.segments[pos >> SEGMENT_BITS][pos & (SEGMENT - 1)]
    }

    fn insert(&mut self, entry: Entry) -> u32 {
        if let Some(pos) = self.holes.pop() {
            *self.slot(pos) = Some(entry);
            return pos;
        }
        let pos = self.positions() as u32;
        if self.segments.last().is_none_or(|s| s.len() == SEGMENT) {
            // A first segment starts small so that the many maps that hold
            // a few keys (other databases) stay small.
            let first = if self.segments.is_empty() { 4 } else { SEGMENT };
            self.segments.push(Vec::with_capacity(first));
        }
        if let Some(last) = self.segments.last_mut() {
            if last.len() == last.capacity() {
                let to = (last.capacity() * 2).clamp(4, SEGMENT);
                last.reserve_exact(to - last.len());
            }
            last.push(Some(entry));
        }
        pos
    }

    fn take(&mut self, pos: u32) -> Option<Entry> {
        let taken = self.slot(pos).take();
        if taken.is_some() {
            self.holes.push(pos);
        }
        taken
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.segments.iter().flatten().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.segments.iter_mut().flatten().flatten()
    }
}

/// The hash of the key at a slab position: what a table rebuild asks.
fn hash_at<'a>(slab: &'a Slab, hasher: &'a KeyHasher) -> impl Fn(u32) -> u64 + 'a {
    move |p| slab.get(p).map_or(0, |e| key_hash(hasher, &e.key))
}

/// A key's hash in the maps: its bytes alone, without the length that
/// `Hash` for a slice writes first (a lookup compares the bytes anyway,
/// and the length cost a quarter of hashing a 20-byte key).
pub fn key_hash(hasher: &KeyHasher, key: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = hasher.build_hasher();
    h.write(key);
    h.finish()
}

pub struct KeyMap {
    /// Positions in `slab`, by the hash of their entry's key.
    table: KeyTable,
    slab: Slab,
    hasher: KeyHasher,
    /// Changes whenever entries may have moved (a compaction, the empty
    /// map's reset), unique across maps: a scan that resumes at a position
    /// starts over when it finds another epoch (see [`KeyMap::epoch`]).
    epoch: u64,
}

/// The next [`KeyMap::epoch`].
fn new_epoch() -> u64 {
    static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for KeyMap {
    fn default() -> KeyMap {
        KeyMap::with_hasher(KeyHasher::default())
    }
}

impl KeyMap {
    pub fn with_hasher(hasher: KeyHasher) -> KeyMap {
        KeyMap {
            table: KeyTable::default(),
            slab: Slab::default(),
            hasher,
            epoch: new_epoch(),
        }
    }

    /// Which arrangement of entries positions name: a position read at
    /// one epoch names the same entry, if it lives, while the epoch holds.
    /// A scan that saw every position of one epoch saw every key that
    /// lived throughout it.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    fn hash(&self, key: &[u8]) -> u64 {
        key_hash(&self.hasher, key)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyState> {
        self.entry(key).map(|e| &e.state)
    }

    fn position(&self, key: &[u8]) -> Option<u32> {
        let slab = &self.slab;
        self.table.find(self.hash(key), |p| {
            slab.get(p).is_some_and(|e| &*e.key == key)
        })
    }

    /// Asks the CPU to bring in the entries a lookup of the key whose hash
    /// is `hash` will read
    /// (its chunk should be in the cache already: see [`KeyMap::hint`]).
    pub fn prefetch_entries(&self, hash: u64) {
        let slab = &self.slab;
        self.table.candidates(hash, |p| {
            if let Some(at) = slab.address(p) {
                crate::prefetch::read(at);
                crate::prefetch::read(at + std::mem::size_of::<Option<Entry>>() - 1);
            }
        });
    }

    /// Asks the CPU to bring in the bytes of the long keys a lookup of
    /// the key whose hash is `hash` will compare (their entries should be
    /// in the cache already: see [`KeyMap::prefetch_entries`]).
    pub fn prefetch_key_bytes(&self, hash: u64) {
        let slab = &self.slab;
        self.table.candidates(hash, |p| {
            if let Some(at) = slab.get(p).and_then(|e| e.key.heap_address()) {
                crate::prefetch::read(at);
            }
        });
    }

    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.slab.get(self.position(key)?)
    }

    pub fn entry_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let pos = self.position(key)?;
        self.slab.get_mut(pos)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.position(key).is_some()
    }

    /// The key's entry, made with an empty state and `clock` if absent.
    pub fn get_or_insert(&mut self, key: &[u8], clock: u32) -> &mut Entry {
        let hash = self.hash(key);
        let slab = &self.slab;
        let pos = match self
            .table
            .find(hash, |p| slab.get(p).is_some_and(|e| &*e.key == key))
        {
            Some(pos) => pos,
            None => {
                let mut key = Key::new(key);
                key.set_mark(clock);
                let pos = self.slab.insert(Entry {
                    key,
                    state: KeyState::default(),
                });
                self.table
                    .insert(hash, pos, hash_at(&self.slab, &self.hasher));
                pos
            }
        };
        self.slab
            .get_mut(pos)
            .expect("the table holds only positions of entries")
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<KeyState> {
        let hash = self.hash(key);
        let slab = &self.slab;
        let pos = self
            .table
            .remove(hash, |p| slab.get(p).is_some_and(|e| &*e.key == key))?;
        let state = self.slab.take(pos).map(|e| e.state);
        self.after_removals();
        state
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut KeyState) -> bool) {
        let mut removed = false;
        for pos in 0..self.slab.positions() as u32 {
            let kept = match self.slab.get_mut(pos) {
                None => continue,
                Some(e) => keep(&e.key, &mut e.state),
            };
            if !kept {
                self.slab.take(pos);
                removed = true;
            }
        }
        if removed {
            let slab = &self.slab;
            self.table
                .retain(|p| slab.get(p).is_some(), hash_at(slab, &self.hasher));
            self.after_removals();
        }
    }

    /// Gives memory back once most of the slab is holes: an empty map
    /// frees everything, a map that lost more than half its entries moves
    /// them to the front.
    fn after_removals(&mut self) {
        let holes = self.slab.holes.len();
        if self.table.is_empty() {
            self.table.clear();
            self.slab = Slab::default();
            self.epoch = new_epoch();
        } else if holes >= SEGMENT && holes > self.table.len() {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let old = std::mem::take(&mut self.slab);
        let mut moved_to = vec![u32::MAX; old.positions()];
        let mut slab = Slab::default();
        for (pos, entry) in old
            .segments
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(p, e)| Some((p, e?)))
        {
            moved_to[pos] = slab.insert(entry);
        }
        for p in self.table.positions_mut() {
            *p = moved_to[*p as usize];
        }
        self.table.shrink_to_fit(hash_at(&slab, &self.hasher));
        self.slab = slab;
        self.epoch = new_epoch();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &KeyState)> {
        self.slab.iter().map(|e| (&e.key, &e.state))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.slab.iter().map(|e| &e.key)
    }

    pub fn values(&self) -> impl Iterator<Item = &KeyState> {
        self.slab.iter().map(|e| &e.state)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slab.iter()
    }

    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.slab.iter_mut()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut KeyState> {
        self.slab.iter_mut().map(|e| &mut e.state)
    }

    /// How many positions the slab has, for [`KeyMap::at`]: SCAN walks
    /// them, and they stay put while the map grows.
    pub fn positions(&self) -> usize {
        self.slab.positions()
    }

    /// The entry at `position`, if one lives there.
    pub fn at(&self, position: usize) -> Option<&Entry> {
        self.slab.get(u32::try_from(position).ok()?)
    }

    /// [`KeyMap::at`], to change the entry's state in place (not its key).
    pub fn state_at_mut(&mut self, position: usize) -> Option<&mut KeyState> {
        Some(&mut self.slab.get_mut(u32::try_from(position).ok()?)?.state)
    }

    /// Where the map's table is, for prefetching without its lock.
    pub fn hint(&self) -> std::sync::Arc<ChunksHint> {
        self.table.hint()
    }

    /// This map and `other` traded places (SWAPDB): each hint goes on
    /// naming the map at its place.
    pub fn swap_hints(&mut self, other: &mut KeyMap) {
        self.table.swap_hints(&mut other.table);
    }

    /// Bytes the map holds besides what its entries point to: the table,
    /// the slab's segments (holes and spare room included) and its list of
    /// holes.
    pub fn footprint(&self) -> usize {
        let segments: usize = self.slab.segments.iter().map(Vec::capacity).sum();
        self.table.allocation_size()
            + segments * std::mem::size_of::<Option<Entry>>()
            + self.slab.segments.capacity() * std::mem::size_of::<Vec<Option<Entry>>>()
            + self.slab.holes.capacity() * 4
    }

    /// How many buckets the table has: starts for [`KeyMap::sample_run`].
    pub fn buckets(&self) -> usize {
        self.table.slots()
    }

    /// Up to `most` entries `wanted` takes, from the table's buckets at or
    /// after `start` (wrapping around), looking at `most_buckets` buckets
    /// at most. Neighbouring buckets hold keys of unrelated hashes, so the
    /// entries are as random as picks from all over, where neighbours in
    /// the slab were inserted together.
    pub fn sample_run(
        &self,
        start: usize,
        most: usize,
        most_buckets: usize,
        wanted: impl Fn(&Entry) -> bool,
    ) -> impl Iterator<Item = &Entry> {
        let n = self.buckets();
        let looked = if self.table.is_empty() {
            0
        } else {
            n.min(most_buckets)
        };
        (0..looked)
            .filter_map(move |i| self.table.at_slot((start + i) % n))
            .filter_map(move |p| self.slab.get(p))
            .filter(move |e| wanted(e))
            .take(most)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> KeyMap {
        KeyMap::with_hasher(KeyHasher::with_seed(
            7,
            foldhash::SharedSeed::global_fixed(),
        ))
    }

    #[test]
    fn a_hole_costs_nothing_over_an_entry() {
        assert_eq!(
            std::mem::size_of::<Option<Entry>>(),
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn finds_inserts_and_removes_by_bytes() {
        let mut m = map();
        for i in 0..1000u32 {
            m.get_or_insert(format!("key:{i}").as_bytes(), i);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.entry(b"key:7").map(Entry::clock), Some(7));
        assert!(m.remove(b"key:7").is_some());
        assert!(m.get(b"key:7").is_none());
        assert!(m.remove(b"key:7").is_none());
        assert_eq!(
            m.get_or_insert(b"key:8", 99).clock(),
            8,
            "an existing entry stays"
        );
        let long = vec![b'x'; 100];
        m.get_or_insert(&long, 1);
        assert!(m.contains_key(&long));
        assert_eq!(m.entries().count(), 1000);
    }

    /// Against a std map through inserts, removals (holes reused, then
    /// compaction and the empty map's reset) and retain.
    #[test]
    fn keeps_exactly_what_a_hash_map_keeps() {
        let mut m = map();
        let mut model = std::collections::HashMap::new();
        let check = |m: &KeyMap, model: &std::collections::HashMap<Vec<u8>, u32>| {
            assert_eq!(m.len(), model.len());
            assert_eq!(m.entries().count(), model.len());
            for (k, &clock) in model {
                assert_eq!(m.entry(k).map(Entry::clock), Some(clock), "{k:?}");
            }
            let mut seen = 0;
            for p in 0..m.positions() {
                if let Some(e) = m.at(p) {
                    assert_eq!(model.get(&e.key[..]), Some(&e.clock()));
                    seen += 1;
                }
            }
            assert_eq!(seen, model.len());
        };
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..6u32 {
            for _ in 0..3000 {
                let k = format!("k{}", next() % 4000).into_bytes();
                if next() % 3 == 0 {
                    assert_eq!(m.remove(&k).is_some(), model.remove(&k).is_some());
                } else {
                    let clock = round * 10_000 + (next() % 1000) as u32;
                    let at = *model.entry(k.clone()).or_insert(clock);
                    assert_eq!(m.get_or_insert(&k, clock).clock(), at);
                }
            }
            check(&m, &model);
            // Drop most keys at once: holes past the live entries compact.
            let before = m.positions();
            m.retain(|k, _| k.ends_with(b"7"));
            model.retain(|k, _| k.ends_with(b"7"));
            check(&m, &model);
            assert!(m.positions() < before / 2, "{} of {before}", m.positions());
        }
        m.retain(|_, _| false);
        assert_eq!(m.positions(), 0);
        assert_eq!(
            m.table.allocation_size(),
            0,
            "an emptied map frees its table"
        );
        check(&m, &std::collections::HashMap::new());
    }

    /// A table of entries that doubles stands half empty after each
    /// doubling: 80-byte entries then cost 160 bytes and more a key. Here
    /// an empty position costs 5 bytes, at every size.
    #[test]
    fn a_key_costs_its_entry_and_a_few_bytes_at_any_size() {
        let mut m = map();
        let entry = std::mem::size_of::<Entry>();
        let mut worst = 0.0f64;
        for i in 0..200_000u32 {
            m.get_or_insert(format!("key:{i:012}").as_bytes(), 0);
            let n = i as usize + 1;
            if n >= 20_000 && n.is_multiple_of(97) {
                worst = worst.max(m.footprint() as f64 / n as f64);
            }
        }
        assert!(
            worst <= entry as f64 + 16.0,
            "up to {worst:.1} bytes a key for {entry}-byte entries"
        );
    }

    #[test]
    fn positions_stay_put_while_the_map_grows() {
        let mut m = map();
        for i in 0..100u32 {
            m.get_or_insert(format!("a{i}").as_bytes(), i);
        }
        let before: Vec<Vec<u8>> = (0..m.positions())
            .map(|p| m.at(p).map(|e| e.key.to_vec()).unwrap_or_default())
            .collect();
        for i in 0..10_000u32 {
            m.get_or_insert(format!("b{i}").as_bytes(), i);
        }
        for (p, k) in before.iter().enumerate() {
            assert_eq!(m.at(p).map(|e| &e.key[..]), Some(&k[..]));
        }
    }

    #[test]
    fn every_entry_is_reachable_from_some_start() {
        let mut m = map();
        assert_eq!(m.sample_run(0, 10, 10, |_| true).count(), 0);
        for i in 0..100u32 {
            m.get_or_insert(format!("k{i}").as_bytes(), 0);
        }
        let mut seen = std::collections::HashSet::new();
        for start in 0..m.buckets() {
            let e = m
                .sample_run(start, 1, usize::MAX, |_| true)
                .next()
                .expect("not empty");
            seen.insert(e.key.to_vec());
        }
        assert_eq!(seen.len(), 100);
        let odd = |e: &Entry| e.key.ends_with(b"1");
        assert_eq!(
            m.sample_run(0, 1000, usize::MAX, |e| e.key.is_empty())
                .count(),
            0
        );
        let run: Vec<&Entry> = m.sample_run(3, 5, usize::MAX, odd).collect();
        assert_eq!(run.len(), 5);
        assert!(run.iter().all(|e| odd(e)));
        assert_eq!(m.sample_run(0, 5, 0, |_| true).count(), 0);
    }
}
