//! Length-prefixed frames on QUIC streams: a `u32` big-endian payload length, then the payload.
//!
//! The length is checked against a limit before anything is allocated or read, so a peer cannot
//! make the node reserve memory by announcing a huge frame. [`encode_frame`] and [`FrameDecoder`]
//! are the same format without I/O, for the simulator and for tests.

use crate::error::{Error, Result};

/// Default upper bound on a frame's payload: 8 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Size of the length prefix.
const HEADER_LEN: usize = 4;

/// Most bytes reserved for a payload before any of it has arrived.
const INITIAL_PAYLOAD_CAPACITY: usize = 64 * 1024;

fn payload_len(payload: &[u8]) -> Result<u32> {
    u32::try_from(payload.len()).map_err(|_| Error::FrameTooLarge {
        len: payload.len() as u64,
        limit: u64::from(u32::MAX),
    })
}

fn too_large(len: usize, max: usize) -> Error {
    Error::FrameTooLarge {
        len: len as u64,
        limit: max as u64,
    }
}

/// Encodes `payload` as one frame (header + payload).
///
/// # Panics
/// Only if `payload` is 4 GiB or more, which no caller can legitimately produce; use
/// [`write_frame`] (which returns an error instead) for anything computed from outside input.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or_else(|_| {
        panic!(
            "frame payload of {} bytes does not fit a u32 length",
            payload.len()
        )
    });
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes one frame to `send`. Does not finish the stream: call `send.finish()` after the last
/// frame. Fails with [`Error::FrameTooLarge`] if the payload does not fit a `u32` length (the
/// receiver enforces its own, usually smaller, limit) or [`Error::Transport`] if the stream
/// fails.
pub async fn write_frame(send: &mut quinn::SendStream, payload: &[u8]) -> Result<()> {
    let header = payload_len(payload)?.to_be_bytes();
    send.write_all(&header)
        .await
        .map_err(|e| Error::Transport(format!("writing frame header: {e}")))?;
    send.write_all(payload)
        .await
        .map_err(|e| Error::Transport(format!("writing frame payload: {e}")))
}

/// Reads one frame of at most `max` payload bytes from `recv`.
///
/// Returns `Ok(None)` when the stream ends cleanly between frames, [`Error::FrameTooLarge`] if
/// the announced length exceeds `max` (the payload is left unread and nothing is allocated),
/// [`Error::Malformed`] if the stream ends inside a frame, and [`Error::Transport`] if the stream
/// fails (reset by the peer, connection lost). After an error, stop reading the stream.
pub async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    // Read the header by hand: `read_exact` cannot tell "no frame at all" from "half a header".
    while filled < HEADER_LEN {
        let chunk = header.get_mut(filled..).unwrap_or_default();
        match recv.read(chunk).await {
            Ok(Some(n)) => filled += n,
            Ok(None) if filled == 0 => return Ok(None),
            Ok(None) => {
                return Err(Error::Malformed(format!(
                    "truncated frame: stream ended after {filled} of {HEADER_LEN} header bytes"
                )))
            }
            Err(e) => return Err(Error::Transport(format!("reading frame header: {e}"))),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(too_large(len, max));
    }
    // Grow the buffer as bytes arrive instead of reserving `len` up front: a peer that
    // announces a large frame and sends nothing (on many streams at once) must not make the
    // node allocate the announced sizes. Memory then follows what QUIC flow control let in.
    let mut payload = Vec::with_capacity(len.min(INITIAL_PAYLOAD_CAPACITY));
    while payload.len() < len {
        match recv.read_chunk(len - payload.len(), true).await {
            Ok(Some(chunk)) => payload.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(Error::Malformed(format!(
                    "truncated frame: stream ended after {} of {len} payload bytes",
                    payload.len()
                )))
            }
            Err(e) => return Err(Error::Transport(format!("reading frame payload: {e}"))),
        }
    }
    Ok(Some(payload))
}

