//! The tables Rialto's dataplane indexes, as one config compiles to them:
//! the node, the SNAT pool, the clusters and their gateways, the services
//! with their backends and Maglev tables, and what the XDP program steers.
//!
//! Nothing here parses a config or reads a file: `rialto-rules` does both
//! and builds a [`Snapshot`]; the dataplane only indexes it. Maglev lives
//! here whole (building a table is pure computation) so that a node, a
//! test and a benchmark build the same tables from the same backends.

pub mod context;
mod endpoint;
pub mod health;
pub mod maglev;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hashbrown::{HashMap, HashSet};
use serde::Deserialize;

pub use context::FlowContext;
pub use endpoint::{Endpoint, ParseEndpointError, Proto};
pub use health::{Check, CheckKind, MaglevParams, Preference};
pub use maglev::{MaglevError, MaglevHash, WeightedBackend};

/// The IANA-assigned VXLAN port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;

/// The largest VXLAN network identifier (24 bits, RFC 7348 §5).
pub const MAX_VNI: u32 = 0xff_ffff;

/// The most backends a service may have: a flow's slot names its backend
/// by its index in 16 bits.
pub const MAX_BACKENDS: usize = 1 << 16;

/// The most memory one slot of a worker's flow table takes, its index of
/// the forward keys and its entry in the free list included (48, about 11
/// and 4 bytes; the replies' index is counted by port, [`REPLY_PORT_BYTES`]):
/// what the config check counts per flow. The dataplane's tests hold its
/// flow table to it.
pub const FLOW_BYTES: u64 = 64;

/// The memory a worker's SNAT ports take: a free list of 2-byte ports per
/// address and protocol.
pub const SNAT_PORT_BYTES: u64 = 2;

/// The memory a port takes in the index of the replies, per SNAT address
/// of the fleet's and protocol: its flow's slot number, in a row of the
/// worker that owns the port (the workers' rows cover every port).
pub const REPLY_PORT_BYTES: u64 = 4;

/// What VXLAN adds to a packet against the uplink's MTU: the inner
/// Ethernet header, outer IP, UDP and VXLAN (the dataplane's encapsulation,
/// whose tests hold it to this).
pub const fn vxlan_overhead(v6_underlay: bool) -> usize {
    if v6_underlay {
        14 + 40 + 8 + 8
    } else {
        14 + 20 + 8 + 8
    }
}

/// Why `addr` cannot be a host Rialto talks to or is, if it cannot: what
/// the config check refuses, and the sources the dataplane drops as
/// martians.
pub fn not_a_host(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.octets()[0] == 0 || a.octets()[0] >= 240 => Some("reserved"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_loopback() => Some("the loopback address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("IPv4-mapped (write the IPv4 address itself)")
        }
        _ => None,
    }
}

/// What the XDP program's maps hold at most (`bpf/rialto.bpf.c`).
pub mod steering_capacity {
    /// `rialto_vips`.
    pub const VIPS: usize = 65536;
    /// `rialto_peers`.
    pub const PEERS: usize = 4096;
    /// `rialto_snat`.
    pub const SNAT_ADDRESSES: usize = 4096;
    /// `rialto_vteps`: this node's, one per family, and its fleet
    /// peers'.
    pub const VTEPS: usize = 64;
}

/// The dataplane's view of one config (and of the backends' health: see
/// [`Snapshot::with_health`]). A clone shares the Maglev tables.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub node: Node,
    pub snat: SnatPool,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub clusters: Vec<Cluster>,
    pub services: Vec<Service>,
    /// VIP endpoint -> index into `services`.
    pub vips: HashMap<Endpoint, u32>,
    /// Gateway VTEP -> index into `clusters`.
    pub peers: HashMap<IpAddr, u16>,
    /// The addresses of the VIPs (a VIP is an address, a port and a protocol).
    pub vip_addrs: HashSet<IpAddr>,
    /// `snat`'s addresses, to be looked up per packet.
    pub snat_addrs: HashSet<IpAddr>,
    /// Rialto's own addresses: VIPs, SNAT addresses, VTEPs. No packet from
    /// outside comes from one of them.
    pub own_addrs: HashSet<IpAddr>,
    /// The source ports of health checks (first, last), on the SNAT
    /// addresses: what comes back to them goes to the checker. `None`
    /// when no service is checked.
    pub check_ports: Option<(u16, u16)>,
    /// The BGP speaker that announces the VIPs, if any.
    pub bgp: Option<Bgp>,
    /// The fleet this node shares its flows with, if any: its peers' VTEPs
    /// and SNAT addresses are in `own_addrs`, the latter in `snat_addrs`
    /// too (their replies are taken as this node's, never allocated).
    pub fleet: Option<Fleet>,
    /// Whether a service that resets the connections of failed backends
    /// has one: only then does a packet look further than its flow.
    pub resetting: bool,
}

