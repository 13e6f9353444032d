//! A sorted set's order: members by (score, bytes), as Redis's skip list
//! orders them, with ranks.
//!
//! Derived from the elements and never encoded (`Coll` rebuilds it when
//! whole states merge). It is a list of sorted blocks rather than a tree:
//! an entry costs its 24 bytes plus the member's copy, finding a position
//! is two binary searches, and the entries before a block (a rank's first
//! part) come from a Fenwick tree of the blocks' lengths: a rank, and the
//! entry at a rank, in O(log n), which a B-tree map cannot give at all.
//! (Summing the lengths took a few thousand additions a rank for a million
//! members.)

use std::cmp::Ordering;

use crate::ekey::ElemBytes;

/// Blocks split when they grow past this, and merge with a neighbour when
/// they shrink below a quarter of it.
const MAX_BLOCK: usize = 512;

/// One member's place: its score (never -0.0: Redis orders -0 and 0 alike,
/// by member) and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub score: f64,
    pub member: ElemBytes,
}

impl Entry {
    fn cmp_to(&self, score: f64, member: &[u8]) -> Ordering {
        self.score
            .total_cmp(&score)
            .then_with(|| (*self.member).cmp(member))
    }
}

/// -0.0 as 0.0, so that both order by member alone.
fn norm(score: f64) -> f64 {
    if score == 0.0 {
        0.0
    } else {
        score
    }
}

/// See the module doc.
#[derive(Debug, Clone, Default)]
pub struct ScoreIndex {
    /// Non-empty blocks, each sorted, each entry above every entry of the
    /// blocks before it.
    blocks: Vec<Vec<Entry>>,
    /// The blocks' lengths.
    sums: Sums,
    len: usize,
}

/// A Fenwick tree of block lengths (1-based inside). Rebuilt when a block
/// splits, goes or merges (once in a few hundred writes), updated in
/// O(log blocks) otherwise.
#[derive(Debug, Clone, Default)]
struct Sums(Vec<usize>);

