//! Criterion benches of the core's hashing and delta kernels, on deterministic VM-like data:
//! page (leaf) hashing and whole trees over 64 MiB for each algorithm, an incremental update of
//! 2% of the pages, and a delta's entry root and manifest codec. Commands: docs/BENCHMARKS.md.
//! Wall-clock times on a shared machine are noisy; compare algorithms within one run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vmattest_core::alg::{Digest, HashAlg, PAGE_SIZE, PageIndex};
use vmattest_core::chain::{
    BatchRef, ComponentKind, ComponentRoot, DeltaEntry, MAX_BATCH_PAGES, Manifest, ObjectId,
    PageChange, SeqNo, StateMeta, delta_digest,
};
use vmattest_core::record::UnixTime;
use vmattest_core::tree::{ImageTree, NoProgress, TreeParams};
use vmattest_testkit::images::vm_like;

const IMAGE: usize = 64 << 20;
/// Pages a delta changes: 2% of the image, as in the chain benchmark.
const CHANGED: usize = IMAGE / PAGE_SIZE / 50;
const ALGS: [HashAlg; 3] = [HashAlg::Blake3, HashAlg::Sha256, HashAlg::Sha384];

fn params(alg: HashAlg) -> TreeParams {
    let salt: &[u8] = if alg.takes_salt() { b"salt" } else { &[] };
    TreeParams::new(alg, salt).unwrap()
}

/// Every 50th page, spread over the image like a delta's changes.
fn changed_pages() -> Vec<PageIndex> {
    (0..CHANGED as u64).map(|i| PageIndex(i * 50 + 7)).collect()
}

fn trees(c: &mut Criterion) {
    let image = vm_like(IMAGE, 1);
    let mut g = c.benchmark_group("tree");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(IMAGE as u64));
    for alg in ALGS {
        let p = params(alg);
        let mut leaves = vec![0u8; IMAGE / PAGE_SIZE * alg.digest_len()];
        g.bench_function(BenchmarkId::new("leaves", alg), |b| {
            b.iter(|| p.hash_pages(PageIndex(0), black_box(&image), &mut leaves));
        });
        g.bench_function(BenchmarkId::new("build", alg), |b| {
            b.iter(|| ImageTree::build(&p, black_box(&image), &NoProgress).unwrap());
        });
    }
    g.finish();

    let changed = changed_pages();
    let mut g = c.benchmark_group("tree_update_2pct");
    g.sample_size(10)
        .throughput(Throughput::Bytes((CHANGED * PAGE_SIZE) as u64));
    for alg in ALGS {
        let p = params(alg);
        let mut tree = ImageTree::build(&p, &image, &NoProgress).unwrap();
        g.bench_function(BenchmarkId::from_parameter(alg), |b| {
            b.iter(|| tree.update_pages(black_box(&image), &changed).unwrap());
        });
    }
    g.finish();
}

fn digest(alg: HashAlg, i: u64) -> Digest {
    alg.hash(&[&i.to_le_bytes()])
}

/// A delta of [`CHANGED`] pages of one memory component, half XOR data, a quarter literal, a
/// quarter zero.
fn delta(alg: HashAlg) -> Manifest {
    let entries: Vec<DeltaEntry> = changed_pages()
        .into_iter()
        .enumerate()
        .map(|(i, page)| DeltaEntry {
            component: 0,
            page,
            change: match i % 4 {
                0 => PageChange::Zero,
                1 => PageChange::Literal,
                _ => PageChange::Data,
            },
            digest: digest(alg, page.0),
        })
        .collect();
    let stored = entries.iter().filter(|e| e.change.stored()).count();
    let batches = (0..stored.div_ceil(MAX_BATCH_PAGES as usize))
        .map(|b| BatchRef {
            object: ObjectId([b as u8; 32]),
            pages: (stored - b * MAX_BATCH_PAGES as usize).min(MAX_BATCH_PAGES as usize) as u32,
        })
        .collect();
    Manifest {
        meta: StateMeta {
            vm_id: "bench".into(),
            seq: SeqNo(1),
            time: UnixTime { secs: 1, nanos: 0 },
            params: params(alg),
            policy_id: "default".into(),
            version: "bench".into(),
        },
        components: vec![ComponentRoot {
            name: "ram".into(),
            kind: ComponentKind::Memory,
            len: IMAGE as u64,
            root: digest(alg, u64::MAX),
        }],
        entries,
        batches,
        anchor: false,
    }
}

fn deltas(c: &mut Criterion) {
    let mut g = c.benchmark_group("delta");
    g.sample_size(20)
        .throughput(Throughput::Elements(CHANGED as u64));
    for alg in [HashAlg::Blake3, HashAlg::Sha256] {
        let m = delta(alg);
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        g.bench_function(BenchmarkId::new("entry_root", alg), |b| {
            b.iter(|| delta_digest(alg, black_box(&m.entries)));
        });
        g.bench_function(BenchmarkId::new("manifest_encode", alg), |b| {
            b.iter(|| black_box(&m).encode());
        });
        g.bench_function(BenchmarkId::new("manifest_decode", alg), |b| {
            b.iter(|| Manifest::decode(black_box(&bytes)).unwrap());
        });
    }
    g.finish();
}

criterion_group!(benches, trees, deltas);
criterion_main!(benches);
