//! Address and port rewriting, with incremental checksum updates (RFC 1624).
//!
//! Also rewrites the packet quoted inside an ICMP error, which may be cut
//! short: the views write each field only if it is there.

use super::packet::{Addr, Ip, TCP, UDP, v4};
use crate::wire::{checksum::Delta, ipv4, ipv6, tcp, udp};

/// The header offsets of an IP packet, whole or quoted. The IP header is
/// whole (its length checked); the transport header may be cut short.
#[derive(Clone, Copy, Debug)]
pub struct Headers {
    pub v6: bool,
    pub at: usize,
    pub l4: usize,
    /// End of the bytes present (a quote may stop inside the transport header).
    pub end: usize,
    pub proto: u8,
}

impl From<&Ip> for Headers {
    fn from(ip: &Ip) -> Self {
        Self {
            v6: ip.v6,
            at: ip.at,
            l4: ip.l4,
            end: ip.end(),
            proto: ip.proto,
        }
    }
}

/// Rewrites source and destination address and port. Updates the IPv4
/// header checksum and the TCP or UDP checksum, when present in the bytes
/// (see [`udp::Datagram::rewrite_ports`] for UDP's zero).
pub fn rewrite(buf: &mut [u8], h: &Headers, src: (&Addr, u16), dst: (&Addr, u16)) {
    let (ip, l4) = buf[h.at..h.end].split_at_mut(h.l4 - h.at);
    let delta = if h.v6 {
        ipv6::Packet::new_unchecked(ip).set_addresses(*src.0, *dst.0)
    } else {
        ipv4::Packet::new_unchecked(ip).set_addresses(v4(src.0), v4(dst.0))
    };
    match h.proto {
        TCP => tcp::Segment::new_unchecked(l4).rewrite_ports(src.1, dst.1, delta),
        UDP => udp::Datagram::new_unchecked(l4).rewrite_ports(src.1, dst.1, delta, h.v6),
        _ => {}
    }
}

/// What a packet of a flow gets on its way through: [`rewrite`], then
/// [`decrement_ttl`] (the caller checked the TTL is above one); over IPv4
/// with one update of the header checksum.
pub fn forward(buf: &mut [u8], h: &Headers, src: (&Addr, u16), dst: (&Addr, u16)) {
    if h.v6 {
        rewrite(buf, h, src, dst);
        decrement_ttl(buf, h);
        return;
    }
    let (ip, l4) = buf[h.at..h.end].split_at_mut(h.l4 - h.at);
    forward_v4(ip, l4, h.proto, (v4(src.0), src.1), (v4(dst.0), dst.1));
}

