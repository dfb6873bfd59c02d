//! Checked reading and plain writing of the protocol's primitive types.
//!
//! `bytes::Buf::get_*` panics when the buffer is short; a proxy reads attacker-controlled
//! bytes, so every read here checks the remaining length first and returns
//! [`ProtocolError::Truncated`] instead.
//!
//! Wire types follow the MySQL documentation:
//! <https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_data_types.html>

use bytes::{BufMut, BytesMut};

use crate::error::{ProtocolError, Result};

/// A cursor over a packet payload whose reads fail instead of panicking.
///
/// Every method takes `what`, the name of the field being read, which ends up in the error.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The next byte without consuming it; `None` at the end.
    pub fn peek_u8(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// Consumes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(ProtocolError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Consumes exactly `N` bytes into an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    /// Skips `n` bytes (fillers, reserved fields).
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<()> {
        self.bytes(n, what).map(|_| ())
    }

    /// `int<1>`
    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    /// `int<2>`
    pub fn u16_le(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    /// `int<3>`
    pub fn u24_le(&mut self, what: &'static str) -> Result<u32> {
        let [a, b, c] = self.array(what)?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    /// Alias of [`Reader::u24_le`] (all protocol integers are little-endian).
    pub fn u24(&mut self, what: &'static str) -> Result<u32> {
        self.u24_le(what)
    }

    /// Alias of [`Reader::u64_le`].
    pub fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.u64_le(what)
    }

    /// `int<4>`
    pub fn u32_le(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    /// `int<8>`
    pub fn u64_le(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// `int<lenenc>`. Returns `None` for `0xFB`, which is SQL NULL in result rows.
    /// `0xFF` cannot start a length-encoded integer (it is the ERR header) and is rejected.
    pub fn lenenc_int(&mut self, what: &'static str) -> Result<Option<u64>> {
        let first = self.u8(what)?;
        Ok(Some(match first {
            0..=0xFA => u64::from(first),
            0xFB => return Ok(None),
            0xFC => u64::from(self.u16_le(what)?),
            0xFD => u64::from(self.u24_le(what)?),
            0xFE => self.u64_le(what)?,
            0xFF => {
                return Err(ProtocolError::Malformed(
                    "0xFF is not a length-encoded integer",
                ));
            }
        }))
    }

    /// `int<lenenc>` where NULL is not allowed (lengths, counters).
    pub fn lenenc_u64(&mut self, what: &'static str) -> Result<u64> {
        self.lenenc_int(what)?.ok_or(ProtocolError::Malformed(
            "unexpected NULL length-encoded integer",
        ))
    }

    /// `string<lenenc>`: a length-encoded integer followed by that many bytes.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.lenenc_u64(what)?;
        // A length that does not fit in usize cannot fit in the buffer either.
        let len = usize::try_from(len).map_err(|_| ProtocolError::Truncated(what))?;
        self.bytes(len, what)
    }

    /// `string<NUL>`: bytes up to (not including) a NUL, which is consumed.
    pub fn nul_bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let pos = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::Truncated(what))?;
        let (head, tail) = self.buf.split_at(pos);
        self.buf = tail.get(1..).unwrap_or_default();
        Ok(head)
    }

    /// Like [`Reader::nul_bytes`], but a missing NUL at the end of the packet is tolerated and
    /// the rest is taken: some clients and servers omit the final terminator.
    pub fn nul_bytes_or_rest(&mut self) -> &'a [u8] {
        match self.buf.iter().position(|&b| b == 0) {
            Some(pos) => {
                let (head, tail) = self.buf.split_at(pos);
                self.buf = tail.get(1..).unwrap_or_default();
                head
            }
            None => self.rest(),
        }
    }

    /// `string<NUL>` that must be UTF-8.
    pub fn nul_str(&mut self, what: &'static str) -> Result<String> {
        to_string(self.nul_bytes(what)?, what)
    }

    /// `string<EOF>`: everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Strict UTF-8 conversion with the field name in the error.
pub(crate) fn to_string(bytes: &[u8], what: &'static str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::InvalidUtf8(what))
}

