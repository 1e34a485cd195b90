//! A worker's connection table: forward and reverse entries for each flow,
//! state-aware timeouts, bounded size, and the worker's SNAT ports.
//!
//! Invariants, which the unit tests and a model-based property test
//! (`tests/conntrack_model.rs`) check:
//! - a live flow has exactly one forward and one reverse entry, and holds
//!   exactly one SNAT port; a SNAT port is held by at most one live flow;
//! - an expired flow is never returned: a lookup that finds one removes it.
//!
//! The flows live in a slab of fixed size, [`Slot`]s of plain bytes: on the
//! heap, or in memory the caller maps (a file under `/dev/shm` that outlives
//! the process, so a restarted Rialto finds its flows). A slot is a flow
//! packed in 48 bytes by the indices of the table's [`Names`] (its service,
//! backend, clusters and SNAT address: see [`packed`]); it says whether it
//! is empty, being written or live, and of which generation of names
//! ([`Slot::mark`]), and carries a check of the fields that only a reload
//! changes, so what is read back after a crash is checked, not trusted.
//! Two indexes, in arrays the slots' storage gives ([`FlowMemory`]: the
//! heap, or memory on huge pages), find a flow's slot: by its forward key,
//! hashed (`Index`), and by its reverse key's SNAT address, protocol and
//! port, directly (a SNAT port is one flow's at most: `Replies`). An index
//! entry is the slot number alone: a packet's key is compared with what
//! the slot and the names make of it.
//!
//! Expiry does not scan the table per packet: a lookup drops an expired
//! entry it meets, and [`Conntrack::sweep`] visits a bounded number of slots
//! per call, once per batch (as many as the time since the last has due),
//! like a clock hand. Expiry times are seconds
//! of the system's monotonic clock, which a restart does not reset.

mod memory;
pub mod packed;

pub use memory::FlowMemory;
pub use packed::{Names, Packed as Slot};
use std::hash::{BuildHasher, Hash, Hasher};

use bytemuck::{Pod, Zeroable};
use hashbrown::DefaultHashBuilder;
use rialto_tables::Timeouts;

use super::{
    keymap::KeyMap,
    nat::Sums,
    packet::{Addr, TCP, UDP},
    replica::{Adopted, Changes, REFRESH_SECONDS, Replica},
    snat::SnatPorts,
};
use crate::wire::tcp::flags;

/// The tunnel context of traffic that arrived without a tunnel.
pub const UPLINK: u32 = u32::MAX;

/// One direction of a flow as it arrives at Rialto. `tunnel` is the VNI it
/// came in on (or [`UPLINK`]): two clusters may use the same pod addresses,
/// and their flows never meet in the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Eq, Pod, Zeroable)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub tunnel: u32,
    pub proto: u8,
    /// Zero: the key's layout has no hidden padding.
    pub pad: [u8; 3],
}

impl FlowKey {
    /// The key's bytes as three words: the addresses, then the rest.
    #[inline]
    fn words(&self) -> [u128; 3] {
        let mut rest = [0; 16];
        rest[..12].copy_from_slice(&bytemuck::bytes_of(self)[32..]);
        let [src, dst] = [self.src, self.dst].map(u128::from_ne_bytes);
        [src, dst, u128::from_ne_bytes(rest)]
    }
}

/// Three words, not field by field (and the addresses byte by byte) as the
/// derived `PartialEq` and `Hash` would: both are on every packet's path.
impl PartialEq for FlowKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let ([a, b, c], [x, y, z]) = (self.words(), other.words());
        (a ^ x) | (b ^ y) | (c ^ z) == 0
    }
}

impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        for word in self.words() {
            state.write_u128(word);
        }
    }
}

/// Where a flow's client or backend is: the uplink, or a pod behind a
/// cluster's gateway (indices into the tables').
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Side {
    cluster: u16,
    gateway: u16,
}

impl Side {
    pub const UPLINK: Self = Self {
        cluster: u16::MAX,
        gateway: u16::MAX,
    };

    /// Behind gateway `gateway` of cluster `cluster` (below `u16::MAX`).
    pub const fn tunnel(cluster: u16, gateway: u16) -> Self {
        Self { cluster, gateway }
    }

    /// The cluster and gateway, or `None` for the uplink.
    #[inline]
    pub const fn tunnel_of(self) -> Option<(u16, u16)> {
        if self.cluster == u16::MAX {
            None
        } else {
            Some((self.cluster, self.gateway))
        }
    }
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.tunnel_of() {
            None => f.write_str("Uplink"),
            Some((cluster, gateway)) => f
                .debug_struct("Tunnel")
                .field("cluster", &cluster)
                .field("gateway", &gateway)
                .finish(),
        }
    }
}

/// A TCP connection's state, as far as the timeouts care. Closing is
/// tracked per direction, as Cilium's conntrack does (`tx_closing`,
/// `rx_closing`): a connection half closed by one side may go on sending
/// the other way for as long as it likes (RFC 9293 §3.6), so it keeps the
/// established timeout until both sides have sent their FIN (or one an RST).
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct TcpState(u32);

impl TcpState {
    /// The client's SYN seen, and not yet its acknowledgement of the
    /// backend's answer: the SYN timeout runs, so a flood of SYNs from
    /// spoofed addresses (which the backend answers and nobody
    /// acknowledges) holds its SNAT ports for that long, not for the
    /// established timeout.
    pub const SYN_SENT: Self = Self(0);
    pub const ESTABLISHED: Self = Self(1);
    /// The client has sent its FIN; the backend may still send.
    pub const CLIENT_CLOSED: Self = Self(2);
    /// The backend has sent its FIN; the client may still send.
    pub const BACKEND_CLOSED: Self = Self(3);
    /// Both FINs seen, or an RST: the closing timeout runs.
    pub const CLOSING: Self = Self(4);

    /// One of the states above (a slot read back may hold anything).
    pub const fn is_valid(self) -> bool {
        self.0 <= Self::CLOSING.0
    }
}

impl std::fmt::Debug for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::SYN_SENT => f.write_str("SynSent"),
            Self::ESTABLISHED => f.write_str("Established"),
            Self::CLIENT_CLOSED => f.write_str("ClientClosed"),
            Self::BACKEND_CLOSED => f.write_str("BackendClosed"),
            Self::CLOSING => f.write_str("Closing"),
            Self(other) => write!(f, "TcpState({other})"),
        }
    }
}

/// What Rialto remembers of a flow, whole: what a [`Slot`] packs, a peer
/// sends, and a state file of version 1 held; plain bytes, with no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
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
    /// The flow's hash ([`flow_hash`](super::packet::flow_hash) of the
    /// client's packets, its low 32 bits): its outer UDP source port, and
    /// its gateway if its own goes.
    pub hash: u32,
    /// What its forward packets' rewrite adds to their checksums (the
    /// replies' is the opposite): worked out from the keys whenever the
    /// flow is packed into a slot, never taken as given.
    ///
    /// Where the previous layout had the upper half of a 64-bit `hash`:
    /// a state file or a peer's flows of either layout read alike (the
    /// hash's lower half is the same, these are worked out again), and a
    /// Rialto of that layout reads these as hash bits it does not use.
    pub sums: Sums,
    /// Second (of the monotonic clock) after which the flow is gone.
    pub expires: u32,
    pub state: TcpState,
}

/// Where a packet of a flow goes and what it becomes: the side it leaves
/// by, its new source and destination (address, port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub to: Side,
    pub src: (Addr, u16),
    pub dst: (Addr, u16),
}

impl Flow {
    /// What the rewrite of a forward packet adds to its checksums (a
    /// reply's is the opposite), worked out from the keys.
    fn forward_sums(&self) -> Sums {
        let Rewrite { src, dst, .. } = self.rewrite(Direction::Forward);
        let key = &self.forward;
        Sums::between(
            [(&key.src, key.src_port), (&key.dst, key.dst_port)],
            [(&src.0, src.1), (&dst.0, dst.1)],
        )
    }

    /// What a packet going `direction` becomes: forward, from the SNAT
    /// address to the backend; back, from the VIP to the client.
    #[inline]
    pub fn rewrite(&self, direction: Direction) -> Rewrite {
        // The reply's key, read backwards, is what a forwarded packet
        // becomes; and the other way round.
        let (to, key) = match direction {
            Direction::Forward => (self.backend, &self.reverse),
            Direction::Reply => (self.client, &self.forward),
        };
        Rewrite {
            to,
            src: (key.dst, key.dst_port),
            dst: (key.src, key.src_port),
        }
    }
}

/// What a slot read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Empty,
    /// Being written when the writer stopped: its flow is incomplete.
    Torn,
    Live,
    /// Neither of the above, or a checksum that does not match.
    Corrupt,
}

/// Which entry a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client -> backend.
    Forward,
    /// Backend -> client.
    Reply,
}

/// Where the indexes file a key ([`Conntrack::filed`]): worked out once,
/// as a batch stages a frame, for both the index entry's read ahead and
/// the guess of the flow's slot that follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filed {
    /// A forward key (to a VIP), of this hash: in the forward index.
    Forward(u64),
    /// A reverse key only (to a SNAT address): its SNAT port's entry in
    /// the reply index, by row and port.
    Reply(u32, u32),
    /// In no index: not a key the lookup searches, or its SNAT address
    /// has no rows yet.
    Nowhere,
}

