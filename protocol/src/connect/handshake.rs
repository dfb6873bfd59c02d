// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_v10.html
// https://mariadb.com/kb/en/connection/#initial-handshake-packet

use bytes::{BufMut, BytesMut};

use crate::buf::{Reader, put_nul_str, to_string};
use crate::capabilities::Capabilities;
use crate::error::{ProtocolError, Result};

/// Initial Handshake v10, the server's greeting (seq 0).
///
/// The proxy decodes the backend's greeting to learn its scramble and capabilities, and
/// encodes its own greeting for clients, so both directions must be exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Always 10.
    pub protocol_version: u8,
    /// MariaDB 10.x sends `5.5.5-10.x.y-MariaDB...`; clients key features on it.
    pub server_version: String,
    pub connection_id: u32,
    /// Full auth-plugin-data (part 1 + part 2) without the trailing NUL; 20 bytes for
    /// `mysql_native_password`.
    pub scramble: Vec<u8>,
    /// Low 32 bits from the two capability words; MariaDB extended bits from the last 4
    /// filler bytes, only when `CLIENT_MYSQL` is clear.
    pub capabilities: Capabilities,
    pub collation: u8,
    pub status: u16,
    /// Present when `PLUGIN_AUTH`.
    pub auth_plugin: Option<String>,
}

impl Handshake {
    /// Decodes a greeting payload. A server that refuses the connection sends an ERR packet
    /// (`0xFF`) instead: check for that first; here it is `Malformed`.
    ///
    /// Part 2 of the scramble is taken up to its NUL (or all but the field's last byte if it
    /// has none), so scrambles must not contain NUL past byte 8; real servers never generate
    /// one. The auth-data length byte is honoured only with `PLUGIN_AUTH`.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Reader::new(payload);
        let protocol_version = r.u8("protocol version")?; // int<1>
        if protocol_version != 10 {
            return Err(ProtocolError::Malformed(
                "handshake protocol version is not 10",
            ));
        }
        let server_version = r.nul_str("server version")?; // string<NUL>
        let connection_id = r.u32_le("connection id")?; // int<4>
        let mut scramble = r.bytes(8, "auth-plugin-data-part-1")?.to_vec(); // string[8]
        r.skip(1, "filler")?; // int<1>
        let caps_low = r.u16_le("capability flags (lower)")?; // int<2>
        let collation = r.u8("character set")?; // int<1>
        let status = r.u16_le("status flags")?; // int<2>
        let caps_high = r.u16_le("capability flags (upper)")?; // int<2>
        let auth_data_len = r.u8("auth-plugin-data length")?; // int<1>
        r.skip(6, "reserved")?; // string[6]
        let ext = r.u32_le("MariaDB extended capabilities")?; // int<4>

        let low = u32::from(caps_low) | (u32::from(caps_high) << 16);
        let ext = if low & Capabilities::CLIENT_MYSQL.bits() as u32 == 0 {
            ext
        } else {
            0
        };
        let capabilities = Capabilities::from_parts(low, ext);

        if capabilities.contains(Capabilities::SECURE_CONNECTION) {
            // string[$len]: max(13, auth_data_len - 8) bytes, normally 12 bytes + NUL. The
            // length byte only means something with PLUGIN_AUTH (otherwise the protocol
            // defines it as 0x00 and libmysql ignores it), so without PLUGIN_AUTH part 2 is
            // always 13 bytes, exactly what `encode` writes.
            let auth_data_len = if capabilities.contains(Capabilities::PLUGIN_AUTH) {
                usize::from(auth_data_len)
            } else {
                0
            };
            let len = auth_data_len.saturating_sub(8).max(13);
            let part2 = r.bytes(len, "auth-plugin-data-part-2")?;
            // Up to the first NUL; without one, the last byte stands where the NUL belongs.
            let end = part2
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(part2.len().saturating_sub(1));
            scramble.extend_from_slice(part2.get(..end).unwrap_or_default());
        }

        let auth_plugin = if capabilities.contains(Capabilities::PLUGIN_AUTH) && !r.is_empty() {
            // string<NUL>; MySQL 5.5.7..5.5.9 forgot the NUL, so the rest is accepted too.
            Some(to_string(r.nul_bytes_or_rest(), "auth plugin name")?)
        } else {
            None
        };

