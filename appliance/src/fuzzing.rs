//! The body of the fuzz target (`appliance/fuzz/`). It lives in the library
//! so that an ordinary test replays the corpus the fuzzer grew, on stable
//! Rust, in every test run.
//!
//! An input is a sequence of frames, each a big-endian `u16` length and that
//! many bytes, run in order through one balancer (worker 0 of 2, so flows
//! made by earlier frames are found by later ones, and replies for the other
//! worker are handed over). Each frame sits in a buffer laid out like a UMEM
//! frame. What must hold, whatever the bytes:
//! - nothing panics (the fuzzer's own finding);
//! - a frame handed to another worker is exactly the frame that came in;
//! - a frame Rialto transmits is one etherparse decodes without error, down
//!   to the transport header (an independent decoder, as tshark is for the
//!   fixture table).

use std::sync::{Arc, LazyLock};

use etherparse::SlicedPacket;
use rialto_rules::Snapshot;

use crate::{
    fixtures,
    pipeline::{FrameBuf, HEADROOM, Pipeline, Verdict},
};

/// The fixture config plus one cluster per tunnel peer of the corpus
/// captures, so their VXLAN is decapsulated rather than refused.
pub fn config() -> String {
    format!(
        r#"{}
[[cluster]]
name = "capture-1"
vni = 1
gateways = ["10.1.200.131", "1.1.1.1", "20.0.0.1", "20.0.0.2", "1.2.3.4"]
gateway_mac = "02:00:00:00:09:01"

[[cluster]]
name = "capture-42"
vni = 42
gateways = ["192.168.1.1"]
gateway_mac = "02:00:00:00:09:42"

[[cluster]]
name = "capture-123"
vni = 123
gateways = ["192.168.56.11", "192.168.56.12"]
gateway_mac = "02:00:00:00:09:23"

[[cluster]]
name = "capture-4242"
vni = 4242
gateways = ["172.30.0.1", "127.0.0.1"]
gateway_mac = "02:00:00:00:09:44"
"#,
        fixtures::CONFIG
    )
}

static TABLES: LazyLock<Arc<Snapshot>> = LazyLock::new(|| {
    Arc::new(rialto_rules::load("fuzz", &config()).unwrap_or_else(|e| panic!("{e}")))
});

/// Bytes of a UMEM frame (the live loop's default).
const FRAME_SIZE: usize = 4096;
/// The largest packet a frame holds behind the headroom.
pub const MAX_FRAME: usize = FRAME_SIZE - HEADROOM;

/// Joins frames into one fuzz input.
pub fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        let frame = &frame[..frame.len().min(MAX_FRAME)];
        out.extend_from_slice(&(frame.len() as u16).to_be_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// Splits a fuzz input into frames (the last one may be cut short).
pub fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len))
            .min(rest.len())
            .min(MAX_FRAME);
        let (frame, rest) = rest.split_at(len);
        data = rest;
        Some(frame)
    })
}

/// Runs one fuzz input; panics if an invariant of the module docs breaks.
pub fn run(data: &[u8]) {
    let mut pipeline = Pipeline::balance(Arc::clone(&TABLES), 0, 2, fixtures::NODE_MAC);
    let mut buf = vec![0u8; FRAME_SIZE];
    for (i, input) in frames(data).enumerate() {
        // A second a frame, so flows made early expire later on.
        let now = (i as u64 + 1) * 1_000_000_000;
        buf.fill(0);
        buf[HEADROOM..HEADROOM + input.len()].copy_from_slice(input);
        let mut frame = FrameBuf::new(&mut buf, HEADROOM, input.len());
        let verdict = pipeline.process(&mut frame, now);
        pipeline.tick(now);
        match verdict {
            Verdict::Tx => {
                if let Err(e) = SlicedPacket::from_ethernet(frame.data()) {
                    panic!(
                        "frame {i}: Rialto sent a frame etherparse rejects ({e}):\nin  {input:02x?}\nout {:02x?}",
                        frame.data()
                    );
                }
            }
            Verdict::Handoff(_) => assert_eq!(
                frame.data(),
                input,
                "frame {i}: a frame handed over is the frame that came in"
            ),
            Verdict::Drop(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_encode() {
        let frames_in = vec![vec![1, 2, 3], vec![], vec![9; 300]];
        let data = encode(&frames_in);
        let out: Vec<_> = frames(&data).map(<[u8]>::to_vec).collect();
        assert_eq!(out, frames_in);
        // A length beyond the data takes what is there.
        assert_eq!(
            frames(&[0, 5, 1, 2]).collect::<Vec<_>>(),
            vec![&[1u8, 2][..]]
        );
    }

    #[test]
    fn the_fixture_table_runs_clean() {
        let inputs: Vec<_> = fixtures::table().into_iter().map(|f| f.input).collect();
        run(&encode(&inputs));
    }
}
