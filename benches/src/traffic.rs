//! The traffic generator and sink behind `rialto-traffic gen` and
//! `rialto-traffic sink`: for the benchmarks and the tests, not part of the
//! appliance.
//!
//! The generator builds every flow's frame once ([`Flows`], with etherparse)
//! and then only copies them into free UMEM frames and transmits them on
//! AF_XDP TX rings, flat out or at a set rate. Flow `i` always leaves on port
//! `i mod ports`, so on a veth pair (whose receive queue is the sender's
//! transmit queue) each flow stays on one queue of the device under test, as
//! RSS would keep it. Frames are UDP (no handshake to replay); with churn,
//! the window of flows sending slides through a larger space of flows, so
//! new flows keep starting and idle ones expire.
//!
//! The sink ([`Sink`]) decodes what comes back with etherparse, not with
//! Rialto's own parser, and checks it against what the device under test was
//! asked to do ([`Expect`]): sent back as it was (bare forwarding), or
//! load-balanced and encapsulated toward a backend's cluster as the config
//! says. Every frame carries [`MAGIC`] and its flow number in its payload,
//! and then the time it was sent ([`Stamp`]): the sink records how long
//! each took to come back ([`Latency`]).
//!
//! The return path ([`replies`]): the generator learns from each flow's
//! forwarded frame what its backend would answer (the frame turned round,
//! from the backend to the SNAT address and port, from the gateway to the
//! device's VTEP), and sends those replies instead, on the queue of the
//! worker that owns the flow or on another one; the sink then checks that
//! each comes back to its client from the VIP ([`Expect::Return`]).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use etherparse::{LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice, UdpSlice};
use hashbrown::{HashMap, HashSet};
use hdrhistogram::Histogram;
use rialto_rules::{Endpoint, Proto, Snapshot};
use serde::Serialize;

use rialto::{afxdp::XskPort, tally::Tally};
use rialto_dataplane::wire::checksum;

/// The start of every generated payload.
pub const MAGIC: [u8; 8] = *b"rialtogn";
/// Bytes VXLAN over IPv4 puts in front of an inner frame.
pub const VXLAN_OVERHEAD: usize = 14 + 20 + 8 + 8;
/// Flow `i` comes from client address `i / PORTS_PER_CLIENT` after the first,
/// port `FIRST_PORT + i % PORTS_PER_CLIENT`.
pub const PORTS_PER_CLIENT: u32 = 50_000;
pub const FIRST_PORT: u16 = 10_000;
/// The outer UDP source ports of encapsulated flows (RFC 7348: 49152–65535).
const OUTER_PORTS: u32 = 16_384;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Distinct flows built; with churn, more than send at any time.
    pub space: u32,
    /// Length of each (inner) frame from its Ethernet header, without FCS.
    pub size: usize,
    pub src_mac: [u8; 6],
    /// The device under test.
    pub dst_mac: [u8; 6],
    /// The first client address.
    pub client: IpAddr,
    /// The UDP service the flows go to.
    pub vip: SocketAddr,
    /// Encapsulate, as a client inside a cluster sends through its gateway.
    pub tunnel: Option<Tunnel>,
}

/// The outer headers of encapsulated flows.
#[derive(Clone, Copy, Debug)]
pub struct Tunnel {
    /// The cluster gateway's VTEP.
    pub src: IpAddr,
    /// The device under test's VTEP.
    pub dst: IpAddr,
    pub vni: u32,
    /// The gateway's VXLAN device: the inner frame's source MAC.
    pub inner_mac: [u8; 6],
    pub port: u16,
}

/// Why a [`Spec`] cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("client {client} and service {vip} are not of one address family")]
    Family { client: IpAddr, vip: SocketAddr },
    #[error("the tunnel's endpoints {0} and {1} are not of one address family")]
    TunnelFamily(IpAddr, IpAddr),
    #[error("{size}-byte frames cannot hold the headers and the payload mark (at least {min})")]
    TooSmall { size: usize, min: usize },
    #[error("{size}-byte frames do not fit a UMEM frame (at most {max})")]
    TooLarge { size: usize, max: usize },
    #[error("{0} flows: at least one is needed")]
    NoFlows(u32),
    #[error("{flows} flows need more client addresses than follow {client}")]
    TooManyFlows { flows: u32, client: IpAddr },
}

/// Largest frame the generator builds, encapsulation included.
pub const MAX_FRAME: usize = 3072;

/// Every flow's frame, built once.
#[derive(Debug)]
pub struct Flows {
    bytes: Vec<u8>,
    frame_len: usize,
    /// Where the frames carry their send time (the same in every frame of
    /// one build), if their payload has room.
    stamp: Option<Stamp>,
}

/// Where a frame of ours carries the time it was sent: the 8 bytes after
/// its payload's mark and flow number, in its (innermost) UDP datagram,
/// whose checksum the stamp updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The stamp's offset in the frame.
    at: usize,
    /// The datagram's checksum's offset.
    sum: usize,
}

impl Stamp {
    /// Bytes a stamp takes.
    const LEN: usize = 8;
    /// Where it is in our payload: after the mark and the flow number.
    const IN_PAYLOAD: usize = MAGIC.len() + 4;

    /// The send time (nanoseconds) our `payload` carries, if it has room.
    fn read(payload: &[u8]) -> Option<u64> {
        let stamp = payload.get(Self::IN_PAYLOAD..Self::IN_PAYLOAD + Self::LEN)?;
        Some(u64::from_be_bytes(stamp.try_into().ok()?))
    }

