//! A config compiled into the tables the dataplane indexes.
//!
//! Everything a worker needs per packet is computed here, once per config:
//! Maglev tables, the VIP and tunnel-peer maps, the SNAT pool. Workers only
//! look up; they never compute a table.
//!
//! Every check runs before anything big is built: a config is refused when
//! it cannot run (its tables would not fit the memory it is allowed, or
//! the XDP program's maps), or when it would break the node or the network
//! (Rialto's own addresses reused, an address no host has, an MTU the
//! tunnel leaves too little of). What passes here, `rialto run` runs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
};

use hashbrown::{HashMap, HashSet};
use rialto_tables::{
    Backend, BackendState, Bgp, Check, CheckKind, Cluster, Endpoint, FLOW_BYTES, Fleet, FleetPeer,
    Limits, MAX_BACKENDS, MAX_VNI, MaglevParams, Node, Preference, REPLY_PORT_BYTES,
    SNAT_PORT_BYTES, Service, Snapshot, SnatPool, Timeouts, health,
    maglev::{self, MaglevError},
    not_a_host, steering_capacity, vxlan_overhead,
};

use crate::config::{self, Config, Mac, Spanned};

/// What a config's tables may take on the machine that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Workers, each with a flow table of its own.
    pub workers: u32,
    /// Bytes of memory the machine can give (`MemAvailable`); `None` to
    /// check against the config's own cap only.
    pub available: Option<u64>,
}

impl Budget {
    /// One worker, against the config's cap only: offline checks and tests.
    pub const OFFLINE: Self = Self {
        workers: 1,
        available: None,
    };
}

/// The largest MTU Rialto accepts: a jumbo frame.
pub const MAX_MTU: u16 = 9216;

/// Why a config does not compile. The messages start with the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("node.vteps: more than one IPv{family} VTEP")]
    TwoVteps { family: u8 },
    #[error("node.vteps: none given, expected Rialto's VXLAN address (one per family)")]
    NoVteps,
    #[error("{field}: {addr} is {why}, expected a host's unicast address")]
    NotAHost {
        field: String,
        addr: IpAddr,
        why: &'static str,
    },
    #[error("{field}: port 0 is no port: expected 1 to 65535")]
    ZeroPort { field: String },
    #[error("{field}: {addr} is already {other}: Rialto's own addresses must each have one role")]
    AddressReused {
        field: String,
        addr: IpAddr,
        other: String,
    },
    #[error(
        "node.mtu: {mtu} leaves {left} bytes for an IPv{inner} packet through an IPv{outer} tunnel, \
         below IPv{inner}'s minimum of {min}: expected at least {needed}"
    )]
    MtuTooSmall {
        mtu: u16,
        left: usize,
        inner: u8,
        outer: u8,
        min: usize,
        needed: usize,
    },
    #[error("node.mtu: {mtu} is above the largest frame Rialto handles ({MAX_MTU})")]
    MtuTooLarge { mtu: u16 },
    #[error("node.vxlan_port: 0 is no port: expected 1 to 65535 (VXLAN's is 4789)")]
    ZeroVxlanPort,
    #[error("{field}: {mac} is {why}, expected a unicast MAC address")]
    BadMac {
        field: String,
        mac: Mac,
        why: &'static str,
    },
    #[error("timeouts.{field}: 0 seconds would expire every flow at once: expected at least 1")]
    ZeroTimeout { field: &'static str },
    #[error("limits.flows_per_worker: 0 flows: expected at least 1")]
    ZeroFlows,
    #[error(
        "limits.flows_per_worker: the tables would take {needed_mib} MiB ({detail}), above {limit}"
    )]
    TooMuchMemory {
        needed_mib: u64,
        detail: String,
        limit: String,
    },
    #[error("{field}: {count} {what}, but the XDP program holds {max} at most")]
    TooMany {
        field: String,
        count: usize,
        what: &'static str,
        max: usize,
    },
    #[error(
        "service: backends: {count} backends, but a flow names its backend in 16 bits: \
         {MAX_BACKENDS} at most"
    )]
    TooManyBackends { count: usize },
    #[error("{what}: name: empty, expected a name")]
    EmptyName { what: &'static str },
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
    #[error("service {name:?}: check: {field}: {why}")]
    BadCheck {
        name: String,
        field: &'static str,
        why: String,
    },
    #[error("service {name:?}: prefer: {cluster:?} is no cluster of the config")]
    UnknownPreferred { name: String, cluster: String },
    #[error("service {name:?}: min_healthy: {value} is not a fraction from 0 to 1")]
    BadFraction { name: String, value: String },
    #[error("service {name:?}: min_healthy: without prefer, it has nothing to measure")]
    FractionWithoutPreference { name: String },
    #[error(
        "checks.ports: {first}-{last} overlaps snat.ports {snat_first}-{snat_last}: health \
         checks need ports of their own"
    )]
    CheckPortsOverlap {
        first: u16,
        last: u16,
        snat_first: u16,
        snat_last: u16,
    },
    #[error(
        "checks.ports: {ports} ports for {backends} checked backends: expected one port per \
         backend at least"
    )]
    TooFewCheckPorts { ports: u32, backends: usize },
    #[error("{field}: {asn} is no AS number to use: expected 1 to 4294967294, not 23456")]
    BadAsn { field: &'static str, asn: u32 },
    #[error("bgp.router_id: none given and node.vteps has no IPv4 address to take it from")]
    NoRouterId,
    #[error("bgp.neighbors: none given, expected the router(s) to announce the VIPs to")]
    NoNeighbors,
    #[error("fleet.key_file: {why}")]
    FleetKey { why: String },
    #[error("{field}: 0 is no node id: expected 1 to 65535")]
    NodeZero { field: &'static str },
    #[error("fleet.peers: node {node} is this node (fleet.node)")]
    PeerIsSelf { node: u16 },
    #[error("fleet.peers: node {node} is given twice")]
    PeerTwice { node: u16 },
    #[error("fleet.peers: none given, expected the other nodes of the fleet")]
    NoPeers,
    #[error(
        "fleet.vtep_prefix: {prefix} does not cover {what} {addr}: once a node is withdrawn, \
         the others take its tunnel traffic through this prefix"
    )]
    VtepOutsidePrefix {
        prefix: String,
        what: String,
        addr: IpAddr,
    },
    #[error("fleet: node.vteps has no IPv4 address, the fleet's tunnel endpoint")]
    FleetWithoutVtep,
}

