//! VXLAN encapsulation (RFC 7348) and plain Ethernet output.
//!
//! Both write headers in front of an IP packet that stays where it is in
//! the buffer: only the frame's start moves.

use super::packet::{Addr, UDP, v4};
use crate::{
    FrameBuf,
    wire::{
        checksum, ethernet, ipv4, ipv6,
        udp::{self, Datagram},
        vxlan,
    },
};

/// The outer Ethernet header of every frame Rialto sends.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub src: [u8; 6],
    pub dst: [u8; 6],
    /// The VLAN tag the frame came in with, kept on the way out.
    pub tag: Option<ethernet::Tag>,
}

/// One end of a tunnel to a cluster's gateway.
#[derive(Clone, Copy, Debug)]
pub struct Tunnel {
    pub vni: u32,
    pub v6: bool,
    pub local: Addr,
    pub remote: Addr,
    /// The gateway's VXLAN device, which accepts only frames addressed to it.
    pub inner_dst: [u8; 6],
    pub inner_src: [u8; 6],
    pub port: u16,
}

/// Wraps the IP packet `buf[at..end]` in VXLAN toward `tunnel`. The outer
/// UDP source port comes from the flow's hash, in the dynamic range
/// (RFC 7348 §5), so the underlay's ECMP spreads flows but keeps each on
/// one path. The outer IPv4 header has DF set and no UDP checksum; over
/// IPv6 the checksum is mandatory and covers the whole inner frame.
/// False if the buffer has no room in front (never with AF_XDP's 256 bytes).
#[expect(
    clippy::too_many_arguments,
    reason = "each is one field of the headers written"
)]
pub fn encapsulate(
    frame: &mut FrameBuf<'_>,
    at: usize,
    end: usize,
    ethertype: u16,
    tos: u8,
    hash: u64,
    tunnel: &Tunnel,
    link: &Link,
) -> bool {
    let outer_eth = ethernet::header_len(link.tag);
    let Some(start) = at.checked_sub(rialto_tables::vxlan_overhead(tunnel.v6) + outer_eth) else {
        return false;
    };
    if !frame.set_bounds(start, end) {
        return false;
    }
    let inner_eth = at - ethernet::HEADER_LEN;
    let vxlan_at = inner_eth - vxlan::HEADER_LEN;
    let udp_at = vxlan_at - udp::HEADER_LEN;
    let ip_at = start + outer_eth;
    let buf = frame.buffer_mut();
    ethernet::Repr {
        dst: tunnel.inner_dst,
        src: tunnel.inner_src,
        tag: None,
        ethertype,
    }
    .emit(&mut buf[inner_eth..]);
    vxlan::Repr { vni: tunnel.vni }.emit(&mut buf[vxlan_at..]);
    let udp_len = end - udp_at;
    udp::Repr {
        src_port: outer_port(hash),
        dst_port: tunnel.port,
        payload_len: udp_len - udp::HEADER_LEN,
        checksum: 0,
    }
    .emit(&mut buf[udp_at..]);
    let outer_ethertype = if tunnel.v6 {
        ipv6::Repr {
            src: tunnel.local,
            dst: tunnel.remote,
            next_header: UDP,
            hop_limit: 64,
            traffic_class: tos,
            // Of the hash's low 32 bits, the ones a flow keeps.
            flow_label: (hash >> 12) as u32 & 0xf_ffff,
            payload_len: udp_len,
        }
        .emit(&mut buf[ip_at..]);
        let pseudo = checksum::pseudo_header_v6(&tunnel.local, &tunnel.remote, UDP, udp_len);
        Datagram::new_unchecked(&mut buf[udp_at..end]).fill_checksum(pseudo);
        ethernet::ethertype::IPV6
    } else {
        ipv4::Repr {
            src: v4(&tunnel.local),
            dst: v4(&tunnel.remote),
            protocol: UDP,
            ttl: 64,
            tos,
            ident: 0,
            dont_fragment: true,
            payload_len: udp_len,
        }
        .emit(&mut buf[ip_at..]);
        ethernet::ethertype::IPV4
    };
    ethernet::Repr {
        dst: link.dst,
        src: link.src,
        tag: link.tag,
        ethertype: outer_ethertype,
    }
    .emit(&mut buf[start..]);
    true
}

/// The outer UDP source port of a flow of hash `hash`.
#[inline]
fn outer_port(hash: u64) -> u16 {
    49152 | (hash as u16 & 0x3fff)
}

/// The headers [`encapsulate`] writes toward one tunnel over IPv4 from an
/// untagged uplink, written once (when the tables or the MACs change) by
/// [`encapsulate`] itself, so the two cannot disagree: per packet,
/// [`Template::encapsulate`] copies them and fills in the five fields that
/// depend on the packet (the outer TOS, lengths and IPv4 checksum, the
/// UDP source port, the inner ethertype) instead of writing every field
/// through its view.
#[derive(Clone, Copy, Debug)]
pub struct Template {
    bytes: [u8; Template::LEN],
    /// The outer IPv4 header's unfolded sum with TOS, total length and
    /// checksum zero.
    sum: u64,
}

impl Template {
    /// Outer Ethernet, IPv4, UDP, VXLAN, inner Ethernet.
    pub const LEN: usize = ethernet::HEADER_LEN
        + ipv4::HEADER_LEN
        + udp::HEADER_LEN
        + vxlan::HEADER_LEN
        + ethernet::HEADER_LEN;
    const TOS: usize = ethernet::HEADER_LEN + 1;
    const TOTAL_LEN: usize = ethernet::HEADER_LEN + 2;
    const CHECKSUM: usize = ethernet::HEADER_LEN + 10;
    const UDP: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    const INNER_ETHERTYPE: usize = Self::LEN - 2;