/// This node's BGP speaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bgp {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Address and AS of each neighbor.
    pub neighbors: Vec<(IpAddr, u32)>,
    pub bfd: bool,
}

/// The fleet of border nodes this one shares its flows with.
#[derive(Clone, PartialEq, Eq)]
pub struct Fleet {
    /// This node's id.
    pub node: u16,
    /// Where this node receives its peers' messages.
    pub listen: SocketAddr,
    /// The shared key every message is authenticated with.
    pub key: Vec<u8>,
    /// Announced by every node: covers every node's VTEP.
    pub vtep_prefix: (IpAddr, u8),
    pub peers: Vec<FleetPeer>,
}

/// Not the key.
impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.node)
            .field("listen", &self.listen)
            .field("vtep_prefix", &self.vtep_prefix)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// Another node of the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetPeer {
    pub node: u16,
    pub addr: SocketAddr,
    pub vtep: IpAddr,
    pub snat: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub mac: Option<[u8; 6]>,
    /// `None`: learned live from the kernel.
    pub next_hop_mac: Option<[u8; 6]>,
    pub vtep_mac: Option<[u8; 6]>,
    pub vtep_v4: Option<Ipv4Addr>,
    pub vtep_v6: Option<Ipv6Addr>,
    pub mtu: u16,
    pub vxlan_port: u16,
}

impl Node {
    /// Rialto's VTEP of `addr`'s family, if it has one.
    pub fn vtep_for(&self, addr: IpAddr) -> Option<IpAddr> {
        match addr {
            IpAddr::V4(_) => self.vtep_v4.map(IpAddr::V4),
            IpAddr::V6(_) => self.vtep_v6.map(IpAddr::V6),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatPool {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    /// First and last port, inclusive.
    pub ports: (u16, u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub vni: u32,
    pub gateways: Vec<IpAddr>,
    pub gateway_mac: [u8; 6],
}

#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub vip: Endpoint,
    pub backends: Vec<Backend>,
    /// Slot -> index into `backends`; `None` when no backend takes new flows.
    pub table: Option<std::sync::Arc<maglev::Table>>,
    /// Per backend, whether `table` gives it new flows ([`health::select`]).
    pub selected: Vec<bool>,
    pub maglev: MaglevParams,
    pub preference: Preference,
    pub check: Option<Check>,
    /// Whether the live TCP connections of a backend that fails its checks
    /// are closed, with a reset towards the client at its next packet
    /// (else they are kept until they end or time out).
    pub reset_on_down: bool,
    /// Per backend, whether its checks fail (as rise and fall count them).
    pub failed: Vec<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Index into the snapshot's `clusters`.
    pub cluster: u16,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
}

/// Whether a backend takes new flows.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Active,
    /// Keeps its live flows, gets no new ones.
    Draining,
}

/// How long an idle flow is remembered, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP connection whose handshake has not completed.
    pub tcp_syn: u32,
    /// Also a connection one side has half closed.
    pub tcp_established: u32,
    /// After both FINs, or an RST.
    pub tcp_closing: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: 30,
            tcp_established: 3600,
            tcp_closing: 30,
            udp: 60,
            icmp: 30,
        }
    }
}

/// Table sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live flows per worker; beyond it, the flow closest to expiry among a
    /// few sampled is evicted. The table is allocated whole at start.
    pub flows_per_worker: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            flows_per_worker: 1 << 18,
        }
    }
}

impl Snapshot {
    /// The other nodes of the fleet, if any.
    pub fn fleet_peers(&self) -> impl Iterator<Item = &FleetPeer> {
        self.fleet.iter().flat_map(|f| &f.peers)
    }