/// A [`CompileError`] and the part of the config text it is about.
#[derive(Debug, PartialEq, Eq)]
pub struct Problem {
    pub span: Range<usize>,
    pub error: CompileError,
}

/// The problems found so far.
#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn report(&mut self, span: Range<usize>, error: CompileError) {
        self.0.push(Problem { span, error });
    }
}

/// Checks the config's meaning, for `budget`, and builds the tables; on
/// failure, returns every problem found, not just the first. Nothing large
/// is allocated before every check has passed.
pub fn compile(config: &Config, budget: &Budget) -> Result<Snapshot, Vec<Problem>> {
    let mut p = Problems::default();
    let node = compile_node(&config.node, &mut p);
    let addresses = config.snat.addresses.get_ref();
    let snat = SnatPool {
        v4: v4s(addresses).collect(),
        v6: v6s(addresses).collect(),
        ports: (config.snat.ports.get_ref().0, config.snat.ports.get_ref().1),
    };
    for &addr in addresses {
        check_host(&mut p, config.snat.addresses.span(), "snat.addresses", addr);
    }
    let timeouts = compile_timeouts(&config.timeouts, &mut p);
    let limits = Limits {
        flows_per_worker: *config.limits.flows_per_worker.get_ref(),
    };
    if limits.flows_per_worker == 0 {
        p.report(
            config.limits.flows_per_worker.span(),
            CompileError::ZeroFlows,
        );
    }
    let (clusters, peers) = compile_clusters(config, &node, &mut p);
    let snat_addrs: HashSet<IpAddr> = (snat.v4.iter().map(|&a| IpAddr::V4(a)))
        .chain(snat.v6.iter().map(|&a| IpAddr::V6(a)))
        .collect();
    let mut plans = Vec::with_capacity(config.services.len());
    let mut vips = HashMap::new();
    for (index, s) in config.services.iter().enumerate() {
        let vip = *s.vip.get_ref();
        let name = s.name.get_ref().clone();
        match vips.get(&vip) {
            Some(&other) => {
                let other = config.services[other as usize].name.get_ref().clone();
                p.report(
                    s.vip.span(),
                    CompileError::DuplicateVip { name, vip, other },
                );
            }
            None => {
                vips.insert(vip, index as u32);
            }
        }
        if let Some(plan) = plan_service(s, config, &snat, &snat_addrs, &mut p) {
            plans.push(plan);
        }
    }
    let check_ports = check_check_ports(config, &mut p);
    let bgp = config
        .bgp
        .as_ref()
        .and_then(|b| compile_bgp(b, &node, &mut p));
    let fleet = config
        .fleet
        .as_ref()
        .and_then(|f| compile_fleet(f, &node, &mut p));
    check_roles(config, &mut p);
    check_mtu(config, &mut p);
    check_capacities(config, &peers, &mut p);
    check_memory(config, budget, &mut p);
    if !p.0.is_empty() {
        let mut problems = p.0;
        problems.sort_by_key(|p| p.span.start);
        return Err(problems);
    }
    // Every check passed: the Maglev tables fit what the config may take.
    let mut services = Vec::with_capacity(plans.len());
    for plan in plans {
        match plan.build(&clusters) {
            Ok(service) => services.push(service),
            Err(problem) => p.0.push(problem),
        }
    }
    if !p.0.is_empty() {
        return Err(p.0);
    }
    let vip_addrs: HashSet<IpAddr> = vips.keys().map(|v| v.addr).collect();
    let peers_snat = (fleet.iter().flat_map(|f| &f.peers)).flat_map(|p| p.snat.iter().copied());
    let snat_addrs: HashSet<IpAddr> = snat_addrs.into_iter().chain(peers_snat).collect();
    let own_addrs = (vip_addrs.iter().copied())
        .chain(snat_addrs.iter().copied())
        .chain(node.vtep_v4.map(IpAddr::V4))
        .chain(node.vtep_v6.map(IpAddr::V6))
        .chain((fleet.iter().flat_map(|f| &f.peers)).map(|p| p.vtep))
        .collect();
    Ok(Snapshot {
        node,
        snat,
        timeouts,
        limits,
        clusters,
        services,
        vips,
        peers,
        vip_addrs,
        snat_addrs,
        own_addrs,
        check_ports,
        bgp,
        fleet,
        resetting: false,
    })
}

