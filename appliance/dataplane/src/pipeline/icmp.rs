//! ICMP errors: made by Rialto (time exceeded, fragmentation needed /
//! packet too big), and translated when they are about a tracked flow.

use super::{
    nat::Headers,
    packet::{Addr, ICMP, ICMPV6, Ip, TCP, UDP, mapped, v4},
};
use crate::wire::{
    checksum, icmp, ipv4, ipv6,
    ports::{self, Ports},
};

/// An error Rialto sends back to a packet's sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TTL or hop limit ran out here.
    TimeExceeded,
    /// The packet does not fit the path once encapsulated; `mtu` is what
    /// does (the next-hop MTU of RFC 1191, the MTU of RFC 8201).
    TooBig { mtu: u16 },
    /// Nothing serves the datagram's destination (a service without a
    /// backend to take it).
    PortUnreachable,
}

/// ICMP errors a worker makes per second, at most, after a burst of
/// [`ERROR_BURST`]: Linux's defaults (`net.ipv4.icmp_msgs_per_sec`,
/// `icmp_msgs_burst`). A flood of TTL-1 or too-big packets, spoofed or not,
/// is not reflected one for one (RFC 4443 §2.4 (f), RFC 1812 §4.3.2.8).
pub const ERRORS_PER_SEC: u64 = 1000;
/// ICMP errors a worker makes back to back before the rate applies.
pub const ERROR_BURST: u64 = 50;

/// A token bucket for the ICMP errors a worker makes.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    /// Tokens, in thousandths of an error (so the rate needs no division
    /// per packet beyond nanoseconds to microseconds).
    millis: u64,
    last_ns: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            millis: ERROR_BURST * 1000,
            last_ns: 0,
        }
    }
}

impl RateLimit {
    /// Whether an error may be sent at `now_ns`; takes its token if so.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let elapsed_us = now_ns.saturating_sub(self.last_ns) / 1000;
        self.last_ns = self.last_ns.max(now_ns);
        // ERRORS_PER_SEC tokens a second: as many thousandths per ms, so
        // ERRORS_PER_SEC / 1000 thousandths per microsecond.
        let refill = elapsed_us.saturating_mul(ERRORS_PER_SEC) / 1000;
        self.millis = (self.millis + refill).min(ERROR_BURST * 1000);
        if self.millis < 1000 {
            return false;
        }
        self.millis -= 1000;
        true
    }
}

/// The length of the IP and ICMP headers of an error of the family.
pub const fn headers_len(v6: bool) -> usize {
    if v6 {
        ipv6::HEADER_LEN + icmp::HEADER_LEN
    } else {
        ipv4::HEADER_LEN + icmp::HEADER_LEN
    }
}