    /// Where `frame`, of ours (plain or in VXLAN), carries its stamp, if
    /// its payload has room.
    fn of(frame: &[u8]) -> Option<Self> {
        let offset = |part: &[u8]| part.as_ptr() as usize - frame.as_ptr() as usize;
        let outer = SlicedPacket::from_ethernet(frame).ok()?;
        let mut datagram = udp(&outer)?;
        if !datagram.payload().starts_with(&MAGIC) {
            let inner = SlicedPacket::from_ethernet(datagram.payload().get(8..)?).ok()?;
            datagram = udp(&inner)?;
        }
        let payload = datagram.payload();
        (payload.starts_with(&MAGIC) && Self::read(payload).is_some()).then(|| Self {
            at: offset(payload) + Self::IN_PAYLOAD,
            sum: offset(datagram.slice()) + 6,
        })
    }

    /// Writes `sent` (nanoseconds) into `frame` as its stamp, and updates
    /// the datagram's checksum for it (RFC 1624, the dataplane's
    /// `checksum::update`); a zero checksum (none, over IPv4) stays zero.
    fn write(self, frame: &mut [u8], sent: u64) {
        let (stamp, sum) = (self.at..self.at + Self::LEN, self.sum..self.sum + 2);
        let new = sent.to_be_bytes();
        let old = u16::from_be_bytes([frame[self.sum], frame[self.sum + 1]]);
        if old != 0 {
            // A sum of zero goes out as all ones (UDP's zero means none).
            let updated = match checksum::update(old, &frame[stamp.clone()], &new) {
                0 => 0xffff,
                c => c,
            };
            frame[sum].copy_from_slice(&updated.to_be_bytes());
        }
        frame[stamp].copy_from_slice(&new);
    }
}

impl Flows {
    /// Flows of the given frames, in order (all of one length).
    fn of(frames: impl IntoIterator<Item = Vec<u8>>) -> Result<Self, String> {
        let mut bytes = Vec::new();
        let mut frame_len = None;
        for frame in frames {
            if *frame_len.get_or_insert(frame.len()) != frame.len() {
                return Err("frames of different lengths".to_owned());
            }
            bytes.extend_from_slice(&frame);
        }
        let frame_len = frame_len.ok_or("no frame")?;
        Ok(Self::new(bytes, frame_len))
    }

    /// Flows of `bytes`, frames of `frame_len` one after another.
    fn new(bytes: Vec<u8>, frame_len: usize) -> Self {
        let stamp = Stamp::of(&bytes[..frame_len]);
        Self {
            bytes,
            frame_len,
            stamp,
        }
    }

    pub fn build(spec: &Spec) -> Result<Self, SpecError> {
        if spec.space == 0 {
            return Err(SpecError::NoFlows(spec.space));
        }
        let (ip_len, family_ok) = match (spec.client, spec.vip.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => (20, true),
            (IpAddr::V6(_), IpAddr::V6(_)) => (40, true),
            _ => (0, false),
        };
        if !family_ok {
            return Err(SpecError::Family {
                client: spec.client,
                vip: spec.vip,
            });
        }
        let min = 14 + ip_len + 8 + MAGIC.len() + 4;
        if spec.size < min {
            return Err(SpecError::TooSmall {
                size: spec.size,
                min,
            });
        }
        let outer = match spec.tunnel {
            None => 0,
            Some(t) if t.src.is_ipv4() && t.dst.is_ipv4() => VXLAN_OVERHEAD,
            Some(t) if t.src.is_ipv6() && t.dst.is_ipv6() => VXLAN_OVERHEAD + 20,
            Some(t) => return Err(SpecError::TunnelFamily(t.src, t.dst)),
        };
        let frame_len = spec.size + outer;
        if frame_len > MAX_FRAME {
            return Err(SpecError::TooLarge {
                size: spec.size,
                max: MAX_FRAME - outer,
            });
        }
        client(spec.client, spec.space - 1).ok_or(SpecError::TooManyFlows {
            flows: spec.space,
            client: spec.client,
        })?;
        let mut bytes = Vec::with_capacity(frame_len * spec.space as usize);
        let mut payload = vec![0; spec.size - (14 + ip_len + 8)];
        payload[..MAGIC.len()].copy_from_slice(&MAGIC);
        for i in 0..spec.space {
            payload[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&i.to_be_bytes());
            let (addr, port) = client(spec.client, i).expect("checked for the last flow");
            let inner_macs = match spec.tunnel {
                Some(t) => (t.inner_mac, spec.dst_mac),
                None => (spec.src_mac, spec.dst_mac),
            };
            let inner = udp_frame(inner_macs, (addr, port), spec.vip, &payload);
            match spec.tunnel {
                None => bytes.extend_from_slice(&inner),
                Some(t) => {
                    let mut vxlan = Vec::with_capacity(8 + inner.len());
                    vxlan.extend_from_slice(&[0x08, 0, 0, 0]);
                    vxlan.extend_from_slice(&(t.vni << 8).to_be_bytes());
                    vxlan.extend_from_slice(&inner);
                    let sport = outer_port(i);
                    let outer = udp_frame(
                        (spec.src_mac, spec.dst_mac),
                        (t.src, sport),
                        SocketAddr::new(t.dst, t.port),
                        &vxlan,
                    );
                    bytes.extend_from_slice(&outer);
                }
            }
        }
        debug_assert_eq!(bytes.len(), frame_len * spec.space as usize);
        Ok(Self::new(bytes, frame_len))
    }

    /// Flow `i`'s frame.
    pub fn frame(&self, i: u32) -> &[u8] {
        let start = i as usize * self.frame_len;
        &self.bytes[start..start + self.frame_len]
    }

