//! ns/packet of the pure pipeline, without I/O: `cargo bench -p rialto-benches`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use rialto::pipeline::{Mode, Pipeline, Verdict};

/// A 64-byte UDP frame (without FCS) to the VIP, as testpmd's txonly sends.
fn udp_64() -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 100, 1], 64)
        .udp(9, 7);
    let mut frame = Vec::new();
    builder.write(&mut frame, &[0; 18]).unwrap();
    assert_eq!(frame.len(), 60);
    frame
}

fn reflect(c: &mut Criterion) {
    let mut pipeline = Pipeline::Reflect;
    let mut frame = udp_64();
    let mut group = c.benchmark_group("reflect");
    group.throughput(Throughput::Elements(1));
    group.bench_function("udp4_64B", |b| {
        b.iter(|| {
            let verdict = pipeline.process(std::hint::black_box(&mut frame), 0);
            assert_eq!(verdict, Verdict::Tx);
        })
    });
    group.finish();
}

criterion_group!(benches, reflect);
criterion_main!(benches);
