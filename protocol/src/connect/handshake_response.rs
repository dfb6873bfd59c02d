// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_response.html
// https://mariadb.com/kb/en/connection/#handshake-response-packet

use bytes::{BufMut, BytesMut};

use crate::buf::{Reader, put_lenenc_bytes, put_nul_str, to_string};
use crate::capabilities::Capabilities;
use crate::connect::attributes::{put_attributes, read_attributes};
use crate::connect::ssl_request::{SslRequest, put_fixed_header};
use crate::error::{ProtocolError, Result};

/// HandshakeResponse41: the client's login (user, auth token, database, plugin, attributes).
///
/// The proxy reads it to route and authenticate the client, then writes a new one for the
/// backend; decoding is lenient where real clients cut the tail short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// Includes MariaDB extended bits from bytes 28..32 when `CLIENT_MYSQL` is clear.
    pub capabilities: Capabilities,
    pub max_packet: u32,
    pub collation: u8,
    pub username: String,
    pub auth_response: Vec<u8>,
    /// When `CONNECT_WITH_DB`; `None` if the packet ends before the field.
    pub database: Option<String>,
    /// When `PLUGIN_AUTH`; `None` if the packet ends before the field.
    pub auth_plugin: Option<String>,
    /// When `CONNECT_ATTRS`; `None` if the packet ends before the field.
    pub attributes: Option<Vec<(String, String)>>,
}

impl HandshakeResponse {
    /// Decodes a HandshakeResponse41.
    ///
    /// Tolerated, as servers do: a packet ending after any complete field (missing auth
    /// response means empty, missing database/plugin/attributes mean `None`), and a missing
    /// NUL after the database or plugin name at the end of the packet. Rejected: the pre-4.1
    /// HandshakeResponse320 (no `PROTOCOL_41`), a user name without NUL, lengths that run past
    /// the end, non-UTF-8 user/database/plugin names.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let fixed = SslRequest::decode(payload)?; // int<4> caps, int<4> max, int<1>, [19], int<4>
        let caps = fixed.capabilities;
        if !caps.contains(Capabilities::PROTOCOL_41) {
            return Err(ProtocolError::Malformed(
                "HandshakeResponse320 (client without PROTOCOL_41) is not supported",
            ));
        }
        let mut r = Reader::new(payload.get(32..).unwrap_or_default());
        let username = r.nul_str("user name")?; // string<NUL>

        let auth_response = if r.is_empty() {
            Vec::new()
        } else if caps.contains(Capabilities::PLUGIN_AUTH_LENENC_CLIENT_DATA) {
            r.lenenc_bytes("auth response")?.to_vec() // string<lenenc>
        } else if caps.contains(Capabilities::SECURE_CONNECTION) {
            let len = r.u8("auth response length")?; // int<1>
            r.bytes(usize::from(len), "auth response")?.to_vec() // string[len]
        } else {
            r.nul_bytes("auth response")?.to_vec() // string<NUL>
        };

        let database = if caps.contains(Capabilities::CONNECT_WITH_DB) && !r.is_empty() {
            Some(to_string(r.nul_bytes_or_rest(), "database")?) // string<NUL>
        } else {
            None
        };
        let auth_plugin = if caps.contains(Capabilities::PLUGIN_AUTH) && !r.is_empty() {
            Some(to_string(r.nul_bytes_or_rest(), "auth plugin name")?) // string<NUL>
        } else {
            None
        };
        let attributes = if caps.contains(Capabilities::CONNECT_ATTRS) && !r.is_empty() {
            Some(read_attributes(&mut r)?) // int<lenenc> + pairs of string<lenenc>
        } else {
            None
        };

