//! Runs PACKETS packets of one path through the pipeline, for
//! `benches/instructions.sh`, which counts the instructions under callgrind
//! twice (two packet counts) and divides the difference: the set-up cancels.
//!
//!   instructions reflect|forward|return|new FLOWS PACKETS
//!
//! `forward-general` and `return-general` take the general path alone
//! (the fast path off): the fast path's baseline in the same run;
//! `forward-batch` and `return-batch` the fast path, [`BATCH`] frames per
//! call (the flows of a batch read ahead).

use rialto_benches::{BATCH, Batch, balancer, forward, packet, reflect_frame, tables, with_flows};
use rialto_dataplane::{OwnedFrame, Pipeline};

/// Room in the table for new flows.
const NEW_ROOM: usize = 1 << 18;

/// How a path's packets are handed to the pipeline.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    One,
    General,
    Batch,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: instructions reflect|forward[-general|-batch]|return[-general|-batch]|new FLOWS PACKETS";
    let [_, path, flows, packets] = &args[..] else {
        panic!("{usage}")
    };
    let (flows, packets): (usize, usize) =
        (flows.parse().expect(usage), packets.parse().expect(usage));
    let (path, way) = match path.split_once('-') {
        Some((path, "general")) => (path, Way::General),
        Some((path, "batch")) => (path, Way::Batch),
        Some(_) => panic!("{usage}"),
        None => (path.as_str(), Way::One),
    };
    let (mut pipeline, frames) = match path {
        "reflect" => (Pipeline::Reflect, vec![reflect_frame()]),
        "forward" | "return" => {
            let (pipeline, there, back) = with_flows(flows, 4096);
            (pipeline, if path == "forward" { there } else { back })
        }
        // New flows: SYNs of clients after the live ones.
        // (in a table with room for all of them, no eviction, and of one
        // size whatever PACKETS is, so the set-up is the same).
        "new" => {
            assert!(packets <= NEW_ROOM, "at most {NEW_ROOM} new flows");
            let mut pipeline = balancer(tables(flows + NEW_ROOM));
            let mut buf = OwnedFrame::new(&[]);
            for i in 0..flows {
                forward(&mut pipeline, &mut buf, &packet(i, "S"), 1);
            }
            // Always as many frames, whatever PACKETS is: building them is set-up.
            let syns = (flows..flows + NEW_ROOM).map(|i| packet(i, "S")).collect();
            (pipeline, syns)
        }
        _ => panic!("{usage}"),
    };
    pipeline.set_fast_path(way != Way::General);
    if way == Way::Batch {
        assert!(frames.len() % BATCH == 0, "whole batches of frames");
        let mut batch = Batch::default();
        for i in (0..packets).step_by(BATCH) {
            let (at, n) = (i % frames.len(), BATCH.min(packets - i));
            batch.forward(&mut pipeline, &frames[at..at + n], 1);
        }
        return;
    }
    let mut buf = OwnedFrame::new(&[]);
    for i in 0..packets {
        forward(&mut pipeline, &mut buf, &frames[i % frames.len()], 1);
    }
}
