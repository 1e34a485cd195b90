//! The border node's job (DESIGN.md, "What a border node does").
//!
//! Forward: client -> VIP, from the uplink or out of a cluster's tunnel:
//! look the flow up (on a miss, Maglev picks the backend and a SNAT port is
//! taken), DNAT to the backend, SNAT to Rialto, encapsulate toward the
//! backend's cluster. Return: out of the tunnel, reverse NAT, and out to the
//! client the way it came. ICMP errors about a flow go the same ways.

mod fast;

use std::{net::IpAddr, sync::Arc};

use rialto_tables::{FlowContext, Snapshot};

use self::fast::Stage;
use super::{
    conntrack::{
        Conntrack, Direction, Flow, FlowKey, FlowMemory, InsertError, Names, Restored, Rewrite,
        Side, Slot, TcpState, UPLINK,
    },
    encap::{self, Link, Template, Tunnel},
    icmp::{self, ErrorKind, Quoted, RateLimit},
    keymap::KeyMap,
    nat::{self, Headers},
    packet::{Addr, Ip, Ports, TCP, UDP, from_ip, is_icmp_error, is_martian, is_v4_mapped},
    refuse,
    replica::{Adopted, Changes, Replica},
    snat::SnatPorts,
};
use crate::{
    DropReason, FrameBuf, Verdict,
    wire::{ethernet, ipv4, ipv6, tcp::flags, udp, vxlan},
};

/// The sweep visits every slot that has held a flow once per 2^30 ns
/// (about a second), paced by the time between batches, not their count:
/// a worker stepping often for a frame or two visits a slot or two a
/// step, one stepping flat out or waking from sleep more at once, and an
/// expired flow gives its SNAT port back within three seconds (expiry
/// comes in whole seconds) wherever the lookups do not find it first.
const SWEEP_PERIOD_SHIFT: u32 = 30;
/// The most slots one batch's sweep visits, however long since the last
/// (a worker waking from sleep, the first batch after a restore of a
/// million flows): no batch waits on a long scan. A table too large for
/// its pass at this many a batch is swept more slowly.
const SWEEP_MOST: u64 = 16_384;

/// Events of the balancer that are not drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Packets sent toward a backend.
    pub forward: u64,
    /// Packets sent back toward a client.
    pub reply: u64,
    /// ICMP errors Rialto made: time exceeded.
    pub icmp_time_exceeded: u64,
    /// ICMP errors Rialto made: fragmentation needed / packet too big.
    pub icmp_too_big: u64,
    /// ICMP errors about a flow, translated and passed on.
    pub icmp_translated: u64,
    /// Packets of a connection whose flow this worker did not have, handed
    /// on to the next worker to look for it (they came in on another queue
    /// than their flow's).
    pub handed_on: u64,
    /// Connection attempts to a service with no backend to take them,
    /// refused: a TCP reset, an ICMP port unreachable.
    pub no_backend_refused: u64,
    /// Connections to a backend that failed its checks closed, with a reset
    /// towards the client (services with `reset_on_down`).
    pub reset_on_down: u64,
}

/// One worker's balancer: the tables it indexes and the flows it owns, in
/// slots of storage `S` (the heap by default).
#[derive(Debug)]
pub struct Balancer<S: FlowMemory = Box<[Slot]>> {
    tables: Arc<Snapshot>,
    flows: Conntrack<S>,
    /// The uplink's own MAC, and the MACs frames are sent from.
    iface_mac: [u8; 6],
    mac: [u8; 6],
    vtep_mac: [u8; 6],
    /// Where every frame goes: the config's next hop, or the one learned.
    next_hop: [u8; 6],
    worker: u32,
    workers: u32,
    counters: Counters,
    /// The time of the batch, in nanoseconds.
    now_ns: u64,
    /// When the sweep last ran, and what of a slot's visit it had due
    /// beyond the slots it visited (in slots << [`SWEEP_PERIOD_SHIFT`]).
    swept_at: u64,
    sweep_owed: u64,
    /// What the fleet's peers are to hear of this worker's flows (with a
    /// fleet only).
    changes: Option<Changes>,
    icmp_errors: RateLimit,
    /// What Rialto's own addresses are, by address (from `tables`).
    roles: Roles,
    /// The headers toward each gateway, by cluster and gateway (from
    /// `tables` and the MACs).
    templates: Vec<Vec<Option<Template>>>,
    /// Whether the fast path is tried first (see [`Balancer::process`]).
    fast_path: bool,
    /// Whether a batch reads its flows ahead (see
    /// [`Balancer::process_batch`]).
    read_ahead: bool,
}

/// What each address Rialto knows is to it, looked up once per address of
/// a packet, and its services by VIP, looked up once per new flow: the
/// tables' maps hash an `IpAddr` (an enum, its bytes one by one), these
/// one `u128`.
#[derive(Debug, Default)]
struct Roles {
    roles: KeyMap<u128, u8>,
    /// Tunnel peers: their cluster, and which of its gateways they are (0
    /// if none).
    peers: KeyMap<u128, (u16, u16)>,
    /// (VIP address, port, protocol number) -> index into the services.
    vips: KeyMap<(u128, u16, u8), u32>,
    /// The IPv4 addresses of `roles` and `peers`, by their 32 bits: what
    /// the fast path looks up, two to four times a packet.
    roles_v4: KeyMap<u32, u8>,
    peers_v4: KeyMap<u32, (u16, u16)>,
}

impl Roles {
    const VIP: u8 = 1;
    const SNAT: u8 = 2;
    /// Any address of Rialto's (VIPs, SNAT addresses, VTEPs; the fleet's
    /// peers' included): never a packet's source.
    const OWN: u8 = 4;
    /// This node's VTEPs and its fleet peers'.
    const VTEP: u8 = 8;

