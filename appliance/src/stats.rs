//! Per-worker counters: a plain tally on the hot path, published to atomics
//! once per batch. Each worker is the only writer of its own `WorkerStats`.

use std::sync::{
    Mutex,
    atomic::{
        AtomicBool, AtomicU64,
        Ordering::{Acquire, Relaxed, Release},
    },
};

use serde::Serialize;

use crate::{
    afxdp::Ledger,
    pipeline::{DropReason, balance::Counters, conntrack::ConntrackStats},
};

/// What a balancing worker publishes besides its packet counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BalanceStats {
    #[serde(flatten)]
    pub counters: Counters,
    pub flows: ConntrackStats,
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

/// What one batch did; lives on the worker's stack.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames handed to the worker owning their flow, and taken from others.
    pub handoff_out: u64,
    pub handoff_in: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Tally {
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

/// A worker's totals since start, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    handoff_out: AtomicU64,
    handoff_in: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    /// The generation of the config tables the worker runs on.
    generation: AtomicU64,
    balancing: AtomicBool,
    balance: [AtomicU64; BALANCE_FIELDS],
    /// Refreshed four times a second, never waited for by the worker.
    snat: Mutex<Vec<SnatUse>>,
    /// Live flows per service and backend, and the tables generation whose
    /// indices they use; refreshed like `snat`.
    per_backend: Mutex<(u64, Vec<Vec<u32>>)>,
    /// Where the port's UMEM frames are; refreshed like `snat`.
    umem: Mutex<Option<Ledger>>,
}

const BALANCE_FIELDS: usize = 11;

impl BalanceStats {
    fn to_array(self) -> [u64; BALANCE_FIELDS] {
        let (c, f) = (self.counters, self.flows);
        [
            c.forward,
            c.reply,
            c.icmp_time_exceeded,
            c.icmp_too_big,
            c.icmp_translated,
            f.created,
            f.expired,
            f.evicted,
            f.reload_removed,
            f.live,
            self.capacity,
        ]
    }

    fn from_array(a: [u64; BALANCE_FIELDS]) -> Self {
        Self {
            counters: Counters {
                forward: a[0],
                reply: a[1],
                icmp_time_exceeded: a[2],
                icmp_too_big: a[3],
                icmp_translated: a[4],
            },
            flows: ConntrackStats {
                created: a[5],
                expired: a[6],
                evicted: a[7],
                reload_removed: a[8],
                live: a[9],
            },
            capacity: a[10],
        }
    }
}

impl WorkerStats {
    /// Adds a batch's tally. Called by the owning worker only.
    pub fn publish(&self, t: &Tally) {
        self.rx_packets.fetch_add(t.rx_packets, Relaxed);
        self.rx_bytes.fetch_add(t.rx_bytes, Relaxed);
        self.tx_packets.fetch_add(t.tx_packets, Relaxed);
        self.tx_bytes.fetch_add(t.tx_bytes, Relaxed);
        self.handoff_out.fetch_add(t.handoff_out, Relaxed);
        self.handoff_in.fetch_add(t.handoff_in, Relaxed);
        for (total, n) in self.drops.iter().zip(t.drops) {
            total.fetch_add(n, Relaxed);
        }
    }

    /// Stores the balancer's totals (the owning worker, once per batch).
    pub fn publish_balance(&self, b: BalanceStats) {
        self.balancing.store(true, Relaxed);
        for (total, value) in self.balance.iter().zip(b.to_array()) {
            total.store(value, Relaxed);
        }
    }

    /// Replaces the SNAT figures, unless a reader holds them right now.
    pub fn publish_snat(&self, snat: impl FnOnce() -> Vec<SnatUse>) {
        if let Ok(mut slot) = self.snat.try_lock() {
            *slot = snat();
        }
    }

    /// Replaces the per-backend flow counts, unless a reader holds them.
    pub fn publish_per_backend(&self, generation: u64, counts: impl FnOnce() -> Vec<Vec<u32>>) {
        if let Ok(mut slot) = self.per_backend.try_lock() {
            *slot = (generation, counts());
        }
    }

    /// Replaces the UMEM ledger, unless a reader holds it.
    pub fn publish_umem(&self, ledger: Ledger) {
        if let Ok(mut slot) = self.umem.try_lock() {
            *slot = Some(ledger);
        }
    }

    pub fn umem(&self) -> Option<Ledger> {
        self.umem.lock().ok().and_then(|u| *u)
    }

    /// The per-backend flow counts if they are for tables `generation`.
    pub fn per_backend(&self, generation: u64) -> Option<Vec<Vec<u32>>> {
        let slot = self.per_backend.lock().ok()?;
        (slot.0 == generation).then(|| slot.1.clone())
    }

    pub fn snat(&self) -> Vec<SnatUse> {
        self.snat.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Called by the owning worker once it runs on tables `generation`.
    pub fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Acquire)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            handoff_out: self.handoff_out.load(Relaxed),
            handoff_in: self.handoff_in.load(Relaxed),
            balance: self.balancing.load(Relaxed).then(|| {
                BalanceStats::from_array(self.balance.each_ref().map(|v| v.load(Relaxed)))
            }),
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r.name(), self.drops[r as usize].load(Relaxed)))
                .collect(),
        }
    }
}

/// A worker's counters at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct StatsSnapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub handoff_out: u64,
    pub handoff_in: u64,
    /// Balance mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceStats>,
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

/// Lets a warning that can repeat every turn of a worker's loop through at
/// most once per interval, and says how many were held back meanwhile.
#[derive(Debug)]
pub struct Throttle {
    interval: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(interval: std::time::Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if the warning may be logged now, `n` being how many were
    /// held back since the last one; `None` if it is held back.
    pub fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now - last < self.interval) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(std::time::Duration::from_millis(50));
        assert_eq!(t.allow(), Some(0));
        assert_eq!((t.allow(), t.allow()), (None, None));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(t.allow(), Some(2));
    }
}
