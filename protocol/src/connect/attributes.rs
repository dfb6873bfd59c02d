// https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_connection_phase_packets_protocol_handshake_response.html
// https://mariadb.com/kb/en/connection/#handshake-response-packet

//! Connection attributes, shared by HandshakeResponse41 and COM_CHANGE_USER.

use bytes::BytesMut;

use crate::buf::{Reader, put_lenenc_bytes};
use crate::error::{ProtocolError, Result};

/// More pairs than any real client sends (libmariadb sends about ten); a limit so a peer
/// cannot make us build a huge vector of tiny strings. The byte size is bounded by the packet.
pub const MAX_CONNECT_ATTRS: usize = 1024;

/// Reads `int<lenenc>` total length, then that many bytes of `string<lenenc>` key/value pairs.
/// Keys and values are decoded lossily: they are informational (program name, OS) and
/// clients may send them in their own character set.
pub(crate) fn read_attributes(r: &mut Reader<'_>) -> Result<Vec<(String, String)>> {
    let block = r.lenenc_bytes("connection attributes")?;
    let mut r = Reader::new(block);
    let mut attrs = Vec::new();
    while !r.is_empty() {
        if attrs.len() >= MAX_CONNECT_ATTRS {
            return Err(ProtocolError::Malformed("too many connection attributes"));
        }
        let key = r.lenenc_bytes("connection attribute key")?; // string<lenenc>
        let value = r.lenenc_bytes("connection attribute value")?; // string<lenenc>
        attrs.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(attrs)
}

/// Writes the attributes block read by [`read_attributes`].
pub(crate) fn put_attributes(out: &mut BytesMut, attrs: &[(String, String)]) {
    let mut block = BytesMut::new();
    for (k, v) in attrs {
        put_lenenc_bytes(&mut block, k.as_bytes());
        put_lenenc_bytes(&mut block, v.as_bytes());
    }
    put_lenenc_bytes(out, &block);
}
