//! `chorus-crdt`: the pure data types Chorus stores, replicates and merges.
//!
//! No I/O and no async here: a [`KeyState`] per key, [`Stamp`]s from a
//! hybrid logical clock, the replicated [`Delta`], conflict detection, and
//! the versioned encoding. See `docs/crdt-semantics.md` for what each Redis
//! command does when it races another on a different node.

pub mod codec;
pub mod coll;
pub mod conflict;
pub mod context;
pub mod delta;
pub mod digest;
pub mod ekey;
pub mod emap;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod fields;
pub mod lazy;
pub mod list;
pub mod nodemap;
pub mod number;
pub mod position;
pub mod records;
pub mod seq;
pub mod stamp;
pub mod state;
pub mod zindex;

pub use codec::{
    decode, decode_prefix, decode_stored, decode_stored_conflict, decode_stored_state,
    decode_stored_write, decode_write_fields, encode, encode_append, encode_sized, DecodeError,
    EncodeError, FORMAT_VERSION,
};
pub use coll::{Coll, CountDelta, ElemDelta, ElemWrite, Kind, ManyWrite, OneWrite, Written};
pub use conflict::{Conflict, ConflictKind, Side, Summary};
pub use context::{CausalContext, Dot};
pub use delta::Delta;
pub use ekey::{EKey, Probe};
pub use nodemap::NodeMap;
pub use position::Position;
pub use stamp::{system_clock, Clock, DriftError, NodeId, Stamp};
pub use state::{CounterSum, ExpiryField, Extras, KeyState, KeyType, Read, Register, Tally};
pub use uhlc::NTP64;
