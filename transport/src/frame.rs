//! Length-prefixed frames over QUIC streams. The payload is opaque to the
//! transport.
//!
//! A message goes as one or more fragments, each a 4-byte big-endian header
//! and up to [`MAX_FRAGMENT`] bytes. The header's top bit says that more
//! fragments of the same message follow; the other 31 bits are the
//! fragment's length. So a message of any size a client may write (up to the
//! receiver's limit) crosses a link, and a header alone never makes a
//! receiver reserve more than one read's worth of memory.

use quinn::{RecvStream, SendStream};

use crate::TransportError;

/// Largest message either side accepts unless configured otherwise.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bytes in front of every fragment's payload.
pub const HEADER_LEN: usize = 4;

/// Largest fragment a sender writes: a longer message goes as several.
pub const MAX_FRAGMENT: usize = 1024 * 1024;

/// The header bit saying that more fragments of the message follow.
const MORE: u32 = 1 << 31;

/// Bytes a message of `len` bytes takes on the wire, headers included.
pub fn framed_len(len: usize) -> usize {
    len + HEADER_LEN * len.div_ceil(MAX_FRAGMENT).max(1)
}

/// Appends `payload` as a framed message (one or more fragments), for
/// callers that lay out frames themselves and send them with
/// [`FrameSender::send_framed`].
pub fn append_framed(out: &mut bytes::BytesMut, payload: &[u8]) {
    out.reserve(framed_len(payload.len()));
    let mut rest = payload;
    loop {
        let take = rest.len().min(MAX_FRAGMENT);
        let (part, after) = rest.split_at(take);
        let more = if after.is_empty() { 0 } else { MORE };
        out.extend_from_slice(&(take as u32 | more).to_be_bytes());
        out.extend_from_slice(part);
        if after.is_empty() {
            return;
        }
        rest = after;
    }
}

/// Writes frames to one stream.
pub struct FrameSender {
    stream: SendStream,
    max_frame: usize,
}

/// Reads frames from one stream.
pub struct FrameReceiver {
    stream: RecvStream,
    max_frame: usize,
    /// Bytes read and not yet returned: many frames arrive per read.
    buf: bytes::BytesMut,
    /// The fragments of a message received so far (kept here, not in
    /// `recv`'s future, so that a cancelled `recv` loses nothing).
    partial: Option<bytes::BytesMut>,
}

/// How much a receiver asks the stream for at once.
const READ_CHUNK: usize = 64 * 1024;

impl FrameSender {
    pub fn new(stream: SendStream, max_frame: usize) -> FrameSender {
        FrameSender { stream, max_frame }
    }

    pub async fn send(&mut self, payload: &[u8]) -> Result<(), TransportError> {
        if payload.len() > self.max_frame {
            return Err(TransportError::FrameTooLarge {
                len: payload.len(),
                max: self.max_frame,
            });
        }
        if payload.len() <= MAX_FRAGMENT {
            let len = (payload.len() as u32).to_be_bytes();
            self.stream.write_all(&len).await.map_err(io)?;
            return self.stream.write_all(payload).await.map_err(io);
        }
        let mut rest = payload;
        while !rest.is_empty() {
            let (part, after) = rest.split_at(rest.len().min(MAX_FRAGMENT));
            let more = if after.is_empty() { 0 } else { MORE };
            let header = (part.len() as u32 | more).to_be_bytes();
            self.stream.write_all(&header).await.map_err(io)?;
            self.stream.write_all(part).await.map_err(io)?;
            rest = after;
        }
        Ok(())
    }

    /// Sends several frames with one stream write: the per-write cost of the
    /// stream (locking, waking the connection) is paid once per batch.
    pub async fn send_batch<B: AsRef<[u8]>>(
        &mut self,
        payloads: &[B],
    ) -> Result<(), TransportError> {
        let total: usize = payloads.iter().map(|p| framed_len(p.as_ref().len())).sum();
        let mut buf = bytes::BytesMut::with_capacity(total);
        for p in payloads {
            let p = p.as_ref();
            if p.len() > self.max_frame {
                return Err(TransportError::FrameTooLarge {
                    len: p.len(),
                    max: self.max_frame,
                });
            }
            append_framed(&mut buf, p);
        }
        self.stream.write_all(&buf).await.map_err(io)
    }

    /// Sends bytes that already hold whole frames (each a [`header`] and its
    /// payload), without copying them.
    pub async fn send_framed(&mut self, chunks: &mut [bytes::Bytes]) -> Result<(), TransportError> {
        self.stream.write_all_chunks(chunks).await.map_err(io)
    }

    /// Ends the stream after everything sent so far.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.stream.finish().map_err(io)
    }
}

impl FrameReceiver {
    pub fn new(stream: RecvStream, max_frame: usize) -> FrameReceiver {
        FrameReceiver {
            stream,
            max_frame,
            buf: bytes::BytesMut::new(),
            partial: None,
        }
    }

    /// The next message, or `None` once the sender finished the stream. A
    /// message of one fragment shares the buffer it was read into (no copy).
    pub async fn recv(&mut self) -> Result<Option<bytes::Bytes>, TransportError> {
        loop {
            if let Some(header) = self.buf.get(..HEADER_LEN) {
                let word = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let len = (word & !MORE) as usize;
                let so_far = self.partial.as_ref().map_or(0, |p| p.len());
                if so_far + len > self.max_frame {
                    return Err(TransportError::FrameTooLarge {
                        len: so_far + len,
                        max: self.max_frame,
                    });
                }
                if self.buf.len() >= HEADER_LEN + len {
                    let _ = self.buf.split_to(HEADER_LEN);
                    let part = self.buf.split_to(len);
                    if word & MORE != 0 {
                        self.partial
                            .get_or_insert_with(bytes::BytesMut::new)
                            .extend_from_slice(&part);
                        continue;
                    }
                    return Ok(Some(match self.partial.take() {
                        None => part.freeze(),
                        Some(mut whole) => {
                            whole.extend_from_slice(&part);
                            whole.freeze()
                        }
                    }));
                }
                // Room for the rest of this fragment as it arrives, a read at
                // a time: what a header claims is never reserved up front.
                self.buf
                    .reserve((HEADER_LEN + len - self.buf.len()).min(READ_CHUNK));
            }
            match self.stream.read_chunk(READ_CHUNK, true).await.map_err(io)? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() && self.partial.is_none() => return Ok(None),
                None => {
                    return Err(TransportError::Stream(format!(
                        "stream ended inside a frame ({} bytes of it)",
                        self.buf.len()
                    )))
                }
            }
        }
    }

    /// Reads exactly one byte (the stream's kind tag).
    pub(crate) async fn read_tag(stream: &mut RecvStream) -> Result<u8, TransportError> {
        let mut tag = [0u8; 1];
        stream.read_exact(&mut tag).await.map_err(io)?;
        Ok(tag[0])
    }
}

fn io(e: impl std::fmt::Display) -> TransportError {
    TransportError::Stream(e.to_string())
}
