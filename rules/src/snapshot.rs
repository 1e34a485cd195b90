//! A config compiled into the tables the dataplane indexes.
//!
//! Everything a worker needs per packet is computed here, once per config:
//! Maglev tables, the VIP and tunnel-peer maps, the SNAT pool. Workers only
//! look up; they never compute a table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hashbrown::HashMap;

use crate::{
    Endpoint, MAX_VNI, Steering,
    config::{self, BackendState, Config, Limits, Timeouts},
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
    pub next_hop_mac: [u8; 6],
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

/// Why a config does not compile.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("node.vteps: more than one IPv{family} VTEP")]
    TwoVteps { family: u8 },
    #[error("cluster {name:?}: VNI {vni} is out of range (0..={MAX_VNI})")]
    VniOutOfRange { name: String, vni: u32 },
    #[error("cluster {name:?}: defined twice")]
    DuplicateCluster { name: String },
    #[error("cluster {name:?}: VNI {vni} is already cluster {other:?}'s")]
    DuplicateVni {
        name: String,
        vni: u32,
        other: String,
    },
    #[error("cluster {name:?}: gateway {gateway} is already cluster {other:?}'s")]
    SharedGateway {
        name: String,
        gateway: IpAddr,
        other: String,
    },
    #[error(
        "cluster {name:?}: gateway {gateway} is IPv{family} but node.vteps has no IPv{family} address"
    )]
    NoVtepForGateway {
        name: String,
        gateway: IpAddr,
        family: u8,
    },
    #[error("cluster {name:?}: no gateways")]
    NoGateways { name: String },
    #[error("service {name:?}: VIP {vip} is already service {other:?}'s")]
    DuplicateVip {
        name: String,
        vip: Endpoint,
        other: String,
    },
    #[error("service {name:?}: backend {backend} is in unknown cluster {cluster:?}")]
    UnknownCluster {
        name: String,
        backend: SocketAddr,
        cluster: String,
    },
    #[error("service {name:?}: backend {backend} is not of the VIP's address family")]
    FamilyMismatch { name: String, backend: SocketAddr },
    #[error("service {name:?}: snat.addresses has no IPv{family} address for its backends")]
    NoSnatAddress { name: String, family: u8 },
    #[error("service {name:?}: {source}")]
    Maglev {
        name: String,
        #[source]
        source: MaglevError,
    },
}

