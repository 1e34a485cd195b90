//! A worker's connection table: forward and reverse entries for each flow,
//! state-aware timeouts, bounded size, and the worker's SNAT ports.
//!
//! Invariants, which the unit tests and a model-based property test
//! (`tests/conntrack_model.rs`) check:
//! - a live flow has exactly one forward and one reverse entry, and holds
//!   exactly one SNAT port; a SNAT port is held by at most one live flow;
//! - an expired flow is never returned: a lookup that finds one removes it.
//!
//! The flows live in a slab of fixed size; two indexes find a flow's slot
//! by its forward or its reverse key. An index entry is the slot number
//! alone (4 bytes and hashbrown's control byte): the keys are stored once,
//! in the slot, and compared there.
//!
//! Expiry does not scan the table per packet: a lookup drops an expired
//! entry it meets, and [`Conntrack::sweep`] visits a bounded number of slots
//! per call, once per batch, like a clock hand.

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{DefaultHashBuilder, HashTable};
use rialto_tables::Timeouts;

use super::{
    packet::{Addr, TCP, UDP},
    snat::SnatPorts,
};
use crate::wire::tcp::flags;

/// The tunnel context of traffic that arrived without a tunnel.
pub const UPLINK: u32 = u32::MAX;

/// One direction of a flow as it arrives at Rialto. `tunnel` is the VNI it
/// came in on (or [`UPLINK`]): two clusters may use the same pod addresses,
/// and their flows never meet in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub tunnel: u32,
}

/// Four words, not field by field (and the addresses byte by byte) as the
/// derived `Hash` would: hashing is on every packet's path.
impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.src));
        state.write_u128(u128::from_ne_bytes(self.dst));
        let ports = u64::from(self.src_port) << 16 | u64::from(self.dst_port);
        state.write_u64(ports << 32 | u64::from(self.tunnel));
        state.write_u8(self.proto);
    }
}

/// Where a flow's client is: the uplink, or a pod behind a cluster's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Uplink,
    Tunnel { cluster: u16, gateway: u16 },
}

/// A TCP connection's state, as far as the timeouts care. Closing is
/// tracked per direction, as Cilium's conntrack does (`tx_closing`,
/// `rx_closing`): a connection half closed by one side may go on sending
/// the other way for as long as it likes (RFC 9293 §3.6), so it keeps the
/// established timeout until both sides have sent their FIN (or one an RST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// The client's SYN seen, no answer yet.
    SynSent,
    Established,
    /// The client has sent its FIN; the backend may still send.
    ClientClosed,
    /// The backend has sent its FIN; the client may still send.
    BackendClosed,
    /// Both FINs seen, or an RST: the closing timeout runs.
    Closing,
}

/// What Rialto remembers of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Client -> VIP, as received.
    pub forward: FlowKey,
    /// Backend -> SNAT address, as the replies arrive.
    pub reverse: FlowKey,
    pub client: Side,
    /// The backend's side (always a tunnel).
    pub backend: Side,
    pub service: u32,
    pub backend_index: u32,
    pub hash: u64,
    pub state: TcpState,
    /// Second (of the worker's clock) after which the flow is gone.
    pub expires: u32,
}

/// Which entry a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client -> backend.
    Forward,
    /// Backend -> client.
    Reply,
}

/// Why a flow could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// No SNAT port left in the worker's slice of the pool.
    SnatExhausted,
}

/// Counters of the table's own events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConntrackStats {
    pub created: u64,
    pub expired: u64,
    /// Live flows removed to make room for a new one.
    pub evicted: u64,
    /// Live flows a reload removed (their backend, service or cluster gone).
    pub reload_removed: u64,
    pub live: u64,
}

/// Slots sampled for the flow to evict when the table is full.
const EVICTION_SAMPLE: usize = 8;

/// A worker's flows.
#[derive(Debug)]
pub struct Conntrack {
    slots: Vec<Option<Flow>>,
    free: Vec<u32>,
    forward: Index,
    reverse: Index,
    hasher: DefaultHashBuilder,
    snat: SnatPorts,
    timeouts: Timeouts,
    hand: usize,
    stats: ConntrackStats,
    /// Live flows per service and backend (indices of the tables in force).
    per_backend: Vec<Vec<u32>>,
}

