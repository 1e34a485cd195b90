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
//! [`Config::parse`] checks the syntax and the types; [`crate::compile`]
//! checks the meaning and builds the dataplane's tables. [`crate::load`] does
//! both and words every problem as `FILE:LINE:COLUMN: field: reason`: the
//! fields that the meaning checks point at keep their place in the file
//! ([`Spanned`]).

use std::{net::IpAddr, str::FromStr};

use serde::{Deserialize, Deserializer, de::Error as _};
pub use toml::Spanned;

pub use rialto_tables::BackendState;
use rialto_tables::{Endpoint, MaglevHash, VXLAN_PORT};

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
    #[serde(default)]
    pub checks: Checks,
    /// Announcing the VIPs over BGP [default: not announced].
    #[serde(default)]
    pub bgp: Option<Bgp>,
    /// The other border nodes this one shares its flows with [default:
    /// alone].
    #[serde(default)]
    pub fleet: Option<Fleet>,
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
    /// How the imported services' backends are checked [default: they are
    /// not]; endpoints the file says are not ready take no new flow either.
    #[serde(default)]
    pub check: Option<Spanned<Check>>,
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
    pub mac: Option<Spanned<Mac>>,
    /// The next hop (the top-of-rack router) every frame is sent to. Live,
    /// when absent, it is learned from the kernel: the uplink's default
    /// route's gateway in the neighbour table, followed as it changes.
    #[serde(default)]
    pub next_hop_mac: Option<Spanned<Mac>>,
    /// Source MAC of the inner frames Rialto encapsulates; the gateways'
    /// static neighbour entries for Rialto point at it [default: `mac`].
    #[serde(default)]
    pub vtep_mac: Option<Spanned<Mac>>,
    /// MTU of the uplink: an encapsulated packet larger than this is refused
    /// with an ICMP error to its sender. It must leave room, once the tunnel
    /// takes its share, for the smallest packet each family must carry
    /// (576 bytes for IPv4, RFC 1812 §4.3.2.3; 1280 for IPv6, RFC 8200 §5).
    #[serde(default = "default_mtu")]
    pub mtu: Spanned<u16>,
    /// UDP destination port of VXLAN.
    #[serde(default = "default_vxlan_port")]
    pub vxlan_port: Spanned<u16>,
}

fn default_mtu() -> Spanned<u16> {
    Spanned::new(0..0, 1500)
}

fn default_vxlan_port() -> Spanned<u16> {
    Spanned::new(0..0, VXLAN_PORT)
}

/// Rialto's SNAT pool: the source of every connection it opens to a backend.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Snat {
    pub addresses: Spanned<Vec<IpAddr>>,
    /// `FIRST-LAST`, inclusive; split evenly between the workers.
    #[serde(default = "default_ports")]
    pub ports: Spanned<PortRange>,
}

fn default_ports() -> Spanned<PortRange> {
    Spanned::new(0..0, PortRange(1024, 65535))
}

/// `FIRST-LAST`: a range of ports, inclusive, from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (first, last) = s
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
            .ok_or_else(|| format!("{s:?} is not a port range FIRST-LAST"))?;
        if first > last || first == 0 {
            return Err(format!(
                "port range {s:?} must go from a non-zero FIRST up to LAST"
            ));
        }
        Ok(Self(first, last))
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// How long an idle flow is remembered, in seconds (each at least 1).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A TCP connection whose handshake has not completed.
    #[serde(default = "default_tcp_syn")]
    pub tcp_syn: Spanned<u32>,
    /// Also a connection one side has half closed: the other may go on.
    #[serde(default = "default_tcp_established")]
    pub tcp_established: Spanned<u32>,
    /// After both FINs, or an RST.
    #[serde(default = "default_tcp_closing")]
    pub tcp_closing: Spanned<u32>,
    #[serde(default = "default_udp")]
    pub udp: Spanned<u32>,
    #[serde(default = "default_icmp")]
    pub icmp: Spanned<u32>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_syn: default_tcp_syn(),
            tcp_established: default_tcp_established(),
            tcp_closing: default_tcp_closing(),
            udp: default_udp(),
            icmp: default_icmp(),
        }
    }
}

/// The defaults of [`rialto_tables::Timeouts`], placed nowhere in the file.
fn default_timeout(pick: impl Fn(&rialto_tables::Timeouts) -> u32) -> Spanned<u32> {
    Spanned::new(0..0, pick(&rialto_tables::Timeouts::default()))
}

