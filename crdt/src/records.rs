//! A collection's removal records, by kind and element: a few in a vector
//! sorted by (kind, element), where a `BTreeMap` allocated its first node
//! with room for eleven (about 1.7 KB for the one record a field rewritten
//! from another node holds until GC: 185 MB over 100,000 such hashes).
//! Encoded as that map was.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::coll::{Kind, Removed};

/// A vector sorted by name up to [`FEW`] records, a map past that (an op
/// removing many elements, or many removals of a big collection before
/// GC: inserts into a vector would be quadratic).
#[derive(Debug, Clone)]
pub enum Records {
    Few(Vec<((Kind, Vec<u8>), Removed)>),
    Many(BTreeMap<(Kind, Vec<u8>), Removed>),
}

const FEW: usize = 16;

impl Default for Records {
    fn default() -> Records {
        Records::new()
    }
}

/// Equal by content, whichever form holds it.
impl PartialEq for Records {
    fn eq(&self, other: &Records) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}
impl Eq for Records {}

impl Records {
    pub const fn new() -> Records {
        Records::Few(Vec::new())
    }

    fn find(v: &[((Kind, Vec<u8>), Removed)], kind: Kind, elem: &[u8]) -> Result<usize, usize> {
        v.binary_search_by(|((k, e), _)| (*k, e.as_slice()).cmp(&(kind, elem)))
    }

    pub fn get(&self, kind: Kind, elem: &[u8]) -> Option<&Removed> {
        match self {
            Records::Few(v) => Records::find(v, kind, elem).ok().map(|i| &v[i].1),
            Records::Many(m) => m.get(&(kind, elem.to_vec())),
        }
    }

    /// The record of `kind`'s element `elem`, a new empty one if none.
    pub fn entry(&mut self, kind: Kind, elem: &[u8]) -> &mut Removed {
        if let Records::Few(v) = self {
            if v.len() >= FEW && Records::find(v, kind, elem).is_err() {
                *self = Records::Many(std::mem::take(v).into_iter().collect());
            }
        }
        match self {
            Records::Few(v) => {
                let i = match Records::find(v, kind, elem) {
                    Ok(i) => i,
                    Err(i) => {
                        // One slot at a time at first: the vector's own
                        // growth starts at four (600 bytes for one record).
                        if v.len() == v.capacity() {
                            v.reserve_exact(v.len().max(1));
                        }
                        v.insert(i, ((kind, elem.to_vec()), Removed::default()));
                        i
                    }
                };
                &mut v[i].1
            }
            Records::Many(m) => m.entry((kind, elem.to_vec())).or_default(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(Kind, Vec<u8>), &Removed)> {
        let (few, many) = match self {
            Records::Few(v) => (Some(v.iter()), None),
            Records::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter()
            .flatten()
            .map(|(k, r)| (k, r))
            .chain(many.into_iter().flatten())
    }

    pub fn keys(&self) -> impl Iterator<Item = &(Kind, Vec<u8>)> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &Removed> {
        self.iter().map(|(_, r)| r)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Removed> {
        let (few, many) = match self {
            Records::Few(v) => (Some(v.iter_mut()), None),
            Records::Many(m) => (None, Some(m.values_mut())),
        };
        few.into_iter()
            .flatten()
            .map(|(_, r)| r)
            .chain(many.into_iter().flatten())
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&(Kind, Vec<u8>), &mut Removed) -> bool) {
        match self {
            Records::Few(v) => v.retain_mut(|(k, r)| keep(k, r)),
            Records::Many(m) => {
                m.retain(|k, r| keep(k, r));
                // Few again once GC left few: a map node holds room for
                // eleven whatever it keeps.
                if m.len() <= FEW / 2 {
                    *self = Records::Few(std::mem::take(m).into_iter().collect());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Records::Few(v) => v.len(),
            Records::Many(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        *self = Records::new();
    }

    /// Bytes held on the heap, roughly: the room for the records and each
    /// element's name.
    pub fn heap_bytes(&self) -> usize {
        let slots = match self {
            Records::Few(v) => v.capacity(),
            // A map's nodes hold eleven, about two thirds used.
            Records::Many(m) => (m.len() * 3 / 2).max(11),
        };
        slots * std::mem::size_of::<((Kind, Vec<u8>), Removed)>()
            + self
                .iter()
                .map(|((_, e), r)| e.capacity() + r.tallies.heap_bytes() + r.dead.heap_bytes())
                .sum::<usize>()
    }
}

/// As a map collects: sorted by name, the last of a name kept.
impl FromIterator<((Kind, Vec<u8>), Removed)> for Records {
    fn from_iter<I: IntoIterator<Item = ((Kind, Vec<u8>), Removed)>>(iter: I) -> Records {
        Records::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl From<BTreeMap<(Kind, Vec<u8>), Removed>> for Records {
    fn from(map: BTreeMap<(Kind, Vec<u8>), Removed>) -> Records {
        if map.len() <= FEW {
            Records::Few(map.into_iter().collect())
        } else {
            Records::Many(map)
        }
    }
}

impl Serialize for Records {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, r) in self.iter() {
            map.serialize_entry(k, r)?;
        }
        map.end()
    }
}

/// Read as a map, so that a peer's names come sorted and distinct.
impl<'de> Deserialize<'de> for Records {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Records, D::Error> {
        BTreeMap::<(Kind, Vec<u8>), Removed>::deserialize(d).map(Records::from)
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

        // Past FEW records a map: the same content, equal, encoded alike.
        let mut few = Records::new();
        let mut map = BTreeMap::new();
        for i in (0..100u64).rev() {
            let name = format!("e{i}").into_bytes();
            *few.entry(Kind::Hash, &name) = record(i, i);
            map.insert((Kind::Hash, name), record(i, i));
            assert_eq!(few.len(), map.len());
        }
        assert!(matches!(few, Records::Many(_)));
        let bytes = postcard::to_allocvec(&few).expect("encode");
        assert_eq!(bytes, postcard::to_allocvec(&map).expect("encode"));
        assert_eq!(few, Records::from(map.clone()));
        assert!(few.keys().eq(map.keys()));
        let big = few.clone();
        few.retain(|_, r| r.reset.time < 3);
        assert!(matches!(few, Records::Few(_)), "few again after a retain");
        let small: Records = map.into_iter().filter(|(_, r)| r.reset.time < 3).collect();
        assert_eq!(few, small);
        let mut many = big;
        many.retain(|_, r| r.reset.time < 50);
        assert!(matches!(many, Records::Many(_)));
        let as_few = Records::Few(many.iter().map(|(k, r)| (k.clone(), r.clone())).collect());
        assert_eq!(
            many, as_few,
            "a map and a vector of the same records are equal"
        );
    }
}
