//! Framing: how messages travel over a byte stream that may be a noisy tty.
//!
//! ```text
//! offset  0  magic        4 bytes  7f 56 42 01  ("\x7fVB\x01")
//! offset  4  length       u32 LE   payload bytes, at most the decoder's limit
//! offset  8  payload_crc  u32 LE   CRC-32 (IEEE) of the payload
//! offset 12  header_crc   u32 LE   CRC-32 of bytes 0..12
//! offset 16  payload
//! ```
//!
//! The header has its own checksum so that garbage which happens to contain the
//! magic is rejected after 16 bytes instead of making the reader wait for a
//! bogus length's worth of bytes. The decoder never holds more than one frame
//! (header + the maximum payload) plus the chunk it was last fed.

use thiserror::Error;

/// Marks the start of a frame. 0x7f is rare in console text, 0x01 is the framing version.
pub const MAGIC: [u8; 4] = [0x7f, b'V', b'B', 0x01];
/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;
/// Default largest payload either side accepts (1 MiB); results are far smaller.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Encodes one payload into a frame. Fails if the payload exceeds `max_payload`.
pub fn encode(payload: &[u8], max_payload: usize) -> Result<Vec<u8>, FrameError> {
    if payload.len() > max_payload {
        return Err(FrameError::Oversize { len: payload.len() as u64, max: max_payload });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header(payload.len() as u32, crc32fast::hash(payload)));
    out.extend_from_slice(payload);
    Ok(out)
}

/// A valid header for `len` payload bytes with checksum `payload_crc`. Public so tests can
/// forge frames a hostile peer would send (absurd lengths, wrong checksums).
pub fn header(len: u32, payload_crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&payload_crc.to_le_bytes());
    let hcrc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&hcrc.to_le_bytes());
    h
}

/// Something wrong with the framed stream. None of these stop decoding: the
/// decoder resynchronises on the next magic; the caller decides whether the
/// peer is still trustworthy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A header declares, or a payload to encode has, more bytes than the limit.
    #[error("frame declares {len} payload bytes, limit is {max}")]
    Oversize {
        /// Payload bytes declared (u64: a hostile header may say anything a u32 holds).
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The payload's CRC-32 differs from the one its (valid) header carries.
    #[error("frame payload checksum mismatch ({len} bytes)")]
    PayloadChecksum {
        /// Payload bytes of the damaged frame.
        len: usize,
    },
    /// The stream ended inside a frame (reported by [`FrameDecoder::finish`]).
    #[error("stream ended inside a frame ({have} of {need} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        have: usize,
        /// Bytes the whole frame needs: header and declared payload, or just the header
        /// when the header itself was cut.
        need: usize,
    },
}

/// What the decoder found in the bytes fed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete, checksummed payload.
    Frame(Vec<u8>),
    /// Bytes discarded while looking for the next frame (console noise, echo, damage).
    Skipped(usize),
    /// A frame header was found but the frame is unusable.
    Bad(FrameError),
}

/// Incremental decoder with bounded memory.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_payload: usize,
    skipped_total: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_PAYLOAD)
    }
}

impl FrameDecoder {
    /// A decoder that accepts payloads of at most `max_payload` bytes; a frame declaring
    /// more is reported ([`FrameError::Oversize`]) and its payload never buffered.
    pub fn new(max_payload: usize) -> Self {
        Self { buf: Vec::new(), max_payload, skipped_total: 0 }
    }

    /// Total bytes discarded as noise so far.
    pub fn skipped_total(&self) -> u64 {
        self.skipped_total
    }

