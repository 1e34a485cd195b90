//! Maglev table builds and lookups under criterion, after a report of the
//! tables' shares and disruption: `cargo bench -p rialto-benches --bench maglev`.
//!
//! The paper (Eisenbud et al., NSDI 2016, §5.3) reports 1.8 ms to build a
//! table of M = 65537 for 1000 backends.

use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group};
use rialto_rules::{
    Endpoint, Proto,
    maglev::{DEFAULT_TABLE_SIZE, MaglevHash, Table, WeightedBackend},
};

const COUNTS: [u32; 3] = [10, 100, 1000];

/// Cilium only accepts sizes from its list; 65521 is its nearest to 65537.
const CILIUM_SIZE: u32 = 65521;

/// `n` pods-like backends, 10.0.x.y:8080/TCP of weight 1.
fn backends(n: u32) -> Vec<WeightedBackend> {
    (0..n)
        .map(|i| WeightedBackend {
            endpoint: Endpoint {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                port: 8080,
                proto: Proto::Tcp,
            },
            weight: 1,
            scope: None,
        })
        .collect()
}

/// The fraction of slots whose backend changes when backend `removed` goes,
/// its own slots included (the floor is its share, 1/N).
fn moved_fraction(hash: MaglevHash, size: u32, bs: &[WeightedBackend], removed: usize) -> f64 {
    let before = Table::build(hash, size, bs).unwrap();
    let mut rest = bs.to_vec();
    rest.remove(removed);
    let after = Table::build(hash, size, &rest).unwrap();
    let moved = before
        .slots()
        .iter()
        .zip(after.slots())
        .filter(|&(&b, &a)| bs[b as usize].endpoint != rest[a as usize].endpoint)
        .count();
    moved as f64 / f64::from(size)
}

/// Median wall time of a table build, outside criterion, for the report.
fn median_build(hash: MaglevHash, size: u32, bs: &[WeightedBackend]) -> Duration {
    let mut times: Vec<Duration> = (0..31)
        .map(|_| {
            let start = Instant::now();
            black_box(Table::build(hash, size, black_box(bs)).unwrap());
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

fn report() {
    println!(
        "Maglev report (equal weights; moved = all slots changing backend, averaged over 5 removals)"
    );
    println!(
        "{:<7} {:>6} {:>5} {:>10} {:>17} {:>17} {:>9} {:>9}",
        "hash", "M", "N", "build", "min share", "max share", "moved", "floor 1/N"
    );
    for (hash, size) in [
        (MaglevHash::Rialto, DEFAULT_TABLE_SIZE),
        (MaglevHash::Cilium, CILIUM_SIZE),
    ] {
        for n in COUNTS {
            let bs = backends(n);
            let counts = Table::build(hash, size, &bs)
                .unwrap()
                .slot_counts()
                .to_vec();
            let ideal = f64::from(size) / f64::from(n);
            let share = |count: u32| {
                format!(
                    "{:.5} ({:.3}x)",
                    f64::from(count) / f64::from(size),
                    f64::from(count) / ideal
                )
            };
            let min = counts.iter().copied().min().unwrap();
            let max = counts.iter().copied().max().unwrap();
            let removals = 5;
            let moved: f64 = (0..removals)
                .map(|k| moved_fraction(hash, size, &bs, k * n as usize / removals))
                .sum::<f64>()
                / removals as f64;
            println!(
                "{:<7} {:>6} {:>5} {:>7.3} ms {:>17} {:>17} {:>9.5} {:>9.5}",
                hash.to_string(),
                size,
                n,
                median_build(hash, size, &bs).as_secs_f64() * 1e3,
                share(min),
                share(max),
                moved,
                1.0 / f64::from(n)
            );
        }
    }
    println!();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in COUNTS {
        let bs = backends(n);
        group.bench_with_input(BenchmarkId::new("rialto_65537", n), &bs, |b, bs| {
            b.iter(|| Table::build(MaglevHash::Rialto, DEFAULT_TABLE_SIZE, black_box(bs)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("cilium_65521", n), &bs, |b, bs| {
            b.iter(|| Table::build(MaglevHash::Cilium, CILIUM_SIZE, black_box(bs)).unwrap())
        });
    }
    group.finish();
}

/// A slot's backend for a flow hash: what every new flow pays, after the
/// flow hash itself.
fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_lookup");
    group.throughput(criterion::Throughput::Elements(1));
    for n in COUNTS {
        let table = Table::build(MaglevHash::Rialto, DEFAULT_TABLE_SIZE, &backends(n)).unwrap();
        let mut hash = 0u64;
        group.bench_with_input(BenchmarkId::new("rialto_65537", n), &table, |b, table| {
            b.iter(|| {
                // Hashes spread over the whole table, as flows' are.
                hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
                table.lookup(black_box(hash))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, build, lookup);

fn main() {
    report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
