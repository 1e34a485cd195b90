//! The fast path and the general path agree. Two balancers, one trying the
//! fast path first and one taking every frame the general way, are given
//! the same random steps: clients' segments and datagrams to VIPs, from the
//! uplink and from a cluster, and the backends' answers through the
//! tunnel, some of them damaged on the way (a byte changed, with the IPv4
//! checksums made right again or not, the frame cut short, the TTL run
//! out), and time that passes. After every step the two give the same
//! verdict and the same frame, and their counters are the same. And a
//! batch, whose flows the fast path finds ahead, does what its frames do
//! one at a time.

use std::{collections::HashMap, sync::Arc};

use proptest::prelude::*;
use rialto_dataplane::{FrameBuf, HEADROOM, OwnedFrame, Pipeline, Verdict, wire::checksum};
use rialto_fixtures::{self as fixtures, EAST_VNI, Ip, L4, NODE_MAC, POD_SIDE_MAC};
use rialto_tables::Snapshot;

/// The fixture config and a UDP service behind east (IPv4 underlay): east's
/// flows, TCP and UDP, leave by a template; west's by the general way.
fn tables() -> Arc<Snapshot> {
    fixtures::compile(&format!(
        r#"{}
[[service]]
name = "dns"
vip = "198.18.100.4:53/UDP"
backends = [{{ cluster = "east", addr = "198.19.0.6:53" }}]
"#,
        fixtures::CONFIG
    ))
}

const DNS: [u8; 4] = [198, 18, 100, 4];

