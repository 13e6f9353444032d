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
use smallvec::SmallVec;

use crate::digest::stable_hash;

/// Bytes kept inline up to 24 (most fields and members: no allocation of
/// their own, which malloc would round up to 32 bytes), on the heap past.
pub type ElemBytes = SmallVec<[u8; 24]>;

/// See the module doc.
#[derive(Debug)]
pub struct EKey {
    hash: u64,
    bytes: ElemBytes,
}

/// One copy of the bytes: `SmallVec`'s own clone pushes them one by one,
/// which cost a replicated HSET 200 instructions (its delta's field is
/// cloned into the delta's map).
impl Clone for EKey {
    fn clone(&self) -> EKey {
        EKey {
            hash: self.hash,
            bytes: ElemBytes::from_slice(&self.bytes),
        }
    }
}

impl EKey {
    pub fn new(bytes: &[u8]) -> EKey {
        EKey {
            hash: stable_hash(bytes),
            bytes: ElemBytes::from_slice(bytes),
        }
    }

    /// Heap bytes this key holds besides itself (none when inline).
    pub fn heap_len(&self) -> usize {
        if self.bytes.spilled() {
            self.bytes.capacity()
        } else {
            0
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A key with a chosen hash, as a crafted collision would have.
    #[cfg(test)]
    pub(crate) fn with_hash(hash: u64, bytes: &[u8]) -> EKey {
        EKey {
            hash,
            bytes: ElemBytes::from_slice(bytes),
        }
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
            bytes: ElemBytes::from_slice(self.bytes),
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

    /// A clone (one copy of the bytes, not `SmallVec`'s push per byte) is
    /// its original, inline and spilled, hash included.
    #[test]
    fn a_clone_is_its_original() {
        for len in [0, 1, 15, 16, 17, 24, 25, 100] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let key = EKey::new(&bytes);
            let copy = key.clone();
            assert_eq!((copy.hash(), copy.bytes()), (key.hash(), &bytes[..]));
            assert_eq!(copy.heap_len() > 0, len > 24, "{len}");
            let value = crate::coll::Blob::new(&bytes);
            let copy = value.clone();
            assert_eq!(copy, value);
            assert_eq!(copy.heap_len() > 0, len > 16, "{len}");
        }
    }

    /// Inline storage changed no encoding: keys and values still encode
    /// as the byte strings format 4 wrote (short and long alike).
    #[test]
    fn inline_keys_and_values_encode_as_plain_bytes() {
        for bytes in [&b""[..], b"field", &[7u8; 100]] {
            let plain = postcard::to_allocvec(serde_bytes::Bytes::new(bytes)).unwrap();
            let key = postcard::to_allocvec(&EKey::new(bytes)).unwrap();
            let value = postcard::to_allocvec(&crate::coll::Blob::new(bytes)).unwrap();
            assert_eq!((&key, &value), (&plain, &plain));
            let back: crate::coll::Blob = postcard::from_bytes(&value).unwrap();
            assert_eq!(&back.0[..], bytes);
            assert_eq!(
                postcard::from_bytes::<EKey>(&key).unwrap(),
                EKey::new(bytes)
            );
        }
        assert_eq!(EKey::new(b"short").heap_len(), 0);
        assert!(EKey::new(&[1; 40]).heap_len() >= 40);
    }

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
