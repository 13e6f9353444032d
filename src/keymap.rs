//! One database's keys in one shard: a hash table of key, state and the
//! key's access clock, looked up by the key's bytes.
//!
//! A table of our own entries (not a map) because eviction needs what a
//! map does not offer: a random key in O(1) (a random bucket, then the next
//! full one, as Redis's `dictGetRandomKey`), and a place for the access
//! clock that LRU and LFU sample; and SCAN resumes at a bucket instead of
//! walking the table from its start.

use std::hash::BuildHasher;

use chorus_crdt::KeyState;
use hashbrown::HashTable;

use crate::key::Key;
use crate::keyspace::KeyHasher;

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

pub struct KeyMap {
    table: HashTable<Entry>,
    hasher: KeyHasher,
}

impl Default for KeyMap {
    fn default() -> KeyMap {
        KeyMap::with_hasher(KeyHasher::default())
    }
}

impl KeyMap {
    pub fn with_hasher(hasher: KeyHasher) -> KeyMap {
        KeyMap {
            table: HashTable::new(),
            hasher,
        }
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
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

    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.table.find(self.hash(key), |e| &*e.key == key)
    }

    pub fn entry_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let hash = self.hash(key);
        self.table.find_mut(hash, |e| &*e.key == key)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.entry(key).is_some()
    }

    /// The key's entry, made with an empty state and `clock` if absent.
    pub fn get_or_insert(&mut self, key: &[u8], clock: u32) -> &mut Entry {
        let hash = self.hash(key);
        let hasher = &self.hasher;
        self.table
            .entry(hash, |e| &*e.key == key, |e| hasher.hash_one(&*e.key))
            .or_insert_with(|| {
                let mut key = Key::new(key);
                key.set_mark(clock);
                Entry {
                    key,
                    state: KeyState::default(),
                }
            })
            .into_mut()
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<KeyState> {
        let hash = self.hash(key);
        let found = self.table.find_entry(hash, |e| &*e.key == key).ok()?;
        Some(found.remove().0.state)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&Key, &mut KeyState) -> bool) {
        self.table.retain(|e| keep(&e.key, &mut e.state));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Key, &KeyState)> {
        self.table.iter().map(pair)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.table.iter().map(|e| &e.key)
    }

    pub fn values(&self) -> impl Iterator<Item = &KeyState> {
        self.table.iter().map(|e| &e.state)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.table.iter()
    }

    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.table.iter_mut()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut KeyState> {
        self.table.iter_mut().map(|e| &mut e.state)
    }

    /// How many buckets the table has: positions for [`KeyMap::bucket`].
    pub fn buckets(&self) -> usize {
        self.table.num_buckets()
    }

    /// The entry in bucket `index`, if it holds one.
    pub fn bucket(&self, index: usize) -> Option<&Entry> {
        self.table.get_bucket(index)
    }

    /// Up to `most` entries `wanted` takes, from the buckets at or after
    /// `start` (wrapping around), looking at `most_buckets` buckets at most.
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
            .filter_map(move |i| self.bucket((start + i) % n))
            .filter(move |e| wanted(e))
            .take(most)
    }
}

fn pair(e: &Entry) -> (&Key, &KeyState) {
    (&e.key, &e.state)
}

impl<'a> IntoIterator for &'a KeyMap {
    type Item = (&'a Key, &'a KeyState);
    type IntoIter = std::iter::Map<
        hashbrown::hash_table::Iter<'a, Entry>,
        fn(&'a Entry) -> (&'a Key, &'a KeyState),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.table
            .iter()
            .map(pair as fn(&'a Entry) -> (&'a Key, &'a KeyState))
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
    fn finds_inserts_and_removes_by_bytes() {
        let mut m = map();
        for i in 0..1000u32 {
            m.get_or_insert(format!("key:{i}").as_bytes(), i);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.entry(b"key:7").map(Entry::clock), Some(7));
        assert!(m.remove(b"key:7").is_some());
        assert!(m.get(b"key:7").is_none());
        assert_eq!(
            m.get_or_insert(b"key:8", 99).clock(),
            8,
            "an existing entry stays"
        );
        let long = vec![b'x'; 100];
        m.get_or_insert(&long, 1);
        assert!(m.contains_key(&long));
    }

    #[test]
    fn every_full_bucket_is_reachable_from_some_start() {
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
