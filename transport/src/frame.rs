//! Length-prefixed frames over QUIC streams: a 4-byte big-endian length,
//! then that many bytes. The payload is opaque to the transport.

use quinn::{RecvStream, SendStream};

use crate::TransportError;

/// Largest frame either side accepts unless configured otherwise.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Writes frames to one stream.
pub struct FrameSender {
    stream: SendStream,
    max_frame: usize,
}

/// Reads frames from one stream.
pub struct FrameReceiver {
    stream: RecvStream,
    max_frame: usize,
}

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

    /// Ends the stream after everything sent so far.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.stream.finish().map_err(io)
    }
}

impl FrameReceiver {
    pub fn new(stream: RecvStream, max_frame: usize) -> FrameReceiver {
        FrameReceiver { stream, max_frame }
    }

    /// The next frame, or `None` once the sender finished the stream.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max_frame {
            return Err(TransportError::FrameTooLarge {
                len,
                max: self.max_frame,
            });
        }
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload).await.map_err(io)?;
        Ok(Some(payload))
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
