//! The receiving side: datagrams from peers in, records in sequence order
//! out, Nacks for what is missing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::{self, Datagram, Kind, OVERHEAD, RANGE_LEN};
use crate::{ConfigError, Key, Reject, RejectCounts};

/// How many replaced epochs a receiver remembers per peer, to reject their
/// datagrams as [`Reject::Stale`].
pub const REPLACED_EPOCHS: usize = 16;

/// Another node of the fleet, whose flows this node receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The peer's node id, as it writes it in its datagrams.
    pub id: u16,
    /// The address its datagrams come from, and where Nacks go.
    pub addr: SocketAddr,
}

/// Where a receiver stands with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Never heard from, or its table must be pulled again (a gap was given
    /// up on) and [`Receiver::resynced`] has not been called since.
    Syncing,
    /// Everything the peer sent has been delivered, or is being repaired.
    InSync,
    /// Nothing authentic heard from the peer for [`Limits::lost_after`]
    /// (as of the last [`Receiver::poll`]).
    Lost,
}

/// The bounds and timers of a [`Receiver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Updates datagrams buffered per peer while waiting for a gap to be
    /// filled. When it overflows, the oldest gap is given up.
    pub reorder: usize,
    /// Gap ranges tracked per peer. Beyond, the oldest gap is given up.
    pub max_gaps: usize,
    /// Time between two Nacks of the same gap.
    pub nack_after: Duration,
    /// Nacks sent for a gap (the first at once) before it is given up.
    pub nack_tries: u32,
    /// Silence after which a peer is [`PeerState::Lost`].
    pub lost_after: Duration,
    /// Largest accepted distance between a sequence number and the last one
    /// delivered; beyond is [`Reject::TooFarAhead`].
    pub max_ahead: u64,
    /// Largest datagram this receiver makes (Nacks).
    pub max_datagram: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            reorder: 64,
            max_gaps: 32,
            nack_after: Duration::from_millis(20),
            nack_tries: 5,
            lost_after: Duration::from_secs(1),
            max_ahead: 1 << 20,
            max_datagram: wire::DEFAULT_MAX_DATAGRAM,
        }
    }
}

/// What a datagram (or a [`Receiver::poll`]) yields for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The peer's node id.
    pub peer: u16,
    /// A datagram to send back to the peer (a Nack), if any.
    pub reply: Option<Vec<u8>>,
    /// The peer's table must be pulled by other means, then
    /// [`Receiver::resynced`] called: records were lost for good. The
    /// records of this delivery still apply (they are newer than the loss).
    pub need_resync: bool,
    /// The peer restarted (a new epoch). Its sequence state was reset; the
    /// new epoch's records are requested from 1 on, so nothing of it is lost
    /// unless `need_resync` says so. What the peer's previous run sent is
    /// for the caller to judge.
    pub restarted: bool,
    record_len: usize,
    records: Vec<u8>,
}

impl Delivery {
    fn new(peer: u16, record_len: usize) -> Delivery {
        Delivery {
            peer,
            reply: None,
            need_resync: false,
            restarted: false,
            record_len,
            records: Vec::new(),
        }
    }

    /// The records to apply, in the order the peer sent them.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.records.chunks_exact(self.record_len)
    }

    /// How many records there are.
    pub fn record_count(&self) -> usize {
        self.records.len() / self.record_len
    }

    /// Whether there is nothing at all to act on.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.reply.is_none() && !self.need_resync && !self.restarted
    }
}

/// What a [`Receiver::poll`] yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Polled {
    /// Nacks to send, each to its peer's address.
    pub send: Vec<(SocketAddr, Vec<u8>)>,
    /// For each peer with something to report: records delivered past a
    /// gap given up on, resync needed, restart not yet reported. Their
    /// `reply` is `None`: Nacks are in `send`.
    pub deliveries: Vec<Delivery>,
}

/// Counters and state of one peer, from [`Receiver::peers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    /// Where the receiver stands with the peer.
    pub state: PeerState,
    /// The peer's current epoch, if it was ever heard from.
    pub epoch: Option<u64>,
    /// The last sequence number delivered in order (or given up on).
    pub delivered: u64,
    /// The highest sequence number known to have been sent.
    pub highest: u64,
    /// Datagrams accepted.
    pub datagrams: u64,
    /// Records received in accepted Updates.
    pub records: u64,
    /// Sequence numbers found missing.
    pub lost: u64,
    /// Missing sequence numbers received later.
    pub repaired: u64,
    /// Missing sequence numbers given up on.
    pub given_up: u64,
    /// Nack datagrams sent.
    pub nacks_sent: u64,
    /// Times the peer came to need a resync (first contact included).
    pub resyncs_needed: u64,
    /// Times the peer restarted (new epoch).
    pub restarts: u64,
    /// Updates datagrams buffered now.
    pub buffered: usize,
    /// Gap ranges open now.
    pub gaps: usize,
    /// Datagrams from the peer's address refused, by reason.
    pub rejected: RejectCounts,
}

