//! The XDP steering program's classification, run in the kernel with
//! `BPF_PROG_TEST_RUN`: one frame for each rule and each near miss, the
//! expected action out and the expected reason counted.
//!
//! Run twice: with no AF_XDP socket on the queue every owned frame must fall
//! back to the kernel (fail open); with a real socket it must be redirected.

use std::net::IpAddr;

use etherparse::{IpHeaders, Ipv4Header, PacketBuilder};
use rialto::afxdp::{PortConfig, XskPort};
use rialto_dataplane::wire::ipv6::{self, MAX_EXTENSION_HEADERS as IPV6_EXT_MAX};
use rialto_rules::{Proto, Steering as Rules};
use rialto_testbed::{Pair, in_netns};
use xdp_redirect::{Reason, Steering};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT: [u8; 4] = [198, 18, 0, 2];
const NODE: [u8; 4] = [198, 18, 0, 1];
const VIP4: [u8; 4] = [198, 18, 100, 1];
const SNAT: [u8; 4] = [198, 18, 200, 1];
const GATEWAY: [u8; 4] = [198, 18, 2, 1];
const STRANGER: [u8; 4] = [198, 18, 2, 9];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const VIP6: [u8; 16] = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const GATEWAY6: [u8; 16] = [0xfd, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const NODE6: [u8; 16] = [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn rules() -> Rules {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    Rules {
        vips: vec![
            "198.18.100.1:80/TCP".parse().unwrap(),
            "[fd00:100::1]:53/UDP".parse().unwrap(),
        ],
        tunnel_peers: vec![ip("198.18.2.1"), ip("fd00:2::1")],
        snat_addrs: vec![ip("198.18.200.1")],
        vteps: vec![ip("198.18.0.1"), ip("fd00:1::1")],
        ..Rules::default()
    }
}

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(PEER_MAC, NODE_MAC)
}

macro_rules! frame {
    ($builder:expr) => {{
        let mut out = Vec::new();
        $builder.write(&mut out, b"payload").unwrap();
        out
    }};
}

fn l4_4(src: [u8; 4], dst: [u8; 4], proto: Proto, dport: u16) -> Vec<u8> {
    let ip = eth().ipv4(src, dst, 64);
    match proto {
        Proto::Tcp => frame!(ip.tcp(40000, dport, 1, 1024)),
        Proto::Udp => frame!(ip.udp(40000, dport)),
    }
}

fn udp6(src: [u8; 16], dst: [u8; 16], dport: u16) -> Vec<u8> {
    frame!(eth().ipv6(src, dst, 64).udp(40000, dport))
}

/// Sets the IPv4 flags/fragment-offset field of an untagged frame.
fn ipv4_fragment(mut frame: Vec<u8>, flags_offset: u16) -> Vec<u8> {
    frame[20..22].copy_from_slice(&flags_offset.to_be_bytes());
    frame
}

/// Puts an 8-byte IPv6 extension header of type `kind` before the transport header.
fn ipv6_ext(mut frame: Vec<u8>, kind: u8) -> Vec<u8> {
    let next = frame[14 + 6];
    frame[14 + 6] = kind;
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    // Fragment header: next, reserved, offset 0 with M set; else PadN options.
    let ext = if kind == 44 {
        [next, 0, 0, 1, 0, 0, 0, 1]
    } else {
        [next, 0, 1, 4, 0, 0, 0, 0]
    };
    frame.splice(54..54, ext);
    frame
}

/// Puts a 12-byte authentication header (RFC 4302) before the transport header.
fn ipv6_ah(mut frame: Vec<u8>) -> Vec<u8> {
    let next = frame[14 + 6];
    frame[14 + 6] = 51;
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) + 12;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    frame.splice(54..54, [next, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
    frame
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&CLIENT);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&NODE);
    f
}

struct Case {
    what: &'static str,
    frame: Vec<u8>,
    reason: Reason,
}

