//! The border node's config file, in TOML.
//!
//! ```toml
//! [node]
//! vteps = ["198.18.1.1", "fd00:1::1"]   # Rialto's tunnel endpoints, one per family
//! next_hop_mac = "02:00:00:00:00:fe"     # optional: the router (learned from the kernel if absent)
//! mac = "02:00:00:00:01:01"              # optional: the uplink's own MAC
//! mtu = 1500                             # of the uplink (default 1500)
//!
//! [snat]
//! addresses = ["198.18.200.1", "fd00:200::1"]
//! ports = "1024-65535"
//!
//! [[cluster]]
//! name = "east"
//! vni = 100
//! gateways = ["198.18.2.1"]              # the cluster's VTEPs
//! gateway_mac = "02:00:00:00:02:01"      # their VXLAN device's MAC (inner destination)
//!
//! [[service]]
//! name = "web"
//! vip = "198.18.100.1:80/TCP"
//! backends = [
//!     { cluster = "east", addr = "198.19.0.5:8080", weight = 3 },
//! ]
//! ```
//!
//! [`Config::parse`] checks the syntax and the types; [`crate::Snapshot::compile`]
//! checks the meaning and builds the dataplane's tables. [`crate::load`] does
//! both and words every problem as `FILE:LINE:COLUMN: field: reason`: the
//! fields that the meaning checks point at keep their place in the file
//! ([`Spanned`]).

use std::{net::IpAddr, str::FromStr};

use serde::{Deserialize, Deserializer, de::Error as _};
pub use toml::Spanned;

use crate::{Endpoint, VXLAN_PORT, maglev::MaglevHash};

/// A whole config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    pub snat: Snat,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<Cluster>,
    #[serde(default, rename = "service")]
    pub services: Vec<Service>,
    /// Kubernetes ServiceImports to serve as well ([`crate::k8s`]).
    #[serde(default, rename = "import")]
    pub imports: Vec<Import>,
}

/// A file holding a Kubernetes `ServiceImport` and its `EndpointSlice`s.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// Relative to the config file's directory.
    pub file: Spanned<String>,
}

/// Why a config file could not be read: the TOML parser's first complaint.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// Where in the text, when the parser knows.
    pub span: Option<std::ops::Range<usize>>,
    pub message: String,
}

impl Config {
    /// Parses `text`; the syntax and the types, not the meaning.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ParseError {
            span: e.span(),
            message: e.message().trim_end().to_owned(),
        })
    }
}

/// The border node itself.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Rialto's tunnel endpoint addresses: at most one IPv4 and one IPv6.
    pub vteps: Spanned<Vec<IpAddr>>,
    /// The uplink's MAC, the source of every frame Rialto sends. Live,
    /// the interface's own MAC is used when this is absent.
    #[serde(default)]
    pub mac: Option<Mac>,
    /// The next hop (the top-of-rack router) every frame is sent to. Live,
    /// when absent, it is learned from the kernel: the uplink's default
    /// route's gateway in the neighbour table, followed as it changes.
    #[serde(default)]
    pub next_hop_mac: Option<Mac>,
    /// Source MAC of the inner frames Rialto encapsulates; the gateways'
    /// static neighbour entries for Rialto point at it [default: `mac`].
    #[serde(default)]
    pub vtep_mac: Option<Mac>,
    /// MTU of the uplink: an encapsulated packet larger than this is refused
    /// with an ICMP error to its sender.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// UDP destination port of VXLAN.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: u16,
}

fn default_mtu() -> u16 {
    1500
}

fn default_vxlan_port() -> u16 {
    VXLAN_PORT
}

/// Rialto's SNAT pool: the source of every connection it opens to a backend.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Snat {
    pub addresses: Spanned<Vec<IpAddr>>,
    /// `FIRST-LAST`, inclusive; split evenly between the workers.
    #[serde(default = "default_ports", deserialize_with = "port_range")]
    pub ports: (u16, u16),
}

fn default_ports() -> (u16, u16) {
    (1024, 65535)
}

fn port_range<'de, D: Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    let s = String::deserialize(d)?;
    let (first, last) = s
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .ok_or_else(|| D::Error::custom(format!("{s:?} is not a port range FIRST-LAST")))?;
    if first > last || first == 0 {
        return Err(D::Error::custom(format!(
            "port range {s:?} must go from a non-zero FIRST up to LAST"
        )));
    }
    Ok((first, last))
}

/// How long an idle flow is remembered, in seconds.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A TCP connection whose handshake has not completed.
    pub tcp_syn: u32,
    pub tcp_established: u32,
    /// After a FIN or an RST.
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
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
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

/// A remote cluster, reached through VXLAN.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: Spanned<String>,
    pub vni: Spanned<u32>,
    /// The cluster's gateway VTEPs: VXLAN from them is accepted for `vni`,
    /// and flows to the cluster are spread over them.
    pub gateways: Spanned<Vec<IpAddr>>,
    /// The MAC of the gateways' VXLAN device: the destination of inner frames.
    pub gateway_mac: Mac,
}

/// A service imported into this cluster, behind a VIP.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: Spanned<String>,
    pub vip: Spanned<Endpoint>,
    /// Maglev lookup table size: a prime [default: 65537, or Cilium's
    /// 16381 with `hash = "cilium"`].
    #[serde(default)]
    pub table_size: Option<Spanned<u32>>,
    #[serde(default, deserialize_with = "from_str")]
    pub hash: MaglevHash,
    pub backends: Spanned<Vec<Backend>>,
}

/// One backend of a service: a pod in a remote cluster.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub cluster: Spanned<String>,
    /// `ADDR:PORT` (IPv6 as `[ADDR]:PORT`); the protocol is the service's.
    pub addr: Spanned<std::net::SocketAddr>,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: BackendState,
}

fn default_weight() -> u32 {
    1
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

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            *byte = parts
                .next()
                .filter(|p| p.len() == 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{s:?} is not a MAC address like 02:00:00:00:00:01"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address like 02:00:00:00:00:01"));
        }
        Ok(Self(mac))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// Deserializes a string through the type's `FromStr`.
fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    String::deserialize(d)?.parse().map_err(D::Error::custom)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
        [node]
        vteps = ["198.18.1.1"]
        next_hop_mac = "02:00:00:00:00:fe"

        [snat]
        addresses = ["198.18.200.1"]

        [[cluster]]
        name = "east"
        vni = 100
        gateways = ["198.18.2.1"]
        gateway_mac = "02:00:00:00:02:01"

        [[service]]
        name = "web"
        vip = "198.18.100.1:80/TCP"
        backends = [{ cluster = "east", addr = "198.19.0.5:8080", weight = 3 }]
    "#;

    #[test]
    fn parses_with_defaults() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.node.mtu, 1500);
        assert_eq!(config.node.vxlan_port, VXLAN_PORT);
        assert_eq!(config.snat.ports, (1024, 65535));
        let service = &config.services[0];
        assert_eq!(service.table_size, None);
        assert_eq!(service.backends.get_ref()[0].weight, 3);
        assert_eq!(service.backends.get_ref()[0].state, BackendState::Active);
        assert_eq!(
            config.clusters[0].gateway_mac.to_string(),
            "02:00:00:00:02:01"
        );
    }
}
