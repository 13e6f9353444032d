//! The ordered map a list's elements live in: by position, in chunks of
//! at most [`CHUNK`] entries, as Redis's quicklist keeps its listpacks.
//!
//! A `BTreeMap` spends a search down the tree on every push at an end (a
//! scan of up to 11 positions per level) and, fed in order, leaves its
//! nodes about half full: 180 bytes per element where the entries take 96.
//! Here a push at an end compares with one position and fills its chunk;
//! a read by index skips whole chunks; anything else finds its chunk by a
//! binary search over the chunks' last positions.

use std::collections::VecDeque;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::position::Position;

/// Entries per chunk at most.
pub const CHUNK: usize = 64;

type Chunk<V> = VecDeque<(Position, V)>;

/// Entries sorted by position, chunked.
#[derive(Clone)]
pub struct Seq<V> {
    /// Non-empty, each sorted, each chunk's positions below the next's.
    chunks: VecDeque<Chunk<V>>,
    len: usize,
}

impl<V> Default for Seq<V> {
    fn default() -> Self {
        Seq::new()
    }
}

impl<V> Seq<V> {
    pub const fn new() -> Seq<V> {
        Seq {
            chunks: VecDeque::new(),
            len: 0,
        }
    }
}

/// Equal entries make equal maps, however they are chunked.
impl<V: PartialEq> PartialEq for Seq<V> {
    fn eq(&self, other: &Seq<V>) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}
impl<V: Eq> Eq for Seq<V> {}

impl<V: std::fmt::Debug> std::fmt::Debug for Seq<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A chunk holding one entry, with room for `room`: a whole chunk's when
/// opened beside a full one (a long list growing), one otherwise (most
/// lists are short, and so is every delta).
fn new_chunk<V>(pos: Position, value: V, room: usize) -> Chunk<V> {
    let mut c = VecDeque::with_capacity(room);
    c.push_back((pos, value));
    c
}