/// Writes, in front of the packet `ip`, an ICMP error about it from `src`
/// to its sender, quoting as much of it as the error may carry. Returns
/// the new packet's start and end in the buffer.
///
/// # Panics
/// If there are fewer than [`headers_len`] bytes in front of the packet:
/// the caller checks.
pub fn make_error(buf: &mut [u8], ip: &Ip, kind: ErrorKind, src: &Addr) -> (usize, usize) {
    let max = if ip.v6 {
        icmp::v6::MAX_ERROR_LEN
    } else {
        icmp::v4::MAX_ERROR_LEN
    };
    let quote = ip.len.min(max - headers_len(ip.v6));
    let at = ip.at - headers_len(ip.v6);
    let icmp_at = ip.at - icmp::HEADER_LEN;
    let end = ip.at + quote;
    let (message_type, code, rest) = match (kind, ip.v6) {
        (ErrorKind::TimeExceeded, false) => {
            (icmp::v4::TIME_EXCEEDED, icmp::v4::TTL_EXCEEDED, [0; 4])
        }
        (ErrorKind::TimeExceeded, true) => (
            icmp::v6::TIME_EXCEEDED,
            icmp::v6::HOP_LIMIT_EXCEEDED,
            [0; 4],
        ),
        (ErrorKind::TooBig { mtu }, false) => {
            let [hi, lo] = mtu.to_be_bytes();
            (
                icmp::v4::DEST_UNREACHABLE,
                icmp::v4::FRAGMENTATION_NEEDED,
                [0, 0, hi, lo],
            )
        }
        (ErrorKind::TooBig { mtu }, true) => {
            (icmp::v6::PACKET_TOO_BIG, 0, u32::from(mtu).to_be_bytes())
        }
        (ErrorKind::PortUnreachable, false) => (
            icmp::v4::DEST_UNREACHABLE,
            icmp::v4::PORT_UNREACHABLE,
            [0; 4],
        ),
        (ErrorKind::PortUnreachable, true) => (
            icmp::v6::DEST_UNREACHABLE,
            icmp::v6::PORT_UNREACHABLE,
            [0; 4],
        ),
    };
    icmp::Repr {
        message_type,
        code,
        rest,
    }
    .emit(&mut buf[icmp_at..]);
    let dst = ip.src;
    let icmp_len = end - icmp_at;
    if ip.v6 {
        ipv6::Repr {
            src: *src,
            dst,
            next_header: ICMPV6,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
            payload_len: icmp_len,
        }
        .emit(&mut buf[at..]);
    } else {
        ipv4::Repr {
            src: v4(src),
            dst: v4(&dst),
            protocol: ICMP,
            ttl: 64,
            // Internetwork control precedence, as routers send their errors.
            tos: 0xc0,
            ident: 0,
            dont_fragment: false,
            payload_len: icmp_len,
        }
        .emit(&mut buf[at..]);
    }
    fill_checksum(
        buf,
        &Headers {
            v6: ip.v6,
            at,
            l4: icmp_at,
            end,
            proto: if ip.v6 { ICMPV6 } else { ICMP },
        },
        src,
        &dst,
    );
    (at, end)
}

/// Recomputes the checksum of the ICMP message at `h.l4..h.end` (with the
/// pseudo-header for ICMPv6).
pub fn fill_checksum(buf: &mut [u8], h: &Headers, src: &Addr, dst: &Addr) {
    let pseudo = if h.v6 {
        checksum::pseudo_header_v6(src, dst, ICMPV6, h.end - h.l4)
    } else {
        0
    };
    icmp::Message::new_unchecked(&mut buf[h.l4..h.end]).fill_checksum(pseudo);
}

/// The packet an ICMP error quotes: its headers and its flow, as far as
/// they are there.
#[derive(Clone, Copy, Debug)]
pub struct Quoted {
    pub headers: Headers,
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Quoted {
    /// Reads the packet quoted by the ICMP error at `error.l4`. It must hold
    /// the whole IP header and the TCP or UDP ports (RFC 792 promises 8
    /// bytes of the transport header; IPv6 extension headers are not
    /// walked here).
    pub fn parse(buf: &[u8], error: &Ip) -> Option<Self> {
        let at = error.l4 + icmp::HEADER_LEN;
        let end = error.end();
        let quote = buf.get(at..end)?;
        let (header_len, proto, src, dst) = if error.v6 {
            let p = ipv6::Packet::new_unchecked(quote);
            p.check_header_len().ok()?;
            (ipv6::HEADER_LEN, p.next_header(), p.src(), p.dst())
        } else {
            let p = ipv4::Packet::new_unchecked(quote);
            p.check_header_len().ok()?;
            (
                p.header_len(),
                p.protocol(),
                mapped(p.src()),
                mapped(p.dst()),
            )
        };
        if !matches!(proto, TCP | UDP) || quote.len() < header_len + ports::LEN {
            return None;
        }
        let l4 = Ports::new_unchecked(&quote[header_len..]);
        Some(Self {
            headers: Headers {
                v6: error.v6,
                at,
                l4: at + header_len,
                end,
                proto,
            },
            src,
            dst,
            src_port: l4.src(),
            dst_port: l4.dst(),
        })
    }
}