/// The fleet's settings, checked: ids, the key, the VTEP prefix.
fn compile_fleet(f: &config::Fleet, node: &Node, p: &mut Problems) -> Option<Fleet> {
    let id = *f.node.get_ref();
    if id == 0 {
        p.report(
            f.node.span(),
            CompileError::NodeZero {
                field: "fleet.node",
            },
        );
    }
    let key = match &f.key {
        Some(Ok(key)) => Some(key.clone()),
        Some(Err(why)) => {
            let why = why.clone();
            p.report(f.key_file.span(), CompileError::FleetKey { why });
            None
        }
        None => {
            let why = "not read".to_owned();
            p.report(f.key_file.span(), CompileError::FleetKey { why });
            None
        }
    };
    let prefix = *f.vtep_prefix.get_ref();
    let covered = |p: &mut Problems, what: String, addr: IpAddr, span: Range<usize>| {
        if !prefix.contains(addr) {
            let prefix = prefix.to_string();
            p.report(span, CompileError::VtepOutsidePrefix { prefix, what, addr });
        }
    };
    match node.vtep_v4 {
        Some(vtep) => covered(
            p,
            "this node's VTEP".to_owned(),
            vtep.into(),
            f.vtep_prefix.span(),
        ),
        None => p.report(f.node.span(), CompileError::FleetWithoutVtep),
    }
    let mut seen = HashSet::new();
    for peer in f.peers.get_ref() {
        let n = *peer.node.get_ref();
        if n == 0 {
            p.report(
                peer.node.span(),
                CompileError::NodeZero {
                    field: "fleet.peers",
                },
            );
        } else if n == id {
            p.report(peer.node.span(), CompileError::PeerIsSelf { node: n });
        } else if !seen.insert(n) {
            p.report(peer.node.span(), CompileError::PeerTwice { node: n });
        }
        covered(
            p,
            format!("node {n}'s VTEP"),
            *peer.vtep.get_ref(),
            peer.vtep.span(),
        );
        check_host(p, peer.vtep.span(), "fleet.peers", *peer.vtep.get_ref());
        check_host(p, peer.addr.span(), "fleet.peers", peer.addr.get_ref().ip());
        for &addr in peer.snat.get_ref() {
            check_host(p, peer.snat.span(), "fleet.peers", addr);
        }
    }
    if f.peers.get_ref().is_empty() {
        p.report(f.peers.span(), CompileError::NoPeers);
    }
    check_host(p, f.listen.span(), "fleet.listen", f.listen.get_ref().ip());
    Some(Fleet {
        node: id,
        listen: *f.listen.get_ref(),
        key: key?,
        vtep_prefix: (prefix.addr, prefix.len),
        peers: (f.peers.get_ref().iter())
            .map(|peer| FleetPeer {
                node: *peer.node.get_ref(),
                addr: *peer.addr.get_ref(),
                vtep: *peer.vtep.get_ref(),
                snat: peer.snat.get_ref().clone(),
            })
            .collect(),
    })
}

/// The BGP speaker's settings, checked.
fn compile_bgp(b: &config::Bgp, node: &Node, p: &mut Problems) -> Option<Bgp> {
    let asn_ok = |asn: u32| asn != 0 && asn != 23456 && asn != u32::MAX;
    if !asn_ok(*b.asn.get_ref()) {
        let asn = *b.asn.get_ref();
        p.report(
            b.asn.span(),
            CompileError::BadAsn {
                field: "bgp.asn",
                asn,
            },
        );
    }
    for n in b.neighbors.get_ref() {
        if !asn_ok(*n.asn.get_ref()) {
            let asn = *n.asn.get_ref();
            p.report(
                n.asn.span(),
                CompileError::BadAsn {
                    field: "bgp.neighbors",
                    asn,
                },
            );
        }
        check_host(p, n.addr.span(), "bgp.neighbors", *n.addr.get_ref());
    }
    if b.neighbors.get_ref().is_empty() {
        p.report(b.neighbors.span(), CompileError::NoNeighbors);
    }
    let router_id = b.router_id.as_ref().map(|r| *r.get_ref()).or(node.vtep_v4);
    if router_id.is_none() {
        p.report(b.asn.span(), CompileError::NoRouterId);
    }
    Some(Bgp {
        asn: *b.asn.get_ref(),
        router_id: router_id?,
        neighbors: (b.neighbors.get_ref().iter())
            .map(|n| (*n.addr.get_ref(), *n.asn.get_ref()))
            .collect(),
        bfd: b.bfd,
    })
}

