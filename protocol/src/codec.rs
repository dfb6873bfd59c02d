//! Packet framing: 3-byte length, 1-byte sequence id, payload.
//!
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html>
//! <https://mariadb.com/kb/en/0-packet/>
//!
//! A payload of `0xFFFFFF` bytes or more is split into fragments of `0xFFFFFF` bytes with
//! increasing sequence ids, ending with a shorter (possibly empty) fragment. [`Packet`] is the
//! joined, logical packet; [`PacketCodec`] does the splitting and joining so nothing above it
//! has to care.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{ProtocolError, Result};

/// Largest payload of one wire fragment; a fragment this long means "more follows".
pub const MAX_FRAGMENT: usize = 0xFF_FFFF;

/// A logical packet: the joined payload of one or more wire fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the first fragment.
    pub seq: u8,
    pub payload: Bytes,
}

impl Packet {
    pub fn new(seq: u8, payload: impl Into<Bytes>) -> Self {
        Self {
            seq,
            payload: payload.into(),
        }
    }

    /// Number of wire fragments this packet occupies; an exact multiple of
    /// [`MAX_FRAGMENT`] needs a trailing empty fragment, hence the `+ 1`.
    pub fn fragments(&self) -> usize {
        self.payload.len() / MAX_FRAGMENT + 1
    }

    /// Sequence id the peer's next packet (or our next one) must carry.
    pub fn next_seq(&self) -> u8 {
        self.seq.wrapping_add(self.fragments() as u8)
    }
}

/// Reads only a 4-byte header: (payload length, seq). Inlined across crates: the relay's
/// header walk calls it for every packet.
#[inline]
pub fn parse_header(h: [u8; 4]) -> (usize, u8) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
    (len, h[3])
}

/// Frames `payload` into `dst`, splitting it into fragments with consecutive sequence ids
/// starting at `seq`. Returns the sequence id that follows the last fragment.
pub fn write_packet(dst: &mut BytesMut, seq: u8, payload: &[u8]) -> u8 {
    dst.reserve(payload.len() + 4 * (payload.len() / MAX_FRAGMENT + 1));
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_FRAGMENT);
        let (chunk, tail) = rest.split_at(n);
        let len = (n as u32).to_le_bytes();
        dst.put_slice(&[len[0], len[1], len[2], seq]);
        dst.put_slice(chunk);
        seq = seq.wrapping_add(1);
        rest = tail;
        if n < MAX_FRAGMENT {
            return seq;
        }
    }
}

/// A partly received multi-fragment packet.
#[derive(Debug)]
struct Partial {
    first_seq: u8,
    next_seq: u8,
    payload: BytesMut,
}

/// tokio-util codec for [`Packet`]s.
///
/// Decoding enforces `max_packet` on the logical payload using the fragment headers, so an
/// oversized packet is refused before its bytes are buffered. Fragments of one packet must
/// carry consecutive sequence ids (the server refuses otherwise too). Encoding does not
/// enforce the limit: what we send is ours to size.
#[derive(Debug)]
pub struct PacketCodec {
    max_packet: usize,
    partial: Option<Partial>,
}

impl PacketCodec {
    pub fn new(max_packet: usize) -> Self {
        Self {
            max_packet,
            partial: None,
        }
    }

    /// The configured limit on a logical payload.
    pub fn max_packet(&self) -> usize {
        self.max_packet
    }
}

impl Decoder for PacketCodec {
    type Item = Packet;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>> {
        loop {
            let Some(&[a, b, c, d]) = src.get(..4) else {
                return Ok(None);
            };
            let (len, seq) = parse_header([a, b, c, d]);
            let already = self.partial.as_ref().map_or(0, |p| p.payload.len());
            let size = already.saturating_add(len);
            if size > self.max_packet {
                return Err(ProtocolError::TooLarge {
                    size,
                    max: self.max_packet,
                });
            }
            if let Some(p) = &self.partial
                && p.next_seq != seq
            {
                return Err(ProtocolError::Malformed(
                    "fragment sequence id out of order",
                ));
            }
            if src.len() < 4 + len {
                src.reserve(4 + len - src.len());
                return Ok(None);
            }
            src.advance(4);
            let frag = src.split_to(len);
            let last = len < MAX_FRAGMENT;
            match self.partial.take() {
                None if last => return Ok(Some(Packet::new(seq, frag.freeze()))),
                None => {
                    self.partial = Some(Partial {
                        first_seq: seq,
                        next_seq: seq.wrapping_add(1),
                        payload: frag,
                    });
                }
                Some(mut p) => {
                    p.payload.extend_from_slice(&frag);
                    p.next_seq = seq.wrapping_add(1);
                    if last {
                        return Ok(Some(Packet::new(p.first_seq, p.payload.freeze())));
                    }
                    self.partial = Some(p);
                }
            }
        }
    }
}

impl Encoder<Packet> for PacketCodec {
    type Error = ProtocolError;

