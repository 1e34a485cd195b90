//! The fixture table: frames in, verdicts and whole frames out, for every
//! branch of the balancer (Katran's tester, in Rust).
//!
//! The same table drives the unit tests (`tests/pipeline.rs`), the pcap dump
//! that `tshark` checks, and the benchmarks. Frames are built with
//! etherparse, independently of Rialto's own wire code, so a test compares
//! Rialto's output with what a second implementation says it should be.

use std::sync::Arc;

use etherparse::{
    IpDscp, IpHeaders, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, PacketBuilder,
    SlicedPacket, TransportSlice,
};
use rialto_rules::Snapshot;

use crate::pipeline::{DropReason, Verdict, packet::flow_hash};

/// The config every fixture runs under.
pub const CONFIG: &str = r#"
[node]
vteps = ["198.18.1.1", "fd00:1::1"]
mac = "02:00:00:00:01:01"
next_hop_mac = "02:00:00:00:00:fe"
mtu = 1500

[snat]
addresses = ["198.18.200.1", "fd00:200::1"]
ports = "1024-65535"

[limits]
flows_per_worker = 4096

[[cluster]]
name = "east"
vni = 100
gateways = ["198.18.2.1"]
gateway_mac = "02:00:00:00:02:01"

[[cluster]]
name = "west"
vni = 200
gateways = ["fd00:2::2"]
gateway_mac = "02:00:00:00:02:02"

[[service]]
name = "web"
vip = "198.18.100.1:80/TCP"
backends = [{ cluster = "east", addr = "198.19.0.5:8080" }]

[[service]]
name = "echo"
vip = "198.18.100.2:7/UDP"
backends = [{ cluster = "west", addr = "198.19.0.5:7007" }]

[[service]]
name = "web6"
vip = "[fd00:100::1]:80/TCP"
backends = [{ cluster = "east", addr = "[fd00:19::5]:8080" }]
"#;

pub const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
pub const EAST_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
pub const WEST_MAC: [u8; 6] = [2, 0, 0, 0, 2, 2];
/// A pod's MAC inside a cluster (the gateway's VXLAN device, as sender).
pub const POD_SIDE_MAC: [u8; 6] = [2, 0, 0, 0, 3, 3];

pub const CLIENT: [u8; 4] = [198, 18, 0, 2];
pub const CLIENT6: [u8; 16] = v6(0, 2);
pub const NODE_VTEP: [u8; 4] = [198, 18, 1, 1];
pub const NODE_VTEP6: [u8; 16] = v6(1, 1);
pub const EAST_VTEP: [u8; 4] = [198, 18, 2, 1];
pub const WEST_VTEP6: [u8; 16] = v6(2, 2);
pub const WEB: [u8; 4] = [198, 18, 100, 1];
pub const ECHO: [u8; 4] = [198, 18, 100, 2];
pub const WEB6: [u8; 16] = v6(0x100, 1);
pub const POD: [u8; 4] = [198, 19, 0, 5];
pub const POD6: [u8; 16] = v6(0x19, 5);
pub const SNAT: [u8; 4] = [198, 18, 200, 1];
pub const SNAT6: [u8; 16] = v6(0x200, 1);
/// The first SNAT port a fresh worker hands out (the bottom of its slice).
pub const FIRST_PORT: u16 = 1024;
pub const EAST_VNI: u32 = 100;
pub const WEST_VNI: u32 = 200;

/// `fd00:GROUP::HOST`.
const fn v6(group: u16, host: u8) -> [u8; 16] {
    let g = group.to_be_bytes();
    [0xfd, 0, g[0], g[1], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host]
}

/// The fixture config, compiled.
pub fn tables() -> Arc<Snapshot> {
    Arc::new(rialto_rules::load("fixtures", CONFIG).unwrap_or_else(|e| panic!("{e}")))
}

/// One step of the table: a frame in, what must come out.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: &'static str,
    pub input: Vec<u8>,
    pub verdict: Verdict,
    /// The whole frame expected on the wire, for [`Verdict::Tx`].
    pub output: Option<Vec<u8>>,
}

fn tx(name: &'static str, input: Vec<u8>, output: Vec<u8>) -> Fixture {
    Fixture {
        name,
        input,
        verdict: Verdict::Tx,
        output: Some(output),
    }
}

fn drop(name: &'static str, input: Vec<u8>, reason: DropReason) -> Fixture {
    Fixture {
        name,
        input,
        verdict: Verdict::Drop(reason),
        output: None,
    }
}

