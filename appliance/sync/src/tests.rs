//! Unit tests: one sender, one receiver, datagrams handed over by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::{self, Kind};
use crate::*;

const LEN: usize = 24;
const SENDER: u16 = 1;
const RECEIVER: u16 = 2;

fn key() -> Key {
    Key::new(b"sixteen byte key, and more").unwrap()
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 7000))
}

fn record(i: u64) -> Vec<u8> {
    let mut r = vec![0xa5; LEN];
    r[..8].copy_from_slice(&i.to_be_bytes());
    r
}

/// A sender whose datagrams hold 2 records each.
fn sender(epoch: u64, retain: usize) -> Sender {
    Sender::new(SENDER, epoch, key(), LEN, wire::OVERHEAD + 2 * LEN, retain).unwrap()
}

fn receiver(limits: Limits) -> Receiver {
    let peers = vec![Peer {
        id: SENDER,
        addr: addr(1),
    }];
    Receiver::new(RECEIVER, peers, key(), LEN, limits).unwrap()
}

/// Pushes records `range` and flushes.
fn send(s: &mut Sender, range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    for i in range {
        s.push(&record(i)).unwrap();
    }
    let mut out = Vec::new();
    s.flush(&mut out);
    out
}

fn ids(d: &Delivery) -> Vec<u64> {
    d.records()
        .map(|r| u64::from_be_bytes(r[..8].try_into().unwrap()))
        .collect()
}

/// A Nack from the receiver's node for `epoch`, built by hand.
fn nack(node: u16, epoch: u64, ranges: &[(u64, u64)], key: &Key) -> Vec<u8> {
    let mut buf = wire::start(
        Kind::Nack,
        node,
        epoch,
        0,
        ranges.len() as u16,
        16 * ranges.len(),
    );
    for &(f, l) in ranges {
        wire::push_range(&mut buf, f, l);
    }
    wire::seal(buf, key)
}

#[test]
fn round_trip_in_order() {
    let now = Instant::now();
    let mut s = sender(7, 16);
    let mut r = receiver(Limits::default());
    let datagrams = send(&mut s, 0..9);
    assert_eq!(datagrams.len(), 5);
    let mut got = Vec::new();
    for (n, d) in datagrams.iter().enumerate() {
        let delivery = r.handle(addr(1), d, now).unwrap();
        assert_eq!(delivery.peer, SENDER);
        assert!(delivery.reply.is_none());
        // First contact: the peer's table is to be pulled.
        assert_eq!(delivery.need_resync, n == 0);
        got.extend(ids(&delivery));
    }
    assert_eq!(got, (0..9).collect::<Vec<_>>());
    let stats = r.peer(SENDER).unwrap();
    assert_eq!(stats.state, PeerState::Syncing);
    assert_eq!((stats.datagrams, stats.records, stats.delivered), (5, 9, 5));
    assert!(r.resynced(SENDER));
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::InSync);
    assert!(!r.resynced(99));
    assert_eq!(s.stats().datagrams_sent, 5);
    assert_eq!(s.stats().records_sent, 9);
}

#[test]
fn not_a_peer() {
    let now = Instant::now();
    let mut s = sender(7, 16);
    let mut r = receiver(Limits::default());
    let d = send(&mut s, 0..2).remove(0);
    assert_eq!(r.handle(addr(9), &d, now), Err(Reject::NotPeer));
    assert_eq!(r.not_peer(), 1);
    // The right address, but another node's id.
    let mut other = Sender::new(3, 7, key(), LEN, 200, 4).unwrap();
    let d = send(&mut other, 0..2).remove(0);
    assert_eq!(r.handle(addr(1), &d, now), Err(Reject::NotPeer));
    assert_eq!(r.peer(SENDER).unwrap().rejected.get(Reject::NotPeer), 1);
    assert_eq!(r.peer(SENDER).unwrap().epoch, None);
}

#[test]
fn other_key_is_bad_mac() {
    let now = Instant::now();
    let other = Key::new(b"another sixteen byte key").unwrap();
    let mut s = Sender::new(SENDER, 7, other, LEN, 200, 4).unwrap();
    let mut r = receiver(Limits::default());
    for d in send(&mut s, 0..20) {
        assert_eq!(r.handle(addr(1), &d, now), Err(Reject::BadMac));
    }
    assert_eq!(r.handle(addr(1), &s.heartbeat(), now), Err(Reject::BadMac));
    let stats = r.peer(SENDER).unwrap();
    assert_eq!(stats.rejected.get(Reject::BadMac), 5);
    assert_eq!(stats.datagrams, 0);
}

