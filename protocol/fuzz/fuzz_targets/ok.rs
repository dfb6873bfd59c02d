#![no_main]

use bytes::BytesMut;
use doze_protocol::{Capabilities, EofPacket, OkPacket};
use libfuzzer_sys::fuzz_target;

// The first 4 bytes choose the negotiated capabilities, the rest is the payload.
fuzz_target!(|data: &[u8]| {
    let Some((caps, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let caps = Capabilities::from_parts(u32::from_le_bytes(*caps), 0);
    if let Ok(ok) = OkPacket::decode(payload, caps) {
        let mut out = BytesMut::new();
        ok.encode(&mut out, caps);
        assert_eq!(OkPacket::decode(&out, caps).ok(), Some(ok));
    }
    if let Ok(eof) = EofPacket::decode(payload) {
        let mut out = BytesMut::new();
        eof.encode(&mut out);
        assert_eq!(EofPacket::decode(&out).ok(), Some(eof));
    }
});
