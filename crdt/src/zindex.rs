//! A sorted set's order: members by (score, bytes), as Redis's skip list
//! orders them, with ranks.
//!
//! Derived from the elements and never encoded (`Coll` rebuilds it when
//! whole states merge). It is a list of sorted blocks rather than a tree:
//! an entry costs its 24 bytes plus the member's copy, finding a position
//! is two binary searches, and a rank is the sum of the lengths of the
//! blocks before it (a few thousand additions for a million members),
//! which a B-tree map cannot give at all.

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
    len: usize,
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
        ScoreIndex { blocks, len }
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
        } else if block.len() < MAX_BLOCK / 4 && b + 1 < self.blocks.len() {
            let next = &self.blocks[b + 1];
            if self.blocks[b].len() + next.len() <= MAX_BLOCK {
                let next = self.blocks.remove(b + 1);
                self.blocks[b].extend(next);
            }
        }
        true
    }

    /// The number of entries for which `below` holds: `below` must hold
    /// for a prefix of the order and for nothing after it.
    pub fn count_below(&self, below: impl Fn(&Entry) -> bool) -> usize {
        let b = self.blocks.partition_point(|bl| below(&bl[bl.len() - 1]));
        let before: usize = self.blocks[..b].iter().map(Vec::len).sum();
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
    fn locate(&self, mut at: usize) -> Option<(usize, usize)> {
        if at >= self.len {
            return None;
        }
        // From whichever end is nearer: ranks near the top (ZREVRANGE 0 9)
        // stay cheap too.
        if at < self.len / 2 {
            for (b, block) in self.blocks.iter().enumerate() {
                if at < block.len() {
                    return Some((b, at));
                }
                at -= block.len();
            }
        } else {
            let mut from_end = self.len - 1 - at;
            for (b, block) in self.blocks.iter().enumerate().rev() {
                if from_end < block.len() {
                    return Some((b, block.len() - 1 - from_end));
                }
                from_end -= block.len();
            }
        }
        None
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
        entries + members + self.blocks.capacity() * std::mem::size_of::<Vec<Entry>>()
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
            let member = format!("m{}", (x >> 20) % 2000).into_bytes();
            if step % 3 == 2 {
                assert_eq!(
                    ix.remove(score, &member),
                    model.remove(&key(score, &member))
                );
            } else {
                assert_eq!(ix.insert(score, &member), model.insert(key(score, &member)));
            }
            assert_eq!(ix.len(), model.len());
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