#[test]
fn duplicate_is_replayed() {
    let now = Instant::now();
    let mut s = sender(7, 16);
    let mut r = receiver(Limits::default());
    let ds = send(&mut s, 0..6);
    assert_eq!(ids(&r.handle(addr(1), &ds[0], now).unwrap()), [0, 1]);
    assert_eq!(r.handle(addr(1), &ds[0], now), Err(Reject::Replayed));
    // Buffered (ahead of a gap), then again.
    let d = r.handle(addr(1), &ds[2], now).unwrap();
    assert!(d.reply.is_some() && d.record_count() == 0);
    assert_eq!(r.handle(addr(1), &ds[2], now), Err(Reject::Replayed));
    assert_eq!(ids(&r.handle(addr(1), &ds[1], now).unwrap()), [2, 3, 4, 5]);
    for d in &ds {
        assert_eq!(r.handle(addr(1), d, now), Err(Reject::Replayed));
    }
    let stats = r.peer(SENDER).unwrap();
    assert_eq!(stats.rejected.get(Reject::Replayed), 5);
    assert_eq!((stats.lost, stats.repaired), (1, 1));
}

#[test]
fn flipped_bits_are_refused() {
    let now = Instant::now();
    let mut s = sender(7, 16);
    let mut r = receiver(Limits::default());
    let ds = send(&mut s, 0..4);
    r.handle(addr(1), &ds[0], now).unwrap();
    for d in [&ds[1], &s.heartbeat()] {
        for i in 0..d.len() {
            for bit in 0..8 {
                let mut bad = d.clone();
                bad[i] ^= 1 << bit;
                let got = r.handle(addr(1), &bad, now);
                assert!(
                    matches!(got, Err(Reject::BadMac | Reject::Malformed)),
                    "byte {i} bit {bit}: {got:?}"
                );
            }
        }
    }
    assert_eq!(ids(&r.handle(addr(1), &ds[1], now).unwrap()), [2, 3]);
}

#[test]
fn truncated_is_refused() {
    let now = Instant::now();
    let mut s = sender(7, 16);
    let mut r = receiver(Limits::default());
    let d = send(&mut s, 0..2).remove(0);
    let mut longer = d.clone();
    longer.push(0);
    for bad in (0..d.len()).map(|n| &d[..n]).chain([&longer[..]]) {
        let got = r.handle(addr(1), bad, now);
        assert!(
            matches!(got, Err(Reject::BadMac | Reject::Malformed)),
            "{got:?}"
        );
        let got = s.handle(RECEIVER, bad);
        assert!(
            matches!(got, Err(Reject::BadMac | Reject::Malformed)),
            "{got:?}"
        );
    }
    assert_eq!(ids(&r.handle(addr(1), &d, now).unwrap()), [0, 1]);
}

#[test]
fn restart_is_recognised() {
    let now = Instant::now();
    let mut old = sender(7, 16);
    let mut r = receiver(Limits::default());
    let old_ds = send(&mut old, 0..6);
    for d in &old_ds[..2] {
        r.handle(addr(1), d, now).unwrap();
    }
    r.resynced(SENDER);
    let mut new = sender(8, 16);
    let ds = send(&mut new, 10..14);
    let d = r.handle(addr(1), &ds[0], now).unwrap();
    assert!(d.restarted && !d.need_resync);
    assert_eq!(ids(&d), [10, 11]);
    // The previous run's datagrams are stale now.
    assert_eq!(r.handle(addr(1), &old_ds[2], now), Err(Reject::Stale));
    assert_eq!(r.handle(addr(1), &old.heartbeat(), now), Err(Reject::Stale));
    let d = r.handle(addr(1), &ds[1], now).unwrap();
    assert!(!d.restarted);
    assert_eq!(ids(&d), [12, 13]);
    let stats = r.peer(SENDER).unwrap();
    assert_eq!(
        (stats.epoch, stats.restarts, stats.state),
        (Some(8), 1, PeerState::InSync)
    );
    assert_eq!(stats.rejected.get(Reject::Stale), 2);
}