impl<V> Seq<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// The index of the chunk `pos` falls in: the first whose last
    /// position is at or above it (`chunks.len()`: past the end).
    fn chunk_for(&self, pos: &Position) -> usize {
        self.chunks
            .partition_point(|c| c.back().is_some_and(|(k, _)| k < pos))
    }

    fn find(&self, pos: &Position) -> Option<(usize, usize)> {
        let ci = self.chunk_for(pos);
        let i = self
            .chunks
            .get(ci)?
            .binary_search_by(|(k, _)| k.cmp(pos))
            .ok()?;
        Some((ci, i))
    }

    pub fn get(&self, pos: &Position) -> Option<&V> {
        let (ci, i) = self.find(pos)?;
        Some(&self.chunks[ci][i].1)
    }

    pub fn get_mut(&mut self, pos: &Position) -> Option<&mut V> {
        let (ci, i) = self.find(pos)?;
        Some(&mut self.chunks[ci][i].1)
    }

    pub fn contains_key(&self, pos: &Position) -> bool {
        self.find(pos).is_some()
    }

    pub fn first_key(&self) -> Option<&Position> {
        self.chunks.front()?.front().map(|(k, _)| k)
    }

    pub fn last_key(&self) -> Option<&Position> {
        self.chunks.back()?.back().map(|(k, _)| k)
    }

    /// Puts `value` at `pos`; the value it replaces.
    pub fn insert(&mut self, pos: Position, value: V) -> Option<V> {
        // At an end (pushes): one comparison, and the end chunk fills up.
        if self.last_key().is_none_or(|last| *last < pos) {
            match self.chunks.back_mut() {
                Some(c) if c.len() < CHUNK => c.push_back((pos, value)),
                Some(_) => self.chunks.push_back(new_chunk(pos, value, CHUNK)),
                None => self.chunks.push_back(new_chunk(pos, value, 1)),
            }
            self.len += 1;
            return None;
        }
        if self.first_key().is_some_and(|first| pos < *first) {
            match self.chunks.front_mut() {
                Some(c) if c.len() < CHUNK => c.push_front((pos, value)),
                Some(_) => self.chunks.push_front(new_chunk(pos, value, CHUNK)),
                None => self.chunks.push_front(new_chunk(pos, value, 1)),
            }
            self.len += 1;
            return None;
        }
        let ci = self.chunk_for(&pos);
        let chunk = &mut self.chunks[ci];
        match chunk.binary_search_by(|(k, _)| k.cmp(&pos)) {
            Ok(i) => Some(std::mem::replace(&mut chunk[i].1, value)),
            Err(i) => {
                chunk.insert(i, (pos, value));
                self.len += 1;
                if chunk.len() > CHUNK {
                    let tail = chunk.split_off(chunk.len() / 2);
                    self.chunks.insert(ci + 1, tail);
                }
                None
            }
        }
    }

    /// The entry at `pos`, made with `V::default()` if absent.
    pub fn or_default(&mut self, pos: Position) -> &mut V
    where
        V: Default,
    {
        if !self.contains_key(&pos) {
            self.insert(pos.clone(), V::default());
        }
        self.get_mut(&pos).expect("just inserted")
    }

    /// Takes the value at `pos` out.
    pub fn remove(&mut self, pos: &Position) -> Option<V> {
        let (ci, i) = self.find(pos)?;
        let (_, value) = self.chunks[ci].remove(i)?;
        self.len -= 1;
        self.settle(ci);
        Some(value)
    }

    /// After a removal from chunk `ci`: drops it if empty, or joins it to
    /// a neighbour when both are small (so that removals in the middle do
    /// not leave many near-empty chunks).
    fn settle(&mut self, ci: usize) {
        let n = self.chunks[ci].len();
        if n == 0 {
            self.chunks.remove(ci);
            return;
        }
        if n >= CHUNK / 4 {
            return;
        }
        let next_fits = self
            .chunks
            .get(ci + 1)
            .is_some_and(|c| c.len() + n <= CHUNK);
        if next_fits {
            if let Some(mut next) = self.chunks.remove(ci + 1) {
                self.chunks[ci].append(&mut next);
            }
        } else if ci > 0 && self.chunks[ci - 1].len() + n <= CHUNK {
            if let Some(mut this) = self.chunks.remove(ci) {
                self.chunks[ci - 1].append(&mut this);
            }
        }
    }

    pub fn pop_first(&mut self) -> Option<(Position, V)> {
        let first = self.chunks.front_mut()?.pop_front()?;
        self.len -= 1;
        if self.chunks.front().is_some_and(VecDeque::is_empty) {
            self.chunks.pop_front();
        }
        Some(first)
    }

    pub fn pop_last(&mut self) -> Option<(Position, V)> {
        let last = self.chunks.back_mut()?.pop_back()?;
        self.len -= 1;
        if self.chunks.back().is_some_and(VecDeque::is_empty) {
            self.chunks.pop_back();
        }
        Some(last)
    }

    /// Keeps the entries `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut(&Position, &mut V) -> bool) {
        for c in self.chunks.iter_mut() {
            c.retain_mut(|(k, v)| keep(k, v));
        }
        self.chunks.retain(|c| !c.is_empty());
        self.len = self.chunks.iter().map(VecDeque::len).sum();
    }

    pub fn iter(&self) -> Iter<'_, V> {
        Iter {
            chunks: &self.chunks,
            front: (0, 0),
            back: (self.chunks.len(), 0),
            left: self.len,
        }
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Position> + ExactSizeIterator {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.iter().map(|(_, v)| v)
    }

    /// Heap bytes of the chunks (entries' own heap not counted).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk<V>>()
            + self
                .chunks
                .iter()
                .map(|c| c.capacity() * std::mem::size_of::<(Position, V)>())
                .sum::<usize>()
    }
}

/// The entries in order, both ways; `nth` skips whole chunks.
pub struct Iter<'a, V> {
    chunks: &'a VecDeque<Chunk<V>>,
    /// Next from the front: (chunk, index).
    front: (usize, usize),
    /// Next from the back is just before (chunk, index).
    back: (usize, usize),
    left: usize,
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a Position, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let chunk = &self.chunks[self.front.0];
        let (k, v) = &chunk[self.front.1];
        self.front.1 += 1;
        if self.front.1 == chunk.len() {
            self.front = (self.front.0 + 1, 0);
        }
        self.left -= 1;
        Some((k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }

    fn nth(&mut self, mut n: usize) -> Option<Self::Item> {
        if n >= self.left {
            self.left = 0;
            return None;
        }
        loop {
            let rest = self.chunks[self.front.0].len() - self.front.1;
            if n < rest {
                self.front.1 += n;
                self.left -= n;
                return self.next();
            }
            n -= rest;
            self.left -= rest;
            self.front = (self.front.0 + 1, 0);
        }
    }
}

impl<V> DoubleEndedIterator for Iter<'_, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        if self.back.1 == 0 {
            self.back.0 -= 1;
            self.back.1 = self.chunks[self.back.0].len();
        }
        self.back.1 -= 1;
        self.left -= 1;
        let (k, v) = &self.chunks[self.back.0][self.back.1];
        Some((k, v))
    }

    fn nth_back(&mut self, mut n: usize) -> Option<Self::Item> {
        if n >= self.left {
            self.left = 0;
            return None;
        }
        loop {
            if self.back.1 == 0 {
                self.back.0 -= 1;
                self.back.1 = self.chunks[self.back.0].len();
            }
            if n < self.back.1 {
                self.back.1 -= n;
                self.left -= n;
                return self.next_back();
            }
            n -= self.back.1;
            self.left -= self.back.1;
            self.back.1 = 0;
        }
    }
}

