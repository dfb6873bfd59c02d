// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_change_user.html
// https://mariadb.com/kb/en/com_change_user/

use bytes::{BufMut, BytesMut};

use crate::buf::{Reader, put_nul_str, to_string};
use crate::capabilities::Capabilities;
use crate::command::COM_CHANGE_USER;
use crate::connect::{put_attributes, read_attributes};
use crate::error::{ProtocolError, Result};

/// COM_CHANGE_USER: re-authenticate on an open connection.
///
/// The client signs with the last scramble it saw (the proxy's), so the proxy must decode,
/// verify and re-sign it for the backend rather than pass it through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser {
    pub username: String,
    pub auth_response: Vec<u8>,
    /// May be empty.
    pub database: String,
    /// Present when bytes remain after the database.
    pub collation: Option<u16>,
    /// When `PLUGIN_AUTH` and bytes remain.
    pub auth_plugin: Option<String>,
    /// When `CONNECT_ATTRS` and bytes remain.
    pub attributes: Option<Vec<(String, String)>>,
}

impl ChangeUser {
    /// Decodes the payload (starting with `0x11`) under the capabilities negotiated at login.
    /// A database missing its NUL at the end of the packet is accepted; a lone byte where the
    /// 2-byte collation belongs is `Truncated`.
    pub fn decode(payload: &[u8], caps: Capabilities) -> Result<Self> {
        let mut r = Reader::new(payload);
        if r.u8("command")? != COM_CHANGE_USER {
            return Err(ProtocolError::Malformed(
                "COM_CHANGE_USER must start with 0x11",
            ));
        }
        let username = r.nul_str("user name")?; // string<NUL>
        let auth_response = if caps.contains(Capabilities::SECURE_CONNECTION) {
            let len = r.u8("auth response length")?; // int<1>
            r.bytes(usize::from(len), "auth response")?.to_vec() // string[len]
        } else {
            r.nul_bytes("auth response")?.to_vec() // string<NUL>
        };
        let database = to_string(r.nul_bytes_or_rest(), "database")?; // string<NUL>
        let collation = if r.is_empty() {
            None
        } else {
            Some(r.u16_le("character set")?) // int<2>
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
            username,
            auth_response,
            database,
            collation,
            auth_plugin,
            attributes,
        })
    }

    /// Encodes the payload. A later optional field forces earlier absent ones to be written
    /// (collation as 0, plugin as empty). With `SECURE_CONNECTION` an auth response over 255
    /// bytes is cut to 255; without it, it must not contain NUL.
    pub fn encode(&self, out: &mut BytesMut, caps: Capabilities) {
        out.put_u8(COM_CHANGE_USER);
        put_nul_str(out, self.username.as_bytes());
        if caps.contains(Capabilities::SECURE_CONNECTION) {
            let auth = self.auth_response.get(..255).unwrap_or(&self.auth_response);
            out.put_u8(auth.len() as u8);
            out.put_slice(auth);
        } else {
            put_nul_str(out, &self.auth_response);
        }
        put_nul_str(out, self.database.as_bytes());

        let want_attrs = caps.contains(Capabilities::CONNECT_ATTRS) && self.attributes.is_some();
        let want_plugin =
            caps.contains(Capabilities::PLUGIN_AUTH) && (self.auth_plugin.is_some() || want_attrs);
        if self.collation.is_some() || want_plugin || want_attrs {
            out.put_u16_le(self.collation.unwrap_or(0));
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
    use proptest::prelude::*;

    /// COM_CHANGE_USER from mysql-connector-python 9.x (pure) to MariaDB 10.11, frame header
    /// `c5 00 00 00`. Login capabilities were `0x003BA20D` (CLIENT_MYSQL set).
    const CONNECTOR_PYTHON_CHANGE_USER: &str = concat!(
        "117500147ead6b0154fadfb989eddd21c3f837886945567a6d7973716c002d006d7973716c5f6e617469",
        "76655f70617373776f7264008e045f706964053133343032095f706c6174666f726d067838365f36340c",
        "5f736f757263655f686f737402766d0c5f636c69656e745f6e616d65166d7973716c2d636f6e6e6563",
        "746f722d707974686f6e0f5f636c69656e745f6c6963656e73650747504c2d322e300f5f636c69656e",
        "745f76657273696f6e0732362e31302e30035f6f730944656269616e2d3132"
    );

    fn login_caps() -> Capabilities {
        Capabilities::from_parts(0x003B_A20D, 0)
    }

    #[test]
    fn decodes_real_change_user() {
        let payload = hex::decode(CONNECTOR_PYTHON_CHANGE_USER).unwrap();
        let cu = ChangeUser::decode(&payload, login_caps()).unwrap();
        assert_eq!(cu.username, "u");
        assert_eq!(cu.auth_response.len(), 20);
        assert_eq!(cu.database, "mysql");
        assert_eq!(cu.collation, Some(45));
        assert_eq!(cu.auth_plugin.as_deref(), Some("mysql_native_password"));
        let attrs = cu.attributes.clone().unwrap();
        assert!(attrs.contains(&("_client_name".into(), "mysql-connector-python".into())));

        let mut out = BytesMut::new();
        cu.encode(&mut out, login_caps());
        assert_eq!(&out[..], &payload[..], "re-encoding must be byte-identical");
    }

    #[test]
    fn every_prefix_never_panics() {
        let payload = hex::decode(CONNECTOR_PYTHON_CHANGE_USER).unwrap();
        let auth_end = 1 + 2 + 21;
        let db_end = auth_end + 6;
        for n in 0..payload.len() {
            let res = ChangeUser::decode(&payload[..n], login_caps());
            if n < auth_end {
                assert!(res.is_err(), "prefix {n}");
            } else if n <= db_end {
                assert_eq!(res.unwrap().collation, None);
            } else if n == db_end + 1 {
                assert!(matches!(res, Err(ProtocolError::Truncated(_))));
            } else if n == db_end + 2 {
                assert_eq!(res.unwrap().collation, Some(45));
            }
        }
        assert!(ChangeUser::decode(b"\x03select 1", login_caps()).is_err());
    }

    #[test]
    fn without_secure_connection_auth_is_nul_terminated() {
        let caps = Capabilities::PROTOCOL_41;
        let payload = b"\x11bob\0tok\0db\0";
        let cu = ChangeUser::decode(payload, caps).unwrap();
        assert_eq!(cu.auth_response, b"tok");
        assert_eq!(cu.database, "db");
        let mut out = BytesMut::new();
        cu.encode(&mut out, caps);
        assert_eq!(&out[..], payload);
    }

    fn arb_change_user() -> impl Strategy<Value = (ChangeUser, Capabilities)> {
        (
            crate::connect::tests_support::arb_caps(),
            "[a-zA-Z0-9_.]{0,40}",
            proptest::collection::vec(any::<u8>(), 0..255),
            "[a-z0-9_]{0,20}",
            proptest::option::of(any::<u16>()),
            proptest::option::of("[a-z_]{0,30}"),
            proptest::option::of(proptest::collection::vec(
                ("\\PC{0,10}", "\\PC{0,20}"),
                0..8,
            )),
        )
            .prop_map(|(mut caps, user, mut auth, db, coll, plugin, attrs)| {
                caps.set(Capabilities::PLUGIN_AUTH, plugin.is_some());
                caps.set(Capabilities::CONNECT_ATTRS, attrs.is_some());
                let coll = if plugin.is_some() || attrs.is_some() {
                    Some(coll.unwrap_or(33))
                } else {
                    coll
                };
                if !caps.contains(Capabilities::SECURE_CONNECTION) {
                    auth.retain(|&b| b != 0);
                }
                let cu = ChangeUser {
                    username: user,
                    auth_response: auth,
                    database: db,
                    collation: coll,
                    auth_plugin: plugin,
                    attributes: attrs,
                };
                (cu, caps)
            })
    }

    proptest! {
        #[test]
        fn round_trip((cu, caps) in arb_change_user()) {
            let mut out = BytesMut::new();
            cu.encode(&mut out, caps);
            prop_assert_eq!(ChangeUser::decode(&out, caps).unwrap(), cu);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            caps in crate::connect::tests_support::arb_caps(),
        ) {
            let mut payload = vec![COM_CHANGE_USER];
            payload.extend_from_slice(&data);
            let _ = ChangeUser::decode(&data, caps);
            if let Ok(cu) = ChangeUser::decode(&payload, caps) {
                let mut out = BytesMut::new();
                cu.encode(&mut out, caps);
                prop_assert_eq!(ChangeUser::decode(&out, caps).unwrap(), cu);
            }
        }
    }
}
