//! Locating an IP packet and its flow in a frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    DropReason, Verdict,
    wire::{Error, Layer, ethernet, icmp, ipv4, ipv6, tcp, udp},
};

pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMPV6: u8 = 58;

/// An address of either family: IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`),
/// so both share one flow table. The same layout as the XDP program's.
pub type Addr = [u8; 16];

pub fn mapped(v4: [u8; 4]) -> Addr {
    Ipv4Addr::from(v4).to_ipv6_mapped().octets()
}

pub fn to_ip(addr: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn from_ip(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// Whether `addr` is an IPv4 address (mapped into IPv6's space).
#[inline]
pub fn is_v4_mapped(addr: &Addr) -> bool {
    // ::ffff:0:0/96, compared as one number (a slice comparison is a loop).
    u128::from_be_bytes(*addr) >> 32 == 0xffff
}

/// The IPv4 address inside a mapped [`Addr`].
pub fn v4(addr: &Addr) -> [u8; 4] {
    [addr[12], addr[13], addr[14], addr[15]]
}

/// An IP packet in a frame: where its headers are and what they say.
/// Offsets count from the start of the frame.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub v6: bool,
    /// Offset of the IP header.
    pub at: usize,
    /// Length of the packet, headers included, Ethernet padding excluded.
    pub len: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// The transport protocol (after IPv6 extension headers).
    pub proto: u8,
    pub src: Addr,
    pub dst: Addr,
    pub ttl: u8,
    /// IPv4 DF; IPv6 never fragments in transit.
    pub dont_fragment: bool,
    pub fragment: bool,
}

impl Ip {
    /// Parses the IP packet at `at`, of the family `ethertype` says.
    pub fn parse(frame: &[u8], at: usize, ethertype: u16) -> Result<Self, Verdict> {
        match ethertype {
            ethernet::ethertype::IPV4 => {
                let buf = frame.get(at..).ok_or(Error::Truncated(Layer::Ipv4))?;
                let p = ipv4::Packet::new_checked(buf)?;
                if !p.verify_checksum() {
                    return Err(Verdict::Drop(DropReason::BadIpv4Checksum));
                }
                Ok(Self {
                    v6: false,
                    at,
                    len: p.total_len(),
                    l4: at + p.header_len(),
                    proto: p.protocol(),
                    src: mapped(p.src()),
                    dst: mapped(p.dst()),
                    ttl: p.ttl(),
                    dont_fragment: p.dont_fragment(),
                    fragment: p.is_fragment(),
                })
            }
            ethernet::ethertype::IPV6 => {
                let buf = frame.get(at..).ok_or(Error::Truncated(Layer::Ipv6))?;
                let p = ipv6::Packet::new_checked(buf)?;
                let upper = p.upper_layer()?;
                Ok(Self {
                    v6: true,
                    at,
                    len: p.total_len(),
                    l4: at + upper.offset,
                    proto: upper.protocol,
                    src: p.src(),
                    dst: p.dst(),
                    ttl: p.hop_limit(),
                    dont_fragment: true,
                    fragment: upper.fragment,
                })
            }
            _ => Err(Verdict::Drop(DropReason::NotIp)),
        }
    }

    pub fn end(&self) -> usize {
        self.at + self.len
    }

    pub fn ethertype(&self) -> u16 {
        if self.v6 {
            ethernet::ethertype::IPV6
        } else {
            ethernet::ethertype::IPV4
        }
    }

    pub fn is_icmp(&self) -> bool {
        self.proto == if self.v6 { ICMPV6 } else { ICMP }
    }
}

/// The transport header's ports, and TCP's control bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
    /// TCP control bits; zero for UDP.
    pub tcp_flags: u8,
}

impl Ports {
    /// Reads the ports of a whole TCP or UDP header at `ip.l4`, and refuses
    /// what no router passes on: TCP control bits no connection sends, UDP
    /// over IPv6 without a checksum.
    pub fn parse(frame: &[u8], ip: &Ip) -> Result<Self, Verdict> {
        let l4 = &frame[ip.l4..ip.end()];
        match ip.proto {
            TCP => {
                let s = tcp::Segment::new_checked(l4)?;
                if !tcp::flags::valid(s.flags()) {
                    return Err(Verdict::Drop(DropReason::BadTcpFlags));
                }
                Ok(Self {
                    src: s.src_port(),
                    dst: s.dst_port(),
                    tcp_flags: s.flags(),
                })
            }
            UDP => {
                let d = udp::Datagram::new_checked(l4)?;
                if ip.v6 && d.checksum() == 0 {
                    return Err(Verdict::Drop(DropReason::Udp6ZeroChecksum));
                }
                Ok(Self {
                    src: d.src_port(),
                    dst: d.dst_port(),
                    tcp_flags: 0,
                })
            }
            _ => Err(Verdict::Drop(DropReason::UnknownL4)),
        }
    }
}

