//! A config compiled into the tables the dataplane indexes.
//!
//! Everything a worker needs per packet is computed here, once per config:
//! Maglev tables, the VIP and tunnel-peer maps, the SNAT pool. Workers only
//! look up; they never compute a table.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
};

use hashbrown::HashMap;

use crate::{
    Endpoint, MAX_VNI, Steering,
    config::{self, BackendState, Config, Limits, Spanned, Timeouts},
    maglev::{self, MaglevError, WeightedBackend},
};

/// The dataplane's view of one config.
#[derive(Debug)]
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

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub vip: Endpoint,
    pub backends: Vec<Backend>,
    /// Slot -> index into `backends`; `None` when no backend takes new flows.
    pub table: Option<maglev::Table>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Index into the snapshot's `clusters`.
    pub cluster: u16,
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: BackendState,
}

/// Why a config does not compile. The messages start with the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("node.vteps: more than one IPv{family} VTEP")]
    TwoVteps { family: u8 },
    #[error("cluster {name:?}: vni: {vni} is out of range (0..={MAX_VNI})")]
    VniOutOfRange { name: String, vni: u32 },
    #[error("cluster {name:?}: name: defined twice")]
    DuplicateCluster { name: String },
    #[error("cluster {name:?}: vni: {vni} is already cluster {other:?}'s")]
    DuplicateVni {
        name: String,
        vni: u32,
        other: String,
    },
    #[error("cluster {name:?}: gateways: {gateway} is already cluster {other:?}'s")]
    SharedGateway {
        name: String,
        gateway: IpAddr,
        other: String,
    },
    #[error(
        "cluster {name:?}: gateways: {gateway} is IPv{family} but node.vteps has no IPv{family} address"
    )]
    NoVtepForGateway {
        name: String,
        gateway: IpAddr,
        family: u8,
    },
    #[error("cluster {name:?}: gateways: {gateway} is one of node.vteps, Rialto itself")]
    GatewayIsVtep { name: String, gateway: IpAddr },
    #[error("cluster {name:?}: gateways: none given, expected at least one VTEP address")]
    NoGateways { name: String },
    #[error("service {name:?}: vip: {vip} is already service {other:?}'s")]
    DuplicateVip {
        name: String,
        vip: Endpoint,
        other: String,
    },
    #[error("service {name:?}: vip: {addr} is also in snat.addresses")]
    VipIsSnat { name: String, addr: IpAddr },
    #[error("service {name:?}: backends: {backend} is in unknown cluster {cluster:?}")]
    UnknownCluster {
        name: String,
        backend: SocketAddr,
        cluster: String,
    },
    #[error("service {name:?}: backends: {backend} is listed twice")]
    DuplicateBackend { name: String, backend: SocketAddr },
    #[error("service {name:?}: backends: {backend} is not of the VIP's address family")]
    FamilyMismatch { name: String, backend: SocketAddr },
    #[error("service {name:?}: vip: snat.addresses has no IPv{family} address for its backends")]
    NoSnatAddress { name: String, family: u8 },
    #[error(
        "service {name:?}: backends: the active backends' weights add up to 0, expected at least 1"
    )]
    ZeroWeight { name: String },
    #[error("service {name:?}: table_size: {source}")]
    Maglev {
        name: String,
        #[source]
        source: MaglevError,
    },
}

/// A [`CompileError`] and the part of the config text it is about.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub span: Range<usize>,
    pub error: CompileError,
}

