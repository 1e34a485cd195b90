//! Rialto's benchmarks (`cargo bench -p rialto-benches`) and what they share:
//! a config whose tables hold millions of flows, and the frames of numbered
//! client flows to a VIP and of their replies.
//!
//! - `benches/pipeline.rs` (criterion): ns/packet of the pure pipeline,
//!   reflect and the balancer's forward and return paths at 1 thousand and
//!   1 million live flows; the flow table's insert, lookup and expiry;
//! - `benches/maglev.rs` (criterion, after a report): Maglev table builds
//!   and lookups, shares and disruption;
//! - `benches/flows.rs` (a report): new flows per second through the whole
//!   pipeline, and the memory 10 million live flows take;
//! - `src/bin/instructions.rs`, driven by `benches/instructions.sh`:
//!   instructions per packet under callgrind;
//! - `side-by-side.py`: Rialto against bare AF_XDP, DPDK's testpmd and the
//!   Linux kernel on a veth pair, and a soak.

use std::sync::Arc;

use arrayvec::ArrayVec;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use rand::{SeedableRng, rngs::SmallRng, seq::SliceRandom};
use rialto::shm::Mapped;
use rialto_dataplane::{
    FrameBuf, HEADROOM, OwnedFrame, Pipeline, Verdict,
    pipeline::{
        balance,
        conntrack::{FlowMemory, Slot},
    },
};
use rialto_fixtures::{self as fixtures, Ip, L4};
use rialto_rules::Snapshot;

pub mod traffic;

/// The fixture config, with room for `flows` flows on one worker and enough
/// SNAT addresses for them (65,512 ports each).
pub fn tables(flows: usize) -> Arc<Snapshot> {
    let addresses = flows.div_ceil(60_000).clamp(1, 250);
    let mut snat: Vec<String> = (1..=addresses)
        .map(|i| format!("\"198.18.200.{i}\""))
        .collect();
    snat.push("\"fd00:200::1\"".to_owned());
    let text = fixtures::CONFIG
        .replace(
            "flows_per_worker = 4096",
            &format!("flows_per_worker = {}", flows.max(4096)),
        )
        .replace(
            "addresses = [\"198.18.200.1\", \"fd00:200::1\"]",
            &format!("addresses = [{}]", snat.join(", ")),
        );
    Arc::new(rialto_rules::load("bench", &text).unwrap_or_else(|e| panic!("{e}")))
}

/// A pipeline whose flow table is in memory as `rialto run` maps it
/// (advised to huge pages), the slots anonymous instead of in a file.
pub type Balancer = Pipeline<Mapped<Slot>>;

/// A balancer (worker 0 of 1) on `tables`.
pub fn balancer(tables: Arc<Snapshot>) -> Balancer {
    let slots = Mapped::anon(balance::slots_for(&tables));
    Pipeline::balance_in(slots, tables, 0, 1, fixtures::NODE_MAC)
}

/// The 60-byte UDP datagram reflect mode benchmarks on.
pub fn reflect_frame() -> Vec<u8> {
    fixtures::from_router(&fixtures::ip(
        Ip::V4 {
            src: fixtures::CLIENT,
            dst: fixtures::WEB,
            ttl: 64,
        },
        L4::Udp(9, 7),
        &[0; 18],
    ))
}

/// Client `i`'s address and port: distinct for every `i` below 2^24, all
/// inside 198.18.0.0/15 and none of them Rialto's own (from 198.19.64.0 on).
pub fn client(i: usize) -> ([u8; 4], u16) {
    let host = 0xc613_4000 + (i >> 10) as u32;
    (host.to_be_bytes(), 1024 + (i & 0x3ff) as u16)
}

/// Client `i`'s TCP segment to the fixture VIP `web`, with `flags`.
pub fn packet(i: usize, flags: &'static str) -> Vec<u8> {
    let (addr, port) = client(i);
    let ip = Ip::V4 {
        src: addr,
        dst: fixtures::WEB,
        ttl: 64,
    };
    fixtures::from_router(&fixtures::ip(ip, L4::Tcp(port, 80, flags, 1), &[0; 6]))
}