    fn new(tables: &Snapshot) -> Self {
        let key = |addr: IpAddr| u128::from_ne_bytes(from_ip(addr));
        let mut roles = hashbrown::HashMap::new();
        let mut mark = |addrs: &mut dyn Iterator<Item = IpAddr>, role: u8| {
            for addr in addrs {
                *roles.entry(key(addr)).or_default() |= role;
            }
        };
        mark(&mut tables.vip_addrs.iter().copied(), Self::VIP);
        mark(&mut tables.snat_addrs.iter().copied(), Self::SNAT);
        mark(&mut tables.own_addrs.iter().copied(), Self::OWN);
        let node = &tables.node;
        let peer_vteps = tables
            .fleet
            .iter()
            .flat_map(|f| f.peers.iter().map(|p| p.vtep));
        let mut vteps = (node.vtep_v4.map(IpAddr::V4).into_iter())
            .chain(node.vtep_v6.map(IpAddr::V6))
            .chain(peer_vteps);
        mark(&mut vteps, Self::VTEP);
        let peers = (tables.peers.iter())
            .map(|(&addr, &cluster)| {
                let gateways = &tables.clusters[usize::from(cluster)].gateways;
                let gateway = gateways.iter().position(|&g| g == addr).unwrap_or(0);
                (key(addr), (cluster, gateway as u16))
            })
            .collect();
        let vips = (tables.vips.iter())
            .map(|(vip, &service)| ((key(vip.addr), vip.port, vip.proto.number()), service))
            .collect();
        Self {
            roles_v4: KeyMap::new(ipv4(&roles)),
            peers_v4: KeyMap::new(ipv4(&peers)),
            roles: KeyMap::new(roles),
            peers: KeyMap::new(peers),
            vips: KeyMap::new(vips),
        }
    }

    /// [`Roles::of`] an IPv4 address.
    #[inline]
    fn of_v4(&self, addr: [u8; 4]) -> u8 {
        self.roles_v4.get(u32::from_ne_bytes(addr)).unwrap_or(0)
    }

    /// [`Roles::peer`] of an IPv4 address.
    #[inline]
    fn peer_v4(&self, addr: [u8; 4]) -> Option<(u16, u16)> {
        self.peers_v4.get(u32::from_ne_bytes(addr))
    }

    #[inline]
    fn of(&self, addr: &Addr) -> u8 {
        self.roles.get(u128::from_ne_bytes(*addr)).unwrap_or(0)
    }

    /// The cluster and gateway of a tunnel peer.
    #[inline]
    fn peer(&self, addr: &Addr) -> Option<(u16, u16)> {
        self.peers.get(u128::from_ne_bytes(*addr))
    }

    /// The service at `addr`, `port` for protocol `proto` (its number).
    #[inline]
    fn service(&self, addr: &Addr, port: u16, proto: u8) -> Option<u32> {
        self.vips.get((u128::from_ne_bytes(*addr), port, proto))
    }
}

impl Balancer {
    /// Worker `worker` of `workers`, sending from `mac` (the uplink's MAC,
    /// unless the config names one), its flows on the heap.
    pub fn new(tables: Arc<Snapshot>, worker: u32, workers: u32, mac: [u8; 6]) -> Self {
        let slots = bytemuck::zeroed_slice_box(slots_for(&tables));
        Self::with_slots(slots, tables, worker, workers, mac)
    }
}

/// The IPv4 entries of an address map, keyed by their 32 bits.
fn ipv4<V: Copy>(map: &hashbrown::HashMap<u128, V>) -> hashbrown::HashMap<u32, V> {
    (map.iter())
        .filter(|(addr, _)| is_v4_mapped(&addr.to_ne_bytes()))
        .map(|(addr, &value)| {
            (
                u32::from_ne_bytes(super::packet::v4(&addr.to_ne_bytes())),
                value,
            )
        })
        .collect()
}

/// What a flow table's packed slots name under `tables`: its services and
/// clusters, and the fleet's SNAT addresses ([`snat_list`]).
pub fn names(tables: &Snapshot) -> Names {
    Names::new(&FlowContext::of(tables), &snat_list(tables))
}

/// The fleet's SNAT addresses under `tables` in the order a slot's index
/// names them: sorted, so every node of a fleet of one config has the same
/// list (its own pool and its peers' are the same union everywhere).
pub fn snat_list(tables: &Snapshot) -> Vec<IpAddr> {
    let mut snat: Vec<IpAddr> = tables.snat_addrs.iter().copied().collect();
    snat.sort_unstable();
    snat
}

/// The slots a worker's flow table has under `tables`.
pub fn slots_for(tables: &Snapshot) -> usize {
    (tables.limits.flows_per_worker as usize).max(1)
}

impl<S: FlowMemory> Balancer<S> {
    /// [`Balancer::new`], its flows in `slots` (all empty: see
    /// [`Conntrack::with_slots`]).
    pub fn with_slots(
        slots: S,
        tables: Arc<Snapshot>,
        worker: u32,
        workers: u32,
        mac: [u8; 6],
    ) -> Self {
        let snat = SnatPorts::new(&tables.snat, worker, workers);
        let flows = Conntrack::with_slots(slots, snat, tables.timeouts, names(&tables));
        let mut balancer = Self {
            iface_mac: mac,
            mac,
            vtep_mac: mac,
            next_hop: tables.node.next_hop_mac.unwrap_or_default(),
            tables,
            flows,
            worker,
            workers,
            counters: Counters::default(),
            now_ns: 0,
            swept_at: 0,
            sweep_owed: 0,
            changes: None,
            icmp_errors: RateLimit::default(),
            roles: Roles::default(),
            templates: Vec::new(),
            fast_path: true,
            read_ahead: true,
        };
        balancer.roles = Roles::new(&balancer.tables);
        balancer.set_fleet();
        balancer.set_macs();
        balancer.set_templates();
        balancer.flows.recount(&layout(&balancer.tables));
        balancer
    }

    /// With a fleet, changes are noted for the peers; alone, not.
    fn set_fleet(&mut self) {
        match (&self.tables.fleet, &self.changes) {
            (Some(_), None) => self.changes = Some(Changes::new()),
            (None, Some(_)) => self.changes = None,
            _ => {}
        }
    }

    /// The changes of this worker's own flows noted since the last call
    /// (for the fleet's peers), and how many did not fit, in all.
    pub fn changes(&mut self) -> Option<&mut Changes> {
        self.changes.as_mut()
    }

    /// Notes every flow of this worker again, as fast as the changes'
    /// buffer allows (a peer asked for them all).
    pub fn start_burst(&mut self) {
        if let Some(changes) = &mut self.changes {
            changes.start_burst(self.flows.used());
        }
    }

    /// Takes in a flow a peer speaks for, if its SNAT address is one of
    /// the fleet's (the table keeps a row of ports for each address its
    /// flows are on).
    pub fn adopt(&mut self, replica: &Replica, now_ns: u64) -> Adopted {
        if !self.is_snat(&replica.flow.reverse.dst) {
            return Adopted::NotHere;
        }
        self.flows.adopt(replica, seconds(now_ns))
    }