fn default_tcp_syn() -> Spanned<u32> {
    default_timeout(|t| t.tcp_syn)
}

fn default_tcp_established() -> Spanned<u32> {
    default_timeout(|t| t.tcp_established)
}

fn default_tcp_closing() -> Spanned<u32> {
    default_timeout(|t| t.tcp_closing)
}

fn default_udp() -> Spanned<u32> {
    default_timeout(|t| t.udp)
}

fn default_icmp() -> Spanned<u32> {
    default_timeout(|t| t.icmp)
}

/// Table sizes, and the memory they may take.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Live flows per worker; beyond it, the flow closest to expiry among a
    /// few sampled is evicted. The table is allocated whole at start.
    #[serde(default = "default_flows_per_worker")]
    pub flows_per_worker: Spanned<u32>,
    /// The most memory Rialto's tables may take, in MiB: every worker's
    /// flow table and SNAT ports, and every service's Maglev table (twice:
    /// a reload builds the new ones beside the old).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: Spanned<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            flows_per_worker: default_flows_per_worker(),
            memory_mib: default_memory_mib(),
        }
    }
}

fn default_flows_per_worker() -> Spanned<u32> {
    Spanned::new(0..0, rialto_tables::Limits::default().flows_per_worker)
}

fn default_memory_mib() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_MEMORY_MIB)
}

/// [`Limits::memory_mib`]'s default: 4 GiB.
pub const DEFAULT_MEMORY_MIB: u64 = 4096;

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
    pub gateway_mac: Spanned<Mac>,
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
    /// How the backends are checked [default: they are not].
    #[serde(default)]
    pub check: Option<Spanned<Check>>,
    /// Clusters new flows go to while at least `min_healthy` of their
    /// backends are healthy; while fewer are, new flows go to every
    /// cluster's healthy backends, by weight.
    #[serde(default)]
    pub prefer: Option<Spanned<Vec<Spanned<String>>>>,
    /// A fraction, 0 to 1, of the preferred clusters' active backends
    /// [default: 0, any one].
    #[serde(default)]
    pub min_healthy: Option<Spanned<f64>>,
    /// Close the live TCP connections of a backend that fails its checks,
    /// with a reset towards the client at its next packet [default: false,
    /// they are kept until they end or time out].
    #[serde(default)]
    pub reset_on_down: bool,
}

/// Health checks of a service's backends: through the tunnel, from one of
/// Rialto's SNAT addresses (a port of `checks.ports`), so a check that
/// passes proves the gateway, the tunnel, the pod and its server.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// `tcp` (a connection accepted), `http` (`GET path` answered with
    /// `status`) or `none`.
    #[serde(deserialize_with = "from_str")]
    pub kind: CheckKind,
    /// http: the request's path [default: `/`].
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// http: the status expected [default: 200].
    #[serde(default)]
    pub status: Option<Spanned<u16>>,
    /// The port checked [default: the backend's].
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
    /// Between two checks of a backend, in milliseconds [default: 2000].
    #[serde(default)]
    pub interval_ms: Option<Spanned<u32>>,
    /// How long a check may take, in milliseconds [default: 1000].
    #[serde(default)]
    pub timeout_ms: Option<Spanned<u32>>,
    /// Checks passed in a row that bring a backend back [default: 3].
    #[serde(default)]
    pub rise: Option<Spanned<u8>>,
    /// Checks failed in a row that take a backend out [default: 3].
    #[serde(default)]
    pub fall: Option<Spanned<u8>>,
}

/// What a check does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    Tcp,
    Http,
    None,
}

impl FromStr for CheckKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "http" => Ok(Self::Http),
            "none" => Ok(Self::None),
            _ => Err(format!("{s:?} is not a check: expected tcp, http or none")),
        }
    }
}

/// This node's BGP speaker (BIRD, started and driven by Rialto): it
/// announces the VIPs to its neighbors (the top-of-rack router) only while
/// this Rialto serves.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// This node's AS number.
    pub asn: Spanned<u32>,
    /// [default: the IPv4 VTEP].
    #[serde(default)]
    pub router_id: Option<Spanned<std::net::Ipv4Addr>>,
    pub neighbors: Spanned<Vec<Neighbor>>,
    /// BFD with each neighbor (100 ms, 3 missed), so the router withdraws
    /// a node that goes silent within a third of a second [default: true].
    #[serde(default = "default_true")]
    pub bfd: bool,
}

