//! The Rust half of `bpf/rialto.h`: map keys, values and verdict reasons.
//!
//! Both halves assert the same layout at compile time; change them together.

use std::{mem::offset_of, net::IpAddr};

use bytemuck::{Pod, Zeroable};
use rialto_tables::Endpoint;

/// `struct rialto_addr`: IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
pub(crate) type AddrKey = [u8; 16];

pub(crate) fn addr_key(addr: IpAddr) -> AddrKey {
    match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `struct rialto_vip_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct VipKey {
    addr: AddrKey,
    /// Network byte order.
    port: u16,
    proto: u8,
    pad: u8,
}

impl VipKey {
    pub(crate) fn new(vip: &Endpoint) -> Self {
        Self {
            addr: addr_key(vip.addr),
            port: vip.port.to_be(),
            proto: vip.proto.number(),
            pad: 0,
        }
    }

    /// The bytes the kernel compares; aya's maps take plain byte arrays.
    pub(crate) fn bytes(self) -> [u8; 20] {
        bytemuck::cast(self)
    }
}

/// `struct rialto_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct Config {
    /// Network byte order.
    pub(crate) vxlan_port: u16,
    pub(crate) pad: u16,
}

impl Config {
    pub(crate) fn bytes(self) -> [u8; 4] {
        bytemuck::cast(self)
    }
}

/// `struct rialto_counter`, as aya reads it: packets, then bytes.
pub(crate) type CounterValue = [u64; 2];

const _: () = {
    assert!(size_of::<AddrKey>() == 16);
    assert!(size_of::<VipKey>() == 20);
    assert!(offset_of!(VipKey, port) == 16);
    assert!(offset_of!(VipKey, proto) == 18);
    assert!(size_of::<Config>() == 4);
    assert!(size_of::<CounterValue>() == 16);
    assert!(Reason::ALL.len() == 8); // RIALTO_REASON_COUNT
};

/// `enum rialto_reason`: why the steering program gave a frame its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Reason {
    /// UDP to the VXLAN port from a tunnel peer: redirected.
    RedirectVxlan = 0,
    /// Destination is a service VIP: redirected.
    RedirectVip = 1,
    /// Destination is a SNAT address: redirected.
    RedirectSnat = 2,
    /// Owned, but no AF_XDP socket on the receive queue: passed (fail open).
    PassNoSocket = 3,
    /// Not IPv4 or IPv6 (ARP, LLDP...): passed.
    PassNotIp = 4,
    /// IP, but not Rialto's: passed.
    PassNotOwned = 5,
    /// An IP fragment, which has no ports to match on: passed.
    PassFragment = 6,
    /// Headers cut short or inconsistent: passed, for the kernel to judge.
    PassMalformed = 7,
}

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Self; 8] = [
        Self::RedirectVxlan,
        Self::RedirectVip,
        Self::RedirectSnat,
        Self::PassNoSocket,
        Self::PassNotIp,
        Self::PassNotOwned,
        Self::PassFragment,
        Self::PassMalformed,
    ];

    /// The name used in logs, summaries and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RedirectVxlan => "redirect_vxlan",
            Self::RedirectVip => "redirect_vip",
            Self::RedirectSnat => "redirect_snat",
            Self::PassNoSocket => "pass_no_socket",
            Self::PassNotIp => "pass_not_ip",
            Self::PassNotOwned => "pass_not_owned",
            Self::PassFragment => "pass_fragment",
            Self::PassMalformed => "pass_malformed",
        }
    }
}

/// Packets and bytes counted under one reason, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// The steering program's counters, indexed by [`Reason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [Counter; 8]);

impl Counters {
    pub fn get(&self, reason: Reason) -> Counter {
        self.0[reason as usize]
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        let mut out = *self;
        for (now, then) in out.0.iter_mut().zip(earlier.0) {
            now.packets -= then.packets;
            now.bytes -= then.bytes;
        }
        out
    }

    /// `(reason, counter)` pairs in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, Counter)> + '_ {
        Reason::ALL.into_iter().zip(self.0)
    }
}
