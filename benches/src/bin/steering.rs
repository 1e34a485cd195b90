//! The XDP steering program's cost per frame, by the kind of frame, run in
//! the kernel with `BPF_PROG_TEST_RUN` (no device, no socket: the program
//! alone, its map lookups and counters included; an owned frame's redirect
//! finds no socket and falls back to the kernel, after the same lookup).
//!
//!   steering [ROUNDS] [REPEAT]                     (as root)
//!
//! Each round runs each frame REPEAT times in a row (default 1,000,000) and
//! reads the kernel's average time a run; the median of ROUNDS rounds
//! (default 9) is printed, with the least and the most. `arp` is the
//! program's shortest path (the Ethernet header and a counter): its floor
//! in the same run.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context, Result, ensure};
use etherparse::PacketBuilder;
use rialto_rules::Steering as Rules;
use xdp_redirect::Steering;

const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT: [u8; 4] = [198, 18, 0, 2];
const NODE: [u8; 4] = [198, 18, 0, 1];
const VIP: [u8; 4] = [198, 18, 100, 1];
const SNAT: [u8; 4] = [198, 18, 200, 1];
const GATEWAY: [u8; 4] = [198, 18, 2, 1];
const POD: [u8; 4] = [198, 19, 1, 10];
const VXLAN_PORT: u16 = 4789;

/// Rules of the size of a border node's: 64 VIPs, 16 tunnel peers, 4 SNAT
/// addresses, one VTEP.
fn rules() -> Rules {
    let v4 = |[a, b, c, _]: [u8; 4], d: u8| IpAddr::from([a, b, c, d]);
    Rules {
        vips: (0..64)
            .map(|d| format!("{}:80/TCP", v4(VIP, d + 1)).parse())
            .collect::<Result<_, _>>()
            .expect("VIPs parse"),
        tunnel_peers: (0..16).map(|d| v4(GATEWAY, d + 1)).collect(),
        snat_addrs: (0..4).map(|d| v4(SNAT, d + 1)).collect(),
        vteps: vec![IpAddr::from(NODE)],
        vxlan_port: VXLAN_PORT,
    }
}

fn eth(from: [u8; 6]) -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(from, NODE_MAC)
}

/// A TCP segment from `src` to `dst`:`port`, in a frame from `from`.
fn tcp(from: [u8; 6], src: [u8; 4], dst: [u8; 4], port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    eth(from)
        .ipv4(src, dst, 64)
        .tcp(40000, port, 1, 1024)
        .write(&mut out, &[0; 64])
        .expect("a frame builds");
    out
}

/// The frames timed, by name: what each path of the program sees.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    // A backend's reply to a SNAT address, in VXLAN from a cluster's gateway.
    let reply = tcp(PEER_MAC, POD, SNAT, 40000);
    let mut vxlan = Vec::new();
    eth(PEER_MAC)
        .ipv4(GATEWAY, NODE, 64)
        .udp(50000, VXLAN_PORT)
        .write(
            &mut vxlan,
            &[&[0x08, 0, 0, 0, 0, 0, 1, 0][..], &reply].concat(),
        )
        .expect("a frame builds");
    let mut arp = [0xff; 6].to_vec();
    arp.extend_from_slice(&PEER_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[PEER_MAC.as_slice(), &CLIENT, &[0; 6], &NODE].concat());
    vec![
        ("vip", tcp(PEER_MAC, CLIENT, VIP, 80)),
        ("vxlan", vxlan),
        ("snat", reply),
        ("host", tcp(PEER_MAC, CLIENT, NODE, 22)),
        ("arp", arp),
    ]
}

fn main() -> Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .context("usage: steering [ROUNDS] [REPEAT]")?;
    let rounds = args.first().copied().unwrap_or(9).max(1);
    let repeat = args.get(1).copied().unwrap_or(1_000_000).max(1);
    let steering = Steering::load(&rules()).context("loading the steering program (as root)")?;
    let frames = frames();
    let mut times = vec![Vec::new(); frames.len()];
    for _ in 0..rounds {
        for ((name, frame), times) in frames.iter().zip(&mut times) {
            let (action, took) = steering.time_run(frame, repeat)?;
            // No socket: an owned frame falls back to the kernel too.
            ensure!(action == 2, "{name}: action {action}, not XDP_PASS");
            times.push(took);
        }
    }
    println!(
        "{:<6} {:>8} {:>8} {:>8}",
        "frame", "ns/run", "least", "most"
    );
    for ((name, _), times) in frames.iter().zip(&mut times) {
        times.sort();
        let ns = |d: &Duration| d.as_nanos();
        let (least, most) = (ns(&times[0]), ns(&times[times.len() - 1]));
        println!(
            "{name:<6} {:>8} {least:>8} {most:>8}",
            ns(&times[times.len() / 2])
        );
    }
    println!("(median of {rounds} rounds of {repeat} runs each; BPF_PROG_TEST_RUN)");
    Ok(())
}
