//! New flows per second through the whole pipeline, and the memory live
//! flows take, measured: `cargo bench -p rialto-benches --bench flows`.
//!
//! - **Setup rate**: 1 million TCP SYNs of distinct clients through one
//!   balancer with an empty table: each takes a Maglev pick, a SNAT port, a
//!   forward and a reverse entry, DNAT, SNAT and encapsulation. Median of
//!   five runs on one balancer, each from an empty table (the run before's
//!   flows expired) whose memory an untimed first run has touched.
//! - **Memory**: the process's resident memory (VmRSS) before the balancer
//!   is made, once its empty table is allocated, and once 10 million flows
//!   live in it; per flow, the whole table (its slots allocated up front and
//!   both indexes) and what filling it added.
//! - **Reload**: with those 10 million flows live, how long the worker's
//!   reload takes when the tables name every flow as before (a health
//!   check's: a backend marked down), and when they do not (a cluster's
//!   new gateway: every slot packed again).

use std::{sync::Arc, time::Instant};

use rialto_benches::{balancer, forward, packet, rss, tables};
use rialto_dataplane::OwnedFrame;

const SETUP_FLOWS: usize = 1_000_000;
const RUNS: usize = 5;
const MEMORY_FLOWS: usize = 10_000_000;
/// Nanoseconds after which every flow of a run has expired (an hour).
const EXPIRED: u64 = 3_600_000_000_000;

fn main() {
    // `cargo bench` passes --bench; nothing here is filtered.
    // One balancer throughout, so its table's memory is touched (by a
    // first, untimed run) as a running appliance's is: each timed run
    // starts from an empty table, the previous run's flows expired.
    let mut pipeline = balancer(tables(SETUP_FLOWS));
    let mut buf = OwnedFrame::new(&[]);
    let mut now = 1;
    let mut rates: Vec<f64> = (0..=RUNS)
        .map(|run| {
            let syns: Vec<Vec<u8>> = (run * SETUP_FLOWS..(run + 1) * SETUP_FLOWS)
                .map(|i| packet(i, "S"))
                .collect();
            let start = Instant::now();
            for syn in &syns {
                forward(&mut pipeline, &mut buf, syn, now);
            }
            let rate = SETUP_FLOWS as f64 / start.elapsed().as_secs_f64();
            now += EXPIRED;
            // The sweep, paced by the time, visits at most so many slots a
            // batch: batches 100 ms apart, as an idle worker's.
            while pipeline.stats().is_some_and(|s| s.flows.live > 0) {
                now += 100_000_000;
                pipeline.tick(now);
            }
            rate
        })
        .skip(1)
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[RUNS / 2];
    println!(
        "new flows: {:.2} million/s per core, {:.0} ns per new flow (median of {RUNS} runs of {} SYNs into an empty table; runs {})",
        median / 1e6,
        1e9 / median,
        SETUP_FLOWS,
        rates
            .iter()
            .map(|r| format!("{:.2}M", r / 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    );
    drop(pipeline);

    let config = tables(MEMORY_FLOWS);
    let before = rss();
    let mut pipeline = balancer(Arc::clone(&config));
    let empty = rss();
    let mut buf = OwnedFrame::new(&[]);
    let start = Instant::now();
    for i in 0..MEMORY_FLOWS {
        forward(&mut pipeline, &mut buf, &packet(i, "S"), 1);
    }
    let filled = rss();
    let seconds = start.elapsed().as_secs_f64();
    let live = pipeline.stats().map_or(0, |s| s.flows.live);
    assert_eq!(live, MEMORY_FLOWS as u64, "every flow is live");
    let per_flow = |bytes: u64| bytes as f64 / MEMORY_FLOWS as f64;
    println!(
        "memory: {live} live flows: {:.0} bytes per flow in all (RSS {} MiB before the balancer, {} MiB with its empty table, {} MiB full); filling added {:.0} bytes per flow",
        per_flow(filled - before),
        before >> 20,
        empty >> 20,
        filled >> 20,
        per_flow(filled - empty),
    );
    println!(
        "(filling 10 million flows, frames built on the way: {:.1} s)",
        seconds
    );

    let mut healthy: Vec<Vec<bool>> = (config.services.iter())
        .map(|s| vec![true; s.backends.len()])
        .collect();
    healthy[0][0] = false;
    let mut changed = (*config).clone();
    changed.clusters[0]
        .gateways
        .push(std::net::IpAddr::from([198, 18, 99, 1]));
    let health = Arc::new(config.with_health(&healthy).expect("health"));
    for (what, tables) in [
        ("a health check's", health),
        ("a new gateway's", Arc::new(changed)),
    ] {
        let start = Instant::now();
        pipeline.reload(tables);
        println!(
            "reload with {live} live flows, {what}: {:.3} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
}