    pub fn space(&self) -> u32 {
        (self.bytes.len() / self.frame_len) as u32
    }

    /// Bytes per frame on the wire (without FCS).
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }
}

/// The outer UDP source port of flow `i`'s encapsulated frames.
fn outer_port(i: u32) -> u16 {
    49_152 + (i % OUTER_PORTS) as u16
}

/// Flow `i`'s client address and port, if `first + i / PORTS_PER_CLIENT` exists.
pub fn client(first: IpAddr, i: u32) -> Option<(IpAddr, u16)> {
    let n = i / PORTS_PER_CLIENT;
    let addr = match first {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).checked_add(n)?.into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).checked_add(u128::from(n))?.into()),
    };
    Some((addr, FIRST_PORT + (i % PORTS_PER_CLIENT) as u16))
}

/// Ethernet, IP (TTL 64) and UDP (checksum computed) around `payload`.
fn udp_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, sport): (IpAddr, u16),
    dst: SocketAddr,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("families checked by Flows::build"),
    };
    let udp = ip.udp(sport, dst.port());
    let mut frame = Vec::with_capacity(udp.size(payload.len()));
    udp.write(&mut frame, payload)
        .expect("a Vec takes any frame below 64 KiB");
    frame
}

/// What the device under test must have done to each frame.
#[derive(Debug)]
pub enum Expect {
    /// Sent it back as it came, or with addresses swapped (bare forwarding):
    /// our payload, intact checksums.
    Echo,
    /// Load-balanced it and encapsulated it toward the backend's cluster.
    Forward(Box<Forward>),
    /// A backend's reply ([`replies`]): decapsulated and sent to the flow's
    /// client (`clients`: the first address) from the VIP.
    Return { vip: SocketAddr, clients: IpAddr },
}

/// A forwarded frame, as the config says it must look.
#[derive(Debug)]
pub struct Forward {
    vteps: Vec<IpAddr>,
    vxlan_port: u16,
    /// Gateway VTEP -> its cluster's VNI.
    gateways: HashMap<IpAddr, u32>,
    /// (VNI, backend address) of the service's backends.
    backends: HashSet<(u32, SocketAddr)>,
    snat: Vec<IpAddr>,
}

impl Expect {
    /// Frames to `vip` (a UDP service of `config`), forwarded to its backends.
    pub fn forward(config: &Snapshot, vip: SocketAddr) -> Result<Self, String> {
        let endpoint = Endpoint {
            addr: vip.ip(),
            port: vip.port(),
            proto: Proto::Udp,
        };
        let service = config
            .vips
            .get(&endpoint)
            .map(|&i| &config.services[i as usize])
            .ok_or_else(|| format!("{vip}/UDP is no service of the config"))?;
        let vni = |cluster: u16| config.clusters[usize::from(cluster)].vni;
        Ok(Self::Forward(Box::new(Forward {
            vteps: [
                config.node.vtep_v4.map(IpAddr::V4),
                config.node.vtep_v6.map(IpAddr::V6),
            ]
            .into_iter()
            .flatten()
            .collect(),
            vxlan_port: config.node.vxlan_port,
            gateways: config
                .clusters
                .iter()
                .flat_map(|c| c.gateways.iter().map(|&g| (g, c.vni)))
                .collect(),
            backends: service
                .backends
                .iter()
                .map(|b| (vni(b.cluster), b.addr))
                .collect(),
            snat: (config.snat.v4.iter().map(|&a| IpAddr::V4(a)))
                .chain(config.snat.v6.iter().map(|&a| IpAddr::V6(a)))
                .collect(),
        })))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Forward(_) => "forward",
            Self::Return { .. } => "return",
        }
    }

    /// Checks one frame that came back: our payload in it, if it is as
    /// expected.
    pub fn check<'a>(&self, frame: &'a [u8]) -> Result<&'a [u8], Mismatch> {
        let packet = SlicedPacket::from_ethernet(frame).map_err(|_| Mismatch::Undecodable)?;
        let f = match self {
            Self::Echo => return ours(&packet),
            &Self::Return { vip, clients } => return returned(&packet, vip, clients),
            Self::Forward(f) => f,
        };
        let (outer_src, outer_dst) = addresses(&packet).ok_or(Mismatch::NotVxlan)?;
        let udp = udp(&packet).ok_or(Mismatch::NotVxlan)?;
        if udp.destination_port() != f.vxlan_port || udp.payload().len() < 8 {
            return Err(Mismatch::NotVxlan);
        }
        check_sums(&packet)?;
        if !f.vteps.contains(&outer_src) {
            return Err(Mismatch::WrongSource);
        }
        let &vni = f.gateways.get(&outer_dst).ok_or(Mismatch::UnknownGateway)?;
        let vxlan = &udp.payload()[..8];
        let got = u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]);
        if vxlan[0] & 0x08 == 0 || got != vni {
            return Err(Mismatch::WrongVni);
        }
        let inner =
            SlicedPacket::from_ethernet(&udp.payload()[8..]).map_err(|_| Mismatch::Undecodable)?;
        let payload = ours(&inner)?;
        let (src, dst) = addresses(&inner).ok_or(Mismatch::Undecodable)?;
        let inner_udp = self::udp(&inner).ok_or(Mismatch::NotOurs)?;
        if !f
            .backends
            .contains(&(vni, SocketAddr::new(dst, inner_udp.destination_port())))
        {
            return Err(Mismatch::WrongBackend);
        }
        if !f.snat.contains(&src) {
            return Err(Mismatch::NotSnat);
        }
        Ok(payload)
    }
}

