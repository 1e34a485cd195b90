//! Per-worker counters: a plain tally on the hot path, published to atomics
//! once per batch. Each worker is the only writer of its own `WorkerStats`.

use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use serde::Serialize;

use crate::pipeline::DropReason;

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
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}
