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
    deframer: Deframer,
    /// Reads of the stream so far ([`FrameReceiver::reads`]).
    reads: u64,
}

/// The receiving half of the framing without I/O: bytes in, whole
/// messages out. Its state lives here, not in a future, so a cancelled
/// read loses nothing.
#[derive(Debug)]
pub struct Deframer {
    max_message: usize,
    /// Bytes received and not yet returned: many frames arrive per read.
    buf: bytes::BytesMut,
    /// The fragments of a message received so far.
    partial: Option<bytes::BytesMut>,
}

impl Deframer {
    pub fn new(max_message: usize) -> Deframer {
        Deframer {
            max_message,
            buf: bytes::BytesMut::new(),
            partial: None,
        }
    }

    /// Takes bytes as they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether nothing of a message is held (a stream may end here).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.partial.is_none()
    }

    /// Bytes held: the unread buffer and the fragments gathered so far.
    pub fn held(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |p| p.len())
    }

    /// The next whole message, if the bytes pushed so far hold one. A
    /// message of one fragment shares the buffer it arrived in (no copy).
    pub fn next_message(&mut self) -> Result<Option<bytes::Bytes>, TransportError> {
        while let Some(header) = self.buf.get(..HEADER_LEN) {
            let word = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
            let len = (word & !MORE) as usize;
            let so_far = self.partial.as_ref().map_or(0, |p| p.len());
            if so_far + len > self.max_message {
                return Err(TransportError::FrameTooLarge {
                    len: so_far + len,
                    max: self.max_message,
                });
            }
            if self.buf.len() < HEADER_LEN + len {
                // Room for the rest of this fragment as it arrives, a read at
                // a time: what a header claims is never reserved up front.
                self.buf
                    .reserve((HEADER_LEN + len - self.buf.len()).min(READ_CHUNK));
                return Ok(None);
            }
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
        Ok(None)
    }
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
        let mut framed = bytes::BytesMut::new();
        append_framed(&mut framed, payload);
        self.stream.write_all(&framed).await.map_err(io)
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
            deframer: Deframer::new(max_frame),
            reads: 0,
        }
    }

    /// The next message, or `None` once the sender finished the stream. A
    /// message of one fragment shares the buffer it was read into (no copy).
    pub async fn recv(&mut self) -> Result<Option<bytes::Bytes>, TransportError> {
        loop {
            if let Some(message) = self.deframer.next_message()? {
                return Ok(Some(message));
            }
            self.reads += 1;
            match self.stream.read_chunk(READ_CHUNK, true).await.map_err(io)? {
                Some(chunk) => self.deframer.push(&chunk.bytes),
                None if self.deframer.is_idle() => return Ok(None),
                None => {
                    return Err(TransportError::Stream(format!(
                        "stream ended inside a frame ({} bytes of it)",
                        self.deframer.held()
                    )))
                }
            }
        }
    }

    /// How many times [`FrameReceiver::recv`] read (or waited on) the
    /// stream: messages it returned between two equal counts arrived
    /// together, without an await between them.
    pub fn reads(&self) -> u64 {
        self.reads
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

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_testkit::{mutate, mutations};
    use proptest::prelude::*;

    /// Every message of `wire`, pushed in pieces cut at `cuts`.
    fn deframe(wire: &[u8], cuts: &[usize], max: usize) -> Result<Vec<Vec<u8>>, TransportError> {
        let mut d = Deframer::new(max);
        let mut out = Vec::new();
        let mut at = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        for p in points {
            d.push(&wire[at..p]);
            at = p;
            while let Some(m) = d.next_message()? {
                out.push(m.to_vec());
            }
        }
        assert!(d.is_idle(), "bytes left over");
        Ok(out)
    }

    proptest! {
        // Megabyte messages: fewer cases keep this under a few seconds
        // (`PROPTEST_CASES` overrides it: bench/fuzz.sh gives this one a
        // hundredth of the others' cases).
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Messages of any size framed and split at any points arrive whole
        /// and in order.
        #[test]
        fn framed_messages_split_anywhere_arrive_whole(
            sizes in proptest::collection::vec(
                prop_oneof![
                    Just(0usize),
                    Just(MAX_FRAGMENT),
                    Just(MAX_FRAGMENT + 1),
                    Just(2 * MAX_FRAGMENT),
                    0usize..(3 * MAX_FRAGMENT),
                ],
                1..4,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let messages: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (0..*n).map(|j| (i * 7 + j) as u8).collect())
                .collect();
            let mut wire = bytes::BytesMut::new();
            for m in &messages {
                append_framed(&mut wire, m);
            }
            prop_assert_eq!(
                wire.len(),
                messages.iter().map(|m| framed_len(m.len())).sum::<usize>()
            );
            prop_assert_eq!(deframe(&wire, &cuts, 4 * MAX_FRAGMENT).unwrap(), messages);
        }
    }

    /// `messages` framed in fragments of at most `fragment` bytes: far
    /// smaller than a sender makes, so that reassembly runs on small inputs.
    fn small_fragments(messages: &[Vec<u8>], fragment: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        for m in messages {
            let mut parts = m.chunks(fragment).peekable();
            if parts.peek().is_none() {
                wire.extend_from_slice(&0u32.to_be_bytes());
            }
            while let Some(part) = parts.next() {
                let more = if parts.peek().is_some() { MORE } else { 0 };
                wire.extend_from_slice(&(part.len() as u32 | more).to_be_bytes());
                wire.extend_from_slice(part);
            }
        }
        wire
    }

    proptest! {
        /// Arbitrary bytes, and valid frames with bytes flipped, inserted,
        /// deleted or cut off (so headers are mostly plausible and the
        /// fragment paths run), pushed in pieces: messages, a need for more,
        /// or an error; never a panic, never more held than was pushed, and
        /// never more room reserved than twice what arrived and one read.
        #[test]
        fn arbitrary_bytes_never_panic_or_hold_more_than_pushed(
            random in proptest::collection::vec(any::<u8>(), 0..2048),
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..6),
            fragment in 1usize..200,
            mutations in mutations(0..5),
            use_random in any::<bool>(),
            max in 0usize..4096,
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let bytes = if use_random {
                random
            } else {
                let mut wire = small_fragments(&messages, fragment);
                mutate(&mut wire, &mutations);
                wire
            };
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.push(bytes.len());
            points.sort_unstable();
            let mut d = Deframer::new(max);
            let (mut pushed, mut returned) = (0, 0);
            let mut failed = false;
            for p in points {
                d.push(&bytes[pushed..p]);
                pushed = p;
                while !failed {
                    match d.next_message() {
                        Ok(Some(m)) => {
                            prop_assert!(m.len() <= max);
                            returned += m.len();
                        }
                        Ok(None) => break,
                        Err(_) => failed = true,
                    }
                    prop_assert!(returned + d.held() <= pushed);
                }
                // Growing a buffer may double it, never more.
                prop_assert!(
                    d.buf.capacity() <= 2 * (pushed.max(HEADER_LEN) + READ_CHUNK + HEADER_LEN),
                    "capacity {} after {} bytes", d.buf.capacity(), pushed
                );
                if failed {
                    break;
                }
            }
            if cuts.is_empty() {
                prop_assert!(d.buf.capacity() <= bytes.len().max(HEADER_LEN) + READ_CHUNK + HEADER_LEN);
            }
        }
    }

    proptest! {
        // Every case is deframed once per cut: fewer cases than the default
        // 256 (`PROPTEST_CASES` overrides this as it does the default).
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A valid stream cut at every byte boundary, and fed a byte at a
        /// time, yields the same messages as in one piece: no boundary
        /// between a header, its payload and the next fragment is special.
        #[test]
        fn a_valid_stream_split_at_every_byte_boundary_yields_the_same_messages(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
            fragment in 1usize..120,
        ) {
            let wire = small_fragments(&messages, fragment);
            let max = messages.iter().map(Vec::len).max().unwrap_or(0);
            prop_assert_eq!(&deframe(&wire, &[], max).unwrap(), &messages);
            for cut in 0..=wire.len() {
                prop_assert_eq!(&deframe(&wire, &[cut], max).unwrap(), &messages, "cut at {}", cut);
            }
            let every: Vec<usize> = (0..wire.len()).collect();
            prop_assert_eq!(&deframe(&wire, &every, max).unwrap(), &messages);
        }
    }

    #[test]
    fn small_fragments_and_empty_continuations_reassemble() {
        let mut wire = Vec::new();
        for (part, more) in [
            (&b"ab"[..], true),
            (b"", true),
            (b"cd", false),
            (b"", false),
        ] {
            let more = if more { MORE } else { 0 };
            wire.extend_from_slice(&(part.len() as u32 | more).to_be_bytes());
            wire.extend_from_slice(part);
        }
        assert_eq!(
            deframe(&wire, &[3, 7], 16).unwrap(),
            vec![b"abcd".to_vec(), Vec::new()]
        );
    }

    #[test]
    fn fragments_adding_up_past_the_limit_are_refused_before_the_last_one_arrives() {
        let mut d = Deframer::new(1000);
        d.push(&(600 | MORE).to_be_bytes());
        d.push(&[7; 600]);
        d.push(&600u32.to_be_bytes());
        assert!(matches!(
            d.next_message(),
            Err(TransportError::FrameTooLarge {
                len: 1200,
                max: 1000
            })
        ));
        assert!(d.buf.capacity() <= HEADER_LEN + 600 + HEADER_LEN + READ_CHUNK);
    }

    #[test]
    fn a_header_claiming_a_huge_fragment_reserves_one_read_at_most() {
        let mut d = Deframer::new(usize::MAX / 2);
        d.push(&(u32::MAX >> 1).to_be_bytes());
        assert!(d.next_message().unwrap().is_none());
        assert!(d.buf.capacity() <= HEADER_LEN + READ_CHUNK);
        let mut over = Deframer::new(1024);
        over.push(&2048u32.to_be_bytes());
        assert!(matches!(
            over.next_message(),
            Err(TransportError::FrameTooLarge {
                len: 2048,
                max: 1024
            })
        ));
    }
}