        Ok(Self {
            capabilities: caps,
            max_packet: fixed.max_packet,
            collation: fixed.collation,
            username,
            auth_response,
            database,
            auth_plugin,
            attributes,
        })
    }

    /// Encodes the payload. Fields whose capability is clear are skipped. An absent optional
    /// field followed by a present one is written empty (the wire has no "absent" in the
    /// middle). With only `SECURE_CONNECTION`, an auth response over 255 bytes is cut to 255;
    /// with neither length flag, it must not contain NUL.
    pub fn encode(&self, out: &mut BytesMut) {
        let caps = self.capabilities;
        put_fixed_header(out, caps, self.max_packet, self.collation);
        put_nul_str(out, self.username.as_bytes());
        if caps.contains(Capabilities::PLUGIN_AUTH_LENENC_CLIENT_DATA) {
            put_lenenc_bytes(out, &self.auth_response);
        } else if caps.contains(Capabilities::SECURE_CONNECTION) {
            let auth = self.auth_response.get(..255).unwrap_or(&self.auth_response);
            out.put_u8(auth.len() as u8);
            out.put_slice(auth);
        } else {
            put_nul_str(out, &self.auth_response);
        }

        let want_attrs = caps.contains(Capabilities::CONNECT_ATTRS) && self.attributes.is_some();
        let want_plugin =
            caps.contains(Capabilities::PLUGIN_AUTH) && (self.auth_plugin.is_some() || want_attrs);
        if caps.contains(Capabilities::CONNECT_WITH_DB)
            && (self.database.is_some() || want_plugin || want_attrs)
        {
            put_nul_str(out, self.database.as_deref().unwrap_or_default());
        }
        if want_plugin {
            put_nul_str(out, self.auth_plugin.as_deref().unwrap_or_default());
        }
        if want_attrs && let Some(attrs) = &self.attributes {
            put_attributes(out, attrs);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::connect::handshake::tests::arb_caps;
    use proptest::prelude::*;

    /// `mariadb -h127.0.0.1 -uu -ppw -D mysql` (libmariadb 3.3.20) logging in to the server
    /// whose greeting is `MARIADB_10_11_GREETING` (frame header `d2 00 00 01`).
    pub(crate) const LIBMARIADB_RESPONSE: &str = concat!(
        "8ca2bf000000100021000000000000000000000000000000000000001d000000750014068e35edcade8eb8",
        "eabb6682d45444f5e5ec39866d7973716c006d7973716c5f6e61746976655f70617373776f7264007e03",
        "5f6f73054c696e75780c5f636c69656e745f6e616d650a6c69626d617269616462045f70696404363735",
        "370f5f636c69656e745f76657273696f6e06332e332e3230095f706c6174666f726d067838365f36340c",
        "70726f6772616d5f6e616d65056d7973716c0c5f7365727665725f686f7374093132372e302e302e31"
    );

    #[test]
    fn decodes_real_libmariadb_response() {
        let payload = hex::decode(LIBMARIADB_RESPONSE).unwrap();
        let resp = HandshakeResponse::decode(&payload).unwrap();
        assert_eq!(resp.capabilities.low(), 0x00BF_A28C);
        assert_eq!(resp.capabilities.mariadb_ext(), 0x1D);
        assert!(
            resp.capabilities
                .contains(Capabilities::PLUGIN_AUTH_LENENC_CLIENT_DATA)
        );
        assert_eq!(resp.max_packet, 1 << 20);
        assert_eq!(resp.collation, 0x21);
        assert_eq!(resp.username, "u");
        assert_eq!(resp.auth_response.len(), 20);
        assert_eq!(resp.database.as_deref(), Some("mysql"));
        assert_eq!(resp.auth_plugin.as_deref(), Some("mysql_native_password"));
        let attrs = resp.attributes.clone().unwrap();
        assert_eq!(attrs.len(), 7);
        assert_eq!(attrs[0], ("_os".into(), "Linux".into()));
        assert!(attrs.contains(&("program_name".into(), "mysql".into())));

        let mut out = BytesMut::new();
        resp.encode(&mut out);
        assert_eq!(&out[..], &payload[..], "re-encoding must be byte-identical");
    }

    /// mysql-connector-python 9.x (pure Python) login to MariaDB 10.11: `CLIENT_MYSQL` set,
    /// so the extended-capability bytes are zero, and an empty database (frame `dd 00 00 01`).
    const CONNECTOR_PYTHON_RESPONSE: &str = concat!(
        "0da23b00000000402d00000000000000000000000000000000000000000000007500147ead6b0154fadf",
        "b989eddd21c3f837886945567a006d7973716c5f6e61746976655f70617373776f7264008e045f706964",
        "053133343032095f706c6174666f726d067838365f36340c5f736f757263655f686f737402766d0c5f63",
        "6c69656e745f6e616d65166d7973716c2d636f6e6e6563746f722d707974686f6e0f5f636c69656e745f",
        "6c6963656e73650747504c2d322e300f5f636c69656e745f76657273696f6e0732362e31302e30035f6f",
        "730944656269616e2d3132"
    );

    #[test]
    fn decodes_real_connector_python_response() {
        let payload = hex::decode(CONNECTOR_PYTHON_RESPONSE).unwrap();
        let resp = HandshakeResponse::decode(&payload).unwrap();
        assert!(resp.capabilities.contains(Capabilities::CLIENT_MYSQL));
        assert_eq!(resp.capabilities.mariadb_ext(), 0);
        assert_eq!(resp.max_packet, 1 << 30);
        assert_eq!(resp.collation, 45);
        assert_eq!(resp.username, "u");
        assert_eq!(resp.database.as_deref(), Some(""));
        assert_eq!(resp.auth_plugin.as_deref(), Some("mysql_native_password"));
        assert!(
            resp.attributes
                .as_ref()
                .unwrap()
                .contains(&("_client_name".into(), "mysql-connector-python".into()))
        );
        let mut out = BytesMut::new();
        resp.encode(&mut out);
        assert_eq!(&out[..], &payload[..]);
    }

    #[test]
    fn ext_caps_ignored_when_client_mysql_set() {
        let mut payload = hex::decode(CONNECTOR_PYTHON_RESPONSE).unwrap();
        payload[28] = 0x1D;
        let resp = HandshakeResponse::decode(&payload).unwrap();
        assert_eq!(resp.capabilities.mariadb_ext(), 0);
    }

    #[test]
    fn tolerates_plugin_without_nul_at_end() {
        let caps = Capabilities::PROTOCOL_41
            | Capabilities::SECURE_CONNECTION
            | Capabilities::CONNECT_WITH_DB
            | Capabilities::PLUGIN_AUTH;
        let mut out = BytesMut::new();
        HandshakeResponse {
            capabilities: caps,
            max_packet: 1 << 24,
            collation: 33,
            username: "bob".into(),
            auth_response: vec![1; 20],
            database: Some("db".into()),
            auth_plugin: Some("mysql_native_password".into()),
            attributes: None,
        }
        .encode(&mut out);
        out.truncate(out.len() - 1); // drop the plugin name's NUL
        let resp = HandshakeResponse::decode(&out).unwrap();
        assert_eq!(resp.auth_plugin.as_deref(), Some("mysql_native_password"));
    }

    #[test]
    fn every_prefix_never_panics() {
        let payload = hex::decode(LIBMARIADB_RESPONSE).unwrap();
        let user_end = 32 + 2; // "u\0"
        let auth_end = user_end + 21;
        for n in 0..payload.len() {
            let res = HandshakeResponse::decode(&payload[..n]);
            match n {
                _ if n < user_end => assert!(res.is_err(), "prefix {n}"),
                _ if n == user_end => assert!(res.unwrap().auth_response.is_empty()),
                _ if n < auth_end => assert!(res.is_err(), "prefix {n}"),
                _ if n == auth_end => assert_eq!(res.unwrap().database, None),
                _ => {
                    // Inside the attributes block the length runs past the end.
                    if let Ok(r) = res {
                        assert!(r.attributes.is_none() || n == payload.len());
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_pre_41_clients() {
        let mut payload = hex::decode(LIBMARIADB_RESPONSE).unwrap();
        payload[1] &= !0x02; // clear PROTOCOL_41 (bit 9)
        assert!(matches!(
            HandshakeResponse::decode(&payload),
            Err(ProtocolError::Malformed(_))
        ));
    }

    fn arb_response() -> impl Strategy<Value = HandshakeResponse> {
        (
            arb_caps(),
            any::<u32>(),
            any::<u8>(),
            "[a-zA-Z0-9_.]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::option::of("[a-z0-9_]{0,20}"),
            proptest::option::of("[a-z_]{1,30}"),
            proptest::option::of(proptest::collection::vec(
                ("\\PC{0,10}", "\\PC{0,20}"),
                0..8,
            )),
        )
            .prop_map(|(caps, max, coll, user, mut auth, db, plugin, attrs)| {
                let mut caps = caps | Capabilities::PROTOCOL_41;
                caps.set(Capabilities::CONNECT_WITH_DB, db.is_some());
                caps.set(Capabilities::PLUGIN_AUTH, plugin.is_some());
                caps.set(Capabilities::CONNECT_ATTRS, attrs.is_some());
                if !caps.contains(Capabilities::PLUGIN_AUTH_LENENC_CLIENT_DATA) {
                    if caps.contains(Capabilities::SECURE_CONNECTION) {
                        auth.truncate(255);
                    } else {
                        auth.retain(|&b| b != 0);
                    }
                }
                // The wire cannot tell an empty auth response at the end of the packet from
                // an absent one; both decode as empty, so keep the generated value honest.
                HandshakeResponse {
                    capabilities: caps,
                    max_packet: max,
                    collation: coll,
                    username: user,
                    auth_response: auth,
                    database: db,
                    auth_plugin: plugin,
                    attributes: attrs,
                }
            })
    }

    proptest! {
        #[test]
        fn round_trip(resp in arb_response()) {
            let mut out = BytesMut::new();
            resp.encode(&mut out);
            prop_assert_eq!(HandshakeResponse::decode(&out).unwrap(), resp);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = HandshakeResponse::decode(&data);
            // Also behind a plausible fixed header, so the variable part gets exercised.
            let mut payload = hex::decode(LIBMARIADB_RESPONSE).unwrap();
            payload.truncate(32);
            payload.extend_from_slice(&data);
            if let Ok(r) = HandshakeResponse::decode(&payload) {
                let mut out = BytesMut::new();
                r.encode(&mut out);
                prop_assert_eq!(HandshakeResponse::decode(&out).unwrap(), r);
            }
        }
    }
}
