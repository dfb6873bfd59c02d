#![no_main]

use bytes::BytesMut;
use doze_protocol::{HandshakeResponse, SslRequest, is_ssl_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = is_ssl_request(data);
    if let Ok(req) = SslRequest::decode(data) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert_eq!(SslRequest::decode(&out).ok(), Some(req));
    }
    if let Ok(resp) = HandshakeResponse::decode(data) {
        let mut out = BytesMut::new();
        resp.encode(&mut out);
        assert_eq!(HandshakeResponse::decode(&out).ok(), Some(resp));
    }
});