/// Why a flow could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// No SNAT port left in the worker's slice of the pool.
    SnatExhausted,
    /// The flow's slot cannot name it: an index beyond 16 bits, or one
    /// that names nothing (the tables and the table's names out of step).
    Unnamed,
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

/// What [`Conntrack::restore`] made of the flows it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    pub restored: u64,
    /// Expired meanwhile.
    pub expired: u64,
    /// Whose SNAT port is not in this worker's slice of the pool (an
    /// address gone, a port range changed).
    pub no_port: u64,
    /// A flow with the same key or SNAT port came first.
    pub duplicate: u64,
    /// The table was full.
    pub full: u64,
    /// Whose keys are not what its indices name in the tables in force.
    pub unnamed: u64,
}

/// Slots sampled for the flow to evict when the table is full.
const EVICTION_SAMPLE: usize = 8;

/// A worker's flows, in slots of storage `S` (the heap by default), which
/// gives its indexes their arrays too.
#[derive(Debug)]
pub struct Conntrack<S: FlowMemory = Box<[Slot]>> {
    slots: S,
    free: Vec<u32>,
    forward: Index<S>,
    replies: Replies<S>,
    hasher: DefaultHashBuilder,
    snat: SnatPorts,
    timeouts: Timeouts,
    hand: usize,
    /// Slots `0..used` have held a flow at some point; the others were
    /// never touched (the free list hands out the lowest first), so the
    /// sweep and a reload stay off their pages, which a table in a file
    /// then never allocates.
    used: usize,
    stats: ConntrackStats,
    /// Live flows per service and backend (indices of the tables in force).
    per_backend: Vec<Vec<u32>>,
    /// What the slots' indices name (the tables in force), and their
    /// generation (the low bit of a live slot's mark: one more per reload).
    names: Names,
    generation: u8,
}

impl Conntrack {
    /// A table of at most `capacity` flows, on the heap, its slots packed
    /// under `names`.
    pub fn new(capacity: usize, snat: SnatPorts, timeouts: Timeouts, names: Names) -> Self {
        let slots = bytemuck::zeroed_slice_box(capacity.max(1));
        Self::with_slots(slots, snat, timeouts, names)
    }
}

impl<S: FlowMemory> Conntrack<S> {
    /// A table over `slots` (at least one), which must all be empty (zero:
    /// fresh memory, a new file). They are not read here: a page of a new
    /// mapping that is not touched is not allocated (reading it would
    /// allocate it). Everything else is allocated here: the hot path
    /// never allocates.
    pub fn with_slots(slots: S, snat: SnatPorts, timeouts: Timeouts, names: Names) -> Self {
        assert!(!slots.is_empty(), "a flow table has a slot at least");
        let capacity = slots.len();
        Self {
            slots,
            free: (0..capacity as u32).rev().collect(),
            forward: Index::new(capacity),
            replies: Replies::new(snat.owned(), names.snat_count()),
            hasher: DefaultHashBuilder::default(),
            snat,
            timeouts,
            hand: 0,
            used: 0,
            stats: ConntrackStats::default(),
            per_backend: Vec::new(),
            names,
            generation: 0,
        }
    }

