//! Property tests: a sender and a receiver over a lossy, duplicating,
//! reordering channel converge, or the receiver says it needs a resync; and
//! no bytes make either side panic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use proptest::prelude::*;
use rialto_sync::wire::{self, Kind};
use rialto_sync::{Delivery, Key, Limits, Peer, Receiver, Reject, Sender};
use sha2::Sha256;

const KEY: &[u8] = b"the fleet's shared key, 32 bytes";
const SENDER: u16 = 1;
const RECEIVER: u16 = 2;
const EPOCH: u64 = 0x5eed;
/// A record: key (u64) and value (u64).
const LEN: usize = 16;

fn peer_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7000))
}

/// What happens to the datagram at the head-ish of a channel.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Deliver,
    Duplicate,
    Drop,
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        key: u64,
        value: u64,
    },
    Flush,
    Heartbeat,
    /// Sender to receiver: the datagram at index `pick % len`.
    Forward {
        pick: usize,
        fate: Fate,
    },
    /// Receiver to sender.
    Back {
        pick: usize,
        fate: Fate,
    },
    Tick {
        ms: u64,
    },
    Poll,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        12 => Just(Fate::Deliver),
        1 => Just(Fate::Duplicate),
        2 => Just(Fate::Drop),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..50u64, any::<u64>()).prop_map(|(key, value)| Op::Push { key, value }),
        2 => Just(Op::Flush),
        1 => Just(Op::Heartbeat),
        6 => (0..8usize, fate()).prop_map(|(pick, fate)| Op::Forward { pick, fate }),
        3 => (0..4usize, fate()).prop_map(|(pick, fate)| Op::Back { pick, fate }),
        1 => (0..30u64).prop_map(|ms| Op::Tick { ms }),
        1 => Just(Op::Poll),
    ]
}

#[derive(Debug, Clone, Copy)]
struct Params {
    per_datagram: usize,
    retain: usize,
    limits: Limits,
}

fn params() -> impl Strategy<Value = Params> {
    (1..5usize, 0..24usize, 0..16usize, 1..8usize, 1..6u32).prop_map(
        |(per_datagram, retain, reorder, max_gaps, nack_tries)| Params {
            per_datagram,
            retain,
            limits: Limits {
                reorder,
                max_gaps,
                nack_tries,
                ..Limits::default()
            },
        },
    )
}

/// A sender, a receiver, the channels between them and the two tables.
struct Sim {
    sender: Sender,
    receiver: Receiver,
    forward: Vec<Vec<u8>>,
    back: Vec<Vec<u8>>,
    now: Instant,
    nack_after: Duration,
    written: BTreeMap<u64, u64>,
    applied: BTreeMap<u64, u64>,
    need_resync: bool,
}

impl Sim {
    fn new(p: Params) -> Sim {
        let key = Key::new(KEY).unwrap();
        let sender = Sender::new(
            SENDER,
            EPOCH,
            key.clone(),
            LEN,
            wire::OVERHEAD + p.per_datagram * LEN,
            p.retain,
        )
        .unwrap();
        let peers = vec![Peer {
            id: SENDER,
            addr: peer_addr(),
        }];
        let receiver = Receiver::new(RECEIVER, peers, key, LEN, p.limits).unwrap();
        let mut sim = Sim {
            sender,
            receiver,
            forward: Vec::new(),
            back: Vec::new(),
            now: Instant::now(),
            nack_after: p.limits.nack_after,
            written: BTreeMap::new(),
            applied: BTreeMap::new(),
            need_resync: false,
        };
        // First contact, then the initial pull of the (empty) table.
        let hb = sim.sender.heartbeat();
        sim.deliver_forward(&hb);
        assert!(sim.need_resync);
        sim.resync();
        sim
    }

    fn resync(&mut self) {
        self.applied = self.written.clone();
        assert!(self.receiver.resynced(SENDER));
        self.need_resync = false;
    }

