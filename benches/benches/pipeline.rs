//! ns/packet of the pure pipeline, without I/O, and of the flow table:
//! `cargo bench -p rialto-benches --bench pipeline`.
//!
//! - reflect: the bare baseline (swap and send back);
//! - balance forward: a packet of a live flow, client -> VIP, rewritten and
//!   encapsulated toward the backend's cluster;
//! - balance return: a packet of a live flow out of the tunnel, decapsulated,
//!   reverse-NATed, to the client;
//!
//! each at 1 thousand and 1 million live flows: by the fast path and by the
//! general path alone (`_general`), one frame per call; and by the fast
//! path 64 frames per call (`_batch`: the index entry and slot of each
//! frame's flow read ahead, some frames before its turn; `_batch_in_turn`:
//! not). Each case cycles over a packet of every live flow, in an order
//! unrelated to the flows' slots and SNAT ports: a million flows' table
//! takes some 60 MB, more than the caches hold, so most of their packets
//! miss, as a large table's do live. The frames themselves lie in memory
//! in the order they are sent, as frames in the UMEM do (`with_flows`).
//! Every iteration copies the 64- to 114-byte frame into place first: the
//! figures include that copy.
//!
//! - conntrack insert: a new flow (SNAT port, forward and reverse entries)
//!   into a table of 2^20 slots, from empty to full;
//! - conntrack lookup: a live flow's forward key in a full table of 2^20,
//!   in an order that strides across it;
//! - conntrack expiry: the sweep removing expired flows, per flow removed.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rialto_benches::{BATCH, Batch, client, forward, reflect_frame, tables, with_flows};
use rialto_dataplane::{
    OwnedFrame, Pipeline,
    pipeline::{
        conntrack::{Conntrack, Flow, FlowKey, FlowMemory, Side, TcpState},
        packet::mapped,
        snat::SnatPorts,
    },
};
use rialto_fixtures as fixtures;

fn cycle<S: FlowMemory>(
    c: &mut Criterion,
    group: &str,
    name: &str,
    pipeline: &mut Pipeline<S>,
    frames: &[Vec<u8>],
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let mut buf = OwnedFrame::new(&frames[0]);
    let mut i = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            forward(pipeline, &mut buf, &frames[i % frames.len()], 1);
            i += 1;
        })
    });
    g.finish();
}

/// As [`cycle`], [`BATCH`] frames at a time in one call, as the live loop
/// hands them: the flows of a batch are read ahead.
fn cycle_batch<S: FlowMemory>(
    c: &mut Criterion,
    group: &str,
    name: &str,
    pipeline: &mut Pipeline<S>,
    frames: &[Vec<u8>],
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut batch = Batch::default();
    let mut i = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            batch.forward(pipeline, &frames[i..i + BATCH], 1);
            i += BATCH;
            if i + BATCH > frames.len() {
                i = 0;
            }
        })
    });
    g.finish();
}

fn reflect(c: &mut Criterion) {
    let frame = reflect_frame();
    assert_eq!(frame.len(), 60);
    cycle(
        c,
        "reflect",
        "udp4_60B",
        &mut Pipeline::<Box<[_]>>::Reflect,
        &[frame],
    );
}

fn balance(c: &mut Criterion) {
    for (flows, label) in [(1_000, "1k_flows"), (1_000_000, "1M_flows")] {
        let (mut pipeline, there, back) = with_flows(flows, flows);
        cycle(c, "balance_forward", label, &mut pipeline, &there);
        cycle(c, "balance_return", label, &mut pipeline, &back);
        let batch = format!("{label}_batch");
        cycle_batch(c, "balance_forward", &batch, &mut pipeline, &there);
        cycle_batch(c, "balance_return", &batch, &mut pipeline, &back);
        // The same batches without reading ahead: its baseline.
        pipeline.set_read_ahead(false);
        let in_turn = format!("{label}_batch_in_turn");
        cycle_batch(c, "balance_forward", &in_turn, &mut pipeline, &there);
        cycle_batch(c, "balance_return", &in_turn, &mut pipeline, &back);
        pipeline.set_read_ahead(true);
        // The same by the general path alone: the fast path's baseline.
        pipeline.set_fast_path(false);
        let general = format!("{label}_general");
        cycle(c, "balance_forward", &general, &mut pipeline, &there);
        cycle(c, "balance_return", &general, &mut pipeline, &back);
    }
}

/// Slots of the flow table the conntrack benchmarks use.
const SLOTS: usize = 1 << 20;

/// UDP flow `i` from a client to the fixture service `echo`, and its
/// reverse from its backend (behind west) to the SNAT address and port it
/// was given: a flow that packs under the tables' names.
fn flow(i: usize, snat: [u8; 16], port: u16) -> Flow {
    let (addr, sport) = client(i);
    let forward = FlowKey {
        src: mapped(addr),
        dst: mapped(fixtures::ECHO),
        src_port: sport,
        dst_port: 7,
        proto: UDP,
        tunnel: rialto_dataplane::pipeline::conntrack::UPLINK,
        pad: [0; 3],
    };
    Flow {
        forward,
        reverse: FlowKey {
            src: mapped([198, 19, 0, 5]),
            dst: snat,
            src_port: 7007,
            dst_port: port,
            proto: UDP,
            tunnel: fixtures::WEST_VNI,
            pad: [0; 3],
        },
        client: Side::UPLINK,
        backend: Side::tunnel(1, 0),
        service: 1,
        backend_index: 0,
        hash: i as u32,
        sums: Default::default(),
        state: TcpState::ESTABLISHED,
        expires: 0,
    }
}

const UDP: u8 = 17;

fn conntrack(c: &mut Criterion) {
    let snapshot = tables(SLOTS);
    let empty = || {
        Conntrack::new(
            SLOTS,
            SnatPorts::new(&snapshot.snat, 0, 1),
            snapshot.timeouts,
            rialto_dataplane::pipeline::balance::names(&snapshot),
        )
    };
    let full = |now: u32| {
        let mut table = empty();
        for i in 0..SLOTS {
            table
                .insert(false, UDP, i as u64, now, |a, p| flow(i, a, p))
                .expect("a SNAT port");
        }
        table
    };
    let mut g = c.benchmark_group("conntrack");
    g.throughput(Throughput::Elements(1));
    // Fresh tables, filled from empty: only the inserts are timed.
    g.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let mut table = empty();
                let n = left.min(SLOTS);
                let start = Instant::now();
                for i in 0..n {
                    let id = table.insert(false, UDP, i as u64, 0, |a, p| flow(i, a, p));
                    black_box(id.expect("a SNAT port"));
                }
                timed += start.elapsed();
                left -= n;
            }
            timed
        })
    });
    let mut table = full(0);
    let keys: Vec<FlowKey> = (0..SLOTS).map(|i| table.flow(i as u32).forward).collect();
    let mut i = 0;
    g.bench_function("lookup_1M", |b| {
        b.iter(|| {
            // A stride coprime with 2^20 visits every key, far apart.
            i = (i + 7919) % SLOTS;
            black_box(table.lookup(black_box(&keys[i]), 0).expect("a live flow"))
        })
    });
    drop(table);
    // Full tables of flows that expired: only the sweep is timed.
    g.bench_function("expire", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let mut table = full(0);
                let n = left.min(SLOTS);
                let start = Instant::now();
                table.sweep(u32::MAX, n);
                timed += start.elapsed();
                assert_eq!(table.stats().expired as usize, n);
                left -= n;
            }
            timed
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(3));
    targets = reflect, balance, conntrack
}
criterion_main!(benches);