#[test]
fn restart_sequences_are_requested_from_one() {
    let now = Instant::now();
    let mut r = receiver(Limits::default());
    r.handle(addr(1), &send(&mut sender(7, 16), 0..2)[0], now)
        .unwrap();
    r.resynced(SENDER);
    let mut new = sender(8, 16);
    let ds = send(&mut new, 0..6);
    let d = r.handle(addr(1), &ds[2], now).unwrap();
    assert!(d.restarted && d.record_count() == 0);
    let answer = new.handle(RECEIVER, &d.reply.unwrap()).unwrap();
    assert_eq!(answer, ds[..2]);
    let mut got = Vec::new();
    for a in &answer {
        got.extend(ids(&r.handle(addr(1), a, now).unwrap()));
    }
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::InSync);
}

#[test]
fn nack_answered_from_the_ring_and_gone_past_it() {
    let now = Instant::now();
    let mut s = sender(7, 4);
    let mut r = receiver(Limits::default());
    let ds = send(&mut s, 0..20); // sequences 1..=10; 7..=10 retained
    assert_eq!(ids(&r.handle(addr(1), &ds[0], now).unwrap()), [0, 1]);
    r.resynced(SENDER);
    let d = r.handle(addr(1), &ds[9], now).unwrap();
    assert_eq!(d.record_count(), 0);
    let reply = d.reply.unwrap();
    assert_eq!(wire::peek_kind(&reply), Some(Kind::Nack));
    let answer = s.handle(RECEIVER, &reply).unwrap();
    assert_eq!(answer.len(), 4);
    assert_eq!(answer[..3], ds[6..9]);
    assert_eq!(wire::peek_kind(&answer[3]), Some(Kind::Gone));
    let stats = s.stats();
    assert_eq!(
        (
            stats.datagrams_resent,
            stats.gone_sent,
            stats.sequences_gone
        ),
        (3, 1, 5)
    );

    let mut got = Vec::new();
    let mut resync = false;
    for a in &answer {
        let d = r.handle(addr(1), a, now).unwrap();
        resync |= d.need_resync;
        got.extend(ids(&d));
    }
    assert!(resync);
    assert_eq!(got, (12..20).collect::<Vec<_>>());
    let stats = r.peer(SENDER).unwrap();
    assert_eq!(stats.state, PeerState::Syncing);
    assert_eq!((stats.lost, stats.repaired, stats.given_up), (8, 3, 5));
    assert_eq!((stats.delivered, stats.gaps, stats.buffered), (10, 0, 0));
    // A second Gone for the same range changes nothing.
    let d = r.handle(addr(1), &answer[3], now).unwrap();
    assert!(d.is_empty());

    // Fully retained: resends only, in order, each once.
    let answer = s.handle(
        RECEIVER,
        &nack(RECEIVER, 7, &[(9, 10), (8, 9), (11, 99)], &key()),
    );
    assert_eq!(answer.unwrap(), ds[7..10]);
}

#[test]
fn sender_refuses_bad_nacks() {
    let mut s = sender(7, 4);
    send(&mut s, 0..4);
    let k = key();
    assert_eq!(
        s.handle(RECEIVER, &nack(RECEIVER, 8, &[(1, 1)], &k)),
        Err(Reject::Stale)
    );
    assert_eq!(
        s.handle(3, &nack(RECEIVER, 7, &[(1, 1)], &k)),
        Err(Reject::NotPeer)
    );
    assert_eq!(
        s.handle(RECEIVER, &nack(RECEIVER, 7, &[(2, 1)], &k)),
        Err(Reject::Malformed)
    );
    assert_eq!(
        s.handle(RECEIVER, &nack(RECEIVER, 7, &[(0, 1)], &k)),
        Err(Reject::Malformed)
    );
    let other = Key::new(&[1; 32]).unwrap();
    assert_eq!(
        s.handle(RECEIVER, &nack(RECEIVER, 7, &[(1, 1)], &other)),
        Err(Reject::BadMac)
    );
    let hb = s.heartbeat();
    assert_eq!(s.handle(SENDER, &hb), Err(Reject::Malformed));
    assert_eq!(s.stats().rejected.total(), 6);
    assert_eq!(s.stats().nacks_received, 0);
}

#[test]
fn heartbeat_reveals_tail_loss() {
    let now = Instant::now();
    let mut s = sender(7, 16);
    let mut r = receiver(Limits::default());
    let hb = s.heartbeat();
    assert!(r.handle(addr(1), &hb, now).unwrap().need_resync);
    r.resynced(SENDER);
    let ds = send(&mut s, 0..6);
    r.handle(addr(1), &ds[0], now).unwrap();
    let d = r.handle(addr(1), &s.heartbeat(), now).unwrap();
    let answer = s.handle(RECEIVER, &d.reply.unwrap()).unwrap();
    assert_eq!(answer, ds[1..]);
    let mut got = Vec::new();
    for a in &answer {
        got.extend(ids(&r.handle(addr(1), a, now).unwrap()));
    }
    assert_eq!(got, [2, 3, 4, 5]);
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::InSync);
}