impl Sums {
    fn of(blocks: &[Vec<Entry>]) -> Sums {
        let mut t: Vec<usize> = std::iter::once(0)
            .chain(blocks.iter().map(Vec::len))
            .collect();
        for i in 1..t.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent < t.len() {
                t[parent] += t[i];
            }
        }
        Sums(t)
    }

    /// Block `b` grew (`true`) or shrank by one entry.
    fn step(&mut self, b: usize, grew: bool) {
        let mut i = b + 1;
        while i < self.0.len() {
            if grew {
                self.0[i] += 1;
            } else {
                self.0[i] -= 1;
            }
            i += i & i.wrapping_neg();
        }
    }

    /// Entries in the blocks before block `b`.
    fn before(&self, b: usize) -> usize {
        let (mut i, mut sum) = (b, 0);
        while i > 0 {
            sum += self.0[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// The block holding rank `at` (below the total) and the rank's offset
    /// in it.
    fn find(&self, mut at: usize) -> (usize, usize) {
        let n = self.0.len() - 1;
        let mut pos = 0;
        let mut step = if n == 0 { 0 } else { 1 << n.ilog2() };
        while step > 0 {
            if pos + step <= n && self.0[pos + step] <= at {
                pos += step;
                at -= self.0[pos];
            }
            step >>= 1;
        }
        (pos, at)
    }
}

impl ScoreIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Builds the index of `entries` in any order.
    pub fn from_entries(mut entries: Vec<Entry>) -> ScoreIndex {
        for e in &mut entries {
            e.score = norm(e.score);
        }
        entries.sort_unstable_by(|a, b| a.cmp_to(b.score, &b.member));
        let len = entries.len();
        let mut blocks = Vec::with_capacity(len.div_ceil(MAX_BLOCK / 2));
        let mut rest = entries.into_iter().peekable();
        while rest.peek().is_some() {
            blocks.push(rest.by_ref().take(MAX_BLOCK / 2).collect());
        }
        let sums = Sums::of(&blocks);
        ScoreIndex { blocks, sums, len }
    }

    /// The block an entry at (score, member) belongs in: the first whose
    /// last entry is at or above it (the last block when none is).
    fn block_for(&self, score: f64, member: &[u8]) -> usize {
        let i = self
            .blocks
            .partition_point(|b| b[b.len() - 1].cmp_to(score, member) == Ordering::Less);
        i.min(self.blocks.len().saturating_sub(1))
    }

    /// Adds a member at `score`; false if that exact entry was there.
    pub fn insert(&mut self, score: f64, member: &[u8]) -> bool {
        let score = norm(score);
        let entry = Entry {
            score,
            member: ElemBytes::from_slice(member),
        };
        if self.blocks.is_empty() {
            self.blocks.push(vec![entry]);
            self.sums = Sums::of(&self.blocks);
            self.len = 1;
            return true;
        }
        let b = self.block_for(score, member);
        let block = &mut self.blocks[b];
        let at = match block.binary_search_by(|e| e.cmp_to(score, member)) {
            Ok(_) => return false,
            Err(at) => at,
        };
        block.insert(at, entry);
        self.len += 1;
        if block.len() > MAX_BLOCK {
            let upper = block.split_off(block.len() / 2);
            self.blocks.insert(b + 1, upper);
            self.sums = Sums::of(&self.blocks);
        } else {
            self.sums.step(b, true);
        }
        true
    }

    /// Removes the member at `score`; false if it was not there.
    pub fn remove(&mut self, score: f64, member: &[u8]) -> bool {
        let score = norm(score);
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_for(score, member);
        let block = &mut self.blocks[b];
        let Ok(at) = block.binary_search_by(|e| e.cmp_to(score, member)) else {
            return false;
        };
        block.remove(at);
        self.len -= 1;
        if block.is_empty() {
            self.blocks.remove(b);
            self.sums = Sums::of(&self.blocks);
        } else if block.len() < MAX_BLOCK / 4
            && b + 1 < self.blocks.len()
            && self.blocks[b].len() + self.blocks[b + 1].len() <= MAX_BLOCK
        {
            let next = self.blocks.remove(b + 1);
            self.blocks[b].extend(next);
            self.sums = Sums::of(&self.blocks);
        } else {
            self.sums.step(b, false);
        }
        true
    }

    /// The number of entries for which `below` holds: `below` must hold
    /// for a prefix of the order and for nothing after it.
    pub fn count_below(&self, below: impl Fn(&Entry) -> bool) -> usize {
        let b = self.blocks.partition_point(|bl| below(&bl[bl.len() - 1]));
        let before = self.sums.before(b);
        let within = self
            .blocks
            .get(b)
            .map_or(0, |bl| bl.partition_point(&below));
        before + within
    }

    /// The 0-based rank of (score, member), if present.
    pub fn rank(&self, score: f64, member: &[u8]) -> Option<usize> {
        let score = norm(score);
        let at = self.count_below(|e| e.cmp_to(score, member) == Ordering::Less);
        let e = self.get(at)?;
        (e.cmp_to(score, member) == Ordering::Equal).then_some(at)
    }

    /// The entry at rank `at`.
    pub fn get(&self, at: usize) -> Option<&Entry> {
        let (b, i) = self.locate(at)?;
        Some(&self.blocks[b][i])
    }

    /// Block and offset of rank `at`.
    fn locate(&self, at: usize) -> Option<(usize, usize)> {
        (at < self.len).then(|| self.sums.find(at))
    }

    /// Entries from rank `at` upwards.
    pub fn iter_from(&self, at: usize) -> impl Iterator<Item = &Entry> + '_ {
        let (b, i) = self.locate(at).unwrap_or((self.blocks.len(), 0));
        self.blocks
            .get(b)
            .map_or(&[][..], |bl| &bl[i..])
            .iter()
            .chain(self.blocks.iter().skip(b + 1).flatten())
    }

    /// Entries from rank `at` downwards.
    pub fn iter_down_from(&self, at: usize) -> impl Iterator<Item = &Entry> + '_ {
        let (b, i) = self.locate(at).map_or((0, None), |(b, i)| (b, Some(i)));
        let first = match i {
            Some(i) => &self.blocks[b][..=i],
            None => &[][..],
        };
        let earlier = if i.is_some() { b } else { 0 };
        first.iter().rev().chain(
            self.blocks[..earlier]
                .iter()
                .rev()
                .flat_map(|bl| bl.iter().rev()),
        )
    }

    /// Every entry, lowest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Entry> + '_ {
        self.blocks.iter().flatten()
    }

    /// Bytes on the heap: entries and member copies.
    pub fn heap_bytes(&self) -> usize {
        let entries: usize = self
            .blocks
            .iter()
            .map(|b| b.capacity() * std::mem::size_of::<Entry>())
            .sum();
        let members: usize = self
            .iter()
            .filter(|e| e.member.spilled())
            .map(|e| e.member.capacity())
            .sum();
        entries
            + members
            + self.blocks.capacity() * std::mem::size_of::<Vec<Entry>>()
            + self.sums.0.capacity() * std::mem::size_of::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coll::Score;
    use std::collections::BTreeSet;

    fn key(score: f64, m: &[u8]) -> (Score, Vec<u8>) {
        (Score(norm(score)), m.to_vec())
    }

    #[test]
    fn the_index_agrees_with_a_sorted_set_through_inserts_and_removes() {
        let mut ix = ScoreIndex::default();
        let mut model = BTreeSet::new();
        let mut x: u64 = 7;
        for step in 0..40_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let score = ((x >> 40) % 300) as f64 - 150.0;
            let member = format!("m{}", (x >> 20) % 20_000).into_bytes();
            if step % 3 == 2 {
                assert_eq!(
                    ix.remove(score, &member),
                    model.remove(&key(score, &member))
                );
            } else {
                assert_eq!(ix.insert(score, &member), model.insert(key(score, &member)));
            }
            assert_eq!(ix.len(), model.len());
            // Ranks while blocks split and merge, not only at the end.
            if step % 997 == 0 {
                for (r, k) in model.iter().enumerate().step_by(101) {
                    assert_eq!(ix.rank(k.0 .0, &k.1), Some(r), "step {step}");
                    assert_eq!(ix.get(r).map(|e| key(e.score, &e.member)), Some(k.clone()));
                }
            }
        }
        let flat: Vec<(Score, Vec<u8>)> = ix.iter().map(|e| key(e.score, &e.member)).collect();
        let want: Vec<(Score, Vec<u8>)> = model.iter().cloned().collect();
        assert_eq!(flat, want);
        for (r, e) in ix.iter().enumerate().step_by(37) {
            assert_eq!(ix.rank(e.score, &e.member), Some(r));
            assert_eq!(ix.get(r), Some(e));
            assert_eq!(ix.iter_from(r).next(), Some(e));
            assert_eq!(ix.iter_down_from(r).next(), Some(e));
            assert_eq!(ix.iter_from(r).count(), ix.len() - r);
            assert_eq!(ix.iter_down_from(r).count(), r + 1);
        }
        assert_eq!(ix.rank(1e9, b"nope"), None);
        assert_eq!(ix.iter_from(ix.len()).count(), 0);
        assert_eq!(ix.iter_down_from(ix.len()).count(), 0);
        let rebuilt = ScoreIndex::from_entries(ix.iter().rev().cloned().collect());
        assert!(rebuilt.iter().eq(ix.iter()));
        let below_zero = ix.count_below(|e| e.score < 0.0);
        assert_eq!(below_zero, model.iter().filter(|k| k.0 .0 < 0.0).count());
        // Drain most of it, so that blocks shrink, merge and go.
        let doomed: Vec<(Score, Vec<u8>)> = model
            .iter()
            .filter(|k| k.1.iter().map(|&b| usize::from(b)).sum::<usize>() % 7 != 0)
            .cloned()
            .collect();
        for (i, k) in doomed.iter().enumerate() {
            assert!(ix.remove(k.0 .0, &k.1));
            model.remove(k);
            if i % 1009 == 0 {
                for (r, k) in model.iter().enumerate().step_by(53) {
                    assert_eq!(ix.rank(k.0 .0, &k.1), Some(r));
                    assert_eq!(ix.get(r).map(|e| key(e.score, &e.member)), Some(k.clone()));
                }
            }
        }
        assert!(ix
            .iter()
            .map(|e| key(e.score, &e.member))
            .eq(model.iter().cloned()));
    }

    #[test]
    fn minus_zero_and_zero_order_by_member() {
        let mut ix = ScoreIndex::default();
        ix.insert(0.0, b"b");
        ix.insert(-0.0, b"a");
        ix.insert(-0.0, b"c");
        let order: Vec<&[u8]> = ix.iter().map(|e| &*e.member).collect();
        assert_eq!(order, vec![&b"a"[..], b"b", b"c"]);
        assert!(ix.remove(0.0, b"a"));
    }
}