    /// Notes flow `id` for the peers, if there is a fleet and the flow is
    /// this node's.
    fn note(&mut self, kind: u32, id: u32, now: u32) {
        if let Some(changes) = &mut self.changes
            && self.flows.is_own(id)
        {
            let flow = self.flows.flow(id);
            changes.note(kind, &flow, flow.expires.saturating_sub(now));
        }
    }

    /// Writes the headers toward every gateway again (the tables or the
    /// MACs changed).
    fn set_templates(&mut self) {
        let link = Link {
            src: self.mac,
            dst: self.next_hop,
            tag: None,
        };
        self.templates = (self.tables.clusters.iter().enumerate())
            .map(|(c, cluster)| {
                (0..cluster.gateways.len())
                    .map(|g| {
                        let tunnel = self.tunnel(c as u16, g as u16)?;
                        Template::new(&tunnel, &link)
                    })
                    .collect()
            })
            .collect();
    }

    fn set_macs(&mut self) {
        self.mac = self.tables.node.mac.unwrap_or(self.iface_mac);
        self.vtep_mac = self.tables.node.vtep_mac.unwrap_or(self.mac);
    }

    /// The next hop's MAC as learned from the kernel (when the config
    /// names none).
    pub fn set_next_hop(&mut self, mac: [u8; 6]) {
        if self.tables.node.next_hop_mac.is_none() {
            self.next_hop = mac;
            self.set_templates();
        }
    }

    /// Switches to a new config's tables, keeping every live flow whose
    /// service, backend and clusters are still there ([`Carry`]): flows
    /// keep their backend (draining ones included), so only a removed
    /// backend's flows move. The flow table's size is fixed at start:
    /// `limits` take effect on restart.
    pub fn reload(&mut self, tables: Arc<Snapshot>) {
        let old = std::mem::replace(&mut self.tables, tables);
        self.roles = Roles::new(&self.tables);
        self.set_macs();
        self.set_fleet();
        if let Some(mac) = self.tables.node.next_hop_mac {
            self.next_hop = mac;
        }
        self.set_templates();
        let new = Arc::clone(&self.tables);
        let snat =
            (new.snat != old.snat).then(|| SnatPorts::new(&new.snat, self.worker, self.workers));
        let context = FlowContext::of(&old);
        // A reload that names every flow as before (a health check's,
        // most often) rewrites no slot: at 10 M flows that is more than a
        // second.
        let same = context == FlowContext::of(&new) && snat_list(&old) == snat_list(&new);
        // Kept, the flows' counts stay right: a removal takes its own back.
        if same {
            self.flows.reload(new.timeouts, snat, None);
        } else {
            let carry = Carry::new(&context, &new);
            let remap = |flow: &Flow| carry.flow(flow);
            (self.flows).reload(new.timeouts, snat, Some((names(&new), &remap)));
            self.flows.recount(&layout(&new));
        }
    }

    /// Puts flows kept from before a restart, already carried over to the
    /// tables in force ([`Carry`]), into this worker's empty table.
    pub fn restore(&mut self, flows: impl IntoIterator<Item = Flow>, now_ns: u64) -> Restored {
        let restored = self.flows.restore(flows, seconds(now_ns));
        self.flows.recount(&layout(&self.tables));
        restored
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn flows(&self) -> &Conntrack<S> {
        &self.flows
    }

    /// See [`Conntrack::storage_mut`].
    pub fn storage_mut(&mut self) -> &mut S {
        self.flows.storage_mut()
    }

    /// Once per batch, with or without frames: expire the idle flows of
    /// the slots the time since the last batch has due (a whole pass per
    /// [`SWEEP_PERIOD_SHIFT`]; no division), [`SWEEP_MOST`] at most.
    pub fn tick(&mut self, now_ns: u64) {
        let period = 1u64 << SWEEP_PERIOD_SHIFT;
        // The first batch starts the clock.
        let elapsed = match self.swept_at {
            0 => 0,
            at => now_ns.saturating_sub(at).min(period),
        };
        self.swept_at = now_ns;
        // At most a pass and a slot's visit: no overflow below 2^33 slots.
        let owed = self.sweep_owed + elapsed * self.flows.used() as u64;
        let due = owed >> SWEEP_PERIOD_SHIFT;
        // Beyond the most a batch visits, what is due is let go.
        self.sweep_owed = if due > SWEEP_MOST {
            0
        } else {
            owed & (period - 1)
        };
        self.flows
            .sweep(seconds(now_ns), due.min(SWEEP_MOST) as usize);
        if let Some(changes) = &mut self.changes {
            self.flows.refresh(changes, now_ns);
        }
    }

    /// Processes one frame: by the fast path if it can, else by the
    /// general one ([`Balancer::set_fast_path`]).
    pub fn process(&mut self, frame: &mut FrameBuf<'_>, now_ns: u64) -> Verdict {
        self.now_ns = now_ns;
        let mut stage = Stage::General;
        self.stage(frame.data(), &mut stage);
        self.complete::<false>(frame, &stage, seconds(now_ns))
    }

    /// The fast path alone: what [`Balancer::process`] does with `frame` if
    /// the fast path takes it; `None`, and the frame untouched, if not (the
    /// flow table may have changed as the general path would change it: an
    /// expired flow removed, a SYN's flow made).
    pub fn process_fast(&mut self, frame: &mut FrameBuf<'_>, now_ns: u64) -> Option<Verdict> {
        self.now_ns = now_ns;
        let mut stage = Stage::General;
        self.stage(frame.data(), &mut stage);
        self.fast::<false>(frame, &stage, seconds(now_ns))
    }

    /// Whether [`Balancer::process`] tries the fast path first (the
    /// default) or takes every frame the general way: the fast path's
    /// oracle in tests, its baseline in benchmarks.
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_path = on;
    }

    /// Whether [`Balancer::process_batch`] reads the flows of a batch's
    /// frames ahead (the default) or not: the reading ahead's baseline in
    /// benchmarks.
    pub fn set_read_ahead(&mut self, on: bool) {
        self.read_ahead = on;
    }

