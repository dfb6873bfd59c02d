// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_auth_switch_request.html
// https://mariadb.com/kb/en/connection/#authentication-switch-request
// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_auth_more_data.html

use bytes::{BufMut, BytesMut};

use crate::buf::{Reader, put_nul_str};
use crate::error::{ProtocolError, Result};

/// Header byte of an AuthSwitchRequest (shared with EOF; context tells them apart).
pub const AUTH_SWITCH_HEADER: u8 = 0xFE;
/// Header byte of AuthMoreData.
pub const AUTH_MORE_DATA_HEADER: u8 = 0x01;

/// Server asks the client to authenticate again with another plugin and fresh data.
///
/// The proxy sends one to move `caching_sha2_password` clients to `mysql_native_password`
/// with its own scramble, and reads the backend's when it changes plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    pub plugin: String,
    /// Plugin data; for `mysql_native_password` the 20-byte scramble. The NUL that servers
    /// append after it is not part of this field.
    pub data: Vec<u8>,
}

impl AuthSwitchRequest {
    /// Decodes `0xFE`, plugin name, data; strips one trailing NUL from the data.
    /// The bare `0xFE` of the pre-4.1 "old password" switch is `Malformed`.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload);
        if r.u8("auth switch header")? != AUTH_SWITCH_HEADER {
            return Err(ProtocolError::Malformed(
                "auth switch request must start with 0xFE",
            ));
        }
        if r.is_empty() {
            return Err(ProtocolError::Malformed(
                "old-style auth switch (mysql_old_password) is not supported",
            ));
        }
        let plugin = r.nul_str("auth plugin name")?; // string<NUL>
        let data = r.rest(); // string<EOF>
        let data = data.strip_suffix(&[0u8]).unwrap_or(data);
        Ok(Self {
            plugin,
            data: data.to_vec(),
        })
    }

    /// Encodes `0xFE`, plugin name + NUL, data + NUL.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(AUTH_SWITCH_HEADER);
        put_nul_str(out, self.plugin.as_bytes());
        put_nul_str(out, &self.data);
    }
}

/// Extra authentication data from the server (`0x01` + data), e.g. the
/// `caching_sha2_password` fast-auth result or the MariaDB ed25519 exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthMoreData {
    pub data: Vec<u8>,
}

impl AuthMoreData {
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload);
        if r.u8("auth more data header")? != AUTH_MORE_DATA_HEADER {
            return Err(ProtocolError::Malformed(
                "auth more data must start with 0x01",
            ));
        }
        Ok(Self {
            data: r.rest().to_vec(), // string<EOF>
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(AUTH_MORE_DATA_HEADER);
        out.put_slice(&self.data);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn native_password_switch_wire_format() {
        let req = AuthSwitchRequest {
            plugin: "mysql_native_password".into(),
            data: b"abcdefghijklmnopqrst".to_vec(),
        };
        let mut out = BytesMut::new();
        req.encode(&mut out);
        let mut expected = vec![0xFE];
        expected.extend_from_slice(b"mysql_native_password\0abcdefghijklmnopqrst\0");
        assert_eq!(&out[..], &expected[..]);
        assert_eq!(AuthSwitchRequest::decode(&out).unwrap(), req);
        for n in 0..out.len() {
            let res = AuthSwitchRequest::decode(&out[..n]);
            if n < 23 {
                assert!(res.is_err(), "prefix {n}");
            } else {
                assert_eq!(res.unwrap().data, &b"abcdefghijklmnopqrst"[..n - 23]);
            }
        }
        assert!(AuthSwitchRequest::decode(&[0xFE]).is_err());
        assert!(AuthSwitchRequest::decode(b"\x00x\0").is_err());
    }

    #[test]
    fn decodes_real_mariadb_switch() {
        // MariaDB 10.11 answering a COM_CHANGE_USER (frame `2c 00 00 01`).
        let payload = hex::decode(concat!(
            "fe6d7973716c5f6e61746976655f70617373776f726400604d413f57766e46534b60242c51334c622b",
            "4a7500"
        ))
        .unwrap();
        let req = AuthSwitchRequest::decode(&payload).unwrap();
        assert_eq!(req.plugin, "mysql_native_password");
        assert_eq!(req.data, b"`MA?WvnFSK`$,Q3Lb+Ju");
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert_eq!(&out[..], &payload[..]);
    }

    #[test]
    fn more_data() {
        let m = AuthMoreData { data: vec![3] };
        let mut out = BytesMut::new();
        m.encode(&mut out);
        assert_eq!(&out[..], &[1, 3]);
        assert_eq!(AuthMoreData::decode(&out).unwrap(), m);
        assert!(AuthMoreData::decode(&[]).is_err());
        assert!(AuthMoreData::decode(&[2]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(plugin in "[a-z_]{0,30}", data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let req = AuthSwitchRequest { plugin, data };
            let mut out = BytesMut::new();
            req.encode(&mut out);
            prop_assert_eq!(AuthSwitchRequest::decode(&out).unwrap(), req);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = AuthMoreData::decode(&data);
            if let Ok(req) = AuthSwitchRequest::decode(&data) {
                let mut out = BytesMut::new();
                req.encode(&mut out);
                prop_assert_eq!(AuthSwitchRequest::decode(&out).unwrap(), req);
            }
        }
    }
}
