//! The per-frame work: a pure function of the frame and the time.
//!
//! The I/O layer hands [`Pipeline::process`] a batch of frames and gets a
//! [`Verdict`] back for each; once per batch it calls [`Pipeline::tick`].
//! Nothing here does I/O, so unit tests, offline replay, the benchmarks
//! and the live AF_XDP loop all run exactly the same code. One file per
//! stage: [`packet`] finds the flow, [`conntrack`] and [`snat`] remember it,
//! [`nat`] rewrites it, [`encap`] wraps it, [`icmp`] makes and translates
//! errors, [`balance`] puts them together; [`reflect`] is the bare
//! baseline.

pub mod balance;
pub mod conntrack;
pub mod encap;
pub mod icmp;
mod keymap;
pub mod nat;
pub mod packet;
pub mod reflect;
pub mod refuse;
pub mod replica;
pub mod snat;

use std::sync::Arc;

use conntrack::{FlowMemory, Restored, Slot};
use rialto_tables::Snapshot;
use serde::Serialize;

use crate::{FrameBuf, Verdict};

/// A worker's pipeline; a balancer keeps its flows in slots of storage
/// `S` (the heap by default; `rialto run` maps them from a file).
#[derive(Debug)]
pub enum Pipeline<S: FlowMemory = Box<[Slot]>> {
    /// The border node's job (DESIGN.md): balance VIP traffic over backends
    /// in remote clusters, through VXLAN, with NAT and connection tracking.
    Balance(Box<balance::Balancer<S>>),
    /// Swap Ethernet, IP and UDP/TCP source and destination, and send the
    /// frame back: the bare AF_XDP baseline the benchmarks compare against.
    Reflect,
}

/// What a balancing worker reports besides its packet counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BalanceStats {
    #[serde(flatten)]
    pub counters: balance::Counters,
    pub flows: conntrack::ConntrackStats,
    /// The flow table's size.
    pub capacity: u64,
}

/// Free SNAT ports of one worker's slice, per address and protocol.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SnatUse {
    pub addr: std::net::IpAddr,
    pub proto: &'static str,
    pub free: u64,
    /// Ports in the slice.
    pub slice: u64,
}

impl Pipeline {
    /// Worker `worker` of `workers` balancing by `tables`; `mac` is the
    /// uplink's own address.
    pub fn balance(tables: Arc<Snapshot>, worker: u32, workers: u32, mac: [u8; 6]) -> Self {
        Self::Balance(Box::new(balance::Balancer::new(
            tables, worker, workers, mac,
        )))
    }
}

impl<S: FlowMemory> Pipeline<S> {
    /// [`Pipeline::balance`], the flows in `slots` (all empty; as many
    /// as [`balance::slots_for`] the tables).
    pub fn balance_in(
        slots: S,
        tables: Arc<Snapshot>,
        worker: u32,
        workers: u32,
        mac: [u8; 6],
    ) -> Self {
        Self::Balance(Box::new(balance::Balancer::with_slots(
            slots, tables, worker, workers, mac,
        )))
    }

    /// A balancer's flow storage (see [`conntrack::Conntrack::storage_mut`]),
    /// and the generation of names its live slots are packed under
    /// ([`conntrack::Conntrack::generation`]).
    pub fn storage_mut(&mut self) -> Option<(&mut S, u8)> {
        match self {
            Self::Balance(b) => {
                let generation = b.flows().generation();
                Some((b.storage_mut(), generation))
            }
            Self::Reflect => None,
        }
    }

    /// Puts flows kept from before a restart (carried over to the tables in
    /// force) into a balancer's empty table; `None` in reflect mode.
    pub fn restore(
        &mut self,
        flows: impl IntoIterator<Item = conntrack::Flow>,
        now: u64,
    ) -> Option<Restored> {
        match self {
            Self::Balance(b) => Some(b.restore(flows, now)),
            Self::Reflect => None,
        }
    }