    fn run(&mut self, frame: &mut FrameBuf<'_>, now: u32) -> Result<Verdict, Verdict> {
        let (start, end) = (frame.start(), frame.end());
        let buf = &frame.buffer_mut()[..end];
        let eth = ethernet::Frame::new_checked(&buf[start..])?;
        let link = Link {
            src: self.mac,
            dst: self.next_hop,
            tag: eth.tag(),
        };
        let outer = Ip::parse(buf, start + eth.header_len(), eth.ethertype())?;
        let (side, ip) = self.decapsulate(buf, outer)?;
        if ip.fragment {
            return Err(Verdict::Drop(DropReason::Fragment));
        }
        if is_martian(&ip.src, ip.v6) || self.roles.of(&ip.src) & Roles::OWN != 0 {
            return Err(Verdict::Drop(DropReason::MartianSource));
        }
        let to = self.owned_as(&ip);
        if to == 0 {
            return Err(Verdict::Drop(DropReason::NotOwned));
        }
        if is_icmp_error(buf, &ip) {
            return self.translate_error(frame, &ip, side, &link, now);
        }
        let ports = Ports::parse(buf, &ip)?;
        if self.is_check_answer(&ip, side, ports.dst) {
            // The checker reads the packet itself, out of its tunnel.
            return match frame.set_bounds(ip.at, ip.end()) {
                true => Ok(Verdict::Punt),
                false => Err(Verdict::Drop(DropReason::MalformedVxlan)),
            };
        }
        self.owned_here(&ip.dst, ports.dst)?;
        let key = FlowKey {
            src: ip.src,
            dst: ip.dst,
            src_port: ports.src,
            dst_port: ports.dst,
            proto: ip.proto,
            tunnel: self.vni(side),
            pad: [0; 3],
        };
        // A forward key is to a VIP, a reverse key to a SNAT address: only
        // the index the destination can be in is looked in.
        let mut found =
            (self.flows).lookup_in(&key, now, to & Roles::VIP != 0, to & Roles::SNAT != 0);
        if let Some((id, Direction::Forward)) = found
            && self.reopens(id, ip.proto, ports.tcp_flags)
        {
            // A new connection on the 5-tuple of one that closed (its port
            // reused): balanced anew, like any new connection, not sent
            // to the old one's backend, which may have failed since.
            self.note(Replica::DOWN, id, now);
            self.flows.close(id);
            found = None;
        }
        let (id, direction) = match found {
            Some(found) => found,
            None => {
                let id = self.new_flow(frame, &ip, &key, ports, side, &link, now)?;
                self.note(Replica::UP, id, now);
                (id, Direction::Forward)
            }
        };
        // Only while a service that resets has a failed backend: one load.
        if self.tables.resetting
            && direction == Direction::Forward
            && ip.proto == TCP
            && self.doomed(id)
        {
            return Ok(self.close(frame, &ip, id, side, &link));
        }
        if ip.ttl <= 1 {
            return self.send_error(frame, &ip, ErrorKind::TimeExceeded, side, &link);
        }
        // Only what the rewrite needs is read out of the slot and the
        // names, the flow not unpacked (as the fast path does).
        let slot = self.flows.slot(id);
        let hash = u64::from(slot.hash);
        let Rewrite {
            to,
            src: (src, src_port),
            dst: (dst, dst_port),
        } = (self.flows.names().rewrite(slot, direction))
            .expect("a live slot names its rewrite under the table's names");
        if let Some(mtu) = self.too_big(&ip, to) {
            if !ip.dont_fragment {
                return Err(Verdict::Drop(DropReason::TooBig));
            }
            return self.send_error(frame, &ip, ErrorKind::TooBig { mtu }, side, &link);
        }
        // Only a packet that goes on moves its flow along.
        if self
            .flows
            .touch(id, ip.proto, direction, ports.tcp_flags, now)
            && self.changes.is_some()
        {
            self.note(Replica::UP, id, now);
        }
        let buf = frame.buffer_mut();
        let headers = Headers::from(&ip);
        nat::forward(buf, &headers, (&src, src_port), (&dst, dst_port));
        let sent = self.pass_on(frame, &ip, hash, to, &link)?;
        match direction {
            Direction::Forward => self.counters.forward += 1,
            Direction::Reply => self.counters.reply += 1,
        }
        Ok(sent)
    }

    /// If `outer` is VXLAN from a tunnel peer, checks it and returns the
    /// inner packet and the cluster it came from; otherwise `outer` itself.
    fn decapsulate(&self, buf: &[u8], outer: Ip) -> Result<(Side, Ip), Verdict> {
        match self.tunnel_payload(buf, &outer, false)? {
            None => Ok((Side::UPLINK, outer)),
            Some((side, at, end)) => {
                let inner = ethernet::Frame::new_checked(&buf[at..end])?;
                let ip = Ip::parse(&buf[..end], at + inner.header_len(), inner.ethertype())?;
                Ok((side, ip))
            }
        }
    }

    /// For VXLAN from a tunnel peer: checks the header (I flag set, the
    /// peer's cluster's VNI) and, unless `any_vtep`, that it is sent to
    /// Rialto's VTEP; returns the cluster and where the inner frame is.
    /// `None` for anything that is not VXLAN.
    fn tunnel_payload(
        &self,
        buf: &[u8],
        outer: &Ip,
        any_vtep: bool,
    ) -> Result<Option<(Side, usize, usize)>, Verdict> {
        if outer.proto != UDP || outer.fragment {
            return Ok(None);
        }
        let datagram = udp::Datagram::new_checked(&buf[outer.l4..outer.end()])?;
        if datagram.dst_port() != self.tables.node.vxlan_port {
            return Ok(None);
        }
        let to_vtep = self.roles.of(&outer.dst) & Roles::VTEP != 0;
        if !to_vtep && (self.roles.service(&outer.dst, datagram.dst_port(), UDP)).is_some() {
            // A UDP service on the VXLAN port, which is not a tunnel.
            return Ok(None);
        }
        let Some((cluster, gateway)) = self.roles.peer(&outer.src) else {
            return Err(Verdict::Drop(DropReason::UnknownPeer));
        };
        if !any_vtep && !to_vtep {
            return Err(Verdict::Drop(DropReason::NotOurVtep));
        }
        let header = vxlan::Packet::new_checked(datagram.payload())?;
        if !header.vni_valid() {
            return Err(Verdict::Drop(DropReason::VxlanInvalid));
        }
        let c = &self.tables.clusters[usize::from(cluster)];
        if header.vni() != c.vni {
            return Err(Verdict::Drop(DropReason::UnknownVni));
        }
        let at = outer.l4 + udp::HEADER_LEN + vxlan::HEADER_LEN;
        Ok(Some((
            Side::tunnel(cluster, gateway),
            at,
            outer.l4 + datagram.length(),
        )))
    }

