//! The stored and wire encoding: a format version byte, then postcard.
//!
//! Every encoded value starts with [`FORMAT_VERSION`], so data written by
//! this version can be recognised, and migrated, by later ones.

use serde::{de::DeserializeOwned, Serialize};

/// The current encoding version.
/// 2: a register write names what it had seen of other nodes' writes
/// (`Register::seen`) instead of its parent's time.
pub const FORMAT_VERSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("malformed encoding: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} trailing bytes after the encoded value")]
    Trailing(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("encoding failed: {0}")]
pub struct EncodeError(#[from] postcard::Error);

/// Encodes `value` with the version byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    encode_sized(value, 64)
}

/// [`encode`] into a buffer that starts with room for `capacity` bytes, so
/// a caller that knows the size spares the buffer's regrowth.
pub fn encode_sized<T: Serialize + ?Sized>(
    value: &T,
    capacity: usize,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(capacity.max(1));
    out.push(FORMAT_VERSION);
    Ok(postcard::to_extend(value, out)?)
}

/// Appends [`encode`]'s bytes for `value` to `out` and returns it, so a
/// caller can reuse one buffer for many values.
pub fn encode_append<T: Serialize + ?Sized>(
    value: &T,
    mut out: Vec<u8>,
) -> Result<Vec<u8>, EncodeError> {
    out.push(FORMAT_VERSION);
    Ok(postcard::to_extend(value, out)?)
}

/// Decodes what [`encode`] produced; any truncation, corruption or unknown
/// version is an error, never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}