    fn push(&mut self, key: u64, value: u64) {
        let mut record = [0; LEN];
        record[..8].copy_from_slice(&key.to_be_bytes());
        record[8..].copy_from_slice(&value.to_be_bytes());
        self.sender.push(&record).unwrap();
        self.written.insert(key, value);
    }

    fn flush(&mut self) {
        self.sender.flush(&mut self.forward);
    }

    fn apply(&mut self, delivery: Delivery) {
        assert_eq!(delivery.peer, SENDER);
        for r in delivery.records() {
            let key = u64::from_be_bytes(r[..8].try_into().unwrap());
            let value = u64::from_be_bytes(r[8..].try_into().unwrap());
            self.applied.insert(key, value);
        }
        self.need_resync |= delivery.need_resync;
        assert!(!delivery.restarted);
        self.back.extend(delivery.reply);
    }

    fn deliver_forward(&mut self, bytes: &[u8]) {
        match self.receiver.handle(peer_addr(), bytes, self.now) {
            Ok(delivery) => self.apply(delivery),
            // Duplicates and resends of what was delivered or given up.
            Err(reason) => assert_eq!(reason, Reject::Replayed),
        }
    }

    fn deliver_back(&mut self, bytes: &[u8]) {
        let answer = self.sender.handle(RECEIVER, bytes).unwrap();
        self.forward.extend(answer);
    }

    fn poll(&mut self) {
        let polled = self.receiver.poll(self.now);
        for (addr, nack) in polled.send {
            assert_eq!(addr, peer_addr());
            self.back.push(nack);
        }
        for delivery in polled.deliveries {
            self.apply(delivery);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Push { key, value } => self.push(key, value),
            Op::Flush => self.flush(),
            Op::Heartbeat => {
                let hb = self.sender.heartbeat();
                self.forward.push(hb);
            }
            Op::Forward { pick, fate } => {
                if let Some(bytes) = take(&mut self.forward, pick, fate) {
                    self.deliver_forward(&bytes);
                }
            }
            Op::Back { pick, fate } => {
                if let Some(bytes) = take(&mut self.back, pick, fate) {
                    self.deliver_back(&bytes);
                }
            }
            Op::Tick { ms } => self.now += Duration::from_millis(ms),
            Op::Poll => self.poll(),
        }
    }

    /// A perfect channel from now on: flush, heartbeat, deliver everything
    /// both ways, let Nack timers run, a few times over.
    fn settle(&mut self) {
        for _ in 0..8 {
            self.flush();
            let hb = self.sender.heartbeat();
            self.forward.push(hb);
            while !self.forward.is_empty() || !self.back.is_empty() {
                for bytes in std::mem::take(&mut self.forward) {
                    self.deliver_forward(&bytes);
                }
                for bytes in std::mem::take(&mut self.back) {
                    self.deliver_back(&bytes);
                }
            }
            self.now += self.nack_after;
            self.poll();
        }
        let stats = self.receiver.peer(SENDER).unwrap();
        assert_eq!((stats.gaps, stats.buffered), (0, 0), "{stats:?}");
        assert_eq!(stats.delivered, self.sender.last_sequence());
    }
}