/// A reply that came back to its flow's client (`clients`: the first
/// address) from `vip`.
fn returned<'a>(
    packet: &SlicedPacket<'a>,
    vip: SocketAddr,
    clients: IpAddr,
) -> Result<&'a [u8], Mismatch> {
    let payload = ours(packet)?;
    let (src, dst) = addresses(packet).ok_or(Mismatch::Undecodable)?;
    let udp = udp(packet).ok_or(Mismatch::NotOurs)?;
    if SocketAddr::new(src, udp.source_port()) != vip {
        return Err(Mismatch::WrongSource);
    }
    let flow = flow_of(udp.payload()).ok_or(Mismatch::NotOurs)?;
    if client(clients, flow) != Some((dst, udp.destination_port())) {
        return Err(Mismatch::WrongClient);
    }
    Ok(payload)
}

/// The flow number a payload of ours carries.
fn flow_of(payload: &[u8]) -> Option<u32> {
    let mark = payload.get(MAGIC.len()..MAGIC.len() + 4)?;
    Some(u32::from_be_bytes(mark.try_into().ok()?))
}

/// Our payload mark, and valid IP and UDP checksums: the payload.
fn ours<'a>(packet: &SlicedPacket<'a>) -> Result<&'a [u8], Mismatch> {
    let udp = udp(packet).ok_or(Mismatch::NotOurs)?;
    if !udp.payload().starts_with(&MAGIC) {
        return Err(Mismatch::NotOurs);
    }
    check_sums(packet)?;
    Ok(udp.payload())
}

fn udp<'a>(packet: &SlicedPacket<'a>) -> Option<UdpSlice<'a>> {
    match &packet.transport {
        Some(TransportSlice::Udp(udp)) => Some(udp.clone()),
        _ => None,
    }
}

fn addresses(packet: &SlicedPacket) -> Option<(IpAddr, IpAddr)> {
    match &packet.net {
        Some(NetSlice::Ipv4(ip)) => Some((
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        )),
        Some(NetSlice::Ipv6(ip)) => Some((
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        )),
        _ => None,
    }
}

/// The IPv4 header checksum and the UDP checksum (zero: none, IPv4 only).
fn check_sums(packet: &SlicedPacket) -> Result<(), Mismatch> {
    let udp = udp(packet).ok_or(Mismatch::NotOurs)?;
    let header = udp.to_header();
    let expected = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            if h.calc_header_checksum() != h.header_checksum {
                return Err(Mismatch::BadChecksum);
            }
            if header.checksum == 0 {
                return Ok(());
            }
            header.calc_checksum_ipv4(&h, udp.payload())
        }
        Some(NetSlice::Ipv6(ip)) => {
            header.calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
        }
        _ => return Err(Mismatch::Undecodable),
    };
    match expected {
        Ok(sum) if sum == header.checksum => Ok(()),
        _ => Err(Mismatch::BadChecksum),
    }
}

/// Why a frame that came back is not what was expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// etherparse cannot decode it.
    Undecodable,
    /// No UDP payload with our mark: not a frame we sent.
    NotOurs,
    /// Not UDP to the VXLAN port with a VXLAN header.
    NotVxlan,
    /// The outer source is not the device's VTEP (a reply: the source is
    /// not the VIP).
    WrongSource,
    /// The outer destination is no gateway of the config.
    UnknownGateway,
    /// The VNI is not the gateway's cluster's (or the I flag is clear).
    WrongVni,
    /// The inner destination is no backend of the service in that cluster.
    WrongBackend,
    /// The inner source is not a SNAT address.
    NotSnat,
    /// An IPv4 header or UDP checksum is wrong.
    BadChecksum,
    /// A reply's destination is not its flow's client.
    WrongClient,
}

impl Mismatch {
    pub const ALL: [Self; 10] = [
        Self::Undecodable,
        Self::NotOurs,
        Self::NotVxlan,
        Self::WrongSource,
        Self::UnknownGateway,
        Self::WrongVni,
        Self::WrongBackend,
        Self::NotSnat,
        Self::BadChecksum,
        Self::WrongClient,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::NotOurs => "not_ours",
            Self::NotVxlan => "not_vxlan",
            Self::WrongSource => "wrong_source",
            Self::UnknownGateway => "unknown_gateway",
            Self::WrongVni => "wrong_vni",
            Self::WrongBackend => "wrong_backend",
            Self::NotSnat => "not_snat",
            Self::BadChecksum => "bad_checksum",
            Self::WrongClient => "wrong_client",
        }
    }
}

/// Counts what comes back and checks it, and records how long what came
/// back as expected took, from the stamps at and after `stamped_from`.
#[derive(Debug)]
pub struct Sink {
    expect: Expect,
    pub ok: u64,
    pub mismatches: [u64; Mismatch::ALL.len()],
    /// Nanoseconds, at 3 significant figures, up to a minute.
    latency: Histogram<u64>,
    stamped_from: u64,
}

impl Sink {
    pub fn new(expect: Expect) -> Self {
        Self {
            expect,
            ok: 0,
            mismatches: [0; Mismatch::ALL.len()],
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("bounds and precision hdrhistogram takes"),
            stamped_from: u64::MAX,
        }
    }

    /// Checks `frame`, received at `now` (nanoseconds, the clock its stamp
    /// was written by).
    pub fn inspect(&mut self, frame: &[u8], now: u64) {
        match self.expect.check(frame) {
            Ok(payload) => {
                self.ok += 1;
                if let Some(sent) = Stamp::read(payload)
                    && sent >= self.stamped_from
                {
                    self.latency.saturating_record(now.saturating_sub(sent));
                }
            }
            Err(m) => self.mismatches[m as usize] += 1,
        }
    }

