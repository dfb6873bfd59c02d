#![no_main]

use bytes::BytesMut;
use doze_protocol::{AuthMoreData, AuthSwitchRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = AuthSwitchRequest::decode(data) {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        assert_eq!(AuthSwitchRequest::decode(&out).ok(), Some(req));
    }
    if let Ok(more) = AuthMoreData::decode(data) {
        let mut out = BytesMut::new();
        more.encode(&mut out);
        assert_eq!(AuthMoreData::decode(&out).ok(), Some(more));
    }
});
