//! The list part of a key's collections (issue #15): elements keyed by a
//! dense [`Position`], each a register of its value (see `coll.rs`).
//!
//! Every op comes in two forms, as the other collections' do: `_into`
//! adds the op's delta against this state (the general path), `_here`
//! applies it in place and fills the delta only when replication wants
//! one (LPUSH, RPUSH, LPOP, RPOP: the hot commands). Both give the same
//! state (property-tested in `tests/laws.rs`).

use smallvec::smallvec;

use crate::coll::{record_kills, Blob, Coll, Elem, Kind, Write};
use crate::context::Dot;
use crate::position::Position;
use crate::stamp::Stamp;

/// Puts into `delta` the element at `pos` with its one write.
fn list_write(delta: &mut Coll, stamp: Stamp, pos: Position, dot: Dot, value: &[u8]) {
    let e = delta.list.make().or_default(pos);
    e.writes.clear();
    e.writes.push(Write {
        dot,
        time: stamp.time,
        value: Blob::new(value),
    });
}

/// With the `ListOrder` fault on: where a push lands instead, one element
/// in from its end.
#[cfg(feature = "fault-injection")]
fn misplaced(list: &crate::seq::Seq<Elem<Blob>>, head: bool, dot: Dot) -> Option<Position> {
    if crate::fault::get() != crate::fault::Broken::ListOrder || list.is_empty() {
        return None;
    }
    let mut keys = list.keys();
    let (lo, hi) = if head {
        let first = keys.next();
        (first, keys.next())
    } else {
        let last = keys.next_back();
        (keys.next_back(), last)
    };
    Some(Position::between(lo, hi, dot))
}

/// An element's value: its winning write's.
fn value_of(e: &Elem<Blob>) -> &[u8] {
    e.winner().map_or(&[][..], |w| &w.value.0[..])
}

