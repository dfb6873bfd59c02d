#![no_main]

use bytes::BytesMut;
use doze_protocol::Handshake;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Handshake::decode(data) {
        let mut out = BytesMut::new();
        h.encode(&mut out);
        assert_eq!(Handshake::decode(&out).ok(), Some(h));
    }
});
