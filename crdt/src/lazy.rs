//! A part of a value that most values never use, held as one null pointer
//! until something is put in it. A hash's collection part holds no set,
//! sorted set, list or counter removal records: inline, their empty maps
//! took 104 bytes of every small hash (docs/benchmarks.md, session 24).
//!
//! Reads see an empty part when there is none. Writes go through
//! [`Lazy::make`], which allocates; changes that only remove go through
//! [`Lazy::made_mut`], which never does, and [`Lazy::tidy`] frees a part
//! emptied again. Encoded as the part itself, so the bytes are the same
//! whether a part is held or not.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::coll::{Adds, Blob, Elem, Score};
use crate::emap::EMap;
use crate::nodemap::NodeMap;
use crate::records::Records;
use crate::seq::Seq;
use crate::state::Tally;

/// A type that can stand absent: an empty one for reads, and a test for
/// emptiness.
pub trait Part: Default + 'static {
    fn empty() -> &'static Self;
    fn is_empty_part(&self) -> bool;
}

/// See the module doc.
#[derive(Clone)]
pub struct Lazy<T: Part>(Option<Box<T>>);

impl<T: Part> Default for Lazy<T> {
    fn default() -> Self {
        Lazy(None)
    }
}

impl<T: Part> Lazy<T> {
    /// Held only when not empty.
    pub fn new(part: T) -> Lazy<T> {
        if part.is_empty_part() {
            Lazy(None)
        } else {
            Lazy(Some(Box::new(part)))
        }
    }

    /// The part, to write into: made on first use.
    pub fn make(&mut self) -> &mut T {
        self.0.get_or_insert_with(Default::default)
    }

    /// The part, to remove from: none when there is none.
    pub fn made_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Frees the part if it is empty.
    pub fn tidy(&mut self) {
        if self.0.as_deref().is_some_and(T::is_empty_part) {
            self.0 = None;
        }
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// The part, if one is allocated (a part never made reads as empty).
    pub fn part(&self) -> Option<&T> {
        self.0.as_deref()
    }

    /// Whether a part is allocated (empty or not).
    pub fn is_made(&self) -> bool {
        self.0.is_some()
    }

    /// The bytes of the part's own box (what it holds besides is the
    /// part's to count).
    pub fn box_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |_| std::mem::size_of::<T>())
    }
}

impl<T: Part> Deref for Lazy<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or_else(|| T::empty())
    }
}

impl<T: Part + fmt::Debug> fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<'a, T: Part> IntoIterator for &'a Lazy<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        (**self).into_iter()
    }
}

/// An empty part equals an absent one.
impl<T: Part + PartialEq> PartialEq for Lazy<T> {
    fn eq(&self, other: &Lazy<T>) -> bool {
        **self == **other
    }
}

impl<T: Part + Eq> Eq for Lazy<T> {}

impl<T: Part + Serialize> Serialize for Lazy<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de, T: Part + Deserialize<'de>> Deserialize<'de> for Lazy<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lazy<T>, D::Error> {
        T::deserialize(d).map(Lazy::new)
    }
}

static NO_SET: EMap<Adds> = EMap::new();
static NO_ZSET: EMap<Elem<Score>> = EMap::new();
static NO_LIST: Seq<Elem<Blob>> = Seq::new();
static NO_REMOVED: Records = Records::new();
static NO_TALLIES: NodeMap<Tally> = NodeMap::new();

impl Part for NodeMap<Tally> {
    fn empty() -> &'static Self {
        &NO_TALLIES
    }
    fn is_empty_part(&self) -> bool {
        self.is_empty()
    }
}

impl Part for EMap<Adds> {
    fn empty() -> &'static Self {
        &NO_SET
    }
    fn is_empty_part(&self) -> bool {
        self.is_empty()
    }
}

impl Part for EMap<Elem<Score>> {
    fn empty() -> &'static Self {
        &NO_ZSET
    }
    fn is_empty_part(&self) -> bool {
        self.is_empty()
    }
}

impl Part for Seq<Elem<Blob>> {
    fn empty() -> &'static Self {
        &NO_LIST
    }
    fn is_empty_part(&self) -> bool {
        self.is_empty()
    }
}

impl Part for Records {
    fn empty() -> &'static Self {
        &NO_REMOVED
    }
    fn is_empty_part(&self) -> bool {
        self.is_empty()
    }
}
