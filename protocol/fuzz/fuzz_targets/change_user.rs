#![no_main]

use bytes::BytesMut;
use doze_protocol::{Capabilities, ChangeUser};
use libfuzzer_sys::fuzz_target;

// The first 4 bytes choose the negotiated capabilities, the rest is the payload.
fuzz_target!(|data: &[u8]| {
    let Some((caps, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    let caps = Capabilities::from_parts(u32::from_le_bytes(*caps), 0);
    if let Ok(cu) = ChangeUser::decode(payload, caps) {
        let mut out = BytesMut::new();
        cu.encode(&mut out, caps);
        assert_eq!(ChangeUser::decode(&out, caps).ok(), Some(cu));
    }
});