    /// What the XDP program must steer to Rialto for this snapshot.
    pub fn steering(&self) -> Steering {
        Steering {
            vips: self.services.iter().map(|s| s.vip).collect(),
            tunnel_peers: self.peers.keys().copied().collect(),
            snat_addrs: (self.snat.v4.iter().map(|&a| IpAddr::V4(a)))
                .chain(self.snat.v6.iter().map(|&a| IpAddr::V6(a)))
                .chain(self.fleet_peers().flat_map(|p| p.snat.iter().copied()))
                .collect(),
            vteps: (self.node.vtep_v4.map(IpAddr::V4).into_iter())
                .chain(self.node.vtep_v6.map(IpAddr::V6))
                .chain(self.fleet_peers().map(|p| p.vtep))
                .collect(),
            vxlan_port: self.node.vxlan_port,
        }
    }
}

/// The traffic the XDP program steers into Rialto's AF_XDP sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    /// Service VIPs: destination address, port and protocol.
    pub vips: Vec<Endpoint>,
    /// Tunnel peers (remote gateways' VTEPs): VXLAN from these is Rialto's.
    pub tunnel_peers: Vec<IpAddr>,
    /// Rialto's SNAT addresses: replies to them are Rialto's.
    pub snat_addrs: Vec<IpAddr>,
    /// Rialto's VTEPs: VXLAN only to these is Rialto's.
    pub vteps: Vec<IpAddr>,
    /// UDP destination port of VXLAN.
    pub vxlan_port: u16,
}

impl Steering {
    /// What goes from `self` to `new`: the entries to add (with `new`'s
    /// VXLAN port) and the entries to remove, so a reload writes only what
    /// changed into the XDP program's maps.
    pub fn diff(&self, new: &Self) -> (Self, Self) {
        fn minus<T: PartialEq + Copy>(a: &[T], b: &[T]) -> Vec<T> {
            a.iter().filter(|x| !b.contains(x)).copied().collect()
        }
        let added = Self {
            vips: minus(&new.vips, &self.vips),
            tunnel_peers: minus(&new.tunnel_peers, &self.tunnel_peers),
            snat_addrs: minus(&new.snat_addrs, &self.snat_addrs),
            vteps: minus(&new.vteps, &self.vteps),
            vxlan_port: new.vxlan_port,
        };
        let removed = Self {
            vips: minus(&self.vips, &new.vips),
            tunnel_peers: minus(&self.tunnel_peers, &new.tunnel_peers),
            snat_addrs: minus(&self.snat_addrs, &new.snat_addrs),
            vteps: minus(&self.vteps, &new.vteps),
            vxlan_port: self.vxlan_port,
        };
        (added, removed)
    }
}

impl Default for Steering {
    fn default() -> Self {
        Self {
            vips: Vec::new(),
            tunnel_peers: Vec::new(),
            snat_addrs: Vec::new(),
            vteps: Vec::new(),
            vxlan_port: VXLAN_PORT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steering_diff_names_only_what_changed() {
        let old = Steering {
            vips: vec![
                "198.18.100.1:80/TCP".parse().unwrap(),
                "198.18.100.2:53/UDP".parse().unwrap(),
            ],
            tunnel_peers: vec!["198.18.2.1".parse().unwrap()],
            snat_addrs: vec!["198.18.200.1".parse().unwrap()],
            vteps: vec!["198.18.1.1".parse().unwrap()],
            vxlan_port: VXLAN_PORT,
        };
        let new = Steering {
            vips: vec![
                "198.18.100.2:53/UDP".parse().unwrap(),
                "198.18.100.3:80/TCP".parse().unwrap(),
            ],
            tunnel_peers: vec!["198.18.2.1".parse().unwrap()],
            snat_addrs: vec!["198.18.200.2".parse().unwrap()],
            vteps: vec!["198.18.1.1".parse().unwrap()],
            vxlan_port: 8472,
        };
        let (added, removed) = old.diff(&new);
        assert_eq!(added.vips, vec!["198.18.100.3:80/TCP".parse().unwrap()]);
        assert_eq!(removed.vips, vec!["198.18.100.1:80/TCP".parse().unwrap()]);
        assert!(added.tunnel_peers.is_empty() && removed.tunnel_peers.is_empty());
        assert_eq!(added.snat_addrs, new.snat_addrs);
        assert_eq!(removed.snat_addrs, old.snat_addrs);
        assert_eq!(added.vxlan_port, 8472);
        assert_eq!(old.diff(&old).0.vips.len() + old.diff(&old).1.vips.len(), 0);
    }
}