/// The fleet of border nodes this one belongs to: each sends the flows it
/// makes to the others, and takes in theirs, so that any node can carry
/// any connection; each also takes the tunnel traffic and the replies
/// addressed to the others (their VTEPs and SNAT addresses), which reach it
/// once the router has withdrawn their owner.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// This node's id, unique in the fleet (1 to 65535).
    pub node: Spanned<u16>,
    /// Where this node receives its peers' flows (the uplink's own
    /// address, which the kernel serves: UDP).
    pub listen: Spanned<std::net::SocketAddr>,
    /// A file holding the fleet's shared key, in hex (at least 16 bytes:
    /// `openssl rand -hex 32`), relative to the config's directory: every
    /// message between nodes is authenticated with it (HMAC-SHA256).
    pub key_file: Spanned<String>,
    /// A prefix every node announces and that covers every node's VTEP:
    /// once a node is withdrawn, the tunnel traffic to its VTEP goes to the
    /// others (each node also announces its own VTEP, more specific).
    pub vtep_prefix: Spanned<Prefix>,
    pub peers: Spanned<Vec<FleetPeer>>,
    /// The key, once read from `key_file` ([`crate::load_for`] reads it),
    /// or why it could not be.
    #[serde(skip)]
    pub key: Option<Result<Vec<u8>, String>>,
}

/// Another node of the fleet.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetPeer {
    pub node: Spanned<u16>,
    /// Its `fleet.listen`.
    pub addr: Spanned<std::net::SocketAddr>,
    /// Its VTEP (`node.vteps`, IPv4).
    pub vtep: Spanned<IpAddr>,
    /// Its `snat.addresses`.
    pub snat: Spanned<Vec<IpAddr>>,
}

/// An IP prefix, `ADDR/LEN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Whether `addr` is in the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let bits = |a: IpAddr| match a {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        // Both left-aligned in 128 bits: the prefix is the top `len` bits.
        let ((mine, width), (theirs, other)) = (bits(self.addr), bits(addr));
        let len = u32::from(self.len);
        width == other && (len == 0 || (mine ^ theirs) >> (128 - len) == 0)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a prefix: expected ADDRESS/LENGTH");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!(
                "{s:?}: a prefix length of {len} is more than {max}"
            ));
        }
        Ok(Self { addr, len })
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    pub addr: Spanned<IpAddr>,
    pub asn: Spanned<u32>,
}

fn default_true() -> bool {
    true
}

/// What all health checks share.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    /// The source ports of checks, on the SNAT addresses: outside
    /// `snat.ports`, one per checked backend at least.
    #[serde(default = "default_check_ports")]
    pub ports: Spanned<PortRange>,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            ports: default_check_ports(),
        }
    }
}

fn default_check_ports() -> Spanned<PortRange> {
    Spanned::new(0..0, PortRange(61000, 61999))
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
        assert_eq!(*config.node.mtu.get_ref(), 1500);
        assert_eq!(*config.node.vxlan_port.get_ref(), VXLAN_PORT);
        assert_eq!(*config.snat.ports.get_ref(), PortRange(1024, 65535));
        assert_eq!(*config.timeouts.udp.get_ref(), 60);
        assert_eq!(*config.limits.memory_mib.get_ref(), DEFAULT_MEMORY_MIB);
        let service = &config.services[0];
        assert_eq!(service.table_size, None);
        assert_eq!(service.backends.get_ref()[0].weight, 3);
        assert_eq!(service.backends.get_ref()[0].state, BackendState::Active);
        assert_eq!(
            config.clusters[0].gateway_mac.get_ref().to_string(),
            "02:00:00:00:02:01"
        );
    }

    #[test]
    fn a_prefix_covers_its_addresses_of_its_family() {
        let p: Prefix = "198.18.3.0/24".parse().unwrap();
        assert!(p.contains("198.18.3.0".parse().unwrap()));
        assert!(p.contains("198.18.3.255".parse().unwrap()));
        assert!(!p.contains("198.18.4.1".parse().unwrap()));
        assert!(!p.contains("::ffff:198.18.3.1".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let v6: Prefix = "fd00:3::/64".parse().unwrap();
        assert!(v6.contains("fd00:3::9".parse().unwrap()));
        assert!(!v6.contains("fd00:4::9".parse().unwrap()));
        assert_eq!(
            "198.18.3.0/33".parse::<Prefix>().unwrap_err(),
            "\"198.18.3.0/33\": a prefix length of 33 is more than 32"
        );
        assert!("198.18.3.0".parse::<Prefix>().is_err());
    }
}
