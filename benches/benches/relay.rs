//! The relay's client-to-backend header walk, per MiB of traffic, for small commands (point
//! selects) and for large ones (bulk inserts).
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use doze_proxy::relay::walker::{CommandWalker, Scan};
use std::hint::black_box;

fn stream_of(payload_len: usize, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + 64);
    while out.len() < total {
        let len = payload_len;
        out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, 0]);
        out.push(0x17); // COM_STMT_EXECUTE
        out.resize(out.len() + len - 1, 0x41);
    }
    out
}

fn walk(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay_walk");
    for (name, payload) in [("point_select_40B", 40usize), ("insert_16KiB", 16 * 1024)] {
        let data = stream_of(payload, 1 << 20);
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
                        Scan::ChangeUser { .. } => unreachable!("no COM_CHANGE_USER in the stream"),
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