/// A transport header for the builders.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    /// TCP with ports, control bits (`S`, `SA`, `A`, `FA`, `R`) and sequence number.
    Tcp(u16, u16, &'static str, u32),
    Udp(u16, u16),
    /// ICMP (v4 or v6 by the IP version) type, code and second word; the
    /// payload is the quote.
    Icmp(u8, u8, [u8; 4]),
}

/// An IP header for the builders.
#[derive(Clone, Copy, Debug)]
pub enum Ip {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        hop_limit: u8,
    },
}

/// Builds an IP packet (no Ethernet).
pub fn ip(ip: Ip, l4: L4, payload: &[u8]) -> Vec<u8> {
    let builder = match ip {
        Ip::V4 { src, dst, ttl } => PacketBuilder::ipv4(src, dst, ttl),
        Ip::V6 {
            src,
            dst,
            hop_limit,
        } => PacketBuilder::ipv6(src, dst, hop_limit),
    };
    let mut out = Vec::new();
    match l4 {
        L4::Tcp(sport, dport, flags, seq) => {
            let mut b = builder.tcp(sport, dport, seq, 64240);
            for flag in flags.chars() {
                b = match flag {
                    'S' => b.syn(),
                    'A' => b.ack(1),
                    'F' => b.fin(),
                    'R' => b.rst(),
                    _ => panic!("unknown TCP flag {flag}"),
                };
            }
            b.write(&mut out, payload)
        }
        L4::Udp(sport, dport) => builder.udp(sport, dport).write(&mut out, payload),
        L4::Icmp(t, c, rest) => match ip {
            Ip::V4 { .. } => builder.icmpv4_raw(t, c, rest).write(&mut out, payload),
            Ip::V6 { .. } => builder.icmpv6_raw(t, c, rest).write(&mut out, payload),
        },
    }
    .expect("fixture packets are well formed");
    out
}

/// Puts Ethernet in front of an IP packet.
pub fn eth(dst: [u8; 6], src: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    let mut frame = [dst, src].concat();
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(packet);
    frame
}

/// An uplink frame from the router to Rialto.
pub fn from_router(packet: &[u8]) -> Vec<u8> {
    eth(NODE_MAC, ROUTER_MAC, packet)
}

/// An uplink frame from Rialto to the router.
pub fn to_router(packet: &[u8]) -> Vec<u8> {
    eth(ROUTER_MAC, NODE_MAC, packet)
}

/// A VXLAN frame: outer Ethernet, IP (DF, TTL 64, ID 0), UDP (checksum 0
/// over IPv4, computed over IPv6), VXLAN, then `inner` (a whole frame).
/// `hash` is the flow's: the outer UDP source port and IPv6 flow label come from it.
pub fn vxlan(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    outer: Ip,
    hash: u64,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let sport = source_port(hash);
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&vni.to_be_bytes()[1..]);
    payload.push(0);
    payload.extend_from_slice(inner);
    let packet = match outer {
        Ip::V4 { .. } => {
            let mut p = ip(outer, L4::Udp(sport, 4789), &payload);
            p[26..28].fill(0);
            p
        }
        Ip::V6 {
            src,
            dst,
            hop_limit,
        } => {
            let header = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::try_new(flow_label_of(hash)).expect("20 bits"),
                payload_length: 0,
                next_header: IpNumber::UDP,
                hop_limit,
                source: src,
                destination: dst,
            };
            let mut out = Vec::new();
            PacketBuilder::ip(IpHeaders::Ipv6(header, Default::default()))
                .udp(sport, 4789)
                .write(&mut out, &payload)
                .expect("well formed");
            out
        }
    };
    eth(eth_dst, eth_src, &packet)
}

/// The outer UDP source port Rialto derives from a flow hash (RFC 7348 §5).
pub fn source_port(hash: u64) -> u16 {
    49152 | (hash as u16 & 0x3fff)
}

/// The outer IPv6 flow label Rialto derives from a flow hash.
fn flow_label_of(hash: u64) -> u32 {
    (hash >> 44) as u32 & 0xf_ffff
}

/// The hash of a client flow, as Rialto computes it.
pub fn hash4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> u64 {
    let m = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_ipv6_mapped().octets();
    flow_hash(&m(src), &m(dst), sport, dport, proto)
}