impl Coll {
    /// The list's elements in order: each one's place and value.
    pub fn list_iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&Position, &[u8])> + ExactSizeIterator {
        self.list.iter().map(|(p, e)| (p, value_of(e)))
    }

    /// The element at `index` (from the head), walking from the nearer end.
    pub fn list_get(&self, index: usize) -> Option<(&Position, &[u8])> {
        let len = self.list.len();
        if index >= len {
            None
        } else if index <= len / 2 {
            self.list_iter().nth(index)
        } else {
            self.list_iter().rev().nth(len - 1 - index)
        }
    }

    /// The elements from `start` to `stop` inclusive (both within the
    /// list), walking from the nearer end.
    pub fn list_range(&self, start: usize, stop: usize) -> Vec<(&Position, &[u8])> {
        let len = self.list.len();
        if start > stop || stop >= len {
            return Vec::new();
        }
        let n = stop - start + 1;
        if start <= len - 1 - stop {
            self.list_iter().skip(start).take(n).collect()
        } else {
            let mut v: Vec<_> = self
                .list_iter()
                .rev()
                .skip(len - 1 - stop)
                .take(n)
                .collect();
            v.reverse();
            v
        }
    }

    /// The value at `pos`, if an element is there.
    pub fn list_value(&self, pos: &Position) -> Option<&[u8]> {
        self.list.get(pos).map(value_of)
    }

    // ----- deltas -----

    /// The outermost place at the head (or tail) of this list and of the
    /// elements `delta` already adds to it (a command pushing several).
    fn list_end(&self, delta: &Coll, head: bool) -> Option<Position> {
        fn ends(c: &Coll, head: bool) -> Option<&Position> {
            if head {
                c.list.first_key()
            } else {
                c.list.last_key()
            }
        }
        match (ends(self, head), ends(delta, head)) {
            (Some(a), Some(b)) if head => Some(a.min(b).clone()),
            (Some(a), Some(b)) => Some(a.max(b).clone()),
            (a, b) => a.or(b).cloned(),
        }
    }

    /// LPUSH (`head`) or RPUSH of one value, into `delta` (a delta of
    /// `Coll::delta(stamp, List)`).
    pub fn list_push_into(&self, delta: &mut Coll, stamp: Stamp, head: bool, value: &[u8]) {
        let end = self.list_end(delta, head);
        let dot = self.new_dot(delta, stamp);
        let pos = if head {
            Position::between(None, end.as_ref(), dot)
        } else {
            Position::between(end.as_ref(), None, dot)
        };
        #[cfg(feature = "fault-injection")]
        let pos = misplaced(&self.list, head, dot).unwrap_or(pos);
        list_write(delta, stamp, pos, dot, value);
    }

    /// LINSERT of one value between the neighbours `lo` and `hi` (`None`:
    /// the head or the tail), into `delta`.
    pub fn list_insert_into(
        &self,
        delta: &mut Coll,
        stamp: Stamp,
        lo: Option<&Position>,
        hi: Option<&Position>,
        value: &[u8],
    ) {
        let dot = self.new_dot(delta, stamp);
        let pos = Position::between(lo, hi, dot);
        list_write(delta, stamp, pos, dot, value);
    }

    /// LSET of the element at `pos`, into `delta`: the writes held here
    /// replaced by one.
    pub fn list_set_into(&self, delta: &mut Coll, stamp: Stamp, pos: &Position, value: &[u8]) {
        // Other nodes' writes it replaces, and the kills known here, go
        // with it (see `Removed::dead`); a pop needs none: no node writes
        // an element it has popped.
        let killed = self.list.get(pos).into_iter().flat_map(|e| {
            e.writes
                .iter()
                .map(|w| w.dot)
                .filter(|d| d.node != stamp.node)
        });
        if killed.clone().next().is_some() || !self.removed.is_empty() {
            let name = pos.to_string().into_bytes();
            let known = self
                .removed_of(Kind::List, &name)
                .filter(|r| !r.dead.is_empty());
            record_kills(delta, (Kind::List, &name), known, killed, stamp);
        }
        self.list_remove_into(delta, pos);
        let dot = self.new_dot(delta, stamp);
        list_write(delta, stamp, pos.clone(), dot, value);
    }

    /// The removal of the element at `pos` (a pop, LREM, LTRIM): the
    /// writes held here, into `delta`.
    pub fn list_remove_into(&self, delta: &mut Coll, pos: &Position) {
        if let Some(e) = self.list.get(pos) {
            for w in &e.writes {
                delta.ctx.insert(w.dot);
            }
            delta.list.make().or_default(pos.clone());
        }
    }

    // ----- in place -----

    /// LPUSH (`head`) or RPUSH of one value here.
    pub fn list_push_here(
        &mut self,
        stamp: Stamp,
        head: bool,
        value: &[u8],
        delta: Option<&mut Coll>,
    ) {
        let dot = self.ctx.next_dot(stamp.node, stamp.time);
        let pos = if head {
            Position::between(None, self.list.first_key(), dot)
        } else {
            Position::between(self.list.last_key(), None, dot)
        };
        #[cfg(feature = "fault-injection")]
        let pos = misplaced(&self.list, head, dot).unwrap_or(pos);
        let write = Write {
            dot,
            time: stamp.time,
            value: Blob::new(value),
        };
        if let Some(d) = delta {
            d.ctx.insert(dot);
            d.list.make().insert(
                pos.clone(),
                Elem {
                    writes: smallvec![write.clone()],
                    counts: None,
                },
            );
        }
        self.list.make().insert(
            pos,
            Elem {
                writes: smallvec![write],
                counts: None,
            },
        );
        self.note_local(stamp, Kind::List, dot);
    }

    /// LPOP (`head`) or RPOP of one element here: its value, `None` for an
    /// empty list (nothing changed).
    pub fn list_pop_here(
        &mut self,
        stamp: Stamp,
        head: bool,
        delta: Option<&mut Coll>,
    ) -> Option<Blob> {
        let list = self.list.made_mut()?;
        let (pos, e) = if head {
            list.pop_first()?
        } else {
            list.pop_last()?
        };
        self.list.tidy();
        if let Some(d) = delta {
            for w in &e.writes {
                d.ctx.insert(w.dot);
            }
            d.list.make().insert(pos, Elem::default());
        }
        self.note_removal(stamp, Kind::List);
        let winner = e.winner().map(|w| w.dot);
        e.writes
            .into_iter()
            .find(|w| Some(w.dot) == winner)
            .map(|w| w.value)
    }
}
