//! A worker: one thread per receive queue, pinned to a core, running the
//! pipeline to completion over batches from its own AF_XDP port.
//!
//! A frame's path, top-down: the port takes a batch off its RX ring and its
//! inbox ([`XskPort::step`]), the pipeline gives each frame a verdict
//! ([`Pipeline::process`]), the port sends each where its verdict says;
//! then the pipeline's housekeeping ([`Pipeline::tick`]) and, once per
//! batch, the counters are published ([`WorkerStats`]).
//!
//! A worker that panics does not take the others down: the panic is
//! caught, the worker is marked down (the control plane then takes its
//! socket out of the XSKMAP, so its queue fails open to the kernel), and
//! until shutdown it only sends frames home.

use std::{
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use arc_swap::ArcSwap;
use core_affinity::CoreId;
use nix::time::ClockId;
use rialto_dataplane::{
    Pipeline,
    pipeline::replica::{Adopted, CHANGES_PER_BATCH},
};
use rialto_tables::Snapshot;
use tracing::{error, warn};

use crate::{
    afxdp::{Ledger, XskPort},
    fleet::WorkerLink,
    state::{MappedSlots, NamesId},
    stats::WorkerStats,
    tally::Tally,
};

/// How long an idle worker sleeps in `poll` before it checks for shutdown.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often figures that change slowly (SNAT use, flows per backend) are
/// published, and the balancer's totals when no traffic comes.
const SLOW_PUBLISH: Duration = Duration::from_millis(250);
/// How long a stopping worker waits for its transmissions to complete.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How late a worker's timed sleep may end (`PR_SET_TIMERSLACK`).
const WORKER_TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// The config tables every worker runs on, replaced whole by a reload.
///
/// A worker reads the generation once per turn of its loop (one atomic
/// load) and takes the new tables only when it changed: no lock, nothing
/// per packet. The tables and their generation are published together
/// ([`Published`]), so a reader never pairs one with the other's neighbour.
#[derive(Debug)]
pub struct SharedTables {
    current: ArcSwap<Published>,
    /// `current`'s generation, to be compared cheaply.
    generation: AtomicU64,
    /// The next hop's MAC learned from the kernel, or [`NOT_LEARNED`].
    next_hop: AtomicU64,
}

/// Tables, and their generation: 0 at start, one more per publication.
#[derive(Debug)]
pub struct Published {
    pub generation: u64,
    pub tables: Arc<Snapshot>,
    /// The ids of their saved names (`StateDir::save_names`), which the
    /// workers' flow tables record before they run on them; the context's
    /// goes with the replicas sent to the fleet's peers.
    pub names: NamesId,
}

const NOT_LEARNED: u64 = u64::MAX;

impl SharedTables {
    pub fn new(tables: Arc<Snapshot>, names: NamesId) -> Self {
        Self {
            current: ArcSwap::from_pointee(Published {
                generation: 0,
                tables,
                names,
            }),
            generation: AtomicU64::new(0),
            next_hop: AtomicU64::new(NOT_LEARNED),
        }
    }

    /// Publishes the next hop's MAC learned from the kernel.
    pub fn learn_next_hop(&self, mac: [u8; 6]) {
        let mut word = [0u8; 8];
        word[2..].copy_from_slice(&mac);
        self.next_hop
            .store(u64::from_be_bytes(word), Ordering::Release);
    }

    pub fn next_hop(&self) -> Option<[u8; 6]> {
        let word = self.next_hop.load(Ordering::Acquire);
        (word != NOT_LEARNED).then(|| {
            let bytes = word.to_be_bytes();
            [bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]]
        })
    }

    /// Publishes new tables, whose names are saved as `names`; returns
    /// their generation.
    pub fn publish(&self, tables: Arc<Snapshot>, names: NamesId) -> u64 {
        let previous = self.current.rcu(|p| Published {
            generation: p.generation + 1,
            tables: Arc::clone(&tables),
            names,
        });
        let generation = previous.generation + 1;
        self.generation.fetch_max(generation, Ordering::AcqRel);
        generation
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The tables in force, with their generation.
    pub fn published(&self) -> Arc<Published> {
        self.current.load_full()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.load().tables)
    }
}