fn cases() -> Vec<Case> {
    use Proto::{Tcp, Udp};
    use Reason::*;
    let with_options = {
        let mut ip = Ipv4Header::new(0, 64, etherparse::IpNumber::TCP, CLIENT, VIP4).unwrap();
        ip.options = [1, 1, 1, 0].into();
        frame!(
            eth()
                .ip(IpHeaders::Ipv4(ip, Default::default()))
                .tcp(40000, 80, 1, 1024)
        )
    };
    let case = |what, frame, reason| Case {
        what,
        frame,
        reason,
    };
    vec![
        case("TCP to a VIP", l4_4(CLIENT, VIP4, Tcp, 80), RedirectVip),
        case(
            "TCP to a VIP, other port",
            l4_4(CLIENT, VIP4, Tcp, 81),
            PassNotOwned,
        ),
        case(
            "UDP to a TCP VIP",
            l4_4(CLIENT, VIP4, Udp, 80),
            PassNotOwned,
        ),
        case("TCP to a VIP, IPv4 options", with_options, RedirectVip),
        case(
            "TCP to a VIP, 802.1Q tag",
            frame!(
                eth()
                    .single_vlan(42.try_into().unwrap())
                    .ipv4(CLIENT, VIP4, 64)
                    .tcp(40000, 80, 1, 1024)
            ),
            RedirectVip,
        ),
        case("UDP to an IPv6 VIP", udp6(CLIENT6, VIP6, 53), RedirectVip),
        case(
            "UDP to an IPv6 VIP behind hop-by-hop options",
            ipv6_ext(udp6(CLIENT6, VIP6, 53), 0),
            RedirectVip,
        ),
        case(
            "UDP to an IPv6 VIP, fragment header",
            ipv6_ext(udp6(CLIENT6, VIP6, 53), 44),
            PassFragment,
        ),
        case(
            "VXLAN from a tunnel peer",
            l4_4(GATEWAY, NODE, Udp, 4789),
            RedirectVxlan,
        ),
        case(
            "VXLAN from a tunnel peer to another address than a VTEP",
            l4_4(GATEWAY, [198, 18, 0, 9], Udp, 4789),
            PassNotOwned,
        ),
        case(
            "UDP to an IPv6 VIP behind an authentication header",
            ipv6_ah(udp6(CLIENT6, VIP6, 53)),
            RedirectVip,
        ),
        case(
            "UDP to an IPv6 VIP behind as many extension headers as are walked",
            (0..IPV6_EXT_MAX).fold(udp6(CLIENT6, VIP6, 53), |f, _| ipv6_ext(f, 60)),
            RedirectVip,
        ),
        case(
            "UDP to an IPv6 VIP behind one extension header more",
            (0..=IPV6_EXT_MAX).fold(udp6(CLIENT6, VIP6, 53), |f, _| ipv6_ext(f, 60)),
            PassMalformed,
        ),
        case(
            "VXLAN from a stranger",
            l4_4(STRANGER, NODE, Udp, 4789),
            PassNotOwned,
        ),
        case(
            "UDP from a peer, not VXLAN",
            l4_4(GATEWAY, NODE, Udp, 4790),
            PassNotOwned,
        ),
        case(
            "TCP from a peer to 4789",
            l4_4(GATEWAY, NODE, Tcp, 4789),
            PassNotOwned,
        ),
        case(
            "VXLAN over IPv6 from a peer",
            udp6(GATEWAY6, NODE6, 4789),
            RedirectVxlan,
        ),
        case(
            "TCP to a SNAT address",
            l4_4(GATEWAY, SNAT, Tcp, 1234),
            RedirectSnat,
        ),
        case(
            "ICMP to a SNAT address",
            frame!(eth().ipv4(GATEWAY, SNAT, 64).icmpv4_echo_request(1, 1)),
            RedirectSnat,
        ),
        case(
            "a later fragment to a SNAT address",
            ipv4_fragment(l4_4(GATEWAY, SNAT, Udp, 1234), 0x0010),
            RedirectSnat,
        ),
        case(
            "a first fragment to a VIP",
            ipv4_fragment(l4_4(CLIENT, VIP4, Tcp, 80), 0x2000),
            PassFragment,
        ),
        case(
            "ICMP echo to the node",
            frame!(eth().ipv4(CLIENT, NODE, 64).icmpv4_echo_request(1, 1)),
            PassNotOwned,
        ),
        case("ARP", arp(), PassNotIp),
        case(
            "IPv4 header cut short",
            l4_4(CLIENT, VIP4, Tcp, 80)[..30].to_vec(),
            PassMalformed,
        ),
        case(
            "ports cut short",
            l4_4(CLIENT, VIP4, Tcp, 80)[..36].to_vec(),
            PassMalformed,
        ),
        case(
            "IPv4 IHL below 5",
            {
                let mut f = l4_4(CLIENT, VIP4, Tcp, 80);
                f[14] = 0x44;
                f
            },
            PassMalformed,
        ),
        case(
            "IPv4 ethertype, no header",
            l4_4(CLIENT, VIP4, Tcp, 80)[..14].to_vec(),
            PassMalformed,
        ),
    ]
}