    /// The storage, for its own bookkeeping (a file's header, say): the
    /// slots are the table's, and writing them through it breaks the table.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.slots
    }

    /// Live flows per service and backend.
    pub fn per_backend(&self) -> &[Vec<u32>] {
        &self.per_backend
    }

    /// Counts the live flows per backend again, for tables with `layout[s]`
    /// backends in service `s` (at start and after a reload).
    pub fn recount(&mut self, layout: &[usize]) {
        let mut per_backend: Vec<Vec<u32>> = layout.iter().map(|&n| vec![0; n]).collect();
        for (_, flow) in self.iter() {
            if let Some(n) = backend_count(&mut per_backend, &flow) {
                *n += 1;
            }
        }
        self.per_backend = per_backend;
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
        self.lookup_in(key, now, true, true)
    }

    /// [`Conntrack::lookup`] among the forward keys only if `forward`,
    /// among the reverse ones only if `reverse`: a caller that knows the
    /// key cannot be one (a packet to an address that is no VIP matches no
    /// forward key) saves the search, and the key's hash if not `forward`.
    #[inline]
    pub fn lookup_in(
        &mut self,
        key: &FlowKey,
        now: u32,
        forward: bool,
        reverse: bool,
    ) -> Option<(u32, Direction)> {
        let hash = if forward { self.hash(key) } else { 0 };
        self.lookup_hashed(key, hash, now, (forward, reverse), None)
    }

    /// The hash the indexes file `key` under.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// [`Conntrack::lookup_in`] of `key`, whose hash is `hash` (only a
    /// forward key's is needed), among the keys `(forward, reverse)` says.
    /// `candidate`, if any, is a slot the index held for `key` earlier
    /// (what [`Conntrack::candidate`] said, or a flow just made; the table
    /// may have changed since): if it holds the flow, no index is searched.
    /// Inlined: it is on every packet's path.
    #[inline(always)]
    pub fn lookup_hashed(
        &mut self,
        key: &FlowKey,
        hash: u64,
        now: u32,
        (forward, reverse): (bool, bool),
        candidate: Option<u32>,
    ) -> Option<(u32, Direction)> {
        let confirmed = candidate.and_then(|id| self.confirm(id, key, (forward, reverse)));
        let found = match confirmed {
            Some(id) => Some(id),
            None if forward => self.forward.get(hash, key, &self.slots, &self.names),
            None => None,
        };
        let (id, direction) = match found {
            Some(id) if forward => (id, Direction::Forward),
            Some(id) => (id, Direction::Reply),
            None if reverse => (
                self.replies.get(key, &self.slots, &self.names)?,
                Direction::Reply,
            ),
            None => return None,
        };
        if self.slots[id as usize].expires < now {
            self.remove(id);
            self.stats.expired += 1;
            return None;
        }
        Some((id, direction))
    }

    /// Where the indexes file `key` (of hash `hash`, if a forward key),
    /// among the keys `(forward, reverse)` says: what a batch works out as
    /// it stages a frame, to read the index entry ahead
    /// ([`Conntrack::prefetch`]), then the slot it names
    /// ([`Conntrack::candidate`]).
    #[inline]
    pub fn filed(&self, key: &FlowKey, hash: u64, (forward, reverse): (bool, bool)) -> Filed {
        match (forward, reverse) {
            (true, _) => Filed::Forward(hash),
            (false, true) => self
                .replies
                .place(key)
                .map_or(Filed::Nowhere, |(row, port)| Filed::Reply(row, port)),
            (false, false) => Filed::Nowhere,
        }
    }

    /// Starts reading the index entry `filed` names, and returns at once:
    /// the processor brings its cache line near while other frames are
    /// worked on.
    #[inline]
    pub fn prefetch(&self, filed: Filed) {
        match filed {
            Filed::Forward(hash) => self.forward.prefetch(hash),
            Filed::Reply(row, port) => self.replies.prefetch(row, port),
            Filed::Nowhere => {}
        }
    }

    /// The slot a lookup of the key filed at `filed` compares first: a
    /// guess, from the index entry alone (no key is compared). With
    /// [`Conntrack::warm`], what a batch does for a frame some frames
    /// before it processes it, so that its cache misses overlap others'.
    /// The table may change in between: the lookup compares the guess.
    #[inline]
    pub fn candidate(&self, filed: Filed) -> Option<u32> {
        match filed {
            Filed::Forward(hash) => self.forward.candidate(hash),
            Filed::Reply(row, port) => self.replies.holder_at(row, port),
            Filed::Nowhere => None,
        }
    }

    /// `candidate`, if slot `candidate` holds the live flow whose forward
    /// key (if `forward`; else, if `reverse`, reverse key) is `key`: then
    /// the index holds it under `key` too (live flows' keys are unique, and
    /// each is indexed), and a lookup need not search it.
    #[inline(always)]
    fn confirm(
        &self,
        candidate: u32,
        key: &FlowKey,
        (forward, reverse): (bool, bool),
    ) -> Option<u32> {
        let slot = self.slots.get(candidate as usize)?;
        let holds = match (forward, reverse) {
            (true, _) => self.names.is_forward(slot, key),
            (false, true) => self.names.is_reverse(slot, key),
            // Neither index to be searched: nothing is found.
            (false, false) => false,
        };
        (slot.is_live() && holds).then_some(candidate)
    }

    /// Starts reading slot `id`'s first and last word, and returns at
    /// once: brings both cache lines of the flow near (see
    /// [`Conntrack::candidate`]).
    #[inline]
    pub fn warm(&self, id: u32) {
        if let Some(slot) = self.slots.get(id as usize) {
            safe_arch::prefetch_t0(&slot.client);
            safe_arch::prefetch_t0(&slot.check);
        }
    }

    /// Every flow in the table, expired ones not yet removed included,
    /// with its slot, in slot order. Not for the hot path: it visits every
    /// slot.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Flow)> + '_ {
        (0u32..)
            .zip(self.slots[..self.used].iter())
            .filter(|(_, slot)| slot.is_live())
            .filter_map(|(id, slot)| Some((id, self.names.unpack(slot)?)))
    }

    /// Live flow `id`, unpacked. Every live slot unpacks under the
    /// table's names: slots are packed under them, and a reload that
    /// changes them packs every slot again under the new ones.
    pub fn flow(&self, id: u32) -> Flow {
        let slot = &self.slots[id as usize];
        debug_assert!(slot.is_live(), "live flow id");
        self.names
            .unpack(slot)
            .expect("a live slot unpacks under the table's names")
    }

    /// Live flow `id`'s slot, as it is packed.
    #[inline]
    pub fn slot(&self, id: u32) -> &Slot {
        &self.slots[id as usize]
    }

    /// Where the table lies in memory, as address ranges, by part: its
    /// `slots`, and the arrays of its two `indexes` (the reply index's
    /// moves if a reload adds SNAT addresses). For reading what backs them
    /// (huge pages or not, `/proc/self/smaps`); never per packet.
    pub fn memory(&self) -> [(&'static str, std::ops::Range<usize>); 3] {
        fn range<T>(values: &[T]) -> std::ops::Range<usize> {
            let std::ops::Range { start, end } = values.as_ptr_range();
            start.addr()..end.addr()
        }
        [
            ("slots", range(&self.slots)),
            ("indexes", range(&self.forward.buckets)),
            ("indexes", range(&self.replies.entries)),
        ]
    }

    /// What the slots' indices name.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The generation of the names (0 or 1): what a live slot's mark says
    /// it is packed under. A reload that changes the names packs every
    /// slot under the other.
    pub fn generation(&self) -> u8 {
        self.generation
    }

    /// Puts flows kept from before (another process's table, read back
    /// and carried over to the tables in force) into this empty table as
    /// they were, their SNAT ports, state and expiry included; the ports
    /// they hold leave the free lists. What cannot be restored is counted
    /// by reason. Allocates, as a start does.
    pub fn restore(&mut self, flows: impl IntoIterator<Item = Flow>, now: u32) -> Restored {
        let mut done = Restored::default();
        let mut claims = self.snat.claims();
        for mut flow in flows {
            let (addr, proto, port) = (flow.reverse.dst, flow.reverse.proto, flow.reverse.dst_port);
            let hash = self.hasher.hash_one(flow.forward);
            let reason = match self.pack(&mut flow) {
                _ if flow.expires < now => &mut done.expired,
                _ if !self.snat.holds(&addr, proto, port) => &mut done.no_port,
                None => &mut done.unnamed,
                Some(_) if self.free.is_empty() => &mut done.full,
                Some(_) if !self.snat.claim(&mut claims, &addr, proto, port) => &mut done.duplicate,
                // A reverse key holds its SNAT port, so only the forward key
                // can be taken yet: looked for and indexed in one probe.
                Some(packed) => {
                    let id = *self.free.last().expect("checked above");
                    if (self.forward).insert_new(hash, id, &flow.forward, &self.slots, &self.names)
                    {
                        self.free.pop();
                        self.count(&flow, true);
                        self.write(id, packed);
                        self.replies.insert(&flow.reverse, id);
                        &mut done.restored
                    } else {
                        &mut done.duplicate
                    }
                }
            };
            *reason += 1;
        }
        self.snat.settle(&claims);
        done
    }

    /// `flow` packed under the table's names, if it packs; its sums first
    /// worked out from its keys (never taken as given).
    fn pack(&self, flow: &mut Flow) -> Option<Slot> {
        flow.sums = flow.forward_sums();
        self.names.pack(flow)
    }

    /// Writes `flow`, packed as `packed`, into free slot `id` and indexes
    /// it (its forward key of hash `hash`).
    fn put(&mut self, id: u32, flow: &Flow, packed: Slot, hash: u64) {
        self.count(flow, true);
        self.write(id, packed);
        self.forward.insert(hash, id);
        self.replies.insert(&flow.reverse, id);
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
        let mut flow = make(addr, port);
        flow.expires = now.saturating_add(self.timeout(flow.forward.proto, flow.state));
        flow.sums = flow.forward_sums();
        let Some(packed) = self.names.pack_made(&flow) else {
            self.snat.give_back(&addr, proto, port);
            return Err(InsertError::Unnamed);
        };
        if self.free.is_empty() {
            self.evict();
        }
        let id = self.free.pop().expect("a slot was freed above");
        self.put(id, &flow, packed, self.hasher.hash_one(flow.forward));
        self.stats.created += 1;
        Ok(id)
    }

    /// Notes a packet of flow `id`, of protocol `proto` (its keys', which
    /// the packet's lookup matched): advances the TCP state and the expiry
    /// (each one store, which the slot's checksum does not cover). Whether
    /// the TCP state changed.
    #[inline]
    pub fn touch(
        &mut self,
        id: u32,
        proto: u8,
        direction: Direction,
        tcp_flags: u8,
        now: u32,
    ) -> bool {
        debug_assert_eq!(proto, self.names.proto(&self.slots[id as usize]));
        let timeouts = self.timeouts;
        let slot = &mut self.slots[id as usize];
        let before = slot.tcp_state();
        let state = match proto {
            TCP => next_state(before, direction, tcp_flags),
            _ => before,
        };
        // One of the five states, or a UDP flow's as it was: it fits its
        // byte (stored whether it changed or not: no branch).
        slot.state = state.0 as u8;
        slot.expires = now.saturating_add(timeout(&timeouts, proto, state));
        state != before
    }

    /// Whether flow `id` is on one of this table's own SNAT addresses (not
    /// a peer's, adopted).
    #[inline]
    pub fn is_own(&self, id: u32) -> bool {
        let slot = &self.slots[id as usize];
        (self.names.snat_addr(slot)).is_some_and(|a| self.snat.has_addr(a, self.names.proto(slot)))
    }

    /// Puts in, updates or removes a flow a peer of the fleet speaks for
    /// (its SNAT address is the peer's): what it replaces goes, a flow with
    /// the same forward key or on the same SNAT port (reused by its
    /// owner). A flow on one of this table's own addresses is refused: only
    /// this node speaks for those; so is one whose replies cannot come to
    /// this table (a SNAT port it does not own). No SNAT port is taken.
    /// When the table is full, a flow close to expiry makes room, as for a
    /// new one.
    pub fn adopt(&mut self, replica: &Replica, now: u32) -> Adopted {
        let flow = replica.flow;
        if self.snat.has_addr(&flow.reverse.dst, flow.reverse.proto) {
            return Adopted::Own;
        }
        if !self.replies.takes(&flow.reverse) {
            return Adopted::NotHere;
        }
        let hash = self.hasher.hash_one(flow.forward);
        let same = (self.forward).get(hash, &flow.forward, &self.slots, &self.names);
        if replica.kind == Replica::DOWN {
            return match same {
                Some(id) => {
                    self.remove(id);
                    Adopted::Removed
                }
                None => Adopted::Ignored,
            };
        }
        if replica.remaining == 0 {
            return Adopted::Ignored;
        }
        let mut flow = Flow {
            expires: now.saturating_add(replica.remaining),
            ..flow
        };
        // Packed under this table's names: a flow they do not name
        // (another config's) cannot be carried here.
        let Some(packed) = self.pack(&mut flow) else {
            return Adopted::NotHere;
        };
        // Compared in place: the flow packed, its padding is none.
        if let Some(id) = same
            && self
                .names
                .is_reverse(&self.slots[id as usize], &flow.reverse)
        {
            self.slots[id as usize].write(packed, self.generation);
            return Adopted::Updated;
        }
        if let Some(id) = same {
            self.remove(id);
        }
        if let Some(id) = self.replies.holder(&flow.reverse) {
            self.remove(id);
        }
        if self.free.is_empty() {
            self.evict();
        }
        let id = self.free.pop().expect("a slot was freed above");
        self.put(id, &flow, packed, hash);
        Adopted::Added
    }

    /// Notes in `changes`, as they are, the live flows on this table's own
    /// SNAT addresses among the next few slots: a share of them such that
    /// each is noted once per [`REFRESH_SECONDS`], as long as `changes` has
    /// room. A burst notes every live flow, the peers' too (a node that
    /// joins gets from the others the flows of a node that is gone).
    /// During a burst ([`Changes::start_burst`]), as many slots as
    /// `changes` has room for.
    pub fn refresh(&mut self, changes: &mut Changes, now_ns: u64) {
        const PERIOD_NS: u64 = REFRESH_SECONDS as u64 * 1_000_000_000;
        let used = self.used.max(1) as u64;
        let due = if changes.bursting() {
            changes.burst_due()
        } else {
            let elapsed = now_ns.saturating_sub(changes.refreshed_ns);
            let due = (used * elapsed.min(PERIOD_NS) / PERIOD_NS) as usize;
            if due > 0 {
                changes.refreshed_ns = now_ns;
            }
            due
        };
        let now = (now_ns / 1_000_000_000) as u32;
        let bursting = changes.bursting();
        let mut visited = 0;
        for _ in 0..due {
            if changes.is_full() {
                break;
            }
            visited += 1;
            changes.hand = (changes.hand + 1) % self.used.max(1);
            let slot = &self.slots[changes.hand];
            if slot.is_live()
                && slot.expires >= now
                && (bursting || self.is_own(changes.hand as u32))
                && let Some(flow) = self.names.unpack(slot)
            {
                changes.note(Replica::UP, &flow, flow.expires - now);
            }
        }
        if changes.bursting() {
            changes.burst_visited(visited);
        }
    }

    /// Slots that have held a flow: what a burst visits.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Visits up to `budget` slots from where the last sweep stopped and
    /// removes the expired flows there.
    pub fn sweep(&mut self, now: u32, budget: usize) {
        for _ in 0..budget.min(self.used) {
            self.hand = if self.hand + 1 < self.used {
                self.hand + 1
            } else {
                0
            };
            let slot = &self.slots[self.hand];
            if slot.is_live() && slot.expires < now {
                self.remove(self.hand as u32);
                self.stats.expired += 1;
            }
        }
    }

    /// After a config reload: each live flow becomes what `remap` makes of
    /// it (same keys, new table indices) and is packed under `names`, or
    /// is removed when `remap` says `None`; with no `carry` (the tables
    /// name every flow as before: a health check's reload), every flow
    /// stays as it is, and no slot is rewritten. With a new SNAT pool
    /// (`snat`), flows whose port is not in its slice are removed first,
    /// the ports the others hold are taken out of its free lists, and the
    /// replies' index is made again for the ports the worker now owns.
    /// Runs on the worker, between batches: it visits every slot once and
    /// allocates, which a reload may.
    pub fn reload(
        &mut self,
        timeouts: Timeouts,
        snat: Option<SnatPorts>,
        carry: Option<(Names, &Remap<'_>)>,
    ) {
        self.timeouts = timeouts;
        let before = self.forward.len();
        if let Some(snat) = snat {
            self.resnat(snat);
        }
        if let Some((names, remap)) = carry {
            self.repack(names, remap);
        }
        self.stats.reload_removed += (before - self.forward.len()) as u64;
    }

    /// The SNAT part of [`Conntrack::reload`].
    fn resnat(&mut self, mut snat: SnatPorts) {
        for id in 0..self.used {
            if !self.slots[id].is_live() {
                continue;
            }
            let f = self.flow(id as u32);
            if !snat.holds(&f.reverse.dst, f.reverse.proto, f.reverse.dst_port) {
                self.remove(id as u32);
            }
        }
        let mut claims = snat.claims();
        for (_, f) in self.iter() {
            snat.claim(
                &mut claims,
                &f.reverse.dst,
                f.reverse.proto,
                f.reverse.dst_port,
            );
        }
        snat.settle(&claims);
        self.replies = Replies::new(snat.owned(), self.names.snat_count());
        for (id, slot) in self.slots[..self.used].iter().enumerate() {
            if slot.is_live()
                && let Some((reverse, _)) = self.names.reverse_key(slot)
            {
                self.replies.insert(&reverse, id as u32);
            }
        }
        self.snat = snat;
    }

    /// The carrying part of [`Conntrack::reload`]: each slot unpacked
    /// under the old names (still the table's until every slot is done),
    /// carried over, and packed under the new, of the next generation.
    fn repack(&mut self, names: Names, remap: &Remap<'_>) {
        let next = self.generation ^ 1;
        for id in 0..self.used {
            if !self.slots[id].is_live() {
                continue;
            }
            let flow = self.flow(id as u32);
            let new = remap(&flow).and_then(|new| {
                debug_assert_eq!((new.forward, new.reverse), (flow.forward, flow.reverse));
                names.pack(&Flow {
                    sums: new.forward_sums(),
                    ..new
                })
            });
            match new {
                Some(packed) => self.slots[id].write(packed, next),
                None => self.remove(id as u32),
            }
        }
        self.names = names;
        self.generation = next;
    }

    fn evict(&mut self) {
        let len = self.slots.len();
        let victim = (1..=EVICTION_SAMPLE.min(len))
            .map(|i| (self.hand + i) % len)
            .filter(|&i| self.slots[i].is_live())
            .map(|i| (self.slots[i].expires, i))
            .min();
        self.hand = (self.hand + EVICTION_SAMPLE) % len;
        if let Some((_, i)) = victim {
            self.remove(i as u32);
            self.stats.evicted += 1;
        }
    }

    /// Removes live flow `id` before it expires (its connection was closed
    /// for it); its SNAT port is free again.
    pub fn close(&mut self, id: u32) {
        self.remove(id);
    }

    /// Writes a new flow into free slot `id`.
    fn write(&mut self, id: u32, packed: Slot) {
        self.slots[id as usize].write(packed, self.generation);
        self.used = self.used.max(id as usize + 1);
    }

    fn remove(&mut self, id: u32) {
        let flow = self.flow(id);
        self.slots[id as usize].mark = Slot::EMPTY;
        self.count(&flow, false);
        self.forward.remove(self.hasher.hash_one(flow.forward), id);
        self.replies.remove(&flow.reverse, id);
        self.snat
            .give_back(&flow.reverse.dst, flow.reverse.proto, flow.reverse.dst_port);
        self.free.push(id);
    }

    fn timeout(&self, proto: u8, state: TcpState) -> u32 {
        timeout(&self.timeouts, proto, state)
    }
}

/// What a reload makes of a flow ([`Conntrack::reload`]): the same keys
/// under the new tables' indices, or `None` if it cannot stay.
pub type Remap<'a> = dyn Fn(&Flow) -> Option<Flow> + 'a;

/// Slot numbers of live flows, found by their forward key: an open-addressed
/// table of buckets of one cache line each, so that a lookup reads one line
/// of the index (hashbrown's tables read two: the control bytes, then the
/// entry) before the flow's slot. A bucket holds eight slot numbers and,
/// beside them, 16 bits of each one's key hash, compared all at once
/// first; a key's home bucket comes from its hash mixed once more. A
/// bucket full when an entry's home was it or a bucket before sends the
/// entry on to the next; each bucket counts the entries that went past it
/// (`passed`), so a lookup stops at the first bucket none went past, and a
/// removal takes the counts back: nothing stays behind as flows come and
/// go. Its size is fixed ([`Index::LOAD`] flows per bucket when the table
/// is full), so it never grows.
#[derive(Debug)]
struct Index<M: FlowMemory> {
    buckets: M::Array<Bucket>,
    len: usize,
}

/// Eight entries in one cache line, and how many entries went past it.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Bucket {
    tags: [u16; 8],
    ids: [u32; 8],
    passed: u32,
    /// The rest of the line.
    unused: [u32; 3],
}