/// Whether no packet may come from `addr` (RFC 1812 §5.3.7, RFC 4291):
/// unspecified, loopback, multicast, limited broadcast, reserved (240/4,
/// 0/8), or an IPv4-mapped address in an IPv6 header (`v6`).
pub fn is_martian(addr: &Addr, v6: bool) -> bool {
    if is_v4_mapped(addr) {
        // What `not_a_host` says of IPv4 by the first byte: 0/8 (0.0.0.0
        // in it), 127/8, multicast and 240/4 (the broadcast address in it).
        return v6 || matches!(addr[12], 0 | 127 | 224..);
    }
    rialto_tables::not_a_host(IpAddr::V6(Ipv6Addr::from(*addr))).is_some()
}

/// Whether the packet is an ICMP error (which quotes a packet of a flow).
pub fn is_icmp_error(frame: &[u8], ip: &Ip) -> bool {
    if !ip.is_icmp() || ip.fragment {
        return false;
    }
    let Ok(m) = icmp::Message::new_checked(&frame[ip.l4..ip.end()]) else {
        return false;
    };
    if ip.v6 {
        icmp::v6::is_error(m.message_type())
    } else {
        icmp::v4::is_error(m.message_type())
    }
}

/// A flow's hash: picks its backend slot and the tunnel's UDP source port.
/// Fixed, so every worker and every node computes the same value for the
/// same flow (Maglev's consistency across nodes depends on it).
#[inline]
pub fn flow_hash(src: &Addr, dst: &Addr, src_port: u16, dst_port: u16, proto: u8) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let ports = (u64::from(src_port) << 32) | (u64::from(dst_port) << 16) | u64::from(proto);
    let mut h = 0x5249_414c_544f_u64; // "RIALTO"
    for w in [
        word(&src[..8]),
        word(&src[8..]),
        word(&dst[..8]),
        word(&dst[8..]),
        ports,
    ] {
        h = (h ^ w).wrapping_mul(K);
        h ^= h >> 29;
    }
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The first-byte test of IPv4 sources says what the tables'
        /// `not_a_host` says.
        #[test]
        fn an_ipv4_martian_is_what_the_tables_call_no_host(a: [u8; 4], v6: bool) {
            let ip = IpAddr::from(a);
            let expected = v6 || rialto_tables::not_a_host(ip).is_some();
            proptest::prop_assert_eq!(is_martian(&from_ip(ip), v6), expected);
        }
    }

    #[test]
    fn the_edges_of_the_ipv4_martians() {
        for (a, martian) in [
            ([0, 0, 0, 0], true),
            ([0, 1, 2, 3], true),
            ([1, 0, 0, 0], false),
            ([126, 255, 255, 255], false),
            ([127, 0, 0, 1], true),
            ([223, 255, 255, 255], false),
            ([224, 0, 0, 1], true),
            ([239, 255, 255, 255], true),
            ([240, 0, 0, 1], true),
            ([255, 255, 255, 255], true),
        ] {
            assert_eq!(is_martian(&mapped(a), false), martian, "{a:?}");
            assert_eq!(
                rialto_tables::not_a_host(IpAddr::from(a)).is_some(),
                martian,
                "{a:?}"
            );
        }
    }

    #[test]
    fn mapped_addresses_round_trip() {
        let v4: IpAddr = "198.18.0.2".parse().unwrap();
        let v6: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(to_ip(&from_ip(v4)), v4);
        assert_eq!(to_ip(&from_ip(v6)), v6);
        assert_eq!(super::v4(&from_ip(v4)), [198, 18, 0, 2]);
        assert!(is_v4_mapped(&from_ip(v4)));
        assert!(!is_v4_mapped(&from_ip(v6)));
        let almost: IpAddr = "::fffe:c612:2".parse().unwrap();
        assert!(!is_v4_mapped(&from_ip(almost)));
        assert!(!is_v4_mapped(&from_ip("1::ffff:c612:2".parse().unwrap())));
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let (a, b) = (mapped([198, 18, 0, 2]), mapped([198, 18, 100, 1]));
        let h = flow_hash(&a, &b, 40000, 80, TCP);
        assert_ne!(h, flow_hash(&b, &a, 40000, 80, TCP));
        assert_ne!(h, flow_hash(&a, &b, 40001, 80, TCP));
        assert_ne!(h, flow_hash(&a, &b, 40000, 81, TCP));
        assert_ne!(h, flow_hash(&a, &b, 40000, 80, UDP));
        assert_eq!(h, flow_hash(&a, &b, 40000, 80, TCP));
    }
}