/// A range of missing sequence numbers and its Nack schedule.
#[derive(Debug, Clone, Copy)]
struct Gap {
    first: u64,
    last: u64,
    /// Nacks sent for it.
    tries: u32,
    /// When to Nack it again (or give it up).
    due: Instant,
}

/// The sequence state of one peer.
///
/// Invariant: the sequence numbers in `delivered + 1 ..= highest` are
/// exactly those of the `gaps` and of the `buffer`, which are disjoint;
/// `gaps` are sorted; `delivered + 1` is not buffered (when `delivered <
/// highest`, it begins the first gap).
#[derive(Debug)]
struct PeerSync {
    peer: Peer,
    epoch: Option<u64>,
    /// Replaced epochs, oldest first, at most `REPLACED_EPOCHS`.
    replaced: VecDeque<u64>,
    delivered: u64,
    highest: u64,
    /// Out-of-order Updates bodies by sequence number.
    buffer: BTreeMap<u64, Vec<u8>>,
    gaps: Vec<Gap>,
    needs_resync: bool,
    /// `need_resync` not yet reported in a `Delivery`.
    report_resync: bool,
    /// `restarted` not yet reported in a `Delivery`.
    report_restart: bool,
    last_heard: Option<Instant>,
    lost_peer: bool,
    stats: PeerStats,
}

impl PeerSync {
    fn new(peer: Peer) -> PeerSync {
        PeerSync {
            peer,
            epoch: None,
            replaced: VecDeque::new(),
            delivered: 0,
            highest: 0,
            buffer: BTreeMap::new(),
            gaps: Vec::new(),
            needs_resync: true,
            report_resync: false,
            report_restart: false,
            last_heard: None,
            lost_peer: false,
            stats: PeerStats {
                state: PeerState::Syncing,
                epoch: None,
                delivered: 0,
                highest: 0,
                datagrams: 0,
                records: 0,
                lost: 0,
                repaired: 0,
                given_up: 0,
                nacks_sent: 0,
                resyncs_needed: 0,
                restarts: 0,
                buffered: 0,
                gaps: 0,
                rejected: RejectCounts::default(),
            },
        }
    }

    fn stats(&self) -> PeerStats {
        let state = if self.lost_peer {
            PeerState::Lost
        } else if self.epoch.is_none() || self.needs_resync {
            PeerState::Syncing
        } else {
            PeerState::InSync
        };
        PeerStats {
            state,
            epoch: self.epoch,
            delivered: self.delivered,
            highest: self.highest,
            buffered: self.buffer.len(),
            gaps: self.gaps.len(),
            ..self.stats
        }
    }

    fn need_resync(&mut self) {
        if !self.needs_resync {
            self.needs_resync = true;
            self.stats.resyncs_needed += 1;
        }
        self.report_resync = true;
    }

    /// Forgets the sequence state: the next sequence number expected is
    /// `delivered + 1`.
    fn reset(&mut self, delivered: u64) {
        self.delivered = delivered;
        self.highest = delivered;
        self.buffer.clear();
        self.gaps.clear();
    }

    /// Moves the undelivered buffered bodies that follow `delivered` to
    /// `out`.
    fn drain(&mut self, out: &mut Vec<u8>) {
        while let Some(entry) = self.buffer.first_entry() {
            if Some(*entry.key()) != self.delivered.checked_add(1) {
                break;
            }
            out.extend_from_slice(&entry.remove());
            self.delivered += 1;
        }
    }