    /// Only the decapsulation stage, for `rialto replay --decap`: VXLAN from
    /// a peer becomes its inner frame (whatever it carries, and whatever
    /// VTEP it was sent to: a capture may be of a link between others);
    /// anything else is dropped as not owned.
    pub fn decapsulate_only(&mut self, frame: &mut FrameBuf<'_>) -> Verdict {
        let (start, end) = (frame.start(), frame.end());
        let result = (|| {
            let buf = &frame.buffer_mut()[..end];
            let eth = ethernet::Frame::new_checked(&buf[start..])?;
            let outer = Ip::parse(buf, start + eth.header_len(), eth.ethertype())?;
            self.tunnel_payload(buf, &outer, true)?
                .ok_or(Verdict::Drop(DropReason::NotOwned))
        })();
        match result {
            Ok((_, at, end)) if frame.set_bounds(at, end) => Verdict::Tx,
            Ok(_) => Verdict::Drop(DropReason::MalformedVxlan),
            Err(verdict) => verdict,
        }
    }

    /// A packet that matched no flow: a new flow if it is to a VIP (for
    /// TCP, only a SYN opens one).
    #[expect(clippy::too_many_arguments, reason = "the packet as parsed so far")]
    fn new_flow(
        &mut self,
        frame: &mut FrameBuf<'_>,
        ip: &Ip,
        key: &FlowKey,
        ports: Ports,
        side: Side,
        link: &Link,
        now: u32,
    ) -> Result<u32, Verdict> {
        let Some(service) = self.roles.service(&ip.dst, ports.dst, ip.proto) else {
            // To a SNAT address (a reply after its flow's end), or to a
            // VIP's address on a port or protocol no service has.
            return Err(Verdict::Drop(if self.is_snat(&ip.dst) {
                DropReason::NoFlow
            } else {
                DropReason::NotOwned
            }));
        };
        if ip.proto == TCP && ports.tcp_flags & (flags::SYN | flags::ACK | flags::RST) != flags::SYN
        {
            return Err(self.look_elsewhere(frame.hops()));
        }
        if ip.proto == UDP && self.changes.is_some() && u32::from(frame.hops()) + 1 < self.workers {
            // In a fleet, a datagram's flow may be a peer's, adopted by the
            // worker owning its SNAT port, while RSS brings its datagrams
            // here: it is looked for on every worker before the last makes
            // a new flow (a TCP connection has its SYN to tell).
            return Err(self.look_elsewhere(frame.hops()));
        }
        if ip.ttl <= 1 {
            return Err(self
                .send_error(frame, ip, ErrorKind::TimeExceeded, side, link)
                .unwrap_or_else(|v| v));
        }
        match self.balance(key, ip.v6, service, side, now) {
            Some(opened) => opened,
            None => Err(self.refuse(frame, ip, side, link)),
        }
    }

    /// The flow a connection of `key` (to service `service`, from `side`)
    /// opens: its backend by Maglev, its gateway, a SNAT port; `None`, and
    /// nothing done, if the service has no backend to take it.
    fn balance(
        &mut self,
        key: &FlowKey,
        v6: bool,
        service: u32,
        side: Side,
        now: u32,
    ) -> Option<Result<u32, Verdict>> {
        let svc = &self.tables.services[service as usize];
        let table = svc.table.as_ref()?;
        let hash =
            super::packet::flow_hash(&key.src, &key.dst, key.src_port, key.dst_port, key.proto);
        let backend_index = table.lookup(hash);
        let backend = svc.backends[backend_index as usize];
        let cluster = &self.tables.clusters[usize::from(backend.cluster)];
        let gateway = (hash % cluster.gateways.len() as u64) as u16;
        let key = *key;
        let opened = self
            .flows
            .insert(v6, key.proto, hash, now, |snat, snat_port| Flow {
                forward: key,
                reverse: FlowKey {
                    src: from_ip(backend.addr.ip()),
                    dst: snat,
                    src_port: backend.addr.port(),
                    dst_port: snat_port,
                    proto: key.proto,
                    tunnel: cluster.vni,
                    pad: [0; 3],
                },
                client: side,
                backend: Side::tunnel(backend.cluster, gateway),
                service,
                backend_index,
                // The low half: what the outer port and gateway take.
                hash: hash as u32,
                // Worked out as the flow is written.
                sums: nat::Sums::default(),
                state: TcpState::SYN_SENT,
                expires: 0,
            })
            .map_err(|e| match e {
                InsertError::SnatExhausted => Verdict::Drop(DropReason::SnatExhausted),
                InsertError::Unnamed => Verdict::Drop(DropReason::Unnamed),
            });
        Some(opened)
    }

    /// Whether a segment with `tcp_flags` for flow `id` opens a new
    /// connection on a closed one's 5-tuple: a SYN on a closing flow.
    fn reopens(&self, id: u32, proto: u8, tcp_flags: u8) -> bool {
        proto == TCP
            && tcp_flags & (flags::SYN | flags::ACK | flags::RST) == flags::SYN
            && self.flows.flow(id).state == TcpState::CLOSING
    }

    /// A packet of a connection this worker has no flow for, to a VIP: its
    /// flow may be another worker's, made while the packets of the
    /// connection came in on another queue (a sender that rehashed it
    /// after a timeout, the NIC's RSS changed, a restart with another
    /// worker count). It goes round the workers, each looking once, and
    /// is dropped when it comes round to where it came in.
    /// `hops`: the workers that handed the frame on before this one.
    fn look_elsewhere(&mut self, hops: u8) -> Verdict {
        if u32::from(hops) + 1 < self.workers {
            self.counters.handed_on += 1;
            Verdict::Handoff((self.worker + 1) % self.workers)
        } else {
            Verdict::Drop(DropReason::NoFlow)
        }
    }

