//! VXLAN encapsulation (RFC 7348) and plain Ethernet output.
//!
//! Both write headers in front of an IP packet that stays where it is in
//! the buffer: only the frame's start moves.

use super::{
    FrameBuf,
    packet::{Addr, UDP, v4},
};
use crate::wire::{checksum, ethernet, ipv4, ipv6, udp, vxlan};

/// The outer Ethernet header of every frame Rialto sends.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub src: [u8; 6],
    pub dst: [u8; 6],
    /// The VLAN tag the frame came in with, kept on the way out.
    pub tag: Option<[u8; 4]>,
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

/// Ethernet, IP, UDP and VXLAN in front of the inner Ethernet header.
pub const fn overhead(v6: bool) -> usize {
    14 + if v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    } + udp::HEADER_LEN
        + vxlan::HEADER_LEN
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
    let outer_ip_len = if tunnel.v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    let eth_len = ethernet::header_len(link.tag);
    let inner_eth = at.checked_sub(14);
    let Some(start) = inner_eth.and_then(|i| i.checked_sub(eth_len + outer_ip_len + 16)) else {
        return false;
    };
    if !frame.set_bounds(start, end) {
        return false;
    }
    let inner_eth = at - 14;
    let vxlan_at = inner_eth - vxlan::HEADER_LEN;
    let udp_at = vxlan_at - udp::HEADER_LEN;
    let ip_at = udp_at - outer_ip_len;
    let buf = frame.buffer_mut();
    ethernet::emit(
        &mut buf[inner_eth..],
        tunnel.inner_dst,
        tunnel.inner_src,
        None,
        ethertype,
    );
    vxlan::emit(&mut buf[vxlan_at..], tunnel.vni);
    let udp_len = end - udp_at;
    let src_port = 49152 | (hash as u16 & 0x3fff);
    udp::Repr {
        src_port,
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
        let sum = checksum::pseudo_header_v6(&tunnel.local, &tunnel.remote, UDP, udp_len)
            + checksum::sum(&buf[udp_at..end]);
        let c = match checksum::finish(sum) {
            0 => 0xffff,
            c => c,
        };
        buf[udp_at + udp::CHECKSUM_AT..udp_at + udp::CHECKSUM_AT + 2]
            .copy_from_slice(&c.to_be_bytes());
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
    ethernet::emit(
        &mut buf[start..],
        link.dst,
        link.src,
        link.tag,
        outer_ethertype,
    );
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
    ethernet::emit(
        &mut frame.buffer_mut()[start..],
        link.dst,
        link.src,
        link.tag,
        ethertype,
    );
    true
}
