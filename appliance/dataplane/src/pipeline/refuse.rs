//! Refusing a connection to a service that has no backend to take it: a
//! TCP SYN gets a reset, a UDP datagram an ICMP port unreachable, from the
//! VIP, the way they came, so a client learns at once instead of waiting
//! for a timeout; and closing a connection whose backend failed, with a
//! reset at the client's next segment. RFC 9293 §3.10.7.1: a segment with
//! an ACK gets `<SEQ=SEG.ACK><CTL=RST>`, one without
//! `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`.

use super::{
    icmp::{self, ErrorKind},
    packet::{Ip, TCP, v4},
};
use crate::wire::{checksum, ipv4, ipv6, tcp};

/// Replaces the TCP segment `ip` (to a VIP) in place with the reset that
/// answers it, from the VIP back to the client. Returns the new packet's
/// start and end in the buffer.
pub fn reset(buf: &mut [u8], ip: &Ip) -> (usize, usize) {
    let segment = tcp::Segment::new_unchecked(&buf[ip.l4..ip.end()]);
    let data = ip.end() - ip.l4 - segment.header_len();
    let syn_fin = u32::from(segment.flags() & (tcp::flags::SYN | tcp::flags::FIN) != 0);
    let (seq, ack, flags) = if segment.flags() & tcp::flags::ACK != 0 {
        (segment.ack(), 0, tcp::flags::RST)
    } else {
        let ack = (segment.seq())
            .wrapping_add(data as u32)
            .wrapping_add(syn_fin);
        (0, ack, tcp::flags::RST | tcp::flags::ACK)
    };
    let repr = tcp::Repr {
        src_port: segment.dst_port(),
        dst_port: segment.src_port(),
        seq,
        ack,
        flags,
        window: 0,
    };
    let (src, dst) = (ip.dst, ip.src);
    let l4 = ip.at
        + if ip.v6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        };
    let end = l4 + tcp::MIN_HEADER_LEN;
    if ip.v6 {
        ipv6::Repr {
            src,
            dst,
            next_header: TCP,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
            payload_len: tcp::MIN_HEADER_LEN,
        }
        .emit(&mut buf[ip.at..]);
    } else {
        ipv4::Repr {
            src: v4(&src),
            dst: v4(&dst),
            protocol: TCP,
            ttl: 64,
            tos: 0,
            ident: 0,
            dont_fragment: true,
            payload_len: tcp::MIN_HEADER_LEN,
        }
        .emit(&mut buf[ip.at..]);
    }
    repr.emit(&mut buf[l4..end]);
    let pseudo = if ip.v6 {
        checksum::pseudo_header_v6(&src, &dst, TCP, tcp::MIN_HEADER_LEN)
    } else {
        checksum::pseudo_header_v4(&v4(&src), &v4(&dst), TCP, tcp::MIN_HEADER_LEN)
    };
    tcp::Segment::new_unchecked(&mut buf[l4..end]).fill_checksum(pseudo);
    (ip.at, end)
}

/// Writes, in front of the UDP datagram `ip` (to a VIP), the ICMP port
/// unreachable that answers it, from the VIP. Returns the new packet's
/// start and end; the caller checks the headroom ([`icmp::headers_len`]).
pub fn port_unreachable(buf: &mut [u8], ip: &Ip) -> (usize, usize) {
    icmp::make_error(buf, ip, ErrorKind::PortUnreachable, &ip.dst)
}
