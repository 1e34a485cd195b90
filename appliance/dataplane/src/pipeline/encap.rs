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
        src_port: 49152 | (hash as u16 & 0x3fff),
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
            flow_label: (hash >> 44) as u32 & 0xf_ffff,
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
    use super::*;

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