    /// A connection to a service with no backend to take it (none healthy,
    /// say) is refused at once, from the VIP, the way it came: a SYN with a
    /// TCP reset, a datagram with an ICMP port unreachable; counted as
    /// `no_backend_refused`. Refusals share the ICMP errors' rate; beyond
    /// it, the packet is dropped as `no_backend`.
    fn refuse(&mut self, frame: &mut FrameBuf<'_>, ip: &Ip, side: Side, link: &Link) -> Verdict {
        if ip.proto != TCP {
            return (self.send_error(frame, ip, ErrorKind::PortUnreachable, side, link))
                .unwrap_or_else(|v| v);
        }
        if !self.icmp_errors.allow(self.now_ns) {
            return Verdict::Drop(DropReason::NoBackend);
        }
        let (at, end) = refuse::reset(frame.buffer_mut(), ip);
        let hash = super::packet::flow_hash(&ip.dst, &ip.src, 0, 0, ip.proto);
        match self.output(frame, at, end, ip.ethertype(), 0, hash, side, link) {
            Ok(sent) => {
                self.counters.no_backend_refused += 1;
                sent
            }
            Err(dropped) => dropped,
        }
    }

    /// Whether flow `id`'s backend failed its checks in a service that
    /// closes such connections.
    fn doomed(&self, id: u32) -> bool {
        let flow = self.flows.flow(id);
        let service = &self.tables.services[flow.service as usize];
        service.reset_on_down && service.failed.get(flow.backend_index as usize) == Some(&true)
    }

    /// Closes flow `id`, whose backend failed: the client's segment is
    /// answered with a reset from the VIP, the way it came, and the flow
    /// (and its SNAT port) is gone; counted as `reset_on_down`. Resets
    /// share the ICMP errors' rate; beyond it, the segment is dropped as
    /// `no_backend` and the flow closed at a later one.
    fn close(
        &mut self,
        frame: &mut FrameBuf<'_>,
        ip: &Ip,
        id: u32,
        side: Side,
        link: &Link,
    ) -> Verdict {
        if !self.icmp_errors.allow(self.now_ns) {
            return Verdict::Drop(DropReason::NoBackend);
        }
        self.note(Replica::DOWN, id, seconds(self.now_ns));
        self.flows.close(id);
        let (at, end) = refuse::reset(frame.buffer_mut(), ip);
        let hash = super::packet::flow_hash(&ip.dst, &ip.src, 0, 0, ip.proto);
        match self.output(frame, at, end, ip.ethertype(), 0, hash, side, link) {
            Ok(sent) => {
                self.counters.reset_on_down += 1;
                sent
            }
            Err(dropped) => dropped,
        }
    }

    /// Whether a packet is the answer to a health check: out of a tunnel,
    /// to a SNAT address, on a check port. (The port first: it is the
    /// cheapest test, and it fails for every other packet.)
    fn is_check_answer(&self, ip: &Ip, side: Side, port: u16) -> bool {
        self.tables
            .check_ports
            .is_some_and(|(first, last)| (first..=last).contains(&port))
            && side.tunnel_of().is_some()
            && self.is_snat(&ip.dst)
    }

    /// An ICMP error from one side about a packet of a flow Rialto sent to
    /// that side: translated, quote included, and passed to the other side.
    fn translate_error(
        &mut self,
        frame: &mut FrameBuf<'_>,
        ip: &Ip,
        side: Side,
        link: &Link,
        now: u32,
    ) -> Result<Verdict, Verdict> {
        let hops = frame.hops();
        let buf = frame.buffer_mut();
        let quoted = Quoted::parse(buf, ip).ok_or(Verdict::Drop(DropReason::MalformedIcmp))?;
        self.owned_here(&quoted.src, quoted.src_port)?;
        // The quote is a packet Rialto sent; the flow knows it by its answer.
        let key = FlowKey {
            src: quoted.dst,
            dst: quoted.src,
            src_port: quoted.dst_port,
            dst_port: quoted.src_port,
            proto: quoted.headers.proto,
            tunnel: self.vni(side),
            pad: [0; 3],
        };
        let Some((id, direction)) = self.flows.lookup(&key, now) else {
            // About a reply from a VIP: a SNAT port names its worker, a VIP
            // does not, and RSS, hashing the error's own addresses, may
            // have brought it to another worker than the client's packets
            // (and so the flow) go to. It goes round the workers as a
            // segment of no flow does.
            return Err(if self.roles.of(&quoted.src) & Roles::VIP != 0 {
                self.look_elsewhere(hops)
            } else {
                Verdict::Drop(DropReason::NoFlow)
            });
        };
        let flow = self.flows.flow(id);
        if ip.ttl <= 1 {
            // No error about an error (RFC 1812 §4.3.2.7).
            return Err(Verdict::Drop(DropReason::TtlExceeded));
        }
        let (to, outer_src, outer_dst, quote_src, quote_dst) = match direction {
            // From the backend's side, about a packet Rialto sent the backend.
            Direction::Reply => (
                flow.client,
                flow.forward.dst,
                flow.forward.src,
                (&flow.forward.src, flow.forward.src_port),
                (&flow.forward.dst, flow.forward.dst_port),
            ),
            // From the client's side, about a reply Rialto sent the client.
            Direction::Forward => (
                flow.backend,
                flow.reverse.dst,
                flow.reverse.src,
                (&flow.reverse.src, flow.reverse.src_port),
                (&flow.reverse.dst, flow.reverse.dst_port),
            ),
        };
        nat::rewrite(buf, &quoted.headers, quote_src, quote_dst);
        let headers = Headers::from(ip);
        nat::rewrite(buf, &headers, (&outer_src, 0), (&outer_dst, 0));
        nat::decrement_ttl(buf, &headers);
        icmp::fill_checksum(buf, &headers, &outer_src, &outer_dst);
        let sent = self.pass_on(frame, ip, u64::from(flow.hash), to, link)?;
        self.counters.icmp_translated += 1;
        Ok(sent)
    }

    /// Sends the (rewritten) packet `ip` on to `to`, keeping its TOS.
    fn pass_on(
        &self,
        frame: &mut FrameBuf<'_>,
        ip: &Ip,
        hash: u64,
        to: Side,
        link: &Link,
    ) -> Result<Verdict, Verdict> {
        let tos = tos(frame.buffer_mut(), ip);
        self.output(frame, ip.at, ip.end(), ip.ethertype(), tos, hash, to, link)
    }

