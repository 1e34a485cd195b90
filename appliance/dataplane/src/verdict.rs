//! What becomes of a frame, and why the pipeline drops one.

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
    /// To the control plane: an answer to a health check, the frame now
    /// the IP packet out of its tunnel.
    Punt,
}

/// Why the pipeline dropped a frame. The names (snake case) are the metric
/// labels; `COUNT` and the iteration order come from the enum itself, so a
/// counter array indexed by `reason as usize` cannot drift from it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum DropReason {
    /// The Ethernet header (or its tag) cut short.
    MalformedEthernet,
    /// An IPv4 header cut short, or its lengths inconsistent.
    MalformedIpv4,
    /// An IPv6 header or extension header cut short, or the chain too long.
    MalformedIpv6,
    /// A TCP header cut short or with a data offset below 5.
    MalformedTcp,
    /// A UDP header cut short or with a length inconsistent with the packet.
    MalformedUdp,
    /// An ICMP header cut short, or an error whose quote holds no flow.
    MalformedIcmp,
    /// A VXLAN header cut short.
    MalformedVxlan,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// An IPv4 header whose checksum is wrong, outer or inner (RFC 1812
    /// §5.2.2).
    BadIpv4Checksum,
    /// UDP over IPv6 without a checksum, which IPv6 forbids (RFC 8200
    /// §8.1; a VXLAN outer header is the exception of RFC 6935).
    Udp6ZeroChecksum,
    /// A combination of TCP control bits no connection sends (SYN with FIN
    /// or RST, none at all, ...): never a flow's, never a new flow.
    BadTcpFlags,
    /// A source no packet can come from (RFC 1812 §5.3.7): unspecified,
    /// loopback, multicast, broadcast, reserved, IPv4-mapped on IPv6, or
    /// one of Rialto's own addresses.
    MartianSource,
    /// VXLAN from a gateway to an address that is not Rialto's VTEP.
    NotOurVtep,
    /// Neither TCP, UDP nor an ICMP error: no flow to key it by.
    UnknownL4,
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
    /// A new flow its slot cannot name (an index beyond 16 bits, which the
    /// config check refuses; or one that names nothing, the tables and the
    /// flow table's names out of step): never counted unless something is
    /// wrong.
    Unnamed,
    /// Too big once encapsulated, and no ICMP error sent: IPv4 without DF
    /// (none is asked for), or beyond the ICMP error rate.
    TooBig,
    /// TTL ran out, and no ICMP error sent: the packet may not get one
    /// back, or beyond the ICMP error rate.
    TtlExceeded,
    /// No room in front of the frame for the headers to push.
    NoHeadroom,
}

impl DropReason {
    /// The metric label.
    pub fn name(self) -> &'static str {
        self.into()
    }
}

impl From<wire::Error> for DropReason {
    fn from(e: wire::Error) -> Self {
        match e.layer() {
            wire::Layer::Ethernet => Self::MalformedEthernet,
            wire::Layer::Ipv4 => Self::MalformedIpv4,
            wire::Layer::Ipv6 => Self::MalformedIpv6,
            wire::Layer::Tcp => Self::MalformedTcp,
            wire::Layer::Udp => Self::MalformedUdp,
            wire::Layer::Icmp => Self::MalformedIcmp,
            wire::Layer::Vxlan => Self::MalformedVxlan,
        }
    }
}

impl From<wire::Error> for Verdict {
    fn from(e: wire::Error) -> Self {
        Self::Drop(e.into())
    }
}

impl From<DropReason> for Verdict {
    fn from(reason: DropReason) -> Self {
        Self::Drop(reason)
    }
}

#[cfg(test)]
mod tests {
    use strum::{EnumCount, IntoEnumIterator};

    use super::*;

    #[test]
    fn reasons_are_indexed_in_order_with_distinct_names() {
        let names: Vec<_> = DropReason::iter().map(DropReason::name).collect();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, reason) in DropReason::iter().enumerate() {
            assert_eq!(reason as usize, i, "{reason:?}");
        }
        let mut distinct = names.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert_eq!(DropReason::MalformedIpv4.name(), "malformed_ipv4");
        assert_eq!(DropReason::UnknownL4.name(), "unknown_l4");
    }
}
