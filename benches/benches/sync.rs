//! What sharing flows across a fleet costs, without the network:
//! `cargo bench -p rialto-benches --bench sync`.
//!
//! 1. New flows: one million SYNs through a worker's balancer alone, and
//!    through one in a fleet, which notes each new flow for the peers and
//!    has its changes taken after each batch of 64 (as the worker does);
//!    new flows per second of each, and their ratio.
//! 2. A bulk sync: node A holds one million flows in two workers; a burst
//!    (what a joining node's PULL asks for) notes them all, A's sender
//!    packs them into authenticated datagrams, node B's receiver checks and
//!    delivers them, and B's two workers adopt each into the table of the
//!    worker that owns its SNAT port. Seconds for the whole, on one thread
//!    (the two nodes' syncers and workers would share the work).
//!
//! Five runs of each; the medians.

use std::{sync::Arc, time::Instant};

use rialto_benches::{forward, packet, tables};
use rialto_dataplane::{
    OwnedFrame, Pipeline,
    pipeline::{
        replica::{Adopted, Replica},
        snat::SnatPorts,
    },
};
use rialto_fixtures as fixtures;
use rialto_rules::{Fleet, Snapshot};

const FLOWS: usize = 1_000_000;
const WORKERS: u32 = 2;
const RUNS: usize = 5;
const BATCH: usize = 64;
const NOW: u64 = 1_000_000_000_000;
const KEY: [u8; 32] = [7; 32];

fn main() {
    let alone = tables(FLOWS);
    let fleet = in_fleet(&alone);
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        rates.push((new_flows(&alone), new_flows(&fleet)));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let off = median(rates.iter().map(|r| r.0).collect());
    let on = median(rates.iter().map(|r| r.1).collect());
    println!(
        "new flows, one worker: alone {:.0}/s, in a fleet (noted, taken per batch) {:.0}/s: ratio {:.3}",
        off,
        on,
        on / off
    );

    let syncs: Vec<f64> = (0..RUNS).map(|_| bulk_sync(&fleet)).collect();
    let delivered = syncs.len();
    println!(
        "bulk sync of {FLOWS} flows (burst, pack and sign, check and deliver, adopt), one thread: \
         median {:.3} s of {delivered} runs",
        median(syncs)
    );
}

/// `tables` with a fleet of which this node is node 1.
fn in_fleet(tables: &Arc<Snapshot>) -> Arc<Snapshot> {
    let mut fleet = (**tables).clone();
    fleet.fleet = Some(Fleet {
        node: 1,
        listen: "198.18.1.1:7946".parse().unwrap(),
        key: KEY.to_vec(),
        vtep_prefix: ("198.18.3.0".parse().unwrap(), 24),
        peers: Vec::new(),
    });
    Arc::new(fleet)
}

/// New flows per second: SYNs of distinct clients through one balancer,
/// its changes taken after each batch.
fn new_flows(tables: &Arc<Snapshot>) -> f64 {
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(|i| packet(i, "S")).collect();
    let mut pipeline = Pipeline::balance(Arc::clone(tables), 0, 1, fixtures::NODE_MAC);
    let mut buf = OwnedFrame::new(&[]);
    let mut noted = 0;
    let start = Instant::now();
    for batch in frames.chunks(BATCH) {
        for frame in batch {
            forward(&mut pipeline, &mut buf, frame, NOW);
        }
        if let Some(changes) = pipeline.changes() {
            noted += changes
                .drain()
                .map(|r| std::hint::black_box(r).kind as usize)
                .sum::<usize>();
        }
    }
    let rate = FLOWS as f64 / start.elapsed().as_secs_f64();
    if tables.fleet.is_some() {
        assert_eq!(noted, FLOWS * Replica::UP as usize, "every new flow noted");
    }
    rate
}

/// Seconds to carry node A's flows to node B, as a PULL does.
fn bulk_sync(fleet: &Arc<Snapshot>) -> f64 {
    let mut a: Vec<Pipeline> = (0..WORKERS)
        .map(|w| Pipeline::balance(Arc::clone(fleet), w, WORKERS, fixtures::NODE_MAC))
        .collect();
    let mut buf = OwnedFrame::new(&[]);
    for i in 0..FLOWS {
        forward(&mut a[i % WORKERS as usize], &mut buf, &packet(i, "S"), NOW);
    }
    for worker in &mut a {
        worker.changes().expect("in a fleet").drain().for_each(drop);
    }
    // Node B: the same services, another SNAT address.
    let mut b_tables = (**fleet).clone();
    b_tables.snat.v4 = vec!["198.18.201.1".parse().unwrap()];
    let b_tables = Arc::new(b_tables);
    let mut b: Vec<Pipeline> = (0..WORKERS)
        .map(|w| Pipeline::balance(Arc::clone(&b_tables), w, WORKERS, fixtures::NODE_MAC))
        .collect();
    let owner = SnatPorts::new(&b_tables.snat, 0, WORKERS);
    let record = size_of::<Replica>();
    let key = || rialto_sync::Key::new(&KEY).unwrap();
    let mut sender = rialto_sync::Sender::new(1, 1, key(), record, 1400, 8192).unwrap();
    let from = "198.18.1.1:7946".parse().unwrap();
    let peer = rialto_sync::Peer { id: 1, addr: from };
    let limits = rialto_sync::Limits::default();
    let mut receiver = rialto_sync::Receiver::new(2, vec![peer], key(), record, limits).unwrap();

    let start = Instant::now();
    let mut datagrams = Vec::new();
    let mut adopted = 0;
    for worker in &mut a {
        worker.start_burst();
    }
    loop {
        let mut more = false;
        for worker in &mut a {
            worker.tick(NOW);
            let changes = worker.changes().expect("in a fleet");
            more |= changes.bursting();
            for replica in changes.drain() {
                sender.push(bytemuck::bytes_of(&replica)).unwrap();
            }
        }
        datagrams.clear();
        sender.flush(&mut datagrams);
        for datagram in &datagrams {
            let delivery = receiver.handle(from, datagram, Instant::now()).unwrap();
            for record in delivery.records() {
                let replica: Replica = bytemuck::pod_read_unaligned(record);
                let worker = owner.owner(replica.flow.reverse.dst_port) as usize;
                if b[worker].adopt(&replica, NOW) == Some(Adopted::Added) {
                    adopted += 1;
                }
            }
        }
        if !more {
            break;
        }
    }
    let took = start.elapsed().as_secs_f64();
    assert_eq!(adopted, FLOWS, "every flow adopted on node B");
    took
}