    /// How long the frames stamped at or after `from` took to come back
    /// ([`Sink::latency`]); none before (frames sent before, and any
    /// without a stamp, whose stamp reads zero).
    pub fn stamped_from(&mut self, from: u64) {
        self.stamped_from = from.max(1);
    }

    /// What the frames recorded took, if any was.
    pub fn latency(&self) -> Option<Latency> {
        let h = &self.latency;
        (!h.is_empty()).then(|| Latency {
            samples: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            max_ns: h.max(),
        })
    }
}

/// How long frames took to come back, sent to received at the generator:
/// what the device under test adds, on top of the generator's own send
/// and receive path (the same for every system it measures; paced, it
/// polls for what came back every 50 µs or so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// The queue the backends' replies arrive on at the device under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplyQueue {
    /// The queue of the worker that made the flow: none is handed over.
    Same,
    /// Another worker's queue: each is handed over to the flow's worker.
    Other,
}

/// The reply a backend sends to a forwarded frame of ours: its flow
/// number, and the frame turned round (inner: from the backend to the SNAT
/// address and port; outer: from the gateway to the device's VTEP, to the
/// port and with the VNI it came with). `None`: not a forwarded frame.
pub fn reply_to(forwarded: &[u8]) -> Option<(u32, Vec<u8>)> {
    let outer = SlicedPacket::from_ethernet(forwarded).ok()?;
    let LinkSlice::Ethernet2(eth) = outer.link.as_ref()? else {
        return None;
    };
    let (vtep, gateway) = addresses(&outer)?;
    let tunnel = udp(&outer)?;
    let (vxlan, inner_frame) = tunnel.payload().split_at_checked(8)?;
    let inner = SlicedPacket::from_ethernet(inner_frame).ok()?;
    let LinkSlice::Ethernet2(inner_eth) = inner.link.as_ref()? else {
        return None;
    };
    let (snat, backend) = addresses(&inner)?;
    let datagram = udp(&inner)?;
    let flow = flow_of(datagram.payload())?;
    let reply = udp_frame(
        (inner_eth.destination(), inner_eth.source()),
        (backend, datagram.destination_port()),
        SocketAddr::new(snat, datagram.source_port()),
        datagram.payload(),
    );
    let mut header = vxlan.to_vec();
    header.extend_from_slice(&reply);
    let sport = outer_port(flow);
    let frame = udp_frame(
        (eth.destination(), eth.source()),
        (gateway, sport),
        SocketAddr::new(vtep, tunnel.destination_port()),
        &header,
    );
    Some((flow, frame))
}

