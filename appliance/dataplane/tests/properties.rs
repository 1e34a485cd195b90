//! Properties of the pipeline's stages over random packets (proptest).

use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use rialto_dataplane::{
    OwnedFrame, Pipeline, Verdict,
    pipeline::{
        encap::{self, Link, Tunnel},
        nat::{self, Headers},
        packet::{self, mapped},
    },
    wire::checksum,
};
use rialto_fixtures::{
    self as fixtures, EAST_MAC, EAST_VTEP, Ip, L4, NODE_MAC, NODE_VTEP, ROUTER_MAC,
};
use rialto_tables::Snapshot;

/// The fixture tables, compiled once (three Maglev tables of 65537 slots).
static TABLES: LazyLock<Arc<Snapshot>> = LazyLock::new(fixtures::tables);

/// A random TCP or UDP packet over IPv4 or IPv6.
fn packets() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<(u16, u16)>(),
        1u8..=255,
    )
        .prop_flat_map(|(v6, tcp, src, dst, ports, ttl)| {
            proptest::collection::vec(any::<u8>(), 0..1400).prop_map(move |payload| {
                let l4 = if tcp {
                    L4::Tcp(ports.0, ports.1, "A", 7)
                } else {
                    L4::Udp(ports.0, ports.1)
                };
                let ip = if v6 {
                    Ip::V6 {
                        src,
                        dst,
                        hop_limit: ttl,
                    }
                } else {
                    Ip::V4 {
                        src: src[..4].try_into().unwrap(),
                        dst: dst[..4].try_into().unwrap(),
                        ttl,
                    }
                };
                fixtures::ip(ip, l4, &payload)
            })
        })
}

proptest! {
    /// VXLAN encapsulation, then decapsulation, gives back the inner frame.
    #[test]
    fn encap_then_decap_is_the_identity(packet in packets(), hash in any::<u64>(), v6_underlay in any::<bool>()) {
        let tables = Arc::clone(&TABLES);
        let mut frame = OwnedFrame::new(&fixtures::from_router(&packet));
        // As east's gateway would send it to Rialto.
        let (local, remote) = if v6_underlay {
            (fixtures::WEST_VTEP6, fixtures::NODE_VTEP6)
        } else {
            (mapped(EAST_VTEP), mapped(NODE_VTEP))
        };
        let vni = if v6_underlay { fixtures::WEST_VNI } else { fixtures::EAST_VNI };
        let tunnel = Tunnel { vni, v6: v6_underlay, local, remote, inner_dst: NODE_MAC, inner_src: EAST_MAC, port: 4789 };
        let link = Link { src: ROUTER_MAC, dst: NODE_MAC, tag: None };
        let ethertype = if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        frame.with(|f| {
            let at = f.start() + 14;
            let end = at + packet.len();
            assert!(encap::encapsulate(f, at, end, ethertype, 0, hash, &tunnel, &link));
        });
        let mut pipeline = Pipeline::balance(tables, 0, 1, NODE_MAC);
        let Pipeline::Balance(balancer) = &mut pipeline else { unreachable!() };
        let verdict = frame.with(|f| balancer.decapsulate_only(f));
        prop_assert_eq!(verdict, Verdict::Tx);
        prop_assert_eq!(frame.data(), &fixtures::eth(NODE_MAC, EAST_MAC, &packet)[..]);
    }

    /// NAT, then the reverse NAT, restores the packet byte for byte,
    /// checksums included.
    #[test]
    fn nat_then_reverse_nat_restores_the_packet(mut p in packets(), new_src in any::<[u8; 16]>(), new_dst in any::<[u8; 16]>(), ports in any::<(u16, u16)>()) {
        let original = p.clone();
        let ethertype = if p[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
        let ip = packet::Ip::parse(&p, 0, ethertype).unwrap();
        let h = Headers::from(&ip);
        let (new_src, new_dst) = if ip.v6 { (new_src, new_dst) } else {
            (mapped(new_src[..4].try_into().unwrap()), mapped(new_dst[..4].try_into().unwrap()))
        };
        let l4 = ip.l4;
        let (sport, dport) = (u16::from_be_bytes([p[l4], p[l4 + 1]]), u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]));
        nat::rewrite(&mut p, &h, (&new_src, ports.0), (&new_dst, ports.1));
        // The rewritten packet is valid on its own: etherparse, computing
        // every checksum afresh, agrees with the incremental updates.
        let rewritten = p.clone();
        let sliced = etherparse::SlicedPacket::from_ip(&rewritten).unwrap();
        if let Some(etherparse::NetSlice::Ipv4(n)) = &sliced.net {
            let header = n.header();
            prop_assert_eq!(header.to_header().calc_header_checksum(), header.header_checksum(), "IPv4 header checksum after NAT");
        }
        let (src, dst): (Vec<u8>, Vec<u8>) = match &sliced.net {
            Some(etherparse::NetSlice::Ipv4(n)) => (n.header().source().to_vec(), n.header().destination().to_vec()),
            Some(etherparse::NetSlice::Ipv6(n)) => (n.header().source().to_vec(), n.header().destination().to_vec()),
            _ => unreachable!("IP"),
        };
        let expected = match &sliced.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => match (src.len(), &sliced.net) {
                (4, _) => t.calc_checksum_ipv4(src[..].try_into().unwrap(), dst[..].try_into().unwrap()).unwrap(),
                _ => t.calc_checksum_ipv6(src[..].try_into().unwrap(), dst[..].try_into().unwrap()).unwrap(),
            },
            Some(etherparse::TransportSlice::Udp(u)) => {
                let header = u.to_header();
                match src.len() {
                    4 => header.calc_checksum_ipv4_raw(src[..].try_into().unwrap(), dst[..].try_into().unwrap(), u.payload()).unwrap(),
                    _ => header.calc_checksum_ipv6_raw(src[..].try_into().unwrap(), dst[..].try_into().unwrap(), u.payload()).unwrap(),
                }
            }
            other => panic!("TCP or UDP, not {other:?}"),
        };
        let actual = match &sliced.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => t.checksum(),
            Some(etherparse::TransportSlice::Udp(u)) => u.checksum(),
            _ => unreachable!(),
        };
        prop_assert_eq!(actual, expected, "the transport checksum after NAT");
        nat::rewrite(&mut p, &h, (&ip.src, sport), (&ip.dst, dport));
        prop_assert_eq!(p, original);
    }

    /// Incremental updates (RFC 1624) equal a full recomputation.
    #[test]
    fn incremental_checksum_equals_recomputation(
        mut data in proptest::collection::vec(any::<u8>(), 2..512).prop_map(|mut d| { d.truncate(d.len() & !1); d }),
        edits in proptest::collection::vec((any::<usize>(), any::<[u8; 2]>()), 1..8),
    ) {
        let mut c = checksum::finish(checksum::sum(&data));
        for (at, new) in edits {
            let at = (at % (data.len() / 2)) * 2;
            c = checksum::update(c, &data[at..at + 2], &new);
            data[at..at + 2].copy_from_slice(&new);
            let full = checksum::finish(checksum::sum(&data));
            // 0x0000 and 0xffff are the two ones'-complement zeros.
            prop_assert!(c == full || (c ^ full) == 0xffff && (c == 0 || full == 0), "{c:#x} vs {full:#x}");
        }
    }
}
