//! Length-prefixed frames over QUIC streams: a 4-byte big-endian length,
//! then that many bytes. The payload is opaque to the transport.

use quinn::{RecvStream, SendStream};

use crate::TransportError;

/// Largest frame either side accepts unless configured otherwise.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Bytes in front of every frame's payload.
pub const HEADER_LEN: usize = 4;

/// The header for a payload of `len` bytes, for callers that lay out frames
/// themselves and send them with [`FrameSender::send_framed`].
pub fn header(len: usize) -> [u8; HEADER_LEN] {
    (len as u32).to_be_bytes()
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
        let len = (payload.len() as u32).to_be_bytes();
        self.stream.write_all(&len).await.map_err(io)?;
        self.stream.write_all(payload).await.map_err(io)?;
        Ok(())
    }

    /// Sends several frames with one stream write: the per-write cost of the
    /// stream (locking, waking the connection) is paid once per batch.
    pub async fn send_batch<B: AsRef<[u8]>>(
        &mut self,
        payloads: &[B],
    ) -> Result<(), TransportError> {
        let total: usize = payloads.iter().map(|p| 4 + p.as_ref().len()).sum();
        let mut buf = Vec::with_capacity(total);
        for p in payloads {
            let p = p.as_ref();
            if p.len() > self.max_frame {
                return Err(TransportError::FrameTooLarge {
                    len: p.len(),
                    max: self.max_frame,
                });
            }
            buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
            buf.extend_from_slice(p);
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
        }
    }

    /// The next frame, or `None` once the sender finished the stream. The
    /// frame shares the buffer it was read into (no copy).
    pub async fn recv(&mut self) -> Result<Option<bytes::Bytes>, TransportError> {
        loop {
            if let Some(header) = self.buf.get(..HEADER_LEN) {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                if len > self.max_frame {
                    return Err(TransportError::FrameTooLarge {
                        len,
                        max: self.max_frame,
                    });
                }
                if self.buf.len() >= HEADER_LEN + len {
                    let _ = self.buf.split_to(HEADER_LEN);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
                self.buf.reserve(HEADER_LEN + len - self.buf.len());
            }
            match self.stream.read_chunk(READ_CHUNK, true).await.map_err(io)? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
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