impl Snapshot {
    /// Checks the config's meaning and builds the tables.
    pub fn compile(config: &Config) -> Result<Self, CompileError> {
        let node = compile_node(&config.node)?;
        let snat = SnatPool {
            v4: v4s(&config.snat.addresses).collect(),
            v6: v6s(&config.snat.addresses).collect(),
            ports: config.snat.ports,
        };
        let mut clusters = Vec::with_capacity(config.clusters.len());
        let mut peers = HashMap::new();
        for (index, c) in config.clusters.iter().enumerate() {
            if c.vni > MAX_VNI {
                return Err(CompileError::VniOutOfRange {
                    name: c.name.clone(),
                    vni: c.vni,
                });
            }
            if c.gateways.is_empty() {
                return Err(CompileError::NoGateways {
                    name: c.name.clone(),
                });
            }
            for other in &config.clusters[..index] {
                if other.name == c.name {
                    return Err(CompileError::DuplicateCluster {
                        name: c.name.clone(),
                    });
                }
                if other.vni == c.vni {
                    return Err(CompileError::DuplicateVni {
                        name: c.name.clone(),
                        vni: c.vni,
                        other: other.name.clone(),
                    });
                }
            }
            for &gateway in &c.gateways {
                let has_vtep = match gateway {
                    IpAddr::V4(_) => node.vtep_v4.is_some(),
                    IpAddr::V6(_) => node.vtep_v6.is_some(),
                };
                if !has_vtep {
                    return Err(CompileError::NoVtepForGateway {
                        name: c.name.clone(),
                        gateway,
                        family: family(gateway),
                    });
                }
                if let Some(&other) = peers.get(&gateway) {
                    return Err(CompileError::SharedGateway {
                        name: c.name.clone(),
                        gateway,
                        other: config.clusters[usize::from(other)].name.clone(),
                    });
                }
                peers.insert(gateway, index as u16);
            }
            clusters.push(Cluster {
                name: c.name.clone(),
                vni: c.vni,
                gateways: c.gateways.clone(),
                gateway_mac: c.gateway_mac.0,
            });
        }
        let mut services = Vec::with_capacity(config.services.len());
        let mut vips = HashMap::new();
        for (index, s) in config.services.iter().enumerate() {
            if let Some(&other) = vips.get(&s.vip) {
                return Err(CompileError::DuplicateVip {
                    name: s.name.clone(),
                    vip: s.vip,
                    other: config.services[other as usize].name.clone(),
                });
            }
            vips.insert(s.vip, index as u32);
            services.push(compile_service(s, config, &snat)?);
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

fn compile_node(n: &config::Node) -> Result<Node, CompileError> {
    let one = |family: u8, mut addrs: Vec<IpAddr>| {
        if addrs.len() > 1 {
            Err(CompileError::TwoVteps { family })
        } else {
            Ok(addrs.pop())
        }
    };
    let vtep_v4 = one(4, v4s(&n.vteps).map(IpAddr::V4).collect())?;
    let vtep_v6 = one(6, v6s(&n.vteps).map(IpAddr::V6).collect())?;
    Ok(Node {
        mac: n.mac.map(|m| m.0),
        next_hop_mac: n.next_hop_mac.0,
        vtep_mac: n.vtep_mac.map(|m| m.0),
        vtep_v4: vtep_v4.map(|a| match a {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("filtered to IPv4"),
        }),
        vtep_v6: vtep_v6.map(|a| match a {
            IpAddr::V6(a) => a,
            IpAddr::V4(_) => unreachable!("filtered to IPv6"),
        }),
        mtu: n.mtu,
        vxlan_port: n.vxlan_port,
    })
}

fn compile_service(
    s: &config::Service,
    config: &Config,
    snat: &SnatPool,
) -> Result<Service, CompileError> {
    let v6 = s.vip.addr.is_ipv6();
    let has_snat = if v6 {
        !snat.v6.is_empty()
    } else {
        !snat.v4.is_empty()
    };
    if !has_snat {
        return Err(CompileError::NoSnatAddress {
            name: s.name.clone(),
            family: if v6 { 6 } else { 4 },
        });
    }
    let mut backends = Vec::with_capacity(s.backends.len());
    for b in &s.backends {
        let cluster = config
            .clusters
            .iter()
            .position(|c| c.name == b.cluster)
            .ok_or_else(|| CompileError::UnknownCluster {
                name: s.name.clone(),
                backend: b.addr,
                cluster: b.cluster.clone(),
            })?;
        if b.addr.is_ipv6() != v6 {
            return Err(CompileError::FamilyMismatch {
                name: s.name.clone(),
                backend: b.addr,
            });
        }
        backends.push(Backend {
            cluster: cluster as u16,
            addr: b.addr,
            weight: b.weight,
            state: b.state,
        });
    }
    // A draining backend keeps its live flows (the connection table holds
    // them) but takes no slot, so no new flow.
    let weighted: Vec<WeightedBackend> = backends
        .iter()
        .map(|b| WeightedBackend {
            endpoint: Endpoint {
                addr: b.addr.ip(),
                port: b.addr.port(),
                proto: s.vip.proto,
            },
            weight: if b.state == BackendState::Active {
                b.weight
            } else {
                0
            },
        })
        .collect();
    let table = if weighted.iter().all(|b| b.weight == 0) {
        None
    } else {
        Some(
            maglev::Table::build(
                s.hash,
                s.table_size.unwrap_or(s.hash.default_table_size()),
                &weighted,
            )
            .map_err(|source| CompileError::Maglev {
                name: s.name.clone(),
                source,
            })?,
        )
    };
    Ok(Service {
        name: s.name.clone(),
        vip: s.vip,
        backends,
        table,
    })
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
        let snapshot = Snapshot::compile(&Config::parse("x", EXAMPLE).unwrap()).unwrap();
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

    #[test]
    fn rejects_what_the_dataplane_cannot_serve() {
        let cases = [
            (
                "cluster = \"east\"",
                "cluster = \"west\"",
                "unknown cluster \"west\"",
            ),
            ("vni = 100", "vni = 16777216", "out of range"),
            (
                "addr = \"198.19.0.5:8080\"",
                "addr = \"[fd00::5]:8080\"",
                "address family",
            ),
            (
                "vteps = [\"198.18.1.1\"]",
                "vteps = [\"fd00:1::1\"]",
                "no IPv4 address",
            ),
        ];
        for (from, to, expected) in cases {
            let config = Config::parse("x", &EXAMPLE.replace(from, to)).unwrap();
            let e = Snapshot::compile(&config).unwrap_err().to_string();
            assert!(e.contains(expected), "{to}: {e}");
        }
    }
}