impl Snapshot {
    /// Checks the config's meaning and builds the tables; on failure,
    /// returns every problem found, not just the first.
    pub fn compile(config: &Config) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut report = |span: Range<usize>, error| problems.push(Problem { span, error });
        let node = compile_node(&config.node, &mut report);
        let addresses = config.snat.addresses.get_ref();
        let snat = SnatPool {
            v4: v4s(addresses).collect(),
            v6: v6s(addresses).collect(),
            ports: config.snat.ports,
        };
        let mut clusters = Vec::with_capacity(config.clusters.len());
        let mut peers = HashMap::new();
        for (index, c) in config.clusters.iter().enumerate() {
            let name = c.name.get_ref();
            let vni = *c.vni.get_ref();
            if vni > MAX_VNI {
                let name = name.clone();
                report(c.vni.span(), CompileError::VniOutOfRange { name, vni });
            }
            if c.gateways.get_ref().is_empty() {
                let name = name.clone();
                report(c.gateways.span(), CompileError::NoGateways { name });
            }
            let earlier = &config.clusters[..index];
            if earlier.iter().any(|o| o.name.get_ref() == name) {
                let name = name.clone();
                report(c.name.span(), CompileError::DuplicateCluster { name });
            }
            if let Some(other) = earlier.iter().find(|o| *o.vni.get_ref() == vni) {
                let (name, other) = (name.clone(), other.name.get_ref().clone());
                report(
                    c.vni.span(),
                    CompileError::DuplicateVni { name, vni, other },
                );
            }
            for &gateway in c.gateways.get_ref() {
                let (name, span) = (name.clone(), c.gateways.span());
                let vtep = match gateway {
                    IpAddr::V4(a) => node.vtep_v4.map(|v| v == a),
                    IpAddr::V6(a) => node.vtep_v6.map(|v| v == a),
                };
                match vtep {
                    None => report(
                        span,
                        CompileError::NoVtepForGateway {
                            name,
                            gateway,
                            family: family(gateway),
                        },
                    ),
                    Some(true) => report(span, CompileError::GatewayIsVtep { name, gateway }),
                    Some(false) => match peers.get(&gateway) {
                        Some(&other) => {
                            let other = config.clusters[usize::from(other)].name.get_ref().clone();
                            report(
                                span,
                                CompileError::SharedGateway {
                                    name,
                                    gateway,
                                    other,
                                },
                            );
                        }
                        None => {
                            peers.insert(gateway, index as u16);
                        }
                    },
                }
            }
            clusters.push(Cluster {
                name: name.clone(),
                vni,
                gateways: c.gateways.get_ref().clone(),
                gateway_mac: c.gateway_mac.0,
            });
        }
        let mut services = Vec::with_capacity(config.services.len());
        let mut vips = HashMap::new();
        for (index, s) in config.services.iter().enumerate() {
            let vip = *s.vip.get_ref();
            let name = s.name.get_ref().clone();
            match vips.get(&vip) {
                Some(&other) => {
                    let other = config.services[other as usize].name.get_ref().clone();
                    report(
                        s.vip.span(),
                        CompileError::DuplicateVip { name, vip, other },
                    );
                }
                None => {
                    vips.insert(vip, index as u32);
                }
            }
            if let Some(service) = compile_service(s, config, &snat, &mut report) {
                services.push(service);
            }
        }
        if !problems.is_empty() {
            problems.sort_by_key(|p| p.span.start);
            return Err(problems);
        }
        Ok(Self {
            node,
            snat,
            timeouts: config.timeouts,
            limits: config.limits,
            clusters,
            services,
            vips,
            peers,
        })
    }

    /// What the XDP program must steer to Rialto for this snapshot.
    pub fn steering(&self) -> Steering {
        Steering {
            vips: self.services.iter().map(|s| s.vip).collect(),
            tunnel_peers: self.peers.keys().copied().collect(),
            snat_addrs: (self.snat.v4.iter().map(|&a| IpAddr::V4(a)))
                .chain(self.snat.v6.iter().map(|&a| IpAddr::V6(a)))
                .collect(),
            vxlan_port: self.node.vxlan_port,
        }
    }
}

fn compile_node(n: &config::Node, report: &mut impl FnMut(Range<usize>, CompileError)) -> Node {
    let vteps = n.vteps.get_ref();
    for (family, count) in [(4, v4s(vteps).count()), (6, v6s(vteps).count())] {
        if count > 1 {
            report(n.vteps.span(), CompileError::TwoVteps { family });
        }
    }
    Node {
        mac: n.mac.map(|m| m.0),
        next_hop_mac: n.next_hop_mac.map(|m| m.0),
        vtep_mac: n.vtep_mac.map(|m| m.0),
        vtep_v4: v4s(vteps).next(),
        vtep_v6: v6s(vteps).next(),
        mtu: n.mtu,
        vxlan_port: n.vxlan_port,
    }
}