impl Bucket {
    /// The slot number of an empty entry (slot numbers are below it).
    const EMPTY: u32 = u32::MAX;

    /// The entries whose tag is `tag` (empty ones may be among them), as
    /// a bit mask, bit `2i` for entry `i`: the eight tags compared at
    /// once, in one SSE2 comparison (as hashbrown matches its control
    /// bytes; SSE2 is part of x86-64, the one architecture Rialto runs on).
    #[inline]
    fn matching(&self, tag: u16) -> u32 {
        use safe_arch::{cmp_eq_mask_i16_m128i, m128i, move_mask_i8_m128i, set_splat_i16_m128i};
        let tags = m128i::from(bytemuck::cast::<[u16; 8], [i16; 8]>(self.tags));
        let equal = cmp_eq_mask_i16_m128i(tags, set_splat_i16_m128i(tag as i16));
        // Both bytes of an equal lane are set: keep the low one's bit.
        move_mask_i8_m128i(equal) as u32 & 0x5555
    }

    /// The entry a bit of [`Bucket::matching`]'s mask stands for.
    #[inline]
    fn entry(bit: u32) -> usize {
        bit as usize / 2
    }

    /// The slot of the first entry whose tag is `tag`, if any.
    #[inline]
    fn first(&self, tag: u16) -> Option<u32> {
        let lanes = self.matching(tag);
        let id = self.ids[Self::entry(lanes.trailing_zeros()).min(7)];
        (lanes != 0 && id != Self::EMPTY).then_some(id)
    }
}

impl<M: FlowMemory> Index<M> {
    /// Flows per bucket of a full table, of the eight it holds: few
    /// buckets overflow (15% at this load), and an index takes 10.7 bytes
    /// per flow.
    const LOAD: usize = 6;