/// Writes an `int<lenenc>` (never the NULL marker).
pub fn put_lenenc_int(out: &mut BytesMut, v: u64) {
    match v {
        0..=0xFA => out.put_u8(v as u8),
        0xFB..=0xFFFF => {
            out.put_u8(0xFC);
            out.put_u16_le(v as u16);
        }
        0x1_0000..=0xFF_FFFF => {
            out.put_u8(0xFD);
            out.put_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.put_u8(0xFE);
            out.put_u64_le(v);
        }
    }
}

/// Writes a `string<lenenc>`.
pub fn put_lenenc_bytes(out: &mut BytesMut, bytes: impl AsRef<[u8]>) {
    let bytes = bytes.as_ref();
    put_lenenc_int(out, bytes.len() as u64);
    out.put_slice(bytes);
}

/// Writes a `string<NUL>`. The caller must not pass bytes containing NUL; they would end the
/// field early on the wire.
pub fn put_nul_str(out: &mut BytesMut, bytes: impl AsRef<[u8]>) {
    out.put_slice(bytes.as_ref());
    out.put_u8(0);
}

/// The writer helpers as methods, for `out.put_lenenc_int(..)` call style.
pub trait BytesMutExt {
    fn put_lenenc_int(&mut self, v: u64);
    fn put_lenenc_bytes(&mut self, bytes: impl AsRef<[u8]>);
    fn put_nul_str(&mut self, bytes: impl AsRef<[u8]>);
}

impl BytesMutExt for BytesMut {
    fn put_lenenc_int(&mut self, v: u64) {
        put_lenenc_int(self, v);
    }
    fn put_lenenc_bytes(&mut self, bytes: impl AsRef<[u8]>) {
        put_lenenc_bytes(self, bytes);
    }
    fn put_nul_str(&mut self, bytes: impl AsRef<[u8]>) {
        put_nul_str(self, bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lenenc_boundaries_round_trip() {
        for v in [
            0u64,
            250,
            251,
            0xFFFF,
            0x1_0000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_lenenc_int(&mut out, v);
            let mut r = Reader::new(&out);
            assert_eq!(r.lenenc_int("v").unwrap(), Some(v));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn lenenc_null_and_ff() {
        assert_eq!(Reader::new(&[0xFB]).lenenc_int("v").unwrap(), None);
        assert!(Reader::new(&[0xFB]).lenenc_u64("v").is_err());
        assert!(matches!(
            Reader::new(&[0xFF]).lenenc_int("v"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            Reader::new(&[0xFE, 1, 2]).lenenc_int("v"),
            Err(ProtocolError::Truncated("v"))
        ));
    }

    #[test]
    fn huge_lenenc_bytes_is_truncated_not_panic() {
        let mut r = Reader::new(&[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1]);
        assert!(matches!(
            r.lenenc_bytes("x"),
            Err(ProtocolError::Truncated("x"))
        ));
    }

    #[test]
    fn nul_strings() {
        let mut r = Reader::new(b"ab\0cd");
        assert_eq!(r.nul_bytes("a").unwrap(), b"ab");
        assert!(r.clone().nul_bytes("b").is_err());
        assert_eq!(r.nul_bytes_or_rest(), b"cd");
        assert!(r.is_empty());
        assert!(matches!(
            Reader::new(b"\xff\0").nul_str("s"),
            Err(ProtocolError::InvalidUtf8("s"))
        ));
    }

    #[test]
    fn fixed_ints() {
        let mut r = Reader::new(&[1, 2, 0, 3, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16_le("b").unwrap(), 2);
        assert_eq!(r.u24_le("c").unwrap(), 3);
        assert_eq!(r.u32_le("d").unwrap(), 4);
        assert_eq!(r.u64_le("e").unwrap(), 5);
        assert!(r.u8("f").is_err());
    }

    proptest! {
        #[test]
        fn reader_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reader::new(&data);
            let _ = r.lenenc_bytes("a");
            let _ = r.nul_bytes("b");
            let _ = r.u24_le("c");
            let _ = r.lenenc_int("d");
            let _ = r.bytes(3, "e");
            let _ = r.nul_bytes_or_rest();
        }

        #[test]
        fn lenenc_bytes_round_trip(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = BytesMut::new();
            put_lenenc_bytes(&mut out, &data);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.lenenc_bytes("x").unwrap(), &data[..]);
            prop_assert!(r.is_empty());
        }
    }
}
