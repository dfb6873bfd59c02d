// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_err_packet.html
// https://mariadb.com/kb/en/err_packet/

use bytes::{BufMut, BytesMut};

use crate::buf::Reader;
use crate::error::{ProtocolError, Result};

/// Header of an ERR packet.
pub const ERR_HEADER: u8 = 0xFF;
/// Error code MariaDB uses for progress-report packets (not errors).
pub const PROGRESS_REPORT_CODE: u16 = 0xFFFF;
/// SQL state used when none (or an invalid one) is given.
pub const DEFAULT_SQL_STATE: [u8; 5] = *b"HY000";

/// ERR packet: the proxy writes its own (bad password, unknown project, backend down) and
/// reads the backend's to report why a login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    /// `None` when the packet carries no `#` marker (pre-4.1 servers, or errors sent before
    /// capabilities are known).
    pub sql_state: Option<[u8; 5]>,
    pub message: String,
}

/// True for a MariaDB progress report (`0xFF 0xFF 0xFF ...`), which is sent to clients with
/// `MARIADB_CLIENT_PROGRESS` in the middle of a long command and is not an error.
pub fn is_progress_report(payload: &[u8]) -> bool {
    payload.starts_with(&[ERR_HEADER, 0xFF, 0xFF])
}

impl ErrPacket {
    /// `sql_state` must be 5 ASCII alphanumerics; anything else stores `HY000`.
    pub fn new(code: u16, sql_state: &str, message: impl Into<String>) -> Self {
        let state = <[u8; 5]>::try_from(sql_state.as_bytes())
            .ok()
            .filter(|s| s.iter().all(u8::is_ascii_alphanumeric))
            .unwrap_or(DEFAULT_SQL_STATE);
        Self {
            code,
            sql_state: Some(state),
            message: message.into(),
        }
    }

    /// Decodes an ERR packet; the message is converted lossily (servers send it in the
    /// connection character set). A MariaDB progress report (code `0xFFFF`, see
    /// [`is_progress_report`]) is `Malformed`: callers that enable progress reports must check
    /// for it first.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload);
        if r.u8("ERR header")? != ERR_HEADER {
            return Err(ProtocolError::Malformed("ERR packet must start with 0xFF"));
        }
        let code = r.u16_le("error code")?; // int<2>
        if code == PROGRESS_REPORT_CODE {
            return Err(ProtocolError::Malformed(
                "MariaDB progress report, not an error",
            ));
        }
        let sql_state = if r.peek_u8() == Some(b'#') {
            r.skip(1, "SQL state marker")?; // string[1]
            Some(r.array::<5>("SQL state")?) // string[5]
        } else {
            None
        };
        let message = String::from_utf8_lossy(r.rest()).into_owned(); // string<EOF>
        Ok(Self {
            code,
            sql_state,
            message,
        })
    }

    /// Always writes `#` + SQL state (`HY000` if `None`): we always speak `PROTOCOL_41`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(ERR_HEADER);
        out.put_u16_le(self.code);
        out.put_u8(b'#');
        out.put_slice(&self.sql_state.unwrap_or(DEFAULT_SQL_STATE));
        out.put_slice(self.message.as_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn access_denied_wire_format() {
        let e = ErrPacket::new(1045, "28000", "Access denied for user 'u'@'localhost'");
        let mut out = BytesMut::new();
        e.encode(&mut out);
        let mut expected = vec![0xFF, 0x15, 0x04];
        expected.extend_from_slice(b"#28000Access denied for user 'u'@'localhost'");
        assert_eq!(&out[..], &expected[..]);
        assert_eq!(ErrPacket::decode(&out).unwrap(), e);
        for n in 0..out.len() {
            let res = ErrPacket::decode(&out[..n]);
            assert_eq!(res.is_ok(), n == 3 || n >= 9, "prefix {n}");
        }
    }

    #[test]
    fn invalid_state_falls_back() {
        assert_eq!(ErrPacket::new(1, "abc", "").sql_state, Some(*b"HY000"));
        assert_eq!(ErrPacket::new(1, "08S0é", "").sql_state, Some(*b"HY000"));
        assert_eq!(ErrPacket::new(1, "08S01", "").sql_state, Some(*b"08S01"));
    }

    #[test]
    fn without_state_and_progress() {
        let e = ErrPacket::decode(b"\xff\x10\x04Too many connections").unwrap();
        assert_eq!(e.code, 1040);
        assert_eq!(e.sql_state, None);
        assert_eq!(e.message, "Too many connections");
        let progress = b"\xff\xff\xff\x01\x01\x01\x10\x27\x00\x00\x00";
        assert!(is_progress_report(progress));
        assert!(ErrPacket::decode(progress).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(code in 0u16..0xFFFF, state in "[0-9A-Z]{5}", msg in "\\PC{0,80}") {
            let e = ErrPacket::new(code, &state, msg);
            let mut out = BytesMut::new();
            e.encode(&mut out);
            prop_assert_eq!(ErrPacket::decode(&out).unwrap(), e);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut payload = vec![ERR_HEADER];
            payload.extend_from_slice(&data);
            let _ = ErrPacket::decode(&data);
            if let Ok(mut e) = ErrPacket::decode(&payload) {
                let mut out = BytesMut::new();
                e.encode(&mut out);
                e.sql_state.get_or_insert(DEFAULT_SQL_STATE);
                prop_assert_eq!(ErrPacket::decode(&out).unwrap(), e);
            }
        }
    }
}