/// Incremental, I/O-free frame decoder: [`push`](Self::push) bytes as they arrive, then
/// [`pop`](Self::pop) complete frames until it returns `Ok(None)`.
///
/// A frame whose announced length exceeds the limit is rejected as soon as its header is
/// complete, without waiting for or reserving space for its payload. After an error the
/// byte stream is out of sync: drop the decoder (and close the stream).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`; consumed bytes are dropped lazily to keep `pop`
    /// from shifting the buffer on every frame.
    start: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder accepting payloads of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next complete frame's payload, `Ok(None)` if more bytes are needed, or
    /// [`Error::FrameTooLarge`] if the next frame announces more than the limit.
    pub fn pop(&mut self) -> Result<Option<Vec<u8>>> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let Some((header, rest)) = pending.split_first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.max {
            return Err(too_large(len, self.max));
        }
        let Some(payload) = rest.get(..len) else {
            return Ok(None);
        };
        let payload = payload.to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(payload))
    }

    /// Number of received bytes not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Call at end of stream: fails with [`Error::Malformed`] if a partial frame is left over.
    pub fn finish(&self) -> Result<()> {
        match self.buffered() {
            0 => Ok(()),
            n => Err(Error::Malformed(format!(
                "truncated frame: stream ended with {n} bytes of an incomplete frame"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(dec: &mut FrameDecoder, out: &mut Vec<Vec<u8>>) -> Result<()> {
        while let Some(frame) = dec.pop()? {
            out.push(frame);
        }
        Ok(())
    }

    #[test]
    fn round_trip_and_empty_frames() -> Result<()> {
        let mut dec = FrameDecoder::new(16);
        dec.push(&encode_frame(b""));
        dec.push(&encode_frame(b"hello"));
        assert_eq!(dec.pop()?, Some(Vec::new()));
        assert_eq!(dec.pop()?, Some(b"hello".to_vec()));
        assert_eq!(dec.pop()?, None);
        dec.finish()
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        dec.push(&u32::MAX.to_be_bytes());
        match dec.pop() {
            Err(Error::FrameTooLarge { len, limit }) => {
                assert_eq!(
                    (len, limit),
                    (u64::from(u32::MAX), DEFAULT_MAX_FRAME as u64)
                );
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        // Nothing was reserved for the announced payload.
        assert_eq!(dec.buffered(), HEADER_LEN);
        assert!(dec.buf.capacity() < 1024);
    }

    #[test]
    fn limit_is_inclusive() -> Result<()> {
        let mut dec = FrameDecoder::new(3);
        dec.push(&encode_frame(b"abc"));
        assert_eq!(dec.pop()?, Some(b"abc".to_vec()));
        dec.push(&encode_frame(b"abcd"));
        assert!(matches!(
            dec.pop(),
            Err(Error::FrameTooLarge { len: 4, limit: 3 })
        ));
        Ok(())
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut dec = FrameDecoder::new(16);
        let frame = encode_frame(b"hello");
        dec.push(&frame[..6]);
        assert!(matches!(dec.pop(), Ok(None)));
        assert!(matches!(dec.finish(), Err(Error::Malformed(_))));
    }

    proptest! {
        #[test]
        fn any_chunking_yields_the_same_frames(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..32),
        ) {
            let stream: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f)).collect();
            let mut cut_points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cut_points.push(0);
            cut_points.push(stream.len());
            cut_points.sort_unstable();
            let mut dec = FrameDecoder::new(64);
            let mut got = Vec::new();
            for pair in cut_points.windows(2) {
                dec.push(&stream[pair[0]..pair[1]]);
                drain(&mut dec, &mut got).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(got, frames);
            prop_assert!(dec.finish().is_ok());
        }

        #[test]
        fn garbage_never_panics_and_respects_the_limit(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            max in 0usize..64,
        ) {
            let mut dec = FrameDecoder::new(max);
            dec.push(&bytes);
            loop {
                match dec.pop() {
                    Ok(Some(frame)) => prop_assert!(frame.len() <= max),
                    Ok(None) => break,
                    Err(Error::FrameTooLarge { len, .. }) => {
                        prop_assert!(len > max as u64);
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(e.to_string())),
                }
            }
        }
    }
}
