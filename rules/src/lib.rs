//! Rialto's rules: what the border node owns and where it sends it.
//!
//! The control plane parses and validates here; the dataplane only indexes
//! what this crate produced.

pub mod config;
mod endpoint;
pub mod maglev;
mod snapshot;

pub use endpoint::{Endpoint, ParseEndpointError, Proto};
pub use maglev::{MaglevError, MaglevHash, WeightedBackend};
pub use snapshot::{Backend, Cluster, CompileError, Node, Service, Snapshot, SnatPool};

use std::net::IpAddr;

/// The IANA-assigned VXLAN port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;

/// The largest VXLAN network identifier (24 bits, RFC 7348 §5).
pub const MAX_VNI: u32 = 0xff_ffff;

/// The traffic the XDP program steers into Rialto's AF_XDP sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Steering {
    /// Service VIPs: destination address, port and protocol.
    pub vips: Vec<Endpoint>,
    /// Tunnel peers (remote gateways' VTEPs): VXLAN from these is Rialto's.
    pub tunnel_peers: Vec<IpAddr>,
    /// Rialto's SNAT addresses: replies to them are Rialto's.
    pub snat_addrs: Vec<IpAddr>,
    /// UDP destination port of VXLAN.
    pub vxlan_port: u16,
}

impl Default for Steering {
    fn default() -> Self {
        Self {
            vips: Vec::new(),
            tunnel_peers: Vec::new(),
            snat_addrs: Vec::new(),
            vxlan_port: VXLAN_PORT,
        }
    }
}