    /// Gives up on every missing sequence number up to `to` (at most
    /// `highest`): delivers what is buffered up to there and after, and
    /// marks the peer as needing a resync.
    fn give_up_to(&mut self, to: u64, out: &mut Vec<u8>) {
        let to = to.min(self.highest);
        if to <= self.delivered {
            return;
        }
        while let Some(entry) = self.buffer.first_entry() {
            if *entry.key() > to {
                break;
            }
            out.extend_from_slice(&entry.remove());
        }
        let mut given_up = 0;
        self.gaps.retain_mut(|gap| {
            if gap.last <= to {
                given_up += gap.last - gap.first + 1;
                false
            } else {
                if gap.first <= to {
                    given_up += to - gap.first + 1;
                    gap.first = to + 1;
                }
                true
            }
        });
        self.stats.given_up += given_up;
        self.delivered = to;
        self.drain(out);
        self.need_resync();
    }

    /// Gives up on the first gap. False if there is none.
    fn give_up_first_gap(&mut self, out: &mut Vec<u8>) -> bool {
        match self.gaps.first() {
            Some(gap) => {
                let last = gap.last;
                self.give_up_to(last, out);
                true
            }
            None => false,
        }
    }

    /// Opens a gap `first..=last` past `highest`, to be Nacked at once.
    fn open_gap(&mut self, first: u64, last: u64, now: Instant, limits: &Limits) {
        self.stats.lost += last - first + 1;
        self.gaps.push(Gap {
            first,
            last,
            tries: 1,
            due: now.checked_add(limits.nack_after).unwrap_or(now),
        });
        self.highest = last;
    }

    /// Takes an Updates body with a sequence number past `delivered`, not
    /// buffered, at most `max_ahead` ahead. Returns the gap it opened.
    fn accept(
        &mut self,
        seq: u64,
        body: &[u8],
        now: Instant,
        limits: &Limits,
        out: &mut Vec<u8>,
    ) -> Option<(u64, u64)> {
        let mut opened = None;
        if seq > self.highest {
            if seq > self.highest + 1 {
                let gap = (self.highest + 1, seq - 1);
                self.open_gap(gap.0, gap.1, now, limits);
                opened = Some(gap);
            }
            self.highest = seq;
        } else if let Some(i) = self
            .gaps
            .iter()
            .position(|gap| gap.first <= seq && seq <= gap.last)
        {
            self.stats.repaired += 1;
            let gap = self.gaps[i];
            match (seq == gap.first, seq == gap.last) {
                (true, true) => {
                    self.gaps.remove(i);
                }
                (true, false) => self.gaps[i].first += 1,
                (false, true) => self.gaps[i].last -= 1,
                (false, false) => {
                    self.gaps[i].last = seq - 1;
                    self.gaps.insert(
                        i + 1,
                        Gap {
                            first: seq + 1,
                            ..gap
                        },
                    );
                }
            }
        }
        if seq == self.delivered + 1 {
            out.extend_from_slice(body);
            self.delivered = seq;
            self.drain(out);
        } else {
            self.buffer.insert(seq, body.to_vec());
        }
        opened
    }

    /// Gives up gaps until the buffer and the gap list are within bounds.
    fn enforce(&mut self, limits: &Limits, out: &mut Vec<u8>) {
        while self.buffer.len() > limits.reorder || self.gaps.len() > limits.max_gaps {
            if !self.give_up_first_gap(out) {
                break;
            }
        }
    }