pub fn hash6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, proto: u8) -> u64 {
    flow_hash(&src, &dst, sport, dport, proto)
}

/// What the gateways' VXLAN devices hash their flows to, for the fixtures.
const PEER_HASH: u64 = 0x1234;

/// VXLAN from Rialto toward east's gateway (IPv4 underlay).
fn to_east(hash: u64, inner_packet: &[u8]) -> Vec<u8> {
    let inner = eth(EAST_MAC, NODE_MAC, inner_packet);
    let outer = Ip::V4 {
        src: NODE_VTEP,
        dst: EAST_VTEP,
        ttl: 64,
    };
    vxlan(ROUTER_MAC, NODE_MAC, outer, hash, EAST_VNI, &inner)
}

/// VXLAN from east's gateway to Rialto.
fn from_east(inner_packet: &[u8]) -> Vec<u8> {
    let inner = eth(NODE_MAC, POD_SIDE_MAC, inner_packet);
    let outer = Ip::V4 {
        src: EAST_VTEP,
        dst: NODE_VTEP,
        ttl: 64,
    };
    vxlan(NODE_MAC, ROUTER_MAC, outer, PEER_HASH, EAST_VNI, &inner)
}

/// VXLAN from Rialto toward west's gateway (IPv6 underlay).
fn to_west(hash: u64, inner_packet: &[u8]) -> Vec<u8> {
    let inner = eth(WEST_MAC, NODE_MAC, inner_packet);
    let outer = Ip::V6 {
        src: NODE_VTEP6,
        dst: WEST_VTEP6,
        hop_limit: 64,
    };
    vxlan(ROUTER_MAC, NODE_MAC, outer, hash, WEST_VNI, &inner)
}

/// VXLAN from west's gateway to Rialto.
fn from_west(inner_packet: &[u8]) -> Vec<u8> {
    let inner = eth(NODE_MAC, POD_SIDE_MAC, inner_packet);
    let outer = Ip::V6 {
        src: WEST_VTEP6,
        dst: NODE_VTEP6,
        hop_limit: 64,
    };
    vxlan(NODE_MAC, ROUTER_MAC, outer, PEER_HASH, WEST_VNI, &inner)
}

