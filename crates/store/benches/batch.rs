//! Criterion benches of the page batch codec: one full batch (256 pages, 1 MiB) of XOR deltas
//! as a take writes them, encoded (zstd level 3) and decoded, plain and sealed
//! (ChaCha20-Poly1305). Commands: docs/BENCHMARKS.md. Compare plain with sealed within a run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vmattest_core::alg::PAGE_SIZE;
use vmattest_store::{BATCH_PAGES, BatchCodec, StoreSecret};
use vmattest_testkit::images::vm_like;

/// XOR deltas of pages a guest rewrote: two VM-like images that differ in part of each page.
fn deltas() -> Vec<u8> {
    let len = BATCH_PAGES * PAGE_SIZE;
    let old = vm_like(len, 1);
    let mut new = old.clone();
    let changed = vm_like(len, 2);
    for (page, chunk) in new.chunks_mut(PAGE_SIZE).enumerate() {
        // A few hundred bytes to a whole page changed, varying by page.
        let n = 256 * (1 + page % 16);
        chunk[..n].copy_from_slice(&changed[page * PAGE_SIZE..page * PAGE_SIZE + n]);
    }
    old.iter().zip(&new).map(|(a, b)| a ^ b).collect()
}

fn codec(c: &mut Criterion) {
    let raw = deltas();
    let dir = tempfile::tempdir().unwrap();
    let secret = StoreSecret::generate(&dir.path().join("secret")).unwrap();
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.measurement_time(Duration::from_secs(5));
    for sealed in [false, true] {
        let name = if sealed { "sealed" } else { "plain" };
        let mut codec = if sealed {
            BatchCodec::new(Some((&secret, b"baseline root".as_slice(), "vm"))).unwrap()
        } else {
            BatchCodec::new(None).unwrap()
        };
        let encoded = codec.encode(&raw).unwrap();
        g.bench_with_input(BenchmarkId::new("encode", name), &raw, |b, raw| {
            b.iter(|| codec.encode(black_box(raw)).unwrap());
        });
        g.bench_with_input(BenchmarkId::new("decode", name), &encoded, |b, bytes| {
            b.iter(|| codec.decode(black_box(bytes), raw.len()).unwrap().len());
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
