//! Per-worker totals, readable from any thread: each worker adds its
//! [`Tally`] once per batch and is the only writer of its own
//! [`WorkerStats`].

use std::{
    ops::Range,
    sync::{
        Mutex,
        atomic::{
            AtomicBool, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
};

use rialto_dataplane::{
    DropReason,
    pipeline::{BalanceStats, SnatUse, balance::Counters, conntrack::ConntrackStats},
};
use serde::Serialize;
use strum::{EnumCount, IntoEnumIterator};

use crate::{
    afxdp::Ledger,
    tally::{IoDrop, Tally},
};

/// A worker's totals since start, readable from any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    handoff_out: AtomicU64,
    handoff_in: AtomicU64,
    check_in: AtomicU64,
    check_out: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
    io_drops: [AtomicU64; IoDrop::COUNT],
    /// False once the worker has stopped serving (it panicked).
    down: AtomicBool,
    /// The generation of the config tables the worker runs on.
    generation: AtomicU64,
    /// One more per turn of the worker's loop (at least every 100 ms, idle
    /// or not): a worker whose count stops has stopped making progress.
    turns: AtomicU64,
    balancing: AtomicBool,
    balance: [AtomicU64; BALANCE_FIELDS],
    /// Refreshed four times a second, never waited for by the worker.
    snat: Mutex<Vec<SnatUse>>,
    /// Live flows per service and backend, and the tables generation whose
    /// indices they use; refreshed like `snat`.
    per_backend: Mutex<(u64, Vec<Vec<u32>>)>,
    /// Where the port's UMEM frames are; refreshed like `snat`.
    umem: Mutex<Option<Ledger>>,
    /// Where the flow table lies in memory, by part (for what backs it);
    /// refreshed like `snat`.
    flow_table: Mutex<Vec<(&'static str, Range<usize>)>>,
}

const BALANCE_FIELDS: usize = 14;

fn balance_to_array(b: BalanceStats) -> [u64; BALANCE_FIELDS] {
    let (c, f) = (b.counters, b.flows);
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
        b.capacity,
        c.handed_on,
        c.no_backend_refused,
        c.reset_on_down,
    ]
}

fn balance_from_array(a: [u64; BALANCE_FIELDS]) -> BalanceStats {
    BalanceStats {
        counters: Counters {
            forward: a[0],
            reply: a[1],
            icmp_time_exceeded: a[2],
            icmp_too_big: a[3],
            icmp_translated: a[4],
            handed_on: a[11],
            no_backend_refused: a[12],
            reset_on_down: a[13],
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

impl WorkerStats {
    /// Adds a batch's tally. Called by the owning worker only: as the one
    /// writer it adds with a plain load and store (no locked instruction),
    /// and skips what did not change.
    pub fn publish(&self, t: &Tally) {
        let add = |total: &AtomicU64, n: u64| {
            if n > 0 {
                total.store(total.load(Relaxed) + n, Relaxed);
            }
        };
        add(&self.rx_packets, t.rx_packets);
        add(&self.rx_bytes, t.rx_bytes);
        add(&self.tx_packets, t.tx_packets);
        add(&self.tx_bytes, t.tx_bytes);
        add(&self.handoff_out, t.handoff_out);
        add(&self.handoff_in, t.handoff_in);
        add(&self.check_in, t.punted);
        add(&self.check_out, t.injected);
        for (total, n) in self.drops.iter().zip(t.drops) {
            add(total, n);
        }
        for (total, n) in self.io_drops.iter().zip(t.io_drops) {
            add(total, n);
        }
    }

    /// Marks the worker as no longer serving (it panicked).
    pub fn set_down(&self) {
        self.down.store(true, Release);
    }

    /// Whether the worker still serves its queue.
    pub fn up(&self) -> bool {
        !self.down.load(Acquire)
    }

    /// Stores the balancer's totals (the owning worker, once per batch).
    pub fn publish_balance(&self, b: BalanceStats) {
        self.balancing.store(true, Relaxed);
        for (total, value) in self.balance.iter().zip(balance_to_array(b)) {
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

    /// Replaces where the flow table lies, unless a reader holds it.
    pub fn publish_flow_table(&self, memory: impl FnOnce() -> Vec<(&'static str, Range<usize>)>) {
        if let Ok(mut slot) = self.flow_table.try_lock() {
            *slot = memory();
        }
    }

    /// Where the flow table lies, by part: none for a worker without one.
    pub fn flow_table(&self) -> Vec<(&'static str, Range<usize>)> {
        self.flow_table
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
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

    /// Notes one more turn of the worker's loop.
    pub fn turn(&self) {
        self.turns.store(self.turns.load(Relaxed) + 1, Relaxed);
    }

    pub fn turns(&self) -> u64 {
        self.turns.load(Relaxed)
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
            check_in: self.check_in.load(Relaxed),
            check_out: self.check_out.load(Relaxed),
            balance: self
                .balancing
                .load(Relaxed)
                .then(|| balance_from_array(self.balance.each_ref().map(|v| v.load(Relaxed)))),
            up: self.up(),
            drops: DropReason::iter()
                .map(|r| (r.name(), self.drops[r as usize].load(Relaxed)))
                .chain(IoDrop::iter().map(|r| (r.name(), self.io_drops[r as usize].load(Relaxed))))
                .collect(),
        }
    }
}

/// A worker's counters at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct StatsSnapshot {
    /// Whether the worker serves its queue (false once it has panicked: its
    /// queue then fails open to the kernel).
    pub up: bool,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub handoff_out: u64,
    pub handoff_in: u64,
    /// Health checks' packets: answers received and passed to the checker,
    /// checks sent for it (counted in rx and tx too).
    pub check_in: u64,
    pub check_out: u64,
    /// Balance mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceStats>,
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}