    fn new(capacity: usize) -> Self {
        assert!(capacity < u32::MAX as usize, "slot numbers fit 32 bits");
        let mut buckets = M::zeroed::<Bucket>(capacity.div_ceil(Self::LOAD).max(1));
        for bucket in buckets.iter_mut() {
            bucket.ids = [Bucket::EMPTY; 8];
        }
        Self { buckets, len: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The bucket an entry of hash `hash` is looked for first: the hash
    /// mixed once more (the hasher's middle bits are weak on keys that
    /// differ little, as a client's ports do), its top half scaled to the
    /// bucket count (no division).
    #[inline]
    fn home(&self, hash: u64) -> usize {
        let mixed = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        ((mixed * self.buckets.len() as u64) >> 32) as usize
    }

    #[inline]
    fn tag(hash: u64) -> u16 {
        (hash >> 48) as u16
    }

    #[inline]
    fn next(&self, bucket: usize) -> usize {
        if bucket + 1 == self.buckets.len() {
            0
        } else {
            bucket + 1
        }
    }

    /// The slot of the live flow whose key is `key` (of hash `hash`).
    /// Indexed slots are live: only the key is compared. Inlined into the
    /// lookups: it is on every packet's path.
    #[inline(always)]
    fn get(&self, hash: u64, key: &FlowKey, slots: &[Slot], names: &Names) -> Option<u32> {
        let tag = Self::tag(hash);
        let mut b = self.home(hash);
        // Bounded, though a chain never goes round the whole table.
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            let mut lanes = bucket.matching(tag);
            while lanes != 0 {
                let id = bucket.ids[Bucket::entry(lanes.trailing_zeros())];
                if id != Bucket::EMPTY && names.is_forward(&slots[id as usize], key) {
                    return Some(id);
                }
                lanes &= lanes - 1;
            }
            if bucket.passed == 0 {
                break;
            }
            b = self.next(b);
        }
        None
    }

    /// Starts reading the home bucket of `hash` and the next, where the
    /// entry is if the home bucket was full ([`Conntrack::prefetch`]).
    #[inline]
    fn prefetch(&self, hash: u64) {
        let home = self.home(hash);
        for b in [home, self.next(home)] {
            if let Some(bucket) = self.buckets.get(b) {
                safe_arch::prefetch_t0(bucket);
            }
        }
    }

    /// The slot of the first entry of the home bucket whose tag is
    /// `hash`'s, or if it has none and entries went past it, of the next
    /// bucket's ([`Conntrack::candidate`]): a full home bucket sends an
    /// entry on, and a guess that missed it would leave its lookup to
    /// wait for the next bucket and then its slot, one miss after another.
    #[inline]
    fn candidate(&self, hash: u64) -> Option<u32> {
        let (home, tag) = (self.home(hash), Self::tag(hash));
        let bucket = &self.buckets[home];
        match bucket.first(tag) {
            None if bucket.passed != 0 => self.buckets[self.next(home)].first(tag),
            found => found,
        }
    }

    /// Indexes slot `id`, whose key's hash is `hash`.
    fn insert(&mut self, hash: u64, id: u32) {
        debug_assert!(self.len < self.buckets.len() * 8, "never full");
        let mut b = self.home(hash);
        loop {
            let bucket = &mut self.buckets[b];
            if let Some(at) = bucket.ids.iter().position(|&i| i == Bucket::EMPTY) {
                bucket.ids[at] = id;
                bucket.tags[at] = Self::tag(hash);
                self.len += 1;
                return;
            }
            bucket.passed += 1;
            b = self.next(b);
        }
    }

    /// Indexes slot `id` under `key` (of hash `hash`) unless a live flow
    /// has that key already: whether it did. The slot is written after.
    fn insert_new(
        &mut self,
        hash: u64,
        id: u32,
        key: &FlowKey,
        slots: &[Slot],
        names: &Names,
    ) -> bool {
        if self.get(hash, key, slots, names).is_some() {
            return false;
        }
        self.insert(hash, id);
        true
    }

    /// Forgets slot `id`, whose key's hash is `hash`.
    fn remove(&mut self, hash: u64, id: u32) {
        let home = self.home(hash);
        let mut b = home;
        for _ in 0..self.buckets.len() {
            let bucket = &mut self.buckets[b];
            if let Some(at) = bucket.ids.iter().position(|&i| i == id) {
                bucket.ids[at] = Bucket::EMPTY;
                bucket.tags[at] = 0;
                self.len -= 1;
                // The buckets it went past no longer count it.
                let mut k = home;
                while k != b {
                    self.buckets[k].passed -= 1;
                    k = self.next(k);
                }
                return;
            }
            if bucket.passed == 0 {
                return;
            }
            b = self.next(b);
        }
    }
}

/// Slot numbers of live flows, found by their reverse key's SNAT address,
/// protocol and port: no hash, no probe. A SNAT port is held by one live
/// flow at most (this table takes each once, and a peer's flow adopted
/// here replaces the one before it on its port), so the port says which
/// flow it is, and the rest of the key is compared in its slot. For each
/// SNAT address a flow here has been on, a row per protocol of the ports
/// this worker owns ([`SnatPorts::owned`]: a reply to another worker's port
/// is handed over before it is looked up), 4 bytes a port. The rows are
/// one array, zeroed, with room for the fleet's SNAT addresses (the TCP
/// rows, then the UDP rows): one mapping, on huge pages where the table's
/// memory has them, and no row's pointer to read first; the pages where no
/// port was taken are not touched.
#[derive(Debug)]
struct Replies<M: FlowMemory> {
    /// SNAT address -> its TCP row in `entries` (its UDP row is `room`
    /// rows on).
    rows_of: KeyMap<u128, u32>,
    /// The addresses of `rows_of`, in row order.
    addrs: Vec<u128>,
    /// Per row, per port `first..first + len`: its flow's slot number + 1,
    /// or 0.
    entries: M::Array<u32>,
    /// The addresses the rows have room for.
    room: u32,
    first: u32,
    len: u32,
}

impl<M: FlowMemory> Replies<M> {
    /// An index of the replies to ports `owned`, with room for the rows of
    /// `room` SNAT addresses (it makes more if it needs them).
    fn new(owned: std::ops::Range<u32>, room: usize) -> Self {
        let len = owned.len() as u32;
        let room = room.max(1) as u32;
        Self {
            rows_of: KeyMap::default(),
            addrs: Vec::new(),
            entries: M::zeroed(2 * room as usize * len as usize),
            room,
            first: owned.start,
            len,
        }
    }

    /// Whether a flow of reverse key `key` can be indexed here: TCP or
    /// UDP, to a port of the worker's.
    fn takes(&self, key: &FlowKey) -> bool {
        matches!(key.proto, TCP | UDP)
            && u32::from(key.dst_port).wrapping_sub(self.first) < self.len
    }

    /// The row and the entry of the port of reverse key `key`, if its
    /// address has rows.
    #[inline(always)]
    fn place(&self, key: &FlowKey) -> Option<(u32, u32)> {
        let proto = match key.proto {
            TCP => 0,
            UDP => 1,
            _ => return None,
        };
        let port = u32::from(key.dst_port).wrapping_sub(self.first);
        if port >= self.len {
            return None;
        }
        let row = self.rows_of.get(u128::from_ne_bytes(key.dst))? + proto * self.room;
        Some((row, port))
    }

    /// The entry at `row` and `port`, if the index has it.
    #[inline(always)]
    fn entry(&self, row: u32, port: u32) -> Option<&u32> {
        self.entries.get(self.at(row, port))
    }

    /// [`Replies::entry`], to be written.
    #[inline(always)]
    fn entry_mut(&mut self, row: u32, port: u32) -> Option<&mut u32> {
        let at = self.at(row, port);
        self.entries.get_mut(at)
    }

    /// Where the entry at `row` and `port` is in `entries`.
    #[inline(always)]
    fn at(&self, row: u32, port: u32) -> usize {
        row as usize * self.len as usize + port as usize
    }

    /// Starts reading the entry at `row` and `port`
    /// ([`Conntrack::prefetch`]).
    #[inline]
    fn prefetch(&self, row: u32, port: u32) {
        if let Some(entry) = self.entry(row, port) {
            safe_arch::prefetch_t0(entry);
        }
    }

    /// The slot of the live flow on the SNAT port of `key`, whatever the
    /// rest of its key.
    #[inline(always)]
    fn holder(&self, key: &FlowKey) -> Option<u32> {
        let (row, port) = self.place(key)?;
        self.holder_at(row, port)
    }

    /// The slot of the live flow at `row` and `port`, if any.
    #[inline(always)]
    fn holder_at(&self, row: u32, port: u32) -> Option<u32> {
        self.entry(row, port)?.checked_sub(1)
    }

    /// The slot of the live flow whose reverse key is `key`.
    #[inline(always)]
    fn get(&self, key: &FlowKey, slots: &[Slot], names: &Names) -> Option<u32> {
        let id = self.holder(key)?;
        let slot = &slots[id as usize];
        names.is_reverse(slot, key).then_some(id)
    }

    /// Indexes slot `id` under reverse key `key`, which the index
    /// [`takes`](Self::takes); its address gets its rows if it has none.
    fn insert(&mut self, key: &FlowKey, id: u32) {
        debug_assert!(self.takes(key), "a reverse key the index takes");
        let place = match self.place(key) {
            Some(place) => Some(place),
            None => self.add_rows(key),
        };
        if let Some(entry) = place.and_then(|(row, port)| self.entry_mut(row, port)) {
            *entry = id + 1;
        }
    }

    /// Gives the address of reverse key `key` its rows, if the index
    /// [`takes`](Self::takes) the key; then its place. Once per SNAT
    /// address: kept out of [`Replies::insert`]'s way.
    #[cold]
    #[inline(never)]
    fn add_rows(&mut self, key: &FlowKey) -> Option<(u32, u32)> {
        if !self.takes(key) {
            return None;
        }
        if self.addrs.len() == self.room as usize {
            self.grow();
        }
        self.addrs.push(u128::from_ne_bytes(key.dst));
        self.rows_of = KeyMap::new(
            (0u32..)
                .zip(&self.addrs)
                .map(|(row, &a)| (a, row))
                .collect(),
        );
        self.place(key)
    }

    /// Room for twice as many addresses' rows, the entries carried over:
    /// only if the fleet's SNAT addresses grew after the table was made
    /// (a reload).
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let (room, len) = (self.room as usize, self.len as usize);
        let mut entries = M::zeroed(4 * room * len);
        for proto in 0..2 {
            let (from, to) = (proto * room * len, proto * 2 * room * len);
            entries[to..to + room * len].copy_from_slice(&self.entries[from..from + room * len]);
        }
        self.entries = entries;
        self.room *= 2;
    }