/// Sends each of `flows` (flow `i` on port `i mod ports`) until its
/// forwarded frame has come back, checked by `sink`, or `patience` has
/// passed, then waits for stragglers; returns the backends' replies to
/// them ([`reply_to`]), ordered so that reply `i`, sent on port `i mod
/// ports`, arrives where `queue` says against the queue its flow's frame
/// came back on (its worker's: a worker sends on its own queue).
pub fn replies(
    ports: &mut [XskPort],
    flows: &Flows,
    sink: &mut Sink,
    queue: ReplyQueue,
    patience: Duration,
) -> Result<Flows, String> {
    let n = ports.len();
    if queue == ReplyQueue::Other && n < 2 {
        return Err("replies on another queue need two queues".to_owned());
    }
    let mut tally = Tally::default();
    // Per flow: the port its frame came back on, and the reply.
    let mut learned: Vec<Option<(usize, Vec<u8>)>> = vec![None; flows.space() as usize];
    let mut missing = learned.len();
    let mut pending: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut cursors = vec![0; n];
    let start = Instant::now();
    let mut next_round = Duration::ZERO;
    let mut quiet_since = None;
    loop {
        let now = start.elapsed();
        if missing == 0 || now >= patience {
            // Stragglers of the last round come to the forward sink.
            match *quiet_since.get_or_insert(now) {
                since if now >= since + DRAIN => break,
                _ => {}
            }
        } else if now >= next_round {
            // Each flow still missing, once more, every 50 ms.
            next_round = now + Duration::from_millis(50);
            for (p, list) in pending.iter_mut().enumerate() {
                list.clear();
                list.extend(
                    (p as u32..flows.space())
                        .step_by(n)
                        .filter(|&i| learned[i as usize].is_none()),
                );
            }
            cursors.fill(0);
        }
        let mut busy = false;
        for (p, port) in ports.iter_mut().enumerate() {
            let (list, cursor) = (&pending[p], &mut cursors[p]);
            if quiet_since.is_none() && *cursor < list.len() {
                let budget = (list.len() - *cursor).min(64);
                port.send(
                    budget,
                    |buf| {
                        let frame = flows.frame(list[*cursor]);
                        *cursor += 1;
                        buf[..frame.len()].copy_from_slice(frame);
                        frame.len()
                    },
                    &mut tally,
                );
                busy = true;
            }
        }
        for (q, port) in ports.iter_mut().enumerate() {
            let got = port.receive(
                |frame| {
                    // Not stamped: no latency is recorded.
                    sink.inspect(frame, 0);
                    if let Some((flow, reply)) = reply_to(frame)
                        && let Some(slot @ None) = learned.get_mut(flow as usize)
                    {
                        *slot = Some((q, reply));
                        missing -= 1;
                    }
                },
                &mut tally,
            );
            busy |= got > 0;
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    if missing > 0 {
        return Err(format!(
            "{missing} of {} flows' frames did not come back within {patience:?}",
            learned.len()
        ));
    }
    let mut by_queue: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
    for (q, reply) in learned.into_iter().flatten() {
        by_queue[q].push(reply);
    }
    let mut taken = vec![0; n];
    let order = (0..by_queue.iter().map(Vec::len).sum::<usize>()).map(|i| {
        let p = i % n;
        let q = match queue {
            ReplyQueue::Same => p,
            ReplyQueue::Other => (p + 1) % n,
        };
        let list = &by_queue[q];
        let reply = list.get(taken[q] % list.len().max(1)).cloned();
        taken[q] += 1;
        reply.ok_or_else(|| format!("no flow's frame came back on queue {q}"))
    });
    Flows::of(order.collect::<Result<Vec<_>, _>>()?)
}

/// How long and how fast.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Packets per second over all ports; 0: as fast as the rings take them.
    pub rate: u64,
    /// At a rate, never sleep while sending (the latency is then not the
    /// sleeps'); otherwise it sleeps whenever no frame is due.
    pub spin: bool,
    /// Flows sending at any time (a window over the flow space).
    pub flows: u32,
    /// New flows per second: the window slides this fast (0: it stays).
    pub churn: u64,
    /// Sent but not measured, first.
    pub warmup: Duration,
    pub duration: Duration,
    /// Frames offered to each port per turn when flat out.
    pub batch: usize,
}

/// How long the sink keeps receiving once sending has stopped.
const DRAIN: Duration = Duration::from_millis(300);

/// What a run saw.
#[derive(Debug, Serialize)]
pub struct Report {
    pub expect: &'static str,
    pub flows: u32,
    pub frame_len: usize,
    pub rate: u64,
    /// Over the whole run, warmup included; `received` after draining.
    pub sent: u64,
    pub received: u64,
    pub loss: f64,
    /// Packets/s sent and received in each second of the measurement.
    pub tx_pps: Vec<u64>,
    pub rx_pps: Vec<u64>,
    pub median_tx_pps: u64,
    pub median_rx_pps: u64,
    /// Frames that came back as expected, and the others by reason.
    pub ok: u64,
    pub mismatches: BTreeMap<&'static str, u64>,
    /// How long the frames sent in the measurement took to come back (none
    /// if their payload has no room for the stamp).
    pub latency: Option<Latency>,
}

/// Sends `flows` (none: only receive) on `ports` and checks what comes back
/// with `sink`, for `plan.warmup + plan.duration`, or until `stop`.
pub fn run(
    ports: &mut [XskPort],
    flows: Option<&Flows>,
    plan: &Plan,
    sink: &mut Sink,
    stop: &AtomicBool,
) -> Report {
    let n = ports.len() as u32;
    let window = plan.flows.min(flows.map_or(0, Flows::space));
    let mut cursors: Vec<u32> = (0..n).collect();
    let mut tally = Tally::default();
    let (mut tx_pps, mut rx_pps) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let end = plan.warmup + plan.duration;
    let mut next_sample = plan.warmup;
    let mut at_sample = (0, 0);
    let mut drain_until = None;
    // The stamps are this run's clock: a sink alone (no flows sent here)
    // times nothing.
    if flows.is_some() {
        sink.stamped_from(plan.warmup.as_nanos() as u64);
    }
    loop {
        let now = start.elapsed();
        if now >= next_sample && now <= end + Duration::from_millis(100) {
            if next_sample > plan.warmup {
                tx_pps.push(tally.tx_packets - at_sample.0);
                rx_pps.push(tally.rx_packets - at_sample.1);
            }
            at_sample = (tally.tx_packets, tally.rx_packets);
            next_sample += Duration::from_secs(1);
        }
        let sending = now < end && !stop.load(Ordering::Relaxed);
        match (sending, drain_until) {
            (false, None) => drain_until = Some(now + DRAIN),
            (false, Some(until)) if now >= until => break,
            _ => {}
        }
        let mut due = false;
        if let (true, Some(flows)) = (sending && window > 0, flows) {
            let budget = match plan.rate {
                0 => plan.batch * ports.len(),
                rate => {
                    let due = (rate as u128 * now.as_nanos() / 1_000_000_000) as u64;
                    (due.saturating_sub(tally.tx_packets) as usize).min(plan.batch * ports.len())
                }
            };
            // The window's first flow, a multiple of the port count so each
            // flow keeps its port.
            let slide = (plan.churn as u128 * now.as_nanos() / 1_000_000_000) as u32;
            let base = slide / n * n;
            due = budget > 0;
            let per_port = budget.div_ceil(ports.len());
            let sent = start.elapsed().as_nanos() as u64;
            for (p, port) in ports.iter_mut().enumerate() {
                let cursor = &mut cursors[p];
                port.send(
                    per_port,
                    |buf| {
                        let frame = flows.frame((base + *cursor) % flows.space());
                        *cursor += n;
                        if *cursor >= window {
                            *cursor = p as u32 % window.max(1);
                        }
                        buf[..frame.len()].copy_from_slice(frame);
                        if let Some(stamp) = flows.stamp {
                            stamp.write(&mut buf[..frame.len()], sent);
                        }
                        frame.len()
                    },
                    &mut tally,
                );
            }
        }
        let mut received = 0;
        let now = start.elapsed().as_nanos() as u64;
        for port in ports.iter_mut() {
            received += port.receive(|frame| sink.inspect(frame, now), &mut tally);
        }
        // Paced, it sleeps whenever no frame is due, replies or not: its CPU
        // then follows the rate, and what a device costs shows (a loop
        // spinning on replies would absorb the device's receive path, which
        // on a veth runs on the sender's core); unless it spins, to time
        // the frames without its sleeps. Flat out, it sleeps only while it
        // drains.
        let idle = match (sending, plan.rate) {
            (true, 0) => false,
            (true, _) => !due && !plan.spin,
            (false, _) => received == 0,
        };
        if idle {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
    };
    Report {
        expect: sink.expect.name(),
        flows: window,
        frame_len: flows.map_or(0, Flows::frame_len),
        rate: plan.rate,
        sent: tally.tx_packets,
        received: tally.rx_packets,
        loss: match tally.tx_packets {
            0 => 0.0,
            sent => 1.0 - tally.rx_packets.min(sent) as f64 / sent as f64,
        },
        median_tx_pps: median(&tx_pps),
        median_rx_pps: median(&rx_pps),
        tx_pps,
        rx_pps,
        ok: sink.ok,
        mismatches: Mismatch::ALL
            .iter()
            .zip(sink.mismatches)
            .filter(|&(_, n)| n > 0)
            .map(|(m, n)| (m.name(), n))
            .collect(),
        latency: sink.latency(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rialto_dataplane::{OwnedFrame, Pipeline, Verdict};
    use rialto_fixtures as fixtures;
    use std::sync::Arc;

    fn spec(flows: u32, size: usize) -> Spec {
        Spec {
            space: flows,
            size,
            src_mac: fixtures::ROUTER_MAC,
            dst_mac: fixtures::NODE_MAC,
            client: "198.18.0.2".parse().unwrap(),
            vip: "198.18.100.2:7".parse().unwrap(),
            tunnel: None,
        }
    }

    /// `spec`'s flows in VXLAN from east's gateway, as a client in that
    /// cluster sends them.
    fn from_east(spec: Spec) -> Spec {
        Spec {
            tunnel: Some(Tunnel {
                src: "198.18.2.1".parse().unwrap(),
                dst: "198.18.1.1".parse().unwrap(),
                vni: 100,
                inner_mac: fixtures::ROUTER_MAC,
                port: 4789,
            }),
            ..spec
        }
    }

    #[test]
    fn frames_have_the_size_asked_for_and_distinct_flows() {
        let flows = Flows::build(&spec(120_000, 64)).unwrap();
        assert_eq!(flows.frame_len(), 64);
        assert_eq!(flows.space(), 120_000);
        let tuple = |i| {
            let p = SlicedPacket::from_ethernet(flows.frame(i)).unwrap();
            (addresses(&p).unwrap().0, udp(&p).unwrap().source_port())
        };
        assert_eq!(tuple(0), ("198.18.0.2".parse().unwrap(), FIRST_PORT));
        assert_eq!(
            tuple(50_001),
            ("198.18.0.3".parse().unwrap(), FIRST_PORT + 1)
        );
        assert!(Expect::Echo.check(flows.frame(119_999)).is_ok());
    }

    #[test]
    fn specs_that_cannot_be_built_say_why() {
        assert_eq!(
            Flows::build(&spec(1, 50)).unwrap_err(),
            SpecError::TooSmall { size: 50, min: 54 }
        );
        let mut v6 = spec(1, 64);
        v6.client = "fd00::2".parse().unwrap();
        assert!(matches!(Flows::build(&v6), Err(SpecError::Family { .. })));
        let mut last = spec(2, 64);
        last.client = "255.255.255.255".parse().unwrap();
        last.space = PORTS_PER_CLIENT + 1;
        assert!(matches!(
            Flows::build(&last),
            Err(SpecError::TooManyFlows { .. })
        ));
    }

    #[test]
    fn the_sink_accepts_what_the_balancer_makes_and_names_what_it_does_not() {
        let config = Arc::new(rialto_rules::load("fixtures", fixtures::CONFIG).unwrap());
        let expect = Expect::forward(&config, "198.18.100.2:7".parse().unwrap()).unwrap();
        let flows = Flows::build(&spec(16, 128)).unwrap();
        // Only an echo: not encapsulated.
        assert_eq!(expect.check(flows.frame(0)), Err(Mismatch::NotVxlan));
        let mut pipeline = Pipeline::balance(Arc::clone(&config), 0, 1, fixtures::NODE_MAC);
        let mut frame = OwnedFrame::new(&[]);
        for i in 0..16 {
            frame.load(flows.frame(i));
            assert_eq!(frame.with(|f| pipeline.process_frame(f, 0)), Verdict::Tx);
            assert_eq!(expect.check(frame.data()).err(), None, "flow {i}");
            let mut bad = frame.data().to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(expect.check(&bad), Err(Mismatch::BadChecksum));
        }
        assert!(Expect::forward(&config, "198.18.100.9:7".parse().unwrap()).is_err());
    }

    /// A backend's reply, as `reply_to` builds it, goes through the real
    /// pipeline back to its client from the VIP, which the sink accepts;
    /// the sink names a reply that reaches another client.
    #[test]
    fn a_reply_to_a_forwarded_frame_returns_to_its_client() {
        let config = Arc::new(rialto_rules::load("fixtures", fixtures::CONFIG).unwrap());
        let vip = "198.18.100.2:7".parse().unwrap();
        let clients = "198.18.0.2".parse().unwrap();
        let expect = Expect::Return { vip, clients };
        let flows = Flows::build(&spec(16, 128)).unwrap();
        let mut pipeline = Pipeline::balance(Arc::clone(&config), 0, 1, fixtures::NODE_MAC);
        let mut frame = OwnedFrame::new(&[]);
        for i in 0..16 {
            frame.load(flows.frame(i));
            assert_eq!(frame.with(|f| pipeline.process_frame(f, 0)), Verdict::Tx);
            let (flow, reply) = reply_to(frame.data()).expect("a forwarded frame");
            assert_eq!(flow, i);
            assert_eq!(reply.len(), frame.data().len(), "the same headers");
            assert_eq!(reply_to(flows.frame(i)), None, "not encapsulated");
            frame.load(&reply);
            assert_eq!(frame.with(|f| pipeline.process_frame(f, 0)), Verdict::Tx);
            assert_eq!(expect.check(frame.data()).err(), None, "flow {i}");
            let elsewhere = Expect::Return {
                vip,
                clients: "198.18.0.3".parse().unwrap(),
            };
            assert_eq!(elsewhere.check(frame.data()), Err(Mismatch::WrongClient));
        }
    }

    /// The send time a frame carries is written with its datagram's
    /// checksum updated (which the sink checks with etherparse's): plain,
    /// in VXLAN, and over an earlier stamp, as a reply carries its flow's.
    /// Through the real pipeline both ways, the sink records how long each
    /// frame took from its stamp, from the time it was told on.
    #[test]
    fn a_stamped_frame_keeps_its_checksums_and_the_sink_times_it() {
        let flows = Flows::build(&spec(16, 64)).unwrap();
        let stamp = flows.stamp.expect("a 64-byte frame has room for a stamp");
        let tunneled = Flows::build(&from_east(spec(4, 64))).unwrap();
        let inner_stamp = tunneled.stamp.unwrap();
        assert_eq!(inner_stamp.at, stamp.at + VXLAN_OVERHEAD);
        let stamp_of = |payload: &[u8]| Stamp::read(payload).unwrap();
        for sent in [1, 0x1234_5678_9abc_def0, u64::MAX, 0xffff_0000_ffff_0000] {
            let mut frame = flows.frame(3).to_vec();
            stamp.write(&mut frame, sent);
            assert_eq!(Expect::Echo.check(&frame).map(stamp_of), Ok(sent));
            stamp.write(&mut frame, sent / 3);
            assert_eq!(Expect::Echo.check(&frame).map(stamp_of), Ok(sent / 3));
            let mut frame = tunneled.frame(1).to_vec();
            inner_stamp.write(&mut frame, sent);
            let inner = SlicedPacket::from_ethernet(&frame[VXLAN_OVERHEAD..]).unwrap();
            assert_eq!(ours(&inner).map(stamp_of), Ok(sent));
        }
        assert_eq!(Flows::build(&spec(1, 60)).unwrap().stamp, None, "no room");
        // A stamp whose sum comes to zero goes out as all ones (UDP's zero
        // means none): one of its last word's 65,536 values does.
        let all_ones = (0..=0xffff).find_map(|sent| {
            let mut frame = flows.frame(5).to_vec();
            stamp.write(&mut frame, sent);
            (frame[stamp.sum..stamp.sum + 2] == [0xff, 0xff]).then_some(frame)
        });
        let frame = all_ones.expect("a stamp whose sum is all ones");
        assert!(Expect::Echo.check(&frame).is_ok());

        let config = Arc::new(rialto_rules::load("fixtures", fixtures::CONFIG).unwrap());
        let vip = "198.18.100.2:7".parse().unwrap();
        let mut forward = Sink::new(Expect::forward(&config, vip).unwrap());
        let clients = "198.18.0.2".parse().unwrap();
        let mut back = Sink::new(Expect::Return { vip, clients });
        forward.stamped_from(1_000);
        back.stamped_from(7_000);
        let mut pipeline = Pipeline::balance(Arc::clone(&config), 0, 1, fixtures::NODE_MAC);
        let mut frame = OwnedFrame::new(&[]);
        for i in 0..16 {
            let mut input = flows.frame(i).to_vec();
            // The first before the measurement: not timed.
            let sent = 999 + u64::from(i) * 1_000;
            stamp.write(&mut input, sent);
            frame.load(&input);
            assert_eq!(frame.with(|f| pipeline.process_frame(f, 0)), Verdict::Tx);
            forward.inspect(frame.data(), sent + 5_000);
            let (_, mut reply) = reply_to(frame.data()).expect("a forwarded frame");
            // In VXLAN over IPv6, from west's gateway.
            let reply_stamp = Stamp::of(&reply).expect("room for a stamp");
            assert_eq!(reply_stamp.at, inner_stamp.at + 20);
            reply_stamp.write(&mut reply, sent + 6_000);
            frame.load(&reply);
            assert_eq!(frame.with(|f| pipeline.process_frame(f, 0)), Verdict::Tx);
            back.inspect(frame.data(), sent + 8_000);
        }
        for (sink, took) in [(&forward, 5_000), (&back, 2_000)] {
            assert_eq!((sink.ok, sink.mismatches), (16, [0; Mismatch::ALL.len()]));
            let latency = sink.latency().expect("frames timed");
            assert_eq!(latency.samples, 15, "the first was sent before");
            for got in [latency.p50_ns, latency.p99_ns, latency.max_ns] {
                assert!(
                    got.abs_diff(took) <= took / 500,
                    "{latency:?}, not {took} ns"
                );
            }
        }
    }

    #[test]
    fn encapsulated_flows_decapsulate_to_the_plain_ones() {
        let plain = Flows::build(&spec(4, 64)).unwrap();
        let tunneled = Flows::build(&from_east(spec(4, 64))).unwrap();
        assert_eq!(tunneled.frame_len(), 64 + VXLAN_OVERHEAD);
        for i in 0..4 {
            assert_eq!(&tunneled.frame(i)[VXLAN_OVERHEAD..], plain.frame(i));
        }
    }
}