    /// Replaces the packet with an ICMP error back to its sender, from the
    /// address it was sent to, the way it came.
    fn send_error(
        &mut self,
        frame: &mut FrameBuf<'_>,
        ip: &Ip,
        kind: ErrorKind,
        side: Side,
        link: &Link,
    ) -> Result<Verdict, Verdict> {
        if ip.at < icmp::headers_len(ip.v6) {
            return Err(Verdict::Drop(DropReason::NoHeadroom));
        }
        if !self.icmp_errors.allow(self.now_ns) {
            return Err(Verdict::Drop(match kind {
                ErrorKind::TimeExceeded => DropReason::TtlExceeded,
                ErrorKind::TooBig { .. } => DropReason::TooBig,
                ErrorKind::PortUnreachable => DropReason::NoBackend,
            }));
        }
        let (at, end) = icmp::make_error(frame.buffer_mut(), ip, kind, &ip.dst);
        let hash = super::packet::flow_hash(&ip.dst, &ip.src, 0, 0, ip.proto);
        let sent = self.output(frame, at, end, ip.ethertype(), 0, hash, side, link)?;
        match kind {
            ErrorKind::TimeExceeded => self.counters.icmp_time_exceeded += 1,
            ErrorKind::TooBig { .. } => self.counters.icmp_too_big += 1,
            ErrorKind::PortUnreachable => self.counters.no_backend_refused += 1,
        }
        Ok(sent)
    }

    /// Sends the IP packet `at..end` to `side`: encapsulated toward a
    /// cluster's gateway, or in plain Ethernet to the next hop.
    #[expect(clippy::too_many_arguments, reason = "the packet and where it goes")]
    fn output(
        &self,
        frame: &mut FrameBuf<'_>,
        at: usize,
        end: usize,
        ethertype: u16,
        tos: u8,
        hash: u64,
        to: Side,
        link: &Link,
    ) -> Result<Verdict, Verdict> {
        let sent = match to.tunnel_of() {
            None => encap::ethernet_out(frame, at, end, ethertype, link),
            Some((cluster, gateway)) => match self.template(cluster, gateway) {
                Some(template) if link.tag.is_none() => {
                    template.encapsulate(frame, at, end, ethertype, tos, hash)
                }
                _ => {
                    let tunnel = self
                        .tunnel(cluster, gateway)
                        .ok_or(Verdict::Drop(DropReason::NoBackend))?;
                    encap::encapsulate(frame, at, end, ethertype, tos, hash, &tunnel, link)
                }
            },
        };
        if sent {
            Ok(Verdict::Tx)
        } else {
            Err(Verdict::Drop(DropReason::NoHeadroom))
        }
    }

    fn template(&self, cluster: u16, gateway: u16) -> Option<&Template> {
        template(&self.templates, cluster, gateway)
    }

    fn tunnel(&self, cluster: u16, gateway: u16) -> Option<Tunnel> {
        tunnel(&self.tables, cluster, gateway, self.vtep_mac)
    }

    /// The MTU to report if `ip`, sent to `to`, would not fit the uplink.
    fn too_big(&self, ip: &Ip, to: Side) -> Option<u16> {
        let (cluster, gateway) = to.tunnel_of()?;
        let v6 = self.tables.clusters[usize::from(cluster)]
            .gateways
            .get(usize::from(gateway))?
            .is_ipv6();
        // The outer Ethernet header does not count against the MTU and the
        // inner one does: the same 14 bytes.
        let overhead = rialto_tables::vxlan_overhead(v6);
        let mtu = usize::from(self.tables.node.mtu);
        (ip.len + overhead > mtu).then(|| mtu.saturating_sub(overhead) as u16)
    }

    fn vni(&self, side: Side) -> u32 {
        match side.tunnel_of() {
            None => UPLINK,
            Some((cluster, _)) => self.tables.clusters[usize::from(cluster)].vni,
        }
    }

    /// A packet to one of Rialto's SNAT ports belongs to the worker whose
    /// slice the port is in: `Err(Handoff)` if that is another worker. Checked
    /// before anything is written, so the frame is handed over as it came.
    fn owned_here(&self, dst: &Addr, dst_port: u16) -> Result<(), Verdict> {
        let snat = self.flows.snat();
        if !snat.owns(dst_port) && self.is_snat(dst) {
            Err(Verdict::Handoff(snat.owner(dst_port)))
        } else {
            Ok(())
        }
    }

    /// Whether the packet is to one of Rialto's VIPs or SNAT addresses, or
    /// both: their [`Roles`] bits, or 0 for neither (IPv4-mapped addresses
    /// in an IPv6 header are nobody's).
    fn owned_as(&self, ip: &Ip) -> u8 {
        if ip.v6 == is_v4_mapped(&ip.dst) {
            return 0;
        }
        self.roles.of(&ip.dst) & (Roles::VIP | Roles::SNAT)
    }

    fn is_snat(&self, addr: &Addr) -> bool {
        self.roles.of(addr) & Roles::SNAT != 0
    }
}

/// The headers toward `cluster`'s gateway `gateway`, if it has a template.
fn template(templates: &[Vec<Option<Template>>], cluster: u16, gateway: u16) -> Option<&Template> {
    templates
        .get(usize::from(cluster))?
        .get(usize::from(gateway))?
        .as_ref()
}

/// The tunnel to `cluster`'s gateway `gateway`, from Rialto's VTEP of its
/// family, inner frames from `vtep_mac`.
fn tunnel(tables: &Snapshot, cluster: u16, gateway: u16, vtep_mac: [u8; 6]) -> Option<Tunnel> {
    let c = tables.clusters.get(usize::from(cluster))?;
    let remote = *c.gateways.get(usize::from(gateway))?;
    let node = &tables.node;
    let local = node.vtep_for(remote)?;
    Some(Tunnel {
        vni: c.vni,
        v6: remote.is_ipv6(),
        local: from_ip(local),
        remote: from_ip(remote),
        inner_dst: c.gateway_mac,
        inner_src: vtep_mac,
        port: node.vxlan_port,
    })
}