/// What a step sends.
#[derive(Clone, Copy, Debug)]
enum What {
    /// A client's TCP segment to `web`, with these control bits.
    Tcp(&'static str),
    /// A client's datagram to `dns` (east) or `echo` (west).
    Udp { east: bool },
    /// The backend's answer to the client's last forwarded packet of that
    /// protocol, through east's tunnel (TCP with these control bits); or
    /// the same to a SNAT port of the other worker's (handed over).
    Answer {
        tcp: Option<&'static str>,
        elsewhere: bool,
    },
}

/// What happens to the frame on the way.
#[derive(Clone, Copy, Debug)]
enum Damage {
    None,
    /// Byte `at` (modulo the length) becomes `value`; then the IPv4 header
    /// checksums are made right again, if `fix`.
    Byte {
        at: usize,
        value: u8,
        fix: bool,
    },
    /// Cut to `len` bytes (modulo the length).
    Cut(usize),
    /// The (inner) IPv4 TTL becomes this, checksums right.
    Ttl(u8),
}

#[derive(Clone, Copy, Debug)]
struct Step {
    client: usize,
    /// From a pod in east rather than the uplink.
    from_east: bool,
    what: What,
    damage: Damage,
    /// Seconds before the step.
    wait: u32,
    /// Bytes of payload: a few, or about as many as fit the tunnel's MTU
    /// (1,410 and more do not: too big).
    payload: usize,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let tcp = prop::sample::select(vec!["S", "A", "A", "A", "FA", "R", "SA", "RA"]);
    let what = prop_oneof![
        3 => tcp.clone().prop_map(What::Tcp),
        2 => any::<bool>().prop_map(|east| What::Udp { east }),
        3 => (prop::option::weighted(0.7, tcp), prop::bool::weighted(0.2))
            .prop_map(|(tcp, elsewhere)| What::Answer { tcp, elsewhere }),
    ];
    let damage = prop_oneof![
        6 => Just(Damage::None),
        2 => (0..120usize, any::<u8>(), any::<bool>())
            .prop_map(|(at, value, fix)| Damage::Byte { at, value, fix }),
        1 => (0..120usize).prop_map(Damage::Cut),
        1 => (0..3u8).prop_map(Damage::Ttl),
    ];
    let wait = prop_oneof![8 => 0..3u32, 1 => 20..200u32, 1 => Just(100_000u32)];
    let payload = prop_oneof![4 => 0..64usize, 1 => 1380..1440usize];
    let step = (0..2usize, any::<bool>(), what, damage, wait, payload).prop_map(
        |(client, from_east, what, damage, wait, payload)| Step {
            client,
            from_east,
            what,
            damage,
            wait,
            payload,
        },
    );
    prop::collection::vec(step, 1..40)
}

/// Client `i`'s address: on the uplink, or a pod in east.
fn client(i: usize, from_east: bool) -> [u8; 4] {
    match from_east {
        false => [198, 18, 0, 2 + i as u8],
        true => [198, 19, 1, 2 + i as u8],
    }
}

/// The frame of a client's packet.
fn to_vip(i: usize, from_east: bool, dst: [u8; 4], l4: L4, payload: usize) -> Vec<u8> {
    let ip = Ip::V4 {
        src: client(i, from_east),
        dst,
        ttl: 64,
    };
    let packet = fixtures::ip(ip, l4, &vec![0x5a; payload]);
    match from_east {
        false => fixtures::from_router(&packet),
        true => fixtures::from_east(&packet),
    }
}

/// An IPv4 address and port.
type Endpoint = ([u8; 4], u16);

/// What a forwarded frame toward east carries: the backend, the SNAT
/// address and port, and the protocol, for the answer. `None` if it is not
/// VXLAN to east.
fn forwarded(frame: &[u8]) -> Option<(Endpoint, Endpoint, u8)> {
    let inner = frame.get(64..)?;
    if frame.get(12..14)? != [8, 0] || frame.get(36..38)? != 4789u16.to_be_bytes() {
        return None;
    }
    let vni = u32::from_be_bytes([0, frame[46], frame[47], frame[48]]);
    if vni != EAST_VNI || inner.len() < 24 || inner[0] != 0x45 {
        return None;
    }
    let addr = |at: usize| -> [u8; 4] { inner[at..at + 4].try_into().unwrap() };
    let port = |at: usize| u16::from_be_bytes([inner[at], inner[at + 1]]);
    Some(((addr(16), port(22)), (addr(12), port(20)), inner[9]))
}

/// Sets the IPv4 header checksum of the header at `at`, if one is there.
fn fix_checksum(frame: &mut [u8], at: usize) {
    if frame.len() < at + 20 || frame[at] != 0x45 {
        return;
    }
    frame[at + 10..at + 12].fill(0);
    let c = checksum::finish(checksum::sum(&frame[at..at + 20]));
    frame[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
}

fn damage(mut frame: Vec<u8>, damage: Damage) -> Vec<u8> {
    let inner = if frame.len() > 64 && frame[36..38] == 4789u16.to_be_bytes() {
        64
    } else {
        14
    };
    match damage {
        Damage::None => {}
        Damage::Byte { at, value, fix } => {
            let at = at % frame.len();
            frame[at] = value;
            if fix {
                fix_checksum(&mut frame, 14);
                fix_checksum(&mut frame, 64);
            }
        }
        Damage::Cut(len) => frame.truncate(len % frame.len()),
        Damage::Ttl(ttl) => {
            frame[inner + 8] = ttl;
            fix_checksum(&mut frame, inner);
        }
    }
    frame
}

/// The last forwarded packet per client, pod side and protocol: the
/// backend, the SNAT address and port.
type Last = HashMap<(usize, bool, u8), (Endpoint, Endpoint)>;

/// The frame `step` sends, damaged as it says; `None` for an answer to a
/// flow not seen yet.
fn frame_for(step: &Step, last: &Last) -> Option<Vec<u8>> {
    let (i, east) = (step.client, step.from_east);
    let frame = match step.what {
        What::Tcp(flags) => to_vip(
            i,
            east,
            fixtures::WEB,
            L4::Tcp(40000, 80, flags, 7),
            step.payload,
        ),
        What::Udp { east: true } => to_vip(i, east, DNS, L4::Udp(40000, 53), step.payload),
        What::Udp { east: false } => {
            to_vip(i, east, fixtures::ECHO, L4::Udp(40000, 7), step.payload)
        }
        What::Answer { tcp, elsewhere } => {
            let proto = if tcp.is_some() { 6 } else { 17 };
            let &((backend, bport), (snat, sport)) = last.get(&(i, east, proto))?;
            let ip = Ip::V4 {
                src: backend,
                dst: snat,
                ttl: 64,
            };
            // This worker's ports are the lower half of 1024-60999.
            let sport = if elsewhere { sport + 30_000 } else { sport };
            let l4 = match tcp {
                Some(flags) => L4::Tcp(bport, sport, flags, 9),
                None => L4::Udp(bport, sport),
            };
            let inner = fixtures::ip(ip, l4, &vec![0xa5; step.payload]);
            let mut frame = fixtures::from_east(&inner);
            // From the pod's own MAC, as the fixtures' gateways send.
            frame[56..62].copy_from_slice(&POD_SIDE_MAC);
            frame
        }
    };
    Some(damage(frame, step.damage))
}

/// Notes what a forwarded frame toward east carries, for the answers.
fn remember(last: &mut Last, step: &Step, verdict: Verdict, out: &[u8]) {
    if verdict == Verdict::Tx
        && let Some((backend, snat, proto)) = forwarded(out)
    {
        last.insert((step.client, step.from_east, proto), (backend, snat));
    }
}

/// A worker of two, so answers on the other worker's ports are handed over.
fn balancer(tables: &Arc<Snapshot>, fast: bool) -> Pipeline {
    let mut pipeline = Pipeline::balance(Arc::clone(tables), 0, 2, NODE_MAC);
    pipeline.set_fast_path(fast);
    pipeline
}

fn run(pipeline: &mut Pipeline, input: &[u8], now: u64) -> (Verdict, Vec<u8>) {
    let mut frame = OwnedFrame::new(input);
    let verdict = frame.with(|f| pipeline.process_frame(f, now));
    pipeline.tick(now);
    (verdict, frame.data().to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_fast_path_does_what_the_general_path_does(steps in steps()) {
        let tables = tables();
        let (mut fast, mut general) = (balancer(&tables, true), balancer(&tables, false));
        let mut last = Last::new();
        let mut now = 1_000_000_000u64;
        for (n, step) in steps.iter().enumerate() {
            now += u64::from(step.wait) * 1_000_000_000;
            let Some(frame) = frame_for(step, &last) else {
                continue;
            };
            let (a, b) = (run(&mut fast, &frame, now), run(&mut general, &frame, now));
            prop_assert_eq!(&a, &b, "step {}: {:?}", n, step);
            prop_assert_eq!(fast.stats(), general.stats(), "step {}: {:?}", n, step);
            remember(&mut last, step, a.0, &a.1);
        }
    }

    /// A batch does what its frames do one at a time: the fast path reads
    /// a batch's frames, and the index entries and slots of their flows,
    /// some frames ahead of processing them (`Balancer::process_batch`).
    /// Batches of random sizes, past the frames it keeps staged more than
    /// once, each at one time, against the general path frame
    /// by frame; in a batch, a SYN that reopens a flow or a packet that
    /// finds it expired changes what a later frame finds.
    #[test]
    fn a_batch_does_what_its_frames_do_one_at_a_time(
        steps in steps(),
        sizes in prop::collection::vec(1..48usize, 1..8),
    ) {
        let tables = tables();
        let (mut batched, mut general) = (balancer(&tables, true), balancer(&tables, false));
        let mut last = Last::new();
        let mut now = 1_000_000_000u64;
        let mut rest = &steps[..];
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, after) = rest.split_at(size.min(rest.len()));
            rest = after;
            now += batch.iter().map(|s| u64::from(s.wait)).sum::<u64>() * 1_000_000_000;
            let (steps, frames): (Vec<&Step>, Vec<Vec<u8>>) = batch
                .iter()
                .filter_map(|step| Some((step, frame_for(step, &last)?)))
                .unzip();
            let mut bufs: Vec<Vec<u8>> = frames
                .iter()
                .map(|f| [&[0; HEADROOM][..], f, &[0; 2048]].concat())
                .collect();
            let mut batch: Vec<FrameBuf<'_>> = bufs
                .iter_mut()
                .zip(&frames)
                .map(|(buf, f)| FrameBuf::new(buf, HEADROOM, f.len()))
                .collect();
            let mut verdicts = vec![Verdict::Tx; frames.len()];
            batched.process(&mut batch, &mut verdicts, now);
            batched.tick(now);
            for (k, (frame, step)) in frames.iter().zip(&steps).enumerate() {
                let mut one = OwnedFrame::new(frame);
                let verdict = one.with(|f| general.process_frame(f, now));
                let got = (verdicts[k], batch[k].data());
                prop_assert_eq!(got, (verdict, one.data()), "frame {}: {:?}", k, step);
                remember(&mut last, step, verdict, one.data());
            }
            general.tick(now);
            prop_assert_eq!(batched.stats(), general.stats());
        }
    }
}

/// Without damage, an established flow's packets both ways take the fast
/// path: the property above compares it, not the general path with itself.
#[test]
fn established_flows_take_the_fast_path() {
    let tables = tables();
    let mut pipeline = balancer(&tables, true);
    let now = 1_000_000_000;
    let syn = to_vip(0, false, fixtures::WEB, L4::Tcp(40000, 80, "S", 7), 0);
    let (verdict, out) = run(&mut pipeline, &syn, now);
    assert_eq!(verdict, Verdict::Tx);
    let ((backend, bport), (snat, sport), _) = forwarded(&out).expect("to east");
    let ack = to_vip(0, false, fixtures::WEB, L4::Tcp(40000, 80, "A", 8), 0);
    let answer = fixtures::from_east(&fixtures::ip(
        Ip::V4 {
            src: backend,
            dst: snat,
            ttl: 64,
        },
        L4::Tcp(bport, sport, "A", 9),
        b"answer",
    ));
    let Pipeline::Balance(balancer) = &mut pipeline else {
        unreachable!("a balancer")
    };
    for frame in [ack, answer] {
        let mut frame = OwnedFrame::new(&frame);
        let verdict = frame.with(|f| balancer.process_fast(f, now));
        assert_eq!(verdict, Some(Verdict::Tx), "the fast path took it");
    }
}
