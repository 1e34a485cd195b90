//! Address and port rewriting, with incremental checksum updates (RFC 1624).
//!
//! Works on raw offsets rather than checked views because it also rewrites
//! the packet quoted inside an ICMP error, which may be cut short: each
//! field is rewritten only if it is there.

use super::packet::{Addr, TCP, UDP};
use crate::wire::{checksum, tcp, udp};

/// The header offsets of an IP packet, whole or quoted.
#[derive(Clone, Copy, Debug)]
pub struct Headers {
    pub v6: bool,
    pub at: usize,
    pub l4: usize,
    /// End of the bytes present (a quote may stop inside the transport header).
    pub end: usize,
    pub proto: u8,
}

impl From<&super::packet::Ip> for Headers {
    fn from(ip: &super::packet::Ip) -> Self {
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
/// header checksum and the TCP or UDP checksum (when present in the bytes:
/// a UDP checksum of zero on IPv4 means none and stays zero, and a computed
/// zero is sent as 0xffff, RFC 768).
pub fn rewrite(buf: &mut [u8], h: &Headers, src: (&Addr, u16), dst: (&Addr, u16)) {
    let (src_at, dst_at, len) = if h.v6 {
        (h.at + 8, h.at + 24, 16)
    } else {
        (h.at + 12, h.at + 16, 4)
    };
    let new_src = &src.0[16 - len..];
    let new_dst = &dst.0[16 - len..];
    let mut l4 = checksum::Delta::default();
    l4.add(&buf[src_at..src_at + len], new_src);
    l4.add(&buf[dst_at..dst_at + len], new_dst);
    if !h.v6 {
        // The IPv4 header checksum covers the addresses, as the pseudo-header does.
        let at = h.at + 10;
        let c = l4.apply(u16::from_be_bytes([buf[at], buf[at + 1]]));
        buf[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    buf[src_at..src_at + len].copy_from_slice(new_src);
    buf[dst_at..dst_at + len].copy_from_slice(new_dst);
    if !matches!(h.proto, TCP | UDP) || h.l4 + 4 > h.end {
        return;
    }
    let [s0, s1] = src.1.to_be_bytes();
    let [d0, d1] = dst.1.to_be_bytes();
    let ports = [s0, s1, d0, d1];
    l4.add(&buf[h.l4..h.l4 + 4], &ports);
    buf[h.l4..h.l4 + 4].copy_from_slice(&ports);
    let checksum_at = h.l4
        + if h.proto == TCP {
            tcp::CHECKSUM_AT
        } else {
            udp::CHECKSUM_AT
        };
    if checksum_at + 2 > h.end {
        return;
    }
    let old = u16::from_be_bytes([buf[checksum_at], buf[checksum_at + 1]]);
    if h.proto == UDP && !h.v6 && old == 0 {
        return;
    }
    let mut new = l4.apply(old);
    if h.proto == UDP && new == 0 {
        new = 0xffff;
    }
    buf[checksum_at..checksum_at + 2].copy_from_slice(&new.to_be_bytes());
}

/// Decrements the TTL or hop limit (the caller checked it is above one),
/// updating the IPv4 header checksum.
pub fn decrement_ttl(buf: &mut [u8], h: &Headers) {
    if h.v6 {
        buf[h.at + 7] -= 1;
    } else {
        let ttl_at = h.at + 8;
        let old = u16::from_be_bytes([buf[ttl_at], buf[ttl_at + 1]]);
        let new = old - 0x100;
        let at = h.at + 10;
        let c = checksum::update_word(u16::from_be_bytes([buf[at], buf[at + 1]]), old, new);
        buf[ttl_at] -= 1;
        buf[at..at + 2].copy_from_slice(&c.to_be_bytes());
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
