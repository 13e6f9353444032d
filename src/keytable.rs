//! The key map's hash table: 4-byte positions (into the map's slab of
//! entries), found by hash, in 64-byte chunks of twelve slots that hold
//! their tags and their positions in one cache line.
//!
//! Why not hashbrown's `HashTable<u32>`: it keeps its control bytes and
//! its slots in different cache lines, so a lookup paid a miss for the
//! control group, one for the position and one for the entry, where a
//! table of entries had paid two. Here a lookup misses once for the chunk
//! and once for the entry (the layout of Facebook's F14 tables).
//!
//! A chunk's tags are the top byte of a key's hash (never 0, which marks a
//! free slot). Keys whose home chunk is full go to the next chunk that is
//! not, and every full chunk they pass counts them in its `overflow`
//! byte: a lookup stops at the first chunk that no key passed, so a
//! search for an absent key reads one chunk and no entry almost always.
//! No tombstones: a removal clears its slot and takes itself off the
//! counts it added (a count that reached 255 stays, until the next
//! rebuild).
//!
//! A connection that holds the next pipelined requests prefetches the
//! chunk of the key two requests ahead ([`ChunksHint`]) and the entries
//! of the next one ([`KeyTable::candidates`]) before it runs the current
//! one: the miss this table adds over a table of entries, and the entry's
//! own, are then paid while the server works on something else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Slots in a chunk.
pub const SLOTS: usize = 12;
const OVERFLOW: usize = SLOTS;

#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Chunk {
    /// Tags of the twelve slots (0: free), then the overflow count and
    /// four bytes of padding.
    head: [u8; 16],
    positions: [u32; SLOTS],
}

const ONES: u128 = u128::from_le_bytes([0x01; 16]);
const LOW7: u128 = u128::from_le_bytes([0x7f; 16]);
/// The top bit of each of the first twelve bytes: the slots' tags.
const SLOT_TOPS: u128 = u128::from_le_bytes([
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0, 0, 0, 0,
]);

/// The top bit of every byte of `x` that is zero, and of no other
/// (exact, unlike the cheaper test that can flag a byte above a zero).
fn zero_bytes(x: u128) -> u128 {
    !(((x & LOW7) + LOW7) | x | LOW7)
}

impl Chunk {
    fn word(&self) -> u128 {
        u128::from_le_bytes(self.head)
    }

    /// The slots whose tag is `tag`, as the top bits of their bytes.
    fn tagged(&self, tag: u8) -> u128 {
        zero_bytes(self.word() ^ ONES.wrapping_mul(tag as u128)) & SLOT_TOPS
    }

    fn first_free(&self) -> Option<usize> {
        let free = zero_bytes(self.word()) & SLOT_TOPS;
        (free != 0).then(|| free.trailing_zeros() as usize / 8)
    }

    fn overflow(&self) -> u8 {
        self.head[OVERFLOW]
    }
}

/// The slots a bit mask from [`Chunk::tagged`] names.
fn slots(mut mask: u128) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let slot = mask.trailing_zeros() as usize / 8;
        mask &= mask - 1;
        Some(slot)
    })
}

fn tag(hash: u64) -> u8 {
    ((hash >> 56) as u8).max(1)
}

#[derive(Default)]
pub struct KeyTable {
    chunks: Vec<Chunk>,
    len: usize,
    hint: Arc<ChunksHint>,
}

/// Where a table's chunks are, readable without the lock that guards the
/// table. Read racily, it may name chunks just freed or a mask that does
/// not match them: a prefetch of a wrong address is only wasted (it never
/// faults), and nothing else reads through it.
#[derive(Default)]
pub struct ChunksHint {
    base: AtomicUsize,
    mask: AtomicUsize,
}

impl ChunksHint {
    /// Asks the CPU to bring in the chunk where a lookup of `hash` starts.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        let base = self.base.load(Ordering::Relaxed);
        if base == 0 {
            return;
        }
        // Base and mask are read apart and may belong to different
        // chunks (an emptied table's mask is all ones): wrapping math.
        let chunk = hash as usize & self.mask.load(Ordering::Relaxed);
        let at = base.wrapping_add(chunk.wrapping_mul(64));
        crate::prefetch::read(at);
    }
}

