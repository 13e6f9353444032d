//! The key of an element in a collection: ordered by a stable 64-bit hash
//! of its bytes, then by the bytes. A lookup in a collection of a million
//! elements then compares integers, not byte strings that share their
//! first bytes (`field:000123`), and a SCAN cursor is a hash: exact, and
//! what a u64 cursor can hold. The hash is fixed for good
//! ([`crate::digest::stable_hash`]), so every node orders, and encodes, a
//! collection alike. Equal hashes fall back to the bytes: a crafted
//! collision costs a comparison, never correctness.

use std::borrow::Borrow;
use std::cmp::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::stable_hash;

/// See the module doc.
#[derive(Debug, Clone)]
pub struct EKey {
    hash: u64,
    bytes: Box<[u8]>,
}

impl EKey {
    pub fn new(bytes: &[u8]) -> EKey {
        EKey {
            hash: stable_hash(bytes),
            bytes: bytes.into(),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// What a collection map can be searched by: an [`EKey`], or a [`Probe`]
/// that borrows the bytes it looks for.
pub trait Keyed {
    fn hash(&self) -> u64;
    fn bytes(&self) -> &[u8];
}

impl Keyed for EKey {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A lookup's key: the hash computed once, the bytes borrowed.
pub struct Probe<'a> {
    hash: u64,
    bytes: &'a [u8],
}

impl<'a> Probe<'a> {
    pub fn new(bytes: &'a [u8]) -> Probe<'a> {
        Probe {
            hash: stable_hash(bytes),
            bytes,
        }
    }

    /// The position a scan resumes at: every element whose hash is at
    /// least `hash`.
    pub fn at_hash(hash: u64) -> Probe<'static> {
        Probe { hash, bytes: &[] }
    }

    pub fn as_keyed(&self) -> &(dyn Keyed + 'a) {
        self
    }

    /// The key of these bytes, the hash not computed again.
    pub fn to_key(&self) -> EKey {
        EKey {
            hash: self.hash,
            bytes: self.bytes.into(),
        }
    }
}

impl Keyed for Probe<'_> {
    fn hash(&self) -> u64 {
        self.hash
    }
    fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

impl<'a> Borrow<dyn Keyed + 'a> for EKey {
    fn borrow(&self) -> &(dyn Keyed + 'a) {
        self
    }
}

fn order(a: &dyn Keyed, b: &dyn Keyed) -> Ordering {
    a.hash()
        .cmp(&b.hash())
        .then_with(|| a.bytes().cmp(b.bytes()))
}

impl PartialEq for dyn Keyed + '_ {
    fn eq(&self, other: &Self) -> bool {
        order(self, other) == Ordering::Equal
    }
}
impl Eq for dyn Keyed + '_ {}
impl PartialOrd for dyn Keyed + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn Keyed + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        order(self, other)
    }
}

impl PartialEq for EKey {
    fn eq(&self, other: &EKey) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}
impl Eq for EKey {}
impl PartialOrd for EKey {
    fn partial_cmp(&self, other: &EKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for EKey {
    fn cmp(&self, other: &EKey) -> Ordering {
        order(self, other)
    }
}

/// Encoded as the bytes alone: the hash is derived again on decoding.
impl Serialize for EKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.bytes)
    }
}

impl<'de> Deserialize<'de> for EKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EKey, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        Ok(EKey::new(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_map_finds_by_borrowed_bytes_and_orders_by_hash() {
        let mut m = BTreeMap::new();
        for i in 0..100u32 {
            m.insert(EKey::new(format!("field:{i:06}").as_bytes()), i);
        }
        assert_eq!(m.get(Probe::new(b"field:000042").as_keyed()), Some(&42));
        assert_eq!(m.get(Probe::new(b"field:000100").as_keyed()), None);
        let hashes: Vec<u64> = m.keys().map(EKey::hash).collect();
        assert!(hashes.windows(2).all(|w| w[0] <= w[1]));
        // A scan from a hash resumes at that element exactly.
        let third = m.keys().nth(3).unwrap().clone();
        let rest: Vec<&EKey> = m
            .range::<dyn Keyed, _>((
                std::ops::Bound::Included(Probe::at_hash(third.hash()).as_keyed()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(rest.len(), 97);
        assert_eq!(rest[0], &third);
    }
}
