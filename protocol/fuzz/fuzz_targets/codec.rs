#![no_main]

use bytes::BytesMut;
use doze_protocol::PacketCodec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

// The first byte picks the chunk size; the rest is fed to the decoder in chunks. Every
// decoded packet must re-encode and decode to itself.
fuzz_target!(|data: &[u8]| {
    let Some((&chunk, wire)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut codec = PacketCodec::new(1 << 16);
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    'feed: for piece in wire.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(p)) => packets.push(p),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    for p in packets {
        let mut out = BytesMut::new();
        let mut fresh = PacketCodec::new(1 << 16);
        if fresh.encode(p.clone(), &mut out).is_ok() {
            assert_eq!(fresh.decode(&mut out).ok().flatten(), Some(p));
        }
    }
});