impl Conntrack {
    /// A table of at most `capacity` flows. Everything is allocated here:
    /// the hot path never allocates.
    pub fn new(capacity: usize, snat: SnatPorts, timeouts: Timeouts) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: vec![None; capacity],
            free: (0..capacity as u32).rev().collect(),
            forward: Index::new(capacity, By::Forward),
            reverse: Index::new(capacity, By::Reverse),
            hasher: DefaultHashBuilder::default(),
            snat,
            timeouts,
            hand: 0,
            stats: ConntrackStats::default(),
            per_backend: Vec::new(),
        }
    }

    /// Live flows per service and backend.
    pub fn per_backend(&self) -> &[Vec<u32>] {
        &self.per_backend
    }

    /// Counts the live flows per backend again, for tables with `layout[s]`
    /// backends in service `s` (at start and after a reload).
    pub fn recount(&mut self, layout: &[usize]) {
        self.per_backend = layout.iter().map(|&n| vec![0; n]).collect();
        for flow in self.slots.iter().flatten() {
            if let Some(n) = backend_count(&mut self.per_backend, flow) {
                *n += 1;
            }
        }
    }

    fn count(&mut self, flow: &Flow, up: bool) {
        if let Some(n) = backend_count(&mut self.per_backend, flow) {
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
        }
    }

    pub fn stats(&self) -> ConntrackStats {
        ConntrackStats {
            live: self.forward.len() as u64,
            ..self.stats
        }
    }

    /// Flows the table holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn snat(&self) -> &SnatPorts {
        &self.snat
    }

    /// The live flow `key` belongs to, in either direction.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, now: u32) -> Option<(u32, Direction)> {
        let hash = self.hasher.hash_one(key);
        let (id, direction) = if let Some(id) = self.forward.get(hash, key, &self.slots) {
            (id, Direction::Forward)
        } else {
            (self.reverse.get(hash, key, &self.slots)?, Direction::Reply)
        };
        if self.flow(id).expires < now {
            self.remove(id);
            self.stats.expired += 1;
            return None;
        }
        Some((id, direction))
    }

    /// Every flow in the table, expired ones not yet removed included,
    /// with its slot, in slot order. Not for the hot path: it visits every
    /// slot.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Flow)> + '_ {
        (0u32..)
            .zip(&self.slots)
            .filter_map(|(id, slot)| slot.as_ref().map(|f| (id, f)))
    }

    pub fn flow(&self, id: u32) -> &Flow {
        self.slots[id as usize].as_ref().expect("live flow id")
    }

    /// Creates a flow: takes a SNAT port of the backend's family, inserts
    /// the forward and reverse entries. `make` builds the flow from the SNAT
    /// address and port. When the table is full, the flow closest to expiry
    /// among a few sampled makes room: only once a port was found, so no
    /// flow is evicted for one that cannot be made.
    pub fn insert(
        &mut self,
        v6: bool,
        proto: u8,
        hash: u64,
        now: u32,
        make: impl FnOnce(Addr, u16) -> Flow,
    ) -> Result<u32, InsertError> {
        let (addr, port) = self
            .snat
            .take(v6, proto, hash)
            .ok_or(InsertError::SnatExhausted)?;
        if self.free.is_empty() {
            self.evict();
        }
        let mut flow = make(addr, port);
        flow.expires = now.saturating_add(self.timeout(flow.forward.proto, flow.state));
        let id = self.free.pop().expect("a slot was freed above");
        let hashes = (
            self.hasher.hash_one(flow.forward),
            self.hasher.hash_one(flow.reverse),
        );
        self.count(&flow, true);
        self.slots[id as usize] = Some(flow);
        self.forward.insert(hashes.0, id, &self.slots, &self.hasher);
        self.reverse.insert(hashes.1, id, &self.slots, &self.hasher);
        self.stats.created += 1;
        Ok(id)
    }

    /// Notes a packet of flow `id`: advances the TCP state and the expiry.
    #[inline]
    pub fn touch(&mut self, id: u32, direction: Direction, tcp_flags: u8, now: u32) {
        let timeouts = self.timeouts;
        let flow = self.slots[id as usize].as_mut().expect("live flow id");
        if flow.forward.proto == TCP {
            flow.state = next_state(flow.state, direction, tcp_flags);
        }
        flow.expires = now.saturating_add(timeout(&timeouts, flow.forward.proto, flow.state));
    }

    /// Visits up to `budget` slots from where the last sweep stopped and
    /// removes the expired flows there.
    pub fn sweep(&mut self, now: u32, budget: usize) {
        for _ in 0..budget.min(self.slots.len()) {
            self.hand = (self.hand + 1) % self.slots.len();
            if let Some(flow) = &self.slots[self.hand]
                && flow.expires < now
            {
                self.remove(self.hand as u32);
                self.stats.expired += 1;
            }
        }
    }

    /// After a config reload: each live flow becomes what `remap` makes of
    /// it (same keys, new table indices), or is removed when `remap` says
    /// `None`. With a new SNAT pool (`snat`), flows whose port is not in
    /// its slice are removed first, and the ports the others hold are taken
    /// out of its free lists. Runs on the worker, between batches: it visits
    /// every slot once and allocates, which a reload may.
    pub fn reload(
        &mut self,
        timeouts: Timeouts,
        snat: Option<SnatPorts>,
        mut remap: impl FnMut(&Flow) -> Option<Flow>,
    ) {
        self.timeouts = timeouts;
        let before = self.forward.len();
        if let Some(mut snat) = snat {
            for id in 0..self.slots.len() {
                if let Some(f) = &self.slots[id]
                    && !snat.holds(&f.reverse.dst, f.reverse.proto, f.reverse.dst_port)
                {
                    self.remove(id as u32);
                }
            }
            let held: hashbrown::HashSet<(Addr, u8, u16)> = self
                .slots
                .iter()
                .flatten()
                .map(|f| (f.reverse.dst, f.reverse.proto, f.reverse.dst_port))
                .collect();
            snat.retain_free(|addr, proto, port| held.contains(&(*addr, proto, port)));
            self.snat = snat;
        }
        for id in 0..self.slots.len() {
            let Some(flow) = &self.slots[id] else {
                continue;
            };
            match remap(flow) {
                Some(new) => {
                    debug_assert_eq!((new.forward, new.reverse), (flow.forward, flow.reverse));
                    self.slots[id] = Some(new);
                }
                None => self.remove(id as u32),
            }
        }
        self.stats.reload_removed += (before - self.forward.len()) as u64;
    }

    fn evict(&mut self) {
        let len = self.slots.len();
        let victim = (1..=EVICTION_SAMPLE.min(len))
            .map(|i| (self.hand + i) % len)
            .filter_map(|i| self.slots[i].as_ref().map(|f| (f.expires, i)))
            .min();
        self.hand = (self.hand + EVICTION_SAMPLE) % len;
        if let Some((_, i)) = victim {
            self.remove(i as u32);
            self.stats.evicted += 1;
        }
    }

    fn remove(&mut self, id: u32) {
        let flow = self.slots[id as usize].take().expect("live flow id");
        self.count(&flow, false);
        self.forward.remove(self.hasher.hash_one(flow.forward), id);
        self.reverse.remove(self.hasher.hash_one(flow.reverse), id);
        self.snat
            .give_back(&flow.reverse.dst, flow.reverse.proto, flow.reverse.dst_port);
        self.free.push(id);
    }

    fn timeout(&self, proto: u8, state: TcpState) -> u32 {
        timeout(&self.timeouts, proto, state)
    }
}

