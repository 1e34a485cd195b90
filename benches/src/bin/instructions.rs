//! Runs PACKETS packets of one path through the pipeline, for
//! `benches/instructions.sh`, which counts the instructions under callgrind
//! twice (two packet counts) and divides the difference: the set-up cancels.
//!
//!   instructions reflect|forward|return|new FLOWS PACKETS
//!
//! `forward-general` and `return-general` take the general path alone
//! (the fast path off): the fast path's baseline in the same run.

use rialto_benches::{balancer, forward, packet, reflect_frame, tables, with_flows};
use rialto_dataplane::{OwnedFrame, Pipeline};

/// Room in the table for new flows.
const NEW_ROOM: usize = 1 << 18;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: instructions reflect|forward[-general]|return[-general]|new FLOWS PACKETS";
    let [_, path, flows, packets] = &args[..] else {
        panic!("{usage}")
    };
    let (flows, packets): (usize, usize) =
        (flows.parse().expect(usage), packets.parse().expect(usage));
    let (path, general) = match path.strip_suffix("-general") {
        Some(path) => (path, true),
        None => (path.as_str(), false),
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
    pipeline.set_fast_path(!general);
    let mut buf = OwnedFrame::new(&[]);
    for i in 0..packets {
        forward(&mut pipeline, &mut buf, &frames[i % frames.len()], 1);
    }
}