/// A balancer holding `flows` live TCP flows, and the forward and return
/// frames of `sample` of them spread over the table (those connections
/// established: the backend's answer and the client's acknowledgement
/// have been through once), in an order unrelated
/// to the flows' (the same for both): a live table's packets do not come
/// in the order its slots and SNAT ports were taken, and frames in that
/// order would let the processor fetch the next flow before it is asked
/// for.
pub fn with_flows(flows: usize, sample: usize) -> (Balancer, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut pipeline = balancer(tables(flows));
    let mut frame = OwnedFrame::new(&[]);
    let step = flows / sample.min(flows);
    let mut pairs = Vec::new();
    for i in 0..flows {
        frame.load(&packet(i, "S"));
        assert_eq!(frame.with(|f| pipeline.process_frame(f, 0)), Verdict::Tx);
        if i % step == 0 && pairs.len() < sample {
            pairs.push((packet(i, "A"), reply_to(frame.data())));
        }
    }
    for (there, back) in &pairs {
        for frame_in in [back, there] {
            frame.load(frame_in);
            assert_eq!(frame.with(|f| pipeline.process_frame(f, 0)), Verdict::Tx);
        }
    }
    pairs.shuffle(&mut SmallRng::seed_from_u64(0x5249_414c_544f));
    let (forward, back): (Vec<Vec<u8>>, Vec<Vec<u8>>) = pairs.into_iter().unzip();
    // Copied again in the order they are sent, so that they lie in memory
    // in that order: live, a frame is in the UMEM, just written, not a
    // cache miss away in a table of a million; the flows stay in no order.
    let in_order = |frames: Vec<Vec<u8>>| frames.iter().map(|f| f.to_vec()).collect();
    (pipeline, in_order(forward), in_order(back))
}

/// The backend's answer to an encapsulated segment Rialto sent.
pub fn reply_to(sent: &[u8]) -> Vec<u8> {
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

/// Runs `frame` through `pipeline`, which must transmit it.
#[inline]
pub fn forward<S: FlowMemory>(
    pipeline: &mut Pipeline<S>,
    buf: &mut OwnedFrame,
    frame: &[u8],
    now: u64,
) {
    buf.load(frame);
    let verdict = buf.with(|f| pipeline.process_frame(std::hint::black_box(f), now));
    assert_eq!(verdict, Verdict::Tx);
}

/// Frames per call of the benchmarks' batches: `rialto run`'s default.
pub const BATCH: usize = 64;

/// Buffers for up to [`BATCH`] frames handed to a pipeline in one call,
/// as the live loop hands it a step's frames.
#[derive(Debug)]
pub struct Batch {
    bufs: Vec<Vec<u8>>,
    verdicts: [Verdict; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            bufs: vec![vec![0; HEADROOM + 2048]; BATCH],
            verdicts: [Verdict::Tx; BATCH],
        }
    }
}

impl Batch {
    /// Runs `frames` (at most [`BATCH`]) through `pipeline` in one call,
    /// each copied into its buffer behind [`HEADROOM`] bytes first; all
    /// must be transmitted.
    #[inline]
    pub fn forward<S: FlowMemory>(
        &mut self,
        pipeline: &mut Pipeline<S>,
        frames: &[Vec<u8>],
        now: u64,
    ) {
        let mut batch = ArrayVec::<FrameBuf<'_>, BATCH>::new();
        for (buf, frame) in self.bufs.iter_mut().zip(frames) {
            buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
            batch.push(FrameBuf::new(buf, HEADROOM, frame.len()));
        }
        let verdicts = &mut self.verdicts[..batch.len()];
        pipeline.process(std::hint::black_box(&mut batch), verdicts, now);
        assert!(verdicts.iter().all(|v| *v == Verdict::Tx), "{verdicts:?}");
    }
}

/// This process's resident memory, in bytes (`VmRSS`).
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}