#[test]
fn poll_renacks_then_gives_up() {
    let t0 = Instant::now();
    let limits = Limits {
        nack_tries: 3,
        ..Limits::default()
    };
    let ms = |n| t0 + Duration::from_millis(n);
    let mut s = sender(7, 16);
    let mut r = receiver(limits);
    let ds = send(&mut s, 0..8);
    r.handle(addr(1), &ds[0], t0).unwrap();
    r.resynced(SENDER);
    assert!(r.handle(addr(1), &ds[2], t0).unwrap().reply.is_some());
    assert_eq!(r.poll(ms(19)), Polled::default());
    for t in [20, 40] {
        let polled = r.poll(ms(t));
        assert!(polled.deliveries.is_empty());
        assert_eq!(polled.send.len(), 1);
        assert_eq!(polled.send[0].0, addr(1));
        assert_eq!(s.handle(RECEIVER, &polled.send[0].1).unwrap(), ds[1..2]);
    }
    let polled = r.poll(ms(60));
    assert!(polled.send.is_empty());
    assert_eq!(polled.deliveries.len(), 1);
    assert!(polled.deliveries[0].need_resync);
    assert_eq!(ids(&polled.deliveries[0]), [4, 5]);
    let stats = r.peer(SENDER).unwrap();
    assert_eq!(
        (stats.nacks_sent, stats.given_up, stats.resyncs_needed),
        (3, 1, 2)
    );
    assert_eq!(r.handle(addr(1), &ds[1], ms(61)), Err(Reject::Replayed));
    assert_eq!(ids(&r.handle(addr(1), &ds[3], ms(61)).unwrap()), [6, 7]);
}

#[test]
fn reorder_overflow_gives_up_the_gap() {
    let now = Instant::now();
    let limits = Limits {
        reorder: 2,
        ..Limits::default()
    };
    let mut s = sender(7, 16);
    let mut r = receiver(limits);
    let ds = send(&mut s, 0..10);
    r.handle(addr(1), &ds[0], now).unwrap();
    r.resynced(SENDER);
    for d in &ds[2..4] {
        let d = r.handle(addr(1), d, now).unwrap();
        assert!(d.record_count() == 0 && !d.need_resync);
    }
    let d = r.handle(addr(1), &ds[4], now).unwrap();
    assert!(d.need_resync && d.reply.is_none());
    assert_eq!(ids(&d), [4, 5, 6, 7, 8, 9]);
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::Syncing);
}

#[test]
fn too_far_ahead_restarts_the_sequence() {
    let now = Instant::now();
    let limits = Limits {
        max_ahead: 4,
        ..Limits::default()
    };
    let mut s = sender(7, 16);
    let mut r = receiver(limits);
    let ds = send(&mut s, 0..20);
    r.handle(addr(1), &ds[0], now).unwrap();
    r.resynced(SENDER);
    assert!(r.handle(addr(1), &ds[4], now).is_ok());
    assert_eq!(r.handle(addr(1), &ds[6], now), Err(Reject::TooFarAhead));
    let polled = r.poll(now);
    assert_eq!(polled.deliveries.len(), 1);
    assert!(polled.deliveries[0].need_resync);
    assert!(polled.send.is_empty());
    assert_eq!(ids(&r.handle(addr(1), &ds[7], now).unwrap()), [14, 15]);
    assert_eq!(r.handle(addr(1), &ds[1], now), Err(Reject::Replayed));
}

#[test]
fn lost_peer() {
    let t0 = Instant::now();
    let mut s = sender(7, 16);
    let mut r = receiver(Limits::default());
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::Syncing);
    r.handle(addr(1), &s.heartbeat(), t0).unwrap();
    r.resynced(SENDER);
    r.poll(t0 + Duration::from_millis(999));
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::InSync);
    r.poll(t0 + Duration::from_secs(1));
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::Lost);
    r.handle(addr(1), &s.heartbeat(), t0 + Duration::from_secs(2))
        .unwrap();
    assert_eq!(r.peer(SENDER).unwrap().state, PeerState::InSync);
}