    /// Processes a batch in place: `verdicts[i]` says what to do with
    /// `frames[i]`, whose bounds may have moved (headers pushed or
    /// stripped). `now` is the worker's monotonic clock in nanoseconds,
    /// read once per batch.
    ///
    /// # Panics
    /// If the two slices differ in length.
    pub fn process(&mut self, frames: &mut [FrameBuf<'_>], verdicts: &mut [Verdict], now: u64) {
        assert_eq!(frames.len(), verdicts.len(), "a verdict per frame");
        match self {
            Self::Balance(b) => b.process_batch(frames, verdicts, now),
            Self::Reflect => {
                for (frame, verdict) in frames.iter_mut().zip(verdicts) {
                    *verdict = reflect::process(frame.data_mut());
                }
            }
        }
    }

    /// Processes one frame in place.
    #[inline]
    pub fn process_frame(&mut self, frame: &mut FrameBuf<'_>, now: u64) -> Verdict {
        match self {
            Self::Balance(b) => b.process(frame, now),
            Self::Reflect => reflect::process(frame.data_mut()),
        }
    }

    /// See [`balance::Balancer::set_fast_path`]; reflect mode has none.
    pub fn set_fast_path(&mut self, on: bool) {
        if let Self::Balance(b) = self {
            b.set_fast_path(on);
        }
    }

    /// See [`balance::Balancer::set_read_ahead`]; reflect mode has none.
    pub fn set_read_ahead(&mut self, on: bool) {
        if let Self::Balance(b) = self {
            b.set_read_ahead(on);
        }
    }

    /// Once per batch, after the frames (or none): housekeeping that must
    /// not wait for traffic (expiring flows), paced by the time.
    pub fn tick(&mut self, now: u64) {
        if let Self::Balance(b) = self {
            b.tick(now);
        }
    }

    /// Switches a balancer to a reloaded config's tables (see
    /// [`balance::Balancer::reload`]); reflect mode has none.
    pub fn reload(&mut self, tables: Arc<Snapshot>) {
        if let Self::Balance(b) = self {
            b.reload(tables);
        }
    }

    /// Where a balancer sends frames, as learned from the kernel.
    pub fn set_next_hop(&mut self, mac: [u8; 6]) {
        if let Self::Balance(b) = self {
            b.set_next_hop(mac);
        }
    }

    /// A balancer's changes for the fleet's peers (see
    /// [`balance::Balancer::changes`]).
    pub fn changes(&mut self) -> Option<&mut replica::Changes> {
        match self {
            Self::Balance(b) => b.changes(),
            Self::Reflect => None,
        }
    }

    /// See [`balance::Balancer::start_burst`].
    pub fn start_burst(&mut self) {
        if let Self::Balance(b) = self {
            b.start_burst();
        }
    }

    /// Takes in a flow a peer of the fleet speaks for; `None` in reflect
    /// mode.
    pub fn adopt(&mut self, replica: &replica::Replica, now: u64) -> Option<replica::Adopted> {
        match self {
            Self::Balance(b) => Some(b.adopt(replica, now)),
            Self::Reflect => None,
        }
    }

    /// A balancer's totals.
    pub fn stats(&self) -> Option<BalanceStats> {
        let Self::Balance(b) = self else {
            return None;
        };
        Some(BalanceStats {
            counters: b.counters(),
            flows: b.flows().stats(),
            capacity: b.flows().capacity() as u64,
        })
    }

    /// A balancer's SNAT ports: free and total per address and protocol.
    pub fn snat_use(&self) -> Vec<SnatUse> {
        let Self::Balance(b) = self else {
            return Vec::new();
        };
        let snat = b.flows().snat();
        snat.free()
            .map(|(addr, proto, free)| SnatUse {
                addr: packet::to_ip(&addr),
                proto: if proto == packet::TCP { "tcp" } else { "udp" },
                free: free as u64,
                slice: snat.slice_len() as u64,
            })
            .collect()
    }

    /// A balancer's live flows per service and backend.
    pub fn per_backend(&self) -> Vec<Vec<u32>> {
        match self {
            Self::Balance(b) => b.flows().per_backend().to_vec(),
            Self::Reflect => Vec::new(),
        }
    }

    /// Where a balancer's flow table lies in memory
    /// ([`Conntrack::memory`](conntrack::Conntrack::memory)); none for
    /// reflect.
    pub fn flow_table_memory(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        match self {
            Self::Balance(b) => b.flows().memory().to_vec(),
            Self::Reflect => Vec::new(),
        }
    }
}