    /// The datagram's effect on this peer's state. On error, the state is
    /// unchanged except where [`Reject`] says.
    fn take(
        &mut self,
        d: &Datagram<'_>,
        now: Instant,
        limits: &Limits,
        delivery: &mut Delivery,
    ) -> Result<Option<(u64, u64)>, Reject> {
        if d.kind == Kind::Nack {
            return Err(Reject::Malformed);
        }
        if d.node != self.peer.id {
            return Err(Reject::NotPeer);
        }
        if d.kind == Kind::Updates && d.seq == 0 {
            return Err(Reject::Malformed);
        }
        if self.epoch != Some(d.epoch) {
            if self.replaced.contains(&d.epoch) || d.kind == Kind::Gone {
                return Err(Reject::Stale);
            }
            match self.epoch.replace(d.epoch) {
                None => {
                    // First contact: start at this datagram; the peer's
                    // table has to be pulled.
                    let base = match d.kind {
                        Kind::Updates => d.seq - 1,
                        _ => d.seq,
                    };
                    self.reset(base);
                    self.needs_resync = true;
                    self.report_resync = true;
                    self.stats.resyncs_needed += 1;
                }
                Some(old) => {
                    // A restart: the new epoch numbers from 1.
                    if self.replaced.len() == REPLACED_EPOCHS {
                        self.replaced.pop_front();
                    }
                    self.replaced.push_back(old);
                    self.reset(0);
                    self.report_restart = true;
                    self.stats.restarts += 1;
                }
            }
        }
        if d.kind == Kind::Updates && (d.seq <= self.delivered || self.buffer.contains_key(&d.seq))
        {
            return Err(Reject::Replayed);
        }
        self.last_heard = Some(now);
        self.lost_peer = false;
        // (A Gone's sequence number is only informational.)
        if d.kind != Kind::Gone && d.seq.saturating_sub(self.delivered) > limits.max_ahead {
            self.reset(d.seq);
            self.need_resync();
            return Err(Reject::TooFarAhead);
        }
        self.stats.datagrams += 1;
        let out = &mut delivery.records;
        let opened = match d.kind {
            Kind::Updates => {
                self.stats.records += u64::from(d.count);
                self.accept(d.seq, d.body, now, limits, out)
            }
            Kind::Heartbeat if d.seq > self.highest => {
                let gap = (self.highest + 1, d.seq);
                self.open_gap(gap.0, gap.1, now, limits);
                Some(gap)
            }
            Kind::Gone => {
                if let Some((_, last)) = d.ranges().next() {
                    self.give_up_to(last, out);
                }
                None
            }
            Kind::Heartbeat | Kind::Nack => None,
        };
        self.enforce(limits, out);
        // Whatever of the new gap is still open.
        Ok(opened
            .filter(|&(_, last)| last > self.delivered)
            .map(|(first, last)| (first.max(self.delivered + 1), last)))
    }

    /// Moves the pending reports into `delivery`.
    fn report(&mut self, delivery: &mut Delivery) {
        delivery.need_resync |= std::mem::take(&mut self.report_resync);
        delivery.restarted |= std::mem::take(&mut self.report_restart);
    }
}

/// The receiving side of one node: takes the datagrams of its peers and
/// delivers each peer's records in the order the peer sent them, Nacking
/// what is missing.
///
/// Feed it every datagram that is not a Nack ([`wire::peek_kind`]) with
/// [`Receiver::handle`], and call [`Receiver::poll`] every few milliseconds
/// (at least every [`Limits::nack_after`]).
#[derive(Debug)]
pub struct Receiver {
    node: u16,
    key: Key,
    record_len: usize,
    limits: Limits,
    /// Ranges that fit in one Nack.
    ranges_per_nack: usize,
    peers: Vec<PeerSync>,
    by_addr: HashMap<SocketAddr, usize>,
    by_id: HashMap<u16, usize>,
    not_peer: u64,
}

impl Receiver {
    /// A receiver for node `node` (the id written in its Nacks), taking the
    /// datagrams of `peers`, whose records are `record_len` bytes.
    pub fn new(
        node: u16,
        peers: Vec<Peer>,
        key: Key,
        record_len: usize,
        limits: Limits,
    ) -> Result<Receiver, ConfigError> {
        if record_len == 0 {
            return Err(ConfigError::ZeroRecordLen);
        }
        for (value, name) in [
            (limits.max_gaps as u64, "max_gaps"),
            (u64::from(limits.nack_tries), "nack_tries"),
            (limits.max_ahead, "max_ahead"),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        let ranges_per_nack =
            (limits.max_datagram.saturating_sub(OVERHEAD) / RANGE_LEN).min(usize::from(u16::MAX));
        if ranges_per_nack == 0 {
            return Err(ConfigError::DatagramTooSmall {
                max_datagram: limits.max_datagram,
                item: "range",
                item_len: RANGE_LEN,
            });
        }
        let mut by_addr = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, peer) in peers.iter().enumerate() {
            if peer.id == node {
                return Err(ConfigError::SelfPeer(peer.id));
            }
            if by_addr.insert(peer.addr, i).is_some() || by_id.insert(peer.id, i).is_some() {
                return Err(ConfigError::DuplicatePeer(peer.id));
            }
        }
        Ok(Receiver {
            node,
            key,
            record_len,
            limits,
            ranges_per_nack,
            peers: peers.into_iter().map(PeerSync::new).collect(),
            by_addr,
            by_id,
            not_peer: 0,
        })
    }

