//! The per-frame work: a pure function of the frame and the time.
//!
//! [`Pipeline::process`] does no I/O, so unit tests, offline replay, the
//! benchmarks and the live AF_XDP loop all run exactly the same code. One
//! file per stage: [`packet`] finds the flow, [`conntrack`] and [`snat`]
//! remember it, [`nat`] rewrites it, [`encap`] wraps it, [`icmp`] makes and
//! translates errors, [`balance`] puts them together.

pub mod balance;
pub mod conntrack;
pub mod encap;
mod frame;
pub mod icmp;
pub mod nat;
pub mod packet;
mod reflect;
pub mod snat;

use std::sync::Arc;

pub use frame::{FrameBuf, HEADROOM, OwnedFrame};
use rialto_rules::Snapshot;

use crate::wire;

/// What to do with a frame once processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit the (rewritten) frame out of the interface it came in on.
    Tx,
    /// Drop it, counted under the reason.
    Drop(DropReason),
    /// Untouched: hand it to this worker, which owns its flow.
    Handoff(u32),
}

/// Why a frame was dropped. The names are the metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Headers cut short, or a length field inconsistent with the frame.
    Malformed,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// The TX ring had no room for the frame.
    TxRingFull,
    /// VXLAN from an address that is no cluster's gateway.
    UnknownPeer,
    /// VXLAN without the I flag (RFC 7348 §5).
    VxlanInvalid,
    /// VXLAN whose VNI is not the sending gateway's cluster's.
    UnknownVni,
    /// Neither to a VIP nor a reply to one of Rialto's flows.
    NotOwned,
    /// A packet of no live flow: a reply after expiry, TCP without SYN.
    NoFlow,
    /// A fragment: it carries no ports (or not all fragments do).
    Fragment,
    /// The service has no backend taking new flows.
    NoBackend,
    /// The worker's SNAT ports for the family and protocol are all in use.
    SnatExhausted,
    /// Too big once encapsulated, and IPv4 without DF: no ICMP is asked for.
    TooBig,
    /// TTL ran out on a packet that may not get an ICMP error back.
    TtlExceeded,
    /// No room in front of the frame for the headers to push.
    NoHeadroom,
    /// The worker that owns the frame's flow had no room in its inbox.
    HandoffFull,
}

impl DropReason {
    /// Every reason, in counter-index order.
    pub const ALL: [Self; 15] = [
        Self::Malformed,
        Self::NotIp,
        Self::TxRingFull,
        Self::UnknownPeer,
        Self::VxlanInvalid,
        Self::UnknownVni,
        Self::NotOwned,
        Self::NoFlow,
        Self::Fragment,
        Self::NoBackend,
        Self::SnatExhausted,
        Self::TooBig,
        Self::TtlExceeded,
        Self::NoHeadroom,
        Self::HandoffFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotIp => "not_ip",
            Self::TxRingFull => "tx_ring_full",
            Self::UnknownPeer => "unknown_peer",
            Self::VxlanInvalid => "vxlan_invalid",
            Self::UnknownVni => "unknown_vni",
            Self::NotOwned => "not_owned",
            Self::NoFlow => "no_flow",
            Self::Fragment => "fragment",
            Self::NoBackend => "no_backend",
            Self::SnatExhausted => "snat_exhausted",
            Self::TooBig => "too_big",
            Self::TtlExceeded => "ttl_exceeded",
            Self::NoHeadroom => "no_headroom",
            Self::HandoffFull => "handoff_full",
        }
    }
}

impl From<wire::Error> for Verdict {
    fn from(_: wire::Error) -> Self {
        Self::Drop(DropReason::Malformed)
    }
}

/// The job a worker does on each frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The border node's job: balance VIP traffic over backends in remote
    /// clusters, through VXLAN, with NAT and connection tracking.
    Balance,
    /// Swap Ethernet, IP and UDP/TCP source and destination, and send the
    /// frame back: the bare AF_XDP baseline the benchmarks compare against.
    Reflect,
}

/// A worker's pipeline.
#[derive(Debug)]
pub enum Pipeline {
    Balance(Box<balance::Balancer>),
    Reflect,
}

impl Pipeline {
    /// Worker `worker` of `workers` balancing by `tables`; `mac` is the
    /// uplink's own address.
    pub fn balance(tables: Arc<Snapshot>, worker: u32, workers: u32, mac: [u8; 6]) -> Self {
        Self::Balance(Box::new(balance::Balancer::new(
            tables, worker, workers, mac,
        )))
    }

    /// Processes one frame in place. `now` is the worker's monotonic clock in
    /// nanoseconds, read once per batch.
    #[inline]
    pub fn process(&mut self, frame: &mut FrameBuf<'_>, now: u64) -> Verdict {
        match self {
            Self::Balance(b) => b.process(frame, now),
            Self::Reflect => reflect::process(frame.data_mut()),
        }
    }

    /// A balancer's totals, for the worker to publish.
    pub fn balance_stats(&self) -> Option<crate::stats::BalanceStats> {
        let Self::Balance(b) = self else {
            return None;
        };
        Some(crate::stats::BalanceStats {
            counters: b.counters(),
            flows: b.flows().stats(),
            capacity: b.flows().capacity() as u64,
        })
    }

    /// A balancer's SNAT ports: free and total per address and protocol.
    pub fn snat_use(&self) -> Vec<crate::stats::SnatUse> {
        let Self::Balance(b) = self else {
            return Vec::new();
        };
        let snat = b.flows().snat();
        snat.free()
            .map(|(addr, proto, free)| crate::stats::SnatUse {
                addr: packet::to_ip(&addr),
                proto: if proto == packet::TCP { "tcp" } else { "udp" },
                free: free as u64,
                slice: snat.slice_len() as u64,
            })
            .collect()
    }

    /// A balancer's live flows per service and backend.
    pub fn per_backend(&self) -> Vec<Vec<u32>> {
        match self {
            Self::Balance(b) => b.flows().per_backend().to_vec(),
            Self::Reflect => Vec::new(),
        }
    }

    /// Where a balancer sends frames, as learned from the kernel.
    pub fn set_next_hop(&mut self, mac: [u8; 6]) {
        if let Self::Balance(b) = self {
            b.set_next_hop(mac);
        }
    }

    /// Switches a balancer to a reloaded config's tables (see
    /// [`balance::Balancer::reload`]); reflect mode has none.
    pub fn reload(&mut self, tables: Arc<Snapshot>) {
        if let Self::Balance(b) = self {
            b.reload(tables);
        }
    }

    /// Once per batch, after the frames: housekeeping that must not wait
    /// for traffic (expiring flows).
    pub fn tick(&mut self, now: u64) {
        if let Self::Balance(b) = self {
            b.tick(now);
        }
    }
}