    /// The template toward `tunnel` through `link`; `None` for an IPv6
    /// underlay or a tagged uplink (they take the general way).
    pub fn new(tunnel: &Tunnel, link: &Link) -> Option<Self> {
        if tunnel.v6 || link.tag.is_some() {
            return None;
        }
        let mut buf = [0u8; Self::LEN];
        let mut frame = FrameBuf::new(&mut buf, Self::LEN, 0);
        if !encapsulate(&mut frame, Self::LEN, Self::LEN, 0, 0, 0, tunnel, link) {
            return None;
        }
        let mut bytes = buf;
        for at in [Self::TOS, Self::TOTAL_LEN, Self::TOTAL_LEN + 1] {
            bytes[at] = 0;
        }
        bytes[Self::CHECKSUM..Self::CHECKSUM + 2].fill(0);
        let sum = checksum::sum(&bytes[ethernet::HEADER_LEN..Self::UDP]);
        Some(Self { bytes, sum })
    }

    /// What [`encapsulate`] does with the same arguments (and the tunnel
    /// and link of the template).
    #[inline]
    pub fn encapsulate(
        &self,
        frame: &mut FrameBuf<'_>,
        at: usize,
        end: usize,
        ethertype: u16,
        tos: u8,
        hash: u64,
    ) -> bool {
        let Some(start) = at.checked_sub(Self::LEN) else {
            return false;
        };
        if !frame.set_bounds(start, end) {
            return false;
        }
        let h: &mut [u8; Self::LEN] = (&mut frame.buffer_mut()[start..at])
            .try_into()
            .expect("LEN bytes");
        *h = self.bytes;
        let ip_len = (end - start - ethernet::HEADER_LEN) as u16;
        let word = |h: &mut [u8; Self::LEN], at: usize, v: u16| {
            h[at..at + 2].copy_from_slice(&v.to_be_bytes());
        };
        h[Self::TOS] = tos;
        word(h, Self::TOTAL_LEN, ip_len);
        let sum = self.sum + u64::from(tos) + u64::from(ip_len);
        word(h, Self::CHECKSUM, checksum::finish(sum));
        word(h, Self::UDP, outer_port(hash));
        word(h, Self::UDP + 4, ip_len - ipv4::HEADER_LEN as u16);
        word(h, Self::INNER_ETHERTYPE, ethertype);
        true
    }
}

/// Puts a plain Ethernet header in front of the IP packet `buf[at..end]`.
pub fn ethernet_out(
    frame: &mut FrameBuf<'_>,
    at: usize,
    end: usize,
    ethertype: u16,
    link: &Link,
) -> bool {
    let Some(start) = at.checked_sub(ethernet::header_len(link.tag)) else {
        return false;
    };
    if !frame.set_bounds(start, end) {
        return false;
    }
    ethernet::Repr {
        dst: link.dst,
        src: link.src,
        tag: link.tag,
        ethertype,
    }
    .emit(&mut frame.buffer_mut()[start..]);
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::pipeline::packet::mapped;

    fn tunnel(v6: bool) -> Tunnel {
        let (local, remote) = match v6 {
            false => (mapped([198, 18, 1, 1]), mapped([198, 18, 2, 1])),
            true => ([0xfd; 16], [0xfe; 16]),
        };
        Tunnel {
            vni: 0x123456,
            v6,
            local,
            remote,
            inner_dst: [2, 0, 0, 0, 2, 1],
            inner_src: [2, 0, 0, 0, 1, 1],
            port: 4789,
        }
    }

    fn link(tag: Option<ethernet::Tag>) -> Link {
        Link {
            src: [2, 0, 0, 0, 0, 1],
            dst: [2, 0, 0, 0, 0, 2],
            tag,
        }
    }

    proptest! {
        /// The template writes what the general way writes, byte for byte,
        /// whatever the packet.
        #[test]
        fn the_template_writes_what_encapsulate_writes(
            payload in proptest::collection::vec(any::<u8>(), 20..1500),
            tos: u8,
            hash: u64,
            inner_v6: bool,
        ) {
            let template = Template::new(&tunnel(false), &link(None)).expect("IPv4, untagged");
            let ethertype = if inner_v6 { ethernet::ethertype::IPV6 } else { ethernet::ethertype::IPV4 };
            let run = |fast: bool| {
                let mut buf = vec![0u8; 256 + payload.len()];
                buf[256..].copy_from_slice(&payload);
                let end = buf.len();
                let mut frame = FrameBuf::new(&mut buf, 256, payload.len());
                let ok = match fast {
                    true => template.encapsulate(&mut frame, 256, end, ethertype, tos, hash),
                    false => encapsulate(&mut frame, 256, end, ethertype, tos, hash, &tunnel(false), &link(None)),
                };
                (ok, frame.data().to_vec())
            };
            prop_assert_eq!(run(true), run(false));
        }
    }

    #[test]
    fn an_ipv6_underlay_or_a_tagged_uplink_has_no_template() {
        assert!(Template::new(&tunnel(true), &link(None)).is_none());
        assert!(Template::new(&tunnel(false), &link(Some([0x81, 0, 0, 7]))).is_none());
    }

    /// What the MTU checks count (`vxlan_overhead`, in the config check and
    /// here) is what the encapsulation adds: the inner Ethernet header and
    /// the outer headers.
    #[test]
    fn the_overhead_is_what_the_encapsulation_adds() {
        for (v6, ip) in [(false, ipv4::HEADER_LEN), (true, ipv6::HEADER_LEN)] {
            assert_eq!(
                rialto_tables::vxlan_overhead(v6),
                ethernet::HEADER_LEN + ip + udp::HEADER_LEN + vxlan::HEADER_LEN
            );
        }
    }
}
