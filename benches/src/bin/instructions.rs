//! Runs PACKETS packets of one path through the pipeline, for
//! `benches/instructions.sh`, which counts the instructions under callgrind
//! twice (two packet counts) and divides the difference: the set-up cancels.
//!
//!   instructions reflect|forward|return|new FLOWS PACKETS

use rialto::{
    fixtures::{self, Ip, L4},
    pipeline::{OwnedFrame, Pipeline},
};
use rialto_benches::{forward, packet, with_flows};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: instructions reflect|forward|return|new FLOWS PACKETS";
    let [_, path, flows, packets] = &args[..] else {
        panic!("{usage}")
    };
    let (flows, packets): (usize, usize) =
        (flows.parse().expect(usage), packets.parse().expect(usage));
    let (mut pipeline, frames) = match path.as_str() {
        "reflect" => {
            let frame = fixtures::from_router(&fixtures::ip(
                Ip::V4 {
                    src: fixtures::CLIENT,
                    dst: fixtures::WEB,
                    ttl: 64,
                },
                L4::Udp(9, 7),
                &[0; 18],
            ));
            (Pipeline::Reflect, vec![frame])
        }
        "forward" | "return" => {
            let (pipeline, there, back) = with_flows(flows, 4096);
            (pipeline, if path == "forward" { there } else { back })
        }
        // New flows: SYNs of clients after the live ones.
        "new" => {
            let (pipeline, _, _) = with_flows(flows, 1);
            let syns = (flows..flows + packets).map(|i| packet(i, "S")).collect();
            (pipeline, syns)
        }
        _ => panic!("{usage}"),
    };
    let mut buf = OwnedFrame::new(&[]);
    for i in 0..packets {
        forward(&mut pipeline, &mut buf, &frames[i % frames.len()], 1);
    }
}