/// The system's monotonic clock, in nanoseconds: what flows expire by. It
/// runs on across a restart of Rialto (not of the machine), so the flows
/// a previous Rialto left expire when they would have.
pub fn monotonic_ns() -> u64 {
    clock_ns(ClockId::CLOCK_MONOTONIC)
}

/// The wall clock, in nanoseconds: what a fleet's
/// [`Replica::noted_ns`](rialto_dataplane::pipeline::replica::Replica::noted_ns)
/// holds.
pub fn realtime_ns() -> u64 {
    clock_ns(ClockId::CLOCK_REALTIME)
}

fn clock_ns(clock: ClockId) -> u64 {
    let now = nix::time::clock_gettime(clock).expect("the clocks of POSIX are always there");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Flows a worker adopts from the fleet's peers per turn of its loop, at
/// most: a burst of them delays its frames by no more than this.
const ADOPT_PER_TURN: usize = 256;

/// Between two batches, with a fleet: this worker's changes to the syncer,
/// and a few of the peers' flows into its table; a burst of every flow
/// started when the syncer asks for one (`burst`: the last started), and
/// said when it ends. Whether there is nothing more to do.
fn exchange(
    pipeline: &mut Pipeline<MappedSlots>,
    link: &WorkerLink,
    context: u32,
    now: u64,
    burst: &mut u64,
) -> bool {
    let arrived = if link.inbox.is_empty() {
        0
    } else {
        realtime_ns()
    };
    for _ in 0..ADOPT_PER_TURN {
        let Some(replica) = link.inbox.pop() else {
            break;
        };
        let adopted = pipeline.adopt(&replica, now);
        if adopted == Some(Adopted::Added) && replica.noted_ns != 0 {
            link.delays.record(arrived.saturating_sub(replica.noted_ns));
        }
    }
    let asked = link.burst_asked.load(Ordering::Acquire);
    if asked != *burst {
        *burst = asked;
        pipeline.start_burst();
    }
    let Some(changes) = pipeline.changes() else {
        return true;
    };
    let mut lost = std::mem::take(&mut changes.overflow);
    let noted = if changes.is_empty() { 0 } else { realtime_ns() };
    for mut replica in changes.drain() {
        replica.context = context;
        replica.noted_ns = noted;
        lost += u64::from(link.outbox.push(replica).is_err());
    }
    if lost > 0 {
        link.lost.fetch_add(lost, Ordering::Relaxed);
    }
    if changes.burst_ended() {
        // After its flows, in the outbox.
        link.burst_done.store(*burst, Ordering::Release);
    }
    // A burst waits while the outbox has no room for a batch of it.
    let room = link.outbox.capacity() - link.outbox.len() >= CHANGES_PER_BATCH;
    changes.pause_burst(!room);
    link.inbox.is_empty() && !(changes.bursting() && room)
}

/// A worker, ready to be started on its own thread.
#[derive(Debug)]
pub struct Worker {
    pub queue: u32,
    pub core: Option<CoreId>,
    pub port: XskPort,
    pub pipeline: Pipeline<MappedSlots>,
    pub stats: Arc<WorkerStats>,
    /// Where reloads publish new tables (balance mode).
    pub tables: Option<Arc<SharedTables>>,
    /// With a fleet: the queues to and from the syncer.
    pub fleet: Option<WorkerLink>,
    /// Test only (`rialto run --inject-fault worker-panic:Q`,
    /// `worker-stall:Q`): what goes wrong at the first frame.
    pub fault: Option<WorkerFault>,
}

/// What `--inject-fault` makes a worker do at its first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerFault {
    Panic,
    /// Stop making progress until told to stop.
    Stall,
}

impl Worker {
    /// Starts the worker; it runs until `stop` is set, waits at `stopped`
    /// until every worker sharing its UMEM has stopped handing frames over,
    /// drains, publishes its last figures and returns its port's ledger.
    pub fn spawn(
        self,
        stop: Arc<AtomicBool>,
        stopped: Arc<Barrier>,
    ) -> std::io::Result<JoinHandle<Ledger>> {
        std::thread::Builder::new()
            .name(format!("rialto-q{}", self.queue))
            .spawn(move || self.run(&stop, &stopped))
    }