    fn encode(&mut self, item: Packet, dst: &mut BytesMut) -> Result<()> {
        write_packet(dst, item.seq, &item.payload);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut PacketCodec, wire: &[u8], chunks: &[usize]) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = chunks
                .get(i % chunks.len().max(1))
                .copied()
                .unwrap_or(1)
                .max(1);
            let end = (pos + n).min(wire.len());
            buf.extend_from_slice(&wire[pos..end]);
            pos = end;
            i += 1;
            while let Some(p) = codec.decode(&mut buf).unwrap() {
                out.push(p);
            }
        }
        assert!(buf.is_empty());
        out
    }

    fn patterned(len: usize, salt: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ salt)
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn header() {
        assert_eq!(parse_header([0x64, 0, 0, 0]), (100, 0));
        assert_eq!(parse_header([0xFF, 0xFF, 0xFF, 7]), (MAX_FRAGMENT, 7));
    }

    #[test]
    fn small_packet_wire_bytes() {
        let mut out = BytesMut::new();
        assert_eq!(write_packet(&mut out, 0, &[0x01]), 1);
        assert_eq!(&out[..], &[1, 0, 0, 0, 1]);
        let mut out = BytesMut::new();
        assert_eq!(write_packet(&mut out, 255, &[]), 0);
        assert_eq!(&out[..], &[0, 0, 0, 255]);
    }

    #[test]
    fn exact_multiple_gets_empty_trailing_fragment() {
        let p = Packet::new(3, patterned(MAX_FRAGMENT, 1));
        assert_eq!(p.fragments(), 2);
        assert_eq!(p.next_seq(), 5);
        let mut out = BytesMut::new();
        assert_eq!(write_packet(&mut out, 3, &p.payload), 5);
        assert_eq!(out.len(), MAX_FRAGMENT + 8);
        assert_eq!(&out[..4], &[0xFF, 0xFF, 0xFF, 3]);
        assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 4]);
    }

    #[test]
    fn big_and_small_packets_in_random_chunks() {
        let packets = vec![
            Packet::new(0, patterned(10, 0)),
            Packet::new(1, patterned(MAX_FRAGMENT + 1, 2)),
            Packet::new(3, patterned(MAX_FRAGMENT, 3)),
            Packet::new(0, Bytes::new()),
            Packet::new(254, patterned(2 * MAX_FRAGMENT + 5, 4)), // seq wraps
            Packet::new(9, patterned(MAX_FRAGMENT - 1, 5)),
            Packet::new(7, patterned(3, 6)),
        ];
        let mut codec = PacketCodec::new(64 << 20);
        let mut wire = BytesMut::new();
        for p in &packets {
            codec.encode(p.clone(), &mut wire).unwrap();
        }
        // Deterministic pseudo-random chunk sizes from tiny to multi-megabyte.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let chunks: Vec<usize> = (0..64)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 3 == 0 {
                    (x % 7) as usize + 1
                } else {
                    (x % (3 << 20)) as usize + 1
                }
            })
            .collect();
        let got = decode_all(&mut codec, &wire, &chunks);
        assert_eq!(got.len(), packets.len());
        for (g, p) in got.iter().zip(&packets) {
            assert_eq!(g.seq, p.seq);
            assert_eq!(g.payload.len(), p.payload.len());
            assert!(g == p);
        }
    }

    #[test]
    fn max_packet_is_enforced_from_headers() {
        let mut codec = PacketCodec::new(100);
        let mut buf = BytesMut::from(&[101u8, 0, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::TooLarge {
                size: 101,
                max: 100
            })
        ));
        let mut codec = PacketCodec::new(100);
        let mut buf = BytesMut::new();
        write_packet(&mut buf, 0, &[7; 100]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().payload.len(), 100);
        // A full-size first fragment is refused before its 16 MiB body arrives.
        let mut codec = PacketCodec::new(MAX_FRAGMENT + 10);
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0][..]);
        buf.extend_from_slice(&vec![0; MAX_FRAGMENT]);
        buf.extend_from_slice(&[11, 0, 0, 1]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::TooLarge { size, .. }) if size == MAX_FRAGMENT + 11
        ));
    }

    #[test]
    fn out_of_order_fragment_is_malformed() {
        let mut codec = PacketCodec::new(usize::MAX);
        let mut buf = BytesMut::from(&[0xFF, 0xFF, 0xFF, 0][..]);
        buf.extend_from_slice(&vec![0; MAX_FRAGMENT]);
        buf.extend_from_slice(&[0, 0, 0, 5]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn small_round_trip(
            payloads in proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
            chunks in proptest::collection::vec(1usize..50, 1..8),
        ) {
            let packets: Vec<Packet> =
                payloads.into_iter().map(|(s, p)| Packet::new(s, p)).collect();
            let mut codec = PacketCodec::new(1 << 20);
            let mut wire = BytesMut::new();
            for p in &packets {
                codec.encode(p.clone(), &mut wire).unwrap();
            }
            prop_assert_eq!(decode_all(&mut codec, &wire, &chunks), packets);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            max in 0usize..1000,
        ) {
            let mut codec = PacketCodec::new(max);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
