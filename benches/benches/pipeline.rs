//! ns/packet of the pure pipeline, without I/O: `cargo bench -p rialto-benches --bench pipeline`.
//!
//! - reflect: the bare baseline (swap and send back);
//! - balance forward: a packet of a live flow, client -> VIP, rewritten and
//!   encapsulated toward the backend's cluster;
//! - balance return: a packet of a live flow out of the tunnel, decapsulated,
//!   reverse-NATed, to the client;
//!
//! each at 1 thousand and 1 million live flows, cycling over packets of 4096
//! flows spread across the table (so the large table is not all in cache).
//! Every iteration copies the 64- to 114-byte frame into place first: the
//! figures include that copy.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use rialto::{
    fixtures::{self, Ip, L4},
    pipeline::{OwnedFrame, Pipeline, Verdict},
};
use rialto_rules::Snapshot;

/// Frames of distinct flows each iteration cycles over.
const SAMPLE: usize = 4096;

/// The fixture config, with enough SNAT addresses and flow slots for a
/// million flows on one worker.
fn tables() -> Arc<Snapshot> {
    let mut snat: Vec<String> = (1..=20).map(|i| format!("\"198.18.200.{i}\"")).collect();
    snat.push("\"fd00:200::1\"".to_owned());
    let text = fixtures::CONFIG
        .replace("flows_per_worker = 4096", "flows_per_worker = 1100000")
        .replace(
            "addresses = [\"198.18.200.1\", \"fd00:200::1\"]",
            &format!("addresses = [{}]", snat.join(", ")),
        );
    Arc::new(rialto_rules::load("bench", &text).unwrap_or_else(|e| panic!("{e}")))
}

/// Client `i`: its address and port (distinct for every `i` below 2^24).
fn client(i: usize) -> ([u8; 4], u16) {
    (
        [198, 18, (i >> 16) as u8 & 0x7f, (i >> 8) as u8],
        1024 + (i & 0xff) as u16,
    )
}

fn packet(i: usize, flags: &'static str) -> Vec<u8> {
    let (addr, port) = client(i);
    let ip = Ip::V4 {
        src: addr,
        dst: fixtures::WEB,
        ttl: 64,
    };
    fixtures::from_router(&fixtures::ip(ip, L4::Tcp(port, 80, flags, 1), &[0; 6]))
}

/// A balancer holding `flows` live TCP flows; the forward and return frames
/// of `SAMPLE` of them.
fn setup(flows: usize) -> (Pipeline, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut pipeline = Pipeline::balance(tables(), 0, 1, fixtures::NODE_MAC);
    let mut frame = OwnedFrame::new(&[]);
    let step = flows / SAMPLE.min(flows);
    let (mut forward, mut back) = (Vec::new(), Vec::new());
    for i in 0..flows {
        frame.load(&packet(i, "S"));
        assert_eq!(frame.with(|f| pipeline.process(f, 0)), Verdict::Tx);
        if i % step == 0 && forward.len() < SAMPLE {
            forward.push(packet(i, "A"));
            back.push(reply_to(frame.data()));
        }
    }
    (pipeline, forward, back)
}

/// The backend's answer to an encapsulated SYN Rialto sent.
fn reply_to(sent: &[u8]) -> Vec<u8> {
    let outer = SlicedPacket::from_ethernet(sent).unwrap();
    let Some(TransportSlice::Udp(udp)) = outer.transport else {
        panic!("VXLAN")
    };
    let inner = SlicedPacket::from_ethernet(&udp.payload()[8..]).unwrap();
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(tcp))) = (inner.net, inner.transport)
    else {
        panic!("TCP over IPv4")
    };
    let answer = fixtures::ip(
        Ip::V4 {
            src: ip.header().destination(),
            dst: ip.header().source(),
            ttl: 64,
        },
        L4::Tcp(tcp.destination_port(), tcp.source_port(), "A", 1),
        &[0; 6],
    );
    let inner = fixtures::eth(fixtures::NODE_MAC, fixtures::POD_SIDE_MAC, &answer);
    let outer = Ip::V4 {
        src: fixtures::EAST_VTEP,
        dst: fixtures::NODE_VTEP,
        ttl: 64,
    };
    fixtures::vxlan(
        fixtures::NODE_MAC,
        fixtures::ROUTER_MAC,
        outer,
        0x1234,
        fixtures::EAST_VNI,
        &inner,
    )
}

fn cycle(c: &mut Criterion, group: &str, name: &str, pipeline: &mut Pipeline, frames: &[Vec<u8>]) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    let mut buf = OwnedFrame::new(&frames[0]);
    let mut i = 0;
    g.bench_function(name, |b| {
        b.iter(|| {
            buf.load(&frames[i % frames.len()]);
            i += 1;
            let verdict = buf.with(|f| pipeline.process(std::hint::black_box(f), 1));
            assert_eq!(verdict, Verdict::Tx);
        })
    });
    g.finish();
}

fn reflect(c: &mut Criterion) {
    let frame = fixtures::from_router(&fixtures::ip(
        Ip::V4 {
            src: fixtures::CLIENT,
            dst: fixtures::WEB,
            ttl: 64,
        },
        L4::Udp(9, 7),
        &[0; 18],
    ));
    assert_eq!(frame.len(), 60);
    cycle(c, "reflect", "udp4_60B", &mut Pipeline::Reflect, &[frame]);
}

fn balance(c: &mut Criterion) {
    for (flows, label) in [(1_000, "1k_flows"), (1_000_000, "1M_flows")] {
        let (mut pipeline, forward, back) = setup(flows);
        cycle(c, "balance_forward", label, &mut pipeline, &forward);
        cycle(c, "balance_return", label, &mut pipeline, &back);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = reflect, balance
}
criterion_main!(benches);