    /// Bytes currently held (at most one partial frame after `feed` returns).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Consumes `input` and returns everything it completed, in stream order.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(input);
        let mut events = Vec::new();
        let mut skipped = 0usize;
        let mut pos = 0usize;
        loop {
            let rest = &self.buf[pos..];
            let Some(at) = find_magic(rest) else {
                // Keep a tail that could be the start of a magic split across reads.
                let keep = magic_prefix_len(rest);
                skipped += rest.len() - keep;
                pos = self.buf.len() - keep;
                break;
            };
            skipped += at;
            pos += at;
            let rest = &self.buf[pos..];
            if rest.len() < HEADER_LEN {
                break;
            }
            let hdr_crc = u32::from_le_bytes(rest[12..16].try_into().expect("4 bytes"));
            if crc32fast::hash(&rest[..12]) != hdr_crc {
                // Magic inside noise: drop one byte and search again.
                skipped += 1;
                pos += 1;
                continue;
            }
            let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
            if len > self.max_payload {
                flush_skipped(&mut events, &mut skipped);
                events.push(Event::Bad(FrameError::Oversize {
                    len: len as u64,
                    max: self.max_payload,
                }));
                // The payload is not read: whatever follows is treated as noise until a magic.
                pos += HEADER_LEN;
                continue;
            }
            if rest.len() < HEADER_LEN + len {
                break;
            }
            let payload = &rest[HEADER_LEN..HEADER_LEN + len];
            let want = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
            if crc32fast::hash(payload) != want {
                flush_skipped(&mut events, &mut skipped);
                events.push(Event::Bad(FrameError::PayloadChecksum { len }));
                // A real frame may start inside the damaged one.
                pos += 1;
                continue;
            }
            flush_skipped(&mut events, &mut skipped);
            events.push(Event::Frame(payload.to_vec()));
            pos += HEADER_LEN + len;
        }
        flush_skipped(&mut events, &mut skipped);
        self.skipped_total += events
            .iter()
            .map(|e| if let Event::Skipped(n) = e { *n as u64 } else { 0 })
            .sum::<u64>();
        self.buf.drain(..pos);
        events
    }

    /// Call at end of stream: reports a frame cut short, if any.
    pub fn finish(&mut self) -> Option<FrameError> {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() >= HEADER_LEN && buf[..4] == MAGIC {
            let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
            return Some(FrameError::Truncated { have: buf.len(), need: HEADER_LEN + len });
        }
        if buf.len() >= MAGIC.len() && buf[..4] == MAGIC {
            return Some(FrameError::Truncated { have: buf.len(), need: HEADER_LEN });
        }
        None
    }
}

fn flush_skipped(events: &mut Vec<Event>, skipped: &mut usize) {
    if *skipped > 0 {
        events.push(Event::Skipped(*skipped));
        *skipped = 0;
    }
}

fn find_magic(hay: &[u8]) -> Option<usize> {
    hay.windows(MAGIC.len()).position(|w| w == MAGIC)
}

