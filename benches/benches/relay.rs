//! The relay's client-to-backend header walk, per MiB of traffic, for small commands (point
//! selects) and for large ones (bulk inserts).
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use doze_proxy::relay::walker::{CommandWalker, Scan};
use std::hint::black_box;

/// Commands of `payload_len` bytes starting with `command` (0x17 COM_STMT_EXECUTE, 0x03
/// COM_QUERY: short queries are also read for a leading KILL).
fn stream_of(command: u8, payload_len: usize, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + 64);
    while out.len() < total {
        let len = payload_len;
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, 0]);
        out.push(command);
        out.resize(out.len() + len - 1, 0x41);
    }
    out
}

fn walk(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_walk");
    for (name, command, payload) in [
        ("point_select_40B", 0x17, 40usize),
        ("text_select_40B", 0x03, 40),
        ("insert_16KiB", 0x17, 16 * 1024),
    ] {
        let data = stream_of(command, payload, 1 << 20);
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(format!("{name}_per_MiB"), |b| {
            b.iter(|| {
                let mut walker = CommandWalker::new();
                // Reads of 16 KiB, as the relay's buffer delivers them.
                let mut forwarded = 0;
                let mut pos = 0;
                while pos < data.len() {
                    let end = (pos + 16 * 1024).min(data.len());
                    match walker.scan(black_box(&data[pos..end])) {
                        Scan::Forward(n) => {
                            forwarded += n;
                            pos += n.max(1);
                        }
                        Scan::Intercept { .. } => {
                            unreachable!("no command doze handles itself in the stream")
                        }
                    }
                }
                forwarded
            })
        });
    }
    group.finish();
}

criterion_group!(benches, walk);
criterion_main!(benches);