/// The check ports, if any service is checked: outside the SNAT ports, one
/// per checked backend at least.
fn check_check_ports(config: &Config, p: &mut Problems) -> Option<(u16, u16)> {
    let checked: usize = (config.services.iter())
        .filter(|s| {
            s.check
                .as_ref()
                .is_some_and(|c| c.get_ref().kind != config::CheckKind::None)
        })
        .map(|s| s.backends.get_ref().len())
        .sum();
    if checked == 0 {
        return None;
    }
    let (ports, mut span) = (config.checks.ports.get_ref(), config.checks.ports.span());
    if span.is_empty() {
        // The default, written nowhere: at the first check.
        span = (config.services.iter())
            .find_map(|s| s.check.as_ref().map(Spanned::span))
            .unwrap_or(span);
    }
    let snat = config.snat.ports.get_ref();
    if ports.0 <= snat.1 && snat.0 <= ports.1 {
        p.report(
            span.clone(),
            CompileError::CheckPortsOverlap {
                first: ports.0,
                last: ports.1,
                snat_first: snat.0,
                snat_last: snat.1,
            },
        );
    }
    let count = u32::from(ports.1 - ports.0) + 1;
    if (count as usize) < checked {
        p.report(
            span,
            CompileError::TooFewCheckPorts {
                ports: count,
                backends: checked,
            },
        );
    }
    Some((ports.0, ports.1))
}

/// The service's check, with its defaults, or why not.
fn compile_check(name: &str, check: &Spanned<config::Check>, p: &mut Problems) -> Option<Check> {
    let c = check.get_ref();
    let mut bad = |span: Range<usize>, field: &'static str, why: String| {
        let name = name.to_owned();
        p.report(span, CompileError::BadCheck { name, field, why });
    };
    let span_of = |s: Option<Range<usize>>| s.unwrap_or_else(|| check.span());
    let kind = match c.kind {
        config::CheckKind::None => return None,
        config::CheckKind::Tcp => {
            for (field, given) in [
                ("path", c.path.as_ref().map(Spanned::span)),
                ("status", c.status.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = given {
                    bad(span, field, "only an http check has one".into());
                }
            }
            CheckKind::Tcp
        }
        config::CheckKind::Http => {
            let path = c.path.as_ref().map_or("/", |p| p.get_ref().as_str());
            if !path.starts_with('/')
                || path.chars().any(|ch| ch.is_whitespace() || ch.is_control())
            {
                let span = span_of(c.path.as_ref().map(Spanned::span));
                bad(
                    span,
                    "path",
                    format!("{path:?} is not a request path like \"/healthz\""),
                );
            }
            let status = c.status.as_ref().map_or(200, |s| *s.get_ref());
            if !(100..=599).contains(&status) {
                let span = span_of(c.status.as_ref().map(Spanned::span));
                bad(
                    span,
                    "status",
                    format!("{status} is no HTTP status: expected 100 to 599"),
                );
            }
            CheckKind::Http {
                path: path.to_owned(),
                status,
            }
        }
    };
    let get = |v: &Option<Spanned<u32>>, default| v.as_ref().map_or(default, |v| *v.get_ref());
    let interval_ms = get(&c.interval_ms, Check::DEFAULT_INTERVAL_MS);
    let timeout_ms = get(&c.timeout_ms, Check::DEFAULT_TIMEOUT_MS);
    if !(MIN_CHECK_INTERVAL_MS..=MAX_CHECK_INTERVAL_MS).contains(&interval_ms) {
        let span = span_of(c.interval_ms.as_ref().map(Spanned::span));
        let why = format!(
            "{interval_ms} ms: expected {MIN_CHECK_INTERVAL_MS} to {MAX_CHECK_INTERVAL_MS}"
        );
        bad(span, "interval_ms", why);
    }
    if timeout_ms == 0 || timeout_ms > interval_ms {
        let span = span_of(c.timeout_ms.as_ref().map(Spanned::span));
        let why = format!("{timeout_ms} ms: expected 1 up to interval_ms ({interval_ms})");
        bad(span, "timeout_ms", why);
    }
    let mut count = |v: &Option<Spanned<u8>>, field, default| {
        let n = v.as_ref().map_or(default, |v| *v.get_ref());
        if n == 0 {
            let span = span_of(v.as_ref().map(Spanned::span));
            bad(span, field, "0 checks in a row: expected at least 1".into());
        }
        n
    };
    let rise = count(&c.rise, "rise", Check::DEFAULT_RISE);
    let fall = count(&c.fall, "fall", Check::DEFAULT_FALL);
    if let Some(port) = &c.port
        && *port.get_ref() == 0
    {
        bad(
            port.span(),
            "port",
            "0 is no port: expected 1 to 65535".into(),
        );
    }
    Some(Check {
        kind,
        port: c.port.as_ref().map(|p| *p.get_ref()),
        interval_ms,
        timeout_ms,
        rise,
        fall,
    })
}