/// The frame the balancer sends to carry `packet`, an IP packet from one
/// of Rialto's SNAT addresses, to a pod of `cluster`: through the gateway
/// `hash` picks, from `iface_mac` (unless the config names a MAC) to
/// `next_hop`, exactly as a flow's packets go. The health checks' way to
/// the pods. `None` if the cluster has no gateway of a family Rialto has a
/// VTEP for, or the packet is not IP.
pub fn to_cluster(
    tables: &Snapshot,
    iface_mac: [u8; 6],
    next_hop: [u8; 6],
    cluster: u16,
    hash: u64,
    packet: &[u8],
) -> Option<crate::OwnedFrame> {
    let gateways = tables.clusters.get(usize::from(cluster))?.gateways.len();
    let gateway = (hash % gateways.max(1) as u64) as u16;
    let mac = tables.node.mac.unwrap_or(iface_mac);
    let tunnel = tunnel(
        tables,
        cluster,
        gateway,
        tables.node.vtep_mac.unwrap_or(mac),
    )?;
    let ethertype = match packet.first()? >> 4 {
        4 => ethernet::ethertype::IPV4,
        6 => ethernet::ethertype::IPV6,
        _ => return None,
    };
    let link = Link {
        src: mac,
        dst: next_hop,
        tag: None,
    };
    let mut frame = crate::OwnedFrame::new(packet);
    let sent = frame.with(|f| {
        let (at, end) = (f.start(), f.end());
        encap::encapsulate(f, at, end, ethertype, 0, hash, &tunnel, &link)
    });
    sent.then_some(frame)
}

/// Carries flows from the tables they were made with (their context) to
/// other tables: a reload's, or after a restart the new process's. A flow
/// keeps its backend while that backend (its address, in a cluster of the
/// same name) is in the same service (by VIP), draining or not; its
/// clusters must keep their name and VNI, and it keeps its gateway if the
/// cluster still has it (else another of the cluster's: the pod behind it
/// is the same). Anything else, an index the context does not have, or a
/// flow whose keys are not what its indices name there (its slot was
/// written under other tables: a crash cut a reload short), and the flow
/// is dropped.
#[derive(Debug)]
pub struct Carry<'a> {
    old: &'a FlowContext,
    new: &'a Snapshot,
    /// Old cluster index -> new, for clusters kept with their VNI.
    clusters: Vec<Option<u16>>,
    /// Old service and backend index -> new, for backends kept.
    backends: Vec<Vec<Option<(u32, u32)>>>,
}

impl<'a> Carry<'a> {
    /// Works out, once, where each old cluster and backend went.
    pub fn new(old: &'a FlowContext, new: &'a Snapshot) -> Self {
        let clusters = (old.clusters.iter())
            .map(|c| {
                (new.clusters.iter())
                    .position(|n| n.name == c.name && n.vni == c.vni)
                    .map(|i| i as u16)
            })
            .collect();
        let backends = (old.services.iter())
            .map(|service| {
                let new_service = new.vips.get(&service.vip).copied();
                (service.backends.iter())
                    .map(|&(addr, cluster)| {
                        let cluster = &old.clusters.get(usize::from(cluster))?.name;
                        let new_service = new_service?;
                        let index =
                            (new.services[new_service as usize].backends.iter()).position(|b| {
                                b.addr == addr
                                    && new.clusters[usize::from(b.cluster)].name == *cluster
                            })?;
                        Some((new_service, index as u32))
                    })
                    .collect()
            })
            .collect();
        Self {
            old,
            new,
            clusters,
            backends,
        }
    }

    /// Whether `flow`'s keys are what its indices name in the old context:
    /// its VIP its service's, its backend's address, port and tunnel its
    /// backend's, its client's tunnel its client's cluster's (or the
    /// uplink). A flow written under other tables is not, and carrying it
    /// by its indices would give it another service's backend.
    fn names(&self, flow: &Flow) -> bool {
        let old = self.old;
        let Some(service) = old.services.get(flow.service as usize) else {
            return false;
        };
        let Some(&(backend, cluster)) = service.backends.get(flow.backend_index as usize) else {
            return false;
        };
        let vni = |c: u16| old.clusters.get(usize::from(c)).map(|c| c.vni);
        let client_tunnel = match flow.client.tunnel_of() {
            None => Some(UPLINK),
            Some((c, _)) => vni(c),
        };
        let (forward, reverse) = (&flow.forward, &flow.reverse);
        from_ip(service.vip.addr) == forward.dst
            && service.vip.port == forward.dst_port
            && service.vip.proto.number() == forward.proto
            && client_tunnel == Some(forward.tunnel)
            && from_ip(backend.ip()) == reverse.src
            && backend.port() == reverse.src_port
            && flow.backend.tunnel_of().map(|(c, _)| c) == Some(cluster)
            && vni(cluster) == Some(reverse.tunnel)
    }

    /// What `flow` becomes in the new tables, or `None` if it cannot stay.
    #[inline]
    pub fn flow(&self, flow: &Flow) -> Option<Flow> {
        if !self.names(flow) {
            return None;
        }
        let (service, backend_index) = (self.backends.get(flow.service as usize)?)
            .get(flow.backend_index as usize)
            .copied()??;
        Some(Flow {
            client: self.side(flow.client, flow.hash)?,
            backend: self.side(flow.backend, flow.hash)?,
            service,
            backend_index,
            ..*flow
        })
    }

    fn side(&self, side: Side, hash: u32) -> Option<Side> {
        let Some((cluster, gateway)) = side.tunnel_of() else {
            return Some(side);
        };
        let index = (*self.clusters.get(usize::from(cluster))?)?;
        let gateways = &self.new.clusters[usize::from(index)].gateways;
        let was = self.old.clusters[usize::from(cluster)]
            .gateways
            .get(usize::from(gateway))?;
        let gateway = (gateways.iter())
            .position(|g| g == was)
            .unwrap_or(hash as usize % gateways.len());
        Some(Side::tunnel(index, gateway as u16))
    }
}

/// IPv4 TOS or IPv6 traffic class, for the outer header (RFC 6040: ECN
/// is copied to the outer header on encapsulation).
fn tos(buf: &[u8], ip: &Ip) -> u8 {
    let header = &buf[ip.at..ip.l4];
    if ip.v6 {
        ipv6::Packet::new_unchecked(header).traffic_class()
    } else {
        ipv4::Packet::new_unchecked(header).tos()
    }
}

/// Backends per service.
fn layout(tables: &Snapshot) -> Vec<usize> {
    tables.services.iter().map(|s| s.backends.len()).collect()
}

fn seconds(now_ns: u64) -> u32 {
    (now_ns / 1_000_000_000) as u32
}
