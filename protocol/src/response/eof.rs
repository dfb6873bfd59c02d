// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_eof_packet.html
// https://mariadb.com/kb/en/eof_packet/

use bytes::{BufMut, BytesMut};

use crate::buf::Reader;
use crate::error::{ProtocolError, Result};

/// Header of an EOF packet (shared with AuthSwitchRequest and DEPRECATE_EOF-style OK).
pub const EOF_HEADER: u8 = 0xFE;

/// EOF packet: ends column definitions and rows when `DEPRECATE_EOF` is not negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EofPacket {
    pub warnings: u16,
    pub status: u16,
}

impl EofPacket {
    /// True for a payload that is an EOF packet rather than a row or an OK starting with
    /// `0xFE`: EOF payloads are shorter than 9 bytes.
    pub fn is_eof(payload: &[u8]) -> bool {
        payload.first() == Some(&EOF_HEADER) && payload.len() < 9
    }

    /// Decodes the 4.1 form (`0xFE`, warnings, status). The pre-4.1 bare `0xFE` decodes with
    /// zero warnings and status.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        if payload.len() >= 9 {
            return Err(ProtocolError::Malformed(
                "EOF packet must be shorter than 9 bytes",
            ));
        }
        let mut r = Reader::new(payload);
        if r.u8("EOF header")? != EOF_HEADER {
            return Err(ProtocolError::Malformed("EOF packet must start with 0xFE"));
        }
        if r.is_empty() {
            return Ok(Self {
                warnings: 0,
                status: 0,
            });
        }
        let warnings = r.u16_le("warnings")?; // int<2>
        let status = r.u16_le("status flags")?; // int<2>
        Ok(Self { warnings, status })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(EOF_HEADER);
        out.put_u16_le(self.warnings);
        out.put_u16_le(self.status);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn real_eof_from_mariadb() {
        // End of column definitions in a MariaDB 10.11 result set (frame `05 00 00 03`).
        let payload = [0xFE, 0x00, 0x00, 0x02, 0x00];
        let eof = EofPacket::decode(&payload).unwrap();
        assert_eq!(
            eof,
            EofPacket {
                warnings: 0,
                status: 2
            }
        );
        assert!(EofPacket::is_eof(&payload));
        let mut out = BytesMut::new();
        eof.encode(&mut out);
        assert_eq!(&out[..], &payload);
        for n in 0..payload.len() {
            assert_eq!(
                EofPacket::decode(&payload[..n]).is_ok(),
                n == 1,
                "prefix {n}"
            );
        }
        assert!(EofPacket::decode(&[0xFE, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(warnings: u16, status: u16) {
            let eof = EofPacket { warnings, status };
            let mut out = BytesMut::new();
            eof.encode(&mut out);
            prop_assert_eq!(EofPacket::decode(&out).unwrap(), eof);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = EofPacket::decode(&data);
            let _ = EofPacket::is_eof(&data);
        }
    }
}
