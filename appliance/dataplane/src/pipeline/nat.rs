//! Address and port rewriting, with incremental checksum updates (RFC 1624).
//!
//! Also rewrites the packet quoted inside an ICMP error, which may be cut
//! short: the views write each field only if it is there.

use bytemuck::{Pod, Zeroable};

use super::packet::{Addr, Ip, TCP, UDP, v4};
use crate::wire::{
    checksum::{Delta, fold},
    ipv4, ipv6, tcp, udp,
};

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

/// What a rewrite of a flow's addresses and ports adds to the checksums
/// that cover them: RFC 1624's `~m + m'` of the addresses, and of the
/// ports, each folded to 16 bits. The same for every packet of a flow one
/// way, so a flow's are worked out once ([`Sums::between`]) and kept with
/// it; the way back adds the opposite ([`Sums::reversed`]).
///
/// Folded, a sum stays in 1..=0xffff (a sum of words that is not zero
/// folds to no less than 1), and adding it gives the checksum adding the
/// words one by one gives: the two agree modulo 0xffff, and neither total
/// is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Sums {
    pub addrs: u16,
    pub ports: u16,
}

impl Sums {
    /// Of the rewrite of source and destination `old` (addresses, and
    /// ports) into `new`. The addresses' words are summed, not edited one
    /// by one: `~m + m'` over all of them is their new sum less their old
    /// one, which is the new sum plus the old one's complement. Summed as
    /// little-endian words, the result swapped once: a ones' complement
    /// sum does not depend on byte order (RFC 1071 §2 (B)).
    #[inline]
    pub fn between<const N: usize>(old: [(&[u8; N], u16); 2], new: [(&[u8; N], u16); 2]) -> Self {
        let sum = |ends: [(&[u8; N], u16); 2]| {
            (ends.iter().flat_map(|(addr, _)| addr.as_chunks::<4>().0))
                .map(|quad| u64::from(u32::from_le_bytes(*quad)))
                .sum::<u64>()
        };
        let mut ports = Delta::default();
        for ((_, from), (_, to)) in old.into_iter().zip(new) {
            ports.add_word(from, to);
        }
        Self {
            addrs: fold(sum(new) + u64::from(!fold(sum(old)))).swap_bytes(),
            ports: ports.folded(),
        }
    }

    /// Of the rewrite back: what undoes this one (its ones' complement,
    /// kept in 1..=0xffff).
    #[inline]
    pub fn reversed(self) -> Self {
        let back = |sum: u16| if sum == 0xffff { sum } else { !sum };
        Self {
            addrs: back(self.addrs),
            ports: back(self.ports),
        }
    }
}

/// [`forward`] over IPv4: `ip` is the IP header, `l4` what follows it, a
/// whole TCP or UDP header. Reads and writes at fixed offsets, the
/// checksums updated once each.
#[inline(always)]
pub fn forward_v4(
    ip: &mut [u8],
    l4: &mut [u8],
    proto: u8,
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
) {
    let Some(h) = ip.first_chunk::<{ ipv4::HEADER_LEN }>() else {
        return;
    };
    // Ports only TCP and UDP have, whole: the sum of others' goes unused.
    let port = |at: usize| {
        l4.get(at..at + 2)
            .map_or(0, |w| u16::from_be_bytes([w[0], w[1]]))
    };
    let addr = |at: usize| [h[at], h[at + 1], h[at + 2], h[at + 3]];
    let old = [(&addr(12), port(0)), (&addr(16), port(2))];
    let sums = Sums::between(old, [(&src.0, src.1), (&dst.0, dst.1)]);
    forward_v4_summed(ip, l4, proto, src, dst, sums);
}

/// [`forward_v4`] of a packet whose addresses and ports `sums` says what
/// rewriting them into `src` and `dst` adds to the checksums: a flow's,
/// worked out once (the fast path's rewrite).
#[inline(always)]
pub fn forward_v4_summed(
    ip: &mut [u8],
    l4: &mut [u8],
    proto: u8,
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    sums: Sums,
) {
    /// What the TTL's decrement adds: `~m + m'` of its word, whatever the
    /// TTL (above zero).
    const TTL: u64 = 0xffff - 0x100;
    let Some(ip) = ip.first_chunk_mut::<{ ipv4::HEADER_LEN }>() else {
        return;
    };
    let apply = |checksum: u16, sum: u64| !fold(u64::from(!checksum) + sum);
    ip[12..16].copy_from_slice(&src.0);
    ip[16..20].copy_from_slice(&dst.0);
    ip[8] = ip[8].wrapping_sub(1);
    let c = apply(
        u16::from_be_bytes([ip[10], ip[11]]),
        u64::from(sums.addrs) + TTL,
    );
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
    l4[..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    let old = u16::from_be_bytes([l4[at], l4[at + 1]]);
    let new = match (
        proto,
        apply(old, u64::from(sums.addrs) + u64::from(sums.ports)),
    ) {
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

    /// What [`Sums::between`] takes, of two (address, port) ends.
    fn refs<const N: usize>(ends: &[([u8; N], u16); 2]) -> [(&[u8; N], u16); 2] {
        [(&ends[0].0, ends[0].1), (&ends[1].0, ends[1].1)]
    }

    proptest::proptest! {
        /// A flow's sums, of its 16-byte (IPv4-mapped) addresses, are
        /// those of its packets' 4-byte ones, and edit by edit; the way
        /// back's are those of the rewrite back.
        #[test]
        fn a_flow_s_sums_are_its_packets(
            old: ([u8; 4], u16, [u8; 4], u16), new: ([u8; 4], u16, [u8; 4], u16),
        ) {
            let ends = |(a, p, b, q): ([u8; 4], u16, [u8; 4], u16)| [(a, p), (b, q)];
            let (old, new) = (ends(old), ends(new));
            let m = |e: &[([u8; 4], u16); 2]| [(mapped(e[0].0), e[0].1), (mapped(e[1].0), e[1].1)];
            let (old16, new16) = (m(&old), m(&new));
            let sums = Sums::between(refs(&old), refs(&new));
            proptest::prop_assert_eq!(Sums::between(refs(&old16), refs(&new16)), sums);
            let mut edits = (Delta::default(), Delta::default());
            for ((a, p), (b, q)) in old.iter().zip(&new) {
                edits.0.add(a, b);
                edits.1.add_word(*p, *q);
            }
            if edits.0.folded() != 0 && edits.1.folded() != 0 {
                proptest::prop_assert_eq!(sums, Sums { addrs: edits.0.folded(), ports: edits.1.folded() });
            }
            let back = Sums::between(refs(&new), refs(&old));
            if back.addrs != 0 && back.ports != 0 {
                proptest::prop_assert_eq!(sums.reversed(), back);
            }
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