impl KeyTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.chunks.len().wrapping_sub(1)
    }

    /// The hint that follows this table's chunks.
    pub fn hint(&self) -> Arc<ChunksHint> {
        self.hint.clone()
    }

    /// Trades hints with `other` (the tables traded places: SWAPDB), so
    /// that a hint keeps naming the table at its place.
    pub fn swap_hints(&mut self, other: &mut KeyTable) {
        std::mem::swap(&mut self.hint, &mut other.hint);
        self.publish();
        other.publish();
    }

    fn publish(&self) {
        let base = match self.chunks.is_empty() {
            true => 0,
            false => self.chunks.as_ptr() as usize,
        };
        self.hint.mask.store(self.mask(), Ordering::Relaxed);
        self.hint.base.store(base, Ordering::Relaxed);
    }

    /// Empties the table and frees its chunks.
    pub fn clear(&mut self) {
        self.chunks = Vec::new();
        self.len = 0;
        self.publish();
    }

    /// The chunk and slot of the position `eq` accepts among those whose
    /// key hashes to `hash`.
    fn locate(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<(usize, usize)> {
        let mask = self.mask();
        let tag = tag(hash);
        let mut i = hash as usize & mask;
        for _ in 0..self.chunks.len() {
            let chunk = &self.chunks[i];
            for slot in slots(chunk.tagged(tag)) {
                if eq(chunk.positions[slot]) {
                    return Some((i, slot));
                }
            }
            if chunk.overflow() == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Calls `f` with every position whose tag matches `hash`'s: where a
    /// lookup of it will look (to prefetch those entries).
    pub fn candidates(&self, hash: u64, mut f: impl FnMut(u32)) {
        self.locate(hash, |p| {
            f(p);
            false
        });
    }

    pub fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let (i, slot) = self.locate(hash, eq)?;
        Some(self.chunks[i].positions[slot])
    }

    /// Takes out the position `eq` accepts, if there is one.
    pub fn remove(&mut self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<u32> {
        let (at, slot) = self.locate(hash, eq)?;
        let mask = self.mask();
        let mut i = hash as usize & mask;
        while i != at {
            let overflow = &mut self.chunks[i].head[OVERFLOW];
            if *overflow != u8::MAX {
                *overflow -= 1;
            }
            i = (i + 1) & mask;
        }
        self.chunks[at].head[slot] = 0;
        self.len -= 1;
        Some(self.chunks[at].positions[slot])
    }

    /// Adds `position`, whose key hashes to `hash` and is not in the
    /// table. Growing rehashes every key with `hash_of`.
    pub fn insert(&mut self, hash: u64, position: u32, hash_of: impl Fn(u32) -> u64) {
        if self.len + 1 > self.chunks.len() * SLOTS * 5 / 6 {
            self.rebuild((self.chunks.len() * 2).max(1), &hash_of);
        }
        self.place(hash, position);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, position: u32) {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        loop {
            let chunk = &mut self.chunks[i];
            if let Some(slot) = chunk.first_free() {
                chunk.head[slot] = tag(hash);
                chunk.positions[slot] = position;
                return;
            }
            chunk.head[OVERFLOW] = chunk.head[OVERFLOW].saturating_add(1);
            i = (i + 1) & mask;
        }
    }

    /// The same positions in `chunks` chunks (a power of two with room for
    /// them all), overflow counts fresh.
    fn rebuild(&mut self, chunks: usize, hash_of: &impl Fn(u32) -> u64) {
        debug_assert!(chunks.is_power_of_two() && chunks * SLOTS > self.len);
        let old = std::mem::replace(&mut self.chunks, vec![Chunk::default(); chunks]);
        for chunk in &old {
            for slot in 0..SLOTS {
                if chunk.head[slot] != 0 {
                    let p = chunk.positions[slot];
                    self.place(hash_of(p), p);
                }
            }
        }
        self.publish();
    }

    /// Rebuilds the table at the size its keys need (or frees it when
    /// empty).
    pub fn shrink_to_fit(&mut self, hash_of: impl Fn(u32) -> u64) {
        if self.len == 0 {
            self.clear();
            return;
        }
        let need = (self.len * 6 / 5 / SLOTS + 1).next_power_of_two();
        if need < self.chunks.len() {
            self.rebuild(need, &hash_of);
        }
    }

    /// Keeps the positions `keep` accepts; the rest leave and the table is
    /// rebuilt (a retain reads every entry anyway).
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool, hash_of: impl Fn(u32) -> u64) {
        let mut removed = false;
        for chunk in &mut self.chunks {
            for slot in 0..SLOTS {
                if chunk.head[slot] != 0 && !keep(chunk.positions[slot]) {
                    chunk.head[slot] = 0;
                    self.len -= 1;
                    removed = true;
                }
            }
        }
        if removed {
            // The removed keys' overflow counts are unknown: recount.
            let chunks = self.chunks.len();
            if self.len == 0 {
                self.clear();
            } else {
                self.rebuild(chunks, &hash_of);
            }
        }
    }

    /// Every position, to be rewritten in place (the slab's compaction).
    pub fn positions_mut(&mut self) -> impl Iterator<Item = &mut u32> {
        self.chunks.iter_mut().flat_map(|c| {
            let head = c.head;
            c.positions
                .iter_mut()
                .enumerate()
                .filter_map(move |(slot, p)| (head[slot] != 0).then_some(p))
        })
    }

    /// Slots: places for [`KeyTable::at_slot`].
    pub fn slots(&self) -> usize {
        self.chunks.len() * SLOTS
    }

    /// The position in slot `i`, if the slot holds one.
    pub fn at_slot(&self, i: usize) -> Option<u32> {
        let chunk = self.chunks.get(i / SLOTS)?;
        let slot = i % SLOTS;
        (chunk.head[slot] != 0).then_some(chunk.positions[slot])
    }

    pub fn allocation_size(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Chunk>(), 64);
        assert_eq!(std::mem::align_of::<Chunk>(), 64);
    }

    #[test]
    fn tags_match_exactly() {
        let mut c = Chunk::default();
        c.head[..SLOTS].copy_from_slice(&[5, 4, 0, 5, 1, 0x85, 6, 5, 0xff, 2, 3, 5]);
        c.head[OVERFLOW] = 5;
        assert_eq!(slots(c.tagged(5)).collect::<Vec<_>>(), vec![0, 3, 7, 11]);
        assert_eq!(slots(c.tagged(0xff)).collect::<Vec<_>>(), vec![8]);
        assert_eq!(slots(c.tagged(1)).collect::<Vec<_>>(), vec![4]);
        assert_eq!(c.first_free(), Some(2));
        c.head[2] = 9;
        assert_eq!(c.first_free(), None);
    }

    fn names(hint: &ChunksHint, t: &KeyTable) -> bool {
        let base = hint.base.load(Ordering::Relaxed);
        match t.chunks.is_empty() {
            true => base == 0,
            false => {
                base == t.chunks.as_ptr() as usize
                    && hint.mask.load(Ordering::Relaxed) == t.chunks.len() - 1
            }
        }
    }

    /// A prefetch through a hint that names another table's chunks, or
    /// freed ones, is only wasted: the hint follows growth, clearing and
    /// SWAPDB's trade of places.
    #[test]
    fn a_hint_follows_its_tables_chunks() {
        let hash_of = |p: u32| (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (mut a, mut b) = (KeyTable::default(), KeyTable::default());
        let (hint_a, hint_b) = (a.hint(), b.hint());
        assert!(names(&hint_a, &a));
        for p in 0..1000 {
            a.insert(hash_of(p), p, hash_of);
            assert!(names(&hint_a, &a), "after {p}");
        }
        hint_a.prefetch(12345);
        b.insert(hash_of(7), 7, hash_of);
        a.swap_hints(&mut b);
        assert!(names(&hint_a, &b) && names(&hint_b, &a));
        b.clear();
        assert!(names(&hint_a, &b));
        hint_a.prefetch(12345);
        // A reader that saw a table's base, then the mask of its emptied
        // successor (all ones), still only computes an address.
        hint_a.base.store(4096, Ordering::Relaxed);
        hint_a.mask.store(usize::MAX, Ordering::Relaxed);
        hint_a.prefetch(u64::MAX);
        a.retain(|p| p < 10, hash_of);
        a.shrink_to_fit(hash_of);
        assert!(names(&hint_b, &a));
    }

    /// Hashes chosen to crowd a few home chunks, so that keys overflow,
    /// against a std map through inserts and removals.
    #[test]
    fn crowded_chunks_find_what_a_hash_map_finds() {
        let hash_of = |p: u32| {
            let h = (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            // Three of every four keys share home chunk 0.
            if p.is_multiple_of(4) {
                h
            } else {
                h & !0xffff
            }
        };
        let mut t = KeyTable::default();
        let mut model = std::collections::HashSet::new();
        let mut rng = 12345u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let p = (rng % 3000) as u32;
            let h = hash_of(p);
            if rng % 5 < 2 {
                assert_eq!(t.remove(h, |q| q == p), model.take(&p));
            } else if t.find(h, |q| q == p).is_none() {
                t.insert(h, p, hash_of);
                model.insert(p);
            }
            assert_eq!(t.len(), model.len());
        }
        for p in 0..3000u32 {
            assert_eq!(t.find(hash_of(p), |q| q == p).is_some(), model.contains(&p));
            // What a prefetch of its entries brings in: every position a
            // lookup compares (so its own, when present), all of the tag.
            let mut seen = Vec::new();
            t.candidates(hash_of(p), |q| seen.push(q));
            assert_eq!(seen.contains(&p), model.contains(&p));
            assert!(seen.iter().all(|q| tag(hash_of(*q)) == tag(hash_of(p))));
        }
        let mut all: Vec<u32> = (0..t.slots()).filter_map(|i| t.at_slot(i)).collect();
        all.sort_unstable();
        let mut want: Vec<u32> = model.iter().copied().collect();
        want.sort_unstable();
        assert_eq!(all, want);
        t.retain(|p| p.is_multiple_of(2), hash_of);
        model.retain(|p| p.is_multiple_of(2));
        for p in 0..3000u32 {
            assert_eq!(t.find(hash_of(p), |q| q == p).is_some(), model.contains(&p));
        }
        t.shrink_to_fit(hash_of);
        for p in &model {
            assert_eq!(t.find(hash_of(*p), |q| q == *p), Some(*p));
        }
    }
}