    /// Handles a datagram that came from `from` at `now`. On success, the
    /// records to apply (possibly none), in order, a Nack to send back to
    /// `from` and what else there is to know about the peer. A refused
    /// datagram is counted against the peer at `from` (or in
    /// [`Receiver::not_peer`]) and changes nothing else, except where the
    /// [`Reject`] variant says.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<Delivery, Reject> {
        let Some(&i) = self.by_addr.get(&from) else {
            self.not_peer += 1;
            return Err(Reject::NotPeer);
        };
        let peer = &mut self.peers[i];
        let mut delivery = Delivery::new(peer.peer.id, self.record_len);
        let taken = wire::open(bytes, &self.key, self.record_len)
            .and_then(|d| peer.take(&d, now, &self.limits, &mut delivery));
        match taken {
            Ok(gap) => {
                if let Some((first, last)) = gap {
                    delivery.reply = Some(self.nack(i, &[(first, last)]));
                    self.peers[i].stats.nacks_sent += 1;
                }
                self.peers[i].report(&mut delivery);
                Ok(delivery)
            }
            Err(reason) => {
                self.peers[i].stats.rejected.count(reason);
                Err(reason)
            }
        }
    }

    /// Does what is due at `now`: Nacks again the gaps whose time has come,
    /// gives up those Nacked [`Limits::nack_tries`] times (delivering what
    /// was buffered past them), marks silent peers as lost, and reports
    /// what [`Receiver::handle`] could not (a resync needed after a
    /// [`Reject::TooFarAhead`]).
    pub fn poll(&mut self, now: Instant) -> Polled {
        let mut polled = Polled::default();
        for i in 0..self.peers.len() {
            let limits = self.limits;
            let peer = &mut self.peers[i];
            if let Some(heard) = peer.last_heard
                && now.saturating_duration_since(heard) >= limits.lost_after
            {
                peer.lost_peer = true;
            }
            let mut delivery = Delivery::new(peer.peer.id, self.record_len);
            let expired = peer
                .gaps
                .iter()
                .filter(|gap| gap.due <= now && gap.tries >= limits.nack_tries)
                .map(|gap| gap.last)
                .max();
            if let Some(last) = expired {
                peer.give_up_to(last, &mut delivery.records);
            }
            let mut ranges = Vec::new();
            for gap in &mut peer.gaps {
                if gap.due <= now {
                    gap.tries += 1;
                    gap.due = now.checked_add(limits.nack_after).unwrap_or(now);
                    ranges.push((gap.first, gap.last));
                }
            }
            peer.report(&mut delivery);
            let addr = peer.peer.addr;
            for chunk in ranges.chunks(self.ranges_per_nack) {
                let nack = self.nack(i, chunk);
                polled.send.push((addr, nack));
                self.peers[i].stats.nacks_sent += 1;
            }
            if !delivery.is_empty() {
                polled.deliveries.push(delivery);
            }
        }
        polled
    }

    /// The caller has pulled the whole table of peer `peer_id`: it is in
    /// sync again. Gaps still open stay open and are still repaired (if one
    /// is given up, another resync is needed), so that nothing sent while
    /// the table was being pulled is lost unnoticed. False if `peer_id` is
    /// not a configured peer.
    pub fn resynced(&mut self, peer_id: u16) -> bool {
        let Some(&i) = self.by_id.get(&peer_id) else {
            return false;
        };
        let peer = &mut self.peers[i];
        peer.needs_resync = false;
        peer.report_resync = false;
        true
    }

    /// Each configured peer with its counters and state.
    pub fn peers(&self) -> impl Iterator<Item = (Peer, PeerStats)> + '_ {
        self.peers.iter().map(|p| (p.peer, p.stats()))
    }

    /// The counters and state of peer `peer_id`, if configured.
    pub fn peer(&self, peer_id: u16) -> Option<PeerStats> {
        let &i = self.by_id.get(&peer_id)?;
        Some(self.peers[i].stats())
    }

    /// Datagrams refused because their source address is not a peer's.
    pub fn not_peer(&self) -> u64 {
        self.not_peer
    }

    /// This node's id.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// A Nack of `ranges` (at most `ranges_per_nack`) to peer `i`.
    fn nack(&self, i: usize, ranges: &[(u64, u64)]) -> Vec<u8> {
        let peer = &self.peers[i];
        let mut buf = wire::start(
            Kind::Nack,
            self.node,
            peer.epoch.unwrap_or(0),
            peer.delivered,
            u16::try_from(ranges.len()).unwrap_or(u16::MAX),
            ranges.len() * RANGE_LEN,
        );
        for &(first, last) in ranges {
            wire::push_range(&mut buf, first, last);
        }
        wire::seal(buf, &self.key)
    }
}