/// The service's backends and Maglev table, or `None` after reporting why not.
fn compile_service(
    s: &config::Service,
    config: &Config,
    snat: &SnatPool,
    report: &mut impl FnMut(Range<usize>, CompileError),
) -> Option<Service> {
    let name = s.name.get_ref();
    let vip = *s.vip.get_ref();
    let v6 = vip.addr.is_ipv6();
    let mut ok = true;
    let mut problem = |span, error| {
        ok = false;
        report(span, error);
    };
    if config.snat.addresses.get_ref().contains(&vip.addr) {
        let addr = vip.addr;
        problem(
            s.vip.span(),
            CompileError::VipIsSnat {
                name: name.clone(),
                addr,
            },
        );
    }
    let has_snat = if v6 {
        !snat.v6.is_empty()
    } else {
        !snat.v4.is_empty()
    };
    if !has_snat {
        let family = if v6 { 6 } else { 4 };
        problem(
            s.vip.span(),
            CompileError::NoSnatAddress {
                name: name.clone(),
                family,
            },
        );
    }
    if let Some(m) = &s.table_size
        && let Err(source) = maglev::check_size(s.hash, *m.get_ref())
    {
        problem(
            m.span(),
            CompileError::Maglev {
                name: name.clone(),
                source,
            },
        );
    }
    let listed = s.backends.get_ref();
    let mut backends = Vec::with_capacity(listed.len());
    for (i, b) in listed.iter().enumerate() {
        let (addr, span) = (*b.addr.get_ref(), b.addr.span());
        let cluster = config
            .clusters
            .iter()
            .position(|c| c.name.get_ref() == b.cluster.get_ref());
        if cluster.is_none() {
            problem(
                b.cluster.span(),
                CompileError::UnknownCluster {
                    name: name.clone(),
                    backend: addr,
                    cluster: b.cluster.get_ref().clone(),
                },
            );
        }
        if addr.is_ipv6() != v6 {
            problem(
                span.clone(),
                CompileError::FamilyMismatch {
                    name: name.clone(),
                    backend: addr,
                },
            );
        }
        if listed[..i]
            .iter()
            .any(|o| *o.addr.get_ref() == addr && o.cluster.get_ref() == b.cluster.get_ref())
        {
            problem(
                span,
                CompileError::DuplicateBackend {
                    name: name.clone(),
                    backend: addr,
                },
            );
        }
        backends.push(Backend {
            cluster: cluster.unwrap_or_default() as u16,
            addr,
            weight: b.weight,
            state: b.state,
        });
    }
    let active = || backends.iter().filter(|b| b.state == BackendState::Active);
    if active().next().is_some() && active().all(|b| b.weight == 0) {
        problem(
            s.backends.span(),
            CompileError::ZeroWeight { name: name.clone() },
        );
    }
    if !ok {
        return None;
    }
    // A draining backend keeps its live flows (the connection table holds
    // them) but takes no slot, so no new flow.
    let weighted: Vec<WeightedBackend> = backends
        .iter()
        .map(|b| WeightedBackend {
            endpoint: Endpoint {
                addr: b.addr.ip(),
                port: b.addr.port(),
                proto: vip.proto,
            },
            weight: if b.state == BackendState::Active {
                b.weight
            } else {
                0
            },
            // Two clusters may use the same pod address: each backend is
            // known by its cluster's VNI as well.
            scope: Some(config_vni(config, b.cluster)),
        })
        .collect();
    let table = if weighted.iter().all(|b| b.weight == 0) {
        None
    } else {
        let size = s.table_size.as_ref();
        let built = maglev::Table::build(
            s.hash,
            size.map_or(s.hash.default_table_size(), |m| *m.get_ref()),
            &weighted,
        );
        match built {
            Ok(table) => Some(table),
            Err(source) => {
                let span = size.map_or(s.name.span(), Spanned::span);
                report(
                    span,
                    CompileError::Maglev {
                        name: name.clone(),
                        source,
                    },
                );
                return None;
            }
        }
    };
    Some(Service {
        name: name.clone(),
        vip,
        backends,
        table,
    })
}

/// The VNI of the config's cluster `index`.
fn config_vni(config: &Config, index: u16) -> u32 {
    *config.clusters[usize::from(index)].vni.get_ref()
}

fn family(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 4 } else { 6 }
}

fn v4s(addrs: &[IpAddr]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    addrs.iter().filter_map(|a| match a {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    })
}

fn v6s(addrs: &[IpAddr]) -> impl Iterator<Item = Ipv6Addr> + '_ {
    addrs.iter().filter_map(|a| match a {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::EXAMPLE;

    #[test]
    fn compiles_the_example() {
        let snapshot = crate::load("x", EXAMPLE).unwrap();
        assert_eq!(snapshot.node.vtep_v4, Some(Ipv4Addr::new(198, 18, 1, 1)));
        assert_eq!(
            snapshot.peers.get(&"198.18.2.1".parse::<IpAddr>().unwrap()),
            Some(&0)
        );
        let vip: Endpoint = "198.18.100.1:80/TCP".parse().unwrap();
        assert_eq!(snapshot.vips.get(&vip), Some(&0));
        let table = snapshot.services[0].table.as_ref().unwrap();
        assert!(table.slots().iter().all(|&b| b == 0));
        assert_eq!(
            snapshot.steering().tunnel_peers,
            vec!["198.18.2.1".parse::<IpAddr>().unwrap()]
        );
    }
}