/// Which of a flow's keys an [`Index`] finds it by.
#[derive(Clone, Copy, Debug)]
enum By {
    Forward,
    Reverse,
}

impl By {
    fn key(self, flow: &Flow) -> &FlowKey {
        match self {
            Self::Forward => &flow.forward,
            Self::Reverse => &flow.reverse,
        }
    }
}

/// Slot numbers of live flows, found by one of their keys.
#[derive(Debug)]
struct Index {
    ids: HashTable<u32>,
    by: By,
}

impl Index {
    fn new(capacity: usize, by: By) -> Self {
        Self {
            ids: HashTable::with_capacity(capacity),
            by,
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// The slot of the live flow whose key is `key` (of hash `hash`).
    #[inline]
    fn get(&self, hash: u64, key: &FlowKey, slots: &[Option<Flow>]) -> Option<u32> {
        let by = self.by;
        self.ids
            .find(hash, |&id| {
                slots[id as usize]
                    .as_ref()
                    .is_some_and(|f| by.key(f) == key)
            })
            .copied()
    }

    /// Indexes slot `id`, which holds its flow already (`hash` is its key's).
    fn insert(&mut self, hash: u64, id: u32, slots: &[Option<Flow>], hasher: &DefaultHashBuilder) {
        let by = self.by;
        // The table never grows (it was made for every slot), but it may
        // rehash in place to clear the tombstones removals leave.
        self.ids.insert_unique(hash, id, |&i| {
            hasher.hash_one(by.key(slots[i as usize].as_ref().expect("indexed slots are live")))
        });
    }

    fn remove(&mut self, hash: u64, id: u32) {
        if let Ok(entry) = self.ids.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
    }
}

/// The live-flow count of `flow`'s backend.
fn backend_count<'a>(per_backend: &'a mut [Vec<u32>], flow: &Flow) -> Option<&'a mut u32> {
    per_backend
        .get_mut(flow.service as usize)?
        .get_mut(flow.backend_index as usize)
}