/// The most and least time between two checks of a backend.
const MIN_CHECK_INTERVAL_MS: u32 = 100;
const MAX_CHECK_INTERVAL_MS: u32 = 3_600_000;

/// The service's preferred clusters, by index, and its fraction.
fn compile_preference(s: &config::Service, config: &Config, p: &mut Problems) -> Preference {
    let name = s.name.get_ref();
    let mut clusters = Vec::new();
    for cluster in s.prefer.as_ref().map_or(&[][..], |v| v.get_ref()) {
        match (config.clusters.iter()).position(|c| c.name.get_ref() == cluster.get_ref()) {
            Some(i) => clusters.push(i as u16),
            None => p.report(
                cluster.span(),
                CompileError::UnknownPreferred {
                    name: name.clone(),
                    cluster: cluster.get_ref().clone(),
                },
            ),
        }
    }
    let min_healthy = match &s.min_healthy {
        None => 0.0,
        Some(f) => {
            let value = *f.get_ref();
            if !(0.0..=1.0).contains(&value) {
                let (name, value) = (name.clone(), value.to_string());
                p.report(f.span(), CompileError::BadFraction { name, value });
            } else if s.prefer.is_none() {
                let name = name.clone();
                p.report(f.span(), CompileError::FractionWithoutPreference { name });
            }
            value
        }
    };
    Preference {
        clusters,
        min_healthy,
    }
}

fn compile_node(n: &config::Node, p: &mut Problems) -> Node {
    let vteps = n.vteps.get_ref();
    if vteps.is_empty() {
        p.report(n.vteps.span(), CompileError::NoVteps);
    }
    for (family, count) in [(4, v4s(vteps).count()), (6, v6s(vteps).count())] {
        if count > 1 {
            p.report(n.vteps.span(), CompileError::TwoVteps { family });
        }
    }
    for &vtep in vteps {
        check_host(p, n.vteps.span(), "node.vteps", vtep);
    }
    let mtu = *n.mtu.get_ref();
    if mtu > MAX_MTU {
        p.report(n.mtu.span(), CompileError::MtuTooLarge { mtu });
    }
    if *n.vxlan_port.get_ref() == 0 {
        p.report(n.vxlan_port.span(), CompileError::ZeroVxlanPort);
    }
    let mut mac = |field: &str, mac: Option<&Spanned<Mac>>| {
        mac.map(|m| {
            check_mac(p, m, field);
            m.get_ref().0
        })
    };
    Node {
        mac: mac("node.mac", n.mac.as_ref()),
        next_hop_mac: mac("node.next_hop_mac", n.next_hop_mac.as_ref()),
        vtep_mac: mac("node.vtep_mac", n.vtep_mac.as_ref()),
        vtep_v4: v4s(vteps).next(),
        vtep_v6: v6s(vteps).next(),
        mtu,
        vxlan_port: *n.vxlan_port.get_ref(),
    }
}

fn compile_timeouts(t: &config::Timeouts, p: &mut Problems) -> Timeouts {
    for (field, value) in [
        ("tcp_syn", &t.tcp_syn),
        ("tcp_established", &t.tcp_established),
        ("tcp_closing", &t.tcp_closing),
        ("udp", &t.udp),
        ("icmp", &t.icmp),
    ] {
        if *value.get_ref() == 0 {
            p.report(value.span(), CompileError::ZeroTimeout { field });
        }
    }
    Timeouts {
        tcp_syn: *t.tcp_syn.get_ref(),
        tcp_established: *t.tcp_established.get_ref(),
        tcp_closing: *t.tcp_closing.get_ref(),
        udp: *t.udp.get_ref(),
        icmp: *t.icmp.get_ref(),
    }
}

