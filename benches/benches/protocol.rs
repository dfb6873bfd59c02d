//! Connection-phase packets, native-password math and packet framing.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use doze_protocol::native_password::{
    scramble_response, sign_with_hash1, stored_hash, verify_and_recover,
};
use doze_protocol::{Capabilities, Handshake, HandshakeResponse, Packet, PacketCodec};
use std::hint::black_box;
use tokio_util::codec::{Decoder, Encoder};

fn greeting() -> Handshake {
    Handshake {
        protocol_version: 10,
        server_version: "5.5.5-10.11.19-MariaDB-0+deb12u1".into(),
        connection_id: 42,
        scramble: b"abcdefghijklmnopqrst".to_vec(),
        capabilities: Capabilities::from_parts(0x81FF_F7FE, 0x1D),
        collation: 45,
        status: 2,
        auth_plugin: Some("mysql_native_password".into()),
    }
}

fn login() -> HandshakeResponse {
    HandshakeResponse {
        capabilities: Capabilities::from_parts(0x81BE_A20E, 0x1D) | Capabilities::CONNECT_ATTRS,
        max_packet: 16 << 20,
        collation: 45,
        username: "shop.app".into(),
        auth_response: scramble_response(b"pw", b"abcdefghijklmnopqrst").to_vec(),
        database: Some("orders".into()),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: Some(vec![
            ("_client_name".into(), "libmariadb".into()),
            ("_client_version".into(), "3.3.20".into()),
            ("_os".into(), "Linux".into()),
            ("_pid".into(), "12345".into()),
            ("_platform".into(), "x86_64".into()),
            ("_server_host".into(), "127.0.0.1".into()),
            ("program_name".into(), "mariadb".into()),
        ]),
    }
}

fn connection_phase(c: &mut Criterion) {
    let mut encoded = BytesMut::new();
    greeting().encode(&mut encoded);
    c.bench_function("handshake/encode", |b| {
        let hs = greeting();
        b.iter(|| {
            let mut out = BytesMut::with_capacity(128);
            black_box(&hs).encode(&mut out);
            out
        })
    });
    c.bench_function("handshake/decode", |b| {
        b.iter(|| Handshake::decode(black_box(&encoded)).unwrap())
    });
    let mut response = BytesMut::new();
    login().encode(&mut response);
    c.bench_function("handshake_response41/decode", |b| {
        b.iter(|| HandshakeResponse::decode(black_box(&response)).unwrap())
    });
}

fn native_password(c: &mut Criterion) {
    let stored = stored_hash(b"s3cret");
    let token = scramble_response(b"s3cret", b"abcdefghijklmnopqrst");
    c.bench_function("native_password/verify_recover_resign", |b| {
        b.iter(|| {
            let h1 =
                verify_and_recover(black_box(&token), b"abcdefghijklmnopqrst", &stored).unwrap();
            sign_with_hash1(&h1, b"ABCDEFGHIJKLMNOPQRST", &stored)
        })
    });
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (name, size, count) in [
        ("small_64B", 64usize, 4096usize),
        ("large_17MiB", (16 << 20) + 1024, 2),
    ] {
        let mut stream = BytesMut::new();
        let mut enc = PacketCodec::new(64 << 20);
        for i in 0..count {
            enc.encode(Packet::new(i as u8, vec![0x03; size]), &mut stream)
                .unwrap();
        }
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                let mut buf = stream.clone();
                let mut dec = PacketCodec::new(64 << 20);
                let mut n = 0;
                while let Some(p) = dec.decode(&mut buf).unwrap() {
                    n += p.payload.len();
                }
                n
            })
        });
        group.bench_function(format!("encode/{name}"), |b| {
            let payload = bytes::Bytes::from(vec![0x03; size]);
            b.iter(|| {
                let mut out = BytesMut::with_capacity(stream.len());
                let mut enc = PacketCodec::new(64 << 20);
                for i in 0..count {
                    enc.encode(Packet::new(i as u8, payload.clone()), &mut out)
                        .unwrap();
                }
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, connection_phase, native_password, codec);
criterion_main!(benches);