fn timeout(t: &Timeouts, proto: u8, state: TcpState) -> u32 {
    match (proto, state) {
        (TCP, TcpState::SynSent) => t.tcp_syn,
        (TCP, TcpState::Established | TcpState::ClientClosed | TcpState::BackendClosed) => {
            t.tcp_established
        }
        (TCP, TcpState::Closing) => t.tcp_closing,
        (UDP, _) => t.udp,
        _ => t.icmp,
    }
}

/// The TCP state after a segment with `tcp_flags` going `direction`.
///
/// A reply makes a connection established; an RST from either side closes
/// it, and so does the second side's FIN; a client's new SYN on a closing
/// connection (the port reused) starts it over.
fn next_state(state: TcpState, direction: Direction, tcp_flags: u8) -> TcpState {
    use TcpState::{BackendClosed, ClientClosed, Closing, Established, SynSent};
    if tcp_flags & flags::RST != 0 {
        return Closing;
    }
    if tcp_flags & flags::FIN != 0 {
        return match (state, direction) {
            (BackendClosed | Closing, Direction::Forward) => Closing,
            (ClientClosed | Closing, Direction::Reply) => Closing,
            (_, Direction::Forward) => ClientClosed,
            (_, Direction::Reply) => BackendClosed,
        };
    }
    match (state, direction) {
        (Closing, Direction::Forward) if tcp_flags & flags::SYN != 0 => SynSent,
        (SynSent, Direction::Reply) => Established,
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use rialto_tables::SnatPool;

    use super::*;
    use crate::pipeline::packet::mapped;

    fn table(capacity: usize, ports: (u16, u16)) -> Conntrack {
        let pool = SnatPool {
            v4: vec![[198, 18, 200, 1].into()],
            v6: vec![],
            ports,
        };
        Conntrack::new(capacity, SnatPorts::new(&pool, 0, 1), Timeouts::default())
    }

    fn key(src_port: u16) -> FlowKey {
        FlowKey {
            src: mapped([198, 18, 0, 2]),
            dst: mapped([198, 18, 100, 1]),
            src_port,
            dst_port: 80,
            proto: TCP,
            tunnel: UPLINK,
        }
    }

    fn add(t: &mut Conntrack, src_port: u16, now: u32) -> Result<u32, InsertError> {
        t.insert(false, TCP, u64::from(src_port), now, |snat, snat_port| {
            let forward = key(src_port);
            Flow {
                forward,
                reverse: FlowKey {
                    src: mapped([198, 19, 0, 5]),
                    dst: snat,
                    src_port: 8080,
                    dst_port: snat_port,
                    proto: TCP,
                    tunnel: 100,
                },
                client: Side::Uplink,
                backend: Side::Tunnel {
                    cluster: 0,
                    gateway: 0,
                },
                service: 0,
                backend_index: 0,
                hash: 0,
                state: TcpState::SynSent,
                expires: 0,
            }
        })
    }

    #[test]
    fn forward_and_reverse_find_the_same_flow() {
        let mut t = table(4, (1024, 1030));
        let id = add(&mut t, 40000, 0).unwrap();
        let reverse = t.flow(id).reverse;
        assert_eq!(t.lookup(&key(40000), 1), Some((id, Direction::Forward)));
        assert_eq!(t.lookup(&reverse, 1), Some((id, Direction::Reply)));
        assert_eq!(t.lookup(&key(40001), 1), None);
    }

    #[test]
    fn timeouts_follow_the_tcp_state() {
        let mut t = table(4, (1024, 1030));
        let id = add(&mut t, 40000, 100).unwrap();
        assert_eq!(t.flow(id).expires, 100 + 30);
        t.touch(id, Direction::Reply, flags::SYN | flags::ACK, 101);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::Established, 101 + 3600)
        );
        t.touch(id, Direction::Forward, flags::FIN | flags::ACK, 102);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::ClientClosed, 102 + 3600),
            "half closed: the backend may still send"
        );
        t.touch(id, Direction::Reply, flags::FIN | flags::ACK, 102);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::Closing, 102 + 30)
        );
        assert_eq!(t.lookup(&key(40000), 132), Some((id, Direction::Forward)));
        assert_eq!(t.lookup(&key(40000), 133), None, "expired on lookup");
        assert_eq!(t.stats().expired, 1);
        assert_eq!(t.stats().live, 0);
    }

    /// A half-closed connection that still sends the other way is not
    /// expired by the closing timeout; an RST closes it whatever came before.
    #[test]
    fn closing_is_tracked_per_direction() {
        let mut t = table(4, (1024, 1030));
        let id = add(&mut t, 40000, 0).unwrap();
        t.touch(id, Direction::Reply, flags::SYN | flags::ACK, 0);
        t.touch(id, Direction::Reply, flags::FIN | flags::ACK, 10);
        assert_eq!(t.flow(id).state, TcpState::BackendClosed);
        // The client goes on uploading for longer than the closing timeout.
        for now in (20..200).step_by(20) {
            t.touch(id, Direction::Forward, flags::ACK, now);
            t.sweep(now, 8);
            assert_eq!(
                t.lookup(&key(40000), now),
                Some((id, Direction::Forward)),
                "at {now} s"
            );
        }
        t.touch(id, Direction::Forward, flags::FIN | flags::ACK, 200);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::Closing, 230)
        );
        let other = add(&mut t, 40001, 0).unwrap();
        t.touch(other, Direction::Forward, flags::RST, 5);
        assert_eq!(
            (t.flow(other).state, t.flow(other).expires),
            (TcpState::Closing, 35)
        );
        // A new SYN on the closed port starts the connection over.
        t.touch(other, Direction::Forward, flags::SYN, 6);
        assert_eq!(t.flow(other).state, TcpState::SynSent);
    }

    #[test]
    fn sweep_expires_without_lookups_and_frees_ports() {
        let mut t = table(8, (1024, 1025));
        add(&mut t, 1, 0).unwrap();
        add(&mut t, 2, 0).unwrap();
        assert_eq!(add(&mut t, 3, 0), Err(InsertError::SnatExhausted));
        t.sweep(31, 8);
        assert_eq!(t.stats().expired, 2);
        assert!(add(&mut t, 3, 31).is_ok(), "ports came back");
    }

    #[test]
    fn full_table_evicts_the_flow_closest_to_expiry() {
        let mut t = table(2, (1024, 2047));
        add(&mut t, 1, 0).unwrap();
        add(&mut t, 2, 10).unwrap();
        add(&mut t, 3, 20).unwrap();
        assert_eq!(t.stats().evicted, 1);
        assert_eq!(t.stats().live, 2);
        assert_eq!(t.lookup(&key(1), 20), None);
        assert_ne!(t.lookup(&key(3), 20), None);
    }
}
