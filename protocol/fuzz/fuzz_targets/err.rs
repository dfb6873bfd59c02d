#![no_main]

use bytes::BytesMut;
use doze_protocol::ErrPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut err) = ErrPacket::decode(data) {
        let mut out = BytesMut::new();
        err.encode(&mut out);
        // Encoding always writes a SQL state; a missing one becomes HY000.
        err.sql_state.get_or_insert(*b"HY000");
        assert_eq!(ErrPacket::decode(&out).ok(), Some(err));
    }
});
