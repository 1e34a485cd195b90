//! A real AF_XDP port in reflect mode. No UMEM frame is ever lost: many more
//! datagrams than the UMEM has frames go through it; after draining, every
//! frame is accounted for exactly once and the free pool holds no duplicate.
//! With a gather window, frames that trickle in are taken several a step.

use std::{
    collections::HashSet,
    net::UdpSocket,
    time::{Duration, Instant},
};

use rialto::{
    afxdp::{Ledger, PortConfig, XskPort},
    tally::Tally,
};
use rialto_dataplane::Pipeline;
use rialto_rules::Steering as Rules;
use rialto_testbed::{Pair, VIP_V4, in_netns};
use xdp_redirect::{AttachMode, Steering};

/// Datagrams sent: each of the 1024 frames is used about 20 times.
const DATAGRAMS: usize = 20_000;
/// Datagrams in flight at once.
const WINDOW: usize = 32;

/// Sends `DATAGRAMS` to the VIP in windows and returns how many came back intact.
fn send_and_receive() -> usize {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.connect((VIP_V4, 7)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut back = 0;
    let mut buf = [0u8; 64];
    for start in (0..DATAGRAMS).step_by(WINDOW) {
        let end = (start + WINDOW).min(DATAGRAMS);
        for seq in start..end {
            socket.send(&(seq as u64).to_be_bytes()).unwrap();
        }
        for _ in start..end {
            match socket.recv(&mut buf) {
                Ok(8) => back += 1,
                Ok(n) => panic!("reflected datagram of {n} bytes, sent 8"),
                Err(e) => panic!("reply lost after {back} datagrams: {e}"),
            }
        }
    }
    back
}

/// Steps a port of `config` on the node of `pair`, reflecting what comes to
/// the VIP, while `send` runs in the peer's namespace, as a worker does
/// (a step that took frames then gathers, one that took none waits); then
/// drains the port and returns `send`'s result, what the port counted, the
/// steps that took frames, its ledger and its free frames.
fn reflect_while<T: Send>(
    pair: &Pair,
    config: &PortConfig,
    send: impl FnOnce() -> T + Send,
) -> (T, Tally, usize, Ledger, Vec<usize>) {
    in_netns(&pair.node_ns, || {
        let rules = Rules {
            vips: vec!["198.18.100.1:7/UDP".parse().unwrap()],
            ..Rules::default()
        };
        let mut steering = Steering::load(&rules).unwrap();
        steering.attach(&pair.node_if, AttachMode::Driver).unwrap();
        let mut port = XskPort::open(&pair.node_if, 0, config).unwrap();
        steering.register_socket(0, port.raw_fd()).unwrap();

        let mut pipeline: Pipeline = Pipeline::Reflect;
        let mut tally = Tally::default();
        let mut steps = 0;
        let sent = std::thread::scope(|s| {
            let sender = s.spawn(|| in_netns(&pair.peer_ns, send));
            // Until the sender is done (or has failed: its panic comes
            // back from join), within a minute.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !sender.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "the sender did not finish within a minute"
                );
                let processed = port.step(&mut tally, |frames, verdicts| {
                    pipeline.process(frames, verdicts, 0);
                });
                steps += usize::from(processed > 0);
                port.gather(processed);
                if processed == 0 && !port.busy() {
                    port.wait(Duration::from_millis(10));
                }
            }
            sender.join().unwrap()
        });
        let ledger = port.drain(Duration::from_secs(1));
        (sent, tally, steps, ledger, port.free_addrs().collect())
    })
}

#[test]
fn every_frame_is_accounted_for_after_drain() {
    let pair = Pair::up(1);
    let config = PortConfig {
        frames: 1024,
        ring_size: 256,
        ..PortConfig::default()
    };
    let (received, tally, _, ledger, free) = reflect_while(&pair, &config, send_and_receive);
    assert_eq!(received, DATAGRAMS, "every datagram reflected");

    assert_eq!(tally.rx_packets, DATAGRAMS as u64);
    assert_eq!(tally.tx_packets, DATAGRAMS as u64);
    assert_eq!(tally.drops.iter().sum::<u64>(), 0, "no drops: {tally:?}");
    assert_eq!(ledger.frames, config.frames as usize);
    assert_eq!(
        ledger.kernel_tx, 0,
        "transmissions left after drain: {ledger:?}"
    );
    assert!(ledger.balanced(), "frames unaccounted for: {ledger:?}");
    assert_eq!(free.len(), ledger.free);
    let distinct: HashSet<_> = free.iter().collect();
    assert_eq!(
        distinct.len(),
        free.len(),
        "a frame is twice in the free pool"
    );
    let frame_size = config.frame_size as usize;
    assert!(
        free.iter().all(|&addr| addr / frame_size < ledger.frames),
        "a free frame lies outside the UMEM"
    );
}

/// Datagrams of the gathering test, and the time between two.
const TRICKLE: usize = 40;
const TRICKLE_GAP: Duration = Duration::from_micros(250);

/// Frames that come one at a time, a quarter of a millisecond apart, are
/// taken several a step when the port gathers for 2 ms after a step that
/// took less than a batch (without, each comes alone: 40 steps), and every
/// one is reflected.
#[test]
fn a_gathering_port_takes_a_trickle_several_frames_a_step() {
    let pair = Pair::up(1);
    let config = PortConfig {
        frames: 1024,
        ring_size: 256,
        gather: Duration::from_millis(2),
        ..PortConfig::default()
    };
    let trickle = || {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect((VIP_V4, 7)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        for seq in 0..TRICKLE {
            socket.send(&(seq as u64).to_be_bytes()).unwrap();
            std::thread::sleep(TRICKLE_GAP);
        }
        let mut buf = [0u8; 64];
        (0..TRICKLE)
            .take_while(|_| socket.recv(&mut buf).is_ok_and(|n| n == 8))
            .count()
    };
    let (received, tally, steps, ledger, _) = reflect_while(&pair, &config, trickle);
    assert_eq!(received, TRICKLE, "every datagram reflected");
    assert_eq!(tally.tx_packets, TRICKLE as u64);
    assert!(
        steps <= TRICKLE / 2,
        "{TRICKLE} frames {TRICKLE_GAP:?} apart took {steps} steps: not gathered"
    );
    assert!(ledger.balanced(), "frames unaccounted for: {ledger:?}");
}