/// [`forward`] over IPv4: `ip` is the IP header, `l4` what follows it, a
/// whole TCP or UDP header. Reads and writes at fixed offsets, the
/// checksums updated once each: the fast path's rewrite.
#[inline(always)]
pub fn forward_v4(
    ip: &mut [u8],
    l4: &mut [u8],
    proto: u8,
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
) {
    let Some(ip) = ip.first_chunk_mut::<{ ipv4::HEADER_LEN }>() else {
        return;
    };
    let read = |h: &[u8; ipv4::HEADER_LEN], at: usize| {
        u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
    };
    let mut delta = Delta::default();
    delta.add_u32(read(ip, 12), u32::from_be_bytes(src.0));
    delta.add_u32(read(ip, 16), u32::from_be_bytes(dst.0));
    ip[12..16].copy_from_slice(&src.0);
    ip[16..20].copy_from_slice(&dst.0);
    let mut header = delta;
    let ttl = u16::from_be_bytes([ip[8], ip[9]]);
    header.add_word(ttl, ttl.wrapping_sub(0x100));
    ip[8] = ip[8].wrapping_sub(1);
    let c = header.apply(u16::from_be_bytes([ip[10], ip[11]]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    // The ports, then the transport checksum (UDP's zero is none over IPv4).
    let at = match proto {
        TCP => 16,
        UDP => 6,
        _ => return,
    };
    let Some(l4) = l4.get_mut(..at + 2) else {
        return;
    };
    delta.add_word(u16::from_be_bytes([l4[0], l4[1]]), src.1);
    delta.add_word(u16::from_be_bytes([l4[2], l4[3]]), dst.1);
    l4[..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    let old = u16::from_be_bytes([l4[at], l4[at + 1]]);
    let new = match (proto, delta.apply(old)) {
        (UDP, _) if old == 0 => return,
        (UDP, 0) => 0xffff,
        (_, c) => c,
    };
    l4[at..at + 2].copy_from_slice(&new.to_be_bytes());
}

/// Decrements the TTL or hop limit (the caller checked it is above one),
/// updating the IPv4 header checksum.
pub fn decrement_ttl(buf: &mut [u8], h: &Headers) {
    let ip = &mut buf[h.at..h.l4];
    if h.v6 {
        ipv6::Packet::new_unchecked(ip).decrement_hop_limit();
    } else {
        ipv4::Packet::new_unchecked(ip).decrement_ttl();
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;
    use crate::pipeline::packet::{Ip, mapped};

    fn udp4(checksum: bool) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([198, 18, 0, 2], [198, 18, 100, 1], 64).udp(40000, 53);
        let mut p = Vec::new();
        builder.write(&mut p, b"query").unwrap();
        if !checksum {
            p[26..28].fill(0);
        }
        p
    }

    /// Rewrites `p` as the forward path does: SNAT address and port, backend.
    fn to_backend(p: &mut [u8]) -> Headers {
        let ip = Ip::parse(p, 0, 0x0800).unwrap();
        let headers = Headers::from(&ip);
        rewrite(
            p,
            &headers,
            (&mapped([198, 18, 200, 1]), 1024),
            (&mapped([198, 19, 0, 5]), 5353),
        );
        headers
    }

    #[test]
    fn rewrite_matches_a_recomputation() {
        let mut p = udp4(true);
        let headers = to_backend(&mut p);
        decrement_ttl(&mut p, &headers);
        let expected = {
            let b = PacketBuilder::ipv4([198, 18, 200, 1], [198, 19, 0, 5], 63).udp(1024, 5353);
            let mut e = Vec::new();
            b.write(&mut e, b"query").unwrap();
            e
        };
        assert_eq!(p, expected);
    }

    proptest::proptest! {
        /// The one-update rewrite of a forwarded packet is the two-step one.
        #[test]
        fn forward_is_rewrite_then_decrement_ttl(
            src: [u8; 4], dst: [u8; 4], ports: (u16, u16), ttl in 2u8.., tcp: bool, udp_checksum: bool,
        ) {
            let mut p = match tcp {
                true => {
                    let b = PacketBuilder::ipv4([198, 18, 0, 2], [198, 18, 100, 1], ttl).tcp(40000, 80, 7, 1000);
                    let mut p = Vec::new();
                    b.write(&mut p, b"GET /").unwrap();
                    p
                }
                false => {
                    let mut p = udp4(udp_checksum);
                    p[8] = ttl;
                    p[10..12].fill(0);
                    let c = crate::wire::checksum::finish(crate::wire::checksum::sum(&p[..20]));
                    p[10..12].copy_from_slice(&c.to_be_bytes());
                    p
                }
            };
            let mut q = p.clone();
            let h = Headers::from(&Ip::parse(&p, 0, 0x0800).unwrap());
            let (s, d) = ((&mapped(src), ports.0), (&mapped(dst), ports.1));
            forward(&mut p, &h, s, d);
            rewrite(&mut q, &h, s, d);
            decrement_ttl(&mut q, &h);
            proptest::prop_assert_eq!(p, q);
        }
    }

    #[test]
    fn udp4_without_checksum_stays_without() {
        let mut p = udp4(false);
        to_backend(&mut p);
        let sliced = SlicedPacket::from_ip(&p).unwrap();
        let Some(TransportSlice::Udp(udp)) = sliced.transport else {
            panic!("UDP")
        };
        assert_eq!(udp.checksum(), 0);
        assert_eq!(udp.destination_port(), 5353);
    }
}