    /// Forgets slot `id`, whose reverse key is `key`.
    fn remove(&mut self, key: &FlowKey, id: u32) {
        if let Some((row, port)) = self.place(key)
            && let Some(entry) = self.entry_mut(row, port)
            && *entry == id + 1
        {
            *entry = 0;
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
        (TCP, TcpState::SYN_SENT) => t.tcp_syn,
        (TCP, TcpState::ESTABLISHED | TcpState::CLIENT_CLOSED | TcpState::BACKEND_CLOSED) => {
            t.tcp_established
        }
        (TCP, _) => t.tcp_closing,
        (UDP, _) => t.udp,
        _ => t.icmp,
    }
}

/// The TCP state after a segment with `tcp_flags` going `direction`.
///
/// The client's acknowledgement (the third segment of the handshake, which
/// Linux's conntrack too waits for before it calls a connection assured)
/// makes a connection established, not the backend's answer; an RST from
/// either side closes it, and so does the second side's FIN; a client's
/// new SYN on a closing connection (the port reused) starts it over.
fn next_state(state: TcpState, direction: Direction, tcp_flags: u8) -> TcpState {
    const BACKEND_CLOSED: TcpState = TcpState::BACKEND_CLOSED;
    const CLIENT_CLOSED: TcpState = TcpState::CLIENT_CLOSED;
    const CLOSING: TcpState = TcpState::CLOSING;
    if tcp_flags & flags::RST != 0 {
        return CLOSING;
    }
    if tcp_flags & flags::FIN != 0 {
        return match (state, direction) {
            (BACKEND_CLOSED | CLOSING, Direction::Forward) => CLOSING,
            (CLIENT_CLOSED | CLOSING, Direction::Reply) => CLOSING,
            (_, Direction::Forward) => CLIENT_CLOSED,
            (_, Direction::Reply) => BACKEND_CLOSED,
        };
    }
    match (state, direction) {
        (CLOSING, Direction::Forward) if tcp_flags & flags::SYN != 0 => TcpState::SYN_SENT,
        (TcpState::SYN_SENT, Direction::Forward)
            if tcp_flags & (flags::SYN | flags::ACK) == flags::ACK =>
        {
            TcpState::ESTABLISHED
        }
        (state, _) => state,
    }
}

#[cfg(test)]
mod tests {
    use rialto_tables::{
        Endpoint, FlowContext, Proto, SnatPool,
        context::{ContextCluster, ContextService},
    };

    use super::*;
    use crate::pipeline::packet::mapped;

    proptest::proptest! {
        /// The index finds exactly the flows indexed and not removed, up to
        /// 40 of them in 7 buckets (chains of overflowing buckets), and the
        /// buckets' counts of entries gone past them come back to zero
        /// when everything is removed.
        #[test]
        fn the_index_finds_what_it_holds_through_overflowing_buckets(
            ops in proptest::collection::vec((proptest::prelude::any::<bool>(), 0u32..40), 0..300),
        ) {
            const SLOTS: usize = 40;
            let mut slots = vec![Slot::zeroed(); SLOTS];
            for (id, slot) in slots.iter_mut().enumerate() {
                slot.client_port = id as u16;
            }
            let names = names();
            let key = |id: u32| names.forward_key(&slots[id as usize]).expect("named");
            // Few tags (collisions to sort out by key) and homes.
            let hash = |id: u32| u64::from(id % 5) << 48 | u64::from(id % 3);
            let mut index = Index::<Box<[Slot]>>::new(SLOTS);
            let mut held = std::collections::BTreeSet::new();
            for (insert, id) in ops {
                if insert {
                    let added = index.insert_new(hash(id), id, &key(id), &slots, &names);
                    proptest::prop_assert_eq!(added, held.insert(id));
                } else if held.remove(&id) {
                    index.remove(hash(id), id);
                }
                proptest::prop_assert_eq!(index.len(), held.len());
                for probe in 0..SLOTS as u32 {
                    let found = index.get(hash(probe), &key(probe), &slots, &names);
                    proptest::prop_assert_eq!(found, held.contains(&probe).then_some(probe));
                }
            }
            for id in std::mem::take(&mut held) {
                index.remove(hash(id), id);
            }
            proptest::prop_assert!(index.buckets.iter().all(|b| b.passed == 0));
            proptest::prop_assert!(index.buckets.iter().all(|b| b.ids == [Bucket::EMPTY; 8]));
        }
    }

    fn table(capacity: usize, ports: (u16, u16)) -> Conntrack {
        let pool = SnatPool {
            v4: vec![[198, 18, 200, 1].into()],
            v6: vec![],
            ports,
        };
        Conntrack::new(
            capacity,
            SnatPorts::new(&pool, 0, 1),
            Timeouts::default(),
            names(),
        )
    }

    /// What the tests' flows are packed under: one service (198.18.100.1,
    /// port 80, TCP) of two backends (198.19.0.5, ports 8080 and 8081) in
    /// a cluster of VNI 100; the tables' SNAT address and a peer's
    /// (198.18.200.33).
    fn names() -> Names {
        let context = FlowContext {
            clusters: vec![ContextCluster {
                name: "east".into(),
                vni: 100,
                gateways: vec![[198, 18, 2, 1].into()],
            }],
            services: vec![ContextService {
                vip: Endpoint {
                    addr: [198, 18, 100, 1].into(),
                    port: 80,
                    proto: Proto::Tcp,
                },
                backends: vec![
                    (([198, 19, 0, 5], 8080).into(), 0),
                    (([198, 19, 0, 5], 8081).into(), 0),
                ],
            }],
        };
        Names::new(
            &context,
            &[[198, 18, 200, 1].into(), [198, 18, 200, 33].into()],
        )
    }

    fn key(src_port: u16) -> FlowKey {
        FlowKey {
            src: mapped([198, 18, 0, 2]),
            dst: mapped([198, 18, 100, 1]),
            src_port,
            dst_port: 80,
            proto: TCP,
            tunnel: UPLINK,
            pad: [0; 3],
        }
    }

    /// The flow from client port `src_port` to the names' first backend,
    /// on SNAT address `snat` and port `snat_port`.
    fn flow(src_port: u16, snat: Addr, snat_port: u16) -> Flow {
        Flow {
            forward: key(src_port),
            reverse: FlowKey {
                src: mapped([198, 19, 0, 5]),
                dst: snat,
                src_port: 8080,
                dst_port: snat_port,
                proto: TCP,
                tunnel: 100,
                pad: [0; 3],
            },
            client: Side::UPLINK,
            backend: Side::tunnel(0, 0),
            service: 0,
            backend_index: 0,
            hash: 0,
            sums: Sums::default(),
            state: TcpState::SYN_SENT,
            expires: 0,
        }
    }

