// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_ok_packet.html
// https://mariadb.com/kb/en/ok_packet/

use bytes::{BufMut, BytesMut};

use crate::buf::{Reader, put_lenenc_bytes, put_lenenc_int};
use crate::capabilities::Capabilities;
use crate::error::{ProtocolError, Result};

/// Header of an OK packet.
pub const OK_HEADER: u8 = 0x00;

/// OK packet: success of a command, or the end of login.
///
/// The proxy forwards the backend's login OK (with a rewritten sequence id) and writes its
/// own; session-state data is carried opaquely in [`OkPacket::session_state`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    /// Human-readable info; with `SESSION_TRACK` this is the length-encoded field only.
    pub info: Vec<u8>,
    /// With `SESSION_TRACK`: the raw bytes after `info` (the length-encoded session-state
    /// block when `SERVER_SESSION_STATE_CHANGED`), kept verbatim so forwarding is lossless.
    /// Always empty without `SESSION_TRACK`.
    pub session_state: Vec<u8>,
}

impl OkPacket {
    /// Accepts both `0x00` and the `0xFE` header that ends a result set under
    /// `DEPRECATE_EOF` (telling those apart from EOF is the caller's job, by length).
    pub fn decode(payload: &[u8], caps: Capabilities) -> Result<Self> {
        let mut r = Reader::new(payload);
        let header = r.u8("OK header")?; // int<1>
        if header != OK_HEADER && header != 0xFE {
            return Err(ProtocolError::Malformed(
                "OK packet must start with 0x00 or 0xFE",
            ));
        }
        let affected_rows = r.lenenc_u64("affected rows")?; // int<lenenc>
        let last_insert_id = r.lenenc_u64("last insert id")?; // int<lenenc>
        let (status, warnings) = if caps.contains(Capabilities::PROTOCOL_41) {
            (r.u16_le("status flags")?, r.u16_le("warnings")?) // int<2>, int<2>
        } else if caps.contains(Capabilities::TRANSACTIONS) {
            (r.u16_le("status flags")?, 0) // int<2>
        } else {
            (0, 0)
        };
        let (info, session_state) = if caps.contains(Capabilities::SESSION_TRACK) {
            if r.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                let info = r.lenenc_bytes("info")?.to_vec(); // string<lenenc>
                (info, r.rest().to_vec()) // string<lenenc> session state, kept raw
            }
        } else {
            (r.rest().to_vec(), Vec::new()) // string<EOF>
        };
        Ok(Self {
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info,
            session_state,
        })
    }

    /// Always writes the `0x00` header.
    pub fn encode(&self, out: &mut BytesMut, caps: Capabilities) {
        out.put_u8(OK_HEADER);
        put_lenenc_int(out, self.affected_rows);
        put_lenenc_int(out, self.last_insert_id);
        if caps.contains(Capabilities::PROTOCOL_41) {
            out.put_u16_le(self.status);
            out.put_u16_le(self.warnings);
        } else if caps.contains(Capabilities::TRANSACTIONS) {
            out.put_u16_le(self.status);
        }
        if caps.contains(Capabilities::SESSION_TRACK) {
            if !self.info.is_empty() || !self.session_state.is_empty() {
                put_lenenc_bytes(out, &self.info);
                out.put_slice(&self.session_state);
            }
        } else {
            out.put_slice(&self.info);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::connect::tests_support::arb_caps;
    use proptest::prelude::*;

    /// Login OK from MariaDB 10.11 to libmariadb (SESSION_TRACK negotiated): the session
    /// state reports the schema change to `mysql` (frame header `11 00 00 02`).
    const MARIADB_LOGIN_OK: &str = "0000000240000000080106056d7973716c";

    #[test]
    fn decodes_real_ok_with_session_state() {
        let caps = Capabilities::from_parts(0x00BF_A28C, 0x1D);
        let payload = hex::decode(MARIADB_LOGIN_OK).unwrap();
        let ok = OkPacket::decode(&payload, caps).unwrap();
        assert_eq!(ok.affected_rows, 0);
        assert_eq!(ok.status, 0x4002); // AUTOCOMMIT | SESSION_STATE_CHANGED
        assert_eq!(ok.warnings, 0);
        assert!(ok.info.is_empty());
        assert_eq!(ok.session_state, hex::decode("080106056d7973716c").unwrap());
        let mut out = BytesMut::new();
        ok.encode(&mut out, caps);
        assert_eq!(&out[..], &payload[..]);
        for n in 0..payload.len() {
            let res = OkPacket::decode(&payload[..n], caps);
            assert_eq!(res.is_ok(), n >= 7, "prefix {n}");
        }
    }

    #[test]
    fn minimal_ok_and_eof_style_header() {
        let caps = Capabilities::PROTOCOL_41 | Capabilities::DEPRECATE_EOF;
        let ok = OkPacket::decode(&[0x00, 0, 0, 2, 0, 0, 0], caps).unwrap();
        assert_eq!(ok.status, 2);
        let ok = OkPacket::decode(&[0xFE, 0, 0, 0x22, 0, 1, 0], caps).unwrap();
        assert_eq!((ok.status, ok.warnings), (0x22, 1));
        assert!(OkPacket::decode(&[0xFF, 0, 0, 0, 0, 0, 0], caps).is_err());
        assert!(OkPacket::decode(&[0x00, 0xFB, 0, 0, 0, 0, 0], caps).is_err());
    }

    fn arb_ok() -> impl Strategy<Value = (OkPacket, Capabilities)> {
        (
            arb_caps(),
            any::<u64>(),
            any::<u64>(),
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(caps, a, id, s, w, info, state)| {
                let w = if caps.contains(Capabilities::PROTOCOL_41) {
                    w
                } else {
                    0
                };
                let s = if caps.intersects(Capabilities::PROTOCOL_41 | Capabilities::TRANSACTIONS) {
                    s
                } else {
                    0
                };
                let state = if caps.contains(Capabilities::SESSION_TRACK) {
                    state
                } else {
                    Vec::new()
                };
                let ok = OkPacket {
                    affected_rows: a,
                    last_insert_id: id,
                    status: s,
                    warnings: w,
                    info,
                    session_state: state,
                };
                (ok, caps)
            })
    }

    proptest! {
        #[test]
        fn round_trip((ok, caps) in arb_ok()) {
            let mut out = BytesMut::new();
            ok.encode(&mut out, caps);
            prop_assert_eq!(OkPacket::decode(&out, caps).unwrap(), ok);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..128),
            caps in arb_caps(),
        ) {
            let mut payload = vec![0u8];
            payload.extend_from_slice(&data);
            let _ = OkPacket::decode(&data, caps);
            if let Ok(ok) = OkPacket::decode(&payload, caps) {
                let mut out = BytesMut::new();
                ok.encode(&mut out, caps);
                prop_assert_eq!(OkPacket::decode(&out, caps).unwrap(), ok);
            }
        }
    }
}