/// The clusters, and the gateway VTEP -> cluster map.
fn compile_clusters(
    config: &Config,
    node: &Node,
    p: &mut Problems,
) -> (Vec<Cluster>, HashMap<IpAddr, u16>) {
    let mut clusters = Vec::with_capacity(config.clusters.len());
    let mut peers = HashMap::new();
    for (index, c) in config.clusters.iter().enumerate() {
        let name = c.name.get_ref();
        let vni = *c.vni.get_ref();
        if name.is_empty() {
            p.report(c.name.span(), CompileError::EmptyName { what: "cluster" });
        }
        if vni > MAX_VNI {
            let name = name.clone();
            p.report(c.vni.span(), CompileError::VniOutOfRange { name, vni });
        }
        if c.gateways.get_ref().is_empty() {
            let name = name.clone();
            p.report(c.gateways.span(), CompileError::NoGateways { name });
        }
        check_mac(p, &c.gateway_mac, &format!("cluster {name:?}: gateway_mac"));
        let earlier = &config.clusters[..index];
        if earlier.iter().any(|o| o.name.get_ref() == name) {
            let name = name.clone();
            p.report(c.name.span(), CompileError::DuplicateCluster { name });
        }
        if let Some(other) = earlier.iter().find(|o| *o.vni.get_ref() == vni) {
            let (name, other) = (name.clone(), other.name.get_ref().clone());
            p.report(
                c.vni.span(),
                CompileError::DuplicateVni { name, vni, other },
            );
        }
        for &gateway in c.gateways.get_ref() {
            let (name, span) = (name.clone(), c.gateways.span());
            check_host(
                p,
                span.clone(),
                &format!("cluster {name:?}: gateways"),
                gateway,
            );
            let vtep = match gateway {
                IpAddr::V4(a) => node.vtep_v4.map(|v| v == a),
                IpAddr::V6(a) => node.vtep_v6.map(|v| v == a),
            };
            match vtep {
                None => p.report(
                    span,
                    CompileError::NoVtepForGateway {
                        name,
                        gateway,
                        family: family(gateway),
                    },
                ),
                Some(true) => p.report(span, CompileError::GatewayIsVtep { name, gateway }),
                Some(false) => match peers.get(&gateway) {
                    Some(&other) => {
                        let other = config.clusters[usize::from(other)].name.get_ref().clone();
                        p.report(
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
            gateway_mac: c.gateway_mac.get_ref().0,
        });
    }
    (clusters, peers)
}

/// A service checked and ready to get its Maglev table.
struct Plan {
    service: Service,
    /// Where a problem building the table is reported.
    span: Range<usize>,
}

impl Plan {
    /// The service with its table over every active backend, all healthy
    /// until checks say otherwise (none when no backend takes new flows).
    fn build(mut self, clusters: &[Cluster]) -> Result<Service, Problem> {
        let service = &mut self.service;
        service.selected = health::select(&service.backends, &service.preference, |_| true);
        service.table =
            (service.build_table(clusters, &service.selected)).map_err(|source| Problem {
                span: self.span,
                error: CompileError::Maglev {
                    name: service.name.clone(),
                    source,
                },
            })?;
        Ok(self.service)
    }
}

/// The service's backends, checked, and what its Maglev table is built
/// from; `None` after reporting why not.
fn plan_service(
    s: &config::Service,
    config: &Config,
    snat: &SnatPool,
    snat_addrs: &HashSet<IpAddr>,
    report: &mut Problems,
) -> Option<Plan> {
    let name = s.name.get_ref();
    let vip = *s.vip.get_ref();
    let v6 = vip.addr.is_ipv6();
    let mut ok = true;
    let mut problem = |span, error| {
        ok = false;
        report.report(span, error);
    };
    if name.is_empty() {
        problem(s.name.span(), CompileError::EmptyName { what: "service" });
    }
    if let Some(why) = not_a_host(vip.addr) {
        problem(
            s.vip.span(),
            CompileError::NotAHost {
                field: format!("service {name:?}: vip"),
                addr: vip.addr,
                why,
            },
        );
    }
    if vip.port == 0 {
        let field = format!("service {name:?}: vip");
        problem(s.vip.span(), CompileError::ZeroPort { field });
    }
    if snat_addrs.contains(&vip.addr) {
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
        let field = || format!("service {name:?}: backends");
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
        if let Some(why) = not_a_host(addr.ip()) {
            let (field, addr) = (field(), addr.ip());
            problem(span.clone(), CompileError::NotAHost { field, addr, why });
        }
        if addr.port() == 0 {
            problem(span.clone(), CompileError::ZeroPort { field: field() });
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
    let problems = report.0.len();
    let check = s
        .check
        .as_ref()
        .and_then(|c| compile_check(name, c, report));
    let preference = compile_preference(s, config, report);
    if !ok || report.0.len() > problems {
        return None;
    }
    // A draining backend keeps its live flows (the connection table holds
    // them) but is not selected, so it takes no slot and no new flow.
    let size = s.table_size.as_ref();
    Some(Plan {
        service: Service {
            name: name.clone(),
            vip,
            backends,
            table: None,
            selected: Vec::new(),
            maglev: MaglevParams {
                hash: s.hash,
                size: table_size(s),
            },
            preference,
            check,
            reset_on_down: s.reset_on_down,
            failed: vec![false; s.backends.get_ref().len()],
        },
        span: size.map_or(s.name.span(), Spanned::span),
    })
}

/// The Maglev table size the service asks for, or its hash's default.
fn table_size(s: &config::Service) -> u32 {
    s.table_size
        .as_ref()
        .map_or(s.hash.default_table_size(), |m| *m.get_ref())
}

fn check_host(p: &mut Problems, span: Range<usize>, field: &str, addr: IpAddr) {
    if let Some(why) = not_a_host(addr) {
        let field = field.to_owned();
        p.report(span, CompileError::NotAHost { field, addr, why });
    }
}

fn check_mac(p: &mut Problems, mac: &Spanned<Mac>, field: &str) {
    let why = match mac.get_ref().0 {
        [0, 0, 0, 0, 0, 0] => "all zero",
        [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] => "the broadcast address",
        [first, ..] if first & 1 == 1 => "a multicast address",
        _ => return,
    };
    let (field, mac_value) = (field.to_owned(), *mac.get_ref());
    p.report(
        mac.span(),
        CompileError::BadMac {
            field,
            mac: mac_value,
            why,
        },
    );
}

/// Rialto's own addresses each have one role: a SNAT address is no VTEP,
/// gateway or backend; a VIP's address is no VTEP or gateway (a VIP that
/// is also a SNAT address, and a gateway that is a VTEP, are told apart
/// where they are checked).
fn check_roles(config: &Config, p: &mut Problems) {
    let mut roles: HashMap<IpAddr, String> = HashMap::new();
    for &vtep in config.node.vteps.get_ref() {
        roles.insert(vtep, "one of node.vteps".to_owned());
    }
    for c in &config.clusters {
        for &gateway in c.gateways.get_ref() {
            roles
                .entry(gateway)
                .or_insert_with(|| format!("cluster {:?}'s gateway", c.name.get_ref()));
        }
    }
    for s in &config.services {
        let vip = s.vip.get_ref().addr;
        if let Some(other) = roles.get(&vip) {
            p.report(
                s.vip.span(),
                CompileError::AddressReused {
                    field: format!("service {:?}: vip", s.name.get_ref()),
                    addr: vip,
                    other: other.clone(),
                },
            );
        }
    }
    for s in &config.services {
        for b in s.backends.get_ref() {
            roles
                .entry(b.addr.get_ref().ip())
                .or_insert_with(|| format!("a backend of service {:?}", s.name.get_ref()));
        }
    }
    for &addr in config.snat.addresses.get_ref() {
        if let Some(other) = roles.get(&addr) {
            p.report(
                config.snat.addresses.span(),
                CompileError::AddressReused {
                    field: "snat.addresses".to_owned(),
                    addr,
                    other: other.clone(),
                },
            );
        }
    }
    for &addr in config.snat.addresses.get_ref() {
        roles
            .entry(addr)
            .or_insert_with(|| "one of snat.addresses".to_owned());
    }
    for peer in config.fleet.iter().flat_map(|f| f.peers.get_ref()) {
        let n = peer.node.get_ref();
        let own = [(peer.vtep.get_ref(), peer.vtep.span(), "VTEP")]
            .into_iter()
            .chain((peer.snat.get_ref().iter()).map(|a| (a, peer.snat.span(), "SNAT address")));
        for (&addr, span, what) in own {
            let role = format!("node {n}'s {what}");
            if let Some(other) = roles.get(&addr) {
                p.report(
                    span,
                    CompileError::AddressReused {
                        field: "fleet.peers".to_owned(),
                        addr,
                        other: other.clone(),
                    },
                );
            }
            roles.insert(addr, role);
        }
    }
}

/// The MTU leaves room, once a tunnel's headers are in, for the smallest
/// packet of each family a service carries: 576 bytes for IPv4 (RFC 1812
/// §4.3.2.3), 1280 for IPv6 (RFC 8200 §5), so the ICMP errors Rialto
/// sends carry MTUs their senders may use.
fn check_mtu(config: &Config, p: &mut Problems) {
    let mtu = *config.node.mtu.get_ref();
    // Per cluster, the families of its gateways.
    let families: HashMap<&str, HashSet<bool>> = (config.clusters.iter())
        .map(|c| {
            let families = c.gateways.get_ref().iter().map(IpAddr::is_ipv6).collect();
            (c.name.get_ref().as_str(), families)
        })
        .collect();
    let mut pairs = HashSet::new();
    for s in &config.services {
        let inner = s.vip.get_ref().addr.is_ipv6();
        for b in s.backends.get_ref() {
            for &outer in families
                .get(b.cluster.get_ref().as_str())
                .into_iter()
                .flatten()
            {
                pairs.insert((inner, outer));
            }
        }
    }
    let mut pairs: Vec<_> = pairs.into_iter().collect();
    pairs.sort_unstable();
    for (inner, outer) in pairs {
        let min = if inner { 1280 } else { 576 };
        let overhead = vxlan_overhead(outer);
        let left = usize::from(mtu).saturating_sub(overhead);
        if left < min {
            let version = |v6: bool| if v6 { 6 } else { 4 };
            p.report(
                config.node.mtu.span(),
                CompileError::MtuTooSmall {
                    mtu,
                    left,
                    inner: version(inner),
                    outer: version(outer),
                    min,
                    needed: min + overhead,
                },
            );
        }
    }
}

/// Within what the XDP program's maps and a flow's slot hold.
fn check_capacities(config: &Config, peers: &HashMap<IpAddr, u16>, p: &mut Problems) {
    let checks = [
        (
            "service",
            config.services.len(),
            "VIPs",
            steering_capacity::VIPS,
            config.services.last().map(|s| s.vip.span()),
        ),
        (
            "cluster: gateways",
            peers.len(),
            "gateways",
            steering_capacity::PEERS,
            config.clusters.last().map(|c| c.gateways.span()),
        ),
        (
            "snat.addresses",
            config.snat.addresses.get_ref().len(),
            "addresses",
            steering_capacity::SNAT_ADDRESSES,
            Some(config.snat.addresses.span()),
        ),
    ];
    for service in &config.services {
        let count = service.backends.get_ref().len();
        if count > MAX_BACKENDS {
            p.report(
                service.backends.span(),
                CompileError::TooManyBackends { count },
            );
        }
    }
    for (field, count, what, max, span) in checks {
        if count > max {
            let field = field.to_owned();
            p.report(
                span.unwrap_or(0..0),
                CompileError::TooMany {
                    field,
                    count,
                    what,
                    max,
                },
            );
        }
    }
}

/// The tables fit `limits.memory_mib` and what the machine can give: every
/// worker's flow table and SNAT ports, and every Maglev table twice (a
/// reload builds the new tables beside the running ones).
fn check_memory(config: &Config, budget: &Budget, p: &mut Problems) {
    const MIB: u64 = 1 << 20;
    let flows = u64::from(*config.limits.flows_per_worker.get_ref());
    let workers = u64::from(budget.workers.max(1));
    let flow_bytes = workers * flows * FLOW_BYTES;
    let ports = config.snat.ports.get_ref();
    let own = config.snat.addresses.get_ref().len() as u64;
    // The replies' index: for each protocol and SNAT address of the
    // fleet's, a row of every port (the workers' rows together).
    let peers = (config.fleet.iter().flat_map(|f| f.peers.get_ref()))
        .map(|p| p.snat.get_ref().len() as u64)
        .sum::<u64>();
    let snat_bytes = own * 2 * (u64::from(ports.1) - u64::from(ports.0) + 1) * SNAT_PORT_BYTES
        + (own + peers) * 2 * (1 << 16) * REPLY_PORT_BYTES;
    let maglev_bytes: u64 = 2 * config
        .services
        .iter()
        .map(|s| u64::from(table_size(s)) * 4)
        .sum::<u64>();
    let needed = flow_bytes + snat_bytes + maglev_bytes;
    let cap = config.limits.memory_mib.get_ref().saturating_mul(MIB);
    let (most, limit) = match budget.available {
        Some(available) if available < cap => (
            available,
            format!("the {} MiB this machine has available", available / MIB),
        ),
        _ => (cap, format!("limits.memory_mib = {}", cap / MIB)),
    };
    if needed <= most {
        return;
    }
    let detail = format!(
        "{workers} worker(s) × {flows} flows × {FLOW_BYTES} B, {} MiB of SNAT ports, {} MiB of Maglev tables",
        snat_bytes.div_ceil(MIB),
        maglev_bytes.div_ceil(MIB)
    );
    p.report(
        config.limits.flows_per_worker.span(),
        CompileError::TooMuchMemory {
            needed_mib: needed.div_ceil(MIB),
            detail,
            limit,
        },
    );
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

    /// A flow's slot names its backend in 16 bits: a service of more
    /// backends is refused, at its backends.
    #[test]
    fn a_service_of_more_backends_than_a_slot_names_is_refused() {
        let config = |n: usize| {
            let backends: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        "{{ cluster = \"east\", addr = \"198.19.{}.{}:{}\" }}",
                        i >> 13,
                        (i >> 5) & 0xff,
                        8000 + (i & 31)
                    )
                })
                .collect();
            let line = format!("backends = [{}]", backends.join(", "));
            EXAMPLE.replace(
                r#"backends = [{ cluster = "east", addr = "198.19.0.5:8080", weight = 3 }]"#,
                &line,
            )
        };
        let refused = crate::load("x", &config(MAX_BACKENDS + 1))
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(
                "service: backends: 65537 backends, but a flow names its backend in 16 bits"
            ),
            "{refused}"
        );
        assert!(refused.contains("x:"), "names the file: {refused}");
    }
}
