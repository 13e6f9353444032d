//! A collection's removal records, by kind and element: a vector sorted by
//! (kind, element), where a `BTreeMap` allocated its first node with room
//! for eleven (about 1.7 KB for the one record a field rewritten from
//! another node holds until GC: 185 MB over 100,000 such hashes). Encoded
//! as that map was.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::coll::{Kind, Removed};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Records(Vec<((Kind, Vec<u8>), Removed)>);

impl Records {
    pub const fn new() -> Records {
        Records(Vec::new())
    }

    fn find(&self, kind: Kind, elem: &[u8]) -> Result<usize, usize> {
        self.0
            .binary_search_by(|((k, e), _)| (*k, e.as_slice()).cmp(&(kind, elem)))
    }

    pub fn get(&self, kind: Kind, elem: &[u8]) -> Option<&Removed> {
        self.find(kind, elem).ok().map(|i| &self.0[i].1)
    }

    /// The record of `kind`'s element `elem`, a new empty one if none.
    pub fn entry(&mut self, kind: Kind, elem: &[u8]) -> &mut Removed {
        let i = match self.find(kind, elem) {
            Ok(i) => i,
            Err(i) => {
                self.0
                    .insert(i, ((kind, elem.to_vec()), Removed::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(Kind, Vec<u8>), &Removed)> {
        self.0.iter().map(|(k, r)| (k, r))
    }

    pub fn keys(&self) -> impl Iterator<Item = &(Kind, Vec<u8>)> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Removed> {
        self.0.iter().map(|(_, r)| r)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Removed> {
        self.0.iter_mut().map(|(_, r)| r)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&(Kind, Vec<u8>), &mut Removed) -> bool) {
        self.0.retain_mut(|(k, r)| keep(k, r));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Bytes held on the heap: the vector's room and each element's name.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<((Kind, Vec<u8>), Removed)>()
            + self
                .0
                .iter()
                .map(|((_, e), r)| e.capacity() + r.tallies.heap_bytes() + r.dead.heap_bytes())
                .sum::<usize>()
    }
}

impl<'a> IntoIterator for &'a Records {
    type Item = (&'a (Kind, Vec<u8>), &'a Removed);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, ((Kind, Vec<u8>), Removed)>,
        fn(&'a ((Kind, Vec<u8>), Removed)) -> (&'a (Kind, Vec<u8>), &'a Removed),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, r)| (k, r))
    }
}

/// As a map collects: sorted by name, the last of a name kept.
impl FromIterator<((Kind, Vec<u8>), Removed)> for Records {
    fn from_iter<I: IntoIterator<Item = ((Kind, Vec<u8>), Removed)>>(iter: I) -> Records {
        let map: BTreeMap<(Kind, Vec<u8>), Removed> = iter.into_iter().collect();
        Records(map.into_iter().collect())
    }
}

impl Serialize for Records {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, r)| (k, r)))
    }
}

/// Read as a map, so that a peer's names come sorted and distinct.
impl<'de> Deserialize<'de> for Records {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Records, D::Error> {
        let map = BTreeMap::<(Kind, Vec<u8>), Removed>::deserialize(d)?;
        Ok(Records(map.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NodeId, Stamp};

    #[test]
    fn records_encode_and_order_as_the_map_they_replaced() {
        let record = |time: u64, n: u64| {
            let mut r = Removed {
                reset: Stamp {
                    time,
                    node: NodeId(1),
                },
                ..Removed::default()
            };
            r.dead.upsert(NodeId(2), n, |m, n| *m = n);
            r
        };
        let entries = vec![
            ((Kind::ZSet, b"m".to_vec()), record(3, 30)),
            ((Kind::Hash, b"b".to_vec()), record(2, 20)),
            ((Kind::Hash, b"a".to_vec()), record(1, 10)),
            ((Kind::Hash, b"b".to_vec()), record(4, 40)),
        ];
        let map: BTreeMap<_, _> = entries.iter().cloned().collect();
        let records: Records = entries.into_iter().collect();
        let bytes = postcard::to_allocvec(&records).expect("encode");
        assert_eq!(bytes, postcard::to_allocvec(&map).expect("encode"));
        let back: Records = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, records);
        assert!(records.keys().eq(map.keys()));
        assert_eq!(
            records.get(Kind::Hash, b"b"),
            map.get(&(Kind::Hash, b"b".to_vec()))
        );
        assert_eq!(records.get(Kind::Set, b"b"), None);

        let mut grown = Records::new();
        for (k, r) in map.iter().rev() {
            *grown.entry(k.0, &k.1) = r.clone();
        }
        assert_eq!(grown, records);
        grown.retain(|(k, _), _| *k == Kind::ZSet);
        assert_eq!(grown.len(), 1);
    }
}