/// Takes the datagram at `pick % len` from a channel, according to `fate`.
fn take(channel: &mut Vec<Vec<u8>>, pick: usize, fate: Fate) -> Option<Vec<u8>> {
    if channel.is_empty() {
        return None;
    }
    let i = pick % channel.len();
    match fate {
        Fate::Deliver => Some(channel.remove(i)),
        Fate::Duplicate => Some(channel[i].clone()),
        Fate::Drop => {
            channel.remove(i);
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the channel does, the receiver ends with the sender's table,
    /// or has said it needs a resync; after one, it converges again.
    #[test]
    fn converges_or_asks_for_resync(
        p in params(),
        ops in prop::collection::vec(op(), 1..300),
        more in prop::collection::vec((0..50u64, any::<u64>()), 1..40),
    ) {
        let mut sim = Sim::new(p);
        for op in &ops {
            sim.step(op);
        }
        sim.settle();
        if !sim.need_resync {
            prop_assert_eq!(&sim.applied, &sim.written);
        } else {
            sim.resync();
        }
        for &(key, value) in &more {
            sim.push(key, value);
            if key % 3 == 0 {
                sim.flush();
            }
        }
        sim.settle();
        prop_assert!(!sim.need_resync);
        prop_assert_eq!(&sim.applied, &sim.written);
    }

    /// Without loss, duplication or reordering, nothing is ever lost.
    #[test]
    fn perfect_channel_needs_no_resync(
        p in params(),
        writes in prop::collection::vec((0..50u64, any::<u64>(), any::<bool>()), 1..200),
    ) {
        let mut sim = Sim::new(p);
        for &(key, value, flush) in &writes {
            sim.push(key, value);
            if flush {
                sim.flush();
                sim.step(&Op::Forward { pick: 0, fate: Fate::Deliver });
            }
        }
        sim.settle();
        prop_assert!(!sim.need_resync);
        prop_assert_eq!(&sim.applied, &sim.written);
        let stats = sim.receiver.peer(SENDER).unwrap();
        prop_assert_eq!(stats.rejected.total(), 0);
    }
}

/// Random bytes, some starting like a datagram.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..200)).prop_map(|(kind, rest)| {
            let mut v = b"RSYN\x01".to_vec();
            v.push(kind % 6);
            v.extend(rest);
            v
        }),
    ]
}

/// An authenticated datagram with arbitrary header fields and body: what a
/// buggy or compromised peer could send.
fn signed() -> impl Strategy<Value = Vec<u8>> {
    (
        0..6u8,
        prop_oneof![Just(SENDER), Just(RECEIVER), any::<u16>()],
        prop_oneof![Just(EPOCH), Just(EPOCH + 1), Just(EPOCH + 2), any::<u64>()],
        prop_oneof![0..40u64, u64::MAX - 2..=u64::MAX, any::<u64>()],
        prop_oneof![0..6u16, any::<u16>()],
        prop_oneof![
            (0..5usize).prop_map(|n| vec![0; n * LEN]),
            (
                prop_oneof![0..40u64, any::<u64>()],
                prop_oneof![0..40u64, any::<u64>()]
            )
                .prop_map(|(a, b)| [a.to_be_bytes(), b.to_be_bytes()].concat()),
            prop::collection::vec(any::<u8>(), 0..100),
        ],
    )
        .prop_map(|(kind, node, epoch, seq, count, body)| {
            let mut v = b"RSYN\x01".to_vec();
            v.push(kind);
            v.extend(node.to_be_bytes());
            v.extend(epoch.to_be_bytes());
            v.extend(seq.to_be_bytes());
            v.extend(count.to_be_bytes());
            v.extend(body);
            let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
            mac.update(&v);
            v.extend(mac.finalize().into_bytes());
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No bytes make either side panic, and the receiver's memory stays
    /// within its limits.
    #[test]
    fn no_bytes_panic(
        p in params(),
        inputs in prop::collection::vec((prop_oneof![garbage(), signed()], 0..40u64, any::<bool>()), 1..60),
    ) {
        let mut sim = Sim::new(p);
        let stranger = SocketAddr::from(([10, 9, 9, 9], 7000));
        for (bytes, ms, from_peer) in &inputs {
            sim.now += Duration::from_millis(*ms);
            let from = if *from_peer { peer_addr() } else { stranger };
            let _ = sim.receiver.handle(from, bytes, sim.now);
            let _ = sim.sender.handle(RECEIVER, bytes);
            let _ = wire::peek_kind(bytes);
            let polled = sim.receiver.poll(sim.now);
            for (_, nack) in &polled.send {
                prop_assert_eq!(wire::peek_kind(nack), Some(Kind::Nack));
                prop_assert!(nack.len() <= p.limits.max_datagram);
            }
            let stats = sim.receiver.peer(SENDER).unwrap();
            prop_assert!(stats.buffered <= p.limits.reorder);
            prop_assert!(stats.gaps <= p.limits.max_gaps);
            prop_assert!(stats.delivered <= stats.highest);
        }
    }
}