impl<V> ExactSizeIterator for Iter<'_, V> {}

/// Encoded as a map, as the `BTreeMap` it replaced was.
impl<V: Serialize> Serialize for Seq<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Seq<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Seq<V>, D::Error> {
        struct SeqVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for SeqVisitor<V> {
            type Value = Seq<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of list positions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Seq<V>, A::Error> {
                let mut seq = Seq::default();
                while let Some((k, v)) = access.next_entry()? {
                    seq.insert(k, v);
                }
                Ok(seq)
            }
        }
        d.deserialize_map(SeqVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Dot;
    use crate::stamp::NodeId;
    use std::collections::BTreeMap;

    fn pos(i: u64) -> Position {
        Position::between(
            None,
            None,
            Dot {
                node: NodeId(1),
                n: i,
            },
        )
    }

    proptest::proptest! {
        /// Whatever the inserts, removals and pops, the map holds what a
        /// BTreeMap would, in its order, and reads it alike by index from
        /// either end.
        #[test]
        fn it_behaves_as_a_btreemap(ops in proptest::collection::vec((0u8..6, 0u64..400), 1..2_000)) {
            let mut seq: Seq<u64> = Seq::default();
            let mut model: BTreeMap<Position, u64> = BTreeMap::new();
            // Positions ordered by their number: `pos(i)` differ only by n.
            for (op, i) in ops {
                let p = pos(i);
                match op {
                    0 | 1 => proptest::prop_assert_eq!(seq.insert(p.clone(), i), model.insert(p.clone(), i)),
                    2 => proptest::prop_assert_eq!(seq.remove(&p), model.remove(&p)),
                    3 => proptest::prop_assert_eq!(seq.pop_first(), model.pop_first()),
                    4 => proptest::prop_assert_eq!(seq.pop_last(), model.pop_last()),
                    _ => seq.retain(|_, v| *v % 7 != i % 7),
                }
                if op == 5 {
                    model.retain(|_, v| *v % 7 != i % 7);
                }
                proptest::prop_assert_eq!(seq.len(), model.len());
                proptest::prop_assert_eq!(seq.get(&p), model.get(&p));
            }
            let got: Vec<(&Position, &u64)> = seq.iter().collect();
            let want: Vec<(&Position, &u64)> = model.iter().collect();
            proptest::prop_assert_eq!(&got, &want);
            let back: Vec<(&Position, &u64)> = seq.iter().rev().collect();
            let want_back: Vec<(&Position, &u64)> = model.iter().rev().collect();
            proptest::prop_assert_eq!(back, want_back);
            for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, model.len()] {
                proptest::prop_assert_eq!(seq.iter().nth(n), model.iter().nth(n));
                proptest::prop_assert_eq!(seq.iter().rev().nth(n), model.iter().rev().nth(n));
            }
            // A mixed walk from both ends meets in the middle.
            let mut it = seq.iter();
            let mut model_it = model.iter();
            loop {
                let (a, b) = (it.next(), model_it.next());
                proptest::prop_assert_eq!(a, b);
                if a.is_none() { break; }
                proptest::prop_assert_eq!(it.next_back(), model_it.next_back());
                proptest::prop_assert_eq!(it.len(), model_it.len());
            }
            let bytes = postcard::to_allocvec(&seq).unwrap();
            proptest::prop_assert_eq!(&bytes, &postcard::to_allocvec(&model).unwrap());
            let read: Seq<u64> = postcard::from_bytes(&bytes).unwrap();
            proptest::prop_assert_eq!(read, seq);
        }
    }

    #[test]
    fn a_short_list_reserves_little() {
        let mut seq: Seq<u64> = Seq::default();
        seq.insert(pos(1), 1);
        seq.insert(pos(2), 2);
        assert!(seq.heap_bytes() < 16 * std::mem::size_of::<(Position, u64)>());
    }

    #[test]
    fn pushes_at_the_ends_fill_their_chunks() {
        let mut seq: Seq<()> = Seq::default();
        let mut head = None::<Position>;
        let mut tail = None::<Position>;
        for i in 0..10_000u64 {
            let dot = Dot {
                node: NodeId(1),
                n: i + 1,
            };
            if i % 2 == 0 {
                let p = Position::between(tail.as_ref(), None, dot);
                if head.is_none() {
                    head = Some(p.clone());
                }
                tail = Some(p.clone());
                seq.insert(p, ());
            } else {
                let p = Position::between(None, head.as_ref(), dot);
                head = Some(p.clone());
                seq.insert(p, ());
            }
        }
        assert!(
            seq.chunks.len() <= 10_000 / CHUNK + 2,
            "{} chunks",
            seq.chunks.len()
        );
    }
}