/// Length of the longest suffix of `hay` that is a proper prefix of MAGIC.
fn magic_prefix_len(hay: &[u8]) -> usize {
    (1..MAGIC.len())
        .rev()
        .find(|&k| hay.len() >= k && hay[hay.len() - k..] == MAGIC[..k])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames_of(events: &[Event]) -> Vec<Vec<u8>> {
        events
            .iter()
            .filter_map(|e| if let Event::Frame(f) = e { Some(f.clone()) } else { None })
            .collect()
    }

    #[test]
    fn roundtrip_single() {
        let f = encode(b"hello", MAX_PAYLOAD).unwrap();
        let mut d = FrameDecoder::default();
        assert_eq!(d.feed(&f), vec![Event::Frame(b"hello".to_vec())]);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.finish(), None);
    }

    #[test]
    fn empty_payload_is_a_frame() {
        let f = encode(b"", MAX_PAYLOAD).unwrap();
        assert_eq!(FrameDecoder::default().feed(&f), vec![Event::Frame(vec![])]);
    }

    #[test]
    fn resyncs_after_console_noise() {
        let (noise1, noise2) = (b"[    0.123] tsc: calibrating\r\n", b"\x7fVB echo noise");
        let mut input = noise1.to_vec();
        input.extend(encode(b"a", 64).unwrap());
        input.extend(noise2);
        input.extend(encode(b"b", 64).unwrap());
        let mut d = FrameDecoder::new(64);
        let ev = d.feed(&input);
        assert_eq!(frames_of(&ev), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(d.skipped_total(), (noise1.len() + noise2.len()) as u64);
    }

    #[test]
    fn oversize_header_is_reported_not_buffered() {
        let hdr = header(u32::MAX, 0);
        let mut d = FrameDecoder::new(1024);
        let ev = d.feed(&hdr);
        assert_eq!(ev, vec![Event::Bad(FrameError::Oversize { len: u32::MAX as u64, max: 1024 })]);
        assert_eq!(d.buffered(), 0);
        // A following good frame still decodes.
        assert_eq!(frames_of(&d.feed(&encode(b"ok", 1024).unwrap())), vec![b"ok".to_vec()]);
    }

    #[test]
    fn damaged_payload_is_reported_and_next_frame_survives() {
        let mut a = encode(b"payload-one", 64).unwrap();
        let last = a.len() - 1;
        a[last] ^= 0xff;
        a.extend(encode(b"two", 64).unwrap());
        let ev = FrameDecoder::new(64).feed(&a);
        assert!(ev.contains(&Event::Bad(FrameError::PayloadChecksum { len: 11 })));
        assert_eq!(frames_of(&ev), vec![b"two".to_vec()]);
    }

    #[test]
    fn truncated_stream_is_reported() {
        let f = encode(b"0123456789", 64).unwrap();
        let mut d = FrameDecoder::new(64);
        assert!(d.feed(&f[..20]).is_empty());
        assert_eq!(d.finish(), Some(FrameError::Truncated { have: 20, need: 26 }));
    }

    #[test]
    fn encode_refuses_oversize() {
        assert!(matches!(encode(&[0; 65], 64), Err(FrameError::Oversize { len: 65, max: 64 })));
    }

    proptest! {
        /// Any split of a valid stream into chunks yields the same frames.
        #[test]
        fn chunking_does_not_matter(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
                                    cuts in prop::collection::vec(1usize..97, 1..40)) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| encode(p, 512).unwrap()).collect();
            let mut d = FrameDecoder::new(512);
            let mut got = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= stream.len() { break; }
                let end = (at + c).min(stream.len());
                got.extend(frames_of(&d.feed(&stream[at..end])));
                at = end;
            }
            prop_assert_eq!(got, payloads);
            prop_assert_eq!(d.skipped_total(), 0);
        }

        /// Arbitrary bytes never panic and never grow the buffer past one frame + one chunk.
        #[test]
        fn garbage_is_bounded(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2048), 0..20)) {
            let mut d = FrameDecoder::new(256);
            for c in &chunks {
                let _ = d.feed(c);
                prop_assert!(d.buffered() <= HEADER_LEN + 256);
            }
            let _ = d.finish();
        }

        /// Noise between frames is skipped and the frames survive, as long as the
        /// noise itself holds no magic.
        #[test]
        fn noise_between_frames(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..6),
                                noise in prop::collection::vec(prop::collection::vec(0u8..0x7f, 0..50), 6)) {
            let mut stream = Vec::new();
            for (p, n) in payloads.iter().zip(noise.iter()) {
                stream.extend(n);
                stream.extend(encode(p, 128).unwrap());
            }
            let mut d = FrameDecoder::new(128);
            let got = frames_of(&d.feed(&stream));
            prop_assert_eq!(got, payloads.clone());
            let noise_total: usize = noise.iter().take(payloads.len()).map(|n| n.len()).sum();
            prop_assert_eq!(d.skipped_total(), noise_total as u64);
        }

        /// Flipping one byte loses at most the frame it hit.
        #[test]
        fn single_corruption_loses_at_most_one_frame(payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 2..6),
                                                     which in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut stream: Vec<u8> = payloads.iter().flat_map(|p| encode(p, 128).unwrap()).collect();
            let i = which.index(stream.len());
            stream[i] ^= flip;
            let got = frames_of(&FrameDecoder::new(128).feed(&stream));
            prop_assert!(got.len() + 1 >= payloads.len());
            for g in &got { prop_assert!(payloads.contains(g)); }
        }
    }
}
