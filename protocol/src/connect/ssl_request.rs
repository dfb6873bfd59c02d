// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_ssl_request.html
// https://mariadb.com/kb/en/connection/#sslrequest-packet

use bytes::{BufMut, BytesMut};

use crate::buf::Reader;
use crate::capabilities::Capabilities;
use crate::error::Result;

/// The first 32 bytes of a HandshakeResponse41, sent alone (seq 1) to ask for TLS.
///
/// MariaDB keeps the capabilities from this packet, so the proxy must forward them unchanged
/// in the full response that follows inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslRequest {
    /// Includes MariaDB extended bits from bytes 28..32 when `CLIENT_MYSQL` is clear.
    pub capabilities: Capabilities,
    pub max_packet: u32,
    pub collation: u8,
}

/// Length of an SSLRequest payload.
pub const SSL_REQUEST_LEN: usize = 32;

/// True for a 32-byte payload with `CLIENT_SSL`: a full HandshakeResponse41 is always longer
/// (it carries at least the user name's NUL).
pub fn is_ssl_request(payload: &[u8]) -> bool {
    match payload {
        [a, b, c, d, ..] if payload.len() == SSL_REQUEST_LEN => {
            u32::from_le_bytes([*a, *b, *c, *d]) & Capabilities::SSL.bits() as u32 != 0
        }
        _ => false,
    }
}

impl SslRequest {
    /// Decodes the 32-byte header; trailing bytes are ignored, so this also reads the fixed
    /// part of a HandshakeResponse41.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload);
        let low = r.u32_le("client capabilities")?; // int<4>
        let max_packet = r.u32_le("max packet size")?; // int<4>
        let collation = r.u8("character set")?; // int<1>
        r.skip(19, "filler")?; // string[19]
        let ext = r.u32_le("MariaDB extended capabilities")?; // int<4>
        let ext = if low & Capabilities::CLIENT_MYSQL.bits() as u32 == 0 {
            ext
        } else {
            0
        };
        Ok(Self {
            capabilities: Capabilities::from_parts(low, ext),
            max_packet,
            collation,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        put_fixed_header(out, self.capabilities, self.max_packet, self.collation);
    }
}

/// The 32-byte header shared by SSLRequest and HandshakeResponse41.
pub(crate) fn put_fixed_header(out: &mut BytesMut, caps: Capabilities, max_packet: u32, coll: u8) {
    out.put_u32_le(caps.low());
    out.put_u32_le(max_packet);
    out.put_u8(coll);
    out.put_bytes(0, 19);
    if caps.contains(Capabilities::CLIENT_MYSQL) {
        out.put_u32_le(0);
    } else {
        out.put_u32_le(caps.mariadb_ext());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_detection() {
        let req = SslRequest {
            capabilities: Capabilities::from_parts(0x00BF_AA8C, 0x1D),
            max_packet: 1 << 30,
            collation: 45,
        };
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert_eq!(out.len(), SSL_REQUEST_LEN);
        assert!(is_ssl_request(&out));
        assert_eq!(SslRequest::decode(&out).unwrap(), req);
        for n in 0..out.len() {
            assert!(SslRequest::decode(&out[..n]).is_err());
            assert!(!is_ssl_request(&out[..n]));
        }
        let mut longer = out.to_vec();
        longer.push(0);
        assert!(!is_ssl_request(&longer));
        let mut no_ssl = out.to_vec();
        no_ssl[1] &= !0x08;
        assert!(!is_ssl_request(&no_ssl));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = is_ssl_request(&data);
            if let Ok(req) = SslRequest::decode(&data) {
                let mut out = BytesMut::new();
                req.encode(&mut out);
                prop_assert_eq!(SslRequest::decode(&out).unwrap(), req);
            }
        }
    }
}