        Ok(Self {
            protocol_version,
            server_version,
            connection_id,
            scramble,
            capabilities,
            collation,
            status,
            auth_plugin,
        })
    }

    /// Encodes the greeting payload (without the frame header).
    ///
    /// A scramble shorter than 8 bytes is padded with zeros. Without `PLUGIN_AUTH` the
    /// auth-data length is written as 0 and readers assume 13 bytes of part 2. Without
    /// `SECURE_CONNECTION` only the first 8 scramble bytes are written.
    pub fn encode(&self, out: &mut BytesMut) {
        let caps = self.capabilities;
        let low = caps.low();
        out.put_u8(self.protocol_version);
        put_nul_str(out, self.server_version.as_bytes());
        out.put_u32_le(self.connection_id);
        let part1 = self.scramble.get(..8).unwrap_or(&self.scramble);
        out.put_slice(part1);
        out.put_bytes(0, 8 - part1.len());
        out.put_u8(0);
        out.put_u16_le(low as u16);
        out.put_u8(self.collation);
        out.put_u16_le(self.status);
        out.put_u16_le((low >> 16) as u16);
        let auth_len = if caps.contains(Capabilities::PLUGIN_AUTH) {
            u8::try_from(self.scramble.len() + 1).unwrap_or(u8::MAX)
        } else {
            0
        };
        out.put_u8(auth_len);
        out.put_bytes(0, 6);
        if caps.contains(Capabilities::CLIENT_MYSQL) {
            out.put_u32_le(0);
        } else {
            out.put_u32_le(caps.mariadb_ext());
        }
        if caps.contains(Capabilities::SECURE_CONNECTION) {
            let part2 = self.scramble.get(8..).unwrap_or_default();
            out.put_slice(part2);
            // NUL terminator, padded so the field is at least 13 bytes.
            out.put_bytes(0, 13usize.saturating_sub(part2.len()).max(1));
        }
        if caps.contains(Capabilities::PLUGIN_AUTH)
            && let Some(plugin) = &self.auth_plugin
        {
            put_nul_str(out, plugin.as_bytes());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Greeting of MariaDB 10.11.19 (Debian 12), captured from a local server (payload only;
    /// the frame header was `64 00 00 00`).
    pub(crate) const MARIADB_10_11_GREETING: &str = concat!(
        "0a352e352e352d31302e31312e31392d4d6172696144422d302b646562313275310004000000",
        "276d706b4762362500fef7080200ff81150000000000001d00000056626a6f6e5c5f493155395b00",
        "6d7973716c5f6e61746976655f70617373776f726400"
    );

    #[test]
    fn decodes_real_mariadb_greeting() {
        let payload = hex::decode(MARIADB_10_11_GREETING).unwrap();
        let h = Handshake::decode(&payload).unwrap();
        assert_eq!(h.protocol_version, 10);
        assert_eq!(h.server_version, "5.5.5-10.11.19-MariaDB-0+deb12u1");
        assert_eq!(h.connection_id, 4);
        assert_eq!(h.scramble, b"'mpkGb6%Vbjon\\_I1U9[");
        assert_eq!(h.capabilities.low(), 0x81FF_F7FE);
        assert_eq!(h.capabilities.mariadb_ext(), 0x1D);
        assert!(!h.capabilities.contains(Capabilities::CLIENT_MYSQL));
        assert_eq!(h.collation, 8);
        assert_eq!(h.status, 2);
        assert_eq!(h.auth_plugin.as_deref(), Some("mysql_native_password"));

        let mut out = BytesMut::new();
        h.encode(&mut out);
        assert_eq!(&out[..], &payload[..], "re-encoding must be byte-identical");
    }

    #[test]
    fn client_mysql_hides_ext_caps() {
        let mut payload = hex::decode(MARIADB_10_11_GREETING).unwrap();
        // Set bit 0 of the lower capability word (offset: 1 + 33 + 4 + 8 + 1).
        payload[47] |= 1;
        let h = Handshake::decode(&payload).unwrap();
        assert!(h.capabilities.contains(Capabilities::CLIENT_MYSQL));
        assert_eq!(h.capabilities.mariadb_ext(), 0);
    }

    #[test]
    fn every_prefix_errors_without_panicking() {
        let payload = hex::decode(MARIADB_10_11_GREETING).unwrap();
        let plugin_start = payload.len() - "mysql_native_password".len() - 1;
        for n in 0..payload.len() {
            let res = Handshake::decode(&payload[..n]);
            if n < plugin_start {
                assert!(res.is_err(), "prefix {n} decoded");
            } else {
                // The plugin name is optional / may lack its NUL.
                let h = res.unwrap();
                assert_eq!(h.scramble.len(), 20);
            }
        }
    }

    fn assert_round_trips(hex_payload: &str) -> Handshake {
        let payload = hex::decode(hex_payload).unwrap();
        let h = Handshake::decode(&payload).unwrap();
        let mut out = BytesMut::new();
        h.encode(&mut out);
        assert_eq!(Handshake::decode(&out).unwrap(), h);
        h
    }

    /// Fuzz finding: no PLUGIN_AUTH but an auth-data length of 0x28; decode read 32 bytes of
    /// part 2 (21-byte scramble) while encode writes length 0 and 13 bytes (20-byte scramble).
    #[test]
    fn fuzz_no_plugin_auth_ignores_auth_data_len() {
        let h = assert_round_trips(concat!(
            "0a22000a0000ffffff3b073fd7d7d7d700ff00ff0000002b0000ffffffffffffffffffffffffffffff",
            "ffffffffff280004ff00000000ff003dffff1a68686868689292929292929292686868"
        ));
        assert_eq!(h.scramble.len(), 20);
    }

    /// Fuzz finding: CLIENT_MYSQL, no PLUGIN_AUTH, auth-data length 0x22..: part 2 read past
    /// the 13 bytes that re-encoding produces.
    #[test]
    fn fuzz_no_plugin_auth_long_part2() {
        let h = assert_round_trips(concat!(
            "0a000000000a7e00ffffff0afc00ffffff0a000a00001f000000000000000a0000ffff01c4f8ffffff",
            "ffffffffff22222222222222222222222222222222222222222222222222222222222222222222",
            "222222fffffffffffffffffd00"
        ));
        assert_eq!(h.scramble.len(), 20);
    }

    #[test]
    fn rejects_err_packet_and_other_versions() {
        assert!(matches!(
            Handshake::decode(b"\xff\x10\x04Too many connections"),
            Err(ProtocolError::Malformed(_))
        ));
    }

    pub(crate) fn arb_caps() -> impl Strategy<Value = Capabilities> {
        (any::<u32>(), 0u32..64).prop_map(|(low, ext)| {
            let ext = if low & 1 == 0 { ext } else { 0 };
            Capabilities::from_parts(low, ext)
        })
    }

    fn arb_handshake() -> impl Strategy<Value = Handshake> {
        (
            "[ -~]{0,40}",
            any::<u32>(),
            proptest::collection::vec(1u8..=255, 20),
            arb_caps(),
            any::<u8>(),
            any::<u16>(),
            proptest::option::of("[a-z_]{0,30}"),
        )
            .prop_map(|(v, id, scramble, caps, coll, status, plugin)| {
                let mut caps = caps | Capabilities::SECURE_CONNECTION;
                if plugin.is_some() {
                    caps |= Capabilities::PLUGIN_AUTH;
                } else {
                    caps -= Capabilities::PLUGIN_AUTH;
                }
                Handshake {
                    protocol_version: 10,
                    server_version: v,
                    connection_id: id,
                    scramble,
                    capabilities: caps,
                    collation: coll,
                    status,
                    auth_plugin: plugin,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(h in arb_handshake()) {
            let mut out = BytesMut::new();
            h.encode(&mut out);
            prop_assert_eq!(Handshake::decode(&out).unwrap(), h);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Handshake::decode(&data);
            let mut with_version = vec![10u8];
            with_version.extend_from_slice(&data);
            if let Ok(h) = Handshake::decode(&with_version) {
                let mut out = BytesMut::new();
                h.encode(&mut out);
                prop_assert_eq!(Handshake::decode(&out).unwrap(), h);
            }
        }
    }
}
