//! Resuming the flows a Rialto left, as `rialto run` does at start after a
//! crash: `cargo bench -p rialto-benches --bench resume`.
//!
//! One million live TCP flows, made by SYNs through two workers' balancers
//! (half each, as two queues would get them) whose flow tables are mapped
//! from a state directory under `/dev/shm`, as `rialto run` keeps them. The
//! process lets go of them without a word, as a crash would; then, five
//! times, a new start reads the tables back and checks every slot
//! (`StateDir::read_saved`, a thread per table), carries the flows over to
//! the tables in force and restores them into new tables (`state::resume`,
//! a thread per worker), and puts those in place (`StateDir::commit`),
//! which the next run reads. Prints the median time, and of it the reading
//! and checking.

use std::{path::PathBuf, time::Instant};

use rialto::state::{MappedSlots, StateDir, longest, resume};
use rialto_benches::{forward, packet, tables};
use rialto_dataplane::{OwnedFrame, Pipeline, pipeline::balance::slots_for};
use rialto_fixtures as fixtures;

const FLOWS: usize = 1_000_000;
const WORKERS: u32 = 2;
const RUNS: usize = 5;
/// The clock of the flows, in nanoseconds: none expires during the runs.
const NOW: u64 = 1_000_000_000_000;

fn main() {
    let dir = PathBuf::from(format!(
        "/dev/shm/rialto-bench-resume.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    // SNAT ports for every flow in each worker's slice; tables of 600,000
    // flows per worker.
    let mut tables = tables(FLOWS);
    std::sync::Arc::get_mut(&mut tables)
        .expect("not shared yet")
        .limits
        .flows_per_worker = 600_000;
    let queues: Vec<u32> = (0..WORKERS).collect();
    let balancers = |state: &StateDir| -> Vec<Pipeline<MappedSlots>> {
        let id = state.save_names(&tables).unwrap();
        (queues.iter())
            .map(|&q| {
                let slots = state.create_flows(q, slots_for(&tables), id).unwrap();
                Pipeline::balance_in(slots, tables.clone(), q, WORKERS, fixtures::NODE_MAC)
            })
            .collect()
    };
    {
        let mut state = StateDir::open(&dir).unwrap();
        state.lock().unwrap();
        let mut pipelines = balancers(&state);
        let mut buf = OwnedFrame::new(&[]);
        for i in 0..FLOWS {
            let worker = &mut pipelines[i % WORKERS as usize];
            forward(worker, &mut buf, &packet(i, "S"), NOW);
        }
        state.commit(&queues).unwrap();
    }
    let mut runs: Vec<(f64, f64)> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let mut state = StateDir::open(&dir).unwrap();
            state.lock().unwrap();
            let saved = state.read_saved(longest(&tables.timeouts), (NOW / 1_000_000_000) as u32);
            let read = start.elapsed().as_secs_f64();
            let mut pipelines = balancers(&state);
            let mut workers: Vec<_> = pipelines.iter_mut().collect();
            let resumed = resume(saved, &tables, &mut workers, NOW);
            state.commit(&queues).unwrap();
            let total = start.elapsed().as_secs_f64();
            assert_eq!(resumed.recovered, FLOWS as u64, "{resumed:?}");
            (total, read)
        })
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (total, read) = runs[RUNS / 2];
    println!(
        "resumed {FLOWS} flows in {:.0} ms, of which reading and checking {:.0} ms (median of {RUNS} runs: {})",
        total * 1e3,
        read * 1e3,
        runs.iter()
            .map(|(t, _)| format!("{:.0} ms", t * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