/// An ICMPv4 error as Rialto makes it: TOS 0xc0, no DF, TTL 64.
fn icmp4_error(src: [u8; 4], dst: [u8; 4], t: u8, c: u8, rest: [u8; 4], quote: &[u8]) -> Vec<u8> {
    let mut header = Ipv4Header::new(0, 64, IpNumber::ICMP, src, dst).expect("small");
    header.dont_fragment = false;
    header.dscp = IpDscp::try_new(0x30).expect("6 bits");
    let mut out = Vec::new();
    PacketBuilder::ip(IpHeaders::Ipv4(header, Default::default()))
        .icmpv4_raw(t, c, rest)
        .write(&mut out, quote)
        .expect("well formed");
    out
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// The table, in order: later steps rely on the flows earlier ones created.
pub fn table() -> Vec<Fixture> {
    let mut t = Vec::new();
    let c4 = |ttl| Ip::V4 {
        src: CLIENT,
        dst: WEB,
        ttl,
    };

    // TCP over IPv4 from the uplink to a backend in east, and back.
    let h = hash4(CLIENT, WEB, 40000, 80, TCP);
    let syn = ip(c4(64), L4::Tcp(40000, 80, "S", 1), b"");
    let syn_out = ip(
        Ip::V4 {
            src: SNAT,
            dst: POD,
            ttl: 63,
        },
        L4::Tcp(FIRST_PORT, 8080, "S", 1),
        b"",
    );
    t.push(tx(
        "tcp4 SYN to a VIP: DNAT, SNAT, VXLAN to east",
        from_router(&syn),
        to_east(h, &syn_out),
    ));
    let syn_ack = ip(
        Ip::V4 {
            src: POD,
            dst: SNAT,
            ttl: 64,
        },
        L4::Tcp(8080, FIRST_PORT, "SA", 7),
        b"",
    );
    let syn_ack_out = ip(
        Ip::V4 {
            src: WEB,
            dst: CLIENT,
            ttl: 63,
        },
        L4::Tcp(80, 40000, "SA", 7),
        b"",
    );
    t.push(tx(
        "tcp4 SYN-ACK from east: decap, reverse NAT, to the client",
        from_east(&syn_ack),
        to_router(&syn_ack_out),
    ));
    let data = ip(
        c4(64),
        L4::Tcp(40000, 80, "A", 2),
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let data_out = ip(
        Ip::V4 {
            src: SNAT,
            dst: POD,
            ttl: 63,
        },
        L4::Tcp(FIRST_PORT, 8080, "A", 2),
        b"GET / HTTP/1.1\r\n\r\n",
    );
    t.push(tx(
        "tcp4 data on the live flow",
        from_router(&data),
        to_east(h, &data_out),
    ));

    // UDP over IPv4 to a backend in west, over an IPv6 underlay; same pod
    // address as east's backend, another cluster.
    let hd = hash4(CLIENT, ECHO, 40001, 7, UDP);
    let query = ip(
        Ip::V4 {
            src: CLIENT,
            dst: ECHO,
            ttl: 64,
        },
        L4::Udp(40001, 7),
        b"query",
    );
    let query_out = ip(
        Ip::V4 {
            src: SNAT,
            dst: POD,
            ttl: 63,
        },
        L4::Udp(FIRST_PORT, 7007),
        b"query",
    );
    t.push(tx(
        "udp4 to a VIP: VXLAN over IPv6 to west",
        from_router(&query),
        to_west(hd, &query_out),
    ));
    let answer = ip(
        Ip::V4 {
            src: POD,
            dst: SNAT,
            ttl: 64,
        },
        L4::Udp(7007, FIRST_PORT),
        b"answer",
    );
    let answer_out = ip(
        Ip::V4 {
            src: ECHO,
            dst: CLIENT,
            ttl: 63,
        },
        L4::Udp(7, 40001),
        b"answer",
    );
    t.push(tx(
        "udp4 answer from west over IPv6",
        from_west(&answer),
        to_router(&answer_out),
    ));
    let late = ip(
        Ip::V4 {
            src: POD,
            dst: SNAT,
            ttl: 1,
        },
        L4::Udp(7007, FIRST_PORT),
        b"answer",
    );
    t.push(tx(
        "udp4 answer from west with TTL 1: ICMP time exceeded back into west's tunnel",
        from_west(&late),
        to_west(
            hash4(SNAT, POD, 0, 0, UDP),
            &icmp4_error(SNAT, POD, 11, 0, [0; 4], &late),
        ),
    ));
    let unreachable = ip(
        Ip::V4 {
            src: POD,
            dst: SNAT,
            ttl: 64,
        },
        L4::Icmp(3, 3, [0; 4]),
        &query_out,
    );
    // The quote gets its addresses and ports back; its TTL stays as sent.
    let query_quoted = ip(
        Ip::V4 {
            src: CLIENT,
            dst: ECHO,
            ttl: 63,
        },
        L4::Udp(40001, 7),
        b"query",
    );
    let unreachable_out = ip(
        Ip::V4 {
            src: ECHO,
            dst: CLIENT,
            ttl: 63,
        },
        L4::Icmp(3, 3, [0; 4]),
        &query_quoted,
    );
    t.push(tx(
        "ICMP port unreachable from west: translated, quote included",
        from_west(&unreachable),
        to_router(&unreachable_out),
    ));

    // TCP over IPv6, to east over IPv4.
    let h6 = hash6(CLIENT6, WEB6, 40002, 80, TCP);
    let c6 = |hop_limit| Ip::V6 {
        src: CLIENT6,
        dst: WEB6,
        hop_limit,
    };
    let syn6 = ip(c6(64), L4::Tcp(40002, 80, "S", 1), b"");
    let syn6_out = ip(
        Ip::V6 {
            src: SNAT6,
            dst: POD6,
            hop_limit: 63,
        },
        L4::Tcp(FIRST_PORT, 8080, "S", 1),
        b"",
    );
    t.push(tx(
        "tcp6 SYN to an IPv6 VIP, to east over IPv4",
        from_router(&syn6),
        to_east(h6, &syn6_out),
    ));
    let syn_ack6 = ip(
        Ip::V6 {
            src: POD6,
            dst: SNAT6,
            hop_limit: 64,
        },
        L4::Tcp(8080, FIRST_PORT, "SA", 7),
        b"",
    );
    let syn_ack6_out = ip(
        Ip::V6 {
            src: WEB6,
            dst: CLIENT6,
            hop_limit: 63,
        },
        L4::Tcp(80, 40002, "SA", 7),
        b"",
    );
    t.push(tx(
        "tcp6 SYN-ACK back to the client",
        from_east(&syn_ack6),
        to_router(&syn_ack6_out),
    ));

    // A client inside west reaches the VIP through west's tunnel; the
    // answer from east goes back into west's tunnel.
    let hw = hash4(POD, WEB, 40003, 80, TCP);
    let pod_syn = ip(
        Ip::V4 {
            src: POD,
            dst: WEB,
            ttl: 64,
        },
        L4::Tcp(40003, 80, "S", 1),
        b"",
    );
    let pod_syn_out = ip(
        Ip::V4 {
            src: SNAT,
            dst: POD,
            ttl: 63,
        },
        L4::Tcp(FIRST_PORT + 1, 8080, "S", 1),
        b"",
    );
    t.push(tx(
        "tcp4 SYN from a pod in west to a VIP, to east",
        from_west(&pod_syn),
        to_east(hw, &pod_syn_out),
    ));
    let east_ack = ip(
        Ip::V4 {
            src: POD,
            dst: SNAT,
            ttl: 64,
        },
        L4::Tcp(8080, FIRST_PORT + 1, "SA", 7),
        b"",
    );
    let east_ack_out = ip(
        Ip::V4 {
            src: WEB,
            dst: POD,
            ttl: 63,
        },
        L4::Tcp(80, 40003, "SA", 7),
        b"",
    );
    t.push(tx(
        "tcp4 SYN-ACK from east, back into west's tunnel",
        from_east(&east_ack),
        to_west(hw, &east_ack_out),
    ));

    // Path MTU: too big once encapsulated.
    let big = ip(c4(64), L4::Tcp(40000, 80, "A", 3), &[0x61; 1460 - 40]);
    let mtu = 1500u16 - 50;
    let frag_needed = icmp4_error(
        WEB,
        CLIENT,
        3,
        4,
        [0, 0, (mtu >> 8) as u8, mtu as u8],
        &big[..548],
    );
    t.push(tx(
        "tcp4 too big for the tunnel: ICMP fragmentation needed, MTU 1450",
        from_router(&big),
        to_router(&frag_needed),
    ));
    let big6 = ip(c6(64), L4::Tcp(40002, 80, "A", 3), &[0x61; 1460 - 60]);
    let too_big = ip(
        Ip::V6 {
            src: WEB6,
            dst: CLIENT6,
            hop_limit: 64,
        },
        L4::Icmp(2, 0, u32::from(mtu).to_be_bytes()),
        &big6[..1280 - 48],
    );
    t.push(tx(
        "tcp6 too big for the tunnel: ICMPv6 packet too big, MTU 1450",
        from_router(&big6),
        to_router(&too_big),
    ));
    let mut no_df = ip(
        Ip::V4 {
            src: CLIENT,
            dst: ECHO,
            ttl: 64,
        },
        L4::Udp(40001, 7),
        &[0x62; 1472],
    );
    clear_df(&mut no_df);
    t.push(drop(
        "udp4 too big without DF: dropped, no ICMP asked for",
        from_router(&no_df),
        DropReason::TooBig,
    ));

    // TTL.
    let expiring = ip(c4(1), L4::Tcp(40000, 80, "A", 4), b"x");
    let time_exceeded = icmp4_error(WEB, CLIENT, 11, 0, [0; 4], &expiring);
    t.push(tx(
        "tcp4 with TTL 1: ICMP time exceeded from the VIP",
        from_router(&expiring),
        to_router(&time_exceeded),
    ));

    // Drops.
    let mut arp = from_router(&syn);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    t.push(drop("ARP", arp, DropReason::NotIp));
    t.push(drop(
        "truncated IPv4",
        from_router(&syn)[..30].to_vec(),
        DropReason::Malformed,
    ));
    let stray = ip(c4(64), L4::Tcp(40009, 80, "A", 2), b"");
    t.push(drop(
        "tcp4 ACK to a VIP without a flow",
        from_router(&stray),
        DropReason::NoFlow,
    ));
    let elsewhere = ip(
        Ip::V4 {
            src: CLIENT,
            dst: [198, 18, 100, 9],
            ttl: 64,
        },
        L4::Udp(1, 2),
        b"",
    );
    t.push(drop(
        "udp4 to no VIP",
        from_router(&elsewhere),
        DropReason::NotOwned,
    ));
    let late = ip(
        Ip::V4 {
            src: POD,
            dst: SNAT,
            ttl: 64,
        },
        L4::Udp(7007, 9999),
        b"late",
    );
    t.push(drop(
        "udp4 to a SNAT port with no flow",
        from_east(&late),
        DropReason::NoFlow,
    ));
    let stranger = vxlan(
        NODE_MAC,
        ROUTER_MAC,
        Ip::V4 {
            src: [198, 18, 2, 99],
            dst: NODE_VTEP,
            ttl: 64,
        },
        PEER_HASH,
        EAST_VNI,
        &eth(NODE_MAC, POD_SIDE_MAC, &answer),
    );
    t.push(drop(
        "VXLAN from an unknown peer",
        stranger,
        DropReason::UnknownPeer,
    ));
    let mut wrong_vni = from_east(&syn_ack);
    wrong_vni[14 + 20 + 8 + 6] = WEST_VNI as u8;
    t.push(drop(
        "VXLAN from east with west's VNI",
        wrong_vni,
        DropReason::UnknownVni,
    ));
    let mut no_i = from_east(&syn_ack);
    no_i[14 + 20 + 8] = 0;
    t.push(drop(
        "VXLAN without the I flag",
        no_i,
        DropReason::VxlanInvalid,
    ));
    let mut fragment = query.clone();
    fragment[6] |= 0x20;
    fix_ipv4_checksum(&mut fragment);
    t.push(drop(
        "udp4 first fragment",
        from_router(&fragment),
        DropReason::Fragment,
    ));
    t
}

fn clear_df(packet: &mut [u8]) {
    packet[6] &= !0x40;
    fix_ipv4_checksum(packet);
}

fn fix_ipv4_checksum(packet: &mut [u8]) {
    let header = Ipv4Header::from_slice(packet).expect("IPv4").0;
    packet[10..12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
}

/// A frame decoded layer by layer (VXLAN payloads included), for diffs.
pub fn layers(frame: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(frame.to_vec());
    while let Some(frame) = next.take() {
        match SlicedPacket::from_ethernet(&frame) {
            Err(e) => out.push(format!("undecodable: {e} ({} bytes)", frame.len())),
            Ok(p) => {
                if let Some(link) = &p.link {
                    out.push(format!("{:?}", link.to_header()));
                }
                match &p.net {
                    Some(etherparse::NetSlice::Ipv4(ip)) => {
                        out.push(format!("{:?}", ip.header().to_header()))
                    }
                    Some(etherparse::NetSlice::Ipv6(ip)) => {
                        out.push(format!("{:?}", ip.header().to_header()))
                    }
                    _ => {}
                }
                match &p.transport {
                    Some(TransportSlice::Udp(udp)) => {
                        out.push(format!("{:?}", udp.to_header()));
                        if udp.destination_port() == 4789 && udp.payload().len() >= 8 {
                            out.push(format!("VXLAN {:02x?}", &udp.payload()[..8]));
                            next = Some(udp.payload()[8..].to_vec());
                        } else {
                            out.push(format!("payload {:02x?}", udp.payload()));
                        }
                    }
                    Some(TransportSlice::Tcp(tcp)) => {
                        out.push(format!("{:?}", tcp.to_header()));
                        out.push(format!("payload {} bytes", tcp.payload().len()));
                    }
                    Some(TransportSlice::Icmpv4(icmp)) => {
                        out.push(format!("{:?} {}", icmp.header(), quote(icmp.payload())))
                    }
                    Some(TransportSlice::Icmpv6(icmp)) => {
                        out.push(format!("{:?} {}", icmp.header(), quote(icmp.payload())))
                    }
                    None => {}
                }
            }
        }
    }
    out
}

/// An ICMP error's quote: its length and its first 48 bytes (the headers).
fn quote(payload: &[u8]) -> String {
    format!(
        "quote of {} bytes {:02x?}",
        payload.len(),
        &payload[..payload.len().min(48)]
    )
}

/// The layers that differ between two frames, one pair per line.
pub fn diff(expected: &[u8], actual: &[u8]) -> String {
    let (e, a) = (layers(expected), layers(actual));
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            out += &format!(
                "layer {i}:\n  expected {}\n  actual   {}\n",
                x.map_or("-", |s| s),
                y.map_or("-", |s| s)
            );
        }
    }
    if out.is_empty() && expected != actual {
        out = format!(
            "same layers, different bytes:\n  expected {expected:02x?}\n  actual   {actual:02x?}\n"
        );
    }
    out
}