    fn add(t: &mut Conntrack, src_port: u16, now: u32) -> Result<u32, InsertError> {
        t.insert(false, TCP, u64::from(src_port), now, |snat, snat_port| {
            flow(src_port, snat, snat_port)
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
        // Each key is found in its own index only.
        assert_eq!(
            t.lookup_in(&key(40000), 1, true, false),
            Some((id, Direction::Forward))
        );
        assert_eq!(t.lookup_in(&key(40000), 1, false, true), None);
        assert_eq!(
            t.lookup_in(&reverse, 1, false, true),
            Some((id, Direction::Reply))
        );
        assert_eq!(t.lookup_in(&reverse, 1, true, false), None);
        // A reply to the flow's SNAT port from elsewhere is not the flow's.
        let stranger = FlowKey {
            src_port: reverse.src_port + 1,
            ..reverse
        };
        assert_eq!(t.lookup(&stranger, 1), None);
        // The slot a batch reads ahead is the flow's, in the index asked:
        // a reply's by its SNAT port alone (no hash).
        let there = t.hash(&key(40000));
        let guess = |key: &FlowKey, hash, indexes| t.candidate(t.filed(key, hash, indexes));
        assert_eq!(guess(&key(40000), there, (true, false)), Some(id));
        assert_eq!(guess(&reverse, 0, (false, true)), Some(id));
        assert_eq!(guess(&stranger, 0, (false, true)), Some(id));
        assert_eq!(guess(&key(40000), there, (false, false)), None);
        assert_eq!(t.filed(&key(40000), there, (false, false)), Filed::Nowhere);
        // A reply to an address without rows is filed nowhere; a place the
        // index does not have names no slot.
        let elsewhere = FlowKey {
            dst: mapped([198, 18, 99, 1]),
            ..reverse
        };
        assert_eq!(t.filed(&elsewhere, 0, (false, true)), Filed::Nowhere);
        assert_eq!(t.candidate(Filed::Reply(u32::MAX, 0)), None);
        assert_eq!(t.candidate(Filed::Reply(0, u32::MAX)), None);
    }

    /// A batch's guess finds a flow whose home bucket was full when it came
    /// (its entry in the next bucket) as well as one in its home bucket.
    #[test]
    fn a_guess_looks_past_a_full_home_bucket() {
        let mut t = table(600, (1024, 2047));
        let ids: Vec<(u16, u32)> = (40000..40600)
            .map(|port| (port, add(&mut t, port, 0).unwrap()))
            .collect();
        let mut next = 0;
        for (port, id) in ids {
            let hash = t.hash(&key(port));
            let home = t.forward.home(hash);
            let holds = |b: usize| t.forward.buckets[b].ids.contains(&id);
            let guess = t.candidate(t.filed(&key(port), hash, (true, false)));
            if holds(home) {
                assert_eq!(guess, Some(id), "port {port}, in its home bucket");
            } else if holds(t.forward.next(home)) {
                assert_eq!(guess, Some(id), "port {port}, in the next bucket");
                next += 1;
            }
        }
        assert!(
            next > 0,
            "600 flows in 100 buckets: some home bucket overflows"
        );
    }

    /// The reply index made with room for one SNAT address's rows takes
    /// flows on five (a reload that added addresses): its rows grow, and
    /// every entry made before is still found, TCP and UDP apart.
    #[test]
    fn the_reply_index_grows_past_its_room_and_keeps_its_entries() {
        let mut replies = Replies::<Box<[Slot]>>::new(1024..2048, 1);
        let reverse = |addr: u8, proto, port| FlowKey {
            src: mapped([198, 18, 1, 1]),
            dst: mapped([198, 18, 200, addr]),
            src_port: 80,
            dst_port: port,
            proto,
            tunnel: UPLINK,
            pad: [0; 3],
        };
        let keys: Vec<FlowKey> = (1..=5)
            .flat_map(|addr| {
                [(TCP, 1024), (UDP, 1024), (TCP, 2047)].map(|(p, port)| reverse(addr, p, port))
            })
            .collect();
        for (id, key) in (0..).zip(&keys) {
            replies.insert(key, id);
        }
        assert!(
            replies.room >= 5,
            "room for five addresses: {}",
            replies.room
        );
        for (id, key) in (0..).zip(&keys) {
            assert_eq!(replies.holder(key), Some(id), "{key:?}");
        }
        assert_eq!(replies.holder(&reverse(6, TCP, 1024)), None);
        assert_eq!(replies.holder(&reverse(1, TCP, 1025)), None);
    }

    /// A lookup given the slot a batch read ahead takes it if it holds the
    /// flow, and searches the index as if it had none if it does not: the
    /// slot emptied, or holding another flow, since it was read.
    #[test]
    fn a_slot_read_ahead_is_compared_not_trusted() {
        let mut t = table(4, (1024, 1030));
        let (a, b) = (
            add(&mut t, 40000, 0).unwrap(),
            add(&mut t, 40001, 0).unwrap(),
        );
        let reverse = |t: &Conntrack, id| t.flow(id).reverse;
        let (a_back, b_back) = (reverse(&t, a), reverse(&t, b));
        let find = |t: &mut Conntrack, key: &FlowKey, indexes, guess| {
            let hash = if indexes == (true, false) {
                t.hash(key)
            } else {
                0
            };
            t.lookup_hashed(key, hash, 1, indexes, guess)
        };
        let there = (true, false);
        let back = (false, true);
        for (guess, found) in [(Some(a), a), (Some(b), a), (Some(99), a), (None, a)] {
            assert_eq!(
                find(&mut t, &key(40000), there, guess),
                Some((found, Direction::Forward))
            );
        }
        // No index to search: nothing found, whatever the guess.
        assert_eq!(find(&mut t, &key(40000), (false, false), Some(a)), None);
        assert_eq!(find(&mut t, &a_back, (false, false), Some(a)), None);
        // Another flow's forward key is no reply, whatever the guess.
        assert_eq!(find(&mut t, &key(40000), back, Some(a)), None);
        assert_eq!(
            find(&mut t, &a_back, back, Some(b)),
            Some((a, Direction::Reply))
        );
        assert_eq!(
            find(&mut t, &b_back, back, Some(b)),
            Some((b, Direction::Reply))
        );
        // Emptied since: its bytes are still there, and not taken.
        t.remove(a);
        assert_eq!(find(&mut t, &key(40000), there, Some(a)), None);
        assert_eq!(find(&mut t, &a_back, back, Some(a)), None);
        // Reused by another flow: the guess is that flow's, not the key's.
        let c = add(&mut t, 40002, 0).unwrap();
        assert_eq!(c, a, "the emptied slot is taken first");
        assert_eq!(find(&mut t, &key(40000), there, Some(c)), None);
        assert_eq!(
            find(&mut t, &key(40002), there, Some(c)),
            Some((c, Direction::Forward))
        );
        assert_eq!(
            find(&mut t, &key(40001), there, Some(c)),
            Some((b, Direction::Forward))
        );
    }

    #[test]
    fn timeouts_follow_the_tcp_state() {
        let mut t = table(4, (1024, 1030));
        let id = add(&mut t, 40000, 100).unwrap();
        assert_eq!(t.flow(id).expires, 100 + 30);
        t.touch(id, TCP, Direction::Reply, flags::SYN | flags::ACK, 101);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::SYN_SENT, 101 + 30),
            "answered, not yet acknowledged: a spoofed client never does"
        );
        t.touch(id, TCP, Direction::Forward, flags::SYN, 102);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::SYN_SENT, 102 + 30),
            "the SYN again"
        );
        t.touch(id, TCP, Direction::Forward, flags::ACK, 103);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::ESTABLISHED, 103 + 3600)
        );
        t.touch(id, TCP, Direction::Forward, flags::FIN | flags::ACK, 104);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::CLIENT_CLOSED, 104 + 3600),
            "half closed: the backend may still send"
        );
        t.touch(id, TCP, Direction::Reply, flags::FIN | flags::ACK, 104);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::CLOSING, 104 + 30)
        );
        assert_eq!(t.lookup(&key(40000), 134), Some((id, Direction::Forward)));
        assert_eq!(t.lookup(&key(40000), 135), None, "expired on lookup");
        assert_eq!(t.stats().expired, 1);
        assert_eq!(t.stats().live, 0);
    }

    /// A half-closed connection that still sends the other way is not
    /// expired by the closing timeout; an RST closes it whatever came before.
    #[test]
    fn closing_is_tracked_per_direction() {
        let mut t = table(4, (1024, 1030));
        let id = add(&mut t, 40000, 0).unwrap();
        t.touch(id, TCP, Direction::Reply, flags::SYN | flags::ACK, 0);
        t.touch(id, TCP, Direction::Reply, flags::FIN | flags::ACK, 10);
        assert_eq!(t.flow(id).state, TcpState::BACKEND_CLOSED);
        // The client goes on uploading for longer than the closing timeout.
        for now in (20..200).step_by(20) {
            t.touch(id, TCP, Direction::Forward, flags::ACK, now);
            t.sweep(now, 8);
            assert_eq!(
                t.lookup(&key(40000), now),
                Some((id, Direction::Forward)),
                "at {now} s"
            );
        }
        t.touch(id, TCP, Direction::Forward, flags::FIN | flags::ACK, 200);
        assert_eq!(
            (t.flow(id).state, t.flow(id).expires),
            (TcpState::CLOSING, 230)
        );
        let other = add(&mut t, 40001, 0).unwrap();
        t.touch(other, TCP, Direction::Forward, flags::RST, 5);
        assert_eq!(
            (t.flow(other).state, t.flow(other).expires),
            (TcpState::CLOSING, 35)
        );
        // A new SYN on the closed port starts the connection over.
        t.touch(other, TCP, Direction::Forward, flags::SYN, 6);
        assert_eq!(t.flow(other).state, TcpState::SYN_SENT);
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

    /// A flow restored (or adopted) gets its sums worked out again from
    /// its keys, whatever it came with: a state file or a peer of the
    /// previous layout had hash bits there.
    #[test]
    fn sums_are_worked_out_not_taken() {
        let mut t = table(4, (1024, 1030));
        let id = add(&mut t, 40000, 0).unwrap();
        let flow = t.flow(id);
        assert_ne!(flow.sums, Sums::default());
        let mut fresh = table(4, (1024, 1030));
        let garbled = Flow {
            sums: Sums {
                addrs: !flow.sums.addrs,
                ports: !flow.sums.ports,
            },
            ..flow
        };
        assert_eq!(fresh.restore([garbled], 0).restored, 1);
        let (_, back) = fresh.iter().next().expect("the flow restored");
        assert_eq!(back.sums, flow.sums);
    }

    /// Keys are equal when all their bytes are, and hash the same then: a
    /// key that differs from another in any one byte is another key.
    #[test]
    fn keys_compare_every_byte() {
        let t = table(4, (1024, 1030));
        let (a, same) = (key(40000), key(40000));
        assert_eq!(a, same);
        assert_eq!(t.hash(&a), t.hash(&same));
        for at in 0..size_of::<FlowKey>() {
            let mut b = a;
            bytemuck::bytes_of_mut(&mut b)[at] ^= 0x10;
            assert_ne!(a, b, "byte {at}");
        }
    }

    /// What a writer stopped part way leaves is seen for what it is.
    #[test]
    fn slots_read_back_are_checked() {
        let mut t = table(4, (1024, 1030));
        let id = add(&mut t, 40000, 0).unwrap();
        let live = t.slots[id as usize];
        assert_eq!(live.slot_state(), SlotState::Live);
        assert_eq!(Slot::zeroed().slot_state(), SlotState::Empty);
        let torn = Slot {
            mark: Slot::WRITING,
            ..live
        };
        assert_eq!(torn.slot_state(), SlotState::Torn);
        let mut flipped = live;
        flipped.backend ^= 1;
        assert_eq!(flipped.slot_state(), SlotState::Corrupt, "a checked field");
        let mut state = live;
        state.state = 9;
        assert_eq!(state.slot_state(), SlotState::Corrupt, "no such TCP state");
        let mut touched = live;
        touched.expires += 100;
        assert_eq!(
            touched.slot_state(),
            SlotState::Live,
            "expiry is not checked"
        );
        let next = Slot {
            mark: Slot::LIVE | 1,
            ..live
        };
        assert_eq!(
            (next.slot_state(), live.generation(), next.generation()),
            (SlotState::Live, 0, 1),
            "live, of either generation"
        );
        let mark = Slot { mark: 7, ..live };
        assert_eq!(mark.slot_state(), SlotState::Corrupt);
    }

    /// A flow the names do not name is not made, and makes no room: a full
    /// table keeps its flows, and the SNAT port goes back.
    #[test]
    fn a_flow_the_names_do_not_name_is_refused_before_any_eviction() {
        let mut t = table(1, (1024, 1030));
        let id = add(&mut t, 40000, 0).unwrap();
        let free = |t: &Conntrack| t.snat().free().map(|(_, _, n)| n).sum::<usize>();
        let before = free(&t);
        let unnamed = t.insert(false, TCP, 1, 0, |snat, snat_port| Flow {
            service: 5,
            ..flow(40001, snat, snat_port)
        });
        assert_eq!(unnamed, Err(InsertError::Unnamed));
        assert_eq!((t.stats().evicted, t.stats().live), (0, 1));
        assert_eq!(t.lookup(&key(40000), 0), Some((id, Direction::Forward)));
        assert_eq!(free(&t), before, "the port went back");
    }

    /// Flows kept from before go back as they were, their ports held; what
    /// cannot is counted by reason.
    #[test]
    fn restore_puts_flows_back_with_their_ports() {
        let mut before = table(8, (1024, 1027));
        for port in [1, 2, 3] {
            add(&mut before, port, 0).unwrap();
        }
        let id = before.lookup(&key(2), 0).unwrap().0;
        before.touch(id, TCP, Direction::Reply, flags::SYN | flags::ACK, 10);
        let flows: Vec<Flow> = before.iter().map(|(_, f)| f).collect();
        let mut outside = flows[0];
        outside.reverse.dst_port = 2000;
        outside.forward.src_port = 9;
        outside.expires = 100;
        let mut after = table(3, (1024, 1027));
        // Flow 1 and 3 (SYN sent, 30 s) have expired at 35; flow 2 has not.
        let mut kept = flows.clone();
        kept.push(flows[1]);
        kept.push(outside);
        let done = after.restore(kept, 35);
        assert_eq!(
            done,
            Restored {
                restored: 1,
                expired: 2,
                no_port: 1,
                duplicate: 1,
                full: 0,
                unnamed: 0,
            }
        );
        let (id, _) = after.lookup(&key(2), 35).expect("flow 2 is back");
        assert_eq!(after.flow(id), flows[1], "as it was");
        let (_, proto, free) = after.snat().free().find(|(_, p, _)| *p == TCP).unwrap();
        assert_eq!((proto, free), (TCP, 3), "its port is held");
        let fresh = add(&mut after, 50, 35).unwrap();
        assert_ne!(
            after.flow(fresh).reverse.dst_port,
            flows[1].reverse.dst_port
        );
        let mut full = table(1, (1024, 1027));
        let done = full.restore(flows.iter().map(|f| Flow { expires: 100, ..*f }), 35);
        assert_eq!((done.restored, done.full), (1, 2));
    }

    /// A peer's flow: the same as one of [`add`], on the peer's SNAT
    /// address 198.18.200.33.
    fn replica(kind: u32, src_port: u16, snat_port: u16, remaining: u32) -> Replica {
        let mut t = table(1, (snat_port, snat_port));
        let id = add(&mut t, src_port, 0).unwrap();
        let mut flow = t.flow(id);
        flow.reverse.dst = mapped([198, 18, 200, 33]);
        Replica {
            kind,
            remaining,
            flow,
            ..Replica::control(kind, 0)
        }
    }

    #[test]
    fn a_peers_flow_is_adopted_updated_replaced_and_closed() {
        let mut t = table(4, (1024, 1030));
        let up = replica(Replica::UP, 40000, 5000, 30);
        assert_eq!(t.adopt(&up, 10), Adopted::Added);
        let (id, _) = t.lookup(&key(40000), 11).expect("found by its forward key");
        assert_eq!(t.flow(id).expires, 40, "expires like a local flow");
        assert!(!t.is_own(id));
        assert_eq!(t.lookup(&up.flow.reverse, 11), Some((id, Direction::Reply)));
        // An update of the same flow.
        let later = Replica {
            remaining: 3600,
            ..up
        };
        assert_eq!(t.adopt(&later, 12), Adopted::Updated);
        assert_eq!(t.flow(id).expires, 3612);
        // Its owner reused the port for another connection: the old one goes.
        let reused = replica(Replica::UP, 40001, 5000, 30);
        assert_eq!(t.adopt(&reused, 13), Adopted::Added);
        assert_eq!(t.lookup(&key(40000), 13), None);
        assert!(t.lookup(&key(40001), 13).is_some());
        // Closed early.
        let down = Replica {
            kind: Replica::DOWN,
            ..reused
        };
        assert_eq!(t.adopt(&down, 14), Adopted::Removed);
        assert_eq!(t.lookup(&key(40001), 14), None);
        assert_eq!(t.adopt(&down, 14), Adopted::Ignored);
        // A SNAT port is one flow's at a time, whatever its backend: the
        // flow there before goes.
        assert_eq!(t.adopt(&up, 14), Adopted::Added);
        let mut elsewhere = replica(Replica::UP, 40003, 5000, 30);
        elsewhere.flow.reverse.src_port += 1;
        elsewhere.flow.backend_index = 1;
        assert_eq!(t.adopt(&elsewhere, 14), Adopted::Added);
        assert_eq!(t.lookup(&key(40000), 14), None);
        assert_eq!(t.lookup(&up.flow.reverse, 14), None);
        let (id, _) = t.lookup(&elsewhere.flow.reverse, 14).expect("by its reply");
        assert_eq!(t.flow(id).forward, key(40003));
        assert_eq!(
            t.adopt(
                &Replica {
                    kind: Replica::DOWN,
                    ..elsewhere
                },
                14
            ),
            Adopted::Removed
        );
        // A flow on this table's own address is its own to speak for; no
        // SNAT port of its own was taken by the peers' flows.
        let mut own = replica(Replica::UP, 40002, 1024, 30);
        own.flow.reverse.dst = mapped([198, 18, 200, 1]);
        assert_eq!(t.adopt(&own, 15), Adopted::Own);
        assert_eq!(t.stats().live, 0);
        assert_eq!(t.snat().free().map(|(_, _, n)| n).sum::<usize>(), 14);
    }

    /// A peer's flow whose replies go to another worker's port is that
    /// worker's to adopt: this one's index of the replies has no entry for
    /// it, so it is refused, and nothing changes.
    #[test]
    fn a_peers_flow_on_another_workers_port_is_not_adopted() {
        let pool = SnatPool {
            v4: vec![[198, 18, 200, 1].into()],
            v6: vec![],
            ports: (1024, 1031),
        };
        let snat = SnatPorts::new(&pool, 0, 2);
        let mut t = Conntrack::new(4, snat, Timeouts::default(), names());
        let theirs = replica(Replica::UP, 40000, 1030, 30);
        assert_eq!(t.snat().owner(1030), 1);
        assert_eq!(t.adopt(&theirs, 10), Adopted::NotHere);
        assert_eq!(t.stats().live, 0);
        let ours = replica(Replica::UP, 40000, 1025, 30);
        assert_eq!(t.adopt(&ours, 10), Adopted::Added);
        let reply = ours.flow.reverse;
        assert_eq!(t.lookup(&reply, 10).map(|(_, d)| d), Some(Direction::Reply));
    }

    #[test]
    fn a_burst_notes_every_live_flow_and_the_refresh_a_share_of_its_own() {
        let mut t = table(64, (1024, 1100));
        for port in 0..10 {
            add(&mut t, 40000 + port, 0).unwrap();
        }
        assert_eq!(
            t.adopt(&replica(Replica::UP, 50000, 5000, 60), 0),
            Adopted::Added
        );
        let mut changes = Changes::new();
        // A quarter of the period: about a quarter of the slots.
        t.refresh(&mut changes, u64::from(REFRESH_SECONDS) * 1_000_000_000 / 4);
        let noted = changes.drain().count();
        assert!((1..=3).contains(&noted), "{noted}");
        changes.start_burst(t.used());
        t.refresh(&mut changes, 2_000_000_000);
        assert!(changes.burst_ended());
        let burst: Vec<Replica> = changes.drain().collect();
        assert_eq!(burst.len(), 11, "own and adopted flows");
        assert!(burst.iter().all(|r| r.kind == Replica::UP));
    }
}