    fn run(mut self, stop: &AtomicBool, stopped: &Barrier) -> Ledger {
        if let Some(core) = self.core
            && !core_affinity::set_for_current(core)
        {
            warn!(
                queue = self.queue,
                core = core.id,
                "cannot pin worker to its core"
            );
        }
        // The worker's short sleeps (a wake put off, frames gathering: tens
        // of microseconds) end when asked, not up to the default 50 µs of
        // timer slack later.
        if let Err(e) = nix::sys::prctl::set_timerslack(WORKER_TIMER_SLACK_NS) {
            warn!(
                queue = self.queue,
                "cannot set the worker's timer slack: {e}"
            );
        }
        let mut generation = 0;
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.serve(stop, &mut generation);
        }));
        if served.is_err() {
            error!(
                queue = self.queue,
                "worker panicked: its queue fails open to the kernel, the other workers go on"
            );
            self.stats.set_down();
            while !stop.load(Ordering::Relaxed) {
                self.port.idle_down();
                std::thread::sleep(Duration::from_millis(1));
            }
            self.port.idle_down();
        }
        stopped.wait();
        let ledger = self.port.drain(DRAIN_TIMEOUT);
        match served {
            Ok(()) => self.publish_slow(generation),
            // The pipeline may be half way through a change: not read again.
            Err(_) => self.stats.publish_umem(self.port.ledger()),
        }
        ledger
    }

    /// The loop, until `stop`; `generation` is the tables' it runs on.
    fn serve(&mut self, stop: &AtomicBool, generation: &mut u64) {
        let mut next_slow = 0;
        let mut next_hop = None;
        let mut context = self
            .tables
            .as_ref()
            .map_or(0, |t| t.published().names.context);
        // The last burst the syncer asked for that this worker started.
        let mut burst = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(tables) = &self.tables
                && tables.generation() != *generation
            {
                let published = tables.published();
                *generation = published.generation;
                context = published.names.context;
                // The file's header names the next generation's names before
                // the reload packs any slot under them.
                if let Some((slots, names_generation)) = self.pipeline.storage_mut() {
                    slots.set_names(names_generation ^ 1, published.names);
                }
                self.pipeline.reload(Arc::clone(&published.tables));
                self.stats.set_generation(*generation);
                next_slow = 0;
                next_hop = None;
            }
            if let Some(tables) = &self.tables
                && let Some(mac) = tables.next_hop()
                && next_hop != Some(mac)
            {
                next_hop = Some(mac);
                self.pipeline.set_next_hop(mac);
            }
            self.stats.turn();
            let mut tally = Tally::default();
            let now = monotonic_ns();
            let (pipeline, fault) = (&mut self.pipeline, self.fault);
            let processed = self.port.step(&mut tally, |frames, verdicts| {
                match fault {
                    Some(WorkerFault::Panic) => {
                        panic!("fault injected: worker panic at its first frame")
                    }
                    Some(WorkerFault::Stall) => {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    None => {}
                }
                pipeline.process(frames, verdicts, now);
            });
            let mut sleeping = processed == 0 && !self.port.busy();
            self.pipeline.tick(now);
            if let Some(link) = &self.fleet {
                let idle = exchange(&mut self.pipeline, link, context, now, &mut burst);
                sleeping &= idle;
            }
            if processed > 0 || tally.injected > 0 {
                self.stats.publish(&tally);
                self.publish_balance();
            } else if sleeping {
                self.port.wait(IDLE_POLL);
            }
            self.port.gather(processed);
            if now >= next_slow {
                next_slow = now + SLOW_PUBLISH.as_nanos() as u64;
                self.publish_slow(*generation);
            }
        }
    }

    fn publish_slow(&self, generation: u64) {
        self.publish_balance();
        self.stats.publish_snat(|| self.pipeline.snat_use());
        self.stats
            .publish_per_backend(generation, || self.pipeline.per_backend());
        self.stats.publish_umem(self.port.ledger());
        self.stats
            .publish_flow_table(|| self.pipeline.flow_table_memory());
    }

    fn publish_balance(&self) {
        if let Some(b) = self.pipeline.stats() {
            self.stats.publish_balance(b);
        }
    }
}