fn is_redirect(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::RedirectVip | Reason::RedirectVxlan | Reason::RedirectSnat
    )
}

/// Runs every case; `socket` says whether an AF_XDP socket sits on queue 0.
fn check_all(steering: &Steering, socket: bool) {
    let mut failures = Vec::new();
    for case in cases() {
        let before = steering.counters().unwrap();
        let action = steering
            .test_run(&case.frame)
            .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        let counted = steering.counters().unwrap().since(&before);
        let (want_action, want_reason) = match (is_redirect(case.reason), socket) {
            (true, true) => (XDP_REDIRECT, case.reason),
            (true, false) => (XDP_PASS, Reason::PassNoSocket),
            (false, _) => (XDP_PASS, case.reason),
        };
        let got: Vec<_> = counted.iter().filter(|(_, c)| c.packets > 0).collect();
        let want_bytes = case.frame.len() as u64;
        if action != want_action
            || got.len() != 1
            || got[0].0 != want_reason
            || got[0].1.packets != 1
            || got[0].1.bytes != want_bytes
        {
            failures.push(format!(
                "{}: got action {action} counted {got:?}, want action {want_action} \
                 counted {want_reason:?} (1 packet, {want_bytes} bytes)",
                case.what
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "socket={socket}:\n{}",
        failures.join("\n")
    );
}

#[test]
fn classifies_every_rule_and_near_miss() {
    let pair = Pair::up(1);
    in_netns(&pair.node_ns, || {
        let mut steering = Steering::load(&rules()).expect("the steering program loads");
        // What the config check holds configs to is what the maps hold.
        use rialto_tables::steering_capacity::{PEERS, SNAT_ADDRESSES, VIPS, VTEPS};
        assert_eq!(
            steering.capacities().unwrap(),
            [
                ("rialto_vips", VIPS as u32),
                ("rialto_peers", PEERS as u32),
                ("rialto_snat", SNAT_ADDRESSES as u32),
                ("rialto_vteps", VTEPS as u32),
            ]
        );
        // Rules beyond a map are refused before anything is written.
        let mut too_many = rules();
        too_many.vteps = (0..=VTEPS)
            .map(|i| std::net::Ipv4Addr::new(198, 18, 9, i as u8).into())
            .collect();
        let refused = steering.check_fits(&too_many).unwrap_err().to_string();
        assert_eq!(
            refused,
            format!(
                "{} entries for the rialto_vteps map, which holds {VTEPS}",
                VTEPS + 1
            )
        );
        steering.check_fits(&rules()).expect("the test's rules fit");
        check_all(&steering, false);

        let port = XskPort::open(&pair.node_if, 0, &PortConfig::default()).expect("AF_XDP socket");
        steering.register_socket(0, port.raw_fd()).unwrap();
        check_all(&steering, true);
    });
}

/// The XDP program and the userspace parser walk IPv6 extension headers
/// equally far (`RIALTO_IPV6_EXT_MAX`, `MAX_EXTENSION_HEADERS`): for
/// chains of every length around the limit, of
/// destination options and authentication headers, the program steers the
/// frame exactly when the parser finds its UDP header.
#[test]
fn the_program_and_the_parser_walk_extension_headers_equally_far() {
    let pair = Pair::up(1);
    in_netns(&pair.node_ns, || {
        let mut steering = Steering::load(&rules()).expect("the steering program loads");
        let port = XskPort::open(&pair.node_if, 0, &PortConfig::default()).expect("AF_XDP socket");
        steering.register_socket(0, port.raw_fd()).unwrap();
        let mut seen = Vec::new();
        for headers in 0..=IPV6_EXT_MAX + 2 {
            for ah in [false, true] {
                let mut frame = udp6(CLIENT6, VIP6, 53);
                for i in 0..headers {
                    frame = if ah && i == 0 {
                        ipv6_ah(frame)
                    } else {
                        ipv6_ext(frame, 60)
                    };
                }
                let steered = steering.test_run(&frame).unwrap() == XDP_REDIRECT;
                let parsed = ipv6::Packet::new_checked(&frame[14..])
                    .and_then(|p| p.upper_layer())
                    .is_ok_and(|u| u.protocol == 17);
                assert_eq!(steered, parsed, "{headers} headers (AH first: {ah})");
                seen.push(steered);
            }
        }
        assert!(
            seen.contains(&true) && seen.contains(&false),
            "both outcomes seen"
        );
    });
}