#[test]
fn config_errors() {
    assert_eq!(
        Key::new(&[0; 15]).unwrap_err(),
        ConfigError::KeyTooShort(15)
    );
    assert!(matches!(
        Sender::new(1, 1, key(), 2000, 1400, 4),
        Err(ConfigError::DatagramTooSmall { .. })
    ));
    assert_eq!(
        Sender::new(1, 1, key(), 0, 1400, 4).unwrap_err(),
        ConfigError::ZeroRecordLen
    );
    let mut s = sender(7, 4);
    assert_eq!(
        s.push(&[0; 3]),
        Err(ConfigError::RecordLen {
            expected: LEN,
            got: 3
        })
    );
    assert_eq!(s.queued(), 0);
    let p = |id, n| Peer { id, addr: addr(n) };
    let new = |peers| Receiver::new(RECEIVER, peers, key(), LEN, Limits::default()).err();
    assert_eq!(
        new(vec![p(1, 1), p(1, 2)]),
        Some(ConfigError::DuplicatePeer(1))
    );
    assert_eq!(
        new(vec![p(1, 1), p(3, 1)]),
        Some(ConfigError::DuplicatePeer(3))
    );
    assert_eq!(
        new(vec![p(RECEIVER, 1)]),
        Some(ConfigError::SelfPeer(RECEIVER))
    );
    assert_eq!(format!("{:?}", key()), "Key(..)");
    assert_eq!(
        Sender::new(1, 1, key(), 120, 1400, 4)
            .unwrap()
            .records_per_datagram(),
        11
    );
}

#[test]
fn reasons_are_distinct_snake_case() {
    let reasons: Vec<_> = Reject::ALL.iter().map(Reject::reason).collect();
    for (i, r) in reasons.iter().enumerate() {
        assert!(r.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        assert!(!reasons[..i].contains(r));
    }
    let mut counts = RejectCounts::default();
    counts.count(Reject::Stale);
    assert_eq!(counts.iter().filter(|&(_, n)| n == 1).count(), 1);
    assert_eq!(counts.get(Reject::Stale), 1);
}

/// A datagram signed with the fleet's key, whatever its fields.
fn forge(kind: Kind, node: u16, epoch: u64, seq: u64, count: u16, body: &[u8]) -> Vec<u8> {
    let mut buf = wire::start(kind, node, epoch, seq, count, body.len());
    buf.extend_from_slice(body);
    wire::seal(buf, &key())
}

#[test]
fn extreme_sequence_numbers() {
    let now = Instant::now();
    let max = u64::MAX;
    let range = |f: u64, l: u64| [f.to_be_bytes(), l.to_be_bytes()].concat();
    let mut r = receiver(Limits::default());
    let d = r.handle(
        addr(1),
        &forge(Kind::Updates, SENDER, 7, max, 1, &record(1)),
        now,
    );
    assert_eq!(ids(&d.unwrap()), [1]);
    let again = forge(Kind::Updates, SENDER, 7, max, 1, &record(1));
    assert_eq!(r.handle(addr(1), &again, now), Err(Reject::Replayed));
    let hb = forge(Kind::Heartbeat, SENDER, 7, max, 0, &[]);
    assert!(r.handle(addr(1), &hb, now).unwrap().is_empty());
    let gone = forge(Kind::Gone, SENDER, 7, max, 1, &range(1, max));
    assert!(r.handle(addr(1), &gone, now).unwrap().is_empty());

    let mut r = receiver(Limits::default());
    r.handle(
        addr(1),
        &forge(Kind::Heartbeat, SENDER, 7, max - 1, 0, &[]),
        now,
    )
    .unwrap();
    let d = r.handle(
        addr(1),
        &forge(Kind::Heartbeat, SENDER, 7, max, 0, &[]),
        now,
    );
    assert!(d.unwrap().reply.is_some());
    let d = r.handle(addr(1), &gone, now).unwrap();
    assert!(d.need_resync);
    assert_eq!(r.peer(SENDER).unwrap().delivered, max);
    r.poll(now + Duration::from_secs(5));

    // A Nack for everything, of a sender that sent nothing or little.
    let all = nack(RECEIVER, 7, &[(1, max)], &key());
    assert_eq!(sender(7, 4).handle(RECEIVER, &all), Ok(vec![]));
    let mut s = sender(7, 4);
    let ds = send(&mut s, 0..20);
    let answer = s.handle(RECEIVER, &all).unwrap();
    assert_eq!(answer[..4], ds[6..]);
    assert_eq!(answer.len(), 5);
}
