//! Keys as the keyspace stores them: up to 18 bytes inline, longer on the
//! heap, with room for the keyspace's 32-bit access clock.
//!
//! Most keys are short. Keeping them inside the hash table's slot saves an
//! allocation per key (about 32 bytes with malloc's overhead) and, more
//! importantly, the cache miss of following a pointer on every lookup. The
//! clock (`mark`) rides in bytes the layout leaves free, so the slot stays
//! 24 bytes: a field of its own beside the key would cost 8 bytes a slot,
//! 17 bytes of RSS a key at hashbrown's load factor (measured).

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

pub(crate) const INLINE: usize = 18;

/// A key's bytes, and a mark that is no part of it. Hashes, compares and
/// orders exactly as its `[u8]` does, so maps keyed by `Key` are looked up
/// with plain byte slices.
#[derive(Clone)]
pub enum Key {
    Inline {
        len: u8,
        mark: u32,
        buf: [u8; INLINE],
    },
    Heap {
        mark: u32,
        dirty: bool,
        cold: bool,
        bytes: Box<[u8]>,
    },
}

/// An inline key's length byte carries the dirty flag in its top bit and
/// the cold flag in the next (a length is at most 18).
const DIRTY_BIT: u8 = 0x80;
const COLD_BIT: u8 = 0x40;
const LEN_BITS: u8 = !(DIRTY_BIT | COLD_BIT);

impl Key {
    pub fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            Key::Inline {
                len: bytes.len() as u8,
                mark: 0,
                buf,
            }
        } else {
            Key::Heap {
                mark: 0,
                dirty: false,
                cold: false,
                bytes: Box::from(bytes),
            }
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, buf, .. } => &buf[..(*len & LEN_BITS) as usize],
            Key::Heap { bytes, .. } => bytes,
        }
    }

    /// Where a key too long to live inline keeps its bytes.
    pub fn heap_address(&self) -> Option<usize> {
        match self {
            Key::Inline { .. } => None,
            Key::Heap { bytes, .. } => Some(bytes.as_ptr() as usize),
        }
    }

    /// The keyspace's access clock for this key (see `crate::evict`).
    pub fn mark(&self) -> u32 {
        match self {
            Key::Inline { mark, .. } | Key::Heap { mark, .. } => *mark,
        }
    }

    pub fn set_mark(&mut self, to: u32) {
        match self {
            Key::Inline { mark, .. } | Key::Heap { mark, .. } => *mark = to,
        }
    }

    /// Whether the bytes live on the heap (longer than the inline room).
    /// Changed since the last cut into the store (`Keyspace::take_cut`):
    /// a flag in the key, so marking a write costs no second lookup.
    pub fn is_dirty(&self) -> bool {
        match self {
            Key::Inline { len, .. } => len & DIRTY_BIT != 0,
            Key::Heap { dirty, .. } => *dirty,
        }
    }

    pub fn set_dirty(&mut self, to: bool) {
        match self {
            Key::Inline { len, .. } => {
                *len = if to {
                    *len | DIRTY_BIT
                } else {
                    *len & !DIRTY_BIT
                }
            }
            Key::Heap { dirty, .. } => *dirty = to,
        }
    }

    /// The key's state lives in the flash tier's store, not in RAM (see
    /// `crate::flash`): the state beside it in the table is a stand-in.
    pub fn is_cold(&self) -> bool {
        match self {
            Key::Inline { len, .. } => len & COLD_BIT != 0,
            Key::Heap { cold, .. } => *cold,
        }
    }

    pub fn set_cold(&mut self, to: bool) {
        match self {
            Key::Inline { len, .. } => {
                *len = if to {
                    *len | COLD_BIT
                } else {
                    *len & !COLD_BIT
                }
            }
            Key::Heap { cold, .. } => *cold = to,
        }
    }

    pub fn is_heap(&self) -> bool {
        matches!(self, Key::Heap { .. })
    }
}

impl Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Key {
        Key::new(bytes)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    /// Only a key longer than the inline room has bytes elsewhere to
    /// prefetch, and its address is where those bytes are.
    #[test]
    fn a_long_keys_bytes_have_an_address_of_their_own() {
        let short = Key::new(&[b'k'; INLINE]);
        assert_eq!(short.heap_address(), None);
        let long = Key::new(&[b'k'; INLINE + 1]);
        assert_eq!(long.heap_address(), Some(long.as_bytes().as_ptr() as usize));
    }

    #[test]
    fn the_dirty_flag_changes_neither_bytes_nor_identity() {
        for len in [0, 5, 18, 19, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let clean = Key::new(&bytes);
            let mut dirty = clean.clone();
            assert!(!dirty.is_dirty());
            dirty.set_mark(0xdead_beef);
            dirty.set_dirty(true);
            assert!(dirty.is_dirty(), "len {len}");
            assert_eq!(dirty.as_bytes(), &bytes[..]);
            assert!(dirty == clean);
            let hasher = hashbrown::DefaultHashBuilder::default();
            assert_eq!(hasher.hash_one(&dirty), hasher.hash_one(&clean));
            assert_eq!(dirty.mark(), 0xdead_beef, "the mark is apart");
            dirty.set_dirty(false);
            assert!(!dirty.is_dirty());
            assert_eq!(dirty.as_bytes(), &bytes[..]);
        }
    }

    #[test]
    fn the_cold_flag_is_apart_from_the_dirty_flag_and_the_bytes() {
        for len in [0, 5, 18, 19, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let mut key = Key::new(&bytes);
            assert!(!key.is_cold());
            key.set_cold(true);
            assert!(key.is_cold() && !key.is_dirty(), "len {len}");
            key.set_dirty(true);
            assert!(key.is_cold() && key.is_dirty());
            assert_eq!(key.as_bytes(), &bytes[..]);
            key.set_cold(false);
            assert!(!key.is_cold() && key.is_dirty());
            key.set_dirty(false);
            assert_eq!(key.as_bytes(), &bytes[..]);
            assert!(key == Key::new(&bytes));
        }
    }

    #[test]
    fn inline_and_heap_keys_behave_as_their_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 24);
        let hasher = hashbrown::DefaultHashBuilder::default();
        for len in [0, 1, 16, 18, 19, 22, 100] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let key = Key::new(&bytes);
            assert_eq!(key.as_bytes(), &bytes[..]);
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(&bytes[..]));
            assert_eq!(key.is_heap(), len > INLINE);
            let mut marked = key.clone();
            marked.set_mark(7);
            assert_eq!(marked.mark(), 7);
            assert_eq!(marked, key, "the mark is no part of the key");
            assert_eq!(hasher.hash_one(&marked), hasher.hash_one(&key));
        }
        let mut map = hashbrown::HashMap::new();
        map.insert(Key::new(b"short"), 1);
        map.insert(Key::new(&[7u8; 40]), 2);
        assert_eq!(map.get(&b"short"[..]), Some(&1));
        assert_eq!(map.get(&[7u8; 40][..]), Some(&2));
        assert!(Key::new(b"a") < Key::new(b"b"));
    }
}
