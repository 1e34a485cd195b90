//! Flows shared across a fleet of border nodes: what a balancer tells its
//! peers about its own flows, and how it takes in theirs.
//!
//! A node speaks only for the flows on its own SNAT addresses (it made
//! them): when it makes one, when a TCP connection changes state, when it
//! closes one early, and every [`REFRESH_SECONDS`] while one lives (so a
//! peer's copy, which expires like a local flow, outlives it no sooner).
//! Each such change is a [`Replica`], put in a bounded buffer during the
//! batch ([`Changes`]) that the worker empties after it: nothing is
//! allocated per packet, and what does not fit is counted, not kept. A
//! peer's flows go into the same table as the node's own
//! ([`Conntrack::adopt`](super::conntrack::Conntrack::adopt)), so a packet
//! of a connection another node made finds it like any other.

use bytemuck::{Pod, Zeroable};

use super::conntrack::Flow;

/// How often a node tells its peers again about each flow it holds.
pub const REFRESH_SECONDS: u32 = 20;

/// What one batch may tell its peers at most; beyond, changes are counted
/// in [`Changes::overflow`] and lost (the refresh makes up for them).
pub const CHANGES_PER_BATCH: usize = 1024;

/// One change of a flow, as it goes to the peers: plain bytes, in the
/// machine's order (a fleet's nodes are alike).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Replica {
    /// [`Replica::UP`] or [`Replica::DOWN`].
    pub kind: u32,
    /// Seconds the flow has left.
    pub remaining: u32,
    /// The id of the flow context its indices refer to (set by the worker
    /// that sends it).
    pub context: u32,
    /// For [`Replica::PULL`] and [`Replica::SYNCED`], the node it is for
    /// (0: every node); zero otherwise.
    pub node: u32,
    /// When the owner's worker handed the change to its syncer
    /// (`CLOCK_REALTIME`, nanoseconds; 0 if unknown): a peer measures the
    /// replication delay from it.
    pub noted_ns: u64,
    /// Zero for [`Replica::PULL`] and [`Replica::SYNCED`].
    pub flow: Flow,
}

impl Replica {
    /// The flow lives, as given.
    pub const UP: u32 = 1;
    /// The flow was closed before its time.
    pub const DOWN: u32 = 2;
    /// Node `node` asks for every flow again (it started, or lost some).
    pub const PULL: u32 = 3;
    /// Every flow of the sender went before this, for node `node`.
    pub const SYNCED: u32 = 4;

    /// A message about the exchange itself, for node `node`.
    pub fn control(kind: u32, node: u16) -> Self {
        Self {
            kind,
            node: node.into(),
            ..Self::zeroed()
        }
    }
}

/// The changes of a batch, in the order they happened.
#[derive(Debug)]
pub struct Changes {
    changes: Vec<Replica>,
    /// Changes that did not fit, since the last time whoever empties the
    /// buffer took the count.
    pub overflow: u64,
    /// Where the refresh goes on from, and up to when it has credit.
    pub(super) hand: usize,
    pub(super) refreshed_ns: u64,
    /// Slots a burst (every flow again, at once) has yet to visit, and
    /// whether one ended since it was last asked.
    pub(super) burst: usize,
    burst_ended: bool,
    /// Set while whoever empties the buffer has no room for more.
    burst_paused: bool,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    pub fn new() -> Self {
        Self {
            changes: Vec::with_capacity(CHANGES_PER_BATCH),
            overflow: 0,
            hand: 0,
            refreshed_ns: 0,
            burst: 0,
            burst_ended: false,
            burst_paused: false,
        }
    }

    /// Every flow is to be noted again, as fast as the buffer allows (a
    /// peer asked for them all): `slots` to visit.
    pub fn start_burst(&mut self, slots: usize) {
        self.burst = slots;
        self.burst_ended = slots == 0;
    }

    /// Whether a burst is under way.
    pub fn bursting(&self) -> bool {
        self.burst > 0
    }

    /// Holds the burst while `paused` (its changes would find no room).
    pub fn pause_burst(&mut self, paused: bool) {
        self.burst_paused = paused;
    }

    /// How many slots the burst may visit now.
    pub(super) fn burst_due(&self) -> usize {
        if self.burst_paused {
            0
        } else {
            self.burst.min(CHANGES_PER_BATCH)
        }
    }

    /// Whether the burst ended since the last call.
    pub fn burst_ended(&mut self) -> bool {
        std::mem::take(&mut self.burst_ended)
    }

    /// The burst visited `n` more slots.
    pub(super) fn burst_visited(&mut self, n: usize) {
        self.burst = self.burst.saturating_sub(n);
        self.burst_ended |= self.burst == 0;
    }

    /// Notes a change of `flow`, which has `remaining` seconds left.
    #[inline]
    pub fn note(&mut self, kind: u32, flow: &Flow, remaining: u32) {
        if self.changes.len() == CHANGES_PER_BATCH {
            self.overflow += 1;
            return;
        }
        self.changes.push(Replica {
            kind,
            remaining,
            context: 0,
            node: 0,
            noted_ns: 0,
            flow: *flow,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.changes.len() == CHANGES_PER_BATCH
    }

    /// The changes noted since the last drain.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Replica> {
        self.changes.drain(..)
    }
}

/// What became of a peer's flow given to [`Conntrack::adopt`](super::conntrack::Conntrack::adopt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adopted {
    /// New here.
    Added,
    /// Known already: its state and expiry updated.
    Updated,
    /// A closed flow removed.
    Removed,
    /// Nothing to do (a close of an unknown flow, an expired flow).
    Ignored,
    /// On one of this node's own SNAT addresses: only this node speaks for
    /// those.
    Own,
    /// Its replies cannot come here: its address is no SNAT address of the
    /// fleet's, or its port is another worker's.
    NotHere,
}
